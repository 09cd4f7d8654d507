//! [`MemoryMap`]: a descriptor's memory mapped into a task (IOKit's IOMemoryMap).
//!
//! A mapping is a *second* view of the same pages: stores through it are seen through the
//! descriptor and the other way round. [`MapOptions`] choose the task, a fixed address or
//! anywhere, read-only (enforced by the MMU: a store through the mapping faults; dmakit's own
//! copies refuse with [`Error::NotWritable`]), the cache mode, guard pages, a sub-range and
//! how to share. The returned address keeps the page offset of the first byte, as in IOKit.
//!
//! ## Sharing (IOKit `createMappingInTask`)
//!
//! Mappings are shared as IOKit shares them. Each descriptor keeps a registry of its live
//! mappings ([`MapRegistry`], weak references, so the registry never keeps a mapping
//! alive). A new request first looks there for a *compatible* mapping: the same task, the
//! same read-only bit, the same guard mode, the same cache mode (any, when the request
//! leaves the cache mode at its default), the same address when a fixed one is asked for,
//! and the requested range inside the existing one. For a sub-range, "the same address"
//! is where its first byte lies in the existing mapping, so the request gets exactly the
//! address it asked for. (IOKit compares the existing mapping's own start instead: a fixed
//! request for a sub-range at that start gets a mapping at another address, and one at
//! the sub-range's real address is refused as a clash.)
//!
//! * The identical range: the request gets **the same mapping**. [`MemoryMap`] is a cheap,
//!   counted handle (IOKit returns the same IOMemoryMap with an extra retain); cloning a
//!   handle is another share of the same mapping.
//! * A sub-range: the request gets a new mapping whose address lies inside the existing one
//!   (`existing address + (offset - existing offset)`). It keeps the existing mapping alive;
//!   unmapping it never tears the existing one down. No new page-table entries are made.
//! * Nothing compatible: a new mapping is made, unless the request asked for
//!   [`MapSharing::Reference`] (kIOMapReference), which then fails. [`MapSharing::Unique`]
//!   (kIOMapUnique) always makes a new mapping.
//!
//! Each handle holds one share. [`unmap`](MemoryMap::unmap) (or drop) gives up the
//! handle's share; the mapping itself is torn down when the last share goes. So a holder
//! never sees its address vanish because another holder unmapped. (IOKit's `unmap` on a
//! shared IOMemoryMap tears it down for every holder at once.)
//!
//! A [`SubMemoryDescriptor`](crate::descriptor::SubMemoryDescriptor) is mapped through its
//! parent, as in IOKit: the request becomes one for the window's range of the parent, so it
//! shares the parent's compatible mappings, and the mapping reports the parent as its
//! descriptor and an offset in the parent.
//!
//! ## Memory mapped into its own task
//!
//! A descriptor of one virtual range mapped from its first byte (whole, or any length of
//! it), anywhere, into the task that owns that range is already mapped there: the mapping is
//! the descriptor's own address, no page-table entry is made, and
//! [`MapOptions::is_static`] is true (IOKit's kIOMapStatic). Unmapping it
//! leaves the owner's memory alone. Unlike IOKit, a read-only request or an explicit cache
//! mode other than copy-back gets a real mapping instead, so its protection and caching
//! hold. Any descriptor whose memory is one range counts (a multi-descriptor of one such
//! part too; IOKit gives those a new mapping).
//!
//! ## Other rules
//!
//! A length of zero means the descriptor's whole length (so a non-zero offset with length
//! zero is out of bounds); a zero-length descriptor cannot be mapped
//! ([`Error::BadArgument`]). Guard pages ([`MapGuard`]) need placement anywhere (a fixed
//! address with guards is [`Error::BadArgument`]). A mapping holds its descriptor alive, so
//! the memory behind it cannot be freed while it exists. Only whole pages can be mapped, so
//! every piece of the memory behind the range but the first must start on a page boundary
//! and every piece but the last must end on one ([`Error::NotAligned`] otherwise); ranges
//! that continue one another (the same task, each starting where the last ends) are one
//! piece, wherever they meet, as in IOKit.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
//! use dmakit::map::{MapOptions, MemoryMap};
//! use dmakit::platform::CpuAccess;
//! use dmakit::Direction;
//! use std::sync::Arc;
//! let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//!
//! let md: Arc<dyn MemoryDescriptor> =
//!     Arc::new(BufferMemoryDescriptor::with_bytes(machine.clone(), b"shared page", Direction::InOut)?);
//! let task = machine.create_task(); // a user process
//! let view = MemoryMap::new(machine.clone(), md.clone(), MapOptions::new().in_task(task).read_only())?;
//! assert_eq!(view.length(), md.length());
//! let mut seen = [0u8; 11];
//! machine.read_virt(task, view.address(), &mut seen)?;
//! assert_eq!(&seen, b"shared page");
//! assert!(machine.write_virt(task, view.address(), b"x").is_err(), "read-only");
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::descriptor::{check_range, MemoryDescriptor, Segment, Source};
use crate::platform::{CacheMode, MapPiece, MapRequest, MapSource, Task, VirtualMemory};
use crate::{Error, PageSize, PhysAddr, Result, VirtAddr};
use alloc_crate::sync::{Arc, Weak};
use alloc_crate::vec::Vec;
use core::any::Any;

