//! The engine's hardware: [`DmaEngineDevice`], the device model behind the MMIO window.
//!
//! Everything here is what a datasheet would say; the driver in the parent module knows the
//! device only through these registers and the descriptor format (see the tables in the
//! [module documentation](super)).

use crate::{Machine, SimIommu};
use dmakit::dma::InterruptSink;
use dmakit::platform::Width;
use dmakit::{Error, IoAddr, PhysAddr, Result};
use std::sync::{Arc, Weak};

use crate::mmio::MmioDevice;

/// Register offsets in the engine's MMIO window (all 32 bits wide, little-endian).
pub mod regs {
    /// `ID` (RO): reads [`ID_VALUE`].
    pub const ID: u64 = 0x00;
    /// `CONTROL` (RW): [`CTRL_ENABLE`], [`CTRL_RESET`], [`CTRL_IRQ_ENABLE`], [`CTRL_PAUSE`],
    /// [`CTRL_ABORT`].
    pub const CONTROL: u64 = 0x04;
    /// `STATUS` (RO, error bits write-1-to-clear): [`STATUS_BUSY`], [`STATUS_HALTED`],
    /// [`STATUS_ERR_SRC`], [`STATUS_ERR_DST`], [`STATUS_ERR_RING`], [`STATUS_ERR_CONFIG`],
    /// [`STATUS_IOMMU`].
    pub const STATUS: u64 = 0x08;
    /// `RING_SIZE` (RW while disabled): slots in the ring, a power of two in 1..=256.
    pub const RING_SIZE: u64 = 0x0C;
    /// `RING_BASE_LO` (RW while disabled): low 32 bits of the ring's device address.
    pub const RING_BASE_LO: u64 = 0x10;
    /// `RING_BASE_HI` (RW while disabled): high 32 bits of the ring's device address.
    pub const RING_BASE_HI: u64 = 0x14;
    /// `HEAD` (RO, device-owned): free-running count of descriptors the device finished.
    pub const HEAD: u64 = 0x18;
    /// `TAIL` (RW, the doorbell): free-running count of descriptors the driver queued.
    pub const TAIL: u64 = 0x1C;
    /// `INT_STATUS` (RW1C): [`INT_DONE`], [`INT_ERROR`].
    pub const INT_STATUS: u64 = 0x20;
    /// `COMPLETED` (RO): transfers (descriptor chains) finished since reset, wrapping.
    pub const COMPLETED: u64 = 0x24;
    /// `FAULT_ADDR_LO` (RO): low 32 bits of the address of the last fault.
    pub const FAULT_ADDR_LO: u64 = 0x28;
    /// `FAULT_ADDR_HI` (RO): high 32 bits of the address of the last fault.
    pub const FAULT_ADDR_HI: u64 = 0x2C;
    /// Bytes of register space the window needs.
    pub const WINDOW_BYTES: u64 = 0x1000;

    /// What `ID` reads: "DMA" and version 1.
    pub const ID_VALUE: u32 = 0x444D_4101;

    /// `CONTROL.ENABLE`: the engine may fetch descriptors. Setting it checks the ring
    /// configuration; a bad one sets `STATUS.ERR_CONFIG` and leaves the bit clear.
    pub const CTRL_ENABLE: u32 = 1 << 0;
    /// `CONTROL.RESET` (self-clearing): every register back to its reset value.
    pub const CTRL_RESET: u32 = 1 << 1;
    /// `CONTROL.IRQ_ENABLE`: raise the interrupt line when `INT_STATUS` gains a bit.
    pub const CTRL_IRQ_ENABLE: u32 = 1 << 2;
    /// `CONTROL.PAUSE`: hold queued descriptors; clearing it processes them.
    pub const CTRL_PAUSE: u32 = 1 << 3;
    /// `CONTROL.ABORT` (self-clearing): complete every queued descriptor with
    /// [`ABORTED`](super::desc::ABORTED) without moving data.
    pub const CTRL_ABORT: u32 = 1 << 4;

