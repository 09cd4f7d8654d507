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
//! # use dmakit::map::flush_processor_cache;
//! # use dmakit::platform::{CacheOps, Task};
//! # fn demo<P: CacheOps>(p: &P, va: dmakit::VirtAddr) -> dmakit::Result<()> {
//! flush_processor_cache(p, Task::KERNEL, va, 4096)?;
//! # Ok(()) }
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
/// # use dmakit::map::set_processor_cache_mode;
/// # use dmakit::platform::{CacheMode, PhysicalMemory, Task, VirtualMemory};
/// # fn demo<P: PhysicalMemory + VirtualMemory>(p: &P, va: dmakit::VirtAddr) -> dmakit::Result<()> {
/// // A page of descriptors the device polls: no cache between the CPU and the device.
/// set_processor_cache_mode(p, Task::KERNEL, va, 4096, CacheMode::Inhibit)?;
/// # Ok(()) }
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
