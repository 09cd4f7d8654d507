//! PCI through ECAM: [`EcamBus`] (a [`PciBus`]) walks the hierarchy the firmware
//! enumerated, [`EcamFunction`] (a [`PciFunction`]) gives a driver one function.
//!
//! BARs stay where the firmware assigned them (a configuration write to a BAR register is
//! refused); reset is a function-level reset where the function advertises one (PCI
//! Express or Advanced Features capability), with the configuration header saved and
//! restored around it, else [`Error::Unsupported`]; interrupts are not delivered (drivers
//! poll: [`Interrupts`] `{ kind: None, vectors: 0 }`); the DMA view of each function comes
//! from the caller ([`EcamBusBuilder::dma`]), so a kernel with an IOMMU hands each function
//! its own mapper, and one without says how far each can reach.

mod config;

pub use config::{Bar, Capabilities, EcamRegion, FunctionInfo};

use crate::pci::config::Config;
use alloc::sync::Arc;
use alloc::vec::Vec;
use dmakit::device::{
    BarInfo, DmaView, InterruptSink, Interrupts, PciAddress, PciBus, PciFunction, PciId,
};
use dmakit::platform::{Mmio, Width};
use dmakit::{Error, PhysAddr, Result};

/// Says how a function's DMA reaches memory.
pub type DmaPolicy = Arc<dyn Fn(&FunctionInfo) -> DmaView + Send + Sync>;

/// Waits at least the given number of microseconds.
pub type Delay = Arc<dyn Fn(u64) + Send + Sync>;

/// How to scan: the DMA policy and a way to wait (for resets).
pub struct EcamBusBuilder {
    mmio: Arc<dyn Mmio>,
    regions: Vec<EcamRegion>,
    dma: DmaPolicy,
    delay: Option<Delay>,
}

impl EcamBusBuilder {
    /// Each function's DMA view (default: [`DmaView::Bypass`] up to `u64::MAX`).
    pub fn dma(mut self, policy: impl Fn(&FunctionInfo) -> DmaView + Send + Sync + 'static) -> Self {
        self.dma = Arc::new(policy);
        self
    }

    /// How to wait `n` microseconds. Without it functions cannot be reset (a
    /// function-level reset needs 100 ms of quiet).
    pub fn delay_us(mut self, delay: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.delay = Some(Arc::new(delay));
        self
    }

    /// Another ECAM window (a second segment or bus range) to walk.
    pub fn region(mut self, region: EcamRegion) -> Self {
        self.regions.push(region);
        self
    }

    /// Walks every window.
    pub fn scan(self) -> Result<EcamBus> {
        let mut functions = Vec::new();
        for &region in &self.regions {
            if region.is_empty() {
                return Err(Error::BadArgument {
                    what: "ECAM window with its last bus below its first",
                    value: u64::from(region.start_bus),
                });
            }
            for info in config::walk(&self.mmio, region)? {
                let cfg = Config {
                    mmio: self.mmio.clone(),
                    region,
                    address: info.address,
                };
                functions.push(Arc::new(EcamFunction {
                    view: (self.dma)(&info),
                    info,
                    cfg,
                    delay: self.delay.clone(),
                }));
            }
        }
        functions.sort_by_key(|f| f.info.address);
        Ok(EcamBus { functions })
    }
}

/// The functions under one or more ECAM windows (IOKit's PCI family's enumeration, as
/// firmware left it).
pub struct EcamBus {
    functions: Vec<Arc<EcamFunction>>,
}

impl core::fmt::Debug for EcamBus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.functions.iter().map(|x| &x.info))
            .finish()
    }
}

impl EcamBus {
    /// A builder that reaches configuration space of `region` through `mmio` (the
    /// platform, with the window added as device memory).
    pub fn builder(mmio: Arc<dyn Mmio>, region: EcamRegion) -> EcamBusBuilder {
        EcamBusBuilder {
            mmio,
            regions: alloc::vec![region],
            dma: Arc::new(|_| DmaView::Bypass {
                max_address: u64::MAX,
            }),
            delay: None,
        }
    }

    /// The functions with their concrete type (BARs to register as device memory, what
    /// the walk found).
    pub fn ecam_functions(&self) -> &[Arc<EcamFunction>] {
        &self.functions
    }
}

impl PciBus for EcamBus {
    fn functions(&self) -> Vec<Arc<dyn PciFunction>> {
        self.functions
            .iter()
            .map(|f| f.clone() as Arc<dyn PciFunction>)
            .collect()
    }
}

/// One function found by [`EcamBus`].
pub struct EcamFunction {
    info: FunctionInfo,
    cfg: Config,
    view: DmaView,
    delay: Option<Delay>,
}

impl core::fmt::Debug for EcamFunction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EcamFunction")
            .field("info", &self.info)
            .field("dma", &self.view)
            .finish()
    }
}

const COMMAND: u16 = 0x04;
const BUS_MASTER: u16 = 1 << 2;

impl EcamFunction {
    /// What the walk found.
    pub fn info(&self) -> &FunctionInfo {
        &self.info
    }

    /// Its assigned memory BARs (the ranges a kernel registers as device memory).
    pub fn memory_bars(&self) -> impl Iterator<Item = &Bar> {
        self.info.bars.iter().filter(|b| !b.io && b.base != 0)
    }

    /// The configuration registers that hold BARs (and the expansion ROM's), refused to
    /// writes while drivers run.
    fn bar_registers(&self) -> [(u16, u16); 2] {
        match self.info.header_type {
            0 => [(0x10, 0x28), (0x30, 0x34)],
            1 => [(0x10, 0x18), (0x38, 0x3c)],
            _ => [(0, 0), (0, 0)],
        }
    }

