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
//!   scattered pages become one IO segment. As in IOKit, each physical run gets IO pages of
//!   its own at its own offset in the page: runs that meet at page boundaries join, and a
//!   run that does not starts a new IO segment. Segments that still break the spec (a
//!   start the IO addresses cannot align, more segments than allowed) are first copied
//!   into a bounce buffer, which is mapped instead, as IOKit's copy buffer is. The IO pages
//!   allow only what the direction does: device reads for `Out`, device writes for `In`,
//!   both for `InOut` and `None`, as IOKit's per-run mapping does (IOKit's mapping of a
//!   whole descriptor lets the device read an `In` buffer too; dmakit never does, so a
//!   device that reads memory it was only given to fill faults instead of reading stale
//!   data);
//! * **non-coherent**: as bypassed, plus cache maintenance at prepare, synchronize and
//!   complete;
//! * **iterate-only**: as bypassed, but a transfer that would need bouncing is
//!   [`Error::MessageTooLarge`] at prepare, before a device can be handed part of its list
//!   (IOKit prepares it and returns the error from the segment walk).
//!
//! [`gen_segments`](DmaCommand::gen_segments) then writes segments into the caller's buffer
//! from an offset the caller carries, so a transfer can be produced in pieces; it allocates
//! nothing. Segments are cut at the maximum segment size and at boundaries, and a cut is
//! moved down so the segment's length is a multiple of the length alignment and its end is
//! on the internal alignment, so every segment meets the spec.
//!
//! A prepared command that is dropped hands its preparation to its device's
//! [`Quarantine`] (or leaks it without one): memory a device may still reach is never freed.
//! With the feature `dma-debug`, preparations and misuse are recorded in the
//! [ledger](crate::debug).
//!
//! ## States, as IOKit's
//!
//! | call | while | result |
//! | --- | --- | --- |
//! | `set_memory_descriptor(md)`, `set_memory_descriptor_and_prepare(md)` | the same `md` is attached (prepared or not) | `Ok`, nothing prepared |
//! | `set_memory_descriptor(other)` | prepared | [`Error::Busy`] |
//! | `clear_memory_descriptor()` | prepared | [`Error::NotReady`] (use [`complete_and_clear`](DmaCommand::complete_and_clear)) |
//! | `prepare(same range)` | prepared | `Ok`, counted: one more `complete` is needed |
//! | `prepare(other range)` | prepared | [`Error::NotReady`], not counted |
//! | `complete()` | not prepared | [`Error::NotReady`] |
//! | `gen_segments` | offset at or past the prepared length | [`Error::Overrun`], offset unchanged |
//! | `synchronize(InOut)` | any | [`Error::BadArgument`] (one direction at a time) |
//!
//! Where dmakit differs from IOKit: a prepare of length 0 or past the descriptor's end is
//! an error (IOKit prepares past the end and its later segment walk does not terminate); a
//! failed prepare leaves nothing prepared (IOKit counts it, so its callers must complete
//! after a failure); `max_segments` is a per-transfer limit enforced at prepare (a transfer
//! that needs more segments bounces into contiguous memory).
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
//! use dmakit::dma::{BouncePool, DmaCommand, PrepareOptions, SegmentFormat, SegmentSpec};
//! use dmakit::Direction;
//! use std::sync::Arc;
//! // A simulated machine with RAM above 4 GiB; any `Platform` does.
//! let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//! let spec = SegmentSpec::builder().address_bits(32).max_segment_size(0x1000).build()?;
//! let buf = Arc::new(BufferMemoryDescriptor::new(
//!     machine.clone(),
//!     BufferOptions::new(0x3000, Direction::Out),
//! )?);
//! let pool = Arc::new(BouncePool::new(machine.clone(), "my device", 1 << 20));
//! let mut cmd = DmaCommand::builder(machine)
//!     .spec(spec)
//!     .format(SegmentFormat::Little32)
//!     .bounce_pool(pool)
//!     .build()?;
//! cmd.set_memory_descriptor(buf)?;
//! cmd.prepare(PrepareOptions::new())?;
//! let mut bytes = 0;
//! for seg in cmd.segments() {
//!     let seg = seg?;
//!     assert!(seg.addr.0 + seg.len <= 1 << 32 && seg.len <= 0x1000);
//!     bytes += seg.len;
//! }
//! assert_eq!(bytes, 0x3000);
//! cmd.complete()?;
//! # Ok::<(), dmakit::Error>(())
//! ```

use super::bounce::{boundary_alignment, BouncePool};
use super::format::{IoSegment, SegmentFormat};
use super::options::{CompleteOptions, Constraint, PrepareOptions};
use super::quarantine::{Held, Quarantine};
use super::spec::SegmentSpec;
use crate::descriptor::{BufferMemoryDescriptor, MemoryDescriptor, PrepOwner};
use crate::mapper::{Access, IovaPlacement, Mapper};
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
    /// The constraint.
    pub constraint: Constraint,
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
    /// `table` is empty when the whole range is one IO run; else it lists where each IO
    /// run starts (sorted by `x`, the first at 0).
    Mapped {
        iova: IoAddr,
        pages: u64,
        first_off: u64,
        table: Vec<MapRun>,
        bounce: Option<Bounce<P>>,
    },
}

/// Where an IO run of a mapped preparation starts: prepared offset `x` is at device
/// address `io`, and the bytes up to the next run's `x` follow it.
#[derive(Clone, Copy, Debug)]
struct MapRun {
    x: u64,
    io: u64,
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
    /// Prepares of this same range outstanding (nested prepares are counted).
    count: u32,
    /// Whether the range is prepared already (its memory held): then the descriptor is
    /// read as it was ([`MemoryDescriptor::prepared_segment`]), so a buffer whose length
    /// went down since still answers for the whole range; while it is being prepared, as
    /// it is now, so a hole is refused.
    settled: bool,
}

impl<P: Platform + Clone> Preparation<P> {
    /// The descriptor's physical run at `offset`, as this preparation reads it (see
    /// `settled`).
    fn segment(
        &self,
        md: &dyn MemoryDescriptor,
        offset: u64,
    ) -> Result<crate::descriptor::Segment> {
        if self.settled {
            md.prepared_segment(offset)
        } else {
            md.physical_segment(offset)
        }
    }

    /// Whether the device may read the memory: a bounce buffer is filled before it does.
    /// A descriptor of direction `None` states no limit, so it counts both ways (IOKit
    /// copies such a descriptor into and out of its bounce buffer).
    fn device_reads(&self) -> bool {
        self.dir.device_reads() || self.dir == Direction::None
    }

    /// Whether the device may write the memory: what it wrote is copied back from a bounce
    /// buffer (and a non-coherent command's caches invalidated) when it is done. `None`
    /// counts, as for [`device_reads`](Self::device_reads).
    fn device_writes(&self) -> bool {
        self.dir.device_writes() || self.dir == Direction::None
    }
}

/// What giving a preparation back needs (shared by `complete`, drop and the quarantine).
struct Owner<P: Platform + Clone> {
    pool: Option<Arc<BouncePool<P>>>,
    mode: MappingMode,
    quarantine: Option<Arc<Quarantine>>,
    id: u64,
}

