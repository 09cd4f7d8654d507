//! [`IommuMapper`]: a [`Mapper`](super::Mapper) over IOMMU hardware, with a flush queue so
//! freed IO addresses are never reused before the IOTLB forgets them.

use super::Mapper;
use crate::alloc::RangeAllocator;
use crate::{Error, IoAddr, PageSize, PhysAddr, Result};
use alloc_crate::collections::BTreeMap;
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

/// Freed ranges wait here until one invalidation covers them all.
const FLUSH_BATCH: usize = 16;

struct State {
    space: RangeAllocator,
    /// Live allocations: start → pages.
    live: BTreeMap<u64, u64>,
    /// Mapped pages: IO page → (physical page, access).
    entries: BTreeMap<u64, (u64, Access)>,
    /// Freed, unmapped, not yet invalidated: (start, bytes).
    pending: Vec<(u64, u64)>,
}

/// A mapper over IOMMU hardware `H`.
///
/// # Invariants
///
/// Every IO page in `entries` lies inside a live allocation; every range in `pending` is
/// unmapped in the hardware page table and absent from `space` until invalidated.
pub struct IommuMapper<H: IommuHardware> {
    hw: H,
    base: u64,
    size: u64,
    lazy: bool,
    state: crate::sync::Mutex<State>,
}

impl<H: IommuHardware> IommuMapper<H> {
    /// A *strict* mapper handing out `[base, base + size)` of IO address space (page
    /// aligned): `iovm_free` invalidates the IOTLB before it returns, so the device loses
    /// access at once.
    pub fn new(hw: H, base: u64, size: u64) -> Result<Self> {
        Self::build(hw, base, size, false)
    }

    /// A *lazy* mapper: `iovm_free` unmaps but batches the IOTLB invalidation (up to
    /// 16 ranges, or until the space runs out, or [`flush`](Self::flush)). Until then the
    /// device may still reach the freed pages through stale IOTLB entries, as in Linux's
    /// lazy IOMMU mode; the IO addresses themselves are never handed out again before the
    /// invalidation.
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
        let space = RangeAllocator::new(base, size, page)?;
        Ok(IommuMapper {
            hw,
            base,
            size,
            lazy,
            state: crate::sync::Mutex::new(State {
                space,
                live: BTreeMap::new(),
                entries: BTreeMap::new(),
                pending: Vec::new(),
            }),
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
        self.state.lock().pending.len()
    }

    /// Live IO allocations and mapped pages (for leak checks).
    pub fn usage(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.live.len(), s.entries.len())
    }

    /// Invalidates the IOTLB for every freed range and makes them allocatable again.
    pub fn flush(&self) -> Result<()> {
        let mut s = self.state.lock();
        self.drain(&mut s)
    }

    fn drain(&self, s: &mut State) -> Result<()> {
        for &(start, len) in &s.pending {
            self.hw.invalidate(IoAddr(start), len)?;
        }
        for (start, len) in core::mem::take(&mut s.pending) {
            s.space.deallocate(start, len)?;
        }
        Ok(())
    }

    fn page(&self) -> u64 {
        self.hw.page_size().bytes()
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
        let len = pages.checked_mul(self.page()).ok_or(Error::Overflow {
            what: "iovm_alloc",
            start: 0,
            len: pages,
        })?;
        let mut s = self.state.lock();
        let a = match s.space.allocate(len, 0) {
            Ok(a) => a,
            Err(Error::NoSpace { .. }) if !s.pending.is_empty() => {
                // Out of space with freed ranges waiting: invalidate them now and retry.
                self.drain(&mut s)?;
                s.space.allocate(len, 0)?
            }
            Err(e) => return Err(e),
        };
        s.live.insert(a, pages);
        Ok(IoAddr(a))
    }

