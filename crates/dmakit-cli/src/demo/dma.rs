//! The demo's DMA steps: a 32-bit device reading a buffer above 4 GiB through a bounce
//! buffer (on a second machine whose low RAM is busy), and a scattered buffer mapped
//! through the IOMMU into one IO segment, the DMA engine copying it to a second one.
//! Where the buffers, the bounce buffer and the IO mappings landed goes to the record.

use super::memory::segments;
use super::record::{regions, runs_of, Record};
use super::{heading, right, table};
use crate::out::say;
use crate::picture::{Lane, Run, Space, Use};
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{
    BouncePool, DmaCommand, DmaCompletion, DmaEventSource, DmaTransfer, IoSegment, MappingMode,
    PrepareOptions, SegmentFormat, SegmentSpec,
};
use dmakit::map::{flush_processor_cache, mapped_read32};
use dmakit::mapper::IommuMapper;
use dmakit::platform::Task;
use dmakit::{Direction, Error, PhysAddr};
use dmakit_sim::dma_engine::{desc, regs};
use dmakit_sim::{Machine, MachineBuilder, SimDmaEngine, SimIommu};
use std::io::Write;
use std::sync::{Arc, Mutex};

type Buffer = Arc<BufferMemoryDescriptor<Arc<Machine>>>;

/// Bytes of the bounced buffer.
const BOUNCED: usize = 12_000;
/// Bytes of the engine's copy.
const COPIED: u64 = 48 * 1024;
/// The IOMMU window of the mapped copy.
const WINDOW: (u64, u64) = (0x8000_0000, 0x1000_0000);

fn io_segments(cmd: &DmaCommand<Arc<Machine>>) -> dmakit::Result<Vec<IoSegment>> {
    let mut out = vec![0u8; 64 * 16];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut out)?;
    (0..n)
        .map(|i| SegmentFormat::Little64.read(&out, i))
        .collect()
}

fn io_runs(segs: &[IoSegment]) -> Vec<Run> {
    segs.iter()
        .map(|s| Run {
            start: s.addr.0,
            len: s.len,
        })
        .collect()
}

/// A machine whose low RAM is busy while the buffer is allocated, so it lands above
/// 4 GiB; the buffer.
fn high_buffer(seed: u64, data: &[u8]) -> dmakit::Result<(Arc<Machine>, Buffer)> {
    let hm = Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .ram(0x10_0000, 0x20_0000)
            .ram(0x1_0000_0000, 0x1000_0000)
            .fragmentation(0.0)
            .coherent(true)
            .build()?,
    );
    let filler =
        BufferMemoryDescriptor::new(hm.clone(), BufferOptions::new(0x20_0000, Direction::In))?;
    let buf = Arc::new(BufferMemoryDescriptor::with_bytes(
        hm.clone(),
        data,
        Direction::Out,
    )?);
    drop(filler);
    Ok((hm, buf))
}

/// A command for a 32-bit device with at most 4 KiB per segment, bouncing through `pool`.
fn command32(
    hm: &Arc<Machine>,
    pool: &Arc<BouncePool<Arc<Machine>>>,
) -> dmakit::Result<DmaCommand<Arc<Machine>>> {
    let spec32 = SegmentSpec::builder()
        .address_bits(32)
        .max_segment_size(0x1000)
        .build()?;
    DmaCommand::builder(hm.clone())
        .spec(spec32)
        .format(SegmentFormat::Little32)
        .bounce_pool(pool.clone())
        .build()
}

/// What the device reads at each of the command's segments: the bytes, and the segments.
fn device_reads(
    hm: &Machine,
    cmd: &DmaCommand<Arc<Machine>>,
) -> dmakit::Result<(Vec<u8>, Vec<Run>)> {
    let mut raw = [0u8; 8 * 8];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut raw)?;
    let mut seen = Vec::new();
    let mut runs = Vec::new();
    for i in 0..n {
        let s = SegmentFormat::Little32.read(&raw, i)?;
        let mut chunk = vec![0u8; s.len as usize];
        hm.device_read(PhysAddr(s.addr.0), &mut chunk)?;
        seen.extend(chunk);
        runs.push(Run {
            start: s.addr.0,
            len: s.len,
        });
    }
    Ok((seen, runs))
}

