//! [`IoQueue`]: one I/O queue pair and the reads, writes and flushes it carries.
//!
//! **Any descriptor** ([`IoQueue::read`], [`IoQueue::write`]): a [`DmaCommand`] under the
//! NVMe [`SegmentSpec`](dmakit::dma::SegmentSpec) prepares each piece of the transfer
//! (mapped through the function's IOMMU domain, or bypassing it below the function's
//! address limit); its segments are the PRP entries, written into chained PRP list pages
//! beyond two. A transfer longer than [`Nvme::max_transfer`](crate::Nvme::max_transfer) is
//! split into several commands. A descriptor whose pieces do not meet at page boundaries
//! (which PRP entries cannot describe), that starts at an odd address, or that lies where
//! the device cannot reach, goes through the queue's bounce pool.
//!
//! **Pre-mapped buffers, many in flight** ([`IoQueue::submit_read`],
//! [`IoQueue::submit_write`], [`IoQueue::ring`], [`IoQueue::wait_completions`]): reads and
//! writes of a [`DmaBuffer`] whose device addresses are known, queued up to the ring's
//! depth, the doorbell rung once per batch, completions taken by phase tag.
//!
//! Every command has a timeout; a fatal controller status or a timeout fails every command
//! outstanding on the queue with an error naming it, and holds its memory until the
//! controller is reset (which the next command does). Bad arguments are refused before
//! anything is submitted: a block count the buffer cannot hold, a range past the
//! namespace, a length that is not whole blocks, a namespace whose block is larger than
//! one command may carry.

use crate::command::{Command, NVM_FLUSH, NVM_READ, NVM_WRITE};
use crate::controller::Shared;
use crate::dma::DmaBuffer;
use crate::error::{NvmeError, Op, Result};
use crate::identify::NamespaceIdentity;
use crate::options::QueueOptions;
use crate::prp::{list_contents, list_pages, nvme_spec, prp_entries, PRP_PAGE};
use crate::queue::Ring;
use crate::timer::Deadline;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use dmakit::descriptor::MemoryDescriptor;
use dmakit::device::DmaView;
use dmakit::dma::{BouncePool, DmaCommand, InterruptSink, IoSegment, PrepareOptions, SegmentSpec};
use dmakit::platform::Platform;
use dmakit::Error;

/// What one [`IoQueue::read`] or [`IoQueue::write`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Commands it took (more than one when it was split at the transfer limit).
    pub commands: u32,
    /// PRP entries, over all its commands.
    pub prp_entries: usize,
    /// PRP list pages, over all its commands.
    pub list_pages: usize,
    /// Commands whose data went through the bounce pool.
    pub bounced: u32,
}

/// One finished command from [`IoQueue::wait_completions`].
#[derive(Clone, Debug, PartialEq)]
pub struct Done {
    /// Its command identifier.
    pub cid: u16,
    /// What it was.
    pub op: Op,
    /// Its result: a failed status, a fatal controller status, a timeout or a reset name
    /// the command.
    pub result: Result<()>,
}

/// Counters of one queue pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Commands completed successfully.
    pub commands: u64,
    /// Commands that failed.
    pub failed: u64,
    /// Commands whose data was bounced.
    pub bounced: u64,
    /// PRP list pages allocated (kept for reuse until the queue is dropped).
    pub list_pages: u64,
    /// Times the queue pair was created again after a controller reset.
    pub recreated: u64,
    /// Interrupts its vector delivered.
    pub interrupts: u64,
}

/// Counts a queue's interrupts and passes them on.
struct QueueIrq {
    count: AtomicU64,
    sink: Option<Arc<dyn InterruptSink>>,
}

impl InterruptSink for QueueIrq {
    fn raise(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = &self.sink {
            s.raise();
        }
    }
}

/// What an outstanding command holds until it completes.
struct Inflight<P: Platform + Clone + 'static> {
    op: Op,
    lists: Vec<DmaBuffer<P>>,
    cmd: Option<DmaCommand<P>>,
}

