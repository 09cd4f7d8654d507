//! Regression tests for inputs that once made a public API panic, hang or abort: each
//! names the reproducer and checks the answer it now gets.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, InterleavedMemoryDescriptor, MemoryDescriptor,
    MultiMemoryDescriptor, SubMemoryDescriptor,
};
use dmakit::dma::{CompletionSource, DmaCompletion, DmaEventSource};
use dmakit::Direction;
use std::sync::{Arc, Mutex, OnceLock};

/// `with_capacity(usize::MAX)` used to abort with "capacity overflow": the room is now
/// taken as portions are added.
#[test]
fn an_interleaved_descriptor_of_any_capacity_is_made() {
    let d = InterleavedMemoryDescriptor::with_capacity(usize::MAX, Direction::InOut);
    assert_eq!(dmakit::descriptor::MemoryDescriptor::length(&d), 0);
}

/// A completion queue fed by the test.
struct Queue(Mutex<Vec<DmaCompletion>>);

impl CompletionSource for Queue {
    fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
        let done: Vec<DmaCompletion> = self.0.lock().unwrap().drain(..).collect();
        done.into_iter().for_each(sink);
    }
}

fn completion(t: u64) -> DmaCompletion {
    DmaCompletion {
        ticket: t,
        bytes: t,
        status: Ok(()),
    }
}

/// An action that polls its own event source again used to spin for ever on the event
/// source's lock; IOKit's gate is recursive. Now the nested poll takes the new completions
/// and the delivery already running hands them over, in order, once each.
#[test]
fn an_action_may_poll_its_own_event_source() {
    let q = Arc::new(Queue(Mutex::new(vec![completion(1), completion(2)])));
    // A weak reference: the action lives in the source, so a strong one would be a cycle.
    let es: Arc<OnceLock<std::sync::Weak<DmaEventSource<Queue>>>> = Arc::new(OnceLock::new());
    let got = Arc::new(Mutex::new(Vec::new()));
    let (g, e, qq) = (got.clone(), es.clone(), q.clone());
    let source = Arc::new(DmaEventSource::new(q.clone(), move |c| {
        g.lock().unwrap().push(c.ticket);
        if c.ticket == 1 {
            // More work arrives while the action runs, and the action polls for it.
            qq.0.lock().unwrap().push(completion(3));
            let nested = e.get().and_then(|w| w.upgrade()).map_or(0, |s| s.poll());
            assert_eq!(nested, 1, "the nested poll takes the new completion");
        }
    }));
    assert!(es.set(Arc::downgrade(&source)).is_ok());
    assert_eq!(source.poll(), 2);
    assert_eq!(*got.lock().unwrap(), [1, 2, 3]);
    assert!(source.has_action());
    assert_eq!(source.poll(), 0);
}

/// A spec no memory can meet (alignment 2^63 below 4 GiB) used to be accepted and to fail
/// later as a confusing lack of space; it is refused when built, saying why.
#[test]
fn a_spec_no_memory_can_meet_is_refused_when_built() {
    use dmakit::dma::SegmentSpec;
    let e = SegmentSpec::builder()
        .alignment(1 << 63)
        .address_bits(32)
        .build()
        .unwrap_err();
    assert!(
        matches!(e, dmakit::Error::BadArgument { value, .. } if value == 1 << 63),
        "{e}"
    );
    assert!(e.to_string().contains("cannot be met"), "{e}");
    // The largest alignment that fits the window is fine.
    SegmentSpec::builder()
        .alignment(1 << 31)
        .address_bits(32)
        .build()
        .unwrap();
    // A window above every aligned address, and a length alignment longer than the window.
    assert!(SegmentSpec::builder()
        .window(0x1001, 0x1fff)
        .alignment(0x1000)
        .build()
        .is_err());
    assert!(SegmentSpec::builder()
        .window(0x1000, 0x10ff)
        .length_alignment(0x200)
        .build()
        .is_err());
}

fn machine() -> Arc<dmakit_sim::Machine> {
    Arc::new(dmakit_sim::MachineBuilder::new().build().unwrap())
}

fn buffer(
    m: &Arc<dmakit_sim::Machine>,
    len: u64,
) -> Arc<BufferMemoryDescriptor<Arc<dmakit_sim::Machine>>> {
    Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(len, Direction::InOut)).unwrap(),
    )
}

