//! Lending memory of the host as Rust slices ([`CpuAccess::direct_slice`]), the zero-copy
//! access IOKit's `getBytesNoCopy` gives a kernel driver.
//!
//! Only the host's own allocations are lent (the memory is this process's, so the slice is
//! the mapping itself: no copy). A lend is recorded in the allocation's [`Mapping`](crate::sys::Mapping)
//! (`sys.rs`), which from then on hands out no span that could write the range (nor, for a
//! mutable lend, reach it) and keeps the memory mapped; the host adds the checks that need
//! the whole registry:
//!
//! | while lent | refused with |
//! | --- | --- |
//! | stores (CPU, by physical address); for a mutable lend loads too | `Busy` |
//! | `wire` of a lent page | `Busy` |
//! | `free_pages` of the allocation | `Busy` |
//! | a second mapping of the allocation, registering a region over it | `Busy` / `RangeBusy` |
//! | making it volatile or empty | `Busy` |
//!
//! and a lend is refused while a page of the range is wired more often than the caller
//! holds it itself (any other wiring may be a device's, which may write it), while
//! the allocation is mapped a second time or overlaps a registered region (another view of
//! the same pages), and while it conflicts with another lend.
//!
//! [`CpuAccess::direct_slice`]: dmakit::platform::CpuAccess::direct_slice

use crate::host::Host;
use crate::ledger::ledger;
use crate::sys::Lent;
use dmakit::platform::{DirectSlice, DirectSliceMut, Task};
use dmakit::{Error, Result, VirtAddr};

/// A lend of host memory; ends it when dropped.
pub(crate) struct HostLend<'a> {
    host: &'a Host,
    lent: Option<Lent>,
}

impl DirectSlice for HostLend<'_> {
    fn bytes(&self) -> &[u8] {
        self.lent.as_ref().map_or(&[], |l| l.bytes())
    }
}

impl DirectSliceMut for HostLend<'_> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self.lent.as_mut().and_then(|l| l.bytes_mut()) {
            Some(b) => b,
            None => &mut [],
        }
    }
}

impl Drop for HostLend<'_> {
    fn drop(&mut self) {
        let Some(lent) = self.lent.take() else {
            return;
        };
        let mut s = self.host.lock();
        if let Some(a) = s.allocs.get_mut(&lent.base()) {
            // Cannot fail: the lend came from this allocation's mapping, which stays
            // registered while lent (freeing it is refused). If it did, the lend would stay
            // recorded and the memory mapped for good: safe.
            let _ = a.mapping.end_lend(lent);
        }
    }
}

impl Host {
    /// Lends `[va, va + len)` (see the module docs).
    pub(crate) fn lend(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        held: u32,
        mutable: bool,
    ) -> Result<HostLend<'_>> {
        Self::check_task(task)?;
        if len == 0 {
            return Ok(HostLend {
                host: self,
                lent: None,
            });
        }
        let (first, n) = self.pages(va.0, len, "direct slice")?;
        let mut s = self.lock();
        let (base, a) = s.allocation(va.0, len).ok_or(Error::NotMapped {
            what: "dmakit host memory that can be lent (only the host's own allocations)",
            addr: va.0,
        })?;
        let busy = |addr: u64, why: &'static str| Error::Busy {
            what: "Linux host memory (direct slice)",
            addr,
            why,
        };
        if a.second_maps > 0 {
            return Err(busy(
                base,
                "it is mapped a second time: unmap the MemoryMap first",
            ));
        }
        if s.regions
            .range(..base + a.map_len)
            .next_back()
            .is_some_and(|(&r, region)| r + region.len() > base)
        {
            return Err(busy(base, "a registered region overlaps it"));
        }
        if let Some(p) = ledger().first_wired_over(first, first + n * self.page().bytes(), held) {
            return Err(busy(
                p.max(va.0),
                "it is wired (a device may use it): complete it first",
            ));
        }
        if mutable && !a.mapping.writable() {
            return Err(Error::NotWritable {
                what: "read-only memory (direct slice)",
                addr: va.0,
            });
        }
        let a = s.allocs.get_mut(&base).ok_or(Error::Internal {
            what: "allocation vanished under the host's lock",
        })?;
        let lent = a.mapping.lend(va.0, len, mutable).ok_or(busy(
            va.0,
            "it is lent already (a mutable lend excludes every other)",
        ))?;
        Ok(HostLend {
            host: self,
            lent: Some(lent),
        })
    }

    /// The error for an access to lent memory.
    pub(crate) fn lent_busy(addr: u64) -> Error {
        Error::Busy {
            what: "Linux host memory",
            addr,
            why: "it is lent as a slice (direct_slice): drop the slice first",
        }
    }
}
