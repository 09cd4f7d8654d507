//! The simulated machine: physical memory, tasks, the cache model, MMIO windows and fault
//! injection behind one lock, and the platform seam implemented on top.
//!
//! Build one with [`MachineBuilder`](crate::MachineBuilder). Everything is deterministic:
//! the same seed and the same sequence of calls give the same physical addresses.

use crate::cache::{Cache, CacheMode};
use crate::fault::{FaultPlan, FaultSite};
use crate::mmio::{MmioWindow, SharedDevice};
use crate::physical::{PhysicalPool, RamRegion};
use crate::task::{AddressSpace, PageEntry, Pte, Region, KERNEL_VA_BASE, USER_VA_BASE};
use dmakit::platform::{
    CacheOp, CacheOps, CpuAccess, DirectSlice, DirectSliceMut, MapPiece, MapRequest, MapSource,
    Mmio, PageRequest, PhysicalMemory, PurgeableRequest, PurgeableState, Task, VirtualMemory,
    Width, Wiring,
};
use dmakit::{Error, PageSize, PhysAddr, PhysRange, Result, VirtAddr};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, RwLock};

/// Everything behind the machine's lock.
#[derive(Debug)]
pub(crate) struct Inner {
    pub page: PageSize,
    pub phys: PhysicalPool,
    pub cache: Cache,
    pub faults: FaultPlan,
    pub tasks: BTreeMap<Task, AddressSpace>,
    pub next_task: u32,
    /// Physical pages mapped a second time, and how many extra mappings each has.
    pub shared: std::collections::HashMap<u64, u32>,
    /// Physical pages lent as slices (`CpuAccess::direct_slice`), and how.
    pub lent: std::collections::HashMap<u64, Lend>,
}

/// How a physical page is lent.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lend {
    /// Shared lends alive.
    shared: u32,
    /// A mutable lend is alive.
    exclusive: bool,
}

/// The error for memory that is lent as a slice.
fn lent_busy(addr: u64) -> Error {
    Error::Busy {
        what: "simulated memory",
        addr,
        why: "it is lent as a slice (direct_slice): drop the slice first",
    }
}

/// A simulated machine. `Send + Sync`; share it by reference or `Arc`.
///
/// It is a [`Platform`](dmakit::platform::Platform): pass it (or an `Arc` of it) wherever
/// dmakit wants one. Its own methods are what a test needs beyond the seam: device-side
/// access to DRAM, tasks, paging, fault injection and counters that prove nothing leaked.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
/// use dmakit::{Direction, PhysAddr};
/// use dmakit_sim::{FaultSite, MachineBuilder};
/// use std::sync::Arc;
///
/// let m = Arc::new(MachineBuilder::new().seed(1).coherent(true).build()?);
/// let before = m.stats();
/// {
///     let buf = BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x3000, Direction::In))?;
///     let pa = buf.physical_segment(0)?.addr;
///     m.device_write(pa, b"written by a device")?; // DMA into DRAM
///     let mut back = [0u8; 19];
///     buf.read(0, &mut back)?;
///     assert_eq!(&back, b"written by a device");
///     assert_eq!(m.stats().kernel_allocations, before.kernel_allocations + 1);
/// }
/// assert_eq!(m.stats().used_pages(), before.used_pages(), "the buffer gave its pages back");
/// // The next pin fails, and the failure is clean.
/// m.inject_next(FaultSite::Pin);
/// assert!(BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x1000, Direction::In)).is_err());
/// assert_eq!(m.stats().used_pages(), before.used_pages());
/// assert!(m.device_read(PhysAddr(0x7000_0000), &mut [0u8; 4]).is_err(), "a hole in the RAM map");
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct Machine {
    pub(crate) inner: Mutex<Inner>,
    pub(crate) windows: RwLock<Vec<MmioWindow>>,
    pub(crate) seed: u64,
    pub(crate) fragmentation: f64,
    /// Whether device accesses snoop the CPU caches (fixed when built; read without the
    /// lock on every mapped DMA round trip).
    pub(crate) coherent: bool,
}

/// Counters that let a test prove nothing leaked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Pages of RAM.
    pub ram_pages: u64,
    /// Pages in the free pool.
    pub free_pages: u64,
    /// Live tasks, the kernel included.
    pub tasks: u64,
    /// Live allocations over all tasks.
    pub allocations: u64,
    /// Live allocations of the kernel task ([`PhysicalMemory::allocate_pages`] and the
    /// IOMalloc family on top of it).
    pub kernel_allocations: u64,
    /// Pages with at least one explicit wiring.
    pub wired_pages: u64,
    /// Pages of pageable memory that are paged out (their contents in a swap store).
    pub swapped_pages: u64,
    /// Pages of DRAM backed by a host buffer (written since they were last freed).
    pub dram_pages: u64,
    /// Cached lines, and how many of them are dirty.
    pub cached_lines: (u64, u64),
    /// Calls seen at each fault site, in [`FaultSite::ALL`] order.
    pub site_calls: [u64; FaultSite::ALL.len()],
}

impl SimStats {
    /// Pages of RAM in use (handed out and not yet freed).
    pub fn used_pages(&self) -> u64 {
        self.ram_pages - self.free_pages
    }

    /// Calls seen so far at `site` (the `nth` of the next call is this plus one).
    pub fn calls(&self, site: FaultSite) -> u64 {
        FaultSite::ALL
            .iter()
            .position(|&s| s == site)
            .map_or(0, |i| self.site_calls[i])
    }
}

/// The machine's physical layout, for display.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The page size.
    pub page_size: PageSize,
    /// RAM regions in address order.
    pub ram: Vec<RamRegion>,
    /// MMIO windows: base, length, device name.
    pub mmio: Vec<(u64, u64, String)>,
    /// Whether devices see the CPU caches.
    pub coherent: bool,
    /// The seed.
    pub seed: u64,
    /// The fragmentation setting.
    pub fragmentation: f64,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "page size {} KiB, seed {}, fragmentation {:.2}, {}",
            self.page_size.bytes() / 1024,
            self.seed,
            self.fragmentation,
            if self.coherent {
                "DMA-coherent"
            } else {
                "non-coherent caches"
            }
        )?;
        let mut prev_end: Option<u64> = None;
        for r in &self.ram {
            if let Some(p) = prev_end.filter(|&p| p < r.base) {
                writeln!(f, "  hole {:#014x}-{:#014x}", p, r.base)?;
            }
            writeln!(
                f,
                "  RAM  {:#014x}-{:#014x} ({} MiB)",
                r.base,
                r.end(),
                r.len >> 20
            )?;
            prev_end = Some(r.end());
        }
        for (b, l, n) in &self.mmio {
            writeln!(f, "  MMIO {:#014x}-{:#014x} {}", b, b + l, n)?;
        }
        Ok(())
    }
}

/// The address space of `task`, or the error that names it.
fn space_of(tasks: &mut BTreeMap<Task, AddressSpace>, task: Task) -> Result<&mut AddressSpace> {
    tasks.get_mut(&task).ok_or(Error::BadArgument {
        what: "no such simulated task",
        value: task.0 as u64,
    })
}

fn page_chunks(page: PageSize, va: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    // (page start, offset in page, bytes in this page)
    let end = va + len;
    let mut a = va;
    std::iter::from_fn(move || {
        if a >= end {
            return None;
        }
        let p = page.trunc(a);
        let off = a - p;
        let n = (page.bytes() - off).min(end - a);
        a += n;
        Some((p, off, n))
    })
}

/// Why the page `pte` maps cannot be made volatile (it is wired, mapped a second time or
/// lent as a slice), if it cannot.
fn volatile_refusal(
    pte: &Pte,
    shared: &std::collections::HashMap<u64, u32>,
    lent: &std::collections::HashMap<u64, Lend>,
) -> Option<&'static str> {
    if pte.wired() {
        Some("wired memory cannot be made volatile")
    } else if pte
        .pa
        .is_some_and(|pa| shared.get(&pa).is_some_and(|&c| c > 0))
    {
        Some("memory mapped a second time cannot be made volatile")
    } else if pte.pa.is_some_and(|pa| lent.contains_key(&pa)) {
        Some("memory lent as a slice cannot be made volatile")
    } else {
        None
    }
}

