//! `dmakit inspect`: allocate on this host and show where the memory landed physically.

use crate::host::{Capabilities, Host, HUGEPAGE};
use dmakit::platform::{collect_runs, PageRequest, PhysicalMemory, Task};
use dmakit::{Error, PhysRange, Result, VirtAddr};
use std::fmt;

/// What [`inspect`] found.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The host's capabilities.
    pub caps: Capabilities,
    /// Bytes allocated (rounded to pages, or one hugepage).
    pub size: u64,
    /// Whether a hugepage was used.
    pub hugepage: bool,
    /// The virtual address it had.
    pub va: VirtAddr,
    /// Its physical runs, in order.
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
                " (one 2 MiB hugepage)"
            } else {
                ""
            },
            self.va.0,
            self.runs.len(),
            if self.runs.len() == 1 { "" } else { "s" }
        )?;
        writeln!(
            f,
            "{:>4}  {:>18}  {:>18}  {:>10}",
            "#", "virtual", "physical", "bytes"
        )?;
        let mut off = 0;
        for (i, r) in self.runs.iter().enumerate() {
            writeln!(
                f,
                "{:>4}  {:>#18x}  {:>#18x}  {:>10}",
                i,
                self.va.0 + off,
                r.addr.0,
                r.len
            )?;
            off += r.len;
        }
        Ok(())
    }
}

/// Allocates `size` bytes of wired memory (a 2 MiB hugepage with `hugepage`), reports its
/// physical runs, and frees it. Without CAP_SYS_ADMIN the error says so.
pub fn inspect(size: u64, hugepage: bool) -> Result<Inspection> {
    if size == 0 {
        return Err(Error::ZeroSize { what: "inspect" });
    }
    let host = Host::new()?;
    let page = host.page_size();
    let size = if hugepage {
        if size > HUGEPAGE {
            return Err(Error::BadArgument {
                what: "a hugepage inspection is at most 2 MiB",
                value: size,
            });
        }
        HUGEPAGE
    } else {
        page.round_up(size).ok_or(Error::Overflow {
            what: "inspect size",
            start: 0,
            len: size,
        })?
    };
    let req = PageRequest {
        contiguous: hugepage,
        ..PageRequest::WIRED
    };
    let va = host.allocate_pages(size, &req)?;
    let runs = collect_runs(&host, Task::KERNEL, va, size);
    host.free_pages(va, size)?;
    Ok(Inspection {
        caps: host.capabilities().clone(),
        size,
        hugepage,
        va,
        runs: runs?,
    })
}
