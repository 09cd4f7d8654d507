//! The IOMalloc family: `io_malloc`, `io_malloc_zero`, `io_malloc_aligned`,
//! `io_malloc_pageable` and the frees.
//! (Implementation follows in this module.)
