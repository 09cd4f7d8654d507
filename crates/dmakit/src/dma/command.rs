//! [`DmaCommand`]: IOKit's IODMACommand — a prepared descriptor as segments a device can use.
//!
//! A command joins a memory descriptor, a device's [`SegmentSpec`] and an output
//! [`SegmentFormat`]. [`prepare`](DmaCommand::prepare) wires the range and decides how the
//! device will reach it:
//!
//! * **bypassed** (no IOMMU): the physical runs themselves, if every run meets the spec;
//! * **double buffered**: if a run is out of the device's reach or breaks an alignment (or
//!   the pool forces it), the whole transfer goes through one contiguous bounce buffer from a
//!   [`BouncePool`] that meets the spec; [`synchronize`](DmaCommand::synchronize) and
//!   [`complete`](DmaCommand::complete) copy in the right direction;
//! * **mapped**: the pages are entered in an IOMMU through a [`Mapper`], so physically
//!   scattered pages become one IO segment;
//! * **non-coherent**: as bypassed, plus cache maintenance at prepare, synchronize and
//!   complete;
//! * **iterate-only**: as bypassed, but a transfer that would need bouncing is
//!   [`Error::MessageTooLarge`].
//!
//! [`gen_segments`](DmaCommand::gen_segments) then writes segments into the caller's buffer
//! from an offset the caller carries, so a transfer can be produced in pieces; it allocates
//! nothing.
//!
//! Divergences from IOKit: a prepare of length 0 or past the end is an error (Q3); a failed
//! prepare leaves nothing prepared (Q1); bouncing copies the whole transfer rather than
//! single pages.

use super::bounce::BouncePool;
use super::format::{IoSegment, SegmentFormat};
use super::spec::SegmentSpec;
use crate::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
use crate::mapper::{Access, Mapper};
use crate::platform::{CacheOp, Platform, Task};
use crate::{Direction, Error, IoAddr, PhysAddr, Result, VirtAddr};
use alloc_crate::sync::Arc;

/// How the device reaches memory (IOKit's kMapped / kBypassed / kNonCoherent /
/// kIterateOnly).
#[derive(Clone)]
pub enum MappingMode {
    /// Physical addresses (bouncing what the device cannot reach).
    Bypassed,
    /// Physical addresses with cache maintenance for a non-coherent device.
    NonCoherent,
    /// Physical addresses; never bounce (MessageTooLarge instead).
    IterateOnly,
    /// IO virtual addresses through an IOMMU.
    Mapped(Arc<dyn Mapper>),
}

impl core::fmt::Debug for MappingMode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MappingMode::Bypassed => "Bypassed",
            MappingMode::NonCoherent => "NonCoherent",
            MappingMode::IterateOnly => "IterateOnly",
            MappingMode::Mapped(_) => "Mapped",
        })
    }
}

/// Where the prepared bytes are, for the device.
enum Route<P: Platform + Clone> {
    /// The descriptor's own physical runs.
    Direct,
    /// A bounce buffer; the data starts `data_off` bytes into it.
    Bounced {
        buffer: BufferMemoryDescriptor<P>,
        data_off: u64,
        base: PhysAddr,
    },
    /// IO virtual addresses from `base`.
    Mapped {
        iova: IoAddr,
        pages: u64,
        first_off: u64,
    },
}

struct Preparation<P: Platform + Clone> {
    offset: u64,
    length: u64,
    dir: Direction,
    route: Route<P>,
}

/// IOKit's IODMACommand.
pub struct DmaCommand<P: Platform + Clone> {
    platform: P,
    spec: SegmentSpec,
    format: SegmentFormat,
    mode: MappingMode,
    pool: Option<Arc<BouncePool<P>>>,
    md: Option<Arc<dyn MemoryDescriptor>>,
    prep: Option<Preparation<P>>,
}

const COPY_CHUNK: usize = 4096;

