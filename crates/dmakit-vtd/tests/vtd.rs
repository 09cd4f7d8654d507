//! The VT-d driver against a fake remapping unit on the simulated machine: bring-up
//! handshakes, translation by table walks, invalidation before reuse, caching mode,
//! non-snooping units, queued invalidation, faults, teardown and leaks.

mod model;

use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
use dmakit::dma::{DmaCommand, PrepareOptions, SegmentFormat};
use dmakit::mapper::{Access, IommuHardware, Mapper};
use dmakit::platform::{CacheOp, CacheOps};
use dmakit::{Direction, Error, IoAddr, PageSize, PhysAddr};
use dmakit_sim::{FaultSite, Machine, MachineBuilder};
use dmakit_vtd::{
    devfn, source_id, FaultReason, Invalidation, MapperOptions, Vtd, VtdFault, VtdOptions,
};
use model::{attach, Config, Event, FakeVtd, BASE};
use std::sync::{Arc, Mutex};

type Unit = Arc<Mutex<FakeVtd>>;

fn machine(seed: u64, coherent: bool) -> Arc<Machine> {
    Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .fragmentation(0.8)
            .coherent(coherent)
            .build()
            .unwrap(),
    )
}

fn rig(cfg: Config) -> (Arc<Machine>, Unit) {
    let m = machine(7, false);
    let u = attach(&m, cfg);
    (m, u)
}

fn opts() -> VtdOptions {
    VtdOptions::new().poll_limit(1000)
}

fn no_errors(u: &Unit) {
    let e = u.lock().unwrap().errors.clone();
    assert!(e.is_empty(), "the unit saw protocol violations: {e:#?}");
}

fn events(u: &Unit) -> Vec<Event> {
    u.lock().unwrap().events.clone()
}

/// A page of `fill` bytes, and its physical address.
/// Written back from the CPU caches, so a device sees it on the non-coherent machine.
fn page(m: &Arc<Machine>, fill: u8) -> (BufferMemoryDescriptor<Arc<Machine>>, PhysAddr) {
    let b = BufferMemoryDescriptor::with_bytes(m.clone(), &[fill; 4096], Direction::InOut).unwrap();
    let pa = b.physical_segment(0).unwrap().addr;
    m.cache_phys(CacheOp::Clean, pa, 4096).unwrap();
    (b, pa)
}

const NVME: u16 = 0x0020; // 00:04.0

fn window() -> MapperOptions {
    MapperOptions::new(0x10_0000, 0x0FF0_0000)
}

#[test]
fn bring_up_installs_a_root_table_invalidates_and_enables_in_order() {
    let (m, u) = rig(Config::qemu());
    let before = m.stats().used_pages();
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    no_errors(&u);
    let ev = events(&u);
    // SRTP, then context global, then IOTLB global (drained), then TE.
    assert!(matches!(ev[0], Event::Gcmd(v) if v == 1 << 30), "{ev:?}");
    assert!(matches!(
        ev[1],
        Event::Context {
            granularity: 1,
            queued: false,
            ..
        }
    ));
    assert!(matches!(
        ev[2],
        Event::Iotlb {
            granularity: 1,
            drain: true,
            queued: false,
            ..
        }
    ));
    assert!(matches!(ev[3], Event::Gcmd(v) if v == 1 << 31));
    assert_eq!(ev.len(), 4);
    let unit = u.lock().unwrap();
    assert!(unit.translating());
    assert_ne!(unit.root, 0);
    drop(unit);
    let info = vtd.info();
    assert_eq!((info.levels, info.address_width), (3, 39));
    assert_eq!(info.version, (1, 0));
    assert!(!info.caching_mode && !info.coherent);
    assert_eq!(info.domain_ids, 1 << 16);
    assert_eq!(vtd.stats().table_pages, 1, "the root table");
    assert_eq!(m.stats().used_pages(), before + 1);
    // With translation on and no domain, a device faults (root entry not present).
    assert_eq!(u.lock().unwrap().translate(NVME, 0x1000, false), Err(1));
    let log = vtd.faults().unwrap();
    assert_eq!(
        log.faults,
        [VtdFault {
            source_id: NVME,
            iova: IoAddr(0x1000),
            write: false,
            reason: FaultReason::RootNotPresent
        }]
    );
    drop(vtd);
    assert!(
        !u.lock().unwrap().translating(),
        "teardown turns translation off"
    );
    assert_eq!(m.stats().used_pages(), before, "and frees the root table");
    no_errors(&u);
}