/// Inaccessible, reserved address space around a mapping (IOKit's `kIOMapGuardedMask`).
///
/// A guard page is never mapped: a CPU access there faults, and nothing else is placed
/// there while the mapping lives. Guards need placement anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MapGuard {
    /// No guard pages.
    #[default]
    None,
    /// One page on each side (kIOMapGuardedSmall).
    Small,
    /// 64 KiB on each side, at least one page (kIOMapGuardedLarge).
    Large,
}

impl MapGuard {
    /// Bytes of guard on each side for pages of `page` bytes.
    pub fn bytes(self, page: crate::PageSize) -> u64 {
        match self {
            MapGuard::None => 0,
            MapGuard::Small => page.bytes(),
            MapGuard::Large => (64 * 1024u64).max(page.bytes()),
        }
    }
}

/// Whether a request may share an existing mapping (IOKit's kIOMapUnique and
/// kIOMapReference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MapSharing {
    /// Share a compatible live mapping if there is one, else make a new one (IOKit's
    /// default).
    #[default]
    Share,
    /// Always make a new mapping (kIOMapUnique).
    Unique,
    /// Only share a compatible live mapping; fail when there is none (kIOMapReference).
    Reference,
}

/// How to map (IOKit's `createMappingInTask` arguments and `kIOMap*` options).
///
/// A builder: start from [`MapOptions::new`] (IOKit's `map()`: the whole descriptor, the
/// kernel task, anywhere, read-write, default caching, shared) and change what you need. A
/// mapping reports the options it was made with through [`MemoryMap::options`], with
/// [`is_static`](Self::is_static) set when it is the memory's own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapOptions {
    task: Task,
    at: Option<VirtAddr>,
    read_only: bool,
    cache: Option<CacheMode>,
    offset: u64,
    length: u64,
    guard: MapGuard,
    sharing: MapSharing,
    is_static: bool,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// kIOMapAnywhere.
const IOKIT_ANYWHERE: u32 = 0x1;
/// kIOMapReadOnly.
const IOKIT_READ_ONLY: u32 = 0x1000;
/// kIOMapStatic.
const IOKIT_STATIC: u32 = 0x0100_0000;
/// kIOMapReference.
const IOKIT_REFERENCE: u32 = 0x0200_0000;
/// kIOMapUnique.
const IOKIT_UNIQUE: u32 = 0x0400_0000;
/// kIOMapGuardedSmall.
const IOKIT_GUARDED_SMALL: u32 = 0x4000_0000;
/// kIOMapGuardedLarge.
const IOKIT_GUARDED_LARGE: u32 = 0x8000_0000;

impl MapOptions {
    /// The whole descriptor, into the kernel task, anywhere, read-write, default caching,
    /// shared (IOKit's `map()`).
    pub const fn new() -> Self {
        MapOptions {
            task: Task::KERNEL,
            at: None,
            read_only: false,
            cache: None,
            offset: 0,
            length: 0,
            guard: MapGuard::None,
            sharing: MapSharing::Share,
            is_static: false,
        }
    }

