//! QEMU's `edu` device as a [`DmaController`], driven through VFIO.
//!
//! `edu` (QEMU `docs/specs/edu.rst`, PCI `1234:11e8`) is a teaching device with a small DMA
//! engine: it copies between RAM (through the IOMMU) and a 4 KiB buffer inside the device,
//! at device address `0x40000`, and raises an interrupt when asked. Its BAR0 registers:
//!
//! | offset | register |
//! | --- | --- |
//! | `0x00` | identification `0xRRrr00ed` (major, minor) |
//! | `0x04` | liveness: reads back the bitwise inverse of what was written |
//! | `0x24` / `0x64` | interrupt status / acknowledge (write the bits to clear) |
//! | `0x80` / `0x88` / `0x90` | DMA source / destination / count (64-bit) |
//! | `0x98` | DMA command: bit 0 start (clears when done), bit 1 direction (0: RAM → device, 1: device → RAM), bit 2 interrupt when done |
//!
//! A [`DmaTransfer`] here has one side in RAM (IO addresses from a
//! [`DmaCommand`](dmakit::dma::DmaCommand) mapped through a
//! [`VfioMapper`](crate::vfio::VfioMapper)) and the other inside the device window
//! [`EDU_BUFFER`]. The controller cuts it into engine runs of at most
//! [`EDU_MAX_RUN`] bytes (QEMU 7.2 aborts on a DMA of the full 4096 bytes), starts the
//! first, and on each completion interrupt ([`EduDma::service`], called from the
//! [`Msi`] thread) acknowledges, starts the next run, and when a
//! transfer is done queues its [`DmaCompletion`] and raises the connected
//! [`InterruptSink`] — a [`DmaEventSource`](dmakit::dma::DmaEventSource), which delivers
//! completions in order.
//!
//! The device's `dma_mask` property limits the addresses it can drive (QEMU *clamps*
//! wider addresses, silently reaching the wrong page): give the mapper the same limit
//! ([`EduDma::address_limit`]) and the IOVAs stay below it.

use crate::host::Host;
use crate::vfio::{Bar, IrqKind, Msi, VfioDevice};
use dmakit::dma::{
    CompletionSource, DmaCompletion, DmaController, DmaTransfer, InterruptSink, IoSegment,
};
use dmakit::map::{mapped_read32, mapped_write32, mapped_write64};
use dmakit::{Error, Result};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// The device-side window of the DMA engine: `[0x40000, 0x41000)`; a piece must end before
/// its last byte (QEMU 7.2 aborts on a run that reaches it).
pub const EDU_BUFFER: (u64, u64) = (0x40000, 0x1000);
/// The largest engine run this driver starts (QEMU 7.2 aborts on a 4096-byte DMA).
pub const EDU_MAX_RUN: u64 = 2048;
/// The identification register's low byte.
const EDU_MAGIC: u32 = 0xed;

const REG_ID: u64 = 0x00;
const REG_LIVENESS: u64 = 0x04;
const REG_IRQ_STATUS: u64 = 0x24;
const REG_IRQ_ACK: u64 = 0x64;
const REG_DMA_SRC: u64 = 0x80;
const REG_DMA_DST: u64 = 0x88;
const REG_DMA_COUNT: u64 = 0x90;
const REG_DMA_CMD: u64 = 0x98;
const CMD_START: u32 = 1;
const CMD_TO_RAM: u32 = 2;
const CMD_IRQ: u32 = 4;
/// The interrupt status bit the DMA engine raises.
const IRQ_DMA: u32 = 0x100;
const MAX_DEPTH: u32 = 64;

/// One engine run: `len` bytes from `src` to `dst`.
#[derive(Clone, Copy, Debug)]
struct Run {
    src: u64,
    dst: u64,
    len: u64,
    to_ram: bool,
}

#[derive(Debug)]
struct Job {
    ticket: u64,
    runs: VecDeque<Run>,
    done: u64,
    /// `stop` was called before it finished: it completes with an error after the run in
    /// flight (if any), in ticket order.
    stopped: bool,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Job>,
    /// The run the engine is doing now (of the job at the head of the queue).
    busy: bool,
    finished: VecDeque<DmaCompletion>,
    done_bytes: std::collections::BTreeMap<u64, u64>,
    next_ticket: u64,
    depth: u32,
    interrupts: u64,
}

