//! [`PhysicalMemory`] on the host: pages of this process, by virtual or physical address.
//!
//! ## How an allocation is made
//!
//! 1. A memory object: `memfd_create` (with `MFD_HUGETLB | MFD_HUGE_2MB` for physically
//!    contiguous memory), sized with `ftruncate`. Its pages start zeroed.
//! 2. A mapping: `mmap(MAP_SHARED)` of the memfd at an address aligned as asked (address
//!    space is over-reserved and trimmed). Shared, so the same pages can be mapped a second
//!    time later ([`VirtualMemory`](dmakit::platform::VirtualMemory)).
//! 3. Wired memory is populated at once (`MAP_POPULATE`) and `mlock`ed for its whole life;
//!    pageable memory is neither, and has no pages until touched.
//! 4. With physical addresses available, every page of wired memory is translated through
//!    pagemap; the frames go into the reverse map (for `read_phys` and MMIO by physical
//!    address) and are checked against the request: all at or below `phys_limit`, one run
//!    when `contiguous`.
//!
//! ## What the kernel decides
//!
//! Userspace cannot choose where its pages land. A `phys_limit` is therefore *checked*, not
//! obeyed: the host tries up to four times, holding rejected attempts so the kernel hands out
//! different frames, then fails with [`Error::NoSuitableMemory`] and frees everything. On a
//! machine with plenty of RAM above 4 GiB a 32-bit limit usually fails: that is what a DMA
//! command's bounce pool, or an IOMMU (VFIO), is for.
//!
//! Physically contiguous memory is one 2 MiB hugepage ([`HUGEPAGE`]): requests up to 2 MiB
//! (alignment up to 2 MiB) get one; larger ones are [`Error::NoSuitableMemory`]. With no free
//! hugepage the error says how to reserve some.

use crate::hints::{self, ABOVE_LIMIT, CONTIGUOUS_TOO_BIG};
use crate::host::{Host, HUGEPAGE};
use crate::ledger::ledger;
use crate::registry::{Allocation, Registry};
use crate::sys::{self, Mapping, Span};
use dmakit::addr::checked_end;
use dmakit::platform::{PageRequest, PhysicalMemory};
use dmakit::{Error, PageSize, PhysAddr, Result, VirtAddr};
use rustix::io::Errno;
use std::os::fd::OwnedFd;

/// Attempts at meeting a physical limit before giving up.
const LIMIT_ATTEMPTS: usize = 4;

/// How an allocation request is met, worked out before anything is allocated.
struct Shape {
    /// The alignment asked for (what the frames are checked against).
    align: u64,
    /// One 2 MiB hugepage (physically contiguous memory).
    huge: bool,
    /// The length mapped: the length asked for, or one hugepage.
    map_len: u64,
    /// The alignment of the mapping's address.
    map_align: u64,
    /// Candidates to try before giving up.
    attempts: usize,
}

/// Why a candidate allocation was rejected: its frames are not one aligned run, or not
/// within the request's physical bounds.
fn unsuitable(req: &PageRequest, len: u64, align: u64) -> Error {
    Error::NoSuitableMemory {
        what: if req.contiguous && req.phys_limit == u64::MAX {
            "Linux host: the hugepage the kernel gave is not one aligned \
             physical run"
        } else {
            ABOVE_LIMIT
        },
        requested: len,
        align,
        limit: req.phys_limit,
        contiguous: req.contiguous,
    }
}

/// When hugepages under a physical limit ran short but some were had, only too high, the
/// error says so (with the lowest frame seen) instead of suggesting reserving more.
fn explain_high_hugepages(
    outcome: Result<VirtAddr>,
    rejected: &[Allocation],
    len: u64,
    req: &PageRequest,
    huge: bool,
) -> Result<VirtAddr> {
    if !huge || req.phys_limit == u64::MAX || rejected.is_empty() {
        return outcome;
    }
    let lowest = rejected.iter().filter_map(|a| a.frames.first()).min();
    let short = matches!(
        outcome,
        Err(Error::NoMemory { .. } | Error::NoSuitableMemory { .. })
    );
    match (short, lowest) {
        (true, Some(lowest)) => Err(hints::hugepages_above_limit(
            rejected.len(),
            lowest.0,
            len,
            req.phys_limit,
        )),
        _ => outcome,
    }
}

