//! The simulated NVMe controller, driven through the device seam and the platform's Mmio
//! only, by a small test driver written here ([`Host`]): bring-up, Identify, queues,
//! byte-exact transfers with PRP lists under 512- and 4096-byte LBAs, MDTS, malformed
//! commands, injected errors, fatal status, delayed and reordered completions, doorbell
//! stride, queue limits, interrupts, and DMA faults.
//!
//! The driver does what a real one must on the default (non-coherent, fragmented)
//! machine: CPU stores to queues and buffers are cleaned before a doorbell, completions
//! and read data are invalidated before the CPU looks, and every page the controller
//! touches is mapped in the function's IOMMU domain.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::device::{DmaView, InterruptSink, PciBus, PciFunction, PciMatch};
use dmakit::map::{mapped_read32, mapped_read64, mapped_write32, mapped_write64};
use dmakit::mapper::{Access, Mapper};
use dmakit::platform::{CacheOp, CacheOps, Task};
use dmakit::{Direction, PhysAddr};
use dmakit_sim::nvme::command::{admin, nvm};
use dmakit_sim::nvme::identify::{ctrl, ns, SERIAL};
use dmakit_sim::nvme::{
    regs, CommandFault, CompletionEntry, Prefill, Reorder, SimNvme, SimNvmeBuilder, Status,
    SubmissionEntry, NVME_CLASS,
};
use dmakit_sim::pci::{DmaMode, FunctionConfig, PciFaultSite, SimPciBus};
use dmakit_sim::{FaultKind, Machine, MachineBuilder};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

type M = Arc<Machine>;
const PAGE: u64 = 4096;

struct Counter(AtomicU64);

impl InterruptSink for Counter {
    fn raise(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Memory the controller reaches: a wired buffer, each page mapped in the IOMMU domain
/// (consecutive IO addresses) or addressed physically in bypass.
struct Dma {
    m: M,
    buf: BufferMemoryDescriptor<M>,
    iova: Option<u64>,
}

impl Dma {
    /// The device address of byte `off`.
    fn dev(&self, off: u64) -> u64 {
        match self.iova {
            Some(base) => base + off,
            None => self.buf.physical_segment(off).unwrap().addr.0,
        }
    }

    fn write(&self, off: u64, data: &[u8]) {
        self.buf.write(off, data).unwrap();
        let va = dmakit::VirtAddr(self.buf.address().0 + off);
        self.m
            .cache_virt(CacheOp::Clean, Task::KERNEL, va, data.len() as u64)
            .unwrap();
    }

    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let va = dmakit::VirtAddr(self.buf.address().0 + off);
        self.m
            .cache_virt(CacheOp::Invalidate, Task::KERNEL, va, len as u64)
            .unwrap();
        let mut out = vec![0u8; len];
        self.buf.read(off, &mut out).unwrap();
        out
    }
}

/// A queue pair as the driver keeps it.
struct Queue {
    qid: u16,
    sq: Dma,
    cq: Dma,
    sq_size: u32,
    cq_size: u32,
    tail: u32,
    head: u32,
    phase: bool,
}

/// The test driver.
struct Host {
    m: M,
    bus: SimPciBus,
    nvme: SimNvme,
    f: Arc<dyn PciFunction>,
    bar0: u64,
    dstrd: u8,
    mapper: Option<Arc<dyn Mapper>>,
    irqs: Vec<Arc<Counter>>,
    cid: AtomicU16,
}

impl Host {
    fn new(seed: u64, b: SimNvmeBuilder) -> Self {
        Self::with_dma(seed, b, DmaMode::DEFAULT_IOMMU)
    }

    fn with_dma(seed: u64, b: SimNvmeBuilder, dma: DmaMode) -> Self {
        let m: M = Arc::new(
            MachineBuilder::new()
                .seed(seed)
                .fragmentation(0.8)
                .build()
                .unwrap(),
        );
        let bus = SimPciBus::new(m.clone()).unwrap();
        let nvme = b
            .function(FunctionConfig::new().dma(dma))
            .attach(&bus)
            .unwrap();
        let f = bus.find(&PciMatch::class(NVME_CLASS)).unwrap();
        let bar0 = f.bar(0).unwrap().base.0;
        let cap = mapped_read64(&*m, PhysAddr(bar0 + regs::CAP)).unwrap();
        let mapper = match f.dma() {
            DmaView::Mapped(mp) => Some(mp),
            DmaView::Bypass { .. } => None,
        };
        let irqs = (0..f.interrupts().vectors)
            .map(|_| Arc::new(Counter(AtomicU64::new(0))))
            .collect();
        Host {
            m,
            bus,
            nvme,
            f,
            bar0,
            dstrd: ((cap >> 32) & 0xF) as u8,
            mapper,
            irqs,
            cid: AtomicU16::new(0),
        }
    }

    fn r32(&self, off: u64) -> u32 {
        mapped_read32(&*self.m, PhysAddr(self.bar0 + off)).unwrap()
    }

    fn w32(&self, off: u64, v: u32) {
        mapped_write32(&*self.m, PhysAddr(self.bar0 + off), v).unwrap()
    }

    fn w64(&self, off: u64, v: u64) {
        mapped_write64(&*self.m, PhysAddr(self.bar0 + off), v).unwrap()
    }

    fn csts(&self) -> u32 {
        self.r32(regs::CSTS)
    }

    fn alloc(&self, len: u64, contiguous: bool) -> Dma {
        let buf = BufferMemoryDescriptor::new(
            self.m.clone(),
            BufferOptions::new(len, Direction::InOut)
                .contiguous(contiguous)
                .alignment(PAGE),
        )
        .unwrap();
        let iova = self.mapper.as_ref().map(|mp| {
            let pages = len.div_ceil(PAGE);
            let iova = mp.iovm_alloc(pages).unwrap();
            for i in 0..pages {
                let pa = buf.physical_segment(i * PAGE).unwrap().addr;
                mp.iovm_insert_page(dmakit::IoAddr(iova.0 + i * PAGE), pa, Access::READ_WRITE)
                    .unwrap();
            }
            iova.0
        });
        let d = Dma {
            m: self.m.clone(),
            buf,
            iova,
        };
        d.write(0, &vec![0u8; len as usize]);
        d
    }

    fn queue(&self, qid: u16, sq_size: u32, cq_size: u32) -> Queue {
        Queue {
            qid,
            sq: self.alloc(sq_size as u64 * 64, true),
            cq: self.alloc(cq_size as u64 * 16, true),
            sq_size,
            cq_size,
            tail: 0,
            head: 0,
            phase: true,
        }
    }

