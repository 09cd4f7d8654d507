//! The unsafe floor of the Linux backend: mappings, raw copies, volatile accesses, cache-line
//! flushes and `mlock`.
//!
//! Everything that dereferences an address or changes the address space goes through three
//! types whose invariants carry the proof of validity, so the rest of the crate is safe code:
//!
//! * [`Mapping`] owns a range of address space this crate mapped (`mmap`) and unmaps it on
//!   drop. Only it can hand out [`Span`]s of its memory, bounded by its length.
//! * [`RawRegion`] is memory a caller vouched for in an `unsafe` registration (a `Vec` of
//!   theirs, a VFIO BAR mapping). Its constructor is `unsafe` and carries the contract.
//! * [`Span`] is a borrowed, bounds-checked window of one of those two. Copies, volatile
//!   loads and stores, and cache flushes are methods of `Span`; a `Span` cannot outlive the
//!   mapping or region it came from, and the host only holds one while it holds its lock.
//! * [`Lent`] is a range of a [`Mapping`] lent out as a Rust slice. While it is lent the
//!   mapping hands out no span that could write it (nor, for a mutable lend, read it), and
//!   it is never unmapped.
//!
//! Policy: every `unsafe` block carries a `// SAFETY:` comment naming the invariant it relies
//! on and the check that established it; every `unsafe fn` has a `# Safety` section. The only
//! other `unsafe` of the crate is the two registration functions of
//! [`Host`](crate::Host), which construct a [`RawRegion`] from the caller's promise.
//!
//! Addresses are kept as `usize` with their provenance *exposed*
//! (`<*const T>::expose_provenance`) and turned back into pointers with
//! [`std::ptr::with_exposed_provenance_mut`], so a pointer made from a stored address is
//! valid for the memory the original pointer was.

use rustix::fs::MemfdFlags;
use rustix::io::Errno;
use rustix::mm::{MapFlags, MsyncFlags, ProtFlags};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr;

/// The size of one CPU data-cache line on every x86_64 CPU dmakit supports.
#[cfg(target_arch = "x86_64")]
pub(crate) const CACHE_LINE: usize = 64;

/// The OS page size (from the auxiliary vector).
pub(crate) fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// A new memory object of `len` bytes: `memfd_create(MFD_CLOEXEC [| MFD_HUGETLB |
/// MFD_HUGE_2MB])` then `ftruncate`. Its pages are zero until written.
pub(crate) fn memfd(len: u64, huge: bool) -> Result<OwnedFd, (&'static str, Errno)> {
    let mut flags = MemfdFlags::CLOEXEC;
    if huge {
        flags |= MemfdFlags::HUGETLB | MemfdFlags::HUGE_2MB;
    }
    let fd = rustix::fs::memfd_create("dmakit", flags).map_err(|e| ("memfd_create", e))?;
    rustix::fs::ftruncate(&fd, len).map_err(|e| ("ftruncate(memfd)", e))?;
    Ok(fd)
}

/// Address space this crate mapped.
///
/// # Invariants
///
/// `[addr, addr + len)` (with `len > 0`) is a mapping made by this module and unmapped by
/// nobody but this value's `Drop`, which leaves it mapped for good while `lends` is not
/// empty; it is readable, and writable when `writable` is set. The `guard` bytes right
/// before and right after it are this module's `PROT_NONE` reservation, also unmapped only
/// by `Drop`. The memory behind it is only reached through [`Span`]s borrowed from this
/// value and the [`Lent`] ranges recorded in `lends` (or through raw addresses the crate's
/// *callers* obtained, which is their own `unsafe` business). No span that can write a lent
/// range exists, nor any span that overlaps a range lent mutably.
#[derive(Debug)]
pub(crate) struct Mapping {
    addr: usize,
    len: usize,
    writable: bool,
    guard: usize,
    /// Ranges lent out: (start, length, mutably).
    lends: Vec<(usize, usize, bool)>,
}

/// A range of a [`Mapping`] lent out as a Rust slice (see [`Mapping::lend`]).
///
/// # Invariants
///
/// `[addr, addr + len)` lies inside the mapping that starts at `base`, whose `lends` holds
/// this range (mutably iff `mutable`) until [`Mapping::end_lend`] takes this value back. That
/// mapping hence stays mapped, gives out no span that could write the range (or, if
/// `mutable`, reach it at all), and lends no overlapping range mutably (nor, if `mutable`,
/// at all).
#[derive(Debug)]
pub(crate) struct Lent {
    base: usize,
    addr: usize,
    len: usize,
    mutable: bool,
}

