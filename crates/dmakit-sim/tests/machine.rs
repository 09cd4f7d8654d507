//! The simulated machine through the platform seam: layout, determinism, constraints,
//! wiring, pageable memory, tasks, fault injection.

use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Task, Wiring};
use dmakit::{Error, IoReturn, PageSize, PhysAddr, VirtAddr};
use dmakit_sim::{FaultSite, Machine, MachineBuilder, SimStats};

const K: Task = Task::KERNEL;

fn hostile(seed: u64) -> Machine {
    MachineBuilder::new()
        .seed(seed)
        .fragmentation(0.8)
        .build()
        .unwrap()
}

fn alloc_runs(m: &Machine, len: u64, req: &PageRequest) -> (VirtAddr, Vec<dmakit::PhysRange>) {
    let va = m.allocate_pages(len, req).unwrap();
    let runs = collect_runs(m, K, va, len).unwrap();
    (va, runs)
}

fn phys_pages(m: &Machine, va: VirtAddr, len: u64) -> Vec<u64> {
    m.mappings(K, va, len)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p.unwrap().0)
        .collect()
}

#[test]
fn same_seed_same_layout() {
    let a = hostile(11);
    let b = hostile(11);
    for len in [0x1000, 0x8000, 0x3000, 0x20000] {
        let (_, ra) = alloc_runs(&a, len, &PageRequest::WIRED);
        let (_, rb) = alloc_runs(&b, len, &PageRequest::WIRED);
        assert_eq!(ra, rb);
    }
}

#[test]
fn other_seed_other_layout() {
    let a = hostile(1);
    let b = hostile(2);
    let (_, ra) = alloc_runs(&a, 0x40000, &PageRequest::WIRED);
    let (_, rb) = alloc_runs(&b, 0x40000, &PageRequest::WIRED);
    assert_ne!(ra, rb);
}

#[test]
fn fragmented_memory_is_scattered_and_reaches_above_4g() {
    let m = hostile(5);
    let va = m.allocate_pages(0x100000, &PageRequest::WIRED).unwrap();
    let pages = phys_pages(&m, va, 0x100000);
    let runs = collect_runs(&m, K, va, 0x100000).unwrap();
    assert!(runs.len() > 50, "{} runs: not scattered", runs.len());
    assert!(pages.iter().any(|&p| p >= 1 << 32), "no page above 4 GiB");
    assert!(pages.iter().any(|&p| p < 1 << 32), "no page below 4 GiB");
    // Virtual addresses are nowhere near the physical ones.
    assert!(pages.iter().all(|&p| p != va.0));
}

#[test]
fn unfragmented_memory_is_one_run() {
    let m = MachineBuilder::new().fragmentation(0.0).build().unwrap();
    let (_, runs) = alloc_runs(&m, 0x10000, &PageRequest::WIRED);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].addr, PhysAddr(0x10_0000));
}

#[test]
fn holes_are_never_handed_out() {
    let m = MachineBuilder::new()
        .ram(0x10_0000, 0x10_0000)
        .ram(0x40_0000, 0x10_0000)
        .fragmentation(1.0)
        .seed(3)
        .build()
        .unwrap();
    let va = m.allocate_pages(0x200000, &PageRequest::WIRED).unwrap();
    for p in phys_pages(&m, va, 0x200000) {
        assert!(
            (0x10_0000..0x20_0000).contains(&p) || (0x40_0000..0x50_0000).contains(&p),
            "{p:#x} is in a hole"
        );
    }
    // Everything is used: one more page is plainly out of memory, and a constrained request
    // says which constraint could not be met.
    let e = m.allocate_pages(0x1000, &PageRequest::WIRED).unwrap_err();
    assert_eq!(
        e,
        Error::NoMemory {
            what: "simulated RAM",
            requested: 0x1000,
            available: 0
        }
    );
    assert_eq!(e.io_return(), IoReturn::NO_MEMORY);
    let low = PageRequest {
        phys_limit: 0xFFFF_FFFF,
        ..PageRequest::WIRED
    };
    let e = m.allocate_pages(0x1000, &low).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NoSuitableMemory {
                limit: 0xFFFF_FFFF,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn phys_limit_is_honoured() {
    let m = hostile(9);
    let req = PageRequest {
        phys_limit: 0xFFFF_FFFF,
        ..PageRequest::WIRED
    };
    let (_, runs) = alloc_runs(&m, 0x80000, &req);
    for r in runs {
        assert!(r.addr.0 + r.len - 1 <= 0xFFFF_FFFF, "{r:?} above the limit");
    }
    let low = PageRequest {
        phys_limit: 0x1F_FFFF,
        ..PageRequest::WIRED
    };
    let (_, runs) = alloc_runs(&m, 0x2000, &low);
    assert!(runs.iter().all(|r| r.addr.0 + r.len <= 0x20_0000));
    let impossible = PageRequest {
        phys_limit: 0xFFFF,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        m.allocate_pages(0x1000, &impossible),
        Err(Error::NoSuitableMemory { limit: 0xFFFF, .. })
    ));
}

#[test]
fn contiguous_and_aligned_allocations() {
    let m = hostile(4);
    for (len, align) in [(0x4000, 0), (0x10000, 0x10000), (0x200000, 0x200000)] {
        let req = PageRequest {
            contiguous: true,
            align,
            ..PageRequest::WIRED
        };
        let (va, runs) = alloc_runs(&m, len, &req);
        assert_eq!(runs.len(), 1, "contiguous {len:#x}");
        assert_eq!(runs[0].len, len);
        if align != 0 {
            assert_eq!(runs[0].addr.0 % align, 0);
            assert_eq!(va.0 % align, 0);
        }
    }
    let too_big = PageRequest {
        contiguous: true,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        m.allocate_pages(1 << 30, &too_big),
        Err(Error::NoSuitableMemory {
            contiguous: true,
            ..
        })
    ));
}

