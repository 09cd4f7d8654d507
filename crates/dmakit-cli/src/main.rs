//! `dmakit`: the command-line face of dmakit.
//!
//! * `dmakit demo [--json] [--svg FILE]`: the main job, a scenario on the simulated
//!   machine that shows what was allocated and where it landed physically, and the
//!   portable NVMe driver on a simulated controller;
//! * `dmakit inspect --size N [--hugepage] [--below ADDRESS] [--json] [--svg FILE]`:
//!   allocates on this Linux host and prints the physical runs (root needed for physical
//!   addresses; otherwise the error says why);
//! * `dmakit bench [--quick] [--out PATH] [--json] [--svg FILE]`: the side-by-side
//!   benchmarks, as a table and as `$CARGO_TARGET_DIR/dmakit-bench.json` (else
//!   `target/dmakit-bench.json`).
//!
//! Output never panics ([`out`]); each kind of failure has its exit status ([`exit`]).

mod args;
mod bench;
mod demo;
mod exit;
mod inspect;
mod iomem;
mod out;
mod output_file;
mod page_size;
mod picture;
mod preflight;
mod size;

use args::{Cli, Command};
use clap::Parser;
use exit::{Failure, Status};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    let result = dispatch(cli.command);
    match (out::finish(), result) {
        // The reader went away (`dmakit demo | head`): nothing more to say.
        (Ok(false), _) => ExitCode::SUCCESS,
        (Ok(true), Ok(())) => ExitCode::SUCCESS,
        (Ok(true), Err(f)) => fail(&f),
        (Err(e), _) => fail(&Failure::failed(e)),
    }
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Demo {
            seed,
            page_size,
            json,
            svg,
        } => demo::run(&demo::Options {
            seed,
            page_size,
            json,
            svg,
        }),
        Command::Inspect {
            size,
            hugepage,
            below,
            json,
            svg,
        } => inspect::run(&inspect::Options {
            size,
            hugepage,
            below,
            json,
            svg,
        }),
        Command::Bench {
            quick,
            out,
            json,
            svg,
        } => bench::run(&bench::Options {
            quick,
            out,
            json,
            svg,
        }),
    }
}

/// Tells the user why the run stopped; never panics (standard error may be closed too).
fn fail(f: &Failure) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "dmakit: {f}");
    f.status.into()
}

/// `--help` and `--version` (status 0, on standard output), or a usage error (status 2).
fn usage(e: &clap::Error) -> ExitCode {
    match e.print() {
        Err(w) if w.kind() != std::io::ErrorKind::BrokenPipe => {
            fail(&Failure::failed(format!("writing the output: {w}")))
        }
        _ if e.use_stderr() => Status::Usage.into(),
        _ => ExitCode::SUCCESS,
    }
}
