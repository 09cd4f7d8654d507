//! `dmakit`: the command-line face of dmakit.
//!
//! * `dmakit demo`: the main job, a scenario on the simulated machine that shows what was
//!   allocated and where it landed physically, and the portable NVMe driver on a simulated
//!   controller;
//! * `dmakit inspect --size N [--hugepage]`: allocates on this Linux host and prints the
//!   physical runs (root needed for physical addresses; otherwise the error says why);
//! * `dmakit bench [--quick]`: the side-by-side benchmarks, as a table and as
//!   `$CARGO_TARGET_DIR/dmakit-bench.json` (else `target/dmakit-bench.json`).

mod demo;
mod demo_nvme;
mod out;
mod size;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "dmakit",
    version,
    about = "IOKit's Memory API family in Rust: demo, inspect, bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the scenario on the simulated machine and print what landed where.
    Demo {
        /// Seed of the simulated machine (the same seed gives the same layout).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Page size of the simulated machine: 4K or 16K.
        #[arg(long, default_value = "4K", value_parser = size::parse)]
        page_size: u64,
    },
    /// Allocate on this Linux host and print the physical runs behind the memory.
    Inspect {
        /// Bytes to allocate (accepts 4096, 0x1000, 64K, 2M, 1G).
        #[arg(long, value_parser = size::parse)]
        size: u64,
        /// Use a 2 MiB hugepage (physically contiguous).
        #[arg(long)]
        hugepage: bool,
    },
    /// Run the benchmarks side by side with their peers.
    Bench {
        /// Fewer operations: finishes in seconds.
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON report (default: `$CARGO_TARGET_DIR/dmakit-bench.json`,
        /// else `target/dmakit-bench.json`).
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { seed, page_size } => demo::run(seed, page_size),
        Command::Inspect { size, hugepage } => inspect(size, hugepage),
        Command::Bench { quick, json } => {
            bench(quick, &json.unwrap_or_else(dmakit_bench::default_json_path))
        }
    };
    match (out::finish(), result) {
        // The reader went away (`dmakit demo | head`): nothing more to say.
        (Ok(false), _) => ExitCode::SUCCESS,
        (Ok(true), Ok(())) => ExitCode::SUCCESS,
        (Ok(true), Err(e)) | (Err(e), _) => {
            eprintln!("dmakit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(size: u64, hugepage: bool) -> Result<(), String> {
    let report =
        dmakit_linux::inspect(size, hugepage).map_err(|e| format!("{e} [{}]", e.io_return()))?;
    out::say!("{report}");
    Ok(())
}

fn bench(quick: bool, json: &std::path::Path) -> Result<(), String> {
    let report = dmakit_bench::run(&dmakit_bench::Options {
        quick,
        quiet: false,
    });
    out::say!("{}", dmakit_bench::render_table(&report.rows));
    let controls: Vec<_> = report.rows.iter().filter(|r| r.is_control()).collect();
    let held = controls.iter().filter(|r| r.control_holds()).count();
    out::say!(
        "A/A controls within 0.95–1.05: {held} of {}; load average {} at start, {} at end",
        controls.len(),
        report.meta.load_start,
        report.meta.load_end
    );
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    dmakit_bench::write_json(&report, json)
        .map_err(|e| format!("writing {}: {e}", json.display()))?;
    out::say!("wrote {} rows to {}", report.rows.len(), json.display());
    Ok(())
}
