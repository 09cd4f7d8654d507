//! A memory-to-memory DMA engine: a device model behind an MMIO window
//! ([`DmaEngineDevice`]) and its driver ([`SimDmaEngine`], a
//! [`DmaController`]).
//!
//! The driver programs the engine the way real engines are programmed: it owns a
//! **descriptor ring** in RAM, writes descriptors into it with CPU stores, cleans the cache
//! lines (the machine is not coherent), and rings a **doorbell** register with
//! [`mapped_write32`]. The device fetches each descriptor with device reads, moves the data
//! through DRAM (bypassing the CPU cache, so a missing clean shows up as stale data) or
//! through a [`SimIommu`] (so a wrong IO address lands in the IOMMU's fault log), writes the
//! completion status back into the descriptor, advances `HEAD` and raises its interrupt,
//! which an [`InterruptSink`] (a [`DmaEventSource`](dmakit::dma::DmaEventSource)) turns
//! into completion callbacks. The driver reads `HEAD` and the written-back descriptors to
//! report [`DmaCompletion`]s in order.
//!
//! Processing is synchronous and deterministic: the doorbell store does the work before it
//! returns. Only register stores start work; there is no Rust call that bypasses them.
//!
//! # Registers
//!
//! A 4 KiB window ([`regs::WINDOW_BYTES`]); every register is 32 bits wide and must be
//! accessed with 32-bit, 4-aligned loads and stores (other widths read zero and their
//! stores are dropped). `HEAD` and `TAIL` are free-running counters: descriptor *n* lives in
//! slot `n mod RING_SIZE`; the ring is empty when `HEAD == TAIL` and full when
//! `TAIL - HEAD == RING_SIZE`.
//!
//! | offset | name | access | reset | meaning |
//! | --- | --- | --- | --- | --- |
//! | 0x00 | `ID` | RO | `0x444D_4101` | "DMA", version 1 |
//! | 0x04 | `CONTROL` | RW | 0 | bit 0 `ENABLE`, bit 1 `RESET` (self-clearing), bit 2 `IRQ_ENABLE`, bit 3 `PAUSE`, bit 4 `ABORT` (self-clearing) |
//! | 0x08 | `STATUS` | RO, W1C bits 8–12 | 0 | bit 0 `BUSY` (`HEAD != TAIL`), bit 1 `HALTED`, bit 8 `ERR_SRC`, bit 9 `ERR_DST`, bit 10 `ERR_RING`, bit 11 `ERR_CONFIG`, bit 12 `IOMMU` |
//! | 0x0C | `RING_SIZE` | RW while disabled | 0 | slots in the ring: a power of two, 1..=256 |
//! | 0x10 | `RING_BASE_LO` | RW while disabled | 0 | ring device address, bits 31:0 (64-byte aligned) |
//! | 0x14 | `RING_BASE_HI` | RW while disabled | 0 | ring device address, bits 63:32 |
//! | 0x18 | `HEAD` | RO (device-owned) | 0 | descriptors finished |
//! | 0x1C | `TAIL` | RW (doorbell) | 0 | descriptors queued; a store processes up to it |
//! | 0x20 | `INT_STATUS` | RW1C | 0 | bit 0 `DONE` (a descriptor with `IRQ` finished), bit 1 `ERROR` |
//! | 0x24 | `COMPLETED` | RO | 0 | transfers (chains) finished, wrapping |
//! | 0x28 | `FAULT_ADDR_LO` | RO | 0 | address of the last fault, bits 31:0 |
//! | 0x2C | `FAULT_ADDR_HI` | RO | 0 | address of the last fault, bits 63:32 |
//!
//! * Setting `ENABLE` checks the ring configuration; a bad size or a misaligned base sets
//!   `ERR_CONFIG` and leaves `ENABLE` clear. Stores to the ring registers while enabled and
//!   a doorbell more than `RING_SIZE` past `HEAD` are refused with `ERR_CONFIG`.
//! * A data fault (a source read or destination write that the IOMMU or the bus refuses)
//!   ends that transfer, sets `ERR_SRC`/`ERR_DST` (and `IOMMU` when the IOMMU refused it),
//!   records `FAULT_ADDR` and raises `INT_STATUS.ERROR`; the engine goes on with the next
//!   transfer.
//! * A ring fault (a descriptor that cannot be fetched or written back) sets `HALTED`,
//!   `ERR_RING` and `FAULT_ADDR`; nothing more happens until `RESET`.
//! * `ABORT` completes every queued descriptor (`HEAD..TAIL`) with code `ABORTED`; `PAUSE`
//!   holds queued descriptors until it is cleared.
//! * The interrupt line is raised when `INT_STATUS` gains a bit and `IRQ_ENABLE` is set.
//!
//! # Descriptors
//!
//! 64 bytes, one cache line (so cleaning or invalidating one never touches a neighbour),
//! 64-byte aligned, little-endian:
//!
//! | offset | field | written by | meaning |
//! | --- | --- | --- | --- |
//! | 0x00 | `SRC` (u64) | driver | source device address |
//! | 0x08 | `DST` (u64) | driver | destination device address |
//! | 0x10 | `LEN` (u32) | driver | bytes, 1..=2 GiB |
//! | 0x14 | `FLAGS` (u32) | driver | bit 0 `CHAIN`: the next descriptor continues this transfer; bit 1 `IRQ`: raise `INT_STATUS.DONE` when this one finishes |
//! | 0x18 | `TICKET` (u64) | driver | the driver's cookie; the device never touches it |
//! | 0x20 | `STATUS` (u32) | device | bit 31 `DONE`; bits 7:0 code: 0 `OK`, 1 `SRC_FAULT`, 2 `DST_FAULT`, 3 `ABORTED`, 4 `SKIPPED` (an earlier descriptor of the chain failed), 5 `BAD_DESCRIPTOR`; bit 8 `VIA_IOMMU` |
//! | 0x24 | `DONE_BYTES` (u32) | device | bytes moved |
//! | 0x28 | `FAULT_ADDR` (u64) | device | the faulting address, for the fault codes |
//! | 0x30 | — | — | reserved, zero |
//!
//! A transfer of many source and destination segments (scatter/gather) is one chain: the
//! driver cuts it wherever a source or destination segment ends, and sets `CHAIN` on every
//! descriptor but the last (which carries `IRQ`).
//!
//! # The driver
//!
//! [`SimDmaEngine::new`] allocates a wired, physically contiguous ring of 256 slots (16 KiB)
//! as a [`BufferMemoryDescriptor`]; with an IOMMU it maps the ring through a private
//! [`IommuMapper`] at [`EngineConfig::ring_iova`] (by default a 1 MiB IO window per engine
//! above [`RING_IOVA_BASE`]), because the device fetches descriptors through the IOMMU too.
//! It registers the device at the first free 4 KiB window from [`ENGINE_MMIO_BASE`] (or
//! [`EngineConfig::mmio_base`]) and programs `RING_SIZE` (the FIFO depth, 16 by default),
//! `RING_BASE` and `CONTROL`. A ring that is full (queued plus finished-but-unreported
//! descriptors fill the depth) makes `start` return [`Error::Busy`]; `stop` writes
//! `CONTROL.ABORT`. After a ring fault, [`take_completions`](dmakit::dma::CompletionSource::take_completions)
//! fails every outstanding transfer with the fault address, resets the engine and programs
//! it again.
//!
//! ```
//! use std::sync::Arc;
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
//! use dmakit::dma::{CompletionSource, DmaController, DmaTransfer, IoSegment};
//! use dmakit::map::mapped_read32;
//! use dmakit::{Direction, IoAddr, PhysAddr};
//! use dmakit_sim::dma_engine::{regs, SimDmaEngine};
//! use dmakit_sim::MachineBuilder;
//!
//! let m = Arc::new(MachineBuilder::new().coherent(true).build()?);
//! let engine = SimDmaEngine::new(m.clone(), None)?;
//! let reg = |offset| mapped_read32(&*m, PhysAddr(engine.registers().0 + offset));
//! assert_eq!(reg(regs::ID)?, regs::ID_VALUE);
//!
//! let buf = BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x2000, Direction::InOut))?;
//! buf.write(0, b"ring it")?;
//! let seg = |off| -> dmakit::Result<[IoSegment; 1]> {
//!     Ok([IoSegment { addr: IoAddr(buf.physical_segment(off)?.addr.0), len: 7 }])
//! };
//! let ticket = engine.start(&DmaTransfer { source: &seg(0)?, dest: &seg(0x1000)? })?;
//! assert_eq!((reg(regs::HEAD)?, reg(regs::TAIL)?), (1, 1), "the doorbell did the work");
//! let mut done = Vec::new();
//! engine.take_completions(&mut |c| done.push(c));
//! assert_eq!((done[0].ticket, done[0].bytes, done[0].status.is_ok()), (ticket, 7, true));
//! let mut back = [0u8; 7];
//! buf.read(0x1000, &mut back)?;
//! assert_eq!(&back, b"ring it");
//! # Ok::<(), dmakit::Error>(())
//! ```

