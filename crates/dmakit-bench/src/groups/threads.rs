//! `threads/*`: dmakit's locked structures used from two threads at once against one
//! thread alone: rows `…/2_threads` against peer `1 thread`.
//!
//! An operation is one call. A chunk gives each participating thread the same number of
//! calls: on side A the main thread and a helper thread both run theirs at once; on side
//! B the main thread runs its own while the helper idles. `ratio` is the wall time per
//! operation over both threads (the chunk's wall time ÷ both threads' calls) divided by
//! the wall time per operation of one thread: 0.5 is perfect scaling on two cores, 1 is
//! no gain, above 1 is contention costing more than the second thread brings. Both sides
//! start and end a chunk through the same two barrier waits with the helper, so the
//! hand-off is in both. The machine has as many cores as it has: on a 2-core machine
//! shared with other work, the second thread also competes with everything else.
//!
//! * `threads/iommu_iovm_alloc_free/2_threads`: [`IommuMapper::iovm_alloc`] of 1–4 pages
//!   and `iovm_free` of the oldest of a thread's 64 live allocations, on a strict mapper
//!   holding 10,000 other allocations, over a hardware that does nothing (so the mapper's
//!   own structures and lock are measured, not a simulated IOTLB's).
//! * `threads/iommu_map_unmap/2_threads`: `iovm_alloc` of 4 pages, `iovm_insert_page` of
//!   each, `iovm_free` (which unmaps them): 6 calls per round trip.
//! * `threads/iommu_unmap_on_another_thread` (peer `unmap on the mapping thread`): a
//!   round trip of `iovm_alloc` of 4 pages and four `iovm_insert_page` on the main thread,
//!   and `iovm_free` on the helper, which takes them in batches of 64 (a driver that maps
//!   on its submission thread and unmaps on its completion thread), against the main
//!   thread doing whole round trips alone in the same batches: wall time per round trip
//!   over wall time per round trip. The helper's free has to find and change the main
//!   thread's bookkeeping, so this row shows what that hand-over costs. It is not one of
//!   the `…/2_threads` scaling rows (the work is split by stage, not shared), and has no
//!   bound.
//! * `threads/locked_range_alloc_free/2_threads`: [`LockedRangeAllocator`] `allocate` of
//!   4 KiB–64 KiB and `deallocate` of a thread's oldest of 64, over a space holding 10,000
//!   other ranges.
//! * `threads/a_a`: the locked range allocator on one thread against itself.
//!
//! [`IommuMapper::iovm_alloc`]: dmakit::mapper::Mapper::iovm_alloc
//! [`LockedRangeAllocator`]: dmakit::alloc::LockedRangeAllocator

