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
//! use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
//! use dmakit::mapper::{Access, IommuMapper, Mapper};
//! use dmakit::Direction;
//! use dmakit_sim::{MachineBuilder, SimIommu};
//! use std::sync::Arc;
//!
//! // Coherent: mapper calls alone do no cache maintenance (a `DmaCommand` does).
//! let machine = Arc::new(MachineBuilder::new().coherent(true).build()?);
//! let iommu = Arc::new(SimIommu::new(machine.clone())); // the hardware
//! let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 0x1000_0000)?; // 256 MiB of IOVA at 4 GiB
//! let page = BufferMemoryDescriptor::with_bytes(machine, b"seen through the IOMMU", Direction::Out)?;
//! let iova = mapper.iovm_alloc(2)?;
//! mapper.iovm_insert_page(iova, page.physical_segment(0)?.addr, Access::READ)?;
//! let mut seen = [0u8; 22];
//! iommu.device_read(iova, &mut seen)?; // what the device gets at that IO address
//! assert_eq!(&seen, b"seen through the IOMMU");
//! mapper.iovm_free(iova, 2)?;
//! assert!(iommu.device_read(iova, &mut seen).is_err(), "unmapped and invalidated");
//! # Ok::<(), dmakit::Error>(())
//! ```

mod iommu;
mod iova_shard;
mod placement;
mod system;

pub use iommu::{Access, IommuHardware, IommuMapper};
pub use placement::{allocate_placed, IovaPlacement};
pub use system::{MapperRegistry, SharedMapper};

use crate::{Error, IoAddr, PageSize, PhysAddr, Result};

/// The checks every [`Mapper::iovm_insert_run`] makes before it maps anything: `iova` and
/// `pa` aligned to `page` (`NotAligned`, naming `what`), and the run not passing the top of
/// the address space (`Overflow`). Returns the run's length in bytes (0 for no pages). A
/// `page` that is not a power of two is `BadAlignment`.
pub fn check_run(
    what: &'static str,
    page: u64,
    iova: IoAddr,
    pa: PhysAddr,
    pages: u64,
) -> Result<u64> {
    if !page.is_power_of_two() {
        return Err(crate::Error::BadAlignment { what, align: page });
    }
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
///
/// Code that maps memory for a device takes `&dyn Mapper` (a [`DmaCommand`] in mapped mode
/// does), so the same code runs over the simulated IOMMU, VFIO or VT-d:
///
/// [`DmaCommand`]: crate::dma::DmaCommand
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
/// use dmakit::mapper::{Access, IommuMapper, Mapper};
/// use dmakit::{Direction, IoAddr};
/// use std::sync::Arc;
///
/// /// Maps every page of `md` (page-aligned, whole pages) at consecutive IO addresses.
/// fn map_all(mapper: &dyn Mapper, md: &dyn MemoryDescriptor) -> dmakit::Result<IoAddr> {
///     let page = mapper.page_size().bytes();
///     let iova = mapper.iovm_alloc(md.length() / page)?;
///     let mut off = 0;
///     while off < md.length() {
///         let run = md.physical_segment(off)?; // pages of one physical run at once
///         mapper.iovm_insert_run(IoAddr(iova.0 + off), run.addr, run.len / page, Access::READ)?;
///         off += run.len;
///     }
///     Ok(iova)
/// }
///
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().fragmentation(1.0).build()?);
/// let mapper = IommuMapper::new(Arc::new(dmakit_sim::SimIommu::new(machine.clone())), 0x1_0000_0000, 1 << 30)?;
/// let md = BufferMemoryDescriptor::new(machine, BufferOptions::new(0x4000, Direction::Out))?;
/// let iova = map_all(&mapper, &md)?;
/// for off in (0..0x4000).step_by(0x1000) {
///     let (pa, access) = mapper.translate(IoAddr(iova.0 + off + 8))?;
///     assert_eq!(pa.0, md.physical_segment(off)?.addr.0 + 8);
///     assert_eq!(access, Access::READ);
/// }
/// mapper.iovm_free(iova, 4)?;
/// assert_eq!(mapper.usage(), (0, 0));
/// # Ok::<(), dmakit::Error>(())
/// ```
pub trait Mapper: Send + Sync {
    /// The IOMMU page size.
    /// IOKit: `IOMapper::getPageSize`.
    fn page_size(&self) -> PageSize;

