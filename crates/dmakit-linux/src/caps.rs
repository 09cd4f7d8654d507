//! What this host can do, probed rather than assumed.
//!
//! A Linux process can be asked for physical addresses, locked memory and hugepages, and
//! each can be refused for a different reason: a missing capability, a resource limit, an
//! empty hugepage pool. [`Capabilities`] records the facts [`Host::new`](crate::Host::new)
//! found, and [`AddressMode`] says — explicitly, never guessed — how the host produces the
//! addresses a device is given.
//!
//! | fact | where it comes from |
//! | --- | --- |
//! | page size | the auxiliary vector (`AT_PAGESZ`) |
//! | root, `CAP_SYS_ADMIN`, `CAP_IPC_LOCK` | `geteuid`, `CapEff` of `/proc/thread-self/status` |
//! | pagemap PFNs | a locked probe page translated through `/proc/self/pagemap` |
//! | `RLIMIT_MEMLOCK` | `getrlimit` |
//! | 2 MiB hugepages | `/sys/kernel/mm/hugepages/hugepages-2048kB/{nr,free}_hugepages` |
//! | huge pages for memory objects | `/sys/kernel/mm/transparent_hugepage/shmem_enabled` (and the 2 MiB size's own setting where the kernel has one) |
//! | `clflushopt` | CPUID leaf 7 |

use std::fmt;

/// `CAP_IPC_LOCK`: lock memory beyond `RLIMIT_MEMLOCK`.
const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_ADMIN`: among much else, read frame numbers from pagemap.
const CAP_SYS_ADMIN: u32 = 21;

const HUGEPAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
const SHMEM_THP_2M: &str = "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled";

/// Whether the kernel backs memory objects (`memfd`, shmem) with transparent 2 MiB pages:
/// the setting selected in `shmem_enabled`. Wired buffers of 2 MiB and more are placed
/// where it can (2 MiB-aligned, `MADV_HUGEPAGE`), so they come in 2 MiB physical runs:
/// fewer segments, and one IOMMU mapping per 2 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ShmemHugePages {
    /// Never (the usual default), or the file is absent.
    #[default]
    Never,
    /// For mappings advised with `MADV_HUGEPAGE` (what dmakit does).
    Advise,
    /// Whenever a 2 MiB-aligned range fits (`always`, `within_size`, `force`).
    Always,
}

impl ShmemHugePages {
    /// The selected (bracketed) word of a `shmem_enabled` file, `inherit` meaning `parent`.
    pub(crate) fn parse(text: &str, parent: ShmemHugePages) -> ShmemHugePages {
        let chosen = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
            .unwrap_or("never");
        match chosen {
            "advise" => ShmemHugePages::Advise,
            "always" | "within_size" | "force" => ShmemHugePages::Always,
            "inherit" => parent,
            _ => ShmemHugePages::Never,
        }
    }

    /// The setting now: the 2 MiB size's own file where the kernel has per-size settings,
    /// else the global one.
    pub fn probe() -> ShmemHugePages {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let global = read(SHMEM_THP).map_or(ShmemHugePages::Never, |t| {
            Self::parse(&t, ShmemHugePages::Never)
        });
        match read(SHMEM_THP_2M) {
            Some(t) => Self::parse(&t, global),
            None => global,
        }
    }

    /// Whether large buffers get 2 MiB pages.
    pub fn available(self) -> bool {
        self != ShmemHugePages::Never
    }
}

/// How the host turns memory into addresses a device can use.
///
/// Chosen once, by probing, and reported; dmakit never guesses. More modes (IO virtual
/// addresses through VFIO) will join this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressMode {
    /// CPU physical addresses read from `/proc/self/pagemap` (needs `CAP_SYS_ADMIN`). Only
    /// right for a device that reaches memory without an IOMMU translating, and only stable
    /// while pages are wired — `mlock` keeps pages resident but does not stop the kernel
    /// from migrating them (compaction, NUMA balancing); VFIO pinning does.
    Physical,
    /// This process cannot learn device-visible addresses: pagemap hides frame numbers
    /// (no `CAP_SYS_ADMIN`). Translation fails with
    /// [`Error::NotPermitted`](dmakit::Error::NotPermitted); memory still works for the CPU.
    Unavailable,
}

impl fmt::Display for AddressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressMode::Physical => "physical (from /proc/self/pagemap)",
            AddressMode::Unavailable => {
                "unavailable (pagemap hides frame numbers without CAP_SYS_ADMIN)"
            }
        })
    }
}

/// A 2 MiB hugepage pool: the reservation and what is free of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HugepagePool {
    /// Pages reserved (`nr_hugepages`).
    pub total: u64,
    /// Pages free right now (`free_hugepages`); some may be promised to mappings already.
    pub free: u64,
}

impl HugepagePool {
    /// The 2 MiB pool as sysfs reports it now (zeros if the kernel has no hugetlbfs).
    pub fn probe() -> HugepagePool {
        let read = |name: &str| {
            std::fs::read_to_string(format!("{HUGEPAGES_2M}/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        HugepagePool {
            total: read("nr_hugepages"),
            free: read("free_hugepages"),
        }
    }
}

/// The `RLIMIT_MEMLOCK` of this process: how much memory it may lock (wire) without
/// `CAP_IPC_LOCK`. `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemlockLimit {
    /// The soft limit, the one enforced.
    pub soft: Option<u64>,
    /// The hard limit, the most the soft limit can be raised to without privilege.
    pub hard: Option<u64>,
}

