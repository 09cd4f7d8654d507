//! [`Quarantine`]: where device-owned memory waits when its owner is dropped.
//!
//! A prepared [`DmaCommand`](super::DmaCommand) may be dropped while its device still holds
//! the segments: the driver panicked, bailed out with `?`, or simply forgot to complete it.
//! Freeing the bounce buffer, the IO addresses or the wiring then would let the device write
//! into memory that the allocator has handed to someone else. So a dropped preparation is
//! never freed on the spot:
//!
//! * a command that belongs to a quarantine (its device, set with
//!   [`DmaCommand::set_quarantine`](super::DmaCommand::set_quarantine)) hands the preparation
//!   to it; it is released only when the driver says the device is quiesced
//!   ([`quiesced`](Quarantine::quiesced): the device was reset, bus mastering is off, or its
//!   IOMMU domain is gone);
//! * a command without one leaks it (memory stays wired and allocated for good, which is
//!   safe; the dma-debug ledger lists it);
//! * `mem::forget` of a prepared command frees nothing either: the preparation stays
//!   outstanding, and [`teardown`](Quarantine::teardown) reports it.
//!
//! This is Fuchsia's rule for pinned memory (pages of a dropped pin stay quarantined until the
//! bus transaction initiator is released) applied to every kind of DMA resource dmakit hands
//! out.
//!
//! ```
//! use dmakit::dma::Quarantine;
//! let nic = Quarantine::new("nic0");
//! assert_eq!((nic.held(), nic.live()), (0, 0));
//! // ... commands with `set_quarantine(nic.clone())` prepare, and some are dropped ...
//! // After resetting the device:
//! assert_eq!(nic.quiesced()?, 0);
//! nic.teardown()?;
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::{Error, Result};
use alloc_crate::boxed::Box;
use alloc_crate::sync::Arc;
use alloc_crate::vec::Vec;

/// A preparation waiting for its device to be quiesced.
pub(crate) trait Held: Send {
    /// Gives back what the preparation holds (the device can no longer reach it); when
    /// that fails (its IO addresses could not be unmapped) it comes back, still holding
    /// everything.
    fn release(self: Box<Self>) -> core::result::Result<(), (Error, Box<dyn Held>)>;
    /// Bytes of bounce memory or IO space it holds.
    fn held_bytes(&self) -> u64;
}

/// A device's quarantine: preparations of its dropped commands wait here until the device is
/// quiesced.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
/// use dmakit::dma::{BouncePool, DmaCommand, PrepareOptions, Quarantine};
/// use dmakit::Direction;
/// use std::sync::Arc;
/// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// let disk = Quarantine::new("disk0");
/// let pool = Arc::new(BouncePool::new(machine.clone(), "disk0 bounce", 1 << 16));
/// pool.set_force_bounce(true);
/// let md: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine.clone(), &[1; 512], Direction::Out)?);
/// let mut cmd = DmaCommand::builder(machine)
///     .bounce_pool(pool.clone())
///     .quarantine(disk.clone())
///     .build()?;
/// cmd.set_memory_descriptor(md)?;
/// cmd.prepare(PrepareOptions::new())?;
/// drop(cmd); // an error path forgot to complete: the device may still read the bounce buffer
/// assert_eq!((disk.held(), disk.live()), (1, 1));
/// assert!(pool.stats().in_use > 0, "the bounce buffer is kept");
/// // ... reset the device or turn its bus mastering off, then:
/// assert_eq!(disk.quiesced()?, 1);
/// assert_eq!((disk.held(), disk.live(), pool.stats().in_use), (0, 0, 0));
/// disk.teardown()?;
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct Quarantine {
    id: u64,
    name: &'static str,
    held: crate::sync::Mutex<Vec<Box<dyn Held>>>,
    live: AtomicU64,
}

impl Quarantine {
    /// A quarantine for the device called `name` (used in errors).
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Quarantine {
            id: crate::debug::next_id(),
            name,
            held: crate::sync::Mutex::new(Vec::new()),
            live: AtomicU64::new(0),
        })
    }

    /// The device's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The id the dma-debug ledger files this device's preparations under.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Preparations waiting here (their commands were dropped while prepared).
    pub fn held(&self) -> usize {
        self.held.lock().len()
    }

    /// Bounce and IO-space bytes the waiting preparations hold.
    pub fn held_bytes(&self) -> u64 {
        self.held.lock().iter().map(|h| h.held_bytes()).sum()
    }

    /// Preparations of this device's commands not yet completed or released: live commands
    /// that are prepared, forgotten ones, and the ones waiting here.
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }

    /// The driver states that the device can no longer reach memory it was given (it was
    /// reset, its bus mastering is off, or its IOMMU domain is detached): every waiting
    /// preparation is released (bounce buffers and IO addresses given back, wiring dropped).
    /// Returns how many were released.
    ///
    /// Calling this while the device still runs defeats the quarantine: what is released
    /// may be reused while the device writes to it.
    ///
    /// A preparation whose IO addresses cannot be unmapped stays here, holding everything
    /// (the IOMMU may still let the device reach it); the first such error is returned
    /// after the others are released, and a later call tries again.
    pub fn quiesced(&self) -> Result<usize> {
        let held: Vec<Box<dyn Held>> = core::mem::take(&mut *self.held.lock());
        let mut n = 0;
        let mut first = None;
        for h in held {
            match h.release() {
                Ok(()) => {
                    n += 1;
                    self.live.fetch_sub(1, Ordering::AcqRel);
                }
                Err((e, kept)) => {
                    first.get_or_insert(e);
                    self.hold(kept);
                }
            }
        }
        first.map_or(Ok(n), Err)
    }

    /// Device teardown: releases what waits here (as [`quiesced`](Self::quiesced)), then
    /// checks that nothing else is outstanding. Outstanding preparations (live prepared
    /// commands, forgotten ones) are [`Error::Busy`] naming how many; with `dma-debug` each
    /// is also recorded as a [`Leak`](crate::debug::ViolationKind::Leak) saying what it holds.
    pub fn teardown(&self) -> Result<()> {
        self.quiesced()?;
        let live = self.live();
        if live == 0 {
            return Ok(());
        }
        #[cfg(feature = "dma-debug")]
        for o in crate::debug::outstanding(self.id) {
            crate::debug::record(crate::debug::ViolationKind::Leak, o.command, || {
                alloc_crate::format!(
                    "device {} torn down with a preparation outstanding: {:?} {:#x}+{:#x}, {}, holding {} bytes{}",
                    self.name,
                    o.direction,
                    o.offset,
                    o.length,
                    o.route,
                    o.held_bytes,
                    if o.dropped { ", dropped" } else { ", command still alive or forgotten" },
                )
            });
        }
        Err(Error::Busy {
            what: "device teardown: preparations still outstanding (complete them, or drop their commands and quiesce the device)",
            addr: live,
            why: "a device may still own that memory",
        })
    }

    pub(crate) fn prepared(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn completed(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn hold(&self, h: Box<dyn Held>) {
        self.held.lock().push(h);
    }
}

impl core::fmt::Debug for Quarantine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Quarantine")
            .field("name", &self.name)
            .field("held", &self.held())
            .field("live", &self.live())
            .finish()
    }
}
