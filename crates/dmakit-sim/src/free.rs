//! The free page set: which physical pages the allocator may still hand out.
//!
//! Free RAM is kept as disjoint, coalesced intervals of page-aligned addresses, not as one
//! entry per page. A machine with a terabyte of RAM therefore costs one entry per RAM region
//! until allocations cut it up; looking a page up, finding the first free page at or after
//! an address, and walking the free runs for a contiguous allocation are all searches over
//! intervals, never walks over pages.
//!
//! # Invariants
//!
//! Every interval `[start, end)` is non-empty and page aligned; intervals are disjoint and
//! never adjacent (adjacent ones are merged); `pages` is the total number of pages they
//! hold.

use std::collections::BTreeMap;

/// A set of free physical pages, as coalesced intervals.
#[derive(Clone, Debug)]
pub(crate) struct FreeSet {
    /// Interval start → exclusive end.
    runs: BTreeMap<u64, u64>,
    page: u64,
    pages: u64,
}

impl FreeSet {
    /// An empty set of pages of `page` bytes.
    pub(crate) fn new(page: u64) -> Self {
        FreeSet {
            runs: BTreeMap::new(),
            page,
            pages: 0,
        }
    }

    /// Number of free pages.
    pub(crate) fn len(&self) -> u64 {
        self.pages
    }

    /// Number of free pages whose last byte is at or below `limit`.
    pub(crate) fn len_below(&self, limit: u64) -> u64 {
        let mut n = 0;
        for (&s, &e) in &self.runs {
            if s > limit {
                break;
            }
            // The last page that fits starts at or below `limit - (page - 1)`.
            let Some(top) = limit.checked_sub(self.page - 1) else {
                break;
            };
            if s > top {
                break;
            }
            let end = e.min((top - top % self.page).saturating_add(self.page));
            n += (end - s) / self.page;
        }
        n
    }

    /// The interval holding `pa`, if `pa` is free.
    fn run_of(&self, pa: u64) -> Option<(u64, u64)> {
        self.runs
            .range(..=pa)
            .next_back()
            .filter(|(_, &e)| pa < e)
            .map(|(&s, &e)| (s, e))
    }

    /// Whether page `pa` is free.
    pub(crate) fn contains(&self, pa: u64) -> bool {
        self.run_of(pa).is_some()
    }

    /// The lowest free page at or above `addr` (page aligned).
    pub(crate) fn first_at_or_after(&self, addr: u64) -> Option<u64> {
        if self.contains(addr) {
            return Some(addr);
        }
        self.runs.range(addr..).next().map(|(&s, _)| s)
    }

    /// The free intervals `[start, end)` in address order.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|(&s, &e)| (s, e))
    }

    /// Takes page `pa` out of the set; `false` if it was not free.
    pub(crate) fn remove(&mut self, pa: u64) -> bool {
        let Some((s, e)) = self.run_of(pa) else {
            return false;
        };
        self.runs.remove(&s);
        if s < pa {
            self.runs.insert(s, pa);
        }
        let next = pa + self.page;
        if next < e {
            self.runs.insert(next, e);
        }
        self.pages -= 1;
        true
    }

    /// Puts page `pa` back; `false` (and no change) if it was free already.
    pub(crate) fn insert(&mut self, pa: u64) -> bool {
        self.insert_range(pa, pa + self.page)
    }

    /// Adds `[start, end)` (page aligned, wholly not free), merging with neighbours;
    /// `false` (and no change) if any of it is free already.
    pub(crate) fn insert_range(&mut self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        let below = self.runs.range(..end).next_back().map(|(&s, &e)| (s, e));
        if below.is_some_and(|(_, e)| e > start) {
            return false;
        }
        let mut new_start = start;
        let mut new_end = end;
        if let Some((s, e)) = below.filter(|&(_, e)| e == start) {
            self.runs.remove(&s);
            new_start = s;
            debug_assert_eq!(e, start);
        }
        if let Some(e) = self.runs.remove(&end) {
            new_end = e;
        }
        self.runs.insert(new_start, new_end);
        self.pages += (end - start) / self.page;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 0x1000;

    fn set(ranges: &[(u64, u64)]) -> FreeSet {
        let mut f = FreeSet::new(P);
        for &(s, e) in ranges {
            assert!(f.insert_range(s, e));
        }
        f
    }

    #[test]
    fn remove_splits_and_insert_merges() {
        let mut f = set(&[(0x10000, 0x20000)]);
        assert_eq!(f.len(), 16);
        assert!(f.remove(0x14000));
        assert!(!f.contains(0x14000));
        assert!(f.contains(0x13000) && f.contains(0x15000));
        assert_eq!(f.runs().count(), 2);
        assert!(!f.remove(0x14000), "already taken");
        assert!(f.insert(0x14000));
        assert_eq!(f.runs().collect::<Vec<_>>(), [(0x10000, 0x20000)]);
        assert!(!f.insert(0x14000), "double insert is refused");
        assert_eq!(f.len(), 16);
        // Ends of an interval.
        assert!(f.remove(0x10000) && f.remove(0x1f000));
        assert_eq!(f.runs().collect::<Vec<_>>(), [(0x11000, 0x1f000)]);
        assert_eq!(f.first_at_or_after(0), Some(0x11000));
    }

    #[test]
    fn first_at_or_after_skips_gaps() {
        let f = set(&[(0x1000, 0x3000), (0x8000, 0x9000)]);
        assert_eq!(f.first_at_or_after(0x0), Some(0x1000));
        assert_eq!(f.first_at_or_after(0x2000), Some(0x2000));
        assert_eq!(f.first_at_or_after(0x3000), Some(0x8000));
        assert_eq!(f.first_at_or_after(0x9000), None);
    }

    #[test]
    fn count_below_a_limit() {
        let f = set(&[(0x1000, 0x5000), (0x1_0000_0000, 0x1_0001_0000)]);
        assert_eq!(f.len_below(u64::MAX), 4 + 16);
        assert_eq!(f.len_below(0xFFFF_FFFF), 4);
        assert_eq!(f.len_below(0x2FFF), 2, "pages 0x1000 and 0x2000");
        assert_eq!(f.len_below(0x2FFE), 1, "page 0x2000 ends above the limit");
        assert_eq!(f.len_below(0x0FFF), 0);
        assert_eq!(f.len_below(0), 0);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut f = set(&[(0x4000, 0x8000)]);
        assert!(!f.insert_range(0x2000, 0x5000));
        assert!(!f.insert_range(0x7000, 0x9000));
        assert!(!f.insert_range(0x3000, 0x3000));
        assert!(f.insert_range(0x2000, 0x4000));
        assert!(f.insert_range(0x8000, 0x9000));
        assert_eq!(f.runs().collect::<Vec<_>>(), [(0x2000, 0x9000)]);
        assert_eq!(f.len(), 7);
    }
}
