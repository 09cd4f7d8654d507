//! `dmakit demo`'s text end to end: every section, the NVMe part's figures, determinism.

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

/// The text of section `== title…` of the demo's output, up to the next section.
fn section<'a>(out: &'a str, title: &str) -> &'a str {
    let start = out
        .find(&format!("== {title}"))
        .unwrap_or_else(|| panic!("no section {title:?} in:\n{out}"));
    let rest = &out[start + 3..];
    let end = rest.find("\n== ").unwrap_or(rest.len());
    &rest[..end]
}

/// The cells of every table row in `text`.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('│'))
        .map(|l| {
            l.trim_matches(|c| c == '│' || c == ' ')
                .split('┆')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The first row of `text` whose first cell starts with `first`.
fn row(text: &str, first: &str) -> Vec<String> {
    rows(text)
        .into_iter()
        .find(|r| r[0].starts_with(first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{text}"))
}

fn check_nvme_part(out: &str) {
    let id = section(out, "NVMe: the portable driver brings up");
    assert_eq!(row(id, "serial")[1], "dmakit0", "{id}");
    assert_eq!(row(id, "model")[1], "dmakit simulated NVMe", "{id}");
    assert!(
        row(id, "max transfer")[1].starts_with("524288 bytes"),
        "{id}"
    );
    assert!(row(id, "namespace 1")[1].contains("of 512 bytes"), "{id}");
    assert!(row(id, "I/O queue pairs")[1].contains("granted"), "{id}");

    // Columns: what, bytes, commands, PRP entries, PRP list pages, bounced, check.
    let sc = section(out, "NVMe: a scattered write and read through the IOMMU");
    for what in ["write from", "read into"] {
        let r = row(sc, what);
        assert_eq!((r[1].as_str(), r[5].as_str()), ("98304", "0"), "{sc}");
        assert!(r[4].parse::<u32>().unwrap() >= 1, "a PRP list: {sc}");
        assert!(r[3].parse::<u32>().unwrap() >= 24, "{sc}");
    }
    assert!(row(sc, "write from")[6].contains("store matches"), "{sc}");
    assert!(
        sc.contains("0 faults") && sc.contains("nothing bounced"),
        "{sc}"
    );

    let b = section(out, "NVMe: pieces that do not meet at page boundaries");
    for what in ["write from", "read into"] {
        let r = row(b, what);
        assert!(r[5] != "0" && r[5] == r[2], "every command bounced: {b}");
    }
    assert!(b.contains("0 bytes in use now"), "{b}");

    let f = section(out, "NVMe: a fatal controller status");
    let failed: Vec<_> = rows(f)
        .into_iter()
        .filter(|r| r[1].contains("failed, the controller reported a fatal status (CSTS.CFS)"))
        .collect();
    assert_eq!(failed.len(), 3, "{f}");
    for r in &failed {
        assert!(r[1].starts_with("NVMe Read of 8 blocks at LBA"), "{f}");
        assert!(r[1].contains(&format!("queue 1 command {}:", r[0])), "{f}");
        assert_eq!(r[2], "kIOReturnDeviceError", "{f}");
    }
    assert_eq!(row(f, "fatal status (CSTS.CFS) before")[1], "true", "{f}");
    assert_eq!(row(f, "controller recoveries")[1], "1", "{f}");
    assert_eq!(row(f, "generation")[1], "1", "{f}");
    assert_eq!(row(f, "queue pair re-created")[1], "1", "{f}");
    assert_eq!(row(f, "fatal status now")[1], "false", "{f}");
    assert!(
        row(f, "read after recovery")[1].ends_with("byte-exact"),
        "{f}"
    );

    let t = section(out, "Teardown");
    for what in ["pages in use", "wired pages", "allocations"] {
        let r = row(t, what);
        assert_eq!(r[1], r[2], "{what} back to the start: {t}");
    }
    assert_eq!(row(t, "IO allocations")[2], "0", "{t}");
    assert_eq!(row(t, "IO page mappings")[2], "0", "{t}");
}

#[test]
fn demo_runs_the_nvme_driver_and_recovers_from_a_fatal_status() {
    let (ok, out, err) = dmakit(&["demo"]);
    assert!(ok, "{err}");
    check_nvme_part(&out);
}

#[test]
fn demo_runs_the_nvme_driver_with_16k_pages() {
    let (ok, out, err) = dmakit(&["demo", "--page-size", "16K", "--seed", "7"]);
    assert!(ok, "{err}");
    check_nvme_part(&out);
    let sc = section(&out, "NVMe: a scattered write and read through the IOMMU");
    assert!(sc.contains("into a 16 KiB page"), "{sc}");
}
