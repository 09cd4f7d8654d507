//! Submission and completion queues as the controller keeps them.

use super::command::{CompletionEntry, SubmissionEntry};
use std::collections::VecDeque;

/// A submission queue: contiguous entries at `base`.
#[derive(Clone, Debug)]
pub(crate) struct SubQueue {
    pub base: u64,
    pub size: u32,
    /// Next entry the controller fetches.
    pub head: u32,
    /// What the host's last tail doorbell said.
    pub tail: u32,
    pub cqid: u16,
}

/// A completion queue: contiguous entries at `base`, a phase tag, an interrupt vector.
#[derive(Clone, Debug)]
pub(crate) struct CompQueue {
    pub base: u64,
    pub size: u32,
    /// What the host's last head doorbell said.
    pub head: u32,
    /// Next slot the controller writes.
    pub tail: u32,
    pub phase: bool,
    pub vector: u16,
    pub interrupts: bool,
    /// Completions waiting for room (the queue was full).
    pub overflow: VecDeque<CompletionEntry>,
}

impl CompQueue {
    pub fn new(base: u64, size: u32, vector: u16, interrupts: bool) -> Self {
        CompQueue {
            base,
            size,
            head: 0,
            tail: 0,
            phase: true,
            vector,
            interrupts,
            overflow: VecDeque::new(),
        }
    }

    /// Full: one slot is always left empty so the host can tell full from empty.
    pub fn full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }
}

/// A command fetched from a submission queue and not completed yet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InFlight {
    /// The tick at which it is carried out.
    pub due: u64,
    /// Fetch order.
    pub seq: u64,
    pub sqid: u16,
    pub cmd: SubmissionEntry,
}
