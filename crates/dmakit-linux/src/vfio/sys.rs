//! The unsafe floor of the VFIO backend: the ioctls, the BAR mappings and the one MMIO
//! registration.
//!
//! Every VFIO ioctl is `_IO(VFIO_TYPE, VFIO_BASE + n)` with a pointer (or an integer) as its
//! argument; the argument structs are rust-vmm's `vfio-bindings`, never written by hand here.
//! Each function below is safe: it owns or borrows the argument for exactly the call, sizes
//! `argsz` from the struct it passes, and the `// SAFETY:` comment names why the kernel's
//! reads and writes stay inside that struct.
//!
//! [`DeviceMapping`] owns an `mmap` of a device region (a BAR) and [`RegisteredMmio`] keeps
//! one registered with a [`Host`] for exactly as long as the mapping lives, which is the
//! contract of [`Host::register_mmio`].

use crate::host::Host;
use dmakit::{PhysAddr, Result as DmaResult};
use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use std::ffi::{c_void, CStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::Arc;
use vfio_bindings::bindings::vfio::*;

/// The opcode of VFIO ioctl number `n` (`_IO(';', 100 + n)`).
const fn op(n: u32) -> Opcode {
    rustix::ioctl::opcode::none(VFIO_TYPE, (VFIO_BASE + n) as u8)
}

const GET_API_VERSION: Opcode = op(0);
const CHECK_EXTENSION: Opcode = op(1);
const SET_IOMMU: Opcode = op(2);
const GROUP_GET_STATUS: Opcode = op(3);
const GROUP_SET_CONTAINER: Opcode = op(4);
const GROUP_UNSET_CONTAINER: Opcode = op(5);
const GROUP_GET_DEVICE_FD: Opcode = op(6);
const DEVICE_GET_INFO: Opcode = op(7);
const DEVICE_GET_REGION_INFO: Opcode = op(8);
const DEVICE_GET_IRQ_INFO: Opcode = op(9);
const DEVICE_SET_IRQS: Opcode = op(10);
const DEVICE_RESET: Opcode = op(11);
const IOMMU_GET_INFO: Opcode = op(12);
const IOMMU_MAP_DMA: Opcode = op(13);
const IOMMU_UNMAP_DMA: Opcode = op(14);

/// One ioctl with a raw argument (a pointer, or an integer passed as one); its output is the
/// call's non-negative return value.
struct Raw {
    opcode: Opcode,
    arg: *mut c_void,
}

// SAFETY: `Raw` only forwards the opcode and argument; every constructor below passes an
// argument that is valid for what the kernel does with that opcode, and `IS_MUTATING` is
// true so the kernel may write through the pointer.
unsafe impl Ioctl for Raw {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.arg
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// An ioctl whose argument is an integer, or nothing.
fn ioctl_int(fd: BorrowedFd<'_>, opcode: Opcode, value: usize) -> Result<i32, Errno> {
    let raw = Raw {
        opcode,
        arg: ptr::without_provenance_mut(value),
    };
    // SAFETY: the VFIO ioctls called through here (GET_API_VERSION, CHECK_EXTENSION,
    // SET_IOMMU, GROUP_UNSET_CONTAINER, DEVICE_RESET) take their argument by value and never
    // dereference it.
    unsafe { rustix::ioctl::ioctl(fd, raw) }
}

/// An ioctl whose argument is `*mut T`, where `T` starts with its own `argsz`.
fn ioctl_ptr<T>(fd: BorrowedFd<'_>, opcode: Opcode, arg: &mut T) -> Result<i32, Errno> {
    let raw = Raw {
        opcode,
        arg: (arg as *mut T).cast(),
    };
    // SAFETY: `arg` is an exclusive borrow of a whole `T` for the duration of the call; each
    // caller sets `argsz` to at most `size_of::<T>()` (or passes a plain integer for
    // GROUP_SET_CONTAINER), and VFIO reads and writes at most `argsz` bytes.
    unsafe { rustix::ioctl::ioctl(fd, raw) }
}

fn argsz<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// `VFIO_GET_API_VERSION`.
pub(crate) fn api_version(container: BorrowedFd<'_>) -> Result<i32, Errno> {
    ioctl_int(container, GET_API_VERSION, 0)
}

/// `VFIO_CHECK_EXTENSION`: whether the container supports IOMMU type or extension `ext`.
pub(crate) fn check_extension(container: BorrowedFd<'_>, ext: u32) -> Result<bool, Errno> {
    Ok(ioctl_int(container, CHECK_EXTENSION, ext as usize)? > 0)
}

/// `VFIO_SET_IOMMU`.
pub(crate) fn set_iommu(container: BorrowedFd<'_>, kind: u32) -> Result<(), Errno> {
    ioctl_int(container, SET_IOMMU, kind as usize).map(drop)
}

/// `VFIO_GROUP_GET_STATUS`: the group's flags.
pub(crate) fn group_status(group: BorrowedFd<'_>) -> Result<u32, Errno> {
    let mut s = vfio_group_status {
        argsz: argsz::<vfio_group_status>(),
        flags: 0,
    };
    ioctl_ptr(group, GROUP_GET_STATUS, &mut s)?;
    Ok(s.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`.
pub(crate) fn group_set_container(
    group: BorrowedFd<'_>,
    container: BorrowedFd<'_>,
) -> Result<(), Errno> {
    let mut fd: i32 = container.as_raw_fd();
    ioctl_ptr(group, GROUP_SET_CONTAINER, &mut fd).map(drop)
}

/// `VFIO_GROUP_UNSET_CONTAINER`.
pub(crate) fn group_unset_container(group: BorrowedFd<'_>) -> Result<(), Errno> {
    ioctl_int(group, GROUP_UNSET_CONTAINER, 0).map(drop)
}

/// `VFIO_GROUP_GET_DEVICE_FD` for the device named `name` (its PCI address).
pub(crate) fn group_device_fd(group: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    let raw = Raw {
        opcode: GROUP_GET_DEVICE_FD,
        arg: name.as_ptr().cast_mut().cast(),
    };
    // SAFETY: the kernel only reads the NUL-terminated string, which `name` keeps alive for
    // the call.
    let fd = unsafe { rustix::ioctl::ioctl(group, raw) }?;
    // SAFETY: on success the return value is a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `VFIO_DEVICE_GET_INFO`.
pub(crate) fn device_info(device: BorrowedFd<'_>) -> Result<vfio_device_info, Errno> {
    let mut i = vfio_device_info {
        argsz: argsz::<vfio_device_info>(),
        ..Default::default()
    };
    ioctl_ptr(device, DEVICE_GET_INFO, &mut i)?;
    Ok(i)
}

/// `VFIO_DEVICE_GET_REGION_INFO` for region `index` (capabilities not requested).
pub(crate) fn region_info(device: BorrowedFd<'_>, index: u32) -> Result<vfio_region_info, Errno> {
    let mut i = vfio_region_info {
        argsz: argsz::<vfio_region_info>(),
        index,
        ..Default::default()
    };
    ioctl_ptr(device, DEVICE_GET_REGION_INFO, &mut i)?;
    Ok(i)
}

/// `VFIO_DEVICE_GET_IRQ_INFO` for interrupt index `index`.
pub(crate) fn irq_info(device: BorrowedFd<'_>, index: u32) -> Result<vfio_irq_info, Errno> {
    let mut i = vfio_irq_info {
        argsz: argsz::<vfio_irq_info>(),
        index,
        ..Default::default()
    };
    ioctl_ptr(device, DEVICE_GET_IRQ_INFO, &mut i)?;
    Ok(i)
}

/// `VFIO_DEVICE_SET_IRQS`: trigger `fds` (eventfds) for vectors `0..fds.len()` of `index`;
/// an empty `fds` disables the index.
pub(crate) fn set_irq_eventfds(
    device: BorrowedFd<'_>,
    index: u32,
    fds: &[BorrowedFd<'_>],
) -> Result<(), Errno> {
    let raw_fds: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut buf = irq_set_arg(index, &raw_fds);
    let raw = Raw {
        opcode: DEVICE_SET_IRQS,
        arg: buf.as_mut_ptr().cast(),
    };
    // SAFETY: the kernel reads `argsz` bytes, all inside `buf` (`irq_set_arg`), which lives
    // for the call; the eventfds stay open for the call (borrowed).
    unsafe { rustix::ioctl::ioctl(device, raw) }.map(drop)
}

/// The argument of `VFIO_DEVICE_SET_IRQS` for eventfds `fds` on vectors `0..fds.len()` of
/// `index`: a `vfio_irq_set` header with the descriptors right after it (where its `data`
/// starts), in 8-aligned words; its `argsz` is the header and the descriptors, at most the
/// buffer.
fn irq_set_arg(index: u32, fds: &[i32]) -> Vec<u64> {
    let head = std::mem::size_of::<vfio_irq_set>();
    let total = head + 4 * fds.len();
    // u64 words, so the header is aligned for `vfio_irq_set` (alignment 4).
    let mut buf = vec![0u64; total.div_ceil(8)];
    let set = vfio_irq_set {
        argsz: total as u32,
        flags: if fds.is_empty() {
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER
        } else {
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
        },
        index,
        start: 0,
        count: fds.len() as u32,
        data: Default::default(),
    };
    let base = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` holds at least `total` bytes and is 8-aligned; the header goes at offset
    // 0 and the `fds.len()` 4-byte descriptors right after it, all inside the buffer.
    unsafe {
        ptr::write(base.cast::<vfio_irq_set>(), set);
        for (i, &fd) in fds.iter().enumerate() {
            ptr::write_unaligned(base.add(head + 4 * i).cast::<i32>(), fd);
        }
    }
    buf
}

/// `VFIO_DEVICE_RESET`.
pub(crate) fn device_reset(device: BorrowedFd<'_>) -> Result<(), Errno> {
    ioctl_int(device, DEVICE_RESET, 0).map(drop)
}

/// `VFIO_IOMMU_GET_INFO` with its capability chain: the raw bytes of the info, as long as
/// the kernel says they are (`argsz` grown to fit the chain).
pub(crate) fn iommu_info(container: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let mut size = std::mem::size_of::<vfio_iommu_type1_info>();
    loop {
        let mut buf = vec![0u64; size.div_ceil(8)];
        let base = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: the buffer is at least a whole, 8-aligned `vfio_iommu_type1_info`; we
        // write its `argsz`, the first field.
        unsafe { ptr::write(base.cast::<u32>(), size as u32) };
        let raw = Raw {
            opcode: IOMMU_GET_INFO,
            arg: base.cast(),
        };
        // SAFETY: the kernel writes at most `argsz` = `size` bytes, all inside `buf`.
        unsafe { rustix::ioctl::ioctl(container, raw) }?;
        // SAFETY: the first field, in bounds and aligned, just written by the kernel.
        let want = unsafe { ptr::read(base.cast::<u32>()) } as usize;
        if want <= size {
            let bytes = buf
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .take(size)
                .collect();
            return Ok(bytes);
        }
        size = want;
    }
}

/// `VFIO_IOMMU_MAP_DMA`: `[iova, iova + size)` → this process's `[vaddr, vaddr + size)`.
///
/// Safe: the kernel pins the pages itself and checks the range belongs to this process; if
/// `vaddr` is unmapped the call fails (`EFAULT`), and no Rust memory is read or written.
pub(crate) fn map_dma(
    container: BorrowedFd<'_>,
    vaddr: u64,
    iova: u64,
    size: u64,
    flags: u32,
) -> Result<(), Errno> {
    let mut m = vfio_iommu_type1_dma_map {
        argsz: argsz::<vfio_iommu_type1_dma_map>(),
        flags,
        vaddr,
        iova,
        size,
    };
    ioctl_ptr(container, IOMMU_MAP_DMA, &mut m).map(drop)
}

/// `VFIO_IOMMU_UNMAP_DMA` of `[iova, iova + size)` (or everything, with
/// `VFIO_DMA_UNMAP_FLAG_ALL` and both zero); returns how many bytes the kernel unmapped.
pub(crate) fn unmap_dma(
    container: BorrowedFd<'_>,
    iova: u64,
    size: u64,
    flags: u32,
) -> Result<u64, Errno> {
    let mut u = vfio_iommu_type1_dma_unmap {
        argsz: argsz::<vfio_iommu_type1_dma_unmap>(),
        flags,
        iova,
        size,
        data: Default::default(),
    };
    ioctl_ptr(container, IOMMU_UNMAP_DMA, &mut u)?;
    Ok(u.size)
}

/// A shared, readable and writable `mmap` of `len` bytes of a device fd at `offset` (a
/// region such as a BAR).
///
/// # Invariants
///
/// `[addr, addr + len)` is a mapping this type made and nobody else unmaps; it is unmapped
/// on drop.
#[derive(Debug)]
pub(crate) struct DeviceMapping {
    addr: usize,
    len: usize,
}

impl DeviceMapping {
    /// Maps the region.
    pub(crate) fn new(device: BorrowedFd<'_>, offset: u64, len: usize) -> Result<Self, Errno> {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a new mapping at an address the kernel picks (no MAP_FIXED), so nothing
        // existing is replaced; the kernel checks the fd, offset and length.
        let p = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                device,
                offset,
            )
        }?;
        // INVARIANT: the mapping just made, known to nobody else.
        Ok(DeviceMapping {
            addr: p.expose_provenance(),
            len,
        })
    }

    /// The first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.addr as u64
    }
}

