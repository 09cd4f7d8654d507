//! How [`RangeAllocator::allocate`] picks among the free ranges that fit: IOKit's first fit
//! (the default) or dmakit's constant-time good fit.

use super::{RangeAllocator, NIL};
use crate::alloc::size_class::floor_class;
use crate::Result;

/// Which free range [`RangeAllocator::allocate`] (and
/// [`allocate_handle`](RangeAllocator::allocate_handle)) takes.
///
/// ```
/// use dmakit::alloc::{Placement, RangeAllocator};
///
/// // IOKit's IORangeAllocator: the lowest address that fits.
/// let mut ring = RangeAllocator::new(0, 0x10_0000, 0x1000)?;
/// assert_eq!(ring.placement(), Placement::FirstFit);
/// assert_eq!(ring.allocate(0x1000, 0)?, 0);
/// assert_eq!(ring.allocate(0x3000, 0x4000)?, 0x4000); // the lowest 16 KiB-aligned fit
/// assert_eq!(ring.allocate(0x1000, 0)?, 0x1000);
///
/// // Constant time, for hot paths such as an IOMMU's address space.
/// let mut iova = RangeAllocator::new(0, 0x10_0000, 0x1000)?.with_placement(Placement::GoodFit);
/// assert_eq!(iova.allocate(0x1000, 0)?, 0xF_F000); // the top of the block
/// # Ok::<(), dmakit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Placement {
    /// IOKit's placement: the lowest address, at the requested alignment, where the range
    /// fits. A search over the free ranges large enough to hold it: O(those ranges) per
    /// allocation, as in IOKit (whose search is O(all free ranges)).
    #[default]
    FirstFit,
    /// The top of a free range of the smallest size class whose ranges all fit: O(1) per
    /// allocation (a scan of the classes that may hold a fit only when none surely does).
    /// Addresses differ from IOKit's; the set of sizes that can be allocated does not.
    GoodFit,
}

impl RangeAllocator {
    /// The same allocator, placing later allocations by `placement`.
    #[must_use]
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// How allocations are placed.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Sets how later allocations are placed (earlier ones stay where they are).
    pub fn set_placement(&mut self, placement: Placement) {
        self.placement = placement;
    }

    /// Where `[.., +size)` aligned to `mask + 1` goes inside node `n`, lowest; if it fits.
    #[inline]
    fn place_low(&self, n: u32, size: u64, mask: u64) -> Option<u64> {
        let node = &self.nodes[n as usize];
        let data = node.start.checked_add(mask)? & !mask;
        let end = data.checked_add(size - 1)?;
        (end <= node.last).then_some(data)
    }

    /// First fit: of every free block that may hold `size` bytes (the classes from the
    /// size's own up), the lowest aligned placement. Blocks are disjoint, so the lowest
    /// placement is in the lowest block that fits: IOKit's answer.
    pub(super) fn allocate_first_fit(
        &mut self,
        size: u64,
        mask: u64,
        hashed: bool,
    ) -> Result<(u64, u32)> {
        let mut best: Option<(u64, u32, usize)> = None;
        let mut c = self.classes.first_at_or_above(floor_class(size));
        while let Some(class) = c {
            let mut n = self.heads[class];
            while n != NIL {
                if let Some(data) = self.place_low(n, size, mask) {
                    if best.is_none_or(|(b, ..)| data < b) {
                        best = Some((data, n, class));
                    }
                }
                n = self.nodes[n as usize].b;
            }
            c = self.classes.first_at_or_above(class + 1);
        }
        let Some((data, n, class)) = best else {
            return Err(self.no_space(size, mask));
        };
        Ok((data, self.carve(n, class, data, data + (size - 1), hashed)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Lcg;
    use super::*;
    use crate::Error;
    use alloc_crate::vec::Vec;

    /// IOKit's algorithm, written plainly: a sorted list of free intervals `[start, last]`,
    /// the first one in address order that holds the aligned range.
    fn xnu_first_fit(free: &[(u64, u64)], size: u64, mask: u64) -> Option<u64> {
        free.iter().find_map(|&(s, l)| {
            let data = s.checked_add(mask)? & !mask;
            (data.checked_add(size - 1)? <= l).then_some(data)
        })
    }

    #[test]
    fn first_fit_takes_the_lowest_aligned_place_as_iokit_does() {
        let mut r = RangeAllocator::empty(0x10).unwrap();
        r.deallocate(0x1000, 0x100).unwrap();
        r.deallocate(0x8000, 0x1000).unwrap();
        assert_eq!(r.allocate(0x10, 0).unwrap(), 0x1000);
        assert_eq!(
            r.allocate(0x100, 0).unwrap(),
            0x8000,
            "the first no longer fits"
        );
        assert_eq!(
            r.allocate(0x20, 0x40).unwrap(),
            0x1040,
            "aligned inside the first"
        );
        assert_eq!(
            r.allocate(1, 1).unwrap(),
            0x1010,
            "rounded to 0x10, then lowest"
        );
        r.check();
    }

    #[test]
    fn first_fit_matches_iokit_on_random_use() {
        let seeds = if cfg!(miri) { 2 } else { 40 };
        for seed in 0..seeds {
            let mut rng = Lcg(seed ^ 0x5EED);
            let g = 1u64 << rng.below(4);
            let mut r = RangeAllocator::new(0x1_0000, 0x400 * g, g).unwrap();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for _ in 0..if cfg!(miri) { 60 } else { 400 } {
                if rng.below(3) > 0 || live.is_empty() {
                    let size = (1 + rng.below(24)) * g;
                    let align = if rng.below(4) == 0 {
                        g << rng.below(4)
                    } else {
                        0
                    };
                    let mask = if align == 0 { g - 1 } else { align - 1 };
                    let free: Vec<(u64, u64)> = r.fragments().collect();
                    let want = xnu_first_fit(&free, size, mask);
                    match r.allocate(size, align) {
                        Ok(a) => {
                            assert_eq!(Some(a), want, "seed {seed}: {size:#x} at {align:#x}");
                            live.push((a, size));
                        }
                        Err(Error::NoSpace { .. }) => assert_eq!(want, None, "seed {seed}"),
                        Err(e) => panic!("seed {seed}: {e}"),
                    }
                } else {
                    let (a, size) = live.swap_remove(rng.below(live.len() as u64) as usize);
                    r.deallocate(a, size).unwrap();
                }
            }
            r.check();
        }
    }
}
