//! [`Edu`]: the driver, a [`DmaController`] over one `edu` function.

use crate::regs::*;
use crate::runs::{split_runs, Run};
use crate::{EDU_BUFFER, EDU_DEVICE, EDU_VENDOR};
use alloc::collections::VecDeque;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use dmakit::device::{BarInfo, DmaView, InterruptKind, PciFunction};
use dmakit::dma::{
    BouncePool, CompletionSource, DmaCommand, DmaCompletion, DmaController, DmaTransfer,
    InterruptSink, MappingMode, SegmentSpec,
};
use dmakit::map::{mapped_read32, mapped_write32, mapped_write64};
use dmakit::platform::{Platform, Width};
use dmakit::{Error, Result};

/// The deepest queue [`Edu`] accepts.
pub const MAX_FIFO_DEPTH: u32 = 64;
/// How many finished transfers [`query`](DmaController::query) still answers for.
pub const QUERY_HISTORY: usize = 256;
/// Runs [`Edu::service`] finishes at most per call (an engine that completes synchronously
/// finishes one run per pass).
const SERVICE_PASSES: usize = 64;

/// How [`Edu::new`] sets the driver up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EduOptions {
    /// The address bits the device drives (QEMU's `dma_mask` property, which nothing on
    /// the bus reports): 12 to 64. Default [`EDU_DEFAULT_DMA_BITS`](crate::EDU_DEFAULT_DMA_BITS).
    pub dma_bits: u32,
    /// Complete transfers through the function's interrupt vector when it has one
    /// (default); `false` polls even then.
    pub interrupts: bool,
    /// Transfers queued at once (1 to [`MAX_FIFO_DEPTH`], default 16).
    pub fifo_depth: u32,
    /// Bytes of bounce memory the driver's commands may hold at once (default 64 KiB).
    pub bounce_capacity: u64,
}

impl Default for EduOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl EduOptions {
    /// QEMU's defaults: 28 address bits, interrupts, a queue of 16, 64 KiB of bounce memory.
    pub const fn new() -> Self {
        EduOptions {
            dma_bits: crate::EDU_DEFAULT_DMA_BITS,
            interrupts: true,
            fifo_depth: 16,
            bounce_capacity: 64 * 1024,
        }
    }

    /// The address bits the device drives (its `dma_mask`).
    #[must_use]
    pub const fn dma_bits(mut self, bits: u32) -> Self {
        self.dma_bits = bits;
        self
    }

    /// Whether to use the function's interrupt vector.
    #[must_use]
    pub const fn interrupts(mut self, on: bool) -> Self {
        self.interrupts = on;
        self
    }

    /// The queue depth.
    #[must_use]
    pub const fn fifo_depth(mut self, depth: u32) -> Self {
        self.fifo_depth = depth;
        self
    }

    /// The bounce memory cap.
    #[must_use]
    pub const fn bounce_capacity(mut self, bytes: u64) -> Self {
        self.bounce_capacity = bytes;
        self
    }
}

/// How completions reach the event source [`Edu::connect`] was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The function's vector 0 raises the event source; its poll does the servicing.
    Interrupt(InterruptKind),
    /// No interrupt: the driver's work happens when the event source is polled.
    Polling,
}

/// Transfers started and not yet completed, oldest first.
#[derive(Debug)]
struct Job {
    ticket: u64,
    runs: VecDeque<Run>,
    done: u64,
    /// `stop` was called before it finished: it completes (aborted) after the run in
    /// flight, if any, in ticket order.
    stopped: bool,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Job>,
    /// A run of the head job is on the engine.
    busy: bool,
    finished: VecDeque<DmaCompletion>,
    /// Bytes of the most recently finished tickets.
    history: VecDeque<(u64, u64)>,
    next_ticket: u64,
    depth: u32,
    runs_done: u64,
    service_errors: u64,
    last_error: Option<Error>,
}

/// What the function's vector is routed to: it counts and signals, nothing more. Weak:
/// the event source owns the driver, so a strong link from the function back to it would
/// be a cycle.
struct Relay {
    target: Weak<dyn InterruptSink>,
    raised: AtomicU64,
}

