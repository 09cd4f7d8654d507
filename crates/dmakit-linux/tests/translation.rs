//! Physical addresses from pagemap: real, coherent, coalesced; and access by them.

mod common;

use common::{host, need_physical, page};
use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Task, Wiring};
use dmakit::{Error, PhysAddr, PhysRange, VirtAddr};
use dmakit_linux::pagemap::Pagemap;

const K: Task = Task::KERNEL;

#[test]
fn wired_pages_have_real_distinct_frames() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let p = page(&h);
    let len = 16 * p;
    let va = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let runs = collect_runs(&h, K, va, len).unwrap();
    assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), len);
    let mut frames = Vec::new();
    for r in &runs {
        assert_ne!(r.addr.0, 0, "never a zero address");
        assert_eq!(
            r.addr.0 % p,
            0,
            "runs of a page-aligned range start on frames"
        );
        frames.extend((0..r.len / p).map(|i| r.addr.0 + i * p));
    }
    frames.sort_unstable();
    frames.dedup();
    assert_eq!(frames.len(), 16, "sixteen pages, sixteen frames");
    h.free_pages(va, len).unwrap();
}

#[test]
fn bytes_of_one_page_share_its_frame() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let p = page(&h);
    let va = h.allocate_pages(2 * p, &PageRequest::WIRED).unwrap();
    let frame = collect_runs(&h, K, va, 1).unwrap()[0].addr;
    for off in [1u64, 7, 512, p / 2, p - 1] {
        let r = collect_runs(&h, K, VirtAddr(va.0 + off), 1).unwrap();
        assert_eq!(
            r,
            vec![PhysRange::new(PhysAddr(frame.0 + off), 1)],
            "offset {off}"
        );
    }
    // A range inside the page is one run carrying the offset.
    let inside = collect_runs(&h, K, VirtAddr(va.0 + 10), 20).unwrap();
    assert_eq!(inside, vec![PhysRange::new(PhysAddr(frame.0 + 10), 20)]);
    // The public pagemap reader agrees.
    let pm = Pagemap::open(h.page_size()).unwrap();
    assert_eq!(pm.translate(va.0 + 99).unwrap(), PhysAddr(frame.0 + 99));
    h.free_pages(va, 2 * p).unwrap();
}

#[test]
fn runs_are_coalesced_and_cover_the_range_exactly() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let p = page(&h);
    let len = 64 * p;
    let va = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let (start, n) = (VirtAddr(va.0 + 100), len - 300);
    let runs = collect_runs(&h, K, start, n).unwrap();
    assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), n);
    for w in runs.windows(2) {
        assert!(!w[0].abuts(&w[1]), "adjacent frames must coalesce: {w:?}");
    }
    // Each run's bytes are what the virtual range holds at the matching offset.
    let pattern: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    h.write_virt(K, va, &pattern).unwrap();
    let mut off = 100usize;
    for r in &runs {
        let mut at = vec![0u8; r.len as usize];
        h.read_phys(r.addr, &mut at).unwrap();
        assert_eq!(at, pattern[off..off + r.len as usize]);
        off += r.len as usize;
    }
    h.free_pages(va, len).unwrap();
}

#[test]
fn writes_through_one_address_are_seen_through_the_other() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let p = page(&h);
    let len = 8 * p;
    let va = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let at = VirtAddr(va.0 + 5 * p + 7);
    h.write_virt(K, at, b"through pagemap").unwrap();
    let pa = collect_runs(&h, K, at, 15).unwrap()[0].addr;
    let mut back = [0u8; 15];
    h.read_phys(pa, &mut back).unwrap();
    assert_eq!(&back, b"through pagemap");
    h.write_phys(pa, b"THROUGH").unwrap();
    h.read_virt(K, at, &mut back[..7]).unwrap();
    assert_eq!(&back[..7], b"THROUGH");
    // An access crossing a page boundary follows each page to its own frame.
    let cross = VirtAddr(va.0 + 3 * p - 4);
    h.write_virt(K, cross, b"ABCDEFGH").unwrap();
    let runs = collect_runs(&h, K, cross, 8).unwrap();
    let mut got = Vec::new();
    for r in runs {
        let mut b = vec![0u8; r.len as usize];
        h.read_phys(r.addr, &mut b).unwrap();
        got.extend(b);
    }
    assert_eq!(got, b"ABCDEFGH");
    h.free_pages(va, len).unwrap();
    assert!(
        matches!(h.read_phys(pa, &mut back), Err(Error::NotMapped { .. })),
        "freed memory is forgotten by physical address too"
    );
}

#[test]
fn physical_access_outside_wired_allocations_copies_nothing() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let p = page(&h);
    let va = h.allocate_pages(p, &PageRequest::WIRED).unwrap();
    h.write_virt(K, va, &vec![0x11u8; p as usize]).unwrap();
    let pa = collect_runs(&h, K, va, 1).unwrap()[0].addr;
    // Runs from the last bytes of our page into a frame we do not own (unless the next frame
    // happens to be ours too, which a single page cannot make so).
    let mut buf = [0xEEu8; 16];
    let e = h.read_phys(PhysAddr(pa.0 + p - 8), &mut buf).unwrap_err();
    assert!(
        matches!(e, Error::NotMapped { addr, .. } if addr == pa.0 + p),
        "{e}"
    );
    assert_eq!(buf, [0xEE; 16], "nothing was copied");
    let e = h
        .write_phys(PhysAddr(pa.0 + p - 8), &[0x22; 16])
        .unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }), "{e}");
    let mut mine = [0u8; 8];
    h.read_virt(K, VirtAddr(va.0 + p - 8), &mut mine).unwrap();
    assert_eq!(mine, [0x11; 8], "nothing was written");
    // Pageable memory, even wired, is not reachable by physical address.
    let pv = h.allocate_pages(p, &PageRequest::PAGEABLE).unwrap();
    h.wire(K, pv, p, true).unwrap();
    let ppa = collect_runs(&h, K, pv, 1).unwrap()[0].addr;
    assert!(matches!(
        h.read_phys(ppa, &mut mine),
        Err(Error::NotMapped { .. })
    ));
    h.unwire(K, pv, p).unwrap();
    h.free_pages(pv, p).unwrap();
    h.free_pages(va, p).unwrap();
}

#[test]
fn inspect_reports_the_runs_as_a_table() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let r = dmakit_linux::inspect(100_000, false).unwrap();
    assert_eq!(r.size, 102_400);
    assert!(!r.hugepage);
    assert_eq!(r.runs.iter().map(|x| x.len).sum::<u64>(), r.size);
    let text = r.to_string();
    assert!(text.contains(&format!("{:#x}", r.va.0)), "{text}");
    for run in r.runs.iter().take(64) {
        assert!(text.contains(&format!("{:#x}", run.addr.0)), "{text}");
    }
    for fact in [
        "address mode",
        "RLIMIT_MEMLOCK",
        "hugepages",
        "pagemap PFNs",
    ] {
        assert!(text.contains(fact), "{fact} missing:\n{text}");
    }
    assert!(matches!(
        dmakit_linux::inspect(0, false),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        dmakit_linux::inspect(4 << 20, true),
        Err(Error::BadArgument { .. })
    ));
}
