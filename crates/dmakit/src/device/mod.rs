//! The device seam: what a driver needs from the machine for one PCI function.
//!
//! The platform seam ([`platform`](crate::platform)) gives a driver memory; this one gives it
//! a device. A driver written against [`PciFunction`] (and a [`Platform`](crate::platform::Platform)
//! for its memory and register accesses) runs unchanged on every machine that implements
//! the two: the simulator's PCI bus, a Linux process over VFIO, a kernel of your own.
//!
//! | need | call |
//! | --- | --- |
//! | which device is this | [`PciFunction::address`], [`PciFunction::id`] |
//! | configuration space | [`config_read`](PciFunction::config_read), [`config_write`](PciFunction::config_write) |
//! | its registers | [`bar`](PciFunction::bar): a BAR's bus address, reached with the platform's [`Mmio`](crate::platform::Mmio) (`mapped_read32` …) or as [`DeviceMemory`](crate::descriptor::DeviceMemory) |
//! | interrupts | [`interrupts`](PciFunction::interrupts) says what the function has; [`enable_interrupt`](PciFunction::enable_interrupt) routes vector *n* to an [`InterruptSink`] (a `DmaEventSource`, a signal a queue sleeps on) |
//! | DMA | [`dma`](PciFunction::dma): through its IOMMU domain ([`DmaView::Mapped`], a [`Mapper`]) or bypassing one ([`DmaView::Bypass`], with the function's address limit) |
//! | bus mastering, reset | [`set_bus_master`](PciFunction::set_bus_master), [`reset`](PciFunction::reset) |
//! | finding devices | [`PciBus::functions`], [`PciBus::find`] with a [`PciMatch`] |
//!
//! IOKit's drivers get the same from their provider (`IOPCIDevice`: `configRead32`,
//! `getDeviceMemoryWithIndex`, `registerInterrupt`, `copyMapperForDevice`); DriverKit's from
//! `IOPCIDevice` in the dext. dmakit's shape is the smallest set a storage or network
//! driver uses, so a platform implements it in a few hundred lines.
//!
//! ```
//! use dmakit::device::{DmaView, PciBus, PciMatch};
//! use dmakit::dma::{DmaCommand, SegmentSpec};
//! use dmakit::map::mapped_read32;
//! use dmakit::PhysAddr;
//! use std::sync::Arc;
//! # use dmakit_sim::{nvme::SimNvme, pci::SimPciBus, MachineBuilder};
//! # let platform = Arc::new(MachineBuilder::new().build()?);
//! # let bus = SimPciBus::new(platform.clone())?;
//! # SimNvme::builder().attach(&bus)?;
//! // `platform` and `bus`: the simulator's here; dmakit-linux's VfioBus, or your kernel's.
//! // The first NVMe controller (class 01:08:02) on the bus.
//! let nvme = bus.find(&PciMatch::class(0x01_08_02))?;
//! let bar0 = nvme.bar(0)?;
//! let cap_lo = mapped_read32(&*platform, PhysAddr(bar0.base.0))?;
//! assert_ne!(cap_lo & 0xFFFF, 0, "CAP.MQES: the controller's queue size limit");
//! nvme.set_bus_master(true)?;
//! let cmd = match nvme.dma() {
//!     DmaView::Mapped(mapper) => DmaCommand::builder(platform.clone()).mapper(mapper).build()?,
//!     DmaView::Bypass { max_address } => {
//!         let spec = SegmentSpec::builder().window(0, max_address).build()?;
//!         DmaCommand::builder(platform.clone()).spec(spec).build()?
//!     }
//! };
//! # let _ = cmd;
//! # Ok::<(), dmakit::Error>(())
//! ```

mod pci;

pub use pci::{
    BarInfo, DmaView, InterruptKind, Interrupts, PciAddress, PciBus, PciFunction, PciId, PciMatch,
};

pub use crate::dma::InterruptSink;
pub use crate::mapper::Mapper;