/// QEMU's edu device as an IODMAController.
pub struct EduDma {
    host: Arc<Host>,
    bar: Bar,
    dma_bits: u32,
    state: Mutex<State>,
    /// Weak: the event source owns the controller, so a strong link back would be a cycle
    /// that keeps the BAR mapped (and the VFIO device open) for ever.
    sink: Mutex<Option<Weak<dyn InterruptSink>>>,
}

impl EduDma {
    /// Checks the identification and liveness registers through `bar` (BAR0 of an edu
    /// function) and turns on bus mastering. `dma_bits` is the device's DMA address width
    /// (its `dma_mask` property: QEMU's default is 28).
    pub fn new(device: &VfioDevice, bar: Bar, host: Arc<Host>, dma_bits: u32) -> Result<Self> {
        let ids = device.pci().ids()?;
        if ids != (0x1234, 0x11e8) {
            return Err(Error::NotAttached {
                what: "edu driver",
                why: "the function is not QEMU's edu device (1234:11e8)",
            });
        }
        let id = mapped_read32(&*host, bar.reg(REG_ID, 4)?)?;
        if id & 0xff != EDU_MAGIC {
            return Err(Error::NotAttached {
                what: "edu driver",
                why: "BAR0's identification register does not read 0x..0000ed",
            });
        }
        let live = bar.reg(REG_LIVENESS, 4)?;
        mapped_write32(&*host, live, 0x1234_5678)?;
        if mapped_read32(&*host, live)? != !0x1234_5678 {
            return Err(Error::NotAttached {
                what: "edu driver",
                why: "the liveness register did not invert what was written",
            });
        }
        if !(1..=64).contains(&dma_bits) {
            return Err(Error::BadArgument {
                what: "edu DMA address bits (1-64)",
                value: dma_bits as u64,
            });
        }
        device.enable_bus_master()?;
        Ok(EduDma {
            host,
            bar,
            dma_bits,
            state: Mutex::new(State {
                depth: 16,
                next_ticket: 1,
                ..State::default()
            }),
            sink: Mutex::new(None),
        })
    }

    /// The identification register (`0x010000ed` for version 1.0).
    pub fn id(&self) -> Result<u32> {
        mapped_read32(&*self.host, self.bar.reg(REG_ID, 4)?)
    }

    /// The highest IOVA the device can drive (`2^dma_bits - 1`).
    pub fn address_limit(&self) -> u64 {
        if self.dma_bits == 64 {
            u64::MAX
        } else {
            (1 << self.dma_bits) - 1
        }
    }

