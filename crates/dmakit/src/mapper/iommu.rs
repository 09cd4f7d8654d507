//! [`IommuMapper`]: a [`Mapper`](super::Mapper) over IOMMU hardware, with a flush queue so
//! freed IO addresses are never reused before the IOTLB forgets them.

use super::iova_shard::{align_of, class_of, Freed, Large, Live, Shard, SHARDS, UNCACHED};
use super::placement::{allocate_placed, IovaPlacement};
use super::Mapper;
use crate::alloc::magazine::Depot;
use crate::alloc::{Placement, RangeAllocator};
use crate::sync::{lock_home, Mutex, Padded, ShardGuard, ShardLock};
use crate::{Error, IoAddr, PageSize, PhysAddr, Result};
use alloc_crate::boxed::Box;
use alloc_crate::vec::Vec;

/// Read and write permission of an IO page (IOKit's kIODMAMapReadAccess /
/// kIODMAMapWriteAccess, from the device's point of view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// The device may read the page.
    pub read: bool,
    /// The device may write the page.
    pub write: bool,
}

impl Access {
    /// Device reads only (memory → device, Direction::Out).
    pub const READ: Access = Access {
        read: true,
        write: false,
    };
    /// Device writes only (device → memory, Direction::In).
    pub const WRITE: Access = Access {
        read: false,
        write: true,
    };
    /// Both.
    pub const READ_WRITE: Access = Access {
        read: true,
        write: true,
    };

    /// Whether `self` allows everything `needed` asks.
    pub const fn allows(self, needed: Access) -> bool {
        (self.read || !needed.read) && (self.write || !needed.write)
    }
}

/// What an IOMMU's hardware must do for [`IommuMapper`].
///
/// A kernel implements it over its IOMMU's page tables and invalidation queue; this one
/// is a table in memory that counts invalidations:
///
/// ```
/// use dmakit::mapper::{Access, IommuHardware, IommuMapper, Mapper};
/// use dmakit::{IoAddr, PageSize, PhysAddr};
/// use std::collections::BTreeMap;
/// use std::sync::Mutex;
///
/// #[derive(Default)]
/// struct Table {
///     entries: Mutex<BTreeMap<u64, (PhysAddr, Access)>>,
///     invalidations: Mutex<u64>,
/// }
///
/// impl IommuHardware for Table {
///     fn page_size(&self) -> PageSize {
///         PageSize::SIZE_4K
///     }
///     fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> dmakit::Result<()> {
///         let mut t = self.entries.lock().unwrap();
///         match entry {
///             Some(e) => t.insert(iova.0, e),
///             None => t.remove(&iova.0),
///         };
///         Ok(())
///     }
///     fn invalidate(&self, _iova: IoAddr, _len: u64) -> dmakit::Result<()> {
///         *self.invalidations.lock().unwrap() += 1; // the IOTLB flush goes here
///         Ok(())
///     }
/// }
///
/// let mapper = IommuMapper::new(Table::default(), 0x10_0000, 0x100_0000)?;
/// let iova = mapper.iovm_alloc(1)?;
/// mapper.iovm_insert_page(iova, PhysAddr(0x7_000), Access::READ_WRITE)?;
/// assert_eq!(mapper.hardware().entries.lock().unwrap().len(), 1);
/// mapper.iovm_free(iova, 1)?; // strict: entry cleared, IOTLB invalidated before it returns
/// assert!(mapper.hardware().entries.lock().unwrap().is_empty());
/// assert_eq!(*mapper.hardware().invalidations.lock().unwrap(), 1);
/// # Ok::<(), dmakit::Error>(())
/// ```
pub trait IommuHardware: Send + Sync {
    /// The IOMMU page size.
    fn page_size(&self) -> PageSize;

    /// Sets (or with `None` clears) the page-table entry of the IO page at `iova`. Takes
    /// effect for the device only after the IOTLB no longer holds an older entry.
    fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> Result<()>;

    /// Invalidates the IOTLB for `[iova, iova + len)`; when it returns, the device uses
    /// the page table for those addresses.
    fn invalidate(&self, iova: IoAddr, len: u64) -> Result<()>;
}

macro_rules! forward_hw {
    ($($ptr:ty),*) => {$(
        impl<T: IommuHardware + ?Sized> IommuHardware for $ptr {
            fn page_size(&self) -> PageSize {
                (**self).page_size()
            }
            fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> Result<()> {
                (**self).set_entry(iova, entry)
            }
            fn invalidate(&self, iova: IoAddr, len: u64) -> Result<()> {
                (**self).invalidate(iova, len)
            }
        }
    )*};
}

forward_hw!(&T, alloc_crate::sync::Arc<T>);

