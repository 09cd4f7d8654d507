//! The per-thread caches of free ranges in front of the IOMMU mapper's IO space and of the
//! locked range allocator: a cached IO address is reused only after its invalidation
//! (strict and lazy), space held by the caches is found again when the space runs out,
//! and the locked allocator's answers stay exact.

use dmakit::alloc::{LockedRangeAllocator, Placement, RangeAllocator};
use dmakit::mapper::{Access, IommuHardware, IommuMapper, Mapper};
use dmakit::{Error, IoAddr, PageSize, PhysAddr, Result};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

const PAGE: u64 = 0x1000;
const BASE: u64 = 0x10_0000;

/// Hardware that refuses to map an IO page that was unmapped and not invalidated since,
/// and counts invalidations.
#[derive(Default)]
struct Strict {
    stale: Mutex<BTreeSet<u64>>,
    invalidations: Mutex<u64>,
}

impl IommuHardware for Strict {
    fn page_size(&self) -> PageSize {
        PageSize::new(PAGE).unwrap()
    }
    fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> Result<()> {
        let mut stale = self.stale.lock().unwrap();
        match entry {
            Some(_) => assert!(
                !stale.contains(&iova.0),
                "IO page {:#x} mapped again before its invalidation",
                iova.0
            ),
            None => {
                stale.insert(iova.0);
            }
        }
        Ok(())
    }
    fn invalidate(&self, iova: IoAddr, len: u64) -> Result<()> {
        *self.invalidations.lock().unwrap() += 1;
        self.stale
            .lock()
            .unwrap()
            .retain(|&p| p < iova.0 || p >= iova.0 + len);
        Ok(())
    }
}

fn round_trip(m: &IommuMapper<Arc<Strict>>, pages: u64) -> IoAddr {
    let a = m.iovm_alloc(pages).unwrap();
    for i in 0..pages {
        m.iovm_insert_page(
            IoAddr(a.0 + i * PAGE),
            PhysAddr(0x8000_0000 + i * PAGE),
            Access::READ_WRITE,
        )
        .unwrap();
    }
    m.iovm_free(a, pages).unwrap();
    a
}

#[test]
fn a_strict_mapper_reuses_a_cached_address_only_after_invalidating_it() {
    let hw = Arc::new(Strict::default());
    let m = IommuMapper::new(hw.clone(), BASE, 0x100 * PAGE).unwrap();
    let first = round_trip(&m, 3);
    assert_eq!(
        *hw.invalidations.lock().unwrap(),
        1,
        "invalidated in iovm_free"
    );
    assert!(hw.stale.lock().unwrap().is_empty());
    // The next allocation of the same size comes from the cache: the same range.
    let again = round_trip(&m, 3);
    assert_eq!(again, first, "a cache hit");
    assert_eq!(m.usage(), (0, 0));
    assert_eq!(m.pending(), 0);
}

#[test]
fn a_lazy_mapper_caches_an_address_only_once_its_flush_invalidated_it() {
    let hw = Arc::new(Strict::default());
    let m = IommuMapper::new_lazy(hw.clone(), BASE, 0x100 * PAGE).unwrap();
    let first = round_trip(&m, 1);
    assert_eq!(m.pending(), 1);
    assert_eq!(*hw.invalidations.lock().unwrap(), 0);
    // Pending, so not handed out (the hardware would refuse the mapping otherwise).
    let other = round_trip(&m, 1);
    assert_ne!(other, first);
    m.flush().unwrap();
    assert_eq!((m.pending(), *hw.invalidations.lock().unwrap()), (0, 2));
    let back: BTreeSet<u64> = [round_trip(&m, 1).0, round_trip(&m, 1).0].into();
    assert!(
        back.contains(&first.0),
        "the flushed range comes back from the cache"
    );
    m.flush().unwrap();
    assert_eq!(m.usage(), (0, 0));
}

#[test]
fn exhausting_the_space_while_caches_hold_it_drains_them_and_succeeds() {
    for lazy in [false, true] {
        let hw = Arc::new(Strict::default());
        let pages = 64;
        let m = if lazy {
            IommuMapper::new_lazy(hw.clone(), BASE, pages * PAGE).unwrap()
        } else {
            IommuMapper::new(hw.clone(), BASE, pages * PAGE).unwrap()
        };
        // Every page taken one at a time, mapped, freed: all of it now sits in the caches
        // (or, lazy, partly waiting for its invalidation).
        let all: Vec<IoAddr> = (0..pages).map(|_| m.iovm_alloc(1).unwrap()).collect();
        for &a in &all {
            m.iovm_insert_page(a, PhysAddr(0x8000_0000), Access::READ)
                .unwrap();
            m.iovm_free(a, 1).unwrap();
        }
        // The whole window at once, then 32-page halves: the caches are drained for them.
        let whole = m.iovm_alloc(pages).unwrap();
        assert_eq!(whole, IoAddr(BASE), "lazy = {lazy}");
        m.iovm_insert_page(whole, PhysAddr(0x9000_0000), Access::READ)
            .unwrap();
        let e = m.iovm_alloc(1).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NoSpace {
                    requested: PAGE,
                    ..
                }
            ),
            "lazy = {lazy}: {e}"
        );
        m.iovm_free(whole, pages).unwrap();
        let halves = [m.iovm_alloc(32).unwrap(), m.iovm_alloc(32).unwrap()];
        for h in halves {
            m.iovm_free(h, 32).unwrap();
        }
        m.flush().unwrap();
        assert_eq!(m.usage(), (0, 0), "lazy = {lazy}");
    }
}