/// A new memory object of `len` bytes (on hugetlbfs when `huge`); its error asks whether
/// the kernel has hugetlbfs when hugepages were asked for.
fn new_memfd(len: u64, huge: bool) -> Result<OwnedFd> {
    sys::memfd(len, huge).map_err(|(op, e)| {
        hints::os(
            op,
            e,
            if huge {
                "does this kernel have hugetlbfs (CONFIG_HUGETLBFS)?"
            } else {
                ""
            },
        )
    })
}

impl Host {
    /// Maps and (if wired) locks and translates one candidate allocation.
    fn try_allocate(
        &self,
        len: u64,
        map_len: u64,
        align: u64,
        huge: bool,
        wired: bool,
    ) -> Result<Allocation> {
        let fd = new_memfd(map_len, huge)?;
        // A large buffer on transparent 2 MiB pages where the kernel allows it: placed
        // 2 MiB-aligned and advised before any page is faulted in (wiring faults them).
        let thp = !huge && map_len >= HUGEPAGE && self.capabilities().shmem_huge_pages.available();
        let (align, populate) = if thp {
            (align.max(HUGEPAGE), false)
        } else {
            (align, wired)
        };
        let mapping = Mapping::of_memfd(&fd, map_len as usize, align as usize, populate).map_err(
            |e| match e {
                Errno::NOMEM if huge => hints::no_hugepages(len),
                e => hints::os("mmap(memfd)", e, ""),
            },
        )?;
        let va = mapping.addr();
        if thp {
            // Advice only: without it the buffer works on 4 KiB pages.
            let _ = sys::advise_huge(va, map_len);
        }
        if wired {
            // Hugetlb pages are never swapped, and mlock skips them; they are still
            // recorded as locked for life so wirings on them are counted alike.
            let lock = !huge;
            ledger()
                .lock_for_life(va, map_len, lock)
                .map_err(|e| hints::mlock_error(va, map_len, e))?;
        }
        let a = Allocation {
            mapping,
            len,
            map_len,
            wired,
            huge,
            fd,
            frames: Vec::new(),
            second_maps: 0,
            purgeable: Default::default(),
        };
        if wired && self.capabilities().pagemap_pfns {
            return self.with_frames(a);
        }
        Ok(a)
    }

    /// A new wired allocation with the physical address of each of its pages, read from
    /// pagemap; if they cannot be read, the allocation is discarded (unlocked and unmapped)
    /// and the error returned.
    fn with_frames(&self, mut a: Allocation) -> Result<Allocation> {
        let va = a.mapping.addr();
        match self
            .pagemap()
            .and_then(|pm| pm.frames(va, a.map_len >> self.page().shift()))
        {
            Ok(f) => {
                a.frames = f;
                Ok(a)
            }
            Err(e) => {
                self.discard(a);
                Err(e)
            }
        }
    }

    /// Unlocks and unmaps an allocation that is no longer (or never was) registered.
    pub(crate) fn discard(&self, a: Allocation) {
        if a.wired {
            ledger().end_life(a.mapping.addr(), a.map_len, self.page().bytes());
        }
        drop(a);
    }

    /// Whether the frames of `a` meet `req` (floor and limit, contiguity and physical
    /// alignment).
    fn meets(&self, a: &Allocation, req: &PageRequest, align: u64) -> bool {
        let psize = self.page().bytes();
        let below = a.frames.iter().all(|f| req.admits(f.0, psize));
        let contiguous = !req.contiguous
            || a.frames.is_empty()
            || (a.frames[0].0.is_multiple_of(align)
                && a.frames.windows(2).all(|w| w[0].0 + psize == w[1].0));
        below && contiguous
    }

