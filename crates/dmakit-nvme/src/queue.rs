//! One submission/completion queue pair as the driver keeps it: the two rings in
//! [`DmaBuffer`]s, their doorbells, the phase tag, and the command identifiers outstanding.
//!
//! Submitting writes the 64-byte entry at the tail ([`Ring::push`]) and rings the SQ tail
//! doorbell ([`Ring::ring`]). A completion is new when its phase tag equals the phase the
//! driver expects, which flips every time the head wraps ([`Ring::reap`]); consuming
//! completions rings the CQ head doorbell ([`Ring::ring_cq`]). A completion for an
//! identifier that is not outstanding, or naming another submission queue, is an error,
//! not a result.

use crate::command::{Command, Completion};
use crate::dma::DmaBuffer;
use crate::regs::Regs;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use dmakit::device::DmaView;
use dmakit::map::mapped_write32;
use dmakit::platform::Platform;
use dmakit::{Error, PhysAddr, Result};

/// Bytes of a submission queue entry.
pub(crate) const SQE: u64 = 64;
/// Bytes of a completion queue entry.
pub(crate) const CQE: u64 = 16;

/// A queue pair.
pub(crate) struct Ring<P: Platform + Clone + 'static> {
    pub(crate) qid: u16,
    pub(crate) entries: u16,
    pub(crate) sq: DmaBuffer<P>,
    pub(crate) cq: DmaBuffer<P>,
    sq_tail: u16,
    sq_rung: u16,
    cq_head: u16,
    cq_rung: u16,
    phase: bool,
    pub(crate) outstanding: Outstanding,
    /// Identifiers pushed since the SQ doorbell last rang.
    unrung: Vec<u16>,
    sq_db: PhysAddr,
    cq_db: PhysAddr,
}

impl<P: Platform + Clone + Send + Sync + 'static> Ring<P> {
    /// Queue memory for queue `qid` with `entries` slots (2 or more).
    pub(crate) fn new(
        platform: &P,
        view: &DmaView,
        regs: &Regs,
        qid: u16,
        entries: u16,
    ) -> Result<Ring<P>> {
        if entries < 2 {
            return Err(Error::BadArgument {
                what: "NVMe queue entries (at least 2)",
                value: entries as u64,
            });
        }
        let (sq_db, cq_db) = regs.doorbells(qid)?;
        let page = crate::prp::PRP_PAGE;
        let sq = DmaBuffer::new(
            platform,
            view,
            (entries as u64 * SQE).next_multiple_of(page),
        )?;
        let cq = DmaBuffer::new(
            platform,
            view,
            (entries as u64 * CQE).next_multiple_of(page),
        )?;
        Ok(Ring {
            qid,
            entries,
            sq,
            cq,
            sq_tail: 0,
            sq_rung: 0,
            cq_head: 0,
            cq_rung: 0,
            phase: true,
            outstanding: Outstanding::default(),
            unrung: Vec::new(),
            sq_db,
            cq_db,
        })
    }

    /// Back to the state of a queue the controller just created: empty rings, phase 1,
    /// nothing outstanding. Returns the identifiers that were outstanding.
    pub(crate) fn reset(&mut self) -> Result<Vec<u16>> {
        self.cq.fill(0)?;
        self.sq_tail = 0;
        self.sq_rung = 0;
        self.cq_head = 0;
        self.cq_rung = 0;
        self.phase = true;
        self.unrung.clear();
        Ok(self.outstanding.drain())
    }

    /// Puts `cmd` at the tail with a fresh command identifier (returned) without ringing:
    /// the controller sees it at the next [`ring`](Self::ring). At most `entries - 1`
    /// commands may be outstanding.
    pub(crate) fn push(&mut self, cmd: Command) -> Result<u16> {
        if self.outstanding.len() + 1 >= self.entries as usize {
            return Err(Error::NoResources {
                what: "NVMe submission queue slots",
                limit: self.entries as u64 - 1,
            });
        }
        let cid = self.outstanding.peek();
        self.sq
            .write(self.sq_tail as u64 * SQE, &cmd.with_cid(cid).to_bytes())?;
        self.outstanding.issue();
        self.unrung.push(cid);
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        Ok(cid)
    }

    /// Rings the SQ tail doorbell if commands were pushed since it last rang.
    pub(crate) fn ring(&mut self, platform: &P) -> Result<()> {
        if self.sq_rung != self.sq_tail {
            mapped_write32(platform, self.sq_db, self.sq_tail as u32)?;
            self.sq_rung = self.sq_tail;
        }
        self.unrung.clear();
        Ok(())
    }

    /// Takes back the commands pushed since the doorbell last rang (the controller never
    /// saw them), returning their identifiers.
    pub(crate) fn unpush_unrung(&mut self) -> Vec<u16> {
        self.sq_tail = self.sq_rung;
        let cids = core::mem::take(&mut self.unrung);
        for &cid in &cids {
            let _ = self.outstanding.retire(cid);
        }
        cids
    }

    /// Takes the completion at the head if its phase tag says it is new (the CQ head
    /// doorbell is [`ring_cq`](Self::ring_cq)'s). The status is the caller's to check.
    pub(crate) fn reap(&mut self) -> Result<Option<Completion>> {
        let mut b = [0u8; CQE as usize];
        self.cq.read(self.cq_head as u64 * CQE, &mut b)?;
        let c = Completion::from_bytes(&b);
        if c.phase != self.phase {
            return Ok(None);
        }
        self.cq_head += 1;
        if self.cq_head == self.entries {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        if c.sq_id != self.qid {
            return Err(Error::BadArgument {
                what: "NVMe completion names another submission queue",
                value: c.sq_id as u64,
            });
        }
        self.outstanding.retire(c.cid)?;
        Ok(Some(c))
    }

    /// Rings the CQ head doorbell if completions were taken since it last rang.
    pub(crate) fn ring_cq(&mut self, platform: &P) -> Result<()> {
        if self.cq_rung != self.cq_head {
            mapped_write32(platform, self.cq_db, self.cq_head as u32)?;
            self.cq_rung = self.cq_head;
        }
        Ok(())
    }
}

