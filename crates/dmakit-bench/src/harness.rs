//! The one measuring method every group uses: paired, interleaved, chunked, min-of-R.
//!
//! A comparison has two sides, A (dmakit) and B (the peer), that do the same work, cut into
//! `chunks` pieces: side A's `run(c)` does chunk `c` of it (a slice of a workload, a part
//! of a copy, a batch of round trips) and side B's `run(c)` the same chunk its own way.
//!
//! * **Paired and interleaved.** Chunk `c` of A and chunk `c` of B always run back to back,
//!   so a change of load on the machine (a compiler starting on the other core, a frequency
//!   step) lands on both. Which one goes first alternates from pair to pair, A B, B A,
//!   A B, … (the ABBA order, [`a_first`]), so neither side always gets the warmer cache or
//!   the cooler core.
//! * **Min of R.** Every chunk runs [`Plan::reps`] times per side, the repetitions spread
//!   over time (all chunks once, then all chunks again, …); a chunk's time is the minimum
//!   of its repetitions: an interruption only ever adds time, so the minimum is the
//!   estimate least disturbed by the other users of a shared machine. The time of one
//!   whole pass is the sum of the per-chunk minimums, divided by the pass's operations for
//!   ns/op.
//! * **A distribution.** All that is one *set*, and gives one ratio A/B. [`Plan::sets`]
//!   sets run one after the other; the row reports the median ratio (`ratio`) and the 10th
//!   and 90th percentiles (`ratio_p10`, `ratio_p90`) over sets, and the median ns/op of
//!   each side. The spread is over whole repeated measurements rather than a bootstrap
//!   over the chunks of one: sets are taken at different moments, so their spread shows
//!   how much a measurement moves with the machine's load over the run, which is what
//!   makes one run disagree with the next; resampling the chunks of a single moment would
//!   show only the chunk-to-chunk variation of that moment and look tighter than the
//!   numbers are.
//! * **Warm-up.** One untimed pass of each side over every chunk comes first (page faults,
//!   lazily built tables, branch predictors).
//!
//! Every group also measures its peer against itself this way (the A/A control row,
//! `<group>/a_a`): a ratio outside 0.95–1.05 there says the machine was too noisy for that
//! group's other rows to be read closer than that.

use crate::stats::{median, percentile};
use crate::Options;
use std::time::Instant;

/// How many times to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Whole measurements, each giving one ratio.
    pub sets: usize,
    /// Repetitions of every chunk per side within a set (the minimum is kept).
    pub reps: usize,
}

impl Plan {
    /// The plan for a quick or a full run.
    pub fn for_options(opts: &Options) -> Plan {
        if opts.quick {
            Plan { sets: 7, reps: 3 }
        } else {
            Plan { sets: 11, reps: 5 }
        }
    }
}

/// A comparison's outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    /// Side A's median ns per operation over sets.
    pub ns_per_op: f64,
    /// Side B's median ns per operation over sets.
    pub peer_ns_per_op: f64,
    /// Median over sets of the set's A/B ratio of ns per operation.
    pub ratio: f64,
    /// 10th percentile of the ratios.
    pub ratio_p10: f64,
    /// 90th percentile of the ratios.
    pub ratio_p90: f64,
}

/// Whether A goes first in pair number `k` (counted over the whole comparison): A B, B A,
/// A B, … so that over any two consecutive pairs each side goes first once.
pub fn a_first(k: u64) -> bool {
    k.is_multiple_of(2)
}

/// One side of a comparison: the operations of one pass over all chunks, and the work of
/// chunk `c`.
pub struct Side<F> {
    /// Operations in one pass over all chunks (the divisor of ns/op).
    pub ops: f64,
    /// Runs chunk `c`.
    pub run: F,
}

