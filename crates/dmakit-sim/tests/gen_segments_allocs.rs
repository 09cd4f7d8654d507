//! `DmaCommand::gen_segments` allocates nothing: counted with a global allocator that
//! counts every allocation made by this test binary.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{BouncePool, DmaCommand, MappingMode, SegmentFormat, SegmentSpec};
use dmakit::mapper::IommuMapper;
use dmakit::Direction;
use dmakit_sim::{MachineBuilder, SimIommu};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` unchanged; the counter is a side effect only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on to `System` as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (forwarded above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for dealloc; the new size is the caller's, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn gen_segments_makes_no_heap_allocation() {
    // The counter works: a Vec is counted.
    let c0 = ALLOCS.load(Ordering::Relaxed);
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(ALLOCS.load(Ordering::Relaxed) > c0 && v.len() == 64);
    let m = Arc::new(
        MachineBuilder::new()
            .seed(3)
            .fragmentation(0.8)
            .build()
            .unwrap(),
    );
    let b = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(256 << 10, Direction::Out))
            .unwrap(),
    );
    let pool = Arc::new(BouncePool::new(m.clone(), "pool", 1 << 20));
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu, 0x1000_0000, 0x1000_0000).unwrap());
    let spec = SegmentSpec::builder()
        .address_bits(32)
        .max_segment_size(0x1000)
        .boundary(0x4000)
        .build()
        .unwrap();
    let mut out = [0u8; 16 * 8];
    for (mode, force) in [
        (MappingMode::Bypassed, false),
        (MappingMode::Bypassed, true),
        (MappingMode::Mapped(mapper), false),
    ] {
        pool.set_force_bounce(force);
        let mut cmd = DmaCommand::builder(m.clone())
            .spec(spec)
            .format(SegmentFormat::Little64)
            .mode(mode)
            .bounce_pool(pool.clone())
            .build()
            .unwrap();
        cmd.set_memory_descriptor(b.clone()).unwrap();
        cmd.prepare(PrepareOptions::range(0, 256 << 10)).unwrap();
        let mut off = 0;
        let mut calls = 0;
        let before = ALLOCS.load(Ordering::Relaxed);
        while off < 256 << 10 {
            let n = cmd.gen_segments(&mut off, &mut out).unwrap();
            assert!(n >= 1);
            calls += 1;
        }
        let after = ALLOCS.load(Ordering::Relaxed);
        assert_eq!(off, 256 << 10);
        assert!(calls >= 8, "{calls} calls");
        assert_eq!(
            after - before,
            0,
            "gen_segments allocated {} times over {calls} calls",
            after - before
        );
        cmd.complete().unwrap();
    }
}
