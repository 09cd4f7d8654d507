//! The remapping unit's registers and the bits of the structures it walks, as the VT-d
//! specification lays them out (legacy translation mode, second-level tables).
//!
//! Offsets are from the unit's register base (the DRHD structure of the ACPI DMAR table).
//! Every register is accessed at its natural width: 32-bit registers with 32-bit accesses,
//! 64-bit ones with single 64-bit accesses.

/// Version (32-bit): major in bits 7:4, minor in bits 3:0.
pub const VER: u64 = 0x00;
/// Capability (64-bit).
pub const CAP: u64 = 0x08;
/// Extended capability (64-bit).
pub const ECAP: u64 = 0x10;
/// Global command (32-bit, write only).
pub const GCMD: u64 = 0x18;
/// Global status (32-bit).
pub const GSTS: u64 = 0x1C;
/// Root table address (64-bit).
pub const RTADDR: u64 = 0x20;
/// Context command (64-bit).
pub const CCMD: u64 = 0x28;
/// Fault status (32-bit).
pub const FSTS: u64 = 0x34;
/// Fault event control (32-bit).
pub const FECTL: u64 = 0x38;
/// Invalidation queue head (64-bit).
pub const IQH: u64 = 0x80;
/// Invalidation queue tail (64-bit).
pub const IQT: u64 = 0x88;
/// Invalidation queue address (64-bit).
pub const IQA: u64 = 0x90;

/// Global command and status bits (the same positions in GCMD and GSTS).
pub mod gcmd {
    /// Translation enable / status.
    pub const TE: u32 = 1 << 31;
    /// Set root table pointer / root table pointer status.
    pub const SRTP: u32 = 1 << 30;
    /// Set fault log / status.
    pub const SFL: u32 = 1 << 29;
    /// Advanced fault logging enable / status.
    pub const EAFL: u32 = 1 << 28;
    /// Write buffer flush / status (busy while set in GSTS).
    pub const WBF: u32 = 1 << 27;
    /// Queued invalidation enable / status.
    pub const QIE: u32 = 1 << 26;
    /// Interrupt remapping enable / status.
    pub const IRE: u32 = 1 << 25;
    /// Set interrupt remapping table pointer / status.
    pub const SIRTP: u32 = 1 << 24;
    /// Compatibility format interrupts / status.
    pub const CFI: u32 = 1 << 23;
    /// The status bits that are states rather than one-shot commands: a command is written
    /// as `GSTS & PERSISTENT | command`, so the other states stay as they are.
    pub const PERSISTENT: u32 = TE | EAFL | QIE | IRE | CFI;
}

/// Capability register fields.
pub mod cap {
    /// Number of domains supported: `2^(4 + 2 * ND)` (bits 2:0).
    pub const fn nd(cap: u64) -> u32 {
        (cap & 7) as u32
    }
    /// Required write-buffer flushing.
    pub const RWBF: u64 = 1 << 4;
    /// Caching mode: not-present and erroneous entries may be cached, so making an entry
    /// present needs an invalidation too.
    pub const CM: u64 = 1 << 7;
    /// Supported adjusted guest address widths (bits 12:8): bit 1 is 39-bit (3-level),
    /// bit 2 48-bit (4-level), bit 3 57-bit (5-level).
    pub const fn sagaw(cap: u64) -> u32 {
        ((cap >> 8) & 0x1F) as u32
    }
    /// Maximum guest address width minus one (bits 21:16).
    pub const fn mgaw(cap: u64) -> u32 {
        ((cap >> 16) & 0x3F) as u32
    }
    /// Fault-recording register offset in 16-byte units (bits 33:24).
    pub const fn fro(cap: u64) -> u64 {
        (cap >> 24) & 0x3FF
    }
    /// Page-selective invalidation supported.
    pub const PSI: u64 = 1 << 39;
    /// Number of fault-recording registers minus one (bits 47:40).
    pub const fn nfr(cap: u64) -> u32 {
        ((cap >> 40) & 0xFF) as u32
    }
    /// Maximum address mask value of a page-selective invalidation (bits 53:48).
    pub const fn mamv(cap: u64) -> u32 {
        ((cap >> 48) & 0x3F) as u32
    }
    /// Write draining supported.
    pub const DWD: u64 = 1 << 54;
    /// Read draining supported.
    pub const DRD: u64 = 1 << 55;
}

