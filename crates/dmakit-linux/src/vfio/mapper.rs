//! [`VfioMapper`]: IOKit's IOMapper over a VFIO type1 container.
//!
//! The container's IOMMU translates the device's addresses (IOVAs) to this process's memory.
//! The mapper owns that IO address space:
//!
//! * its allocator is a dmakit [`RangeAllocator`] seeded with the container's **valid IOVA
//!   ranges** (from the type1 info capability chain; under QEMU's VT-d these skip the MSI
//!   window at `0xfee00000`), cut at the device's **address limit**, so a device with a
//!   28-bit DMA mask never gets an IOVA it cannot drive; IOVA 0 is never handed out;
//! * [`iovm_insert_page`](Mapper::iovm_insert_page) takes a *physical* page, as IOKit's
//!   does, finds the virtual page of the host's wired allocation behind it (the host's
//!   reverse map, which needs physical addresses: root) and maps that with
//!   `VFIO_IOMMU_MAP_DMA`; the kernel pins the page and charges it to `RLIMIT_MEMLOCK`;
//! * [`iovm_insert_run`](Mapper::iovm_insert_run) maps a physically contiguous run with one
//!   `VFIO_IOMMU_MAP_DMA` per piece that is contiguous in this process too: a 2 MiB huge page
//!   is one mapping, not 512. The container allows a limited number of mappings (the
//!   `vfio_iommu_type1` module's `dma_entry_limit`, 65535 by default: 256 MiB page by page),
//!   so a large buffer on huge pages maps where page by page it cannot. A `DmaCommand`
//!   inserts each physical segment as one run. Replacing a page inside a run unmaps the run
//!   and maps its other pages again (the kernel does not split a mapping);
//! * [`iovm_free`](Mapper::iovm_free) unmaps with `VFIO_IOMMU_UNMAP_DMA`, which also
//!   invalidates the IOTLB before returning, so a freed IOVA can be reused at once;
//! * [`reserve`](VfioMapper::reserve) takes a fixed IOVA range, refused with a clear error
//!   outside the valid ranges.
//!
//! Teardown: dropping the mapper unmaps whatever is left. [`check_unmapped`](VfioMapper::check_unmapped)
//! proves nothing is left by asking the *kernel* to unmap everything in the container and
//! checking that it found nothing.

use super::container::Container;
use super::info::IommuInfo;
use super::sys;
use crate::caps::{self, MemlockLimit};
use crate::hints::{intern, memlock_why, os};
use crate::host::Host;
use dmakit::alloc::{Placement, RangeAllocator};
use dmakit::mapper::{allocate_placed, undo_map, Access, IovaPlacement, Mapper};
use dmakit::{Error, IoAddr, PageSize, PhysAddr, Result};
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use vfio_bindings::bindings::vfio::{
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
};

const SPACE: &str = "VFIO IO address space";

/// The IO address space of one VFIO container.
pub struct VfioMapper {
    container: Arc<Container>,
    host: Arc<Host>,
    info: IommuInfo,
    page: PageSize,
    limit: u64,
    state: Mutex<State>,
}

struct State {
    space: RangeAllocator,
    /// IOVA → pages of each live allocation (or reservation).
    allocs: BTreeMap<u64, u64>,
    /// First IO page → run of each mapping made in the kernel (one `VFIO_IOMMU_MAP_DMA`).
    mapped: BTreeMap<u64, Run>,
    /// Pages in `mapped`, summed.
    mapped_pages: u64,
}

/// One kernel mapping: `pages` IO pages onto as many physically (and, in this process,
/// virtually) contiguous pages from `pa`.
#[derive(Clone, Copy, Debug)]
struct Run {
    pa: PhysAddr,
    pages: u64,
    access: Access,
}

impl State {
    /// The run holding IO page `iova`, with its first IO page.
    fn run_at(&self, iova: u64, page: u64) -> Option<(u64, Run)> {
        self.mapped
            .range(..=iova)
            .next_back()
            .filter(|(&a, r)| (iova - a) / page < r.pages)
            .map(|(&a, &r)| (a, r))
    }