mod device;

pub use device::{desc, regs, DmaEngineDevice};

use crate::mmio::SharedDevice;
use crate::{Machine, SimIommu};
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{CompletionSource, DmaCompletion, DmaController, DmaTransfer, InterruptSink};
use dmakit::map::{mapped_read32, mapped_write32};
use dmakit::mapper::{Access, IommuMapper, Mapper};
use dmakit::platform::{CacheOp, CacheOps, Task};
use dmakit::{Direction, Error, IoAddr, PhysAddr, Result, VirtAddr};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Where [`SimDmaEngine::new`] looks for a free register window: the first free
/// [`regs::WINDOW_BYTES`] window at or above this physical address.
pub const ENGINE_MMIO_BASE: u64 = 0xFED0_0000;

/// With an IOMMU, rings are mapped by default at `RING_IOVA_BASE + (mmio_base / 4 KiB mod
/// 2^20) * RING_IO_WINDOW`: one window per register window, far above the IO space drivers
/// usually give their mappers.
pub const RING_IOVA_BASE: u64 = 0x1000_0000_0000;

/// Bytes of IO space each engine's private ring mapper owns.
pub const RING_IO_WINDOW: u64 = 0x10_0000;

/// How many engines [`SimDmaEngine::new`] can place on one machine.
const MAX_ENGINES: u64 = 256;
/// The ring is always allocated at its largest; `RING_SIZE` says how much is used.
const RING_BYTES: u64 = regs::MAX_RING_SIZE as u64 * desc::SIZE;
const DEFAULT_DEPTH: u32 = 16;
/// Finished tickets whose byte counts `query` still answers.
const MAX_PROGRESS: usize = 65_536;

