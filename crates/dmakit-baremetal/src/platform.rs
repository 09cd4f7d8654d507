//! [`BareMetal`]: the platform seam for an x86-64 kernel with a direct map.

use crate::frames::{FrameAllocator, Placement};
use crate::paging::{Attrs, PageTables, TableMemory, PAGE, PAT_VALUE};
use crate::ranges::Ranges;
use crate::sys::direct::DirectMap;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use dmakit::platform::{
    CacheMode, CacheOp, CacheOps, CpuAccess, MapPiece, MapRequest, MapSource, Mmio, PageRequest,
    PhysicalMemory, Task, VirtualMemory, Width, Wiring,
};
use dmakit::{Error, PageSize, PhysAddr, PhysRange, Result, VirtAddr};

/// The default mapping area: 1 TiB at the bottom of the upper (kernel) half.
pub const DEFAULT_AREA: (u64, u64) = (0xffff_8000_0000_0000, 1 << 40);

/// How to build a [`BareMetal`]: the direct map's offset, the machine's RAM, what of it
/// the allocator may hand out, and where second mappings go.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BareMetalConfig {
    /// Virtual = physical + `phys_offset` in the direct map (0 under UEFI's identity map).
    pub phys_offset: u64,
    /// Every RAM range the kernel uses (usable, its own image and stack, firmware data it
    /// keeps): mapped write-back in the direct map, reachable by CPU accesses.
    pub ram: Vec<PhysRange>,
    /// The ranges the page allocator owns (free memory of the firmware's map); each must
    /// lie inside `ram`.
    pub usable: Vec<PhysRange>,
    /// The virtual range `(start, len)` for second mappings and scattered allocations.
    pub area: (u64, u64),
    /// How pages of requests that need not be contiguous are picked.
    pub placement: Placement,
}

impl BareMetalConfig {
    /// A configuration with a direct map at `phys_offset`, no memory yet, the
    /// [`DEFAULT_AREA`] and packed placement.
    pub fn new(phys_offset: u64) -> Self {
        BareMetalConfig {
            phys_offset,
            ram: Vec::new(),
            usable: Vec::new(),
            area: DEFAULT_AREA,
            placement: Placement::Packed,
        }
    }

    /// Adds a RAM range (mapped and reachable, not allocated from).
    pub fn ram(mut self, start: u64, len: u64) -> Self {
        self.ram.push(PhysRange::new(PhysAddr(start), len));
        self
    }

    /// Adds a range the allocator owns (it is RAM too).
    pub fn usable(mut self, start: u64, len: u64) -> Self {
        self.usable.push(PhysRange::new(PhysAddr(start), len));
        self
    }

    /// Sets the mapping area.
    pub fn area(mut self, start: u64, len: u64) -> Self {
        self.area = (start, len);
        self
    }

    /// Sets the placement of scattered requests.
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }
}

/// What the platform has handed out, for leak checks (equal before and after a test).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Usage {
    /// Live allocations from `allocate_pages`.
    pub allocations: u64,
    /// Their bytes.
    pub allocated_bytes: u64,
    /// Live second mappings (`map_pages`).
    pub mappings: u64,
    /// Explicit wirings alive (`wire` calls not yet unwired).
    pub wirings: u64,
    /// Pages with an explicit wiring.
    pub wired_pages: u64,
    /// Free bytes in the page allocator (page-table frames come from it too).
    pub free_bytes: u64,
    /// Frames holding page tables.
    pub table_frames: u64,
}

#[derive(Clone, Debug)]
struct Alloc {
    len: u64,
    runs: Vec<PhysRange>,
    pageable: bool,
    in_area: bool,
}

#[derive(Clone, Debug)]
struct Mapping {
    len: u64,
    guard: u64,
    pages: Vec<u64>,
    read_only: bool,
}

/// One page of the kernel's address space, as the platform knows it.
#[derive(Clone, Copy, Debug)]
struct Page {
    pa: u64,
    writable: bool,
    /// Wired for its whole life (allocated wired, or kernel memory in the direct map).
    always_wired: bool,
}

struct Inner {
    frames: FrameAllocator,
    tables: PageTables,
    area: Ranges,
    allocs: BTreeMap<u64, Alloc>,
    maps: BTreeMap<u64, Mapping>,
    wires: BTreeMap<u64, u32>,
    wired_ranges: BTreeMap<(u64, u64), u32>,
    shared: BTreeMap<u64, u32>,
}

/// Page-table frames from the allocator, entries through the direct map.
struct Tables<'a> {
    frames: &'a mut FrameAllocator,
    direct: &'a DirectMap,
}

impl TableMemory for Tables<'_> {
    fn read(&self, pa: u64) -> u64 {
        // Table frames are RAM the allocator owns, so the load cannot fail; a failure
        // reads as an empty entry.
        self.direct.load(pa, Width::W64).unwrap_or(0)
    }

    fn write(&mut self, pa: u64, value: u64) {
        let r = self.direct.store(pa, Width::W64, value);
        debug_assert!(r.is_ok(), "page table store at {pa:#x}: {r:?}");
    }

    fn alloc_table(&mut self) -> Result<u64> {
        let runs = self.frames.take(PAGE, true, PAGE, u64::MAX)?;
        let pa = runs[0].addr.0;
        if let Err(e) = self.direct.zero(pa, PAGE) {
            let _ = self.frames.give_back(&runs);
            return Err(e);
        }
        Ok(pa)
    }
}

/// The platform seam over a kernel's direct map, its own page tables and a physical page
/// allocator (see the crate documentation for an example).
///
/// * [`PhysicalMemory`]: zero-filled pages from the top of physical memory down, honouring
///   a request's physical limit, contiguity and alignment. A contiguous request (or one
///   that happens to get one run) is addressed through the direct map; pages of a
///   scattered one are mapped side by side in the mapping area. Pageable requests are
///   served from the area too and count as not wired until wired.
/// * [`Wiring`]: every page is resident, so wiring moves nothing; it is still counted per
///   page (unwire of an unwired page is an error, memory wired by someone is not freed),
///   and [`physical_runs`](Wiring::physical_runs) of pageable memory that is not wired is
///   [`Error::NotReady`], as the seam's contract asks.
/// * [`CpuAccess`]: through the direct map after translating each page; addresses the
///   platform does not know are [`Error::NotMapped`], never a fault.
/// * [`CacheOps`]: DMA is coherent on x86; explicit operations `clflushopt` (or
///   `clflush`) each line. An invalidate writes back as well (x86 has no discard of
///   lines outside ring-0 `invd`, which would drop everyone's).
/// * [`Mmio`]: volatile loads and stores of device memory registered with
///   [`add_device_memory`](Self::add_device_memory) (mapped uncached) or of RAM.
/// * [`VirtualMemory`]: mappings in the area with the asked cache type (through the page
///   attribute table), guard pages, cache-type changes in place. Only the kernel task.
pub struct BareMetal {
    direct: DirectMap,
    page: PageSize,
    area: (u64, u64),
    active: core::sync::atomic::AtomicBool,
    inner: spin::Mutex<Inner>,
}

