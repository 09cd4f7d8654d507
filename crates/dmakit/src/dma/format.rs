//! [`SegmentFormat`]: the layouts IOKit's `OutputHost32` … `OutputLittle64` write.
//!
//! | format | element | encoding |
//! | --- | --- | --- |
//! | `Host32`, `Big32`, `Little32` | 8 bytes | `u32` address, `u32` length |
//! | `Host64`, `Big64`, `Little64` | 16 bytes | `u64` address, `u64` length |
//!
//! IOKit's 32-bit outputs silently truncate; dmakit refuses instead: an address or length
//! that does not fit 32 bits is [`Error::BadArgument`], so a 32-bit device never receives an
//! address at or above 4 GiB.
//!
//! ```
//! use dmakit::dma::{IoSegment, SegmentFormat};
//! use dmakit::IoAddr;
//!
//! let mut out = [0u8; 16];
//! SegmentFormat::Big32.write(&mut out, 1, IoSegment { addr: IoAddr(0x1234_5000), len: 0x200 })?;
//! assert_eq!(out[8..], [0x12, 0x34, 0x50, 0x00, 0x00, 0x00, 0x02, 0x00]);
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::{Error, IoAddr, Result};

/// One DMA segment as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IoSegment {
    /// Device-visible address.
    pub addr: IoAddr,
    /// Length in bytes.
    pub len: u64,
}

/// Byte order and width of an output segment list.
///
/// ```
/// use dmakit::dma::{IoSegment, SegmentFormat};
/// use dmakit::IoAddr;
///
/// let seg = IoSegment { addr: IoAddr(0x8000_1000), len: 0x200 };
/// let mut list = [0u8; 16];
/// SegmentFormat::Little64.write(&mut list, 0, seg)?;
/// assert_eq!(list[..8], 0x8000_1000u64.to_le_bytes());
/// assert_eq!(list[8..], 0x200u64.to_le_bytes());
/// assert_eq!(SegmentFormat::Little64.read(&list, 0)?, seg);
/// assert_eq!((SegmentFormat::Little32.element_size(), SegmentFormat::Big64.element_size()), (8, 16));
/// assert_eq!(SegmentFormat::Host32.max_address(), 0xFFFF_FFFF);
/// # Ok::<(), dmakit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentFormat {
    /// OutputHost32: native-endian `u32` pairs.
    Host32,
    /// OutputBig32: big-endian `u32` pairs.
    Big32,
    /// OutputLittle32: little-endian `u32` pairs.
    Little32,
    /// OutputHost64: native-endian `u64` pairs.
    Host64,
    /// OutputBig64: big-endian `u64` pairs.
    Big64,
    /// OutputLittle64: little-endian `u64` pairs.
    Little64,
}

impl SegmentFormat {
    /// Bytes per element.
    pub const fn element_size(self) -> usize {
        if self.is_32() {
            8
        } else {
            16
        }
    }

    /// Whether the format has 32-bit fields.
    pub const fn is_32(self) -> bool {
        matches!(
            self,
            SegmentFormat::Host32 | SegmentFormat::Big32 | SegmentFormat::Little32
        )
    }

    /// The highest address the format can carry.
    pub const fn max_address(self) -> u64 {
        if self.is_32() {
            u32::MAX as u64
        } else {
            u64::MAX
        }
    }

    /// Byte offset of element `index` in a buffer of `len` bytes, if it fits.
    fn slot(self, len: usize, index: usize, what: &'static str) -> Result<usize> {
        let size = self.element_size();
        index
            .checked_mul(size)
            .filter(|&a| a.checked_add(size).is_some_and(|end| end <= len))
            .ok_or(Error::OutOfBounds {
                what,
                offset: (index as u64).saturating_mul(size as u64),
                len: size as u64,
                limit: len as u64,
            })
    }

