//! [`SortedIndex`]: an ordered map from `u64` keys to `u32` values, built for the
//! predecessor queries of [`RangeAllocator`](super::RangeAllocator).
//!
//! It is a B-tree of height two: sorted *chunks* of at most `2 * CHUNK` keys, and a sorted
//! vector of each chunk's first key above them. A lookup is two binary searches over
//! contiguous memory (the top vector, then one chunk), which keeps it in a handful of cache
//! lines; an update shifts at most one chunk. A chunk splits when full and is dropped when
//! empty, which moves the top vector (`n / CHUNK` keys): rare and small. `std`'s `BTreeMap`
//! has nodes of eleven keys and pointer-chases through several levels for the same query,
//! which measured twice as slow here.
//!
//! Internal to the crate; the unit test `module_example` shows its use.

use alloc_crate::vec::Vec;

const CHUNK: usize = 32;

#[derive(Clone, Debug, Default)]
struct Chunk {
    keys: Vec<u64>,
    vals: Vec<u32>,
}

/// Where an entry lives: chunk and position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    chunk: usize,
    at: usize,
}

/// An ordered `u64 → u32` map.
///
/// # Invariants
///
/// Chunks are non-empty and their keys strictly increase within and across chunks;
/// `firsts[i] == chunks[i].keys[0]`.
#[derive(Clone, Debug, Default)]
pub struct SortedIndex {
    firsts: Vec<u64>,
    chunks: Vec<Chunk>,
    len: usize,
}

