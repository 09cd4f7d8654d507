//! Every fault site fails cleanly (the right code, nothing leaked, the retry works), and the
//! introspection a test or a CLI uses to look inside: stats, tasks, page tables, layout.

use dmakit::platform::{
    collect_runs, CacheMode, CpuAccess, MapPiece, MapRequest, MapSource, PageRequest,
    PhysicalMemory, Task, VirtualMemory, Wiring,
};
use dmakit::{Error, IoReturn, PhysAddr, VirtAddr};
use dmakit_sim::{FaultSite, Machine, MachineBuilder, ScratchDevice, SimStats};
use std::sync::{Arc, Mutex};

const K: Task = Task::KERNEL;

fn machine(seed: u64) -> Machine {
    MachineBuilder::new()
        .seed(seed)
        .fragmentation(0.6)
        .build()
        .unwrap()
}

/// The stats with the fault-site counters masked: what must not change after a failure.
fn footprint(s: SimStats) -> SimStats {
    SimStats {
        site_calls: Default::default(),
        ..s
    }
}

fn map_req(task: Task) -> MapRequest {
    MapRequest {
        task,
        at: None,
        read_only: false,
        cache: CacheMode::CopyBack,
    }
}

/// Runs the operation that goes through `site` once, on prepared memory.
fn op_at(m: &Machine, site: FaultSite, pageable: VirtAddr, t: Task) -> dmakit::Result<()> {
    match site {
        FaultSite::PhysAlloc => {
            let va = m.allocate_pages(0x4000, &PageRequest::WIRED)?;
            m.free_pages(va, 0x4000)
        }
        FaultSite::Pin => {
            m.wire(K, pageable, 0x4000, true)?;
            m.unwire(K, pageable, 0x4000)
        }
        FaultSite::Translate => {
            m.wire(K, pageable, 0x4000, false)?;
            let r = collect_runs(m, K, pageable, 0x4000);
            m.unwire(K, pageable, 0x4000)?;
            r.map(|_| ())
        }
        FaultSite::Map => {
            let piece = MapPiece {
                src: MapSource::Virtual(K, pageable),
                len: 0x4000,
            };
            let va = m.map_pages(&[piece], &map_req(t))?;
            m.unmap_pages(t, va, 0x4000)
        }
    }
}

#[test]
fn every_site_fails_cleanly_and_the_retry_works() {
    for site in FaultSite::ALL {
        let m = machine(40);
        let t = m.create_task();
        let pageable = m.allocate_pages(0x4000, &PageRequest::PAGEABLE).unwrap();
        m.write_virt(K, pageable, &[3; 0x4000]).unwrap();
        let before = m.stats();
        m.inject(site, before.calls(site) + 1);
        let e = op_at(&m, site, pageable, t).unwrap_err();
        assert_eq!(
            e,
            Error::Injected {
                site: site.name(),
                nth: before.calls(site) + 1,
                code: site.code()
            },
            "{site}"
        );
        assert_eq!(footprint(m.stats()), footprint(before.clone()), "{site}");
        assert!(
            m.page_table(t).unwrap().is_empty(),
            "{site}: nothing mapped"
        );
        op_at(&m, site, pageable, t).unwrap();
        assert_eq!(footprint(m.stats()), footprint(before), "{site}");
    }
}

#[test]
fn injected_codes_are_the_genuine_ones() {
    let codes: Vec<(FaultSite, IoReturn)> = FaultSite::ALL.iter().map(|&s| (s, s.code())).collect();
    assert_eq!(
        codes,
        [
            (FaultSite::PhysAlloc, IoReturn::NO_MEMORY),
            (FaultSite::Pin, IoReturn::CANNOT_WIRE),
            (FaultSite::Translate, IoReturn::VM_ERROR),
            (FaultSite::Map, IoReturn::NO_SPACE),
        ]
    );
    // A genuine mapping failure has the same code as the injected one.
    let m = machine(41);
    let va = m.allocate_pages(0x1000, &PageRequest::WIRED).unwrap();
    let taken = MapRequest {
        at: Some(va),
        ..map_req(K)
    };
    let piece = MapPiece {
        src: MapSource::Virtual(K, va),
        len: 0x1000,
    };
    let e = m.map_pages(&[piece], &taken).unwrap_err();
    assert_eq!(e.io_return(), FaultSite::Map.code(), "{e}");
}

