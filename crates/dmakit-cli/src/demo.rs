//! `dmakit demo`: a short scenario on the simulated machine, printed as tables.
//!
//! It builds the default hostile machine (fragmented RAM with holes and a region above
//! 4 GiB, non-coherent caches) and shows, step by step, what the IOMalloc family allocated
//! and where it landed physically, an IO address space carved by `RangeAllocator`, a
//! physically constrained allocation, the cache model, mapped I/O to a device model, and
//! what fault injection and misuse produce, and DMA: a 32-bit device bounced below 4 GiB, a
//! scattered buffer mapped through the IOMMU into one IO segment, and the DMA engine copying
//! between two descriptors. Then the portable NVMe driver on a simulated controller
//! (`crate::demo_nvme`), and a teardown that checks everything was given back.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use dmakit::alloc::{
    io_free, io_free_aligned, io_free_pageable, io_malloc, io_malloc_aligned, io_malloc_pageable,
    IoHeap, RangeAllocator,
};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{
    BouncePool, DmaCommand, DmaCompletion, DmaEventSource, DmaTransfer, IoSegment, MappingMode,
    SegmentFormat, SegmentSpec,
};
use dmakit::map::{flush_processor_cache, mapped_read32};
use dmakit::mapper::IommuMapper;
use dmakit::platform::{
    collect_runs, CacheOp, CacheOps, CpuAccess, Mmio, PageRequest, PhysicalMemory, Task, Width,
    Wiring,
};
use dmakit::{Direction, Error, PageSize, PhysRange, VirtAddr};
use dmakit_sim::dma_engine::regs;
use dmakit_sim::{FaultSite, Machine, MachineBuilder, ScratchDevice, SimDmaEngine, SimIommu};
use std::sync::{Arc, Mutex};

const MMIO_BASE: u64 = 0xFEB0_0000;

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.iter().map(Cell::new));
    t
}

