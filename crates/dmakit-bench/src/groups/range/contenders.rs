//! The allocators of the range group behind one interface, and a slot table that replays
//! a workload's steps on one of them.
//!
//! Every adapter's `alloc` and `free` is `#[inline]`, for every allocator alike: the replay
//! loop then calls each library as a driver's code would, with that library's own inlining
//! choices, instead of through an out-of-line call into this crate that only some
//! adapters get (a non-generic adapter around a large inlined body stays a call across
//! crates; one around a generic call is inlined anyway).

use std::num::NonZeroU64;

/// Bytes per unit: one page.
pub const UNIT: u64 = 4096;
/// Where the byte-addressed contenders' space starts.
pub const BASE: u64 = 1 << 32;

/// An allocator under test.
pub trait Contender {
    /// What a successful allocation returns and the matching free takes.
    type Handle;
    /// Its name in the table.
    const NAME: &'static str;
    /// A fresh allocator over `units` pages that will hold at most `max_live` ranges.
    fn new(units: u32, max_live: usize) -> Self;
    /// Allocates `units` pages.
    fn alloc(&mut self, units: u32) -> Option<Self::Handle>;
    /// Frees an allocation of `units` pages.
    fn free(&mut self, h: Self::Handle, units: u32);
}

/// dmakit's `RangeAllocator` over the bench's space: bytes from [`BASE`], default
/// alignment one page, constant-time placement (`Placement::GoodFit`; IOKit's first fit,
/// the default, searches the free ranges on every allocation).
fn dmakit_space(units: u32) -> dmakit::alloc::RangeAllocator {
    dmakit::alloc::RangeAllocator::new(BASE, units as u64 * UNIT, UNIT)
        .map(|r| r.with_placement(dmakit::alloc::Placement::GoodFit))
        .expect("a page-aligned, non-empty space")
}

/// dmakit's `RangeAllocator`, in bytes, default alignment 4 KiB, through IOKit's interface:
/// `allocate(size, 0)`, `deallocate(start, size)`: the free finds the block by address.
pub struct Dmakit(dmakit::alloc::RangeAllocator);

impl Contender for Dmakit {
    type Handle = NonZeroU64;
    const NAME: &'static str = "dmakit";
    fn new(units: u32, _max_live: usize) -> Self {
        Dmakit(dmakit_space(units))
    }
    #[inline]
    fn alloc(&mut self, units: u32) -> Option<NonZeroU64> {
        self.0
            .allocate(units as u64 * UNIT, 0)
            .ok()
            .and_then(NonZeroU64::new)
    }
    #[inline]
    fn free(&mut self, start: NonZeroU64, units: u32) {
        self.0
            .deallocate(start.get(), units as u64 * UNIT)
            .expect("the bench frees only what it allocated");
    }
}

/// dmakit's `RangeAllocator` as [`Dmakit`], through its handle interface:
/// `allocate_handle(size, 0)`, `deallocate_handle(handle)`: the free reads the block's node
/// from the handle (and checks it) instead of looking it up by address.
pub struct DmakitHandle(dmakit::alloc::RangeAllocator);

impl Contender for DmakitHandle {
    type Handle = dmakit::alloc::RangeHandle;
    const NAME: &'static str = "dmakit by handle";
    fn new(units: u32, _max_live: usize) -> Self {
        DmakitHandle(dmakit_space(units))
    }
    #[inline]
    fn alloc(&mut self, units: u32) -> Option<dmakit::alloc::RangeHandle> {
        self.0.allocate_handle(units as u64 * UNIT, 0).ok()
    }
    #[inline]
    fn free(&mut self, h: dmakit::alloc::RangeHandle, _units: u32) {
        self.0
            .deallocate_handle(h)
            .expect("the bench frees only what it allocated");
    }
}

/// The `offset-allocator` crate (TLSF-style, nodes preallocated), in pages.
pub struct OffsetAllocator(offset_allocator::Allocator);

impl Contender for OffsetAllocator {
    type Handle = offset_allocator::Allocation;
    const NAME: &'static str = "offset-allocator";
    fn new(units: u32, max_live: usize) -> Self {
        // Free blocks need nodes too: at most one between two live ranges.
        let nodes = (2 * max_live + 1024).min(u32::MAX as usize) as u32;
        OffsetAllocator(offset_allocator::Allocator::with_max_allocs(units, nodes))
    }
    #[inline]
    fn alloc(&mut self, units: u32) -> Option<offset_allocator::Allocation> {
        self.0.allocate(units)
    }
    #[inline]
    fn free(&mut self, h: offset_allocator::Allocation, _units: u32) {
        self.0.free(h);
    }
}

/// [`OffsetAllocator`] freed by address, as an IOKit-style caller must use it: a map from
/// each allocation's offset to its `Allocation` (hashbrown's table with its default hasher,
/// foldhash, sized for the live count up front), filled on allocation and emptied on free.
pub struct OffsetAllocatorByAddress {
    a: OffsetAllocator,
    by_offset: hashbrown::HashMap<u32, offset_allocator::Allocation>,
}

