//! The driver's tests, written once against the seams and run on every machine: `cargo
//! test` runs them on the simulated controller (every hostile knob), the QEMU guest runs
//! them over VFIO, a kernel can run them on its own hardware.
//!
//! A machine implements [`TestMachine`]: the platform, the NVMe function, a timer, and
//! what it can observe (a snapshot of the resources a driver could leak; the namespace's
//! stored bytes, where it can see them). [`tests`] lists the test functions; [`run`] runs
//! one, checking that the machine's resources are back where they were afterwards.
//!
//! ```no_run
//! # fn demo<P: dmakit::platform::Platform + Clone + Send + Sync + 'static>(
//! #     machine: &dyn dmakit_nvme::suite::TestMachine<P>) {
//! use dmakit_nvme::suite;
//!
//! for (name, test) in suite::tests::<P>() {
//!     match suite::run(machine, test) {
//!         Ok(()) => println!("ok {name}"),
//!         Err(e) => println!("FAILED {name}: {e}"),
//!     }
//! }
//! # }
//! ```

use crate::{
    DmaBuffer, IoQueue, NamespaceIdentity, Nvme, NvmeError, NvmeOptions, QueueOptions, Timer,
};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
    SubMemoryDescriptor,
};
use dmakit::device::PciFunction;
use dmakit::platform::Platform;
use dmakit::Direction;

/// A test's outcome: `Err` says what went wrong.
pub type Outcome = core::result::Result<(), String>;

/// One test function.
pub type TestFn<P> = fn(&dyn TestMachine<P>) -> Outcome;

/// What the tests need from a machine.
pub trait TestMachine<P: Platform + Clone + Send + Sync + 'static>: Sync {
    /// The platform (memory, register accesses).
    fn platform(&self) -> P;
    /// The NVMe function under test.
    fn function(&self) -> Arc<dyn PciFunction>;
    /// The timer commands are timed with.
    fn timer(&self) -> Arc<dyn Timer>;
    /// The driver options to bring the controller up with.
    fn options(&self) -> NvmeOptions {
        NvmeOptions::new()
    }
    /// The serial number the controller must report, if known.
    fn serial(&self) -> Option<String> {
        None
    }
    /// A snapshot of what a driver could leak (pages in use, wirings, IO mappings,
    /// outstanding preparations), by name. Equal before and after every test.
    fn resources(&self) -> Vec<(&'static str, u64)>;
    /// `len` bytes at byte `offset` of namespace `nsid` as the device stores them, where
    /// the machine can see them (the simulator can; real hardware cannot).
    fn stored(&self, nsid: u32, offset: u64, len: usize) -> Option<Vec<u8>>;
}

/// Every portable test, by name.
pub fn tests<P: Platform + Clone + Send + Sync + 'static>() -> Vec<(&'static str, TestFn<P>)> {
    vec![
        ("nvme_identify", identify as TestFn<P>),
        ("nvme_scattered_write_read", scattered_write_read),
        ("nvme_bounced_odd_pieces", bounced_odd_pieces),
        ("nvme_split_beyond_max_transfer", split_beyond_max_transfer),
        (
            "nvme_max_transfer_from_mid_page",
            max_transfer_from_mid_page,
        ),
        (
            "nvme_buffer_block_count_checked",
            buffer_block_count_checked,
        ),
        ("nvme_bad_arguments_refused", bad_arguments_refused),
        ("nvme_flush", flush),
        ("nvme_queued_reads", queued_reads),
        ("nvme_reset_fails_outstanding", reset_fails_outstanding),
        (
            "nvme_failed_command_gives_back_everything",
            failed_command_gives_back,
        ),
        (
            "nvme_interrupts_reach_the_queue",
            interrupts_reach_the_queue,
        ),
    ]
}

/// Runs `test` on `m`, then checks that nothing it used is left behind.
pub fn run<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
    test: TestFn<P>,
) -> Outcome {
    let before = m.resources();
    test(m)?;
    let after = m.resources();
    if before != after {
        return Err(format!(
            "resources not given back: before {before:?}, after {after:?}"
        ));
    }
    Ok(())
}

/// Fails with `why` unless `cond`.
pub fn check(cond: bool, why: impl FnOnce() -> String) -> Outcome {
    if cond {
        Ok(())
    } else {
        Err(why())
    }
}

