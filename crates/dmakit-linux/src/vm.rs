//! [`VirtualMemory`] on the host: the same pages mapped a second time.
//!
//! Every allocation of the host is a `memfd` mapped `MAP_SHARED`, so its pages can be mapped
//! again at another address by mapping the memfd at the right offset: a write through one
//! mapping is visible through the other because they are the same physical pages. A
//! mapping made of several pieces is built inside one reserved range, piece by piece, all or
//! nothing; a fixed address already in use is refused ([`Error::RangeBusy`],
//! `MAP_FIXED_NOREPLACE`), never replaced. Read-only mappings are enforced by the MMU.
//!
//! A guarded mapping (IOKit's guard pages) is built inside a larger reservation whose
//! `PROT_NONE` ends are kept as the guards: an access there faults, and the kernel places
//! nothing else there until the mapping goes.
//!
//! Limits of Linux userspace: only the host's own memfd-backed allocations can be mapped
//! (not a caller's `Vec`); hugepage-backed memory is not mapped twice; cache modes other
//! than copy-back cannot be chosen ([`Error::Unsupported`] for each).

use crate::hints;
use crate::host::Host;
use crate::ledger::ledger;
use crate::registry::{Allocation, Registry, SecondMapping};
use crate::sys::Mapping;
use dmakit::platform::{
    CacheMode, MapPiece, MapRequest, MapSource, PurgeableRequest, PurgeableState, Task,
    VirtualMemory,
};
use dmakit::{Error, PhysAddr, Result, VirtAddr};
use rustix::io::Errno;

impl VirtualMemory for Host {
    fn map_pages(&self, pieces: &[MapPiece], req: &MapRequest) -> Result<VirtAddr> {
        self.map_second(pieces, req, 0)
    }

    fn map_pages_guarded(
        &self,
        pieces: &[MapPiece],
        req: &MapRequest,
        guard: u64,
    ) -> Result<VirtAddr> {
        self.map_second(pieces, req, guard)
    }

    fn unmap_pages(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        Self::check_task(task)?;
        let mut s = self.lock();
        match s.maps.get(&va.0) {
            Some(m) if m.len == len => {}
            Some(m) => {
                return Err(Error::WrongSize {
                    free_fn: "unmap_pages",
                    addr: va.0,
                    allocated: m.len,
                    given: len,
                })
            }
            None => {
                return Err(Error::NotAllocated {
                    free_fn: "unmap_pages",
                    addr: va.0,
                })
            }
        }
        // Checked and unmapped under the ledger's lock, so no wiring can slip in between.
        let l = ledger();
        if let Some(p) = l.first_wired(va.0, va.0 + len) {
            return Err(Error::Busy {
                what: "mapping",
                addr: p,
                why: "a page of the mapping is still wired: unwire it first",
            });
        }
        // Dropping the mapping unmaps it.
        if let Some(m) = s.maps.remove(&va.0) {
            for b in &m.sources {
                if let Some(a) = s.allocs.get_mut(b) {
                    a.second_maps = a.second_maps.saturating_sub(1);
                }
            }
        }
        drop(l);
        Ok(())
    }

    /// Per page of one of the host's pageable allocations (see `purgeable.rs`).
    fn set_purgeable(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        req: PurgeableRequest,
    ) -> Result<PurgeableState> {
        self.purgeable(task, va, len, req)
    }
}

/// One run of a second mapping: (allocation start, offset in its memfd, length).
type Run = (u64, u64, u64);

/// What a second mapping will map: its runs in order, consecutive pages of one allocation
/// merged into one run, and the total length.
#[derive(Default)]
struct Plan {
    runs: Vec<Run>,
    total: u64,
}

impl Plan {
    /// Appends `len` bytes at offset `off` of the allocation at `base`, merged into the last
    /// run when they continue it.
    fn push(&mut self, base: u64, off: u64, len: u64) {
        match self.runs.last_mut() {
            Some((b, o, l)) if *b == base && *o + *l == off => *l += len,
            _ => self.runs.push((base, off, len)),
        }
    }

    /// The allocations (by start) the runs come from, each once, in address order.
    fn sources(&self) -> Vec<u64> {
        let mut sources: Vec<u64> = self.runs.iter().map(|r| r.0).collect();
        sources.sort_unstable();
        sources.dedup();
        sources
    }
}

/// The refusal for an allocation on hugepages, which are never mapped a second time.
fn refuse_huge(a: &Allocation) -> Result<()> {
    if a.huge {
        return Err(Error::Unsupported {
            what: "mapping hugepage-backed (contiguous) memory a second time",
        });
    }
    Ok(())
}

impl Host {
    /// A second mapping of `pieces`, with `guard` bytes of `PROT_NONE` reservation on each
    /// side when `guard > 0`.
    fn map_second(&self, pieces: &[MapPiece], req: &MapRequest, guard: u64) -> Result<VirtAddr> {
        let guard = self.check_map_request(req, guard)?;
        let psize = self.page().bytes();
        let mut s = self.lock();
        let plan = Self::plan_pieces(&s, pieces, psize)?;
        if plan.total == 0 {
            return Err(Error::ZeroSize { what: "mapping" });
        }
        let at = match req.at {
            Some(a) => Some(usize::try_from(a.0).map_err(|_| Error::Overflow {
                what: "mapping address",
                start: a.0,
                len: plan.total,
            })?),
            None => None,
        };
        let mapping = Self::map_plan(&s, &plan, at, req, guard)?;
        Ok(Self::register_second(&mut s, mapping, &plan))
    }

