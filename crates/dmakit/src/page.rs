//! The page size as a platform property.
//!
//! IOKit on x86_64 uses 4 KiB pages; on Apple silicon the kernel and the DART IOMMUs use
//! 16 KiB. dmakit never assumes either: every backend reports its [`PageSize`] and all page
//! arithmetic goes through it.
//!
//! ```
//! use dmakit::PageSize;
//!
//! let page = PageSize::SIZE_16K;
//! assert_eq!((page.bytes(), page.shift()), (16384, 14));
//! assert_eq!(page.offset(0x4_5678), 0x1678);
//! assert_eq!(page.trunc(0x4_5678), 0x4_4000);
//! assert_eq!(page.round_up(0x4_5678), Some(0x4_8000));
//! // 100 bytes that start 10 bytes before a page boundary touch two pages.
//! assert_eq!(page.pages_spanned(0x4000 - 10, 100), Some(2));
//! assert!(PageSize::new(12288).is_err(), "not a power of two");
//! ```

use crate::{Error, Result};

/// A page size: a power of two of at least 4 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageSize {
    shift: u32,
}

impl PageSize {
    /// 4 KiB pages (x86_64, most ARM Linux).
    pub const SIZE_4K: PageSize = PageSize { shift: 12 };
    /// 16 KiB pages (Apple silicon, some ARM64 Linux).
    pub const SIZE_16K: PageSize = PageSize { shift: 14 };

    /// A page size of `bytes`, which must be a power of two between 4 KiB and 1 GiB.
    pub fn new(bytes: u64) -> Result<Self> {
        if !bytes.is_power_of_two() || !(4096..=1 << 30).contains(&bytes) {
            return Err(Error::BadAlignment {
                what: "page size (a power of two from 4 KiB to 1 GiB)",
                align: bytes,
            });
        }
        Ok(PageSize {
            shift: bytes.trailing_zeros(),
        })
    }

    /// The size in bytes.
    #[inline]
    pub const fn bytes(self) -> u64 {
        1 << self.shift
    }

    /// log2 of the size.
    #[inline]
    pub const fn shift(self) -> u32 {
        self.shift
    }

    /// `bytes() - 1`.
    #[inline]
    pub const fn mask(self) -> u64 {
        self.bytes() - 1
    }

    /// The offset of `addr` inside its page.
    #[inline]
    pub const fn offset(self, addr: u64) -> u64 {
        addr & self.mask()
    }

    /// `addr` rounded down to its page.
    #[inline]
    pub const fn trunc(self, addr: u64) -> u64 {
        addr & !self.mask()
    }

    /// `addr` rounded up to a page boundary, or `None` on overflow.
    #[inline]
    pub const fn round_up(self, addr: u64) -> Option<u64> {
        match addr.checked_add(self.mask()) {
            Some(v) => Some(v & !self.mask()),
            None => None,
        }
    }

    /// How many pages `[addr, addr + len)` touches, or `None` on overflow.
    pub const fn pages_spanned(self, addr: u64, len: u64) -> Option<u64> {
        if len == 0 {
            return Some(0);
        }
        let end = match addr.checked_add(len) {
            Some(e) => e,
            None => return None,
        };
        match self.round_up(end) {
            Some(e) => Some((e - self.trunc(addr)) >> self.shift),
            None => None,
        }
    }
}

impl Default for PageSize {
    fn default() -> Self {
        PageSize::SIZE_4K
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_and_sixteen_k() {
        for (p, b) in [(PageSize::SIZE_4K, 4096u64), (PageSize::SIZE_16K, 16384)] {
            assert_eq!(p.bytes(), b);
            assert_eq!(PageSize::new(b).unwrap(), p);
            assert_eq!(p.trunc(b + 5), b);
            assert_eq!(p.offset(b + 5), 5);
            assert_eq!(p.round_up(b + 1), Some(2 * b));
            assert_eq!(p.pages_spanned(b - 1, 2), Some(2));
            assert_eq!(p.pages_spanned(0, b), Some(1));
            assert_eq!(p.pages_spanned(0, 0), Some(0));
            assert_eq!(p.pages_spanned(u64::MAX - 1, 1), None);
        }
    }

    #[test]
    fn bad_page_sizes() {
        for b in [0u64, 512, 4095, 6000, 1 << 31] {
            let e = PageSize::new(b).unwrap_err();
            assert_eq!(e.io_return(), crate::IoReturn::BAD_ARGUMENT, "{b}");
        }
    }
}
