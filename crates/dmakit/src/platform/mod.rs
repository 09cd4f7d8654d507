//! The platform seam: small capability traits that a backend implements.
//!
//! Everything above this module (descriptors, DMA commands, allocators) is written against
//! these traits and never touches a raw pointer. Everything below it (the simulated machine,
//! the Linux host, your kernel) implements them. Each trait is one capability, so a backend
//! can provide exactly what its hardware has:
//!
//! | trait | capability | IOKit counterpart |
//! | --- | --- | --- |
//! | [`PhysicalMemory`] | allocate wired or pageable pages in the kernel task (or, where the backend has several, another task) under physical constraints; CPU access to physical ranges | `kmem_alloc`, `IOMallocContiguous`, `ml_phys_read` |
//! | [`Wiring`] | wire (pin) a task's virtual range, report its physical runs, unwire | `vm_map_wire`, UPLs, `pmap_find_phys` |
//! | [`CpuAccess`] | CPU reads and writes of a task's virtual memory; optionally, lending it as a Rust slice | `copyin`/`copyout`, `getBytesNoCopy` |
//! | [`CacheOps`] | clean / invalidate / flush the CPU data cache for a range | `flush_dcache`, `IOFlushProcessorCache` |
//! | [`Mmio`] | naturally aligned, untorn loads and stores to physical I/O space | `ml_phys_read_*`, `IOMappedRead*` |
//! | [`VirtualMemory`] | map existing pages a second time into a task, read-only or not, with a cache mode, optionally between guard pages; optionally, purgeable (volatile) memory | `vm_map`, `IOMemoryMap` |
//!
//! [`Platform`] is implemented for anything that has all six. All traits are implemented
//! for `&T` and `Arc<T>` of an implementor, so a machine can be shared.
//!
//! Code written against the seam runs on every backend; here, on the simulator:
//!
//! ```
//! use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Platform, Task};
//!
//! /// Allocates a wired, zero-filled buffer, fills it and says where it landed.
//! fn stage<P: Platform>(p: &P, data: &[u8]) -> dmakit::Result<(dmakit::VirtAddr, usize)> {
//!     let len = p.page_size().round_up(data.len() as u64).unwrap_or(u64::MAX);
//!     let va = p.allocate_pages(len, &PageRequest::WIRED)?;
//!     p.write_virt(Task::KERNEL, va, data)?;
//!     let runs = collect_runs(p, Task::KERNEL, va, len)?; // wired: its runs never change
//!     Ok((va, runs.len()))
//! }
//!
//! let machine = dmakit_sim::MachineBuilder::new().build()?;
//! let (va, runs) = stage(&machine, &[0x5A; 10_000])?;
//! assert!(runs >= 1);
//! let mut back = [0u8; 4];
//! machine.read_virt(Task::KERNEL, va, &mut back)?;
//! assert_eq!(back, [0x5A; 4]);
//! machine.free_pages(va, 0x3000)?;
//! # Ok::<(), dmakit::Error>(())
//! ```
//!
//! ## Contracts every backend keeps
//!
//! * Memory from [`PhysicalMemory::allocate_pages`] is zero-filled, page aligned, and (unless
//!   pageable) wired for its whole life: its physical runs never change until it is freed.
//! * Wiring is *counted* per page: `wire` twice needs `unwire` twice. A failed `wire` leaves
//!   nothing wired. [`Wiring::physical_runs`] of memory that is not wired is
//!   [`Error::NotReady`](crate::Error::NotReady), never an address that may go stale.
//! * [`PhysicalMemory::free_pages`] refuses ([`Error::Busy`](crate::Error::Busy)) while any
//!   page of the range is wired by someone other than the allocation itself, so memory a
//!   device may still reach is never freed.
//! * CPU access goes only to memory the backend knows (its own allocations, registered
//!   regions, simulated RAM); any other address is [`Error::NotMapped`](crate::Error::NotMapped),
//!   never a fault.

use crate::{PageSize, PhysAddr, PhysRange, Result, VirtAddr};
use alloc_crate::sync::Arc;

/// An address space: the kernel task or another one the platform knows.
///
/// On the Linux host there is one task, this process, and it is [`Task::KERNEL`]. The
/// simulated machine can create as many as a test needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Task(pub u32);

impl Task {
    /// The kernel task (IOKit's `kernel_task`), where the IOMalloc family allocates.
    pub const KERNEL: Task = Task(0);
}

/// What physical memory an allocation must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Alignment of the virtual *and* (for contiguous memory) physical start; a power of
    /// two. Values below the page size mean page alignment.
    pub align: u64,
    /// The highest physical address any byte may have (`u64::MAX`: no limit). IOKit's
    /// physical mask: `0xFFFF_FFFF` for a device with 32 address bits.
    pub phys_limit: u64,
    /// The lowest physical address any byte may have (0: no floor), for a device whose
    /// window does not start at 0. IOKit has no such bound (its masks only cap).
    pub phys_min: u64,
    /// One physically contiguous run.
    pub contiguous: bool,
    /// Pageable rather than wired: pages may be absent or move until wired.
    pub pageable: bool,
}

impl PageRequest {
    /// Wired memory, page aligned, anywhere in physical memory, possibly scattered.
    pub const WIRED: PageRequest = PageRequest {
        align: 0,
        phys_limit: u64::MAX,
        phys_min: 0,
        contiguous: false,
        pageable: false,
    };

