//! Memory descriptors: IOKit's IOMemoryDescriptor family.
//!
//! A descriptor describes *what memory*: an ordered list of byte ranges, concatenated into
//! one logical space `[0, length)`. It does not say how a device sees the memory (that is
//! the DMA command's job); it can copy bytes in and out, wire the memory (`prepare`) and tell
//! where each byte lives physically (`physical_segment`).
//!
//! | kind | what it describes |
//! | --- | --- |
//! | [`GeneralMemoryDescriptor`] | ranges of a task's virtual memory, or physical ranges |
//! | [`BufferMemoryDescriptor`] | a buffer it allocates and owns (capacity, length, constraints) |
//! | [`DeviceMemory`] | physical ranges of device memory (a physical general descriptor) |
//! | [`SubMemoryDescriptor`] | a window `(offset, length)` of another descriptor |
//! | [`MultiMemoryDescriptor`] | several descriptors one after another |
//! | [`InterleavedMemoryDescriptor`] | `(descriptor, offset, length)` portions one after another |
//!
//! ## Preparing
//!
//! [`MemoryDescriptor::prepare_wiring`] wires the memory and may be called again: each call needs a
//! matching complete, and the memory is unwired at the last one. The safe way is
//! `prepare` on `dyn MemoryDescriptor`, which hands back a
//! [`Prepared`] guard whose [`complete`](Prepared::complete) (or drop) balances it.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
//! use dmakit::Direction;
//! use std::sync::Arc;
//!
//! // A simulated machine; any `Platform` does (dmakit-linux's `Host`, your kernel's).
//! let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//! let buf = BufferMemoryDescriptor::new(machine, BufferOptions::new(8192, Direction::Out))?;
//! assert_eq!(buf.write_bytes(4090, b"crosses a page"), 14);
//! let md: &dyn MemoryDescriptor = &buf;
//! let prepared = md.prepare(Direction::Out)?;
//! let seg = md.physical_segment(4096)?;          // where byte 4096 lives
//! assert!(seg.len >= 1 && seg.len <= 4096);      // up to the end of its physical run
//! let mut back = [0u8; 14];
//! assert_eq!(md.read_bytes(4090, &mut back), 14);
//! assert_eq!(&back, b"crosses a page");
//! prepared.complete()?;
//! # Ok::<(), dmakit::Error>(())
//! ```

//!
//! ## Other operations
//!
//! | IOKit | here |
//! | --- | --- |
//! | `writeBytes(offset, NULL, length)` | [`MemoryDescriptor::fill_zero`] |
//! | `getDMAMapLength` | [`MemoryDescriptor::dma_map_length`] |
//! | `getPreparationID` / `getDescriptorID` | [`MemoryDescriptor::preparation_id`] / [`MemoryDescriptor::descriptor_id`] |
//! | `performOperation` | [`MemoryDescriptor::perform_operation`] with a [`MemoryOperation`] |
//! | `setPurgeable` | [`MemoryDescriptor::set_purgeable`] with a [`PurgeableRequest`] |
//! | `getBytesNoCopy` | [`BufferMemoryDescriptor::bytes_no_copy`] / [`BufferMemoryDescriptor::bytes_no_copy_mut`] |

mod buffer;
mod device;
mod general;
mod holders;
mod interleaved;
mod multi;
mod sub;

pub use buffer::{BufferMemoryDescriptor, BufferOptions, BytesNoCopy, BytesNoCopyMut};
pub use device::{device_memory, device_memory_list, device_sub_range, DeviceMemory, DeviceRange};
pub use general::GeneralMemoryDescriptor;
pub(crate) use holders::Removed;
pub use holders::{Holders, PrepOwner};

pub use interleaved::InterleavedMemoryDescriptor;
pub use multi::MultiMemoryDescriptor;
pub use sub::SubMemoryDescriptor;

pub use crate::platform::{PurgeableRequest, PurgeableState};
use crate::{Direction, Error, PageSize, PhysAddr, Result};
use core::sync::atomic::{AtomicU64, Ordering};