    /// Read-only (kIOMapReadOnly).
    pub const fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Into `task` (`createMappingInTask`'s task).
    pub const fn in_task(mut self, task: Task) -> Self {
        self.task = task;
        self
    }

    /// At a fixed address (kIOMapAnywhere clear); its page offset must equal the first
    /// byte's.
    pub const fn at(mut self, va: VirtAddr) -> Self {
        self.at = Some(va);
        self
    }

    /// Anywhere (kIOMapAnywhere; the default).
    pub const fn anywhere(mut self) -> Self {
        self.at = None;
        self
    }

    /// With a cache mode (kIOMapCacheMask). Without one the mapping uses the default
    /// (copy-back) and may share a mapping of any cache mode.
    pub const fn cache(mut self, mode: CacheMode) -> Self {
        self.cache = Some(mode);
        self
    }

    /// Only `[offset, offset + length)` of the descriptor; a `length` of 0 means the
    /// descriptor's whole length, as in IOKit (so it needs `offset` 0).
    pub const fn range(mut self, offset: u64, length: u64) -> Self {
        self.offset = offset;
        self.length = length;
        self
    }

    /// With guard pages on both sides (kIOMapGuardedSmall / kIOMapGuardedLarge).
    pub const fn guard(mut self, guard: MapGuard) -> Self {
        self.guard = guard;
        self
    }

    /// Always a new mapping (kIOMapUnique).
    pub const fn unique(mut self) -> Self {
        self.sharing = MapSharing::Unique;
        self
    }

    /// Only an existing compatible mapping (kIOMapReference).
    pub const fn reference(mut self) -> Self {
        self.sharing = MapSharing::Reference;
        self
    }

    /// With the given sharing.
    pub const fn sharing(mut self, sharing: MapSharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// The task (IOKit `getAddressTask` of the mapping).
    pub const fn task(&self) -> Task {
        self.task
    }

    /// The fixed address asked for, or `None` for anywhere.
    pub const fn fixed_address(&self) -> Option<VirtAddr> {
        self.at
    }

    /// Whether stores are refused.
    pub const fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The cache mode asked for (`None`: the default). A mapping's options carry the mode
    /// it actually has.
    pub const fn cache_mode(&self) -> Option<CacheMode> {
        self.cache
    }

    /// First byte of the descriptor.
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes (0: the whole descriptor). A mapping's options carry the length it has.
    pub const fn length(&self) -> u64 {
        self.length
    }

    /// The guard mode.
    pub const fn guard_mode(&self) -> MapGuard {
        self.guard
    }

    /// How the request shares.
    pub const fn sharing_mode(&self) -> MapSharing {
        self.sharing
    }

    /// Whether the mapping is the memory's own address rather than a mapping made for it
    /// (kIOMapStatic). Only a mapping's options have it set.
    pub const fn is_static(&self) -> bool {
        self.is_static
    }

    /// The IOKit option word (`IOOptionBits` of `createMappingInTask`, as IOMemoryMap's
    /// `getMapOptions` returns it): kIOMapAnywhere, the cache field, kIOMapReadOnly,
    /// kIOMapStatic, kIOMapReference, kIOMapUnique and the guard bits.
    ///
    /// A mapping's options carry the cache mode it has, so its word has the copy-back
    /// value (3) in the cache field where the request left the default; IOKit's
    /// `getMapOptions` keeps the request's default (0) there.
    pub const fn iokit_bits(&self) -> u32 {
        let mut bits = 0;
        if self.at.is_none() {
            bits |= IOKIT_ANYWHERE;
        }
        bits |= match self.cache {
            None => 0,
            Some(CacheMode::Inhibit) => 1,
            Some(CacheMode::WriteThrough) => 2,
            Some(CacheMode::CopyBack) => 3,
            Some(CacheMode::WriteCombine) => 4,
        } << 8;
        if self.read_only {
            bits |= IOKIT_READ_ONLY;
        }
        if self.is_static {
            bits |= IOKIT_STATIC;
        }
        bits |= match self.sharing {
            MapSharing::Share => 0,
            MapSharing::Reference => IOKIT_REFERENCE,
            MapSharing::Unique => IOKIT_UNIQUE,
        };
        bits |= match self.guard {
            MapGuard::None => 0,
            MapGuard::Small => IOKIT_GUARDED_SMALL,
            MapGuard::Large => IOKIT_GUARDED_LARGE,
        };
        bits
    }

    /// The cache mode a mapping made with these options has.
    const fn effective_cache(&self) -> CacheMode {
        match self.cache {
            Some(c) => c,
            None => CacheMode::CopyBack,
        }
    }
}

/// The live mappings of one descriptor, so a request can share one (IOKit keeps them in the
/// descriptor's `_mappings` set).
///
/// A descriptor that wants its mappings shared holds one and returns it from
/// [`MemoryDescriptor::map_registry`]. It holds weak references only: a mapping goes away
/// with its last handle whether or not it is registered.
#[derive(Default)]
pub struct MapRegistry {
    maps: crate::sync::Mutex<Vec<Weak<dyn Entry>>>,
}

/// A registered mapping of any platform type.
trait Entry: Send + Sync {
    /// Whether it is still in place.
    fn live(&self) -> bool;
    /// Itself, for a downcast to its platform type.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<P: VirtualMemory + 'static> Entry for MapInner<P> {
    fn live(&self) -> bool {
        MapInner::live(self)
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

impl MapRegistry {
    crate::sync::const_unless_loom! {
        /// An empty registry.
        pub fn new() -> Self {
            MapRegistry {
                maps: crate::sync::Mutex::new(Vec::new()),
            }
        }
    }

    /// Mappings of the descriptor that are still in place (sub-mappings included).
    pub fn live(&self) -> usize {
        self.maps
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|m| m.live())
            .count()
    }
}

impl core::fmt::Debug for MapRegistry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MapRegistry")
            .field("live", &self.live())
            .finish()
    }
}

/// What a mapping is made of.
enum Kind<P: VirtualMemory> {
    /// Page-table entries this mapping made: `[base, base + len)` of the task (guards, if
    /// any, around it are the platform's).
    Own { base: VirtAddr, len: u64 },
    /// The memory's own address (kIOMapStatic): nothing to undo.
    Static,
    /// A range of another mapping, which it holds one share of.
    Sub { parent: Arc<MapInner<P>> },
}

/// Share count and state of one mapping.
struct State {
    /// Handles (and sub-mappings) holding a share; 0 once torn down.
    handles: usize,
}

/// One mapping, shared by its handles.
///
/// # Invariants
///
/// While `state.handles > 0` the mapping is in place: for `Kind::Own`, `[base, base + len)`
/// of `options.task` is a mapping made by `platform.map_pages` (or `map_pages_guarded`) that
/// nobody else removes; for `Kind::Sub`, one of `parent`'s shares is this mapping's.
struct MapInner<P: VirtualMemory> {
    platform: P,
    md: Arc<dyn MemoryDescriptor>,
    /// The first mapped byte.
    address: VirtAddr,
    /// Options as made: the range resolved, the cache mode effective, the static flag.
    options: MapOptions,
    kind: Kind<P>,
    state: crate::sync::Mutex<State>,
}

impl<P: VirtualMemory> MapInner<P> {
    /// Takes one more share if the mapping is still in place.
    fn share(&self) -> bool {
        let mut s = self.state.lock();
        if s.handles == 0 {
            return false;
        }
        s.handles += 1;
        true
    }

