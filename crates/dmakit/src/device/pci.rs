//! [`PciFunction`] and [`PciBus`]: one PCI function as a driver sees it, and how to find
//! one.

use crate::dma::InterruptSink;
use crate::mapper::Mapper;
use crate::platform::Width;
use crate::{Error, PhysAddr, Result};
use alloc_crate::sync::Arc;
use alloc_crate::vec::Vec;

/// Where a function sits: PCI segment (domain), bus, device and function numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PciAddress {
    /// PCI segment group (domain).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0..=31).
    pub device: u8,
    /// Function number (0..=7).
    pub function: u8,
}

impl core::fmt::Display for PciAddress {
    /// The form Linux and `lspci` use: `0000:00:04.0`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// What a function is: its vendor and device IDs and its 24-bit class code (base class,
/// subclass, programming interface: NVMe is `0x01_08_02`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PciId {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (24 bits).
    pub class: u32,
}

/// Which functions [`PciBus::find`] and [`PciBus::matching`] take: every field given must
/// match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PciMatch {
    /// Vendor ID to match.
    pub vendor: Option<u16>,
    /// Device ID to match.
    pub device: Option<u16>,
    /// Class code to match (24 bits).
    pub class: Option<u32>,
    /// Address to match.
    pub address: Option<PciAddress>,
}

impl PciMatch {
    /// Functions with this vendor and device ID.
    pub const fn ids(vendor: u16, device: u16) -> Self {
        PciMatch {
            vendor: Some(vendor),
            device: Some(device),
            class: None,
            address: None,
        }
    }

    /// Functions of this class code.
    pub const fn class(class: u32) -> Self {
        PciMatch {
            vendor: None,
            device: None,
            class: Some(class),
            address: None,
        }
    }

    /// The function at `address`.
    pub const fn address(address: PciAddress) -> Self {
        PciMatch {
            vendor: None,
            device: None,
            class: None,
            address: Some(address),
        }
    }

    /// Whether a function with `id` at `address` matches.
    pub fn matches(&self, id: PciId, address: PciAddress) -> bool {
        self.vendor.is_none_or(|v| v == id.vendor)
            && self.device.is_none_or(|d| d == id.device)
            && self.class.is_none_or(|c| c == id.class)
            && self.address.is_none_or(|a| a == address)
    }
}

/// One memory BAR: where the device decodes its registers on the bus, and how many bytes.
/// Accesses go through the platform's [`Mmio`](crate::platform::Mmio) at `base + offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR number (0..=5).
    pub index: u8,
    /// Bus (physical) address of the first byte, as `mapped_read32` takes it.
    pub base: PhysAddr,
    /// Size in bytes.
    pub len: u64,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

impl BarInfo {
    /// The bus address of register `offset` for an access of `width` bytes: inside the BAR
    /// and naturally aligned, else [`Error::OutOfBounds`] or [`Error::NotAligned`].
    pub fn reg(&self, offset: u64, width: Width) -> Result<PhysAddr> {
        let n = width.bytes();
        crate::descriptor::check_range("BAR register", offset, n, self.len)?;
        if !offset.is_multiple_of(n) {
            return Err(Error::NotAligned {
                what: "BAR register offset (accesses are naturally aligned)",
                value: offset,
                align: n,
            });
        }
        crate::addr::checked_end(
            self.base.0,
            offset,
            "BAR register (the BAR's base plus the offset passes the top of the address space)",
        )
        .map(PhysAddr)
    }
}

/// The interrupt kinds a function offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptKind {
    /// MSI-X: one vector per table entry.
    MsiX,
    /// MSI: up to 32 vectors.
    Msi,
    /// The legacy INTx line (one vector).
    Intx,
}

/// What [`PciFunction::interrupts`] reports: the best kind the function (and the platform)
/// can deliver and how many vectors; `None` means the driver polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Interrupts {
    /// The kind vectors are delivered as, or `None` (poll).
    pub kind: Option<InterruptKind>,
    /// Vectors available (0 when polling).
    pub vectors: u32,
}

/// How the function's DMA reaches memory.
#[derive(Clone)]
pub enum DmaView {
    /// Through an IOMMU domain of its own: IO addresses come from this mapper (build
    /// commands with `DmaCommand::builder(..).mapper(mapper)`).
    Mapped(Arc<dyn Mapper>),
    /// Straight to physical addresses up to `max_address` (the function's DMA mask, or the
    /// bus's limit): build commands with a `SegmentSpec` window ending there.
    Bypass {
        /// The highest physical address the function can reach.
        max_address: u64,
    },
}

impl core::fmt::Debug for DmaView {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DmaView::Mapped(_) => f.write_str("Mapped"),
            DmaView::Bypass { max_address } => {
                write!(f, "Bypass {{ max_address: {max_address:#x} }}")
            }
        }
    }
}