/// The physical page behind each of the `n` pages of a new allocation: none yet when it is
/// pageable (placed on first touch), otherwise taken from `phys` now.
fn allocation_pages(
    phys: &mut PhysicalPool,
    faults: &mut FaultPlan,
    n: u64,
    align: u64,
    req: &PageRequest,
) -> Result<Vec<Option<u64>>> {
    if req.pageable {
        return Ok(vec![None; n as usize]);
    }
    let taken = phys.take(
        n,
        req.contiguous,
        align,
        (req.phys_min, req.phys_limit),
        faults,
    )?;
    Ok(taken.into_iter().map(Some).collect())
}

/// Enters `pages` as the page-table entries of a new region of `len` bytes at `va`, and
/// records the region.
fn install_region(
    space: &mut AddressSpace,
    va: u64,
    len: u64,
    pages: Vec<Option<u64>>,
    req: &PageRequest,
    psize: u64,
) {
    for (i, pa) in pages.into_iter().enumerate() {
        space.ptes.insert(
            va + i as u64 * psize,
            Pte {
                pa,
                wires: 0,
                always_wired: !req.pageable,
                writable: true,
                cache: None,
                purgeable: PurgeableState::NonVolatile,
            },
        );
    }
    space.regions.insert(
        va,
        Region {
            len,
            pageable: req.pageable,
            phys_limit: req.phys_limit,
        },
    );
}

/// Refuses to free `len` bytes at `va` of `space` while a page of them is wired, mapped a
/// second time (`shared`) or lent as a slice (`lent`).
fn check_freeable(
    space: &AddressSpace,
    va: u64,
    len: u64,
    shared: &std::collections::HashMap<u64, u32>,
    lent: &std::collections::HashMap<u64, Lend>,
) -> Result<()> {
    if let Some((&p, _)) = space.ptes.range(va..va + len).find(|(_, p)| p.wires > 0) {
        return Err(Error::Busy {
            what: "simulated memory",
            addr: p,
            why: "a page is still wired (a device may reach it)",
        });
    }
    if let Some((&p, _)) = space.ptes.range(va..va + len).find(|(_, pte)| {
        pte.pa
            .is_some_and(|pa| shared.get(&pa).is_some_and(|&n| n > 0))
    }) {
        return Err(Error::Busy {
            what: "simulated memory",
            addr: p,
            why: "a page is mapped a second time (unmap the MemoryMap first)",
        });
    }
    check_not_lent(space.ptes.range(va..va + len), lent)
}

/// Refuses while a page among `ptes` is lent as a slice (`lent`).
fn check_not_lent<'a>(
    mut ptes: impl Iterator<Item = (&'a u64, &'a Pte)>,
    lent: &std::collections::HashMap<u64, Lend>,
) -> Result<()> {
    match ptes.find(|(_, pte)| pte.pa.is_some_and(|pa| lent.contains_key(&pa))) {
        Some((&p, _)) => Err(lent_busy(p)),
        None => Ok(()),
    }
}

impl Inner {
    fn space(&mut self, task: Task) -> Result<&mut AddressSpace> {
        space_of(&mut self.tasks, task)
    }

    fn check_range(&self, va: u64, len: u64, what: &'static str) -> Result<()> {
        va.checked_add(len).ok_or(Error::Overflow {
            what,
            start: va,
            len,
        })?;
        Ok(())
    }

    pub(crate) fn allocate(&mut self, task: Task, len: u64, req: &PageRequest) -> Result<u64> {
        let psize = self.page.bytes();
        let align = req.validate(len, self.page)?;
        if req.pageable && req.phys_min != 0 {
            return Err(Error::BadArgument {
                what: "pageable memory cannot have a physical floor (its pages are placed \
                       when first touched)",
                value: req.phys_min,
            });
        }
        let Inner {
            phys,
            faults,
            tasks,
            ..
        } = self;
        let space = space_of(tasks, task)?;
        let n = len / psize;
        // Pageable memory takes no pages now, but its page-table entries do: refuse what
        // could never be resident at once (wired requests are checked by the pool).
        if req.pageable && n > phys.total_pages() {
            return Err(Error::NoMemory {
                what: "simulated RAM (pageable allocation larger than all of RAM)",
                requested: len,
                available: phys.free_pages() * psize,
            });
        }
        let va = space.va.allocate(len, align)?;
        let pages = match allocation_pages(phys, faults, n, align, req) {
            Ok(p) => p,
            Err(e) => {
                space.va.deallocate(va, len).map_err(|_| Error::Internal {
                    what: "sim VA rollback",
                })?;
                return Err(e);
            }
        };
        install_region(space, va, len, pages, req, psize);
        Ok(va)
    }

    pub(crate) fn free(&mut self, task: Task, va: u64, len: u64) -> Result<()> {
        let psize = self.page.bytes();
        let Inner {
            phys,
            cache,
            tasks,
            shared,
            lent,
            ..
        } = self;
        let space = space_of(tasks, task)?;
        let region = *space.regions.get(&va).ok_or(Error::NotAllocated {
            free_fn: "free_pages",
            addr: va,
        })?;
        if region.len != len {
            return Err(Error::WrongSize {
                free_fn: "free_pages",
                addr: va,
                allocated: region.len,
                given: len,
            });
        }
        check_freeable(space, va, len, shared, lent)?;
        let ptes: Vec<u64> = space.ptes.range(va..va + len).map(|(&v, _)| v).collect();
        for v in ptes {
            if let Some(pte) = space.ptes.remove(&v) {
                if let Some(pa) = pte.pa {
                    cache.forget(pa, psize);
                    phys.give_back(&[pa]);
                }
            }
        }
        let swapped: Vec<u64> = space.swap.range(va..va + len).map(|(&v, _)| v).collect();
        for v in swapped {
            space.swap.remove(&v);
        }
        space.regions.remove(&va);
        space.va.deallocate(va, len).map_err(|_| Error::Internal {
            what: "sim VA free",
        })?;
        Ok(())
    }

    /// The physical page behind `page` of `task`, bringing a pageable page in if needed
    /// (zero-filled, or with its contents from the swap store). A failed page-in changes
    /// nothing.
    fn resident(&mut self, task: Task, page: u64, addr: u64) -> Result<u64> {
        let Inner {
            phys,
            faults,
            tasks,
            ..
        } = self;
        let space = space_of(tasks, task)?;
        let pte = space.ptes.get_mut(&page).ok_or(Error::NotMapped {
            what: "simulated task",
            addr,
        })?;
        if let Some(pa) = pte.pa {
            return Ok(pa);
        }
        let limit = space.limit_of(page);
        let Some(pte) = space.ptes.get_mut(&page) else {
            return Err(Error::Internal {
                what: "sim page-table entry vanished",
            });
        };
        let pa = phys.take(1, false, 0, (0, limit), faults)?[0];
        if let Some(Some(contents)) = space.swap.remove(&page) {
            phys.dram_write(pa, &contents);
        }
        pte.pa = Some(pa);
        Ok(pa)
    }

    /// Checks that every page of `[va, va + len)` is mapped in `task` (and writable, if
    /// asked) before an operation changes anything.
    fn check_pages(&mut self, task: Task, va: u64, len: u64, writable: bool) -> Result<()> {
        let page = self.page;
        let space = self.space(task)?;
        for (p, off, _) in page_chunks(page, va, len) {
            let pte = space.ptes.get(&p).ok_or(Error::NotMapped {
                what: "simulated task",
                addr: p + off,
            })?;
            if writable && !pte.writable {
                return Err(Error::NotWritable {
                    what: "simulated page",
                    addr: p + off,
                });
            }
        }
        Ok(())
    }

