//! The IOMemoryCursor family: [`MemoryCursor`], [`NaturalMemoryCursor`],
//! [`BigMemoryCursor`], [`LittleMemoryCursor`].
//!
//! A cursor cuts a prepared descriptor into physical segments: from a position, up to a
//! number of segments and a number of bytes, coalescing runs that are physically adjacent
//! (also across the parts of a composite descriptor) and cutting segments at the maximum
//! segment size. The caller advances its position by the bytes described and calls again.
//! Each element is written as a `(u64 location, u64 length)` pair in the cursor's byte
//! order (IOKit's LP64 `PhysicalSegment`).
//!
//! As IOKit's, a cursor counts in 32 bits: no segment is longer than `0xFFFF_FFFF` bytes
//! (IOKit's default `mseg` clamp), no call describes more, and a cursor's maximum transfer
//! size above that is refused. A per-call maximum transfer size, when not 0, replaces the
//! cursor's own.
//!
//! Divergences from IOKit:
//!
//! * A maximum segment size of 0 means unlimited (IOKit emits zero-length segments, and its
//!   walk never ends).
//! * The alignment is a power of two ([`Error::BadAlignment`] otherwise) and is checked: a
//!   segment whose start breaks it is [`Error::NotAligned`]. IOKit stores the alignment and
//!   ignores it, handing the device starts it may not be able to use. After such an error
//!   the output may hold the elements written before the misaligned one; the call
//!   describes nothing.
//! * Physical address 0 is an address like any other (IOKit's walk reads 0 as "no
//!   segment", so it cannot describe memory there), and a descriptor that cannot give its
//!   physical segments (unprepared virtual memory) is its error, [`Error::NotReady`] (IOKit
//!   panics).
//! * No element is written past the end of the output: a call writes at most as many as
//!   the output holds, whatever `max_segments` says.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
//! use dmakit::dma::BigMemoryCursor;
//! use dmakit::Direction;
//! # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//! let md = BufferMemoryDescriptor::new(machine, BufferOptions::new(0x3000, Direction::Out))?;
//! let cursor = BigMemoryCursor::new(4096, 0, 1)?;   // ≤ 4 KiB segments
//! let mut list = [0u8; 16 * 8];                      // room for 8 big-endian elements
//! let out = cursor.gen_physical_segments(&md, 0, &mut list, 8, 0)?;
//! assert_eq!(out.bytes, 0x3000);
//! assert!((1..=3).contains(&out.count));
//! let first_len = u64::from_be_bytes(list[8..16].try_into().unwrap());
//! assert!(first_len <= 4096);
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::descriptor::MemoryDescriptor;
use crate::{Error, PhysAddr, Result};
use core::marker::PhantomData;

/// One physical segment (IOKit's `IOMemoryCursor::PhysicalSegment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhysicalSegment {
    /// Physical address.
    pub location: PhysAddr,
    /// Length in bytes.
    pub length: u64,
}

/// How a cursor writes an element.
pub trait SegmentOrder: sealed::Sealed {
    /// Writes `seg` as 16 bytes.
    fn encode(seg: PhysicalSegment) -> [u8; 16];
}

mod sealed {
    pub trait Sealed {}
}

/// Native byte order (IONaturalMemoryCursor).
#[derive(Clone, Copy, Debug)]
pub struct Natural;
/// Big-endian (IOBigMemoryCursor).
#[derive(Clone, Copy, Debug)]
pub struct Big;
/// Little-endian (IOLittleMemoryCursor).
#[derive(Clone, Copy, Debug)]
pub struct Little;

impl sealed::Sealed for Natural {}
impl sealed::Sealed for Big {}
impl sealed::Sealed for Little {}

fn pair(a: [u8; 8], b: [u8; 8]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..8].copy_from_slice(&a);
    o[8..].copy_from_slice(&b);
    o
}

impl SegmentOrder for Natural {
    fn encode(s: PhysicalSegment) -> [u8; 16] {
        pair(s.location.0.to_ne_bytes(), s.length.to_ne_bytes())
    }
}
impl SegmentOrder for Big {
    fn encode(s: PhysicalSegment) -> [u8; 16] {
        pair(s.location.0.to_be_bytes(), s.length.to_be_bytes())
    }
}
impl SegmentOrder for Little {
    fn encode(s: PhysicalSegment) -> [u8; 16] {
        pair(s.location.0.to_le_bytes(), s.length.to_le_bytes())
    }
}

/// What one call produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CursorOutput {
    /// Segments written.
    pub count: usize,
    /// Bytes they describe (advance the position by this).
    pub bytes: u64,
}