use crate::harness::{compare, Paired, Plan, Side};
use crate::progress::Progress;
use crate::{measure, Options, Row, CONTROL_PEER};
use dmakit::alloc::{LockedRangeAllocator, RangeAllocator};
use dmakit::mapper::{Access, IommuHardware, IommuMapper, Mapper};
use dmakit::{IoAddr, PageSize, PhysAddr, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Barrier;

const CHUNKS: usize = 8;
const LIVE_PER_THREAD: usize = 64;
const BACKGROUND: usize = 10_000;
const PAGE: u64 = 4096;

/// IOMMU hardware that does nothing: page-table writes and invalidations are free.
#[derive(Debug, Default)]
pub struct NullIommu;

impl IommuHardware for NullIommu {
    fn page_size(&self) -> PageSize {
        PageSize::new(PAGE).expect("4 KiB is a page size")
    }
    fn set_entry(&self, _iova: IoAddr, _entry: Option<(PhysAddr, Access)>) -> Result<()> {
        Ok(())
    }
    fn invalidate(&self, _iova: IoAddr, _len: u64) -> Result<()> {
        Ok(())
    }
}

/// Work several threads can do on one shared structure.
pub trait Shared: Sync {
    /// A thread's own state (its live allocations).
    type Local: Send;
    /// Fresh state for thread `t`.
    fn local(&self, t: usize) -> Self::Local;
    /// `calls` calls.
    fn work(&self, local: &mut Self::Local, calls: usize);
}

/// `iovm_alloc` / `iovm_free` on a shared mapper.
pub struct IovmAllocFree(pub IommuMapper<NullIommu>);
/// `iovm_alloc` / `iovm_insert_page` / `iovm_free` on a shared mapper.
pub struct IovmMapUnmap(pub IommuMapper<NullIommu>);
/// `allocate` / `deallocate` on a shared locked range allocator.
pub struct LockedAllocFree(pub LockedRangeAllocator);

fn mapper() -> IommuMapper<NullIommu> {
    let m = IommuMapper::new(NullIommu, 1 << 32, 1 << 36).expect("an aligned window");
    for i in 0..BACKGROUND as u64 {
        let _ = m.iovm_alloc(1 + i % 4);
    }
    m
}

impl Shared for IovmAllocFree {
    type Local = (VecDeque<(IoAddr, u64)>, u64);
    fn local(&self, t: usize) -> Self::Local {
        (VecDeque::new(), t as u64)
    }
    fn work(&self, (live, n): &mut Self::Local, calls: usize) {
        for _ in 0..calls {
            if live.len() >= LIVE_PER_THREAD {
                if let Some((a, p)) = live.pop_front() {
                    let _ = self.0.iovm_free(a, p);
                    continue;
                }
            }
            *n += 1;
            let pages = 1 + *n % 4;
            if let Ok(a) = self.0.iovm_alloc(pages) {
                live.push_back((a, pages));
            }
        }
    }
}

impl Shared for IovmMapUnmap {
    type Local = ();
    fn local(&self, _t: usize) -> Self::Local {}
    fn work(&self, _: &mut (), calls: usize) {
        for _ in 0..calls.div_ceil(6) {
            let Ok(a) = self.0.iovm_alloc(4) else {
                continue;
            };
            for i in 0..4 {
                let _ = self.0.iovm_insert_page(
                    IoAddr(a.0 + i * PAGE),
                    PhysAddr(0x10_0000 + i * PAGE),
                    Access::READ_WRITE,
                );
            }
            let _ = self.0.iovm_free(a, 4);
        }
    }
}

impl Shared for LockedAllocFree {
    type Local = (VecDeque<(u64, u64)>, u64);
    fn local(&self, t: usize) -> Self::Local {
        (VecDeque::new(), t as u64)
    }
    fn work(&self, (live, n): &mut Self::Local, calls: usize) {
        for _ in 0..calls {
            if live.len() >= LIVE_PER_THREAD {
                if let Some((a, len)) = live.pop_front() {
                    let _ = self.0.deallocate(a, len);
                    continue;
                }
            }
            *n += 1;
            let len = PAGE * (1 + *n % 16);
            if let Ok(a) = self.0.allocate(len, 0) {
                live.push_back((a, len));
            }
        }
    }
}

fn locked() -> LockedRangeAllocator {
    let r = RangeAllocator::new(1 << 32, 1 << 36, PAGE)
        .expect("an aligned space")
        .with_placement(dmakit::alloc::Placement::GoodFit);
    let l = LockedRangeAllocator::new(r);
    for i in 0..BACKGROUND as u64 {
        let _ = l.allocate(PAGE * (1 + i % 16), 0);
    }
    l
}

/// Helper commands.
const IDLE: u8 = 0;
const WORK: u8 = 1;
const EXIT: u8 = 2;

/// Two threads against one on `s`, `calls` calls per thread per chunk; with `a_a`, one
/// thread against one.
pub fn two_vs_one<S: Shared>(plan: &Plan, s: &S, calls: usize, a_a: bool) -> Paired {
    let (start, done) = (Barrier::new(2), Barrier::new(2));
    let cmd = AtomicU8::new(IDLE);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut local = s.local(1);
            loop {
                start.wait();
                match cmd.load(Ordering::Acquire) {
                    WORK => s.work(&mut local, calls),
                    EXIT => break,
                    _ => {}
                }
                done.wait();
            }
        });
        let mut local = s.local(0);
        let mut chunk = |helper: u8| {
            cmd.store(helper, Ordering::Release);
            start.wait();
            s.work(&mut local, calls);
            done.wait();
        };
        let (a_cmd, a_ops) = if a_a { (IDLE, 1.0) } else { (WORK, 2.0) };
        let per_pass = (calls * CHUNKS) as f64;
        let chunk = std::cell::RefCell::new(&mut chunk);
        let p = compare(
            plan,
            CHUNKS,
            Side::new(a_ops * per_pass, |_| (chunk.borrow_mut())(a_cmd)),
            Side::new(per_pass, |_| (chunk.borrow_mut())(IDLE)),
        );
        cmd.store(EXIT, Ordering::Release);
        start.wait();
        p
    })
}

/// Allocations handed from the mapping thread to the unmapping one at a time.
const BATCH: usize = 64;

