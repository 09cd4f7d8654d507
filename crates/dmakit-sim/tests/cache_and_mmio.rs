//! The non-coherent cache model, cache modes, and MMIO routing.

use dmakit::platform::{
    collect_runs, CacheOp, CacheOps, CpuAccess, Mmio, PageRequest, PhysicalMemory, Task, Width,
};
use dmakit::{Error, PhysAddr, VirtAddr};
use dmakit_sim::{CacheMode, Machine, MachineBuilder, ScratchDevice};
use std::sync::{Arc, Mutex};

const K: Task = Task::KERNEL;

fn buffer(m: &Machine) -> (VirtAddr, PhysAddr) {
    let req = PageRequest {
        contiguous: true,
        ..PageRequest::WIRED
    };
    let va = m.allocate_pages(0x2000, &req).unwrap();
    let pa = collect_runs(m, K, va, 0x2000).unwrap()[0].addr;
    (va, pa)
}

#[test]
fn device_sees_stale_memory_until_clean() {
    let m = MachineBuilder::new().build().unwrap();
    assert!(!m.dma_coherent());
    let (va, pa) = buffer(&m);
    m.write_virt(K, va, b"fresh data").unwrap();
    let mut dev = [0u8; 10];
    m.device_read(pa, &mut dev).unwrap();
    assert_eq!(dev, [0u8; 10], "the store is still in a dirty line");
    m.cache_virt(CacheOp::Clean, K, va, 10).unwrap();
    m.device_read(pa, &mut dev).unwrap();
    assert_eq!(&dev, b"fresh data");
    assert_eq!(m.stats().cached_lines.1, 0, "no dirty lines after clean");
}

#[test]
fn cpu_sees_stale_memory_until_invalidate() {
    let m = MachineBuilder::new().build().unwrap();
    let (va, pa) = buffer(&m);
    let mut cpu = [0u8; 6];
    m.read_virt(K, va, &mut cpu).unwrap(); // the line is now cached
    m.device_write(pa, b"device").unwrap();
    m.read_virt(K, va, &mut cpu).unwrap();
    assert_eq!(cpu, [0u8; 6], "stale line served");
    m.cache_phys(CacheOp::Invalidate, pa, 6).unwrap();
    m.read_virt(K, va, &mut cpu).unwrap();
    assert_eq!(&cpu, b"device");
}

#[test]
fn invalidate_discards_dirty_data_and_flush_keeps_it() {
    let m = MachineBuilder::new().build().unwrap();
    let (va, pa) = buffer(&m);
    m.write_virt(K, va, b"lost").unwrap();
    m.cache_virt(CacheOp::Invalidate, K, va, 4).unwrap();
    let mut b = [0u8; 4];
    m.read_virt(K, va, &mut b).unwrap();
    assert_eq!(b, [0; 4], "invalidate threw the dirty line away");
    m.write_virt(K, VirtAddr(va.0 + 64), b"kept").unwrap();
    m.cache_virt(CacheOp::Flush, K, VirtAddr(va.0 + 64), 4)
        .unwrap();
    m.device_read(PhysAddr(pa.0 + 64), &mut b).unwrap();
    assert_eq!(&b, b"kept");
    assert_eq!(
        m.stats().cached_lines.0,
        1,
        "only the line read back is cached"
    );
}

#[test]
fn cache_operations_touch_only_their_lines() {
    let m = MachineBuilder::new().build().unwrap();
    let (va, pa) = buffer(&m);
    m.write_virt(K, va, &[1u8; 256]).unwrap();
    m.cache_phys(CacheOp::Clean, PhysAddr(pa.0 + 64), 64)
        .unwrap();
    let mut d = [0u8; 256];
    m.device_read(pa, &mut d).unwrap();
    assert!(d[..64].iter().all(|&x| x == 0));
    assert!(d[64..128].iter().all(|&x| x == 1));
    assert!(d[128..].iter().all(|&x| x == 0));
}

