//! Prints the range-allocator group: `cargo run --release -p dmakit-bench --example range [quick]`.
fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rows = dmakit_bench::groups::range::run(&dmakit_bench::Options { quick });
    print!("{}", dmakit_bench::render_table(&rows));
}
