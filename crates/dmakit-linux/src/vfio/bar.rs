//! A PCI BAR mapped into this process and registered as device memory.
//!
//! [`Bar::map`] `mmap`s the BAR's VFIO region and registers the mapping with the
//! [`Host`] at the BAR's real bus address (from sysfs `resource`), so the BAR
//! is reached the IOKit way: [`Bar::device_memory`] is an `IODeviceMemory` of that range,
//! its [`physical_segment`](dmakit::descriptor::MemoryDescriptor::physical_segment) is the
//! bus address, and [`mapped_read32`](dmakit::map::mapped_read32) /
//! [`mapped_write32`](dmakit::map::mapped_write32) at that address are single volatile
//! accesses to the device's registers.
//!
//! ```no_run
//! # use dmakit_linux::{Host, vfio::{Bar, Container, PciAddress, VfioDevice}};
//! # use std::sync::Arc;
//! let host = Arc::new(Host::new()?);
//! let container = Arc::new(Container::open()?);
//! let dev = VfioDevice::open(&container, PciAddress::parse("0000:00:05.0")?)?;
//! let bar0 = Bar::map(&dev, 0, host.clone())?;
//! let id = dmakit::map::mapped_read32(&*host, bar0.bus_address())?;
//! # Ok::<(), dmakit::Error>(())
//! ```

use super::device::VfioDevice;
use super::sys::{DeviceMapping, RegisteredMmio};
use crate::hints::os;
use crate::host::Host;
use dmakit::descriptor::{device_memory, DeviceMemory};
use dmakit::{Error, PhysAddr, Result};
use std::sync::Arc;
use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP;

/// A mapped, registered BAR. Dropping it unregisters and unmaps it.
#[derive(Debug)]
pub struct Bar {
    index: u32,
    bus: PhysAddr,
    len: u64,
    host: Arc<Host>,
    mmio: RegisteredMmio,
}

impl Bar {
    /// Maps BAR `index` (0–5) of `device` and registers it with `host`.
    pub fn map(device: &VfioDevice, index: u32, host: Arc<Host>) -> Result<Bar> {
        if index > 5 {
            return Err(Error::BadArgument {
                what: "PCI BAR index (0-5)",
                value: index as u64,
            });
        }
        let region = device.region(index)?;
        if region.size == 0 {
            return Err(Error::NotMapped {
                what: "PCI BAR (the device does not implement it)",
                addr: index as u64,
            });
        }
        if region.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(Error::Unsupported {
                what: "a BAR that VFIO does not allow to mmap (an I/O-port BAR, or one with MSI-X tables only)",
            });
        }
        let (bus, _) = device.pci().bar(index)?.ok_or(Error::NotMapped {
            what: "PCI BAR (no bus address assigned in sysfs resource)",
            addr: index as u64,
        })?;
        let len = usize::try_from(region.size).map_err(|_| Error::Overflow {
            what: "PCI BAR size",
            start: bus,
            len: region.size,
        })?;
        let mapping = DeviceMapping::new(device.fd(), region.offset, len)
            .map_err(|e| os("mmap of a VFIO BAR", e, ""))?;
        let mmio = RegisteredMmio::new(host.clone(), PhysAddr(bus), mapping)?;
        Ok(Bar {
            index,
            bus: PhysAddr(bus),
            len: region.size,
            host,
            mmio,
        })
    }

    /// Which BAR.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The BAR's bus (physical) address: what `mapped_read*`/`mapped_write*` take.
    pub fn bus_address(&self) -> PhysAddr {
        self.bus
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty (never: an unimplemented BAR cannot be mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where it is mapped in this process.
    pub fn cpu_address(&self) -> u64 {
        self.mmio.cpu_addr()
    }

    /// The address of the register at `offset`, checked against the BAR's length.
    pub fn reg(&self, offset: u64, width: u64) -> Result<PhysAddr> {
        if offset.checked_add(width).is_none_or(|e| e > self.len) {
            return Err(Error::OutOfBounds {
                what: "PCI BAR register",
                offset,
                len: width,
                limit: self.len,
            });
        }
        Ok(PhysAddr(self.bus.0 + offset))
    }

    /// IOKit's `IODeviceMemory` for the whole BAR.
    pub fn device_memory(&self) -> Result<DeviceMemory<Arc<Host>>> {
        device_memory(self.host.clone(), self.bus, self.len)
    }
}
