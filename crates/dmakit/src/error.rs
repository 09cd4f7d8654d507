//! Errors with context, and their IOKit return codes.
//!
//! Every failure in dmakit is an [`Error`] variant that says *why*: which constraint, which
//! address, which size. [`Error::io_return`] maps it to the `kIOReturn*` value IOKit would
//! have produced (see [`IoReturn`]), so code ported from a macOS driver and its logs read the
//! same.
//!
//! ```
//! use dmakit::{Error, IoReturn};
//!
//! let e = Error::NoSpace { what: "IO address space", requested: 0x4000, align: 0x1000, free: 0x2000 };
//! assert_eq!(e.io_return(), IoReturn::NO_SPACE);
//! assert_eq!(e.io_return().name(), "kIOReturnNoSpace");
//! assert_eq!(e.to_string(), "IO address space has no room: 0x4000 bytes (alignment 0x1000) asked, 0x2000 free");
//! ```

use core::fmt;

/// Short for `core::result::Result<T, dmakit::Error>`.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// An IOKit return code (`IOReturn`, a 32-bit value in the `sys_iokit` subsystem).
///
/// The values are those of IOKit's `IOReturn.h`: `0xE0000000 | code`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoReturn(pub u32);

impl IoReturn {
    /// kIOReturnSuccess
    pub const SUCCESS: IoReturn = IoReturn(0);
    /// kIOReturnError: general error.
    pub const ERROR: IoReturn = IoReturn(0xE000_02BC);
    /// kIOReturnNoMemory: can't allocate memory.
    pub const NO_MEMORY: IoReturn = IoReturn(0xE000_02BD);
    /// kIOReturnNoResources: resource shortage.
    pub const NO_RESOURCES: IoReturn = IoReturn(0xE000_02BE);
    /// kIOReturnBadArgument: invalid argument.
    pub const BAD_ARGUMENT: IoReturn = IoReturn(0xE000_02C2);
    /// kIOReturnUnsupported: unsupported function.
    pub const UNSUPPORTED: IoReturn = IoReturn(0xE000_02C7);
    /// kIOReturnVMError: misc. VM failure.
    pub const VM_ERROR: IoReturn = IoReturn(0xE000_02C8);
    /// kIOReturnInternalError: internal error.
    pub const INTERNAL_ERROR: IoReturn = IoReturn(0xE000_02C9);
    /// kIOReturnCannotLock: can't acquire lock.
    pub const CANNOT_LOCK: IoReturn = IoReturn(0xE000_02CC);
    /// kIOReturnNotWritable: device read-only.
    pub const NOT_WRITABLE: IoReturn = IoReturn(0xE000_02CF);
    /// kIOReturnNotAligned: alignment error.
    pub const NOT_ALIGNED: IoReturn = IoReturn(0xE000_02D0);
    /// kIOReturnBusy: device busy.
    pub const BUSY: IoReturn = IoReturn(0xE000_02D5);
    /// kIOReturnNotReady: not ready.
    pub const NOT_READY: IoReturn = IoReturn(0xE000_02D8);
    /// kIOReturnNotAttached: device not attached.
    pub const NOT_ATTACHED: IoReturn = IoReturn(0xE000_02D9);
    /// kIOReturnNoSpace: no space for data.
    pub const NO_SPACE: IoReturn = IoReturn(0xE000_02DB);
    /// kIOReturnCannotWire: can't wire down physical memory.
    pub const CANNOT_WIRE: IoReturn = IoReturn(0xE000_02DE);
    /// kIOReturnMessageTooLarge: oversized message.
    pub const MESSAGE_TOO_LARGE: IoReturn = IoReturn(0xE000_02E1);
    /// kIOReturnNotPermitted: not permitted.
    pub const NOT_PERMITTED: IoReturn = IoReturn(0xE000_02E2);
    /// kIOReturnUnderrun: data underrun.
    pub const UNDERRUN: IoReturn = IoReturn(0xE000_02E7);
    /// kIOReturnOverrun: data overrun.
    pub const OVERRUN: IoReturn = IoReturn(0xE000_02E8);
    /// kIOReturnAborted: operation aborted.
    pub const ABORTED: IoReturn = IoReturn(0xE000_02EB);
    /// kIOReturnTimeout: I/O timeout.
    pub const TIMEOUT: IoReturn = IoReturn(0xE000_02D6);
    /// kIOReturnIOError: general I/O error (a device reported a failed command).
    pub const IO_ERROR: IoReturn = IoReturn(0xE000_02CA);
    /// kIOReturnNotResponding: the device is not responding.
    pub const NOT_RESPONDING: IoReturn = IoReturn(0xE000_02ED);
    /// kIOReturnDeviceError: the device is not working properly.
    pub const DEVICE_ERROR: IoReturn = IoReturn(0xE000_02EF);
    /// kIOReturnDMAError
    pub const DMA_ERROR: IoReturn = IoReturn(0xE000_02EE);