/// [`MemoryDescriptor::preparation_id`] of memory that is not prepared
/// (kIOPreparationIDUnprepared).
pub const PREPARATION_ID_UNPREPARED: u64 = 0;
/// [`MemoryDescriptor::preparation_id`] of a descriptor that does not track preparations
/// (kIOPreparationIDUnsupported).
pub const PREPARATION_ID_UNSUPPORTED: u64 = 1;
/// kIOPreparationIDAlwaysPrepared; no dmakit descriptor reports it, but composites pass it
/// through from a part that does.
pub const PREPARATION_ID_ALWAYS_PREPARED: u64 = 2;
/// The first identifier [`MemoryDescriptor::preparation_id`] and
/// [`MemoryDescriptor::descriptor_id`] hand out; every real identifier is at least this.
pub const FIRST_ID: u64 = 1 << 32;

/// The one counter every preparation and descriptor identifier comes from, so no two are
/// ever equal.
static NEXT_ID: AtomicU64 = AtomicU64::new(FIRST_ID);

/// A fresh identifier (at least [`FIRST_ID`]).
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// An identifier assigned on first query and kept until reset.
#[derive(Debug, Default)]
pub(crate) struct LazyId(AtomicU64);

impl LazyId {
    /// The identifier, assigning one if there is none.
    pub(crate) fn get(&self) -> u64 {
        let v = self.0.load(Ordering::Acquire);
        if v != 0 {
            return v;
        }
        let new = next_id();
        match self
            .0
            .compare_exchange(0, new, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => new,
            Err(current) => current,
        }
    }
}

/// How much IO address space a mapping of a descriptor would need
/// ([`MemoryDescriptor::dma_map_length`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMapLength {
    /// Bytes of whole pages.
    pub bytes: u64,
    /// Offset of the first byte in its page.
    pub offset: u64,
}

/// A cache-maintenance operation over a descriptor's memory
/// ([`MemoryDescriptor::perform_operation`]).
///
/// IOKit's `performOperation` takes an option word; here an operation that does not exist
/// cannot be expressed, so IOKit's kIOReturnUnsupported for an unknown one has no
/// counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryOperation {
    /// Write dirty lines back and drop them (IOKit kIOMemoryIncoherentIOFlush).
    Flush,
    /// Write dirty lines back, keep them cached (IOKit kIOMemoryIncoherentIOStore).
    Store,
    /// Drop the lines so the CPU sees what a device wrote. Lines the range only partly
    /// covers are written back first, so bytes outside the range are never lost (not in
    /// IOKit's `performOperation`).
    Invalidate,
    /// Drop every line touching the range without writing anything back, including the
    /// bytes of those lines outside the range (not in IOKit's `performOperation`).
    Discard,
}

/// How many bytes an operation over `[offset, offset + len)` of a descriptor of `length`
/// bytes walks: `min(len, length - offset)`. An offset past the end covers nothing of a
/// non-empty request, which is [`Error::Underrun`] (as in IOKit, whose walk then finds no
/// segment).
pub(crate) fn op_extent(offset: u64, len: u64, length: u64) -> Result<u64> {
    match length.checked_sub(offset) {
        Some(rest) => Ok(len.min(rest)),
        None if len == 0 => Ok(0),
        None => Err(Error::Underrun {
            what: "memory operation past the end of the descriptor",
            done: 0,
            requested: len,
        }),
    }
}

/// Runs `op` over consecutive parts of a composite descriptor: `pieces` yields (part,
/// offset in it, bytes). Stops at the first part that falls short and reports the bytes
/// covered in all.
pub(crate) fn op_over_parts<'a>(
    op: MemoryOperation,
    requested: u64,
    pieces: impl Iterator<Item = (&'a dyn MemoryDescriptor, u64, u64)>,
) -> Result<()> {
    let mut done = 0u64;
    for (part, offset, len) in pieces {
        match part.perform_operation(op, offset, len) {
            Ok(()) => done += len,
            Err(Error::Underrun { done: d, .. }) => {
                return Err(Error::Underrun {
                    what: "memory operation over a composite descriptor",
                    done: done + d,
                    requested,
                })
            }
            Err(e) => return Err(e),
        }
    }
    if done < requested {
        return Err(Error::Underrun {
            what: "memory operation over a composite descriptor",
            done,
            requested,
        });
    }
    Ok(())
}

/// Bytes of zeros [`MemoryDescriptor::fill_zero`] writes at a time.
const FILL_CHUNK: usize = 1024;

/// A physically contiguous run of a descriptor: where byte `offset` lives and how many bytes
/// follow it contiguously.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Physical address of the byte.
    pub addr: PhysAddr,
    /// Bytes physically contiguous from there (within the descriptor).
    pub len: u64,
}