    /// `STATUS.BUSY`: descriptors are queued and not yet finished (`HEAD != TAIL`).
    pub const STATUS_BUSY: u32 = 1 << 0;
    /// `STATUS.HALTED`: the ring itself could not be read or written back; only
    /// `CONTROL.RESET` restarts the engine.
    pub const STATUS_HALTED: u32 = 1 << 1;
    /// `STATUS.ERR_SRC` (W1C): a source read faulted.
    pub const STATUS_ERR_SRC: u32 = 1 << 8;
    /// `STATUS.ERR_DST` (W1C): a destination write faulted.
    pub const STATUS_ERR_DST: u32 = 1 << 9;
    /// `STATUS.ERR_RING` (W1C): a descriptor fetch or write-back faulted (with `HALTED`).
    pub const STATUS_ERR_RING: u32 = 1 << 10;
    /// `STATUS.ERR_CONFIG` (W1C): a register write was refused (ring registers while
    /// enabled, a bad ring size or base, a doorbell past the ring).
    pub const STATUS_ERR_CONFIG: u32 = 1 << 11;
    /// `STATUS.IOMMU` (W1C): the last fault was reported by the IOMMU (see its fault log).
    pub const STATUS_IOMMU: u32 = 1 << 12;
    /// The write-1-to-clear bits of `STATUS`.
    pub const STATUS_W1C: u32 =
        STATUS_ERR_SRC | STATUS_ERR_DST | STATUS_ERR_RING | STATUS_ERR_CONFIG | STATUS_IOMMU;

    /// `INT_STATUS.DONE`: a descriptor with `IRQ` set finished.
    pub const INT_DONE: u32 = 1 << 0;
    /// `INT_STATUS.ERROR`: a fault or a halt.
    pub const INT_ERROR: u32 = 1 << 1;

    /// The largest `RING_SIZE`.
    pub const MAX_RING_SIZE: u32 = 256;
}

/// The descriptor format: 64 bytes (one cache line), 64-byte aligned, little-endian.
pub mod desc {
    /// Bytes per descriptor.
    pub const SIZE: u64 = 64;
    /// `u64` source device address.
    pub const SRC: usize = 0x00;
    /// `u64` destination device address.
    pub const DST: usize = 0x08;
    /// `u32` bytes to move (1..=[`MAX_LEN`]).
    pub const LEN: usize = 0x10;
    /// `u32` [`FLAG_CHAIN`], [`FLAG_IRQ`].
    pub const FLAGS: usize = 0x14;
    /// `u64` the driver's ticket; the device never reads or writes it.
    pub const TICKET: usize = 0x18;
    /// `u32` written back: [`DONE`] and a completion code in bits 7:0, [`VIA_IOMMU`].
    pub const STATUS: usize = 0x20;
    /// `u32` written back: bytes moved.
    pub const DONE_BYTES: usize = 0x24;
    /// `u64` written back: the faulting address, when the code is a fault.
    pub const FAULT_ADDR: usize = 0x28;
    /// The write-back area: `STATUS`, `DONE_BYTES`, `FAULT_ADDR`.
    pub const WRITEBACK: core::ops::Range<usize> = 0x20..0x30;

    /// The most bytes one descriptor moves.
    pub const MAX_LEN: u32 = 0x8000_0000;

    /// `FLAGS.CHAIN`: the next descriptor continues this transfer.
    pub const FLAG_CHAIN: u32 = 1 << 0;
    /// `FLAGS.IRQ`: set `INT_STATUS.DONE` when this descriptor finishes (the driver sets it
    /// on the last descriptor of a transfer).
    pub const FLAG_IRQ: u32 = 1 << 1;

