//! A simulated NVMe controller behind a PCI function ([`SimNvme`], its model
//! [`NvmeModel`]): the NVMe 1.4 subset a driver needs, deterministic by seed, with hostile
//! knobs.
//!
//! The controller is class `01:08:02` (QEMU's IDs `1b36:0010`). BAR 0 (64-bit) holds the
//! registers and the doorbells; BAR 4 the MSI-X table (one vector per completion queue:
//! I/O queues + 1) and its pending bits.
//!
//! | offset (BAR 0) | register | |
//! | --- | --- | --- |
//! | 0x00 | `CAP` | MQES from [`SimNvmeBuilder::max_queue_entries`], CQR = 1 (contiguous queues), TO from [`SimNvmeBuilder::ready_timeout`] (7.5 s), DSTRD from [`SimNvmeBuilder::doorbell_stride`], CSS = NVM, MPSMIN from [`SimNvmeBuilder::mpsmin`] (4 KiB), MPSMAX = 4 (64 KiB) |
//! | 0x08 | `VS` | 1.4.0 |
//! | 0x0C / 0x10 | `INTMS` / `INTMC` | kept, no effect (MSI-X) |
//! | 0x14 | `CC` | EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES |
//! | 0x1C | `CSTS` | RDY, CFS, SHST |
//! | 0x24 | `AQA` | admin queue sizes (0's based) |
//! | 0x28 / 0x30 | `ASQ` / `ACQ` | admin queue bases (64-bit) |
//! | 0x1000 + (2y) (4 << DSTRD) | `SQyTDBL` | submission queue *y* tail doorbell |
//! | 0x1000 + (2y + 1) (4 << DSTRD) | `CQyHDBL` | completion queue *y* head doorbell |
//!
//! **Bring-up**: setting `CC.EN` checks the configuration (IOSQES 6 and IOCQES 4, MPS within
//! CAP, admin queues of at least 2 entries at page-aligned, non-zero addresses), makes the
//! admin queues and sets `CSTS.RDY` (after [`SimNvmeBuilder::ready_delay`] ticks). A bad
//! configuration leaves RDY clear ([`SimNvme::enable_error`] says why). Clearing `CC.EN`
//! resets the controller: every queue and pending command is gone, `CSTS` clears (CFS
//! included; RDY after [`SimNvmeBuilder::disable_delay`] ticks); the namespace keeps its
//! data.
//!
//! **Commands**: admin Identify (controller: serial [`identify::SERIAL`], MDTS; namespace:
//! size and one LBA format of [`SimNvmeBuilder::lba_size`] bytes with
//! [`SimNvmeBuilder::metadata_bytes`] of metadata; active namespace list), Create/Delete I/O
//! SQ and CQ, Set/Get Features (Number of Queues reports the configured count), Get Log Page
//! (zeros), Abort (never aborts), Asynchronous Event Request (held; up to 4); NVM Read,
//! Write, Flush on namespace 1 and those [`SimNvmeBuilder::namespace`] adds. Data moves
//! through PRP1/PRP2 and chained PRP lists ([`prp`]) with the memory page size of
//! `CC.MPS`. A command that is malformed gets the status a controller gives and moves
//! nothing: an unaligned PRP entry is PRP Offset Invalid, a PRP that does not reach memory (outside RAM, unmapped in the IOMMU, PRP2 = 0
//! when needed) is Data Transfer Error (the whole transfer is checked before any byte
//! moves), a transfer over MDTS is Invalid Field, a range past the namespace is LBA Out of
//! Range. A submission entry that cannot be fetched, or a completion that cannot be
//! written, sets `CSTS.CFS`.
//!
//! **Completions** carry the SQ head, SQ ID, command ID, phase tag and status; each
//! completion queue with interrupts enabled signals its MSI-X vector once per batch. A full
//! queue holds further completions until the host moves its head.
//!
//! **Time**: with [`SimNvmeBuilder::completion_delay`] 0 (the default) a doorbell store
//! fetches and carries out its commands before it returns, as the DMA engine does. With a
//! delay of *n*, fetched commands are carried out *n* ticks later; a tick is any access to
//! BAR 0 (a driver polling `CSTS`, ringing a doorbell) or a [`SimNvme::step`].
//! [`SimNvme::run_until_idle`] carries out everything at once. Commands that come due
//! together are reordered by [`SimNvmeBuilder::reorder`] with a generator seeded by
//! [`SimNvmeBuilder::seed`], so the same seed gives the same order.
//!
//! ```
//! use std::sync::Arc;
//! use dmakit::device::{PciBus, PciFunction, PciMatch};
//! use dmakit::map::{mapped_read32, mapped_read64};
//! use dmakit::PhysAddr;
//! use dmakit_sim::nvme::{regs, SimNvme, NVME_CLASS};
//! use dmakit_sim::pci::SimPciBus;
//! use dmakit_sim::MachineBuilder;
//!
//! let m = Arc::new(MachineBuilder::new().build()?);
//! let bus = SimPciBus::new(m.clone())?;
//! let nvme = SimNvme::builder().lba_size(4096).mdts(1).attach(&bus)?;
//! let f = bus.find(&PciMatch::class(NVME_CLASS))?;
//! let bar0 = f.bar(0)?.base.0;
//! let cap = mapped_read64(&*m, PhysAddr(bar0 + regs::CAP))?;
//! assert_eq!(cap & 0xFFFF, 1023, "MQES: 1024 entries");
//! assert_eq!(mapped_read32(&*m, PhysAddr(bar0 + regs::VS))?, 0x0001_0400);
//! assert_eq!(nvme.lba_size(), 4096);
//! # Ok::<(), dmakit::Error>(())
//! ```

