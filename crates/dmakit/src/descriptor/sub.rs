//! [`SubMemoryDescriptor`]: a window `(offset, length)` of another descriptor (IOKit's
//! IOSubMemoryDescriptor).
//!
//! Prepare and complete forward to the *whole* parent, as in IOKit (with the direction as
//! given, so `Direction::None` wires for the parent's direction); byte copies and
//! physical segments forward with the offset shifted and lengths clipped to the window.
//! The direction is the sub-descriptor's own, not the parent's.
//!
//! Its preparation identifier follows the parent's: unprepared while the parent is, and a
//! new identifier of its own each time the parent's changes. (IOKit's takes a new
//! identifier of its own on every change of the parent's, to unprepared or unsupported
//! too, so once the parent has been prepared it never reports unprepared again; dmakit
//! passes those two through, so the window says whether its memory is prepared.)

use super::{
    check_range, op_extent, past_end, whole_or_nothing, LazyId, MemoryDescriptor, MemoryOperation,
    PrepOwner, PurgeableRequest, PurgeableState, Segment, Source, FIRST_ID,
};
use crate::{Direction, Error, PageSize, Result};
use alloc_crate::sync::Arc;

/// A window of a parent descriptor.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor, SubMemoryDescriptor};
/// use dmakit::{Direction, Error};
/// use std::sync::Arc;
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// // One buffer for a whole request; the device gets only its payload.
/// let request: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::with_bytes(
///     machine,
///     b"HEADERpayload",
///     Direction::Out,
/// )?);
/// let payload = SubMemoryDescriptor::new(request.clone(), 6, 7, Direction::Out)?;
/// assert_eq!((payload.offset(), payload.length()), (6, 7));
/// let mut bytes = [0u8; 7];
/// assert_eq!(payload.read_bytes(0, &mut bytes), 7);
/// assert_eq!(&bytes, b"payload");
/// // Physical addresses are the parent's, shifted.
/// let p = payload.physical_segment(0)?.addr;
/// assert_eq!(p.0, request.physical_segment(6)?.addr.0);
/// // A window must lie inside its parent.
/// let outside = SubMemoryDescriptor::new(request, 6, 8, Direction::Out);
/// assert!(matches!(outside, Err(Error::OutOfBounds { .. })));
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct SubMemoryDescriptor {
    parent: Arc<dyn MemoryDescriptor>,
    offset: u64,
    length: u64,
    direction: Direction,
    /// (the parent's preparation identifier last seen, this one's for it).
    prep: crate::sync::Mutex<(u64, u64)>,
    id: LazyId,
}

impl SubMemoryDescriptor {
    /// `[offset, offset + length)` of `parent`; it must lie within the parent
    /// ([`Error::OutOfBounds`] otherwise). A zero length is allowed, as in IOKit.
    pub fn new(
        parent: Arc<dyn MemoryDescriptor>,
        offset: u64,
        length: u64,
        direction: Direction,
    ) -> Result<Self> {
        let plen = parent.length();
        match offset.checked_add(length) {
            Some(end) if end <= plen => Ok(SubMemoryDescriptor {
                parent,
                offset,
                length,
                direction,
                prep: crate::sync::Mutex::new((0, 0)),
                id: LazyId::default(),
            }),
            _ => Err(Error::OutOfBounds {
                what: "sub-descriptor range in its parent",
                offset,
                len: length,
                limit: plen,
            }),
        }
    }

    /// The parent.
    pub fn parent(&self) -> &Arc<dyn MemoryDescriptor> {
        &self.parent
    }

    /// The window's offset in the parent.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The run at `offset` as `seg` finds it in the parent, clipped to this window.
    fn segment(
        &self,
        offset: u64,
        seg: impl Fn(&dyn MemoryDescriptor, u64) -> Result<Segment>,
    ) -> Result<Segment> {
        if offset >= self.length {
            return Err(past_end("sub-descriptor", offset, self.length));
        }
        let s = seg(&*self.parent, self.offset + offset)?;
        Ok(Segment {
            addr: s.addr,
            len: s.len.min(self.length - offset),
        })
    }
}

