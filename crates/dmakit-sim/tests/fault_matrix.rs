//! The fault-injection matrix: every public operation that allocates, wires, maps, bounces
//! or touches a device, failed at each of its steps in turn.
//!
//! Each operation is first run with nothing failing, counting the calls it makes at every
//! fault site (the machine's pages, pins, translations and mappings; the IOMMU's page-table
//! entries and invalidations; the PCI bus's register accesses, device DMA and interrupts).
//! Then, on a fresh machine each time, call 1, 2, …, n at each site fails, and the matrix
//! proves two things: the error names what failed (the site, or for a device the command),
//! and nothing is left behind (pages, wirings, allocations, IO allocations and page-table
//! entries, IOTLB entries, bounce bytes, the dma-debug ledger's live preparations).

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, InterleavedMemoryDescriptor,
    MemoryDescriptor, MultiMemoryDescriptor, SubMemoryDescriptor,
};
use dmakit::dma::{
    BouncePool, DmaCommand, DmaEventSource, DmaStart, DmaTransfer, IoSegment, MappingMode,
    PrepareOptions, Quarantine, SegmentSpec, SyncWait,
};
use dmakit::map::MapOptions;
use dmakit::mapper::{Access, IommuMapper, Mapper, MapperRegistry};
use dmakit::platform::Task;
use dmakit::{Direction, Error, IoAddr, VirtAddr};
use dmakit_nvme::suite;
use dmakit_nvme::{Nvme, PollTimer, QueueOptions};
use dmakit_sim::fault::Site as _;
use dmakit_sim::nvme::SimNvme;
use dmakit_sim::pci::{DmaMode, PciFaultSite};
use dmakit_sim::{FaultSite, IommuFaultSite, Machine, MachineBuilder, SimDmaEngine, SimIommu};
use std::sync::Arc;
use std::time::Instant;

mod nvme_common;
use nvme_common::{blocks, Sim};

type M = Arc<Machine>;
type Pool = Arc<BouncePool<M>>;
type Outcome = Result<(), String>;

/// A place a step can be failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Machine(FaultSite),
    Iommu(IommuFaultSite),
    Pci(PciFaultSite),
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Machine(s) => s.name(),
            Step::Iommu(s) => s.name(),
            Step::Pci(s) => s.name(),
        }
    }
}

/// One machine with an IOMMU, its strict mapper, a bounce pool and a device quarantine (so
/// the ledger's live preparations can be told apart from other tests').
struct World {
    m: M,
    iommu: Arc<SimIommu>,
    mapper: Arc<IommuMapper<Arc<SimIommu>>>,
    pool: Pool,
    q: Arc<Quarantine>,
    nvme: Option<Sim>,
}

const IO_BASE: u64 = 0x10_0000;

impl World {
    fn machine(seed: u64) -> World {
        let m: M = Arc::new(
            MachineBuilder::new()
                .seed(seed)
                .fragmentation(0.7)
                .build()
                .unwrap(),
        );
        Self::around(m, None)
    }

    fn around(m: M, nvme: Option<Sim>) -> World {
        let iommu = Arc::new(SimIommu::new(m.clone()));
        let mapper = Arc::new(IommuMapper::new(iommu.clone(), IO_BASE, 0x1000_0000).unwrap());
        World {
            pool: Arc::new(BouncePool::new(m.clone(), "matrix bounce pool", 4 << 20)),
            m,
            iommu,
            mapper,
            q: Quarantine::new("matrix device"),
            nvme,
        }
    }

    fn nvme(seed: u64, dma: DmaMode) -> World {
        let mut sim = Sim::new(seed, SimNvme::builder().blocks(blocks(512)), dma);
        // A lost doorbell or enable waits out its timeout: 1 ms per poll keeps that short.
        sim.timer = Arc::new(PollTimer::new(1_000_000));
        Self::around(sim.m.clone(), Some(sim))
    }

