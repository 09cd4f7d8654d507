//! A type-0 configuration space: identity, command and status, six BARs that size and
//! decode as real ones, and an MSI-X capability.
//!
//! | offset | register | access |
//! | --- | --- | --- |
//! | 0x00 | vendor ID, device ID | RO |
//! | 0x04 | command | RW bits: 1 memory space, 2 bus master, 10 INTx disable |
//! | 0x06 | status | bit 3 INTx asserted, bit 4 capability list (RO); bit 13 received master abort (RW1C) |
//! | 0x08 | revision ID, class code | RO |
//! | 0x0C | cache line size, latency timer (RW), header type 0, BIST | |
//! | 0x10–0x24 | BAR 0–5 | memory BARs: the address bits above the size are RW; writing all ones reads back the size mask |
//! | 0x2C | subsystem vendor ID, subsystem ID | RO |
//! | 0x34 | capabilities pointer | RO: [`MSIX_CAP`] when the function has MSI-X |
//! | 0x3C | interrupt line (RW), interrupt pin (RO: 1 = INTA) | |
//! | 0x40 | MSI-X capability: ID 0x11, message control (bit 15 enable, bit 14 function mask, RW; table size RO), table and PBA offset/BIR | |
//!
//! The space is 4 KiB (PCI Express); everything not listed reads zero and ignores stores
//! (an empty extended-capability list at 0x100).

use super::model::{BarSpec, DeviceConfig};

/// Vendor ID (16 bits).
pub const VENDOR_ID: u16 = 0x00;
/// Device ID (16 bits).
pub const DEVICE_ID: u16 = 0x02;
/// Command register (16 bits).
pub const COMMAND: u16 = 0x04;
/// Status register (16 bits).
pub const STATUS: u16 = 0x06;
/// Revision ID (8 bits).
pub const REVISION_ID: u16 = 0x08;
/// Class code: programming interface at 0x09, subclass 0x0A, base class 0x0B.
pub const CLASS_CODE: u16 = 0x09;
/// Header type (8 bits; 0 here).
pub const HEADER_TYPE: u16 = 0x0E;
/// BAR 0; BAR *n* is at `BAR0 + 4 n`.
pub const BAR0: u16 = 0x10;
/// Subsystem vendor ID (16 bits).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;
/// Subsystem ID (16 bits).
pub const SUBSYSTEM_ID: u16 = 0x2E;
/// Capabilities pointer (8 bits).
pub const CAP_PTR: u16 = 0x34;
/// Interrupt line (8 bits).
pub const INTERRUPT_LINE: u16 = 0x3C;
/// Interrupt pin (8 bits).
pub const INTERRUPT_PIN: u16 = 0x3D;
/// Where the MSI-X capability sits.
pub const MSIX_CAP: u16 = 0x40;
/// MSI-X message control, relative to the capability.
pub const MSIX_CONTROL: u16 = 0x02;
/// MSI-X table offset and BIR, relative to the capability.
pub const MSIX_TABLE: u16 = 0x04;
/// MSI-X PBA offset and BIR, relative to the capability.
pub const MSIX_PBA: u16 = 0x08;
/// The MSI-X capability ID.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Bytes of configuration space.
pub const SPACE_BYTES: u16 = 0x1000;

/// Command: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: the function may master the bus (DMA, MSI-X messages).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: the INTx pin is not asserted.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status: the function asserts INTx (whether or not it is disabled).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status: a capability list exists.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status (RW1C): a DMA of the function ended in a master abort (no memory answered).
pub const STATUS_RECEIVED_MASTER_ABORT: u16 = 1 << 13;
/// MSI-X message control: MSI-X enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X message control: every vector masked.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;

/// The writable bits of the command register.
const COMMAND_RW: u16 = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;

/// One BAR register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bar {
    /// Not implemented: reads zero.
    None,
    /// A 32-bit memory BAR.
    Mem32 { spec: BarSpec, addr: u32 },
    /// The low half of a 64-bit memory BAR (the address is whole here).
    Mem64 { spec: BarSpec, addr: u64 },
    /// The upper half of the 64-bit BAR below it.
    Upper,
}

/// The MSI-X capability's registers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MsixCap {
    pub vectors: u16,
    pub enable: bool,
    pub function_mask: bool,
    pub table: u32,
    pub pba: u32,
}

