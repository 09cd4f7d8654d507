//! `dmakit demo`: a short scenario on the simulated machine, printed as tables (or, with
//! `--json`, as one JSON document), and drawn with `--svg`.
//!
//! It builds the default hostile machine (fragmented RAM with holes and a region above
//! 4 GiB, non-coherent caches) and shows, step by step, what the IOMalloc family allocated
//! and where it landed physically ([`memory`]), an IO address space carved by
//! `RangeAllocator` ([`io_space`]), the cache model and mapped I/O to a device model
//! ([`cpu`]), DMA: a 32-bit device bounced below 4 GiB, a scattered buffer mapped through
//! the IOMMU into one IO segment, and the DMA engine copying between two descriptors
//! ([`dma`]), what fault injection and misuse produce ([`faults`]), then the portable NVMe
//! driver on a simulated controller ([`nvme`]), and a teardown that checks everything was
//! given back. [`record`] keeps what the steps saw for `--json` and `--svg`.

mod cpu;
mod dma;
mod faults;
mod io_space;
mod memory;
pub mod nvme;
mod record;

use crate::exit::Failure;
use crate::out::{say, say_part, Out};
use crate::output_file::OutputFile;
use crate::picture;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use dmakit::{Error, PageSize, PhysRange};
use dmakit_sim::{Machine, MachineBuilder, ScratchDevice};
use record::{Record, Report, Teardown};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where the demo's scratch device answers.
const MMIO_BASE: u64 = 0xFEB0_0000;

/// What `dmakit demo` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// The machine's seed.
    pub seed: u64,
    /// Its page size in bytes (checked by the argument parser).
    pub page_size: u64,
    /// JSON on standard output instead of the tables.
    pub json: bool,
    /// Where to draw the memory picture.
    pub svg: Option<PathBuf>,
}

/// Runs the demo as `o` says.
pub fn run(o: &Options) -> Result<(), Failure> {
    let svg = o
        .svg
        .as_deref()
        .map(|p| OutputFile::open(p, "--svg", false))
        .transpose()?;
    let (mut text, mut sink) = (Out, std::io::sink());
    let out: &mut dyn Write = if o.json { &mut sink } else { &mut text };
    let report = scenario(o.seed, o.page_size, out)?;
    if o.json {
        crate::out::json(&report)?;
    }
    if let Some(f) = svg {
        let path = f.path().display().to_string();
        f.write(&picture::to_string(&picture::map::document(
            &report.picture,
        )))?;
        say!(out, "\nthe memory picture: {path}");
    }
    Ok(())
}

fn machine(seed: u64, page_size: u64) -> Result<Arc<Machine>, String> {
    let page = PageSize::new(page_size).map_err(|e| e.to_string())?;
    let device = Arc::new(Mutex::new(ScratchDevice::new(0xD0A7_0001, 0x100)));
    let m = MachineBuilder::new()
        .seed(seed)
        .page_size(page)
        .mmio(MMIO_BASE, 0x1000, device)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(m))
}

/// The steps, in order; the report of what they saw.
fn scenario(seed: u64, page_size: u64, out: &mut dyn Write) -> Result<Report, String> {
    let m = machine(seed, page_size)?;
    say!(out, "dmakit demo: a simulated machine (seed {seed})");
    heading(out, "The machine");
    say_part!(out, "{}", m.layout());
    let mut rec = Record::default();
    let e = |e: Error| e.to_string();
    memory::io_malloc_family(&m, out, &mut rec).map_err(e)?;
    memory::constrained(&m, out, &mut rec).map_err(e)?;
    memory::multi_descriptor(&m, out, &mut rec).map_err(e)?;
    io_space::carve(out, &mut rec).map_err(e)?;
    cpu::cache_and_mmio(&m, out, &mut rec).map_err(e)?;
    dma::bounced(seed, out, &mut rec).map_err(e)?;
    dma::mapped_copy(&m, out, &mut rec).map_err(e)?;
    faults::faults_and_misuse(&m, out).map_err(e)?;
    let nvme = nvme::run(&m, seed, out)?;
    // Taken while the NVMe controller is still on the bus, so its windows are drawn.
    let layout = m.layout();
    let teardown = teardown(&m, out);
    let counts = nvme.check(&m, out)?;
    if teardown.allocations_live != 0 || teardown.free_pages != teardown.ram_pages {
        return Err("the demo leaked memory on the simulated machine".into());
    }
    Ok(Report::new(&layout, rec, counts, teardown))
}

fn teardown(m: &Machine, out: &mut dyn Write) -> Teardown {
    let s = m.stats();
    heading(out, "Teardown");
    say!(
        out,
        "allocations live: {}, wired pages: {}, free pages: {} of {}",
        s.allocations,
        s.wired_pages,
        s.free_pages,
        s.ram_pages
    );
    Teardown {
        allocations_live: s.allocations,
        wired_pages: s.wired_pages,
        free_pages: s.free_pages,
        ram_pages: s.ram_pages,
    }
}

/// A table with `header`, in the demo's style.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.iter().map(Cell::new));
    t
}

/// Right-aligns columns `cols` of `t`.
pub(crate) fn right(t: &mut Table, cols: &[usize]) {
    for &c in cols {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// The first runs as `addr+len` lines, and how many in all.
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

fn heading(out: &mut dyn Write, s: &str) {
    say!(out, "\n== {s}");
}