/// IOMemoryCursor, writing elements in byte order `O`.
///
/// A cursor walks *physical* segments of memory that is already prepared (a wired buffer,
/// or after `prepare`); it does not bounce or map. For a device with address or alignment
/// limits, use a [`DmaCommand`](super::DmaCommand).
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
/// use dmakit::dma::{NaturalMemoryCursor, PhysicalSegment};
/// use dmakit::Direction;
/// // Every page of a buffer anywhere: physically adjacent pages are rare.
/// let machine = std::sync::Arc::new(
///     dmakit_sim::MachineBuilder::new().seed(5).fragmentation(1.0).build()?,
/// );
/// let md = BufferMemoryDescriptor::new(machine, BufferOptions::new(0x8000, Direction::In))?;
///
/// // A controller that takes 4 segments per command: walk in commands of 4.
/// let cursor = NaturalMemoryCursor::new(0, 0, 1)?;
/// let mut segs = [PhysicalSegment::default(); 4];
/// let (mut position, mut commands) = (0, 0);
/// while position < 0x8000 {
///     let out = cursor.segments(&md, position, &mut segs, 0)?;
///     assert!(out.count >= 1 && out.count <= 4);
///     assert_eq!(segs[..out.count].iter().map(|s| s.length).sum::<u64>(), out.bytes);
///     position += out.bytes;
///     commands += 1;
/// }
/// assert!(commands >= 2, "eight scattered pages need more than one command");
/// # Ok::<(), dmakit::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct MemoryCursor<O: SegmentOrder> {
    max_segment_size: u64,
    max_transfer_size: u64,
    alignment: u64,
    _order: PhantomData<O>,
}

/// IONaturalMemoryCursor.
pub type NaturalMemoryCursor = MemoryCursor<Natural>;
/// IOBigMemoryCursor.
pub type BigMemoryCursor = MemoryCursor<Big>;
/// IOLittleMemoryCursor.
pub type LittleMemoryCursor = MemoryCursor<Little>;

/// Bytes per element.
pub const ELEMENT: usize = 16;

/// The largest segment, and the most bytes one call describes (IOKit's 32-bit counts).
const LIMIT: u64 = u32::MAX as u64;

impl<O: SegmentOrder> MemoryCursor<O> {
    /// A cursor (IOKit `withSpecification`): `max_segment_size` and `max_transfer_size` 0
    /// mean unlimited, which is `0xFFFF_FFFF` bytes as in IOKit; a larger
    /// `max_segment_size` is clamped to that, a larger `max_transfer_size` is
    /// [`Error::BadArgument`] (IOKit refuses it too); `alignment` is a power of two (0
    /// means 1).
    ///
    /// ```
    /// use dmakit::dma::LittleMemoryCursor;
    /// use dmakit::Error;
    ///
    /// assert!(LittleMemoryCursor::new(0x1000, 0x10_0000, 512).is_ok());
    /// assert!(matches!(LittleMemoryCursor::new(0x1000, 0, 3), Err(Error::BadAlignment { .. })));
    /// assert!(matches!(LittleMemoryCursor::new(0, 1 << 32, 1), Err(Error::BadArgument { .. })));
    /// ```
    pub fn new(max_segment_size: u64, max_transfer_size: u64, alignment: u64) -> Result<Self> {
        let alignment = alignment.max(1);
        if !alignment.is_power_of_two() {
            return Err(Error::BadAlignment {
                what: "memory cursor alignment",
                align: alignment,
            });
        }
        if max_transfer_size > LIMIT {
            return Err(Error::BadArgument {
                what: "memory cursor max_transfer_size above 0xFFFF_FFFF (IOKit counts in 32 bits)",
                value: max_transfer_size,
            });
        }
        let unlimited = |v: u64| if v == 0 { LIMIT } else { v.min(LIMIT) };
        Ok(MemoryCursor {
            max_segment_size: unlimited(max_segment_size),
            max_transfer_size: unlimited(max_transfer_size),
            alignment,
            _order: PhantomData,
        })
    }

