//! Every `unsafe` operation of the crate, each a few lines: copies and volatile accesses
//! through the direct map, cache-line flushes, control registers, MSRs, the TSC and I/O
//! ports. Everything else in the crate is safe code that validates an address before it
//! calls in here.

use core::arch::asm;
use dmakit::platform::Width;

/// Copies `buf.len()` bytes from virtual address `va` into `buf`.
///
/// # Safety
///
/// `[va, va + buf.len())` is readable memory, mapped for the whole call, that nothing
/// else writes concurrently as a Rust reference would forbid (device memory through an
/// uncached mapping is fine: the copy is bytewise volatile there only if the caller uses
/// [`volatile_read`] instead).
pub(crate) unsafe fn copy_from(va: u64, buf: &mut [u8]) {
    // SAFETY: the caller guarantees the source range is mapped and readable; `buf` is a
    // distinct Rust buffer, so the two do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(va as *const u8, buf.as_mut_ptr(), buf.len()) }
}

/// Copies `data` to virtual address `va`.
///
/// # Safety
///
/// `[va, va + data.len())` is writable memory, mapped for the whole call, that no Rust
/// reference points into.
pub(crate) unsafe fn copy_to(va: u64, data: &[u8]) {
    // SAFETY: the caller guarantees the destination is mapped, writable and not aliased by
    // a reference; `data` is a distinct Rust buffer.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), va as *mut u8, data.len()) }
}

/// Zero-fills `len` bytes at virtual address `va`.
///
/// # Safety
///
/// As for [`copy_to`].
pub(crate) unsafe fn zero(va: u64, len: u64) {
    // SAFETY: the caller guarantees the range is mapped, writable and not aliased.
    unsafe { core::ptr::write_bytes(va as *mut u8, 0, len as usize) }
}

/// One load of `width` bytes at `va`, exactly once, zero-extended.
///
/// # Safety
///
/// `va` is naturally aligned for `width` and mapped (RAM or device memory) for the call.
pub(crate) unsafe fn volatile_read(va: u64, width: Width) -> u64 {
    // SAFETY: alignment and mapping are the caller's guarantee; each arm reads one value of
    // exactly the asked width.
    unsafe {
        match width {
            Width::W8 => u64::from(core::ptr::read_volatile(va as *const u8)),
            Width::W16 => u64::from(core::ptr::read_volatile(va as *const u16)),
            Width::W32 => u64::from(core::ptr::read_volatile(va as *const u32)),
            Width::W64 => core::ptr::read_volatile(va as *const u64),
        }
    }
}

/// One store of the low `width` bytes of `value` at `va`, exactly once.
///
/// # Safety
///
/// `va` is naturally aligned for `width`, mapped writable for the call, and no Rust
/// reference points at it.
pub(crate) unsafe fn volatile_write(va: u64, width: Width, value: u64) {
    // SAFETY: as for `volatile_read`, plus the caller's promise that no reference aliases.
    unsafe {
        match width {
            Width::W8 => core::ptr::write_volatile(va as *mut u8, value as u8),
            Width::W16 => core::ptr::write_volatile(va as *mut u16, value as u16),
            Width::W32 => core::ptr::write_volatile(va as *mut u32, value as u32),
            Width::W64 => core::ptr::write_volatile(va as *mut u64, value),
        }
    }
}

/// The CPU's cache facts from CPUID: line size in bytes and whether `clflushopt` exists.
pub(crate) fn cache_facts() -> (u64, bool) {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    let line = u64::from((leaf1.ebx >> 8) & 0xff) * 8;
    let max = core::arch::x86_64::__cpuid(0).eax;
    let opt = max >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 23) != 0;
    (if line == 0 { 64 } else { line }, opt)
}

/// Writes back and invalidates the cache line holding `va` (`clflushopt` where the CPU has
/// it, else `clflush`), then orders it with a fence when `fence` is set.
///
/// # Safety
///
/// `va` is mapped (a flush of an unmapped address faults).
pub(crate) unsafe fn flush_line(va: u64, opt: bool) {
    // SAFETY: the caller guarantees `va` is mapped; the flush does not change memory
    // contents, only where they are held.
    unsafe {
        if opt {
            asm!("clflushopt [{}]", in(reg) va, options(nostack, preserves_flags));
        } else {
            asm!("clflush [{}]", in(reg) va, options(nostack, preserves_flags));
        }
    }
}

