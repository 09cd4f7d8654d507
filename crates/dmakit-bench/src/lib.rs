//! # dmakit-bench — dmakit measured side by side with its peers
//!
//! Every group runs dmakit and a peer on *the same work* in the same process through one
//! harness ([`harness`]): paired, interleaved chunks in alternating order, the minimum of
//! several repetitions per chunk, several whole sets giving a distribution of ratios. A
//! [`Row`] is one (benchmark, peer) pair with `ratio = ns_per_op / peer_ns_per_op` (median
//! over sets; below 1 dmakit is faster) and the 10th–90th percentile spread of that ratio.
//! Every group has an A/A control row, `<group>/a_a` against `a/a control`: its peer
//! measured against itself, which should come out within 0.95–1.05.
//!
//! `dmakit bench [--quick]` prints [`render_table`] and writes [`write_json`] (rows plus
//! [`meta::Meta`]: git revision, date, CPU, load average, plan) to
//! `<target>/dmakit-bench.json`. Groups live in [`groups`], one file each; a new group adds
//! a file there, a `pub mod` line and a line in [`groups::all`]. The examples run one
//! group alone (`cargo run --release -p dmakit-bench --example range [quick]`).
//!
//! Only release builds give meaningful numbers. Each group's documentation says what it
//! measures and what makes its comparison fair, or not quite.

pub mod groups;
pub mod harness;
pub mod meta;
pub mod progress;
pub mod stats;

use harness::{Paired, Plan};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One benchmark against one peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// What was measured (`group/workload`).
    pub name: String,
    /// The peer it was measured against.
    pub peer: String,
    /// dmakit's median nanoseconds per operation.
    pub ns_per_op: f64,
    /// The peer's median nanoseconds per operation, for the same work.
    pub peer_ns_per_op: f64,
    /// Median over sets of `ns_per_op / peer_ns_per_op`: below 1 is better for dmakit.
    pub ratio: f64,
    /// 10th percentile of the ratio over sets.
    pub ratio_p10: f64,
    /// 90th percentile of the ratio over sets.
    pub ratio_p90: f64,
}

impl Row {
    /// A row from a paired measurement.
    pub fn new(name: &str, peer: &str, p: &Paired) -> Row {
        Row {
            name: name.to_string(),
            peer: peer.to_string(),
            ns_per_op: p.ns_per_op,
            peer_ns_per_op: p.peer_ns_per_op,
            ratio: p.ratio,
            ratio_p10: p.ratio_p10,
            ratio_p90: p.ratio_p90,
        }
    }

    /// Whether this is an A/A control row.
    pub fn is_control(&self) -> bool {
        self.name.ends_with("/a_a")
    }

    /// Whether an A/A control row's median ratio is within 0.95–1.05.
    pub fn control_holds(&self) -> bool {
        (0.95..=1.05).contains(&self.ratio)
    }
}

/// The peer name of A/A control rows.
pub const CONTROL_PEER: &str = "a/a control";

/// How much work to do.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Fewer sets, repetitions and sizes: well under a minute instead of several.
    pub quick: bool,
    /// No progress lines on stderr.
    pub quiet: bool,
}

/// A whole run: its circumstances and its rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Where and when.
    pub meta: meta::Meta,
    /// The rows, in the order measured.
    pub rows: Vec<Row>,
}

/// Runs every group, with progress on stderr unless `opts.quiet`.
pub fn run(opts: &Options) -> Report {
    let plan = Plan::for_options(opts);
    let mut meta = meta::Meta::start(opts.quick, plan.sets, plan.reps);
    let groups = groups::all();
    let total = groups.iter().map(|g| (g.planned)(opts)).sum();
    let mut progress = progress::Progress::new(total, opts.quiet);
    let mut rows = Vec::new();
    for g in &groups {
        rows.extend((g.run)(opts, &mut progress));
    }
    meta.finish();
    Report { meta, rows }
}

/// Measures one row, saying so on the progress line first.
pub fn measure(
    progress: &mut progress::Progress,
    name: &str,
    peer: &str,
    f: impl FnOnce() -> Paired,
) -> Row {
    progress.row(name, peer);
    Row::new(name, peer, &f())
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 100_000.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

/// A table of the rows: name, peer, both ns/op, ratio and its p10–p90 spread, and for
/// A/A rows whether the control held.
pub fn render_table(rows: &[Row]) -> String {
    use comfy_table::{presets::ASCII_BORDERS_ONLY_CONDENSED, CellAlignment, Table};
    let mut t = Table::new();
    t.load_preset(ASCII_BORDERS_ONLY_CONDENSED).set_header([
        "name",
        "peer",
        "dmakit ns/op",
        "peer ns/op",
        "ratio",
        "p10–p90",
        "",
    ]);
    for r in rows {
        let verdict = match (r.is_control(), r.control_holds()) {
            (false, _) => "",
            (true, true) => "A/A ok",
            (true, false) => "A/A OUT",
        };
        t.add_row([
            r.name.clone(),
            r.peer.clone(),
            fmt_ns(r.ns_per_op),
            fmt_ns(r.peer_ns_per_op),
            format!("{:.3}", r.ratio),
            format!("{:.3}–{:.3}", r.ratio_p10, r.ratio_p90),
            verdict.to_string(),
        ]);
    }
    for c in 2..6 {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t.to_string() + "\n"
}

/// Writes the report as JSON: `{"meta": {…}, "rows": [{"name", "peer", "ns_per_op",
/// "peer_ns_per_op", "ratio", "ratio_p10", "ratio_p90"}, …]}`.
pub fn write_json(report: &Report, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// Where the JSON goes by default: `$CARGO_TARGET_DIR/dmakit-bench.json`, else
/// `target/dmakit-bench.json`.
pub fn default_json_path() -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "target".into());
    Path::new(&dir).join("dmakit-bench.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paired(a: f64, b: f64) -> Paired {
        Paired {
            ns_per_op: a,
            peer_ns_per_op: b,
            ratio: a / b,
            ratio_p10: a / b * 0.5,
            ratio_p90: a / b * 2.0,
        }
    }

    #[test]
    fn rows_table_and_json_round_trip() {
        let rows = vec![
            Row::new("a/b", "peer", &paired(10.0, 20.0)),
            Row::new("a/a_a", CONTROL_PEER, &paired(3.0, 2.0)),
        ];
        assert!(rows[1].is_control() && !rows[1].control_holds() && !rows[0].is_control());
        let t = render_table(&rows);
        for want in ["a/b", "0.500", "0.250–1.000", "1.500", "A/A OUT", "p10–p90"] {
            assert!(t.contains(want), "{want} missing from\n{t}");
        }
        let dir = std::env::temp_dir().join(format!("dmakit-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("rows.json");
        let report = Report {
            meta: meta::Meta::start(true, 7, 3),
            rows,
        };
        write_json(&report, &p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for k in [
            "git_rev",
            "date",
            "cpu",
            "load_start",
            "load_end",
            "quick",
            "reps",
        ] {
            assert!(v["meta"].get(k).is_some(), "meta is missing {k}");
        }
        for k in [
            "name",
            "peer",
            "ns_per_op",
            "peer_ns_per_op",
            "ratio",
            "ratio_p10",
        ] {
            assert!(v["rows"][0].get(k).is_some(), "row is missing {k}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
