//! `range/*`: [`RangeAllocator`](dmakit::alloc::RangeAllocator) against the
//! `offset-allocator` crate (freeing by handle, and by address through a hash map) and the
//! `xalloc` crate's TLSF at 1k, 10k, 100k and 1M live ranges, and against two O(n) allocators (the `range-alloc` crate and XNU's sorted-list
//! first fit) at 1k and 10k.
//!
//! ## Workloads
//!
//! Two workloads ([`workload::Kind`]), generated once from a fixed seed and replayed
//! identically, step for step, by every contender. Each starts (untimed) with its live
//! ranges allocated, one per slot; a step frees what one slot holds and allocates a new
//! size into it, so the live count stays put and an operation is one free or one
//! allocation (two per step):
//!
//! * `mixed_4k_1m`: sizes uniform in 4 KiB–1 MiB, random slot freed;
//! * `iova_churn`: page-multiple sizes, mostly one or two pages, the slot freed one of the
//!   eight oldest (FIFO-ish), the churn of an IOMMU's IO virtual address space.
//!
//! The space is three times the expected live pages, so no contender runs out (a failed
//! allocation would be counted and reported, and the tests check there are none).
//!
//! ## Contenders
//!
//! Every comparison is like for like in how a range is freed: by the handle its allocation
//! returned (no lookup), or by `(start, size)` as IOKit callers free (a lookup by address).
//!
//! By handle, against `dmakit` through `allocate_handle(size, 0)` and
//! `deallocate_handle(handle)` (`RangeAllocator` in bytes, default alignment 4 KiB):
//!
//! * `offset-allocator`: a TLSF-style allocator of `u32` page units, nodes preallocated,
//!   freed by its `Allocation`. The main row.
//! * `xalloc tlsf`: `xalloc::SysTlsf<u64>` in page units, nodes from the system allocator,
//!   freed by its region handle.
//!
//! By address, against `dmakit` through `allocate(size, 0)` and `deallocate(start, size)`:
//!
//! * `offset-allocator + address map`: offset-allocator as a caller that frees by address
//!   must use it, with a map from each allocation's offset to its `Allocation`, filled on
//!   allocation and emptied on free. The map is `hashbrown`'s table with its default
//!   hasher (foldhash), sized for the live count up front: the fastest general-purpose
//!   map at hand (std's `HashMap` is the same table with SipHash, slower on integer keys),
//!   so that the peer pays as little as a careful user would.
//! * `range-alloc`: best fit over a sorted `Vec` of free ranges (O(n) a call).
//! * `xnu-style first fit`: XNU's IORangeAllocator algorithm, a sorted `Vec` of free
//!   intervals scanned linearly. The O(n) two run at 1k and 10k live ranges only: at 1M a
//!   single row would take many minutes.
//!
//! Each row's name is `range/<workload>/<live ranges>` and its peer names the contender;
//! the dmakit side is the handle or address interface as above, on its own instance (one
//! for the handle rows, one for the address rows, each carried from row to row).
//!
//! ## Fairness
//!
//! * **Same work, same state.** Every contender replays the same steps from the same
//!   prefilled live set, on its own instance; dmakit's instance and the peer's run chunk
//!   by chunk, interleaved (see [`harness`](crate::harness)): a chunk of 4,096 steps
//!   (1,024 when quick) of one, then the same chunk of the other, order alternating.
//!   The state evolves with every repetition on both sides alike (a step frees and
//!   reallocates a slot, so replaying a chunk again is valid work).
//! * **Units.** offset-allocator and xalloc work in page units (every size is a whole
//!   number of pages, so page alignment is implicit); dmakit, range-alloc and the
//!   XNU-style list work in bytes. offset-allocator also has no fixed-range allocation, no
//!   alignment argument, no double-free or stale-handle detection (dmakit checks every
//!   handle it is given), no `u64` space and a node count fixed at construction. These
//!   asymmetries favour the TLSF peers.
//! * **Slots.** Every contender's slot holds what its allocation returned and the size in
//!   pages (the by-address frees need the size; the handle frees ignore it), so the slot
//!   table is 24 bytes a live range for dmakit's 16-byte `RangeHandle` and 12 for
//!   offset-allocator's 8-byte `Allocation`. A table of bare handles (16 and 8 bytes)
//!   moved the `iova_churn` rows against dmakit by 1–8 % in three paired runs on the
//!   machine of `BENCHMARKS.md` (1k 0.92–0.97 → 1.00, 10k 0.90 → 0.92, 100k 0.98–1.01 →
//!   1.02–1.03, 1M 0.97–0.99 → 1.00): the `Allocation` fits in one register, and a
//!   `RangeHandle` carries its start and size so that a stale handle is refused. A driver
//!   that keeps bare handles pays that difference.
//! * **A/A.** `range/a_a` is offset-allocator against itself on the same work (mixed
//!   sizes, 10k live): one instance on both sides, chunk by chunk.

