//! A reader that goes away ends the output quietly: `dmakit … | head -1` exits 0 with
//! nothing on standard error (`println!` used to panic on the closed pipe).

mod common;

use common::*;

/// Runs `dmakit args | head -n 1`; dmakit's exit status, standard error and the line.
fn first_line(args: &str) -> (i32, String, String) {
    let err = temp("pipe.err");
    let line = temp("pipe.out");
    let script = format!(
        r#""$0" {args} 2>"{}" | head -n 1 >"{}"; exit "${{PIPESTATUS[0]}}""#,
        err.display(),
        line.display()
    );
    let (code, shell_err) = shell(&script);
    let text = std::fs::read_to_string(&err).unwrap_or_default() + &shell_err;
    let first = std::fs::read_to_string(&line).unwrap_or_default();
    let _ = std::fs::remove_file(err);
    let _ = std::fs::remove_file(line);
    (code, text, first)
}

#[test]
fn a_closed_pipe_ends_the_demo_quietly() {
    // `head` leaves after the first line while the demo still has most of its work ahead.
    let (code, err, first) = first_line("demo");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "quietly: {err}");
    assert_eq!(code, 0);
    assert_eq!(first, "dmakit demo: a simulated machine (seed 42)\n");
    let (code, err, first) = first_line("demo --json");
    assert_eq!((code, err.as_str(), first.as_str()), (0, "", "{\n"));
}

#[test]
fn a_closed_pipe_ends_inspect_quietly() {
    let (code, err, first) = first_line("inspect --size 64K");
    assert!(!err.contains("panicked"), "{err}");
    if code == 3 {
        println!("skipped: no physical addresses here ({err})");
        return;
    }
    assert!(err.is_empty(), "quietly: {err}");
    assert_eq!(code, 0);
    assert!(first.starts_with("address mode"), "{first}");
    let (code, err, _) = first_line("inspect --size 64K --json");
    assert_eq!((code, err.as_str()), (0, ""));
}

#[test]
fn a_closed_pipe_ends_help_quietly() {
    let (code, err, first) = first_line("--help");
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(first.contains("IOKit"), "{first}");
}

/// A closed standard error (`2>&-`) or one that is full is no reason to panic either.
#[test]
fn a_closed_or_full_stderr_is_not_a_panic() {
    let (code, err) = shell(r#""$0" inspect --size 0 2>&-"#);
    assert_eq!(code, 2, "{err}");
    if std::path::Path::new("/dev/full").exists() {
        let (code, _) = shell(r#""$0" inspect --size 0 2>/dev/full"#);
        assert_eq!(code, 2);
    }
}
