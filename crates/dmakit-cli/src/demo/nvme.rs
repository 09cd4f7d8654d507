//! `dmakit demo`, NVMe part: the portable driver (`dmakit-nvme`) on a simulated NVMe
//! controller plugged into the demo's machine through a simulated PCI bus, its DMA going
//! through an IOMMU domain of its own.
//!
//! The steps: Identify; a scattered write and read whose pieces meet at page boundaries
//! (PRP entries and lists made straight from the IOMMU's segments, checked against the
//! controller's store); a transfer whose pieces do not (it goes through the queue's bounce
//! pool); a fatal controller status with reads in flight, each failing with an error naming
//! it, and the reset the next command does. The demo's teardown then checks, with
//! [`Residue::check`], that the driver gave back every page, wiring and IO mapping, and
//! returns the counts for the demo's JSON report.
//!
//! Output goes to a writer and every write is checked: a closed stdout is an error here,
//! not a panic.

use super::{right, table};
use dmakit::descriptor::MemoryDescriptor;
use dmakit::device::{PciBus, PciFunction, PciMatch};
use dmakit::dma::BounceStats;
use dmakit::platform::PhysicalMemory;
use dmakit_nvme::suite;
use dmakit_nvme::{
    DmaBuffer, Done, IoQueue, NamespaceIdentity, Nvme, NvmeError, NvmeOptions, PollTimer,
    QueueOptions, Transfer,
};
use dmakit_sim::nvme::{SimNvme, NVME_CLASS};
use dmakit_sim::pci::{DmaMode, DomainMapper, FunctionConfig, SimPciBus};
use dmakit_sim::{Machine, SimIommu};
use std::fmt::Display;
use std::io::Write;
use std::sync::Arc;

type M = Arc<Machine>;

/// Where the scattered data goes on the namespace (1 MiB in with 512-byte blocks).
const SCATTERED_LBA: u64 = 2048;
/// Where the bounced data goes.
const BOUNCED_LBA: u64 = 4096;
/// Bytes of the scattered transfer: a mid-page head, then whole pages.
const SCATTERED_BYTES: u64 = 96 << 10;
/// Bytes of the bounced transfer.
const BOUNCED_BYTES: u64 = 8 << 10;
/// Reads queued when the controller fails.
const QUEUED_READS: u64 = 3;

/// An error of step `what`, as the demo reports it.
fn ctx<E: Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("NVMe demo, {what}: {e}")
}

fn io_err(e: std::io::Error) -> String {
    format!("writing the demo's output: {e}")
}

fn heading(out: &mut dyn Write, s: &str) -> Result<(), String> {
    writeln!(out, "\n== {s}").map_err(io_err)
}

/// What the driver could leak on the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Usage {
    pages_in_use: u64,
    wired_pages: u64,
    allocations: u64,
}

fn usage(m: &Machine) -> Usage {
    let s = m.stats();
    Usage {
        pages_in_use: s.used_pages(),
        wired_pages: s.wired_pages,
        allocations: s.allocations,
    }
}

/// What the NVMe part leaves for the demo's teardown: the machine's usage before it
/// started, and the controller (its function's IOMMU domain) to look at afterwards.
pub struct Residue {
    start: Usage,
    mapper: Arc<DomainMapper>,
    _controller: SimNvme,
    _bus: SimPciBus,
}

impl Residue {
    /// Prints what the machine and the NVMe function's IOMMU domain hold now against the
    /// start of the NVMe part, and returns the counts; an error if anything was not given
    /// back.
    pub fn check(&self, m: &Machine, out: &mut dyn Write) -> Result<Vec<Count>, String> {
        let now = usage(m);
        let (live, entries) = self.mapper.usage();
        let counts = [
            ("pages in use", self.start.pages_in_use, now.pages_in_use),
            ("wired pages", self.start.wired_pages, now.wired_pages),
            ("allocations", self.start.allocations, now.allocations),
            ("IO allocations (the function's mapper)", 0, live as u64),
            (
                "IO page mappings (the function's mapper)",
                0,
                entries as u64,
            ),
        ]
        .map(|(what, at_start, now)| Count {
            what,
            at_start,
            now,
        });
        let mut t = table(&["NVMe part", "at its start", "now"]);
        for c in &counts {
            t.add_row(vec![
                c.what.to_string(),
                c.at_start.to_string(),
                c.now.to_string(),
            ]);
        }
        right(&mut t, &[1, 2]);
        writeln!(out, "{t}").map_err(io_err)?;
        if now != self.start || live != 0 || entries != 0 {
            return Err(format!(
                "the NVMe part leaked: machine {:?} at its start, {now:?} now; IO mappings ({live}, {entries})",
                self.start
            ));
        }
        Ok(counts.to_vec())
    }
}

