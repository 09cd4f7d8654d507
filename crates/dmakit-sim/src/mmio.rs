//! MMIO windows and device models.
//!
//! A window is a range of physical address space that belongs to a device instead of RAM.
//! Loads and stores there (through [`Mmio`](dmakit::platform::Mmio), which is what
//! `mapped_read*`/`mapped_write*` use) call the device model's [`MmioDevice::read`] and
//! [`MmioDevice::write`] with the offset inside the window, exactly once per access, with
//! the access width. Device models are plain Rust objects; later issues add a DMA engine.
//!
//! Outside every window a physical address is RAM (a naturally aligned CPU access through
//! the cache, as `ml_phys_read` does) or nothing (`Error::NotMapped`); a misaligned access
//! is `Error::NotAligned` and never reaches a device.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use dmakit::platform::{Mmio, Width};
//! use dmakit::PhysAddr;
//! use dmakit_sim::{MachineBuilder, ScratchDevice};
//!
//! let dev = Arc::new(Mutex::new(ScratchDevice::new(0x1234_5678, 0x40)));
//! let m = MachineBuilder::new().mmio(0xFE00_0000, 0x1000, dev.clone()).build()?;
//! assert_eq!(m.mmio_read(PhysAddr(0xFE00_0000), Width::W32)?, 0x1234_5678); // ID register
//! m.mmio_write(PhysAddr(0xFE00_0010), Width::W16, 0xBEEF)?;
//! assert_eq!(m.mmio_read(PhysAddr(0xFE00_0010), Width::W16)?, 0xBEEF);
//! assert_eq!(dev.lock().unwrap().log().len(), 3, "one device access per MMIO access");
//! assert!(m.mmio_read(PhysAddr(0xFE00_0011), Width::W16).is_err()); // misaligned
//! # Ok::<(), dmakit::Error>(())
//! ```

use dmakit::platform::Width;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A device model behind an MMIO window.
pub trait MmioDevice: Send {
    /// A short name for layouts and logs.
    fn name(&self) -> &str;

    /// A load of `width` at `offset` in the window. Returns the value, zero-extended.
    fn read(&mut self, offset: u64, width: Width) -> u64;

    /// A store of the low `width` bytes of `value` at `offset`.
    fn write(&mut self, offset: u64, width: Width, value: u64);
}

/// A register file: little-endian bytes that read back what was written, with a read-only
/// identification word at offset 0 and an access log.
///
/// Stores to offset 0..4 are ignored (the ID register); everything else is scratch. Accesses
/// past the end of the file read as zero and drop stores (they are still logged).
#[derive(Clone, Debug)]
pub struct ScratchDevice {
    id: u32,
    bytes: Vec<u8>,
    log: Vec<Access>,
}

/// One access seen by a [`ScratchDevice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Offset in the window.
    pub offset: u64,
    /// Access width.
    pub width: Width,
    /// Value read or written.
    pub value: u64,
    /// Whether it was a store.
    pub write: bool,
}

impl ScratchDevice {
    /// A device of `len` bytes whose ID register reads `id`.
    pub fn new(id: u32, len: usize) -> Self {
        let mut bytes = vec![0u8; len.max(8)];
        bytes[..4].copy_from_slice(&id.to_le_bytes());
        ScratchDevice {
            id,
            bytes,
            log: Vec::new(),
        }
    }

    /// Every access so far, in order.
    pub fn log(&self) -> &[Access] {
        &self.log
    }

    /// The identification word at offset 0.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The `n` bytes at `offset`, if they lie inside the register file (past its end, reads
    /// are zero and stores are dropped, as on a bus that ignores unclaimed addresses).
    fn register(&self, offset: u64, n: usize) -> Option<&[u8]> {
        let o = usize::try_from(offset).ok()?;
        self.bytes.get(o..o.checked_add(n)?)
    }

    fn register_mut(&mut self, offset: u64, n: usize) -> Option<&mut [u8]> {
        let o = usize::try_from(offset).ok()?;
        self.bytes.get_mut(o..o.checked_add(n)?)
    }
}

impl MmioDevice for ScratchDevice {
    fn name(&self) -> &str {
        "scratch"
    }

    fn read(&mut self, offset: u64, width: Width) -> u64 {
        let n = width.bytes() as usize;
        let mut v = [0u8; 8];
        if let Some(src) = self.register(offset, n) {
            v[..n].copy_from_slice(src);
        }
        let value = u64::from_le_bytes(v);
        self.log.push(Access {
            offset,
            width,
            value,
            write: false,
        });
        value
    }

    fn write(&mut self, offset: u64, width: Width, value: u64) {
        let n = width.bytes() as usize;
        self.log.push(Access {
            offset,
            width,
            value,
            write: true,
        });
        if offset < 4 {
            return;
        }
        if let Some(dst) = self.register_mut(offset, n) {
            dst.copy_from_slice(&value.to_le_bytes()[..n]);
        }
    }
}

/// A shared handle to a device model, so a test can keep one and look inside.
pub type SharedDevice = Arc<Mutex<dyn MmioDevice>>;

/// One window of physical address space routed to a device.
#[derive(Clone)]
pub struct MmioWindow {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// The device.
    pub device: SharedDevice,
}

impl MmioWindow {
    /// Whether `[pa, pa + len)` is inside the window.
    pub fn contains(&self, pa: u64, len: u64) -> bool {
        pa >= self.base
            && pa
                .checked_add(len)
                .is_some_and(|e| e <= self.base.saturating_add(self.len))
    }

    /// Whether `[pa, pa + len)` overlaps the window at all.
    pub fn overlaps(&self, pa: u64, len: u64) -> bool {
        pa < self.base.saturating_add(self.len) && pa.saturating_add(len) > self.base
    }
}

impl fmt::Debug for MmioWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .device
            .lock()
            .map(|d| d.name().to_string())
            .unwrap_or_else(|_| "poisoned".into());
        f.debug_struct("MmioWindow")
            .field("base", &format_args!("{:#x}", self.base))
            .field("len", &format_args!("{:#x}", self.len))
            .field("device", &name)
            .finish()
    }
}