impl MemoryDescriptor for SubMemoryDescriptor {
    /// The parent's: the window's mappings are the parent's (see
    /// [`map_through`](MemoryDescriptor::map_through)).
    fn map_registry(&self) -> Option<&crate::map::MapRegistry> {
        self.parent.map_registry()
    }

    /// The parent, at this window's offset: the window is mapped as that range of the
    /// parent (IOKit's sub-descriptor maps through its parent).
    fn map_through(&self) -> Option<(Arc<dyn MemoryDescriptor>, u64)> {
        Some((self.parent.clone(), self.offset))
    }

    fn length(&self) -> u64 {
        self.length
    }

    fn direction(&self) -> Direction {
        self.direction
    }

    fn page_size(&self) -> PageSize {
        self.parent.page_size()
    }

    /// Prepares the whole parent for `dir` as given: `Direction::None` is the *parent's*
    /// direction, not this window's (IOKit's sub-descriptor hands the direction to its
    /// parent unchanged).
    fn prepare_for(&self, owner: PrepOwner, dir: Direction) -> Result<()> {
        self.parent.prepare_for(owner, dir)
    }

    fn complete_for(&self, owner: PrepOwner) -> Result<()> {
        self.parent.complete_for(owner)
    }

    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        let n = whole_or_nothing(offset, buf.len(), self.length);
        if n == 0 {
            return 0;
        }
        self.parent.read_bytes(self.offset + offset, &mut buf[..n])
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        let n = whole_or_nothing(offset, data.len(), self.length);
        if n == 0 {
            return 0;
        }
        self.parent.write_bytes(self.offset + offset, &data[..n])
    }

    fn physical_segment(&self, offset: u64) -> Result<Segment> {
        self.segment(offset, |md, at| md.physical_segment(at))
    }

    fn prepared_segment(&self, offset: u64) -> Result<Segment> {
        self.segment(offset, |md, at| md.prepared_segment(at))
    }

    fn leaves(&self, offset: u64, len: u64, f: &mut dyn FnMut(super::LeafRange)) {
        let end = offset.saturating_add(len).min(self.length);
        if offset < end {
            self.parent.leaves(self.offset + offset, end - offset, f);
        }
    }

    fn sources(&self, offset: u64, len: u64, f: &mut dyn FnMut(Source)) -> Result<()> {
        check_range("sub-descriptor", offset, len, self.length)?;
        self.parent.sources(self.offset + offset, len, f)
    }

    /// The parent's special values (unprepared, unsupported) pass through; otherwise an
    /// identifier of its own, renewed whenever the parent's changes.
    fn preparation_id(&self) -> u64 {
        let parent = self.parent.preparation_id();
        if parent < FIRST_ID {
            return parent;
        }
        let mut p = self.prep.lock();
        if p.0 != parent {
            *p = (parent, super::next_id());
        }
        p.1
    }

    fn descriptor_id(&self) -> u64 {
        self.id.get()
    }

    /// Forwards the window's part of the range to the parent.
    fn perform_operation(&self, op: MemoryOperation, offset: u64, len: u64) -> Result<()> {
        let want = op_extent(offset, len, self.length)?;
        if want == 0 {
            // Nothing to do; an offset past the end must not be moved into the parent.
            return Ok(());
        }
        self.parent
            .perform_operation(op, self.offset + offset, want)
    }

    /// Forwards to the parent: the state of the parent's whole memory changes, as in
    /// IOKit.
    fn set_purgeable(&self, req: PurgeableRequest) -> Result<PurgeableState> {
        self.parent.set_purgeable(req)
    }

    /// The parent's (a window of pageable buffer memory is pageable buffer memory).
    fn pageable_buffer(&self) -> bool {
        self.parent.pageable_buffer()
    }
}

impl core::fmt::Debug for SubMemoryDescriptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SubMemoryDescriptor")
            .field("offset", &self.offset)
            .field("length", &self.length)
            .field("direction", &self.direction)
            .finish()
    }
}
