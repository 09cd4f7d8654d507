//! `flush_processor_cache` (IOKit's `IOFlushProcessorCache`).
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

use crate::platform::{CacheOp, CacheOps, Task};
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
