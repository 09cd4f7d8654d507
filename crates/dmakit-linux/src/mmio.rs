//! [`Mmio`] on the host: `mapped_read*`/`mapped_write*` by bus or physical address.
//!
//! IOKit's `IOMappedRead32(address)` takes a *physical* I/O-space address. Here the address
//! is resolved, in order, to:
//!
//! 1. a registered device region ([`Host::register_mmio`]): a PCI BAR mapped through VFIO,
//!    or in tests any memory standing in for one;
//! 2. RAM of one of the host's wired allocations, through the reverse map (needs physical
//!    addresses).
//!
//! Anything else is [`Error::NotMapped`]. Every access is one volatile load or store of
//! exactly the width asked — never split, merged or elided by the compiler — and must be
//! naturally aligned ([`Error::NotAligned`] otherwise). A store writes the low `width` bytes
//! of the value.

use crate::host::Host;
use dmakit::platform::{Mmio, Width};
use dmakit::{Error, PhysAddr, Result};

/// What a lookup failure names.
const UNBACKED: &str = "physical I/O space (no registered MMIO region or wired allocation)";

impl Mmio for Host {
    fn mmio_read(&self, pa: PhysAddr, width: Width) -> Result<u64> {
        width.check_aligned(pa, "MMIO read")?;
        let n = width.bytes();
        let s = self.lock();
        let span = s.io_span(pa.0, n, self.page()).ok_or(Error::NotMapped {
            what: UNBACKED,
            addr: pa.0,
        })?;
        span.load(n as usize).ok_or(Error::NotAligned {
            what: "MMIO read (the CPU mapping is not aligned like the bus address)",
            value: span.addr(),
            align: n,
        })
    }

    fn mmio_write(&self, pa: PhysAddr, width: Width, value: u64) -> Result<()> {
        width.check_aligned(pa, "MMIO write")?;
        let n = width.bytes();
        let s = self.lock();
        let span = s.io_span(pa.0, n, self.page()).ok_or(Error::NotMapped {
            what: UNBACKED,
            addr: pa.0,
        })?;
        if span.store(n as usize, value & width.max_value()) {
            Ok(())
        } else {
            Err(Error::NotAligned {
                what: "MMIO write (the CPU mapping is not aligned like the bus address)",
                value: span.addr(),
                align: n,
            })
        }
    }
}