/// One count of the NVMe part's leak check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Count {
    /// What is counted.
    pub what: &'static str,
    /// At the NVMe part's start.
    pub at_start: u64,
    /// After it.
    pub now: u64,
}

/// Runs the NVMe steps on `m`; `seed` seeds the controller.
pub fn run(m: &M, seed: u64, out: &mut dyn Write) -> Result<Residue, String> {
    let start = usage(m);
    let bus = SimPciBus::new(m.clone()).map_err(ctx("simulated PCI bus"))?;
    let controller = SimNvme::builder()
        .seed(seed)
        .function(FunctionConfig::new().dma(DmaMode::DEFAULT_IOMMU))
        .attach(&bus)
        .map_err(ctx("simulated controller"))?;
    let function = bus
        .find(&PciMatch::class(NVME_CLASS))
        .map_err(ctx("finding the controller on the bus"))?;
    let mapper = controller
        .function()
        .mapper()
        .ok_or("NVMe demo: the controller's function has no IOMMU domain")?;
    let iommu = controller
        .function()
        .iommu()
        .ok_or("NVMe demo: the controller's function has no IOMMU")?;
    let residue = Residue {
        start,
        mapper: mapper.clone(),
        _controller: controller.clone(),
        _bus: bus,
    };
    {
        // The simulated controller advances with every register access; each poll counts
        // as a microsecond, so a command that never completes fails after 100 ms of polls.
        let options = NvmeOptions::new().command_timeout_ms(100);
        let timer = Arc::new(PollTimer::new(1_000));
        let nvme = Nvme::new(m.clone(), function.clone(), timer, options)
            .map_err(ctx("bringing the controller up"))?;
        let ns = nvme.namespace(1).map_err(ctx("Identify Namespace 1"))?;
        identify(&nvme, &ns, &*function, &mapper, options, out)?;
        let mut q = nvme
            .io_queue(QueueOptions::new(16))
            .map_err(ctx("creating an I/O queue pair"))?;
        let rig = Rig {
            m,
            controller: &controller,
            mapper: &mapper,
            iommu: &iommu,
            ns,
        };
        let written = scattered(&rig, &mut q, seed, out)?;
        bounced(&rig, &mut q, seed, out)?;
        fatal(&rig, &nvme, &mut q, &written, out)?;
        // The queue pair is deleted, then the controller disabled and its memory given back.
    }
    Ok(residue)
}

/// What every step uses.
struct Rig<'a> {
    m: &'a M,
    controller: &'a SimNvme,
    mapper: &'a DomainMapper,
    iommu: &'a SimIommu,
    ns: NamespaceIdentity,
}

impl Rig<'_> {
    /// Checks the controller's store at `lba` against `data`.
    fn stored(&self, lba: u64, data: &[u8]) -> Result<(), String> {
        let at = lba
            .checked_mul(self.ns.block_size as u64)
            .ok_or("NVMe demo: LBA overflow")?;
        let stored = self
            .controller
            .namespace_bytes(self.ns.nsid, at, data.len())
            .map_err(ctx("the controller's store"))?;
        suite::same("NVMe demo, the controller's store", &stored, data)
    }

    fn mappings(&self) -> String {
        let (live, entries) = self.mapper.usage();
        format!("{live} allocations, {entries} pages")
    }
}