impl<P: Platform + Clone> DmaCommand<P> {
    /// A command for a device with constraints `spec`, writing segments as `format`.
    /// A 32-bit format with a spec that reaches above 4 GiB is [`Error::BadArgument`] (as
    /// IOKit refuses OutputHost32 with more than 32 address bits).
    pub fn new(
        platform: P,
        spec: SegmentSpec,
        format: SegmentFormat,
        mode: MappingMode,
        pool: Option<Arc<BouncePool<P>>>,
    ) -> Result<Self> {
        if spec.max_address() > format.max_address() {
            return Err(Error::BadArgument {
                what: "a 32-bit segment format needs a spec limited to 32 address bits",
                value: spec.max_address(),
            });
        }
        if spec.max_segment_size() > format.max_address() {
            // A 32-bit length field cannot carry longer segments.
            let spec = SegmentSpec::builder()
                .max_segment_size(1 << 31)
                .build()
                .and_then(|cap| spec.intersect(&cap))?;
            return Self::new(platform, spec, format, mode, pool);
        }
        Ok(DmaCommand {
            platform,
            spec,
            format,
            mode,
            pool,
            md: None,
            prep: None,
        })
    }

    /// The constraints.
    pub fn spec(&self) -> &SegmentSpec {
        &self.spec
    }

    /// Attaches a descriptor (IOKit `setMemoryDescriptor`). Refused while prepared.
    pub fn set_memory_descriptor(&mut self, md: Arc<dyn MemoryDescriptor>) -> Result<()> {
        self.not_prepared()?;
        self.md = Some(md);
        Ok(())
    }

    /// Detaches the descriptor (IOKit `clearMemoryDescriptor`). Refused while prepared:
    /// complete first.
    pub fn clear_memory_descriptor(&mut self) -> Result<()> {
        self.not_prepared()?;
        self.md = None;
        Ok(())
    }

    fn not_prepared(&self) -> Result<()> {
        if self.prep.is_some() {
            return Err(Error::Busy {
                what: "DMA command",
                addr: 0,
                why: "it is prepared (complete it first)",
            });
        }
        Ok(())
    }

    /// Whether the current preparation goes through a bounce buffer.
    pub fn is_bounced(&self) -> bool {
        matches!(
            self.prep.as_ref().map(|p| &p.route),
            Some(Route::Bounced { .. })
        )
    }

    /// The prepared `(offset, length)`, if prepared.
    pub fn prepared(&self) -> Option<(u64, u64)> {
        self.prep.as_ref().map(|p| (p.offset, p.length))
    }

    /// Whether every run of `[offset, offset + length)` meets the spec as it is.
    fn fits(&self, md: &dyn MemoryDescriptor, offset: u64, length: u64) -> Result<Option<u64>> {
        let s = &self.spec;
        let inner_align = s.alignment().max(s.internal_alignment());
        let mut x = 0;
        let mut first: Option<u64> = None;
        while x < length {
            let seg = md.physical_segment(offset + x)?;
            let len = seg.len.min(length - x);
            let a = seg.addr.0;
            first.get_or_insert(a);
            let last_run = x + len == length;
            let start_ok = if x == 0 {
                a.is_multiple_of(s.alignment())
            } else {
                a.is_multiple_of(inner_align)
            };
            let end_ok = last_run
                || (len.is_multiple_of(s.length_alignment())
                    && (a + len).is_multiple_of(s.internal_alignment()));
            if !s.reaches(a, len) || !start_ok || !end_ok {
                return Ok(None);
            }
            x += len;
        }
        Ok(first)
    }

    /// Prepares `[offset, offset + length)` of the descriptor for DMA (IOKit `prepare`).
    /// `flush` does the cache maintenance of a non-coherent command; `synchronize` copies
    /// into a bounce buffer for a device that reads.
    pub fn prepare(
        &mut self,
        offset: u64,
        length: u64,
        flush: bool,
        synchronize: bool,
    ) -> Result<()> {
        self.not_prepared()?;
        let md = self.md.clone().ok_or(Error::NotReady {
            what: "DMA command without a memory descriptor",
            addr: 0,
        })?;
        if length == 0 {
            return Err(Error::ZeroSize {
                what: "DMA command prepare",
            });
        }
        super::super::descriptor::check_range("DMA command prepare", offset, length, md.length())?;
        if length > self.spec.max_transfer_size() {
            return Err(Error::NoSpace {
                what: "DMA transfer above the spec's max_transfer_size",
                requested: length,
                align: 0,
                free: self.spec.max_transfer_size(),
            });
        }
        if !length.is_multiple_of(self.spec.length_alignment()) {
            return Err(Error::NotAligned {
                what: "DMA transfer length (spec length_alignment)",
                value: length,
                align: self.spec.length_alignment(),
            });
        }
        let dir = md.direction();
        md.prepare_wiring(dir)?;
        match self.route(md.as_ref(), offset, length, dir, synchronize) {
            Ok(route) => {
                let prep = Preparation {
                    offset,
                    length,
                    dir,
                    route,
                };
                if flush && matches!(self.mode, MappingMode::NonCoherent) {
                    let op = if dir.device_writes() {
                        CacheOp::Flush
                    } else {
                        CacheOp::Clean
                    };
                    if let Err(e) = self.cache(md.as_ref(), &prep, op) {
                        self.release(md.as_ref(), prep);
                        return Err(e);
                    }
                }
                self.prep = Some(prep);
                Ok(())
            }
            Err(e) => {
                let _ = md.complete();
                Err(e)
            }
        }
    }

