//! [`Host`]: this Linux process as a dmakit platform.
//!
//! A `Host` is the seam's view of real memory of this process. Each capability trait lives
//! in a file of its own; this one holds the type, its probing and the registrations:
//!
//! | trait | file | mechanism |
//! | --- | --- | --- |
//! | [`PhysicalMemory`](dmakit::platform::PhysicalMemory) | `physical.rs` | memfd + `mmap(MAP_SHARED)`, `mlock`, `MFD_HUGETLB`, pagemap |
//! | [`Wiring`](dmakit::platform::Wiring) | `wiring.rs` | counted `mlock` through the process-wide ledger; pagemap |
//! | [`CpuAccess`](dmakit::platform::CpuAccess) | `cpu.rs` | copies through the registry's spans |
//! | [`CacheOps`](dmakit::platform::CacheOps) | `cache.rs` | `clflushopt`/`clflush` + `mfence` |
//! | [`Mmio`](dmakit::platform::Mmio) | `mmio.rs` | volatile loads and stores of exactly the width |
//! | [`VirtualMemory`](dmakit::platform::VirtualMemory) | `vm.rs`, `purgeable.rs` | the memfd mapped a second time; volatile pages punched out of it |
//!
//! The host has one task, this process: [`Task::KERNEL`]. Any other task is
//! [`Error::Unsupported`].

use crate::caps::{AddressMode, Capabilities};
use crate::ledger::ledger;
use crate::pagemap::{Pagemap, NO_PFN_HINT};
use crate::registry::Registry;
use crate::registry_lock::RegistryLock;
use crate::sys::{self, LooseCopy, Mapping, RawRegion};
use dmakit::addr::checked_end;
use dmakit::platform::Task;
use dmakit::{Error, PageSize, PhysAddr, Result, VirtAddr};
use std::fmt;
use std::sync::MutexGuard;

/// The size of the hugepages that back physically contiguous memory.
pub const HUGEPAGE: u64 = 2 << 20;

/// This process as a dmakit platform: real memory, real locks, real physical addresses.
///
/// `Send + Sync`: share it with `Arc<Host>` (the seam traits are implemented for `Arc`).
///
/// ```
/// use dmakit::platform::{CpuAccess, PageRequest, PhysicalMemory, Task};
/// use dmakit_linux::Host;
///
/// let host = Host::new()?;
/// println!("{}", host.capabilities());
/// let len = 4 * host.page_size().bytes();
/// let va = host.allocate_pages(len, &PageRequest::WIRED)?; // mlocked memfd pages
/// host.write_virt(Task::KERNEL, va, b"for the device")?;
/// let mut back = [0u8; 14];
/// host.read_virt(Task::KERNEL, va, &mut back)?;
/// assert_eq!(&back, b"for the device");
/// assert_eq!(host.usage().allocations, 1);
/// host.free_pages(va, len)?;
/// assert!(host.usage().is_idle(), "nothing allocated, wired or mapped");
/// # Ok::<(), dmakit::Error>(())
/// ```
///
/// # Invariants
///
/// The registry behind `state` holds every allocation, second mapping and registration of
/// this host; memory is reached only through spans it hands out while `state` is locked.
///
/// # Drop
///
/// Dropping the host frees every allocation and second mapping (unmapped, unlocked) —
/// except those on which a wiring is still counted, by this host or another: a device may
/// still reach them, so they stay mapped and locked for the rest of the process (a leak is
/// the safe outcome, as in DESIGN §4.3). Wirings of caller memory likewise stay in force.
pub struct Host {
    page: PageSize,
    pagemap: Option<Pagemap>,
    caps: Capabilities,
    state: RegistryLock,
}

/// What a host holds right now, for leak checks and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Usage {
    /// Live allocations.
    pub allocations: usize,
    /// Bytes mapped for them (a contiguous allocation maps a whole hugepage).
    pub allocated_bytes: u64,
    /// Distinct pages this host holds wired through [`Wiring::wire`](dmakit::platform::Wiring::wire).
    pub wired_pages: usize,
    /// Second mappings.
    pub mappings: usize,
    /// Registered CPU regions.
    pub regions: usize,
    /// Registered MMIO regions.
    pub mmio_regions: usize,
}

impl Usage {
    /// No allocation, wiring or second mapping is outstanding (registrations are the
    /// caller's and may remain).
    pub fn is_idle(&self) -> bool {
        self.allocations == 0 && self.wired_pages == 0 && self.mappings == 0
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("caps", &self.caps)
            .field("usage", &self.usage())
            .finish()
    }
}