/// Extended capability register fields.
pub mod ecap {
    /// Page-walk coherency: the unit snoops the CPU caches when it reads remapping
    /// structures. Without it, every update is written back from the caches.
    pub const C: u64 = 1 << 0;
    /// Queued invalidation supported.
    pub const QI: u64 = 1 << 1;
    /// Pass-through translation type supported.
    pub const PT: u64 = 1 << 6;
    /// IOTLB register offset in 16-byte units (bits 17:8).
    pub const fn iro(ecap: u64) -> u64 {
        (ecap >> 8) & 0x3FF
    }
    /// Scalable mode supported (this driver uses legacy mode).
    pub const SMTS: u64 = 1 << 43;
}

/// Context command register fields.
pub mod ccmd {
    /// Invalidate context cache (set to request; hardware clears it when done).
    pub const ICC: u64 = 1 << 63;
    /// Global invalidation request granularity.
    pub const GLOBAL: u64 = 1 << 61;
    /// Domain-selective invalidation request granularity.
    pub const DOMAIN: u64 = 2 << 61;
    /// Device-selective invalidation request granularity.
    pub const DEVICE: u64 = 3 << 61;
    /// The actual granularity hardware performed (bits 60:59); zero means not performed.
    pub const fn caig(v: u64) -> u64 {
        (v >> 59) & 3
    }
}

/// IOTLB invalidate register fields (at `ECAP.IRO * 16 + 8`; the invalidate address
/// register is at `ECAP.IRO * 16`).
pub mod iotlb {
    /// Invalidate IOTLB (set to request; hardware clears it when done).
    pub const IVT: u64 = 1 << 63;
    /// Global invalidation.
    pub const GLOBAL: u64 = 1 << 60;
    /// Domain-selective invalidation.
    pub const DOMAIN: u64 = 2 << 60;
    /// Page-selective-within-domain invalidation.
    pub const PAGE: u64 = 3 << 60;
    /// Drain reads.
    pub const DR: u64 = 1 << 49;
    /// Drain writes.
    pub const DW: u64 = 1 << 48;
    /// The actual granularity hardware performed (bits 58:57); zero means not performed.
    pub const fn iaig(v: u64) -> u64 {
        (v >> 57) & 3
    }
}

/// Fault status register bits.
pub mod fsts {
    /// Primary fault overflow (write 1 to clear).
    pub const PFO: u32 = 1 << 0;
    /// Primary pending fault (read only: some fault record holds a fault).
    pub const PPF: u32 = 1 << 1;
    /// Invalidation queue error (write 1 to clear).
    pub const IQE: u32 = 1 << 4;
    /// Invalidation completion error (write 1 to clear).
    pub const ICE: u32 = 1 << 5;
    /// Invalidation time-out error (write 1 to clear).
    pub const ITE: u32 = 1 << 6;
    /// Fault record index (bits 15:8).
    pub const fn fri(v: u32) -> u32 {
        (v >> 8) & 0xFF
    }
}

/// Fault recording register fields (128 bits; `hi` is the upper 64).
pub mod frcd {
    /// Fault: the record holds a fault (write 1 to clear).
    pub const F: u64 = 1 << 63;
    /// Type: set for a read request, clear for a write.
    pub const T: u64 = 1 << 62;
    /// Fault reason (bits 103:96, in `hi` 39:32).
    pub const fn reason(hi: u64) -> u8 {
        ((hi >> 32) & 0xFF) as u8
    }
    /// Source identifier (bits 79:64, in `hi` 15:0).
    pub const fn source(hi: u64) -> u16 {
        (hi & 0xFFFF) as u16
    }
}

/// Root, context and second-level paging entries.
pub mod entry {
    /// Present (root and context entries).
    pub const P: u64 = 1;
    /// Read permission (second-level entries).
    pub const R: u64 = 1 << 0;
    /// Write permission (second-level entries).
    pub const W: u64 = 1 << 1;
    /// The address field of every entry: bits 63:12 (the unit ignores the bits above its
    /// host address width only where the specification says so; this driver keeps them
    /// zero).
    pub const ADDR: u64 = !0xFFF;
    /// Context entry, upper half: address width (bits 2:0).
    pub const fn context_hi(aw: u64, did: u16) -> u64 {
        (aw & 7) | ((did as u64) << 8)
    }
}

/// Queued invalidation descriptors (128-bit).
pub mod qi {
    /// Context-cache invalidate.
    pub const CONTEXT: u64 = 1;
    /// IOTLB invalidate.
    pub const IOTLB: u64 = 2;
    /// Invalidation wait.
    pub const WAIT: u64 = 5;
    /// Wait descriptor: status write.
    pub const WAIT_SW: u64 = 1 << 5;
    /// Wait descriptor: fence.
    pub const WAIT_FN: u64 = 1 << 6;
    /// IOTLB descriptor: drain reads.
    pub const IOTLB_DR: u64 = 1 << 7;
    /// IOTLB descriptor: drain writes.
    pub const IOTLB_DW: u64 = 1 << 6;
}
