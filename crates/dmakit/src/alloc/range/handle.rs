//! Freeing by handle: [`RangeAllocator::allocate_handle`] and
//! [`RangeAllocator::deallocate_handle`], a dmakit addition for hot paths.
//!
//! IOKit's IORangeAllocator frees only by address, `deallocate(start, size)`, and so does
//! [`RangeAllocator::deallocate`]: it finds the allocated block by its start in a hash
//! table, one bucket and then the node, a cache miss each once the table and the nodes
//! outgrow the caches. A [`RangeHandle`] carries the number of the block's node besides its
//! range, so [`deallocate_handle`](RangeAllocator::deallocate_handle) reads the node
//! directly and checks it: it must still be allocated, with exactly the handle's start and
//! size (two compares on the line the free reads anyway).
//!
//! A block allocated for a handle is not put in the hash table at all (its node is marked
//! allocated, [`BARE`](super::BARE)), so that neither its allocation nor its free touches a
//! bucket. Nothing else needs the table: `allocate_range`, `add_range` and frees that are not
//! one whole allocation find blocks by address through the anchors and the address list,
//! and so does a free by address of a handle's block, which misses in the table and takes
//! that O(log n) path instead of the O(1) one. A block cut by such a free goes back to the
//! common rules: whatever part of it stays allocated in another node is in the hash.
//!
//! Both ways of freeing mix freely:
//!
//! * A handle's range may also be freed by address, whole or in part, with
//!   [`deallocate`](RangeAllocator::deallocate); the handle is then stale.
//! * A range from [`allocate`](RangeAllocator::allocate) or
//!   [`allocate_range`](RangeAllocator::allocate_range) has no handle and is freed by
//!   address only.
//! * A stale handle (freed already, by handle or by address; cut by a partial free; or
//!   made by another allocator) is [`Error::StaleHandle`] and changes nothing, never a
//!   panic, as long as its node holds anything else. Nodes are recycled, and a handle
//!   carries no generation: if its node holds, again, an allocation of exactly the same
//!   start and size, that is the same allocation for every purpose, and the handle frees
//!   it, as `deallocate(start, size)` would.

use super::{RangeAllocator, HEAD, WHAT};
use crate::{Error, Result};
use core::num::NonZeroU32;

/// An allocation made by [`RangeAllocator::allocate_handle`]: its range, and the block of
/// the allocator that holds it, for [`RangeAllocator::deallocate_handle`]. Small and
/// `Copy`; keeping it does not keep the range allocated.
///
/// A handle is 16 bytes, and `Option<RangeHandle>` too: a driver keeps one per request in
/// flight, so its size is the size of that table. To fit, it holds its range's size in 32
/// bits, and a handle's range is at most [`MAX_SIZE`](Self::MAX_SIZE), 4 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use = "the range stays allocated until it is freed, by this handle or by address"]
pub struct RangeHandle {
    start: u64,
    /// Never [`HEAD`]: an allocated block.
    node: NonZeroU32,
    /// The size minus one.
    last: u32,
}

impl RangeHandle {
    /// The largest range a handle holds: 4 GiB. [`allocate_handle`](RangeAllocator::allocate_handle)
    /// refuses larger sizes with [`Error::BadArgument`]; [`allocate`](RangeAllocator::allocate)
    /// has no such limit.
    pub const MAX_SIZE: u64 = 1 << 32;

    /// The first address of the range.
    #[inline]
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The size of the range: the size asked for, rounded up to the default alignment.
    #[inline]
    pub fn size(&self) -> u64 {
        u64::from(self.last) + 1
    }

    #[inline]
    fn node(&self) -> u32 {
        self.node.get()
    }
}

