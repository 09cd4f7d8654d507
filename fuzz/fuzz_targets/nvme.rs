//! The portable NVMe driver (`dmakit-nvme`) against the simulated controller, on a
//! controller configuration drawn from the whole space the simulator's knobs allow: every
//! queue size from 2 to 65536 entries (CAP.MQES), every doorbell stride, MDTS none or
//! 1..=10, CAP.MPSMIN, CAP.TO, I/O queues supported and granted (submission and completion
//! counts apart, above what the controller takes too), LBA sizes 512 B to 64 KiB at any
//! format index up to 63, metadata per block, several namespaces of their own block sizes,
//! slow ready and slow stop, delayed and reordered completions, admin and I/O command
//! errors planned from the start and a fatal status after the nth command; and driver
//! options (admin queue size, queues asked for, transfer limit, command timeout, the
//! timer's step). DMA goes through an IOMMU window (one ending at 2^64 too, or a small
//! one) or bypasses it under an address limit.
//!
//! The driver is brought up on it; then arbitrary reads, writes and flushes of any size
//! and offset into nested descriptors on every namespace, queued batches on pre-mapped
//! buffers (as many as a ring holds, completed in any order), queue pairs made and dropped,
//! Identify of any namespace identifier, with injected command errors, machine faults,
//! fatal controller states and recoveries between them.
//!
//! Oracles (the model): a refused configuration or command is a clear error (never an
//! internal one), and bring-up of a configuration the driver supports succeeds; what the
//! driver reports (transfer limit, queue pairs, queue sizes, each namespace's block size
//! and size) follows from the configuration; a read that succeeds holds the controller's
//! backing store; a write that succeeds is in the store; per namespace, the store outside
//! the blocks of failed writes never changes; a clean command (no fault planned, valid
//! arguments) succeeds; nothing panics; every wait ends (the timer's step bounds every
//! wait to a fixed number of looks); and when the driver is gone, every page, wiring,
//! allocation and IO mapping is back.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::device::{PciBus, PciFunction, PciMatch};
use dmakit::{Direction, Error};
use dmakit_fuzz::shapes::{build, pattern, Shape, M};
use dmakit_nvme::{
    DmaBuffer, IoQueue, NamespaceIdentity, Nvme, NvmeError, NvmeOptions, PollTimer, QueueOptions,
};
use dmakit_sim::nvme::command::{admin, nvm};
use dmakit_sim::nvme::{CommandFault, Reorder, SimNvme, Status, NVME_CLASS};
use dmakit_sim::pci::{DmaMode, FunctionConfig, SimPciBus};
use dmakit_sim::{FaultSite, MachineBuilder};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

/// Bytes of each namespace the model covers (at most 96 blocks, at least one).
const SPAN_BYTES: u64 = 512 << 10;
/// Looks at CSTS between two of a wait loop's timer steps (the driver reads CSTS every 32
/// looks at a completion queue; each read is one controller tick).
const LOOKS_PER_TICK: u64 = 32;
/// A wait for CSTS.RDY takes at most this many timer steps.
const MAX_READY_LOOKS: u64 = 20_000;

/// Where an I/O starts.
#[derive(Debug, Clone, Copy)]
enum Lba {
    /// Inside the modelled span.
    Span(u16),
    /// `n` blocks before the namespace's end.
    FromEnd(u8),
    /// Anywhere.
    Raw(u64),
}

/// One read or write: namespace, queue, first block, block count, odd bytes over, buffer
/// (a shape, or a plain buffer of the transfer's size) and offset in the buffer.
#[derive(Debug)]
struct Io {
    ns: u8,
    q: u8,
    lba: Lba,
    blocks: u8,
    odd: u16,
    shape: Option<Shape>,
    off: u16,
}

#[derive(Debug)]
enum Op {
    Write(Io),
    Read(Io),
    Flush(u8, u8),
    /// Writes (or reads) of `n` commands of `blocks` blocks each, one after the other from
    /// `lba` in the span, queued on pre-mapped buffers and rung at once.
    Batch {
        write: bool,
        ns: u8,
        q: u8,
        lba: u16,
        n: u8,
        blocks: u8,
    },
    /// The next I/O command with this opcode fails with a status.
    CommandError(u8, u8),
    /// The nth admin command with this opcode fails with a status.
    AdminError(u8, u8, u8),
    /// The nth call at a machine fault site fails.
    MachineFault(u8, u8),
    /// The controller reports a fatal status.
    Fatal,
    Recover(bool),
    /// A new queue pair of so many entries, polled or on an interrupt vector.
    NewQueue(u16, Option<u8>),
    DropQueue(u8),
    /// Identify Namespace of any identifier.
    Identify(u32),
}

