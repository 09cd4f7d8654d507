//! [`VfioBus`]: the functions bound to `vfio-pci`, as the device seam's [`PciBus`].
//!
//! [`VfioBus::open`] lists the functions sysfs shows bound to `vfio-pci` ([`VfioBus::scan`]),
//! opens them all in **one** [`Container`] (so they share one IOMMU address space) and makes
//! that container's [`VfioMapper`] once the first has opened (the IOMMU type is only set when
//! a group attaches). Every function's [`dma`](PciFunction::dma) is that mapper. A function
//! that is bound to `vfio-pci` but cannot be opened (its IOMMU group is not viable, another
//! process has it) is left out and kept in [`skipped`](VfioBus::skipped) with the reason,
//! which [`find`](PciBus::find) repeats when nothing else matches.
//! [`VfioBusBuilder::addresses`] opens exactly the functions given instead, and any failure
//! is the builder's error.
//!
//! ```no_run
//! use dmakit::device::{PciBus, PciMatch};
//! use dmakit_linux::{Host, vfio::VfioBus};
//! use std::sync::Arc;
//!
//! let host = Arc::new(Host::new()?);
//! let bus = VfioBus::open(host)?;
//! let nvme = bus.find(&PciMatch::class(0x01_08_02))?;
//! println!("NVMe at {}", nvme.address());
//! # Ok::<(), dmakit::Error>(())
//! ```

use super::container::{Container, DEV_VFIO};
use super::device::VfioDevice;
use super::function::VfioFunction;
use super::mapper::VfioMapper;
use super::pci::{PciAddress, PciFunction as SysfsFunction, SYSFS_PCI_DEVICES};
use crate::hints::intern;
use crate::host::Host;
use dmakit::device::{PciBus, PciFunction, PciMatch};
use dmakit::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The functions bound to `vfio-pci`, opened in one container with one mapper.
pub struct VfioBus {
    functions: Vec<Arc<VfioFunction>>,
    skipped: Vec<(PciAddress, Error)>,
    mapper: Option<Arc<VfioMapper>>,
}

/// How [`VfioBus`] finds and opens its functions.
#[derive(Debug)]
#[must_use = "a builder does nothing until `open`"]
pub struct VfioBusBuilder {
    host: Arc<Host>,
    sysfs_root: PathBuf,
    dev_dir: PathBuf,
    address_limit: u64,
    addresses: Option<Vec<PciAddress>>,
}

impl VfioBusBuilder {
    /// Where PCI functions are listed (default [`SYSFS_PCI_DEVICES`]).
    pub fn sysfs_root(mut self, root: impl AsRef<Path>) -> Self {
        self.sysfs_root = root.as_ref().to_path_buf();
        self
    }

    /// Where the VFIO nodes are (default [`DEV_VFIO`]).
    pub fn dev_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dev_dir = dir.as_ref().to_path_buf();
        self
    }

    /// The highest IO address the mapper hands out (default: none below the IOMMU's own
    /// ranges). Give the narrowest DMA limit of the functions that will share it.
    pub fn address_limit(mut self, limit: u64) -> Self {
        self.address_limit = limit;
        self
    }

    /// Opens exactly these functions (instead of every function bound to `vfio-pci`); each
    /// one that cannot be opened makes [`open`](Self::open) fail.
    pub fn addresses(mut self, addresses: impl IntoIterator<Item = PciAddress>) -> Self {
        self.addresses = Some(addresses.into_iter().collect());
        self
    }

    /// Finds and opens the functions.
    pub fn open(self) -> Result<VfioBus> {
        let explicit = self.addresses.is_some();
        let mut addresses = match self.addresses {
            Some(a) => a,
            None => VfioBus::scan(&self.sysfs_root)?,
        };
        addresses.sort_unstable();
        addresses.dedup();
        let mut bus = VfioBus {
            functions: Vec::new(),
            skipped: Vec::new(),
            mapper: None,
        };
        if addresses.is_empty() {
            return Ok(bus);
        }
        let container = Arc::new(Container::open_in(&self.dev_dir)?);
        let mut devices = Vec::new();
        for a in addresses {
            match VfioDevice::open_in(&container, &self.sysfs_root, a) {
                Ok(d) => devices.push(d),
                Err(e) if !explicit => bus.skipped.push((a, e)),
                Err(e) => return Err(e),
            }
        }
        if devices.is_empty() {
            return Ok(bus);
        }
        let mapper = Arc::new(VfioMapper::new(
            container,
            self.host.clone(),
            self.address_limit,
        )?);
        for d in devices {
            let a = d.address();
            match VfioFunction::new(d, self.host.clone(), mapper.clone()) {
                Ok(f) => bus.functions.push(Arc::new(f)),
                Err(e) if !explicit => bus.skipped.push((a, e)),
                Err(e) => return Err(e),
            }
        }
        bus.mapper = Some(mapper);
        Ok(bus)
    }
}