    /// Gives up one share; the last one tears the mapping down. On a refusal (a page of the
    /// mapping is wired) the share is kept and the mapping stays.
    fn release(&self) -> Result<()> {
        let mut s = self.state.lock();
        match s.handles {
            0 => Ok(()),
            1 => {
                self.teardown()?;
                s.handles = 0;
                Ok(())
            }
            _ => {
                s.handles -= 1;
                Ok(())
            }
        }
    }

    fn teardown(&self) -> Result<()> {
        match &self.kind {
            Kind::Own { base, len } => self.platform.unmap_pages(self.options.task, *base, *len),
            Kind::Static => Ok(()),
            Kind::Sub { parent } => parent.release(),
        }
    }

    fn live(&self) -> bool {
        self.state.lock().handles > 0
    }
}

impl<P: VirtualMemory> Drop for MapInner<P> {
    fn drop(&mut self) {
        // Only reached with shares left when tearing down was refused (a page was wired):
        // try once more; if refused again the mapping stays, which is safe.
        if self.state.get_mut().handles > 0 && self.teardown().is_ok() {
            self.state.get_mut().handles = 0;
        }
    }
}

/// Whether the memory behind all of `md` is one piece (IOKit: a descriptor of one range).
fn one_source(md: &dyn MemoryDescriptor) -> bool {
    let mut pieces = 0usize;
    md.sources(0, md.length(), &mut |s| {
        if s.len > 0 {
            pieces += 1;
        }
    })
    .is_ok()
        && pieces == 1
}

/// A request after validation.
struct Request {
    task: Task,
    at: Option<VirtAddr>,
    read_only: bool,
    cache: Option<CacheMode>,
    guard: MapGuard,
    offset: u64,
    length: u64,
}

impl Request {
    /// Where this request would land inside `e`, if `e` is compatible with it.
    fn fits<P: VirtualMemory>(&self, e: &MapInner<P>) -> Option<VirtAddr> {
        let o = &e.options;
        if o.task != self.task || o.read_only != self.read_only || o.guard != self.guard {
            return None;
        }
        if self.cache.is_some_and(|c| c != o.effective_cache()) {
            return None;
        }
        let delta = self.offset.checked_sub(o.offset)?;
        if delta.checked_add(self.length)? > o.length {
            return None;
        }
        let address = VirtAddr(e.address.0.checked_add(delta)?);
        if self.at.is_some_and(|a| a != address) {
            return None;
        }
        Some(address)
    }
}

/// A handle on a live mapping (IOKit's IOMemoryMap).
///
/// Handles are counted shares of one mapping: [`Clone`] takes another share, and
/// [`unmap`](Self::unmap) or drop gives this handle's share up. The mapping is torn down
/// with its last share. After `unmap` the handle reports address 0 (as IOKit's
/// `getAddress`) and keeps only its descriptor and options.
pub struct MemoryMap<P: VirtualMemory> {
    inner: Arc<MapInner<P>>,
    /// Whether this handle still holds its share.
    attached: bool,
}

impl<P: VirtualMemory + 'static> MemoryMap<P> {
    /// Maps `md` on `platform` as `options` say (IOKit `createMappingInTask`; with the
    /// defaults of [`MapOptions::new`], IOKit `map`). Shares a compatible live mapping of
    /// `md` unless the options say [`MapSharing::Unique`]; see the module documentation.
    ///
    /// Errors: a zero-length descriptor or guards with a fixed address
    /// ([`Error::BadArgument`]); a range outside the descriptor ([`Error::OutOfBounds`]);
    /// [`MapSharing::Reference`] with nothing to share ([`Error::NotMapped`]); a fixed
    /// address whose page offset differs from the first byte's, or separate pieces of memory
    /// (ranges or parts that do not continue one another) that do not meet on page
    /// boundaries ([`Error::NotAligned`]); and whatever the
    /// platform refuses (a fixed address in use is [`Error::RangeBusy`]; a platform without
    /// guard support is [`Error::Unsupported`]).
    pub fn new(platform: P, md: Arc<dyn MemoryDescriptor>, options: MapOptions) -> Result<Self> {
        let mut platform = platform;
        let length = checked_length(md.as_ref(), &options)?;
        let (md, offset) = through_parents(md, options.offset)?;
        let options = MapOptions {
            offset,
            length,
            ..options
        };
        let req = Request {
            task: options.task,
            at: options.at,
            read_only: options.read_only,
            cache: options.cache,
            guard: options.guard,
            offset,
            length,
        };
        let md_for_registry = md.clone();
        let registry = md_for_registry.map_registry();
        // Held from the search to the registration, so two identical requests racing each
        // other end up sharing one mapping.
        let mut maps = registry.map(|r| r.maps.lock());
        if let Some(maps) = maps.as_mut() {
            maps.retain(|w| w.strong_count() > 0);
            if options.sharing != MapSharing::Unique {
                match Self::find(maps, &req, &md, options, platform) {
                    Ok(found) => return Ok(found),
                    Err(p) => platform = p,
                }
            }
        }
        if options.sharing == MapSharing::Reference {
            return Err(Error::NotMapped {
                what: "map with the reference option: the descriptor has no compatible \
                       live mapping to share",
                addr: options.at.map_or(0, |a| a.0),
            });
        }
        let inner = Self::make(platform, md, options, &req)?;
        let inner = Arc::new(inner);
        if let Some(maps) = maps.as_mut() {
            let entry: Arc<dyn Entry> = inner.clone();
            maps.push(Arc::downgrade(&entry));
        }
        Ok(MemoryMap {
            inner,
            attached: true,
        })
    }

