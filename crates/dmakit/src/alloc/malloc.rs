//! The IOMalloc family: `io_malloc`, `io_malloc_zero`, `io_malloc_aligned`,
//! `io_malloc_pageable`, and the frees `io_free`, `io_free_aligned`, `io_free_pageable`.
//!
//! IOKit's `IOMalloc` hands out wired memory in the kernel map; the caller must remember the
//! size, because `IOFree(ptr, size)` needs it back (kalloc finds the zone from the size and
//! panics on "size confusion"). dmakit keeps those semantics over any platform's
//! [`PhysicalMemory`]: an [`IoHeap`] allocates from the platform's kernel task, small blocks
//! from power-of-two *zones* carved out of wired pages, large blocks as whole pages.
//!
//! What dmakit does differently, on purpose (IOKIT-SEMANTICS §11 and §17):
//!
//! * Every free is checked, in every build: a size other than the allocation's is
//!   [`Error::WrongSize`], a free through the wrong function is [`Error::WrongFree`], an
//!   address no live allocation starts at is [`Error::NotAllocated`]. Nothing is freed when
//!   the check fails. (IOKit panics on some of these and silently corrupts accounting on
//!   others.)
//! * A zero size is [`Error::ZeroSize`] (IOKit's `IOMalloc(0)` returns a 16-byte element,
//!   `IOMallocAligned(0)` returns NULL); a non-power-of-two alignment is
//!   [`Error::BadAlignment`] (IOKit rounds 48 up to 64); sizes that overflow are
//!   [`Error::Overflow`].
//! * `io_free*(0, size)` is a no-op, as in IOKit.
//!
//! Addresses are kernel-task [`VirtAddr`]s; the bytes are reached through the platform's
//! [`CpuAccess`] (on the simulated machine they pass through its cache model). For Rust code
//! the owning [`IoMemory`] frees itself with the right function and size on drop.
//!
//! ```
//! # use dmakit::alloc::{IoHeap, io_malloc, io_free};
//! # fn demo<P: dmakit::platform::PhysicalMemory + dmakit::platform::CpuAccess>(platform: P) -> dmakit::Result<()> {
//! let heap = IoHeap::new(platform);
//! let p = io_malloc(&heap, 100)?;          // wired, from the 128-byte zone
//! io_free(&heap, p, 100)?;                  // the size must match
//!
//! let buf = heap.alloc_zeroed(8192)?;       // owning: freed on drop
//! buf.write(0, b"hello")?;
//! # Ok(()) }
//! ```

use crate::error::MallocFamily;
use crate::platform::{CpuAccess, PageRequest, PhysicalMemory, Task};
use crate::{Error, Result, VirtAddr};
use alloc_crate::collections::{BTreeMap, BTreeSet};
use alloc_crate::vec::Vec;

/// The smallest zone element, as kalloc's smallest zone.
const MIN_ELEMENT: u64 = 16;
/// IOMallocPageable's size limit on x86_64.
const PAGEABLE_LIMIT: u64 = 512 << 20;
/// The largest alignment accepted (IOKit: must fit 32 bits).
const MAX_ALIGN: u64 = 1 << 31;

/// Where a live allocation's memory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backing {
    /// One element of zone `class` (element size `MIN_ELEMENT << class`).
    Zone { class: usize },
    /// Whole pages of its own.
    Pages { len: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Live {
    size: u64,
    family: MallocFamily,
    backing: Backing,
}

/// One power-of-two zone: free elements and the pages they live in.
#[derive(Debug, Default)]
struct Zone {
    free: BTreeSet<u64>,
    /// Page start → elements of that page in use.
    pages: BTreeMap<u64, u32>,
}

#[derive(Debug, Default)]
struct State {
    live: BTreeMap<u64, Live>,
    zones: Vec<Zone>,
    zone_pages: u64,
    page_bytes: u64,
}

/// Counters of an [`IoHeap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Live allocations.
    pub live: u64,
    /// Bytes asked for by the live allocations.
    pub live_bytes: u64,
    /// Pages held by zones (small allocations).
    pub zone_pages: u64,
    /// Bytes of whole-page allocations.
    pub page_bytes: u64,
}

