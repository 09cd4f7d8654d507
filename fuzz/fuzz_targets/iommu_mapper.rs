//! `IommuMapper` (strict and lazy) over a model IOMMU that remembers every translation the
//! IOTLB may still hold, with hardware calls that fail on demand.
//!
//! After every call: a new IO range lies in the window, overlaps no live allocation and has
//! neither a page-table entry nor a translation the IOTLB may still hold (freed addresses
//! are never handed out before an invalidation covers them); a strict free leaves nothing
//! the device can reach; a successful insert leaves the IOTLB no translation but the new
//! one; `translate` and `usage` agree with the page table; every entry lies inside a live
//! allocation. A call that fails without a hardware failure must be refused for a reason
//! the model sees (not an allocation, wrong size, outside, unaligned, out of space); a
//! failed free leaves the allocation live. At the end, with the hardware healed, everything
//! frees and flushes to an empty table.
#![no_main]

use arbitrary::Arbitrary;
use dmakit::mapper::{Access, IommuHardware, IommuMapper, IovaPlacement, Mapper};
use dmakit::{Error, IoAddr, PageSize, PhysAddr, Result};
use dmakit_fuzz::num::Num;
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

type Entry = (u64, Access);

#[derive(Default)]
struct Table {
    entries: BTreeMap<u64, Entry>,
    /// Translations the IOTLB may hold: every entry set since the page's last invalidation.
    cached: BTreeMap<u64, BTreeSet<(u64, bool, bool)>>,
    /// Hardware calls until the next one fails (0: none fails).
    fail_in: u32,
    /// How many calls right after that one fail too (a burst: a map fails, then so does
    /// undoing it).
    then: u32,
    /// Calls of the current burst still to fail.
    burst: u32,
    /// Hardware calls that failed during the current mapper call.
    failed: u32,
}

struct Hw {
    page: PageSize,
    window: (u64, u64),
    t: Mutex<Table>,
}

fn key(e: Entry) -> (u64, bool, bool) {
    (e.0, e.1.read, e.1.write)
}

impl Hw {
    fn fail_now(t: &mut Table) -> bool {
        if t.burst > 0 {
            t.burst -= 1;
            t.failed += 1;
            return true;
        }
        if t.fail_in == 0 {
            return false;
        }
        t.fail_in -= 1;
        if t.fail_in == 0 {
            t.failed += 1;
            t.burst = core::mem::take(&mut t.then);
            return true;
        }
        false
    }

    fn inside(&self, iova: u64, len: u64) {
        let (base, last) = self.window;
        assert!(
            len > 0 && iova >= base,
            "hardware call below the window: {iova:#x}+{len:#x}"
        );
        assert!(
            iova - base <= last - base && len - 1 <= last - iova,
            "hardware call past the window: {iova:#x}+{len:#x}"
        );
        assert_eq!(
            iova % self.page.bytes(),
            0,
            "unaligned hardware call {iova:#x}"
        );
        assert_eq!(
            len % self.page.bytes(),
            0,
            "hardware call of a partial page {len:#x}"
        );
    }
}

impl IommuHardware for Hw {
    fn page_size(&self) -> PageSize {
        self.page
    }

    fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> Result<()> {
        self.inside(iova.0, self.page.bytes());
        let mut t = self.t.lock().unwrap();
        if Self::fail_now(&mut t) {
            return Err(Error::Internal {
                what: "injected page-table failure",
            });
        }
        match entry {
            Some((pa, acc)) => {
                assert_eq!(
                    pa.0 % self.page.bytes(),
                    0,
                    "unaligned physical page {:#x}",
                    pa.0
                );
                t.entries.insert(iova.0, (pa.0, acc));
                t.cached.entry(iova.0).or_default().insert(key((pa.0, acc)));
            }
            None => {
                t.entries.remove(&iova.0);
            }
        }
        Ok(())
    }