    fn steps(&self) -> Vec<Step> {
        let mut v: Vec<Step> = FaultSite::ALL.iter().map(|&s| Step::Machine(s)).collect();
        v.extend(IommuFaultSite::ALL.iter().map(|&s| Step::Iommu(s)));
        if self.nvme.is_some() {
            v.extend(PciFaultSite::ALL.iter().map(|&s| Step::Pci(s)));
        }
        v
    }

    /// The IOMMUs a step at `Iommu` means: the world's own and the NVMe function's.
    fn iommus(&self) -> Vec<Arc<SimIommu>> {
        let mut v = vec![self.iommu.clone()];
        if let Some(i) = self.nvme.as_ref().and_then(|s| s.nvme.function().iommu()) {
            v.push(i);
        }
        v
    }

    fn calls(&self, step: Step) -> u64 {
        match step {
            Step::Machine(s) => self.m.stats().calls(s),
            Step::Iommu(s) => self.iommus().iter().map(|i| i.calls(s)).sum(),
            Step::Pci(s) => self.nvme.as_ref().map_or(0, |n| n.bus.calls(s)),
        }
    }

    /// Fails the `k`th call from now at `step`.
    fn inject(&self, step: Step, k: u64) {
        match step {
            Step::Machine(s) => self.m.inject(s, self.m.stats().calls(s) + k),
            Step::Iommu(s) => {
                // The NVMe function's IOMMU when there is one (the world's own is idle then).
                let i = self.iommus().pop().unwrap();
                i.inject(s, i.calls(s) + k);
            }
            Step::Pci(s) => {
                let bus = &self.nvme.as_ref().unwrap().bus;
                bus.inject(s, bus.calls(s) + k);
            }
        }
    }

    fn clear(&self) {
        self.m.clear_faults();
        for i in self.iommus() {
            i.clear_faults();
        }
        if let Some(n) = &self.nvme {
            n.bus.clear_faults();
        }
    }

