//! [`BufferMemoryDescriptor`]: a descriptor that allocates and owns its buffer (IOKit's
//! IOBufferMemoryDescriptor).
//!
//! The buffer has a *capacity* fixed at creation and a *length* (initially the capacity)
//! that [`set_length`](BufferMemoryDescriptor::set_length) and
//! [`append_bytes`](BufferMemoryDescriptor::append_bytes) move within it. Physical
//! constraints (alignment, a highest physical address, contiguity) are honoured by the
//! allocation itself. Wired buffers are prepared for their whole life, as in IOKit, so
//! their physical segments are always available; pageable ones must be prepared.
//!
//! ## Borrowing the bytes
//!
//! [`bytes_no_copy`](BufferMemoryDescriptor::bytes_no_copy) and
//! [`bytes_no_copy_mut`](BufferMemoryDescriptor::bytes_no_copy_mut) lend the buffer's bytes
//! as a Rust slice, on platforms that can
//! ([`CpuAccess::direct_slice`](crate::platform::CpuAccess::direct_slice)). A lend and a
//! preparation for a device exclude each other: the mutable slice borrows the descriptor
//! mutably, so nothing can prepare it while the slice lives; the shared slice is refused
//! while the buffer is prepared, and a prepare is refused ([`Error::Busy`]) while a shared
//! slice is out.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
//! use dmakit::Direction;
//! // A simulated machine; any `Platform` that can lend its memory does.
//! let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//! let mut buf = BufferMemoryDescriptor::new(machine, BufferOptions::new(4096, Direction::Out))?;
//! buf.bytes_no_copy_mut(0, 4)?.copy_from_slice(b"ping");
//! assert_eq!(&buf.bytes_no_copy(0, 4)?[..], b"ping");
//! let md: &dyn MemoryDescriptor = &buf;
//! let prepared = md.prepare(Direction::Out)?; // no slice is lent now
//! assert!(buf.bytes_no_copy(0, 4).is_err()); // and none while a device may use it
//! prepared.complete()?;
//! assert_eq!(&buf.bytes_no_copy(0, 4)?[..], b"ping");
//! # Ok::<(), dmakit::Error>(())
//! ```

use super::general::GeneralMemoryDescriptor;
use super::{
    check_range, op_extent, Holders, MemoryDescriptor, MemoryOperation, PrepOwner,
    PurgeableRequest, PurgeableState, Segment, Source,
};
use crate::platform::{DirectSlice, DirectSliceMut, PageRequest, Platform, Task};
use crate::{Direction, Error, PageSize, Result, VirtAddr};
use alloc_crate::boxed::Box;
use alloc_crate::sync::Arc;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// How to allocate a [`BufferMemoryDescriptor`] (IOKit's option word and the alignment and
/// physical mask of `inTaskWithPhysicalMask`), built from [`new`](Self::new) or, with a
/// device's limits stated once, [`for_spec`](Self::for_spec):
///
/// ```
/// use dmakit::descriptor::BufferOptions;
/// use dmakit::dma::SegmentSpec;
/// use dmakit::Direction;
///
/// let spec = SegmentSpec::builder().address_bits(32).alignment(64).max_segments(1).build()?;
/// let o = BufferOptions::for_spec(4096, Direction::In, &spec);
/// assert_eq!((o.phys_limit, o.alignment, o.contiguous), (0xFFFF_FFFF, 64, true));
/// let p = BufferOptions::new(8192, Direction::Out).pageable(true);
/// assert!(p.pageable && !p.contiguous);
/// # Ok::<(), dmakit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Lowest physical address any byte may have (0: none); dmakit's addition for devices
    /// whose window does not start at 0.
    pub phys_min: u64,
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
            phys_min: 0,
            contiguous: false,
            pageable: false,
        }
    }

    /// A wired buffer that a device with `spec` reaches without bouncing: below the
    /// spec's highest address, aligned to its start alignment, and physically contiguous
    /// when the spec allows one segment only. (A window's lower bound and segment-size
    /// limits are left to the DMA command.)
    pub fn for_spec(capacity: u64, direction: Direction, spec: &crate::dma::SegmentSpec) -> Self {
        let mut o = Self::new(capacity, direction)
            .phys_limit(spec.max_address())
            .alignment(spec.alignment());
        if spec.max_segments() == 1 {
            o.contiguous = true;
        }
        o
    }

    /// The buffer's alignment (a power of two; 0 or 1 for none).
    #[must_use]
    pub const fn alignment(mut self, alignment: u64) -> Self {
        self.alignment = alignment;
        self
    }

    /// The highest physical address any byte may have (IOKit's physical mask).
    #[must_use]
    pub const fn phys_limit(mut self, limit: u64) -> Self {
        self.phys_limit = limit;
        self
    }

    /// The lowest physical address any byte may have (a device window's floor).
    #[must_use]
    pub const fn phys_min(mut self, floor: u64) -> Self {
        self.phys_min = floor;
        self
    }

    /// One physically contiguous run (kIOMemoryPhysicallyContiguous).
    #[must_use]
    pub const fn contiguous(mut self, on: bool) -> Self {
        self.contiguous = on;
        self
    }

    /// Pageable rather than wired (kIOMemoryPageable).
    #[must_use]
    pub const fn pageable(mut self, on: bool) -> Self {
        self.pageable = on;
        self
    }
}

