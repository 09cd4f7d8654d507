//! The kernel's own hardware accesses: COM1, the isa-debug-exit port, the heap's memory.

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// Ring 0, and the port is one of the devices this kernel owns (COM1, isa-debug-exit).
unsafe fn outb(port: u16, v: u8) {
    // SAFETY: the caller guarantees ring 0 and ownership of the port.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// As for [`outb`].
unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller guarantees ring 0 and ownership of the port.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

const COM1: u16 = 0x3f8;

/// Sends bytes to COM1 (already set up by the firmware: 115200 8N1), waiting for the
/// transmitter each time.
pub fn serial_write(bytes: &[u8]) {
    for &b in bytes {
        let mut spins = 0u32;
        // SAFETY: the kernel runs in ring 0 and owns COM1 (the firmware is gone, or only
        // writes it from this same thread before ExitBootServices).
        while unsafe { inb(COM1 + 5) } & 0x20 == 0 && spins < 1_000_000 {
            spins += 1;
        }
        // SAFETY: as above.
        unsafe { outb(COM1, b) };
    }
}

/// Leaves QEMU through its isa-debug-exit device (iobase 0xf4): QEMU exits with
/// `(code << 1) | 1`. Halts if the device is missing.
pub fn qemu_exit(code: u8) -> ! {
    // SAFETY: ring 0; port 0xf4 is the isa-debug-exit device the run script adds, and a
    // write to it has no other effect.
    unsafe { outb(0xf4, code) };
    loop {
        // SAFETY: `hlt` waits for an interrupt; interrupts are off, so it stops the CPU.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// The heap's memory: a static array in the image's .bss (the UEFI loader zero-fills it).
pub mod heap {
    use linked_list_allocator::LockedHeap;

    const HEAP_BYTES: usize = 48 << 20;

    #[repr(align(4096))]
    struct Arena(#[allow(dead_code)] [u8; HEAP_BYTES]);

    static mut ARENA: Arena = Arena([0; HEAP_BYTES]);

    #[global_allocator]
    static HEAP: LockedHeap = LockedHeap::empty();

    /// Hands the arena to the allocator. Call once, first thing.
    pub fn init() {
        static DONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        if DONE.swap(true, core::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // SAFETY: the flag above makes this run once, so the arena is given to the heap
        // once and nothing else ever refers to it.
        unsafe {
            let base = core::ptr::addr_of_mut!(ARENA) as *mut u8;
            HEAP.lock().init(base, HEAP_BYTES);
        }
    }
}

/// Copies `buf.len()` bytes from virtual address `va` with loads through the live page
/// tables (volatile, byte by byte: the mapping may be uncached).
pub fn read_mapped(va: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: callers pass an address dmakit-baremetal's `map_pages` just mapped for
        // `buf.len()` bytes in the live tables; a volatile byte load has no other effect.
        *b = unsafe { core::ptr::read_volatile((va + i as u64) as *const u8) };
    }
}
