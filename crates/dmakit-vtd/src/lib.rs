//! # dmakit-vtd — an Intel VT-d DMA remapping driver for dmakit
//!
//! A kernel that owns the machine (no Linux, no VFIO) uses this crate to give a PCI
//! function an IOMMU domain of its own and a dmakit [`Mapper`](dmakit::mapper::Mapper) over
//! it (IOKit's IOMapper). Written against dmakit's platform seam only: register accesses
//! through [`mapped_read32`](dmakit::map::mapped_read32) and friends, table memory from
//! [`PhysicalMemory::allocate_pages`](dmakit::platform::PhysicalMemory::allocate_pages),
//! CPU access to it by physical address. `no_std` + `alloc`, no `unsafe`.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
//! use dmakit::dma::{DmaCommand, PrepareOptions};
//! use dmakit::mapper::Mapper;
//! use dmakit::{Direction, PhysAddr};
//! use dmakit_vtd::{devfn, MapperOptions, Vtd, VtdOptions};
//! use std::sync::Arc;
//!
//! fn give_nvme_an_iommu<P>(platform: P) -> dmakit::Result<()>
//! where
//!     P: dmakit::platform::Platform + Clone + 'static,
//! {
//!     // The register base comes from the ACPI DMAR table's DRHD (QEMU q35: 0xfed90000).
//!     let vtd = Vtd::new(platform.clone(), PhysAddr(0xFED9_0000), VtdOptions::new())?;
//!     // The function 00:04.0 gets its own page table and domain id.
//!     let dom = vtd.domain(0, devfn(4, 0)?)?;
//!     // IO addresses from 1 MiB to 256 MiB (never 0, clear of the interrupt range).
//!     let mapper: Arc<dyn Mapper> = dom.mapper(MapperOptions::new(0x10_0000, 0x0FF0_0000))?;
//!
//!     // From here on it is plain dmakit: a command with the mapper gives IO addresses.
//!     let buf = Arc::new(BufferMemoryDescriptor::new(
//!         platform.clone(),
//!         BufferOptions::new(8192, Direction::In),
//!     )?);
//!     let mut cmd = DmaCommand::builder(platform).mapper(mapper).build()?;
//!     cmd.set_memory_descriptor(buf)?;
//!     cmd.prepare(PrepareOptions::new())?;
//!     // ... program the device with cmd.segments(), run it ...
//!     cmd.complete()?; // unmapped, and the IOTLB invalidated before the addresses return
//!     for f in vtd.faults()?.faults {
//!         // e.g. "00:04.0 write at 0x123000: page not writable (or not mapped)"
//!         let _ = f.to_string();
//!     }
//!     Ok(())
//! }
//! ```
//!
//! | item | what |
//! | --- | --- |
//! | [`Vtd`], [`VtdOptions`] | one remapping unit: bring-up, domains, faults, teardown |
//! | [`VtdDomain`], [`MapperOptions`], [`VtdMapper`] | a function's page table, the [`IommuHardware`](dmakit::mapper::IommuHardware) under dmakit's [`IommuMapper`](dmakit::mapper::IommuMapper) |
//! | [`VtdFault`], [`FaultReason`], [`FaultLog`] | the unit's fault records, decoded |
//! | [`regs`] | register offsets and fields |
//!
//! ## What the driver does, and in which order
//!
//! * **Bring-up** ([`Vtd::new`]): reads VER, CAP and ECAP; refuses (with
//!   [`Error::Unsupported`](dmakit::Error::Unsupported), naming the field) a unit without
//!   3-, 4- or 5-level second-level tables, without IOTLB or fault registers, or queued
//!   invalidation on a unit without it, and a platform whose pages are not 4 KiB. Turns
//!   translation off if firmware left it on; installs an empty root table in legacy mode
//!   (`RTADDR`, `GCMD.SRTP`, wait for `GSTS.RTPS`); with queued invalidation, sets up the
//!   queue (`IQT = 0`, `IQA`, `GCMD.QIE`, wait for `GSTS.QIES`); invalidates the context
//!   cache globally, then the IOTLB globally; clears old fault records; turns translation on
//!   (`GCMD.TE`, wait for `GSTS.TES`). Every global command keeps the other states
//!   (`GSTS & (TE|EAFL|QIE|IRE|CFI)`) and changes one thing.
//! * **Domains** ([`Vtd::domain`]): a domain id (1 and up), an empty top-level table, the
//!   bus's context table on first use (its root entry written upper half first, present bit
//!   last), the context entry (address width, domain id, then the table pointer with the
//!   present bit), then a context-cache invalidation (device-selective, or global for a new
//!   root entry) and a domain-selective IOTLB invalidation.
//! * **Mapping** ([`VtdDomain`] as `IommuHardware`): leaf entries with read and write bits
//!   from [`Access`](dmakit::mapper::Access); intermediate tables made on demand (read and
//!   write granted, the leaf decides) and kept until the domain goes; every entry one 8-byte
//!   store, written back from the CPU caches when the unit does not snoop them (`ECAP.C`
//!   clear, as on QEMU). With caching mode (`CAP.CM`) a new entry is followed by a
//!   page-selective invalidation; with `CAP.RWBF` by a write-buffer flush.
//! * **Invalidation**: page-selective for the naturally aligned block covering a range
//!   when `CAP.PSI` and `CAP.MAMV` allow, else domain-selective; with read and write draining
//!   where the unit has it; by register (poll `IVT`/`ICC`, check the actual granularity) or
//!   by queue (descriptors, then a wait descriptor whose status write is polled). dmakit's
//!   `IommuMapper` keeps freed IO addresses out of reuse until an invalidation that covers
//!   them has completed.
//! * **Faults** ([`Vtd::faults`]): every fault record with its F bit set, starting at
//!   `FSTS.FRI`, decoded and cleared; `FSTS.PFO` reported and cleared.
//! * **Teardown**: dropping a domain clears its context entry (present bit first),
//!   invalidates the function's context-cache entry and the domain's IOTLB entries, then
//!   frees its tables. Dropping the `Vtd` and its last domain turns translation off (and the
//!   queue), then frees the root and context tables. A table whose invalidation the unit
//!   did not confirm is never freed (counted in [`VtdStats::leaked_pages`]).
//!
//! ## What a kernel provides
//!
//! * The register base of the unit that covers the device (DMAR table, DRHD structure
//!   whose device scope names it, or the one with `INCLUDE_PCI_ALL`), and, for a real
//!   machine, the DMAR table's host address width plus one
//!   ([`VtdOptions::host_address_width`]).
//! * A [`Platform`](dmakit::platform::Platform) with 4 KiB pages whose `Mmio` reaches the
//!   register page uncached, whose `allocate_pages` honours `phys_limit` and `contiguous`,
//!   and whose `cache_phys(Clean, ..)` really writes lines back on a machine where the unit
//!   does not snoop (`ECAP.C` clear; a no-op there is only correct if the CPU caches are
//!   coherent with the unit anyway, as under QEMU).
//! * The device's source id: its bus number and `devfn` ([`devfn`]) as configuration space
//!   sees them, after bridges are numbered. A device behind a PCIe-to-PCI bridge issues DMA
//!   with the bridge's id; give the domain to that id.
//! * The order: `Vtd::new` before the device does DMA through it, `domain` and `mapper`
//!   before bus mastering is turned on, and every DMA command completed (unmapping) before
//!   the mapper and domain go.
#![no_std]

extern crate alloc;

mod domain;
mod fault;
mod options;
pub mod regs;
mod unit;

pub use domain::{VtdDomain, VtdMapper};
pub use fault::{devfn, source_id, FaultLog, FaultReason, VtdFault};
pub use options::{Invalidation, MapperOptions, VtdOptions};
pub use unit::{Vtd, VtdInfo, VtdStats};
