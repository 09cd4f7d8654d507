//! IOMMU mappers: IOKit's IOMapper and its C accessors.
//!
//! A [`Mapper`] owns an IO virtual address space: [`iovm_alloc`](Mapper::iovm_alloc) takes
//! pages of it, [`iovm_insert_page`](Mapper::iovm_insert_page) points one at a physical page
//! with read and/or write permission, [`iovm_free`](Mapper::iovm_free) gives pages back, and
//! [`translate`](Mapper::translate) answers what an IO address maps to.
//!
//! [`IommuMapper`] is the mapper for any IOMMU whose hardware implements [`IommuHardware`]
//! (the simulated IOMMU of `dmakit-sim`, or your kernel's). It keeps IOKit's contract and
//! adds the rule that makes an IOMMU safe: **a freed IO address is not reused until the
//! IOTLB has been invalidated for it.** A strict mapper ([`IommuMapper::new`]) invalidates
//! in `iovm_free`; a lazy one ([`IommuMapper::new_lazy`]) keeps freed ranges in a flush
//! queue drained (one invalidation for the batch) when it fills, when the space runs out,
//! or on [`flush`](IommuMapper::flush).
//!
//! [`MapperRegistry`] holds the *system* mapper (IOKit's `IOMapper::gSystem`, decided once by
//! the platform, possibly "none") and the mappers devices name in their `iommu-parent`
//! (`copyMapperForDevice`), and offers IOKit's page-number accessors on the system mapper:
//! `iovm_alloc_pages`, `iovm_free_pages`, `insert_page`.
//!
//! ```
//! # use dmakit::mapper::{Access, IommuHardware, IommuMapper, Mapper};
//! # fn demo<H: IommuHardware>(hw: H) -> dmakit::Result<()> {
//! let mapper = IommuMapper::new(hw, 0x1_0000_0000, 0x1000_0000)?; // 256 MiB of IOVA at 4 GiB
//! let iova = mapper.iovm_alloc(2)?;
//! mapper.iovm_insert_page(iova, dmakit::PhysAddr(0x8_0000), Access::READ_WRITE)?;
//! mapper.iovm_free(iova, 2)?;
//! # Ok(()) }
//! ```

mod iommu;
mod iova_shard;
mod placement;
mod system;

pub use iommu::{Access, IommuHardware, IommuMapper};
pub use placement::{allocate_placed, IovaPlacement};
pub use system::{MapperRegistry, SharedMapper};

use crate::{IoAddr, PageSize, PhysAddr, Result};

/// The checks every [`Mapper::iovm_insert_run`] makes before it maps anything: `iova` and
/// `pa` aligned to `page` (`NotAligned`, naming `what`), and the run not passing the top of
/// the address space (`Overflow`). Returns the run's length in bytes (0 for no pages).
pub fn check_run(
    what: &'static str,
    page: u64,
    iova: IoAddr,
    pa: PhysAddr,
    pages: u64,
) -> Result<u64> {
    if !iova.0.is_multiple_of(page) || !pa.0.is_multiple_of(page) {
        return Err(crate::Error::NotAligned {
            what,
            value: if iova.0.is_multiple_of(page) {
                pa.0
            } else {
                iova.0
            },
            align: page,
        });
    }
    if pages == 0 {
        return Ok(0);
    }
    pages
        .checked_mul(page)
        .filter(|&len| pa.0.checked_add(len - 1).is_some() && iova.0.checked_add(len - 1).is_some())
        .ok_or(crate::Error::Overflow {
            what: "iovm_insert_run (the run passes the top of the address space)",
            start: pa.0,
            len: pages,
        })
}

/// IOKit's IOMapper.
pub trait Mapper: Send + Sync {
    /// The IOMMU page size.
    /// IOKit: `IOMapper::getPageSize`.
    fn page_size(&self) -> PageSize;

