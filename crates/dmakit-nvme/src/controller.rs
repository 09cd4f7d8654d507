//! [`Nvme`]: one controller: bring-up, the admin queue, Identify, I/O queue pairs, and
//! recovery from a fatal controller status.
//!
//! Bring-up (NVMe Base Specification §3.5.1): check the class code and `CAP` (the NVM
//! command set, 4 KiB pages), turn bus mastering on, disable (`CC.EN = 0`, wait
//! `CSTS.RDY = 0`), program the admin queue (`AQA`, `ASQ`, `ACQ`), enable with 64-byte
//! submission and 16-byte completion entries, wait `CSTS.RDY = 1` (each wait bounded by
//! `CAP.TO`), read Identify Controller (`MDTS` sets the largest command), and ask for I/O
//! queues (Set Features, Number of Queues).
//!
//! Recovery ([`Nvme::recover`]): a fatal status (`CSTS.CFS`) or a command timeout marks the
//! controller for reset; the next command (on any queue) or an explicit `recover` disables
//! it, which stops its DMA, brings it up again, and moves to a new *generation*. Every
//! command that was outstanding fails with an error naming it; the memory it used is given
//! back only then (never while the controller could still reach it); every I/O queue pair
//! re-creates itself on the controller the next time it is used.

use crate::command::{
    Command, Completion, ADMIN_CREATE_CQ, ADMIN_CREATE_SQ, ADMIN_DELETE_CQ, ADMIN_DELETE_SQ,
    ADMIN_IDENTIFY,
};
use crate::dma::DmaBuffer;
use crate::error::{NvmeError, Op, Result};
use crate::identify::{ControllerIdentity, NamespaceIdentity};
use crate::io::IoQueue;
use crate::options::{NvmeOptions, QueueOptions};
use crate::prp::PRP_PAGE;
use crate::queue::Ring;
use crate::regs::{self, Regs};
use crate::timer::{Deadline, Timer};
use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dmakit::device::{DmaView, PciFunction};
use dmakit::platform::Platform;
use dmakit::Error;

/// The PCI class code of an NVMe controller (mass storage, non-volatile memory, NVMe).
pub const NVME_CLASS: u32 = 0x01_08_02;
/// Looks at a completion queue between two reads of the controller status.
pub(crate) const CSTS_EVERY: u32 = 32;
/// Set Features / Get Features opcode and the Number of Queues feature.
const ADMIN_SET_FEATURES: u8 = 0x09;
const FEATURE_NUM_QUEUES: u32 = 0x07;

/// What [`Nvme::recover`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The generation the controller is in now (one more per reset).
    pub generation: u64,
    /// Whether a reset was done (false: nothing needed one).
    pub reset: bool,
}

/// Counters of one controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControllerStats {
    /// Resets done by recovery.
    pub recoveries: u64,
    /// Admin commands completed successfully.
    pub admin_commands: u64,
    /// Buffers held back after a timeout or fatal status, waiting for a reset.
    pub held_for_reset: u64,
}

/// An NVMe controller. Cheap to clone (the clones share it); [`IoQueue`]s keep it alive.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
/// use dmakit::device::{PciBus, PciMatch};
/// use dmakit::Direction;
/// use dmakit_nvme::{Nvme, NvmeOptions, PollTimer, QueueOptions, NVME_CLASS};
/// use dmakit_sim::{nvme::SimNvme, pci::SimPciBus, MachineBuilder};
/// use std::sync::Arc;
///
/// let machine = Arc::new(MachineBuilder::new().build()?);
/// let bus = SimPciBus::new(machine.clone())?;
/// let sim = SimNvme::builder().lba_size(4096).attach(&bus)?;
/// let function = bus.find(&PciMatch::class(NVME_CLASS))?;
/// let nvme = Nvme::new(machine.clone(), function, Arc::new(PollTimer::default()), NvmeOptions::new())?;
/// let ns = nvme.namespace(1)?;
/// assert_eq!((ns.block_size, ns.blocks), (4096, sim.blocks()));
/// assert!(nvme.identity().namespaces >= 1);
///
/// let mut q = nvme.io_queue(QueueOptions::new(32))?;
/// let data: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine.clone(), &[0xA5; 8192], Direction::Out)?);
/// q.write(&ns, 10, &data, 0, 8192)?; // blocks 10 and 11
/// q.flush(&ns)?;
/// assert_eq!(sim.block(1, 11)?, vec![0xA5; 4096], "on the simulated disk");
/// let back: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine, &[0; 4096], Direction::In)?);
/// q.read(&ns, 11, &back, 0, 4096)?;
/// let mut b = [0u8; 4096];
/// assert_eq!(back.read_bytes(0, &mut b), 4096);
/// assert_eq!(b, [0xA5; 4096]);
/// assert_eq!(q.stats().commands, 3);
/// # Ok::<(), dmakit_nvme::NvmeError>(())
/// ```
pub struct Nvme<P: Platform + Clone + Send + Sync + 'static> {
    pub(crate) shared: Arc<Shared<P>>,
}