    /// Everything an operation may take, as `(what, how much)`.
    fn resources(&self) -> Vec<(String, u64)> {
        let s = self.m.stats();
        let mut r = vec![
            ("pages in use".to_string(), s.used_pages()),
            ("wired pages".to_string(), s.wired_pages),
            ("allocations".to_string(), s.allocations),
            ("bounce bytes in use".to_string(), self.pool.stats().in_use),
            (
                "live preparations (ledger)".to_string(),
                dmakit::debug::outstanding(self.q.id()).len() as u64,
            ),
            ("quarantine live".to_string(), self.q.live()),
        ];
        let mut mappers = vec![("world", self.mapper.clone())];
        if let Some(mp) = self.nvme.as_ref().and_then(|n| n.nvme.function().mapper()) {
            mappers.push(("nvme", mp));
            r.push((
                "live preparations (ledger, NVMe driver)".to_string(),
                dmakit::debug::outstanding(0).len() as u64,
            ));
        }
        for (name, mp) in mappers {
            let (live, entries) = mp.usage();
            let hw = mp.hardware();
            r.push((format!("{name}: IO allocations"), live as u64));
            r.push((format!("{name}: mapper entries"), entries as u64));
            r.push((
                format!("{name}: IO ranges awaiting invalidation"),
                mp.pending() as u64,
            ));
            r.push((
                format!("{name}: IOMMU page-table entries"),
                hw.table_entries() as u64,
            ));
            r.push((format!("{name}: IOTLB entries"), hw.iotlb_entries() as u64));
        }
        r
    }
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A command of the world's device in `mode`, with the world's pool.
fn command(w: &World, spec: SegmentSpec, mode: MappingMode) -> DmaCommand<M> {
    DmaCommand::builder(w.m.clone())
        .spec(spec)
        .mode(mode)
        .bounce_pool(w.pool.clone())
        .quarantine(w.q.clone())
        .build()
        .unwrap()
}

fn mapped(w: &World) -> MappingMode {
    MappingMode::Mapped(w.mapper.clone() as Arc<dyn Mapper>)
}

fn spec32() -> SegmentSpec {
    SegmentSpec::builder().address_bits(32).build().unwrap()
}

fn any_spec() -> SegmentSpec {
    SegmentSpec::builder().build().unwrap()
}

/// Runs `body` on a command attached to `md`, as a careful driver does: whatever `body`
/// returns, every outstanding prepare is completed; a complete that fails leaves the
/// command prepared (owning its memory), and is retried once the fault has passed.
fn drive(
    w: &World,
    mut cmd: DmaCommand<M>,
    md: Arc<dyn MemoryDescriptor>,
    body: impl FnOnce(&mut DmaCommand<M>) -> dmakit::Result<()>,
) -> Outcome {
    cmd.set_memory_descriptor(md).map_err(text)?;
    let r = body(&mut cmd);
    finish(w, &mut cmd, r)
}

/// Completes every outstanding prepare of `cmd`; the first error (`r`'s first) wins.
fn finish(w: &World, cmd: &mut DmaCommand<M>, r: dmakit::Result<()>) -> Outcome {
    let mut first = r.err();
    while cmd.prepared().is_some() {
        if let Err(e) = cmd.complete() {
            // The command still owns everything; the device could still reach it.
            assert!(
                cmd.prepared().is_some(),
                "a failed complete gave up the preparation: {e}"
            );
            w.clear();
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), |e| Err(text(e)))
}

/// A general descriptor of three ranges of fresh task memory (scattered, some above 4 GiB).
fn general(w: &World, dir: Direction) -> dmakit::Result<(Arc<dyn MemoryDescriptor>, Task)> {
    let t = w.m.create_task();
    let va = w.m.vm_allocate(t, 0x8000, true)?;
    let ranges = [
        (VirtAddr(va.0 + 0x200), 0x1e00),
        (VirtAddr(va.0 + 0x3000), 0x2000),
        (VirtAddr(va.0 + 0x6000), 0x1800),
    ];
    let g = GeneralMemoryDescriptor::with_ranges(w.m.clone(), t, &ranges, dir)?;
    Ok((Arc::new(g), t))
}

/// Runs `f` over a general descriptor and gives the task back afterwards.
fn with_general(
    w: &World,
    dir: Direction,
    f: impl FnOnce(Arc<dyn MemoryDescriptor>) -> Outcome,
) -> Outcome {
    let (md, t) = general(w, dir).map_err(text)?;
    let r = f(md);
    w.m.destroy_task(t).map_err(text)?;
    r
}

fn buffer(w: &World, len: u64, dir: Direction) -> dmakit::Result<Arc<dyn MemoryDescriptor>> {
    Ok(Arc::new(BufferMemoryDescriptor::new(
        w.m.clone(),
        BufferOptions::new(len, dir),
    )?))
}

/// prepare, synchronize both ways the direction allows, complete.
fn transfer(cmd: &mut DmaCommand<M>) -> dmakit::Result<()> {
    cmd.prepare(PrepareOptions::new())?;
    cmd.synchronize(Direction::Out)?;
    cmd.synchronize(Direction::In)?;
    cmd.complete()
}

// ---- the operations --------------------------------------------------------------------

fn op_buffer(w: &World) -> Outcome {
    let b = BufferMemoryDescriptor::new(
        w.m.clone(),
        BufferOptions::new(0x5000, Direction::InOut).contiguous(true),
    )
    .map_err(text)?;
    b.prepare_wiring(Direction::InOut).map_err(text)?;
    b.complete().map_err(text)
}

fn op_pageable(w: &World) -> Outcome {
    let b = BufferMemoryDescriptor::new(
        w.m.clone(),
        BufferOptions::new(0x5000, Direction::InOut).pageable(true),
    )
    .map_err(text)?;
    b.write(0, &[7; 0x5000]).map_err(text)?;
    b.prepare_wiring(Direction::InOut).map_err(text)?;
    b.physical_segment(0x4000).map_err(text)?;
    b.complete().map_err(text)
}

fn op_general(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |md| {
        md.prepare_wiring(Direction::InOut).map_err(text)?;
        md.complete().map_err(text)
    })
}

