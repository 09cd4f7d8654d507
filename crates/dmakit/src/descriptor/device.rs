//! `DeviceMemory`: physical ranges of device memory (IOKit's IODeviceMemory).
//!
//! As in IOKit it is not a type of its own at run time: [`device_memory`] builds a
//! physical [`GeneralMemoryDescriptor`] with direction `None`, and
//! [`device_sub_range`] a [`SubMemoryDescriptor`] of one; [`device_memory_list`] builds one
//! per range of a list. Registers inside are reached with
//! [`mapped_read*`/`mapped_write*`](crate::map::io) at the addresses its
//! [`physical_segment`](super::MemoryDescriptor::physical_segment) returns.

use super::{GeneralMemoryDescriptor, MemoryDescriptor, SubMemoryDescriptor};
use crate::platform::Platform;
use crate::{Direction, PhysAddr, Result};
use alloc_crate::sync::Arc;
use alloc_crate::vec::Vec;

/// The descriptor IOKit calls IODeviceMemory.
pub type DeviceMemory<P> = GeneralMemoryDescriptor<P>;

/// `IODeviceMemory::withRange(start, length)`: `length` bytes of device memory at `start`.
///
/// A `length` of 0 is an empty descriptor, as in IOKit; a range past the end of the address
/// space is [`Error::Overflow`](crate::Error::Overflow).
///
/// IOKit builds it with `kIOMemoryMapperNone`, so its `getPhysicalSegment` gives CPU
/// physical addresses even behind a system IOMMU. dmakit descriptors never go through a
/// mapper of their own ([`physical_segment`](super::MemoryDescriptor::physical_segment)
/// is always the CPU physical address); a [`DmaCommand`](crate::dma::DmaCommand) built
/// with a mapper maps the range for a device, as an IODMACommand with a mapper does.
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

/// `IODeviceMemory::withSubRange(of, offset, length)`: a window of direction `None` on
/// `of`; a window that does not lie inside `of` is
/// [`Error::OutOfBounds`](crate::Error::OutOfBounds) (IOKit returns NULL, except that its
/// check adds `offset + length` without overflow detection, so an offset near 2^64 passes
/// it and describes memory outside `of`; dmakit refuses that too).
pub fn device_sub_range(
    of: Arc<dyn MemoryDescriptor>,
    offset: u64,
    length: u64,
) -> Result<SubMemoryDescriptor> {
    SubMemoryDescriptor::new(of, offset, length, Direction::None)
}

/// One range for [`device_memory_list`] (IOKit's `IODeviceMemory::InitElement`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRange {
    /// Physical start.
    pub start: PhysAddr,
    /// Bytes.
    pub length: u64,
    /// The caller's tag for the range (IOKit sets it with `setTag`).
    pub tag: u32,
}

/// `IODeviceMemory::arrayFromList(list, count)`: a [`device_memory`] descriptor for each
/// range of `list`, in order, each beside its tag.
///
/// As in IOKit it is all or nothing: the first range that cannot be described fails the
/// call with its error (which names the range's start and length), and the descriptors
/// already built are dropped. An empty list is an empty array.
///
/// ```
/// use dmakit::descriptor::{device_memory_list, DeviceRange, MemoryDescriptor};
/// use dmakit::{Error, PhysAddr};
/// let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// let ranges = [
///     DeviceRange { start: PhysAddr(0xFE00_0000), length: 0x1000, tag: 1 },
///     DeviceRange { start: PhysAddr(0xFE10_0000), length: 0x100, tag: 7 },
/// ];
/// let list = device_memory_list(machine.clone(), &ranges)?;
/// assert_eq!(list.len(), 2);
/// assert_eq!((list[1].0, list[1].1.length()), (7, 0x100));
/// let past_the_end = DeviceRange { start: PhysAddr(u64::MAX), length: 2, tag: 3 };
/// let bad = device_memory_list(machine, &[ranges[0], past_the_end]);
/// assert!(matches!(bad, Err(Error::Overflow { .. })));
/// # Ok::<(), dmakit::Error>(())
/// ```
pub fn device_memory_list<P: Platform + Clone>(
    platform: P,
    list: &[DeviceRange],
) -> Result<Vec<(u32, DeviceMemory<P>)>> {
    list.iter()
        .map(|r| Ok((r.tag, device_memory(platform.clone(), r.start, r.length)?)))
        .collect()
}