    /// Whether the page at `page` of `task` is pageable memory that holds no data: not
    /// resident and with no contents in the swap store (never written, paged out while all
    /// zeros, or purged). A load from it reads zeros without taking a physical page.
    fn holds_no_data(&mut self, task: Task, page: u64) -> Result<bool> {
        let space = self.space(task)?;
        let absent = space.ptes.get(&page).is_some_and(|pte| pte.pa.is_none());
        Ok(absent && !matches!(space.swap.get(&page), Some(Some(_))))
    }

    /// A CPU load (`write == false`) or store over `[va, va + len)` of `task`: `f` is called
    /// for each piece in order with its physical address and the mapping's cache mode, or
    /// with `None` for a load from a page that holds no data ([`Self::holds_no_data`]),
    /// which reads as zeros. Stores always bring a page in.
    fn cpu_access(
        &mut self,
        task: Task,
        va: u64,
        len: u64,
        write: bool,
        mut f: impl FnMut(&mut Inner, Option<(u64, Option<CacheMode>)>, std::ops::Range<usize>),
    ) -> Result<()> {
        self.check_range(va, len, "CPU access")?;
        // Check the whole range, then bring every page in, and only then copy: a failed
        // access copies nothing (pages it brought in stay, as after a real fault).
        let page = self.page;
        self.check_pages(task, va, len, write)?;
        let mut targets = Vec::new();
        for (p, off, n) in page_chunks(page, va, len) {
            // Like a real VM's shared zero page: loads from memory that holds no data
            // need no page of their own, so they cannot fail for want of one.
            if !write && self.holds_no_data(task, p)? {
                targets.push((None, n as usize));
                continue;
            }
            let pa = self.resident(task, p, p + off)?;
            if let Some(l) = self.lent.get(&pa) {
                if write || l.exclusive {
                    return Err(lent_busy(p + off));
                }
            }
            let mode = self.space(task)?.ptes.get(&p).and_then(|pte| pte.cache);
            targets.push((Some((pa + off, mode)), n as usize));
        }
        let mut done = 0usize;
        for (target, n) in targets {
            f(self, target, done..done + n);
            done += n;
        }
        Ok(())
    }

    pub(crate) fn wire(&mut self, task: Task, va: u64, len: u64, writable: bool) -> Result<()> {
        self.check_range(va, len, "wire")?;
        self.faults.hit(FaultSite::Pin)?;
        let page = self.page;
        self.check_pages(task, va, len, writable)?;
        let mut done: Vec<u64> = Vec::new();
        for (p, off, _) in page_chunks(page, va, len) {
            let got =
                self.resident(task, p, p + off)
                    .and_then(|pa| match self.lent.contains_key(&pa) {
                        true => Err(lent_busy(p + off)),
                        false => Ok(pa),
                    });
            if let Err(e) = got {
                let space = self.space(task)?;
                for d in done {
                    if let Some(pte) = space.ptes.get_mut(&d) {
                        pte.wires -= 1;
                    }
                }
                return Err(e);
            }
            let space = self.space(task)?;
            if let Some(pte) = space.ptes.get_mut(&p) {
                pte.wires += 1;
            }
            done.push(p);
        }
        if len != 0 {
            *self.space(task)?.wired_ranges.entry((va, len)).or_insert(0) += 1;
        }
        Ok(())
    }

    pub(crate) fn unwire(&mut self, task: Task, va: u64, len: u64) -> Result<()> {
        self.check_range(va, len, "unwire")?;
        let page = self.page;
        let space = self.space(task)?;
        for (p, off, _) in page_chunks(page, va, len) {
            match space.ptes.get(&p) {
                None => {
                    return Err(Error::NotMapped {
                        what: "simulated task",
                        addr: p + off,
                    })
                }
                Some(pte) if pte.wires == 0 => {
                    return Err(Error::BadArgument {
                        what: "unwire of a page that is not wired",
                        value: p + off,
                    })
                }
                Some(_) => {}
            }
        }
        for (p, _, _) in page_chunks(page, va, len) {
            if let Some(pte) = space.ptes.get_mut(&p) {
                pte.wires -= 1;
            }
        }
        if len != 0 {
            space.forget_wiring(va, len, page.bytes());
        }
        Ok(())
    }

    /// Refuses a CPU access by physical address to lent pages (any lend for a store, a
    /// mutable one for a load).
    fn check_lent_phys(&self, pa: u64, len: u64, write: bool) -> Result<()> {
        if self.lent.is_empty() {
            return Ok(());
        }
        for (p, off, _) in page_chunks(self.page, pa, len) {
            if let Some(l) = self.lent.get(&p) {
                if write || l.exclusive {
                    return Err(lent_busy(p + off));
                }
            }
        }
        Ok(())
    }

    /// Forgets the contents of the page at `v`: its physical page goes back to the pool
    /// (cached lines dropped unwritten), its swap copy is dropped. The next touch brings in
    /// a zero-filled page.
    fn discard(&mut self, task: Task, v: u64) -> Result<()> {
        let psize = self.page.bytes();
        let Inner {
            phys, cache, tasks, ..
        } = self;
        let space = space_of(tasks, task)?;
        if let Some(pte) = space.ptes.get_mut(&v) {
            if let Some(pa) = pte.pa.take() {
                cache.forget(pa, psize);
                phys.give_back(&[pa]);
            }
        }
        space.swap.remove(&v);
        Ok(())
    }

    pub(crate) fn set_purgeable(
        &mut self,
        task: Task,
        va: u64,
        len: u64,
        req: PurgeableRequest,
    ) -> Result<PurgeableState> {
        self.check_range(va, len, "purgeable range")?;
        let (worst, pages) = self.purgeable_pages(task, va, len, req.discards())?;
        if let Some(state) = req.target() {
            self.set_purgeable_state(task, pages, state)?;
        }
        Ok(worst)
    }

    /// The pages of `len` bytes at `va` in `task`, and the greatest purgeable state among
    /// them; refuses unmapped pages, pages of a second mapping and, when the request
    /// `discards`, pages that cannot be made volatile. Changes nothing.
    fn purgeable_pages(
        &mut self,
        task: Task,
        va: u64,
        len: u64,
        discards: bool,
    ) -> Result<(PurgeableState, Vec<u64>)> {
        let page = self.page;
        let Inner {
            tasks,
            shared,
            lent,
            ..
        } = self;
        let space = space_of(tasks, task)?;
        let mut worst = PurgeableState::NonVolatile;
        let mut pages = Vec::new();
        for (p, off, _) in page_chunks(page, va, len) {
            let pte = space.ptes.get(&p).ok_or(Error::NotMapped {
                what: "simulated task",
                addr: p + off,
            })?;
            let in_mapping = space
                .mappings
                .range(..=p)
                .next_back()
                .is_some_and(|(&s, &l)| p < s + l);
            if in_mapping {
                return Err(Error::Unsupported {
                    what: "purgeable state through a second mapping (it belongs to the \
                           allocation)",
                });
            }
            if discards {
                if let Some(why) = volatile_refusal(pte, shared, lent) {
                    return Err(Error::Busy {
                        what: "simulated memory",
                        addr: p + off,
                        why,
                    });
                }
            }
            worst = worst.max(pte.purgeable);
            pages.push(p);
        }
        Ok((worst, pages))
    }

    /// Puts `pages` of `task` in `state`, discarding their contents when it is `Empty`.
    fn set_purgeable_state(
        &mut self,
        task: Task,
        pages: Vec<u64>,
        state: PurgeableState,
    ) -> Result<()> {
        let space = self.space(task)?;
        for &p in &pages {
            if let Some(pte) = space.ptes.get_mut(&p) {
                pte.purgeable = state;
            }
        }
        if state == PurgeableState::Empty {
            for p in pages {
                self.discard(task, p)?;
            }
        }
        Ok(())
    }

