//! # dmakit-baremetal — dmakit in your own x86-64 kernel
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod frames;
pub mod paging;
pub mod pci;
mod platform;
mod ranges;
mod sys;
pub mod time;

pub use frames::{FrameAllocator, Placement};
pub use time::TscClock;
pub use platform::{BareMetal, BareMetalConfig, Usage, DEFAULT_AREA};