fn identify(
    nvme: &Nvme<M>,
    ns: &NamespaceIdentity,
    function: &dyn PciFunction,
    mapper: &DomainMapper,
    options: NvmeOptions,
    out: &mut dyn Write,
) -> Result<(), String> {
    heading(
        out,
        "NVMe: the portable driver brings up a simulated controller (Identify)",
    )?;
    let id = nvme.identity();
    let vs = nvme.version().map_err(ctx("reading VS"))?;
    let mt = nvme.max_transfer();
    let bytes = ns.blocks.saturating_mul(ns.block_size as u64);
    let mdts = match id.mdts {
        0 => "0 (no limit)".to_string(),
        d => format!("{d} (2^{d} pages of 4 KiB)"),
    };
    let mut t = table(&["field", "value"]);
    let (base, len) = mapper.window();
    for (field, value) in [
        (
            "PCI function",
            format!("{} (class 01:08:02)", function.address()),
        ),
        (
            "DMA",
            format!(
                "through its own IOMMU domain, IO window {:#x}+{len:#x}",
                base.0
            ),
        ),
        ("serial", id.serial.clone()),
        ("model", id.model.clone()),
        ("firmware", id.firmware.clone()),
        ("version", format!("{}.{}", vs >> 16, vs >> 8 & 0xff)),
        ("MDTS", mdts),
        (
            "max transfer",
            format!("{mt} bytes ({} KiB) per command", mt >> 10),
        ),
        (
            "namespace 1",
            format!(
                "{} blocks of {} bytes ({} MiB)",
                ns.blocks,
                ns.block_size,
                bytes >> 20
            ),
        ),
        (
            "I/O queue pairs",
            format!(
                "{} granted (asked for {})",
                nvme.io_queue_limit(),
                options.io_queues
            ),
        ),
        (
            "admin commands so far",
            nvme.stats().admin_commands.to_string(),
        ),
    ] {
        t.add_row(vec![field.to_string(), value]);
    }
    writeln!(out, "{t}").map_err(io_err)?;
    Ok(())
}

/// One row of a transfer table.
fn transfer_row(what: &str, bytes: u64, t: &Transfer, check: &str) -> Vec<String> {
    vec![
        what.to_string(),
        bytes.to_string(),
        t.commands.to_string(),
        t.prp_entries.to_string(),
        t.list_pages.to_string(),
        t.bounced.to_string(),
        check.to_string(),
    ]
}

const TRANSFER_HEADER: [&str; 7] = [
    "",
    "bytes",
    "commands",
    "PRP entries",
    "PRP list pages",
    "bounced",
    "check",
];

fn contents(md: &Arc<dyn MemoryDescriptor>) -> Result<Vec<u8>, String> {
    let len = usize::try_from(md.length()).map_err(ctx("descriptor length"))?;
    let mut got = vec![0u8; len];
    let n = md.read_bytes(0, &mut got);
    if n != got.len() {
        return Err(format!("NVMe demo: read {n} of {len} bytes back"));
    }
    Ok(got)
}

fn fill(md: &Arc<dyn MemoryDescriptor>, data: &[u8]) -> Result<(), String> {
    let n = md.write_bytes(0, data);
    if n != data.len() {
        return Err(format!("NVMe demo: filled {n} of {} bytes", data.len()));
    }
    Ok(())
}

/// Writes `data` from a descriptor of `parts` at `lba`, checks the controller's store,
/// reads it back into one of `dst_parts`, compares, and prints the two transfers' table.
#[allow(clippy::too_many_arguments)]
fn round_trip(
    r: &Rig<'_>,
    q: &mut IoQueue<M>,
    lba: u64,
    parts: &[(u64, u64)],
    dst_parts: &[(u64, u64)],
    data: &[u8],
    what: &str,
    out: &mut dyn Write,
) -> Result<(Transfer, Transfer), String> {
    let total = data.len() as u64;
    let src = suite::scattered(r.m, parts).map_err(ctx("source descriptor"))?;
    let dst = suite::scattered(r.m, dst_parts).map_err(ctx("destination descriptor"))?;
    fill(&src, data)?;
    let w = q
        .write(&r.ns, lba, &src, 0, total)
        .map_err(|e| format!("NVMe demo, {what} write: {e}"))?;
    r.stored(lba, data)?;
    let rd = q
        .read(&r.ns, lba, &dst, 0, total)
        .map_err(|e| format!("NVMe demo, {what} read: {e}"))?;
    suite::same(
        &format!("NVMe demo, {what} read back"),
        &contents(&dst)?,
        data,
    )?;
    let mut t = table(&TRANSFER_HEADER);
    t.add_row(transfer_row(
        &format!("write from {}", pieces_text(parts)),
        total,
        &w,
        "the controller's store matches",
    ));
    t.add_row(transfer_row(
        &format!("read into {}", pieces_text(dst_parts)),
        total,
        &rd,
        "byte-exact",
    ));
    right(&mut t, &[1, 2, 3, 4, 5]);
    writeln!(out, "{t}").map_err(io_err)?;
    Ok((w, rd))
}

