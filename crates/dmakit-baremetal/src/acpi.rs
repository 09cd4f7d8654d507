//! Finding the ECAM windows (ACPI's MCFG table) and the IOMMU's remapping units (the DMAR
//! table), reached from the RSDP (which UEFI hands over in its configuration table)
//! through the XSDT or RSDT.
//!
//! The tables are read through a caller's function (a platform's `read_phys`), so nothing
//! here touches memory and every length is checked: a corrupt table is an error, not a
//! wild read.

use crate::pci::EcamRegion;
use alloc::vec;
use alloc::vec::Vec;
use dmakit::{Error, Result};

const HEADER: usize = 36;
/// More entries than any machine has: a bound on a corrupt table's length.
const MAX_TABLES: usize = 1024;

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

fn bad(what: &'static str, value: u64) -> Error {
    Error::BadArgument { what, value }
}

/// Reads a whole table at `pa` (header first, for its length), checking its checksum.
fn table(read: &dyn Fn(u64, &mut [u8]) -> Result<()>, pa: u64) -> Result<Vec<u8>> {
    let mut h = [0u8; HEADER];
    read(pa, &mut h)?;
    let len = u32_at(&h, 4) as usize;
    if !(HEADER..=1 << 20).contains(&len) {
        return Err(bad("ACPI table length", len as u64));
    }
    let mut t = vec![0u8; len];
    read(pa, &mut t)?;
    if t.iter().fold(0u8, |a, &b| a.wrapping_add(b)) != 0 {
        return Err(bad("ACPI table checksum", pa));
    }
    Ok(t)
}

/// The table with signature `sig` (its whole bytes, checksum checked), or `None` if the
/// root table lists none, given the RSDP's physical address.
pub fn find_table(
    read: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    rsdp: u64,
    sig: &[u8; 4],
) -> Result<Option<Vec<u8>>> {
    let mut r = [0u8; 36];
    read(rsdp, &mut r[..20])?;
    if &r[..8] != b"RSD PTR " {
        return Err(bad("RSDP signature", rsdp));
    }
    let (root, wide) = if r[15] >= 2 {
        read(rsdp, &mut r)?;
        (u64_at(&r, 24), true)
    } else {
        (u64::from(u32_at(&r, 16)), false)
    };
    let sdt = table(read, root)?;
    let step = if wide { 8 } else { 4 };
    let entries = ((sdt.len() - HEADER) / step).min(MAX_TABLES);
    for i in 0..entries {
        let at = HEADER + i * step;
        let pa = if wide {
            u64_at(&sdt, at)
        } else {
            u64::from(u32_at(&sdt, at))
        };
        let mut found = [0u8; 4];
        read(pa, &mut found)?;
        if &found == sig {
            return table(read, pa).map(Some);
        }
    }
    Ok(None)
}

/// The ECAM windows the MCFG table lists, given the RSDP's physical address.
pub fn ecam_regions(
    read: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    rsdp: u64,
) -> Result<Vec<EcamRegion>> {
    let mcfg = find_table(read, rsdp, b"MCFG")?.ok_or(Error::NotAttached {
        what: "ECAM",
        why: "the ACPI tables have no MCFG (no PCI Express configuration window)",
    })?;
    let mut out = Vec::new();
    let mut at = HEADER + 8;
    while at + 16 <= mcfg.len() {
        let e = &mcfg[at..at + 16];
        out.push(EcamRegion {
            base: u64_at(e, 0),
            segment: u16::from_le_bytes([e[8], e[9]]),
            start_bus: e[10],
            end_bus: e[11],
        });
        at += 16;
    }
    Ok(out)
}

/// One DMA remapping hardware unit (a DRHD entry of the DMAR table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemappingUnit {
    /// PCI segment it serves.
    pub segment: u16,
    /// Physical address of its registers.
    pub base: u64,
    /// It serves every device of the segment not claimed by another unit (`INCLUDE_PCI_ALL`).
    pub include_all: bool,
}

/// What the DMAR table says: the host address width and the remapping units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    /// Bits of physical address the platform's DMA can use (the table's width field + 1).
    pub host_address_width: u8,
    /// Its DRHD units, in table order.
    pub units: Vec<RemappingUnit>,
}

