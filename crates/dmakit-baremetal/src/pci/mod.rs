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
    pub fn dma(
        mut self,
        policy: impl Fn(&FunctionInfo) -> DmaView + Send + Sync + 'static,
    ) -> Self {
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
            self.cfg
                .r32(caps.pcie.unwrap_or(0) + 4)
                .is_ok_and(|v| v & (1 << 28) != 0)
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
        let b = self.info.bars.iter().find(|b| b.index == index).ok_or(bad(
            "BAR not implemented (or the upper half of a 64-bit BAR)",
        ))?;
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
        let new = if on {
            cmd | BUS_MASTER
        } else {
            cmd & !BUS_MASTER
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use dmakit::device::PciMatch;

    const BASE: u64 = 0xb000_0000;

    /// One function's configuration space, with BAR sizing and FLR behaviour.
    struct FakeFn {
        bytes: [u8; 4096],
        masks: [u32; 6],
        resets: u32,
    }

    /// ECAM over fake functions, as the platform's `Mmio` would reach it.
    #[derive(Default)]
    struct FakeEcam(spin::Mutex<BTreeMap<(u8, u8, u8), FakeFn>>);

    fn decode(pa: u64) -> ((u8, u8, u8), usize) {
        let rel = pa - BASE;
        (
            (
                (rel >> 20) as u8,
                ((rel >> 15) & 31) as u8,
                ((rel >> 12) & 7) as u8,
            ),
            (rel & 0xfff) as usize,
        )
    }

    impl Mmio for FakeEcam {
        fn mmio_read(&self, pa: PhysAddr, width: Width) -> Result<u64> {
            width.check_aligned(pa, "fake")?;
            let (f, off) = decode(pa.0);
            let g = self.0.lock();
            let Some(func) = g.get(&f) else {
                return Ok(width.max_value());
            };
            let mut v = 0u64;
            for i in 0..width.bytes() as usize {
                v |= u64::from(func.bytes[off + i]) << (8 * i);
            }
            Ok(v)
        }

        fn mmio_write(&self, pa: PhysAddr, width: Width, value: u64) -> Result<()> {
            width.check_aligned(pa, "fake")?;
            let (f, off) = decode(pa.0);
            let mut g = self.0.lock();
            let Some(func) = g.get_mut(&f) else {
                return Ok(());
            };
            let mut value = value;
            if (0x10..0x28).contains(&off) && width == Width::W32 {
                let i = (off - 0x10) / 4;
                let old = u32::from_le_bytes(func.bytes[off..off + 4].try_into().unwrap());
                let flags = if func.masks[i] == 0xffff_ffff {
                    0
                } else {
                    old & 0xf
                };
                value = u64::from((value as u32 & func.masks[i]) | flags);
            }
            for i in 0..width.bytes() as usize {
                func.bytes[off + i] = (value >> (8 * i)) as u8;
            }
            // The PCIe capability at 0x40: Initiate FLR (Device Control bit 15).
            if off == 0x48 && value & 0x8000 != 0 {
                func.resets += 1;
                func.bytes[0x48 + 1] &= 0x7f;
                for i in 0..6 {
                    let at = 0x10 + 4 * i;
                    let flags = if func.masks[i] == 0xffff_ffff {
                        0
                    } else {
                        func.bytes[at] & 0xf
                    };
                    func.bytes[at..at + 4].copy_from_slice(&[flags, 0, 0, 0]);
                }
                func.bytes[4] = 0;
                func.bytes[5] = 0;
            }
            Ok(())
        }
    }

    fn put32(b: &mut [u8; 4096], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn function(ids: u32, class: u32, header: u8) -> FakeFn {
        let mut bytes = [0u8; 4096];
        put32(&mut bytes, 0, ids);
        put32(&mut bytes, 8, class << 8 | 1);
        bytes[0x0e] = header;
        FakeFn {
            bytes,
            masks: [0; 6],
            resets: 0,
        }
    }

    /// 00:00.0 host bridge; 00:01.0 a bridge to bus 1; 00:02.0 and 00:02.3 a
    /// multi-function device; 01:00.0 an NVMe-like endpoint with a 64-bit BAR0 (16 KiB),
    /// a prefetchable BAR2 (4 KiB), an I/O BAR4 and function-level reset.
    fn machine() -> Arc<FakeEcam> {
        let e = FakeEcam::default();
        let mut g = e.0.lock();
        g.insert((0, 0, 0), function(0x29c0_8086, 0x06_00_00, 0));
        let mut br = function(0x0001_1b36, 0x06_04_00, 1);
        br.bytes[0x19] = 1;
        g.insert((0, 1, 0), br);
        g.insert((0, 2, 0), function(0x11e8_1234, 0x00_ff_00, 0x80));
        g.insert((0, 2, 3), function(0x11e9_1234, 0x00_ff_00, 0));
        let mut nv = function(0x0010_1b36, 0x01_08_02, 0);
        nv.masks = [0xffff_c000, 0xffff_ffff, 0xffff_f000, 0, 0xffff_fffc, 0];
        put32(&mut nv.bytes, 0x10, 0xfe00_0004);
        put32(&mut nv.bytes, 0x14, 0x0000_0001);
        put32(&mut nv.bytes, 0x18, 0xfd00_0008);
        put32(&mut nv.bytes, 0x20, 0x0000_c001);
        nv.bytes[4] = 0x06;
        nv.bytes[6] = 0x10;
        nv.bytes[0x34] = 0x40;
        nv.bytes[0x40] = 0x10;
        put32(&mut nv.bytes, 0x44, 1 << 28);
        g.insert((1, 0, 0), nv);
        drop(g);
        Arc::new(e)
    }

    fn region() -> EcamRegion {
        EcamRegion {
            base: BASE,
            segment: 0,
            start_bus: 0,
            end_bus: 3,
        }
    }

    fn addr(bus: u8, device: u8, function: u8) -> PciAddress {
        PciAddress {
            segment: 0,
            bus,
            device,
            function,
        }
    }

    #[test]
    fn ecam_addresses() {
        let r = region();
        assert_eq!(r.len(), 4 << 20);
        assert_eq!(
            r.address(1, 2, 3, 0x104),
            Some(BASE + (1 << 20) + (2 << 15) + (3 << 12) + 0x104)
        );
        assert_eq!(r.address(4, 0, 0, 0), None);
        assert_eq!(r.address(0, 32, 0, 0), None);
        assert_eq!(r.address(0, 0, 8, 0), None);
        assert_eq!(r.address(0, 0, 0, 0x1000), None);
        let high = EcamRegion {
            start_bus: 0x80,
            end_bus: 0x80,
            ..r
        };
        assert_eq!(high.address(0x80, 0, 0, 0), Some(BASE));
        assert!(
            !high.is_empty()
                && EcamRegion {
                    start_bus: 2,
                    end_bus: 1,
                    ..r
                }
                .is_empty()
        );
    }

    #[test]
    fn the_walk_follows_bridges_and_functions_and_sizes_bars() {
        let fake = machine();
        let bus = EcamBus::builder(fake.clone(), region()).scan().unwrap();
        let found: Vec<PciAddress> = bus.functions().iter().map(|f| f.address()).collect();
        assert_eq!(
            found,
            [
                addr(0, 0, 0),
                addr(0, 1, 0),
                addr(0, 2, 0),
                addr(0, 2, 3),
                addr(1, 0, 0)
            ]
        );
        let nvme = bus.find(&PciMatch::class(0x01_08_02)).unwrap();
        assert_eq!(nvme.address(), addr(1, 0, 0));
        assert_eq!(nvme.id().vendor, 0x1b36);
        let b0 = nvme.bar(0).unwrap();
        assert_eq!(
            (b0.base.0, b0.len, b0.prefetchable),
            (0x1_fe00_0000, 0x4000, false)
        );
        let b2 = nvme.bar(2).unwrap();
        assert_eq!(
            (b2.base.0, b2.len, b2.prefetchable),
            (0xfd00_0000, 0x1000, true)
        );
        for (i, what) in [
            (1u8, "upper half"),
            (3, "unimplemented"),
            (4, "I/O"),
            (6, "index"),
        ] {
            assert!(
                matches!(nvme.bar(i), Err(Error::BadArgument { .. })),
                "BAR{i}: {what}"
            );
        }
        let e = &bus.ecam_functions()[4];
        assert!(e.info().caps.flr && e.info().caps.pcie == Some(0x40));
        assert_eq!(e.info().bars.iter().find(|b| b.io).map(|b| b.len), Some(4));
        assert_eq!(e.memory_bars().count(), 2);
        // Sizing put every BAR and the command register back.
        let g = fake.0.lock();
        let nv = &g[&(1, 0, 0)];
        assert_eq!(
            &nv.bytes[0x10..0x1c],
            &[4, 0, 0, 0xfe, 1, 0, 0, 0, 8, 0, 0, 0xfd]
        );
        assert_eq!(nv.bytes[4], 0x06);
        drop(g);
        // A bridge's secondary bus outside the window is not followed.
        let short = EcamRegion {
            end_bus: 0,
            ..region()
        };
        let bus = EcamBus::builder(fake, short).scan().unwrap();
        assert_eq!(bus.functions().len(), 4);
    }

    #[test]
    fn configuration_accesses_are_checked() {
        let bus = EcamBus::builder(machine(), region()).scan().unwrap();
        let f = bus.find(&PciMatch::class(0x01_08_02)).unwrap();
        assert_eq!(f.config_read(0, Width::W32).unwrap(), 0x0010_1b36);
        assert_eq!(f.config_read(2, Width::W16).unwrap(), 0x0010);
        assert!(matches!(
            f.config_read(0xffe, Width::W32),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            f.config_read(0x1000, Width::W8),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            f.config_read(2, Width::W32),
            Err(Error::NotAligned { .. })
        ));
        assert!(matches!(
            f.config_read(0, Width::W64),
            Err(Error::BadArgument { .. })
        ));
        for (off, w) in [
            (0x10, Width::W32),
            (0x24, Width::W32),
            (0x26, Width::W16),
            (0x30, Width::W8),
        ] {
            assert!(
                matches!(f.config_write(off, w, 0), Err(Error::NotPermitted { .. })),
                "{off:#x}"
            );
        }
        f.config_write(0x0c, Width::W8, 0x10).unwrap();
        assert_eq!(f.config_read(0x0c, Width::W8).unwrap(), 0x10);
        f.set_bus_master(true).unwrap();
        assert_eq!(f.config_read(4, Width::W16).unwrap() & 0x4, 0x4);
        f.set_bus_master(false).unwrap();
        assert_eq!(f.config_read(4, Width::W16).unwrap(), 0x2);
        assert_eq!(
            f.interrupts(),
            Interrupts {
                kind: None,
                vectors: 0
            }
        );
        assert!(f.disable_interrupt(0).is_err());
    }

    #[test]
    fn flr_restores_the_header_and_leaves_bus_mastering_off() {
        let fake = machine();
        let waited = Arc::new(core::sync::atomic::AtomicU64::new(0));
        let w = waited.clone();
        let bus = EcamBus::builder(fake.clone(), region())
            .delay_us(move |us| {
                w.fetch_add(us, core::sync::atomic::Ordering::Relaxed);
            })
            .dma(|info| DmaView::Bypass {
                max_address: if info.address.bus == 1 {
                    0xffff_ffff
                } else {
                    u64::MAX
                },
            })
            .scan()
            .unwrap();
        let f = bus.find(&PciMatch::class(0x01_08_02)).unwrap();
        assert!(matches!(
            f.dma(),
            DmaView::Bypass {
                max_address: 0xffff_ffff
            }
        ));
        f.set_bus_master(true).unwrap();
        f.reset().unwrap();
        let g = fake.0.lock();
        let nv = &g[&(1, 0, 0)];
        assert_eq!(nv.resets, 1);
        assert_eq!(
            &nv.bytes[0x10..0x18],
            &[4, 0, 0, 0xfe, 1, 0, 0, 0],
            "BAR0 restored"
        );
        assert_eq!(
            nv.bytes[4],
            0x06 & !0x4 | 0x2,
            "decoding back, bus mastering off"
        );
        drop(g);
        assert!(waited.load(core::sync::atomic::Ordering::Relaxed) >= 100_000);
        // No FLR: Unsupported. No delay: Unsupported.
        let other = bus.find(&PciMatch::ids(0x1234, 0x11e8)).unwrap();
        assert!(matches!(other.reset(), Err(Error::Unsupported { .. })));
        assert!(matches!(
            bus.find(&PciMatch::ids(0x1234, 0x11e8)).unwrap().dma(),
            DmaView::Bypass {
                max_address: u64::MAX
            }
        ));
        let bus = EcamBus::builder(fake, region()).scan().unwrap();
        let f = bus.find(&PciMatch::class(0x01_08_02)).unwrap();
        assert!(matches!(f.reset(), Err(Error::Unsupported { .. })));
    }
}
