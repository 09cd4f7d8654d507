//! Address types.
//!
//! Three address spaces meet in a driver, and mixing them up is the classic DMA bug:
//!
//! * [`PhysAddr`]: a CPU physical address (what `/proc/self/pagemap` or a page table gives);
//! * [`IoAddr`]: an address as a *device* sees it on its bus: equal to the physical address
//!   when no IOMMU translates, an IO virtual address (IOVA) when one does;
//! * [`VirtAddr`]: a virtual address inside one task's address space.
//!
//! Each is a distinct `u64` newtype so the compiler keeps them apart. Arithmetic is checked:
//! the helpers return `None` on overflow instead of wrapping.
//!
//! ```
//! use dmakit::{IoAddr, PhysAddr, PhysRange};
//!
//! let pa = PhysAddr(0x1_2345_6789);
//! assert_eq!(pa.align_down(0x1000), PhysAddr(0x1_2345_6000));
//! assert_eq!(pa.align_up(0x1000), Some(PhysAddr(0x1_2345_7000)));
//! assert_eq!(PhysAddr(u64::MAX).checked_add(1), None, "no wrapping");
//! let run = PhysRange::new(PhysAddr(0x1000), 0x2000);
//! assert!(run.contains(PhysAddr(0x2fff)) && !run.contains(PhysAddr(0x3000)));
//! assert!(run.abuts(&PhysRange::new(PhysAddr(0x3000), 0x1000)));
//! // What a device is given is an IoAddr; it equals the physical address only without an
//! // IOMMU, and the types make the conversion explicit.
//! let for_device = IoAddr(pa.get());
//! assert_eq!(for_device.get(), pa.get());
//! ```

use core::fmt;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw numeric value.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }

            /// `self + bytes`, or `None` on overflow.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Distance in bytes from `base` to `self`, or `None` if `self < base`.
            #[inline]
            pub const fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// Whether the address is a multiple of `align` (usually a power of two; any
            /// value works, and no address is a multiple of 0).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                if align.is_power_of_two() {
                    self.0 & (align - 1) == 0
                } else {
                    align != 0 && self.0 % align == 0
                }
            }

            /// Rounds down to a multiple of `align` (usually a power of two; any value
            /// works, and 0 leaves the address as it is).
            #[inline]
            pub const fn align_down(self, align: u64) -> Self {
                if align.is_power_of_two() {
                    Self(self.0 & !(align - 1))
                } else if align == 0 {
                    self
                } else {
                    Self(self.0 - self.0 % align)
                }
            }

            /// Rounds up to a multiple of `align` (usually a power of two; any value
            /// works, and 0 leaves the address as it is), or `None` past 2^64.
            #[inline]
            pub const fn align_up(self, align: u64) -> Option<Self> {
                if align.is_power_of_two() {
                    return match self.0.checked_add(align - 1) {
                        Some(v) => Some(Self(v & !(align - 1))),
                        None => None,
                    };
                }
                if align == 0 {
                    return Some(self);
                }
                match self.0 % align {
                    0 => Some(self),
                    r => match self.0.checked_add(align - r) {
                        Some(v) => Some(Self(v)),
                        None => None,
                    },
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl From<$name> for u64 {
            fn from(a: $name) -> u64 {
                a.0
            }
        }
    };
}

address_type!(
    /// A CPU physical address.
    PhysAddr,
    "PhysAddr"
);
address_type!(
    /// A device-visible bus address: physical without an IOMMU, an IOVA with one.
    IoAddr,
    "IoAddr"
);
address_type!(
    /// A virtual address in some task's address space.
    VirtAddr,
    "VirtAddr"
);

/// A run of physically contiguous memory: `[addr, addr + len)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PhysRange {
    /// First byte.
    pub addr: PhysAddr,
    /// Length in bytes.
    pub len: u64,
}

impl PhysRange {
    /// A range of `len` bytes from `addr`.
    pub const fn new(addr: PhysAddr, len: u64) -> Self {
        Self { addr, len }
    }

    /// One past the last byte, or `None` if that overflows 64 bits.
    pub const fn end(&self) -> Option<PhysAddr> {
        self.addr.checked_add(self.len)
    }

    /// Whether `other` starts exactly where `self` ends (so the two coalesce).
    pub fn abuts(&self, other: &PhysRange) -> bool {
        self.end() == Some(other.addr)
    }

    /// Whether `addr` lies inside the range.
    pub fn contains(&self, addr: PhysAddr) -> bool {
        addr >= self.addr && addr.0 - self.addr.0 < self.len
    }
}

impl fmt::Debug for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, +{:#x})", self.addr.0, self.len)
    }
}

/// Checks that `[start, start + len)` does not overflow and returns its exclusive end.
pub fn checked_end(start: u64, len: u64, what: &'static str) -> crate::Result<u64> {
    start
        .checked_add(len)
        .ok_or(crate::Error::Overflow { what, start, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_crate::format;

    #[test]
    fn alignment_helpers() {
        let a = PhysAddr(0x1234);
        assert_eq!(a.align_down(0x1000), PhysAddr(0x1000));
        assert_eq!(a.align_up(0x1000), Some(PhysAddr(0x2000)));
        assert!(PhysAddr(0x2000).is_aligned(0x1000));
        assert!(!a.is_aligned(0x1000));
        assert!(!a.is_aligned(0));
        assert_eq!(PhysAddr(u64::MAX).align_up(0x1000), None);
        assert_eq!(PhysAddr(u64::MAX).checked_add(1), None);
        assert_eq!(PhysAddr(5).offset_from(PhysAddr(7)), None);
        assert_eq!(PhysAddr(7).offset_from(PhysAddr(5)), Some(2));
    }

    #[test]
    fn alignments_of_zero_or_not_a_power_of_two_are_exact_and_never_panic() {
        let a = IoAddr(1000);
        assert_eq!(a.align_down(0), a);
        assert_eq!(a.align_up(0), Some(a));
        assert_eq!(a.align_down(3), IoAddr(999));
        assert_eq!(a.align_up(3), Some(IoAddr(1002)));
        assert_eq!(a.align_up(1000), Some(a));
        assert!(a.is_aligned(125) && !a.is_aligned(3));
        assert_eq!(IoAddr(u64::MAX).align_down(u64::MAX), IoAddr(u64::MAX));
        assert_eq!(
            IoAddr(u64::MAX - 1).align_up(u64::MAX),
            Some(IoAddr(u64::MAX))
        );
        assert_eq!(IoAddr(u64::MAX).align_up(10), None, "past 2^64");
        assert_eq!(VirtAddr(7).align_up(1), Some(VirtAddr(7)));
    }

    #[test]
    fn ranges_abut_and_contain() {
        let r = PhysRange::new(PhysAddr(0x1000), 0x1000);
        assert!(r.abuts(&PhysRange::new(PhysAddr(0x2000), 5)));
        assert!(!r.abuts(&PhysRange::new(PhysAddr(0x2001), 5)));
        assert!(r.contains(PhysAddr(0x1fff)));
        assert!(!r.contains(PhysAddr(0x2000)));
        assert!(!r.contains(PhysAddr(0xfff)));
        assert_eq!(PhysRange::new(PhysAddr(u64::MAX), 2).end(), None);
        assert!(checked_end(u64::MAX, 1, "range").is_err());
        assert_eq!(format!("{:?}", r), "[0x1000, +0x1000)");
    }
}