    fn iovm_free(&self, iova: IoAddr, pages: u64) -> Result<()> {
        let mut s = self.state.lock();
        match s.live.get(&iova.0) {
            Some(&p) if p == pages => {}
            Some(&p) => {
                return Err(Error::WrongSize {
                    free_fn: "iovm_free",
                    addr: iova.0,
                    allocated: p,
                    given: pages,
                })
            }
            None => {
                return Err(Error::NotAllocated {
                    free_fn: "iovm_free",
                    addr: iova.0,
                })
            }
        }
        let len = pages * self.page();
        // Inclusive end: a window may end at the top of the 64-bit space.
        let mapped: Vec<u64> = s
            .entries
            .range(iova.0..=iova.0 + (len - 1))
            .map(|(&k, _)| k)
            .collect();
        for k in mapped {
            self.hw.set_entry(IoAddr(k), None)?;
            s.entries.remove(&k);
        }
        s.live.remove(&iova.0);
        s.pending.push((iova.0, len));
        if !self.lazy || s.pending.len() >= FLUSH_BATCH {
            if let Err(e) = self.drain(&mut s) {
                // Not invalidated: the device may still reach the pages through the IOTLB.
                // The allocation stays live (unmapped), so the caller keeps the memory
                // behind it and can free it again once the IOMMU answers.
                s.pending.retain(|&(start, _)| start != iova.0);
                s.live.insert(iova.0, pages);
                return Err(e);
            }
        }
        Ok(())
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
        if !iova.0.is_multiple_of(page) || !pa.0.is_multiple_of(page) {
            return Err(Error::NotAligned {
                what: "iovm_insert_page (IO and physical addresses must be page aligned)",
                value: if iova.0.is_multiple_of(page) {
                    pa.0
                } else {
                    iova.0
                },
                align: page,
            });
        }
        if pages == 0 {
            return Ok(());
        }
        let span = pages
            .checked_mul(page)
            .filter(|&len| pa.0.checked_add(len - 1).is_some())
            .ok_or(Error::Overflow {
                what: "iovm_insert_run (the run passes the top of the address space)",
                start: pa.0,
                len: pages,
            })?;
        let mut s = self.state.lock();
        let inside = s
            .live
            .range(..=iova.0)
            .next_back()
            .is_some_and(|(&a, &p)| iova.0 - a < p * page && (p * page - (iova.0 - a)) >= span);
        if !inside {
            // IOKit panics on IOMapperInsertPage(0, …) and writes anywhere otherwise.
            return Err(Error::BadArgument {
                what: "iovm_insert_page outside any iovm_alloc allocation (or a run past its end)",
                value: iova.0,
            });
        }
        for i in 0..pages {
            let (io, phys) = (iova.0 + i * page, pa.0 + i * page);
            self.hw
                .set_entry(IoAddr(io), Some((PhysAddr(phys), access)))?;
            if s.entries.insert(io, (phys, access)).is_some() {
                // Replacing a live entry: the IOTLB may hold the old one.
                self.hw.invalidate(IoAddr(io), page)?;
            }
        }
        Ok(())
    }

    fn translate(&self, iova: IoAddr) -> Result<(PhysAddr, Access)> {
        let page = self.page();
        let s = self.state.lock();
        let key = iova.0 & !(page - 1);
        s.entries
            .get(&key)
            .map(|&(pa, acc)| (PhysAddr(pa + (iova.0 - key)), acc))
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

    /// Page-table entries and invalidations, recorded.
    #[derive(Default)]
    struct Table {
        entries: Mutex<BTreeMap<u64, (u64, Access)>>,
        invalidations: Mutex<Vec<(u64, u64)>>,
    }

    impl IommuHardware for Table {
        fn page_size(&self) -> PageSize {
            PageSize::new(4096).unwrap()
        }
        fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> Result<()> {
            let mut e = self.entries.lock();
            match entry {
                Some((pa, a)) => e.insert(iova.0, (pa.0, a)),
                None => e.remove(&iova.0),
            };
            Ok(())
        }
        fn invalidate(&self, iova: IoAddr, len: u64) -> Result<()> {
            self.invalidations.lock().push((iova.0, len));
            Ok(())
        }
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
}
