//! Errors that say why, with the numbers, and how to fix it.
//!
//! dmakit's [`Error`] carries `&'static str` explanations, but the useful explanation of a
//! failed `mlock` names the *current* `RLIMIT_MEMLOCK`, and that of a failed hugepage
//! allocation the *current* pool. Such messages are built once per distinct text and kept
//! for the life of the process ([`intern`]); the table is bounded, and past the bound a
//! fixed message without the numbers is used, so repeated failures never grow memory.

use crate::caps::{self, kib, HugepagePool, MemlockLimit};
use dmakit::Error;
use rustix::io::Errno;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// At most this many distinct messages are kept.
const MAX_INTERNED: usize = 64;

static INTERNED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// `text` as a `&'static str`: the same allocation for the same text, or `fallback` once
/// the table is full.
pub(crate) fn intern(text: String, fallback: &'static str) -> &'static str {
    let mut set = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&s) = set.get(text.as_str()) {
        return s;
    }
    if set.len() >= MAX_INTERNED {
        return fallback;
    }
    let s: &'static str = Box::leak(text.into_boxed_str());
    set.insert(s);
    s
}

/// The fix for a memlock limit, when the limit's value cannot be shown.
const MEMLOCK_FIX: &str = "RLIMIT_MEMLOCK is too low for this much wired memory and this \
process lacks CAP_IPC_LOCK: raise it before starting (`ulimit -l unlimited`, LimitMEMLOCK= \
in a systemd unit, `memlock` in /etc/security/limits.conf), call setrlimit(RLIMIT_MEMLOCK), \
or grant CAP_IPC_LOCK";

/// Why wiring failed when `RLIMIT_MEMLOCK` is the cause, naming the current limit.
pub(crate) fn memlock_why() -> &'static str {
    let lim = MemlockLimit::probe();
    let text = format!(
        "RLIMIT_MEMLOCK is {} (hard limit {}) and this process lacks CAP_IPC_LOCK: raise it \
         before starting (`ulimit -l unlimited` or `ulimit -l <KiB>` in the shell, \
         LimitMEMLOCK= in a systemd unit, `memlock` in /etc/security/limits.conf), call \
         setrlimit(RLIMIT_MEMLOCK), or grant CAP_IPC_LOCK; VmLck in /proc/self/status shows \
         what is locked already",
        kib(lim.soft),
        kib(lim.hard)
    );
    intern(text, MEMLOCK_FIX)
}

/// The error for a failed `mlock` of `[addr, addr + len)`.
///
/// `ENOMEM`, `EAGAIN` and `EPERM` mean the memlock limit when one applies (a finite soft
/// limit and no `CAP_IPC_LOCK`); otherwise the kernel is short of memory.
pub(crate) fn mlock_error(addr: u64, len: u64, errno: Errno) -> Error {
    let limited = MemlockLimit::probe().soft.is_some() && !caps::has_ipc_lock();
    match errno {
        Errno::NOMEM | Errno::AGAIN | Errno::PERM if limited => Error::CannotWire {
            addr,
            len,
            why: memlock_why(),
        },
        Errno::NOMEM | Errno::AGAIN => Error::NoMemory {
            what: "mlock: the kernel could not make the pages resident (RLIMIT_MEMLOCK is not \
                   the cause: free memory or add swap for other processes)",
            requested: len,
            available: 0,
        },
        e => Error::Os {
            op: "mlock",
            errno: e.raw_os_error(),
            hint: "",
        },
    }
}

/// The fix for an empty hugepage pool, when the pool's numbers cannot be shown.
const HUGEPAGE_FIX: &str = "no free 2 MiB hugepages: reserve some as root with \
`echo N > /proc/sys/vm/nr_hugepages` (N larger than the number reserved now), or boot with \
hugepages=N";

/// The error when no 2 MiB hugepage could be had for `len` bytes.
pub(crate) fn no_hugepages(len: u64) -> Error {
    let pool = HugepagePool::probe();
    let text = format!(
        "no free 2 MiB hugepages ({} free of {} reserved): reserve more as root with \
         `echo {} > /proc/sys/vm/nr_hugepages`, or boot with hugepages=N",
        pool.free,
        pool.total,
        pool.total + len.div_ceil(crate::HUGEPAGE).max(1)
    );
    Error::NoMemory {
        what: intern(text, HUGEPAGE_FIX),
        requested: len,
        available: pool.free * crate::HUGEPAGE,
    }
}

