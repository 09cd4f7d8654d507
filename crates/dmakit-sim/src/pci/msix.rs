//! The MSI-X table and pending-bit array of a function, in one of its BARs.
//!
//! Each table entry is 16 bytes: message address (low, high), message data, vector control
//! (bit 0: masked; set at reset). When the device signals a vector that is masked (by its
//! entry or by the capability's function mask) the vector's pending bit is set instead of
//! sending the message; unmasking sends it and clears the bit. Entries are accessed with
//! 32- or 64-bit loads and stores; the pending-bit array is read-only.
//!
//! A message is a memory write of `data` at `address`. The bus's interrupt controller
//! answers at [`MSI_ADDRESS`]: the data names the route an
//! [`enable_interrupt`](dmakit::device::PciFunction::enable_interrupt) made. A message to
//! another address or with unknown data is lost and counted.

use dmakit::platform::Width;

/// Where the simulated interrupt controller receives MSI-X messages (the x86 local APIC
/// window): an address in `[MSI_ADDRESS, MSI_ADDRESS + 1 MiB)`.
pub const MSI_ADDRESS: u64 = 0xFEE0_0000;

/// Entry vector control: masked.
pub const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub address: u64,
    pub data: u32,
    pub masked: bool,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            address: 0,
            data: 0,
            masked: true,
        }
    }
}

/// The table and the pending bits.
#[derive(Clone, Debug)]
pub(crate) struct MsixTable {
    pub entries: Vec<Entry>,
    pending: Vec<u64>,
}

impl MsixTable {
    pub fn new(vectors: u16) -> Self {
        MsixTable {
            entries: vec![Entry::default(); vectors as usize],
            pending: vec![0; (vectors as usize).div_ceil(64)],
        }
    }

    pub fn is_pending(&self, v: usize) -> bool {
        self.pending
            .get(v / 64)
            .is_some_and(|w| w >> (v % 64) & 1 != 0)
    }

    pub fn set_pending(&mut self, v: usize, on: bool) {
        if let Some(w) = self.pending.get_mut(v / 64) {
            if on {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    /// Vectors whose bit is pending and whose entry is unmasked now.
    pub fn deliverable(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&v| self.is_pending(v) && !self.entries[v].masked)
            .collect()
    }

    /// A load in the table.
    pub fn read_table(&self, offset: u64, width: Width) -> u64 {
        let dword = |o: u64| -> u64 {
            let Some(e) = self.entries.get((o / 16) as usize) else {
                return 0;
            };
            match o % 16 {
                0 => e.address & 0xFFFF_FFFF,
                4 => e.address >> 32,
                8 => e.data as u64,
                _ => e.masked as u64,
            }
        };
        match width {
            Width::W32 => dword(offset),
            Width::W64 => dword(offset) | dword(offset + 4) << 32,
            _ => 0,
        }
    }

    /// A store in the table; returns the vector if this store unmasked it.
    pub fn write_table(&mut self, offset: u64, width: Width, value: u64) -> Option<usize> {
        let mut unmasked = None;
        let mut dword = |o: u64, v: u32| {
            let i = (o / 16) as usize;
            let Some(e) = self.entries.get_mut(i) else {
                return;
            };
            match o % 16 {
                0 => e.address = (e.address & !0xFFFF_FFFF) | v as u64,
                4 => e.address = (e.address & 0xFFFF_FFFF) | (v as u64) << 32,
                8 => e.data = v,
                _ => {
                    let was = e.masked;
                    e.masked = v & VECTOR_MASKED != 0;
                    if was && !e.masked {
                        unmasked = Some(i);
                    }
                }
            }
        };
        match width {
            Width::W32 => dword(offset, value as u32),
            Width::W64 => {
                dword(offset, value as u32);
                dword(offset + 4, (value >> 32) as u32);
            }
            _ => {}
        }
        unmasked
    }

    /// A load in the pending-bit array.
    pub fn read_pba(&self, offset: u64, width: Width) -> u64 {
        let word = self
            .pending
            .get((offset / 8) as usize)
            .copied()
            .unwrap_or(0);
        match width {
            Width::W64 => word,
            Width::W32 => (word >> ((offset % 8) * 8)) & 0xFFFF_FFFF,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_mask_and_pending_bits() {
        let mut t = MsixTable::new(70);
        assert_eq!(t.read_table(12, Width::W32), 1, "masked at reset");
        t.write_table(16, Width::W64, 0x1_FEE0_0000);
        assert_eq!(t.read_table(16, Width::W32), 0xFEE0_0000);
        assert_eq!(t.read_table(20, Width::W32), 1);
        t.set_pending(65, true);
        assert_eq!(t.read_pba(8, Width::W64), 2);
        assert_eq!(t.read_pba(8, Width::W32), 2);
        assert!(t.deliverable().is_empty());
        assert_eq!(t.write_table(65 * 16 + 12, Width::W32, 0), Some(65));
        assert_eq!(t.deliverable(), vec![65]);
        assert_eq!(t.write_table(70 * 16, Width::W32, 5), None, "past the end");
    }
}
