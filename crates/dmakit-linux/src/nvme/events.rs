//! NVMe completions through a [`DmaEventSource`]: the queue pair as a [`CompletionSource`].
//!
//! [`EventQueue`] shares one I/O queue pair between the thread that submits and the event
//! source's work loop. The completion queue raises an MSI-X vector; VFIO turns it into an
//! eventfd count; the [`Msi`](crate::vfio::Msi) thread raises the `DmaEventSource` (an
//! [`InterruptSink`](dmakit::dma::InterruptSink)); its work loop calls
//! [`take_completions`](CompletionSource::take_completions) here, which reaps every new
//! completion (each checked: an identifier that is outstanding, this submission queue), rings
//! the CQ head doorbell once, and hands each to the driver's action as a [`DmaCompletion`]
//! (`ticket` = the command identifier, `bytes` = the transfer's length on success, `status` =
//! the controller's status as an error).
//!
//! ```text
//!  submit_read ──push+ring──► SQ ──► controller ──► CQ ──MSI-X──► eventfd ──► Msi thread
//!                                                                   │
//!   action(DmaCompletion) ◄── DmaEventSource work loop ◄── raise() ◄┘
//! ```

use super::dma::DmaBuffer;
use super::queue::{check_status, QueuePair};
use super::{NamespaceIdentity, PRP_PAGE};
use dmakit::dma::{CompletionSource, DmaCompletion};
use dmakit::{Error, Result};
use dmakit_nvme::command::{Command, NVM_READ};
use std::collections::HashMap;
use std::sync::Mutex;

/// A queue pair whose completions a [`DmaEventSource`](dmakit::dma::DmaEventSource)
/// delivers.
#[derive(Debug)]
pub struct EventQueue {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    qp: QueuePair,
    /// Bytes of each outstanding command, by identifier.
    bytes: HashMap<u16, u64>,
}

impl EventQueue {
    /// Takes `qp` (created with interrupts, and with nothing outstanding).
    pub fn new(qp: QueuePair) -> Result<EventQueue> {
        if qp.outstanding() != 0 {
            return Err(Error::BadArgument {
                what: "NVMe event queue: commands already outstanding on the queue pair",
                value: qp.outstanding() as u64,
            });
        }
        Ok(EventQueue {
            inner: Mutex::new(Inner {
                qp,
                bytes: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Submits a read of `buf`'s whole length (whole blocks, at most two pages, page-aligned
    /// IO address) from block `lba` of `ns` and rings the doorbell; returns the command
    /// identifier its completion will carry as its ticket.
    pub fn submit_read(&self, ns: &NamespaceIdentity, lba: u64, buf: &DmaBuffer) -> Result<u16> {
        let len = buf.descriptor().capacity();
        let bs = ns.block_size as u64;
        if len == 0 || !len.is_multiple_of(bs) || len > 2 * PRP_PAGE {
            return Err(Error::BadArgument {
                what: "NVMe event queue read: whole blocks, at most two pages",
                value: len,
            });
        }
        if !buf.iova().is_multiple_of(PRP_PAGE) {
            return Err(Error::NotAligned {
                what: "NVMe event queue read: buffer IO address (PRP1 and PRP2 need pages)",
                value: buf.iova(),
                align: PRP_PAGE,
            });
        }
        let blocks = len / bs;
        if lba.checked_add(blocks).is_none_or(|end| end > ns.blocks) {
            return Err(Error::OutOfBounds {
                what: "NVMe event queue read: namespace blocks",
                offset: lba,
                len: blocks,
                limit: ns.blocks,
            });
        }
        let prp2 = if len > PRP_PAGE {
            buf.iova() + PRP_PAGE
        } else {
            0
        };
        let cmd = Command::new(NVM_READ, ns.nsid)
            .with_prps(buf.iova(), prp2)
            .with_cdw(10, lba as u32)
            .with_cdw(11, (lba >> 32) as u32)
            .with_cdw(12, blocks as u32 - 1);
        let mut s = self.lock();
        let cid = s.qp.push(cmd)?;
        s.bytes.insert(cid, len);
        s.qp.ring()?;
        Ok(cid)
    }

    /// Commands submitted and not yet reported.
    pub fn outstanding(&self) -> usize {
        self.lock().qp.outstanding()
    }

    /// Gives the queue pair back (to release it).
    pub fn into_inner(self) -> QueuePair {
        self.inner
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .qp
    }
}

impl CompletionSource for EventQueue {
    fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
        let mut s = self.lock();
        loop {
            match s.qp.reap() {
                Ok(Some(c)) => {
                    let len = s.bytes.remove(&c.cid).unwrap_or(0);
                    let status = check_status(&c);
                    sink(DmaCompletion {
                        ticket: c.cid as u64,
                        bytes: if status.is_ok() { len } else { 0 },
                        status,
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    // A completion the queue does not recognise: report it, stop looking.
                    sink(DmaCompletion {
                        ticket: u64::MAX,
                        bytes: 0,
                        status: Err(e),
                    });
                    break;
                }
            }
        }
        if let Err(e) = s.qp.ring_cq() {
            sink(DmaCompletion {
                ticket: u64::MAX,
                bytes: 0,
                status: Err(e),
            });
        }
    }
}
