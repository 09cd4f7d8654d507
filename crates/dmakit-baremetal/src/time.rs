//! [`TscClock`]: time from the CPU's time-stamp counter, for drivers' timeouts and pauses.
//!
//! Modern x86 CPUs have an invariant TSC that ticks at a constant rate. Its rate is
//! measured once against the legacy PIT (channel 2, which every PC and QEMU's q35 still
//! have) with [`TscClock::calibrate_with_pit`], or given with
//! [`TscClock::with_frequency`] where the kernel knows it (CPUID leaf 0x15, a hypervisor
//! leaf, a fixed estimate for a known machine).

/// A monotonic clock over the TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscClock {
    hz: u64,
    start: u64,
}

impl TscClock {
    /// A clock for a TSC ticking `hz` times a second (at least 1), counting from now.
    pub fn with_frequency(hz: u64) -> TscClock {
        TscClock {
            hz: hz.max(1),
            start: crate::sys::rdtsc(),
        }
    }

    /// Measures the TSC against 50 ms of the PIT.
    ///
    /// # Safety
    ///
    /// Ring 0 on a machine with a PC-compatible PIT, and nothing else uses PIT channel 2
    /// or port 0x61 during the call.
    pub unsafe fn calibrate_with_pit() -> TscClock {
        const PIT_HZ: u64 = 1_193_182;
        const COUNT: u16 = 59_659; // 50 ms
                                   // SAFETY: the caller's guarantees are those of `pit_tsc_ticks`.
        let ticks = unsafe { crate::sys::pit_tsc_ticks(COUNT) };
        Self::with_frequency(ticks_to_hz(ticks, u64::from(COUNT), PIT_HZ))
    }

    /// TSC ticks per second.
    pub fn hz(&self) -> u64 {
        self.hz
    }

    /// Nanoseconds since the clock was made.
    pub fn now_ns(&self) -> u64 {
        ticks_to_ns(crate::sys::rdtsc().saturating_sub(self.start), self.hz)
    }

    /// Spins for at least `ns` nanoseconds.
    pub fn spin_ns(&self, ns: u64) {
        let until = self.now_ns().saturating_add(ns);
        while self.now_ns() < until {
            core::hint::spin_loop();
        }
    }
}

/// The TSC rate from `ticks` counted while a `ref_hz` reference counted `ref_count`.
fn ticks_to_hz(ticks: u64, ref_count: u64, ref_hz: u64) -> u64 {
    (u128::from(ticks) * u128::from(ref_hz) / u128::from(ref_count.max(1)))
        .min(u128::from(u64::MAX)) as u64
}

fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    (u128::from(ticks) * 1_000_000_000 / u128::from(hz.max(1))).min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_do_not_overflow() {
        assert_eq!(ticks_to_hz(150_000_000, 59_659, 1_193_182), 3_000_005_028);
        assert_eq!(ticks_to_ns(3_000_000_000, 3_000_000_000), 1_000_000_000);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
        assert_eq!(ticks_to_hz(u64::MAX, 0, u64::MAX), u64::MAX);
        let c = TscClock::with_frequency(0);
        assert_eq!(c.hz(), 1);
        let c = TscClock::with_frequency(1_000_000_000);
        let a = c.now_ns();
        c.spin_ns(1000);
        assert!(c.now_ns() >= a + 1000);
    }
}
