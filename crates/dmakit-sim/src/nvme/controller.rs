//! [`NvmeModel`]: the controller behind the PCI function. Registers, queues, command
//! execution, and the hostile schedule (delays, reordering, injected errors, fatal status).

use super::command::{admin, nvm, CompletionEntry, Status, SubmissionEntry, CQE_BYTES, SQE_BYTES};
use super::identify;
use super::prp;
use super::queue::{CompQueue, InFlight, SubQueue};
use super::regs::*;
use super::store::Store;
use super::{CommandFault, NvmeConfig, NvmeStats, Reorder, NVME_CLASS, NVME_DEVICE, NVME_VENDOR};
use crate::pci::{BarSpec, DeviceConfig, DeviceContext, MsixSpec, PciDeviceModel};
use dmakit::device::PciId;
use dmakit::platform::Width;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Features Set Features stores and Get Features returns (besides Number of Queues).
const PLAIN_FEATURES: [u8; 9] = [0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0A, 0x0B];
/// Feature: volatile write cache.
const FEATURE_VWC: u8 = 0x06;

/// A command error armed by [`CommandFault`]: `left` more matching commands until it fires.
#[derive(Clone, Copy, Debug)]
struct Armed {
    fault: CommandFault,
    left: u32,
}

/// The NVMe controller model.
#[derive(Debug)]
pub struct NvmeModel {
    cfg: NvmeConfig,
    rng: ChaCha8Rng,
    store: Store,
    /// Namespaces 2, 3, ... ([`SimNvmeBuilder::namespace`](super::SimNvmeBuilder::namespace)).
    extra: Vec<Store>,
    cc: u32,
    cfs: bool,
    shst: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    intms: u32,
    /// With CC.EN set and the admin queue made: the tick from which CSTS.RDY reads 1.
    ready_at: Option<u64>,
    /// After CC.EN 1 → 0 on a ready controller: CSTS.RDY reads 1 until this tick.
    stopping_until: u64,
    sqs: BTreeMap<u16, SubQueue>,
    cqs: BTreeMap<u16, CompQueue>,
    /// Fetched commands waiting for their tick.
    inflight: Vec<InFlight>,
    /// Commands being carried out now, in the order chosen.
    batch: VecDeque<InFlight>,
    seq: u64,
    tick: u64,
    armed: Vec<Armed>,
    fetched: u64,
    features: BTreeMap<u8, u32>,
    aers: u32,
    stats: NvmeStats,
    fatal_reason: Option<&'static str>,
    enable_error: Option<&'static str>,
}

impl NvmeModel {
    /// A controller as `cfg` describes it (validated by the builder), in its reset state.
    pub(crate) fn new(cfg: NvmeConfig) -> Self {
        let store = Store::new(cfg.lba_size as u64, cfg.blocks, cfg.prefill);
        let extra = cfg
            .extra_namespaces
            .iter()
            .map(|&(lba, blocks)| Store::new(lba as u64, blocks, cfg.prefill))
            .collect();
        let armed = cfg
            .faults
            .iter()
            .map(|&fault| Armed {
                fault,
                left: fault.nth.max(1),
            })
            .collect();
        NvmeModel {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            store,
            extra,
            cc: 0,
            cfs: false,
            shst: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            intms: 0,
            ready_at: None,
            stopping_until: 0,
            sqs: BTreeMap::new(),
            cqs: BTreeMap::new(),
            inflight: Vec::new(),
            batch: VecDeque::new(),
            seq: 0,
            tick: 0,
            armed,
            fetched: 0,
            features: Self::default_features(),
            aers: 0,
            stats: NvmeStats::default(),
            fatal_reason: None,
            enable_error: None,
            cfg,
        }
    }

    fn default_features() -> BTreeMap<u8, u32> {
        let mut f: BTreeMap<u8, u32> = PLAIN_FEATURES.iter().map(|&id| (id, 0)).collect();
        f.insert(FEATURE_VWC, 1);
        f
    }

    pub(crate) fn config(&self) -> &NvmeConfig {
        &self.cfg
    }

    pub(crate) fn stats(&self) -> NvmeStats {
        NvmeStats {
            pending: (self.inflight.len() + self.batch.len()) as u64,
            ..self.stats.clone()
        }
    }

