//! The Linux host backend on real memory of this process.
//!
//! Tests that need physical addresses need root (CAP_SYS_ADMIN): without it they print
//! `skipped: <reason>` and return. The non-root paths are tested for real by re-running this
//! test binary as user `nobody` (via `setpriv`), with a low RLIMIT_MEMLOCK (via `prlimit`).

use dmakit::platform::{
    collect_runs, CacheOp, CacheOps, CpuAccess, Mmio, PageRequest, PhysicalMemory, Task, Width,
    Wiring,
};
use dmakit::{Error, IoReturn, PhysAddr, VirtAddr};
use dmakit_linux::{AddressMode, Host, HUGEPAGE};
use std::process::Command;
use std::sync::Mutex;

const K: Task = Task::KERNEL;

/// Hugepage reservations are machine-wide: tests that change them take turns.
static HUGEPAGES: Mutex<()> = Mutex::new(());

fn host() -> Host {
    Host::new().unwrap()
}

fn need_root(h: &Host) -> bool {
    if h.address_mode() != AddressMode::Physical {
        println!("skipped: physical addresses need root (CAP_SYS_ADMIN)");
        return false;
    }
    true
}

fn page(h: &Host) -> u64 {
    h.page_size().bytes()
}

#[test]
fn wired_memory_translates_to_real_frames() {
    let h = host();
    if !need_root(&h) {
        return;
    }
    let len = 16 * page(&h);
    let va = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let runs = collect_runs(&h, K, va, len).unwrap();
    assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), len);
    assert!(runs.iter().all(|r| r.addr.0 != 0));
    // Bytes in one page share a frame; the offset carries through.
    let inside = collect_runs(&h, K, VirtAddr(va.0 + 10), 20).unwrap();
    assert_eq!(inside.len(), 1);
    assert_eq!(inside[0].addr.0, runs[0].addr.0 + 10);
    // A write through the virtual mapping is what the physical address holds.
    h.write_virt(K, VirtAddr(va.0 + 5 * page(&h) + 7), b"through pagemap")
        .unwrap();
    let pa = collect_runs(&h, K, VirtAddr(va.0 + 5 * page(&h) + 7), 15).unwrap()[0].addr;
    let mut back = [0u8; 15];
    h.read_phys(pa, &mut back).unwrap();
    assert_eq!(&back, b"through pagemap");
    h.write_phys(pa, b"THROUGH").unwrap();
    h.read_virt(K, VirtAddr(va.0 + 5 * page(&h) + 7), &mut back[..7])
        .unwrap();
    assert_eq!(&back[..7], b"THROUGH");
    h.free_pages(va, len).unwrap();
    assert!(
        matches!(h.read_phys(pa, &mut back), Err(Error::NotMapped { .. })),
        "freed memory is forgotten"
    );
}

#[test]
fn wiring_is_counted_and_blocks_free() {
    let h = host();
    let len = 4 * page(&h);
    let va = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    h.wire(K, VirtAddr(va.0 + 100), page(&h), true).unwrap();
    h.wire(K, va, 1, false).unwrap();
    assert_eq!(h.usage(), (1, 2));
    assert!(matches!(h.free_pages(va, len), Err(Error::Busy { .. })));
    h.unwire(K, va, 1).unwrap();
    assert!(matches!(h.free_pages(va, len), Err(Error::Busy { .. })));
    h.unwire(K, VirtAddr(va.0 + 100), page(&h)).unwrap();
    assert!(matches!(h.unwire(K, va, 1), Err(Error::BadArgument { .. })));
    h.free_pages(va, len).unwrap();
    assert_eq!(h.usage(), (0, 0));
}