#[test]
fn near_exhaustion_an_odd_size_is_placed_exactly() {
    // 3 pages are placed at a multiple of 4 pages when they can be; in a window of 6 pages
    // the second allocation of 3 cannot be, and is placed where it fits.
    let hw = Arc::new(Strict::default());
    let m = IommuMapper::new(hw, BASE, 6 * PAGE).unwrap();
    let a = m.iovm_alloc(3).unwrap();
    let b = m.iovm_alloc(3).unwrap();
    assert!(a.0 + 3 * PAGE <= b.0 || b.0 + 3 * PAGE <= a.0);
    for (x, i) in [(a, 0), (b, 1)] {
        m.iovm_insert_run(x, PhysAddr(0x8000_0000 + i * 0x10_0000), 3, Access::READ)
            .unwrap();
        assert_eq!(
            m.translate(IoAddr(x.0 + 2 * PAGE + 5)).unwrap().0,
            PhysAddr(0x8000_0000 + i * 0x10_0000 + 2 * PAGE + 5)
        );
        // A run past the 3 pages asked for: refused, whatever the alignment left free.
        let e = m
            .iovm_insert_run(x, PhysAddr(0), 4, Access::READ)
            .unwrap_err();
        assert!(matches!(e, Error::BadArgument { .. }), "{e}");
    }
    let e = m.iovm_free(b, 2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WrongSize {
                allocated: 3,
                given: 2,
                ..
            }
        ),
        "{e}"
    );
    m.iovm_free(a, 3).unwrap();
    m.iovm_free(b, 3).unwrap();
    let e = m.iovm_free(b, 3).unwrap_err();
    assert!(matches!(e, Error::NotAllocated { .. }), "{e}");
    assert_eq!(m.usage(), (0, 0));
}

#[test]
fn an_allocation_freed_by_another_thread_goes_back_whole() {
    let hw = Arc::new(Strict::default());
    let m = Arc::new(IommuMapper::new(hw, BASE, 0x1000 * PAGE).unwrap());
    let made: Vec<IoAddr> = (0..100).map(|_| m.iovm_alloc(2).unwrap()).collect();
    for &a in &made {
        m.iovm_insert_page(a, PhysAddr(0x8000_0000), Access::WRITE)
            .unwrap();
    }
    let m2 = m.clone();
    std::thread::spawn(move || {
        for a in made {
            assert_eq!(m2.translate(a).unwrap().1, Access::WRITE);
            m2.iovm_insert_page(IoAddr(a.0 + PAGE), PhysAddr(0x8000_1000), Access::READ)
                .unwrap();
            m2.iovm_free(a, 2).unwrap();
        }
    })
    .join()
    .unwrap();
    assert_eq!(m.usage(), (0, 0));
}

#[test]
fn the_locked_allocator_stays_exact_with_ranges_in_its_caches() {
    let total = 64 * PAGE;
    let l = LockedRangeAllocator::new(
        RangeAllocator::new(BASE, total, PAGE)
            .unwrap()
            .with_placement(Placement::GoodFit),
    );
    let all: Vec<u64> = (0..64).map(|_| l.allocate(PAGE, 0).unwrap()).collect();
    assert_eq!(l.free_count(), 0);
    for &a in &all[..10] {
        l.deallocate(a, PAGE).unwrap();
    }
    // Cached, yet counted as free, in one count and in fragments.
    assert_eq!(l.free_count(), 10 * PAGE);
    // A double free of a cached range is refused, and changes nothing.
    let e = l.deallocate(all[0], PAGE).unwrap_err();
    assert!(matches!(e, Error::DoubleFree { .. }), "{e}");
    assert_eq!(l.free_count(), 10 * PAGE);
    for &a in &all[10..] {
        l.deallocate(a, PAGE).unwrap();
    }
    assert_eq!((l.free_count(), l.fragment_count()), (total, 1));
    // Everything cached again, then the whole space at once: the caches are drained.
    let again: Vec<u64> = (0..64).map(|_| l.allocate(PAGE, 0).unwrap()).collect();
    for a in again {
        l.deallocate(a, PAGE).unwrap();
    }
    let whole = l.allocate(total, 0).unwrap();
    assert_eq!(whole, BASE);
    // Part of an allocation of a cached size, then the rest: exact, never cached whole.
    l.deallocate(whole, total).unwrap();
    let a = l.allocate(4 * PAGE, 0).unwrap();
    l.deallocate(a + PAGE, PAGE).unwrap();
    let e = l.deallocate(a, 4 * PAGE).unwrap_err();
    assert!(matches!(e, Error::DoubleFree { .. }), "{e}");
    l.deallocate(a, PAGE).unwrap();
    l.deallocate(a + 2 * PAGE, 2 * PAGE).unwrap();
    assert_eq!((l.free_count(), l.fragment_count()), (total, 1));
    // A fixed range that only a cache held is taken.
    let b = l.allocate(PAGE, 0).unwrap();
    l.deallocate(b, PAGE).unwrap();
    l.allocate_range(b, PAGE).unwrap();
    assert_eq!(l.free_count(), total - PAGE);
}
