//! Wiring: counted per page and per process, all or nothing, checked in the kernel's own
//! accounting (`Locked:` in /proc/self/smaps).

mod common;

use common::{host, in_child, locked_kib, need_physical, page, run_child};
use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Task, Wiring};
use dmakit::{Error, IoReturn, VirtAddr};

const K: Task = Task::KERNEL;

#[test]
fn wiring_is_counted_and_blocks_free() {
    let h = host();
    let p = page(&h);
    let len = 4 * p;
    let va = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    h.wire(K, VirtAddr(va.0 + 100), p, true).unwrap(); // touches pages 0 and 1
    h.wire(K, va, 1, false).unwrap(); // page 0 again
    assert_eq!(h.usage().wired_pages, 2);
    let e = h.free_pages(va, len).unwrap_err();
    assert!(matches!(e, Error::Busy { addr, .. } if addr == va.0), "{e}");
    assert_eq!(e.io_return(), IoReturn::BUSY);
    h.unwire(K, va, 1).unwrap();
    assert!(
        matches!(h.free_pages(va, len), Err(Error::Busy { .. })),
        "one wiring of pages 0 and 1 is left"
    );
    h.unwire(K, VirtAddr(va.0 + 100), p).unwrap();
    let e = h.unwire(K, va, 1).unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }), "{e}");
    assert_eq!(
        locked_kib(va.0),
        len / 1024,
        "unwiring never unlocks a wired allocation's own pages"
    );
    h.free_pages(va, len).unwrap();
    assert!(h.usage().is_idle());
}

#[test]
fn mlock_follows_the_count_not_the_calls() {
    let h = host();
    let p = page(&h);
    // A pageable allocation: its own memfd mapping, so smaps shows exactly its pages.
    let va = h.allocate_pages(4 * p, &PageRequest::PAGEABLE).unwrap();
    let page1 = VirtAddr(va.0 + p);
    h.wire(K, page1, p, true).unwrap();
    h.wire(K, page1, p, true).unwrap();
    assert_eq!(locked_kib(page1.0), p / 1024, "locked once, counted twice");
    h.unwire(K, page1, p).unwrap();
    assert_eq!(
        locked_kib(page1.0),
        p / 1024,
        "still one wiring: still locked"
    );
    h.unwire(K, page1, p).unwrap();
    assert_eq!(locked_kib(page1.0), 0, "the last unwire unlocks");
    assert!(matches!(
        h.unwire(K, page1, p),
        Err(Error::BadArgument { .. })
    ));
    h.free_pages(va, 4 * p).unwrap();
}

#[test]
fn two_hosts_cannot_unlock_each_others_pages() {
    let (a, b) = (host(), host());
    let p = page(&a);
    let va = a.allocate_pages(2 * p, &PageRequest::PAGEABLE).unwrap();
    a.wire(K, va, p, true).unwrap();
    b.wire(K, va, p, true).unwrap();
    a.unwire(K, va, p).unwrap();
    assert_eq!(
        locked_kib(va.0),
        p / 1024,
        "host b's wiring keeps the page locked"
    );
    assert!(
        matches!(
            b.unwire(K, VirtAddr(va.0 + p), 1),
            Err(Error::BadArgument { .. })
        ),
        "b never wired page 1"
    );
    let e = a.free_pages(va, 2 * p).unwrap_err();
    assert!(
        matches!(e, Error::Busy { .. }),
        "another host's wiring blocks the free: {e}"
    );
    b.unwire(K, va, p).unwrap();
    assert_eq!(locked_kib(va.0), 0);
    a.free_pages(va, 2 * p).unwrap();
}

