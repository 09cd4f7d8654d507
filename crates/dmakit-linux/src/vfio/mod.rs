//! # VFIO: real devices, driven from this process through the IOMMU
//!
//! Linux's VFIO gives a process a PCI function: its registers (BARs mapped into the process),
//! its interrupts (eventfds) and DMA that the IOMMU confines to the memory the process maps
//! for it. This module is dmakit's platform for that, in IOKit's terms:
//!
//! | VFIO | here | IOKit |
//! | --- | --- | --- |
//! | `/dev/vfio/vfio` + `VFIO_SET_IOMMU` (type1 v2) | [`Container`] | the system's IOMapper |
//! | `/dev/vfio/<group>` | attached by [`VfioDevice::open`] | — |
//! | `VFIO_IOMMU_GET_INFO` capability chain | [`IommuInfo`] | — |
//! | `VFIO_IOMMU_MAP_DMA` / `UNMAP_DMA` | [`VfioMapper`] (a [`Mapper`](dmakit::mapper::Mapper)) | IOMapper, `IOMapperInsertPage` |
//! | a BAR region, `mmap`ed | [`Bar`] → [`DeviceMemory`](dmakit::descriptor::DeviceMemory) | IODeviceMemory + `IOMappedRead32` |
//! | `VFIO_DEVICE_SET_IRQS` with an eventfd | [`Msi`] → [`InterruptSink`](dmakit::dma::InterruptSink) | IOInterruptEventSource |
//! | sysfs `/sys/bus/pci/devices/<addr>` | [`PciFunction`] | the registry entry |
//! | all of the above for one function | [`VfioFunction`] (a [`dmakit::device::PciFunction`]) | `IOPCIDevice` |
//! | the functions bound to `vfio-pci` | [`VfioBus`] (a [`dmakit::device::PciBus`]) | matching in the registry |
//!
//! Drivers written against the core's device seam ([`dmakit::device`]) use
//! [`VfioBus`] and [`VfioFunction`]; the pieces below them stay available for drivers that
//! want VFIO itself.
//!
//! ```no_run
//! use dmakit_linux::{Host, vfio::{Bar, Container, PciAddress, VfioDevice, VfioMapper}};
//! use std::sync::Arc;
//!
//! let host = Arc::new(Host::new()?);                       // root: physical addresses
//! let container = Arc::new(Container::open()?);
//! let dev = VfioDevice::open(&container, PciAddress::parse("0000:00:05.0")?)?;
//! let mapper = Arc::new(VfioMapper::new(container.clone(), host.clone(), (1 << 28) - 1)?);
//! let bar0 = Bar::map(&dev, 0, host.clone())?;
//! dev.enable_bus_master()?;
//! // ... DmaCommand::builder(host).mapper(mapper.clone()).build() for the buffers ...
//! mapper.check_unmapped()?;                                // nothing left for the device
//! # Ok::<(), dmakit::Error>(())
//! ```
//!
//! Errors say which step failed and how to fix it: a function that does not exist, one
//! without an IOMMU group, one not bound to `vfio-pci`, a group that is not viable are each
//! an [`Error::NotAttached`](dmakit::Error::NotAttached); a low `RLIMIT_MEMLOCK` is
//! [`Error::CannotWire`](dmakit::Error::CannotWire) naming the limit; an IOVA outside the
//! valid ranges is [`Error::BadArgument`](dmakit::Error::BadArgument) listing them.
//!
//! All `unsafe` (the ioctls, the BAR `mmap`s and their MMIO registration) is in `sys.rs`.

mod bar;
mod bus;
mod container;
mod device;
mod function;
mod group;
mod info;
mod irq;
mod mapper;
mod pci;
mod sys;
mod vectors;

pub use bar::Bar;
pub use bus::{VfioBus, VfioBusBuilder};
pub use container::{Container, DEV_VFIO};
pub use device::{RegionInfo, VfioDevice};
pub use function::{VfioFunction, MAX_VECTORS};
pub use info::IommuInfo;
pub use irq::{IrqKind, Msi};
pub use mapper::VfioMapper;
pub use pci::{PciAddress, PciFunction, SYSFS_PCI_DEVICES};