/// A live allocation, as reported by [`IoHeap::leaks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leak {
    /// Its address.
    pub addr: VirtAddr,
    /// The size it was allocated with.
    pub size: u64,
    /// The family that allocated it.
    pub family: MallocFamily,
}

/// The kernel heap of one platform: the state behind the IOMalloc family.
///
/// # Invariants
///
/// Every key of `live` is the start of memory the heap holds (a zone element or its own
/// pages) and is in no zone's free set; every zone page is a page the platform allocated for
/// this heap and is counted in `zone_pages`.
pub struct IoHeap<P: PhysicalMemory + CpuAccess> {
    platform: P,
    state: spin::Mutex<State>,
}

impl<P: PhysicalMemory + CpuAccess> IoHeap<P> {
    /// A heap over `platform` (which may be a reference or an `Arc`).
    pub fn new(platform: P) -> Self {
        let page = platform.page_size().bytes();
        let classes = (page / 2 / MIN_ELEMENT).trailing_zeros() as usize + 1;
        let mut zones = Vec::with_capacity(classes);
        zones.resize_with(classes, Zone::default);
        IoHeap {
            platform,
            state: spin::Mutex::new(State {
                zones,
                ..State::default()
            }),
        }
    }

    /// The platform underneath.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Current counters.
    pub fn stats(&self) -> HeapStats {
        let s = self.state.lock();
        HeapStats {
            live: s.live.len() as u64,
            live_bytes: s.live.values().map(|l| l.size).sum(),
            zone_pages: s.zone_pages,
            page_bytes: s.page_bytes,
        }
    }

    /// Every live allocation, in address order: what would leak if the heap went away now.
    pub fn leaks(&self) -> Vec<Leak> {
        self.state
            .lock()
            .live
            .iter()
            .map(|(&a, l)| Leak {
                addr: VirtAddr(a),
                size: l.size,
                family: l.family,
            })
            .collect()
    }

    fn page(&self) -> u64 {
        self.platform.page_size().bytes()
    }

    fn class_for(&self, bytes: u64) -> Option<usize> {
        let elem = bytes.max(MIN_ELEMENT).checked_next_power_of_two()?;
        if elem > self.page() / 2 {
            return None;
        }
        Some((elem / MIN_ELEMENT).trailing_zeros() as usize)
    }

    fn validate_size(&self, size: usize, what: &'static str) -> Result<u64> {
        if size == 0 {
            return Err(Error::ZeroSize { what });
        }
        let size = size as u64;
        // The page-rounded size must be representable.
        self.platform
            .page_size()
            .round_up(size)
            .ok_or(Error::Overflow {
                what,
                start: 0,
                len: size,
            })?;
        Ok(size)
    }

    fn zone_alloc(&self, s: &mut State, class: usize) -> Result<u64> {
        let elem = MIN_ELEMENT << class;
        if let Some(a) = s.zones[class].free.pop_first() {
            let page = self.platform.page_size().trunc(a);
            *s.zones[class].pages.entry(page).or_insert(0) += 1;
            return Ok(a);
        }
        let page_len = self.page();
        let page = self
            .platform
            .allocate_pages(page_len, &PageRequest::WIRED)?
            .0;
        s.zone_pages += 1;
        let zone = &mut s.zones[class];
        zone.free
            .extend((1..page_len / elem).map(|i| page + i * elem));
        zone.pages.insert(page, 1);
        Ok(page)
    }

    fn zone_free(&self, s: &mut State, class: usize, addr: u64) {
        let elem = MIN_ELEMENT << class;
        let page_len = self.page();
        let page = self.platform.page_size().trunc(addr);
        let zone = &mut s.zones[class];
        zone.free.insert(addr);
        let used = zone.pages.get_mut(&page).map(|u| {
            *u -= 1;
            *u
        });
        if used == Some(0) && self.platform.free_pages(VirtAddr(page), page_len).is_ok() {
            zone.pages.remove(&page);
            for a in (0..page_len / elem).map(|i| page + i * elem) {
                zone.free.remove(&a);
            }
            s.zone_pages -= 1;
        }
    }