#[test]
fn firmware_left_translation_on_so_it_goes_off_first() {
    let (m, u) = rig(Config {
        firmware_te: true,
        ..Config::qemu()
    });
    let _vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let ev = events(&u);
    assert!(matches!(ev[0], Event::Gcmd(0)), "TE cleared first: {ev:?}");
    assert!(matches!(ev[1], Event::Gcmd(v) if v == 1 << 30));
    no_errors(&u);
}

#[test]
fn refuses_what_it_cannot_drive() {
    // No second-level tables (QEMU's dma-translation=off).
    let (m, _u) = rig(Config {
        sagaw: Some(0),
        ..Config::qemu()
    });
    let e = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap_err();
    assert!(
        matches!(e, Error::Unsupported { what } if what.contains("SAGAW")),
        "{e}"
    );
    // Four levels on a 39-bit unit.
    let (m, _u) = rig(Config::qemu());
    let e = Vtd::new(m.clone(), PhysAddr(BASE), opts().levels(4)).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let e = Vtd::new(m.clone(), PhysAddr(BASE), opts().levels(2)).unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }), "{e}");
    // Queued invalidation on a unit without it.
    let (m, _u) = rig(Config {
        qi: false,
        ..Config::qemu()
    });
    let e = Vtd::new(
        m.clone(),
        PhysAddr(BASE),
        opts().invalidation(Invalidation::Queued),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Unsupported { what } if what.contains("ECAP.QI")),
        "{e}"
    );
    // A misaligned base, and a base where nothing is.
    let e = Vtd::new(m.clone(), PhysAddr(BASE + 4), opts()).unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }), "{e}");
    assert!(Vtd::new(m.clone(), PhysAddr(0xFEC0_0000), opts()).is_err());
    // 16 KiB pages.
    let m16 = Arc::new(
        MachineBuilder::new()
            .page_size(PageSize::SIZE_16K)
            .build()
            .unwrap(),
    );
    attach(&m16, Config::qemu());
    let e = Vtd::new(m16.clone(), PhysAddr(BASE), opts()).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    for m in [&m, &m16] {
        assert_eq!(
            m.stats().kernel_allocations,
            0,
            "nothing allocated on refusal"
        );
    }
}

#[test]
fn a_unit_that_never_answers_times_out_and_nothing_leaks() {
    let (m, u) = rig(Config::qemu());
    u.lock().unwrap().stuck = true;
    let before = m.stats().used_pages();
    let pauses = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p = pauses.clone();
    let e = Vtd::new(
        m.clone(),
        PhysAddr(BASE),
        opts().pause(move || {
            p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Timeout { what, .. } if what.contains("RTPS")),
        "{e}"
    );
    assert!(pauses.load(std::sync::atomic::Ordering::Relaxed) >= 999);
    assert_eq!(m.stats().used_pages(), before);
}

#[test]
fn mapped_pages_translate_with_their_permissions_and_faults_decode() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(0, devfn(4, 0).unwrap()).unwrap();
    assert_eq!(dom.source_id(), NVME);
    assert_eq!(dom.domain_id(), 1);
    let ev = events(&u);
    let n = ev.len();
    // A new root entry: global context invalidation, then the domain's IOTLB.
    assert!(
        matches!(ev[n - 2], Event::Context { granularity: 1, .. }),
        "{ev:?}"
    );
    assert!(matches!(
        ev[n - 1],
        Event::Iotlb {
            granularity: 2,
            did: 1,
            ..
        }
    ));
    let mapper = dom.mapper(window()).unwrap();
    let (_a, pa_r) = page(&m, 0xAA);
    let (_b, pa_w) = page(&m, 0xBB);
    let iova = mapper.iovm_alloc(2).unwrap();
    assert!(iova.0 >= 0x10_0000);
    mapper.iovm_insert_page(iova, pa_r, Access::READ).unwrap();
    mapper
        .iovm_insert_page(IoAddr(iova.0 + 4096), pa_w, Access::WRITE)
        .unwrap();
    assert_eq!(dom.mapped_pages(), 2);
    assert_eq!(
        dom.translate(IoAddr(iova.0 + 5)).unwrap(),
        Some((PhysAddr(pa_r.0 + 5), Access::READ))
    );
    let mut unit = u.lock().unwrap();
    let mut v = [0u8; 16];
    unit.device_read(NVME, iova.0 + 100, &mut v).unwrap();
    assert_eq!(v, [0xAA; 16]);
    unit.device_write(NVME, iova.0 + 4096 + 8, b"through VT-d")
        .unwrap();
    // Denied: writing the read-only page, reading the write-only one.
    assert_eq!(unit.device_write(NVME, iova.0, b"x"), Err(5));
    drop(unit);
    let mut got = [0u8; 12];
    m.device_read(PhysAddr(pa_w.0 + 8), &mut got).unwrap();
    assert_eq!(&got, b"through VT-d");
    let log = vtd.faults().unwrap();
    assert!(!log.overflow);
    assert_eq!(
        log.faults,
        [VtdFault {
            source_id: NVME,
            iova,
            write: true,
            reason: FaultReason::WriteDenied
        }]
    );
    let f = log.faults[0];
    assert_eq!(f.pci_address(0).to_string(), "0000:00:04.0");
    assert!(f.to_string().contains("00:04.0 write at"), "{f}");
    // Collected means cleared.
    assert!(vtd.faults().unwrap().faults.is_empty());
    let mut unit = u.lock().unwrap();
    assert_eq!(unit.device_read(NVME, iova.0 + 4096, &mut v), Err(6));
    // Another function on the same bus has no context entry.
    assert_eq!(unit.translate(0x0028, iova.0, false), Err(2));
    drop(unit);
    let reasons: Vec<FaultReason> = vtd
        .faults()
        .unwrap()
        .faults
        .iter()
        .map(|f| f.reason)
        .collect();
    // One record (QEMU's): the first fault is kept until collected.
    assert_eq!(reasons, [FaultReason::ReadDenied]);
    no_errors(&u);
}