/// Pieces that meet at page boundaries: written and read back with PRP entries and a PRP
/// list straight from the IOMMU's segments, nothing bounced. Returns the data written (at
/// [`SCATTERED_LBA`]).
fn scattered(
    r: &Rig<'_>,
    q: &mut IoQueue<M>,
    seed: u64,
    out: &mut dyn Write,
) -> Result<Vec<u8>, String> {
    heading(
        out,
        "NVMe: a scattered write and read through the IOMMU (pieces meet at page boundaries)",
    )?;
    let total = SCATTERED_BYTES;
    // A head that starts mid-page and ends where its page ends, then whole pages. The
    // IOMMU maps the machine's pages into one run of IO addresses, so the pieces must meet
    // at the machine's page boundaries (4 KiB, or 16 KiB), not only at NVMe's 4 KiB ones.
    let page = r.m.page_size().bytes();
    let head = page - 512;
    let middle = 32 << 10;
    let parts = [(head, 512), (middle, 0), (total - head - middle, 0)];
    let dst_parts = [(total / 3, 0), (total - total / 3, 0)];
    let data = suite::pattern(seed, total as usize);
    let mappings_before = r.mappings();
    let bounce_before = q.bounce_stats();
    let (w, rd) = round_trip(
        r,
        q,
        SCATTERED_LBA,
        &parts,
        &dst_parts,
        &data,
        "scattered",
        out,
    )?;
    let bounce = q.bounce_stats();
    writeln!(
        out,
        "at LBA {SCATTERED_LBA}; the first source piece starts 512 bytes into a {} KiB page and \
         ends where the page ends, the others start on page boundaries: one PRP entry per 4 KiB, \
         no copy",
        page >> 10
    )
    .map_err(io_err)?;
    writeln!(
        out,
        "IO mappings (function's mapper): {mappings_before} before the write, {} after the read \
         (the data's are unmapped again; the queues and {} PRP list page(s) kept for reuse stay)",
        r.mappings(),
        q.stats().list_pages
    )
    .map_err(io_err)?;
    let copied = bounce
        .bounced_bytes
        .saturating_sub(bounce_before.bounced_bytes);
    writeln!(
        out,
        "IOMMU: {} faults, {} IOTLB invalidations; bounce pool: {copied} bytes copied, nothing bounced",
        r.iommu.fault_count(),
        r.iommu.invalidations(),
    )
    .map_err(io_err)?;
    if w.bounced != 0 || rd.bounced != 0 || copied != 0 {
        return Err(format!(
            "NVMe demo: the scattered transfer bounced: write {w:?}, read {rd:?}"
        ));
    }
    Ok(data)
}

/// Pieces that do not meet at page boundaries: PRP entries cannot describe them, so every
/// command goes through the queue's bounce pool.
fn bounced(r: &Rig<'_>, q: &mut IoQueue<M>, seed: u64, out: &mut dyn Write) -> Result<(), String> {
    heading(
        out,
        "NVMe: pieces that do not meet at page boundaries go through the bounce pool",
    )?;
    let total = BOUNCED_BYTES;
    let parts = [(1000, 24), (total - 1000 - 300, 100), (300, 7)];
    let dst_parts = [(total - 999, 3), (999, 1)];
    let data = suite::pattern(seed.wrapping_add(1), total as usize);
    let before = q.bounce_stats();
    let (w, rd) = round_trip(r, q, BOUNCED_LBA, &parts, &dst_parts, &data, "bounced", out)?;
    let after = q.bounce_stats();
    writeln!(
        out,
        "at LBA {BOUNCED_LBA}; the pieces start {} bytes into their buffers and end mid-page",
        offsets_text(&parts)
    )
    .map_err(io_err)?;
    writeln!(out, "{}", bounce_text(&before, &after)).map_err(io_err)?;
    if w.bounced != w.commands || rd.bounced != rd.commands || after.in_use != 0 {
        return Err(format!(
            "NVMe demo: expected every command bounced and the pool empty: write {w:?}, read {rd:?}, pool {after:?}"
        ));
    }
    Ok(())
}

/// `a + b + c` of the pieces' lengths.
fn pieces_text(parts: &[(u64, u64)]) -> String {
    let lens: Vec<String> = parts.iter().map(|(len, _)| len.to_string()).collect();
    lens.join(" + ")
}