    /// Bus mastering, interrupts, admin queue, CC.EN, wait for RDY.
    fn bring_up(&self) -> Queue {
        self.f.set_bus_master(true).unwrap();
        for (v, c) in self.irqs.iter().enumerate() {
            self.f.enable_interrupt(v as u32, c.clone()).unwrap();
        }
        self.w32(regs::CC, 0);
        assert_eq!(self.csts() & regs::CSTS_RDY, 0);
        let q = self.queue(0, 32, 32);
        self.w32(regs::AQA, (31 << 16) | 31);
        self.w64(regs::ASQ, q.sq.dev(0));
        self.w64(regs::ACQ, q.cq.dev(0));
        self.w32(regs::CC, regs::CC_EN | 6 << 16 | 4 << 20);
        for _ in 0..100 {
            if self.csts() & regs::CSTS_RDY != 0 {
                return q;
            }
        }
        panic!("never ready: {:?}", self.nvme.enable_error());
    }

    fn next_cid(&self) -> u16 {
        self.cid.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    fn submit(&self, q: &mut Queue, mut sqe: SubmissionEntry) -> u16 {
        if sqe.cid == 0 {
            sqe.cid = self.next_cid();
        }
        q.sq.write(q.tail as u64 * 64, &sqe.to_bytes());
        q.tail = (q.tail + 1) % q.sq_size;
        self.w32(regs::doorbell(q.qid, false, self.dstrd), q.tail);
        sqe.cid
    }

    /// The next completion if the controller posted one (the phase tag says so).
    fn poll(&self, q: &mut Queue) -> Option<CompletionEntry> {
        let raw = q.cq.read(q.head as u64 * 16, 16);
        let e = CompletionEntry::parse(raw.as_slice().try_into().unwrap());
        if e.phase != q.phase {
            return None;
        }
        q.head = (q.head + 1) % q.cq_size;
        if q.head == 0 {
            q.phase = !q.phase;
        }
        self.w32(regs::doorbell(q.qid, true, self.dstrd), q.head);
        Some(e)
    }

    /// Polls the queue, reading CSTS between polls (each read is a tick).
    fn wait(&self, q: &mut Queue) -> CompletionEntry {
        for _ in 0..100 {
            if let Some(e) = self.poll(q) {
                return e;
            }
            assert_eq!(self.csts() & regs::CSTS_CFS, 0, "controller fatal");
        }
        panic!("no completion on queue {}", q.qid);
    }

    fn cmd(&self, q: &mut Queue, sqe: SubmissionEntry) -> CompletionEntry {
        let cid = self.submit(q, sqe);
        let e = self.wait(q);
        assert_eq!(e.cid, cid);
        e
    }

    fn identify(&self, adm: &mut Queue, cns: u32, nsid: u32) -> (CompletionEntry, Vec<u8>) {
        // Two pages, the data starting mid-page so PRP2 is needed.
        let d = self.alloc(2 * PAGE, false);
        let e = self.cmd(
            adm,
            SubmissionEntry {
                opcode: admin::IDENTIFY,
                nsid,
                prp1: d.dev(0x200),
                prp2: d.dev(PAGE),
                cdw: [cns, 0, 0, 0, 0, 0],
                ..Default::default()
            },
        );
        (e, d.read(0x200, 4096))
    }

    /// Creates I/O queue pair `qid` (CQ first), interrupts on `vector`.
    fn pair(&self, adm: &mut Queue, qid: u16, entries: u32, vector: Option<u16>) -> Queue {
        let q = self.queue(qid, entries, entries);
        let (ien, iv) = vector.map_or((0, 0), |v| (2, v as u32));
        let e = self.cmd(adm, create_cq(qid, entries, q.cq.dev(0), ien | iv << 16));
        assert!(e.status.is_success(), "create CQ: {e:?}");
        let e = self.cmd(adm, create_sq(qid, entries, q.sq.dev(0), qid));
        assert!(e.status.is_success(), "create SQ: {e:?}");
        q
    }

    /// PRP1 and PRP2 for `len` bytes of `buf` from `off`; a PRP list (laid out from
    /// `list_off` in `list`, chained to the next list page when one fills) when needed.
    fn prps(&self, buf: &Dma, off: u64, len: u64, list: &Dma, list_off: u64) -> (u64, u64) {
        let prp1 = buf.dev(off);
        let first = (PAGE - off % PAGE).min(len);
        let mut pages = Vec::new();
        let mut at = off + first;
        while at < off + len {
            pages.push(buf.dev(at));
            at += PAGE;
        }
        match pages.len() {
            0 => (prp1, 0),
            1 => (prp1, pages[0]),
            _ => {
                let mut slot = list_off;
                let mut i = 0;
                while i < pages.len() {
                    let last_slot = (slot + 8).is_multiple_of(PAGE);
                    if last_slot && pages.len() - i > 1 {
                        // Chain to the next list page.
                        let next = slot + 8;
                        list.write(slot, &list.dev(next).to_le_bytes());
                        slot = next;
                        continue;
                    }
                    list.write(slot, &pages[i].to_le_bytes());
                    slot += 8;
                    i += 1;
                }
                (prp1, list.dev(list_off))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rw(
        &self,
        q: &mut Queue,
        opcode: u8,
        slba: u64,
        nlb: u32,
        buf: &Dma,
        off: u64,
        list: &Dma,
        list_off: u64,
    ) -> CompletionEntry {
        let len = nlb as u64 * self.nvme.lba_size();
        let (prp1, prp2) = self.prps(buf, off, len, list, list_off);
        self.cmd(q, io(opcode, slba, nlb, prp1, prp2))
    }
}

fn create_cq(qid: u16, entries: u32, base: u64, flags: u32) -> SubmissionEntry {
    SubmissionEntry {
        opcode: admin::CREATE_CQ,
        prp1: base,
        cdw: [qid as u32 | (entries - 1) << 16, 1 | flags, 0, 0, 0, 0],
        ..Default::default()
    }
}

fn create_sq(qid: u16, entries: u32, base: u64, cqid: u16) -> SubmissionEntry {
    SubmissionEntry {
        opcode: admin::CREATE_SQ,
        prp1: base,
        cdw: [
            qid as u32 | (entries - 1) << 16,
            1 | (cqid as u32) << 16,
            0,
            0,
            0,
            0,
        ],
        ..Default::default()
    }
}

fn io(opcode: u8, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> SubmissionEntry {
    SubmissionEntry {
        opcode,
        nsid: 1,
        prp1,
        prp2,
        cdw: [slba as u32, (slba >> 32) as u32, nlb - 1, 0, 0, 0],
        ..Default::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

// ---------------------------------------------------------------------------------------

#[test]
fn bring_up_reports_capabilities_and_sets_ready() {
    let h = Host::new(
        1,
        SimNvme::builder()
            .max_queue_entries(64)
            .doorbell_stride(2)
            .ready_delay(5),
    );
    let cap = mapped_read64(&*h.m, PhysAddr(h.bar0 + regs::CAP)).unwrap();
    assert_eq!(cap & 0xFFFF, 63, "MQES is 0's based");
    assert_ne!(cap & regs::CAP_CQR, 0);
    assert_eq!((cap >> 32) & 0xF, 2, "DSTRD");
    assert_ne!(cap & regs::CAP_CSS_NVM, 0);
    assert_eq!((cap >> 48) & 0xF, 0, "MPSMIN: 4 KiB");
    assert_eq!(h.r32(regs::VS), 0x0001_0400);

    h.f.set_bus_master(true).unwrap();
    let q = h.queue(0, 8, 8);
    h.w32(regs::AQA, (7 << 16) | 7);
    h.w64(regs::ASQ, q.sq.dev(0));
    h.w64(regs::ACQ, q.cq.dev(0));
    h.w32(regs::CC, regs::CC_EN | 6 << 16 | 4 << 20);
    let polls = (0..20)
        .position(|_| h.csts() & regs::CSTS_RDY != 0)
        .unwrap();
    assert_eq!(
        polls, 4,
        "RDY on the fifth CSTS read: five ticks after the CC store"
    );
    assert_eq!(h.r32(regs::CC) & regs::CC_EN, 1);
    assert_eq!(
        mapped_read64(&*h.m, PhysAddr(h.bar0 + regs::ASQ)).unwrap(),
        q.sq.dev(0)
    );
    // Shutdown notification completes at once; CC.EN = 0 resets.
    h.w32(regs::CC, h.r32(regs::CC) | 1 << regs::CC_SHN_SHIFT);
    assert_eq!((h.csts() >> 2) & 3, regs::SHST_COMPLETE);
    h.w32(regs::CC, 0);
    assert_eq!(h.csts(), 0);
    assert_eq!(h.nvme.stats().resets, 1);
}

#[test]
fn bad_configurations_never_become_ready() {
    let h = Host::new(2, SimNvme::builder());
    let q = h.queue(0, 8, 8);
    let setups: [(&str, u32, u32, u64); 4] = [
        ("IOSQES", (7 << 16) | 7, regs::CC_EN | 4 << 20, q.sq.dev(0)),
        ("AQA", 0, regs::CC_EN | 6 << 16 | 4 << 20, q.sq.dev(0)),
        ("ASQ", (7 << 16) | 7, regs::CC_EN | 6 << 16 | 4 << 20, 0),
        (
            "MPS",
            (7 << 16) | 7,
            regs::CC_EN | 6 << 16 | 4 << 20 | 5 << regs::CC_MPS_SHIFT,
            q.sq.dev(0),
        ),
    ];
    for (what, aqa, cc, asq) in setups {
        h.w32(regs::CC, 0);
        h.w32(regs::AQA, aqa);
        h.w64(regs::ASQ, asq);
        h.w64(regs::ACQ, q.cq.dev(0));
        h.w32(regs::CC, cc);
        for _ in 0..5 {
            assert_eq!(h.csts() & regs::CSTS_RDY, 0, "{what}");
        }
        assert!(h.nvme.enable_error().is_some(), "{what}");
    }
}

#[test]
fn identify_controller_and_namespace_under_both_lba_sizes() {
    for (lba, mdts, lbads) in [(512u32, 5u8, 9u32), (4096, 0, 12)] {
        let h = Host::new(3, SimNvme::builder().lba_size(lba).mdts(mdts).blocks(1000));
        let mut adm = h.bring_up();
        let (e, c) = h.identify(&mut adm, admin::CNS_CONTROLLER, 0);
        assert!(e.status.is_success(), "{e:?}");
        assert_eq!(
            &c[ctrl::SN..ctrl::SN + 20],
            format!("{SERIAL:<20}").as_bytes()
        );
        assert_eq!(c[ctrl::MDTS], mdts);
        assert_eq!(le32(&c, ctrl::NN), 1);
        assert_eq!(le32(&c, ctrl::VER), 0x0001_0400);
        assert_eq!((c[ctrl::SQES], c[ctrl::CQES]), (0x66, 0x44));
        assert_eq!(u16::from_le_bytes([c[0], c[1]]), 0x1b36);

        let (e, n) = h.identify(&mut adm, admin::CNS_NAMESPACE, 1);
        assert!(e.status.is_success());
        assert_eq!(
            u64::from_le_bytes(n[ns::NSZE..ns::NSZE + 8].try_into().unwrap()),
            1000
        );
        assert_eq!(n[ns::NLBAF], 0);
        assert_eq!(n[ns::FLBAS] & 0xF, 0);
        assert_eq!((le32(&n, ns::LBAF0) >> 16) & 0xFF, lbads);

        let (e, list) = h.identify(&mut adm, admin::CNS_ACTIVE_NS_LIST, 0);
        assert!(e.status.is_success());
        assert_eq!((le32(&list, 0), le32(&list, 4)), (1, 0));
        let (e, _) = h.identify(&mut adm, admin::CNS_NAMESPACE, 2);
        assert_eq!(e.status.code(), Status::INVALID_NAMESPACE.code());
        assert!(e.status.dnr);
        let (e, _) = h.identify(&mut adm, 0x55, 0);
        assert_eq!(e.status.code(), Status::INVALID_FIELD.code());
        assert_eq!(e.sq_id, 0);
        // Number of Queues reports what the controller has (8 by default), 0's based.
        let e = h.cmd(
            &mut adm,
            SubmissionEntry {
                opcode: admin::SET_FEATURES,
                cdw: [admin::FEATURE_NUM_QUEUES as u32, 0x0003_0003, 0, 0, 0, 0],
                ..Default::default()
            },
        );
        assert_eq!(e.dw0, 7 | 7 << 16);
    }
}

#[test]
fn writes_read_back_byte_exact_with_prp_lists_under_both_lba_sizes() {
    for lba in [512u32, 4096] {
        let h = Host::new(
            4,
            SimNvme::builder()
                .lba_size(lba)
                .mdts(0)
                .prefill(Prefill::Seeded(9)),
        );
        let mut adm = h.bring_up();
        let mut q = h.pair(&mut adm, 1, 16, Some(1));
        let data = h.alloc(64 * PAGE, false);
        let back = h.alloc(64 * PAGE, false);
        let list = h.alloc(4 * PAGE, false);

        // (blocks, buffer offset, list offset): one page, two pages, a list, a list that
        // starts two slots before the end of its page (so it chains at once).
        let blocks_per_page = PAGE as u32 / lba;
        let cases = [
            (1u32, 0u64, 0u64),
            (blocks_per_page, 0x200, 0),
            (3 * blocks_per_page, 0, 0),
            (40 * blocks_per_page + 1, 0x400, PAGE - 16),
        ];
        let mut slba = 3u64;
        for (nlb, off, list_off) in cases {
            let len = nlb as u64 * lba as u64;
            let bytes = pattern(len as usize, nlb as u8);
            data.write(off, &bytes);
            let e = h.rw(&mut q, nvm::WRITE, slba, nlb, &data, off, &list, list_off);
            assert!(e.status.is_success(), "write {nlb}: {e:?}");
            assert_eq!(e.sq_id, 1);
            assert_eq!(
                h.nvme
                    .namespace_bytes(1, slba * lba as u64, len as usize)
                    .unwrap(),
                bytes,
                "the store holds the bytes ({lba}, {nlb} blocks)"
            );
            back.write(0, &vec![0u8; 64 * PAGE as usize]);
            let e = h.rw(
                &mut q,
                nvm::READ,
                slba,
                nlb,
                &back,
                off + 8,
                &list,
                list_off,
            );
            assert!(e.status.is_success(), "read {nlb}: {e:?}");
            assert_eq!(back.read(off + 8, len as usize), bytes);
            assert_eq!(
                back.read(0, (off + 8) as usize),
                vec![0; (off + 8) as usize]
            );
            slba += nlb as u64 + 7;
        }
        // Neighbouring blocks kept their pre-fill.
        let mut fill = vec![0u8; lba as usize];
        Prefill::Seeded(9).fill(2, lba as u64, &mut fill);
        assert_eq!(h.nvme.block(1, 2).unwrap(), fill);
        let e = h.cmd(&mut q, io(nvm::FLUSH, 0, 1, 0, 0));
        assert!(e.status.is_success());
        let st = h.nvme.stats();
        assert_eq!(st.flushes, 1);
        assert_eq!(st.errors, 0, "{st:?}");
        assert!(h.f.set_bus_master(true).is_ok());
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: 600 pages (2.4 MB) written, read back and compared"
)]
fn a_maximal_transfer_chains_prp_list_pages() {
    // 600 pages: 599 PRP list entries, more than one list page holds.
    let h = Host::new(5, SimNvme::builder().lba_size(4096).mdts(0));
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 4, None);
    let data = h.alloc(601 * PAGE, false);
    let list = h.alloc(3 * PAGE, false);
    let bytes = pattern(600 * PAGE as usize, 3);
    data.write(0x800, &bytes[..]);
    let e = h.rw(&mut q, nvm::WRITE, 100, 600, &data, 0x800, &list, 0x100);
    assert!(e.status.is_success(), "{e:?}");
    assert_eq!(
        h.nvme.namespace_bytes(1, 100 * 4096, bytes.len()).unwrap(),
        bytes
    );
    let back = h.alloc(600 * PAGE, false);
    let e = h.rw(&mut q, nvm::READ, 100, 600, &back, 0, &list, 0);
    assert!(e.status.is_success());
    assert_eq!(back.read(0, bytes.len()), bytes);
}

#[test]
fn mdts_is_enforced() {
    let h = Host::new(6, SimNvme::builder().mdts(1));
    let mut adm = h.bring_up();
    let (_, c) = h.identify(&mut adm, admin::CNS_CONTROLLER, 0);
    assert_eq!(c[ctrl::MDTS], 1, "2 pages of 4 KiB");
    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(4 * PAGE, false);
    let list = h.alloc(PAGE, false);
    data.write(0, &[0x5A; 3 * PAGE as usize]);
    let e = h.rw(&mut q, nvm::WRITE, 0, 16, &data, 0, &list, 0);
    assert!(e.status.is_success(), "8 KiB is the limit");
    let before = h.nvme.namespace_bytes(1, 16 * 512, 512).unwrap();
    let e = h.rw(&mut q, nvm::WRITE, 16, 17, &data, 0, &list, 0);
    assert_eq!(e.status.code(), Status::INVALID_FIELD.code(), "{e:?}");
    assert!(e.status.dnr);
    assert_eq!(h.nvme.namespace_bytes(1, 16 * 512, 512).unwrap(), before);
    let e = h.rw(&mut q, nvm::READ, 0, 17, &data, 0, &list, 0);
    assert_eq!(e.status.code(), Status::INVALID_FIELD.code());
}

#[test]
fn malformed_commands_get_nvme_errors_and_move_nothing() {
    let h = Host::new(7, SimNvme::builder().blocks(64));
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 16, None);
    let data = h.alloc(4 * PAGE, false);
    let list = h.alloc(PAGE, false);
    data.write(0, &[0xEE; 4 * PAGE as usize]);
    let store = |h: &Host| h.nvme.namespace_bytes(1, 0, 64 * 512).unwrap();
    let before = store(&h);

    // PRP1 not dword aligned.
    let e = h.cmd(&mut q, io(nvm::WRITE, 0, 1, data.dev(2), 0));
    assert_eq!(e.status.code(), Status::PRP_OFFSET_INVALID.code());
    // PRP2 (a second page) not page aligned.
    let e = h.cmd(
        &mut q,
        io(nvm::WRITE, 0, 8, data.dev(0x100), data.dev(PAGE + 8)),
    );
    assert_eq!(e.status.code(), Status::PRP_OFFSET_INVALID.code());
    // A PRP list entry not page aligned.
    list.write(0, &(data.dev(PAGE) + 0x10).to_le_bytes());
    list.write(8, &data.dev(2 * PAGE).to_le_bytes());
    let e = h.cmd(&mut q, io(nvm::WRITE, 0, 24, data.dev(0), list.dev(0)));
    assert_eq!(e.status.code(), Status::PRP_OFFSET_INVALID.code());
    // PRP2 = 0 where a second page is needed: IO address 0 is not mapped.
    let faults = h.f.dma();
    drop(faults);
    let e = h.cmd(&mut q, io(nvm::WRITE, 0, 16, data.dev(0), 0));
    assert_eq!(e.status.code(), Status::DATA_TRANSFER_ERROR.code(), "{e:?}");
    assert_eq!(store(&h), before, "a failed write stores nothing");
    let nvme_fn = h.nvme.function();
    let iommu_faults = nvme_fn.iommu().unwrap().faults();
    assert_eq!(iommu_faults.last().unwrap().iova.0, 0);
    assert_eq!(iommu_faults.last().unwrap().kind, FaultKind::NotPresent);

    // A read whose second page is unmapped writes nothing, not even the first page.
    let e = h.cmd(&mut q, io(nvm::READ, 0, 16, data.dev(0), 0x7000_0000));
    assert_eq!(e.status.code(), Status::DATA_TRANSFER_ERROR.code());
    assert_eq!(data.read(0, PAGE as usize), vec![0xEE; PAGE as usize]);
    let wrote = iommu_faults.len();
    assert_eq!(nvme_fn.iommu().unwrap().faults().len(), wrote + 1);
    assert!(nvme_fn.iommu().unwrap().faults().last().unwrap().write);

    // Past the namespace, a namespace that does not exist, an unknown opcode.
    let e = h.cmd(&mut q, io(nvm::WRITE, 60, 5, data.dev(0), data.dev(PAGE)));
    assert_eq!(e.status.code(), Status::LBA_OUT_OF_RANGE.code());
    let e = h.cmd(&mut q, io(nvm::WRITE, u64::MAX, 2, data.dev(0), 0));
    assert_eq!(e.status.code(), Status::LBA_OUT_OF_RANGE.code());
    let mut bad_ns = io(nvm::READ, 0, 1, data.dev(0), 0);
    bad_ns.nsid = 7;
    assert_eq!(
        h.cmd(&mut q, bad_ns).status.code(),
        Status::INVALID_NAMESPACE.code()
    );
    let e = h.cmd(&mut q, io(0x7F, 0, 1, data.dev(0), 0));
    assert_eq!(e.status.code(), Status::INVALID_OPCODE.code());
    let e = h.cmd(
        &mut adm,
        SubmissionEntry {
            opcode: 0x7F,
            ..Default::default()
        },
    );
    assert_eq!(e.status.code(), Status::INVALID_OPCODE.code());
    assert_eq!(store(&h), before);
    assert_eq!(
        data.read(0, 4 * PAGE as usize),
        vec![0xEE; 4 * PAGE as usize]
    );
}

#[test]
fn a_prp_outside_ram_in_bypass_is_a_data_transfer_error() {
    let h = Host::with_dma(8, SimNvme::builder(), DmaMode::BYPASS_64);
    assert!(h.mapper.is_none());
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(2 * PAGE, true);
    data.write(0, &[1; 2 * PAGE as usize]);
    // 0x0 and 96 MiB are holes in the default RAM map.
    for hole in [0u64, 0x600_0000] {
        let e = h.cmd(&mut q, io(nvm::WRITE, 0, 16, data.dev(0), hole));
        assert_eq!(e.status.code(), Status::DATA_TRANSFER_ERROR.code());
    }
    assert_eq!(h.nvme.written_blocks(), 0);
    let e = h.cmd(&mut q, io(nvm::WRITE, 0, 16, data.dev(0), data.dev(PAGE)));
    assert!(e.status.is_success());
    assert_eq!(h.nvme.written_blocks(), 16);
}

#[test]
fn injected_command_errors_complete_with_their_status_and_move_nothing() {
    let h = Host::new(
        9,
        SimNvme::builder()
            .fault(CommandFault::admin(admin::IDENTIFY, Status::INTERNAL_ERROR).nth(2)),
    );
    let mut adm = h.bring_up();
    let (e, _) = h.identify(&mut adm, admin::CNS_CONTROLLER, 0);
    assert!(e.status.is_success());
    let (e, _) = h.identify(&mut adm, admin::CNS_CONTROLLER, 0);
    assert_eq!(e.status, Status::INTERNAL_ERROR, "the second Identify");
    let (e, _) = h.identify(&mut adm, admin::CNS_CONTROLLER, 0);
    assert!(e.status.is_success());

    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(PAGE, false);
    let list = h.alloc(PAGE, false);
    data.write(0, &[0xAB; PAGE as usize]);
    h.nvme
        .inject(CommandFault::io(nvm::WRITE, Status::WRITE_FAULT));
    h.nvme
        .inject(CommandFault::io(nvm::READ, Status::UNRECOVERED_READ_ERROR));
    let e = h.rw(&mut q, nvm::WRITE, 0, 8, &data, 0, &list, 0);
    assert_eq!(e.status, Status::WRITE_FAULT);
    assert_eq!(h.nvme.written_blocks(), 0);
    let e = h.rw(&mut q, nvm::READ, 0, 8, &data, 0, &list, 0);
    assert_eq!(e.status, Status::UNRECOVERED_READ_ERROR);
    assert_eq!(data.read(0, PAGE as usize), vec![0xAB; PAGE as usize]);
    let e = h.rw(&mut q, nvm::WRITE, 0, 8, &data, 0, &list, 0);
    assert!(e.status.is_success(), "one error each");
    assert_eq!(h.nvme.stats().injected_errors, 3);
}

#[test]
fn controller_fatal_status_stops_the_controller_until_reset() {
    let h = Host::new(10, SimNvme::builder());
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(PAGE, false);
    h.nvme.raise_fatal();
    assert_ne!(h.csts() & regs::CSTS_CFS, 0);
    assert_ne!(
        h.csts() & regs::CSTS_RDY,
        0,
        "RDY stays; CFS says it is broken"
    );
    h.submit(&mut q, io(nvm::WRITE, 0, 1, data.dev(0), 0));
    for _ in 0..10 {
        assert!(h.poll(&mut q).is_none(), "nothing completes");
    }
    assert_eq!(h.nvme.written_blocks(), 0);
    assert!(h.nvme.fatal_reason().unwrap().contains("on demand"));

    // The recovery a driver does: reset, bring up again, queues again.
    h.w32(regs::CC, 0);
    assert_eq!(h.csts() & (regs::CSTS_CFS | regs::CSTS_RDY), 0);
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 8, None);
    let e = h.cmd(&mut q, io(nvm::WRITE, 0, 1, data.dev(0), 0));
    assert!(e.status.is_success());

    // Planned: the 4th command fetched (Identify, create CQ, create SQ, then the write).
    let h = Host::new(11, SimNvme::builder().fatal_after(4));
    let mut adm = h.bring_up();
    h.identify(&mut adm, admin::CNS_CONTROLLER, 0);
    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(PAGE, false);
    h.submit(&mut q, io(nvm::WRITE, 0, 1, data.dev(0), 0));
    assert_ne!(h.csts() & regs::CSTS_CFS, 0);
    assert!(h.poll(&mut q).is_none());
    assert_eq!(h.nvme.stats().fatal_errors, 1);
}

#[test]
fn completions_wait_for_polls_or_steps() {
    let h = Host::new(12, SimNvme::builder().completion_delay(3));
    let mut adm = h.bring_up();
    // Admin commands are delayed too: `cmd` polls CSTS until they complete.
    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(PAGE, false);
    h.submit(&mut q, io(nvm::WRITE, 0, 1, data.dev(0), 0));
    assert!(h.poll(&mut q).is_none(), "fetched, not carried out");
    assert_eq!(h.nvme.stats().pending, 1);
    h.nvme.step();
    assert!(h.poll(&mut q).is_none());
    h.nvme.step();
    // The third tick: a driver polling CSTS.
    h.csts();
    let e = h.poll(&mut q).expect("due after three ticks");
    assert!(e.status.is_success());
    assert_eq!(e.sq_head, 1, "SQ head when it was fetched");

    h.submit(&mut q, io(nvm::WRITE, 1, 1, data.dev(0), 0));
    h.submit(&mut q, io(nvm::WRITE, 2, 1, data.dev(0), 0));
    assert_eq!(h.nvme.run_until_idle(), 2);
    assert!(h.poll(&mut q).is_some() && h.poll(&mut q).is_some());
    assert_eq!(h.nvme.stats().pending, 0);
    h.nvme.steps(5);
    assert!(h.poll(&mut q).is_none());
}

/// Two SQs sharing one CQ, eight commands carried out together: the CQ shows the order
/// the controller chose.
fn shared_cq_order(seed: u64, reorder: Reorder) -> Vec<(u16, u16)> {
    let h = Host::new(
        13,
        SimNvme::builder()
            .seed(seed)
            .completion_delay(1000)
            .reorder(reorder),
    );
    let mut adm = h.bring_up();
    // Admin commands wait 1000 ticks too: carry each out at once.
    let mut admin_now = |c: SubmissionEntry| {
        h.submit(&mut adm, c);
        assert_eq!(h.nvme.run_until_idle(), 1);
        let e = h.poll(&mut adm).expect("posted");
        assert!(e.status.is_success(), "{e:?}");
    };
    let mut cq_only = h.queue(1, 32, 32);
    admin_now(create_cq(1, 32, cq_only.cq.dev(0), 0));
    let mut sqs: Vec<Queue> = (1..=2)
        .map(|qid| {
            let q = h.queue(qid, 8, 8);
            admin_now(create_sq(qid, 8, q.sq.dev(0), 1));
            q
        })
        .collect();
    let data = h.alloc(PAGE, false);
    for (i, q) in sqs.iter_mut().enumerate() {
        for k in 0..4u16 {
            let mut c = io(nvm::READ, 0, 1, data.dev(0), 0);
            c.cid = (i as u16 + 1) * 100 + k;
            h.submit(q, c);
        }
    }
    // Every command is due at once.
    assert_eq!(h.nvme.run_until_idle(), 8);
    let mut order = Vec::new();
    while let Some(e) = h.poll(&mut cq_only) {
        order.push((e.sq_id, e.cid));
    }
    order
}

#[test]
fn reordering_across_queues_is_deterministic_by_seed() {
    let in_order = shared_cq_order(1, Reorder::InOrder);
    assert_eq!(
        in_order,
        [
            (1, 100),
            (1, 101),
            (1, 102),
            (1, 103),
            (2, 200),
            (2, 201),
            (2, 202),
            (2, 203)
        ]
    );
    let a = shared_cq_order(7, Reorder::AcrossQueues);
    assert_eq!(
        a,
        shared_cq_order(7, Reorder::AcrossQueues),
        "same seed, same order"
    );
    assert_ne!(a, in_order, "interleaved");
    for sq in [1, 2] {
        let cids: Vec<u16> = a.iter().filter(|c| c.0 == sq).map(|c| c.1).collect();
        assert!(cids.is_sorted(), "each queue in order: {a:?}");
    }
    let seeds: Vec<_> = (0..8)
        .map(|s| shared_cq_order(s, Reorder::AcrossQueues))
        .collect();
    assert!(seeds.iter().any(|o| *o != seeds[0]), "the seed decides");
    let any = (0..8).map(|s| shared_cq_order(s, Reorder::Any)).find(|o| {
        o.iter()
            .filter(|c| c.0 == 1)
            .map(|c| c.1)
            .collect::<Vec<_>>()
            != [100, 101, 102, 103]
    });
    assert!(any.is_some(), "Any also shuffles within a queue");
}

#[test]
fn doorbells_sit_at_the_configured_stride() {
    let h = Host::new(14, SimNvme::builder().doorbell_stride(3));
    assert_eq!(h.dstrd, 3);
    assert_eq!(regs::doorbell(1, true, 3), 0x1000 + 3 * 32);
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(PAGE, false);
    // A store between two doorbells is ignored.
    let before = h.nvme.stats().ignored_doorbells;
    h.w32(regs::doorbell(1, false, 3) - 4, 1);
    assert_eq!(h.nvme.stats().ignored_doorbells, before + 1);
    // So is a tail past the queue, and a queue that does not exist.
    h.w32(regs::doorbell(1, false, 3), 9);
    h.w32(regs::doorbell(5, false, 3), 1);
    assert_eq!(h.nvme.stats().ignored_doorbells, before + 3);
    let e = h.cmd(&mut q, io(nvm::WRITE, 0, 1, data.dev(0), 0));
    assert!(e.status.is_success());
    assert!(h.nvme.function().bar(0).unwrap().len >= 0x1000 + 2 * 9 * 32);
}

#[test]
fn queue_limits_and_deletion_rules() {
    let h = Host::new(15, SimNvme::builder().max_queue_entries(16).io_queues(2));
    let mut adm = h.bring_up();
    let q = h.queue(1, 32, 32);
    let status = |h: &Host, adm: &mut Queue, c| h.cmd(adm, c).status.code();
    assert_eq!(
        status(&h, &mut adm, create_cq(1, 17, q.cq.dev(0), 0)),
        Status::INVALID_QUEUE_SIZE.code(),
        "MQES"
    );
    assert_eq!(
        status(&h, &mut adm, create_cq(1, 1, q.cq.dev(0), 0)),
        Status::INVALID_QUEUE_SIZE.code()
    );
    assert_eq!(
        status(&h, &mut adm, create_cq(3, 8, q.cq.dev(0), 0)),
        Status::INVALID_QUEUE_ID.code(),
        "2 I/O queues"
    );
    assert_eq!(
        status(&h, &mut adm, create_cq(0, 8, q.cq.dev(0), 0)),
        Status::INVALID_QUEUE_ID.code()
    );
    assert_eq!(
        status(&h, &mut adm, create_cq(1, 8, q.cq.dev(0x10), 0)),
        Status::PRP_OFFSET_INVALID.code()
    );
    assert_eq!(
        status(&h, &mut adm, create_cq(1, 8, q.cq.dev(0), 2 | 5 << 16)),
        Status::INVALID_VECTOR.code()
    );
    let mut nc = create_cq(1, 8, q.cq.dev(0), 0);
    nc.cdw[1] = 0;
    assert_eq!(
        status(&h, &mut adm, nc),
        Status::INVALID_FIELD.code(),
        "PC = 0"
    );
    assert_eq!(
        status(&h, &mut adm, create_sq(1, 8, q.sq.dev(0), 1)),
        Status::CQ_INVALID.code()
    );
    assert!(h
        .cmd(&mut adm, create_cq(1, 16, q.cq.dev(0), 0))
        .status
        .is_success());
    assert_eq!(
        status(&h, &mut adm, create_cq(1, 16, q.cq.dev(0), 0)),
        Status::INVALID_QUEUE_ID.code(),
        "exists"
    );
    assert!(h
        .cmd(&mut adm, create_sq(1, 16, q.sq.dev(0), 1))
        .status
        .is_success());
    let delete = |op, qid: u16| SubmissionEntry {
        opcode: op,
        cdw: [qid as u32, 0, 0, 0, 0, 0],
        ..Default::default()
    };
    assert_eq!(
        status(&h, &mut adm, delete(admin::DELETE_CQ, 1)),
        Status::INVALID_QUEUE_DELETION.code(),
        "an SQ still uses it"
    );
    assert!(h
        .cmd(&mut adm, delete(admin::DELETE_SQ, 1))
        .status
        .is_success());
    assert!(h
        .cmd(&mut adm, delete(admin::DELETE_CQ, 1))
        .status
        .is_success());
    assert_eq!(
        status(&h, &mut adm, delete(admin::DELETE_SQ, 1)),
        Status::INVALID_QUEUE_ID.code()
    );
    // Four Asynchronous Event Requests are held; a fifth is refused.
    for _ in 0..4 {
        h.submit(
            &mut adm,
            SubmissionEntry {
                opcode: admin::ASYNC_EVENT,
                ..Default::default()
            },
        );
    }
    assert!(h.poll(&mut adm).is_none());
    assert_eq!(
        status(
            &h,
            &mut adm,
            SubmissionEntry {
                opcode: admin::ASYNC_EVENT,
                ..Default::default()
            }
        ),
        Status::AER_LIMIT_EXCEEDED.code()
    );
}

#[test]
fn completions_interrupt_on_the_cq_vector_with_masking_honoured() {
    let h = Host::new(16, SimNvme::builder().io_queues(3));
    let mut adm = h.bring_up();
    let admin_irqs = h.irqs[0].0.load(Ordering::SeqCst);
    assert!(admin_irqs == 0);
    let mut q = h.pair(&mut adm, 2, 8, Some(2));
    assert_eq!(
        h.irqs[0].0.load(Ordering::SeqCst),
        2,
        "one per admin completion"
    );
    let data = h.alloc(PAGE, false);
    let e = h.cmd(&mut q, io(nvm::WRITE, 0, 1, data.dev(0), 0));
    assert!(e.status.is_success());
    let count = |v: usize| h.irqs[v].0.load(Ordering::SeqCst);
    assert_eq!((count(1), count(2), count(3)), (0, 1, 0));

    // Mask vector 2 in the MSI-X table (BAR 4): the completion is posted, the interrupt
    // waits in the pending bit until unmasked.
    let table = h.f.bar(4).unwrap().base.0;
    mapped_write32(&*h.m, PhysAddr(table + 2 * 16 + 12), 1).unwrap();
    h.submit(&mut q, io(nvm::WRITE, 1, 1, data.dev(0), 0));
    assert_eq!(count(2), 1);
    assert!(h.nvme.function().msix_pending(2));
    assert!(h.poll(&mut q).is_some(), "posted all the same");
    mapped_write32(&*h.m, PhysAddr(table + 2 * 16 + 12), 0).unwrap();
    assert_eq!(count(2), 2);
    // A CQ made without interrupts never signals.
    let mut quiet = h.pair(&mut adm, 1, 8, None);
    h.cmd(&mut quiet, io(nvm::WRITE, 2, 1, data.dev(0), 0));
    assert_eq!(count(1), 0);
}

#[test]
fn a_full_completion_queue_holds_completions_until_the_head_moves() {
    let h = Host::new(17, SimNvme::builder());
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 4, None);
    let mut big_sq = h.queue(1, 16, 4);
    // Replace the SQ with a deeper one on the same 4-entry CQ.
    let del = SubmissionEntry {
        opcode: admin::DELETE_SQ,
        cdw: [1, 0, 0, 0, 0, 0],
        ..Default::default()
    };
    assert!(h.cmd(&mut adm, del).status.is_success());
    assert!(h
        .cmd(&mut adm, create_sq(1, 16, big_sq.sq.dev(0), 1))
        .status
        .is_success());
    let data = h.alloc(PAGE, false);
    for k in 0..5u64 {
        h.submit(&mut big_sq, io(nvm::WRITE, k, 1, data.dev(0), 0));
    }
    assert_eq!(h.nvme.written_blocks(), 5, "all carried out");
    // Three slots hold completions (one stays empty); read them without ringing the
    // head doorbell, then ring it once.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let raw = q.cq.read(q.head as u64 * 16, 16);
        let e = CompletionEntry::parse(raw.as_slice().try_into().unwrap());
        if e.phase != q.phase {
            break;
        }
        seen.push(e.cid);
        q.head = (q.head + 1) % 4;
        if q.head == 0 {
            q.phase = !q.phase;
        }
    }
    assert_eq!(seen.len(), 3);
    h.w32(regs::doorbell(1, true, 0), q.head);
    while let Some(e) = h.poll(&mut q) {
        seen.push(e.cid);
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.is_sorted());
}

#[test]
fn dma_faults_fail_the_data_step_or_make_the_controller_fatal() {
    let h = Host::new(18, SimNvme::builder());
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(2 * PAGE, false);
    data.write(0, &[7; 2 * PAGE as usize]);
    // DMA steps of a write: fetch the entry (1), read 2 data pages (2, 3), post (4).
    let base = h.bus.calls(PciFaultSite::Dma);
    h.bus.inject(PciFaultSite::Dma, base + 3);
    let e = h.cmd(&mut q, io(nvm::WRITE, 0, 16, data.dev(0), data.dev(PAGE)));
    assert_eq!(e.status.code(), Status::DATA_TRANSFER_ERROR.code());
    assert_eq!(h.nvme.written_blocks(), 0, "nothing stored");
    assert_eq!(
        h.bus.calls(PciFaultSite::Dma),
        base + 4,
        "the post still happened"
    );

    // The entry fetch fails: the controller cannot even say which command failed.
    h.bus.inject_next(PciFaultSite::Dma);
    h.submit(&mut q, io(nvm::WRITE, 0, 1, data.dev(0), 0));
    assert_ne!(h.csts() & regs::CSTS_CFS, 0);
    assert!(h.nvme.fatal_reason().unwrap().contains("fetched"));

    // Bus mastering off: the same (no fetch is possible).
    h.w32(regs::CC, 0);
    let mut adm = h.bring_up();
    h.f.set_bus_master(false).unwrap();
    h.submit(
        &mut adm,
        SubmissionEntry {
            opcode: admin::IDENTIFY,
            ..Default::default()
        },
    );
    assert_ne!(h.csts() & regs::CSTS_CFS, 0);
    assert!(h.nvme.function().stats().dma_refused >= 1);
}

#[test]
fn the_guest_image_prefill_reads_back_through_the_controller() {
    let h = Host::new(
        19,
        SimNvme::builder()
            .lba_size(4096)
            .prefill(Prefill::GuestImage),
    );
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(PAGE, false);
    let e = h.cmd(&mut q, io(nvm::READ, 5, 1, data.dev(0), 0));
    assert!(e.status.is_success());
    let block = data.read(0, PAGE as usize);
    for s in 0..8u64 {
        let sector = &block[s as usize * 512..][..512];
        assert_eq!(sector, Prefill::guest_sector(40 + s));
    }
    assert!(block.starts_with(b"dmakit LBA 40\n"));
    assert_eq!(h.nvme.block(1, 5).unwrap(), block);
    h.nvme
        .write_namespace(1, 5 * 4096 + 100, b"patched")
        .unwrap();
    let e = h.cmd(&mut q, io(nvm::READ, 5, 1, data.dev(0), 0));
    assert!(e.status.is_success());
    assert_eq!(&data.read(100, 7), b"patched");
    assert!(h
        .nvme
        .namespace_bytes(1, h.nvme.blocks() * 4096 - 1, 2)
        .is_err());
    assert!(h.nvme.namespace_bytes(2, 0, 1).is_err());
}

#[test]
fn function_reset_stops_the_controller_and_keeps_the_data() {
    let h = Host::new(20, SimNvme::builder());
    let mut adm = h.bring_up();
    let mut q = h.pair(&mut adm, 1, 8, None);
    let data = h.alloc(PAGE, false);
    data.write(0, &[3; PAGE as usize]);
    assert!(h
        .cmd(&mut q, io(nvm::WRITE, 9, 1, data.dev(0), 0))
        .status
        .is_success());
    h.f.reset().unwrap();
    assert_eq!(h.r32(regs::CC), 0);
    assert_eq!(h.csts(), 0);
    assert_eq!(h.nvme.block(1, 9).unwrap(), vec![3; 512]);
    // Routes are gone after a reset: bring-up routes them again.
    let mut adm = h.bring_up();
    let (e, _) = h.identify(&mut adm, admin::CNS_CONTROLLER, 0);
    assert!(e.status.is_success());
}

#[test]
fn hostile_queue_addresses_fault_instead_of_panicking() {
    let h = Host::new(21, SimNvme::builder());
    let mut adm = h.bring_up();
    // A completion queue whose entries run off the top of the address space.
    let top = u64::MAX - 0xFFF;
    assert!(h
        .cmd(&mut adm, create_cq(1, 256, top, 0))
        .status
        .is_success());
    assert!(h
        .cmd(&mut adm, create_sq(1, 8, h.alloc(PAGE, true).dev(0), 1))
        .status
        .is_success());
    // An SQ at the top too: fetching its entry faults, which only CFS can report.
    assert!(h
        .cmd(&mut adm, create_cq(2, 8, h.alloc(PAGE, true).dev(0), 0))
        .status
        .is_success());
    assert!(h
        .cmd(&mut adm, create_sq(2, 256, top, 2))
        .status
        .is_success());
    h.w32(regs::doorbell(2, false, 0), 255);
    assert_ne!(h.csts() & regs::CSTS_CFS, 0);
    assert!(h.nvme.fatal_reason().unwrap().contains("fetched"));
    // After a reset, a command whose completion cannot be written is fatal too.
    h.w32(regs::CC, 0);
    let mut adm = h.bring_up();
    assert!(h
        .cmd(&mut adm, create_cq(1, 256, top, 0))
        .status
        .is_success());
    let mut q = h.queue(1, 8, 8);
    assert!(h
        .cmd(&mut adm, create_sq(1, 8, q.sq.dev(0), 1))
        .status
        .is_success());
    h.submit(&mut q, io(nvm::FLUSH, 0, 1, 0, 0));
    assert_ne!(h.csts() & regs::CSTS_CFS, 0);
    assert!(h.nvme.fatal_reason().unwrap().contains("completion"));
}

#[test]
fn two_threads_on_two_queue_pairs_complete_byte_exact() {
    let h = Host::new(22, SimNvme::builder().lba_size(4096).io_queues(2));
    let mut adm = h.bring_up();
    let pairs = [
        h.pair(&mut adm, 1, 16, Some(1)),
        h.pair(&mut adm, 2, 16, Some(2)),
    ];
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // A bystander looking at the machine while devices do DMA.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                assert!(h.m.layout().mmio.iter().any(|w| w.2 == "pci"));
                let _ = h.f.config_read(0, dmakit::platform::Width::W32).unwrap();
            }
        });
        let workers: Vec<_> = pairs
            .into_iter()
            .enumerate()
            .map(|(i, mut q)| {
                let h = &h;
                s.spawn(move || {
                    let data = h.alloc(4 * PAGE, false);
                    let back = h.alloc(4 * PAGE, false);
                    let list = h.alloc(PAGE, false);
                    for k in 0..40u64 {
                        let slba = 1000 * i as u64 + 4 * k;
                        let bytes = pattern(3 * PAGE as usize, (k as u8) ^ (i as u8 * 0x55));
                        data.write(0, &bytes);
                        let e = h.rw(&mut q, nvm::WRITE, slba, 3, &data, 0, &list, 0);
                        assert!(e.status.is_success(), "{e:?}");
                        let e = h.rw(&mut q, nvm::READ, slba, 3, &back, 0, &list, 0);
                        assert!(e.status.is_success(), "{e:?}");
                        assert_eq!(back.read(0, bytes.len()), bytes);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    for i in 0..2u64 {
        let k = 39u64;
        let bytes = pattern(3 * PAGE as usize, (k as u8) ^ (i as u8 * 0x55));
        assert_eq!(
            h.nvme
                .namespace_bytes(1, (1000 * i + 4 * k) * 4096, bytes.len())
                .unwrap(),
            bytes
        );
    }
    assert_eq!(h.nvme.stats().blocks_written, 2 * 40 * 3);
    assert!(h.irqs[1].0.load(Ordering::SeqCst) >= 80);
    assert!(h.irqs[2].0.load(Ordering::SeqCst) >= 80);
}