#[test]
fn a_failure_at_any_page_of_an_allocation_leaks_nothing() {
    let m = machine(42);
    let t = m.create_task();
    for k in 1..=8 {
        let before = m.stats();
        m.inject(FaultSite::PhysAlloc, before.calls(FaultSite::PhysAlloc) + k);
        assert!(m.vm_allocate(t, 0x8000, false).is_err(), "page {k}");
        assert_eq!(footprint(m.stats()), footprint(before), "page {k}");
        assert!(m.page_table(t).unwrap().is_empty());
    }
    for k in 1..=8 {
        let req = PageRequest {
            contiguous: true,
            phys_limit: 0xFFFF_FFFF,
            ..PageRequest::WIRED
        };
        let before = m.stats();
        m.inject(FaultSite::PhysAlloc, before.calls(FaultSite::PhysAlloc) + k);
        assert!(m.allocate_pages(0x8000, &req).is_err(), "page {k}");
        assert_eq!(footprint(m.stats()), footprint(before), "page {k}");
    }
    // And wiring fresh pageable memory, which pages in as it goes.
    for k in 1..=8 {
        let before = m.stats();
        let va = m.vm_allocate(t, 0x8000, true).unwrap();
        m.inject(FaultSite::PhysAlloc, before.calls(FaultSite::PhysAlloc) + k);
        assert!(m.wire(t, va, 0x8000, true).is_err(), "page {k}");
        let after = m.stats();
        assert_eq!(after.wired_pages, 0, "page {k}: nothing stays wired");
        // Pages brought in before the failure belong to the allocation, not to a leak.
        assert_eq!(after.used_pages(), before.used_pages() + k - 1, "page {k}");
        assert!(m.unwire(t, va, 0x1000).is_err(), "and nothing to unwire");
        m.vm_deallocate(t, va, 0x8000).unwrap();
        assert_eq!(footprint(m.stats()), footprint(before), "page {k}");
    }
    m.destroy_task(t).unwrap();
    assert_eq!(m.stats().used_pages(), 0);
}

#[test]
fn builder_plans_a_mapping_failure() {
    let m = MachineBuilder::new()
        .fault(FaultSite::Map, 1)
        .build()
        .unwrap();
    let va = m.allocate_pages(0x1000, &PageRequest::WIRED).unwrap();
    let piece = MapPiece {
        src: MapSource::Physical(collect_runs(&m, K, va, 0x1000).unwrap()[0].addr),
        len: 0x1000,
    };
    assert!(matches!(
        m.map_pages(&[piece], &map_req(K)),
        Err(Error::Injected {
            site: "mapping",
            nth: 1,
            ..
        })
    ));
    let view = m.map_pages(&[piece], &map_req(K)).unwrap();
    m.unmap_pages(K, view, 0x1000).unwrap();
    m.free_pages(va, 0x1000).unwrap();
}

#[test]
fn a_task_whose_memory_another_task_maps_cannot_be_destroyed() {
    let m = machine(43);
    let owner = m.create_task();
    let viewer = m.create_task();
    let va = m.vm_allocate(owner, 0x2000, false).unwrap();
    m.write_virt(owner, va, b"shared").unwrap();
    let piece = MapPiece {
        src: MapSource::Virtual(owner, va),
        len: 0x2000,
    };
    let view = m.map_pages(&[piece], &map_req(viewer)).unwrap();
    // The owner's own second view of itself does not count against it.
    let own = m.map_pages(&[piece], &map_req(owner)).unwrap();
    let before = m.page_table(owner).unwrap();
    assert!(matches!(m.destroy_task(owner), Err(Error::Busy { .. })));
    assert_eq!(m.page_table(owner).unwrap(), before, "nothing changed");
    let mut b = [0u8; 6];
    m.read_virt(viewer, view, &mut b).unwrap();
    assert_eq!(&b, b"shared");
    m.unmap_pages(viewer, view, 0x2000).unwrap();
    m.destroy_task(owner).unwrap();
    assert!(matches!(
        m.read_virt(owner, own, &mut b),
        Err(Error::BadArgument { .. })
    ));
    m.destroy_task(viewer).unwrap();
    let s = m.stats();
    assert_eq!((s.used_pages(), s.allocations, s.tasks), (0, 0, 1));
}

