//! [`Host`]: this Linux process as a dmakit platform.
//!
//! * Memory comes from a `memfd` mapped `MAP_SHARED`, so the same pages can be mapped a
//!   second time (a later `MemoryMap`); wired memory is `mlock`ed and populated at once;
//!   pageable memory is neither.
//! * Physically contiguous memory is a 2 MiB hugepage (`MFD_HUGETLB`); without free
//!   hugepages the error says how to reserve some.
//! * Physical addresses come from `/proc/self/pagemap` ([`crate::pagemap`]); the address
//!   mode is reported by [`Host::address_mode`], never guessed.
//! * Wiring is counted per page: `mlock` on the first wire of a page, `munlock` on the last
//!   unwire (mlock itself does not nest). Pages of wired allocations are locked for their
//!   whole life and never unlocked by an unwire.
//! * CPU access, cache maintenance and MMIO reach only memory the host knows: its own
//!   allocations, regions registered with [`Host::register_region`] and
//!   [`Host::register_mmio`]. Anything else is `NotMapped`.

use crate::pagemap::{Pagemap, NO_PFN_HINT};
use crate::sys;
use dmakit::platform::{
    CacheMode, CacheOp, CacheOps, CpuAccess, MapPiece, MapRequest, MapSource, Mmio, PageRequest,
    PhysicalMemory, Task, VirtualMemory, Width, Wiring,
};
use dmakit::{Error, PageSize, PhysAddr, PhysRange, Result, VirtAddr};
use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};

/// The size of the hugepages used for physically contiguous memory.
pub const HUGEPAGE: u64 = 2 << 20;

const MEMLOCK_HINT: &str = "RLIMIT_MEMLOCK is too low for this much wired memory: raise it \
(`ulimit -l unlimited`, or setrlimit(RLIMIT_MEMLOCK)), or run with CAP_IPC_LOCK";
const HUGEPAGE_HINT: &str = "no free 2 MiB hugepages: reserve some with \
`echo 16 > /proc/sys/vm/nr_hugepages` (as root)";

/// How device-visible addresses are produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressMode {
    /// CPU physical addresses from `/proc/self/pagemap` (needs CAP_SYS_ADMIN; no IOMMU in
    /// between).
    Physical,
    /// No device-visible addresses can be produced here (pagemap hides PFNs); use VFIO.
    Unavailable,
}

/// What this host can do, probed once by [`Host::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The OS page size.
    pub page_size: u64,
    /// Effective user ID 0.
    pub root: bool,
    /// `/proc/self/pagemap` returned a non-zero frame number for a locked page.
    pub pagemap_pfns: bool,
    /// RLIMIT_MEMLOCK (soft, hard); `u64::MAX` is unlimited.
    pub memlock: (u64, u64),
    /// Free 2 MiB hugepages right now.
    pub free_hugepages: u64,
    /// The CPU has `clflushopt`.
    pub clflushopt: bool,
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lim = |v: u64| {
            if v == u64::MAX {
                "unlimited".to_string()
            } else {
                format!("{} KiB", v / 1024)
            }
        };
        writeln!(f, "page size         {} KiB", self.page_size / 1024)?;
        writeln!(f, "root              {}", self.root)?;
        writeln!(
            f,
            "pagemap PFNs      {}",
            if self.pagemap_pfns {
                "visible"
            } else {
                "hidden (needs CAP_SYS_ADMIN)"
            }
        )?;
        writeln!(
            f,
            "RLIMIT_MEMLOCK    {} (hard {})",
            lim(self.memlock.0),
            lim(self.memlock.1)
        )?;
        writeln!(f, "free 2M hugepages {}", self.free_hugepages)?;
        write!(
            f,
            "cache flush       {}",
            if self.clflushopt {
                "clflushopt + mfence"
            } else {
                "clflush + mfence"
            }
        )
    }
}

/// Free 2 MiB hugepages according to sysfs (0 if unknown).
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// One live allocation.
#[derive(Debug)]
struct Alloc {
    len: u64,
    wired: bool,
    huge: bool,
    /// The memory object (a second mapping is made from it).
    fd: OwnedFd,
}

