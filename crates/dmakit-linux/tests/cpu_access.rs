//! CPU access reaches only memory the host knows; hostile addresses are errors, not crashes.

mod common;

use common::{host, page};
use dmakit::platform::{
    collect_runs, CacheOp, CacheOps, CpuAccess, Mmio, PageRequest, PhysicalMemory, Task, Width,
    Wiring,
};
use dmakit::{Error, PhysAddr, VirtAddr};

const K: Task = Task::KERNEL;

#[test]
fn unknown_memory_is_not_mapped() {
    let h = host();
    let mut b = [0u8; 8];
    let local = 5u64;
    let addr = VirtAddr(&local as *const u64 as u64);
    assert!(matches!(
        h.read_virt(K, addr, &mut b),
        Err(Error::NotMapped { addr: a, .. }) if a == addr.0
    ));
    assert!(matches!(
        h.write_virt(K, addr, &b),
        Err(Error::NotMapped { .. })
    ));
    assert_eq!(local, 5, "nothing was written to the stack");
    assert!(matches!(
        h.read_virt(K, VirtAddr(0), &mut b),
        Err(Error::NotMapped { .. })
    ));
}

#[test]
fn accesses_stay_inside_one_allocation() {
    let h = host();
    let p = page(&h);
    let va = h.allocate_pages(p, &PageRequest::WIRED).unwrap();
    let mut b = [0u8; 8];
    // Straddling the end is refused as a whole, and copies nothing.
    let e = h.read_virt(K, VirtAddr(va.0 + p - 4), &mut b).unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }), "{e}");
    assert!(matches!(
        h.write_virt(K, VirtAddr(va.0 + p - 4), &[9; 8]),
        Err(Error::NotMapped { .. })
    ));
    h.read_virt(K, VirtAddr(va.0 + p - 8), &mut b).unwrap();
    assert_eq!(
        b, [0; 8],
        "the in-bounds tail was not written by the refused store"
    );
    // Empty accesses touch nothing and succeed.
    h.read_virt(K, VirtAddr(va.0 + p), &mut []).unwrap();
    h.free_pages(va, p).unwrap();
    assert!(
        matches!(h.read_virt(K, va, &mut b), Err(Error::NotMapped { .. })),
        "freed memory is unknown again"
    );
}

#[test]
fn registered_regions_are_reachable_until_unregistered() {
    let h = host();
    let mut v = vec![7u8; 100];
    // SAFETY: `v` outlives the registration (unregistered below) and is not used through
    // Rust references while registered.
    let r = unsafe { h.register_region(v.as_mut_ptr(), v.len()) }.unwrap();
    let mut b = [0u8; 4];
    h.read_virt(K, VirtAddr(r.0 + 10), &mut b).unwrap();
    assert_eq!(b, [7; 4]);
    h.write_virt(K, VirtAddr(r.0 + 10), b"abcd").unwrap();
    assert!(matches!(
        h.read_virt(K, VirtAddr(r.0 + 98), &mut b),
        Err(Error::NotMapped { .. })
    ));
    // SAFETY: refused before anything is recorded: it overlaps the registration above.
    let dup = unsafe { h.register_region(v.as_mut_ptr().wrapping_add(50), 10) };
    assert!(matches!(dup, Err(Error::RangeBusy { .. })));
    // SAFETY: refused: zero length and null pointer are checked first.
    let (zero, null) = unsafe {
        (
            h.register_region(v.as_mut_ptr(), 0),
            h.register_region(std::ptr::null_mut(), 8),
        )
    };
    assert!(matches!(zero, Err(Error::ZeroSize { .. })));
    assert!(matches!(null, Err(Error::BadArgument { .. })));
    assert_eq!(h.usage().regions, 1);
    h.unregister_region(r).unwrap();
    assert!(matches!(
        h.unregister_region(r),
        Err(Error::NotAllocated { .. })
    ));
    assert!(matches!(
        h.read_virt(K, r, &mut b),
        Err(Error::NotMapped { .. })
    ));
    assert_eq!(&v[10..14], b"abcd");
}

#[test]
fn hostile_addresses_are_errors_never_panics() {
    let h = host();
    let p = page(&h);
    let top = u64::MAX - 7; // aligned for every width
    let mut b = [0u8; 16];
    assert!(h.read_virt(K, VirtAddr(top), &mut b).is_err());
    assert!(h.write_virt(K, VirtAddr(u64::MAX), &b).is_err());
    assert!(h.read_phys(PhysAddr(top), &mut b).is_err());
    assert!(h.write_phys(PhysAddr(u64::MAX), &b).is_err());
    for w in [Width::W8, Width::W16, Width::W32, Width::W64] {
        assert!(matches!(
            h.mmio_read(PhysAddr(top), w),
            Err(Error::NotMapped { .. })
        ));
        assert!(h.mmio_write(PhysAddr(top), w, 1).is_err());
    }
    for (va, len) in [(u64::MAX - 1, 10), (top, u64::MAX), (u64::MAX - p + 1, p)] {
        assert!(h.wire(K, VirtAddr(va), len, true).is_err(), "{va:#x}");
        assert!(h.unwire(K, VirtAddr(va), len).is_err(), "{va:#x}");
        assert!(collect_runs(&h, K, VirtAddr(va), len).is_err(), "{va:#x}");
        assert!(h.cache_virt(CacheOp::Flush, K, VirtAddr(va), len).is_err());
        assert!(h.cache_phys(CacheOp::Flush, PhysAddr(va), len).is_err());
    }
    // SAFETY: refused before anything is recorded: the range wraps around.
    let wraps = unsafe { h.register_region(top as *mut u8, 64) };
    assert!(matches!(wraps, Err(Error::Overflow { .. })));
    // SAFETY: refused: the bus range wraps around.
    let wraps = unsafe { h.register_mmio(PhysAddr(top), b.as_mut_ptr(), 16) };
    assert!(wraps.is_err());
    // Huge lengths on a real allocation are bounded by the allocation.
    let va = h.allocate_pages(p, &PageRequest::WIRED).unwrap();
    assert!(matches!(
        h.cache_virt(CacheOp::Clean, K, va, u64::MAX - va.0),
        Err(Error::NotMapped { .. })
    ));
    h.free_pages(va, p).unwrap();
    assert!(h.usage().is_idle());
}