#[test]
fn stats_count_what_is_live() {
    let m = machine(44);
    let s = m.stats();
    assert_eq!(s.ram_pages, s.free_pages);
    assert_eq!((s.tasks, s.allocations, s.kernel_allocations), (1, 0, 0));
    let a = m.allocate_pages(0x3000, &PageRequest::WIRED).unwrap();
    let t = m.create_task();
    let b = m.vm_allocate(t, 0x2000, true).unwrap();
    m.wire(t, b, 0x1000, false).unwrap();
    let s = m.stats();
    assert_eq!(s.tasks, 2);
    assert_eq!(s.allocations, 2);
    assert_eq!(s.kernel_allocations, 1);
    assert_eq!(
        s.used_pages(),
        3 + 1,
        "pageable: only the wired page is resident"
    );
    assert_eq!(s.wired_pages, 1);
    assert_eq!(s.calls(FaultSite::PhysAlloc), 4);
    assert_eq!(s.calls(FaultSite::Pin), 1);
    assert_eq!(m.tasks(), vec![K, t]);
    m.unwire(t, b, 0x1000).unwrap();
    m.destroy_task(t).unwrap();
    m.free_pages(a, 0x3000).unwrap();
    assert_eq!(m.tasks(), vec![K]);
    assert_eq!(m.stats().used_pages(), 0);
}

#[test]
fn page_tables_list_where_every_page_landed() {
    let m = machine(45);
    let va = m.allocate_pages(0x4000, &PageRequest::WIRED).unwrap();
    let table = m.page_table(K).unwrap();
    assert_eq!(table.len(), 4);
    let runs = collect_runs(&m, K, va, 0x4000).unwrap();
    let mut expect = Vec::new();
    for r in runs {
        let mut a = r.addr.0;
        while a < r.addr.0 + r.len {
            expect.push(PhysAddr(a));
            a += 0x1000;
        }
    }
    let got: Vec<PhysAddr> = table.iter().map(|e| e.pa.unwrap()).collect();
    assert_eq!(got, expect);
    for (i, e) in table.iter().enumerate() {
        assert_eq!(e.va, VirtAddr(va.0 + i as u64 * 0x1000));
        assert!(e.always_wired && e.writable && !e.swapped && !e.mapping);
        assert_eq!((e.wires, e.cache), (0, None));
    }
    m.protect(K, va, 0x1000, false).unwrap();
    m.wire(K, VirtAddr(va.0 + 0x1000), 1, false).unwrap();
    let table = m.page_table(K).unwrap();
    assert!(!table[0].writable);
    assert_eq!(table[1].wires, 1);
    assert!(matches!(
        m.page_table(Task(9)),
        Err(Error::BadArgument { .. })
    ));
    m.unwire(K, VirtAddr(va.0 + 0x1000), 1).unwrap();
    m.free_pages(va, 0x4000).unwrap();
    assert!(m.page_table(K).unwrap().is_empty());
}

#[test]
fn layout_names_regions_holes_and_windows() {
    let dev = Arc::new(Mutex::new(ScratchDevice::new(1, 0x20)));
    let m = MachineBuilder::new()
        .seed(46)
        .ram(0x10_0000, 0x2FF0_0000)
        .ram(0x1_0000_0000, 0x2000_0000)
        .mmio(0xFE00_0000, 0x1000, dev)
        .build()
        .unwrap();
    let l = m.layout();
    assert_eq!(l.ram.len(), 2);
    assert_eq!(l.mmio, vec![(0xFE00_0000, 0x1000, "scratch".to_string())]);
    assert_eq!(l.seed, 46);
    assert!(!l.coherent);
    let text = l.to_string();
    assert!(
        text.contains("hole 0x000030000000-0x000100000000"),
        "{text}"
    );
    assert!(
        text.contains("MMIO 0x0000fe000000-0x0000fe001000 scratch"),
        "{text}"
    );
    assert_eq!(
        m.stats().ram_pages,
        (0x2FF0_0000 + 0x2000_0000) / 0x1000,
        "RAM counted, holes not"
    );
}

#[test]
fn machines_are_shareable_and_printable() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Machine>();
    shareable::<dmakit_sim::SimIommu>();
    let b = MachineBuilder::new().seed(7).coherent(true);
    let text = format!("{b:?}");
    assert!(
        text.contains("seed: 7") && text.contains("coherent: true"),
        "{text}"
    );
    let m = b.build().unwrap();
    let text = format!("{m:?}");
    assert!(
        text.contains("DMA-coherent") || text.contains("coherent: true"),
        "{text}"
    );
}
