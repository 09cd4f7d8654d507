//! [`LockedRangeAllocator`]: a [`RangeAllocator`] shared between threads (IOKit's
//! `kLocking` option), with per-thread caches of free ranges in front of it.
//!
//! One lock around the allocator makes every call of every thread wait in one line: two
//! threads together allocate no faster than one. So small ranges (1 to 16 units of the
//! default alignment, exact sizes) are cached: a free of one goes into a
//! magazine (`alloc::magazine`, private) of its size, in the *shard* the freeing thread works on,
//! and the next allocation of that size there takes it back, without touching the shared
//! allocator. A thread starts on a shard of its own and, when another thread holds it,
//! moves to the next free one for good (in a kernel that registered
//! [`set_cpu_number`](crate::sync::set_cpu_number), each CPU has its own), so threads
//! running at once nearly never share a lock. A range freed by another thread than the one
//! that allocated it goes back to the cache of the shard that lent it.
//!
//! To tell a free of one whole cached-size allocation (which may be cached) from any other
//! free (part of an allocation, several, space never seen, a double free: the shared
//! allocator decides those), each shard remembers the ranges it handed out ("lent"). A free
//! the shards do not recognise first gives every cached range back to the shared
//! allocator, so that its answer, `DoubleFree` included, is exact.
//!
//! Semantics are the [`RangeAllocator`]'s, with three costs to know:
//!
//! * [`free_count`](LockedRangeAllocator::free_count),
//!   [`fragment_count`](LockedRangeAllocator::fragment_count) and
//!   [`with`](LockedRangeAllocator::with) give the caches back first (their numbers are
//!   exact), and so does an allocation that finds no space, or a range that is busy, before
//!   it fails.
//! * Frees other than of one whole allocation, and allocations with an alignment above the
//!   default, go to the shared allocator under every shard's lock: the slow path.
//! * Placement: a cached range is reused as it is, wherever it lies. So the caches are
//!   used only when the allocator places by [`Placement::GoodFit`] (set it with
//!   [`RangeAllocator::with_placement`] before sharing it). With IOKit's first fit, the
//!   default, every call goes to the shared allocator under its one lock and placement is
//!   exactly IOKit's.
//!
//! ```
//! use dmakit::alloc::{LockedRangeAllocator, Placement, RangeAllocator};
//!
//! let space = RangeAllocator::new(0, 1024, 1)?.with_placement(Placement::GoodFit);
//! let slots = LockedRangeAllocator::new(space);
//! let a = slots.allocate(8, 0)?;
//! slots.deallocate(a, 8)?;          // into this thread's cache
//! assert_eq!(slots.allocate(8, 0)?, a, "the cached range comes back first");
//! assert_eq!(slots.free_count(), 1016);
//! # Ok::<(), dmakit::Error>(())
//! ```

use super::magazine::{Depot, Magazines};
use super::table::{table, Table};
use super::{Placement, RangeAllocator};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{lock_home, Mutex, MutexGuard, Padded, ShardGuard, ShardLock};
use crate::{Error, Result};
use alloc_crate::boxed::Box;
use alloc_crate::vec::Vec;

/// Cached sizes: 1 to `CLASSES` units of the default alignment.
const CLASSES: usize = 16;
/// Shards (fewer under loom, whose model grows with every lock).
#[cfg(not(loom))]
const SHARDS: usize = 8;
#[cfg(loom)]
const SHARDS: usize = 2;

/// One shard: cached free ranges, and the ranges it handed out whose free may be cached.
#[derive(Debug)]
struct Front {
    mags: Magazines<CLASSES>,
    /// Start → class of ranges handed out that are exactly one allocated block of the
    /// shared allocator.
    lent: Table<usize>,
}

/// A [`RangeAllocator`] shared between threads: every method takes `&self`. The
/// [module documentation](crate::alloc::locked) tells how the per-thread caches work.
///
/// ```
/// use dmakit::alloc::{LockedRangeAllocator, RangeAllocator};
/// use std::sync::Arc;
///
/// let iova = Arc::new(LockedRangeAllocator::new(RangeAllocator::new(0x1_0000_0000, 1 << 30, 0x1000)?));
/// let threads: Vec<_> = (0..4)
///     .map(|_| {
///         let iova = iova.clone();
///         std::thread::spawn(move || -> dmakit::Result<()> {
///             for _ in 0..100 {
///                 let a = iova.allocate(0x2000, 0)?; // from this thread's cache when it can
///                 iova.deallocate(a, 0x2000)?;
///             }
///             Ok(())
///         })
///     })
///     .collect();
/// for t in threads {
///     t.join().expect("no panic")?;
/// }
/// assert_eq!(iova.free_count(), 1 << 30); // exact: the caches are given back first
/// assert_eq!(iova.fragment_count(), 1);
/// # Ok::<(), dmakit::Error>(())
/// ```
///
/// # Invariants
///
/// Every cached range and every lent range is exactly one allocated block of the shared
/// allocator; a range is in at most one of them, in one shard. A range moves between
/// being lent and being cached only under its shard's lock, and every call holds one
/// shard's lock (or all of them) for as long as it changes anything, so a call holding
/// all of them sees every range in place.
pub struct LockedRangeAllocator {
    inner: Mutex<RangeAllocator>,
    /// The default alignment: the unit of the cached sizes.
    unit: u64,
    shards: Box<[Padded<ShardLock<Front>>]>,
    depot: Mutex<Depot<CLASSES>>,
    /// Whether the caches are used: only while the allocator places by good fit.
    caching: AtomicBool,
}