    /// `STATUS.DONE`: the device has written this descriptor back.
    pub const DONE: u32 = 1 << 31;
    /// `STATUS.VIA_IOMMU`: the fault was reported by the IOMMU.
    pub const VIA_IOMMU: u32 = 1 << 8;
    /// Mask of the completion code in `STATUS`.
    pub const CODE_MASK: u32 = 0xFF;
    /// Code: all bytes moved.
    pub const OK: u32 = 0;
    /// Code: reading the source faulted at `FAULT_ADDR`.
    pub const SRC_FAULT: u32 = 1;
    /// Code: writing the destination faulted at `FAULT_ADDR`.
    pub const DST_FAULT: u32 = 2;
    /// Code: `CONTROL.ABORT` completed it before it was processed.
    pub const ABORTED: u32 = 3;
    /// Code: an earlier descriptor of the same chain failed, so this one was not processed.
    pub const SKIPPED: u32 = 4;
    /// Code: the descriptor is malformed (zero or oversized length).
    pub const BAD_DESCRIPTOR: u32 = 5;
}

use regs::*;

/// The engine's hardware, as a device model for an MMIO window.
///
/// It reaches memory like a bus master: physical addresses through the machine's DRAM
/// ([`Machine::device_read`], bypassing the CPU cache), or IO addresses through a
/// [`SimIommu`]. It holds the machine, the IOMMU and the interrupt line weakly, so the
/// machine → window → device references never form a cycle; an access after either is gone
/// is a bus error.
///
/// Processing is synchronous: the store to `TAIL` (or to `CONTROL` that un-pauses or enables
/// the engine) processes every queued descriptor before the store returns, and the interrupt
/// line is raised from inside that store, as from an interrupt handler: an
/// [`InterruptSink`] must only signal (as [`DmaEventSource`](dmakit::dma::DmaEventSource)
/// does), never call back into the driver.
pub struct DmaEngineDevice {
    machine: Weak<Machine>,
    iommu: Option<Weak<SimIommu>>,
    irq: Option<Weak<dyn InterruptSink>>,
    control: u32,
    status: u32,
    ring_size: u32,
    ring_base: u64,
    head: u32,
    tail: u32,
    int_status: u32,
    completed: u32,
    fault_addr: u64,
    /// Inside a chain whose earlier descriptor failed: skip until its last descriptor.
    chain_failed: bool,
    descriptors: u64,
    bytes_moved: u64,
}

/// Where a device access went wrong.
struct Fault {
    addr: u64,
    iommu: bool,
}

/// The fields of a descriptor the engine acts on.
struct Descriptor {
    src: u64,
    dst: u64,
    len: u32,
    flags: u32,
}

impl Descriptor {
    /// Decodes a descriptor as read from the ring (little-endian).
    fn parse(d: &[u8; desc::SIZE as usize]) -> Self {
        let word = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap_or([0; 4]));
        let dword = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap_or([0; 8]));
        Descriptor {
            src: dword(desc::SRC),
            dst: dword(desc::DST),
            len: word(desc::LEN),
            flags: word(desc::FLAGS),
        }
    }
}

impl DmaEngineDevice {
    /// An engine on `machine`, a bus master through `iommu` when given (descriptor and data
    /// addresses are then IO addresses) or on physical addresses otherwise. Registers hold
    /// their reset values.
    pub fn new(machine: &Arc<Machine>, iommu: Option<&Arc<SimIommu>>) -> Self {
        DmaEngineDevice {
            machine: Arc::downgrade(machine),
            iommu: iommu.map(Arc::downgrade),
            irq: None,
            control: 0,
            status: 0,
            ring_size: 0,
            ring_base: 0,
            head: 0,
            tail: 0,
            int_status: 0,
            completed: 0,
            fault_addr: 0,
            chain_failed: false,
            descriptors: 0,
            bytes_moved: 0,
        }
    }

    /// Wires the interrupt line to `sink` (board wiring, not a register). Held weakly.
    pub fn connect(&mut self, sink: &Arc<dyn InterruptSink>) {
        self.irq = Some(Arc::downgrade(sink));
    }

    /// Descriptors processed (including failed, skipped and aborted ones) since creation.
    pub fn descriptors_processed(&self) -> u64 {
        self.descriptors
    }

    /// Bytes moved since creation.
    pub fn bytes_moved(&self) -> u64 {
        self.bytes_moved
    }

