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
//! The same holds for a prepare whose IO mapping fails and cannot be undone
//! ([`Error::LeftMapped`]), and for a `complete` whose IO addresses cannot be unmapped (the
//! command then stays prepared).
//! With the feature `dma-debug`, preparations and misuse are recorded in the
//! [ledger](crate::debug).
//!
//! ## Where the code is
//!
//! One concept per file: this file holds the command and its accessors; `builder.rs` makes
//! commands; `prepare.rs` prepares and completes; `walk.rs` checks the runs of a
//! preparation against the spec; `bouncing.rs` and `mapping.rs` give a preparation its
//! bounce buffers or IO addresses; `route.rs` is what a preparation holds and how it is
//! given back; `segments.rs` hands segments to the device; `sync.rs` synchronizes and
//! copies.
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

mod bouncing;
mod builder;
mod mapping;
mod prepare;
mod route;
mod segments;
mod sync;
mod walk;

pub use builder::DmaCommandBuilder;
use route::{Bounce, Dropped, MapRun, Owner, PagePiece, Preparation, Route};
pub use segments::Segments;
use sync::SyncWindow;

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
