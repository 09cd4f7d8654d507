//! Big machines cost only what is touched, and hostile arguments at the edges of the
//! address space are errors, never panics.

use dmakit::mapper::IommuHardware;
use dmakit::platform::{
    collect_runs, CacheOp, CacheOps, CpuAccess, Mmio, PageRequest, PhysicalMemory, Task, Width,
    Wiring,
};
use dmakit::{Error, IoAddr, PhysAddr, VirtAddr};
use dmakit_sim::{MachineBuilder, MmioDevice, ScratchDevice, SimIommu};
use std::sync::Arc;

const K: Task = Task::KERNEL;
const GIB: u64 = 1 << 30;
const TOP: u64 = 0xFFFF_FFFF_E000_0000;

#[test]
fn a_terabyte_of_ram_costs_only_what_is_touched() {
    let m = MachineBuilder::new()
        .seed(50)
        .ram(0x10_0000, GIB - 0x10_0000)
        .ram(4 * GIB, 1 << 40)
        .fragmentation(1.0)
        .build()
        .unwrap();
    let s = m.stats();
    assert_eq!(s.ram_pages, (GIB - 0x10_0000 + (1 << 40)) / 0x1000);
    assert_eq!(s.dram_pages, 0);
    let va = m.allocate_pages(0x40_0000, &PageRequest::WIRED).unwrap();
    let pages: Vec<u64> = m
        .page_table(K)
        .unwrap()
        .iter()
        .map(|e| e.pa.unwrap().0)
        .collect();
    let high = pages.iter().filter(|&&p| p >= 4 * GIB).count();
    assert!(high > pages.len() * 9 / 10, "RAM is mostly high: {high}");
    assert!(pages.iter().any(|&p| p >= 512 * GIB), "and reaches far up");
    m.write_virt(K, VirtAddr(va.0 + 0x1000), &[1; 0x2000])
        .unwrap();
    m.cache_virt(CacheOp::Clean, K, va, 0x40_0000).unwrap();
    assert_eq!(
        m.stats().dram_pages,
        2,
        "only the two written pages are backed"
    );
    // A 64 MiB contiguous run, 1 GiB aligned, far above 4 GiB.
    let req = PageRequest {
        contiguous: true,
        align: GIB,
        ..PageRequest::WIRED
    };
    let big = m.allocate_pages(64 << 20, &req).unwrap();
    let runs = collect_runs(&m, K, big, 64 << 20).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].addr.0 % GIB, 0);
    m.free_pages(big, 64 << 20).unwrap();
    m.free_pages(va, 0x40_0000).unwrap();
    assert_eq!(m.stats().used_pages(), 0);
    assert_eq!(m.stats().dram_pages, 0, "freed pages forget their contents");
}

