//! `IommuMapper` from several threads at once, over a model IOMMU that remembers every
//! translation its IOTLB may still hold.
//!
//! Each thread allocates, maps, frees and (lazy mappers) flushes at random; ranges freed by
//! one thread are reused by others through the shared space and the per-thread caches.
//! A quarter of the allocations are handed over and freed by whichever thread takes them
//! (as a completion thread frees what a submitting thread mapped), and with more threads
//! than the mapper has shards, threads meet on shards and move on.
//! Whatever the interleaving: no two live allocations overlap, a range handed out has no
//! page-table entry and no translation the IOTLB may still hold, and at the end everything
//! frees and flushes to an empty table.
// Not under loom (its own models cover the shards' locking) nor Miri (the core has no
// unsafe code, and even a few hundred steps take minutes interpreted).
#![cfg(not(any(loom, miri)))]

use dmakit::mapper::{Access, IommuHardware, IommuMapper, Mapper};
use dmakit::{IoAddr, PageSize, PhysAddr, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

const PAGE: u64 = 4096;
/// Steps per thread.
const STEPS: usize = 20_000;

/// Page-table entries, and the translations the IOTLB may hold: every entry set since its
/// page's last invalidation.
#[derive(Default)]
struct Table {
    entries: BTreeMap<u64, u64>,
    cached: BTreeMap<u64, BTreeSet<u64>>,
}

#[derive(Default)]
struct Hw(Mutex<Table>);

impl IommuHardware for Hw {
    fn page_size(&self) -> PageSize {
        PageSize::SIZE_4K
    }

    fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> Result<()> {
        let mut t = self.0.lock().unwrap();
        match entry {
            Some((pa, _)) => {
                t.entries.insert(iova.0, pa.0);
                t.cached.entry(iova.0).or_default().insert(pa.0);
            }
            None => {
                t.entries.remove(&iova.0);
            }
        }
        Ok(())
    }

    fn invalidate(&self, iova: IoAddr, len: u64) -> Result<()> {
        let mut t = self.0.lock().unwrap();
        let gone: Vec<u64> = t
            .cached
            .range(iova.0..iova.0 + len)
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            t.cached.remove(&k);
        }
        Ok(())
    }
}

/// Live allocations of every thread: start → (bytes, thread).
type Book = Mutex<BTreeMap<u64, (u64, usize)>>;

fn claim(book: &Book, hw: &Hw, start: u64, len: u64, me: usize) {
    let mut b = book.lock().unwrap();
    if let Some((&s, &(l, t))) = b.range(..start + len).next_back() {
        assert!(
            s + l <= start,
            "thread {me} got {start:#x}+{len:#x}, thread {t} holds {s:#x}+{l:#x}"
        );
    }
    b.insert(start, (len, me));
    drop(b);
    let t = hw.0.lock().unwrap();
    let last = start + len - 1;
    assert!(
        t.entries.range(start..=last).next().is_none(),
        "new range {start:#x} mapped"
    );
    let stale = t.cached.range(start..=last).next().map(|(&k, _)| k);
    assert!(
        stale.is_none(),
        "range {start:#x}+{len:#x} handed out while the IOTLB may hold {stale:#x?}"
    );
}

/// A small deterministic generator per thread.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Allocations any thread may free.
type Handoff = Mutex<Vec<(IoAddr, u64)>>;

/// What each worker shares.
struct Shared<'a> {
    m: &'a IommuMapper<Arc<Hw>>,
    hw: &'a Hw,
    book: &'a Book,
    handoff: &'a Handoff,
}

/// Frees a live allocation (after taking it out of the book: another thread may own the
/// range again as soon as this returns, so the table is checked when a range is handed
/// out, not here).
fn free(sh: &Shared, (iova, pages): (IoAddr, u64)) {
    sh.book.lock().unwrap().remove(&iova.0);
    sh.m.iovm_free(iova, pages)
        .expect("free of a live allocation");
}

fn worker(sh: &Shared, me: usize, lazy: bool, steps: usize) {
    let (m, hw, book) = (sh.m, sh.hw, sh.book);
    let mut r = Lcg(0x9e37_79b9 * (me as u64 + 1));
    let mut mine: Vec<(IoAddr, u64)> = Vec::new();
    for _ in 0..steps {
        match r.next(10) {
            0..=4 => {
                let pages = match r.next(8) {
                    0 => 33 + r.next(30),
                    _ => 1 + r.next(8),
                };
                if let Ok(iova) = m.iovm_alloc(pages) {
                    claim(book, hw, iova.0, pages * PAGE, me);
                    let n = 1 + r.next(pages);
                    m.iovm_insert_run(
                        iova,
                        PhysAddr(0x1_0000_0000 + r.next(1 << 20) * PAGE),
                        n,
                        Access::READ_WRITE,
                    )
                    .expect("a run inside the thread's allocation");
                    match r.next(4) {
                        0 => sh.handoff.lock().unwrap().push((iova, pages)),
                        _ => mine.push((iova, pages)),
                    }
                }
            }
            5 => {
                let taken = sh.handoff.lock().unwrap().pop();
                if let Some(a) = taken {
                    free(sh, a);
                }
            }
            6..=8 if !mine.is_empty() => {
                free(sh, mine.swap_remove(r.next(mine.len() as u64) as usize));
            }
            _ if lazy => m.flush().expect("flush"),
            _ => {}
        }
    }
    for a in mine {
        free(sh, a);
    }
}

fn stress(threads: usize, lazy: bool, window_pages: u64, steps: usize) {
    let hw = Arc::new(Hw::default());
    let base = 0x40_0000_0000;
    let m = if lazy {
        IommuMapper::new_lazy(hw.clone(), base, window_pages * PAGE)
    } else {
        IommuMapper::new(hw.clone(), base, window_pages * PAGE)
    }
    .unwrap();
    let (book, handoff) = (Book::default(), Handoff::default());
    let sh = Shared {
        m: &m,
        hw: &hw,
        book: &book,
        handoff: &handoff,
    };
    std::thread::scope(|s| {
        for me in 0..threads {
            let sh = &sh;
            s.spawn(move || worker(sh, me, lazy, steps));
        }
    });
    for a in handoff.lock().unwrap().drain(..) {
        free(&sh, a);
    }
    m.flush().unwrap();
    assert_eq!(m.usage(), (0, 0));
    let t = hw.0.lock().unwrap();
    assert!(
        t.entries.is_empty() && t.cached.is_empty(),
        "left: {} entries, {} cached",
        t.entries.len(),
        t.cached.len()
    );
}

#[test]
fn strict_mappers_never_hand_out_a_range_the_iotlb_may_still_translate() {
    for threads in [2, 4, 12] {
        // A small window: space runs out, caches are reclaimed, frees meet other threads.
        stress(threads, false, 256, STEPS);
        stress(threads, false, 1 << 16, STEPS);
    }
}

#[test]
fn lazy_mappers_never_hand_out_a_range_the_iotlb_may_still_translate() {
    for threads in [2, 4, 12] {
        stress(threads, true, 256, STEPS);
        stress(threads, true, 1 << 16, STEPS);
    }
}
