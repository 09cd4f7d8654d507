//! The IOMalloc family over the simulated machine: wired vs pageable for real, fault
//! injection, and nothing leaked.

use dmakit::alloc::{
    io_free, io_free_aligned, io_free_pageable, io_malloc, io_malloc_aligned, io_malloc_pageable,
    io_malloc_zero, IoHeap,
};
use dmakit::platform::{collect_runs, CpuAccess, Task};
use dmakit::{Error, IoReturn, PageSize, VirtAddr};
use dmakit_sim::{FaultSite, Machine, MachineBuilder};

fn machine() -> Machine {
    MachineBuilder::new().seed(99).build().unwrap()
}

#[test]
fn malloc_is_wired_and_pageable_is_not() {
    let m = machine();
    let heap = IoHeap::new(&m);
    let w = io_malloc(&heap, 20_000).unwrap();
    let runs = collect_runs(&m, Task::KERNEL, w, 20_000).unwrap();
    assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 20_000);
    let p = io_malloc_pageable(&heap, 20_000, 0).unwrap();
    assert!(matches!(
        collect_runs(&m, Task::KERNEL, p, 20_000),
        Err(Error::NotReady { .. })
    ));
    io_free(&heap, w, 20_000).unwrap();
    io_free_pageable(&heap, p, 20_000).unwrap();
    assert_eq!(m.stats().allocations, 0);
}

#[test]
fn small_blocks_land_in_zone_pages_and_go_back() {
    let m = machine();
    let heap = IoHeap::new(&m);
    let blocks: Vec<(VirtAddr, usize)> = (1..200)
        .map(|i| (io_malloc(&heap, i * 7).unwrap(), i * 7))
        .collect();
    for &(a, n) in &blocks {
        heap.platform()
            .write_virt(Task::KERNEL, a, &vec![n as u8; n])
            .unwrap();
    }
    for &(a, n) in &blocks {
        let mut b = vec![0u8; n];
        heap.platform().read_virt(Task::KERNEL, a, &mut b).unwrap();
        assert!(
            b.iter().all(|&x| x == n as u8),
            "block {a:?} was overwritten"
        );
    }
    for (a, n) in blocks {
        io_free(&heap, a, n).unwrap();
    }
    assert_eq!(heap.stats().zone_pages, 0);
    assert_eq!(
        m.stats().allocations,
        0,
        "every zone page went back to the machine"
    );
}

#[test]
fn zeroed_and_aligned() {
    let m = machine();
    let heap = IoHeap::new(&m);
    let a = heap.alloc(512).unwrap();
    a.fill(0xFF).unwrap();
    drop(a);
    let z = io_malloc_zero(&heap, 512).unwrap();
    let mut b = vec![1u8; 512];
    m.read_virt(Task::KERNEL, z, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    io_free(&heap, z, 512).unwrap();
    for align in [8usize, 256, 4096, 65536] {
        let a = io_malloc_aligned(&heap, 3000, align).unwrap();
        assert_eq!(a.0 % align as u64, 0);
        io_free_aligned(&heap, a, 3000).unwrap();
    }
}

#[test]
fn injected_failure_leaks_nothing() {
    let m = machine();
    let heap = IoHeap::new(&m);
    let sim_before = m.stats();
    m.inject(FaultSite::PhysAlloc, sim_before.site_calls[0] + 3);
    let e = io_malloc(&heap, 5 * 4096).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NO_MEMORY);
    m.inject_next(FaultSite::PhysAlloc);
    assert!(matches!(io_malloc(&heap, 64), Err(Error::Injected { .. })));
    assert_eq!(heap.stats().live, 0);
    assert_eq!(m.stats().free_pages, sim_before.free_pages);
    assert_eq!(m.stats().allocations, 0);
}

#[test]
fn misuse_is_caught_on_the_machine() {
    let m = machine();
    let heap = IoHeap::new(&m);
    let a = io_malloc(&heap, 100).unwrap();
    assert!(matches!(
        io_free(&heap, a, 64),
        Err(Error::WrongSize { .. })
    ));
    assert!(matches!(
        io_free_pageable(&heap, a, 100),
        Err(Error::WrongFree { .. })
    ));
    io_free(&heap, a, 100).unwrap();
    assert!(matches!(
        io_free(&heap, a, 100),
        Err(Error::NotAllocated { .. })
    ));
}

#[test]
fn a_wired_block_is_not_freed_under_a_device() {
    use dmakit::platform::Wiring;
    let m = machine();
    let heap = IoHeap::new(&m);
    let a = io_malloc(&heap, 8192).unwrap();
    m.wire(Task::KERNEL, a, 8192, true).unwrap();
    assert!(matches!(io_free(&heap, a, 8192), Err(Error::Busy { .. })));
    assert_eq!(heap.leaks().len(), 1, "still live and reported");
    m.unwire(Task::KERNEL, a, 8192).unwrap();
    io_free(&heap, a, 8192).unwrap();
}

#[test]
fn sixteen_k_machine() {
    let m = MachineBuilder::new()
        .page_size(PageSize::SIZE_16K)
        .build()
        .unwrap();
    let heap = IoHeap::new(&m);
    let a = io_malloc(&heap, 6000).unwrap();
    assert_eq!(heap.stats().zone_pages, 1);
    let b = io_malloc(&heap, 9000).unwrap();
    assert_eq!(b.0 % 16384, 0);
    io_free(&heap, a, 6000).unwrap();
    io_free(&heap, b, 9000).unwrap();
    drop(heap);
    assert_eq!(m.stats().allocations, 0);
}

#[test]
fn dropping_the_heap_returns_its_pages() {
    let m = machine();
    {
        let heap = IoHeap::new(&m);
        let _a = io_malloc(&heap, 10).unwrap();
        let _b = io_malloc(&heap, 100_000).unwrap();
        assert_eq!(heap.leaks().len(), 2);
    }
    assert_eq!(m.stats().allocations, 0);
}
