//! [`MultiMemoryDescriptor`]: several descriptors one after another (IOKit's
//! IOMultiMemoryDescriptor).
//!
//! Each part must allow the multi-descriptor's direction ([`Error::BadArgument`] naming the
//! part otherwise; IOKit only asserts this in debug kernels), and all parts must agree on
//! whether they are pageable buffer memory ([`MemoryDescriptor::pageable_buffer`];
//! `BadArgument` naming the first part that differs from part 0, as IOKit refuses).
//! Prepare prepares the parts in order and, if one fails, completes those already
//! prepared; with no parts it is [`Error::Internal`] (IOKit: kIOReturnInternalError).
//! Physical segments never coalesce across parts.
//!
//! The preparation identifier is unprepared (or unsupported) if a part's is, the first
//! such part in order deciding, as in IOKit; otherwise (with no parts too) one of its own,
//! renewed whenever a part's changes (IOKit keeps the first one it hands out for good, so
//! a driver could not tell that the parts were prepared again and their pages may have
//! moved). Purgeable state changes every part
//! and reports the worst old state.

use super::{
    check_range, op_extent, op_over_parts, past_end, whole_or_nothing, LazyId, MemoryDescriptor,
    MemoryOperation, PrepOwner, PurgeableRequest, PurgeableState, Segment, Source,
    PREPARATION_ID_UNPREPARED, PREPARATION_ID_UNSUPPORTED,
};
use crate::{Direction, Error, PageSize, Result};
use alloc_crate::sync::Arc;
use alloc_crate::vec::Vec;

/// Descriptors concatenated.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor, MultiMemoryDescriptor};
/// use dmakit::{Direction, Error};
/// use std::sync::Arc;
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// // A header and a payload from different places, sent as one.
/// let header: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine.clone(), b"HDR:", Direction::Out)?);
/// let payload: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine.clone(), b"data", Direction::Out)?);
/// let packet = MultiMemoryDescriptor::new(vec![header.clone(), payload], Direction::Out)?;
/// assert_eq!((packet.length(), packet.parts().len()), (8, 2));
/// let mut all = [0u8; 8];
/// assert_eq!(packet.read_bytes(0, &mut all), 8);
/// assert_eq!(&all, b"HDR:data");
/// // Each part must allow the direction: a part only a device may read cannot be
/// // written by one.
/// let refused = MultiMemoryDescriptor::new(vec![header], Direction::In);
/// assert!(matches!(refused, Err(Error::BadArgument { value: 0, .. })));
/// # Ok::<(), dmakit::Error>(())
/// ```
///
/// # Invariants
///
/// `starts[i]` is the offset of part `i`; `length` is the sum of the parts' lengths; every
/// part allows `direction` and has `pageable_buffer() == pageable`.
pub struct MultiMemoryDescriptor {
    parts: Vec<Arc<dyn MemoryDescriptor>>,
    starts: Vec<u64>,
    length: u64,
    direction: Direction,
    maps: crate::map::MapRegistry,
    pageable: bool,
    /// (the parts' preparation identifiers last seen, this one's for them).
    prep: crate::sync::Mutex<(Vec<u64>, u64)>,
    id: LazyId,
}

/// A multi- or interleaved descriptor's preparation identifier over its parts' identifiers
/// `ids`, given the last (`seen`, own) pair: the first part in order that is unprepared or
/// does not track preparations decides (as IOKit's multi-descriptor looks at its parts);
/// otherwise, no parts included, an identifier of its own.
pub(crate) fn composite_preparation_id(
    ids: Vec<u64>,
    state: &crate::sync::Mutex<(Vec<u64>, u64)>,
) -> u64 {
    if let Some(&special) = ids
        .iter()
        .find(|&&id| id == PREPARATION_ID_UNPREPARED || id == PREPARATION_ID_UNSUPPORTED)
    {
        return special;
    }
    let mut s = state.lock();
    if s.0 != ids || s.1 == 0 {
        *s = (ids, super::next_id());
    }
    s.1
}