pub(crate) fn right(t: &mut Table, cols: &[usize]) {
    for &c in cols {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn runs_text(runs: &[PhysRange]) -> String {
    let mut parts: Vec<String> = runs
        .iter()
        .take(4)
        .map(|r| format!("{:#x}+{:#x}", r.addr.0, r.len))
        .collect();
    if runs.len() > 4 {
        parts.push(format!("… {} runs in all", runs.len()));
    }
    parts.join("\n")
}

fn err_text(e: &Error) -> String {
    format!("{e}\n→ {}", e.io_return())
}

fn heading(s: &str) {
    crate::out::say!("\n== {s}");
}

/// Runs the scenario.
pub fn run(seed: u64, page_size: u64) -> Result<(), String> {
    let page = PageSize::new(page_size).map_err(|e| e.to_string())?;
    let device = Arc::new(Mutex::new(ScratchDevice::new(0xD0A7_0001, 0x100)));
    let m = Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .page_size(page)
            .mmio(MMIO_BASE, 0x1000, device)
            .build()
            .map_err(|e| e.to_string())?,
    );
    crate::out::say!("dmakit demo: a simulated machine (seed {seed})");
    heading("The machine");
    crate::out::say_part!("{}", m.layout());

    io_malloc_family(&m).map_err(|e| e.to_string())?;
    constrained(&m).map_err(|e| e.to_string())?;
    multi_descriptor(&m).map_err(|e| e.to_string())?;
    io_space().map_err(|e| e.to_string())?;
    cache_and_mmio(&m).map_err(|e| e.to_string())?;
    dma(&m, seed).map_err(|e| e.to_string())?;
    faults_and_misuse(&m).map_err(|e| e.to_string())?;
    let mut stdout = crate::out::Out;
    let nvme = crate::demo_nvme::run(&m, seed, &mut stdout)?;

    let s = m.stats();
    heading("Teardown");
    crate::out::say!(
        "allocations live: {}, wired pages: {}, free pages: {} of {}",
        s.allocations,
        s.wired_pages,
        s.free_pages,
        s.ram_pages
    );
    nvme.check(&m, &mut stdout)?;
    if s.allocations != 0 || s.free_pages != s.ram_pages {
        return Err("the demo leaked memory on the simulated machine".into());
    }
    Ok(())
}

fn io_malloc_family(m: &Machine) -> dmakit::Result<()> {
    heading("IOMalloc family: what was allocated and where it landed");
    let heap = IoHeap::new(m);
    let k = Task::KERNEL;
    let mut t = table(&["call", "size", "kernel virtual", "physical runs", "note"]);
    let small = io_malloc(&heap, 100)?;
    t.add_row(vec![
        "io_malloc".into(),
        "100".into(),
        format!("{:#x}", small.0),
        runs_text(&collect_runs(m, k, small, 100)?),
        "128-byte zone element, wired".to_string(),
    ]);
    let buf = io_malloc(&heap, 64 << 10)?;
    let runs = collect_runs(m, k, buf, 64 << 10)?;
    t.add_row(vec![
        "io_malloc".into(),
        "65536".into(),
        format!("{:#x}", buf.0),
        runs_text(&runs),
        format!("whole pages, wired; {} physical runs", runs.len()),
    ]);
    let al = io_malloc_aligned(&heap, 5000, 1 << 16)?;
    t.add_row(vec![
        "io_malloc_aligned".into(),
        "5000".into(),
        format!("{:#x}", al.0),
        runs_text(&collect_runs(m, k, al, 5000)?),
        "64 KiB aligned virtual address".to_string(),
    ]);
    let pg = io_malloc_pageable(&heap, 12 << 10, 0)?;
    let before = match collect_runs(m, k, pg, 12 << 10) {
        Ok(r) => runs_text(&r),
        Err(e) => format!("none: {}", e.io_return().name()),
    };
    t.add_row(vec![
        "io_malloc_pageable".into(),
        "12288".into(),
        format!("{:#x}", pg.0),
        before,
        "pageable: no physical pages until wired".to_string(),
    ]);
    m.wire(k, pg, 12 << 10, true)?;
    t.add_row(vec![
        "  …after wire()".into(),
        "".into(),
        "".into(),
        runs_text(&collect_runs(m, k, pg, 12 << 10)?),
        "wired: pages present, translation stable".to_string(),
    ]);
    right(&mut t, &[1]);
    crate::out::say!("{t}");
    m.unwire(k, pg, 12 << 10)?;
    io_free(&heap, small, 100)?;
    io_free(&heap, buf, 64 << 10)?;
    io_free_aligned(&heap, al, 5000)?;
    io_free_pageable(&heap, pg, 12 << 10)?;
    crate::out::say!("all freed with their sizes; heap: {:?}", heap.stats());
    Ok(())
}

fn constrained(m: &Machine) -> dmakit::Result<()> {
    heading("Physical constraints: a 32-bit device's contiguous buffer");
    let mut t = table(&["request", "kernel virtual", "physical runs", "highest byte"]);
    for (label, req) in [
        ("32 KiB, anywhere", PageRequest::WIRED),
        (
            "32 KiB, contiguous, below 4 GiB, 32 KiB aligned",
            PageRequest {
                align: 32 << 10,
                phys_limit: 0xFFFF_FFFF,
                phys_min: 0,
                contiguous: true,
                pageable: false,
            },
        ),
    ] {
        let va = m.allocate_pages(32 << 10, &req)?;
        let runs = collect_runs(m, Task::KERNEL, va, 32 << 10)?;
        let top = runs.iter().map(|r| r.addr.0 + r.len - 1).max().unwrap_or(0);
        t.add_row(vec![
            label.to_string(),
            format!("{:#x}", va.0),
            runs_text(&runs),
            format!("{top:#x}"),
        ]);
        m.free_pages(va, 32 << 10)?;
    }
    crate::out::say!("{t}");
    Ok(())
}

fn multi_descriptor(m: &Arc<Machine>) -> dmakit::Result<()> {
    heading("A multi descriptor and its physical segments");
    let contiguous = BufferOptions::new(12 << 10, Direction::Out)
        .contiguous(true)
        .phys_limit(0xFFFF_FFFF);
    let parts: Vec<Arc<dyn MemoryDescriptor>> = vec![
        Arc::new(BufferMemoryDescriptor::new(m.clone(), contiguous)?),
        Arc::new(BufferMemoryDescriptor::new(
            m.clone(),
            BufferOptions::new(20 << 10, Direction::Out),
        )?),
        Arc::new(BufferMemoryDescriptor::with_bytes(
            m.clone(),
            b"tail of the transfer",
            Direction::Out,
        )?),
    ];
    let multi = MultiMemoryDescriptor::new(parts, Direction::Out)?;
    let md: &dyn MemoryDescriptor = &multi;
    let prepared = md.prepare(Direction::Out)?;
    let mut t = table(&["offset", "physical address", "bytes", "part"]);
    let mut off = 0;
    while off < md.length() {
        let s = md.physical_segment(off)?;
        let part = match off {
            o if o < 12 << 10 => "contiguous, below 4 GiB",
            o if o < 32 << 10 => "scattered",
            _ => "with_bytes",
        };
        t.add_row(vec![
            format!("{off:#x}"),
            format!("{:#x}", s.addr.0),
            s.len.to_string(),
            part.to_string(),
        ]);
        off += s.len;
    }
    right(&mut t, &[0, 2]);
    crate::out::say!("{t}");
    let mut tail = [0u8; 20];
    assert_eq!(md.read_bytes(md.length() - 20, &mut tail), tail.len());
    crate::out::say!(
        "{} bytes in 3 parts; the last 20 read through the multi descriptor: {:?}",
        md.length(),
        String::from_utf8_lossy(&tail)
    );
    prepared.complete()?;
    Ok(())
}

fn io_space() -> dmakit::Result<()> {
    heading("An IO address space carved by RangeAllocator (IORangeAllocator)");
    let mut iova = RangeAllocator::new(0x4000_0000, 0x4000_0000, 0x1000)?;
    let mut t = table(&["call", "result"]);
    iova.allocate_range(0x4000_0000, 0x10_0000)?;
    t.add_row(vec![
        "allocate_range(0x40000000, 1 MiB)".to_string(),
        "reserved".to_string(),
    ]);
    let a = iova.allocate(0x3000, 0)?;
    t.add_row(vec!["allocate(12 KiB)".to_string(), format!("{a:#x}")]);
    let b = iova.allocate(0x1000, 0x20_0000)?;
    t.add_row(vec![
        "allocate(4 KiB, align 2 MiB)".to_string(),
        format!("{b:#x}"),
    ]);
    let c = iova.allocate(0x1_0000, 0)?;
    t.add_row(vec!["allocate(64 KiB)".to_string(), format!("{c:#x}")]);
    iova.deallocate(a, 0x3000)?;
    t.add_row(vec![
        "deallocate(first, 12 KiB)".to_string(),
        "ok".to_string(),
    ]);
    match iova.deallocate(a, 0x3000) {
        Err(e) => t.add_row(vec![
            "deallocate(first, 12 KiB) again".to_string(),
            err_text(&e),
        ]),
        Ok(()) => t.add_row(vec![
            "deallocate again".to_string(),
            "accepted (bug)".to_string(),
        ]),
    };
    crate::out::say!("{t}");
    let frags: Vec<String> = iova
        .fragments()
        .map(|(s, e)| format!("[{s:#x}, {e:#x}]"))
        .collect();
    crate::out::say!(
        "free: {:#x} bytes in {} fragments: {}",
        iova.free_count(),
        iova.fragment_count(),
        frags.join(" ")
    );
    Ok(())
}

fn cache_and_mmio(m: &Machine) -> dmakit::Result<()> {
    heading("Non-coherent caches and mapped I/O");
    let k = Task::KERNEL;
    let va = m.allocate_pages(m.page_size().bytes(), &PageRequest::WIRED)?;
    let pa = collect_runs(m, k, va, 16)?[0].addr;
    let mut t = table(&["step", "device reads at physical", "bytes"]);
    m.write_virt(k, va, b"new data")?;
    let mut seen = [0u8; 8];
    m.device_read(pa, &mut seen)?;
    t.add_row(vec![
        "CPU writes \"new data\"".to_string(),
        format!("{:#x}", pa.0),
        format!("{seen:02x?}"),
    ]);
    m.cache_virt(CacheOp::Clean, k, va, 8)?;
    m.device_read(pa, &mut seen)?;
    t.add_row(vec![
        "after cache clean".to_string(),
        format!("{:#x}", pa.0),
        format!("{:?}", String::from_utf8_lossy(&seen)),
    ]);
    crate::out::say!("{t}");
    m.free_pages(va, m.page_size().bytes())?;
    let id = m.mmio_read(dmakit::PhysAddr(MMIO_BASE), Width::W32)?;
    m.mmio_write(
        dmakit::PhysAddr(MMIO_BASE + 8),
        Width::W64,
        0xC0FF_EE00_1234_5678,
    )?;
    let back = m.mmio_read(dmakit::PhysAddr(MMIO_BASE + 8), Width::W64)?;
    crate::out::say!(
        "MMIO at {MMIO_BASE:#x}: device id {id:#010x}; wrote and read back {back:#018x} at +8"
    );
    Ok(())
}

fn io_segments(cmd: &DmaCommand<Arc<Machine>>) -> dmakit::Result<Vec<IoSegment>> {
    let mut out = vec![0u8; 64 * 16];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut out)?;
    (0..n)
        .map(|i| SegmentFormat::Little64.read(&out, i))
        .collect()
}

