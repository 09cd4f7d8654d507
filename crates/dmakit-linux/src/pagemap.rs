//! Physical addresses from `/proc/self/pagemap`.
//!
//! The kernel exposes one little-endian 64-bit entry per virtual page of the process, at
//! byte offset `(va / page_size) * 8`:
//!
//! | bits | meaning |
//! | --- | --- |
//! | 63 | page present in RAM |
//! | 62 | page swapped |
//! | 61 | file-backed or shared anonymous |
//! | 56–60 | exclusively mapped, soft-dirty and other flags |
//! | 0–54 | page frame number (PFN) when present |
//!
//! Since Linux 4.0 the PFN field reads as **zero** unless the reader has `CAP_SYS_ADMIN`
//! (in the user namespace that owns the PID namespace). A zero PFN on a present page
//! therefore means "not permitted", never "physical address 0": [`decode`] turns it into
//! [`Error::NotPermitted`], so no caller ever sees a zero address.
//!
//! A physical address from pagemap is a fact about a page *now*. It stays true while the page
//! is wired, with one caveat: `mlock` keeps a page resident but does not stop the kernel
//! from *migrating* it (memory compaction, NUMA balancing, memory hot-remove), which changes
//! its frame. For a real device prefer IOVA mode through VFIO, which pins pages against
//! migration; use physical mode to learn, to test, and on machines where nothing migrates.
//!
//! ```
//! use dmakit::{Error, PageSize, PhysAddr};
//! use dmakit_linux::pagemap::decode;
//!
//! const PRESENT: u64 = 1 << 63;
//! assert_eq!(decode(PRESENT | 0x1234, 0x7000, PageSize::SIZE_4K)?, PhysAddr(0x123_4000));
//! // Present, but the frame number is hidden: a permission problem, not address zero.
//! assert!(matches!(decode(PRESENT, 0x7000, PageSize::SIZE_4K), Err(Error::NotPermitted { .. })));
//! # Ok::<(), dmakit::Error>(())
//! ```

use dmakit::{Error, PageSize, PhysAddr, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;

/// What to do when pagemap hides frame numbers.
pub const NO_PFN_HINT: &str =
    "reading physical frame numbers from /proc/self/pagemap needs CAP_SYS_ADMIN: \
run as root (with CAP_SYS_ADMIN); wired buffers, DMA commands and the VFIO mapper all need them";

/// Decodes the pagemap `entry` of the page holding `va` into that page's physical address.
///
/// A page that is not present is [`Error::NotReady`] (wire it first); a present page with a
/// zero frame number is [`Error::NotPermitted`].
pub fn decode(entry: u64, va: u64, page: PageSize) -> Result<PhysAddr> {
    if entry & PRESENT == 0 {
        return Err(Error::NotReady {
            what: "pagemap: the page is not present",
            addr: va,
        });
    }
    let pfn = entry & PFN_MASK;
    if pfn == 0 {
        return Err(Error::NotPermitted {
            what: "physical address lookup",
            hint: NO_PFN_HINT,
        });
    }
    pfn.checked_mul(page.bytes())
        .map(PhysAddr)
        .ok_or(Error::Internal {
            what: "pagemap: frame number out of range",
        })
}

/// An open `/proc/self/pagemap`, kept open for the life of the reader.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    page: PageSize,
}

impl Pagemap {
    /// Opens this process's pagemap.
    pub fn open(page: PageSize) -> Result<Self> {
        let file = File::open("/proc/self/pagemap").map_err(|e| Error::Os {
            op: "open /proc/self/pagemap",
            errno: e.raw_os_error().unwrap_or(0),
            hint: "is /proc mounted?",
        })?;
        Ok(Pagemap { file, page })
    }

    /// Entries read per `pread`: 4 KiB of pagemap, 2 MiB of 4 KiB pages.
    const CHUNK: u64 = 512;

    /// Reads the raw entries of the `n` pages from page number `first` into `out`.
    fn read_entries(&self, first: u64, n: u64, out: &mut [u8]) -> Result<()> {
        let bytes = &mut out[..(n * 8) as usize];
        self.file
            .read_exact_at(bytes, first * 8)
            .map_err(|e| Error::Os {
                op: "read /proc/self/pagemap",
                errno: e.raw_os_error().unwrap_or(0),
                hint: "",
            })
    }

    /// The physical address of each of the `n` pages from the page holding `va`.
    ///
    /// Read and decoded a chunk at a time, stopping at the first page that is not present
    /// ([`Error::NotReady`]) or hides its frame ([`Error::NotPermitted`]), so the result
    /// never holds more entries than there are present pages.
    pub fn frames(&self, va: u64, n: u64) -> Result<Vec<PhysAddr>> {
        let first = va >> self.page.shift();
        let mut out = Vec::new();
        let mut buf = [0u8; 8 * Self::CHUNK as usize];
        let mut done = 0u64;
        while done < n {
            let count = (n - done).min(Self::CHUNK);
            self.read_entries(first + done, count, &mut buf)?;
            for (i, c) in buf[..(count * 8) as usize].chunks_exact(8).enumerate() {
                let entry = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                let page_va = (first + done + i as u64) << self.page.shift();
                out.push(decode(entry, page_va, self.page)?);
            }
            done += count;
        }
        Ok(out)
    }

    /// The physical address of the byte at `va`.
    pub fn translate(&self, va: u64) -> Result<PhysAddr> {
        let base = self
            .frames(va, 1)?
            .first()
            .copied()
            .ok_or(Error::Internal {
                what: "pagemap: one page asked, none read",
            })?;
        Ok(PhysAddr(base.0 + self.page.offset(va)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode() {
        let p = PageSize::SIZE_4K;
        assert_eq!(decode(PRESENT | 0x1234, 0, p).unwrap(), PhysAddr(0x1234000));
        assert!(matches!(
            decode(0x1234, 0x5000, p),
            Err(Error::NotReady { addr: 0x5000, .. })
        ));
        let e = decode(PRESENT, 0, p).unwrap_err();
        assert!(
            matches!(e, Error::NotPermitted { .. }),
            "zero PFN is a permission problem"
        );
        assert!(e.to_string().contains("CAP_SYS_ADMIN"));
        // Flag bits above the PFN (soft-dirty, exclusive, file) are ignored.
        assert_eq!(
            decode(PRESENT | (1 << 55) | (1 << 56) | 7, 0, p).unwrap(),
            PhysAddr(0x7000)
        );
        // 16 KiB pages scale the frame number by their size.
        assert_eq!(
            decode(PRESENT | 3, 0, PageSize::SIZE_16K).unwrap(),
            PhysAddr(0xC000)
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc/self/pagemap, which Miri isolates")]
    fn own_pages_translate_or_are_refused_clearly() {
        let page = PageSize::new(crate::sys::page_size()).unwrap();
        let pm = Pagemap::open(page).unwrap();
        let v = vec![1u8; 3 * page.bytes() as usize];
        match pm.translate(v.as_ptr() as u64) {
            Ok(pa) => assert_eq!(pa.0 % page.bytes(), v.as_ptr() as u64 % page.bytes()),
            Err(e) => assert!(matches!(e, Error::NotPermitted { .. }), "{e}"),
        }
        // Page zero is never mapped: not present, reported at its address; a huge request
        // stops there instead of reading (or allocating for) the whole range.
        assert!(matches!(
            pm.translate(0x10),
            Err(Error::NotReady { addr: 0, .. })
        ));
        assert!(matches!(
            pm.frames(0, u64::MAX >> 12),
            Err(Error::NotReady { addr: 0, .. })
        ));
    }
}
