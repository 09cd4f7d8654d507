//! Prints one group by name:
//! `cargo run --release -p dmakit-bench --example group -- <range|threads|prepare|sim_dma|descriptor|dma> [quick] [after=N]`.
//!
//! `after=N` first runs N short-lived threads that each call a mapper once, so the
//! threads the group starts come later in the order in which threads first call dmakit's
//! sharded structures: `threads after=5`, `after=6` and `after=7` put the helper thread of
//! one of the group's rows on the main thread's home shard, which shows that two threads
//! meeting on one shard part again.
use dmakit::mapper::{IommuMapper, Mapper};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let after = args
        .iter()
        .find_map(|a| a.strip_prefix("after=")?.parse::<usize>().ok())
        .unwrap_or(0);
    let mapper = IommuMapper::new(dmakit_bench::groups::threads::NullIommu, 1 << 32, 1 << 20)
        .expect("an aligned window");
    let _ = mapper.iovm_alloc(1);
    for _ in 0..after {
        std::thread::scope(|s| {
            s.spawn(|| mapper.iovm_alloc(1));
        });
    }
    let opts = dmakit_bench::Options {
        quick: args.iter().any(|a| a == "quick"),
        quiet: false,
    };
    let groups = dmakit_bench::groups::all();
    let Some(g) = groups.iter().find(|g| args.iter().any(|a| a == g.name)) else {
        let names: Vec<_> = groups.iter().map(|g| g.name).collect();
        eprintln!("name a group: {}", names.join(", "));
        std::process::exit(2);
    };
    let mut p = dmakit_bench::progress::Progress::new((g.planned)(&opts), false);
    let rows = (g.run)(&opts, &mut p);
    print!("{}", dmakit_bench::render_table(&rows));
}