/// Where a [`SimDmaEngine`] lives; `None` fields take the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineConfig {
    /// Physical base of the register window (4 KiB aligned). Default: the first free window
    /// from [`ENGINE_MMIO_BASE`].
    pub mmio_base: Option<PhysAddr>,
    /// With an IOMMU, the start of the [`RING_IO_WINDOW`] bytes of IO space where the ring is
    /// mapped. Default: derived from the register window (see [`RING_IOVA_BASE`]).
    pub ring_iova: Option<IoAddr>,
}

/// A queued transfer: its ticket and its descriptors `first..first + count`.
#[derive(Clone, Copy, Debug)]
struct Pending {
    ticket: u64,
    first: u32,
    count: u32,
}

#[derive(Debug)]
struct State {
    depth: u32,
    /// Descriptors written and announced by the doorbell (free-running).
    tail: u32,
    /// Descriptors whose completion the driver has reported (free-running).
    reaped: u32,
    paused: bool,
    next_ticket: u64,
    inflight: VecDeque<Pending>,
    progress: BTreeMap<u64, u64>,
    /// Why reprogramming the engine after a ring fault failed; `start` reports it.
    broken: Option<Error>,
}

impl State {
    /// A fresh engine's bookkeeping: the default depth, nothing queued, tickets from 1.
    fn new() -> Self {
        State {
            depth: DEFAULT_DEPTH,
            tail: 0,
            reaped: 0,
            paused: false,
            next_ticket: 1,
            inflight: VecDeque::new(),
            progress: BTreeMap::new(),
            broken: None,
        }
    }
}

/// The ring's IO mapping; unmapped (and the IOTLB invalidated) on drop.
struct RingMapping {
    mapper: IommuMapper<Arc<SimIommu>>,
    iova: IoAddr,
    pages: u64,
}

impl Drop for RingMapping {
    fn drop(&mut self) {
        // Nothing to report to: the engine is reset before this runs, so no device access
        // can be in flight. A refused unmap leaves the allocation live; it is tried once
        // more, so a passing IOMMU failure does not leave the freed ring mapped.
        if self.mapper.iovm_free(self.iova, self.pages).is_err() {
            let _ = self.mapper.iovm_free(self.iova, self.pages);
        }
    }
}