#[test]
fn pageable_memory_is_not_ready_until_wired() {
    let h = host();
    let len = 3 * page(&h);
    let va = h.allocate_pages(len, &PageRequest::PAGEABLE).unwrap();
    h.write_virt(K, va, b"pageable").unwrap();
    let e = collect_runs(&h, K, va, len).unwrap_err();
    assert!(matches!(e, Error::NotReady { .. }), "{e}");
    assert_eq!(e.io_return(), IoReturn::NOT_READY);
    h.wire(K, va, len, true).unwrap();
    if h.address_mode() == AddressMode::Physical {
        let runs = collect_runs(&h, K, va, len).unwrap();
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), len);
    }
    h.unwire(K, va, len).unwrap();
    assert!(matches!(
        collect_runs(&h, K, va, len),
        Err(Error::NotReady { .. })
    ));
    h.free_pages(va, len).unwrap();
}

#[test]
fn caller_memory_can_be_wired_but_not_copied_unless_registered() {
    let h = host();
    let mut v = vec![7u8; 3 * page(&h) as usize];
    let va = VirtAddr(v.as_mut_ptr() as u64);
    h.wire(K, va, v.len() as u64, true).unwrap();
    if h.address_mode() == AddressMode::Physical {
        let runs = collect_runs(&h, K, va, v.len() as u64).unwrap();
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), v.len() as u64);
    }
    let mut b = [0u8; 4];
    assert!(matches!(
        h.read_virt(K, va, &mut b),
        Err(Error::NotMapped { .. })
    ));
    // SAFETY: `v` outlives the registration (unregistered below) and is not touched through
    // Rust references while registered.
    let r = unsafe { h.register_region(v.as_mut_ptr(), v.len()) }.unwrap();
    h.read_virt(K, VirtAddr(r.0 + 10), &mut b).unwrap();
    assert_eq!(b, [7; 4]);
    h.write_virt(K, VirtAddr(r.0 + 10), b"abcd").unwrap();
    assert!(
        matches!(h.unregister_region(r), Err(Error::Busy { .. })),
        "wired pages inside"
    );
    h.unwire(K, va, v.len() as u64).unwrap();
    h.unregister_region(r).unwrap();
    assert_eq!(&v[10..14], b"abcd");
}

#[test]
fn unmapped_memory_cannot_be_wired_and_nothing_stays_wired() {
    let h = host();
    let e = h.wire(K, VirtAddr(0x1000), 0x1000, false).unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }), "{e}");
    assert_eq!(h.usage(), (0, 0));
}

#[test]
fn phys_limit_is_checked_against_real_frames() {
    let h = host();
    if !need_root(&h) {
        return;
    }
    let req = PageRequest {
        phys_limit: 0xFFFF_FFFF,
        ..PageRequest::WIRED
    };
    match h.allocate_pages(8 * page(&h), &req) {
        Ok(va) => {
            for r in collect_runs(&h, K, va, 8 * page(&h)).unwrap() {
                assert!(r.addr.0 + r.len - 1 <= 0xFFFF_FFFF, "{r:?}");
            }
            h.free_pages(va, 8 * page(&h)).unwrap();
        }
        Err(e) => assert!(matches!(e, Error::NoSuitableMemory { .. }), "{e}"),
    }
    let impossible = PageRequest {
        phys_limit: 0xFFFF,
        ..PageRequest::WIRED
    };
    let e = h.allocate_pages(page(&h), &impossible).unwrap_err();
    assert!(
        matches!(e, Error::NoSuitableMemory { limit: 0xFFFF, .. }),
        "{e}"
    );
    assert_eq!(h.usage(), (0, 0), "failed attempts were freed");
}

fn set_nr_hugepages(n: u64) -> bool {
    std::fs::write("/proc/sys/vm/nr_hugepages", n.to_string()).is_ok()
}

