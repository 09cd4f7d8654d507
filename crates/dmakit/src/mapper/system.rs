//! [`MapperRegistry`]: the system mapper (IOKit's `IOMapper::gSystem`), per-device mappers
//! (`IOMapper::copyMapperForDevice`), and the C accessors on the system mapper
//! (`IOMapperIOVMAlloc`, `IOMapperIOVMFree`, `IOMapperInsertPage`).
//!
//! In IOKit the system mapper is a global that the platform decides once while booting:
//! there is one (VT-d, a DART) or there is none, and code that asks before the decision
//! waits for it. dmakit keeps the decision in a value the caller owns, so tests and several
//! simulated machines never share state through a global: build one registry per machine
//! (or put one in a `static`, which [`MapperRegistry::new`] allows, being `const`), decide it
//! with [`set_system_mapper`](MapperRegistry::set_system_mapper) and hand it to the code that
//! needs it. Asking before the decision is [`Error::NotReady`] instead of a wait.
//!
//! The accessors speak in *IO page numbers* (units of the mapper's page size, 32 bits as
//! IOKit's `ppnum_t`) and return an error where IOKit returns page 0. IOKit counts these
//! pages in the kernel's page size (`PAGE_SIZE`), which is the IOMMU's on the machines it
//! runs on (4 KiB pages and VT-d, 16 KiB pages and DART); with a mapper whose page is not
//! the CPU's, dmakit's numbers are still the mapper's pages, so a physical page number
//! given to [`insert_page`](MapperRegistry::insert_page) is in the mapper's page size too:
//!
//! ```
//! # use std::sync::Arc;
//! # use dmakit::mapper::{IommuMapper, Mapper, MapperRegistry};
//! # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//! # let iommu: Arc<dyn Mapper> =
//! #     Arc::new(IommuMapper::new(Arc::new(dmakit_sim::SimIommu::new(machine)), 0x10_0000, 1 << 28)?);
//! # let phys_page = 0x1234;
//! let mappers = MapperRegistry::new();
//! mappers.set_system_mapper(Some(iommu.clone()))?;
//! let base = mappers.iovm_alloc_pages(4)?;           // IOMapperIOVMAlloc
//! let io_page = mappers.insert_page(base, 2, phys_page)?; // IOMapperInsertPage
//! assert_eq!(io_page, base + 2);
//! let (pa, _) = iommu.translate(dmakit::IoAddr((io_page as u64) << 12))?;
//! assert_eq!(pa.0, (phys_page as u64) << 12);
//! mappers.iovm_free_pages(base, 4)?;                  // IOMapperIOVMFree
//! # Ok::<(), dmakit::Error>(())
//! ```
//!
//! Without a system mapper the device sees CPU physical addresses: `insert_page` returns the
//! physical page unchanged (whatever the base, 0 included, as IOKit looks for the system
//! mapper first), `iovm_free_pages` does nothing, and `iovm_alloc_pages` fails. Before the
//! system mapper is decided each accessor is [`Error::NotReady`] (IOKit's
//! `IOMapperIOVMAlloc` waits for the decision there; `IOMapperIOVMFree` and
//! `IOMapperInsertPage` do not wait and are only safe after it).

use super::{Access, Mapper};
use crate::{Error, IoAddr, PhysAddr, Result};
use alloc_crate::collections::BTreeMap;
use alloc_crate::sync::Arc;

/// A mapper shared between its owner and the code that uses it.
pub type SharedMapper = Arc<dyn Mapper>;

/// The platform's decision about the system mapper.
enum Decision {
    /// Not decided yet (IOKit's "waiting" state while booting).
    Undecided,
    /// Decided: the system mapper, or `None` when devices see physical addresses.
    Decided(Option<SharedMapper>),
}

/// The system mapper and the mappers devices name in their `iommu-parent` property: what
/// IOKit finds through `IOMapper::gSystem` and the service registry.
///
/// All methods take `&self`; the registry is `Send + Sync` and can be shared.
///
/// ```
/// use dmakit::mapper::{IommuMapper, Mapper, MapperRegistry, SharedMapper};
/// use dmakit::Error;
/// use std::sync::Arc;
/// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// let mappers = MapperRegistry::new();
/// assert!(matches!(mappers.system_mapper(), Err(Error::NotReady { .. })), "undecided");
/// mappers.set_system_mapper(None)?; // this platform has no system IOMMU
/// assert!(mappers.system_mapper()?.is_none());
/// assert_eq!(mappers.insert_page(1, 0, 0x42)?, 0x42, "devices see physical pages");
/// // A device behind its own IOMMU, registered under its IOMapperID.
/// let dart: SharedMapper =
///     Arc::new(IommuMapper::new(Arc::new(dmakit_sim::SimIommu::new(machine)), 0x10_0000, 1 << 24)?);
/// mappers.register_mapper(7, dart.clone())?;
/// let found = mappers.copy_mapper_for_device(&[7], 0)?.expect("iommu-parent 7");
/// assert!(Arc::ptr_eq(&found, &dart));
/// assert!(mappers.copy_mapper_for_device(&[], 0)?.is_none(), "no iommu-parent");
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct MapperRegistry {
    system: crate::sync::Mutex<Decision>,
    /// Mapper ID (IOKit's `IOMapperID` property, a phandle on device-tree platforms) →
    /// mapper.
    devices: crate::sync::Mutex<BTreeMap<u32, SharedMapper>>,
}