    /// Pageable memory, page aligned.
    pub const PAGEABLE: PageRequest = PageRequest {
        align: 0,
        phys_limit: u64::MAX,
        phys_min: 0,
        contiguous: false,
        pageable: true,
    };

    /// Whether this request restricts where physical pages may land.
    pub const fn constrains_physical(&self) -> bool {
        self.contiguous || self.phys_limit != u64::MAX || self.phys_min != 0
    }

    /// Whether the page or run `[pa, pa + len)` (len ≥ 1) lies inside the request's
    /// physical bounds.
    pub fn admits(&self, pa: u64, len: u64) -> bool {
        pa >= self.phys_min
            && len
                .checked_sub(1)
                .and_then(|l| pa.checked_add(l))
                .is_some_and(|last| last <= self.phys_limit)
    }

    /// Checks an [`allocate_pages`](PhysicalMemory::allocate_pages) request of `len` bytes
    /// on a platform with pages of `page`: `len` non-zero and a whole number of pages, the
    /// alignment 0 or a power of two. Returns the effective alignment (at least a page).
    pub fn validate(&self, len: u64, page: PageSize) -> Result<u64> {
        if len == 0 {
            return Err(crate::Error::ZeroSize {
                what: "page allocation",
            });
        }
        if !len.is_multiple_of(page.bytes()) {
            return Err(crate::Error::NotAligned {
                what: "page allocation length",
                value: len,
                align: page.bytes(),
            });
        }
        if self.align != 0 && !self.align.is_power_of_two() {
            return Err(crate::Error::BadAlignment {
                what: "page allocation",
                align: self.align,
            });
        }
        if self.phys_min > self.phys_limit {
            return Err(crate::Error::BadArgument {
                what:
                    "page allocation: the physical floor (phys_min) is above the limit (phys_limit)",
                value: self.phys_min,
            });
        }
        Ok(self.align.max(page.bytes()))
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest::WIRED
    }
}

/// Allocation of pages in the kernel task, and CPU access to physical memory.
pub trait PhysicalMemory: Send + Sync {
    /// The CPU page size.
    fn page_size(&self) -> PageSize;

    /// Allocates `len` bytes (a multiple of the page size) of zero-filled memory in the
    /// kernel task meeting `req`, and returns its kernel virtual address.
    fn allocate_pages(&self, len: u64, req: &PageRequest) -> Result<VirtAddr>;

    /// Frees memory from [`allocate_pages`](Self::allocate_pages); `va` and `len` must be
    /// exactly those of the allocation.
    fn free_pages(&self, va: VirtAddr, len: u64) -> Result<()>;

    /// Allocates `len` bytes (a multiple of the page size) of zero-filled memory meeting
    /// `req` in `task` and returns its address there (what IOKit's `inTaskWithOptions`
    /// needs from the VM system).
    ///
    /// The default serves [`Task::KERNEL`] with [`allocate_pages`](Self::allocate_pages)
    /// and refuses other tasks with [`Error::Unsupported`](crate::Error::Unsupported); a
    /// backend with several address spaces overrides it.
    fn allocate_pages_in(&self, task: Task, len: u64, req: &PageRequest) -> Result<VirtAddr> {
        if task == Task::KERNEL {
            self.allocate_pages(len, req)
        } else {
            Err(crate::Error::Unsupported {
                what: "allocation in a task other than the kernel's on this platform",
            })
        }
    }

    /// Frees memory from [`allocate_pages_in`](Self::allocate_pages_in); `va` and `len`
    /// must be exactly those of the allocation. The default serves [`Task::KERNEL`] only.
    fn free_pages_in(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        if task == Task::KERNEL {
            self.free_pages(va, len)
        } else {
            Err(crate::Error::Unsupported {
                what: "allocation in a task other than the kernel's on this platform",
            })
        }
    }

    /// CPU read of physical memory (through the CPU's caches, as a load would).
    fn read_phys(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<()>;

    /// CPU write of physical memory (through the CPU's caches, as a store would).
    fn write_phys(&self, pa: PhysAddr, data: &[u8]) -> Result<()>;

    /// Whether a wiring made through [`Wiring::wire`] in the kernel task covers any byte of
    /// `[va, va + len)` (an empty range: `false`).
    ///
    /// The IOMalloc heap asks this before it gives a small block back to its zone. Several
    /// blocks share one page, so a page's wire count cannot tell whether *this* block is
    /// what a prepared descriptor, and so a device, may still reach: a backend answers at
    /// byte granularity, remembering the ranges that were wired. Memory that is wired
    /// because it was allocated wired does not count, only explicit wirings. A backend may
    /// answer `true` when it cannot rule a wiring out (a conservative answer only delays a
    /// free); it must never answer `false` for a range a live wiring overlaps.
    ///
    /// The default is [`Error::Unsupported`](crate::Error::Unsupported): a backend that
    /// cannot tell says so, and the heap then refuses to recycle small blocks rather than
    /// risk handing a device's target to a new owner.
    fn kernel_range_wired(&self, va: VirtAddr, len: u64) -> Result<bool> {
        let _ = (va, len);
        Err(crate::Error::Unsupported {
            what: "PhysicalMemory::kernel_range_wired (this platform cannot tell whether a \
                   byte range of kernel memory is wired)",
        })
    }
}

/// Wiring (pinning) of virtual memory and translation to physical runs.
pub trait Wiring: Send + Sync {
    /// Wires every page touching `[va, va + len)` in `task`, faulting pages in as needed.
    /// Counted: each call needs its own [`unwire`](Self::unwire). `writable` asks for pages
    /// the device may write. On failure nothing stays wired by this call.
    fn wire(&self, task: Task, va: VirtAddr, len: u64, writable: bool) -> Result<()>;

