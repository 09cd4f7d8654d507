//! Tasks: address spaces with their own page tables.
//!
//! Each task has a page table (virtual page → page-table entry), the list of its
//! allocations, a swap store for its paged-out pages, and a [`RangeAllocator`] for its
//! virtual address space. The kernel task's space starts at [`KERNEL_VA_BASE`], user tasks'
//! at [`USER_VA_BASE`]: neither is anywhere near the physical addresses behind them, so
//! code that confuses the two fails loudly. Two tasks may use the same virtual address for
//! different physical pages.
//!
//! A page of **pageable** memory has three states:
//!
//! | state | entry's physical page | how it gets there |
//! | --- | --- | --- |
//! | never touched | none, no swap copy (reads as zeros) | allocation |
//! | resident | some | first CPU store, `wire`, a second mapping, a lend, or page-in |
//! | paged out | none, contents in the task's swap store | [`Machine::page_out`](crate::Machine::page_out) |
//!
//! A CPU load from a page that holds no data (never touched, paged out while all zeros, or
//! purged) reads zeros and leaves it as it is, as a real VM serves it from its shared zero
//! page: such loads need no physical page, so they cannot fail for want of one.
//!
//! A page that is wired (counted by `Wiring::wire`), mapped a second time or lent as a
//! slice (`CpuAccess::direct_slice`) never leaves the resident state; that is exactly the
//! promise a driver relies on while a device owns the memory.
//!
//! Each page also has a *purgeable state* (`VirtualMemory::set_purgeable`): a volatile
//! page may be discarded by [`Machine::purge_volatile`](crate::Machine::purge_volatile),
//! after which it reads as zeros and reports `Empty` until made non-volatile again. [`Machine::page_table`](crate::Machine::page_table) lists a task's entries
//! as [`PageEntry`] values.
//!
//! ```
//! use dmakit::platform::CpuAccess;
//! use dmakit_sim::MachineBuilder;
//!
//! let m = MachineBuilder::new().seed(1).build()?;
//! let t = m.create_task();
//! let va = m.vm_allocate(t, 0x2000, true)?; // pageable, nothing resident yet
//! assert!(m.page_table(t)?.iter().all(|e| e.pa.is_none()));
//! m.write_virt(t, va, b"hello")?;           // the first touch brings page 0 in
//! let table = m.page_table(t)?;
//! assert!(table[0].pa.is_some() && table[1].pa.is_none());
//! assert_eq!(m.page_out(t)?, 1);            // unwired: it may go
//! assert!(m.page_table(t)?[0].swapped);
//! let mut back = [0u8; 5];
//! m.read_virt(t, va, &mut back)?;           // paged in again, contents intact
//! assert_eq!(&back, b"hello");
//! m.destroy_task(t)?;
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::CacheMode;
use dmakit::alloc::{Placement, RangeAllocator};
use dmakit::platform::PurgeableState;
use dmakit::{PhysAddr, VirtAddr};
use std::collections::BTreeMap;

/// Where the kernel task's virtual addresses start.
pub const KERNEL_VA_BASE: u64 = 0xFFFF_8000_0000_0000;
/// Where user tasks' virtual addresses start.
pub const USER_VA_BASE: u64 = 0x0000_0010_0000_0000;
/// Size of each task's virtual address space.
pub const VA_SPACE: u64 = 1 << 40;

/// One page-table entry.
#[derive(Clone, Debug)]
pub(crate) struct Pte {
    /// The physical page, or `None` for a pageable page that is not resident.
    pub pa: Option<u64>,
    /// Explicit wirings (`Wiring::wire` calls not yet matched by `unwire`).
    pub wires: u32,
    /// Wired for the allocation's whole life (non-pageable memory).
    pub always_wired: bool,
    /// Whether stores are allowed.
    pub writable: bool,
    /// The cache mode of this mapping (`None`: the physical range's mode).
    pub cache: Option<crate::CacheMode>,
    /// The purgeable state.
    pub purgeable: PurgeableState,
}

impl Pte {
    pub fn wired(&self) -> bool {
        self.always_wired || self.wires > 0
    }
}

