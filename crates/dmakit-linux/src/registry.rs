//! The host's registry: the memory of this process a [`Host`](crate::Host) knows.
//!
//! The host may only touch memory it can vouch for, and the registry is where that knowledge
//! lives. Every CPU access, cache operation and MMIO access is a lookup here that either
//! yields a bounds-checked [`Span`] or fails with
//! [`Error::NotMapped`](dmakit::Error::NotMapped):
//!
//! | kind | key | made by | reachable through |
//! | --- | --- | --- | --- |
//! | allocation | virtual address | `allocate_pages` (memfd + mmap) | virtual address; physical address if wired and translated |
//! | second mapping | virtual address | `map_pages` | virtual address |
//! | registered region | virtual address | `register_region` (caller's promise) | virtual address |
//! | MMIO region | bus address | `register_mmio` (caller's promise) | bus address (MMIO only) |
//!
//! The *reverse map* (physical page → virtual page) is filled from pagemap when a wired
//! allocation is made with physical addresses available, and emptied when it is freed; it is
//! how `read_phys`, `cache_phys` and MMIO by physical address find RAM.
//!
//! A span borrows the registry, and the registry lives behind the host's lock, so memory
//! cannot be freed while a span of it is in use.

use crate::sys::{Mapping, RawRegion, Span};
use dmakit::platform::PurgeableState;
use dmakit::{PageSize, PhysAddr};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

/// One live allocation.
#[derive(Debug)]
pub(crate) struct Allocation {
    /// The mapping (a whole hugepage for contiguous memory).
    pub(crate) mapping: Mapping,
    /// The length asked for, which `free_pages` must repeat.
    pub(crate) len: u64,
    /// The mapped length (`len`, or one hugepage).
    pub(crate) map_len: u64,
    /// Locked for its whole life.
    pub(crate) wired: bool,
    /// Backed by a 2 MiB hugepage.
    pub(crate) huge: bool,
    /// The memory object, so the pages can be mapped a second time.
    pub(crate) fd: OwnedFd,
    /// The physical address of each page, when wired and translated (else empty).
    pub(crate) frames: Vec<PhysAddr>,
    /// Second mappings that reach some of its pages.
    pub(crate) second_maps: u32,
    /// Purgeable state of the pages that are not non-volatile: page address → state.
    pub(crate) purgeable: BTreeMap<u64, PurgeableState>,
}

/// A second mapping of allocations' pages (`VirtualMemory::map_pages`).
#[derive(Debug)]
pub(crate) struct SecondMapping {
    pub(crate) mapping: Mapping,
    pub(crate) len: u64,
    /// The allocations (by start) whose pages it maps, each once.
    pub(crate) sources: Vec<u64>,
}

/// Everything a host knows; lives behind the host's lock.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Start → allocation.
    pub(crate) allocs: BTreeMap<u64, Allocation>,
    /// Page → wirings made through this host (the process-wide counts are in the ledger).
    pub(crate) wires: BTreeMap<u64, u32>,
    /// (start, length) → wirings made through this host for exactly that byte range: which
    /// bytes a wiring was for, where `wires` only says which pages.
    pub(crate) wired_ranges: BTreeMap<(u64, u64), u32>,
    /// Start → caller-registered CPU region.
    pub(crate) regions: BTreeMap<u64, RawRegion>,
    /// Bus address → registered MMIO region.
    pub(crate) mmio: BTreeMap<u64, RawRegion>,
    /// Physical page → virtual page, for wired allocations.
    pub(crate) phys_index: BTreeMap<u64, u64>,
    /// Start → second mapping.
    pub(crate) maps: BTreeMap<u64, SecondMapping>,
}

/// The entry of `map` whose `[key, key + len(entry))` contains `[addr, addr + n)`.
fn containing<V>(
    map: &BTreeMap<u64, V>,
    addr: u64,
    n: u64,
    len: impl Fn(&V) -> u64,
) -> Option<(u64, &V)> {
    let (&start, v) = map.range(..=addr).next_back()?;
    let end = addr.checked_add(n)?;
    (end <= start + len(v)).then_some((start, v))
}

impl Registry {
    /// Whether a wiring made through this host for a byte range overlapping
    /// `[va, va + len)` is live.
    pub(crate) fn bytes_wired(&self, va: u64, len: u64) -> bool {
        let end = va.saturating_add(len);
        len != 0
            && self
                .wired_ranges
                .range(..(end, 0))
                .any(|(&(s, l), _)| s.saturating_add(l) > va)
    }