#[derive(Debug, Default)]
struct State {
    allocs: BTreeMap<u64, Alloc>,
    /// Explicit wirings per page.
    wires: BTreeMap<u64, u32>,
    /// Caller-registered CPU regions: start → length.
    regions: BTreeMap<u64, u64>,
    /// Registered MMIO: bus/physical address → (virtual address, length).
    mmio: BTreeMap<u64, (u64, u64)>,
    /// Physical page → virtual page, for wired allocations (needs pagemap).
    phys_index: BTreeMap<u64, u64>,
    /// Second mappings (`VirtualMemory::map_pages`): start → (length, read-only).
    maps: BTreeMap<u64, (u64, bool)>,
}

impl State {
    /// The allocation containing `[va, va + len)`, if one does.
    fn alloc_of(&self, va: u64, len: u64) -> Option<(u64, &Alloc)> {
        let (&base, a) = self.allocs.range(..=va).next_back()?;
        (va + len <= base + a.len).then_some((base, a))
    }

    /// The second mapping containing `[va, va + len)`: whether it is read-only.
    fn map_of(&self, va: u64, len: u64) -> Option<bool> {
        let (&b, &(l, ro)) = self.maps.range(..=va).next_back()?;
        (va + len <= b + l).then_some(ro)
    }

    /// Whether the CPU may touch `[va, va + len)`.
    fn known(&self, va: u64, len: u64) -> bool {
        if self.alloc_of(va, len).is_some() || self.map_of(va, len).is_some() {
            return true;
        }
        matches!(self.regions.range(..=va).next_back(), Some((&b, &l)) if va + len <= b + l)
    }

    /// Pages locked for life (wired allocations).
    fn locked_for_life(&self, page: u64) -> bool {
        self.alloc_of(page, 1).is_some_and(|(_, a)| a.wired)
    }

    fn phys_to_virt(&self, pa: u64, len: u64, page: PageSize) -> Option<u64> {
        let ppage = page.trunc(pa);
        let va_page = *self.phys_index.get(&ppage)?;
        // The whole access must stay within one page (callers split at page boundaries).
        (page.offset(pa) + len <= page.bytes()).then_some(va_page + page.offset(pa))
    }
}

/// This process as a dmakit platform. `Send + Sync`.
///
/// # Invariants
///
/// Every key of `allocs` is the start of a live mapping of `len` bytes that this host made
/// and nobody else unmaps; every registered region was promised valid by the caller of the
/// `unsafe` registration for as long as it stays registered.
pub struct Host {
    page: PageSize,
    pagemap: Option<Pagemap>,
    caps: Capabilities,
    state: Mutex<State>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("caps", &self.caps)
            .field("allocations", &self.lock().allocs.len())
            .finish()
    }
}

impl Host {
    /// Opens the host and probes what it can do.
    pub fn new() -> Result<Host> {
        let page = PageSize::new(sys::page_size())?;
        let pagemap = Pagemap::open(page).ok();
        let mut host = Host {
            page,
            pagemap,
            caps: Capabilities {
                page_size: page.bytes(),
                root: sys::is_root(),
                pagemap_pfns: false,
                memlock: sys::memlock_limit(),
                free_hugepages: free_hugepages(),
                #[cfg(target_arch = "x86_64")]
                clflushopt: sys::has_clflushopt(),
                #[cfg(not(target_arch = "x86_64"))]
                clflushopt: false,
            },
            state: Mutex::new(State::default()),
        };
        host.caps.pagemap_pfns = host.probe_pagemap();
        Ok(host)
    }

    /// Whether pagemap gives frame numbers: one locked page, translated.
    fn probe_pagemap(&self) -> bool {
        let Some(pm) = &self.pagemap else {
            return false;
        };
        let mut probe = vec![1u8; self.page.bytes() as usize * 2];
        let addr = self.page.round_up(probe.as_mut_ptr() as u64).unwrap_or(0);
        if sys::mlock(addr as usize, 1).is_err() {
            // Without a lock we can still look: a present page shows its PFN or zero.
            return pm.translate(addr).is_ok();
        }
        let ok = pm.translate(addr).is_ok();
        sys::munlock(addr as usize, 1);
        drop(probe);
        ok
    }

