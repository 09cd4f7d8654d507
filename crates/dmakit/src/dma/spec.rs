//! [`SegmentSpec`]: every constraint on DMA segments in one validated value.
//!
//! Linux spreads these over a DMA mask, `dma_parms` and block-queue limits; FreeBSD puts
//! them in a busdma tag; IOKit in `IODMACommand::SegmentOptions` plus the address-bit count.
//! dmakit keeps them together and checks them once, at construction, with an error that
//! names the bad field:
//!
//! | field | meaning |
//! | --- | --- |
//! | `min_address`, `max_address` | the window of bus addresses the device can reach (`address_bits(32)` is `[0, 0xFFFF_FFFF]`) |
//! | `max_segment_size` | no segment longer |
//! | `max_transfer_size` | no transfer (one `prepare`) longer |
//! | `max_segments` | no more segments per transfer |
//! | `alignment` | the first segment starts on this boundary (and, unless `internal_alignment` is set, every segment) |
//! | `length_alignment` | every segment but the last is a multiple of this long |
//! | `internal_alignment` | segments after the first start, and segments before the last end, on this boundary (NVMe PRP: the page size); unset or 0, it is `alignment`, as in IOKit |
//! | `boundary` | no segment crosses a multiple of this (0: none) |
//! | `offset_bits` | low address bits the device interprets within a page-like unit; a bounce keeps them (NVMe keeps the first segment's page offset) |
//!
//! `intersect` combines a bus's limits with a device's.
//!
//! As IOKit's `SegmentOptions` do, the builder reads an alignment of 0 as 1 (and an internal
//! alignment of 0 as the start alignment), a maximum segment or transfer size of 0 and
//! `address_bits(0)` as "no limit", takes 64 to 255 address bits (what IOKit's one-byte
//! field holds) as no limit too, and refuses 1 to 11 address bits (a device that cannot
//! address one 4 KiB page).
//!
//! ```
//! use dmakit::dma::SegmentSpec;
//!
//! let device = SegmentSpec::builder().address_bits(32).max_segment_size(64 << 10).build()?;
//! let bus = SegmentSpec::builder().max_segments(32).alignment(8).build()?;
//! let both = device.intersect(&bus)?;
//! assert_eq!((both.max_address(), both.max_segments(), both.alignment()), (0xFFFF_FFFF, 32, 8));
//! assert!(SegmentSpec::builder().alignment(12).build().is_err());
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::{Error, Result};

/// Validated DMA constraints.
///
/// An NVMe controller's, for example: 64-bit addresses, PRP entries that each describe
/// at most one page and start on a page boundary after the first, dword-aligned data:
///
/// ```
/// use dmakit::dma::SegmentSpec;
///
/// let nvme = SegmentSpec::builder()
///     .alignment(4)                 // the first PRP entry: dword aligned
///     .internal_alignment(0x1000)   // every later entry starts on a page
///     .max_segment_size(0x1000)
///     .max_transfer_size(128 << 10) // MDTS
///     .offset_bits(12)              // the first entry's page offset is kept when bouncing
///     .build()?;
/// assert_eq!((nvme.alignment(), nvme.internal_alignment()), (4, 0x1000));
/// assert!(!nvme.has_address_limit());
/// assert!(nvme.reaches(0x1_2345_6000, 0x1000));
/// # Ok::<(), dmakit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSpec {
    min_address: u64,
    max_address: u64,
    max_segment_size: u64,
    max_transfer_size: u64,
    max_segments: u32,
    alignment: u64,
    length_alignment: u64,
    internal_alignment: u64,
    boundary: u64,
    offset_bits: u32,
    /// Whether an address limit was stated (`address_bits` or `window`), as opposed to the
    /// default "anything": a 32-bit segment format then takes a 32-bit limit.
    address_limited: bool,
}

