//! Faults the unit recorded: [`VtdFault`], [`FaultReason`], [`FaultLog`].

use alloc::vec::Vec;
use core::fmt;
use dmakit::device::PciAddress;
use dmakit::IoAddr;

/// Why the unit blocked a request (the fault reason codes of the VT-d specification for
/// legacy-mode DMA remapping; anything else is kept as [`Other`](Self::Other)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// 1: the root entry of the requester's bus is not present (no domain on that bus).
    RootNotPresent,
    /// 2: the context entry of the requester is not present (no domain for the function).
    ContextNotPresent,
    /// 3: the context entry is programmed wrongly (an unsupported address width or
    /// translation type).
    ContextInvalid,
    /// 4: the IO address is above the domain's address width.
    BeyondAddressWidth,
    /// 5: a write to a page the device may not write. Legacy-mode VT-d has no separate
    /// "not present" reason for pages: an unmapped page faults with this (or
    /// [`ReadDenied`](Self::ReadDenied)), since a page is present exactly when it grants
    /// read or write.
    WriteDenied,
    /// 6: a read of a page the device may not read (or an unmapped page, see
    /// [`WriteDenied`](Self::WriteDenied)).
    ReadDenied,
    /// 7: a paging entry could not be read.
    PagingEntryUnreadable,
    /// 8: the root table could not be read.
    RootTableUnreadable,
    /// 9: a context table could not be read.
    ContextTableUnreadable,
    /// 0xA: a present root entry has reserved bits set.
    RootReserved,
    /// 0xB: a present context entry has reserved bits set.
    ContextReserved,
    /// 0xC: a paging entry has reserved bits set.
    PagingReserved,
    /// 0xD: the context entry's translation type blocks the request.
    TranslationTypeBlocked,
    /// Any other code (interrupt-remapping and scalable-mode faults, reserved codes).
    Other(u8),
}

impl FaultReason {
    /// Decodes a fault reason code.
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => FaultReason::RootNotPresent,
            2 => FaultReason::ContextNotPresent,
            3 => FaultReason::ContextInvalid,
            4 => FaultReason::BeyondAddressWidth,
            5 => FaultReason::WriteDenied,
            6 => FaultReason::ReadDenied,
            7 => FaultReason::PagingEntryUnreadable,
            8 => FaultReason::RootTableUnreadable,
            9 => FaultReason::ContextTableUnreadable,
            0xA => FaultReason::RootReserved,
            0xB => FaultReason::ContextReserved,
            0xC => FaultReason::PagingReserved,
            0xD => FaultReason::TranslationTypeBlocked,
            c => FaultReason::Other(c),
        }
    }

    /// The fault reason code.
    pub const fn code(self) -> u8 {
        match self {
            FaultReason::RootNotPresent => 1,
            FaultReason::ContextNotPresent => 2,
            FaultReason::ContextInvalid => 3,
            FaultReason::BeyondAddressWidth => 4,
            FaultReason::WriteDenied => 5,
            FaultReason::ReadDenied => 6,
            FaultReason::PagingEntryUnreadable => 7,
            FaultReason::RootTableUnreadable => 8,
            FaultReason::ContextTableUnreadable => 9,
            FaultReason::RootReserved => 0xA,
            FaultReason::ContextReserved => 0xB,
            FaultReason::PagingReserved => 0xC,
            FaultReason::TranslationTypeBlocked => 0xD,
            FaultReason::Other(c) => c,
        }
    }

    /// Whether the page had no translation or lacked the permission (reasons 5 and 6):
    /// the faults a driver's own mapping bugs cause.
    pub const fn is_page_fault(self) -> bool {
        matches!(self, FaultReason::WriteDenied | FaultReason::ReadDenied)
    }
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            FaultReason::RootNotPresent => "root entry not present",
            FaultReason::ContextNotPresent => "context entry not present",
            FaultReason::ContextInvalid => "context entry invalid",
            FaultReason::BeyondAddressWidth => "address beyond the domain's width",
            FaultReason::WriteDenied => "page not writable (or not mapped)",
            FaultReason::ReadDenied => "page not readable (or not mapped)",
            FaultReason::PagingEntryUnreadable => "paging entry unreadable",
            FaultReason::RootTableUnreadable => "root table unreadable",
            FaultReason::ContextTableUnreadable => "context table unreadable",
            FaultReason::RootReserved => "reserved bits in a root entry",
            FaultReason::ContextReserved => "reserved bits in a context entry",
            FaultReason::PagingReserved => "reserved bits in a paging entry",
            FaultReason::TranslationTypeBlocked => "blocked by the translation type",
            FaultReason::Other(c) => return write!(f, "fault reason {c:#x}"),
        };
        f.write_str(text)
    }
}

/// One fault the unit recorded: which function, which IO address, reading or writing, and
/// why (the VT-d counterpart of the simulator's IOMMU fault log entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VtdFault {
    /// The requester: PCI bus in bits 15:8, device in 7:3, function in 2:0.
    pub source_id: u16,
    /// The IO address (page granular: the unit records the page, not the byte).
    pub iova: IoAddr,
    /// Whether the device was writing.
    pub write: bool,
    /// Why it faulted.
    pub reason: FaultReason,
}

impl VtdFault {
    /// The requester's bus number.
    pub const fn bus(&self) -> u8 {
        (self.source_id >> 8) as u8
    }

    /// The requester's device and function numbers, `device << 3 | function`.
    pub const fn devfn(&self) -> u8 {
        self.source_id as u8
    }

    /// The requester as a PCI address in `segment` (the unit's PCI segment).
    pub const fn pci_address(&self, segment: u16) -> PciAddress {
        PciAddress {
            segment,
            bus: self.bus(),
            device: self.devfn() >> 3,
            function: self.devfn() & 7,
        }
    }
}

impl fmt::Display for VtdFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{} {} at {:#x}: {}",
            self.bus(),
            self.devfn() >> 3,
            self.devfn() & 7,
            if self.write { "write" } else { "read" },
            self.iova.0,
            self.reason
        )
    }
}

/// What [`Vtd::faults`](crate::Vtd::faults) collected (and cleared).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultLog {
    /// The recorded faults, oldest first.
    pub faults: Vec<VtdFault>,
    /// The unit ran out of fault records and dropped at least one fault since the last
    /// collection (`FSTS.PFO`).
    pub overflow: bool,
}

/// The source identifier of a PCI function: `bus << 8 | devfn`.
pub const fn source_id(bus: u8, devfn: u8) -> u16 {
    ((bus as u16) << 8) | devfn as u16
}

/// `device << 3 | function`, the device-and-function byte of a source identifier
/// (device 0..=31, function 0..=7, else [`Error::BadArgument`](dmakit::Error::BadArgument)).
pub fn devfn(device: u8, function: u8) -> dmakit::Result<u8> {
    if device > 31 || function > 7 {
        return Err(dmakit::Error::BadArgument {
            what: "PCI device (0..=31) or function (0..=7) number",
            value: ((device as u64) << 8) | function as u64,
        });
    }
    Ok((device << 3) | function)
}
