//! The portable NVMe driver (`dmakit-nvme`) against the simulated controller, with
//! arbitrary controller knobs (block size, MDTS, queue limits, completion delay and
//! reordering, doorbell stride, DMA through an IOMMU window, one ending at 2^64 too, or
//! bypass under an address limit), several queue pairs, and arbitrary sequences of reads,
//! writes and flushes of any size and offset into nested descriptors, with injected command
//! errors, machine faults and fatal controller states between them.
//!
//! Oracles: a read that succeeds holds the controller's backing store; a write that
//! succeeds is in the store; the store outside a failed write never changes (a model of
//! it is kept); a clean command (no fault planned, valid sizes) succeeds; nothing panics;
//! and when the driver is gone, every page, wiring, allocation and IO mapping is back.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use dmakit::descriptor::MemoryDescriptor;
use dmakit::device::{PciBus, PciFunction, PciMatch};
use dmakit_fuzz::shapes::{build, pattern, Shape, M};
use dmakit_nvme::{IoQueue, NamespaceIdentity, Nvme, NvmeOptions, PollTimer, QueueOptions};
use dmakit_sim::nvme::command::nvm;
use dmakit_sim::nvme::{CommandFault, Reorder, SimNvme, Status, NVME_CLASS};
use dmakit_sim::pci::{DmaMode, FunctionConfig, SimPciBus};
use dmakit_sim::{FaultSite, MachineBuilder};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

/// Blocks of the namespace the operations touch (the model covers them).
const SPAN_BLOCKS: u64 = 96;

/// One read or write: queue, first block, block count, odd bytes over, buffer shape and
/// offset in the buffer.
#[derive(Debug)]
struct Io {
    q: u8,
    lba: u16,
    blocks: u8,
    odd: u16,
    shape: Shape,
    off: u16,
}

#[derive(Debug)]
enum Op {
    Write(Io),
    Read(Io),
    Flush(u8),
    /// The next I/O command with this opcode fails with a status.
    CommandError(u8, u8),
    /// The nth call at a machine fault site fails.
    MachineFault(u8, u8),
    /// The controller reports a fatal status.
    Fatal,
    Recover(bool),
}

#[derive(Debug)]
struct Input {
    seed: u8,
    lba_4k: bool,
    mdts: Option<u8>,
    max_entries: u32,
    io_queues: u16,
    delay: u32,
    reorder: u8,
    stride: u8,
    dma: DmaMode,
    queues: Vec<u16>,
    ops: Vec<Op>,
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    let io = |u: &mut Unstructured<'_>| -> Result<(u8, u16, u8, u16, Shape, u16)> {
        Ok((
            u.arbitrary()?,
            u.arbitrary()?,
            u.int_in_range(0..=40)?,
            if u.ratio(1, 8)? { u.arbitrary()? } else { 0 },
            Shape::draw(u, 2)?,
            if u.ratio(1, 3)? { u.arbitrary()? } else { 0 },
        ))
    };
    Ok(match u.int_in_range(0u8..=14)? {
        0..=4 => {
            let (q, lba, blocks, odd, shape, off) = io(u)?;
            Op::Write(Io {
                q,
                lba,
                blocks,
                odd,
                shape,
                off,
            })
        }
        5..=9 => {
            let (q, lba, blocks, odd, shape, off) = io(u)?;
            Op::Read(Io {
                q,
                lba,
                blocks,
                odd,
                shape,
                off,
            })
        }
        10 => Op::Flush(u.arbitrary()?),
        11 => Op::CommandError(u.arbitrary()?, u.arbitrary()?),
        12 => Op::MachineFault(u.arbitrary()?, u.int_in_range(1..=6)?),
        13 => Op::Fatal,
        _ => Op::Recover(u.arbitrary()?),
    })
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let dma = match u.int_in_range(0u8..=4)? {
            0 => DmaMode::DEFAULT_IOMMU,
            1 => DmaMode::Iommu {
                base: 0u64.wrapping_sub(1 << 32),
                len: 1 << 32,
            },
            2 => DmaMode::Iommu {
                base: 0x1000,
                len: u.int_in_range(0x100u64..=0x4000)? << 12,
            },
            3 => DmaMode::Bypass {
                max_address: 0xFFFF_FFFF,
            },
            _ => DmaMode::Bypass {
                max_address: u64::MAX,
            },
        };
        let mut queues = Vec::new();
        for _ in 0..u.int_in_range(1..=3)? {
            queues.push(u.int_in_range(2..=64)?);
        }
        let mut ops = Vec::new();
        for _ in 0..u.int_in_range(0..=12)? {
            ops.push(op(u)?);
        }
        Ok(Input {
            seed: u.arbitrary()?,
            lba_4k: u.arbitrary()?,
            mdts: if u.arbitrary()? {
                Some(u.int_in_range(0..=5)?)
            } else {
                None
            },
            max_entries: u.int_in_range(2..=256)?,
            io_queues: u.int_in_range(1..=4)?,
            delay: if u.ratio(1, 4)? {
                u.int_in_range(0..=200)?
            } else {
                0
            },
            reorder: u.int_in_range(0..=2)?,
            stride: if u.ratio(1, 4)? {
                u.int_in_range(0..=3)?
            } else {
                0
            },
            dma,
            queues,
            ops,
        })
    }
}