fn e2s<E: core::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// The controller, its first namespace, and one I/O queue pair.
pub struct Rig<P: Platform + Clone + Send + Sync + 'static> {
    /// The controller.
    pub nvme: Nvme<P>,
    /// Namespace 1.
    pub ns: NamespaceIdentity,
    /// An I/O queue pair of 64 entries (or fewer, as the controller allows).
    pub q: IoQueue<P>,
    /// The platform.
    pub platform: P,
}

/// Brings the controller up with `m`'s options.
pub fn rig<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> core::result::Result<Rig<P>, String> {
    let nvme =
        Nvme::new(m.platform(), m.function(), m.timer(), m.options()).map_err(e2s("bring-up"))?;
    let ns = nvme.namespace(1).map_err(e2s("Identify Namespace 1"))?;
    let q = nvme
        .io_queue(QueueOptions::new(64))
        .map_err(e2s("I/O queue"))?;
    Ok(Rig {
        nvme,
        ns,
        q,
        platform: m.platform(),
    })
}

/// The first block of the region tests may overwrite: the second half of the namespace.
pub fn scratch(ns: &NamespaceIdentity) -> u64 {
    ns.blocks / 2
}

/// A byte pattern that differs per position and per `seed`, so misplaced data shows.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (seed.wrapping_mul(0x9e37_79b9) ^ i.wrapping_mul(7) ^ (i >> 9)) as u8)
        .collect()
}

/// A wired buffer of `len` bytes as a descriptor.
pub fn buffer<P: Platform + Clone + Send + Sync + 'static>(
    p: &P,
    len: u64,
) -> core::result::Result<Arc<dyn MemoryDescriptor>, String> {
    let b = BufferMemoryDescriptor::new(p.clone(), BufferOptions::new(len, Direction::InOut))
        .map_err(e2s("buffer"))?;
    Ok(Arc::new(b))
}

/// A descriptor of `parts` (each `(bytes, offset into its own fresh buffer)`), joined.
pub fn scattered<P: Platform + Clone + Send + Sync + 'static>(
    p: &P,
    parts: &[(u64, u64)],
) -> core::result::Result<Arc<dyn MemoryDescriptor>, String> {
    let mut v: Vec<Arc<dyn MemoryDescriptor>> = Vec::new();
    for &(len, off) in parts {
        let b = buffer(p, len + off)?;
        let s = SubMemoryDescriptor::new(b, off, len, Direction::InOut).map_err(e2s("part"))?;
        v.push(Arc::new(s));
    }
    let md = MultiMemoryDescriptor::new(v, Direction::InOut).map_err(e2s("multi"))?;
    Ok(Arc::new(md))
}

fn fill(md: &Arc<dyn MemoryDescriptor>, data: &[u8]) -> Outcome {
    let n = md.write_bytes(0, data);
    check(n == data.len(), || {
        format!("filled {n} of {} bytes", data.len())
    })
}

fn contents(md: &Arc<dyn MemoryDescriptor>) -> core::result::Result<Vec<u8>, String> {
    let mut out = vec![0u8; md.length() as usize];
    let n = md.read_bytes(0, &mut out);
    check(n == out.len(), || {
        format!("read {n} of {} bytes", out.len())
    })?;
    Ok(out)
}

/// Compares `got` with `want`, naming the first difference.
pub fn same(what: &str, got: &[u8], want: &[u8]) -> Outcome {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} bytes, expected {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: byte {i} is {:#04x}, expected {:#04x}",
            got[i], want[i]
        )),
    }
}

/// Writes `data` from `src` at `lba`, checks the store where the machine sees it, reads it
/// back into `dst`, and compares.
#[allow(clippy::too_many_arguments)]
fn round_trip<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
    r: &mut Rig<P>,
    lba: u64,
    src: &Arc<dyn MemoryDescriptor>,
    dst: &Arc<dyn MemoryDescriptor>,
    data: &[u8],
) -> core::result::Result<(crate::Transfer, crate::Transfer), String> {
    fill(src, data)?;
    let len = data.len() as u64;
    let w = r.q.write(&r.ns, lba, src, 0, len).map_err(e2s("write"))?;
    let at = lba * r.ns.block_size as u64;
    if let Some(stored) = m.stored(r.ns.nsid, at, data.len()) {
        same("the controller's store after the write", &stored, data)?;
    }
    let rd = r.q.read(&r.ns, lba, dst, 0, len).map_err(e2s("read"))?;
    same("read back", &contents(dst)?, data)?;
    Ok((w, rd))
}

