//! [`MemoryMap`]: a descriptor's memory mapped into a task (IOKit's IOMemoryMap).
//!
//! A mapping is a *second* view of the same pages: stores through it are seen through the
//! descriptor and the other way round. [`MapOptions`] choose the task, a fixed address or
//! anywhere, read-only (enforced by the MMU: a store through the mapping faults; dmakit's own
//! copies refuse with [`Error::NotWritable`]), the cache mode, and a sub-range. The returned
//! address keeps the page offset of the first byte, as in IOKit. The mapping goes away on
//! [`unmap`](MemoryMap::unmap) or drop.
//!
//! Only whole pages can be mapped, so every piece of a composite descriptor but the first
//! must start on a page boundary and every piece but the last must end on one
//! ([`Error::NotAligned`] otherwise).
//!
//! ```
//! # use dmakit::map::{MapOptions, MemoryMap};
//! # use dmakit::descriptor::MemoryDescriptor;
//! # fn demo<P: dmakit::platform::Platform>(p: P, md: &dyn MemoryDescriptor) -> dmakit::Result<()> {
//! let view = MemoryMap::new(p, md, MapOptions::new().read_only())?;
//! println!("mapped {} bytes at {}", view.length(), view.address());
//! # Ok(()) }
//! ```

use crate::descriptor::MemoryDescriptor;
use crate::platform::{CacheMode, MapPiece, MapRequest, MapSource, Task, VirtualMemory};
use crate::{Error, PhysAddr, Result, VirtAddr};
use alloc_crate::vec::Vec;

/// How to map (IOKit's `createMappingInTask` arguments and `kIOMap*` options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapOptions {
    /// The task to map into.
    pub task: Task,
    /// Map at this address (kIOMapAnywhere clear); its page offset must equal the first
    /// byte's. `None`: anywhere.
    pub at: Option<VirtAddr>,
    /// kIOMapReadOnly.
    pub read_only: bool,
    /// The cache mode (kIOMapCacheMask).
    pub cache: CacheMode,
    /// First byte of the descriptor to map.
    pub offset: u64,
    /// Bytes to map; `None` maps to the end of the descriptor. Zero is an error.
    pub length: Option<u64>,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl MapOptions {
    /// The whole descriptor, into the kernel task, anywhere, read-write, default caching
    /// (IOKit's `map()`).
    pub const fn new() -> Self {
        MapOptions {
            task: Task::KERNEL,
            at: None,
            read_only: false,
            cache: CacheMode::CopyBack,
            offset: 0,
            length: None,
        }
    }

    /// Read-only.
    pub const fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Into `task`.
    pub const fn in_task(mut self, task: Task) -> Self {
        self.task = task;
        self
    }

    /// At a fixed address.
    pub const fn at(mut self, va: VirtAddr) -> Self {
        self.at = Some(va);
        self
    }

    /// With a cache mode.
    pub const fn cache(mut self, mode: CacheMode) -> Self {
        self.cache = mode;
        self
    }

    /// Only `[offset, offset + length)` of the descriptor.
    pub const fn range(mut self, offset: u64, length: u64) -> Self {
        self.offset = offset;
        self.length = Some(length);
        self
    }
}

/// A live mapping.
///
/// # Invariants
///
/// While `mapped`, `[base, base + map_len)` of `options.task` is a mapping this value made
/// and nobody else removes.
pub struct MemoryMap<P: VirtualMemory> {
    platform: P,
    base: VirtAddr,
    map_len: u64,
    address: VirtAddr,
    length: u64,
    options: MapOptions,
    mapped: bool,
}

impl<P: VirtualMemory> MemoryMap<P> {
    /// Maps `md` on `platform` as `options` say.
    pub fn new(platform: P, md: &dyn MemoryDescriptor, options: MapOptions) -> Result<Self> {
        let page = md.page_size();
        let total = md.length();
        let length =
            match options.length {
                Some(0) => return Err(Error::ZeroSize { what: "mapping" }),
                Some(l) => l,
                None => total.checked_sub(options.offset).filter(|&l| l > 0).ok_or(
                    Error::OutOfBounds {
                        what: "mapping offset",
                        offset: options.offset,
                        len: 0,
                        limit: total,
                    },
                )?,
            };
        let mut sources = Vec::new();
        md.sources(options.offset, length, &mut |s| {
            if s.len > 0 {
                sources.push(s)
            }
        })?;
        let n = sources.len();
        let mut pieces = Vec::with_capacity(n);
        for (i, s) in sources.iter().enumerate() {
            let end = s.addr + s.len;
            if (i > 0 && page.offset(s.addr) != 0) || (i + 1 < n && page.offset(end) != 0) {
                return Err(Error::NotAligned {
                    what: "mapping: an inner piece of the descriptor is not page aligned",
                    value: if i > 0 && page.offset(s.addr) != 0 {
                        s.addr
                    } else {
                        end
                    },
                    align: page.bytes(),
                });
            }
            let start = page.trunc(s.addr);
            let stop = page.round_up(end).ok_or(Error::Overflow {
                what: "mapping",
                start: s.addr,
                len: s.len,
            })?;
            let src = match s.task {
                Some(t) => MapSource::Virtual(t, VirtAddr(start)),
                None => MapSource::Physical(PhysAddr(start)),
            };
            pieces.push(MapPiece {
                src,
                len: stop - start,
            });
        }
        let first_off = sources.first().map_or(0, |s| page.offset(s.addr));
        let at = match options.at {
            Some(va) if page.offset(va.0) != first_off => {
                return Err(Error::NotAligned {
                    what: "mapping address (its page offset must equal the first byte's)",
                    value: va.0,
                    align: page.bytes(),
                })
            }
            Some(va) => Some(VirtAddr(page.trunc(va.0))),
            None => None,
        };
        let req = MapRequest {
            task: options.task,
            at,
            read_only: options.read_only,
            cache: options.cache,
        };
        let base = platform.map_pages(&pieces, &req)?;
        let map_len = pieces.iter().map(|p| p.len).sum();
        Ok(MemoryMap {
            platform,
            base,
            map_len,
            address: VirtAddr(base.0 + first_off),
            length,
            options,
            mapped: true,
        })
    }

    /// Address of the first mapped byte in the task (`VirtAddr(0)` after unmap, as IOKit's
    /// `getAddress`).
    pub fn address(&self) -> VirtAddr {
        if self.mapped {
            self.address
        } else {
            VirtAddr(0)
        }
    }

    /// Bytes mapped.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The task it is mapped into.
    pub fn task(&self) -> Task {
        self.options.task
    }

    /// The options it was made with.
    pub fn options(&self) -> MapOptions {
        self.options
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Removes the mapping. A second call does nothing.
    pub fn unmap(&mut self) -> Result<()> {
        if !self.mapped {
            return Ok(());
        }
        self.platform
            .unmap_pages(self.options.task, self.base, self.map_len)?;
        self.mapped = false;
        Ok(())
    }
}

impl<P: VirtualMemory> Drop for MemoryMap<P> {
    fn drop(&mut self) {
        // Refused only while a page of the mapping is wired; then it stays, which is safe.
        let _ = self.unmap();
    }
}

impl<P: VirtualMemory> core::fmt::Debug for MemoryMap<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryMap")
            .field("address", &self.address())
            .field("length", &self.length)
            .field("options", &self.options)
            .finish()
    }
}