    /// Checks what a mapping request asks for before any piece is looked at (task, cache
    /// mode, guard size and placement, fixed address alignment); the guard size in bytes.
    fn check_map_request(&self, req: &MapRequest, guard: u64) -> Result<usize> {
        Self::check_task(req.task)?;
        if req.cache != CacheMode::CopyBack {
            return Err(Error::Unsupported {
                what: "cache modes other than copy-back from Linux userspace",
            });
        }
        let psize = self.page().bytes();
        req.check_guard(guard, psize)?;
        let guard = usize::try_from(guard).map_err(|_| Error::Overflow {
            what: "guard size",
            start: 0,
            len: guard,
        })?;
        if let Some(at) = req.at {
            if !at.is_aligned(psize) {
                return Err(Error::NotAligned {
                    what: "mapping address",
                    value: at.0,
                    align: psize,
                });
            }
        }
        Ok(guard)
    }

    /// Resolves every piece to runs of the host's allocations, checking each piece in turn.
    fn plan_pieces(s: &Registry, pieces: &[MapPiece], psize: u64) -> Result<Plan> {
        let mut plan = Plan::default();
        for p in pieces {
            if p.len == 0 || !p.len.is_multiple_of(psize) {
                return Err(Error::NotAligned {
                    what: "map piece length (whole pages only)",
                    value: p.len,
                    align: psize,
                });
            }
            plan.total = plan.total.checked_add(p.len).ok_or(Error::Overflow {
                what: "mapping length",
                start: plan.total,
                len: p.len,
            })?;
            match p.src {
                MapSource::Virtual(task, va) => {
                    Self::plan_virtual(s, &mut plan, task, va, p.len, psize)?
                }
                MapSource::Physical(pa) => Self::plan_physical(s, &mut plan, pa, p.len, psize)?,
            }
        }
        Ok(plan)
    }

    /// Adds a piece given by virtual address: it must lie in one of the host's allocations.
    fn plan_virtual(
        s: &Registry,
        plan: &mut Plan,
        task: Task,
        va: VirtAddr,
        len: u64,
        psize: u64,
    ) -> Result<()> {
        Self::check_task(task)?;
        if !va.is_aligned(psize) {
            return Err(Error::NotAligned {
                what: "map piece address",
                value: va.0,
                align: psize,
            });
        }
        let (base, a) = s.allocation(va.0, len).ok_or(Error::Unsupported {
            what: "mapping memory this host did not allocate (only its \
                   memfd-backed allocations can be mapped twice)",
        })?;
        refuse_huge(a)?;
        plan.push(base, va.0 - base, len);
        Ok(())
    }

    /// Adds a piece given by physical address, page by page through the reverse map:
    /// physically consecutive pages need not be virtually so.
    fn plan_physical(
        s: &Registry,
        plan: &mut Plan,
        pa: PhysAddr,
        len: u64,
        psize: u64,
    ) -> Result<()> {
        if !pa.is_aligned(psize) {
            return Err(Error::NotAligned {
                what: "map piece physical address",
                value: pa.0,
                align: psize,
            });
        }
        for k in 0..len / psize {
            let frame = pa.0.checked_add(k * psize).ok_or(Error::Overflow {
                what: "map piece",
                start: pa.0,
                len,
            })?;
            let unknown = Error::NotMapped {
                what: "host physical memory (not a wired dmakit allocation)",
                addr: frame,
            };
            let vpage = s.virt_of_frame(frame).ok_or(unknown.clone())?;
            let (base, a) = s.allocation(vpage, psize).ok_or(unknown)?;
            refuse_huge(a)?;
            plan.push(base, vpage - base, psize);
        }
        Ok(())
    }

    /// Maps the plan's runs from their memfds (at `at` if given; a fixed address in use is
    /// `RangeBusy`); refused while a source allocation is lent as a slice.
    fn map_plan(
        s: &Registry,
        plan: &Plan,
        at: Option<usize>,
        req: &MapRequest,
        guard: usize,
    ) -> Result<Mapping> {
        let mut fds = Vec::with_capacity(plan.runs.len());
        for &(base, off, len) in &plan.runs {
            let a = s.allocs.get(&base).ok_or(Error::Internal {
                what: "planned allocation vanished under the lock",
            })?;
            if a.mapping.is_lent() {
                return Err(Host::lent_busy(base + off));
            }
            fds.push((&a.fd, off, len as usize));
        }
        Mapping::of_pieces(&fds, at, !req.read_only, guard).map_err(|e| match (e, req.at) {
            (Errno::EXIST, Some(a)) => Error::RangeBusy {
                what: "this process's address space",
                start: a.0,
                len: plan.total,
            },
            (e, _) => hints::os("mmap(second mapping)", e, ""),
        })
    }

    /// Records a new second mapping and counts it on each allocation it maps; its address.
    fn register_second(s: &mut Registry, mapping: Mapping, plan: &Plan) -> VirtAddr {
        let sources = plan.sources();
        for b in &sources {
            if let Some(a) = s.allocs.get_mut(b) {
                a.second_maps += 1;
            }
        }
        let va = mapping.addr();
        s.maps.insert(
            va,
            SecondMapping {
                mapping,
                len: plan.total,
                sources,
            },
        );
        VirtAddr(va)
    }
}
