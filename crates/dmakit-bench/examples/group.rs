//! Prints one group by name:
//! `cargo run --release -p dmakit-bench --example group -- <range|threads|prepare|sim_dma|descriptor|dma> [quick]`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