impl<P: Platform + Clone + 'static> Drop for Inflight<P> {
    fn drop(&mut self) {
        // Held until a reset and now let go: the controller no longer reaches the memory,
        // so the preparation ends (a DMA command does not end it by itself).
        if let Some(mut c) = self.cmd.take() {
            let _ = crate::dma::complete_command(&mut c);
        }
    }
}

/// An I/O queue pair. Belongs to one thread at a time (`&mut self` for every command);
/// make one per thread or CPU with [`Nvme::io_queue`](crate::Nvme::io_queue).
pub struct IoQueue<P: Platform + Clone + Send + Sync + 'static> {
    shared: Arc<Shared<P>>,
    /// `None` only while dropping.
    ring: Option<Ring<P>>,
    qid: u16,
    vector: Option<u32>,
    irq: Arc<QueueIrq>,
    generation: u64,
    spec: SegmentSpec,
    bounce: Arc<BouncePool<P>>,
    lists: Vec<DmaBuffer<P>>,
    inflight: BTreeMap<u16, Inflight<P>>,
    stats: QueueStats,
}

impl<P: Platform + Clone + Send + Sync + 'static> IoQueue<P> {
    pub(crate) fn create(shared: Arc<Shared<P>>, options: QueueOptions) -> Result<IoQueue<P>> {
        if options.entries < 2 {
            return Err(Error::BadArgument {
                what: "NVMe I/O queue entries: at least 2",
                value: options.entries as u64,
            }
            .into());
        }
        // The controller's largest queue (CAP.MQES, 0's based: up to 65536) lowers it.
        let mqes = (shared.cap & 0xffff) as u32 + 1;
        let entries = (options.entries as u32).min(mqes) as u16;
        if let Some(v) = options.vector {
            let have = shared.function.interrupts().vectors;
            if v >= have {
                return Err(Error::OutOfBounds {
                    what: "NVMe I/O queue interrupt vector (the function's vectors)",
                    offset: v as u64,
                    len: 1,
                    limit: have as u64,
                }
                .into());
            }
        }
        let mut spec = nvme_spec(shared.max_transfer())?;
        if let DmaView::Bypass { max_address } = shared.view {
            spec = spec.intersect(&SegmentSpec::builder().window(0, max_address).build()?)?;
        }
        // A pending reset first: it gives back the identifiers of queue pairs held for it.
        if shared.needs_reset.load(Ordering::Acquire) {
            shared.recover(false)?;
        }
        let qid = shared.take_qid()?;
        let irq = Arc::new(QueueIrq {
            count: AtomicU64::new(0),
            sink: options.sink.clone(),
        });
        let ring = Self::bring_up(&shared, qid, entries, options.vector, &irq)?;
        let bounce = Arc::new(BouncePool::new(
            shared.platform.clone(),
            "NVMe queue bounce pool",
            shared.options.bounce_bytes,
        ));
        Ok(IoQueue {
            generation: shared.generation.load(Ordering::Acquire),
            shared,
            ring: Some(ring),
            qid,
            vector: options.vector,
            irq,
            spec,
            bounce,
            lists: Vec::new(),
            inflight: BTreeMap::new(),
            stats: QueueStats::default(),
        })
    }

    /// Queue memory, the interrupt route, and the queues on the controller, for queue
    /// identifier `qid` (taken by the caller). On an error the identifier is given back,
    /// unless the controller may still hold a queue of it: then it waits, with the ring's
    /// memory, for the reset that the next command does.
    fn bring_up(
        shared: &Arc<Shared<P>>,
        qid: u16,
        entries: u16,
        vector: Option<u32>,
        irq: &Arc<QueueIrq>,
    ) -> Result<Ring<P>> {
        let ring = Ring::new(&shared.platform, &shared.view, &shared.regs, qid, entries);
        let made = ring.and_then(|ring| match vector {
            Some(v) => shared
                .function
                .enable_interrupt(v, irq.clone())
                .map(|()| ring),
            None => Ok(ring),
        });
        let ring = made.inspect_err(|_| shared.free_qid(qid))?;
        let Err((e, left)) = shared.create_queues(&ring, vector) else {
            return Ok(ring);
        };
        if let Some(v) = vector {
            let _ = shared.function.disable_interrupt(v);
        }
        if left {
            shared.hold_queue(qid, Box::new(ring), true);
        } else {
            drop(ring);
            shared.free_qid(qid);
        }
        Err(e)
    }

    /// The queue identifier.
    pub fn id(&self) -> u16 {
        self.qid
    }

    /// Slots in each ring.
    pub fn entries(&self) -> u16 {
        self.ring.as_ref().map_or(0, |r| r.entries)
    }

    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.inflight.len()
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            interrupts: self.irq.count.load(Ordering::Relaxed),
            ..self.stats
        }
    }

    /// The bounce pool's counters.
    pub fn bounce_stats(&self) -> dmakit::dma::BounceStats {
        self.bounce.stats()
    }

    /// Reads `len` bytes at block `lba` of `ns` into `[offset, offset + len)` of `md`: any
    /// descriptor (IOKit's `IOMemoryDescriptor`, a scattered multi-part one too).
    pub fn read(
        &mut self,
        ns: &NamespaceIdentity,
        lba: u64,
        md: &Arc<dyn MemoryDescriptor>,
        offset: u64,
        len: u64,
    ) -> Result<Transfer> {
        self.transfer(false, ns, lba, md, offset, len)
    }

    /// Writes `[offset, offset + len)` of `md` to block `lba` of `ns`.
    pub fn write(
        &mut self,
        ns: &NamespaceIdentity,
        lba: u64,
        md: &Arc<dyn MemoryDescriptor>,
        offset: u64,
        len: u64,
    ) -> Result<Transfer> {
        self.transfer(true, ns, lba, md, offset, len)
    }

    /// Flush: the controller makes what it acknowledged durable.
    pub fn flush(&mut self, ns: &NamespaceIdentity) -> Result<()> {
        let op = Op::io(NVM_FLUSH, ns.nsid, 0, 0);
        self.run(op, Command::new(NVM_FLUSH, ns.nsid), Vec::new(), None)
    }

    fn transfer(
        &mut self,
        write: bool,
        ns: &NamespaceIdentity,
        lba: u64,
        md: &Arc<dyn MemoryDescriptor>,
        offset: u64,
        len: u64,
    ) -> Result<Transfer> {
        check_range(ns, lba, len)?;
        check_block_fits(ns, self.shared.max_transfer())?;
        dmakit::descriptor::check_range(
            "NVMe transfer in the descriptor",
            offset,
            len,
            md.length(),
        )?;
        let bs = ns.block_size as u64;
        let chunk = max_blocks(self.shared.max_transfer(), bs) * bs;
        let mut report = Transfer::default();
        let mut done = 0;
        while done < len {
            let n = chunk.min(len - done);
            let at = lba + done / bs;
            self.chunk(write, ns, at, md, offset + done, n, &mut report)?;
            done += n;
        }
        Ok(report)
    }

    /// One command's worth: prepare, PRP entries (bounced if they must be), run, complete.
    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &mut self,
        write: bool,
        ns: &NamespaceIdentity,
        lba: u64,
        md: &Arc<dyn MemoryDescriptor>,
        offset: u64,
        len: u64,
        report: &mut Transfer,
    ) -> Result<()> {
        self.ready()?;
        let blocks = (len / ns.block_size as u64) as u32;
        let op = if write {
            Op::write(ns.nsid, lba, blocks)
        } else {
            Op::read(ns.nsid, lba, blocks)
        };
        let mut cmd = self.command()?;
        cmd.set_memory_descriptor(md.clone())?;
        cmd.prepare(PrepareOptions::range(offset, len))?;
        let (prp1, entries, bounced) = match prp_of(&mut cmd) {
            Ok(x) => x,
            Err(e) => return Err(finish(cmd, e)),
        };
        let (prp2, lists) = match self.list_pages_for(&entries) {
            Ok(x) => x,
            Err(e) => return Err(finish(cmd, e)),
        };
        report.commands += 1;
        report.prp_entries += entries.len() + 1;
        report.list_pages += lists.len();
        report.bounced += bounced as u32;
        self.stats.bounced += bounced as u64;
        let c = Command::new(if write { NVM_WRITE } else { NVM_READ }, ns.nsid)
            .with_prps(prp1, prp2)
            .with_cdw(10, lba as u32)
            .with_cdw(11, (lba >> 32) as u32)
            .with_cdw(12, blocks - 1);
        self.run(op, c, lists, Some(cmd))
    }

    /// A DMA command for this queue's device view, spec and bounce pool.
    fn command(&self) -> Result<DmaCommand<P>> {
        let b = DmaCommand::builder(self.shared.platform.clone())
            .spec(self.spec)
            .bounce_pool(self.bounce.clone());
        let b = match &self.shared.view {
            DmaView::Mapped(m) => b.mapper(m.clone()),
            DmaView::Bypass { .. } => b.mode(crate::dma::bypass_mode(&self.shared.platform)),
        };
        Ok(b.build()?)
    }

    /// PRP2 and the list pages for `entries` (the PRP entries after the first), from the
    /// queue's free pages or new ones.
    fn list_pages_for(&mut self, entries: &[u64]) -> Result<(u64, Vec<DmaBuffer<P>>)> {
        match entries {
            [] => return Ok((0, Vec::new())),
            [one] => return Ok((*one, Vec::new())),
            _ => {}
        }
        let want = list_pages(entries.len());
        let mut pages = Vec::with_capacity(want);
        while pages.len() < want {
            let page = match self.lists.pop() {
                Some(p) => p,
                None => match DmaBuffer::new(&self.shared.platform, &self.shared.view, PRP_PAGE) {
                    Ok(p) => {
                        self.stats.list_pages += 1;
                        p
                    }
                    Err(e) => {
                        self.lists.append(&mut pages);
                        return Err(e.into());
                    }
                },
            };
            pages.push(page);
        }
        let addrs: Vec<u64> = pages.iter().map(|p| p.device_addr()).collect();
        let written = list_contents(entries, &addrs)
            .and_then(|c| c.iter().zip(&pages).try_for_each(|(b, p)| p.write(0, b)));
        match written {
            Ok(()) => Ok((addrs[0], pages)),
            Err(e) => {
                self.lists.append(&mut pages);
                Err(e.into())
            }
        }
    }

    /// Submits one command and waits for it (the queue must have nothing else in flight).
    fn run(
        &mut self,
        op: Op,
        cmd: Command,
        lists: Vec<DmaBuffer<P>>,
        dma: Option<DmaCommand<P>>,
    ) -> Result<()> {
        if !self.inflight.is_empty() {
            let n = self.inflight.len() as u64;
            let _ = self.give_back(Inflight {
                op,
                lists,
                cmd: dma,
            });
            return Err(busy(n));
        }
        let cid = self.issue(
            op,
            cmd,
            Inflight {
                op,
                lists,
                cmd: dma,
            },
        )?;
        self.ring()?;
        self.wait_for(cid)
    }

    /// Waits until command `cid` finishes (it fails by itself on a timeout, a fatal status
    /// or a reset) and returns its result.
    fn wait_for(&mut self, cid: u16) -> Result<()> {
        let mut result = None;
        while result.is_none() {
            self.collect(true, &mut |d| {
                if d.cid == cid {
                    result = Some(d.result)
                }
            })?;
            if result.is_none() && !self.inflight.contains_key(&cid) {
                return Err(Error::Internal {
                    what: "NVMe command left the queue without a completion",
                }
                .into());
            }
        }
        result.unwrap_or(Ok(()))
    }

    /// Puts a command in the submission queue (not yet rung) with what it holds.
    fn issue(&mut self, op: Op, cmd: Command, mut inflight: Inflight<P>) -> Result<u16> {
        // Errors about this command name the controller too.
        inflight.op = op.on(self.shared.function.address());
        if let Err(e) = self.ready() {
            let _ = self.give_back(inflight);
            return Err(e);
        }
        let ring = match self.ring.as_mut() {
            Some(r) => r,
            None => return Err(gone()),
        };
        match ring.push(cmd) {
            Ok(cid) => {
                self.inflight.insert(cid, inflight);
                Ok(cid)
            }
            Err(e) => {
                let _ = self.give_back(inflight);
                Err(e.into())
            }
        }
    }

    /// Rings the submission doorbell for everything submitted since it last rang. If the
    /// doorbell write fails the controller never saw those commands: they fail, and what
    /// they hold is given back.
    pub fn ring(&mut self) -> Result<()> {
        let ring = self.ring.as_mut().ok_or_else(gone)?;
        match ring.ring(&self.shared.platform) {
            Ok(()) => Ok(()),
            Err(e) => {
                let unrung = ring.unpush_unrung();
                for cid in unrung {
                    if let Some(inf) = self.inflight.remove(&cid) {
                        let _ = self.give_back(inf);
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Queues a read of `len` bytes at block `lba` of `ns` into `[offset, offset + len)`
    /// of `buf` (not yet rung: call [`ring`](Self::ring)). Returns the command identifier.
    pub fn submit_read(
        &mut self,
        ns: &NamespaceIdentity,
        lba: u64,
        buf: &DmaBuffer<P>,
        offset: u64,
        len: u64,
    ) -> Result<u16> {
        self.submit_buffer(false, ns, lba, buf, offset, len)
    }

    /// Queues a write of `[offset, offset + len)` of `buf` to block `lba` of `ns`.
    pub fn submit_write(
        &mut self,
        ns: &NamespaceIdentity,
        lba: u64,
        buf: &DmaBuffer<P>,
        offset: u64,
        len: u64,
    ) -> Result<u16> {
        self.submit_buffer(true, ns, lba, buf, offset, len)
    }

    /// Reads into a pre-mapped buffer and waits: `len` bytes (whole blocks, at most the
    /// transfer limit, inside the buffer).
    pub fn read_buffer(
        &mut self,
        ns: &NamespaceIdentity,
        lba: u64,
        buf: &DmaBuffer<P>,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.buffer_sync(false, ns, lba, buf, offset, len)
    }

    /// Writes from a pre-mapped buffer and waits.
    pub fn write_buffer(
        &mut self,
        ns: &NamespaceIdentity,
        lba: u64,
        buf: &DmaBuffer<P>,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.buffer_sync(true, ns, lba, buf, offset, len)
    }

    fn buffer_sync(
        &mut self,
        write: bool,
        ns: &NamespaceIdentity,
        lba: u64,
        buf: &DmaBuffer<P>,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        if !self.inflight.is_empty() {
            return Err(busy(self.inflight.len() as u64));
        }
        let cid = self.submit_buffer(write, ns, lba, buf, offset, len)?;
        self.ring()?;
        self.wait_for(cid)
    }

    fn submit_buffer(
        &mut self,
        write: bool,
        ns: &NamespaceIdentity,
        lba: u64,
        buf: &DmaBuffer<P>,
        offset: u64,
        len: u64,
    ) -> Result<u16> {
        check_range(ns, lba, len)?;
        check_block_fits(ns, self.shared.max_transfer())?;
        // The buffer must hold every block the command moves.
        dmakit::descriptor::check_range("NVMe transfer in the buffer", offset, len, buf.len())?;
        let bs = ns.block_size as u64;
        if len > self.shared.max_transfer() || len / bs > max_blocks(self.shared.max_transfer(), bs)
        {
            return Err(Error::BadArgument {
                what: "NVMe command on a pre-mapped buffer: longer than max_transfer or 65536 blocks (split it, or use read/write)",
                value: len,
            }
            .into());
        }
        let start = buf.device_addr() + offset;
        if !start.is_multiple_of(4) {
            return Err(Error::NotAligned {
                what: "NVMe data pointer (PRP1 is dword aligned)",
                value: start,
                align: 4,
            }
            .into());
        }
        let segs = contiguous_segments(start, len);
        let (prp1, rest) = prp_entries(&segs)?;
        let entries = rest.unwrap_or_default();
        let (prp2, lists) = self.list_pages_for(&entries)?;
        let blocks = (len / ns.block_size as u64) as u32;
        let (opcode, op) = if write {
            (NVM_WRITE, Op::write(ns.nsid, lba, blocks))
        } else {
            (NVM_READ, Op::read(ns.nsid, lba, blocks))
        };
        let c = Command::new(opcode, ns.nsid)
            .with_prps(prp1, prp2)
            .with_cdw(10, lba as u32)
            .with_cdw(11, (lba >> 32) as u32)
            .with_cdw(12, blocks - 1);
        self.issue(
            op,
            c,
            Inflight {
                op,
                lists,
                cmd: None,
            },
        )
    }

    /// Takes the completions there are (waiting for at least one if `wait` and something
    /// is outstanding) and hands each to `f`; returns how many. A fatal controller status,
    /// a timeout or a reset fail every outstanding command, each handed to `f` with an
    /// error naming it.
    pub fn wait_completions(&mut self, wait: bool, mut f: impl FnMut(Done)) -> Result<usize> {
        self.collect(wait, &mut f)
    }

    fn collect(&mut self, wait: bool, f: &mut dyn FnMut(Done)) -> Result<usize> {
        let shared = self.shared.clone();
        let d = Deadline::new(&*shared.timer, shared.options.command_timeout_ns);
        let mut polls = 0u32;
        loop {
            let n = self.reap_all(f)?;
            if n > 0 || !wait || self.inflight.is_empty() {
                return Ok(n);
            }
            let (op, cid) = match self.inflight.iter().next() {
                Some((cid, inf)) => (inf.op, *cid),
                None => return Ok(0),
            };
            polls = polls.wrapping_add(1);
            let look = polls.is_multiple_of(crate::controller::CSTS_EVERY) || d.passed();
            let failed = match shared.check_alive(op, self.qid, cid, self.generation, look) {
                Err(e) => Some(e),
                Ok(()) if d.passed() => {
                    self.shared.needs_reset.store(true, Ordering::Release);
                    Some(NvmeError::Timeout {
                        op,
                        qid: self.qid,
                        cid,
                        waited_ms: d.elapsed_ms(),
                    })
                }
                Ok(()) => None,
            };
            if let Some(e) = failed {
                return Ok(self.fail_all(&e, f));
            }
            d.pause();
        }
    }

    /// Every completion at the head; the CQ doorbell rung once.
    fn reap_all(&mut self, f: &mut dyn FnMut(Done)) -> Result<usize> {
        let mut n = 0;
        loop {
            let ring = self.ring.as_mut().ok_or_else(gone)?;
            let c = match ring.reap() {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    // A completion the driver never asked for: the controller cannot be
                    // trusted with this queue any more.
                    self.shared.needs_reset.store(true, Ordering::Release);
                    return Err(e.into());
                }
            };
            n += 1;
            let Some(inf) = self.inflight.remove(&c.cid) else {
                continue;
            };
            let op = inf.op;
            let status = if c.status == 0 {
                Ok(())
            } else {
                Err(NvmeError::Status {
                    op,
                    qid: self.qid,
                    cid: c.cid,
                    status: c.status,
                })
            };
            let released = self.give_back(inf);
            let result = status.and(released.map_err(NvmeError::from));
            if result.is_ok() {
                self.stats.commands += 1;
            } else {
                self.stats.failed += 1;
            }
            f(Done {
                cid: c.cid,
                op,
                result,
            });
        }
        if n > 0 {
            let ring = self.ring.as_mut().ok_or_else(gone)?;
            ring.ring_cq(&self.shared.platform)?;
        }
        Ok(n)
    }

    /// Fails every outstanding command with `e` (renamed for each). Their memory is held
    /// until the controller is reset, unless it was reset already.
    fn fail_all(&mut self, e: &NvmeError, f: &mut dyn FnMut(Done)) -> usize {
        let all = core::mem::take(&mut self.inflight);
        let n = all.len();
        let unsafe_now = !matches!(e, NvmeError::Reset { .. });
        for (cid, inf) in all {
            let op = inf.op;
            let err = match *e {
                NvmeError::Timeout { waited_ms, .. } => NvmeError::Timeout {
                    op,
                    qid: self.qid,
                    cid,
                    waited_ms,
                },
                NvmeError::ControllerFatal { .. } => NvmeError::ControllerFatal {
                    op,
                    qid: self.qid,
                    cid,
                },
                NvmeError::Reset { .. } => NvmeError::Reset {
                    op,
                    qid: self.qid,
                    cid,
                },
                ref other => other.clone(),
            };
            if unsafe_now {
                self.shared.hold(Box::new(inf));
            } else {
                let _ = self.give_back(inf);
            }
            self.stats.failed += 1;
            f(Done {
                cid,
                op,
                result: Err(err),
            });
        }
        n
    }

    /// Ends what a finished (or never submitted) command held: list pages back to the
    /// queue, the DMA command completed (a read's bounced data copied back).
    fn give_back(&mut self, mut inf: Inflight<P>) -> dmakit::Result<()> {
        self.lists.append(&mut inf.lists);
        match inf.cmd.take() {
            Some(mut c) => crate::dma::complete_command(&mut c),
            None => Ok(()),
        }
    }

    /// Before a command: reset the controller if it needs it, and create the queue pair on
    /// it again if it was reset since.
    fn ready(&mut self) -> Result<()> {
        if self.shared.needs_reset.load(Ordering::Acquire) {
            self.shared.recover(false)?;
        }
        let now = self.shared.generation.load(Ordering::Acquire);
        if now == self.generation {
            return Ok(());
        }
        // The controller was reset: the queues are gone from it and it reaches none of the
        // memory the commands held.
        for (_, inf) in core::mem::take(&mut self.inflight) {
            let _ = self.give_back(inf);
        }
        let ring = self.ring.as_mut().ok_or_else(gone)?;
        let _ = ring.reset()?;
        if let Err((e, left)) = self.shared.create_queues(ring, self.vector) {
            if left {
                // The controller may hold a queue on this ring since generation `now`: as
                // far as dropping the queue goes it is current (kept until the reset that
                // `create_queues` asked for), and the next command creates it again.
                self.generation = now;
            }
            return Err(e);
        }
        self.generation = now;
        self.stats.recreated += 1;
        Ok(())
    }
}

impl<P: Platform + Clone + Send + Sync + 'static> Drop for IoQueue<P> {
    fn drop(&mut self) {
        let current = self.generation == self.shared.generation.load(Ordering::Acquire);
        let Some(ring) = self.ring.take() else {
            return;
        };
        // The controller drops the queues' commands when they are deleted; if it was reset
        // since they were created, they are gone already.
        let try_delete =
            current && self.inflight.is_empty() && !self.shared.needs_reset.load(Ordering::Acquire);
        let refused = try_delete && self.shared.delete_queues(self.qid).is_err();
        let deleted = !current || (try_delete && !refused);
        if let Some(v) = self.vector {
            let _ = self.shared.function.disable_interrupt(v);
        }
        if deleted {
            for (_, inf) in core::mem::take(&mut self.inflight) {
                let _ = self.give_back(inf);
            }
            drop(ring);
            self.shared.free_qid(self.qid);
        } else {
            // The controller may still use the rings and the commands' memory: keep them
            // (and the queue identifier) until it is reset or disabled. If it refused to
            // delete the queues, only a reset frees the identifier: ask for one.
            let inflight = core::mem::take(&mut self.inflight);
            self.shared
                .hold_queue(self.qid, Box::new((ring, inflight)), refused);
        }
    }
}

impl<P: Platform + Clone + Send + Sync + 'static> core::fmt::Debug for IoQueue<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoQueue")
            .field("qid", &self.qid)
            .field("entries", &self.entries())
            .field("outstanding", &self.inflight.len())
            .field("generation", &self.generation)
            .finish()
    }
}

