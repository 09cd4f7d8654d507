//! The process-wide wiring ledger under threads: four threads on two hosts wire and unwire
//! overlapping runs of the same pages at random. Whatever the others do, a page a thread
//! holds stays locked (the kernel's `Locked:` says so), and when every thread has let go,
//! nothing is locked and both hosts are idle.

mod common;

use common::{host, locked_kib, page};
use dmakit::platform::{PageRequest, PhysicalMemory, Task, Wiring};
use dmakit::VirtAddr;
use std::sync::{Arc, Barrier};

const THREADS: u64 = 4;
const PAGES: u64 = 16;
const ROUNDS: usize = 150;

/// A small deterministic generator (xorshift), one per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One thread's wirings: `(first page index, pages)`, each made once through `h`.
fn churn(h: &dmakit_linux::Host, base: u64, p: u64, seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let mut held: Vec<(u64, u64)> = Vec::new();
    for round in 0..ROUNDS {
        if held.len() < 6 && (held.is_empty() || rng.below(2) == 0) {
            let first = rng.below(PAGES);
            let n = 1 + rng.below((PAGES - first).min(4));
            h.wire(Task::KERNEL, VirtAddr(base + first * p), n * p, true)
                .map_err(|e| format!("round {round}: wire of pages {first}+{n}: {e}"))?;
            held.push((first, n));
        } else {
            let (first, n) = held.swap_remove(rng.below(held.len() as u64) as usize);
            h.unwire(Task::KERNEL, VirtAddr(base + first * p), n * p)
                .map_err(|e| format!("round {round}: unwire of pages {first}+{n}: {e}"))?;
        }
        // Every page this thread still holds is locked, whatever the others unwired.
        for &(first, n) in &held {
            for i in first..first + n {
                if locked_kib(base + i * p) == 0 {
                    return Err(format!("round {round}: page {i} held but not locked"));
                }
            }
        }
    }
    for (first, n) in held {
        h.unwire(Task::KERNEL, VirtAddr(base + first * p), n * p)
            .map_err(|e| format!("final unwire of pages {first}+{n}: {e}"))?;
    }
    Ok(())
}

#[test]
fn threads_on_two_hosts_never_unlock_each_others_pages() {
    let owner = host();
    let p = page(&owner);
    let va = owner
        .allocate_pages(PAGES * p, &PageRequest::PAGEABLE)
        .unwrap();
    let hosts = [Arc::new(host()), Arc::new(host())];
    let start = Arc::new(Barrier::new(THREADS as usize));
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (h, start) = (hosts[(t % 2) as usize].clone(), start.clone());
                s.spawn(move || {
                    start.wait();
                    churn(&h, va.0, p, 0x9E37_79B9_7F4A_7C15 ^ (t + 1))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    for (t, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("thread {t}: {e}"));
    }
    for i in 0..PAGES {
        assert_eq!(locked_kib(va.0 + i * p), 0, "page {i} still locked");
    }
    for (i, h) in hosts.iter().enumerate() {
        assert!(h.usage().is_idle(), "host {i}: {:?}", h.usage());
    }
    owner.free_pages(va, PAGES * p).unwrap();
    assert!(owner.usage().is_idle());
}