    fn invalidate(&self, iova: IoAddr, len: u64) -> Result<()> {
        self.inside(iova.0, len);
        let mut t = self.t.lock().unwrap();
        if Self::fail_now(&mut t) {
            return Err(Error::Internal {
                what: "injected IOTLB failure",
            });
        }
        let gone: Vec<u64> = t
            .cached
            .range(iova.0..=iova.0 + (len - 1))
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            t.cached.remove(&k);
        }
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc(u8),
    AllocHuge(Num),
    AllocPlaced(u8, u8, u8, u8, u8),
    /// A live allocation (picked by index), freed with its size plus a delta.
    Free(u16, i8),
    FreeAt(Num, Num),
    /// A page run inside (or past) a live allocation: index, first page, pages, frame, access.
    Insert(u16, u8, u8, u16, u8),
    InsertAt(Num, Num, Num),
    Translate(u16, u8),
    TranslateAt(Num),
    Flush,
    /// The next hardware call after `n % 8` fails, and `n / 8 % 3` calls right after it.
    FailIn(u8),
    /// `iovm_map_run`: pages, placement as `AllocPlaced` (low bound, alignment, boundary),
    /// physical frame, access.
    MapRun(u8, u8, u8, u8, u16, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    lazy: bool,
    big_pages: bool,
    /// Window: base in pages (or at the top of the space), size in pages.
    base: Num,
    top: bool,
    pages: u16,
    ops: Vec<Op>,
}

struct Run {
    m: IommuMapper<std::sync::Arc<Hw>>,
    hw: std::sync::Arc<Hw>,
    page: u64,
    lazy: bool,
    /// Live allocations: start → pages.
    live: BTreeMap<u64, u64>,
}

fn access(bits: u8) -> Access {
    [Access::READ, Access::WRITE, Access::READ_WRITE][usize::from(bits % 3)]
}

impl Run {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.hw.t.lock().unwrap()
    }

    /// Starts a mapper call: no failure seen yet.
    fn begin(&self) {
        self.table().failed = 0;
    }

    fn injected(&self) -> bool {
        self.table().failed > 0
    }

    fn overlaps_live(&self, start: u64, len: u64) -> bool {
        let last = start + (len - 1);
        self.live
            .range(..=last)
            .next_back()
            .is_some_and(|(&s, &p)| s + (p * self.page - 1) >= start)
    }

    /// The live allocation holding `[iova, iova + len)` whole.
    fn holder(&self, iova: u64, len: u64) -> Option<u64> {
        let (&s, &p) = self.live.range(..=iova).next_back()?;
        (iova - s < p * self.page && p * self.page - (iova - s) >= len).then_some(s)
    }

    fn new_range(&mut self, got: Result<IoAddr>, pages: u64, place: Option<&IovaPlacement>) {
        let Ok(IoAddr(start)) = got else { return };
        let len = self.check_fresh(start, pages, place);
        let t = self.table();
        let last = start + (len - 1);
        assert!(
            t.entries.range(start..=last).next().is_none(),
            "new range {start:#x} still mapped"
        );
        let stale = t.cached.range(start..=last).next().map(|(&k, _)| k);
        assert!(
            stale.is_none(),
            "range {start:#x}+{len:#x} handed out while the IOTLB may hold {stale:#x?}"
        );
        drop(t);
        self.live.insert(start, pages);
    }

    /// A new range of `pages` from `start`: inside the window, page aligned, overlapping
    /// no live allocation, meeting `place`. Returns its length.
    fn check_fresh(&self, start: u64, pages: u64, place: Option<&IovaPlacement>) -> u64 {
        let len = pages
            .checked_mul(self.page)
            .expect("an allocation's size fits");
        let (base, size) = self.m.window();
        assert!(
            start >= base.0 && start - base.0 <= size - len,
            "range {start:#x}+{len:#x} outside the window"
        );
        assert_eq!(start % self.page, 0);
        assert!(
            !self.overlaps_live(start, len),
            "range {start:#x}+{len:#x} overlaps a live one"
        );
        if let Some(p) = place {
            assert!(p.fits(start, len), "range {start:#x}+{len:#x} breaks {p:?}");
        }
        len
    }

    /// `iovm_map_run`: a fresh range, every page mapped to the run and the IOTLB holding no
    /// other translation of it; or refused for want of space; or, the hardware failing,
    /// nothing left allocated (`check` compares the mapper's count with the model's) unless
    /// the error names the fresh range that undoing the map could not free.
    fn map_run(&mut self, pages: u64, place: &IovaPlacement, pa: u64, acc: Access) {
        self.begin();
        match self.m.iovm_map_run(pages, place, PhysAddr(pa), acc) {
            Ok(IoAddr(start)) => {
                self.check_fresh(start, pages, Some(place));
                self.check_mapped(start, pa, pages, acc);
                self.live.insert(start, pages);
            }
            Err(e) if self.injected() => {
                if let Error::LeftMapped { iova, pages: p, .. } = e {
                    assert_eq!(p, pages, "left mapped {iova:#x}");
                    self.check_fresh(iova, pages, Some(place));
                    self.live.insert(iova, pages);
                }
            }
            Err(e) => {
                let past_top = pa.checked_add(pages * self.page - 1).is_none();
                let bad_place = !(place.align <= 1 || place.align.is_power_of_two())
                    || !(place.boundary == 0 || place.boundary.is_power_of_two());
                assert!(
                    matches!(e, Error::NoSpace { .. } | Error::NoSuitableMemory { .. })
                        || (past_top && matches!(e, Error::Overflow { .. }))
                        || (bad_place && matches!(e, Error::BadAlignment { .. })),
                    "map_run x{pages} -> {pa:#x}: {e:?}"
                );
            }
        }
    }