impl<F> Side<F> {
    /// A side doing `ops` operations per pass by `run`.
    pub fn new(ops: f64, run: F) -> Side<F> {
        Side { ops, run }
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> f64 {
    let t = Instant::now();
    std::hint::black_box(f());
    t.elapsed().as_nanos() as f64
}

/// Measures A against B by `plan` over `chunks` chunks (see the module documentation).
pub fn compare<TA, TB>(
    plan: &Plan,
    chunks: usize,
    mut a: Side<impl FnMut(usize) -> TA>,
    mut b: Side<impl FnMut(usize) -> TB>,
) -> Paired {
    let chunks = chunks.max(1);
    for c in 0..chunks {
        std::hint::black_box((a.run)(c));
        std::hint::black_box((b.run)(c));
    }
    let mut k = 0u64;
    let mut sets = Vec::with_capacity(plan.sets);
    for _ in 0..plan.sets.max(1) {
        let mut min_a = vec![f64::INFINITY; chunks];
        let mut min_b = vec![f64::INFINITY; chunks];
        for _ in 0..plan.reps.max(1) {
            for c in 0..chunks {
                let (ta, tb) = if a_first(k) {
                    let ta = timed(|| (a.run)(c));
                    (ta, timed(|| (b.run)(c)))
                } else {
                    let tb = timed(|| (b.run)(c));
                    (timed(|| (a.run)(c)), tb)
                };
                k += 1;
                min_a[c] = min_a[c].min(ta);
                min_b[c] = min_b[c].min(tb);
            }
        }
        sets.push((min_a.iter().sum(), min_b.iter().sum()));
    }
    summarise(&sets, a.ops, b.ops)
}

/// The outcome from each set's `(A, B)` nanoseconds for one pass, of `a_ops` and `b_ops`
/// operations.
pub fn summarise(sets: &[(f64, f64)], a_ops: f64, b_ops: f64) -> Paired {
    let a: Vec<f64> = sets.iter().map(|s| s.0 / a_ops.max(1e-9)).collect();
    let b: Vec<f64> = sets.iter().map(|s| s.1 / b_ops.max(1e-9)).collect();
    let ratios: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a / b).collect();
    Paired {
        ns_per_op: median(&a),
        peer_ns_per_op: median(&b),
        ratio: median(&ratios),
        ratio_p10: percentile(&ratios, 0.1),
        ratio_p90: percentile(&ratios, 0.9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn the_order_alternates_and_every_chunk_runs_reps_times_per_set() {
        let log = RefCell::new(Vec::new());
        let plan = Plan { sets: 2, reps: 3 };
        compare(
            &plan,
            2,
            Side::new(1.0, |c| log.borrow_mut().push(('a', c))),
            Side::new(1.0, |c| log.borrow_mut().push(('b', c))),
        );
        let log = log.into_inner();
        // Warm-up: one pass, A then B per chunk.
        assert_eq!(log[..4], [('a', 0), ('b', 0), ('a', 1), ('b', 1)]);
        let timed = &log[4..];
        assert_eq!(timed.len(), 2 * 3 * 2 * 2);
        for (k, pair) in timed.chunks(2).enumerate() {
            let want = if a_first(k as u64) { 'a' } else { 'b' };
            assert_eq!(pair[0].0, want, "pair {k}: {pair:?}");
            assert_ne!(pair[0].0, pair[1].0, "pair {k} runs both sides");
            assert_eq!(pair[0].1, pair[1].1, "pair {k} runs the same chunk");
            assert_eq!(pair[0].1, k % 2, "chunks in turn, repetitions spread");
        }
        let firsts = timed.chunks(2).filter(|p| p[0].0 == 'a').count();
        assert_eq!(firsts, 6, "A first in exactly half the pairs");
    }

    #[test]
    fn summary_divides_by_each_sides_ops_and_takes_ratio_percentiles() {
        // Ten sets: B steady at 100 ns per pass of 10 ops; A from 100 to 190 per pass of 5.
        let sets: Vec<(f64, f64)> = (0..10).map(|i| (100.0 + 10.0 * i as f64, 100.0)).collect();
        let p = summarise(&sets, 5.0, 10.0);
        assert_eq!(p.peer_ns_per_op, 10.0);
        assert!((p.ns_per_op - 29.0).abs() < 1e-9, "{p:?}");
        // Ratios 2.0, 2.2, …, 3.8: median 2.9, p10 2.18, p90 3.62.
        assert!((p.ratio - 2.9).abs() < 1e-9, "{p:?}");
        assert!((p.ratio_p10 - 2.18).abs() < 1e-9, "{p:?}");
        assert!((p.ratio_p90 - 3.62).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn the_same_work_on_both_sides_comes_out_near_one() {
        let work = |c: usize| (0..20_000u64).fold(c as u64, |x, i| x.wrapping_mul(31) ^ i);
        let p = compare(
            &Plan { sets: 5, reps: 5 },
            4,
            Side::new(4.0, work),
            Side::new(4.0, work),
        );
        assert!(p.ratio_p10 <= p.ratio && p.ratio <= p.ratio_p90, "{p:?}");
        // Loose: a test machine may be busy; the bench's own A/A rows hold 0.95–1.05.
        assert!((0.5..2.0).contains(&p.ratio), "{p:?}");
    }
}
