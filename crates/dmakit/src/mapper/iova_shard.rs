//! The bookkeeping of an [`IommuMapper`](super::IommuMapper), split so that threads do not
//! share it.
//!
//! Allocations of 1 to 32 pages are placed at a multiple of their size rounded up to a
//! power of two (so the allocation holding an IO address is found by rounding the address
//! down, at six alignments); each is recorded in the *shard* of
//! the thread that allocated it ([`Shard`]), with the page-table entries of its pages, and
//! when freed (and invalidated) its range goes into that shard's
//! [magazines](crate::alloc::magazine) for the next allocation of its size. A thread works
//! on its own shard, so threads running at once take different locks: a thread that finds
//! its shard held by another moves to the next free one and stays there. An allocation
//! another thread made is found by looking in the other shards, one at a time. Larger
//! allocations (and the few made at an exact size when space is short) are recorded in
//! one shared [`Large`] book, as before the shards.

use crate::alloc::magazine::Magazines;
use crate::alloc::table::{table, Table};
use crate::mapper::Access;
use alloc_crate::collections::BTreeMap;

/// Cached classes: 1 to 32 pages, exact.
pub(super) const CLASSES: usize = 32;
/// Alignments an allocation of a class may have: 2^0 to 2^5 pages.
const ALIGNMENTS: usize = 6;
/// The pending "class" of a range that goes back to the shared allocator as it is.
pub(super) const UNCACHED: usize = usize::MAX;
/// Freed ranges wait this many to a shard until one invalidation round covers them.
pub(super) const FLUSH_BATCH: usize = 16;
/// Shards. Under loom one: the model's interleavings grow with every lock taken, and with
/// two shards the mapper models run for many minutes; frees across shards are covered by
/// the threaded tests instead.
#[cfg(not(loom))]
pub(super) const SHARDS: usize = 8;
#[cfg(loom)]
pub(super) const SHARDS: usize = 1;

/// The class of an allocation of `pages` pages (`pages - 1`), if cached.
pub(super) fn class_of(pages: u64) -> Option<usize> {
    (1..=CLASSES as u64)
        .contains(&pages)
        .then(|| pages as usize - 1)
}

/// The alignment, in pages, of allocations of class `class`.
pub(super) fn align_of(class: usize) -> u64 {
    (class as u64 + 1).next_power_of_two()
}

/// A live allocation: its pages as asked, its class ([`UNCACHED`] in [`Large`]), and
/// whether the IOTLB may still hold translations of its pages that the page table no
/// longer has: a free or an entry replacement failed before its invalidation. Every later
/// insert into a stale allocation invalidates what it wrote, so the device never keeps
/// an old translation of a page the driver has mapped again; a successful free
/// invalidates all of it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Live {
    pub(super) pages: u64,
    /// The class, in 32 bits so the record stays 16 bytes (`u32::MAX`: [`UNCACHED`]).
    pub(super) class: u32,
    pub(super) stale: bool,
}

impl Live {
    pub(super) fn new(pages: u64, class: usize) -> Self {
        Live {
            pages,
            class: u32::try_from(class).unwrap_or(u32::MAX),
            stale: false,
        }
    }

    /// The same allocation, marked stale: pages of it may have lost their entries
    /// without an invalidation.
    pub(super) fn marked_stale(self) -> Self {
        Live {
            stale: true,
            ..self
        }
    }

    /// The class ([`UNCACHED`] in [`Large`]).
    pub(super) fn class(&self) -> usize {
        match self.class {
            u32::MAX => UNCACHED,
            c => c as usize,
        }
    }
}

/// A freed range waiting for its invalidation: start, bytes to invalidate, class (or
/// [`UNCACHED`]).
pub(super) type Freed = (u64, u64, usize);

/// Freed, unmapped ranges not yet invalidated, in a fixed array.
#[derive(Debug)]
pub(super) struct Pending {
    len: usize,
    items: [Freed; FLUSH_BATCH],
}

impl Pending {
    fn new() -> Self {
        Pending {
            len: 0,
            items: [(0, 0, 0); FLUSH_BATCH],
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn items(&self) -> &[Freed] {
        &self.items[..self.len]
    }

    /// Adds `f`; false when full.
    pub(super) fn push(&mut self, f: Freed) -> bool {
        if self.len == FLUSH_BATCH {
            return false;
        }
        self.items[self.len] = f;
        self.len += 1;
        true
    }

    /// Drops the range starting at `start`.
    pub(super) fn forget(&mut self, start: u64) {
        if let Some(i) = self.items().iter().position(|f| f.0 == start) {
            self.items.copy_within(i + 1..self.len, i);
            self.len -= 1;
        }
    }

    /// Empties it, returning what it held.
    pub(super) fn take(&mut self) -> ([Freed; FLUSH_BATCH], usize) {
        let n = core::mem::replace(&mut self.len, 0);
        (self.items, n)
    }
}

/// One thread-affine shard of a mapper.
///
/// Invariants: every key of `live` is the start of a range of its class's size, aligned to
/// [`align_of`] its class, allocated in the shared space and handed out; every IO page in `entries`
/// lies in the first `pages` pages of one of them; ranges in `mags` and `pending` are
/// allocated in the shared space, unmapped and not handed out; those in `mags` are
/// invalidated.
#[derive(Debug)]
pub(super) struct Shard {
    pub(super) mags: Magazines<CLASSES>,
    /// Start → allocation.
    pub(super) live: Table<Live>,
    /// IO page → (physical page, access).
    pub(super) entries: Table<(u64, Access)>,
    pub(super) pending: Pending,
}

impl Shard {
    pub(super) fn new() -> Self {
        Shard {
            mags: Magazines::new(),
            live: table(),
            entries: table(),
            pending: Pending::new(),
        }
    }

    /// The allocation holding IO address `iova`, if this shard has it: (start, record).
    pub(super) fn containing(&self, iova: u64, page: u64) -> Option<(u64, Live)> {
        (0..ALIGNMENTS).find_map(|k| {
            let start = iova & !((page << k) - 1);
            let l = *self.live.get(&start)?;
            (iova - start < l.pages * page).then_some((start, l))
        })
    }
}

/// Allocations the shards do not cache (class [`UNCACHED`]), by start, and the entries of
/// their pages.
#[derive(Debug, Default)]
pub(super) struct Large {
    pub(super) live: BTreeMap<u64, Live>,
    pub(super) entries: BTreeMap<u64, (u64, Access)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_exact_up_to_32_pages_and_aligned_to_powers_of_two() {
        let got: alloc_crate::vec::Vec<_> = (0..=33).map(class_of).collect();
        assert_eq!(got[..4], [None, Some(0), Some(1), Some(2)]);
        assert_eq!((got[32], got[33]), (Some(31), None));
        let aligns: alloc_crate::vec::Vec<_> = (0..5).map(align_of).collect();
        assert_eq!(aligns, [1, 2, 4, 4, 8]);
        assert_eq!(align_of(31), 32);
        let mut p = Pending::new();
        for i in 0..FLUSH_BATCH as u64 {
            assert!(p.push((i, 1, 0)));
        }
        assert!(!p.push((99, 1, 0)), "full");
        p.forget(3);
        assert_eq!(p.len(), FLUSH_BATCH - 1);
        assert!(p.items().iter().all(|f| f.0 != 3));
    }
}
