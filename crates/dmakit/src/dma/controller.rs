//! [`DmaController`] and [`DmaEventSource`]: IOKit's IODMAController and IODMAEventSource.
//!
//! A DMA *controller* is a platform engine that moves data for clients: a client queues a
//! transfer (device-visible source and destination segments, typically from
//! [`DmaCommand::gen_segments`](super::DmaCommand::gen_segments)) and gets a ticket; the
//! engine raises an interrupt when transfers finish. The *event source* turns those
//! interrupts into completion callbacks delivered in order, on a work-loop thread (feature
//! `std`) or when the driver calls [`poll`](DmaEventSource::poll). An event source without a
//! completion action starts transfers synchronously
//! ([`start_dma_command`](DmaEventSource::start_dma_command) waits for the completion).
//!
//! Controllers are found by name through a [`DmaControllerRegistry`] (IOKit's
//! `registerDMAController` and the client's `dma-parent` lookup).
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
//! use dmakit::dma::{DmaEventSource, DmaStart, DmaTransfer, IoSegment, SyncWait};
//! use dmakit::{Direction, IoAddr};
//! use dmakit_sim::SimDmaEngine;
//! use std::sync::Arc;
//!
//! // The simulator's memory-to-memory engine, a `DmaController`.
//! let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
//! let engine = Arc::new(SimDmaEngine::new(machine.clone(), None)?);
//! let buf = BufferMemoryDescriptor::new(machine, BufferOptions::new(0x2000, Direction::InOut))?;
//! buf.write(0, b"moved by DMA")?;
//! let at = |off| -> dmakit::Result<[IoSegment; 1]> {
//!     Ok([IoSegment { addr: IoAddr(buf.physical_segment(off)?.addr.0), len: 12 }])
//! };
//!
//! // Without a completion action, a start waits for its own completion.
//! let events = DmaEventSource::synchronous(engine);
//! let copy = DmaTransfer { source: &at(0)?, dest: &at(0x1000)? };
//! let DmaStart::Completed(done) = events.start_dma_command(&copy, SyncWait::Polls(10))? else {
//!     panic!("a synchronous event source returns the completion");
//! };
//! assert_eq!((done.bytes, done.status), (12, Ok(())));
//! let mut back = [0u8; 12];
//! buf.read(0x1000, &mut back)?;
//! assert_eq!(&back, b"moved by DMA");
//! # Ok::<(), dmakit::Error>(())
//! ```

use super::format::IoSegment;
use crate::{Error, Result};
use alloc_crate::boxed::Box;
use alloc_crate::collections::BTreeMap;
use alloc_crate::string::String;
use alloc_crate::sync::Arc;
use alloc_crate::vec::Vec;

/// One transfer: copy the bytes of `source` (in order) to `dest` (in order). Both lists
/// must describe the same number of bytes.
#[derive(Clone, Copy, Debug)]
pub struct DmaTransfer<'a> {
    /// Where the engine reads.
    pub source: &'a [IoSegment],
    /// Where the engine writes.
    pub dest: &'a [IoSegment],
}

impl DmaTransfer<'_> {
    /// Bytes described by `source`, if `dest` describes the same number (else an error;
    /// lengths that add up past 2^64 bytes are [`Error::Overflow`]).
    pub fn bytes(&self) -> Result<u64> {
        let total = |list: &[IoSegment]| {
            list.iter().try_fold(0u64, |sum, seg| {
                sum.checked_add(seg.len).ok_or(Error::Overflow {
                    what: "DMA transfer: the segment lengths add up past 2^64 bytes",
                    start: sum,
                    len: seg.len,
                })
            })
        };
        let (s, d) = (total(self.source)?, total(self.dest)?);
        if s != d || s == 0 {
            return Err(Error::BadArgument {
                what: "DMA transfer: source and destination must describe the same, non-zero, number of bytes",
                value: s,
            });
        }
        Ok(s)
    }
}

/// A finished transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaCompletion {
    /// The ticket `start` returned.
    pub ticket: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// `Ok` or why the engine stopped (an IOMMU fault, a stop).
    pub status: core::result::Result<(), Error>,
}

/// Something that finishes work and reports it as [`DmaCompletion`]s: a DMA controller, or
/// any device queue a driver wants completions of through a [`DmaEventSource`] (an NVMe
/// completion queue, a NIC's receive ring).
///
/// This is the controller's half of IOKit's `IODMAController::notifyDMACommand` (a
/// command's status and byte count) and `completeDMACommand` (queue it for the work loop):
/// IOKit's controller pushes each finished command into its event source from the
/// interrupt, a dmakit controller hands them over, oldest first, when the event source
/// asks (after an [`InterruptSink::raise`]).
///
/// ```
/// use dmakit::dma::{CompletionSource, DmaCompletion, DmaEventSource, InterruptSink};
/// use std::sync::{Arc, Mutex};
///
/// /// A device's completion queue, as its interrupt handler would fill it.
/// #[derive(Default)]
/// struct RxRing(Mutex<Vec<DmaCompletion>>);
///
/// impl CompletionSource for RxRing {
///     fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
///         let done: Vec<DmaCompletion> = self.0.lock().unwrap().drain(..).collect();
///         done.into_iter().for_each(sink); // oldest first
///     }
/// }
///
/// let ring = Arc::new(RxRing::default());
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// let events = DmaEventSource::new(ring.clone(), move |c| s.lock().unwrap().push(c.ticket));
/// for ticket in 1..=3 {
///     ring.0.lock().unwrap().push(DmaCompletion { ticket, bytes: 1500, status: Ok(()) });
/// }
/// events.raise(); // the device's interrupt
/// assert_eq!(events.poll(), 3);
/// assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
/// assert_eq!(events.poll(), 0, "each completion is delivered once");
/// ```
pub trait CompletionSource: Send + Sync {
    /// Hands every finished, not yet reported piece of work to `sink`, oldest first.
    fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion));
}

