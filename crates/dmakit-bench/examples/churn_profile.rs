//! Replays one range workload on one contender, for a profiler:
//! `cargo run --release -p dmakit-bench --example churn_profile -- [churn|mixed] [dmakit|offset]`.
use dmakit_bench::groups::range::{replay, workloads, Dmakit, OffsetAllocator};

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let who = args.next().unwrap_or_default();
    let [mixed, churn] = workloads(&dmakit_bench::Options { quick: false });
    let w = if which == "mixed" { mixed } else { churn };
    for _ in 0..3 {
        let out = if who == "offset" {
            replay::<OffsetAllocator>(&w)
        } else {
            replay::<Dmakit>(&w)
        };
        std::hint::black_box(out);
    }
}