/// CPU copies of a sub-descriptor at offsets near 2^64 used to overflow adding the
/// sub-range's offset; they copy nothing, and a segment there is an error.
#[test]
fn a_sub_descriptor_copies_nothing_past_its_end() {
    let m = machine();
    let s = SubMemoryDescriptor::new(buffer(&m, 8192), 4096, 4096, Direction::InOut).unwrap();
    let mut b = [0u8; 16];
    for off in [4096u64, u64::MAX - 3, u64::MAX] {
        assert_eq!(s.read_bytes(off, &mut b), 0);
        assert_eq!(s.write_bytes(off, &b), 0);
        assert!(s.physical_segment(off).is_err());
    }
    assert_eq!(s.read_bytes(4095, &mut b), 0, "runs past the end: nothing");
    assert_eq!(s.read_bytes(4095, &mut b[..1]), 1);
}

/// An IOMMU window that ends at the top of the 64-bit space used to overflow when a range
/// there was freed; it maps, frees and flushes like any other.
#[test]
fn an_iommu_window_may_end_at_the_top_of_the_address_space() {
    use dmakit::mapper::{Access, IommuMapper, Mapper};
    let m = machine();
    let iommu = Arc::new(dmakit_sim::SimIommu::new(m.clone()));
    let mp = IommuMapper::new(iommu, 0xFFFF_FFFF_FFFF_0000, 0x10000).unwrap();
    let b = buffer(&m, 4096);
    let pa = b.physical_segment(0).unwrap().addr;
    let mut got = Vec::new();
    for _ in 0..16 {
        let a = mp.iovm_alloc(1).unwrap();
        mp.iovm_insert_page(a, pa, Access::READ_WRITE).unwrap();
        got.push(a);
    }
    assert!(got.contains(&dmakit::IoAddr(0xFFFF_FFFF_FFFF_F000)));
    for a in got {
        mp.iovm_free(a, 1).unwrap();
    }
    mp.flush().unwrap();
    assert_eq!(mp.usage(), (0, 0));
}

/// A multi-descriptor whose buffer part was shortened with `set_length` used to index past
/// its parts; the layout stays, the part's missing bytes are a hole: copies stop there, a
/// segment there is an error naming it, a prepare over it is refused.
#[test]
fn a_multi_descriptor_with_a_shortened_part_stops_at_the_hole() {
    let m = machine();
    let p1 = buffer(&m, 8192);
    let multi =
        MultiMemoryDescriptor::new(vec![p1.clone(), buffer(&m, 4096)], Direction::InOut).unwrap();
    p1.set_length(100).unwrap();
    let mut b = [0u8; 64];
    assert_eq!(multi.read_bytes(0, &mut b), 64);
    assert_eq!(multi.read_bytes(90, &mut b), 10, "a copy stops at the hole");
    assert_eq!(multi.read_bytes(100, &mut b), 0);
    assert_eq!(multi.write_bytes(5000, &b), 0);
    let e = multi.physical_segment(100).unwrap_err();
    assert!(e.to_string().contains("shorter now"), "{e}");
    assert_eq!(multi.physical_segment(8192).unwrap().len, 4096);
    assert_eq!(
        multi.read_bytes(8192, &mut b),
        64,
        "the next part is where it was"
    );
    let mut cmd = dmakit::dma::DmaCommand::builder(m.clone()).build().unwrap();
    cmd.set_memory_descriptor(Arc::new(multi)).unwrap();
    let e = cmd.prepare(dmakit::dma::PrepareOptions::new()).unwrap_err();
    assert!(
        e.to_string().contains("shorter now"),
        "a DMA over the hole is refused: {e}"
    );
}

type SimCommand = dmakit::dma::DmaCommand<Arc<dmakit_sim::Machine>>;

/// A command for `spec` with a bounce pool that bounces everything (when `force`).
fn command(
    m: &Arc<dmakit_sim::Machine>,
    spec: dmakit::dma::SegmentSpec,
    mapper: Option<Arc<dyn dmakit::mapper::Mapper>>,
    force: bool,
) -> SimCommand {
    use dmakit::dma::{BouncePool, DmaCommand, SegmentFormat};
    let pool = Arc::new(BouncePool::new(m.clone(), "test bounce", 16 << 20));
    pool.set_force_bounce(force);
    let b = DmaCommand::builder(m.clone())
        .spec(spec)
        .format(SegmentFormat::Little64)
        .bounce_pool(pool);
    match mapper {
        Some(mp) => b.mapper(mp),
        None => b,
    }
    .build()
    .unwrap()
}