impl InterruptSink for Relay {
    fn raise(&self) {
        self.raised.fetch_add(1, Ordering::AcqRel);
        if let Some(t) = self.target.upgrade() {
            t.raise();
        }
    }
}

#[derive(Default)]
struct Connection {
    relay: Option<Arc<Relay>>,
    routed: bool,
}

/// QEMU's `edu` as IOKit's `IODMAController`: a [`DmaController`] whose transfers have one
/// side in RAM and the other in the device buffer [`EDU_BUFFER`].
///
/// It is cut into engine runs of at most [`EDU_MAX_RUN`](crate::EDU_MAX_RUN) bytes, started
/// one at a time. Completions are delivered through a
/// [`DmaEventSource`](dmakit::dma::DmaEventSource): [`connect`](Self::connect) routes the
/// function's vector to it (the interrupt only signals), and its poll calls
/// [`take_completions`](CompletionSource::take_completions), which
/// [services](Self::service) the device: acknowledges, finishes the run, starts the next,
/// and hands over finished transfers in ticket order.
pub struct Edu<P: Platform + Clone + Send + Sync + 'static> {
    platform: P,
    function: Arc<dyn PciFunction>,
    bar: BarInfo,
    view: DmaView,
    limit: u64,
    spec: SegmentSpec,
    options: EduOptions,
    pool: Arc<BouncePool<P>>,
    state: dmakit::sync::Mutex<State>,
    connection: dmakit::sync::Mutex<Connection>,
}

