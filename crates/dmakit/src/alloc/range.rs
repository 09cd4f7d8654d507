//! [`RangeAllocator`]: IOKit's IORangeAllocator.
//!
//! Hands out `(size, alignment)` ranges of an abstract numeric space: it owns no memory, only
//! numbers. IO virtual address spaces, PCI BAR windows and descriptor-ring slots are typical
//! spaces. Free space is a set of disjoint, non-adjacent intervals; freeing a range merges it
//! with free neighbours.
//!
//! IOKit semantics kept: sizes are rounded up to the *default* alignment; an explicit
//! alignment of 0 means the default; allocation is first fit (lowest suitable address);
//! [`allocate_range`](RangeAllocator::allocate_range) takes a given range only if it lies
//! inside one free interval; freeing is also how space is added.
//!
//! Divergences (IOKIT-SEMANTICS Q11 *fix*): a free that overlaps free space is
//! [`Error::DoubleFree`] and changes nothing (IOKit silently corrupts its list); a size of
//! zero is [`Error::ZeroSize`]; a non-power-of-two alignment is [`Error::BadAlignment`].
//!
//! ```
//! use dmakit::alloc::RangeAllocator;
//!
//! let mut iova = RangeAllocator::new(0x1000, 0xF000, 0x1000)?; // [0x1000, 0x10000)
//! iova.allocate_range(0x4000, 0x1000)?;                          // reserve one page
//! let a = iova.allocate(0x2000, 0)?;                             // first fit: 0x1000
//! assert_eq!(a, 0x1000);
//! assert_eq!(iova.fragment_count(), 2);
//! iova.deallocate(0x4000, 0x1000)?;
//! iova.deallocate(a, 0x2000)?;
//! assert_eq!(iova.fragment_count(), 1);
//! assert_eq!(iova.free_count(), 0xF000);
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::{Error, Result};
use alloc_crate::collections::BTreeMap;

const WHAT: &str = "range allocator";

/// A first-fit allocator of ranges of a `u64` space.
#[derive(Clone, Debug)]
pub struct RangeAllocator {
    /// Free intervals, start → inclusive end. Disjoint and never adjacent.
    free: BTreeMap<u64, u64>,
    /// Default alignment minus one.
    default_mask: u64,
    /// Sum of the free intervals' lengths.
    free_bytes: u64,
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
            free: BTreeMap::new(),
            default_mask: a - 1,
            free_bytes: 0,
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
        self.free.len()
    }

    /// The free intervals as `(start, inclusive end)`, in address order (IOKit's
    /// `serialize`).
    pub fn fragments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter().map(|(&s, &e)| (s, e))
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

    /// Allocates `size` bytes (rounded up to the default alignment) at the lowest address
    /// aligned to `alignment` (0: the default alignment) and returns the start.
    pub fn allocate(&mut self, size: u64, alignment: u64) -> Result<u64> {
        let size = self.round_size(size)?;
        let mask = if alignment == 0 {
            self.default_mask
        } else {
            check_align("range allocator alignment", alignment)? - 1
        };
        let mut found = None;
        for (&start, &end) in &self.free {
            let Some(data) = start.checked_add(mask).map(|v| v & !mask) else {
                continue;
            };
            let Some(last) = data.checked_add(size - 1) else {
                continue;
            };
            if data >= start && last <= end {
                found = Some((start, end, data, last));
                break;
            }
        }
        let Some((start, end, data, last)) = found else {
            return Err(Error::NoSpace {
                what: WHAT,
                requested: size,
                align: mask + 1,
                free: self.free_bytes,
            });
        };
        self.carve(start, end, data, last);
        Ok(data)
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
        match self.free.range(..=start).next_back() {
            Some((&s, &e)) if last <= e => {
                self.carve(s, e, start, last);
                Ok(())
            }
            _ => Err(Error::RangeBusy {
                what: WHAT,
                start,
                len: size,
            }),
        }
    }

    fn carve(&mut self, start: u64, end: u64, data: u64, last: u64) {
        self.free.remove(&start);
        if data > start {
            self.free.insert(start, data - 1);
        }
        if last < end {
            self.free.insert(last + 1, end);
        }
        self.free_bytes -= last - data + 1;
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
        let pred = self.free.range(..=last).next_back().map(|(&s, &e)| (s, e));
        if let Some((_, e)) = pred {
            if e >= start {
                return Err(Error::DoubleFree {
                    what: WHAT,
                    start,
                    len: size,
                });
            }
        }
        let mut new_start = start;
        let mut new_end = last;
        if let Some((s, e)) = pred {
            if e.checked_add(1) == Some(start) {
                self.free.remove(&s);
                new_start = s;
            }
        }
        if let Some(next) = last.checked_add(1) {
            if let Some(e) = self.free.remove(&next) {
                new_end = e;
            }
        }
        self.free.insert(new_start, new_end);
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
    fn first_fit_alignment_and_merge() {
        let mut r = RangeAllocator::new(0, 0x10000, 0x100).unwrap();
        assert_eq!(r.allocate(1, 0).unwrap(), 0);
        assert_eq!(r.allocate(0x100, 0x1000).unwrap(), 0x1000);
        assert_eq!(r.fragment_count(), 2);
        r.deallocate(0, 0x100).unwrap();
        r.deallocate(0x1000, 0x100).unwrap();
        assert_eq!(r.fragment_count(), 1);
        assert_eq!(r.free_count(), 0x10000);
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