    /// The compatible live mapping for `req` among `maps`: the identical range shared, or a
    /// sub-mapping of one that contains it.
    /// Hands the platform back when there is none.
    fn find(
        maps: &mut Vec<Weak<dyn Entry>>,
        req: &Request,
        md: &Arc<dyn MemoryDescriptor>,
        options: MapOptions,
        platform: P,
    ) -> core::result::Result<Self, P> {
        let live: Vec<Arc<MapInner<P>>> = maps
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|e| e.into_any().downcast::<MapInner<P>>().ok())
            .filter(|m| m.live())
            .collect();
        // The identical range first: it is the very mapping asked for.
        for e in &live {
            if e.options.offset == req.offset
                && e.options.length == req.length
                && req.fits(e).is_some()
                && e.share()
            {
                return Ok(MemoryMap {
                    inner: e.clone(),
                    attached: true,
                });
            }
        }
        for e in &live {
            let Some(address) = req.fits(e) else { continue };
            // Hang the new mapping off the mapping that owns the pages, so chains stay one
            // level deep.
            let root = match &e.kind {
                Kind::Sub { parent } => parent.clone(),
                _ => e.clone(),
            };
            if !root.share() {
                continue;
            }
            let inner = Arc::new(MapInner {
                platform,
                md: md.clone(),
                address,
                options: MapOptions {
                    offset: req.offset,
                    length: req.length,
                    cache: Some(root.options.effective_cache()),
                    is_static: root.options.is_static,
                    ..options
                },
                kind: Kind::Sub { parent: root },
                state: crate::sync::Mutex::new(State { handles: 1 }),
            });
            let entry: Arc<dyn Entry> = inner.clone();
            maps.push(Arc::downgrade(&entry));
            return Ok(MemoryMap {
                inner,
                attached: true,
            });
        }
        Err(platform)
    }

    /// A new mapping: the memory's own address when it is already mapped in the task as
    /// asked, else new page-table entries from the platform.
    fn make(
        platform: P,
        md: Arc<dyn MemoryDescriptor>,
        options: MapOptions,
        req: &Request,
    ) -> Result<MapInner<P>> {
        let page = md.page_size();
        let (sources, pieces_seen) = joined_sources(md.as_ref(), req)?;
        let resolved = MapOptions {
            offset: req.offset,
            length: req.length,
            cache: Some(options.effective_cache()),
            ..options
        };
        if let Some(address) = static_address(md.as_ref(), &options, req, &sources, pieces_seen) {
            return Ok(MapInner {
                platform,
                md,
                address,
                options: MapOptions {
                    is_static: true,
                    ..resolved
                },
                kind: Kind::Static,
                state: crate::sync::Mutex::new(State { handles: 1 }),
            });
        }
        let pieces = page_pieces(page, &sources)?;
        let first_off = sources.first().map_or(0, |s| page.offset(s.addr));
        let map_req = MapRequest {
            task: req.task,
            at: placed_at(page, req.at, first_off)?,
            read_only: req.read_only,
            cache: options.effective_cache(),
        };
        let guard = req.guard.bytes(page);
        let base = if guard == 0 {
            platform.map_pages(&pieces, &map_req)?
        } else {
            platform.map_pages_guarded(&pieces, &map_req, guard)?
        };
        let len = pieces
            .iter()
            .try_fold(0u64, |t, p| t.checked_add(p.len))
            .ok_or(Error::Overflow {
                what: "mapping length",
                start: 0,
                len: req.length,
            })?;
        Ok(MapInner {
            platform,
            md,
            address: VirtAddr(base.0 + first_off),
            options: resolved,
            kind: Kind::Own { base, len },
            state: crate::sync::Mutex::new(State { handles: 1 }),
        })
    }
}