struct Sim {
    m: M,
    bus: SimPciBus,
    nvme: SimNvme,
    f: Arc<dyn PciFunction>,
}

impl Sim {
    fn new(i: &Input) -> Option<Sim> {
        let m: M = Arc::new(
            MachineBuilder::new()
                .coherent(false)
                .seed(i.seed as u64)
                .fragmentation(0.8)
                .build()
                .ok()?,
        );
        let bus = SimPciBus::new(m.clone()).ok()?;
        let lba = if i.lba_4k { 4096 } else { 512 };
        let mut b = SimNvme::builder()
            .seed(i.seed as u64)
            .lba_size(lba)
            .blocks((8u64 << 20) / lba as u64)
            .max_queue_entries(i.max_entries)
            .io_queues(i.io_queues)
            .completion_delay(i.delay)
            .reorder([Reorder::InOrder, Reorder::AcrossQueues, Reorder::Any][i.reorder as usize])
            .doorbell_stride(i.stride);
        if let Some(mdts) = i.mdts {
            b = b.mdts(mdts);
        }
        let nvme = b
            .function(FunctionConfig::new().dma(i.dma))
            .attach(&bus)
            .ok()?;
        let f = bus.find(&PciMatch::class(NVME_CLASS)).ok()?;
        Some(Sim { m, bus, nvme, f })
    }

    fn resources(&self) -> Vec<(&'static str, u64)> {
        let s = self.m.stats();
        let mut v = vec![
            ("pages in use", s.used_pages()),
            ("wired pages", s.wired_pages),
            ("allocations", s.allocations),
        ];
        if let Some(mp) = self.nvme.function().mapper() {
            let (live, entries) = mp.usage();
            v.push(("IO allocations", live as u64));
            v.push(("IO page mappings", entries as u64));
        }
        v
    }

    /// The first blocks of namespace 1 (the span and one block more).
    fn store(&self) -> Vec<u8> {
        let n = (SPAN_BLOCKS + 1) * self.nvme.lba_size();
        self.nvme
            .namespace_bytes(1, 0, n as usize)
            .expect("the store")
    }
}

struct Run<'a> {
    sim: &'a Sim,
    nvme: Nvme<M>,
    ns: NamespaceIdentity,
    queues: Vec<IoQueue<M>>,
    model: Vec<u8>,
    /// A fault or fatal state is planned: commands may fail.
    hostile: bool,
}