/// The driver of a [`DmaEngineDevice`]: IOKit's IODMAController for the simulated engine.
///
/// Scatter-gather between two buffers through an IOMMU: the source's and destination's
/// segments come from [`DmaCommand`](dmakit::dma::DmaCommand)s in mapped mode, the
/// engine's own ring is mapped by the engine.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
/// use dmakit::dma::{DmaCommand, DmaEventSource, DmaStart, DmaTransfer, IoSegment};
/// use dmakit::dma::{PrepareOptions, SegmentSpec, SyncWait};
/// use dmakit::mapper::IommuMapper;
/// use dmakit::Direction;
/// use dmakit_sim::{MachineBuilder, SimDmaEngine, SimIommu};
/// use std::sync::Arc;
///
/// let m = Arc::new(MachineBuilder::new().seed(3).fragmentation(1.0).build()?);
/// let iommu = Arc::new(SimIommu::new(m.clone()));
/// let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x4000_0000, 0x1000_0000)?);
/// let engine = Arc::new(SimDmaEngine::new(m.clone(), Some(iommu))?);
///
/// let data: Vec<u8> = (0..0x3000u32).map(|i| i as u8).collect();
/// let src: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::Out)?);
/// let dst = Arc::new(BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x3000, Direction::In))?);
/// let segments = |md: Arc<dyn MemoryDescriptor>| -> dmakit::Result<(DmaCommand<_>, Vec<IoSegment>)> {
///     // Pieces of at most 4 KiB, so the transfer is a chain of descriptors.
///     let spec = SegmentSpec::builder().max_segment_size(0x1000).build()?;
///     let mut cmd = DmaCommand::builder(m.clone()).spec(spec).mapper(mapper.clone()).build()?;
///     cmd.set_memory_descriptor(md)?;
///     cmd.prepare(PrepareOptions::new())?; // also cleans the CPU cache for the device
///     let segs = cmd.segments().collect::<dmakit::Result<Vec<_>>>()?;
///     Ok((cmd, segs))
/// };
/// let (mut from, source) = segments(src)?;
/// let (mut to, dest) = segments(dst.clone())?;
/// assert_eq!((source.len(), dest.len()), (3, 3));
///
/// let events = DmaEventSource::synchronous(engine);
/// let DmaStart::Completed(done) = events.start_dma_command(&DmaTransfer { source: &source, dest: &dest }, SyncWait::Polls(10))? else {
///     unreachable!("synchronous");
/// };
/// assert_eq!((done.bytes, done.status), (0x3000, Ok(())));
/// to.complete()?; // invalidates, so the CPU sees what the engine wrote
/// from.complete()?;
/// let mut back = vec![0u8; 0x3000];
/// dst.read(0, &mut back)?;
/// assert_eq!(back, data);
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct SimDmaEngine {
    machine: Arc<Machine>,
    iommu: Option<Arc<SimIommu>>,
    device: Arc<Mutex<DmaEngineDevice>>,
    regs: PhysAddr,
    // Declared before `ring`: the IO mapping goes before the memory it maps.
    ring_map: Option<RingMapping>,
    ring: BufferMemoryDescriptor<Arc<Machine>>,
    ring_phys: PhysAddr,
    state: Mutex<State>,
}

/// One descriptor's write-back.
#[derive(Clone, Copy, Debug)]
struct WriteBack {
    status: u32,
    bytes: u32,
    fault: u64,
}

impl WriteBack {
    fn done(&self) -> bool {
        self.status & desc::DONE != 0
    }
}

impl SimDmaEngine {
    /// An engine on `machine`, reaching memory through `iommu` when given (descriptors,
    /// sources and destinations are then IO addresses) or directly (physical addresses),
    /// at the default register window and ring IO address.
    pub fn new(machine: Arc<Machine>, iommu: Option<Arc<SimIommu>>) -> Result<Self> {
        Self::with_config(machine, iommu, EngineConfig::default())
    }

    /// An engine placed as `config` says.
    pub fn with_config(
        machine: Arc<Machine>,
        iommu: Option<Arc<SimIommu>>,
        config: EngineConfig,
    ) -> Result<Self> {
        let regs = match config.mmio_base {
            Some(b) => b,
            None => free_window(&machine)?,
        };
        let (ring, ring_phys) = ring_buffer(&machine)?;
        let ring_map = match &iommu {
            None => None,
            Some(i) => Some(map_ring(i, ring_io_base(&config, regs), &ring)?),
        };
        let device = Arc::new(Mutex::new(DmaEngineDevice::new(&machine, iommu.as_ref())));
        let shared: SharedDevice = device.clone();
        machine.add_mmio(regs, regs::WINDOW_BYTES, shared)?;
        let engine = SimDmaEngine {
            machine,
            iommu,
            device,
            regs,
            ring_map,
            ring,
            ring_phys,
            state: Mutex::new(State::new()),
        };
        {
            let mut s = engine.lock();
            engine.program(&mut s, DEFAULT_DEPTH)?;
        }
        Ok(engine)
    }