/// The length `options` ask of `md` (0: to its end), checked: the descriptor is not empty,
/// the range lies inside it, and guard pages are not asked at a fixed address.
fn checked_length(md: &dyn MemoryDescriptor, options: &MapOptions) -> Result<u64> {
    let total = md.length();
    if total == 0 {
        return Err(Error::BadArgument {
            what: "mapping a zero-length descriptor (it has no pages to map)",
            value: 0,
        });
    }
    let length = if options.length == 0 {
        total
    } else {
        options.length
    };
    check_range("mapping range", options.offset, length, total)?;
    if options.guard != MapGuard::None {
        if let Some(at) = options.at {
            return Err(Error::BadArgument {
                what: "guard pages need placement anywhere, not a fixed address",
                value: at.0,
            });
        }
    }
    Ok(length)
}

/// The descriptor that is mapped for `md` and the offset in it: a sub-descriptor is mapped
/// as its range of its parent (IOKit maps it through the parent), with the parent's
/// registry and offsets.
fn through_parents(
    md: Arc<dyn MemoryDescriptor>,
    offset: u64,
) -> Result<(Arc<dyn MemoryDescriptor>, u64)> {
    let (mut md, mut offset) = (md, offset);
    while let Some((parent, start)) = md.map_through() {
        offset = offset.checked_add(start).ok_or(Error::Overflow {
            what: "mapping range in the parent of a sub-descriptor",
            start: offset,
            len: start,
        })?;
        md = parent;
    }
    Ok((md, offset))
}

