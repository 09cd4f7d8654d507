//! `edu`'s BAR0 registers, as QEMU's `hw/misc/edu.c` (and `docs/specs/edu.rst`) define
//! them.
//!
//! | offset | register |
//! | --- | --- |
//! | [`ID`] `0x00` | identification `0xMMmm00ed` (major, minor, `ed`) |
//! | [`LIVENESS`] `0x04` | reads back the bitwise inverse of what was written |
//! | [`IRQ_STATUS`] `0x24` | interrupt status |
//! | [`IRQ_RAISE`] `0x60` | interrupt raise: ORs the value into the status and signals |
//! | [`IRQ_ACK`] `0x64` | interrupt acknowledge: clears the bits written |
//! | [`DMA_SRC`] / [`DMA_DST`] / [`DMA_COUNT`] `0x80` / `0x88` / `0x90` | DMA source, destination, count (64-bit) |
//! | [`DMA_CMD`] `0x98` | DMA command: [`CMD_START`] (clears when done), [`CMD_TO_RAM`] (direction), [`CMD_IRQ`] (raise [`IRQ_DMA`] when done) |
//!
//! Registers below `0x80` take 32-bit accesses only; the DMA registers 32- or 64-bit ones.

/// Identification (read-only).
pub const ID: u64 = 0x00;
/// The identification register's low byte.
pub const ID_MAGIC: u32 = 0xed;
/// Liveness check.
pub const LIVENESS: u64 = 0x04;
/// Interrupt status (read-only).
pub const IRQ_STATUS: u64 = 0x24;
/// Interrupt raise (write-only).
pub const IRQ_RAISE: u64 = 0x60;
/// Interrupt acknowledge (write-only).
pub const IRQ_ACK: u64 = 0x64;
/// DMA source address.
pub const DMA_SRC: u64 = 0x80;
/// DMA destination address.
pub const DMA_DST: u64 = 0x88;
/// DMA byte count.
pub const DMA_COUNT: u64 = 0x90;
/// DMA command.
pub const DMA_CMD: u64 = 0x98;
/// DMA command: start (reads back set while the engine runs).
pub const CMD_START: u32 = 0x1;
/// DMA command: device → RAM (clear: RAM → device).
pub const CMD_TO_RAM: u32 = 0x2;
/// DMA command: raise [`IRQ_DMA`] when done.
pub const CMD_IRQ: u32 = 0x4;
/// The interrupt status bit of a finished DMA.
pub const IRQ_DMA: u32 = 0x100;
