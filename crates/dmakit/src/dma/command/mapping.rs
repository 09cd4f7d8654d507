//! Mapping a preparation through an IOMMU: IO pages per physical run, as IOKit lays them out.

use super::*;
use crate::descriptor::Segment;
use crate::mapper::undo_map;
use crate::PageSize;

/// `what` of an [`Error::LeftMapped`] from a prepare.
const WHAT: &str = "DMA command mapping";

impl<P: Platform + Clone + 'static> DmaCommand<P> {
    /// Maps `[offset, offset + length)` of `md` through `mapper` as IOKit lays out an IO
    /// allocation: each physical run gets IO pages of its own, at its own offset in the
    /// page, so runs that meet at page boundaries form one IO run and each other run starts
    /// a new one (listed in the route's table). On an error nothing stays mapped, unless
    /// undoing the mapping failed too: then the error is [`Error::LeftMapped`], and the
    /// memory must stay held ([`hold_left_mapped`](Self::hold_left_mapped)).
    pub(super) fn map(
        &self,
        mapper: &dyn Mapper,
        md: &dyn MemoryDescriptor,
        offset: u64,
        length: u64,
        dir: Direction,
    ) -> Result<Route<P>> {
        let page = mapper.page_size();
        let access = match dir {
            Direction::Out => Access::READ,
            Direction::In => Access::WRITE,
            _ => Access::READ_WRITE,
        };
        let first = md.physical_segment(offset)?;
        let first_off = page.offset(first.addr.0);
        let (iova, pages, table) = if first.len >= length {
            // One physical run (the common case): allocated and mapped in one call.
            let pages = page.pages_spanned(first.addr.0, length).unwrap_or(0);
            let place = self.iova_placement(page.bytes(), first_off, length, pages);
            let pa = PhysAddr(page.trunc(first.addr.0));
            (
                mapper.iovm_map_run(pages, &place, pa, access)?,
                pages,
                Vec::new(),
            )
        } else {
            self.map_runs(mapper, md, (offset, length), first, access)?
        };
        let reached = match table.len() {
            0 => self.spec.reaches(iova.0 + first_off, length),
            _ => table.iter().enumerate().all(|(i, r)| {
                let to = table.get(i + 1).map_or(length, |n| n.x);
                self.spec.reaches(r.io, to - r.x)
            }),
        };
        if !reached {
            let outside = Error::NoSuitableMemory {
                what: "the mapper's IO addresses are outside the device's window",
                requested: length,
                align: page.bytes(),
                limit: self.spec.max_address(),
                contiguous: true,
            };
            return Err(undo_map(mapper, iova, pages, WHAT, outside));
        }
        Ok(Route::Mapped {
            iova,
            pages,
            first_off,
            table,
            bounce: None,
        })
    }

    /// [`map`](Self::map) of `(offset, length)` when the first physical run (`first`) does
    /// not hold it all: the runs laid out, the IO pages allocated, then each run mapped.
    /// Returns the allocation, its pages and the table of IO runs; errors as for `map`.
    fn map_runs(
        &self,
        mapper: &dyn Mapper,
        md: &dyn MemoryDescriptor,
        (offset, length): (u64, u64),
        first: Segment,
        access: Access,
    ) -> Result<(IoAddr, u64, Vec<MapRun>)> {
        let page = mapper.page_size();
        let run_at = |x: u64| match x {
            0 => Ok(first),
            x => md.physical_segment(offset + x),
        };
        let (pages, span, mut table) = lay_out(page, length, &run_at)?;
        let first_off = page.offset(first.addr.0);
        let place = self.iova_placement(page.bytes(), first_off, span, pages);
        let iova = mapper.iovm_alloc_placed(pages, &place)?;
        for r in &mut table {
            r.io = r.io.saturating_add(iova.0);
        }
        let (mut done, mut x) = (0u64, 0);
        while x < length {
            let mapped = run_at(x).and_then(|seg| {
                let len = seg.len.min(length - x);
                let n = page.pages_spanned(seg.addr.0, len).unwrap_or(0);
                let io = IoAddr(iova.0 + done * page.bytes());
                mapper.iovm_insert_run(io, PhysAddr(page.trunc(seg.addr.0)), n, access)?;
                Ok((len, n))
            });
            match mapped {
                Ok((len, n)) => {
                    done += n;
                    x += len;
                }
                Err(e) => return Err(undo_map(mapper, iova, pages, WHAT, e)),
            }
        }
        Ok((iova, pages, table))
    }

    /// Makes `prep` hold what a failed [`map`](Self::map) left mapped, when `e` is an
    /// [`Error::LeftMapped`], together with `bounce`, the buffer that was being mapped:
    /// releasing the preparation then frees the IO range again and, should that fail once
    /// more, keeps the memory (quarantined or leaked), never frees it under the device. For
    /// any other error `bounce` goes back to the pool. Returns `e`.
    pub(super) fn hold_left_mapped(
        &self,
        prep: &mut Preparation<P>,
        e: Error,
        bounce: Option<Bounce<P>>,
    ) -> Error {
        match (&e, bounce) {
            (Error::LeftMapped { iova, pages, .. }, bounce) => {
                prep.route = Route::Mapped {
                    iova: IoAddr(*iova),
                    pages: *pages,
                    first_off: 0,
                    table: Vec::new(),
                    bounce: bounce.map(Box::new),
                };
            }
            (_, Some(bounce)) => self.give_back(prep.length, &bounce),
            (_, None) => {}
        }
        e
    }

    /// The spec's window of addresses, inclusive.
    pub(super) fn window(&self) -> (u64, u64) {
        (self.spec.min_address(), self.spec.max_address())
    }

    /// Where the device can use `pages` IO pages holding `length` bytes from `first_off`
    /// into the first: the spec's window (widened by the pages' slack before and after the
    /// data), its start alignment when above a page, and its boundary: the whole range
    /// inside one boundary line when it fits in one, else starting on a line (fewest
    /// segments).
    pub(super) fn iova_placement(
        &self,
        page: u64,
        first_off: u64,
        length: u64,
        pages: u64,
    ) -> IovaPlacement {
        let s = &self.spec;
        let span = pages.saturating_mul(page);
        let tail = span.saturating_sub(first_off.saturating_add(length));
        let mut place = IovaPlacement::ANY.window(
            s.min_address().saturating_sub(first_off),
            s.max_address().saturating_add(tail),
        );
        if s.alignment() > page {
            place = place.alignment(s.alignment());
        }
        let b = s.boundary();
        if b >= page {
            if span <= b {
                place = place.boundary(b);
            } else {
                place = place.alignment(place.align.max(b));
            }
        }
        place
    }
}