/// The most blocks of `bs` bytes one command carries: the transfer limit, and the 16-bit
/// block count of a Read or Write (65536 blocks); at least one.
fn max_blocks(max_transfer: u64, bs: u64) -> u64 {
    (max_transfer / bs).clamp(1, 1 << 16)
}

/// One block fits in one command: a namespace whose blocks are larger than the transfer
/// limit (16 KiB blocks under an `MDTS` of 8 KiB, or under a smaller
/// [`NvmeOptions::max_transfer`](crate::NvmeOptions::max_transfer)) cannot be read or
/// written at all, since a command moves whole blocks.
fn check_block_fits(ns: &NamespaceIdentity, max_transfer: u64) -> Result<()> {
    if ns.block_size as u64 > max_transfer {
        return Err(Error::Unsupported {
            what: "NVMe namespace with a block size above the transfer limit (MDTS or \
                   NvmeOptions::max_transfer): no command can carry one block",
        }
        .into());
    }
    Ok(())
}

/// Whole blocks, inside the namespace.
fn check_range(ns: &NamespaceIdentity, lba: u64, len: u64) -> Result<()> {
    let bs = ns.block_size as u64;
    if len == 0 || bs == 0 || !len.is_multiple_of(bs) {
        return Err(Error::BadArgument {
            what: "NVMe transfer length: a non-zero multiple of the namespace's block size",
            value: len,
        }
        .into());
    }
    let blocks = len / bs;
    if lba.checked_add(blocks).is_none_or(|end| end > ns.blocks) {
        return Err(Error::OutOfBounds {
            what: "NVMe namespace blocks",
            offset: lba,
            len: blocks,
            limit: ns.blocks,
        }
        .into());
    }
    Ok(())
}

