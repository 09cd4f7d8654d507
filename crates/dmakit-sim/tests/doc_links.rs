//! The workspace's documents (README.md, DESIGN.md, BENCHMARKS.md, docs/*.md) link only to
//! files that exist in the repository, and to headings those files have.

use std::fs;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The documents checked: the top-level ones and every `docs/*.md`.
fn documents() -> Vec<PathBuf> {
    let root = workspace();
    let mut docs: Vec<PathBuf> = ["README.md", "DESIGN.md", "BENCHMARKS.md"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    let dir = fs::read_dir(root.join("docs")).expect("the docs directory");
    for entry in dir.flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            docs.push(entry.path());
        }
    }
    docs
}

/// The lines of a markdown text outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push(line);
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    prose(text)
        .iter()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#')))
        .collect()
}

/// The targets of `[text](target)` links in the prose of `text`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    out
}

/// What is wrong with `target` linked from `doc`, if anything.
fn broken(doc: &Path, target: &str) -> Option<String> {
    if target.starts_with("http://") || target.starts_with("https://") {
        return None;
    }
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    let file = if path.is_empty() {
        doc.to_path_buf()
    } else {
        doc.parent()?.join(path)
    };
    if !file.exists() {
        return Some(format!("{target}: no such file"));
    }
    if anchor.is_empty() {
        return None;
    }
    let text = fs::read_to_string(&file).unwrap_or_default();
    (!anchors(&text).iter().any(|a| a == anchor)).then(|| format!("{target}: no such heading"))
}

#[test]
fn every_link_of_the_documents_resolves() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for doc in documents() {
        let text = fs::read_to_string(&doc).expect("a readable document");
        for target in links(&text) {
            checked += 1;
            if let Some(p) = broken(&doc, &target) {
                problems.push(format!("{}: {p}", doc.display()));
            }
        }
    }
    println!("{checked} links checked");
    assert!(
        checked > 50,
        "only {checked} links found: is the parser broken?"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_catches_a_missing_file_and_a_missing_heading() {
    let readme = workspace().join("README.md");
    assert!(broken(&readme, "DESIGN.md").is_none());
    assert!(broken(&readme, "DESIGN.md#divergences-from-iokit").is_none());
    assert!(broken(&readme, "NO-SUCH-FILE.md").is_some());
    assert!(broken(&readme, "DESIGN.md#no-such-heading").is_some());
    assert_eq!(
        slug(" The platform seam (`crates/dmakit/src/platform/`)"),
        "the-platform-seam-cratesdmakitsrcplatform"
    );
}