impl core::fmt::Debug for BareMetal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BareMetal")
            .field("phys_offset", &self.direct.offset())
            .field("area", &self.area)
            .field("usage", &self.usage())
            .finish()
    }
}

fn only_kernel(task: Task) -> Result<()> {
    if task == Task::KERNEL {
        Ok(())
    } else {
        Err(Error::Unsupported {
            what: "tasks other than the kernel's on this platform",
        })
    }
}

fn page_trim(r: &PhysRange) -> Option<(u64, u64)> {
    let s = r.addr.0.checked_add(PAGE - 1)? & !(PAGE - 1);
    let e = r.addr.0.checked_add(r.len)? & !(PAGE - 1);
    (s < e).then_some((s, e))
}

/// Checks the mapping area (2 MiB aligned, not empty, no overflow) and the direct map's
/// offset (2 MiB aligned); returns the area as `(start, end)`.
fn check_layout(config: &BareMetalConfig) -> Result<(u64, u64)> {
    let (area_start, area_len) = config.area;
    let area_end = dmakit::addr::checked_end(area_start, area_len, "mapping area")?;
    if area_start % crate::paging::LARGE != 0 || area_len == 0 {
        return Err(Error::NotAligned {
            what: "mapping area (2 MiB aligned, not empty)",
            value: area_start,
            align: crate::paging::LARGE,
        });
    }
    if !config.phys_offset.is_multiple_of(crate::paging::LARGE) {
        return Err(Error::NotAligned {
            what: "direct map offset",
            value: config.phys_offset,
            align: crate::paging::LARGE,
        });
    }
    Ok((area_start, area_end))
}

/// The whole pages of every `ram` and `usable` range of `config`, as one set.
fn ram_pages(config: &BareMetalConfig) -> Ranges {
    let mut ram = Ranges::new(PAGE);
    for r in config.ram.iter().chain(config.usable.iter()) {
        if let Some((s, e)) = page_trim(r) {
            // Overlaps between the lists are expected (usable memory is RAM too).
            let mut at = s;
            while at < e {
                let next = ram.run_of(at).map_or(at + PAGE, |(_, re)| re.min(e));
                if ram.run_of(at).is_none() {
                    ram.insert(at, at + PAGE);
                }
                at = next;
            }
        }
    }
    ram
}

/// Registers each run of `ram` as RAM of the direct map at `phys_offset`, refusing a run
/// whose direct-map addresses overflow or overlap the mapping area `(start, end)`.
///
/// # Safety
///
/// Every run of `ram` is RAM, reachable at physical + `phys_offset` for as long as
/// `direct` is used.
unsafe fn add_direct_ram(
    direct: &mut DirectMap,
    ram: &Ranges,
    phys_offset: u64,
    (area_start, area_end): (u64, u64),
) -> Result<()> {
    for (s, e) in ram.iter() {
        let end_va = phys_offset.checked_add(e).ok_or(Error::Overflow {
            what: "direct map",
            start: s,
            len: e - s,
        })?;
        if phys_offset.saturating_add(s) < area_end && area_start < end_va {
            return Err(Error::BadArgument {
                what: "the mapping area overlaps the direct map",
                value: area_start,
            });
        }
        // SAFETY: this function's caller vouches that the runs of `ram` are RAM reachable
        // at the offset.
        unsafe { direct.add_ram(s, e) };
    }
    Ok(())
}

/// New page tables (their frames from `frames`) mapping every run of `ram` write-back at
/// `phys_offset`, except page 0.
fn direct_map_tables(
    frames: &mut FrameAllocator,
    direct: &DirectMap,
    ram: &Ranges,
    phys_offset: u64,
) -> Result<PageTables> {
    let mut tm = Tables { frames, direct };
    let mut tables = PageTables::new(&mut tm)?;
    for (s, e) in ram.iter() {
        // Page 0 stays unmapped, so a null access faults.
        let s = s.max(PAGE);
        if s < e {
            tables.map(&mut tm, phys_offset + s, s, e - s, Attrs::RAM, true)?;
        }
    }
    Ok(tables)
}

impl BareMetal {
    /// Builds the platform: the page allocator over `config.usable`, and page tables with
    /// the direct map of `config.ram` (write-back, 2 MiB pages where they fit) and an empty
    /// mapping area. Nothing is switched: the tables become live with
    /// [`activate`](Self::activate) (until then they are built through the map that is
    /// live, which must already map the RAM at the same offset, as UEFI's identity map
    /// does for offset 0).
    ///
    /// # Safety
    ///
    /// Every `ram` range is RAM, reachable at physical + `phys_offset` now and for as long
    /// as the platform is used; the `usable` ranges are free memory that nothing but this
    /// platform will use from now on; the kernel hands drivers only addresses of memory
    /// they may access (their own allocations, buffers it gives them).
    pub unsafe fn new(config: BareMetalConfig) -> Result<BareMetal> {
        let page = PageSize::SIZE_4K;
        let (area_start, area_end) = check_layout(&config)?;
        let mut direct = DirectMap::new(config.phys_offset, PAGE);
        let ram = ram_pages(&config);
        let mut frames = FrameAllocator::new(page);
        frames.set_placement(config.placement);
        for r in &config.usable {
            frames.add(r.addr.0, r.len)?;
        }
        // SAFETY: the caller vouches that `ram` ranges are RAM reachable at the offset,
        // which is what `add_direct_ram` asks.
        unsafe {
            add_direct_ram(
                &mut direct,
                &ram,
                config.phys_offset,
                (area_start, area_end),
            )
        }?;
        let tables = direct_map_tables(&mut frames, &direct, &ram, config.phys_offset)?;
        let mut area = Ranges::new(PAGE);
        area.insert(area_start, area_end);
        Ok(BareMetal {
            direct,
            page,
            area: (area_start, area_end),
            active: core::sync::atomic::AtomicBool::new(false),
            inner: spin::Mutex::new(Inner {
                frames,
                tables,
                area,
                allocs: BTreeMap::new(),
                maps: BTreeMap::new(),
                wires: BTreeMap::new(),
                wired_ranges: BTreeMap::new(),
                shared: BTreeMap::new(),
            }),
        })
    }