impl MultiMemoryDescriptor {
    /// The parts in order, seen as one descriptor for `direction` (IOKit
    /// `withDescriptors`). Refused with [`Error::BadArgument`] whose value is the index of
    /// the offending part when a part's direction does not allow `direction`, or when a
    /// part's [`pageable_buffer`](MemoryDescriptor::pageable_buffer) differs from part 0's.
    ///
    /// The length is the sum of the parts' lengths now, as in IOKit, and so is the layout:
    /// a part whose length changes later (a buffer's `set_length`) keeps its place, seen up
    /// to the next part's start, and a part that shrank leaves a hole that copies and
    /// segments do not cross. (IOKit's segment walk uses the parts' current lengths, so
    /// there the later parts shift instead.)
    pub fn new(parts: Vec<Arc<dyn MemoryDescriptor>>, direction: Direction) -> Result<Self> {
        let mut starts = Vec::with_capacity(parts.len());
        let mut length: u64 = 0;
        let pageable = parts.first().is_some_and(|p| p.pageable_buffer());
        for (i, p) in parts.iter().enumerate() {
            if !p.direction().covers(direction) {
                return Err(Error::BadArgument {
                    what: "multi-descriptor part whose direction does not allow the multi's (part index)",
                    value: i as u64,
                });
            }
            if p.pageable_buffer() != pageable {
                return Err(Error::BadArgument {
                    what: "multi-descriptor part that is not pageable buffer memory like part 0, or is when part 0 is not (part index)",
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
            pageable,
            prep: crate::sync::Mutex::new((Vec::new(), 0)),
            id: LazyId::default(),
        })
    }

    /// The parts.
    pub fn parts(&self) -> &[Arc<dyn MemoryDescriptor>] {
        &self.parts
    }

    /// Where part `i` sits in the multi now: from its start to where its bytes end (its
    /// length may have changed since the multi was made, as a buffer's `set_length` does;
    /// the layout does not move: a part that shrank leaves a hole, one that grew is seen
    /// only up to the next part).
    fn span(&self, i: usize) -> (u64, u64) {
        let start = self.starts[i];
        let next = self.starts.get(i + 1).copied().unwrap_or(self.length);
        (
            start,
            start.saturating_add(self.parts[i].length()).min(next),
        )
    }

    /// The part holding `offset` and the offset inside it; `None` past the end or in the
    /// hole a part left by shrinking.
    fn locate(&self, offset: u64) -> Option<(usize, u64)> {
        let i = self.placed(offset)?;
        let (start, end) = self.span(i);
        (offset < end).then_some((i, offset - start))
    }

    /// The part placed at `offset` when the multi was made (whatever its length now).
    fn placed(&self, offset: u64) -> Option<usize> {
        self.starts.partition_point(|&s| s <= offset).checked_sub(1)
    }

    fn each(
        &self,
        offset: u64,
        n: usize,
        mut step: impl FnMut(&dyn MemoryDescriptor, u64, usize, usize) -> usize,
    ) -> usize {
        let mut done = 0;
        while done < n {
            let at = offset + done as u64;
            let Some((i, inner)) = self.locate(at) else {
                break;
            };
            let part = &self.parts[i];
            let k = usize::try_from(self.span(i).1 - at)
                .unwrap_or(usize::MAX)
                .min(n - done);
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
        let n = whole_or_nothing(offset, buf.len(), self.length);
        self.each(offset, n, |p, inner, at, k| {
            p.read_bytes(inner, &mut buf[at..at + k])
        })
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        let n = whole_or_nothing(offset, data.len(), self.length);
        self.each(offset, n, |p, inner, at, k| {
            p.write_bytes(inner, &data[at..at + k])
        })
    }

    fn physical_segment(&self, offset: u64) -> Result<Segment> {
        if offset >= self.length {
            return Err(past_end("multi-descriptor", offset, self.length));
        }
        let (i, inner) = self.locate(offset).ok_or(Error::OutOfBounds {
            what: "multi-descriptor part (shorter now than when the multi was made)",
            offset,
            len: 1,
            limit: self.length,
        })?;
        let seg = self.parts[i].physical_segment(inner)?;
        // Never past this part's place in the multi.
        let room = self.span(i).1 - offset;
        Ok(Segment {
            len: seg.len.min(room),
            ..seg
        })
    }

    /// Parts are found where they were when the multi was made, so a part that shrank
    /// since still answers for the place it had (and its memory, if it is a buffer).
    fn prepared_segment(&self, offset: u64) -> Result<Segment> {
        if offset >= self.length {
            return Err(past_end("multi-descriptor", offset, self.length));
        }
        let i = self
            .placed(offset)
            .ok_or_else(|| past_end("multi-descriptor", offset, self.length))?;
        let next = self.starts.get(i + 1).copied().unwrap_or(self.length);
        let s = self.parts[i].prepared_segment(offset - self.starts[i])?;
        Ok(Segment {
            len: s.len.min(next - offset),
            ..s
        })
    }

    fn leaves(&self, offset: u64, len: u64, f: &mut dyn FnMut(super::LeafRange)) {
        let end = offset.saturating_add(len).min(self.length);
        for (i, p) in self.parts.iter().enumerate() {
            let (start, stop) = self.span(i);
            let (lo, hi) = (start.max(offset), stop.min(end));
            if lo < hi {
                p.leaves(lo - start, hi - lo, f);
            }
        }
    }

    fn sources(&self, offset: u64, len: u64, f: &mut dyn FnMut(Source)) -> Result<()> {
        check_range("multi-descriptor", offset, len, self.length)?;
        let end = offset + len;
        let mut covered = 0;
        for (i, p) in self.parts.iter().enumerate() {
            let (start, stop) = self.span(i);
            let (lo, hi) = (start.max(offset), stop.min(end));
            if lo < hi {
                p.sources(lo - start, hi - lo, f)?;
                covered += hi - lo;
            }
        }
        if covered < len {
            return Err(Error::OutOfBounds {
                what: "multi-descriptor range (a part is shorter now than when the multi was made)",
                offset,
                len,
                limit: offset + covered,
            });
        }
        Ok(())
    }

    fn preparation_id(&self) -> u64 {
        let ids = self.parts.iter().map(|p| p.preparation_id()).collect();
        composite_preparation_id(ids, &self.prep)
    }

    fn descriptor_id(&self) -> u64 {
        self.id.get()
    }

    /// Forwards each part's share of the range; stops at the first part that falls short.
    fn perform_operation(&self, op: MemoryOperation, offset: u64, len: u64) -> Result<()> {
        let want = op_extent(offset, len, self.length)?;
        let end = offset + want;
        let pieces = self.parts.iter().enumerate().filter_map(|(i, p)| {
            let (start, stop) = self.span(i);
            let (lo, hi) = (start.max(offset), stop.min(end));
            (lo < hi).then(|| (p.as_ref(), lo - start, hi - lo))
        });
        op_over_parts(op, want, pieces)
    }

    /// Every part in order; the first failure stops there (earlier parts keep the new
    /// state, as in IOKit).
    fn set_purgeable(&self, req: PurgeableRequest) -> Result<PurgeableState> {
        let mut worst = PurgeableState::NonVolatile;
        for p in &self.parts {
            worst = worst.max(p.set_purgeable(req)?);
        }
        Ok(worst)
    }

    fn pageable_buffer(&self) -> bool {
        self.pageable
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