/// One piece of the memory behind a descriptor range: `len` bytes at `addr` of `task`
/// (`None`: `addr` is physical).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The task whose virtual address `addr` is, or `None` for a physical address.
    pub task: Option<crate::platform::Task>,
    /// First byte.
    pub addr: u64,
    /// Length.
    pub len: u64,
}

/// IOKit's IOMemoryDescriptor.
///
/// Every kind of descriptor (buffer, general, sub, multi, interleaved) is used through
/// this trait, so code that moves bytes or hands memory to a device takes
/// `&dyn MemoryDescriptor` (or `Arc<dyn MemoryDescriptor>`, as a
/// [`DmaCommand`](crate::dma::DmaCommand) does) and works on all of them:
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor, SubMemoryDescriptor};
/// use dmakit::Direction;
/// use std::sync::Arc;
///
/// /// Sums every byte, copying through the descriptor.
/// fn byte_sum(md: &dyn MemoryDescriptor) -> u64 {
///     let mut sum = 0u64;
///     let mut chunk = [0u8; 256];
///     let mut at = 0;
///     while at < md.length() {
///         // All or nothing: ask only for what is left.
///         let want = chunk.len().min((md.length() - at) as usize);
///         let n = md.read_bytes(at, &mut chunk[..want]);
///         assert_eq!(n, want, "the memory failed partway");
///         sum += chunk[..n].iter().map(|&b| b as u64).sum::<u64>();
///         at += n as u64;
///     }
///     sum
/// }
///
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
/// let buf: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine, &[1u8; 1000], Direction::Out)?);
/// let window = SubMemoryDescriptor::new(buf.clone(), 100, 50, Direction::Out)?;
/// assert_eq!(byte_sum(&*buf), 1000);
/// assert_eq!(byte_sum(&window), 50);
/// # Ok::<(), dmakit::Error>(())
/// ```
pub trait MemoryDescriptor: Send + Sync {
    /// Total length in bytes.
    fn length(&self) -> u64;

    /// The direction the memory was described for.
    /// IOKit: `getDirection`.
    fn direction(&self) -> Direction;

    /// The platform page size.
    fn page_size(&self) -> PageSize;

    /// Wires the memory for `owner` (IOKit `prepare`). `Direction::None` means the
    /// descriptor's own direction; `Out` wires read-only. Counted per owner: each success
    /// needs one [`complete_for`](Self::complete_for) by the same owner, and the memory stays
    /// wired while any owner holds a preparation. Callers use
    /// [`prepare_wiring`](Self::prepare_wiring); composite descriptors forward `owner` to
    /// their parts.
    fn prepare_for(&self, owner: PrepOwner, dir: Direction) -> Result<()>;

    /// Ends one preparation of `owner` (IOKit `complete`); the memory is unwired when no
    /// owner holds one. Ending a preparation `owner` does not hold is
    /// [`Error::NotReady`] while a DMA command holds the memory (the command's preparation is
    /// the command's to end; the dma-debug ledger records the attempt), and a silent no-op
    /// when nobody does (IOKit's over-complete).
    fn complete_for(&self, owner: PrepOwner) -> Result<()>;

    /// Wires the memory for the caller (IOKit `prepare`); see
    /// [`prepare_for`](Self::prepare_for). Prefer the guard-returning `prepare` on
    /// `dyn MemoryDescriptor`.
    fn prepare_wiring(&self, dir: Direction) -> Result<()> {
        self.prepare_for(PrepOwner::CALLER, dir)
    }

