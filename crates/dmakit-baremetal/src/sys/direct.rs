//! [`DirectMap`]: the kernel's direct map (virtual = physical + offset) and the only way
//! the crate touches memory. Every access is checked against the RAM and device ranges the
//! map was told about, so the methods are safe: an address outside them is
//! [`Error::NotMapped`], never a fault. The unsafety is in telling it about ranges.

use crate::ranges::Ranges;
use dmakit::platform::Width;
use dmakit::{Error, Result};

/// The direct map and what is reachable through it.
#[derive(Debug)]
pub(crate) struct DirectMap {
    offset: u64,
    ram: Ranges,
    devices: spin::Mutex<Ranges>,
    line: u64,
    clflushopt: bool,
}

impl DirectMap {
    /// A direct map at `offset` through which nothing is reachable yet.
    pub(crate) fn new(offset: u64, page: u64) -> Self {
        let (line, clflushopt) = super::cache_facts();
        DirectMap {
            offset,
            ram: Ranges::new(page),
            devices: spin::Mutex::new(Ranges::new(page)),
            line,
            clflushopt,
        }
    }

    /// The offset: virtual = physical + offset.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Makes `[start, end)` (page aligned) of RAM reachable. `false` if it overlaps what
    /// is reachable already (nothing changes then).
    ///
    /// # Safety
    ///
    /// The range is RAM, mapped readable and writable at `start + offset` for as long as
    /// this map is used, and the accesses the crate makes there (at addresses its callers
    /// name: memory it allocated, or that a caller gave a driver) do not break any Rust
    /// reference the kernel holds.
    pub(crate) unsafe fn add_ram(&mut self, start: u64, end: u64) -> bool {
        !self.overlaps(start, end) && self.ram.insert(start, end)
    }

    /// Makes `[start, end)` (page aligned) of device memory reachable (uncached).
    ///
    /// # Safety
    ///
    /// As for [`add_ram`](Self::add_ram), for device memory: mapped uncached at
    /// `start + offset`, and loads and stores there have no effect the kernel did not
    /// mean to give the drivers it runs.
    pub(crate) unsafe fn add_device(&self, start: u64, end: u64) -> bool {
        !self.overlaps(start, end) && self.devices.lock().insert(start, end)
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        let hit = |r: &Ranges| r.iter().any(|(s, e)| s < end && start < e);
        hit(&self.ram) || hit(&self.devices.lock())
    }

    /// Whether `[pa, pa + len)` is wholly RAM the map reaches.
    pub(crate) fn is_ram(&self, pa: u64, len: u64) -> bool {
        pa.checked_add(len)
            .is_some_and(|end| len == 0 || self.ram.contains_range(pa, end))
    }

    /// Whether `[pa, pa + len)` is wholly device memory the map reaches.
    pub(crate) fn is_device(&self, pa: u64, len: u64) -> bool {
        pa.checked_add(len)
            .is_some_and(|end| len == 0 || self.devices.lock().contains_range(pa, end))
    }

    /// The virtual address of `[pa, pa + len)`, after checking that every byte is RAM or
    /// device memory the map reaches.
    fn check(&self, pa: u64, len: u64, what: &'static str) -> Result<u64> {
        let end = dmakit::addr::checked_end(pa, len, what)?;
        let mut at = pa;
        while at < end {
            let run = self
                .ram
                .run_of(at)
                .or_else(|| self.devices.lock().run_of(at));
            match run {
                Some((_, e)) => at = e,
                None => return Err(Error::NotMapped { what, addr: at }),
            }
        }
        self.offset.checked_add(pa).ok_or(Error::Overflow {
            what: "direct map address",
            start: pa,
            len,
        })
    }

    /// CPU read of physical memory.
    pub(crate) fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        let va = self.check(pa, buf.len() as u64, "physical memory (direct map)")?;
        // SAFETY: `check` found every byte in ranges that `add_ram`/`add_device`'s callers
        // vouched are mapped at `pa + offset`.
        unsafe { super::copy_from(va, buf) };
        Ok(())
    }

    /// CPU write of physical memory.
    pub(crate) fn write(&self, pa: u64, data: &[u8]) -> Result<()> {
        let va = self.check(pa, data.len() as u64, "physical memory (direct map)")?;
        // SAFETY: as in `read`; the ranges are writable by the same promise.
        unsafe { super::copy_to(va, data) };
        Ok(())
    }

    /// Zero-fills physical memory.
    pub(crate) fn zero(&self, pa: u64, len: u64) -> Result<()> {
        let va = self.check(pa, len, "physical memory (direct map)")?;
        // SAFETY: as in `write`.
        unsafe { super::zero(va, len) };
        Ok(())
    }

    /// One naturally aligned access of `width` at `pa`, exactly once.
    pub(crate) fn load(&self, pa: u64, width: Width) -> Result<u64> {
        width.check_aligned(dmakit::PhysAddr(pa), "mapped I/O read")?;
        let va = self.check(pa, width.bytes(), "mapped I/O (not RAM or device memory)")?;
        // SAFETY: checked reachable and naturally aligned (the offset is page aligned).
        Ok(unsafe { super::volatile_read(va, width) })
    }

    /// One naturally aligned store of `width` at `pa`, exactly once.
    pub(crate) fn store(&self, pa: u64, width: Width, value: u64) -> Result<()> {
        width.check_aligned(dmakit::PhysAddr(pa), "mapped I/O write")?;
        if value > width.max_value() {
            return Err(Error::BadArgument {
                what: "mapped I/O value wider than the access",
                value,
            });
        }
        let va = self.check(pa, width.bytes(), "mapped I/O (not RAM or device memory)")?;
        // SAFETY: as in `load`.
        unsafe { super::volatile_write(va, width, value) };
        Ok(())
    }

    /// Writes back and invalidates every cache line touching `[pa, pa + len)`, then fences.
    pub(crate) fn flush(&self, pa: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let va = self.check(pa, len, "cache flush (direct map)")?;
        let mut at = va & !(self.line - 1);
        let end = va.saturating_add(len);
        while at < end {
            // SAFETY: the line lies within pages `check` found reachable (the range rounded
            // down to a line never leaves its first page).
            unsafe { super::flush_line(at, self.clflushopt) };
            at += self.line;
        }
        super::fence();
        Ok(())
    }
}
