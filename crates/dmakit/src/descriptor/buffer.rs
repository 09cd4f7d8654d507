//! [`BufferMemoryDescriptor`]: a descriptor that allocates and owns its buffer (IOKit's
//! IOBufferMemoryDescriptor).
//!
//! The buffer has a *capacity* fixed at creation and a *length* (initially the capacity)
//! that [`set_length`](BufferMemoryDescriptor::set_length) and
//! [`append_bytes`](BufferMemoryDescriptor::append_bytes) move within it. Physical
//! constraints (alignment, a highest physical address, contiguity) are honoured by the
//! allocation itself. Wired buffers are prepared for their whole life, as in IOKit, so
//! their physical segments are always available; pageable ones must be prepared.

use super::general::GeneralMemoryDescriptor;
use super::{check_range, Holders, MemoryDescriptor, PrepOwner, Segment, Source};
use crate::platform::{PageRequest, Platform, Task};
use crate::{Direction, Error, PageSize, Result, VirtAddr};
use alloc_crate::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

/// How to allocate a [`BufferMemoryDescriptor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferOptions {
    /// Bytes of capacity (not zero).
    pub capacity: u64,
    /// The direction.
    pub direction: Direction,
    /// Alignment of the buffer (a power of two; 0 or 1 for none). Above a page it implies
    /// physical contiguity, as in IOKit.
    pub alignment: u64,
    /// Highest physical address any byte may have (`u64::MAX`: none); IOKit's physical mask
    /// `0xFFFF_FFFF` is a limit of `0xFFFF_FFFF`.
    pub phys_limit: u64,
    /// One physically contiguous run (kIOMemoryPhysicallyContiguous).
    pub contiguous: bool,
    /// Pageable rather than wired (kIOMemoryPageable).
    pub pageable: bool,
}

impl BufferOptions {
    /// A wired buffer of `capacity` bytes for `direction`, no constraints.
    pub const fn new(capacity: u64, direction: Direction) -> Self {
        BufferOptions {
            capacity,
            direction,
            alignment: 0,
            phys_limit: u64::MAX,
            contiguous: false,
            pageable: false,
        }
    }
}

/// A buffer the descriptor owns.
///
/// # Invariants
///
/// `inner` describes exactly the allocation `[va, va + alloc_len)` of the kernel task;
/// `length <= capacity <= alloc_len`. A wired buffer holds one preparation of `inner` from
/// creation to drop.
pub struct BufferMemoryDescriptor<P: Platform + Clone> {
    inner: GeneralMemoryDescriptor<P>,
    va: VirtAddr,
    alloc_len: u64,
    capacity: u64,
    length: AtomicU64,
    options: BufferOptions,
}

impl<P: Platform + Clone> BufferMemoryDescriptor<P> {
    /// Allocates a buffer on `platform` (IOKit `inTaskWithPhysicalMask` /
    /// `withOptions`).
    pub fn new(platform: P, options: BufferOptions) -> Result<Self> {
        if options.capacity == 0 {
            return Err(Error::ZeroSize {
                what: "buffer capacity",
            });
        }
        if options.alignment > 1 && !options.alignment.is_power_of_two() {
            return Err(Error::BadAlignment {
                what: "buffer alignment",
                align: options.alignment,
            });
        }
        if options.pageable && (options.contiguous || options.phys_limit != u64::MAX) {
            return Err(Error::BadArgument {
                what: "a pageable buffer cannot have physical constraints",
                value: options.capacity,
            });
        }
        let page = platform.page_size();
        let alloc_len = page.round_up(options.capacity).ok_or(Error::Overflow {
            what: "buffer capacity",
            start: 0,
            len: options.capacity,
        })?;
        let req = PageRequest {
            align: options.alignment,
            phys_limit: options.phys_limit,
            // An alignment above a page implies contiguity (IOKit).
            contiguous: options.contiguous || options.alignment > page.bytes(),
            pageable: options.pageable,
        };
        let va = platform.allocate_pages(alloc_len, &req)?;
        let inner = match GeneralMemoryDescriptor::with_address_range(
            platform.clone(),
            Task::KERNEL,
            va,
            alloc_len,
            options.direction,
        ) {
            Ok(d) => d,
            Err(e) => {
                let _ = platform.free_pages(va, alloc_len);
                return Err(e);
            }
        };
        if !options.pageable {
            if let Err(e) = inner.prepare_for(PrepOwner::BUFFER, Direction::InOut) {
                drop(inner);
                let _ = platform.free_pages(va, alloc_len);
                return Err(e);
            }
        }
        Ok(BufferMemoryDescriptor {
            inner,
            va,
            alloc_len,
            capacity: options.capacity,
            length: AtomicU64::new(options.capacity),
            options,
        })
    }

    /// A wired buffer holding a copy of `bytes` (IOKit `withBytes`).
    pub fn with_bytes(platform: P, bytes: &[u8], direction: Direction) -> Result<Self> {
        let b = Self::new(platform, BufferOptions::new(bytes.len() as u64, direction))?;
        b.set_length(0)?;
        b.append_bytes(bytes);
        Ok(b)
    }

    /// Who holds the buffer's preparations (a wired buffer's own life-long wiring
    /// included).
    pub fn holders(&self) -> Holders {
        self.inner.holders()
    }