/// The DMAR table (Intel VT-d), or `None` on a machine without one (no IOMMU, or one the
/// firmware does not describe).
pub fn dmar(read: &dyn Fn(u64, &mut [u8]) -> Result<()>, rsdp: u64) -> Result<Option<Dmar>> {
    let Some(t) = find_table(read, rsdp, b"DMAR")? else {
        return Ok(None);
    };
    if t.len() < HEADER + 12 {
        return Err(bad("ACPI DMAR table length", t.len() as u64));
    }
    let mut units = Vec::new();
    let mut at = HEADER + 12;
    while at + 4 <= t.len() {
        let kind = u16::from_le_bytes([t[at], t[at + 1]]);
        let len = u16::from_le_bytes([t[at + 2], t[at + 3]]) as usize;
        if len < 4 || at + len > t.len() {
            return Err(bad("ACPI DMAR structure length", len as u64));
        }
        if kind == 0 && len >= 16 {
            units.push(RemappingUnit {
                include_all: t[at + 4] & 1 != 0,
                segment: u16::from_le_bytes([t[at + 6], t[at + 7]]),
                base: u64_at(&t, at + 8),
            });
        }
        at += len;
    }
    Ok(Some(Dmar {
        host_address_width: t[HEADER].saturating_add(1),
        units,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn with_checksum(mut t: Vec<u8>) -> Vec<u8> {
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = t[9].wrapping_sub(sum);
        t
    }

    fn header(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        with_checksum(t)
    }

    fn memory(tables: &[(u64, Vec<u8>)]) -> impl Fn(u64, &mut [u8]) -> Result<()> {
        let m: BTreeMap<u64, Vec<u8>> = tables.iter().cloned().collect();
        move |pa, buf| {
            let (base, t) = m.range(..=pa).next_back().ok_or(Error::NotMapped {
                what: "fake",
                addr: pa,
            })?;
            let off = (pa - base) as usize;
            let src = t.get(off..off + buf.len()).ok_or(Error::NotMapped {
                what: "fake",
                addr: pa,
            })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    #[test]
    fn mcfg_through_the_xsdt() {
        let mut mcfg_body = vec![0u8; 8];
        for (base, seg, s, e) in [
            (0xb000_0000u64, 0u16, 0u8, 0xffu8),
            (0x8_0000_0000, 1, 0, 0x3f),
        ] {
            mcfg_body.extend_from_slice(&base.to_le_bytes());
            mcfg_body.extend_from_slice(&seg.to_le_bytes());
            mcfg_body.extend_from_slice(&[s, e, 0, 0, 0, 0]);
        }
        let mcfg = header(b"MCFG", &mcfg_body);
        let facp = header(b"FACP", &[0u8; 20]);
        let mut x = Vec::new();
        x.extend_from_slice(&0x3000u64.to_le_bytes());
        x.extend_from_slice(&0x4000u64.to_le_bytes());
        let xsdt = header(b"XSDT", &x);
        let mut rsdp = vec![0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[15] = 2;
        rsdp[24..32].copy_from_slice(&0x2000u64.to_le_bytes());
        let read = memory(&[
            (0x1000, rsdp.clone()),
            (0x2000, xsdt),
            (0x3000, facp),
            (0x4000, mcfg.clone()),
        ]);
        let r = ecam_regions(&read, 0x1000).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].base, r[0].end_bus, r[0].len()),
            (0xb000_0000, 0xff, 256 << 20)
        );
        assert_eq!(
            (r[1].base, r[1].segment, r[1].end_bus),
            (0x8_0000_0000, 1, 0x3f)
        );

        // A corrupt checksum, a bad signature, and no MCFG at all are errors.
        let mut broken = mcfg;
        broken[40] ^= 1;
        let read = memory(&[
            (0x1000, rsdp.clone()),
            (0x2000, header(b"XSDT", &0x4000u64.to_le_bytes())),
            (0x4000, broken),
        ]);
        assert!(matches!(
            ecam_regions(&read, 0x1000),
            Err(Error::BadArgument { .. })
        ));
        let read = memory(&[(0x1000, vec![0u8; 36])]);
        assert!(matches!(
            ecam_regions(&read, 0x1000),
            Err(Error::BadArgument { .. })
        ));
        let read = memory(&[(0x1000, rsdp), (0x2000, header(b"XSDT", &[]))]);
        assert!(matches!(
            ecam_regions(&read, 0x1000),
            Err(Error::NotAttached { .. })
        ));
    }

    #[test]
    fn dmar_units_and_width() {
        // Width field 38 (a 39-bit platform), flags, 10 reserved bytes, then one DRHD for
        // every device of segment 0 at 0xfed90000 and an RMRR (type 1) to skip.
        let mut body = vec![38u8, 1];
        body.extend_from_slice(&[0u8; 10]);
        let mut drhd = vec![0u8, 0, 16, 0, 1, 0, 0, 0];
        drhd.extend_from_slice(&0xfed9_0000u64.to_le_bytes());
        body.extend_from_slice(&drhd);
        body.extend_from_slice(&[1, 0, 8, 0, 0, 0, 0, 0]);
        let dmar_t = header(b"DMAR", &body);
        let xsdt = header(b"XSDT", &0x3000u64.to_le_bytes());
        let mut rsdp = vec![0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[15] = 2;
        rsdp[24..32].copy_from_slice(&0x2000u64.to_le_bytes());
        let read = memory(&[(0x1000, rsdp.clone()), (0x2000, xsdt), (0x3000, dmar_t)]);
        let d = dmar(&read, 0x1000).unwrap().unwrap();
        assert_eq!(d.host_address_width, 39);
        assert_eq!(
            d.units,
            vec![RemappingUnit {
                segment: 0,
                base: 0xfed9_0000,
                include_all: true
            }]
        );
        // No DMAR: none, not an error. A structure running past the table: an error.
        let read = memory(&[
            (0x1000, rsdp.clone()),
            (0x2000, header(b"XSDT", &0x3000u64.to_le_bytes())),
            (0x3000, header(b"FACP", &[0u8; 4])),
        ]);
        assert_eq!(dmar(&read, 0x1000).unwrap(), None);
        let mut bad_body = vec![38u8, 1];
        bad_body.extend_from_slice(&[0u8; 10]);
        bad_body.extend_from_slice(&[0, 0, 200, 0]);
        let read = memory(&[
            (0x1000, rsdp),
            (0x2000, header(b"XSDT", &0x3000u64.to_le_bytes())),
            (0x3000, header(b"DMAR", &bad_body)),
        ]);
        assert!(dmar(&read, 0x1000).is_err());
    }
}