/// The controller's knobs and the driver's options.
#[derive(Debug)]
struct Config {
    seed: u8,
    max_entries: u32,
    stride: u8,
    mdts: u8,
    mpsmin: u8,
    io_queues: u16,
    granted: Option<(u16, u16)>,
    lba_shift: u8,
    blocks: u64,
    format_index: u8,
    metadata: u16,
    /// Namespaces 2..: LBA size shift and blocks.
    extra: Vec<(u8, u64)>,
    ready_delay: u32,
    disable_delay: u32,
    ready_timeout: u8,
    delay: u32,
    reorder: u8,
    fatal_after: Option<u8>,
    /// Admin command errors planned from the start: opcode, status, nth.
    admin_faults: Vec<(u8, u8, u8)>,
    /// I/O command errors planned from the start: opcode, status, nth.
    io_faults: Vec<(u8, u8, u8)>,
    dma: DmaMode,
    /// Driver: nanoseconds per timer step, command timeout, admin entries, queue pairs
    /// asked for, transfer limit.
    quantum_ns: u64,
    timeout_ms: u64,
    admin_entries: u16,
    ask_queues: u16,
    max_transfer: u64,
}

#[derive(Debug)]
struct Input {
    cfg: Config,
    queues: Vec<(u16, Option<u8>)>,
    ops: Vec<Op>,
}

const ADMIN_OPCODES: [u8; 6] = [
    admin::SET_FEATURES,
    admin::IDENTIFY,
    admin::CREATE_CQ,
    admin::CREATE_SQ,
    admin::DELETE_SQ,
    admin::DELETE_CQ,
];
const STATUSES: [Status; 6] = [
    Status::DATA_TRANSFER_ERROR,
    Status::INTERNAL_ERROR,
    Status::LBA_OUT_OF_RANGE,
    Status::INVALID_FIELD,
    Status::INVALID_QUEUE_SIZE,
    Status::WRITE_FAULT,
];

fn status(i: u8) -> Status {
    let s = STATUSES[i as usize % STATUSES.len()];
    if i & 0x80 != 0 {
        s.dnr()
    } else {
        s
    }
}

fn io_opcode(i: u8) -> u8 {
    [nvm::READ, nvm::WRITE, nvm::FLUSH][i as usize % 3]
}

fn io(u: &mut Unstructured<'_>) -> Result<Io> {
    Ok(Io {
        ns: u.arbitrary()?,
        q: u.arbitrary()?,
        lba: match u.int_in_range(0u8..=9)? {
            0..=7 => Lba::Span(u.arbitrary()?),
            8 => Lba::FromEnd(u.arbitrary()?),
            _ => Lba::Raw(u.arbitrary()?),
        },
        blocks: u.int_in_range(0..=40)?,
        odd: if u.ratio(1, 8)? { u.arbitrary()? } else { 0 },
        shape: if u.ratio(1, 3)? {
            None
        } else {
            Some(Shape::draw(u, 2)?)
        },
        off: if u.ratio(1, 3)? { u.arbitrary()? } else { 0 },
    })
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.int_in_range(0u8..=31)? {
        0..=5 | 25..=27 => Op::Write(io(u)?),
        6..=10 | 28..=31 => Op::Read(io(u)?),
        11 => Op::Flush(u.arbitrary()?, u.arbitrary()?),
        12..=14 => Op::Batch {
            write: u.arbitrary()?,
            ns: u.arbitrary()?,
            q: u.arbitrary()?,
            lba: u.arbitrary()?,
            n: u.int_in_range(1..=9)?,
            blocks: u.int_in_range(1..=4)?,
        },
        15 => Op::CommandError(u.arbitrary()?, u.arbitrary()?),
        16 => Op::AdminError(u.arbitrary()?, u.arbitrary()?, u.int_in_range(1..=3)?),
        17 => Op::MachineFault(u.arbitrary()?, u.int_in_range(1..=6)?),
        18 => Op::Fatal,
        19 => Op::Recover(u.arbitrary()?),
        20 | 21 => Op::NewQueue(
            entries(u)?,
            if u.ratio(1, 3)? {
                Some(u.arbitrary()?)
            } else {
                None
            },
        ),
        22 => Op::DropQueue(u.arbitrary()?),
        _ => Op::Identify(if u.arbitrary()? {
            u.int_in_range(0..=6)?
        } else {
            u.arbitrary()?
        }),
    })
}

