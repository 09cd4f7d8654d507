//! `inspect`'s request checked against what this host lets the process wire *before*
//! anything is allocated: wiring more than the kernel has available ends with the OOM
//! killer, not an error, so the numbers are compared first and a refusal names them.

use crate::exit::{Failure, Status};
use crate::size::{both, human};
use dmakit_linux::{WireLimits, HUGEPAGE};

/// What `inspect` is asked for.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Bytes.
    pub size: u64,
    /// In one 2 MiB hugepage.
    pub hugepage: bool,
}

/// Refuses `req` when it is malformed (bad usage) or more than `limits` allow (the
/// host cannot provide it), with the numbers.
pub fn check(req: Request, limits: &WireLimits) -> Result<(), Failure> {
    if req.size == 0 {
        return Err(Failure::usage("--size must not be zero"));
    }
    if req.hugepage {
        return hugepage(req.size, limits);
    }
    available(req.size, limits)?;
    memlock(req.size, limits)
}

fn hugepage(size: u64, limits: &WireLimits) -> Result<(), Failure> {
    if size > HUGEPAGE {
        return Err(Failure::usage(format!(
            "--hugepage holds at most one 2 MiB hugepage (physically contiguous memory on \
             Linux is one hugepage); --size asks for {}",
            both(size)
        )));
    }
    let pool = limits.hugepages;
    if pool.free == 0 {
        return Err(Failure::new(
            Status::Resources,
            format!(
                "--hugepage needs a free 2 MiB hugepage: {} free of {} reserved \
                 (/sys/kernel/mm/hugepages/hugepages-2048kB); reserve one as root with \
                 `echo {} > /proc/sys/vm/nr_hugepages`, or boot with hugepages=N",
                pool.free,
                pool.total,
                pool.total + 1
            ),
        ));
    }
    Ok(())
}

fn available(size: u64, limits: &WireLimits) -> Result<(), Failure> {
    match limits.mem_available {
        Some(avail) if size > avail => Err(Failure::new(
            Status::Resources,
            format!(
                "--size {} is more than this host can wire now: MemAvailable in /proc/meminfo \
                 is {}, and wired pages cannot be swapped out",
                both(size),
                both(avail)
            ),
        )),
        _ => Ok(()),
    }
}

fn memlock(size: u64, limits: &WireLimits) -> Result<(), Failure> {
    let Some(limit) = limits.memlock.soft.filter(|_| !limits.ipc_lock) else {
        return Ok(());
    };
    if limits.locked.saturating_add(size) <= limit {
        return Ok(());
    }
    let hard = limits.memlock.hard.map_or("unlimited".to_string(), human);
    Err(Failure::new(
        Status::Resources,
        format!(
            "--size {} is more than this process may lock: RLIMIT_MEMLOCK is {} (hard limit \
             {hard}), {} locked already, and it lacks CAP_IPC_LOCK; raise the limit before \
             starting (`ulimit -l <KiB>` or `ulimit -l unlimited`), or run with CAP_IPC_LOCK",
            both(size),
            both(limit),
            human(limits.locked)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmakit_linux::{HugepagePool, MemlockLimit};

    fn limits() -> WireLimits {
        let mut l = WireLimits::probe();
        l.mem_available = Some(1 << 30);
        l.memlock = MemlockLimit {
            soft: Some(64 << 10),
            hard: Some(64 << 10),
        };
        l.ipc_lock = false;
        l.locked = 0;
        l.hugepages = HugepagePool { total: 2, free: 0 };
        l
    }

    fn req(size: u64, hugepage: bool) -> Request {
        Request { size, hugepage }
    }

    #[test]
    fn each_limit_is_refused_with_its_numbers() {
        let l = limits();
        let e = check(req(2 << 30, false), &l).unwrap_err();
        assert_eq!(e.status, Status::Resources);
        assert!(
            e.message
                .contains("MemAvailable in /proc/meminfo is 1 GiB (0x40000000 bytes)"),
            "{e}"
        );
        assert!(e.message.contains("--size 2 GiB (0x80000000 bytes)"), "{e}");
        let e = check(req(1 << 20, false), &l).unwrap_err();
        assert!(e.message.contains("RLIMIT_MEMLOCK is 64 KiB"), "{e}");
        check(req(64 << 10, false), &l).unwrap();
        let e = check(req(4 << 20, true), &l).unwrap_err();
        assert_eq!(e.status, Status::Usage);
        let e = check(req(4096, true), &l).unwrap_err();
        assert_eq!(e.status, Status::Resources);
        assert!(e.message.contains("0 free of 2 reserved"), "{e}");
        assert!(e.message.contains("echo 3 >"), "{e}");
        assert_eq!(check(req(0, false), &l).unwrap_err().status, Status::Usage);
    }

    #[test]
    fn the_lock_limit_does_not_apply_with_cap_ipc_lock() {
        let mut l = limits();
        l.ipc_lock = true;
        check(req(1 << 20, false), &l).unwrap();
        l.hugepages.free = 1;
        check(req(2 << 20, true), &l).unwrap();
    }
}
