//! `dmakit inspect`: allocate on this host and show where the memory landed physically.
//!
//! The report answers the questions a driver writer has before trusting this host with a
//! device: may this process see physical addresses at all, how much may it lock, are there
//! hugepages, and what does a buffer of a given size look like in physical memory — how
//! many runs, where, how scattered.

use crate::caps::Capabilities;
use crate::host::{Host, HUGEPAGE};
use dmakit::platform::{collect_runs, PageRequest, PhysicalMemory, Task};
use dmakit::{Error, PhysRange, Result, VirtAddr};
use std::fmt;

/// At most this many runs are listed in the table; the rest are summarised.
const MAX_ROWS: usize = 64;

/// What [`inspect`] found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Inspection {
    /// The host's capabilities.
    pub caps: Capabilities,
    /// Bytes allocated (the size asked, rounded up to whole pages).
    pub size: u64,
    /// Whether the memory was one 2 MiB hugepage (physically contiguous).
    pub hugepage: bool,
    /// The highest physical address the memory was allowed to reach (`u64::MAX`: any).
    pub phys_limit: u64,
    /// The virtual address it had.
    pub va: VirtAddr,
    /// Its physical runs, in order, adjacent frames coalesced.
    pub runs: Vec<PhysRange>,
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.caps)?;
        writeln!(
            f,
            "\n{} KiB of wired memory{} at virtual {:#x}: {} physical run{}",
            self.size / 1024,
            if self.hugepage {
                " (in one 2 MiB hugepage)"
            } else {
                ""
            },
            self.va.0,
            self.runs.len(),
            if self.runs.len() == 1 { "" } else { "s" }
        )?;
        if self.phys_limit != u64::MAX {
            writeln!(f, "all of it at or below physical {:#x}", self.phys_limit)?;
        }
        writeln!(
            f,
            "{:>5}  {:>18}  {:>18}  {:>10}",
            "run", "virtual", "physical", "bytes"
        )?;
        let mut off = 0;
        for (i, r) in self.runs.iter().enumerate() {
            if i < MAX_ROWS {
                writeln!(
                    f,
                    "{:>5}  {:>#18x}  {:>#18x}  {:>10}",
                    i,
                    self.va.0 + off,
                    r.addr.0,
                    r.len
                )?;
            }
            off += r.len;
        }
        if self.runs.len() > MAX_ROWS {
            writeln!(f, "  ... {} more runs", self.runs.len() - MAX_ROWS)?;
        }
        if !self.hugepage && self.size >= HUGEPAGE {
            writeln!(
                f,
                "{} KiB of it in physical runs of 2 MiB or more (large buffers: {})",
                self.in_large_runs() / 1024,
                if self.caps.shmem_huge_pages.available() {
                    "on transparent 2 MiB pages where the kernel had them"
                } else {
                    "on 4 KiB pages, transparent huge pages for memory objects are off"
                }
            )?;
        }
        Ok(())
    }
}

impl Inspection {
    /// Bytes in physical runs of at least 2 MiB (huge pages, or luck).
    pub fn in_large_runs(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.len >= HUGEPAGE)
            .map(|r| r.len)
            .sum()
    }
}

/// Allocates `size` bytes of wired memory on this host (in a 2 MiB hugepage with
/// `hugepage`), reports its physical runs and the host's capabilities, and frees it.
///
/// Without physical addresses (no `CAP_SYS_ADMIN`) the error is
/// [`Error::NotPermitted`] saying so; with no free hugepage, [`Error::NoMemory`] saying how
/// to reserve one.
///
/// ```
/// use dmakit::Error;
///
/// match dmakit_linux::inspect(64 << 10, false) {
///     Ok(report) => {
///         // Root: 64 KiB of wired memory, coalesced into physical runs.
///         assert_eq!(report.size, 64 << 10);
///         assert_eq!(report.runs.iter().map(|r| r.len).sum::<u64>(), 64 << 10);
///         println!("{report}");
///     }
///     Err(e @ Error::NotPermitted { .. }) => {
///         assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}"); // it says what is missing
///     }
///     Err(e) => return Err(e),
/// }
/// assert!(matches!(dmakit_linux::inspect(0, false), Err(Error::ZeroSize { .. })));
/// # Ok::<(), dmakit::Error>(())
/// ```
pub fn inspect(size: u64, hugepage: bool) -> Result<Inspection> {
    inspect_below(size, hugepage, u64::MAX)
}

/// [`inspect`] for memory at or below physical address `phys_limit` (a device's addressing
/// limit, as [`PageRequest::phys_limit`]).
///
/// The host cannot choose where the kernel places pages: when it placed them above the
/// limit the error is [`Error::NoSuitableMemory`] saying so (for hugepages: that the pool's
/// pages are too high, not too few).
pub fn inspect_below(size: u64, hugepage: bool, phys_limit: u64) -> Result<Inspection> {
    if size == 0 {
        return Err(Error::ZeroSize { what: "inspect" });
    }
    let host = Host::new()?;
    host.pagemap()?;
    let page = host.page_size();
    if hugepage && size > HUGEPAGE {
        return Err(Error::BadArgument {
            what: "a hugepage inspection is at most 2 MiB",
            value: size,
        });
    }
    let size = page.round_up(size).ok_or(Error::Overflow {
        what: "inspect size",
        start: 0,
        len: size,
    })?;
    let req = PageRequest {
        contiguous: hugepage,
        phys_limit,
        ..PageRequest::WIRED
    };
    let va = host.allocate_pages(size, &req)?;
    let runs = collect_runs(&host, Task::KERNEL, va, size);
    host.free_pages(va, size)?;
    Ok(Inspection {
        caps: host.capabilities().clone(),
        size,
        hugepage,
        phys_limit,
        va,
        runs: runs?,
    })
}