/// A queue size: small ones mostly, any up to 65535 sometimes.
fn entries(u: &mut Unstructured<'_>) -> Result<u16> {
    Ok(match u.int_in_range(0u8..=5)? {
        0..=3 => u.int_in_range(0..=40)?,
        4 => u.int_in_range(0..=1100)?,
        _ => u.arbitrary()?,
    })
}

fn lba_shift(u: &mut Unstructured<'_>) -> Result<u8> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 | 1 => 9,
        2 => 12,
        _ => u.int_in_range(9..=16)?,
    })
}

fn blocks(u: &mut Unstructured<'_>, shift: u8) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => u.int_in_range(1..=8)?,
        1 => u.int_in_range(1..=300)?,
        2 => u64::MAX >> shift,
        3 => u.int_in_range(1..=u64::MAX >> shift)?,
        _ => (8u64 << 20) >> shift,
    })
}

fn faults(u: &mut Unstructured<'_>) -> Result<Vec<(u8, u8, u8)>> {
    let mut v = Vec::new();
    if u.ratio(1, 5)? {
        for _ in 0..u.int_in_range(1..=2)? {
            v.push((u.arbitrary()?, u.arbitrary()?, u.int_in_range(1..=6)?));
        }
    }
    Ok(v)
}

impl<'a> Arbitrary<'a> for Config {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let dma = match u.int_in_range(0u8..=5)? {
            0 | 1 => DmaMode::DEFAULT_IOMMU,
            2 => DmaMode::Iommu {
                base: 0u64.wrapping_sub(1 << 32),
                len: 1 << 32,
            },
            3 => DmaMode::Iommu {
                base: 0x1000,
                len: u.int_in_range(0x100u64..=0x4000)? << 12,
            },
            4 => DmaMode::Bypass {
                max_address: 0xFFFF_FFFF,
            },
            _ => DmaMode::Bypass {
                max_address: u64::MAX,
            },
        };
        let shift = lba_shift(u)?;
        let mut extra = Vec::new();
        if u.ratio(1, 3)? {
            for _ in 0..u.int_in_range(1..=3)? {
                let s = lba_shift(u)?;
                extra.push((s, blocks(u, s)?));
            }
        }
        let slow = |u: &mut Unstructured<'a>| -> Result<u32> {
            Ok(match u.int_in_range(0u8..=7)? {
                0..=4 => 0,
                5 | 6 => u.int_in_range(1..=300)?,
                _ => u.arbitrary()?,
            })
        };
        Ok(Config {
            seed: u.arbitrary()?,
            max_entries: match u.int_in_range(0u8..=5)? {
                0 | 1 => u.int_in_range(2..=8)?,
                2 => u.int_in_range(2..=256)?,
                3 => 65536,
                4 => 1024,
                _ => u.int_in_range(2..=65536)?,
            },
            stride: if u.ratio(1, 3)? {
                u.int_in_range(0..=8)?
            } else {
                0
            },
            mdts: if u.ratio(1, 2)? {
                u.int_in_range(0..=10)?
            } else {
                7
            },
            mpsmin: if u.ratio(1, 10)? {
                u.int_in_range(0..=4)?
            } else {
                0
            },
            io_queues: match u.int_in_range(0u8..=4)? {
                0..=2 => u.int_in_range(1..=4)?,
                3 => u.int_in_range(1..=16)?,
                _ => u.int_in_range(1..=1024)?,
            },
            granted: if u.ratio(1, 3)? {
                Some((u.int_in_range(1..=9)?, u.int_in_range(1..=9)?))
            } else {
                None
            },
            lba_shift: shift,
            blocks: blocks(u, shift)?,
            format_index: if u.ratio(1, 3)? {
                u.int_in_range(0..=63)?
            } else {
                0
            },
            metadata: if u.ratio(1, 10)? {
                u.int_in_range(0..=64)?
            } else {
                0
            },
            extra,
            ready_delay: slow(u)?,
            disable_delay: slow(u)?,
            ready_timeout: if u.ratio(1, 3)? { u.arbitrary()? } else { 15 },
            delay: if u.ratio(1, 4)? {
                u.int_in_range(0..=400)?
            } else {
                0
            },
            reorder: u.int_in_range(0..=2)?,
            fatal_after: if u.ratio(1, 10)? {
                Some(u.int_in_range(1..=30)?)
            } else {
                None
            },
            admin_faults: faults(u)?,
            io_faults: faults(u)?,
            dma,
            quantum_ns: match u.int_in_range(0u8..=5)? {
                0..=3 => 1_000,
                4 => 100_000,
                _ => u.int_in_range(1..=10_000_000)?,
            },
            timeout_ms: [50, 50, 200, 10, 1][u.int_in_range(0..=4)?],
            admin_entries: match u.int_in_range(0u8..=7)? {
                0 => u.int_in_range(0..=4100)?,
                1 | 2 => u.int_in_range(2..=8)?,
                _ => 32,
            },
            ask_queues: if u.ratio(1, 4)? {
                u.int_in_range(0..=20)?
            } else {
                16
            },
            max_transfer: match u.int_in_range(0u8..=5)? {
                0..=2 => 2 << 20,
                3 => 4096,
                4 => u.int_in_range(0..=2 << 20)?,
                _ => 8192,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let cfg = Config::arbitrary(u)?;
        let mut queues = Vec::new();
        for _ in 0..u.int_in_range(1..=3)? {
            queues.push((
                entries(u)?,
                if u.ratio(1, 4)? {
                    Some(u.arbitrary()?)
                } else {
                    None
                },
            ));
        }
        let mut ops = Vec::new();
        for _ in 0..u.int_in_range(0..=14)? {
            ops.push(op(u)?);
        }
        Ok(Input { cfg, queues, ops })
    }
}

/// What the model expects of a configuration.
struct Expect {
    /// The timer's step (at least enough that a CSTS.RDY wait is bounded).
    quantum_ns: u64,
    /// Every ready wait ends well within CAP.TO.
    ready_ok: bool,
    /// A ready wait surely passes CAP.TO.
    ready_late: bool,
    /// The controller stops within CAP.TO at the driver's drop (so it gives everything
    /// back).
    stops: bool,
    /// Commands may time out (their completion comes late for the timeout).
    slow: bool,
    /// The IOMMU window is small: mappings may run out.
    tight: bool,
    /// Namespaces: LBA size and blocks; metadata on namespace 1.
    namespaces: Vec<(u64, u64)>,
}

impl Expect {
    fn new(c: &Config) -> Expect {
        let ready_ns = 500_000_000 * (c.ready_timeout as u64).max(1);
        let quantum_ns = c.quantum_ns.max(ready_ns / MAX_READY_LOOKS).max(1);
        let timeout_ns = c.timeout_ms * 1_000_000;
        let ready_ok = (c.ready_delay as u64 + 4) * quantum_ns * 2 < ready_ns;
        let ready_late = (c.ready_delay as u64).saturating_mul(quantum_ns) > 2 * ready_ns;
        let stops = (c.disable_delay as u64 + 4) * quantum_ns * 2 < ready_ns;
        // A command completes `delay` ticks after its doorbell: about LOOKS_PER_TICK looks
        // each; a wide margin.
        let slow = (c.delay as u64 + 2) * LOOKS_PER_TICK * 4 * quantum_ns >= timeout_ns;
        let tight = matches!(c.dma, DmaMode::Iommu { base: 0x1000, .. });
        let mut namespaces = vec![(1u64 << c.lba_shift, c.blocks)];
        namespaces.extend(c.extra.iter().map(|&(s, b)| (1u64 << s, b)));
        Expect {
            quantum_ns,
            ready_ok,
            ready_late,
            stops,
            slow,
            tight,
            namespaces,
        }
    }
}

struct Sim {
    m: M,
    bus: SimPciBus,
    nvme: SimNvme,
    f: Arc<dyn PciFunction>,
}

impl Sim {
    fn new(c: &Config) -> Option<Sim> {
        let m: M = Arc::new(
            MachineBuilder::new()
                .coherent(false)
                .seed(c.seed as u64)
                .fragmentation(0.8)
                .build()
                .ok()?,
        );
        let bus = SimPciBus::new(m.clone()).ok()?;
        let mut b = SimNvme::builder()
            .seed(c.seed as u64)
            .lba_size(1 << c.lba_shift)
            .blocks(c.blocks)
            .mdts(c.mdts)
            .mpsmin(c.mpsmin)
            .max_queue_entries(c.max_entries)
            .io_queues(c.io_queues)
            .completion_delay(c.delay)
            .reorder([Reorder::InOrder, Reorder::AcrossQueues, Reorder::Any][c.reorder as usize])
            .doorbell_stride(c.stride)
            .lba_format_index(c.format_index)
            .metadata_bytes(c.metadata)
            .ready_delay(c.ready_delay)
            .disable_delay(c.disable_delay)
            .ready_timeout(c.ready_timeout);
        for &(s, blocks) in &c.extra {
            b = b.namespace(1 << s, blocks);
        }
        if let Some((sqs, cqs)) = c.granted {
            b = b.granted_queues(sqs, cqs);
        }
        if let Some(n) = c.fatal_after {
            b = b.fatal_after(n as u64);
        }
        for &(opc, st, nth) in &c.admin_faults {
            let opcode = ADMIN_OPCODES[opc as usize % ADMIN_OPCODES.len()];
            b = b.fault(CommandFault::admin(opcode, status(st)).nth(nth as u32));
        }
        for &(opc, st, nth) in &c.io_faults {
            b = b.fault(CommandFault::io(io_opcode(opc), status(st)).nth(nth as u32));
        }
        let nvme = b
            .function(FunctionConfig::new().dma(c.dma))
            .attach(&bus)
            .expect("every configuration drawn is one the simulator takes");
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
}

/// A refusal or failure must say what went wrong: never an internal error.
fn clear(what: &str, e: &NvmeError) {
    assert!(
        !matches!(e, NvmeError::Dma(Error::Internal { .. })),
        "{what}: an internal error: {e}"
    );
    assert!(!e.to_string().is_empty(), "{what}: an empty error");
}

/// One namespace the driver took, and the model of its first blocks.
struct Ns {
    id: NamespaceIdentity,
    bs: u64,
    span: u64,
    model: Vec<u8>,
    /// Byte ranges a failed write may still change (until a later command succeeds, which
    /// means the controller was reset or finished it).
    uncertain: Vec<(usize, usize)>,
}

struct Run<'a> {
    sim: &'a Sim,
    ex: &'a Expect,
    nvme: Nvme<M>,
    ns: Vec<Ns>,
    queues: Vec<IoQueue<M>>,
    /// Pre-mapped buffers of queued commands: kept until the driver is gone (a command
    /// that timed out may still reach its buffer until the controller is reset).
    buffers: Vec<DmaBuffer<M>>,
    /// A fault or fatal state is planned, or commands may be slow: commands may fail.
    hostile: bool,
}

impl Run<'_> {
    fn store(&self, n: &Ns) -> Vec<u8> {
        self.sim
            .nvme
            .namespace_bytes(n.id.nsid, 0, (n.span * n.bs) as usize)
            .expect("the store")
    }

    /// Every namespace's store matches its model outside uncertain ranges.
    fn check_stores(&mut self, what: &str) {
        for i in 0..self.ns.len() {
            let store = self.store(&self.ns[i]);
            let n = &mut self.ns[i];
            for &(a, b) in &n.uncertain {
                n.model[a..b].copy_from_slice(&store[a..b]);
            }
            assert!(
                store == n.model,
                "{what}: namespace {} changed outside the blocks written",
                n.id.nsid
            );
        }
    }

    /// A command succeeded: nothing a failed write did can change the store any more.
    fn settle(&mut self) {
        for n in &mut self.ns {
            n.uncertain.clear();
        }
    }

    fn pick_ns(&self, i: u8) -> Option<usize> {
        (!self.ns.is_empty()).then(|| i as usize % self.ns.len())
    }

    fn io(&mut self, write: bool, io: &Io) {
        let Some(ni) = self.pick_ns(io.ns) else {
            return;
        };
        let (bs, span, id) = (self.ns[ni].bs, self.ns[ni].span, self.ns[ni].id);
        let lba = match io.lba {
            Lba::Span(l) => l as u64 % span,
            Lba::FromEnd(k) => id.blocks.saturating_sub(k as u64),
            Lba::Raw(l) => l,
        };
        let mut len = io.blocks as u64 * bs + io.odd as u64 % 3;
        if matches!(io.lba, Lba::Span(_)) && io.odd % 7 != 1 {
            len = len.min((span - lba) * bs);
        }
        let md: Arc<dyn MemoryDescriptor> = match &io.shape {
            Some(shape) => match build(&self.sim.m, shape) {
                Some(b) => b.md,
                None => return,
            },
            None => {
                let size = (len + io.off as u64 % 4096).clamp(1, 8 << 20);
                match BufferMemoryDescriptor::new(
                    self.sim.m.clone(),
                    BufferOptions::new(size, Direction::InOut),
                ) {
                    Ok(b) => Arc::new(b),
                    Err(_) => return,
                }
            }
        };
        let off = (io.off as u64).min(md.length().saturating_sub(len.min(md.length())));
        let max = self.nvme.max_transfer();
        let valid = len > 0
            && len.is_multiple_of(bs)
            && off + len <= md.length()
            && lba.checked_add(len / bs).is_some_and(|e| e <= id.blocks)
            && bs <= max;
        let Some(qi) = self.pick_queue(io.q) else {
            return;
        };
        let data = pattern(md.length() as usize, lba as u8 ^ 0x3C);
        assert_eq!(md.write_bytes(0, &data), data.len());
        let queue = &mut self.queues[qi];
        let r = if write {
            queue.write(&id, lba, &md, off, len)
        } else {
            queue.read(&id, lba, &md, off, len)
        };
        // The part of the transfer inside the modelled span.
        let n = len as usize;
        let (at, end) = if lba < span {
            let at = (lba * bs) as usize;
            (at, (at + n).min((span * bs) as usize))
        } else {
            (0, 0)
        };
        match &r {
            Ok(_) => {
                assert!(
                    valid,
                    "an invalid command succeeded (lba {lba} len {len} off {off})"
                );
                self.settle();
                let store = self
                    .sim
                    .nvme
                    .namespace_bytes(id.nsid, lba * bs, n)
                    .expect("the store");
                let o = off as usize;
                if write {
                    assert!(store == data[o..o + n], "the store missed a write");
                    self.ns[ni].model[at..end].copy_from_slice(&data[o..o + end - at]);
                } else {
                    let mut got = vec![0u8; n];
                    assert_eq!(md.read_bytes(off, &mut got), n);
                    assert!(got == store, "a read returned other bytes than the store");
                }
            }
            Err(e) => {
                clear("a read or write", e);
                assert!(
                    !valid || self.hostile || self.ex.tight,
                    "a clean command failed: {e} (lba {lba} len {len} off {off} bs {bs})"
                );
                if write && valid && at < end {
                    // What a failed write leaves in its own blocks is unspecified.
                    self.ns[ni].uncertain.push((at, end));
                }
            }
        }
        self.check_stores("after a read or write");
    }

    fn pick_queue(&self, q: u8) -> Option<usize> {
        (!self.queues.is_empty()).then(|| q as usize % self.queues.len())
    }

    #[allow(clippy::too_many_arguments)]
    fn batch(&mut self, write: bool, ns: u8, q: u8, lba: u16, n: u8, blocks: u8) {
        let (Some(ni), Some(qi)) = (self.pick_ns(ns), self.pick_queue(q)) else {
            return;
        };
        let (bs, span, id) = (self.ns[ni].bs, self.ns[ni].span, self.ns[ni].id);
        let blocks = (blocks as u64).min(span);
        let len = blocks * bs;
        let n = (n as u64).min(span / blocks).max(1);
        let lba = lba as u64 % (span - n * blocks + 1);
        let view = self.nvme.dma_view();
        let mut bufs = Vec::new();
        for i in 0..n {
            match DmaBuffer::new(&self.sim.m, &view, len) {
                Ok(b) => {
                    let d = pattern(len as usize, (lba + i) as u8 ^ 0xA5);
                    b.write(0, &d).expect("a buffer write");
                    bufs.push((lba + i * blocks, b, d));
                }
                Err(_) => return,
            }
        }
        let fits = len <= self.nvme.max_transfer() && len / bs <= 65536;
        let queue = &mut self.queues[qi];
        let room = (queue.entries() as usize).saturating_sub(1 + queue.outstanding());
        let mut cids = Vec::new();
        for (i, (at, b, _)) in bufs.iter().enumerate() {
            let r = if write {
                queue.submit_write(&id, *at, b, 0, len)
            } else {
                queue.submit_read(&id, *at, b, 0, len)
            };
            match r {
                Ok(cid) => {
                    assert!(fits, "a command over the transfer limit was queued");
                    assert!(i < room, "more commands queued than the ring holds");
                    cids.push((cid, i));
                }
                Err(e) => {
                    clear("a queued command", &e);
                    assert!(
                        !fits || i >= room || self.hostile || self.ex.tight,
                        "a clean queued command was refused: {e}"
                    );
                    break;
                }
            }
        }
        let queue = &mut self.queues[qi];
        let mut results = vec![None; bufs.len()];
        if !cids.is_empty() {
            match queue.ring() {
                Ok(()) => {
                    let mut rounds = 0;
                    while results.iter().filter(|r| r.is_some()).count() < cids.len() {
                        rounds += 1;
                        assert!(rounds < 1000, "queued commands never finished");
                        let r = queue.wait_completions(true, |d| {
                            if let Some(&(_, i)) = cids.iter().find(|(c, _)| *c == d.cid) {
                                results[i] = Some(d.result.is_ok());
                                if let Err(e) = &d.result {
                                    clear("a queued command's completion", e);
                                }
                            }
                        });
                        match r {
                            Ok(0) if queue.outstanding() == 0 => break,
                            Ok(_) => {}
                            Err(e) => {
                                clear("waiting for completions", &e);
                                break;
                            }
                        }
                    }
                }
                Err(e) => clear("a doorbell", &e),
            }
        }
        let done = cids.len();
        for (i, (at, b, d)) in bufs.iter().enumerate().take(done) {
            let (a, z) = ((at * bs) as usize, (at * bs + len) as usize);
            match results[i] {
                Some(true) => {
                    self.settle();
                    let store = self
                        .sim
                        .nvme
                        .namespace_bytes(id.nsid, at * bs, len as usize)
                        .expect("the store");
                    if write {
                        assert!(&store == d, "the store missed a queued write");
                        self.ns[ni].model[a..z].copy_from_slice(d);
                    } else {
                        let mut got = vec![0u8; len as usize];
                        b.read(0, &mut got).expect("a buffer read");
                        assert!(got == store, "a queued read returned other bytes");
                    }
                }
                _ => {
                    assert!(
                        self.hostile || self.ex.tight,
                        "a clean queued command failed or never finished"
                    );
                    if write {
                        self.ns[ni].uncertain.push((a, z));
                    }
                }
            }
        }
        self.buffers.extend(bufs.into_iter().map(|(_, b, _)| b));
        self.check_stores("after queued commands");
    }

    fn new_queue(&mut self, entries: u16, vector: Option<u8>) {
        let mut o = QueueOptions::new(entries);
        if let Some(v) = vector {
            o = o.interrupt(v as u32 % (self.sim.nvme.config().io_queues as u32 + 3));
        }
        let live: Vec<u16> = self.queues.iter().map(|q| q.id()).collect();
        let next = (1..).find(|i| !live.contains(i)).unwrap_or(u16::MAX);
        let cfg = self.sim.nvme.config();
        match self.nvme.io_queue(o) {
            Ok(q) => {
                assert!(entries >= 2, "a queue of {entries} entries was made");
                assert_eq!(
                    q.entries() as u32,
                    (entries as u32).min(cfg.max_queue_entries),
                    "queue size"
                );
                assert!(
                    q.id() <= self.nvme.io_queue_limit(),
                    "a queue past the limit"
                );
                assert!(!live.contains(&q.id()), "a queue identifier in use twice");
                self.queues.push(q);
            }
            Err(e) => {
                clear("a new queue pair", &e);
                let clean = entries >= 2
                    && vector.is_none()
                    && next <= self.nvme.io_queue_limit()
                    && next <= cfg.io_queues
                    && !self.hostile
                    && !self.ex.tight;
                assert!(!clean, "a clean queue pair {next} was refused: {e}");
            }
        }
    }
}

