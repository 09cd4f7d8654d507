//! A userspace NVMe driver on dmakit alone: admin queue, Identify, I/O queue pairs polled
//! or completed by MSI-X, reads and writes of any descriptor through PRP lists.
//!
//! Everything the controller touches is dmakit: its registers are BAR0 reached with
//! [`mapped_read32`]/[`mapped_write32`] through a VFIO [`Bar`]; its queues and data buffers
//! are [`BufferMemoryDescriptor`](dmakit::descriptor::BufferMemoryDescriptor)s prepared by
//! mapped [`DmaCommand`]s ([`DmaBuffer`]), so the controller sees
//! IO addresses from the [`VfioMapper`](crate::vfio::VfioMapper) and the emulated IOMMU
//! checks every access.
//!
//! Bring-up ([`NvmeController::new`], NVMe Base Specification §3.5.1): disable (`CC.EN = 0`,
//! wait `CSTS.RDY = 0`), program the admin queue (`AQA`, `ASQ`, `ACQ`), enable with 64-byte
//! submission and 16-byte completion entries and 4 KiB memory pages, wait `CSTS.RDY = 1`,
//! read `MDTS` from Identify Controller.
//!
//! Data: [`NvmeController::transfer`] prepares any
//! [`MemoryDescriptor`] (a scattered `MultiMemoryDescriptor` too) with a mapped
//! [`DmaCommand`] under the NVMe [`SegmentSpec`](dmakit::dma::SegmentSpec) ([`nvme_spec`]),
//! whose segments are the PRP entries ([`prp_entries`]); beyond two pages they go in a PRP
//! list page from dmakit. [`NvmeController::transfer_command`] takes a command the caller
//! prepared, for example a bypassed one forced through a bounce pool.
//!
//! Completion: by spinning on the completion queue's phase tags, or, for a queue pair made
//! with [`NvmeController::create_io_queue_pair_with_interrupt`], by sleeping on a
//! [`CompletionSignal`] that the MSI-X vector's [`Msi`](crate::vfio::Msi) thread raises.
//!
//! Queue depth: [`NvmeController::read_queued`] keeps up to one read per pre-mapped buffer
//! outstanding on one queue pair (push many, ring once, reap by phase tag, refill), every
//! completion's identifier and status checked.
//!
//! Not yet: several queue pairs in flight at once, PRP lists longer than one page, namespace
//! management, and a reset path after a controller fatal status.
//!
//! ```no_run
//! # use dmakit_linux::{Host, nvme::NvmeController, vfio::*};
//! # use std::sync::Arc;
//! # let host = Arc::new(Host::new()?);
//! # let container = Arc::new(Container::open()?);
//! let dev = VfioDevice::open(&container, PciAddress::parse("0000:00:04.0")?)?;
//! let mapper: Arc<dyn dmakit::mapper::Mapper> =
//!     Arc::new(VfioMapper::new(container.clone(), host.clone(), u64::MAX)?);
//! let bar0 = Bar::map(&dev, 0, host.clone())?;
//! let nvme = NvmeController::new(&dev, bar0, host.clone(), mapper)?;
//! println!("serial {}", nvme.identify_controller()?.serial);
//! # Ok::<(), dmakit::Error>(())
//! ```

mod dma;
mod events;
mod queue;
mod queued;
mod signal;

pub use dma::DmaBuffer;
pub use dmakit_nvme::command::{Command, Completion};
pub use dmakit_nvme::identify::{ControllerIdentity, NamespaceIdentity};
pub use dmakit_nvme::prp::{nvme_spec, prp_entries, PRP_PAGE};
pub use events::EventQueue;
pub use queue::{check_status, Outstanding, QueuePair};
pub use queued::QueuedStats;
pub use signal::CompletionSignal;

use crate::host::Host;
use crate::vfio::{Bar, VfioDevice};
use dmakit::descriptor::MemoryDescriptor;
use dmakit::dma::PrepareOptions;
use dmakit::dma::{DmaCommand, SegmentFormat};
use dmakit::map::{mapped_read32, mapped_write32};
use dmakit::mapper::Mapper;
use dmakit::{Direction, Error, PhysAddr, Result};
use dmakit_nvme::command::{ADMIN_CREATE_CQ, ADMIN_CREATE_SQ, ADMIN_IDENTIFY, NVM_READ, NVM_WRITE};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const REG_CAP: u64 = 0x00;
const REG_VS: u64 = 0x08;
const REG_CC: u64 = 0x14;
const REG_CSTS: u64 = 0x1c;
const REG_AQA: u64 = 0x24;
const REG_ASQ: u64 = 0x28;
const REG_ACQ: u64 = 0x30;
const DOORBELLS: u64 = 0x1000;
const CC_EN: u32 = 1;
const CC_IOSQES_64: u32 = 6 << 16;
const CC_IOCQES_16: u32 = 4 << 20;
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 2;
const ADMIN_ENTRIES: u16 = 32;