/// A buffer the descriptor owns.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
/// use dmakit::Direction;
/// let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// // A receive buffer: 1500 bytes of capacity; the length says how much is filled.
/// let rx = BufferMemoryDescriptor::new(machine, BufferOptions::new(1500, Direction::In))?;
/// assert_eq!((rx.capacity(), rx.length()), (1500, 1500));
/// rx.set_length(0)?;
/// assert_eq!(rx.append_bytes(b"frame"), 5);
/// assert_eq!(rx.length(), 5);
/// let mut frame = [0u8; 5];
/// rx.read(0, &mut frame)?;
/// assert_eq!(&frame, b"frame");
/// // Wired for its whole life: its physical pages are always known.
/// assert!(rx.physical_segment(0)?.len >= 5);
/// # Ok::<(), dmakit::Error>(())
/// ```
///
/// # Invariants
///
/// `inner` describes exactly the allocation `[va, va + alloc_len)` of `task`;
/// `length <= capacity <= alloc_len`. A wired buffer holds one preparation of `inner` from
/// creation to drop. `length` changes only under `append`. `lends` counts the shared
/// slices lent out; it is checked and changed only under its lock, and a preparation is
/// made only under it too, so a lent slice and a preparation never coexist.
pub struct BufferMemoryDescriptor<P: Platform + Clone> {
    inner: GeneralMemoryDescriptor<P>,
    task: Task,
    va: VirtAddr,
    alloc_len: u64,
    capacity: u64,
    length: AtomicU64,
    /// The direction's bits (settable, as IOKit's `setDirection`).
    direction: AtomicU32,
    append: crate::sync::Mutex<()>,
    lends: crate::sync::Mutex<u32>,
    options: BufferOptions,
}

impl<P: Platform + Clone> BufferMemoryDescriptor<P> {
    /// Allocates a buffer on `platform` in the kernel task (IOKit `inTaskWithPhysicalMask`
    /// / `withOptions`).
    ///
    /// The options' physical constraints are met by the allocation itself:
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::Direction;
    /// // RAM above 4 GiB too, every page anywhere.
    /// let machine = std::sync::Arc::new(
    ///     dmakit_sim::MachineBuilder::new().seed(1).fragmentation(1.0).build()?,
    /// );
    ///
    /// // One physically contiguous run below 4 GiB, for a simple 32-bit device.
    /// let options = BufferOptions::new(0x4000, Direction::In)
    ///     .contiguous(true)
    ///     .phys_limit(0xFFFF_FFFF);
    /// let buf = BufferMemoryDescriptor::new(machine, options)?;
    /// let run = buf.physical_segment(0)?;
    /// assert_eq!(run.len, 0x4000);
    /// assert!(run.addr.0 + run.len <= 1 << 32);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    ///
    /// Errors: a capacity of 0 ([`Error::ZeroSize`]; IOKit fails too); an alignment that is
    /// not a power of two ([`Error::BadAlignment`]); a pageable buffer that asks to be
    /// contiguous or below a physical limit ([`Error::BadArgument`]: IOKit ignores those
    /// for pageable memory, whose pages are only chosen when it is prepared, so the buffer
    /// would silently not have them); a capacity whose page-rounded size overflows
    /// ([`Error::Overflow`]); and whatever the platform refuses.
    pub fn new(platform: P, options: BufferOptions) -> Result<Self> {
        Self::in_task(platform, Task::KERNEL, options)
    }