    /// Writes `seg` as element `index` of `out`. A buffer too small is
    /// [`Error::OutOfBounds`]; a value that does not fit a 32-bit format is
    /// [`Error::BadArgument`].
    ///
    /// ```
    /// use dmakit::dma::{IoSegment, SegmentFormat};
    /// use dmakit::{Error, IoAddr};
    ///
    /// let mut list = [0u8; 8]; // one 32-bit element
    /// let high = IoSegment { addr: IoAddr(1 << 32), len: 0x1000 };
    /// // IOKit would write 0 (the address truncated); dmakit refuses and writes nothing.
    /// assert!(matches!(SegmentFormat::Little32.write(&mut list, 0, high), Err(Error::BadArgument { .. })));
    /// assert_eq!(list, [0; 8]);
    /// let low = IoSegment { addr: IoAddr(0x1000), len: 0x1000 };
    /// assert!(matches!(SegmentFormat::Little32.write(&mut list, 1, low), Err(Error::OutOfBounds { .. })));
    /// SegmentFormat::Little32.write(&mut list, 0, low)?;
    /// assert_eq!(list, [0x00, 0x10, 0, 0, 0x00, 0x10, 0, 0]);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn write(self, out: &mut [u8], index: usize, seg: IoSegment) -> Result<()> {
        let size = self.element_size();
        let at = self.slot(out.len(), index, "segment output buffer")?;
        let dst = &mut out[at..at + size];
        if self.is_32() {
            let a = u32::try_from(seg.addr.0).map_err(|_| Error::BadArgument {
                what: "a 32-bit segment format cannot carry an address at or above 4 GiB",
                value: seg.addr.0,
            })?;
            let l = u32::try_from(seg.len).map_err(|_| Error::BadArgument {
                what: "a 32-bit segment format cannot carry a length of 4 GiB or more",
                value: seg.len,
            })?;
            let (a, l) = match self {
                SegmentFormat::Big32 => (a.to_be_bytes(), l.to_be_bytes()),
                SegmentFormat::Little32 => (a.to_le_bytes(), l.to_le_bytes()),
                _ => (a.to_ne_bytes(), l.to_ne_bytes()),
            };
            dst[..4].copy_from_slice(&a);
            dst[4..].copy_from_slice(&l);
        } else {
            let (a, l) = match self {
                SegmentFormat::Big64 => (seg.addr.0.to_be_bytes(), seg.len.to_be_bytes()),
                SegmentFormat::Little64 => (seg.addr.0.to_le_bytes(), seg.len.to_le_bytes()),
                _ => (seg.addr.0.to_ne_bytes(), seg.len.to_ne_bytes()),
            };
            dst[..8].copy_from_slice(&a);
            dst[8..].copy_from_slice(&l);
        }
        Ok(())
    }

    /// Reads element `index` of `out` back (for tests and for devices modelled in Rust).
    ///
    /// ```
    /// use dmakit::dma::SegmentFormat;
    ///
    /// // Two big-endian 32-bit elements, as a device reads them.
    /// let list = [0, 0, 0x10, 0, 0, 0, 2, 0, 0, 0, 0x20, 0, 0, 0, 1, 0];
    /// let second = SegmentFormat::Big32.read(&list, 1)?;
    /// assert_eq!((second.addr.0, second.len), (0x2000, 0x100));
    /// assert!(SegmentFormat::Big32.read(&list, 2).is_err(), "no third element");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn read(self, out: &[u8], index: usize) -> Result<IoSegment> {
        let size = self.element_size();
        let at = self.slot(out.len(), index, "segment list")?;
        let src = &out[at..at + size];
        let (addr, len) = if self.is_32() {
            let a: [u8; 4] = src[..4].try_into().unwrap_or_default();
            let l: [u8; 4] = src[4..].try_into().unwrap_or_default();
            let f = match self {
                SegmentFormat::Big32 => u32::from_be_bytes,
                SegmentFormat::Little32 => u32::from_le_bytes,
                _ => u32::from_ne_bytes,
            };
            (f(a) as u64, f(l) as u64)
        } else {
            let a: [u8; 8] = src[..8].try_into().unwrap_or_default();
            let l: [u8; 8] = src[8..].try_into().unwrap_or_default();
            let f = match self {
                SegmentFormat::Big64 => u64::from_be_bytes,
                SegmentFormat::Little64 => u64::from_le_bytes,
                _ => u64::from_ne_bytes,
            };
            (f(a), f(l))
        };
        Ok(IoSegment {
            addr: IoAddr(addr),
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: IoSegment = IoSegment {
        addr: IoAddr(0x0102_0304),
        len: 0x0506,
    };

    #[test]
    fn exact_layouts() {
        let mut b = [0u8; 16];
        SegmentFormat::Big32.write(&mut b, 0, SEG).unwrap();
        assert_eq!(b[..8], [1, 2, 3, 4, 0, 0, 5, 6]);
        SegmentFormat::Little32.write(&mut b, 1, SEG).unwrap();
        assert_eq!(b[8..], [4, 3, 2, 1, 6, 5, 0, 0]);
        let mut b = [0u8; 32];
        SegmentFormat::Big64.write(&mut b, 0, SEG).unwrap();
        assert_eq!(b[..16], [0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 5, 6]);
        SegmentFormat::Little64.write(&mut b, 1, SEG).unwrap();
        assert_eq!(b[16..], [4, 3, 2, 1, 0, 0, 0, 0, 6, 5, 0, 0, 0, 0, 0, 0]);
        let mut h = [0u8; 16];
        SegmentFormat::Host64.write(&mut h, 0, SEG).unwrap();
        assert_eq!(h[..8], 0x0102_0304u64.to_ne_bytes());
        let mut h = [0u8; 8];
        SegmentFormat::Host32.write(&mut h, 0, SEG).unwrap();
        assert_eq!(h[4..], 0x0506u32.to_ne_bytes());
    }

    #[test]
    fn round_trip_and_refusals() {
        for f in [
            SegmentFormat::Host32,
            SegmentFormat::Big32,
            SegmentFormat::Little32,
            SegmentFormat::Host64,
            SegmentFormat::Big64,
            SegmentFormat::Little64,
        ] {
            let mut b = [0u8; 48];
            f.write(&mut b, 2, SEG).unwrap();
            assert_eq!(f.read(&b, 2).unwrap(), SEG, "{f:?}");
            assert!(matches!(f.write(&mut b, 3, SEG), Err(Error::OutOfBounds { .. })) || f.is_32());
            assert!(f.write(&mut b, usize::MAX, SEG).is_err());
        }
        let high = IoSegment {
            addr: IoAddr(1 << 32),
            len: 1,
        };
        let mut b = [0u8; 8];
        assert!(matches!(
            SegmentFormat::Little32.write(&mut b, 0, high),
            Err(Error::BadArgument { .. })
        ));
        assert_eq!(b, [0; 8], "nothing written");
        let long = IoSegment {
            addr: IoAddr(0),
            len: 1 << 32,
        };
        assert!(SegmentFormat::Big32.write(&mut b, 0, long).is_err());
        assert_eq!(SegmentFormat::Big32.max_address(), 0xFFFF_FFFF);
    }
}