    pub(crate) fn fatal_reason(&self) -> Option<&'static str> {
        self.fatal_reason
    }

    pub(crate) fn enable_error(&self) -> Option<&'static str> {
        self.enable_error
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Namespace `nsid`'s store, if the controller has that namespace.
    pub(crate) fn ns_store(&self, nsid: u32) -> Option<&Store> {
        match nsid {
            1 => Some(&self.store),
            n => self.extra.get((n as usize).checked_sub(2)?),
        }
    }

    pub(crate) fn ns_store_mut(&mut self, nsid: u32) -> Option<&mut Store> {
        match nsid {
            1 => Some(&mut self.store),
            n => self.extra.get_mut((n as usize).checked_sub(2)?),
        }
    }

    /// How many namespaces there are (1, 2, ... all active).
    fn namespaces(&self) -> u32 {
        1 + self.extra.len() as u32
    }

    pub(crate) fn arm(&mut self, fault: CommandFault) {
        self.armed.push(Armed {
            fault,
            left: fault.nth.max(1),
        });
    }

    pub(crate) fn set_completion_delay(&mut self, ticks: u32) {
        self.cfg.completion_delay = ticks;
    }

    /// Sets CSTS.CFS: the controller stops until the host resets it (CC.EN 1 → 0).
    pub(crate) fn fatal(&mut self, why: &'static str) {
        if !self.cfs {
            self.cfs = true;
            self.fatal_reason = Some(why);
            self.stats.fatal_errors += 1;
        }
        self.inflight.clear();
        self.batch.clear();
    }

    fn page(&self) -> u64 {
        4096 << ((self.cc >> CC_MPS_SHIFT) & 0xF)
    }

    fn enabled(&self) -> bool {
        self.cc & CC_EN != 0
    }

    fn ready(&self) -> bool {
        self.enabled() && self.ready_at.is_some_and(|t| self.tick >= t)
    }

    pub(crate) fn cap(&self) -> u64 {
        (self.cfg.max_queue_entries as u64 - 1)
            | CAP_CQR
            | (self.cfg.ready_timeout as u64) << 24
            | (self.cfg.doorbell_stride as u64) << 32
            | CAP_CSS_NVM
            | (self.cfg.mpsmin as u64) << 48
            | (MPS_MAX as u64) << 52
    }

    fn csts(&self) -> u32 {
        let mut v = self.shst << 2;
        if self.ready() || (!self.enabled() && self.tick < self.stopping_until) {
            v |= CSTS_RDY;
        }
        if self.cfs {
            v |= CSTS_CFS;
        }
        v
    }

    fn reg32(&self, off: u64) -> u32 {
        match off {
            CAP => self.cap() as u32,
            o if o == CAP + 4 => (self.cap() >> 32) as u32,
            VS => identify::VERSION,
            INTMS | INTMC => self.intms,
            CC => self.cc,
            CSTS => self.csts(),
            AQA => self.aqa,
            ASQ => self.asq as u32,
            o if o == ASQ + 4 => (self.asq >> 32) as u32,
            ACQ => self.acq as u32,
            o if o == ACQ + 4 => (self.acq >> 32) as u32,
            _ => 0,
        }
    }

    /// The reset every CC.EN 1 → 0 does: queues and commands gone, CSTS clear.
    fn controller_reset(&mut self) {
        self.sqs.clear();
        self.cqs.clear();
        self.inflight.clear();
        self.batch.clear();
        self.cfs = false;
        self.shst = 0;
        self.ready_at = None;
        self.aers = 0;
        self.features = Self::default_features();
        self.stats.resets += 1;
    }

    fn enable(&mut self) {
        let cc = self.cc;
        let field = |shift: u32, mask: u32| (cc >> shift) & mask;
        let asqs = (self.aqa & 0xFFF) + 1;
        let acqs = ((self.aqa >> 16) & 0xFFF) + 1;
        let page = self.page();
        let why = if self.tick < self.stopping_until {
            Some("CC.EN set while CSTS.RDY still reads 1 from the last disable")
        } else if field(CC_MPS_SHIFT, 0xF) > MPS_MAX {
            Some("CC.MPS above CAP.MPSMAX")
        } else if field(CC_MPS_SHIFT, 0xF) < self.cfg.mpsmin as u32 {
            Some("CC.MPS below CAP.MPSMIN")
        } else if field(CC_CSS_SHIFT, 7) != 0 || field(CC_AMS_SHIFT, 7) != 0 {
            Some("CC.CSS or CC.AMS names a command set or arbitration the controller lacks")
        } else if field(CC_IOSQES_SHIFT, 0xF) != 6 || field(CC_IOCQES_SHIFT, 0xF) != 4 {
            Some("CC.IOSQES must be 6 (64 bytes) and CC.IOCQES 4 (16 bytes)")
        } else if asqs < 2 || acqs < 2 {
            Some("AQA: admin queues need at least 2 entries")
        } else if self.asq == 0
            || self.acq == 0
            || !self.asq.is_multiple_of(page)
            || !self.acq.is_multiple_of(page)
        {
            Some("ASQ/ACQ: zero or not aligned to the memory page size")
        } else {
            None
        };
        self.enable_error = why;
        if why.is_some() {
            return;
        }
        self.sqs.insert(
            0,
            SubQueue {
                base: self.asq,
                size: asqs,
                head: 0,
                tail: 0,
                cqid: 0,
            },
        );
        self.cqs.insert(0, CompQueue::new(self.acq, acqs, 0, true));
        self.ready_at = Some(self.tick + self.cfg.ready_delay as u64);
    }

    fn write_cc(&mut self, value: u32) {
        let was = self.enabled();
        let was_ready = self.ready();
        self.cc = value & CC_WRITABLE;
        match (was, self.enabled()) {
            (false, true) => self.enable(),
            (true, false) => {
                if was_ready {
                    self.stopping_until = self.tick + self.cfg.disable_delay as u64;
                }
                self.controller_reset();
            }
            _ => {}
        }
        if (self.cc >> CC_SHN_SHIFT) & 3 != 0 && self.enabled() {
            self.shst = SHST_COMPLETE;
        }
    }

    fn write_reg32(&mut self, ctx: &mut DeviceContext<'_>, off: u64, v: u32) {
        match off {
            INTMS => self.intms |= v,
            INTMC => self.intms &= !v,
            CC => self.write_cc(v),
            AQA => self.aqa = v & 0x0FFF_0FFF,
            ASQ => self.asq = (self.asq & !0xFFFF_FFFF) | (v & !0xFFF) as u64,
            o if o == ASQ + 4 => self.asq = (self.asq & 0xFFFF_FFFF) | (v as u64) << 32,
            ACQ => self.acq = (self.acq & !0xFFFF_FFFF) | (v & !0xFFF) as u64,
            o if o == ACQ + 4 => self.acq = (self.acq & 0xFFFF_FFFF) | (v as u64) << 32,
            o if o >= DOORBELLS => self.doorbell(ctx, o - DOORBELLS, v),
            _ => {}
        }
    }

    /// One unit of time: due commands are carried out.
    pub(crate) fn tick(&mut self, ctx: &mut DeviceContext<'_>) {
        self.tick += 1;
        self.run(ctx, false);
    }

    /// Carries out every fetched command now, whatever its tick. Returns how many.
    pub(crate) fn drain(&mut self, ctx: &mut DeviceContext<'_>) -> usize {
        let n = self.inflight.len();
        self.run(ctx, true);
        n
    }

    fn doorbell(&mut self, ctx: &mut DeviceContext<'_>, rel: u64, value: u32) {
        let stride = 4u64 << self.cfg.doorbell_stride;
        if !rel.is_multiple_of(stride) || !self.ready() || self.cfs {
            self.stats.ignored_doorbells += 1;
            return;
        }
        let index = rel / stride;
        let Ok(qid) = u16::try_from(index / 2) else {
            self.stats.ignored_doorbells += 1;
            return;
        };
        if index.is_multiple_of(2) {
            let Some(sq) = self.sqs.get_mut(&qid).filter(|q| value < q.size) else {
                self.stats.ignored_doorbells += 1;
                return;
            };
            sq.tail = value;
            self.fetch(ctx, qid);
            self.run(ctx, false);
        } else {
            let Some(cq) = self.cqs.get_mut(&qid).filter(|q| value < q.size) else {
                self.stats.ignored_doorbells += 1;
                return;
            };
            cq.head = value;
            let mut touched = BTreeSet::new();
            self.flush_overflow(ctx, qid, &mut touched);
            self.interrupt(ctx, &touched);
        }
    }

    /// Fetches every entry between the SQ's head and the host's tail.
    fn fetch(&mut self, ctx: &mut DeviceContext<'_>, qid: u16) {
        loop {
            let Some(sq) = self.sqs.get(&qid) else { return };
            if sq.head == sq.tail || self.cfs {
                return;
            }
            // Addresses wrap as on the bus; one past the top faults in the DMA path.
            let addr = sq.base.wrapping_add(sq.head as u64 * SQE_BYTES);
            let mut raw = [0u8; SQE_BYTES as usize];
            if ctx.dma_read(addr, &mut raw).is_err() {
                self.fatal("a submission queue entry could not be fetched");
                return;
            }
            if let Some(sq) = self.sqs.get_mut(&qid) {
                sq.head = (sq.head + 1) % sq.size;
            }
            self.fetched += 1;
            self.stats.commands += 1;
            if self.cfg.fatal_after == Some(self.fetched) {
                self.fatal("fatal status planned at this command (fatal_after)");
                return;
            }
            self.seq += 1;
            self.inflight.push(InFlight {
                due: self.tick + self.cfg.completion_delay as u64,
                seq: self.seq,
                sqid: qid,
                cmd: SubmissionEntry::parse(&raw),
            });
        }
    }

    /// Orders the due commands as the schedule says.
    fn order(&mut self, mut due: Vec<InFlight>) -> VecDeque<InFlight> {
        due.sort_by_key(|c| c.seq);
        if self.cfg.reorder == Reorder::InOrder {
            return due.into();
        }
        let mut groups: BTreeMap<u16, VecDeque<InFlight>> = BTreeMap::new();
        for c in due {
            groups.entry(c.sqid).or_default().push_back(c);
        }
        if self.cfg.reorder == Reorder::Any {
            for (q, g) in groups.iter_mut() {
                if *q != 0 {
                    g.make_contiguous().shuffle(&mut self.rng);
                }
            }
        }
        let mut out = VecDeque::new();
        let mut groups: Vec<VecDeque<InFlight>> = groups.into_values().collect();
        while !groups.is_empty() {
            let i = self.rng.gen_range(0..groups.len());
            if let Some(c) = groups[i].pop_front() {
                out.push_back(c);
            }
            if groups[i].is_empty() {
                groups.swap_remove(i);
            }
        }
        out
    }

    /// Carries out the commands whose tick has come (all of them with `all`).
    fn run(&mut self, ctx: &mut DeviceContext<'_>, all: bool) {
        let tick = self.tick;
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.inflight)
            .into_iter()
            .partition(|c| all || c.due <= tick);
        self.inflight = wait;
        if due.is_empty() {
            return;
        }
        let mut ordered = self.order(due);
        self.batch.append(&mut ordered);
        let mut touched = BTreeSet::new();
        while let Some(c) = self.batch.pop_front() {
            if self.cfs {
                break;
            }
            if let Some((status, dw0)) = self.execute(ctx, &c, &mut touched) {
                self.post(ctx, c.sqid, c.cmd.cid, status, dw0, &mut touched);
            }
        }
        self.interrupt(ctx, &touched);
    }

    fn interrupt(&mut self, ctx: &mut DeviceContext<'_>, touched: &BTreeSet<u16>) {
        for q in touched {
            if let Some(cq) = self.cqs.get(q).filter(|c| c.interrupts) {
                ctx.signal(cq.vector as u32);
                self.stats.interrupts += 1;
            }
        }
    }

    /// Queues a completion on the SQ's completion queue.
    fn post(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        sqid: u16,
        cid: u16,
        status: Status,
        dw0: u32,
        touched: &mut BTreeSet<u16>,
    ) {
        let Some(sq) = self.sqs.get(&sqid) else {
            return;
        };
        let (cqid, sq_head) = (sq.cqid, sq.head as u16);
        let Some(cq) = self.cqs.get_mut(&cqid) else {
            return;
        };
        self.stats.completions += 1;
        if !status.is_success() {
            self.stats.errors += 1;
        }
        cq.overflow.push_back(CompletionEntry {
            dw0,
            sq_head,
            sq_id: sqid,
            cid,
            phase: false,
            status,
        });
        self.flush_overflow(ctx, cqid, touched);
    }

    /// Writes waiting completions into the queue while it has room.
    fn flush_overflow(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        cqid: u16,
        touched: &mut BTreeSet<u16>,
    ) {
        loop {
            let Some(cq) = self.cqs.get_mut(&cqid) else {
                return;
            };
            if cq.full() {
                return;
            }
            let Some(mut e) = cq.overflow.pop_front() else {
                return;
            };
            e.phase = cq.phase;
            let addr = cq.base.wrapping_add(cq.tail as u64 * CQE_BYTES);
            if ctx.dma_write(addr, &e.to_bytes()).is_err() {
                self.fatal("a completion queue entry could not be written");
                return;
            }
            cq.tail = (cq.tail + 1) % cq.size;
            if cq.tail == 0 {
                cq.phase = !cq.phase;
            }
            touched.insert(cqid);
        }
    }

    /// An armed error for this command, if one fires now.
    fn injected(&mut self, sqid: u16, opcode: u8) -> Option<Status> {
        let i = self
            .armed
            .iter()
            .position(|a| a.fault.admin == (sqid == 0) && a.fault.opcode == opcode)?;
        let a = &mut self.armed[i];
        a.left -= 1;
        if a.left > 0 {
            return None;
        }
        let status = a.fault.status;
        self.armed.remove(i);
        self.stats.injected_errors += 1;
        Some(status)
    }

    fn execute(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        c: &InFlight,
        touched: &mut BTreeSet<u16>,
    ) -> Option<(Status, u32)> {
        if let Some(s) = self.injected(c.sqid, c.cmd.opcode) {
            return Some((s, 0));
        }
        if c.sqid == 0 {
            self.admin(ctx, &c.cmd, touched)
        } else {
            Some((self.io(ctx, &c.cmd), 0))
        }
    }

    /// Moves `data` to the host buffer PRP1/PRP2 describe: all or nothing.
    fn send_to_host(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        cmd: &SubmissionEntry,
        data: &[u8],
    ) -> Status {
        let page = self.page();
        let runs = match prp::walk(ctx, cmd.prp1, cmd.prp2, data.len() as u64, page) {
            Ok(r) => r,
            Err(s) => return s,
        };
        if runs
            .iter()
            .any(|&(a, n)| ctx.dma_check(a, n, true).is_err())
        {
            return Status::DATA_TRANSFER_ERROR;
        }
        let mut at = 0usize;
        for (a, n) in runs {
            if ctx.dma_write(a, &data[at..at + n as usize]).is_err() {
                return Status::DATA_TRANSFER_ERROR;
            }
            at += n as usize;
        }
        Status::SUCCESS
    }

    /// Fills `buf` from the host buffer PRP1/PRP2 describe.
    fn fetch_from_host(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        cmd: &SubmissionEntry,
        buf: &mut [u8],
    ) -> Status {
        let page = self.page();
        let runs = match prp::walk(ctx, cmd.prp1, cmd.prp2, buf.len() as u64, page) {
            Ok(r) => r,
            Err(s) => return s,
        };
        if runs
            .iter()
            .any(|&(a, n)| ctx.dma_check(a, n, false).is_err())
        {
            return Status::DATA_TRANSFER_ERROR;
        }
        let mut at = 0usize;
        for (a, n) in runs {
            if ctx.dma_read(a, &mut buf[at..at + n as usize]).is_err() {
                return Status::DATA_TRANSFER_ERROR;
            }
            at += n as usize;
        }
        Status::SUCCESS
    }

    /// Runs one admin command: `None` holds its completion back (an asynchronous event
    /// request), otherwise the status and the completion's command-specific dword.
    fn admin(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        cmd: &SubmissionEntry,
        touched: &mut BTreeSet<u16>,
    ) -> Option<(Status, u32)> {
        self.stats.admin_commands += 1;
        let done = |s: Status| Some((s, 0));
        match cmd.opcode {
            admin::IDENTIFY => done(self.identify(ctx, cmd)),
            admin::CREATE_CQ => done(self.create_cq(cmd)),
            admin::CREATE_SQ => done(self.create_sq(cmd)),
            admin::DELETE_SQ => done(self.delete_sq(ctx, cmd, touched)),
            admin::DELETE_CQ => done(self.delete_cq(cmd)),
            admin::SET_FEATURES | admin::GET_FEATURES => Some(self.set_get_features(cmd)),
            admin::ASYNC_EVENT => self.async_event(),
            admin::ABORT => Some((Status::SUCCESS, 1)),
            admin::GET_LOG_PAGE => done(self.get_log_page(ctx, cmd)),
            _ => done(Status::INVALID_OPCODE.dnr()),
        }
    }

    /// Identify: sends the controller, namespace or active-namespace-list page CNS asks for.
    fn identify(&mut self, ctx: &mut DeviceContext<'_>, cmd: &SubmissionEntry) -> Status {
        match self.identify_data(cmd) {
            Ok(data) => self.send_to_host(ctx, cmd, &data),
            Err(s) => s,
        }
    }

    /// The identify page `cmd` asks for, or the status refusing it.
    fn identify_data(&self, cmd: &SubmissionEntry) -> Result<Vec<u8>, Status> {
        Ok(match cmd.cdw10() & 0xFF {
            admin::CNS_NAMESPACE if cmd.nsid == 1 => identify::namespace(
                self.store.lba_size,
                self.store.blocks,
                self.cfg.metadata_bytes,
                self.cfg.lba_format_index,
            ),
            admin::CNS_NAMESPACE if cmd.nsid != 0 && cmd.nsid <= self.namespaces() => {
                let s = &self.extra[cmd.nsid as usize - 2];
                identify::namespace(s.lba_size, s.blocks, 0, 0)
            }
            admin::CNS_NAMESPACE => return Err(Status::INVALID_NAMESPACE.dnr()),
            admin::CNS_CONTROLLER => {
                identify::controller(&self.cfg, NVME_VENDOR, self.namespaces())
            }
            admin::CNS_ACTIVE_NS_LIST if cmd.nsid < 0xFFFF_FFFE => {
                identify::active_namespaces(cmd.nsid, self.namespaces())
            }
            admin::CNS_ACTIVE_NS_LIST => return Err(Status::INVALID_NAMESPACE.dnr()),
            _ => return Err(Status::INVALID_FIELD.dnr()),
        })
    }

    /// Set Features and Get Features: the number of queues (granted, never changed), or a
    /// stored feature value; the status and the completion's dword.
    fn set_get_features(&mut self, cmd: &SubmissionEntry) -> (Status, u32) {
        let fid = cmd.cdw10() as u8;
        let n = self.cfg.io_queues as u32 - 1;
        let (sqs, cqs) = self
            .cfg
            .granted_queues
            .map_or((n, n), |(s, c)| (s as u32 - 1, c as u32 - 1));
        let set = cmd.opcode == admin::SET_FEATURES;
        if fid == admin::FEATURE_NUM_QUEUES {
            if set && (cmd.cdw11() & 0xFFFF == 0xFFFF || cmd.cdw11() >> 16 == 0xFFFF) {
                return (Status::INVALID_FIELD.dnr(), 0);
            }
            return (Status::SUCCESS, sqs | cqs << 16);
        }
        match self.features.get_mut(&fid) {
            Some(v) if set => {
                *v = cmd.cdw11();
                (Status::SUCCESS, 0)
            }
            Some(v) => (Status::SUCCESS, *v),
            None => (Status::INVALID_FIELD.dnr(), 0),
        }
    }

    /// Asynchronous Event Request: held (`None`) up to the limit, refused past it.
    fn async_event(&mut self) -> Option<(Status, u32)> {
        if self.aers > identify::AERL as u32 {
            return Some((Status::AER_LIMIT_EXCEEDED.dnr(), 0));
        }
        // Held until an event happens; this controller reports none.
        self.aers += 1;
        None
    }

    /// Get Log Page: pages 1 to 3 (error, health, firmware slot), all zeros, up to 64 KiB.
    fn get_log_page(&mut self, ctx: &mut DeviceContext<'_>, cmd: &SubmissionEntry) -> Status {
        let lid = cmd.cdw10() as u8;
        let numd = (((cmd.cdw10() >> 16) & 0xFFF) | (cmd.cdw11() & 0xFFFF) << 16) as u64 + 1;
        if !(1..=3).contains(&lid) {
            return Status::INVALID_LOG_PAGE.dnr();
        }
        if numd * 4 > 0x1_0000 {
            return Status::INVALID_FIELD.dnr();
        }
        let data = vec![0u8; (numd * 4) as usize];
        self.send_to_host(ctx, cmd, &data)
    }

    fn check_queue(&self, cmd: &SubmissionEntry, exists: bool) -> Result<(u16, u32), Status> {
        let qid = cmd.cdw10() as u16;
        let size = (cmd.cdw10() >> 16) + 1;
        if qid == 0 || qid > self.cfg.io_queues || exists {
            return Err(Status::INVALID_QUEUE_ID.dnr());
        }
        if size < 2 || size > self.cfg.max_queue_entries {
            return Err(Status::INVALID_QUEUE_SIZE.dnr());
        }
        if cmd.cdw11() & 1 == 0 {
            // CAP.CQR: queues must be physically contiguous.
            return Err(Status::INVALID_FIELD.dnr());
        }
        if !cmd.prp1.is_multiple_of(self.page()) {
            return Err(Status::PRP_OFFSET_INVALID.dnr());
        }
        Ok((qid, size))
    }

    fn create_cq(&mut self, cmd: &SubmissionEntry) -> Status {
        let exists = self.cqs.contains_key(&(cmd.cdw10() as u16));
        let (qid, size) = match self.check_queue(cmd, exists) {
            Ok(q) => q,
            Err(s) => return s,
        };
        let interrupts = cmd.cdw11() & 2 != 0;
        let vector = (cmd.cdw11() >> 16) as u16;
        if interrupts && vector > self.cfg.io_queues {
            return Status::INVALID_VECTOR.dnr();
        }
        self.cqs
            .insert(qid, CompQueue::new(cmd.prp1, size, vector, interrupts));
        Status::SUCCESS
    }

    fn create_sq(&mut self, cmd: &SubmissionEntry) -> Status {
        let exists = self.sqs.contains_key(&(cmd.cdw10() as u16));
        let (qid, size) = match self.check_queue(cmd, exists) {
            Ok(q) => q,
            Err(s) => return s,
        };
        let cqid = (cmd.cdw11() >> 16) as u16;
        if cqid == 0 || !self.cqs.contains_key(&cqid) {
            return Status::CQ_INVALID.dnr();
        }
        self.sqs.insert(
            qid,
            SubQueue {
                base: cmd.prp1,
                size,
                head: 0,
                tail: 0,
                cqid,
            },
        );
        Status::SUCCESS
    }

    fn delete_sq(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        cmd: &SubmissionEntry,
        touched: &mut BTreeSet<u16>,
    ) -> Status {
        let qid = cmd.cdw10() as u16;
        if qid == 0 || !self.sqs.contains_key(&qid) {
            return Status::INVALID_QUEUE_ID.dnr();
        }
        // Commands of the queue not carried out yet complete as aborted, first.
        let mut aborted: Vec<InFlight> = Vec::new();
        self.inflight.retain(|c| {
            let mine = c.sqid == qid;
            if mine {
                aborted.push(*c);
            }
            !mine
        });
        self.batch.retain(|c| {
            let mine = c.sqid == qid;
            if mine {
                aborted.push(*c);
            }
            !mine
        });
        aborted.sort_by_key(|c| c.seq);
        for c in aborted {
            self.post(ctx, qid, c.cmd.cid, Status::ABORTED_SQ_DELETION, 0, touched);
        }
        self.sqs.remove(&qid);
        Status::SUCCESS
    }

    fn delete_cq(&mut self, cmd: &SubmissionEntry) -> Status {
        let qid = cmd.cdw10() as u16;
        if qid == 0 || !self.cqs.contains_key(&qid) {
            return Status::INVALID_QUEUE_ID.dnr();
        }
        if self.sqs.values().any(|s| s.cqid == qid) {
            return Status::INVALID_QUEUE_DELETION.dnr();
        }
        self.cqs.remove(&qid);
        Status::SUCCESS
    }

    fn io(&mut self, ctx: &mut DeviceContext<'_>, cmd: &SubmissionEntry) -> Status {
        match cmd.opcode {
            nvm::FLUSH => {
                if self.ns_store(cmd.nsid).is_none() && cmd.nsid != 0xFFFF_FFFF {
                    return Status::INVALID_NAMESPACE.dnr();
                }
                self.stats.flushes += 1;
                Status::SUCCESS
            }
            nvm::READ | nvm::WRITE => {
                let Some(store) = self.ns_store(cmd.nsid) else {
                    return Status::INVALID_NAMESPACE.dnr();
                };
                let (lba, blocks) = (store.lba_size, store.blocks);
                let slba = cmd.cdw10() as u64 | (cmd.cdw11() as u64) << 32;
                let nlb = (cmd.cdw12() & 0xFFFF) as u64 + 1;
                if slba.checked_add(nlb).is_none_or(|end| end > blocks) {
                    return Status::LBA_OUT_OF_RANGE.dnr();
                }
                let bytes = nlb * lba;
                if self.cfg.mdts != 0 && bytes > (4096u64 << self.cfg.mpsmin << self.cfg.mdts) {
                    return Status::INVALID_FIELD.dnr();
                }
                let mut buf = vec![0u8; bytes as usize];
                if cmd.opcode == nvm::WRITE {
                    let s = self.fetch_from_host(ctx, cmd, &mut buf);
                    if s.is_success() {
                        if let Some(store) = self.ns_store_mut(cmd.nsid) {
                            store.write(slba * lba, &buf);
                        }
                        self.stats.blocks_written += nlb;
                    }
                    s
                } else {
                    if let Some(store) = self.ns_store(cmd.nsid) {
                        store.read(slba * lba, &mut buf);
                    }
                    let s = self.send_to_host(ctx, cmd, &buf);
                    if s.is_success() {
                        self.stats.blocks_read += nlb;
                    }
                    s
                }
            }
            _ => Status::INVALID_OPCODE.dnr(),
        }
    }

    /// BAR 0's size: the registers, then a doorbell pair per queue at the stride.
    pub(crate) fn bar0_bytes(cfg: &NvmeConfig) -> u64 {
        let doorbells = 2 * (cfg.io_queues as u64 + 1) * (4u64 << cfg.doorbell_stride);
        (DOORBELLS + doorbells).next_power_of_two().max(0x4000)
    }
}

