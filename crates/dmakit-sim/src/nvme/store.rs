//! The namespace's backing store: sparse, checkable byte by byte, pre-filled.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// What blocks hold before anything writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prefill {
    /// Zeros.
    #[default]
    Zeros,
    /// The guest's disk image: every 512-byte sector *s* (counted from the start of the
    /// namespace, whatever the LBA size) starts with `dmakit LBA <s>\n` and the rest of it
    /// is the byte `s & 0xff` repeated. With 4096-byte LBAs, LBA *n* holds sectors
    /// `8n..8n + 8`.
    GuestImage,
    /// Bytes from a generator seeded with this value and the LBA (the same every run).
    Seeded(u64),
}

impl Prefill {
    /// The pre-filled contents of the 512-byte sector `s`, under [`Prefill::GuestImage`].
    pub fn guest_sector(s: u64) -> [u8; 512] {
        let mut b = [s as u8; 512];
        let head = format!("dmakit LBA {s}\n");
        b[..head.len()].copy_from_slice(head.as_bytes());
        b
    }

    /// Fills `out` with the pre-filled contents of block `lba` of `lba_size` bytes.
    pub fn fill(&self, lba: u64, lba_size: u64, out: &mut [u8]) {
        match *self {
            Prefill::Zeros => out.fill(0),
            Prefill::GuestImage => {
                let per = lba_size / 512;
                for (i, chunk) in out.chunks_mut(512).enumerate() {
                    let s = lba * per + i as u64;
                    let b = Self::guest_sector(s);
                    chunk.copy_from_slice(&b[..chunk.len()]);
                }
            }
            Prefill::Seeded(seed) => {
                let mut rng =
                    ChaCha8Rng::seed_from_u64(seed ^ lba.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                rng.fill_bytes(out);
            }
        }
    }
}

/// One namespace's blocks: those written are kept, the others read as their pre-fill.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    pub lba_size: u64,
    pub blocks: u64,
    prefill: Prefill,
    written: BTreeMap<u64, Box<[u8]>>,
}

impl Store {
    pub fn new(lba_size: u64, blocks: u64, prefill: Prefill) -> Self {
        Store {
            lba_size,
            blocks,
            prefill,
            written: BTreeMap::new(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.blocks * self.lba_size
    }

    /// Blocks written since the controller was made.
    pub fn written_blocks(&self) -> u64 {
        self.written.len() as u64
    }

    /// Reads `buf.len()` bytes at byte `offset` (inside the namespace: checked by callers).
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        let mut done = 0usize;
        let mut block = vec![0u8; self.lba_size as usize];
        while done < buf.len() {
            let at = offset + done as u64;
            let lba = at / self.lba_size;
            let off = (at % self.lba_size) as usize;
            let n = (self.lba_size as usize - off).min(buf.len() - done);
            match self.written.get(&lba) {
                Some(b) => buf[done..done + n].copy_from_slice(&b[off..off + n]),
                None => {
                    self.prefill.fill(lba, self.lba_size, &mut block);
                    buf[done..done + n].copy_from_slice(&block[off..off + n]);
                }
            }
            done += n;
        }
    }

    /// Writes `data` at byte `offset` (inside the namespace: checked by callers).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let lba = at / self.lba_size;
            let off = (at % self.lba_size) as usize;
            let n = (self.lba_size as usize - off).min(data.len() - done);
            let (size, prefill) = (self.lba_size, self.prefill);
            let b = self.written.entry(lba).or_insert_with(|| {
                let mut b = vec![0u8; size as usize].into_boxed_slice();
                prefill.fill(lba, size, &mut b);
                b
            });
            b[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_and_writes_across_blocks() {
        let mut s = Store::new(4096, 4, Prefill::GuestImage);
        let mut b = vec![0u8; 4096];
        s.read(4096, &mut b);
        assert!(b.starts_with(b"dmakit LBA 8\n"));
        assert!(b[512..].starts_with(b"dmakit LBA 9\n"));
        assert_eq!(b[511], 8);
        s.write(4000, &[0xAB; 200]);
        let mut c = vec![0u8; 300];
        s.read(3950, &mut c);
        assert_eq!(c[49], 7, "sector 7 keeps its fill before the write");
        assert!(c[50..250].iter().all(|&x| x == 0xAB));
        assert_eq!(c[250], 8, "sector 8 keeps its fill after the write");
        assert_eq!(s.written_blocks(), 2);
        let seeded = Prefill::Seeded(5);
        let (mut x, mut y) = ([0u8; 64], [0u8; 64]);
        seeded.fill(3, 64, &mut x);
        seeded.fill(3, 64, &mut y);
        assert_eq!(x, y);
        seeded.fill(4, 64, &mut y);
        assert_ne!(x, y);
    }
}