impl VfioBus {
    /// Every function bound to `vfio-pci` under [`SYSFS_PCI_DEVICES`], in one container
    /// with IO addresses for `host`'s memory.
    pub fn open(host: Arc<Host>) -> Result<VfioBus> {
        Self::builder(host).open()
    }

    /// A builder with the defaults of [`open`](Self::open).
    pub fn builder(host: Arc<Host>) -> VfioBusBuilder {
        VfioBusBuilder {
            host,
            sysfs_root: PathBuf::from(SYSFS_PCI_DEVICES),
            dev_dir: PathBuf::from(DEV_VFIO),
            address_limit: u64::MAX,
            addresses: None,
        }
    }

    /// The functions under the sysfs directory `root` that are bound to `vfio-pci`, in
    /// address order. Entries whose names are not PCI addresses are ignored; a missing
    /// `root` is an error.
    pub fn scan(root: impl AsRef<Path>) -> Result<Vec<PciAddress>> {
        let root = root.as_ref();
        let entries = std::fs::read_dir(root).map_err(|e| Error::Os {
            op: "list PCI functions (read the sysfs directory)",
            errno: e.raw_os_error().unwrap_or(0),
            hint: intern(
                format!("{} (is sysfs mounted?)", root.display()),
                "is sysfs mounted?",
            ),
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(a) = name.to_str().and_then(|n| PciAddress::parse(n).ok()) else {
                continue;
            };
            let bound = SysfsFunction::find(root, a)
                .ok()
                .and_then(|f| f.driver())
                .is_some_and(|d| d == "vfio-pci");
            if bound {
                out.push(a);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The functions, in address order, as [`VfioFunction`]s.
    pub fn vfio_functions(&self) -> &[Arc<VfioFunction>] {
        &self.functions
    }

    /// The functions bound to `vfio-pci` that could not be opened, and why.
    pub fn skipped(&self) -> &[(PciAddress, Error)] {
        &self.skipped
    }

    /// The container's mapper (`None` when no function opened).
    pub fn mapper(&self) -> Option<&Arc<VfioMapper>> {
        self.mapper.as_ref()
    }
}

impl PciBus for VfioBus {
    fn functions(&self) -> Vec<Arc<dyn PciFunction>> {
        self.functions
            .iter()
            .map(|f| f.clone() as Arc<dyn PciFunction>)
            .collect()
    }

    /// The first function `m` matches; none is [`Error::NotAttached`], naming the functions
    /// bound to `vfio-pci` that could not be opened, if any.
    fn find(&self, m: &PciMatch) -> Result<Arc<dyn PciFunction>> {
        if let Some(f) = self.matching(m).into_iter().next() {
            return Ok(f);
        }
        let why = if self.skipped.is_empty() {
            "no function bound to vfio-pci matches (vendor, device, class or address): bind it \
             to vfio-pci first"
        } else {
            let list: Vec<String> = self
                .skipped
                .iter()
                .map(|(a, e)| format!("{a}: {e}"))
                .collect();
            intern(
                format!(
                    "no function opened matches; bound to vfio-pci but not opened: {}",
                    list.join("; ")
                ),
                "no function opened matches (some bound to vfio-pci could not be opened: see VfioBus::skipped)",
            )
        };
        Err(Error::NotAttached {
            what: "PCI function",
            why,
        })
    }
}

impl std::fmt::Debug for VfioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioBus")
            .field("functions", &self.functions)
            .field("skipped", &self.skipped)
            .finish()
    }
}
