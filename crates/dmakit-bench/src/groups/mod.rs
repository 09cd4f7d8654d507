//! Benchmark groups, one file each.

pub mod range;
