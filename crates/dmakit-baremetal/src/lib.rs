//! # dmakit-baremetal — dmakit in your own x86-64 kernel
//!
//! The platform seam ([`BareMetal`]: all six traits of [`dmakit::platform`]) and the device
//! seam ([`pci::EcamBus`], [`pci::EcamFunction`]) for a kernel that owns an x86-64 machine
//! and reaches physical memory through a direct map (virtual = physical + offset; under
//! UEFI's identity map the offset is 0). `no_std` + `alloc`, depending on the dmakit core
//! alone: the portable drivers (`dmakit-nvme`, `dmakit-edu`) run on it unchanged, and the
//! test kernel in the repository's `kernel/` directory runs their suites under QEMU with it
//! (`baremetal/run`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use dmakit::device::{DmaView, PciBus, PciMatch};
//! use dmakit_baremetal::pci::EcamBus;
//! use dmakit_baremetal::{BareMetal, BareMetalConfig, TscClock};
//!
//! # fn kernel_main(rsdp: u64) -> dmakit::Result<()> {
//! // 1. From the firmware's final memory map: free memory for the allocator, every other
//! //    kind of RAM the kernel still uses (its image, stack, ACPI tables) to be mapped.
//! let config = BareMetalConfig::new(0)
//!     .usable(0x10_0000, 0x3f00_0000)
//!     .ram(0x3ff0_0000, 0x10_0000);
//! // SAFETY: the ranges come from the firmware's map after ExitBootServices.
//! let platform = Arc::new(unsafe { BareMetal::new(config)? });
//!
//! // 2. PCI: the ECAM window from ACPI's MCFG, mapped uncached.
//! let read = |pa: u64, buf: &mut [u8]| {
//!     use dmakit::platform::PhysicalMemory;
//!     platform.read_phys(dmakit::PhysAddr(pa), buf)
//! };
//! let ecam = dmakit_baremetal::acpi::ecam_regions(&read, rsdp)?[0];
//! // SAFETY: MCFG says this window is configuration space.
//! unsafe { platform.add_device_memory(ecam.base, ecam.len())? };
//!
//! // 3. Switch to the platform's page tables (its mappings and cache types are live).
//! // SAFETY: ring 0; the tables map all RAM the kernel uses.
//! unsafe { platform.activate() };
//!
//! // 4. Walk the bus; register each BAR as device memory; say how each function's DMA
//! //    reaches memory (no IOMMU here: bypass, up to the device's address bits).
//! // SAFETY: ring 0, nothing else uses the PIT.
//! let clock = unsafe { TscClock::calibrate_with_pit() };
//! let bus = EcamBus::builder(platform.clone(), ecam)
//!     .dma(|_| DmaView::Bypass { max_address: u64::MAX })
//!     .delay_us(move |us| clock.spin_ns(us * 1000))
//!     .scan()?;
//! for f in bus.ecam_functions() {
//!     for bar in f.memory_bars() {
//!         // SAFETY: a BAR the firmware assigned: device registers.
//!         unsafe { platform.add_device_memory(bar.base, bar.len)? };
//!     }
//! }
//!
//! // 5. Any dmakit driver: the platform is its memory, the function its device.
//! let nvme = bus.find(&PciMatch::class(0x01_08_02))?;
//! # let _ = (nvme, clock); Ok(()) }
//! ```
//!
//! | module | what |
//! | --- | --- |
//! | [`BareMetal`], [`BareMetalConfig`] | the platform seam: page allocator, wiring books, CPU access and cache maintenance through the direct map, mapped I/O, second mappings with cache types |
//! | [`frames`] | [`FrameAllocator`]: physical pages from the top down, honouring limits, contiguity and alignment; [`Placement`] packed or scattered |
//! | [`paging`] | four-level page tables (4 KiB and 2 MiB pages, PAT cache types), built and edited by safe code over a [`paging::TableMemory`] |
//! | [`pci`] | ECAM: [`pci::EcamBus`] walks the hierarchy (bridges too), [`pci::EcamFunction`] gives configuration space, BARs, bus mastering, function-level reset, the DMA view |
//! | [`acpi`] | the ECAM windows from ACPI's MCFG |
//! | [`time`] | [`TscClock`], calibrated against the PIT |
//!
//! ## Choices
//!
//! * **Own page tables.** [`BareMetal::new`] builds fresh tables (the direct map of the
//!   given RAM write-back with 2 MiB pages, device memory uncached as it is registered, a
//!   mapping area in the upper half) and [`BareMetal::activate`] loads them into CR3 after
//!   ExitBootServices, rather than editing the firmware's tables (which OVMF may keep
//!   read-only and which describe memory the kernel is about to reuse).
//! * **CPU access through the direct map.** Every CPU access the seam makes translates the
//!   address through the platform's books and touches memory at physical + offset; an
//!   address the platform does not know is [`dmakit::Error::NotMapped`], never a fault.
//!   A second mapping's cache type therefore governs loads and stores made through its own
//!   address (the kernel's), not the seam's copies, which go through the write-back alias.
//! * **Wiring.** Nothing pages, so wiring moves nothing, but it is counted (frees of wired
//!   memory are refused, [`BareMetal::usage`] exposes the books for leak checks) and
//!   pageable allocations answer `NotReady` to translation until wired, as the seam's
//!   contract says.
//! * **Interrupts.** None are delivered: functions report `Interrupts { kind: None,
//!   vectors: 0 }` and the drivers poll.
//! * **All `unsafe`** is in the private `sys` module (raw copies, volatile accesses,
//!   `clflush`, CR3, the PAT, port I/O), reached through a direct map that checks every
//!   address first, plus the constructor, [`BareMetal::add_device_memory`] and
//!   [`BareMetal::activate`], whose callers vouch for what they hand over. x86-64 only.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod frames;
pub mod paging;
pub mod pci;
mod platform;
mod ranges;
mod sys;
pub mod time;

pub use frames::{FrameAllocator, Placement};
pub use platform::{BareMetal, BareMetalConfig, Usage, DEFAULT_AREA};
pub use time::TscClock;