fn op_sub(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |md| {
        let s = SubMemoryDescriptor::new(md, 0x1000, 0x3000, Direction::InOut).map_err(text)?;
        s.prepare_wiring(Direction::InOut).map_err(text)?;
        s.complete().map_err(text)
    })
}

fn op_multi(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |md| {
        let b = buffer(w, 0x2000, Direction::InOut).map_err(text)?;
        let multi = MultiMemoryDescriptor::new(vec![b, md], Direction::InOut).map_err(text)?;
        multi.prepare_wiring(Direction::InOut).map_err(text)?;
        multi.complete().map_err(text)
    })
}

fn op_interleaved(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |md| {
        let b = buffer(w, 0x3000, Direction::InOut).map_err(text)?;
        let mut il = InterleavedMemoryDescriptor::with_capacity(4, Direction::InOut);
        il.set_memory_descriptor(md.clone(), 0x800, 0x2000)
            .map_err(text)?;
        il.set_memory_descriptor(b, 0, 0x3000).map_err(text)?;
        il.set_memory_descriptor(md, 0x4000, 0x1000).map_err(text)?;
        il.prepare_wiring(Direction::InOut).map_err(text)?;
        il.complete().map_err(text)
    })
}

fn op_memory_map(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |_| {
        let b = Arc::new(
            BufferMemoryDescriptor::new(w.m.clone(), BufferOptions::new(0x3000, Direction::InOut))
                .map_err(text)?,
        );
        let t = w.m.create_task();
        let r = b
            .map(MapOptions::new().in_task(t).anywhere())
            .and_then(|mut map| map.unmap());
        w.m.destroy_task(t).map_err(text)?;
        r.map_err(text)
    })
}

fn op_cmd_direct(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |md| {
        drive(
            w,
            command(w, any_spec(), MappingMode::Bypassed),
            md,
            transfer,
        )
    })
}

fn op_cmd_per_page(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |md| {
        drive(w, command(w, spec32(), MappingMode::Bypassed), md, transfer)
    })
}

fn op_cmd_double_buffer(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |md| {
        let spec = SegmentSpec::builder()
            .address_bits(32)
            .max_segments(1)
            .build()
            .unwrap();
        drive(w, command(w, spec, MappingMode::Bypassed), md, transfer)
    })
}

fn op_cmd_force_double_buffer(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |md| {
        drive(w, command(w, any_spec(), MappingMode::Bypassed), md, |c| {
            c.prepare(PrepareOptions::new())?;
            c.force_double_buffer()?;
            c.synchronize(Direction::Out)?;
            c.complete()
        })
    })
}

fn op_cmd_non_coherent(w: &World) -> Outcome {
    with_general(w, Direction::InOut, |md| {
        drive(
            w,
            command(w, spec32(), MappingMode::NonCoherent),
            md,
            transfer,
        )
    })
}

fn op_cmd_mapped(w: &World) -> Outcome {
    let b = buffer(w, 0x6000, Direction::InOut).map_err(text)?;
    drive(w, command(w, any_spec(), mapped(w)), b, transfer)
}

fn op_cmd_mapped_joins(w: &World) -> Outcome {
    // Runs that do not meet at page boundaries: each gets IO pages of its own.
    with_general(w, Direction::InOut, |md| {
        drive(w, command(w, any_spec(), mapped(w)), md, transfer)
    })
}

fn op_cmd_mapped_forced(w: &World) -> Outcome {
    let b = buffer(w, 0x6000, Direction::InOut).map_err(text)?;
    w.pool.set_force_bounce(true);
    let r = drive(w, command(w, any_spec(), mapped(w)), b, transfer);
    w.pool.set_force_bounce(false);
    r
}

fn op_cmd_mapped_force_double_buffer(w: &World) -> Outcome {
    let b = buffer(w, 0x6000, Direction::InOut).map_err(text)?;
    drive(w, command(w, any_spec(), mapped(w)), b, |c| {
        c.prepare(PrepareOptions::new())?;
        c.force_double_buffer()?;
        c.complete()
    })
}