impl<P: Platform + Clone + Send + Sync + 'static> Edu<P> {
    /// Takes `function` (IOKit `probe` + `start` against an `IOPCIDevice` provider): checks
    /// its IDs (`1234:11e8`), BAR0's identification and liveness registers and `options`,
    /// reads its DMA view and turns bus mastering on. Nothing is changed on an error.
    ///
    /// The address limit is `2^dma_bits - 1`, lowered to the view's `max_address` when the
    /// function bypasses an IOMMU.
    pub fn new(platform: P, function: Arc<dyn PciFunction>, options: EduOptions) -> Result<Self> {
        check_options(function.as_ref(), &options)?;
        let bar = function.bar(0)?;
        probe_registers(&platform, &bar)?;
        let mask = match options.dma_bits {
            64 => u64::MAX,
            b => (1u64 << b) - 1,
        };
        let view = function.dma();
        let limit = match view {
            DmaView::Bypass { max_address } => mask.min(max_address),
            DmaView::Mapped(_) => mask,
        };
        let spec = SegmentSpec::builder()
            .window(0, limit)
            .max_transfer_size(EDU_BUFFER.1 - 1)
            .build()?;
        function.set_bus_master(true)?;
        Ok(Edu {
            pool: Arc::new(BouncePool::new(
                platform.clone(),
                "edu bounce pool",
                options.bounce_capacity,
            )),
            platform,
            function,
            bar,
            view,
            limit,
            spec,
            options,
            state: dmakit::sync::Mutex::new(State {
                queue: VecDeque::new(),
                busy: false,
                finished: VecDeque::new(),
                history: VecDeque::new(),
                next_ticket: 1,
                depth: options.fifo_depth,
                runs_done: 0,
                service_errors: 0,
                last_error: None,
            }),
            connection: dmakit::sync::Mutex::new(Connection::default()),
        })
    }

    /// The identification register (`0x010000ed` for version 1.0).
    pub fn id(&self) -> Result<u32> {
        self.read(ID)
    }

    /// The highest address (IO address through an IOMMU, physical address in bypass) the
    /// device can drive: `2^dma_bits - 1`, or the bypass limit if lower.
    pub fn address_limit(&self) -> u64 {
        self.limit
    }

    /// The function's DMA view, read once by [`new`](Self::new).
    pub fn dma_view(&self) -> &DmaView {
        &self.view
    }

    /// The function.
    pub fn function(&self) -> &Arc<dyn PciFunction> {
        &self.function
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The options it was made with.
    pub fn options(&self) -> EduOptions {
        self.options
    }

    /// The device's segment specification (IOKit's `SegmentOptions` for it): every address
    /// at or below [`address_limit`](Self::address_limit), at most 4095 bytes a transfer.
    pub fn spec(&self) -> &SegmentSpec {
        &self.spec
    }

    /// Where the driver's commands take bounce memory from (for its counters).
    pub fn bounce_pool(&self) -> &Arc<BouncePool<P>> {
        &self.pool
    }

    /// A DMA command for this device (IOKit `IODMACommand::withSpecification` with the
    /// device's specification and mapper): IO addresses from the function's mapper, or
    /// physical addresses in bypass (with cache maintenance on a platform that is not
    /// coherent, and bounce buffers below the limit for memory above it). A mapped command
    /// does the cache maintenance itself where the platform's devices do not snoop.
    pub fn command(&self) -> Result<DmaCommand<P>> {
        let mode = match &self.view {
            DmaView::Mapped(m) => MappingMode::Mapped(m.clone()),
            DmaView::Bypass { .. } if self.platform.dma_coherent() => MappingMode::Bypassed,
            DmaView::Bypass { .. } => MappingMode::NonCoherent,
        };
        DmaCommand::builder(self.platform.clone())
            .spec(self.spec)
            .mode(mode)
            .bounce_pool(self.pool.clone())
            .build()
    }

    /// Routes completions to `sink` (normally the [`DmaEventSource`](dmakit::dma::DmaEventSource)
    /// that owns this controller; IOKit `registerInterrupt` + `enableInterrupt` for it):
    /// vector 0 of the function when it has one and the options allow it, else nothing
    /// (the event source is polled). The driver also raises `sink` itself when
    /// [`stop`](DmaController::stop) finishes transfers at once. The driver keeps only a
    /// weak link to `sink`. Connecting again replaces the route; an error leaves the old
    /// one.
    pub fn connect(&self, sink: &Arc<dyn InterruptSink>) -> Result<Delivery> {
        let relay = Arc::new(Relay {
            target: Arc::downgrade(sink),
            raised: AtomicU64::new(0),
        });
        let irqs = self.function.interrupts();
        let delivery = match irqs.kind {
            Some(kind) if self.options.interrupts && irqs.vectors > 0 => {
                self.function.enable_interrupt(0, relay.clone())?;
                Delivery::Interrupt(kind)
            }
            _ => Delivery::Polling,
        };
        let mut c = self.connection.lock();
        if c.routed && delivery == Delivery::Polling {
            // The function no longer offers its vector (after a reset): drop the old route.
            let _ = self.function.disable_interrupt(0);
        }
        c.relay = Some(relay);
        c.routed = delivery != Delivery::Polling;
        Ok(delivery)
    }

    /// Stops routing the vector (IOKit `disableInterrupt`) and forgets the sink. Call it
    /// from thread context: the platform may wait for its interrupt handler to finish.
    pub fn disconnect(&self) -> Result<()> {
        let mut c = self.connection.lock();
        let routed = core::mem::take(&mut c.routed);
        c.relay = None;
        drop(c);
        if routed {
            self.function.disable_interrupt(0)?;
        }
        Ok(())
    }

    /// Interrupts the function raised through the connected route so far.
    pub fn interrupts(&self) -> u64 {
        self.connection
            .lock()
            .relay
            .as_ref()
            .map_or(0, |r| r.raised.load(Ordering::Acquire))
    }

    /// Transfers started and not yet handed over as completions (queued, on the engine,
    /// or finished and waiting for the next poll).
    pub fn outstanding(&self) -> usize {
        let s = self.state.lock();
        s.queue.len() + s.finished.len()
    }

    /// Engine runs finished so far.
    pub fn runs_done(&self) -> u64 {
        self.state.lock().runs_done
    }

    /// Register accesses that failed while servicing from
    /// [`take_completions`](CompletionSource::take_completions) (which cannot return
    /// errors), and the last such error.
    pub fn service_errors(&self) -> (u64, Option<Error>) {
        let s = self.state.lock();
        (s.service_errors, s.last_error.clone())
    }

    /// The interrupt handler's work (IOKit's interrupt event source action), run from the
    /// event source's poll, never from the interrupt itself: if the engine signalled a
    /// finished run, acknowledges it, finishes the run, starts the next, and queues the
    /// transfers that completed. Returns whether a run finished. Call it directly to poll
    /// without an event source.
    ///
    /// A register access that fails is returned and changes nothing: the next call
    /// retries. A device that reads all ones (gone, reset, memory decoding off) is
    /// [`Error::NotAttached`].
    pub fn service(&self) -> Result<bool> {
        let mut s = self.state.lock();
        let mut any = false;
        for _ in 0..SERVICE_PASSES {
            if !self.service_once(&mut s)? {
                break;
            }
            any = true;
        }
        Ok(any)
    }

    /// One pass of [`service`](Self::service).
    fn service_once(&self, s: &mut State) -> Result<bool> {
        if !s.busy {
            // A start that failed before (a register store refused) is retried here.
            self.kick(s)?;
            return Ok(false);
        }
        let status = self.read(IRQ_STATUS)?;
        if status == u32::MAX {
            return Err(not_answering());
        }
        if status & IRQ_DMA == 0 {
            return Ok(false);
        }
        // Acknowledge first: a stale bit (whose acknowledgement was lost) must go, or a
        // level-triggered line would never signal the run in flight.
        self.write(IRQ_ACK, IRQ_DMA)?;
        let cmd = self.read(DMA_CMD)?;
        if cmd == u32::MAX {
            return Err(not_answering());
        }
        if cmd & CMD_START != 0 {
            return Ok(false); // the engine is still on it: that bit was stale
        }
        self.finish_run(s, true);
        Ok(true)
    }

    /// The engine is done with the run in flight: `finished` (its bytes moved), or
    /// dropped (never signalled: it stays in its job, which can then only end aborted).
    fn finish_run(&self, s: &mut State, finished: bool) {
        s.busy = false;
        if finished {
            if let Some(run) = s.queue.front_mut().and_then(|job| job.runs.pop_front()) {
                if let Some(job) = s.queue.front_mut() {
                    job.done = job.done.saturating_add(run.len);
                }
                s.runs_done = s.runs_done.saturating_add(1);
            }
        }
        Self::retire(s);
        // A failed start is retried on the next service.
        if let Err(e) = self.kick(s) {
            s.service_errors = s.service_errors.saturating_add(1);
            s.last_error = Some(e);
        }
    }

    /// Completes, in ticket order, the jobs at the head that have nothing left to run
    /// (finished, or stopped and not on the engine); returns whether any did.
    fn retire(s: &mut State) -> bool {
        let mut any = false;
        // While a run is on the engine its job is the head, and nothing behind it may
        // complete first.
        while let Some(job) = s.queue.front().filter(|_| !s.busy) {
            if !(job.runs.is_empty() || job.stopped) {
                break;
            }
            let Some(job) = s.queue.pop_front() else {
                break;
            };
            let status = if job.runs.is_empty() {
                Ok(())
            } else {
                Err(Error::Aborted {
                    what: "edu DMA transfer stopped before it finished (its byte count says \
                           how far it got)",
                    id: job.ticket,
                })
            };
            if s.history.len() >= QUERY_HISTORY {
                s.history.pop_front();
            }
            s.history.push_back((job.ticket, job.done));
            s.finished.push_back(DmaCompletion {
                ticket: job.ticket,
                bytes: job.done,
                status,
            });
            any = true;
        }
        any
    }

    /// Starts the head job's next run if the engine is idle.
    fn kick(&self, s: &mut State) -> Result<()> {
        if s.busy {
            return Ok(());
        }
        let Some(run) = s
            .queue
            .front()
            .filter(|j| !j.stopped)
            .and_then(|j| j.runs.front())
            .copied()
        else {
            return Ok(());
        };
        let w64 = |off, v| mapped_write64(&self.platform, self.bar.reg(off, Width::W64)?, v);
        w64(DMA_SRC, run.src)?;
        w64(DMA_DST, run.dst)?;
        w64(DMA_COUNT, run.len)?;
        let cmd = CMD_START | CMD_IRQ | if run.to_ram { CMD_TO_RAM } else { 0 };
        // Busy from the store on: an engine that completes inside it (a simulator) has
        // already signalled by the time the store returns.
        s.busy = true;
        if let Err(e) = self.write(DMA_CMD, cmd) {
            s.busy = false;
            return Err(e);
        }
        Ok(())
    }

    /// Raises the connected sink (a software signal: transfers finished without an
    /// interrupt).
    fn signal(&self) {
        let target = self
            .connection
            .lock()
            .relay
            .as_ref()
            .and_then(|r| r.target.upgrade());
        if let Some(t) = target {
            t.raise();
        }
    }

    fn read(&self, off: u64) -> Result<u32> {
        mapped_read32(&self.platform, self.bar.reg(off, Width::W32)?)
    }

    fn write(&self, off: u64, v: u32) -> Result<()> {
        mapped_write32(&self.platform, self.bar.reg(off, Width::W32)?, v)
    }
}

