//! `mapped_read8/16/32/64` and `mapped_write8/16/32/64` (IOKit's `IOMappedRead*` /
//! `IOMappedWrite*`).
//!
//! The address is a physical I/O-space address, as `getPhysicalSegment` returns it; the
//! platform resolves it (the simulator: an MMIO window's device model, or RAM; Linux: a
//! registered device region such as a mapped BAR, or a wired allocation). Each call is one
//! naturally aligned access of exactly its width, never torn or merged. A misaligned address
//! is [`Error::NotAligned`](crate::Error::NotAligned) and an address nothing backs is
//! [`Error::NotMapped`](crate::Error::NotMapped): errors, not machine checks (IOKit checks
//! neither and leaves both to the hardware).
//!
//! IOKit first translates the address through the system mapper when there is one, because
//! its `getPhysicalSegment` then returns IO virtual addresses. dmakit's
//! [`physical_segment`](crate::descriptor::MemoryDescriptor::physical_segment) always
//! returns CPU physical addresses (IO virtual addresses come only from a DMA command or a
//! mapper), so these calls take a CPU physical address and translate nothing: do not pass
//! them an address a mapper handed out.
//!
//! ```
//! use dmakit::map::{mapped_read16, mapped_read32, mapped_write32};
//! use dmakit::{Error, PhysAddr};
//! use dmakit_sim::{MachineBuilder, ScratchDevice};
//! use std::sync::{Arc, Mutex};
//!
//! // A register block at 0xFE00_0000 (a simulated device that reads back what it was told).
//! let regs = Arc::new(Mutex::new(ScratchDevice::new(0xC0DE, 0x40)));
//! let p = MachineBuilder::new().mmio(0xFE00_0000, 0x1000, regs.clone()).build()?;
//! let bar = PhysAddr(0xFE00_0000);
//! assert_eq!(mapped_read32(&p, bar)?, 0xC0DE);          // an ID register
//! let doorbell = PhysAddr(bar.0 + 0x10);
//! mapped_write32(&p, doorbell, 0x1)?;                   // ring a doorbell
//! assert_eq!(mapped_read32(&p, doorbell)?, 0x1);
//! assert_eq!(regs.lock().unwrap().log().len(), 3, "one device access per call");
//! assert!(matches!(mapped_read16(&p, PhysAddr(bar.0 + 1)), Err(Error::NotAligned { .. })));
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::platform::{Mmio, Width};
use crate::{PhysAddr, Result};

macro_rules! mapped {
    ($read:ident, $write:ident, $t:ty, $w:expr, $doc_r:literal, $doc_w:literal) => {
        #[doc = $doc_r]
        pub fn $read<P: Mmio + ?Sized>(platform: &P, addr: PhysAddr) -> Result<$t> {
            // The platform zero-extends a value of this width, so it fits.
            Ok(platform.mmio_read(addr, $w)? as $t)
        }

        #[doc = $doc_w]
        pub fn $write<P: Mmio + ?Sized>(platform: &P, addr: PhysAddr, value: $t) -> Result<()> {
            platform.mmio_write(addr, $w, value as u64)
        }
    };
}

mapped!(
    mapped_read8,
    mapped_write8,
    u8,
    Width::W8,
    "IOMappedRead8: one byte at `addr`.",
    "IOMappedWrite8: one byte at `addr`."
);
mapped!(
    mapped_read16,
    mapped_write16,
    u16,
    Width::W16,
    "IOMappedRead16: two bytes at `addr` (2-aligned).",
    "IOMappedWrite16: two bytes at `addr` (2-aligned)."
);
mapped!(
    mapped_read32,
    mapped_write32,
    u32,
    Width::W32,
    "IOMappedRead32: four bytes at `addr` (4-aligned).",
    "IOMappedWrite32: four bytes at `addr` (4-aligned)."
);
mapped!(
    mapped_read64,
    mapped_write64,
    u64,
    Width::W64,
    "IOMappedRead64: eight bytes at `addr` (8-aligned).",
    "IOMappedWrite64: eight bytes at `addr` (8-aligned)."
);