/// An NVMe controller behind VFIO.
pub struct NvmeController {
    host: Arc<Host>,
    mapper: Arc<dyn Mapper>,
    bar: Bar,
    cap: u64,
    timeout: Duration,
    max_transfer: u64,
    admin: Mutex<QueuePair>,
}

impl NvmeController {
    /// Resets and enables the controller with an admin queue.
    pub fn new(
        device: &VfioDevice,
        bar: Bar,
        host: Arc<Host>,
        mapper: Arc<dyn Mapper>,
    ) -> Result<NvmeController> {
        if device.pci().class()? != 0x01_0802 {
            return Err(Error::NotAttached {
                what: "NVMe driver",
                why: "the function is not an NVMe controller (class 0x010802)",
            });
        }
        device.enable_bus_master()?;
        let h = &*host;
        let cap = read64(h, &bar, REG_CAP)?;
        // CAP.TO: worst-case time to become ready, in 500 ms units.
        let timeout = Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1));
        if (cap >> 37) & 1 == 0 {
            return Err(Error::Unsupported {
                what: "NVMe controller without the NVM command set (CAP.CSS bit 0)",
            });
        }
        let mpsmin = 1u64 << (12 + ((cap >> 48) & 0xf));
        if mpsmin > PRP_PAGE {
            return Err(Error::Unsupported {
                what: "NVMe controller whose minimum memory page is larger than 4 KiB",
            });
        }
        // Disable, and wait until it says so.
        let cc = mapped_read32(h, bar.reg(REG_CC, 4)?)?;
        if cc & CC_EN != 0 {
            mapped_write32(h, bar.reg(REG_CC, 4)?, cc & !CC_EN)?;
        }
        wait_ready(h, &bar, false, timeout)?;
        let stride = 4u64 << ((cap >> 32) & 0xf);
        let (sq_db, cq_db) = doorbells(&bar, 0, stride)?;
        let admin = QueuePair::new(&host, &mapper, 0, ADMIN_ENTRIES, sq_db, cq_db)?;
        let aqa = (ADMIN_ENTRIES as u32 - 1) << 16 | (ADMIN_ENTRIES as u32 - 1);
        mapped_write32(h, bar.reg(REG_AQA, 4)?, aqa)?;
        write64(h, &bar, REG_ASQ, admin.sq_iova())?;
        write64(h, &bar, REG_ACQ, admin.cq_iova())?;
        mapped_write32(h, bar.reg(REG_CC, 4)?, CC_EN | CC_IOSQES_64 | CC_IOCQES_16)?;
        wait_ready(h, &bar, true, timeout)?;
        let mut nvme = NvmeController {
            host,
            mapper,
            bar,
            cap,
            timeout,
            max_transfer: PRP_PAGE,
            admin: Mutex::new(admin),
        };
        // MDTS is in units of the minimum page; 0 means no limit, where one PRP list page
        // (512 entries after PRP1) is this driver's.
        let mdts = nvme.identify_controller()?.mdts;
        let pages = if mdts == 0 {
            513
        } else {
            (1u64 << mdts).min(513)
        };
        nvme.max_transfer = pages * mpsmin;
        Ok(nvme)
    }

    /// The longest transfer one command may carry (from MDTS, at most a PRP list's worth).
    pub fn max_transfer(&self) -> u64 {
        self.max_transfer
    }

    /// Reads (`write` false) or writes `len` bytes at `offset` of `md` from or to block
    /// `lba` of namespace `ns`: a mapped [`DmaCommand`] under the NVMe spec
    /// ([`nvme_spec`]) turns the descriptor — any descriptor, a scattered
    /// `MultiMemoryDescriptor` too — into segments that are the PRP entries; beyond two
    /// pages they go into a PRP list page allocated through dmakit. Returns the number of
    /// PRP entries used.
    #[allow(clippy::too_many_arguments)]
    pub fn transfer(
        &self,
        qp: &mut QueuePair,
        ns: &NamespaceIdentity,
        write: bool,
        lba: u64,
        md: Arc<dyn MemoryDescriptor>,
        offset: u64,
        len: u64,
    ) -> Result<usize> {
        self.check_io(ns, lba, len)?;
        let mut cmd = DmaCommand::builder(self.host.clone())
            .spec(nvme_spec(self.max_transfer)?)
            .mapper(self.mapper.clone())
            .build()?;
        cmd.set_memory_descriptor(md)?;
        cmd.prepare(PrepareOptions::range(offset, len))?;
        let result = self.transfer_command(qp, &cmd, ns, write, lba, len);
        let completed = cmd.complete();
        let n = result?;
        completed?;
        Ok(n)
    }

    /// As [`transfer`](Self::transfer), with a command the caller prepared (`len` bytes
    /// from its prepared offset) whose segments the controller can reach: for example a
    /// bypassed command whose bounce buffer the caller mapped with
    /// [`VfioMapper::map_identity`](crate::vfio::VfioMapper::map_identity). The caller
    /// completes the command.
    pub fn transfer_command(
        &self,
        qp: &mut QueuePair,
        cmd: &DmaCommand<Arc<Host>>,
        ns: &NamespaceIdentity,
        write: bool,
        lba: u64,
        len: u64,
    ) -> Result<usize> {
        let (blocks, nsid) = (self.check_io(ns, lba, len)?, ns.nsid);
        let max = (len / PRP_PAGE + 2) as usize;
        let mut out = vec![0u8; max * 16];
        let mut at = 0;
        let n = cmd.gen_segments(&mut at, &mut out)?;
        if at != len {
            return Err(Error::Internal {
                what: "NVMe: the DMA command did not describe the whole transfer in one go",
            });
        }
        let segs = (0..n)
            .map(|i| SegmentFormat::Host64.read(&out, i))
            .collect::<Result<Vec<_>>>()?;
        let (prp1, rest) = prp_entries(&segs)?;
        let mut list = None;
        let prp2 = match rest {
            None => 0,
            Some(v) if v.len() == 1 => v[0],
            Some(v) => {
                let page = DmaBuffer::new(&self.host, &self.mapper, PRP_PAGE, Direction::Out)?;
                let bytes: Vec<u8> = v.iter().flat_map(|e| e.to_le_bytes()).collect();
                page.write(0, &bytes)?;
                let iova = page.iova();
                list = Some(page);
                iova
            }
        };
        let c = Command::new(if write { NVM_WRITE } else { NVM_READ }, nsid)
            .with_prps(prp1, prp2)
            .with_cdw(10, lba as u32)
            .with_cdw(11, (lba >> 32) as u32)
            .with_cdw(12, blocks as u32 - 1);
        let r = qp.execute(c, self.timeout);
        if let Some(page) = list {
            page.release()?;
        }
        r?;
        Ok(segs.len())
    }

    /// Checks an I/O of `len` bytes at block `lba` of `ns`; returns its block count.
    fn check_io(&self, ns: &NamespaceIdentity, lba: u64, len: u64) -> Result<u64> {
        let bs = ns.block_size as u64;
        if len == 0 || !len.is_multiple_of(bs) || len > self.max_transfer {
            return Err(Error::BadArgument {
                what: "NVMe transfer length: a non-zero multiple of the block size, at most max_transfer()",
                value: len,
            });
        }
        let blocks = len / bs;
        if lba.checked_add(blocks).is_none_or(|end| end > ns.blocks) {
            return Err(Error::OutOfBounds {
                what: "NVMe namespace blocks",
                offset: lba,
                len: blocks,
                limit: ns.blocks,
            });
        }
        Ok(blocks)
    }

    /// The controller's capabilities register.
    pub fn capabilities(&self) -> u64 {
        self.cap
    }

    /// The version register (`0x00010400` is NVMe 1.4).
    pub fn version(&self) -> Result<u32> {
        mapped_read32(&*self.host, self.bar.reg(REG_VS, 4)?)
    }

    /// Identify Controller, read into a dmakit buffer by the controller.
    pub fn identify_controller(&self) -> Result<ControllerIdentity> {
        ControllerIdentity::parse(&self.identify(1, 0)?)
    }

    /// Identify Namespace `nsid`.
    pub fn identify_namespace(&self, nsid: u32) -> Result<NamespaceIdentity> {
        NamespaceIdentity::parse(nsid, &self.identify(0, nsid)?)
    }

    fn identify(&self, cns: u32, nsid: u32) -> Result<Vec<u8>> {
        let buf = DmaBuffer::new(&self.host, &self.mapper, PRP_PAGE, Direction::In)?;
        let cmd = Command::new(ADMIN_IDENTIFY, nsid)
            .with_prps(buf.iova(), 0)
            .with_cdw(10, cns);
        let r = self.admin().execute(cmd, self.timeout);
        let mut out = vec![0u8; PRP_PAGE as usize];
        buf.read(0, &mut out)?;
        buf.release()?;
        r?;
        Ok(out)
    }

    /// Creates I/O queue pair `qid` (completion queue, then submission queue) with
    /// `entries` slots, polled (no interrupt).
    pub fn create_io_queue_pair(&self, qid: u16, entries: u16) -> Result<QueuePair> {
        self.create_queue_pair(qid, entries, None)
    }

    /// As [`create_io_queue_pair`](Self::create_io_queue_pair), with the completion queue
    /// raising MSI-X vector `vector`; waits for completions sleep on `signal`, which the
    /// caller raises from that vector's [`Msi`](crate::vfio::Msi) handler.
    pub fn create_io_queue_pair_with_interrupt(
        &self,
        qid: u16,
        entries: u16,
        vector: u16,
        signal: Arc<CompletionSignal>,
    ) -> Result<QueuePair> {
        self.create_queue_pair(qid, entries, Some((vector, Some(signal))))
    }

    /// An I/O queue pair whose completion queue raises MSI-X vector `vector`, for an
    /// [`EventQueue`]: the vector's [`Msi`](crate::vfio::Msi) handler raises a
    /// `DmaEventSource`, which takes the completions. Enable the vector (`Msi::to_sink`)
    /// before creating the queue pair: QEMU's controller delivers nothing on a vector that
    /// was not enabled when the completion queue was created (seen in the guest); connect
    /// the event source to the vector through a forwarding sink once the queue exists.
    pub fn create_io_queue_pair_for_events(
        &self,
        qid: u16,
        entries: u16,
        vector: u16,
    ) -> Result<QueuePair> {
        self.create_queue_pair(qid, entries, Some((vector, None)))
    }

    fn create_queue_pair(
        &self,
        qid: u16,
        entries: u16,
        irq: Option<(u16, Option<Arc<CompletionSignal>>)>,
    ) -> Result<QueuePair> {
        let mqes = (self.cap & 0xffff) as u16 + 1;
        if qid == 0 || entries < 2 || entries > mqes {
            return Err(Error::BadArgument {
                what: "NVMe I/O queue: id 1.. and 2..=CAP.MQES+1 entries",
                value: entries as u64,
            });
        }
        let stride = 4u64 << ((self.cap >> 32) & 0xf);
        let (sq_db, cq_db) = doorbells(&self.bar, qid, stride)?;
        let mut qp = QueuePair::new(&self.host, &self.mapper, qid, entries, sq_db, cq_db)?;
        let size_id = (entries as u32 - 1) << 16 | qid as u32;
        let mut admin = self.admin();
        // Create I/O CQ: physically contiguous (PC, bit 0), interrupts (IEN, bit 1) on
        // vector IV (bits 31:16) if asked.
        let cdw11 = match &irq {
            Some((v, _)) => (*v as u32) << 16 | 2 | 1,
            None => 1,
        };
        admin.execute(
            Command::new(ADMIN_CREATE_CQ, 0)
                .with_prps(qp.cq_iova(), 0)
                .with_cdw(10, size_id)
                .with_cdw(11, cdw11),
            self.timeout,
        )?;
        // Create I/O SQ: contiguous, bound to CQ `qid`.
        admin.execute(
            Command::new(ADMIN_CREATE_SQ, 0)
                .with_prps(qp.sq_iova(), 0)
                .with_cdw(10, size_id)
                .with_cdw(11, (qid as u32) << 16 | 1),
            self.timeout,
        )?;
        if let Some((_, Some(signal))) = irq {
            qp.set_signal(signal);
        }
        Ok(qp)
    }

    /// Reads `blocks` blocks from `lba` of namespace `nsid` into `buf` (at most two pages:
    /// PRP1 and PRP2).
    pub fn read(
        &self,
        qp: &mut QueuePair,
        nsid: u32,
        lba: u64,
        blocks: u16,
        buf: &DmaBuffer,
    ) -> Result<()> {
        self.rw(qp, NVM_READ, nsid, lba, blocks, buf)
    }

    /// Writes `blocks` blocks from `buf` to `lba` of namespace `nsid` (at most two pages).
    pub fn write(
        &self,
        qp: &mut QueuePair,
        nsid: u32,
        lba: u64,
        blocks: u16,
        buf: &DmaBuffer,
    ) -> Result<()> {
        self.rw(qp, NVM_WRITE, nsid, lba, blocks, buf)
    }

    fn rw(
        &self,
        qp: &mut QueuePair,
        opcode: u8,
        nsid: u32,
        lba: u64,
        blocks: u16,
        buf: &DmaBuffer,
    ) -> Result<()> {
        if blocks == 0 {
            return Err(Error::ZeroSize {
                what: "NVMe read/write block count",
            });
        }
        let len = buf.descriptor().capacity();
        if len > 2 * PRP_PAGE || !buf.iova().is_multiple_of(PRP_PAGE) {
            return Err(Error::Unsupported {
                what: "NVMe transfers of more than two pages (PRP lists are not written yet)",
            });
        }
        let prp2 = if len > PRP_PAGE {
            buf.iova() + PRP_PAGE
        } else {
            0
        };
        let cmd = Command::new(opcode, nsid)
            .with_prps(buf.iova(), prp2)
            .with_cdw(10, lba as u32)
            .with_cdw(11, (lba >> 32) as u32)
            .with_cdw(12, blocks as u32 - 1);
        qp.execute(cmd, self.timeout).map(drop)
    }

    /// Disables the controller (`CC.EN = 0`) and unmaps the admin queue.
    pub fn shutdown(self) -> Result<()> {
        let h = &*self.host;
        let cc = mapped_read32(h, self.bar.reg(REG_CC, 4)?)?;
        mapped_write32(h, self.bar.reg(REG_CC, 4)?, cc & !CC_EN)?;
        wait_ready(h, &self.bar, false, self.timeout)?;
        let admin = self.admin.into_inner().unwrap_or_else(|p| p.into_inner());
        admin.release()
    }

    fn admin(&self) -> MutexGuard<'_, QueuePair> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for NvmeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeController")
            .field("cap", &format_args!("{:#x}", self.cap))
            .field("bar", &self.bar)
            .finish()
    }
}

