//! Helpers shared by the Linux host's integration tests.
//!
//! Tests that need physical addresses (root with CAP_SYS_ADMIN) print `skipped: <reason>`
//! and return when they cannot have them. Paths that need *less* privilege than the test
//! runner has (no CAP_SYS_ADMIN, a low RLIMIT_MEMLOCK, not root at all) are tested for real
//! by re-running one test of the same binary in a child process under `setpriv`/`prlimit`.
#![allow(dead_code, reason = "each test binary uses a subset of the helpers")]

use dmakit_linux::{AddressMode, Host};
use std::process::Command;

/// A fresh host.
pub fn host() -> Host {
    Host::new().expect("Host::new never fails for lack of privilege")
}

/// The page size in bytes.
pub fn page(h: &Host) -> u64 {
    dmakit::platform::PhysicalMemory::page_size(h).bytes()
}

/// Whether physical addresses are available; prints the skip reason when not.
pub fn need_physical(h: &Host) -> bool {
    if h.address_mode() != AddressMode::Physical {
        println!("skipped: physical addresses need root with CAP_SYS_ADMIN");
        return false;
    }
    true
}

/// Whether this process runs as root; prints the skip reason when not.
pub fn need_root(why: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: {why} needs root");
        return false;
    }
    true
}

/// The `Locked:` kilobytes of the mapping (VMA) holding `addr`, from /proc/self/smaps.
pub fn locked_kib(addr: u64) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = a <= addr && addr < b;
                continue;
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("Locked:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    panic!("no mapping holds {addr:#x}");
}

/// Whether any mapping of this process holds `addr` (from /proc/self/maps).
pub fn is_mapped(addr: u64) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
        .filter_map(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .any(|(a, b)| a <= addr && addr < b)
}

/// `VmLck` of /proc/self/status in KiB.
pub fn vm_lck_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Whether this process is the child half of a [`run_child`] test.
pub fn in_child() -> bool {
    std::env::var_os("DMAKIT_CHILD").is_some()
}

/// Re-runs test `name` of this binary in a child process started through `wrapper` (a
/// command such as `setpriv …` that ends by executing its arguments; empty: run it
/// directly, alone and single-threaded); returns the child's stdout, or `None` after
/// printing why the machine cannot do that. A failing child fails the test with the
/// child's output.
pub fn run_child(name: &str, wrapper: &[&str]) -> Option<String> {
    if !wrapper.is_empty() && !need_root("dropping privileges in a child process") {
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let out = cmd
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("DMAKIT_CHILD", "1")
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(
                stdout.contains("CHILD-OK"),
                "child {name} did not finish:\n{stdout}"
            );
            Some(stdout)
        }
        Ok(o) => panic!(
            "child {name} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            println!("skipped: cannot start the child process: {e}");
            None
        }
    }
}

/// Runs as user `nobody` with no capabilities at all.
pub const AS_NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
];

/// Runs as root, but without CAP_SYS_ADMIN.
pub const AS_ROOT_WITHOUT_SYS_ADMIN: &[&str] = &[
    "setpriv",
    "--inh-caps=-sys_admin",
    "--bounding-set=-sys_admin",
];

/// Runs as root without CAP_IPC_LOCK and with RLIMIT_MEMLOCK at 64 KiB (soft and hard).
pub const WITH_64K_MEMLOCK: &[&str] = &[
    "prlimit",
    "--memlock=65536:65536",
    "setpriv",
    "--inh-caps=-ipc_lock",
    "--bounding-set=-ipc_lock",
];
