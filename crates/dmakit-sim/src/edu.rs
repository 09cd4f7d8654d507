//! QEMU's `edu` teaching device behind a simulated PCI function: [`EduModel`] and its
//! handle [`SimEdu`].
//!
//! PCI `1234:11e8`, class `00ff00`, one 32-bit BAR of 1 MiB, an INTx pin. Its registers
//! (BAR 0), as QEMU's `hw/misc/edu.c` has them:
//!
//! | offset | register | access |
//! | --- | --- | --- |
//! | 0x00 | identification `0x010000ed` (major 1, minor 0, `ed`) | RO |
//! | 0x04 | liveness: reads back the bitwise inverse of what was written | RW |
//! | 0x08 | factorial: writing *n* computes *n*! (32 bits, wrapping); reading gives it | RW |
//! | 0x20 | status: bit 0 computing (RO, never seen here: the computation is synchronous), bit 7 raise interrupt `0x1` when a factorial finishes | RW |
//! | 0x24 | interrupt status | RO |
//! | 0x60 | interrupt raise: ORs the value into the status and asserts the line | WO |
//! | 0x64 | interrupt acknowledge: clears the bits written; the line drops when none is left | WO |
//! | 0x80 | DMA source address (64 bits) | RW |
//! | 0x88 | DMA destination address (64 bits) | RW |
//! | 0x90 | DMA count (64 bits) | RW |
//! | 0x98 | DMA command: bit 0 start (clears when done), bit 1 direction (0: RAM → device, 1: device → RAM), bit 2 raise interrupt `0x100` when done | RW |
//!
//! Registers below 0x80 take 32-bit accesses only, the DMA registers 32- or 64-bit ones
//! (a 32-bit store sets the whole register); other accesses read all ones and drop stores,
//! and unknown offsets read all ones.
//!
//! The DMA engine copies between RAM and the device's 4 KiB buffer at device address
//! [`EDU_BUFFER`] (`0x40000`). The buffer side must lie inside it (a transfer may use all
//! of it); a transfer that does not is refused and counted ([`SimEdu::refused`]). The RAM
//! side is **clamped as QEMU does**: the device drives `address & dma_mask` (QEMU's default
//! mask is 28 bits), so an address above the mask silently reaches another page. The DMA
//! goes through the function's path (IOMMU domain or bypass) with bus mastering honoured;
//! as in QEMU, a failed DMA still completes the command (and raises its interrupt), with
//! the data unmoved.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
//! use dmakit::device::{DmaView, PciBus, PciMatch};
//! use dmakit::dma::{DmaCommand, PrepareOptions};
//! use dmakit::map::{mapped_read32, mapped_write32, mapped_write64};
//! use dmakit::{Direction, PhysAddr};
//! use dmakit_sim::edu::{regs, SimEdu, EDU_BUFFER, EDU_DEVICE, EDU_VENDOR};
//! use dmakit_sim::{pci::SimPciBus, MachineBuilder};
//! use std::sync::Arc;
//!
//! let m = Arc::new(MachineBuilder::new().build()?);
//! let bus = SimPciBus::new(m.clone())?;
//! let edu = SimEdu::builder().attach(&bus)?; // 28-bit DMA, behind its own IOMMU domain
//! let f = bus.find(&PciMatch::ids(EDU_VENDOR, EDU_DEVICE))?;
//! let reg = |off| PhysAddr(f.bar(0).map_or(0, |b| b.base.0) + off);
//! mapped_write32(&*m, reg(regs::FACTORIAL), 5)?;
//! assert_eq!(mapped_read32(&*m, reg(regs::FACTORIAL))?, 120);
//!
//! // Copy 16 bytes of RAM into the device's buffer.
//! f.set_bus_master(true)?;
//! let DmaView::Mapped(mapper) = f.dma() else { unreachable!("an IOMMU domain") };
//! let md: Arc<dyn MemoryDescriptor> =
//!     Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), b"sixteen bytes!!!", Direction::Out)?);
//! let mut cmd = DmaCommand::builder(m.clone()).mapper(mapper).build()?;
//! cmd.set_memory_descriptor(md)?;
//! cmd.prepare(PrepareOptions::new())?;
//! let src = cmd.segments().next().expect("one segment")?.addr.0;
//! mapped_write64(&*m, reg(regs::DMA_SRC), src)?;
//! mapped_write64(&*m, reg(regs::DMA_DST), EDU_BUFFER.0)?;
//! mapped_write64(&*m, reg(regs::DMA_COUNT), 16)?;
//! mapped_write64(&*m, reg(regs::DMA_CMD), regs::CMD_START)?; // RAM -> device, done at once
//! cmd.complete()?;
//! assert_eq!(&edu.buffer()[..16], b"sixteen bytes!!!");
//! assert_eq!(edu.transfers(), 1);
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::pci::{
    BarSpec, DeviceConfig, DeviceContext, DmaMode, FunctionConfig, PciDeviceModel, SimPciBus,
    SimPciFunction,
};
use dmakit::device::PciId;
use dmakit::platform::Width;
use dmakit::{Error, Result};
use std::sync::Arc;

