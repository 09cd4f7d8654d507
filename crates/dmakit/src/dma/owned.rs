//! Typed ownership: who may touch DMA memory, said by the type.
//!
//! IOKit (and Linux's streaming DMA API) leave it to the driver to remember that between
//! `prepare` and `complete` the device owns the memory, and that a buffer mapped for the
//! device to read must not be synced for the CPU. Here the states are types:
//!
//! ```text
//!  CpuOwned<P, D, M> ──prepare()──► DeviceOwned<P, D, M> ──complete()──► CpuOwned<P, D, M>
//!   read_bytes / write_bytes          gen_segments (what the device gets)
//!                                     sync_for_device  (only D: DeviceReads)
//!                                     sync_for_cpu     (only D: DeviceWrites)
//! ```
//!
//! * The descriptor is taken **by value** and never handed out while the device owns it, so
//!   safe code has no way to copy into or out of device-owned memory except the two sync
//!   methods, which synchronize (bounce copies, cache maintenance) as part of the access.
//! * The direction `D` is a type: [`ToDevice`] (the device reads), [`FromDevice`] (the
//!   device writes) or [`Bidirectional`]. Syncing a `ToDevice` buffer for the CPU, or a
//!   `FromDevice` buffer for the device, does not compile.
//! * Dropping a `DeviceOwned` drops its command while prepared: the memory goes to the
//!   command's [`Quarantine`](super::Quarantine) (or is leaked), never back to the allocator
//!   under the device.
//!
//! ```compile_fail
//! use dmakit::dma::{DeviceOwned, ToDevice};
//! # use dmakit::{descriptor::MemoryDescriptor, platform::Platform};
//! fn peek<P: Platform + Clone, M: MemoryDescriptor + 'static>(dma: &DeviceOwned<P, ToDevice, M>) {
//!     let mut b = [0u8; 4];
//!     dma.sync_for_cpu(0, &mut b); // the device only reads this memory: no such method
//! }
//! ```
//!
//! ```
//! use dmakit::dma::{DeviceOwned, FromDevice};
//! # use dmakit::{descriptor::MemoryDescriptor, platform::Platform};
//! fn peek<P: Platform + Clone, M: MemoryDescriptor + 'static>(
//!     dma: &DeviceOwned<P, FromDevice, M>,
//! ) -> dmakit::Result<[u8; 4]> {
//!     let mut b = [0u8; 4];
//!     dma.sync_for_cpu(0, &mut b)?; // copies back from a bounce buffer, invalidates caches
//!     Ok(b)
//! }
//! ```

use super::command::{BounceReason, DmaCommand};
use crate::descriptor::MemoryDescriptor;
use crate::platform::Platform;
use crate::{Direction, Error, Result};
use alloc_crate::boxed::Box;
use alloc_crate::sync::Arc;
use core::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
}

/// A transfer direction as a type.
pub trait DmaDirection: sealed::Sealed + Send + Sync + 'static {
    /// The direction value.
    const DIRECTION: Direction;
}

/// Directions in which the device reads memory (the CPU fills it first).
pub trait DeviceReads: DmaDirection {}

/// Directions in which the device writes memory (the CPU reads it after).
pub trait DeviceWrites: DmaDirection {}

/// The device reads (kIODirectionOut).
#[derive(Clone, Copy, Debug)]
pub struct ToDevice;
/// The device writes (kIODirectionIn).
#[derive(Clone, Copy, Debug)]
pub struct FromDevice;
/// Both (kIODirectionInOut).
#[derive(Clone, Copy, Debug)]
pub struct Bidirectional;

impl sealed::Sealed for ToDevice {}
impl sealed::Sealed for FromDevice {}
impl sealed::Sealed for Bidirectional {}
impl DmaDirection for ToDevice {
    const DIRECTION: Direction = Direction::Out;
}
impl DmaDirection for FromDevice {
    const DIRECTION: Direction = Direction::In;
}
impl DmaDirection for Bidirectional {
    const DIRECTION: Direction = Direction::InOut;
}
impl DeviceReads for ToDevice {}
impl DeviceReads for Bidirectional {}
impl DeviceWrites for FromDevice {}
impl DeviceWrites for Bidirectional {}