    /// Drops one wiring of every page touching `[va, va + len)`. Unwiring a page that is not
    /// wired is an error and changes nothing.
    fn unwire(&self, task: Task, va: VirtAddr, len: u64) -> Result<()>;

    /// Calls `run` with the physical runs behind `[va, va + len)` in order, adjacent
    /// physically contiguous pages coalesced into one run. Every page must be wired.
    fn physical_runs(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        run: &mut dyn FnMut(PhysRange),
    ) -> Result<()>;
}

/// CPU access to a task's virtual memory.
pub trait CpuAccess: Send + Sync {
    /// Copies `[va, va + buf.len())` of `task` into `buf`.
    fn read_virt(&self, task: Task, va: VirtAddr, buf: &mut [u8]) -> Result<()>;

    /// Copies `data` to `[va, va + data.len())` of `task`.
    fn write_virt(&self, task: Task, va: VirtAddr, data: &[u8]) -> Result<()>;

    /// Copies `len` bytes from `[from_va, from_va + len)` of `from_task` to
    /// `[to_va, to_va + len)` of `to_task`.
    ///
    /// Ranges of one task that overlap are copied as `memmove` does (as if through a
    /// temporary). A backend that can reach both ranges at once overrides this with a single
    /// copy per byte; the default goes through a stack buffer of [`COPY_CHUNK`] bytes
    /// ([`read_virt`](Self::read_virt) then [`write_virt`](Self::write_virt) per chunk,
    /// backwards when the destination overlaps the source from above), so it needs nothing
    /// but those two methods and works without `std`. The default does not know about two
    /// *different* addresses that reach the same memory (a second mapping): a backend with
    /// such views and a single-copy override must handle them itself.
    ///
    /// On an error, the default may already have written a prefix (or, copying backwards, a
    /// suffix) of the destination; the error names the address that failed.
    fn copy_virt(
        &self,
        from_task: Task,
        from_va: VirtAddr,
        to_task: Task,
        to_va: VirtAddr,
        len: u64,
    ) -> Result<()> {
        copy_virt_staged(self, from_task, from_va, to_task, to_va, len)
    }

    /// Lends `[va, va + len)` of `task` to the caller as one shared slice, for as long as
    /// the returned value lives (what IOKit's `getBytesNoCopy` gives a kernel driver).
    ///
    /// While the slice is lent the backend refuses every store to the range, wiring it
    /// ([`Error::Busy`](crate::Error::Busy)), freeing it and mapping it a second time; it
    /// refuses to lend memory that is mapped a second time, lent mutably, or wired
    /// ([`Wiring::wire`]) more than `held` times: `held` counts the wirings of the range
    /// that the caller itself holds and vouches no device uses (a wired buffer's own, held
    /// for its whole life), so any other may be a device's. Shared lends of the same memory
    /// may overlap.
    ///
    /// The default is [`Error::Unsupported`](crate::Error::Unsupported): only a backend
    /// that can reach the memory from this address space (or model doing so) lends it.
    fn direct_slice<'a>(
        &'a self,
        task: Task,
        va: VirtAddr,
        len: u64,
        held: u32,
    ) -> Result<alloc_crate::boxed::Box<dyn DirectSlice + 'a>> {
        let _ = (task, va, len, held);
        Err(crate::Error::Unsupported {
            what: "direct access to memory on this platform",
        })
    }

    /// Lends `[va, va + len)` of `task` as one mutable slice, with the rules of
    /// [`direct_slice`](Self::direct_slice) except that loads are refused too while it is
    /// lent, and that it is refused while any other lend of the memory is alive.
    fn direct_slice_mut<'a>(
        &'a self,
        task: Task,
        va: VirtAddr,
        len: u64,
        held: u32,
    ) -> Result<alloc_crate::boxed::Box<dyn DirectSliceMut + 'a>> {
        let _ = (task, va, len, held);
        Err(crate::Error::Unsupported {
            what: "direct access to memory on this platform",
        })
    }
}

/// Memory lent by [`CpuAccess::direct_slice`]; dropping it ends the lend.
pub trait DirectSlice {
    /// The lent bytes.
    fn bytes(&self) -> &[u8];
}

/// Memory lent by [`CpuAccess::direct_slice_mut`]; dropping it ends the lend (a backend
/// that lends a copy writes it back then).
pub trait DirectSliceMut: DirectSlice {
    /// The lent bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
}

/// The chunk size of the default [`CpuAccess::copy_virt`].
pub const COPY_CHUNK: usize = 4096;