/// `edu`'s vendor ID.
pub const EDU_VENDOR: u16 = 0x1234;
/// `edu`'s device ID.
pub const EDU_DEVICE: u16 = 0x11e8;
/// `edu`'s class code (unclassified device).
pub const EDU_CLASS: u32 = 0x00_ff_00;
/// The device buffer: device address and length.
pub const EDU_BUFFER: (u64, u64) = (0x40000, 0x1000);
/// QEMU's default `dma_mask`: 28 bits.
pub const EDU_DEFAULT_DMA_MASK: u64 = (1 << 28) - 1;
/// BAR 0's size.
pub const EDU_BAR_BYTES: u64 = 0x10_0000;

/// Register offsets and bits.
pub mod regs {
    /// Identification (RO).
    pub const ID: u64 = 0x00;
    /// What [`ID`] reads.
    pub const ID_VALUE: u32 = 0x0100_00ed;
    /// Liveness check.
    pub const LIVENESS: u64 = 0x04;
    /// Factorial.
    pub const FACTORIAL: u64 = 0x08;
    /// Status.
    pub const STATUS: u64 = 0x20;
    /// Status: computing.
    pub const STATUS_COMPUTING: u32 = 0x01;
    /// Status: raise interrupt [`IRQ_FACTORIAL`] when a factorial is done.
    pub const STATUS_IRQ_FACTORIAL: u32 = 0x80;
    /// Interrupt status (RO).
    pub const IRQ_STATUS: u64 = 0x24;
    /// Interrupt raise (WO).
    pub const IRQ_RAISE: u64 = 0x60;
    /// Interrupt acknowledge (WO).
    pub const IRQ_ACK: u64 = 0x64;
    /// DMA source.
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination.
    pub const DMA_DST: u64 = 0x88;
    /// DMA count.
    pub const DMA_COUNT: u64 = 0x90;
    /// DMA command.
    pub const DMA_CMD: u64 = 0x98;
    /// DMA command: start.
    pub const CMD_START: u64 = 0x1;
    /// DMA command: device → RAM (clear: RAM → device).
    pub const CMD_TO_RAM: u64 = 0x2;
    /// DMA command: raise [`IRQ_DMA`] when done.
    pub const CMD_IRQ: u64 = 0x4;
    /// The interrupt status bit of a finished factorial.
    pub const IRQ_FACTORIAL: u32 = 0x1;
    /// The interrupt status bit of a finished DMA.
    pub const IRQ_DMA: u32 = 0x100;
}

use regs::*;

/// The device model.
#[derive(Clone, Debug)]
pub struct EduModel {
    dma_mask: u64,
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    buffer: Box<[u8; EDU_BUFFER.1 as usize]>,
    transfers: u64,
    refused: u64,
    clamped: u64,
}

impl EduModel {
    /// A device whose DMA drives `address & dma_mask`.
    pub fn new(dma_mask: u64) -> Self {
        EduModel {
            dma_mask,
            liveness: 0,
            factorial: 0,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            buffer: Box::new([0; EDU_BUFFER.1 as usize]),
            transfers: 0,
            refused: 0,
            clamped: 0,
        }
    }