pub mod command;
mod controller;
pub mod identify;
pub mod prp;
mod queue;
mod store;

pub use command::{CompletionEntry, Status, SubmissionEntry};
pub use controller::NvmeModel;
pub use store::Prefill;

use crate::pci::{FunctionConfig, SimPciBus, SimPciFunction};
use dmakit::{Error, Result};
use regs::MPS_MAX;
use std::sync::Arc;

/// The controller's vendor ID (QEMU's).
pub const NVME_VENDOR: u16 = 0x1b36;
/// The controller's device ID (QEMU's NVMe).
pub const NVME_DEVICE: u16 = 0x0010;
/// NVMe's class code: mass storage, non-volatile memory, NVM Express.
pub const NVME_CLASS: u32 = 0x01_08_02;

/// Register offsets and fields (BAR 0).
pub mod regs {
    /// Controller Capabilities (64-bit).
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u64 = 0x0C;
    /// Interrupt Mask Clear.
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration.
    pub const CC: u64 = 0x14;
    /// Controller Status.
    pub const CSTS: u64 = 0x1C;
    /// Admin Queue Attributes.
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue base (64-bit).
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue base (64-bit).
    pub const ACQ: u64 = 0x30;
    /// The first doorbell.
    pub const DOORBELLS: u64 = 0x1000;

    /// CAP.CQR: queues must be physically contiguous.
    pub const CAP_CQR: u64 = 1 << 16;
    /// CAP.CSS bit 0: the NVM command set.
    pub const CAP_CSS_NVM: u64 = 1 << 37;
    /// CAP.MPSMAX of this controller (64 KiB pages).
    pub const MPS_MAX: u32 = 4;

    /// CC.EN.
    pub const CC_EN: u32 = 1;
    /// CC.CSS shift (3 bits).
    pub const CC_CSS_SHIFT: u32 = 4;
    /// CC.MPS shift (4 bits): page size `4 KiB << MPS`.
    pub const CC_MPS_SHIFT: u32 = 7;
    /// CC.AMS shift (3 bits).
    pub const CC_AMS_SHIFT: u32 = 11;
    /// CC.SHN shift (2 bits).
    pub const CC_SHN_SHIFT: u32 = 14;
    /// CC.IOSQES shift (4 bits, log2 of the entry size: 6).
    pub const CC_IOSQES_SHIFT: u32 = 16;
    /// CC.IOCQES shift (4 bits: 4).
    pub const CC_IOCQES_SHIFT: u32 = 20;
    /// The bits of CC that hold a value.
    pub const CC_WRITABLE: u32 = 0x00FF_FFF1;