    fn route(
        &self,
        md: &dyn MemoryDescriptor,
        offset: u64,
        length: u64,
        dir: Direction,
        sync: bool,
    ) -> Result<Route<P>> {
        if let MappingMode::Mapped(mapper) = &self.mode {
            return self.map(mapper.as_ref(), md, offset, length, dir);
        }
        let forced = self.pool.as_ref().is_some_and(|p| p.force_bounce());
        let first = self.fits(md, offset, length)?;
        if let (Some(_), false) = (first, forced) {
            return Ok(Route::Direct);
        }
        if matches!(self.mode, MappingMode::IterateOnly) {
            return Err(Error::MessageTooLarge {
                what:
                    "an iterate-only DMA command cannot double-buffer memory that breaks its spec",
                addr: md.physical_segment(offset)?.addr.0,
            });
        }
        let pool = self.pool.as_ref().ok_or(Error::NoResources {
            what: "bounce pool (the transfer needs double buffering and the command has none)",
            limit: 0,
        })?;
        // Keep the low address bits the device interprets (e.g. NVMe's page offset), when
        // that does not break the start alignment.
        let src = md.physical_segment(offset)?.addr.0;
        let keep_mask = (1u64 << self.spec.offset_bits()) - 1;
        let data_off = match src & keep_mask {
            k if k.is_multiple_of(self.spec.alignment()) => k,
            _ => 0,
        };
        let align = self
            .spec
            .alignment()
            .max(keep_mask + 1)
            .max(self.platform.page_size().bytes());
        let buffer = pool.take(data_off + length, self.spec.max_address(), align)?;
        let base = match buffer.physical_segment(0) {
            Ok(s) if s.addr.0 >= self.spec.min_address() => s.addr,
            Ok(s) => {
                drop(buffer);
                pool.give_back(data_off + length);
                return Err(Error::NoSuitableMemory {
                    what: "bounce buffer below the device's window",
                    requested: data_off + length,
                    align,
                    limit: s.addr.0,
                    contiguous: true,
                });
            }
            Err(e) => {
                drop(buffer);
                pool.give_back(data_off + length);
                return Err(e);
            }
        };
        let route = Route::Bounced {
            buffer,
            data_off,
            base,
        };
        if sync && dir.device_reads() {
            self.copy(md, offset, length, &route, true)?;
        }
        Ok(route)
    }

