//! `dma/*`: [`DmaCommand`] on this Linux process, against the plain loop or copy it does on
//! top of.
//!
//! Both rows need physical addresses (root with CAP_SYS_ADMIN); the bounce rows also need a
//! free 2 MiB hugepage, because a bounce buffer is physically contiguous and the Linux host
//! makes contiguous memory from hugepages. Without them the rows are skipped with the reason
//! printed. Run as root, the group reserves one hugepage for its run when none is free and
//! restores `nr_hugepages` afterwards.
//!
//! * `dma/gen_segments_per_segment`: a prepared command (64-bit device, no limits,
//!   `Host64` format) over a [`GeneralMemoryDescriptor`] of [`SCATTER`] single pages taken
//!   every other page of one pageable allocation, so no two are adjacent in virtual memory
//!   and almost none physically (the kernel occasionally hands out frames two apart: a few
//!   of the 4,096 runs coalesce, and the count is printed when they do). An operation is one
//!   generated segment of a full `gen_segments` pass, writing into a buffer with room for
//!   all of them; each side is divided by its own count (segments, or runs for the peer). Peer ("physical_segment walk"): a loop over the same descriptor's
//!   `physical_segment` that writes raw `(addr, len)` pairs into a `u64` buffer, per run.
//!   The peer is the floor, not an equal: it checks no constraint (window, alignment, maximum
//!   segment size, boundary, segment count), does not coalesce adjacent runs, cannot resume
//!   from a caller's offset or stop at a caller's limit, and writes native `u64`s instead
//!   of going through a [`SegmentFormat`]. Both look up each run the same way.
//! * `dma/bounce_copy_*` (64 KiB, 1 MiB, 2 MiB: a bounce buffer is at most one hugepage
//!   here): a force-bounced command (`BouncePool::set_force_bounce`), prepared without the
//!   prepare-time copy, over a wired [`BufferMemoryDescriptor`]; an operation is one
//!   [`synchronize`](DmaCommand::synchronize)`(Out)` (descriptor → bounce buffer) or
//!   `(In)` (bounce buffer → descriptor). In bypassed (coherent) mode that is only the
//!   copy, plus a few checks and the pool's counter. Peer ("memcpy"): `copy_from_slice`
//!   between two `Vec`s of the same size. Both sides are touched before timing, so no page
//!   faults are measured; at these sizes both copies run from the CPU caches about equally
//!   well (the same number of bytes read and written). Only the memory differs: the
//!   descriptor's side is memfd pages and the bounce side one hugepage, where the peer's are
//!   anonymous heap pages.
//! * Each row's dmakit and peer samples alternate (one of each per repetition, median of
//!   each), so a change of load on a shared machine hits both sides alike.
//! * `dma/bounce_copy_1MiB_multi16`: the same `synchronize(Out)` out of a
//!   [`MultiMemoryDescriptor`] of 16 wired 64 KiB buffers, one `copy_virt` per part.

use crate::timing::{median, sample_ns_per_op};
use crate::{Options, Row};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, MemoryDescriptor,
    MultiMemoryDescriptor,
};
use dmakit::dma::{BouncePool, DmaCommand, SegmentFormat, SegmentSpec};
use dmakit::dma::{CompleteOptions, PrepareOptions};
use dmakit::platform::{PageRequest, PhysicalMemory, Task};
use dmakit::{Direction, Result, VirtAddr};
use dmakit_linux::{AddressMode, Host, HugepagePool};
use std::sync::Arc;

type H = Arc<Host>;

/// Pages (segments) of the scattered descriptor.
pub const SCATTER: u64 = 4096;

/// A command with no constraints and `Host64` output.
fn command(host: &H, pool: Option<Arc<BouncePool<H>>>) -> Result<DmaCommand<H>> {
    DmaCommand::builder(host.clone())
        .spec(SegmentSpec::builder().build()?)
        .bounce_pool_option(pool)
        .build()
}

/// `pages` pages from every other page of a pageable allocation of `2 * pages` pages, which
/// the caller frees with `free_pages(va, len)` after the descriptor is gone.
pub fn scattered(host: &H, pages: u64) -> Result<(GeneralMemoryDescriptor<H>, VirtAddr, u64)> {
    let page = host.page_size().bytes();
    let len = 2 * pages * page;
    let va = host.allocate_pages(len, &PageRequest::PAGEABLE)?;
    let ranges: Vec<(VirtAddr, u64)> = (0..pages)
        .map(|i| (VirtAddr(va.0 + 2 * i * page), page))
        .collect();
    match GeneralMemoryDescriptor::with_ranges(host.clone(), Task::KERNEL, &ranges, Direction::Out)
    {
        Ok(md) => Ok((md, va, len)),
        Err(e) => {
            let _ = host.free_pages(va, len);
            Err(e)
        }
    }
}