/// Identify Controller and Namespace: serial, version, LBA format, transfer limit.
pub fn identify<P: Platform + Clone + Send + Sync + 'static>(m: &dyn TestMachine<P>) -> Outcome {
    let r = rig(m)?;
    let id = r.nvme.identify_controller().map_err(e2s("Identify"))?;
    if let Some(s) = m.serial() {
        check(id.serial == s, || {
            format!("serial {:?}, expected {s:?}", id.serial)
        })?;
    }
    check(id == r.nvme.identity(), || "Identify changed".into())?;
    let vs = r.nvme.version().map_err(e2s("VS"))?;
    check(vs >= 0x0001_0000, || format!("version {vs:#x}"))?;
    check(matches!(r.ns.block_size, 512 | 4096), || {
        format!("LBA size {}", r.ns.block_size)
    })?;
    check(r.ns.blocks >= 64, || format!("{} blocks", r.ns.blocks))?;
    let mt = r.nvme.max_transfer();
    let want = match id.mdts {
        0 => m.options().max_transfer,
        d => (4096u64 << d).min(m.options().max_transfer),
    };
    check(mt == want, || {
        format!("max_transfer {mt}, MDTS {}", id.mdts)
    })?;
    check(r.nvme.namespace(0xffff_fff0).is_err(), || {
        "an unknown namespace identified".into()
    })
}

/// A write and read of a descriptor of several page-aligned pieces: one PRP list at
/// least, chained lists where the transfer limit allows.
pub fn scattered_write_read<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    let mut r = rig(m)?;
    let mt = r.nvme.max_transfer();
    // A piece that starts mid-page (PRP1's offset), then whole pages.
    // Pieces join without a copy where they meet at the machine's page boundaries (an IOMMU
    // maps whole pages), so the first piece ends where a machine page ends.
    let page = r.platform.page_size().bytes();
    let total = mt.clamp(4 * page, 3 << 20);
    let first = page - 512;
    let rest = total - first;
    let middle = rest / 2 / page * page;
    let parts = [(first, 512), (middle, 0), (rest - middle, 0)];
    let src = scattered(&r.platform, &parts)?;
    let dst = scattered(&r.platform, &[(total / 3, 0), (total - total / 3, 0)])?;
    let data = pattern(1, total as usize);
    let lba = scratch(&r.ns);
    let (w, rd) = round_trip(m, &mut r, lba, &src, &dst, &data)?;
    let mapped = matches!(r.nvme.dma_view(), dmakit::device::DmaView::Mapped(_));
    check(w.bounced == 0 || !mapped, || {
        format!("the write bounced: {w:?}")
    })?;
    check(w.list_pages >= 1 || mt <= 8192, || {
        format!("no PRP list: {w:?}")
    })?;
    check(rd.prp_entries as u64 >= total / 4096, || format!("{rd:?}"))
}

/// Pieces that do not meet at page boundaries go through the bounce pool, byte-exact.
pub fn bounced_odd_pieces<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    let mut r = rig(m)?;
    let bs = r.ns.block_size as u64;
    let total = 4 * bs.max(2048);
    let parts = [(1000, 24), (total - 1000 - 300, 100), (300, 7)];
    let src = scattered(&r.platform, &parts)?;
    let dst = scattered(&r.platform, &[(total - 3 * 333, 3), (3 * 333, 1)])?;
    let data = pattern(2, total as usize);
    let lba = scratch(&r.ns) + 64;
    let (w, rd) = round_trip(m, &mut r, lba, &src, &dst, &data)?;
    check(w.bounced == w.commands && rd.bounced == rd.commands, || {
        format!("expected every command bounced: {w:?} {rd:?}")
    })?;
    let s = r.q.bounce_stats();
    check(s.bounced_bytes >= 2 * total, || {
        format!("bounce stats {s:?}")
    })
}

/// A transfer longer than the limit is split into several commands.
pub fn split_beyond_max_transfer<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    let mut r = rig(m)?;
    let mt = r.nvme.max_transfer();
    let bs = r.ns.block_size as u64;
    let total = (2 * mt + bs).min(8 << 20);
    let src = buffer(&r.platform, total)?;
    let dst = buffer(&r.platform, total)?;
    let data = pattern(3, total as usize);
    let lba = scratch(&r.ns) + 128;
    let (w, rd) = round_trip(m, &mut r, lba, &src, &dst, &data)?;
    let want = total.div_ceil(mt / bs * bs) as u32;
    check(w.commands == want && rd.commands == want, || {
        format!(
            "{} and {} commands, expected {want}",
            w.commands, rd.commands
        )
    })
}