    /// The runs with a page in `[start, end)` (whole runs, in address order).
    fn runs_in(&self, start: u64, end: u64, page: u64) -> Vec<(u64, Run)> {
        let mut out: Vec<(u64, Run)> = self.run_at(start, page).into_iter().collect();
        out.extend(self.mapped.range(start..end).map(|(&a, &r)| (a, r)));
        out.dedup_by_key(|(a, _)| *a);
        out
    }
}

impl VfioMapper {
    /// The mapper of `container` (which must have a device open), for memory of `host`,
    /// handing out IOVAs at or below `address_limit` (`u64::MAX`: no limit;
    /// `0x0fff_ffff` for a device with 28 address bits). One mapper per container.
    pub fn new(container: Arc<Container>, host: Arc<Host>, address_limit: u64) -> Result<Self> {
        let info = container.info()?;
        let page = PageSize::new(info.min_page_size().max(host.page().bytes()))?;
        let windows = std::fs::read_to_string("/proc/iomem")
            .map(|t| pci_windows(&t))
            .unwrap_or_default();
        let space = seed_space(&info, &windows, address_limit, page)?;
        container.take_mapper()?;
        Ok(VfioMapper {
            container,
            host,
            info,
            page,
            limit: address_limit,
            state: Mutex::new(State {
                space,
                allocs: BTreeMap::new(),
                mapped: BTreeMap::new(),
                mapped_pages: 0,
            }),
        })
    }

    /// What the container's IOMMU reported.
    pub fn info(&self) -> &IommuInfo {
        &self.info
    }

    /// The container whose IO address space it is.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// The highest IOVA this mapper hands out.
    pub fn address_limit(&self) -> u64 {
        self.limit
    }

    /// Free IO address space, in bytes.
    pub fn free_bytes(&self) -> u64 {
        self.lock().space.free_count()
    }

    /// The free IO address ranges, `(first, bytes)`, in address order.
    pub fn free_ranges(&self) -> Vec<(IoAddr, u64)> {
        self.lock()
            .space
            .fragments()
            .map(|(a, last)| (IoAddr(a), last - a + 1))
            .collect()
    }

    /// Pages mapped in the kernel through this mapper now.
    pub fn mapped_pages(&self) -> usize {
        self.lock().mapped_pages as usize
    }

    /// Mappings made in the kernel through this mapper now (each a run of contiguous
    /// pages, one of the container's `dma_entry_limit` mappings).
    pub fn mappings(&self) -> usize {
        self.lock().mapped.len()
    }

    /// Live allocations and reservations.
    pub fn allocations(&self) -> usize {
        self.lock().allocs.len()
    }

    /// Reserves the fixed IO range `[iova, iova + pages)`: it must lie inside one valid IOVA
    /// range and below the address limit. Free it with `iovm_free`.
    pub fn reserve(&self, iova: IoAddr, pages: u64) -> Result<()> {
        let len = self.bytes(pages)?;
        if self.page.offset(iova.0) != 0 {
            return Err(Error::NotAligned {
                what: "VFIO IOVA reservation",
                value: iova.0,
                align: self.page.bytes(),
            });
        }
        let below_limit = iova.0.checked_add(len - 1).is_some_and(|l| l <= self.limit);
        if !self.info.contains(iova.0, len) || !below_limit || iova.0 == 0 {
            return Err(Error::BadArgument {
                what: self.outside_ranges_text(),
                value: iova.0,
            });
        }
        let mut s = self.lock();
        s.space.allocate_range(iova.0, len)?;
        s.allocs.insert(iova.0, pages);
        Ok(())
    }

