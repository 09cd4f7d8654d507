//! `--svg`: the pictures parse as XML and hold one mark per thing drawn: a rect per
//! segment of each space, a lane (label and run marks) per allocation, bounce buffer,
//! mapping and free range, matching what `--json` reports in the same run.

mod common;

use common::*;
use roxmltree::{Document, Node};
use serde_json::Value;

fn classes<'a>(n: Node<'a, '_>) -> Vec<&'a str> {
    n.attribute("class")
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

fn has_class(n: Node<'_, '_>, c: &str) -> bool {
    classes(n).contains(&c)
}

/// The descendants of `n` of tag `tag` with class `c`.
fn find<'a, 'i>(n: Node<'a, 'i>, tag: &str, c: &str) -> Vec<Node<'a, 'i>> {
    n.descendants()
        .filter(|d| d.has_tag_name(tag) && has_class(*d, c))
        .collect()
}

fn text_of(n: Node<'_, '_>) -> String {
    n.descendants()
        .filter(|d| d.has_tag_name("text"))
        .filter_map(|d| d.text())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("|")
}

/// Checks that `space` (a `g.space`) draws the space of the JSON report.
fn check_space(space: Node<'_, '_>, want: &Value) {
    assert_eq!(space.attribute("data-title"), want["title"].as_str());
    let segs = find(space, "rect", "segment");
    let want_segs = want["segments"].as_array().unwrap();
    assert_eq!(segs.len(), want_segs.len(), "one rect per segment");
    for (rect, s) in segs.iter().zip(want_segs) {
        assert!(has_class(*rect, s["area"].as_str().unwrap()), "{s}");
        let w: f64 = rect.attribute("width").unwrap().parse().unwrap();
        assert!(w > 0.0);
    }
    let lanes = find(space, "g", "lane");
    let want_lanes = want["lanes"].as_array().unwrap();
    assert_eq!(lanes.len(), want_lanes.len(), "one lane per thing placed");
    for (g, l) in lanes.iter().zip(want_lanes) {
        let label = l["label"].as_str().unwrap();
        assert_eq!(g.attribute("data-label"), Some(label));
        assert!(has_class(*g, l["use"].as_str().unwrap()), "{l}");
        let runs = l["runs"].as_array().unwrap().len();
        assert_eq!(g.attribute("data-runs"), Some(runs.to_string().as_str()));
        let marks = find(*g, "rect", "run").len();
        assert!(
            (1..=runs).contains(&marks),
            "{label}: {marks} marks for {runs} runs"
        );
        let shown = text_of(*g);
        let head: String = label.chars().take(40).collect();
        assert!(shown.starts_with(&head), "{shown} / {label}");
    }
}

#[test]
fn the_demo_picture_draws_every_space_segment_allocation_and_mapping() {
    let path = temp("demo.svg");
    let r = dmakit(&["demo", "--json", "--svg", path.to_str().unwrap()]);
    r.expect(0);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let doc = Document::parse(&text).unwrap();
    let root = doc.root_element();
    assert!(root.has_tag_name("svg"));
    let spaces = find(root, "g", "space");
    let want = report["picture"]["spaces"].as_array().unwrap();
    assert_eq!(spaces.len(), want.len());
    for (g, s) in spaces.iter().zip(want) {
        check_space(*g, s);
    }
    assert!(has_class(spaces[0], "physical") && has_class(spaces[3], "io"));
    assert_eq!(find(root, "g", "bounce").len(), 1, "the bounce buffer");
    assert!(find(root, "g", "mapping").len() >= 5, "IO mappings");
    assert!(find(root, "g", "free").len() >= 2, "free IO ranges");
    assert!(find(root, "rect", "mmio").len() >= 2, "the device windows");
    assert!(text_of(root).contains(report["picture"]["title"].as_str().unwrap()));
}

#[test]
fn the_demo_says_where_the_picture_went() {
    let path = temp("demo-text.svg");
    let r = dmakit(&["demo", "--svg", path.to_str().unwrap()]);
    r.expect(0);
    assert!(r
        .stdout
        .ends_with(&format!("the memory picture: {}\n", path.display())));
    assert!(Document::parse(&std::fs::read_to_string(&path).unwrap()).is_ok());
    let _ = std::fs::remove_file(path);
}

#[test]
fn the_inspect_picture_draws_this_hosts_map_and_the_allocation() {
    let path = temp("inspect.svg");
    let r = dmakit(&[
        "inspect",
        "--size",
        "64K",
        "--json",
        "--svg",
        path.to_str().unwrap(),
    ]);
    if r.code == 3 {
        println!("skipped: no physical addresses here");
        assert!(!path.exists(), "no picture is left behind");
        return;
    }
    r.expect(0);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let doc = Document::parse(&text).unwrap();
    let spaces = find(doc.root_element(), "g", "space");
    assert_eq!(spaces.len(), 1);
    check_space(spaces[0], &report["physical_map"]);
    assert!(!find(spaces[0], "rect", "ram").is_empty());
    let lane = find(spaces[0], "g", "allocation");
    assert_eq!(lane.len(), 1);
    let runs = report["runs"].as_array().unwrap().len().to_string();
    assert_eq!(lane[0].attribute("data-runs"), Some(runs.as_str()));
}

#[test]
fn a_failed_run_leaves_no_picture() {
    let path = temp("refused.svg");
    let r = dmakit(&["inspect", "--size", "64T", "--svg", path.to_str().unwrap()]);
    r.expect(4);
    assert!(!path.exists());
}