impl<P: Platform + Clone + Send + Sync + 'static> Clone for Nvme<P> {
    fn clone(&self) -> Self {
        Nvme {
            shared: self.shared.clone(),
        }
    }
}

/// Memory the controller might still reach: kept until the next reset.
pub(crate) type Held = Box<dyn core::any::Any + Send>;

pub(crate) struct Shared<P: Platform + Clone + Send + Sync + 'static> {
    pub(crate) platform: P,
    pub(crate) function: Arc<dyn PciFunction>,
    pub(crate) view: DmaView,
    pub(crate) regs: Regs,
    pub(crate) timer: Arc<dyn Timer>,
    pub(crate) options: NvmeOptions,
    pub(crate) cap: u64,
    ready_timeout_ns: u64,
    max_transfer: AtomicU64,
    io_queue_limit: dmakit::sync::Mutex<u16>,
    identity: dmakit::sync::Mutex<Option<ControllerIdentity>>,
    /// `None` only while the controller is being dropped.
    admin: dmakit::sync::Mutex<Option<Ring<P>>>,
    pub(crate) generation: AtomicU64,
    pub(crate) needs_reset: AtomicBool,
    qids: dmakit::sync::Mutex<BTreeSet<u16>>,
    held: dmakit::sync::Mutex<Vec<Held>>,
    /// Queue identifiers of queue pairs held with their memory: free again after a reset.
    held_qids: dmakit::sync::Mutex<Vec<u16>>,
    recoveries: AtomicU64,
    admin_commands: AtomicU64,
    held_count: AtomicU64,
}