impl PciDeviceModel for NvmeModel {
    fn name(&self) -> &str {
        "nvme"
    }

    fn config(&self) -> DeviceConfig {
        let vectors = self.cfg.io_queues + 1;
        let table = vectors as u64 * 16;
        let pba_offset = table.next_multiple_of(0x800);
        let pba_len = (vectors as u64).div_ceil(64) * 8;
        let bar4 = (pba_offset + pba_len).next_power_of_two().max(0x1000);
        DeviceConfig::new(PciId {
            vendor: NVME_VENDOR,
            device: NVME_DEVICE,
            class: NVME_CLASS,
        })
        .revision(2)
        .subsystem(0x1af4, 0x1100)
        .bar(0, BarSpec::mem64(Self::bar0_bytes(&self.cfg)))
        .bar(4, BarSpec::mem64(bar4))
        .msix(MsixSpec {
            vectors,
            table_bar: 4,
            table_offset: 0,
            pba_bar: 4,
            pba_offset: pba_offset as u32,
        })
    }

    fn bar_read(&mut self, ctx: &mut DeviceContext<'_>, bar: u8, offset: u64, width: Width) -> u64 {
        if bar != 0 {
            return 0;
        }
        self.tick(ctx);
        if offset >= DOORBELLS {
            return 0;
        }
        let base = offset & !3;
        match width {
            Width::W64 => self.reg32(offset) as u64 | (self.reg32(offset + 4) as u64) << 32,
            _ => {
                let shift = (offset - base) * 8;
                (self.reg32(base) as u64 >> shift) & width.max_value()
            }
        }
    }

    fn bar_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        bar: u8,
        offset: u64,
        width: Width,
        value: u64,
    ) {
        if bar != 0 {
            return;
        }
        self.tick(ctx);
        match width {
            Width::W32 => self.write_reg32(ctx, offset, value as u32),
            Width::W64 if offset < DOORBELLS => {
                self.write_reg32(ctx, offset, value as u32);
                self.write_reg32(ctx, offset + 4, (value >> 32) as u32);
            }
            _ => self.stats.ignored_register_writes += 1,
        }
    }

    fn reset(&mut self) {
        self.controller_reset();
        self.cc = 0;
        self.aqa = 0;
        self.asq = 0;
        self.acq = 0;
        self.intms = 0;
        self.enable_error = None;
        self.fatal_reason = None;
        self.stopping_until = 0;
    }
}
