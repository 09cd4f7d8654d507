//! Each kind of failure has its exit status, listed in `--help`: 2 for bad usage, 3 for
//! missing privileges, 4 for what the host cannot provide, 1 for a run that went wrong.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn help_lists_the_exit_statuses_for_every_command() {
    for args in [
        &["--help"][..],
        &["demo", "--help"],
        &["inspect", "--help"],
        &["bench", "--help"],
    ] {
        let r = dmakit(args);
        r.expect(0);
        assert!(r.stdout.contains("Exit status:"), "{args:?}:\n{}", r.stdout);
        for line in [
            "  0  success",
            "  1  failure",
            "  2  bad usage",
            "  3  missing privileges",
            "  4  this host cannot provide",
        ] {
            assert!(
                r.stdout.contains(line),
                "{args:?} lacks {line:?}:\n{}",
                r.stdout
            );
        }
    }
    dmakit(&["--version"]).expect(0);
}

#[test]
fn bad_usage_is_status_2_with_a_message_naming_the_value() {
    for (args, says) in [
        (&["frobnicate"][..], "unrecognized subcommand"),
        (&["demo", "--seed", "-1"], "unexpected argument"),
        (&["inspect"], "--size"),
        (&["inspect", "--size", "lots"], "`lots` is not a size"),
        (&["inspect", "--size", "1bbb"], "unknown unit `bbb`"),
        (&["inspect", "--size", "0x"], "`0x` is not a size"),
        (
            &["inspect", "--size", "99999999999999999999G"],
            "is not a size",
        ),
        (&["inspect", "--size", "0"], "--size must not be zero"),
        (
            &["inspect", "--size", "4M", "--hugepage"],
            "at most one 2 MiB hugepage",
        ),
        (
            &["inspect", "--size", "4K", "--below", "0"],
            "--below 0 leaves no physical address",
        ),
        (
            &["demo", "--page-size", "1G"],
            "`1G` (1 GiB) is not a page size the demo runs with",
        ),
        (
            &["demo", "--page-size", "3000"],
            "use 4K (x86-64, most ARM64) or 16K (Apple silicon)",
        ),
        (
            &["demo", "--page-size", "64K"],
            "the page sizes of the hardware dmakit targets",
        ),
        (
            &["demo", "--svg", "/nonexistent-dir/x.svg"],
            "--svg /nonexistent-dir/x.svg: cannot open it",
        ),
        (
            &["bench", "--json", "out.json"],
            "unexpected argument 'out.json'",
        ),
    ] {
        let r = dmakit(args);
        r.expect(2);
        assert!(
            r.stderr.contains(says),
            "{args:?} should say {says:?}:\n{}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
}

#[test]
fn a_bench_report_path_that_cannot_be_written_fails_before_the_run() {
    let r = dmakit(&["bench", "--quick", "--out", "/proc/no/such/dir/report.json"]);
    r.expect(2);
    assert!(
        r.stderr.contains("--out /proc/no/such/dir/report.json"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("[  0%]"),
        "nothing was measured: {}",
        r.stderr
    );
    assert!(r.took < Duration::from_secs(5), "took {:?}", r.took);
}

/// `inspect --size 64G` on a smaller machine used to wire until the OOM killer ended it:
/// it is refused within a second with the numbers.
#[test]
fn more_than_mem_available_is_refused_at_once_with_the_numbers() {
    let avail = mem_available();
    let gib = (avail >> 30) * 2 + 64;
    let size = format!("{gib}G");
    let r = dmakit(&["inspect", "--size", &size]);
    r.expect(4);
    assert!(r.took < Duration::from_secs(1), "took {:?}", r.took);
    let want = format!(
        "--size {gib} GiB ({:#x} bytes) is more than this host can wire now",
        gib << 30
    );
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    assert!(
        r.stderr.contains("MemAvailable in /proc/meminfo is "),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
}

#[test]
fn more_than_rlimit_memlock_is_refused_with_the_limit() {
    if !need_root("dropping CAP_IPC_LOCK") || !have("prlimit") || !have("setpriv") {
        return;
    }
    let r = run_with(WITH_64K_MEMLOCK, &["inspect", "--size", "1M"]);
    r.expect(4);
    assert!(r.took < Duration::from_secs(1), "took {:?}", r.took);
    for want in [
        "--size 1 MiB (0x100000 bytes)",
        "RLIMIT_MEMLOCK is 64 KiB",
        "lacks CAP_IPC_LOCK",
    ] {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
}

#[test]
fn missing_privileges_are_status_3() {
    if !need_root("dropping privileges") || !have("setpriv") {
        return;
    }
    for wrapper in [WITHOUT_SYS_ADMIN, AS_NOBODY] {
        let r = run_with(wrapper, &["inspect", "--size", "16K"]);
        r.expect(3);
        assert!(r.stderr.contains("CAP_SYS_ADMIN"), "{}", r.stderr);
        assert!(r.stderr.contains("kIOReturnNotPermitted"), "{}", r.stderr);
    }
}

#[test]
fn inspect_reports_physical_runs_or_why_not() {
    let r = dmakit(&["inspect", "--size", "16K"]);
    match r.code {
        0 => assert!(r.stdout.contains("physical run"), "{}", r.stdout),
        3 => assert!(r.stderr.contains("CAP_SYS_ADMIN"), "{}", r.stderr),
        _ => panic!("unexpected: {r:?}"),
    }
}

/// Writing the output failing is a failure (status 1), never a panic.
#[test]
fn an_output_that_cannot_be_written_is_status_1() {
    if !std::path::Path::new("/dev/full").exists() {
        println!("skipped: no /dev/full");
        return;
    }
    for cmd in [
        r#""$0" demo >/dev/full"#,
        r#""$0" --help >/dev/full"#,
        r#""$0" demo --json >/dev/full"#,
        r#""$0" demo --svg /dev/full >/dev/null"#,
    ] {
        let (code, err) = shell(cmd);
        assert_eq!(code, 1, "{cmd}: {err}");
        assert!(err.contains("No space left"), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
}