/// Builds a [`SegmentSpec`]; unset fields have no limit.
///
/// [`build`](Self::build) checks every field and the combination, and names what is wrong:
///
/// ```
/// use dmakit::dma::SegmentSpec;
/// use dmakit::Error;
///
/// let e = SegmentSpec::builder().alignment(48).build().unwrap_err();
/// assert!(e.to_string().contains("SegmentSpec.alignment"), "{e}");
/// assert!(matches!(SegmentSpec::builder().address_bits(8).build(), Err(Error::BadArgument { .. })));
/// assert!(matches!(SegmentSpec::builder().max_segments(0).build(), Err(Error::ZeroSize { .. })));
/// // A window no segment start can be aligned in.
/// let unmeetable = SegmentSpec::builder().window(0x1001, 0x1fff).alignment(0x1000).build();
/// assert!(unmeetable.is_err());
/// // 0 means "none" where IOKit says so.
/// let s = SegmentSpec::builder().address_bits(0).alignment(0).boundary(0).build()?;
/// assert_eq!((s.max_address(), s.alignment(), s.boundary()), (u64::MAX, 1, 0));
/// # Ok::<(), dmakit::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct SegmentSpecBuilder {
    spec: SegmentSpec,
    address_bits: Option<u32>,
    internal_set: bool,
}

impl Default for SegmentSpec {
    fn default() -> Self {
        SegmentSpec {
            min_address: 0,
            max_address: u64::MAX,
            max_segment_size: u64::MAX,
            max_transfer_size: u64::MAX,
            max_segments: u32::MAX,
            alignment: 1,
            length_alignment: 1,
            internal_alignment: 1,
            boundary: 0,
            offset_bits: 0,
            address_limited: false,
        }
    }
}

fn pow2(what: &'static str, v: u64) -> Result<u64> {
    if v.is_power_of_two() {
        Ok(v)
    } else {
        Err(Error::BadAlignment { what, align: v })
    }
}

impl SegmentSpecBuilder {
    /// The device drives `bits` address lines: addresses up to `2^bits - 1` (IOKit
    /// `fNumAddressBits`). 0 means no limit; 1 to 11 are refused at `build`; 64 to 255
    /// reach every address, as in IOKit, but are a stated limit (a 32-bit segment format
    /// refuses them); above 255 (more than IOKit's one-byte field holds) is refused.
    /// IOKit: `numAddressBits`.
    ///
    /// ```
    /// use dmakit::dma::SegmentSpec;
    ///
    /// let s = SegmentSpec::builder().address_bits(32).build()?;
    /// assert_eq!(s.max_address(), 0xFFFF_FFFF);
    /// assert!(s.reaches(0xFFFF_F000, 0x1000));
    /// assert!(!s.reaches(0xFFFF_F000, 0x1001), "one byte past 4 GiB");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn address_bits(mut self, bits: u32) -> Self {
        self.address_bits = Some(bits);
        self
    }

    /// The device reaches only `[min, max]` (inclusive).
    pub fn window(mut self, min: u64, max: u64) -> Self {
        self.spec.min_address = min;
        self.spec.max_address = max;
        self.spec.address_limited = true;
        self
    }

    /// Longest segment; 0 means no limit, as IOKit's `fMaxSegmentSize`.
    pub fn max_segment_size(mut self, n: u64) -> Self {
        self.spec.max_segment_size = if n == 0 { u64::MAX } else { n };
        self
    }

    /// Longest transfer (one `prepare`); 0 means no limit, as IOKit's `fMaxTransferSize`.
    pub fn max_transfer_size(mut self, n: u64) -> Self {
        self.spec.max_transfer_size = if n == 0 { u64::MAX } else { n };
        self
    }

    /// Most segments per transfer.
    pub fn max_segments(mut self, n: u32) -> Self {
        self.spec.max_segments = n;
        self
    }

    /// Segment start alignment (a power of two; 0 means 1). IOKit `fAlignment`.
    pub fn alignment(mut self, a: u64) -> Self {
        self.spec.alignment = a.max(1);
        self
    }

    /// Segment length alignment (a power of two; 0 means 1). IOKit `fAlignmentLength`.
    pub fn length_alignment(mut self, a: u64) -> Self {
        self.spec.length_alignment = a.max(1);
        self
    }

    /// Alignment of inner segment boundaries (a power of two; 0 or unset means the start
    /// alignment). IOKit `fAlignmentInternalSegments`.
    pub fn internal_alignment(mut self, a: u64) -> Self {
        self.spec.internal_alignment = a;
        self.internal_set = a != 0;
        self
    }

    /// No segment crosses a multiple of `b` (a power of two; 0 for none).
    ///
    /// ```
    /// use dmakit::dma::SegmentSpec;
    ///
    /// // A segment can never be longer than the boundary it may not cross.
    /// let s = SegmentSpec::builder().boundary(0x1_0000).build()?;
    /// assert_eq!((s.boundary(), s.max_segment_size()), (0x1_0000, 0x1_0000));
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn boundary(mut self, b: u64) -> Self {
        self.spec.boundary = b;
        self
    }

    /// Low address bits the device interprets (kept when bouncing).
    pub fn offset_bits(mut self, bits: u32) -> Self {
        self.spec.offset_bits = bits;
        self
    }

    /// Checks every field; the error names the first bad one.
    pub fn build(self) -> Result<SegmentSpec> {
        let mut s = self.spec;
        if !self.internal_set {
            s.internal_alignment = s.alignment;
        }
        apply_address_bits(&mut s, self.address_bits)?;
        check_fields(&s)?;
        check_cuts(&s)?;
        if s.boundary != 0 && s.max_segment_size > s.boundary {
            // A segment can never be longer than the boundary it may not cross.
            s.max_segment_size = s.boundary;
        }
        check_satisfiable(&s)?;
        Ok(s)
    }
}