/// The default [`CpuAccess::copy_virt`]: chunk by chunk through a stack buffer, using only
/// `read_virt` and `write_virt`. Public so a backend that overrides `copy_virt` can fall
/// back to it for the cases its fast path does not cover.
pub fn copy_virt_staged<C: CpuAccess + ?Sized>(
    cpu: &C,
    from_task: Task,
    from_va: VirtAddr,
    to_task: Task,
    to_va: VirtAddr,
    len: u64,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let overflow = |start: u64| crate::Error::Overflow {
        what: "copy_virt range",
        start,
        len,
    };
    let from_end = from_va.0.checked_add(len).ok_or(overflow(from_va.0))?;
    to_va.0.checked_add(len).ok_or(overflow(to_va.0))?;
    // Copying forward would overwrite source bytes not yet read only when the destination
    // starts inside the source, above its start.
    let backwards = from_task == to_task && to_va.0 > from_va.0 && to_va.0 < from_end;
    let mut tmp = [0u8; COPY_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(COPY_CHUNK as u64);
        let at = if backwards { len - done - n } else { done };
        let buf = &mut tmp[..n as usize];
        cpu.read_virt(from_task, VirtAddr(from_va.0 + at), buf)?;
        cpu.write_virt(to_task, VirtAddr(to_va.0 + at), buf)?;
        done += n;
    }
    Ok(())
}

/// A CPU data-cache operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheOp {
    /// Write dirty lines back to memory, keep them cached (before a device reads).
    Clean,
    /// Discard cached lines without writing back (after a device wrote).
    Invalidate,
    /// Clean then invalidate (`IOFlushProcessorCache`, `clflush`).
    Flush,
}

/// How the CPU caches a mapping (IOKit's map cache modes, `kIOMap*Cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CacheMode {
    /// Write-back caching (kIOMapCopyback, the default for RAM).
    #[default]
    CopyBack,
    /// Stores go to memory at once, loads are cached (kIOMapWriteThruCache).
    WriteThrough,
    /// No caching (kIOMapInhibitCache).
    Inhibit,
    /// Uncached loads, combined stores (kIOMapWriteCombineCache).
    WriteCombine,
}

/// CPU data-cache maintenance.
pub trait CacheOps: Send + Sync {
    /// Whether devices see CPU caches without maintenance (x86: yes; many ARM SoCs: no).
    fn dma_coherent(&self) -> bool;

    /// Applies `op` to every cache line touching `[va, va + len)` of `task`.
    fn cache_virt(&self, op: CacheOp, task: Task, va: VirtAddr, len: u64) -> Result<()>;

    /// Applies `op` to every cache line touching `[pa, pa + len)`.
    fn cache_phys(&self, op: CacheOp, pa: PhysAddr, len: u64) -> Result<()>;
}

/// The width of one mapped I/O access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    /// One byte.
    W8,
    /// Two bytes.
    W16,
    /// Four bytes.
    W32,
    /// Eight bytes.
    W64,
}

impl Width {
    /// The access size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Width::W8 => 1,
            Width::W16 => 2,
            Width::W32 => 4,
            Width::W64 => 8,
        }
    }

    /// Checks that an access of this width at `pa` is naturally aligned
    /// ([`Error::NotAligned`](crate::Error::NotAligned) naming `what` otherwise).
    pub fn check_aligned(self, pa: PhysAddr, what: &'static str) -> Result<()> {
        if pa.is_aligned(self.bytes()) {
            Ok(())
        } else {
            Err(crate::Error::NotAligned {
                what,
                value: pa.0,
                align: self.bytes(),
            })
        }
    }

    /// The largest value the width holds.
    pub const fn max_value(self) -> u64 {
        match self {
            Width::W64 => u64::MAX,
            w => (1u64 << (w.bytes() * 8)) - 1,
        }
    }
}

/// Loads and stores to physical I/O space (device registers, or RAM by physical address).
///
/// Accesses are naturally aligned (else [`Error::NotAligned`](crate::Error::NotAligned)),
/// performed once with exactly the given width (volatile, never torn or merged), and an
/// address nothing backs is [`Error::NotMapped`](crate::Error::NotMapped).
pub trait Mmio: Send + Sync {
    /// Reads `width` bytes at `pa`; the value is zero-extended.
    fn mmio_read(&self, pa: PhysAddr, width: Width) -> Result<u64>;

    /// Writes the low `width` bytes of `value` at `pa`.
    fn mmio_write(&self, pa: PhysAddr, width: Width, value: u64) -> Result<()>;
}

/// Where the pages of a mapping come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapSource {
    /// Pages of a task's virtual memory, from a page-aligned address.
    Virtual(Task, VirtAddr),
    /// Physical pages, from a page-aligned address.
    Physical(PhysAddr),
}

/// One piece of a mapping: `len` bytes (a page multiple) from `src`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapPiece {
    /// Where the pages come from.
    pub src: MapSource,
    /// Bytes, a multiple of the page size.
    pub len: u64,
}

/// How to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// The task to map into.
    pub task: Task,
    /// A page-aligned address to map at, or `None` for anywhere.
    pub at: Option<VirtAddr>,
    /// Refuse stores (enforced by the MMU).
    pub read_only: bool,
    /// How the CPU caches the mapping.
    pub cache: CacheMode,
}