/// IOKit's IODMAController.
///
/// A controller of your own: this one "moves" data with the simulator's device accesses
/// and finishes each transfer at once.
///
/// ```
/// use dmakit::dma::{CompletionSource, DmaCompletion, DmaController, DmaTransfer, IoSegment};
/// use dmakit::{IoAddr, PhysAddr};
/// use dmakit_sim::Machine;
/// use std::sync::{Arc, Mutex};
///
/// struct CopyEngine {
///     machine: Arc<Machine>,
///     done: Mutex<Vec<DmaCompletion>>,
///     tickets: Mutex<u64>,
/// }
///
/// impl CompletionSource for CopyEngine {
///     fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
///         let done: Vec<DmaCompletion> = self.done.lock().unwrap().drain(..).collect();
///         done.into_iter().for_each(sink);
///     }
/// }
///
/// impl DmaController for CopyEngine {
///     fn start(&self, t: &DmaTransfer<'_>) -> dmakit::Result<u64> {
///         let bytes = t.bytes()?; // both sides describe the same, non-zero, count
///         let mut data = Vec::new();
///         for s in t.source {
///             let mut piece = vec![0u8; s.len as usize];
///             self.machine.device_read(PhysAddr(s.addr.0), &mut piece)?;
///             data.extend(piece);
///         }
///         let mut at = 0;
///         for d in t.dest {
///             self.machine.device_write(PhysAddr(d.addr.0), &data[at..at + d.len as usize])?;
///             at += d.len as usize;
///         }
///         let mut ticket = self.tickets.lock().unwrap();
///         *ticket += 1;
///         self.done.lock().unwrap().push(DmaCompletion { ticket: *ticket, bytes, status: Ok(()) });
///         Ok(*ticket)
///     }
///     fn stop(&self) -> dmakit::Result<()> { Ok(()) } // nothing is ever queued
///     fn query(&self, _ticket: u64) -> dmakit::Result<u64> { Ok(0) }
///     fn fifo_depth(&self) -> u32 { 1 }
///     fn set_fifo_depth(&self, depth: u32) -> dmakit::Result<()> {
///         if depth == 1 { Ok(()) } else {
///             Err(dmakit::Error::BadArgument { what: "fifo depth (only 1)", value: depth as u64 })
///         }
///     }
///     fn valid_fifo_depth(&self, _depth: u32) -> u32 { 1 }
/// }
///
/// # use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
/// # use dmakit::Direction;
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
/// let engine = CopyEngine { machine: machine.clone(), done: Mutex::default(), tickets: Mutex::default() };
/// let src = BufferMemoryDescriptor::with_bytes(machine.clone(), b"abcd", Direction::Out)?;
/// let dst = BufferMemoryDescriptor::with_bytes(machine, b"....", Direction::In)?;
/// let seg = |md: &dyn MemoryDescriptor| -> dmakit::Result<[IoSegment; 1]> {
///     Ok([IoSegment { addr: IoAddr(md.physical_segment(0)?.addr.0), len: 4 }])
/// };
/// let ticket = engine.start(&DmaTransfer { source: &seg(&src)?, dest: &seg(&dst)? })?;
/// let mut done = Vec::new();
/// engine.take_completions(&mut |c| done.push(c));
/// assert_eq!((done[0].ticket, done[0].bytes), (ticket, 4));
/// let mut back = [0u8; 4];
/// dst.read(0, &mut back)?;
/// assert_eq!(&back, b"abcd");
/// # Ok::<(), dmakit::Error>(())
/// ```
///
/// # Where it differs from IOKit's class
///
/// * One controller value is one channel: IOKit's controller serves many channels and
///   picks one by the `dmaIndex` its `initDMAChannel` handed the event source; in dmakit a
///   driver with several channels makes one controller value per channel. So an event
///   source always has a controller and a channel, and IOKit's `kIOReturnError` for an
///   event source without them cannot happen.
/// * A transfer is a pair of segment lists (from
///   [`DmaCommand::gen_segments`](super::DmaCommand::gen_segments) or any other source),
///   not an `IODMACommand` with a direction, byte count and offset: the caller cuts the
///   part to move, so an unprepared command fails where its segments are generated
///   ([`Error::NotReady`]), before anything reaches the controller.
/// * [`start`](Self::start) returns a ticket that names the transfer in
///   [`query`](Self::query) and in its [`DmaCompletion`]; IOKit's `queryDMACommand` returns
///   the command in progress instead, and can wait for the channel to go idle (poll
///   the event source for that).
/// * [`stop`](Self::stop) takes no `flush` or timeout: what a stop does with data already
///   in the engine, and how long it may wait, is the controller's to document.
/// * The FIFO depth is one number for both directions (IOKit's `getFIFODepth` and
///   `validFIFODepth` take a direction, which most engines ignore), and its unit is the
///   controller's to document: IOKit passes it as a byte count (a peripheral channel's
///   FIFO), the simulator's engine counts the transfers (descriptor slots) it holds.
/// * Completions carry no timestamp, and there is no notification action called from the
///   interrupt: the interrupt only signals ([`InterruptSink`]), and everything a
///   completion says is delivered to the completion action. A driver that must act at
///   interrupt time (IOKit's notification action) connects an [`InterruptSink`] of its
///   own that does so and then raises the event source.
pub trait DmaController: CompletionSource {
    /// Queues a transfer (IOKit `startDMACommand`); returns its ticket.
    fn start(&self, transfer: &DmaTransfer<'_>) -> Result<u64>;

    /// Aborts queued transfers (IOKit `stopDMACommand`); each completes with an error.
    fn stop(&self) -> Result<()>;

    /// Bytes moved so far by transfer `ticket` (IOKit `queryDMACommand`).
    fn query(&self, ticket: u64) -> Result<u64>;

    /// The depth of the engine's FIFO (IOKit `getFIFODepth`), in the controller's unit:
    /// how many transfers it holds at once for a queueing engine, bytes for a peripheral
    /// channel's FIFO as in IOKit.
    fn fifo_depth(&self) -> u32;

    /// Sets the FIFO depth (must be a valid depth; IOKit `setFIFODepth`).
    fn set_fifo_depth(&self, depth: u32) -> Result<()>;

    /// The nearest valid depth to `depth`, or 0 if there is none (IOKit `validFIFODepth`,
    /// which returns an error code converted to a byte count here; dmakit returns 0).
    fn valid_fifo_depth(&self, depth: u32) -> u32;

    /// Sets the bytes the engine moves per request of a peripheral (IOKit `setFrameSize`).
    ///
    /// IOKit has every controller implement it; dmakit's default is
    /// [`Error::Unsupported`], right for an engine without peripheral requests (a
    /// memory-to-memory engine). IOKit has no call that reads the frame size back.
    fn set_frame_size(&self, byte_count: u8) -> Result<()> {
        let _ = byte_count;
        Err(Error::Unsupported {
            what: "this DMA controller has no frame size (setFrameSize)",
        })
    }

    /// Routes the channel to peripheral request line `req_index` (IOKit `setDMAConfig`).
    ///
    /// IOKit has every controller implement it; dmakit's default is [`Error::Unsupported`]
    /// (an engine without request lines).
    fn set_dma_config(&self, req_index: u32) -> Result<()> {
        let _ = req_index;
        Err(Error::Unsupported {
            what: "this DMA controller has no request lines to configure (setDMAConfig)",
        })
    }

    /// Whether [`set_dma_config`](Self::set_dma_config) would accept `req_index` (IOKit
    /// `validDMAConfig`). The default accepts none.
    fn valid_dma_config(&self, req_index: u32) -> bool {
        let _ = req_index;
        false
    }
}

/// Something an engine calls when it raises its completion interrupt.
pub trait InterruptSink: Send + Sync {
    /// The interrupt fired.
    fn raise(&self);
}

/// What [`DmaEventSource::start_dma_command`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a synchronous start carries the transfer's status"]
pub enum DmaStart {
    /// Started; the completion goes to the event source's action (an event source made
    /// with [`DmaEventSource::new`]).
    Queued {
        /// The ticket the controller returned.
        ticket: u64,
    },
    /// Started and finished: the controller reported this completion (an event source made
    /// with [`DmaEventSource::synchronous`]). Its `status` says whether the transfer worked.
    Completed(DmaCompletion),
}

/// How a synchronous [`DmaEventSource::start_dma_command`] waits between polls of the
/// controller. IOKit sleeps on the work loop until the completion arrives, however long
/// that takes; dmakit always bounds the wait and returns [`Error::Timeout`] when it ends.
#[non_exhaustive]
pub enum SyncWait<'a> {
    /// Poll the controller at most this many times, with a spin-loop hint in between
    /// (works without `std`; a controller that completes from its own context, or in the
    /// start itself, needs only one).
    Polls(u64),
    /// Poll until this much time has passed, sleeping on the event source's interrupt
    /// signal (an [`InterruptSink::raise`]) in between, at most a millisecond at a time.
    #[cfg(feature = "std")]
    #[cfg_attr(docsrs, doc(cfg(feature = "std")))]
    Timeout(core::time::Duration),
    /// Call this between polls (a kernel's sleep or yield, a test's step); it returns
    /// `false` to give up.
    With(&'a mut dyn FnMut() -> bool),
}

/// The synchronous command of an event source without an action.
#[derive(Debug)]
enum SyncState {
    /// None in flight.
    Idle,
    /// In flight, its starter waiting.
    InFlight(u64),
    /// In flight, its starter gave up: the next poll that sees it discards it.
    Abandoned(u64),
    /// Finished, not yet collected by its starter.
    Done(DmaCompletion),
}

struct Delivery {
    /// The completion action; out of its slot (`delivering`) while a poll runs it.
    action: Option<Box<dyn FnMut(DmaCompletion) + Send>>,
    /// Whether a poll holds the action and delivers `queue` (outside the lock, so the
    /// action may poll, start or stop again, as IOKit's recursive gate allows).
    delivering: bool,
    /// Completions taken and not yet delivered, in order.
    queue: alloc_crate::collections::VecDeque<DmaCompletion>,
    sync: SyncState,
    /// Whether completions are delivered to the action (IOKit's event source enable bit).
    enabled: bool,
    /// The thread running the action while `delivering` (so `disable` from that thread,
    /// inside the action, does not wait for itself).
    #[cfg(all(feature = "std", not(loom)))]
    deliverer: Option<std::thread::ThreadId>,
}

/// Gives the action back to its event source when a delivery ends, normally or because the
/// action panicked (so a later poll still delivers).
struct Restore<'a, C: CompletionSource + ?Sized> {
    source: &'a DmaEventSource<C>,
    action: Option<Box<dyn FnMut(DmaCompletion) + Send>>,
}

