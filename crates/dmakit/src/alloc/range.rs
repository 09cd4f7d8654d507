//! [`RangeAllocator`]: IOKit's IORangeAllocator.
//!
//! Hands out `(size, alignment)` ranges of an abstract numeric space: it owns no memory, only
//! numbers. IO virtual address spaces, PCI BAR windows and descriptor-ring slots are typical
//! spaces. Free space is a set of disjoint, non-adjacent intervals; freeing a range merges it
//! with free neighbours.
//!
//! IOKit semantics kept: sizes are rounded up to the *default* alignment; an explicit
//! alignment of 0 means the default; [`allocate_range`](RangeAllocator::allocate_range)
//! takes a given range only if it lies inside one free interval; freeing is also how space
//! is added; free space and fragment counts are exact.
//!
//! ## How it is fast
//!
//! XNU keeps a sorted array of free intervals and scans it (O(n) per call). dmakit keeps
//! each free interval twice:
//!
//! * in an ordered index from start to interval ([`SortedIndex`], a two-level B-tree) for
//!   `allocate_range`, neighbour merging and double-free detection (O(log n) searches);
//! * in a segregated free list by [size class](super::size_class) with a two-level bitmap,
//!   so a block that surely fits is found in O(1).
//!
//! An allocation is carved from the **top** of the chosen block, so the block keeps its
//! start and the index is not touched at all unless the block is used up; a free costs
//! one index search.
//!
//! ## Divergences from IOKit
//!
//! * **Placement is good fit, not first fit.** IOKit returns the lowest address that fits;
//!   dmakit returns the top of a block from the smallest size class that surely fits (and
//!   only when no such class has a block, scans the one class that may hold a fit).
//!   Callers that need a particular address use `allocate_range`.
//! * A free that overlaps free space is [`Error::DoubleFree`] and changes nothing (IOKit
//!   silently corrupts its list); a size of zero is [`Error::ZeroSize`]; a non-power-of-two
//!   alignment is [`Error::BadAlignment`] (IOKIT-SEMANTICS Q11: fix).
//!
//! ```
//! use dmakit::alloc::RangeAllocator;
//!
//! let mut iova = RangeAllocator::new(0x1000, 0xF000, 0x1000)?; // [0x1000, 0x10000)
//! iova.allocate_range(0x4000, 0x1000)?;                          // reserve one page
//! let a = iova.allocate(0x2000, 0)?;
//! assert!(a + 0x2000 <= 0x4000 || a >= 0x5000, "never over the reservation");
//! let b = iova.allocate(0x1000, 0x4000)?;                        // 16 KiB aligned
//! assert_eq!(b % 0x4000, 0);
//! iova.deallocate(0x4000, 0x1000)?;
//! iova.deallocate(a, 0x2000)?;
//! iova.deallocate(b, 0x1000)?;
//! assert_eq!(iova.fragment_count(), 1);
//! assert_eq!(iova.free_count(), 0xF000);
//! # Ok::<(), dmakit::Error>(())
//! ```

use super::ordered::{Pos, SortedIndex};
use super::size_class::{ceil_class, floor_class, ClassMap, CLASSES};
use crate::{Error, Result};
use alloc_crate::vec::Vec;

const WHAT: &str = "range allocator";
const NIL: u32 = u32::MAX;

/// One interval `[start, last]` in the index: free (and linked in its size class's list),
/// or a *tombstone*: a free block that was handed out whole, kept in the index so that
/// freeing exactly that range again costs no index update.
#[derive(Clone, Copy, Debug)]
struct Node {
    start: u64,
    last: u64,
    prev: u32,
    next: u32,
    class: u16,
    taken: bool,
}

impl Node {
    /// Length, saturated at `u64::MAX` for the whole 2^64 space.
    fn len(&self) -> u64 {
        (self.last - self.start).saturating_add(1)
    }
}

