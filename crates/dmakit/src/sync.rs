//! [`Mutex`]: the lock dmakit's shared types use, fitted to the platform.
//!
//! With the `std` feature it blocks (the standard library's mutex: a waiter sleeps instead
//! of burning the CPU the holder needs, which on a machine with fewer cores than threads is
//! the difference between progress and collapse); without it, it spins (a kernel without a
//! scheduler has nothing to sleep on). Poisoning is ignored: a panic elsewhere does not make
//! dmakit's bookkeeping unusable, and no dmakit lock is held across user code.
//!
//! ```
//! use dmakit::sync::Mutex;
//!
//! let m = Mutex::new(1);
//! *m.lock() += 1;
//! assert_eq!(*m.lock(), 2);
//! assert_eq!(m.into_inner(), 2);
//! ```

/// A mutual-exclusion lock (blocking with `std`, spinning without).
#[derive(Default)]
pub struct Mutex<T: ?Sized> {
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
    #[cfg(all(feature = "std", not(loom)))]
    inner: std::sync::Mutex<T>,
    #[cfg(all(not(feature = "std"), not(loom)))]
    inner: spin::Mutex<T>,
}

/// The guard [`Mutex::lock`] returns.
#[cfg(loom)]
pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
/// The guard [`Mutex::lock`] returns.
#[cfg(all(feature = "std", not(loom)))]
pub type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;
/// The guard [`Mutex::lock`] returns.
#[cfg(all(not(feature = "std"), not(loom)))]
pub type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;

/// The atomics dmakit's shared types count with (loom's when built with `--cfg loom`, so
/// its model checker sees every access).
pub(crate) mod atomic {
    #[cfg(not(loom))]
    pub(crate) use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
}

/// Defines `$name` as a `const fn`, or as a plain `fn` under `--cfg loom` (loom's
/// primitives cannot be made in a constant).
macro_rules! const_unless_loom {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) -> $r:ty $body:block) => {
        $(#[$m])*
        #[cfg(not(loom))]
        $vis const fn $name($($a: $t),*) -> $r $body
        $(#[$m])*
        #[cfg(loom)]
        $vis fn $name($($a: $t),*) -> $r $body
    };
}
pub(crate) use const_unless_loom;

#[cfg(not(loom))]
impl<T> Mutex<T> {
    /// A lock around `value`.
    pub const fn new(value: T) -> Self {
        Mutex {
            #[cfg(feature = "std")]
            inner: std::sync::Mutex::new(value),
            #[cfg(not(feature = "std"))]
            inner: spin::Mutex::new(value),
        }
    }
}

#[cfg(loom)]
impl<T> Mutex<T> {
    /// A lock around `value` (loom's, for the model checker).
    pub fn new(value: T) -> Self {
        Mutex {
            inner: loom::sync::Mutex::new(value),
        }
    }
}

impl<T> Mutex<T> {
    /// The value, the lock gone.
    pub fn into_inner(self) -> T {
        #[cfg(any(feature = "std", loom))]
        return self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        #[cfg(not(any(feature = "std", loom)))]
        return self.inner.into_inner();
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Waits for the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(any(feature = "std", loom))]
        return self.inner.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(not(any(feature = "std", loom)))]
        return self.inner.lock();
    }

    /// The lock if it is free now.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        #[cfg(any(feature = "std", loom))]
        return match self.inner.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        #[cfg(not(any(feature = "std", loom)))]
        return self.inner.try_lock();
    }

    /// The value, through exclusive access (no locking).
    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(any(feature = "std", loom))]
        return self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        #[cfg(not(any(feature = "std", loom)))]
        return self.inner.get_mut();
    }
}

impl<T: ?Sized + core::fmt::Debug> core::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.try_lock() {
            Some(g) => f.debug_tuple("Mutex").field(&&*g).finish(),
            None => f.write_str("Mutex(<locked>)"),
        }
    }
}

/// A lock for data that is rarely contended, such as the shard a thread mostly works on
/// alone: taking it is one compare-and-swap and releasing it one store (the blocking
/// [`Mutex`] releases with an atomic swap, to wake sleepers). A waiter spins a little, then
/// (with `std`) yields its CPU between attempts. Under loom it is loom's mutex.
#[derive(Debug)]
pub(crate) struct ShardLock<T> {
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
    #[cfg(not(loom))]
    inner: spin::Mutex<T>,
}