/// The sources of the requested range, pieces that continue one another (the same task,
/// the next address) joined into one, and how many non-empty pieces there were: only the
/// joins between separate pieces must fall on page boundaries.
fn joined_sources(md: &dyn MemoryDescriptor, req: &Request) -> Result<(Vec<Source>, usize)> {
    let mut sources: Vec<Source> = Vec::new();
    let mut pieces_seen = 0usize;
    md.sources(req.offset, req.length, &mut |s| {
        if s.len == 0 {
            return;
        }
        pieces_seen += 1;
        match sources.last_mut() {
            Some(last)
                if last.task == s.task && last.addr.checked_add(last.len) == Some(s.addr) =>
            {
                last.len += s.len;
            }
            _ => sources.push(s),
        }
    })?;
    Ok((sources, pieces_seen))
}

/// The memory's own address, when the request can use it as the mapping (a static
/// mapping): one range (IOKit: a descriptor of one range, not several that merely continue
/// one another) already in the requested task, mapped whole, anywhere, shared, unguarded,
/// writable and cached as the task has it.
fn static_address(
    md: &dyn MemoryDescriptor,
    options: &MapOptions,
    req: &Request,
    sources: &[Source],
    pieces_seen: usize,
) -> Option<VirtAddr> {
    let own = match sources {
        [only] if pieces_seen == 1 && only.task == Some(req.task) => VirtAddr(only.addr),
        _ => return None,
    };
    let as_is = req.at.is_none()
        && options.sharing != MapSharing::Unique
        && req.guard == MapGuard::None
        && req.offset == 0
        && !req.read_only
        && options.effective_cache() == CacheMode::CopyBack
        && (req.length == md.length() || one_source(md));
    as_is.then_some(own)
}

/// The whole pages to map for `sources`: every piece but the first must start on a page
/// boundary and every piece but the last must end on one.
fn page_pieces(page: PageSize, sources: &[Source]) -> Result<Vec<MapPiece>> {
    let n = sources.len();
    let mut pieces = Vec::with_capacity(n);
    for (i, s) in sources.iter().enumerate() {
        let overflow = Error::Overflow {
            what: "mapping",
            start: s.addr,
            len: s.len,
        };
        let end = s.addr.checked_add(s.len).ok_or(overflow.clone())?;
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
        let stop = page.round_up(end).ok_or(overflow)?;
        let src = match s.task {
            Some(t) => MapSource::Virtual(t, VirtAddr(start)),
            None => MapSource::Physical(PhysAddr(start)),
        };
        pieces.push(MapPiece {
            src,
            len: stop - start,
        });
    }
    Ok(pieces)
}

/// The page where a mapping asked at `at` starts: its page offset must be the first byte's
/// (`first_off`), as the mapping keeps the memory's offset in the page.
fn placed_at(page: PageSize, at: Option<VirtAddr>, first_off: u64) -> Result<Option<VirtAddr>> {
    match at {
        Some(va) if page.offset(va.0) != first_off => Err(Error::NotAligned {
            what: "mapping address (its page offset must equal the first byte's)",
            value: va.0,
            align: page.bytes(),
        }),
        Some(va) => Ok(Some(VirtAddr(page.trunc(va.0)))),
        None => Ok(None),
    }
}

