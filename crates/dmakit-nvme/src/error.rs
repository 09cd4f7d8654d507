//! [`NvmeError`]: what can go wrong with an NVMe command, naming the command.
//!
//! Memory, mapping and device-seam failures keep their [`dmakit::Error`] (with its context);
//! what the controller did (a failed status, no completion in time, a fatal controller
//! status, a reset under an outstanding command) names the queue, the command identifier
//! and the operation, so a log line says which I/O was lost:
//!
//! ```
//! use dmakit_nvme::{NvmeError, Op};
//! use dmakit::IoReturn;
//!
//! let e = NvmeError::Status { op: Op::read(1, 4096, 8), qid: 2, cid: 17, status: 0x0280 };
//! assert_eq!(
//!     e.to_string(),
//!     "NVMe Read of 8 blocks at LBA 4096 (namespace 1), queue 2 command 17: \
//!      status type 0x2 code 0x80 (media and data integrity error)"
//! );
//! assert_eq!(e.io_return(), IoReturn::IO_ERROR);
//!
//! // The driver names the controller too.
//! let at = dmakit::device::PciAddress { segment: 0, bus: 0, device: 4, function: 0 };
//! let e = NvmeError::Reset { op: Op::read(1, 0, 1).on(at), qid: 1, cid: 3 };
//! assert!(e.to_string().starts_with("NVMe Read of 1 blocks at LBA 0 (namespace 1) on 0000:00:04.0,"));
//! ```

use core::fmt;
use dmakit::device::PciAddress;
use dmakit::IoReturn;

/// One NVMe operation, as errors and reports name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// The opcode (admin or NVM command set, by `admin`).
    pub opcode: u8,
    /// Whether it is an admin command.
    pub admin: bool,
    /// The namespace (0 for admin commands that have none).
    pub nsid: u32,
    /// The first logical block (reads and writes).
    pub lba: u64,
    /// The number of logical blocks (reads and writes; 0 otherwise).
    pub blocks: u32,
    /// The controller it went to (set by the driver when it submits), so a log with
    /// several controllers says which one.
    pub device: Option<PciAddress>,
}

impl Op {
    /// A Read of `blocks` blocks at `lba` of namespace `nsid`.
    pub const fn read(nsid: u32, lba: u64, blocks: u32) -> Op {
        Op::io(crate::command::NVM_READ, nsid, lba, blocks)
    }

    /// A Write of `blocks` blocks at `lba` of namespace `nsid`.
    pub const fn write(nsid: u32, lba: u64, blocks: u32) -> Op {
        Op::io(crate::command::NVM_WRITE, nsid, lba, blocks)
    }

    /// An NVM command set command.
    pub const fn io(opcode: u8, nsid: u32, lba: u64, blocks: u32) -> Op {
        Op {
            opcode,
            admin: false,
            nsid,
            lba,
            blocks,
            device: None,
        }
    }

    /// An admin command.
    pub const fn admin(opcode: u8, nsid: u32) -> Op {
        Op {
            opcode,
            admin: true,
            nsid,
            lba: 0,
            blocks: 0,
            device: None,
        }
    }

    /// The same operation, sent to the controller at `device`.
    pub const fn on(self, device: PciAddress) -> Op {
        Op {
            device: Some(device),
            ..self
        }
    }

    /// The command's name in the specification.
    pub fn name(&self) -> &'static str {
        use crate::command::*;
        match (self.admin, self.opcode) {
            (true, ADMIN_DELETE_SQ) => "Delete I/O Submission Queue",
            (true, ADMIN_CREATE_SQ) => "Create I/O Submission Queue",
            (true, ADMIN_DELETE_CQ) => "Delete I/O Completion Queue",
            (true, ADMIN_CREATE_CQ) => "Create I/O Completion Queue",
            (true, ADMIN_IDENTIFY) => "Identify",
            (true, _) => "admin command",
            (false, NVM_FLUSH) => "Flush",
            (false, NVM_WRITE) => "Write",
            (false, NVM_READ) => "Read",
            (false, _) => "I/O command",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if self.blocks > 0 {
            write!(
                f,
                " of {} blocks at LBA {} (namespace {})",
                self.blocks, self.lba, self.nsid
            )?;
        } else if !self.admin || self.nsid != 0 {
            write!(f, " (namespace {})", self.nsid)?;
        }
        match self.device {
            Some(d) => write!(f, " on {d}"),
            None => Ok(()),
        }
    }
}