    /// The device buffer.
    pub fn buffer(&self) -> &[u8] {
        &self.buffer[..]
    }

    fn raise(&mut self, ctx: &mut DeviceContext<'_>, bits: u32) {
        self.irq_status |= bits;
        if self.irq_status != 0 {
            ctx.set_intx(true);
        }
    }

    fn lower(&mut self, ctx: &mut DeviceContext<'_>, bits: u32) {
        self.irq_status &= !bits;
        if self.irq_status == 0 {
            ctx.set_intx(false);
        }
    }

    /// The offset in the buffer of `[addr, addr + len)`, if it lies inside.
    fn in_buffer(addr: u64, len: u64) -> Option<usize> {
        let off = addr.checked_sub(EDU_BUFFER.0)?;
        (off.checked_add(len)? <= EDU_BUFFER.1).then_some(off as usize)
    }

    fn clamp(&mut self, addr: u64) -> u64 {
        let a = addr & self.dma_mask;
        if a != addr {
            self.clamped += 1;
        }
        a
    }

    fn run_dma(&mut self, ctx: &mut DeviceContext<'_>) {
        let len = self.dma_count;
        let to_ram = self.dma_cmd & CMD_TO_RAM != 0;
        let (dev, ram) = if to_ram {
            (self.dma_src, self.dma_dst)
        } else {
            (self.dma_dst, self.dma_src)
        };
        match Self::in_buffer(dev, len) {
            None => self.refused += 1,
            Some(off) => {
                let ram = self.clamp(ram);
                let n = len as usize;
                if to_ram {
                    let _ = ctx.dma_write(ram, &self.buffer[off..off + n]);
                } else {
                    let mut tmp = vec![0u8; n];
                    if ctx.dma_read(ram, &mut tmp).is_ok() {
                        self.buffer[off..off + n].copy_from_slice(&tmp);
                    }
                }
                self.transfers += 1;
            }
        }
        self.dma_cmd &= !CMD_START;
        if self.dma_cmd & CMD_IRQ != 0 {
            self.raise(ctx, IRQ_DMA);
        }
    }
}

impl PciDeviceModel for EduModel {
    fn name(&self) -> &str {
        "edu"
    }

    fn config(&self) -> DeviceConfig {
        DeviceConfig::new(PciId {
            vendor: EDU_VENDOR,
            device: EDU_DEVICE,
            class: EDU_CLASS,
        })
        .revision(0x10)
        .subsystem(0x1af4, 0x1100)
        .bar(0, BarSpec::mem32(EDU_BAR_BYTES))
        .intx(true)
    }

    fn bar_read(&mut self, _: &mut DeviceContext<'_>, bar: u8, offset: u64, width: Width) -> u64 {
        let ok = match offset {
            _ if bar != 0 => false,
            0..0x80 => width == Width::W32,
            _ => matches!(width, Width::W32 | Width::W64),
        };
        if !ok {
            return u64::MAX;
        }
        match offset {
            ID => ID_VALUE as u64,
            LIVENESS => self.liveness as u64,
            FACTORIAL => self.factorial as u64,
            STATUS => self.status as u64,
            IRQ_STATUS => self.irq_status as u64,
            DMA_SRC => self.dma_src,
            DMA_DST => self.dma_dst,
            DMA_COUNT => self.dma_count,
            DMA_CMD => self.dma_cmd,
            _ => u64::MAX,
        }
    }

