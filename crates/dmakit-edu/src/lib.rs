//! # dmakit-edu — QEMU's `edu` device, driven on every machine dmakit runs on
//!
//! `edu` (QEMU `docs/specs/edu.rst`, PCI `1234:11e8`) is a teaching device with a small DMA
//! engine: it copies between RAM and a 4 KiB buffer inside the device, at device address
//! `0x40000` ([`EDU_BUFFER`]), and raises an interrupt when a copy is done. [`Edu`] drives
//! it as a [`DmaController`](dmakit::dma::DmaController) (IOKit's `IODMAController`) written
//! against dmakit's seams only: a [`Platform`](dmakit::platform::Platform) for memory and
//! register accesses and a [`PciFunction`](dmakit::device::PciFunction) for the device. The
//! same driver, and the same [`suite`] of tests, run on the simulator's PCI bus and inside a
//! QEMU guest over VFIO. `no_std` + `alloc`.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
//! use dmakit::device::{PciBus, PciMatch};
//! use dmakit::dma::{DmaCompletion, DmaEventSource, DmaTransfer, InterruptSink, IoSegment, PrepareOptions};
//! use dmakit::{Direction, IoAddr};
//! use dmakit_edu::{Edu, EduOptions, EDU_BUFFER, EDU_DEVICE, EDU_VENDOR};
//!
//! # fn demo<P>(platform: P, bus: &dyn PciBus) -> dmakit::Result<()>
//! # where P: dmakit::platform::Platform + Clone + Send + Sync + 'static {
//! // Probe: the first edu on the bus, a device that drives 28 address bits.
//! let function = bus.find(&PciMatch::ids(EDU_VENDOR, EDU_DEVICE))?;
//! let edu = Arc::new(Edu::new(platform.clone(), function, EduOptions::new().dma_bits(28))?);
//!
//! // Completions go to an event source; the device's interrupt only wakes it.
//! let done = Arc::new(Mutex::new(Vec::<DmaCompletion>::new()));
//! let d = done.clone();
//! let events = Arc::new(DmaEventSource::new(edu.clone(), move |c| d.lock().unwrap().push(c)));
//! let sink: Arc<dyn InterruptSink> = events.clone();
//! edu.connect(&sink)?;
//!
//! // 1000 bytes of RAM, prepared for the device (mapped, or bounced below its limit).
//! let buf = Arc::new(BufferMemoryDescriptor::with_bytes(platform.clone(), &[7u8; 1000], Direction::Out)?);
//! let mut cmd = edu.command()?;
//! cmd.set_memory_descriptor(buf)?;
//! cmd.prepare(PrepareOptions::new())?;
//! let ram: Vec<IoSegment> = cmd.segments().collect::<dmakit::Result<_>>()?;
//! let window = [IoSegment { addr: IoAddr(EDU_BUFFER.0), len: 1000 }];
//! let ticket = events.start(&DmaTransfer { source: &ram, dest: &window })?;
//! while done.lock().unwrap().is_empty() {
//!     events.poll(); // services the device: acknowledge, next run, completions in order
//! }
//! assert_eq!(done.lock().unwrap()[0].ticket, ticket);
//! cmd.complete()?;
//! edu.disconnect()?;
//! # Ok(()) }
//! ```
//!
//! | module | what |
//! | --- | --- |
//! | [`Edu`], [`EduOptions`], [`Delivery`] | the driver |
//! | [`regs`] | BAR0's registers |
//! | [`suite`] | tests written once against the seams, run by `cargo test` on the simulator and by the QEMU guest |
//!
//! ## What the driver does
//!
//! * **Probe** ([`Edu::new`]): the IDs, BAR0's identification and liveness registers, an
//!   engine that is idle; reads the function's [`DmaView`](dmakit::device::DmaView) and
//!   turns bus mastering on.
//! * **Address limit**: QEMU's `edu` drives only the address bits of its `dma_mask`
//!   property and *clamps* wider addresses (silently reaching another page), and nothing
//!   on the bus reports the mask, so the driver is told ([`EduOptions::dma_bits`]). Its
//!   [`command`](Edu::command)s carry that limit in their
//!   [`SegmentSpec`](dmakit::dma::SegmentSpec): IO addresses above it are refused at
//!   prepare, physical memory above it (in bypass) is bounced below it, and
//!   [`start`](dmakit::dma::DmaController::start) refuses RAM addresses above it.
//! * **Runs**: a transfer is cut into engine runs of at most [`EDU_MAX_RUN`] bytes (QEMU
//!   7.2 aborts the whole emulator on a 4096-byte DMA) that stay strictly inside the device
//!   window (the same QEMU aborts on a run that reaches the buffer's last byte).
//! * **Completion**: each run ends with the engine's interrupt bit. The function's vector
//!   is routed to the event source ([`Edu::connect`]) and only signals; the servicing
//!   (acknowledge, start the next run, complete transfers in ticket order) happens in the
//!   event source's poll ([`take_completions`](dmakit::dma::CompletionSource::take_completions))
//!   or an explicit [`Edu::service`]. Without a vector (or with
//!   [`EduOptions::interrupts`] off) the same poll finds the bit set: the driver never
//!   waits itself, so it needs no clock; a synchronous start takes a
//!   [`SyncWait`](dmakit::dma::SyncWait) that counts polls or calls the caller's pause.
//! * **Stop** (IOKit `stopDMACommand`): queued transfers complete with
//!   [`Error::Aborted`](dmakit::Error::Aborted) and the bytes they moved, in ticket order,
//!   after the run in flight.
#![no_std]

extern crate alloc;

mod driver;
pub mod regs;
mod runs;
pub mod suite;

pub use driver::{Delivery, Edu, EduOptions, MAX_FIFO_DEPTH, QUERY_HISTORY};

/// `edu`'s vendor ID.
pub const EDU_VENDOR: u16 = 0x1234;
/// `edu`'s device ID.
pub const EDU_DEVICE: u16 = 0x11e8;
/// The device-side window of the DMA engine: device address and length,
/// `[0x40000, 0x41000)`. A run must end before its last byte.
pub const EDU_BUFFER: (u64, u64) = (0x40000, 0x1000);
/// The longest engine run the driver starts.
pub const EDU_MAX_RUN: u64 = 2048;
/// QEMU's default `dma_mask`: 28 address bits.
pub const EDU_DEFAULT_DMA_BITS: u32 = 28;
