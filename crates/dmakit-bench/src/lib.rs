//! # dmakit-bench — dmakit measured side by side with its peers
//!
//! Every group runs dmakit and one or more peers on *the same pre-generated work* in the
//! same process, one after the other, several times, and reports the median time per
//! operation of each. A [`Row`] is one (benchmark, peer) pair with
//! `ratio = ns_per_op / peer_ns_per_op`: below 1 dmakit is faster.
//!
//! `dmakit bench [--quick]` prints [`render_table`] and writes [`write_json`] to
//! `target/dmakit-bench.json`. Groups live in [`groups`], one file each; a new group adds a
//! file there, a `pub mod` line in `groups`, and a line in [`run`]. The examples run one
//! group alone (`cargo run --release -p dmakit-bench --example range [quick]`).
//!
//! Only release builds give meaningful numbers. Each group's documentation says what it
//! measures and what makes its comparison fair, or not quite.

pub mod groups;
pub mod timing;

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
    /// `ns_per_op / peer_ns_per_op`: below 1 is better for dmakit.
    pub ratio: f64,
}

impl Row {
    /// A row from the two timings.
    pub fn new(name: &str, peer: &str, ns_per_op: f64, peer_ns_per_op: f64) -> Row {
        Row {
            name: name.to_string(),
            peer: peer.to_string(),
            ns_per_op,
            peer_ns_per_op,
            ratio: ns_per_op / peer_ns_per_op,
        }
    }
}

/// How much work to do.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Fewer operations and repetitions: seconds instead of a minute.
    pub quick: bool,
}

/// Runs every group.
pub fn run(opts: &Options) -> Vec<Row> {
    let mut rows = Vec::new();
    rows.extend(groups::range::run(opts));
    rows.extend(groups::descriptor::run(opts));
    rows.extend(groups::dma::run(opts));
    rows
}

/// A readable, aligned table of the rows.
pub fn render_table(rows: &[Row]) -> String {
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let peer_w = rows.iter().map(|r| r.peer.len()).max().unwrap_or(4).max(4);
    let mut s = format!(
        "{:<name_w$}  {:<peer_w$}  {:>12}  {:>12}  {:>7}\n",
        "name", "peer", "dmakit ns/op", "peer ns/op", "ratio"
    );
    s.push_str(&format!("{}\n", "-".repeat(name_w + peer_w + 41)));
    for r in rows {
        s.push_str(&format!(
            "{:<name_w$}  {:<peer_w$}  {:>12.1}  {:>12.1}  {:>7.3}\n",
            r.name, r.peer, r.ns_per_op, r.peer_ns_per_op, r.ratio
        ));
    }
    s
}

/// Writes the rows as a JSON list of `{"name", "peer", "ns_per_op", "peer_ns_per_op",
/// "ratio"}`.
pub fn write_json(rows: &[Row], path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(rows).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_table_and_json_round_trip() {
        let rows = vec![
            Row::new("a/b", "peer", 10.0, 20.0),
            Row::new("c", "memcpy", 3.0, 2.0),
        ];
        assert_eq!(rows[0].ratio, 0.5);
        let t = render_table(&rows);
        assert!(
            t.contains("a/b") && t.contains("0.500") && t.contains("1.500"),
            "{t}"
        );
        let dir = std::env::temp_dir().join(format!("dmakit-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("rows.json");
        write_json(&rows, &p).unwrap();
        let back: Vec<Row> = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back, rows);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        for k in ["name", "peer", "ns_per_op", "peer_ns_per_op", "ratio"] {
            assert!(v[0].get(k).is_some(), "missing {k}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
