//! [`DmaCommand`]: IOKit's IODMACommand — a prepared descriptor as segments a device can use.
//!
//! A command joins a memory descriptor, a device's [`SegmentSpec`] and an output
//! [`SegmentFormat`]. [`prepare`](DmaCommand::prepare) wires the range and decides how the
//! device will reach it:
//!
//! * **bypassed** (no IOMMU): the physical runs themselves, if every segment they make meets
//!   the spec (IOKit's preflight walk: address window, start, internal and length alignment,
//!   segment count);
//! * **per-page bounced**: when only the address window is broken, the pages out of reach
//!   get bounce pages and the rest is used in place (IOKit's first choice);
//! * **double buffered**: otherwise (or when the pool forces it) the whole transfer goes
//!   through one contiguous bounce buffer from a [`BouncePool`] that meets the spec;
//!   [`synchronize`](DmaCommand::synchronize) and [`complete`](DmaCommand::complete) copy in
//!   the right direction, and [`bounce_reason`](DmaCommand::bounce_reason) says which
//!   constraint, at which address, made it bounce;
//! * **mapped**: the pages are entered in an IOMMU through a [`Mapper`], so physically
//!   scattered pages become one IO segment; runs that do not meet at page boundaries (or a
//!   start the IO addresses cannot align) are first copied into a bounce buffer, which is
//!   mapped instead, as IOKit's copy buffer is;
//! * **non-coherent**: as bypassed, plus cache maintenance at prepare, synchronize and
//!   complete;
//! * **iterate-only**: as bypassed, but a transfer that would need bouncing is
//!   [`Error::MessageTooLarge`].
//!
//! [`gen_segments`](DmaCommand::gen_segments) then writes segments into the caller's buffer
//! from an offset the caller carries, so a transfer can be produced in pieces; it allocates
//! nothing. Segments are cut at the maximum segment size and at boundaries, and a cut end is
//! moved down to the internal and length alignment, so every segment meets the spec.
//!
//! A prepared command that is dropped hands its preparation to its device's
//! [`Quarantine`] (or leaks it without one): memory a device may still reach is never freed.
//! With the feature `dma-debug`, preparations and misuse are recorded in the
//! [ledger](crate::debug).
//!
//! Divergences from IOKit: a prepare of length 0 or past the end is an error (Q3); a failed
//! prepare leaves nothing prepared (Q1); `max_segments` is a per-transfer limit enforced at prepare (a transfer that
//! needs more segments bounces into contiguous memory).

use super::bounce::BouncePool;
use super::format::{IoSegment, SegmentFormat};
use super::quarantine::{Held, Quarantine};
use super::spec::SegmentSpec;
use crate::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
use crate::mapper::{Access, Mapper};
use crate::platform::{CacheOp, Platform, Task, COPY_CHUNK};
use crate::{Direction, Error, IoAddr, PhysAddr, Result, VirtAddr};
use alloc_crate::boxed::Box;
use alloc_crate::sync::Arc;
use alloc_crate::vec::Vec;

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

/// Why a preparation bounces: the first constraint the memory broke, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BounceReason {
    /// The constraint ("address window", "alignment", "internal_alignment",
    /// "length_alignment", "max_segments", "mapper page joins", "forced by the pool").
    pub constraint: &'static str,
    /// The segment address that broke it (0 when forced).
    pub addr: u64,
    /// That segment's length.
    pub len: u64,
}

/// A bounce buffer holding the transfer; the data starts `data_off` bytes into it.
struct Bounce<P: Platform + Clone> {
    buffer: BufferMemoryDescriptor<P>,
    data_off: u64,
    base: PhysAddr,
}

/// A piece of the prepared range (inside one page) that the device reaches in a bounce page.
#[derive(Clone, Copy, Debug)]
struct PagePiece {
    /// Prepared offset of the piece.
    x: u64,
    len: u64,
    /// Where it is in the bounce buffer (same offset within the page as the original).
    buf_off: u64,
    /// The bounce copy's physical address.
    addr: u64,
}