/// Lays out `length` bytes of physical runs (`run_at(x)`: the run at prepared offset `x`)
/// in IO pages, as IOKit does: each run at its own offset in its first page, so runs that
/// meet at page boundaries continue one IO run. Returns the IO pages, the IO bytes from the
/// first run's offset in its page to the end of the data, and where each IO run starts
/// (relative to the allocation; empty when there is one IO run).
fn lay_out(
    page: PageSize,
    length: u64,
    run_at: &dyn Fn(u64) -> Result<Segment>,
) -> Result<(u64, u64, Vec<MapRun>)> {
    let first_off = page.offset(run_at(0)?.addr.0);
    let mut table = Vec::new();
    let mut pages = 0u64;
    let mut end = first_off; // just past the IO bytes laid out so far
    let mut x = 0;
    while x < length {
        let seg = run_at(x)?;
        let len = seg.len.min(length - x);
        let at = pages
            .saturating_mul(page.bytes())
            .saturating_add(page.offset(seg.addr.0));
        if at != end {
            if table.is_empty() {
                table.push(MapRun {
                    x: 0,
                    io: first_off,
                });
            }
            table.push(MapRun { x, io: at });
        }
        pages = pages.saturating_add(page.pages_spanned(seg.addr.0, len).unwrap_or(0));
        end = at.saturating_add(len);
        x += len;
    }
    Ok((pages, end - first_off, table))
}