    fn allocate(
        &self,
        size: u64,
        align: u64,
        family: MallocFamily,
        req: &PageRequest,
    ) -> Result<VirtAddr> {
        let mut s = self.state.lock();
        let zone = if req.pageable {
            None
        } else {
            self.class_for(size.max(align))
        };
        let (addr, backing) = match zone {
            Some(class) => (self.zone_alloc(&mut s, class)?, Backing::Zone { class }),
            None => {
                let len = self
                    .platform
                    .page_size()
                    .round_up(size)
                    .ok_or(Error::Overflow {
                        what: family.alloc_fn(),
                        start: 0,
                        len: size,
                    })?;
                let req = PageRequest { align, ..*req };
                let a = self.platform.allocate_pages(len, &req)?.0;
                s.page_bytes += len;
                (a, Backing::Pages { len })
            }
        };
        s.live.insert(
            addr,
            Live {
                size,
                family,
                backing,
            },
        );
        Ok(VirtAddr(addr))
    }

    fn free(&self, addr: VirtAddr, size: usize, family: MallocFamily) -> Result<()> {
        if addr.0 == 0 {
            return Ok(());
        }
        let free_fn = family.free_fn();
        let mut s = self.state.lock();
        let live = *s.live.get(&addr.0).ok_or(Error::NotAllocated {
            free_fn,
            addr: addr.0,
        })?;
        if live.family != family {
            return Err(Error::WrongFree {
                free_fn,
                addr: addr.0,
                allocated_by: live.family,
            });
        }
        if live.size != size as u64 {
            return Err(Error::WrongSize {
                free_fn,
                addr: addr.0,
                allocated: live.size,
                given: size as u64,
            });
        }
        match live.backing {
            Backing::Zone { class } => self.zone_free(&mut s, class, addr.0),
            Backing::Pages { len } => {
                // A wired range (a device may still reach it) is refused and stays live.
                self.platform.free_pages(addr, len)?;
                s.page_bytes -= len;
            }
        }
        s.live.remove(&addr.0);
        Ok(())
    }

    /// `io_malloc`: `size` bytes of wired kernel memory, contents unspecified.
    pub fn malloc(&self, size: usize) -> Result<VirtAddr> {
        let size = self.validate_size(size, "io_malloc")?;
        self.allocate(size, 1, MallocFamily::Malloc, &PageRequest::WIRED)
    }

    /// `io_malloc_zero`: as [`malloc`](Self::malloc), zero-filled.
    pub fn malloc_zero(&self, size: usize) -> Result<VirtAddr> {
        let a = self.malloc(size)?;
        if let Err(e) = self.zero(a, size as u64) {
            // Give the memory back; the zeroing error is the one to report.
            let _ = self.free(a, size, MallocFamily::Malloc);
            return Err(e);
        }
        Ok(a)
    }

    /// `io_malloc_aligned`: wired memory whose address is a multiple of `align` (a power of
    /// two up to 2 GiB; 0 means 1).
    pub fn malloc_aligned(&self, size: usize, align: usize) -> Result<VirtAddr> {
        let size = self.validate_size(size, "io_malloc_aligned")?;
        let align = check_align("io_malloc_aligned", align as u64, MAX_ALIGN)?;
        self.allocate(size, align, MallocFamily::Aligned, &PageRequest::WIRED)
    }

    /// `io_malloc_pageable`: pageable kernel memory (whole pages, zero-filled), aligned to
    /// `align` (a power of two, at most the page size; 0 means 1). At most 512 MiB, as on
    /// x86_64 macOS.
    pub fn malloc_pageable(&self, size: usize, align: usize) -> Result<VirtAddr> {
        let size = self.validate_size(size, "io_malloc_pageable")?;
        let align = check_align("io_malloc_pageable", align as u64, self.page())?;
        if size > PAGEABLE_LIMIT {
            return Err(Error::NoMemory {
                what: "io_malloc_pageable (limit 512 MiB)",
                requested: size,
                available: PAGEABLE_LIMIT,
            });
        }
        self.allocate(size, align, MallocFamily::Pageable, &PageRequest::PAGEABLE)
    }