    /// `[pa, pa + len)` as page-bounded spans of wired allocations, with their offsets in
    /// the caller's buffer; resolved completely before anything is copied, so a failure
    /// copies nothing.
    fn phys_spans<'r>(
        &self,
        s: &'r Registry,
        pa: u64,
        len: usize,
    ) -> Result<Vec<(Span<'r>, usize, usize)>> {
        checked_end(pa, len as u64, "physical access")?;
        let page = self.page();
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let a = pa + done as u64;
            let n = ((page.bytes() - page.offset(a)) as usize).min(len - done);
            let span = s.ram_span(a, n as u64, page).ok_or(Error::NotMapped {
                what: "host physical memory (not a wired dmakit allocation)",
                addr: a,
            })?;
            out.push((span, done, n));
            done += n;
        }
        Ok(out)
    }

    /// Checks a page request and works out how to meet it (all checks made before anything
    /// is allocated): the request's own checks, pageable memory with physical constraints,
    /// contiguous memory larger than one hugepage, sizes that overflow, frame numbers for a
    /// limit or floor, and the locked-memory limit for wired memory.
    fn shape_of(&self, len: u64, req: &PageRequest) -> Result<Shape> {
        let align = req.validate(len, self.page())?;
        if req.pageable && req.constrains_physical() {
            return Err(Error::BadArgument {
                what: "pageable memory cannot be contiguous or physically limited (its pages \
                       may move until wired)",
                value: len,
            });
        }
        let huge = req.contiguous;
        if huge && (len > HUGEPAGE || align > HUGEPAGE) {
            return Err(Error::NoSuitableMemory {
                what: CONTIGUOUS_TOO_BIG,
                requested: len,
                align,
                limit: req.phys_limit,
                contiguous: true,
            });
        }
        if usize::try_from(len).is_err() || len.checked_add(align).is_none() {
            return Err(Error::Overflow {
                what: "page allocation",
                start: 0,
                len,
            });
        }
        let bounded = req.phys_limit != u64::MAX || req.phys_min != 0;
        if bounded {
            // A limit or floor can only be checked with frame numbers. (Contiguity needs none: a
            // hugepage is one physical run by construction, verified when frames are known.)
            self.pagemap()?;
        }
        let map_len = if huge { HUGEPAGE } else { len };
        if !req.pageable && !huge {
            // Before MAP_POPULATE makes it resident: a request larger than the machine
            // would end with the OOM killer instead of an error.
            crate::limits::check_wire(map_len, crate::limits::locked_now())?;
        }
        Ok(Shape {
            align,
            huge,
            map_len,
            map_align: if huge { HUGEPAGE } else { align },
            attempts: if !bounded { 1 } else { LIMIT_ATTEMPTS },
        })
    }

    /// Makes up to `shape.attempts` candidates and registers the first that meets `req`,
    /// its address; candidates that do not are kept in `rejected` (still allocated, so the
    /// kernel hands out other frames next time) for the caller to discard. The error is the
    /// first failure to allocate, else why the last candidate was rejected.
    fn first_suitable(
        &self,
        s: &mut Registry,
        len: u64,
        req: &PageRequest,
        shape: &Shape,
        rejected: &mut Vec<Allocation>,
    ) -> Result<VirtAddr> {
        let mut outcome = Err(Error::Internal {
            what: "no allocation attempt was made",
        });
        let wired = !req.pageable;
        for _ in 0..shape.attempts {
            match self.try_allocate(len, shape.map_len, shape.map_align, shape.huge, wired) {
                Err(e) => return Err(e),
                Ok(a) if self.meets(&a, req, shape.align) => {
                    return Ok(self.register_allocation(s, a, len))
                }
                Ok(a) => {
                    rejected.push(a);
                    outcome = Err(unsuitable(req, len, shape.align));
                }
            }
        }
        outcome
    }

    /// Registers an accepted allocation of `len` bytes with its frames in the reverse map;
    /// its address.
    fn register_allocation(&self, s: &mut Registry, mut a: Allocation, len: u64) -> VirtAddr {
        let page = self.page();
        let va = a.mapping.addr();
        // Only the pages asked for are reachable (a hugepage may be larger).
        a.frames.truncate((len >> page.shift()) as usize);
        s.index(va, &a.frames, page);
        s.allocs.insert(va, a);
        VirtAddr(va)
    }
}

impl PhysicalMemory for Host {
    fn page_size(&self) -> PageSize {
        self.page()
    }