impl Lent {
    /// The start of the mapping it was lent from.
    pub(crate) fn base(&self) -> u64 {
        self.base as u64
    }

    /// The lent bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: by the invariant the range stays mapped and readable for as long as this
        // value lives (its mapping is not unmapped while the lend is recorded), and nothing
        // this module hands out of that mapping writes it meanwhile: no writable span of it,
        // no mutable lend. Other views of the same pages (a second mapping of the memfd, a
        // registered region) are excluded by the host, which lends no memory that has one
        // and makes none of lent memory (`lend.rs`). The slice borrows `self`, so it ends
        // before the lend does.
        unsafe {
            std::slice::from_raw_parts(ptr::with_exposed_provenance::<u8>(self.addr), self.len)
        }
    }

    /// The lent bytes, writable; `None` for a shared lend.
    pub(crate) fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        if !self.mutable {
            return None;
        }
        // SAFETY: as for `bytes`, and a mutable lend is only made of a writable mapping
        // (`Mapping::lend`) and excludes every span overlapping the range and every other
        // lend of it (other views of the pages are excluded by the host, as for `bytes`),
        // so this is the only way to reach those bytes while it lives; the slice borrows
        // `self` mutably, so there is one at a time.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                ptr::with_exposed_provenance_mut::<u8>(self.addr),
                self.len,
            )
        })
    }
}

/// Inaccessible address space reserved to carve mappings from; unmapped on drop.
///
/// # Invariants
///
/// `[addr, addr + len)` is a `PROT_NONE` anonymous mapping made by [`Reservation::new`] or
/// [`Reservation::at`], or (after [`Reservation::fill`]) this module's mapping of a memfd in
/// its place; nothing outside this module holds its address yet.
struct Reservation {
    addr: usize,
    len: usize,
}

impl Reservation {
    /// `len` bytes anywhere.
    fn new(len: usize) -> Result<Reservation, Errno> {
        // SAFETY: a null hint lets the kernel choose fresh address space; an anonymous
        // PROT_NONE mapping touches no existing memory.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }?;
        Ok(Reservation {
            addr: p.expose_provenance(),
            len,
        })
    }

    /// `len` bytes at exactly `addr`; `EEXIST` if anything is mapped there (never replaced).
    fn at(addr: usize, len: usize) -> Result<Reservation, Errno> {
        let want = ptr::with_exposed_provenance_mut::<c_void>(addr);
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping: the call either
        // creates a fresh PROT_NONE mapping at `addr` or fails, so no memory anyone uses is
        // touched.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                want,
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED_NOREPLACE,
            )
        }?;
        let r = Reservation {
            addr: p.expose_provenance(),
            len,
        };
        if r.addr != addr {
            // Kernels before 4.17 ignore the flag and treat `addr` as a hint; dropping `r`
            // unmaps what they placed elsewhere.
            return Err(Errno::EXIST);
        }
        Ok(r)
    }

    /// Maps `len` bytes of `fd` from `offset` at `addr`, which must lie inside the
    /// reservation; shared, readable, writable when asked, populated when asked.
    fn fill(
        &self,
        addr: usize,
        len: usize,
        fd: impl AsFd,
        offset: u64,
        writable: bool,
        populate: bool,
    ) -> Result<(), Errno> {
        let inside = addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.addr + self.len);
        if !inside || len == 0 {
            return Err(Errno::INVAL);
        }
        let mut flags = MapFlags::SHARED | MapFlags::FIXED;
        if populate {
            flags |= MapFlags::POPULATE;
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        let at = ptr::with_exposed_provenance_mut::<c_void>(addr);
        // SAFETY: MAP_FIXED replaces what is at [addr, addr + len); the check above proved
        // that range lies inside this reservation, which by its invariant is address space
        // this module made and nobody else knows, so nothing is replaced that anyone uses.
        unsafe { rustix::mm::mmap(at, len, prot, flags, fd, offset) }?;
        Ok(())
    }

    /// Keeps `[start, start + len)` (inside the reservation) as a [`Mapping`] and unmaps the
    /// rest.
    fn keep(self, start: usize, len: usize, writable: bool) -> Mapping {
        let (base, total) = (self.addr, self.len);
        std::mem::forget(self);
        let head = start - base;
        let tail = base + total - (start + len);
        // SAFETY: head and tail are the parts of our own reservation outside the kept range;
        // nothing references them.
        unsafe {
            unmap_raw(base, head);
            unmap_raw(start + len, tail);
        }
        // INVARIANT: [start, start + len) is our mapping, known to nobody else yet.
        Mapping {
            addr: start,
            len,
            writable,
            guard: 0,
            lends: Vec::new(),
        }
    }

    /// Keeps the whole reservation: `[start, start + len)` as a [`Mapping`] and `guard`
    /// bytes on each side of it as inaccessible `PROT_NONE` space, which must be exactly the
    /// rest of the reservation.
    fn keep_guarded(self, start: usize, len: usize, writable: bool, guard: usize) -> Mapping {
        std::mem::forget(self);
        // INVARIANT: [start, start + len) is our mapping and the guards around it our
        // PROT_NONE reservation, known to nobody else yet.
        Mapping {
            addr: start,
            len,
            writable,
            guard,
            lends: Vec::new(),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: by the invariant the whole range is ours and referenced by nobody.
        unsafe { unmap_raw(self.addr, self.len) };
    }
}

