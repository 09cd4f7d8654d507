//! Mapped I/O and the cache flush on this host.

use dmakit::descriptor::{device_memory, MemoryDescriptor};
use dmakit::map::{
    flush_processor_cache, mapped_read32, mapped_read64, mapped_write32, mapped_write64,
};
use dmakit::platform::{CpuAccess, PageRequest, PhysicalMemory, Task};
use dmakit::{Error, PhysAddr, VirtAddr};
use dmakit_linux::Host;
use std::sync::Arc;

#[test]
fn mapped_io_on_a_registered_region_and_flush() {
    let host = Arc::new(Host::new().unwrap());
    let page = host.page_size().bytes();
    let backing = host.allocate_pages(page, &PageRequest::WIRED).unwrap();
    let bus = PhysAddr(0xC000_0000);
    // SAFETY: `backing` is this host's live allocation, unregistered before it is freed and
    // reached only through volatile MMIO while registered.
    unsafe { host.register_mmio(bus, backing.0 as *mut u8, page as usize) }.unwrap();
    let bar = device_memory(host.clone(), bus, page).unwrap();
    let reg = bar.physical_segment(0x10).unwrap().addr;
    mapped_write32(&*host, reg, 0xA5A5_5A5A).unwrap();
    assert_eq!(mapped_read32(&*host, reg).unwrap(), 0xA5A5_5A5A);
    mapped_write64(&*host, PhysAddr(bus.0 + 0x18), u64::MAX - 1).unwrap();
    assert_eq!(
        mapped_read64(&*host, PhysAddr(bus.0 + 0x18)).unwrap(),
        u64::MAX - 1
    );
    assert!(matches!(
        mapped_read32(&*host, PhysAddr(bus.0 + 1)),
        Err(Error::NotAligned { .. })
    ));
    assert!(matches!(
        mapped_read32(&*host, PhysAddr(bus.0 + page)),
        Err(Error::NotMapped { .. })
    ));
    // The flush runs for real on our memory and loses nothing.
    host.write_virt(Task::KERNEL, backing, b"flushed").unwrap();
    flush_processor_cache(&*host, Task::KERNEL, backing, page).unwrap();
    let mut b = [0u8; 7];
    host.read_virt(Task::KERNEL, backing, &mut b).unwrap();
    assert_eq!(&b, b"flushed");
    assert!(matches!(
        flush_processor_cache(&*host, Task::KERNEL, VirtAddr(0x1000), 64),
        Err(Error::NotMapped { .. })
    ));
    host.unregister_mmio(bus).unwrap();
    host.free_pages(backing, page).unwrap();
}
