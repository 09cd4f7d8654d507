//! [`SimDmaEngine`]: a memory-to-memory DMA engine on the simulated machine.
//!
//! It implements [`DmaController`]: each queued transfer is carried out by reading and
//! writing memory the way a device does, through the machine's DRAM (so it sees stale data
//! when the CPU forgot a cache clean) or through a [`SimIommu`] (so wrong IO addresses
//! fault). A finished transfer becomes a [`DmaCompletion`] and raises the engine's
//! interrupt, which an [`InterruptSink`] (a
//! [`DmaEventSource`](dmakit::dma::DmaEventSource)) turns into callbacks.
//!
//! The engine holds at most `fifo_depth` finished-but-unreported transfers; a `start` past
//! that is [`Error::Busy`] until the driver takes completions. (Driving it through a
//! descriptor ring and MMIO registers, as real engines are, is a later step.)

use crate::{Machine, SimIommu};
use dmakit::dma::{DmaCompletion, DmaController, DmaTransfer, InterruptSink};
use dmakit::{Error, IoAddr, PhysAddr, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

const MAX_FIFO: u32 = 256;

#[derive(Debug)]
struct State {
    next_ticket: u64,
    fifo_depth: u32,
    done: VecDeque<DmaCompletion>,
    progress: HashMap<u64, u64>,
}

/// A memory-to-memory DMA engine.
pub struct SimDmaEngine {
    machine: Arc<Machine>,
    iommu: Option<Arc<SimIommu>>,
    state: Mutex<State>,
    irq: Mutex<Option<Arc<dyn InterruptSink>>>,
}

impl SimDmaEngine {
    /// An engine on `machine`, reaching memory through `iommu` when given (IO virtual
    /// addresses) or directly (physical addresses).
    pub fn new(machine: Arc<Machine>, iommu: Option<Arc<SimIommu>>) -> Self {
        SimDmaEngine {
            machine,
            iommu,
            state: Mutex::new(State {
                next_ticket: 1,
                fifo_depth: 16,
                done: VecDeque::new(),
                progress: HashMap::new(),
            }),
            irq: Mutex::new(None),
        }
    }

    /// Connects the completion interrupt.
    pub fn connect(&self, sink: Arc<dyn InterruptSink>) {
        *self.irq.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dev_read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        match &self.iommu {
            Some(i) => i.device_read(IoAddr(addr), buf),
            None => self.machine.device_read(PhysAddr(addr), buf),
        }
    }

    fn dev_write(&self, addr: u64, data: &[u8]) -> Result<()> {
        match &self.iommu {
            Some(i) => i.device_write(IoAddr(addr), data),
            None => self.machine.device_write(PhysAddr(addr), data),
        }
    }

    /// Moves the bytes; returns how many moved and why it stopped early, if it did.
    fn run(&self, t: &DmaTransfer<'_>) -> (u64, std::result::Result<(), Error>) {
        let mut buf = [0u8; 4096];
        let (mut si, mut so) = (0usize, 0u64);
        let (mut di, mut doff) = (0usize, 0u64);
        let mut moved = 0u64;
        while si < t.source.len() && di < t.dest.len() {
            let s = t.source[si];
            let d = t.dest[di];
            let n = (s.len - so).min(d.len - doff).min(buf.len() as u64) as usize;
            if let Err(e) = self.dev_read(s.addr.0 + so, &mut buf[..n]) {
                return (moved, Err(e));
            }
            if let Err(e) = self.dev_write(d.addr.0 + doff, &buf[..n]) {
                return (moved, Err(e));
            }
            moved += n as u64;
            so += n as u64;
            doff += n as u64;
            if so == s.len {
                si += 1;
                so = 0;
            }
            if doff == d.len {
                di += 1;
                doff = 0;
            }
        }
        (moved, Ok(()))
    }
}

impl DmaController for SimDmaEngine {
    fn start(&self, transfer: &DmaTransfer<'_>) -> Result<u64> {
        transfer.bytes()?;
        let ticket = {
            let mut s = self.lock();
            if s.done.len() >= s.fifo_depth as usize {
                return Err(Error::Busy {
                    what: "DMA engine FIFO",
                    addr: s.fifo_depth as u64,
                    why: "full: take completions first",
                });
            }
            s.next_ticket += 1;
            s.next_ticket - 1
        };
        let (bytes, status) = self.run(transfer);
        {
            let mut s = self.lock();
            s.progress.insert(ticket, bytes);
            s.done.push_back(DmaCompletion {
                ticket,
                bytes,
                status,
            });
        }
        let irq = self.irq.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(sink) = irq {
            sink.raise();
        }
        Ok(ticket)
    }

    fn stop(&self) -> Result<()> {
        // Transfers run to completion when started: nothing is ever in flight to abort.
        Ok(())
    }

    fn query(&self, ticket: u64) -> Result<u64> {
        self.lock()
            .progress
            .get(&ticket)
            .copied()
            .ok_or(Error::BadArgument {
                what: "no DMA transfer with this ticket",
                value: ticket,
            })
    }

    fn fifo_depth(&self) -> u32 {
        self.lock().fifo_depth
    }

    fn set_fifo_depth(&self, depth: u32) -> Result<()> {
        if self.valid_fifo_depth(depth) != depth {
            return Err(Error::BadArgument {
                what: "DMA engine FIFO depth (1..=256)",
                value: depth as u64,
            });
        }
        self.lock().fifo_depth = depth;
        Ok(())
    }

    fn valid_fifo_depth(&self, depth: u32) -> u32 {
        depth.clamp(1, MAX_FIFO)
    }

    fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
        let done: Vec<DmaCompletion> = self.lock().done.drain(..).collect();
        done.into_iter().for_each(sink);
    }
}

impl std::fmt::Debug for SimDmaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDmaEngine")
            .field("iommu", &self.iommu.is_some())
            .field("fifo_depth", &self.fifo_depth())
            .finish()
    }
}