/// Every lock, the caches given back: the allocator as it is.
struct All<'a> {
    fronts: Vec<ShardGuard<'a, Front>>,
    inner: MutexGuard<'a, RangeAllocator>,
}

impl LockedRangeAllocator {
    /// Shares an allocator (its existing allocations may be freed as usual).
    pub fn new(inner: RangeAllocator) -> Self {
        let unit = inner.default_alignment();
        let caching = AtomicBool::new(inner.placement() == Placement::GoodFit);
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(ShardLock::new(Front {
                    mags: Magazines::new(),
                    lent: table(),
                }))
            })
            .collect();
        LockedRangeAllocator {
            inner: Mutex::new(inner),
            unit,
            shards,
            depot: Mutex::new(Depot::new()),
            caching,
        }
    }

    /// Whether frees of small whole allocations are cached (good-fit placement).
    fn caching(&self) -> bool {
        self.caching.load(Ordering::Relaxed)
    }

    /// The cache class of a size, if it has one.
    fn class(&self, size: u64) -> Option<usize> {
        let units = size.checked_add(self.unit - 1)? / self.unit;
        (1..=CLASSES as u64)
            .contains(&units)
            .then(|| units as usize - 1)
    }

    fn bytes(&self, class: usize) -> u64 {
        (class as u64 + 1) * self.unit
    }

    /// This thread's shard, or the next free one.
    fn front(&self) -> ShardGuard<'_, Front> {
        lock_home(&self.shards).1
    }

    /// Every shard locked in order, then the allocator, every cached range given back.
    fn all(&self) -> All<'_> {
        let mut fronts: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        let mut depot = self.depot.lock();
        let mut inner = self.inner.lock();
        let mut give_back = |c: usize, x: u64| {
            // A cached range is one allocated block (the invariant): this cannot fail.
            let _ = inner.deallocate(x, self.bytes(c));
        };
        for f in fronts.iter_mut() {
            f.mags.drain(&mut give_back);
        }
        depot.drain(&mut give_back);
        All { fronts, inner }
    }

    /// Remembers `[x, x + size)`, just allocated as one block, as lent by `front` when its
    /// free may be cached.
    fn lend(&self, front: &mut Front, x: u64, size: u64) {
        if !self.caching() {
            return;
        }
        if let Some(c) = self.class(size).filter(|_| x.is_multiple_of(self.unit)) {
            front.lent.insert(x, c);
        }
    }

    /// Caches `start` in `front` if `front` lent it with this class.
    fn give_back(&self, front: &mut Front, start: u64, class: usize) -> bool {
        if front.lent.get(&start) != Some(&class) {
            return false;
        }
        front.lent.remove(&start);
        if let Some(spill) = front.mags.push(class, start, &self.depot) {
            let mut inner = self.inner.lock();
            for &x in spill.items() {
                // A cached range is one allocated block: this cannot fail.
                let _ = inner.deallocate(x, self.bytes(class));
            }
        }
        true
    }

    /// See [`RangeAllocator::allocate`]. Sizes of 1 to 16 units of the default alignment,
    /// at the default alignment or less, come from this thread's cache when it has one.
    pub fn allocate(&self, size: u64, alignment: u64) -> Result<u64> {
        if !self.caching() {
            return self.inner.lock().allocate(size, alignment);
        }
        let cached = self
            .class(size)
            .filter(|_| alignment == 0 || (alignment.is_power_of_two() && alignment <= self.unit));
        let mut front = self.front();
        let got = match cached.and_then(|c| front.mags.pop(c, &self.depot)) {
            Some(x) => Ok(x),
            None => self.inner.lock().allocate(size, alignment),
        };
        let x = match got {
            Err(Error::NoSpace { .. }) => {
                drop(front);
                // Out of space, maybe only because the caches hold it: give it back, retry.
                let mut all = self.all();
                let x = all.inner.allocate(size, alignment)?;
                self.lend(&mut all.fronts[0], x, size);
                return Ok(x);
            }
            got => got?,
        };
        self.lend(&mut front, x, size);
        Ok(x)
    }

    /// See [`RangeAllocator::allocate_range`]. A range that is busy only because a cache
    /// holds it is given back and taken.
    pub fn allocate_range(&self, start: u64, size: u64) -> Result<()> {
        let mut front = self.front();
        let got = self.inner.lock().allocate_range(start, size);
        match got {
            Ok(()) => {
                self.lend(&mut front, start, size);
                Ok(())
            }
            Err(Error::RangeBusy { .. }) => {
                drop(front);
                let mut all = self.all();
                all.inner.allocate_range(start, size)?;
                self.lend(&mut all.fronts[0], start, size);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// See [`RangeAllocator::deallocate`]. A whole allocation of a cached size goes into
    /// this thread's cache; anything else is the slow path (see the
    /// [module documentation](crate::alloc::locked)).
    pub fn deallocate(&self, start: u64, size: u64) -> Result<()> {
        if !self.caching() {
            // Nothing is cached or lent (`with` forgets both when caching stops).
            return self.inner.lock().deallocate(start, size);
        }
        let class = self.class(size).filter(|_| start.is_multiple_of(self.unit));
        if let Some(c) = class {
            let mine = {
                let mut front = self.front();
                self.give_back(&mut front, start, c)
            };
            if mine {
                return Ok(());
            }
            // Lent by another shard (freed by another thread than allocated it)?
            if self
                .shards
                .iter()
                .any(|s| self.give_back(&mut s.lock(), start, c))
            {
                return Ok(());
            }
        }
        let mut all = self.all();
        for f in all.fronts.iter_mut() {
            if class.is_some() && f.lent.get(&start) == class.as_ref() {
                f.lent.remove(&start);
                return all.inner.deallocate(start, size);
            }
        }
        all.inner.deallocate(start, size)?;
        // The ranges freed are no longer lent (a lent range may have been cut).
        let last = start.saturating_add(size.saturating_sub(1));
        for f in all.fronts.iter_mut() {
            f.lent
                .retain(|&s, &mut c| s > last || s + (self.bytes(c) - 1) < start);
        }
        Ok(())
    }

    /// See [`RangeAllocator::free_count`]: exact (the caches are given back first).
    pub fn free_count(&self) -> u64 {
        self.all().inner.free_count()
    }

    /// See [`RangeAllocator::fragment_count`]: exact (the caches are given back first).
    pub fn fragment_count(&self) -> usize {
        self.all().inner.fragment_count()
    }

    /// Runs `f` with the allocator locked and the caches given back. Whatever `f` does
    /// with it, ranges handed out before stay valid to free (a lent range `f` freed or cut
    /// is no longer cached when freed again). If `f` changes the placement, caching follows
    /// it (on for good fit, off otherwise).
    ///
    /// `f` runs with every lock of this allocator held, like code holding a
    /// `std::sync::Mutex` guard: it must use the `&mut RangeAllocator` it is given; a call
    /// to this `LockedRangeAllocator` from inside `f` waits forever.
    ///
    /// ```
    /// use dmakit::alloc::{LockedRangeAllocator, Placement, RangeAllocator};
    ///
    /// let space = RangeAllocator::new(0, 0x10000, 0x1000)?.with_placement(Placement::GoodFit);
    /// let shared = LockedRangeAllocator::new(space);
    /// let a = shared.allocate(0x1000, 0)?;
    /// shared.deallocate(a, 0x1000)?; // cached in this thread's shard
    /// let free: Vec<(u64, u64)> = shared.with(|r| r.fragments().collect());
    /// assert_eq!(free, [(0, 0xFFFF)], "the whole space, the cached range included");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn with<R>(&self, f: impl FnOnce(&mut RangeAllocator) -> R) -> R {
        let mut all = self.all();
        let r = f(&mut all.inner);
        let All { mut fronts, inner } = all;
        let caching = inner.placement() == Placement::GoodFit;
        for front in fronts.iter_mut() {
            if caching {
                front
                    .lent
                    .retain(|&s, &mut c| inner.is_allocation(s, self.bytes(c)));
            } else {
                front.lent.clear();
            }
        }
        // Every lock is still held: no call sees the caches half switched.
        self.caching.store(caching, Ordering::Relaxed);
        r
    }
}

impl core::fmt::Debug for LockedRangeAllocator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LockedRangeAllocator")
            .field("inner", &self.inner)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}
