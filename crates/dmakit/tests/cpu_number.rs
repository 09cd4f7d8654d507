//! A kernel's CPU number, registered with `dmakit::sync::set_cpu_number`, picks the shard
//! a thread works in: here one thread plays a CPU that changes its number (a migration),
//! and the caches it fills stay with the CPU that filled them.
//!
//! Its own test binary: the registration is for the whole process.
#![cfg(not(loom))]

use dmakit::alloc::{LockedRangeAllocator, Placement, RangeAllocator};
use dmakit::mapper::{IommuHardware, IommuMapper, Mapper};
use dmakit::{IoAddr, PageSize, PhysAddr, Result};
use std::cell::Cell;

std::thread_local!(static CPU: Cell<usize> = const { Cell::new(0) });

fn cpu() -> usize {
    CPU.with(Cell::get)
}

fn on(n: usize) {
    CPU.with(|c| c.set(n));
}

struct NoIommu;

impl IommuHardware for NoIommu {
    fn page_size(&self) -> PageSize {
        PageSize::new(4096).unwrap()
    }
    fn set_entry(&self, _: IoAddr, _: Option<(PhysAddr, dmakit::mapper::Access)>) -> Result<()> {
        Ok(())
    }
    fn invalidate(&self, _: IoAddr, _: u64) -> Result<()> {
        Ok(())
    }
}

#[test]
fn each_cpu_keeps_its_own_caches() {
    assert!(dmakit::sync::set_cpu_number(cpu));
    assert!(!dmakit::sync::set_cpu_number(|| 7), "registered once");

    let r = RangeAllocator::new(0, 1 << 30, 4096)
        .unwrap()
        .with_placement(Placement::GoodFit);
    let l = LockedRangeAllocator::new(r);
    on(1);
    let a = l.allocate(4096, 0).unwrap();
    l.deallocate(a, 4096).unwrap();
    on(2);
    let b = l.allocate(4096, 0).unwrap();
    assert_ne!(a, b, "CPU 1's cached range is not CPU 2's");
    on(1);
    assert_eq!(
        l.allocate(4096, 0).unwrap(),
        a,
        "CPU 1 gets its cached range back"
    );

    let m = IommuMapper::new(NoIommu, 1 << 32, 1 << 30).unwrap();
    on(3);
    let x = m.iovm_alloc(2).unwrap();
    m.iovm_free(x, 2).unwrap();
    on(4);
    let y = m.iovm_alloc(2).unwrap();
    assert_ne!(x, y, "CPU 3's cached range is not CPU 4's");
    // Freed on another CPU than the one that allocated it: found all the same.
    on(3);
    m.iovm_free(y, 2).unwrap();
    assert_eq!(
        m.iovm_alloc(2).unwrap(),
        x,
        "CPU 3 gets its cached range back"
    );
    assert_eq!(m.usage(), (1, 0));
}
