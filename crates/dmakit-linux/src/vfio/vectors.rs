//! A function's interrupt vectors, each an eventfd, delivered to the sink of its vector.
//!
//! VFIO signals vector *n* by incrementing the eventfd it was given for *n*. A
//! [`Dispatcher`] owns one eventfd per vector and one thread that sleeps in `poll` on all of
//! them (and on a private wake-up eventfd used only to stop it), so any number of vectors
//! costs one thread and no busy loop. When vector *n*'s eventfd is readable the thread reads
//! (and so resets) its count, adds it to the vector's counter and calls the sink registered
//! for *n*, if any, while holding the sink table's lock: once
//! [`set_sink`](Dispatcher::set_sink) has replaced or removed a sink and returned, that sink
//! is never called again.
//!
//! The dispatcher knows nothing about VFIO: [`VfioFunction`](super::VfioFunction) hands its
//! eventfds to the kernel with `VFIO_DEVICE_SET_IRQS`, and the unit tests below signal them
//! by writing to them, as the kernel would.

use crate::hints::{intern, os};
use dmakit::dma::InterruptSink;
use dmakit::{Error, Result};
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// What the dispatcher thread and its owner share.
struct Shared {
    sinks: Mutex<Vec<Option<Arc<dyn InterruptSink>>>>,
    counts: Vec<AtomicU64>,
    stop: AtomicBool,
}

impl Shared {
    fn sinks(&self) -> MutexGuard<'_, Vec<Option<Arc<dyn InterruptSink>>>> {
        // A sink that panicked poisons the lock; the table itself is always consistent.
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One eventfd per vector and the thread that delivers them. Dropping it stops and joins
/// the thread and closes the eventfds (disable them in the kernel first).
pub(crate) struct Dispatcher {
    events: Arc<Vec<OwnedFd>>,
    wake: Arc<OwnedFd>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A new non-blocking eventfd.
fn new_eventfd() -> Result<OwnedFd> {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| os("eventfd", e, ""))
}

impl Dispatcher {
    /// Makes `vectors` eventfds and starts the thread that waits on them.
    pub(crate) fn start(vectors: u32) -> Result<Dispatcher> {
        if vectors == 0 {
            return Err(Error::BadArgument {
                what: "interrupt dispatcher with no vectors",
                value: 0,
            });
        }
        let events = Arc::new(
            (0..vectors)
                .map(|_| new_eventfd())
                .collect::<Result<Vec<_>>>()?,
        );
        let wake = Arc::new(new_eventfd()?);
        let shared = Arc::new(Shared {
            sinks: Mutex::new((0..vectors).map(|_| None).collect()),
            counts: (0..vectors).map(|_| AtomicU64::new(0)).collect(),
            stop: AtomicBool::new(false),
        });
        let (ev, wk, sh) = (events.clone(), wake.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("dmakit-vfio-vectors".into())
            .spawn(move || run(&ev, &wk, &sh))
            .map_err(|_| Error::NoResources {
                what: "threads (the interrupt thread could not start)",
                limit: 0,
            })?;
        Ok(Dispatcher {
            events,
            wake,
            shared,
            thread: Some(thread),
        })
    }

    /// How many vectors it has.
    pub(crate) fn vectors(&self) -> u32 {
        self.events.len() as u32
    }

    /// The eventfds, vector 0 first (for `VFIO_DEVICE_SET_IRQS`).
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.events.iter().map(AsFd::as_fd).collect()
    }

    /// Routes `vector` to `sink`, or stops delivering it (`None`). When this returns, the
    /// sink it replaced is not running and will not be called again.
    pub(crate) fn set_sink(&self, vector: u32, sink: Option<Arc<dyn InterruptSink>>) -> Result<()> {
        let n = self.vectors();
        let mut sinks = self.shared.sinks();
        let slot = sinks
            .get_mut(vector as usize)
            .ok_or_else(|| Error::BadArgument {
                what: intern(
                    format!(
                        "interrupt vector: {n} vector(s) are enabled (0..{n}), the kernel granted no more"
                    ),
                    "interrupt vector: above the vectors enabled",
                ),
                value: vector as u64,
            })?;
        *slot = sink;
        Ok(())
    }

