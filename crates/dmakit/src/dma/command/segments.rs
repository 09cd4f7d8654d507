//! Handing the device its segments: `gen_segments` into a caller's buffer, or the
//! [`Segments`] iterator.

use super::*;

impl<P: Platform + Clone + 'static> DmaCommand<P> {
    /// Writes segments from `*offset` (relative to the prepared offset) into `out` in the
    /// command's [`SegmentFormat`], as many as fit (and `max_segments` allows), and advances
    /// `*offset` past the bytes described (IOKit `genIOVMSegments`). Returns the number of
    /// segments, at least one. Allocates nothing.
    ///
    /// `*offset` at or past the prepared length is [`Error::Overrun`] (the transfer is fully
    /// described) and leaves it unchanged. An offset that is not where a segment can start
    /// (the device address there breaks `internal_alignment`, or the offset is not a
    /// multiple of `length_alignment`) is [`Error::NotAligned`]; IOKit instead starts a
    /// segment at any offset, handing the device one that breaks its alignment unless the
    /// command walks in cursor mode. Room for no segment is
    /// [`Error::BadArgument`]; not prepared is [`Error::NotReady`]. As in IOKit, not prepared
    /// is checked first, then the room, then the offset. On an error `*offset` is
    /// unchanged.
    /// IOKit: `genIOVMSegments`, `gen32IOVMSegments`, `gen64IOVMSegments`.
    ///
    /// A list with room for two segments at a time, filled in pieces:
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{DmaCommand, PrepareOptions, SegmentFormat, SegmentSpec};
    /// use dmakit::{Direction, Error};
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let spec = SegmentSpec::builder().max_segment_size(0x1000).build()?;
    /// let mut cmd = DmaCommand::builder(machine.clone())
    ///     .spec(spec)
    ///     .format(SegmentFormat::Little64)
    ///     .build()?;
    /// let md: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::new(
    ///     machine,
    ///     BufferOptions::new(0x5000, Direction::In),
    /// )?);
    /// cmd.set_memory_descriptor(md)?;
    /// cmd.prepare(PrepareOptions::new())?;
    /// let mut list = [0u8; 2 * 16]; // two Little64 elements
    /// let (mut offset, mut calls, mut segments) = (0, 0, 0);
    /// while offset < 0x5000 {
    ///     segments += cmd.gen_segments(&mut offset, &mut list)?; // at most two per call
    ///     calls += 1;
    /// }
    /// assert_eq!((segments, calls), (5, 3));
    /// assert!(matches!(cmd.gen_segments(&mut offset, &mut list), Err(Error::Overrun { .. })));
    /// cmd.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn gen_segments(&self, offset: &mut u64, out: &mut [u8]) -> Result<usize> {
        let (prep, md) = self.parts("gen_segments on an unprepared DMA command")?;
        let slots = (out.len() / self.format.element_size()).min(self.spec.max_segments() as usize);
        if slots == 0 {
            return Err(Error::BadArgument {
                what: "gen_segments needs room for at least one segment",
                value: out.len() as u64,
            });
        }
        self.check_walk_start(md, prep, *offset)?;
        let mut count = 0usize;
        let mut at = *offset;
        let first = at == 0;
        self.walk(md, prep, at, &mut |seg, last| {
            if count == slots {
                return Ok(false);
            }
            self.check_emitted(seg, first && count == 0, last);
            self.format.write(out, count, seg)?;
            count += 1;
            at += seg.len;
            Ok(true)
        })?;
        *offset = at;
        Ok(count)
    }

    /// The segments of the preparation, decoded, from its first byte (IOKit
    /// `genIOVMSegments` in a loop). Each item is one segment or the error that stopped the
    /// walk; not prepared yields one [`Error::NotReady`]. Allocates nothing.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{DmaCommand, IoSegment, PrepareOptions, SegmentSpec};
    /// use dmakit::Direction;
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// // Segments never cross a 64 KiB boundary.
    /// let spec = SegmentSpec::builder().boundary(0x1_0000).build()?;
    /// let mut cmd = DmaCommand::builder(machine.clone()).spec(spec).build()?;
    /// let md: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::new(
    ///     machine,
    ///     BufferOptions::new(0x2_0000, Direction::Out).contiguous(true),
    /// )?);
    /// cmd.set_memory_descriptor(md)?;
    /// cmd.prepare(PrepareOptions::new())?;
    /// let segs: Vec<IoSegment> = cmd.segments().collect::<dmakit::Result<_>>()?;
    /// assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), 0x2_0000);
    /// for s in &segs {
    ///     assert_eq!(s.addr.0 >> 16, (s.addr.0 + s.len - 1) >> 16, "{s:?} crosses 64 KiB");
    /// }
    /// cmd.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn segments(&self) -> Segments<'_, P> {
        self.segments_from(0)
    }

    /// [`segments`](Self::segments) from prepared offset `offset` (a place where a segment
    /// can start, see [`gen_segments`](Self::gen_segments)).
    pub fn segments_from(&self, offset: u64) -> Segments<'_, P> {
        Segments {
            cmd: self,
            offset,
            first: true,
            done: false,
        }
    }

    /// The next segment from prepared offset `x`, and whether more follow.
    pub(super) fn segment_at(&self, x: u64) -> Result<IoSegment> {
        let (prep, md) = self.parts("segments of an unprepared DMA command")?;
        self.check_walk_start(md, prep, x)?;
        let mut got = None;
        self.walk(md, prep, x, &mut |seg, last| {
            if got.is_some() {
                return Ok(false);
            }
            self.check_emitted(seg, x == 0, last);
            got = Some(seg);
            Ok(true)
        })?;
        got.ok_or(Error::Internal {
            what: "a segment walk inside the preparation produced nothing",
        })
    }

    /// Whether a walk may start at prepared offset `x`.
    pub(super) fn check_walk_start(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        x: u64,
    ) -> Result<()> {
        if x >= prep.length {
            return Err(Error::Overrun {
                what: "segment walk of a DMA command (the transfer is fully described)",
                offset: x,
                length: prep.length,
            });
        }
        if x == 0 {
            return Ok(());
        }
        let s = &self.spec;
        if !x.is_multiple_of(s.length_alignment()) {
            return Err(Error::NotAligned {
                what: "segment walk offset (the segments before it would break length_alignment)",
                value: x,
                align: s.length_alignment(),
            });
        }
        let (addr, _) = self.raw_run(md, prep, x)?;
        if !addr.is_multiple_of(s.internal_alignment()) {
            return Err(Error::NotAligned {
                what: "segment walk offset (the device address there breaks internal_alignment)",
                value: addr,
                align: s.internal_alignment(),
            });
        }
        Ok(())
    }

    /// With dma-debug, records a generated segment that breaks the spec (a dmakit bug).
    pub(super) fn check_emitted(&self, seg: IoSegment, first: bool, last: bool) {
        #[cfg(feature = "dma-debug")]
        if let Some(c) = self.violates(seg, first, last) {
            crate::debug::record(
                crate::debug::ViolationKind::SegmentBreaksSpec,
                self.owner.id,
                || alloc_crate::format!("segment {seg:?} breaks {c} of {:?}", self.spec),
            );
        }
        #[cfg(not(feature = "dma-debug"))]
        let _ = (seg, first, last);
    }
}

/// The decoded segments of a prepared [`DmaCommand`], from
/// [`DmaCommand::segments`]. Stops after the last segment or the first error.
#[must_use = "iterators do nothing unless consumed"]
pub struct Segments<'a, P: Platform + Clone + 'static> {
    cmd: &'a DmaCommand<P>,
    offset: u64,
    first: bool,
    done: bool,
}

impl<P: Platform + Clone + 'static> Iterator for Segments<'_, P> {
    type Item = Result<IoSegment>;

    fn next(&mut self) -> Option<Result<IoSegment>> {
        if self.done {
            return None;
        }
        let length = self.cmd.prep.as_ref().map_or(0, |p| p.length);
        if !self.first && self.offset >= length {
            self.done = true;
            return None;
        }
        self.first = false;
        match self.cmd.segment_at(self.offset) {
            Ok(seg) => {
                self.offset += seg.len;
                Some(Ok(seg))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