    /// CSTS.RDY.
    pub const CSTS_RDY: u32 = 1;
    /// CSTS.CFS: controller fatal status.
    pub const CSTS_CFS: u32 = 2;
    /// CSTS.SHST value: shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2;

    /// The offset of queue `qid`'s submission tail (`cq` false) or completion head doorbell
    /// for doorbell stride `dstrd` (CAP.DSTRD).
    pub const fn doorbell(qid: u16, cq: bool, dstrd: u8) -> u64 {
        DOORBELLS + (2 * qid as u64 + cq as u64) * (4 << dstrd)
    }
}

/// How commands that come due together are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reorder {
    /// In the order they were fetched.
    #[default]
    InOrder,
    /// Queues interleaved at random; each queue's commands in order.
    AcrossQueues,
    /// Queues interleaved at random and each I/O queue's commands shuffled (NVMe allows any
    /// completion order). The admin queue stays in order.
    Any,
}

/// An injected command error: the `nth` next command with this opcode on the admin queue
/// (`admin`) or on any I/O queue completes with `status` and moves no data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandFault {
    /// Admin queue (true) or I/O queues.
    pub admin: bool,
    /// The opcode.
    pub opcode: u8,
    /// Which matching command, counted from when the fault is planned (1: the next).
    pub nth: u32,
    /// The status it gets.
    pub status: Status,
}

impl CommandFault {
    /// The next I/O command with `opcode` fails with `status`.
    pub const fn io(opcode: u8, status: Status) -> Self {
        CommandFault {
            admin: false,
            opcode,
            nth: 1,
            status,
        }
    }

    /// The next admin command with `opcode` fails with `status`.
    pub const fn admin(opcode: u8, status: Status) -> Self {
        CommandFault {
            admin: true,
            opcode,
            nth: 1,
            status,
        }
    }

    /// The `nth` matching command instead of the next.
    pub const fn nth(mut self, nth: u32) -> Self {
        self.nth = nth;
        self
    }
}

/// Counters of what the controller did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NvmeStats {
    /// Commands fetched from submission queues.
    pub commands: u64,
    /// Admin commands carried out.
    pub admin_commands: u64,
    /// Completions posted (or waiting for room).
    pub completions: u64,
    /// Completions with an error status.
    pub errors: u64,
    /// Flushes.
    pub flushes: u64,
    /// Blocks read by Read commands.
    pub blocks_read: u64,
    /// Blocks written by Write commands.
    pub blocks_written: u64,
    /// Interrupt signals (one per completion queue per batch).
    pub interrupts: u64,
    /// Injected command errors that fired.
    pub injected_errors: u64,
    /// Times CSTS.CFS was set.
    pub fatal_errors: u64,
    /// Controller resets (CC.EN 1 → 0, function reset).
    pub resets: u64,
    /// Doorbell stores ignored (controller not ready or fatal, no such queue, value past the
    /// queue, not on the stride).
    pub ignored_doorbells: u64,
    /// Register stores of a width the registers do not take.
    pub ignored_register_writes: u64,
    /// Commands fetched and not carried out yet.
    pub pending: u64,
}

