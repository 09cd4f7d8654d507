//! CPU cache maintenance runs for real on this CPU, and loses nothing.

mod common;

use common::{host, need_physical, page};
use dmakit::platform::{
    collect_runs, CacheOp, CacheOps, CpuAccess, PageRequest, PhysicalMemory, Task,
};
use dmakit::{Error, PhysAddr, VirtAddr};

const K: Task = Task::KERNEL;

#[test]
fn every_operation_flushes_without_losing_data() {
    let h = host();
    let p = page(&h);
    let va = h.allocate_pages(2 * p, &PageRequest::WIRED).unwrap();
    let data: Vec<u8> = (0..2 * p).map(|i| (i % 253) as u8).collect();
    h.write_virt(K, va, &data).unwrap();
    if !cfg!(target_arch = "x86_64") {
        let e = h.cache_virt(CacheOp::Flush, K, va, p).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        println!("skipped: cache maintenance is implemented for x86_64 only");
        h.free_pages(va, 2 * p).unwrap();
        return;
    }
    assert!(h.dma_coherent(), "x86_64 DMA snoops the caches");
    for op in [CacheOp::Clean, CacheOp::Invalidate, CacheOp::Flush] {
        // Unaligned start and length: partial first and last lines included.
        h.cache_virt(op, K, VirtAddr(va.0 + 10), 2 * p - 13)
            .unwrap();
        h.cache_virt(op, K, VirtAddr(va.0 + 63), 2).unwrap();
        h.cache_virt(op, K, va, 0).unwrap();
    }
    let mut back = vec![0u8; 2 * p as usize];
    h.read_virt(K, va, &mut back).unwrap();
    assert_eq!(
        back, data,
        "Invalidate is a flush on x86: dirty data survives"
    );
    h.free_pages(va, 2 * p).unwrap();
}

#[test]
fn cache_operations_reach_only_known_memory() {
    let h = host();
    let p = page(&h);
    let v = [0u8; 64];
    let e = h
        .cache_virt(CacheOp::Flush, K, VirtAddr(v.as_ptr() as u64), 64)
        .unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }), "{e}");
    let e = h
        .cache_phys(CacheOp::Flush, PhysAddr(0x1000), 64)
        .unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }), "{e}");
    let va = h.allocate_pages(p, &PageRequest::WIRED).unwrap();
    assert!(matches!(
        h.cache_virt(CacheOp::Flush, K, va, p + 1),
        Err(Error::NotMapped { .. })
    ));
    h.free_pages(va, p).unwrap();
}

#[test]
fn physical_cache_operations_follow_the_reverse_map() {
    let h = host();
    if !need_physical(&h) || !cfg!(target_arch = "x86_64") {
        return;
    }
    let p = page(&h);
    let va = h.allocate_pages(4 * p, &PageRequest::WIRED).unwrap();
    h.write_virt(K, va, &[5u8; 256]).unwrap();
    for r in collect_runs(&h, K, va, 4 * p).unwrap() {
        h.cache_phys(CacheOp::Flush, r.addr, r.len).unwrap();
    }
    let pa = collect_runs(&h, K, va, 1).unwrap()[0].addr;
    let mut b = [0u8; 256];
    h.read_phys(pa, &mut b).unwrap();
    assert_eq!(b, [5u8; 256]);
    h.free_pages(va, 4 * p).unwrap();
    assert!(matches!(
        h.cache_phys(CacheOp::Clean, pa, 64),
        Err(Error::NotMapped { .. })
    ));
}