/// A 32-bit device reads a buffer above 4 GiB: the command bounces it below.
pub fn bounced(seed: u64, out: &mut dyn Write, rec: &mut Record) -> dmakit::Result<()> {
    heading(
        out,
        "DMA: a 32-bit device and a buffer above 4 GiB (bounced)",
    );
    let data: Vec<u8> = (0..BOUNCED as u32).map(|i| (i % 251) as u8).collect();
    let (hm, buf) = high_buffer(seed, &data)?;
    let pool = Arc::new(BouncePool::new(hm.clone(), "demo bounce pool", 1 << 20));
    let mut cmd = command32(&hm, &pool)?;
    cmd.set_memory_descriptor(buf.clone())?;
    cmd.prepare(PrepareOptions::range(0, BOUNCED as u64))?;
    let (seen, device_runs) = device_reads(&hm, &cmd)?;
    let mut t = table(&["", "address", "bytes"]);
    t.add_row([
        "buffer (CPU physical)".to_string(),
        format!("{:#x}", buf.physical_segment(0)?.addr.0),
        BOUNCED.to_string(),
    ]);
    for (i, s) in device_runs.iter().enumerate() {
        t.add_row([
            format!("device segment {i} (Little32)"),
            format!("{:#x}", s.start),
            s.len.to_string(),
        ]);
    }
    right(&mut t, &[2]);
    say!(out, "{t}");
    let st = pool.stats();
    let correct = seen == data;
    say!(
        out,
        "bounced: {}; the device read {} bytes, {}; pool: {} bytes copied, high-water {} bytes",
        cmd.is_bounced(),
        seen.len(),
        if correct { "all correct" } else { "WRONG" },
        st.bounced_bytes,
        st.high_water
    );
    rec.dma.bounced = cmd.is_bounced();
    rec.dma.device_read_bytes = seen.len() as u64;
    rec.dma.device_read_correct = correct;
    rec.dma.bounce_pool_copied = st.bounced_bytes;
    rec.bounce_machine = Some(bounce_space(&hm, buf.as_ref(), device_runs)?);
    cmd.complete()?;
    if !correct {
        return Err(Error::Internal {
            what: "demo: bounced data differs",
        });
    }
    Ok(())
}

/// The bounced transfer's machine, with the buffer and where the device read it.
fn bounce_space(
    hm: &Machine,
    buf: &dyn MemoryDescriptor,
    device: Vec<Run>,
) -> dmakit::Result<Space> {
    let lanes = vec![
        Lane::new(
            Use::Allocation,
            format!("the buffer: {BOUNCED} bytes above 4 GiB"),
            runs_of(&segments(buf)?),
        ),
        Lane::new(
            Use::Bounce,
            format!(
                "bounce buffer: the 32-bit device read {} segments",
                device.len()
            ),
            device,
        ),
    ];
    Ok(Space::physical(
        "A second machine for the bounced transfer (its RAM below 4 GiB kept busy while the buffer was allocated)",
        regions(&hm.layout()),
        lanes,
    ))
}

/// A command mapping `md` through `mapper`, prepared.
fn mapped(
    m: &Arc<Machine>,
    mapper: &Arc<IommuMapper<Arc<SimIommu>>>,
    md: Buffer,
) -> dmakit::Result<DmaCommand<Arc<Machine>>> {
    let spec = SegmentSpec::builder().address_bits(32).build()?;
    let mut c = DmaCommand::builder(m.clone())
        .spec(spec)
        .format(SegmentFormat::Little64)
        .mode(MappingMode::Mapped(mapper.clone()))
        .build()?;
    c.set_memory_descriptor(md)?;
    c.prepare(PrepareOptions::range(0, COPIED))?;
    Ok(c)
}

/// The source (a pattern) and the destination of the copy.
fn copy_buffers(m: &Arc<Machine>) -> dmakit::Result<(Vec<u8>, Buffer, Buffer)> {
    let bytes: Vec<u8> = (0..COPIED as u32).map(|i| (i * 7 % 256) as u8).collect();
    let src = Arc::new(BufferMemoryDescriptor::with_bytes(
        m.clone(),
        &bytes,
        Direction::Out,
    )?);
    let dst = Arc::new(BufferMemoryDescriptor::new(
        m.clone(),
        BufferOptions::new(COPIED, Direction::In),
    )?);
    flush_processor_cache(&**m, Task::KERNEL, src.address(), COPIED)?;
    Ok((bytes, src, dst))
}