/// `munmap`, ignoring the (impossible for our own ranges) failure.
///
/// # Safety
///
/// `[addr, addr + len)` must be address space this module mapped and that nothing will use
/// again.
unsafe fn unmap_raw(addr: usize, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: the caller's contract: our own mapping, unused from now on.
    let _ = unsafe { rustix::mm::munmap(ptr::with_exposed_provenance_mut(addr), len) };
}

impl Mapping {
    /// A private, readable and writable anonymous mapping of `len` bytes (zero-filled).
    pub(crate) fn anonymous(len: usize) -> Result<Mapping, Errno> {
        let r = Reservation::new(len)?;
        // Turn the reservation into accessible memory in place.
        let at = ptr::with_exposed_provenance_mut::<c_void>(r.addr);
        // SAFETY: MAP_FIXED over our own PROT_NONE reservation, which nobody else knows.
        unsafe {
            rustix::mm::mmap_anonymous(
                at,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED,
            )
        }?;
        let addr = r.addr;
        Ok(r.keep(addr, len, true))
    }

    /// `len` bytes of `fd` from offset 0, shared, readable and writable, at an address that
    /// is a multiple of `align` (a power of two), populated at once when `populate`.
    pub(crate) fn of_memfd(
        fd: &OwnedFd,
        len: usize,
        align: usize,
        populate: bool,
    ) -> Result<Mapping, Errno> {
        let page = page_size() as usize;
        let slack = if align > page { align } else { 0 };
        let r = Reservation::new(len.checked_add(slack).ok_or(Errno::NOMEM)?)?;
        let start = r.addr.next_multiple_of(align.max(1));
        r.fill(start, len, fd, 0, true, populate)?;
        Ok(r.keep(start, len, true))
    }

    /// `pieces` (memory object, offset, length) mapped back to back, shared, populated, at
    /// exactly `at` (`EEXIST` if anything is there) or anywhere. All or nothing. With
    /// `guard > 0` (a page multiple; anywhere only), `guard` bytes of inaccessible
    /// `PROT_NONE` reservation are kept on each side: an access there faults, and the
    /// kernel places nothing else there until the mapping is dropped.
    pub(crate) fn of_pieces(
        pieces: &[(&OwnedFd, u64, usize)],
        at: Option<usize>,
        writable: bool,
        guard: usize,
    ) -> Result<Mapping, Errno> {
        let total = pieces
            .iter()
            .try_fold(0usize, |t, p| t.checked_add(p.2))
            .ok_or(Errno::NOMEM)?;
        let reserved = guard
            .checked_mul(2)
            .and_then(|g| g.checked_add(total))
            .ok_or(Errno::NOMEM)?;
        let r = match (at, guard) {
            (Some(a), 0) => Reservation::at(a, total)?,
            (Some(_), _) => return Err(Errno::INVAL),
            (None, _) => Reservation::new(reserved)?,
        };
        let start = r.addr + guard;
        let mut cursor = start;
        for &(fd, offset, len) in pieces {
            // On failure `r` drops and unmaps everything mapped so far.
            r.fill(cursor, len, fd, offset, writable, true)?;
            cursor += len;
        }
        if guard == 0 {
            Ok(r.keep(start, total, writable))
        } else {
            Ok(r.keep_guarded(start, total, writable, guard))
        }
    }