/// The largest transfer, starting mid-page (one PRP entry more than its pages).
pub fn max_transfer_from_mid_page<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    let mut r = rig(m)?;
    let mt = r.nvme.max_transfer();
    let src = buffer(&r.platform, mt + 4096)?;
    let dst = buffer(&r.platform, mt + 4096)?;
    let data = pattern(4, mt as usize);
    fill(&src, &vec![0u8; (mt + 4096) as usize])?;
    let n = src.write_bytes(512, &data);
    check(n == data.len(), || "fill".into())?;
    let lba = scratch(&r.ns) + 256;
    let w = r.q.write(&r.ns, lba, &src, 512, mt).map_err(e2s("write"))?;
    check(w.commands == 1, || format!("{w:?}"))?;
    check(w.prp_entries as u64 == mt / 4096 + 1, || format!("{w:?}"))?;
    let lists = crate::prp::list_pages((mt / 4096) as usize);
    check(w.list_pages == lists, || {
        format!("{w:?}: expected {lists} PRP list pages")
    })?;
    let rd = r.q.read(&r.ns, lba, &dst, 2048, mt).map_err(e2s("read"))?;
    check(rd.commands == 1, || format!("{rd:?}"))?;
    let mut got = vec![0u8; mt as usize];
    let k = dst.read_bytes(2048, &mut got);
    check(k == got.len(), || "read back".into())?;
    same("mid-page maximal transfer", &got, &data)
}

/// A pre-mapped buffer cannot be asked for more blocks than it holds: refused before the
/// controller sees anything, and the memory after it is untouched.
pub fn buffer_block_count_checked<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    let mut r = rig(m)?;
    let buf = DmaBuffer::new(&r.platform, &r.nvme.dma_view(), 4096).map_err(e2s("buffer"))?;
    let bs = r.ns.block_size as u64;
    let lba = scratch(&r.ns) + 512;
    let before = r.nvme.stats().admin_commands;
    let e = r.q.read_buffer(&r.ns, lba, &buf, 0, 16 * bs.max(512) * 2);
    check(
        matches!(e, Err(NvmeError::Dma(dmakit::Error::OutOfBounds { .. }))),
        || format!("16+ blocks into 4 KiB: {e:?}"),
    )?;
    let e = r.q.read_buffer(&r.ns, lba, &buf, 4096 - 512, bs.max(1024));
    check(e.is_err(), || {
        "a read past the buffer's end was accepted".into()
    })?;
    check(r.q.stats().commands == 0 && r.q.stats().failed == 0, || {
        format!(
            "a refused command reached the controller: {:?}",
            r.q.stats()
        )
    })?;
    check(r.nvme.stats().admin_commands == before, || "admin".into())?;
    // The right size works, both ways.
    let data = pattern(5, 4096);
    buf.write(0, &data).map_err(e2s("fill"))?;
    r.q.write_buffer(&r.ns, lba, &buf, 0, 4096)
        .map_err(e2s("write"))?;
    buf.fill(0).map_err(e2s("clear"))?;
    r.q.read_buffer(&r.ns, lba, &buf, 0, 4096)
        .map_err(e2s("read"))?;
    let mut got = vec![0u8; 4096];
    buf.read(0, &mut got).map_err(e2s("read back"))?;
    same("pre-mapped round trip", &got, &data)
}

/// Bad arguments are refused with the error that names them, and nothing is submitted.
pub fn bad_arguments_refused<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    let mut r = rig(m)?;
    let bs = r.ns.block_size as u64;
    let md = buffer(&r.platform, 4 * bs)?;
    let ns = r.ns;
    let cases: [(&str, u64, u64, u64); 5] = [
        ("zero length", 0, 0, 0),
        ("not whole blocks", 0, 0, bs + 1),
        ("past the namespace", ns.blocks - 1, 0, 2 * bs),
        ("LBA near 2^64", u64::MAX - 1, 0, 4 * bs),
        ("past the descriptor", 0, bs, 4 * bs),
    ];
    for (what, lba, off, len) in cases {
        let e = r.q.write(&ns, lba, &md, off, len);
        check(matches!(e, Err(NvmeError::Dma(_))), || {
            format!("{what}: {e:?}")
        })?;
    }
    check(r.q.stats().commands + r.q.stats().failed == 0, || {
        "a refused command was submitted".into()
    })
}