/// The guard of a [`ShardLock`].
#[cfg(loom)]
pub(crate) type ShardGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
/// The guard of a [`ShardLock`].
#[cfg(not(loom))]
pub(crate) type ShardGuard<'a, T> = spin::MutexGuard<'a, T>;

impl<T> ShardLock<T> {
    /// A lock around `value`.
    pub(crate) fn new(value: T) -> Self {
        ShardLock {
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
            #[cfg(not(loom))]
            inner: spin::Mutex::new(value),
        }
    }

    /// The lock if it is free now.
    pub(crate) fn try_lock(&self) -> Option<ShardGuard<'_, T>> {
        #[cfg(loom)]
        return self.inner.try_lock().ok();
        #[cfg(not(loom))]
        return self.inner.try_lock();
    }

    /// Waits for the lock.
    pub(crate) fn lock(&self) -> ShardGuard<'_, T> {
        #[cfg(loom)]
        return self.inner.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(not(loom))]
        {
            let mut spins = 0u32;
            loop {
                if let Some(g) = self.inner.try_lock() {
                    return g;
                }
                spins = spins.saturating_add(1);
                #[cfg(feature = "std")]
                if spins > 64 {
                    std::thread::yield_now();
                    continue;
                }
                core::hint::spin_loop();
            }
        }
    }
}

/// Where [`set_cpu_number`] put the kernel's answer.
#[cfg(not(loom))]
static CPU_NUMBER: spin::Once<fn() -> usize> = spin::Once::new();

/// Tells dmakit how to ask which CPU the calling code runs on; returns `false`, changing
/// nothing, if it was told before.
///
/// dmakit's sharded structures ([`IommuMapper`](crate::mapper::IommuMapper)'s
/// bookkeeping and caches of IO ranges, [`LockedRangeAllocator`](crate::alloc::LockedRangeAllocator)'s
/// caches) give each thread a shard to try first, so that threads running at once do not
/// wait for each other. With `std` each thread gets its own number and moves to a free
/// shard when it finds its own taken; without `std` there is no thread-local storage, and
/// dmakit guesses from the stack address, which can put two CPUs on one shard for good. A
/// kernel that knows its CPU number (from a per-CPU register, say) should register it once
/// at boot, before other CPUs start: each CPU then has its own shard, as Linux's per-CPU
/// IO address caches do (up to eight CPUs; beyond that they share). `f` is called on
/// every allocation and free, so it must be cheap, and it must not call into dmakit. Any
/// answer is correct, even a wrong one: it only decides where to look first. Under loom
/// this does nothing.
///
/// ```
/// fn cpu() -> usize {
///     0 // a kernel reads its per-CPU area here
/// }
/// assert!(dmakit::sync::set_cpu_number(cpu));
/// assert!(!dmakit::sync::set_cpu_number(cpu), "only the first one counts");
/// ```
pub fn set_cpu_number(f: fn() -> usize) -> bool {
    #[cfg(not(loom))]
    {
        let mut first = false;
        CPU_NUMBER.call_once(|| {
            first = true;
            f
        });
        first
    }
    #[cfg(loom)]
    {
        let _ = f;
        false
    }
}

/// A small number that stays the same for a thread (most of the time), for picking the
/// shard of a sharded structure that the thread should try first: threads that run at once
/// then mostly work on different shards and never wait for each other.
///
/// The CPU's number when the platform gave a way to ask ([`set_cpu_number`]). Otherwise,
/// with `std`, each thread takes the next number when it first asks (so the first threads
/// all differ), and [`lock_home`] moves it when it finds its shard taken; without it there
/// is no thread-local storage, and the number is a hash of the current stack address
/// (threads run on different stacks); under loom it is 0, so that every execution is the
/// same. Any value is correct: it only decides where to look first.
pub(crate) fn thread_slot() -> usize {
    #[cfg(loom)]
    return 0;
    #[cfg(not(loom))]
    if let Some(cpu) = CPU_NUMBER.get() {
        return cpu() % (usize::MAX / 2);
    }
    #[cfg(all(feature = "std", not(loom)))]
    return SLOT.with(|s| {
        if s.get() == usize::MAX {
            use core::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % (usize::MAX / 2));
        }
        s.get()
    });
    #[cfg(all(not(feature = "std"), not(loom)))]
    {
        let probe = 0u8;
        let at = core::hint::black_box(core::ptr::addr_of!(probe)) as usize as u64;
        // 16 KiB apart counts as another stack; the top bits of a Fibonacci hash.
        ((at >> 14).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize
    }
}

