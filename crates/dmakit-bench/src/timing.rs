//! Timing helpers: the median of repeated runs.

use std::time::Instant;

/// Runs `f` `reps` times and returns the median wall time in nanoseconds divided by `ops`.
/// `f` returns a value that is passed through `black_box` so the work is not optimised
/// away.
pub fn median_ns_per_op<T>(reps: usize, ops: u64, mut f: impl FnMut() -> T) -> f64 {
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_nanos() as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2] / ops.max(1) as f64
}

/// One timed run of `f`, in nanoseconds per operation (for benches that alternate the
/// samples of dmakit and its peer, so a change of load on the machine hits both alike).
pub fn sample_ns_per_op<T>(ops: u64, f: impl FnMut() -> T) -> f64 {
    median_ns_per_op(1, ops, f)
}

/// The median of `samples` (the upper one of the middle two for an even count; 0 for none).
pub fn median(mut samples: Vec<f64>) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}
