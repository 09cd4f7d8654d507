//! Pageable memory on the simulated machine: paging out to a swap store, paging back in on
//! touch or wire, and the rule that wired (or second-mapped) pages never move.

use dmakit::platform::{
    collect_runs, CacheMode, CacheOp, CacheOps, CpuAccess, MapPiece, MapRequest, MapSource,
    PageRequest, PhysicalMemory, Task, VirtualMemory, Wiring,
};
use dmakit::{Error, IoReturn, PageSize, PhysAddr, VirtAddr};
use dmakit_sim::{FaultSite, Machine, MachineBuilder};

const K: Task = Task::KERNEL;

fn machine(frag: f64) -> Machine {
    MachineBuilder::new()
        .seed(31)
        .fragmentation(frag)
        .build()
        .unwrap()
}

fn pa_of(m: &Machine, t: Task, va: VirtAddr) -> Option<PhysAddr> {
    m.mappings(t, va, 1).unwrap()[0].1
}

#[test]
fn page_out_keeps_contents_and_frees_the_pages() {
    let m = machine(0.7);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x4000, true).unwrap();
    let data: Vec<u8> = (0..0x3000u32).map(|i| (i % 253) as u8 + 1).collect();
    m.write_virt(t, VirtAddr(va.0 + 0x800), &data).unwrap();
    let used = m.stats().used_pages();
    assert_eq!(used, 4, "the write touched all four pages");
    assert_eq!(m.page_out(t).unwrap(), 4);
    let s = m.stats();
    assert_eq!(s.used_pages(), 0, "paged-out pages are back in the pool");
    assert_eq!(s.swapped_pages, 4);
    assert!(m
        .page_table(t)
        .unwrap()
        .iter()
        .all(|e| e.swapped && e.pa.is_none()));
    // Paged-out memory is not wired: translating it is NotReady, not a stale address.
    assert!(matches!(
        collect_runs(&m, t, va, 0x4000),
        Err(Error::NotReady { .. })
    ));
    let mut back = vec![0u8; data.len()];
    m.read_virt(t, VirtAddr(va.0 + 0x800), &mut back).unwrap();
    assert_eq!(back, data, "every byte came back from swap");
    assert_eq!(m.stats().swapped_pages, 0);
    m.destroy_task(t).unwrap();
    assert_eq!(m.stats().used_pages(), 0);
}

#[test]
fn a_paged_out_page_comes_back_elsewhere() {
    // Fragmentation 0 would hand the freed page straight back; an allocation in between
    // takes it, so the page-in must land somewhere else: the translation changed.
    let m = machine(0.0);
    let va = m.allocate_pages(0x1000, &PageRequest::PAGEABLE).unwrap();
    m.write_virt(K, va, b"moving").unwrap();
    let before = pa_of(&m, K, va).unwrap();
    assert_eq!(m.page_out(K).unwrap(), 1);
    let other = m.allocate_pages(0x1000, &PageRequest::WIRED).unwrap();
    assert_eq!(pa_of(&m, K, other), Some(before));
    m.wire(K, va, 0x1000, false).unwrap();
    let after = collect_runs(&m, K, va, 0x1000).unwrap()[0].addr;
    assert_ne!(after, before);
    let mut b = [0u8; 6];
    m.read_virt(K, va, &mut b).unwrap();
    assert_eq!(&b, b"moving");
    m.unwire(K, va, 0x1000).unwrap();
    m.free_pages(va, 0x1000).unwrap();
    m.free_pages(other, 0x1000).unwrap();
}