impl SortedIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The position of the largest key `≤ x`.
    pub fn pred(&self, x: u64) -> Option<Pos> {
        let c = self.firsts.partition_point(|&f| f <= x).checked_sub(1)?;
        let at = self.chunks[c].keys.partition_point(|&k| k <= x) - 1;
        Some(Pos { chunk: c, at })
    }

    /// The entry before `p`.
    #[cfg(test)]
    pub fn prev(&self, p: Pos) -> Option<Pos> {
        if p.at > 0 {
            Some(Pos {
                chunk: p.chunk,
                at: p.at - 1,
            })
        } else if p.chunk > 0 {
            let c = p.chunk - 1;
            Some(Pos {
                chunk: c,
                at: self.chunks[c].keys.len() - 1,
            })
        } else {
            None
        }
    }

    /// Key and value at `p`.
    pub fn at(&self, p: Pos) -> (u64, u32) {
        let c = &self.chunks[p.chunk];
        (c.keys[p.at], c.vals[p.at])
    }

    /// The value of key `k`.
    #[cfg(test)]
    pub fn get(&self, k: u64) -> Option<u32> {
        let p = self.pred(k)?;
        let (key, v) = self.at(p);
        (key == k).then_some(v)
    }

    /// Inserts `k → v`; `k` must not be present.
    pub fn insert(&mut self, k: u64, v: u32) {
        let pred = self.pred(k);
        self.insert_after(pred, k, v);
    }

    /// Inserts `k → v` right after `pred`, which must be [`pred`](Self::pred)`(k)` (the
    /// position of the largest key below `k`, or `None` when there is none): saves the
    /// search when the caller has just made it.
    pub fn insert_after(&mut self, pred: Option<Pos>, k: u64, v: u32) {
        self.len += 1;
        if self.chunks.is_empty() {
            self.firsts.push(k);
            self.chunks.push(Chunk {
                keys: alloc_crate::vec![k],
                vals: alloc_crate::vec![v],
            });
            return;
        }
        let (c, at) = match pred {
            Some(p) => (p.chunk, p.at + 1),
            None => (0, 0),
        };
        let chunk = &mut self.chunks[c];
        debug_assert!(
            at == 0 || chunk.keys[at - 1] < k,
            "insert_after: wrong position"
        );
        debug_assert!(
            chunk.keys.get(at).is_none_or(|&n| n > k),
            "insert_after: wrong position"
        );
        chunk.keys.insert(at, k);
        chunk.vals.insert(at, v);
        if at == 0 {
            self.firsts[c] = k;
        }
        if chunk.keys.len() >= 2 * CHUNK {
            let keys = chunk.keys.split_off(CHUNK);
            let vals = chunk.vals.split_off(CHUNK);
            self.firsts.insert(c + 1, keys[0]);
            self.chunks.insert(c + 1, Chunk { keys, vals });
        }
    }

    /// Removes the entry at `p`.
    pub fn remove_at(&mut self, p: Pos) {
        self.len -= 1;
        let chunk = &mut self.chunks[p.chunk];
        chunk.keys.remove(p.at);
        chunk.vals.remove(p.at);
        if chunk.keys.is_empty() {
            self.chunks.remove(p.chunk);
            self.firsts.remove(p.chunk);
        } else if p.at == 0 {
            self.firsts[p.chunk] = chunk.keys[0];
        }
    }

    /// Removes key `k`; returns its value.
    pub fn remove(&mut self, k: u64) -> Option<u32> {
        let p = self.pred(k)?;
        let (key, v) = self.at(p);
        if key != k {
            return None;
        }
        self.remove_at(p);
        Some(v)
    }

    /// Changes the key at `p` to `k`, which must keep the order (lie strictly between the
    /// neighbours' keys).
    #[cfg(test)]
    pub fn rekey(&mut self, p: Pos, k: u64) {
        self.chunks[p.chunk].keys[p.at] = k;
        if p.at == 0 {
            self.firsts[p.chunk] = k;
        }
    }

    /// All entries in key order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.keys.iter().copied().zip(c.vals.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_crate::collections::btree_map::{BTreeMap, Entry};

    #[test]
    fn module_example() {
        let mut starts = SortedIndex::new();
        for (k, v) in [(0x1000, 1), (0x8000, 2), (0x4000, 3)] {
            starts.insert(k, v);
        }
        // The last key at or before 0x5000: the block that may contain it.
        let p = starts.pred(0x5000).expect("a key below");
        assert_eq!(starts.at(p), (0x4000, 3));
        assert_eq!(starts.remove(0x4000), Some(3));
        assert_eq!(
            starts.iter().collect::<Vec<_>>(),
            [(0x1000, 1), (0x8000, 2)]
        );
    }

    #[test]
    fn matches_a_btreemap() {
        let mut idx = SortedIndex::new();
        let mut model = BTreeMap::new();
        let mut x: u64 = 12345;
        // Miri interprets every step: a shorter sequence still churns the index.
        let steps = if cfg!(miri) { 600 } else { 20_000u32 };
        for i in 0..steps {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (x >> 40) % 5000;
            match model.entry(k) {
                Entry::Occupied(e) => {
                    assert_eq!(idx.remove(k), Some(e.remove()));
                }
                Entry::Vacant(e) => {
                    idx.insert(k, i);
                    e.insert(i);
                }
            }
            let q = (x >> 20) % 5100;
            let want = model.range(..=q).next_back().map(|(&k, &v)| (k, v));
            assert_eq!(idx.pred(q).map(|p| idx.at(p)), want);
            if let Some(p) = idx.pred(q) {
                let want_prev = model
                    .range(..idx.at(p).0)
                    .next_back()
                    .map(|(&k, &v)| (k, v));
                assert_eq!(idx.prev(p).map(|p| idx.at(p)), want_prev);
            }
        }
        assert_eq!(idx.len(), model.len());
        assert!(idx.iter().eq(model.iter().map(|(&k, &v)| (k, v))));
        assert_eq!(idx.get(u64::MAX), None);
    }

    #[test]
    fn rekey_keeps_order() {
        let mut idx = SortedIndex::new();
        for k in [10u64, 20, 30] {
            idx.insert(k, k as u32);
        }
        let p = idx.pred(20).unwrap();
        idx.rekey(p, 15);
        assert_eq!(idx.get(15), Some(20));
        assert_eq!(idx.get(20), None);
        let p = idx.pred(10).unwrap();
        idx.rekey(p, 5);
        assert_eq!(idx.pred(7).map(|p| idx.at(p)), Some((5, 10)));
    }
}
