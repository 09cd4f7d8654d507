//! Small IOMalloc blocks under a prepared descriptor, and IOMallocContiguous, on the
//! simulated machine.
//!
//! A small block shares its zone page with other blocks, so the page is never freed under
//! it and the platform's page-level refusal never fires. Freeing it while a descriptor over
//! it is prepared would let the next `io_malloc` of that size hand the device's target to a
//! new owner; the heap refuses instead.

use dmakit::alloc::{
    io_free, io_free_aligned, io_free_contiguous, io_malloc, io_malloc_aligned,
    io_malloc_contiguous, io_malloc_zero, IoHeap,
};
use dmakit::descriptor::{GeneralMemoryDescriptor, MemoryDescriptor};
use dmakit::dma::{CompletionSource, DmaController, DmaTransfer, IoSegment};
use dmakit::error::MallocFamily;
use dmakit::platform::{collect_runs, CpuAccess, PhysicalMemory, Task};
use dmakit::{Direction, Error, IoAddr, IoReturn, PageSize, PhysAddr, VirtAddr};
use dmakit_sim::{Machine, MachineBuilder, SimDmaEngine};
use std::sync::Arc;

fn coherent() -> Arc<Machine> {
    Arc::new(
        MachineBuilder::new()
            .seed(21)
            .coherent(true)
            .build()
            .unwrap(),
    )
}

fn read(m: &Machine, va: VirtAddr, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    m.read_virt(Task::KERNEL, va, &mut v).unwrap();
    v
}

#[test]
fn a_prepared_zone_block_is_not_freed_and_the_device_write_stays_in_it() {
    let m = coherent();
    let heap = IoHeap::new(m.clone());
    let engine = SimDmaEngine::new(m.clone(), None).unwrap();

    // Three neighbours in one zone page; the descriptor covers the middle one.
    let before = io_malloc(&heap, 64).unwrap();
    let a = io_malloc(&heap, 64).unwrap();
    let after = io_malloc(&heap, 64).unwrap();
    let page = m.page();
    assert!(page.trunc(before.0) == page.trunc(a.0) && page.trunc(a.0) == page.trunc(after.0));
    for (va, byte) in [(before, 0x11u8), (a, 0x22), (after, 0x33)] {
        m.write_virt(Task::KERNEL, va, &[byte; 64]).unwrap();
    }

    let md =
        GeneralMemoryDescriptor::with_address_range(m.clone(), Task::KERNEL, a, 64, Direction::In)
            .unwrap();
    let dmd: &dyn MemoryDescriptor = &md;
    let prepared = dmd.prepare(Direction::In).unwrap();
    let seg = md.physical_segment(0).unwrap();
    assert_eq!(seg.len, 64);

    // The free is refused, naming the block, and the block stays allocated.
    let e = io_free(&heap, a, 64).unwrap_err();
    assert!(
        matches!(e, Error::Busy { addr, .. } if addr == a.0),
        "{e:?}"
    );
    assert_eq!(e.io_return(), IoReturn::BUSY);
    assert!(e.to_string().contains("wired"), "{e}");
    assert!(heap.leaks().iter().any(|l| l.addr == a && l.size == 64));

    // The next allocation of that size is somewhere else.
    let newcomer = io_malloc(&heap, 64).unwrap();
    assert_ne!(newcomer, a, "a wired block was handed to a new owner");
    m.write_virt(Task::KERNEL, newcomer, &[0x44; 64]).unwrap();

    // The device writes where the descriptor said: into `a` only.
    let src = io_malloc_contiguous(&heap, 64, 64).unwrap();
    m.write_virt(Task::KERNEL, src.0, &[0xD0; 64]).unwrap();
    engine
        .start(&DmaTransfer {
            source: &[IoSegment {
                addr: IoAddr(src.1 .0),
                len: 64,
            }],
            dest: &[IoSegment {
                addr: IoAddr(seg.addr.0),
                len: 64,
            }],
        })
        .unwrap();
    let mut done = Vec::new();
    engine.take_completions(&mut |c| done.push(c));
    assert!(done.len() == 1 && done[0].status.is_ok(), "{done:?}");
    assert_eq!(
        read(&m, a, 64),
        vec![0xD0; 64],
        "the device wrote its block"
    );
    assert_eq!(
        read(&m, newcomer, 64),
        vec![0x44; 64],
        "the new owner is untouched"
    );
    assert_eq!(read(&m, before, 64), vec![0x11; 64]);
    assert_eq!(read(&m, after, 64), vec![0x33; 64]);

    // After complete the block goes back, and comes out again as io_malloc_zero promises.
    prepared.complete().unwrap();
    io_free(&heap, a, 64).unwrap();
    let again = io_malloc_zero(&heap, 64).unwrap();
    assert_eq!(again, a, "the lowest free element is reused now");
    assert_eq!(read(&m, again, 64), vec![0; 64], "no stale device bytes");

    for va in [before, after, newcomer, again] {
        io_free(&heap, va, 64).unwrap();
    }
    io_free_contiguous(&heap, src.0, 64).unwrap();
    assert_eq!(heap.stats().live, 0);
}