fn not_answering() -> Error {
    Error::NotAttached {
        what: "edu",
        why: "BAR0 reads all ones: the device does not answer (removed, reset, or memory \
              decoding off)",
    }
}

impl<P: Platform + Clone + Send + Sync + 'static> DmaController for Edu<P> {
    /// IOKit `startDMACommand`: checks the whole transfer (pieces paired RAM ↔ device
    /// buffer, RAM addresses at or below the limit), queues it and starts it if the engine
    /// is idle. A full queue is [`Error::NoResources`]; on any error nothing is queued.
    fn start(&self, transfer: &DmaTransfer<'_>) -> Result<u64> {
        let runs = split_runs(transfer, self.limit)?;
        let mut s = self.state.lock();
        if s.queue.len() >= s.depth as usize {
            return Err(Error::NoResources {
                what: "edu DMA queue (fifo depth)",
                limit: s.depth.into(),
            });
        }
        let ticket = s.next_ticket;
        s.next_ticket = ticket.checked_add(1).ok_or(Error::NoResources {
            what: "edu DMA tickets",
            limit: u64::MAX,
        })?;
        s.queue.push_back(Job {
            ticket,
            runs,
            done: 0,
            stopped: false,
        });
        if let Err(e) = self.kick(&mut s) {
            // Not started (the engine is idle, so it was this job's first run): take it
            // back, the caller has no ticket for it.
            s.queue.pop_back();
            return Err(e);
        }
        Ok(ticket)
    }

    /// IOKit `stopDMACommand`: every queued transfer completes with [`Error::Aborted`] and
    /// the bytes it moved, in ticket order. A run in flight cannot be aborted: its transfer
    /// completes when the run ends (the interrupt, or a later poll), the rest right after
    /// it. A run the engine has dropped (idle, nothing signalled) ends the wait at once.
    /// Register errors are returned after the transfers have been marked.
    fn stop(&self) -> Result<()> {
        let mut s = self.state.lock();
        for j in s.queue.iter_mut() {
            j.stopped = true;
        }
        let mut result = Ok(());
        if s.busy {
            // Take a run that has finished first, so its bytes count.
            match self.service_once(&mut s) {
                Ok(_) => {}
                Err(e) => result = Err(e),
            }
        }
        if s.busy && result.is_ok() {
            let idle = self.read(DMA_CMD).and_then(|cmd| {
                let status = self.read(IRQ_STATUS)?;
                Ok(cmd != u32::MAX && cmd & CMD_START == 0 && status & IRQ_DMA == 0)
            });
            match idle {
                Ok(true) => self.finish_run(&mut s, false),
                Ok(false) => {}
                Err(e) => result = Err(e),
            }
        }
        let any = Self::retire(&mut s) || !s.finished.is_empty();
        drop(s);
        if any {
            self.signal();
        }
        result
    }

    /// IOKit `queryDMACommand`: bytes moved so far by `ticket`, queued or among the last
    /// [`QUERY_HISTORY`] finished; an older or unknown ticket is [`Error::BadArgument`].
    fn query(&self, ticket: u64) -> Result<u64> {
        let s = self.state.lock();
        s.queue
            .iter()
            .find(|j| j.ticket == ticket)
            .map(|j| j.done)
            .or_else(|| {
                s.history
                    .iter()
                    .rev()
                    .find(|(t, _)| *t == ticket)
                    .map(|(_, b)| *b)
            })
            .ok_or(Error::BadArgument {
                what: "no edu DMA transfer with this ticket (or too long ago to remember)",
                value: ticket,
            })
    }

    /// IOKit `getFIFODepth`.
    fn fifo_depth(&self) -> u32 {
        self.state.lock().depth
    }

    /// IOKit `setFIFODepth`: 1 to [`MAX_FIFO_DEPTH`]. Transfers already queued stay.
    fn set_fifo_depth(&self, depth: u32) -> Result<()> {
        if self.valid_fifo_depth(depth) != depth {
            return Err(Error::BadArgument {
                what: "edu DMA queue depth (1-64)",
                value: depth.into(),
            });
        }
        self.state.lock().depth = depth;
        Ok(())
    }

    /// IOKit `validFIFODepth`.
    fn valid_fifo_depth(&self, depth: u32) -> u32 {
        depth.clamp(1, MAX_FIFO_DEPTH)
    }
}

