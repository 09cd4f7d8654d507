//! The command line: subcommands, options and what `--help` says.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// `dmakit`.
#[derive(Parser, Debug)]
#[command(
    name = "dmakit",
    version,
    about = "IOKit's Memory API family in Rust: demo, inspect, bench",
    after_help = crate::exit::TABLE
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the scenario on the simulated machine and print what landed where.
    #[command(after_help = crate::exit::TABLE)]
    Demo {
        /// Seed of the simulated machine (the same seed gives the same layout).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Page size of the simulated machine: 4K (x86-64) or 16K (Apple silicon).
        #[arg(long, default_value = "4K", value_parser = crate::page_size::parse)]
        page_size: u64,
        /// Print one JSON document on standard output instead of the tables.
        #[arg(long)]
        json: bool,
        /// Draw the physical memory map and the IO address spaces, with where each
        /// allocation, bounce buffer and mapping landed, as an SVG file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Allocate on this Linux host and print the physical runs behind the memory.
    #[command(after_help = crate::exit::TABLE)]
    Inspect {
        /// Bytes to allocate (4096, 0x1000, 64K, 2M, 1G); refused at once when this host
        /// cannot wire that much (MemAvailable, RLIMIT_MEMLOCK).
        #[arg(long, value_parser = crate::size::parse)]
        size: u64,
        /// Use one 2 MiB hugepage (physically contiguous; at most 2M).
        #[arg(long)]
        hugepage: bool,
        /// Keep the memory below this physical address (4G for a 32-bit device).
        #[arg(long, value_name = "ADDRESS", value_parser = crate::size::parse)]
        below: Option<u64>,
        /// Print one JSON document on standard output instead of the text.
        #[arg(long)]
        json: bool,
        /// Draw this host's physical memory map and where the memory landed, as an SVG
        /// file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Run the benchmarks side by side with their peers.
    #[command(after_help = crate::exit::TABLE)]
    Bench {
        /// Fewer operations: finishes in seconds.
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON report (default: `$CARGO_TARGET_DIR/dmakit-bench.json`,
        /// else `target/dmakit-bench.json`).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Print the report as JSON on standard output instead of the table (it is
        /// written to the --out file as well).
        #[arg(long)]
        json: bool,
        /// Draw the ratios with their p10–p90 spread as an SVG chart.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
}