#[test]
fn sixteen_k_pages() {
    let m = MachineBuilder::new()
        .page_size(PageSize::SIZE_16K)
        .seed(2)
        .build()
        .unwrap();
    assert_eq!(m.page_size(), PageSize::SIZE_16K);
    let va = m.allocate_pages(0x8000, &PageRequest::WIRED).unwrap();
    assert_eq!(va.0 % 0x4000, 0);
    for p in phys_pages(&m, va, 0x8000) {
        assert_eq!(p % 0x4000, 0);
    }
    assert!(matches!(
        m.allocate_pages(0x1000, &PageRequest::WIRED),
        Err(Error::NotAligned { align: 0x4000, .. })
    ));
    m.write_virt(K, VirtAddr(va.0 + 0x3ffe), b"abcd").unwrap();
    let mut b = [0u8; 4];
    m.read_virt(K, VirtAddr(va.0 + 0x3ffe), &mut b).unwrap();
    assert_eq!(&b, b"abcd");
}

#[test]
fn bad_requests_change_nothing() {
    let m = hostile(1);
    let before = m.stats();
    assert!(matches!(
        m.allocate_pages(0, &PageRequest::WIRED),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        m.allocate_pages(100, &PageRequest::WIRED),
        Err(Error::NotAligned { .. })
    ));
    let bad_align = PageRequest {
        align: 0x3000,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        m.allocate_pages(0x1000, &bad_align),
        Err(Error::BadAlignment { .. })
    ));
    assert!(m.allocate_pages(1 << 50, &PageRequest::WIRED).is_err());
    assert!(matches!(
        m.free_pages(VirtAddr(0x1234000), 0x1000),
        Err(Error::NotAllocated { .. })
    ));
    assert!(matches!(
        m.wire(K, VirtAddr(u64::MAX - 5), 100, false),
        Err(Error::Overflow { .. })
    ));
    assert_eq!(
        m.stats(),
        SimStats {
            site_calls: m.stats().site_calls,
            ..before
        }
    );
}

