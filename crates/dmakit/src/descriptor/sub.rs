//! [`SubMemoryDescriptor`]: a window `(offset, length)` of another descriptor (IOKit's
//! IOSubMemoryDescriptor).
//!
//! Prepare and complete forward to the *whole* parent, as in IOKit; byte copies and
//! physical segments forward with the offset shifted and lengths clipped to the window.
//! The direction is the sub-descriptor's own, not the parent's.

use super::{check_range, clamp, past_end, MemoryDescriptor, PrepOwner, Segment, Source};
use crate::{Direction, Error, PageSize, Result};
use alloc_crate::sync::Arc;

/// A window of a parent descriptor.
pub struct SubMemoryDescriptor {
    parent: Arc<dyn MemoryDescriptor>,
    offset: u64,
    length: u64,
    direction: Direction,
    maps: crate::map::MapRegistry,
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
                maps: crate::map::MapRegistry::new(),
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
}

impl MemoryDescriptor for SubMemoryDescriptor {
    fn map_registry(&self) -> Option<&crate::map::MapRegistry> {
        Some(&self.maps)
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

    fn prepare_for(&self, owner: PrepOwner, dir: Direction) -> Result<()> {
        let dir = if dir == Direction::None {
            self.direction
        } else {
            dir
        };
        self.parent.prepare_for(owner, dir)
    }

    fn complete_for(&self, owner: PrepOwner) -> Result<()> {
        self.parent.complete_for(owner)
    }

    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        let n = clamp(offset, buf.len(), self.length);
        self.parent.read_bytes(self.offset + offset, &mut buf[..n])
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        let n = clamp(offset, data.len(), self.length);
        self.parent.write_bytes(self.offset + offset, &data[..n])
    }

    fn physical_segment(&self, offset: u64) -> Result<Segment> {
        if offset >= self.length {
            return Err(past_end("sub-descriptor", offset, self.length));
        }
        let s = self.parent.physical_segment(self.offset + offset)?;
        Ok(Segment {
            addr: s.addr,
            len: s.len.min(self.length - offset),
        })
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
