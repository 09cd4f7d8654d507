//! DMA: how a device sees memory.
//!
//! * [`format`]: `SegmentFormat`, the six IOKit segment layouts
//!   (host, big and little endian × 32 and 64 bit) a device reads its scatter list in;
//! * [`spec`]: `SegmentSpec`, one validated value for every constraint
//!   a device and its bus put on DMA segments;
//! * [`cursor`]: the legacy IOMemoryCursor family, which cuts a descriptor into physical
//!   segments under a maximum segment and transfer size.
//!
//! * [`command`]: `DmaCommand`, IODMACommand, with bounce buffering
//!   through a `BouncePool` and mapped mode through a
//!   [`Mapper`](crate::mapper::Mapper).
//!
//! * [`controller`]: the `DmaController` trait and `DmaEventSource`, which delivers
//!   completions in order.
//!
//! Typed ownership, quarantine and the dma-debug ledger come with the rest of issue 4.

pub mod bounce;
pub mod command;
pub mod controller;
pub mod cursor;
pub mod format;
pub mod spec;

pub use bounce::{BouncePool, BounceStats};
pub use command::{DmaCommand, MappingMode};
pub use controller::{DmaCompletion, DmaController, DmaEventSource, DmaTransfer, InterruptSink};
pub use cursor::{
    BigMemoryCursor, CursorOutput, LittleMemoryCursor, MemoryCursor, NaturalMemoryCursor,
    PhysicalSegment,
};
pub use format::{IoSegment, SegmentFormat};
pub use spec::SegmentSpec;
