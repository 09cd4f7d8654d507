//! The only `unsafe` of the Linux backend: the system calls and raw-memory operations, each
//! wrapped in a function whose contract says what the caller must guarantee.
//!
//! Policy: every `unsafe` block carries a `// SAFETY:` comment naming the invariant it relies
//! on and the check that established it; every `unsafe fn` has a `# Safety` section.

use dmakit::Error;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `memfd_create(name, MFD_CLOEXEC [| MFD_HUGETLB | MFD_HUGE_2MB])` then `ftruncate(len)`.
pub(crate) fn memfd(len: u64, huge: bool) -> Result<OwnedFd, Error> {
    let mut flags = libc::MFD_CLOEXEC;
    if huge {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: the name is a valid NUL-terminated C string literal; the call has no other
    // memory arguments.
    let fd = unsafe { libc::memfd_create(c"dmakit".as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::Os {
            op: "memfd_create",
            errno: errno(),
            hint: if huge {
                "the kernel has no hugetlbfs support"
            } else {
                ""
            },
        });
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = i64::try_from(len).map_err(|_| Error::Overflow {
        what: "memfd length",
        start: 0,
        len,
    })?;
    // SAFETY: ftruncate takes a valid descriptor and a length; no memory is passed.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(Error::Os {
            op: "ftruncate(memfd)",
            errno: errno(),
            hint: "",
        });
    }
    Ok(fd)
}

/// Reserves `len` bytes of inaccessible address space (to carve an aligned mapping from).
pub(crate) fn reserve(len: usize) -> Result<usize, Error> {
    // SAFETY: an anonymous PROT_NONE mapping with a null hint creates fresh address space
    // and touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::Os {
            op: "mmap(reserve)",
            errno: errno(),
            hint: "",
        });
    }
    Ok(p as usize)
}

/// Reserves `len` bytes of inaccessible address space at exactly `addr`, failing (with the
/// errno, EEXIST when something is there) rather than replacing an existing mapping.
pub(crate) fn reserve_at(addr: usize, len: usize) -> Result<usize, i32> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory anyone
    // uses is touched; a fresh PROT_NONE anonymous mapping is created or the call fails.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    if p as usize != addr {
        // Old kernels ignore the flag and treat the address as a hint.
        // SAFETY: the mapping was just created by this call and nothing references it.
        unsafe { libc::munmap(p, len) };
        return Err(libc::EEXIST);
    }
    Ok(addr)
}

/// Maps `len` bytes of `fd` from `offset` at exactly `addr`, shared; writable or
/// read-only.
///
/// # Safety
///
/// `[addr, addr + len)` must be address space this crate reserved with [`reserve`] and that
/// no live Rust reference points into: `MAP_FIXED` replaces whatever is there.
pub(crate) unsafe fn map_fixed(
    addr: usize,
    len: usize,
    fd: &OwnedFd,
    offset: u64,
    writable: bool,
    populate: bool,
) -> Result<(), i32> {
    let mut flags = libc::MAP_SHARED | libc::MAP_FIXED;
    if populate {
        flags |= libc::MAP_POPULATE;
    }
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    // SAFETY: the caller guarantees the target range is our own reservation with nothing
    // borrowed inside it; the descriptor is valid for the call.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            flags,
            fd.as_raw_fd(),
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    Ok(())
}