/// A failed state change: the error, and the value it was asked of (nothing is lost).
pub struct Failed<T> {
    /// What went wrong.
    pub error: Error,
    /// The value, in the state it was left in.
    pub value: T,
}

impl<T> core::fmt::Debug for Failed<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Failed")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> From<Box<Failed<T>>> for Error {
    fn from(f: Box<Failed<T>>) -> Error {
        f.error
    }
}

/// The result of a state change: the new state, or the error with the old value (boxed, so
/// the happy path stays small).
pub type Transition<T, U> = core::result::Result<T, Box<Failed<U>>>;

/// Memory the CPU owns, with the command that will hand it to the device.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
/// use dmakit::dma::{CpuOwned, DmaCommand, MappingMode, ToDevice};
/// use dmakit::{Direction, PhysAddr};
/// use std::sync::Arc;
/// // Not coherent: the transitions do the cache maintenance.
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(64, Direction::Out))?;
/// let cmd = DmaCommand::builder(machine.clone()).mode(MappingMode::NonCoherent).build()?;
/// let cpu: CpuOwned<_, ToDevice, _> = CpuOwned::new(buf, cmd)?;
/// assert_eq!(cpu.write_bytes(0, b"doorbell payload"), 16);
///
/// let device = cpu.prepare()?; // the device owns it now (cache cleaned)
/// let seg = device.segments().next().expect("a segment")?;
/// let mut seen = [0u8; 16];
/// machine.device_read(PhysAddr(seg.addr.0), &mut seen)?; // the device's DMA
/// assert_eq!(&seen, b"doorbell payload");
///
/// let cpu = device.complete()?; // and the CPU again
/// let (buf, _cmd) = cpu.into_parts()?;
/// assert_eq!(buf.capacity(), 64);
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct CpuOwned<P: Platform + Clone + 'static, D: DmaDirection, M: MemoryDescriptor + 'static> {
    md: Arc<M>,
    cmd: DmaCommand<P>,
    _dir: PhantomData<D>,
}

/// Memory a device owns: only its segments and the sync methods reach it.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
/// use dmakit::dma::{CpuOwned, DeviceOwned, DmaCommand, FromDevice, MappingMode};
/// use dmakit::{Direction, PhysAddr};
/// use std::sync::Arc;
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(64, Direction::In))?;
/// let cmd = DmaCommand::builder(machine.clone()).mode(MappingMode::NonCoherent).build()?;
/// let cpu: CpuOwned<_, FromDevice, _> = CpuOwned::new(buf, cmd)?;
/// let device: DeviceOwned<_, FromDevice, _> = cpu.prepare()?;
/// assert_eq!(device.prepared(), (0, 64));
/// let seg = device.segments().next().expect("a segment")?;
/// machine.device_write(PhysAddr(seg.addr.0), b"rx: 4 bytes")?; // the device's DMA
/// // Peek while the device still owns it (invalidate, then copy).
/// let mut head = [0u8; 2];
/// assert_eq!(device.sync_for_cpu(0, &mut head)?, 2);
/// assert_eq!(&head, b"rx");
/// let cpu = device.complete()?;
/// let mut all = [0u8; 11];
/// assert_eq!(cpu.read_bytes(0, &mut all), 11);
/// assert_eq!(&all, b"rx: 4 bytes");
/// # Ok::<(), dmakit::Error>(())
/// ```
///
/// # Drop order
///
/// Dropping it drops the prepared command: the memory goes to the command's quarantine or
/// is leaked, never freed under the device.
pub struct DeviceOwned<
    P: Platform + Clone + 'static,
    D: DmaDirection,
    M: MemoryDescriptor + 'static,
> {
    md: Arc<M>,
    cmd: DmaCommand<P>,
    _dir: PhantomData<D>,
}