    /// Connects the completion interrupt (the board wiring from the device's interrupt line
    /// to `sink`). `sink.raise` runs inside the register store that finished the work, as an
    /// interrupt handler would: it must only signal, never call back into the engine.
    ///
    /// The line holds `sink` weakly: a [`DmaEventSource`](dmakit::dma::DmaEventSource)
    /// holds its controller, so a strong reference back would keep both (and the ring) alive
    /// forever. Keep your `Arc` to the sink for as long as you want interrupts.
    pub fn connect(&self, sink: Arc<dyn InterruptSink>) {
        self.device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connect(&sink);
    }

    /// Physical address of the register window (add the [`regs`] offsets).
    pub fn registers(&self) -> PhysAddr {
        self.regs
    }

    /// The ring's device address, as programmed into `RING_BASE`: its IO address with an
    /// IOMMU, its physical address without.
    pub fn ring_address(&self) -> IoAddr {
        IoAddr(self.ring_dev())
    }

    fn ring_dev(&self) -> u64 {
        self.ring_map
            .as_ref()
            .map_or(self.ring_phys.0, |r| r.iova.0)
    }

    /// The ring's physical address.
    pub fn ring_physical(&self) -> PhysAddr {
        self.ring_phys
    }

    /// The IOMMU the engine sits behind, if any.
    pub fn iommu(&self) -> Option<&Arc<SimIommu>> {
        self.iommu.as_ref()
    }

    /// The device model, for looking inside (its counters); drive it through the registers.
    pub fn device(&self) -> &Arc<Mutex<DmaEngineDevice>> {
        &self.device
    }

    /// Holds queued descriptors in the ring (`CONTROL.PAUSE`): transfers started from now on
    /// wait until [`resume`](Self::resume) (or are aborted by `stop`).
    pub fn pause(&self) -> Result<()> {
        let mut s = self.lock();
        s.paused = true;
        let c = self.read_reg(regs::CONTROL)?;
        self.write_reg(regs::CONTROL, c | regs::CTRL_PAUSE)
    }

