//! Benchmark groups, one file each.

pub mod descriptor;
pub mod range;