    /// Maps `[pa, pa + len)` (rounded out to pages) uncached in the direct map and lets
    /// [`Mmio`] and CPU accesses reach it: a BAR, the ECAM window, a local APIC. Pages
    /// already registered are skipped; a range that overlaps RAM is refused.
    ///
    /// # Safety
    ///
    /// The range is device memory (not RAM), and loads and stores there by the drivers the
    /// kernel runs are what the kernel means to allow.
    pub unsafe fn add_device_memory(&self, pa: u64, len: u64) -> Result<()> {
        let end = dmakit::addr::checked_end(pa, len, "device memory")?;
        let s = pa & !(PAGE - 1);
        let e = end.checked_add(PAGE - 1).ok_or(Error::Overflow {
            what: "device memory",
            start: pa,
            len,
        })? & !(PAGE - 1);
        let mut inner = self.inner.lock();
        let Inner { frames, tables, .. } = &mut *inner;
        let mut at = s;
        while at < e {
            if self.direct.is_device(at, PAGE) {
                at += PAGE;
                continue;
            }
            if self.direct.is_ram(at, PAGE) {
                return Err(Error::BadArgument {
                    what: "device memory overlapping RAM",
                    value: at,
                });
            }
            let mut run_end = at + PAGE;
            while run_end < e
                && !self.direct.is_device(run_end, PAGE)
                && !self.direct.is_ram(run_end, PAGE)
            {
                run_end += PAGE;
            }
            let va = self
                .direct
                .offset()
                .checked_add(at)
                .ok_or(Error::Overflow {
                    what: "device memory in the direct map",
                    start: at,
                    len: run_end - at,
                })?;
            let mut tm = Tables {
                frames,
                direct: &self.direct,
            };
            tables.map(&mut tm, va, at, run_end - at, Attrs::DEVICE, true)?;
            // SAFETY: the caller vouches the range is device memory; it is mapped uncached
            // at the offset just above.
            unsafe { self.direct.add_device(at, run_end) };
            at = run_end;
        }
        Ok(())
    }

    /// Loads CR3 with the platform's tables (after programming the page attribute table
    /// for their cache types). From now on unmaps and cache-type changes flush the TLB.
    ///
    /// # Safety
    ///
    /// Ring 0, boot services exited (or the firmware otherwise no longer relies on its own
    /// tables), and everything the kernel uses from now on is mapped by the tables: its
    /// code, data and stack lie in `ram` ranges (or are added as device memory), and so do
    /// the descriptor tables the CPU reads (GDT, IDT).
    pub unsafe fn activate(&self) {
        let root = self.inner.lock().tables.root();
        // SAFETY: the caller's guarantees are those of `sys::activate`.
        unsafe { crate::sys::activate(root, PAT_VALUE) };
        self.active
            .store(true, core::sync::atomic::Ordering::SeqCst);
    }

    /// Changes how the pages of later requests that need not be contiguous are picked
    /// (tests run a driver once on packed and once on scattered memory).
    pub fn set_placement(&self, placement: Placement) {
        self.inner.lock().frames.set_placement(placement);
    }

    /// The physical address of the top-level page table.
    pub fn root_table(&self) -> u64 {
        self.inner.lock().tables.root()
    }

    /// The direct map's offset (virtual = physical + offset).
    pub fn phys_offset(&self) -> u64 {
        self.direct.offset()
    }

    /// The translation the platform's page tables hold for `va` (physical address, cache
    /// type, writable), for checks.
    pub fn translate(&self, va: VirtAddr) -> Option<crate::paging::Translation> {
        let mut inner = self.inner.lock();
        let Inner { frames, tables, .. } = &mut *inner;
        let tm = Tables {
            frames,
            direct: &self.direct,
        };
        tables.translate(&tm, va.0)
    }

    /// What is handed out now.
    pub fn usage(&self) -> Usage {
        let inner = self.inner.lock();
        Usage {
            allocations: inner.allocs.len() as u64,
            allocated_bytes: inner.allocs.values().map(|a| a.len).sum(),
            mappings: inner.maps.len() as u64,
            wirings: inner.wired_ranges.values().map(|&n| u64::from(n)).sum(),
            wired_pages: inner.wires.len() as u64,
            free_bytes: inner.frames.free_bytes(),
            table_frames: inner.tables.table_frames(),
        }
    }

    fn flush_tlb(&self) {
        if self.active.load(core::sync::atomic::Ordering::SeqCst) {
            // SAFETY: the tables are live only after `activate`, whose caller guaranteed
            // ring 0; reloading CR3 changes no mapping.
            unsafe { crate::sys::flush_tlb() };
        }
    }
}

/// `(page, offset in page, bytes)` for each page touching `[va, va + len)`.
fn chunks(va: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let end = va.saturating_add(len);
    let mut at = va;
    core::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let page = at & !(PAGE - 1);
        let off = at - page;
        let n = (PAGE - off).min(end - at);
        at += n;
        Some((page, off, n))
    })
}

/// The physical address `off` bytes into a list of runs.
fn pa_in_runs(runs: &[PhysRange], mut off: u64) -> Option<u64> {
    for r in runs {
        if off < r.len {
            return Some(r.addr.0 + off);
        }
        off -= r.len;
    }
    None
}

impl BareMetal {
    /// The page of the kernel's address space holding `va`.
    fn page_of(&self, inner: &Inner, va: u64) -> Result<Page> {
        let pva = va & !(PAGE - 1);
        let not_mapped = Error::NotMapped {
            what: "kernel address space",
            addr: va,
        };
        if pva >= self.area.0 && pva < self.area.1 {
            if let Some((&s, a)) = inner.allocs.range(..=pva).next_back() {
                if a.in_area && pva - s < a.len {
                    return Ok(Page {
                        pa: pa_in_runs(&a.runs, pva - s).ok_or(not_mapped)?,
                        writable: true,
                        always_wired: !a.pageable,
                    });
                }
            }
            if let Some((&s, m)) = inner.maps.range(..=pva).next_back() {
                if pva - s < m.len {
                    let pa = *m.pages.get(((pva - s) / PAGE) as usize).ok_or(not_mapped)?;
                    return Ok(Page {
                        pa,
                        writable: !m.read_only,
                        always_wired: false,
                    });
                }
            }
            return Err(not_mapped);
        }
        let pa = pva
            .checked_sub(self.direct.offset())
            .ok_or(not_mapped.clone())?;
        if self.direct.is_ram(pa, PAGE) || self.direct.is_device(pa, PAGE) {
            Ok(Page {
                pa,
                writable: true,
                always_wired: true,
            })
        } else {
            Err(not_mapped)
        }
    }