    /// Clears `CONTROL.PAUSE`: the engine processes every queued descriptor now.
    pub fn resume(&self) -> Result<()> {
        let mut s = self.lock();
        s.paused = false;
        let c = self.read_reg(regs::CONTROL)?;
        self.write_reg(regs::CONTROL, c & !regs::CTRL_PAUSE)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_reg(&self, offset: u64) -> Result<u32> {
        mapped_read32(&*self.machine, PhysAddr(self.regs.0 + offset))
    }

    fn write_reg(&self, offset: u64, value: u32) -> Result<()> {
        mapped_write32(&*self.machine, PhysAddr(self.regs.0 + offset), value)
    }

    /// Resets the engine and programs a ring of `depth` slots; forgets queued transfers.
    fn program(&self, s: &mut State, depth: u32) -> Result<()> {
        self.write_reg(regs::CONTROL, regs::CTRL_RESET)?;
        self.write_reg(regs::RING_SIZE, depth)?;
        self.write_reg(regs::RING_BASE_LO, self.ring_dev() as u32)?;
        self.write_reg(regs::RING_BASE_HI, (self.ring_dev() >> 32) as u32)?;
        let pause = if s.paused { regs::CTRL_PAUSE } else { 0 };
        self.write_reg(
            regs::CONTROL,
            regs::CTRL_ENABLE | regs::CTRL_IRQ_ENABLE | pause,
        )?;
        if self.read_reg(regs::CONTROL)? & regs::CTRL_ENABLE == 0 {
            return Err(Error::Internal {
                what: "DMA engine refused its ring configuration (STATUS.ERR_CONFIG)",
            });
        }
        s.depth = depth;
        s.tail = 0;
        s.reaped = 0;
        s.inflight.clear();
        s.broken = None;
        Ok(())
    }

    fn slot_va(&self, depth: u32, index: u32) -> (u64, VirtAddr) {
        let off = (index & (depth - 1)) as u64 * desc::SIZE;
        (off, VirtAddr(self.ring.address().0 + off))
    }

    /// Writes descriptor `index` with CPU stores and cleans its line so the device sees it.
    fn write_descriptor(
        &self,
        depth: u32,
        index: u32,
        d: &[u8; desc::SIZE as usize],
    ) -> Result<()> {
        let (off, va) = self.slot_va(depth, index);
        self.ring.write(off, d)?;
        self.machine
            .cache_virt(CacheOp::Clean, Task::KERNEL, va, desc::SIZE)
    }

    /// Reads descriptor `index`'s write-back, after invalidating the CPU's stale line.
    fn write_back(&self, depth: u32, index: u32) -> Result<WriteBack> {
        let (off, va) = self.slot_va(depth, index);
        self.machine
            .cache_virt(CacheOp::Invalidate, Task::KERNEL, va, desc::SIZE)?;
        let mut b = [0u8; 16];
        self.ring.read(off + desc::WRITEBACK.start as u64, &mut b)?;
        let w = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        Ok(WriteBack {
            status: w(0),
            bytes: w(4),
            fault: w(8) as u64 | (w(12) as u64) << 32,
        })
    }

    /// Bytes moved by `p` so far, and its first error if the device reported one.
    fn outcome(&self, depth: u32, p: &Pending) -> (u64, Option<Error>) {
        let mut bytes = 0u64;
        let mut error = None;
        for i in 0..p.count {
            let index = p.first.wrapping_add(i);
            let wb = match self.write_back(depth, index) {
                Ok(wb) => wb,
                Err(e) => {
                    error.get_or_insert(e);
                    continue;
                }
            };
            if !wb.done() {
                continue;
            }
            bytes += wb.bytes as u64;
            if error.is_none() {
                error = status_error(wb, p.ticket, index, self.regs);
            }
        }
        (bytes, error)
    }

    fn remember(s: &mut State, ticket: u64, bytes: u64) {
        s.progress.insert(ticket, bytes);
        while s.progress.len() > MAX_PROGRESS {
            s.progress.pop_first();
        }
    }
}

/// The error a descriptor's write-back reports, if any; a data fault names the engine by
/// its register window.
fn status_error(wb: WriteBack, ticket: u64, index: u32, unit: PhysAddr) -> Option<Error> {
    let via_iommu = wb.status & desc::VIA_IOMMU != 0;
    let fault = |write| Error::DmaFault {
        device: "simulated DMA engine",
        unit: unit.0,
        addr: wb.fault,
        write,
        via_iommu,
    };
    match wb.status & desc::CODE_MASK {
        desc::SRC_FAULT => Some(fault(false)),
        desc::DST_FAULT => Some(fault(true)),
        desc::ABORTED => Some(Error::Aborted {
            what: "DMA transfer (stop() aborted it before the engine reached it)",
            id: ticket,
        }),
        desc::BAD_DESCRIPTOR => Some(Error::BadArgument {
            what: "DMA engine rejected a malformed descriptor (value: its index)",
            value: index as u64,
        }),
        // OK; SKIPPED follows an earlier failure of the chain, which is the error.
        _ => None,
    }
}

/// A physically contiguous buffer for the largest ring, and its physical address.
fn ring_buffer(machine: &Arc<Machine>) -> Result<(BufferMemoryDescriptor<Arc<Machine>>, PhysAddr)> {
    let ring = BufferMemoryDescriptor::new(
        machine.clone(),
        BufferOptions::new(RING_BYTES, Direction::InOut)
            .contiguous(true)
            .alignment(desc::SIZE),
    )?;
    let seg = ring.physical_segment(0)?;
    if seg.len < RING_BYTES {
        return Err(Error::Internal {
            what: "DMA engine ring: a contiguous buffer came back in pieces",
        });
    }
    let ring_phys = PhysAddr(seg.addr.0);
    Ok((ring, ring_phys))
}

/// Where the ring is mapped in IO space: `config.ring_iova`, or a window derived from the
/// register window at `regs`.
fn ring_io_base(config: &EngineConfig, regs: PhysAddr) -> u64 {
    config.ring_iova.map_or_else(
        || RING_IOVA_BASE + ((regs.0 >> 12) & 0xF_FFFF) * RING_IO_WINDOW,
        |a| a.0,
    )
}

/// The first free register window from [`ENGINE_MMIO_BASE`].
fn free_window(machine: &Machine) -> Result<PhysAddr> {
    let layout = machine.layout();
    (0..MAX_ENGINES)
        .map(|k| ENGINE_MMIO_BASE + k * regs::WINDOW_BYTES)
        .find(|&b| {
            let e = b + regs::WINDOW_BYTES;
            !layout.ram.iter().any(|r| b < r.end() && e > r.base)
                && !layout.mmio.iter().any(|&(wb, wl, _)| b < wb + wl && e > wb)
        })
        .map(PhysAddr)
        .ok_or(Error::NoResources {
            what: "DMA engine register windows from ENGINE_MMIO_BASE",
            limit: MAX_ENGINES,
        })
}

/// Maps every page of `ring` at the start of a private IO window at `base`.
fn map_ring(
    iommu: &Arc<SimIommu>,
    base: u64,
    ring: &BufferMemoryDescriptor<Arc<Machine>>,
) -> Result<RingMapping> {
    let mapper = IommuMapper::new(iommu.clone(), base, RING_IO_WINDOW)?;
    let page = mapper.page_size();
    let pages = page.round_up(RING_BYTES).ok_or(Error::Overflow {
        what: "DMA engine ring",
        start: 0,
        len: RING_BYTES,
    })? / page.bytes();
    let iova = mapper.iovm_alloc(pages)?;
    let mapping = RingMapping {
        mapper,
        iova,
        pages,
    };
    for i in 0..pages {
        let pa = ring.physical_segment(i * page.bytes())?.addr;
        mapping.mapper.iovm_insert_page(
            IoAddr(iova.0 + i * page.bytes()),
            PhysAddr(page.trunc(pa.0)),
            Access::READ_WRITE,
        )?;
    }
    Ok(mapping)
}

/// Cuts a transfer into descriptors `(src, dst, len)` wherever a segment ends. A transfer
/// needing more descriptors than the largest ring holds is refused as soon as that is
/// known, so a huge one costs no more than a ring's worth of descriptors.
fn cut(t: &DmaTransfer<'_>) -> Result<Vec<(u64, u64, u32)>> {
    let mut out = Vec::new();
    let (mut si, mut so) = (0usize, 0u64);
    let (mut di, mut doff) = (0usize, 0u64);
    while si < t.source.len() && di < t.dest.len() {
        let (s, d) = (t.source[si], t.dest[di]);
        let n = (s.len - so).min(d.len - doff).min(desc::MAX_LEN as u64);
        if n > 0 {
            let overflow = |start: u64| Error::Overflow {
                what: "DMA transfer segment",
                start,
                len: n,
            };
            let sa = s.addr.0.checked_add(so).ok_or(overflow(s.addr.0))?;
            let da = d.addr.0.checked_add(doff).ok_or(overflow(d.addr.0))?;
            // The last byte must exist; the end may be 2^64 itself.
            sa.checked_add(n - 1).ok_or(overflow(sa))?;
            da.checked_add(n - 1).ok_or(overflow(da))?;
            if out.len() == regs::MAX_RING_SIZE as usize {
                return Err(Error::BadArgument {
                    what: "DMA transfer needs more descriptors (value) than the ring's FIFO depth",
                    value: out.len() as u64 + 1,
                });
            }
            out.push((sa, da, n as u32));
        }
        so += n;
        doff += n;
        if so == s.len {
            si += 1;
            so = 0;
        }
        if doff == d.len {
            di += 1;
            doff = 0;
        }
    }
    Ok(out)
}

impl DmaController for SimDmaEngine {
    fn start(&self, transfer: &DmaTransfer<'_>) -> Result<u64> {
        transfer.bytes()?;
        let pieces = cut(transfer)?;
        let count = pieces.len() as u32;
        let mut s = self.lock();
        if let Some(e) = &s.broken {
            return Err(e.clone());
        }
        if count > s.depth {
            return Err(Error::BadArgument {
                what: "DMA transfer needs more descriptors (value) than the ring's FIFO depth",
                value: count as u64,
            });
        }
        if count > s.depth.saturating_sub(s.tail.wrapping_sub(s.reaped)) {
            return Err(Error::Busy {
                what: "DMA engine descriptor ring",
                addr: self.ring_dev(),
                why: "every free slot is taken by queued or unreported descriptors: take completions first",
            });
        }
        let ticket = s.next_ticket;
        let first = s.tail;
        for (i, &(src, dst, len)) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let flags = if last {
                desc::FLAG_IRQ
            } else {
                desc::FLAG_CHAIN
            };
            let mut d = [0u8; desc::SIZE as usize];
            d[desc::SRC..desc::SRC + 8].copy_from_slice(&src.to_le_bytes());
            d[desc::DST..desc::DST + 8].copy_from_slice(&dst.to_le_bytes());
            d[desc::LEN..desc::LEN + 4].copy_from_slice(&len.to_le_bytes());
            d[desc::FLAGS..desc::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
            d[desc::TICKET..desc::TICKET + 8].copy_from_slice(&ticket.to_le_bytes());
            self.write_descriptor(s.depth, first.wrapping_add(i as u32), &d)?;
        }
        let tail = first.wrapping_add(count);
        // The doorbell: the device processes the new descriptors before this returns.
        self.write_reg(regs::TAIL, tail)?;
        s.next_ticket += 1;
        s.tail = tail;
        s.inflight.push_back(Pending {
            ticket,
            first,
            count,
        });
        Ok(ticket)
    }