pub mod contenders;
pub mod workload;

use crate::harness::{compare, Paired, Plan, Side};
use crate::progress::Progress;
use crate::{measure, Options, Row, CONTROL_PEER};
use contenders::{
    Contender, Dmakit, DmakitHandle, Live, NaiveFirstFit, OffsetAllocator,
    OffsetAllocatorByAddress, RangeAlloc, XallocTlsf,
};
use workload::{Kind, Workload};

/// Live-range counts and their names.
pub const SIZES: [(usize, &str); 4] = [
    (1_000, "1k"),
    (10_000, "10k"),
    (100_000, "100k"),
    (1_000_000, "1M"),
];
/// Chunks per pass.
const CHUNKS: usize = 16;
/// Steps per chunk for the O(n) peers.
const SLOW_STEPS: usize = 128;

fn steps_per_chunk(opts: &Options) -> usize {
    if opts.quick {
        1024
    } else {
        4096
    }
}

/// Rows the group plans.
pub fn planned(_opts: &Options) -> usize {
    // Per workload: three rows at every size (offset-allocator by handle and with an
    // address map, xalloc), two more at the two smallest (the O(n) peers); one A/A row.
    2 * (SIZES.len() * 3 + 2 * 2) + 1
}

/// `steps` cut into [`CHUNKS`] chunks: chunk `c` by number, and the operations a pass over
/// them makes (a free and an allocation per step).
fn chunked<'s>(steps: &'s [(u32, u32)]) -> (impl Fn(usize) -> &'s [(u32, u32)] + 's, f64) {
    let per = (steps.len() / CHUNKS).max(1);
    let chunk =
        move |c: usize| &steps[(c * per).min(steps.len())..((c + 1) * per).min(steps.len())];
    (chunk, 2.0 * (per * CHUNKS).min(steps.len()) as f64)
}

/// Times `a` against `b` over `steps` cut into 16 chunks.
pub fn compare_live<A: Contender, B: Contender>(
    plan: &Plan,
    steps: &[(u32, u32)],
    a: &mut Live<A>,
    b: &mut Live<B>,
) -> Paired {
    let (chunk, ops) = chunked(steps);
    compare(
        plan,
        CHUNKS,
        Side::new(ops, |c| a.run(chunk(c))),
        Side::new(ops, |c| b.run(chunk(c))),
    )
}

/// Times `a` against itself over `steps` cut into 16 chunks, as [`compare_live`] does: the
/// A/A control. The same instance on both sides, its state carried from chunk to chunk
/// (two instances differ by where their memory landed, a real difference that is not the
/// method's noise).
pub fn compare_self<A: Contender>(plan: &Plan, steps: &[(u32, u32)], a: &mut Live<A>) -> Paired {
    let (chunk, ops) = chunked(steps);
    let a = std::cell::RefCell::new(a);
    compare(
        plan,
        CHUNKS,
        Side::new(ops, |c| a.borrow_mut().run(chunk(c))),
        Side::new(ops, |c| a.borrow_mut().run(chunk(c))),
    )
}

/// One row: `ours` against a fresh `P` on `steps`; notes how many allocations `P` failed.
fn row<A: Contender, P: Contender>(
    ctx: &mut Ctx<'_>,
    steps: &[(u32, u32)],
    ours: &mut Live<A>,
) -> Row {
    let mut peer = Live::<P>::new(ctx.w.space_units, &ctx.w.prefill);
    let r = measure(ctx.p, &ctx.name, P::NAME, || {
        compare_live(ctx.plan, steps, ours, &mut peer)
    });
    ctx.failed.push((P::NAME, peer.failed));
    r
}

/// What the rows of one workload share.
struct Ctx<'a> {
    w: &'a Workload,
    name: String,
    plan: &'a Plan,
    p: &'a mut Progress,
    /// Allocations each contender failed.
    failed: Vec<(&'static str, u64)>,
}

/// The rows where both sides free by handle: dmakit's `deallocate_handle` against
/// offset-allocator (and the A/A control, when asked) and xalloc's TLSF.
fn handle_rows(ctx: &mut Ctx<'_>, a_a: bool) -> Vec<Row> {
    let w = ctx.w;
    let mut ours = Live::<DmakitHandle>::new(w.space_units, &w.prefill);
    let mut rows = Vec::new();
    let mut peer = Live::<OffsetAllocator>::new(w.space_units, &w.prefill);
    rows.push(measure(ctx.p, &ctx.name, OffsetAllocator::NAME, || {
        compare_live(ctx.plan, &w.steps, &mut ours, &mut peer)
    }));
    ctx.failed.push((OffsetAllocator::NAME, peer.failed));
    if a_a {
        rows.push(measure(ctx.p, "range/a_a", CONTROL_PEER, || {
            compare_self(ctx.plan, &w.steps, &mut peer)
        }));
        ctx.failed.push((OffsetAllocator::NAME, peer.failed));
    }
    drop(peer);
    rows.push(row::<_, XallocTlsf>(ctx, &w.steps, &mut ours));
    ctx.failed.push((DmakitHandle::NAME, ours.failed));
    rows
}