    fn wait_us(&self, us: u64) -> Result<()> {
        match &self.delay {
            Some(d) => {
                d(us);
                Ok(())
            }
            None => Err(Error::Unsupported {
                what: "function reset without a delay (give the bus one with delay_us)",
            }),
        }
    }

    /// Function-level reset: bus mastering off, pending transactions drained, the reset,
    /// 100 ms, the function answering again, the header restored with bus mastering off.
    fn flr(&self) -> Result<()> {
        let header: Vec<u32> = (0..16u16)
            .map(|i| self.cfg.r32(i * 4))
            .collect::<Result<_>>()?;
        let cmd = self.cfg.r16(COMMAND)?;
        self.cfg.w16(COMMAND, cmd & !BUS_MASTER)?;
        let caps = self.info.caps;
        if let Some(p) = caps.pcie.filter(|_| {
            // The PCIe capability's own FLR bit (Device Capabilities bit 28).
            self.cfg.r32(caps.pcie.unwrap_or(0) + 4).is_ok_and(|v| v & (1 << 28) != 0)
        }) {
            for _ in 0..100 {
                if self.cfg.r16(p + 0x0a)? & (1 << 5) == 0 {
                    break;
                }
                self.wait_us(1000)?;
            }
            let ctl = self.cfg.r16(p + 0x08)?;
            self.cfg.w16(p + 0x08, ctl | (1 << 15))?;
        } else if let Some(p) = caps.af {
            for _ in 0..100 {
                if self.cfg.r8(p + 5)? & 1 == 0 {
                    break;
                }
                self.wait_us(1000)?;
            }
            self.cfg.write(p + 4, Width::W8, 1)?;
        } else {
            return Err(Error::Unsupported {
                what: "function reset (the function has no function-level reset)",
            });
        }
        self.wait_us(100_000)?;
        let mut back = false;
        for _ in 0..1000 {
            if self.cfg.r16(0x00)? != 0xffff {
                back = true;
                break;
            }
            self.wait_us(1000)?;
        }
        if !back {
            return Err(Error::Timeout {
                what: "function reset (the function did not answer again)",
                id: u64::from(self.info.id.device),
            });
        }
        // Header registers after the command/status dword, then the command register
        // itself (decoding back on, bus mastering off).
        for i in 3..16u16 {
            if i == 3 || (4..10).contains(&i) || i == 12 || i == 15 {
                self.cfg.w32(i * 4, header[usize::from(i)])?;
            }
        }
        self.cfg.w16(COMMAND, (header[1] as u16) & !BUS_MASTER)
    }
}

impl PciFunction for EcamFunction {
    fn address(&self) -> PciAddress {
        self.info.address
    }

    fn id(&self) -> PciId {
        self.info.id
    }

    fn config_read(&self, offset: u16, width: Width) -> Result<u32> {
        self.cfg.read(offset, width)
    }

    fn config_write(&self, offset: u16, width: Width, value: u32) -> Result<()> {
        let end = u32::from(offset) + width.bytes() as u32;
        for (s, e) in self.bar_registers() {
            if u32::from(offset) < u32::from(e) && u32::from(s) < end {
                return Err(Error::NotPermitted {
                    what: "configuration write to a BAR",
                    hint: "BARs stay where the firmware assigned them while drivers run",
                });
            }
        }
        self.cfg.write(offset, width, value)
    }

    fn bar(&self, index: u8) -> Result<BarInfo> {
        let bad = |what| Error::BadArgument {
            what,
            value: u64::from(index),
        };
        if index > 5 {
            return Err(bad("BAR index above 5"));
        }
        let b = self
            .info
            .bars
            .iter()
            .find(|b| b.index == index)
            .ok_or(bad("BAR not implemented (or the upper half of a 64-bit BAR)"))?;
        if b.io {
            return Err(bad("an I/O-port BAR, not memory"));
        }
        if b.base == 0 {
            return Err(bad("BAR not assigned by the firmware"));
        }
        Ok(BarInfo {
            index,
            base: PhysAddr(b.base),
            len: b.len,
            prefetchable: b.prefetchable,
        })
    }

    fn interrupts(&self) -> Interrupts {
        Interrupts {
            kind: None,
            vectors: 0,
        }
    }

    fn enable_interrupt(&self, vector: u32, sink: Arc<dyn InterruptSink>) -> Result<()> {
        let _ = sink;
        Err(Error::BadArgument {
            what: "interrupt vector (this platform delivers none: drivers poll)",
            value: u64::from(vector),
        })
    }

    fn disable_interrupt(&self, vector: u32) -> Result<()> {
        Err(Error::BadArgument {
            what: "interrupt vector (this platform delivers none: drivers poll)",
            value: u64::from(vector),
        })
    }

    fn dma(&self) -> DmaView {
        self.view.clone()
    }

    fn set_bus_master(&self, on: bool) -> Result<()> {
        let cmd = self.cfg.r16(COMMAND)?;
        let new = if on { cmd | BUS_MASTER } else { cmd & !BUS_MASTER };
        if new != cmd {
            self.cfg.w16(COMMAND, new)?;
        }
        Ok(())
    }

    fn reset(&self) -> Result<()> {
        if !self.info.caps.flr {
            return Err(Error::Unsupported {
                what: "function reset (the function has no function-level reset)",
            });
        }
        self.flr()
    }
}
