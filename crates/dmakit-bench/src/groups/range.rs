//! `range_alloc/*`: [`RangeAllocator`](dmakit::alloc::RangeAllocator) against the
//! `offset-allocator` crate, the `range-alloc` crate, and a naive sorted-list first fit
//! (how XNU's IORangeAllocator works: a sorted array of free intervals, scanned linearly).
//!
//! ## Workloads
//!
//! Two workloads, generated once from a fixed seed (outside any timed region) and replayed
//! identically, operation for operation, by every contender:
//!
//! * `mixed_4k_1m`: sizes uniform in 4 KiB–1 MiB (multiples of 4 KiB, so 4 KiB aligned),
//!   about 10,000 live, random allocations and frees;
//! * `iova_churn`: single 4 KiB pages (80 %) and 64 KiB chunks (20 %), about 2,000 live,
//!   the churn of an IOMMU's IO virtual address space.
//!
//! A workload first allocates up to its live target, then allocates with probability 0.6
//! below the target and 0.4 above it; a free picks a random live allocation. Full mode
//! replays 1,000,000 operations, quick mode 100,000.
//!
//! ## Contenders
//!
//! * `dmakit`: [`RangeAllocator`](dmakit::alloc::RangeAllocator) with a default alignment
//!   of 4 KiB, through IOKit's interface: `allocate(size, 0)`, `deallocate(start, size)`.
//! * `offset-allocator`: a TLSF-style allocator of `u32` offsets (size classes with a
//!   two-level bitmap, nodes preallocated), the speed reference.
//! * `range-alloc`: best fit over a sorted `Vec` of free ranges (O(n) per call).
//! * `xnu-style first fit`: written here, XNU's IORangeAllocator algorithm: a sorted `Vec`
//!   of free intervals, first fit by linear scan, binary search to insert and merge on free.
//!
//! ## Fairness
//!
//! * **Same work.** Every contender replays the same operations, and a free gives back
//!   exactly what the matching allocation got.
//! * **Units.** offset-allocator works in `u32` *units*, so it is given 4 KiB units (one
//!   unit per page; every size is a whole number of pages, so 4 KiB alignment is implicit
//!   and it does the same placement work). The others work in bytes. Their space starts at
//!   4 GiB (an IO address space rarely starts at 0), which also lets a start address serve
//!   as a non-zero handle.
//! * **Handles.** Each contender frees through its own interface: dmakit (like IOKit),
//!   range-alloc and the XNU-style list by `(start, size)`, the size coming from the
//!   workload as a caller would know it; offset-allocator by the `Allocation` its allocate
//!   returned, which carries its node index. So offset-allocator's free needs no lookup
//!   while dmakit's finds the block by its start in a hash table first: one more dependent
//!   memory access per free. offset-allocator also has no fixed-range allocation, no
//!   alignment argument, no double-free detection, no `u64` space and a node count fixed at
//!   construction. These asymmetries favour offset-allocator. Every handle is stored in an
//!   8-byte `Option` slot.
//! * **Timing.** Each repetition builds a fresh allocator and slot table *before* starting
//!   the clock (offset-allocator preallocates and touches 128 Ki nodes at construction;
//!   dmakit grows its node slab and hash during the run) and drops them after stopping it.
//!   The contenders run one after the other on the same thread; dmakit and
//!   offset-allocator alternate repetition by repetition, swapping which goes first, and
//!   each row reports the medians.
//! * **Failures.** An operation is one allocate or one free. A contender that fails an
//!   allocation skips the matching free, and its time is divided by the calls it actually
//!   made; the spaces (16 GiB and 4 GiB) are sized so that no contender fails, which the
//!   tests check.

use crate::{Options, Row};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::num::NonZeroU64;

/// Bytes per unit: one page.
const UNIT: u64 = 4096;
/// Where the byte-addressed contenders' space starts.
const BASE: u64 = 1 << 32;

/// One step of a workload.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Allocate `units` pages into slot `slot`.
    Alloc {
        /// Slot index.
        slot: u32,
        /// Size in 4 KiB units.
        units: u32,
    },
    /// Free what slot `slot` holds (allocated with `units` pages).
    Free {
        /// Slot index.
        slot: u32,
        /// Size in 4 KiB units, as the matching `Alloc` asked.
        units: u32,
    },
}