fn dma(m: &Arc<Machine>, seed: u64) -> dmakit::Result<()> {
    heading("DMA: a 32-bit device and a buffer above 4 GiB (bounced)");
    // A machine whose low RAM is busy while the buffer is allocated, so it lands above 4 GiB.
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
    let data: Vec<u8> = (0..12_000u32).map(|i| (i % 251) as u8).collect();
    let buf = Arc::new(BufferMemoryDescriptor::with_bytes(
        hm.clone(),
        &data,
        Direction::Out,
    )?);
    drop(filler);
    let pool = Arc::new(BouncePool::new(hm.clone(), "demo bounce pool", 1 << 20));
    let spec32 = SegmentSpec::builder()
        .address_bits(32)
        .max_segment_size(0x1000)
        .build()?;
    let mut cmd = DmaCommand::builder(hm.clone())
        .spec(spec32)
        .format(SegmentFormat::Little32)
        .bounce_pool(pool.clone())
        .build()?;
    cmd.set_memory_descriptor(buf.clone())?;
    cmd.prepare(PrepareOptions::range(0, 12_000))?;
    let mut out = [0u8; 8 * 8];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut out)?;
    let mut t = table(&["", "address", "bytes"]);
    t.add_row(vec![
        "buffer (CPU physical)".to_string(),
        format!("{:#x}", buf.physical_segment(0)?.addr.0),
        "12000".to_string(),
    ]);
    let mut seen = Vec::new();
    for i in 0..n {
        let s = SegmentFormat::Little32.read(&out, i)?;
        let mut chunk = vec![0u8; s.len as usize];
        hm.device_read(dmakit::PhysAddr(s.addr.0), &mut chunk)?;
        seen.extend(chunk);
        t.add_row(vec![
            format!("device segment {i} (Little32)"),
            format!("{:#x}", s.addr.0),
            s.len.to_string(),
        ]);
    }
    right(&mut t, &[2]);
    crate::out::say!("{t}");
    let st = pool.stats();
    crate::out::say!(
        "bounced: {}; the device read {} bytes, {}; pool: {} bytes copied, high-water {} bytes",
        cmd.is_bounced(),
        seen.len(),
        if seen == data { "all correct" } else { "WRONG" },
        st.bounced_bytes,
        st.high_water
    );
    cmd.complete()?;
    if seen != data {
        return Err(Error::Internal {
            what: "demo: bounced data differs",
        });
    }

    heading("DMA: a scattered buffer mapped through the IOMMU into one IO segment");
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x8000_0000, 0x1000_0000)?);
    let src_bytes: Vec<u8> = (0..48 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let src = Arc::new(BufferMemoryDescriptor::with_bytes(
        m.clone(),
        &src_bytes,
        Direction::Out,
    )?);
    let dst = Arc::new(BufferMemoryDescriptor::new(
        m.clone(),
        BufferOptions::new(48 * 1024, Direction::In),
    )?);
    flush_processor_cache(&**m, Task::KERNEL, src.address(), 48 * 1024)?;
    let mut runs = 0;
    let mut o = 0;
    while o < src.length() {
        o += src.physical_segment(o)?.len;
        runs += 1;
    }
    let spec = SegmentSpec::builder().address_bits(32).build()?;
    let mapped = |md: Arc<BufferMemoryDescriptor<Arc<Machine>>>| -> dmakit::Result<_> {
        let mode = MappingMode::Mapped(mapper.clone());
        let mut c = DmaCommand::builder(m.clone())
            .spec(spec)
            .format(SegmentFormat::Little64)
            .mode(mode)
            .build()?;
        c.set_memory_descriptor(md)?;
        c.prepare(PrepareOptions::range(0, 48 * 1024))?;
        Ok(c)
    };
    let mut cs = mapped(src.clone())?;
    let mut cd = mapped(dst.clone())?;
    let (ss, ds) = (io_segments(&cs)?, io_segments(&cd)?);
    crate::out::say!(
        "source: {runs} physical runs -> {} IO segment at {:#x} (+{:#x}); destination: {} IO segment at {:#x}",
        ss.len(),
        ss[0].addr.0,
        ss[0].len,
        ds.len(),
        ds[0].addr.0
    );

    heading("DMA: the engine copies between the two descriptors");
    let engine = Arc::new(SimDmaEngine::new(m.clone(), Some(iommu.clone()))?);
    let done = Arc::new(Mutex::new(Vec::new()));
    let d2 = done.clone();
    let es = Arc::new(DmaEventSource::new(
        engine.clone(),
        move |c: DmaCompletion| d2.lock().unwrap_or_else(|p| p.into_inner()).push(c),
    ));
    engine.connect(es.clone());
    let ticket = es.start(&DmaTransfer {
        source: &ss,
        dest: &ds,
    })?;
    let interrupts = es.pending_interrupts();
    es.poll();
    cd.complete()?;
    cs.complete()?;
    let mut back = vec![0u8; 48 * 1024];
    assert_eq!(dst.read_bytes(0, &mut back), back.len());
    let c = done.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
    let mut t = table(&["ticket", "bytes", "status", "interrupts", "destination"]);
    t.add_row(vec![
        ticket.to_string(),
        c.bytes.to_string(),
        format!("{:?}", c.status),
        interrupts.to_string(),
        if back == src_bytes {
            "matches the source"
        } else {
            "WRONG"
        }
        .to_string(),
    ]);
    crate::out::say!("{t}");
    let reg = |offset| mapped_read32(&**m, dmakit::PhysAddr(engine.registers().0 + offset));
    crate::out::say!(
        "engine: registers at {:#x}, descriptor ring at IO {:#x} (physical {:#x}); HEAD {}, TAIL {}, COMPLETED {}",
        engine.registers().0,
        engine.ring_address().0,
        engine.ring_physical().0,
        reg(regs::HEAD)?,
        reg(regs::TAIL)?,
        reg(regs::COMPLETED)?
    );
    crate::out::say!(
        "IOMMU: {} faults, {} IOTLB invalidations; IO space in use after complete: {:?}",
        iommu.faults().len(),
        iommu.invalidations(),
        mapper.usage()
    );
    if back != src_bytes {
        return Err(Error::Internal {
            what: "demo: the engine's copy differs",
        });
    }
    Ok(())
}