    /// What the host can do.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// How device-visible addresses are produced.
    pub fn address_mode(&self) -> AddressMode {
        if self.caps.pagemap_pfns {
            AddressMode::Physical
        } else {
            AddressMode::Unavailable
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_task(task: Task) -> Result<()> {
        if task != Task::KERNEL {
            return Err(Error::Unsupported {
                what: "the Linux host has one task, this process (Task::KERNEL)",
            });
        }
        Ok(())
    }

    fn pagemap(&self) -> Result<&Pagemap> {
        match (&self.pagemap, self.caps.pagemap_pfns) {
            (Some(pm), true) => Ok(pm),
            _ => Err(Error::NotPermitted {
                what: "physical address lookup",
                hint: NO_PFN_HINT,
            }),
        }
    }

    /// Registers memory the caller owns (a `Vec`, a mapping of its own) so the CPU-access
    /// and wiring paths may reach it.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + len)` must stay mapped and readable and writable until
    /// [`unregister_region`](Self::unregister_region) is called, and no Rust reference may
    /// be used to access it while the host copies to or from it.
    pub unsafe fn register_region(&self, ptr: *mut u8, len: usize) -> Result<VirtAddr> {
        if len == 0 {
            return Err(Error::ZeroSize {
                what: "registered region",
            });
        }
        let start = ptr as u64;
        start.checked_add(len as u64).ok_or(Error::Overflow {
            what: "registered region",
            start,
            len: len as u64,
        })?;
        let mut s = self.lock();
        let overlaps = s
            .regions
            .range(..start + len as u64)
            .next_back()
            .is_some_and(|(&b, &l)| b + l > start);
        if overlaps {
            return Err(Error::RangeBusy {
                what: "registered regions",
                start,
                len: len as u64,
            });
        }
        s.regions.insert(start, len as u64);
        Ok(VirtAddr(start))
    }

    /// Forgets a region registered by [`register_region`](Self::register_region). Refused
    /// (`Busy`) while any of its pages is wired.
    pub fn unregister_region(&self, va: VirtAddr) -> Result<()> {
        let mut s = self.lock();
        let len = *s.regions.get(&va.0).ok_or(Error::NotAllocated {
            free_fn: "unregister_region",
            addr: va.0,
        })?;
        let first = self.page.trunc(va.0);
        if let Some((&p, _)) = s.wires.range(first..va.0 + len).next() {
            return Err(Error::Busy {
                what: "registered region",
                addr: p,
                why: "a page is still wired",
            });
        }
        s.regions.remove(&va.0);
        Ok(())
    }

    /// Registers device memory (for example an mmap'ed PCI BAR) at bus address `bus` so
    /// [`Mmio`] accesses there reach it.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + len)` must stay mapped, readable and writable until
    /// [`unregister_mmio`](Self::unregister_mmio), accessed only through volatile
    /// operations (no Rust references to it).
    pub unsafe fn register_mmio(&self, bus: PhysAddr, ptr: *mut u8, len: usize) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroSize {
                what: "MMIO region",
            });
        }
        bus.0.checked_add(len as u64).ok_or(Error::Overflow {
            what: "MMIO region",
            start: bus.0,
            len: len as u64,
        })?;
        let mut s = self.lock();
        let overlaps = s
            .mmio
            .range(..bus.0 + len as u64)
            .next_back()
            .is_some_and(|(&b, &(_, l))| b + l > bus.0);
        if overlaps {
            return Err(Error::RangeBusy {
                what: "MMIO regions",
                start: bus.0,
                len: len as u64,
            });
        }
        s.mmio.insert(bus.0, (ptr as u64, len as u64));
        Ok(())
    }

    /// Forgets an MMIO region.
    pub fn unregister_mmio(&self, bus: PhysAddr) -> Result<()> {
        self.lock()
            .mmio
            .remove(&bus.0)
            .map(|_| ())
            .ok_or(Error::NotAllocated {
                free_fn: "unregister_mmio",
                addr: bus.0,
            })
    }

    /// Live allocations and explicitly wired pages, for leak checks.
    pub fn usage(&self) -> (usize, usize) {
        let s = self.lock();
        (s.allocs.len(), s.wires.len())
    }

    fn map_memfd(&self, len: u64, align: u64, huge: bool, wired: bool) -> Result<(u64, OwnedFd)> {
        let fd = sys::memfd(len, huge)?;
        let total = len.checked_add(align).ok_or(Error::Overflow {
            what: "allocation length",
            start: 0,
            len,
        })? as usize;
        let base = sys::reserve(total)?;
        let start = (base as u64).div_ceil(align) * align;
        // SAFETY: [start, start + len) lies inside the reservation just made (start is at
        // most align - 1 above base and total = len + align); nothing references it.
        let mapped = unsafe { sys::map_fixed(start as usize, len as usize, &fd, 0, true, wired) };
        // SAFETY: the head and tail are parts of our own reservation outside the mapping.
        unsafe {
            sys::unmap(base, (start - base as u64) as usize);
            sys::unmap(
                (start + len) as usize,
                base + total - (start + len) as usize,
            );
        }
        if let Err(errno) = mapped {
            // SAFETY: the middle of our reservation; nothing references it.
            unsafe { sys::unmap(start as usize, len as usize) };
            return Err(if huge && errno == libc::ENOMEM {
                Error::NoMemory {
                    what: HUGEPAGE_HINT,
                    requested: len,
                    available: free_hugepages() * HUGEPAGE,
                }
            } else {
                Error::Os {
                    op: "mmap(memfd)",
                    errno,
                    hint: if huge { HUGEPAGE_HINT } else { "" },
                }
            });
        }
        Ok((start, fd))
    }

    fn release(&self, s: &mut State, va: u64) {
        if let Some(a) = s.allocs.remove(&va) {
            s.phys_index.retain(|_, v| *v < va || *v >= va + a.len);
            if a.wired {
                sys::munlock(va as usize, a.len as usize);
            }
            // SAFETY: the allocation was our own live mapping and is now forgotten; nothing
            // is wired in it (callers checked) and no Rust reference points into it.
            unsafe { sys::unmap(va as usize, a.len as usize) };
        }
    }

    /// Translates every page of a fresh allocation; checks the limit.
    fn index_pages(&self, s: &mut State, va: u64, len: u64, limit: u64) -> Result<()> {
        let pm = self.pagemap()?;
        let psize = self.page.bytes();
        for i in 0..len / psize {
            let v = va + i * psize;
            let pa = pm.translate(v)?.0;
            if pa + psize - 1 > limit {
                return Err(Error::NoSuitableMemory {
                    what: "Linux host (the kernel placed a page above the limit)",
                    requested: len,
                    align: psize,
                    limit,
                    contiguous: false,
                });
            }
            s.phys_index.insert(pa, v);
        }
        Ok(())
    }
}