/// The peer of `gen_segments`: raw `(addr, len)` pairs of every run, no checks.
pub fn physical_segment_walk(md: &dyn MemoryDescriptor, len: u64, out: &mut [u64]) -> usize {
    let (mut x, mut n) = (0u64, 0usize);
    while x < len {
        let Ok(s) = md.physical_segment(x) else {
            break;
        };
        let l = s.len.min(len - x);
        out[2 * n] = s.addr.0;
        out[2 * n + 1] = l;
        n += 1;
        x += l;
    }
    n
}

/// One full `gen_segments` pass from offset 0; the number of segments.
pub fn gen_all(cmd: &DmaCommand<H>, out: &mut [u8]) -> Result<usize> {
    let mut off = 0;
    let mut total = 0;
    let length = cmd.prepared_offset_and_length()?.1;
    while off < length {
        total += cmd.gen_segments(&mut off, out)?;
    }
    Ok(total)
}

fn gen_segments_rows(host: &H, reps: usize, passes: u64) -> Result<Vec<Row>> {
    let (md, va, alloc_len) = scattered(host, SCATTER)?;
    let md = Arc::new(md);
    let len = md.length();
    let mut cmd = command(host, None)?;
    cmd.set_memory_descriptor(md.clone())?;
    cmd.prepare(
        PrepareOptions::range(0, len)
            .flush_cache(false)
            .synchronize(false),
    )?;
    let mut out = vec![0u8; SCATTER as usize * SegmentFormat::Host64.element_size()];
    let mut raw = vec![0u64; 2 * SCATTER as usize];
    let segs = gen_all(&cmd, &mut out)?;
    let runs = physical_segment_walk(md.as_ref(), len, &mut raw);
    if segs != runs {
        eprintln!("dma/gen_segments: {runs} runs coalesced into {segs} segments");
    }
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        ours.push(sample_ns_per_op(passes * segs as u64, || {
            (0..passes)
                .map(|_| gen_all(&cmd, &mut out).unwrap_or(0))
                .sum::<usize>()
        }));
        peer.push(sample_ns_per_op(passes * runs as u64, || {
            (0..passes)
                .map(|_| physical_segment_walk(md.as_ref(), len, &mut raw))
                .sum::<usize>()
        }));
    }
    let (ours, peer) = (median(ours), median(peer));
    cmd.complete_with(CompleteOptions::new().synchronize(false))?;
    drop(cmd);
    drop(md);
    host.free_pages(va, alloc_len)?;
    Ok(vec![Row::new(
        "dma/gen_segments_per_segment",
        "physical_segment walk",
        ours,
        peer,
    )])
}

/// Times `synchronize(Out)` and, when `both`, `synchronize(In)` of a force-bounced command
/// over `md`, and `memcpy` of as many bytes: `(out, in, memcpy)` in ns per copy.
fn time_bounce(
    host: &H,
    md: Arc<dyn MemoryDescriptor>,
    reps: usize,
    copies: u64,
    both: bool,
) -> Result<(f64, f64, f64)> {
    let len = md.length();
    let pool = Arc::new(BouncePool::new(host.clone(), "bench bounce pool", len));
    pool.set_force_bounce(true);
    let mut cmd = command(host, Some(pool.clone()))?;
    cmd.set_memory_descriptor(md.clone())?;
    cmd.prepare(
        PrepareOptions::range(0, len)
            .flush_cache(false)
            .synchronize(false),
    )?;
    let data: Vec<u8> = (0..len as usize).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(md.write_bytes(0, &data), data.len());
    let result = (|| {
        if !cmd.is_bounced() {
            return Err(dmakit::Error::Internal {
                what: "a force-bounced command did not bounce",
            });
        }
        // Touch both sides once, and check the copies move the right bytes.
        cmd.synchronize(Direction::Out)?;
        assert_eq!(md.write_bytes(0, &vec![0u8; len as usize]), len as usize);
        cmd.synchronize(Direction::In)?;
        let mut back = vec![0u8; len as usize];
        assert_eq!(md.read_bytes(0, &mut back), back.len());
        if back != data {
            return Err(dmakit::Error::Internal {
                what: "the bounce copy round trip changed the bytes",
            });
        }
        let src = data.clone();
        let mut dst = vec![0u8; len as usize];
        dst.copy_from_slice(&src);
        // Samples of the three alternate, so a change of load on the machine hits all alike.
        let (mut out, mut inn, mut memcpy) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            out.push(sample_ns_per_op(copies, || {
                (0..copies).try_for_each(|_| cmd.synchronize(Direction::Out))
            }));
            if both {
                inn.push(sample_ns_per_op(copies, || {
                    (0..copies).try_for_each(|_| cmd.synchronize(Direction::In))
                }));
            }
            memcpy.push(sample_ns_per_op(copies, || {
                for _ in 0..copies {
                    dst.copy_from_slice(std::hint::black_box(&src));
                }
                dst[dst.len() / 2]
            }));
        }
        let (out, inn, memcpy) = (median(out), median(inn), median(memcpy));
        Ok((out, inn, memcpy))
    })();
    cmd.complete_with(CompleteOptions::new().synchronize(false))?;
    result
}

fn wired(host: &H, len: u64) -> Result<Arc<dyn MemoryDescriptor>> {
    Ok(Arc::new(BufferMemoryDescriptor::new(
        host.clone(),
        BufferOptions::new(len, Direction::InOut),
    )?))
}