impl<P: Platform + Clone> Owner<P> {
    /// Gives back everything `prep` holds. When its IO addresses cannot be unmapped the
    /// device may still reach its memory: nothing is given back and `prep` is returned
    /// with the error, still holding all of it.
    fn release(
        &self,
        md: &dyn MemoryDescriptor,
        mut prep: Preparation<P>,
    ) -> core::result::Result<(), Box<(Error, Preparation<P>)>> {
        if let Err(e) = self.release_route(&mut prep) {
            return Err(Box::new((e, prep)));
        }
        drop(prep);
        let _ = md.complete_for(PrepOwner::command(self.id));
        crate::debug::completed(self.id);
        Ok(())
    }

    /// Gives back a preparation's IO addresses and bounce memory, keeping its wiring; the
    /// preparation is left direct. If the mapper cannot unmap, the route stays as it was
    /// (bounce memory included) and the mapper's error is returned.
    fn release_route(&self, prep: &mut Preparation<P>) -> Result<()> {
        if let (Route::Mapped { iova, pages, .. }, MappingMode::Mapped(m)) =
            (&prep.route, &self.mode)
        {
            // The mapper invalidates before the IO addresses can be handed out again.
            m.iovm_free(*iova, *pages)?;
        }
        let route = core::mem::replace(&mut prep.route, Route::Direct);
        if route.bounces() {
            if let Some(pool) = &self.pool {
                pool.give_back(route.pool_bytes(prep.length));
            }
        }
        Ok(())
    }

    /// Keeps a preparation that could not be released (its IO addresses are still mapped)
    /// for good: in the quarantine when there is one, else leaked, never freed under the
    /// device.
    fn keep(&self, md: Arc<dyn MemoryDescriptor>, prep: Preparation<P>, held: u64)
    where
        P: 'static,
    {
        match &self.quarantine {
            Some(q) => {
                q.prepared();
                q.hold(Box::new(Dropped {
                    owner: Owner {
                        pool: self.pool.clone(),
                        mode: self.mode.clone(),
                        quarantine: None,
                        id: self.id,
                    },
                    md,
                    prep,
                    held,
                }));
            }
            None => {
                core::mem::forget(prep);
                core::mem::forget(md);
            }
        }
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
    fn release(self: Box<Self>) -> core::result::Result<(), (Error, Box<dyn Held>)> {
        let Dropped {
            owner,
            md,
            prep,
            held,
        } = *self;
        owner.release(md.as_ref(), prep).map_err(|failed| {
            let (e, prep) = *failed;
            let kept: Box<dyn Held> = Box::new(Dropped {
                owner,
                md,
                prep,
                held,
            });
            (e, kept)
        })
    }

    fn held_bytes(&self) -> u64 {
        self.held
    }
}

/// IOKit's IODMACommand.
///
/// One command per device (or per outstanding transfer): built once with the device's
/// constraints, then for each transfer attach memory, prepare, hand the segments to the
/// device, complete.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
/// use dmakit::dma::{DmaCommand, PrepareOptions, SegmentFormat, SegmentSpec};
/// use dmakit::{Direction, PhysAddr};
/// use std::sync::Arc;
/// // Coherent, so what the CPU wrote is what the device reads (see `synchronize`).
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
///
/// // Once per device: its constraints and the segment layout it reads.
/// let spec = SegmentSpec::builder().max_segment_size(0x1000).build()?;
/// let mut cmd = DmaCommand::builder(machine.clone())
///     .spec(spec)
///     .format(SegmentFormat::Little64)
///     .build()?;
///
/// // Per transfer.
/// let data: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::with_bytes(
///     machine.clone(),
///     &[0xAB; 0x2800],
///     Direction::Out,
/// )?);
/// cmd.set_memory_descriptor(data)?;
/// cmd.prepare(PrepareOptions::new())?;
/// let mut list = [0u8; 16 * 8]; // the device's scatter list: 8 elements of 16 bytes
/// let mut offset = 0;
/// let n = cmd.gen_segments(&mut offset, &mut list)?;
/// assert_eq!(offset, 0x2800, "the whole transfer in one call");
/// for i in 0..n {
///     // What the device does with each element: read the bytes there.
///     let seg = SegmentFormat::Little64.read(&list, i)?;
///     let mut got = vec![0u8; seg.len as usize];
///     machine.device_read(PhysAddr(seg.addr.0), &mut got)?;
///     assert!(seg.len <= 0x1000 && got.iter().all(|&b| b == 0xAB));
/// }
/// cmd.complete()?;
/// cmd.clear_memory_descriptor()?; // ready for the next transfer
/// # Ok::<(), dmakit::Error>(())
/// ```
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
    /// Whether the command cleans and invalidates CPU caches around the device's accesses:
    /// always in [`MappingMode::NonCoherent`], and through an IOMMU whenever the platform
    /// says device accesses do not snoop the caches (`dma_coherent` false), as on many
    /// arm64 systems.
    pub fn maintains_caches(&self) -> bool {
        match self.owner.mode {
            MappingMode::NonCoherent => true,
            MappingMode::Mapped(_) => !self.platform.dma_coherent(),
            MappingMode::Bypassed | MappingMode::IterateOnly => false,
        }
    }

    /// A builder for a command on `platform` (IOKit `IODMACommand::withSpecification`):
    /// no constraints, [`SegmentFormat::Host64`], [`MappingMode::Bypassed`], no bounce pool
    /// and no quarantine until set.
    ///
    /// ```
    /// use dmakit::dma::{DmaCommand, MappingMode, SegmentFormat, SegmentSpec};
    /// use dmakit::Error;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// // A 32-bit format limits a spec with no address limit to 32 bits...
    /// let cmd = DmaCommand::builder(machine.clone())
    ///     .format(SegmentFormat::Big32)
    ///     .mode(MappingMode::NonCoherent)
    ///     .build()?;
    /// assert_eq!(cmd.spec().max_address(), 0xFFFF_FFFF);
    /// assert!(cmd.maintains_caches());
    /// // ...and refuses one that reaches above 4 GiB.
    /// let wide = SegmentSpec::builder().address_bits(40).build()?;
    /// let refused = DmaCommand::builder(machine).spec(wide).format(SegmentFormat::Big32).build();
    /// assert!(matches!(refused, Err(Error::BadArgument { .. })));
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn builder(platform: P) -> DmaCommandBuilder<P> {
        DmaCommandBuilder {
            platform,
            spec: SegmentSpec::default(),
            format: SegmentFormat::Host64,
            mode: MappingMode::Bypassed,
            pool: None,
            quarantine: None,
        }
    }

    /// The spec a command with `format` uses for `spec`: a 32-bit format limits a spec with
    /// no address limit to 32 bits and refuses one that reaches further (IOKit: 0 address
    /// bits become 32 for the 32-bit output functions, more than 32 are refused); its
    /// 32-bit length field caps segments at the longest length it holds that ends where
    /// the next segment may start (`2^32` less the internal or length alignment, so
    /// `0xFFFF_FFFF` bytes without one, as IOKit's 32-bit outputs carry).
    fn spec_for(spec: SegmentSpec, format: SegmentFormat) -> Result<SegmentSpec> {
        let mut spec = spec;
        if spec.max_address() > format.max_address() {
            if spec.has_address_limit() {
                return Err(Error::BadArgument {
                    what: "a 32-bit segment format needs a spec limited to 32 address bits",
                    value: spec.max_address(),
                });
            }
            spec = spec.limited_to(format.max_address())?;
        }
        if spec.max_segment_size() > format.max_address() {
            let cut = spec.internal_alignment().max(spec.length_alignment());
            let longest = match (format.max_address() + 1).checked_sub(cut) {
                Some(n) if n > 0 => n,
                // An alignment of 4 GiB or more: no segment of a 32-bit length can end on it.
                _ => 1 << 31,
            };
            let cap = SegmentSpec::builder().max_segment_size(longest).build()?;
            spec = spec.intersect(&cap)?;
        }
        Ok(spec)
    }