    /// Forgets one wiring of `[va, va + len)` after its pages were unwired. An unwire of a
    /// range that was not wired exactly (allowed: counts are per page) drops every recorded
    /// range that now covers a page this host no longer wires, so a recorded range always
    /// lies on pages this host wires (at worst it outlives its wiring while another holds
    /// its pages: a conservative answer).
    pub(crate) fn forget_wiring(&mut self, va: u64, len: u64, page: u64) {
        if let Some(n) = self.wired_ranges.get_mut(&(va, len)) {
            *n -= 1;
            if *n == 0 {
                self.wired_ranges.remove(&(va, len));
            }
            return;
        }
        let wires = &self.wires;
        self.wired_ranges.retain(|&(s, l), _| {
            let end = s.saturating_add(l);
            let mut p = s & !(page - 1);
            while p < end {
                if !wires.contains_key(&p) {
                    return false;
                }
                p = p.saturating_add(page);
            }
            true
        });
    }

    /// The allocation holding `[va, va + n)` within the length that was asked for.
    pub(crate) fn allocation(&self, va: u64, n: u64) -> Option<(u64, &Allocation)> {
        containing(&self.allocs, va, n, |a| a.len)
    }

    /// The allocations that share a byte with `[va, va + n)`: (start, allocation).
    pub(crate) fn allocations_touching(
        &self,
        va: u64,
        n: u64,
    ) -> impl Iterator<Item = (u64, &Allocation)> {
        let end = va.saturating_add(n);
        self.allocs
            .range(..end)
            .rev()
            .take_while(move |(&start, a)| start.saturating_add(a.map_len) > va)
            .map(|(&start, a)| (start, a))
    }

    /// The first address of `[va, va + n)` lent as a slice (any lend, or only mutable ones
    /// when `mutable_only`).
    pub(crate) fn lent_in(&self, va: u64, n: u64, mutable_only: bool) -> Option<u64> {
        self.allocations_touching(va, n).find_map(|(start, a)| {
            let (any, any_mut) = a.mapping.lent(va, n);
            (any_mut || (any && !mutable_only)).then_some(va.max(start))
        })
    }

    /// The second mapping holding `[va, va + n)`.
    pub(crate) fn second_mapping(&self, va: u64, n: u64) -> Option<&SecondMapping> {
        containing(&self.maps, va, n, |m| m.len).map(|(_, m)| m)
    }

    /// A span of `[va, va + n)` if the whole range lies in one allocation, second mapping or
    /// registered region.
    pub(crate) fn cpu_span(&self, va: u64, n: u64) -> Option<Span<'_>> {
        if let Some((_, a)) = self.allocation(va, n) {
            return a.mapping.span(va, n);
        }
        if let Some(m) = self.second_mapping(va, n) {
            return m.mapping.span(va, n);
        }
        let (_, r) = containing(&self.regions, va, n, |r| r.len())?;
        r.span(va, n)
    }

    /// A span of RAM for `[pa, pa + n)`, which must stay inside one page of a wired
    /// allocation.
    pub(crate) fn ram_span(&self, pa: u64, n: u64, page: PageSize) -> Option<Span<'_>> {
        if page.offset(pa).checked_add(n)? > page.bytes() {
            return None;
        }
        let va = *self.phys_index.get(&page.trunc(pa))? + page.offset(pa);
        let (_, a) = containing(&self.allocs, va, n, |a| a.len)?;
        a.mapping.span(va, n)
    }

    /// A span for an I/O access to bus or physical address `pa`: a registered MMIO region,
    /// else RAM of a wired allocation.
    pub(crate) fn io_span(&self, pa: u64, n: u64, page: PageSize) -> Option<Span<'_>> {
        if let Some((bus, r)) = containing(&self.mmio, pa, n, |r| r.len()) {
            return r.span(r.addr() + (pa - bus), n);
        }
        self.ram_span(pa, n, page)
    }

    /// Records the frames of the wired allocation at `va` in the reverse map.
    pub(crate) fn index(&mut self, va: u64, frames: &[PhysAddr], page: PageSize) {
        for (i, f) in frames.iter().enumerate() {
            self.phys_index.insert(f.0, va + i as u64 * page.bytes());
        }
    }

    /// Forgets the reverse-map entries of `frames`.
    pub(crate) fn unindex(&mut self, frames: &[PhysAddr]) {
        for f in frames {
            self.phys_index.remove(&f.0);
        }
    }

    /// The virtual page behind physical page `ppage`, if it belongs to a wired allocation.
    pub(crate) fn virt_of_frame(&self, ppage: u64) -> Option<u64> {
        self.phys_index.get(&ppage).copied()
    }
}