#[test]
fn a_limit_below_most_ram_counts_only_what_fits() {
    let m = MachineBuilder::new()
        .seed(51)
        .ram(0x10_0000, 0x10_0000) // 256 pages below 4 GiB
        .ram(4 * GIB, GIB)
        .fragmentation(0.9)
        .build()
        .unwrap();
    let low = PageRequest {
        phys_limit: 0xFFFF_FFFF,
        ..PageRequest::WIRED
    };
    let before = m.stats();
    let e = m.allocate_pages(257 * 0x1000, &low).unwrap_err();
    assert!(
        matches!(e, Error::NoSuitableMemory { requested, limit: 0xFFFF_FFFF, .. } if requested == 257 * 0x1000),
        "{e}"
    );
    assert_eq!(m.stats(), before, "refused before any page was taken");
    let va = m.allocate_pages(256 * 0x1000, &low).unwrap();
    assert!(m
        .page_table(K)
        .unwrap()
        .iter()
        .all(|e| e.pa.unwrap().0 < 0x20_0000));
    m.free_pages(va, 256 * 0x1000).unwrap();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: its machine has 272 MiB of fragmented RAM to search"
)]
fn requests_too_large_or_too_aligned_are_errors() {
    let m = MachineBuilder::new()
        .seed(52)
        .ram(0x10_0000, 0x100_0000)
        .ram(TOP, 0x1000_0000) // RAM ending 256 MiB below the top of the space
        .fragmentation(0.5)
        .build()
        .unwrap();
    let before = m.stats();
    // Pageable memory bigger than all of RAM could never be resident.
    assert!(matches!(
        m.allocate_pages(1 << 38, &PageRequest::PAGEABLE),
        Err(Error::NoMemory { .. })
    ));
    // Wired memory bigger than what is free.
    assert!(matches!(
        m.allocate_pages(1 << 30, &PageRequest::WIRED),
        Err(Error::NoMemory { .. })
    ));
    // An alignment whose next boundary is past the end of the address space.
    let req = PageRequest {
        contiguous: true,
        align: 1 << 40,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        m.allocate_pages(0x1000, &req),
        Err(Error::NoSuitableMemory { .. })
    ));
    assert_eq!(m.stats(), before);
    // The top region is usable.
    let top = PageRequest {
        contiguous: true,
        align: 0x1000_0000,
        ..PageRequest::WIRED
    };
    let va = m.allocate_pages(0x1000_0000, &top).unwrap();
    let r = collect_runs(&m, K, va, 0x1000_0000).unwrap();
    assert_eq!(r[0].addr, PhysAddr(TOP));
    m.write_virt(K, VirtAddr(va.0 + 0x0FFF_FFF0), &[5; 16])
        .unwrap();
    let last = PhysAddr(TOP + 0x0FFF_FFF0);
    m.cache_phys(CacheOp::Flush, last, 16).unwrap();
    let mut b = [0u8; 16];
    m.device_read(last, &mut b).unwrap();
    assert_eq!(b, [5; 16]);
    m.free_pages(va, 0x1000_0000).unwrap();
}

#[test]
fn accesses_at_the_end_of_the_address_space_are_errors() {
    let m = MachineBuilder::new().seed(53).build().unwrap();
    let mut b = [0u8; 16];
    assert!(matches!(
        m.read_virt(K, VirtAddr(u64::MAX - 3), &mut b),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        m.read_phys(PhysAddr(u64::MAX - 3), &mut b),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        m.cache_phys(CacheOp::Clean, PhysAddr(u64::MAX - 3), 16),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        m.cache_virt(CacheOp::Clean, K, VirtAddr(u64::MAX - 3), 16),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        m.mmio_read(PhysAddr(u64::MAX - 7), Width::W64),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(
        m.unwire(K, VirtAddr(u64::MAX), 2),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        m.set_cache_mode(PhysAddr(0x10_0000), 0, dmakit_sim::CacheMode::Inhibit),
        Err(Error::ZeroSize { .. })
    ));
    let iommu = SimIommu::new(Arc::new(m));
    assert!(matches!(
        iommu.device_read(IoAddr(u64::MAX - 3), &mut b),
        Err(Error::Overflow { .. })
    ));
    assert!(iommu.faults().is_empty(), "refused before any translation");
    assert_eq!(iommu.page_size().bytes(), 0x1000);
}

#[test]
fn a_scratch_device_ignores_accesses_past_its_registers() {
    let mut d = ScratchDevice::new(0xAB, 16);
    assert_eq!(d.id(), 0xAB);
    assert_eq!(d.read(u64::MAX, Width::W64), 0);
    d.write(u64::MAX - 1, Width::W32, 7);
    d.write(14, Width::W32, 7); // straddles the end: dropped
    assert_eq!(d.read(12, Width::W32), 0);
    d.write(8, Width::W64, 0x0102_0304_0506_0708);
    assert_eq!(d.read(8, Width::W64), 0x0102_0304_0506_0708);
    assert_eq!(d.log().len(), 6, "every access is logged");
}