#[test]
fn a_strict_mapper_invalidates_before_iovm_free_returns() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(0, 0x20).unwrap();
    let mapper = dom.mapper(window()).unwrap();
    let (_a, pa) = page(&m, 0x11);
    let iova = mapper.iovm_alloc(1).unwrap();
    mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
    let mut v = [0u8; 4];
    u.lock().unwrap().device_read(NVME, iova.0, &mut v).unwrap();
    assert_eq!(
        u.lock().unwrap().iotlb_entries(),
        1,
        "the translation is cached"
    );
    let mark = events(&u).len();
    mapper.iovm_free(iova, 1).unwrap();
    let ev = events(&u)[mark..].to_vec();
    assert_eq!(
        ev,
        [Event::Iotlb {
            granularity: 3,
            did: dom.domain_id(),
            addr: iova.0,
            am: 0,
            drain: true,
            queued: false
        }]
    );
    assert_eq!(u.lock().unwrap().device_read(NVME, iova.0, &mut v), Err(6));
    assert_eq!(dom.mapped_pages(), 0);
    assert_eq!(mapper.usage(), (0, 0));
    no_errors(&u);
}

#[test]
fn a_lazy_mapper_never_hands_out_an_address_before_its_invalidation() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(0, 0x20).unwrap();
    // Three pages of IO space: reuse comes quickly.
    let mapper = dom
        .mapper(MapperOptions::new(0x4000_0000, 3 * 4096).lazy(true))
        .unwrap();
    let pages: Vec<_> = (0..8u8).map(|i| page(&m, i)).collect();
    let mut freed_at: std::collections::HashMap<u64, usize> = Default::default();
    let mut reuses = 0;
    let mut stale_seen = false;
    for round in 0..40 {
        let iova = mapper.iovm_alloc(1).unwrap();
        if let Some(&at) = freed_at.get(&iova.0) {
            reuses += 1;
            let ev = events(&u);
            assert!(
                ev[at..].iter().any(|e| e.covers(dom.domain_id(), iova.0)),
                "IO address {iova:?} handed out again with no invalidation since its free"
            );
        }
        let (_, pa) = &pages[round % pages.len()];
        mapper.iovm_insert_page(iova, *pa, Access::READ).unwrap();
        let mut v = [0u8; 1];
        u.lock().unwrap().device_read(NVME, iova.0, &mut v).unwrap();
        assert_eq!(
            v[0],
            (round % pages.len()) as u8,
            "the device reads the new page"
        );
        mapper.iovm_free(iova, 1).unwrap();
        freed_at.insert(iova.0, events(&u).len());
        if mapper.pending() > 0 {
            // Lazy: unmapped, not yet invalidated; the cached translation still works.
            stale_seen |= u.lock().unwrap().device_read(NVME, iova.0, &mut v).is_ok();
        }
    }
    assert!(reuses > 10, "{reuses}");
    assert!(stale_seen, "the lazy window exists in the unit");
    mapper.flush().unwrap();
    assert_eq!(mapper.pending(), 0);
    no_errors(&u);
}

