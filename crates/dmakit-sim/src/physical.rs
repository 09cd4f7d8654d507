//! Physical memory of the simulated machine: RAM regions, the free page pool, and DRAM
//! contents.
//!
//! RAM is a list of regions with holes between them; pages in a hole are never handed out.
//! Both halves are lazy: free pages are kept as coalesced intervals (one per region until
//! allocations cut it up), and DRAM has a host buffer only for pages that were written, so
//! a machine with a terabyte of RAM above 4 GiB costs only what a test touches. A page
//! returned to the pool loses its contents, so every allocation starts zero-filled.
//!
//! Requests that cannot be met are refused before anything is taken, with the reason:
//! [`Error::NoMemory`] when there are simply not enough free pages,
//! [`Error::NoSuitableMemory`] (naming the limit, alignment and contiguity) when pages exist
//! but none meet the constraints.
//!
//! **Fragmentation** decides how hostile the layout is. At 0 pages are handed out in
//! ascending physical order (virtual and physical runs line up). Above 0 each page of a
//! scattered allocation continues the previous page's physical run only with probability
//! `1 - fragmentation`, and otherwise jumps to a random free page anywhere in RAM (above
//! 4 GiB included). The jumps come from a ChaCha generator seeded by the machine's seed, so
//! the same seed and the same calls give the same addresses.

use crate::fault::{FaultPlan, FaultSite};
use crate::free::FreeSet;
use dmakit::{Error, PageSize, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// How many candidate starts a contiguous allocation chooses among (the lowest ones).
const RUN_CANDIDATES: usize = 64;

/// One RAM region: `[base, base + len)`, page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

impl RamRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.len
    }
}

/// Free pages, DRAM contents and the seeded generator that scatters allocations.
#[derive(Debug)]
pub(crate) struct PhysicalPool {
    page: PageSize,
    regions: Vec<RamRegion>,
    free: FreeSet,
    dram: HashMap<u64, Box<[u8]>>,
    rng: ChaCha8Rng,
    fragmentation: f64,
}

impl PhysicalPool {
    /// A pool over `regions` (page aligned, sorted, disjoint: the builder checks), all free.
    pub(crate) fn new(
        page: PageSize,
        regions: Vec<RamRegion>,
        seed: u64,
        fragmentation: f64,
    ) -> Self {
        let mut free = FreeSet::new(page.bytes());
        for r in &regions {
            free.insert_range(r.base, r.end());
        }
        PhysicalPool {
            page,
            regions,
            free,
            dram: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            fragmentation,
        }
    }

    pub(crate) fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    pub(crate) fn free_pages(&self) -> u64 {
        self.free.len()
    }

    pub(crate) fn total_pages(&self) -> u64 {
        self.regions.iter().map(|r| r.len / self.page.bytes()).sum()
    }

    /// Pages of DRAM that hold a host buffer (touched since they were last freed).
    pub(crate) fn backed_pages(&self) -> u64 {
        self.dram.len() as u64
    }

    /// Whether `[pa, pa + len)` lies inside one RAM region.
    pub(crate) fn is_ram(&self, pa: u64, len: u64) -> bool {
        let Some(end) = pa.checked_add(len) else {
            return false;
        };
        self.regions.iter().any(|r| pa >= r.base && end <= r.end())
    }

    /// [`Error::NotMapped`] naming `what` unless `[pa, pa + len)` is RAM.
    pub(crate) fn check_ram(&self, pa: u64, len: u64, what: &'static str) -> Result<()> {
        if self.is_ram(pa, len) {
            Ok(())
        } else {
            Err(Error::NotMapped { what, addr: pa })
        }
    }

    /// Takes `n` pages, each inside `[floor, limit]` (inclusive, for the page's last byte).
    /// Contiguous requests get one run whose start is aligned to `align`. Each page taken
    /// is one call at [`FaultSite::PhysAlloc`]. On failure every page taken by this call is
    /// back in the pool.
    ///
    /// A request that cannot be met (more pages than are free, or free below the limit) is
    /// refused before any page is taken: [`Error::NoMemory`] without constraints,
    /// [`Error::NoSuitableMemory`] naming them otherwise.
    pub(crate) fn take(
        &mut self,
        n: u64,
        contiguous: bool,
        align: u64,
        (floor, limit): (u64, u64),
        faults: &mut FaultPlan,
    ) -> Result<Vec<u64>> {
        let psize = self.page.bytes();
        let requested = n.saturating_mul(psize);
        let unsuitable = Error::NoSuitableMemory {
            what: "simulated RAM",
            requested,
            align: align.max(psize),
            limit,
            contiguous,
        };
        // A floor inside a page admits the pages after it.
        let Some(floor) = floor.checked_next_multiple_of(psize) else {
            return Err(unsuitable);
        };
        let available = self.free_between(floor, limit);
        if n > available {
            return Err(if contiguous || limit != u64::MAX || floor != 0 {
                unsuitable
            } else {
                Error::NoMemory {
                    what: "simulated RAM",
                    requested,
                    available: available * psize,
                }
            });
        }
        if contiguous {
            let start = self.find_run(n, align, (floor, limit)).ok_or(unsuitable)?;
            return self.take_run(n, start, faults);
        }
        self.take_scattered(n, (floor, limit), faults, unsuitable)
    }

