//! `dma/bounce_copy_*`: `synchronize` of a force-bounced [`DmaCommand`] against `memcpy`
//! between the same kinds of memory.
//!
//! The command (no limits, `BouncePool::set_force_bounce`) is prepared without the
//! prepare-time copy over wired [`BufferMemoryDescriptor`]s; an operation is one
//! [`synchronize`](DmaCommand::synchronize)`(Out)` (descriptor → bounce buffer) or `(In)`
//! (bounce buffer → descriptor) of the whole length. In bypassed (coherent) mode that is
//! the copy plus a few checks and the pool's counter.
//!
//! The peer ("memcpy") copies the same bytes between the very same memory: from (or to)
//! the wired `BufferMemoryDescriptor`s the command's descriptor is made of, to (or from)
//! the command's own bounce buffer (one 2 MiB hugepage), each lent as a slice for the
//! chunk (between the command's copies, never during one) and copied with
//! `copy_from_slice`. Copying the same pages matters: two sets of 4 KiB pages land
//! differently in the caches (which pages share cache sets), and that alone moved the
//! 1 MiB ratios by 10–15 % from run to run when the peer had buffers of its own. Sizes are 64 KiB,
//! 1 MiB and 2 MiB (a bounce buffer is at most one hugepage here) over one wired buffer,
//! and 1 MiB over a [`MultiMemoryDescriptor`] of 16 wired 64 KiB buffers (`_multi16`, one
//! copy per part on both sides). A chunk is about 4 MiB of copies; both sides are touched
//! before timing, so no page faults are measured.

use crate::harness::{compare, Paired, Plan, Side};
use crate::progress::Progress;
use crate::{measure, Options, Row, CONTROL_PEER};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
};
use dmakit::dma::{BouncePool, CompleteOptions, DmaCommand, PrepareOptions, SegmentSpec};
use dmakit::platform::{CpuAccess, Task};
use dmakit::{Direction, Result, VirtAddr};
use dmakit_linux::Host;
use std::sync::Arc;

type H = Arc<Host>;
type Buf = BufferMemoryDescriptor<H>;

/// Rows this part of the group plans.
pub const ROWS: usize = 8;
/// Hugepages it needs free at once: a bounce buffer and the peer's destination, and a spare.
pub const HUGEPAGES: u64 = 3;
const CHUNKS: usize = 8;
const CHUNK_BYTES: u64 = 4 << 20;

fn wired(host: &H, len: u64) -> Result<Buf> {
    BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(len, Direction::InOut))
}

fn contiguous(host: &H, len: u64) -> Result<Buf> {
    let o = BufferOptions::new(len, Direction::InOut).contiguous(true);
    BufferMemoryDescriptor::new(host.clone(), o)
}

/// Wirings the peer may lend memory under: a buffer's own, for its whole life, and the
/// command's preparation. Neither is a device's (nothing here starts DMA), so a slice of
/// the memory races with nothing while the command is between copies.
const HELD: u32 = 2;

/// The memcpy peer: copies between the command's own source parts and `dest_len` bytes at
/// `dest` (the command's bounce buffer, or for the A/A row a buffer of its own, `_own`).
struct Peer {
    host: H,
    parts: Vec<Arc<Buf>>,
    dest: VirtAddr,
    dest_len: u64,
    _own: Option<Buf>,
}

impl Peer {
    /// A peer between `parts` and the bounce buffer of `cmd`.
    fn of_command(host: &H, parts: Vec<Arc<Buf>>, cmd: &DmaCommand<H>) -> Result<Peer> {
        let dest_len = parts.iter().map(|p| p.length()).sum();
        let missing = dmakit::Error::Internal {
            what: "a force-bounced command has no bounce buffer of its task to copy into",
        };
        let bounce = cmd.io_memory_descriptor().ok_or(missing.clone())?;
        let mut at = None;
        bounce.sources(cmd.bounce_data_offset(), dest_len, &mut |s| {
            at = at.or(s.task.map(|_| s.addr));
        })?;
        let dest = VirtAddr(at.ok_or(missing)?);
        Peer::warmed(host, parts, dest, dest_len, None)
    }

    /// A peer between `parts` and a contiguous buffer of its own.
    fn own(host: &H, parts: Vec<Arc<Buf>>) -> Result<Peer> {
        let dest_len = parts.iter().map(|p| p.length()).sum();
        let own = contiguous(host, dest_len)?;
        Peer::warmed(host, parts, own.address(), dest_len, Some(own))
    }

    fn warmed(
        host: &H,
        parts: Vec<Arc<Buf>>,
        dest: VirtAddr,
        dest_len: u64,
        own: Option<Buf>,
    ) -> Result<Peer> {
        let p = Peer {
            host: host.clone(),
            parts,
            dest,
            dest_len,
            _own: own,
        };
        if p.copy(Direction::Out, 1) == 0 || p.copy(Direction::In, 1) == 0 {
            return Err(dmakit::Error::Internal {
                what: "the memcpy peer could not lend its memory",
            });
        }
        Ok(p)
    }