    /// The first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// Whether stores are allowed.
    pub(crate) fn writable(&self) -> bool {
        self.writable
    }

    /// `[addr, addr + len)`, if it lies inside this mapping and is not lent mutably; a
    /// read-only span if part of it is lent.
    pub(crate) fn span(&self, addr: u64, len: u64) -> Option<Span<'_>> {
        let (addr, len) = within(self.addr, self.len, addr, len)?;
        let mut writable = self.writable;
        for &(a, l, mutable) in &self.lends {
            if overlap(a, l, addr, len) {
                if mutable {
                    return None;
                }
                writable = false;
            }
        }
        // SAFETY: `within` proved the range lies inside this mapping, which by the type's
        // invariant stays mapped (readable; writable iff `self.writable`) until `self` is
        // dropped, which the span's borrow of `self` prevents while it lives. The loop
        // above keeps the invariant about lends: no span of a range lent mutably, and a
        // read-only one of a range lent shared.
        Some(unsafe { Span::new(addr, len, writable) })
    }

    /// The lends overlapping `[addr, addr + len)`: (any, any mutable).
    pub(crate) fn lent(&self, addr: u64, len: u64) -> (bool, bool) {
        let (Ok(addr), Ok(len)) = (usize::try_from(addr), usize::try_from(len)) else {
            return (false, false);
        };
        let mut out = (false, false);
        for &(a, l, mutable) in &self.lends {
            if overlap(a, l, addr, len) {
                out.0 = true;
                out.1 |= mutable;
            }
        }
        out
    }

    /// Whether anything of the mapping is lent.
    pub(crate) fn is_lent(&self) -> bool {
        !self.lends.is_empty()
    }

    /// Lends `[addr, addr + len)` (non-empty, inside the mapping) as a slice, mutably or
    /// not. `None` if the range is not inside, is empty, overlaps a mutable lend, or (for
    /// a mutable lend) overlaps any lend or the mapping is read-only.
    ///
    /// Taking `&mut self` proves no span of this mapping is alive; the spans made later
    /// respect the lend (see [`span`](Self::span)).
    pub(crate) fn lend(&mut self, addr: u64, len: u64, mutable: bool) -> Option<Lent> {
        let (addr, len) = within(self.addr, self.len, addr, len)?;
        if len == 0 || (mutable && !self.writable) {
            return None;
        }
        let (any, any_mut) = self.lent(addr as u64, len as u64);
        if any_mut || (mutable && any) {
            return None;
        }
        self.lends.push((addr, len, mutable));
        // INVARIANT: the range is inside this mapping and now recorded in `lends`.
        Some(Lent {
            base: self.addr,
            addr,
            len,
            mutable,
        })
    }

    /// Ends a lend made by [`lend`](Self::lend) of this mapping; gives it back if it is not
    /// one of this mapping's.
    pub(crate) fn end_lend(&mut self, lent: Lent) -> Result<(), Lent> {
        if lent.base != self.addr {
            return Err(lent);
        }
        match self
            .lends
            .iter()
            .position(|&l| l == (lent.addr, lent.len, lent.mutable))
        {
            Some(i) => {
                self.lends.swap_remove(i);
                Ok(())
            }
            None => Err(lent),
        }
    }

    /// Gives up ownership without unmapping: the memory stays mapped for the rest of the
    /// process (used when a device may still reach it).
    pub(crate) fn leak(self) {
        std::mem::forget(self);
    }
}

/// Whether `[a, a + l)` and `[b, b + m)` share a byte.
fn overlap(a: usize, l: usize, b: usize, m: usize) -> bool {
    a < b.saturating_add(m) && b < a.saturating_add(l)
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.is_lent() {
            // A slice of it may still be in use (a lend whose end was never reported):
            // keep the memory mapped for the rest of the process.
            return;
        }
        // SAFETY: by the invariant this is our mapping with our guards around it; spans
        // borrow `self`, so none is alive, and nothing of it is lent.
        unsafe { unmap_raw(self.addr - self.guard, self.len + 2 * self.guard) };
    }
}

/// `[addr, addr + len)` as `usize`s if it lies inside `[base, base + size)`.
fn within(base: usize, size: usize, addr: u64, len: u64) -> Option<(usize, usize)> {
    let addr = usize::try_from(addr).ok()?;
    let len = usize::try_from(len).ok()?;
    let end = addr.checked_add(len)?;
    (addr >= base && end <= base + size).then_some((addr, len))
}

