//! Queue depth: many reads outstanding on one I/O queue pair at once.
//!
//! [`NvmeController::read_queued`] keeps up to one command per buffer outstanding: it fills
//! every free buffer with the next read (one SQ entry each, PRP1 and PRP2 straight from the
//! buffer's IO address: its `DmaCommand` was prepared once, when the buffer was made, and is
//! reused for every read), rings the SQ doorbell once for the batch, spins on the completion
//! queue's phase tags until at least one completion arrives, takes every completion that is
//! there (each checked: an identifier this run submitted, success status), rings the CQ
//! doorbell once, hands each finished buffer to the caller, and refills.

use super::dma::DmaBuffer;
use super::queue::{check_status, QueuePair};
use super::{NamespaceIdentity, NvmeController, PRP_PAGE};
use dmakit::{Error, Result};
use dmakit_nvme::command::{Command, NVM_READ};
use std::time::{Duration, Instant};

/// What one [`NvmeController::read_queued`] run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuedStats {
    /// Read commands completed.
    pub commands: u64,
    /// The most commands outstanding at once.
    pub max_outstanding: usize,
    /// SQ tail doorbell writes (one per refill batch).
    pub sq_doorbells: u64,
    /// CQ head doorbell writes (one per batch of completions taken).
    pub cq_doorbells: u64,
    /// Wall time from the first submission to the last completion.
    pub elapsed: Duration,
}

impl NvmeController {
    /// Reads, for every `lbas[i]`, one buffer's worth of blocks from namespace `ns` into
    /// one of `buffers` (all the same size: one or two pages of whole blocks, page aligned),
    /// with up to `buffers.len()` commands outstanding on `qp` (which must have none, and
    /// more slots than buffers). `done(i, buffer)` gets each finished read before its buffer
    /// is reused; an error from it stops the run (after the reads in flight complete).
    pub fn read_queued(
        &self,
        qp: &mut QueuePair,
        ns: &NamespaceIdentity,
        lbas: &[u64],
        buffers: &[DmaBuffer],
        mut done: impl FnMut(usize, &DmaBuffer) -> Result<()>,
    ) -> Result<QueuedStats> {
        let depth = buffers.len();
        if depth == 0 || depth >= qp.entries() as usize {
            return Err(Error::BadArgument {
                what: "NVMe queued reads: 1 to (queue entries - 1) buffers",
                value: depth as u64,
            });
        }
        if qp.outstanding() != 0 {
            return Err(Error::BadArgument {
                what: "NVMe queued reads: commands already outstanding on the queue pair",
                value: qp.outstanding() as u64,
            });
        }
        let bs = ns.block_size as u64;
        let len = buffers[0].descriptor().capacity();
        for b in buffers {
            let l = b.descriptor().capacity();
            if l != len || l == 0 || !l.is_multiple_of(bs) || l > 2 * PRP_PAGE {
                return Err(Error::BadArgument {
                    what:
                        "NVMe queued reads: buffers all one size, whole blocks, at most two pages",
                    value: l,
                });
            }
            if !b.iova().is_multiple_of(PRP_PAGE) {
                return Err(Error::NotAligned {
                    what: "NVMe queued reads: buffer IO address (PRP1 and PRP2 need pages)",
                    value: b.iova(),
                    align: PRP_PAGE,
                });
            }
        }
        let blocks = len / bs;
        for &lba in lbas {
            if lba.checked_add(blocks).is_none_or(|end| end > ns.blocks) {
                return Err(Error::OutOfBounds {
                    what: "NVMe queued reads: namespace blocks",
                    offset: lba,
                    len: blocks,
                    limit: ns.blocks,
                });
            }
        }
        let mut stats = QueuedStats::default();
        let mut free: Vec<usize> = (0..depth).rev().collect();
        // (command identifier, buffer, index into lbas) of every read in flight.
        let mut in_flight: Vec<(u16, usize, usize)> = Vec::with_capacity(depth);
        let mut next = 0;
        let mut failure: Option<Error> = None;
        let start = Instant::now();
        loop {
            while failure.is_none() && next < lbas.len() {
                let Some(slot) = free.pop() else { break };
                let b = &buffers[slot];
                let prp2 = if len > PRP_PAGE {
                    b.iova() + PRP_PAGE
                } else {
                    0
                };
                let lba = lbas[next];
                let cmd = Command::new(NVM_READ, ns.nsid)
                    .with_prps(b.iova(), prp2)
                    .with_cdw(10, lba as u32)
                    .with_cdw(11, (lba >> 32) as u32)
                    .with_cdw(12, blocks as u32 - 1);
                let cid = qp.push(cmd)?;
                in_flight.push((cid, slot, next));
                next += 1;
            }
            stats.max_outstanding = stats.max_outstanding.max(in_flight.len());
            if qp.outstanding() != in_flight.len() {
                return Err(Error::Internal {
                    what: "NVMe queued reads: the queue's outstanding count disagrees",
                });
            }
            if qp.ring()? {
                stats.sq_doorbells += 1;
            }
            if in_flight.is_empty() {
                break;
            }
            let deadline = Instant::now() + self.timeout;
            let mut got = 0;
            loop {
                match qp.reap()? {
                    Some(c) => {
                        got += 1;
                        let at = in_flight
                            .iter()
                            .position(|&(cid, _, _)| cid == c.cid)
                            .ok_or(Error::Internal {
                                what: "NVMe queued reads: a completion the queue accepted is not in flight here",
                            })?;
                        let (_, slot, i) = in_flight.swap_remove(at);
                        stats.commands += 1;
                        let r = check_status(&c).and_then(|()| done(i, &buffers[slot]));
                        if let Err(e) = r {
                            failure.get_or_insert(e);
                        }
                        free.push(slot);
                    }
                    None if got > 0 => break,
                    None => {
                        if Instant::now() >= deadline {
                            return Err(Error::NotReady {
                                what: "NVMe queued reads: no completion within CAP.TO",
                                addr: in_flight.len() as u64,
                            });
                        }
                        std::hint::spin_loop();
                    }
                }
            }
            qp.ring_cq()?;
            stats.cq_doorbells += 1;
        }
        stats.elapsed = start.elapsed();
        match failure {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}