    /// A placement inside the window: `lo` and `hi` pages in from its ends, an alignment
    /// (a power of two, or three pages) and a boundary (none, or a power of two).
    fn placement(&self, lo: u8, hi: u8, align: u8, boundary: u8) -> IovaPlacement {
        let (base, size) = self.m.window();
        let min = base.0 + (u64::from(lo) * self.page).min(size - 1);
        let max = base.0 + (size - 1) - (u64::from(hi) * self.page).min(size - 1);
        IovaPlacement::ANY
            .window(min, max)
            .alignment(if align % 8 == 7 {
                3 * self.page
            } else {
                self.page << (align % 8)
            })
            .boundary(if boundary.is_multiple_of(4) {
                0
            } else {
                self.page << (boundary % 16)
            })
    }

    fn free(&mut self, iova: u64, pages: u64) {
        self.begin();
        let r = self.m.iovm_free(IoAddr(iova), pages);
        let exact = self.live.get(&iova) == Some(&pages);
        match r {
            Ok(()) => {
                assert!(exact, "freed {iova:#x} x{pages}, not a live allocation");
                self.live.remove(&iova);
                let last = iova + (pages * self.page - 1);
                let t = self.table();
                assert!(
                    t.entries.range(iova..=last).next().is_none(),
                    "freed range still mapped"
                );
                if !self.lazy {
                    assert!(
                        t.cached.range(iova..=last).next().is_none(),
                        "strict free left IOTLB entries"
                    );
                }
            }
            Err(e) => {
                assert!(
                    !exact || self.injected(),
                    "free of live {iova:#x} x{pages} refused: {e:?}"
                );
                if !exact {
                    assert!(
                        matches!(e, Error::NotAllocated { .. } | Error::WrongSize { .. }),
                        "bad free {iova:#x} x{pages}: {e:?}"
                    );
                }
            }
        }
    }

    fn insert(&mut self, iova: u64, pa: u64, pages: u64, acc: Access) {
        self.begin();
        let r = self
            .m
            .iovm_insert_run(IoAddr(iova), PhysAddr(pa), pages, acc);
        let len = pages.checked_mul(self.page);
        let valid = iova.is_multiple_of(self.page)
            && pa.is_multiple_of(self.page)
            && len.is_some_and(|l| {
                l == 0 || (pa.checked_add(l - 1).is_some() && self.holder(iova, l).is_some())
            });
        match r {
            Ok(()) => {
                assert!(
                    valid,
                    "insert {iova:#x} -> {pa:#x} x{pages} accepted, outside any allocation"
                );
                self.check_mapped(iova, pa, pages, acc);
            }
            Err(e) => assert!(
                !valid || self.injected(),
                "valid insert {iova:#x} -> {pa:#x} x{pages} refused: {e:?}"
            ),
        }
    }

    /// The `pages` pages from `iova` are entered to the run from `pa` with `acc`, and the
    /// IOTLB may hold only those translations of them, or none (an invalidation after them).
    fn check_mapped(&self, iova: u64, pa: u64, pages: u64, acc: Access) {
        let t = self.table();
        for i in 0..pages {
            let (io, ph) = (iova + i * self.page, pa + i * self.page);
            assert_eq!(t.entries.get(&io), Some(&(ph, acc)), "page {io:#x}");
            let cached = t.cached.get(&io);
            assert!(
                cached.is_none_or(|c| c.iter().all(|&k| k == key((ph, acc)))),
                "after mapping {io:#x} -> {ph:#x} the IOTLB may still hold {cached:x?}"
            );
        }
    }

    fn check(&self) {
        let t = self.table();
        for &k in t.entries.keys() {
            assert!(
                self.holder(k, self.page).is_some(),
                "entry {k:#x} outside every live allocation"
            );
        }
        assert_eq!(self.m.usage(), (self.live.len(), t.entries.len()));
    }

    fn translate(&self, iova: u64) {
        let want = self
            .table()
            .entries
            .get(&(iova & !(self.page - 1)))
            .copied();
        match (self.m.translate(IoAddr(iova)), want) {
            (Ok((pa, acc)), Some((p, a))) => assert_eq!((pa.0, acc), (p + iova % self.page, a)),
            (Err(Error::NotMapped { .. }), None) => {}
            (got, want) => panic!("translate {iova:#x}: {got:?}, table {want:x?}"),
        }
    }

    fn nth_live(&self, i: u16) -> Option<(u64, u64)> {
        let n = self.live.len();
        (n > 0)
            .then(|| {
                self.live
                    .iter()
                    .nth(usize::from(i) % n)
                    .map(|(&s, &p)| (s, p))
            })
            .flatten()
    }

