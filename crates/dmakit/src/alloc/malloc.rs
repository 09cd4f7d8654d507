//! The IOMalloc family: `io_malloc`, `io_malloc_zero`, `io_malloc_aligned`,
//! `io_malloc_pageable`, `io_malloc_contiguous`, the frees `io_free`, `io_free_aligned`,
//! `io_free_pageable`, `io_free_contiguous`, and IOKit's `IOSizeToAlignment` /
//! `IOAlignmentToSize` ([`io_size_to_alignment`], [`io_alignment_to_size`]).
//!
//! IOKit's `IOMalloc` hands out wired memory in the kernel map; the caller must remember the
//! size, because `IOFree(ptr, size)` needs it back (kalloc finds the zone from the size and
//! panics on "size confusion"). dmakit keeps those semantics over any platform's
//! [`PhysicalMemory`]: an [`IoHeap`] allocates from the platform's kernel task, small blocks
//! from power-of-two *zones* carved out of wired pages, large blocks as whole pages.
//!
//! What dmakit does differently from IOKit, on purpose:
//!
//! * Every free is checked, in every build: a size other than the allocation's is
//!   [`Error::WrongSize`], a free through the wrong function is [`Error::WrongFree`], an
//!   address no live allocation starts at is [`Error::NotAllocated`]. Nothing is freed when
//!   the check fails. (IOKit panics on some of these and silently corrupts accounting on
//!   others.)
//! * Sizes that overflow are [`Error::Overflow`] (IOKit's arithmetic may wrap).
//! * The contiguous family refuses a zero size ([`Error::ZeroSize`], where IOKit returns
//!   NULL) and an alignment that is not a power of two ([`Error::BadAlignment`]: IOKit uses
//!   `align - 1` as a mask there, which for such an alignment aligns to nothing in
//!   particular).
//! * `io_free*(0, size)` is a no-op, as in IOKit.
//! * Memory a device may still reach is never recycled. A whole-page block is refused by the
//!   platform ([`PhysicalMemory::free_pages`] is `Busy` while a page is wired). A small block
//!   shares its zone page with others, so the page is never freed under it; instead the heap
//!   asks the platform whether a wiring covers any byte of *this* block
//!   ([`PhysicalMemory::kernel_range_wired`]) and refuses with [`Error::Busy`] while a
//!   prepared descriptor holds it. The block stays allocated; free it after `complete`.
//!   (IOKit's `IOFree` frees it, and the next `IOMalloc` of that size may hand the device's
//!   target to someone else.)
//!
//! Where IOKit gives a defined answer, dmakit gives the same one:
//!
//! * `io_malloc(0)` and `io_malloc_zero(0)` return a block (the smallest zone element,
//!   16 bytes), freed with `io_free(addr, 0)`, as kalloc does for IOKit's `IOMalloc(0)`;
//!   `io_malloc_pageable(0)` returns a block too (one page here; IOKit's x86_64 sub-page
//!   allocator hands out one 64-byte chunk), freed with `io_free_pageable(addr, 0)`.
//!   `io_malloc_aligned(0)` is [`Error::ZeroSize`], where IOKit returns NULL.
//! * The alignment of `io_malloc_aligned` and `io_malloc_pageable` is rounded up to a power
//!   of two, as in IOKit (`48` aligns to 64; `0` and `1` mean none). `io_malloc_aligned`
//!   refuses an alignment above `0xFFFF_FFFF` (IOKit's must fit 32 bits; up to that it is
//!   rounded, so the largest is 2^32), and `io_malloc_pageable` one above the page size,
//!   both with [`Error::BadAlignment`] where IOKit returns NULL.
//!
//! Addresses are kernel-task [`VirtAddr`]s; the bytes are reached through the platform's
//! [`CpuAccess`] (on the simulated machine they pass through its cache model). For Rust code
//! the owning [`IoMemory`] frees itself with the right function and size on drop.
//!
//! ```
//! use dmakit::alloc::{io_free, io_malloc, IoHeap};
//! use dmakit::Error;
//! # let platform = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//! let heap = IoHeap::new(platform);
//! let p = io_malloc(&heap, 100)?;          // wired, from the 128-byte zone
//! assert!(matches!(io_free(&heap, p, 64), Err(Error::WrongSize { .. }))); // nothing freed
//! io_free(&heap, p, 100)?;                  // the size must match
//!
//! let buf = heap.alloc_zeroed(8192)?;       // owning: freed on drop
//! buf.write(0, b"hello")?;
//! assert_eq!(&buf.to_vec()?[..6], b"hello\0");
//! drop(buf);
//! assert_eq!(heap.stats().live, 0);
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::error::MallocFamily;
use crate::platform::{CpuAccess, PageRequest, PhysicalMemory, Task, Wiring};
use crate::{Error, PhysAddr, Result, VirtAddr};
use alloc_crate::collections::{BTreeMap, BTreeSet};
use alloc_crate::vec::Vec;

