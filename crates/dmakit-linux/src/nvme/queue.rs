//! One NVMe queue pair: a submission queue the driver fills and a completion queue the
//! controller fills, both in [`DmaBuffer`]s, with their doorbells in BAR0.
//!
//! Submitting writes the 64-byte entry at the tail and rings the SQ tail doorbell with
//! [`mapped_write32`]. Completion is by polling: an entry is new when its phase tag equals
//! the phase the driver expects, which flips every time the head wraps; consuming it rings
//! the CQ head doorbell.
//!
//! Queue depth: [`QueuePair::push`] queues a command without ringing, [`QueuePair::ring`]
//! rings once for everything pushed, [`QueuePair::reap`] takes one completion if there is
//! one and [`QueuePair::ring_cq`] tells the controller how far the head got. Every command
//! identifier handed out is remembered until its completion arrives ([`Outstanding`]): a
//! completion for an identifier that is not outstanding, or for another submission queue, is
//! an error, not a result.

use super::dma::DmaBuffer;
use super::signal::CompletionSignal;
use crate::host::Host;
use dmakit::map::mapped_write32;
use dmakit::mapper::Mapper;
use dmakit::{Direction, Error, PhysAddr, Result};
use dmakit_nvme::command::{Command, Completion};
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
    /// Command identifiers submitted and not yet completed (a queue holds at most
    /// `entries - 1`).
    outstanding: Outstanding,
    /// The tail the SQ doorbell was last told, and the head the CQ doorbell was last told.
    sq_rung: u16,
    cq_rung: u16,
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
            outstanding: Outstanding::default(),
            sq_rung: 0,
            cq_rung: 0,
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
        let cid = self.push(cmd)?;
        self.ring()?;
        Ok(cid)
    }

    /// Puts `cmd` at the tail with a fresh command identifier (returned) without ringing
    /// the doorbell: the controller sees it at the next [`ring`](Self::ring). At most
    /// `entries - 1` commands may be outstanding.
    pub fn push(&mut self, cmd: Command) -> Result<u16> {
        if self.outstanding.len() + 1 >= self.entries as usize {
            return Err(Error::NoResources {
                what: "NVMe submission queue slots",
                limit: self.entries as u64 - 1,
            });
        }
        let cid = self.outstanding.issue();
        let cmd = cmd.with_cid(cid);
        self.sq.write(self.sq_tail as u64 * 64, &cmd.to_bytes())?;
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        Ok(cid)
    }

    /// Rings the SQ tail doorbell if commands were pushed since it last rang; says whether
    /// it did.
    pub fn ring(&mut self) -> Result<bool> {
        if self.sq_rung == self.sq_tail {
            return Ok(false);
        }
        mapped_write32(&*self.host, self.sq_doorbell, self.sq_tail as u32)?;
        self.sq_rung = self.sq_tail;
        Ok(true)
    }

    /// Commands submitted and not yet reaped.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Takes the completion at the head if its phase tag says it is new, without ringing
    /// the CQ head doorbell ([`ring_cq`](Self::ring_cq) does). A completion for a command
    /// identifier that is not outstanding, or from another submission queue, is an error.
    /// The status is the caller's to check.
    pub fn reap(&mut self) -> Result<Option<Completion>> {
        let mut b = [0u8; 16];
        self.cq.read(self.cq_head as u64 * 16, &mut b)?;
        let c = Completion::from_bytes(&b);
        if c.phase != self.phase {
            return Ok(None);
        }
        self.cq_head += 1;
        if self.cq_head == self.entries {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        if c.sq_id != self.id {
            return Err(Error::BadArgument {
                what: "NVMe completion names another submission queue",
                value: c.sq_id as u64,
            });
        }
        self.outstanding.retire(c.cid)?;
        Ok(Some(c))
    }

    /// Rings the CQ head doorbell if completions were reaped since it last rang.
    pub fn ring_cq(&mut self) -> Result<()> {
        if self.cq_rung != self.cq_head {
            mapped_write32(&*self.host, self.cq_doorbell, self.cq_head as u32)?;
            self.cq_rung = self.cq_head;
        }
        Ok(())
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
            if let Some(c) = self.reap()? {
                if slept {
                    self.woken += 1;
                }
                self.ring_cq()?;
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
        check_status(&c)?;
        Ok(c)
    }

    /// Unmaps the queue memory.
    pub fn release(self) -> Result<()> {
        self.sq.release()?;
        self.cq.release()
    }
}

/// An error for a completion whose status is not success.
pub fn check_status(c: &Completion) -> Result<()> {
    if c.status == 0 {
        return Ok(());
    }
    Err(Error::Os {
        op: "NVMe command (the controller's status; sct << 8 | sc in errno)",
        errno: c.status as i32,
        hint: "see the NVMe status code tables",
    })
}

/// The command identifiers of one queue that are outstanding: handed out in turn (wrapping
/// past 65535, skipping any still outstanding) and retired by their completion, once.
#[derive(Debug, Default)]
pub struct Outstanding {
    next: u16,
    live: std::collections::BTreeSet<u16>,
}

impl Outstanding {
    /// A fresh identifier, now outstanding.
    pub fn issue(&mut self) -> u16 {
        while self.live.contains(&self.next) {
            self.next = self.next.wrapping_add(1);
        }
        let cid = self.next;
        self.next = self.next.wrapping_add(1);
        self.live.insert(cid);
        cid
    }

    /// Retires `cid`; an error if it was not outstanding (never issued, or completed
    /// already).
    pub fn retire(&mut self, cid: u16) -> Result<()> {
        if self.live.remove(&cid) {
            Ok(())
        } else {
            Err(Error::BadArgument {
                what: "NVMe completion for a command identifier that is not outstanding",
                value: cid as u64,
            })
        }
    }

    /// How many are outstanding.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_unique_while_outstanding_and_retire_once() {
        let mut o = Outstanding::default();
        let a: Vec<u16> = (0..32).map(|_| o.issue()).collect();
        assert_eq!(a, (0..32).collect::<Vec<u16>>());
        assert_eq!(o.len(), 32);
        o.retire(5).unwrap();
        assert!(matches!(
            o.retire(5),
            Err(Error::BadArgument { value: 5, .. })
        ));
        assert!(matches!(
            o.retire(40),
            Err(Error::BadArgument { value: 40, .. })
        ));
        assert_eq!(o.len(), 31);
        for c in a.iter().filter(|&&c| c != 5) {
            o.retire(*c).unwrap();
        }
        assert!(o.is_empty());
    }

    #[test]
    fn identifiers_wrap_and_skip_the_ones_still_outstanding() {
        let mut o = Outstanding::default();
        let keep = o.issue(); // 0 stays outstanding
        let one = o.issue();
        o.retire(one).unwrap();
        for _ in 0..65534 {
            let c = o.issue();
            o.retire(c).unwrap();
        }
        // 65535 identifiers issued; the next would be 0, which is still outstanding.
        assert_eq!(o.issue(), 1);
        assert!(o.retire(keep).is_ok());
        assert_eq!(o.issue(), 2);
    }
}