/// A generated workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Its name (the row name).
    pub name: &'static str,
    /// The steps.
    pub ops: Vec<Op>,
    /// Number of slots used.
    pub slots: usize,
    /// Size of the space in units.
    pub space_units: u32,
}

/// Generates a workload of `n` operations keeping about `live` allocations, sizes (in
/// units) drawn by `size`.
pub fn generate(
    name: &'static str,
    n: usize,
    live: usize,
    space_units: u32,
    seed: u64,
    mut size: impl FnMut(&mut ChaCha8Rng) -> u32,
) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // (slot, units) of the live allocations.
    let mut occupied: Vec<(u32, u32)> = Vec::new();
    let mut free_slots: Vec<u32> = Vec::new();
    let mut slots = 0u32;
    let mut ops = Vec::with_capacity(n);
    while ops.len() < n {
        // Fill up to `live` first, then hover around it.
        let below = occupied.len() < live;
        let alloc = occupied.is_empty()
            || (ops.len() < live && below)
            || (occupied.len() < 2 * live && rng.gen_bool(if below { 0.6 } else { 0.4 }));
        if alloc {
            let slot = free_slots.pop().unwrap_or_else(|| {
                slots += 1;
                slots - 1
            });
            let units = size(&mut rng);
            ops.push(Op::Alloc { slot, units });
            occupied.push((slot, units));
        } else {
            let i = rng.gen_range(0..occupied.len());
            let (slot, units) = occupied.swap_remove(i);
            ops.push(Op::Free { slot, units });
            free_slots.push(slot);
        }
    }
    Workload {
        name,
        ops,
        slots: slots as usize,
        space_units,
    }
}

/// The two workloads.
pub fn workloads(opts: &Options) -> [Workload; 2] {
    let n = if opts.quick { 100_000 } else { 1_000_000 };
    [
        generate("range_alloc/mixed_4k_1m", n, 10_000, 4 << 20, 0xD3A, |r| {
            r.gen_range(1..=256)
        }),
        generate("range_alloc/iova_churn", n, 2_000, 1 << 20, 0x10A, |r| {
            if r.gen_bool(0.8) {
                1
            } else {
                16
            }
        }),
    ]
}

/// An allocator under test.
pub trait Contender {
    /// What a successful allocation returns and the matching free takes.
    type Handle: Copy;
    /// Its name in the table.
    const NAME: &'static str;
    /// A fresh allocator over `units` 4 KiB units.
    fn new(units: u32) -> Self;
    /// Allocates `units` units.
    fn alloc(&mut self, units: u32) -> Option<Self::Handle>;
    /// Frees an allocation of `units` units.
    fn free(&mut self, h: Self::Handle, units: u32);
}

/// What a replay did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Calls made: every allocation attempted, every free of a slot that holds something.
    pub ops: u64,
    /// Allocations that failed (their slot's free is skipped).
    pub failed: u64,
}

/// Replays `w` on `c`, keeping handles in `slots` (all `None`, at least `w.slots` long).
pub fn replay_on<C: Contender>(
    c: &mut C,
    slots: &mut [Option<C::Handle>],
    w: &Workload,
) -> Outcome {
    let mut out = Outcome { ops: 0, failed: 0 };
    for op in &w.ops {
        match *op {
            Op::Alloc { slot, units } => {
                let h = c.alloc(units);
                out.ops += 1;
                out.failed += h.is_none() as u64;
                slots[slot as usize] = h;
            }
            Op::Free { slot, units } => {
                if let Some(h) = slots[slot as usize].take() {
                    c.free(h, units);
                    out.ops += 1;
                }
            }
        }
    }
    out
}

/// Replays `w` on a fresh `C`.
pub fn replay<C: Contender>(w: &Workload) -> Outcome {
    let mut c = C::new(w.space_units);
    let mut slots = vec![None; w.slots];
    replay_on(&mut c, &mut slots, w)
}

/// dmakit's `RangeAllocator`, in bytes, default alignment 4 KiB.
pub struct Dmakit(dmakit::alloc::RangeAllocator);

impl Contender for Dmakit {
    type Handle = NonZeroU64;
    const NAME: &'static str = "dmakit";
    fn new(units: u32) -> Self {
        Dmakit(
            dmakit::alloc::RangeAllocator::new(BASE, units as u64 * UNIT, UNIT)
                .expect("valid space"),
        )
    }
    fn alloc(&mut self, units: u32) -> Option<NonZeroU64> {
        self.0
            .allocate(units as u64 * UNIT, 0)
            .ok()
            .and_then(NonZeroU64::new)
    }
    fn free(&mut self, start: NonZeroU64, units: u32) {
        self.0
            .deallocate(start.get(), units as u64 * UNIT)
            .expect("bench frees only what it allocated");
    }
}

