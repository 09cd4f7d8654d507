//! [`IovaPlacement`]: where in its IO address space a device can use a range.
//!
//! A mapper's window is often wider than what one device reaches: a device with 32 address
//! bits behind an IOMMU with a 48-bit space, or a controller whose segments may not cross
//! a 64 KiB boundary. [`Mapper::iovm_alloc_placed`](super::Mapper::iovm_alloc_placed)
//! takes the device's placement so the IO addresses it returns are usable as they are.
//!
//! ```
//! use dmakit::alloc::RangeAllocator;
//! use dmakit::mapper::{allocate_placed, IovaPlacement};
//!
//! // 1 GiB of IO space from 3.5 GiB; the device reaches the first 4 GiB and its segments
//! // may not cross a 64 KiB line.
//! let mut space = RangeAllocator::new(0xE000_0000, 0x4000_0000, 0x1000)?;
//! let place = IovaPlacement::ANY.window(0, 0xFFFF_FFFF).boundary(0x1_0000);
//! let a = allocate_placed(&mut space, 0x8000, &place)?;
//! assert!(place.fits(a, 0x8000));
//! assert!(a + 0x8000 - 1 <= 0xFFFF_FFFF);
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::alloc::range::check_align;
use crate::alloc::RangeAllocator;
use crate::{Error, Result};

/// Where a device can use a range of IO addresses: inside `[min, max]`, starting at a
/// multiple of `align`, and not crossing a multiple of `boundary`.
/// IOKit: `IODMAMapSpecification` (its `alignment` and `numAddressBits`), which IOKit's
/// DMA command hands to `IOMapper::iovmMapMemory`; the floor and the boundary are
/// dmakit's additions, from the device's segment specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IovaPlacement {
    /// Lowest IO address the device reaches.
    pub min: u64,
    /// Highest IO address the device reaches (inclusive).
    pub max: u64,
    /// Alignment of the range's start (a power of two; 0 or 1 for none).
    pub align: u64,
    /// The range may not cross a multiple of this (a power of two; 0 for none).
    pub boundary: u64,
}

impl IovaPlacement {
    /// Anywhere: the whole 64-bit space, no alignment, no boundary.
    pub const ANY: IovaPlacement = IovaPlacement {
        min: 0,
        max: u64::MAX,
        align: 0,
        boundary: 0,
    };

    /// Inside `[min, max]` (inclusive).
    #[must_use]
    pub const fn window(mut self, min: u64, max: u64) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// Starting at a multiple of `align`.
    #[must_use]
    pub const fn alignment(mut self, align: u64) -> Self {
        self.align = align;
        self
    }

    /// Not crossing a multiple of `boundary`.
    #[must_use]
    pub const fn boundary(mut self, boundary: u64) -> Self {
        self.boundary = boundary;
        self
    }

    /// Whether `[start, start + len)` (len ≥ 1) meets every constraint.
    pub fn fits(&self, start: u64, len: u64) -> bool {
        let Some(last) = len.checked_sub(1).and_then(|l| start.checked_add(l)) else {
            return false;
        };
        start >= self.min
            && last <= self.max
            && (self.align <= 1 || start.is_multiple_of(self.align))
            && (self.boundary == 0 || start / self.boundary == last / self.boundary)
    }

    /// Whether every range of `len` bytes inside `[lo, hi]` placed at a multiple of
    /// `natural` (a power of two) fits: the window covers `[lo, hi]`, `natural` is at least
    /// the alignment, and a naturally aligned range never crosses the boundary.
    pub fn always_fits(&self, lo: u64, hi: u64, len: u64, natural: u64) -> bool {
        lo >= self.min
            && hi <= self.max
            && (self.align <= 1 || natural.is_multiple_of(self.align))
            && (self.boundary == 0
                || (natural.is_multiple_of(self.boundary) || self.boundary.is_multiple_of(natural))
                    && len <= natural.min(self.boundary))
    }

    /// The lowest start for `len` bytes inside the free interval `[start, last]` that
    /// fits, if any.
    pub fn lowest_in(&self, start: u64, last: u64, len: u64) -> Option<u64> {
        if len == 0 || (self.boundary != 0 && len > self.boundary) {
            return None;
        }
        let hi = last.min(self.max);
        let mut a = align_up(start.max(self.min), self.align)?;
        if self.boundary != 0 && a / self.boundary != a.checked_add(len - 1)? / self.boundary {
            a = align_up(align_up(a.checked_add(1)?, self.boundary)?, self.align)?;
        }
        (a <= hi && a.checked_add(len - 1)? <= hi).then_some(a)
    }

    /// The error for a range of `len` bytes that could not be placed.
    pub fn refusal(&self, what: &'static str, len: u64) -> Error {
        Error::NoSuitableMemory {
            what,
            requested: len,
            align: self.align.max(1),
            limit: self.max,
            contiguous: true,
        }
    }

    /// `align` and `boundary` are powers of two (or 0 for none; an `align` of 1 is none
    /// too), which the search's mask arithmetic needs: [`Error::BadAlignment`] otherwise.
    pub(crate) fn check(&self) -> Result<()> {
        check_align(
            "IovaPlacement alignment (a power of two; 0 or 1 for none)",
            self.align,
        )?;
        check_align(
            "IovaPlacement boundary (a power of two; 0 for none)",
            self.boundary,
        )?;
        Ok(())
    }
}

impl Default for IovaPlacement {
    fn default() -> Self {
        Self::ANY
    }
}

