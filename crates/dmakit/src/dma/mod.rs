//! DMA: how a device sees memory.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
//! use dmakit::dma::{BouncePool, DmaCommand, PrepareOptions, SegmentFormat, SegmentSpec};
//! use dmakit::Direction;
//! use std::sync::Arc;
//! let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//!
//! // A device with 32 address bits reading a buffer that may lie above 4 GiB.
//! let spec = SegmentSpec::builder().address_bits(32).build()?;
//! let pool = Arc::new(BouncePool::new(machine.clone(), "dev0", 1 << 20));
//! let mut cmd = DmaCommand::builder(machine.clone())
//!     .spec(spec)
//!     .format(SegmentFormat::Little32)
//!     .bounce_pool(pool)
//!     .build()?;
//! cmd.set_memory_descriptor(Arc::new(BufferMemoryDescriptor::new(
//!     machine,
//!     BufferOptions::new(0x8000, Direction::Out),
//! )?))?;
//! cmd.prepare(PrepareOptions::new())?;
//! let mut list = [0u8; 8 * 16];
//! let mut offset = 0;
//! let n = cmd.gen_segments(&mut offset, &mut list)?; // what the device is told
//! for i in 0..n {
//!     let seg = SegmentFormat::Little32.read(&list, i)?;
//!     assert!(seg.addr.0 + seg.len <= 1 << 32);
//! }
//! cmd.complete()?;
//! # Ok::<(), dmakit::Error>(())
//! ```
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
//! * [`controller`]: the `DmaController` trait, `DmaEventSource`, which delivers
//!   completions in order (or waits for one, synchronously), and `DmaControllerRegistry`,
//!   where controllers are registered and found by name.
//!
//! * [`quarantine`]: `Quarantine`, where a dropped command's device-owned memory waits
//!   until the device is quiesced;
//! * [`owned`]: typed ownership: `CpuOwned` and `DeviceOwned` with the direction in the
//!   type, so CPU access to device-owned memory and wrong-direction syncs do not compile.

pub mod bounce;
pub mod command;
pub mod controller;
pub mod cursor;
pub mod format;
pub mod options;
pub mod owned;
pub mod quarantine;
pub mod spec;

pub use bounce::{BouncePool, BounceStats};
pub use command::{BounceReason, DmaCommand, DmaCommandBuilder, MappingMode, Segments};
pub use controller::{
    CompletionSource, DmaCompletion, DmaController, DmaControllerRegistry, DmaEventSource,
    DmaStart, DmaTransfer, InterruptSink, SharedController, SyncWait,
};
pub use cursor::{
    BigMemoryCursor, CursorOutput, LittleMemoryCursor, MemoryCursor, NaturalMemoryCursor,
    PhysicalSegment,
};
pub use format::{IoSegment, SegmentFormat};
pub use options::{CompleteOptions, Constraint, PrepareOptions};
pub use owned::{
    Bidirectional, CpuOwned, DeviceOwned, DeviceReads, DeviceWrites, DmaDirection, Failed,
    FromDevice, ToDevice, Transition,
};
pub use quarantine::Quarantine;
pub use spec::SegmentSpec;
