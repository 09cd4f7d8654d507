//! [`CpuAccess`] on the host: copies to and from memory the host knows.
//!
//! A safe function that copied from an arbitrary address would let safe code read freed or
//! unmapped memory. So the host copies only within memory it can vouch for: its own
//! allocations (up to the length asked for), its second mappings, and regions the caller
//! registered with the `unsafe` [`Host::register_region`]. A range that is not wholly inside
//! one of those is [`Error::NotMapped`], never a fault. Stores to a read-only second mapping
//! are [`Error::NotWritable`].
//!
//! [`CpuAccess::copy_virt`] between two ranges that both lie in allocations of this host is
//! one bounds-checked `memmove` between their spans (one copy per byte; overlapping ranges of
//! one allocation are copied as if through a temporary). From 8 KiB on, that `memmove`
//! runs after the host's lock is released, with a flag that every later taker of the lock
//! waits out: as exclusive as copying under the lock, without the unlock right after the
//! copy, which would wait for all of the copy's stores to leave the core. Allocations are
//! separate memory objects, so two of them never reach the same pages. A second mapping or
//! a registered region may reach the same pages as another address, which a `memmove` could
//! not see; a copy that involves one is staged through a temporary buffer of the whole
//! length (two copies per byte, but right even when the two views alias).

use crate::host::Host;
use dmakit::platform::{CpuAccess, DirectSlice, DirectSliceMut, Task};
use dmakit::{Error, Result, VirtAddr};

/// From this many bytes on, a copy between two allocations runs after the registry lock is
/// released (`Host::copy_unlocked`, which still keeps everyone else off the registry until
/// it is done): releasing the lock right after a large copy would wait for all its stores.
/// Below it the copy's stores drain quickly and the plain unlock is cheaper.
const LOOSE_COPY_MIN: u64 = 8 << 10;

/// What a lookup failure names.
const UNKNOWN: &str = "dmakit host memory (not allocated, mapped or registered by this host)";

impl CpuAccess for Host {
    fn read_virt(&self, task: Task, va: VirtAddr, buf: &mut [u8]) -> Result<()> {
        Self::check_task(task)?;
        if buf.is_empty() {
            return Ok(());
        }
        let s = self.lock();
        if let Some(p) = s.lent_in(va.0, buf.len() as u64, true) {
            return Err(Host::lent_busy(p));
        }
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
        if let Some(p) = s.lent_in(va.0, data.len() as u64, false) {
            return Err(Host::lent_busy(p));
        }
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

    fn copy_virt(
        &self,
        from_task: Task,
        from_va: VirtAddr,
        to_task: Task,
        to_va: VirtAddr,
        len: u64,
    ) -> Result<()> {
        Self::check_task(from_task)?;
        Self::check_task(to_task)?;
        if len == 0 {
            return Ok(());
        }
        let s = self.lock();
        // The common case, both ranges inside allocations: one lookup each. Two allocations are
        // distinct memory objects, or one and the same (a memmove), so one copy is right.
        if let (Some((fs, fa)), Some((ts, ta))) =
            (s.allocation(from_va.0, len), s.allocation(to_va.0, len))
        {
            if fa.mapping.lent(from_va.0, len).1 {
                return Err(Host::lent_busy(from_va.0.max(fs)));
            }
            if ta.mapping.lent(to_va.0, len).0 {
                return Err(Host::lent_busy(to_va.0.max(ts)));
            }
            let spans = fa
                .mapping
                .span(from_va.0, len)
                .zip(ta.mapping.span(to_va.0, len));
            let (src, dst) = spans.ok_or(Error::NotMapped {
                what: UNKNOWN,
                addr: from_va.0,
            })?;
            let read_only = || Error::NotWritable {
                what: "read-only mapping (copy_virt destination)",
                addr: to_va.0,
            };
            if len < LOOSE_COPY_MIN {
                src.copy_to(&dst).ok_or_else(read_only)?;
            } else {
                let copy = src.loose_copy_to(&dst).ok_or_else(read_only)?;
                // SAFETY: `s` is this host's lock, and `copy` was made just above, under it,
                // from spans of two allocations of its registry that neither lend excludes.
                unsafe { self.copy_unlocked(s, copy) };
            }
            return Ok(());
        }
        if let Some(p) = s
            .lent_in(from_va.0, len, true)
            .or_else(|| s.lent_in(to_va.0, len, false))
        {
            return Err(Host::lent_busy(p));
        }
        let unknown = |addr: u64| Error::NotMapped {
            what: UNKNOWN,
            addr,
        };
        let src = s.cpu_span(from_va.0, len).ok_or(unknown(from_va.0))?;
        let dst = s.cpu_span(to_va.0, len).ok_or(unknown(to_va.0))?;
        let read_only = Error::NotWritable {
            what: "read-only mapping (copy_virt destination)",
            addr: to_va.0,
        };
        if !dst.writable() {
            return Err(read_only);
        }
        // Not both in allocations (those were copied above), so the ranges may alias
        // through a second mapping: through a temporary. The span exists, so `len` fits in the address space.
        let mut tmp = vec![0u8; usize::try_from(len).map_err(|_| unknown(from_va.0))?];
        src.read(&mut tmp);
        dst.write(&tmp).ok_or(read_only)?;
        Ok(())
    }

    /// Lends the allocation's own mapping: no copy (see `lend.rs` for what is refused
    /// while it is lent, and when a lend is refused).
    fn direct_slice<'a>(
        &'a self,
        task: Task,
        va: VirtAddr,
        len: u64,
        held: u32,
    ) -> Result<Box<dyn DirectSlice + 'a>> {
        Ok(Box::new(self.lend(task, va, len, held, false)?))
    }

    /// As [`direct_slice`](Self::direct_slice), writable; loads of the range through the
    /// host are refused too while it is lent.
    fn direct_slice_mut<'a>(
        &'a self,
        task: Task,
        va: VirtAddr,
        len: u64,
        held: u32,
    ) -> Result<Box<dyn DirectSliceMut + 'a>> {
        Ok(Box::new(self.lend(task, va, len, held, true)?))
    }
}