/// The `offset-allocator` crate, in 4 KiB units.
pub struct OffsetAllocator(offset_allocator::Allocator);

impl Contender for OffsetAllocator {
    type Handle = offset_allocator::Allocation;
    const NAME: &'static str = "offset-allocator";
    fn new(units: u32) -> Self {
        OffsetAllocator(offset_allocator::Allocator::new(units))
    }
    fn alloc(&mut self, units: u32) -> Option<offset_allocator::Allocation> {
        self.0.allocate(units)
    }
    fn free(&mut self, h: offset_allocator::Allocation, _units: u32) {
        self.0.free(h);
    }
}

/// The `range-alloc` crate, in bytes.
pub struct RangeAlloc(range_alloc::RangeAllocator<u64>);

impl Contender for RangeAlloc {
    type Handle = NonZeroU64;
    const NAME: &'static str = "range-alloc";
    fn new(units: u32) -> Self {
        RangeAlloc(range_alloc::RangeAllocator::new(
            BASE..BASE + units as u64 * UNIT,
        ))
    }
    fn alloc(&mut self, units: u32) -> Option<NonZeroU64> {
        self.0
            .allocate_range(units as u64 * UNIT)
            .ok()
            .and_then(|r| NonZeroU64::new(r.start))
    }
    fn free(&mut self, start: NonZeroU64, units: u32) {
        let s = start.get();
        self.0.free_range(s..s + units as u64 * UNIT);
    }
}

/// XNU's way: a sorted vector of free intervals `[start, end)`, first fit by linear scan,
/// binary-search insertion and merging on free.
pub struct NaiveFirstFit {
    free: Vec<(u64, u64)>,
}

impl Contender for NaiveFirstFit {
    type Handle = NonZeroU64;
    const NAME: &'static str = "xnu-style first fit";
    fn new(units: u32) -> Self {
        NaiveFirstFit {
            free: vec![(BASE, BASE + units as u64 * UNIT)],
        }
    }
    fn alloc(&mut self, units: u32) -> Option<NonZeroU64> {
        let size = units as u64 * UNIT;
        let i = self.free.iter().position(|&(s, e)| e - s >= size)?;
        let (s, e) = self.free[i];
        if e - s == size {
            self.free.remove(i);
        } else {
            self.free[i].0 = s + size;
        }
        NonZeroU64::new(s)
    }
    fn free(&mut self, start: NonZeroU64, units: u32) {
        let (s, e) = (start.get(), start.get() + units as u64 * UNIT);
        let i = self.free.partition_point(|&(fs, _)| fs < s);
        let merge_prev = i > 0 && self.free[i - 1].1 == s;
        let merge_next = i < self.free.len() && self.free[i].0 == e;
        match (merge_prev, merge_next) {
            (true, true) => {
                self.free[i - 1].1 = self.free[i].1;
                self.free.remove(i);
            }
            (true, false) => self.free[i - 1].1 = e,
            (false, true) => self.free[i].0 = s,
            (false, false) => self.free.insert(i, (s, e)),
        }
    }
}

/// One timed replay: a fresh `C` and slot table are built before the clock starts and
/// dropped after it stops. Returns nanoseconds per operation and what was done.
pub fn time_once<C: Contender>(w: &Workload) -> (f64, Outcome) {
    let mut c = C::new(w.space_units);
    let mut slots = vec![None; w.slots];
    let t = std::time::Instant::now();
    let out = replay_on(&mut c, &mut slots, w);
    let ns = t.elapsed().as_nanos() as f64;
    std::hint::black_box((&c, &slots));
    (ns / out.ops.max(1) as f64, out)
}

/// Median nanoseconds per operation of `reps` replays of `w` on `C`.
pub fn time<C: Contender>(w: &Workload, reps: usize) -> f64 {
    crate::timing::median((0..reps.max(1)).map(|_| time_once::<C>(w).0).collect())
}

