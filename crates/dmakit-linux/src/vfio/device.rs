//! A VFIO device: one PCI function bound to `vfio-pci`, opened through its group.
//!
//! [`VfioDevice::open`] checks, in order, that the function exists, that it has an IOMMU
//! group and that it is bound to `vfio-pci` (each failure is its own
//! [`Error::NotAttached`]), attaches the group to the container (refused if the group is not
//! viable) and gets the device fd. The device then offers its regions: PCI configuration
//! space (read and written with `pread`/`pwrite`), BARs mapped as [`Bar`](super::Bar)s that
//! `mapped_read*`/`mapped_write*` reach, and its interrupts through eventfds
//! ([`Msi`](super::Msi)).

use super::container::Container;
use super::pci::{PciAddress, PciFunction, SYSFS_PCI_DEVICES};
use super::sys;
use crate::hints::os;
use dmakit::{Error, Result};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_CONFIG_REGION_INDEX,
};

/// One region of a device (`VFIO_DEVICE_GET_REGION_INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index (BAR0–5 are 0–5, config space is 7).
    pub index: u32,
    /// Size in bytes (0: not implemented).
    pub size: u64,
    /// Offset of the region in the device fd (for `pread`/`pwrite`/`mmap`).
    pub offset: u64,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
}

/// A PCI function opened through VFIO.
#[derive(Debug)]
pub struct VfioDevice {
    container: Arc<Container>,
    pci: PciFunction,
    group: u32,
    fd: OwnedFd,
    flags: u32,
    config: RegionInfo,
}

/// The PCI command register and its bits.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;

impl VfioDevice {
    /// Opens the function at `address` in `container`.
    pub fn open(container: &Arc<Container>, address: PciAddress) -> Result<VfioDevice> {
        Self::open_in(container, SYSFS_PCI_DEVICES, address)
    }

    /// As [`open`](Self::open), with PCI functions listed under `sysfs_root`.
    pub fn open_in(
        container: &Arc<Container>,
        sysfs_root: impl AsRef<Path>,
        address: PciAddress,
    ) -> Result<VfioDevice> {
        let pci = PciFunction::find(sysfs_root, address)?;
        let group = pci.iommu_group()?;
        pci.check_vfio_bound()?;
        container.attach_group(group)?;
        let fd = container.with_group(group, |g| g.device_fd(&address.to_string()))?;
        let info = sys::device_info(fd.as_fd()).map_err(|e| os("VFIO_DEVICE_GET_INFO", e, ""))?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(Error::Unsupported {
                what: "VFIO device that is not a PCI device",
            });
        }
        let mut dev = VfioDevice {
            container: container.clone(),
            pci,
            group,
            fd,
            flags: info.flags,
            config: RegionInfo {
                index: 0,
                size: 0,
                offset: 0,
                flags: 0,
            },
        };
        dev.config = dev.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        Ok(dev)
    }

    /// Its PCI address.
    pub fn address(&self) -> PciAddress {
        self.pci.address()
    }

    /// Its sysfs view.
    pub fn pci(&self) -> &PciFunction {
        &self.pci
    }

    /// Its IOMMU group.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// The container it is in.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// Region `index`.
    pub fn region(&self, index: u32) -> Result<RegionInfo> {
        let r = sys::region_info(self.fd.as_fd(), index)
            .map_err(|e| os("VFIO_DEVICE_GET_REGION_INFO", e, ""))?;
        Ok(RegionInfo {
            index,
            size: r.size,
            offset: r.offset,
            flags: r.flags,
        })
    }

    /// Reads `buf.len()` bytes of PCI configuration space at `offset`.
    pub fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_config(offset, buf.len())?;
        let n = rustix::io::pread(&self.fd, &mut *buf, self.config.offset + offset)
            .map_err(|e| os("pread of VFIO config space", e, ""))?;
        if n != buf.len() {
            return Err(Error::Os {
                op: "pread of VFIO config space (short read)",
                errno: 0,
                hint: "",
            });
        }
        Ok(())
    }

    /// Writes `data` to PCI configuration space at `offset`.
    pub fn config_write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_config(offset, data.len())?;
        let n = rustix::io::pwrite(&self.fd, data, self.config.offset + offset)
            .map_err(|e| os("pwrite of VFIO config space", e, ""))?;
        if n != data.len() {
            return Err(Error::Os {
                op: "pwrite of VFIO config space (short write)",
                errno: 0,
                hint: "",
            });
        }
        Ok(())
    }

    /// A 16-bit configuration register.
    pub fn config_read16(&self, offset: u64) -> Result<u16> {
        let mut b = [0u8; 2];
        self.config_read(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// A 32-bit configuration register.
    pub fn config_read32(&self, offset: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.config_read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Turns on memory decoding and bus mastering (the device may then DMA, through the
    /// IOMMU).
    pub fn enable_bus_master(&self) -> Result<()> {
        let cmd = self.config_read16(PCI_COMMAND)?;
        let want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        self.config_write(PCI_COMMAND, &want.to_le_bytes())
    }

    /// Turns bus mastering on (with memory decoding, as
    /// [`enable_bus_master`](Self::enable_bus_master)) or off (memory decoding stays on, so
    /// the BARs remain reachable).
    pub fn set_bus_master(&self, on: bool) -> Result<()> {
        if on {
            return self.enable_bus_master();
        }
        let cmd = self.config_read16(PCI_COMMAND)?;
        self.config_write(PCI_COMMAND, &(cmd & !PCI_COMMAND_MASTER).to_le_bytes())
    }

    /// Whether bus mastering is on (the command register's bit 2).
    pub fn bus_master(&self) -> Result<bool> {
        Ok(self.config_read16(PCI_COMMAND)? & PCI_COMMAND_MASTER != 0)
    }

    /// Turns on memory decoding if it is off (a BAR access with decoding off would fault).
    pub(crate) fn enable_memory(&self) -> Result<()> {
        let cmd = self.config_read16(PCI_COMMAND)?;
        if cmd & PCI_COMMAND_MEMORY == 0 {
            self.config_write(PCI_COMMAND, &(cmd | PCI_COMMAND_MEMORY).to_le_bytes())?;
        }
        Ok(())
    }

    /// Whether VFIO offers a reset for it (`VFIO_DEVICE_FLAGS_RESET`: a function-level,
    /// power-management or bus reset that affects no other device).
    pub fn can_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// The size of its configuration space (256 bytes, or 4 KiB for PCI Express).
    pub fn config_size(&self) -> u64 {
        self.config.size
    }

    /// Resets the function, if it supports a reset.
    pub fn reset(&self) -> Result<()> {
        if self.flags & VFIO_DEVICE_FLAGS_RESET == 0 {
            return Err(Error::Unsupported {
                what: "VFIO_DEVICE_RESET: this function has no reset method",
            });
        }
        sys::device_reset(self.fd.as_fd()).map_err(|e| os("VFIO_DEVICE_RESET", e, ""))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn check_config(&self, offset: u64, len: usize) -> Result<()> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|e| e > self.config.size)
        {
            return Err(Error::OutOfBounds {
                what: "PCI configuration space",
                offset,
                len: len as u64,
                limit: self.config.size,
            });
        }
        Ok(())
    }
}