/// Unmaps `[addr, addr + len)`.
///
/// # Safety
///
/// The range must be a mapping (or reservation) this crate made, with no live reference
/// into it and no device able to reach it through a wiring this crate still counts.
pub(crate) unsafe fn unmap(addr: usize, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: per the caller's contract the range is ours and unreferenced.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// `mlock(addr, len)`: faults the pages in and keeps them resident. Returns the errno on
/// failure. mlock only reads the page tables of the range; it never dereferences it in
/// Rust, so any address is safe to pass (unmapped ones fail with ENOMEM).
pub(crate) fn mlock(addr: usize, len: usize) -> Result<(), i32> {
    // SAFETY: mlock takes an address range, not a Rust reference; the kernel validates it
    // and fails with ENOMEM if it is not mapped.
    if unsafe { libc::mlock(addr as *const libc::c_void, len) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Whether the page at `addr` is mapped in this process (`msync` answers ENOMEM for
/// unmapped ranges and touches nothing).
pub(crate) fn is_mapped(addr: usize) -> bool {
    // SAFETY: msync with MS_ASYNC on a page-aligned address only queries the mapping; the
    // kernel validates the range and reads no Rust memory.
    unsafe { libc::msync(addr as *mut libc::c_void, 1, libc::MS_ASYNC) == 0 }
}

/// `munlock(addr, len)`.
pub(crate) fn munlock(addr: usize, len: usize) {
    // SAFETY: as for mlock, the kernel validates the range; unlocking never invalidates
    // memory, it only allows the kernel to page it out again.
    unsafe { libc::munlock(addr as *const libc::c_void, len) };
}

/// Copies `dst.len()` bytes from `src`.
///
/// # Safety
///
/// `[src, src + dst.len())` must be mapped, readable memory of this process that no Rust
/// `&mut` reference aliases for the duration of the call.
pub(crate) unsafe fn copy_from(src: usize, dst: &mut [u8]) {
    // SAFETY: the caller guarantees the source range is valid; `dst` is a distinct Rust
    // slice, so the ranges do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
}

/// Copies `src` to `dst`.
///
/// # Safety
///
/// `[dst, dst + src.len())` must be mapped, writable memory of this process that no Rust
/// reference aliases for the duration of the call.
pub(crate) unsafe fn copy_to(dst: usize, src: &[u8]) {
    // SAFETY: the caller guarantees the destination is valid and unaliased; `src` is a
    // distinct Rust slice.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
}

/// One volatile load of `width` bytes (1, 2, 4 or 8) at `addr`, zero-extended.
///
/// # Safety
///
/// `addr` must be mapped, readable, and aligned to `width`.
pub(crate) unsafe fn read_volatile(addr: usize, width: u64) -> u64 {
    // SAFETY: (all arms) the caller guarantees a mapped, readable, naturally aligned
    // address; each arm loads exactly `width` bytes once.
    unsafe {
        match width {
            1 => std::ptr::read_volatile(addr as *const u8) as u64,
            2 => std::ptr::read_volatile(addr as *const u16) as u64,
            4 => std::ptr::read_volatile(addr as *const u32) as u64,
            _ => std::ptr::read_volatile(addr as *const u64),
        }
    }
}

/// One volatile store of the low `width` bytes of `value` at `addr`.
///
/// # Safety
///
/// `addr` must be mapped, writable, aligned to `width`, and not aliased by a Rust reference.
pub(crate) unsafe fn write_volatile(addr: usize, width: u64, value: u64) {
    // SAFETY: (all arms) the caller guarantees a mapped, writable, naturally aligned,
    // unaliased address; each arm stores exactly `width` bytes once.
    unsafe {
        match width {
            1 => std::ptr::write_volatile(addr as *mut u8, value as u8),
            2 => std::ptr::write_volatile(addr as *mut u16, value as u16),
            4 => std::ptr::write_volatile(addr as *mut u32, value as u32),
            _ => std::ptr::write_volatile(addr as *mut u64, value),
        }
    }
}

/// Whether this CPU has `clflushopt` (CPUID leaf 7, EBX bit 23).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_clflushopt() -> bool {
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    leaf7.ebx & (1 << 23) != 0
}

/// Writes back and evicts every cache line of `[addr, addr + len)`, then fences.
///
/// # Safety
///
/// The range must be mapped memory of this process (clflush of an unmapped address
/// faults).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn flush_lines(addr: usize, len: usize, opt: bool) {
    const LINE: usize = 64;
    let mut p = addr & !(LINE - 1);
    let end = addr + len;
    while p < end {
        if opt {
            // SAFETY: `p` lies in a line of the caller's mapped range; clflushopt was
            // detected by CPUID before `opt` was set.
            unsafe { clflushopt(p as *const u8) };
        } else {
            // SAFETY: `p` lies in a line of the caller's mapped range; clflush is baseline
            // x86_64.
            unsafe { core::arch::x86_64::_mm_clflush(p as *const u8) };
        }
        p += LINE;
    }
    // SAFETY: mfence has no memory operands; it orders the flushes before later accesses.
    unsafe { core::arch::x86_64::_mm_mfence() };
}

/// `clflushopt` of the line holding `p`.
///
/// # Safety
///
/// `p` must point into mapped memory and the CPU must support clflushopt.
#[cfg(target_arch = "x86_64")]
unsafe fn clflushopt(p: *const u8) {
    // SAFETY: the caller guarantees `p` is mapped and the feature is present; the
    // instruction only writes back and evicts the line, touching no register but its input.
    unsafe { core::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags)) }
}

/// The effective user ID is 0.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and takes no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// RLIMIT_MEMLOCK as (soft, hard); `u64::MAX` means unlimited.
pub(crate) fn memlock_limit() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return (0, 0);
    }
    (r.rlim_cur, r.rlim_max)
}

/// The OS page size.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf with a valid name has no memory arguments.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v <= 0 {
        4096
    } else {
        v as u64
    }
}