fn run(i: &Input) {
    let c = &i.cfg;
    let ex = Expect::new(c);
    let Some(sim) = Sim::new(c) else {
        return;
    };
    let before = sim.resources();
    let planned = c.fatal_after.is_some() || !c.admin_faults.is_empty() || !c.io_faults.is_empty();
    {
        let timer = Arc::new(PollTimer::new(ex.quantum_ns));
        let options = NvmeOptions::new()
            .command_timeout_ms(c.timeout_ms)
            .admin_entries(c.admin_entries)
            .io_queues(c.ask_queues)
            .max_transfer(c.max_transfer);
        let options_ok =
            (2..=4096).contains(&c.admin_entries) && c.ask_queues > 0 && c.max_transfer >= 4096;
        let supported = c.mpsmin == 0 && options_ok;
        let nvme = match Nvme::new(sim.m.clone(), sim.f.clone(), timer, options) {
            Ok(n) => n,
            Err(e) => {
                clear("bring-up", &e);
                assert!(
                    !supported || planned || !ex.ready_ok || ex.slow || ex.tight,
                    "bring-up of a supported controller failed: {e}"
                );
                if c.mpsmin > 0 && options_ok {
                    assert!(
                        matches!(e, NvmeError::Dma(Error::Unsupported { .. })),
                        "MPSMIN {}: {e}",
                        c.mpsmin
                    );
                }
                check_leaks(&sim, &before, &ex);
                return;
            }
        };
        assert!(
            supported,
            "bring-up of an unsupported configuration succeeded"
        );
        assert!(!ex.ready_late, "ready after CAP.TO was taken");
        let mdts_limit = match c.mdts {
            0 => u64::MAX,
            m => 4096u64 << m,
        };
        assert_eq!(
            nvme.max_transfer(),
            mdts_limit.min(c.max_transfer) / 4096 * 4096,
            "transfer limit"
        );
        let granted = c.granted.unwrap_or((c.io_queues, c.io_queues));
        assert_eq!(
            nvme.io_queue_limit(),
            granted.0.min(granted.1).min(c.ask_queues),
            "queue pairs"
        );
        let hostile = planned || ex.slow;
        let mut nss = Vec::new();
        for (k, &(bs, blocks)) in ex.namespaces.iter().enumerate() {
            let nsid = k as u32 + 1;
            match nvme.namespace(nsid) {
                Ok(id) => {
                    assert!(k > 0 || c.metadata == 0, "a format with metadata taken");
                    assert_eq!(
                        (id.nsid, id.block_size as u64, id.blocks),
                        (nsid, bs, blocks),
                        "namespace {nsid}"
                    );
                    let span = (SPAN_BYTES / bs).clamp(1, 96).min(blocks);
                    let model = sim
                        .nvme
                        .namespace_bytes(nsid, 0, (span * bs) as usize)
                        .expect("the store");
                    nss.push(Ns {
                        id,
                        bs,
                        span,
                        model,
                        uncertain: Vec::new(),
                    });
                }
                Err(e) => {
                    clear("Identify Namespace", &e);
                    let metadata = k == 0 && c.metadata > 0;
                    assert!(
                        metadata || hostile,
                        "namespace {nsid} ({bs}-byte blocks) refused: {e}"
                    );
                    if metadata && !hostile {
                        assert!(
                            matches!(e, NvmeError::Dma(Error::Unsupported { .. })),
                            "metadata: {e}"
                        );
                    }
                }
            }
        }
        let mut r = Run {
            sim: &sim,
            ex: &ex,
            nvme,
            ns: nss,
            queues: Vec::new(),
            buffers: Vec::new(),
            hostile,
        };
        for &(e, v) in &i.queues {
            r.new_queue(e, v);
        }
        for op in &i.ops {
            match op {
                Op::Write(io) => r.io(true, io),
                Op::Read(io) => r.io(false, io),
                Op::Flush(q, ns) => {
                    if let (Some(qi), Some(ni)) = (r.pick_queue(*q), r.pick_ns(*ns)) {
                        let id = r.ns[ni].id;
                        match r.queues[qi].flush(&id) {
                            Ok(()) => r.settle(),
                            Err(e) => {
                                clear("a flush", &e);
                                assert!(r.hostile || ex.tight, "a clean flush failed: {e}");
                            }
                        }
                    }
                }
                Op::Batch {
                    write,
                    ns,
                    q,
                    lba,
                    n,
                    blocks,
                } => r.batch(*write, *ns, *q, *lba, *n, *blocks),
                Op::CommandError(opc, st) => {
                    sim.nvme
                        .inject(CommandFault::io(io_opcode(*opc), status(*st)));
                    r.hostile = true;
                }
                Op::AdminError(opc, st, nth) => {
                    let opcode = ADMIN_OPCODES[*opc as usize % ADMIN_OPCODES.len()];
                    sim.nvme
                        .inject(CommandFault::admin(opcode, status(*st)).nth(*nth as u32));
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
                Op::Recover(force) => match r.nvme.recover(*force) {
                    Ok(_) => r.settle(),
                    Err(e) => {
                        clear("a recovery", &e);
                        assert!(
                            r.hostile || !ex.ready_ok || !ex.stops || ex.tight,
                            "a clean recovery failed: {e}"
                        );
                        // The controller may be left disabled: commands may fail until a
                        // reset goes through.
                        r.hostile = true;
                    }
                },
                Op::NewQueue(e, v) => r.new_queue(*e, *v),
                Op::DropQueue(q) => {
                    if let Some(qi) = r.pick_queue(*q) {
                        drop(r.queues.remove(qi));
                    }
                }
                Op::Identify(nsid) => {
                    let n = ex.namespaces.len() as u32;
                    match r.nvme.namespace(*nsid) {
                        Ok(id) => {
                            assert!((1..=n).contains(nsid), "namespace {nsid} of {n}");
                            assert_eq!(id.nsid, *nsid);
                        }
                        Err(e) => clear("Identify Namespace", &e),
                    }
                }
            }
        }
        sim.m.clear_faults();
        sim.bus.clear_faults();
        let _ = r.nvme.recover(false);
        let Run {
            nvme,
            queues,
            buffers,
            ..
        } = r;
        drop(queues);
        drop(nvme);
        drop(buffers);
    }
    check_leaks(&sim, &before, &ex);
}

/// When the driver is gone, everything is back (unless the controller never stopped, when
/// the driver keeps what it might still reach).
fn check_leaks(sim: &Sim, before: &[(&'static str, u64)], ex: &Expect) {
    if !ex.stops {
        // Held on purpose, task memory wired for a command included.
        return;
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
