//! [`FrameAllocator`]: the physical page allocator, built from the usable ranges of the
//! firmware's memory map.
//!
//! Free memory is kept as coalesced intervals. Allocations come from the *top* of
//! physical memory down, the way a kernel keeps low memory for devices that need it: a
//! request without a physical limit lands as high as it can, and a request limited to
//! 32 or 28 address bits still finds the low pages free. Every request is checked before
//! anything is taken: [`Error::NoMemory`] when there are simply not enough free pages,
//! [`Error::NoSuitableMemory`] (naming limit, alignment and contiguity) when pages exist but
//! none meet the constraints.
//!
//! [`Placement`] says how pages of a request that need not be contiguous are picked:
//! packed (the highest free run, as few runs as possible) or scattered (no two pages
//! physically adjacent, for tests that want every page its own run).

use crate::ranges::Ranges;
use alloc::vec::Vec;
use dmakit::{Error, PageSize, PhysAddr, PhysRange, Result};

/// How the pages of a request that need not be contiguous are picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Placement {
    /// From the highest free run down, as few runs as possible.
    #[default]
    Packed,
    /// One page at a time from the top, never two physically adjacent pages (while free
    /// memory allows): every page is a run of its own, as on a fragmented machine.
    Scattered,
}

/// A physical page allocator over the ranges it was given.
#[derive(Clone, Debug)]
pub struct FrameAllocator {
    page: PageSize,
    free: Ranges,
    managed: Ranges,
    placement: Placement,
}

impl FrameAllocator {
    /// An allocator with no memory yet, of pages of `page` bytes.
    pub fn new(page: PageSize) -> Self {
        FrameAllocator {
            page,
            free: Ranges::new(page.bytes()),
            managed: Ranges::new(page.bytes()),
            placement: Placement::Packed,
        }
    }

    /// Sets how scattered requests are placed.
    pub fn set_placement(&mut self, placement: Placement) {
        self.placement = placement;
    }

    /// The page size.
    pub fn page_size(&self) -> PageSize {
        self.page
    }

    /// Adds the whole pages of `[start, start + len)` (a usable range of the memory map);
    /// partial pages at either end are left out. Returns the bytes added. A range that
    /// overlaps one added before is [`Error::RangeBusy`] and adds nothing.
    pub fn add(&mut self, start: u64, len: u64) -> Result<u64> {
        let end = dmakit::addr::checked_end(start, len, "usable range")?;
        let s = self.page.round_up(start).unwrap_or(u64::MAX);
        let e = self.page.trunc(end);
        if s >= e {
            return Ok(0);
        }
        if self.managed.iter().any(|(ms, me)| ms < e && s < me) {
            return Err(Error::RangeBusy {
                what: "usable range (overlaps one given before)",
                start,
                len,
            });
        }
        self.managed.insert(s, e);
        self.free.insert(s, e);
        Ok(e - s)
    }