impl MapPiece {
    /// The summed length of `pieces`, for a [`VirtualMemory`] implementation to check a
    /// request with: each piece whole pages of `page` bytes at a page-aligned source
    /// ([`Error::NotAligned`](crate::Error::NotAligned)), the sum within 64 bits
    /// ([`Error::Overflow`](crate::Error::Overflow)) and not zero
    /// ([`Error::ZeroSize`](crate::Error::ZeroSize)).
    ///
    /// ```
    /// use dmakit::platform::{MapPiece, MapSource};
    /// use dmakit::PhysAddr;
    ///
    /// let piece = |pa, len| MapPiece { src: MapSource::Physical(PhysAddr(pa)), len };
    /// assert_eq!(MapPiece::total_length(&[piece(0x1000, 0x2000), piece(0x8000, 0x1000)], 0x1000)?, 0x3000);
    /// assert!(MapPiece::total_length(&[piece(0x1800, 0x1000)], 0x1000).is_err());
    /// assert!(MapPiece::total_length(&[], 0x1000).is_err());
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn total_length(pieces: &[MapPiece], page: u64) -> Result<u64> {
        let mut total: u64 = 0;
        for p in pieces {
            let start = match p.src {
                MapSource::Virtual(_, va) => va.0,
                MapSource::Physical(pa) => pa.0,
            };
            if p.len == 0 || !p.len.is_multiple_of(page) || !start.is_multiple_of(page) {
                return Err(crate::Error::NotAligned {
                    what: "map piece (whole pages only)",
                    value: start,
                    align: page,
                });
            }
            total = total.checked_add(p.len).ok_or(crate::Error::Overflow {
                what: "mapping length",
                start,
                len: p.len,
            })?;
        }
        if total == 0 {
            return Err(crate::Error::ZeroSize { what: "mapping" });
        }
        Ok(total)
    }

    /// The address space a mapping of `total` bytes reserves with `guard` bytes of guard
    /// pages on each side; [`Error::Overflow`](crate::Error::Overflow) past 2^64 − 1.
    ///
    /// ```
    /// use dmakit::platform::MapPiece;
    ///
    /// assert_eq!(MapPiece::guarded_length(0x3000, 0x1000)?, 0x5000);
    /// assert!(MapPiece::guarded_length(u64::MAX, 0x1000).is_err());
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn guarded_length(total: u64, guard: u64) -> Result<u64> {
        guard
            .checked_mul(2)
            .and_then(|g| g.checked_add(total))
            .ok_or(crate::Error::Overflow {
                what: "guarded mapping length",
                start: 0,
                len: total,
            })
    }
}

impl MapRequest {
    /// Checks `guard` bytes of guard pages for this request, for a [`VirtualMemory`]
    /// implementation: none is always fine; guards need placement anywhere (a fixed address
    /// is [`Error::BadArgument`](crate::Error::BadArgument)) and whole pages of `page` bytes
    /// ([`Error::NotAligned`](crate::Error::NotAligned)).
    ///
    /// ```
    /// use dmakit::platform::{CacheMode, MapRequest, Task};
    /// use dmakit::VirtAddr;
    ///
    /// let anywhere = MapRequest { task: Task::KERNEL, at: None, read_only: false, cache: CacheMode::CopyBack };
    /// assert!(anywhere.check_guard(0x1000, 0x1000).is_ok());
    /// assert!(anywhere.check_guard(0x800, 0x1000).is_err());
    /// let fixed = MapRequest { at: Some(VirtAddr(0x10_0000)), ..anywhere };
    /// assert!(fixed.check_guard(0, 0x1000).is_ok());
    /// assert!(fixed.check_guard(0x1000, 0x1000).is_err());
    /// ```
    pub fn check_guard(&self, guard: u64, page: u64) -> Result<()> {
        if guard == 0 {
            return Ok(());
        }
        if let Some(at) = self.at {
            return Err(crate::Error::BadArgument {
                what: "guard pages need placement anywhere, not a fixed address",
                value: at.0,
            });
        }
        if !guard.is_multiple_of(page) {
            return Err(crate::Error::NotAligned {
                what: "guard size (whole pages only)",
                value: guard,
                align: page,
            });
        }
        Ok(())
    }
}

/// Mapping existing pages a second time, into a task (what IOKit's `createMappingInTask`
/// needs from the VM system).
pub trait VirtualMemory: Send + Sync {
    /// Maps `pieces` one after another into `req.task` and returns the address of the first
    /// byte. All or nothing: on failure nothing stays mapped.
    fn map_pages(&self, pieces: &[MapPiece], req: &MapRequest) -> Result<VirtAddr>;

    /// Removes a mapping made by [`map_pages`](Self::map_pages) or
    /// [`map_pages_guarded`](Self::map_pages_guarded); `va` and `len` must be exactly the
    /// address it returned and the pieces' total length. A guarded mapping's guards are
    /// released with it.
    fn unmap_pages(&self, task: Task, va: VirtAddr, len: u64) -> Result<()>;

    /// Changes how the CPU caches the pages of `[va, va + len)` of `task` (both page
    /// aligned), as the VM system does when it enters each page again with other
    /// attributes. Lines the range holds are written back and dropped first. Every page must
    /// have a physical page behind it, else [`Error::NotMapped`](crate::Error::NotMapped)
    /// (kIOReturnVMError) and nothing changes.
    ///
    /// The default is [`Error::Unsupported`](crate::Error::Unsupported), for platforms that
    /// cannot change page attributes.
    fn set_cache_mode(&self, task: Task, va: VirtAddr, len: u64, mode: CacheMode) -> Result<()> {
        let _ = (task, va, len, mode);
        Err(crate::Error::Unsupported {
            what:
                "VirtualMemory::set_cache_mode (this platform cannot change page cache attributes)",
        })
    }