/// Narrows the window to `bits` address bits (`None` or 0: no limit; 12 to 255).
fn apply_address_bits(s: &mut SegmentSpec, bits: Option<u32>) -> Result<()> {
    match bits {
        None | Some(0) => {}
        Some(bits @ 12..=255) => {
            let top = if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            s.max_address = s.max_address.min(top);
            s.address_limited = true;
        }
        Some(bits) => {
            return Err(Error::BadArgument {
                what: "SegmentSpec.address_bits must be 0 (no limit) or 12..=255",
                value: bits as u64,
            })
        }
    }
    Ok(())
}

/// Each field on its own: a window that is not empty, at least one segment, power-of-two
/// alignments and boundary, fewer than 64 offset bits.
fn check_fields(s: &SegmentSpec) -> Result<()> {
    if s.min_address > s.max_address {
        return Err(Error::BadArgument {
            what: "SegmentSpec.window is empty (min above max)",
            value: s.min_address,
        });
    }
    if s.max_segments == 0 {
        return Err(Error::ZeroSize {
            what: "SegmentSpec.max_segments",
        });
    }
    pow2("SegmentSpec.alignment", s.alignment)?;
    pow2("SegmentSpec.length_alignment", s.length_alignment)?;
    pow2("SegmentSpec.internal_alignment", s.internal_alignment)?;
    if s.boundary != 0 {
        pow2("SegmentSpec.boundary", s.boundary)?;
    }
    if s.offset_bits > 63 {
        return Err(Error::BadArgument {
            what: "SegmentSpec.offset_bits must be below 64",
            value: s.offset_bits as u64,
        });
    }
    Ok(())
}