/// The rows where both sides free by `(start, size)`: dmakit's `deallocate` against
/// offset-allocator with an address map, and (at 10k live ranges or fewer) the O(n)
/// range-alloc and XNU-style list.
fn address_rows(ctx: &mut Ctx<'_>) -> Vec<Row> {
    let w = ctx.w;
    let mut ours = Live::<Dmakit>::new(w.space_units, &w.prefill);
    let mut rows = vec![row::<_, OffsetAllocatorByAddress>(ctx, &w.steps, &mut ours)];
    if w.live() <= 10_000 {
        let slow = &w.steps[..(SLOW_STEPS * CHUNKS).min(w.steps.len())];
        rows.push(row::<_, RangeAlloc>(ctx, slow, &mut ours));
        rows.push(row::<_, NaiveFirstFit>(ctx, slow, &mut ours));
    }
    ctx.failed.push((Dmakit::NAME, ours.failed));
    rows
}

fn rows_for(w: &Workload, label: &str, plan: &Plan, p: &mut Progress, a_a: bool) -> Vec<Row> {
    let mut ctx = Ctx {
        w,
        name: format!("range/{}/{label}", w.kind.name()),
        plan,
        p,
        failed: Vec::new(),
    };
    let mut rows = handle_rows(&mut ctx, a_a);
    rows.extend(address_rows(&mut ctx));
    for (who, n) in ctx.failed.into_iter().filter(|f| f.1 > 0) {
        crate::progress::note(format_args!(
            "{}: {who} failed {n} allocations (its rows did less work)",
            ctx.name
        ));
    }
    rows
}

/// Runs the group.
pub fn run(opts: &Options, p: &mut Progress) -> Vec<Row> {
    let plan = Plan::for_options(opts);
    let steps = steps_per_chunk(opts) * CHUNKS;
    let mut rows = Vec::new();
    for kind in [Kind::Mixed, Kind::Churn] {
        for (live, label) in SIZES {
            let w = Workload::new(kind, live, steps, 0xD3A);
            let a_a = kind == Kind::Mixed && live == 10_000;
            rows.extend(rows_for(&w, label, &plan, p, a_a));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<C: Contender>(w: &Workload) {
        let mut l = Live::<C>::new(w.space_units, &w.prefill);
        l.run(&w.steps);
        l.run(&w.steps);
        assert_eq!(l.failed, 0, "{} failed on {:?}", C::NAME, w.kind);
    }

    #[test]
    fn no_contender_fails_on_either_workload() {
        for kind in [Kind::Mixed, Kind::Churn] {
            let w = Workload::new(kind, 10_000, 20_000, 7);
            check::<Dmakit>(&w);
            check::<DmakitHandle>(&w);
            check::<OffsetAllocator>(&w);
            check::<OffsetAllocatorByAddress>(&w);
            check::<XallocTlsf>(&w);
            check::<RangeAlloc>(&w);
            check::<NaiveFirstFit>(&w);
        }
    }

    #[test]
    fn churn_frees_the_oldest_and_mixed_frees_anywhere() {
        let churn = Workload::new(Kind::Churn, 1000, 3000, 1);
        for (i, &(slot, units)) in churn.steps.iter().enumerate() {
            let back = (slot as usize + 1000 - i % 1000) % 1000;
            assert!(back < 8, "step {i} frees slot {slot}");
            assert!([1, 2, 4, 16].contains(&units));
        }
        let mixed = Workload::new(Kind::Mixed, 1000, 3000, 1);
        let far = mixed
            .steps
            .iter()
            .enumerate()
            .filter(|(i, s)| (s.0 as usize + 1000 - i % 1000) % 1000 >= 8)
            .count();
        assert!(far > 2000, "{far}");
        assert!(mixed.steps.iter().all(|s| (1..=256).contains(&s.1)));
    }

    #[test]
    fn the_naive_list_allocates_first_fit_and_merges() {
        use contenders::{BASE, UNIT};
        use std::num::NonZeroU64;
        let mut n = NaiveFirstFit::new(8, 0);
        let a = n.alloc(2).unwrap();
        let b = n.alloc(2).unwrap();
        assert_eq!((a.get(), b.get()), (BASE, BASE + 2 * UNIT));
        n.free(a, 2);
        assert_eq!(n.alloc(1).unwrap().get(), BASE, "lowest fit first");
        n.free(NonZeroU64::new(BASE).unwrap(), 1);
        n.free(b, 2);
        assert_eq!(n.free, [(BASE, BASE + 8 * UNIT)]);
    }
}
