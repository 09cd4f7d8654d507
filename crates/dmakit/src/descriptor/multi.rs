//! [`MultiMemoryDescriptor`]: several descriptors one after another (IOKit's
//! IOMultiMemoryDescriptor).
//!
//! Each part must allow the multi-descriptor's direction ([`Error::BadArgument`] otherwise;
//! IOKit only asserts this in debug kernels). Prepare prepares the parts in order and, if one
//! fails, completes those already prepared; with no parts it is
//! [`Error::Internal`] (IOKit: kIOReturnInternalError). Physical segments never coalesce
//! across parts.

use super::{check_range, clamp, past_end, MemoryDescriptor, PrepOwner, Segment, Source};
use crate::{Direction, Error, PageSize, Result};
use alloc_crate::sync::Arc;
use alloc_crate::vec::Vec;

/// Descriptors concatenated.
///
/// # Invariants
///
/// `starts[i]` is the offset of part `i`; `length` is the sum of the parts' lengths.
pub struct MultiMemoryDescriptor {
    parts: Vec<Arc<dyn MemoryDescriptor>>,
    starts: Vec<u64>,
    length: u64,
    direction: Direction,
    maps: crate::map::MapRegistry,
}

impl MultiMemoryDescriptor {
    /// The parts in order, seen as one descriptor for `direction`.
    pub fn new(parts: Vec<Arc<dyn MemoryDescriptor>>, direction: Direction) -> Result<Self> {
        let mut starts = Vec::with_capacity(parts.len());
        let mut length: u64 = 0;
        for (i, p) in parts.iter().enumerate() {
            if !p.direction().covers(direction) {
                return Err(Error::BadArgument {
                    what: "multi-descriptor part whose direction does not allow the multi's (part index)",
                    value: i as u64,
                });
            }
            starts.push(length);
            length = length.checked_add(p.length()).ok_or(Error::Overflow {
                what: "multi-descriptor length",
                start: length,
                len: p.length(),
            })?;
        }
        Ok(MultiMemoryDescriptor {
            parts,
            starts,
            length,
            direction,
            maps: crate::map::MapRegistry::new(),
        })
    }

    /// The parts.
    pub fn parts(&self) -> &[Arc<dyn MemoryDescriptor>] {
        &self.parts
    }

    /// The part holding `offset` (< length) and the offset inside it.
    fn locate(&self, offset: u64) -> (usize, u64) {
        let mut i = self.starts.partition_point(|&s| s <= offset) - 1;
        while offset - self.starts[i] >= self.parts[i].length() {
            i += 1;
        }
        (i, offset - self.starts[i])
    }

    fn each(
        &self,
        offset: u64,
        n: usize,
        mut step: impl FnMut(&dyn MemoryDescriptor, u64, usize, usize) -> usize,
    ) -> usize {
        let mut done = 0;
        while done < n {
            let (i, inner) = self.locate(offset + done as u64);
            let part = &self.parts[i];
            let k = ((part.length() - inner) as usize).min(n - done);
            let got = step(part.as_ref(), inner, done, k);
            done += got;
            if got < k {
                break;
            }
        }
        done
    }
}

impl MemoryDescriptor for MultiMemoryDescriptor {
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
        self.parts
            .first()
            .map(|p| p.page_size())
            .unwrap_or_default()
    }

    fn prepare_for(&self, owner: PrepOwner, dir: Direction) -> Result<()> {
        if self.parts.is_empty() {
            return Err(Error::Internal {
                what: "prepare of a multi-descriptor with no parts",
            });
        }
        let dir = if dir == Direction::None {
            self.direction
        } else {
            dir
        };
        for (i, p) in self.parts.iter().enumerate() {
            if let Err(e) = p.prepare_for(owner, dir) {
                for q in &self.parts[..i] {
                    let _ = q.complete_for(owner);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn complete_for(&self, owner: PrepOwner) -> Result<()> {
        let mut result = Ok(());
        for p in &self.parts {
            if let Err(e) = p.complete_for(owner) {
                result = Err(e);
            }
        }
        result
    }

    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        let n = clamp(offset, buf.len(), self.length);
        self.each(offset, n, |p, inner, at, k| {
            p.read_bytes(inner, &mut buf[at..at + k])
        })
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        let n = clamp(offset, data.len(), self.length);
        self.each(offset, n, |p, inner, at, k| {
            p.write_bytes(inner, &data[at..at + k])
        })
    }

    fn physical_segment(&self, offset: u64) -> Result<Segment> {
        if offset >= self.length {
            return Err(past_end("multi-descriptor", offset, self.length));
        }
        let (i, inner) = self.locate(offset);
        self.parts[i].physical_segment(inner)
    }

    fn leaves(&self, offset: u64, len: u64, f: &mut dyn FnMut(super::LeafRange)) {
        let end = offset.saturating_add(len).min(self.length);
        for (p, &start) in self.parts.iter().zip(&self.starts) {
            let (lo, hi) = (start.max(offset), (start + p.length()).min(end));
            if lo < hi {
                p.leaves(lo - start, hi - lo, f);
            }
        }
    }

    fn sources(&self, offset: u64, len: u64, f: &mut dyn FnMut(Source)) -> Result<()> {
        check_range("multi-descriptor", offset, len, self.length)?;
        let end = offset + len;
        for (p, &start) in self.parts.iter().zip(&self.starts) {
            let (lo, hi) = (start.max(offset), (start + p.length()).min(end));
            if lo < hi {
                p.sources(lo - start, hi - lo, f)?;
            }
        }
        Ok(())
    }
}

impl core::fmt::Debug for MultiMemoryDescriptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MultiMemoryDescriptor")
            .field("parts", &self.parts.len())
            .field("length", &self.length)
            .field("direction", &self.direction)
            .finish()
    }
}