/// `a, b and c` of the pieces' offsets in their buffers.
fn offsets_text(parts: &[(u64, u64)]) -> String {
    let offs: Vec<String> = parts.iter().map(|(_, off)| off.to_string()).collect();
    match offs.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => offs.join(""),
    }
}

fn bounce_text(before: &BounceStats, after: &BounceStats) -> String {
    format!(
        "bounce pool: {} bytes copied, {} buffers handed out, high-water {} bytes, {} bytes in use now",
        after.bounced_bytes.saturating_sub(before.bounced_bytes),
        after.buffers.saturating_sub(before.buffers),
        after.high_water,
        after.in_use
    )
}

/// Reads in flight when the controller reports a fatal status: each fails with an error
/// naming it; the next command resets the controller, and the data written before is
/// still there.
fn fatal(
    r: &Rig<'_>,
    nvme: &Nvme<M>,
    q: &mut IoQueue<M>,
    written: &[u8],
    out: &mut dyn Write,
) -> Result<(), String> {
    heading(
        out,
        "NVMe: a fatal controller status with reads in flight, and the recovery",
    )?;
    let view = nvme.dma_view();
    let bufs = (0..QUEUED_READS)
        .map(|_| DmaBuffer::new(r.m, &view, 4096))
        .collect::<dmakit::Result<Vec<_>>>()
        .map_err(ctx("pre-mapped buffers"))?;
    let cids = queue_held_reads(r, q, &bufs)?;
    let (pending, done) = fail_in_flight(r, q, cids.len())?;
    writeln!(
        out,
        "{} reads of pre-mapped buffers queued and rung ({pending} in flight at the controller), \
         then the controller sets CSTS.CFS: {}",
        cids.len(),
        r.controller.fatal_reason().unwrap_or("?")
    )
    .map_err(io_err)?;
    report_failures(q, &cids, &done, out)?;
    recover(r, nvme, q, written, bufs, out)
}

/// Queues a 4 KiB read into each of `bufs` on a controller told to hold them (so they are
/// in flight when it fails); their command identifiers.
fn queue_held_reads(
    r: &Rig<'_>,
    q: &mut IoQueue<M>,
    bufs: &[DmaBuffer<M>],
) -> Result<Vec<u16>, String> {
    let bpp = 4096 / r.ns.block_size as u64;
    r.controller.set_completion_delay(u32::MAX);
    let mut cids = Vec::new();
    for (i, b) in (0u64..).zip(bufs) {
        let cid = q
            .submit_read(&r.ns, SCATTERED_LBA + i * bpp, b, 0, 4096)
            .map_err(ctx("queueing a read"));
        match cid {
            Ok(c) => cids.push(c),
            Err(e) => {
                r.controller.set_completion_delay(0);
                return Err(e);
            }
        }
    }
    Ok(cids)
}

/// Rings the doorbell, has the controller report a fatal status with the reads in flight,
/// and collects up to `count` completions; how many the controller held, and the
/// completions.
fn fail_in_flight(
    r: &Rig<'_>,
    q: &mut IoQueue<M>,
    count: usize,
) -> Result<(u64, Vec<Done>), String> {
    let rung = q.ring().map_err(ctx("ringing the doorbell"));
    let pending = r.controller.stats().pending;
    r.controller.raise_fatal();
    r.controller.set_completion_delay(0);
    rung?;
    let mut done = Vec::new();
    while done.len() < count {
        let n = q
            .wait_completions(true, |d| done.push(d))
            .map_err(ctx("waiting for the reads"))?;
        if n == 0 {
            break;
        }
    }
    Ok((pending, done))
}

/// Prints every failed read with its error, and checks each of `cids` failed with a
/// fatal-status error naming its queue and command.
fn report_failures(
    q: &IoQueue<M>,
    cids: &[u16],
    done: &[Done],
    out: &mut dyn Write,
) -> Result<(), String> {
    let mut t = table(&["command", "error (names the command)", "IOKit"]);
    let mut named = 0;
    for d in done {
        let Err(e) = &d.result else {
            return Err(format!(
                "NVMe demo: read {} completed although the controller failed",
                d.cid
            ));
        };
        if matches!(e, NvmeError::ControllerFatal { qid, cid, .. } if *qid == q.id() && *cid == d.cid)
            && cids.contains(&d.cid)
        {
            named += 1;
        }
        t.add_row(vec![
            d.cid.to_string(),
            e.to_string(),
            e.io_return().name().to_string(),
        ]);
    }
    writeln!(out, "{t}").map_err(io_err)?;
    if named != cids.len() {
        return Err(format!(
            "NVMe demo: {named} of {} reads failed with a fatal-status error naming them",
            cids.len()
        ));
    }
    Ok(())
}