    /// Where completions are signalled (the event source). The controller does not keep
    /// the sink alive: the event source owns the controller, not the other way round.
    pub fn connect(&self, sink: &Arc<dyn InterruptSink>) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(sink));
    }

    /// Enables the device's MSI, serviced by [`service`](Self::service) on the interrupt
    /// thread.
    pub fn enable_msi(self: &Arc<Self>, device: &VfioDevice) -> Result<Msi> {
        let me = self.clone();
        Msi::enable(device, IrqKind::Msi, move |_| {
            let _ = me.service();
        })
    }

    /// Interrupts serviced so far.
    pub fn interrupts(&self) -> u64 {
        self.lock().interrupts
    }

    /// The interrupt handler: acknowledges the device, finishes the current run, starts the
    /// next, and raises the sink when a transfer completed. Returns whether the interrupt
    /// was the DMA engine's.
    pub fn service(&self) -> Result<bool> {
        let status = mapped_read32(&*self.host, self.bar.reg(REG_IRQ_STATUS, 4)?)?;
        if status == 0 {
            return Ok(false);
        }
        mapped_write32(&*self.host, self.bar.reg(REG_IRQ_ACK, 4)?, status)?;
        if status & IRQ_DMA == 0 {
            return Ok(false);
        }
        let completed = {
            let mut s = self.lock();
            s.interrupts += 1;
            let cmd = mapped_read32(&*self.host, self.bar.reg(REG_DMA_CMD, 4)?)?;
            if cmd & CMD_START != 0 {
                return Ok(false); // not finished yet (a stale interrupt)
            }
            s.busy = false;
            if let Some(job) = s.queue.front_mut() {
                if let Some(run) = job.runs.pop_front() {
                    job.done += run.len;
                }
                let (t, d) = (job.ticket, job.done);
                s.done_bytes.insert(t, d);
            }
            let completed = Self::retire(&mut s);
            self.kick(&mut s)?;
            completed
        };
        if completed {
            let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(sink) = sink.and_then(|w| w.upgrade()) {
                sink.raise();
            }
        }
        Ok(true)
    }

    /// Completes, in order, the jobs at the head of the queue that have nothing left to run
    /// (finished, or stopped); returns whether any did.
    fn retire(s: &mut State) -> bool {
        let mut any = false;
        while let Some(job) = s.queue.front() {
            if !(job.runs.is_empty() || job.stopped) {
                break;
            }
            let job = s.queue.pop_front().expect("front exists");
            let status = if job.runs.is_empty() {
                Ok(())
            } else {
                Err(Error::Busy {
                    what: "edu DMA transfer (ticket)",
                    addr: job.ticket,
                    why: "stopped before it finished (bytes says how far it got)",
                })
            };
            s.finished.push_back(DmaCompletion {
                ticket: job.ticket,
                bytes: job.done,
                status,
            });
            any = true;
        }
        any
    }

    /// Starts the next run if the engine is idle.
    fn kick(&self, s: &mut State) -> Result<()> {
        if s.busy {
            return Ok(());
        }
        let Some(run) = s.queue.front().and_then(|j| j.runs.front()).copied() else {
            return Ok(());
        };
        let h = &*self.host;
        mapped_write64(h, self.bar.reg(REG_DMA_SRC, 8)?, run.src)?;
        mapped_write64(h, self.bar.reg(REG_DMA_DST, 8)?, run.dst)?;
        mapped_write64(h, self.bar.reg(REG_DMA_COUNT, 8)?, run.len)?;
        let cmd = CMD_START | CMD_IRQ | if run.to_ram { CMD_TO_RAM } else { 0 };
        mapped_write32(h, self.bar.reg(REG_DMA_CMD, 4)?, cmd)?;
        s.busy = true;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DmaController for EduDma {
    fn start(&self, transfer: &DmaTransfer<'_>) -> Result<u64> {
        let runs = split_runs(transfer, self.address_limit())?;
        let mut s = self.lock();
        if s.queue.len() as u32 >= s.depth {
            return Err(Error::NoResources {
                what: "edu DMA queue",
                limit: s.depth as u64,
            });
        }
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.queue.push_back(Job {
            ticket,
            runs,
            done: 0,
            stopped: false,
        });
        s.done_bytes.insert(ticket, 0);
        self.kick(&mut s)?;
        Ok(ticket)
    }

    fn stop(&self) -> Result<()> {
        let completed = {
            let mut s = self.lock();
            // A run in flight cannot be aborted; its job completes (stopped) when it ends,
            // and the jobs behind it right after, so completions stay in ticket order.
            for j in s.queue.iter_mut() {
                j.stopped = true;
            }
            !s.busy && Self::retire(&mut s)
        };
        if completed {
            let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(sink) = sink.and_then(|w| w.upgrade()) {
                sink.raise();
            }
        }
        Ok(())
    }

    fn query(&self, ticket: u64) -> Result<u64> {
        self.lock()
            .done_bytes
            .get(&ticket)
            .copied()
            .ok_or(Error::NotAllocated {
                free_fn: "EduDma::query (no such ticket)",
                addr: ticket,
            })
    }

    fn fifo_depth(&self) -> u32 {
        self.lock().depth
    }

    fn set_fifo_depth(&self, depth: u32) -> Result<()> {
        if self.valid_fifo_depth(depth) != depth {
            return Err(Error::BadArgument {
                what: "edu DMA queue depth (1-64)",
                value: depth as u64,
            });
        }
        self.lock().depth = depth;
        Ok(())
    }

    fn valid_fifo_depth(&self, depth: u32) -> u32 {
        depth.clamp(1, MAX_DEPTH)
    }
}

impl CompletionSource for EduDma {
    fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
        let done: Vec<DmaCompletion> = self.lock().finished.drain(..).collect();
        for c in done {
            sink(c);
        }
    }
}