impl<P: Platform + Clone + Send + Sync + 'static> Nvme<P> {
    /// Brings up the NVMe controller `function` with `platform`'s memory and register
    /// accesses, measuring time with `timer`.
    pub fn new(
        platform: P,
        function: Arc<dyn PciFunction>,
        timer: Arc<dyn Timer>,
        options: NvmeOptions,
    ) -> Result<Nvme<P>> {
        check_options(function.as_ref(), &options)?;
        let bar = function.bar(0)?;
        let probe = Regs { bar, stride: 4 };
        let cap = probe.read64(&platform, regs::CAP)?;
        check_cap(cap)?;
        let regs = Regs {
            bar,
            stride: 4u64 << ((cap >> 32) & 0xf),
        };
        let mqes = (cap & 0xffff) as u32 + 1;
        let admin_entries = (options.admin_entries as u32).min(mqes).min(4096) as u16;
        let view = function.dma();
        let admin = Ring::new(&platform, &view, &regs, 0, admin_entries)?;
        function.set_bus_master(true)?;
        let shared = Arc::new(Shared {
            platform,
            function,
            view,
            regs,
            timer,
            options,
            cap,
            // CAP.TO: worst-case time to become ready, in 500 ms units.
            ready_timeout_ns: 500_000_000 * ((cap >> 24) & 0xff).max(1),
            max_transfer: AtomicU64::new(PRP_PAGE),
            io_queue_limit: dmakit::sync::Mutex::new(0),
            identity: dmakit::sync::Mutex::new(None),
            admin: dmakit::sync::Mutex::new(Some(admin)),
            generation: AtomicU64::new(0),
            needs_reset: AtomicBool::new(false),
            qids: dmakit::sync::Mutex::new(BTreeSet::new()),
            held: dmakit::sync::Mutex::new(Vec::new()),
            held_qids: dmakit::sync::Mutex::new(Vec::new()),
            recoveries: AtomicU64::new(0),
            admin_commands: AtomicU64::new(0),
            held_count: AtomicU64::new(0),
        });
        shared.bring_up(ring_of(&mut shared.admin.lock())?)?;
        let identity = shared.identify_controller()?;
        let max_transfer = transfer_limit(identity.mdts, cap, options.max_transfer)?;
        shared.max_transfer.store(max_transfer, Ordering::Release);
        *shared.identity.lock() = Some(identity);
        Ok(Nvme { shared })
    }

    /// Identify Controller, as read at bring-up.
    pub fn identity(&self) -> ControllerIdentity {
        self.shared
            .identity
            .lock()
            .clone()
            .unwrap_or_else(|| ControllerIdentity {
                vendor: 0,
                serial: alloc::string::String::new(),
                model: alloc::string::String::new(),
                firmware: alloc::string::String::new(),
                mdts: 0,
                namespaces: 0,
            })
    }

    /// Identify Controller, read from the controller now.
    pub fn identify_controller(&self) -> Result<ControllerIdentity> {
        self.shared.identify_controller()
    }

    /// Identify Namespace `nsid`: its size and logical block size (512 or 4096 bytes, or
    /// any power of two the controller reports). An inactive namespace and a format with
    /// metadata per block are refused (see [`NamespaceIdentity::parse`]).
    pub fn namespace(&self, nsid: u32) -> Result<NamespaceIdentity> {
        let data = self.shared.identify(0, nsid)?;
        Ok(NamespaceIdentity::parse(nsid, &data)?)
    }

    /// The most bytes one command carries (from `MDTS` and [`NvmeOptions::max_transfer`]);
    /// transfers above it are split.
    pub fn max_transfer(&self) -> u64 {
        self.shared.max_transfer()
    }

    /// How the function's DMA reaches memory (for [`DmaBuffer::new`] and DMA commands of
    /// your own).
    pub fn dma_view(&self) -> DmaView {
        self.shared.view.clone()
    }

    /// The platform the controller was brought up with.
    pub fn platform(&self) -> &P {
        &self.shared.platform
    }

    /// The controller's capabilities register.
    pub fn capabilities(&self) -> u64 {
        self.shared.cap
    }

    /// The version register (`0x0001_0400` is NVMe 1.4).
    pub fn version(&self) -> Result<u32> {
        Ok(self.shared.regs.read32(&self.shared.platform, regs::VS)?)
    }

    /// The I/O queue pairs the controller granted.
    pub fn io_queue_limit(&self) -> u16 {
        *self.shared.io_queue_limit.lock()
    }

    /// The generation: 0 after bring-up, one more after every reset.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Counters.
    pub fn stats(&self) -> ControllerStats {
        ControllerStats {
            recoveries: self.shared.recoveries.load(Ordering::Relaxed),
            admin_commands: self.shared.admin_commands.load(Ordering::Relaxed),
            held_for_reset: self.shared.held_count.load(Ordering::Relaxed),
        }
    }

    /// Creates an I/O queue pair (completion queue, then submission queue) with the lowest
    /// free queue identifier. Each queue pair belongs to one thread at a time; make one
    /// per thread or CPU to do I/O concurrently.
    pub fn io_queue(&self, options: QueueOptions) -> Result<IoQueue<P>> {
        IoQueue::create(self.shared.clone(), options)
    }

    /// Resets the controller if a fatal status or a timeout asked for it (or if `force`),
    /// and brings it up again. Commands outstanding at the time fail with an error naming
    /// them; I/O queue pairs re-create themselves when next used.
    pub fn recover(&self, force: bool) -> Result<Recovery> {
        self.shared.recover(force)
    }

    /// Whether the controller reports a fatal status (`CSTS.CFS`) now.
    pub fn fatal_status(&self) -> Result<bool> {
        let csts = self.shared.regs.read32(&self.shared.platform, regs::CSTS)?;
        Ok(csts & regs::CSTS_CFS != 0)
    }
}