#[test]
fn translation_needs_wired_pages() {
    let h = host();
    let p = page(&h);
    let len = 3 * p;
    let va = h.allocate_pages(len, &PageRequest::PAGEABLE).unwrap();
    let e = collect_runs(&h, K, va, len).unwrap_err();
    assert!(
        matches!(e, Error::NotReady { addr, .. } if addr == va.0),
        "{e}"
    );
    // Wiring the middle page only: the first page is still not ready.
    h.wire(K, VirtAddr(va.0 + p), p, true).unwrap();
    assert!(matches!(
        collect_runs(&h, K, va, len),
        Err(Error::NotReady { .. })
    ));
    h.wire(K, va, len, true).unwrap();
    match collect_runs(&h, K, va, len) {
        Ok(runs) => assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), len),
        Err(e) => {
            assert!(matches!(e, Error::NotPermitted { .. }), "{e}");
            println!("skipped (physical runs): physical addresses need CAP_SYS_ADMIN");
        }
    }
    h.unwire(K, va, len).unwrap();
    h.unwire(K, VirtAddr(va.0 + p), p).unwrap();
    assert!(matches!(
        collect_runs(&h, K, va, len),
        Err(Error::NotReady { .. })
    ));
    h.free_pages(va, len).unwrap();
}

#[test]
fn caller_memory_can_be_wired_and_translated() {
    let h = host();
    let p = page(&h) as usize;
    let mut v = vec![7u8; 3 * p];
    let va = VirtAddr(v.as_mut_ptr() as u64);
    h.wire(K, va, v.len() as u64, true).unwrap();
    assert_eq!(
        h.usage().wired_pages,
        !(va.0 as usize).is_multiple_of(p) as usize + 3
    );
    if need_physical(&h) {
        let runs = collect_runs(&h, K, va, v.len() as u64).unwrap();
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), v.len() as u64);
        assert_eq!(runs[0].addr.0 % p as u64, va.0 % p as u64, "offset carried");
    }
    h.unwire(K, va, v.len() as u64).unwrap();
    assert_eq!(h.usage().wired_pages, 0);
    v[0] = 8; // still ours, untouched by the host
    assert_eq!(v[1], 7);
}

#[test]
fn a_failed_wire_leaves_nothing_wired() {
    if !in_child() {
        // Alone in a child process, so no other thread can map memory into the hole.
        run_child("a_failed_wire_leaves_nothing_wired", &[]);
        return;
    }
    use rustix::mm::{mmap_anonymous, munmap, MapFlags, ProtFlags};
    let h = host();
    let p = page(&h) as usize;
    // SAFETY: a fresh private anonymous mapping at an address the kernel chooses; it touches
    // no existing memory.
    let base = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            3 * p,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .unwrap();
    // SAFETY: the third page of the mapping just made, referenced by nothing.
    unsafe { munmap(base.cast::<u8>().add(2 * p).cast(), p) }.unwrap();
    let va = VirtAddr(base as u64);
    let e = h.wire(K, va, 3 * p as u64, true).unwrap_err();
    assert!(
        matches!(e, Error::NotMapped { addr, .. } if addr == va.0 + 2 * p as u64),
        "{e}"
    );
    assert_eq!(locked_kib(va.0), 0, "the mapped part was not left locked");
    assert_eq!(h.usage().wired_pages, 0);
    h.wire(K, va, 2 * p as u64, true).unwrap();
    assert_eq!(locked_kib(va.0), 2 * p as u64 / 1024);
    h.unwire(K, va, 2 * p as u64).unwrap();
    assert_eq!(locked_kib(va.0), 0);
    let e = h.wire(K, VirtAddr(0x1000), 0x1000, false).unwrap_err();
    assert!(matches!(e, Error::NotMapped { addr: 0x1000, .. }), "{e}");
    // SAFETY: the two remaining pages of our own mapping, no longer used.
    unsafe { munmap(base, 2 * p) }.unwrap();
    println!("CHILD-OK");
}

#[test]
fn registered_regions_cannot_go_while_wired() {
    let h = host();
    let mut v = vec![1u8; 2 * page(&h) as usize];
    let ptr = v.as_mut_ptr();
    // SAFETY: `v` outlives the registration (unregistered below) and is not touched through
    // Rust references while registered.
    let r = unsafe { h.register_region(ptr, v.len()) }.unwrap();
    h.wire(K, r, 16, true).unwrap();
    let e = h.unregister_region(r).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    h.write_virt(K, VirtAddr(r.0 + 4), b"wired").unwrap();
    h.unwire(K, r, 16).unwrap();
    h.unregister_region(r).unwrap();
    assert_eq!(&v[4..9], b"wired");
}