    /// Like [`map_pages`](Self::map_pages), anywhere (`req.at` must be `None`), with `guard`
    /// bytes (a multiple of the page size) of reserved, inaccessible address space right
    /// before and right after the mapping: a CPU access there faults, and nothing else is
    /// mapped there until [`unmap_pages`](Self::unmap_pages) removes the mapping (IOKit's
    /// guarded mappings, kIOMapGuardedSmall / kIOMapGuardedLarge). Returns the address of
    /// the first mapped byte, as `map_pages` does.
    ///
    /// The default is [`Error::Unsupported`](crate::Error::Unsupported), for a backend that
    /// cannot reserve address space.
    fn map_pages_guarded(
        &self,
        pieces: &[MapPiece],
        req: &MapRequest,
        guard: u64,
    ) -> Result<VirtAddr> {
        let _ = (pieces, req, guard);
        Err(crate::Error::Unsupported {
            what: "guard pages around a mapping (this platform cannot reserve address space)",
        })
    }

    /// Changes the purgeable state of every page touching `[va, va + len)` of `task` and
    /// returns the worst state any of them had ([`PurgeableState`] orders them). What
    /// IOKit's `setPurgeable` needs from the VM system.
    ///
    /// Volatile memory may be discarded by the platform whenever it chooses; after that its
    /// pages read as zero and report [`PurgeableState::Empty`] until made non-volatile.
    /// [`PurgeableRequest::Empty`] discards at once. Wired memory (allocated wired, or wired
    /// through [`Wiring::wire`]) cannot be made volatile or emptied:
    /// [`Error::Busy`](crate::Error::Busy).
    ///
    /// The default is [`Error::Unsupported`](crate::Error::Unsupported).
    fn set_purgeable(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        req: PurgeableRequest,
    ) -> Result<PurgeableState> {
        let _ = (task, va, len, req);
        Err(crate::Error::Unsupported {
            what: "purgeable memory on this platform",
        })
    }
}

/// The purgeable state of memory (IOKit's `kIOMemoryPurgeable*` states). Ordered from
/// best to worst, so the worst of several is their maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PurgeableState {
    /// Contents are kept (kIOMemoryPurgeableNonVolatile).
    #[default]
    NonVolatile,
    /// Contents may be discarded whenever the system chooses (kIOMemoryPurgeableVolatile).
    Volatile,
    /// Contents were discarded (kIOMemoryPurgeableEmpty).
    Empty,
}

/// What [`VirtualMemory::set_purgeable`] (and a descriptor's `set_purgeable`) should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PurgeableRequest {
    /// Change nothing; only report the state (kIOMemoryPurgeableKeepCurrent).
    KeepCurrent,
    /// Keep the contents from now on (kIOMemoryPurgeableNonVolatile).
    NonVolatile,
    /// Allow the system to discard the contents (kIOMemoryPurgeableVolatile).
    Volatile,
    /// Discard the contents now (kIOMemoryPurgeableEmpty).
    Empty,
}

impl PurgeableRequest {
    /// Whether the request allows the contents to be lost (`Volatile` or `Empty`).
    pub const fn discards(self) -> bool {
        matches!(self, PurgeableRequest::Volatile | PurgeableRequest::Empty)
    }

    /// The state the request sets, or `None` for [`KeepCurrent`](Self::KeepCurrent).
    pub const fn target(self) -> Option<PurgeableState> {
        match self {
            PurgeableRequest::KeepCurrent => None,
            PurgeableRequest::NonVolatile => Some(PurgeableState::NonVolatile),
            PurgeableRequest::Volatile => Some(PurgeableState::Volatile),
            PurgeableRequest::Empty => Some(PurgeableState::Empty),
        }
    }
}

/// A complete platform: every capability of the seam.
pub trait Platform: PhysicalMemory + Wiring + CpuAccess + CacheOps + Mmio + VirtualMemory {}

impl<T: PhysicalMemory + Wiring + CpuAccess + CacheOps + Mmio + VirtualMemory + ?Sized> Platform
    for T
{
}