impl Host {
    /// Opens the host: reads the page size, opens `/proc/self/pagemap` and probes what this
    /// process may do ([`capabilities`](Self::capabilities)). Never fails for lack of
    /// privilege; what privilege is missing shows in the capabilities and in the errors of
    /// the operations that need it.
    pub fn new() -> Result<Host> {
        let page = PageSize::new(sys::page_size())?;
        let pagemap = Pagemap::open(page).ok();
        let pfns = pagemap.as_ref().is_some_and(|pm| probe_pagemap(pm, page));
        Ok(Host {
            page,
            pagemap,
            caps: Capabilities::probe(page.bytes(), pfns),
            state: RegistryLock::default(),
        })
    }

    /// What the host found when it was opened.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// How device-visible addresses are produced (chosen by probing, never guessed).
    pub fn address_mode(&self) -> AddressMode {
        self.caps.address_mode
    }

    /// What the host holds now.
    pub fn usage(&self) -> Usage {
        let s = self.lock();
        Usage {
            allocations: s.allocs.len(),
            allocated_bytes: s.allocs.values().map(|a| a.map_len).sum(),
            wired_pages: s.wires.len(),
            mappings: s.maps.len(),
            regions: s.regions.len(),
            mmio_regions: s.mmio.len(),
        }
    }

    /// Registers memory the caller owns (a `Vec`, a mapping of its own) so the host's CPU
    /// access ([`CpuAccess`](dmakit::platform::CpuAccess)) and cache maintenance may reach
    /// it. Returns its address. (Wiring and translation need no registration: `mlock` and
    /// pagemap are safe on any memory of the process.)
    ///
    /// Refused with [`Error::RangeBusy`] if it overlaps a registered region.
    ///
    /// # Safety
    ///
    /// Until [`unregister_region`](Self::unregister_region) returns `Ok` (or the host is
    /// dropped), `[ptr, ptr + len)` must stay mapped, readable and writable memory of this
    /// process, and no Rust reference to it may be used while a host call that reaches it
    /// runs (the host copies in and out with raw pointers, from whichever thread calls it).
    pub unsafe fn register_region(&self, ptr: *mut u8, len: usize) -> Result<VirtAddr> {
        let start = check_registration(ptr, len, "registered region")?;
        let mut s = self.lock();
        if overlaps(&s.regions, start, len as u64) {
            return Err(Error::RangeBusy {
                what: "registered regions",
                start,
                len: len as u64,
            });
        }
        if let Some(p) = s.lent_in(start, len as u64, false) {
            return Err(Host::lent_busy(p));
        }
        // SAFETY: the caller's contract for this function is the contract of
        // `RawRegion::new`, for exactly as long as the region stays registered.
        let region = unsafe { RawRegion::new(ptr, len) };
        s.regions.insert(start, region);
        Ok(VirtAddr(start))
    }

    /// Forgets a region registered at `va`. Refused ([`Error::Busy`]) while any of its pages
    /// is wired through this host.
    pub fn unregister_region(&self, va: VirtAddr) -> Result<()> {
        let mut s = self.lock();
        let len = s
            .regions
            .get(&va.0)
            .map(|r| r.len())
            .ok_or(Error::NotAllocated {
                free_fn: "unregister_region",
                addr: va.0,
            })?;
        if let Some((&p, _)) = s.wires.range(self.page.trunc(va.0)..va.0 + len).next() {
            return Err(Error::Busy {
                what: "registered region",
                addr: p,
                why: "a page of it is still wired: unwire it first",
            });
        }
        s.regions.remove(&va.0);
        Ok(())
    }

    /// Registers device memory — for example a PCI BAR mapped through VFIO — at bus address
    /// `bus`, so [`Mmio`](dmakit::platform::Mmio) accesses to `[bus, bus + len)` reach
    /// `[ptr, ptr + len)`. `ptr` must be aligned like `bus` (modulo 8), so that naturally
    /// aligned bus accesses are naturally aligned loads and stores.
    ///
    /// # Safety
    ///
    /// Until [`unregister_mmio`](Self::unregister_mmio) returns `Ok` (or the host is
    /// dropped), `[ptr, ptr + len)` must stay mapped, readable and writable memory of this
    /// process that may be accessed from any thread, and it must be accessed only through
    /// volatile operations (no Rust references to it) while registered.
    pub unsafe fn register_mmio(&self, bus: PhysAddr, ptr: *mut u8, len: usize) -> Result<()> {
        check_registration(ptr, len, "MMIO region")?;
        checked_end(bus.0, len as u64, "MMIO region")?;
        if (ptr as u64 ^ bus.0) & 7 != 0 {
            return Err(Error::NotAligned {
                what: "MMIO region: the mapping must be aligned like its bus address (mod 8)",
                value: ptr as u64,
                align: 8,
            });
        }
        let mut s = self.lock();
        if overlaps(&s.mmio, bus.0, len as u64) {
            return Err(Error::RangeBusy {
                what: "MMIO regions",
                start: bus.0,
                len: len as u64,
            });
        }
        // SAFETY: the caller's contract for this function includes the contract of
        // `RawRegion::new` (mapped, readable, writable, any thread, no references) for as
        // long as the region stays registered.
        let region = unsafe { RawRegion::new(ptr, len) };
        s.mmio.insert(bus.0, region);
        Ok(())
    }

