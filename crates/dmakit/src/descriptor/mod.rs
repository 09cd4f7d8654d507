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
//! # fn demo<P: dmakit::platform::Platform + Clone + 'static>(machine: P) -> dmakit::Result<()> {
//! let buf = BufferMemoryDescriptor::new(machine, BufferOptions::new(8192, Direction::Out))?;
//! assert_eq!(buf.write_bytes(4090, b"crosses a page"), 14);
//! let md: &dyn MemoryDescriptor = &buf;
//! let prepared = md.prepare(Direction::Out)?;
//! let seg = md.physical_segment(4096)?;          // where byte 4096 lives
//! assert!(seg.len >= 1);
//! prepared.complete()?;
//! # Ok(()) }
//! ```

mod buffer;
mod device;
mod general;
mod holders;
mod interleaved;
mod multi;
mod sub;

pub use buffer::{BufferMemoryDescriptor, BufferOptions};
pub use device::{device_memory, device_sub_range, DeviceMemory};
pub use general::GeneralMemoryDescriptor;
pub(crate) use holders::Removed;
pub use holders::{Holders, PrepOwner};

pub use interleaved::InterleavedMemoryDescriptor;
pub use multi::MultiMemoryDescriptor;
pub use sub::SubMemoryDescriptor;

use crate::{Direction, Error, PageSize, PhysAddr, Result};

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
pub trait MemoryDescriptor: Send + Sync {
    /// Total length in bytes.
    fn length(&self) -> u64;

    /// The direction the memory was described for.
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

    /// Copies up to `buf.len()` bytes from `offset`, stopping at the end of the descriptor;
    /// returns the count copied (0 for an offset at or past the end). IOKit `readBytes`.
    #[must_use = "the count says how many bytes were copied"]
    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize;

    /// Copies up to `data.len()` bytes to `offset`, stopping at the end of the descriptor;
    /// returns the count copied (0 for an offset at or past the end, or while the memory is
    /// prepared read-only). IOKit `writeBytes`.
    #[must_use = "the count says how many bytes were copied (0 while prepared read-only)"]
    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize;

    /// Where byte `offset` lives physically, and the length of the contiguous run from there.
    /// Virtual memory must be prepared ([`Error::NotReady`] otherwise); an offset at or past
    /// the end is [`Error::OutOfBounds`].
    fn physical_segment(&self, offset: u64) -> Result<Segment>;

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

/// `[offset, offset + len)` clamped to a descriptor of `length` bytes: the count to copy.
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
    match offset.checked_add(len) {
        Some(end) if end <= length => Ok(()),
        _ => Err(Error::OutOfBounds {
            what,
            offset,
            len,
            limit: length,
        }),
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
