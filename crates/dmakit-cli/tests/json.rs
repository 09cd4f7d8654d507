//! `--json`: one JSON document on standard output, nothing else.

mod common;

use common::*;
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let r = dmakit(args);
    r.expect(0);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", r.stdout))
}

#[test]
fn demo_json_has_the_machine_what_landed_where_and_the_teardown() {
    let v = json(&["demo", "--json"]);
    assert_eq!(v["seed"], 42);
    assert_eq!(v["page_size"], 4096);
    let spaces = v["picture"]["spaces"].as_array().unwrap();
    let kinds: Vec<&str> = spaces.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["physical", "physical", "io", "io"]);
    let main = &spaces[0];
    let areas: Vec<&str> = main["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["area"].as_str().unwrap())
        .collect();
    for a in ["ram", "hole", "mmio"] {
        assert!(areas.contains(&a), "{a} missing: {areas:?}");
    }
    let lanes = main["lanes"].as_array().unwrap();
    assert!(lanes.len() >= 10, "{lanes:?}");
    for l in lanes {
        assert_eq!(l["use"], "allocation");
        assert!(!l["runs"].as_array().unwrap().is_empty(), "{l}");
    }
    let bounce: Vec<&Value> = spaces[1]["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["use"] == "bounce")
        .collect();
    assert_eq!(bounce.len(), 1);
    for run in bounce[0]["runs"].as_array().unwrap() {
        let end = run["start"].as_u64().unwrap() + run["len"].as_u64().unwrap();
        assert!(end <= 1 << 32, "the bounce buffer is below 4 GiB: {run}");
    }
    assert_eq!(v["dma"]["bounced"], true);
    assert_eq!(v["dma"]["device_read_correct"], true);
    assert_eq!(v["dma"]["engine_copy_correct"], true);
    assert_eq!(v["dma"]["source_io_segments"], 1);
    assert_eq!(v["teardown"]["allocations_live"], 0);
    assert_eq!(v["teardown"]["free_pages"], v["teardown"]["ram_pages"]);
    for c in v["nvme"].as_array().unwrap() {
        assert_eq!(c["at_start"], c["now"], "{c}");
    }
}

#[test]
fn demo_json_is_deterministic_per_seed() {
    let a = json(&["demo", "--json", "--seed", "9"]);
    assert_eq!(a, json(&["demo", "--json", "--seed", "9"]));
    assert_ne!(a, json(&["demo", "--json", "--seed", "10"]));
    assert_eq!(
        json(&["demo", "--json", "--page-size", "16K"])["page_size"],
        16384
    );
}

#[test]
fn inspect_json_lists_the_runs_and_the_host() {
    let r = dmakit(&["inspect", "--size", "64K", "--json"]);
    if r.code == 3 {
        println!("skipped: no physical addresses here");
        return;
    }
    r.expect(0);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["size"], 65536);
    assert_eq!(v["hugepage"], false);
    assert_eq!(v["phys_limit"], Value::Null);
    let runs = v["runs"].as_array().unwrap();
    let bytes: u64 = runs.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, 65536);
    assert_eq!(runs[0]["virtual_address"], v["virtual_address"]);
    assert_eq!(v["host"]["cap_sys_admin"], true);
    let lanes = v["physical_map"]["lanes"].as_array().unwrap();
    assert_eq!(lanes.len(), 1);
    assert_eq!(lanes[0]["runs"].as_array().unwrap().len(), runs.len());
}

#[test]
fn inspect_json_with_a_limit_names_it() {
    let r = dmakit(&["inspect", "--size", "16K", "--below", "64T", "--json"]);
    if r.code == 3 {
        println!("skipped: no physical addresses here");
        return;
    }
    r.expect(0);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["phys_limit"], (64u64 << 40) - 1);
}
