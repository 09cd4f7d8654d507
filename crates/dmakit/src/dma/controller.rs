//! [`DmaController`] and [`DmaEventSource`]: IOKit's IODMAController and IODMAEventSource.
//!
//! A DMA *controller* is a platform engine that moves data for clients: a client queues a
//! transfer (device-visible source and destination segments, typically from
//! [`DmaCommand::gen_segments`](super::DmaCommand::gen_segments)) and gets a ticket; the
//! engine raises an interrupt when transfers finish. The *event source* turns those
//! interrupts into completion callbacks delivered in order, on a work-loop thread (feature
//! `std`) or when the driver calls [`poll`](DmaEventSource::poll).

use super::format::IoSegment;
use crate::{Error, Result};
use alloc_crate::boxed::Box;
use alloc_crate::sync::Arc;

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
    /// Bytes described by `source`, if `dest` describes the same number (else an error).
    pub fn bytes(&self) -> Result<u64> {
        let s: u64 = self.source.iter().map(|s| s.len).sum();
        let d: u64 = self.dest.iter().map(|s| s.len).sum();
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
pub trait CompletionSource: Send + Sync {
    /// Hands every finished, not yet reported piece of work to `sink`, oldest first.
    fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion));
}

/// IOKit's IODMAController.
pub trait DmaController: CompletionSource {
    /// Queues a transfer (IOKit `startDMACommand`); returns its ticket.
    fn start(&self, transfer: &DmaTransfer<'_>) -> Result<u64>;

    /// Aborts queued transfers (IOKit `stopDMACommand`); each completes with an error.
    fn stop(&self) -> Result<()>;

    /// Bytes moved so far by transfer `ticket` (IOKit `queryDMACommand`).
    fn query(&self, ticket: u64) -> Result<u64>;

    /// How many transfers the engine holds at once.
    fn fifo_depth(&self) -> u32;

    /// Sets the FIFO depth (must be a valid depth).
    fn set_fifo_depth(&self, depth: u32) -> Result<()>;

    /// The nearest valid depth to `depth`, or 0 if there is none (IOKit returns an error
    /// code as a byte count here; quirk Q14, fixed).
    fn valid_fifo_depth(&self, depth: u32) -> u32;
}

/// Something an engine calls when it raises its completion interrupt.
pub trait InterruptSink: Send + Sync {
    /// The interrupt fired.
    fn raise(&self);
}

/// IOKit's IODMAEventSource: completions of a controller (or any [`CompletionSource`]),
/// delivered in order.
pub struct DmaEventSource<C: CompletionSource> {
    controller: Arc<C>,
    action: spin::Mutex<Box<dyn FnMut(DmaCompletion) + Send>>,
    pending: core::sync::atomic::AtomicU64,
    #[cfg(feature = "std")]
    signal: Arc<(std::sync::Mutex<u64>, std::sync::Condvar)>,
}

impl<C: CompletionSource> DmaEventSource<C> {
    /// An event source for `controller` that calls `action` for every completion.
    pub fn new(controller: Arc<C>, action: impl FnMut(DmaCompletion) + Send + 'static) -> Self {
        DmaEventSource {
            controller,
            action: spin::Mutex::new(Box::new(action)),
            pending: core::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "std")]
            signal: Arc::new((std::sync::Mutex::new(0), std::sync::Condvar::new())),
        }
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<C> {
        &self.controller
    }

    /// Delivers every finished transfer to the action now; returns how many.
    pub fn poll(&self) -> usize {
        let mut action = self.action.lock();
        let mut n = 0;
        self.controller.take_completions(&mut |c| {
            n += 1;
            action(c)
        });
        n
    }

    /// Interrupts seen and not yet handled.
    pub fn pending_interrupts(&self) -> u64 {
        self.pending.load(core::sync::atomic::Ordering::Acquire)
    }
}

impl<C: DmaController> DmaEventSource<C> {
    /// Queues a transfer on the controller (IOKit `IODMAEventSource::startDMACommand`).
    pub fn start(&self, transfer: &DmaTransfer<'_>) -> Result<u64> {
        self.controller.start(transfer)
    }
}

impl<C: CompletionSource> InterruptSink for DmaEventSource<C> {
    fn raise(&self) {
        self.pending
            .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
        #[cfg(feature = "std")]
        {
            let (m, cv) = &*self.signal;
            *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            cv.notify_all();
        }
    }
}

#[cfg(feature = "std")]
impl<C: CompletionSource + 'static> DmaEventSource<C> {
    /// Runs a work loop on a new thread: every interrupt delivers the finished transfers to
    /// the action, in order, until `stop` becomes true (checked after each wake-up; raise an
    /// interrupt to wake it).
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
            me.pending.store(0, core::sync::atomic::Ordering::Release);
            me.poll();
            if stop.load(core::sync::atomic::Ordering::Acquire) {
                me.poll();
                return;
            }
        })
    }
}

impl<C: CompletionSource> core::fmt::Debug for DmaEventSource<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaEventSource")
            .field("pending_interrupts", &self.pending_interrupts())
            .finish()
    }
}