/// A scattered buffer mapped into one IO segment, and the engine copying it.
pub fn mapped_copy(m: &Arc<Machine>, out: &mut dyn Write, rec: &mut Record) -> dmakit::Result<()> {
    heading(
        out,
        "DMA: a scattered buffer mapped through the IOMMU into one IO segment",
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), WINDOW.0, WINDOW.1)?);
    let (src_bytes, src, dst) = copy_buffers(m)?;
    let src_runs = segments(src.as_ref())?;
    rec.place(
        format!("DMA source: 48 KiB in {} physical runs", src_runs.len()),
        &src_runs,
    );
    rec.place("DMA destination: 48 KiB", &segments(dst.as_ref())?);
    let mut cs = mapped(m, &mapper, src.clone())?;
    let mut cd = mapped(m, &mapper, dst.clone())?;
    let (ss, ds) = (io_segments(&cs)?, io_segments(&cd)?);
    let (Some(s0), Some(d0)) = (ss.first(), ds.first()) else {
        return Err(Error::Internal {
            what: "demo: a mapped command gave no IO segment",
        });
    };
    say!(
        out,
        "source: {} physical runs -> {} IO segment at {:#x} (+{:#x}); destination: {} IO segment at {:#x}",
        src_runs.len(),
        ss.len(),
        s0.addr.0,
        s0.len,
        ds.len(),
        d0.addr.0
    );
    rec.dma.source_runs = src_runs.len() as u64;
    rec.dma.source_io_segments = ss.len() as u64;
    rec.io.push(window_space(&ss, &ds));
    let copy = Copy {
        iommu: &iommu,
        source: &ss,
        dest: &ds,
    };
    heading(out, "DMA: the engine copies between the two descriptors");
    let done = engine_copy(m, &copy, rec)?;
    cd.complete()?;
    cs.complete()?;
    let back = read_back(dst.as_ref())?;
    let same = if back == src_bytes {
        "matches the source"
    } else {
        "WRONG"
    };
    print_copy(m, &done, same, out)?;
    say!(
        out,
        "IOMMU: {} faults, {} IOTLB invalidations; IO space in use after complete: {:?}",
        iommu.faults().len(),
        iommu.invalidations(),
        mapper.usage()
    );
    rec.dma.iommu_faults = iommu.faults().len() as u64;
    rec.dma.iotlb_invalidations = iommu.invalidations();
    rec.dma.engine_copy_correct = back == src_bytes;
    if !rec.dma.engine_copy_correct {
        return Err(Error::Internal {
            what: "demo: the engine's copy differs",
        });
    }
    Ok(())
}

/// The bytes of `dst`.
fn read_back(dst: &dyn MemoryDescriptor) -> dmakit::Result<Vec<u8>> {
    let mut back = vec![0u8; COPIED as usize];
    if dst.read_bytes(0, &mut back) != back.len() {
        return Err(Error::Internal {
            what: "demo: the destination could not be read back",
        });
    }
    Ok(back)
}

/// The IOMMU window with the copy's two mappings.
fn window_space(source: &[IoSegment], dest: &[IoSegment]) -> Space {
    Space::io(
        "The IOMMU window of the copy (IommuMapper): the two mappings while prepared, and what is free",
        WINDOW.0,
        WINDOW.1,
        vec![
            Lane::new(Use::Mapping, "source mapping: 48 KiB in one IO segment", io_runs(source)),
            Lane::new(Use::Mapping, "destination mapping: 48 KiB", io_runs(dest)),
        ],
    )
}

/// What the engine copies.
struct Copy<'a> {
    iommu: &'a Arc<SimIommu>,
    source: &'a [IoSegment],
    dest: &'a [IoSegment],
}

/// A finished copy.
struct Done {
    engine: Arc<SimDmaEngine>,
    ticket: String,
    interrupts: String,
    completion: DmaCompletion,
}

/// The engine copies `c.source` to `c.dest` (its ring is recorded where it landed).
fn engine_copy(m: &Arc<Machine>, c: &Copy<'_>, rec: &mut Record) -> dmakit::Result<Done> {
    let engine = Arc::new(SimDmaEngine::new(m.clone(), Some(c.iommu.clone()))?);
    let ring_bytes = u64::from(regs::MAX_RING_SIZE) * desc::SIZE;
    rec.place(
        "the DMA engine's descriptor ring",
        &[dmakit::PhysRange {
            addr: engine.ring_physical(),
            len: ring_bytes,
        }],
    );
    let done = Arc::new(Mutex::new(Vec::new()));
    let d2 = done.clone();
    let es = Arc::new(DmaEventSource::new(
        engine.clone(),
        move |c: DmaCompletion| d2.lock().unwrap_or_else(|p| p.into_inner()).push(c),
    ));
    engine.connect(es.clone());
    let ticket = es.start(&DmaTransfer {
        source: c.source,
        dest: c.dest,
    })?;
    let interrupts = es.pending_interrupts();
    es.poll();
    let first = done
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .first()
        .cloned();
    let Some(completion) = first else {
        return Err(Error::Internal {
            what: "demo: the engine's copy did not complete",
        });
    };
    Ok(Done {
        engine,
        ticket: ticket.to_string(),
        interrupts: interrupts.to_string(),
        completion,
    })
}

/// The completion as a table, and the engine's registers.
fn print_copy(m: &Machine, d: &Done, same: &str, out: &mut dyn Write) -> dmakit::Result<()> {
    let mut t = table(&["ticket", "bytes", "status", "interrupts", "destination"]);
    t.add_row([
        d.ticket.clone(),
        d.completion.bytes.to_string(),
        format!("{:?}", d.completion.status),
        d.interrupts.clone(),
        same.to_string(),
    ]);
    say!(out, "{t}");
    let e = &d.engine;
    let reg = |offset| mapped_read32(m, PhysAddr(e.registers().0 + offset));
    say!(
        out,
        "engine: registers at {:#x}, descriptor ring at IO {:#x} (physical {:#x}); HEAD {}, TAIL {}, COMPLETED {}",
        e.registers().0,
        e.ring_address().0,
        e.ring_physical().0,
        reg(regs::HEAD)?,
        reg(regs::TAIL)?,
        reg(regs::COMPLETED)?
    );
    Ok(())
}
