//! # dmakit-nvme — an NVMe driver for every machine dmakit runs on
//!
//! `no_std` + `alloc`, depending on the dmakit core alone: what the driver needs from a
//! machine comes through dmakit's platform seam (memory, register accesses) and device seam
//! ([`dmakit::device::PciFunction`]: configuration space, BAR0, interrupt vectors, the DMA
//! view). This crate is being moved here from `dmakit-linux` piece by piece; today it holds
//! the parts that do not touch a machine at all:
//!
//! | module | what |
//! | --- | --- |
//! | [`command`] | submission and completion queue entries, encoded as the controller reads them |
//! | [`prp`] | the NVMe `SegmentSpec` and PRP entries from a `DmaCommand`'s segments |
//! | [`identify`] | Identify Controller and Identify Namespace, decoded |
//!
//! ```
//! use dmakit::dma::IoSegment;
//! use dmakit::IoAddr;
//! use dmakit_nvme::command::{Command, NVM_READ};
//! use dmakit_nvme::prp::prp_entries;
//!
//! // Two pages, the first entered mid-page: PRP1 is the first address, PRP2 the second page.
//! let segs = [
//!     IoSegment { addr: IoAddr(0x1_0200), len: 0xe00 },
//!     IoSegment { addr: IoAddr(0x8_0000), len: 0x200 },
//! ];
//! let (prp1, rest) = prp_entries(&segs)?;
//! assert_eq!((prp1, rest), (0x1_0200, Some(vec![0x8_0000])));
//! let read = Command::new(NVM_READ, 1).with_prps(prp1, 0x8_0000).with_cdw(12, 1 - 1);
//! assert_eq!(read.to_bytes()[0], NVM_READ);
//! # Ok::<(), dmakit::Error>(())
//! ```
#![no_std]

extern crate alloc;

pub mod command;
mod controller;
mod dma;
mod error;
pub mod identify;
mod io;
mod options;
pub mod prp;
mod queue;
mod regs;
pub mod suite;
mod timer;

pub use controller::{ControllerStats, Nvme, Recovery, NVME_CLASS};
pub use dma::DmaBuffer;
pub use error::{NvmeError, Op, Result};
pub use identify::{ControllerIdentity, NamespaceIdentity};
pub use io::{Done, IoQueue, QueueStats, Transfer};
pub use options::{NvmeOptions, QueueOptions};
pub use queue::Outstanding;
pub use timer::{PollTimer, Timer};