/// Memory of this process that a caller registered and vouched for.
///
/// # Invariants
///
/// The constructor's contract holds for `[addr, addr + len)` for as long as this value
/// lives.
#[derive(Debug)]
pub(crate) struct RawRegion {
    addr: usize,
    len: usize,
}

impl RawRegion {
    /// Remembers `[ptr, ptr + len)`.
    ///
    /// # Safety
    ///
    /// Until this value is dropped, `[ptr, ptr + len)` must stay mapped, readable and
    /// writable memory of this process that may be read and written from any thread, and no
    /// Rust reference to it may be used while a [`Span`] of it is (copies and volatile
    /// accesses through spans must not race with Rust references).
    pub(crate) unsafe fn new(ptr: *mut u8, len: usize) -> RawRegion {
        RawRegion {
            addr: ptr.expose_provenance(),
            len,
        }
    }

    /// The first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// Its length.
    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }

    /// `[addr, addr + len)`, if it lies inside the region.
    pub(crate) fn span(&self, addr: u64, len: u64) -> Option<Span<'_>> {
        let (addr, len) = within(self.addr, self.len, addr, len)?;
        // SAFETY: `within` proved the range is inside the region, which the registration
        // contract (the type's invariant) keeps mapped, readable and writable while `self`
        // lives; the span borrows `self`.
        Some(unsafe { Span::new(addr, len, true) })
    }
}

/// A `memmove` between two ranges that were [`Span`]s, without their lifetimes: made by
/// [`Span::loose_copy_to`] while the spans were vouched for, run after that borrow ended
/// (the host releases its registry lock before a large copy, see `Host::copy_unlocked`).
#[derive(Debug)]
#[must_use = "a loose copy does nothing until it is run"]
pub(crate) struct LooseCopy {
    from: usize,
    to: usize,
    len: usize,
}

impl LooseCopy {
    /// Copies the shorter span's length of bytes in one `memmove`; returns that count.
    ///
    /// # Safety
    ///
    /// Both spans' invariants must still hold although their borrows ended: the source
    /// mapped and readable, the destination mapped and writable, and neither range accessed
    /// through Rust references or by any other copy until this returns.
    pub(crate) unsafe fn run(self) -> usize {
        // SAFETY: the caller keeps both ranges as the spans found them (mapped, readable or
        // writable, unreferenced) for the whole call; `ptr::copy` is `memmove`, so the ranges
        // may overlap.
        unsafe {
            ptr::copy(
                ptr::with_exposed_provenance::<u8>(self.from),
                ptr::with_exposed_provenance_mut::<u8>(self.to),
                self.len,
            )
        };
        self.len
    }
}

/// A window `[addr, addr + len)` of memory that stays valid for `'a`.
///
/// # Invariants
///
/// The memory is mapped and readable for `'a`, writable if `writable`, and not accessed
/// through Rust references while the span is used.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span<'a> {
    addr: usize,
    len: usize,
    writable: bool,
    _life: PhantomData<&'a ()>,
}