impl Drop for DeviceMapping {
    fn drop(&mut self) {
        // SAFETY: by the invariant this is our own mapping; a `RegisteredMmio` unregisters
        // it before dropping it, so nothing reaches it any more.
        let _ =
            unsafe { rustix::mm::munmap(ptr::with_exposed_provenance_mut(self.addr), self.len) };
    }
}

/// A [`DeviceMapping`] registered with a host as MMIO at a bus address, for its whole life.
///
/// # Invariants
///
/// While this value lives, `mapping` is registered at `bus` with `host`; drop unregisters
/// before unmapping.
pub(crate) struct RegisteredMmio {
    host: Arc<Host>,
    bus: PhysAddr,
    mapping: DeviceMapping,
}

impl RegisteredMmio {
    /// Registers `mapping` with `host` at bus address `bus`.
    pub(crate) fn new(host: Arc<Host>, bus: PhysAddr, mapping: DeviceMapping) -> DmaResult<Self> {
        let ptr = ptr::with_exposed_provenance_mut::<u8>(mapping.addr);
        // SAFETY: the mapping is a shared device mapping, readable and writable from any
        // thread, reached only through the host's volatile spans (no Rust references are ever
        // made to it); it stays mapped until `self` drops, which unregisters it first.
        unsafe { host.register_mmio(bus, ptr, mapping.len) }?;
        // INVARIANT: registered just now.
        Ok(RegisteredMmio { host, bus, mapping })
    }

    /// The CPU address of the mapping.
    pub(crate) fn cpu_addr(&self) -> u64 {
        self.mapping.addr()
    }
}

impl Drop for RegisteredMmio {
    fn drop(&mut self) {
        // Unregistered first; `mapping` is dropped (unmapped) after this body.
        let _ = self.host.unregister_mmio(self.bus);
    }
}

impl std::fmt::Debug for RegisteredMmio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredMmio")
            .field("bus", &self.bus)
            .field("mapping", &self.mapping)
            .finish()
    }
}

#[cfg(test)]
mod tests;
