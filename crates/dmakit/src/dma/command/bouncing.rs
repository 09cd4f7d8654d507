//! Bounce buffers for a preparation: per-page bouncing of the pages out of the device's
//! reach, or one contiguous buffer for the whole transfer.

use super::*;

impl<P: Platform + Clone + 'static> DmaCommand<P> {
    /// Per-page bouncing (IOKit's first choice when only the address limit is broken): the
    /// pages out of the device's reach get bounce pages (same offset within the page), the
    /// rest is used in place. Returns whether `prep` now has that route; `false` (nothing
    /// held) when the bounce pages cannot be had or the result still breaks the spec, so the
    /// caller bounces the whole transfer.
    pub(super) fn per_page(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &mut Preparation<P>,
    ) -> Result<bool> {
        let Some(pool) = self.owner.pool.as_ref() else {
            return Ok(false);
        };
        let page = self.platform.page_size();
        // Count the bounce pages first, run by run, so a huge descriptor out of reach
        // costs neither a page-by-page walk nor a list longer than the pool can back.
        let mut count = 0u64;
        self.out_of_reach_runs(md, prep, &mut |_, a, len| {
            count = count.saturating_add(page.pages_spanned(a, len).unwrap_or(u64::MAX));
        })?;
        if count == 0 {
            return Ok(false);
        }
        let Some(bytes) = count.checked_mul(page.bytes()) else {
            return Ok(false);
        };
        let Ok(buffer) = pool.take(bytes, self.window(), page.bytes(), false) else {
            return Ok(false);
        };
        let mut pieces = Vec::new();
        let walked = self.out_of_reach_runs(md, prep, &mut |x, a, len| {
            // One piece per page of the run.
            let mut done = 0;
            while done < len {
                let at = a + done;
                let n = (page.bytes() - page.offset(at)).min(len - done);
                let slot = pieces.len() as u64;
                pieces.push(PagePiece {
                    x: x + done,
                    len: n,
                    buf_off: slot * page.bytes() + page.offset(at),
                    addr: 0,
                });
                done += n;
            }
        });
        // Every bounce page must be in reach itself (its address recorded on the way).
        let reached = walked.is_ok()
            && pieces
                .iter_mut()
                .all(|p| match buffer.physical_segment(p.buf_off) {
                    Ok(s) if self.spec.reaches(s.addr.0, p.len) => {
                        p.addr = s.addr.0;
                        true
                    }
                    _ => false,
                });
        prep.route = Route::PerPage {
            buffer: Box::new(buffer),
            bytes,
            pieces,
        };
        if walked.is_err() || !reached || self.preflight(md, prep)?.is_some() {
            self.owner.release_route(prep)?;
            return walked.map(|()| false);
        }
        Ok(true)
    }

    /// Calls `f(prepared offset, physical address, length)` for each run of `prep`'s
    /// memory whose pages the spec's address window does not reach (a page that reaches
    /// past either end of the window counts whole), in order, a physical segment at a
    /// time: at most two runs per segment, below and above the window, found without
    /// walking the pages.
    pub(super) fn out_of_reach_runs(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        f: &mut dyn FnMut(u64, u64, u64),
    ) -> Result<()> {
        let page = self.platform.page_size();
        let (lo, hi) = (
            self.spec.min_address() as u128,
            self.spec.max_address() as u128,
        );
        let mask = page.mask() as u128;
        let mut x = 0;
        while x < prep.length {
            let seg = md.physical_segment(prep.offset + x)?;
            let len = seg.len.min(prep.length - x);
            let start = seg.addr.0 as u128;
            // Exclusive end; u128 keeps a segment ending at the top of the space exact.
            let end = start + len as u128;
            // Below: the pages that start under the window's first byte.
            let low = (start < lo).then(|| ((lo + mask) & !mask).min(end));
            // Above: the pages that end past the window's last byte.
            let high = (end > hi + 1).then(|| ((hi + 1) & !mask).max(start));
            let runs = match (low, high) {
                (Some(l), Some(h)) if l >= h => [Some((start, end)), None],
                (l, h) => [l.map(|l| (start, l)), h.map(|h| (h, end))],
            };
            for (a, b) in runs.into_iter().flatten() {
                // Both ends lie within the segment, so each fits a u64.
                f(x + (a - start) as u64, a as u64, (b - a) as u64);
            }
            x += len;
        }
        Ok(())
    }

    /// Checks a bounced route against the spec and fills it for a device that reads.
    pub(super) fn finish_bounce(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &mut Preparation<P>,
        sync: bool,
    ) -> Result<()> {
        if let Some(r) = self.preflight(md, prep)? {
            if r.constraint == Constraint::MaxSegments {
                return Err(Error::NoSpace {
                    what: "DMA transfer needs more segments than the spec's max_segments, even in contiguous memory",
                    requested: prep.length,
                    align: 0,
                    free: self.spec.max_segments() as u64,
                });
            }
            return Err(Error::NotAligned {
                what:
                    "even a bounce buffer cannot meet the spec (see the constraint at this address)",
                value: r.addr,
                align: self.spec.alignment().max(self.spec.internal_alignment()),
            });
        }
        if sync && prep.device_reads() {
            self.copy(md, prep, true)?;
        }
        Ok(())
    }

    /// A bounce buffer for `length` bytes inside `window` (physical, inclusive), keeping the low address bits
    /// the device interprets (e.g. NVMe's page offset) when that breaks no alignment.
    pub(super) fn take_bounce(
        &self,
        md: &dyn MemoryDescriptor,
        offset: u64,
        length: u64,
        window: (u64, u64),
    ) -> Result<Bounce<P>> {
        let pool = self.owner.pool.as_ref().ok_or(Error::NoResources {
            what: "bounce pool (the transfer needs bounce memory, per page or whole, and the command has no bounce pool)",
            limit: 0,
        })?;
        let s = &self.spec;
        let src = md.physical_segment(offset)?.addr.0;
        let keep_mask = (1u64 << s.offset_bits()) - 1;
        let start_align = s.alignment().max(s.length_alignment());
        let data_off = match src & keep_mask {
            k if k.is_multiple_of(start_align) => k,
            _ => 0,
        };
        let page = self.platform.page_size().bytes();
        let align = start_align
            .max(s.internal_alignment())
            .max(keep_mask + 1)
            .max(page)
            .max(boundary_alignment(s.boundary(), page, data_off + length));
        let buffer = pool.take(data_off + length, window, align, true)?;
        match buffer.physical_segment(0) {
            Ok(seg) => Ok(Bounce {
                buffer,
                data_off,
                base: seg.addr,
            }),
            Err(e) => {
                drop(buffer);
                pool.give_back(data_off + length);
                Err(e)
            }
        }
    }

    pub(super) fn give_back(&self, length: u64, bounce: &Bounce<P>) {
        if let Some(pool) = &self.owner.pool {
            pool.give_back(bounce.data_off + length);
        }
    }
}