impl RangeAllocator {
    /// [`allocate`](Self::allocate), returning a handle that
    /// [`deallocate_handle`](Self::deallocate_handle) frees without a lookup. The same
    /// placement and the same errors, and one more: a size that rounds up past
    /// [`RangeHandle::MAX_SIZE`] (4 GiB) is [`Error::BadArgument`] and changes nothing. Not in
    /// IOKit, whose IORangeAllocator frees by address only; the range may still be freed by
    /// address.
    ///
    /// ```
    /// use dmakit::alloc::RangeAllocator;
    /// use dmakit::Error;
    ///
    /// let mut iova = RangeAllocator::new(0x10_0000, 0x10_0000, 0x1000)?;
    /// let h = iova.allocate_handle(0x1800, 0)?; // rounded up to two pages
    /// assert_eq!((h.size(), h.start() % 0x1000), (0x2000, 0));
    /// assert_eq!(iova.free_count(), 0x10_0000 - 0x2000);
    /// iova.deallocate_handle(h)?;
    /// assert_eq!((iova.free_count(), iova.fragment_count()), (0x10_0000, 1));
    /// // Freed already: refused, and nothing changes.
    /// assert!(matches!(iova.deallocate_handle(h), Err(Error::StaleHandle { .. })));
    ///
    /// // A handle's range may also be freed by address; the handle is then stale.
    /// let h = iova.allocate_handle(0x1000, 0x4000)?;
    /// assert_eq!(h.start() % 0x4000, 0);
    /// iova.deallocate(h.start(), h.size())?;
    /// assert!(matches!(
    ///     iova.deallocate_handle(h),
    ///     Err(Error::StaleHandle { start, len: 0x1000, .. }) if start == h.start()
    /// ));
    /// assert_eq!(iova.free_count(), 0x10_0000);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    #[inline]
    pub fn allocate_handle(&mut self, size: u64, alignment: u64) -> Result<RangeHandle> {
        let (start, node) = self.allocate_node(size, alignment, false)?;
        // An allocated block is never HEAD, and `allocate_node` keeps a handle's block at
        // most `MAX_SIZE` bytes: neither conversion fails.
        let len = self.nodes[node as usize].last - start;
        match (NonZeroU32::new(node), u32::try_from(len)) {
            (Some(node), Ok(last)) => Ok(RangeHandle { start, node, last }),
            _ => Err(Error::Internal {
                what: "range allocator: a handle's block is the list head or above 4 GiB",
            }),
        }
    }

    /// Frees the range of `h`, merging with free neighbours, as
    /// [`deallocate`](Self::deallocate)`(h.start(), h.size())` would, but without looking
    /// the block up by address. O(1).
    ///
    /// The handle's node must still be allocated with exactly the handle's start and size;
    /// otherwise the handle is stale (freed already, by handle or by address; cut by a
    /// partial free; made by another allocator) and the call is [`Error::StaleHandle`],
    /// changing nothing. Nodes are recycled: a node that holds, again, an allocation of
    /// exactly the same start and size is the same allocation, and the handle frees it, as
    /// a free by address would. Also [`Error::Overflow`] when the free count would pass
    /// 2^64 − 1, as for `deallocate`. Not in IOKit.
    ///
    /// ```
    /// use dmakit::alloc::RangeAllocator;
    /// use dmakit::Error;
    ///
    /// let mut slots = RangeAllocator::new(0, 64, 1)?;
    /// let hs: Vec<_> = (0..4).map(|_| slots.allocate_handle(16, 0)).collect::<Result<_, _>>()?;
    /// assert_eq!(slots.free_count(), 0);
    /// slots.deallocate_handle(hs[0])?;
    /// slots.deallocate(hs[2].start(), 16)?; // by address, as IOKit does
    /// slots.deallocate_handle(hs[1])?;      // merges with both neighbours
    /// assert_eq!((slots.free_count(), slots.fragment_count()), (48, 1));
    /// assert!(matches!(slots.deallocate_handle(hs[2]), Err(Error::StaleHandle { .. })));
    /// slots.deallocate_handle(hs[3])?;
    /// assert_eq!(slots.fragments().collect::<Vec<_>>(), [(0, 63)]);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    #[inline]
    pub fn deallocate_handle(&mut self, h: RangeHandle) -> Result<()> {
        if !self.holds(h) {
            return Err(Error::StaleHandle {
                what: WHAT,
                start: h.start,
                len: h.size(),
            });
        }
        let free = self.free_count_after(h.start, h.size())?;
        // A block of a handle is in no hash chain, unless its node has been recycled for an
        // allocation of the same range made another way; then the chain of its start holds it.
        let node = h.node();
        if self.nodes[node as usize].hashed() {
            match self.find(h.start) {
                Some((m, link)) if m == node => self.unchain(node, link),
                _ => {
                    return Err(Error::Internal {
                        what: "range allocator: an allocated block is missing from its hash chain",
                    })
                }
            }
        }
        self.release(node);
        self.free_bytes = free;
        Ok(())
    }