    /// Ends one of the caller's preparations (IOKit `complete`); see
    /// [`complete_for`](Self::complete_for).
    fn complete(&self) -> Result<()> {
        self.complete_for(PrepOwner::CALLER)
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`; returns the count copied:
    /// `buf.len()`, or 0 with nothing copied when `[offset, offset + buf.len())` does not lie
    /// within the descriptor (all or nothing, as IOKit `readBytes` does; a short count
    /// means the memory failed partway). Direction is not checked.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
    /// use dmakit::Direction;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let md = BufferMemoryDescriptor::with_bytes(machine, b"0123456789", Direction::Out)?;
    /// let mut buf = [0u8; 4];
    /// assert_eq!(md.read_bytes(6, &mut buf), 4); // the last four bytes
    /// assert_eq!(&buf, b"6789");
    /// let mut long = [0xAAu8; 8];
    /// assert_eq!(md.read_bytes(6, &mut long), 0); // would run past the end: nothing
    /// assert_eq!(long, [0xAA; 8]);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    #[must_use = "the count says how many bytes were copied"]
    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize;

    /// Copies `data` to `offset`; returns the count copied: `data.len()`, or 0 with nothing
    /// written when `[offset, offset + data.len())` does not lie within the descriptor (all
    /// or nothing, as IOKit `writeBytes` does) or while the memory is prepared read-only.
    /// A short count means the memory failed partway.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::Direction;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let md = BufferMemoryDescriptor::new(machine, BufferOptions::new(16, Direction::In))?;
    /// assert_eq!(md.write_bytes(0, b"status: ok"), 10);
    /// assert_eq!(md.write_bytes(12, b"overlong"), 0); // would run past the end: nothing
    /// assert_eq!(md.write_bytes(12, b"over"), 4);
    /// let mut back = [0u8; 16];
    /// assert_eq!(md.read_bytes(0, &mut back), 16);
    /// assert_eq!(&back, b"status: ok\0\0over");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    #[must_use = "the count says how many bytes were copied (0 while prepared read-only)"]
    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize;

    /// Where byte `offset` lives physically, and the length of the contiguous run from there.
    /// Virtual memory must be prepared ([`Error::NotReady`] otherwise; IOKit panics); an
    /// offset at or past the end is [`Error::OutOfBounds`] (IOKit returns address 0 and
    /// length 0). Physical address 0 is an address like any other here (IOKit's 0 means
    /// "no segment", so it cannot walk memory at physical address 0).
    /// IOKit: `getPhysicalSegment`, `getPhysicalAddress`.
    ///
    /// Walking a descriptor's physical runs:
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::{Direction, Error};
    /// // Every page of a buffer anywhere in RAM.
    /// let machine = std::sync::Arc::new(
    ///     dmakit_sim::MachineBuilder::new().seed(2).fragmentation(1.0).build()?,
    /// );
    /// let md = BufferMemoryDescriptor::new(machine, BufferOptions::new(0x4000, Direction::Out))?;
    /// let mut runs = Vec::new();
    /// let mut at = 0;
    /// while at < md.length() {
    ///     let seg = md.physical_segment(at)?;
    ///     runs.push(seg);
    ///     at += seg.len;
    /// }
    /// assert!(runs.len() > 1, "scattered");
    /// assert_eq!(runs.iter().map(|s| s.len).sum::<u64>(), 0x4000);
    /// assert!(matches!(md.physical_segment(0x4000), Err(Error::OutOfBounds { .. })));
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    fn physical_segment(&self, offset: u64) -> Result<Segment>;

    /// The physical run at `offset` as a preparation made earlier sees it: the same as
    /// [`physical_segment`](Self::physical_segment) (the default), except that a
    /// [`BufferMemoryDescriptor`] whose length was set below a range prepared before
    /// still answers for its memory up to its capacity (directly, or through sub, multi
    /// and interleaved descriptors over it). A DMA command uses it after `prepare`, so
    /// the cache maintenance and segments of a transfer cover the memory the device was
    /// given even when the buffer's length shrinks in the meantime.
    fn prepared_segment(&self, offset: u64) -> Result<Segment> {
        self.physical_segment(offset)
    }

    /// Calls `f` with the memory behind `[offset, offset + len)`, piece by piece in order
    /// (what a mapping of the range maps). A range outside the descriptor is
    /// [`Error::OutOfBounds`].
    fn sources(&self, offset: u64, len: u64, f: &mut dyn FnMut(Source)) -> Result<()>;

    /// The registry of this descriptor's live mappings, through which
    /// [`MemoryMap::new`](crate::map::MemoryMap::new) shares a compatible mapping instead
    /// of making another (IOKit keeps a descriptor's mappings in its `_mappings` set). The
    /// default, `None`, never shares. Every descriptor of this crate has one.
    fn map_registry(&self) -> Option<&crate::map::MapRegistry> {
        None
    }

    /// The descriptor whose mappings this one's are, and this one's offset in it. A
    /// [`SubMemoryDescriptor`] maps through its parent, as IOKit's does: its mapping is a
    /// mapping of the parent's range (made or shared through the parent's
    /// [`map_registry`](Self::map_registry)), whose
    /// [`descriptor`](crate::map::MemoryMap::descriptor) is the parent and whose
    /// [`offset`](crate::map::MemoryMap::offset) is in the parent. The default, `None`,
    /// maps the descriptor itself.
    fn map_through(&self) -> Option<(alloc_crate::sync::Arc<dyn MemoryDescriptor>, u64)> {
        None
    }

    /// Writes `len` zero bytes at `offset` (IOKit `writeBytes` with a NULL buffer) and
    /// returns the count written.
    ///
    /// All or nothing at the bounds, as IOKit's zero-fill (and like
    /// [`write_bytes`](Self::write_bytes)): a range that overflows or runs past the end
    /// writes nothing and returns 0. Like `write_bytes`, memory prepared read-only (for
    /// `Out`) is refused: 0. The default writes through `write_bytes` a chunk at a time and stops
    /// at the first chunk that falls short.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
    /// use dmakit::Direction;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let md = BufferMemoryDescriptor::with_bytes(machine, &[0xFF; 8], Direction::InOut)?;
    /// assert_eq!(md.fill_zero(2, 4), 4);
    /// assert_eq!(md.fill_zero(6, 4), 0, "past the end: nothing written");
    /// let mut back = [0u8; 8];
    /// assert_eq!(md.read_bytes(0, &mut back), 8);
    /// assert_eq!(back, [0xFF, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF]);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    fn fill_zero(&self, offset: u64, len: u64) -> u64 {
        if !within(offset, len, self.length()) {
            return 0;
        }
        let zeros = [0u8; FILL_CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(FILL_CHUNK as u64) as usize;
            let got = self.write_bytes(offset + done, &zeros[..n]);
            done += got as u64;
            if got < n {
                break;
            }
        }
        done
    }

    /// The IO address space a mapping of the whole descriptor would need (IOKit
    /// `getDMAMapLength`): over the memory behind it ([`sources`](Self::sources)), runs
    /// that continue one another coalesced, the sum of each run's whole pages; and the
    /// offset of the first byte in its page. A descriptor with no memory behind it (zero
    /// length) reports its length and offset 0. A run whose last page ends past the
    /// address space is [`Error::Overflow`].
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, DmaMapLength};
    /// use dmakit::descriptor::{MemoryDescriptor, SubMemoryDescriptor};
    /// use dmakit::Direction;
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let buf = Arc::new(BufferMemoryDescriptor::new(machine, BufferOptions::new(0x3000, Direction::Out))?);
    /// // 0x1000 bytes from 0x800: half of one page, half of the next.
    /// let window = SubMemoryDescriptor::new(buf, 0x800, 0x1000, Direction::Out)?;
    /// assert_eq!(window.dma_map_length()?, DmaMapLength { bytes: 0x2000, offset: 0x800 });
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    fn dma_map_length(&self) -> Result<DmaMapLength> {
        let page = self.page_size();
        let mut run: Option<Source> = None;
        let mut first: Option<u64> = None;
        let mut bytes = 0u64;
        let mut failed: Option<Error> = None;
        let add = |r: Source, bytes: &mut u64| -> Result<()> {
            let end = r
                .addr
                .checked_add(r.len)
                .and_then(|e| page.round_up(e))
                .ok_or(Error::Overflow {
                    what: "DMA map length: a run's last page",
                    start: r.addr,
                    len: r.len,
                })?;
            *bytes = bytes
                .checked_add(end - page.trunc(r.addr))
                .ok_or(Error::Overflow {
                    what: "DMA map length",
                    start: *bytes,
                    len: r.len,
                })?;
            Ok(())
        };
        self.sources(0, self.length(), &mut |s| {
            if s.len == 0 || failed.is_some() {
                return;
            }
            first.get_or_insert(page.offset(s.addr));
            match run.as_mut() {
                Some(r) if r.task == s.task && r.addr.checked_add(r.len) == Some(s.addr) => {
                    r.len += s.len;
                }
                _ => {
                    if let Some(done) = run.replace(s) {
                        if let Err(e) = add(done, &mut bytes) {
                            failed = Some(e);
                        }
                    }
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        match (run, first) {
            (Some(r), Some(offset)) => {
                add(r, &mut bytes)?;
                Ok(DmaMapLength { bytes, offset })
            }
            _ => Ok(DmaMapLength {
                bytes: self.length(),
                offset: 0,
            }),
        }
    }

    /// The identifier of the current preparation (IOKit `getPreparationID`):
    /// [`PREPARATION_ID_UNPREPARED`] while not prepared; otherwise a unique value of at
    /// least [`FIRST_ID`] that stays the same until the preparation ends, so a driver can
    /// tell whether memory was re-prepared (and its segments may have moved) since it last
    /// looked. The default, for descriptors that do not track it, is
    /// [`PREPARATION_ID_UNSUPPORTED`].
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::descriptor::{FIRST_ID, PREPARATION_ID_UNPREPARED};
    /// use dmakit::Direction;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let options = BufferOptions::new(0x1000, Direction::In).pageable(true);
    /// let md = BufferMemoryDescriptor::new(machine, options)?;
    /// assert_eq!(md.preparation_id(), PREPARATION_ID_UNPREPARED);
    /// md.prepare_wiring(Direction::In)?;
    /// let first = md.preparation_id();
    /// assert!(first >= FIRST_ID);
    /// md.complete()?;
    /// md.prepare_wiring(Direction::In)?;
    /// assert_ne!(md.preparation_id(), first, "prepared again: the pages may have moved");
    /// md.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    fn preparation_id(&self) -> u64 {
        PREPARATION_ID_UNSUPPORTED
    }

    /// A unique identifier of this descriptor (IOKit `getDescriptorID`), at least
    /// [`FIRST_ID`], assigned on first query and never changed. The default, for
    /// descriptors without one, is 0 (IOKit's kIODescriptorIDInvalid).
    fn descriptor_id(&self) -> u64 {
        0
    }

    /// Cache maintenance over `[offset, offset + len)` (IOKit `performOperation`): `op`
    /// applied to the platform's CPU cache ([`CacheOps`](crate::platform::CacheOps)) over
    /// each physical segment of the range, `len` clipped to the end of the descriptor.
    ///
    /// An offset past the end of a non-empty request is [`Error::Underrun`], on any
    /// platform (IOKit's walk finds no segment there, but on a cache-coherent platform it
    /// returns success before looking). Otherwise, on a DMA-coherent platform there is
    /// nothing to do: `Ok` at once, as in IOKit. Else, if a segment cannot be found
    /// (virtual memory that is not prepared, memory the platform cannot maintain) the walk
    /// stops there: `Underrun` with the bytes covered. The default, for descriptors that
    /// cannot reach a platform, is [`Error::Unsupported`].
    fn perform_operation(&self, op: MemoryOperation, offset: u64, len: u64) -> Result<()> {
        let _ = (op, offset, len);
        Err(Error::Unsupported {
            what: "memory operations on this descriptor",
        })
    }

    /// Changes the purgeable state of the memory behind the descriptor and returns the
    /// state it had (IOKit `setPurgeable`); the worst state of any part, with
    /// [`PurgeableState`]'s order (Empty, then Volatile, then NonVolatile).
    ///
    /// Physical memory has no purgeable state: [`Error::Unsupported`]. Prepared (wired)
    /// memory cannot be made volatile or emptied: [`Error::Busy`]. The default is
    /// `Unsupported`.
    fn set_purgeable(&self, req: PurgeableRequest) -> Result<PurgeableState> {
        let _ = req;
        Err(Error::Unsupported {
            what: "purgeable state of this descriptor",
        })
    }

    /// Whether this is pageable buffer memory (IOKit's kIOMemoryBufferPageable option):
    /// a pageable [`BufferMemoryDescriptor`], or a composite of such. The parts of a
    /// [`MultiMemoryDescriptor`] must agree on it. Default: `false`.
    fn pageable_buffer(&self) -> bool {
        false
    }

    /// The task a [`BufferMemoryDescriptor`] allocated its memory in (IOKit: the task an
    /// IOBufferMemoryDescriptor was created for); `None` for every other kind of
    /// descriptor, composites and sub-ranges of buffers included (the default). DriverKit's
    /// `CreateMapping` exempts only a buffer the mapping task created from its read-only
    /// rule for `Out` memory (see
    /// [`DkMemoryDescriptor::create_mapping`](crate::driverkit::DkMemoryDescriptor::create_mapping)).
    fn buffer_task(&self) -> Option<crate::platform::Task> {
        None
    }

    /// Calls `f` with the *leaf* descriptors (the ones that copy bytes themselves) behind
    /// `[offset, offset + len)`, each with the range in its own offsets. Composite
    /// descriptors forward to their parts; the default treats `self` as a leaf. The
    /// dma-debug ledger uses it to see a CPU copy through any descriptor over memory a
    /// device owns. A range past the end is clamped.
    fn leaves(&self, offset: u64, len: u64, f: &mut dyn FnMut(LeafRange)) {
        let end = offset.saturating_add(len).min(self.length());
        if offset < end {
            f(LeafRange {
                id: leaf_id(self),
                offset,
                len: end - offset,
            });
        }
    }
}

/// A range of a leaf descriptor (see [`MemoryDescriptor::leaves`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafRange {
    /// The leaf's identity (its address; stable while it is shared or borrowed).
    pub id: usize,
    /// First byte, in the leaf's offsets.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// The identity of a descriptor for [`LeafRange::id`].
pub fn leaf_id<T: ?Sized>(md: &T) -> usize {
    md as *const T as *const u8 as usize
}

impl dyn MemoryDescriptor + '_ {
    /// Wires the memory and returns a guard that balances it on
    /// [`complete`](Prepared::complete) or drop.
    ///
    /// Preparations nest, and only the first wires: a driver that sends the same pageable
    /// buffer to its device again and again holds one long-lived preparation (IOKit's
    /// pattern) so each `DmaCommand` prepare and complete in between only counts, instead
    /// of wiring and unwiring the pages every time (on the Linux host 34 ns instead of about
    /// 1.5 µs per round trip for 4 KiB, the bench's `prepare/*` rows).
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::{Direction, Error};
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// // Pageable memory has no physical pages until it is wired.
    /// let options = BufferOptions::new(0x2000, Direction::In).pageable(true);
    /// let buf = BufferMemoryDescriptor::new(machine, options)?;
    /// let md: &dyn MemoryDescriptor = &buf;
    /// assert!(matches!(md.physical_segment(0), Err(Error::NotReady { .. })));
    /// {
    ///     let _wired = md.prepare(Direction::In)?;
    ///     assert!(md.physical_segment(0).is_ok());
    /// } // dropping the guard completes
    /// assert!(!buf.is_prepared());
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn prepare(&self, dir: Direction) -> Result<Prepared<'_>> {
        self.prepare_wiring(dir)?;
        Ok(Prepared {
            md: self,
            done: false,
        })
    }
}

/// A balanced `prepare`: completing (or dropping) it drops the wiring it took.
#[must_use = "dropping the guard completes the preparation at once"]
pub struct Prepared<'a> {
    md: &'a dyn MemoryDescriptor,
    done: bool,
}

impl Prepared<'_> {
    /// The prepared descriptor.
    pub fn descriptor(&self) -> &dyn MemoryDescriptor {
        self.md
    }

    /// Completes the preparation.
    pub fn complete(mut self) -> Result<()> {
        self.done = true;
        self.md.complete()
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Unwiring cannot fail for memory this guard wired; if the platform refuses,
            // the memory stays wired, which is the safe outcome.
            let _ = self.md.complete();
        }
    }
}

impl core::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Prepared")
            .field("length", &self.md.length())
            .finish()
    }
}

/// The count a descriptor's `read_bytes`/`write_bytes` copies: all of `len` when
/// `[offset, offset + len)` lies within `length`, else nothing (IOKit's rule).
pub(crate) fn whole_or_nothing(offset: u64, len: usize, length: u64) -> usize {
    if within(offset, len as u64, length) {
        len
    } else {
        0
    }
}

/// Whether `[offset, offset + len)` lies within `[0, length)` (without overflowing).
fn within(offset: u64, len: u64, length: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= length)
}

/// `[offset, offset + len)` clamped to a preparation of `length` bytes: the count a DMA
/// command's copy takes (IOKit's `IODMACommand` copies clamp at the end).
pub(crate) fn clamp(offset: u64, len: usize, length: u64) -> usize {
    if offset >= length {
        0
    } else {
        (len as u64).min(length - offset) as usize
    }
}

/// Checks that `[offset, offset + len)` lies within `length` ([`Error::OutOfBounds`]
/// naming `what` otherwise).
pub fn check_range(what: &'static str, offset: u64, len: u64, length: u64) -> Result<()> {
    if within(offset, len, length) {
        Ok(())
    } else {
        Err(Error::OutOfBounds {
            what,
            offset,
            len,
            limit: length,
        })
    }
}

/// The error for an offset at or past the end.
pub(crate) fn past_end(what: &'static str, offset: u64, length: u64) -> Error {
    Error::OutOfBounds {
        what,
        offset,
        len: 1,
        limit: length,
    }
}
