//! [`RangeAllocator`]: IOKit's IORangeAllocator.
//!
//! Hands out `(size, alignment)` ranges of an abstract numeric space: it owns no memory, only
//! numbers. IO virtual address spaces, PCI BAR windows and descriptor-ring slots are typical
//! spaces. Free space is a set of disjoint, non-adjacent intervals; freeing a range merges it
//! with free neighbours.
//!
//! IOKit semantics kept: sizes are rounded up to the *default* alignment; an explicit
//! alignment of 0 means the default (and an explicit 1 allows placements less aligned than
//! the default, as in IOKit); [`allocate_range`](RangeAllocator::allocate_range) takes a
//! given range only if it lies inside one free interval; freeing is also how space is added
//! (any range that is not free may be freed, whole allocations, parts of them, several at
//! once, or space never seen before); free space and fragment counts are exact.
//!
//! ## How it is fast
//!
//! XNU keeps a sorted array of free intervals and scans it: O(n) per call. dmakit keeps
//! **blocks**: every free interval and every allocated range is one node of a slab
//! (`Vec<Node>`, recycled through a free list, never one heap allocation per block), and the
//! nodes sit in three structures at once:
//!
//! 1. **Address order**, a doubly linked *skip list* over all blocks (free and allocated,
//!    with unmanaged gaps simply not represented). Level 0 links every block to its address
//!    neighbours, so a block that is freed finds the neighbours it may merge with in O(1);
//!    a random quarter of the blocks also sit on level 1, a sixteenth on level 2, and so on,
//!    which makes "which block contains address `x`" an expected O(log n) search
//!    (`allocate_range`, and frees that are not one whole allocation). Because the lists
//!    are doubly linked, a block is inserted next to a known neighbour or removed in O(1)
//!    expected time, without a search.
//! 2. **Size classes** for the free blocks: lists by [size class](super::size_class) (eight
//!    classes per power of two, as in TLSF and the `offset-allocator` crate) with a
//!    two-level bitmap of the non-empty ones, so a free block that surely fits a request is
//!    found with two bit scans.
//! 3. **A hash table from start address to block** for the allocated blocks (open
//!    addressing with linear probing; each 8-byte slot holds a 32-bit hash tag and the node
//!    index, so probes do not touch nodes). It turns the common free, "give back exactly
//!    what `allocate` returned", into one lookup followed by the O(1) merge of step 1,
//!    which is how a free by `(start, size)` (IOKit's interface) keeps up with allocators
//!    whose free takes a handle.
//!
//! An allocation is carved from the **top** of the chosen free block, so the free block
//! keeps its node and, usually, its size class; the allocated range becomes a new node next
//! to it. Per operation: `allocate` is O(1) expected (bit scans, one node insert, one hash
//! insert) when a block of a size class that surely fits exists; `deallocate` of a whole
//! allocation is O(1) expected; `allocate_range` and other frees are O(log n) expected, plus
//! O(k) for the k allocations a free swallows (each of which was made by an earlier call).
//! Only when no block of a class that surely fits exists does `allocate` scan the few
//! classes that may still hold a tight fit, block by block, so that it fails only when no
//! fitting range exists at all.
//!
//! ## Divergences from IOKit
//!
//! * **Placement is good fit, not first fit.** IOKit returns the lowest address that fits;
//!   dmakit returns the top of a block from the smallest size class that surely fits (and
//!   only when no such class has a block, scans the classes that may hold a fit). First fit
//!   needs a search by address for every allocation (O(log n) at best with an augmented
//!   tree, O(n) in XNU); segregated fit finds a block in O(1), which is what lets dmakit
//!   match `offset-allocator`'s speed. Callers that need a particular address use
//!   `allocate_range`; any power-of-two alignment is honoured.
//! * A free that overlaps free space is [`Error::DoubleFree`] and changes nothing (IOKit
//!   silently corrupts its list); a size of zero is [`Error::ZeroSize`]; a non-power-of-two
//!   alignment is [`Error::BadAlignment`] (IOKIT-SEMANTICS Q11: fix). There is no fragment
//!   capacity to exhaust (IOKit's increment-0 overflow, Q11), so none is exposed.
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