fn nr_hugepages() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn hugepages_give_contiguous_memory_or_say_how_to_get_it() {
    let _g = HUGEPAGES.lock().unwrap_or_else(|p| p.into_inner());
    let h = host();
    if !need_root(&h) {
        return;
    }
    let before = nr_hugepages();
    let req = PageRequest {
        contiguous: true,
        ..PageRequest::WIRED
    };
    if before == 0 {
        let e = h.allocate_pages(16 * page(&h), &req).unwrap_err();
        assert!(e.to_string().contains("nr_hugepages"), "{e}");
        assert_eq!(h.usage(), (0, 0));
    }
    if !set_nr_hugepages(before.max(2)) || dmakit_linux::free_hugepages() == 0 {
        set_nr_hugepages(before);
        println!("skipped: the kernel would not reserve 2 MiB hugepages");
        return;
    }
    let va = h.allocate_pages(16 * page(&h), &req).unwrap();
    assert_eq!(va.0 % HUGEPAGE, 0);
    let runs = collect_runs(&h, K, va, HUGEPAGE).unwrap();
    assert_eq!(runs.len(), 1, "a hugepage is one physical run: {runs:?}");
    assert_eq!(runs[0].addr.0 % HUGEPAGE, 0);
    h.write_virt(K, VirtAddr(va.0 + HUGEPAGE - 4), b"tail")
        .unwrap();
    h.free_pages(va, 16 * page(&h)).unwrap();
    let big = PageRequest {
        contiguous: true,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        h.allocate_pages(2 * HUGEPAGE, &big),
        Err(Error::NoSuitableMemory { .. })
    ));
    let report = dmakit_linux::inspect(64 << 10, true).unwrap();
    assert_eq!(report.runs.len(), 1);
    set_nr_hugepages(before);
}

#[test]
fn bad_requests_are_errors_that_leak_nothing() {
    let h = host();
    let p = page(&h);
    assert!(matches!(
        h.allocate_pages(0, &PageRequest::WIRED),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        h.allocate_pages(p + 1, &PageRequest::WIRED),
        Err(Error::NotAligned { .. })
    ));
    let bad = PageRequest {
        align: 3 * p,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        h.allocate_pages(p, &bad),
        Err(Error::BadAlignment { .. })
    ));
    let pageable_contig = PageRequest {
        contiguous: true,
        ..PageRequest::PAGEABLE
    };
    assert!(matches!(
        h.allocate_pages(p, &pageable_contig),
        Err(Error::BadArgument { .. })
    ));
    assert!(h
        .allocate_pages(u64::MAX - p + 1, &PageRequest::PAGEABLE)
        .is_err());
    let va = h.allocate_pages(2 * p, &PageRequest::WIRED).unwrap();
    assert!(matches!(h.free_pages(va, p), Err(Error::WrongSize { .. })));
    assert!(matches!(
        h.free_pages(VirtAddr(va.0 + p), p),
        Err(Error::NotAllocated { .. })
    ));
    h.free_pages(va, 2 * p).unwrap();
    assert!(matches!(
        h.free_pages(va, 2 * p),
        Err(Error::NotAllocated { .. })
    ));
    assert!(matches!(
        h.wire(K, VirtAddr(u64::MAX - 1), 10, false),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        h.wire(Task(3), va, 10, false),
        Err(Error::Unsupported { .. })
    ));
    assert_eq!(h.usage(), (0, 0));
}

#[test]
fn aligned_allocations() {
    let h = host();
    for align in [0x1_0000u64, 0x20_0000] {
        let req = PageRequest {
            align,
            ..PageRequest::WIRED
        };
        let va = h.allocate_pages(page(&h), &req).unwrap();
        assert_eq!(va.0 % align, 0);
        h.free_pages(va, page(&h)).unwrap();
    }
}

#[test]
fn cpu_access_to_unknown_memory_is_refused() {
    let h = host();
    let mut b = [0u8; 8];
    let local = 5u64;
    let addr = VirtAddr(&local as *const u64 as u64);
    assert!(matches!(
        h.read_virt(K, addr, &mut b),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        h.write_virt(K, addr, &b),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        h.cache_virt(CacheOp::Flush, K, addr, 8),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        h.read_phys(PhysAddr(0x1000), &mut b),
        Err(Error::NotMapped { .. })
    ));
    // Running past the end of an allocation is refused as a whole.
    let va = h.allocate_pages(page(&h), &PageRequest::WIRED).unwrap();
    assert!(matches!(
        h.read_virt(K, VirtAddr(va.0 + page(&h) - 4), &mut b),
        Err(Error::NotMapped { .. })
    ));
    h.free_pages(va, page(&h)).unwrap();
}