impl MapperRegistry {
    crate::sync::const_unless_loom! {
        /// A registry whose system mapper is not decided yet and that holds no device
        /// mapper.
        pub fn new() -> Self {
            MapperRegistry {
                system: crate::sync::Mutex::new(Decision::Undecided),
                devices: crate::sync::Mutex::new(BTreeMap::new()),
            }
        }
    }

    /// A registry decided at once: `system` is the system mapper, or `None` for a platform
    /// without one.
    pub fn with_system_mapper(system: Option<SharedMapper>) -> Self {
        let r = Self::new();
        *r.system.lock() = Decision::Decided(system);
        r
    }

    /// Decides the system mapper (what IOKit's platform code does once while booting,
    /// setting `IOMapper::gSystem` and waking `checkForSystemMapper` waiters). Deciding
    /// twice is [`Error::Busy`]: code may already have used the first answer.
    pub fn set_system_mapper(&self, system: Option<SharedMapper>) -> Result<()> {
        let mut d = self.system.lock();
        if let Decision::Decided(_) = *d {
            return Err(Error::Busy {
                what: "system mapper",
                addr: 0,
                why: "it was already decided (IOMapper::gSystem is set once)",
            });
        }
        *d = Decision::Decided(system);
        Ok(())
    }

    /// Whether the system mapper has been decided.
    pub fn is_decided(&self) -> bool {
        matches!(*self.system.lock(), Decision::Decided(_))
    }

    /// IOKit `IOMapper::gSystem` (after `checkForSystemMapper`): the system mapper, `None`
    /// when the platform has none, or [`Error::NotReady`] while undecided (IOKit blocks
    /// there instead).
    pub fn system_mapper(&self) -> Result<Option<SharedMapper>> {
        match &*self.system.lock() {
            Decision::Decided(m) => Ok(m.clone()),
            Decision::Undecided => Err(Error::NotReady {
                what: "system mapper (the platform has not decided whether there is one)",
                addr: 0,
            }),
        }
    }

    /// Registers a device IOMMU under its mapper ID (IOKit's `IOMapperID` property, or the
    /// phandle a device's `iommu-parent` names). An ID already taken is
    /// [`Error::BadArgument`].
    pub fn register_mapper(&self, id: u32, mapper: SharedMapper) -> Result<()> {
        let mut d = self.devices.lock();
        if d.contains_key(&id) {
            return Err(Error::BadArgument {
                what: "a mapper is already registered under this IOMapperID",
                value: id as u64,
            });
        }
        d.insert(id, mapper);
        Ok(())
    }

    /// Removes the mapper registered under `id` and returns it ([`Error::NotAttached`] if
    /// there is none).
    pub fn unregister_mapper(&self, id: u32) -> Result<SharedMapper> {
        self.devices.lock().remove(&id).ok_or(Error::NotAttached {
            what: "IOMMU mapper",
            why: "no mapper is registered under this IOMapperID",
        })
    }

    /// IOKit `IOMapper::copyMapperForDeviceWithIndex`: the mapper a device reaches memory
    /// through, from its `iommu-parent` property (`iommu_parent`: the mapper IDs it lists)
    /// and `index` into that list.
    ///
    /// * no property (an empty list): `Ok(None)`, the device has no IOMMU of its own;
    /// * `index` past the list: [`Error::OutOfBounds`];
    /// * an ID nothing is registered under: [`Error::NotAttached`] (IOKit waits for the
    ///   mapper service to appear, and returns NULL when it does not).
    pub fn copy_mapper_for_device(
        &self,
        iommu_parent: &[u32],
        index: usize,
    ) -> Result<Option<SharedMapper>> {
        if iommu_parent.is_empty() {
            return Ok(None);
        }
        let id = *iommu_parent.get(index).ok_or(Error::OutOfBounds {
            what: "iommu-parent",
            offset: index as u64,
            len: 1,
            limit: iommu_parent.len() as u64,
        })?;
        self.devices
            .lock()
            .get(&id)
            .cloned()
            .map(Some)
            .ok_or(Error::NotAttached {
                what: "IOMMU mapper",
                why: "the device's iommu-parent names a mapper ID nothing is registered under",
            })
    }

