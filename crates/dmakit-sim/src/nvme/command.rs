//! The NVMe wire formats: 64-byte submission entries, 16-byte completion entries and the
//! status field, with the opcodes the controller knows.

/// Bytes of a submission queue entry.
pub const SQE_BYTES: u64 = 64;
/// Bytes of a completion queue entry.
pub const CQE_BYTES: u64 = 16;

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0C;

    /// Identify CNS: namespace.
    pub const CNS_NAMESPACE: u32 = 0x00;
    /// Identify CNS: controller.
    pub const CNS_CONTROLLER: u32 = 0x01;
    /// Identify CNS: active namespace ID list.
    pub const CNS_ACTIVE_NS_LIST: u32 = 0x02;

    /// Feature: Number of Queues.
    pub const FEATURE_NUM_QUEUES: u8 = 0x07;
}

/// NVM command set opcodes.
pub mod nvm {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
}

/// A submission queue entry (the fields this controller reads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmissionEntry {
    /// Opcode (CDW0 bits 7:0).
    pub opcode: u8,
    /// Command identifier (CDW0 bits 31:16).
    pub cid: u16,
    /// Namespace ID.
    pub nsid: u32,
    /// PRP entry 1.
    pub prp1: u64,
    /// PRP entry 2 (a page, or a PRP list pointer).
    pub prp2: u64,
    /// Command dwords 10 to 15.
    pub cdw: [u32; 6],
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    le32(b, o) as u64 | (le32(b, o + 4) as u64) << 32
}

impl SubmissionEntry {
    /// CDW10.
    pub fn cdw10(&self) -> u32 {
        self.cdw[0]
    }

    /// CDW11.
    pub fn cdw11(&self) -> u32 {
        self.cdw[1]
    }

    /// CDW12.
    pub fn cdw12(&self) -> u32 {
        self.cdw[2]
    }

    /// Decodes an entry.
    pub fn parse(b: &[u8; SQE_BYTES as usize]) -> Self {
        SubmissionEntry {
            opcode: b[0],
            cid: u16::from_le_bytes([b[2], b[3]]),
            nsid: le32(b, 4),
            prp1: le64(b, 24),
            prp2: le64(b, 32),
            cdw: [
                le32(b, 40),
                le32(b, 44),
                le32(b, 48),
                le32(b, 52),
                le32(b, 56),
                le32(b, 60),
            ],
        }
    }