    fn stop(&self) -> Result<()> {
        let _s = self.lock();
        let c = self.read_reg(regs::CONTROL)?;
        self.write_reg(regs::CONTROL, c | regs::CTRL_ABORT)
    }

    fn query(&self, ticket: u64) -> Result<u64> {
        let s = self.lock();
        if let Some(&b) = s.progress.get(&ticket) {
            return Ok(b);
        }
        match s.inflight.iter().find(|p| p.ticket == ticket) {
            Some(p) => Ok(self.outcome(s.depth, p).0),
            None => Err(Error::BadArgument {
                what: "no DMA transfer with this ticket (or too long ago to remember)",
                value: ticket,
            }),
        }
    }

    fn fifo_depth(&self) -> u32 {
        self.lock().depth
    }

    fn set_fifo_depth(&self, depth: u32) -> Result<()> {
        if self.valid_fifo_depth(depth) != depth {
            return Err(Error::BadArgument {
                what: "DMA engine FIFO depth (a power of two, 1..=256)",
                value: depth as u64,
            });
        }
        let mut s = self.lock();
        if !s.inflight.is_empty() {
            return Err(Error::Busy {
                what: "DMA engine descriptor ring",
                addr: self.ring_dev(),
                why: "transfers are queued or unreported: take completions before resizing",
            });
        }
        self.program(&mut s, depth)
    }