impl<C: CompletionSource + ?Sized> Drop for Restore<'_, C> {
    fn drop(&mut self) {
        let mut d = self.source.delivery.lock();
        d.delivering = false;
        #[cfg(all(feature = "std", not(loom)))]
        {
            d.deliverer = None;
        }
        // An action set while this one ran takes its place.
        if d.action.is_none() {
            d.action = self.action.take();
        }
        drop(d);
        #[cfg(all(feature = "std", not(loom)))]
        self.source.delivered.notify_all();
    }
}

/// IOKit's IODMAEventSource: completions of a controller (or any [`CompletionSource`]),
/// delivered in order.
///
/// An event source made with [`new`](Self::new) has a completion action: starts return at
/// once and every completion goes to the action, on [`poll`](Self::poll) or the work loop.
/// One made with [`synchronous`](Self::synchronous) has none, and, as in IOKit,
/// [`start_dma_command`](Self::start_dma_command) then waits for its own completion and
/// returns it, one command at a time.
///
/// [`disable`](Self::disable) holds completions back from the action until
/// [`enable`](Self::enable), as IOKit's work loop skips a disabled event source. Dropping
/// the event source (IOKit's `removeEventSource` and release) drops the completions it
/// holds undelivered; those the controller has not handed over yet stay with the
/// controller, and the next event source that polls it receives them. Unlike IOKit, where
/// a controller that completes into a freed event source touches freed memory, nothing
/// here can outlive what it points to: the simulator's engine holds its interrupt sink
/// weakly, and the event source holds the controller.
///
/// ```
/// use dmakit::dma::{DmaCompletion, DmaEventSource};
/// use dmakit_sim::SimDmaEngine;
/// use std::sync::{Arc, Mutex};
/// # use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
/// # use dmakit::dma::{DmaTransfer, IoSegment};
/// # use dmakit::{Direction, IoAddr};
/// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
/// # let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::InOut))?;
/// # buf.write(0, b"copied by the engine")?;
/// # let at = |off: u64| -> dmakit::Result<[IoSegment; 1]> {
/// #     Ok([IoSegment { addr: IoAddr(buf.physical_segment(off)?.addr.0), len: 20 }])
/// # };
/// # let (source, dest) = (at(0)?, at(0x1000)?);
///
/// let engine = Arc::new(SimDmaEngine::new(machine.clone(), None)?);
/// let finished: Arc<Mutex<Vec<DmaCompletion>>> = Arc::default();
/// let f = finished.clone();
/// let events = Arc::new(DmaEventSource::new(engine.clone(), move |c| f.lock().unwrap().push(c)));
/// engine.connect(events.clone()); // the engine's interrupt goes to the event source
///
/// let ticket = events.start(&DmaTransfer { source: &source, dest: &dest })?;
/// assert_eq!(events.pending_interrupts(), 1, "the engine raised its interrupt");
/// assert_eq!(events.poll(), 1); // the work-loop step: deliver to the action
/// let done = finished.lock().unwrap()[0].clone();
/// assert_eq!((done.ticket, done.bytes, done.status), (ticket, 20, Ok(())));
/// let mut back = [0u8; 20];
/// buf.read(0x1000, &mut back)?;
/// assert_eq!(&back, b"copied by the engine");
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct DmaEventSource<C: CompletionSource + ?Sized> {
    controller: Arc<C>,
    delivery: crate::sync::Mutex<Delivery>,
    pending: crate::sync::atomic::AtomicU64,
    #[cfg(feature = "std")]
    signal: Arc<(std::sync::Mutex<u64>, std::sync::Condvar)>,
    /// Signalled, with `delivery`, when a delivery ends: what [`disable`](Self::disable)
    /// waits on while the action runs in another thread.
    #[cfg(all(feature = "std", not(loom)))]
    delivered: std::sync::Condvar,
}

