//! Shared pieces of dmakit's fuzz targets: numbers biased towards the edges of `u64`, the
//! interval model of a range allocator, descriptor shapes with their byte oracle, and an
//! independent checker of DMA segments against a `SegmentSpec`.

pub mod intervals;
pub mod num;
pub mod segments;
pub mod shapes;