use super::size_class::{ceil_class, floor_class, ClassMap, CLASSES};
use crate::{Error, Result};
use alloc_crate::vec::Vec;

const WHAT: &str = "range allocator";
/// "No node" in every link.
const NIL: u32 = u32::MAX;
/// Node 0 is the sentinel of the address lists: it is "allocated" (so nothing merges with
/// it), never in the hash table, and both the first and the last block link to it.
const HEAD: u32 = 0;
/// Skip-list levels; with one block in four promoted per level, 16 levels serve 4^16
/// blocks before searches slow down.
const LEVELS: usize = 16;
/// Links per tower (levels 1 and up; level 0 lives in the node).
const TOWER: usize = LEVELS - 1;
/// Node indices are `u32` with [`NIL`] reserved; two more are kept for one call's splits.
const MAX_NODES: usize = NIL as usize - 2;

/// The links of one node on one skip-list level above 0.
#[derive(Clone, Copy, Debug)]
struct Link {
    prev: u32,
    next: u32,
}

/// One block `[start, last]`: free (then linked in its size class's list) or allocated
/// (then in the hash table).
#[derive(Clone, Copy, Debug)]
struct Node {
    start: u64,
    last: u64,
    /// Address neighbours (skip-list level 0), through [`HEAD`] at both ends.
    prev: u32,
    next: u32,
    /// Size-class list (free blocks only).
    bin_prev: u32,
    bin_next: u32,
    /// Where levels 1.. of this node live in `links` (in units of [`TOWER`]), or [`NIL`]
    /// when `height == 1`.
    tower: u32,
    class: u16,
    height: u8,
    used: bool,
}

impl Node {
    /// Length, saturated at `u64::MAX` (the whole 2^64 space cannot be added anyway).
    #[inline]
    fn len(&self) -> u64 {
        (self.last - self.start).saturating_add(1)
    }
}

/// Slots of [`StartMap`]: `tag << 32 | node`; empty slots hold `EMPTY` (node [`NIL`]).
const EMPTY: u64 = u64::MAX;

/// An open-addressing hash table from the start address of an allocated block to its node.
///
/// The key is not stored: a slot holds the top 32 bits of the key's hash (the *tag*, from
/// which the home slot is also derived) and the node index; a probe compares tags and only
/// on a match reads the node's start. Deletion shifts the following entries back (no
/// tombstones), so lookups stay short at any age.
#[derive(Clone, Debug)]
struct StartMap {
    slots: Vec<u64>,
    bits: u32,
    len: usize,
}

impl StartMap {
    fn new() -> Self {
        StartMap {
            slots: alloc_crate::vec![EMPTY; 16],
            bits: 4,
            len: 0,
        }
    }

