//! `range_alloc/*`: [`RangeAllocator`](dmakit::alloc::RangeAllocator) against the
//! `offset-allocator` crate, the `range-alloc` crate, and a naive sorted-list first fit
//! (how XNU's IORangeAllocator works: a sorted array of free intervals, scanned linearly).
//!
//! Two workloads, generated once from a fixed seed and replayed identically for every
//! contender:
//!
//! * `mixed_4k_1m`: sizes uniform in 4 KiB–1 MiB (multiples of 4 KiB), about 10,000 live,
//!   random allocations and frees;
//! * `iova_churn`: single 4 KiB pages (80 %) and 64 KiB chunks (20 %), about 2,000 live,
//!   the churn of an IOMMU's IO virtual address space.
//!
//! Units: offset-allocator works in `u32` "units", so it is given 4 KiB units (one unit per
//! page; alignment to 4 KiB is then implicit). dmakit, range-alloc and the naive list work
//! in bytes with every size a multiple of 4 KiB, so all four do the same placement work.
//! dmakit frees by `(start, size)` as IOKit does; offset-allocator frees by the handle its
//! allocate returned (which carries its node index), so it does no lookup at all on free.
//! An operation is one allocate or one free; a contender that fails an allocation skips the
//! matching free (the space is sized so none fails).

use crate::timing::median_ns_per_op;
use crate::{Options, Row};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const UNIT: u64 = 4096;

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
    /// Free what slot `slot` holds.
    Free {
        /// Slot index.
        slot: u32,
    },
}

/// A generated workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Its name.
    pub name: &'static str,
    /// The steps.
    pub ops: Vec<Op>,
    /// Number of slots used.
    pub slots: usize,
    /// Size of the space in units.
    pub space_units: u32,
}

