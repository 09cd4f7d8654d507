//! The segment walk: the runs a preparation hands the device, checked against the spec
//! (IOKit's preflight), and the segments they make.

use super::*;

/// A segment that walks emit, and whether it ends the transfer.
pub(super) type Emit<'a> = dyn FnMut(IoSegment, bool) -> Result<bool> + 'a;

impl<P: Platform + Clone + 'static> DmaCommand<P> {
    /// The first constraint `seg` breaks, if any (`first`/`last`: its place in the transfer).
    pub(super) fn violates(&self, seg: IoSegment, first: bool, last: bool) -> Option<Constraint> {
        let s = &self.spec;
        let (a, len) = (seg.addr.0, seg.len);
        if !s.reaches(a, len) {
            return Some(Constraint::AddressWindow);
        }
        if len > s.max_segment_size() {
            return Some(Constraint::MaxSegmentSize);
        }
        if first && !a.is_multiple_of(s.alignment()) {
            return Some(Constraint::Alignment);
        }
        if !first && !a.is_multiple_of(s.internal_alignment()) {
            return Some(Constraint::InternalAlignment);
        }
        // An end of 2^64 (an IO window at the top) wraps to 0, a multiple of every alignment.
        if !last
            && (!len.is_multiple_of(s.length_alignment())
                || !a.wrapping_add(len).is_multiple_of(s.internal_alignment()))
        {
            return Some(if len.is_multiple_of(s.length_alignment()) {
                Constraint::InternalAlignment
            } else {
                Constraint::LengthAlignment
            });
        }
        if s.boundary() != 0 && a / s.boundary() != (a + (len - 1)) / s.boundary() {
            return Some(Constraint::Boundary);
        }
        None
    }

    /// The raw run at prepared offset `x`: its device address and length (to the end).
    pub(super) fn raw_run(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        x: u64,
    ) -> Result<(u64, u64)> {
        Ok(match &prep.route {
            Route::Direct => {
                let seg = prep.segment(md, prep.offset + x)?;
                (seg.addr.0, seg.len.min(prep.length - x))
            }
            Route::Bounced(b) => (b.base.0 + b.data_off + x, prep.length - x),
            Route::PerPage { pieces, .. } => {
                let i = pieces.partition_point(|p| p.x + p.len <= x);
                match pieces.get(i) {
                    Some(p) if p.x <= x => (p.addr + (x - p.x), p.len - (x - p.x)),
                    next => {
                        let seg = prep.segment(md, prep.offset + x)?;
                        let len = seg.len.min(prep.length - x);
                        (seg.addr.0, next.map_or(len, |p| len.min(p.x - x)))
                    }
                }
            }
            Route::Mapped {
                iova,
                first_off,
                table,
                ..
            } => {
                let i = table.partition_point(|r| r.x <= x).saturating_sub(1);
                match table.get(i) {
                    None => (iova.0 + first_off + x, prep.length - x),
                    Some(r) => {
                        let end = table.get(i + 1).map_or(prep.length, |n| n.x);
                        (r.io + (x - r.x), end - x)
                    }
                }
            }
        })
    }

    /// Walks the segments of `prep` from prepared offset `from`, coalescing contiguous runs
    /// and cutting at the maximum segment size and boundaries (a cut moves down so the
    /// length is a multiple of the length alignment and the end is on the internal
    /// alignment, as IOKit trims a cut segment). `emit` gets each finished segment; returning
    /// `false` stops the walk without consuming it.
    pub(super) fn walk(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        from: u64,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        let mut x = from;
        let mut cur: Option<IoSegment> = None;
        while x < prep.length {
            let (addr, run) = self.raw_run(md, prep, x)?;
            if let Some(c) = cur {
                if c.addr.0.checked_add(c.len) != Some(addr) {
                    cur = None;
                    if !emit(c, false)? {
                        return Ok(());
                    }
                }
            }
            let c = cur.get_or_insert(IoSegment {
                addr: IoAddr(addr),
                len: 0,
            });
            let room = self.room(c);
            if run <= room {
                c.len += run;
                x += run;
                continue;
            }
            // The segment ends inside this run, and more of the transfer follows.
            let cut = self.cut(c.addr.0, c.addr.0 + c.len + room)?;
            let seg_start = x - c.len;
            c.len = cut - c.addr.0;
            x = seg_start + c.len;
            let done = *c;
            cur = None;
            if !emit(done, false)? {
                return Ok(());
            }
        }
        if let Some(c) = cur {
            emit(c, true)?;
        }
        Ok(())
    }

    /// How many more bytes segment `c` may take: up to the maximum segment size, and not
    /// across a boundary.
    #[inline]
    fn room(&self, c: &IoSegment) -> u64 {
        let s = &self.spec;
        let mut room = s.max_segment_size() - c.len;
        if s.boundary() != 0 {
            if let Some(line) = (c.addr.0 / s.boundary() + 1).checked_mul(s.boundary()) {
                room = room.min(line - c.addr.0 - c.len);
            }
        }
        room
    }

    /// Where a segment starting at `start` that may reach no further than `end` ends, so
    /// that its length and its end meet the length and internal alignments; `NotAligned`
    /// when no such end lies after its start.
    #[inline]
    fn cut(&self, start: u64, end: u64) -> Result<u64> {
        let s = &self.spec;
        let q = s.internal_alignment().max(s.length_alignment());
        let cut = if s.length_alignment() > s.internal_alignment() {
            // The length is a multiple of the length alignment, counted from the segment's
            // start (so the end keeps the start's internal alignment).
            let len = end - start;
            start + (len - len % s.length_alignment())
        } else {
            // The end on the internal alignment (a multiple of the length alignment).
            end - end % q
        };
        if cut <= start {
            return Err(Error::NotAligned {
                what: "no segment end meets max_segment_size/boundary and the internal/length alignment",
                value: start,
                align: q,
            });
        }
        Ok(cut)
    }

    /// Walks the whole preparation and returns the first broken constraint, if any.
    pub(super) fn preflight(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
    ) -> Result<Option<BounceReason>> {
        let max = self.spec.max_segments() as u64;
        // More than `max` segments of `max_segment_size` bytes, without a division on
        // every prepare (a product past 2^64 cannot be below a length).
        if self.spec.max_segment_size().saturating_mul(max) < prep.length {
            return self.too_many_segments(md, prep);
        }
        let mut bad = None;
        let mut count = 0u64;
        let walked = self.walk(md, prep, 0, &mut |seg, last| {
            count += 1;
            let broken = self.violates(seg, count == 1, last).or(if count > max {
                Some(Constraint::MaxSegments)
            } else {
                None
            });
            if let Some(constraint) = broken {
                bad = Some(BounceReason {
                    constraint,
                    addr: seg.addr.0,
                    len: seg.len,
                });
                return Ok(false);
            }
            Ok(true)
        });
        match walked {
            Ok(()) => Ok(bad),
            Err(Error::NotAligned { value, .. }) => Ok(Some(BounceReason {
                constraint: Constraint::InternalAlignment,
                addr: value,
                len: 0,
            })),
            Err(e) => Err(e),
        }
    }

    /// The preflight answer for a transfer that needs more segments than `max_segments`
    /// even if every segment were `max_segment_size` long: no route can meet the spec, and
    /// the walk would have counted up to `max_segments` (2^32 by default) segments to say
    /// so. The reason names the first segment, as the walk does when its first segment
    /// breaks the spec.
    pub(super) fn too_many_segments(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
    ) -> Result<Option<BounceReason>> {
        let (mut addr, mut len) = (0, 0);
        self.walk(md, prep, 0, &mut |seg, _| {
            (addr, len) = (seg.addr.0, seg.len);
            Ok(false)
        })
        .or_else(|e| match e {
            Error::NotAligned { .. } => Ok(()),
            e => Err(e),
        })?;
        Ok(Some(BounceReason {
            constraint: Constraint::MaxSegments,
            addr,
            len,
        }))
    }
}