#[test]
fn wired_pages_and_wired_memory_never_page_out() {
    let m = machine(0.5);
    let pageable = m.allocate_pages(0x3000, &PageRequest::PAGEABLE).unwrap();
    let wired = m.allocate_pages(0x2000, &PageRequest::WIRED).unwrap();
    m.write_virt(K, pageable, &[7; 0x3000]).unwrap();
    m.write_virt(K, wired, &[8; 0x2000]).unwrap();
    m.wire(K, VirtAddr(pageable.0 + 0x1000), 0x1000, true)
        .unwrap();
    let pinned = collect_runs(&m, K, VirtAddr(pageable.0 + 0x1000), 0x1000).unwrap();
    let wired_runs = collect_runs(&m, K, wired, 0x2000).unwrap();
    assert_eq!(
        m.page_out(K).unwrap(),
        2,
        "pages 0 and 2 of the pageable range"
    );
    assert_eq!(
        collect_runs(&m, K, VirtAddr(pageable.0 + 0x1000), 0x1000).unwrap(),
        pinned
    );
    assert_eq!(collect_runs(&m, K, wired, 0x2000).unwrap(), wired_runs);
    let table = m.page_table(K).unwrap();
    let state = |va: u64| {
        let e = table.iter().find(|e| e.va.0 == va).unwrap();
        (e.swapped, e.pa.is_some())
    };
    assert_eq!(state(pageable.0), (true, false));
    assert_eq!(state(pageable.0 + 0x1000), (false, true), "wired: stays");
    assert_eq!(state(pageable.0 + 0x2000), (true, false));
    assert_eq!(state(wired.0), (false, true));
    assert_eq!(state(wired.0 + 0x1000), (false, true));
    m.unwire(K, VirtAddr(pageable.0 + 0x1000), 0x1000).unwrap();
    m.free_pages(pageable, 0x3000).unwrap();
    m.free_pages(wired, 0x2000).unwrap();
    assert_eq!(m.stats().swapped_pages, 0, "freeing drops the swap copies");
}

#[test]
fn dirty_lines_are_written_back_before_a_page_goes_out() {
    let m = machine(0.5);
    assert!(!m.dma_coherent());
    let va = m.allocate_pages(0x1000, &PageRequest::PAGEABLE).unwrap();
    m.write_virt(K, va, b"only in the cache").unwrap();
    assert!(
        m.stats().cached_lines.1 > 0,
        "the store sits in a dirty line"
    );
    m.page_out(K).unwrap();
    assert_eq!(
        m.stats().cached_lines,
        (0, 0),
        "the page's lines left with it"
    );
    let mut b = [0u8; 17];
    m.read_virt(K, va, &mut b).unwrap();
    assert_eq!(&b, b"only in the cache");
    m.free_pages(va, 0x1000).unwrap();
}

#[test]
fn a_failed_page_in_keeps_the_swap_copy() {
    let m = machine(0.5);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x1000, true).unwrap();
    m.write_virt(t, va, b"survives").unwrap();
    m.page_out(t).unwrap();
    let before = m.stats();
    m.inject_next(FaultSite::PhysAlloc);
    let mut b = [0u8; 8];
    let e = m.read_virt(t, va, &mut b).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NO_MEMORY);
    assert!(matches!(e, Error::Injected { .. }));
    let s = m.stats();
    assert_eq!(s.swapped_pages, 1);
    assert_eq!(s.free_pages, before.free_pages);
    m.inject_next(FaultSite::PhysAlloc);
    assert!(m.wire(t, va, 0x1000, false).is_err());
    assert_eq!(m.stats().wired_pages, 0);
    m.read_virt(t, va, &mut b).unwrap();
    assert_eq!(&b, b"survives");
    m.destroy_task(t).unwrap();
}