    /// Allocates a buffer in `task`'s address space (IOKit `inTaskWithOptions`). A task
    /// other than the kernel's needs a pageable buffer ([`Error::BadArgument`] otherwise,
    /// as IOKit refuses), and a platform that can allocate there
    /// ([`PhysicalMemory::allocate_pages_in`](crate::platform::PhysicalMemory::allocate_pages_in);
    /// [`Error::Unsupported`] otherwise).
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
    /// use dmakit::{Direction, Error};
    /// let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let task = machine.create_task(); // a user process
    /// let wired = BufferOptions::new(0x1000, Direction::Out);
    /// let refused = BufferMemoryDescriptor::in_task(machine.clone(), task, wired);
    /// assert!(matches!(refused, Err(Error::BadArgument { .. })));
    /// let buf = BufferMemoryDescriptor::in_task(machine.clone(), task, wired.pageable(true))?;
    /// assert_eq!(buf.task(), task);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn in_task(platform: P, task: Task, options: BufferOptions) -> Result<Self> {
        check_options(task, &options)?;
        let page = platform.page_size();
        let alloc_len = page.round_up(options.capacity).ok_or(Error::Overflow {
            what: "buffer capacity",
            start: 0,
            len: options.capacity,
        })?;
        let req = PageRequest {
            align: options.alignment,
            phys_limit: options.phys_limit,
            phys_min: options.phys_min,
            // An alignment above a page implies contiguity (IOKit).
            contiguous: options.contiguous || options.alignment > page.bytes(),
            pageable: options.pageable,
        };
        let va = platform.allocate_pages_in(task, alloc_len, &req)?;
        let inner = match Self::describe(&platform, task, va, alloc_len, &options) {
            Ok(d) => d,
            Err(e) => {
                let _ = platform.free_pages_in(task, va, alloc_len);
                return Err(e);
            }
        };
        Ok(BufferMemoryDescriptor {
            inner,
            task,
            va,
            alloc_len,
            capacity: options.capacity,
            length: AtomicU64::new(options.capacity),
            direction: AtomicU32::new(options.direction.bits()),
            append: crate::sync::Mutex::new(()),
            lends: crate::sync::Mutex::new(0),
            options,
        })
    }

    /// The descriptor of a new buffer's pages, prepared for the buffer's whole life unless
    /// it is pageable. On an error nothing stays prepared; the pages are the caller's to free.
    fn describe(
        platform: &P,
        task: Task,
        va: VirtAddr,
        alloc_len: u64,
        options: &BufferOptions,
    ) -> Result<GeneralMemoryDescriptor<P>> {
        let inner = GeneralMemoryDescriptor::with_address_range(
            platform.clone(),
            task,
            va,
            alloc_len,
            options.direction,
        )?;
        if !options.pageable {
            inner.prepare_for(PrepOwner::BUFFER, Direction::InOut)?;
        }
        Ok(inner)
    }

    /// The task whose address space holds the buffer.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Replaces the direction (IOKit `setDirection`). Later preparations with
    /// `Direction::None` use it; a preparation already held keeps the access it was made
    /// with.
    pub fn set_direction(&self, direction: Direction) {
        self.direction.store(direction.bits(), Ordering::Release);
    }

    /// Whether a device may be using the buffer: prepared beyond the preparation a wired
    /// buffer holds for its whole life.
    pub fn is_prepared(&self) -> bool {
        self.inner.wire_count() > u64::from(self.held())
    }

    /// The wirings of its memory the buffer holds itself: one for a wired buffer (its
    /// life-long preparation), none for a pageable one.
    fn held(&self) -> u32 {
        u32::from(!self.options.pageable)
    }

    /// Checks `[start, start + len)` for a lend, with IOKit's rule for `getBytesNoCopy`:
    /// `start + len` must not overflow, `start` must be below the length and the range
    /// inside it (so nothing can be lent from a zero-length buffer).
    fn check_lend(&self, start: u64, len: u64) -> Result<()> {
        let length = self.length();
        match start.checked_add(len) {
            Some(end) if start < length && end <= length => Ok(()),
            _ => Err(Error::OutOfBounds {
                what: "buffer bytes lent without a copy",
                offset: start,
                len,
                limit: length,
            }),
        }
    }

    fn busy_prepared(&self) -> Error {
        Error::Busy {
            what: "buffer",
            addr: self.va.0,
            why: "it is prepared for a device: its bytes cannot be lent until it is completed",
        }
    }

    /// Lends `[start, start + len)` of the buffer as a shared slice, without copying where
    /// the platform can (IOKit `getBytesNoCopy(start, length)`).
    ///
    /// Errors: the range as IOKit checks it ([`Error::OutOfBounds`] when `start + len`
    /// overflows, `start` is at or past the length, or the range runs past it); the buffer
    /// prepared for a device ([`Error::Busy`]); whatever the platform refuses
    /// ([`CpuAccess::direct_slice`](crate::platform::CpuAccess::direct_slice):
    /// [`Error::Unsupported`] where it cannot lend, `Busy`
    /// while the memory is wired or mapped a second time). While the slice lives a
    /// prepare of the buffer is [`Error::Busy`] and the platform refuses stores to it.
    pub fn bytes_no_copy(&self, start: u64, len: u64) -> Result<BytesNoCopy<'_>> {
        self.check_lend(start, len)?;
        let mut lends = self.lends.lock();
        if self.is_prepared() {
            return Err(self.busy_prepared());
        }
        let lent = if len == 0 {
            None
        } else {
            Some(self.inner.platform().direct_slice(
                self.task,
                VirtAddr(self.va.0 + start),
                len,
                self.held(),
            )?)
        };
        *lends += 1;
        Ok(BytesNoCopy {
            lent,
            lends: &self.lends,
        })
    }

    /// Lends `[start, start + len)` of the buffer as a mutable slice (IOKit
    /// `getBytesNoCopy`, written through). The slice borrows the descriptor mutably, so it
    /// cannot be prepared (or used any other way) while the slice lives. Errors as
    /// [`bytes_no_copy`](Self::bytes_no_copy).
    ///
    /// ```compile_fail
    /// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
    /// use dmakit::Direction;
    /// fn demo<P: dmakit::platform::Platform + Clone>(
    ///     mut buf: BufferMemoryDescriptor<P>,
    /// ) -> dmakit::Result<()> {
    ///     let bytes = buf.bytes_no_copy_mut(0, 4)?;
    ///     buf.prepare_wiring(Direction::In)?; // refused by the borrow checker
    ///     drop(bytes);
    ///     Ok(())
    /// }
    /// ```
    pub fn bytes_no_copy_mut(&mut self, start: u64, len: u64) -> Result<BytesNoCopyMut<'_>> {
        self.check_lend(start, len)?;
        if self.is_prepared() {
            return Err(self.busy_prepared());
        }
        let lent = if len == 0 {
            None
        } else {
            Some(self.inner.platform().direct_slice_mut(
                self.task,
                VirtAddr(self.va.0 + start),
                len,
                self.held(),
            )?)
        };
        Ok(BytesNoCopyMut { lent })
    }

    /// A wired buffer holding a copy of `bytes` (IOKit `withBytes`).
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
    /// use dmakit::Direction;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let cmd = BufferMemoryDescriptor::with_bytes(machine, b"\x02READ", Direction::Out)?;
    /// assert_eq!((cmd.length(), cmd.capacity()), (5, 5));
    /// let mut back = [0u8; 5];
    /// cmd.read(0, &mut back)?;
    /// assert_eq!(&back, b"\x02READ");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
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
    /// IOKit: `getCapacity`.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The address of the buffer in its task (the kernel's unless made with
    /// [`in_task`](Self::in_task)).
    pub fn address(&self) -> VirtAddr {
        self.va
    }

    /// Maps the buffer on its own platform (IOKit `map` / `createMappingInTask`), sharing a
    /// compatible live mapping as IOKit does; see [`MemoryMap`](crate::map::MemoryMap).
    /// Mapped from its first byte (whole or a prefix), anywhere, into the task that holds
    /// it, the mapping is the buffer's own [`address`](Self::address) (static: nothing new
    /// is mapped). The mapping holds the buffer alive.
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

    /// Sets the length (IOKit `setLength`). A length above the capacity is
    /// [`Error::OutOfBounds`] and changes nothing (IOKit silently ignores it; see
    /// DESIGN.md).
    ///
    /// The memory stays allocated to the capacity, so a transfer a DMA command prepared
    /// before the length went down stays whole: its segments, IO mappings and cache
    /// maintenance still cover the range it prepared (see
    /// [`MemoryDescriptor::prepared_segment`]). Byte copies, a bounce buffer's included,
    /// reach only up to the new length.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::{Direction, Error};
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let buf = BufferMemoryDescriptor::new(machine, BufferOptions::new(4096, Direction::In))?;
    /// buf.set_length(512)?;
    /// assert_eq!(buf.length(), 512); // what a device is told to fill
    /// assert!(matches!(buf.set_length(4097), Err(Error::OutOfBounds { .. })));
    /// assert_eq!(buf.length(), 512, "unchanged");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn set_length(&self, length: u64) -> Result<()> {
        let _append = self.append.lock();
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

    /// Appends as much of `data` as fits before the capacity at the current end and moves
    /// the length past it (IOKit `appendBytes`); returns how many bytes were appended
    /// (IOKit returns true even when it truncates, or appends nothing).
    ///
    /// The bytes are written as [`write_bytes`](MemoryDescriptor::write_bytes) writes them,
    /// so while the buffer is prepared read-only (a pageable buffer prepared for `Out`,
    /// which a device may be reading) nothing is appended: 0, the length unchanged. (IOKit
    /// copies into a kernel buffer regardless, and grows another task's buffer by the
    /// count even when its `writeBytes` refused.)
    ///
    /// Atomic: concurrent appends each get their own range, their bytes are never
    /// interleaved, and the counts returned add up to the growth of the length. The length
    /// moves only after the bytes are written.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::Direction;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let log = BufferMemoryDescriptor::new(machine, BufferOptions::new(8, Direction::Out))?;
    /// log.set_length(0)?;
    /// assert_eq!(log.append_bytes(b"abc"), 3);
    /// assert_eq!(log.append_bytes(b"defghij"), 5); // only 5 fit
    /// assert_eq!(log.append_bytes(b"k"), 0);
    /// let mut all = [0u8; 8];
    /// assert_eq!(log.read_bytes(0, &mut all), 8);
    /// assert_eq!(&all, b"abcdefgh");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn append_bytes(&self, data: &[u8]) -> usize {
        let _append = self.append.lock();
        let len = self.length.load(Ordering::Acquire);
        let room = self.capacity.saturating_sub(len);
        let n = usize::try_from(room).map_or(data.len(), |r| r.min(data.len()));
        let done = self.inner.write_bytes(len, &data[..n]);
        self.length.store(len + done as u64, Ordering::Release);
        done
    }

    /// Copies `buf.len()` bytes from `offset` (within the length) into `buf`: all of them
    /// or an error, where [`read_bytes`](MemoryDescriptor::read_bytes) stops at the end.
    ///
    /// ```
    /// use dmakit::descriptor::BufferMemoryDescriptor;
    /// use dmakit::{Direction, Error};
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let buf = BufferMemoryDescriptor::with_bytes(machine, b"0123", Direction::Out)?;
    /// let mut two = [0u8; 2];
    /// buf.read(2, &mut two)?;
    /// assert_eq!(&two, b"23");
    /// assert!(matches!(buf.read(3, &mut two), Err(Error::OutOfBounds { .. })));
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        self.inner
            .platform()
            .read_virt(self.task, VirtAddr(self.va.0 + offset), buf)
    }

    /// Copies `data` to `offset` (within the length).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        let done = self.write_bytes(offset, data);
        if done == data.len() {
            return Ok(());
        }
        if self.inner.prepared_read_only() {
            return Err(Error::NotWritable {
                what: "buffer prepared read-only",
                addr: self.va.0 + offset,
            });
        }
        // The platform's own reason (a page that could not be brought in, …).
        let at = VirtAddr(self.va.0 + offset + done as u64);
        self.inner
            .platform()
            .write_virt(self.task, at, &data[done..])
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
        Direction::from_bits(self.direction.load(Ordering::Acquire))
    }

    fn page_size(&self) -> PageSize {
        self.inner.page_size()
    }

    /// [`Error::Busy`] while a slice from [`bytes_no_copy`](Self::bytes_no_copy) is lent.
    fn prepare_for(&self, owner: PrepOwner, dir: Direction) -> Result<()> {
        let dir = if dir == Direction::None {
            self.direction()
        } else {
            dir
        };
        let lends = self.lends.lock();
        if *lends > 0 {
            return Err(Error::Busy {
                what: "buffer",
                addr: self.va.0,
                why: "its bytes are lent as a slice (bytes_no_copy): drop it first",
            });
        }
        let r = self.inner.prepare_for(owner, dir);
        drop(lends);
        r
    }

    /// The preparation a wired buffer holds for its whole life has an owner of its own, so
    /// no `complete` ends it.
    fn complete_for(&self, owner: PrepOwner) -> Result<()> {
        self.inner.complete_for(owner)
    }

    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        let n = super::whole_or_nothing(offset, buf.len(), self.length());
        self.inner.read_bytes(offset, &mut buf[..n])
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        let n = super::whole_or_nothing(offset, data.len(), self.length());
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

    /// Up to the capacity: the pages stay wired while prepared whatever the length says.
    fn prepared_segment(&self, offset: u64) -> Result<Segment> {
        if offset >= self.capacity {
            return Err(super::past_end("buffer capacity", offset, self.capacity));
        }
        let s = self.inner.physical_segment(offset)?;
        Ok(Segment {
            addr: s.addr,
            len: s.len.min(self.capacity - offset),
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

    fn preparation_id(&self) -> u64 {
        self.inner.preparation_id()
    }

    fn descriptor_id(&self) -> u64 {
        self.inner.descriptor_id()
    }

    fn perform_operation(&self, op: MemoryOperation, offset: u64, len: u64) -> Result<()> {
        let want = op_extent(offset, len, self.length())?;
        self.inner.perform_operation(op, offset, want)
    }

    /// The whole allocation changes state. A wired buffer is prepared for its whole life,
    /// so it cannot be made volatile ([`Error::Busy`]); IOKit likewise only makes pageable
    /// buffers purgeable.
    fn set_purgeable(&self, req: PurgeableRequest) -> Result<PurgeableState> {
        self.inner.set_purgeable(req)
    }

    fn pageable_buffer(&self) -> bool {
        self.options.pageable
    }

    fn buffer_task(&self) -> Option<Task> {
        Some(self.task())
    }
}

/// A shared slice of a buffer's bytes (see
/// [`BufferMemoryDescriptor::bytes_no_copy`]); dropping it ends the lend.
#[must_use = "dropping the slice ends the lend at once"]
pub struct BytesNoCopy<'a> {
    lent: Option<Box<dyn DirectSlice + 'a>>,
    lends: &'a crate::sync::Mutex<u32>,
}

impl core::ops::Deref for BytesNoCopy<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.lent.as_ref().map_or(&[], |l| l.bytes())
    }
}