impl<C: CompletionSource + ?Sized> DmaEventSource<C> {
    /// An event source for `controller` that calls `action` for every completion (IOKit
    /// `IODMAEventSource::dmaEventSource` with a completion action).
    pub fn new(controller: Arc<C>, action: impl FnMut(DmaCompletion) + Send + 'static) -> Self {
        Self::build(controller, Some(Box::new(action)))
    }

    /// An event source for `controller` without a completion action (IOKit
    /// `dmaEventSource` with a NULL completion): [`start_dma_command`](Self::start_dma_command)
    /// is synchronous. Completions of transfers not started that way (through
    /// [`start`](Self::start) or the controller directly) have nowhere to go and are
    /// discarded by [`poll`](Self::poll).
    pub fn synchronous(controller: Arc<C>) -> Self {
        Self::build(controller, None)
    }

    fn build(controller: Arc<C>, action: Option<Box<dyn FnMut(DmaCompletion) + Send>>) -> Self {
        DmaEventSource {
            controller,
            delivery: crate::sync::Mutex::new(Delivery {
                action,
                delivering: false,
                queue: alloc_crate::collections::VecDeque::new(),
                sync: SyncState::Idle,
                enabled: true,
                #[cfg(all(feature = "std", not(loom)))]
                deliverer: None,
            }),
            pending: crate::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "std")]
            signal: Arc::new((std::sync::Mutex::new(0), std::sync::Condvar::new())),
            #[cfg(all(feature = "std", not(loom)))]
            delivered: std::sync::Condvar::new(),
        }
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<C> {
        &self.controller
    }

    /// Whether this event source has a completion action (else starts are synchronous).
    pub fn has_action(&self) -> bool {
        let d = self.delivery.lock();
        d.action.is_some() || d.delivering
    }

    /// IOKit `IOEventSource::disable`: completions are no longer delivered to the action;
    /// [`poll`](Self::poll) keeps taking them from the controller and holds them, in order,
    /// until [`enable`](Self::enable). A synchronous
    /// [`start_dma_command`](Self::start_dma_command) still finishes, as IOKit wakes its
    /// waiter without the work loop.
    ///
    /// Called from the action, it stops the delivery after that action returns. Called from
    /// another thread while the action runs, it waits for that call of the action to return,
    /// as IOKit's `disable` waits for the work-loop gate: once it returns, the action is
    /// not running and will not run until [`enable`](Self::enable). (So the action must not
    /// wait for a thread that is disabling its event source.) Without the `std` feature it
    /// cannot wait: the call of the action already under way may still be running.
    pub fn disable(&self) {
        let mut d = self.delivery.lock();
        d.enabled = false;
        #[cfg(all(feature = "std", not(loom)))]
        {
            let me = std::thread::current().id();
            let running_elsewhere = |d: &mut Delivery| d.delivering && d.deliverer != Some(me);
            // Woken by the delivery's end (`Restore`), which clears `delivering` under this
            // lock: no wake-up is missed, and no time is spent polling.
            let _idle = self
                .delivered
                .wait_while(d, running_elsewhere)
                .unwrap_or_else(|p| p.into_inner());
        }
        #[cfg(not(all(feature = "std", not(loom))))]
        drop(d);
    }

    /// IOKit `IOEventSource::enable`: completions go to the action again. As in IOKit the
    /// held ones are not delivered by this call but by the next work-loop pass: it wakes
    /// the thread of [`spawn_work_loop`](Self::spawn_work_loop), or, without one, the
    /// driver's next [`poll`](Self::poll) delivers them.
    pub fn enable(&self) {
        let held = {
            let mut d = self.delivery.lock();
            d.enabled = true;
            !d.queue.is_empty()
        };
        #[cfg(feature = "std")]
        if held {
            let (m, cv) = &*self.signal;
            *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            cv.notify_all();
        }
        #[cfg(not(feature = "std"))]
        let _ = held;
    }

    /// Whether completions are delivered to the action (see [`disable`](Self::disable)).
    pub fn is_enabled(&self) -> bool {
        self.delivery.lock().enabled
    }

    /// Completions taken from the controller and not yet delivered to the action (held
    /// while the event source is disabled, or while a delivery is under way).
    pub fn held_completions(&self) -> usize {
        self.delivery.lock().queue.len()
    }

    /// Whether a synchronous command is in flight (started and not yet reported finished).
    pub fn is_busy(&self) -> bool {
        !matches!(self.delivery.lock().sync, SyncState::Idle)
    }

    /// Delivers every finished transfer now (IOKit's `checkForWork`, all at once): to the
    /// action, or to the synchronous starter waiting for it; returns how many the
    /// controller reported.
    ///
    /// The action runs without the event source's lock held, so it may call `poll`,
    /// `start` or `stop` again (IOKit's work-loop gate is recursive): a nested poll takes
    /// the new completions and leaves them to the delivery already running, which hands
    /// them to the action in order. An action that [`disable`](Self::disable)s the event
    /// source stops the delivery after itself. An action that panics loses the completion
    /// it was given; the panic goes on to the caller of `poll`, and the next poll delivers
    /// the rest to the same action.
    ///
    /// While the event source is disabled, `poll` still takes the controller's completions
    /// (and finishes a synchronous start) but keeps them for the action until
    /// [`enable`](Self::enable).
    pub fn poll(&self) -> usize {
        let mut d = self.delivery.lock();
        let mut n = 0;
        let mut finished_sync = false;
        self.controller.take_completions(&mut |c| {
            n += 1;
            match d.sync {
                SyncState::InFlight(t) if t == c.ticket => {
                    d.sync = SyncState::Done(c);
                    finished_sync = true;
                }
                SyncState::Abandoned(t) if t == c.ticket => d.sync = SyncState::Idle,
                // Without an action (and none running) a completion has nowhere to go.
                _ if d.action.is_none() && !d.delivering => {}
                _ => d.queue.push_back(c),
            }
        });
        if !d.delivering && d.enabled && !d.queue.is_empty() {
            if let Some(action) = d.action.take() {
                d.delivering = true;
                #[cfg(all(feature = "std", not(loom)))]
                {
                    d.deliverer = Some(std::thread::current().id());
                }
                let mut restore = Restore {
                    source: self,
                    action: Some(action),
                };
                // Checked before each completion: an action may disable the source.
                while d.enabled {
                    let Some(c) = d.queue.pop_front() else { break };
                    drop(d);
                    if let Some(action) = restore.action.as_mut() {
                        action(c);
                    }
                    d = self.delivery.lock();
                }
                // The restore takes the lock itself.
                drop(d);
                drop(restore);
            } else {
                drop(d);
            }
        } else {
            drop(d);
        }
        #[cfg(feature = "std")]
        if finished_sync {
            // Wake a synchronous starter sleeping in another thread.
            self.signal.1.notify_all();
        }
        #[cfg(not(feature = "std"))]
        let _ = finished_sync;
        n
    }

    /// Interrupts seen and not yet handled.
    pub fn pending_interrupts(&self) -> u64 {
        self.pending.load(crate::sync::atomic::Ordering::Acquire)
    }

    /// Takes the synchronous command's completion if it has arrived.
    fn collect_sync(&self) -> Option<DmaCompletion> {
        let mut d = self.delivery.lock();
        match core::mem::replace(&mut d.sync, SyncState::Idle) {
            SyncState::Done(c) => Some(c),
            other => {
                d.sync = other;
                None
            }
        }
    }

    /// Sleeps on the interrupt signal for at most `limit`.
    #[cfg(feature = "std")]
    fn sleep_on_signal(&self, limit: core::time::Duration) {
        let (m, cv) = &*self.signal;
        let guard = m.lock().unwrap_or_else(|p| p.into_inner());
        // Woken by an interrupt, a finished synchronous command, or the limit; the caller
        // polls either way. The count is the work loop's, so it is left alone.
        let _ = cv.wait_timeout(guard, limit);
    }
}