/// The next command resets the controller and creates the queue pair on it again: reads
/// `written` back byte-exact, then prints and checks what the recovery did (one recovery,
/// generation 1, the queue pair re-created once). `bufs`, the failed reads' buffers, are
/// dropped after the read-back.
fn recover(
    r: &Rig<'_>,
    nvme: &Nvme<M>,
    q: &mut IoQueue<M>,
    written: &[u8],
    bufs: Vec<DmaBuffer<M>>,
    out: &mut dyn Write,
) -> Result<(), String> {
    let fatal_now = nvme.fatal_status().map_err(ctx("reading CSTS"))?;
    let held = nvme.stats().held_for_reset;
    let back = suite::buffer(r.m, written.len() as u64).map_err(ctx("read-back buffer"))?;
    let rd = q
        .read(&r.ns, SCATTERED_LBA, &back, 0, written.len() as u64)
        .map_err(ctx("the read after the fatal status"))?;
    let got = contents(&back)?;
    suite::same("NVMe demo, read back after recovery", &got, written)?;
    drop(bufs);
    let s = nvme.stats();
    let qs = q.stats();
    let mut t = table(&["after the fatal status", "value"]);
    for (what, value) in [
        (
            "fatal status (CSTS.CFS) before the next command",
            fatal_now.to_string(),
        ),
        (
            "commands whose memory was held until the reset",
            held.to_string(),
        ),
        (
            "controller recoveries (nvme.stats().recoveries)",
            s.recoveries.to_string(),
        ),
        ("generation", nvme.generation().to_string()),
        (
            "queue pair re-created (q.stats().recreated)",
            qs.recreated.to_string(),
        ),
        (
            "fatal status now",
            nvme.fatal_status()
                .map_err(ctx("reading CSTS"))?
                .to_string(),
        ),
        (
            "read after recovery",
            format!(
                "{} bytes at LBA {SCATTERED_LBA} in {} command(s), byte-exact",
                written.len(),
                rd.commands
            ),
        ),
    ] {
        t.add_row(vec![what.to_string(), value]);
    }
    writeln!(out, "{t}").map_err(io_err)?;
    if s.recoveries != 1 || nvme.generation() != 1 || qs.recreated != 1 {
        return Err(format!(
            "NVMe demo: expected one recovery: {s:?}, generation {}, {qs:?}",
            nvme.generation()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmakit_sim::MachineBuilder;

    /// A writer whose reader went away (a closed pipe) after `left` writes.
    struct Closed {
        left: usize,
    }

    impl Write for Closed {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.left -= 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_output_is_an_error_at_every_step_and_nothing_is_left_behind() {
        let mut full = 0;
        // Fail each write in turn: the first ones end the Identify step, the last ones the
        // recovery step; every failure comes back as an error. A fresh machine each time:
        // the simulated bus keeps its window in the machine's physical address space.
        for left in 0.. {
            let m: M = Arc::new(MachineBuilder::new().seed(3).build().unwrap());
            let start = usage(&m);
            match run(&m, 3, &mut Closed { left }) {
                Err(e) => assert!(e.contains("writing the demo's output"), "{e}"),
                Ok(residue) => {
                    residue.check(&m, &mut Vec::new()).unwrap();
                    full = left;
                    break;
                }
            }
            assert_eq!(usage(&m), start, "after {left} writes");
        }
        assert!(full >= 10, "the steps wrote only {full} times");
    }

    #[test]
    fn the_teardown_check_fails_when_something_is_still_held() {
        let m: M = Arc::new(MachineBuilder::new().seed(4).build().unwrap());
        let residue = run(&m, 4, &mut Vec::new()).unwrap();
        let held = suite::buffer(&m, 4096).unwrap();
        let mut out = Vec::new();
        let e = residue.check(&m, &mut out).unwrap_err();
        assert!(e.contains("leaked"), "{e}");
        drop(held);
        residue.check(&m, &mut out).unwrap();
    }
}