impl<P: Platform + Clone + Send + Sync + 'static> CompletionSource for Edu<P> {
    /// Services the device ([`Edu::service`]; an error is counted in
    /// [`service_errors`](Edu::service_errors) and retried on the next call), then hands
    /// over the finished transfers in ticket order, outside the driver's lock (the
    /// callback may start more).
    fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
        let done: Vec<DmaCompletion> = {
            let mut s = self.state.lock();
            for _ in 0..SERVICE_PASSES {
                match self.service_once(&mut s) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        s.service_errors = s.service_errors.saturating_add(1);
                        s.last_error = Some(e);
                        break;
                    }
                }
            }
            s.finished.drain(..).collect()
        };
        for c in done {
            sink(c);
        }
    }
}

impl<P: Platform + Clone + Send + Sync + 'static> core::fmt::Debug for Edu<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Edu")
            .field("function", &self.function.address())
            .field("bar0", &self.bar)
            .field("view", &self.view)
            .field("limit", &self.limit)
            .field("options", &self.options)
            .finish()
    }
}

/// What the driver checks before it touches the device: the function is QEMU's edu
/// device, and the options are possible.
fn check_options(function: &dyn PciFunction, options: &EduOptions) -> Result<()> {
    let id = function.id();
    if (id.vendor, id.device) != (EDU_VENDOR, EDU_DEVICE) {
        return Err(Error::NotAttached {
            what: "edu driver",
            why: "the function is not QEMU's edu device (1234:11e8)",
        });
    }
    if !(12..=64).contains(&options.dma_bits) {
        return Err(Error::BadArgument {
            what: "edu DMA address bits (12-64)",
            value: options.dma_bits.into(),
        });
    }
    if options.fifo_depth == 0 || options.fifo_depth > MAX_FIFO_DEPTH {
        return Err(Error::BadArgument {
            what: "edu DMA queue depth (1-64)",
            value: options.fifo_depth.into(),
        });
    }
    Ok(())
}