impl Drop for BytesNoCopy<'_> {
    fn drop(&mut self) {
        // The platform ends its lend first, then a preparation may happen again.
        drop(self.lent.take());
        let mut lends = self.lends.lock();
        *lends = lends.saturating_sub(1);
    }
}

impl core::fmt::Debug for BytesNoCopy<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BytesNoCopy")
            .field("len", &self.len())
            .finish()
    }
}

/// A mutable slice of a buffer's bytes (see
/// [`BufferMemoryDescriptor::bytes_no_copy_mut`]); dropping it ends the lend (a platform
/// that lent a copy writes it back then).
#[must_use = "dropping the slice ends the lend at once"]
pub struct BytesNoCopyMut<'a> {
    lent: Option<Box<dyn DirectSliceMut + 'a>>,
}

impl core::ops::Deref for BytesNoCopyMut<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.lent.as_ref().map_or(&[], |l| l.bytes())
    }
}

impl core::ops::DerefMut for BytesNoCopyMut<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self.lent.as_mut() {
            Some(l) => l.bytes_mut(),
            None => &mut [],
        }
    }
}

impl core::fmt::Debug for BytesNoCopyMut<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BytesNoCopyMut")
            .field("len", &self.len())
            .finish()
    }
}

impl<P: Platform + Clone> Drop for BufferMemoryDescriptor<P> {
    fn drop(&mut self) {
        // Nothing else can hold a preparation now (a DMA command holds the buffer itself).
        self.inner.complete_all();
        // Refused while someone else still wires the pages (a device may reach them): the
        // buffer is then leaked rather than freed under the device.
        let _ = self
            .inner
            .platform()
            .free_pages_in(self.task, self.va, self.alloc_len);
    }
}

impl<P: Platform + Clone> core::fmt::Debug for BufferMemoryDescriptor<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BufferMemoryDescriptor")
            .field("task", &self.task)
            .field("address", &self.va)
            .field("capacity", &self.capacity)
            .field("length", &self.length())
            .field("options", &self.options)
            .finish()
    }
}

/// A buffer's options checked on their own: a task other than the kernel's only with
/// pageable memory, a capacity, a power-of-two alignment, no physical constraints on
/// pageable memory.
fn check_options(task: Task, options: &BufferOptions) -> Result<()> {
    if task != Task::KERNEL && !options.pageable {
        return Err(Error::BadArgument {
            what: "a buffer in a task other than the kernel's must be pageable (task)",
            value: task.0 as u64,
        });
    }
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
    Ok(())
}