fn op_cmd_dropped_quarantined(w: &World) -> Outcome {
    let b = buffer(w, 0x6000, Direction::InOut).map_err(text)?;
    let mut c = command(w, any_spec(), mapped(w));
    c.set_memory_descriptor(b).map_err(text)?;
    let r = c.prepare(PrepareOptions::new());
    drop(c);
    let mut q = w.q.quiesced();
    if q.is_err() {
        // What could not be released stays held; the device is still quiesced.
        w.clear();
        q = q.and(w.q.quiesced());
    }
    r.map_err(text)?;
    q.map(|_| ()).map_err(text)
}

fn op_mapper(w: &World) -> Outcome {
    let b = buffer(w, 0x4000, Direction::InOut).map_err(text)?;
    let iova = w.mapper.iovm_alloc(4).map_err(text)?;
    let r = (0..4u64).try_for_each(|i| {
        let pa = b.physical_segment(i * 0x1000)?.addr;
        w.mapper
            .iovm_insert_page(IoAddr(iova.0 + i * 0x1000), pa, Access::READ_WRITE)
    });
    free_retrying(w, iova, 4, r)
}

/// `iovm_free`, retried once the fault has passed when it fails (the allocation stays
/// live until it succeeds); the first error wins.
fn free_retrying(w: &World, iova: IoAddr, pages: u64, r: dmakit::Result<()>) -> Outcome {
    let mut first = r.err();
    if let Err(e) = w.mapper.iovm_free(iova, pages) {
        first.get_or_insert(e);
        w.clear();
        w.mapper.iovm_free(iova, pages).map_err(text)?;
    }
    first.map_or(Ok(()), |e| Err(text(e)))
}

fn op_lazy_mapper(w: &World) -> Outcome {
    let lazy = IommuMapper::new_lazy(w.iommu.clone(), 0x8000_0000, 0x100_0000).map_err(text)?;
    let b = buffer(w, 0x1000, Direction::InOut).map_err(text)?;
    let pa = b.physical_segment(0).map_err(text)?.addr;
    let mut first = None;
    for _ in 0..3 {
        let iova = lazy.iovm_alloc(1).map_err(text)?;
        let r = lazy.iovm_insert_page(iova, pa, Access::READ);
        if let Err(e) = r.and_then(|()| lazy.iovm_free(iova, 1)) {
            first.get_or_insert(e);
            w.clear();
            let _ = lazy.iovm_free(iova, 1);
        }
    }
    if let Err(e) = lazy.flush() {
        first.get_or_insert(e);
        w.clear();
        lazy.flush().map_err(text)?;
    }
    assert_eq!(lazy.usage(), (0, 0), "lazy mapper left something mapped");
    first.map_or(Ok(()), |e| Err(text(e)))
}

fn op_system_mapper(w: &World) -> Outcome {
    let reg = MapperRegistry::with_system_mapper(Some(w.mapper.clone() as Arc<dyn Mapper>));
    let b = buffer(w, 0x2000, Direction::InOut).map_err(text)?;
    let pa = b.physical_segment(0).map_err(text)?.addr;
    let base = reg.iovm_alloc_pages(2).map_err(text)?;
    let r = reg
        .insert_page(base, 0, (pa.0 >> 12) as u32)
        .and_then(|_| reg.insert_page(base, 1, (pa.0 >> 12) as u32));
    let mut first = r.err();
    if let Err(e) = reg.iovm_free_pages(base, 2) {
        first.get_or_insert(e);
        w.clear();
        reg.iovm_free_pages(base, 2).map_err(text)?;
    }
    first.map_or(Ok(()), |e| Err(text(e)))
}

fn segments(cmd: &DmaCommand<M>) -> dmakit::Result<Vec<IoSegment>> {
    cmd.segments().collect()
}

