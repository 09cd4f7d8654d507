//! `dma/bounce_copy_*`: `synchronize` of a force-bounced [`DmaCommand`] against `memcpy`
//! between the same kinds of memory.
//!
//! The command (no limits, `BouncePool::set_force_bounce`) is prepared without the
//! prepare-time copy over wired [`BufferMemoryDescriptor`]s; an operation is one
//! [`synchronize`](DmaCommand::synchronize)`(Out)` (descriptor → bounce buffer) or `(In)`
//! (bounce buffer → descriptor) of the whole length. In bypassed (coherent) mode that is
//! the copy plus a few checks and the pool's counter.
//!
//! The peer ("memcpy") copies the same number of bytes between the same kinds of memory:
//! from (or to) wired `BufferMemoryDescriptor`s made with the same options through the
//! same host (memfd pages, `mlock`ed), to (or from) a physically contiguous
//! `BufferMemoryDescriptor` (one 2 MiB hugepage, as the bounce buffer is), each lent as a
//! slice for the chunk and copied with `copy_from_slice`. Sizes are 64 KiB, 1 MiB and
//! 2 MiB (a bounce buffer is at most one hugepage here) over one wired buffer, and 1 MiB
//! over a [`MultiMemoryDescriptor`] of 16 wired 64 KiB buffers (`_multi16`, one copy per
//! part on both sides). A chunk is about 4 MiB of copies; both sides are touched before
//! timing, so no page faults are measured.

use crate::harness::{compare, Paired, Plan, Side};
use crate::progress::Progress;
use crate::{measure, Options, Row, CONTROL_PEER};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
};
use dmakit::dma::{BouncePool, CompleteOptions, DmaCommand, PrepareOptions, SegmentSpec};
use dmakit::{Direction, Result};
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

/// The memcpy peer: wired source parts and one contiguous destination.
struct Peer {
    parts: Vec<Buf>,
    dest: Buf,
}

impl Peer {
    fn new(host: &H, parts: usize, part_len: u64) -> Result<Peer> {
        let parts = (0..parts)
            .map(|_| wired(host, part_len))
            .collect::<Result<Vec<_>>>()?;
        let dest = contiguous(host, part_len * parts.len() as u64)?;
        let mut p = Peer { parts, dest };
        p.copy(Direction::Out, 1);
        p.copy(Direction::In, 1);
        Ok(p)
    }

    /// `copies` copies of everything: parts → destination for `Out`, back for `In`.
    fn copy(&mut self, dir: Direction, copies: u64) -> usize {
        let len = self.dest.length();
        let mut n = 0;
        if dir == Direction::Out {
            let Ok(mut dest) = self.dest.bytes_no_copy_mut(0, len) else {
                return 0;
            };
            let srcs: Vec<_> = self
                .parts
                .iter()
                .filter_map(|p| p.bytes_no_copy(0, p.length()).ok())
                .collect();
            for _ in 0..copies {
                let mut at = 0;
                for s in &srcs {
                    dest[at..at + s.len()].copy_from_slice(s);
                    at += s.len();
                }
                n += at;
            }
        } else {
            let Ok(src) = self.dest.bytes_no_copy(0, len) else {
                return 0;
            };
            let mut dsts: Vec<_> = self
                .parts
                .iter_mut()
                .filter_map(|p| {
                    let l = p.length();
                    p.bytes_no_copy_mut(0, l).ok()
                })
                .collect();
            for _ in 0..copies {
                let mut at = 0;
                for d in dsts.iter_mut() {
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

fn versus(plan: &Plan, cmd: &DmaCommand<H>, peer: &mut Peer, dir: Direction) -> Paired {
    let copies = (CHUNK_BYTES / peer.dest.length()).max(1);
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
    let mut peer = Peer::new(host, parts, part_len)?;
    let md: Arc<dyn MemoryDescriptor> = if parts == 1 {
        Arc::new(wired(host, part_len)?)
    } else {
        let ps = (0..parts)
            .map(|_| Ok(Arc::new(wired(host, part_len)?) as Arc<dyn MemoryDescriptor>))
            .collect::<Result<Vec<_>>>()?;
        Arc::new(MultiMemoryDescriptor::new(ps, Direction::InOut)?)
    };
    let mut cmd = bounced(host, md)?;
    let mut rows = vec![measure(
        p,
        &format!("dma/bounce_copy_{name}_out"),
        "memcpy",
        || versus(plan, &cmd, &mut peer, Direction::Out),
    )];
    if both {
        rows.push(measure(
            p,
            &format!("dma/bounce_copy_{name}_in"),
            "memcpy",
            || versus(plan, &cmd, &mut peer, Direction::In),
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
    let peer = std::cell::RefCell::new(Peer::new(host, 1, 1 << 20)?);
    let copies = CHUNK_BYTES >> 20;
    let ops = (copies * CHUNKS as u64) as f64;
    rows.push(measure(p, "dma/a_a", CONTROL_PEER, || {
        compare(
            plan,
            CHUNKS,
            Side::new(ops, |_| peer.borrow_mut().copy(Direction::Out, copies)),
            Side::new(ops, |_| peer.borrow_mut().copy(Direction::Out, copies)),
        )
    }));
    Ok(rows)
}
