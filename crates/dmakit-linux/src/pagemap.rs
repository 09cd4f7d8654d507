//! Physical addresses from `/proc/self/pagemap`.
//!
//! The kernel exposes one 64-bit entry per virtual page: bit 63 says the page is present,
//! bits 0–54 hold its page frame number (PFN). Since Linux 4.0 the PFN field reads as zero
//! unless the reader has `CAP_SYS_ADMIN`, so a zero PFN on a present page means "not
//! permitted", never "physical address 0". dmakit turns that into
//! [`Error::NotPermitted`], never a zero address.
//!
//! Physical addresses from pagemap are only stable while the page is locked, and even
//! `mlock` does not stop the kernel from *migrating* a page (compaction, NUMA balancing):
//! treat them as facts about a wired page now, and prefer IOVA mode (VFIO) for real DMA.

use dmakit::{Error, PageSize, PhysAddr, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;

/// What to do when the PFN is hidden.
pub const NO_PFN_HINT: &str =
    "reading physical frame numbers from /proc/self/pagemap needs CAP_SYS_ADMIN: \
run as root, or use IOVA mode through VFIO";

/// Decodes one pagemap entry for the page at `va` into the page's physical address.
pub fn decode(entry: u64, va: u64, page: PageSize) -> Result<PhysAddr> {
    if entry & PRESENT == 0 {
        return Err(Error::NotReady {
            what: "pagemap: page not present",
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
    Ok(PhysAddr(pfn << page.shift()))
}

/// An open `/proc/self/pagemap`.
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

    /// The physical address of the page holding `va` (plus `va`'s offset in the page).
    pub fn translate(&self, va: u64) -> Result<PhysAddr> {
        let mut b = [0u8; 8];
        let off = (va >> self.page.shift()) * 8;
        self.file
            .read_exact_at(&mut b, off)
            .map_err(|e| Error::Os {
                op: "read /proc/self/pagemap",
                errno: e.raw_os_error().unwrap_or(0),
                hint: "",
            })?;
        let base = decode(u64::from_le_bytes(b), va, self.page)?;
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
    }
}