/// Flush completes.
pub fn flush<P: Platform + Clone + Send + Sync + 'static>(m: &dyn TestMachine<P>) -> Outcome {
    let mut r = rig(m)?;
    r.q.flush(&r.ns).map_err(e2s("flush"))?;
    check(r.q.stats().commands == 1, || format!("{:?}", r.q.stats()))
}

/// Several reads in flight on one queue pair, rung once, every completion checked.
pub fn queued_reads<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    let mut r = rig(m)?;
    let view = r.nvme.dma_view();
    let depth = 8usize.min(r.q.entries() as usize - 1);
    let lba = scratch(&r.ns) + 1024;
    let per = 4096u64;
    let src = buffer(&r.platform, per * depth as u64)?;
    let data = pattern(6, (per * depth as u64) as usize);
    fill(&src, &data)?;
    r.q.write(&r.ns, lba, &src, 0, per * depth as u64)
        .map_err(e2s("write"))?;
    let bufs = (0..depth)
        .map(|_| DmaBuffer::new(&r.platform, &view, per))
        .collect::<dmakit::Result<Vec<_>>>()
        .map_err(e2s("buffers"))?;
    let bpp = per / r.ns.block_size as u64;
    let mut cids = Vec::new();
    for (i, b) in bufs.iter().enumerate() {
        let cid = r.q.submit_read(&r.ns, lba + i as u64 * bpp, b, 0, per);
        cids.push(cid.map_err(e2s("submit"))?);
    }
    check(r.q.outstanding() == depth, || "outstanding".into())?;
    r.q.ring().map_err(e2s("doorbell"))?;
    let mut done = Vec::new();
    while done.len() < depth {
        r.q.wait_completions(true, |d| done.push(d))
            .map_err(e2s("wait"))?;
    }
    for d in &done {
        d.result.clone().map_err(e2s("queued read"))?;
        let i = cids.iter().position(|&c| c == d.cid).ok_or("unknown cid")?;
        let mut got = vec![0u8; per as usize];
        bufs[i].read(0, &mut got).map_err(e2s("read back"))?;
        let at = i * per as usize;
        same("queued read", &got, &data[at..at + per as usize])?;
    }
    Ok(())
}

/// A reset with commands in flight fails each of them with an error naming it; the queue
/// pair then works again.
pub fn reset_fails_outstanding<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    let mut r = rig(m)?;
    let view = r.nvme.dma_view();
    let lba = scratch(&r.ns) + 2048;
    // Four in flight, or as many as a small queue holds.
    let n = 4.min(r.q.entries() as usize - 1);
    let bufs = (0..n)
        .map(|_| DmaBuffer::new(&r.platform, &view, 4096))
        .collect::<dmakit::Result<Vec<_>>>()
        .map_err(e2s("buffers"))?;
    let mut cids = Vec::new();
    for b in &bufs {
        cids.push(
            r.q.submit_read(&r.ns, lba, b, 0, 4096)
                .map_err(e2s("submit"))?,
        );
    }
    // Not rung: the controller has not seen them, and the reset must still fail them.
    let g = r.nvme.generation();
    let rec = r.nvme.recover(true).map_err(e2s("recover"))?;
    check(rec.reset && rec.generation == g + 1, || format!("{rec:?}"))?;
    let mut done = Vec::new();
    r.q.wait_completions(true, |d| done.push(d))
        .map_err(e2s("wait"))?;
    check(done.len() == cids.len(), || {
        format!("{} failed of {}", done.len(), cids.len())
    })?;
    for d in &done {
        let named = matches!(d.result, Err(NvmeError::Reset { qid, cid, .. }) if qid == r.q.id() && cid == d.cid);
        check(named && cids.contains(&d.cid), || format!("{d:?}"))?;
        let text = d
            .result
            .clone()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        check(text.contains("Read of"), || text.clone())?;
    }
    // The queue pair is created again on the reset controller.
    let md = buffer(&r.platform, 4096)?;
    r.q.read(&r.ns, lba, &md, 0, 4096)
        .map_err(e2s("read after reset"))?;
    check(r.q.stats().recreated == 1, || format!("{:?}", r.q.stats()))
}