#[test]
fn mmio_on_a_registered_memfd_region() {
    let h = host();
    let len = page(&h);
    let dev = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let bus = PhysAddr(0xFE00_0000);
    // SAFETY: `dev` is a live allocation of this host, unregistered before it is freed, and
    // only reached through the host's volatile MMIO path while registered.
    unsafe { h.register_mmio(bus, dev.0 as *mut u8, len as usize) }.unwrap();
    for (w, v) in [
        (Width::W8, 0xA5u64),
        (Width::W16, 0xBEEF),
        (Width::W32, 0xDEAD_BEEF),
        (Width::W64, 0x0123_4567_89AB_CDEF),
    ] {
        let at = PhysAddr(bus.0 + 0x40);
        h.mmio_write(at, w, v).unwrap();
        assert_eq!(h.mmio_read(at, w).unwrap(), v, "{w:?}");
    }
    h.mmio_write(PhysAddr(bus.0 + 8), Width::W16, 0xFFFF_1234)
        .unwrap();
    assert_eq!(
        h.mmio_read(PhysAddr(bus.0 + 8), Width::W32).unwrap(),
        0x1234,
        "store masked to its width"
    );
    // Little-endian bytes land where the CPU view expects them.
    let mut b = [0u8; 2];
    h.read_virt(K, VirtAddr(dev.0 + 8), &mut b).unwrap();
    assert_eq!(b, [0x34, 0x12]);
    assert!(matches!(
        h.mmio_read(PhysAddr(bus.0 + 2), Width::W32),
        Err(Error::NotAligned { .. })
    ));
    assert!(matches!(
        h.mmio_read(PhysAddr(bus.0 + len), Width::W8),
        Err(Error::NotMapped { .. })
    ));
    // SAFETY: as above; the overlapping registration is refused before anything is recorded.
    let dup = unsafe { h.register_mmio(PhysAddr(bus.0 + 8), dev.0 as *mut u8, 8) };
    assert!(matches!(dup, Err(Error::RangeBusy { .. })));
    h.unregister_mmio(bus).unwrap();
    assert!(matches!(
        h.mmio_read(bus, Width::W8),
        Err(Error::NotMapped { .. })
    ));
    h.free_pages(dev, len).unwrap();
}

#[test]
fn mmio_by_physical_address_reaches_wired_ram() {
    let h = host();
    if !need_root(&h) {
        return;
    }
    let va = h.allocate_pages(page(&h), &PageRequest::WIRED).unwrap();
    let pa = collect_runs(&h, K, va, 8).unwrap()[0].addr;
    h.mmio_write(pa, Width::W64, 0x1122_3344_5566_7788).unwrap();
    let mut b = [0u8; 8];
    h.read_virt(K, va, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);
    h.free_pages(va, page(&h)).unwrap();
}

#[test]
fn cache_flush_runs_on_this_cpu() {
    let h = host();
    let va = h.allocate_pages(2 * page(&h), &PageRequest::WIRED).unwrap();
    h.write_virt(K, va, &[3u8; 200]).unwrap();
    if cfg!(target_arch = "x86_64") {
        assert!(h.dma_coherent());
        for op in [CacheOp::Clean, CacheOp::Invalidate, CacheOp::Flush] {
            h.cache_virt(op, K, VirtAddr(va.0 + 10), 2 * page(&h) - 10)
                .unwrap();
        }
        let mut b = [0u8; 200];
        h.read_virt(K, va, &mut b).unwrap();
        assert_eq!(b, [3u8; 200], "flushing never loses data");
        if h.address_mode() == AddressMode::Physical {
            let pa = collect_runs(&h, K, va, 64).unwrap()[0].addr;
            h.cache_phys(CacheOp::Flush, pa, 64).unwrap();
        }
    }
    h.free_pages(va, 2 * page(&h)).unwrap();
}

