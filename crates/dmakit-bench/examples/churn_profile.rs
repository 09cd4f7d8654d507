//! Replays the IOVA-churn workload on dmakit alone, for a profiler:
//! `cargo run --release -p dmakit-bench --example churn_profile`.
use dmakit_bench::groups::range::{replay, workloads, Dmakit};
fn main() {
    let [mixed, churn] = workloads(&dmakit_bench::Options { quick: false });
    let which = std::env::args().nth(1).unwrap_or_default();
    let w = if which == "mixed" { mixed } else { churn };
    for _ in 0..3 {
        std::hint::black_box(replay::<Dmakit>(&w));
    }
}