    /// IOMapperIOVMAlloc: `pages` pages of IO address space (not mapped yet).
    /// IOKit: `IOMapper::iovmAlloc`.
    fn iovm_alloc(&self, pages: u64) -> Result<IoAddr>;

    /// `pages` pages of IO address space where a device with `place` can use them: inside
    /// its window, at its alignment, not crossing its boundary. The default takes
    /// [`iovm_alloc`](Self::iovm_alloc)'s range and gives it back with `NoSuitableMemory`
    /// when it does not fit; a mapper that can choose (as [`IommuMapper`] does) overrides
    /// it. Freed with [`iovm_free`](Self::iovm_free) like any allocation.
    /// IOKit: `IOMapper::iovmMapMemory` with an `IODMAMapSpecification`.
    fn iovm_alloc_placed(&self, pages: u64, place: &IovaPlacement) -> Result<IoAddr> {
        let len = pages
            .checked_mul(self.page_size().bytes())
            .ok_or(crate::Error::Overflow {
                what: "iovm_alloc_placed",
                start: 0,
                len: pages,
            })?;
        let iova = self.iovm_alloc(pages)?;
        if place.fits(iova.0, len) {
            return Ok(iova);
        }
        self.iovm_free(iova, pages)?;
        Err(place.refusal(
            "IO address space (this mapper cannot choose where its ranges go, and the one it \
             gave is outside the device's window, alignment or boundary)",
            len,
        ))
    }

    /// IOMapperIOVMFree: unmaps and gives back `pages` pages from `iova` (exactly an
    /// allocation). A failure leaves the allocation live (perhaps partly unmapped): the
    /// device may still reach its pages, so the caller keeps them and frees again later.
    /// IOKit: `IOMapper::iovmFree`.
    fn iovm_free(&self, iova: IoAddr, pages: u64) -> Result<()>;

    /// IOMapperInsertPage: maps the IO page at `iova` (inside an allocation) to the physical
    /// page at `pa`, with `access`.
    /// IOKit: `IOMapper::iovmInsert`.
    fn iovm_insert_page(&self, iova: IoAddr, pa: PhysAddr, access: Access) -> Result<()>;

    /// Maps the `pages` IO pages from `iova` (all inside one allocation) to the physically
    /// contiguous pages from `pa`, all with `access`: what `pages` calls of
    /// [`iovm_insert_page`](Self::iovm_insert_page) do, which is the default. A mapper
    /// overrides it to do the run in one step: one lock, one hardware mapping where the
    /// hardware maps ranges (VFIO maps a run that is also contiguous in the process's memory
    /// with one `VFIO_IOMMU_MAP_DMA`, so a 2 MiB huge page costs one of the container's
    /// limited mappings, not 512). On an error some pages of the run may be mapped; freeing
    /// the allocation unmaps them. `pages` 0 maps nothing.
    /// IOKit: `IOMapper::iovmInsert` with a page list.
    fn iovm_insert_run(
        &self,
        iova: IoAddr,
        pa: PhysAddr,
        pages: u64,
        access: Access,
    ) -> Result<()> {
        let page = self.page_size().bytes();
        for i in 0..pages {
            let off = i.checked_mul(page).ok_or(crate::Error::Overflow {
                what: "iovm_insert_run",
                start: iova.0,
                len: pages,
            })?;
            let (Some(io), Some(phys)) = (iova.0.checked_add(off), pa.0.checked_add(off)) else {
                return Err(crate::Error::Overflow {
                    what: "iovm_insert_run (the run passes the top of the address space)",
                    start: iova.0.max(pa.0),
                    len: pages,
                });
            };
            self.iovm_insert_page(IoAddr(io), PhysAddr(phys), access)?;
        }
        Ok(())
    }

    /// What `iova` maps to (physical address of that byte) and with which access.
    /// IOKit: `IOMapper::mapAddr`, `mapToPhysicalAddress`.
    fn translate(&self, iova: IoAddr) -> Result<(PhysAddr, Access)>;
}
