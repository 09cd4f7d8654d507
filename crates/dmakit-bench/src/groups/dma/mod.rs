//! `dma/*`: [`DmaCommand`] on this Linux process, against the plain loop or copy it does on
//! top of.
//!
//! Every row needs physical addresses (root with CAP_SYS_ADMIN); the bounce rows also need
//! free 2 MiB hugepages, because a bounce buffer (and the peer's matching destination) is
//! physically contiguous and the Linux host makes contiguous memory from hugepages.
//! Without them the rows are skipped with the reason printed. Run as root, the group
//! reserves the hugepages it needs when they are not free and restores
//! `nr_hugepages` afterwards.
//!
//! * `dma/gen_segments_per_pass`: a prepared command (64-bit device, no limits, `Host64`
//!   format) over a [`GeneralMemoryDescriptor`] of [`SCATTER`] single pages taken every
//!   other page of one pageable allocation, so no two are adjacent in virtual memory and
//!   almost none physically. An operation is one whole `gen_segments` pass over the
//!   descriptor (into a buffer with room for every segment) against one whole pass of the
//!   peer ("physical_segment walk"): a loop over the same descriptor's `physical_segment`
//!   writing raw `(addr, len)` pairs into a `u64` buffer. Per pass, because the two count
//!   differently: `gen_segments` coalesces the few physically adjacent runs the kernel
//!   hands out, the walk does not. The peer is the floor, not an equal: it checks no
//!   constraint (window, alignment, maximum segment size, boundary, segment count), cannot
//!   resume from a caller's offset or stop at a caller's limit, and writes native `u64`s
//!   instead of going through a [`SegmentFormat`]. A chunk is 4 passes.
//! * `dma/bounce_copy_*` ([`bounce`]): `synchronize` of a force-bounced command against
//!   `memcpy` between the very same memory (the command's source buffers and its bounce
//!   buffer).
//! * `dma/a_a`: a 1 MiB memcpy against itself on the same buffers. (Two different buffer
//!   pairs can differ by 10–15 % at 1 MiB by where their pages landed physically, which is
//!   why the bounce rows' peer copies the command's own memory.)

pub mod bounce;

use crate::harness::{compare, Plan, Side};
use crate::progress::Progress;
use crate::{measure, Options, Row};
use dmakit::descriptor::{GeneralMemoryDescriptor, MemoryDescriptor};
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

/// Passes per chunk and chunks of the gen_segments row.
const PASSES: usize = 4;
const CHUNKS: usize = 8;

fn gen_segments_row(host: &H, plan: &Plan, p: &mut Progress) -> Result<Row> {
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
        crate::progress::note(format_args!(
            "dma/gen_segments: {runs} runs coalesced into {segs} segments"
        ));
    }
    let passes = (PASSES * CHUNKS) as f64;
    let row = measure(
        p,
        "dma/gen_segments_per_pass",
        "physical_segment walk",
        || {
            compare(
                plan,
                CHUNKS,
                Side::new(passes, |_| {
                    (0..PASSES)
                        .map(|_| gen_all(&cmd, &mut out).unwrap_or(0))
                        .sum::<usize>()
                }),
                Side::new(passes, |_| {
                    (0..PASSES)
                        .map(|_| physical_segment_walk(md.as_ref(), len, &mut raw))
                        .sum::<usize>()
                }),
            )
        },
    );
    cmd.complete_with(CompleteOptions::new().synchronize(false))?;
    drop(cmd);
    drop(md);
    host.free_pages(va, alloc_len)?;
    Ok(row)
}

/// Rows the group plans.
pub fn planned(_opts: &Options) -> usize {
    1 + bounce::ROWS
}

/// Runs the group (rows that cannot run are skipped with the reason printed).
pub fn run(opts: &Options, p: &mut Progress) -> Vec<Row> {
    let plan = Plan::for_options(opts);
    let host = match Host::new() {
        Ok(h) => Arc::new(h),
        Err(e) => {
            p.skip(planned(opts), &format!("dma bench: no Linux host: {e}"));
            return Vec::new();
        }
    };
    if host.address_mode() != AddressMode::Physical {
        p.skip(
            planned(opts),
            "dma bench: DMA commands need physical addresses (root with CAP_SYS_ADMIN)",
        );
        return Vec::new();
    }
    let mut rows = Vec::new();
    match gen_segments_row(&host, &plan, p) {
        Ok(r) => rows.push(r),
        Err(e) => p.skip(1, &format!("dma/gen_segments: {e}")),
    }
    // Bounce buffers and the peer's destinations are physically contiguous, which the
    // Linux host makes from 2 MiB hugepages: as root, reserve them for the run if they are
    // not free, and restore the setting.
    let reserved = reserve_hugepages(bounce::HUGEPAGES);
    let free = HugepagePool::probe().free;
    if free < bounce::HUGEPAGES {
        p.skip(
            bounce::ROWS,
            &format!(
                "dma/bounce_copy: a bounce buffer and the peer's destination are physically \
                 contiguous, which the Linux host makes from 2 MiB hugepages; {} are needed \
                 and {free} are free (reserve some: echo {} > /proc/sys/vm/nr_hugepages)",
                bounce::HUGEPAGES,
                bounce::HUGEPAGES
            ),
        );
    } else {
        match bounce::rows(&host, opts, &plan, p) {
            Ok(r) => rows.extend(r),
            Err(e) => p.skip(0, &format!("dma/bounce_copy: {e}")),
        }
    }
    if let Some(before) = reserved {
        let _ = std::fs::write(NR_HUGEPAGES, before);
    }
    rows
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Raises `nr_hugepages` so that `want` are free, when fewer are and we may (root);
/// returns the setting to restore.
fn reserve_hugepages(want: u64) -> Option<String> {
    let free = HugepagePool::probe().free;
    if free >= want {
        return None;
    }
    let before = std::fs::read_to_string(NR_HUGEPAGES).ok()?;
    let n: u64 = before.trim().parse().ok()?;
    std::fs::write(NR_HUGEPAGES, (n + want - free).to_string()).ok()?;
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
