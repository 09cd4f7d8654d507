//! Magazines: caches of free ranges per size class in front of a shared allocator, one
//! set per thread-affine shard, exchanged with a shared depot in whole magazines (the
//! magazine layer of Bonwick's slab allocator, as Linux's IOVA caches use it).
//!
//! A shard keeps two magazines per class, *loaded* and *previous*: a free goes into the
//! loaded one (swapping with the previous one when it is full), an allocation comes out
//! of it (swapping when it is empty). Only when both are full (or both empty) does the
//! shard touch the depot, and then it moves a whole magazine, so the shared lock is taken
//! once per [`CAPACITY`] operations at most. Magazines are fixed arrays, and the depot's
//! lists are allocated when it is made: nothing here allocates after that.

use crate::sync::Mutex;
use alloc_crate::boxed::Box;
use alloc_crate::vec::Vec;

/// Ranges per magazine.
pub(crate) const CAPACITY: usize = 16;
/// Full magazines the depot keeps per class; a magazine beyond that goes back to the
/// allocator.
pub(crate) const DEPOT: usize = 8;

/// Up to [`CAPACITY`] free ranges of one class (their starts).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Magazine {
    len: usize,
    items: [u64; CAPACITY],
}

impl Magazine {
    const EMPTY: Magazine = Magazine {
        len: 0,
        items: [0; CAPACITY],
    };

    fn is_full(&self) -> bool {
        self.len == CAPACITY
    }

    fn push(&mut self, x: u64) -> bool {
        if self.is_full() {
            return false;
        }
        self.items[self.len] = x;
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<u64> {
        self.len = self.len.checked_sub(1)?;
        Some(self.items[self.len])
    }

    /// The ranges it holds.
    pub(crate) fn items(&self) -> &[u64] {
        &self.items[..self.len]
    }
}

/// Full magazines shared by every shard, per class.
#[derive(Debug)]
pub(crate) struct Depot<const C: usize> {
    full: [Vec<Magazine>; C],
}

impl<const C: usize> Depot<C> {
    /// An empty depot with room for [`DEPOT`] magazines per class.
    pub(crate) fn new() -> Self {
        Depot {
            full: core::array::from_fn(|_| Vec::with_capacity(DEPOT)),
        }
    }

    /// Empties the depot into `f(class, range)`.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(usize, u64)) {
        for (c, list) in self.full.iter_mut().enumerate() {
            for m in list.drain(..) {
                m.items().iter().for_each(|&x| f(c, x));
            }
        }
    }
}

/// One shard's magazines: a loaded and a previous one per class (on the heap: a few
/// kilobytes, too many for a kernel stack to carry around).
#[derive(Debug)]
pub(crate) struct Magazines<const C: usize> {
    loaded: Box<[Magazine]>,
    prev: Box<[Magazine]>,
}

impl<const C: usize> Magazines<C> {
    /// Empty magazines.
    pub(crate) fn new() -> Self {
        Magazines {
            loaded: alloc_crate::vec![Magazine::EMPTY; C].into_boxed_slice(),
            prev: alloc_crate::vec![Magazine::EMPTY; C].into_boxed_slice(),
        }
    }

    /// A cached range of class `c`, refilled from the depot when both magazines are empty.
    pub(crate) fn pop(&mut self, c: usize, depot: &Mutex<Depot<C>>) -> Option<u64> {
        if let Some(x) = self.loaded[c].pop() {
            return Some(x);
        }
        if self.prev[c].len > 0 {
            core::mem::swap(&mut self.loaded[c], &mut self.prev[c]);
            return self.loaded[c].pop();
        }
        self.loaded[c] = depot.lock().full[c].pop()?;
        self.loaded[c].pop()
    }

    /// Caches range `x` of class `c`. Returns a full magazine that neither this shard nor
    /// the depot has room for: the caller gives its ranges back to the allocator.
    pub(crate) fn push(&mut self, c: usize, x: u64, depot: &Mutex<Depot<C>>) -> Option<Magazine> {
        if self.loaded[c].push(x) {
            return None;
        }
        if !self.prev[c].is_full() {
            core::mem::swap(&mut self.loaded[c], &mut self.prev[c]);
            self.loaded[c].push(x);
            return None;
        }
        let spill = {
            let mut d = depot.lock();
            if d.full[c].len() < DEPOT {
                d.full[c].push(self.prev[c]);
                None
            } else {
                Some(self.prev[c])
            }
        };
        self.prev[c] = self.loaded[c];
        self.loaded[c] = Magazine::EMPTY;
        self.loaded[c].push(x);
        spill
    }

    /// Empties every magazine into `f(class, range)`.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(usize, u64)) {
        for c in 0..C {
            for m in [&mut self.loaded[c], &mut self.prev[c]] {
                m.items().iter().for_each(|&x| f(c, x));
                m.len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_crate::vec;

    #[test]
    fn ranges_move_through_both_magazines_then_the_depot_then_spill() {
        let depot = Mutex::new(Depot::<2>::new());
        let mut m = Magazines::<2>::new();
        let n = (2 + DEPOT) * CAPACITY;
        for x in 0..n as u64 {
            assert!(m.push(1, x, &depot).is_none(), "room for range {x}");
        }
        let spilled = m.push(1, n as u64, &depot).expect("depot full");
        assert_eq!(spilled.items().len(), CAPACITY);
        // Everything that did not spill comes back, each once, from class 1 only.
        assert_eq!(m.pop(0, &depot), None);
        let mut got = vec![];
        while let Some(x) = m.pop(1, &depot) {
            got.push(x);
        }
        got.extend_from_slice(spilled.items());
        got.sort_unstable();
        assert_eq!(got, (0..=n as u64).collect::<Vec<_>>());
        m.push(0, 7, &depot);
        let mut drained = vec![];
        m.drain(|c, x| drained.push((c, x)));
        depot.lock().drain(|c, x| drained.push((c, x)));
        assert_eq!(drained, [(0, 7)]);
    }
}