#[test]
fn caching_mode_invalidates_after_making_entries_present() {
    let (m, u) = rig(Config {
        caching_mode: true,
        ..Config::qemu()
    });
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    assert!(vtd.info().caching_mode);
    let dom = vtd.domain(0, 0x20).unwrap();
    let mapper = dom.mapper(window()).unwrap();
    let iova = mapper.iovm_alloc(1).unwrap();
    let mut v = [0u8; 4];
    // The device touches the page before it is mapped: the unit caches "not present".
    assert_eq!(u.lock().unwrap().device_read(NVME, iova.0, &mut v), Err(6));
    let (_a, pa) = page(&m, 0x77);
    let mark = events(&u).len();
    mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
    let ev = events(&u)[mark..].to_vec();
    assert_eq!(
        ev,
        [Event::Iotlb {
            granularity: 3,
            did: dom.domain_id(),
            addr: iova.0,
            am: 0,
            drain: true,
            queued: false
        }]
    );
    u.lock().unwrap().device_read(NVME, iova.0, &mut v).unwrap();
    assert_eq!(v, [0x77; 4]);
    no_errors(&u);
}

#[test]
fn a_unit_that_does_not_snoop_sees_written_back_tables() {
    // A non-coherent machine: the unit reads DRAM, so every table update must be written
    // back from the CPU caches.
    let m = machine(3, false);
    let u = attach(&m, Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(3, 0x08).unwrap();
    let mapper = dom.mapper(window()).unwrap();
    let (_a, pa) = page(&m, 0x5C);
    for k in 0..5 {
        let iova = mapper.iovm_alloc(1 + k).unwrap();
        mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
        let mut v = [0u8; 2];
        u.lock()
            .unwrap()
            .device_read(source_id(3, 0x08), iova.0, &mut v)
            .unwrap();
        assert_eq!(v, [0x5C; 2]);
    }
    no_errors(&u);
    // The same unit claiming to snoop reads through the caches: still correct.
    let m = machine(3, false);
    let u = attach(
        &m,
        Config {
            coherent: true,
            ..Config::qemu()
        },
    );
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    assert!(vtd.info().coherent);
    let dom = vtd.domain(3, 0x08).unwrap();
    let mapper = dom.mapper(window()).unwrap();
    let (_a, pa) = page(&m, 0x5D);
    let iova = mapper.iovm_alloc(1).unwrap();
    mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
    let mut v = [0u8; 2];
    u.lock()
        .unwrap()
        .translate(source_id(3, 0x08), iova.0, false)
        .unwrap();
    u.lock()
        .unwrap()
        .device_read(source_id(3, 0x08), iova.0, &mut v)
        .ok();
    no_errors(&u);
}

#[test]
fn queued_invalidation_does_the_same_through_the_queue() {
    let (m, u) = rig(Config::qemu());
    let before = m.stats().used_pages();
    let vtd = Vtd::new(
        m.clone(),
        PhysAddr(BASE),
        opts().invalidation(Invalidation::Queued),
    )
    .unwrap();
    assert!(u.lock().unwrap().queued());
    assert_eq!(vtd.stats().table_pages, 3, "root, queue, status");
    let dom = vtd.domain(0, 0x20).unwrap();
    let mapper = dom.mapper(window()).unwrap();
    let (_a, pa) = page(&m, 0x42);
    for _ in 0..300 {
        // More submissions than the ring has slots: it wraps.
        let iova = mapper.iovm_alloc(1).unwrap();
        mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
        let mut v = [0u8; 1];
        u.lock().unwrap().device_read(NVME, iova.0, &mut v).unwrap();
        assert_eq!(v, [0x42]);
        mapper.iovm_free(iova, 1).unwrap();
        assert_eq!(u.lock().unwrap().device_read(NVME, iova.0, &mut v), Err(6));
    }
    let ev = events(&u);
    assert!(ev.iter().all(|e| !matches!(
        e,
        Event::Context { queued: false, .. } | Event::Iotlb { queued: false, .. }
    )));
    assert!(ev.iter().filter(|e| **e == Event::Wait).count() > 300);
    no_errors(&u);
    drop((mapper, dom, _a));
    drop(vtd);
    let unit = u.lock().unwrap();
    assert!(!unit.queued() && !unit.translating());
    drop(unit);
    assert_eq!(m.stats().used_pages(), before);
    no_errors(&u);
}

#[test]
fn dropping_the_domain_detaches_the_function_and_frees_every_table() {
    let (m, u) = rig(Config::qemu());
    let before = m.stats().used_pages();
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let after_bring_up = m.stats().used_pages();
    let dom = vtd.domain(0, 0x20).unwrap();
    let did = dom.domain_id();
    // A window across several leaf tables (2 MiB each) and two level-2 tables (1 GiB).
    let mapper = dom
        .mapper(MapperOptions::new(0x3FE0_0000, 0x60_0000))
        .unwrap();
    let (_a, pa) = page(&m, 1);
    let big = mapper.iovm_alloc(0x600).unwrap();
    for k in (0..0x600u64).step_by(0x100) {
        mapper
            .iovm_insert_page(IoAddr(big.0 + k * 4096), pa, Access::READ_WRITE)
            .unwrap();
    }
    assert!(dom.table_pages() >= 5, "{}", dom.table_pages());
    let mut v = [0u8; 1];
    u.lock().unwrap().device_read(NVME, big.0, &mut v).unwrap();
    assert_eq!(vtd.stats().domains, 1);
    // The mapper holds the domain; a command would hold the mapper.
    drop(dom);
    let mark = events(&u).len();
    drop(mapper);
    let ev = events(&u)[mark..].to_vec();
    assert_eq!(
        ev,
        [
            Event::Context {
                granularity: 3,
                did,
                sid: NVME,
                queued: false
            },
            Event::Iotlb {
                granularity: 2,
                did,
                addr: 0,
                am: 0,
                drain: true,
                queued: false
            }
        ]
    );
    assert_eq!(u.lock().unwrap().device_read(NVME, big.0, &mut v), Err(2));
    let s = vtd.stats();
    assert_eq!((s.domains, s.leaked_pages), (0, 0));
    assert_eq!(s.table_pages, 2, "root and the bus's context table stay");
    drop(_a);
    assert_eq!(m.stats().used_pages(), after_bring_up + 1);
    // The function can have a domain again, and the domain id comes back.
    let again = vtd.domain(0, 0x20).unwrap();
    assert_eq!(again.domain_id(), did);
    drop(again);
    drop(vtd);
    assert_eq!(m.stats().used_pages(), before, "nothing leaked");
    no_errors(&u);
}

#[test]
fn domains_are_separate_and_exclusive() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let a = vtd.domain(0, 0x20).unwrap();
    assert!(matches!(vtd.domain(0, 0x20), Err(Error::Busy { .. })));
    let b = vtd.domain(0, 0x28).unwrap();
    // Same bus: the context table exists, so device-selective context invalidation.
    let ev = events(&u);
    assert!(matches!(
        ev[ev.len() - 2],
        Event::Context {
            granularity: 3,
            sid: 0x28,
            ..
        }
    ));
    assert_ne!(a.domain_id(), b.domain_id());
    let ma = a.mapper(window()).unwrap();
    let mb = b.mapper(window()).unwrap();
    let (_x, pa) = page(&m, 0xA0);
    let (_y, pb) = page(&m, 0xB0);
    let ia = ma.iovm_alloc(1).unwrap();
    let ib = mb.iovm_alloc(1).unwrap();
    assert_eq!(ia, ib, "two address spaces, same first address");
    ma.iovm_insert_page(ia, pa, Access::READ).unwrap();
    mb.iovm_insert_page(ib, pb, Access::READ).unwrap();
    let mut v = [0u8; 1];
    u.lock().unwrap().device_read(0x20, ia.0, &mut v).unwrap();
    assert_eq!(v, [0xA0]);
    u.lock().unwrap().device_read(0x28, ib.0, &mut v).unwrap();
    assert_eq!(v, [0xB0]);
    drop((ma, a));
    assert_eq!(u.lock().unwrap().device_read(0x20, ia.0, &mut v), Err(2));
    u.lock().unwrap().device_read(0x28, ib.0, &mut v).unwrap();
    assert_eq!(v, [0xB0], "the other function keeps its mapping");
    no_errors(&u);
}