/// `x` rounded up to a multiple of `align` (a power of two; 0 or 1 for none), if it fits.
fn align_up(x: u64, align: u64) -> Option<u64> {
    if align <= 1 {
        return Some(x);
    }
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// Allocates `len` bytes of `space` where `place` allows, at the lowest such address (a
/// walk over the free intervals: for the ranges a mapper's fast path cannot place). The
/// start is a multiple of the allocator's default alignment too (a mapper's page).
///
/// Errors: `NoSuitableMemory` naming the placement's limit when no free interval has room
/// in the window at the alignment without crossing the boundary; the allocator's own
/// errors (zero size, overflow); `BadAlignment` for an alignment or boundary that is not a
/// power of two.
pub fn allocate_placed(space: &mut RangeAllocator, len: u64, place: &IovaPlacement) -> Result<u64> {
    if len == 0 {
        return Err(Error::ZeroSize {
            what: "allocate_placed",
        });
    }
    place.check()?;
    let place = place.alignment(place.align.max(space.default_alignment()));
    let found = space
        .fragments()
        .find_map(|(start, last)| place.lowest_in(start, last, len));
    let start = found.ok_or(place.refusal(
        "IO address space (no free range inside the device's window, at its alignment, \
         within its boundary)",
        len,
    ))?;
    space.allocate_range(start, len)?;
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_crate::vec::Vec;

    #[test]
    fn a_range_that_would_cross_the_boundary_moves_to_the_next_line() {
        let p = IovaPlacement::ANY.boundary(0x1_0000);
        assert_eq!(p.lowest_in(0xF000, 0x3_FFFF, 0x2000), Some(0x1_0000));
        assert_eq!(p.lowest_in(0xE000, 0x3_FFFF, 0x2000), Some(0xE000));
        assert_eq!(
            p.lowest_in(0, u64::MAX, 0x2_0000),
            None,
            "longer than the boundary"
        );
    }

    #[test]
    fn the_window_and_alignment_bound_the_start() {
        let p = IovaPlacement::ANY
            .window(0x10_0000, 0x1F_FFFF)
            .alignment(0x4000);
        assert_eq!(p.lowest_in(0x1000, 0xFF_FFFF, 0x1000), Some(0x10_0000));
        assert_eq!(p.lowest_in(0x10_1000, 0xFF_FFFF, 0x1000), Some(0x10_4000));
        assert_eq!(p.lowest_in(0x1F_F000, 0xFF_FFFF, 0x2000), None);
        assert_eq!(p.lowest_in(0x20_0000, 0xFF_FFFF, 0x1000), None);
    }

    #[test]
    fn the_top_of_the_space_does_not_overflow() {
        let p = IovaPlacement::ANY.alignment(0x1000);
        assert_eq!(p.lowest_in(u64::MAX - 0xFFE, u64::MAX, 0x1000), None);
        assert_eq!(
            p.lowest_in(u64::MAX - 0xFFF, u64::MAX, 0x1000),
            Some(u64::MAX - 0xFFF)
        );
        assert!(!p.fits(u64::MAX, 2));
        assert!(p.fits(u64::MAX - 0xFFF, 0x1000));
    }

    #[test]
    fn allocations_fit_or_are_refused_with_the_limit() {
        // 256 KiB of space, half of it below 4 GiB.
        let mut space = RangeAllocator::new(0xFFFE_0000, 0x4_0000, 0x1000).unwrap();
        let place = IovaPlacement::ANY.window(0, 0xFFFF_FFFF).boundary(0x8000);
        let mut got = Vec::new();
        while let Ok(a) = allocate_placed(&mut space, 0x3000, &place) {
            assert!(place.fits(a, 0x3000), "{a:#x}");
            got.push(a);
        }
        // 128 KiB below 4 GiB in 32 KiB lines, two 12 KiB ranges a line.
        assert_eq!(got.len(), 4 * 2);
        let e = allocate_placed(&mut space, 0x3000, &place).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NoSuitableMemory {
                    limit: 0xFFFF_FFFF,
                    ..
                }
            ),
            "{e}"
        );
        for a in got {
            space.deallocate(a, 0x3000).unwrap();
        }
        assert_eq!(space.free_count(), 0x4_0000);
    }

    #[test]
    fn an_unaligned_window_still_gives_page_aligned_ranges() {
        let mut space = RangeAllocator::new(0x10_0000, 0x10_0000, 0x1000).unwrap();
        let place = IovaPlacement::ANY.window(0x10_0AA4, u64::MAX);
        let a = allocate_placed(&mut space, 0x2000, &place).unwrap();
        assert_eq!(a, 0x10_1000);
    }

    #[test]
    fn always_fits_only_when_every_natural_placement_does() {
        let p = IovaPlacement::ANY.window(0, 0xFFFF_FFFF).boundary(0x1_0000);
        assert!(p.always_fits(0x1000_0000, 0x1FFF_FFFF, 0x3000, 0x4000));
        assert!(!p.always_fits(0x1000_0000, 0x1_0FFF_FFFF, 0x3000, 0x4000));
        assert!(!p.always_fits(0, 0xFFFF, 0x2_0000, 0x2_0000));
        let aligned = IovaPlacement::ANY.alignment(0x8000);
        assert!(!aligned.always_fits(0, u64::MAX, 0x1000, 0x1000));
        assert!(aligned.always_fits(0, u64::MAX, 0x5000, 0x8000));
    }
}
