//! [`NvmeOptions`] for a controller and [`QueueOptions`] for an I/O queue pair.

use alloc::sync::Arc;
use dmakit::dma::InterruptSink;

/// How [`Nvme::new`](crate::Nvme::new) brings a controller up.
///
/// ```
/// use dmakit_nvme::NvmeOptions;
///
/// let o = NvmeOptions::new().command_timeout_ms(500).max_transfer(1 << 20);
/// assert_eq!((o.command_timeout_ns, o.max_transfer), (500_000_000, 1 << 20));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NvmeOptions {
    /// Admin queue slots (2..=4096; the controller's `CAP.MQES` may lower it).
    pub admin_entries: u16,
    /// I/O queue pairs to ask the controller for (Set Features, Number of Queues).
    pub io_queues: u16,
    /// How long a command may take before it fails with a timeout and the controller is
    /// reset.
    pub command_timeout_ns: u64,
    /// The most bytes one command carries: the controller's `MDTS` lowers it, and without
    /// an `MDTS` this is the limit. Longer transfers are split.
    pub max_transfer: u64,
    /// Bytes of bounce memory each I/O queue may hold at once, for descriptors whose pieces
    /// NVMe's PRP rules cannot describe (or the device cannot reach).
    pub bounce_bytes: u64,
}

impl NvmeOptions {
    /// The defaults: 32 admin slots, 16 I/O queue pairs, 5 s per command, 2 MiB per
    /// command, 2 MiB of bounce memory per queue.
    ///
    /// 2 MiB because controllers have limits `MDTS` does not state: QEMU's emulated
    /// controller fails a command whose data maps to more than 1024 pieces (its block layer's
    /// vector limit), which a 4 MiB command starting mid-page does; Linux's own driver keeps
    /// commands far smaller. PRP lists chain into more pages from 2 MiB + 4 KiB on (more than
    /// 512 entries after the first); raise the limit where the controller takes it.
    pub const fn new() -> Self {
        NvmeOptions {
            admin_entries: 32,
            io_queues: 16,
            command_timeout_ns: 5_000_000_000,
            max_transfer: 2 << 20,
            bounce_bytes: 2 << 20,
        }
    }

    /// Sets [`command_timeout_ns`](Self::command_timeout_ns) in milliseconds.
    #[must_use]
    pub const fn command_timeout_ms(mut self, ms: u64) -> Self {
        self.command_timeout_ns = ms.saturating_mul(1_000_000);
        self
    }

    /// Sets [`max_transfer`](Self::max_transfer).
    #[must_use]
    pub const fn max_transfer(mut self, bytes: u64) -> Self {
        self.max_transfer = bytes;
        self
    }

    /// Sets [`io_queues`](Self::io_queues).
    #[must_use]
    pub const fn io_queues(mut self, n: u16) -> Self {
        self.io_queues = n;
        self
    }

    /// Sets [`admin_entries`](Self::admin_entries).
    #[must_use]
    pub const fn admin_entries(mut self, n: u16) -> Self {
        self.admin_entries = n;
        self
    }

    /// Sets [`bounce_bytes`](Self::bounce_bytes).
    #[must_use]
    pub const fn bounce_bytes(mut self, n: u64) -> Self {
        self.bounce_bytes = n;
        self
    }
}

impl Default for NvmeOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// How [`Nvme::io_queue`](crate::Nvme::io_queue) makes an I/O queue pair.
///
/// ```
/// use dmakit_nvme::QueueOptions;
///
/// let q = QueueOptions::new(64).interrupt(1);
/// assert_eq!((q.entries, q.vector), (64, Some(1)));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Slots in each ring (2 or more; the controller's `CAP.MQES` may lower it).
    pub entries: u16,
    /// The interrupt vector the completion queue raises, or `None` to poll only.
    pub vector: Option<u32>,
    /// A sink raised with every interrupt of the vector, besides the queue's own count
    /// (a `DmaEventSource` whose work loop reaps the queue, for example).
    pub sink: Option<Arc<dyn InterruptSink>>,
}

impl QueueOptions {
    /// A polled queue pair of `entries` slots.
    pub fn new(entries: u16) -> Self {
        QueueOptions {
            entries,
            vector: None,
            sink: None,
        }
    }

    /// Completions raise interrupt `vector` of the function.
    #[must_use]
    pub fn interrupt(mut self, vector: u32) -> Self {
        self.vector = Some(vector);
        self
    }

    /// Also raise `sink` on every interrupt of the queue's vector.
    #[must_use]
    pub fn sink(mut self, sink: Arc<dyn InterruptSink>) -> Self {
        self.sink = Some(sink);
        self
    }
}

impl core::fmt::Debug for QueueOptions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QueueOptions")
            .field("entries", &self.entries)
            .field("vector", &self.vector)
            .field("sink", &self.sink.is_some())
            .finish()
    }
}