    fn map(
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
        // Count pages, checking that runs meet at page boundaries (so the IO range is one).
        let mut pages = 0;
        let mut x = 0;
        let mut first_off = 0;
        while x < length {
            let seg = md.physical_segment(offset + x)?;
            let len = seg.len.min(length - x);
            if x == 0 {
                first_off = page.offset(seg.addr.0);
            } else if page.offset(seg.addr.0) != 0 {
                return Err(Error::NotAligned {
                    what: "mapped DMA: an inner run does not start on a page",
                    value: seg.addr.0,
                    align: page.bytes(),
                });
            }
            if x + len < length && page.offset(seg.addr.0 + len) != 0 {
                return Err(Error::NotAligned {
                    what: "mapped DMA: an inner run does not end on a page",
                    value: seg.addr.0 + len,
                    align: page.bytes(),
                });
            }
            pages += page.pages_spanned(seg.addr.0, len).unwrap_or(0);
            x += len;
        }
        let iova = mapper.iovm_alloc(pages)?;
        let mut done = 0u64;
        let mut x = 0;
        let result = (|| {
            while x < length {
                let seg = md.physical_segment(offset + x)?;
                let len = seg.len.min(length - x);
                let first = page.trunc(seg.addr.0);
                for i in 0..page.pages_spanned(seg.addr.0, len).unwrap_or(0) {
                    mapper.iovm_insert_page(
                        IoAddr(iova.0 + done * page.bytes()),
                        PhysAddr(first + i * page.bytes()),
                        access,
                    )?;
                    done += 1;
                }
                x += len;
            }
            let start = iova.0 + first_off;
            if !self.spec.reaches(start, length) {
                return Err(Error::NoSuitableMemory {
                    what: "the mapper's IO addresses are outside the device's window",
                    requested: length,
                    align: page.bytes(),
                    limit: self.spec.max_address(),
                    contiguous: true,
                });
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = mapper.iovm_free(iova, pages);
            return Err(e);
        }
        Ok(Route::Mapped {
            iova,
            pages,
            first_off,
        })
    }

    /// Copies between the descriptor and a bounce buffer: `to_bounce` for a device read.
    /// See [`BounceCopy`] for how.
    fn copy(
        &self,
        md: &dyn MemoryDescriptor,
        offset: u64,
        length: u64,
        route: &Route<P>,
        to_bounce: bool,
    ) -> Result<()> {
        let Route::Bounced {
            buffer, data_off, ..
        } = route
        else {
            return Ok(());
        };
        BounceCopy {
            platform: &self.platform,
            md,
            buffer,
            to_bounce,
        }
        .run(offset, *data_off, length)?;
        if let Some(pool) = &self.pool {
            pool.count_copy(length);
        }
        Ok(())
    }

    fn cache(&self, md: &dyn MemoryDescriptor, prep: &Preparation<P>, op: CacheOp) -> Result<()> {
        match &prep.route {
            Route::Bounced { base, data_off, .. } => {
                self.platform
                    .cache_phys(op, PhysAddr(base.0 + data_off), prep.length)
            }
            _ => {
                let mut x = 0;
                while x < prep.length {
                    let s = md.physical_segment(prep.offset + x)?;
                    let len = s.len.min(prep.length - x);
                    self.platform.cache_phys(op, s.addr, len)?;
                    x += len;
                }
                Ok(())
            }
        }
    }

    /// Writes segments from `*offset` (relative to the prepared offset) into `out`, at
    /// most `max_segments` (and what `out` and the spec allow), and advances `*offset` past
    /// the bytes described. Returns the number of segments; 0 once the transfer is fully
    /// described. Allocates nothing.
    pub fn gen_segments(
        &self,
        offset: &mut u64,
        out: &mut [u8],
        max_segments: usize,
    ) -> Result<usize> {
        let prep = self.prep.as_ref().ok_or(Error::NotReady {
            what: "gen_segments on an unprepared DMA command",
            addr: 0,
        })?;
        let md = self.md.as_deref().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        if *offset > prep.length {
            return Err(Error::OutOfBounds {
                what: "gen_segments offset",
                offset: *offset,
                len: 0,
                limit: prep.length,
            });
        }
        let slots = max_segments
            .min(out.len() / self.format.element_size())
            .min(self.spec.max_segments() as usize);
        if slots == 0 && *offset < prep.length {
            return Err(Error::BadArgument {
                what: "gen_segments needs room for at least one segment",
                value: out.len() as u64,
            });
        }
        let s = &self.spec;
        let mut count = 0usize;
        let mut x = *offset;
        let mut cur: Option<IoSegment> = None;
        while x < prep.length {
            // The next raw run at x.
            let (addr, run) = match &prep.route {
                Route::Direct => {
                    let seg = md.physical_segment(prep.offset + x)?;
                    (seg.addr.0, seg.len.min(prep.length - x))
                }
                Route::Bounced { base, data_off, .. } => (base.0 + data_off + x, prep.length - x),
                Route::Mapped {
                    iova, first_off, ..
                } => (iova.0 + first_off + x, prep.length - x),
            };
            let extend = cur.is_some_and(|c| c.addr.0 + c.len == addr);
            if !extend {
                if let Some(c) = cur.take() {
                    if count + 1 > slots {
                        break;
                    }
                    self.format.write(out, count, c)?;
                    count += 1;
                    *offset += c.len;
                    if count == slots {
                        return Ok(count);
                    }
                }
                cur = Some(IoSegment {
                    addr: IoAddr(addr),
                    len: 0,
                });
            }
            let c = cur.as_mut().ok_or(Error::Internal {
                what: "segment state",
            })?;
            // How much the current segment may still grow.
            let mut room = s.max_segment_size() - c.len;
            if s.boundary() != 0 {
                let next_line = (c.addr.0 / s.boundary() + 1) * s.boundary();
                room = room.min(next_line - c.addr.0 - c.len);
            }
            let take = run.min(room);
            c.len += take;
            x += take;
            if take < run || room == take && x < prep.length {
                // Cut here: emit and start a new segment at x.
                let done = *c;
                cur = None;
                if count + 1 > slots {
                    break;
                }
                self.format.write(out, count, done)?;
                count += 1;
                *offset += done.len;
                if count == slots {
                    return Ok(count);
                }
            }
        }
        if let Some(c) = cur {
            if c.len > 0 && count < slots {
                self.format.write(out, count, c)?;
                count += 1;
                *offset += c.len;
            }
        }
        Ok(count)
    }

    /// Makes memory and device agree for `dir` (IOKit `synchronize`): copies between the
    /// descriptor and a bounce buffer (`Out`: to the device's copy; `In`: back to the
    /// descriptor) and does the cache maintenance of a non-coherent command.
    pub fn synchronize(&self, dir: Direction) -> Result<()> {
        let prep = self.prep.as_ref().ok_or(Error::NotReady {
            what: "synchronize on an unprepared DMA command",
            addr: 0,
        })?;
        let md = self.md.as_deref().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        if !prep.dir.covers(dir) && prep.dir != Direction::None {
            return Err(Error::BadArgument {
                what: "synchronize in a direction the transfer was not prepared for",
                value: dir.bits() as u64,
            });
        }
        if dir.device_reads() {
            self.copy(md, prep.offset, prep.length, &prep.route, true)?;
            if matches!(self.mode, MappingMode::NonCoherent) {
                self.cache(md, prep, CacheOp::Clean)?;
            }
        }
        if dir.device_writes() {
            if matches!(self.mode, MappingMode::NonCoherent) {
                self.cache(md, prep, CacheOp::Invalidate)?;
            }
            self.copy(md, prep.offset, prep.length, &prep.route, false)?;
        }
        Ok(())
    }

    /// Ends the transfer (IOKit `complete`): with `synchronize`, data the device wrote is
    /// copied back from a bounce buffer and caches are invalidated; the bounce buffer, IO
    /// addresses and the descriptor's wiring are released.
    pub fn complete(&mut self, synchronize: bool) -> Result<()> {
        let prep = self.prep.take().ok_or(Error::NotReady {
            what: "complete on an unprepared DMA command",
            addr: 0,
        })?;
        let md = self.md.clone().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        let mut result = Ok(());
        if synchronize && prep.dir.device_writes() {
            if matches!(self.mode, MappingMode::NonCoherent) {
                result = self.cache(md.as_ref(), &prep, CacheOp::Invalidate);
            }
            if result.is_ok() {
                result = self.copy(md.as_ref(), prep.offset, prep.length, &prep.route, false);
            }
        }
        self.release(md.as_ref(), prep);
        result
    }

    fn release(&self, md: &dyn MemoryDescriptor, prep: Preparation<P>) {
        match prep.route {
            Route::Bounced {
                buffer, data_off, ..
            } => {
                drop(buffer);
                if let Some(pool) = &self.pool {
                    pool.give_back(data_off + prep.length);
                }
            }
            Route::Mapped { iova, pages, .. } => {
                if let MappingMode::Mapped(m) = &self.mode {
                    let _ = m.iovm_free(iova, pages);
                }
            }
            Route::Direct => {}
        }
        let _ = md.complete();
    }
}

/// One bounce copy between a descriptor range and a bounce buffer (`to_bounce`: descriptor
/// → buffer, for a device read).
///
/// It walks the descriptor's and the buffer's [`sources`](MemoryDescriptor::sources) side by
/// side: two task ranges are one [`copy_virt`](crate::platform::CpuAccess::copy_virt), one
/// copy per byte where the platform can. A physical piece, or a descriptor whose sources
/// cannot be listed, goes through `read_bytes`/`write_bytes` and a stack buffer (two copies
/// per byte). Task addresses are taken to be of the command's platform, as its physical
/// addresses already are.
struct BounceCopy<'a, P: Platform + Clone> {
    platform: &'a P,
    md: &'a dyn MemoryDescriptor,
    buffer: &'a BufferMemoryDescriptor<P>,
    to_bounce: bool,
}

impl<P: Platform + Clone> BounceCopy<'_, P> {
    /// `len` bytes between descriptor offset `md_off` and buffer offset `buf_off`.
    fn run(&self, md_off: u64, buf_off: u64, len: u64) -> Result<()> {
        let mut failed: Option<Error> = None;
        let mut x = 0u64;
        let listed = self.md.sources(md_off, len, &mut |s| {
            if failed.is_some() {
                return;
            }
            let r = match s.task {
                Some(task) => self.piece(task, s.addr, md_off + x, buf_off + x, s.len),
                None => self.staged(md_off + x, buf_off + x, s.len),
            };
            failed = r.err();
            x += s.len;
        });
        self.finish(listed, failed, md_off, buf_off, len, x)
    }