    /// Free pages from `floor` (a page boundary) whose last byte is at or below `limit`.
    fn free_between(&self, floor: u64, limit: u64) -> u64 {
        let below = |l: u64| match l {
            u64::MAX => self.free.len(),
            l => self.free.len_below(l),
        };
        let under_floor = floor.checked_sub(1).map_or(0, below);
        below(limit).saturating_sub(under_floor)
    }

    /// Takes the `n` free pages from `start`, one fault-site call each; on failure gives
    /// back those taken.
    fn take_run(&mut self, n: u64, start: u64, faults: &mut FaultPlan) -> Result<Vec<u64>> {
        let psize = self.page.bytes();
        let mut taken = Vec::with_capacity(n as usize);
        for i in 0..n {
            if let Err(e) = faults.hit(FaultSite::PhysAlloc) {
                self.give_back(&taken);
                return Err(e);
            }
            let pa = start + i * psize;
            self.free.remove(pa);
            taken.push(pa);
        }
        Ok(taken)
    }

    /// Takes `n` free pages inside `bounds`, wherever [`pick`](Self::pick) finds them, one
    /// fault-site call each; on failure gives back those taken (`unsuitable` if the pages
    /// run out).
    fn take_scattered(
        &mut self,
        n: u64,
        bounds: (u64, u64),
        faults: &mut FaultPlan,
        unsuitable: Error,
    ) -> Result<Vec<u64>> {
        let mut taken = Vec::with_capacity(n as usize);
        let mut prev: Option<u64> = None;
        for _ in 0..n {
            if let Err(e) = faults.hit(FaultSite::PhysAlloc) {
                self.give_back(&taken);
                return Err(e);
            }
            let Some(pa) = self.pick(prev, bounds) else {
                // The count in `take` makes this unreachable; fail cleanly all the same.
                self.give_back(&taken);
                return Err(unsuitable);
            };
            self.free.remove(pa);
            taken.push(pa);
            prev = Some(pa);
        }
        Ok(taken)
    }

    /// The next page of a scattered allocation.
    fn pick(&mut self, prev: Option<u64>, (floor, limit): (u64, u64)) -> Option<u64> {
        let psize = self.page.bytes();
        let fits =
            |pa: u64| pa >= floor && pa.checked_add(psize - 1).is_some_and(|last| last <= limit);
        let jump = self.fragmentation > 0.0 && self.rng.gen_bool(self.fragmentation.min(1.0));
        if let Some(next) = prev.and_then(|p| p.checked_add(psize)) {
            if !jump && self.free.contains(next) && fits(next) {
                return Some(next);
            }
        }
        if self.fragmentation > 0.0 && (jump || prev.is_none()) {
            // A page drawn uniformly from RAM (not from the address range, whose holes
            // would pile every jump onto the first page after a hole).
            let mut i = self.rng.gen_range(0..self.total_pages().max(1));
            let mut r = self.regions.first()?.base;
            for reg in &self.regions {
                let n = reg.len / psize;
                if i < n {
                    r = reg.base + i * psize;
                    break;
                }
                i -= n;
            }
            if let Some(pa) = self.free.first_at_or_after(r).filter(|&pa| fits(pa)) {
                return Some(pa);
            }
        }
        self.free.first_at_or_after(floor).filter(|&pa| fits(pa))
    }