#[test]
fn windows_are_checked_and_a_new_mapper_starts_empty() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(0, 0x20).unwrap();
    for (w, what) in [
        (MapperOptions::new(0, 0x10_0000), "starts at 0"),
        (MapperOptions::new(0x1000, 0), "empty"),
        (MapperOptions::new(0x1800, 0x1000), "misaligned"),
        (MapperOptions::new(0x7F_FFFF_0000, 0x2_0000), "past 2^39"),
        (
            MapperOptions::new(0xFE00_0000, 0x100_0000),
            "the interrupt range",
        ),
        (MapperOptions::new(u64::MAX - 0xFFF, 0x2000), "overflow"),
    ] {
        assert!(dom.mapper(w).is_err(), "{what}");
    }
    let m1 = dom.mapper(window()).unwrap();
    assert!(matches!(dom.mapper(window()), Err(Error::Busy { .. })));
    let (_a, pa) = page(&m, 3);
    let iova = m1.iovm_alloc(1).unwrap();
    m1.iovm_insert_page(iova, pa, Access::READ).unwrap();
    // Dropped with the page still mapped.
    drop(m1);
    assert_eq!(dom.mapped_pages(), 1);
    let m2 = dom.mapper(window()).unwrap();
    assert_eq!(dom.mapped_pages(), 0);
    let mut v = [0u8; 1];
    assert_eq!(u.lock().unwrap().device_read(NVME, iova.0, &mut v), Err(6));
    assert_eq!(m2.window(), (IoAddr(0x10_0000), 0x0FF0_0000));
    no_errors(&u);
}

