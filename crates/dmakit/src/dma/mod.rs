//! DMA: how a device sees memory.
//!
//! * [`format`]: [`SegmentFormat`](format::SegmentFormat), the six IOKit segment layouts
//!   (host, big and little endian × 32 and 64 bit) a device reads its scatter list in;
//! * [`spec`]: [`SegmentSpec`](spec::SegmentSpec), one validated value for every constraint
//!   a device and its bus put on DMA segments;
//! * [`cursor`]: the legacy IOMemoryCursor family, which cuts a descriptor into physical
//!   segments under a maximum segment and transfer size.
//!
//! The DMA command, the IOMMU mapper, bounce buffering and the DMA controller come with the
//! rest of issue 4.

pub mod cursor;
pub mod format;
pub mod spec;

pub use cursor::{
    BigMemoryCursor, CursorOutput, LittleMemoryCursor, MemoryCursor, NaturalMemoryCursor,
    PhysicalSegment,
};
pub use format::{IoSegment, SegmentFormat};
pub use spec::SegmentSpec;