    /// Maps `[pa, pa + len)` (a wired allocation of the host) at the *same* IO address, so a
    /// device behind VFIO reaches physical addresses as they are: how the physical segments
    /// of a bypassed (or bounced) [`DmaCommand`](dmakit::dma::DmaCommand) reach it. Returns
    /// the first IO page and the page count, which `iovm_free` takes back. Refused like
    /// [`reserve`](Self::reserve) where the physical range is not a valid IOVA range. If
    /// mapping fails and undoing it fails too, the error is [`Error::LeftMapped`]: the range
    /// stays reserved and may still map some pages, so the memory must stay wired until
    /// `iovm_free` of it succeeds.
    pub fn map_identity(&self, pa: PhysAddr, len: u64, access: Access) -> Result<(IoAddr, u64)> {
        let first = self.page.trunc(pa.0);
        let pages = self.page.pages_spanned(pa.0, len).ok_or(Error::Overflow {
            what: "VFIO identity mapping",
            start: pa.0,
            len,
        })?;
        self.reserve(IoAddr(first), pages)?;
        if let Err(e) = self.iovm_insert_run(IoAddr(first), PhysAddr(first), pages, access) {
            return Err(undo_map(
                self,
                IoAddr(first),
                pages,
                "VFIO identity mapping",
                e,
            ));
        }
        Ok((IoAddr(first), pages))
    }

    /// Asks the kernel to unmap every mapping in the container and checks it found none:
    /// the proof, not the assumption, that nothing this process mapped is left for a device
    /// to reach. `Busy` (with the byte count) if the kernel still had mappings, or if this
    /// mapper still holds some.
    pub fn check_unmapped(&self) -> Result<()> {
        let held = self.lock().mapped_pages;
        if held != 0 {
            return Err(Error::Busy {
                what: "VFIO mapper",
                addr: held,
                why: "pages are still mapped through it (free its allocations first)",
            });
        }
        let left = self.unmap_everything()?;
        if left != 0 {
            return Err(Error::Busy {
                what: intern(
                    format!("VFIO container: the kernel still had {left:#x} bytes mapped"),
                    "VFIO container: the kernel still had mappings",
                ),
                addr: left,
                why: "mappings outlived the mapper's record of them (they are unmapped now)",
            });
        }
        Ok(())
    }

    /// `VFIO_IOMMU_UNMAP_DMA` of the whole container; returns the bytes the kernel unmapped.
    fn unmap_everything(&self) -> Result<u64> {
        match sys::unmap_dma(self.container.fd(), 0, 0, VFIO_DMA_UNMAP_FLAG_ALL) {
            Ok(n) => Ok(n),
            // Kernels before 5.12 have no UNMAP_ALL: unmap the valid ranges one by one.
            Err(Errno::INVAL) => {
                let mut n = 0;
                for &(s, e) in &self.info.iova_ranges {
                    let last = self.page.trunc(e.min(u64::MAX - self.page.bytes()) + 1);
                    n += sys::unmap_dma(self.container.fd(), s, last - s, 0)
                        .map_err(|e| os("VFIO_IOMMU_UNMAP_DMA", e, ""))?;
                }
                Ok(n)
            }
            Err(e) => Err(os("VFIO_IOMMU_UNMAP_DMA (all)", e, "")),
        }
    }