/// The rows of one workload: dmakit against each peer. dmakit and offset-allocator, the
/// close contest, alternate repetition by repetition (the one that goes first swapping each
/// time), so that a noisy moment or the state another contender left behind hits both
/// alike; the two slow peers, orders of magnitude apart, are timed afterwards.
pub fn rows(w: &Workload, reps: usize) -> Vec<Row> {
    let reps = reps.max(1);
    let (mut ours, mut offset) = (Vec::new(), Vec::new());
    for i in 0..reps {
        if i % 2 == 0 {
            ours.push(time_once::<Dmakit>(w).0);
            offset.push(time_once::<OffsetAllocator>(w).0);
        } else {
            offset.push(time_once::<OffsetAllocator>(w).0);
            ours.push(time_once::<Dmakit>(w).0);
        }
    }
    let ours = crate::timing::median(ours);
    vec![
        Row::new(
            w.name,
            OffsetAllocator::NAME,
            ours,
            crate::timing::median(offset),
        ),
        Row::new(w.name, RangeAlloc::NAME, ours, time::<RangeAlloc>(w, reps)),
        Row::new(
            w.name,
            NaiveFirstFit::NAME,
            ours,
            time::<NaiveFirstFit>(w, reps),
        ),
    ]
}

/// Runs the group.
pub fn run(opts: &Options) -> Vec<Row> {
    let reps = if opts.quick { 3 } else { 7 };
    workloads(opts).iter().flat_map(|w| rows(w, reps)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_contender_fails_and_all_do_the_same_calls() {
        for w in workloads(&Options { quick: true }) {
            let w = Workload {
                ops: w.ops[..30_000].to_vec(),
                ..w
            };
            let want = Outcome {
                ops: w.ops.len() as u64,
                failed: 0,
            };
            assert_eq!(replay::<Dmakit>(&w), want, "{}", w.name);
            assert_eq!(replay::<OffsetAllocator>(&w), want, "{}", w.name);
            assert_eq!(replay::<RangeAlloc>(&w), want, "{}", w.name);
            assert_eq!(replay::<NaiveFirstFit>(&w), want, "{}", w.name);
        }
    }

    #[test]
    fn workloads_hover_around_their_live_target() {
        let [mixed, churn] = workloads(&Options { quick: true });
        for (w, target) in [(mixed, 10_000i64), (churn, 2_000)] {
            let mut live = 0i64;
            let mut sum = 0i64;
            for op in &w.ops {
                live += match op {
                    Op::Alloc { .. } => 1,
                    Op::Free { .. } => -1,
                };
                sum += live;
            }
            let mean = sum / w.ops.len() as i64;
            assert!(
                (target * 3 / 4..=target * 5 / 4).contains(&mean),
                "{}: mean live {mean}",
                w.name
            );
            assert_eq!(w.ops.len(), 100_000);
        }
    }

    #[test]
    fn the_naive_list_allocates_first_fit_and_merges() {
        let mut n = NaiveFirstFit::new(8);
        let a = n.alloc(2).unwrap();
        let b = n.alloc(2).unwrap();
        assert_eq!((a.get(), b.get()), (BASE, BASE + 2 * UNIT));
        n.free(a, 2);
        assert_eq!(n.alloc(1).unwrap().get(), BASE, "lowest fit first");
        n.free(NonZeroU64::new(BASE).unwrap(), 1);
        n.free(b, 2);
        assert_eq!(n.free, [(BASE, BASE + 8 * UNIT)]);
    }

    #[test]
    fn a_tiny_run_gives_well_formed_rows() {
        let w = generate("t", 2_000, 100, 1 << 16, 1, |r| r.gen_range(1..=4));
        let rows = rows(&w, 1);
        assert_eq!(rows.len(), 3);
        for row in &rows {
            assert_eq!(row.name, "t");
            assert!(row.ns_per_op.is_finite() && row.ns_per_op > 0.0, "{row:?}");
            assert!(
                row.peer_ns_per_op.is_finite() && row.peer_ns_per_op > 0.0,
                "{row:?}"
            );
            assert_eq!(row.ratio, row.ns_per_op / row.peer_ns_per_op);
        }
        let dir = std::env::temp_dir().join(format!("dmakit-bench-range-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rows.json");
        crate::write_json(&rows, &path).unwrap();
        let back: Vec<Row> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back.len(), rows.len());
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
        for (b, r) in back.iter().zip(&rows) {
            assert_eq!((&b.name, &b.peer), (&r.name, &r.peer));
            assert!(close(b.ns_per_op, r.ns_per_op) && close(b.peer_ns_per_op, r.peer_ns_per_op));
            assert!(close(b.ratio, r.ratio));
        }
    }
}