impl<P: VirtualMemory> MemoryMap<P> {
    /// Address of the first mapped byte in the task; `VirtAddr(0)` after this handle's
    /// [`unmap`](Self::unmap) (IOKit `getAddress` / `getVirtualAddress`).
    pub fn address(&self) -> VirtAddr {
        if self.attached {
            self.inner.address
        } else {
            VirtAddr(0)
        }
    }

    /// Whether this handle still holds its share of the mapping.
    pub fn is_mapped(&self) -> bool {
        self.attached
    }

    /// Bytes mapped (IOKit `getLength` / `getSize`).
    pub fn length(&self) -> u64 {
        self.inner.options.length
    }

    /// Offset of the first mapped byte in the [`descriptor`](Self::descriptor) (for a
    /// sub-descriptor's mapping, in its parent).
    pub fn offset(&self) -> u64 {
        self.inner.options.offset
    }

    /// The task it is mapped into (IOKit `getAddressTask`).
    pub fn task(&self) -> Task {
        self.inner.options.task
    }

    /// The options the mapping was made with, the range resolved, the cache mode it has, and
    /// [`is_static`](MapOptions::is_static) set when it is the memory's own address (IOKit
    /// `getMapOptions`; [`MapOptions::iokit_bits`] gives IOKit's word). A shared mapping
    /// reports the options of the request that made it.
    pub fn options(&self) -> MapOptions {
        self.inner.options
    }

    /// The descriptor whose memory is mapped; the mapping holds it alive (IOKit
    /// `getMemoryDescriptor`). For a mapping of a
    /// [`SubMemoryDescriptor`](crate::descriptor::SubMemoryDescriptor) this is its parent,
    /// as in IOKit (see [`MemoryDescriptor::map_through`]).
    pub fn descriptor(&self) -> &Arc<dyn MemoryDescriptor> {
        &self.inner.md
    }

    /// Where byte `offset` of the mapping lives physically, and how many bytes from there
    /// are physically contiguous within the mapping: the descriptor's
    /// [`physical_segment`](MemoryDescriptor::physical_segment) at the mapping's offset plus
    /// `offset` (IOKit `IOMemoryMap::getPhysicalSegment`). An offset at or past the mapping's
    /// length is [`Error::OutOfBounds`]; virtual memory must be prepared, as for the
    /// descriptor.
    pub fn physical_segment(&self, offset: u64) -> Result<Segment> {
        let length = self.length();
        if offset >= length {
            return Err(Error::OutOfBounds {
                what: "mapping physical segment",
                offset,
                len: 1,
                limit: length,
            });
        }
        let s = self
            .inner
            .md
            .physical_segment(self.inner.options.offset + offset)?;
        Ok(Segment {
            addr: s.addr,
            len: s.len.min(length - offset),
        })
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.inner.platform
    }

    /// Handles (and sub-mappings) sharing this mapping; 0 once it is torn down (IOKit's
    /// retain count of the IOMemoryMap, roughly).
    pub fn share_count(&self) -> usize {
        self.inner.state.lock().handles
    }

    /// Whether `self` and `other` are handles of the same mapping.
    pub fn same_mapping(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Gives up this handle's share of the mapping (IOKit `unmap`). The last share tears the
    /// mapping down: its page-table entries go (not for a static mapping, whose memory is
    /// the owner's, nor for a sub-mapping, whose pages are its parent's: it gives its share
    /// of the parent back instead). A second call does nothing. Refused while a page of the
    /// mapping is wired; the handle then keeps its share.
    pub fn unmap(&mut self) -> Result<()> {
        if !self.attached {
            return Ok(());
        }
        self.inner.release()?;
        self.attached = false;
        Ok(())
    }
}

impl<P: VirtualMemory> Clone for MemoryMap<P> {
    /// Another share of the same mapping (IOKit `retain`). A clone of an unmapped handle is
    /// unmapped too.
    fn clone(&self) -> Self {
        let attached = self.attached && self.inner.share();
        MemoryMap {
            inner: self.inner.clone(),
            attached,
        }
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
            .field("length", &self.length())
            .field("options", &self.inner.options)
            .field("shares", &self.share_count())
            .finish()
    }
}