/// Cuts a transfer into engine runs: pairs of source and destination pieces, at most
/// [`EDU_MAX_RUN`] bytes each, one side in the device window and the other in RAM at or
/// below `limit`.
fn split_runs(t: &DmaTransfer<'_>, limit: u64) -> Result<VecDeque<Run>> {
    t.bytes()?;
    // Strictly below the end: QEMU 7.2's bounds check is off by one and aborts on a run
    // that ends at the buffer's last byte.
    let in_window =
        |s: &IoSegment| s.addr.0 >= EDU_BUFFER.0 && s.addr.0 + s.len < EDU_BUFFER.0 + EDU_BUFFER.1;
    let mut runs = VecDeque::new();
    let (mut si, mut di, mut so, mut dof) = (0, 0, 0u64, 0u64);
    while si < t.source.len() && di < t.dest.len() {
        let (s, d) = (&t.source[si], &t.dest[di]);
        if s.len == 0 {
            si += 1;
            continue;
        }
        if d.len == 0 {
            di += 1;
            continue;
        }
        let to_ram = match (in_window(s), in_window(d)) {
            (false, true) => false,
            (true, false) => true,
            _ => {
                return Err(Error::BadArgument {
                    what: "edu DMA: exactly one side of each piece must be in the device \
                           buffer [0x40000, 0x40fff) and the other in RAM",
                    value: s.addr.0,
                })
            }
        };
        let ram = if to_ram {
            d.addr.0 + dof
        } else {
            s.addr.0 + so
        };
        let len = (s.len - so).min(d.len - dof).min(EDU_MAX_RUN);
        if ram.checked_add(len - 1).is_none_or(|l| l > limit) {
            return Err(Error::BadArgument {
                what: "edu DMA: a RAM address above the device's dma_mask (QEMU would clamp \
                       it and reach the wrong page): map it below the limit",
                value: ram,
            });
        }
        runs.push_back(Run {
            src: s.addr.0 + so,
            dst: d.addr.0 + dof,
            len,
            to_ram,
        });
        so += len;
        dof += len;
        if so == s.len {
            si += 1;
            so = 0;
        }
        if dof == d.len {
            di += 1;
            dof = 0;
        }
    }
    Ok(runs)
}

impl std::fmt::Debug for EduDma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EduDma")
            .field("bar", &self.bar)
            .field("dma_bits", &self.dma_bits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmakit::IoAddr;

    fn seg(a: u64, len: u64) -> IoSegment {
        IoSegment {
            addr: IoAddr(a),
            len,
        }
    }

    #[test]
    fn transfers_are_cut_into_runs_of_at_most_2k_pairing_pieces() {
        // Two scattered RAM pieces into the device window.
        let src = [seg(0x10_0000, 3000), seg(0x20_0000, 100)];
        let dst = [seg(EDU_BUFFER.0, 3100)];
        let runs = split_runs(
            &DmaTransfer {
                source: &src,
                dest: &dst,
            },
            u64::MAX,
        )
        .unwrap();
        let got: Vec<(u64, u64, u64, bool)> = runs
            .iter()
            .map(|r| (r.src, r.dst, r.len, r.to_ram))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x10_0000, 0x40000, 2048, false),
                (0x10_0000 + 2048, 0x40000 + 2048, 952, false),
                (0x20_0000, 0x40000 + 3000, 100, false),
            ]
        );
        // And back, with a zero-length piece that is skipped.
        let back = [seg(0x30_0000, 0), seg(0x30_0000, 3100)];
        let runs = split_runs(
            &DmaTransfer {
                source: &dst,
                dest: &back,
            },
            u64::MAX,
        )
        .unwrap();
        assert!(runs.iter().all(|r| r.to_ram && r.len <= EDU_MAX_RUN));
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 3100);
    }

    #[test]
    fn transfers_the_device_cannot_do_are_refused() {
        let ram = [seg(0x10_0000, 0x1000)];
        let whole = [seg(EDU_BUFFER.0, 0x1000)];
        let e = split_runs(
            &DmaTransfer {
                source: &ram,
                dest: &whole,
            },
            u64::MAX,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("device buffer"),
            "ends at the last byte: {e}"
        );
        let both = [seg(EDU_BUFFER.0, 16)];
        let e = split_runs(
            &DmaTransfer {
                source: &both,
                dest: &both,
            },
            u64::MAX,
        )
        .unwrap_err();
        assert!(e.to_string().contains("exactly one side"), "{e}");
        let high = [seg(0x1000_0000, 16)];
        let window = [seg(EDU_BUFFER.0, 16)];
        let e = split_runs(
            &DmaTransfer {
                source: &high,
                dest: &window,
            },
            0x0fff_ffff,
        )
        .unwrap_err();
        assert!(e.to_string().contains("dma_mask"), "{e}");
        let short = [seg(EDU_BUFFER.0, 8)];
        assert!(split_runs(
            &DmaTransfer {
                source: &high,
                dest: &short
            },
            u64::MAX
        )
        .is_err());
    }
}