    fn reset(&mut self) {
        self.control = 0;
        self.status = 0;
        self.ring_size = 0;
        self.ring_base = 0;
        self.head = 0;
        self.tail = 0;
        self.int_status = 0;
        self.completed = 0;
        self.fault_addr = 0;
        self.chain_failed = false;
    }

    fn enabled(&self) -> bool {
        self.control & CTRL_ENABLE != 0
    }

    fn running(&self) -> bool {
        self.enabled() && self.control & CTRL_PAUSE == 0 && self.status & STATUS_HALTED == 0
    }

    fn config_ok(&self) -> bool {
        self.ring_size.is_power_of_two()
            && self.ring_size <= MAX_RING_SIZE
            && self.ring_base.is_multiple_of(desc::SIZE)
            && self
                .ring_base
                .checked_add(self.ring_size as u64 * desc::SIZE)
                .is_some()
    }

    fn slot_addr(&self, index: u32) -> u64 {
        self.ring_base + (index & (self.ring_size - 1)) as u64 * desc::SIZE
    }

    fn iommu_faults(&self) -> usize {
        self.iommu
            .as_ref()
            .and_then(Weak::upgrade)
            .map_or(0, |i| i.fault_count())
    }

    fn bus_read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let gone = Error::NotMapped {
            what: "DMA engine bus (the machine or IOMMU is gone)",
            addr,
        };
        match &self.iommu {
            Some(w) => w.upgrade().ok_or(gone)?.device_read(IoAddr(addr), buf),
            None => self
                .machine
                .upgrade()
                .ok_or(gone)?
                .device_read(PhysAddr(addr), buf),
        }
    }

    fn bus_write(&self, addr: u64, data: &[u8]) -> Result<()> {
        let gone = Error::NotMapped {
            what: "DMA engine bus (the machine or IOMMU is gone)",
            addr,
        };
        match &self.iommu {
            Some(w) => w.upgrade().ok_or(gone)?.device_write(IoAddr(addr), data),
            None => self
                .machine
                .upgrade()
                .ok_or(gone)?
                .device_write(PhysAddr(addr), data),
        }
    }

    /// A bus access, with the fault it caused (if any) named by address and origin.
    fn access(&self, addr: u64, f: impl FnOnce(&Self) -> Result<()>) -> Option<Fault> {
        let before = self.iommu_faults();
        match f(self) {
            Ok(()) => None,
            Err(_) => Some(Fault {
                addr,
                iommu: self.iommu_faults() > before,
            }),
        }
    }

    /// Raises the line if interrupts are enabled.
    fn interrupt(&mut self, bits: u32) {
        self.int_status |= bits;
        if self.control & CTRL_IRQ_ENABLE == 0 {
            return;
        }
        if let Some(sink) = self.irq.as_ref().and_then(Weak::upgrade) {
            sink.raise();
        }
    }

    fn halt(&mut self, f: Fault) {
        self.status |= STATUS_HALTED | STATUS_ERR_RING;
        if f.iommu {
            self.status |= STATUS_IOMMU;
        }
        self.fault_addr = f.addr;
        self.interrupt(INT_ERROR);
    }

    /// Moves `len` bytes; returns the bytes moved and, on a fault, the code and the fault.
    /// Chunks never cross a 4 KiB boundary of either side, so the count and the fault
    /// address are exact.
    fn copy(&mut self, src: u64, dst: u64, len: u64) -> (u64, Option<(u32, Fault)>) {
        let mut buf = [0u8; 4096];
        let mut done = 0u64;
        while done < len {
            let (s, d) = (src.wrapping_add(done), dst.wrapping_add(done));
            let n = (len - done).min(4096 - s % 4096).min(4096 - d % 4096) as usize;
            if let Some(f) = self.access(s, |me| me.bus_read(s, &mut buf[..n])) {
                return (done, Some((desc::SRC_FAULT, f)));
            }
            if let Some(f) = self.access(d, |me| me.bus_write(d, &buf[..n])) {
                return (done, Some((desc::DST_FAULT, f)));
            }
            done += n as u64;
            self.bytes_moved += n as u64;
        }
        (done, None)
    }

    /// Fetches, carries out (or, with `abort`, aborts) and writes back the descriptor at
    /// `HEAD`. Returns false if the engine halted.
    fn step(&mut self, abort: bool) -> bool {
        let at = self.slot_addr(self.head);
        let Some(d) = self.fetch_descriptor(at) else {
            return false;
        };
        let (code, moved, fault) = self.carry_out(&d, abort);
        let status = self.note_outcome(code, fault.as_ref());
        if !self.write_back(at, status, moved, fault.as_ref()) {
            return false;
        }
        self.advance(d.flags, code);
        true
    }

    /// Reads the descriptor at `at`; halts the engine (and gives `None`) if that faults.
    fn fetch_descriptor(&mut self, at: u64) -> Option<Descriptor> {
        let mut d = [0u8; desc::SIZE as usize];
        if let Some(f) = self.access(at, |me| me.bus_read(at, &mut d)) {
            self.halt(f);
            return None;
        }
        Some(Descriptor::parse(&d))
    }

    /// Carries out `d`, or completes it unprocessed when aborting, when its chain already
    /// failed or when it is malformed: the completion code, the bytes moved and the fault.
    fn carry_out(&mut self, d: &Descriptor, abort: bool) -> (u32, u64, Option<Fault>) {
        if abort {
            (desc::ABORTED, 0, None)
        } else if self.chain_failed {
            (desc::SKIPPED, 0, None)
        } else if d.len == 0 || d.len > desc::MAX_LEN {
            (desc::BAD_DESCRIPTOR, 0, None)
        } else {
            match self.copy(d.src, d.dst, d.len as u64) {
                (n, None) => (desc::OK, n, None),
                (n, Some((code, f))) => (code, n, Some(f)),
            }
        }
    }

    /// Records a descriptor's failure in `STATUS` and `FAULT_ADDR`; returns the status word
    /// to write back into the descriptor.
    fn note_outcome(&mut self, code: u32, fault: Option<&Fault>) -> u32 {
        let mut status = desc::DONE | code;
        if let Some(f) = fault {
            self.status |= if code == desc::SRC_FAULT {
                STATUS_ERR_SRC
            } else {
                STATUS_ERR_DST
            };
            if f.iommu {
                self.status |= STATUS_IOMMU;
                status |= desc::VIA_IOMMU;
            }
            self.fault_addr = f.addr;
        }
        if code == desc::BAD_DESCRIPTOR {
            self.status |= STATUS_ERR_CONFIG;
        }
        status
    }

    /// Writes `status`, the bytes moved and the fault address into the descriptor at `at`;
    /// halts the engine (and gives false) if that faults.
    fn write_back(&mut self, at: u64, status: u32, moved: u64, fault: Option<&Fault>) -> bool {
        let mut wb = [0u8; 16];
        wb[0..4].copy_from_slice(&status.to_le_bytes());
        wb[4..8].copy_from_slice(&(moved as u32).to_le_bytes());
        wb[8..16].copy_from_slice(&fault.map_or(0, |f| f.addr).to_le_bytes());
        let wb_at = at + desc::STATUS as u64;
        if let Some(f) = self.access(wb_at, |me| me.bus_write(wb_at, &wb)) {
            self.halt(f);
            return false;
        }
        true
    }

    /// Moves `HEAD` past a written-back descriptor with these `flags` and completion `code`:
    /// counts it, tracks its chain and raises the interrupts it calls for.
    fn advance(&mut self, flags: u32, code: u32) {
        self.descriptors += 1;
        self.head = self.head.wrapping_add(1);
        // A skipped or aborted descriptor is not a new error: the chain's first failure (or
        // the abort) already said so.
        let error = code != desc::OK && code != desc::SKIPPED && code != desc::ABORTED;
        let mut bits = if error { INT_ERROR } else { 0 };
        if flags & desc::FLAG_CHAIN != 0 {
            self.chain_failed |= code != desc::OK;
        } else {
            self.chain_failed = false;
            self.completed = self.completed.wrapping_add(1);
            if flags & desc::FLAG_IRQ != 0 {
                bits |= INT_DONE;
            }
        }
        if bits != 0 {
            self.interrupt(bits);
        }
    }

    fn process(&mut self) {
        while self.running() && self.head != self.tail {
            if !self.step(false) {
                return;
            }
        }
    }

    fn abort(&mut self) {
        if self.status & STATUS_HALTED != 0 || !self.config_ok() {
            return;
        }
        while self.head != self.tail {
            if !self.step(true) {
                return;
            }
        }
    }

    fn write_control(&mut self, value: u32) {
        if value & CTRL_RESET != 0 {
            self.reset();
            return;
        }
        let was_enabled = self.enabled();
        let keep = CTRL_ENABLE | CTRL_IRQ_ENABLE | CTRL_PAUSE;
        self.control = value & keep;
        if !was_enabled && self.enabled() && !self.config_ok() {
            self.control &= !CTRL_ENABLE;
            self.status |= STATUS_ERR_CONFIG;
        }
        if value & CTRL_ABORT != 0 {
            self.abort();
        }
        self.process();
    }

    fn write_ring_register(&mut self, offset: u64, value: u32) {
        if self.enabled() {
            self.status |= STATUS_ERR_CONFIG;
            return;
        }
        match offset {
            RING_SIZE => self.ring_size = value,
            RING_BASE_LO => self.ring_base = (self.ring_base & !0xFFFF_FFFF) | value as u64,
            _ => self.ring_base = (self.ring_base & 0xFFFF_FFFF) | ((value as u64) << 32),
        }
    }

    fn write_tail(&mut self, value: u32) {
        if value.wrapping_sub(self.head) > self.ring_size {
            self.status |= STATUS_ERR_CONFIG;
            return;
        }
        self.tail = value;
        self.process();
    }

    fn read32(&self, offset: u64) -> u32 {
        match offset {
            ID => ID_VALUE,
            CONTROL => self.control,
            STATUS => {
                self.status
                    | if self.head != self.tail {
                        STATUS_BUSY
                    } else {
                        0
                    }
            }
            RING_SIZE => self.ring_size,
            RING_BASE_LO => self.ring_base as u32,
            RING_BASE_HI => (self.ring_base >> 32) as u32,
            HEAD => self.head,
            TAIL => self.tail,
            INT_STATUS => self.int_status,
            COMPLETED => self.completed,
            FAULT_ADDR_LO => self.fault_addr as u32,
            FAULT_ADDR_HI => (self.fault_addr >> 32) as u32,
            _ => 0,
        }
    }
}