/// The knobs of a controller (see [`SimNvmeBuilder`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NvmeConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// LBA size: a power of two, 512..=65536.
    pub lba_size: u32,
    /// Namespace size in blocks.
    pub blocks: u64,
    /// MDTS: 0 (no limit) or the largest transfer as a power of two of 4 KiB pages.
    pub mdts: u8,
    /// Largest I/O queue, in entries (CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// I/O submission and completion queues the controller supports.
    pub io_queues: u16,
    /// Ticks between a command's fetch and its execution.
    pub completion_delay: u32,
    /// Ordering of commands that come due together.
    pub reorder: Reorder,
    /// CAP.DSTRD.
    pub doorbell_stride: u8,
    /// Ticks between CC.EN and CSTS.RDY.
    pub ready_delay: u32,
    /// What blocks hold before they are written.
    pub prefill: Prefill,
    /// Command errors planned from the start.
    pub faults: Vec<CommandFault>,
    /// Set CSTS.CFS instead of carrying out the `n`th command fetched.
    pub fatal_after: Option<u64>,
    /// CAP.TO: worst-case time to ready, in 500 ms units.
    pub ready_timeout: u8,
    /// CAP.MPSMIN: the smallest memory page is `4 KiB << mpsmin`.
    pub mpsmin: u8,
    /// Metadata bytes per block in the namespace's LBA format (the `MS` field).
    pub metadata_bytes: u16,
    /// The index of the LBA format in use in Identify Namespace (0..=63).
    pub lba_format_index: u8,
    /// Ticks from CC.EN 1 → 0 to CSTS.RDY 0.
    pub disable_delay: u32,
    /// Namespaces 2, 3, ...: LBA size and blocks of each.
    pub extra_namespaces: Vec<(u32, u64)>,
    /// What Set Features (Number of Queues) reports as allocated: submission and
    /// completion queues (`None`: `io_queues` of each).
    pub granted_queues: Option<(u16, u16)>,
}

/// The description of a simulated NVMe controller. Defaults: seed 0, 512-byte LBAs,
/// 16 MiB, MDTS 7 (512 KiB), 1024-entry queues, 8 I/O queues, no delays, in order,
/// DSTRD 0, zero-filled.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until attached"]
pub struct SimNvmeBuilder {
    cfg: NvmeConfig,
    blocks_set: bool,
    function: FunctionConfig,
}

impl SimNvmeBuilder {
    /// Seed of the reordering (and of [`Prefill::Seeded`] if you use it with this seed).
    pub fn seed(mut self, seed: u64) -> Self {
        self.cfg.seed = seed;
        self
    }

    /// LBA size: a power of two from 512 to 65536 bytes.
    pub fn lba_size(mut self, bytes: u32) -> Self {
        self.cfg.lba_size = bytes;
        self
    }

    /// Namespace size in blocks. Default: 16 MiB worth.
    pub fn blocks(mut self, blocks: u64) -> Self {
        self.cfg.blocks = blocks;
        self.blocks_set = true;
        self
    }

    /// Maximum Data Transfer Size: 0 (no limit) or 1..=10 (2^n pages of 4 KiB).
    pub fn mdts(mut self, mdts: u8) -> Self {
        self.cfg.mdts = mdts;
        self
    }

    /// The largest I/O queue in entries, 2..=65536 (CAP.MQES is this minus one).
    pub fn max_queue_entries(mut self, entries: u32) -> Self {
        self.cfg.max_queue_entries = entries;
        self
    }

    /// Number of I/O queues (each kind), 1..=1024. MSI-X vectors: this plus one.
    pub fn io_queues(mut self, n: u16) -> Self {
        self.cfg.io_queues = n;
        self
    }

    /// Ticks from a command's fetch to its execution (0: at the doorbell).
    pub fn completion_delay(mut self, ticks: u32) -> Self {
        self.cfg.completion_delay = ticks;
        self
    }

    /// How commands that come due together are ordered.
    pub fn reorder(mut self, r: Reorder) -> Self {
        self.cfg.reorder = r;
        self
    }

    /// CAP.DSTRD: doorbells `4 << stride` bytes apart, 0..=8.
    pub fn doorbell_stride(mut self, stride: u8) -> Self {
        self.cfg.doorbell_stride = stride;
        self
    }

    /// Ticks from CC.EN to CSTS.RDY.
    pub fn ready_delay(mut self, ticks: u32) -> Self {
        self.cfg.ready_delay = ticks;
        self
    }

    /// Ticks from CC.EN 1 → 0 on a ready controller to CSTS.RDY reading 0 (default 0: at
    /// once). The reset itself happens at the store; setting CC.EN again while RDY still
    /// reads 1 fails the enable ([`SimNvme::enable_error`]).
    pub fn disable_delay(mut self, ticks: u32) -> Self {
        self.cfg.disable_delay = ticks;
        self
    }