impl<P: Platform + Clone + Send + Sync + 'static> core::fmt::Debug for Nvme<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Nvme")
            .field(
                "function",
                &format_args!("{}", self.shared.function.address()),
            )
            .field("cap", &format_args!("{:#x}", self.shared.cap))
            .field("max_transfer", &self.shared.max_transfer())
            .field("generation", &self.generation())
            .finish()
    }
}

/// What the driver checks before it touches the controller: the function is an NVMe
/// controller, and the options are possible. (Refusing them after bring-up would leave a
/// controller that is slow to stop holding the admin queue's memory.)
fn check_options(function: &dyn PciFunction, options: &NvmeOptions) -> Result<()> {
    if function.id().class != NVME_CLASS {
        return Err(Error::NotAttached {
            what: "NVMe driver",
            why: "the function is not an NVMe controller (class 01:08:02)",
        }
        .into());
    }
    if !(2..=4096).contains(&options.admin_entries) || options.io_queues == 0 {
        return Err(Error::BadArgument {
            what: "NVMe options: admin_entries 2..=4096 and io_queues at least 1",
            value: options.admin_entries as u64,
        }
        .into());
    }
    if options.max_transfer < PRP_PAGE {
        return Err(Error::BadArgument {
            what: "NVMe options: max_transfer at least one 4 KiB page",
            value: options.max_transfer,
        }
        .into());
    }
    Ok(())
}

/// Refuses controllers this driver cannot drive.
fn check_cap(cap: u64) -> Result<()> {
    // A load the device never answered reads all ones; CAP may be read as two halves.
    if cap as u32 == u32::MAX || (cap >> 32) as u32 == u32::MAX {
        return Err(Error::NotAttached {
            what: "NVMe controller",
            why: "its registers read all ones: the device is gone or its BAR is not decoded",
        }
        .into());
    }
    if (cap >> 37) & 1 == 0 {
        return Err(Error::Unsupported {
            what: "NVMe controller without the NVM command set (CAP.CSS bit 0)",
        }
        .into());
    }
    if 1u64 << (12 + ((cap >> 48) & 0xf)) > PRP_PAGE {
        return Err(Error::Unsupported {
            what: "NVMe controller whose minimum memory page is larger than 4 KiB",
        }
        .into());
    }
    Ok(())
}

/// The most bytes one command may carry: `MDTS` (a power of two of the minimum page size,
/// 0 for no limit) and the driver's own limit, at least one page.
pub(crate) fn transfer_limit(mdts: u8, cap: u64, driver_max: u64) -> Result<u64> {
    let mpsmin = 1u64 << (12 + ((cap >> 48) & 0xf));
    let device = match mdts {
        0 => u64::MAX,
        m if m >= 40 => u64::MAX,
        m => mpsmin << m,
    };
    let limit = device.min(driver_max) / PRP_PAGE * PRP_PAGE;
    if limit == 0 {
        return Err(Error::BadArgument {
            what: "NVMe max_transfer: at least one 4 KiB page",
            value: driver_max,
        }
        .into());
    }
    Ok(limit)
}

/// The admin ring behind its lock.
fn ring_of<P: Platform + Clone + 'static>(g: &mut Option<Ring<P>>) -> Result<&mut Ring<P>> {
    g.as_mut().ok_or_else(|| {
        Error::NotReady {
            what: "NVMe admin queue (the controller is being shut down)",
            addr: 0,
        }
        .into()
    })
}

