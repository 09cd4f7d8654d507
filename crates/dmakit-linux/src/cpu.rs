//! [`CpuAccess`] on the host: copies to and from memory the host knows.
//!
//! A safe function that copied from an arbitrary address would let safe code read freed or
//! unmapped memory. So the host copies only within memory it can vouch for: its own
//! allocations (up to the length asked for), its second mappings, and regions the caller
//! registered with the `unsafe` [`Host::register_region`]. A range that is not wholly inside
//! one of those is [`Error::NotMapped`], never a fault. Stores to a read-only second mapping
//! are [`Error::NotWritable`].

use crate::host::Host;
use dmakit::platform::{CpuAccess, Task};
use dmakit::{Error, Result, VirtAddr};

/// What a lookup failure names.
const UNKNOWN: &str = "dmakit host memory (not allocated, mapped or registered by this host)";

impl CpuAccess for Host {
    fn read_virt(&self, task: Task, va: VirtAddr, buf: &mut [u8]) -> Result<()> {
        Self::check_task(task)?;
        if buf.is_empty() {
            return Ok(());
        }
        let s = self.lock();
        let span = s.cpu_span(va.0, buf.len() as u64).ok_or(Error::NotMapped {
            what: UNKNOWN,
            addr: va.0,
        })?;
        span.read(buf);
        Ok(())
    }

    fn write_virt(&self, task: Task, va: VirtAddr, data: &[u8]) -> Result<()> {
        Self::check_task(task)?;
        if data.is_empty() {
            return Ok(());
        }
        let s = self.lock();
        let span = s
            .cpu_span(va.0, data.len() as u64)
            .ok_or(Error::NotMapped {
                what: UNKNOWN,
                addr: va.0,
            })?;
        span.write(data).ok_or(Error::NotWritable {
            what: "read-only mapping",
            addr: va.0,
        })?;
        Ok(())
    }
}
