//! Replays one range workload on one contender, for a profiler:
//! `cargo run --release -p dmakit-bench --example churn_profile [mixed|churn] [dmakit|offset]`.
use dmakit_bench::groups::range::{replay, workloads, Dmakit, OffsetAllocator};
fn main() {
    let [mixed, churn] = workloads(&dmakit_bench::Options { quick: false });
    let which = std::env::args().nth(1).unwrap_or_default();
    let who = std::env::args().nth(2).unwrap_or_default();
    let w = if which == "mixed" { mixed } else { churn };
    for _ in 0..3 {
        if who == "offset" {
            std::hint::black_box(replay::<OffsetAllocator>(&w));
        } else {
            std::hint::black_box(replay::<Dmakit>(&w));
        }
    }
}