impl<'a> Span<'a> {
    /// # Safety
    ///
    /// `[addr, addr + len)` must be mapped and readable (writable if `writable`) memory of
    /// this process for `'a`, not accessed through Rust references while the span is used.
    unsafe fn new(addr: usize, len: usize, writable: bool) -> Span<'a> {
        Span {
            addr,
            len,
            writable,
            _life: PhantomData,
        }
    }

    /// The first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// Copies the first `buf.len()` bytes (at most the span) into `buf`; returns the count.
    pub(crate) fn read(&self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.len);
        // SAFETY: by the invariant the first n ≤ len bytes are mapped and readable and not
        // referenced by Rust; `buf` is a distinct Rust slice, so the ranges do not overlap.
        unsafe {
            ptr::copy_nonoverlapping(
                ptr::with_exposed_provenance::<u8>(self.addr),
                buf.as_mut_ptr(),
                n,
            )
        };
        n
    }

    /// Copies `data` (at most the span) to the span; returns the count, or `None` if the
    /// span is read-only.
    pub(crate) fn write(&self, data: &[u8]) -> Option<usize> {
        if !self.writable {
            return None;
        }
        let n = data.len().min(self.len);
        // SAFETY: by the invariant the first n ≤ len bytes are mapped, writable (checked
        // just above) and not referenced by Rust; `data` is a distinct Rust slice.
        unsafe {
            ptr::copy_nonoverlapping(
                data.as_ptr(),
                ptr::with_exposed_provenance_mut::<u8>(self.addr),
                n,
            )
        };
        Some(n)
    }

    /// Copies the first `min(self.len, dst.len)` bytes of this span to the start of `dst`
    /// in one `memmove`; returns the count, or `None` (nothing copied) if `dst` is
    /// read-only. Spans that overlap in the address space are copied as if through a
    /// temporary. Two spans at different addresses that reach the same pages (a second
    /// mapping) are *not* detected here: the caller must only pass spans it knows cannot
    /// alias that way (see `CpuAccess::copy_virt` in `cpu.rs`).
    pub(crate) fn copy_to(&self, dst: &Span<'_>) -> Option<usize> {
        let copy = self.loose_copy_to(dst)?;
        // SAFETY: both spans are borrowed for this call, so their invariants hold until it
        // returns: the source mapped and readable, `dst` mapped and writable (`loose_copy_to`
        // checked), neither referenced by Rust while the spans are used.
        Some(unsafe { copy.run() })
    }

    /// [`copy_to`](Self::copy_to), to be run later, once the borrows that vouch for the two
    /// spans have ended: the two ranges, or `None` if `dst` is read-only. Making it is safe;
    /// running it is not (see [`LooseCopy::run`]).
    pub(crate) fn loose_copy_to(&self, dst: &Span<'_>) -> Option<LooseCopy> {
        dst.writable.then(|| LooseCopy {
            from: self.addr,
            to: dst.addr,
            len: self.len.min(dst.len),
        })
    }

    /// Whether stores through the span are allowed.
    pub(crate) fn writable(&self) -> bool {
        self.writable
    }

    /// Whether a `width`-byte access at the start is inside the span and naturally aligned.
    fn fits(&self, width: usize) -> bool {
        matches!(width, 1 | 2 | 4 | 8) && self.len >= width && self.addr.is_multiple_of(width)
    }

    /// One volatile load of exactly `width` bytes (1, 2, 4 or 8) at the start of the span,
    /// zero-extended; `None` if the access would not fit or is not naturally aligned.
    pub(crate) fn load(&self, width: usize) -> Option<u64> {
        if !self.fits(width) {
            return None;
        }
        let p = ptr::with_exposed_provenance::<u8>(self.addr);
        // SAFETY: (all arms) by the invariant the span is mapped and readable; `fits` just
        // checked that `width` bytes lie inside it and that the address is aligned to
        // `width`, so each arm's pointer is valid and aligned for exactly one load.
        let v = unsafe {
            match width {
                1 => ptr::read_volatile(p) as u64,
                2 => ptr::read_volatile(p.cast::<u16>()) as u64,
                4 => ptr::read_volatile(p.cast::<u32>()) as u64,
                _ => ptr::read_volatile(p.cast::<u64>()),
            }
        };
        Some(v)
    }

    /// One volatile store of the low `width` bytes of `value` at the start of the span;
    /// `false` (nothing stored) if it would not fit, is not aligned, or the span is
    /// read-only.
    pub(crate) fn store(&self, width: usize, value: u64) -> bool {
        if !self.fits(width) || !self.writable {
            return false;
        }
        let p = ptr::with_exposed_provenance_mut::<u8>(self.addr);
        // SAFETY: (all arms) by the invariant the span is mapped; it is writable (checked
        // above) and `fits` checked size and natural alignment, so each arm's pointer is
        // valid and aligned for exactly one store of its width.
        unsafe {
            match width {
                1 => ptr::write_volatile(p, value as u8),
                2 => ptr::write_volatile(p.cast::<u16>(), value as u16),
                4 => ptr::write_volatile(p.cast::<u32>(), value as u32),
                _ => ptr::write_volatile(p.cast::<u64>(), value),
            }
        }
        true
    }

    /// Writes back and evicts every cache line touching the span (`clflushopt` when `opt`,
    /// else `clflush`), then `mfence` so the flushes complete before later accesses.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn flush_cache_lines(&self, opt: bool) {
        use core::arch::x86_64::{_mm_clflush, _mm_mfence};
        let end = self.addr + self.len;
        let mut line = self.addr & !(CACHE_LINE - 1);
        while line < end {
            // The first line may start before the span: flushing at the span's first byte
            // flushes that same line without naming an address outside the span.
            let p = ptr::with_exposed_provenance::<u8>(line.max(self.addr));
            if opt {
                // SAFETY: `p` is inside the span (mapped by the invariant); `opt` is only
                // set when CPUID reported clflushopt (`has_clflushopt`).
                unsafe { clflushopt(p) };
            } else {
                // SAFETY: `p` is inside the span, so mapped; clflush is baseline x86_64
                // (SSE2) and only writes back and evicts the line.
                unsafe { _mm_clflush(p) };
            }
            line += CACHE_LINE;
        }
        // SAFETY: mfence has no operands; it orders the flushes before later accesses.
        unsafe { _mm_mfence() };
    }
}