fn bounce_rows(host: &H, opts: &Options, reps: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, len) in [("64KiB", 64u64 << 10), ("1MiB", 1 << 20), ("2MiB", 2 << 20)] {
        // About 64 MiB copied per sample (16 MiB when quick).
        let copies = ((if opts.quick { 16u64 } else { 64 } << 20) / len).max(1);
        let (out, inn, memcpy) = time_bounce(host, wired(host, len)?, reps, copies, true)?;
        rows.push(Row::new(
            &format!("dma/bounce_copy_{name}_out"),
            "memcpy",
            out,
            memcpy,
        ));
        rows.push(Row::new(
            &format!("dma/bounce_copy_{name}_in"),
            "memcpy",
            inn,
            memcpy,
        ));
    }
    let parts = (0..16)
        .map(|_| wired(host, 64 << 10))
        .collect::<Result<Vec<_>>>()?;
    let multi: Arc<dyn MemoryDescriptor> =
        Arc::new(MultiMemoryDescriptor::new(parts, Direction::InOut)?);
    let copies = if opts.quick { 16 } else { 64 };
    let (out, _, memcpy) = time_bounce(host, multi, reps, copies, false)?;
    rows.push(Row::new(
        "dma/bounce_copy_1MiB_multi16_out",
        "memcpy",
        out,
        memcpy,
    ));
    Ok(rows)
}

/// Runs the group (rows that cannot run are skipped with the reason printed).
pub fn run(opts: &Options) -> Vec<Row> {
    let reps = if opts.quick { 5 } else { 11 };
    let host = match Host::new() {
        Ok(h) => Arc::new(h),
        Err(e) => {
            eprintln!("dma bench skipped: no Linux host: {e}");
            return Vec::new();
        }
    };
    if host.address_mode() != AddressMode::Physical {
        eprintln!(
            "dma bench skipped: DMA commands need physical addresses (root with CAP_SYS_ADMIN)"
        );
        return Vec::new();
    }
    let mut rows = Vec::new();
    match gen_segments_rows(&host, reps, if opts.quick { 5 } else { 20 }) {
        Ok(r) => rows.extend(r),
        Err(e) => eprintln!("dma/gen_segments skipped: {e}"),
    }
    // A bounce buffer is physically contiguous, which the Linux host makes from a 2 MiB
    // hugepage: as root, reserve one for the run if none is free, and restore the setting.
    let reserved = reserve_hugepage();
    if HugepagePool::probe().free == 0 {
        eprintln!(
            "dma/bounce_copy skipped: a bounce buffer is physically contiguous, which the \
             Linux host makes from a 2 MiB hugepage, and none is free (reserve one: \
             echo 1 > /proc/sys/vm/nr_hugepages)"
        );
    } else {
        match bounce_rows(&host, opts, reps) {
            Ok(r) => rows.extend(r),
            Err(e) => eprintln!("dma/bounce_copy skipped: {e}"),
        }
    }
    if let Some(before) = reserved {
        let _ = std::fs::write(NR_HUGEPAGES, before);
    }
    rows
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Raises `nr_hugepages` by one when no hugepage is free and we may (root); returns the
/// setting to restore.
fn reserve_hugepage() -> Option<String> {
    if HugepagePool::probe().free > 0 {
        return None;
    }
    let before = std::fs::read_to_string(NR_HUGEPAGES).ok()?;
    let n: u64 = before.trim().parse().ok()?;
    std::fs::write(NR_HUGEPAGES, (n + 1).to_string()).ok()?;
    Some(before.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_segments_and_the_walk_describe_the_same_runs() {
        let host = Arc::new(Host::new().unwrap());
        if host.address_mode() != AddressMode::Physical {
            println!("skipped: physical addresses need root with CAP_SYS_ADMIN");
            return;
        }
        let (md, va, alloc_len) = scattered(&host, 64).unwrap();
        let md = Arc::new(md);
        let mut cmd = command(&host, None).unwrap();
        cmd.set_memory_descriptor(md.clone()).unwrap();
        cmd.prepare(
            PrepareOptions::range(0, md.length())
                .flush_cache(false)
                .synchronize(false),
        )
        .unwrap();
        let mut out = vec![0u8; 64 * 16];
        let mut raw = vec![0u64; 128];
        let n = gen_all(&cmd, &mut out).unwrap();
        let runs = physical_segment_walk(md.as_ref(), md.length(), &mut raw);
        assert_eq!(runs, 64, "one run per page");
        // gen_segments coalesces physically adjacent runs; the bytes described are the same.
        let mut total = 0;
        for i in 0..n {
            let s = SegmentFormat::Host64.read(&out, i).unwrap();
            total += s.len;
        }
        assert_eq!(total, md.length());
        assert!(n <= runs);
        cmd.complete_with(CompleteOptions::new().synchronize(false))
            .unwrap();
        drop(cmd);
        drop(md);
        host.free_pages(va, alloc_len).unwrap();
    }
}
