//! MMIO by bus or physical address: registered device regions and wired RAM.

mod common;

use common::{host, need_physical, page};
use dmakit::platform::{collect_runs, CpuAccess, Mmio, PageRequest, PhysicalMemory, Task, Width};
use dmakit::{Error, PhysAddr, VirtAddr};

const K: Task = Task::KERNEL;

#[test]
fn a_registered_memfd_region_round_trips_every_width() {
    let h = host();
    let len = page(&h);
    // A memfd-backed allocation stands in for a BAR mapped through VFIO.
    let dev = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let bus = PhysAddr(0xFE00_0000);
    // SAFETY: `dev` is a live allocation of this host, unregistered before it is freed, and
    // reached only through the host while registered.
    unsafe { h.register_mmio(bus, dev.0 as *mut u8, len as usize) }.unwrap();
    for (w, v, at) in [
        (Width::W8, 0xA5u64, 0x41),
        (Width::W16, 0xBEEF, 0x42),
        (Width::W32, 0xDEAD_BEEF, 0x44),
        (Width::W64, 0x0123_4567_89AB_CDEF, 0x48),
    ] {
        let pa = PhysAddr(bus.0 + at);
        h.mmio_write(pa, w, v).unwrap();
        assert_eq!(h.mmio_read(pa, w).unwrap(), v, "{w:?}");
        // Exactly `width` bytes, little-endian, land at the matching offset.
        let mut b = [0u8; 8];
        h.read_virt(K, VirtAddr(dev.0 + at), &mut b[..w.bytes() as usize])
            .unwrap();
        assert_eq!(u64::from_le_bytes(b), v, "{w:?}");
    }
    // A store writes only the low bytes of the value; neighbours are untouched.
    h.mmio_write(PhysAddr(bus.0 + 8), Width::W32, u64::MAX)
        .unwrap();
    h.mmio_write(PhysAddr(bus.0 + 8), Width::W16, 0xFFFF_1234)
        .unwrap();
    assert_eq!(
        h.mmio_read(PhysAddr(bus.0 + 8), Width::W32).unwrap(),
        0xFFFF_1234
    );
    assert_eq!(h.mmio_read(PhysAddr(bus.0 + 8), Width::W8).unwrap(), 0x34);
    h.unregister_mmio(bus).unwrap();
    h.free_pages(dev, len).unwrap();
}

#[test]
fn unaligned_and_unbacked_accesses_are_refused() {
    let h = host();
    let len = page(&h);
    let dev = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let bus = PhysAddr(0xFD00_0000);
    // SAFETY: as above: our live allocation, unregistered before it is freed.
    unsafe { h.register_mmio(bus, dev.0 as *mut u8, len as usize) }.unwrap();
    for (w, off) in [
        (Width::W16, 1),
        (Width::W32, 2),
        (Width::W64, 4),
        (Width::W64, 7),
    ] {
        let e = h.mmio_read(PhysAddr(bus.0 + off), w).unwrap_err();
        assert!(
            matches!(e, Error::NotAligned { .. }),
            "{w:?} at +{off}: {e}"
        );
        assert!(matches!(
            h.mmio_write(PhysAddr(bus.0 + off), w, 0),
            Err(Error::NotAligned { .. })
        ));
    }
    // Past the end, or straddling it, is unbacked.
    assert!(matches!(
        h.mmio_read(PhysAddr(bus.0 + len), Width::W8),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        h.mmio_read(PhysAddr(bus.0 - 8), Width::W64),
        Err(Error::NotMapped { .. })
    ));
    // SAFETY: refused before anything is recorded: it overlaps the region above.
    let dup = unsafe { h.register_mmio(PhysAddr(bus.0 + 8), dev.0 as *mut u8, 8) };
    assert!(matches!(dup, Err(Error::RangeBusy { .. })));
    // SAFETY: refused: the mapping is not aligned like its bus address, so an aligned bus
    // access would be a misaligned load.
    let skew = unsafe { h.register_mmio(PhysAddr(0xFC00_0000), (dev.0 + 1) as *mut u8, 64) };
    assert!(matches!(skew, Err(Error::NotAligned { .. })), "{skew:?}");
    assert_eq!(h.usage().mmio_regions, 1);
    h.unregister_mmio(bus).unwrap();
    assert!(matches!(
        h.mmio_read(bus, Width::W8),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        h.unregister_mmio(bus),
        Err(Error::NotAllocated { .. })
    ));
    h.free_pages(dev, len).unwrap();
}

#[test]
fn wired_ram_is_reachable_by_its_physical_address() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let p = page(&h);
    let va = h.allocate_pages(2 * p, &PageRequest::WIRED).unwrap();
    let pa = collect_runs(&h, K, VirtAddr(va.0 + p + 16), 8).unwrap()[0].addr;
    h.mmio_write(pa, Width::W64, 0x1122_3344_5566_7788).unwrap();
    let mut b = [0u8; 8];
    h.read_virt(K, VirtAddr(va.0 + p + 16), &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);
    assert_eq!(h.mmio_read(pa, Width::W16).unwrap(), 0x7788);
    h.free_pages(va, 2 * p).unwrap();
    assert!(matches!(
        h.mmio_read(pa, Width::W64),
        Err(Error::NotMapped { .. })
    ));
}