fn op_event_source(w: &World) -> Outcome {
    let engine = Arc::new(SimDmaEngine::new(w.m.clone(), Some(w.iommu.clone())).map_err(text)?);
    let es = Arc::new(DmaEventSource::synchronous(engine.clone()));
    engine.connect(es.clone());
    let src = buffer(w, 0x3000, Direction::Out).map_err(text)?;
    let dst = buffer(w, 0x3000, Direction::In).map_err(text)?;
    let mut cd = command(w, any_spec(), mapped(w));
    cd.set_memory_descriptor(dst).map_err(text)?;
    let r = drive(w, command(w, any_spec(), mapped(w)), src, |cs| {
        cs.prepare(PrepareOptions::new())?;
        cd.prepare(PrepareOptions::new())?;
        let (s, d) = (segments(cs)?, segments(&cd)?);
        let t = DmaTransfer {
            source: &s,
            dest: &d,
        };
        match es.start_dma_command(&t, SyncWait::Polls(4))? {
            DmaStart::Completed(c) => c.status,
            DmaStart::Queued { .. } => Err(Error::Internal {
                what: "a synchronous event source queued",
            }),
        }
    });
    let rd = finish(w, &mut cd, Ok(()));
    drop(es);
    drop(engine);
    r.and(rd)
}

fn op_nvme(w: &World) -> Outcome {
    let sim = w.nvme.as_ref().unwrap();
    let nvme =
        Nvme::new(sim.m.clone(), sim.f.clone(), sim.timer.clone(), sim.options).map_err(text)?;
    let ns = nvme.namespace(1).map_err(text)?;
    let mut q = nvme.io_queue(QueueOptions::new(8)).map_err(text)?;
    let src = suite::scattered(&sim.m, &[(5000, 12), (3192, 0), (8192, 0)]).map_err(text)?;
    let dst = suite::scattered(&sim.m, &[(8192, 0), (8192, 0)]).map_err(text)?;
    let r = q
        .write(&ns, 100, &src, 0, 16384)
        .and_then(|_| q.read(&ns, 100, &dst, 0, 16384))
        .map(|_| ());
    w.clear();
    // A later recovery gives back what a failed command held.
    let _ = nvme.recover(false);
    drop(q);
    r.map_err(text)
}

// ---- the matrix ------------------------------------------------------------------------

struct Op {
    name: &'static str,
    world: fn(u64) -> World,
    run: fn(&World) -> Outcome,
}

fn nvme_iommu(seed: u64) -> World {
    World::nvme(seed, DmaMode::DEFAULT_IOMMU)
}

fn nvme_bypass(seed: u64) -> World {
    World::nvme(
        seed,
        DmaMode::Bypass {
            max_address: 0x0FFF_FFFF,
        },
    )
}

fn ops() -> Vec<Op> {
    let m = World::machine as fn(u64) -> World;
    let op = |name, run| Op {
        name,
        world: m,
        run,
    };
    vec![
        op(
            "buffer descriptor: new, prepare, complete",
            op_buffer as fn(&World) -> Outcome,
        ),
        op("pageable buffer: prepare, translate, complete", op_pageable),
        op("general descriptor: prepare, complete", op_general),
        op("sub descriptor: prepare, complete", op_sub),
        op("multi descriptor: prepare, complete", op_multi),
        op("interleaved descriptor: prepare, complete", op_interleaved),
        op("memory map into a task: map, unmap", op_memory_map),
        op(
            "DmaCommand bypass direct: prepare, synchronize, complete",
            op_cmd_direct,
        ),
        op(
            "DmaCommand bypass per-page bounce (32-bit)",
            op_cmd_per_page,
        ),
        op(
            "DmaCommand bypass double buffer (32-bit, 1 segment)",
            op_cmd_double_buffer,
        ),
        op(
            "DmaCommand bypass force_double_buffer",
            op_cmd_force_double_buffer,
        ),
        op("DmaCommand non-coherent (32-bit)", op_cmd_non_coherent),
        op("DmaCommand IOMMU-mapped", op_cmd_mapped),
        op(
            "DmaCommand IOMMU-mapped, odd runs bounced",
            op_cmd_mapped_joins,
        ),
        op(
            "DmaCommand IOMMU-mapped, pool forces bounce",
            op_cmd_mapped_forced,
        ),
        op(
            "DmaCommand IOMMU-mapped force_double_buffer",
            op_cmd_mapped_force_double_buffer,
        ),
        op(
            "DmaCommand dropped prepared, quarantine quiesced",
            op_cmd_dropped_quarantined,
        ),
        op("IommuMapper (strict): alloc, insert, free", op_mapper),
        op(
            "IommuMapper (lazy): alloc, insert, free, flush",
            op_lazy_mapper,
        ),
        op("system mapper: alloc, insert, free pages", op_system_mapper),
        op(
            "DmaEventSource + DMA engine: synchronous transfer",
            op_event_source,
        ),
        Op {
            name: "NVMe write + read, IOMMU",
            world: nvme_iommu,
            run: op_nvme,
        },
        Op {
            name: "NVMe write + read, bypass 28-bit (bounced)",
            world: nvme_bypass,
            run: op_nvme,
        },
    ]
}