#[test]
fn coherent_machine_has_no_staleness() {
    let m = MachineBuilder::new().coherent(true).build().unwrap();
    assert!(m.dma_coherent());
    let (va, pa) = buffer(&m);
    m.write_virt(K, va, b"now").unwrap();
    let mut d = [0u8; 3];
    m.device_read(pa, &mut d).unwrap();
    assert_eq!(&d, b"now");
    m.device_write(pa, b"dev").unwrap();
    m.read_virt(K, va, &mut d).unwrap();
    assert_eq!(&d, b"dev");
    assert_eq!(m.stats().cached_lines, (0, 0));
}

#[test]
fn inhibit_and_write_through_reach_dram_at_once() {
    let m = MachineBuilder::new().build().unwrap();
    let (va, pa) = buffer(&m);
    m.set_cache_mode(pa, 0x1000, CacheMode::Inhibit).unwrap();
    m.set_cache_mode(PhysAddr(pa.0 + 0x1000), 0x1000, CacheMode::WriteThrough)
        .unwrap();
    assert_eq!(m.cache_mode(pa), CacheMode::Inhibit);
    assert_eq!(
        m.cache_mode(PhysAddr(pa.0 + 0x1800)),
        CacheMode::WriteThrough
    );
    m.write_virt(K, va, b"uncached").unwrap();
    m.write_virt(K, VirtAddr(va.0 + 0x1000), b"through")
        .unwrap();
    let mut d = [0u8; 8];
    m.device_read(pa, &mut d).unwrap();
    assert_eq!(&d, b"uncached");
    m.device_read(PhysAddr(pa.0 + 0x1000), &mut d[..7]).unwrap();
    assert_eq!(&d[..7], b"through");
    // An inhibited range also sees device writes at once.
    m.device_write(pa, b"DEVICE!!").unwrap();
    m.read_virt(K, va, &mut d).unwrap();
    assert_eq!(&d, b"DEVICE!!");
    // Back to copy-back: stores are cached again.
    m.set_cache_mode(pa, 0x2000, CacheMode::CopyBack).unwrap();
    m.write_virt(K, va, b"cached!!").unwrap();
    m.device_read(pa, &mut d).unwrap();
    assert_eq!(&d, b"DEVICE!!");
}

#[test]
fn setting_a_cache_mode_flushes_the_range_first() {
    let m = MachineBuilder::new().build().unwrap();
    let (va, pa) = buffer(&m);
    m.write_virt(K, va, b"dirty").unwrap();
    m.set_cache_mode(pa, 0x1000, CacheMode::WriteCombine)
        .unwrap();
    let mut d = [0u8; 5];
    m.device_read(pa, &mut d).unwrap();
    assert_eq!(&d, b"dirty");
    assert!(
        m.set_cache_mode(PhysAddr(0x10), 0x1000, CacheMode::Inhibit)
            .is_err(),
        "not RAM"
    );
}

fn scratch_machine() -> (Machine, Arc<Mutex<ScratchDevice>>) {
    let dev = Arc::new(Mutex::new(ScratchDevice::new(0xD0A7_0001, 0x100)));
    let m = MachineBuilder::new()
        .mmio(0xFEB0_0000, 0x1000, dev.clone())
        .build()
        .unwrap();
    (m, dev)
}