/// What a configuration write changed that the function must act on.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Effect {
    /// MSI-X was enabled or the function mask cleared: deliver pending vectors.
    pub msix_unmasked: bool,
    /// INTx disable was cleared: a line held high delivers.
    pub intx_enabled: bool,
}

/// A function's configuration space.
#[derive(Clone, Debug)]
pub(crate) struct ConfigSpace {
    pub desc: DeviceConfig,
    pub command: u16,
    pub master_abort: bool,
    pub intx_level: bool,
    pub cache_line: u8,
    pub latency: u8,
    pub int_line: u8,
    pub bars: [Bar; 6],
    pub msix: Option<MsixCap>,
}

impl ConfigSpace {
    /// The reset state of a function described by `desc` (validated).
    pub fn new(desc: DeviceConfig) -> Self {
        let mut bars = [Bar::None; 6];
        for (i, b) in desc.bars.iter().enumerate() {
            if let Some(spec) = *b {
                if spec.bits64 {
                    bars[i] = Bar::Mem64 { spec, addr: 0 };
                    if i + 1 < 6 {
                        bars[i + 1] = Bar::Upper;
                    }
                } else {
                    bars[i] = Bar::Mem32 { spec, addr: 0 };
                }
            }
        }
        let msix = desc.msix.map(|m| MsixCap {
            vectors: m.vectors,
            enable: false,
            function_mask: false,
            table: m.table_offset | m.table_bar as u32,
            pba: m.pba_offset | m.pba_bar as u32,
        });
        ConfigSpace {
            desc,
            command: 0,
            master_abort: false,
            intx_level: false,
            cache_line: 0,
            latency: 0,
            int_line: 0,
            bars,
            msix,
        }
    }

    /// Back to the reset state, keeping BAR addresses and memory decoding (what a platform
    /// restores around a function reset).
    pub fn reset_keeping_bars(&mut self) {
        let bars = self.bars;
        let memory = self.command & COMMAND_MEMORY;
        *self = ConfigSpace::new(self.desc);
        self.bars = bars;
        self.command = memory;
    }

    pub fn memory_enabled(&self) -> bool {
        self.command & COMMAND_MEMORY != 0
    }

    pub fn bus_master(&self) -> bool {
        self.command & COMMAND_BUS_MASTER != 0
    }

    pub fn intx_disabled(&self) -> bool {
        self.command & COMMAND_INTX_DISABLE != 0
    }

    /// BAR `i`'s address and spec, if it is a memory BAR (the low slot of a 64-bit one).
    pub fn bar(&self, i: usize) -> Option<(u64, BarSpec)> {
        match self.bars.get(i)? {
            Bar::Mem32 { spec, addr } => Some((*addr as u64, *spec)),
            Bar::Mem64 { spec, addr } => Some((*addr, *spec)),
            _ => None,
        }
    }

    /// Which memory BAR decodes `[pa, pa + len)`, with the offset inside it.
    pub fn decode(&self, pa: u64, len: u64) -> Option<(u8, u64)> {
        if !self.memory_enabled() {
            return None;
        }
        (0..6).find_map(|i| {
            let (base, spec) = self.bar(i)?;
            let off = pa.checked_sub(base)?;
            (off.checked_add(len)? <= spec.size).then_some((i as u8, off))
        })
    }

    fn flags(spec: &BarSpec) -> u32 {
        let mut f = 0;
        if spec.bits64 {
            f |= 0b100;
        }
        if spec.prefetchable {
            f |= 0b1000;
        }
        f
    }

    /// The dword at `off` (4-aligned).
    pub fn read_dword(&self, off: u16) -> u32 {
        let d = &self.desc;
        let msix = MSIX_CAP;
        match off {
            0x00 => d.id.vendor as u32 | (d.id.device as u32) << 16,
            0x04 => self.command as u32 | (self.status() as u32) << 16,
            0x08 => d.revision as u32 | (d.id.class & 0xFF_FFFF) << 8,
            0x0C => self.cache_line as u32 | (self.latency as u32) << 8,
            0x10..=0x24 => {
                let i = ((off - BAR0) / 4) as usize;
                match self.bars[i] {
                    Bar::None => 0,
                    Bar::Mem32 { spec, addr } => addr | Self::flags(&spec),
                    Bar::Mem64 { spec, addr } => addr as u32 | Self::flags(&spec),
                    Bar::Upper => match self.bars[i - 1] {
                        Bar::Mem64 { addr, .. } => (addr >> 32) as u32,
                        _ => 0,
                    },
                }
            }
            0x2C => d.subsystem.0 as u32 | (d.subsystem.1 as u32) << 16,
            0x34 => {
                if self.msix.is_some() {
                    msix as u32
                } else {
                    0
                }
            }
            0x3C => self.int_line as u32 | (if d.intx { 1u32 } else { 0 }) << 8,
            _ => match self.msix {
                Some(m) if off == msix => {
                    let control = (m.vectors - 1)
                        | if m.function_mask {
                            MSIX_FUNCTION_MASK
                        } else {
                            0
                        }
                        | if m.enable { MSIX_ENABLE } else { 0 };
                    CAP_ID_MSIX as u32 | (control as u32) << 16
                }
                Some(m) if off == msix + MSIX_TABLE => m.table,
                Some(m) if off == msix + MSIX_PBA => m.pba,
                _ => 0,
            },
        }
    }

