//! The demo's memory steps: the IOMalloc family, a physically constrained allocation, and
//! a multi descriptor's physical segments; each allocation is recorded where it landed.

use super::record::Record;
use super::{heading, right, runs_text, table};
use crate::out::say;
use dmakit::alloc::{
    io_free, io_free_aligned, io_free_pageable, io_malloc, io_malloc_aligned, io_malloc_pageable,
    IoHeap,
};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
};
use dmakit::platform::{collect_runs, PageRequest, PhysicalMemory, Task, Wiring};
use dmakit::{Direction, Error, PhysAddr, PhysRange};
use dmakit_sim::Machine;
use std::io::Write;
use std::sync::Arc;

/// io_malloc, io_malloc_aligned and io_malloc_pageable: what each gave and where.
pub fn io_malloc_family(m: &Machine, out: &mut dyn Write, rec: &mut Record) -> dmakit::Result<()> {
    heading(
        out,
        "IOMalloc family: what was allocated and where it landed",
    );
    let heap = IoHeap::new(m);
    let k = Task::KERNEL;
    let mut t = table(&["call", "size", "kernel virtual", "physical runs", "note"]);
    let small = io_malloc(&heap, 100)?;
    let runs = collect_runs(m, k, small, 100)?;
    rec.place("io_malloc(100): a 128-byte zone element", &runs);
    t.add_row([
        "io_malloc",
        "100",
        &hex(small.0),
        &runs_text(&runs),
        "128-byte zone element, wired",
    ]);
    let buf = io_malloc(&heap, 64 << 10)?;
    let runs = collect_runs(m, k, buf, 64 << 10)?;
    rec.place(
        format!("io_malloc(64 KiB): {} physical runs", runs.len()),
        &runs,
    );
    let note = format!("whole pages, wired; {} physical runs", runs.len());
    t.add_row(["io_malloc", "65536", &hex(buf.0), &runs_text(&runs), &note]);
    let al = io_malloc_aligned(&heap, 5000, 1 << 16)?;
    let runs = collect_runs(m, k, al, 5000)?;
    rec.place("io_malloc_aligned(5000, 64 KiB)", &runs);
    t.add_row([
        "io_malloc_aligned",
        "5000",
        &hex(al.0),
        &runs_text(&runs),
        "64 KiB aligned virtual address",
    ]);
    let pg = io_malloc_pageable(&heap, 12 << 10, 0)?;
    let before = match collect_runs(m, k, pg, 12 << 10) {
        Ok(r) => runs_text(&r),
        Err(e) => format!("none: {}", e.io_return().name()),
    };
    t.add_row([
        "io_malloc_pageable",
        "12288",
        &hex(pg.0),
        &before,
        "pageable: no physical pages until wired",
    ]);
    m.wire(k, pg, 12 << 10, true)?;
    let runs = collect_runs(m, k, pg, 12 << 10)?;
    rec.place("io_malloc_pageable(12 KiB), once wired", &runs);
    t.add_row([
        "  …after wire()",
        "",
        "",
        &runs_text(&runs),
        "wired: pages present, translation stable",
    ]);
    right(&mut t, &[1]);
    say!(out, "{t}");
    m.unwire(k, pg, 12 << 10)?;
    io_free(&heap, small, 100)?;
    io_free(&heap, buf, 64 << 10)?;
    io_free_aligned(&heap, al, 5000)?;
    io_free_pageable(&heap, pg, 12 << 10)?;
    say!(out, "all freed with their sizes; heap: {:?}", heap.stats());
    Ok(())
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// A 32-bit device's contiguous buffer next to an unconstrained one.
pub fn constrained(m: &Machine, out: &mut dyn Write, rec: &mut Record) -> dmakit::Result<()> {
    heading(
        out,
        "Physical constraints: a 32-bit device's contiguous buffer",
    );
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
        let short = if req.contiguous {
            "allocate_pages: 32 KiB contiguous below 4 GiB"
        } else {
            "allocate_pages: 32 KiB anywhere"
        };
        rec.place(short, &runs);
        let top = runs.iter().map(|r| r.addr.0 + r.len - 1).max().unwrap_or(0);
        t.add_row(vec![
            label.to_string(),
            hex(va.0),
            runs_text(&runs),
            hex(top),
        ]);
        m.free_pages(va, 32 << 10)?;
    }
    say!(out, "{t}");
    Ok(())
}

/// The physical segments of `md`, in order.
pub fn segments(md: &dyn MemoryDescriptor) -> dmakit::Result<Vec<PhysRange>> {
    let mut segs = Vec::new();
    let mut off = 0;
    while off < md.length() {
        let s = md.physical_segment(off)?;
        off += s.len;
        segs.push(PhysRange {
            addr: PhysAddr(s.addr.0),
            len: s.len,
        });
    }
    Ok(segs)
}

/// Three descriptors as one, and the physical segments of the whole.
pub fn multi_descriptor(
    m: &Arc<Machine>,
    out: &mut dyn Write,
    rec: &mut Record,
) -> dmakit::Result<()> {
    heading(out, "A multi descriptor and its physical segments");
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
    let names = ["contiguous, below 4 GiB", "scattered", "with_bytes"];
    let multi = MultiMemoryDescriptor::new(parts.clone(), Direction::Out)?;
    let md: &dyn MemoryDescriptor = &multi;
    let prepared = md.prepare(Direction::Out)?;
    for (i, (part, name)) in parts.iter().zip(names).enumerate() {
        let size = crate::size::human(part.length());
        let label = format!("multi descriptor part {}: {name}, {size}", i + 1);
        rec.place(label, &segments(part.as_ref())?);
    }
    let mut t = table(&["offset", "physical address", "bytes", "part"]);
    let mut off = 0;
    for s in segments(md)? {
        let part = match off {
            o if o < 12 << 10 => names[0],
            o if o < 32 << 10 => names[1],
            _ => names[2],
        };
        t.add_row(vec![
            hex(off),
            hex(s.addr.0),
            s.len.to_string(),
            part.to_string(),
        ]);
        off += s.len;
    }
    right(&mut t, &[0, 2]);
    say!(out, "{t}");
    let mut tail = [0u8; 20];
    if md.read_bytes(md.length() - 20, &mut tail) != tail.len() {
        return Err(Error::Internal {
            what: "demo: the multi descriptor's tail could not be read",
        });
    }
    say!(
        out,
        "{} bytes in 3 parts; the last 20 read through the multi descriptor: {:?}",
        md.length(),
        String::from_utf8_lossy(&tail)
    );
    prepared.complete()?;
    Ok(())
}