/// PRP1, the remaining entries, and whether the data was moved to a bounce buffer
/// because its segments break the PRP rules.
fn prp_of<P: Platform + Clone + 'static>(
    cmd: &mut DmaCommand<P>,
) -> dmakit::Result<(u64, Vec<u64>, bool)> {
    let segs = cmd.segments().collect::<dmakit::Result<Vec<IoSegment>>>()?;
    if let Ok((prp1, rest)) = prp_entries(&segs) {
        return Ok((prp1, rest.unwrap_or_default(), cmd.is_bounced()));
    }
    cmd.force_double_buffer()?;
    let segs = cmd.segments().collect::<dmakit::Result<Vec<IoSegment>>>()?;
    let (prp1, rest) = prp_entries(&segs)?;
    Ok((prp1, rest.unwrap_or_default(), true))
}

/// Completes `cmd` after `e` stopped its transfer before submission.
fn finish<P: Platform + Clone + 'static>(
    mut cmd: DmaCommand<P>,
    e: impl Into<NvmeError>,
) -> NvmeError {
    let _ = crate::dma::complete_command(&mut cmd);
    e.into()
}

/// The page-sized segments of `[start, start + len)` of one run of device addresses.
fn contiguous_segments(start: u64, len: u64) -> Vec<IoSegment> {
    let mut segs = Vec::new();
    let (mut at, end) = (start, start + len);
    while at < end {
        let n = (PRP_PAGE - at % PRP_PAGE).min(end - at);
        segs.push(IoSegment {
            addr: dmakit::IoAddr(at),
            len: n,
        });
        at += n;
    }
    segs
}

fn busy(outstanding: u64) -> NvmeError {
    Error::Busy {
        what: "NVMe queue pair",
        addr: outstanding,
        why: "queued commands are in flight (take them with wait_completions first); addr is their count",
    }
    .into()
}

fn gone() -> NvmeError {
    Error::NotReady {
        what: "NVMe queue pair (being dropped)",
        addr: 0,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_command_carries_at_most_65536_blocks() {
        assert_eq!(max_blocks(4 << 20, 512), 8192);
        assert_eq!(max_blocks(u64::MAX, 512), 65536);
        assert_eq!(max_blocks(4096, 8192), 1);
    }

    #[test]
    fn contiguous_runs_are_cut_at_pages() {
        let s = contiguous_segments(0x1_0e00, 0x1400);
        let got: Vec<(u64, u64)> = s.iter().map(|x| (x.addr.0, x.len)).collect();
        assert_eq!(
            got,
            [(0x1_0e00, 0x200), (0x1_1000, 0x1000), (0x1_2000, 0x200)]
        );
        let (prp1, rest) = prp_entries(&s).unwrap();
        assert_eq!(
            (prp1, rest),
            (0x1_0e00, Some(alloc::vec![0x1_1000, 0x1_2000]))
        );
    }
}