impl PhysicalMemory for Host {
    fn page_size(&self) -> PageSize {
        self.page
    }

    fn allocate_pages(&self, len: u64, req: &PageRequest) -> Result<VirtAddr> {
        let psize = self.page.bytes();
        req.validate(len, self.page)?;
        let huge = req.contiguous;
        if huge && (len > HUGEPAGE || req.align > HUGEPAGE) {
            return Err(Error::NoSuitableMemory {
                what: "Linux host: physically contiguous memory is one 2 MiB hugepage at most",
                requested: len,
                align: req.align,
                limit: req.phys_limit,
                contiguous: true,
            });
        }
        if req.pageable && req.constrains_physical() {
            return Err(Error::BadArgument {
                what: "pageable memory cannot have physical constraints",
                value: len,
            });
        }
        if req.constrains_physical() {
            // Constraints can only be checked, and contiguity proven, with PFNs.
            self.pagemap()?;
        }
        let map_len = if huge { HUGEPAGE } else { len };
        let align = req.align.max(if huge { HUGEPAGE } else { psize });
        let wired = !req.pageable;
        let mut s = self.lock();
        // The kernel decides placement: retry a few times when a page lands above a limit.
        let mut last = None;
        for _ in 0..4 {
            let (va, fd) = self.map_memfd(map_len, align, huge, wired)?;
            if wired {
                if let Err(errno) = sys::mlock(va as usize, map_len as usize) {
                    // SAFETY: our fresh mapping, unreferenced and unwired.
                    unsafe { sys::unmap(va as usize, map_len as usize) };
                    return Err(
                        if errno == libc::ENOMEM || errno == libc::EAGAIN || errno == libc::EPERM {
                            Error::CannotWire {
                                addr: va,
                                len: map_len,
                                why: MEMLOCK_HINT,
                            }
                        } else {
                            Error::Os {
                                op: "mlock",
                                errno,
                                hint: MEMLOCK_HINT,
                            }
                        },
                    );
                }
            }
            s.allocs.insert(
                va,
                Alloc {
                    len: map_len,
                    wired,
                    huge,
                    fd,
                },
            );
            if wired && self.caps.pagemap_pfns {
                match self.index_pages(&mut s, va, map_len, req.phys_limit) {
                    Ok(()) => return Ok(VirtAddr(va)),
                    Err(e) => {
                        self.release(&mut s, va);
                        last = Some(e);
                        continue;
                    }
                }
            }
            return Ok(VirtAddr(va));
        }
        Err(last.unwrap_or(Error::Internal {
            what: "allocation retry",
        }))
    }

