//! Physical Region Page entries (NVMe Base Specification §4.1.1) from DMA segments.
//!
//! A PRP entry is the IO address of one memory page; only the first may start inside a page
//! (a dword-aligned offset), every later one starts a page, and every segment but the last
//! ends one. PRP1 is the first entry; PRP2 is the second entry when the transfer touches two
//! pages, otherwise the address of a *PRP list* page holding entries 2…n. This is exactly the
//! NVMe [`SegmentSpec`]'s promise ([`nvme_spec`]: segments at most a page, never crossing
//! one, inner boundaries page aligned, first offset kept), so the segments a
//! [`DmaCommand`](dmakit::dma::DmaCommand) generates under it *are* the PRP entries;
//! [`prp_entries`] checks that they are and lays them out.

use alloc::vec::Vec;
use dmakit::dma::{IoSegment, SegmentSpec};
use dmakit::{Error, Result};

/// The memory page size this driver programs (`CC.MPS = 0`).
pub const PRP_PAGE: u64 = 4096;

/// The constraints of NVMe PRP data pointers, for transfers of at most `max_transfer`
/// bytes (from `MDTS`).
pub fn nvme_spec(max_transfer: u64) -> Result<SegmentSpec> {
    SegmentSpec::builder()
        .alignment(4)
        .internal_alignment(PRP_PAGE)
        .boundary(PRP_PAGE)
        .max_segment_size(PRP_PAGE)
        .max_transfer_size(max_transfer)
        .offset_bits(12)
        .build()
}

/// PRP1, and PRP2's meaning: `None` for one page, `Some(vec![e])` for a second entry, or
/// `Some(entries)` (more than one) to be written to a PRP list whose address goes in PRP2.
pub fn prp_entries(segs: &[IoSegment]) -> Result<(u64, Option<Vec<u64>>)> {
    let first = segs.first().ok_or(Error::ZeroSize {
        what: "NVMe PRP entries (no segment)",
    })?;
    let bad = |what: &'static str, v: u64| Error::BadArgument { what, value: v };
    if !first.addr.0.is_multiple_of(4) {
        return Err(bad("NVMe PRP1 must be dword aligned", first.addr.0));
    }
    for (i, s) in segs.iter().enumerate() {
        let off = s.addr.0 % PRP_PAGE;
        if i > 0 && off != 0 {
            return Err(bad(
                "NVMe PRP entry after the first is not page aligned",
                s.addr.0,
            ));
        }
        if off + s.len > PRP_PAGE {
            return Err(bad("NVMe PRP segment crosses a page", s.addr.0));
        }
        if i + 1 < segs.len() && !(s.addr.0 + s.len).is_multiple_of(PRP_PAGE) {
            return Err(bad(
                "NVMe PRP segment before the last does not end a page",
                s.addr.0,
            ));
        }
    }
    let rest: Vec<u64> = segs[1..].iter().map(|s| s.addr.0).collect();
    Ok((first.addr.0, (!rest.is_empty()).then_some(rest)))
}

/// Entries in one PRP list page.
pub const PRP_LIST_ENTRIES: usize = (PRP_PAGE / 8) as usize;

/// How many PRP list pages `entries` entries after PRP1 need: none for one (it is PRP2
/// itself); otherwise every page but the last gives its final slot to the address of the
/// next page.
pub const fn list_pages(entries: usize) -> usize {
    if entries <= 1 {
        0
    } else {
        (entries - 1).div_ceil(PRP_LIST_ENTRIES - 1)
    }
}

/// The contents of the PRP list pages at device addresses `pages` (as many as
/// [`list_pages`] says) holding `entries`, chained: each page's bytes, little endian.
pub fn list_contents(entries: &[u64], pages: &[u64]) -> Result<Vec<Vec<u8>>> {
    if pages.len() != list_pages(entries.len()) || pages.is_empty() {
        return Err(Error::BadArgument {
            what: "NVMe PRP list pages: not as many as the entries need",
            value: pages.len() as u64,
        });
    }
    let mut out = Vec::with_capacity(pages.len());
    let mut rest = entries;
    for (i, _) in pages.iter().enumerate() {
        let last = i + 1 == pages.len();
        let take = if last {
            rest.len()
        } else {
            PRP_LIST_ENTRIES - 1
        };
        let mut bytes: Vec<u8> = rest[..take].iter().flat_map(|e| e.to_le_bytes()).collect();
        if !last {
            bytes.extend_from_slice(&pages[i + 1].to_le_bytes());
        }
        rest = &rest[take..];
        out.push(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use dmakit::IoAddr;

    fn seg(a: u64, l: u64) -> IoSegment {
        IoSegment {
            addr: IoAddr(a),
            len: l,
        }
    }

    #[test]
    fn one_two_and_many_pages() {
        assert_eq!(prp_entries(&[seg(0x1200, 0x200)]).unwrap(), (0x1200, None));
        assert_eq!(
            prp_entries(&[seg(0x1200, 0xe00), seg(0x8000, 0x400)]).unwrap(),
            (0x1200, Some(vec![0x8000]))
        );
        let many = [seg(0x1200, 0xe00), seg(0x2000, 0x1000), seg(0x3000, 0x10)];
        assert_eq!(
            prp_entries(&many).unwrap(),
            (0x1200, Some(vec![0x2000, 0x3000]))
        );
    }

    #[test]
    fn segments_prps_cannot_express_are_refused() {
        assert!(prp_entries(&[]).is_err());
        assert!(prp_entries(&[seg(0x1002, 4)]).is_err(), "not dword aligned");
        assert!(
            prp_entries(&[seg(0x1000, 0x800), seg(0x3000, 4)]).is_err(),
            "hole"
        );
        assert!(
            prp_entries(&[seg(0x1000, 0x1000), seg(0x3200, 4)]).is_err(),
            "offset"
        );
        assert!(
            prp_entries(&[seg(0x1800, 0x1000)]).is_err(),
            "crosses a page"
        );
    }

    #[test]
    fn list_pages_chain_when_one_page_is_not_enough() {
        assert_eq!(list_pages(0), 0);
        assert_eq!(list_pages(1), 0);
        assert_eq!(list_pages(2), 1);
        assert_eq!(list_pages(512), 1);
        assert_eq!(list_pages(513), 2);
        assert_eq!(list_pages(1023), 2);
        assert_eq!(list_pages(1024), 3);
        let entries: Vec<u64> = (0..600u64).map(|i| 0x10_0000 + i * PRP_PAGE).collect();
        let pages = list_contents(&entries, &[0xa000, 0xb000]).unwrap();
        assert_eq!(pages[0].len(), 4096);
        assert_eq!(&pages[0][4088..], &0xb000u64.to_le_bytes());
        assert_eq!(&pages[0][4080..4088], &entries[510].to_le_bytes());
        assert_eq!(&pages[1][..8], &entries[511].to_le_bytes());
        assert_eq!(pages[1].len(), (600 - 511) * 8);
        assert!(list_contents(&entries, &[0xa000]).is_err());
        assert!(list_contents(&entries[..1], &[]).is_err());
    }

    #[test]
    fn the_spec_is_valid() {
        let s = nvme_spec(512 << 10).unwrap();
        assert_eq!((s.boundary(), s.internal_alignment()), (PRP_PAGE, PRP_PAGE));
    }
}