    /// The constant's IOKit name, or `"kIOReturn?"` for a value dmakit never produces.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "kIOReturnSuccess",
            0xE000_02BC => "kIOReturnError",
            0xE000_02BD => "kIOReturnNoMemory",
            0xE000_02BE => "kIOReturnNoResources",
            0xE000_02C2 => "kIOReturnBadArgument",
            0xE000_02C7 => "kIOReturnUnsupported",
            0xE000_02C8 => "kIOReturnVMError",
            0xE000_02C9 => "kIOReturnInternalError",
            0xE000_02CC => "kIOReturnCannotLock",
            0xE000_02CF => "kIOReturnNotWritable",
            0xE000_02D0 => "kIOReturnNotAligned",
            0xE000_02D5 => "kIOReturnBusy",
            0xE000_02D6 => "kIOReturnTimeout",
            0xE000_02D8 => "kIOReturnNotReady",
            0xE000_02D9 => "kIOReturnNotAttached",
            0xE000_02DB => "kIOReturnNoSpace",
            0xE000_02DE => "kIOReturnCannotWire",
            0xE000_02E1 => "kIOReturnMessageTooLarge",
            0xE000_02E2 => "kIOReturnNotPermitted",
            0xE000_02E7 => "kIOReturnUnderrun",
            0xE000_02E8 => "kIOReturnOverrun",
            0xE000_02EB => "kIOReturnAborted",
            0xE000_02CA => "kIOReturnIOError",
            0xE000_02ED => "kIOReturnNotResponding",
            0xE000_02EF => "kIOReturnDeviceError",
            0xE000_02EE => "kIOReturnDMAError",
            _ => "kIOReturn?",
        }
    }
}

impl fmt::Debug for IoReturn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:#010x})", self.name(), self.0)
    }
}

impl fmt::Display for IoReturn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#010x})", self.name(), self.0)
    }
}

/// Which family of the IOMalloc functions an allocation belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MallocFamily {
    /// `io_malloc` / `io_malloc_zero`, freed by `io_free`.
    Malloc,
    /// `io_malloc_aligned`, freed by `io_free_aligned`.
    Aligned,
    /// `io_malloc_pageable`, freed by `io_free_pageable`.
    Pageable,
    /// `io_malloc_contiguous`, freed by `io_free_contiguous`.
    Contiguous,
}

impl MallocFamily {
    /// The function that frees this family.
    pub const fn free_fn(self) -> &'static str {
        match self {
            MallocFamily::Malloc => "io_free",
            MallocFamily::Aligned => "io_free_aligned",
            MallocFamily::Pageable => "io_free_pageable",
            MallocFamily::Contiguous => "io_free_contiguous",
        }
    }
}

