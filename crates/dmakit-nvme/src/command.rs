//! NVMe submission and completion queue entries (NVM Express Base Specification 2.0,
//! §4.2 and §4.6), encoded and decoded as the little-endian bytes the controller reads.

/// Admin opcode: Delete I/O Submission Queue.
pub const ADMIN_DELETE_SQ: u8 = 0x00;
/// Admin opcode: Delete I/O Completion Queue.
pub const ADMIN_DELETE_CQ: u8 = 0x04;
/// Admin opcode: Create I/O Submission Queue.
pub const ADMIN_CREATE_SQ: u8 = 0x01;
/// Admin opcode: Create I/O Completion Queue.
pub const ADMIN_CREATE_CQ: u8 = 0x05;
/// Admin opcode: Identify.
pub const ADMIN_IDENTIFY: u8 = 0x06;
/// NVM opcode: Flush.
pub const NVM_FLUSH: u8 = 0x00;
/// NVM opcode: Write.
pub const NVM_WRITE: u8 = 0x01;
/// NVM opcode: Read.
pub const NVM_READ: u8 = 0x02;

/// A 64-byte submission queue entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// Command dwords 0–15.
    pub dw: [u32; 16],
}

impl Command {
    /// A command with `opcode` and namespace `nsid`.
    pub fn new(opcode: u8, nsid: u32) -> Command {
        let mut c = Command::default();
        c.dw[0] = opcode as u32;
        c.dw[1] = nsid;
        c
    }

    /// Sets the command identifier (DW0 bits 31:16).
    pub fn with_cid(mut self, cid: u16) -> Command {
        self.dw[0] = (self.dw[0] & 0xffff) | (cid as u32) << 16;
        self
    }

    /// PRP entries 1 and 2 (DW6–9).
    pub fn with_prps(mut self, prp1: u64, prp2: u64) -> Command {
        self.dw[6] = prp1 as u32;
        self.dw[7] = (prp1 >> 32) as u32;
        self.dw[8] = prp2 as u32;
        self.dw[9] = (prp2 >> 32) as u32;
        self
    }

    /// Command dword `n` (10–15).
    pub fn with_cdw(mut self, n: usize, value: u32) -> Command {
        self.dw[n] = value;
        self
    }

    /// The command identifier.
    pub fn cid(&self) -> u16 {
        (self.dw[0] >> 16) as u16
    }

    /// The 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        for (i, d) in self.dw.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        b
    }
}

/// A 16-byte completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Command specific (DW0).
    pub result: u32,
    /// Submission queue head pointer.
    pub sq_head: u16,
    /// Submission queue identifier.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag.
    pub phase: bool,
    /// Status field (status code type and code; 0 is success).
    pub status: u16,
}

impl Completion {
    /// Decodes 16 bytes.
    pub fn from_bytes(b: &[u8; 16]) -> Completion {
        let dw = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        let dw3 = dw(3);
        Completion {
            result: dw(0),
            sq_head: dw(2) as u16,
            sq_id: (dw(2) >> 16) as u16,
            cid: dw3 as u16,
            phase: dw3 & (1 << 16) != 0,
            status: ((dw3 >> 17) & 0x7fff) as u16,
        }
    }

    /// Status code type (bits 10:8 of the status field) and status code (bits 7:0).
    pub fn status_parts(&self) -> (u8, u8) {
        (((self.status >> 8) & 7) as u8, self.status as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_little_endian_with_cid_and_prps() {
        let c = Command::new(ADMIN_IDENTIFY, 0)
            .with_cid(0xbeef)
            .with_prps(0x1_2345_6000, 0)
            .with_cdw(10, 1);
        let b = c.to_bytes();
        assert_eq!(&b[0..4], &[0x06, 0, 0xef, 0xbe]);
        assert_eq!(&b[24..32], &0x1_2345_6000u64.to_le_bytes());
        assert_eq!(&b[40..44], &1u32.to_le_bytes());
        assert_eq!(c.cid(), 0xbeef);
    }

    #[test]
    fn completions_decode_phase_and_status() {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&7u32.to_le_bytes());
        b[8..12].copy_from_slice(&(3u32 | 1 << 16).to_le_bytes());
        // cid 0x42, phase 1, status: SCT 1, SC 0x0b (invalid queue identifier... for example)
        let dw3 = 0x42u32 | 1 << 16 | ((1u32 << 8 | 0x0b) << 17);
        b[12..16].copy_from_slice(&dw3.to_le_bytes());
        let c = Completion::from_bytes(&b);
        assert_eq!((c.result, c.sq_head, c.sq_id, c.cid), (7, 3, 1, 0x42));
        assert!(c.phase);
        assert_eq!(c.status_parts(), (1, 0x0b));
    }
}