impl<P: Platform + Clone + Send + Sync + 'static> Shared<P> {
    pub(crate) fn max_transfer(&self) -> u64 {
        self.max_transfer.load(Ordering::Acquire)
    }

    /// Disables the controller, programs the admin queue, enables it and asks for queues.
    fn bring_up(&self, admin: &mut Ring<P>) -> Result<()> {
        let p = &self.platform;
        let cc = self.regs.read32(p, regs::CC)?;
        if cc & regs::CC_EN != 0 {
            self.regs.write32(p, regs::CC, cc & !regs::CC_EN)?;
        }
        self.wait_ready(false)?;
        let _ = admin.reset()?;
        let n = admin.entries as u32 - 1;
        self.regs.write32(p, regs::AQA, n << 16 | n)?;
        self.regs.write64(p, regs::ASQ, admin.sq.device_addr())?;
        self.regs.write64(p, regs::ACQ, admin.cq.device_addr())?;
        self.regs
            .write32(p, regs::CC, regs::CC_EN | regs::CC_ENTRY_SIZES)?;
        self.wait_ready(true)?;
        let want = (self.options.io_queues as u32 - 1) * 0x1_0001;
        let cmd = Command::new(ADMIN_SET_FEATURES, 0)
            .with_cdw(10, FEATURE_NUM_QUEUES)
            .with_cdw(11, want);
        let c = self.execute_locked(admin, Op::admin(ADMIN_SET_FEATURES, 0), cmd)?;
        // Submission and completion queues allocated (0's based), the lower of the two.
        let granted =
            ((c.result & 0xffff).min(c.result >> 16) + 1).min(self.options.io_queues as u32);
        *self.io_queue_limit.lock() = granted.min(u16::MAX as u32 - 1) as u16;
        Ok(())
    }

    /// Waits until `CSTS.RDY` is `ready`, within `CAP.TO`; a fatal status while enabling
    /// is an error at once.
    fn wait_ready(&self, ready: bool) -> Result<()> {
        let d = Deadline::new(&*self.timer, self.ready_timeout_ns);
        loop {
            let csts = self.regs.read32(&self.platform, regs::CSTS)?;
            if ready && csts & regs::CSTS_CFS != 0 {
                return Err(Error::NotReady {
                    what: "NVMe controller reported a fatal status (CSTS.CFS) while enabling",
                    addr: csts as u64,
                }
                .into());
            }
            if (csts & regs::CSTS_RDY != 0) == ready {
                return Ok(());
            }
            if d.passed() {
                return Err(Error::NotReady {
                    what: if ready {
                        "NVMe controller did not become ready (CSTS.RDY) within CAP.TO"
                    } else {
                        "NVMe controller did not stop (CSTS.RDY still 1) within CAP.TO"
                    },
                    addr: csts as u64,
                }
                .into());
            }
            d.pause();
        }
    }

    fn identify_controller(&self) -> Result<ControllerIdentity> {
        Ok(ControllerIdentity::parse(&self.identify(1, 0)?)?)
    }

    /// Reads one Identify data structure (`cns`) into a fresh page.
    pub(crate) fn identify(&self, cns: u32, nsid: u32) -> Result<Vec<u8>> {
        let buf = DmaBuffer::new(&self.platform, &self.view, PRP_PAGE)?;
        let cmd = Command::new(ADMIN_IDENTIFY, nsid)
            .with_prps(buf.device_addr(), 0)
            .with_cdw(10, cns);
        match self.admin_command(Op::admin(ADMIN_IDENTIFY, nsid), cmd) {
            Ok(_) => {
                let mut out = vec![0u8; PRP_PAGE as usize];
                buf.read(0, &mut out)?;
                Ok(out)
            }
            Err(e) => {
                self.hold_if_unsafe(&e, Box::new(buf));
                Err(e)
            }
        }
    }

    /// Runs one admin command and waits for it, resetting the controller first if it
    /// needs it.
    pub(crate) fn admin_command(&self, op: Op, cmd: Command) -> Result<Completion> {
        if self.needs_reset.load(Ordering::Acquire) {
            self.recover(false)?;
        }
        let mut admin = self.admin.lock();
        self.execute_locked(ring_of(&mut admin)?, op, cmd)
    }

    fn execute_locked(&self, admin: &mut Ring<P>, op: Op, cmd: Command) -> Result<Completion> {
        let op = op.on(self.function.address());
        let generation = self.generation.load(Ordering::Acquire);
        let cid = admin.push(cmd)?;
        if let Err(e) = admin.ring(&self.platform) {
            // The doorbell did not go out: take the command back, or the next doorbell would
            // hand it to the controller along with the next command.
            admin.unpush_unrung();
            return Err(e.into());
        }
        let c = self.wait_for(admin, cid, op, generation)?;
        self.admin_commands.fetch_add(1, Ordering::Relaxed);
        Ok(c)
    }

    /// Waits for the completion of `cid` (the only command outstanding on `ring`) and
    /// checks its status. A fatal status, a timeout or a reset by another thread fail it
    /// with an error naming it; the first two mark the controller for reset.
    pub(crate) fn wait_for(
        &self,
        ring: &mut Ring<P>,
        cid: u16,
        op: Op,
        generation: u64,
    ) -> Result<Completion> {
        let d = Deadline::new(&*self.timer, self.options.command_timeout_ns);
        let qid = ring.qid;
        let mut polls = 0u32;
        loop {
            if let Some(c) = ring.reap()? {
                ring.ring_cq(&self.platform)?;
                if c.cid != cid {
                    return Err(Error::Internal {
                        what: "NVMe completion for another command while one was expected",
                    }
                    .into());
                }
                if c.status != 0 {
                    return Err(NvmeError::Status {
                        op,
                        qid,
                        cid,
                        status: c.status,
                    });
                }
                return Ok(c);
            }
            polls = polls.wrapping_add(1);
            self.check_alive(
                op,
                qid,
                cid,
                generation,
                polls.is_multiple_of(CSTS_EVERY) || d.passed(),
            )?;
            if d.passed() {
                self.needs_reset.store(true, Ordering::Release);
                return Err(NvmeError::Timeout {
                    op,
                    qid,
                    cid,
                    waited_ms: d.elapsed_ms(),
                });
            }
            d.pause();
        }
    }

    /// Between looks at a completion queue: a reset since the command was submitted or (when
    /// `read_csts`: a register read costs far more than a look at memory, so the wait loops
    /// do it every [`CSTS_EVERY`] looks and before giving up) a fatal status fail the
    /// command.
    pub(crate) fn check_alive(
        &self,
        op: Op,
        qid: u16,
        cid: u16,
        generation: u64,
        read_csts: bool,
    ) -> Result<()> {
        if self.generation.load(Ordering::Acquire) != generation {
            return Err(NvmeError::Reset { op, qid, cid });
        }
        if !read_csts {
            return Ok(());
        }
        let csts = self.regs.read32(&self.platform, regs::CSTS)?;
        if csts & regs::CSTS_CFS != 0 {
            self.needs_reset.store(true, Ordering::Release);
            return Err(NvmeError::ControllerFatal { op, qid, cid });
        }
        Ok(())
    }

    /// Keeps `what` until the next reset if `e` means the controller may still use it.
    pub(crate) fn hold_if_unsafe(&self, e: &NvmeError, what: Held) {
        if may_still_run(e) {
            self.hold(what);
        }
    }

    /// Keeps `what` until the next reset.
    pub(crate) fn hold(&self, what: Held) {
        self.held_count.fetch_add(1, Ordering::Relaxed);
        self.held.lock().push(what);
    }

    pub(crate) fn recover(&self, force: bool) -> Result<Recovery> {
        let mut admin = self.admin.lock();
        if !force && !self.needs_reset.load(Ordering::Acquire) {
            return Ok(Recovery {
                generation: self.generation.load(Ordering::Acquire),
                reset: false,
            });
        }
        // Until the reset is through, the controller may be disabled (or half brought up):
        // a reset that fails here is tried again by the next command instead of that
        // command going to a controller that no longer fetches it.
        self.needs_reset.store(true, Ordering::Release);
        let p = &self.platform;
        let cc = self.regs.read32(p, regs::CC)?;
        self.regs.write32(p, regs::CC, cc & !regs::CC_EN)?;
        self.wait_ready(false)?;
        // Disabled: the controller no longer reaches any queue or buffer. Commands waiting
        // elsewhere see the new generation and fail; held memory can go.
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        drop(core::mem::take(&mut *self.held.lock()));
        // The reset deleted every I/O queue: identifiers of held queue pairs are free.
        for qid in core::mem::take(&mut *self.held_qids.lock()) {
            self.free_qid(qid);
        }
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        self.bring_up(ring_of(&mut admin)?)?;
        self.needs_reset.store(false, Ordering::Release);
        Ok(Recovery {
            generation,
            reset: true,
        })
    }

    /// The lowest free I/O queue identifier, now taken.
    pub(crate) fn take_qid(&self) -> Result<u16> {
        let limit = *self.io_queue_limit.lock();
        let mut used = self.qids.lock();
        let qid = (1..=limit)
            .find(|q| !used.contains(q))
            .ok_or(Error::NoResources {
                what: "NVMe I/O queue pairs (the controller's Number of Queues)",
                limit: limit as u64,
            })?;
        used.insert(qid);
        Ok(qid)
    }

    pub(crate) fn free_qid(&self, qid: u16) {
        self.qids.lock().remove(&qid);
    }

    /// Keeps the memory of queue pair `qid` (`what`) and its identifier until the next
    /// reset, which deletes the queues on the controller. `reset`: the controller refused
    /// to delete them, so only a reset gets them back; the next command does it.
    pub(crate) fn hold_queue(&self, qid: u16, what: Held, reset: bool) {
        self.held_qids.lock().push(qid);
        self.hold(what);
        if reset {
            self.needs_reset.store(true, Ordering::Release);
        }
    }

    /// Creates the completion and submission queue of `ring` on the controller. On an
    /// error, the flag says whether the controller may still hold one of them (a command
    /// that timed out or met a fatal status, or a completion queue it refused to delete
    /// once its submission queue failed): then only a reset removes it, and until then the
    /// ring's memory and its identifier must be kept.
    pub(crate) fn create_queues(
        &self,
        ring: &Ring<P>,
        vector: Option<u32>,
    ) -> core::result::Result<(), (NvmeError, bool)> {
        let size_id = (ring.entries as u32 - 1) << 16 | ring.qid as u32;
        // Physically contiguous (bit 0); interrupts enabled (bit 1) on vector IV (31:16).
        let cdw11 = match vector {
            Some(v) => v << 16 | 2 | 1,
            None => 1,
        };
        self.admin_command(
            Op::admin(ADMIN_CREATE_CQ, 0),
            Command::new(ADMIN_CREATE_CQ, 0)
                .with_prps(ring.cq.device_addr(), 0)
                .with_cdw(10, size_id)
                .with_cdw(11, cdw11),
        )
        .map_err(|e| {
            let left = may_still_run(&e);
            (e, left)
        })?;
        let sq = self.admin_command(
            Op::admin(ADMIN_CREATE_SQ, 0),
            Command::new(ADMIN_CREATE_SQ, 0)
                .with_prps(ring.sq.device_addr(), 0)
                .with_cdw(10, size_id)
                .with_cdw(11, (ring.qid as u32) << 16 | 1),
        );
        if let Err(e) = sq {
            let cq_left = self.delete_queue(ADMIN_DELETE_CQ, ring.qid).is_err();
            if cq_left {
                self.needs_reset.store(true, Ordering::Release);
            }
            let left = cq_left || may_still_run(&e);
            return Err((e, left));
        }
        Ok(())
    }

    /// Deletes submission or completion queue `qid` (by `opcode`).
    pub(crate) fn delete_queue(&self, opcode: u8, qid: u16) -> Result<()> {
        let cmd = Command::new(opcode, 0).with_cdw(10, qid as u32);
        self.admin_command(Op::admin(opcode, 0), cmd).map(drop)
    }

    /// Deletes both queues of `qid`: submission first, as the specification orders.
    pub(crate) fn delete_queues(&self, qid: u16) -> Result<()> {
        let sq = self.delete_queue(ADMIN_DELETE_SQ, qid);
        let cq = self.delete_queue(ADMIN_DELETE_CQ, qid);
        sq.and(cq)
    }
}

/// Whether a command that failed with `e` may still be carried out by the controller (it
/// timed out, or the controller went fatal): only a reset makes sure it is not.
fn may_still_run(e: &NvmeError) -> bool {
    matches!(
        e,
        NvmeError::Timeout { .. } | NvmeError::ControllerFatal { .. }
    )
}

impl<P: Platform + Clone + Send + Sync + 'static> Drop for Shared<P> {
    fn drop(&mut self) {
        // The last user is gone: disable the controller (it stops using every queue and
        // buffer) before the admin queue and held memory are given back; bus mastering off.
        let p = &self.platform;
        if let Ok(cc) = self.regs.read32(p, regs::CC) {
            if self.regs.write32(p, regs::CC, cc & !regs::CC_EN).is_ok()
                && self.wait_ready(false).is_ok()
            {
                let _ = self.function.set_bus_master(false);
                return;
            }
        }
        // The controller did not stop: keep its memory rather than free what it may reach.
        core::mem::forget(self.admin.lock().take());
        core::mem::forget(core::mem::take(&mut *self.held.lock()));
    }
}