/// Everything that can go wrong, with the context to say why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A size of zero where IOKit (or dmakit) needs at least one byte.
    #[error("{what}: size must not be zero")]
    ZeroSize {
        /// What was being sized.
        what: &'static str,
    },
    /// `start + len` does not fit in 64 bits (or in the platform's address width).
    #[error("{what}: range {start:#x} + {len:#x} overflows")]
    Overflow {
        /// What range.
        what: &'static str,
        /// Its start.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// An alignment that is not a power of two (or is out of the supported range).
    #[error("{what}: alignment {align:#x} is not a supported power of two")]
    BadAlignment {
        /// What was being aligned.
        what: &'static str,
        /// The alignment given.
        align: u64,
    },
    /// An address or length that breaks a required alignment.
    #[error("{what}: {value:#x} is not aligned to {align:#x}")]
    NotAligned {
        /// What value.
        what: &'static str,
        /// The value.
        value: u64,
        /// The required alignment.
        align: u64,
    },
    /// A request outside the bounds of the object it names.
    #[error("{what}: [{offset:#x}, +{len:#x}) is outside [0, {limit:#x})")]
    OutOfBounds {
        /// The object.
        what: &'static str,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The object's length.
        limit: u64,
    },
    /// Any other argument the call cannot accept.
    #[error("bad argument: {what} ({value:#x})")]
    BadArgument {
        /// What is wrong.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// No memory could be had.
    #[error("{what}: out of memory: {requested:#x} bytes asked, {available:#x} available")]
    NoMemory {
        /// Which pool or allocator.
        what: &'static str,
        /// Bytes asked for.
        requested: u64,
        /// Bytes that were available (0 when unknown).
        available: u64,
    },
    /// Memory exists, but none that meets the physical constraints.
    #[error(
        "{what}: no {requested:#x} bytes (alignment {align:#x}{contig}) at or below {limit:#x}",
        contig = if *contiguous { ", contiguous" } else { "" }
    )]
    NoSuitableMemory {
        /// Which allocator.
        what: &'static str,
        /// Bytes asked for.
        requested: u64,
        /// Alignment asked for.
        align: u64,
        /// Highest acceptable physical address.
        limit: u64,
        /// Whether physical contiguity was required.
        contiguous: bool,
    },
    /// A numeric range allocator had no free range that fits.
    #[error(
        "{what} has no room: {requested:#x} bytes (alignment {align:#x}) asked, {free:#x} free"
    )]
    NoSpace {
        /// Which allocator.
        what: &'static str,
        /// Bytes asked for.
        requested: u64,
        /// Alignment asked for.
        align: u64,
        /// Total free bytes (possibly fragmented).
        free: u64,
    },
    /// A fixed range that is not wholly free.
    #[error("{what}: range [{start:#x}, +{len:#x}) is not free")]
    RangeBusy {
        /// Which allocator.
        what: &'static str,
        /// Start of the range.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// Freeing a range that is (partly) free already.
    #[error("{what}: double free of [{start:#x}, +{len:#x})")]
    DoubleFree {
        /// Which allocator.
        what: &'static str,
        /// Start of the range.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// A free by handle whose allocation is no longer live under that handle: freed already
    /// (by handle or by address), cut by a partial free, or made by another allocator.
    #[error("{what}: stale handle of [{start:#x}, +{len:#x}): no live allocation holds it (freed already, cut by a free, or from another allocator)")]
    StaleHandle {
        /// Which allocator.
        what: &'static str,
        /// Start of the handle's range.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// A free that covers an allocation and also space the allocator never owned.
    #[error("{what}: [{start:#x}, +{len:#x}) is not all allocated: {at:#x} was never in the allocator (a size larger than the allocation?)")]
    NotOwned {
        /// Which allocator.
        what: &'static str,
        /// Start of the range.
        start: u64,
        /// Its length.
        len: u64,
        /// The first address of the range the allocator never owned.
        at: u64,
    },
    /// A free of an address that no live allocation starts at.
    #[error("{free_fn}({addr:#x}): no live allocation starts there")]
    NotAllocated {
        /// The free function called.
        free_fn: &'static str,
        /// The address given.
        addr: u64,
    },
    /// A free with a size other than the allocation's (IOFree needs the size).
    #[error("{free_fn}({addr:#x}, {given:#x}): allocated with size {allocated:#x}")]
    WrongSize {
        /// The free function called.
        free_fn: &'static str,
        /// The address.
        addr: u64,
        /// The size the allocation was made with.
        allocated: u64,
        /// The size given to the free.
        given: u64,
    },
    /// A free through the wrong function of the IOMalloc family.
    #[error("{free_fn}({addr:#x}): allocated by the {allocated_by:?} family, free it with {}", allocated_by.free_fn())]
    WrongFree {
        /// The free function called.
        free_fn: &'static str,
        /// The address.
        addr: u64,
        /// The family that made the allocation.
        allocated_by: MallocFamily,
    },
    /// Not in the state the call needs: memory not wired or a command not prepared (prepare
    /// it first), or a device or service not ready yet; `what` says which.
    #[error("{what} (at {addr:#x}): not ready")]
    NotReady {
        /// What was asked.
        what: &'static str,
        /// The address.
        addr: u64,
    },
    /// An address nothing backs.
    #[error("{what}: nothing is mapped at {addr:#x}")]
    NotMapped {
        /// Which address space or device.
        what: &'static str,
        /// The address.
        addr: u64,
    },
    /// A device's DMA was refused: the IOMMU faulted it, or the bus found no memory there.
    /// Names the device (its kind and an address that tells it apart, such as its register
    /// window or PCI address as a number) and the address it used.
    #[error(
        "{device} {unit:#x}: DMA {} {addr:#x} refused {}",
        if *write { "write to" } else { "read from" },
        if *via_iommu { "by the IOMMU (see its fault log)" } else { "by the bus (no memory there)" }
    )]
    DmaFault {
        /// What kind of device.
        device: &'static str,
        /// Which one.
        unit: u64,
        /// The device-visible address it used.
        addr: u64,
        /// A write (else a read).
        write: bool,
        /// The IOMMU refused it (else the bus).
        via_iommu: bool,
    },
    /// Pages could not be wired.
    #[error("cannot wire [{addr:#x}, +{len:#x}): {why}")]
    CannotWire {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// Why, and how to fix it.
        why: &'static str,
    },
    /// Memory that is wired (or prepared) cannot be released yet.
    #[error("{what} at {addr:#x} is busy: {why}")]
    Busy {
        /// What.
        what: &'static str,
        /// The address.
        addr: u64,
        /// Why.
        why: &'static str,
    },
    /// The platform refused for lack of privilege.
    #[error("{what}: not permitted: {hint}")]
    NotPermitted {
        /// The operation.
        what: &'static str,
        /// How to get permission.
        hint: &'static str,
    },
    /// The platform (or this build) does not do this.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is not supported.
        what: &'static str,
    },
    /// A write to memory that is mapped or prepared read-only.
    #[error("{what} at {addr:#x} is read-only")]
    NotWritable {
        /// What.
        what: &'static str,
        /// The address.
        addr: u64,
    },
    /// A resource other than memory ran out (table slots, fragments, handles).
    #[error("{what}: out of resources (limit {limit})")]
    NoResources {
        /// Which resource.
        what: &'static str,
        /// The limit that was hit.
        limit: u64,
    },
    /// A failure injected on purpose by a simulated machine.
    #[error("injected fault: {site} #{nth}")]
    Injected {
        /// The injection site (physical allocation, pin, translation…).
        site: &'static str,
        /// Which call at that site failed (1-based).
        nth: u64,
        /// The code the real failure would have had.
        code: IoReturn,
    },
    /// An operating-system call failed.
    #[error("{op} failed: errno {errno}{}{hint}", if hint.is_empty() { "" } else { ": " })]
    Os {
        /// The call.
        op: &'static str,
        /// Its errno.
        errno: i32,
        /// What to do about it (may be empty).
        hint: &'static str,
    },
    /// A transfer that cannot be expressed under the constraints without double buffering,
    /// where double buffering is not allowed (iterate-only DMA commands).
    #[error("{what} at {addr:#x}")]
    MessageTooLarge {
        /// What does not fit.
        what: &'static str,
        /// The offending address.
        addr: u64,
    },
    /// An offset at or past the end of what is prepared or described (IOKit
    /// kIOReturnOverrun: a segment walk asked to continue after the last byte).
    #[error("{what}: offset {offset:#x} is at or past the end ({length:#x} bytes)")]
    Overrun {
        /// What was walked.
        what: &'static str,
        /// The offset given.
        offset: u64,
        /// The length there is.
        length: u64,
    },
    /// Fewer bytes were covered than asked (IOKit kIOReturnUnderrun).
    #[error("{what}: covered {done:#x} of {requested:#x} bytes")]
    Underrun {
        /// What fell short.
        what: &'static str,
        /// Bytes done.
        done: u64,
        /// Bytes asked.
        requested: u64,
    },
    /// An operation that was stopped before it finished (a DMA transfer a `stop` aborted).
    #[error("{what} #{id}: aborted")]
    Aborted {
        /// What was aborted, and by what.
        what: &'static str,
        /// Which one (a DMA ticket).
        id: u64,
    },
    /// A wait that gave up before the event it waited for (a synchronous DMA command whose
    /// completion did not arrive in time; the work itself may still finish later).
    #[error("{what} #{id}: timed out")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// Which one (a DMA ticket).
        id: u64,
    },
    /// A device that is not there, or not attached the way the call needs (VFIO: no such
    /// PCI function, not bound to vfio-pci, no IOMMU group, a group that is not viable).
    #[error("{what}: {why}")]
    NotAttached {
        /// The device (for example `PCI device 0000:00:04.0`).
        what: &'static str,
        /// What is wrong, and how to fix it.
        why: &'static str,
    },
    /// A mapping that failed and could not be undone: unmapping the pages already mapped
    /// failed too (the IOMMU refused to clear an entry or to invalidate its IOTLB). The IO
    /// range `[iova, +pages)` stayed allocated and may still translate to the memory behind
    /// it, so that memory must stay held (wired, never freed) until an
    /// `iovm_free(iova, pages)` of it succeeds. A [`DmaCommand`](crate::dma::DmaCommand)
    /// whose prepare fails this way tries that free once more and, if it fails again, keeps
    /// the preparation for the device's quarantine (or leaks it) rather than unwire the
    /// memory. The two failures are carried as their IOKit codes (the error stays plain
    /// data, with nothing to drop); [`io_return`](Error::io_return) is the mapping's.
    /// (IOKit's mappers have no such state: they panic or ignore the hardware's refusal.)
    #[error("{what}: mapping failed ({cause}) and so did unmapping its IO pages {iova:#x} (+{pages} pages, {unmap}); until they are freed they may still reach the memory")]
    LeftMapped {
        /// What was being mapped.
        what: &'static str,
        /// The first IO address of the range left allocated.
        iova: u64,
        /// Its size in the mapper's pages.
        pages: u64,
        /// Why the mapping failed.
        cause: IoReturn,
        /// Why undoing it failed.
        unmap: IoReturn,
    },
    /// An internal invariant failed; a dmakit bug.
    #[error("internal error: {what}")]
    Internal {
        /// What went wrong.
        what: &'static str,
    },
}