/// The clean run: calls per step, and the resources it must give back.
fn count(op: &Op, seed: u64) -> Vec<(Step, u64)> {
    let w = (op.world)(seed);
    let steps = w.steps();
    let before: Vec<u64> = steps.iter().map(|&s| w.calls(s)).collect();
    let r0 = w.resources();
    (op.run)(&w).unwrap_or_else(|e| panic!("{}: the clean run failed: {e}", op.name));
    let _ = w.mapper.flush();
    assert_eq!(w.resources(), r0, "{}: the clean run leaked", op.name);
    steps
        .iter()
        .zip(before)
        .map(|(&s, b)| (s, w.calls(s) - b))
        .collect()
}

/// Whether an error text names what failed.
fn names(step: Step, e: &str) -> bool {
    e.contains(step.name())
        || matches!(step, Step::Pci(_)) && (e.starts_with("NVMe ") || e.contains("IOMMU fault"))
        || e.contains("bounce pool")
        || e.contains("matrix bounce pool")
}

/// One injected fault: the leaks and unclear errors it showed, if any.
fn inject(op: &Op, seed: u64, step: Step, k: u64) -> (bool, Vec<String>) {
    let w = (op.world)(seed);
    let before = w.resources();
    w.inject(step, k);
    let r = (op.run)(&w);
    w.clear();
    let _ = w.mapper.flush();
    let after = w.resources();
    let mut problems = Vec::new();
    let what = format!("{} / {} #{k}", op.name, step.name());
    if let Err(e) = &r {
        if !names(step, e) {
            problems.push(format!("{what}: unclear error: {e}"));
        }
    }
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            problems.push(format!("{what}: leak: {} {} -> {}", b.0, b.1, a.1));
        }
    }
    (r.is_err(), problems)
}

#[test]
#[cfg_attr(
    miri,
    ignore = "about 650 injected faults, each on a fresh machine: hours interpreted"
)]
fn every_step_of_every_operation_fails_cleanly() {
    let start = Instant::now();
    let ops = ops();
    let (mut faults, mut errors) = (0u64, 0u64);
    let mut problems = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let seed = 100 + i as u64;
        let t = Instant::now();
        let mut n_op = 0;
        for (step, n) in count(op, seed) {
            for k in 1..=n {
                let (failed, p) = inject(op, seed, step, k);
                faults += 1;
                n_op += 1;
                errors += failed as u64;
                problems.extend(p);
            }
        }
        println!(
            "  {:<58} {n_op:>4} faults  {:>6} ms",
            op.name,
            t.elapsed().as_millis()
        );
    }
    for p in &problems {
        println!("PROBLEM {p}");
    }
    let leaks = problems.iter().filter(|p| p.contains(": leak: ")).count();
    println!(
        "fault matrix: {} operations, {faults} injected faults, {leaks} leaks ({errors} surfaced as errors, {} ms)",
        ops.len(),
        start.elapsed().as_millis()
    );
    assert!(problems.is_empty(), "{} problems", problems.len());
    assert!(errors > 0);
}