    /// The lowest (at fragmentation 0) or a random one of the lowest [`RUN_CANDIDATES`]
    /// aligned starts of `n` free pages ending at or below `limit`.
    fn find_run(&mut self, n: u64, align: u64, (floor, limit): (u64, u64)) -> Option<u64> {
        let psize = self.page.bytes();
        let align = align.max(psize);
        let bytes = n.checked_mul(psize)?;
        let mut starts = Vec::new();
        'runs: for (s, e) in self.free.runs() {
            if s > limit {
                break;
            }
            let Some(mut a) = s
                .max(floor)
                .checked_add(align - 1)
                .map(|a| a & !(align - 1))
            else {
                break;
            };
            while let Some(end) = a.checked_add(bytes).filter(|&end| end <= e) {
                if end - 1 > limit {
                    break 'runs;
                }
                starts.push(a);
                if starts.len() >= RUN_CANDIDATES {
                    break 'runs;
                }
                match a.checked_add(align) {
                    Some(next) => a = next,
                    None => break 'runs,
                }
            }
        }
        match starts.len() {
            0 => None,
            1 => Some(starts[0]),
            _ if self.fragmentation > 0.0 => Some(starts[self.rng.gen_range(0..starts.len())]),
            _ => Some(starts[0]),
        }
    }

    /// Returns pages to the pool; their contents are forgotten.
    pub(crate) fn give_back(&mut self, pages: &[u64]) {
        for &pa in pages {
            self.dram.remove(&pa);
            let fresh = self.free.insert(pa);
            debug_assert!(fresh, "page {pa:#x} given back twice");
        }
    }

    /// DRAM read (what a device sees).
    pub(crate) fn dram_read(&self, pa: u64, buf: &mut [u8]) {
        let psize = self.page.bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let a = pa + done as u64;
            let page = self.page.trunc(a);
            let off = (a - page) as usize;
            let n = (psize as usize - off).min(buf.len() - done);
            match self.dram.get(&page) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
    }

    /// DRAM write (what a device does).
    pub(crate) fn dram_write(&mut self, pa: u64, data: &[u8]) {
        let psize = self.page.bytes();
        let mut done = 0usize;
        while done < data.len() {
            let a = pa + done as u64;
            let page = self.page.trunc(a);
            let off = (a - page) as usize;
            let n = (psize as usize - off).min(data.len() - done);
            let p = self
                .dram
                .entry(page)
                .or_insert_with(|| vec![0u8; psize as usize].into_boxed_slice());
            p[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(frag: f64, seed: u64) -> PhysicalPool {
        PhysicalPool::new(
            PageSize::SIZE_4K,
            vec![
                RamRegion {
                    base: 0x10_0000,
                    len: 0x10_0000,
                },
                RamRegion {
                    base: 0x1_0000_0000,
                    len: 0x10_0000,
                },
            ],
            seed,
            frag,
        )
    }

    #[test]
    fn unfragmented_pages_ascend() {
        let mut p = pool(0.0, 1);
        let pages = p
            .take(4, false, 0, (0, u64::MAX), &mut FaultPlan::default())
            .unwrap();
        assert_eq!(pages, vec![0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000]);
    }

    #[test]
    fn pages_honour_a_floor() {
        for frag in [0.0, 0.9] {
            let mut p = pool(frag, 3);
            let floor = 0x10_3800; // inside a page: the pages after it
            let bounds = (floor, u64::MAX);
            let scattered = p
                .take(8, false, 0, bounds, &mut FaultPlan::default())
                .unwrap();
            assert!(
                scattered.iter().all(|&pa| pa >= 0x10_4000),
                "{scattered:x?}"
            );
            let run = p
                .take(4, true, 0x4000, bounds, &mut FaultPlan::default())
                .unwrap();
            assert!(
                run[0] >= 0x10_4000 && run[0].is_multiple_of(0x4000),
                "{run:x?}"
            );
            let e = p
                .take(
                    1,
                    false,
                    0,
                    (u64::MAX - 0xFFF, u64::MAX),
                    &mut FaultPlan::default(),
                )
                .unwrap_err();
            assert!(matches!(e, Error::NoSuitableMemory { .. }), "{e}");
        }
    }

    #[test]
    fn contiguous_runs_respect_alignment_and_limit() {
        let mut p = pool(0.9, 7);
        let pages = p
            .take(4, true, 0x4000, (0, 0xFFFF_FFFF), &mut FaultPlan::default())
            .unwrap();
        assert_eq!(pages[0] % 0x4000, 0);
        assert!(pages.windows(2).all(|w| w[1] == w[0] + 0x1000));
        assert!(pages[3] + 0xfff <= 0xFFFF_FFFF);
        let e = p
            .take(1000, true, 0, (0, 0xFFFF_FFFF), &mut FaultPlan::default())
            .unwrap_err();
        assert!(matches!(
            e,
            Error::NoSuitableMemory {
                contiguous: true,
                ..
            }
        ));
    }

    #[test]
    fn failure_mid_allocation_returns_pages() {
        let mut p = pool(0.5, 3);
        let before = p.free_pages();
        let mut f = FaultPlan::default();
        f.fail(FaultSite::PhysAlloc, 3);
        assert!(p.take(5, false, 0, (0, u64::MAX), &mut f).is_err());
        assert_eq!(p.free_pages(), before);
        f.fail(FaultSite::PhysAlloc, 6);
        assert!(p.take(5, true, 0, (0, u64::MAX), &mut f).is_err());
        assert_eq!(p.free_pages(), before);
    }

    #[test]
    fn dram_crosses_pages() {
        let mut p = pool(0.0, 0);
        let pages = p
            .take(2, true, 0, (0, u64::MAX), &mut FaultPlan::default())
            .unwrap();
        assert_eq!(pages, [0x10_0000, 0x10_1000]);
        let data: Vec<u8> = (0..100).collect();
        p.dram_write(0x10_0fd0, &data);
        let mut back = vec![0u8; 100];
        p.dram_read(0x10_0fd0, &mut back);
        assert_eq!(back, data);
        p.give_back(&[0x10_0000]);
        p.dram_read(0x10_0fd0, &mut back);
        assert!(
            back[..48].iter().all(|&b| b == 0),
            "freed page forgot its contents"
        );
        assert_eq!(&back[48..], &data[48..]);
    }
}
