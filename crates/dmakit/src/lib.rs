//! # dmakit — IOKit's Memory API family for Rust drivers
//!
//! dmakit gives driver writers the memory layer of Apple's IOKit (descriptors, DMA commands,
//! IOMMU mappers, memory cursors, allocators, mapped I/O) with IOKit's semantics and a
//! Rust-shaped interface. It runs on three kinds of machine through one *platform seam*:
//!
//! * a simulated machine (`dmakit-sim`): deterministic, seeded and deliberately hostile
//!   (fragmented, non-identity physical memory, RAM above 4 GiB, a non-coherent cache);
//! * this Linux process (`dmakit-linux`): mmap, mlock, memfd, hugetlbfs, pagemap, VFIO;
//! * your kernel: implement the traits of [`platform`].
//!
//! The crate is `#![no_std]` with `alloc`; the `std` feature (on by default) adds
//! `std::error::Error` for [`Error`].
//!
//! ## Layout
//!
//! | module | concept |
//! | --- | --- |
//! | [`addr`] | physical, IO (device-visible) and virtual address types and ranges |
//! | [`page`] | the page size as a platform property |
//! | [`direction`] | transfer direction (kIODirection*) |
//! | [`error`] | [`Error`], each variant with context, and its kIOReturn code |
//! | [`platform`] | the seam: small capability traits a backend implements |
//! | [`alloc`] | the IOMalloc family and [`RangeAllocator`](alloc::RangeAllocator) |
//! | [`map`] | mapped I/O (`mapped_read*`/`mapped_write*`) and `flush_processor_cache` |
//! | [`mapper`] | IOMMU mappers: the `Mapper` trait and `IommuMapper` with its flush queue |
//! | [`dma`] | segment formats, `SegmentSpec`, `DmaCommand` with bounce pool and quarantine, typed ownership, the IOMemoryCursor family, controllers and event sources |
//! | [`descriptor`] | the IOMemoryDescriptor family: general, buffer, sub, multi, interleaved |
//! | [`device`] | the device seam: one PCI function (configuration space, BARs, interrupts, its DMA view, reset) and a bus to find it on |
//! | [`debug`] | the dma-debug ledger (feature `dma-debug`): violations and outstanding preparations |
//! | [`driverkit`] | DriverKit's shapes (`IOBufferMemoryDescriptor::Create`, `CreateMapping`, `IODMACommand::PrepareForDMA`, …) over the same objects, for porting a dext |
//!
//! ## Example
//!
//! ```
//! use dmakit::alloc::RangeAllocator;
//!
//! // An IO address space of 1 MiB handed out in 4 KiB-aligned pieces.
//! let mut space = RangeAllocator::new(0x10_0000, 0x10_0000, 0x1000)?;
//! let a = space.allocate(0x3000, 0)?;
//! let b = space.allocate(0x1000, 0x4000)?; // 16 KiB aligned
//! assert_eq!(b % 0x4000, 0);
//! space.deallocate(a, 0x3000)?;
//! space.deallocate(b, 0x1000)?;
//! assert_eq!(space.fragment_count(), 1);
//! # Ok::<(), dmakit::Error>(())
//! ```
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc as alloc_crate;
#[cfg(feature = "std")]
extern crate std;

pub mod addr;
pub mod alloc;
pub mod debug;
pub mod descriptor;
pub mod device;
pub mod direction;
pub mod dma;
pub mod driverkit;
pub mod error;
pub mod map;
pub mod mapper;
pub mod page;
pub mod platform;
pub mod sync;

pub use addr::{IoAddr, PhysAddr, PhysRange, VirtAddr};
pub use direction::Direction;
pub use error::{Error, IoReturn, Result};
pub use page::PageSize;
pub use platform::Task;