/// Checks BAR0 is a live edu device whose DMA engine is idle (its identification
/// register, its liveness register inverting what is written), and acknowledges an
/// interrupt left from before the driver: a completion nobody serviced would keep a
/// level-triggered line up.
fn probe_registers<P: Platform>(platform: &P, bar: &BarInfo) -> Result<()> {
    let r32 = |off| mapped_read32(platform, bar.reg(off, Width::W32)?);
    let ident = r32(ID)?;
    if ident & 0xff != ID_MAGIC || ident == u32::MAX {
        return Err(Error::NotAttached {
            what: "edu driver",
            why: "BAR0's identification register does not read 0x..0000ed",
        });
    }
    let live = bar.reg(LIVENESS, Width::W32)?;
    mapped_write32(platform, live, 0x1234_5678)?;
    if mapped_read32(platform, live)? != !0x1234_5678 {
        return Err(Error::NotAttached {
            what: "edu driver",
            why: "the liveness register did not invert what was written",
        });
    }
    let cmd = r32(DMA_CMD)?;
    if cmd & CMD_START != 0 {
        return Err(Error::Busy {
            what: "edu DMA engine",
            addr: bar.base.0,
            why: "it is still running a transfer started before this driver (wait for \
                  it, or reset the function)",
        });
    }
    let stale = r32(IRQ_STATUS)?;
    if stale != 0 {
        mapped_write32(platform, bar.reg(IRQ_ACK, Width::W32)?, stale)?;
    }
    Ok(())
}
