//! Purgeable memory on the host ([`VirtualMemory::set_purgeable`]), with `fallocate`
//! hole punching on the allocation's memfd.
//!
//! Linux has no way for the kernel to discard *shared* memory (a memfd) by itself under
//! pressure: `MADV_FREE` only applies to private anonymous memory. So the host records each
//! page's state, and discards volatile pages when asked to: [`Host::purge_volatile`] (for
//! example from the application's memory-pressure handler) punches holes in the memfd
//! (`FALLOC_FL_PUNCH_HOLE`), which gives the pages back to the system at once; they read as
//! zeros from then on. [`PurgeableRequest::Empty`] punches at once.
//!
//! Only pageable allocations of the host can be volatile (wired ones: `Busy`, as wired
//! memory must stay); pages wired through [`Wiring::wire`](dmakit::platform::Wiring::wire),
//! lent as slices, or of an allocation mapped a second time are refused (`Busy`) and never
//! purged.
//!
//! [`VirtualMemory::set_purgeable`]: dmakit::platform::VirtualMemory::set_purgeable

use crate::hints;
use crate::host::Host;
use crate::ledger::ledger;
use crate::registry::Allocation;
use dmakit::platform::{PurgeableRequest, PurgeableState, Task};
use dmakit::{Error, Result, VirtAddr};
use rustix::fs::FallocateFlags;

/// Punches `[off, off + len)` of `a`'s memfd: the pages are freed and read as zeros.
fn punch(a: &Allocation, off: u64, len: u64) -> Result<()> {
    rustix::fs::fallocate(
        &a.fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        off,
        len,
    )
    .map_err(|e| hints::os("fallocate(PUNCH_HOLE)", e, ""))
}

impl Host {
    pub(crate) fn purgeable(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        req: PurgeableRequest,
    ) -> Result<PurgeableState> {
        Self::check_task(task)?;
        let (first, n) = self.pages(va.0, len, "purgeable range")?;
        let psize = self.page().bytes();
        let mut s = self.lock();
        if n == 0 {
            return Ok(PurgeableState::NonVolatile);
        }
        let span = n * psize;
        let (base, a) = s.allocation(first, span).ok_or(Error::Unsupported {
            what: "purgeable state of memory other than the host's own allocations (whole \
                   pages of one allocation)",
        })?;
        if req.discards() {
            let busy = |addr: u64, why: &'static str| Error::Busy {
                what: "Linux host memory",
                addr,
                why,
            };
            if a.wired {
                return Err(busy(base, "wired memory cannot be made volatile"));
            }
            if a.second_maps > 0 {
                return Err(busy(
                    base,
                    "memory mapped a second time cannot be made volatile",
                ));
            }
            if a.mapping.is_lent() && a.mapping.lent(first, span).0 {
                return Err(busy(
                    first,
                    "memory lent as a slice cannot be made volatile",
                ));
            }
            if let Some(p) = ledger().first_wired(first, first + span) {
                return Err(busy(p, "wired memory cannot be made volatile"));
            }
        }
        let pages = (0..n).map(|i| first + i * psize);
        let worst = pages
            .clone()
            .filter_map(|p| a.purgeable.get(&p).copied())
            .max()
            .unwrap_or(PurgeableState::NonVolatile);
        if let Some(state) = req.target() {
            if state == PurgeableState::Empty {
                punch(a, first - base, span)?;
            }
            let a = s.allocs.get_mut(&base).ok_or(Error::Internal {
                what: "allocation vanished under the host's lock",
            })?;
            for p in pages {
                if state == PurgeableState::NonVolatile {
                    a.purgeable.remove(&p);
                } else {
                    a.purgeable.insert(p, state);
                }
            }
        }
        Ok(worst)
    }

    /// Discards every volatile page of this host's allocations now, as the system may do
    /// to volatile memory whenever it chooses: holes are punched in the memfds, the pages go
    /// back to the system, read as zeros from then on and report
    /// [`PurgeableState::Empty`] until made non-volatile. Pages wired through
    /// [`Wiring::wire`](dmakit::platform::Wiring::wire) or lent as slices are kept. Returns
    /// how many pages were discarded.
    pub fn purge_volatile(&self) -> Result<u64> {
        let psize = self.page().bytes();
        let mut s = self.lock();
        let l = ledger();
        let mut out = 0;
        for (&base, a) in s.allocs.iter_mut() {
            let victims: Vec<u64> = a
                .purgeable
                .iter()
                .filter(|(&p, &st)| {
                    st == PurgeableState::Volatile
                        && l.first_wired(p, p + psize).is_none()
                        && !a.mapping.lent(p, psize).0
                })
                .map(|(&p, _)| p)
                .collect();
            for p in victims {
                punch(a, p - base, psize)?;
                a.purgeable.insert(p, PurgeableState::Empty);
                out += 1;
            }
        }
        Ok(out)
    }
}