fn faults_and_misuse(m: &Machine) -> dmakit::Result<()> {
    heading("Fault injection and misuse: clear errors, nothing leaked");
    let heap = IoHeap::new(m);
    let mut t = table(&["what", "error", "free pages before → after"]);
    let before = m.stats().free_pages;
    m.inject(FaultSite::PhysAlloc, m.stats().site_calls[0] + 3);
    let e = io_malloc(&heap, 8 * m.page_size().bytes() as usize).unwrap_err();
    t.add_row(vec![
        "io_malloc(8 pages), 3rd page fails".to_string(),
        err_text(&e),
        format!("{before} → {}", m.stats().free_pages),
    ]);
    let a = io_malloc(&heap, 100)?;
    let e = io_free(&heap, a, 64).unwrap_err();
    t.add_row(vec![
        "io_free with the wrong size".to_string(),
        err_text(&e),
        "nothing freed".to_string(),
    ]);
    let e = io_free_pageable(&heap, a, 100).unwrap_err();
    t.add_row(vec![
        "io_free_pageable of an io_malloc block".to_string(),
        err_text(&e),
        "nothing freed".to_string(),
    ]);
    io_free(&heap, a, 100)?;
    let e = m
        .wire(Task::KERNEL, VirtAddr(0x1000), 4096, false)
        .unwrap_err();
    t.add_row(vec![
        "wire an address nothing maps".to_string(),
        err_text(&e),
        "nothing wired".to_string(),
    ]);
    crate::out::say!("{t}");
    Ok(())
}