    fn bar_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        bar: u8,
        offset: u64,
        width: Width,
        value: u64,
    ) {
        let ok = match offset {
            _ if bar != 0 => false,
            0..0x80 => width == Width::W32,
            _ => matches!(width, Width::W32 | Width::W64),
        };
        if !ok {
            return;
        }
        let v32 = value as u32;
        match offset {
            LIVENESS => self.liveness = !v32,
            FACTORIAL if self.status & STATUS_COMPUTING == 0 => {
                self.factorial = (1..=v32).fold(1u32, |acc, i| acc.wrapping_mul(i));
                if self.status & STATUS_IRQ_FACTORIAL != 0 {
                    self.raise(ctx, IRQ_FACTORIAL);
                }
            }
            STATUS => {
                self.status = (self.status & !STATUS_IRQ_FACTORIAL) | (v32 & STATUS_IRQ_FACTORIAL)
            }
            IRQ_RAISE => self.raise(ctx, v32),
            IRQ_ACK => self.lower(ctx, v32),
            DMA_SRC => self.dma_src = value,
            DMA_DST => self.dma_dst = value,
            DMA_COUNT => self.dma_count = value,
            DMA_CMD if value & CMD_START != 0 => {
                self.dma_cmd = value;
                self.run_dma(ctx);
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        *self = EduModel::new(self.dma_mask);
    }
}

/// The description of an `edu` device.
#[derive(Clone, Copy, Debug)]
#[must_use = "a builder does nothing until attached"]
pub struct SimEduBuilder {
    dma_mask: u64,
    function: FunctionConfig,
}

impl SimEduBuilder {
    /// The DMA mask (QEMU's `dma_mask` property). Default [`EDU_DEFAULT_DMA_MASK`]. It must
    /// reach the device buffer and some RAM: at least 2^21 - 1.
    pub fn dma_mask(mut self, mask: u64) -> Self {
        self.dma_mask = mask;
        self
    }

    /// Where the function goes and its DMA path. Default: the next free device number, and
    /// an IOMMU domain whose window is `[1 MiB, min(dma_mask + 1, 4 GiB))`, so every IO
    /// address the mapper hands out survives the clamp.
    pub fn function(mut self, config: FunctionConfig) -> Self {
        self.function = config;
        self
    }

    /// Plugs the device into `bus`.
    pub fn attach(self, bus: &SimPciBus) -> Result<SimEdu> {
        if self.dma_mask < (1 << 21) - 1 {
            return Err(Error::BadArgument {
                what: "edu dma_mask (at least 21 bits)",
                value: self.dma_mask,
            });
        }
        let mut config = self.function;
        if config.dma.is_none() {
            let end = self.dma_mask.saturating_add(1).min(1 << 32) & !0xF_FFFF;
            config = config.dma(DmaMode::Iommu {
                base: 0x10_0000,
                len: end - 0x10_0000,
            });
        }
        let function = bus.add(Box::new(EduModel::new(self.dma_mask)), config)?;
        Ok(SimEdu { function })
    }
}

/// A handle on an `edu` device plugged into a [`SimPciBus`]: its function (what a driver
/// gets from the bus) and a look inside the model.
#[derive(Clone, Debug)]
pub struct SimEdu {
    function: Arc<SimPciFunction>,
}

impl SimEdu {
    /// The description of a device with QEMU's defaults.
    pub fn builder() -> SimEduBuilder {
        SimEduBuilder {
            dma_mask: EDU_DEFAULT_DMA_MASK,
            function: FunctionConfig::default(),
        }
    }

    /// The PCI function.
    pub fn function(&self) -> &Arc<SimPciFunction> {
        &self.function
    }

    fn model<R: Default>(&self, f: impl FnOnce(&mut EduModel) -> R) -> R {
        // The function was made with an EduModel and models are never replaced, so the
        // default is never taken.
        self.function
            .with_device::<EduModel, R>(|m, _| f(m))
            .unwrap_or_default()
    }

    /// A copy of the device buffer.
    pub fn buffer(&self) -> Vec<u8> {
        self.model(|m| m.buffer().to_vec())
    }

    /// DMA transfers carried out (whether or not the bus let the data through).
    pub fn transfers(&self) -> u64 {
        self.model(|m| m.transfers)
    }

    /// DMA commands refused because the buffer side was outside the device buffer.
    pub fn refused(&self) -> u64 {
        self.model(|m| m.refused)
    }

    /// DMA addresses that the mask clamped to another address.
    pub fn clamped(&self) -> u64 {
        self.model(|m| m.clamped)
    }
}