/// Forwards each trait through a smart pointer or reference.
macro_rules! forward {
    ($($ptr:ty),*) => {$(
        impl<T: PhysicalMemory + ?Sized> PhysicalMemory for $ptr {
            fn page_size(&self) -> PageSize { (**self).page_size() }
            fn allocate_pages(&self, len: u64, req: &PageRequest) -> Result<VirtAddr> {
                (**self).allocate_pages(len, req)
            }
            fn free_pages(&self, va: VirtAddr, len: u64) -> Result<()> { (**self).free_pages(va, len) }
            fn allocate_pages_in(&self, task: Task, len: u64, req: &PageRequest) -> Result<VirtAddr> {
                (**self).allocate_pages_in(task, len, req)
            }
            fn free_pages_in(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
                (**self).free_pages_in(task, va, len)
            }
            fn read_phys(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<()> { (**self).read_phys(pa, buf) }
            fn write_phys(&self, pa: PhysAddr, data: &[u8]) -> Result<()> { (**self).write_phys(pa, data) }
            fn kernel_range_wired(&self, va: VirtAddr, len: u64) -> Result<bool> {
                (**self).kernel_range_wired(va, len)
            }
        }
        impl<T: Wiring + ?Sized> Wiring for $ptr {
            fn wire(&self, task: Task, va: VirtAddr, len: u64, writable: bool) -> Result<()> {
                (**self).wire(task, va, len, writable)
            }
            fn unwire(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
                (**self).unwire(task, va, len)
            }
            fn physical_runs(&self, task: Task, va: VirtAddr, len: u64, run: &mut dyn FnMut(PhysRange)) -> Result<()> {
                (**self).physical_runs(task, va, len, run)
            }
        }
        impl<T: CpuAccess + ?Sized> CpuAccess for $ptr {
            fn read_virt(&self, task: Task, va: VirtAddr, buf: &mut [u8]) -> Result<()> {
                (**self).read_virt(task, va, buf)
            }
            fn write_virt(&self, task: Task, va: VirtAddr, data: &[u8]) -> Result<()> {
                (**self).write_virt(task, va, data)
            }
            fn copy_virt(
                &self,
                from_task: Task,
                from_va: VirtAddr,
                to_task: Task,
                to_va: VirtAddr,
                len: u64,
            ) -> Result<()> {
                (**self).copy_virt(from_task, from_va, to_task, to_va, len)
            }
            fn direct_slice<'a>(
                &'a self,
                task: Task,
                va: VirtAddr,
                len: u64,
                held: u32,
            ) -> Result<alloc_crate::boxed::Box<dyn DirectSlice + 'a>> {
                (**self).direct_slice(task, va, len, held)
            }
            fn direct_slice_mut<'a>(
                &'a self,
                task: Task,
                va: VirtAddr,
                len: u64,
                held: u32,
            ) -> Result<alloc_crate::boxed::Box<dyn DirectSliceMut + 'a>> {
                (**self).direct_slice_mut(task, va, len, held)
            }
        }
        impl<T: CacheOps + ?Sized> CacheOps for $ptr {
            fn dma_coherent(&self) -> bool { (**self).dma_coherent() }
            fn cache_virt(&self, op: CacheOp, task: Task, va: VirtAddr, len: u64) -> Result<()> {
                (**self).cache_virt(op, task, va, len)
            }
            fn cache_phys(&self, op: CacheOp, pa: PhysAddr, len: u64) -> Result<()> {
                (**self).cache_phys(op, pa, len)
            }
        }
        impl<T: VirtualMemory + ?Sized> VirtualMemory for $ptr {
            fn map_pages(&self, pieces: &[MapPiece], req: &MapRequest) -> Result<VirtAddr> {
                (**self).map_pages(pieces, req)
            }
            fn unmap_pages(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
                (**self).unmap_pages(task, va, len)
            }
            fn set_cache_mode(&self, task: Task, va: VirtAddr, len: u64, mode: CacheMode) -> Result<()> {
                (**self).set_cache_mode(task, va, len, mode)
            }
            fn map_pages_guarded(&self, pieces: &[MapPiece], req: &MapRequest, guard: u64) -> Result<VirtAddr> {
                (**self).map_pages_guarded(pieces, req, guard)
            }
            fn set_purgeable(
                &self,
                task: Task,
                va: VirtAddr,
                len: u64,
                req: PurgeableRequest,
            ) -> Result<PurgeableState> {
                (**self).set_purgeable(task, va, len, req)
            }
        }
        impl<T: Mmio + ?Sized> Mmio for $ptr {
            fn mmio_read(&self, pa: PhysAddr, width: Width) -> Result<u64> { (**self).mmio_read(pa, width) }
            fn mmio_write(&self, pa: PhysAddr, width: Width, value: u64) -> Result<()> {
                (**self).mmio_write(pa, width, value)
            }
        }
    )*};
}

forward!(&T, Arc<T>);