impl Run<'_> {
    fn io(&mut self, write: bool, io: &Io) {
        let Io {
            q,
            lba,
            blocks,
            odd,
            ref shape,
            off,
        } = *io;
        let bs = self.sim.nvme.lba_size();
        let lba = lba as u64 % SPAN_BLOCKS;
        let len = (blocks as u64 * bs).min((SPAN_BLOCKS - lba) * bs) + odd as u64 % 3;
        let Some(built) = build(&self.sim.m, shape) else {
            return;
        };
        let md: Arc<dyn MemoryDescriptor> = built.md;
        let off = (off as u64).min(md.length().saturating_sub(len.min(md.length())));
        let fits = off + len <= md.length();
        let valid = len > 0 && len.is_multiple_of(bs) && fits && len <= self.nvme.max_transfer();
        let qi = q as usize % self.queues.len().max(1);
        let Some(queue) = self.queues.get_mut(qi) else {
            return;
        };
        let data = pattern(md.length() as usize, lba as u8 ^ 0x3C);
        if write {
            assert_eq!(md.write_bytes(0, &data), data.len());
        }
        let r = if write {
            queue.write(&self.ns, lba, &md, off, len)
        } else {
            queue.read(&self.ns, lba, &md, off, len)
        };
        let (at, n) = ((lba * bs) as usize, len as usize);
        let store = self.sim.store();
        match &r {
            Ok(_) if write => {
                let o = off as usize;
                assert!(
                    store[at..at + n] == data[o..o + n],
                    "the store missed a write"
                );
                self.model[at..at + n].copy_from_slice(&data[o..o + n]);
            }
            Ok(_) => {
                let mut got = vec![0u8; n];
                assert_eq!(md.read_bytes(off, &mut got), n);
                assert!(
                    got == store[at..at + n],
                    "a read returned other bytes than the store"
                );
            }
            Err(e) => {
                assert!(
                    !valid || self.hostile,
                    "a clean command failed: {e} (len {len}, off {off})"
                );
                if write && at + n <= self.model.len() {
                    // What a failed write leaves in its own blocks is unspecified.
                    self.model[at..at + n].copy_from_slice(&store[at..at + n]);
                }
            }
        }
        assert!(
            store == self.model,
            "the store changed outside the written range"
        );
    }
}

fn run(i: &Input) {
    let Some(sim) = Sim::new(i) else {
        return;
    };
    let before = sim.resources();
    {
        let timer = Arc::new(PollTimer::new(1_000));
        let options = NvmeOptions::new().command_timeout_ms(50);
        let Ok(nvme) = Nvme::new(sim.m.clone(), sim.f.clone(), timer, options) else {
            return;
        };
        let ns = nvme.namespace(1).expect("namespace 1");
        let mut queues = Vec::new();
        for &e in &i.queues {
            if let Ok(q) = nvme.io_queue(QueueOptions::new(e)) {
                queues.push(q);
            }
        }
        let model = sim.store();
        let mut r = Run {
            sim: &sim,
            nvme,
            ns,
            queues,
            model,
            hostile: i.delay > 40,
        };
        for op in &i.ops {
            match op {
                Op::Write(io) => r.io(true, io),
                Op::Read(io) => r.io(false, io),
                Op::Flush(q) => {
                    let n = r.queues.len().max(1);
                    if let Some(queue) = r.queues.get_mut(*q as usize % n) {
                        let res = queue.flush(&r.ns);
                        assert!(res.is_ok() || r.hostile, "a clean flush failed: {res:?}");
                    }
                }
                Op::CommandError(opc, st) => {
                    let opcode = [nvm::READ, nvm::WRITE, nvm::FLUSH][*opc as usize % 3];
                    let status = [
                        Status::DATA_TRANSFER_ERROR,
                        Status::INTERNAL_ERROR,
                        Status::LBA_OUT_OF_RANGE,
                        Status::INVALID_FIELD,
                    ][*st as usize % 4];
                    sim.nvme.inject(CommandFault::io(opcode, status));
                    r.hostile = true;
                }
                Op::MachineFault(site, nth) => {
                    let s = FaultSite::ALL[*site as usize % FaultSite::ALL.len()];
                    sim.m.inject(s, *nth as u64);
                    r.hostile = true;
                }
                Op::Fatal => {
                    sim.nvme.raise_fatal();
                    r.hostile = true;
                }
                Op::Recover(force) => {
                    let _ = r.nvme.recover(*force);
                }
            }
        }
        sim.m.clear_faults();
        sim.bus.clear_faults();
        let _ = r.nvme.recover(false);
        drop(r);
    }
    // The task memory that general descriptors described.
    for t in sim.m.tasks() {
        if t != dmakit::Task::KERNEL {
            sim.m
                .destroy_task(t)
                .expect("no wiring left on task memory");
        }
    }
    assert_eq!(
        sim.resources(),
        before,
        "resources left after the driver is gone"
    );
}

fuzz_target!(|input: Input| run(&input));
