//! The model of a range allocator's space: every number is never owned, free or allocated.
//! Owned numbers are kept as sorted, disjoint intervals; neighbours in the same state are
//! merged, so the free intervals are exactly the allocator's fragments.

/// The state of an owned number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// In the allocator's free space.
    Free,
    /// Handed out.
    Allocated,
}

/// Sorted, disjoint, merged intervals `(start, inclusive last, state)`.
#[derive(Clone, Debug, Default)]
pub struct Space {
    runs: Vec<(u64, u64, State)>,
}

impl Space {
    /// The free intervals in address order.
    pub fn free(&self) -> Vec<(u64, u64)> {
        self.runs
            .iter()
            .filter(|r| r.2 == State::Free)
            .map(|r| (r.0, r.1))
            .collect()
    }

    /// The allocated intervals (neighbouring allocations merged) in address order.
    pub fn allocated(&self) -> Vec<(u64, u64)> {
        self.runs
            .iter()
            .filter(|r| r.2 == State::Allocated)
            .map(|r| (r.0, r.1))
            .collect()
    }

    /// Total free numbers (may exceed `u64::MAX` only in a broken allocator).
    pub fn free_count(&self) -> u128 {
        self.runs
            .iter()
            .filter(|r| r.2 == State::Free)
            .map(|r| u128::from(r.1 - r.0) + 1)
            .sum()
    }

    /// The owned pieces of `[s, l]`, clipped to it, in address order.
    pub fn overlaps(&self, s: u64, l: u64) -> Vec<(u64, u64, State)> {
        self.runs
            .iter()
            .filter(|r| r.0 <= l && r.1 >= s)
            .map(|r| (r.0.max(s), r.1.min(l), r.2))
            .collect()
    }

    /// Whether `[s, l]` lies inside one free interval.
    pub fn inside_free(&self, s: u64, l: u64) -> bool {
        self.runs
            .iter()
            .any(|r| r.2 == State::Free && r.0 <= s && l <= r.1)
    }

    /// The lowest number of `[s, l]` that is not owned, if any.
    pub fn first_unowned(&self, s: u64, l: u64) -> Option<u64> {
        let mut at = s;
        for (a, b, _) in self.overlaps(s, l) {
            if a > at {
                return Some(at);
            }
            if b == l {
                return None;
            }
            at = b + 1;
        }
        Some(at)
    }

    /// Whether some placement of `size` numbers aligned to `mask + 1` is free.
    pub fn fits(&self, size: u64, mask: u64) -> bool {
        self.runs.iter().any(|&(s, l, st)| {
            st == State::Free
                && s.checked_add(mask)
                    .map(|v| v & !mask)
                    .is_some_and(|d| d <= l && l - d >= size - 1)
        })
    }

    /// Puts `[s, l]` in `state` (`None`: never owned), merging neighbours.
    pub fn set(&mut self, s: u64, l: u64, state: Option<State>) {
        let mut out = Vec::with_capacity(self.runs.len() + 2);
        for &(a, b, st) in &self.runs {
            if b < s || a > l {
                out.push((a, b, st));
                continue;
            }
            if a < s {
                out.push((a, s - 1, st));
            }
            if b > l {
                out.push((l + 1, b, st));
            }
        }
        if let Some(st) = state {
            out.push((s, l, st));
        }
        out.sort_by_key(|r| r.0);
        let mut merged: Vec<(u64, u64, State)> = Vec::with_capacity(out.len());
        for r in out {
            match merged.last_mut() {
                Some(m) if m.2 == r.2 && m.1.checked_add(1) == Some(r.0) => m.1 = r.1,
                _ => merged.push(r),
            }
        }
        self.runs = merged;
    }
}