#[test]
fn pages_mapped_a_second_time_stay_resident() {
    let m = machine(0.5);
    let va = m.allocate_pages(0x2000, &PageRequest::PAGEABLE).unwrap();
    m.write_virt(K, va, &[1; 0x2000]).unwrap();
    let t = m.create_task();
    let req = MapRequest {
        task: t,
        at: None,
        read_only: false,
        cache: CacheMode::CopyBack,
    };
    let piece = MapPiece {
        src: MapSource::Virtual(K, va),
        len: 0x1000,
    };
    let view = m.map_pages(&[piece], &req).unwrap();
    let table = m.page_table(t).unwrap();
    assert_eq!(table.len(), 1);
    assert!(table[0].mapping && table[0].pa == pa_of(&m, K, va));
    assert_eq!(m.page_out(K).unwrap(), 1, "only the page nobody else maps");
    assert_eq!(pa_of(&m, K, va), table[0].pa);
    m.unmap_pages(t, view, 0x1000).unwrap();
    assert_eq!(m.page_out(K).unwrap(), 1, "unmapped: now it may go too");
    assert_eq!(m.stats().swapped_pages, 2);
    m.free_pages(va, 0x2000).unwrap();
    m.destroy_task(t).unwrap();
    assert_eq!(m.stats().used_pages(), 0);
}

#[test]
fn untouched_and_zero_pages() {
    let m = machine(0.5);
    let va = m.allocate_pages(0x3000, &PageRequest::PAGEABLE).unwrap();
    assert_eq!(m.page_out(K).unwrap(), 0, "nothing resident yet");
    // A load from a page that was never written reads zeros and leaves it as it was: no
    // physical page is taken for it (a real VM's shared zero page).
    let mut b = [9u8; 16];
    m.read_virt(K, VirtAddr(va.0 + 0x1000), &mut b).unwrap();
    assert_eq!(b, [0; 16]);
    assert_eq!(m.stats().used_pages(), 0, "a load takes no page");
    assert_eq!(m.page_out(K).unwrap(), 0);
    // Wiring brings a zero-filled page in; once unwired it pages out as zeros (no swap
    // contents), and a load after that again needs no page.
    m.wire(K, VirtAddr(va.0 + 0x1000), 0x1000, false).unwrap();
    assert_eq!(m.stats().used_pages(), 1);
    m.unwire(K, VirtAddr(va.0 + 0x1000), 0x1000).unwrap();
    assert_eq!(m.page_out(K).unwrap(), 1);
    assert_eq!(m.stats().dram_pages, 0, "no DRAM was ever written");
    b = [9; 16];
    m.read_virt(K, VirtAddr(va.0 + 0x1000), &mut b).unwrap();
    assert_eq!(b, [0; 16]);
    let s = m.stats();
    assert_eq!((s.used_pages(), s.swapped_pages), (0, 1));
    // A store does take a page, and a load then reads what was stored.
    m.write_virt(K, VirtAddr(va.0 + 0x1008), b"stored").unwrap();
    assert_eq!(m.stats().used_pages(), 1);
    m.read_virt(K, VirtAddr(va.0 + 0x1000), &mut b).unwrap();
    assert_eq!(&b[8..14], b"stored");
    assert_eq!(b[..8], [0; 8]);
    assert!(matches!(
        m.page_out(Task(77)),
        Err(Error::BadArgument { .. })
    ));
    m.free_pages(va, 0x3000).unwrap();
    assert_eq!(m.stats().used_pages(), 0);
}

