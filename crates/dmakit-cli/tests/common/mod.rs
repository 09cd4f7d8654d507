//! Running the `dmakit` binary in tests.
#![allow(dead_code, reason = "each test binary uses a subset of the helpers")]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dmakit");

/// How a run ended.
#[derive(Debug)]
pub struct Run {
    /// The exit status (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long it took.
    pub took: Duration,
}

impl Run {
    /// Panics with the run's output unless it exited with `code`.
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "exit status; stderr:\n{}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }
}

/// Runs `dmakit args`, through `wrapper` (a command ending by executing its arguments,
/// such as `setpriv …`) unless it is empty.
pub fn run_with(wrapper: &[&str], args: &[&str]) -> Run {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let start = Instant::now();
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary starts");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// Runs `dmakit args`.
pub fn dmakit(args: &[&str]) -> Run {
    run_with(&[], args)
}

/// Runs a bash command line with `$0` the binary; its exit status and standard error.
pub fn shell(script: &str) -> (i32, String) {
    let out = Command::new("bash")
        .args(["-c", script, BIN])
        .stdin(Stdio::null())
        .output()
        .expect("bash starts");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether this process runs as root; prints the skip reason when not.
pub fn need_root(why: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        println!("skipped: {why} needs root");
        return false;
    }
    true
}

/// Whether `program` can be run; prints the skip reason when not.
pub fn have(program: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        println!("skipped: {program} is not installed");
    }
    ok
}

/// A path for a file of this test, unique in this process, removed first.
pub fn temp(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("dmakit-cli-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// `MemAvailable` of /proc/meminfo in bytes.
pub fn mem_available() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

/// Runs as root, but without CAP_SYS_ADMIN.
pub const WITHOUT_SYS_ADMIN: &[&str] = &[
    "setpriv",
    "--inh-caps=-sys_admin",
    "--bounding-set=-sys_admin",
];

/// Runs as user `nobody` with no capabilities at all.
pub const AS_NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
];

/// Runs as root without CAP_IPC_LOCK and with RLIMIT_MEMLOCK at 64 KiB.
pub const WITH_64K_MEMLOCK: &[&str] = &[
    "prlimit",
    "--memlock=65536:65536",
    "setpriv",
    "--inh-caps=-ipc_lock",
    "--bounding-set=-ipc_lock",
];