impl<C: DmaController + ?Sized> DmaEventSource<C> {
    /// Queues a transfer on the controller and returns its ticket; its completion goes to
    /// the action (or, without one, is discarded).
    pub fn start(&self, transfer: &DmaTransfer<'_>) -> Result<u64> {
        self.controller.start(transfer)
    }

    /// IOKit `IODMAEventSource::startDMACommand`.
    ///
    /// With a completion action (an event source from [`new`](Self::new)) it starts the
    /// transfer and returns [`DmaStart::Queued`] at once. Without one (from
    /// [`synchronous`](Self::synchronous)) it is synchronous, as in IOKit: it marks the event
    /// source busy, starts the transfer, polls the controller until it reports this
    /// transfer finished, waiting between polls as `wait` says, and returns
    /// [`DmaStart::Completed`] with the completion (its `status` is the transfer's).
    ///
    /// Errors: a synchronous command already in flight is [`Error::Busy`]; a start the
    /// controller refuses returns its error and leaves the event source idle; a `wait`
    /// that ends first is [`Error::Timeout`] (IOKit would sleep on): the transfer is still
    /// in flight and the event source stays busy until a later [`poll`](Self::poll) sees it
    /// finish (its completion is then discarded), so stop or drain the controller before
    /// reusing its memory.
    ///
    /// ```
    /// use dmakit::dma::{DmaEventSource, DmaStart, SyncWait};
    /// use dmakit_sim::SimDmaEngine;
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// # use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// # use dmakit::dma::{DmaTransfer, IoSegment};
    /// # use dmakit::{Direction, IoAddr};
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
    /// # let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::InOut))?;
    /// # buf.write(0, b"copied by the engine")?;
    /// # let at = |off: u64| -> dmakit::Result<[IoSegment; 1]> {
    /// #     Ok([IoSegment { addr: IoAddr(buf.physical_segment(off)?.addr.0), len: 20 }])
    /// # };
    /// # let (source, dest) = (at(0)?, at(0x1000)?);
    ///
    /// let engine = Arc::new(SimDmaEngine::new(machine.clone(), None)?);
    /// let events = Arc::new(DmaEventSource::synchronous(engine.clone()));
    /// engine.connect(events.clone());
    /// let copy = DmaTransfer { source: &source, dest: &dest };
    /// let wait = SyncWait::Timeout(Duration::from_secs(5));
    /// match events.start_dma_command(&copy, wait)? {
    ///     DmaStart::Completed(c) => assert_eq!((c.bytes, c.status), (20, Ok(()))),
    ///     DmaStart::Queued { .. } => unreachable!("no action: the start is synchronous"),
    /// }
    /// assert!(!events.is_busy());
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn start_dma_command(
        &self,
        transfer: &DmaTransfer<'_>,
        mut wait: SyncWait<'_>,
    ) -> Result<DmaStart> {
        if let Some(queued) = self.start_sync(transfer)? {
            return Ok(queued);
        }
        #[cfg(feature = "std")]
        let deadline = match &wait {
            SyncWait::Timeout(limit) => Some(std::time::Instant::now().checked_add(*limit)),
            _ => None,
        };
        let mut polls: u64 = 0;
        loop {
            self.poll();
            if let Some(c) = self.collect_sync() {
                return Ok(DmaStart::Completed(c));
            }
            polls = polls.saturating_add(1);
            #[cfg(feature = "std")]
            let go_on = self.wait_more(&mut wait, polls, deadline);
            #[cfg(not(feature = "std"))]
            let go_on = self.wait_more(&mut wait, polls);
            if !go_on {
                return self.give_up();
            }
        }
    }