    /// Segments of `md` from `from`, at most `max_segments` of them (and as many as `out`
    /// holds) and at most `max_transfer` bytes, written into `out`. A `max_transfer` of 0
    /// is the cursor's limit; any other replaces it, as in IOKit, even when larger (above
    /// `0xFFFF_FFFF` it is `0xFFFF_FFFF`).
    /// IOKit: `genPhysicalSegments`.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::LittleMemoryCursor;
    /// use dmakit::Direction;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let options = BufferOptions::new(0x3000, Direction::Out).contiguous(true);
    /// let md = BufferMemoryDescriptor::new(machine, options)?;
    /// let cursor = LittleMemoryCursor::new(0x1000, 0, 1)?;
    /// let mut list = [0u8; 16 * 4];
    /// // At most 0x1800 bytes this time: one whole page and half of the next.
    /// let out = cursor.gen_physical_segments(&md, 0, &mut list, 4, 0x1800)?;
    /// assert_eq!((out.count, out.bytes), (2, 0x1800));
    /// let second = u64::from_le_bytes(list[16..24].try_into().unwrap());
    /// assert_eq!(second, md.physical_segment(0)?.addr.0 + 0x1000);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn gen_physical_segments(
        &self,
        md: &dyn MemoryDescriptor,
        from: u64,
        out: &mut [u8],
        max_segments: usize,
        max_transfer: u64,
    ) -> Result<CursorOutput> {
        let slots = max_segments.min(out.len() / ELEMENT);
        self.walk(md, from, slots, max_transfer, |i, seg| {
            out[i * ELEMENT..(i + 1) * ELEMENT].copy_from_slice(&O::encode(seg));
        })
    }

    /// The same walk, into typed segments (the natural cursor's `getPhysicalSegments`).
    pub fn segments(
        &self,
        md: &dyn MemoryDescriptor,
        from: u64,
        out: &mut [PhysicalSegment],
        max_transfer: u64,
    ) -> Result<CursorOutput> {
        let slots = out.len();
        self.walk(md, from, slots, max_transfer, |i, seg| out[i] = seg)
    }

    fn walk(
        &self,
        md: &dyn MemoryDescriptor,
        from: u64,
        slots: usize,
        max_transfer: u64,
        emit: impl FnMut(usize, PhysicalSegment),
    ) -> Result<CursorOutput> {
        let limit = if max_transfer == 0 {
            self.max_transfer_size
        } else {
            max_transfer.min(LIMIT)
        };
        if slots == 0 {
            return Ok(CursorOutput { count: 0, bytes: 0 });
        }
        let mut w = Walk {
            max_segment_size: self.max_segment_size,
            alignment: self.alignment,
            slots,
            count: 0,
            emitted: 0,
            cur: None,
            emit,
        };
        let (length, mut pos) = (md.length(), from);
        while pos < length {
            let used = w.emitted + w.cur.map_or(0, |c| c.length);
            let budget = limit - used.min(limit);
            if budget == 0 {
                break;
            }
            let run = md.physical_segment(pos)?;
            let (taken, room) = w.take(run.addr.0, run.len.min(budget))?;
            pos += taken;
            if !room {
                break;
            }
        }
        Ok(w.finish())
    }
}

/// One cursor walk in progress: the segments emitted so far, and the one being grown.
struct Walk<F: FnMut(usize, PhysicalSegment)> {
    max_segment_size: u64,
    alignment: u64,
    slots: usize,
    count: usize,
    emitted: u64,
    cur: Option<PhysicalSegment>,
    emit: F,
}

impl<F: FnMut(usize, PhysicalSegment)> Walk<F> {
    /// Takes `[addr, addr + left)`, growing the current segment while it continues it
    /// physically and has room, starting new ones (emitting the current) otherwise. Returns
    /// the bytes taken, and false when the slots ran out first: the last slot holds the
    /// current segment.
    fn take(&mut self, mut addr: u64, mut left: u64) -> Result<(u64, bool)> {
        let mut taken = 0;
        while left > 0 {
            let add = match self.cur.as_mut() {
                Some(c) if c.location.0 + c.length == addr && c.length < self.max_segment_size => {
                    let add = left.min(self.max_segment_size - c.length);
                    c.length += add;
                    add
                }
                _ => {
                    if !self.emit_current() {
                        return Ok((taken, false));
                    }
                    self.start(addr, left)?
                }
            };
            addr += add;
            left -= add;
            taken += add;
        }
        Ok((taken, true))
    }

    /// Emits the current segment, if any; false (nothing emitted) when only the last slot
    /// is left, which the current segment keeps.
    fn emit_current(&mut self) -> bool {
        let Some(c) = self.cur else {
            return true;
        };
        if self.count + 1 >= self.slots {
            return false;
        }
        (self.emit)(self.count, c);
        self.count += 1;
        self.emitted += c.length;
        true
    }

    /// Starts a new current segment at `addr` (which must have the cursor's alignment) with
    /// up to `left` bytes; returns its length.
    fn start(&mut self, addr: u64, left: u64) -> Result<u64> {
        if !addr.is_multiple_of(self.alignment) {
            return Err(Error::NotAligned {
                what: "memory cursor: a segment start breaks the cursor's alignment",
                value: addr,
                align: self.alignment,
            });
        }
        let take = left.min(self.max_segment_size);
        self.cur = Some(PhysicalSegment {
            location: PhysAddr(addr),
            length: take,
        });
        Ok(take)
    }

    /// Emits the current segment into the last slot and says what the walk produced.
    fn finish(mut self) -> CursorOutput {
        if let Some(c) = self.cur {
            (self.emit)(self.count, c);
            self.count += 1;
            self.emitted += c.length;
        }
        CursorOutput {
            count: self.count,
            bytes: self.emitted,
        }
    }
}