/// An allocator of ranges of a `u64` space.
///
/// # Invariants
///
/// The intervals in the index (free ones and tombstones) are disjoint; free ones are never
/// adjacent to each other. Every free interval has exactly one node, reachable from `index`
/// by its start and linked in the list of `floor_class(len)`; tombstones are in no list and
/// cover allocated space only; `taken` counts them. `classes` marks exactly the non-empty
/// lists; `free_bytes` is the sum of the free intervals' lengths.
#[derive(Clone, Debug)]
pub struct RangeAllocator {
    index: SortedIndex,
    nodes: Vec<Node>,
    spare: Vec<u32>,
    heads: Vec<u32>,
    classes: ClassMap,
    default_mask: u64,
    free_bytes: u64,
    taken: usize,
}

fn check_align(what: &'static str, align: u64) -> Result<u64> {
    if align == 0 {
        return Ok(1);
    }
    if !align.is_power_of_two() {
        return Err(Error::BadAlignment { what, align });
    }
    Ok(align)
}

impl RangeAllocator {
    /// An allocator with nothing free yet; add space with [`deallocate`](Self::deallocate).
    /// `default_alignment` 0 means 1.
    pub fn empty(default_alignment: u64) -> Result<Self> {
        let a = check_align("range allocator default alignment", default_alignment)?;
        Ok(RangeAllocator {
            index: SortedIndex::new(),
            nodes: Vec::new(),
            spare: Vec::new(),
            heads: alloc_crate::vec![NIL; CLASSES],
            classes: ClassMap::default(),
            default_mask: a - 1,
            free_bytes: 0,
            taken: 0,
        })
    }

    /// An allocator whose free space is `[base, base + size)`.
    pub fn new(base: u64, size: u64, default_alignment: u64) -> Result<Self> {
        let mut r = Self::empty(default_alignment)?;
        r.deallocate(base, size)?;
        Ok(r)
    }

    /// IOKit's `withRange(endOfRange, defaultAlignment)`: the space `[0, end_of_range]`
    /// (inclusive), or an empty allocator when `end_of_range` is 0. As in IOKit the
    /// size `end_of_range + 1` is rounded up to the default alignment.
    pub fn with_end_of_range(end_of_range: u64, default_alignment: u64) -> Result<Self> {
        let mut r = Self::empty(default_alignment)?;
        if end_of_range != 0 {
            let size = end_of_range.checked_add(1).ok_or(Error::Overflow {
                what: "range allocator space",
                start: 0,
                len: end_of_range,
            })?;
            r.deallocate(0, size)?;
        }
        Ok(r)
    }

    /// The default alignment.
    pub fn default_alignment(&self) -> u64 {
        self.default_mask + 1
    }

    /// Total free bytes.
    pub fn free_count(&self) -> u64 {
        self.free_bytes
    }

    /// Number of free intervals.
    pub fn fragment_count(&self) -> usize {
        self.index.len() - self.taken
    }

