//! Tasks: address spaces with their own page tables.
//!
//! Each task has a page table (virtual page → page-table entry), the list of its allocations, and a
//! [`RangeAllocator`] for its virtual address space. The kernel task's space starts at
//! [`KERNEL_VA_BASE`], user tasks' at [`USER_VA_BASE`]: neither is anywhere near the
//! physical addresses behind them, so code that confuses the two fails loudly.

use dmakit::alloc::RangeAllocator;
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
}

impl Pte {
    pub fn wired(&self) -> bool {
        self.always_wired || self.wires > 0
    }
}

/// One allocation in a task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub len: u64,
    pub pageable: bool,
}

/// A task's address space.
#[derive(Debug)]
pub(crate) struct AddressSpace {
    pub ptes: BTreeMap<u64, Pte>,
    pub regions: BTreeMap<u64, Region>,
    /// Second mappings of other memory (`VirtualMemory::map_pages`): start → length.
    pub mappings: BTreeMap<u64, u64>,
    pub va: RangeAllocator,
}

impl AddressSpace {
    pub fn new(base: u64, page: u64) -> Self {
        AddressSpace {
            ptes: BTreeMap::new(),
            regions: BTreeMap::new(),
            mappings: BTreeMap::new(),
            // The constants are page aligned for every supported page size.
            va: RangeAllocator::new(base, VA_SPACE, page).expect("constant VA space is valid"),
        }
    }
}
