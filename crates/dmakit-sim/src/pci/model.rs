//! [`PciDeviceModel`]: the hardware behind a simulated PCI function, and [`DeviceConfig`],
//! what it declares (IDs, BARs, MSI-X).
//!
//! The bus owns everything a PCI function has in common (configuration space, BAR decoding,
//! the MSI-X table, bus mastering, the DMA path); a model only implements its registers and
//! its behaviour. It sees BAR accesses with the BAR number and the offset inside it, and
//! reaches memory and raises interrupts through the [`DeviceContext`] it is handed, so it
//! never bypasses bus mastering, the IOMMU or fault injection.

use super::DeviceContext;
use dmakit::device::PciId;
use dmakit::platform::Width;
use dmakit::{Error, Result};
use std::any::Any;

/// One memory BAR a model declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// Size in bytes: a power of two, 16 bytes to 2 GiB.
    pub size: u64,
    /// A 64-bit BAR (it takes this BAR number and the next one).
    pub bits64: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

impl BarSpec {
    /// A 32-bit non-prefetchable BAR of `size` bytes.
    pub const fn mem32(size: u64) -> Self {
        BarSpec {
            size,
            bits64: false,
            prefetchable: false,
        }
    }

    /// A 64-bit non-prefetchable BAR of `size` bytes.
    pub const fn mem64(size: u64) -> Self {
        BarSpec {
            size,
            bits64: true,
            prefetchable: false,
        }
    }
}

/// Where a function's MSI-X table and pending-bit array live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixSpec {
    /// Table entries (vectors): 1..=2048.
    pub vectors: u16,
    /// The BAR holding the table.
    pub table_bar: u8,
    /// The table's offset in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// The BAR holding the pending-bit array.
    pub pba_bar: u8,
    /// The pending-bit array's offset in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixSpec {
    /// Bytes of table.
    pub fn table_len(&self) -> u64 {
        self.vectors as u64 * 16
    }

    /// Bytes of pending-bit array (whole 64-bit words).
    pub fn pba_len(&self) -> u64 {
        (self.vectors as u64).div_ceil(64) * 8
    }
}

/// What a model declares: identity, BARs, interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// Vendor, device and class code.
    pub id: PciId,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor and subsystem ID.
    pub subsystem: (u16, u16),
    /// Memory BARs by number; the slot after a 64-bit BAR must be `None`.
    pub bars: [Option<BarSpec>; 6],
    /// The MSI-X capability, if the function has one.
    pub msix: Option<MsixSpec>,
    /// Whether the function has an INTx pin (INTA).
    pub intx: bool,
}

impl DeviceConfig {
    /// A function with these IDs and no BARs or interrupts yet.
    pub const fn new(id: PciId) -> Self {
        DeviceConfig {
            id,
            revision: 0,
            subsystem: (0, 0),
            bars: [None; 6],
            msix: None,
            intx: false,
        }
    }

    /// With memory BAR `index`.
    pub const fn bar(mut self, index: usize, spec: BarSpec) -> Self {
        if index < 6 {
            self.bars[index] = Some(spec);
        }
        self
    }

    /// With an MSI-X capability.
    pub const fn msix(mut self, spec: MsixSpec) -> Self {
        self.msix = Some(spec);
        self
    }

    /// With (or without) an INTx pin.
    pub const fn intx(mut self, on: bool) -> Self {
        self.intx = on;
        self
    }

    /// With a revision ID.
    pub const fn revision(mut self, revision: u8) -> Self {
        self.revision = revision;
        self
    }

    /// With subsystem IDs.
    pub const fn subsystem(mut self, vendor: u16, device: u16) -> Self {
        self.subsystem = (vendor, device);
        self
    }

    /// Checks what real hardware guarantees: BAR sizes are powers of two within 16 B to
    /// 2 GiB, a 64-bit BAR leaves its upper slot free and is not BAR 5, and the MSI-X table
    /// and array lie inside implemented BARs, 8-byte aligned.
    pub fn validate(&self) -> Result<()> {
        for (i, bar) in self.bars.iter().enumerate() {
            let Some(b) = bar else { continue };
            if !b.size.is_power_of_two() || !(16..=0x8000_0000).contains(&b.size) {
                return Err(Error::BadArgument {
                    what: "BAR size (a power of two from 16 bytes to 2 GiB)",
                    value: b.size,
                });
            }
            if b.bits64 && (i == 5 || self.bars[i + 1].is_some()) {
                return Err(Error::BadArgument {
                    what: "64-bit BAR without a free upper slot (value: BAR number)",
                    value: i as u64,
                });
            }
        }
        if let Some(m) = self.msix {
            if m.vectors == 0 || m.vectors > 2048 {
                return Err(Error::BadArgument {
                    what: "MSI-X vectors (1..=2048)",
                    value: m.vectors as u64,
                });
            }
            for (bar, off, len) in [
                (m.table_bar, m.table_offset, m.table_len()),
                (m.pba_bar, m.pba_offset, m.pba_len()),
            ] {
                let size = self
                    .bars
                    .get(bar as usize)
                    .copied()
                    .flatten()
                    .map(|b| b.size)
                    .ok_or(Error::BadArgument {
                        what: "MSI-X structure in a BAR the function does not have",
                        value: bar as u64,
                    })?;
                if off % 8 != 0 || off as u64 + len > size {
                    return Err(Error::BadArgument {
                        what: "MSI-X table or PBA offset (8-byte aligned, inside its BAR)",
                        value: off as u64,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The hardware behind a [`SimPciFunction`](super::SimPciFunction).
///
/// Calls arrive with the function's lock held, one at a time. A model reaches memory and
/// raises interrupts only through the [`DeviceContext`]; what it does inside a BAR store
/// (a doorbell) happens before the store returns, as with the DMA engine.
pub trait PciDeviceModel: Any + Send {
    /// A short name for layouts and logs.
    fn name(&self) -> &str;

    /// Identity, BARs and interrupts. Asked once, when the function is added.
    fn config(&self) -> DeviceConfig;

    /// A load of `width` bytes at `offset` in BAR `bar` (never inside the MSI-X table or
    /// array, which the bus handles). Returns the value, zero-extended.
    fn bar_read(&mut self, ctx: &mut DeviceContext<'_>, bar: u8, offset: u64, width: Width) -> u64;

    /// A store of the low `width` bytes of `value` at `offset` in BAR `bar`.
    fn bar_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        bar: u8,
        offset: u64,
        width: Width,
        value: u64,
    );

    /// A function-level reset: every register back to its reset value.
    fn reset(&mut self);
}