#[test]
fn fault_records_overflow_and_collapse_like_qemu() {
    // One record, faults of one requester collapsed (QEMU).
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    {
        let mut unit = u.lock().unwrap();
        unit.translate(0x20, 0x5000, true).unwrap_err();
        unit.translate(0x20, 0x6000, true).unwrap_err(); // collapsed: dropped silently
        unit.translate(0x0100, 0x7000, false).unwrap_err(); // another requester: overflow
    }
    let log = vtd.faults().unwrap();
    assert!(log.overflow);
    assert_eq!(log.faults.len(), 1);
    assert_eq!(log.faults[0].iova, IoAddr(0x5000));
    let log = vtd.faults().unwrap();
    assert!(!log.overflow && log.faults.is_empty(), "cleared: {log:?}");
    // Four records: kept in order, starting at the index the unit reports.
    let (m, u) = rig(Config {
        records: 4,
        collapse: false,
        ..Config::qemu()
    });
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    assert_eq!(vtd.info().fault_records, 4);
    let mut unit = u.lock().unwrap();
    for k in 0..3u64 {
        unit.translate(0x0100 + k as u16, 0x1000 * (k + 1), k == 1)
            .unwrap_err();
    }
    drop(unit);
    let log = vtd.faults().unwrap();
    let got: Vec<(u16, u64, bool, FaultReason)> = log
        .faults
        .iter()
        .map(|f| (f.source_id, f.iova.0, f.write, f.reason))
        .collect();
    assert_eq!(
        got,
        [
            (0x0100, 0x1000, false, FaultReason::RootNotPresent),
            (0x0101, 0x2000, true, FaultReason::RootNotPresent),
            (0x0102, 0x3000, false, FaultReason::RootNotPresent),
        ]
    );
    // The next faults start at record 3 and wrap: still oldest first.
    let mut unit = u.lock().unwrap();
    for k in 0..3u64 {
        unit.translate(0x0200 + k as u16, 0x1000, false)
            .unwrap_err();
    }
    drop(unit);
    let ids: Vec<u16> = vtd
        .faults()
        .unwrap()
        .faults
        .iter()
        .map(|f| f.source_id)
        .collect();
    assert_eq!(ids, [0x0200, 0x0201, 0x0202]);
    no_errors(&u);
}