/// A mapper over IOMMU hardware `H`.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
/// use dmakit::mapper::{Access, IommuMapper, Mapper};
/// use dmakit::Direction;
/// use dmakit_sim::{FaultKind, SimIommu};
/// use std::sync::Arc;
/// // Coherent: mapper calls alone do no cache maintenance (a `DmaCommand` does).
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
///
/// let iommu = Arc::new(SimIommu::new(machine.clone()));
/// let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 30)?;
/// let page = BufferMemoryDescriptor::with_bytes(machine, b"only this page", Direction::Out)?;
/// let iova = mapper.iovm_alloc(1)?;
/// mapper.iovm_insert_page(iova, page.physical_segment(0)?.addr, Access::READ)?;
/// let mut seen = [0u8; 14];
/// iommu.device_read(iova, &mut seen)?;
/// assert_eq!(&seen, b"only this page");
/// assert!(iommu.device_write(iova, b"x").is_err(), "read-only for the device");
/// assert_eq!(iommu.faults()[0].kind, FaultKind::WriteDenied);
/// mapper.iovm_free(iova, 1)?;
/// assert_eq!(mapper.usage(), (0, 0));
/// # Ok::<(), dmakit::Error>(())
/// ```
///
/// Threads that map and unmap at once do not wait for each other: each works on its own
/// shard of the bookkeeping, with its own cache of freed (and invalidated) IO ranges per
/// size; only cache misses reach the shared IO space allocator. The `iova_shard` module
/// tells how. Allocations of up to 32 pages are aligned to their size rounded up to a
/// power of two, unless space is short.
///
/// # Invariants
///
/// Every IO page with an entry lies inside a live allocation; every freed range is
/// unmapped in the hardware page table, and handed out again only after an invalidation
/// that covers it (cached ranges were invalidated; pending ones wait for it).
pub struct IommuMapper<H: IommuHardware> {
    hw: H,
    base: u64,
    size: u64,
    lazy: bool,
    shards: Box<[Padded<ShardLock<Shard>>]>,
    depot: Mutex<Depot<{ super::iova_shard::CLASSES }>>,
    large: Mutex<Large>,
    space: Mutex<RangeAllocator>,
}

impl<H: IommuHardware> IommuMapper<H> {
    /// A *strict* mapper handing out `[base, base + size)` of IO address space (page
    /// aligned): `iovm_free` invalidates the IOTLB before it returns, so the device loses
    /// access at once.
    pub fn new(hw: H, base: u64, size: u64) -> Result<Self> {
        Self::build(hw, base, size, false)
    }