// Every fallible call returns an `Error`, and hot paths (an allocator's free, a DMA
// command's prepare) propagate and drop `Result`s by the million: an `Error` must stay plain
// data, with nothing to free, or every such `Result` grows drop code (measured: about 40
// instructions per allocate/free pair of the range allocator when one variant held a `Box`).
const _: () = assert!(!core::mem::needs_drop::<Error>());

impl Error {
    /// The IOKit return code for this error.
    pub fn io_return(&self) -> IoReturn {
        use Error::*;
        match self {
            ZeroSize { .. }
            | Overflow { .. }
            | BadAlignment { .. }
            | OutOfBounds { .. }
            | BadArgument { .. }
            | DoubleFree { .. }
            | StaleHandle { .. }
            | NotOwned { .. }
            | NotAllocated { .. }
            | WrongSize { .. }
            | WrongFree { .. } => IoReturn::BAD_ARGUMENT,
            NotAligned { .. } => IoReturn::NOT_ALIGNED,
            NoMemory { .. } | NoSuitableMemory { .. } => IoReturn::NO_MEMORY,
            NoSpace { .. } | RangeBusy { .. } => IoReturn::NO_SPACE,
            NotReady { .. } => IoReturn::NOT_READY,
            NotMapped { .. } => IoReturn::VM_ERROR,
            DmaFault { .. } => IoReturn::DMA_ERROR,
            CannotWire { .. } => IoReturn::CANNOT_WIRE,
            Busy { .. } => IoReturn::BUSY,
            NotPermitted { .. } => IoReturn::NOT_PERMITTED,
            Unsupported { .. } => IoReturn::UNSUPPORTED,
            NotWritable { .. } => IoReturn::NOT_WRITABLE,
            NoResources { .. } => IoReturn::NO_RESOURCES,
            Injected { code, .. } => *code,
            Os { errno, .. } => errno_to_io_return(*errno),
            MessageTooLarge { .. } => IoReturn::MESSAGE_TOO_LARGE,
            NotAttached { .. } => IoReturn::NOT_ATTACHED,
            Internal { .. } => IoReturn::INTERNAL_ERROR,
            Aborted { .. } => IoReturn::ABORTED,
            Overrun { .. } => IoReturn::OVERRUN,
            Underrun { .. } => IoReturn::UNDERRUN,
            Timeout { .. } => IoReturn::TIMEOUT,
            LeftMapped { cause, .. } => *cause,
        }
    }
}

