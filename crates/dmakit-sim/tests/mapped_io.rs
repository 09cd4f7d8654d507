//! Mapped I/O, device memory and the processor-cache flush on the simulated machine.

use dmakit::descriptor::{device_memory, device_sub_range, MemoryDescriptor};
use dmakit::map::{
    flush_processor_cache, mapped_read16, mapped_read32, mapped_read64, mapped_read8,
    mapped_write16, mapped_write32, mapped_write64, mapped_write8,
};
use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Task};
use dmakit::{Direction, Error, IoReturn, PhysAddr};
use dmakit_sim::{MachineBuilder, ScratchDevice};
use std::sync::{Arc, Mutex};

const BAR: u64 = 0xFEB0_0000;

#[test]
fn mapped_io_reaches_a_device_through_device_memory() {
    let dev = Arc::new(Mutex::new(ScratchDevice::new(0x1234_5678, 0x100)));
    let m = Arc::new(
        MachineBuilder::new()
            .mmio(BAR, 0x1000, dev.clone())
            .build()
            .unwrap(),
    );
    let bar = Arc::new(device_memory(m.clone(), PhysAddr(BAR), 0x1000).unwrap());
    assert_eq!(bar.direction(), Direction::None);
    let regs = device_sub_range(bar.clone(), 0x40, 0x40).unwrap();
    let r = regs.physical_segment(0).unwrap().addr;
    assert_eq!(r, PhysAddr(BAR + 0x40));
    assert_eq!(
        mapped_read32(&*m, bar.physical_segment(0).unwrap().addr).unwrap(),
        0x1234_5678
    );
    mapped_write8(&*m, r, 0xAB).unwrap();
    mapped_write16(&*m, PhysAddr(r.0 + 2), 0xBEEF).unwrap();
    mapped_write32(&*m, PhysAddr(r.0 + 4), 0xDEAD_BEEF).unwrap();
    mapped_write64(&*m, PhysAddr(r.0 + 8), 0x0102_0304_0506_0708).unwrap();
    assert_eq!(mapped_read8(&*m, r).unwrap(), 0xAB);
    assert_eq!(mapped_read16(&*m, PhysAddr(r.0 + 2)).unwrap(), 0xBEEF);
    assert_eq!(mapped_read32(&*m, PhysAddr(r.0 + 4)).unwrap(), 0xDEAD_BEEF);
    assert_eq!(
        mapped_read64(&*m, PhysAddr(r.0 + 8)).unwrap(),
        0x0102_0304_0506_0708
    );
    let log = dev.lock().unwrap().log().to_vec();
    assert_eq!(log.len(), 9, "each call is exactly one device access");
    assert!(log.iter().skip(1).take(4).all(|a| a.write));
    // Misaligned and unbacked addresses are errors that reach no device.
    let e = mapped_read32(&*m, PhysAddr(r.0 + 2)).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_ALIGNED);
    assert!(matches!(
        mapped_write64(&*m, PhysAddr(0xF000_0000), 1),
        Err(Error::NotMapped { .. })
    ));
    assert_eq!(dev.lock().unwrap().log().len(), 9);
    // An empty range is an empty descriptor, as IOKit's withRange(start, 0).
    let empty = device_memory(m.clone(), PhysAddr(BAR), 0).unwrap();
    assert_eq!(empty.length(), 0);
}

#[test]
fn a_device_reads_stale_data_until_the_cache_is_flushed() {
    let m = MachineBuilder::new().build().unwrap();
    let va = m.allocate_pages(0x1000, &PageRequest::WIRED).unwrap();
    let pa = collect_runs(&m, Task::KERNEL, va, 0x1000).unwrap()[0].addr;
    m.write_virt(Task::KERNEL, va, b"descriptor ring entry")
        .unwrap();
    let mut seen = [0u8; 21];
    m.device_read(pa, &mut seen).unwrap();
    assert_eq!(
        seen, [0u8; 21],
        "without a flush the device sees stale memory"
    );
    flush_processor_cache(&m, Task::KERNEL, va, 21).unwrap();
    m.device_read(pa, &mut seen).unwrap();
    assert_eq!(
        &seen, b"descriptor ring entry",
        "after the flush it sees the CPU's bytes"
    );
    assert_eq!(m.stats().cached_lines, (0, 0), "flush also invalidates");
    // As in IOKit, only the kernel task.
    let t = m.create_task();
    let e = flush_processor_cache(&m, t, va, 21).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::UNSUPPORTED);
    assert!(matches!(
        flush_processor_cache(&m, Task::KERNEL, dmakit::VirtAddr(u64::MAX), 2),
        Err(Error::Overflow { .. })
    ));
}

#[test]
fn mapped_io_on_ram_goes_through_the_cache() {
    let m = MachineBuilder::new().build().unwrap();
    let va = m.allocate_pages(0x1000, &PageRequest::WIRED).unwrap();
    let pa = collect_runs(&m, Task::KERNEL, va, 0x1000).unwrap()[0].addr;
    mapped_write32(&m, pa, 0xFEED_F00D).unwrap();
    let mut b = [0u8; 4];
    m.read_virt(Task::KERNEL, va, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0xFEED_F00D);
}