    /// Starts `transfer` as the synchronous command (`None`), or queues it as an ordinary
    /// one when completions go to an action (`Some`, with its ticket); `Busy` while another
    /// synchronous command is in flight.
    fn start_sync(&self, transfer: &DmaTransfer<'_>) -> Result<Option<DmaStart>> {
        let mut d = self.delivery.lock();
        if !matches!(d.sync, SyncState::Idle) {
            return Err(Error::Busy {
                what: "DMA event source",
                addr: 0,
                why: "a synchronous DMA command is already in flight",
            });
        }
        if d.action.is_some() || d.delivering {
            drop(d);
            return self
                .controller
                .start(transfer)
                .map(|ticket| Some(DmaStart::Queued { ticket }));
        }
        // Started under the lock, so no poll can see the completion before the ticket is
        // recorded. A failed start leaves the state idle.
        let ticket = self.controller.start(transfer)?;
        d.sync = SyncState::InFlight(ticket);
        Ok(None)
    }

    /// Waits a little as `wait` says, after `polls` polls; false when it says to give up.
    /// `deadline`: the end of a timeout (`Some(None)`: a limit past the end of time, wait
    /// for ever as IOKit does).
    fn wait_more(
        &self,
        wait: &mut SyncWait<'_>,
        polls: u64,
        #[cfg(feature = "std")] deadline: Option<Option<std::time::Instant>>,
    ) -> bool {
        match wait {
            SyncWait::Polls(n) => {
                core::hint::spin_loop();
                polls < *n
            }
            #[cfg(feature = "std")]
            SyncWait::Timeout(_) => {
                const NAP: core::time::Duration = core::time::Duration::from_millis(1);
                let Some(dl) = deadline.flatten() else {
                    self.sleep_on_signal(NAP);
                    return true;
                };
                let now = std::time::Instant::now();
                if now >= dl {
                    return false;
                }
                self.sleep_on_signal((dl - now).min(NAP));
                true
            }
            SyncWait::With(f) => f(),
        }
    }

    /// The synchronous starter stops waiting: its completion if it arrived after all, else
    /// a timeout, the command left to a later poll.
    fn give_up(&self) -> Result<DmaStart> {
        self.poll();
        let mut d = self.delivery.lock();
        match core::mem::replace(&mut d.sync, SyncState::Idle) {
            SyncState::Done(c) => Ok(DmaStart::Completed(c)),
            SyncState::InFlight(ticket) => {
                d.sync = SyncState::Abandoned(ticket);
                Err(Error::Timeout {
                    what: "synchronous DMA command (still in flight; the event source stays \
                           busy until a poll sees it finish)",
                    id: ticket,
                })
            }
            other => {
                d.sync = other;
                Err(Error::Internal {
                    what: "synchronous DMA command vanished while its starter waited",
                })
            }
        }
    }

