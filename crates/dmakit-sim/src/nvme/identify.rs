//! Identify data structures (4 KiB each).

use super::NvmeConfig;

/// Bytes of an Identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;

/// The serial number Identify Controller reports.
pub const SERIAL: &str = "dmakit0";
/// The model number Identify Controller reports.
pub const MODEL: &str = "dmakit simulated NVMe";
/// The firmware revision Identify Controller reports.
pub const FIRMWARE: &str = "1.0";
/// The NVMe version the controller implements (VS and Identify VER): 1.4.0.
pub const VERSION: u32 = 0x0001_0400;

/// Identify Controller field offsets.
pub mod ctrl {
    /// PCI vendor ID (u16).
    pub const VID: usize = 0;
    /// Serial number (20 ASCII bytes, space padded).
    pub const SN: usize = 4;
    /// Model number (40 ASCII bytes).
    pub const MN: usize = 24;
    /// Firmware revision (8 ASCII bytes).
    pub const FR: usize = 64;
    /// Maximum Data Transfer Size (u8; a power of two in minimum memory pages, 0 = none).
    pub const MDTS: usize = 77;
    /// Controller ID (u16).
    pub const CNTLID: usize = 78;
    /// Version (u32).
    pub const VER: usize = 80;
    /// Abort Command Limit (u8, 0's based).
    pub const ACL: usize = 258;
    /// Asynchronous Event Request Limit (u8, 0's based).
    pub const AERL: usize = 259;
    /// Submission queue entry size (u8: max << 4 | min, log2).
    pub const SQES: usize = 512;
    /// Completion queue entry size (u8).
    pub const CQES: usize = 513;
    /// Number of namespaces (u32).
    pub const NN: usize = 516;
    /// Volatile write cache (u8, bit 0 present).
    pub const VWC: usize = 525;
}

/// Identify Namespace field offsets.
pub mod ns {
    /// Namespace size in blocks (u64).
    pub const NSZE: usize = 0;
    /// Namespace capacity (u64).
    pub const NCAP: usize = 8;
    /// Namespace utilisation (u64).
    pub const NUSE: usize = 16;
    /// Number of LBA formats (u8, 0's based).
    pub const NLBAF: usize = 25;
    /// Formatted LBA size (u8: bits 3:0 the low four bits of the format in use, bits 6:5
    /// its high two).
    pub const FLBAS: usize = 26;
    /// LBA format 0, then formats 1..=63 every 4 bytes (u32: bits 15:0 MS, metadata bytes per block; bits 23:16 LBADS, log2
    /// of the LBA size).
    pub const LBAF0: usize = 128;
}

/// The asynchronous event request limit (0's based).
pub(crate) const AERL: u8 = 3;

fn ascii(out: &mut [u8], s: &str) {
    out.fill(b' ');
    out[..s.len()].copy_from_slice(s.as_bytes());
}

pub(crate) fn controller(cfg: &NvmeConfig, vendor: u16, namespaces: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_BYTES];
    b[ctrl::VID..ctrl::VID + 2].copy_from_slice(&vendor.to_le_bytes());
    b[2..4].copy_from_slice(&0x1af4u16.to_le_bytes());
    ascii(&mut b[ctrl::SN..ctrl::SN + 20], SERIAL);
    ascii(&mut b[ctrl::MN..ctrl::MN + 40], MODEL);
    ascii(&mut b[ctrl::FR..ctrl::FR + 8], FIRMWARE);
    b[72] = 6; // recommended arbitration burst
    b[ctrl::MDTS] = cfg.mdts;
    b[ctrl::CNTLID..ctrl::CNTLID + 2].copy_from_slice(&1u16.to_le_bytes());
    b[ctrl::VER..ctrl::VER + 4].copy_from_slice(&VERSION.to_le_bytes());
    b[111] = 1; // controller type: I/O controller
    b[ctrl::ACL] = 3;
    b[ctrl::AERL] = AERL;
    b[ctrl::SQES] = 0x66;
    b[ctrl::CQES] = 0x44;
    b[ctrl::NN..ctrl::NN + 4].copy_from_slice(&namespaces.to_le_bytes());
    b[ctrl::VWC] = 1;
    let nqn = b"nqn.2024-01.dev.dmakit:sim0";
    b[768..768 + nqn.len()].copy_from_slice(nqn);
    // Power state 0: 25 W.
    b[2048..2050].copy_from_slice(&2500u16.to_le_bytes());
    b
}

pub(crate) fn namespace(lba_size: u64, blocks: u64, metadata: u16, index: u8) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_BYTES];
    for at in [ns::NSZE, ns::NCAP, ns::NUSE] {
        b[at..at + 8].copy_from_slice(&blocks.to_le_bytes());
    }
    let other: u32 = if lba_size == 4096 { 9 } else { 12 };
    for i in 0..index as usize {
        let at = ns::LBAF0 + 4 * i;
        b[at..at + 4].copy_from_slice(&(other << 16).to_le_bytes());
    }
    let lbads = lba_size.trailing_zeros();
    let at = ns::LBAF0 + 4 * index as usize;
    b[at..at + 4].copy_from_slice(&(lbads << 16 | metadata as u32).to_le_bytes());
    b[ns::NLBAF] = index;
    b[ns::FLBAS] = (index & 0xF) | ((index >> 4) << 5);
    b
}

/// The active namespace identifiers above `after`, of `1..=namespaces`.
pub(crate) fn active_namespaces(after: u32, namespaces: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_BYTES];
    for (slot, id) in (after.saturating_add(1)..=namespaces)
        .take(1024)
        .enumerate()
    {
        b[4 * slot..4 * slot + 4].copy_from_slice(&id.to_le_bytes());
    }
    b
}