    /// What blocks hold before anything writes them.
    pub fn prefill(mut self, p: Prefill) -> Self {
        self.cfg.prefill = p;
        self
    }

    /// Plans a command error from the start.
    pub fn fault(mut self, f: CommandFault) -> Self {
        self.cfg.faults.push(f);
        self
    }

    /// Sets CSTS.CFS instead of carrying out the `n`th command fetched (1-based, admin
    /// commands included).
    pub fn fatal_after(mut self, n: u64) -> Self {
        self.cfg.fatal_after = Some(n);
        self
    }

    /// CAP.TO: the worst-case time from CC.EN to CSTS.RDY the controller promises, in
    /// 500 ms units (default 15: 7.5 s). It changes only what CAP says, not
    /// [`ready_delay`](Self::ready_delay).
    pub fn ready_timeout(mut self, units: u8) -> Self {
        self.cfg.ready_timeout = units;
        self
    }

    /// CAP.MPSMIN, 0..=4: the smallest memory page the controller takes is
    /// `4 KiB << mpsmin` (default 0). Enabling with a smaller CC.MPS fails, and MDTS counts
    /// in pages of this size.
    pub fn mpsmin(mut self, mpsmin: u8) -> Self {
        self.cfg.mpsmin = mpsmin;
        self
    }

    /// Metadata bytes per block in the namespace's only LBA format (its `MS` field; default
    /// 0). Identify Namespace reports it; reads and writes still move the data only (the
    /// model keeps no metadata), so a driver must refuse such a namespace.
    pub fn metadata_bytes(mut self, bytes: u16) -> Self {
        self.cfg.metadata_bytes = bytes;
        self
    }

    /// Where Identify Namespace lists the LBA format in use, 0..=63 (default 0): it reports
    /// `index + 1` formats (NLBAF = `index`), those before it of another size (4096 bytes,
    /// or 512 when [`lba_size`](Self::lba_size) is 4096) and not in use, and FLBAS names
    /// `index` (bits 3:0 its low four bits, bits 6:5 its high two, as NVMe 2.0 has it for
    /// more than 16 formats).
    pub fn lba_format_index(mut self, index: u8) -> Self {
        self.cfg.lba_format_index = index;
        self
    }

    /// What Set Features / Get Features (Number of Queues) report as allocated, 1..=65535
    /// submission and `cqs` completion queues, instead of [`io_queues`](Self::io_queues)
    /// of each (the default). The queues the controller takes are still `io_queues`: a
    /// report above it lies, as firmware can.
    pub fn granted_queues(mut self, sqs: u16, cqs: u16) -> Self {
        self.cfg.granted_queues = Some((sqs, cqs));
        self
    }

    /// Adds a namespace after the ones there are (namespace 1 is always there, from
    /// [`lba_size`](Self::lba_size) and [`blocks`](Self::blocks)): the first call makes
    /// namespace 2, the next 3, and so on, each with its own LBA size (a power of two,
    /// 512..=65536, no metadata) and size in blocks. Identify Controller's NN and the
    /// active namespace list count them; reads, writes and flushes reach each.
    pub fn namespace(mut self, lba_size: u32, blocks: u64) -> Self {
        self.cfg.extra_namespaces.push((lba_size, blocks));
        self
    }

    /// Where the function goes and its DMA path (default: the bus's).
    pub fn function(mut self, config: FunctionConfig) -> Self {
        self.function = config;
        self
    }