    pub(crate) fn runs(&mut self, task: Task, va: u64, len: u64) -> Result<Vec<PhysRange>> {
        self.check_range(va, len, "translation")?;
        self.faults.hit(FaultSite::Translate)?;
        let page = self.page;
        let space = self.space(task)?;
        let mut runs: Vec<PhysRange> = Vec::new();
        for (p, off, n) in page_chunks(page, va, len) {
            let pte = space.ptes.get(&p).ok_or(Error::NotMapped {
                what: "simulated task",
                addr: p + off,
            })?;
            let pa = match (pte.wired(), pte.pa) {
                (true, Some(pa)) => pa,
                _ => {
                    return Err(Error::NotReady {
                        what: "translation of unwired pageable memory (prepare it first)",
                        addr: p + off,
                    })
                }
            };
            let r = PhysRange::new(PhysAddr(pa + off), n);
            match runs.last_mut() {
                Some(last) if last.abuts(&r) => last.len += n,
                _ => runs.push(r),
            }
        }
        Ok(runs)
    }
}

/// Reserves the mapping's virtual range in `space` and records its guards: at `req.at`,
/// or anywhere inside a `reserved` range that leaves `guard` bytes on each side. Returns
/// the mapping's start.
fn place_mapping(
    space: &mut AddressSpace,
    req: &MapRequest,
    total: u64,
    reserved: u64,
    guard: u64,
    psize: u64,
) -> Result<u64> {
    let va = match req.at {
        Some(at) => {
            space.va.allocate_range(at.0, total)?;
            at.0
        }
        // The guards are reserved address space with no page-table entries: an access
        // there is not mapped, and the allocator hands them to nobody else.
        None => space.va.allocate(reserved, psize)? + guard,
    };
    if guard > 0 {
        space.guards.insert(va, guard);
    }
    Ok(va)
}

/// Enters a page-table entry for each of `pas` from `va` on, with `req`'s access and
/// cache mode.
fn install_mapping(space: &mut AddressSpace, va: u64, pas: &[u64], req: &MapRequest, psize: u64) {
    let cache = (req.cache != CacheMode::CopyBack).then_some(req.cache);
    for (i, &pa) in pas.iter().enumerate() {
        space.ptes.insert(
            va + i as u64 * psize,
            Pte {
                pa: Some(pa),
                wires: 0,
                always_wired: false,
                writable: !req.read_only,
                cache,
                purgeable: PurgeableState::NonVolatile,
            },
        );
    }
}

impl Inner {
    /// Maps `pieces` into `req.task`; with `guard` bytes (a page multiple) of reserved,
    /// unmapped address space on each side when `guard > 0` (anywhere only).
    pub(crate) fn map(&mut self, pieces: &[MapPiece], req: &MapRequest, guard: u64) -> Result<u64> {
        let psize = self.page.bytes();
        req.check_guard(guard, psize)?;
        let total = MapPiece::total_length(pieces, psize)?;
        self.faults.hit(FaultSite::Map)?;
        let pas = self.resolve_map_pages(pieces)?;
        let reserved = MapPiece::guarded_length(total, guard)?;
        let space = self.space(req.task)?;
        let va = place_mapping(space, req, total, reserved, guard, psize)?;
        install_mapping(space, va, &pas, req, psize);
        space.mappings.insert(va, total);
        for pa in pas {
            *self.shared.entry(pa).or_insert(0) += 1;
        }
        Ok(va)
    }

    /// The physical page behind each page of `pieces`, in order, bringing pageable pages
    /// in; refuses pages that are not RAM or are lent. Done before anything is mapped, so a
    /// failure maps nothing. (No capacity from the total: a bogus length fails at its first
    /// bad page.)
    fn resolve_map_pages(&mut self, pieces: &[MapPiece]) -> Result<Vec<u64>> {
        let psize = self.page.bytes();
        let mut pas = Vec::new();
        for p in pieces {
            for i in 0..p.len / psize {
                let pa = match p.src {
                    MapSource::Virtual(t, va) => {
                        let v = va.0 + i * psize;
                        self.resident(t, v, v)?
                    }
                    MapSource::Physical(pa) => {
                        let a = pa.0 + i * psize;
                        if !self.phys.is_ram(a, psize) {
                            return Err(Error::NotMapped {
                                what: "simulated RAM (only RAM can be mapped)",
                                addr: a,
                            });
                        }
                        a
                    }
                };
                if self.lent.contains_key(&pa) {
                    return Err(lent_busy(pa));
                }
                pas.push(pa);
            }
        }
        Ok(pas)
    }

    pub(crate) fn unmap(&mut self, task: Task, va: u64, len: u64) -> Result<()> {
        let space = self.space(task)?;
        match space.mappings.get(&va) {
            Some(&l) if l == len => {}
            Some(&l) => {
                return Err(Error::WrongSize {
                    free_fn: "unmap_pages",
                    addr: va,
                    allocated: l,
                    given: len,
                })
            }
            None => {
                return Err(Error::NotAllocated {
                    free_fn: "unmap_pages",
                    addr: va,
                })
            }
        }
        if let Some((&p, _)) = space.ptes.range(va..va + len).find(|(_, p)| p.wires > 0) {
            return Err(Error::Busy {
                what: "simulated mapping",
                addr: p,
                why: "a page of the mapping is still wired",
            });
        }
        let pages: Vec<u64> = space.ptes.range(va..va + len).map(|(&v, _)| v).collect();
        let mut pas = Vec::with_capacity(pages.len());
        for v in pages {
            if let Some(pa) = space.ptes.remove(&v).and_then(|p| p.pa) {
                pas.push(pa);
            }
        }
        space.mappings.remove(&va);
        let guard = space.guards.remove(&va).unwrap_or(0);
        space
            .va
            .deallocate(va - guard, len + 2 * guard)
            .map_err(|_| Error::Internal {
                what: "sim mapping VA free",
            })?;
        for pa in pas {
            if let Some(n) = self.shared.get_mut(&pa) {
                *n -= 1;
                if *n == 0 {
                    self.shared.remove(&pa);
                }
            }
        }
        Ok(())
    }

    /// Refuses to destroy `task` while a page of it is wired, lent as a slice, or mapped a
    /// second time by a mapping it does not own; checked before anything changes.
    fn check_destroyable(&mut self, task: Task) -> Result<()> {
        let Inner {
            tasks,
            shared,
            lent,
            ..
        } = self;
        let space = space_of(tasks, task)?;
        if let Some((&p, _)) = space.ptes.iter().find(|(_, p)| p.wires > 0) {
            return Err(Error::Busy {
                what: "simulated task",
                addr: p,
                why: "a page is still wired",
            });
        }
        check_not_lent(space.ptes.iter(), lent)?;
        check_not_mapped_elsewhere(space, shared)
    }

    /// Unmaps `task`'s second mappings, frees its memory and forgets it.
    fn tear_down_task(&mut self, task: Task) -> Result<()> {
        let mappings: Vec<(u64, u64)> = self
            .space(task)?
            .mappings
            .iter()
            .map(|(&v, &l)| (v, l))
            .collect();
        for (v, l) in mappings {
            self.unmap(task, v, l)?;
        }
        let regions: Vec<(u64, u64)> = self
            .space(task)?
            .regions
            .iter()
            .map(|(&v, r)| (v, r.len))
            .collect();
        for (v, l) in regions {
            self.free(task, v, l)?;
        }
        self.tasks.remove(&task);
        Ok(())
    }
}