/// Where the prepared bytes are, for the device.
enum Route<P: Platform + Clone> {
    /// The descriptor's own physical runs.
    Direct,
    /// The descriptor's own runs, except the pages out of the device's reach, which are
    /// bounce pages (IOKit's per-page bouncing). `pieces` is sorted by `x`.
    PerPage {
        buffer: BufferMemoryDescriptor<P>,
        bytes: u64,
        pieces: Vec<PagePiece>,
    },
    /// A bounce buffer, by physical address.
    Bounced(Bounce<P>),
    /// IO virtual addresses from `iova + first_off`, over the descriptor or a bounce buffer.
    Mapped {
        iova: IoAddr,
        pages: u64,
        first_off: u64,
        bounce: Option<Bounce<P>>,
    },
}

impl<P: Platform + Clone> Route<P> {
    fn bounce(&self) -> Option<&Bounce<P>> {
        match self {
            Route::Bounced(b) => Some(b),
            Route::Mapped { bounce, .. } => bounce.as_ref(),
            Route::Direct | Route::PerPage { .. } => None,
        }
    }

    /// Whether the device reaches any bounce memory.
    fn bounces(&self) -> bool {
        self.bounce().is_some() || matches!(self, Route::PerPage { .. })
    }

    /// Bytes taken from the bounce pool.
    fn pool_bytes(&self, length: u64) -> u64 {
        match self {
            Route::PerPage { bytes, .. } => *bytes,
            _ => self.bounce().map_or(0, |b| b.data_off + length),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Bounced(_) => "bounced",
            Route::PerPage { .. } => "per-page bounced",
            Route::Mapped { bounce: None, .. } => "mapped",
            Route::Mapped { .. } => "mapped+bounced",
        }
    }

    /// Bounce bytes plus IO-space bytes held.
    fn held_bytes(&self, length: u64, page: u64) -> u64 {
        let b = self.pool_bytes(length);
        match self {
            Route::Mapped { pages, .. } => b + pages * page,
            _ => b,
        }
    }
}

struct Preparation<P: Platform + Clone> {
    offset: u64,
    length: u64,
    dir: Direction,
    route: Route<P>,
    reason: Option<BounceReason>,
}

/// What giving a preparation back needs (shared by `complete`, drop and the quarantine).
struct Owner<P: Platform + Clone> {
    pool: Option<Arc<BouncePool<P>>>,
    mode: MappingMode,
    quarantine: Option<Arc<Quarantine>>,
    id: u64,
}

impl<P: Platform + Clone> Owner<P> {
    fn release(&self, md: &dyn MemoryDescriptor, prep: Preparation<P>) {
        if prep.route.bounces() {
            if let Some(pool) = &self.pool {
                pool.give_back(prep.route.pool_bytes(prep.length));
            }
        }
        if let (Route::Mapped { iova, pages, .. }, MappingMode::Mapped(m)) =
            (&prep.route, &self.mode)
        {
            // The mapper invalidates before the IO addresses can be handed out again.
            let _ = m.iovm_free(*iova, *pages);
        }
        drop(prep);
        let _ = md.complete();
        crate::debug::completed(self.id);
    }
}

/// A dropped preparation waiting in a quarantine.
struct Dropped<P: Platform + Clone + 'static> {
    owner: Owner<P>,
    md: Arc<dyn MemoryDescriptor>,
    prep: Preparation<P>,
    held: u64,
}

impl<P: Platform + Clone + 'static> Held for Dropped<P> {
    fn release(self: Box<Self>) {
        let Dropped {
            owner, md, prep, ..
        } = *self;
        owner.release(md.as_ref(), prep);
    }

    fn held_bytes(&self) -> u64 {
        self.held
    }
}

/// IOKit's IODMACommand.
///
/// # Drop order
///
/// Dropping a prepared command does not free what the device may still reach: the
/// preparation goes to the command's [`Quarantine`], or is leaked without one.
pub struct DmaCommand<P: Platform + Clone + 'static> {
    platform: P,
    spec: SegmentSpec,
    format: SegmentFormat,
    owner: Owner<P>,
    md: Option<Arc<dyn MemoryDescriptor>>,
    prep: Option<Preparation<P>>,
}

