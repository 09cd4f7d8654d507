//! Benchmark groups, one file each.

pub mod descriptor;
pub mod dma;
pub mod range;
