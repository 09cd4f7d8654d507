//! `DeviceMemory`: physical ranges of device memory (IOKit's IODeviceMemory).
//!
//! As in IOKit it is not a type of its own at run time: [`device_memory`] builds a
//! physical [`GeneralMemoryDescriptor`] with direction `None`, and
//! [`device_sub_range`] a [`SubMemoryDescriptor`] of one. Registers inside are reached with
//! [`mapped_read*`/`mapped_write*`](crate::map::io) at the addresses its
//! [`physical_segment`](super::MemoryDescriptor::physical_segment) returns.

use super::{GeneralMemoryDescriptor, MemoryDescriptor, SubMemoryDescriptor};
use crate::platform::Platform;
use crate::{Direction, Error, PhysAddr, Result};
use alloc_crate::sync::Arc;

/// The descriptor IOKit calls IODeviceMemory.
pub type DeviceMemory<P> = GeneralMemoryDescriptor<P>;

/// `IODeviceMemory::withRange(start, length)`: `length` bytes of device memory at `start`.
pub fn device_memory<P: Platform>(
    platform: P,
    start: PhysAddr,
    length: u64,
) -> Result<DeviceMemory<P>> {
    if length == 0 {
        return Err(Error::ZeroSize {
            what: "device memory range",
        });
    }
    GeneralMemoryDescriptor::with_physical_ranges(platform, &[(start, length)], Direction::None)
}

/// `IODeviceMemory::withSubRange(of, offset, length)`.
pub fn device_sub_range(
    of: Arc<dyn MemoryDescriptor>,
    offset: u64,
    length: u64,
) -> Result<SubMemoryDescriptor> {
    SubMemoryDescriptor::new(of, offset, length, Direction::None)
}