#[test]
fn memory_is_zero_filled_even_when_reused() {
    let m = MachineBuilder::new().fragmentation(0.0).build().unwrap();
    let va = m.allocate_pages(0x2000, &PageRequest::WIRED).unwrap();
    m.write_virt(K, va, &[0xEE; 0x2000]).unwrap();
    m.free_pages(va, 0x2000).unwrap();
    let vb = m.allocate_pages(0x2000, &PageRequest::WIRED).unwrap();
    let mut b = vec![1u8; 0x2000];
    m.read_virt(K, vb, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

#[test]
fn free_must_match_the_allocation() {
    let m = hostile(3);
    let va = m.allocate_pages(0x3000, &PageRequest::WIRED).unwrap();
    assert!(matches!(
        m.free_pages(va, 0x2000),
        Err(Error::WrongSize {
            allocated: 0x3000,
            given: 0x2000,
            ..
        })
    ));
    assert!(matches!(
        m.free_pages(VirtAddr(va.0 + 0x1000), 0x2000),
        Err(Error::NotAllocated { .. })
    ));
    m.free_pages(va, 0x3000).unwrap();
    assert_eq!(m.stats().allocations, 0);
}

#[test]
fn wiring_is_counted_and_blocks_free() {
    let m = hostile(6);
    let va = m.allocate_pages(0x4000, &PageRequest::WIRED).unwrap();
    m.wire(K, VirtAddr(va.0 + 0x800), 0x1000, true).unwrap(); // pages 0 and 1
    m.wire(K, va, 0x1000, false).unwrap(); // page 0 again
    assert_eq!(m.stats().wired_pages, 2);
    assert!(matches!(m.free_pages(va, 0x4000), Err(Error::Busy { .. })));
    m.unwire(K, va, 0x1000).unwrap();
    assert!(matches!(m.free_pages(va, 0x4000), Err(Error::Busy { .. })));
    m.unwire(K, VirtAddr(va.0 + 0x800), 0x1000).unwrap();
    assert_eq!(m.stats().wired_pages, 0);
    // Unwiring what is not wired is an error and changes nothing.
    assert!(matches!(
        m.unwire(K, va, 0x1000),
        Err(Error::BadArgument { .. })
    ));
    m.free_pages(va, 0x4000).unwrap();
}

#[test]
fn unwire_of_a_partly_wired_range_changes_nothing() {
    let m = hostile(6);
    let va = m.allocate_pages(0x2000, &PageRequest::WIRED).unwrap();
    m.wire(K, va, 0x1000, false).unwrap();
    assert!(m.unwire(K, va, 0x2000).is_err());
    assert_eq!(m.stats().wired_pages, 1, "page 0 still wired once");
    m.unwire(K, va, 0x1000).unwrap();
    m.free_pages(va, 0x2000).unwrap();
}

#[test]
fn physical_runs_clip_to_the_range_and_coalesce() {
    let m = MachineBuilder::new().fragmentation(0.0).build().unwrap();
    let va = m.allocate_pages(0x4000, &PageRequest::WIRED).unwrap();
    let runs = collect_runs(&m, K, VirtAddr(va.0 + 0x10), 0x2ff0).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].addr, PhysAddr(0x10_0010));
    assert_eq!(runs[0].len, 0x2ff0);
    assert!(collect_runs(&m, K, va, 0).unwrap().is_empty());
}

#[test]
fn pageable_memory_needs_wiring_to_translate() {
    let m = hostile(8);
    let va = m.allocate_pages(0x3000, &PageRequest::PAGEABLE).unwrap();
    assert!(m
        .mappings(K, va, 0x3000)
        .unwrap()
        .iter()
        .all(|(_, p)| p.is_none()));
    let e = collect_runs(&m, K, va, 0x3000).unwrap_err();
    assert!(matches!(e, Error::NotReady { .. }), "{e}");
    assert_eq!(e.io_return(), IoReturn::NOT_READY);
    // Touching brings a page in, but it is still not wired.
    m.write_virt(K, va, b"x").unwrap();
    assert!(matches!(
        collect_runs(&m, K, va, 0x1000),
        Err(Error::NotReady { .. })
    ));
    m.wire(K, va, 0x3000, true).unwrap();
    let runs = collect_runs(&m, K, va, 0x3000).unwrap();
    assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 0x3000);
    m.unwire(K, va, 0x3000).unwrap();
    m.free_pages(va, 0x3000).unwrap();
}

#[test]
fn pageable_pages_move_unless_wired() {
    let m = hostile(12);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x4000, true).unwrap();
    m.write_virt(t, va, b"page zero").unwrap();
    m.write_virt(t, VirtAddr(va.0 + 0x1000), b"page one")
        .unwrap();
    m.wire(t, va, 0x1000, false).unwrap();
    let before = m.mappings(t, va, 0x2000).unwrap();
    assert_eq!(
        m.migrate_pageable(t).unwrap(),
        1,
        "only the unwired resident page moves"
    );
    let after = m.mappings(t, va, 0x2000).unwrap();
    assert_eq!(before[0], after[0], "the wired page stayed");
    assert_ne!(before[1], after[1], "the unwired page moved");
    let mut b = [0u8; 8];
    m.read_virt(t, VirtAddr(va.0 + 0x1000), &mut b).unwrap();
    assert_eq!(&b, b"page one", "contents move with the page");
    m.unwire(t, va, 0x1000).unwrap();
    m.destroy_task(t).unwrap();
}

