//! The process-wide lock ledger: how many wirings hold each page of this process.
//!
//! `mlock` does not nest. A page locked three times is unlocked by one `munlock`, and the
//! lock belongs to the *process*, not to whoever asked. dmakit's wiring is counted (IOKit's
//! `prepare`/`complete`): each `wire` needs its own `unwire`. So the counts live here, once
//! per process, shared by every [`Host`](crate::Host):
//!
//! * a page is `mlock`ed when its count goes from 0 to 1 and `munlock`ed when it returns
//!   to 0, whichever `Host` did the counting;
//! * the pages of a wired allocation are *locked for life*: `mlock`ed when allocated and
//!   `munlock`ed only when freed, however wirings on them come and go;
//! * a failed `wire` leaves every count and every lock as it found them.
//!
//! Two hosts wiring two `Vec`s that share a heap page therefore cannot unlock each other's
//! page. What the ledger cannot see is an `mlock` made outside dmakit (by the program or
//! `mlockall`): an unwire that brings a page to 0 unlocks it regardless.
//!
//! Lock order: a host's state lock, then the ledger; never the other way round.

use crate::sys;
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

static LEDGER: Mutex<Ledger> = Mutex::new(Ledger {
    counts: BTreeMap::new(),
    for_life: BTreeMap::new(),
});

/// The ledger, locked. A poisoned lock is taken over: every update leaves the maps
/// consistent before anything that could panic.
pub(crate) fn ledger() -> MutexGuard<'static, Ledger> {
    LEDGER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why pages could not be wired.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WireFailure {
    /// The page is not mapped in this process.
    Unmapped(u64),
    /// `mlock` of a run starting at this page failed with this errno.
    Lock(u64, Errno),
}

/// Wiring counts and locked-for-life ranges (see the module docs).
#[derive(Debug)]
pub(crate) struct Ledger {
    /// Page address → number of wirings (absent: zero).
    counts: BTreeMap<u64, u32>,
    /// Start → length of wired allocations, locked for their whole life.
    for_life: BTreeMap<u64, u64>,
}

impl Ledger {
    fn locked_for_life(&self, page: u64) -> bool {
        self.for_life
            .range(..=page)
            .next_back()
            .is_some_and(|(&start, &len)| page - start < len)
    }

    /// Whether `page` is resident and locked by dmakit (wired, or in a wired allocation).
    pub(crate) fn is_locked(&self, page: u64) -> bool {
        self.counts.contains_key(&page) || self.locked_for_life(page)
    }

    /// How many wirings (through any host) hold `page`.
    pub(crate) fn count(&self, page: u64) -> u32 {
        self.counts.get(&page).copied().unwrap_or(0)
    }

    /// The first page of `[start, end)` that some wiring holds.
    pub(crate) fn first_wired(&self, start: u64, end: u64) -> Option<u64> {
        self.counts.range(start..end).next().map(|(&p, _)| p)
    }

    /// The first page of `[start, end)` that more than `held` wirings hold.
    pub(crate) fn first_wired_over(&self, start: u64, end: u64, held: u32) -> Option<u64> {
        self.counts
            .range(start..end)
            .find(|(_, &c)| c > held)
            .map(|(&p, _)| p)
    }

    /// Records `[va, va + len)` as a wired allocation, locked for its life; `mlock`s it
    /// when `lock` (hugetlb memory, which is never swapped, needs no lock).
    pub(crate) fn lock_for_life(&mut self, va: u64, len: u64, lock: bool) -> Result<(), Errno> {
        if lock {
            if let Err(e) = sys::mlock(va, len) {
                // A failed mlock may have locked part of the range.
                sys::munlock(va, len);
                return Err(e);
            }
        }
        self.for_life.insert(va, len);
        Ok(())
    }

    /// Ends the life lock of the allocation at `va`: unlocks its pages that no wiring holds.
    pub(crate) fn end_life(&mut self, va: u64, len: u64, page: u64) {
        if self.for_life.remove(&va).is_none() {
            return;
        }
        let pages = (0..len / page).map(|i| va + i * page);
        let loose: Vec<u64> = pages.filter(|p| !self.counts.contains_key(p)).collect();
        for (start, n) in runs(&loose, page) {
            sys::munlock(start, n * page);
        }
    }

    /// Adds one wiring to each of `n` pages from `first`, locking those that were unlocked.
    /// All or nothing.
    pub(crate) fn wire(&mut self, first: u64, n: u64, page: u64) -> Result<(), WireFailure> {
        let len = n * page;
        if !sys::is_mapped(first, len) {
            let hole = (0..n)
                .map(|i| first + i * page)
                .find(|&p| !sys::is_mapped(p, page))
                .unwrap_or(first);
            return Err(WireFailure::Unmapped(hole));
        }
        let fresh: Vec<u64> = (0..n)
            .map(|i| first + i * page)
            .filter(|&p| !self.is_locked(p))
            .collect();
        let mut locked: Vec<(u64, u64)> = Vec::new();
        for (start, count) in runs(&fresh, page) {
            if let Err(e) = sys::mlock(start, count * page) {
                // Undo this call only: the failed run (possibly locked in part) and the runs
                // locked before it, none of which was locked when the call began.
                sys::munlock(start, count * page);
                for (s, c) in locked {
                    sys::munlock(s, c * page);
                }
                return Err(WireFailure::Lock(start, e));
            }
            locked.push((start, count));
        }
        for i in 0..n {
            *self.counts.entry(first + i * page).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Removes one wiring from each of `n` pages from `first` (every one must hold at least
    /// one, which the caller checked), unlocking pages that drop to zero outside a wired
    /// allocation.
    pub(crate) fn unwire(&mut self, first: u64, n: u64, page: u64) {
        let mut released = Vec::new();
        for i in 0..n {
            let p = first + i * page;
            if let Some(c) = self.counts.get_mut(&p) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(&p);
                    if !self.locked_for_life(p) {
                        released.push(p);
                    }
                }
            }
        }
        for (start, count) in runs(&released, page) {
            sys::munlock(start, count * page);
        }
    }
}

/// Sorted page addresses grouped into runs of consecutive pages: (first page, page count).
fn runs(pages: &[u64], page: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((start, n)) if *start + *n * page == p => *n += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn pages_group_into_runs() {
        assert_eq!(
            runs(&[0x1000, 0x2000, 0x3000, 0x5000, 0x7000, 0x8000], 0x1000),
            vec![(0x1000, 3), (0x5000, 1), (0x7000, 2)]
        );
        assert!(runs(&[], 0x1000).is_empty());
    }
}