    fn free_pages(&self, va: VirtAddr, len: u64) -> Result<()> {
        let mut s = self.lock();
        let a = s.allocs.get(&va.0).ok_or(Error::NotAllocated {
            free_fn: "free_pages",
            addr: va.0,
        })?;
        let expected = if a.huge {
            len.max(1).div_ceil(HUGEPAGE) * HUGEPAGE
        } else {
            len
        };
        if expected != a.len {
            return Err(Error::WrongSize {
                free_fn: "free_pages",
                addr: va.0,
                allocated: a.len,
                given: len,
            });
        }
        if let Some((&p, _)) = s.wires.range(va.0..va.0 + a.len).next() {
            return Err(Error::Busy {
                what: "Linux host memory",
                addr: p,
                why: "a page is still wired (a device may reach it)",
            });
        }
        self.release(&mut s, va.0);
        Ok(())
    }

    fn read_phys(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<()> {
        let s = self.lock();
        for (va, at, n) in self.resolve_phys(&s, pa.0, buf.len())? {
            // SAFETY: `va` is inside a live wired allocation of ours (from the index, checked
            // under the lock we hold), the chunk stays within its page, and `buf` is a
            // distinct Rust slice.
            unsafe { sys::copy_from(va as usize, &mut buf[at..at + n]) };
        }
        Ok(())
    }

    fn write_phys(&self, pa: PhysAddr, data: &[u8]) -> Result<()> {
        let s = self.lock();
        for (va, at, n) in self.resolve_phys(&s, pa.0, data.len())? {
            // SAFETY: as in read_phys; the allocation is live while we hold the lock.
            unsafe { sys::copy_to(va as usize, &data[at..at + n]) };
        }
        Ok(())
    }
}

impl Host {
    /// `[pa, pa + len)` as page-bounded chunks `(virtual address, offset, length)` of wired
    /// allocations; all resolved before anything is copied, so a failure copies nothing.
    fn resolve_phys(&self, s: &State, pa: u64, len: usize) -> Result<Vec<(u64, usize, usize)>> {
        let mut chunks = Vec::new();
        let mut done = 0usize;
        while done < len {
            let a = pa + done as u64;
            let n = ((self.page.bytes() - self.page.offset(a)) as usize).min(len - done);
            let va = s
                .phys_to_virt(a, n as u64, self.page)
                .ok_or(Error::NotMapped {
                    what: "host physical memory (not a wired dmakit allocation)",
                    addr: a,
                })?;
            chunks.push((va, done, n));
            done += n;
        }
        Ok(chunks)
    }
}

fn pages(page: PageSize, va: u64, len: u64) -> impl Iterator<Item = u64> {
    let first = page.trunc(va);
    let end = va + len;
    (0..)
        .map(move |i| first + i * page.bytes())
        .take_while(move |&p| p < end)
}

impl Wiring for Host {
    fn wire(&self, task: Task, va: VirtAddr, len: u64, _writable: bool) -> Result<()> {
        Self::check_task(task)?;
        va.0.checked_add(len).ok_or(Error::Overflow {
            what: "wire",
            start: va.0,
            len,
        })?;
        let mut s = self.lock();
        let mut locked: Vec<u64> = Vec::new();
        let psize = self.page.bytes();
        for p in pages(self.page, va.0, len) {
            let count = s.wires.get(&p).copied().unwrap_or(0);
            if count == 0 && !s.locked_for_life(p) {
                if let Err(errno) = sys::mlock(p as usize, psize as usize) {
                    for &q in &locked {
                        let c = s.wires.get_mut(&q).map(|c| {
                            *c -= 1;
                            *c
                        });
                        if c == Some(0) {
                            s.wires.remove(&q);
                            if !s.locked_for_life(q) {
                                sys::munlock(q as usize, psize as usize);
                            }
                        }
                    }
                    return Err(match errno {
                        libc::ENOMEM if !sys::is_mapped(p as usize) => Error::NotMapped {
                            what: "this process",
                            addr: p,
                        },
                        libc::ENOMEM | libc::EAGAIN | libc::EPERM => Error::CannotWire {
                            addr: p,
                            len: psize,
                            why: MEMLOCK_HINT,
                        },
                        e => Error::Os {
                            op: "mlock",
                            errno: e,
                            hint: "",
                        },
                    });
                }
            }
            *s.wires.entry(p).or_insert(0) += 1;
            locked.push(p);
        }
        Ok(())
    }

