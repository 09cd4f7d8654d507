//! # dmakit-nvme — an NVMe driver for every machine dmakit runs on
//!
//! `no_std` + `alloc`, depending on the dmakit core alone: what the driver needs from a
//! machine comes through dmakit's platform seam (memory, register accesses) and device seam
//! ([`dmakit::device::PciFunction`]: configuration space, BAR0, interrupt vectors, the DMA
//! view), and the time from a [`Timer`] the machine supplies. The same driver runs on the
//! simulated machine (`dmakit-sim`), in a Linux process over VFIO (`dmakit-linux`) and in a
//! kernel of your own.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
//! use dmakit::device::{PciBus, PciMatch};
//! use dmakit::Direction;
//! use dmakit_nvme::{Nvme, NvmeOptions, PollTimer, QueueOptions, NVME_CLASS};
//! use std::sync::Arc;
//!
//! fn first_blocks<P>(platform: P, bus: &dyn PciBus) -> dmakit_nvme::Result<Vec<u8>>
//! where
//!     P: dmakit::platform::Platform + Clone + Send + Sync + 'static,
//! {
//!     let function = bus.find(&PciMatch::class(NVME_CLASS))?;
//!     let nvme = Nvme::new(platform.clone(), function, Arc::new(PollTimer::default()), NvmeOptions::new())?;
//!     let ns = nvme.namespace(1)?; // 512- or 4096-byte blocks, from Identify Namespace
//!     let mut q = nvme.io_queue(QueueOptions::new(64))?; // one per thread
//!     let buf: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::new(
//!         platform,
//!         BufferOptions::new(8192, Direction::InOut),
//!     )?);
//!     // Any descriptor; PRP lists, splitting and bouncing are the driver's business.
//!     let done = q.read(&ns, 0, &buf, 0, 8192)?;
//!     assert!(done.commands >= 1);
//!     let mut out = vec![0; 8192];
//!     assert_eq!(buf.read_bytes(0, &mut out), 8192);
//!     Ok(out)
//! }
//!
//! // On the simulator: a machine, a PCI bus, an NVMe controller whose disk image starts
//! // every 512-byte sector with `dmakit LBA <n>`.
//! use dmakit_sim::nvme::{Prefill, SimNvme};
//! use dmakit_sim::{pci::SimPciBus, MachineBuilder};
//! let machine = Arc::new(MachineBuilder::new().build()?);
//! let bus = SimPciBus::new(machine.clone())?;
//! SimNvme::builder().prefill(Prefill::GuestImage).attach(&bus)?;
//! let blocks = first_blocks(machine, &bus)?;
//! assert!(blocks.starts_with(b"dmakit LBA 0\n"));
//! assert!(blocks[512..].starts_with(b"dmakit LBA 1\n"));
//! # Ok::<(), dmakit_nvme::NvmeError>(())
//! ```
//!
//! | module | what |
//! | --- | --- |
//! | `controller` | [`Nvme`]: bring-up, Identify, queue identifiers, recovery ([`Nvme::recover`]) |
//! | `io` | [`IoQueue`]: reads and writes of any descriptor, Flush, queued commands on pre-mapped buffers |
//! | `dma` | [`DmaBuffer`]: memory the controller reaches at one run of device addresses |
//! | `queue` | the submission/completion rings, phase tags, [`Outstanding`] command identifiers |
//! | `error` | [`NvmeError`]: failures that name the command ([`Op`]) |
//! | `timer` | [`Timer`], [`PollTimer`] |
//! | [`command`] | submission and completion queue entries, encoded as the controller reads them |
//! | [`prp`] | the NVMe `SegmentSpec` and PRP entries and list pages |
//! | [`identify`] | Identify Controller and Identify Namespace, decoded |
//! | [`suite`] | the driver's tests, written once over the seams |
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