    /// A *lazy* mapper: `iovm_free` unmaps but batches the IOTLB invalidation (up to
    /// 16 ranges per thread shard, or until the space runs out, or
    /// [`flush`](Self::flush)). Until then the device may still reach the freed pages
    /// through stale IOTLB entries, as in Linux's lazy IOMMU mode; the IO addresses
    /// themselves are never handed out again before the invalidation.
    ///
    /// ```
    /// use dmakit::mapper::{IommuMapper, Mapper};
    /// use dmakit_sim::SimIommu;
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let iommu = Arc::new(SimIommu::new(machine));
    /// let mapper = IommuMapper::new_lazy(iommu.clone(), 0x1_0000_0000, 1 << 30)?;
    /// let before = iommu.invalidations();
    /// for _ in 0..4 {
    ///     let iova = mapper.iovm_alloc(1)?;
    ///     mapper.iovm_free(iova, 1)?; // unmapped; the invalidation waits
    /// }
    /// assert_eq!((iommu.invalidations(), mapper.pending()), (before, 4));
    /// mapper.flush()?; // one batch of invalidations
    /// assert_eq!(mapper.pending(), 0);
    /// assert!(iommu.invalidations() > before);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn new_lazy(hw: H, base: u64, size: u64) -> Result<Self> {
        Self::build(hw, base, size, true)
    }

    fn build(hw: H, base: u64, size: u64, lazy: bool) -> Result<Self> {
        let page = hw.page_size().bytes();
        for (what, v) in [("IO space base", base), ("IO space size", size)] {
            if !v.is_multiple_of(page) {
                return Err(Error::NotAligned {
                    what,
                    value: v,
                    align: page,
                });
            }
        }
        // Constant-time placement: IO addresses are a hot path and no caller relies on
        // IOKit's lowest-first order.
        let space = RangeAllocator::new(base, size, page)?.with_placement(Placement::GoodFit);
        Ok(IommuMapper {
            hw,
            base,
            size,
            lazy,
            shards: (0..SHARDS)
                .map(|_| Padded(ShardLock::new(Shard::new())))
                .collect(),
            depot: Mutex::new(Depot::new()),
            large: Mutex::new(Large::default()),
            space: Mutex::new(space),
        })
    }

    /// The hardware.
    pub fn hardware(&self) -> &H {
        &self.hw
    }

    /// The IO address window.
    pub fn window(&self) -> (IoAddr, u64) {
        (IoAddr(self.base), self.size)
    }

    /// Freed ranges still waiting for an invalidation.
    pub fn pending(&self) -> usize {
        self.shards.iter().map(|s| s.lock().pending.len()).sum()
    }

    /// Live IO allocations and mapped pages (for leak checks).
    pub fn usage(&self) -> (usize, usize) {
        let l = self.large.lock();
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                (s.live.len(), s.entries.len())
            })
            .fold((l.live.len(), l.entries.len()), |a, b| {
                (a.0 + b.0, a.1 + b.1)
            })
    }

    /// Invalidates the IOTLB for every freed range and makes them allocatable again.
    pub fn flush(&self) -> Result<()> {
        self.shards
            .iter()
            .try_for_each(|s| self.drain(&mut s.lock()))
    }

    /// Invalidates the ranges `s` holds pending and caches them (a failed invalidation
    /// leaves them all pending).
    fn drain(&self, s: &mut Shard) -> Result<()> {
        for &(start, len, _) in s.pending.items() {
            self.hw.invalidate(IoAddr(start), len)?;
        }
        let (items, n) = s.pending.take();
        for &f in &items[..n] {
            self.release(s, f);
        }
        Ok(())
    }

    /// Makes invalidated range `f` allocatable: into `s`'s cache, or the shared space.
    fn release(&self, s: &mut Shard, (start, len, class): Freed) {
        if class == UNCACHED {
            // Allocated whole, so this cannot fail.
            let _ = self.space.lock().deallocate(start, len);
        } else if let Some(spill) = s.mags.push(class, start, &self.depot) {
            let mut space = self.space.lock();
            for &x in spill.items() {
                let _ = space.deallocate(x, self.bytes(class));
            }
        }
    }

    /// Out of space: invalidates every pending range and gives every cache back to the
    /// shared space.
    fn reclaim(&self) -> Result<()> {
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            self.drain(&mut s)?;
            let mut space = self.space.lock();
            s.mags.drain(|c, x| {
                let _ = space.deallocate(x, self.bytes(c));
            });
        }
        let mut depot = self.depot.lock();
        let mut space = self.space.lock();
        depot.drain(|c, x| {
            let _ = space.deallocate(x, self.bytes(c));
        });
        Ok(())
    }

    fn page(&self) -> u64 {
        self.hw.page_size().bytes()
    }

    /// Bytes of a class.
    fn bytes(&self, class: usize) -> u64 {
        (class as u64 + 1) * self.page()
    }

    /// A new range of class `class` from the shared space, at its alignment.
    fn take(&self, class: usize) -> Result<u64> {
        let align = align_of(class) * self.page();
        self.space.lock().allocate(self.bytes(class), align)
    }

    /// This thread's shard, or the next free one.
    fn shard(&self) -> ShardGuard<'_, Shard> {
        self.shard_at().1
    }

    /// This thread's shard, or the next free one, and its index.
    fn shard_at(&self) -> (usize, ShardGuard<'_, Shard>) {
        lock_home(&self.shards)
    }

    /// `f` on this thread's shard, then on each other shard in turn, until it answers.
    fn in_shards<R>(&self, mut f: impl FnMut(&mut Shard) -> Option<R>) -> Option<R> {
        let (mine, first) = {
            let (i, mut s) = self.shard_at();
            (i, f(&mut s))
        };
        first.or_else(|| {
            (0..self.shards.len())
                .filter(|&i| i != mine)
                .find_map(|i| f(&mut self.shards[i].lock()))
        })
    }

    /// An allocation of class `class` when the space has none at that size and alignment:
    /// after reclaiming, aligned again, else at the exact size (uncached).
    fn alloc_scarce(&self, pages: u64, class: usize) -> Result<IoAddr> {
        self.reclaim()?;
        match self.take(class) {
            Ok(x) => {
                self.shard().live.insert(x, Live::new(pages, class));
                Ok(IoAddr(x))
            }
            Err(Error::NoSpace { .. }) => self.alloc_large(pages),
            Err(e) => Err(e),
        }
    }

    /// An uncached allocation of exactly `pages` pages.
    fn alloc_large(&self, pages: u64) -> Result<IoAddr> {
        let len = pages * self.page();
        let got = self.space.lock().allocate(len, 0);
        let x = match got {
            Err(Error::NoSpace { .. }) => {
                self.reclaim()?;
                self.space.lock().allocate(len, 0)?
            }
            got => got?,
        };
        self.large.lock().live.insert(x, Live::new(pages, UNCACHED));
        Ok(IoAddr(x))
    }

    /// An uncached allocation of `pages` pages (`len` bytes) where `place` allows.
    fn alloc_placed(&self, pages: u64, len: u64, place: &IovaPlacement) -> Result<IoAddr> {
        if len == 0 {
            return Err(Error::ZeroSize {
                what: "iovm_alloc_placed",
            });
        }
        let got = allocate_placed(&mut self.space.lock(), len, place);
        let x = match got {
            Err(Error::NoSuitableMemory { .. }) => {
                self.reclaim()?;
                allocate_placed(&mut self.space.lock(), len, place)?
            }
            got => got?,
        };
        self.large.lock().live.insert(x, Live::new(pages, UNCACHED));
        Ok(IoAddr(x))
    }

    /// Takes back the allocation at `iova` that `iovm_alloc` has just handed to this call,
    /// before anything could map it: it has no entries, and the IOTLB no translation of it
    /// (a cached or fresh range has none), so it goes back to the cache or the space with
    /// no hardware call, and cannot fail.
    fn unalloc(&self, iova: u64) {
        let small = self.in_shards(|s| {
            let live = s.live.remove(&iova)?;
            self.release(s, (iova, live.pages * self.page(), live.class()));
            Some(())
        });
        if small.is_none() {
            let large = self.large.lock().live.remove(&iova);
            if let Some(live) = large {
                // Allocated whole, so this cannot fail.
                let _ = self.space.lock().deallocate(iova, live.pages * self.page());
            }
        }
    }

    /// Frees allocation `(iova, live)` of shard `s`: unmaps its pages, then invalidates
    /// (strict) or queues it (lazy).
    fn free_small(&self, s: &mut Shard, iova: u64, live: Live) -> Result<()> {
        let page = self.page();
        for k in (0..live.pages).map(|i| iova + i * page) {
            if let Some(e) = s.entries.remove(&k) {
                if let Err(err) = self.hw.set_entry(IoAddr(k), None) {
                    s.entries.insert(k, e);
                    // The pages unmapped so far were not invalidated.
                    s.live.insert(iova, live.marked_stale());
                    return Err(err);
                }
            }
        }
        s.live.remove(&iova);
        if let Err(e) = self.retire(s, (iova, live.pages * page, live.class())) {
            // Not invalidated: the device may still reach the pages through the IOTLB.
            // The allocation stays live (unmapped), so the caller keeps the memory
            // behind it and can free it again once the IOMMU answers.
            s.live.insert(iova, live.marked_stale());
            return Err(e);
        }
        Ok(())
    }

    /// Frees an uncached allocation (a [`Large`] one).
    fn free_large(&self, iova: u64, pages: u64) -> Result<()> {
        let mut l = self.large.lock();
        let live = match l.live.get(&iova) {
            Some(&live) if live.pages == pages => live,
            Some(live) => return Err(wrong_size(iova, live.pages, pages)),
            None => {
                return Err(Error::NotAllocated {
                    free_fn: "iovm_free",
                    addr: iova,
                })
            }
        };
        let len = pages * self.page();
        // Inclusive end: a window may end at the top of the 64-bit space.
        let mapped: Vec<u64> = l
            .entries
            .range(iova..=iova + (len - 1))
            .map(|(&k, _)| k)
            .collect();
        let stale = live.marked_stale();
        for k in mapped {
            if let Err(e) = self.hw.set_entry(IoAddr(k), None) {
                // The pages unmapped so far were not invalidated.
                l.live.insert(iova, stale);
                return Err(e);
            }
            l.entries.remove(&k);
        }
        l.live.remove(&iova);
        drop(l);
        let mut s = self.shard();
        if let Err(e) = self.retire(&mut s, (iova, len, UNCACHED)) {
            self.large.lock().live.insert(iova, stale);
            return Err(e);
        }
        Ok(())
    }

    /// Unmapped range `f`: strict, invalidated and released at once; lazy, queued in `s`
    /// (and the queue drained when full). On error `f` is neither queued nor released.
    fn retire(&self, s: &mut Shard, f: Freed) -> Result<()> {
        if !self.lazy {
            self.hw.invalidate(IoAddr(f.0), f.1)?;
            self.release(s, f);
            return Ok(());
        }
        if !s.pending.push(f) {
            // Full after an earlier failed round: try that round again first.
            self.drain(s)?;
            s.pending.push(f);
        }
        if s.pending.len() >= super::iova_shard::FLUSH_BATCH {
            if let Err(e) = self.drain(s) {
                s.pending.forget(f.0);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether every range this mapper caches for `pages` pages (`len` bytes), at its size
    /// class's natural alignment inside the window, meets `place` (or, for a size with no
    /// class, every page-aligned range of the window).
    fn always_placed(&self, place: &IovaPlacement, pages: u64, len: u64) -> bool {
        let natural = class_of(pages).map_or(self.page(), |c| align_of(c) * self.page());
        place.always_fits(self.base, self.base + (self.size - 1), len, natural)
    }

    /// The fast path of `iovm_map_run`: a range of the size's class from this thread's
    /// cache, recorded and mapped to `run` under one lock of its shard. `None`, having
    /// changed nothing, when the cache has none at hand, when `place` might not hold every
    /// range of the class, or when the run is not page aligned or passes the top of the
    /// physical space (the two-step path then allocates, or says what is wrong). A failed
    /// mapping is unmapped and its range retired, as `iovm_free` does; when that fails too,
    /// the error is [`Error::LeftMapped`].
    fn map_cached(
        &self,
        pages: u64,
        place: &IovaPlacement,
        run: (u64, u64, Access),
    ) -> Option<Result<IoAddr>> {
        let page = self.page();
        let class = class_of(pages)?;
        // A class holds at most a few hundred pages: no overflow.
        let len = pages * page;
        let sound = run.0.is_multiple_of(page)
            && run.0.checked_add(len - 1).is_some()
            && place.check().is_ok();
        if !sound || !self.always_placed(place, pages, len) {
            return None;
        }
        let mut s = self.shard();
        let x = s.mags.pop(class, &self.depot)?;
        if !place.fits(x, len) {
            // Not expected of a cached range (aligned to its class, inside the window);
            // kept anyway, so that a device never gets a range outside its placement.
            self.release(&mut s, (x, self.bytes(class), class));
            return None;
        }
        let live = Live::new(pages, class);
        s.live.insert(x, live);
        if let Err(e) = self.insert_small(&mut s, (x, false), x, run) {
            // `insert_small` marked it stale. Unmapped and retired, or (the IOMMU not
            // answering) kept live and stale, and named in the error.
            return Some(Err(match self.free_small(&mut s, x, live.marked_stale()) {
                Ok(()) => e,
                Err(unmap) => super::left_mapped("iovm_map_run", (IoAddr(x), pages), e, unmap),
            }));
        }
        Some(Ok(IoAddr(x)))
    }

    /// Writes the entries of a run inside allocation `start` of shard `s` (`stale` as its
    /// books say); a failure marks the allocation stale.
    fn insert_small(
        &self,
        s: &mut Shard,
        (start, stale): (u64, bool),
        iova: u64,
        run: (u64, u64, Access),
    ) -> Result<()> {
        let entries = &mut s.entries;
        let written = self.write_run(iova, run, stale, |io, e| entries.insert(io, e).is_some());
        if written.is_err() {
            if let Some(l) = s.live.get_mut(&start) {
                l.stale = true;
            }
        }
        written
    }

    /// Writes the page-table entries of the run `(pa, pages, access)` from `iova`,
    /// recording each with `record` (true when it replaced an entry). When it replaced one,
    /// or the allocation is `stale`, the IOTLB may hold an older translation of a page it
    /// wrote: it invalidates the pages written (also after a failed write). An error
    /// leaves the caller to mark the allocation stale.
    fn write_run(
        &self,
        iova: u64,
        (pa, pages, access): (u64, u64, Access),
        stale: bool,
        mut record: impl FnMut(u64, (u64, Access)) -> bool,
    ) -> Result<()> {
        let page = self.page();
        let (mut older, mut written, mut result) = (stale, 0, Ok(()));
        for i in 0..pages {
            let (io, phys) = (iova + i * page, pa + i * page);
            if let Err(e) = self
                .hw
                .set_entry(IoAddr(io), Some((PhysAddr(phys), access)))
            {
                result = Err(e);
                break;
            }
            older |= record(io, (phys, access));
            written += 1;
        }
        if older && written > 0 {
            result = result.and(self.hw.invalidate(IoAddr(iova), written * page));
        }
        result
    }

    /// A run in an uncached allocation.
    fn insert_large(&self, iova: u64, span: u64, run: (u64, u64, Access)) -> Result<()> {
        let page = self.page();
        let mut l = self.large.lock();
        let holder = l.live.range(..=iova).next_back().and_then(|(&a, live)| {
            let len = live.pages * page;
            (iova - a < len && len - (iova - a) >= span).then_some((a, live.stale))
        });
        let Some((start, stale)) = holder else {
            return Err(outside(iova));
        };
        let entries = &mut l.entries;
        let written = self.write_run(iova, run, stale, |io, e| entries.insert(io, e).is_some());
        if written.is_err() {
            if let Some(live) = l.live.get_mut(&start) {
                live.stale = true;
            }
        }
        written
    }
}

fn wrong_size(addr: u64, allocated: u64, given: u64) -> Error {
    Error::WrongSize {
        free_fn: "iovm_free",
        addr,
        allocated,
        given,
    }
}

fn outside(iova: u64) -> Error {
    // IOKit panics on IOMapperInsertPage(0, …) and writes anywhere otherwise.
    Error::BadArgument {
        what: "iovm_insert_page outside any iovm_alloc allocation (or a run past its end)",
        value: iova,
    }
}

impl<H: IommuHardware> Mapper for IommuMapper<H> {
    fn page_size(&self) -> PageSize {
        self.hw.page_size()
    }

    fn iovm_alloc(&self, pages: u64) -> Result<IoAddr> {
        if pages == 0 {
            return Err(Error::ZeroSize { what: "iovm_alloc" });
        }
        pages.checked_mul(self.page()).ok_or(Error::Overflow {
            what: "iovm_alloc",
            start: 0,
            len: pages,
        })?;
        let Some(class) = class_of(pages) else {
            return self.alloc_large(pages);
        };
        let mut s = self.shard();
        let x = match s.mags.pop(class, &self.depot) {
            Some(x) => x,
            None => {
                let got = self.take(class);
                match got {
                    Ok(x) => x,
                    Err(Error::NoSpace { .. }) => {
                        drop(s);
                        return self.alloc_scarce(pages, class);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        s.live.insert(x, Live::new(pages, class));
        Ok(IoAddr(x))
    }

    /// The fast path when every range of this size from the window fits `place` (the
    /// window inside the device's, the size class aligned enough); otherwise the lowest
    /// free range that fits, found by a walk of the free intervals under the space's lock.
    /// Give a device a mapper whose window it reaches whole to keep the fast path.
    fn iovm_alloc_placed(&self, pages: u64, place: &IovaPlacement) -> Result<IoAddr> {
        place.check()?;
        let len = pages.checked_mul(self.page()).ok_or(Error::Overflow {
            what: "iovm_alloc_placed",
            start: 0,
            len: pages,
        })?;
        if self.always_placed(place, pages, len) {
            let iova = self.iovm_alloc(pages)?;
            if place.fits(iova.0, len) {
                return Ok(iova);
            }
            // An exact-size range taken when space was short: place one instead.
            self.unalloc(iova.0);
        }
        self.alloc_placed(pages, len, place)
    }

    fn iovm_free(&self, iova: IoAddr, pages: u64) -> Result<()> {
        let freed = self.in_shards(|s| {
            let live = *s.live.get(&iova.0)?;
            Some(if live.pages == pages {
                self.free_small(s, iova.0, live)
            } else {
                Err(wrong_size(iova.0, live.pages, pages))
            })
        });
        freed.unwrap_or_else(|| self.free_large(iova.0, pages))
    }

    fn iovm_insert_page(&self, iova: IoAddr, pa: PhysAddr, access: Access) -> Result<()> {
        self.iovm_insert_run(iova, pa, 1, access)
    }

    /// The run under one lock: checked whole (alignment, inside one allocation) before any
    /// page-table entry is written.
    fn iovm_insert_run(
        &self,
        iova: IoAddr,
        pa: PhysAddr,
        pages: u64,
        access: Access,
    ) -> Result<()> {
        let page = self.page();
        let span = super::check_run(
            "iovm_insert_page (IO and physical addresses must be page aligned)",
            page,
            iova,
            pa,
            pages,
        )?;
        if span == 0 {
            return Ok(());
        }
        let done = self.in_shards(|s| {
            let (start, l) = s.containing(iova.0, page)?;
            Some(if l.pages * page - (iova.0 - start) >= span {
                self.insert_small(s, (start, l.stale), iova.0, (pa.0, pages, access))
            } else {
                Err(outside(iova.0))
            })
        });
        done.unwrap_or_else(|| self.insert_large(iova.0, span, (pa.0, pages, access)))
    }

    /// A range cached for the size's class, recorded and mapped under one shard lock when
    /// there is one at hand; otherwise allocated and mapped in two steps.
    fn iovm_map_run(
        &self,
        pages: u64,
        place: &IovaPlacement,
        pa: PhysAddr,
        access: Access,
    ) -> Result<IoAddr> {
        match self.map_cached(pages, place, (pa.0, pages, access)) {
            Some(mapped) => mapped,
            None => super::map_in_two_steps(self, pages, place, (pa, access)),
        }
    }

    fn translate(&self, iova: IoAddr) -> Result<(PhysAddr, Access)> {
        let key = iova.0 & !(self.page() - 1);
        let found = self
            .in_shards(|s| s.entries.get(&key).copied())
            .or_else(|| self.large.lock().entries.get(&key).copied());
        found
            .map(|(pa, acc)| (PhysAddr(pa + (iova.0 - key)), acc))
            .ok_or(Error::NotMapped {
                what: "IO address space",
                addr: iova.0,
            })
    }
}

impl<H: IommuHardware> core::fmt::Debug for IommuMapper<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (live, mapped) = self.usage();
        f.debug_struct("IommuMapper")
            .field("base", &self.base)
            .field("size", &self.size)
            .field("live", &live)
            .field("mapped_pages", &mapped)
            .field("pending", &self.pending())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Mutex;
    use alloc_crate::collections::BTreeMap;

    /// Page-table entries and invalidations, recorded; with `clears_before_failure` at
    /// `Some(n)`, `n` more entry clears succeed and the next one fails (and the same for
    /// entry writes with `writes_before_failure`, and invalidations with
    /// `invalidations_before_failure`).
    #[derive(Default)]
    struct Table {
        entries: Mutex<BTreeMap<u64, (u64, Access)>>,
        invalidations: Mutex<Vec<(u64, u64)>>,
        clears_before_failure: Mutex<Option<u32>>,
        writes_before_failure: Mutex<Option<u32>>,
        invalidations_before_failure: Mutex<Option<u32>>,
    }

    /// Counts down `left`: false (and disarmed) when it reaches zero.
    fn spend(left: &Mutex<Option<u32>>) -> bool {
        let mut left = left.lock();
        match *left {
            Some(0) => {
                *left = None;
                false
            }
            Some(n) => {
                *left = Some(n - 1);
                true
            }
            None => true,
        }
    }

    impl IommuHardware for Table {
        fn page_size(&self) -> PageSize {
            PageSize::new(4096).unwrap()
        }
        fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> Result<()> {
            let budget = match entry {
                None => &self.clears_before_failure,
                Some(_) => &self.writes_before_failure,
            };
            if !spend(budget) {
                return Err(Error::Internal {
                    what: "test page table: entry refused",
                });
            }
            let mut e = self.entries.lock();
            match entry {
                Some((pa, a)) => e.insert(iova.0, (pa.0, a)),
                None => e.remove(&iova.0),
            };
            Ok(())
        }
        fn invalidate(&self, iova: IoAddr, len: u64) -> Result<()> {
            if !spend(&self.invalidations_before_failure) {
                return Err(Error::Internal {
                    what: "test IOMMU: invalidation refused",
                });
            }
            self.invalidations.lock().push((iova.0, len));
            Ok(())
        }
    }

    /// `iovm_alloc_placed` with a placement every cached range meets, when space is short:
    /// the exact-size range it gets instead breaks the placement, and goes back, never
    /// mapped, without an invalidation (none is needed, so an IOMMU refusing them cannot
    /// leak it); the placed search then finds no room and says so.
    #[test]
    fn a_misplaced_range_goes_back_without_an_invalidation() {
        let page = 0x1000;
        let m = IommuMapper::new(Table::default(), 0x10_0000, 4 * page).unwrap();
        let mut all: Vec<u64> = (0..4).map(|_| m.iovm_alloc(1).unwrap().0).collect();
        all.sort_unstable();
        // Pages 1 and 2 free: two pages, but not at a two-page alignment.
        m.iovm_free(IoAddr(all[1]), 1).unwrap();
        m.iovm_free(IoAddr(all[2]), 1).unwrap();
        let hw = m.hardware();
        let before = hw.invalidations.lock().len();
        *hw.invalidations_before_failure.lock() = Some(0);
        let place = IovaPlacement::ANY.alignment(2 * page);
        let e = m.iovm_alloc_placed(2, &place).unwrap_err();
        assert!(matches!(e, Error::NoSuitableMemory { .. }), "{e}");
        assert_eq!(m.usage(), (2, 0), "nothing left allocated");
        assert_eq!(hw.invalidations.lock().len(), before);
        *hw.invalidations_before_failure.lock() = None;
        let two = m.iovm_alloc(2).unwrap();
        assert_eq!(two.0, all[1], "the two free pages are still there");
    }

    /// A thread whose shard another thread holds works in the next free shard from then
    /// on: its allocations, frees and cached ranges stay together there, instead of two
    /// threads with one home taking turns on two shards call after call.
    #[test]
    fn a_thread_whose_shard_is_taken_moves_to_a_free_one() {
        let m = IommuMapper::new(Table::default(), 0x10_0000, 0x100_0000).unwrap();
        let home = m.shard_at().0;
        let held = m.shards[home].try_lock().unwrap();
        let a = m.iovm_alloc(2).unwrap();
        drop(held);
        let b = m.iovm_alloc(2).unwrap();
        let moved = m.shard_at().0;
        assert_ne!(moved, home);
        let s = m.shards[moved].lock();
        assert!(s.live.get(&a.0).is_some() && s.live.get(&b.0).is_some());
        drop(s);
        m.iovm_free(a, 2).unwrap();
        m.iovm_free(b, 2).unwrap();
        assert_eq!(m.usage(), (0, 0));
        assert_eq!(m.iovm_alloc(2).unwrap(), b, "from the new home's cache");
    }

    #[test]
    fn a_run_maps_each_page_once_and_stays_inside_its_allocation() {
        let m = IommuMapper::new(Table::default(), 0x10_0000, 0x10_0000).unwrap();
        let iova = m.iovm_alloc(4).unwrap();
        m.iovm_insert_run(iova, PhysAddr(0x8000_0000), 3, Access::READ)
            .unwrap();
        assert_eq!(m.usage(), (1, 3));
        let (pa, a) = m.translate(IoAddr(iova.0 + 0x2abc)).unwrap();
        assert_eq!((pa, a), (PhysAddr(0x8000_2abc), Access::READ));
        // Past the allocation's end: refused before any entry is written.
        let e = m
            .iovm_insert_run(
                IoAddr(iova.0 + 0x2000),
                PhysAddr(0x9000_0000),
                3,
                Access::READ,
            )
            .unwrap_err();
        assert!(matches!(e, Error::BadArgument { value, .. } if value == iova.0 + 0x2000));
        assert_eq!(m.hardware().entries.lock().len(), 3);
        // Near the top of the physical space: an overflow error, nothing written.
        let e = m
            .iovm_insert_run(iova, PhysAddr(u64::MAX - 0xfff), 2, Access::READ)
            .unwrap_err();
        assert!(matches!(e, Error::Overflow { .. }), "{e}");
        m.iovm_insert_run(iova, PhysAddr(0), 0, Access::READ)
            .unwrap();
        // Replacing a mapped page invalidates it; freeing unmaps all.
        m.iovm_insert_page(iova, PhysAddr(0x7000_0000), Access::WRITE)
            .unwrap();
        assert_eq!(
            m.hardware().invalidations.lock().as_slice(),
            [(iova.0, 0x1000)]
        );
        m.iovm_free(iova, 4).unwrap();
        assert_eq!(m.usage(), (0, 0));
        assert!(m.hardware().entries.lock().is_empty());
    }

    /// A free that fails after unmapping some pages (not invalidated) leaves the allocation
    /// live; mapping one of those pages again must invalidate it, or the device could go
    /// on using the old translation from its IOTLB.
    #[test]
    fn an_insert_after_a_failed_free_invalidates_what_it_maps() {
        // 3 pages: an allocation the shards cache; 40: one they do not.
        for pages in [3, 40] {
            let m = IommuMapper::new(Table::default(), 0x10_0000, 0x100_0000).unwrap();
            let hw = m.hardware();
            let iova = m.iovm_alloc(pages).unwrap();
            m.iovm_insert_run(iova, PhysAddr(0x8000_0000), 2, Access::READ)
                .unwrap();
            *hw.clears_before_failure.lock() = Some(1);
            let e = m.iovm_free(iova, pages).unwrap_err();
            assert!(matches!(e, Error::Internal { .. }), "{e}");
            // The first page is unmapped (the IOTLB may still hold it), the second is
            // mapped, the allocation live.
            assert_eq!(m.usage(), (1, 1));
            assert!(matches!(m.translate(iova), Err(Error::NotMapped { .. })));
            hw.invalidations.lock().clear();
            m.iovm_insert_page(iova, PhysAddr(0x9000_0000), Access::WRITE)
                .unwrap();
            assert_eq!(hw.invalidations.lock().as_slice(), [(iova.0, 0x1000)]);
            m.iovm_free(iova, pages).unwrap();
            assert_eq!(m.usage(), (0, 0));
            assert!(hw.entries.lock().is_empty());
        }
    }

    /// `iovm_map_run` allocates and maps in one call: from the thread's cache (a range
    /// freed before comes back), or in two steps when the cache has none or the run is
    /// larger than any cached class; either way it maps every page and frees like any
    /// allocation.
    #[test]
    fn a_run_is_allocated_and_mapped_in_one_call() {
        let m = IommuMapper::new(Table::default(), 0x10_0000, 0x100_0000).unwrap();
        let map = |pages| {
            m.iovm_map_run(
                pages,
                &IovaPlacement::ANY,
                PhysAddr(0x8000_0000),
                Access::READ,
            )
            .unwrap()
        };
        for pages in [1, 3, 40] {
            let first = map(pages);
            m.iovm_free(first, pages).unwrap();
            m.flush().unwrap();
            let iova = map(pages);
            if pages < 40 {
                assert_eq!(iova, first, "the cached range comes back");
            }
            assert_eq!(m.usage(), (1, pages as usize));
            let last = IoAddr(iova.0 + (pages - 1) * 0x1000 + 0x10);
            let want = PhysAddr(0x8000_0010 + (pages - 1) * 0x1000);
            assert_eq!(m.translate(last).unwrap(), (want, Access::READ));
            m.iovm_free(iova, pages).unwrap();
            assert_eq!(m.usage(), (0, 0));
            assert!(m.hardware().entries.lock().is_empty());
        }
    }

    /// A run that is not page aligned or passes the top of the physical space, or a
    /// placement no range of the mapper meets, is refused with the error the two-step path
    /// gives, and nothing stays allocated.
    #[test]
    fn a_run_map_refused_leaves_nothing_allocated() {
        let m = IommuMapper::new(Table::default(), 0x10_0000, 0x100_0000).unwrap();
        // Cached ranges at hand, so that the one-lock path sees every request first.
        for pages in [1, 2] {
            let warm = m.iovm_alloc(pages).unwrap();
            m.iovm_free(warm, pages).unwrap();
        }
        m.flush().unwrap();
        let e = m
            .iovm_map_run(1, &IovaPlacement::ANY, PhysAddr(0x8000_0008), Access::READ)
            .unwrap_err();
        assert!(matches!(e, Error::NotAligned { .. }), "{e}");
        let top = PhysAddr(u64::MAX - 0xfff);
        let e = m
            .iovm_map_run(2, &IovaPlacement::ANY, top, Access::READ)
            .unwrap_err();
        assert!(matches!(e, Error::Overflow { .. }), "{e}");
        let below = IovaPlacement::ANY.window(0, 0xF_FFFF);
        let e = m
            .iovm_map_run(1, &below, PhysAddr(0x8000_0000), Access::READ)
            .unwrap_err();
        assert!(matches!(e, Error::NoSuitableMemory { .. }), "{e}");
        assert_eq!(m.usage(), (0, 0));
        assert!(m
            .iovm_map_run(0, &IovaPlacement::ANY, PhysAddr(0), Access::READ)
            .is_err());
        assert_eq!(m.usage(), (0, 0));
    }

    /// An entry the IOMMU refuses mid-run: the error comes back, the pages written are
    /// unmapped and the range retired (the next map gets a range again); and when the
    /// unmapping is refused too, the allocation stays live, as after a failed free.
    #[test]
    fn a_run_map_that_fails_midway_is_unmapped() {
        let m = IommuMapper::new(Table::default(), 0x10_0000, 0x100_0000).unwrap();
        let hw = m.hardware();
        let warm = m.iovm_alloc(3).unwrap();
        m.iovm_free(warm, 3).unwrap();
        m.flush().unwrap();
        *hw.writes_before_failure.lock() = Some(2);
        let e = m
            .iovm_map_run(3, &IovaPlacement::ANY, PhysAddr(0x8000_0000), Access::READ)
            .unwrap_err();
        assert!(matches!(e, Error::Internal { .. }), "{e}");
        assert_eq!(m.usage(), (0, 0));
        assert!(hw.entries.lock().is_empty());
        let iova = m
            .iovm_map_run(3, &IovaPlacement::ANY, PhysAddr(0x8000_0000), Access::READ)
            .unwrap();
        m.iovm_free(iova, 3).unwrap();
        m.flush().unwrap();
        *hw.writes_before_failure.lock() = Some(2);
        *hw.clears_before_failure.lock() = Some(0);
        let e = m
            .iovm_map_run(3, &IovaPlacement::ANY, PhysAddr(0x8000_0000), Access::READ)
            .unwrap_err();
        assert_eq!(
            m.usage(),
            (1, 2),
            "kept live: its pages may still be reachable"
        );
        left_mapped_is_freed_later(&m, e, 3);
    }

    /// `e` names the allocation of `pages` pages a failed map left live, with the refused
    /// entry as its cause; freeing that allocation, the IOMMU answering again, leaves
    /// nothing.
    fn left_mapped_is_freed_later(m: &IommuMapper<Table>, e: Error, pages: u64) {
        let Error::LeftMapped {
            iova,
            pages: p,
            cause,
            ..
        } = e
        else {
            panic!("not LeftMapped: {e}");
        };
        assert_eq!(p, pages);
        assert_eq!(cause, crate::IoReturn::INTERNAL_ERROR);
        let page = m.page_size().bytes();
        let mapped = (0..pages).filter(|i| m.translate(IoAddr(iova + i * page)).is_ok());
        assert!(mapped.count() > 0, "a page of the range is still mapped");
        m.iovm_free(IoAddr(iova), pages).unwrap();
        assert_eq!(m.usage(), (0, 0));
        assert!(m.hardware().entries.lock().is_empty());
    }

    /// The same through the two-step path (a size no cache holds): the allocation left live
    /// is named in the error, and freeing it later works.
    #[test]
    fn a_two_step_run_map_that_cannot_be_undone_names_its_range() {
        let m = IommuMapper::new(Table::default(), 0x10_0000, 0x100_0000).unwrap();
        let hw = m.hardware();
        *hw.writes_before_failure.lock() = Some(5);
        *hw.clears_before_failure.lock() = Some(1);
        let e = m
            .iovm_map_run(
                40,
                &IovaPlacement::ANY,
                PhysAddr(0x8000_0000),
                Access::WRITE,
            )
            .unwrap_err();
        assert_eq!(m.usage().0, 1);
        left_mapped_is_freed_later(&m, e, 40);
    }
}