/// Refuses when memory of `space` is mapped a second time other than by `space`'s own
/// second mappings (which go with it): such memory keeps the whole task alive. `shared`
/// counts the second mappings of each physical page.
fn check_not_mapped_elsewhere(
    space: &AddressSpace,
    shared: &std::collections::HashMap<u64, u32>,
) -> Result<()> {
    let in_own_mapping = |v: u64| {
        space
            .mappings
            .range(..=v)
            .next_back()
            .is_some_and(|(&s, &l)| v < s + l)
    };
    let mut own_refs: std::collections::HashMap<u64, u32> = Default::default();
    for (_, pte) in space.ptes.iter().filter(|(&v, _)| in_own_mapping(v)) {
        if let Some(pa) = pte.pa {
            *own_refs.entry(pa).or_insert(0) += 1;
        }
    }
    if let Some((&p, _)) = space.ptes.iter().find(|(&v, pte)| {
        !in_own_mapping(v)
            && pte.pa.is_some_and(|pa| {
                shared.get(&pa).copied().unwrap_or(0) > own_refs.get(&pa).copied().unwrap_or(0)
            })
    }) {
        return Err(Error::Busy {
            what: "simulated task",
            addr: p,
            why: "a page is mapped a second time (unmap the MemoryMap first)",
        });
    }
    Ok(())
}

impl Machine {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock (a bug in a device model) must not make every
        // later call panic too: the state is still consistent between operations.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The page size.
    pub fn page(&self) -> PageSize {
        self.lock().page
    }

    /// Creates a new task (address space) and returns it.
    pub fn create_task(&self) -> Task {
        let mut g = self.lock();
        g.next_task += 1;
        let t = Task(g.next_task);
        let psize = g.page.bytes();
        g.tasks.insert(t, AddressSpace::new(USER_VA_BASE, psize));
        t
    }

    /// Destroys a task and frees its memory. Refused (`Busy`) while any of its pages is
    /// wired, lent as a slice or mapped a second time (unmap the `MemoryMap` first); the
    /// kernel task cannot be destroyed.
    pub fn destroy_task(&self, task: Task) -> Result<()> {
        if task == Task::KERNEL {
            return Err(Error::BadArgument {
                what: "the kernel task cannot be destroyed",
                value: 0,
            });
        }
        let mut g = self.lock();
        g.check_destroyable(task)?;
        g.tear_down_task(task)
    }

    /// Allocates `len` bytes (a multiple of the page size) of zero-filled virtual memory in
    /// `task`: wired at once, or pageable (a physical page appears on first touch or wire).
    pub fn vm_allocate(&self, task: Task, len: u64, pageable: bool) -> Result<VirtAddr> {
        let req = if pageable {
            PageRequest::PAGEABLE
        } else {
            PageRequest::WIRED
        };
        self.lock().allocate(task, len, &req).map(VirtAddr)
    }

    /// Allocates in `task` under explicit physical constraints.
    pub fn vm_allocate_with(&self, task: Task, len: u64, req: &PageRequest) -> Result<VirtAddr> {
        self.lock().allocate(task, len, req).map(VirtAddr)
    }

    /// Frees what [`vm_allocate`](Self::vm_allocate) returned; refused (`Busy`) while wired.
    pub fn vm_deallocate(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        self.lock().free(task, va.0, len)
    }

    /// Moves every resident, unwired page of pageable memory in `task` to a different
    /// physical page, as compaction would, and returns how many pages moved. Unlike
    /// [`page_out`](Self::page_out) the pages stay resident, and each is guaranteed a new
    /// address. Wired pages, and pages mapped a second time, never move. A failure to take
    /// a new page (out of memory, or injected) stops the sweep; pages moved so far stay
    /// moved, nothing is lost.
    pub fn migrate_pageable(&self, task: Task) -> Result<u64> {
        let mut g = self.lock();
        let psize = g.page.bytes();
        let Inner {
            phys,
            cache,
            faults,
            tasks,
            shared,
            lent,
            ..
        } = &mut *g;
        let space = space_of(tasks, task)?;
        let pageable: Vec<(u64, u64)> = space
            .regions
            .iter()
            .filter(|(_, r)| r.pageable)
            .flat_map(|(&v, r)| (0..r.len / psize).map(move |i| (v + i * psize, r.phys_limit)))
            .collect();
        let mut moved = 0;
        for (v, limit) in pageable {
            let Some(pte) = space.ptes.get_mut(&v) else {
                continue;
            };
            let (Some(old), false) = (pte.pa, pte.wired()) else {
                continue;
            };
            if shared.get(&old).is_some_and(|&n| n > 0) || lent.contains_key(&old) {
                // Mapped a second time: the other mapping pins the page in place.
                continue;
            }
            let new = phys.take(1, false, 0, (0, limit), faults)?[0];
            cache.op(CacheOp::Flush, old, psize, phys);
            let mut buf = vec![0u8; psize as usize];
            phys.dram_read(old, &mut buf);
            phys.dram_write(new, &buf);
            phys.give_back(&[old]);
            pte.pa = Some(new);
            moved += 1;
        }
        Ok(moved)
    }

    /// Pages out every resident, unwired page of pageable memory in `task`, as memory
    /// pressure would: dirty cache lines are written back, the contents go to the task's
    /// swap store, and the physical page returns to the free pool. The next touch, wire or
    /// mapping pages it in again, on whatever physical page the allocator then picks, so a
    /// translation taken before no longer holds (which is why translating unwired pageable
    /// memory is [`Error::NotReady`]). Wired pages, and pages mapped a second time, stay.
    /// Returns how many pages went out.
    pub fn page_out(&self, task: Task) -> Result<u64> {
        let mut g = self.lock();
        let psize = g.page.bytes();
        let Inner {
            phys,
            cache,
            tasks,
            shared,
            lent,
            ..
        } = &mut *g;
        let space = space_of(tasks, task)?;
        let pageable: Vec<u64> = space
            .regions
            .iter()
            .filter(|(_, r)| r.pageable)
            .flat_map(|(&v, r)| (0..r.len / psize).map(move |i| v + i * psize))
            .collect();
        let mut out = 0;
        let mut buf = vec![0u8; psize as usize];
        for v in pageable {
            let Some(pte) = space.ptes.get_mut(&v) else {
                continue;
            };
            let (Some(pa), false) = (pte.pa, pte.wired()) else {
                continue;
            };
            if shared.get(&pa).is_some_and(|&n| n > 0) || lent.contains_key(&pa) {
                continue;
            }
            cache.op(CacheOp::Flush, pa, psize, phys);
            phys.dram_read(pa, &mut buf);
            let contents = buf
                .iter()
                .any(|&b| b != 0)
                .then(|| buf.clone().into_boxed_slice());
            space.swap.insert(v, contents);
            phys.give_back(&[pa]);
            pte.pa = None;
            out += 1;
        }
        Ok(out)
    }

    /// Discards every volatile page of every task, as memory pressure would (the model of
    /// purgeable memory: the system may do this to volatile memory whenever it chooses).
    /// Each discarded page returns to the free pool, reads as zeros from then on and
    /// reports [`PurgeableState::Empty`] until made non-volatile. Pages that are wired,
    /// mapped a second time or lent as a slice are kept. Returns how many pages were
    /// discarded.
    pub fn purge_volatile(&self) -> u64 {
        let mut g = self.lock();
        let mut victims = Vec::new();
        for (&t, space) in &g.tasks {
            for (&v, pte) in &space.ptes {
                let pinned = pte.pa.is_some_and(|pa| {
                    g.shared.get(&pa).is_some_and(|&c| c > 0) || g.lent.contains_key(&pa)
                });
                if pte.purgeable == PurgeableState::Volatile && !pte.wired() && !pinned {
                    victims.push((t, v));
                }
            }
        }
        let mut out = 0;
        for (t, v) in victims {
            if g.discard(t, v).is_ok() {
                if let Some(pte) = g.tasks.get_mut(&t).and_then(|s| s.ptes.get_mut(&v)) {
                    pte.purgeable = PurgeableState::Empty;
                }
                out += 1;
            }
        }
        out
    }

    /// The live tasks, the kernel first.
    pub fn tasks(&self) -> Vec<Task> {
        self.lock().tasks.keys().copied().collect()
    }