    /// 32 well-mixed bits of `key` (high bits folded in before the Fibonacci multiply, so
    /// keys that differ only far up still spread).
    #[inline]
    fn tag(key: u64) -> u32 {
        ((key ^ (key >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
    }

    #[inline]
    fn home(&self, tag: u32) -> usize {
        (tag >> (32 - self.bits)) as usize
    }

    /// The slot and node of the block starting at `key`.
    #[inline]
    fn find(&self, nodes: &[Node], key: u64) -> Option<(usize, u32)> {
        let tag = Self::tag(key);
        let mask = self.slots.len() - 1;
        let mut i = self.home(tag);
        loop {
            let v = self.slots[i];
            if v == EMPTY {
                return None;
            }
            if (v >> 32) as u32 == tag && nodes[v as u32 as usize].start == key {
                return Some((i, v as u32));
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `node`, whose start is `key` and which must not be present yet.
    #[inline]
    fn insert(&mut self, key: u64, node: u32) {
        if (self.len + 1) * 2 > self.slots.len() && self.bits < 32 {
            self.grow();
        }
        let tag = Self::tag(key);
        self.put(tag, node);
        self.len += 1;
    }

    #[inline]
    fn put(&mut self, tag: u32, node: u32) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(tag);
        while self.slots[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = (tag as u64) << 32 | node as u64;
    }

    fn grow(&mut self) {
        let old = core::mem::replace(
            &mut self.slots,
            alloc_crate::vec![EMPTY; 1 << (self.bits + 1)],
        );
        self.bits += 1;
        for v in old.into_iter().filter(|&v| v != EMPTY) {
            self.put((v >> 32) as u32, v as u32);
        }
    }

    /// Empties slot `i` and shifts the entries of its probe run back.
    #[inline]
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.slots.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let v = self.slots[j];
            if v == EMPTY {
                break;
            }
            let home = self.home((v >> 32) as u32);
            // The entry at j may move to i unless its home lies cyclically in (i, j].
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = v;
                i = j;
            }
        }
        self.slots[i] = EMPTY;
        self.len -= 1;
    }

    fn remove(&mut self, nodes: &[Node], key: u64) {
        if let Some((i, _)) = self.find(nodes, key) {
            self.remove_at(i);
        }
    }
}

/// An allocator of ranges of a `u64` space.
///
/// # Invariants
///
/// * Blocks (every node but [`HEAD`]) are disjoint and sit on level 0 of the skip list in
///   address order; a node of height `h` also sits on levels `1..h`, each in address order.
/// * Free blocks are never adjacent to each other; each is in exactly the list of its
///   `floor_class(len)`, and `classes` marks exactly the non-empty lists.
/// * Allocated blocks cover exactly the space handed out (by `allocate`/`allocate_range`
///   and not given back) and are exactly the entries of `starts`.
/// * `free_bytes` and `fragments` are the total length and the number of free blocks.
#[derive(Clone, Debug)]
pub struct RangeAllocator {
    nodes: Vec<Node>,
    links: Vec<Link>,
    spare_nodes: Vec<u32>,
    spare_towers: Vec<u32>,
    heads: Vec<u32>,
    classes: ClassMap,
    starts: StartMap,
    /// Levels in use (the highest height of any node so far).
    top: usize,
    /// xorshift64 state for node heights.
    rng: u64,
    default_mask: u64,
    free_bytes: u64,
    fragments: usize,
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
        let head = Node {
            start: 0,
            last: 0,
            prev: HEAD,
            next: HEAD,
            bin_prev: NIL,
            bin_next: NIL,
            tower: 0,
            class: 0,
            height: LEVELS as u8,
            used: true,
        };
        Ok(RangeAllocator {
            nodes: alloc_crate::vec![head],
            links: alloc_crate::vec![Link { prev: HEAD, next: HEAD }; TOWER],
            spare_nodes: Vec::new(),
            spare_towers: Vec::new(),
            heads: alloc_crate::vec![NIL; CLASSES],
            classes: ClassMap::default(),
            starts: StartMap::new(),
            top: 1,
            rng: 0x2545_F491_4F6C_DD1D,
            default_mask: a - 1,
            free_bytes: 0,
            fragments: 0,
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
        self.fragments
    }

    /// The free intervals as `(start, inclusive end)`, in address order (IOKit's
    /// `serialize`).
    pub fn fragments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut n = self.nodes[HEAD as usize].next;
        core::iter::from_fn(move || {
            while n != HEAD {
                let node = &self.nodes[n as usize];
                n = node.next;
                if !node.used {
                    return Some((node.start, node.last));
                }
            }
            None
        })
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

    /// Fails (changing nothing) when a call could need more nodes than `u32` indices allow.
    #[inline]
    fn room(&self, requested: u64) -> Result<()> {
        if self.nodes.len() >= MAX_NODES && self.spare_nodes.len() < 2 {
            return Err(Error::NoMemory {
                what: "range allocator nodes",
                requested,
                available: 0,
            });
        }
        Ok(())
    }

    // --- nodes and the skip list ------------------------------------------------------

    #[inline]
    fn random_height(&mut self) -> u8 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        // P(height > h) = 4^-h.
        (1 + (x.trailing_zeros() / 2) as usize).min(LEVELS) as u8
    }

    fn new_node(&mut self, start: u64, last: u64, used: bool) -> u32 {
        let height = self.random_height();
        let tower = if height > 1 {
            match self.spare_towers.pop() {
                Some(t) => t,
                None => {
                    let t = (self.links.len() / TOWER) as u32;
                    self.links.extend(core::iter::repeat_n(
                        Link {
                            prev: NIL,
                            next: NIL,
                        },
                        TOWER,
                    ));
                    t
                }
            }
        } else {
            NIL
        };
        let node = Node {
            start,
            last,
            prev: NIL,
            next: NIL,
            bin_prev: NIL,
            bin_next: NIL,
            tower,
            class: 0,
            height,
            used,
        };
        match self.spare_nodes.pop() {
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

    #[inline]
    fn link(&self, n: u32, level: usize) -> Link {
        let node = &self.nodes[n as usize];
        if level == 0 {
            Link {
                prev: node.prev,
                next: node.next,
            }
        } else {
            self.links[node.tower as usize * TOWER + level - 1]
        }
    }

    #[inline]
    fn set_next(&mut self, n: u32, level: usize, to: u32) {
        if level == 0 {
            self.nodes[n as usize].next = to;
        } else {
            let t = self.nodes[n as usize].tower as usize;
            self.links[t * TOWER + level - 1].next = to;
        }
    }

    #[inline]
    fn set_prev(&mut self, n: u32, level: usize, to: u32) {
        if level == 0 {
            self.nodes[n as usize].prev = to;
        } else {
            let t = self.nodes[n as usize].tower as usize;
            self.links[t * TOWER + level - 1].prev = to;
        }
    }

    /// Puts node `a` right after node `p` in address order (on every level of `a`).
    fn link_after(&mut self, p: u32, a: u32) {
        let n = self.nodes[p as usize].next;
        {
            let node = &mut self.nodes[a as usize];
            node.prev = p;
            node.next = n;
        }
        self.nodes[p as usize].next = a;
        self.nodes[n as usize].prev = a;
        let height = self.nodes[a as usize].height as usize;
        // On each higher level, the predecessor is the nearest node before `a` that is tall
        // enough: walk back along the level below (expected four steps per level).
        let mut q = p;
        for level in 1..height {
            while self.nodes[q as usize].height as usize <= level {
                q = self.link(q, level - 1).prev;
            }
            let n = self.link(q, level).next;
            self.links[self.nodes[a as usize].tower as usize * TOWER + level - 1] =
                Link { prev: q, next: n };
            self.set_next(q, level, a);
            self.set_prev(n, level, a);
        }
        self.top = self.top.max(height);
    }

    /// Takes node `a` out of the address lists and recycles it.
    fn drop_node(&mut self, a: u32) {
        let height = self.nodes[a as usize].height as usize;
        for level in 0..height {
            let Link { prev, next } = self.link(a, level);
            self.set_next(prev, level, next);
            self.set_prev(next, level, prev);
        }
        let tower = self.nodes[a as usize].tower;
        if tower != NIL {
            self.spare_towers.push(tower);
        }
        self.spare_nodes.push(a);
    }

    /// The block with the greatest start `≤ x`, or [`HEAD`] if there is none.
    fn pred(&self, x: u64) -> u32 {
        let mut cur = HEAD;
        for level in (0..self.top).rev() {
            loop {
                let n = self.link(cur, level).next;
                if n != HEAD && self.nodes[n as usize].start <= x {
                    cur = n;
                } else {
                    break;
                }
            }
        }
        cur
    }

    // --- size-class lists -------------------------------------------------------------

    #[inline]
    fn bin_link(&mut self, n: u32) {
        let c = floor_class(self.nodes[n as usize].len());
        let head = self.heads[c];
        let node = &mut self.nodes[n as usize];
        node.class = c as u16;
        node.bin_prev = NIL;
        node.bin_next = head;
        if head != NIL {
            self.nodes[head as usize].bin_prev = n;
        } else {
            self.classes.set(c);
        }
        self.heads[c] = n;
    }

    #[inline]
    fn bin_unlink(&mut self, n: u32) {
        let Node {
            bin_prev,
            bin_next,
            class,
            ..
        } = self.nodes[n as usize];
        if bin_prev != NIL {
            self.nodes[bin_prev as usize].bin_next = bin_next;
        } else {
            self.heads[class as usize] = bin_next;
            if bin_next == NIL {
                self.classes.clear(class as usize);
            }
        }
        if bin_next != NIL {
            self.nodes[bin_next as usize].bin_prev = bin_prev;
        }
    }

    /// Moves free node `n` to the list of its (possibly changed) length.
    #[inline]
    fn bin_update(&mut self, n: u32) {
        let node = &self.nodes[n as usize];
        if floor_class(node.len()) != node.class as usize {
            self.bin_unlink(n);
            self.bin_link(n);
        }
    }

    // --- carving and freeing ----------------------------------------------------------

    /// Takes `[data, end]` out of free node `f` (which contains it) as an allocated block.
    fn carve(&mut self, f: u32, data: u64, end: u64) {
        let Node { start, last, .. } = self.nodes[f as usize];
        self.free_bytes -= end - data + 1;
        let a = match (data > start, end < last) {
            (false, false) => {
                // Handed out whole: the node itself becomes the allocation.
                self.bin_unlink(f);
                self.nodes[f as usize].used = true;
                self.fragments -= 1;
                f
            }
            (true, false) => {
                let a = self.new_node(data, end, true);
                self.link_after(f, a);
                self.nodes[f as usize].last = data - 1;
                self.bin_update(f);
                a
            }
            (false, true) => {
                let a = self.new_node(data, end, true);
                self.link_after(self.nodes[f as usize].prev, a);
                self.nodes[f as usize].start = end + 1;
                self.bin_update(f);
                a
            }
            (true, true) => {
                let a = self.new_node(data, end, true);
                self.link_after(f, a);
                let t = self.new_node(end + 1, last, false);
                self.link_after(a, t);
                self.bin_link(t);
                self.fragments += 1;
                self.nodes[f as usize].last = data - 1;
                self.bin_update(f);
                a
            }
        };
        self.starts.insert(data, a);
    }

    /// Whether `p` is a free block ending right before `s`.
    #[inline]
    fn free_before(&self, p: u32, s: u64) -> bool {
        let node = &self.nodes[p as usize];
        // `node.last < s` for every block before `s`, so `+ 1` cannot overflow.
        !node.used && node.last + 1 == s
    }

    /// Whether `n` is a free block starting right after `l`.
    #[inline]
    fn free_after(&self, n: u32, l: u64) -> bool {
        let node = &self.nodes[n as usize];
        // `l < node.start` for every block after `l`, so `+ 1` cannot overflow.
        !node.used && node.start == l + 1
    }

    /// Frees allocated block `a` (already out of `starts`), merging with free neighbours.
    fn release(&mut self, a: u32) {
        let Node {
            start: s,
            last: l,
            prev: p,
            next: n,
            ..
        } = self.nodes[a as usize];
        match (self.free_before(p, s), self.free_after(n, l)) {
            (true, true) => {
                self.nodes[p as usize].last = self.nodes[n as usize].last;
                self.drop_node(a);
                self.bin_unlink(n);
                self.drop_node(n);
                self.fragments -= 1;
                self.bin_update(p);
            }
            (true, false) => {
                self.nodes[p as usize].last = l;
                self.drop_node(a);
                self.bin_update(p);
            }
            (false, true) => {
                // The successor grows down over `a`: its place in address order is kept.
                self.nodes[n as usize].start = s;
                self.drop_node(a);
                self.bin_update(n);
            }
            (false, false) => {
                self.nodes[a as usize].used = false;
                self.bin_link(a);
                self.fragments += 1;
            }
        }
    }

    /// Makes `[s, l]`, where no block is, free; `p` is the block right before it (or
    /// [`HEAD`]).
    fn insert_free(&mut self, p: u32, s: u64, l: u64) {
        let n = self.nodes[p as usize].next;
        match (self.free_before(p, s), self.free_after(n, l)) {
            (true, true) => {
                self.nodes[p as usize].last = self.nodes[n as usize].last;
                self.bin_unlink(n);
                self.drop_node(n);
                self.fragments -= 1;
                self.bin_update(p);
            }
            (true, false) => {
                self.nodes[p as usize].last = l;
                self.bin_update(p);
            }
            (false, true) => {
                self.nodes[n as usize].start = s;
                self.bin_update(n);
            }
            (false, false) => {
                let a = self.new_node(s, l, false);
                self.link_after(p, a);
                self.bin_link(a);
                self.fragments += 1;
            }
        }
    }

    /// Frees `[s, l]` in general: any mix of allocated blocks (whole or in part) and space
    /// no block covers. Overlapping free space is a double free, detected before any change.
    fn free_general(&mut self, s: u64, l: u64) -> Result<()> {
        // Blocks overlapping [s, l] are the ones from pred(l) back while they reach s.
        let mut before = self.pred(l);
        while before != HEAD && self.nodes[before as usize].last >= s {
            if !self.nodes[before as usize].used {
                return Err(Error::DoubleFree {
                    what: WHAT,
                    start: s,
                    len: l - s + 1,
                });
            }
            before = self.nodes[before as usize].prev;
        }
        // Cut [s, l] out of the allocated blocks it overlaps.
        let mut z = self.nodes[before as usize].next;
        while z != HEAD && self.nodes[z as usize].start <= l {
            let Node {
                start: zs,
                last: zl,
                next,
                ..
            } = self.nodes[z as usize];
            if zs < s {
                // Keeps its head [zs, s - 1] (and its start, so its hash entry).
                if zl > l {
                    let r = self.new_node(l + 1, zl, true);
                    self.link_after(z, r);
                    self.starts.insert(l + 1, r);
                }
                self.nodes[z as usize].last = s - 1;
                before = z;
                if zl > l {
                    break;
                }
            } else if zl > l {
                // Keeps its tail [l + 1, zl]: a new start, same place in address order.
                self.starts.remove(&self.nodes, zs);
                self.nodes[z as usize].start = l + 1;
                self.starts.insert(l + 1, z);
                break;
            } else {
                self.starts.remove(&self.nodes, zs);
                self.drop_node(z);
            }
            z = next;
        }
        self.insert_free(before, s, l);
        Ok(())
    }

    /// Where `[.., +size)` aligned to `mask + 1` goes inside node `n`, top-most; if it fits.
    #[inline]
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
        self.room(size)?;
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
                n = self.nodes[n as usize].bin_next;
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
        self.room(size)?;
        let n = self.pred(start);
        let node = &self.nodes[n as usize];
        if n != HEAD && !node.used && last <= node.last {
            self.carve(n, start, last);
            Ok(())
        } else {
            Err(Error::RangeBusy {
                what: WHAT,
                start,
                len: size,
            })
        }
    }

    /// Frees (or adds) `[start, start + size)` (size rounded up to the default alignment),
    /// merging with free neighbours. A range overlapping free space is
    /// [`Error::DoubleFree`] and changes nothing.
    ///
    /// Any range that is not free may be given: a whole allocation (the fast, O(1) case),
    /// part of one, several, or space that was never in the allocator.
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
        match self.starts.find(&self.nodes, start) {
            Some((slot, a)) if self.nodes[a as usize].last == last => {
                self.starts.remove_at(slot);
                self.release(a);
            }
            _ => {
                self.room(size)?;
                self.free_general(start, last)?;
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