    /// The free intervals as `(start, inclusive end)`, in address order (IOKit's
    /// `serialize`).
    pub fn fragments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.index
            .iter()
            .map(|(_, n)| &self.nodes[n as usize])
            .filter(|n| !n.taken)
            .map(|n| (n.start, n.last))
    }

    fn round_size(&self, size: u64) -> Result<u64> {
        if size == 0 {
            return Err(Error::ZeroSize { what: WHAT });
        }
        size.checked_add(self.default_mask)
            .map(|s| s & !self.default_mask)
            .ok_or(Error::Overflow {
                what: WHAT,
                start: 0,
                len: size,
            })
    }

    // --- size-class lists -------------------------------------------------------------

    fn link(&mut self, n: u32) {
        let c = floor_class(self.nodes[n as usize].len());
        let head = self.heads[c];
        let node = &mut self.nodes[n as usize];
        node.class = c as u16;
        node.prev = NIL;
        node.next = head;
        if head != NIL {
            self.nodes[head as usize].prev = n;
        }
        self.heads[c] = n;
        self.classes.set(c);
    }

    fn unlink(&mut self, n: u32) {
        let Node {
            prev, next, class, ..
        } = self.nodes[n as usize];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.heads[class as usize] = next;
            if next == NIL {
                self.classes.clear(class as usize);
            }
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn new_node(&mut self, start: u64, last: u64) -> u32 {
        let node = Node {
            start,
            last,
            prev: NIL,
            next: NIL,
            class: 0,
            taken: false,
        };
        match self.spare.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// Replaces the extent of node `n` (still indexed by its old start if that is kept).
    fn resize(&mut self, n: u32, start: u64, last: u64) {
        let old = self.nodes[n as usize];
        let relink = floor_class((last - start).saturating_add(1)) != old.class as usize;
        if relink {
            self.unlink(n);
        }
        self.nodes[n as usize].start = start;
        self.nodes[n as usize].last = last;
        if relink {
            self.link(n);
        }
    }

    fn remove_node(&mut self, n: u32) {
        self.unlink(n);
        self.index.remove(self.nodes[n as usize].start);
        self.spare.push(n);
    }

    /// Takes `[data, last]` out of free node `n`.
    fn carve(&mut self, n: u32, data: u64, last: u64) {
        let Node {
            start, last: end, ..
        } = self.nodes[n as usize];
        self.free_bytes -= last - data + 1;
        match (data > start, last < end) {
            (false, false) => {
                // Handed out whole: keep it as a tombstone.
                self.unlink(n);
                self.nodes[n as usize].taken = true;
                self.taken += 1;
            }
            (true, false) => self.resize(n, start, data - 1),
            (false, true) => {
                // The start moves up inside the same gap between neighbours: the order of
                // the index is unchanged.
                if let Some(p) = self.index.pred(start) {
                    self.index.rekey(p, last + 1);
                }
                self.resize(n, last + 1, end);
            }
            (true, true) => {
                self.resize(n, start, data - 1);
                let t = self.new_node(last + 1, end);
                self.link(t);
                self.index.insert(last + 1, t);
            }
        }
    }

    /// The index entry starting at `last + 1` (if any), and the last entry starting at or
    /// before `last`.
    fn neighbours(&self, last: u64) -> (Option<Pos>, Option<Pos>) {
        let top = self.index.pred(last.saturating_add(1));
        match top {
            Some(pos) if last != u64::MAX && self.index.at(pos).0 == last + 1 => {
                (Some(pos), self.index.prev(pos))
            }
            _ => (None, top),
        }
    }

    /// Frees tombstone `n` at `pos` again, merging with free neighbours (the entry before
    /// it, and `succ`, the entry right after it, if any).
    fn revive(&mut self, pos: Pos, n: u32, succ: Option<Pos>) {
        self.nodes[n as usize].taken = false;
        self.taken -= 1;
        let Node { start, last, .. } = self.nodes[n as usize];
        let pred = self
            .index
            .prev(pos)
            .map(|p| self.index.at(p).1)
            .filter(|&p| {
                let node = &self.nodes[p as usize];
                !node.taken && node.last.checked_add(1) == Some(start)
            });
        let succ = succ
            .map(|p| (p, self.index.at(p).1))
            .filter(|&(_, s)| !self.nodes[s as usize].taken);
        // Remove later entries first so earlier positions stay valid.
        let end = match succ {
            Some((spos, s)) => {
                let end = self.nodes[s as usize].last;
                self.unlink(s);
                self.index.remove_at(spos);
                self.spare.push(s);
                end
            }
            None => last,
        };
        match pred {
            Some(p) => {
                self.index.remove_at(pos);
                self.spare.push(n);
                let ps = self.nodes[p as usize].start;
                self.resize(p, ps, end);
            }
            None => {
                self.nodes[n as usize].last = end;
                self.link(n);
            }
        }
    }

    /// Where `[.., +size)` aligned to `mask + 1` goes inside node `n`, top-most; if it fits.
    fn place(&self, n: u32, size: u64, mask: u64) -> Option<u64> {
        let node = &self.nodes[n as usize];
        let top = node.last.checked_sub(size - 1)?;
        let data = top & !mask;
        (data >= node.start).then_some(data)
    }

    /// Allocates `size` bytes (rounded up to the default alignment) aligned to `alignment`
    /// (0: the default alignment) and returns the start.
    pub fn allocate(&mut self, size: u64, alignment: u64) -> Result<u64> {
        let size = self.round_size(size)?;
        let mask = if alignment == 0 {
            self.default_mask
        } else {
            check_align("range allocator alignment", alignment)? - 1
        };
        // A block of at least `size + mask` bytes holds an aligned placement wherever it is;
        // blocks of the default alignment's granules need only `size`.
        let sure = if mask <= self.default_mask {
            Some(size)
        } else {
            size.checked_add(mask)
        };
        if let Some(c) = sure
            .and_then(ceil_class)
            .and_then(|c| self.classes.first_at_or_above(c))
        {
            let n = self.heads[c];
            if let Some(data) = self.place(n, size, mask) {
                self.carve(n, data, data + (size - 1));
                return Ok(data);
            }
        }
        // Slow path: classes that may hold a fit (from the size's own class up to the sure
        // one), every block checked.
        let lo = floor_class(size);
        let hi = sure.and_then(ceil_class).unwrap_or(CLASSES);
        let mut c = self.classes.first_at_or_above(lo);
        while let Some(class) = c.filter(|&x| x < hi.max(lo + 1)) {
            let mut n = self.heads[class];
            while n != NIL {
                if let Some(data) = self.place(n, size, mask) {
                    self.carve(n, data, data + (size - 1));
                    return Ok(data);
                }
                n = self.nodes[n as usize].next;
            }
            c = self.classes.first_at_or_above(class + 1);
        }
        Err(Error::NoSpace {
            what: WHAT,
            requested: size,
            align: mask + 1,
            free: self.free_bytes,
        })
    }

    /// Allocates exactly `[start, start + size)` (size rounded up to the default alignment).
    /// Fails with [`Error::RangeBusy`] unless the range lies inside one free interval.
    pub fn allocate_range(&mut self, start: u64, size: u64) -> Result<()> {
        let size = self.round_size(size)?;
        let last = start.checked_add(size - 1).ok_or(Error::Overflow {
            what: WHAT,
            start,
            len: size,
        })?;
        match self.index.pred(start).map(|p| self.index.at(p).1) {
            Some(n) if !self.nodes[n as usize].taken && last <= self.nodes[n as usize].last => {
                self.carve(n, start, last);
                Ok(())
            }
            _ => Err(Error::RangeBusy {
                what: WHAT,
                start,
                len: size,
            }),
        }
    }

    /// Frees (or adds) `[start, start + size)` (size rounded up to the default alignment),
    /// merging with free neighbours. A range overlapping free space is
    /// [`Error::DoubleFree`] and changes nothing.
    pub fn deallocate(&mut self, start: u64, size: u64) -> Result<()> {
        let size = self.round_size(size)?;
        let last = start.checked_add(size - 1).ok_or(Error::Overflow {
            what: WHAT,
            start,
            len: size,
        })?;
        if self.free_bytes.checked_add(size).is_none() {
            return Err(Error::Overflow {
                what: "range allocator free count",
                start,
                len: size,
            });
        }
        // One search finds the entry starting right after us (if any) and the last one
        // starting at or before our last byte: the only candidates for merging, and where
        // a walk back for overlaps begins.
        let (succ, below) = self.neighbours(last);
        if let Some(pos) = below {
            let n = self.index.at(pos).1;
            let node = self.nodes[n as usize];
            if node.taken && node.start == start && node.last == last {
                self.revive(pos, n, succ);
                self.free_bytes += size;
                return Ok(());
            }
        }
        // Overlaps: free space is a double free; tombstones of allocated space we free
        // now are dropped (they are only a shortcut). Check everything before changing
        // anything.
        let mut stale = Vec::new();
        let mut at = below;
        while let Some(pos) = at {
            let n = self.index.at(pos).1;
            let node = self.nodes[n as usize];
            if node.last < start {
                break;
            }
            if !node.taken {
                return Err(Error::DoubleFree {
                    what: WHAT,
                    start,
                    len: size,
                });
            }
            stale.push(n);
            at = self.index.prev(pos);
        }
        let (succ, below) = if stale.is_empty() {
            (succ, below)
        } else {
            for n in stale {
                self.index.remove(self.nodes[n as usize].start);
                self.spare.push(n);
                self.taken -= 1;
            }
            self.neighbours(last)
        };
        let succ = succ.filter(|&pos| !self.nodes[self.index.at(pos).1 as usize].taken);
        let merge_pred = below.map(|pos| self.index.at(pos).1).filter(|&p| {
            let node = &self.nodes[p as usize];
            !node.taken && node.last.checked_add(1) == Some(start)
        });
        match (merge_pred, succ) {
            (Some(p), Some(pos)) => {
                let s = self.index.at(pos).1;
                let end = self.nodes[s as usize].last;
                self.remove_node(s);
                let ps = self.nodes[p as usize].start;
                self.resize(p, ps, end);
            }
            (Some(p), None) => {
                let ps = self.nodes[p as usize].start;
                self.resize(p, ps, last);
            }
            (None, Some(pos)) => {
                let s = self.index.at(pos).1;
                let end = self.nodes[s as usize].last;
                // The successor's start moves down into the gap we fill: same order.
                self.index.rekey(pos, start);
                self.resize(s, start, end);
            }
            (None, None) => {
                let n = self.new_node(start, last);
                self.link(n);
                self.index.insert_after(below, start, n);
            }
        }
        self.free_bytes += size;
        Ok(())
    }
}

/// A [`RangeAllocator`] behind a lock (IOKit's `kLocking` option): every method takes
/// `&self` and may be shared between threads.
#[derive(Debug)]
pub struct LockedRangeAllocator {
    inner: spin::Mutex<RangeAllocator>,
}

impl LockedRangeAllocator {
    /// Wraps an allocator.
    pub fn new(inner: RangeAllocator) -> Self {
        LockedRangeAllocator {
            inner: spin::Mutex::new(inner),
        }
    }

    /// See [`RangeAllocator::allocate`].
    pub fn allocate(&self, size: u64, alignment: u64) -> Result<u64> {
        self.inner.lock().allocate(size, alignment)
    }

    /// See [`RangeAllocator::allocate_range`].
    pub fn allocate_range(&self, start: u64, size: u64) -> Result<()> {
        self.inner.lock().allocate_range(start, size)
    }

    /// See [`RangeAllocator::deallocate`].
    pub fn deallocate(&self, start: u64, size: u64) -> Result<()> {
        self.inner.lock().deallocate(start, size)
    }

    /// See [`RangeAllocator::free_count`].
    pub fn free_count(&self) -> u64 {
        self.inner.lock().free_count()
    }

    /// See [`RangeAllocator::fragment_count`].
    pub fn fragment_count(&self) -> usize {
        self.inner.lock().fragment_count()
    }

    /// Runs `f` with the allocator locked.
    pub fn with<R>(&self, f: impl FnOnce(&mut RangeAllocator) -> R) -> R {
        f(&mut self.inner.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iokit_with_range_rounds_to_default_alignment() {
        let r = RangeAllocator::with_end_of_range(0x1000, 0x1000).unwrap();
        // [0, 0x1000] is 0x1001 bytes, rounded up to 0x2000 as IOKit does.
        assert_eq!(r.free_count(), 0x2000);
        assert_eq!(
            RangeAllocator::with_end_of_range(0, 1)
                .unwrap()
                .free_count(),
            0
        );
    }

    #[test]
    fn placement_alignment_and_merge() {
        let mut r = RangeAllocator::new(0, 0x10000, 0x100).unwrap();
        let a = r.allocate(1, 0).unwrap();
        assert_eq!(a, 0xFF00, "carved from the top of the block");
        let b = r.allocate(0x100, 0x1000).unwrap();
        assert_eq!(b % 0x1000, 0);
        assert_eq!(r.free_count(), 0x10000 - 0x200);
        r.deallocate(a, 0x100).unwrap();
        r.deallocate(b, 0x100).unwrap();
        assert_eq!(r.fragment_count(), 1);
        assert_eq!(r.free_count(), 0x10000);
    }

    #[test]
    fn blocks_handed_out_whole_come_back_cheaply_and_correctly() {
        let mut r = RangeAllocator::empty(0x1000).unwrap();
        r.deallocate(0x1_0000, 0x1000).unwrap();
        r.deallocate(0x3_0000, 0x1000).unwrap();
        let a = r.allocate(0x1000, 0).unwrap(); // exact fit: a tombstone now
        assert_eq!(r.fragment_count(), 1);
        assert!(matches!(
            r.allocate_range(a, 0x1000),
            Err(Error::RangeBusy { .. })
        ));
        r.deallocate(a, 0x1000).unwrap(); // revived
        assert_eq!(r.fragment_count(), 2);
        assert!(matches!(
            r.deallocate(a, 0x1000),
            Err(Error::DoubleFree { .. })
        ));
        // A revived block merges with free neighbours on both sides.
        let mut r = RangeAllocator::new(0, 0x3000, 0x1000).unwrap();
        r.allocate_range(0x1000, 0x1000).unwrap();
        let whole = r.allocate(0x1000, 0).unwrap();
        assert!(whole == 0 || whole == 0x2000);
        r.deallocate(0x1000, 0x1000).unwrap();
        r.deallocate(whole, 0x1000).unwrap();
        assert_eq!(r.fragments().collect::<Vec<_>>(), [(0, 0x2fff)]);
        // Freeing part of a whole-handed-out block drops the shortcut and stays exact.
        let mut r = RangeAllocator::empty(0x1000).unwrap();
        r.deallocate(0x8000, 0x4000).unwrap();
        let b = r.allocate(0x4000, 0).unwrap();
        r.deallocate(b + 0x1000, 0x1000).unwrap();
        assert_eq!(r.free_count(), 0x1000);
        assert_eq!(r.fragment_count(), 1);
        r.deallocate(b, 0x1000).unwrap();
        r.deallocate(b + 0x2000, 0x2000).unwrap();
        assert_eq!(r.fragments().collect::<Vec<_>>(), [(0x8000, 0xbfff)]);
    }

    #[test]
    fn a_tight_fit_is_found_by_the_slow_path() {
        // Two free blocks of exactly 0x300; a request of 0x300 has no "sure" class.
        let mut r = RangeAllocator::empty(0x100).unwrap();
        r.deallocate(0x1000, 0x300).unwrap();
        r.deallocate(0x2000, 0x300).unwrap();
        let a = r.allocate(0x300, 0).unwrap();
        let b = r.allocate(0x300, 0).unwrap();
        assert_ne!(a, b);
        assert!(matches!(r.allocate(0x100, 0), Err(Error::NoSpace { .. })));
        // Aligned: only one placement in [0x1000, 0x1300) is 0x200-aligned... 0x1000 and 0x1200.
        r.deallocate(0x1000, 0x300).unwrap();
        assert_eq!(r.allocate(0x100, 0x800).unwrap(), 0x1000);
    }

    #[test]
    fn misuse_is_an_error_that_changes_nothing() {
        let mut r = RangeAllocator::new(0x1000, 0x4000, 0x1000).unwrap();
        let before: alloc_crate::vec::Vec<_> = r.fragments().collect();
        assert!(matches!(
            r.deallocate(0x2000, 0x1000),
            Err(Error::DoubleFree { .. })
        ));
        assert!(matches!(r.allocate(0, 0), Err(Error::ZeroSize { .. })));
        assert!(matches!(
            r.allocate(0x1000, 3),
            Err(Error::BadAlignment { .. })
        ));
        assert!(matches!(r.allocate(0x5000, 0), Err(Error::NoSpace { .. })));
        assert!(matches!(
            r.allocate_range(0, 0x1000),
            Err(Error::RangeBusy { .. })
        ));
        assert!(matches!(
            r.allocate_range(u64::MAX - 10, 0x1000),
            Err(Error::Overflow { .. })
        ));
        let after: alloc_crate::vec::Vec<_> = r.fragments().collect();
        assert_eq!(before, after);
    }

    #[test]
    fn top_of_space() {
        let mut r = RangeAllocator::empty(1).unwrap();
        r.deallocate(u64::MAX - 0xfff, 0x1000).unwrap();
        assert_eq!(r.allocate(0x1000, 0x1000).unwrap(), u64::MAX - 0xfff);
        assert_eq!(r.free_count(), 0);
        r.deallocate(u64::MAX - 0xfff, 0x1000).unwrap();
        assert_eq!(r.fragments().next(), Some((u64::MAX - 0xfff, u64::MAX)));
    }
}
