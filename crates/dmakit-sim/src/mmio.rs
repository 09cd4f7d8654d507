//! MMIO windows and device models.
//!
//! A window is a range of physical address space that belongs to a device instead of RAM.
//! Loads and stores there (through [`Mmio`](dmakit::platform::Mmio), which is what
//! `mapped_read*`/`mapped_write*` use) call the device model's [`MmioDevice::read`] and
//! [`MmioDevice::write`] with the offset inside the window, exactly once per access, with
//! the access width. Device models are plain Rust objects; later issues add a DMA engine.

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
/// Stores to offset 0..4 are ignored (the ID register); everything else is scratch.
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
}

impl MmioDevice for ScratchDevice {
    fn name(&self) -> &str {
        "scratch"
    }

    fn read(&mut self, offset: u64, width: Width) -> u64 {
        let n = width.bytes() as usize;
        let o = offset as usize;
        let mut v = [0u8; 8];
        if let Some(src) = self.bytes.get(o..o + n) {
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
        let o = offset as usize;
        self.log.push(Access {
            offset,
            width,
            value,
            write: true,
        });
        if o < 4 {
            return;
        }
        if let Some(dst) = self.bytes.get_mut(o..o + n) {
            dst.copy_from_slice(&value.to_le_bytes()[..n]);
        }
        debug_assert_eq!(&self.bytes[..4], &self.id.to_le_bytes());
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
                .is_some_and(|e| e <= self.base + self.len)
    }

    /// Whether `[pa, pa + len)` overlaps the window at all.
    pub fn overlaps(&self, pa: u64, len: u64) -> bool {
        pa < self.base + self.len && pa.saturating_add(len) > self.base
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