    /// Every entry of `task`'s page table in virtual address order: which physical page
    /// each virtual page is on (if resident), its wirings, protection and state. For
    /// displays and for tests that check where memory landed.
    pub fn page_table(&self, task: Task) -> Result<Vec<PageEntry>> {
        let mut g = self.lock();
        let Inner { tasks, lent, .. } = &mut *g;
        let space = space_of(tasks, task)?;
        let in_mapping = |v: u64| {
            space
                .mappings
                .range(..=v)
                .next_back()
                .is_some_and(|(&s, &l)| v < s + l)
        };
        Ok(space
            .ptes
            .iter()
            .map(|(&v, pte)| PageEntry {
                va: VirtAddr(v),
                pa: pte.pa.map(PhysAddr),
                wires: pte.wires,
                always_wired: pte.always_wired,
                writable: pte.writable,
                swapped: space.swap.contains_key(&v),
                mapping: in_mapping(v),
                cache: pte.cache,
                purgeable: pte.purgeable,
                lent: pte.pa.is_some_and(|pa| lent.contains_key(&pa)),
            })
            .collect())
    }

    /// Marks `[va, va + len)` of `task` read-only (or writable again). Wiring for write and
    /// CPU stores then fail with `NotWritable`.
    pub fn protect(&self, task: Task, va: VirtAddr, len: u64, writable: bool) -> Result<()> {
        let mut g = self.lock();
        g.check_range(va.0, len, "protect")?;
        let page = g.page;
        let Inner { tasks, lent, .. } = &mut *g;
        let space = space_of(tasks, task)?;
        for (p, off, _) in page_chunks(page, va.0, len) {
            match space.ptes.get(&p) {
                None => {
                    return Err(Error::NotMapped {
                        what: "simulated task",
                        addr: p + off,
                    })
                }
                Some(pte) if pte.pa.is_some_and(|pa| lent.contains_key(&pa)) => {
                    return Err(lent_busy(p + off))
                }
                Some(_) => {}
            }
        }
        for (p, _, _) in page_chunks(page, va.0, len) {
            if let Some(pte) = space.ptes.get_mut(&p) {
                pte.writable = writable;
            }
        }
        Ok(())
    }

    /// Each page of `[va, va + len)` in `task` with its physical page (`None`: not
    /// resident), without touching anything.
    pub fn mappings(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
    ) -> Result<Vec<(VirtAddr, Option<PhysAddr>)>> {
        let mut g = self.lock();
        g.check_range(va.0, len, "mappings")?;
        let page = g.page;
        let space = g.space(task)?;
        page_chunks(page, va.0, len)
            .map(|(p, off, _)| {
                space
                    .ptes
                    .get(&p)
                    .map(|pte| (VirtAddr(p), pte.pa.map(PhysAddr)))
                    .ok_or(Error::NotMapped {
                        what: "simulated task",
                        addr: p + off,
                    })
            })
            .collect()
    }

    /// A device's read of DRAM (no cache, no IOMMU): what DMA sees on a non-coherent
    /// machine.
    pub fn device_read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<()> {
        let g = self.lock();
        g.phys
            .check_ram(pa.0, buf.len() as u64, "simulated RAM (device read)")?;
        g.phys.dram_read(pa.0, buf);
        Ok(())
    }

    /// A device's write of DRAM. On a non-coherent machine CPU lines that still hold the
    /// range keep their old bytes until invalidated.
    pub fn device_write(&self, pa: PhysAddr, data: &[u8]) -> Result<()> {
        let mut g = self.lock();
        g.phys
            .check_ram(pa.0, data.len() as u64, "simulated RAM (device write)")?;
        g.phys.dram_write(pa.0, data);
        Ok(())
    }

    /// Whether a device access of `len` bytes at `pa` reaches RAM, without moving data.
    pub(crate) fn device_check(&self, pa: PhysAddr, len: u64) -> Result<()> {
        self.lock()
            .phys
            .check_ram(pa.0, len, "simulated RAM (device access)")
    }

    /// Sets how the CPU caches `[pa, pa + len)` of RAM (the range is flushed first).
    pub fn set_cache_mode(&self, pa: PhysAddr, len: u64, mode: CacheMode) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroSize {
                what: "cache mode range",
            });
        }
        let mut g = self.lock();
        g.phys.check_ram(pa.0, len, "simulated RAM (cache mode)")?;
        let Inner { cache, phys, .. } = &mut *g;
        cache.set_mode(pa.0, len, mode, phys);
        Ok(())
    }

    /// The cache mode in force at `pa`.
    pub fn cache_mode(&self, pa: PhysAddr) -> CacheMode {
        self.lock().cache.mode(pa.0)
    }

    /// Makes call number `nth` (1-based, from the machine's start) at `site` fail.
    pub fn inject(&self, site: FaultSite, nth: u64) {
        self.lock().faults.fail(site, nth);
    }

    /// Makes the next call at `site` fail.
    pub fn inject_next(&self, site: FaultSite) {
        self.lock().faults.fail_next(site);
    }

    /// Forgets planned failures that have not happened.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        let g = self.lock();
        SimStats {
            ram_pages: g.phys.total_pages(),
            free_pages: g.phys.free_pages(),
            tasks: g.tasks.len() as u64,
            allocations: g.tasks.values().map(|s| s.regions.len() as u64).sum(),
            kernel_allocations: g
                .tasks
                .get(&Task::KERNEL)
                .map_or(0, |s| s.regions.len() as u64),
            wired_pages: g
                .tasks
                .values()
                .map(|s| s.ptes.values().filter(|p| p.wires > 0).count() as u64)
                .sum(),
            swapped_pages: g.tasks.values().map(|s| s.swap.len() as u64).sum(),
            dram_pages: g.phys.backed_pages(),
            cached_lines: g.cache.lines(),
            site_calls: FaultSite::ALL.map(|s| g.faults.calls(s)),
        }
    }

    /// The physical layout.
    pub fn layout(&self) -> Layout {
        // Device names first, without the machine's lock: a device model may be inside an
        // access that is waiting for that lock (a DMA), holding its own.
        let windows: Vec<MmioWindow> = self
            .windows
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mmio = windows
            .iter()
            .map(|w| {
                let name = w
                    .device
                    .lock()
                    .map(|d| d.name().to_string())
                    .unwrap_or_else(|_| "poisoned".into());
                (w.base, w.len, name)
            })
            .collect();
        let g = self.lock();
        Layout {
            page_size: g.page,
            ram: g.phys.regions().to_vec(),
            mmio,
            coherent: g.cache.coherent(),
            seed: self.seed,
            fragmentation: self.fragmentation,
        }
    }

    /// Adds an MMIO window at `[base, base + len)` routed to `device`. It must not overlap
    /// RAM or another window.
    pub fn add_mmio(&self, base: PhysAddr, len: u64, device: SharedDevice) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroSize {
                what: "MMIO window",
            });
        }
        base.0.checked_add(len).ok_or(Error::Overflow {
            what: "MMIO window",
            start: base.0,
            len,
        })?;
        let g = self.lock();
        let overlaps_ram = g
            .phys
            .regions()
            .iter()
            .any(|r| base.0 < r.end() && base.0 + len > r.base);
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        if overlaps_ram || windows.iter().any(|w| w.overlaps(base.0, len)) {
            return Err(Error::RangeBusy {
                what: "physical address space (MMIO window)",
                start: base.0,
                len,
            });
        }
        windows.push(MmioWindow {
            base: base.0,
            len,
            device,
        });
        Ok(())
    }

    fn window(&self, pa: u64, len: u64) -> Option<MmioWindow> {
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        windows.iter().find(|w| w.contains(pa, len)).cloned()
    }
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("layout", &self.layout())
            .field("stats", &self.stats())
            .finish()
    }
}

impl PhysicalMemory for Machine {
    fn page_size(&self) -> PageSize {
        self.page()
    }