#[test]
fn invalidations_cover_ranges_with_aligned_masks_or_the_domain() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(0, 0x20).unwrap();
    let did = dom.domain_id();
    let check = |iova: u64, len: u64, want: Option<(u8, u64, u32)>| {
        let mark = events(&u).len();
        dom.invalidate(IoAddr(iova), len).unwrap();
        let ev = events(&u)[mark..].to_vec();
        match want {
            None => assert!(ev.is_empty()),
            Some((g, addr, am)) => assert_eq!(
                ev,
                [Event::Iotlb {
                    granularity: g,
                    did: if g == 1 { 0 } else { did },
                    addr,
                    am,
                    drain: true,
                    queued: false
                }],
                "{iova:#x}+{len:#x}"
            ),
        }
    };
    check(0x10_0000, 0, None);
    check(0x10_0000, 0x1000, Some((3, 0x10_0000, 0)));
    check(0x10_0000, 0x4000, Some((3, 0x10_0000, 2)));
    // Crossing an alignment boundary: the covering block is larger.
    check(0x10_3000, 0x2000, Some((3, 0x10_0000, 3)));
    check(0x10_0800, 1, Some((3, 0x10_0000, 0)));
    // 2^18 pages is the largest mask (CAP.MAMV); more is the whole domain.
    check(0x1_0000_0000, 0x4000_0000, Some((3, 0x1_0000_0000, 18)));
    check(0x1_0000_0000, 0x8000_0000, Some((2, 0, 0)));
    assert!(dom.invalidate(IoAddr(u64::MAX), 2).is_err());
    no_errors(&u);
    // A unit without page-selective invalidation: always the domain.
    let (m, u) = rig(Config {
        psi: false,
        ..Config::qemu()
    });
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(0, 0x20).unwrap();
    let mark = events(&u).len();
    dom.invalidate(IoAddr(0x10_0000), 0x1000).unwrap();
    assert!(matches!(
        events(&u)[mark..],
        [Event::Iotlb { granularity: 2, .. }]
    ));
    no_errors(&u);
}

#[test]
fn write_buffer_flushing_where_the_unit_asks_for_it() {
    let (m, u) = rig(Config {
        rwbf: true,
        ..Config::qemu()
    });
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(0, 0x20).unwrap();
    let mapper = dom.mapper(window()).unwrap();
    let (_a, pa) = page(&m, 9);
    let iova = mapper.iovm_alloc(1).unwrap();
    let mark = events(&u).len();
    mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
    assert_eq!(
        events(&u)[mark..],
        [Event::Gcmd(1 << 31 | 1 << 27), Event::WriteBuffer]
    );
    let mark = events(&u).len();
    mapper.iovm_free(iova, 1).unwrap();
    let ev = events(&u)[mark..].to_vec();
    assert!(
        matches!(
            ev[..],
            [Event::Gcmd(_), Event::WriteBuffer, Event::Iotlb { .. }]
        ),
        "{ev:?}"
    );
    assert!(vtd.stats().write_buffer_flushes >= 2);
    no_errors(&u);
}

#[test]
fn four_level_tables_reach_above_512_gib() {
    let (m, u) = rig(Config {
        aw_bits: 48,
        ..Config::qemu()
    });
    // Both depths are offered; the fewest is the default, four on request.
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    assert_eq!(vtd.info().levels, 3);
    drop(vtd);
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts().levels(4)).unwrap();
    assert_eq!((vtd.info().levels, vtd.info().address_width), (4, 48));
    let dom = vtd.domain(1, 0).unwrap();
    let mapper = dom
        .mapper(MapperOptions::new(0x100_0000_0000, 0x10_0000))
        .unwrap();
    let (_a, pa) = page(&m, 0x48);
    let iova = mapper.iovm_alloc(1).unwrap();
    assert!(iova.0 >= 1 << 40);
    mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
    let mut v = [0u8; 1];
    u.lock()
        .unwrap()
        .device_read(0x0100, iova.0, &mut v)
        .unwrap();
    assert_eq!(v, [0x48]);
    assert_eq!(dom.table_pages(), 4);
    no_errors(&u);
}

#[test]
fn allocation_failures_leave_nothing_behind() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let base = m.stats().used_pages();
    // The domain's top table, then the bus's context table.
    for nth in 1..=2 {
        m.inject(
            FaultSite::PhysAlloc,
            m.stats().calls(FaultSite::PhysAlloc) + nth,
        );
        let e = vtd.domain(5, 0).unwrap_err();
        assert!(matches!(e, Error::Injected { .. }), "{e}");
        m.clear_faults();
        assert_eq!(m.stats().used_pages(), base);
        assert_eq!(vtd.stats().domains, 0);
    }
    assert_eq!(u.lock().unwrap().translate(0x0500, 0x1000, false), Err(1));
    // Intermediate tables while mapping.
    let dom = vtd.domain(5, 0).unwrap();
    let mapper = dom.mapper(window()).unwrap();
    let (_a, pa) = page(&m, 1);
    let with_domain = m.stats().used_pages();
    let iova = mapper.iovm_alloc(1).unwrap();
    m.inject_next(FaultSite::PhysAlloc);
    assert!(mapper.iovm_insert_page(iova, pa, Access::READ).is_err());
    m.clear_faults();
    assert_eq!(m.stats().used_pages(), with_domain);
    mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
    mapper.iovm_free(iova, 1).unwrap();
    drop((mapper, dom, _a));
    assert_eq!(
        m.stats().used_pages(),
        base + 1,
        "the context table of bus 5 stays"
    );
    no_errors(&u);
}

