//! What Identify Controller (CNS 1) and Identify Namespace (CNS 0) return (NVMe Base
//! Specification §5.17), decoded from the 4 KiB the controller writes.
//!
//! ```
//! use dmakit_nvme::identify::NamespaceIdentity;
//!
//! let mut page = [0u8; 4096];
//! page[0..8].copy_from_slice(&8192u64.to_le_bytes()); // NSZE: 8192 blocks
//! page[25] = 1;                                        // NLBAF: two formats
//! page[26] = 1;                                        // FLBAS: format 1
//! page[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes()); // LBAF1: 2^12-byte blocks
//! let ns = NamespaceIdentity::parse(1, &page)?;
//! assert_eq!((ns.blocks, ns.block_size), (8192, 4096));
//! # Ok::<(), dmakit::Error>(())
//! ```

use alloc::string::{String, ToString};
use dmakit::{Error, Result};

/// The bytes of one Identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;

/// What Identify Controller (CNS 1) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerIdentity {
    /// PCI vendor ID.
    pub vendor: u16,
    /// Serial number (trailing spaces trimmed).
    pub serial: String,
    /// Model number (trimmed).
    pub model: String,
    /// Firmware revision (trimmed).
    pub firmware: String,
    /// Maximum data transfer size, as a power of two of the minimum page size (0: none).
    pub mdts: u8,
    /// Number of namespaces.
    pub namespaces: u32,
}

/// What Identify Namespace (CNS 0) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceIdentity {
    /// The namespace identifier.
    pub nsid: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    /// Bytes per logical block.
    pub block_size: u32,
}

fn whole(b: &[u8]) -> Result<&[u8; IDENTIFY_BYTES]> {
    b.try_into().map_err(|_| Error::BadArgument {
        what: "NVMe Identify data must be 4096 bytes",
        value: b.len() as u64,
    })
}

fn u32_at(b: &[u8; IDENTIFY_BYTES], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ControllerIdentity {
    /// Decodes Identify Controller data (4096 bytes, else [`Error::BadArgument`]).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let b = whole(bytes)?;
        let text = |from: usize, to: usize| {
            String::from_utf8_lossy(&b[from..to])
                .trim_end_matches([' ', '\0'])
                .to_string()
        };
        Ok(ControllerIdentity {
            vendor: u16::from_le_bytes([b[0], b[1]]),
            serial: text(4, 24),
            model: text(24, 64),
            firmware: text(64, 72),
            mdts: b[77],
            namespaces: u32_at(b, 516),
        })
    }
}

impl NamespaceIdentity {
    /// Decodes Identify Namespace data of namespace `nsid` (4096 bytes).
    ///
    /// Refused: an inactive namespace (a size of 0 blocks: controllers return all zeros for
    /// a namespace identifier that is valid but not attached) with [`Error::NotAttached`];
    /// a format that carries metadata with each block (the LBA format's `MS` field above
    /// 0) with [`Error::Unsupported`], since this driver moves data only and a controller
    /// would otherwise transfer metadata into (or out of) memory the driver never gave
    /// it; a formatted LBA size outside 512 B to 64 KiB, or a format index (`FLBAS`, up to
    /// 63) past the formats listed (`NLBAF`), with [`Error::BadArgument`].
    pub fn parse(nsid: u32, bytes: &[u8]) -> Result<Self> {
        let b = whole(bytes)?;
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[0..8]);
        if u64::from_le_bytes(n) == 0 {
            return Err(Error::NotAttached {
                what: "NVMe namespace",
                why: "inactive: Identify Namespace reports a size of 0 blocks",
            });
        }
        // FLBAS: the format in use, bits 3:0 its low four bits and (NVMe 2.0, for more than
        // 16 formats) bits 6:5 its high two; NLBAF: the formats listed, 0's based.
        let flbas = b[26];
        let index = (flbas & 0xf) as usize | (((flbas >> 5) & 3) as usize) << 4;
        if index > b[25] as usize {
            return Err(Error::BadArgument {
                what: "NVMe namespace: FLBAS names an LBA format past the last one (NLBAF)",
                value: index as u64,
            });
        }
        let lbaf = u32_at(b, 128 + 4 * index);
        if lbaf & 0xffff != 0 {
            return Err(Error::Unsupported {
                what: "NVMe namespace formatted with metadata per block (LBA format MS > 0): \
                       this driver transfers data only",
            });
        }
        let lbads = (lbaf >> 16) & 0xff;
        if !(9..=16).contains(&lbads) {
            return Err(Error::BadArgument {
                what: "NVMe namespace: LBA data size outside 512 B - 64 KiB",
                value: lbads as u64,
            });
        }
        Ok(NamespaceIdentity {
            nsid,
            blocks: u64::from_le_bytes(n),
            block_size: 1 << lbads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_fields_and_lengths() {
        let mut p = [b' '; IDENTIFY_BYTES];
        p[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        p[4..11].copy_from_slice(b"dmakit0");
        p[24..29].copy_from_slice(b"model");
        p[77] = 7;
        p[516..520].copy_from_slice(&1u32.to_le_bytes());
        let c = ControllerIdentity::parse(&p).unwrap();
        assert_eq!(
            (
                c.vendor,
                c.serial.as_str(),
                c.model.as_str(),
                c.mdts,
                c.namespaces
            ),
            (0x1b36, "dmakit0", "model", 7, 1)
        );
        assert!(ControllerIdentity::parse(&p[..4095]).is_err());
    }

    #[test]
    fn namespace_lba_formats() {
        let mut p = [0u8; IDENTIFY_BYTES];
        p[0..8].copy_from_slice(&64u64.to_le_bytes());
        p[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        assert_eq!(NamespaceIdentity::parse(3, &p).unwrap().block_size, 512);
        p[128..132].copy_from_slice(&(8u32 << 16).to_le_bytes());
        assert!(NamespaceIdentity::parse(3, &p).is_err(), "256-byte blocks");
        p[26] = 0xf; // format 15, of 16 listed (NLBAF 15)
        assert!(NamespaceIdentity::parse(3, &p).is_err(), "past NLBAF");
        p[25] = 15;
        p[188..192].copy_from_slice(&(16u32 << 16).to_le_bytes());
        assert_eq!(NamespaceIdentity::parse(3, &p).unwrap().block_size, 65536);
        p[188..192].copy_from_slice(&(12u32 << 16 | 8).to_le_bytes());
        let e = NamespaceIdentity::parse(3, &p).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported { what } if what.contains("metadata")),
            "a format with 8 bytes of metadata per block: {e}"
        );
        p[0..8].copy_from_slice(&0u64.to_le_bytes());
        let e = NamespaceIdentity::parse(3, &p).unwrap_err();
        assert!(
            matches!(e, Error::NotAttached { why, .. } if why.contains("inactive")),
            "an all-zero size is an inactive namespace: {e}"
        );
    }
}