    /// Free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.bytes()
    }

    /// Bytes given to the allocator.
    pub fn total_bytes(&self) -> u64 {
        self.managed.bytes()
    }

    /// Free bytes in pages whose last byte is at or below `limit`.
    pub fn free_bytes_below(&self, limit: u64) -> u64 {
        self.free.bytes_below(limit)
    }

    /// Whether `[pa, pa + len)` is wholly memory this allocator manages.
    pub fn manages(&self, pa: u64, len: u64) -> bool {
        pa.checked_add(len)
            .is_some_and(|end| self.managed.contains_range(pa, end))
    }

    /// Takes `len` bytes (whole pages): one run aligned to `align` if `contiguous`, else
    /// as [`Placement`] says; every byte at or below `limit`. Returns the physical runs,
    /// nothing taken on failure.
    pub fn take(
        &mut self,
        len: u64,
        contiguous: bool,
        align: u64,
        limit: u64,
    ) -> Result<Vec<PhysRange>> {
        let req = dmakit::platform::PageRequest {
            align,
            phys_limit: limit,
            phys_min: 0,
            contiguous,
            pageable: false,
        };
        let align = req.validate(len, self.page)?;
        let unsuitable = Error::NoSuitableMemory {
            what: "physical memory",
            requested: len,
            align,
            limit,
            contiguous,
        };
        let available = self.free.bytes_below(limit);
        if len > available {
            return Err(if req.constrains_physical() {
                unsuitable
            } else {
                Error::NoMemory {
                    what: "physical memory",
                    requested: len,
                    available,
                }
            });
        }
        if contiguous {
            let a = self
                .free
                .take_highest(len, align, limit)
                .ok_or(unsuitable)?;
            return Ok(alloc::vec![PhysRange::new(PhysAddr(a), len)]);
        }
        let (runs, left) = match self.placement {
            Placement::Packed => self.take_packed(len, limit),
            Placement::Scattered => self.take_scattered(len, limit),
        };
        if left > 0 {
            // The count above makes this unreachable; give back and fail cleanly anyway.
            self.give_back(&runs)?;
            return Err(unsuitable);
        }
        Ok(runs)
    }

    /// Takes up to `len` bytes at or below `limit` from the highest free runs down, as
    /// few runs as possible; returns the runs (lowest first) and the bytes still missing.
    fn take_packed(&mut self, len: u64, limit: u64) -> (Vec<PhysRange>, u64) {
        let psize = self.page.bytes();
        let mut runs: Vec<PhysRange> = Vec::new();
        let mut left = len;
        while left > 0 {
            let top_limit = limit.saturating_add(1) & !(psize - 1);
            let Some((s, e)) = self
                .free
                .iter()
                .rev()
                .find(|&(s, _)| s < top_limit)
                .map(|(s, e)| (s, e.min(top_limit)))
            else {
                break;
            };
            let n = left.min(e - s);
            if !self.free.remove(e - n, e) {
                break;
            }
            runs.push(PhysRange::new(PhysAddr(e - n), n));
            left -= n;
        }
        runs.reverse();
        (runs, left)
    }

    /// Takes up to `len` bytes at or below `limit` one page at a time from the top,
    /// skipping the page below each one taken while free memory allows; returns the runs
    /// (highest first) and the bytes still missing.
    fn take_scattered(&mut self, len: u64, limit: u64) -> (Vec<PhysRange>, u64) {
        let psize = self.page.bytes();
        let mut runs: Vec<PhysRange> = Vec::new();
        let mut left = len;
        let mut below = limit;
        while left > 0 {
            let pa = match self.free.take_highest(psize, psize, below) {
                Some(pa) => pa,
                None => match self.free.take_highest(psize, psize, limit) {
                    Some(pa) => pa,
                    None => break,
                },
            };
            runs.push(PhysRange::new(PhysAddr(pa), psize));
            left -= psize;
            below = pa.saturating_sub(psize + 1);
        }
        (runs, left)
    }

    /// [`take`](Self::take) with a floor as well: every byte at or above `floor`. Memory
    /// is taken from the top down, so when what was taken reaches below the floor nothing
    /// higher was free: it is given back and the request refused (`NoSuitableMemory`).
    pub fn take_above(
        &mut self,
        len: u64,
        contiguous: bool,
        align: u64,
        (floor, limit): (u64, u64),
    ) -> Result<Vec<PhysRange>> {
        let runs = self.take(len, contiguous, align, limit)?;
        if runs.iter().all(|r| r.addr.0 >= floor) {
            return Ok(runs);
        }
        self.give_back(&runs)?;
        Err(Error::NoSuitableMemory {
            what: "physical memory (none free at or above the floor)",
            requested: len,
            align,
            limit,
            contiguous,
        })
    }

    /// Gives runs from [`take`](Self::take) back. A run that is not wholly allocated
    /// memory of this allocator is [`Error::DoubleFree`] / [`Error::NotOwned`], and nothing
    /// of that run changes.
    pub fn give_back(&mut self, runs: &[PhysRange]) -> Result<()> {
        for r in runs {
            let end = dmakit::addr::checked_end(r.addr.0, r.len, "freed run")?;
            if !self.manages(r.addr.0, r.len) {
                return Err(Error::NotOwned {
                    what: "physical memory",
                    start: r.addr.0,
                    len: r.len,
                    at: r.addr.0,
                });
            }
            if !self.free.insert(r.addr.0, end) {
                return Err(Error::DoubleFree {
                    what: "physical memory",
                    start: r.addr.0,
                    len: r.len,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;

    const P: u64 = 0x1000;

    fn machine() -> FrameAllocator {
        let mut f = FrameAllocator::new(PageSize::SIZE_4K);
        assert_eq!(f.add(0x1000, 0x9_f000).unwrap(), 0x9_f000);
        assert_eq!(
            f.add(0x10_0800, 0x3ff_0000).unwrap(),
            0x3fe_f000,
            "partial pages left out"
        );
        assert_eq!(f.add(0x1_0000_0000, 0x100_0000).unwrap(), 0x100_0000);
        f
    }

    /// A model: the set of free pages.
    fn pages(runs: &[PhysRange]) -> Vec<u64> {
        runs.iter()
            .flat_map(|r| (0..r.len / P).map(move |i| r.addr.0 + i * P))
            .collect()
    }

    #[test]
    fn allocations_honour_limit_alignment_and_contiguity_against_a_model() {
        for placement in [Placement::Packed, Placement::Scattered] {
            let mut f = machine();
            f.set_placement(placement);
            let mut model: BTreeSet<u64> = BTreeSet::new();
            for (s, e) in f.free.iter() {
                model.extend((s..e).step_by(P as usize));
            }
            let mut live = Vec::new();
            let mut seed = 0x1234_5678u64;
            for i in 0..400u64 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = 1 + (seed >> 33) % 40;
                let contiguous = i % 3 == 0;
                let align = [0, 0x4000, 0x20_0000][(seed >> 20) as usize % 3];
                let limit =
                    [u64::MAX, 0xffff_ffff, 0xfff_ffff, 0x9_ffff][(seed >> 40) as usize % 4];
                match f.take(n * P, contiguous, align, limit) {
                    Ok(runs) => {
                        let got = pages(&runs);
                        assert_eq!(got.len() as u64, n);
                        for &p in &got {
                            assert!(model.remove(&p), "page {p:#x} handed out twice");
                            assert!(p + P - 1 <= limit, "page {p:#x} above {limit:#x}");
                        }
                        if contiguous {
                            assert_eq!(runs.len(), 1);
                            assert_eq!(runs[0].addr.0 % align.max(P), 0);
                        }
                        if placement == Placement::Scattered && !contiguous {
                            assert!(runs.iter().all(|r| r.len == P));
                        }
                        live.push(runs);
                    }
                    Err(Error::NoSuitableMemory { .. } | Error::NoMemory { .. }) => {
                        // Refused: then the model has no way either (for the page count).
                        let fit = model.iter().filter(|&&p| p + P - 1 <= limit).count() as u64;
                        assert!(
                            contiguous || fit < n,
                            "refused {n} pages with {fit} free below {limit:#x}"
                        );
                    }
                    Err(e) => panic!("{e:?}"),
                }
                if i % 2 == 1 && !live.is_empty() {
                    let runs = live.swap_remove((seed >> 7) as usize % live.len());
                    f.give_back(&runs).unwrap();
                    model.extend(pages(&runs));
                }
                assert_eq!(f.free_bytes(), model.len() as u64 * P);
            }
        }
    }

    #[test]
    fn unconstrained_memory_comes_from_the_top_and_low_memory_stays() {
        let mut f = machine();
        let r = f.take(2 * P, false, 0, u64::MAX).unwrap();
        assert_eq!(r, [PhysRange::new(PhysAddr(0x1_00ff_e000), 2 * P)]);
        let low = f.take(P, true, 0, 0xfff_ffff).unwrap();
        assert!(low[0].addr.0 < 0x1000_0000);
    }

    #[test]
    fn refusals_name_the_constraint_and_take_nothing() {
        let mut f = machine();
        let before = f.free_bytes();
        assert!(matches!(
            f.take(0, false, 0, u64::MAX),
            Err(Error::ZeroSize { .. })
        ));
        assert!(matches!(
            f.take(100, false, 0, u64::MAX),
            Err(Error::NotAligned { .. })
        ));
        assert!(matches!(
            f.take(P, false, 3, u64::MAX),
            Err(Error::BadAlignment { .. })
        ));
        assert!(matches!(
            f.take(1 << 40, false, 0, u64::MAX),
            Err(Error::NoMemory { .. })
        ));
        assert!(matches!(
            f.take(0x100_0000, true, 0, 0xfffff),
            Err(Error::NoSuitableMemory {
                contiguous: true,
                ..
            })
        ));
        assert!(matches!(
            f.take(!0xfff, false, 0, 0),
            Err(Error::NoSuitableMemory { .. })
        ));
        assert_eq!(f.free_bytes(), before);
        let r = f.take(P, false, 0, u64::MAX).unwrap();
        f.give_back(&r).unwrap();
        assert!(matches!(f.give_back(&r), Err(Error::DoubleFree { .. })));
        assert!(matches!(
            f.give_back(&[PhysRange::new(PhysAddr(0xa_0000), P)]),
            Err(Error::NotOwned { .. })
        ));
        assert!(matches!(
            f.add(0x2000, 0x1000),
            Err(Error::RangeBusy { .. })
        ));
        assert!(matches!(
            f.add(u64::MAX - 5, 10),
            Err(Error::Overflow { .. })
        ));
        assert_eq!(f.free_bytes(), before);
    }
}