#[test]
fn only_a_wiring_of_this_blocks_bytes_refuses_it() {
    let m = coherent();
    let heap = IoHeap::new(m.clone());
    let blocks: Vec<VirtAddr> = (0..4).map(|_| io_malloc(&heap, 32).unwrap()).collect();
    // A descriptor over the last 2 bytes of block 1 and the first 2 of block 2.
    let md = GeneralMemoryDescriptor::with_address_range(
        m.clone(),
        Task::KERNEL,
        VirtAddr(blocks[1].0 + 30),
        4,
        Direction::Out,
    )
    .unwrap();
    let dmd: &dyn MemoryDescriptor = &md;
    let prepared = dmd.prepare(Direction::Out).unwrap();
    // Blocks 0 and 3 share the wired page but not the wired bytes.
    io_free(&heap, blocks[0], 32).unwrap();
    io_free(&heap, blocks[3], 32).unwrap();
    for &b in &blocks[1..3] {
        assert!(matches!(io_free(&heap, b, 32), Err(Error::Busy { addr, .. }) if addr == b.0));
    }
    // A second preparation of the same descriptor is counted: still refused after one
    // complete.
    let again = dmd.prepare(Direction::Out).unwrap();
    prepared.complete().unwrap();
    assert!(matches!(
        io_free(&heap, blocks[1], 32),
        Err(Error::Busy { .. })
    ));
    again.complete().unwrap();
    io_free(&heap, blocks[1], 32).unwrap();
    io_free(&heap, blocks[2], 32).unwrap();
    assert_eq!(heap.stats().zone_pages, 0);
    assert_eq!(m.stats().wired_pages, 0);
}

#[test]
fn aligned_blocks_and_owners_are_kept_too() {
    let m = coherent();
    let heap = IoHeap::new(m.clone());
    let a = io_malloc_aligned(&heap, 100, 128).unwrap();
    let md =
        GeneralMemoryDescriptor::with_address_range(m.clone(), Task::KERNEL, a, 1, Direction::In)
            .unwrap();
    let dmd: &dyn MemoryDescriptor = &md;
    let p = dmd.prepare(Direction::In).unwrap();
    assert!(matches!(
        io_free_aligned(&heap, a, 100),
        Err(Error::Busy { .. })
    ));
    // An owner dropped while its block is wired leaves it allocated (reported as a leak)
    // rather than recycling it.
    let owned = heap.alloc(48).unwrap();
    let owned_addr = owned.addr();
    let md2 = GeneralMemoryDescriptor::with_address_range(
        m.clone(),
        Task::KERNEL,
        owned_addr,
        48,
        Direction::In,
    )
    .unwrap();
    let dmd2: &dyn MemoryDescriptor = &md2;
    let p2 = dmd2.prepare(Direction::In).unwrap();
    drop(owned);
    assert!(heap
        .leaks()
        .iter()
        .any(|l| l.addr == owned_addr && l.family == MallocFamily::Malloc));
    p2.complete().unwrap();
    io_free(&heap, owned_addr, 48).unwrap();
    p.complete().unwrap();
    io_free_aligned(&heap, a, 100).unwrap();
    assert!(heap.leaks().is_empty());
}

#[test]
fn contiguous_memory_is_one_low_aligned_zeroed_run() {
    // Hostile: fragmented, RAM above 4 GiB, 16 KiB pages.
    let m = MachineBuilder::new()
        .seed(5)
        .page_size(PageSize::SIZE_16K)
        .fragmentation(0.9)
        .build()
        .unwrap();
    let heap = IoHeap::new(&m);
    for (size, align) in [
        (1usize, 0usize),
        (100, 1),
        (16384, 4096),
        (40_000, 16384),
        (70_000, 1 << 16),
        (5000, 1 << 20),
    ] {
        let (va, pa) = io_malloc_contiguous(&heap, size, align).unwrap();
        let align = align.max(1) as u64;
        assert_eq!(pa.0 % align, 0, "physical alignment {align:#x}");
        assert_eq!(va.0 % align, 0, "virtual alignment {align:#x}");
        let runs = collect_runs(&m, Task::KERNEL, va, size as u64).unwrap();
        assert_eq!(runs.len(), 1, "one physical run for {size} bytes");
        assert_eq!(runs[0].addr, pa);
        assert!(pa.0 + size as u64 - 1 <= 0xFFFF_FFFF, "below 4 GiB: {pa:?}");
        assert!(read(&m, va, size).iter().all(|&b| b == 0), "zero-filled");
        // Writes through the CPU are the bytes at the physical address.
        m.write_virt(Task::KERNEL, va, b"contig").unwrap();
        let mut back = [0u8; 6];
        m.read_phys(pa, &mut back).unwrap();
        assert_eq!(&back, b"contig");
        io_free_contiguous(&heap, va, size).unwrap();
    }
    assert_eq!(heap.stats().live, 0);
    assert_eq!(m.stats().kernel_allocations, 0, "every page went back");
}

