//! Prints the DMA command group: `cargo run --release -p dmakit-bench --example dma [quick]`.
fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rows = dmakit_bench::groups::dma::run(&dmakit_bench::Options { quick });
    print!("{}", dmakit_bench::render_table(&rows));
}