    /// The capacity given at creation.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The kernel virtual address of the buffer.
    pub fn address(&self) -> VirtAddr {
        self.va
    }

    /// Maps the buffer on its own platform (IOKit `map` / `createMappingInTask`), sharing a
    /// compatible live mapping as IOKit does; see [`MemoryMap`](crate::map::MemoryMap).
    /// Mapped whole, anywhere, into the kernel task, the mapping is the buffer's own
    /// [`address`](Self::address) (static: nothing new is mapped). The mapping holds the
    /// buffer alive.
    pub fn map(
        self: &Arc<Self>,
        options: crate::map::MapOptions,
    ) -> Result<crate::map::MemoryMap<P>>
    where
        P: 'static,
    {
        crate::map::MemoryMap::new(self.inner.platform().clone(), self.clone(), options)
    }

    /// The options it was made with.
    pub fn options(&self) -> BufferOptions {
        self.options
    }

    /// Sets the length. A length above the capacity is [`Error::OutOfBounds`] and changes
    /// nothing (IOKit silently ignores it; see DESIGN.md).
    pub fn set_length(&self, length: u64) -> Result<()> {
        if length > self.capacity {
            return Err(Error::OutOfBounds {
                what: "buffer length beyond capacity",
                offset: 0,
                len: length,
                limit: self.capacity,
            });
        }
        self.length.store(length, Ordering::Release);
        Ok(())
    }

    /// Appends as much of `data` as fits before the capacity; returns how many bytes were
    /// appended (IOKit returns true even when it truncates).
    pub fn append_bytes(&self, data: &[u8]) -> usize {
        let len = self.length.load(Ordering::Acquire);
        let n = ((self.capacity - len) as usize).min(data.len());
        let done = self.inner.write_bytes(len, &data[..n]);
        self.length.store(len + done as u64, Ordering::Release);
        done
    }

    /// Copies `buf.len()` bytes from `offset` (within the length) into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        self.inner
            .platform()
            .read_virt(Task::KERNEL, VirtAddr(self.va.0 + offset), buf)
    }

    /// Copies `data` to `offset` (within the length).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        if self.write_bytes(offset, data) != data.len() {
            return Err(Error::NotWritable {
                what: "buffer prepared read-only",
                addr: self.va.0 + offset,
            });
        }
        Ok(())
    }

    fn check(&self, offset: u64, n: usize) -> Result<()> {
        let length = self.length();
        match offset.checked_add(n as u64) {
            Some(end) if end <= length => Ok(()),
            _ => Err(Error::OutOfBounds {
                what: "buffer",
                offset,
                len: n as u64,
                limit: length,
            }),
        }
    }
}

impl<P: Platform + Clone> MemoryDescriptor for BufferMemoryDescriptor<P> {
    fn map_registry(&self) -> Option<&crate::map::MapRegistry> {
        self.inner.map_registry()
    }

    fn length(&self) -> u64 {
        self.length.load(Ordering::Acquire)
    }

    fn direction(&self) -> Direction {
        self.options.direction
    }

    fn page_size(&self) -> PageSize {
        self.inner.page_size()
    }

    fn prepare_for(&self, owner: PrepOwner, dir: Direction) -> Result<()> {
        self.inner.prepare_for(owner, dir)
    }

    /// The preparation a wired buffer holds for its whole life has an owner of its own, so
    /// no `complete` ends it.
    fn complete_for(&self, owner: PrepOwner) -> Result<()> {
        self.inner.complete_for(owner)
    }

    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        let n = super::clamp(offset, buf.len(), self.length());
        self.inner.read_bytes(offset, &mut buf[..n])
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        let n = super::clamp(offset, data.len(), self.length());
        self.inner.write_bytes(offset, &data[..n])
    }

    fn physical_segment(&self, offset: u64) -> Result<Segment> {
        let length = self.length();
        if offset >= length {
            return Err(super::past_end("buffer", offset, length));
        }
        let s = self.inner.physical_segment(offset)?;
        Ok(Segment {
            addr: s.addr,
            len: s.len.min(length - offset),
        })
    }

    fn leaves(&self, offset: u64, len: u64, f: &mut dyn FnMut(super::LeafRange)) {
        let end = offset.saturating_add(len).min(self.length());
        if offset < end {
            self.inner.leaves(offset, end - offset, f);
        }
    }

    fn sources(&self, offset: u64, len: u64, f: &mut dyn FnMut(Source)) -> Result<()> {
        check_range("buffer", offset, len, self.length())?;
        self.inner.sources(offset, len, f)
    }
}

impl<P: Platform + Clone> Drop for BufferMemoryDescriptor<P> {
    fn drop(&mut self) {
        // Nothing else can hold a preparation now (a DMA command holds the buffer itself).
        self.inner.complete_all();
        // Refused while someone else still wires the pages (a device may reach them): the
        // buffer is then leaked rather than freed under the device.
        let _ = self.inner.platform().free_pages(self.va, self.alloc_len);
    }
}

impl<P: Platform + Clone> core::fmt::Debug for BufferMemoryDescriptor<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BufferMemoryDescriptor")
            .field("address", &self.va)
            .field("capacity", &self.capacity)
            .field("length", &self.length())
            .field("options", &self.options)
            .finish()
    }
}