    fn validate(mut self) -> Result<NvmeConfig> {
        let c = &mut self.cfg;
        let bad = |what, value: u64| Err(Error::BadArgument { what, value });
        if !c.lba_size.is_power_of_two() || !(512..=65536).contains(&c.lba_size) {
            return bad(
                "NVMe LBA size (a power of two, 512..=65536)",
                c.lba_size as u64,
            );
        }
        for &(lba, blocks) in &c.extra_namespaces {
            if !lba.is_power_of_two() || !(512..=65536).contains(&lba) {
                return bad(
                    "NVMe namespace LBA size (a power of two, 512..=65536)",
                    lba as u64,
                );
            }
            if blocks == 0 || blocks.checked_mul(lba as u64).is_none() {
                return bad("NVMe namespace blocks", blocks);
            }
        }
        if c.extra_namespaces.len() > 1023 {
            return bad(
                "NVMe namespaces (1..=1024)",
                c.extra_namespaces.len() as u64 + 1,
            );
        }
        if let Some((sqs, cqs)) = c.granted_queues {
            if sqs == 0 || cqs == 0 {
                return bad("NVMe granted queues (1..=65535 each)", 0);
            }
        }
        if c.lba_format_index > 63 {
            return bad("NVMe LBA format index (0..=63)", c.lba_format_index as u64);
        }
        if c.mpsmin > MPS_MAX as u8 {
            return bad("NVMe CAP.MPSMIN (0..=4)", c.mpsmin as u64);
        }
        if !self.blocks_set {
            c.blocks = (16 << 20) / c.lba_size as u64;
        }
        if c.blocks == 0 || c.blocks.checked_mul(c.lba_size as u64).is_none() {
            return bad("NVMe namespace blocks", c.blocks);
        }
        if c.mdts > 10 {
            return bad("NVMe MDTS (0..=10)", c.mdts as u64);
        }
        if !(2..=65536).contains(&c.max_queue_entries) {
            return bad("NVMe queue entries (2..=65536)", c.max_queue_entries as u64);
        }
        if !(1..=1024).contains(&c.io_queues) {
            return bad("NVMe I/O queues (1..=1024)", c.io_queues as u64);
        }
        if c.doorbell_stride > 8 {
            return bad("NVMe doorbell stride (0..=8)", c.doorbell_stride as u64);
        }
        Ok(self.cfg)
    }

    /// Plugs the controller into `bus`.
    pub fn attach(self, bus: &SimPciBus) -> Result<SimNvme> {
        let function = self.function;
        let cfg = self.validate()?;
        let f = bus.add(Box::new(NvmeModel::new(cfg)), function)?;
        Ok(SimNvme { function: f })
    }
}

/// A handle on a simulated NVMe controller plugged into a [`SimPciBus`]: its function
/// (what a driver gets from the bus), the machine-side controls (time, fatal status,
/// command errors) and the namespace's bytes.
#[derive(Clone, Debug)]
pub struct SimNvme {
    function: Arc<SimPciFunction>,
}

impl SimNvme {
    /// The description of a controller with the defaults.
    pub fn builder() -> SimNvmeBuilder {
        SimNvmeBuilder {
            cfg: NvmeConfig {
                seed: 0,
                lba_size: 512,
                blocks: 0,
                mdts: 7,
                max_queue_entries: 1024,
                io_queues: 8,
                completion_delay: 0,
                reorder: Reorder::InOrder,
                doorbell_stride: 0,
                ready_delay: 0,
                prefill: Prefill::Zeros,
                faults: Vec::new(),
                fatal_after: None,
                ready_timeout: 0x0F,
                mpsmin: 0,
                metadata_bytes: 0,
                lba_format_index: 0,
                disable_delay: 0,
                extra_namespaces: Vec::new(),
                granted_queues: None,
            },
            blocks_set: false,
            function: FunctionConfig::default(),
        }
    }

    /// The PCI function.
    pub fn function(&self) -> &Arc<SimPciFunction> {
        &self.function
    }