/// Maps one 4-page allocation (as [`IovmMapUnmap`] does) and returns it.
fn map_four(m: &IommuMapper<NullIommu>) -> Option<IoAddr> {
    let a = m.iovm_alloc(4).ok()?;
    for i in 0..4 {
        let _ = m.iovm_insert_page(
            IoAddr(a.0 + i * PAGE),
            PhysAddr(0x10_0000 + i * PAGE),
            Access::READ_WRITE,
        );
    }
    Some(a)
}

/// Round trips mapped on the main thread and unmapped on a helper, against the main
/// thread alone; `trips` per chunk, in batches of 64.
pub fn unmap_elsewhere(plan: &Plan, m: &IommuMapper<NullIommu>, trips: usize) -> Paired {
    let batches = trips.div_ceil(BATCH);
    let (start, done) = (Barrier::new(2), Barrier::new(2));
    let cmd = AtomicU8::new(IDLE);
    let (tx, rx) = sync_channel::<Vec<IoAddr>>(4);
    std::thread::scope(|scope| {
        let (start, done, cmd) = (&start, &done, &cmd);
        scope.spawn(move || loop {
            start.wait();
            match cmd.load(Ordering::Acquire) {
                WORK => {
                    for batch in rx.iter().take(batches) {
                        for a in batch {
                            let _ = m.iovm_free(a, 4);
                        }
                    }
                }
                EXIT => break,
                _ => {}
            }
            done.wait();
        });
        let mut chunk = |helper: u8| {
            cmd.store(helper, Ordering::Release);
            start.wait();
            let mut mine = Vec::with_capacity(BATCH);
            for _ in 0..batches {
                mine.extend((0..BATCH).filter_map(|_| map_four(m)));
                if helper == WORK {
                    let full = std::mem::replace(&mut mine, Vec::with_capacity(BATCH));
                    let _ = tx.send(full);
                } else {
                    for a in mine.drain(..) {
                        let _ = m.iovm_free(a, 4);
                    }
                }
            }
            done.wait();
        };
        let ops = (batches * BATCH * CHUNKS) as f64;
        let chunk = std::cell::RefCell::new(&mut chunk);
        let p = compare(
            plan,
            CHUNKS,
            Side::new(ops, |_| (chunk.borrow_mut())(WORK)),
            Side::new(ops, |_| (chunk.borrow_mut())(IDLE)),
        );
        cmd.store(EXIT, Ordering::Release);
        start.wait();
        p
    })
}

/// Rows the group plans.
pub fn planned(_opts: &Options) -> usize {
    5
}

/// Runs the group.
pub fn run(opts: &Options, p: &mut Progress) -> Vec<Row> {
    let plan = Plan::for_options(opts);
    let calls = if opts.quick { 4_000 } else { 8_000 };
    let one = "1 thread";
    let locked = LockedAllocFree(locked());
    vec![
        measure(p, "threads/iommu_iovm_alloc_free/2_threads", one, || {
            two_vs_one(&plan, &IovmAllocFree(mapper()), calls, false)
        }),
        measure(p, "threads/iommu_map_unmap/2_threads", one, || {
            two_vs_one(&plan, &IovmMapUnmap(mapper()), calls, false)
        }),
        measure(
            p,
            "threads/iommu_unmap_on_another_thread",
            "unmap on the mapping thread",
            || unmap_elsewhere(&plan, &mapper(), calls / 6),
        ),
        measure(p, "threads/locked_range_alloc_free/2_threads", one, || {
            two_vs_one(&plan, &locked, calls, false)
        }),
        measure(p, "threads/a_a", CONTROL_PEER, || {
            two_vs_one(&plan, &locked, calls, true)
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_leave_their_structures_consistent() {
        let plan = Plan { sets: 1, reps: 1 };
        let m = IovmMapUnmap(mapper());
        two_vs_one(&plan, &m, 60, false);
        assert_eq!(
            m.0.usage(),
            (BACKGROUND, 0),
            "map/unmap leaves nothing behind"
        );
        let m = mapper();
        let p = unmap_elsewhere(&plan, &m, 2 * BATCH);
        assert!(p.ns_per_op > 0.0 && p.peer_ns_per_op > 0.0, "{p:?}");
        assert_eq!(m.usage(), (BACKGROUND, 0), "the helper unmapped everything");
        let l = LockedAllocFree(locked());
        let before = l.0.free_count();
        let p = two_vs_one(&plan, &l, 300, false);
        assert!(p.ns_per_op > 0.0 && p.peer_ns_per_op > 0.0, "{p:?}");
        // Each thread holds at most its 64 live ranges of at most 16 pages.
        assert!(before - l.0.free_count() <= 2 * 64 * 16 * PAGE);
    }
}