/// Where segments are cut (at the maximum size, at a boundary) the next segment must be
/// able to start: both are multiples of the length and internal alignments.
fn check_cuts(s: &SegmentSpec) -> Result<()> {
    if s.max_segment_size != u64::MAX && !s.max_segment_size.is_multiple_of(s.length_alignment) {
        return Err(Error::NotAligned {
            what: "SegmentSpec.max_segment_size is not a multiple of length_alignment",
            value: s.max_segment_size,
            align: s.length_alignment,
        });
    }
    let cut_align = s.internal_alignment.max(s.length_alignment);
    if s.max_segment_size != u64::MAX && !s.max_segment_size.is_multiple_of(cut_align) {
        // A segment cut at the maximum size must end where the next may start.
        return Err(Error::NotAligned {
            what: "SegmentSpec.max_segment_size is not a multiple of internal_alignment",
            value: s.max_segment_size,
            align: cut_align,
        });
    }
    if s.boundary != 0 && s.boundary < cut_align {
        return Err(Error::NotAligned {
            what: "SegmentSpec.boundary is below internal_alignment/length_alignment (a cut at the boundary would break them)",
            value: s.boundary,
            align: cut_align,
        });
    }
    Ok(())
}

/// Some address in the window must be able to start a segment (and one of the length
/// alignment must fit after it): else no memory could ever satisfy the spec, and every
/// prepare would fail later with a confusing lack of space. Address 0 does not count: no
/// mapper hands it out and no platform lends that page.
fn check_satisfiable(s: &SegmentSpec) -> Result<()> {
    let first = s.min_address.max(1).checked_next_multiple_of(s.alignment);
    let fits = first.is_some_and(|a| {
        a <= s.max_address && s.max_address - a >= s.length_alignment.saturating_sub(1)
    });
    if !fits {
        return Err(Error::BadArgument {
            what: "SegmentSpec cannot be met: no address in the window has the start alignment (with room for one length alignment)",
            value: s.alignment,
        });
    }
    Ok(())
}

impl SegmentSpec {
    /// A builder with no limits.
    pub fn builder() -> SegmentSpecBuilder {
        SegmentSpecBuilder {
            spec: SegmentSpec::default(),
            address_bits: None,
            internal_set: false,
        }
    }

    /// Lowest reachable address.
    pub fn min_address(&self) -> u64 {
        self.min_address
    }
    /// Highest reachable address.
    pub fn max_address(&self) -> u64 {
        self.max_address
    }
    /// Longest segment.
    pub fn max_segment_size(&self) -> u64 {
        self.max_segment_size
    }
    /// Longest transfer.
    pub fn max_transfer_size(&self) -> u64 {
        self.max_transfer_size
    }
    /// Most segments.
    pub fn max_segments(&self) -> u32 {
        self.max_segments
    }
    /// Segment start alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Segment length alignment.
    pub fn length_alignment(&self) -> u64 {
        self.length_alignment
    }
    /// Inner boundary alignment.
    pub fn internal_alignment(&self) -> u64 {
        self.internal_alignment
    }
    /// Boundary no segment crosses (0: none).
    pub fn boundary(&self) -> u64 {
        self.boundary
    }
    /// Interpreted low address bits.
    pub fn offset_bits(&self) -> u32 {
        self.offset_bits
    }