impl Contender for OffsetAllocatorByAddress {
    type Handle = u32;
    const NAME: &'static str = "offset-allocator + address map";
    fn new(units: u32, max_live: usize) -> Self {
        OffsetAllocatorByAddress {
            a: OffsetAllocator::new(units, max_live),
            by_offset: hashbrown::HashMap::with_capacity(max_live),
        }
    }
    #[inline]
    fn alloc(&mut self, units: u32) -> Option<u32> {
        let a = self.a.alloc(units)?;
        self.by_offset.insert(a.offset, a);
        Some(a.offset)
    }
    #[inline]
    fn free(&mut self, offset: u32, units: u32) {
        let a = self
            .by_offset
            .remove(&offset)
            .expect("the bench frees only what it allocated");
        self.a.free(a, units);
    }
}

/// The `xalloc` crate's TLSF (`SysTlsf<u64>`, nodes from the system allocator), in pages.
pub struct XallocTlsf(xalloc::SysTlsf<u64>);

impl Contender for XallocTlsf {
    type Handle = xalloc::SysTlsfRegion;
    const NAME: &'static str = "xalloc tlsf";
    fn new(units: u32, max_live: usize) -> Self {
        XallocTlsf(xalloc::SysTlsf::with_capacity(
            units as u64,
            2 * max_live + 1024,
        ))
    }
    #[inline]
    fn alloc(&mut self, units: u32) -> Option<xalloc::SysTlsfRegion> {
        self.0.alloc(units as u64).map(|(region, _offset)| region)
    }
    #[inline]
    fn free(&mut self, h: xalloc::SysTlsfRegion, _units: u32) {
        self.0
            .dealloc(h)
            .expect("the bench frees only what this allocator gave");
    }
}

/// The `range-alloc` crate: best fit over a sorted `Vec` of free ranges, O(n) a call.
pub struct RangeAlloc(range_alloc::RangeAllocator<u64>);

impl Contender for RangeAlloc {
    type Handle = NonZeroU64;
    const NAME: &'static str = "range-alloc";
    fn new(units: u32, _max_live: usize) -> Self {
        RangeAlloc(range_alloc::RangeAllocator::new(
            BASE..BASE + units as u64 * UNIT,
        ))
    }
    #[inline]
    fn alloc(&mut self, units: u32) -> Option<NonZeroU64> {
        self.0
            .allocate_range(units as u64 * UNIT)
            .ok()
            .and_then(|r| NonZeroU64::new(r.start))
    }
    #[inline]
    fn free(&mut self, start: NonZeroU64, units: u32) {
        let s = start.get();
        self.0.free_range(s..s + units as u64 * UNIT);
    }
}

/// XNU's IORangeAllocator algorithm, written here: a sorted `Vec` of free intervals
/// `[start, end)`, first fit by linear scan, binary search to insert and merge on free.
pub struct NaiveFirstFit {
    /// The free intervals, ascending.
    pub free: Vec<(u64, u64)>,
}

impl Contender for NaiveFirstFit {
    type Handle = NonZeroU64;
    const NAME: &'static str = "xnu-style first fit";
    fn new(units: u32, _max_live: usize) -> Self {
        NaiveFirstFit {
            free: vec![(BASE, BASE + units as u64 * UNIT)],
        }
    }
    #[inline]
    fn alloc(&mut self, units: u32) -> Option<NonZeroU64> {
        let size = units as u64 * UNIT;
        let i = self.free.iter().position(|&(s, e)| e - s >= size)?;
        let (s, e) = self.free[i];
        if e - s == size {
            self.free.remove(i);
        } else {
            self.free[i].0 = s + size;
        }
        NonZeroU64::new(s)
    }
    #[inline]
    fn free(&mut self, start: NonZeroU64, units: u32) {
        let (s, e) = (start.get(), start.get() + units as u64 * UNIT);
        let i = self.free.partition_point(|&(fs, _)| fs < s);
        let merge_prev = i > 0 && self.free[i - 1].1 == s;
        let merge_next = i < self.free.len() && self.free[i].0 == e;
        match (merge_prev, merge_next) {
            (true, true) => {
                self.free[i - 1].1 = self.free[i].1;
                self.free.remove(i);
            }
            (true, false) => self.free[i - 1].1 = e,
            (false, true) => self.free[i].0 = s,
            (false, false) => self.free.insert(i, (s, e)),
        }
    }
}

/// One contender with its live ranges, one slot per live range.
pub struct Live<C: Contender> {
    c: C,
    slots: Vec<Option<(C::Handle, u32)>>,
    /// Allocations that failed so far (their slot stays empty).
    pub failed: u64,
}

impl<C: Contender> Live<C> {
    /// A fresh `C` over `space_units` pages holding the ranges of `prefill`, one per slot.
    pub fn new(space_units: u32, prefill: &[u32]) -> Live<C> {
        let mut l = Live {
            c: C::new(space_units, prefill.len()),
            slots: Vec::with_capacity(prefill.len()),
            failed: 0,
        };
        for &units in prefill {
            let h = l.c.alloc(units);
            l.failed += u64::from(h.is_none());
            l.slots.push(h.map(|h| (h, units)));
        }
        l
    }

    /// Frees what `slot` holds and allocates `units` pages into it.
    pub fn step(&mut self, slot: u32, units: u32) {
        let s = &mut self.slots[slot as usize];
        if let Some((h, u)) = s.take() {
            self.c.free(h, u);
        }
        let h = self.c.alloc(units);
        self.failed += u64::from(h.is_none());
        *s = h.map(|h| (h, units));
    }

    /// Runs `steps` in order.
    pub fn run(&mut self, steps: &[(u32, u32)]) {
        for &(slot, units) in steps {
            self.step(slot, units);
        }
    }

    /// The allocator.
    pub fn inner(&self) -> &C {
        &self.c
    }
}