    /// `copies` copies of everything: parts → destination for `Out`, back for `In`;
    /// the bytes copied (0 if the memory could not be lent).
    fn copy(&self, dir: Direction, copies: u64) -> usize {
        let host = &self.host;
        let k = Task::KERNEL;
        let mut n = 0;
        if dir == Direction::Out {
            let Ok(mut dest) = host.direct_slice_mut(k, self.dest, self.dest_len, HELD) else {
                return 0;
            };
            let dest = dest.bytes_mut();
            let srcs: Vec<_> = self
                .parts
                .iter()
                .filter_map(|p| host.direct_slice(k, p.address(), p.length(), HELD).ok())
                .collect();
            for _ in 0..copies {
                let mut at = 0;
                for s in &srcs {
                    let s = s.bytes();
                    dest[at..at + s.len()].copy_from_slice(s);
                    at += s.len();
                }
                n += at;
            }
        } else {
            let Ok(src) = host.direct_slice(k, self.dest, self.dest_len, HELD) else {
                return 0;
            };
            let src = src.bytes();
            let mut dsts: Vec<_> = self
                .parts
                .iter()
                .filter_map(|p| host.direct_slice_mut(k, p.address(), p.length(), HELD).ok())
                .collect();
            for _ in 0..copies {
                let mut at = 0;
                for d in dsts.iter_mut() {
                    let d = d.bytes_mut();
                    let l = d.len();
                    d.copy_from_slice(&src[at..at + l]);
                    at += l;
                }
                n += at;
            }
        }
        n
    }
}

/// A force-bounced, prepared command over `md`, its bounce copy checked once.
fn bounced(host: &H, md: Arc<dyn MemoryDescriptor>) -> Result<DmaCommand<H>> {
    let len = md.length();
    let pool = Arc::new(BouncePool::new(host.clone(), "bench bounce pool", len));
    pool.set_force_bounce(true);
    let mut cmd = DmaCommand::builder(host.clone())
        .spec(SegmentSpec::builder().build()?)
        .bounce_pool(pool)
        .build()?;
    cmd.set_memory_descriptor(md.clone())?;
    cmd.prepare(
        PrepareOptions::range(0, len)
            .flush_cache(false)
            .synchronize(false),
    )?;
    let data: Vec<u8> = (0..len as usize).map(|i| (i * 7 + 3) as u8).collect();
    let check = (|| {
        if !cmd.is_bounced() {
            return Err("a force-bounced command did not bounce");
        }
        if md.write_bytes(0, &data) != data.len() {
            return Err("the descriptor took fewer bytes than its length");
        }
        cmd.synchronize(Direction::Out)
            .map_err(|_| "synchronize(Out) failed")?;
        let _ = md.write_bytes(0, &vec![0u8; len as usize]);
        cmd.synchronize(Direction::In)
            .map_err(|_| "synchronize(In) failed")?;
        let mut back = vec![0u8; len as usize];
        let _ = md.read_bytes(0, &mut back);
        if back != data {
            return Err("the bounce copy round trip changed the bytes");
        }
        Ok(())
    })();
    if let Err(what) = check {
        let _ = cmd.complete_with(CompleteOptions::new().synchronize(false));
        return Err(dmakit::Error::Internal { what });
    }
    Ok(cmd)
}

fn versus(plan: &Plan, cmd: &DmaCommand<H>, peer: &Peer, dir: Direction) -> Paired {
    let copies = (CHUNK_BYTES / peer.dest_len).max(1);
    let ops = (copies * CHUNKS as u64) as f64;
    compare(
        plan,
        CHUNKS,
        Side::new(ops, |_| (0..copies).try_for_each(|_| cmd.synchronize(dir))),
        Side::new(ops, |_| peer.copy(dir, copies)),
    )
}

fn size_rows(
    host: &H,
    plan: &Plan,
    p: &mut Progress,
    name: &str,
    parts: usize,
    part_len: u64,
    both: bool,
) -> Result<Vec<Row>> {
    let bufs = (0..parts)
        .map(|_| Ok(Arc::new(wired(host, part_len)?)))
        .collect::<Result<Vec<Arc<Buf>>>>()?;
    let md: Arc<dyn MemoryDescriptor> = if parts == 1 {
        bufs[0].clone()
    } else {
        let ps = bufs
            .iter()
            .map(|b| b.clone() as Arc<dyn MemoryDescriptor>)
            .collect();
        Arc::new(MultiMemoryDescriptor::new(ps, Direction::InOut)?)
    };
    let mut cmd = bounced(host, md)?;
    let peer = match Peer::of_command(host, bufs, &cmd) {
        Ok(p) => p,
        Err(e) => {
            let _ = cmd.complete_with(CompleteOptions::new().synchronize(false));
            return Err(e);
        }
    };
    let mut rows = vec![measure(
        p,
        &format!("dma/bounce_copy_{name}_out"),
        "memcpy",
        || versus(plan, &cmd, &peer, Direction::Out),
    )];
    if both {
        rows.push(measure(
            p,
            &format!("dma/bounce_copy_{name}_in"),
            "memcpy",
            || versus(plan, &cmd, &peer, Direction::In),
        ));
    }
    cmd.complete_with(CompleteOptions::new().synchronize(false))?;
    Ok(rows)
}

/// The bounce rows and the group's A/A row.
pub fn rows(host: &H, _opts: &Options, plan: &Plan, p: &mut Progress) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, len) in [("64KiB", 64u64 << 10), ("1MiB", 1 << 20), ("2MiB", 2 << 20)] {
        rows.extend(size_rows(host, plan, p, name, 1, len, true)?);
    }
    rows.extend(size_rows(
        host,
        plan,
        p,
        "1MiB_multi16",
        16,
        64 << 10,
        false,
    )?);
    // The same peer on both sides: two different buffer pairs differ by where their pages
    // landed physically (cache-set conflicts between source and destination), a real and
    // lasting difference that is not the method's noise.
    let peer = Peer::own(host, vec![Arc::new(wired(host, 1 << 20)?)])?;
    let copies = CHUNK_BYTES >> 20;
    let ops = (copies * CHUNKS as u64) as f64;
    rows.push(measure(p, "dma/a_a", CONTROL_PEER, || {
        compare(
            plan,
            CHUNKS,
            Side::new(ops, |_| peer.copy(Direction::Out, copies)),
            Side::new(ops, |_| peer.copy(Direction::Out, copies)),
        )
    }));
    Ok(rows)
}