    /// The device's address-bit count (IOKit `getNumAddressBits`): 0 without an address
    /// limit, else the address lines needed to reach [`max_address`](Self::max_address)
    /// (32 for a command with a 32-bit segment format and no stated limit, 64 for 64 or
    /// more stated bits).
    ///
    /// ```
    /// use dmakit::dma::SegmentSpec;
    ///
    /// let bits = |s: SegmentSpec| s.address_bits();
    /// assert_eq!(bits(SegmentSpec::builder().build()?), 0);
    /// assert_eq!(bits(SegmentSpec::builder().address_bits(40).build()?), 40);
    /// assert_eq!(bits(SegmentSpec::builder().address_bits(100).build()?), 64);
    /// assert_eq!(bits(SegmentSpec::builder().window(0x1000, 0x7FFF_FFFF).build()?), 31);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn address_bits(&self) -> u32 {
        if !self.address_limited {
            return 0;
        }
        64 - self.max_address.leading_zeros()
    }

    /// Whether an address limit was stated (`address_bits` or `window`); without one a
    /// 32-bit segment format limits the command to 32 bits.
    pub fn has_address_limit(&self) -> bool {
        self.address_limited
    }

    /// This spec with addresses limited to `max` (kept if already lower).
    pub(crate) fn limited_to(mut self, max: u64) -> Result<SegmentSpec> {
        self.max_address = self.max_address.min(max);
        self.address_limited = true;
        if self.min_address > self.max_address {
            return Err(Error::BadArgument {
                what: "SegmentSpec.window lies above the segment format's address range",
                value: self.min_address,
            });
        }
        Ok(self)
    }

    /// Whether `[addr, addr + len)` (len ≥ 1) lies in the reachable window.
    pub fn reaches(&self, addr: u64, len: u64) -> bool {
        len > 0
            && addr >= self.min_address
            && addr
                .checked_add(len - 1)
                .is_some_and(|last| last <= self.max_address)
    }

    /// The constraints of both (a bus's and a device's): the narrower window, the smaller
    /// sizes, the larger alignments, the smaller boundary. Disjoint windows are an error.
    ///
    /// ```
    /// use dmakit::dma::SegmentSpec;
    ///
    /// let bus = SegmentSpec::builder().window(0, 0xFF_FFFF_FFFF).boundary(1 << 32).build()?;
    /// let device = SegmentSpec::builder().address_bits(32).alignment(512).build()?;
    /// let both = device.intersect(&bus)?;
    /// assert_eq!((both.max_address(), both.alignment(), both.boundary()), (0xFFFF_FFFF, 512, 1 << 32));
    /// let high = SegmentSpec::builder().window(1 << 33, u64::MAX).build()?;
    /// assert!(device.intersect(&high).is_err(), "no address both reach");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn intersect(&self, other: &SegmentSpec) -> Result<SegmentSpec> {
        let boundary = match (self.boundary, other.boundary) {
            (0, b) | (b, 0) => b,
            (a, b) => a.min(b),
        };
        let s = SegmentSpec {
            min_address: self.min_address.max(other.min_address),
            max_address: self.max_address.min(other.max_address),
            max_segment_size: self.max_segment_size.min(other.max_segment_size),
            max_transfer_size: self.max_transfer_size.min(other.max_transfer_size),
            max_segments: self.max_segments.min(other.max_segments),
            alignment: self.alignment.max(other.alignment),
            length_alignment: self.length_alignment.max(other.length_alignment),
            internal_alignment: self.internal_alignment.max(other.internal_alignment),
            boundary,
            offset_bits: self.offset_bits.max(other.offset_bits),
            address_limited: self.address_limited || other.address_limited,
        };
        // Re-validate the combination (for example a segment size that no longer fits the
        // larger length alignment).
        SegmentSpecBuilder {
            spec: s,
            address_bits: None,
            internal_set: true,
        }
        .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_crate::string::ToString;

    #[test]
    fn defaults_and_address_bits() {
        let s = SegmentSpec::builder().build().unwrap();
        assert_eq!(s.max_address(), u64::MAX);
        assert_eq!(
            SegmentSpec::builder()
                .address_bits(32)
                .build()
                .unwrap()
                .max_address(),
            0xFFFF_FFFF
        );
        assert_eq!(
            SegmentSpec::builder()
                .address_bits(64)
                .build()
                .unwrap()
                .max_address(),
            u64::MAX
        );
        assert_eq!(
            SegmentSpec::builder()
                .address_bits(28)
                .build()
                .unwrap()
                .max_address(),
            (1 << 28) - 1
        );
        let s = SegmentSpec::builder().address_bits(32).build().unwrap();
        assert!(s.reaches(0xFFFF_F000, 0x1000));
        assert!(!s.reaches(0xFFFF_F000, 0x1001));
        assert!(!s.reaches(0, 0));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                SegmentSpec::builder().address_bits(11).build(),
                "address_bits",
            ),
            (
                SegmentSpec::builder().address_bits(256).build(),
                "address_bits",
            ),
            (SegmentSpec::builder().window(10, 5).build(), "window"),
            (
                SegmentSpec::builder().max_segments(0).build(),
                "max_segments",
            ),
            (SegmentSpec::builder().alignment(3).build(), "alignment"),
            (
                SegmentSpec::builder().length_alignment(24).build(),
                "length_alignment",
            ),
            (
                SegmentSpec::builder().internal_alignment(6).build(),
                "internal_alignment",
            ),
            (SegmentSpec::builder().boundary(100).build(), "boundary"),
            (
                SegmentSpec::builder().offset_bits(64).build(),
                "offset_bits",
            ),
            (
                SegmentSpec::builder()
                    .length_alignment(512)
                    .max_segment_size(1000)
                    .build(),
                "max_segment_size",
            ),
        ];
        for (r, field) in cases {
            let e = r.unwrap_err();
            assert!(e.to_string().contains(field), "{e} should name {field}");
        }
    }

    #[test]
    fn zero_alignments_mean_one_and_internal_follows_the_start_alignment() {
        let s = SegmentSpec::builder()
            .alignment(0)
            .length_alignment(0)
            .internal_alignment(0)
            .build()
            .unwrap();
        assert_eq!(
            (s.alignment(), s.length_alignment(), s.internal_alignment()),
            (1, 1, 1)
        );
        let s = SegmentSpec::builder().alignment(0x1000).build().unwrap();
        assert_eq!(
            s.internal_alignment(),
            0x1000,
            "unset internal alignment is the alignment"
        );
        let s = SegmentSpec::builder()
            .alignment(0x1000)
            .internal_alignment(0)
            .build()
            .unwrap();
        assert_eq!(
            s.internal_alignment(),
            0x1000,
            "0 is the alignment, as in IOKit"
        );
        let s = SegmentSpec::builder()
            .alignment(0x1000)
            .internal_alignment(4)
            .build()
            .unwrap();
        assert_eq!(s.internal_alignment(), 4);
    }

    #[test]
    fn address_bits_zero_is_no_limit_and_below_twelve_is_refused() {
        let s = SegmentSpec::builder().address_bits(0).build().unwrap();
        assert_eq!(s.max_address(), u64::MAX);
        assert!(!s.has_address_limit());
        for bits in 1..12 {
            let e = SegmentSpec::builder()
                .address_bits(bits)
                .build()
                .unwrap_err();
            assert_eq!(e.io_return(), crate::IoReturn::BAD_ARGUMENT, "{bits} bits");
        }
        let s = SegmentSpec::builder().address_bits(12).build().unwrap();
        assert_eq!(s.max_address(), 0xFFF);
        assert!(s.has_address_limit());
        assert!(SegmentSpec::builder()
            .window(0, 1 << 40)
            .build()
            .unwrap()
            .has_address_limit());
    }

    #[test]
    fn boundary_caps_the_segment_size() {
        let s = SegmentSpec::builder().boundary(0x1000).build().unwrap();
        assert_eq!(s.max_segment_size(), 0x1000);
    }

    #[test]
    fn intersection() {
        let a = SegmentSpec::builder()
            .window(0x1000, 0xFFFF_FFFF)
            .alignment(4)
            .boundary(1 << 16)
            .build()
            .unwrap();
        let b = SegmentSpec::builder()
            .address_bits(31)
            .length_alignment(512)
            .max_segments(8)
            .boundary(1 << 12)
            .build()
            .unwrap();
        let c = a.intersect(&b).unwrap();
        assert_eq!((c.min_address(), c.max_address()), (0x1000, 0x7FFF_FFFF));
        assert_eq!(
            (
                c.alignment(),
                c.length_alignment(),
                c.max_segments(),
                c.boundary()
            ),
            (4, 512, 8, 1 << 12)
        );
        let far = SegmentSpec::builder()
            .window(1 << 40, u64::MAX)
            .build()
            .unwrap();
        assert!(a.intersect(&far).is_err(), "disjoint windows");
        let odd = SegmentSpec::builder()
            .max_segment_size(1000)
            .build()
            .unwrap();
        assert!(
            odd.intersect(&b).is_err(),
            "1000 is not a multiple of the combined 512"
        );
    }
}
