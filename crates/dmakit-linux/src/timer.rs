//! [`MonotonicTimer`]: the time portable drivers measure their timeouts with, from the
//! process's monotonic clock.
//!
//! ```
//! use dmakit_linux::MonotonicTimer;
//! use dmakit_nvme::Timer;
//!
//! let t = MonotonicTimer::new();
//! let a = t.now_ns();
//! t.pause();
//! assert!(t.now_ns() >= a);
//! ```

use std::time::Instant;

/// A [`Timer`](dmakit_nvme::Timer) on `std::time::Instant`; a pause yields the CPU (the
/// device works on its own, so a waiting driver gives the core to other threads).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicTimer {
    start: Instant,
}

impl MonotonicTimer {
    /// A timer whose zero is now.
    pub fn new() -> Self {
        MonotonicTimer {
            start: Instant::now(),
        }
    }
}

impl Default for MonotonicTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl dmakit_nvme::Timer for MonotonicTimer {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn pause(&self) {
        std::thread::yield_now();
    }
}