fn segments(cmd: &SimCommand) -> Vec<dmakit::dma::IoSegment> {
    cmd.segments().collect::<dmakit::Result<Vec<_>>>().unwrap()
}

/// Bounce buffers used to be placed at page alignment only, so one could straddle the
/// spec's boundary and a device allowing one segment refused a transfer (`NoSpace`) that
/// the previous bounce buffer had carried. They are now placed inside one boundary line.
#[test]
fn bounce_buffers_do_not_straddle_the_boundary() {
    use dmakit::dma::{PrepareOptions, SegmentSpec};
    let m = machine();
    let spec = SegmentSpec::builder()
        .boundary(0x1_0000)
        .max_segments(1)
        .build()
        .unwrap();
    let mut held = Vec::new();
    for i in 0..12 {
        let mut cmd = command(&m, spec, None, true);
        cmd.set_memory_descriptor(buffer(&m, 40 << 10)).unwrap();
        cmd.prepare(PrepareOptions::range(0, 40 << 10))
            .unwrap_or_else(|e| panic!("transfer {i}: {e}"));
        let segs = segments(&cmd);
        assert_eq!(segs.len(), 1, "transfer {i}: {segs:?}");
        let (a, last) = (segs[0].addr.0, segs[0].addr.0 + (segs[0].len - 1));
        assert_eq!(a >> 16, last >> 16, "transfer {i} crosses 64 KiB: {segs:?}");
        held.push(cmd);
    }
    for mut c in held {
        c.complete().unwrap();
    }
}

/// The IOMMU path used to take IO addresses anywhere in the mapper's window and refuse
/// them when they were outside the device's (`NoSuitableMemory`), even with room inside
/// it. IO addresses are now placed inside the device's window, above its floor and below
/// its ceiling, until that part of the window is full.
#[test]
fn io_addresses_are_placed_inside_the_devices_window() {
    use dmakit::dma::{PrepareOptions, SegmentSpec};
    use dmakit::mapper::{IommuMapper, Mapper};
    let m = machine();
    let iommu = Arc::new(dmakit_sim::SimIommu::new(m.clone()));
    // 256 MiB of IO space from 1 MiB below 4 GiB.
    let mp = Arc::new(IommuMapper::new(iommu, 0xFFF0_0000, 0x1000_0000).unwrap());
    let as_dyn: Arc<dyn Mapper> = mp.clone();
    let above = SegmentSpec::builder()
        .window(0x1_0000_0000, u64::MAX)
        .build()
        .unwrap();
    let mut cmd = command(&m, above, Some(as_dyn.clone()), false);
    cmd.set_memory_descriptor(buffer(&m, 8192)).unwrap();
    cmd.prepare(PrepareOptions::range(0, 8192)).unwrap();
    let segs = segments(&cmd);
    assert!(segs.iter().all(|s| s.addr.0 >= 0x1_0000_0000), "{segs:?}");
    cmd.complete().unwrap();

    let low = SegmentSpec::builder().address_bits(32).build().unwrap();
    let b = buffer(&m, 4096);
    let mut held = Vec::new();
    let refused = loop {
        let mut cmd = command(&m, low, Some(as_dyn.clone()), false);
        cmd.set_memory_descriptor(b.clone()).unwrap();
        match cmd.prepare(PrepareOptions::range(0, 4096)) {
            Ok(()) => {
                let s = segments(&cmd);
                assert!(s[0].addr.0 + 4095 <= 0xFFFF_FFFF, "{s:?}");
                held.push(cmd);
            }
            Err(e) => break e,
        }
        assert!(
            held.len() <= 256,
            "more pages than the window has below 4 GiB"
        );
    };
    assert_eq!(held.len(), 256, "every page below 4 GiB used: {refused}");
    assert!(
        matches!(refused, dmakit::Error::NoSuitableMemory { limit, .. } if limit >= 0xFFFF_FFFF),
        "{refused}"
    );
    for mut c in held {
        c.complete().unwrap();
    }
    mp.flush().unwrap();
    assert_eq!(mp.usage(), (0, 0));
}