    fn zero(&self, addr: VirtAddr, len: u64) -> Result<()> {
        const CHUNK: u64 = 4096;
        let zeros = [0u8; CHUNK as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            self.platform.write_virt(
                Task::KERNEL,
                VirtAddr(addr.0 + done),
                &zeros[..n as usize],
            )?;
            done += n;
        }
        Ok(())
    }

    /// Allocates with `io_malloc` and returns an owner that frees on drop.
    pub fn alloc(&self, size: usize) -> Result<IoMemory<'_, P>> {
        let addr = self.malloc(size)?;
        Ok(IoMemory::new(self, addr, size, MallocFamily::Malloc))
    }

    /// Allocates with `io_malloc_zero` and returns an owner that frees on drop.
    pub fn alloc_zeroed(&self, size: usize) -> Result<IoMemory<'_, P>> {
        let addr = self.malloc_zero(size)?;
        Ok(IoMemory::new(self, addr, size, MallocFamily::Malloc))
    }

    /// Allocates with `io_malloc_aligned` and returns an owner that frees on drop.
    pub fn alloc_aligned(&self, size: usize, align: usize) -> Result<IoMemory<'_, P>> {
        let addr = self.malloc_aligned(size, align)?;
        Ok(IoMemory::new(self, addr, size, MallocFamily::Aligned))
    }

    /// Allocates with `io_malloc_pageable` and returns an owner that frees on drop.
    pub fn alloc_pageable(&self, size: usize, align: usize) -> Result<IoMemory<'_, P>> {
        let addr = self.malloc_pageable(size, align)?;
        Ok(IoMemory::new(self, addr, size, MallocFamily::Pageable))
    }
}

impl<P: PhysicalMemory + CpuAccess> Drop for IoHeap<P> {
    /// Returns the zone pages and whole-page blocks to the platform. Memory still wired by
    /// someone else (a device may reach it) is refused by the platform and stays allocated.
    fn drop(&mut self) {
        let page_len = self.page();
        let s = self.state.get_mut();
        for zone in &s.zones {
            for &page in zone.pages.keys() {
                let _ = self.platform.free_pages(VirtAddr(page), page_len);
            }
        }
        for (&a, l) in &s.live {
            if let Backing::Pages { len } = l.backing {
                let _ = self.platform.free_pages(VirtAddr(a), len);
            }
        }
    }
}

impl<P: PhysicalMemory + CpuAccess> core::fmt::Debug for IoHeap<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoHeap")
            .field("stats", &self.stats())
            .finish()
    }
}

impl MallocFamily {
    /// The function that allocates this family.
    pub const fn alloc_fn(self) -> &'static str {
        match self {
            MallocFamily::Malloc => "io_malloc",
            MallocFamily::Aligned => "io_malloc_aligned",
            MallocFamily::Pageable => "io_malloc_pageable",
        }
    }
}

fn check_align(what: &'static str, align: u64, max: u64) -> Result<u64> {
    let align = align.max(1);
    if !align.is_power_of_two() || align > max {
        return Err(Error::BadAlignment { what, align });
    }
    Ok(align)
}

/// IOMalloc: `size` bytes of wired kernel memory. Free with [`io_free`] and the same size.
pub fn io_malloc<P: PhysicalMemory + CpuAccess>(heap: &IoHeap<P>, size: usize) -> Result<VirtAddr> {
    heap.malloc(size)
}

/// IOMallocZero: as [`io_malloc`], zero-filled. Free with [`io_free`].
pub fn io_malloc_zero<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    size: usize,
) -> Result<VirtAddr> {
    heap.malloc_zero(size)
}

/// IOMallocAligned: wired memory aligned to `align`. Free with [`io_free_aligned`].
pub fn io_malloc_aligned<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    size: usize,
    align: usize,
) -> Result<VirtAddr> {
    heap.malloc_aligned(size, align)
}

/// IOMallocPageable: pageable memory. Free with [`io_free_pageable`].
pub fn io_malloc_pageable<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    size: usize,
    align: usize,
) -> Result<VirtAddr> {
    heap.malloc_pageable(size, align)
}

