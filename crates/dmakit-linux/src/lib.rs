//! # dmakit-linux — this Linux process as a dmakit platform
//!
//! [`Host`] implements every trait of dmakit's platform seam over real memory of this
//! process: `memfd` + `mmap` (so pages can be mapped twice), `mlock` for wired memory,
//! 2 MiB hugepages for physically contiguous buffers, and `/proc/self/pagemap` for physical
//! addresses. The address mode is explicit ([`AddressMode`]): physical addresses need
//! `CAP_SYS_ADMIN`, and without it every translation is a clear
//! [`NotPermitted`](dmakit::Error::NotPermitted) error, never a zero address.
//!
//! ```
//! use dmakit::platform::{CpuAccess, PageRequest, PhysicalMemory, Task};
//! use dmakit_linux::Host;
//!
//! let host = Host::new()?;
//! let va = host.allocate_pages(host.page_size().bytes(), &PageRequest::WIRED)?;
//! host.write_virt(Task::KERNEL, va, b"hello")?;
//! let mut back = [0u8; 5];
//! host.read_virt(Task::KERNEL, va, &mut back)?;
//! assert_eq!(&back, b"hello");
//! host.free_pages(va, host.page_size().bytes())?;
//! # Ok::<(), dmakit::Error>(())
//! ```
//!
//! All `unsafe` code is in the private `sys` module.
#![deny(unsafe_op_in_unsafe_fn)]

mod host;
mod inspect;
pub mod pagemap;
mod sys;

pub use host::{free_hugepages, AddressMode, Capabilities, Host, HUGEPAGE};
pub use inspect::{inspect, Inspection};