impl MmioDevice for DmaEngineDevice {
    fn name(&self) -> &str {
        "dma-engine"
    }

    /// 32-bit loads at 4-aligned offsets read the registers; other widths read zero.
    fn read(&mut self, offset: u64, width: Width) -> u64 {
        if width != Width::W32 {
            return 0;
        }
        self.read32(offset) as u64
    }

    /// 32-bit stores at 4-aligned offsets write the registers; other widths are dropped.
    fn write(&mut self, offset: u64, width: Width, value: u64) {
        if width != Width::W32 {
            return;
        }
        let value = value as u32;
        match offset {
            CONTROL => self.write_control(value),
            STATUS => self.status &= !(value & STATUS_W1C),
            RING_SIZE | RING_BASE_LO | RING_BASE_HI => self.write_ring_register(offset, value),
            TAIL => self.write_tail(value),
            INT_STATUS => self.int_status &= !value,
            _ => {}
        }
    }
}

impl std::fmt::Debug for DmaEngineDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaEngineDevice")
            .field("control", &format_args!("{:#x}", self.control))
            .field("status", &format_args!("{:#x}", self.status))
            .field("ring_base", &format_args!("{:#x}", self.ring_base))
            .field("ring_size", &self.ring_size)
            .field("head", &self.head)
            .field("tail", &self.tail)
            .field("descriptors", &self.descriptors)
            .finish()
    }
}