    /// Whether the node of `h` is an allocated block of exactly `h`'s range.
    #[inline]
    fn holds(&self, h: RangeHandle) -> bool {
        h.node() != HEAD
            && self.nodes.get(h.node() as usize).is_some_and(|n| {
                // An allocated block is never empty, so `last - start` cannot wrap.
                n.used() && n.start == h.start && n.last - n.start == u64::from(h.last)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Lcg, EVERY_ORDER};
    use super::*;
    use crate::alloc::Placement;
    use alloc_crate::vec::Vec;

    fn stale(e: Result<()>, h: RangeHandle) {
        assert_eq!(
            e,
            Err(Error::StaleHandle {
                what: WHAT,
                start: h.start,
                len: h.size()
            })
        );
    }

    #[test]
    fn a_handle_free_merges_on_both_sides_in_every_order() {
        for order in EVERY_ORDER {
            let mut r = RangeAllocator::new(0, 0x3000, 0x1000).unwrap();
            let hs: Vec<RangeHandle> = (0..3)
                .map(|_| r.allocate_handle(0x1000, 0).unwrap())
                .collect();
            for k in order {
                r.deallocate_handle(hs[k as usize]).unwrap();
                r.check();
            }
            assert_eq!(r.fragments().collect::<Vec<_>>(), [(0, 0x2fff)]);
            assert_eq!(r.free_count(), 0x3000);
        }
    }

    #[test]
    fn a_double_free_by_handle_is_refused_and_changes_nothing() {
        let mut r = RangeAllocator::new(0x1_0000, 0x1_0000, 0x100).unwrap();
        let keep = r.allocate_handle(0x100, 0).unwrap();
        let h = r.allocate_handle(0x300, 0).unwrap();
        r.deallocate_handle(h).unwrap();
        let before: Vec<_> = r.fragments().collect();
        stale(r.deallocate_handle(h), h);
        assert_eq!(r.fragments().collect::<Vec<_>>(), before);
        assert_eq!(r.free_count(), 0x1_0000 - 0x100);
        r.check();
        r.deallocate_handle(keep).unwrap();
        stale(r.deallocate_handle(keep), keep);
        assert_eq!(r.fragment_count(), 1);
        r.check();
    }

    #[test]
    fn a_handle_whose_node_holds_another_range_is_refused() {
        // The first allocation is a new node at the top of the one free block; freed, it
        // merges down and its node goes spare, to be reused by the next allocation.
        let mut r = RangeAllocator::new(0, 0x1_0000, 0x1000).unwrap();
        let h = r.allocate_handle(0x1000, 0).unwrap();
        r.deallocate_handle(h).unwrap();
        let other = r.allocate_handle(0x2000, 0).unwrap();
        assert_eq!(other.node, h.node, "the node was recycled");
        stale(r.deallocate_handle(h), h);
        assert_eq!(
            r.free_count(),
            0x1_0000 - 0x2000,
            "the other range is untouched"
        );
        r.check();
        // The node now a free block: refused too.
        r.deallocate_handle(other).unwrap();
        let bigger = r.allocate_handle(0x1000, 0x8000).unwrap();
        stale(r.deallocate_handle(other), other);
        r.deallocate_handle(bigger).unwrap();
        r.check();
    }

    #[test]
    fn a_recycled_node_with_the_same_range_is_the_same_allocation() {
        let mut r = RangeAllocator::new(0, 0x1_0000, 0x1000)
            .unwrap()
            .with_placement(Placement::GoodFit);
        let h = r.allocate_handle(0x1000, 0).unwrap();
        r.deallocate(h.start(), h.size()).unwrap();
        let again = r.allocate_handle(0x1000, 0).unwrap();
        assert_eq!(again, h, "same start, size and node");
        r.deallocate_handle(h).unwrap();
        stale(r.deallocate_handle(again), again);
        assert_eq!((r.free_count(), r.fragment_count()), (0x1_0000, 1));
        r.check();
        // Recycled by `allocate`, which puts the block in the hash: the handle takes it out.
        assert_eq!(r.allocate(0x1000, 0).unwrap(), h.start());
        assert!(r.is_allocation(h.start(), 0x1000));
        r.check();
        r.deallocate_handle(h).unwrap();
        assert!(matches!(
            r.deallocate(h.start(), 0x1000),
            Err(Error::DoubleFree { .. })
        ));
        assert_eq!((r.free_count(), r.fragment_count()), (0x1_0000, 1));
        r.check();
    }

    #[test]
    fn address_frees_and_handle_frees_mix() {
        let mut r = RangeAllocator::new(0x4000, 0x10_0000, 0x1000).unwrap();
        let a = r.allocate(0x3000, 0).unwrap(); // no handle: by address only
        let h = r.allocate_handle(0x4000, 0).unwrap();
        let g = r.allocate_handle(0x2000, 0).unwrap();
        // Part of h by address: the rest stays allocated, and h is stale.
        r.deallocate(h.start() + 0x1000, 0x1000).unwrap();
        stale(r.deallocate_handle(h), h);
        r.check();
        r.deallocate(h.start(), 0x1000).unwrap();
        r.deallocate(h.start() + 0x2000, 0x2000).unwrap();
        // The whole of g by address: g is stale.
        r.deallocate(g.start(), g.size()).unwrap();
        stale(r.deallocate_handle(g), g);
        r.deallocate(a, 0x3000).unwrap();
        assert_eq!((r.free_count(), r.fragment_count()), (0x10_0000, 1));
        r.check();
    }

    #[test]
    fn a_handle_from_another_allocator_is_refused() {
        let mut big = RangeAllocator::new(0, 0x100_0000, 0x1000).unwrap();
        let hs: Vec<RangeHandle> = (0..64)
            .map(|_| big.allocate_handle(0x1000, 0).unwrap())
            .collect();
        let mut small = RangeAllocator::new(0, 0x4000, 0x1000).unwrap();
        let mine = small.allocate_handle(0x1000, 0).unwrap();
        for &h in &hs {
            if h != mine {
                stale(small.deallocate_handle(h), h);
            }
        }
        assert_eq!(small.free_count(), 0x3000);
        small.check();
        for h in hs {
            big.deallocate_handle(h).unwrap();
        }
        assert_eq!(big.fragment_count(), 1);
        big.check();
    }

    #[test]
    fn a_handle_and_an_optional_handle_are_16_bytes() {
        assert_eq!(core::mem::size_of::<RangeHandle>(), 16);
        assert_eq!(core::mem::size_of::<Option<RangeHandle>>(), 16);
    }

    #[test]
    fn a_handle_holds_up_to_4_gib_and_a_larger_request_changes_nothing() {
        let mut r = RangeAllocator::new(0, 1 << 40, 0x1000).unwrap();
        let h = r.allocate_handle(RangeHandle::MAX_SIZE, 0).unwrap();
        assert_eq!(h.size(), 1 << 32);
        // Rounded up to the default alignment past the limit: refused before anything moves.
        for size in [RangeHandle::MAX_SIZE + 1, 1 << 33, u64::MAX - 0x2000] {
            assert_eq!(
                r.allocate_handle(size, 0),
                Err(Error::BadArgument {
                    what: "range allocator: a handle's range is at most 4 GiB (allocate has no such limit)",
                    value: (size + 0xfff) & !0xfff,
                })
            );
        }
        assert_eq!(r.free_count(), (1 << 40) - (1 << 32));
        r.check();
        // `allocate` has no such limit.
        let big = r.allocate(1 << 33, 0).unwrap();
        r.deallocate(big, 1 << 33).unwrap();
        r.deallocate_handle(h).unwrap();
        assert_eq!((r.free_count(), r.fragment_count()), (1 << 40, 1));
        r.check();
    }

    #[test]
    fn a_handle_free_past_the_free_count_overflows_and_changes_nothing() {
        // The whole 2^64 space owned, one byte of it allocated: freeing it would make the
        // free count 2^64.
        let mut r = RangeAllocator::empty(1)
            .unwrap()
            .with_placement(Placement::GoodFit);
        r.deallocate(0, u64::MAX).unwrap();
        let h = r.allocate_handle(1, 0).unwrap();
        assert_eq!(h.start(), u64::MAX - 1);
        r.deallocate(u64::MAX, 1).unwrap();
        assert!(matches!(
            r.deallocate_handle(h),
            Err(Error::Overflow { len: 1, .. })
        ));
        assert_eq!(r.free_count(), u64::MAX);
        r.check();
    }

    #[test]
    fn the_structure_stays_consistent_with_handles_and_addresses() {
        let (seeds, steps) = if cfg!(miri) { (2, 100) } else { (30, 600) };
        for seed in 0..seeds {
            let mut rng = Lcg(seed ^ 0xA5A5);
            let g = 1 << rng.below(4);
            let mut r = RangeAllocator::new(0x10_0000, 0x4000 * g, g).unwrap();
            let mut live: Vec<(u64, u64, Option<RangeHandle>)> = Vec::new();
            let mut old: Vec<RangeHandle> = Vec::new();
            for _ in 0..steps {
                match rng.below(10) {
                    0..=2 => {
                        let size = (1 + rng.below(40)) * g;
                        let align = if rng.below(3) == 0 {
                            1 << rng.below(12)
                        } else {
                            0
                        };
                        if let Ok(h) = r.allocate_handle(size, align) {
                            assert_eq!(h.size(), size);
                            live.push((h.start(), size, Some(h)));
                        }
                    }
                    3 => {
                        let size = (1 + rng.below(8)) * g;
                        if let Ok(a) = r.allocate(size, 0) {
                            live.push((a, size, None));
                        }
                    }
                    4..=7 if !live.is_empty() => {
                        let (a, size, h) = live.swap_remove(rng.below(live.len() as u64) as usize);
                        match h {
                            Some(h) if rng.below(4) != 0 => r.deallocate_handle(h).unwrap(),
                            _ => r.deallocate(a, size).unwrap(),
                        }
                        old.extend(h);
                    }
                    8 if !old.is_empty() => {
                        // A stale handle: refused, unless its node holds its range again.
                        let h = old[rng.below(old.len() as u64) as usize];
                        let free = r.free_count();
                        match r.deallocate_handle(h) {
                            Ok(()) => {
                                // Its node held exactly its range: freed, whoever made it.
                                assert_eq!(r.free_count(), free + h.size());
                                live.retain(|l| (l.0, l.1) != (h.start(), h.size()));
                            }
                            Err(e) => {
                                stale(Err(e), h);
                                assert_eq!(r.free_count(), free);
                            }
                        }
                    }
                    _ => {
                        // A random free by address: may cut handle allocations.
                        let start = 0x10_0000 + rng.below(0x4000) * g;
                        let size = (1 + rng.below(16)) * g;
                        if r.deallocate(start, size).is_ok() {
                            live.retain(|&(a, l, h)| {
                                let keep = a + l <= start || a >= start + size;
                                if !keep {
                                    old.extend(h);
                                }
                                keep
                            });
                        }
                    }
                }
                r.check();
            }
        }
    }
}