#[cfg(all(feature = "std", not(loom)))]
std::thread_local!(static SLOT: core::cell::Cell<usize> = const { core::cell::Cell::new(usize::MAX) });

/// Makes `slot` this thread's number from now on (with `std`; elsewhere the number
/// cannot be stored, and this does nothing).
fn move_slot(slot: usize) {
    #[cfg(all(feature = "std", not(loom)))]
    SLOT.with(|s| s.set(slot));
    #[cfg(not(all(feature = "std", not(loom))))]
    let _ = slot;
}

/// This thread's shard of `shards`, locked, with its index: its home shard (see
/// [`thread_slot`]) if free, else the next free one, which becomes the thread's home (with
/// `std`, unless a CPU number was registered: a CPU's home does not move), else (all
/// taken) the home shard once it is free.
///
/// Moving home is what keeps two threads that run at once apart: with a fixed home, two
/// threads whose numbers fall on one shard would take turns on it and its neighbour call
/// after call, each finding its cached ranges and its bookkeeping in the other's shard
/// (measured: five to six times slower than one thread alone). After one such meeting the
/// thread that lost stays on the shard it found free.
pub(crate) fn lock_home<T>(shards: &[Padded<ShardLock<T>>]) -> (usize, ShardGuard<'_, T>) {
    let n = shards.len();
    let slot = thread_slot();
    let home = slot % n;
    if let Some(g) = shards[home].try_lock() {
        return (home, g);
    }
    let free = (1..n)
        .map(|i| (home + i) % n)
        .find_map(|i| Some((i, shards[i].try_lock()?)));
    match free {
        Some((i, g)) => {
            // Same residue for every shard count of this size: the new home is `i`.
            move_slot(slot - home + i);
            (i, g)
        }
        None => (home, shards[home].lock()),
    }
}

/// `T` alone on its cache lines (128 bytes: two 64-byte lines, as adjacent-line
/// prefetchers fetch pairs), so that threads working on neighbouring values do not
/// steal each other's lines.
#[derive(Default, Debug)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> core::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_and_tries() {
        let m = Mutex::new(alloc_crate::vec![1, 2]);
        {
            let g = m.lock();
            assert!(m.try_lock().is_none(), "held");
            assert_eq!(g.len(), 2);
        }
        assert!(m.try_lock().is_some());
        assert!(alloc_crate::format!("{m:?}").contains("[1, 2]"));
    }

    /// A thread that finds its home shard taken works on the next free one and stays
    /// there; with every shard taken it waits for its home.
    #[cfg(feature = "std")]
    #[test]
    fn a_thread_moves_home_when_its_shard_is_taken() {
        let shards: alloc_crate::vec::Vec<_> = (0..4).map(|i| Padded(ShardLock::new(i))).collect();
        let home = lock_home(&shards).0;
        assert_eq!(home, thread_slot() % 4, "the first call finds home free");
        let held = shards[home].try_lock().unwrap();
        let (moved, g) = lock_home(&shards);
        assert_eq!((moved, *g), ((home + 1) % 4, (home + 1) % 4));
        drop((g, held));
        assert_eq!(lock_home(&shards).0, moved, "the new home sticks");
        assert_eq!(thread_slot() % 4, moved);
        // All taken: the home shard, once its holder lets go.
        let others: alloc_crate::vec::Vec<_> = (0..4)
            .filter(|&i| i != moved)
            .map(|i| shards[i].try_lock().unwrap())
            .collect();
        let g = lock_home(&shards);
        assert_eq!(g.0, moved);
        drop((g, others));
    }
}
