//! Physical memory of the simulated machine: RAM regions, the free page pool, and DRAM
//! contents.
//!
//! RAM is a list of regions with holes between them; pages in a hole are never handed out.
//! DRAM is backed lazily, one host buffer per touched page, so a machine with RAM above
//! 4 GiB costs only what a test touches. A page returned to the pool loses its contents, so
//! every allocation starts zero-filled.
//!
//! **Fragmentation** decides how hostile the layout is. At 0 pages are handed out in
//! ascending physical order (virtual and physical runs line up). Above 0 each page of a
//! scattered allocation continues the previous page's physical run only with probability
//! `1 - fragmentation`, and otherwise jumps to a random free page anywhere in RAM (above
//! 4 GiB included). The jumps come from a ChaCha generator seeded by the machine's seed, so
//! the same seed and the same calls give the same addresses.

use crate::fault::{FaultPlan, FaultSite};
use dmakit::{Error, PageSize, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeSet, HashMap};

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
    free: BTreeSet<u64>,
    dram: HashMap<u64, Box<[u8]>>,
    rng: ChaCha8Rng,
    fragmentation: f64,
}

impl PhysicalPool {
    pub(crate) fn new(
        page: PageSize,
        regions: Vec<RamRegion>,
        seed: u64,
        fragmentation: f64,
    ) -> Self {
        let mut free = BTreeSet::new();
        for r in &regions {
            let mut a = r.base;
            while a < r.end() {
                free.insert(a);
                a += page.bytes();
            }
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
        self.free.len() as u64
    }

    pub(crate) fn total_pages(&self) -> u64 {
        self.regions.iter().map(|r| r.len / self.page.bytes()).sum()
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

    /// Takes `n` pages, each at or below `limit` (inclusive, for the page's last byte).
    /// Contiguous requests get one run whose start is aligned to `align`. On failure every
    /// page taken by this call is back in the pool.
    pub(crate) fn take(
        &mut self,
        n: u64,
        contiguous: bool,
        align: u64,
        limit: u64,
        faults: &mut FaultPlan,
    ) -> Result<Vec<u64>> {
        let psize = self.page.bytes();
        let no_memory = |what| Error::NoSuitableMemory {
            what,
            requested: n * psize,
            align,
            limit,
            contiguous,
        };
        let mut taken = Vec::with_capacity(n as usize);
        if contiguous {
            let start = self
                .find_run(n, align, limit)
                .ok_or(no_memory("simulated RAM"))?;
            for i in 0..n {
                if let Err(e) = faults.hit(FaultSite::PhysAlloc) {
                    self.give_back(&taken);
                    return Err(e);
                }
                let pa = start + i * psize;
                self.free.remove(&pa);
                taken.push(pa);
            }
            return Ok(taken);
        }
        let mut prev: Option<u64> = None;
        for _ in 0..n {
            if let Err(e) = faults.hit(FaultSite::PhysAlloc) {
                self.give_back(&taken);
                return Err(e);
            }
            let Some(pa) = self.pick(prev, limit) else {
                self.give_back(&taken);
                return Err(no_memory("simulated RAM"));
            };
            self.free.remove(&pa);
            taken.push(pa);
            prev = Some(pa);
        }
        Ok(taken)
    }

    /// The next page of a scattered allocation.
    fn pick(&mut self, prev: Option<u64>, limit: u64) -> Option<u64> {
        let psize = self.page.bytes();
        let fits = |pa: u64| pa.checked_add(psize - 1).is_some_and(|last| last <= limit);
        let jump = self.fragmentation > 0.0 && self.rng.gen_bool(self.fragmentation.min(1.0));
        if let Some(p) = prev {
            let next = p + psize;
            if !jump && self.free.contains(&next) && fits(next) {
                return Some(next);
            }
        }
        if self.fragmentation > 0.0 && (jump || prev.is_none()) {
            // A page drawn uniformly from RAM (not from the address range, whose holes
            // would pile every jump onto the first page after a hole).
            let mut i = self.rng.gen_range(0..self.total_pages());
            let mut r = self.regions.first()?.base;
            for reg in &self.regions {
                let n = reg.len / psize;
                if i < n {
                    r = reg.base + i * psize;
                    break;
                }
                i -= n;
            }
            if let Some(&pa) = self.free.range(r..).next().filter(|&&pa| fits(pa)) {
                return Some(pa);
            }
        }
        self.free.iter().next().copied().filter(|&pa| fits(pa))
    }

    /// The lowest (at fragmentation 0) or a random aligned run of `n` free pages below
    /// `limit`.
    fn find_run(&mut self, n: u64, align: u64, limit: u64) -> Option<u64> {
        let psize = self.page.bytes();
        let align = align.max(psize);
        let mut runs = Vec::new();
        let mut run_start = None;
        let mut prev = None;
        let check = |start: u64, end: u64, runs: &mut Vec<u64>| {
            // [start, end) is free; find aligned candidates.
            let mut a = (start + align - 1) & !(align - 1);
            while a.checked_add(n * psize).is_some_and(|e| e <= end) {
                if (a + n * psize - 1) <= limit {
                    runs.push(a);
                }
                if runs.len() >= 64 {
                    return;
                }
                a += align;
            }
        };
        for &pa in &self.free {
            match prev {
                Some(p) if p + psize == pa => {}
                _ => {
                    if let (Some(s), Some(p)) = (run_start, prev) {
                        check(s, p + psize, &mut runs);
                    }
                    run_start = Some(pa);
                }
            }
            prev = Some(pa);
            if pa > limit || runs.len() >= 64 {
                break;
            }
        }
        if let (Some(s), Some(p)) = (run_start, prev) {
            check(s, p + psize, &mut runs);
        }
        if runs.is_empty() {
            return None;
        }
        if self.fragmentation > 0.0 {
            let i = self.rng.gen_range(0..runs.len());
            Some(runs[i])
        } else {
            Some(runs[0])
        }
    }

    /// Returns pages to the pool; their contents are forgotten.
    pub(crate) fn give_back(&mut self, pages: &[u64]) {
        for &pa in pages {
            self.dram.remove(&pa);
            self.free.insert(pa);
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
            .take(4, false, 0, u64::MAX, &mut FaultPlan::default())
            .unwrap();
        assert_eq!(pages, vec![0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000]);
    }

    #[test]
    fn contiguous_runs_respect_alignment_and_limit() {
        let mut p = pool(0.9, 7);
        let pages = p
            .take(4, true, 0x4000, 0xFFFF_FFFF, &mut FaultPlan::default())
            .unwrap();
        assert_eq!(pages[0] % 0x4000, 0);
        assert!(pages.windows(2).all(|w| w[1] == w[0] + 0x1000));
        assert!(pages[3] + 0xfff <= 0xFFFF_FFFF);
        let e = p
            .take(1000, true, 0, 0xFFFF_FFFF, &mut FaultPlan::default())
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
        assert!(p.take(5, false, 0, u64::MAX, &mut f).is_err());
        assert_eq!(p.free_pages(), before);
        f.fail(FaultSite::PhysAlloc, 6);
        assert!(p.take(5, true, 0, u64::MAX, &mut f).is_err());
        assert_eq!(p.free_pages(), before);
    }

    #[test]
    fn dram_crosses_pages() {
        let mut p = pool(0.0, 0);
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
