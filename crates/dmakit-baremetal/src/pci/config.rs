//! Configuration space through ECAM: addresses, the walk of the bus hierarchy, BAR sizing
//! and the capabilities a driver's platform needs (PCI Express for function-level reset,
//! Advanced Features, MSI, MSI-X).

use alloc::sync::Arc;
use alloc::vec::Vec;
use dmakit::device::{PciAddress, PciId};
use dmakit::platform::{Mmio, Width};
use dmakit::{Error, PhysAddr, Result};

/// One ECAM window (an entry of ACPI's MCFG table): configuration space of buses
/// `start_bus..=end_bus` of `segment`, 4 KiB per function from `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamRegion {
    /// Physical address of bus `start_bus`, device 0, function 0.
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

impl EcamRegion {
    /// Bytes of the window: 1 MiB per bus.
    pub fn len(&self) -> u64 {
        (u64::from(self.end_bus.saturating_sub(self.start_bus)) + 1) << 20
    }

    /// Whether the window decodes no bus (`end_bus` below `start_bus`).
    pub fn is_empty(&self) -> bool {
        self.end_bus < self.start_bus
    }

    /// The physical address of `offset` in the configuration space of `bus:device.function`,
    /// or `None` outside the window or the 4 KiB space.
    pub fn address(&self, bus: u8, device: u8, function: u8, offset: u16) -> Option<u64> {
        if bus < self.start_bus
            || bus > self.end_bus
            || device > 31
            || function > 7
            || offset > 0xfff
        {
            return None;
        }
        let rel = (u64::from(bus - self.start_bus) << 20)
            | (u64::from(device) << 15)
            | (u64::from(function) << 12)
            | u64::from(offset);
        self.base.checked_add(rel)
    }
}

/// Configuration accesses of one function.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) mmio: Arc<dyn Mmio>,
    pub(crate) region: EcamRegion,
    pub(crate) address: PciAddress,
}

impl Config {
    fn at(&self, offset: u16, width: Width) -> Result<PhysAddr> {
        if width == Width::W64 {
            return Err(Error::BadArgument {
                what: "configuration access wider than 32 bits",
                value: 8,
            });
        }
        dmakit::descriptor::check_range(
            "configuration space",
            u64::from(offset),
            width.bytes(),
            0x1000,
        )?;
        width.check_aligned(PhysAddr(u64::from(offset)), "configuration space offset")?;
        let a = self.address;
        self.region
            .address(a.bus, a.device, a.function, offset)
            .map(PhysAddr)
            .ok_or(Error::NotMapped {
                what: "configuration space outside the ECAM window",
                addr: u64::from(offset),
            })
    }

    pub(crate) fn read(&self, offset: u16, width: Width) -> Result<u32> {
        let pa = self.at(offset, width)?;
        Ok(self.mmio.mmio_read(pa, width)? as u32)
    }

    pub(crate) fn write(&self, offset: u16, width: Width, value: u32) -> Result<()> {
        let pa = self.at(offset, width)?;
        self.mmio.mmio_write(pa, width, u64::from(value))
    }

    pub(crate) fn r8(&self, off: u16) -> Result<u8> {
        self.read(off, Width::W8).map(|v| v as u8)
    }
    pub(crate) fn r16(&self, off: u16) -> Result<u16> {
        self.read(off, Width::W16).map(|v| v as u16)
    }
    pub(crate) fn r32(&self, off: u16) -> Result<u32> {
        self.read(off, Width::W32)
    }
    pub(crate) fn w16(&self, off: u16, v: u16) -> Result<()> {
        self.write(off, Width::W16, u32::from(v))
    }
    pub(crate) fn w32(&self, off: u16, v: u32) -> Result<()> {
        self.write(off, Width::W32, v)
    }
}

/// One BAR as the firmware left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR number (0..=5); a 64-bit BAR takes this and the next register.
    pub index: u8,
    /// Bus address the firmware assigned (0: not assigned).
    pub base: u64,
    /// Bytes it decodes (from sizing).
    pub len: u64,
    /// An I/O-port BAR.
    pub io: bool,
    /// A 64-bit memory BAR.
    pub is64: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// Capabilities found in a function's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The PCI Express capability's offset.
    pub pcie: Option<u16>,
    /// The Advanced Features capability's offset (function reset for conventional PCI).
    pub af: Option<u16>,
    /// MSI's offset.
    pub msi: Option<u16>,
    /// MSI-X's offset.
    pub msix: Option<u16>,
    /// Whether the function advertises function-level reset (PCIe or AF).
    pub flr: bool,
}

/// What the walk found about one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Where it is.
    pub address: PciAddress,
    /// IDs and class.
    pub id: PciId,
    /// Header type (0 endpoint, 1 PCI-to-PCI bridge), without the multi-function bit.
    pub header_type: u8,
    /// Its BARs (6 for an endpoint, 2 for a bridge), unimplemented ones left out.
    pub bars: Vec<Bar>,
    /// Its capabilities.
    pub caps: Capabilities,
    /// For a bridge: the bus behind it.
    pub secondary_bus: Option<u8>,
}

const COMMAND: u16 = 0x04;
const DECODE: u16 = 0x3;