    /// IOKit `IOMapperIOVMAlloc`: `pages` pages of the system mapper's IO address space
    /// (mapped to nothing until [`insert_page`](Self::insert_page)); returns the first IO
    /// page number (IO address ÷ mapper page size).
    ///
    /// Where IOKit returns 0 this is an error: no system mapper ([`Error::Unsupported`]),
    /// the mapper's own failure (no space, zero pages), or an allocation whose page number
    /// does not fit 32 bits or is 0, which IOKit's interface cannot express
    /// ([`Error::Overflow`] / [`Error::BadArgument`]; the allocation is given back).
    pub fn iovm_alloc_pages(&self, pages: u32) -> Result<u32> {
        let mapper = self.system_mapper()?.ok_or(Error::Unsupported {
            what: "iovm_alloc_pages without a system mapper (IOKit's IOMapperIOVMAlloc returns 0)",
        })?;
        let iova = mapper.iovm_alloc(pages as u64)?;
        let page_number = iova.0 >> mapper.page_size().shift();
        let refuse = match u32::try_from(page_number) {
            Ok(0) => Error::BadArgument {
                what: "iovm_alloc_pages: the system mapper handed out IO page 0, which the \
                       page-number interface reserves for failure (start its window above 0)",
                value: iova.0,
            },
            Ok(n) => return Ok(n),
            Err(_) => Error::Overflow {
                what: "iovm_alloc_pages: the IO page number does not fit 32 bits",
                start: iova.0,
                len: pages as u64,
            },
        };
        mapper.iovm_free(iova, pages as u64)?;
        Err(refuse)
    }

    /// IOKit `IOMapperIOVMFree`: gives back an [`iovm_alloc_pages`](Self::iovm_alloc_pages)
    /// allocation (`page`, `pages` exactly as allocated), unmapping what was inserted. A
    /// no-op without a system mapper, as in IOKit; the mapper's errors (unknown page, wrong
    /// count) are returned.
    pub fn iovm_free_pages(&self, page: u32, pages: u32) -> Result<()> {
        match self.system_mapper()? {
            None => Ok(()),
            Some(mapper) => {
                let iova = io_address(&*mapper, page as u64, "iovm_free_pages")?;
                mapper.iovm_free(iova, pages as u64)
            }
        }
    }

    /// IOKit `IOMapperInsertPage`: maps IO page `base + offset` of the system mapper to the
    /// physical page `page` (page numbers in the mapper's page size), device read and
    /// write, and returns `base + offset`.
    ///
    /// Without a system mapper it returns `page` unchanged (the device sees physical
    /// addresses). `base == 0` is [`Error::BadArgument`] (IOKit panics); a page outside an
    /// allocation is the mapper's error; `base + offset` past 32 bits is
    /// [`Error::Overflow`].
    pub fn insert_page(&self, base: u32, offset: u32, page: u32) -> Result<u32> {
        let Some(mapper) = self.system_mapper()? else {
            return Ok(page);
        };
        if base == 0 {
            return Err(Error::BadArgument {
                what: "insert_page with base page 0 (no allocation starts there; IOKit panics)",
                value: 0,
            });
        }
        let io_page = base.checked_add(offset).ok_or(Error::Overflow {
            what: "insert_page: base + offset",
            start: base as u64,
            len: offset as u64,
        })?;
        let iova = io_address(&*mapper, io_page as u64, "insert_page")?;
        let pa = io_address(&*mapper, page as u64, "insert_page (physical page)")?;
        mapper.iovm_insert_page(iova, PhysAddr(pa.0), Access::READ_WRITE)?;
        Ok(io_page)
    }
}

/// The address of page number `page` in `mapper`'s page size.
fn io_address(mapper: &dyn Mapper, page: u64, what: &'static str) -> Result<IoAddr> {
    let shift = mapper.page_size().shift();
    page.checked_shl(shift)
        .filter(|a| a >> shift == page)
        .map(IoAddr)
        .ok_or(Error::Overflow {
            what,
            start: page,
            len: 1,
        })
}

impl Default for MapperRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for MapperRegistry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let system = match &*self.system.lock() {
            Decision::Undecided => "undecided",
            Decision::Decided(None) => "none",
            Decision::Decided(Some(_)) => "present",
        };
        f.debug_struct("MapperRegistry")
            .field("system", &system)
            .field("device_mappers", &self.devices.lock().len())
            .finish()
    }
}