/// A full memory fence (orders flushes and stores before what follows).
pub(crate) fn fence() {
    // SAFETY: `mfence` has no operands and no effect beyond ordering memory accesses.
    unsafe { asm!("mfence", options(nostack, preserves_flags)) }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` reads a counter and has no other effect (CR4.TSD is clear in a
    // kernel and in every host process this crate's tests run in).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads CR3 (the physical address of the top-level page table, with flags).
///
/// # Safety
///
/// Ring 0 only.
pub(crate) unsafe fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 in ring 0 has no side effect (the caller guarantees ring 0).
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Loads CR3 with the top-level table at `root`, switching address spaces (and flushing
/// the TLB's non-global entries).
///
/// # Safety
///
/// Ring 0; `root` is a valid top-level table that maps everything in use from now on (the
/// code, stack, data and every address the kernel touches).
pub(crate) unsafe fn write_cr3(root: u64) {
    // SAFETY: the caller guarantees ring 0 and a table that keeps everything mapped.
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) }
}

/// Writes model-specific register `msr`.
///
/// # Safety
///
/// Ring 0, `msr` exists and `value` is valid for it, and the write's effect (caching
/// attributes, for the PAT) is what the caller wants for the whole machine.
pub(crate) unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees ring 0, an existing MSR and a valid value.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// Writes back and invalidates every cache (used around a PAT change).
///
/// # Safety
///
/// Ring 0.
pub(crate) unsafe fn wbinvd() {
    // SAFETY: ring 0 is the caller's guarantee; `wbinvd` only writes caches back.
    unsafe { asm!("wbinvd", options(nostack, preserves_flags)) }
}

/// Writes `value` to I/O port `port`.
///
/// # Safety
///
/// Ring 0 (or I/O privilege), and the write has no effect the caller did not intend (the
/// port belongs to a device the caller owns).
pub(crate) unsafe fn outb(port: u16, value: u8) {
    // SAFETY: privilege and ownership of the port are the caller's guarantee.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads I/O port `port`.
///
/// # Safety
///
/// As for [`outb`].
pub(crate) unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: privilege and ownership of the port are the caller's guarantee.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

pub(crate) mod direct;

/// Programs the PAT for the page tables' encodings, then switches to the tables at `root`.
///
/// # Safety
///
/// As for [`write_cr3`]: ring 0, and the tables map everything in use from now on.
pub(crate) unsafe fn activate(root: u64, pat: u64) {
    // SAFETY: ring 0 and complete tables are the caller's guarantee; the PAT is changed
    // with caches written back on both sides, as the SDM asks, before any mapping uses it.
    unsafe {
        wbinvd();
        wrmsr(0x277, pat);
        wbinvd();
        write_cr3(root);
    }
}

/// Reloads CR3, dropping every non-global TLB entry.
///
/// # Safety
///
/// Ring 0.
pub(crate) unsafe fn flush_tlb() {
    // SAFETY: reloading the current CR3 value changes no mapping, only drops cached ones.
    unsafe { write_cr3(read_cr3()) }
}

/// TSC ticks while the PIT's channel 2 counts `count` ticks of its 1.193182 MHz clock
/// (one-shot, gate through port 0x61, speaker off).
///
/// # Safety
///
/// Ring 0 (or I/O privilege), and nobody else uses PIT channel 2 or port 0x61 meanwhile.
pub(crate) unsafe fn pit_tsc_ticks(count: u16) -> u64 {
    // SAFETY: exclusive use of the PIT's channel 2 and its gate is the caller's guarantee.
    unsafe {
        let gate = inb(0x61);
        outb(0x61, (gate & !0x02) & !0x01); // gate low, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, count as u8);
        outb(0x42, (count >> 8) as u8);
        let start = rdtsc();
        outb(0x61, (gate & !0x02) | 0x01); // gate high: counting starts
        let mut spins = 0u64;
        while inb(0x61) & 0x20 == 0 && spins < 1 << 32 {
            spins += 1;
        }
        let end = rdtsc();
        outb(0x61, gate);
        end.saturating_sub(start)
    }
}