    fn allocate_pages(&self, len: u64, req: &PageRequest) -> Result<VirtAddr> {
        self.lock().allocate(Task::KERNEL, len, req).map(VirtAddr)
    }

    fn free_pages(&self, va: VirtAddr, len: u64) -> Result<()> {
        self.lock().free(Task::KERNEL, va.0, len)
    }

    /// Any task of the machine (see [`Machine::create_task`]).
    fn allocate_pages_in(&self, task: Task, len: u64, req: &PageRequest) -> Result<VirtAddr> {
        self.lock().allocate(task, len, req).map(VirtAddr)
    }

    fn free_pages_in(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        self.lock().free(task, va.0, len)
    }

    fn read_phys(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<()> {
        let mut g = self.lock();
        g.phys.check_ram(pa.0, buf.len() as u64, "simulated RAM")?;
        g.check_lent_phys(pa.0, buf.len() as u64, false)?;
        let Inner { cache, phys, .. } = &mut *g;
        cache.read(pa.0, buf, phys, None);
        Ok(())
    }

    fn write_phys(&self, pa: PhysAddr, data: &[u8]) -> Result<()> {
        let mut g = self.lock();
        g.phys.check_ram(pa.0, data.len() as u64, "simulated RAM")?;
        g.check_lent_phys(pa.0, data.len() as u64, true)?;
        let Inner { cache, phys, .. } = &mut *g;
        cache.write(pa.0, data, phys, None);
        Ok(())
    }

    /// Answered from the byte ranges `wire` was called with in the kernel task.
    fn kernel_range_wired(&self, va: VirtAddr, len: u64) -> Result<bool> {
        let mut g = self.lock();
        g.check_range(va.0, len, "kernel_range_wired")?;
        Ok(g.space(Task::KERNEL)?.bytes_wired(va.0, len))
    }
}

impl Wiring for Machine {
    fn wire(&self, task: Task, va: VirtAddr, len: u64, writable: bool) -> Result<()> {
        self.lock().wire(task, va.0, len, writable)
    }

    fn unwire(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        self.lock().unwire(task, va.0, len)
    }

    fn physical_runs(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        run: &mut dyn FnMut(PhysRange),
    ) -> Result<()> {
        // Collected under the lock, reported after it, so the callback may call back in.
        let runs = self.lock().runs(task, va.0, len)?;
        runs.into_iter().for_each(run);
        Ok(())
    }
}

impl CpuAccess for Machine {
    /// A load through `task`'s page table. Pageable memory that holds no data (never
    /// written, paged out while all zeros, or purged) reads as zeros without taking a
    /// physical page, as a real VM serves such loads from its shared zero page: reading
    /// untouched memory cannot fail for want of RAM under the allocation's physical limit.
    /// Paged-out contents are paged in (and that can fail, [`Error::NoSuitableMemory`],
    /// when no page is free under the limit; nothing is copied then).
    fn read_virt(&self, task: Task, va: VirtAddr, buf: &mut [u8]) -> Result<()> {
        let mut g = self.lock();
        g.cpu_access(
            task,
            va.0,
            buf.len() as u64,
            false,
            |inner, target, r| match target {
                Some((pa, mode)) => {
                    let Inner { cache, phys, .. } = inner;
                    cache.read(pa, &mut buf[r], phys, mode);
                }
                None => buf[r].fill(0),
            },
        )
    }

    /// A store through `task`'s page table. Every page stored to is brought in first
    /// (a fresh zero-filled page, or its paged-out contents); when one cannot be had under
    /// the allocation's physical limit the store is refused ([`Error::NoSuitableMemory`])
    /// before any byte is written.
    fn write_virt(&self, task: Task, va: VirtAddr, data: &[u8]) -> Result<()> {
        let mut g = self.lock();
        g.cpu_access(task, va.0, data.len() as u64, true, |inner, target, r| {
            // Stores always have a page (cpu_access brings one in for them).
            if let Some((pa, mode)) = target {
                let Inner { cache, phys, .. } = inner;
                cache.write(pa, &data[r], phys, mode);
            }
        })
    }

    /// Lends a *copy* taken through the CPU cache model (simulated RAM is scattered pages
    /// behind the machine's lock, so there is no one host slice to lend); the rules of
    /// the seam hold all the same: stores to the pages are refused while it is lent, and so
    /// are wiring, freeing, mapping and purging them.
    fn direct_slice<'a>(
        &'a self,
        task: Task,
        va: VirtAddr,
        len: u64,
        held: u32,
    ) -> Result<Box<dyn DirectSlice + 'a>> {
        Ok(Box::new(self.lend(task, va, len, held, false)?))
    }

    /// As [`direct_slice`](Self::direct_slice); the copy is written back (through the
    /// cache, as CPU stores) when the lend ends.
    fn direct_slice_mut<'a>(
        &'a self,
        task: Task,
        va: VirtAddr,
        len: u64,
        held: u32,
    ) -> Result<Box<dyn DirectSliceMut + 'a>> {
        Ok(Box::new(self.lend(task, va, len, held, true)?))
    }
}

/// A lend of simulated memory: a copy of its bytes, written back at the end of a mutable
/// lend.
struct SimLend<'a> {
    machine: &'a Machine,
    task: Task,
    va: u64,
    /// The physical pages lent.
    pages: Vec<u64>,
    data: Vec<u8>,
    exclusive: bool,
}

impl DirectSlice for SimLend<'_> {
    fn bytes(&self) -> &[u8] {
        &self.data
    }
}

impl DirectSliceMut for SimLend<'_> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl Drop for SimLend<'_> {
    fn drop(&mut self) {
        let mut g = self.machine.lock();
        for pa in &self.pages {
            if let Some(l) = g.lent.get_mut(pa) {
                if self.exclusive {
                    l.exclusive = false;
                } else {
                    l.shared = l.shared.saturating_sub(1);
                }
                if !l.exclusive && l.shared == 0 {
                    g.lent.remove(pa);
                }
            }
        }
        if self.exclusive {
            let data = &self.data;
            // The pages stayed resident, mapped and writable while lent (freeing, paging
            // out, moving and protecting them are refused meanwhile), so the write-back
            // cannot fail.
            let _ = g.cpu_access(
                self.task,
                self.va,
                data.len() as u64,
                true,
                |inner, target, r| {
                    if let Some((pa, mode)) = target {
                        let Inner { cache, phys, .. } = inner;
                        cache.write(pa, &data[r], phys, mode);
                    }
                },
            );
        }
    }
}

/// One page of a direct slice: its virtual page, the physical page behind it, the slice's
/// offset in it and bytes in it, and the mapping's cache mode.
struct LendPage {
    page: u64,
    pa: u64,
    off: u64,
    len: u64,
    mode: Option<CacheMode>,
}

impl Inner {
    /// The pages of `len` bytes at `va` in `task`, each brought in (made resident).
    fn lend_targets(&mut self, task: Task, va: u64, len: u64) -> Result<Vec<LendPage>> {
        let mut targets = Vec::new();
        for (p, off, k) in page_chunks(self.page, va, len) {
            let pa = self.resident(task, p, p + off)?;
            let mode = self.space(task)?.ptes.get(&p).and_then(|pte| pte.cache);
            targets.push(LendPage {
                page: p,
                pa,
                off,
                len: k,
                mode,
            });
        }
        Ok(targets)
    }