/// IOFree: frees an [`io_malloc`] / [`io_malloc_zero`] block; `size` must be the
/// allocation's. A null address is a no-op.
pub fn io_free<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    addr: VirtAddr,
    size: usize,
) -> Result<()> {
    heap.free(addr, size, MallocFamily::Malloc)
}

/// IOFreeAligned: frees an [`io_malloc_aligned`] block; `size` must be the allocation's.
pub fn io_free_aligned<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    addr: VirtAddr,
    size: usize,
) -> Result<()> {
    heap.free(addr, size, MallocFamily::Aligned)
}

/// IOFreePageable: frees an [`io_malloc_pageable`] block; `size` must be the allocation's.
pub fn io_free_pageable<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    addr: VirtAddr,
    size: usize,
) -> Result<()> {
    heap.free(addr, size, MallocFamily::Pageable)
}

/// An owned IOMalloc-family block that frees itself, with the right function and size, on
/// drop.
///
/// The bytes are reached with [`read`](Self::read) and [`write`](Self::write) through the
/// platform's CPU access path.
pub struct IoMemory<'h, P: PhysicalMemory + CpuAccess> {
    heap: &'h IoHeap<P>,
    addr: VirtAddr,
    len: usize,
    family: MallocFamily,
}

impl<'h, P: PhysicalMemory + CpuAccess> IoMemory<'h, P> {
    fn new(heap: &'h IoHeap<P>, addr: VirtAddr, len: usize, family: MallocFamily) -> Self {
        IoMemory {
            heap,
            addr,
            len,
            family,
        }
    }

    /// Kernel virtual address of the first byte.
    pub fn addr(&self) -> VirtAddr {
        self.addr
    }

    /// Length in bytes (the size allocated).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: allocations have at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Which family allocated it.
    pub fn family(&self) -> MallocFamily {
        self.family
    }

    fn check(&self, offset: usize, n: usize) -> Result<()> {
        match offset.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                what: "IoMemory",
                offset: offset as u64,
                len: n as u64,
                limit: self.len as u64,
            }),
        }
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        self.heap
            .platform
            .read_virt(Task::KERNEL, VirtAddr(self.addr.0 + offset as u64), buf)
    }

    /// Copies `data` to `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        self.heap
            .platform
            .write_virt(Task::KERNEL, VirtAddr(self.addr.0 + offset as u64), data)
    }

    /// Sets every byte to `byte`.
    pub fn fill(&self, byte: u8) -> Result<()> {
        let chunk = [byte; 256];
        let mut off = 0;
        while off < self.len {
            let n = (self.len - off).min(chunk.len());
            self.write(off, &chunk[..n])?;
            off += n;
        }
        Ok(())
    }

    /// The whole block as a vector.
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let mut v = alloc_crate::vec![0u8; self.len];
        self.read(0, &mut v)?;
        Ok(v)
    }

    /// Gives up ownership without freeing; returns what [`io_free`] (or its sibling for the
    /// family) needs.
    pub fn into_raw(self) -> (VirtAddr, usize, MallocFamily) {
        let me = core::mem::ManuallyDrop::new(self);
        (me.addr, me.len, me.family)
    }
}

impl<P: PhysicalMemory + CpuAccess> Drop for IoMemory<'_, P> {
    fn drop(&mut self) {
        // The free can only fail if the pages are wired by someone else (a device may still
        // reach them): then they stay allocated, which is the safe outcome.
        let _ = self.heap.free(self.addr, self.len, self.family);
    }
}

