//! Allocation: the IOMalloc family and IORangeAllocator.
//!
//! * [`malloc`]: `io_malloc`, `io_malloc_zero`, `io_malloc_aligned`, `io_malloc_pageable`,
//!   `io_malloc_contiguous` and their frees, `io_size_to_alignment` / `io_alignment_to_size`, over a platform's [`PhysicalMemory`](crate::platform::PhysicalMemory), with
//!   IOKit's rule that a free takes the size, checked.
//! * [`range`]: [`RangeAllocator`], which hands out ranges of a numeric space (IO virtual
//!   addresses, BAR space, descriptor slots) with alignment, fixed-range allocation and
//!   coalescing.
//! * [`locked`]: [`LockedRangeAllocator`], a range allocator shared between threads, with
//!   per-thread caches of free ranges in front of it (with good-fit placement).
//!
//! ```
//! use dmakit::alloc::{IoHeap, LockedRangeAllocator, Placement, RangeAllocator};
//! # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//!
//! // Memory: the IOMalloc family over a platform.
//! let heap = IoHeap::new(machine);
//! let block = heap.alloc(64)?; // freed on drop, with the right size
//! assert_eq!(block.len(), 64);
//! // Numbers: IO addresses, shared by every queue of a device.
//! let space = RangeAllocator::new(0x10_0000, 0x1000_0000, 0x1000)?;
//! let iova = LockedRangeAllocator::new(space.with_placement(Placement::GoodFit));
//! let a = iova.allocate(0x3000, 0)?;
//! iova.deallocate(a, 0x3000)?;
//! # Ok::<(), dmakit::Error>(())
//! ```

pub mod locked;
pub(crate) mod magazine;
pub mod malloc;
pub(crate) mod ordered;
pub mod range;
pub(crate) mod size_class;
pub(crate) mod table;

pub use locked::LockedRangeAllocator;
pub use malloc::{
    io_alignment_to_size, io_free, io_free_aligned, io_free_contiguous, io_free_pageable,
    io_malloc, io_malloc_aligned, io_malloc_contiguous, io_malloc_pageable, io_malloc_zero,
    io_size_to_alignment, IoHeap, IoMemory,
};
pub use range::{Placement, RangeAllocator, RangeHandle};
pub use table::AddrHash;
