//! [`Timer`]: how the driver measures its timeouts and waits between looks at a queue,
//! without `std`.
//!
//! The machine gives the time: a Linux process reads its monotonic clock and yields the CPU
//! (dmakit-linux's `MonotonicTimer`), a kernel reads its TSC or HPET and pauses, the
//! simulator counts polls. [`PollTimer`] is the portable default: every wait counts as a
//! fixed quantum of time, which is exact on a machine whose controller advances per
//! register access (the simulator) and a conservative stand-in elsewhere.
//!
//! ```
//! use dmakit_nvme::{PollTimer, Timer};
//!
//! let t = PollTimer::new(1_000); // each pause counts as 1 µs
//! let start = t.now_ns();
//! for _ in 0..5 {
//!     t.pause();
//! }
//! assert_eq!(t.now_ns() - start, 5_000);
//! ```

use core::sync::atomic::{AtomicU64, Ordering};

/// A monotonic clock and a way to wait a little.
pub trait Timer: Send + Sync {
    /// Nanoseconds since an arbitrary start; never goes back.
    fn now_ns(&self) -> u64;

    /// Waits a little before the driver looks again (spin, yield the CPU, sleep briefly, or
    /// let a simulated device run).
    fn pause(&self);
}

/// A timer that counts pauses: each [`pause`](Timer::pause) advances the clock by
/// `quantum_ns` and spins once.
#[derive(Debug)]
pub struct PollTimer {
    quantum_ns: u64,
    now: AtomicU64,
}

impl PollTimer {
    /// Each pause counts as `quantum_ns` nanoseconds (at least 1).
    pub const fn new(quantum_ns: u64) -> PollTimer {
        PollTimer {
            quantum_ns: if quantum_ns == 0 { 1 } else { quantum_ns },
            now: AtomicU64::new(0),
        }
    }
}

impl Default for PollTimer {
    /// One microsecond per pause.
    fn default() -> Self {
        PollTimer::new(1_000)
    }
}

impl Timer for PollTimer {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    fn pause(&self) {
        self.now.fetch_add(self.quantum_ns, Ordering::Relaxed);
        core::hint::spin_loop();
    }
}

/// A deadline `timeout_ns` from now on `timer`.
pub(crate) struct Deadline<'a> {
    timer: &'a dyn Timer,
    start: u64,
    timeout_ns: u64,
}

impl<'a> Deadline<'a> {
    pub(crate) fn new(timer: &'a dyn Timer, timeout_ns: u64) -> Self {
        Deadline {
            timer,
            start: timer.now_ns(),
            timeout_ns,
        }
    }

    /// Whether the time is up.
    pub(crate) fn passed(&self) -> bool {
        self.elapsed_ns() >= self.timeout_ns
    }

    pub(crate) fn elapsed_ns(&self) -> u64 {
        self.timer.now_ns().saturating_sub(self.start)
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        self.elapsed_ns() / 1_000_000
    }

    pub(crate) fn pause(&self) {
        self.timer.pause()
    }
}