    /// The descriptor's task piece `[va, va + len)` of `task` (at descriptor offset
    /// `md_off`) against the buffer's pieces from `buf_off`.
    fn piece(&self, task: Task, va: u64, md_off: u64, buf_off: u64, len: u64) -> Result<()> {
        let mut failed: Option<Error> = None;
        let mut y = 0u64;
        let listed = self.buffer.sources(buf_off, len, &mut |b| {
            if failed.is_some() {
                return;
            }
            let (here, there) = (VirtAddr(va + y), VirtAddr(b.addr));
            let r = match b.task {
                Some(bt) if self.to_bounce => self.platform.copy_virt(task, here, bt, there, b.len),
                Some(bt) => self.platform.copy_virt(bt, there, task, here, b.len),
                None => self.staged(md_off + y, buf_off + y, b.len),
            };
            failed = r.err();
            y += b.len;
        });
        self.finish(listed, failed, md_off, buf_off, len, y)
    }

    /// After a walk that covered `done` of `len` bytes: the walk's error, or the rest (all
    /// of it if the sources could not be listed; copying again is harmless) the slow way.
    fn finish(
        &self,
        listed: Result<()>,
        failed: Option<Error>,
        md_off: u64,
        buf_off: u64,
        len: u64,
        done: u64,
    ) -> Result<()> {
        match (listed, failed) {
            (_, Some(e)) => Err(e),
            (Err(_), None) => self.staged(md_off, buf_off, len),
            (Ok(()), None) if done < len => self.staged(md_off + done, buf_off + done, len - done),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Through `read_bytes`/`write_bytes` and a stack buffer of `COPY_CHUNK` bytes.
    fn staged(&self, md_off: u64, buf_off: u64, len: u64) -> Result<()> {
        let mut tmp = [0u8; COPY_CHUNK];
        let mut x = 0u64;
        while x < len {
            let n = ((len - x) as usize).min(COPY_CHUNK);
            let ok = if self.to_bounce {
                self.md.read_bytes(md_off + x, &mut tmp[..n]) == n
                    && self.buffer.write_bytes(buf_off + x, &tmp[..n]) == n
            } else {
                self.buffer.read_bytes(buf_off + x, &mut tmp[..n]) == n
                    && self.md.write_bytes(md_off + x, &tmp[..n]) == n
            };
            if !ok {
                return Err(Error::NotWritable {
                    what: "bounce copy could not complete (descriptor prepared read-only?)",
                    addr: md_off + x,
                });
            }
            x += n as u64;
        }
        Ok(())
    }
}

impl<P: Platform + Clone> Drop for DmaCommand<P> {
    /// Dropping a prepared command does not know whether the device is done: the bounce
    /// buffer, IO addresses and wiring are kept (leaked) rather than freed under it.
    fn drop(&mut self) {
        if let Some(prep) = self.prep.take() {
            if let Route::Bounced { buffer, .. } = prep.route {
                core::mem::forget(buffer);
            }
        }
    }
}

impl<P: Platform + Clone> core::fmt::Debug for DmaCommand<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaCommand")
            .field("spec", &self.spec)
            .field("format", &self.format)
            .field("mode", &self.mode)
            .field("prepared", &self.prepared())
            .field("bounced", &self.is_bounced())
            .finish()
    }
}
