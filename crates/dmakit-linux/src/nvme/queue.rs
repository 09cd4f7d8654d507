//! One NVMe queue pair: a submission queue the driver fills and a completion queue the
//! controller fills, both in [`DmaBuffer`]s, with their doorbells in BAR0.
//!
//! Submitting writes the 64-byte entry at the tail and rings the SQ tail doorbell with
//! [`mapped_write32`]. Completion is by polling: an entry is new when its phase tag equals
//! the phase the driver expects, which flips every time the head wraps; consuming it rings
//! the CQ head doorbell.

use super::command::{Command, Completion};
use super::dma::DmaBuffer;
use super::signal::CompletionSignal;
use crate::host::Host;
use dmakit::map::mapped_write32;
use dmakit::mapper::Mapper;
use dmakit::{Direction, Error, PhysAddr, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A submission/completion queue pair.
#[derive(Debug)]
pub struct QueuePair {
    id: u16,
    entries: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    next_cid: u16,
    /// Submitted and not yet completed (a queue holds at most `entries - 1`).
    in_flight: u16,
    sq_doorbell: PhysAddr,
    cq_doorbell: PhysAddr,
    host: Arc<Host>,
    /// Set when the completion queue interrupts: `poll` then sleeps on it.
    signal: Option<Arc<CompletionSignal>>,
    /// Completions found after sleeping on the signal.
    woken: u64,
}

impl QueuePair {
    /// Queue memory for queue `id` with `entries` slots; doorbells at `sq_doorbell` and
    /// `cq_doorbell` (bus addresses in BAR0).
    pub(crate) fn new(
        host: &Arc<Host>,
        mapper: &Arc<dyn Mapper>,
        id: u16,
        entries: u16,
        sq_doorbell: PhysAddr,
        cq_doorbell: PhysAddr,
    ) -> Result<QueuePair> {
        if entries < 2 {
            return Err(Error::BadArgument {
                what: "NVMe queue entries (at least 2)",
                value: entries as u64,
            });
        }
        let page = 4096;
        let sq_len = (entries as u64 * 64).next_multiple_of(page);
        let cq_len = (entries as u64 * 16).next_multiple_of(page);
        Ok(QueuePair {
            id,
            entries,
            sq: DmaBuffer::new(host, mapper, sq_len, Direction::Out)?,
            cq: DmaBuffer::new(host, mapper, cq_len, Direction::In)?,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            next_cid: 0,
            in_flight: 0,
            sq_doorbell,
            cq_doorbell,
            host: host.clone(),
            signal: None,
            woken: 0,
        })
    }

    /// The queue identifier (0: admin).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Slots per queue.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// IO address of the submission queue.
    pub fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    /// IO address of the completion queue.
    pub fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// Puts `cmd` (given a fresh command identifier, returned) in the submission queue and
    /// rings the doorbell.
    pub fn submit(&mut self, cmd: Command) -> Result<u16> {
        let next = (self.sq_tail + 1) % self.entries;
        if self.in_flight + 1 >= self.entries {
            return Err(Error::NoResources {
                what: "NVMe submission queue slots",
                limit: self.entries as u64 - 1,
            });
        }
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        let cmd = cmd.with_cid(cid);
        self.sq.write(self.sq_tail as u64 * 64, &cmd.to_bytes())?;
        self.sq_tail = next;
        self.in_flight += 1;
        mapped_write32(&*self.host, self.sq_doorbell, self.sq_tail as u32)?;
        Ok(cid)
    }

    /// Completes by interrupt from now on: `poll` sleeps on `signal` between looks at the
    /// completion queue (which must have been created with interrupts enabled).
    pub(crate) fn set_signal(&mut self, signal: Arc<CompletionSignal>) {
        self.signal = Some(signal);
    }

    /// Completions that were found after an interrupt woke the waiter.
    pub fn completions_after_interrupt(&self) -> u64 {
        self.woken
    }

    /// Waits for the next completion, up to `timeout`: spinning on the phase tag, or, for a
    /// queue that interrupts, sleeping until the interrupt.
    pub fn poll(&mut self, timeout: Duration) -> Result<Completion> {
        let deadline = Instant::now() + timeout;
        let mut slept = false;
        loop {
            // Read the count before looking, so an interrupt between the look and the
            // sleep is not lost.
            let seen = self.signal.as_ref().map(|s| s.raised());
            let mut b = [0u8; 16];
            self.cq.read(self.cq_head as u64 * 16, &mut b)?;
            let c = Completion::from_bytes(&b);
            if c.phase == self.phase {
                self.cq_head += 1;
                if self.cq_head == self.entries {
                    self.cq_head = 0;
                    self.phase = !self.phase;
                }
                self.in_flight = self.in_flight.saturating_sub(1);
                if slept {
                    self.woken += 1;
                }
                mapped_write32(&*self.host, self.cq_doorbell, self.cq_head as u32)?;
                return Ok(c);
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: "NVMe completion (timed out polling the completion queue)",
                    addr: self.cq.iova() + self.cq_head as u64 * 16,
                });
            }
            match (&self.signal, seen) {
                (Some(s), Some(seen)) => {
                    s.wait_past(seen, deadline);
                    slept = true;
                }
                _ => {
                    std::hint::spin_loop();
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Submits `cmd`, waits for its completion and checks its status.
    pub fn execute(&mut self, cmd: Command, timeout: Duration) -> Result<Completion> {
        let cid = self.submit(cmd)?;
        let c = self.poll(timeout)?;
        if c.cid != cid {
            return Err(Error::Internal {
                what: "NVMe completion for another command identifier",
            });
        }
        if c.status != 0 {
            return Err(Error::Os {
                op: "NVMe command (the controller's status; sct << 8 | sc in errno)",
                errno: c.status as i32,
                hint: "see the NVMe status code tables",
            });
        }
        Ok(c)
    }

    /// Unmaps the queue memory.
    pub fn release(self) -> Result<()> {
        self.sq.release()?;
        self.cq.release()
    }
}