/// The smallest zone element, as kalloc's smallest zone.
const MIN_ELEMENT: u64 = 16;
/// IOMallocPageable's size limit on x86_64.
const PAGEABLE_LIMIT: u64 = 512 << 20;
/// The highest physical address of IOMallocContiguous memory: IOKit allocates it with a
/// 32-bit physical mask.
const CONTIGUOUS_PHYS_LIMIT: u64 = 0xFFFF_FFFF;
/// The largest alignment `io_malloc_contiguous` accepts: it must fit 32 bits, as IOKit
/// builds a 32-bit physical mask from it.
const MAX_ALIGN: u64 = 1 << 31;
/// The largest alignment `io_malloc_aligned` accepts before rounding (IOKit: it must fit 32
/// bits; rounded up, it is at most 2^32).
const ALIGNED_MAX_ALIGN: u64 = u32::MAX as u64;

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
/// ```
/// use dmakit::alloc::IoHeap;
/// use std::sync::Arc;
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// let heap = IoHeap::new(machine);
/// let small = heap.malloc(24)?;           // a 32-byte zone element in a wired page
/// let aligned = heap.malloc_aligned(256, 256)?;
/// assert_eq!(aligned.0 % 256, 0);
/// let s = heap.stats();
/// assert_eq!((s.live, s.live_bytes), (2, 24 + 256));
/// assert_eq!(heap.leaks().len(), 2, "what would leak if the heap went now");
/// dmakit::alloc::io_free(&heap, small, 24)?;
/// dmakit::alloc::io_free_aligned(&heap, aligned, 256)?;
/// assert!(heap.leaks().is_empty());
/// # Ok::<(), dmakit::Error>(())
/// ```
///
/// # Invariants
///
/// Every key of `live` is the start of memory the heap holds (a zone element or its own
/// pages) and is in no zone's free set; every zone page is a page the platform allocated for
/// this heap and is counted in `zone_pages`.
pub struct IoHeap<P: PhysicalMemory + CpuAccess> {
    platform: P,
    state: crate::sync::Mutex<State>,
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
            state: crate::sync::Mutex::new(State {
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

    /// `size` as a `u64`: [`Error::ZeroSize`] for 0 unless `zero_ok`, [`Error::Overflow`]
    /// when its page-rounded size does not fit.
    fn validate_size(&self, size: usize, what: &'static str, zero_ok: bool) -> Result<u64> {
        if size == 0 && !zero_ok {
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
        // Zones hold wired memory without physical constraints; anything else takes pages
        // of its own, allocated under the request.
        let zone = if req.pageable || req.constrains_physical() {
            None
        } else {
            self.class_for(size.max(align))
        };
        let (addr, backing) = match zone {
            Some(class) => (self.zone_alloc(&mut s, class)?, Backing::Zone { class }),
            None => {
                // A zero-size block (IOKit's `IOMallocPageable(0)`) takes one page.
                let len =
                    self.platform
                        .page_size()
                        .round_up(size.max(1))
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
            Backing::Zone { class } => {
                // The zone page stays allocated and wired whatever happens to its blocks, so
                // the platform's page-level refusal never fires here: ask whether a wiring
                // (a prepared descriptor, so possibly a device) reaches this block's bytes.
                // Recycling it now would hand the device's target to the next io_malloc.
                if self
                    .platform
                    .kernel_range_wired(addr, MIN_ELEMENT << class)?
                {
                    return Err(Error::Busy {
                        what: "small IOMalloc-family block (zone element)",
                        addr: addr.0,
                        why: "bytes of it are wired by a prepared descriptor (a device may \
                              still write them): complete the descriptor first",
                    });
                }
                self.zone_free(&mut s, class, addr.0)
            }
            Backing::Pages { len } => {
                // A wired range (a device may still reach it) is refused and stays live.
                self.platform.free_pages(addr, len)?;
                s.page_bytes -= len;
            }
        }
        s.live.remove(&addr.0);
        Ok(())
    }

    /// `io_malloc`: `size` bytes of wired kernel memory, contents unspecified. A `size` of 0
    /// gives a block too (the smallest zone element), as IOKit's `IOMalloc(0)` does; free it
    /// with size 0.
    pub fn malloc(&self, size: usize) -> Result<VirtAddr> {
        let size = self.validate_size(size, "io_malloc", true)?;
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

    /// `io_malloc_aligned`: wired memory whose address is a multiple of `align` rounded up
    /// to a power of two (as IOKit rounds it: 48 aligns to 64; 0 and 1 mean none). An
    /// `align` above `0xFFFF_FFFF` is [`Error::BadAlignment`] (IOKit: NULL), a zero `size`
    /// [`Error::ZeroSize`] (IOKit: NULL).
    pub fn malloc_aligned(&self, size: usize, align: usize) -> Result<VirtAddr> {
        let size = self.validate_size(size, "io_malloc_aligned", false)?;
        let align = round_align("io_malloc_aligned", align as u64, ALIGNED_MAX_ALIGN)?;
        self.allocate(size, align, MallocFamily::Aligned, &PageRequest::WIRED)
    }

    /// `io_malloc_pageable`: pageable kernel memory (whole pages, zero-filled), aligned to
    /// `align` rounded up to a power of two (as in IOKit; 0 and 1 mean none). An `align`
    /// above the page size is [`Error::BadAlignment`] (IOKit: NULL). At most 512 MiB, as on
    /// x86_64 macOS. A `size` of 0 gives a block (one page), as IOKit's gives one chunk;
    /// free it with size 0.
    pub fn malloc_pageable(&self, size: usize, align: usize) -> Result<VirtAddr> {
        let size = self.validate_size(size, "io_malloc_pageable", true)?;
        let page = self.page();
        let align = round_align("io_malloc_pageable", align as u64, page)?;
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

impl<P: PhysicalMemory + CpuAccess + Wiring> IoHeap<P> {
    /// `io_malloc_contiguous`: `size` bytes of wired, zero-filled, physically contiguous
    /// memory below 4 GiB whose virtual and physical start are multiples of `align`; returns
    /// both addresses. See [`io_malloc_contiguous`].
    pub fn malloc_contiguous(&self, size: usize, align: usize) -> Result<(VirtAddr, PhysAddr)> {
        const WHAT: &str = "io_malloc_contiguous";
        let size = self.validate_size(size, WHAT, false)?;
        let align = check_align(WHAT, align as u64, MAX_ALIGN)?;
        let req = PageRequest {
            align,
            phys_limit: CONTIGUOUS_PHYS_LIMIT,
            phys_min: 0,
            contiguous: true,
            pageable: false,
        };
        let va = self.allocate(size, align, MallocFamily::Contiguous, &req)?;
        let runs = crate::platform::collect_runs(&self.platform, Task::KERNEL, va, size);
        match runs.as_deref() {
            Ok([run]) if run.len == size && run.addr.is_aligned(align) => Ok((va, run.addr)),
            _ => {
                // Give the memory back; report why the platform's answer is unusable.
                let _ = self.free(va, size as usize, MallocFamily::Contiguous);
                Err(runs.err().unwrap_or(Error::Internal {
                    what: "io_malloc_contiguous: the platform returned memory that is not one \
                           aligned physical run",
                }))
            }
        }
    }

    /// Allocates with `io_malloc_contiguous` and returns an owner that frees on drop (with
    /// `io_free_contiguous`); [`IoMemory::phys_addr`] gives the physical address.
    pub fn alloc_contiguous(&self, size: usize, align: usize) -> Result<IoMemory<'_, P>> {
        let (addr, pa) = self.malloc_contiguous(size, align)?;
        let mut m = IoMemory::new(self, addr, size, MallocFamily::Contiguous);
        m.phys = Some(pa);
        Ok(m)
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
            MallocFamily::Contiguous => "io_malloc_contiguous",
        }
    }
}

/// An alignment that is 0 (read as 1) or a power of two up to `max`, else
/// [`Error::BadAlignment`].
fn check_align(what: &'static str, align: u64, max: u64) -> Result<u64> {
    let align = align.max(1);
    if !align.is_power_of_two() || align > max {
        return Err(Error::BadAlignment { what, align });
    }
    Ok(align)
}

/// IOKit's reading of an `IOMallocAligned` / `IOMallocPageable` alignment: 0 and 1 mean
/// none, anything else is rounded up to a power of two. An alignment above `max` (checked
/// before rounding, as IOKit does) is [`Error::BadAlignment`].
fn round_align(what: &'static str, align: u64, max: u64) -> Result<u64> {
    if align > max {
        return Err(Error::BadAlignment { what, align });
    }
    // `align <= max <= 2^32`, so the rounded value fits.
    Ok(align.max(1).next_power_of_two())
}

/// IOMalloc: `size` bytes of wired kernel memory. Free with [`io_free`] and the same size.
///
/// A `size` of 0 gives a block (the smallest zone element, 16 bytes), freed with size 0, as
/// IOKit's kalloc does. Also IOKit's `IOMallocData`: dmakit has one heap, so the data-only
/// variant is the same call.
pub fn io_malloc<P: PhysicalMemory + CpuAccess>(heap: &IoHeap<P>, size: usize) -> Result<VirtAddr> {
    heap.malloc(size)
}

/// IOMallocZero: as [`io_malloc`], zero-filled. Free with [`io_free`]. Also IOKit's
/// `IOMallocZeroData`.
pub fn io_malloc_zero<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    size: usize,
) -> Result<VirtAddr> {
    heap.malloc_zero(size)
}

/// IOMallocAligned: wired memory aligned to `align` rounded up to a power of two (as in
/// IOKit: 48 aligns to 64; 0 and 1 mean none; above `0xFFFF_FFFF` is
/// [`Error::BadAlignment`]). A zero `size` is [`Error::ZeroSize`] (IOKit: NULL). Free with
/// [`io_free_aligned`].
pub fn io_malloc_aligned<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    size: usize,
    align: usize,
) -> Result<VirtAddr> {
    heap.malloc_aligned(size, align)
}

/// IOMallocPageable: pageable memory, zero-filled (so also IOKit's
/// `IOMallocPageableZero`). Free with [`io_free_pageable`]. `align` is rounded up to a
/// power of two, as in IOKit; above the page size it is [`Error::BadAlignment`]. A `size`
/// of 0 gives a block, freed with size 0.
pub fn io_malloc_pageable<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    size: usize,
    align: usize,
) -> Result<VirtAddr> {
    heap.malloc_pageable(size, align)
}

/// IOFree (and IOKit's `IOFreeData`): frees an [`io_malloc`] / [`io_malloc_zero`] block;
/// `size` must be the allocation's. A null address is a no-op.
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

/// IOMallocContiguous: `size` bytes of wired, zero-filled, **physically contiguous** kernel
/// memory; returns its kernel virtual address and the physical address of its first byte.
/// Free with [`io_free_contiguous`] and the same size.
///
/// * `align` is a power of two (0 and 1 mean no alignment; more than a page is fine, up to
///   2 GiB); both the virtual and the physical start are multiples of it.
/// * As IOKit's (which allocates it with a 32-bit physical mask), every byte lies below
///   4 GiB, so a 32-bit DMA engine can reach it.
/// * Whole pages are taken, however small `size` is.
///
/// Errors: a zero `size` is [`Error::ZeroSize`] (IOKit returns NULL); an alignment that is
/// not a power of two, or above 2^31, is [`Error::BadAlignment`] (IOKit uses `align - 1` as
/// a mask, so such an alignment gives an address aligned to nothing in particular, or, in
/// its 32-bit physical mask, no memory at all); no contiguous run low
/// enough is the platform's error (on the simulated machine
/// [`Error::NoSuitableMemory`]). Nothing stays allocated after an error.
///
/// Deprecated in IOKit, in favour of an IOBufferMemoryDescriptor with a physical mask
/// ([`BufferMemoryDescriptor`](crate::descriptor::BufferMemoryDescriptor)), which drivers
/// should prefer.
///
/// ```
/// use dmakit::alloc::{io_free_contiguous, io_malloc_contiguous, IoHeap};
/// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// let heap = IoHeap::new(machine);
/// let (va, pa) = io_malloc_contiguous(&heap, 0x3000, 0x4000)?;
/// assert!(pa.0 % 0x4000 == 0 && va.0 % 0x4000 == 0);
/// assert!(pa.0 + 0x3000 <= 1 << 32, "below 4 GiB, for a 32-bit engine");
/// io_free_contiguous(&heap, va, 0x3000)?;
/// # Ok::<(), dmakit::Error>(())
/// ```
pub fn io_malloc_contiguous<P: PhysicalMemory + CpuAccess + Wiring>(
    heap: &IoHeap<P>,
    size: usize,
    align: usize,
) -> Result<(VirtAddr, PhysAddr)> {
    heap.malloc_contiguous(size, align)
}

/// IOFreeContiguous: frees an [`io_malloc_contiguous`] block; `size` must be the
/// allocation's ([`Error::WrongSize`] otherwise), an address no contiguous allocation
/// starts at is [`Error::NotAllocated`] (or [`Error::WrongFree`] for another family's
/// block), and memory still wired by a prepared descriptor is refused with [`Error::Busy`].
/// Nothing is freed when the call fails. A null address is a no-op.
pub fn io_free_contiguous<P: PhysicalMemory + CpuAccess>(
    heap: &IoHeap<P>,
    addr: VirtAddr,
    size: usize,
) -> Result<()> {
    heap.free(addr, size, MallocFamily::Contiguous)
}

/// IOSizeToAlignment: the alignment exponent of `size`, `floor(log2(size))`, and 0 for 0
/// and 1 (so the alignment `1 << k` is the largest power of two not above `size`).
///
/// Over 64 bits: IOKit's takes an `unsigned int`, so a size of 2^32 or more is cut to its
/// low 32 bits there; below 2^32 the two agree.
///
/// ```
/// use dmakit::alloc::io_size_to_alignment;
/// assert_eq!(io_size_to_alignment(0), 0);
/// assert_eq!(io_size_to_alignment(1), 0);
/// assert_eq!(io_size_to_alignment(2), 1);
/// assert_eq!(io_size_to_alignment(4095), 11);
/// assert_eq!(io_size_to_alignment(4096), 12);
/// assert_eq!(io_size_to_alignment(u64::MAX), 63);
/// ```
pub const fn io_size_to_alignment(size: u64) -> u32 {
    if size < 2 {
        0
    } else {
        63 - size.leading_zeros()
    }
}

/// IOAlignmentToSize: the size `2^align` of an alignment exponent, or `None` when it does not
/// fit in 64 bits (`align` ≥ 64).
///
/// Over 64 bits: IOKit's returns an `unsigned int`, so there an exponent of 32 or more
/// gives 0; below 32 the two agree.
///
/// ```
/// use dmakit::alloc::{io_alignment_to_size, io_size_to_alignment};
/// assert_eq!(io_alignment_to_size(0), Some(1));
/// assert_eq!(io_alignment_to_size(12), Some(4096));
/// assert_eq!(io_alignment_to_size(63), Some(1 << 63));
/// assert_eq!(io_alignment_to_size(64), None);
/// assert_eq!(io_alignment_to_size(u32::MAX), None);
/// // The round trip gives the largest power of two not above the size.
/// assert_eq!(io_alignment_to_size(io_size_to_alignment(6000)), Some(4096));
/// ```
pub const fn io_alignment_to_size(align: u32) -> Option<u64> {
    if align >= 64 {
        None
    } else {
        Some(1u64 << align)
    }
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
    /// The physical start, for contiguous memory.
    phys: Option<PhysAddr>,
}

impl<'h, P: PhysicalMemory + CpuAccess> IoMemory<'h, P> {
    fn new(heap: &'h IoHeap<P>, addr: VirtAddr, len: usize, family: MallocFamily) -> Self {
        IoMemory {
            heap,
            addr,
            len,
            family,
            phys: None,
        }
    }

    /// The physical address of the first byte, for memory from
    /// [`alloc_contiguous`](IoHeap::alloc_contiguous) (`None` for the other families, whose
    /// memory need not be physically contiguous).
    pub fn phys_addr(&self) -> Option<PhysAddr> {
        self.phys
    }

    /// Kernel virtual address of the first byte.
    pub fn addr(&self) -> VirtAddr {
        self.addr
    }

    /// Length in bytes (the size allocated).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block was allocated with size 0 (`io_malloc(0)` gives a block, as in
    /// IOKit).
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
            .field("phys", &self.phys)
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
        mem: crate::sync::Mutex<Vec<u8>>,
        next: crate::sync::Mutex<u64>,
        allocs: crate::sync::Mutex<BTreeMap<u64, u64>>,
        pinned: crate::sync::Mutex<BTreeSet<u64>>,
        /// Byte ranges an outside party has wired (`None`: the platform cannot tell).
        wired_bytes: crate::sync::Mutex<Option<Vec<(u64, u64)>>>,
        fail_alloc: crate::sync::Mutex<bool>,
    }

    const BASE: u64 = 0x10_0000;

    impl Flat {
        fn new(page: PageSize) -> Self {
            Flat {
                page,
                mem: crate::sync::Mutex::new(vec![0xAA; 16 << 20]),
                next: crate::sync::Mutex::new(BASE),
                allocs: crate::sync::Mutex::new(BTreeMap::new()),
                pinned: crate::sync::Mutex::new(BTreeSet::new()),
                wired_bytes: crate::sync::Mutex::new(Some(Vec::new())),
                fail_alloc: crate::sync::Mutex::new(false),
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
        fn kernel_range_wired(&self, va: VirtAddr, len: u64) -> Result<bool> {
            match &*self.wired_bytes.lock() {
                Some(v) => Ok(v.iter().any(|&(s, l)| s < va.0 + len && va.0 < s + l)),
                None => Err(Error::Unsupported {
                    what: "flat wiring",
                }),
            }
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
        let blocks = if cfg!(miri) { 60 } else { 300usize };
        for i in 0..blocks {
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
        assert!(matches!(
            io_malloc_aligned(&h, 0, 8),
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
    fn a_wired_zone_block_is_refused_and_its_neighbours_are_not() {
        let h = heap();
        let a = io_malloc(&h, 64).unwrap();
        let b = io_malloc(&h, 64).unwrap();
        assert_eq!(h.platform().page.trunc(a.0), h.platform().page.trunc(b.0));
        // Someone wired the last byte of `a` only.
        h.platform()
            .wired_bytes
            .lock()
            .as_mut()
            .unwrap()
            .push((a.0 + 63, 1));
        let e = io_free(&h, a, 64).unwrap_err();
        assert!(
            matches!(e, Error::Busy { addr, .. } if addr == a.0),
            "{e:?}"
        );
        assert_eq!(e.io_return(), crate::IoReturn::BUSY);
        assert_eq!(h.stats().live, 2, "the refused block stays allocated");
        // The neighbour on the same page is not wired: it is freed, and not handed out as
        // `a` was not.
        io_free(&h, b, 64).unwrap();
        let c = io_malloc(&h, 64).unwrap();
        assert_ne!(c, a, "a wired block is never handed out again");
        io_free(&h, c, 64).unwrap();
        h.platform().wired_bytes.lock().as_mut().unwrap().clear();
        io_free(&h, a, 64).unwrap();
        assert_eq!(h.platform().outstanding(), 0);
    }

    #[test]
    fn a_platform_that_cannot_tell_keeps_small_blocks() {
        let h = heap();
        let a = io_malloc(&h, 100).unwrap();
        let big = io_malloc(&h, 8192).unwrap();
        *h.platform().wired_bytes.lock() = None;
        assert!(matches!(
            io_free(&h, a, 100),
            Err(Error::Unsupported { .. })
        ));
        assert_eq!(h.stats().live, 2);
        // Page-backed blocks do not need the answer: the platform's free refuses for them.
        io_free(&h, big, 8192).unwrap();
        *h.platform().wired_bytes.lock() = Some(Vec::new());
        io_free(&h, a, 100).unwrap();
    }

    #[test]
    fn size_and_alignment_exponents() {
        for n in 2..5000u64 {
            let k = io_size_to_alignment(n);
            let size = io_alignment_to_size(k).unwrap();
            assert!(size <= n && n < 2 * size, "{n} -> {k}");
        }
        for k in 0..64 {
            assert_eq!(io_size_to_alignment(io_alignment_to_size(k).unwrap()), k);
        }
        assert_eq!(io_alignment_to_size(64), None);
        const K: u32 = io_size_to_alignment(48);
        assert_eq!(K, 5);
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