/// All RAM under 4 GiB is wired memory; a pageable allocation limited to 32-bit addresses
/// is still accepted (it takes no page yet). Loads from it read zeros; what needs a page of
/// its own (a store, wiring, a second mapping, paged-out contents) fails cleanly with
/// `NoSuitableMemory` and changes nothing, until memory under the limit is freed.
#[test]
fn pageable_memory_under_a_limit_with_no_free_page_under_it() {
    const LOW: u64 = 0xFFFF_FFFF;
    let m = MachineBuilder::new()
        .seed(3)
        .page_size(PageSize::SIZE_16K)
        .ram(0x10_0000, 0x8_0000)
        .ram(0x1_0000_0000, 0x10_0000)
        .build()
        .unwrap();
    let low = |pageable| PageRequest {
        align: 0,
        phys_limit: LOW,
        phys_min: 0,
        contiguous: false,
        pageable,
    };
    // Fill everything under the limit, minus one page.
    let wired = m.allocate_pages(0x7_C000, &low(false)).unwrap();
    let va = m.allocate_pages(0x8000, &low(true)).unwrap();
    m.write_virt(K, va, b"kept").unwrap();
    assert_eq!(m.page_out(K).unwrap(), 1);
    let last = m.allocate_pages(0x4000, &low(false)).unwrap();
    let before = m.stats();
    let mut b = [9u8; 0x8000];
    // Page 0 has paged-out contents and no page to come back to; page 1 holds no data.
    let r = m.read_virt(K, va, &mut b);
    assert!(
        matches!(r, Err(Error::NoSuitableMemory { limit: LOW, .. })),
        "{r:?}"
    );
    assert_eq!(b, [9; 0x8000], "a failed load copies nothing");
    let mut z = [9u8; 0x4000];
    m.read_virt(K, VirtAddr(va.0 + 0x4000), &mut z).unwrap();
    assert_eq!(z, [0; 0x4000], "untouched memory reads as zeros");
    assert_eq!(m.stats(), masked(before.clone(), &m));
    let store = m.write_virt(K, VirtAddr(va.0 + 0x4000), b"x");
    assert!(matches!(
        store,
        Err(Error::NoSuitableMemory { limit: LOW, .. })
    ));
    let wire = m.wire(K, VirtAddr(va.0 + 0x4000), 0x4000, true);
    assert!(matches!(
        wire,
        Err(Error::NoSuitableMemory { limit: LOW, .. })
    ));
    assert_eq!(
        m.stats(),
        masked(before, &m),
        "the failures changed nothing"
    );
    // Memory under the limit is freed: the store and the page-in go through.
    m.free_pages(last, 0x4000).unwrap();
    m.free_pages(wired, 0x7_C000).unwrap();
    m.write_virt(K, VirtAddr(va.0 + 0x4000), b"x").unwrap();
    m.read_virt(K, va, &mut b).unwrap();
    assert_eq!(&b[..4], b"kept");
    assert_eq!(b[0x4000], b'x');
    for (_, pa) in m.mappings(K, va, 0x8000).unwrap() {
        assert!(pa.unwrap().0 < LOW, "paged in under the limit");
    }
    m.free_pages(va, 0x8000).unwrap();
    let s = m.stats();
    assert_eq!((s.used_pages(), s.swapped_pages), (0, 0));
}

/// `before` with the fault-site counters and cache lines of now.
fn masked(before: dmakit_sim::SimStats, m: &Machine) -> dmakit_sim::SimStats {
    let now = m.stats();
    dmakit_sim::SimStats {
        site_calls: now.site_calls,
        cached_lines: now.cached_lines,
        ..before
    }
}

#[test]
fn paging_with_sixteen_k_pages() {
    let m = MachineBuilder::new()
        .seed(5)
        .page_size(PageSize::SIZE_16K)
        .fragmentation(0.9)
        .build()
        .unwrap();
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x10000, true).unwrap();
    let data: Vec<u8> = (0..0x10000u32).map(|i| (i * 31 % 255) as u8).collect();
    m.write_virt(t, va, &data).unwrap();
    assert_eq!(m.page_out(t).unwrap(), 4);
    m.wire(t, va, 0x10000, false).unwrap();
    let runs = collect_runs(&m, t, va, 0x10000).unwrap();
    assert!(runs.iter().all(|r| r.addr.0 % 0x4000 == 0));
    assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 0x10000);
    // Clean before a device reads: the page-in wrote DRAM directly, so it already agrees.
    m.cache_virt(CacheOp::Clean, t, va, 0x10000).unwrap();
    let mut dev = vec![0u8; 0x10000];
    let mut at = 0usize;
    for r in &runs {
        m.device_read(r.addr, &mut dev[at..at + r.len as usize])
            .unwrap();
        at += r.len as usize;
    }
    assert_eq!(dev, data);
    m.unwire(t, va, 0x10000).unwrap();
    m.destroy_task(t).unwrap();
}
