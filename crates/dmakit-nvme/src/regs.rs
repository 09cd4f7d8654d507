//! The controller's registers in BAR0 (NVMe Base Specification §3.1), reached through the
//! platform's [`Mmio`](dmakit::platform::Mmio).

use dmakit::device::BarInfo;
use dmakit::map::{mapped_read32, mapped_write32};
use dmakit::platform::{Platform, Width};
use dmakit::{PhysAddr, Result};

pub(crate) const CAP: u64 = 0x00;
pub(crate) const VS: u64 = 0x08;
pub(crate) const CC: u64 = 0x14;
pub(crate) const CSTS: u64 = 0x1c;
pub(crate) const AQA: u64 = 0x24;
pub(crate) const ASQ: u64 = 0x28;
pub(crate) const ACQ: u64 = 0x30;
const DOORBELLS: u64 = 0x1000;

pub(crate) const CC_EN: u32 = 1;
/// 64-byte submission entries (`IOSQES = 6`) and 16-byte completion entries (`IOCQES =
/// 4`), 4 KiB memory pages (`MPS = 0`), the NVM command set (`CSS = 0`).
pub(crate) const CC_ENTRY_SIZES: u32 = 6 << 16 | 4 << 20;
pub(crate) const CSTS_RDY: u32 = 1;
pub(crate) const CSTS_CFS: u32 = 2;

/// BAR0 and the doorbell stride.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Regs {
    pub(crate) bar: BarInfo,
    /// Bytes between doorbells (`4 << CAP.DSTRD`).
    pub(crate) stride: u64,
}

impl Regs {
    pub(crate) fn read32<P: Platform>(&self, p: &P, off: u64) -> Result<u32> {
        mapped_read32(p, self.bar.reg(off, Width::W32)?)
    }

    pub(crate) fn write32<P: Platform>(&self, p: &P, off: u64, v: u32) -> Result<()> {
        mapped_write32(p, self.bar.reg(off, Width::W32)?, v)
    }

    /// A 64-bit register as two 32-bit reads (low, then high), as the specification allows.
    pub(crate) fn read64<P: Platform>(&self, p: &P, off: u64) -> Result<u64> {
        let lo = self.read32(p, off)? as u64;
        let hi = self.read32(p, off + 4)? as u64;
        Ok(hi << 32 | lo)
    }

    /// A 64-bit register as two 32-bit writes (low, then high).
    pub(crate) fn write64<P: Platform>(&self, p: &P, off: u64, v: u64) -> Result<()> {
        self.write32(p, off, v as u32)?;
        self.write32(p, off + 4, (v >> 32) as u32)
    }

    /// The SQ tail and CQ head doorbells of queue `qid`, checked against the BAR.
    pub(crate) fn doorbells(&self, qid: u16) -> Result<(PhysAddr, PhysAddr)> {
        let sq = DOORBELLS + 2 * qid as u64 * self.stride;
        Ok((
            self.bar.reg(sq, Width::W32)?,
            self.bar.reg(sq + self.stride, Width::W32)?,
        ))
    }
}