    /// IOMapperIOVMAlloc: `pages` pages of IO address space (not mapped yet).
    /// IOKit: `IOMapper::iovmAlloc`.
    ///
    /// ```
    /// # use dmakit::mapper::Mapper;
    /// # use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// # use dmakit::mapper::IommuMapper;
    /// # use dmakit::Direction;
    /// # use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    /// # let iommu = Arc::new(dmakit_sim::SimIommu::new(machine.clone()));
    /// # let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 28)?;
    /// # let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::Out).contiguous(true))?;
    /// # let pa = buf.physical_segment(0)?.addr;
    /// let a = mapper.iovm_alloc(4)?;
    /// let b = mapper.iovm_alloc(4)?;
    /// assert!(a.0 + 4 * 0x1000 <= b.0 || b.0 + 4 * 0x1000 <= a.0, "never overlapping");
    /// let (base, size) = mapper.window();
    /// assert!(a.0 >= base.0 && a.0 + 0x4000 <= base.0 + size);
    /// assert!(mapper.iovm_alloc(0).is_err());
    /// assert!(mapper.iovm_alloc(1 << 20).is_err(), "more than the 256 MiB window");
    /// # mapper.iovm_free(a, 4)?; mapper.iovm_free(b, 4)?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
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
    ///
    /// ```
    /// # use dmakit::mapper::{Access, Mapper};
    /// # use dmakit::Error;
    /// # use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// # use dmakit::mapper::IommuMapper;
    /// # use dmakit::Direction;
    /// # use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    /// # let iommu = Arc::new(dmakit_sim::SimIommu::new(machine.clone()));
    /// # let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 28)?;
    /// # let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::Out).contiguous(true))?;
    /// # let pa = buf.physical_segment(0)?.addr;
    /// let iova = mapper.iovm_alloc(2)?;
    /// mapper.iovm_insert_page(iova, pa, Access::READ_WRITE)?;
    /// assert!(mapper.iovm_free(iova, 1).is_err(), "not the allocation's size: nothing freed");
    /// assert!(mapper.translate(iova).is_ok());
    /// mapper.iovm_free(iova, 2)?;
    /// assert!(matches!(mapper.translate(iova), Err(Error::NotMapped { .. })));
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    fn iovm_free(&self, iova: IoAddr, pages: u64) -> Result<()>;

    /// IOMapperInsertPage: maps the IO page at `iova` (inside an allocation) to the physical
    /// page at `pa`, with `access`.
    /// IOKit: `IOMapper::iovmInsert`.
    ///
    /// ```
    /// # use dmakit::mapper::{Access, Mapper};
    /// # use dmakit::{Error, IoAddr, PhysAddr};
    /// # use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// # use dmakit::mapper::IommuMapper;
    /// # use dmakit::Direction;
    /// # use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    /// # let iommu = Arc::new(dmakit_sim::SimIommu::new(machine.clone()));
    /// # let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 28)?;
    /// # let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::Out).contiguous(true))?;
    /// # let pa = buf.physical_segment(0)?.addr;
    /// let iova = mapper.iovm_alloc(1)?;
    /// mapper.iovm_insert_page(iova, pa, Access::WRITE)?; // the device may only write it
    /// assert_eq!(mapper.translate(iova)?, (pa, Access::WRITE));
    /// // Outside any allocation, or not page aligned: refused, nothing mapped.
    /// let past = IoAddr(iova.0 + 0x1000);
    /// assert!(matches!(mapper.iovm_insert_page(past, pa, Access::READ), Err(Error::BadArgument { .. })));
    /// let odd = PhysAddr(pa.0 + 8);
    /// assert!(matches!(mapper.iovm_insert_page(iova, odd, Access::READ), Err(Error::NotAligned { .. })));
    /// # mapper.iovm_free(iova, 1)?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
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
    ///
    /// ```
    /// # use dmakit::mapper::{Access, Mapper};
    /// # use dmakit::IoAddr;
    /// # use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// # use dmakit::mapper::IommuMapper;
    /// # use dmakit::Direction;
    /// # use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    /// # let iommu = Arc::new(dmakit_sim::SimIommu::new(machine.clone()));
    /// # let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 28)?;
    /// # let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::Out).contiguous(true))?;
    /// # let pa = buf.physical_segment(0)?.addr;
    /// // `buf` is one physical run of two pages at `pa`.
    /// let iova = mapper.iovm_alloc(2)?;
    /// mapper.iovm_insert_run(iova, pa, 2, Access::READ)?;
    /// assert_eq!(mapper.translate(IoAddr(iova.0 + 0x1004))?.0 .0, pa.0 + 0x1004);
    /// assert_eq!(mapper.usage(), (1, 2), "one allocation, two pages mapped");
    /// # mapper.iovm_free(iova, 2)?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
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

    /// Allocates `pages` pages of IO address space where `place` allows and maps them, in
    /// order, to the physically contiguous pages from `pa`, all with `access`:
    /// [`iovm_alloc_placed`](Self::iovm_alloc_placed) then
    /// [`iovm_insert_run`](Self::iovm_insert_run), which is the default. A mapper overrides
    /// it to do both in one step ([`IommuMapper`] takes a cached range and maps it under one
    /// lock). Freed with [`iovm_free`](Self::iovm_free) like any allocation. On an error
    /// nothing stays allocated, unless unmapping the pages already mapped failed too (the
    /// IOMMU refused an entry, then refused to clear one): then the error is
    /// [`Error::LeftMapped`], naming the allocation, which stays live and may still map
    /// some pages of the run, as after a failed `iovm_free`; the memory behind the run must
    /// stay held until freeing that allocation succeeds.
    /// IOKit: `IOMapper::iovmMapMemory` for memory that is one physical run.
    ///
    /// ```
    /// # use dmakit::mapper::{Access, IovaPlacement, Mapper};
    /// # use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// # use dmakit::mapper::IommuMapper;
    /// # use dmakit::Direction;
    /// # use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    /// # let iommu = Arc::new(dmakit_sim::SimIommu::new(machine.clone()));
    /// # let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 28)?;
    /// # let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::Out).contiguous(true))?;
    /// # let pa = buf.physical_segment(0)?.addr;
    /// // `buf` is one physical run of two pages at `pa`; the device reads it.
    /// let iova = mapper.iovm_map_run(2, &IovaPlacement::ANY, pa, Access::READ)?;
    /// assert_eq!(mapper.translate(iova)?, (pa, Access::READ));
    /// assert_eq!(mapper.usage(), (1, 2), "one allocation, two pages mapped");
    /// mapper.iovm_free(iova, 2)?;
    /// assert_eq!(mapper.usage(), (0, 0));
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    fn iovm_map_run(
        &self,
        pages: u64,
        place: &IovaPlacement,
        pa: PhysAddr,
        access: Access,
    ) -> Result<IoAddr> {
        map_in_two_steps(self, pages, place, (pa, access))
    }