/// The command identifiers of one queue that are outstanding: handed out in turn (wrapping
/// past 65535, skipping any still outstanding) and retired by their completion, once.
#[derive(Debug, Default)]
pub struct Outstanding {
    next: u16,
    live: BTreeSet<u16>,
}

impl Outstanding {
    /// The identifier [`issue`](Self::issue) hands out next.
    pub fn peek(&mut self) -> u16 {
        while self.live.contains(&self.next) {
            self.next = self.next.wrapping_add(1);
        }
        self.next
    }

    /// A fresh identifier, now outstanding.
    pub fn issue(&mut self) -> u16 {
        let cid = self.peek();
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

    /// Forgets every outstanding identifier (the controller was reset), returning them.
    pub fn drain(&mut self) -> Vec<u16> {
        core::mem::take(&mut self.live).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn identifiers_are_unique_while_outstanding_and_retire_once() {
        let mut o = Outstanding::default();
        let a: Vec<u16> = (0..32).map(|_| o.issue()).collect();
        assert_eq!(a, (0..32).collect::<Vec<u16>>());
        o.retire(5).unwrap();
        assert!(matches!(
            o.retire(5),
            Err(Error::BadArgument { value: 5, .. })
        ));
        assert!(o.retire(40).is_err());
        assert_eq!(o.len(), 31);
        let mut left = o.drain();
        left.sort();
        assert_eq!(left.len(), 31);
        assert!(o.is_empty());
        assert_eq!(o.issue(), 32);
    }

    #[test]
    fn identifiers_wrap_and_skip_the_ones_still_outstanding() {
        let mut o = Outstanding::default();
        let keep = o.issue();
        let one = o.issue();
        o.retire(one).unwrap();
        for _ in 0..65534 {
            let c = o.issue();
            o.retire(c).unwrap();
        }
        assert_eq!(o.issue(), 1);
        assert!(o.retire(keep).is_ok());
        assert_eq!(vec![o.issue()], vec![2]);
    }
}