impl MemlockLimit {
    /// The limit now.
    pub fn probe() -> MemlockLimit {
        let r = rustix::process::getrlimit(rustix::process::Resource::Memlock);
        MemlockLimit {
            soft: r.current,
            hard: r.maximum,
        }
    }
}

/// Formats a byte limit in KiB, or "unlimited".
pub(crate) fn kib(limit: Option<u64>) -> String {
    match limit {
        None => "unlimited".to_string(),
        Some(b) => format!("{} KiB", b / 1024),
    }
}

/// The effective capability set of the calling thread (0 if unreadable).
pub(crate) fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .or_else(|_| std::fs::read_to_string("/proc/self/status"))
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether the calling thread has `CAP_IPC_LOCK` now.
pub(crate) fn has_ipc_lock() -> bool {
    effective_caps() & (1 << CAP_IPC_LOCK) != 0
}

/// What this host can do, as probed by [`Host::new`](crate::Host::new).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The OS page size in bytes.
    pub page_size: u64,
    /// The effective user ID is 0.
    pub root: bool,
    /// The effective capability set has `CAP_SYS_ADMIN` (what pagemap checks; root
    /// without it sees zero frame numbers too).
    pub cap_sys_admin: bool,
    /// The effective capability set has `CAP_IPC_LOCK` (`RLIMIT_MEMLOCK` does not apply).
    pub cap_ipc_lock: bool,
    /// `/proc/self/pagemap` returned a non-zero frame number for a locked probe page.
    pub pagemap_pfns: bool,
    /// `RLIMIT_MEMLOCK` when probed.
    pub memlock: MemlockLimit,
    /// The 2 MiB hugepage pool when probed.
    pub hugepages_2m: HugepagePool,
    /// Whether memory objects may be backed by transparent 2 MiB pages.
    pub shmem_huge_pages: ShmemHugePages,
    /// The CPU has `clflushopt` (cache maintenance uses it instead of `clflush`).
    pub clflushopt: bool,
    /// How device-visible addresses are produced.
    pub address_mode: AddressMode,
}

impl Capabilities {
    /// Probes everything but pagemap, which needs a page to translate (the host does that).
    pub(crate) fn probe(page_size: u64, pagemap_pfns: bool) -> Capabilities {
        let caps = effective_caps();
        Capabilities {
            page_size,
            root: rustix::process::geteuid().is_root(),
            cap_sys_admin: caps & (1 << CAP_SYS_ADMIN) != 0,
            cap_ipc_lock: caps & (1 << CAP_IPC_LOCK) != 0,
            pagemap_pfns,
            memlock: MemlockLimit::probe(),
            hugepages_2m: HugepagePool::probe(),
            shmem_huge_pages: ShmemHugePages::probe(),
            clflushopt: crate::sys::has_clflushopt(),
            address_mode: if pagemap_pfns {
                AddressMode::Physical
            } else {
                AddressMode::Unavailable
            },
        }
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "address mode       {}", self.address_mode)?;
        writeln!(f, "page size          {} KiB", self.page_size / 1024)?;
        writeln!(
            f,
            "privileges         root: {}, CAP_SYS_ADMIN: {}, CAP_IPC_LOCK: {}",
            yes(self.root),
            yes(self.cap_sys_admin),
            yes(self.cap_ipc_lock)
        )?;
        writeln!(
            f,
            "pagemap PFNs       {}",
            if self.pagemap_pfns {
                "visible"
            } else {
                "hidden (needs CAP_SYS_ADMIN)"
            }
        )?;
        writeln!(
            f,
            "RLIMIT_MEMLOCK     {} (hard {}){}",
            kib(self.memlock.soft),
            kib(self.memlock.hard),
            if self.cap_ipc_lock {
                ", not enforced: CAP_IPC_LOCK"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "2 MiB hugepages    {} free of {} reserved",
            self.hugepages_2m.free, self.hugepages_2m.total
        )?;
        writeln!(
            f,
            "large buffers      {}",
            match self.shmem_huge_pages {
                ShmemHugePages::Never => {
                    "4 KiB pages (transparent huge pages for memory objects are off: \
                     `echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled` \
                     allows 2 MiB pages)"
                }
                ShmemHugePages::Advise | ShmemHugePages::Always => {
                    "2 MiB transparent huge pages where the kernel has them free (2 MiB and up, \
                     2 MiB-aligned)"
                }
            }
        )?;
        write!(
            f,
            "cache flush        {}",
            if !cfg!(target_arch = "x86_64") {
                "unsupported on this architecture"
            } else if self.clflushopt {
                "clflushopt + mfence"
            } else {
                "clflush + mfence"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shmem_settings_read_the_selected_word() {
        use ShmemHugePages::*;
        let parse = |t: &str| ShmemHugePages::parse(t, Advise);
        assert_eq!(parse("always within_size advise [never] deny force"), Never);
        assert_eq!(
            parse("always within_size [advise] never deny force"),
            Advise
        );
        assert_eq!(parse("[within_size] advise never"), Always);
        assert_eq!(parse("always [inherit] within_size advise never"), Advise);
        assert_eq!(parse("garbage"), Never);
        assert_eq!(parse("[deny]"), Never);
        assert!(!Never.available() && Advise.available() && Always.available());
    }

    #[test]
    fn limits_format_in_kib() {
        assert_eq!(kib(None), "unlimited");
        assert_eq!(kib(Some(8 << 20)), "8192 KiB");
    }

    #[test]
    fn modes_say_what_they_need() {
        assert!(AddressMode::Unavailable
            .to_string()
            .contains("CAP_SYS_ADMIN"));
        assert!(AddressMode::Physical.to_string().contains("pagemap"));
    }
}