impl<P: Platform + Clone + 'static, D: DmaDirection, M: MemoryDescriptor + 'static>
    CpuOwned<P, D, M>
{
    /// Takes `md` and an unprepared `cmd` for transfers in direction `D`. The descriptor
    /// must allow `D` ([`Error::BadArgument`] otherwise); a prepared command is
    /// [`Error::Busy`].
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
    /// use dmakit::dma::{CpuOwned, DmaCommand, FromDevice};
    /// use dmakit::{Direction, Error};
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// // Memory described for the device to read cannot be handed over for it to write.
    /// let out = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(64, Direction::Out))?;
    /// let cmd = DmaCommand::builder(machine.clone()).build()?;
    /// let refused = CpuOwned::<_, FromDevice, _>::new(out, cmd);
    /// assert!(matches!(refused, Err(Error::BadArgument { .. })));
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn new(md: M, mut cmd: DmaCommand<P>) -> Result<Self> {
        if !md.direction().covers(D::DIRECTION) {
            return Err(Error::BadArgument {
                what: "typed DMA: the descriptor's direction does not allow the type's direction",
                value: md.direction().bits() as u64,
            });
        }
        let md = Arc::new(md);
        cmd.set_memory_descriptor(md.clone())?;
        Ok(CpuOwned {
            md,
            cmd,
            _dir: PhantomData,
        })
    }

    /// The descriptor, for queries (length, physical segments are the command's business).
    pub fn descriptor(&self) -> &M {
        &self.md
    }

    /// Copies from the memory (the CPU owns it).
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        self.md.read_bytes(offset, buf)
    }

    /// Copies into the memory (the CPU owns it).
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        self.md.write_bytes(offset, data)
    }

    /// Hands the whole descriptor to the device (prepare with flush and synchronize).
    pub fn prepare(self) -> Transition<DeviceOwned<P, D, M>, Self> {
        let len = self.md.length();
        self.prepare_range(0, len)
    }

    /// Hands `[offset, offset + length)` to the device. On an error the value comes back
    /// in [`Failed::value`], still CPU-owned.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
    /// use dmakit::dma::{CpuOwned, DmaCommand, ToDevice};
    /// use dmakit::Direction;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, Direction::Out))?;
    /// let cpu: CpuOwned<_, ToDevice, _> = CpuOwned::new(buf, DmaCommand::builder(machine).build()?)?;
    /// assert_eq!(cpu.write_bytes(0, b"kept"), 4);
    /// let failed = cpu.prepare_range(0x1000, 0x2000).unwrap_err(); // past the end
    /// let cpu = failed.value; // nothing lost
    /// let mut back = [0u8; 4];
    /// assert_eq!(cpu.read_bytes(0, &mut back), 4);
    /// assert_eq!(&back, b"kept");
    /// let device = cpu.prepare_range(0, 0x1000)?;
    /// assert_eq!(device.prepared(), (0, 0x1000));
    /// device.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn prepare_range(
        mut self,
        offset: u64,
        length: u64,
    ) -> Transition<DeviceOwned<P, D, M>, Self> {
        match self
            .cmd
            .prepare(super::PrepareOptions::range(offset, length))
        {
            Ok(()) => Ok(DeviceOwned {
                md: self.md,
                cmd: self.cmd,
                _dir: PhantomData,
            }),
            Err(error) => Err(Box::new(Failed { error, value: self })),
        }
    }

    /// Gives back the descriptor and the command.
    pub fn into_parts(mut self) -> Result<(M, DmaCommand<P>)> {
        self.cmd.clear_memory_descriptor()?;
        let md = Arc::try_unwrap(self.md).map_err(|_| Error::Internal {
            what: "typed DMA: the descriptor is shared (it never should be)",
        })?;
        Ok((md, self.cmd))
    }
}