#[test]
fn tasks_are_isolated() {
    let m = hostile(13);
    let a = m.create_task();
    let b = m.create_task();
    let va = m.vm_allocate(a, 0x2000, false).unwrap();
    let vb = m.vm_allocate(b, 0x2000, false).unwrap();
    assert_eq!(va, vb, "each task has its own address space");
    m.write_virt(a, va, b"task a").unwrap();
    m.write_virt(b, vb, b"task b").unwrap();
    let mut buf = [0u8; 6];
    m.read_virt(a, va, &mut buf).unwrap();
    assert_eq!(&buf, b"task a");
    assert_ne!(phys_of(&m, a, va), phys_of(&m, b, vb));
    // The kernel task does not see user memory.
    assert!(matches!(
        m.read_virt(K, va, &mut buf),
        Err(Error::NotMapped { .. })
    ));
    m.destroy_task(a).unwrap();
    assert!(matches!(
        m.read_virt(a, va, &mut buf),
        Err(Error::BadArgument { .. })
    ));
    m.destroy_task(b).unwrap();
    assert!(m.destroy_task(K).is_err());
}

fn phys_of(m: &Machine, t: Task, va: VirtAddr) -> Option<PhysAddr> {
    m.mappings(t, va, 1).unwrap()[0].1
}

#[test]
fn destroying_a_task_with_wired_pages_is_refused() {
    let m = hostile(14);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x1000, true).unwrap();
    m.wire(t, va, 0x1000, true).unwrap();
    assert!(matches!(m.destroy_task(t), Err(Error::Busy { .. })));
    m.unwire(t, va, 0x1000).unwrap();
    let free_before_destroy = m.stats().free_pages;
    m.destroy_task(t).unwrap();
    assert_eq!(m.stats().free_pages, free_before_destroy + 1);
}

#[test]
fn cpu_access_crosses_scattered_pages() {
    let m = hostile(15);
    let len = 0x5000u64;
    let va = m.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let data: Vec<u8> = (0..len as usize - 100)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    m.write_virt(K, VirtAddr(va.0 + 50), &data).unwrap();
    let mut back = vec![0u8; data.len()];
    m.read_virt(K, VirtAddr(va.0 + 50), &mut back).unwrap();
    assert_eq!(back, data);
    // Past the end of the allocation nothing is mapped; the failed write changed nothing.
    assert!(matches!(
        m.write_virt(K, VirtAddr(va.0 + len - 2), &[9; 4]),
        Err(Error::NotMapped { .. })
    ));
    let mut tail = [0u8; 2];
    m.read_virt(K, VirtAddr(va.0 + len - 2), &mut tail).unwrap();
    assert_eq!(tail, [0, 0]);
}

#[test]
fn read_only_pages_refuse_stores_and_write_wiring() {
    let m = hostile(16);
    let va = m.allocate_pages(0x2000, &PageRequest::WIRED).unwrap();
    m.protect(K, VirtAddr(va.0 + 0x1000), 0x1000, false)
        .unwrap();
    assert!(matches!(
        m.write_virt(K, VirtAddr(va.0 + 0xfff), b"ab"),
        Err(Error::NotWritable { .. })
    ));
    assert!(matches!(
        m.wire(K, va, 0x2000, true),
        Err(Error::NotWritable { .. })
    ));
    assert_eq!(m.stats().wired_pages, 0);
    m.wire(K, va, 0x2000, false).unwrap();
    m.unwire(K, va, 0x2000).unwrap();
}

#[test]
fn injected_physical_allocation_failure_leaks_nothing() {
    let m = hostile(17);
    let before = m.stats();
    let calls = before.site_calls[0];
    // Fail the 5th page of an 8-page allocation.
    m.inject(FaultSite::PhysAlloc, calls + 5);
    let e = m.allocate_pages(0x8000, &PageRequest::WIRED).unwrap_err();
    assert_eq!(
        e,
        Error::Injected {
            site: "physical page allocation",
            nth: calls + 5,
            code: IoReturn::NO_MEMORY
        }
    );
    let after = m.stats();
    assert_eq!(after.free_pages, before.free_pages);
    assert_eq!(after.allocations, 0);
    // The virtual range went back too: the next allocation gets the same address.
    let va = m.allocate_pages(0x8000, &PageRequest::WIRED).unwrap();
    let again = hostile(17)
        .allocate_pages(0x8000, &PageRequest::WIRED)
        .unwrap();
    assert_eq!(va, again);
}

#[test]
fn injected_contiguous_failure_leaks_nothing() {
    let m = hostile(18);
    let before = m.stats();
    m.inject(FaultSite::PhysAlloc, before.site_calls[0] + 3);
    let req = PageRequest {
        contiguous: true,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        m.allocate_pages(0x4000, &req),
        Err(Error::Injected { .. })
    ));
    assert_eq!(m.stats().free_pages, before.free_pages);
    assert_eq!(m.stats().allocations, 0);
}