    /// The largest power of two at most `depth`, within 1..=256.
    fn valid_fifo_depth(&self, depth: u32) -> u32 {
        let d = depth.clamp(1, regs::MAX_RING_SIZE);
        1 << (31 - d.leading_zeros())
    }
}

impl CompletionSource for SimDmaEngine {
    fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
        let mut out = Vec::new();
        {
            let mut s = self.lock();
            // Acknowledge first: anything that finishes after this raises again.
            let regs_now = self.read_reg(regs::INT_STATUS).and_then(|int| {
                self.write_reg(regs::INT_STATUS, int)?;
                Ok((self.read_reg(regs::HEAD)?, self.read_reg(regs::STATUS)?))
            });
            let Ok((head, status)) = regs_now else {
                return;
            };
            while let Some(&p) = s.inflight.front() {
                if head.wrapping_sub(s.reaped) < p.count {
                    break;
                }
                let (bytes, error) = self.outcome(s.depth, &p);
                s.inflight.pop_front();
                s.reaped = s.reaped.wrapping_add(p.count);
                Self::remember(&mut s, p.ticket, bytes);
                out.push(DmaCompletion {
                    ticket: p.ticket,
                    bytes,
                    status: error.map_or(Ok(()), Err),
                });
            }
            if status & regs::STATUS_HALTED != 0 {
                let fault = self
                    .read_reg(regs::FAULT_ADDR_LO)
                    .and_then(|lo| {
                        Ok(lo as u64 | (self.read_reg(regs::FAULT_ADDR_HI)? as u64) << 32)
                    })
                    .unwrap_or(0);
                let depth = s.depth;
                let stranded: Vec<Pending> = s.inflight.drain(..).collect();
                for p in stranded {
                    let (bytes, error) = self.outcome(depth, &p);
                    Self::remember(&mut s, p.ticket, bytes);
                    out.push(DmaCompletion {
                        ticket: p.ticket,
                        bytes,
                        status: Err(error.unwrap_or(Error::NotMapped {
                            what: "DMA engine halted: it could not fetch or write back a descriptor here (the driver reset it)",
                            addr: fault,
                        })),
                    });
                }
                // Recover: a fresh ring. If that fails, `start` says why from now on.
                if let Err(e) = self.program(&mut s, depth) {
                    s.broken = Some(e);
                }
            }
        }
        out.into_iter().for_each(sink);
    }
}

impl Drop for SimDmaEngine {
    fn drop(&mut self) {
        // Quiesce the device before its ring is unmapped and freed. The window stays, with
        // the device in its reset state.
        let _ = self.write_reg(regs::CONTROL, regs::CTRL_RESET);
    }
}

impl std::fmt::Debug for SimDmaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDmaEngine")
            .field("registers", &format_args!("{:#x}", self.regs.0))
            .field("ring", &format_args!("{:#x}", self.ring_dev()))
            .field("iommu", &self.iommu.is_some())
            .field("fifo_depth", &self.fifo_depth())
            .finish()
    }
}