impl<P: Platform + Clone + 'static, D: DmaDirection, M: MemoryDescriptor + 'static>
    DeviceOwned<P, D, M>
{
    /// Writes segments for the device (see [`DmaCommand::gen_segments`]).
    pub fn gen_segments(&self, offset: &mut u64, out: &mut [u8]) -> Result<usize> {
        self.cmd.gen_segments(offset, out)
    }

    /// The decoded segments for the device (see [`DmaCommand::segments`]).
    pub fn segments(&self) -> super::Segments<'_, P> {
        self.cmd.segments()
    }

    /// The prepared `(offset, length)`.
    pub fn prepared(&self) -> (u64, u64) {
        self.cmd.prepared().unwrap_or((0, 0))
    }

    /// Whether the device reaches a bounce copy.
    pub fn is_bounced(&self) -> bool {
        self.cmd.is_bounced()
    }

    /// Why it bounces, if it does.
    pub fn bounce_reason(&self) -> Option<BounceReason> {
        self.cmd.bounce_reason()
    }

    /// The command's dma-debug id.
    pub fn debug_id(&self) -> u64 {
        self.cmd.debug_id()
    }

    /// The device is done with it: completes (copying back what the device wrote) and
    /// returns the memory to the CPU. The preparation is released even when the copy-back
    /// fails; the error comes with the CPU-owned value.
    pub fn complete(mut self) -> Transition<CpuOwned<P, D, M>, CpuOwned<P, D, M>> {
        let r = self.cmd.complete();
        let cpu = CpuOwned {
            md: self.md,
            cmd: self.cmd,
            _dir: PhantomData,
        };
        match r {
            Ok(()) => Ok(cpu),
            Err(error) => Err(Box::new(Failed { error, value: cpu })),
        }
    }

    /// The prepared range's `[offset, offset + len)` (relative), checked.
    fn span(&self, offset: u64, len: usize) -> Result<u64> {
        let (start, length) = self.prepared();
        crate::descriptor::check_range(
            "typed DMA sync in the prepared range",
            offset,
            len as u64,
            length,
        )?;
        Ok(start + offset)
    }
}

impl<P: Platform + Clone + 'static, D: DeviceWrites, M: MemoryDescriptor + 'static>
    DeviceOwned<P, D, M>
{
    /// Reads what the device wrote at `offset` (relative to the preparation): synchronizes
    /// the range for the CPU (bounce copy back, cache invalidate), then copies it into `buf`.
    /// The device keeps ownership.
    pub fn sync_for_cpu(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let at = self.span(offset, buf.len())?;
        self.cmd
            .synchronize_range(Direction::In, offset, buf.len() as u64)?;
        Ok(self.cmd.cpu_copy(|| self.md.read_bytes(at, buf)))
    }
}

impl<P: Platform + Clone + 'static, D: DeviceReads, M: MemoryDescriptor + 'static>
    DeviceOwned<P, D, M>
{
    /// Writes `data` at `offset` (relative to the preparation) for the device to read, then
    /// synchronizes the range for the device (bounce copy, cache clean).
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
    /// use dmakit::dma::{BouncePool, CpuOwned, DmaCommand, ToDevice};
    /// use dmakit::{Direction, PhysAddr};
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
    ///
    /// let pool = Arc::new(BouncePool::new(machine.clone(), "example", 1 << 16));
    /// pool.set_force_bounce(true); // the device reads a copy
    /// let cmd = DmaCommand::builder(machine.clone()).bounce_pool(pool).build()?;
    /// let buf = BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(16, Direction::Out))?;
    /// let device = CpuOwned::<_, ToDevice, _>::new(buf, cmd)?.prepare()?;
    /// assert_eq!(device.sync_for_device(0, b"late update")?, 11); // written and copied
    /// let seg = device.segments().next().expect("a segment")?;
    /// let mut seen = [0u8; 11];
    /// machine.device_read(PhysAddr(seg.addr.0), &mut seen)?;
    /// assert_eq!(&seen, b"late update");
    /// device.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn sync_for_device(&self, offset: u64, data: &[u8]) -> Result<usize> {
        let at = self.span(offset, data.len())?;
        let n = self.cmd.cpu_copy(|| self.md.write_bytes(at, data));
        self.cmd
            .synchronize_range(Direction::Out, offset, data.len() as u64)?;
        Ok(n)
    }
}

impl<P: Platform + Clone + 'static, D: DmaDirection, M: MemoryDescriptor + 'static> core::fmt::Debug
    for CpuOwned<P, D, M>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuOwned")
            .field("direction", &D::DIRECTION)
            .field("length", &self.md.length())
            .finish()
    }
}

impl<P: Platform + Clone + 'static, D: DmaDirection, M: MemoryDescriptor + 'static> core::fmt::Debug
    for DeviceOwned<P, D, M>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceOwned")
            .field("direction", &D::DIRECTION)
            .field("prepared", &self.prepared())
            .field("bounced", &self.is_bounced())
            .finish()
    }
}