    /// Runs `f` on the model with a device context. The function was made with an
    /// [`NvmeModel`] and models are never replaced, so the default is never taken.
    fn with<R: Default>(
        &self,
        f: impl FnOnce(&mut NvmeModel, &mut crate::pci::DeviceContext<'_>) -> R,
    ) -> R {
        self.function
            .with_device::<NvmeModel, R>(f)
            .unwrap_or_default()
    }

    /// One tick: commands whose delay is over are carried out.
    pub fn step(&self) {
        self.with(|m, ctx| m.tick(ctx));
    }

    /// `n` ticks.
    pub fn steps(&self, n: u32) {
        self.with(|m, ctx| (0..n).for_each(|_| m.tick(ctx)));
    }

    /// Carries out every fetched command now. Returns how many there were.
    pub fn run_until_idle(&self) -> usize {
        self.with(|m, ctx| m.drain(ctx))
    }

    /// Sets CSTS.CFS now: pending commands are dropped and the controller does nothing
    /// until the host resets it (CC.EN 1 → 0).
    pub fn raise_fatal(&self) {
        self.with(|m, _| m.fatal("raised on demand (SimNvme::raise_fatal)"));
    }

    /// Changes the completion delay for commands fetched from now on (ticks; a large
    /// value makes commands that never complete in a test's time).
    pub fn set_completion_delay(&self, ticks: u32) {
        self.with(|m, _| m.set_completion_delay(ticks));
    }

    /// Plans a command error.
    pub fn inject(&self, fault: CommandFault) {
        self.with(|m, _| m.arm(fault));
    }

    /// Why CSTS.CFS was last set, if it was.
    pub fn fatal_reason(&self) -> Option<&'static str> {
        self.with(|m, _| m.fatal_reason())
    }

    /// Why the last CC.EN did not make the controller ready, if it did not.
    pub fn enable_error(&self) -> Option<&'static str> {
        self.with(|m, _| m.enable_error())
    }

    /// Counters.
    pub fn stats(&self) -> NvmeStats {
        self.with(|m, _| m.stats())
    }

    /// The knobs it was built with.
    pub fn config(&self) -> NvmeConfig {
        self.with(|m, _| Some(m.config().clone()))
            .unwrap_or_else(|| Self::builder().cfg)
    }

    /// The LBA size.
    pub fn lba_size(&self) -> u64 {
        self.with(|m, _| m.store().lba_size)
    }

    /// Namespace 1's size in blocks.
    pub fn blocks(&self) -> u64 {
        self.with(|m, _| m.store().blocks)
    }

    /// Blocks written at least once (by commands or [`write_namespace`](Self::write_namespace)).
    pub fn written_blocks(&self) -> u64 {
        self.with(|m, _| m.store().written_blocks())
    }

    /// Namespace `nsid`'s LBA size, if the controller has it.
    fn ns_lba_size(&self, nsid: u32) -> Result<u64> {
        self.with(|m, _| m.ns_store(nsid).map(|s| s.lba_size))
            .ok_or(Error::BadArgument {
                what: "NVMe namespace ID (not one of the controller's namespaces)",
                value: nsid as u64,
            })
    }

    fn check(&self, nsid: u32, offset: u64, len: u64) -> Result<()> {
        self.ns_lba_size(nsid)?;
        dmakit::descriptor::check_range(
            "NVMe namespace",
            offset,
            len,
            self.with(|m, _| m.ns_store(nsid).map_or(0, |s| s.bytes())),
        )
    }

    /// `len` bytes of namespace `nsid` at byte `offset`: what a Read would return.
    pub fn namespace_bytes(&self, nsid: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check(nsid, offset, len as u64)?;
        let mut buf = vec![0u8; len];
        self.with(|m, _| {
            if let Some(s) = m.ns_store(nsid) {
                s.read(offset, &mut buf)
            }
        });
        Ok(buf)
    }

    /// Block `lba` of namespace `nsid`.
    pub fn block(&self, nsid: u32, lba: u64) -> Result<Vec<u8>> {
        let size = self.ns_lba_size(nsid)?;
        let offset = lba.checked_mul(size).ok_or(Error::Overflow {
            what: "NVMe block",
            start: lba,
            len: size,
        })?;
        self.namespace_bytes(nsid, offset, size as usize)
    }

    /// Writes `data` into namespace `nsid` at byte `offset`, as if it had always been
    /// there.
    pub fn write_namespace(&self, nsid: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.check(nsid, offset, data.len() as u64)?;
        self.with(|m, _| {
            if let Some(s) = m.ns_store_mut(nsid) {
                s.write(offset, data)
            }
        });
        Ok(())
    }
}