    /// Every page of `[va, va + len)`, resolved before anything is touched:
    /// `(page va, page, offset, bytes)`.
    fn resolve(
        &self,
        inner: &Inner,
        va: u64,
        len: u64,
        writable: bool,
        what: &'static str,
    ) -> Result<Vec<(u64, Page, u64, u64)>> {
        dmakit::addr::checked_end(va, len, what)?;
        let mut out = Vec::new();
        for (p, off, n) in chunks(va, len) {
            let page = self.page_of(inner, p + off)?;
            if writable && !page.writable {
                return Err(Error::NotWritable {
                    what: "kernel mapping",
                    addr: p + off,
                });
            }
            out.push((p, page, off, n));
        }
        Ok(out)
    }

    fn map(&self, pieces: &[MapPiece], req: &MapRequest, guard: u64) -> Result<u64> {
        only_kernel(req.task)?;
        req.check_guard(guard, PAGE)?;
        let total = MapPiece::total_length(pieces, PAGE)?;
        let reserved = MapPiece::guarded_length(total, guard)?;
        let mut inner = self.inner.lock();
        let pas = self.piece_pages(&inner, pieces)?;
        let va = match req.at {
            Some(at) => self.reserve_fixed(&mut inner, at.0, total)?,
            None => {
                let free = inner.area.bytes();
                let base = inner
                    .area
                    .take_lowest(reserved, PAGE)
                    .ok_or(Error::NoSpace {
                        what: "mapping area",
                        requested: reserved,
                        align: PAGE,
                        free,
                    })?;
                base + guard
            }
        };
        let attrs = Attrs {
            writable: !req.read_only,
            cache: req.cache,
        };
        self.map_each_page(&mut inner, va, &pas, attrs, (va - guard, reserved))?;
        for &pa in &pas {
            *inner.shared.entry(pa).or_insert(0) += 1;
        }
        inner.maps.insert(
            va,
            Mapping {
                len: total,
                guard,
                pages: pas,
                read_only: req.read_only,
            },
        );
        Ok(va)
    }

    /// The physical page of each page of `pieces`, in order, every one checked to be
    /// kernel memory (virtual sources) or RAM or registered device memory (physical ones).
    fn piece_pages(&self, inner: &Inner, pieces: &[MapPiece]) -> Result<Vec<u64>> {
        let mut pas = Vec::new();
        for p in pieces {
            let mut i = 0;
            while i < p.len {
                pas.push(self.piece_page(inner, p, i)?);
                i += PAGE;
            }
        }
        Ok(pas)
    }

    /// The physical page `i` bytes into the piece `p`.
    fn piece_page(&self, inner: &Inner, p: &MapPiece, i: u64) -> Result<u64> {
        match p.src {
            MapSource::Virtual(t, va) => {
                only_kernel(t)?;
                let v = va.0.checked_add(i).ok_or(Error::Overflow {
                    what: "map piece",
                    start: va.0,
                    len: p.len,
                })?;
                Ok(self.page_of(inner, v)?.pa)
            }
            MapSource::Physical(pa) => {
                let a = pa.0.checked_add(i).ok_or(Error::Overflow {
                    what: "map piece",
                    start: pa.0,
                    len: p.len,
                })?;
                if !self.direct.is_ram(a, PAGE) && !self.direct.is_device(a, PAGE) {
                    return Err(Error::NotMapped {
                        what: "physical memory (neither RAM nor registered device memory)",
                        addr: a,
                    });
                }
                Ok(a)
            }
        }
    }

    /// Takes `[at, at + total)` out of the free mapping area (a mapping at a fixed address).
    fn reserve_fixed(&self, inner: &mut Inner, at: u64, total: u64) -> Result<u64> {
        let end = dmakit::addr::checked_end(at, total, "mapping")?;
        if !at.is_multiple_of(PAGE) {
            return Err(Error::NotAligned {
                what: "mapping address",
                value: at,
                align: PAGE,
            });
        }
        if at < self.area.0 || end > self.area.1 {
            return Err(Error::BadArgument {
                what: "fixed mapping address outside the mapping area",
                value: at,
            });
        }
        if !inner.area.remove(at, end) {
            return Err(Error::RangeBusy {
                what: "mapping area",
                start: at,
                len: total,
            });
        }
        Ok(at)
    }