/// Bounce buffers used to be placed under the window's ceiling only, so with a floor a
/// re-prepare could land below it and be refused where the first had not. They are now
/// placed inside the window.
#[test]
fn bounce_buffers_land_inside_a_window_with_a_floor() {
    use dmakit::dma::{PrepareOptions, SegmentSpec};
    let m = machine();
    let floor = 0x800_0000;
    let spec = SegmentSpec::builder()
        .window(floor, 0xFFFF_FFFF)
        .build()
        .unwrap();
    let mut held = Vec::new();
    for i in 0..8 {
        let mut cmd = command(&m, spec, None, true);
        cmd.set_memory_descriptor(buffer(&m, 12 << 10)).unwrap();
        cmd.prepare(PrepareOptions::range(0, 12 << 10))
            .unwrap_or_else(|e| panic!("transfer {i}: {e}"));
        assert!(cmd.is_bounced());
        let segs = segments(&cmd);
        assert!(
            segs.iter().all(|s| s.addr.0 >= floor),
            "transfer {i}: {segs:?}"
        );
        held.push(cmd);
    }
    for mut c in held {
        c.complete().unwrap();
    }
}

/// A device window whose floor is not page aligned used to give the IOMMU path an IO
/// address off a page boundary (found by the DmaCommand fuzz target: "IO and physical
/// addresses must be page aligned"). IO ranges start on a page, above the floor.
#[test]
fn a_window_floor_inside_a_page_gives_page_aligned_io_addresses() {
    use dmakit::dma::{PrepareOptions, SegmentSpec};
    use dmakit::mapper::{IommuMapper, Mapper};
    let m = machine();
    let iommu = Arc::new(dmakit_sim::SimIommu::new(m.clone()));
    let mp: Arc<dyn Mapper> = Arc::new(IommuMapper::new(iommu, 0x100_0000, 0x1000_0000).unwrap());
    let floor = 0x100_0AA4;
    let spec = SegmentSpec::builder()
        .window(floor, u64::MAX)
        .build()
        .unwrap();
    let mut cmd = command(&m, spec, Some(mp), false);
    cmd.set_memory_descriptor(buffer(&m, 8192)).unwrap();
    cmd.prepare(PrepareOptions::range(0, 8192)).unwrap();
    let segs = segments(&cmd);
    assert!(segs.iter().all(|s| s.addr.0 >= floor), "{segs:?}");
    cmd.complete().unwrap();
}

/// When no IO range at the memory's own page offset fits the device's window, a mapped
/// command used to fail (`NoSuitableMemory`) even though a bounce buffer, whose data starts
/// at another offset in its page, fits (found by the DmaCommand fuzz target). It bounces.
#[test]
fn a_mapping_that_cannot_be_placed_goes_through_a_bounce_buffer() {
    use dmakit::dma::{PrepareOptions, SegmentSpec};
    use dmakit::mapper::{IommuMapper, Mapper};
    let m = machine();
    let iommu = Arc::new(dmakit_sim::SimIommu::new(m.clone()));
    let mp: Arc<dyn Mapper> = Arc::new(IommuMapper::new(iommu, 0x5000, 0x100_0000).unwrap());
    // Only the IO page at 0x5000 is in the window, and only its first 0x556 bytes.
    let spec = SegmentSpec::builder()
        .window(0x27B9, 0x5555)
        .build()
        .unwrap();
    let sub = SubMemoryDescriptor::new(buffer(&m, 4096), 0x800, 0x400, Direction::InOut).unwrap();
    let mut cmd = command(&m, spec, Some(mp.clone()), false);
    cmd.set_memory_descriptor(Arc::new(sub)).unwrap();
    cmd.prepare(PrepareOptions::range(0, 0x400)).unwrap();
    assert!(
        cmd.is_bounced(),
        "the data at offset 0x800 of its page cannot be mapped there"
    );
    let segs = segments(&cmd);
    assert!(
        segs.iter()
            .all(|s| s.addr.0 >= 0x27B9 && s.addr.0 + s.len - 1 <= 0x5555),
        "{segs:?}"
    );
    cmd.complete().unwrap();
    // Without a bounce pool the placement refusal is the answer.
    let mut bare = dmakit::dma::DmaCommand::builder(m.clone())
        .spec(spec)
        .mapper(mp)
        .build()
        .unwrap();
    let sub = SubMemoryDescriptor::new(buffer(&m, 4096), 0x800, 0x400, Direction::InOut).unwrap();
    bare.set_memory_descriptor(Arc::new(sub)).unwrap();
    let e = bare.prepare(PrepareOptions::range(0, 0x400)).unwrap_err();
    assert!(matches!(e, dmakit::Error::NoSuitableMemory { .. }), "{e}");
}
