//! Finding the ECAM windows: ACPI's MCFG table, reached from the RSDP (which UEFI hands
//! over in its configuration table) through the XSDT or RSDT.
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

/// The ECAM windows the MCFG table lists, given the RSDP's physical address.
pub fn ecam_regions(
    read: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    rsdp: u64,
) -> Result<Vec<EcamRegion>> {
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
        let mut sig = [0u8; 4];
        read(pa, &mut sig)?;
        if &sig != b"MCFG" {
            continue;
        }
        let mcfg = table(read, pa)?;
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
        return Ok(out);
    }
    Err(Error::NotAttached {
        what: "ECAM",
        why: "the ACPI tables have no MCFG (no PCI Express configuration window)",
    })
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
}