/// The SQ tail and CQ head doorbells of queue `qid`.
fn doorbells(bar: &Bar, qid: u16, stride: u64) -> Result<(PhysAddr, PhysAddr)> {
    let sq = DOORBELLS + 2 * qid as u64 * stride;
    Ok((bar.reg(sq, 4)?, bar.reg(sq + stride, 4)?))
}

/// A 64-bit register as two 32-bit reads (low, then high), as the specification allows.
fn read64(h: &Host, bar: &Bar, off: u64) -> Result<u64> {
    let lo = mapped_read32(h, bar.reg(off, 4)?)? as u64;
    let hi = mapped_read32(h, bar.reg(off + 4, 4)?)? as u64;
    Ok(hi << 32 | lo)
}

/// A 64-bit register as two 32-bit writes (low, then high).
fn write64(h: &Host, bar: &Bar, off: u64, v: u64) -> Result<()> {
    mapped_write32(h, bar.reg(off, 4)?, v as u32)?;
    mapped_write32(h, bar.reg(off + 4, 4)?, (v >> 32) as u32)
}

/// Waits until `CSTS.RDY` is `ready`; a fatal status is an error at once.
fn wait_ready(h: &Host, bar: &Bar, ready: bool, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let csts = mapped_read32(h, bar.reg(REG_CSTS, 4)?)?;
        if csts & CSTS_CFS != 0 && ready {
            return Err(Error::NotReady {
                what: "NVMe controller (CSTS.CFS: controller fatal status)",
                addr: csts as u64,
            });
        }
        if (csts & CSTS_RDY != 0) == ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                what: if ready {
                    "NVMe controller did not become ready (CSTS.RDY) within CAP.TO"
                } else {
                    "NVMe controller did not stop (CSTS.RDY still 1) within CAP.TO"
                },
                addr: csts as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