/// Physically contiguous memory larger than one hugepage.
pub(crate) const CONTIGUOUS_TOO_BIG: &str = "Linux host: physically contiguous memory is \
one 2 MiB hugepage, so at most 2 MiB with at most 2 MiB alignment (split the buffer, or use \
VFIO IOVA mode where an IOMMU makes scattered pages contiguous)";

/// Hugepages above a physical limit, when their numbers cannot be shown.
const HUGEPAGES_TOO_HIGH: &str = "Linux host: the free 2 MiB hugepages lie above the \
physical limit: the pool is not short, its pages are too high, so reserving more may not help \
(the kernel chooses where hugepages are: reserve them at boot with hugepages=N while low \
memory is free, let a DMA command bounce, or use VFIO IOVA mode)";

/// The error when every hugepage tried (`tried` of them, the lowest at physical `lowest`)
/// lay above `limit`: the pool has pages, but none the device can reach.
pub(crate) fn hugepages_above_limit(tried: usize, lowest: u64, len: u64, limit: u64) -> Error {
    let pool = HugepagePool::probe();
    let text = format!(
        "Linux host: {tried} of the {} reserved 2 MiB hugepages tried, all above the \
         physical limit {limit:#x} (the lowest at {lowest:#x}): the pool is not short, its \
         pages are too high, so reserving more may not help (the kernel chooses where \
         hugepages are: reserve them at boot with hugepages=N while low memory is free, let a \
         DMA command bounce, or use VFIO IOVA mode)",
        pool.total
    );
    Error::NoSuitableMemory {
        what: intern(text, HUGEPAGES_TOO_HIGH),
        requested: len,
        align: crate::HUGEPAGE,
        limit,
        contiguous: true,
    }
}

/// A physical limit the kernel's placement did not meet.
pub(crate) const ABOVE_LIMIT: &str = "Linux host: the kernel placed pages outside the physical \
window: above its limit or below its floor (userspace cannot choose where its pages land; let a DMA command bounce, or use VFIO \
IOVA mode)";

/// An `Error::Os` for a failed call.
pub(crate) fn os(op: &'static str, errno: Errno, hint: &'static str) -> Error {
    Error::Os {
        op,
        errno: errno.raw_os_error(),
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_text_is_shared_and_bounded() {
        let a = intern("dmakit test message".to_string(), "full");
        let b = intern("dmakit test message".to_string(), "full");
        assert!(std::ptr::eq(a, b), "one allocation per distinct text");
        for i in 0..2 * MAX_INTERNED {
            let s = intern(format!("dmakit filler {i}"), "full");
            assert!(s == "full" || s == format!("dmakit filler {i}"));
        }
        assert_eq!(intern("never seen before".to_string(), "full"), "full");
    }

    #[test]
    #[cfg_attr(miri, ignore = "getrlimit: a system call Miri does not emulate")]
    fn memlock_message_names_the_limit_and_the_fix() {
        let why = memlock_why();
        assert!(why.contains("RLIMIT_MEMLOCK"), "{why}");
        assert!(why.contains("ulimit -l"), "{why}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /sys/kernel/mm/hugepages, which Miri isolates")]
    fn hugepage_message_says_how_to_reserve() {
        let e = no_hugepages(crate::HUGEPAGE);
        assert!(e.to_string().contains("nr_hugepages"), "{e}");
        assert_eq!(e.io_return(), dmakit::IoReturn::NO_MEMORY);
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /sys/kernel/mm/hugepages, which Miri isolates")]
    fn hugepages_above_the_limit_are_not_a_reason_to_reserve_more() {
        let e = hugepages_above_limit(2, 0x2_d680_0000, crate::HUGEPAGE, 0x1F_FFFF);
        assert!(
            matches!(
                e,
                Error::NoSuitableMemory {
                    limit: 0x1F_FFFF,
                    contiguous: true,
                    ..
                }
            ),
            "{e}"
        );
        let text = e.to_string();
        // The numbers, unless the interned table is full (another test fills it).
        assert!(
            text.contains("too high") && text.contains("may not help"),
            "{text}"
        );
        assert!(!text.contains("reserve more"), "{text}");
        assert_eq!(e.io_return(), dmakit::IoReturn::NO_MEMORY);
    }
}