    fn op(&mut self, op: &Op) {
        match *op {
            Op::Alloc(p) => {
                let pages = u64::from(p) + 1;
                self.begin();
                let got = self.m.iovm_alloc(pages);
                if let Err(e) = &got {
                    assert!(
                        self.injected() || matches!(e, Error::NoSpace { .. }),
                        "alloc x{pages}: {e:?}"
                    );
                }
                self.new_range(got, pages, None);
            }
            Op::AllocHuge(n) => {
                let got = self.m.iovm_alloc(n.0);
                if got.is_ok() {
                    self.new_range(got, n.0, None);
                }
            }
            Op::AllocPlaced(p, lo, hi, align, boundary) => {
                let pages = u64::from(p % 40) + 1;
                let place = self.placement(lo, hi, align, boundary);
                let got = self.m.iovm_alloc_placed(pages, &place);
                self.new_range(got, pages, Some(&place));
            }
            Op::Free(i, d) => {
                if let Some((s, p)) = self.nth_live(i) {
                    self.free(s, p.wrapping_add_signed(i64::from(d % 3)));
                }
            }
            Op::FreeAt(a, p) => self.free(a.0, p.0),
            Op::Insert(i, first, n, frame, acc) => {
                if let Some((s, p)) = self.nth_live(i) {
                    // A page inside, or the one right after the allocation (if it exists).
                    if let Some(iova) = s.checked_add((u64::from(first) % (p + 1)) * self.page) {
                        self.insert(
                            iova,
                            u64::from(frame) * self.page,
                            u64::from(n % 20),
                            access(acc),
                        );
                    }
                }
            }
            Op::InsertAt(a, pa, n) => self.insert(a.0, pa.0, n.0 % 64, Access::READ),
            Op::Translate(i, off) => {
                if let Some((s, p)) = self.nth_live(i) {
                    self.translate(s + (u64::from(off) * 0x321) % (p * self.page));
                }
            }
            Op::TranslateAt(a) => self.translate(a.0),
            Op::Flush => {
                self.begin();
                match self.m.flush() {
                    Ok(()) => assert_eq!(self.m.pending(), 0),
                    Err(e) => assert!(self.injected(), "flush: {e:?}"),
                }
            }
            Op::FailIn(n) => {
                let mut t = self.table();
                t.fail_in = u32::from(n % 8) + 1;
                t.then = u32::from(n / 8 % 3);
            }
            Op::MapRun(p, lo, align, boundary, frame, acc) => {
                let pages = u64::from(p % 40) + 1;
                let place = self.placement(lo, 0, align, boundary);
                // The last frame is the top page of the physical space.
                let pa = match frame {
                    u16::MAX => 0u64.wrapping_sub(self.page),
                    f => u64::from(f) * self.page,
                };
                self.map_run(pages, &place, pa, access(acc));
            }
        }
        self.check();
    }

    /// Heals the hardware, frees everything, flushes: nothing may be left.
    fn finish(mut self) {
        let mut t = self.table();
        (t.fail_in, t.then, t.burst) = (0, 0, 0);
        drop(t);
        let live: Vec<(u64, u64)> = self.live.iter().map(|(&s, &p)| (s, p)).collect();
        for (s, p) in live {
            self.free(s, p);
        }
        self.m.flush().expect("flush with healthy hardware");
        assert_eq!(self.m.usage(), (0, 0));
        let t = self.table();
        assert!(t.entries.is_empty(), "entries left: {:x?}", t.entries);
        assert!(
            t.cached.is_empty(),
            "IOTLB translations left: {:x?}",
            t.cached.keys()
        );
    }
}

fuzz_target!(|input: Input| {
    let page = if input.big_pages {
        PageSize::SIZE_16K
    } else {
        PageSize::SIZE_4K
    };
    let pb = page.bytes();
    let pages = u64::from(input.pages % 2048) + 1;
    let size = pages * pb;
    let base = if input.top {
        0u64.wrapping_sub(size)
    } else {
        (input.base.0 & !(pb - 1)).min(0u64.wrapping_sub(size))
    };
    let hw = std::sync::Arc::new(Hw {
        page,
        window: (base, base + (size - 1)),
        t: Mutex::new(Table::default()),
    });
    let m = if input.lazy {
        IommuMapper::new_lazy(hw.clone(), base, size)
    } else {
        IommuMapper::new(hw.clone(), base, size)
    };
    let m = m.expect("a page-aligned, non-empty window");
    let mut run = Run {
        m,
        hw,
        page: pb,
        lazy: input.lazy,
        live: BTreeMap::new(),
    };
    for op in input.ops.iter().take(300) {
        run.op(op);
    }
    run.finish();
});
