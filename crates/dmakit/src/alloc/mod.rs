//! Allocation: the IOMalloc family and IORangeAllocator.
//!
//! * [`malloc`]: `io_malloc`, `io_malloc_zero`, `io_malloc_aligned`, `io_malloc_pageable`,
//!   `io_malloc_contiguous` and their frees, `io_size_to_alignment` / `io_alignment_to_size`, over a platform's [`PhysicalMemory`](crate::platform::PhysicalMemory), with
//!   IOKit's rule that a free takes the size, checked.
//! * [`range`]: [`RangeAllocator`], which hands out ranges of a numeric space (IO virtual
//!   addresses, BAR space, descriptor slots) with alignment, fixed-range allocation and
//!   coalescing.
//! * [`locked`]: [`LockedRangeAllocator`], a range allocator shared between threads, with
//!   per-thread caches of free ranges in front of it.

pub mod locked;
pub(crate) mod magazine;
pub mod malloc;
pub mod ordered;
pub mod range;
pub mod size_class;
pub(crate) mod table;

pub use locked::LockedRangeAllocator;
pub use malloc::{
    io_alignment_to_size, io_free, io_free_aligned, io_free_contiguous, io_free_pageable,
    io_malloc, io_malloc_aligned, io_malloc_contiguous, io_malloc_pageable, io_malloc_zero,
    io_size_to_alignment, IoHeap, IoMemory,
};
pub use range::RangeAllocator;
pub use table::AddrHash;