    fn unwire(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        Self::check_task(task)?;
        va.0.checked_add(len).ok_or(Error::Overflow {
            what: "unwire",
            start: va.0,
            len,
        })?;
        let mut s = self.lock();
        if let Some(p) = pages(self.page, va.0, len).find(|p| !s.wires.contains_key(p)) {
            return Err(Error::BadArgument {
                what: "unwire of a page that is not wired",
                value: p,
            });
        }
        for p in pages(self.page, va.0, len) {
            let c = s.wires.get_mut(&p).map(|c| {
                *c -= 1;
                *c
            });
            if c == Some(0) {
                s.wires.remove(&p);
                if !s.locked_for_life(p) {
                    sys::munlock(p as usize, self.page.bytes() as usize);
                }
            }
        }
        Ok(())
    }

    fn physical_runs(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        run: &mut dyn FnMut(PhysRange),
    ) -> Result<()> {
        Self::check_task(task)?;
        let end = va.0.checked_add(len).ok_or(Error::Overflow {
            what: "translation",
            start: va.0,
            len,
        })?;
        let runs = {
            let s = self.lock();
            if let Some(p) = pages(self.page, va.0, len)
                .find(|&p| !s.wires.contains_key(&p) && !s.locked_for_life(p))
            {
                return Err(Error::NotReady {
                    what: "translation of unwired memory",
                    addr: p.max(va.0),
                });
            }
            let pm = self.pagemap()?;
            let mut runs: Vec<PhysRange> = Vec::new();
            let mut a = va.0;
            while a < end {
                let n = (self.page.bytes() - self.page.offset(a)).min(end - a);
                let r = PhysRange::new(pm.translate(a)?, n);
                match runs.last_mut() {
                    Some(last) if last.abuts(&r) => last.len += n,
                    _ => runs.push(r),
                }
                a += n;
            }
            runs
        };
        runs.into_iter().for_each(run);
        Ok(())
    }
}

impl CpuAccess for Host {
    fn read_virt(&self, task: Task, va: VirtAddr, buf: &mut [u8]) -> Result<()> {
        Self::check_task(task)?;
        let s = self.lock();
        if !s.known(va.0, buf.len() as u64) {
            return Err(Error::NotMapped {
                what: "dmakit host memory",
                addr: va.0,
            });
        }
        // SAFETY: the range lies inside a live allocation of ours or a region whose owner
        // promised validity when registering; `buf` is a distinct Rust slice.
        unsafe { sys::copy_from(va.0 as usize, buf) };
        Ok(())
    }

    fn write_virt(&self, task: Task, va: VirtAddr, data: &[u8]) -> Result<()> {
        Self::check_task(task)?;
        let s = self.lock();
        if s.map_of(va.0, data.len() as u64) == Some(true) {
            return Err(Error::NotWritable {
                what: "read-only mapping",
                addr: va.0,
            });
        }
        if !s.known(va.0, data.len() as u64) {
            return Err(Error::NotMapped {
                what: "dmakit host memory",
                addr: va.0,
            });
        }
        // SAFETY: as in read_virt, for writing.
        unsafe { sys::copy_to(va.0 as usize, data) };
        Ok(())
    }
}

impl CacheOps for Host {
    fn dma_coherent(&self) -> bool {
        cfg!(target_arch = "x86_64")
    }