    /// A command with nothing attached.
    fn from_builder(b: DmaCommandBuilder<P>) -> Result<Self> {
        Ok(DmaCommand {
            spec: Self::spec_for(b.spec, b.format)?,
            platform: b.platform,
            format: b.format,
            owner: Owner {
                pool: b.pool,
                mode: b.mode,
                quarantine: b.quarantine,
                id: crate::debug::next_id(),
            },
            md: None,
            prep: None,
        })
    }

    /// A new, unprepared command with this one's spec, format, mapping mode, bounce pool and
    /// quarantine, and nothing attached (IOKit `cloneCommand`, which swaps the length and
    /// internal-segment alignments by mistake; dmakit copies them as they are).
    pub fn clone_command(&self) -> Result<Self> {
        Self::from_builder(DmaCommandBuilder {
            platform: self.platform.clone(),
            spec: self.spec,
            format: self.format,
            mode: self.owner.mode.clone(),
            pool: self.owner.pool.clone(),
            quarantine: self.owner.quarantine.clone(),
        })
    }

    /// The constraints (IOKit `getNumAddressBits`, `getAlignment`, `getAlignmentLength`,
    /// `getAlignmentInternalSegments` are its [`address_bits`](SegmentSpec::address_bits),
    /// [`alignment`](SegmentSpec::alignment),
    /// [`length_alignment`](SegmentSpec::length_alignment) and
    /// [`internal_alignment`](SegmentSpec::internal_alignment)).
    pub fn spec(&self) -> &SegmentSpec {
        &self.spec
    }

    /// Replaces the constraints (IOKit `setSpecification`); refused while prepared
    /// ([`Error::NotPermitted`], as IOKit's `prepareWithSpecification`).
    pub fn set_spec(&mut self, spec: SegmentSpec) -> Result<()> {
        if self.prep.is_some() {
            return Err(Error::NotPermitted {
                what: "changing the spec of a prepared DMA command",
                hint: "complete the command first",
            });
        }
        self.spec = Self::spec_for(spec, self.format)?;
        Ok(())
    }

    /// Sets the constraints and prepares (IOKit `prepareWithSpecification`). Refused while
    /// prepared.
    pub fn prepare_with_spec(&mut self, spec: SegmentSpec, options: PrepareOptions) -> Result<()> {
        self.set_spec(spec)?;
        self.prepare(options)
    }

    /// The output format.
    pub fn format(&self) -> SegmentFormat {
        self.format
    }

    /// The mapping mode.
    pub fn mode(&self) -> &MappingMode {
        &self.owner.mode
    }

    /// The id the dma-debug ledger files this command under.
    pub fn debug_id(&self) -> u64 {
        self.owner.id
    }

    /// The owner this command's descriptor preparations are held under: only the command
    /// can end them.
    pub fn prep_owner(&self) -> PrepOwner {
        PrepOwner::command(self.owner.id)
    }

    /// Makes the command one of a device's: a preparation dropped with the command waits in
    /// `quarantine` until the device is quiesced. Refused while prepared.
    pub fn set_quarantine(&mut self, quarantine: Arc<Quarantine>) -> Result<()> {
        self.not_prepared()?;
        self.owner.quarantine = Some(quarantine);
        Ok(())
    }

    /// Attaches a descriptor without preparing it (IOKit `setMemoryDescriptor(md,
    /// autoPrepare = false)`). The descriptor already attached is `Ok` and changes nothing,
    /// prepared or not (IOKit completes it here; dmakit leaves a preparation to
    /// [`complete`](Self::complete), so memory is never released under a device by an attach).
    /// Another descriptor while prepared is [`Error::Busy`].
    pub fn set_memory_descriptor(&mut self, md: Arc<dyn MemoryDescriptor>) -> Result<()> {
        if self.is_attached(&md) {
            return Ok(());
        }
        self.not_prepared()?;
        self.md = Some(md);
        Ok(())
    }