    /// Allocates zeroed pages of this process (see the module docs for how).
    ///
    /// Errors: the request's own checks ([`PageRequest::validate`]); `BadArgument` for
    /// pageable memory with physical constraints; `NotPermitted` for physical constraints
    /// without pagemap frame numbers; `NoSuitableMemory` for contiguous memory over 2 MiB or
    /// a limit the kernel's placement did not meet; `NoMemory` naming `nr_hugepages` when no
    /// hugepage is free; `CannotWire` naming `RLIMIT_MEMLOCK` and its value when the limit
    /// is too low. Nothing stays allocated after an error.
    fn allocate_pages(&self, len: u64, req: &PageRequest) -> Result<VirtAddr> {
        let shape = self.shape_of(len, req)?;
        let mut s = self.lock();
        let mut rejected = Vec::new();
        let outcome = self.first_suitable(&mut s, len, req, &shape, &mut rejected);
        let outcome = explain_high_hugepages(outcome, &rejected, len, req, shape.huge);
        for a in rejected {
            self.discard(a);
        }
        outcome
    }

    /// Frees an allocation: `va` and `len` exactly as allocated (else `NotAllocated` or
    /// `WrongSize`, nothing changed); `Busy` while any wiring (through any host) holds a
    /// page of it.
    fn free_pages(&self, va: VirtAddr, len: u64) -> Result<()> {
        let mut s = self.lock();
        let a = s.allocs.get(&va.0).ok_or(Error::NotAllocated {
            free_fn: "free_pages",
            addr: va.0,
        })?;
        if a.len != len {
            return Err(Error::WrongSize {
                free_fn: "free_pages",
                addr: va.0,
                allocated: a.len,
                given: len,
            });
        }
        if a.mapping.is_lent() {
            return Err(Host::lent_busy(va.0));
        }
        // The ledger stays locked from the check to the unmap, so no host can wire a page
        // in between.
        let mut l = ledger();
        if let Some(p) = l.first_wired(va.0, va.0 + a.map_len) {
            return Err(Error::Busy {
                what: "Linux host memory",
                addr: p,
                why: "a page is still wired (a device may reach it): unwire it first",
            });
        }
        if let Some(a) = s.allocs.remove(&va.0) {
            s.unindex(&a.frames);
            if a.wired {
                l.end_life(va.0, a.map_len, self.page().bytes());
            }
            drop(a);
        }
        drop(l);
        Ok(())
    }

    /// Whether a wiring covers a byte of `[va, va + len)`: a wiring made through this host
    /// for an overlapping byte range, or, conservatively, any wiring another host made on
    /// one of its pages (this host cannot see which bytes those were for).
    fn kernel_range_wired(&self, va: VirtAddr, len: u64) -> Result<bool> {
        let (first, n) = self.pages(va.0, len, "kernel_range_wired")?;
        let psize = self.page().bytes();
        let s = self.lock();
        if s.bytes_wired(va.0, len) {
            return Ok(true);
        }
        let l = ledger();
        Ok((0..n)
            .map(|i| first + i * psize)
            .any(|p| l.count(p) > s.wires.get(&p).copied().unwrap_or(0)))
    }

    /// Reads RAM of this host's wired allocations by physical address (the reverse map);
    /// anything else is `NotMapped` and nothing is copied.
    fn read_phys(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<()> {
        let s = self.lock();
        for (span, at, n) in self.phys_spans(&s, pa.0, buf.len())? {
            span.read(&mut buf[at..at + n]);
        }
        Ok(())
    }

    /// Writes RAM of this host's wired allocations by physical address; anything else is
    /// `NotMapped` and nothing is written.
    /// Refused ([`Error::Busy`], nothing written) where a page is lent as a slice.
    fn write_phys(&self, pa: PhysAddr, data: &[u8]) -> Result<()> {
        let s = self.lock();
        let spans = self.phys_spans(&s, pa.0, data.len())?;
        if !spans.iter().all(|(span, _, _)| span.writable()) {
            return Err(Host::lent_busy(pa.0));
        }
        for (span, at, n) in spans {
            span.write(&data[at..at + n])
                .ok_or(Host::lent_busy(span.addr()))?;
        }
        Ok(())
    }
}
