//! What a type1 IOMMU container reports: page sizes, the valid IOVA ranges, how many DMA
//! mappings are left.
//!
//! `VFIO_IOMMU_GET_INFO` returns a `vfio_iommu_type1_info` followed by a *capability
//! chain*: each capability starts with a `vfio_info_cap_header { id, version, next }` where
//! `next` is the offset of the following one from the start of the info (0 ends the chain).
//! [`IommuInfo::parse`] walks it from raw bytes, so it is tested on the host without VFIO;
//! a malformed chain (an offset out of bounds, a loop) is an error, never a panic.
//!
//! ```
//! use dmakit_linux::vfio::IommuInfo;
//! // An info with 4 KiB pages and no capability chain: every IOVA is usable.
//! let mut bytes = vec![0u8; 24];
//! bytes[0..4].copy_from_slice(&24u32.to_ne_bytes());   // argsz
//! bytes[4..8].copy_from_slice(&1u32.to_ne_bytes());    // flags: PGSIZES
//! bytes[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
//! let info = IommuInfo::parse(&bytes)?;
//! assert_eq!(info.page_sizes, 0x1000);
//! assert_eq!(info.iova_ranges, vec![(0, u64::MAX)]);
//! # Ok::<(), dmakit::Error>(())
//! ```

use dmakit::{Error, Result};
use std::mem::{offset_of, size_of};
use vfio_bindings::bindings::vfio::{
    vfio_info_cap_header, vfio_iommu_type1_info, vfio_iommu_type1_info_cap_iova_range,
    vfio_iommu_type1_info_dma_avail, vfio_iova_range, VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
};

/// The type1 IOMMU's description of its address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuInfo {
    /// Supported IOMMU page sizes, one bit per size (bit 12: 4 KiB).
    pub page_sizes: u64,
    /// Valid IOVA ranges, `(first, last)` inclusive, in the kernel's (ascending) order. Without
    /// an IOVA-range capability the whole 64-bit space is valid.
    pub iova_ranges: Vec<(u64, u64)>,
    /// DMA mappings still available in this container, if the kernel says.
    pub dma_avail: Option<u32>,
}

const MALFORMED: &str = "VFIO_IOMMU_GET_INFO capability chain";

/// The `N` bytes at `at` of the chain (a truncated chain is an error, never a panic).
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N]> {
    b.get(at..at.saturating_add(N))
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::OutOfBounds {
            what: MALFORMED,
            offset: at as u64,
            len: N as u64,
            limit: b.len() as u64,
        })
}

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    bytes_at(b, at).map(u16::from_ne_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    bytes_at(b, at).map(u32::from_ne_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    bytes_at(b, at).map(u64::from_ne_bytes)
}

impl IommuInfo {
    /// Decodes the bytes `VFIO_IOMMU_GET_INFO` filled in (the info struct and its chain).
    pub fn parse(bytes: &[u8]) -> Result<IommuInfo> {
        type Info = vfio_iommu_type1_info;
        let flags = u32_at(bytes, offset_of!(Info, flags))?;
        let page_sizes = if flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
            u64_at(bytes, offset_of!(Info, iova_pgsizes))?
        } else {
            0
        };
        let mut info = IommuInfo {
            page_sizes,
            iova_ranges: Vec::new(),
            dma_avail: None,
        };
        let mut next = if flags & VFIO_IOMMU_INFO_CAPS != 0 {
            u32_at(bytes, offset_of!(Info, cap_offset))? as usize
        } else {
            0
        };
        let mut hops = 0;
        while next != 0 {
            hops += 1;
            if hops > 64 || next < size_of::<Info>() {
                return Err(Error::BadArgument {
                    what: "VFIO_IOMMU_GET_INFO capability chain loops or points into the header",
                    value: next as u64,
                });
            }
            let id = u16_at(bytes, next + offset_of!(vfio_info_cap_header, id))?;
            let following = u32_at(bytes, next + offset_of!(vfio_info_cap_header, next))?;
            match u32::from(id) {
                VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                    type Cap = vfio_iommu_type1_info_cap_iova_range;
                    let n = u32_at(bytes, next + offset_of!(Cap, nr_iovas))? as usize;
                    let first = next + offset_of!(Cap, iova_ranges);
                    for i in 0..n {
                        let at = first + i * size_of::<vfio_iova_range>();
                        let start = u64_at(bytes, at + offset_of!(vfio_iova_range, start))?;
                        let end = u64_at(bytes, at + offset_of!(vfio_iova_range, end))?;
                        if end < start {
                            return Err(Error::BadArgument {
                                what: "VFIO IOVA range ends before it starts",
                                value: start,
                            });
                        }
                        info.iova_ranges.push((start, end));
                    }
                }
                VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                    let at = next + offset_of!(vfio_iommu_type1_info_dma_avail, avail);
                    info.dma_avail = Some(u32_at(bytes, at)?);
                }
                _ => {} // migration and future capabilities: not needed here
            }
            next = following as usize;
        }
        if info.iova_ranges.is_empty() {
            info.iova_ranges.push((0, u64::MAX));
        }
        Ok(info)
    }

    /// The smallest supported IOMMU page size (4 KiB if the kernel reported none).
    pub fn min_page_size(&self) -> u64 {
        if self.page_sizes == 0 {
            0x1000
        } else {
            1 << self.page_sizes.trailing_zeros()
        }
    }

    /// Whether `[iova, iova + len)` lies inside one valid range.
    pub fn contains(&self, iova: u64, len: u64) -> bool {
        let Some(last) = len.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
            return false;
        };
        self.iova_ranges
            .iter()
            .any(|&(s, e)| iova >= s && last <= e)
    }
}