    /// Maps `pas` page by page from `va`. On failure unmaps the pages already mapped and
    /// returns `reserved` (`(start, len)` in the area) to the free area.
    fn map_each_page(
        &self,
        inner: &mut Inner,
        va: u64,
        pas: &[u64],
        attrs: Attrs,
        (reserved_start, reserved_len): (u64, u64),
    ) -> Result<()> {
        let Inner {
            frames,
            tables,
            area,
            ..
        } = inner;
        let mut tm = Tables {
            frames,
            direct: &self.direct,
        };
        for (i, &pa) in pas.iter().enumerate() {
            let v = va + i as u64 * PAGE;
            if let Err(e) = tables.map(&mut tm, v, pa, PAGE, attrs, false) {
                if i > 0 {
                    let _ = tables.unmap(&mut tm, va, i as u64 * PAGE);
                }
                area.insert(reserved_start, reserved_start + reserved_len);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl BareMetal {
    /// Takes the physical pages of an allocation and zeroes them; nothing is kept taken
    /// when zeroing fails.
    fn take_zeroed(
        &self,
        inner: &mut Inner,
        len: u64,
        req: &PageRequest,
        align: u64,
    ) -> Result<Vec<PhysRange>> {
        let phys_align = if req.contiguous { align } else { PAGE };
        let runs = inner.frames.take_above(
            len,
            req.contiguous,
            phys_align,
            (req.phys_min, req.phys_limit),
        )?;
        for r in &runs {
            if let Err(e) = self.direct.zero(r.addr.0, r.len) {
                let _ = inner.frames.give_back(&runs);
                return Err(e);
            }
        }
        Ok(runs)
    }

    /// The direct-map address of an allocation that got one run, is not pageable and is
    /// aligned there as asked; `None` when it must be mapped in the area instead.
    fn direct_address(&self, runs: &[PhysRange], req: &PageRequest, align: u64) -> Option<u64> {
        match runs {
            [one] if !req.pageable => self
                .direct
                .offset()
                .checked_add(one.addr.0)
                .filter(|va| va % align == 0),
            _ => None,
        }
    }

    /// Maps `runs` side by side at a new place of the mapping area. On failure the runs
    /// mapped so far are unmapped and the place returned to the area (the runs themselves
    /// stay taken: the caller gives them back).
    fn map_runs_in_area(
        &self,
        inner: &mut Inner,
        runs: &[PhysRange],
        len: u64,
        align: u64,
    ) -> Result<u64> {
        let free = inner.area.bytes();
        let Some(va) = inner.area.take_lowest(len, align) else {
            return Err(Error::NoSpace {
                what: "mapping area",
                requested: len,
                align,
                free,
            });
        };
        let Inner { frames, tables, .. } = &mut *inner;
        let mut tm = Tables {
            frames,
            direct: &self.direct,
        };
        let mut at = va;
        let mut failed = None;
        for r in runs {
            if let Err(e) = tables.map(&mut tm, at, r.addr.0, r.len, Attrs::RAM, false) {
                failed = Some(e);
                break;
            }
            at += r.len;
        }
        if let Some(e) = failed {
            if at > va {
                let _ = tables.unmap(&mut tm, va, at - va);
            }
            inner.area.insert(va, va + len);
            return Err(e);
        }
        Ok(va)
    }
}

impl PhysicalMemory for BareMetal {
    fn page_size(&self) -> PageSize {
        self.page
    }

    fn allocate_pages(&self, len: u64, req: &PageRequest) -> Result<VirtAddr> {
        let align = req.validate(len, self.page)?;
        let mut inner = self.inner.lock();
        let runs = self.take_zeroed(&mut inner, len, req, align)?;
        let (va, in_area) = match self.direct_address(&runs, req, align) {
            Some(va) => (va, false),
            None => match self.map_runs_in_area(&mut inner, &runs, len, align) {
                Ok(va) => (va, true),
                Err(e) => {
                    let _ = inner.frames.give_back(&runs);
                    return Err(e);
                }
            },
        };
        inner.allocs.insert(
            va,
            Alloc {
                len,
                runs,
                pageable: req.pageable,
                in_area,
            },
        );
        Ok(VirtAddr(va))
    }

    fn free_pages(&self, va: VirtAddr, len: u64) -> Result<()> {
        let mut inner = self.inner.lock();
        let found = inner.allocs.get(&va.0).map(|a| a.len);
        same_size("free_pages", va.0, found, len)?;
        unwired(
            &inner,
            va.0,
            len,
            "kernel memory",
            "a page is still wired (a device may reach it)",
        )?;
        let a = inner.allocs.get(&va.0).ok_or(Error::Internal {
            what: "allocation vanished under the lock",
        })?;
        for r in &a.runs {
            if let Some((&p, _)) = inner.shared.range(r.addr.0..r.addr.0 + r.len).next() {
                return Err(Error::Busy {
                    what: "kernel memory",
                    addr: p,
                    why: "a page is mapped a second time (unmap the MemoryMap first)",
                });
            }
        }
        let a = inner.allocs.remove(&va.0).ok_or(Error::Internal {
            what: "allocation vanished under the lock",
        })?;
        if a.in_area {
            let Inner {
                frames,
                tables,
                area,
                ..
            } = &mut *inner;
            let mut tm = Tables {
                frames,
                direct: &self.direct,
            };
            tables.unmap(&mut tm, va.0, len)?;
            area.insert(va.0, va.0 + len);
            self.flush_tlb();
        }
        inner.frames.give_back(&a.runs)
    }

    fn read_phys(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<()> {
        self.direct.read(pa.0, buf)
    }

    fn write_phys(&self, pa: PhysAddr, data: &[u8]) -> Result<()> {
        self.direct.write(pa.0, data)
    }

    fn kernel_range_wired(&self, va: VirtAddr, len: u64) -> Result<bool> {
        let end = dmakit::addr::checked_end(va.0, len, "wired range query")?;
        if len == 0 {
            return Ok(false);
        }
        let inner = self.inner.lock();
        Ok(inner
            .wired_ranges
            .keys()
            .any(|&(s, l)| s < end && va.0 < s.saturating_add(l)))
    }
}

impl Wiring for BareMetal {
    fn wire(&self, task: Task, va: VirtAddr, len: u64, writable: bool) -> Result<()> {
        only_kernel(task)?;
        let mut inner = self.inner.lock();
        let pages = self.resolve(&inner, va.0, len, writable, "wire")?;
        for (p, ..) in pages {
            *inner.wires.entry(p).or_insert(0) += 1;
        }
        if len != 0 {
            *inner.wired_ranges.entry((va.0, len)).or_insert(0) += 1;
        }
        Ok(())
    }

    fn unwire(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        only_kernel(task)?;
        let mut inner = self.inner.lock();
        let pages = self.resolve(&inner, va.0, len, false, "unwire")?;
        for &(p, _, off, _) in &pages {
            if !inner.wires.contains_key(&p) {
                return Err(Error::BadArgument {
                    what: "unwire of a page that is not wired",
                    value: p + off,
                });
            }
        }
        for (p, ..) in pages {
            if let Some(n) = inner.wires.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    inner.wires.remove(&p);
                }
            }
        }
        if let Some(n) = inner.wired_ranges.get_mut(&(va.0, len)) {
            *n -= 1;
            if *n == 0 {
                inner.wired_ranges.remove(&(va.0, len));
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
        only_kernel(task)?;
        let runs = {
            let inner = self.inner.lock();
            let pages = self.resolve(&inner, va.0, len, false, "translation")?;
            let mut runs: Vec<PhysRange> = Vec::new();
            for (p, page, off, n) in pages {
                if !page.always_wired && !inner.wires.contains_key(&p) {
                    return Err(Error::NotReady {
                        what: "translation of unwired pageable memory (prepare it first)",
                        addr: p + off,
                    });
                }
                let r = PhysRange::new(PhysAddr(page.pa + off), n);
                match runs.last_mut() {
                    Some(last) if last.abuts(&r) => last.len += n,
                    _ => runs.push(r),
                }
            }
            runs
        };
        for r in runs {
            run(r);
        }
        Ok(())
    }
}

impl CpuAccess for BareMetal {
    fn read_virt(&self, task: Task, va: VirtAddr, buf: &mut [u8]) -> Result<()> {
        only_kernel(task)?;
        let pages = {
            let inner = self.inner.lock();
            self.resolve(&inner, va.0, buf.len() as u64, false, "CPU read")?
        };
        let mut done = 0usize;
        for (_, page, off, n) in pages {
            let n = n as usize;
            self.direct.read(page.pa + off, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn write_virt(&self, task: Task, va: VirtAddr, data: &[u8]) -> Result<()> {
        only_kernel(task)?;
        let pages = {
            let inner = self.inner.lock();
            self.resolve(&inner, va.0, data.len() as u64, true, "CPU write")?
        };
        let mut done = 0usize;
        for (_, page, off, n) in pages {
            let n = n as usize;
            self.direct.write(page.pa + off, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

impl CacheOps for BareMetal {
    fn dma_coherent(&self) -> bool {
        true
    }

    fn cache_virt(&self, _op: CacheOp, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        only_kernel(task)?;
        let pages = {
            let inner = self.inner.lock();
            self.resolve(&inner, va.0, len, false, "cache operation")?
        };
        for (_, page, off, n) in pages {
            self.direct.flush(page.pa + off, n)?;
        }
        Ok(())
    }

    fn cache_phys(&self, _op: CacheOp, pa: PhysAddr, len: u64) -> Result<()> {
        self.direct.flush(pa.0, len)
    }
}

impl Mmio for BareMetal {
    fn mmio_read(&self, pa: PhysAddr, width: Width) -> Result<u64> {
        self.direct.load(pa.0, width)
    }

    fn mmio_write(&self, pa: PhysAddr, width: Width, value: u64) -> Result<()> {
        self.direct.store(pa.0, width, value)
    }
}

impl VirtualMemory for BareMetal {
    fn map_pages(&self, pieces: &[MapPiece], req: &MapRequest) -> Result<VirtAddr> {
        self.map(pieces, req, 0).map(VirtAddr)
    }

    fn map_pages_guarded(
        &self,
        pieces: &[MapPiece],
        req: &MapRequest,
        guard: u64,
    ) -> Result<VirtAddr> {
        if let Some(at) = req.at {
            return Err(Error::BadArgument {
                what: "guard pages need placement anywhere, not a fixed address",
                value: at.0,
            });
        }
        self.map(pieces, req, guard).map(VirtAddr)
    }

    fn unmap_pages(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        only_kernel(task)?;
        let mut inner = self.inner.lock();
        let found = inner.maps.get(&va.0).map(|m| m.len);
        same_size("unmap_pages", va.0, found, len)?;
        unwired(
            &inner,
            va.0,
            len,
            "kernel mapping",
            "a page of the mapping is still wired",
        )?;
        let m = inner.maps.remove(&va.0).ok_or(Error::Internal {
            what: "mapping vanished under the lock",
        })?;
        let Inner {
            frames,
            tables,
            area,
            shared,
            ..
        } = &mut *inner;
        let mut tm = Tables {
            frames,
            direct: &self.direct,
        };
        tables.unmap(&mut tm, va.0, len)?;
        self.flush_tlb();
        area.insert(va.0 - m.guard, va.0 + len + m.guard);
        for pa in m.pages {
            if let Some(n) = shared.get_mut(&pa) {
                *n -= 1;
                if *n == 0 {
                    shared.remove(&pa);
                }
            }
        }
        Ok(())
    }

    fn set_cache_mode(&self, task: Task, va: VirtAddr, len: u64, mode: CacheMode) -> Result<()> {
        only_kernel(task)?;
        for (what, v) in [("cache mode address", va.0), ("cache mode length", len)] {
            if v % PAGE != 0 {
                return Err(Error::NotAligned {
                    what,
                    value: v,
                    align: PAGE,
                });
            }
        }
        if len == 0 {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        let pages = self.resolve(&inner, va.0, len, false, "cache mode")?;
        for (_, page, _, _) in &pages {
            self.direct.flush(page.pa, PAGE)?;
        }
        let Inner { frames, tables, .. } = &mut *inner;
        let mut tm = Tables {
            frames,
            direct: &self.direct,
        };
        tables.set_cache(&mut tm, va.0, len, mode)?;
        self.flush_tlb();
        Ok(())
    }
}

/// `found` (the length of what was made at `addr`) must exist and be `len`: else the error
/// `free_fn` owes its caller.
fn same_size(free_fn: &'static str, addr: u64, found: Option<u64>, len: u64) -> Result<()> {
    match found {
        None => Err(Error::NotAllocated { free_fn, addr }),
        Some(allocated) if allocated != len => Err(Error::WrongSize {
            free_fn,
            addr,
            allocated,
            given: len,
        }),
        Some(_) => Ok(()),
    }
}

/// No page of `[va, va + len)` may be wired.
fn unwired(inner: &Inner, va: u64, len: u64, what: &'static str, why: &'static str) -> Result<()> {
    match inner.wires.range(va..va.saturating_add(len)).next() {
        Some((&addr, _)) => Err(Error::Busy { what, addr, why }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::LARGE;
    use std::vec;

    /// A fake machine in host memory: "physical" RAM `[0x20_0000, 0x60_0000)` (the
    /// allocator owns `[0x30_0000, 0x60_0000)`), device memory `[0x60_0000, 0x60_2000)`,
    /// all reached through a direct map onto a host buffer.
    struct Fake {
        _buf: Vec<u8>,
        p: BareMetal,
    }

    const RAM: u64 = 0x20_0000;
    const USABLE: u64 = 0x30_0000;
    const END: u64 = 0x60_0000;

    fn fake(placement: Placement) -> Fake {
        let buf = vec![0xa5u8; (END - RAM + 0x2000 + LARGE) as usize];
        let host = (buf.as_ptr() as u64).next_multiple_of(LARGE);
        let config = BareMetalConfig::new(host - RAM)
            .ram(RAM, USABLE - RAM)
            .usable(USABLE, END - USABLE)
            .placement(placement);
        // SAFETY: the ranges lie in `buf` (rounded up to 2 MiB, with a 2 MiB margin), which
        // the fake keeps alive as long as the platform, and nothing else uses it.
        let p = unsafe { BareMetal::new(config) }.unwrap();
        // SAFETY: two pages after RAM, still inside `buf`: a pretend device.
        unsafe { p.add_device_memory(END, 0x2000) }.unwrap();
        Fake { _buf: buf, p }
    }

    fn runs(p: &BareMetal, va: VirtAddr, len: u64) -> Result<Vec<PhysRange>> {
        dmakit::platform::collect_runs(p, Task::KERNEL, va, len)
    }

    #[test]
    fn allocations_are_zeroed_placed_and_balanced() {
        let f = fake(Placement::Packed);
        let p = &f.p;
        let base = p.usage();
        let va = p.allocate_pages(3 * PAGE, &PageRequest::WIRED).unwrap();
        // The top pages hold the page tables built so far; the allocation comes right below.
        let tables = base.table_frames * PAGE;
        assert_eq!(
            va.0,
            p.phys_offset() + END - tables - 3 * PAGE,
            "from the top, direct map"
        );
        let mut b = vec![1u8; 3 * PAGE as usize];
        p.read_virt(Task::KERNEL, va, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0), "zero-filled");
        let req = PageRequest {
            align: 0x10_000,
            phys_limit: USABLE + 0x7_ffff,
            phys_min: 0,
            contiguous: true,
            pageable: false,
        };
        let low = p.allocate_pages(2 * PAGE, &req).unwrap();
        let r = runs(p, low, 2 * PAGE).unwrap();
        assert_eq!(r.len(), 1);
        assert!(
            r[0].addr.0.is_multiple_of(0x10_000) && r[0].addr.0 + 2 * PAGE - 1 <= req.phys_limit
        );
        assert!(matches!(
            p.allocate_pages(
                PAGE,
                &PageRequest {
                    phys_limit: RAM,
                    ..PageRequest::WIRED
                }
            ),
            Err(Error::NoSuitableMemory { .. })
        ));
        assert!(matches!(
            p.free_pages(va, PAGE),
            Err(Error::WrongSize { .. })
        ));
        assert!(matches!(
            p.free_pages(VirtAddr(va.0 + PAGE), PAGE),
            Err(Error::NotAllocated { .. })
        ));
        p.free_pages(va, 3 * PAGE).unwrap();
        p.free_pages(low, 2 * PAGE).unwrap();
        assert_eq!(p.usage(), base);
    }

    #[test]
    fn scattered_memory_is_mapped_in_the_area_and_reads_back() {
        let f = fake(Placement::Scattered);
        let p = &f.p;
        let base = p.usage();
        let len = 5 * PAGE;
        let va = p.allocate_pages(len, &PageRequest::WIRED).unwrap();
        assert!(
            va.0 >= DEFAULT_AREA.0,
            "scattered pages get one virtual range in the area"
        );
        let r = runs(p, va, len).unwrap();
        assert_eq!(r.len(), 5, "no two pages adjacent: {r:?}");
        for i in 0..5 {
            let t = p.translate(VirtAddr(va.0 + i * PAGE + 7)).unwrap();
            assert_eq!(t.pa, r[i as usize].addr.0 + 7);
        }
        let data: Vec<u8> = (0..len as usize - 100).map(|i| (i % 253) as u8).collect();
        p.write_virt(Task::KERNEL, VirtAddr(va.0 + 50), &data)
            .unwrap();
        let mut back = vec![0u8; data.len()];
        p.read_virt(Task::KERNEL, VirtAddr(va.0 + 50), &mut back)
            .unwrap();
        assert_eq!(back, data);
        let mut one = [0u8; 10];
        p.read_phys(PhysAddr(r[1].addr.0), &mut one).unwrap();
        assert_eq!(&one[..], &data[PAGE as usize - 50..][..10]);
        p.cache_virt(CacheOp::Flush, Task::KERNEL, va, len).unwrap();
        p.free_pages(va, len).unwrap();
        assert!(p.translate(va).is_none(), "unmapped when freed");
        assert!(matches!(
            p.read_virt(Task::KERNEL, va, &mut one),
            Err(Error::NotMapped { .. })
        ));
        assert_eq!(p.usage().allocations, base.allocations);
        assert_eq!(
            p.usage().free_bytes,
            base.free_bytes - (p.usage().table_frames - base.table_frames) * PAGE
        );
    }

    #[test]
    fn wiring_is_counted_and_guards_frees() {
        let f = fake(Placement::Packed);
        let p = &f.p;
        let va = p.allocate_pages(2 * PAGE, &PageRequest::WIRED).unwrap();
        p.wire(Task::KERNEL, VirtAddr(va.0 + 100), 10, true)
            .unwrap();
        p.wire(Task::KERNEL, VirtAddr(va.0 + 100), 10, true)
            .unwrap();
        assert!(p.kernel_range_wired(VirtAddr(va.0 + 105), 1).unwrap());
        assert!(!p.kernel_range_wired(VirtAddr(va.0 + 110), 100).unwrap());
        assert!(matches!(
            p.free_pages(va, 2 * PAGE),
            Err(Error::Busy { .. })
        ));
        p.unwire(Task::KERNEL, VirtAddr(va.0 + 100), 10).unwrap();
        p.unwire(Task::KERNEL, VirtAddr(va.0 + 100), 10).unwrap();
        assert!(matches!(
            p.unwire(Task::KERNEL, va, 10),
            Err(Error::BadArgument { .. })
        ));
        assert_eq!(p.usage().wirings, 0);
        // Pageable memory is resident but not wired: its translation waits for a wiring.
        let pg = p.allocate_pages(PAGE, &PageRequest::PAGEABLE).unwrap();
        assert!(matches!(runs(p, pg, PAGE), Err(Error::NotReady { .. })));
        p.wire(Task::KERNEL, pg, PAGE, false).unwrap();
        assert_eq!(runs(p, pg, PAGE).unwrap().len(), 1);
        p.unwire(Task::KERNEL, pg, PAGE).unwrap();
        p.free_pages(pg, PAGE).unwrap();
        p.free_pages(va, 2 * PAGE).unwrap();
        assert!(matches!(
            p.wire(Task(1), va, 1, false),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            p.wire(Task::KERNEL, VirtAddr(u64::MAX - 2), 10, false),
            Err(Error::Overflow { .. })
        ));
        assert!(matches!(
            p.wire(Task::KERNEL, VirtAddr(p.phys_offset() + 0x1000), 1, false),
            Err(Error::NotMapped { .. })
        ));
        assert_eq!(p.usage().wired_pages, 0);
    }

    #[test]
    fn second_mappings_guards_and_cache_modes() {
        let f = fake(Placement::Packed);
        let p = &f.p;
        let va = p.allocate_pages(2 * PAGE, &PageRequest::WIRED).unwrap();
        p.write_virt(Task::KERNEL, va, b"hello").unwrap();
        let req = MapRequest {
            task: Task::KERNEL,
            at: None,
            read_only: true,
            cache: CacheMode::WriteCombine,
        };
        let pieces = [
            MapPiece {
                src: MapSource::Virtual(Task::KERNEL, va),
                len: 2 * PAGE,
            },
            MapPiece {
                src: MapSource::Physical(PhysAddr(END)),
                len: PAGE,
            },
        ];
        let m = p.map_pages_guarded(&pieces, &req, PAGE).unwrap();
        let t = p.translate(m).unwrap();
        assert_eq!(
            t.attrs,
            Attrs {
                writable: false,
                cache: CacheMode::WriteCombine
            }
        );
        assert!(
            p.translate(VirtAddr(m.0 - PAGE)).is_none()
                && p.translate(VirtAddr(m.0 + 3 * PAGE)).is_none()
        );
        let mut b = [0u8; 5];
        p.read_virt(Task::KERNEL, m, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(matches!(
            p.write_virt(Task::KERNEL, m, b"x"),
            Err(Error::NotWritable { .. })
        ));
        assert!(matches!(
            p.free_pages(va, 2 * PAGE),
            Err(Error::Busy { .. })
        ));
        // The next mapping does not land in the guard.
        let one = [MapPiece {
            src: MapSource::Physical(PhysAddr(END + PAGE)),
            len: PAGE,
        }];
        let n = p
            .map_pages(
                &one,
                &MapRequest {
                    read_only: false,
                    cache: CacheMode::Inhibit,
                    ..req
                },
            )
            .unwrap();
        assert!(n.0 >= m.0 + 4 * PAGE || n.0 + PAGE <= m.0 - PAGE);
        p.set_cache_mode(Task::KERNEL, n, PAGE, CacheMode::WriteThrough)
            .unwrap();
        assert_eq!(p.translate(n).unwrap().attrs.cache, CacheMode::WriteThrough);
        assert!(matches!(
            p.unmap_pages(Task::KERNEL, m, PAGE),
            Err(Error::WrongSize { .. })
        ));
        p.unmap_pages(Task::KERNEL, m, 3 * PAGE).unwrap();
        p.unmap_pages(Task::KERNEL, n, PAGE).unwrap();
        assert!(matches!(
            p.unmap_pages(Task::KERNEL, n, PAGE),
            Err(Error::NotAllocated { .. })
        ));
        // Bad pieces.
        let bad = [MapPiece {
            src: MapSource::Physical(PhysAddr(0x10_0000)),
            len: PAGE,
        }];
        assert!(matches!(
            p.map_pages(&bad, &req),
            Err(Error::NotMapped { .. })
        ));
        let odd = [MapPiece {
            src: MapSource::Virtual(Task::KERNEL, va),
            len: 100,
        }];
        assert!(matches!(
            p.map_pages(&odd, &req),
            Err(Error::NotAligned { .. })
        ));
        assert!(matches!(
            p.map_pages(&[], &req),
            Err(Error::ZeroSize { .. })
        ));
        let fixed = MapRequest {
            at: Some(VirtAddr(0x1000)),
            ..req
        };
        assert!(matches!(
            p.map_pages(&pieces[..1], &fixed),
            Err(Error::BadArgument { .. })
        ));
        assert_eq!(p.usage().mappings, 0);
        p.free_pages(va, 2 * PAGE).unwrap();
    }

    #[test]
    fn mmio_reaches_ram_and_registered_devices_only() {
        let f = fake(Placement::Packed);
        let p = &f.p;
        p.mmio_write(PhysAddr(END + 8), Width::W64, 0x1122_3344_5566_7788)
            .unwrap();
        assert_eq!(
            p.mmio_read(PhysAddr(END + 8), Width::W32).unwrap(),
            0x5566_7788
        );
        assert_eq!(p.mmio_read(PhysAddr(END + 14), Width::W16).unwrap(), 0x1122);
        assert!(matches!(
            p.mmio_read(PhysAddr(END + 2), Width::W32),
            Err(Error::NotAligned { .. })
        ));
        assert!(matches!(
            p.mmio_write(PhysAddr(END), Width::W8, 0x100),
            Err(Error::BadArgument { .. })
        ));
        assert!(matches!(
            p.mmio_read(PhysAddr(END + 0x2000), Width::W8),
            Err(Error::NotMapped { .. })
        ));
        assert!(matches!(
            p.mmio_read(PhysAddr(u64::MAX - 3), Width::W32),
            Err(Error::NotMapped { .. } | Error::Overflow { .. })
        ));
        p.mmio_write(PhysAddr(RAM), Width::W32, 7).unwrap();
        assert_eq!(p.mmio_read(PhysAddr(RAM), Width::W32).unwrap(), 7);
        // SAFETY: the call is refused before anything is mapped (the range is RAM).
        let overlapping = unsafe { p.add_device_memory(RAM, PAGE) };
        assert!(matches!(overlapping, Err(Error::BadArgument { .. })));
        // SAFETY: already registered: nothing changes.
        unsafe { p.add_device_memory(END + 16, 8) }.unwrap();
        let t = p.translate(VirtAddr(p.phys_offset() + END)).unwrap();
        assert_eq!(t.attrs.cache, CacheMode::Inhibit);
        let r = p.translate(VirtAddr(p.phys_offset() + RAM)).unwrap();
        assert!(r.large && r.attrs == Attrs::RAM);
        assert!(p.dma_coherent());
        p.cache_phys(CacheOp::Clean, PhysAddr(RAM + 3), 200)
            .unwrap();
        assert!(matches!(
            p.cache_phys(CacheOp::Clean, PhysAddr(0x1000), 1),
            Err(Error::NotMapped { .. })
        ));
    }

    #[test]
    fn configurations_are_checked() {
        // SAFETY: every configuration here is refused before any memory is touched.
        unsafe {
            assert!(matches!(
                BareMetal::new(BareMetalConfig::new(0x1000)),
                Err(Error::NotAligned { .. })
            ));
            assert!(matches!(
                BareMetal::new(BareMetalConfig::new(0).area(0x1000, 0x1000)),
                Err(Error::NotAligned { .. })
            ));
            assert!(matches!(
                BareMetal::new(BareMetalConfig::new(0).area(!0x1f_ffff, 1 << 30)),
                Err(Error::Overflow { .. })
            ));
            assert!(matches!(
                BareMetal::new(
                    BareMetalConfig::new(0)
                        .ram(0x20_0000, 0x1000)
                        .area(0, 1 << 30)
                ),
                Err(Error::BadArgument { .. })
            ));
        }
    }
}
