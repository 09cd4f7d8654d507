//! What the host reports and does with less privilege: no CAP_SYS_ADMIN, not root, a low
//! RLIMIT_MEMLOCK. Each case re-runs its test in a child process with the privilege really
//! dropped (`setpriv`, `prlimit`), so the errors checked are the kernel's, not a mock's.

mod common;

use common::{
    host, in_child, page, run_child, AS_NOBODY, AS_ROOT_WITHOUT_SYS_ADMIN, WITH_64K_MEMLOCK,
};
use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Task, Wiring};
use dmakit::{Error, IoReturn};
use dmakit_linux::{AddressMode, HugepagePool, MemlockLimit};

const K: Task = Task::KERNEL;

#[test]
fn capabilities_report_what_the_os_says() {
    let h = host();
    let c = h.capabilities();
    assert_eq!(c.page_size, rustix::param::page_size() as u64);
    assert_eq!(c.root, rustix::process::geteuid().is_root());
    assert_eq!(c.memlock, MemlockLimit::probe());
    let r = rustix::process::getrlimit(rustix::process::Resource::Memlock);
    assert_eq!((c.memlock.soft, c.memlock.hard), (r.current, r.maximum));
    assert_eq!(c.hugepages_2m.total, HugepagePool::probe().total);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cfg!(target_arch = "x86_64") && !cpuinfo.is_empty() {
        assert_eq!(c.clflushopt, cpuinfo.contains(" clflushopt"));
    }
    assert_eq!(c.address_mode == AddressMode::Physical, c.pagemap_pfns);
    assert_eq!(h.address_mode(), c.address_mode);
    if c.pagemap_pfns {
        assert!(
            c.cap_sys_admin,
            "frame numbers are only shown with CAP_SYS_ADMIN"
        );
    }
    let text = c.to_string();
    for fact in [
        "address mode",
        "RLIMIT_MEMLOCK",
        "CAP_SYS_ADMIN",
        "hugepages",
        "cache flush",
    ] {
        assert!(text.contains(fact), "{fact} missing:\n{text}");
    }
    println!("{text}");
}

/// The checks every process without CAP_SYS_ADMIN must pass.
fn frames_are_refused_clearly() {
    let h = host();
    let c = h.capabilities();
    assert!(!c.cap_sys_admin);
    assert!(!c.pagemap_pfns);
    assert_eq!(h.address_mode(), AddressMode::Unavailable);
    // Memory still works for the CPU...
    let va = h.allocate_pages(page(&h), &PageRequest::WIRED).unwrap();
    h.write_virt(K, va, b"cpu only").unwrap();
    // ...but translation is a clear error, never a zero address.
    let e = collect_runs(&h, K, va, page(&h)).unwrap_err();
    assert!(matches!(e, Error::NotPermitted { .. }), "{e}");
    assert_eq!(e.io_return(), IoReturn::NOT_PERMITTED);
    let text = e.to_string();
    assert!(
        text.contains("CAP_SYS_ADMIN") && text.contains("VFIO"),
        "{text}"
    );
    // Unwired memory is still "wire it first", which is the more useful answer.
    let pv = h.allocate_pages(page(&h), &PageRequest::PAGEABLE).unwrap();
    assert!(matches!(
        collect_runs(&h, K, pv, 1),
        Err(Error::NotReady { .. })
    ));
    // A physical limit cannot be checked, so it is refused before anything is allocated.
    let limited = PageRequest {
        phys_limit: 0xFFFF_FFFF,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        h.allocate_pages(page(&h), &limited),
        Err(Error::NotPermitted { .. })
    ));
    let e = dmakit_linux::inspect(4096, false).unwrap_err();
    assert!(matches!(e, Error::NotPermitted { .. }), "{e}");
    h.free_pages(pv, page(&h)).unwrap();
    h.free_pages(va, page(&h)).unwrap();
    assert!(h.usage().is_idle());
}

#[test]
fn root_without_cap_sys_admin_sees_no_frames() {
    if in_child() {
        assert!(host().capabilities().root, "still uid 0");
        frames_are_refused_clearly();
        println!("CHILD-OK");
        return;
    }
    run_child(
        "root_without_cap_sys_admin_sees_no_frames",
        AS_ROOT_WITHOUT_SYS_ADMIN,
    );
}

#[test]
fn an_unprivileged_user_sees_no_frames() {
    if in_child() {
        assert!(!host().capabilities().root);
        frames_are_refused_clearly();
        println!("CHILD-OK");
        return;
    }
    run_child("an_unprivileged_user_sees_no_frames", AS_NOBODY);
}

#[test]
fn a_low_memlock_limit_is_a_clear_error() {
    if in_child() {
        let h = host();
        let c = h.capabilities();
        assert!(!c.cap_ipc_lock);
        assert_eq!(c.memlock.soft, Some(64 << 10));
        // Within the limit, wired memory works.
        let small = h.allocate_pages(4 * page(&h), &PageRequest::WIRED).unwrap();
        // Beyond it, the error names the limit, its value and the fix.
        let e = h.allocate_pages(1 << 20, &PageRequest::WIRED).unwrap_err();
        assert!(matches!(e, Error::CannotWire { len: 0x10_0000, .. }), "{e}");
        assert_eq!(e.io_return(), IoReturn::CANNOT_WIRE);
        let text = e.to_string();
        for needle in [
            "RLIMIT_MEMLOCK is 64 KiB",
            "hard limit 64 KiB",
            "ulimit -l",
            "CAP_IPC_LOCK",
        ] {
            assert!(text.contains(needle), "{needle} missing: {text}");
        }
        assert_eq!(
            h.usage().allocations,
            1,
            "the failed allocation left nothing"
        );
        // Pageable memory needs no lock; wiring it beyond the limit fails the same way and
        // leaves nothing wired.
        let big = h.allocate_pages(1 << 20, &PageRequest::PAGEABLE).unwrap();
        let e = h.wire(K, big, 1 << 20, true).unwrap_err();
        assert!(matches!(e, Error::CannotWire { .. }), "{e}");
        assert!(e.to_string().contains("RLIMIT_MEMLOCK is 64 KiB"), "{e}");
        assert_eq!(
            h.usage().wired_pages,
            0,
            "a failed wire leaves nothing wired"
        );
        assert_eq!(common::locked_kib(big.0), 0);
        h.wire(K, big, 2 * page(&h), true).unwrap();
        h.unwire(K, big, 2 * page(&h)).unwrap();
        h.free_pages(big, 1 << 20).unwrap();
        h.free_pages(small, 4 * page(&h)).unwrap();
        println!("CHILD-OK");
        return;
    }
    run_child("a_low_memlock_limit_is_a_clear_error", WITH_64K_MEMLOCK);
}
