//! `DeviceMemory`: physical ranges of device memory (IOKit's IODeviceMemory).
//!
//! As in IOKit it is not a type of its own at run time: [`device_memory`] builds a
//! physical [`GeneralMemoryDescriptor`] with direction `None`, and
//! [`device_sub_range`] a [`SubMemoryDescriptor`] of one. Registers inside are reached with
//! [`mapped_read*`/`mapped_write*`](crate::map::io) at the addresses its
//! [`physical_segment`](super::MemoryDescriptor::physical_segment) returns.

use super::{GeneralMemoryDescriptor, MemoryDescriptor, SubMemoryDescriptor};
use crate::platform::Platform;
use crate::{Direction, PhysAddr, Result};
use alloc_crate::sync::Arc;

/// The descriptor IOKit calls IODeviceMemory.
pub type DeviceMemory<P> = GeneralMemoryDescriptor<P>;

/// `IODeviceMemory::withRange(start, length)`: `length` bytes of device memory at `start`.
///
/// A `length` of 0 is an empty descriptor, as in IOKit; a range past the end of the address
/// space is [`Error::Overflow`](crate::Error::Overflow).
///
/// ```
/// use dmakit::descriptor::{device_memory, device_sub_range, MemoryDescriptor};
/// use dmakit::map::mapped_read32;
/// use dmakit::PhysAddr;
/// use dmakit_sim::{MachineBuilder, ScratchDevice};
/// use std::sync::{Arc, Mutex};
///
/// // A register block at 0xFE00_0000 whose first register reads 0x1234_5678.
/// let regs = Arc::new(Mutex::new(ScratchDevice::new(0x1234_5678, 0x100)));
/// let machine = Arc::new(MachineBuilder::new().mmio(0xFE00_0000, 0x1000, regs).build()?);
/// let bar: Arc<dyn MemoryDescriptor> = Arc::new(device_memory(machine.clone(), PhysAddr(0xFE00_0000), 0x1000)?);
/// let id = bar.physical_segment(0)?.addr;
/// assert_eq!(mapped_read32(&*machine, id)?, 0x1234_5678);
/// // A window on the second half of the block.
/// let upper = device_sub_range(bar, 0x800, 0x800)?;
/// assert_eq!(upper.physical_segment(0)?.addr, PhysAddr(0xFE00_0800));
/// # Ok::<(), dmakit::Error>(())
/// ```
pub fn device_memory<P: Platform>(
    platform: P,
    start: PhysAddr,
    length: u64,
) -> Result<DeviceMemory<P>> {
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