    fn outside_ranges_text(&self) -> &'static str {
        let ranges: Vec<String> = self
            .info
            .iova_ranges
            .iter()
            .map(|(s, e)| format!("{s:#x}-{e:#x}"))
            .collect();
        intern(
            format!(
                "IOVA outside the IOMMU's valid ranges ({}) or above the device's address \
                 limit {:#x} (or IOVA 0)",
                ranges.join(", "),
                self.limit
            ),
            "IOVA outside the IOMMU's valid ranges or above the device's address limit",
        )
    }

    fn bytes(&self, pages: u64) -> Result<u64> {
        if pages == 0 {
            return Err(Error::ZeroSize {
                what: "VFIO IOVA allocation",
            });
        }
        pages.checked_mul(self.page.bytes()).ok_or(Error::Overflow {
            what: SPACE,
            start: 0,
            len: pages,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error for a failed `VFIO_IOMMU_MAP_DMA` of `len` bytes.
    fn map_error(&self, iova: u64, va: u64, len: u64, e: Errno) -> Error {
        match e {
            Errno::NOMEM | Errno::AGAIN
                if MemlockLimit::probe().soft.is_some() && !caps::has_ipc_lock() =>
            {
                Error::CannotWire {
                    addr: va,
                    len,
                    why: memlock_why(),
                }
            }
            Errno::EXIST => Error::RangeBusy {
                what: "VFIO IOMMU (the kernel already maps this IOVA)",
                start: iova,
                len,
            },
            Errno::INVAL => Error::BadArgument {
                what: "VFIO_IOMMU_MAP_DMA refused by the kernel (EINVAL): the IOVA is outside \
                       the valid ranges (VfioMapper::info) or not page aligned",
                value: iova,
            },
            Errno::NOSPC => Error::NoResources {
                what: "VFIO DMA mappings (the container's dma_entry_limit)",
                limit: u64::from(self.info.dma_avail.unwrap_or(0)),
            },
            e => os("VFIO_IOMMU_MAP_DMA", e, ""),
        }
    }

    /// Maps the `len` bytes of IO space from `iova` to this process's memory from `va` (no
    /// bookkeeping).
    pub(crate) fn map_raw(&self, iova: u64, va: u64, len: u64, access: Access) -> Result<()> {
        let mut flags = 0;
        if access.read {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if access.write {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        sys::map_dma(self.container.fd(), va, iova, len, flags)
            .map_err(|e| self.map_error(iova, va, len, e))
    }

    /// `VFIO_IOMMU_MAP_DMA` of one page at an IOVA of the caller's choosing, with no check
    /// of our own (tests use it to show that the kernel refuses what `reserve` refuses).
    pub fn map_unchecked(&self, iova: IoAddr, pa: PhysAddr, access: Access) -> Result<()> {
        let va = self.virt_of(pa)?;
        self.map_raw(iova.0, va, self.page.bytes(), access)
    }

    /// The pieces of the physical run `[pa, pa + pages)` that are contiguous in this
    /// process's memory too: `(page index in the run, virtual address, pages)` each, one
    /// kernel mapping apiece (a huge page is one piece).
    fn pieces(&self, pa: PhysAddr, pages: u64) -> Result<Vec<(u64, u64, u64)>> {
        let p = self.page.bytes();
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        for i in 0..pages {
            let va = self.virt_of(PhysAddr(pa.0 + i * p))?;
            match out.last_mut() {
                Some((_, v, n)) if *v + *n * p == va => *n += 1,
                _ => out.push((i, va, 1)),
            }
        }
        Ok(out)
    }

    /// Unmaps the kernel mappings of `runs` (whole runs) and forgets them.
    fn unmap_runs(&self, s: &mut State, runs: &[(u64, Run)]) -> Result<()> {
        let p = self.page.bytes();
        for &(a, r) in runs {
            sys::unmap_dma(self.container.fd(), a, r.pages * p, 0)
                .map_err(|e| os("VFIO_IOMMU_UNMAP_DMA", e, ""))?;
            s.mapped.remove(&a);
            s.mapped_pages -= r.pages;
        }
        Ok(())
    }

    /// Maps `[pa, pa + pages)` at `iova` (unmapped now) and records it, piece by piece; on
    /// an error the pieces mapped by this call are unmapped again.
    fn map_run(
        &self,
        s: &mut State,
        iova: u64,
        pa: PhysAddr,
        pages: u64,
        access: Access,
    ) -> Result<()> {
        let p = self.page.bytes();
        let pieces = self.pieces(pa, pages)?;
        let mut done: Vec<(u64, Run)> = Vec::new();
        for (i, va, n) in pieces {
            let (io, run) = (
                iova + i * p,
                Run {
                    pa: PhysAddr(pa.0 + i * p),
                    pages: n,
                    access,
                },
            );
            if let Err(e) = self.map_raw(io, va, n * p, access) {
                let _ = self.unmap_runs(s, &done);
                return Err(e);
            }
            s.mapped.insert(io, run);
            s.mapped_pages += n;
            done.push((io, run));
        }
        Ok(())
    }

    /// Takes `[start, end)` out of the kernel mappings: the runs touching it are unmapped
    /// whole (the kernel does not split a mapping) and their parts outside it mapped again.
    fn clear(&self, s: &mut State, start: u64, end: u64) -> Result<()> {
        let p = self.page.bytes();
        let runs = s.runs_in(start, end, p);
        if runs.is_empty() {
            return Ok(());
        }
        self.unmap_runs(s, &runs)?;
        for (a, r) in runs {
            let last = a + r.pages * p;
            if a < start {
                self.map_run(s, a, r.pa, (start - a) / p, r.access)?;
            }
            if last > end {
                let skip = (end - a) / p;
                self.map_run(
                    s,
                    end,
                    PhysAddr(r.pa.0 + skip * p),
                    r.pages - skip,
                    r.access,
                )?;
            }
        }
        Ok(())
    }

    /// The virtual address behind physical address `pa` (a page of a wired allocation).
    fn virt_of(&self, pa: PhysAddr) -> Result<u64> {
        let hp = self.host.page();
        let vpage = self
            .host
            .lock()
            .virt_of_frame(hp.trunc(pa.0))
            .ok_or(Error::NotMapped {
                what: "VFIO mapping: physical page not in a wired allocation of this host \
                       (VFIO maps process memory: allocate it through the host, with \
                       physical addresses available)",
                addr: pa.0,
            })?;
        Ok(vpage + hp.offset(pa.0))
    }
}

/// The IO address space of `info`'s valid ranges at or below `limit`, in whole pages,
/// without page 0 (so no device is ever handed IOVA 0).
/// The host bridges' memory windows (`[first, last]`), the top-level `PCI Bus` entries of
/// `/proc/iomem` (all zeros without root: then none). A device's DMA to an address inside
/// one may be routed to another device's BAR (peer to peer) before the IOMMU sees it, so
/// IOVAs stay out of them, as Linux's own DMA API keeps its IOVAs out of them; QEMU's NVMe
/// fails a transfer that names an address in its own BAR.
pub(crate) fn pci_windows(iomem: &str) -> Vec<(u64, u64)> {
    iomem
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let (range, name) = l.split_once(" : ")?;
            if !name.starts_with("PCI Bus") {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a.trim(), 16).ok()?,
                u64::from_str_radix(b.trim(), 16).ok()?,
            );
            (b > a).then_some((a, b))
        })
        .collect()
}

/// `ranges` (inclusive `[first, last]`) without the parts `holes` cover.
pub(crate) fn without(ranges: &[(u64, u64)], holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = ranges.to_vec();
    for &(h0, h1) in holes {
        out = out
            .into_iter()
            .flat_map(|(a, b)| {
                let mut keep = Vec::new();
                if h1 < a || h0 > b {
                    keep.push((a, b));
                } else {
                    if h0 > a {
                        keep.push((a, h0 - 1));
                    }
                    if h1 < b {
                        keep.push((h1 + 1, b));
                    }
                }
                keep
            })
            .collect();
    }
    out
}

fn seed_space(
    info: &IommuInfo,
    windows: &[(u64, u64)],
    limit: u64,
    page: PageSize,
) -> Result<RangeAllocator> {
    let mut space = RangeAllocator::empty(page.bytes())?.with_placement(Placement::GoodFit);
    for (start, last) in without(&info.iova_ranges, windows) {
        let start = page.round_up(start.max(page.bytes())).unwrap_or(u64::MAX);
        let last = last.min(limit).min(u64::MAX - page.bytes());
        let last = page.trunc(last.wrapping_add(1)).wrapping_sub(1);
        if last > start {
            space.deallocate(start, last - start + 1)?;
        }
    }
    if space.free_count() == 0 {
        return Err(Error::NoSpace {
            what: "VFIO IO address space (no valid IOVA range below the address limit)",
            requested: page.bytes(),
            align: page.bytes(),
            free: 0,
        });
    }
    Ok(space)
}

impl Mapper for VfioMapper {
    fn page_size(&self) -> PageSize {
        self.page
    }

    fn iovm_alloc(&self, pages: u64) -> Result<IoAddr> {
        let len = self.bytes(pages)?;
        let mut s = self.lock();
        let iova = s
            .space
            .allocate(len, self.page.bytes())
            .map_err(|e| match e {
                Error::NoSpace {
                    requested,
                    align,
                    free,
                    ..
                } => Error::NoSpace {
                    what: SPACE,
                    requested,
                    align,
                    free,
                },
                e => e,
            })?;
        s.allocs.insert(iova, pages);
        Ok(IoAddr(iova))
    }

    /// The lowest free range of the container's valid IOVA ranges that the device can use.
    fn iovm_alloc_placed(&self, pages: u64, place: &IovaPlacement) -> Result<IoAddr> {
        let len = self.bytes(pages)?;
        let mut s = self.lock();
        let iova = allocate_placed(&mut s.space, len, place)?;
        s.allocs.insert(iova, pages);
        Ok(IoAddr(iova))
    }

    fn iovm_free(&self, iova: IoAddr, pages: u64) -> Result<()> {
        let mut s = self.lock();
        match s.allocs.get(&iova.0) {
            None => {
                return Err(Error::NotAllocated {
                    free_fn: "VfioMapper::iovm_free",
                    addr: iova.0,
                })
            }
            Some(&n) if n != pages => {
                return Err(Error::WrongSize {
                    free_fn: "VfioMapper::iovm_free",
                    addr: iova.0,
                    allocated: n,
                    given: pages,
                })
            }
            Some(_) => {}
        }
        let len = pages * self.page.bytes();
        let end = iova.0 + len;
        let runs: Vec<(u64, Run)> = s.mapped.range(iova.0..end).map(|(&a, &r)| (a, r)).collect();
        if !runs.is_empty() {
            // One call for the allocation (every run lies inside it); unmapping also flushes
            // the IOTLB before the call returns.
            sys::unmap_dma(self.container.fd(), iova.0, len, 0)
                .map_err(|e| os("VFIO_IOMMU_UNMAP_DMA", e, ""))?;
            for (a, r) in runs {
                s.mapped.remove(&a);
                s.mapped_pages -= r.pages;
            }
        }
        s.allocs.remove(&iova.0);
        s.space.deallocate(iova.0, len)
    }

    fn iovm_insert_page(&self, iova: IoAddr, pa: PhysAddr, access: Access) -> Result<()> {
        self.iovm_insert_run(iova, pa, 1, access)
    }

    /// One `VFIO_IOMMU_MAP_DMA` per piece of the run that is contiguous in this process's
    /// memory too (a 2 MiB huge page: one mapping). Pages already mapped are replaced, as
    /// IOKit's insert overwrites: their kernel mappings are unmapped whole and the parts
    /// outside the run mapped again.
    fn iovm_insert_run(
        &self,
        iova: IoAddr,
        pa: PhysAddr,
        pages: u64,
        access: Access,
    ) -> Result<()> {
        let p = self.page.bytes();
        let len = dmakit::mapper::check_run(
            "VFIO insert_page (IO and physical addresses must be page aligned)",
            p,
            iova,
            pa,
            pages,
        )?;
        if len == 0 {
            return Ok(());
        }
        let mut s = self.lock();
        let inside = s
            .allocs
            .range(..=iova.0)
            .next_back()
            .is_some_and(|(&a, &n)| iova.0 - a < n * p && n * p - (iova.0 - a) >= len);
        if !inside {
            return Err(Error::NotAllocated {
                free_fn: "VfioMapper::iovm_insert_page (IOVA not inside an allocation, or the \
                          run passes its end)",
                addr: iova.0,
            });
        }
        self.clear(&mut s, iova.0, iova.0 + len)?;
        self.map_run(&mut s, iova.0, pa, pages, access)
    }

    fn translate(&self, iova: IoAddr) -> Result<(PhysAddr, Access)> {
        let p = self.page.bytes();
        let s = self.lock();
        let (a, r) = s
            .run_at(self.page.trunc(iova.0), p)
            .ok_or(Error::NotMapped {
                what: SPACE,
                addr: iova.0,
            })?;
        Ok((PhysAddr(r.pa.0 + (iova.0 - a)), r.access))
    }
}

impl Drop for VfioMapper {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if !s.mapped.is_empty() {
            // Unmapping is the safe direction: the IOMMU then blocks the device.
            let _ = self.unmap_everything();
        }
        self.container.release_mapper();
    }
}