    /// On x86_64 every operation is `clflush(opt)` + `mfence`: a write-back *and*
    /// invalidate. A pure invalidate (`invd`) would throw away other data sharing the lines
    /// and is privileged anyway, so `Invalidate` is implemented as a flush, which leaves the
    /// cache in the state an invalidate promises.
    fn cache_virt(&self, _op: CacheOp, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        Self::check_task(task)?;
        let s = self.lock();
        if !s.known(va.0, len) {
            return Err(Error::NotMapped {
                what: "dmakit host memory",
                addr: va.0,
            });
        }
        flush(va.0, len, self.caps.clflushopt)
    }

    fn cache_phys(&self, op: CacheOp, pa: PhysAddr, len: u64) -> Result<()> {
        let s = self.lock();
        let mut a = pa.0;
        let end = pa.0.checked_add(len).ok_or(Error::Overflow {
            what: "cache operation",
            start: pa.0,
            len,
        })?;
        while a < end {
            let n = (self.page.bytes() - self.page.offset(a)).min(end - a);
            let va = s.phys_to_virt(a, n, self.page).ok_or(Error::NotMapped {
                what: "host physical memory (not a wired dmakit allocation)",
                addr: a,
            })?;
            let _ = op;
            flush(va, n, self.caps.clflushopt)?;
            a += n;
        }
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
fn flush(va: u64, len: u64, opt: bool) -> Result<()> {
    // SAFETY: callers checked (under the state lock) that the range is memory we know is
    // mapped.
    unsafe { sys::flush_lines(va as usize, len as usize, opt) };
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn flush(_va: u64, _len: u64, _opt: bool) -> Result<()> {
    Err(Error::Unsupported {
        what: "cache maintenance on this architecture",
    })
}

impl Host {
    /// The virtual address behind bus/physical address `pa` for an access of `n` bytes.
    fn io_target(&self, s: &State, pa: u64, n: u64) -> Result<u64> {
        if let Some((&b, &(va, l))) = s.mmio.range(..=pa).next_back() {
            if pa + n <= b + l {
                return Ok(va + (pa - b));
            }
        }
        s.phys_to_virt(pa, n, self.page).ok_or(Error::NotMapped {
            what: "physical I/O space (no registered MMIO region or wired allocation)",
            addr: pa,
        })
    }
}

impl Mmio for Host {
    fn mmio_read(&self, pa: PhysAddr, width: Width) -> Result<u64> {
        let n = width.bytes();
        width.check_aligned(pa, "MMIO read")?;
        let s = self.lock();
        let va = self.io_target(&s, pa.0, n)?;
        // SAFETY: `va` is in a registered MMIO region or a live wired allocation, naturally
        // aligned (the bus address is aligned and regions are mapped page aligned).
        Ok(unsafe { sys::read_volatile(va as usize, n) })
    }

    fn mmio_write(&self, pa: PhysAddr, width: Width, value: u64) -> Result<()> {
        let n = width.bytes();
        width.check_aligned(pa, "MMIO write")?;
        let s = self.lock();
        let va = self.io_target(&s, pa.0, n)?;
        // SAFETY: as in mmio_read, for writing; registered regions are only accessed
        // volatilely per the registration contract.
        unsafe { sys::write_volatile(va as usize, n, value & width.max_value()) };
        Ok(())
    }
}

impl VirtualMemory for Host {
    /// Maps pages of this host's own allocations a second time (through their memfd).
    /// Cache modes other than copy-back cannot be chosen from Linux userspace:
    /// [`Error::Unsupported`]. A fixed address that is already in use is
    /// [`Error::RangeBusy`] (never replaced).
    fn map_pages(&self, pieces: &[MapPiece], req: &MapRequest) -> Result<VirtAddr> {
        Self::check_task(req.task)?;
        if req.cache != CacheMode::CopyBack {
            return Err(Error::Unsupported {
                what: "cache modes other than copy-back from Linux userspace",
            });
        }
        let psize = self.page.bytes();
        let mut s = self.lock();
        // Resolve every piece to (memfd, offset) first.
        let mut plan = Vec::with_capacity(pieces.len());
        let mut total: u64 = 0;
        for p in pieces {
            let va = match p.src {
                MapSource::Virtual(t, va) => {
                    Self::check_task(t)?;
                    va.0
                }
                MapSource::Physical(pa) => s
                    .phys_to_virt(pa.0, psize.min(p.len), self.page)
                    .ok_or(Error::NotMapped {
                        what: "host physical memory (not a wired dmakit allocation)",
                        addr: pa.0,
                    })?,
            };
            if p.len == 0 || !p.len.is_multiple_of(psize) || !va.is_multiple_of(psize) {
                return Err(Error::NotAligned {
                    what: "map piece (whole pages only)",
                    value: va,
                    align: psize,
                });
            }
            let (base, a) = s.alloc_of(va, p.len).ok_or(Error::Unsupported {
                what: "mapping memory this host did not allocate (only its memfd-backed allocations can be mapped twice)",
            })?;
            plan.push((
                a.fd.try_clone().map_err(|e| Error::Os {
                    op: "dup(memfd)",
                    errno: e.raw_os_error().unwrap_or(0),
                    hint: "",
                })?,
                va - base,
                p.len,
            ));
            total = total.checked_add(p.len).ok_or(Error::Overflow {
                what: "mapping length",
                start: va,
                len: p.len,
            })?;
        }
        if total == 0 {
            return Err(Error::ZeroSize { what: "mapping" });
        }
        let base = match req.at {
            None => sys::reserve(total as usize)? as u64,
            Some(at) => match sys::reserve_at(at.0 as usize, total as usize) {
                Ok(a) => a as u64,
                Err(libc::EEXIST) => {
                    return Err(Error::RangeBusy {
                        what: "this process's address space",
                        start: at.0,
                        len: total,
                    })
                }
                Err(errno) => {
                    return Err(Error::Os {
                        op: "mmap(fixed reservation)",
                        errno,
                        hint: "",
                    })
                }
            },
        };
        let mut at = base;
        for (fd, off, len) in &plan {
            // SAFETY: [at, at + len) lies inside the reservation just made; nothing
            // references it.
            if let Err(errno) = unsafe {
                sys::map_fixed(at as usize, *len as usize, fd, *off, !req.read_only, true)
            } {
                // SAFETY: the whole reservation is ours and unreferenced.
                unsafe { sys::unmap(base as usize, total as usize) };
                return Err(Error::Os {
                    op: "mmap(second mapping)",
                    errno,
                    hint: "",
                });
            }
            at += len;
        }
        s.maps.insert(base, (total, req.read_only));
        Ok(VirtAddr(base))
    }

    fn unmap_pages(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        Self::check_task(task)?;
        let mut s = self.lock();
        match s.maps.get(&va.0) {
            Some(&(l, _)) if l == len => {}
            Some(&(l, _)) => {
                return Err(Error::WrongSize {
                    free_fn: "unmap_pages",
                    addr: va.0,
                    allocated: l,
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
        if let Some((&p, _)) = s.wires.range(va.0..va.0 + len).next() {
            return Err(Error::Busy {
                what: "mapping",
                addr: p,
                why: "a page of the mapping is still wired",
            });
        }
        s.maps.remove(&va.0);
        // SAFETY: a mapping this host made and just forgot; no Rust reference points into it
        // (the host only ever copies through it under its lock).
        unsafe { sys::unmap(va.0 as usize, len as usize) };
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let mut s = self.lock();
        // Allocations still wired by someone (a device may reach them) are left mapped:
        // a leak is the safe outcome. Everything else goes back to the kernel.
        let vas: Vec<(u64, u64)> = s.allocs.iter().map(|(&v, a)| (v, a.len)).collect();
        for (va, len) in vas {
            if s.wires.range(va..va + len).next().is_none() {
                self.release(&mut s, va);
            }
        }
        let maps: Vec<(u64, u64)> = s.maps.iter().map(|(&v, &(l, _))| (v, l)).collect();
        for (va, len) in maps {
            if s.wires.range(va..va + len).next().is_none() {
                // SAFETY: a second mapping this host made; the host is going away and nothing
                // can reach the mapping through it any more.
                unsafe { sys::unmap(va as usize, len as usize) };
            }
        }
    }
}
