//! A simulated PCI bus: functions with configuration space, BARs decoded in an MMIO
//! aperture, MSI-X tables raising interrupts, DMA through a per-function IOMMU domain or
//! bypassing it, bus mastering honoured, and fault injection at each step.
//!
//! [`SimPciBus`] implements the core's [`PciBus`](dmakit::device::PciBus) and
//! [`SimPciFunction`] its [`PciFunction`](dmakit::device::PciFunction), so a driver written
//! against the device seam runs on it unchanged. Behind each function is a
//! [`PciDeviceModel`]: the NVMe controller ([`crate::nvme`]), QEMU's `edu`
//! ([`crate::edu`]), or your own.
//!
//! | a driver does | the bus does |
//! | --- | --- |
//! | `config_read`/`config_write` | a type-0 header ([`config`]): IDs, class, command (memory space, bus master, INTx disable), status, six BARs that size as real ones (write all ones, read back the size mask), the MSI-X capability |
//! | `mapped_read32(&*machine, bar.base + off)` | the aperture's MMIO window routes the access to the function whose BAR decodes it (memory decoding on); the MSI-X table and pending bits are answered by the bus, the rest by the model |
//! | `enable_interrupt(v, sink)` | programs MSI-X entry `v` with a message the bus's interrupt controller routes to `sink`, unmasks it, enables MSI-X ([`msix`]); for an INTx function, routes the pin |
//! | `dma()` | [`DmaMode::Iommu`]: a `SimIommu` domain per function and the `IommuMapper` over it (`DmaView::Mapped`); [`DmaMode::Bypass`]: `DmaView::Bypass` with the DMA mask |
//! | `set_bus_master(false)` | every DMA of the function fails before it leaves it and is recorded; MSI-X messages are not sent |
//! | `reset()` | the model and configuration space back to reset (BAR addresses kept), routes dropped |
//!
//! Failures can be planned at every step ([`fault`]): configuration accesses, BAR
//! accesses, DMA steps and interrupt messages. [`SimPciFunction::stats`] and
//! [`SimPciFunction::events`] say what a function did and what went wrong.

pub mod bus;
pub mod config;
pub mod dma;
pub mod fault;
pub mod function;
pub mod model;
pub mod msix;

pub use bus::{FunctionConfig, SimPciBus, SimPciBusBuilder, APERTURE_BASE, APERTURE_LEN};
pub use dma::{DeviceContext, DmaFault, DmaMode, DomainMapper};
pub use fault::{PciFaultPlan, PciFaultSite};
pub use function::{PciEvent, PciFunctionStats, SimPciFunction};
pub use model::{BarSpec, DeviceConfig, MsixSpec, PciDeviceModel};
pub use msix::MSI_ADDRESS;
