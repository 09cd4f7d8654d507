//! The `dmakit` binary end to end.

use std::process::Command;

fn dmakit(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dmakit"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_shows_every_section_and_leaks_nothing() {
    let (ok, out, err) = dmakit(&["demo"]);
    assert!(ok, "{err}");
    for section in [
        "The machine",
        "IOMalloc family",
        "Physical constraints",
        "A multi descriptor and its physical segments",
        "RangeAllocator",
        "Non-coherent caches",
        "Fault injection",
        "DMA: a 32-bit device and a buffer above 4 GiB (bounced)",
        "all correct",
        "1 IO segment",
        "matches the source",
        "allocations live: 0, wired pages: 0",
    ] {
        assert!(out.contains(section), "missing {section:?} in:\n{out}");
    }
    assert!(
        out.contains("kIOReturnNoMemory"),
        "the injected failure is shown"
    );
    assert!(out.contains("\"new data\""), "the cache clean is shown");
}

#[test]
fn demo_is_deterministic_per_seed() {
    let a = dmakit(&["demo", "--seed", "5"]).1;
    let b = dmakit(&["demo", "--seed", "5"]).1;
    let c = dmakit(&["demo", "--seed", "6"]).1;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn demo_runs_with_16k_pages() {
    let (ok, out, err) = dmakit(&["demo", "--page-size", "16K"]);
    assert!(ok, "{err}");
    assert!(out.contains("page size 16 KiB"), "{out}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let (ok, _, err) = dmakit(&["demo", "--page-size", "3000"]);
    assert!(!ok);
    assert!(err.contains("page size"), "{err}");
    let (ok, _, err) = dmakit(&["inspect", "--size", "0"]);
    assert!(!ok);
    assert!(
        err.contains("must not be zero") && err.contains("kIOReturnBadArgument"),
        "{err}"
    );
    let (ok, _, err) = dmakit(&["inspect", "--size", "lots"]);
    assert!(!ok);
    assert!(err.contains("not a size"), "{err}");
}

#[test]
fn inspect_reports_physical_runs_or_why_not() {
    let (ok, out, err) = dmakit(&["inspect", "--size", "16K"]);
    if ok {
        assert!(out.contains("physical run"), "{out}");
    } else {
        assert!(err.contains("CAP_SYS_ADMIN"), "{err}");
    }
}