/// Collects the physical runs of a wired range into a vector (a convenience over
/// [`Wiring::physical_runs`] for code that may allocate).
pub fn collect_runs<W: Wiring + ?Sized>(
    w: &W,
    task: Task,
    va: VirtAddr,
    len: u64,
) -> Result<alloc_crate::vec::Vec<PhysRange>> {
    let mut v = alloc_crate::vec::Vec::new();
    w.physical_runs(task, va, len, &mut |r| v.push(r))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn page_requests_are_validated() {
        let p = PageSize::SIZE_16K;
        assert_eq!(PageRequest::WIRED.validate(0x8000, p), Ok(0x4000));
        let big = PageRequest {
            align: 1 << 21,
            ..PageRequest::WIRED
        };
        assert_eq!(big.validate(0x4000, p), Ok(1 << 21));
        assert!(matches!(
            PageRequest::WIRED.validate(0, p),
            Err(Error::ZeroSize { .. })
        ));
        assert!(matches!(
            PageRequest::WIRED.validate(0x1000, p),
            Err(Error::NotAligned { align: 0x4000, .. })
        ));
        let odd = PageRequest {
            align: 0x3000,
            ..PageRequest::WIRED
        };
        assert!(matches!(
            odd.validate(0x4000, p),
            Err(Error::BadAlignment { .. })
        ));
    }

    /// Two tasks of flat memory from address 0x1000; only `read_virt`/`write_virt`, so
    /// `copy_virt` is the default.
    struct TwoTasks(crate::sync::Mutex<[alloc_crate::vec::Vec<u8>; 2]>);

    impl TwoTasks {
        fn new(len: usize) -> Self {
            let fill = |salt: u8| (0..len).map(|i| (i as u8).wrapping_mul(7) ^ salt).collect();
            TwoTasks(crate::sync::Mutex::new([fill(0), fill(0x5A)]))
        }
        fn range(&self, task: Task, va: VirtAddr, n: usize) -> Result<(usize, usize)> {
            let at = (va.0 as usize).wrapping_sub(0x1000);
            let len = self.0.lock()[0].len();
            if task.0 > 1 || at > len || n > len - at {
                return Err(Error::NotMapped {
                    what: "test memory",
                    addr: va.0,
                });
            }
            Ok((task.0 as usize, at))
        }
    }

    impl CpuAccess for TwoTasks {
        fn read_virt(&self, task: Task, va: VirtAddr, buf: &mut [u8]) -> Result<()> {
            let (t, at) = self.range(task, va, buf.len())?;
            buf.copy_from_slice(&self.0.lock()[t][at..at + buf.len()]);
            Ok(())
        }
        fn write_virt(&self, task: Task, va: VirtAddr, data: &[u8]) -> Result<()> {
            let (t, at) = self.range(task, va, data.len())?;
            self.0.lock()[t][at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    #[test]
    fn the_default_copy_virt_is_memmove_within_a_task_and_memcpy_across() {
        const LEN: usize = 5 * COPY_CHUNK + 123;
        // (from, to, len) in one task: overlapping both ways by less and more than a chunk,
        // disjoint, identical, unaligned.
        let cases = [
            (0usize, 100usize, 3 * COPY_CHUNK + 7),
            (100, 0, 3 * COPY_CHUNK + 7),
            (1, COPY_CHUNK + 2, 2 * COPY_CHUNK + 1),
            (COPY_CHUNK + 2, 1, 2 * COPY_CHUNK + 1),
            (3, 3 * COPY_CHUNK, COPY_CHUNK + 9),
            (77, 77, 2 * COPY_CHUNK),
            (5, 6, 4 * COPY_CHUNK),
        ];
        for (from, to, n) in cases {
            let m = TwoTasks::new(LEN);
            let mut want = m.0.lock()[0].clone();
            want.copy_within(from..from + n, to);
            m.copy_virt(
                Task(0),
                VirtAddr(0x1000 + from as u64),
                Task(0),
                VirtAddr(0x1000 + to as u64),
                n as u64,
            )
            .unwrap();
            assert!(m.0.lock()[0] == want, "memmove {from} -> {to} ({n} bytes)");
        }
        // Across tasks the same addresses are different memory: a plain copy.
        let m = TwoTasks::new(LEN);
        let (a, b) = {
            let g = m.0.lock();
            (g[0].clone(), g[1].clone())
        };
        m.copy_virt(
            Task(1),
            VirtAddr(0x1000 + 10),
            Task(0),
            VirtAddr(0x1000 + 20),
            9000,
        )
        .unwrap();
        let g = m.0.lock();
        assert!(
            g[0][20..9020] == b[10..9010] && g[0][..20] == a[..20] && g[0][9020..] == a[9020..]
        );
        assert!(g[1] == b, "the source task is unchanged");
    }

    #[test]
    fn the_default_copy_virt_reports_the_failing_address() {
        let m = TwoTasks::new(3 * COPY_CHUNK);
        assert_eq!(
            m.copy_virt(Task(0), VirtAddr(0x1000), Task(1), VirtAddr(0x1000), 0),
            Ok(())
        );
        // The destination runs past the end in the second chunk.
        let e = m
            .copy_virt(
                Task(0),
                VirtAddr(0x1000),
                Task(1),
                VirtAddr(0x1000 + 100),
                3 * COPY_CHUNK as u64,
            )
            .unwrap_err();
        assert!(
            matches!(e, Error::NotMapped { addr, .. } if addr == 0x1000 + 100 + 2 * COPY_CHUNK as u64),
            "{e:?}"
        );
        assert!(matches!(
            m.copy_virt(
                Task(0),
                VirtAddr(u64::MAX - 4),
                Task(1),
                VirtAddr(0x1000),
                10
            ),
            Err(Error::Overflow { .. })
        ));
        assert!(matches!(
            m.copy_virt(Task(2), VirtAddr(0x1000), Task(1), VirtAddr(0x1000), 10),
            Err(Error::NotMapped { .. })
        ));
    }

    #[test]
    fn io_widths() {
        assert_eq!(Width::W16.max_value(), 0xFFFF);
        assert_eq!(Width::W64.max_value(), u64::MAX);
        assert!(Width::W32.check_aligned(PhysAddr(0x1004), "t").is_ok());
        assert!(matches!(
            Width::W64.check_aligned(PhysAddr(0x1004), "t"),
            Err(Error::NotAligned { align: 8, .. })
        ));
        assert!(Width::W8.check_aligned(PhysAddr(0x1003), "t").is_ok());
    }
}
