//! Mapped memory: IOKit's IOMemoryMap, the IOMappedRead/Write family,
//! IOFlushProcessorCache and IOSetProcessorCacheMode.
//!
//! * [`io`]: the accessors `mapped_read8` … `mapped_read64` and `mapped_write8` … `mapped_write64`, loads
//!   and stores of exactly one width at a *physical* I/O-space address, as IOKit's
//!   `IOMappedRead*` take;
//! * [`memory_map`]: [`MemoryMap`], a descriptor mapped into a task;
//! * [`cache`]: the processor-cache flush, [`flush_processor_cache`], and the page cache
//!   mode, [`set_processor_cache_mode`].

pub mod cache;
pub mod io;
pub mod memory_map;

pub use cache::{flush_processor_cache, set_processor_cache_mode};
pub use io::{
    mapped_read16, mapped_read32, mapped_read64, mapped_read8, mapped_write16, mapped_write32,
    mapped_write64, mapped_write8,
};
pub use memory_map::{MapGuard, MapOptions, MapRegistry, MapSharing, MemoryMap};