/// One PCI function, as a driver needs it (IOKit's `IOPCIDevice` provider).
///
/// Every call checks its arguments: an offset outside configuration space, a BAR that does
/// not exist or is not memory, a vector the function does not have are errors, never a
/// panic.
pub trait PciFunction: Send + Sync {
    /// Where it is.
    fn address(&self) -> PciAddress;

    /// What it is.
    fn id(&self) -> PciId;

    /// Reads `width` bytes of configuration space at `offset` (naturally aligned, inside the
    /// space: 256 bytes, or 4 KiB with extended configuration space). IOKit
    /// `configRead8/16/32`.
    fn config_read(&self, offset: u16, width: Width) -> Result<u32>;

    /// Writes configuration space (IOKit `configWrite8/16/32`). A platform may refuse
    /// writes that would move BARs under a running driver.
    fn config_write(&self, offset: u16, width: Width, value: u32) -> Result<()>;

    /// Memory BAR `index` (IOKit `getDeviceMemoryWithIndex`). An I/O-port BAR, an
    /// unimplemented one or an index above 5 is an error.
    fn bar(&self, index: u8) -> Result<BarInfo>;

    /// The interrupts the function can deliver on this platform.
    fn interrupts(&self) -> Interrupts;

    /// Routes `vector` to `sink` (IOKit `registerInterrupt` + `enableInterrupt`): from now
    /// on the platform calls `sink.raise()` when the function signals it. The sink must
    /// only signal (it may run on an interrupt thread or in the device model's context) and
    /// must not call back into the function. MSI and MSI-X messages are memory writes by
    /// the device, so nothing arrives until [`set_bus_master`](Self::set_bus_master)`(true)`.
    fn enable_interrupt(&self, vector: u32, sink: Arc<dyn InterruptSink>) -> Result<()>;

    /// Stops delivering `vector`.
    fn disable_interrupt(&self, vector: u32) -> Result<()>;

    /// How its DMA reaches memory.
    fn dma(&self) -> DmaView;

    /// Turns bus mastering (the function's permission to do DMA) on or off.
    fn set_bus_master(&self, on: bool) -> Result<()>;

    /// Resets the function (function-level reset or what the platform has). Interrupt
    /// routes and bus mastering are off afterwards.
    fn reset(&self) -> Result<()>;
}

/// The functions a platform offers drivers (the simulator's bus, the functions bound to
/// `vfio-pci`, a kernel's ECAM walk).
pub trait PciBus: Send + Sync {
    /// Every function, in address order.
    fn functions(&self) -> Vec<Arc<dyn PciFunction>>;

    /// The functions `m` matches, in address order.
    fn matching(&self, m: &PciMatch) -> Vec<Arc<dyn PciFunction>> {
        self.functions()
            .into_iter()
            .filter(|f| m.matches(f.id(), f.address()))
            .collect()
    }

    /// The first function `m` matches; none is [`Error::NotAttached`].
    fn find(&self, m: &PciMatch) -> Result<Arc<dyn PciFunction>> {
        self.matching(m)
            .into_iter()
            .next()
            .ok_or(Error::NotAttached {
                what: "PCI function",
                why: "no function on the bus matches (vendor, device, class or address)",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_crate::string::ToString;

    #[test]
    fn matching_and_addresses() {
        let a = PciAddress {
            segment: 0,
            bus: 0,
            device: 4,
            function: 0,
        };
        assert_eq!(a.to_string(), "0000:00:04.0");
        let id = PciId {
            vendor: 0x1b36,
            device: 0x0010,
            class: 0x01_08_02,
        };
        assert!(PciMatch::class(0x01_08_02).matches(id, a));
        assert!(PciMatch::ids(0x1b36, 0x0010).matches(id, a));
        assert!(!PciMatch::ids(0x1234, 0x11e8).matches(id, a));
        assert!(PciMatch::address(a).matches(id, a));
        assert!(PciMatch::default().matches(id, a));
    }

    #[test]
    fn bar_registers_are_checked() {
        let bar = BarInfo {
            index: 0,
            base: PhysAddr(0xfe00_0000),
            len: 0x4000,
            prefetchable: false,
        };
        assert_eq!(bar.reg(0x1c, Width::W32).unwrap(), PhysAddr(0xfe00_001c));
        assert!(matches!(
            bar.reg(0x4000, Width::W32),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            bar.reg(0x3ffe, Width::W32),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            bar.reg(2, Width::W32),
            Err(Error::NotAligned { .. })
        ));
        assert!(matches!(
            bar.reg(u64::MAX, Width::W64),
            Err(Error::OutOfBounds { .. })
        ));
    }
}