    /// Attaches a descriptor and prepares all of it (IOKit `setMemoryDescriptor(md)`, whose
    /// `autoPrepare` defaults to true); a failed prepare leaves nothing attached. The
    /// descriptor already attached is `Ok` and prepares nothing, prepared or not, as in
    /// IOKit (which returns at once for the descriptor it holds): after a `complete`,
    /// prepare it again with [`prepare`](Self::prepare).
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::DmaCommand;
    /// use dmakit::Direction;
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let md: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::new(
    ///     machine.clone(),
    ///     BufferOptions::new(0x1000, Direction::In),
    /// )?);
    /// let mut cmd = DmaCommand::builder(machine).build()?;
    /// cmd.set_memory_descriptor_and_prepare(md.clone())?;
    /// cmd.set_memory_descriptor_and_prepare(md.clone())?; // the same: nothing prepared twice
    /// assert_eq!((cmd.prepared(), cmd.prepare_count()), (Some((0, 0x1000)), 1));
    /// cmd.complete()?;
    /// cmd.set_memory_descriptor_and_prepare(md)?; // still attached: nothing prepared
    /// assert!(cmd.prepared().is_none());
    /// cmd.complete_and_clear()?; // IOKit's clearMemoryDescriptor()
    /// assert!(cmd.memory_descriptor().is_none());
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn set_memory_descriptor_and_prepare(
        &mut self,
        md: Arc<dyn MemoryDescriptor>,
    ) -> Result<()> {
        if self.is_attached(&md) {
            return Ok(());
        }
        self.set_memory_descriptor(md)?;
        self.prepare(PrepareOptions::new()).inspect_err(|_| {
            self.md = None;
        })
    }

    fn is_attached(&self, md: &Arc<dyn MemoryDescriptor>) -> bool {
        self.md
            .as_ref()
            .is_some_and(|m| core::ptr::addr_eq(Arc::as_ptr(m), Arc::as_ptr(md)))
    }

    /// Detaches the descriptor (IOKit `clearMemoryDescriptor(autoComplete = false)`).
    /// Prepared is [`Error::NotReady`]: complete first, or use
    /// [`complete_and_clear`](Self::complete_and_clear).
    pub fn clear_memory_descriptor(&mut self) -> Result<()> {
        if let Some(p) = &self.prep {
            return Err(Error::NotReady {
                what: "clear_memory_descriptor on a prepared DMA command (complete it first)",
                addr: p.offset,
            });
        }
        self.md = None;
        Ok(())
    }

    /// Completes every outstanding prepare (copying back what the device wrote) and detaches
    /// the descriptor (IOKit `clearMemoryDescriptor()`, whose `autoComplete` defaults to
    /// true). The first error is returned after everything is released.
    pub fn complete_and_clear(&mut self) -> Result<()> {
        let mut result = Ok(());
        while self.prep.is_some() {
            if let Err(e) = self.complete() {
                result = result.and(Err(e));
            }
        }
        self.md = None;
        result
    }

    /// The attached descriptor (IOKit `getMemoryDescriptor`).
    pub fn memory_descriptor(&self) -> Option<&Arc<dyn MemoryDescriptor>> {
        self.md.as_ref()
    }

    /// The memory the device reaches (IOKit `getIOMemoryDescriptor`): the whole-transfer
    /// bounce buffer while one is in use (its data starts at
    /// [`bounce_data_offset`](Self::bounce_data_offset)), else the attached descriptor.
    pub fn io_memory_descriptor(&self) -> Option<&dyn MemoryDescriptor> {
        match self.prep.as_ref().and_then(|p| p.route.bounce()) {
            Some(b) => Some(&b.buffer),
            None => self.md.as_deref(),
        }
    }

    /// Where the transfer's first byte is in the bounce buffer
    /// [`io_memory_descriptor`](Self::io_memory_descriptor) returns (0 without one).
    pub fn bounce_data_offset(&self) -> u64 {
        self.prep
            .as_ref()
            .and_then(|p| p.route.bounce())
            .map_or(0, |b| b.data_off)
    }

    fn not_prepared(&self) -> Result<()> {
        if let Some(p) = &self.prep {
            return Err(Error::Busy {
                what: "DMA command",
                addr: p.offset,
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
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor, SubMemoryDescriptor};
    /// use dmakit::dma::{BouncePool, Constraint, DmaCommand, PrepareOptions, SegmentSpec};
    /// use dmakit::Direction;
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// // A device that needs its buffer to start on a 64-byte boundary...
    /// let spec = SegmentSpec::builder().alignment(64).build()?;
    /// let pool = Arc::new(BouncePool::new(machine.clone(), "example", 1 << 16));
    /// let mut cmd = DmaCommand::builder(machine.clone()).spec(spec).bounce_pool(pool).build()?;
    /// // ...given one that starts 3 bytes into a page.
    /// let page: Arc<dyn MemoryDescriptor> =
    ///     Arc::new(BufferMemoryDescriptor::with_bytes(machine, &[7; 4096], Direction::Out)?);
    /// let odd = Arc::new(SubMemoryDescriptor::new(page, 3, 100, Direction::Out)?);
    /// cmd.set_memory_descriptor(odd)?;
    /// cmd.prepare(PrepareOptions::new())?;
    /// let why = cmd.bounce_reason().expect("it bounced");
    /// assert_eq!(why.constraint, Constraint::Alignment);
    /// assert_eq!(why.addr % 4096, 3, "the address that broke it");
    /// let seg = cmd.segments().next().expect("a segment")?;
    /// assert_eq!(seg.addr.0 % 64, 0, "the device gets an aligned copy");
    /// cmd.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn bounce_reason(&self) -> Option<BounceReason> {
        self.prep.as_ref().and_then(|p| p.reason)
    }

    /// The prepared `(offset, length)`, if prepared.
    pub fn prepared(&self) -> Option<(u64, u64)> {
        self.prep.as_ref().map(|p| (p.offset, p.length))
    }

    /// The prepared `(offset, length)` (IOKit `getPreparedOffsetAndLength`); not prepared
    /// is [`Error::NotReady`].
    pub fn prepared_offset_and_length(&self) -> Result<(u64, u64)> {
        self.prepared().ok_or(Error::NotReady {
            what: "prepared offset and length of an unprepared DMA command",
            addr: 0,
        })
    }

    /// How many prepares of the current range are outstanding (0 when not prepared).
    pub fn prepare_count(&self) -> u32 {
        self.prep.as_ref().map_or(0, |p| p.count)
    }

    /// Runs a CPU copy of the prepared memory that the caller has synchronized for (the
    /// typed layer's sync methods): the dma-debug ledger does not count it as misuse.
    pub(crate) fn cpu_copy<R>(&self, f: impl FnOnce() -> R) -> R {
        let _sync = SyncWindow::new(self.owner.id);
        f()
    }

    /// The first constraint `seg` breaks, if any (`first`/`last`: its place in the transfer).
    fn violates(&self, seg: IoSegment, first: bool, last: bool) -> Option<Constraint> {
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
    fn raw_run(
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
            let cut = if s.length_alignment() > s.internal_alignment() {
                // The length is a multiple of the length alignment, counted from the
                // segment's start (so the end keeps the start's internal alignment).
                let len = end - c.addr.0;
                c.addr.0 + (len - len % s.length_alignment())
            } else {
                // The end on the internal alignment (a multiple of the length alignment).
                end - end % q
            };
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
    fn too_many_segments(
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

    /// Prepares a range of the descriptor for DMA (IOKit `prepare`): wires it under the
    /// command's own [`PrepOwner`] (so only the command can end the preparation), decides the
    /// route (direct, per-page bounced, double buffered or mapped), fills bounce buffers for
    /// a device that reads and does a non-coherent command's cache maintenance, as `options`
    /// say. A descriptor of direction [`Direction::None`] states no limit: it is treated as
    /// `InOut`, copied into a bounce buffer here and back at the last complete, as IOKit does.
    ///
    /// A prepare of the range already prepared is counted (each needs a
    /// [`complete`](Self::complete); the last one ends the transfer) and does nothing else;
    /// another range while prepared is [`Error::NotReady`] and is not counted. No descriptor
    /// is [`Error::NotReady`]; an empty range, or one past the descriptor's end, is an
    /// error; a length above `max_transfer_size` is [`Error::NoSpace`] and one that is not a
    /// multiple of `length_alignment` is [`Error::NotAligned`]. The checks run in IOKit's
    /// order: the transfer size first (also while prepared), then another range while
    /// prepared, then the length alignment, then the range itself. A bounce copy that falls
    /// short (memory the descriptor cannot read) is [`Error::Underrun`], as in IOKit; an
    /// error the platform reports for a copy is returned as it is. Either way nothing stays
    /// prepared.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{DmaCommand, PrepareOptions};
    /// use dmakit::{Direction, Error};
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let md: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::new(
    ///     machine.clone(),
    ///     BufferOptions::new(0x4000, Direction::In),
    /// )?);
    /// let mut cmd = DmaCommand::builder(machine).build()?;
    /// assert!(matches!(cmd.prepare(PrepareOptions::new()), Err(Error::NotReady { .. })));
    /// cmd.set_memory_descriptor(md)?;
    /// let second_page = PrepareOptions::range(0x1000, 0x1000);
    /// cmd.prepare(second_page)?;
    /// cmd.prepare(second_page)?; // nested: counted
    /// assert_eq!((cmd.prepared(), cmd.prepare_count()), (Some((0x1000, 0x1000)), 2));
    /// // Another range while prepared is refused, and not counted.
    /// assert!(matches!(cmd.prepare(PrepareOptions::new()), Err(Error::NotReady { .. })));
    /// // Past the end is an error, never a walk off the descriptor.
    /// cmd.complete()?;
    /// cmd.complete()?;
    /// assert!(cmd.prepare(PrepareOptions::range(0x3000, 0x2000)).is_err());
    /// assert_eq!(cmd.prepare_count(), 0);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn prepare(&mut self, options: PrepareOptions) -> Result<()> {
        let md = self.md.clone().ok_or(Error::NotReady {
            what: "prepare of a DMA command without a memory descriptor",
            addr: 0,
        })?;
        let (offset, length) = options.requested_range().unwrap_or((0, md.length()));
        if length > self.spec.max_transfer_size() {
            // IOKit's first check, before a preparation in progress is looked at.
            return Err(Error::NoSpace {
                what: "DMA transfer above the spec's max_transfer_size",
                requested: length,
                align: 0,
                free: self.spec.max_transfer_size(),
            });
        }
        if let Some(p) = &mut self.prep {
            if (p.offset, p.length) != (offset, length) {
                return Err(Error::NotReady {
                    what: "prepare of another range while the DMA command is prepared (complete it first)",
                    addr: offset,
                });
            }
            p.count = p.count.checked_add(1).ok_or(Error::NoResources {
                what: "nested prepares of one DMA command",
                limit: u32::MAX as u64,
            })?;
            return Ok(());
        }
        self.check_range(md.as_ref(), offset, length)?;
        let dir = md.direction();
        md.prepare_for(self.prep_owner(), dir)?;
        let mut prep = Preparation {
            offset,
            length,
            dir,
            route: Route::Direct,
            reason: None,
            count: 1,
            settled: false,
        };
        if let Err(e) = self.settle(md.as_ref(), &mut prep, options, false) {
            if let Err(failed) = self.owner.release(md.as_ref(), prep) {
                let (_, prep) = *failed;
                // Still mapped: the device could reach it; never free it.
                let held = prep
                    .route
                    .held_bytes(length, self.platform.page_size().bytes());
                self.owner.keep(md.clone(), prep, held);
            }
            return Err(e);
        }
        self.record_prepared(md.as_ref(), &prep);
        prep.settled = true;
        self.prep = Some(prep);
        Ok(())
    }

    /// The checks of a first prepare of `[offset, offset + length)` after the transfer
    /// size: IOKit's length alignment, then dmakit's own (an empty range, a range past the
    /// descriptor's end), which IOKit does not make.
    fn check_range(&self, md: &dyn MemoryDescriptor, offset: u64, length: u64) -> Result<()> {
        if length == 0 {
            return Err(Error::ZeroSize {
                what: "DMA command prepare (an empty descriptor or range)",
            });
        }
        if !length.is_multiple_of(self.spec.length_alignment()) {
            return Err(Error::NotAligned {
                what: "DMA transfer length (spec length_alignment)",
                value: length,
                align: self.spec.length_alignment(),
            });
        }
        crate::descriptor::check_range("DMA command prepare", offset, length, md.length())
    }

    /// Routes a wired preparation and does its cache maintenance.
    fn settle(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &mut Preparation<P>,
        options: PrepareOptions,
        force: bool,
    ) -> Result<()> {
        self.route(md, prep, options.synchronizes(), force)?;
        if options.flushes_cache() && self.maintains_caches() {
            let op = if prep.device_writes() {
                CacheOp::Flush
            } else {
                CacheOp::Clean
            };
            self.cache(md, prep, op)?;
        }
        Ok(())
    }

    fn record_prepared(&self, md: &dyn MemoryDescriptor, prep: &Preparation<P>) {
        crate::debug::prepared(
            crate::debug::PrepInfo {
                command: self.owner.id,
                device: self.owner.quarantine.as_ref().map_or(0, |q| q.id()),
                offset: prep.offset,
                length: prep.length,
                direction: prep.dir,
                route: prep.route.name(),
                held_bytes: prep
                    .route
                    .held_bytes(prep.length, self.platform.page_size().bytes()),
            },
            md,
        );
        if let Some(q) = &self.owner.quarantine {
            q.prepared();
        }
    }

    /// Chooses the route of `prep` (which starts out direct) and fills bounce buffers.
    fn route(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &mut Preparation<P>,
        sync: bool,
        by_caller: bool,
    ) -> Result<()> {
        let pool_forces = self.owner.pool.as_ref().is_some_and(|p| p.force_bounce());
        let forced = (by_caller || pool_forces).then_some(BounceReason {
            constraint: if by_caller {
                Constraint::ForcedByCaller
            } else {
                Constraint::Forced
            },
            addr: 0,
            len: 0,
        });
        if let MappingMode::Mapped(mapper) = &self.owner.mode {
            let mapper = mapper.clone();
            if forced.is_none() {
                let why = |constraint| -> Result<Option<BounceReason>> {
                    Ok(Some(BounceReason {
                        constraint,
                        addr: md.physical_segment(prep.offset)?.addr.0,
                        len: prep.length,
                    }))
                };
                match self.map(mapper.as_ref(), md, prep.offset, prep.length, prep.dir) {
                    Ok(route) => {
                        prep.route = route;
                        match self.preflight(md, prep)? {
                            None => return Ok(()),
                            Some(r) => {
                                prep.reason = Some(r);
                                self.owner.release_route(prep)?;
                            }
                        }
                    }
                    // No IO range at this page offset fits the device's window: a bounce
                    // buffer, whose data starts elsewhere in its page, may.
                    Err(e @ Error::NoSuitableMemory { .. }) if self.owner.pool.is_none() => {
                        return Err(e)
                    }
                    Err(Error::NoSuitableMemory { .. }) => {
                        prep.reason = why(Constraint::AddressWindow)?;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                prep.reason = forced;
            }
            // Copy into a bounce buffer anywhere in memory and map that.
            let bounce = self.take_bounce(md, prep.offset, prep.length, (0, u64::MAX))?;
            let mapped = self.map(
                mapper.as_ref(),
                &bounce.buffer,
                bounce.data_off,
                prep.length,
                prep.dir,
            );
            let Route::Mapped {
                iova,
                pages,
                first_off,
                table,
                ..
            } = mapped.inspect_err(|_| self.give_back(prep.length, &bounce))?
            else {
                self.give_back(prep.length, &bounce);
                return Err(Error::Internal {
                    what: "a bounce buffer was not mapped through the mapper",
                });
            };
            prep.route = Route::Mapped {
                iova,
                pages,
                first_off,
                table,
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
        if reason.constraint == Constraint::AddressWindow && self.per_page(md, prep)? {
            if sync && prep.device_reads() {
                self.copy(md, prep, true)?;
            }
            return Ok(());
        }
        let bounce = self.take_bounce(md, prep.offset, prep.length, self.window())?;
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
            buffer,
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
    fn out_of_reach_runs(
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
    fn finish_bounce(
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
    fn take_bounce(
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

    fn give_back(&self, length: u64, bounce: &Bounce<P>) {
        if let Some(pool) = &self.owner.pool {
            pool.give_back(bounce.data_off + length);
        }
    }

    /// Maps `[offset, offset + length)` of `md` through `mapper` as IOKit lays out an IO
    /// allocation: each physical run gets IO pages of its own, at its own offset in the
    /// page, so runs that meet at page boundaries form one IO run and each other run starts
    /// a new one (listed in the route's table).
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
        // Lay the runs out: count the IO pages and note where an IO run starts (relative to
        // the allocation) when a physical run does not continue the previous one in IO
        // space. The first run is kept: when it holds the whole range, it is all there is.
        let first = md.physical_segment(offset)?;
        let run_at = |x: u64| match x {
            0 => Ok(first),
            x => md.physical_segment(offset + x),
        };
        let first_off = page.offset(first.addr.0);
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
        let place = self.iova_placement(page.bytes(), first_off, end - first_off, pages);
        let iova = mapper.iovm_alloc_placed(pages, &place)?;
        for r in &mut table {
            r.io = r.io.saturating_add(iova.0);
        }
        let mut done = 0u64;
        let mut x = 0;
        let result = (|| {
            while x < length {
                let seg = run_at(x)?;
                let len = seg.len.min(length - x);
                let n = page.pages_spanned(seg.addr.0, len).unwrap_or(0);
                mapper.iovm_insert_run(
                    IoAddr(iova.0 + done * page.bytes()),
                    PhysAddr(page.trunc(seg.addr.0)),
                    n,
                    access,
                )?;
                done += n;
                x += len;
            }
            let reached = match table.len() {
                0 => self.spec.reaches(iova.0 + first_off, length),
                _ => table.iter().enumerate().all(|(i, r)| {
                    let to = table.get(i + 1).map_or(length, |n| n.x);
                    self.spec.reaches(r.io, to - r.x)
                }),
            };
            if !reached {
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
            table,
            bounce: None,
        })
    }

    /// The spec's window of addresses, inclusive.
    fn window(&self) -> (u64, u64) {
        (self.spec.min_address(), self.spec.max_address())
    }

    /// Where the device can use `pages` IO pages holding `length` bytes from `first_off`
    /// into the first: the spec's window (widened by the pages' slack before and after the
    /// data), its start alignment when above a page, and its boundary: the whole range
    /// inside one boundary line when it fits in one, else starting on a line (fewest
    /// segments).
    fn iova_placement(&self, page: u64, first_off: u64, length: u64, pages: u64) -> IovaPlacement {
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
        let _sync = SyncWindow::new(self.owner.id);
        if let Route::PerPage { buffer, pieces, .. } = &prep.route {
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
            if let (Ok(()), Some(pool)) = (&result, &self.owner.pool) {
                pool.count_copy(copied);
            }
            return result;
        }
        let Some(b) = prep.route.bounce() else {
            return Ok(());
        };
        let result = BounceCopy {
            platform: &self.platform,
            md,
            buffer: &b.buffer,
            to_bounce,
        }
        .run(prep.offset + from, b.data_off + from, length);
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
        if let Some(b) = prep.route.bounce() {
            return self
                .platform
                .cache_phys(op, PhysAddr(b.base.0 + b.data_off + from), length);
        }
        // Direct or per-page: the device's runs are physical addresses. Mapped: the IO
        // addresses lead to the descriptor's own physical runs.
        let mapped = matches!(prep.route, Route::Mapped { .. });
        let mut x = from;
        while x < from + length {
            let (addr, run) = if mapped {
                let seg = prep.segment(md, prep.offset + x)?;
                (seg.addr.0, seg.len)
            } else {
                self.raw_run(md, prep, x)?
            };
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
    fn segment_at(&self, x: u64) -> Result<IoSegment> {
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
    fn check_walk_start(
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
    fn check_emitted(&self, seg: IoSegment, first: bool, last: bool) {
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

    /// Makes memory and device agree in `dir` over the whole preparation (IOKit
    /// `synchronize`): `Out` copies the descriptor into a bounce buffer (and cleans a
    /// non-coherent command's caches) before the device reads; `In` invalidates and copies
    /// what the device wrote back into the descriptor. `None` does nothing.
    ///
    /// One direction at a time: `InOut` is [`Error::BadArgument`], as in IOKit (copying
    /// both ways would overwrite what the device wrote with the old bytes). A direction the
    /// transfer was not prepared for is [`Error::BadArgument`] too (recorded by the dma-debug
    /// ledger; IOKit copies anyway). Not prepared is [`Error::NotReady`].
    ///
    /// Through a bounce buffer, the device sees the CPU's changes only after
    /// `synchronize(Out)`, and the CPU sees the device's only after `synchronize(In)` (or
    /// `complete`):
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{BouncePool, DmaCommand, PrepareOptions};
    /// use dmakit::{Direction, Error, PhysAddr};
    /// use std::sync::Arc;
    /// let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
    ///
    /// let pool = Arc::new(BouncePool::new(machine.clone(), "example", 1 << 16));
    /// pool.set_force_bounce(true); // every transfer through a bounce buffer
    /// let mut cmd = DmaCommand::builder(machine.clone()).bounce_pool(pool).build()?;
    /// let buf = Arc::new(BufferMemoryDescriptor::new(
    ///     machine.clone(),
    ///     BufferOptions::new(16, Direction::InOut),
    /// )?);
    /// assert_eq!(buf.write_bytes(0, b"request v1"), 10);
    /// cmd.set_memory_descriptor(buf.clone())?;
    /// cmd.prepare(PrepareOptions::new())?; // copies into the bounce buffer
    /// let at = PhysAddr(cmd.segments().next().expect("a segment")?.addr.0);
    /// let device_sees = |n| -> dmakit::Result<Vec<u8>> {
    ///     let mut v = vec![0u8; n];
    ///     machine.device_read(at, &mut v)?;
    ///     Ok(v)
    /// };
    ///
    /// assert_eq!(buf.write_bytes(9, b"2"), 1);
    /// assert_eq!(device_sees(10)?, b"request v1", "the device reads the copy");
    /// cmd.synchronize(Direction::Out)?;
    /// assert_eq!(device_sees(10)?, b"request v2");
    ///
    /// machine.device_write(at, b"reply")?; // the device writes the copy
    /// cmd.synchronize(Direction::In)?;
    /// let mut back = [0u8; 5];
    /// assert_eq!(buf.read_bytes(0, &mut back), 5);
    /// assert_eq!(&back, b"reply");
    /// // One direction at a time.
    /// assert!(matches!(cmd.synchronize(Direction::InOut), Err(Error::BadArgument { .. })));
    /// cmd.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn synchronize(&self, dir: Direction) -> Result<()> {
        let length = self.prep.as_ref().map_or(0, |p| p.length);
        self.synchronize_range(dir, 0, length)
    }

    /// [`synchronize`](Self::synchronize) for `[offset, offset + length)` of the prepared
    /// range only (relative offsets), as Linux's `dma_sync_single_range_*`. Outside the
    /// preparation is [`Error::OutOfBounds`]; the direction rules are `synchronize`'s
    /// (violations recorded by the dma-debug ledger).
    pub fn synchronize_range(&self, dir: Direction, offset: u64, length: u64) -> Result<()> {
        if dir == Direction::InOut {
            crate::debug::record(
                crate::debug::ViolationKind::SyncWrongDirection,
                self.owner.id,
                || alloc_crate::string::String::from("synchronize in both directions at once"),
            );
            return Err(Error::BadArgument {
                what: "synchronize takes one direction (In or Out), not InOut",
                value: dir.bits() as u64,
            });
        }
        let (prep, md) = self.parts("synchronize on an unprepared DMA command")?;
        if dir == Direction::None {
            return Ok(());
        }
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
        let non_coherent = self.maintains_caches();
        if dir == Direction::Out {
            self.copy_range(md, prep, offset, length, true)?;
            if non_coherent {
                self.cache_range(md, prep, offset, length, CacheOp::Clean)?;
            }
        } else {
            if non_coherent {
                self.cache_range(md, prep, offset, length, CacheOp::Invalidate)?;
            }
            self.copy_range(md, prep, offset, length, false)?;
        }
        Ok(())
    }

    /// Moves the transfer into a whole-transfer bounce buffer (IOKit `synchronize` with
    /// `kForceDoubleBuffer`), for a caller that wants the device to see a private copy.
    /// Already double buffered is `Ok`. What the device wrote so far is copied back first;
    /// the new buffer is filled from the descriptor for a device that reads. Call it while
    /// the device is not using the memory. An iterate-only command is
    /// [`Error::MessageTooLarge`] (it never bounces); nested prepares outstanding are
    /// [`Error::Busy`] (IOKit does nothing then). Unlike IOKit, the bounce also happens when
    /// nothing else would need a walk.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
    /// use dmakit::dma::{BouncePool, Constraint, DmaCommand, PrepareOptions};
    /// use dmakit::Direction;
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let pool = Arc::new(BouncePool::new(machine.clone(), "example", 1 << 16));
    /// let mut cmd = DmaCommand::builder(machine.clone()).bounce_pool(pool).build()?;
    /// let md: Arc<dyn MemoryDescriptor> =
    ///     Arc::new(BufferMemoryDescriptor::with_bytes(machine, b"private", Direction::Out)?);
    /// cmd.set_memory_descriptor(md)?;
    /// cmd.prepare(PrepareOptions::new())?;
    /// assert!(!cmd.is_bounced());
    /// cmd.force_double_buffer()?; // the device now reads a private copy
    /// assert_eq!(cmd.bounce_reason().map(|r| r.constraint), Some(Constraint::ForcedByCaller));
    /// let mut copy = [0u8; 7];
    /// assert_eq!(cmd.read_bytes(0, &mut copy), 7); // what the device reaches
    /// assert_eq!(&copy, b"private");
    /// cmd.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn force_double_buffer(&mut self) -> Result<()> {
        let (count, whole) = match &self.prep {
            None => {
                return Err(Error::NotReady {
                    what: "force_double_buffer on an unprepared DMA command",
                    addr: 0,
                })
            }
            // A whole-transfer bounce buffer: bypassed or mapped.
            Some(p) => (p.count, p.route.bounce().is_some()),
        };
        if whole {
            return Ok(());
        }
        if count > 1 {
            return Err(Error::Busy {
                what: "DMA command",
                addr: count as u64,
                why: "nested prepares are outstanding; double buffering would move memory they hand out",
            });
        }
        let md = self.md.clone().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        let Some(mut prep) = self.prep.take() else {
            return Err(Error::Internal {
                what: "preparation vanished",
            });
        };
        let mut fresh = Preparation {
            offset: prep.offset,
            length: prep.length,
            dir: prep.dir,
            route: Route::Direct,
            reason: None,
            count: 1,
            settled: true,
        };
        let r = self
            .settle(md.as_ref(), &mut fresh, PrepareOptions::new(), true)
            .and_then(|()| {
                if prep.device_writes() {
                    self.copy(md.as_ref(), &prep, false)?;
                    if fresh.device_reads() {
                        self.copy(md.as_ref(), &fresh, true)?;
                    }
                }
                Ok(())
            });
        let r = r.and_then(|()| self.owner.release_route(&mut prep));
        match r {
            Ok(()) => {
                self.prep = Some(fresh);
                Ok(())
            }
            Err(e) => {
                if self.owner.release_route(&mut fresh).is_err() {
                    // The new route is still mapped too: its bounce memory and IO
                    // addresses are kept for good (the wiring stays with `prep`).
                    core::mem::forget(fresh);
                }
                self.prep = Some(prep);
                Err(e)
            }
        }
    }

    /// Copies from the memory the device reaches (a bounce buffer where there is one) at
    /// `offset` of the preparation into `buf` (IOKit `IODMACommand::readBytes`): at most to
    /// the end of the preparation; 0 when not prepared or `offset` is at or past its end.
    #[must_use = "the count says how many bytes were copied"]
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        self.dma_copy(offset, buf.len(), &mut |md, at, i, n| {
            md.read_bytes(at, &mut buf[i..i + n])
        })
    }

    /// Copies `data` into the memory the device reaches (a bounce buffer where there is
    /// one) at `offset` of the preparation (IOKit `IODMACommand::writeBytes`); same bounds
    /// as [`read_bytes`](Self::read_bytes).
    #[must_use = "the count says how many bytes were copied"]
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        self.dma_copy(offset, data.len(), &mut |md, at, i, n| {
            md.write_bytes(at, &data[i..i + n])
        })
    }

    /// Runs `step(memory, its offset, index into the caller's bytes, count)` over the pieces
    /// of the device-visible memory behind `[offset, offset + len)` of the preparation.
    fn dma_copy(
        &self,
        offset: u64,
        len: usize,
        step: &mut dyn FnMut(&dyn MemoryDescriptor, u64, usize, usize) -> usize,
    ) -> usize {
        let Ok((prep, md)) = self.parts("DMA command copy") else {
            return 0;
        };
        let n = crate::descriptor::clamp(offset, len, prep.length);
        if n == 0 {
            // Nothing to copy; an offset past the end must not be added to anything.
            return 0;
        }
        let _sync = SyncWindow::new(self.owner.id);
        if let Some(b) = prep.route.bounce() {
            return step(&b.buffer, b.data_off + offset, 0, n);
        }
        let Route::PerPage { buffer, pieces, .. } = &prep.route else {
            return step(md, prep.offset + offset, 0, n);
        };
        let mut i = 0usize;
        while i < n {
            let x = offset + i as u64;
            let k = pieces.partition_point(|p| p.x + p.len <= x);
            let (mem, at, run): (&dyn MemoryDescriptor, u64, u64) = match pieces.get(k) {
                Some(p) if p.x <= x => (buffer, p.buf_off + (x - p.x), p.len - (x - p.x)),
                next => (md, prep.offset + x, next.map_or(u64::MAX, |p| p.x - x)),
            };
            let want = (run.min((n - i) as u64)) as usize;
            let got = step(mem, at, i, want);
            i += got;
            if got < want {
                break;
            }
        }
        i
    }

    /// Ends one prepare (IOKit `complete()` with its defaults: invalidate caches and copy
    /// back). See [`complete_with`](Self::complete_with).
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{DmaCommand, MappingMode, PrepareOptions};
    /// use dmakit::{Direction, Error, PhysAddr};
    /// use std::sync::Arc;
    /// // Not coherent: the CPU would read stale cache lines without the invalidate.
    /// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let buf = Arc::new(BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(8, Direction::In))?);
    /// let mut cmd = DmaCommand::builder(machine.clone()).mode(MappingMode::NonCoherent).build()?;
    /// cmd.set_memory_descriptor(buf.clone())?;
    /// cmd.prepare(PrepareOptions::new())?;
    /// let at = PhysAddr(cmd.segments().next().expect("a segment")?.addr.0);
    /// machine.device_write(at, b"received")?;
    /// cmd.complete()?; // invalidates the CPU cache over the buffer
    /// let mut back = [0u8; 8];
    /// assert_eq!(buf.read_bytes(0, &mut back), 8);
    /// assert_eq!(&back, b"received");
    /// assert!(matches!(cmd.complete(), Err(Error::NotReady { .. })), "one complete per prepare");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn complete(&mut self) -> Result<()> {
        self.complete_with(CompleteOptions::new())
    }

    /// Ends one prepare (IOKit `complete(invalidateCache, synchronize)`). While nested
    /// prepares remain this only counts down. The last one ends the transfer: as `options`
    /// say, data the device wrote (direction `In`, `InOut` or `None`) is copied back from a
    /// bounce buffer and a non-coherent command's caches are invalidated; then the bounce buffer, IO addresses and the
    /// command's wiring of the descriptor are released. Not prepared is
    /// [`Error::NotReady`] (recorded by the dma-debug ledger as an unbalanced complete); a
    /// copy back that falls short is [`Error::Underrun`], as in IOKit, returned after
    /// everything is released.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{BouncePool, CompleteOptions, DmaCommand, PrepareOptions};
    /// use dmakit::{Direction, PhysAddr};
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
    ///
    /// let pool = Arc::new(BouncePool::new(machine.clone(), "example", 1 << 16));
    /// pool.set_force_bounce(true);
    /// let mut cmd = DmaCommand::builder(machine.clone()).bounce_pool(pool.clone()).build()?;
    /// let buf = Arc::new(BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(8, Direction::In))?);
    /// cmd.set_memory_descriptor(buf.clone())?;
    /// cmd.prepare(PrepareOptions::new())?;
    /// let at = PhysAddr(cmd.segments().next().expect("a segment")?.addr.0);
    /// machine.device_write(at, b"aborted!")?;
    /// // The transfer failed: do not copy what the device left behind.
    /// cmd.complete_with(CompleteOptions::new().synchronize(false))?;
    /// let mut back = [0xFFu8; 8];
    /// assert_eq!(buf.read_bytes(0, &mut back), 8);
    /// assert_eq!(back, [0; 8], "the buffer never saw the device's bytes");
    /// assert_eq!(pool.stats().in_use, 0, "the bounce buffer went back");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn complete_with(&mut self, options: CompleteOptions) -> Result<()> {
        let Some(p) = &mut self.prep else {
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
                what: "complete on an unprepared DMA command (prepare it first)",
                addr: 0,
            });
        };
        if p.count > 1 {
            p.count -= 1;
            return Ok(());
        }
        let Some(prep) = self.prep.take() else {
            return Err(Error::Internal {
                what: "preparation vanished",
            });
        };
        let md = self.md.clone().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        let mut result = Ok(());
        if prep.device_writes() {
            if options.invalidates_cache() && self.maintains_caches() {
                result = self.cache(md.as_ref(), &prep, CacheOp::Invalidate);
            }
            if result.is_ok() && options.synchronizes() {
                result = self.copy(md.as_ref(), &prep, false);
            }
        }
        if let Err(failed) = self.owner.release(md.as_ref(), prep) {
            let (e, prep) = *failed;
            // The IO addresses are still mapped, so the device may still reach the memory:
            // the command stays prepared and owns all of it; complete again later.
            self.prep = Some(prep);
            return Err(e);
        }
        if let Some(q) = &self.owner.quarantine {
            q.completed();
        }
        result
    }
}

/// Marks a command's own CPU copies for the dma-debug ledger while alive.
struct SyncWindow(u64);

impl SyncWindow {
    fn new(id: u64) -> Self {
        crate::debug::syncing(id, true);
        SyncWindow(id)
    }
}

impl Drop for SyncWindow {
    fn drop(&mut self) {
        crate::debug::syncing(self.0, false);
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

/// Builds a [`DmaCommand`] (IOKit `IODMACommand::withSpecification`); see
/// [`DmaCommand::builder`].
#[must_use = "a builder does nothing until `build`"]
pub struct DmaCommandBuilder<P: Platform + Clone + 'static> {
    platform: P,
    spec: SegmentSpec,
    format: SegmentFormat,
    mode: MappingMode,
    pool: Option<Arc<BouncePool<P>>>,
    quarantine: Option<Arc<Quarantine>>,
}

impl<P: Platform + Clone + 'static> DmaCommandBuilder<P> {
    /// The device's constraints (IOKit `SegmentOptions` and the address-bit count).
    pub fn spec(mut self, spec: SegmentSpec) -> Self {
        self.spec = spec;
        self
    }

    /// How segments are written (IOKit's output function). A 32-bit format limits a spec
    /// with no address limit to 32 bits, and refuses at `build` one that reaches above
    /// 4 GiB; its segments are at most `0xFFFF_FFFF` bytes long (less with an internal or
    /// length alignment: the longest multiple of it that a 32-bit length holds).
    pub fn format(mut self, format: SegmentFormat) -> Self {
        self.format = format;
        self
    }

    /// How the device reaches memory (IOKit's mapping type).
    pub fn mode(mut self, mode: MappingMode) -> Self {
        self.mode = mode;
        self
    }

    /// Mapped mode through `mapper` (IOKit `kMapped` with a mapper).
    pub fn mapper(self, mapper: Arc<dyn Mapper>) -> Self {
        self.mode(MappingMode::Mapped(mapper))
    }

    /// Where bounce buffers come from; without a pool, memory that breaks the spec is an
    /// error instead of a bounce.
    pub fn bounce_pool(mut self, pool: Arc<BouncePool<P>>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// [`bounce_pool`](Self::bounce_pool) when `pool` is `Some`.
    pub fn bounce_pool_option(mut self, pool: Option<Arc<BouncePool<P>>>) -> Self {
        self.pool = pool;
        self
    }

    /// The device's quarantine: a preparation dropped with the command waits there until
    /// the device is quiesced.
    pub fn quarantine(mut self, quarantine: Arc<Quarantine>) -> Self {
        self.quarantine = Some(quarantine);
        self
    }

    /// The command, with nothing attached.
    pub fn build(self) -> Result<DmaCommand<P>> {
        DmaCommand::from_builder(self)
    }
}

impl<P: Platform + Clone + 'static> core::fmt::Debug for DmaCommandBuilder<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaCommandBuilder")
            .field("spec", &self.spec)
            .field("format", &self.format)
            .field("mode", &self.mode)
            .finish()
    }
}

/// One bounce copy between a descriptor range and a bounce buffer (`to_bounce`: descriptor
/// → buffer, for a device read).
///
/// It walks the descriptor's [`sources`](MemoryDescriptor::sources): a task range is one
/// [`copy_virt`](crate::platform::CpuAccess::copy_virt) against the bounce buffer, which is
/// one range of its task (its [`address`](BufferMemoryDescriptor::address) on), so one
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
                Some(task) => self.piece(task, s.addr, buf_off + x, s.len),
                None => self.staged(md_off + x, buf_off + x, s.len),
            };
            failed = r.err();
            x += s.len;
        });
        self.finish(listed, failed, md_off, buf_off, len, x)
    }

    /// The descriptor's task piece `[va, va + len)` of `task` against `[buf_off, buf_off +
    /// len)` of the buffer: one copy, as a buffer is one range of its task.
    fn piece(&self, task: Task, va: u64, buf_off: u64, len: u64) -> Result<()> {
        crate::descriptor::check_range("bounce buffer", buf_off, len, self.buffer.length())?;
        let (here, bt) = (VirtAddr(va), self.buffer.task());
        let there = VirtAddr(self.buffer.address().0 + buf_off);
        if self.to_bounce {
            self.platform.copy_virt(task, here, bt, there, len)
        } else {
            self.platform.copy_virt(bt, there, task, here, len)
        }
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

    /// Through `read_bytes`/`write_bytes` and a stack buffer of `COPY_CHUNK` bytes. A copy
    /// that falls short is [`Error::Underrun`], as IOKit's.
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
                // IOKit's copies into and out of its copy buffer are readBytes/writeBytes
                // calls too, and a short one is kIOReturnUnderrun.
                return Err(Error::Underrun {
                    what: "bounce copy fell short (memory the descriptor cannot read or write)",
                    done: x,
                    requested: len,
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