    /// What `iova` maps to (physical address of that byte) and with which access.
    /// IOKit: `IOMapper::mapAddr`, `mapToPhysicalAddress`.
    ///
    /// ```
    /// # use dmakit::mapper::{Access, Mapper};
    /// # use dmakit::{Error, IoAddr};
    /// # use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// # use dmakit::mapper::IommuMapper;
    /// # use dmakit::Direction;
    /// # use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    /// # let iommu = Arc::new(dmakit_sim::SimIommu::new(machine.clone()));
    /// # let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 28)?;
    /// # let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::Out).contiguous(true))?;
    /// # let pa = buf.physical_segment(0)?.addr;
    /// let iova = mapper.iovm_alloc(2)?;
    /// mapper.iovm_insert_page(iova, pa, Access::READ)?;
    /// assert_eq!(mapper.translate(IoAddr(iova.0 + 0x123))?.0 .0, pa.0 + 0x123);
    /// let second = IoAddr(iova.0 + 0x1000); // allocated, never inserted
    /// assert!(matches!(mapper.translate(second), Err(Error::NotMapped { .. })));
    /// # mapper.iovm_free(iova, 2)?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    fn translate(&self, iova: IoAddr) -> Result<(PhysAddr, Access)>;
}

/// [`Mapper::iovm_map_run`] as two calls: [`iovm_alloc_placed`](Mapper::iovm_alloc_placed),
/// then [`iovm_insert_run`](Mapper::iovm_insert_run), freeing the allocation if the
/// mapping fails ([`undo_map`]).
pub(crate) fn map_in_two_steps<M: Mapper + ?Sized>(
    mapper: &M,
    pages: u64,
    place: &IovaPlacement,
    (pa, access): (PhysAddr, Access),
) -> Result<IoAddr> {
    let iova = mapper.iovm_alloc_placed(pages, place)?;
    match mapper.iovm_insert_run(iova, pa, pages, access) {
        Ok(()) => Ok(iova),
        Err(e) => Err(undo_map(mapper, iova, pages, "iovm_map_run", e)),
    }
}

/// Frees the allocation `(iova, pages)` of a mapping that failed with `cause` (or must not
/// be used, `cause` saying why), and returns the error to report: `cause` once the
/// allocation is gone, else [`Error::LeftMapped`] naming it (with `what`), as the pages it
/// maps may still reach the memory. For mappers and their callers that map in steps and
/// must undo a step that failed.
///
/// ```
/// # use dmakit::mapper::{undo_map, Access, IommuMapper, Mapper};
/// # use dmakit::{Error, PhysAddr};
/// # use std::sync::Arc;
/// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
/// # let iommu = Arc::new(dmakit_sim::SimIommu::new(machine.clone()));
/// let mapper = IommuMapper::new(iommu, 0x1_0000_0000, 1 << 28)?;
/// let iova = mapper.iovm_alloc(2)?;
/// let odd = PhysAddr(0x8000_0800); // not page aligned: the insert is refused
/// let e = mapper.iovm_insert_run(iova, odd, 2, Access::READ).unwrap_err();
/// let e = undo_map(&mapper, iova, 2, "my mapping", e);
/// assert!(matches!(e, Error::NotAligned { .. }), "freed, so the cause comes back");
/// assert_eq!(mapper.usage(), (0, 0));
/// # Ok::<(), dmakit::Error>(())
/// ```
pub fn undo_map<M: Mapper + ?Sized>(
    mapper: &M,
    iova: IoAddr,
    pages: u64,
    what: &'static str,
    cause: Error,
) -> Error {
    match mapper.iovm_free(iova, pages) {
        Ok(()) => cause,
        Err(unmap) => left_mapped(what, (iova, pages), cause, unmap),
    }
}

/// [`Error::LeftMapped`] for the allocation `(iova, pages)`.
pub(crate) fn left_mapped(
    what: &'static str,
    (iova, pages): (IoAddr, u64),
    cause: Error,
    unmap: Error,
) -> Error {
    Error::LeftMapped {
        what,
        iova: iova.0,
        pages,
        cause: cause.io_return(),
        unmap: unmap.io_return(),
    }
}
