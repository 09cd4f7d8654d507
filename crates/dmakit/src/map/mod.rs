//! Mapped memory: IOKit's IOMemoryMap, the IOMappedRead/Write family,
//! IOFlushProcessorCache and IOSetProcessorCacheMode.
//!
//! * [`io`]: the accessors `mapped_read8` … `mapped_read64` and `mapped_write8` … `mapped_write64`, loads
//!   and stores of exactly one width at a *physical* I/O-space address, as IOKit's
//!   `IOMappedRead*` take;
//! * [`memory_map`]: [`MemoryMap`], a descriptor mapped into a task;
//! * [`cache`]: the processor-cache flush, [`flush_processor_cache`], and the page cache
//!   mode, [`set_processor_cache_mode`].
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
//! use dmakit::map::{mapped_read32, MapOptions};
//! use dmakit::platform::{CpuAccess, Task};
//! use dmakit::Direction;
//! use std::sync::Arc;
//! let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//!
//! let buf = Arc::new(BufferMemoryDescriptor::with_bytes(machine.clone(), &[1, 0, 0, 0], Direction::InOut)?);
//! // A second task sees the buffer through a mapping of its own.
//! let task = machine.create_task();
//! let map = buf.map(MapOptions::new().in_task(task))?;
//! let mut seen = [0u8; 4];
//! machine.read_virt(task, map.address(), &mut seen)?;
//! assert_eq!(seen, [1, 0, 0, 0]);
//! // Physical memory read as a register would be.
//! assert_eq!(mapped_read32(&*machine, buf.physical_segment(0)?.addr)?, 1);
//! # Ok::<(), dmakit::Error>(())
//! ```

pub mod cache;
pub mod io;
pub mod memory_map;

pub use cache::{flush_processor_cache, set_processor_cache_mode};
pub use io::{
    mapped_read16, mapped_read32, mapped_read64, mapped_read8, mapped_write16, mapped_write32,
    mapped_write64, mapped_write8,
};
pub use memory_map::{MapGuard, MapOptions, MapRegistry, MapSharing, MemoryMap};