/// One entry of a task's page table, as [`Machine::page_table`](crate::Machine::page_table)
/// reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageEntry {
    /// The virtual page.
    pub va: VirtAddr,
    /// The physical page behind it, or `None` while it is not resident.
    pub pa: Option<PhysAddr>,
    /// Explicit wirings (`Wiring::wire` calls not yet matched by `unwire`).
    pub wires: u32,
    /// Wired for its whole life (memory allocated non-pageable).
    pub always_wired: bool,
    /// Whether CPU stores (and wiring for device writes) are allowed.
    pub writable: bool,
    /// Whether the page's contents are in the swap store (paged out).
    pub swapped: bool,
    /// Part of a second mapping of other memory (`VirtualMemory::map_pages`).
    pub mapping: bool,
    /// The mapping's cache mode, if it overrides the physical range's mode.
    pub cache: Option<CacheMode>,
    /// The page's purgeable state.
    pub purgeable: PurgeableState,
    /// Whether the page is lent as a slice (`CpuAccess::direct_slice`) right now.
    pub lent: bool,
}

/// One allocation in a task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub len: u64,
    pub pageable: bool,
    /// The request's physical limit, honoured whenever a pageable page comes in or moves.
    pub phys_limit: u64,
}

/// A task's address space.
#[derive(Debug)]
pub(crate) struct AddressSpace {
    pub ptes: BTreeMap<u64, Pte>,
    pub regions: BTreeMap<u64, Region>,
    /// Second mappings of other memory (`VirtualMemory::map_pages`): start → length.
    pub mappings: BTreeMap<u64, u64>,
    /// Guarded second mappings: start → bytes of reserved, unmapped space on each side.
    pub guards: BTreeMap<u64, u64>,
    /// Paged-out pages: virtual page → contents (`None`: the page was all zeros).
    pub swap: BTreeMap<u64, Option<Box<[u8]>>>,
    /// The byte ranges explicit wirings were made for: (start, length) → live wirings of
    /// exactly that range. Page counts (`Pte::wires`) say *that* a page is wired; these say
    /// *which bytes* a wiring was for, which matters when several small blocks share a page.
    pub wired_ranges: BTreeMap<(u64, u64), u32>,
    pub va: RangeAllocator,
}

impl AddressSpace {
    /// Whether a live wiring's byte range overlaps `[va, va + len)`.
    pub fn bytes_wired(&self, va: u64, len: u64) -> bool {
        let end = va.saturating_add(len);
        len != 0
            && self
                .wired_ranges
                .range(..(end, 0))
                .any(|(&(s, l), _)| s.saturating_add(l) > va)
    }

    /// Forgets one wiring of `[va, va + len)` after an unwire of that range. An unwire of a
    /// range no wiring was made for exactly (allowed: counts are per page) cannot say which
    /// recorded range it ends, so every recorded range that now covers a page without
    /// wirings is dropped: a recorded range always lies on wired pages, and may at worst
    /// outlive its wiring while another wiring holds its pages (a conservative answer).
    pub fn forget_wiring(&mut self, va: u64, len: u64, page: u64) {
        if let Some(n) = self.wired_ranges.get_mut(&(va, len)) {
            *n -= 1;
            if *n == 0 {
                self.wired_ranges.remove(&(va, len));
            }
            return;
        }
        let ptes = &self.ptes;
        self.wired_ranges.retain(|&(s, l), _| {
            let first = s & !(page - 1);
            let end = s.saturating_add(l);
            let mut p = first;
            while p < end {
                if ptes.get(&p).is_none_or(|pte| pte.wires == 0) {
                    return false;
                }
                p = p.saturating_add(page);
            }
            true
        });
    }

    /// The physical limit of the allocation holding virtual page `page` (none for pages
    /// of second mappings, which are always resident).
    pub fn limit_of(&self, page: u64) -> u64 {
        self.regions
            .range(..=page)
            .next_back()
            .filter(|(&start, r)| page - start < r.len)
            .map_or(u64::MAX, |(_, r)| r.phys_limit)
    }

    pub fn new(base: u64, page: u64) -> Self {
        AddressSpace {
            ptes: BTreeMap::new(),
            regions: BTreeMap::new(),
            mappings: BTreeMap::new(),
            guards: BTreeMap::new(),
            swap: BTreeMap::new(),
            wired_ranges: BTreeMap::new(),
            // The constants are page aligned for every supported page size.
            va: RangeAllocator::new(base, VA_SPACE, page)
                .expect("constant VA space is valid")
                .with_placement(Placement::GoodFit),
        }
    }
}