/// `clflushopt` of the line holding `p`.
///
/// # Safety
///
/// `p` must point into mapped memory of this process and the CPU must have clflushopt.
#[cfg(target_arch = "x86_64")]
unsafe fn clflushopt(p: *const u8) {
    // SAFETY: per the contract `p` is mapped and the instruction exists; it writes back and
    // evicts one line and touches no register but its input.
    unsafe { core::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags)) }
}

/// Whether this CPU has `clflushopt` (CPUID leaf 7, sub-leaf 0, EBX bit 23).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_clflushopt() -> bool {
    let max_leaf = core::arch::x86_64::__cpuid(0).eax;
    max_leaf >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 23) != 0
}

/// Whether this CPU has `clflushopt` (never, off x86_64).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn has_clflushopt() -> bool {
    false
}

/// `mlock(addr, len)`: faults the pages in and keeps them resident.
///
/// mlock works on address ranges, not Rust references: the kernel validates the range
/// (`ENOMEM` if part of it is unmapped) and never lets Rust observe anything, so any address
/// is safe to pass. Beware that a range with a hole is locked up to the hole before the call
/// fails; [`is_mapped`] first avoids that.
pub(crate) fn mlock(addr: u64, len: u64) -> Result<(), Errno> {
    let (Ok(addr), Ok(len)) = (usize::try_from(addr), usize::try_from(len)) else {
        return Err(Errno::NOMEM);
    };
    // SAFETY: mlock only changes the residency of pages of this process; the kernel checks
    // the range, and no memory is read or written through it.
    unsafe { rustix::mm::mlock(ptr::with_exposed_provenance_mut(addr), len) }
}

/// `madvise(addr, len, MADV_HUGEPAGE)`: asks for transparent huge pages where the range's
/// 2 MiB-aligned parts are faulted in from now on.
pub(crate) fn advise_huge(addr: u64, len: u64) -> Result<(), Errno> {
    let (Ok(addr), Ok(len)) = (usize::try_from(addr), usize::try_from(len)) else {
        return Err(Errno::NOMEM);
    };
    // SAFETY: MADV_HUGEPAGE only changes how the kernel backs future faults of the range;
    // it never changes or discards contents, and the kernel checks the range.
    unsafe {
        rustix::mm::madvise(
            ptr::with_exposed_provenance_mut(addr),
            len,
            rustix::mm::Advice::LinuxHugepage,
        )
    }
}

/// `munlock(addr, len)`; failures (an unmapped range) are ignored: there is then nothing to
/// unlock.
pub(crate) fn munlock(addr: u64, len: u64) {
    let (Ok(addr), Ok(len)) = (usize::try_from(addr), usize::try_from(len)) else {
        return;
    };
    // SAFETY: as for mlock: unlocking only lets the kernel page memory out again; it never
    // invalidates it and reads or writes nothing.
    let _ = unsafe { rustix::mm::munlock(ptr::with_exposed_provenance_mut(addr), len) };
}

/// Whether every page of `[addr, addr + len)` (page aligned) is mapped in this process:
/// `msync(MS_ASYNC)` fails with ENOMEM on a hole and otherwise does nothing for anonymous
/// and memfd memory.
pub(crate) fn is_mapped(addr: u64, len: u64) -> bool {
    let (Ok(addr), Ok(len)) = (usize::try_from(addr), usize::try_from(len)) else {
        return false;
    };
    // SAFETY: msync only inspects (and for file mappings schedules write-back of) the
    // range; the kernel validates it and no Rust memory is accessed.
    unsafe {
        rustix::mm::msync(
            ptr::with_exposed_provenance_mut(addr),
            len,
            MsyncFlags::ASYNC,
        )
    }
    .is_ok()
}

#[cfg(test)]
mod tests;