#[test]
fn inspect_reports_runs_as_root() {
    let h = host();
    if !need_root(&h) {
        return;
    }
    let r = dmakit_linux::inspect(100_000, false).unwrap();
    assert_eq!(r.size, 102_400);
    assert_eq!(r.runs.iter().map(|x| x.len).sum::<u64>(), r.size);
    let text = r.to_string();
    assert!(text.contains("physical"), "{text}");
    assert!(text.contains("RLIMIT_MEMLOCK"), "{text}");
    assert!(matches!(
        dmakit_linux::inspect(0, false),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        dmakit_linux::inspect(4 << 20, true),
        Err(Error::BadArgument { .. })
    ));
}

// --- The non-root paths, run for real in a child process as user `nobody`. -------------

/// Re-runs test `name` of this binary as `nobody` with RLIMIT_MEMLOCK `memlock`; returns
/// its stdout, or `None` (after printing why) when the machine cannot do that.
fn as_nobody(name: &str, memlock: u64) -> Option<String> {
    if !dmakit_linux::Host::new()
        .map(|h| h.capabilities().root)
        .unwrap_or(false)
    {
        println!("skipped: dropping privileges needs root");
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let out = Command::new("prlimit")
        .arg(format!("--memlock={memlock}:{memlock}"))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("DMAKIT_CHILD", "1")
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => panic!(
            "child {name} failed: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            println!("skipped: cannot run prlimit/setpriv: {e}");
            None
        }
    }
}

fn in_child() -> bool {
    std::env::var_os("DMAKIT_CHILD").is_some()
}

#[test]
fn without_cap_sys_admin_translation_is_not_permitted() {
    if in_child() {
        let h = host();
        assert!(!h.capabilities().root);
        assert_eq!(h.address_mode(), AddressMode::Unavailable);
        let va = h.allocate_pages(page(&h), &PageRequest::WIRED).unwrap();
        let e = collect_runs(&h, K, va, page(&h)).unwrap_err();
        assert!(matches!(e, Error::NotPermitted { .. }), "{e}");
        assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
        assert_eq!(e.io_return(), IoReturn::NOT_PERMITTED);
        let limited = PageRequest {
            phys_limit: 0xFFFF_FFFF,
            ..PageRequest::WIRED
        };
        assert!(matches!(
            h.allocate_pages(page(&h), &limited),
            Err(Error::NotPermitted { .. })
        ));
        assert!(matches!(
            dmakit_linux::inspect(4096, false),
            Err(Error::NotPermitted { .. })
        ));
        h.free_pages(va, page(&h)).unwrap();
        println!("CHILD-OK");
        return;
    }
    if let Some(out) = as_nobody(
        "without_cap_sys_admin_translation_is_not_permitted",
        8 << 20,
    ) {
        assert!(out.contains("CHILD-OK"), "{out}");
    }
}

#[test]
fn low_memlock_limit_is_a_clear_error() {
    if in_child() {
        let h = host();
        let e = h.allocate_pages(1 << 20, &PageRequest::WIRED).unwrap_err();
        assert!(matches!(e, Error::CannotWire { .. }), "{e}");
        assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
        assert_eq!(e.io_return(), IoReturn::CANNOT_WIRE);
        assert_eq!(h.usage(), (0, 0), "nothing leaked");
        // Pageable memory needs no lock and still works.
        let va = h.allocate_pages(1 << 20, &PageRequest::PAGEABLE).unwrap();
        let e = h.wire(K, va, 1 << 20, true).unwrap_err();
        assert!(matches!(e, Error::CannotWire { .. }), "{e}");
        assert_eq!(h.usage(), (1, 0), "a failed wire leaves nothing wired");
        h.free_pages(va, 1 << 20).unwrap();
        println!("CHILD-OK");
        return;
    }
    if let Some(out) = as_nobody("low_memlock_limit_is_a_clear_error", 64 << 10) {
        assert!(out.contains("CHILD-OK"), "{out}");
    }
}