#[test]
fn mmio_reaches_the_device_model() {
    let (m, dev) = scratch_machine();
    let base = 0xFEB0_0000u64;
    assert_eq!(
        m.mmio_read(PhysAddr(base), Width::W32).unwrap(),
        0xD0A7_0001
    );
    m.mmio_write(PhysAddr(base + 8), Width::W64, 0x1122_3344_5566_7788)
        .unwrap();
    assert_eq!(
        m.mmio_read(PhysAddr(base + 8), Width::W64).unwrap(),
        0x1122_3344_5566_7788
    );
    assert_eq!(m.mmio_read(PhysAddr(base + 8), Width::W8).unwrap(), 0x88);
    assert_eq!(
        m.mmio_read(PhysAddr(base + 10), Width::W16).unwrap(),
        0x5566
    );
    m.mmio_write(PhysAddr(base + 0x10), Width::W16, 0xFFFF_ABCD)
        .unwrap();
    assert_eq!(
        m.mmio_read(PhysAddr(base + 0x10), Width::W32).unwrap(),
        0xABCD,
        "value masked to width"
    );
    // The ID register is read-only.
    m.mmio_write(PhysAddr(base), Width::W32, 0).unwrap();
    assert_eq!(
        m.mmio_read(PhysAddr(base), Width::W32).unwrap(),
        0xD0A7_0001
    );
    let log = dev.lock().unwrap().log().to_vec();
    assert_eq!(log.len(), 9, "one device access per MMIO access");
    assert_eq!(log[1].width, Width::W64);
    assert!(log[1].write);
}

#[test]
fn mmio_checks_alignment_and_backing() {
    let (m, dev) = scratch_machine();
    let n = dev.lock().unwrap().log().len();
    assert!(matches!(
        m.mmio_read(PhysAddr(0xFEB0_0002), Width::W32),
        Err(Error::NotAligned { align: 4, .. })
    ));
    assert!(matches!(
        m.mmio_write(PhysAddr(0xFEB0_0001), Width::W16, 1),
        Err(Error::NotAligned { .. })
    ));
    assert_eq!(
        dev.lock().unwrap().log().len(),
        n,
        "misaligned accesses never reach the device"
    );
    assert!(matches!(
        m.mmio_read(PhysAddr(0xF000_0000), Width::W8),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        m.mmio_write(PhysAddr(0x40), Width::W8, 1),
        Err(Error::NotMapped { .. })
    ));
}

#[test]
fn mmio_on_ram_goes_through_the_cache() {
    let (m, _) = scratch_machine();
    let (va, pa) = buffer(&m);
    m.write_virt(K, va, &0xCAFE_F00Du32.to_le_bytes()).unwrap();
    assert_eq!(m.mmio_read(pa, Width::W32).unwrap(), 0xCAFE_F00D);
    m.mmio_write(PhysAddr(pa.0 + 8), Width::W64, u64::MAX)
        .unwrap();
    let mut b = [0u8; 8];
    m.read_virt(K, VirtAddr(va.0 + 8), &mut b).unwrap();
    assert_eq!(b, [0xFF; 8]);
}

#[test]
fn mmio_windows_must_not_overlap() {
    let (m, _) = scratch_machine();
    let d2 = Arc::new(Mutex::new(ScratchDevice::new(2, 16)));
    assert!(matches!(
        m.add_mmio(PhysAddr(0xFEB0_0800), 0x1000, d2.clone()),
        Err(Error::RangeBusy { .. })
    ));
    assert!(
        matches!(
            m.add_mmio(PhysAddr(0x20_0000), 0x1000, d2.clone()),
            Err(Error::RangeBusy { .. })
        ),
        "RAM"
    );
    assert!(matches!(
        m.add_mmio(PhysAddr(0xFEC0_0000), 0, d2.clone()),
        Err(Error::ZeroSize { .. })
    ));
    m.add_mmio(PhysAddr(0xFEC0_0000), 0x1000, d2).unwrap();
    assert_eq!(m.mmio_read(PhysAddr(0xFEC0_0000), Width::W32).unwrap(), 2);
    assert!(m.layout().to_string().contains("MMIO 0x0000feb00000"));
}

#[test]
fn phys_access_outside_ram_is_an_error() {
    let m = MachineBuilder::new().build().unwrap();
    let mut b = [0u8; 4];
    assert!(matches!(
        m.read_phys(PhysAddr(0x5000_0000), &mut b),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        m.device_write(PhysAddr(0x0), &b),
        Err(Error::NotMapped { .. })
    ));
    // A range that starts in RAM and runs into a hole.
    assert!(m.device_read(PhysAddr(0x03FF_FFFE), &mut b).is_err());
}
