//! Prints the DMA command group: `cargo run --release -p dmakit-bench --example dma [quick]`.
fn main() {
    let opts = dmakit_bench::Options {
        quick: std::env::args().any(|a| a == "quick"),
        quiet: false,
    };
    let mut p =
        dmakit_bench::progress::Progress::new(dmakit_bench::groups::dma::planned(&opts), false);
    let rows = dmakit_bench::groups::dma::run(&opts, &mut p);
    print!("{}", dmakit_bench::render_table(&rows));
}