/// A command the controller fails after its PRP list pages were written (a namespace that
/// does not exist) names itself, and its list pages and mappings are given back (the run's
/// resource check): the queue keeps working.
pub fn failed_command_gives_back<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    let mut r = rig(m)?;
    let len = (4 * 4096u64)
        .min(r.nvme.max_transfer())
        .max(r.ns.block_size as u64);
    let md = buffer(&r.platform, len + 512)?;
    let ghost = NamespaceIdentity {
        nsid: 0x7fff_0001,
        ..r.ns
    };
    let e = r.q.read(&ghost, 0, &md, 512, len);
    match &e {
        Err(err @ NvmeError::Status { op, qid, .. }) => {
            check(op.nsid == ghost.nsid && *qid == r.q.id(), || {
                err.to_string()
            })?;
            let at = m.function().address();
            check(
                op.device == Some(at) && err.to_string().contains(&at.to_string()),
                || alloc::format!("does not name the controller {at}: {err}"),
            )?;
            check(err.io_return() == dmakit::IoReturn::IO_ERROR, || {
                err.to_string()
            })?;
        }
        other => return Err(format!("a read of a missing namespace: {other:?}")),
    }
    check(r.q.stats().failed == 1, || format!("{:?}", r.q.stats()))?;
    r.q.read(&r.ns, scratch(&r.ns), &md, 512, len)
        .map_err(e2s("the next read"))?;
    Ok(())
}

/// A queue pair created with an interrupt vector: completions raise it, and the sink given
/// with it too. (Skipped where the function has fewer than two vectors.)
pub fn interrupts_reach_the_queue<P: Platform + Clone + Send + Sync + 'static>(
    m: &dyn TestMachine<P>,
) -> Outcome {
    struct Count(core::sync::atomic::AtomicU64);
    impl dmakit::dma::InterruptSink for Count {
        fn raise(&self) {
            self.0.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    }
    if m.function().interrupts().vectors < 2 {
        return Ok(());
    }
    let nvme =
        Nvme::new(m.platform(), m.function(), m.timer(), m.options()).map_err(e2s("bring-up"))?;
    let ns = nvme.namespace(1).map_err(e2s("namespace"))?;
    let sink = Arc::new(Count(core::sync::atomic::AtomicU64::new(0)));
    let mut q = nvme
        .io_queue(QueueOptions::new(8).interrupt(1).sink(sink.clone()))
        .map_err(e2s("queue with a vector"))?;
    let md = buffer(&m.platform(), 4096)?;
    for i in 0..4 {
        q.read(&ns, i * 8, &md, 0, 4096).map_err(e2s("read"))?;
    }
    // The last interrupt may still be on its way when the poll saw the completion.
    let t = m.timer();
    let start = t.now_ns();
    while q.stats().interrupts < 4 && t.now_ns() - start < 100_000_000 {
        t.pause();
    }
    let seen = q.stats().interrupts;
    let sunk = sink.0.load(core::sync::atomic::Ordering::Relaxed);
    // A controller may coalesce interrupts (QEMU's sometimes signals two completions once).
    check(seen >= 1 && sunk == seen, || {
        format!("{seen} interrupts counted, {sunk} reached the sink, for 4 reads")
    })
}

/// For a second thread: writes and reads back `rounds` transfers of `blocks` blocks at
/// `first_lba` on its own queue pair `q`, each with data from `seed`.
pub fn worker<P: Platform + Clone + Send + Sync + 'static>(
    p: &P,
    q: &mut IoQueue<P>,
    ns: &NamespaceIdentity,
    first_lba: u64,
    blocks: u64,
    rounds: u32,
    seed: u64,
) -> Outcome {
    let len = blocks * ns.block_size as u64;
    let src = buffer(p, len)?;
    let dst = scattered(p, &[(len / 2, 0), (len - len / 2, 0)])?;
    for round in 0..rounds as u64 {
        let data = pattern(seed * 1000 + round, len as usize);
        fill(&src, &data)?;
        let lba = first_lba + (round % 4) * blocks;
        q.write(ns, lba, &src, 0, len)
            .map_err(e2s("worker write"))?;
        q.read(ns, lba, &dst, 0, len).map_err(e2s("worker read"))?;
        same("worker read back", &contents(&dst)?, &data)?;
    }
    Ok(())
}

/// The error text of a failed result, for reports.
pub fn describe(r: &crate::Result<()>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    }
}