#[test]
fn contiguous_misuse_is_a_clear_error() {
    let m = coherent();
    let heap = IoHeap::new(m.clone());
    assert!(matches!(
        io_malloc_contiguous(&heap, 0, 0),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        io_malloc_contiguous(&heap, 64, 48),
        Err(Error::BadAlignment { align: 48, .. })
    ));
    assert!(matches!(
        io_malloc_contiguous(&heap, usize::MAX, 0),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        io_malloc_contiguous(&heap, 64, 1 << 40),
        Err(Error::BadAlignment { .. })
    ));
    // More than the machine has below 4 GiB, contiguous: the platform's error, nothing kept.
    let e = io_malloc_contiguous(&heap, 3 << 30, 0).unwrap_err();
    assert!(
        matches!(e, Error::NoSuitableMemory { .. } | Error::NoMemory { .. }),
        "{e:?}"
    );
    assert_eq!(heap.stats().live, 0);

    let (va, _) = io_malloc_contiguous(&heap, 3000, 0).unwrap();
    let e = io_free_contiguous(&heap, va, 4096).unwrap_err();
    assert_eq!(
        e,
        Error::WrongSize {
            free_fn: "io_free_contiguous",
            addr: va.0,
            allocated: 3000,
            given: 4096
        }
    );
    assert!(matches!(
        io_free(&heap, va, 3000),
        Err(Error::WrongFree {
            allocated_by: MallocFamily::Contiguous,
            ..
        })
    ));
    assert!(matches!(
        io_free_contiguous(&heap, VirtAddr(va.0 + 4096), 3000),
        Err(Error::NotAllocated { .. })
    ));
    let small = io_malloc(&heap, 3000).unwrap();
    assert!(matches!(
        io_free_contiguous(&heap, small, 3000),
        Err(Error::WrongFree {
            allocated_by: MallocFamily::Malloc,
            ..
        })
    ));
    io_free(&heap, small, 3000).unwrap();
    // Wired by a prepared descriptor: refused, kept.
    let md = GeneralMemoryDescriptor::with_address_range(
        m.clone(),
        Task::KERNEL,
        va,
        3000,
        Direction::In,
    )
    .unwrap();
    let dmd: &dyn MemoryDescriptor = &md;
    let p = dmd.prepare(Direction::In).unwrap();
    assert!(matches!(
        io_free_contiguous(&heap, va, 3000),
        Err(Error::Busy { .. })
    ));
    p.complete().unwrap();
    io_free_contiguous(&heap, va, 3000).unwrap();
    io_free_contiguous(&heap, VirtAddr(0), 10).unwrap();
    assert!(matches!(
        io_free_contiguous(&heap, va, 3000),
        Err(Error::NotAllocated { .. })
    ));
    assert_eq!(m.stats().kernel_allocations, 0);
}

#[test]
fn the_contiguous_owner_knows_its_physical_address_and_frees_itself() {
    let m = coherent();
    let heap = IoHeap::new(m.clone());
    {
        let buf = heap.alloc_contiguous(10_000, 8192).unwrap();
        let pa = buf.phys_addr().unwrap();
        assert_eq!(pa.0 % 8192, 0);
        assert_eq!(buf.family(), MallocFamily::Contiguous);
        buf.write(9_990, b"0123456789").unwrap();
        let mut back = [0u8; 10];
        m.read_phys(PhysAddr(pa.0 + 9_990), &mut back).unwrap();
        assert_eq!(
            &back, b"0123456789",
            "contiguous: offset 9990 is at pa + 9990"
        );
        assert!(heap.alloc(10).unwrap().phys_addr().is_none());
    }
    assert_eq!(heap.stats().live, 0);
    assert_eq!(m.stats().kernel_allocations, 0);
}

#[test]
fn contiguous_memory_stays_below_4_gib_even_when_only_high_memory_fits() {
    // 2 MiB of RAM below 4 GiB, 256 MiB above.
    let m = MachineBuilder::new()
        .seed(3)
        .ram(0x10_0000, 0x20_0000)
        .ram(0x1_0000_0000, 0x1000_0000)
        .build()
        .unwrap();
    let heap = IoHeap::new(&m);
    let (va, pa) = io_malloc_contiguous(&heap, 1 << 20, 0).unwrap();
    assert!(pa.0 + (1 << 20) - 1 <= 0xFFFF_FFFF, "{pa:?}");
    // 3 MiB would fit only above 4 GiB: refused, as IOKit's 32-bit physical mask refuses it.
    let e = io_malloc_contiguous(&heap, 3 << 20, 0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NoSuitableMemory {
                limit: 0xFFFF_FFFF,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.io_return(), IoReturn::NO_MEMORY);
    io_free_contiguous(&heap, va, 1 << 20).unwrap();
    assert_eq!(heap.stats().live, 0);
    assert_eq!(m.stats().kernel_allocations, 0);
}