/// Generates a workload of `n` operations keeping about `live` allocations, sizes drawn by
/// `size`.
pub fn generate(
    name: &'static str,
    n: usize,
    live: usize,
    space_units: u32,
    seed: u64,
    mut size: impl FnMut(&mut ChaCha8Rng) -> u32,
) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut occupied: Vec<u32> = Vec::new();
    let mut free_slots: Vec<u32> = Vec::new();
    let mut slots = 0u32;
    let mut ops = Vec::with_capacity(n);
    while ops.len() < n {
        let alloc = occupied.len() < live / 2 || (occupied.len() < live * 2 && rng.gen_bool(0.5));
        if alloc {
            let slot = free_slots.pop().unwrap_or_else(|| {
                slots += 1;
                slots - 1
            });
            ops.push(Op::Alloc {
                slot,
                units: size(&mut rng),
            });
            occupied.push(slot);
        } else {
            let i = rng.gen_range(0..occupied.len());
            let slot = occupied.swap_remove(i);
            ops.push(Op::Free { slot });
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

/// An allocator under test.
pub trait Contender {
    /// What a successful allocation returns.
    type Handle: Copy;
    /// Its name in the table.
    const NAME: &'static str;
    /// A fresh allocator over `units` 4 KiB units.
    fn new(units: u32) -> Self;
    /// Allocates `units` units.
    fn alloc(&mut self, units: u32) -> Option<Self::Handle>;
    /// Frees an allocation.
    fn free(&mut self, h: Self::Handle);
}

/// Replays `w` on a fresh `C`; returns how many allocations failed.
pub fn replay<C: Contender>(w: &Workload) -> usize {
    let mut c = C::new(w.space_units);
    let mut slots: Vec<Option<C::Handle>> = vec![None; w.slots];
    let mut failed = 0;
    for op in &w.ops {
        match *op {
            Op::Alloc { slot, units } => {
                let h = c.alloc(units);
                failed += h.is_none() as usize;
                slots[slot as usize] = h;
            }
            Op::Free { slot } => {
                if let Some(h) = slots[slot as usize].take() {
                    c.free(h);
                }
            }
        }
    }
    failed
}

/// dmakit's RangeAllocator, in bytes, default alignment 4 KiB.
pub struct Dmakit(dmakit::alloc::RangeAllocator);

impl Contender for Dmakit {
    type Handle = (u64, u64);
    const NAME: &'static str = "dmakit";
    fn new(units: u32) -> Self {
        Dmakit(
            dmakit::alloc::RangeAllocator::new(0, units as u64 * UNIT, UNIT).expect("valid space"),
        )
    }
    fn alloc(&mut self, units: u32) -> Option<(u64, u64)> {
        let size = units as u64 * UNIT;
        self.0.allocate(size, 0).ok().map(|s| (s, size))
    }
    fn free(&mut self, (s, size): (u64, u64)) {
        self.0
            .deallocate(s, size)
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
    fn free(&mut self, h: offset_allocator::Allocation) {
        self.0.free(h);
    }
}

/// The `range-alloc` crate, in bytes.
pub struct RangeAlloc(range_alloc::RangeAllocator<u64>);

impl Contender for RangeAlloc {
    type Handle = (u64, u64);
    const NAME: &'static str = "range-alloc";
    fn new(units: u32) -> Self {
        RangeAlloc(range_alloc::RangeAllocator::new(0..units as u64 * UNIT))
    }
    fn alloc(&mut self, units: u32) -> Option<(u64, u64)> {
        self.0
            .allocate_range(units as u64 * UNIT)
            .ok()
            .map(|r| (r.start, r.end))
    }
    fn free(&mut self, (s, e): (u64, u64)) {
        self.0.free_range(s..e);
    }
}

/// XNU's way: a sorted vector of free intervals, first fit by linear scan, binary-search
/// insertion and merging on free.
pub struct NaiveFirstFit {
    free: Vec<(u64, u64)>,
}

impl Contender for NaiveFirstFit {
    type Handle = (u64, u64);
    const NAME: &'static str = "xnu-style first fit";
    fn new(units: u32) -> Self {
        NaiveFirstFit {
            free: vec![(0, units as u64 * UNIT)],
        }
    }
    fn alloc(&mut self, units: u32) -> Option<(u64, u64)> {
        let size = units as u64 * UNIT;
        let i = self.free.iter().position(|&(s, e)| e - s >= size)?;
        let (s, e) = self.free[i];
        if e - s == size {
            self.free.remove(i);
        } else {
            self.free[i].0 = s + size;
        }
        Some((s, s + size))
    }
    fn free(&mut self, (s, e): (u64, u64)) {
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

fn time<C: Contender>(w: &Workload, reps: usize) -> f64 {
    median_ns_per_op(reps, w.ops.len() as u64, || replay::<C>(w))
}

/// Runs the group.
pub fn run(opts: &Options) -> Vec<Row> {
    let reps = if opts.quick { 3 } else { 5 };
    let mut rows = Vec::new();
    for w in workloads(opts) {
        let ours = time::<Dmakit>(&w, reps);
        rows.push(Row::new(
            w.name,
            OffsetAllocator::NAME,
            ours,
            time::<OffsetAllocator>(&w, reps),
        ));
        rows.push(Row::new(
            w.name,
            RangeAlloc::NAME,
            ours,
            time::<RangeAlloc>(&w, reps),
        ));
        rows.push(Row::new(
            w.name,
            NaiveFirstFit::NAME,
            ours,
            time::<NaiveFirstFit>(&w, reps),
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_contender_fails_an_allocation() {
        for w in workloads(&Options { quick: true }) {
            let w = Workload {
                ops: w.ops[..20_000].to_vec(),
                ..w
            };
            assert_eq!(replay::<Dmakit>(&w), 0, "{}", w.name);
            assert_eq!(replay::<OffsetAllocator>(&w), 0, "{}", w.name);
            assert_eq!(replay::<RangeAlloc>(&w), 0, "{}", w.name);
            assert_eq!(replay::<NaiveFirstFit>(&w), 0, "{}", w.name);
        }
    }

    #[test]
    fn workloads_keep_about_the_target_live() {
        let [w, _] = workloads(&Options { quick: true });
        let mut live = 0i64;
        let mut max = 0;
        for op in &w.ops {
            live += match op {
                Op::Alloc { .. } => 1,
                Op::Free { .. } => -1,
            };
            max = max.max(live);
        }
        assert!((5_000..=20_000).contains(&max), "max live {max}");
    }

    #[test]
    fn a_tiny_run_gives_well_formed_rows() {
        let w = generate("t", 2_000, 100, 1 << 16, 1, |r| r.gen_range(1..=4));
        let ours = time::<Dmakit>(&w, 1);
        let peer = time::<OffsetAllocator>(&w, 1);
        let row = Row::new(w.name, "offset-allocator", ours, peer);
        assert!(row.ns_per_op.is_finite() && row.ns_per_op > 0.0);
        assert!(row.peer_ns_per_op.is_finite() && row.peer_ns_per_op > 0.0);
        assert!((row.ratio - row.ns_per_op / row.peer_ns_per_op).abs() < 1e-12);
    }
}