/// The IOKit code closest to a Linux errno.
pub fn errno_to_io_return(errno: i32) -> IoReturn {
    match errno {
        1 | 13 => IoReturn::NOT_PERMITTED, // EPERM, EACCES
        12 => IoReturn::NO_MEMORY,         // ENOMEM
        11 | 16 => IoReturn::BUSY,         // EAGAIN, EBUSY
        14 => IoReturn::VM_ERROR,          // EFAULT
        22 => IoReturn::BAD_ARGUMENT,      // EINVAL
        19 | 6 => IoReturn::NOT_ATTACHED,  // ENODEV, ENXIO
        28 => IoReturn::NO_SPACE,          // ENOSPC
        38 | 95 => IoReturn::UNSUPPORTED,  // ENOSYS, EOPNOTSUPP
        _ => IoReturn::ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc_crate::string::ToString;

    #[test]
    fn codes_match_iokit() {
        assert_eq!(IoReturn::NO_MEMORY.0, 0xE00002BD);
        assert_eq!(IoReturn::BAD_ARGUMENT.0, 0xE00002C2);
        assert_eq!(IoReturn::NOT_READY.0, 0xE00002D8);
        assert_eq!(IoReturn::CANNOT_WIRE.0, 0xE00002DE);
        assert_eq!(IoReturn::NOT_PERMITTED.0, 0xE00002E2);
        assert_eq!(IoReturn(0x1234).name(), "kIOReturn?");
        assert_eq!(IoReturn::TIMEOUT.name(), "kIOReturnTimeout");
        assert_eq!(
            Error::Timeout {
                what: "synchronous DMA command",
                id: 3
            }
            .io_return(),
            IoReturn::TIMEOUT
        );
        assert_eq!(
            Error::ZeroSize { what: "x" }.io_return(),
            IoReturn::BAD_ARGUMENT
        );
        assert_eq!(
            Error::Os {
                op: "mlock",
                errno: 12,
                hint: ""
            }
            .io_return(),
            IoReturn::NO_MEMORY
        );
        assert_eq!(
            Error::NotAttached {
                what: "PCI device 0000:00:04.0",
                why: "not bound to vfio-pci"
            }
            .io_return(),
            IoReturn::NOT_ATTACHED
        );
        let inj = Error::Injected {
            site: "pin",
            nth: 3,
            code: IoReturn::CANNOT_WIRE,
        };
        assert_eq!(inj.io_return(), IoReturn::CANNOT_WIRE);
        let short = Error::Underrun {
            what: "cache flush",
            done: 0x1000,
            requested: 0x3000,
        };
        assert_eq!(short.io_return(), IoReturn::UNDERRUN);
        assert_eq!(short.io_return().0, 0xE00002E7);
        assert_eq!(
            short.to_string(),
            "cache flush: covered 0x1000 of 0x3000 bytes"
        );
    }

    #[test]
    fn messages_carry_context() {
        let e = Error::WrongSize {
            free_fn: "io_free",
            addr: 0x1000,
            allocated: 64,
            given: 32,
        };
        assert_eq!(
            e.to_string(),
            "io_free(0x1000, 0x20): allocated with size 0x40"
        );
        let e = Error::WrongFree {
            free_fn: "io_free",
            addr: 0x2000,
            allocated_by: MallocFamily::Pageable,
        };
        assert!(e.to_string().contains("io_free_pageable"));
        let e = Error::Os {
            op: "mlock",
            errno: 12,
            hint: "raise RLIMIT_MEMLOCK",
        };
        assert_eq!(
            e.to_string(),
            "mlock failed: errno 12: raise RLIMIT_MEMLOCK"
        );
        let e = Error::NoSuitableMemory {
            what: "sim RAM",
            requested: 0x2000,
            align: 0x1000,
            limit: 0xffff_ffff,
            contiguous: true,
        };
        assert!(e.to_string().contains("contiguous"), "{e}");
        let e = Error::LeftMapped {
            what: "iovm_map_run",
            iova: 0x4000_0000,
            pages: 3,
            cause: IoReturn::VM_ERROR,
            unmap: IoReturn::NOT_RESPONDING,
        };
        assert_eq!(e.io_return(), IoReturn::VM_ERROR, "the mapping's code");
        let text = e.to_string();
        assert!(
            text.starts_with("iovm_map_run: mapping failed (kIOReturnVMError"),
            "{text}"
        );
        assert!(
            text.contains("0x40000000 (+3 pages, kIOReturnNotResponding"),
            "{text}"
        );
    }
}