    /// IOKit `IODMAEventSource::stopDMACommand`: aborts the controller's queued transfers
    /// (each completes with an error).
    pub fn stop_dma_command(&self) -> Result<()> {
        self.controller.stop()
    }

    /// IOKit `IODMAEventSource::queryDMACommand`: bytes moved so far by transfer `ticket`.
    pub fn query_dma_command(&self, ticket: u64) -> Result<u64> {
        self.controller.query(ticket)
    }

    /// IOKit `IODMAEventSource::getFIFODepth`: the controller's FIFO depth
    /// ([`DmaController::fifo_depth`]).
    pub fn fifo_depth(&self) -> u32 {
        self.controller.fifo_depth()
    }

    /// IOKit `IODMAEventSource::setFIFODepth`.
    pub fn set_fifo_depth(&self, depth: u32) -> Result<()> {
        self.controller.set_fifo_depth(depth)
    }

    /// IOKit `IODMAEventSource::validFIFODepth`: the nearest depth the controller accepts,
    /// or 0 when it accepts none. (IOKit returns `kIOReturnError` converted to a byte count
    /// when it cannot answer, a number that looks like a huge valid depth.)
    pub fn valid_fifo_depth(&self, depth: u32) -> u32 {
        self.controller.valid_fifo_depth(depth)
    }

    /// IOKit `IODMAEventSource::setFrameSize`: forwarded to the controller
    /// ([`DmaController::set_frame_size`]).
    pub fn set_frame_size(&self, byte_count: u8) -> Result<()> {
        self.controller.set_frame_size(byte_count)
    }

    /// IOKit `IODMAEventSource::setDMAConfig`: forwarded to the controller
    /// ([`DmaController::set_dma_config`]).
    pub fn set_dma_config(&self, req_index: u32) -> Result<()> {
        self.controller.set_dma_config(req_index)
    }

    /// IOKit `IODMAEventSource::validDMAConfig`: forwarded to the controller
    /// ([`DmaController::valid_dma_config`]).
    pub fn valid_dma_config(&self, req_index: u32) -> bool {
        self.controller.valid_dma_config(req_index)
    }
}

impl<C: CompletionSource + ?Sized> InterruptSink for DmaEventSource<C> {
    fn raise(&self) {
        self.pending
            .fetch_add(1, crate::sync::atomic::Ordering::AcqRel);
        #[cfg(feature = "std")]
        {
            let (m, cv) = &*self.signal;
            *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            cv.notify_all();
        }
    }
}

#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
impl<C: CompletionSource + ?Sized + 'static> DmaEventSource<C> {
    /// Runs a work loop on a new thread: every interrupt delivers the finished transfers to
    /// the action, in order, until `stop` becomes true (checked after each wake-up; raise an
    /// interrupt to wake it).
    ///
    /// ```
    /// use dmakit::dma::{DmaEventSource, InterruptSink};
    /// use dmakit_sim::SimDmaEngine;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::{mpsc, Arc};
    /// use std::time::Duration;
    /// # use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// # use dmakit::dma::{DmaTransfer, IoSegment};
    /// # use dmakit::{Direction, IoAddr};
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
    /// # let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::InOut))?;
    /// # buf.write(0, b"copied by the engine")?;
    /// # let at = |off: u64| -> dmakit::Result<[IoSegment; 1]> {
    /// #     Ok([IoSegment { addr: IoAddr(buf.physical_segment(off)?.addr.0), len: 20 }])
    /// # };
    /// # let (source, dest) = (at(0)?, at(0x1000)?);
    ///
    /// let engine = Arc::new(SimDmaEngine::new(machine.clone(), None)?);
    /// let (tx, rx) = mpsc::channel();
    /// let events = Arc::new(DmaEventSource::new(engine.clone(), move |c| {
    ///     let _ = tx.send(c); // runs on the work-loop thread
    /// }));
    /// engine.connect(events.clone());
    /// let stop = Arc::new(AtomicBool::new(false));
    /// let work_loop = events.spawn_work_loop(stop.clone());
    ///
    /// let ticket = events.start(&DmaTransfer { source: &source, dest: &dest })?;
    /// let done = rx.recv_timeout(Duration::from_secs(10)).expect("delivered by the work loop");
    /// assert_eq!((done.ticket, done.bytes), (ticket, 20));
    /// stop.store(true, Ordering::Release);
    /// events.raise(); // wake it to see the stop
    /// work_loop.join().expect("the work loop ends");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn spawn_work_loop(
        self: &Arc<Self>,
        stop: Arc<core::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::spawn(move || loop {
            {
                let (m, cv) = &*me.signal;
                let mut seen = m.lock().unwrap_or_else(|p| p.into_inner());
                while *seen == 0 && !stop.load(core::sync::atomic::Ordering::Acquire) {
                    seen = cv
                        .wait_timeout(seen, std::time::Duration::from_millis(50))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                *seen = 0;
            }
            me.pending.store(0, crate::sync::atomic::Ordering::Release);
            me.poll();
            if stop.load(core::sync::atomic::Ordering::Acquire) {
                me.poll();
                return;
            }
        })
    }
}

impl<C: CompletionSource + ?Sized> core::fmt::Debug for DmaEventSource<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaEventSource")
            .field("pending_interrupts", &self.pending_interrupts())
            .field("synchronous", &!self.has_action())
            .field("busy", &self.is_busy())
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

/// A controller shared between its driver and its clients.
pub type SharedController = Arc<dyn DmaController>;