    /// Encodes the entry (PSDT 0: PRPs; no metadata pointer).
    pub fn to_bytes(&self) -> [u8; SQE_BYTES as usize] {
        let mut b = [0u8; SQE_BYTES as usize];
        b[0] = self.opcode;
        b[2..4].copy_from_slice(&self.cid.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        b[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        for (i, d) in self.cdw.iter().enumerate() {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b
    }
}

/// A completion status: status code type, status code and Do Not Retry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Status {
    /// Status code type (0 generic, 1 command specific, 2 media and data integrity).
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Status {
    const fn new(sct: u8, sc: u8) -> Self {
        Status {
            sct,
            sc,
            dnr: false,
        }
    }

    /// Successful Completion.
    pub const SUCCESS: Status = Status::new(0, 0x00);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status::new(0, 0x01);
    /// Invalid Field in Command (also: a transfer larger than MDTS).
    pub const INVALID_FIELD: Status = Status::new(0, 0x02);
    /// Data Transfer Error (a DMA that did not reach memory).
    pub const DATA_TRANSFER_ERROR: Status = Status::new(0, 0x04);
    /// Internal Error.
    pub const INTERNAL_ERROR: Status = Status::new(0, 0x06);
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: Status = Status::new(0, 0x08);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = Status::new(0, 0x0B);
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: Status = Status::new(0, 0x13);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = Status::new(0, 0x80);
    /// Completion Queue Invalid (command specific).
    pub const CQ_INVALID: Status = Status::new(1, 0x00);
    /// Invalid Queue Identifier (command specific).
    pub const INVALID_QUEUE_ID: Status = Status::new(1, 0x01);
    /// Invalid Queue Size (command specific).
    pub const INVALID_QUEUE_SIZE: Status = Status::new(1, 0x02);
    /// Asynchronous Event Request Limit Exceeded (command specific).
    pub const AER_LIMIT_EXCEEDED: Status = Status::new(1, 0x05);
    /// Invalid Interrupt Vector (command specific).
    pub const INVALID_VECTOR: Status = Status::new(1, 0x08);
    /// Invalid Log Page (command specific).
    pub const INVALID_LOG_PAGE: Status = Status::new(1, 0x09);
    /// Invalid Queue Deletion (command specific).
    pub const INVALID_QUEUE_DELETION: Status = Status::new(1, 0x0C);
    /// Write Fault (media error).
    pub const WRITE_FAULT: Status = Status::new(2, 0x80);
    /// Unrecovered Read Error (media error).
    pub const UNRECOVERED_READ_ERROR: Status = Status::new(2, 0x81);

    /// The same status with Do Not Retry set.
    pub const fn dnr(self) -> Self {
        Status { dnr: true, ..self }
    }

    /// `(sct, sc)`, for comparisons that ignore Do Not Retry.
    pub const fn code(self) -> (u8, u8) {
        (self.sct, self.sc)
    }

    /// Whether this is Successful Completion.
    pub const fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 15-bit status field (completion DW3 bits 31:17).
    pub const fn field(self) -> u16 {
        self.sc as u16 | ((self.sct as u16 & 7) << 8) | if self.dnr { 1 << 14 } else { 0 }
    }

    /// Decodes a status field.
    pub const fn from_field(f: u16) -> Self {
        Status {
            sc: f as u8,
            sct: ((f >> 8) & 7) as u8,
            dnr: f & (1 << 14) != 0,
        }
    }
}

/// A completion queue entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompletionEntry {
    /// Command-specific DW0.
    pub dw0: u32,
    /// Submission queue head pointer when it was posted.
    pub sq_head: u16,
    /// Submission queue it came from.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag.
    pub phase: bool,
    /// Status.
    pub status: Status,
}

impl CompletionEntry {
    /// Encodes the entry.
    pub fn to_bytes(&self) -> [u8; CQE_BYTES as usize] {
        let mut b = [0u8; CQE_BYTES as usize];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[8..10].copy_from_slice(&self.sq_head.to_le_bytes());
        b[10..12].copy_from_slice(&self.sq_id.to_le_bytes());
        let dw3 = self.cid as u32 | (self.phase as u32) << 16 | (self.status.field() as u32) << 17;
        b[12..16].copy_from_slice(&dw3.to_le_bytes());
        b
    }

    /// Decodes an entry.
    pub fn parse(b: &[u8; CQE_BYTES as usize]) -> Self {
        let dw3 = le32(b, 12);
        CompletionEntry {
            dw0: le32(b, 0),
            sq_head: u16::from_le_bytes([b[8], b[9]]),
            sq_id: u16::from_le_bytes([b[10], b[11]]),
            cid: dw3 as u16,
            phase: dw3 & (1 << 16) != 0,
            status: Status::from_field((dw3 >> 17) as u16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let s = SubmissionEntry {
            opcode: nvm::WRITE,
            cid: 0xBEEF,
            nsid: 1,
            prp1: 0x1234_5000,
            prp2: 0xFFFF_0000_1000,
            cdw: [1, 2, 3, 4, 5, 6],
        };
        assert_eq!(SubmissionEntry::parse(&s.to_bytes()), s);
        let c = CompletionEntry {
            dw0: 7,
            sq_head: 3,
            sq_id: 2,
            cid: 0xBEEF,
            phase: true,
            status: Status::LBA_OUT_OF_RANGE.dnr(),
        };
        assert_eq!(CompletionEntry::parse(&c.to_bytes()), c);
        let dw3 = u32::from_le_bytes(c.to_bytes()[12..16].try_into().unwrap());
        assert_eq!(dw3 >> 31, 1, "DNR is the top bit");
        assert_eq!((dw3 >> 17) & 0xFF, 0x80);
        assert_eq!(Status::INVALID_QUEUE_ID.field(), 0x101);
    }
}