/// A segment that walks emit, and whether it ends the transfer.
type Emit<'a> = dyn FnMut(IoSegment, bool) -> Result<bool> + 'a;

impl<P: Platform + Clone + 'static> DmaCommand<P> {
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
            owner: Owner {
                pool,
                mode,
                quarantine: None,
                id: crate::debug::next_id(),
            },
            md: None,
            prep: None,
        })
    }

    /// The constraints.
    pub fn spec(&self) -> &SegmentSpec {
        &self.spec
    }

    /// The output format.
    pub fn format(&self) -> SegmentFormat {
        self.format
    }

    /// The id the dma-debug ledger files this command under.
    pub fn debug_id(&self) -> u64 {
        self.owner.id
    }

    /// Makes the command one of a device's: a preparation dropped with the command waits in
    /// `quarantine` until the device is quiesced. Refused while prepared.
    pub fn set_quarantine(&mut self, quarantine: Arc<Quarantine>) -> Result<()> {
        self.not_prepared()?;
        self.owner.quarantine = Some(quarantine);
        Ok(())
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

    /// The attached descriptor.
    pub fn memory_descriptor(&self) -> Option<&Arc<dyn MemoryDescriptor>> {
        self.md.as_ref()
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
        self.prep.as_ref().is_some_and(|p| p.route.bounces())
    }

    /// Why the current preparation bounces (`None` if it does not, or is not prepared).
    pub fn bounce_reason(&self) -> Option<BounceReason> {
        self.prep.as_ref().and_then(|p| p.reason)
    }

    /// The prepared `(offset, length)`, if prepared.
    pub fn prepared(&self) -> Option<(u64, u64)> {
        self.prep.as_ref().map(|p| (p.offset, p.length))
    }

    /// Runs a CPU copy of the prepared memory that the caller has synchronized for (the
    /// typed layer's sync methods): the dma-debug ledger does not count it as misuse.
    pub(crate) fn cpu_copy<R>(&self, f: impl FnOnce() -> R) -> R {
        crate::debug::syncing(self.owner.id, true);
        let r = f();
        crate::debug::syncing(self.owner.id, false);
        r
    }

    /// The first constraint `seg` breaks, if any (`first`/`last`: its place in the transfer).
    fn violates(&self, seg: IoSegment, first: bool, last: bool) -> Option<&'static str> {
        let s = &self.spec;
        let (a, len) = (seg.addr.0, seg.len);
        if !s.reaches(a, len) {
            return Some("address window");
        }
        if len > s.max_segment_size() {
            return Some("max_segment_size");
        }
        if first && !a.is_multiple_of(s.alignment()) {
            return Some("alignment");
        }
        if !first && !a.is_multiple_of(s.internal_alignment()) {
            return Some("internal_alignment");
        }
        if !last
            && (!len.is_multiple_of(s.length_alignment())
                || !(a + len).is_multiple_of(s.internal_alignment()))
        {
            return Some(if len.is_multiple_of(s.length_alignment()) {
                "internal_alignment"
            } else {
                "length_alignment"
            });
        }
        if s.boundary() != 0 && a / s.boundary() != (a + len - 1) / s.boundary() {
            return Some("boundary");
        }
        None
    }

    /// The raw run at prepared offset `x`: its device address and length (to the end).
    fn raw_run(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        x: u64,
    ) -> Result<(u64, u64)> {
        Ok(match &prep.route {
            Route::Direct => {
                let seg = md.physical_segment(prep.offset + x)?;
                (seg.addr.0, seg.len.min(prep.length - x))
            }
            Route::Bounced(b) => (b.base.0 + b.data_off + x, prep.length - x),
            Route::PerPage { pieces, .. } => {
                let i = pieces.partition_point(|p| p.x + p.len <= x);
                match pieces.get(i) {
                    Some(p) if p.x <= x => (p.addr + (x - p.x), p.len - (x - p.x)),
                    next => {
                        let seg = md.physical_segment(prep.offset + x)?;
                        let len = seg.len.min(prep.length - x);
                        (seg.addr.0, next.map_or(len, |p| len.min(p.x - x)))
                    }
                }
            }
            Route::Mapped {
                iova, first_off, ..
            } => (iova.0 + first_off + x, prep.length - x),
        })
    }

    /// Walks the segments of `prep` from prepared offset `from`, coalescing contiguous runs
    /// and cutting at the maximum segment size and boundaries (a cut end moves down to the
    /// internal and length alignment). `emit` gets each finished segment; returning
    /// `false` stops the walk without consuming it.
    fn walk(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        from: u64,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        let s = &self.spec;
        let q = s.internal_alignment().max(s.length_alignment());
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
            let mut room = s.max_segment_size() - c.len;
            if s.boundary() != 0 {
                if let Some(line) = (c.addr.0 / s.boundary() + 1).checked_mul(s.boundary()) {
                    room = room.min(line - c.addr.0 - c.len);
                }
            }
            if run <= room {
                c.len += run;
                x += run;
                continue;
            }
            // The segment ends inside this run, and more of the transfer follows.
            let end = c.addr.0 + c.len + room;
            let cut = end - end % q;
            if cut <= c.addr.0 {
                return Err(Error::NotAligned {
                    what: "no segment end meets max_segment_size/boundary and the internal/length alignment",
                    value: c.addr.0,
                    align: q,
                });
            }
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

    /// Walks the whole preparation and returns the first broken constraint, if any.
    fn preflight(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
    ) -> Result<Option<BounceReason>> {
        let mut bad = None;
        let mut count = 0u64;
        let max = self.spec.max_segments() as u64;
        let walked = self.walk(md, prep, 0, &mut |seg, last| {
            count += 1;
            let broken = self.violates(seg, count == 1, last).or(if count > max {
                Some("max_segments")
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
                constraint: "internal_alignment",
                addr: value,
                len: 0,
            })),
            Err(e) => Err(e),
        }
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
        crate::descriptor::check_range("DMA command prepare", offset, length, md.length())?;
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
        let mut prep = Preparation {
            offset,
            length,
            dir,
            route: Route::Direct,
            reason: None,
        };
        let routed = self.route(md.as_ref(), &mut prep, synchronize);
        if let Err(e) = routed {
            self.owner.release(md.as_ref(), prep);
            return Err(e);
        }
        if flush && matches!(self.owner.mode, MappingMode::NonCoherent) {
            let op = if dir.device_writes() {
                CacheOp::Flush
            } else {
                CacheOp::Clean
            };
            if let Err(e) = self.cache(md.as_ref(), &prep, op) {
                self.owner.release(md.as_ref(), prep);
                return Err(e);
            }
        }
        crate::debug::prepared(
            crate::debug::PrepInfo {
                command: self.owner.id,
                device: self.owner.quarantine.as_ref().map_or(0, |q| q.id()),
                offset,
                length,
                direction: dir,
                route: prep.route.name(),
                held_bytes: prep
                    .route
                    .held_bytes(length, self.platform.page_size().bytes()),
            },
            md.as_ref(),
        );
        if let Some(q) = &self.owner.quarantine {
            q.prepared();
        }
        self.prep = Some(prep);
        Ok(())
    }

    /// Chooses the route of `prep` (which starts out direct) and fills bounce buffers.
    fn route(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &mut Preparation<P>,
        sync: bool,
    ) -> Result<()> {
        let forced = self
            .owner
            .pool
            .as_ref()
            .is_some_and(|p| p.force_bounce())
            .then_some(BounceReason {
                constraint: "forced by the pool",
                addr: 0,
                len: 0,
            });
        if let MappingMode::Mapped(mapper) = &self.owner.mode {
            let mapper = mapper.clone();
            if forced.is_none() {
                if let Some(route) =
                    self.map(mapper.as_ref(), md, prep.offset, prep.length, prep.dir)?
                {
                    prep.route = route;
                    match self.preflight(md, prep)? {
                        None => return Ok(()),
                        Some(r) => {
                            prep.reason = Some(r);
                            let direct = core::mem::replace(&mut prep.route, Route::Direct);
                            if let Route::Mapped { iova, pages, .. } = direct {
                                let _ = mapper.iovm_free(iova, pages);
                            }
                        }
                    }
                } else {
                    prep.reason = Some(BounceReason {
                        constraint: "mapper page joins",
                        addr: md.physical_segment(prep.offset)?.addr.0,
                        len: prep.length,
                    });
                }
            } else {
                prep.reason = forced;
            }
            // Copy into a bounce buffer anywhere in memory and map that.
            let bounce = self.take_bounce(md, prep.offset, prep.length, u64::MAX)?;
            let mapped = self.map(
                mapper.as_ref(),
                &bounce.buffer,
                bounce.data_off,
                prep.length,
                prep.dir,
            );
            let Some(Route::Mapped {
                iova,
                pages,
                first_off,
                ..
            }) = mapped.inspect_err(|_| self.give_back(prep.length, &bounce))?
            else {
                self.give_back(prep.length, &bounce);
                return Err(Error::Internal {
                    what: "a contiguous bounce buffer could not be mapped as one IO range",
                });
            };
            prep.route = Route::Mapped {
                iova,
                pages,
                first_off,
                bounce: Some(bounce),
            };
            return self.finish_bounce(md, prep, sync);
        }
        let reason = match forced {
            Some(f) => Some(f),
            None => self.preflight(md, prep)?,
        };
        let Some(reason) = reason else {
            return Ok(());
        };
        prep.reason = Some(reason);
        if matches!(self.owner.mode, MappingMode::IterateOnly) {
            return Err(Error::MessageTooLarge {
                what:
                    "an iterate-only DMA command cannot double-buffer memory that breaks its spec",
                addr: reason.addr,
            });
        }
        if reason.constraint == "address window" && self.per_page(md, prep)? {
            if sync && prep.dir.device_reads() {
                self.copy(md, prep, true)?;
            }
            return Ok(());
        }
        let bounce = self.take_bounce(md, prep.offset, prep.length, self.spec.max_address())?;
        if bounce.base.0 < self.spec.min_address() {
            self.give_back(prep.length, &bounce);
            return Err(Error::NoSuitableMemory {
                what: "bounce buffer below the device's window",
                requested: prep.length,
                align: 0,
                limit: bounce.base.0,
                contiguous: true,
            });
        }
        prep.route = Route::Bounced(bounce);
        self.finish_bounce(md, prep, sync)
    }

    /// Per-page bouncing (IOKit's first choice when only the address limit is broken): the
    /// pages out of the device's reach get bounce pages (same offset within the page), the
    /// rest is used in place. Returns whether `prep` now has that route; `false` (nothing
    /// held) when the bounce pages cannot be had or the result still breaks the spec, so the
    /// caller bounces the whole transfer.
    fn per_page(&self, md: &dyn MemoryDescriptor, prep: &mut Preparation<P>) -> Result<bool> {
        let Some(pool) = self.owner.pool.as_ref() else {
            return Ok(false);
        };
        let page = self.platform.page_size();
        let mut pieces = Vec::new();
        let mut x = 0;
        while x < prep.length {
            let seg = md.physical_segment(prep.offset + x)?;
            let len = seg.len.min(prep.length - x);
            let mut a = seg.addr.0;
            while a < seg.addr.0 + len {
                let n = (page.trunc(a) + page.bytes()).min(seg.addr.0 + len) - a;
                if !self.spec.reaches(a, n) {
                    let slot = pieces.len() as u64;
                    pieces.push(PagePiece {
                        x: x + (a - seg.addr.0),
                        len: n,
                        buf_off: slot * page.bytes() + page.offset(a),
                        addr: 0,
                    });
                }
                a += n;
            }
            x += len;
        }
        if pieces.is_empty() {
            return Ok(false);
        }
        let bytes = pieces.len() as u64 * page.bytes();
        let Ok(buffer) = pool.take(bytes, self.spec.max_address(), page.bytes(), false) else {
            return Ok(false);
        };
        for p in &mut pieces {
            match buffer.physical_segment(p.buf_off) {
                Ok(s) if self.spec.reaches(s.addr.0, p.len) => p.addr = s.addr.0,
                _ => {
                    drop(buffer);
                    pool.give_back(bytes);
                    return Ok(false);
                }
            }
        }
        prep.route = Route::PerPage {
            buffer,
            bytes,
            pieces,
        };
        if self.preflight(md, prep)?.is_some() {
            let Route::PerPage { buffer, .. } = core::mem::replace(&mut prep.route, Route::Direct)
            else {
                return Err(Error::Internal {
                    what: "per-page route vanished",
                });
            };
            drop(buffer);
            pool.give_back(bytes);
            return Ok(false);
        }
        Ok(true)
    }

    /// Checks a bounced route against the spec and fills it for a device that reads.
    fn finish_bounce(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &mut Preparation<P>,
        sync: bool,
    ) -> Result<()> {
        if let Some(r) = self.preflight(md, prep)? {
            if r.constraint == "max_segments" {
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
        if sync && prep.dir.device_reads() {
            self.copy(md, prep, true)?;
        }
        Ok(())
    }

    /// A bounce buffer for `length` bytes at or below `limit`, keeping the low address bits
    /// the device interprets (e.g. NVMe's page offset) when that breaks no alignment.
    fn take_bounce(
        &self,
        md: &dyn MemoryDescriptor,
        offset: u64,
        length: u64,
        limit: u64,
    ) -> Result<Bounce<P>> {
        let pool = self.owner.pool.as_ref().ok_or(Error::NoResources {
            what: "bounce pool (the transfer needs double buffering and the command has none)",
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
        let align = start_align
            .max(s.internal_alignment())
            .max(keep_mask + 1)
            .max(self.platform.page_size().bytes());
        let buffer = pool.take(data_off + length, limit, align, true)?;
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

    fn give_back(&self, length: u64, bounce: &Bounce<P>) {
        if let Some(pool) = &self.owner.pool {
            pool.give_back(bounce.data_off + length);
        }
    }

    /// Maps `[offset, offset + length)` of `md` as one IO range, or `None` when its runs do
    /// not meet at page boundaries (so they cannot form one).
    fn map(
        &self,
        mapper: &dyn Mapper,
        md: &dyn MemoryDescriptor,
        offset: u64,
        length: u64,
        dir: Direction,
    ) -> Result<Option<Route<P>>> {
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
                return Ok(None);
            }
            if x + len < length && page.offset(seg.addr.0 + len) != 0 {
                return Ok(None);
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
        Ok(Some(Route::Mapped {
            iova,
            pages,
            first_off,
            bounce: None,
        }))
    }

    /// Copies between the descriptor and the bounce buffer: `to_bounce` for a device read.
    /// See [`BounceCopy`] for how.
    fn copy(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        to_bounce: bool,
    ) -> Result<()> {
        self.copy_range(md, prep, 0, prep.length, to_bounce)
    }

    /// Copies `[from, from + length)` of the prepared range (relative offsets).
    fn copy_range(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        from: u64,
        length: u64,
        to_bounce: bool,
    ) -> Result<()> {
        if let Route::PerPage { buffer, pieces, .. } = &prep.route {
            crate::debug::syncing(self.owner.id, true);
            let copier = BounceCopy {
                platform: &self.platform,
                md,
                buffer,
                to_bounce,
            };
            let (lo, hi) = (from, from + length);
            let mut copied = 0;
            let mut result = Ok(());
            for p in pieces.iter().filter(|p| p.x < hi && lo < p.x + p.len) {
                let (a, b) = (p.x.max(lo), (p.x + p.len).min(hi));
                result = copier.run(prep.offset + a, p.buf_off + (a - p.x), b - a);
                if result.is_err() {
                    break;
                }
                copied += b - a;
            }
            crate::debug::syncing(self.owner.id, false);
            if let (Ok(()), Some(pool)) = (&result, &self.owner.pool) {
                pool.count_copy(copied);
            }
            return result;
        }
        let Some(b) = prep.route.bounce() else {
            return Ok(());
        };
        crate::debug::syncing(self.owner.id, true);
        let result = BounceCopy {
            platform: &self.platform,
            md,
            buffer: &b.buffer,
            to_bounce,
        }
        .run(prep.offset + from, b.data_off + from, length);
        crate::debug::syncing(self.owner.id, false);
        if let (Ok(()), Some(pool)) = (&result, &self.owner.pool) {
            pool.count_copy(length);
        }
        result
    }

    fn cache(&self, md: &dyn MemoryDescriptor, prep: &Preparation<P>, op: CacheOp) -> Result<()> {
        self.cache_range(md, prep, 0, prep.length, op)
    }

    fn cache_range(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        from: u64,
        length: u64,
        op: CacheOp,
    ) -> Result<()> {
        if let Route::Bounced(b) = &prep.route {
            return self
                .platform
                .cache_phys(op, PhysAddr(b.base.0 + b.data_off + from), length);
        }
        // Direct or per-page: the device's runs are physical addresses.
        let mut x = from;
        while x < from + length {
            let (addr, run) = self.raw_run(md, prep, x)?;
            let len = run.min(from + length - x);
            self.platform.cache_phys(op, PhysAddr(addr), len)?;
            x += len;
        }
        Ok(())
    }

    fn parts(&self, what: &'static str) -> Result<(&Preparation<P>, &dyn MemoryDescriptor)> {
        let prep = self
            .prep
            .as_ref()
            .ok_or(Error::NotReady { what, addr: 0 })?;
        let md = self.md.as_deref().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        Ok((prep, md))
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
        let (prep, md) = self.parts("gen_segments on an unprepared DMA command")?;
        if *offset > prep.length {
            return Err(Error::OutOfBounds {
                what: "gen_segments offset",
                offset: *offset,
                len: 0,
                limit: prep.length,
            });
        }
        if *offset == prep.length {
            return Ok(0);
        }
        let slots = max_segments
            .min(out.len() / self.format.element_size())
            .min(self.spec.max_segments() as usize);
        if slots == 0 {
            return Err(Error::BadArgument {
                what: "gen_segments needs room for at least one segment",
                value: out.len() as u64,
            });
        }
        let mut count = 0usize;
        let first = *offset == 0;
        self.walk(md, prep, *offset, &mut |seg, last| {
            if count == slots {
                return Ok(false);
            }
            #[cfg(feature = "dma-debug")]
            if let Some(c) = self.violates(seg, first && count == 0, last) {
                crate::debug::record(
                    crate::debug::ViolationKind::SegmentBreaksSpec,
                    self.owner.id,
                    || alloc_crate::format!("segment {seg:?} breaks {c} of {:?}", self.spec),
                );
            }
            #[cfg(not(feature = "dma-debug"))]
            let _ = (first, last);
            self.format.write(out, count, seg)?;
            count += 1;
            *offset += seg.len;
            Ok(true)
        })?;
        Ok(count)
    }

    /// Makes memory and device agree for `dir` (IOKit `synchronize`) over the whole
    /// preparation: copies between the descriptor and a bounce buffer (`Out`: to the
    /// device's copy; `In`: back to the descriptor) and does the cache maintenance of a
    /// non-coherent command.
    pub fn synchronize(&self, dir: Direction) -> Result<()> {
        let length = self.prep.as_ref().map_or(0, |p| p.length);
        self.synchronize_range(dir, 0, length)
    }

    /// [`synchronize`](Self::synchronize) for `[offset, offset + length)` of the prepared
    /// range only (relative offsets), as Linux's `dma_sync_single_range_*`. Outside the
    /// preparation is [`Error::OutOfBounds`]; a direction the transfer was not prepared for
    /// is [`Error::BadArgument`] (both recorded by the dma-debug ledger).
    pub fn synchronize_range(&self, dir: Direction, offset: u64, length: u64) -> Result<()> {
        let (prep, md) = self.parts("synchronize on an unprepared DMA command")?;
        if let Err(e) = crate::descriptor::check_range(
            "synchronize range in the prepared range",
            offset,
            length,
            prep.length,
        ) {
            crate::debug::record(
                crate::debug::ViolationKind::SyncOutOfRange,
                self.owner.id,
                || {
                    alloc_crate::format!(
                    "synchronize {dir:?} of {offset:#x}+{length:#x} outside the prepared {:#x} bytes",
                    prep.length
                )
                },
            );
            return Err(e);
        }
        if !prep.dir.covers(dir) && prep.dir != Direction::None {
            crate::debug::record(
                crate::debug::ViolationKind::SyncWrongDirection,
                self.owner.id,
                || {
                    alloc_crate::format!(
                        "synchronize {dir:?} of a transfer prepared {:?}",
                        prep.dir
                    )
                },
            );
            return Err(Error::BadArgument {
                what: "synchronize in a direction the transfer was not prepared for",
                value: dir.bits() as u64,
            });
        }
        let non_coherent = matches!(self.owner.mode, MappingMode::NonCoherent);
        if dir.device_reads() {
            self.copy_range(md, prep, offset, length, true)?;
            if non_coherent {
                self.cache_range(md, prep, offset, length, CacheOp::Clean)?;
            }
        }
        if dir.device_writes() {
            if non_coherent {
                self.cache_range(md, prep, offset, length, CacheOp::Invalidate)?;
            }
            self.copy_range(md, prep, offset, length, false)?;
        }
        Ok(())
    }

    /// Ends the transfer (IOKit `complete`): with `synchronize`, data the device wrote is
    /// copied back from a bounce buffer and caches are invalidated; the bounce buffer, IO
    /// addresses and the descriptor's wiring are released. Not prepared is
    /// [`Error::NotReady`] (recorded by the dma-debug ledger as an unbalanced complete).
    pub fn complete(&mut self, synchronize: bool) -> Result<()> {
        let Some(prep) = self.prep.take() else {
            crate::debug::record(
                crate::debug::ViolationKind::UnbalancedComplete,
                self.owner.id,
                || {
                    alloc_crate::string::String::from(
                        "complete on a DMA command that is not prepared",
                    )
                },
            );
            return Err(Error::NotReady {
                what: "complete on an unprepared DMA command",
                addr: 0,
            });
        };
        let md = self.md.clone().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        let mut result = Ok(());
        if synchronize && prep.dir.device_writes() {
            if matches!(self.owner.mode, MappingMode::NonCoherent) {
                result = self.cache(md.as_ref(), &prep, CacheOp::Invalidate);
            }
            if result.is_ok() {
                result = self.copy(md.as_ref(), &prep, false);
            }
        }
        self.owner.release(md.as_ref(), prep);
        if let Some(q) = &self.owner.quarantine {
            q.completed();
        }
        result
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

impl<P: Platform + Clone + 'static> Drop for DmaCommand<P> {
    /// Dropping a prepared command does not know whether the device is done: the
    /// preparation goes to the command's quarantine, or is leaked (bounce buffer, IO
    /// addresses and wiring kept) rather than freed under the device.
    fn drop(&mut self) {
        let Some(prep) = self.prep.take() else {
            return;
        };
        crate::debug::dropped(self.owner.id);
        let (Some(q), Some(md)) = (self.owner.quarantine.clone(), self.md.clone()) else {
            // No quarantine: keep everything the device may reach, for good. The descriptor
            // reference is kept too, so the last one dropping does not free the memory.
            core::mem::forget(prep);
            core::mem::forget(self.md.take());
            return;
        };
        let held = prep
            .route
            .held_bytes(prep.length, self.platform.page_size().bytes());
        q.hold(Box::new(Dropped {
            owner: Owner {
                pool: self.owner.pool.clone(),
                mode: self.owner.mode.clone(),
                quarantine: None,
                id: self.owner.id,
            },
            md,
            prep,
            held,
        }));
    }
}

impl<P: Platform + Clone + 'static> core::fmt::Debug for DmaCommand<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaCommand")
            .field("spec", &self.spec)
            .field("format", &self.format)
            .field("mode", &self.owner.mode)
            .field("prepared", &self.prepared())
            .field("bounced", &self.is_bounced())
            .field("bounce_reason", &self.bounce_reason())
            .finish()
    }
}