    /// Refuses to lend any of `targets` that is wired beyond the caller's own `held` wires,
    /// mapped a second time, or lent in a way this lend conflicts with.
    fn check_lendable(
        &mut self,
        task: Task,
        targets: &[LendPage],
        held: u32,
        exclusive: bool,
    ) -> Result<()> {
        for t in targets {
            let (p, pa, off) = (t.page, t.pa, t.off);
            let wired = self
                .space(task)?
                .ptes
                .get(&p)
                .is_some_and(|pte| pte.wires > held);
            let why = if wired {
                Some("it is wired (a device may use it): complete it first")
            } else if self.shared.get(&pa).is_some_and(|&c| c > 0) {
                Some("it is mapped a second time: unmap the MemoryMap first")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::Busy {
                    what: "simulated memory (direct slice)",
                    addr: p + off,
                    why,
                });
            }
            if let Some(l) = self.lent.get(&pa) {
                if l.exclusive || (exclusive && l.shared > 0) {
                    return Err(lent_busy(p + off));
                }
            }
        }
        Ok(())
    }

    /// Copies `targets` (`n` bytes in all) into a buffer, as the CPU reads them, and records
    /// each page as lent; the buffer and the physical pages.
    fn lend_pages(
        &mut self,
        targets: Vec<LendPage>,
        n: usize,
        exclusive: bool,
    ) -> (Vec<u8>, Vec<u64>) {
        let mut data = vec![0u8; n];
        let mut done = 0usize;
        let mut pages = Vec::with_capacity(targets.len());
        for t in targets {
            let Inner { cache, phys, .. } = self;
            cache.read(
                t.pa + t.off,
                &mut data[done..done + t.len as usize],
                phys,
                t.mode,
            );
            done += t.len as usize;
            let l = self.lent.entry(t.pa).or_default();
            if exclusive {
                l.exclusive = true;
            } else {
                l.shared += 1;
            }
            pages.push(t.pa);
        }
        (data, pages)
    }
}

impl Machine {
    fn lend(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        held: u32,
        exclusive: bool,
    ) -> Result<SimLend<'_>> {
        let mut g = self.lock();
        g.check_range(va.0, len, "direct slice")?;
        let n = usize::try_from(len).map_err(|_| Error::Overflow {
            what: "direct slice",
            start: va.0,
            len,
        })?;
        g.check_pages(task, va.0, len, exclusive)?;
        // Bring every page in, then check them all, then copy: a refusal lends nothing.
        let targets = g.lend_targets(task, va.0, len)?;
        g.check_lendable(task, &targets, held, exclusive)?;
        let (data, pages) = g.lend_pages(targets, n, exclusive);
        Ok(SimLend {
            machine: self,
            task,
            va: va.0,
            pages,
            data,
            exclusive,
        })
    }
}

impl CacheOps for Machine {
    fn dma_coherent(&self) -> bool {
        self.coherent
    }

    fn cache_virt(&self, op: CacheOp, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        let mut g = self.lock();
        g.check_range(va.0, len, "cache operation")?;
        let page = g.page;
        let mut targets = Vec::new();
        {
            let space = g.space(task)?;
            for (p, off, n) in page_chunks(page, va.0, len) {
                let pte = space.ptes.get(&p).ok_or(Error::NotMapped {
                    what: "simulated task",
                    addr: p + off,
                })?;
                if let Some(pa) = pte.pa {
                    targets.push((pa + off, n));
                }
            }
        }
        let Inner { cache, phys, .. } = &mut *g;
        for (pa, n) in targets {
            cache.op(op, pa, n, phys);
        }
        Ok(())
    }

    fn cache_phys(&self, op: CacheOp, pa: PhysAddr, len: u64) -> Result<()> {
        let mut g = self.lock();
        g.phys
            .check_ram(pa.0, len, "simulated RAM (cache operation)")?;
        let Inner { cache, phys, .. } = &mut *g;
        cache.op(op, pa.0, len, phys);
        Ok(())
    }
}

impl VirtualMemory for Machine {
    fn map_pages(&self, pieces: &[MapPiece], req: &MapRequest) -> Result<VirtAddr> {
        self.lock().map(pieces, req, 0).map(VirtAddr)
    }

    /// Guards are reserved virtual address space without page-table entries: a CPU access
    /// there is [`Error::NotMapped`], a fixed mapping there is [`Error::RangeBusy`].
    fn map_pages_guarded(
        &self,
        pieces: &[MapPiece],
        req: &MapRequest,
        guard: u64,
    ) -> Result<VirtAddr> {
        self.lock().map(pieces, req, guard).map(VirtAddr)
    }

    fn unmap_pages(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        self.lock().unmap(task, va.0, len)
    }

    /// Sets the cache mode of each page's mapping (what [`Machine::page_table`] reports as
    /// `cache`): CPU loads and stores through those addresses then follow `mode` in the
    /// cache model, whatever the physical range's own mode. The pages' lines are flushed
    /// first.
    fn set_cache_mode(&self, task: Task, va: VirtAddr, len: u64, mode: CacheMode) -> Result<()> {
        let mut g = self.lock();
        g.check_range(va.0, len, "set_cache_mode")?;
        let page = g.page;
        if page.offset(va.0) != 0 || page.offset(len) != 0 {
            return Err(Error::NotAligned {
                what: "set_cache_mode range",
                value: if page.offset(va.0) != 0 { va.0 } else { len },
                align: page.bytes(),
            });
        }
        let mut targets = Vec::new();
        {
            let space = g.space(task)?;
            for (p, _, _) in page_chunks(page, va.0, len) {
                match space.ptes.get(&p).and_then(|pte| pte.pa) {
                    Some(pa) => targets.push((p, pa)),
                    None => {
                        return Err(Error::NotMapped {
                            what: "set_cache_mode (no physical page behind this address)",
                            addr: p,
                        })
                    }
                }
            }
        }
        let Inner {
            cache, phys, tasks, ..
        } = &mut *g;
        let space = space_of(tasks, task)?;
        for (p, pa) in targets {
            cache.op(CacheOp::Flush, pa, page.bytes(), phys);
            if let Some(pte) = space.ptes.get_mut(&p) {
                pte.cache = Some(mode);
            }
        }
        Ok(())
    }

    /// Per page; [`Machine::purge_volatile`] is when the machine discards volatile pages.
    /// Refused ([`Error::Busy`]) for making wired, second-mapped or lent pages volatile or
    /// empty; second mappings have no state of their own ([`Error::Unsupported`]).
    fn set_purgeable(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        req: PurgeableRequest,
    ) -> Result<PurgeableState> {
        self.lock().set_purgeable(task, va.0, len, req)
    }
}

impl Mmio for Machine {
    fn mmio_read(&self, pa: PhysAddr, width: Width) -> Result<u64> {
        let n = width.bytes();
        width.check_aligned(pa, "MMIO read")?;
        if let Some(w) = self.window(pa.0, n) {
            let mut d = w.device.lock().unwrap_or_else(|p| p.into_inner());
            return Ok(d.read(pa.0 - w.base, width) & width.max_value());
        }
        let mut b = [0u8; 8];
        self.read_phys(pa, &mut b[..n as usize])
            .map_err(|_| Error::NotMapped {
                what: "physical I/O space",
                addr: pa.0,
            })?;
        Ok(u64::from_le_bytes(b))
    }

    fn mmio_write(&self, pa: PhysAddr, width: Width, value: u64) -> Result<()> {
        let n = width.bytes();
        width.check_aligned(pa, "MMIO write")?;
        let value = value & width.max_value();
        if let Some(w) = self.window(pa.0, n) {
            let mut d = w.device.lock().unwrap_or_else(|p| p.into_inner());
            d.write(pa.0 - w.base, width, value);
            return Ok(());
        }
        self.write_phys(pa, &value.to_le_bytes()[..n as usize])
            .map_err(|_| Error::NotMapped {
                what: "physical I/O space",
                addr: pa.0,
            })
    }
}

impl Inner {
    pub(crate) fn new(
        page: PageSize,
        phys: PhysicalPool,
        coherent: bool,
        faults: FaultPlan,
    ) -> Self {
        let mut tasks = BTreeMap::new();
        tasks.insert(
            Task::KERNEL,
            AddressSpace::new(KERNEL_VA_BASE, page.bytes()),
        );
        Inner {
            page,
            phys,
            cache: Cache::new(coherent),
            faults,
            tasks,
            next_task: 0,
            shared: std::collections::HashMap::new(),
            lent: std::collections::HashMap::new(),
        }
    }
}
