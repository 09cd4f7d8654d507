//! Host limits checked before they bite: wiring more than the kernel has available, or
//! more than `RLIMIT_MEMLOCK` lets this process lock, is refused at once with the numbers,
//! before `MAP_POPULATE` makes the pages resident (which, for a request larger than the
//! machine, ends with the kernel's OOM killer rather than an error).

use crate::caps::{self, HugepagePool, MemlockLimit};
use crate::hints;
use dmakit::{Error, Result};

/// What this host lets this process wire now: the numbers a caller needs to refuse a
/// request before trying it (and to say why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WireLimits {
    /// `MemAvailable` of `/proc/meminfo` in bytes (`None` if it cannot be read).
    pub mem_available: Option<u64>,
    /// `RLIMIT_MEMLOCK` of this process.
    pub memlock: MemlockLimit,
    /// This process has `CAP_IPC_LOCK`: the lock limit does not apply to it.
    pub ipc_lock: bool,
    /// Bytes this process has locked already (`VmLck` of `/proc/self/status`).
    pub locked: u64,
    /// The 2 MiB hugepage pool.
    pub hugepages: HugepagePool,
}

impl WireLimits {
    /// The limits now.
    pub fn probe() -> WireLimits {
        WireLimits {
            mem_available: mem_available(),
            memlock: MemlockLimit::probe(),
            ipc_lock: caps::has_ipc_lock(),
            locked: locked_now(),
            hugepages: HugepagePool::probe(),
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (`None` if it cannot be read).
pub(crate) fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable:")
}

/// Bytes this process has locked now (`VmLck` in `/proc/self/status`; 0 if unreadable).
pub(crate) fn locked_now() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| kib_field(&t, "VmLck:"))
        .unwrap_or(0)
}

/// The value of a `Name:  N kB` line, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses to wire `len` bytes when the kernel's available memory or the lock limit
/// cannot hold them; `locked` is what this process has locked already.
pub(crate) fn check_wire(len: u64, locked: u64) -> Result<()> {
    if let Some(avail) = mem_available() {
        if len > avail {
            return Err(Error::NoMemory {
                what: "wired memory: more than the kernel has available now (MemAvailable in \
                       /proc/meminfo; wired pages cannot be swapped)",
                requested: len,
                available: avail,
            });
        }
    }
    if let Some(limit) = MemlockLimit::probe().soft {
        if !caps::has_ipc_lock() && locked.saturating_add(len) > limit {
            return Err(Error::CannotWire {
                addr: 0,
                len,
                why: hints::memlock_why(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let m = "MemTotal:       24608368 kB\nMemFree:  1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_mem_available(m), Some(20_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc/meminfo, which Miri isolates")]
    fn more_than_the_machine_is_refused_at_once() {
        let e = check_wire(u64::MAX / 2, 0).unwrap_err();
        assert!(
            matches!(e, Error::NoMemory { available, .. } if available > 0),
            "{e}"
        );
    }
}
