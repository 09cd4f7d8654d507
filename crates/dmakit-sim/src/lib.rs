//! # dmakit-sim — a simulated machine to test drivers against
//!
//! A seeded, deterministic and deliberately hostile machine that implements every trait of
//! dmakit's platform seam ([`dmakit::platform`]). Drivers that work here have already met:
//!
//! * **non-identity, fragmented physical memory**: virtual pages land on scattered physical
//!   pages, some above 4 GiB, with holes in the RAM map ([`physical`]);
//! * **several tasks**, each an address space with its own page table, kernel and user
//!   addresses far from the physical ones ([`task`]);
//! * **pageable memory** that has no physical page until touched or wired, leaves RAM when
//!   [`Machine::page_out`] runs and moves when [`Machine::migrate_pageable`] runs;
//!   translating it unwired is `NotReady`;
//! * **non-coherent caches**: CPU stores invisible to devices until cleaned, device writes
//!   invisible to the CPU until invalidated ([`cache`]);
//! * **MMIO windows** routed to device models ([`mmio`]);
//! * **fault injection**: the Nth physical page allocation, pin, translation or mapping
//!   fails ([`fault`]), and [`Machine::stats`] proves that nothing leaked;
//! * **an IOMMU** whose IOTLB keeps stale entries until invalidated and which logs device
//!   faults ([`iommu`]);
//! * **a DMA engine** programmed as real ones are: a descriptor ring in RAM and MMIO
//!   registers with a doorbell; it moves data as a device does, through DRAM or the IOMMU,
//!   writes completion status back into the ring and raises an interrupt ([`dma_engine`]);
//! * **a PCI bus** for drivers written against the core's device seam: configuration
//!   space, BARs, MSI-X, bus mastering and an IOMMU domain per function ([`pci`]), with an
//!   NVMe controller ([`nvme`]) and QEMU's `edu` ([`edu`]) to plug in.
//!
//! The same seed and the same calls give the same physical addresses; another seed gives
//! another layout. For displays, [`Machine::layout`] lists RAM, holes and MMIO windows, and
//! [`Machine::page_table`] a task's virtual-to-physical pages.
//!
//! | module | concept |
//! | --- | --- |
//! | `builder` | [`MachineBuilder`]: the description of a machine, hostile by default |
//! | `machine` | [`Machine`]: the seam traits implemented over everything below |
//! | [`physical`] | RAM regions, the free page pool and lazily backed DRAM |
//! | [`task`] | address spaces: page tables, pageable memory, swap |
//! | [`cache`] | the non-coherent CPU cache model and cache modes |
//! | [`mmio`] | MMIO windows and device models |
//! | [`fault`] | fault injection sites |
//! | [`iommu`] | an IOMMU with a stale-keeping IOTLB |
//! | [`dma_engine`] | a memory-to-memory DMA engine: registers, descriptor ring, driver |
//! | [`pci`] | a PCI bus: configuration space, BARs, MSI-X, per-function IOMMU domains |
//! | [`nvme`] | an NVMe controller behind a PCI function, with hostile knobs |
//! | [`edu`] | QEMU's `edu` teaching device behind a PCI function |
//!
//! ```
//! use dmakit::platform::{PageRequest, PhysicalMemory, Wiring, Task, collect_runs};
//! use dmakit_sim::MachineBuilder;
//!
//! let m = MachineBuilder::new().seed(7).build()?;
//! let va = m.allocate_pages(0x4000, &PageRequest::WIRED)?;
//! let runs = collect_runs(&m, Task::KERNEL, va, 0x4000)?;
//! assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 0x4000);
//! m.free_pages(va, 0x4000)?;
//! # Ok::<(), dmakit::Error>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]

mod builder;
pub mod cache;
pub mod dma_engine;
pub mod edu;
pub mod fault;
mod free;
pub mod iommu;
mod machine;
pub mod mmio;
pub mod nvme;
pub mod pci;
pub mod physical;
pub mod task;

pub use builder::{MachineBuilder, DEFAULT_RAM};
pub use cache::CacheMode;
pub use dma_engine::{DmaEngineDevice, EngineConfig, SimDmaEngine};
pub use fault::FaultSite;
pub use iommu::{FaultKind, IommuFault, IommuFaultSite, SimIommu};
pub use machine::{Layout, Machine, SimStats};
pub use mmio::{MmioDevice, ScratchDevice, SharedDevice};
pub use pci::{SimPciBus, SimPciFunction};
pub use task::PageEntry;

/// The Rust code blocks of the workspace's README, compiled and run as doc tests
/// (`cargo test --doc -p dmakit-sim`) so the quickstart there cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The Rust code blocks of the porting guide (`docs/PORTING.md`), run as doc tests too.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/PORTING.md")]
pub struct PortingDoctests;