#[test]
fn dma_commands_through_the_vtd_mapper() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(0, 0x20).unwrap();
    let mapper: Arc<dyn Mapper> = dom.mapper(window()).unwrap();
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let buf =
        Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::Out).unwrap());
    let mut cmd = DmaCommand::builder(m.clone())
        .format(SegmentFormat::Little64)
        .mapper(mapper.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(buf.clone()).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    let segs: Vec<_> = cmd.segments().collect::<dmakit::Result<_>>().unwrap();
    assert_eq!(segs.len(), 1, "scattered pages, one IO segment: {segs:?}");
    let mut seen = vec![0u8; data.len()];
    u.lock()
        .unwrap()
        .device_read(NVME, segs[0].addr.0, &mut seen)
        .unwrap();
    assert!(seen == data, "the device reads the buffer through the unit");
    // Device reads only (Direction::Out): writing is denied.
    assert_eq!(
        u.lock().unwrap().device_write(NVME, segs[0].addr.0, b"no"),
        Err(5)
    );
    cmd.complete().unwrap();
    assert_eq!(dom.mapped_pages(), 0);
    assert!(u
        .lock()
        .unwrap()
        .device_read(NVME, segs[0].addr.0, &mut seen[..4])
        .is_err());
    let faults = vtd.faults().unwrap().faults;
    assert!(faults
        .iter()
        .all(|f| f.source_id == NVME && f.reason.is_page_fault()));
    no_errors(&u);
}

#[test]
fn options_and_helpers() {
    assert_eq!(devfn(31, 7).unwrap(), 0xFF);
    assert!(devfn(32, 0).is_err() && devfn(0, 8).is_err());
    assert_eq!(source_id(0x12, devfn(3, 1).unwrap()), 0x1219);
    for c in 1..=0x10u8 {
        assert_eq!(FaultReason::from_code(c).code(), c);
    }
    assert_eq!(FaultReason::from_code(0x22), FaultReason::Other(0x22));
    assert!(!FaultReason::ContextNotPresent.is_page_fault());
    let o = VtdOptions::new().poll_limit(0);
    assert_eq!(o.poll_limit, 1);
    assert!(format!("{o:?}").contains("poll_limit"));
}

#[test]
fn tables_stay_allocated_when_the_unit_stops_confirming() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(m.clone(), PhysAddr(BASE), opts()).unwrap();
    let dom = vtd.domain(0, 0x20).unwrap();
    let mapper = dom.mapper(window()).unwrap();
    let (_a, pa) = page(&m, 1);
    let iova = mapper.iovm_alloc(1).unwrap();
    mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
    let tables = dom.table_pages() as u64;
    u.lock().unwrap().stuck = true;
    // An unmap whose invalidation never completes fails by name, without hanging.
    let e = mapper.iovm_free(iova, 1).unwrap_err();
    assert!(
        matches!(e, Error::Timeout { what, .. } if what.contains("IOTLB")),
        "{e}"
    );
    let used = m.stats().used_pages();
    drop((mapper, dom));
    // The unit never confirmed the detach: it may still walk the tables, so they stay.
    assert_eq!(vtd.stats().leaked_pages, tables);
    assert_eq!(m.stats().used_pages(), used);
    u.lock().unwrap().stuck = false;
    // The domain id is not handed out again either.
    let next = vtd.domain(0, 0x20).unwrap();
    assert_eq!(next.domain_id(), 2);
}

#[test]
fn a_queue_error_fails_the_request_and_stops_the_queue() {
    let (m, u) = rig(Config::qemu());
    let vtd = Vtd::new(
        m.clone(),
        PhysAddr(BASE),
        opts().invalidation(Invalidation::Queued),
    )
    .unwrap();
    let dom = vtd.domain(0, 0x20).unwrap();
    u.lock().unwrap().refuse_queue = true;
    let e = dom.invalidate(IoAddr(0x10_0000), 0x1000).unwrap_err();
    assert!(
        matches!(e, Error::NotAttached { why, .. } if why.contains("IQE")),
        "{e}"
    );
    u.lock().unwrap().refuse_queue = false;
    // Nothing more is submitted to a queue that failed.
    let e = dom.invalidate(IoAddr(0x10_0000), 0x1000).unwrap_err();
    assert!(matches!(e, Error::NotAttached { .. }), "{e}");
}