    /// Interrupts counted on `vector` so far (0 for a vector it does not have).
    pub(crate) fn count(&self, vector: u32) -> u64 {
        self.shared
            .counts
            .get(vector as usize)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Whether `vector` has a sink.
    pub(crate) fn has_sink(&self, vector: u32) -> bool {
        self.shared
            .sinks()
            .get(vector as usize)
            .is_some_and(Option::is_some)
    }
}

/// The thread: sleeps in `poll` on every vector's eventfd and the wake-up eventfd.
fn run(events: &[OwnedFd], wake: &OwnedFd, shared: &Shared) {
    let mut fds: Vec<PollFd<'_>> = events
        .iter()
        .chain(std::iter::once(wake))
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    loop {
        fds.iter_mut().for_each(PollFd::clear_revents);
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(_) => return,
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        for (v, (fd, p)) in events.iter().zip(&fds).enumerate() {
            if p.revents().is_empty() {
                continue;
            }
            let mut b = [0u8; 8];
            // Non-blocking: a spurious wake-up reads EAGAIN and is ignored.
            if !matches!(rustix::io::read(fd, &mut b), Ok(8)) {
                continue;
            }
            let n = u64::from_ne_bytes(b);
            if let Some(c) = shared.counts.get(v) {
                c.fetch_add(n, Ordering::AcqRel);
            }
            let sinks = shared.sinks();
            if let Some(Some(sink)) = sinks.get(v) {
                sink.raise();
            }
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts: Vec<u64> = (0..self.vectors()).map(|v| self.count(v)).collect();
        f.debug_struct("Dispatcher")
            .field("vectors", &self.vectors())
            .field("counts", &counts)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;
    use std::time::{Duration, Instant};

    /// A sink that counts its raises and lets a test wait for them.
    #[derive(Default)]
    struct Counter {
        n: Mutex<u64>,
        cv: Condvar,
    }

    impl InterruptSink for Counter {
        fn raise(&self) {
            *self.n.lock().unwrap() += 1;
            self.cv.notify_all();
        }
    }

    impl Counter {
        fn get(&self) -> u64 {
            *self.n.lock().unwrap()
        }

        /// Waits up to 5 s until at least `n` raises.
        fn wait(&self, n: u64) -> u64 {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut g = self.n.lock().unwrap();
            while *g < n {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                g = self.cv.wait_timeout(g, left).unwrap().0;
            }
            *g
        }
    }

    /// What the kernel does to signal vector `v`.
    fn signal(d: &Dispatcher, v: usize, times: u64) {
        let fd = d.fds()[v].try_clone_to_owned().unwrap();
        rustix::io::write(&fd, &times.to_ne_bytes()).unwrap();
    }

    fn wait_count(d: &Dispatcher, v: u32, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.count(v) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        d.count(v)
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "the dispatcher thread blocks in ppoll, which Miri does not emulate"
    )]
    fn each_vector_reaches_its_own_sink() {
        let d = Dispatcher::start(4).unwrap();
        assert_eq!(d.vectors(), 4);
        let (a, b) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
        d.set_sink(0, Some(a.clone())).unwrap();
        d.set_sink(3, Some(b.clone())).unwrap();
        assert!(d.has_sink(0) && d.has_sink(3) && !d.has_sink(1));
        signal(&d, 3, 1);
        assert_eq!(b.wait(1), 1);
        assert_eq!(a.get(), 0, "vector 3 raised vector 0's sink");
        signal(&d, 0, 5);
        assert_eq!(
            a.wait(1),
            1,
            "one wake-up, however many interrupts it counted"
        );
        assert_eq!(wait_count(&d, 0, 5), 5);
        assert_eq!(d.count(3), 1);
        // A vector without a sink is counted, and nobody is called.
        signal(&d, 1, 2);
        assert_eq!(wait_count(&d, 1, 2), 2);
        assert_eq!((a.get(), b.get()), (1, 1));
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "the dispatcher thread blocks in ppoll, which Miri does not emulate"
    )]
    fn a_removed_sink_is_never_called_again() {
        let d = Dispatcher::start(2).unwrap();
        let a = Arc::new(Counter::default());
        d.set_sink(1, Some(a.clone())).unwrap();
        signal(&d, 1, 1);
        assert_eq!(a.wait(1), 1);
        d.set_sink(1, None).unwrap();
        assert!(!d.has_sink(1));
        signal(&d, 1, 1);
        assert_eq!(wait_count(&d, 1, 2), 2, "still counted");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(a.get(), 1, "a detached sink was raised");
        // Re-attached, it is called again.
        d.set_sink(1, Some(a.clone())).unwrap();
        signal(&d, 1, 1);
        assert_eq!(a.wait(2), 2);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "the dispatcher thread blocks in ppoll, which Miri does not emulate"
    )]
    fn vectors_outside_the_set_are_refused() {
        assert!(matches!(
            Dispatcher::start(0),
            Err(Error::BadArgument { .. })
        ));
        let d = Dispatcher::start(2).unwrap();
        let a: Arc<dyn InterruptSink> = Arc::new(Counter::default());
        let e = d.set_sink(2, Some(a)).unwrap_err();
        assert!(matches!(e, Error::BadArgument { value: 2, .. }), "{e}");
        // The count is in the text unless the process's table of such texts is full.
        let t = e.to_string();
        assert!(
            t.contains("2 vector(s) are enabled") || t.contains("above the vectors enabled"),
            "{e}"
        );
        assert!(d.set_sink(u32::MAX, None).is_err());
        assert_eq!(d.count(u32::MAX), 0);
        assert!(!d.has_sink(u32::MAX));
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "the dispatcher thread blocks in ppoll, which Miri does not emulate"
    )]
    fn drop_stops_the_thread_and_releases_the_sinks() {
        let d = Dispatcher::start(3).unwrap();
        let a = Arc::new(Counter::default());
        d.set_sink(2, Some(a.clone())).unwrap();
        assert_eq!(Arc::strong_count(&a), 2);
        let t = Instant::now();
        drop(d);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "drop did not wake the thread"
        );
        assert_eq!(Arc::strong_count(&a), 1, "the sink outlived the dispatcher");
    }
}
