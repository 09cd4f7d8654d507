//! Completion by interrupt: an [`InterruptSink`] a queue pair sleeps on.
//!
//! The controller raises MSI-X vector `v` when it posts to a completion queue created with
//! interrupts enabled on `v`; VFIO turns that into an eventfd count, the
//! [`Msi`](crate::vfio::Msi) thread calls [`InterruptSink::raise`] here, and a
//! [`QueuePair`](super::QueuePair) waiting for a completion wakes up instead of spinning.

use dmakit::dma::InterruptSink;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Counts interrupts and wakes whoever waits for the next one.
#[derive(Debug, Default)]
pub struct CompletionSignal {
    raised: Mutex<u64>,
    cv: Condvar,
}

impl CompletionSignal {
    /// A signal with no interrupt seen.
    pub fn new() -> CompletionSignal {
        CompletionSignal::default()
    }

    /// Interrupts raised so far.
    pub fn raised(&self) -> u64 {
        *self.raised.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps until the count exceeds `seen` or `deadline` passes; returns the count.
    pub fn wait_past(&self, seen: u64, deadline: Instant) -> u64 {
        let mut n = self.raised.lock().unwrap_or_else(|p| p.into_inner());
        while *n <= seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left == Duration::ZERO {
                break;
            }
            n = self
                .cv
                .wait_timeout(n, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *n
    }
}

impl InterruptSink for CompletionSignal {
    fn raise(&self) {
        *self.raised.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_all();
    }
}