impl<P: PhysicalMemory + CpuAccess> core::fmt::Debug for IoMemory<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoMemory")
            .field("addr", &self.addr)
            .field("len", &self.len)
            .field("family", &self.family)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    //! The heap's bookkeeping, over a small flat-memory platform. The same behaviour is
    //! tested over the simulated machine and the Linux host in their crates.
    use super::*;
    use crate::platform::PageRequest;
    use crate::{PageSize, PhysAddr};
    use alloc_crate::vec;

    /// Kernel virtual memory as one flat array from `BASE`; pages handed out bump-style with
    /// a free list; `wired` marks pages an outside party holds.
    struct Flat {
        page: PageSize,
        mem: spin::Mutex<Vec<u8>>,
        next: spin::Mutex<u64>,
        allocs: spin::Mutex<BTreeMap<u64, u64>>,
        pinned: spin::Mutex<BTreeSet<u64>>,
        fail_alloc: spin::Mutex<bool>,
    }

    const BASE: u64 = 0x10_0000;

    impl Flat {
        fn new(page: PageSize) -> Self {
            Flat {
                page,
                mem: spin::Mutex::new(vec![0xAA; 16 << 20]),
                next: spin::Mutex::new(BASE),
                allocs: spin::Mutex::new(BTreeMap::new()),
                pinned: spin::Mutex::new(BTreeSet::new()),
                fail_alloc: spin::Mutex::new(false),
            }
        }
        fn outstanding(&self) -> usize {
            self.allocs.lock().len()
        }
    }

    impl PhysicalMemory for Flat {
        fn page_size(&self) -> PageSize {
            self.page
        }
        fn allocate_pages(&self, len: u64, req: &PageRequest) -> Result<VirtAddr> {
            if *self.fail_alloc.lock() {
                return Err(Error::NoMemory {
                    what: "flat",
                    requested: len,
                    available: 0,
                });
            }
            assert_eq!(len % self.page.bytes(), 0, "heap must ask for whole pages");
            let align = req.align.max(self.page.bytes());
            let mut next = self.next.lock();
            let a = (*next + align - 1) & !(align - 1);
            let end = a + len;
            if end - BASE > self.mem.lock().len() as u64 {
                return Err(Error::NoMemory {
                    what: "flat",
                    requested: len,
                    available: 0,
                });
            }
            *next = end;
            self.mem.lock()[(a - BASE) as usize..(end - BASE) as usize].fill(0);
            self.allocs.lock().insert(a, len);
            Ok(VirtAddr(a))
        }
        fn free_pages(&self, va: VirtAddr, len: u64) -> Result<()> {
            if self.pinned.lock().contains(&va.0) {
                return Err(Error::Busy {
                    what: "pages",
                    addr: va.0,
                    why: "wired",
                });
            }
            match self.allocs.lock().remove(&va.0) {
                Some(l) if l == len => Ok(()),
                _ => Err(Error::NotAllocated {
                    free_fn: "free_pages",
                    addr: va.0,
                }),
            }
        }
        fn read_phys(&self, _: PhysAddr, _: &mut [u8]) -> Result<()> {
            Err(Error::Unsupported { what: "flat phys" })
        }
        fn write_phys(&self, _: PhysAddr, _: &[u8]) -> Result<()> {
            Err(Error::Unsupported { what: "flat phys" })
        }
    }

    impl CpuAccess for Flat {
        fn read_virt(&self, _: Task, va: VirtAddr, buf: &mut [u8]) -> Result<()> {
            let o = (va.0 - BASE) as usize;
            buf.copy_from_slice(&self.mem.lock()[o..o + buf.len()]);
            Ok(())
        }
        fn write_virt(&self, _: Task, va: VirtAddr, data: &[u8]) -> Result<()> {
            let o = (va.0 - BASE) as usize;
            self.mem.lock()[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn heap() -> IoHeap<Flat> {
        IoHeap::new(Flat::new(PageSize::SIZE_4K))
    }

    #[test]
    fn small_blocks_share_zone_pages_and_return_them() {
        let h = heap();
        let a = io_malloc(&h, 100).unwrap();
        let b = io_malloc(&h, 128).unwrap();
        assert_eq!(h.stats().zone_pages, 1);
        assert_eq!(a.0 % 128, 0);
        assert_eq!(b.0 % 128, 0);
        assert_ne!(a, b);
        io_free(&h, a, 100).unwrap();
        io_free(&h, b, 128).unwrap();
        assert_eq!(h.stats(), HeapStats::default());
        assert_eq!(
            h.platform().outstanding(),
            0,
            "zone page went back to the platform"
        );
    }

    #[test]
    fn zone_elements_never_overlap() {
        let h = heap();
        let mut v: Vec<(u64, usize)> = Vec::new();
        for i in 0..300usize {
            let size = 1 + (i * 37) % 3000;
            v.push((io_malloc(&h, size).unwrap().0, size));
        }
        let mut sorted = v.clone();
        sorted.sort();
        for w in sorted.windows(2) {
            assert!(
                w[0].0 + w[0].1 as u64 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        for (a, s) in v {
            io_free(&h, VirtAddr(a), s).unwrap();
        }
        assert_eq!(h.platform().outstanding(), 0);
    }

    #[test]
    fn large_blocks_take_whole_pages() {
        let h = heap();
        let a = io_malloc(&h, 10_000).unwrap();
        assert_eq!(a.0 % 4096, 0);
        assert_eq!(h.stats().page_bytes, 12288);
        io_free(&h, a, 10_000).unwrap();
        assert_eq!(h.stats().page_bytes, 0);
    }

    #[test]
    fn malloc_zero_clears_reused_elements() {
        let h = heap();
        let m = h.alloc(64).unwrap();
        m.fill(0x5A).unwrap();
        let (addr, len, _) = m.into_raw();
        // Keep the zone page alive so the element is reused, not a fresh page.
        let keep = io_malloc(&h, 64).unwrap();
        io_free(&h, addr, len).unwrap();
        let z = h.alloc_zeroed(64).unwrap();
        assert_eq!(z.addr(), addr, "element reused");
        assert!(z.to_vec().unwrap().iter().all(|&b| b == 0));
        drop(z);
        io_free(&h, keep, 64).unwrap();
    }

    #[test]
    fn aligned_allocations_honour_alignment() {
        let h = heap();
        for (size, align) in [
            (1, 1),
            (10, 64),
            (100, 2048),
            (5000, 8192),
            (1, 1 << 20),
            (48, 0),
        ] {
            let a = io_malloc_aligned(&h, size, align).unwrap();
            assert_eq!(a.0 % (align.max(1) as u64), 0, "size {size} align {align}");
            io_free_aligned(&h, a, size).unwrap();
        }
        assert_eq!(h.stats(), HeapStats::default());
    }

    #[test]
    fn pageable_memory_is_whole_zeroed_pages() {
        let h = heap();
        let m = h.alloc_pageable(100, 4096).unwrap();
        assert_eq!(m.addr().0 % 4096, 0);
        assert!(m.to_vec().unwrap().iter().all(|&b| b == 0));
        assert!(matches!(
            io_malloc_pageable(&h, 100, 8192),
            Err(Error::BadAlignment { align: 8192, .. })
        ));
        assert!(matches!(
            io_malloc_pageable(&h, (512 << 20) + 1, 0),
            Err(Error::NoMemory { .. })
        ));
    }

    #[test]
    fn bad_sizes_and_alignments_are_errors() {
        let h = heap();
        assert!(matches!(io_malloc(&h, 0), Err(Error::ZeroSize { .. })));
        assert!(matches!(io_malloc_zero(&h, 0), Err(Error::ZeroSize { .. })));
        assert!(matches!(
            io_malloc_aligned(&h, 0, 8),
            Err(Error::ZeroSize { .. })
        ));
        assert!(matches!(
            io_malloc_pageable(&h, 0, 0),
            Err(Error::ZeroSize { .. })
        ));
        assert!(matches!(
            io_malloc(&h, usize::MAX),
            Err(Error::Overflow { .. })
        ));
        assert!(matches!(
            io_malloc_aligned(&h, usize::MAX - 10, 8),
            Err(Error::Overflow { .. })
        ));
        assert!(matches!(
            io_malloc_aligned(&h, 8, 48),
            Err(Error::BadAlignment { align: 48, .. })
        ));
        assert!(matches!(
            io_malloc_aligned(&h, 8, 1 << 32),
            Err(Error::BadAlignment { .. })
        ));
        assert_eq!(h.stats(), HeapStats::default());
        assert_eq!(h.platform().outstanding(), 0);
    }

    #[test]
    fn wrong_size_wrong_family_and_unknown_address_are_caught() {
        let h = heap();
        let a = io_malloc(&h, 100).unwrap();
        let p = io_malloc_pageable(&h, 100, 0).unwrap();
        let e = io_free(&h, a, 99).unwrap_err();
        assert_eq!(
            e,
            Error::WrongSize {
                free_fn: "io_free",
                addr: a.0,
                allocated: 100,
                given: 99
            }
        );
        assert_eq!(e.io_return(), crate::IoReturn::BAD_ARGUMENT);
        assert!(matches!(
            io_free_aligned(&h, a, 100),
            Err(Error::WrongFree {
                allocated_by: MallocFamily::Malloc,
                ..
            })
        ));
        assert!(matches!(
            io_free(&h, p, 100),
            Err(Error::WrongFree {
                allocated_by: MallocFamily::Pageable,
                ..
            })
        ));
        assert!(matches!(
            io_free(&h, VirtAddr(a.0 + 16), 100),
            Err(Error::NotAllocated { .. })
        ));
        // Nothing was freed by the failed calls.
        assert_eq!(h.stats().live, 2);
        io_free(&h, a, 100).unwrap();
        io_free_pageable(&h, p, 100).unwrap();
        // Double free is an unknown address now.
        assert!(matches!(
            io_free(&h, a, 100),
            Err(Error::NotAllocated { .. })
        ));
        // Null is a no-op, as IOFree(NULL, n).
        io_free(&h, VirtAddr(0), 5).unwrap();
        assert_eq!(h.platform().outstanding(), 0);
    }

    #[test]
    fn platform_failure_leaks_nothing() {
        let h = heap();
        *h.platform().fail_alloc.lock() = true;
        assert!(matches!(io_malloc(&h, 10), Err(Error::NoMemory { .. })));
        assert!(matches!(
            io_malloc(&h, 100_000),
            Err(Error::NoMemory { .. })
        ));
        assert!(matches!(
            io_malloc_zero(&h, 10),
            Err(Error::NoMemory { .. })
        ));
        assert_eq!(h.stats(), HeapStats::default());
    }

    #[test]
    fn wired_pages_are_not_freed_under_a_device() {
        let h = heap();
        let a = io_malloc(&h, 8192).unwrap();
        h.platform().pinned.lock().insert(a.0);
        assert!(matches!(io_free(&h, a, 8192), Err(Error::Busy { .. })));
        assert_eq!(
            h.leaks(),
            vec![Leak {
                addr: a,
                size: 8192,
                family: MallocFamily::Malloc
            }]
        );
        h.platform().pinned.lock().clear();
        io_free(&h, a, 8192).unwrap();
        assert!(h.leaks().is_empty());
    }

    #[test]
    fn owner_bounds_and_drop() {
        let h = heap();
        {
            let m = h.alloc(10).unwrap();
            m.write(0, b"0123456789").unwrap();
            let mut b = [0u8; 4];
            m.read(6, &mut b).unwrap();
            assert_eq!(&b, b"6789");
            assert!(matches!(m.write(8, b"xyz"), Err(Error::OutOfBounds { .. })));
            assert!(matches!(
                m.read(usize::MAX, &mut b),
                Err(Error::OutOfBounds { .. })
            ));
            assert_eq!(h.stats().live, 1);
        }
        assert_eq!(h.stats().live, 0);
        assert_eq!(h.platform().outstanding(), 0);
    }

    #[test]
    fn sixteen_k_pages_have_bigger_zones() {
        let h = IoHeap::new(Flat::new(PageSize::SIZE_16K));
        let a = io_malloc(&h, 8192).unwrap();
        assert_eq!(
            h.stats().zone_pages,
            1,
            "8 KiB fits a zone with 16 KiB pages"
        );
        let b = io_malloc(&h, 8193).unwrap();
        assert_eq!(h.stats().page_bytes, 16384);
        io_free(&h, a, 8192).unwrap();
        io_free(&h, b, 8193).unwrap();
        assert_eq!(h.platform().outstanding(), 0);
    }
}