impl std::fmt::Debug for VfioMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioMapper")
            .field("page", &self.page)
            .field("limit", &self.limit)
            .field("iova_ranges", &self.info.iova_ranges)
            .field("mapped_pages", &self.mapped_pages())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vtd() -> IommuInfo {
        IommuInfo {
            page_sizes: 0x4020_1000,
            iova_ranges: vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)],
            dma_avail: Some(65535),
        }
    }

    #[test]
    fn iovas_stay_out_of_the_host_bridges_windows() {
        let iomem = "00000000-00000fff : Reserved\n\
                     00001000-0009fbff : System RAM\n\
                     c0000000-febfffff : PCI Bus 0000:00\n\
                     \x20 fea10000-fea13fff : 0000:00:04.0\n\
                     fec00000-fec003ff : IOAPIC 0\n\
                     800000000-fffffffff : PCI Bus 0000:00\n\
                     00000000-00000000 : PCI Bus 0000:01\n";
        let w = pci_windows(iomem);
        assert_eq!(
            w,
            vec![(0xc000_0000, 0xfebf_ffff), (0x8_0000_0000, 0xf_ffff_ffff)]
        );
        let page = PageSize::new(0x1000).unwrap();
        let s = seed_space(&vtd(), &w, u64::MAX, page).unwrap();
        let frags: Vec<(u64, u64)> = s.fragments().collect();
        assert_eq!(
            frags,
            vec![
                (0x1000, 0xbfff_ffff),
                (0xfec0_0000, 0xfedf_ffff),
                (0xfef0_0000, 0x7_ffff_ffff),
                (0x10_0000_0000, 0x7f_ffff_ffff)
            ]
        );
        assert_eq!(without(&[(0, 10)], &[(0, 10)]), vec![]);
        assert_eq!(
            without(&[(0, 10)], &[(3, 4), (8, 20)]),
            vec![(0, 2), (5, 7)]
        );
    }

    #[test]
    fn the_space_is_the_valid_ranges_without_page_0_cut_at_the_limit() {
        let page = PageSize::new(0x1000).unwrap();
        let s = seed_space(&vtd(), &[], u64::MAX, page).unwrap();
        // (start, inclusive end), as RangeAllocator::fragments reports them.
        let frags: Vec<(u64, u64)> = s.fragments().collect();
        assert_eq!(
            frags,
            vec![(0x1000, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]
        );
        let s = seed_space(&vtd(), &[], 0x0fff_ffff, page).unwrap();
        assert_eq!(
            s.fragments().collect::<Vec<_>>(),
            vec![(0x1000, 0x0fff_ffff)]
        );
        // A limit that is not one below a page boundary is rounded down to whole pages.
        let s = seed_space(&vtd(), &[], 0x1_2345, page).unwrap();
        assert_eq!(s.fragments().collect::<Vec<_>>(), vec![(0x1000, 0x1_1fff)]);
        assert!(matches!(
            seed_space(&vtd(), &[], 0xfff, page),
            Err(Error::NoSpace { .. })
        ));
    }

    #[test]
    fn allocations_stay_in_the_ranges_and_below_the_limit() {
        let page = PageSize::new(0x1000).unwrap();
        for limit in [u64::MAX, 0xffff_ffff, 0x0fff_ffff] {
            let mut s = seed_space(&vtd(), &[], limit, page).unwrap();
            for n in 1..200u64 {
                let len = (n % 17 + 1) * 0x1000;
                let a = s.allocate(len, 0x1000).unwrap();
                assert!(
                    a != 0 && a + len - 1 <= limit,
                    "{a:#x}+{len:#x} vs {limit:#x}"
                );
                assert!(vtd().contains(a, len), "{a:#x}+{len:#x} in the MSI hole");
            }
        }
    }
}
