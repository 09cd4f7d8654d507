//! The demo's CPU-side step: a non-coherent cache (the device sees the CPU's write only
//! after a clean) and mapped I/O to the scratch device.

use super::record::Record;
use super::{heading, table, MMIO_BASE};
use crate::out::say;
use dmakit::platform::{
    collect_runs, CacheOp, CacheOps, CpuAccess, Mmio, PageRequest, PhysicalMemory, Task, Width,
};
use dmakit::PhysAddr;
use dmakit_sim::Machine;
use std::io::Write;

/// What the device reads before and after a cache clean, then the scratch device's
/// registers.
pub fn cache_and_mmio(m: &Machine, out: &mut dyn Write, rec: &mut Record) -> dmakit::Result<()> {
    heading(out, "Non-coherent caches and mapped I/O");
    let k = Task::KERNEL;
    let page = m.page_size().bytes();
    let va = m.allocate_pages(page, &PageRequest::WIRED)?;
    let runs = collect_runs(m, k, va, page)?;
    rec.place("one wired page for the cache step", &runs);
    let pa = runs.first().ok_or(dmakit::Error::Internal {
        what: "demo: a wired page has no physical run",
    })?;
    let pa = pa.addr;
    let mut t = table(&["step", "device reads at physical", "bytes"]);
    m.write_virt(k, va, b"new data")?;
    let mut seen = [0u8; 8];
    m.device_read(pa, &mut seen)?;
    t.add_row([
        "CPU writes \"new data\"".to_string(),
        format!("{:#x}", pa.0),
        format!("{seen:02x?}"),
    ]);
    m.cache_virt(CacheOp::Clean, k, va, 8)?;
    m.device_read(pa, &mut seen)?;
    t.add_row([
        "after cache clean".to_string(),
        format!("{:#x}", pa.0),
        format!("{:?}", String::from_utf8_lossy(&seen)),
    ]);
    say!(out, "{t}");
    m.free_pages(va, page)?;
    let id = m.mmio_read(PhysAddr(MMIO_BASE), Width::W32)?;
    m.mmio_write(PhysAddr(MMIO_BASE + 8), Width::W64, 0xC0FF_EE00_1234_5678)?;
    let back = m.mmio_read(PhysAddr(MMIO_BASE + 8), Width::W64)?;
    say!(
        out,
        "MMIO at {MMIO_BASE:#x}: device id {id:#010x}; wrote and read back {back:#018x} at +8"
    );
    Ok(())
}
