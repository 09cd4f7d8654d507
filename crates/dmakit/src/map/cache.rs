//! `flush_processor_cache` (IOKit's `IOFlushProcessorCache`) and `set_processor_cache_mode`
//! (IOKit's `IOSetProcessorCacheMode`).
//!
//! Writes back and invalidates the CPU data cache for a kernel virtual range, so a device
//! that does not snoop the caches reads what the CPU wrote. On x86_64 Linux this is
//! `clflushopt` (or `clflush`) per line and a fence; on the simulated machine it cleans the
//! cache model. As in IOKit, only the kernel task is accepted: another task is
//! [`Error::Unsupported`]. DMA code should prefer prepare/complete with a non-coherent DMA
//! command, which does this at the right moments.
//!
//! ```
//! use dmakit::map::flush_processor_cache;
//! use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Task};
//! // Not coherent: devices read DRAM, not the CPU's cache.
//! let machine = dmakit_sim::MachineBuilder::new().build()?;
//!
//! let va = machine.allocate_pages(4096, &PageRequest::WIRED)?;
//! let pa = collect_runs(&machine, Task::KERNEL, va, 4096)?[0].addr;
//! machine.write_virt(Task::KERNEL, va, b"descriptor")?;
//! let mut dram = [0u8; 10];
//! machine.device_read(pa, &mut dram)?;
//! assert_eq!(dram, [0; 10], "still in the CPU cache");
//! flush_processor_cache(&machine, Task::KERNEL, va, 4096)?;
//! machine.device_read(pa, &mut dram)?;
//! assert_eq!(&dram, b"descriptor", "what a device reads now");
//! # machine.free_pages(va, 4096)?;
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::platform::{CacheMode, CacheOp, CacheOps, PhysicalMemory, Task, VirtualMemory};
use crate::{Error, Result, VirtAddr};

/// IOFlushProcessorCache: cleans and invalidates `[address, address + length)` of the kernel
/// task.
pub fn flush_processor_cache<P: CacheOps + ?Sized>(
    platform: &P,
    task: Task,
    address: VirtAddr,
    length: u64,
) -> Result<()> {
    if task != Task::KERNEL {
        return Err(Error::Unsupported {
            what: "flush_processor_cache of a task other than the kernel task (as in IOKit)",
        });
    }
    address.0.checked_add(length).ok_or(Error::Overflow {
        what: "flush_processor_cache range",
        start: address.0,
        len: length,
    })?;
    platform.cache_virt(CacheOp::Flush, task, address, length)
}

/// IOSetProcessorCacheMode: makes the CPU cache the pages of `[address, address + length)`
/// of the kernel task with `mode` from now on (each page is entered again with the new
/// attribute; its cached lines are written back and dropped first).
///
/// As in IOKit:
///
/// * a task other than the kernel task, or an `address` or `length` that is not a multiple
///   of the page size, is [`Error::Unsupported`] (kIOReturnUnsupported);
/// * a page with no physical page behind it (nothing mapped, or pageable memory that is not
///   resident) is [`Error::NotMapped`] (kIOReturnVMError); dmakit checks every page first,
///   so then nothing changes (IOKit stops at that page, having changed the ones before);
/// * a zero `length` does nothing.
///
/// A platform that cannot change page attributes returns [`Error::Unsupported`] (the Linux
/// host does, for its user-space memory). IOKit deprecates this call: map a descriptor with
/// the cache mode it needs ([`MapOptions`](super::MapOptions)) instead.
///
/// ```
/// use dmakit::map::set_processor_cache_mode;
/// use dmakit::platform::{collect_runs, CacheMode, CpuAccess, PageRequest, PhysicalMemory, Task};
/// use dmakit::{Error, VirtAddr};
/// let machine = dmakit_sim::MachineBuilder::new().build()?;
///
/// // A page of descriptors the device polls: no cache between the CPU and the device.
/// let va = machine.allocate_pages(4096, &PageRequest::WIRED)?;
/// set_processor_cache_mode(&machine, Task::KERNEL, va, 4096, CacheMode::Inhibit)?;
/// machine.write_virt(Task::KERNEL, va, b"ready")?;
/// let pa = collect_runs(&machine, Task::KERNEL, va, 4096)?[0].addr;
/// let mut dram = [0u8; 5];
/// machine.device_read(pa, &mut dram)?;
/// assert_eq!(&dram, b"ready", "no flush needed");
/// let half = set_processor_cache_mode(&machine, Task::KERNEL, VirtAddr(va.0 + 8), 4096, CacheMode::Inhibit);
/// assert!(matches!(half, Err(Error::Unsupported { .. })), "not page aligned");
/// # Ok::<(), dmakit::Error>(())
/// ```
pub fn set_processor_cache_mode<P: PhysicalMemory + VirtualMemory + ?Sized>(
    platform: &P,
    task: Task,
    address: VirtAddr,
    length: u64,
    mode: CacheMode,
) -> Result<()> {
    if task != Task::KERNEL {
        return Err(Error::Unsupported {
            what: "set_processor_cache_mode of a task other than the kernel task (as in IOKit)",
        });
    }
    let page = platform.page_size();
    if page.offset(address.0) != 0 || page.offset(length) != 0 {
        return Err(Error::Unsupported {
            what: "set_processor_cache_mode of a range that is not page aligned (as in IOKit)",
        });
    }
    address.0.checked_add(length).ok_or(Error::Overflow {
        what: "set_processor_cache_mode range",
        start: address.0,
        len: length,
    })?;
    if length == 0 {
        return Ok(());
    }
    platform.set_cache_mode(task, address, length, mode)
}
