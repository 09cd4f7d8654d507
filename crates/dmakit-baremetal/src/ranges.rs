//! A set of disjoint, coalesced `[start, end)` intervals of whole units (pages), the
//! bookkeeping under the physical page allocator and the kernel's mapping area.
//!
//! # Invariants
//!
//! Every interval is non-empty and unit aligned; intervals are disjoint and never adjacent
//! (adjacent ones are merged); `total` is the sum of their lengths.

use alloc::collections::BTreeMap;

/// Disjoint, coalesced intervals of `unit`-aligned addresses.
#[derive(Clone, Debug)]
pub(crate) struct Ranges {
    runs: BTreeMap<u64, u64>,
    unit: u64,
    total: u64,
}

impl Ranges {
    /// An empty set of `unit`-byte units (a power of two).
    pub(crate) fn new(unit: u64) -> Self {
        Ranges {
            runs: BTreeMap::new(),
            unit,
            total: 0,
        }
    }

    /// Bytes in the set.
    pub(crate) fn bytes(&self) -> u64 {
        self.total
    }

    /// The intervals in address order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|(&s, &e)| (s, e))
    }

    /// The interval holding `at`, if any.
    pub(crate) fn run_of(&self, at: u64) -> Option<(u64, u64)> {
        self.runs
            .range(..=at)
            .next_back()
            .filter(|(_, &e)| at < e)
            .map(|(&s, &e)| (s, e))
    }

    /// Whether all of `[start, end)` is in the set.
    pub(crate) fn contains_range(&self, start: u64, end: u64) -> bool {
        start < end && self.run_of(start).is_some_and(|(_, e)| end <= e)
    }

    /// Takes `[start, end)` (wholly in the set) out; `false` and no change otherwise.
    pub(crate) fn remove(&mut self, start: u64, end: u64) -> bool {
        let Some((s, e)) = self.run_of(start).filter(|&(_, e)| end <= e && start < end) else {
            return false;
        };
        self.runs.remove(&s);
        if s < start {
            self.runs.insert(s, start);
        }
        if end < e {
            self.runs.insert(end, e);
        }
        self.total -= end - start;
        true
    }

    /// Adds `[start, end)` (unit aligned, none of it in the set), merging with neighbours;
    /// `false` and no change if it is empty or any of it is in the set already.
    pub(crate) fn insert(&mut self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        let below = self.runs.range(..end).next_back().map(|(&s, &e)| (s, e));
        if below.is_some_and(|(_, e)| e > start) {
            return false;
        }
        let (mut new_start, mut new_end) = (start, end);
        if let Some((s, _)) = below.filter(|&(_, e)| e == start) {
            self.runs.remove(&s);
            new_start = s;
        }
        if let Some(e) = self.runs.remove(&end) {
            new_end = e;
        }
        self.runs.insert(new_start, new_end);
        self.total += end - start;
        true
    }

    /// The lowest `align`-aligned start of `len` bytes inside the set, the range wholly
    /// below `limit` (exclusive end); taken out of the set.
    pub(crate) fn take_lowest(&mut self, len: u64, align: u64) -> Option<u64> {
        let align = align.max(self.unit);
        let mut found = None;
        for (s, e) in self.iter() {
            let Some(a) = s.checked_add(align - 1).map(|a| a & !(align - 1)) else {
                break;
            };
            if a.checked_add(len).is_some_and(|end| end <= e) {
                found = Some(a);
                break;
            }
        }
        let a = found?;
        self.remove(a, a + len).then_some(a)
    }

    /// The highest `align`-aligned start of `len` bytes inside the set whose last byte is
    /// at or below `limit`; taken out of the set.
    pub(crate) fn take_highest(&mut self, len: u64, align: u64, limit: u64) -> Option<u64> {
        let align = align.max(self.unit);
        if len == 0 {
            return None;
        }
        let mut found = None;
        for (s, e) in self.iter().rev() {
            if s > limit {
                continue;
            }
            let top = e.min(limit.saturating_add(1));
            let Some(a) = top.checked_sub(len).map(|a| a & !(align - 1)) else {
                continue;
            };
            if a >= s {
                found = Some(a);
                break;
            }
        }
        let a = found?;
        self.remove(a, a + len).then_some(a)
    }

    /// Bytes of whole units in the set whose last byte is at or below `limit`.
    pub(crate) fn bytes_below(&self, limit: u64) -> u64 {
        let top = match limit.checked_add(1) {
            Some(t) => t & !(self.unit - 1),
            None => return self.total,
        };
        self.iter()
            .take_while(|&(s, _)| s < top)
            .map(|(s, e)| e.min(top) - s)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const P: u64 = 0x1000;

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut r = Ranges::new(P);
        assert!(r.insert(0x4000, 0x8000));
        assert!(r.insert(0x8000, 0x9000));
        assert!(r.insert(0x2000, 0x4000));
        assert_eq!(r.iter().collect::<Vec<_>>(), [(0x2000, 0x9000)]);
        assert!(!r.insert(0x1000, 0x3000), "overlap refused");
        assert!(!r.insert(0x5000, 0x5000), "empty refused");
        assert!(r.remove(0x5000, 0x6000));
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            [(0x2000, 0x5000), (0x6000, 0x9000)]
        );
        assert!(!r.remove(0x4000, 0x7000), "not wholly in the set");
        assert_eq!(r.bytes(), 6 * P);
        assert!(r.contains_range(0x6000, 0x9000) && !r.contains_range(0x4000, 0x7000));
    }

    #[test]
    fn highest_and_lowest_placement() {
        let mut r = Ranges::new(P);
        r.insert(0x10_0000, 0x20_0000);
        r.insert(0x1000_0000, 0x1010_0000);
        assert_eq!(r.take_highest(0x2000, 0, u64::MAX), Some(0x100f_e000));
        assert_eq!(
            r.take_highest(0x1000, 0x10_0000, u64::MAX),
            Some(0x1000_0000)
        );
        assert_eq!(r.take_highest(0x1000, 0, 0xfff_ffff), Some(0x1f_f000));
        assert_eq!(
            r.take_highest(0x1000, 0, 0x10_0ffe),
            None,
            "the first page ends above"
        );
        assert_eq!(r.take_highest(0x1000, 0, 0x10_0fff), Some(0x10_0000));
        assert_eq!(r.take_lowest(0x1000, 0x4000), Some(0x10_4000));
        assert_eq!(r.bytes_below(0x10_2fff), 0x2000);
        assert_eq!(r.bytes_below(u64::MAX), r.bytes());
        assert_eq!(r.take_highest(0x1_0000_0000, 0, u64::MAX), None);
    }
}
