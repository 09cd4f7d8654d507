//! `dmakit bench --quick --json --out PATH --svg FILE` end to end: the JSON on standard
//! output is the report written to `--out`, and the chart has one row per report row.
//! It runs the quick benchmarks (about 40 s in a debug build, 12 s in release).

mod common;

use common::*;
use serde_json::Value;

#[test]
fn bench_json_out_and_chart_agree() {
    let out = temp("bench.json");
    let svg = temp("bench.svg");
    let r = dmakit(&[
        "bench",
        "--quick",
        "--json",
        "--out",
        out.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    r.expect(0);
    let printed: Value = serde_json::from_str(&r.stdout).unwrap();
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_eq!(printed["meta"]["quick"], true);
    let rows = printed["rows"].as_array().unwrap();
    assert!(rows.len() >= 10, "{}", rows.len());
    for row in rows {
        for k in ["ratio", "ratio_p10", "ratio_p90"] {
            assert!(row[k].is_number(), "{k} in {row}");
        }
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let drawn: Vec<&str> = doc
        .descendants()
        .filter(|n| {
            n.attribute("class")
                .is_some_and(|c| c.split_whitespace().any(|w| w == "row"))
        })
        .filter_map(|n| n.attribute("data-name"))
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(drawn, names);
    assert!(r.stderr.contains("wrote"), "{}", r.stderr);
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(svg);
}
