//! # dmakit-linux — this Linux process as a dmakit platform
//!
//! [`Host`] implements every trait of dmakit's platform seam over real memory of this
//! process:
//!
//! * `memfd` + `mmap(MAP_SHARED)` for memory, so the same pages can be mapped twice;
//! * `mlock` for wired memory, counted per page across the whole process;
//! * 2 MiB hugepages (`MFD_HUGETLB`) for physically contiguous buffers;
//! * `/proc/self/pagemap` for physical addresses.
//!
//! The address mode is explicit ([`AddressMode`]): physical addresses need
//! `CAP_SYS_ADMIN`, and without it every translation is a clear
//! [`NotPermitted`](dmakit::Error::NotPermitted) error, never a zero address. Missing
//! hugepages and a low `RLIMIT_MEMLOCK` are errors that say so, with the numbers and the fix.
//! [`Host::capabilities`] reports what was found.
//!
//! ```
//! use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Task};
//! use dmakit_linux::{AddressMode, Host};
//!
//! let host = Host::new()?;
//! let len = host.page_size().bytes();
//! let va = host.allocate_pages(len, &PageRequest::WIRED)?;
//! host.write_virt(Task::KERNEL, va, b"hello")?;
//! let mut back = [0u8; 5];
//! host.read_virt(Task::KERNEL, va, &mut back)?;
//! assert_eq!(&back, b"hello");
//! match host.address_mode() {
//!     AddressMode::Physical => {
//!         let runs = collect_runs(&host, Task::KERNEL, va, len)?;
//!         assert!(runs[0].addr.0 != 0);
//!     }
//!     _ => println!("no physical addresses here: {}", host.address_mode()),
//! }
//! host.free_pages(va, len)?;
//! # Ok::<(), dmakit::Error>(())
//! ```
//!
//! ## Layout
//!
//! | module | concept |
//! | --- | --- |
//! | `host` | [`Host`]: probing, registrations, teardown |
//! | `caps` | [`Capabilities`], [`AddressMode`]: what this process may do |
//! | `physical` | allocation (memfd, mmap, mlock, hugetlb) and access by physical address |
//! | `wiring` | counted wiring and physical runs |
//! | `ledger` | the process-wide count of wirings per page (`mlock` does not nest) |
//! | [`pagemap`] | reading and decoding `/proc/self/pagemap` |
//! | `registry` | the memory a host knows, and the only way to reach it |
//! | `cpu`, `cache`, `mmio`, `vm` | the remaining seam traits |
//! | `limits` | [`WireLimits`]; wiring refused up front when the kernel's available memory or `RLIMIT_MEMLOCK` cannot hold it |
//! | `lend` | lending allocations as Rust slices (`direct_slice`, IOKit's `getBytesNoCopy`) |
//! | `purgeable` | volatile memory: per-page state, hole punching, [`Host::purge_volatile`] |
//! | `hints` | error messages with current limits and fixes |
//! | `inspect` | the `dmakit inspect` report |
//! | `sys` | the unsafe floor: mappings, spans, copies, volatile accesses, flushes |
//! | `vfio` | real PCI devices through VFIO: container, groups, devices, BARs, MSI, the IOMMU mapper (feature `vfio`) |
//! | `timer` | `MonotonicTimer`: the clock portable drivers (`dmakit-nvme`, `dmakit-edu`) time their commands with (feature `nvme`) |
//!
//! All `unsafe` code is in `sys` (and `vfio/sys` for the ioctls and BAR mappings), apart from the two registration functions of [`Host`],
//! which are `unsafe fn`s turning the caller's promise into a region.
//!
//! ## Features
//!
//! * `vfio` (default): the `vfio` module; adds the `vfio-bindings` dependency.
//! * `nvme` (default): `MonotonicTimer`, which implements `dmakit_nvme::Timer`; adds the
//!   `dmakit-nvme` dependency.
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod caps;
mod cpu;
mod hints;
mod host;
mod inspect;
mod ledger;
mod lend;
mod limits;
mod mmio;
pub mod pagemap;
mod physical;
mod purgeable;
mod registry;
mod registry_lock;
mod sys;
#[cfg(feature = "nvme")]
mod timer;
#[cfg(feature = "vfio")]
#[cfg_attr(docsrs, doc(cfg(feature = "vfio")))]
pub mod vfio;
mod vm;
mod wiring;

pub use caps::{AddressMode, Capabilities, HugepagePool, MemlockLimit, ShmemHugePages};
pub use host::{Host, Usage, HUGEPAGE};
pub use inspect::{inspect, inspect_below, Inspection};
pub use limits::WireLimits;
#[cfg(feature = "nvme")]
#[cfg_attr(docsrs, doc(cfg(feature = "nvme")))]
pub use timer::MonotonicTimer;