    /// Forgets the MMIO region registered at `bus`.
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

    /// The registry, locked (see [`RegistryLock::lock`]: it also waits for a copy still
    /// running outside the lock).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Registry> {
        self.state.lock()
    }

    /// Releases `guard` and runs `copy` with the registry still kept from everyone else
    /// until it ends (see [`RegistryLock::copy_unlocked`]); returns the bytes copied.
    ///
    /// # Safety
    ///
    /// `guard` must come from this host's [`lock`](Self::lock), and `copy` be made under it
    /// from spans of this host's registry, checked against conflicting lends.
    pub(crate) unsafe fn copy_unlocked(
        &self,
        guard: MutexGuard<'_, Registry>,
        copy: LooseCopy,
    ) -> usize {
        // SAFETY: the caller's contract is the one `RegistryLock::copy_unlocked` asks for, and
        // `self.state` is the lock behind `self.lock()`.
        unsafe { self.state.copy_unlocked(guard, copy) }
    }

    pub(crate) fn page(&self) -> PageSize {
        self.page
    }

    /// Only this process, the kernel task, exists here.
    pub(crate) fn check_task(task: Task) -> Result<()> {
        if task != Task::KERNEL {
            return Err(Error::Unsupported {
                what: "tasks other than Task::KERNEL (the Linux host has one: this process)",
            });
        }
        Ok(())
    }

    /// The pagemap, if it yields frame numbers; otherwise why not.
    pub(crate) fn pagemap(&self) -> Result<&Pagemap> {
        match (&self.pagemap, self.caps.pagemap_pfns) {
            (Some(pm), true) => Ok(pm),
            _ => Err(Error::NotPermitted {
                what: "physical address lookup",
                hint: NO_PFN_HINT,
            }),
        }
    }

    /// The pages touching `[va, va + len)`: (first page, count). Zero bytes touch none.
    pub(crate) fn pages(&self, va: u64, len: u64, what: &'static str) -> Result<(u64, u64)> {
        let end = checked_end(va, len, what)?;
        if len == 0 {
            return Ok((self.page.trunc(va), 0));
        }
        let last = self.page.round_up(end).ok_or(Error::Overflow {
            what,
            start: va,
            len,
        })?;
        let first = self.page.trunc(va);
        Ok((first, (last - first) >> self.page.shift()))
    }
}

/// Whether pagemap yields frame numbers here: one locked page of our own, translated.
fn probe_pagemap(pm: &Pagemap, page: PageSize) -> bool {
    let Ok(m) = Mapping::anonymous(page.bytes() as usize) else {
        return false;
    };
    // Touch the page so it is present even if it cannot be locked.
    if m.span(m.addr(), 1).and_then(|s| s.write(&[1])).is_none() {
        return false;
    }
    let locked = sys::mlock(m.addr(), page.bytes()).is_ok();
    let ok = pm.translate(m.addr()).is_ok();
    if locked {
        sys::munlock(m.addr(), page.bytes());
    }
    ok
}

/// Checks a registration's pointer and length; returns the start address.
fn check_registration(ptr: *mut u8, len: usize, what: &'static str) -> Result<u64> {
    if len == 0 {
        return Err(Error::ZeroSize { what });
    }
    if ptr.is_null() {
        return Err(Error::BadArgument {
            what: "a registered region cannot start at the null pointer",
            value: 0,
        });
    }
    let start = ptr as u64;
    checked_end(start, len as u64, what)?;
    Ok(start)
}

/// Whether `[start, start + len)` overlaps a region of `map`.
fn overlaps(map: &std::collections::BTreeMap<u64, RawRegion>, start: u64, len: u64) -> bool {
    map.range(..start + len)
        .next_back()
        .is_some_and(|(&b, r)| b + r.len() > start)
}

impl Drop for Host {
    fn drop(&mut self) {
        let page = self.page.bytes();
        let s = self.state.get_mut();
        let mut ledger = ledger();
        for (va, a) in std::mem::take(&mut s.allocs) {
            if ledger.first_wired(va, va + a.map_len).is_some() {
                // A device may still reach it: keep it mapped and locked for good.
                a.mapping.leak();
            } else {
                if a.wired {
                    ledger.end_life(va, a.map_len, page);
                }
                drop(a);
            }
        }
        for (va, m) in std::mem::take(&mut s.maps) {
            if ledger.first_wired(va, va + m.len).is_some() {
                m.mapping.leak();
            }
        }
    }
}
