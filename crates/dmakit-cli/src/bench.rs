//! `dmakit bench`: the side-by-side benchmarks as a table (or JSON on standard output),
//! the report written to a file, and the ratios drawn with `--svg`.

use crate::exit::Failure;
use crate::out::{say, Out};
use crate::output_file::OutputFile;
use crate::picture;
use std::path::PathBuf;

/// What `dmakit bench` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fewer operations.
    pub quick: bool,
    /// The JSON report's file (default [`dmakit_bench::default_json_path`]).
    pub out: Option<PathBuf>,
    /// The report on standard output instead of the table.
    pub json: bool,
    /// Where to draw the chart.
    pub svg: Option<PathBuf>,
}

/// Runs the benchmarks as `o` says. The output files are opened first, so a path that
/// cannot be written fails before the run.
pub fn run(o: &Options) -> Result<(), Failure> {
    let path = o
        .out
        .clone()
        .unwrap_or_else(dmakit_bench::default_json_path);
    let file = OutputFile::open(&path, "--out", true)?;
    let svg = o
        .svg
        .as_deref()
        .map(|p| OutputFile::open(p, "--svg", false))
        .transpose()?;
    let report = dmakit_bench::run(&dmakit_bench::Options {
        quick: o.quick,
        quiet: false,
    });
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| Failure::failed(format!("the report as JSON: {e}")))?;
    file.write(&format!("{text}\n"))?;
    if o.json {
        say!(&mut Out, "{text}");
        eprintln!(
            "dmakit: wrote {} rows to {}",
            report.rows.len(),
            path.display()
        );
    } else {
        table(&report);
        say!(
            &mut Out,
            "wrote {} rows to {}",
            report.rows.len(),
            path.display()
        );
    }
    if let Some(f) = svg {
        let svg_path = f.path().display().to_string();
        f.write(&picture::to_string(&picture::chart::document(&report)))?;
        if !o.json {
            say!(&mut Out, "the chart: {svg_path}");
        }
    }
    Ok(())
}

fn table(report: &dmakit_bench::Report) {
    say!(&mut Out, "{}", dmakit_bench::render_table(&report.rows));
    let controls: Vec<_> = report.rows.iter().filter(|r| r.is_control()).collect();
    let held = controls.iter().filter(|r| r.control_holds()).count();
    say!(
        &mut Out,
        "A/A controls within 0.95–1.05: {held} of {}; load average {} at start, {} at end",
        controls.len(),
        report.meta.load_start,
        report.meta.load_end
    );
}
