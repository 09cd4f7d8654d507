//! [`BouncePool`]: bounded memory for double buffering, with counters.
//!
//! When a transfer's memory breaks a device's constraints (above its address limit,
//! misaligned), a [`DmaCommand`](super::DmaCommand) copies it through a *bounce buffer* the
//! device can reach. Bounce memory is a shared, bounded resource: the pool caps how much is
//! in use at once, and an exhausted pool is [`Error::NoResources`] naming the pool and its
//! capacity: IOKit's kIOReturnNoResources, what its `prepare` returns when it cannot get
//! bounce memory.
//! It counts bounced bytes and the high-water mark, and can force every transfer through a
//! bounce (to test that path on machines that would never need it).
//!
//! ```
//! use dmakit::dma::BouncePool;
//! use std::sync::Arc;
//! # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//!
//! // One pool per device (or per driver), shared by its commands.
//! let pool = Arc::new(BouncePool::new(machine, "nic0 bounce", 4 << 20));
//! assert_eq!((pool.name(), pool.force_bounce()), ("nic0 bounce", false));
//! assert_eq!(pool.stats().in_use, 0);
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::descriptor::{BufferMemoryDescriptor, BufferOptions};
use crate::platform::Platform;
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::{Direction, Error, Result};

/// Counters of a [`BouncePool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceStats {
    /// Bytes copied into or out of bounce buffers. A copy that fails is not counted; one
    /// still running on another thread may already be.
    pub bounced_bytes: u64,
    /// Bounce buffers handed out.
    pub buffers: u64,
    /// Bytes in use now.
    pub in_use: u64,
    /// Most bytes ever in use at once.
    pub high_water: u64,
}

/// A bounded source of bounce buffers.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
/// use dmakit::dma::{BouncePool, DmaCommand, PrepareOptions};
/// use dmakit::{Direction, Error};
/// use std::sync::Arc;
/// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// // At most one page of bounce memory in use at once.
/// let pool = Arc::new(BouncePool::new(machine.clone(), "tiny pool", 0x1000));
/// pool.set_force_bounce(true);
/// let mut cmd = DmaCommand::builder(machine.clone()).bounce_pool(pool.clone()).build()?;
/// let small: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine.clone(), &[0; 0x800], Direction::Out)?);
/// cmd.set_memory_descriptor(small)?;
/// cmd.prepare(PrepareOptions::new())?;
/// assert_eq!(pool.stats().in_use, 0x800);
/// cmd.complete()?;
/// let s = pool.stats();
/// assert_eq!((s.buffers, s.bounced_bytes, s.in_use, s.high_water), (1, 0x800, 0, 0x800));
///
/// let big: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine, &[0; 0x2000], Direction::Out)?);
/// cmd.clear_memory_descriptor()?;
/// cmd.set_memory_descriptor(big)?;
/// let e = cmd.prepare(PrepareOptions::new()).unwrap_err();
/// assert!(matches!(e, Error::NoResources { what: "tiny pool", limit: 0x1000 }), "{e}");
/// assert_eq!(e.io_return(), dmakit::IoReturn::NO_RESOURCES);
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct BouncePool<P: Platform + Clone> {
    platform: P,
    name: &'static str,
    capacity: u64,
    in_use: crate::sync::Mutex<u64>,
    high_water: AtomicU64,
    bounced: AtomicU64,
    buffers: AtomicU64,
    force: AtomicBool,
}

impl<P: Platform + Clone> BouncePool<P> {
    /// A pool named `name` (used in errors) of at most `capacity` bytes in use at once.
    pub fn new(platform: P, name: &'static str, capacity: u64) -> Self {
        BouncePool {
            platform,
            name,
            capacity,
            in_use: crate::sync::Mutex::new(0),
            high_water: AtomicU64::new(0),
            bounced: AtomicU64::new(0),
            buffers: AtomicU64::new(0),
            force: AtomicBool::new(false),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sends every transfer through a bounce buffer (or stops doing so).
    pub fn set_force_bounce(&self, on: bool) {
        self.force.store(on, Ordering::Release);
    }

    /// Whether every transfer bounces.
    pub fn force_bounce(&self) -> bool {
        self.force.load(Ordering::Acquire)
    }

    /// Counters.
    pub fn stats(&self) -> BounceStats {
        BounceStats {
            bounced_bytes: self.bounced.load(Ordering::Acquire),
            buffers: self.buffers.load(Ordering::Acquire),
            in_use: *self.in_use.lock(),
            high_water: self.high_water.load(Ordering::Acquire),
        }
    }

    pub(crate) fn count_copy(&self, n: u64) {
        self.bounced.fetch_add(n, Ordering::AcqRel);
    }

    /// Takes back a [`count_copy`](Self::count_copy) of a copy that failed.
    pub(crate) fn uncount_copy(&self, n: u64) {
        self.bounced.fetch_sub(n, Ordering::AcqRel);
    }

    /// A buffer of `len` bytes, every byte in `[floor, limit]`, aligned to `align`, and
    /// physically contiguous when `contiguous` (a whole-transfer bounce) or page by page
    /// (per-page bouncing). No room in the pool is [`Error::NoResources`]; the memory
    /// allocation's own error (no memory that fits the window) is returned as it is.
    pub(crate) fn take(
        &self,
        len: u64,
        (floor, limit): (u64, u64),
        align: u64,
        contiguous: bool,
    ) -> Result<BufferMemoryDescriptor<P>> {
        {
            let mut used = self.in_use.lock();
            let free = self.capacity - *used;
            if len > free {
                return Err(self.exhausted());
            }
            *used += len;
            self.high_water.fetch_max(*used, Ordering::AcqRel);
        }
        let options = BufferOptions::new(len, Direction::InOut)
            .alignment(align)
            .phys_limit(limit)
            .phys_min(floor)
            .contiguous(contiguous);
        match BufferMemoryDescriptor::new(self.platform.clone(), options) {
            Ok(b) => {
                self.buffers.fetch_add(1, Ordering::AcqRel);
                Ok(b)
            }
            Err(e) => {
                *self.in_use.lock() -= len;
                Err(e)
            }
        }
    }

    /// The error for bounce memory the pool cannot give.
    fn exhausted(&self) -> Error {
        Error::NoResources {
            what: self.name,
            limit: self.capacity,
        }
    }

    pub(crate) fn give_back(&self, len: u64) {
        *self.in_use.lock() -= len;
    }
}

/// The alignment that keeps a contiguous bounce buffer of `span` bytes from crossing a
/// multiple of `boundary` (a power of two, 0 for none) when it fits inside one, or starts
/// it on a multiple when it does not (the fewest segments). 0 when the boundary is below
/// `page`: page-aligned memory can do nothing about it.
pub(crate) fn boundary_alignment(boundary: u64, page: u64, span: u64) -> u64 {
    match boundary {
        b if b < page => 0,
        b if span <= b => span.next_power_of_two(),
        b => b,
    }
}

impl<P: Platform + Clone> core::fmt::Debug for BouncePool<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BouncePool")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}
