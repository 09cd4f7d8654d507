//! The host's registry behind its lock, and copies that finish after the lock is released.
//!
//! [`RegistryLock::lock`] is the only way to the [`Registry`]. A large copy between memory
//! the registry vouches for may run after its guard is dropped, through
//! [`RegistryLock::copy_unlocked`]: a flag, set while the lock is held and cleared by a
//! plain store when the copy ends, makes every later `lock` wait for it. So the copy is as
//! exclusive as one made under the lock (nothing can unmap, lend or touch that memory until
//! it ends), without the unlock right after it: releasing a mutex is an atomic
//! read-modify-write, which waits for every store of the copy to leave the core (tens of
//! nanoseconds after 64 KiB), where the plain store lets them drain while the caller goes
//! on.
//!
//! ```text
//! let s = registry.lock();             // waits for a copy still running, if any
//! let copy = span.loose_copy_to(&dst)?; // checked under the lock
//! unsafe { registry.copy_unlocked(s, copy) }; // flag set, unlock, memmove, flag cleared
//! ```

use crate::registry::Registry;
use crate::sys::LooseCopy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The registry and its lock (see the [module documentation](self)).
#[derive(Debug, Default)]
pub(crate) struct RegistryLock {
    registry: Mutex<Registry>,
    /// A copy started by [`copy_unlocked`](Self::copy_unlocked) is still running.
    copying: AtomicBool,
}

impl RegistryLock {
    /// The registry, locked, with no copy of [`copy_unlocked`](Self::copy_unlocked) running:
    /// whoever holds the guard has the registry's memory to itself. A poisoned lock is
    /// taken over: the registry is updated so that it is consistent before anything that
    /// could panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Registry> {
        let guard = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if self.copying.load(Ordering::Acquire) {
            self.wait_for_copy();
        }
        guard
    }

    /// The registry, to a caller that owns the lock outright (no guard, no copy running).
    pub(crate) fn get_mut(&mut self) -> &mut Registry {
        self.registry.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases `guard` and runs `copy`; returns the bytes copied. Until the copy is done
    /// every [`lock`](Self::lock) waits.
    ///
    /// # Safety
    ///
    /// `guard` must be a guard of this lock, and `copy` made under it from spans of its
    /// registry's memory (allocations or mappings the registry holds, checked under the guard
    /// against lends that conflict with the copy): the lock can keep only its own
    /// registry's memory in place.
    pub(crate) unsafe fn copy_unlocked(
        &self,
        guard: MutexGuard<'_, Registry>,
        copy: LooseCopy,
    ) -> usize {
        // Published by the unlock below (a release): the next holder of the lock sees it.
        self.copying.store(true, Ordering::Relaxed);
        drop(guard);
        // SAFETY: by the caller's contract `copy` was made under `guard` from spans of this
        // registry's memory (mapped, readable or writable, not lent in a conflicting way).
        // The registry is reachable only through `lock`, which waits until `copying` is
        // cleared below, and only a holder of the lock sets it: nothing unmaps, lends or
        // touches that memory until the copy returns, so the spans' invariants still hold.
        let n = unsafe { copy.run() };
        self.copying.store(false, Ordering::Release);
        n
    }

    /// Waits, holding the lock, until the copy running outside it is done.
    #[cold]
    #[inline(never)]
    fn wait_for_copy(&self) {
        let mut waited = 0u32;
        while self.copying.load(Ordering::Acquire) {
            backoff(waited);
            waited = waited.saturating_add(1);
        }
    }
}

/// The `n`-th step of waiting for a copy: a spin while the copy is likely a short one, then
/// yields, then sleeps growing to a millisecond, so that a waiter of higher scheduling
/// priority on the copier's CPU lets the copier run instead of spinning against it.
fn backoff(n: u32) {
    const SPINS: u32 = 256;
    const YIELDS: u32 = 32;
    if n < SPINS {
        std::hint::spin_loop();
    } else if n < SPINS + YIELDS {
        std::thread::yield_now();
    } else {
        let exp = (n - SPINS - YIELDS).min(10);
        std::thread::sleep(std::time::Duration::from_micros(1 << exp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn lock_waits_for_a_copy_in_flight() {
        let r = Arc::new(RegistryLock::default());
        // As `copy_unlocked` leaves it while its copy runs.
        r.copying.store(true, Ordering::Relaxed);
        let ends = {
            let r = r.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let at = Instant::now();
                r.copying.store(false, Ordering::Release);
                at
            })
        };
        let t = Instant::now();
        drop(r.lock());
        let got = Instant::now();
        let ended = ends.join().unwrap();
        assert!(got >= ended, "lock returned before the copy ended");
        assert!(t.elapsed() >= Duration::from_millis(20));
        // Nothing in flight: no wait.
        let t = Instant::now();
        drop(r.lock());
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn backoff_caps_its_sleep_at_a_millisecond() {
        let t = Instant::now();
        for n in [0, 255, 256, 287, 288, 300, u32::MAX] {
            backoff(n);
        }
        // Two sleeps of at most 1 ms and one short one, whatever the step number.
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}