/// Sizes the BARs of a function with `count` BAR registers: decoding off while each is
/// written all-ones and read back, the original value restored.
pub(crate) fn size_bars(cfg: &Config, count: u8) -> Result<Vec<Bar>> {
    let cmd = cfg.r16(COMMAND)?;
    cfg.w16(COMMAND, cmd & !DECODE)?;
    let result = (|| {
        let mut bars = Vec::new();
        let mut i = 0u8;
        while i < count {
            let off = 0x10 + 4 * u16::from(i);
            let orig = cfg.r32(off)?;
            if orig & 1 == 1 {
                cfg.w32(off, !0)?;
                let size = cfg.r32(off)?;
                cfg.w32(off, orig)?;
                let mask = size & !0x3;
                if mask != 0 {
                    bars.push(Bar {
                        index: i,
                        base: u64::from(orig & !0x3),
                        len: u64::from((!mask).wrapping_add(1) & 0xffff),
                        io: true,
                        is64: false,
                        prefetchable: false,
                    });
                }
                i += 1;
                continue;
            }
            let is64 = (orig >> 1) & 0x3 == 0x2 && i + 1 < count;
            let prefetchable = orig & 0x8 != 0;
            let (base, mask) = if is64 {
                let orig_hi = cfg.r32(off + 4)?;
                cfg.w32(off, !0)?;
                cfg.w32(off + 4, !0)?;
                let lo = cfg.r32(off)?;
                let hi = cfg.r32(off + 4)?;
                cfg.w32(off, orig)?;
                cfg.w32(off + 4, orig_hi)?;
                (
                    (u64::from(orig_hi) << 32) | u64::from(orig & !0xf),
                    (u64::from(hi) << 32) | u64::from(lo & !0xf),
                )
            } else {
                cfg.w32(off, !0)?;
                let lo = cfg.r32(off)?;
                cfg.w32(off, orig)?;
                let m = lo & !0xf;
                (
                    u64::from(orig & !0xf),
                    if m == 0 {
                        0
                    } else {
                        0xffff_ffff_0000_0000 | u64::from(m)
                    },
                )
            };
            if mask != 0 {
                bars.push(Bar {
                    index: i,
                    base,
                    len: (!mask).wrapping_add(1),
                    io: false,
                    is64,
                    prefetchable,
                });
            }
            i += if is64 { 2 } else { 1 };
        }
        Ok(bars)
    })();
    cfg.w16(COMMAND, cmd)?;
    result
}

/// Walks the capability list.
pub(crate) fn capabilities(cfg: &Config) -> Result<Capabilities> {
    let mut caps = Capabilities::default();
    if cfg.r16(0x06)? & 0x10 == 0 {
        return Ok(caps);
    }
    let mut ptr = u16::from(cfg.r8(0x34)? & !0x3);
    // At most 48 capabilities fit in the 192 bytes after the header: a longer walk is a loop.
    for _ in 0..48 {
        if ptr < 0x40 {
            break;
        }
        let id = cfg.r8(ptr)?;
        match id {
            0x10 => {
                caps.pcie = Some(ptr);
                caps.flr |= cfg.r32(ptr + 4)? & (1 << 28) != 0;
            }
            0x13 => {
                caps.af = Some(ptr);
                caps.flr |= cfg.r8(ptr + 3)? & 0x2 != 0;
            }
            0x05 => caps.msi = Some(ptr),
            0x11 => caps.msix = Some(ptr),
            _ => {}
        }
        ptr = u16::from(cfg.r8(ptr + 1)? & !0x3);
    }
    Ok(caps)
}

/// Reads what the walk records about the function at `cfg.address` (present: vendor ID
/// not all ones).
pub(crate) fn describe(cfg: &Config) -> Result<FunctionInfo> {
    let ids = cfg.r32(0x00)?;
    let class = cfg.r32(0x08)? >> 8;
    let header_type = cfg.r8(0x0e)? & 0x7f;
    let (bar_count, secondary_bus) = match header_type {
        0 => (6, None),
        1 => (2, Some(cfg.r8(0x19)?)),
        _ => (0, None),
    };
    Ok(FunctionInfo {
        address: cfg.address,
        id: PciId {
            vendor: ids as u16,
            device: (ids >> 16) as u16,
            class,
        },
        header_type,
        bars: size_bars(cfg, bar_count)?,
        caps: capabilities(cfg)?,
        secondary_bus,
    })
}

/// Every function in the hierarchy below `region.start_bus`, following bridges to the buses
/// the firmware numbered behind them, in address order.
pub(crate) fn walk(mmio: &Arc<dyn Mmio>, region: EcamRegion) -> Result<Vec<FunctionInfo>> {
    let mut found = Vec::new();
    let mut visited = [false; 256];
    let mut pending = alloc::vec![region.start_bus];
    while let Some(bus) = pending.pop() {
        if visited[usize::from(bus)] || bus > region.end_bus || bus < region.start_bus {
            continue;
        }
        visited[usize::from(bus)] = true;
        for device in 0..32u8 {
            let cfg = |function| Config {
                mmio: mmio.clone(),
                region,
                address: PciAddress {
                    segment: region.segment,
                    bus,
                    device,
                    function,
                },
            };
            let f0 = cfg(0);
            if f0.r16(0x00)? == 0xffff {
                continue;
            }
            let functions = if f0.r8(0x0e)? & 0x80 != 0 { 8 } else { 1 };
            for function in 0..functions {
                let c = cfg(function);
                if c.r16(0x00)? == 0xffff {
                    continue;
                }
                let info = describe(&c)?;
                if let Some(sec) = info.secondary_bus {
                    if sec > bus {
                        pending.push(sec);
                    }
                }
                found.push(info);
            }
        }
    }
    found.sort_by_key(|f| f.address);
    Ok(found)
}