#[test]
fn injected_pin_failure_wires_nothing() {
    let m = hostile(19);
    let va = m.allocate_pages(0x4000, &PageRequest::PAGEABLE).unwrap();
    m.inject_next(FaultSite::Pin);
    let e = m.wire(K, va, 0x4000, true).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::CANNOT_WIRE);
    assert_eq!(m.stats().wired_pages, 0);
    m.wire(K, va, 0x4000, true).unwrap();
    m.unwire(K, va, 0x4000).unwrap();
}

#[test]
fn page_in_failure_during_wire_rolls_back() {
    let m = hostile(20);
    let va = m.allocate_pages(0x4000, &PageRequest::PAGEABLE).unwrap();
    // The third page of the wire fails to come in.
    m.inject(FaultSite::PhysAlloc, m.stats().site_calls[0] + 3);
    assert!(m.wire(K, va, 0x4000, true).is_err());
    assert_eq!(
        m.stats().wired_pages,
        0,
        "the first two pages were unwired again"
    );
    m.free_pages(va, 0x4000).unwrap();
    assert_eq!(m.stats().allocations, 0);
}

#[test]
fn injected_translation_failure() {
    let m = hostile(21);
    let va = m.allocate_pages(0x2000, &PageRequest::WIRED).unwrap();
    m.inject_next(FaultSite::Translate);
    let e = collect_runs(&m, K, va, 0x2000).unwrap_err();
    assert!(matches!(
        e,
        Error::Injected {
            site: "translation",
            ..
        }
    ));
    assert_eq!(e.io_return(), IoReturn::VM_ERROR);
    assert_eq!(
        collect_runs(&m, K, va, 0x2000)
            .unwrap()
            .iter()
            .map(|r| r.len)
            .sum::<u64>(),
        0x2000
    );
}

#[test]
fn builder_faults_fire_from_the_start() {
    let m = MachineBuilder::new()
        .fault(FaultSite::PhysAlloc, 1)
        .build()
        .unwrap();
    assert!(matches!(
        m.allocate_pages(0x1000, &PageRequest::WIRED),
        Err(Error::Injected { nth: 1, .. })
    ));
    m.allocate_pages(0x1000, &PageRequest::WIRED).unwrap();
    m.inject(FaultSite::Pin, 100);
    m.clear_faults();
    let va = m.allocate_pages(0x1000, &PageRequest::WIRED).unwrap();
    for _ in 0..120 {
        m.wire(K, va, 0x1000, false).unwrap();
    }
}

#[test]
fn builder_rejects_bad_descriptions() {
    assert!(matches!(
        MachineBuilder::new().ram(0x1000, 0x800).build(),
        Err(Error::NotAligned { .. })
    ));
    assert!(matches!(
        MachineBuilder::new().ram(0x1000, 0).build(),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        MachineBuilder::new()
            .ram(0x0, 0x4000)
            .ram(0x2000, 0x4000)
            .build(),
        Err(Error::RangeBusy { .. })
    ));
    assert!(matches!(
        MachineBuilder::new().fragmentation(1.5).build(),
        Err(Error::BadArgument { .. })
    ));
    assert!(matches!(
        MachineBuilder::new()
            .page_size(PageSize::SIZE_16K)
            .ram(0x1000, 0x4000)
            .build(),
        Err(Error::NotAligned { .. })
    ));
}

#[test]
fn layout_lists_ram_holes_and_mmio() {
    let m = MachineBuilder::new().build().unwrap();
    let text = m.layout().to_string();
    assert!(text.contains("RAM  0x000000100000"), "{text}");
    assert!(text.contains("hole"), "{text}");
    assert!(text.contains("0x000100000000"), "{text}");
    assert!(text.contains("non-coherent"), "{text}");
    assert_eq!(m.stats().ram_pages, m.stats().free_pages);
}

#[test]
fn machine_is_shareable_across_threads() {
    let m = std::sync::Arc::new(hostile(22));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let va = m.allocate_pages(0x2000, &PageRequest::WIRED).unwrap();
                    m.write_virt(K, va, &[i as u8; 0x2000]).unwrap();
                    let mut b = vec![0u8; 0x2000];
                    m.read_virt(K, va, &mut b).unwrap();
                    assert!(b.iter().all(|&x| x == i as u8));
                    m.free_pages(va, 0x2000).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(m.stats().allocations, 0);
    assert_eq!(m.stats().free_pages, m.stats().ram_pages);
}