/// An NVMe driver error.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NvmeError {
    /// Memory, mapping, register or argument failure, with dmakit's context.
    #[error(transparent)]
    Dma(#[from] dmakit::Error),
    /// The controller completed the command with a status other than success.
    #[error("NVMe {op}, queue {qid} command {cid}: status type {:#x} code {:#04x} ({})", status >> 8 & 7, status & 0xff, status_name(*status))]
    Status {
        /// The command.
        op: Op,
        /// Its submission queue (0: admin).
        qid: u16,
        /// Its command identifier.
        cid: u16,
        /// The status field (status code type in bits 10:8, status code in 7:0).
        status: u16,
    },
    /// No completion arrived within the command timeout. The controller is reset before
    /// its memory is given back (the command may still be running).
    #[error("NVMe {op}, queue {qid} command {cid}: no completion within {waited_ms} ms (the controller will be reset)")]
    Timeout {
        /// The command.
        op: Op,
        /// Its submission queue.
        qid: u16,
        /// Its command identifier.
        cid: u16,
        /// How long the driver waited.
        waited_ms: u64,
    },
    /// The controller reported a fatal status (`CSTS.CFS`) while the command was
    /// outstanding; it did not complete. The next command resets the controller
    /// ([`Nvme::recover`](crate::Nvme::recover) does it at once).
    #[error("NVMe {op}, queue {qid} command {cid}: failed, the controller reported a fatal status (CSTS.CFS)")]
    ControllerFatal {
        /// The command.
        op: Op,
        /// Its submission queue.
        qid: u16,
        /// Its command identifier.
        cid: u16,
    },
    /// The controller was reset (after a fatal status or a timeout elsewhere) while the
    /// command was outstanding; it did not complete.
    #[error("NVMe {op}, queue {qid} command {cid}: failed, the controller was reset while it was outstanding")]
    Reset {
        /// The command.
        op: Op,
        /// Its submission queue.
        qid: u16,
        /// Its command identifier.
        cid: u16,
    },
}

impl NvmeError {
    /// The IOKit return code: a dmakit error's own; a failed status is `kIOReturnIOError`,
    /// a timeout `kIOReturnTimeout`, a fatal controller `kIOReturnDeviceError`, a command
    /// lost to a reset `kIOReturnAborted`.
    pub fn io_return(&self) -> IoReturn {
        match self {
            NvmeError::Dma(e) => e.io_return(),
            NvmeError::Status { .. } => IoReturn::IO_ERROR,
            NvmeError::Timeout { .. } => IoReturn::TIMEOUT,
            NvmeError::ControllerFatal { .. } => IoReturn::DEVICE_ERROR,
            NvmeError::Reset { .. } => IoReturn::ABORTED,
        }
    }

    /// The command the error names, if it names one: `(queue, command identifier, op)`.
    pub fn command(&self) -> Option<(u16, u16, Op)> {
        match *self {
            NvmeError::Dma(_) => None,
            NvmeError::Status { op, qid, cid, .. }
            | NvmeError::Timeout { op, qid, cid, .. }
            | NvmeError::ControllerFatal { op, qid, cid }
            | NvmeError::Reset { op, qid, cid } => Some((qid, cid, op)),
        }
    }
}

/// The generic status names the driver meets most (NVMe Base Specification, Generic
/// Command Status and Command Specific Status values).
fn status_name(status: u16) -> &'static str {
    match (status >> 8 & 7, status & 0xff) {
        (0, 0x01) => "invalid command opcode",
        (0, 0x02) => "invalid field in command",
        (0, 0x04) => "data transfer error",
        (0, 0x06) => "internal error",
        (0, 0x07) => "command abort requested",
        (0, 0x0b) => "invalid namespace or format",
        (0, 0x13) => "PRP offset invalid",
        (0, 0x80) => "LBA out of range",
        (0, 0x81) => "capacity exceeded",
        (1, 0x01) => "invalid queue identifier",
        (1, 0x02) => "invalid queue size",
        (1, 0x08) => "invalid interrupt vector",
        (2, _) => "media and data integrity error",
        _ => "see the NVMe status code tables",
    }
}

/// The driver's results.
pub type Result<T, E = NvmeError> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn errors_name_the_command_and_map_to_iokit_codes() {
        let op = Op::write(1, 7, 2);
        let t = NvmeError::Timeout {
            op,
            qid: 3,
            cid: 9,
            waited_ms: 100,
        };
        assert!(t.to_string().contains("Write of 2 blocks at LBA 7"));
        assert_eq!(t.io_return(), IoReturn::TIMEOUT);
        assert_eq!(t.command(), Some((3, 9, op)));
        let f = NvmeError::ControllerFatal { op, qid: 1, cid: 0 };
        assert_eq!(f.io_return(), IoReturn::DEVICE_ERROR);
        let r = NvmeError::Reset { op, qid: 1, cid: 0 };
        assert_eq!(r.io_return(), IoReturn::ABORTED);
        let d: NvmeError = dmakit::Error::ZeroSize { what: "x" }.into();
        assert_eq!(d.io_return(), IoReturn::BAD_ARGUMENT);
        assert_eq!(d.command(), None);
        let admin = Op::admin(crate::command::ADMIN_IDENTIFY, 0);
        assert_eq!(admin.to_string(), "Identify");
        let s = NvmeError::Status {
            op: admin,
            qid: 0,
            cid: 1,
            status: 0x0002,
        };
        assert!(s.to_string().contains("invalid field in command"));
    }
}