/// Where DMA controllers are registered by name and found by their clients: the part of
/// IOKit's service registry that `IODMAController::registerDMAController` and
/// `IODMAController::getController` use.
///
/// IOKit names a controller `"IODMAController%08X"` after its provider's `AAPL,phandle`
/// ([`controller_name`](Self::controller_name)); a client finds its controller through its
/// own `dma-parent` property, one phandle or a list indexed by the client's DMA index
/// ([`find_for_client`](Self::find_for_client)). The registry is a value the caller owns
/// (one per machine or per test), not a global.
///
/// ```
/// use dmakit::dma::{DmaControllerRegistry, DmaEventSource, SharedController};
/// use dmakit::Error;
/// use dmakit_sim::SimDmaEngine;
/// use std::sync::Arc;
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// let registry = DmaControllerRegistry::new();
/// let engine: SharedController = Arc::new(SimDmaEngine::new(machine.clone(), None)?);
/// let name = registry.register_dma_controller(0x4e, engine.clone())?;
/// assert_eq!(name, "IODMAController0000004E");
/// let other: SharedController = Arc::new(SimDmaEngine::new(machine, None)?);
/// registry.register_dma_controller(0x51, other)?;
/// // A client whose dma-parent lists two controllers uses its second channel's.
/// let controller = registry.find_for_client(&[0x51, 0x4e], 1)?;
/// assert!(Arc::ptr_eq(&controller, &engine));
/// assert!(matches!(registry.find_for_client(&[0x51, 0x4e], 3), Err(Error::OutOfBounds { .. })));
/// // One phandle serves every DMA index.
/// assert!(!Arc::ptr_eq(&registry.find_for_client(&[0x51], 3)?, &engine));
/// let events = DmaEventSource::synchronous(controller);
/// assert!(!events.has_action());
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct DmaControllerRegistry {
    by_name: crate::sync::Mutex<BTreeMap<String, SharedController>>,
}

impl DmaControllerRegistry {
    crate::sync::const_unless_loom! {
        /// An empty registry.
        pub fn new() -> Self {
            DmaControllerRegistry {
                by_name: crate::sync::Mutex::new(BTreeMap::new()),
            }
        }
    }

    /// The name IOKit gives the controller of provider `phandle`
    /// (`IODMAController::createControllerName`): `"IODMAController"` and the phandle as
    /// eight upper-case hex digits.
    pub fn controller_name(phandle: u32) -> String {
        alloc_crate::format!("IODMAController{phandle:08X}")
    }

    /// Registers `controller` under `name`; a name already taken is
    /// [`Error::BadArgument`] (and the registry is unchanged).
    pub fn register(&self, name: &str, controller: SharedController) -> Result<()> {
        let mut m = self.by_name.lock();
        if m.contains_key(name) {
            return Err(Error::BadArgument {
                what: "a DMA controller is already registered under this name",
                value: name.len() as u64,
            });
        }
        m.insert(String::from(name), controller);
        Ok(())
    }

    /// IOKit `IODMAController::registerDMAController`: registers `controller` under the name
    /// made from its provider's `phandle` and returns the name.
    ///
    /// A phandle already taken is [`Error::BadArgument`] and changes nothing. IOKit
    /// registers a second service under the same name, and which of the two a client then
    /// finds depends on the order of matching; dmakit refuses, so a lookup always has one
    /// answer ([`unregister`](Self::unregister) the old controller first to replace it).
    pub fn register_dma_controller(
        &self,
        phandle: u32,
        controller: SharedController,
    ) -> Result<String> {
        let name = Self::controller_name(phandle);
        self.register(&name, controller)
            .map_err(|_| Error::BadArgument {
                what: "a DMA controller is already registered for this phandle",
                value: phandle as u64,
            })?;
        Ok(name)
    }

    /// Removes the controller registered under `name` and returns it.
    pub fn unregister(&self, name: &str) -> Result<SharedController> {
        self.by_name.lock().remove(name).ok_or(Error::NotAttached {
            what: "DMA controller",
            why: "no controller is registered under this name",
        })
    }

    /// The controller registered under `name`, or [`Error::NotAttached`] (IOKit waits for
    /// the service to appear).
    pub fn find(&self, name: &str) -> Result<SharedController> {
        self.by_name
            .lock()
            .get(name)
            .cloned()
            .ok_or(Error::NotAttached {
                what: "DMA controller",
                why: "no controller is registered under this name",
            })
    }

    /// The controller of provider `phandle` (registered by
    /// [`register_dma_controller`](Self::register_dma_controller)).
    pub fn find_by_phandle(&self, phandle: u32) -> Result<SharedController> {
        self.find(&Self::controller_name(phandle))
    }

    /// IOKit `IODMAController::getController`: the controller a client reaches through its
    /// `dma-parent` property (`dma_parent`: the phandles it lists) and its DMA index.
    ///
    /// As in IOKit, a `dma-parent` of exactly one phandle names the controller of every DMA
    /// index (the index then only picks the client's channel on that controller); a longer
    /// list holds one phandle per index.
    ///
    /// Errors: an empty list is [`Error::NotAttached`] (the client has no DMA parent; IOKit
    /// panics on an empty property); `dma_index` past a list of two or more is
    /// [`Error::OutOfBounds`] (IOKit panics); a phandle nothing is registered for is
    /// [`Error::NotAttached`] at once (IOKit waits, possibly for ever, for the controller
    /// to appear; retry the lookup when it is registered).
    pub fn find_for_client(
        &self,
        dma_parent: &[u32],
        dma_index: usize,
    ) -> Result<SharedController> {
        let phandle = match dma_parent {
            [] => {
                return Err(Error::NotAttached {
                    what: "DMA client",
                    why: "it has no dma-parent",
                })
            }
            [only] => *only,
            list => *list.get(dma_index).ok_or(Error::OutOfBounds {
                what: "dma-parent",
                offset: dma_index as u64,
                len: 1,
                limit: list.len() as u64,
            })?,
        };
        self.find_by_phandle(phandle)
    }

    /// The registered names, in order.
    pub fn names(&self) -> Vec<String> {
        self.by_name.lock().keys().cloned().collect()
    }
}

impl Default for DmaControllerRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for DmaControllerRegistry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaControllerRegistry")
            .field("names", &self.names())
            .finish()
    }
}