    fn status(&self) -> u16 {
        let mut s = 0;
        if self.msix.is_some() {
            s |= STATUS_CAP_LIST;
        }
        if self.intx_level {
            s |= STATUS_INTERRUPT;
        }
        if self.master_abort {
            s |= STATUS_RECEIVED_MASTER_ABORT;
        }
        s
    }

    /// A store to the dword at `off`: `merged` is the dword with the written bytes
    /// replaced, `written` the mask of the bits the store covered.
    pub fn write_dword(&mut self, off: u16, merged: u32, written: u32) -> Effect {
        let mut effect = Effect::default();
        match off {
            0x04 => effect.intx_enabled = self.write_command_status(merged, written),
            0x0C => {
                self.cache_line = merged as u8;
                self.latency = (merged >> 8) as u8;
            }
            0x10..=0x24 => self.write_bar(((off - BAR0) / 4) as usize, merged),
            0x3C => self.int_line = merged as u8,
            o if o == MSIX_CAP && written & 0xFFFF_0000 != 0 => {
                effect.msix_unmasked = self.write_msix_control(merged);
            }
            _ => {}
        }
        effect
    }

    /// A store to the command register (when `written` covers it) and the status
    /// register's write-one-to-clear bits; whether it turned INTx delivery back on.
    fn write_command_status(&mut self, merged: u32, written: u32) -> bool {
        let mut intx_enabled = false;
        if written & 0xFFFF != 0 {
            let before = self.command;
            self.command = merged as u16 & COMMAND_RW;
            intx_enabled =
                before & COMMAND_INTX_DISABLE != 0 && self.command & COMMAND_INTX_DISABLE == 0;
        }
        let w1c = (merged & written) >> 16;
        if w1c as u16 & STATUS_RECEIVED_MASTER_ABORT != 0 {
            self.master_abort = false;
        }
        intx_enabled
    }

    /// A store of `merged` to BAR register `i`: the address bits the BAR's size leaves
    /// writable (the upper half of a 64-bit BAR goes to the BAR below it).
    fn write_bar(&mut self, i: usize, merged: u32) {
        match self.bars[i] {
            Bar::Mem32 { spec, .. } => {
                let mask = !(spec.size as u32 - 1);
                self.bars[i] = Bar::Mem32 {
                    spec,
                    addr: merged & mask,
                };
            }
            Bar::Mem64 { spec, addr } => {
                let mask = !(spec.size - 1) & 0xFFFF_FFFF;
                self.bars[i] = Bar::Mem64 {
                    spec,
                    addr: (addr & !0xFFFF_FFFF) | (merged as u64 & mask),
                };
            }
            Bar::Upper => {
                if let Bar::Mem64 { spec, addr } = self.bars[i - 1] {
                    self.bars[i - 1] = Bar::Mem64 {
                        spec,
                        addr: (addr & 0xFFFF_FFFF) | (merged as u64) << 32,
                    };
                }
            }
            Bar::None => {}
        }
    }

    /// A store to the MSI-X message control word (the upper half of `merged`): whether it
    /// unmasked the vectors (enabled and not masked, from disabled or masked). Nothing
    /// without MSI-X.
    fn write_msix_control(&mut self, merged: u32) -> bool {
        let Some(m) = self.msix.as_mut() else {
            return false;
        };
        let control = (merged >> 16) as u16;
        let was_live = m.enable && !m.function_mask;
        m.enable = control & MSIX_ENABLE != 0;
        m.function_mask = control & MSIX_FUNCTION_MASK != 0;
        !was_live && m.enable && !m.function_mask
    }
}
