//! Allocating and freeing pages of this process: requests, limits and leaks.

mod common;

use common::{host, is_mapped, locked_kib, need_physical, page};
use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Task, Wiring};
use dmakit::{Error, IoReturn, VirtAddr};

const K: Task = Task::KERNEL;

#[test]
fn wired_memory_is_zeroed_locked_and_freed_for_real() {
    let h = host();
    let len = 8 * page(&h);
    let va = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    assert_eq!(va.0 % page(&h), 0);
    let mut back = vec![0xFFu8; len as usize];
    h.read_virt(K, va, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0), "fresh pages are zero-filled");
    assert_eq!(
        locked_kib(va.0),
        len / 1024,
        "every page of wired memory is mlocked"
    );
    let u = h.usage();
    assert_eq!((u.allocations, u.allocated_bytes), (1, len));
    h.free_pages(va, len).unwrap();
    assert!(!is_mapped(va.0), "freed memory is unmapped");
    assert!(h.usage().is_idle());
}

#[test]
fn pageable_memory_is_neither_locked_nor_translatable() {
    let h = host();
    let len = 4 * page(&h);
    let va = h.allocate_pages(len, &PageRequest::PAGEABLE).unwrap();
    h.write_virt(K, VirtAddr(va.0 + 10), b"pageable").unwrap();
    assert_eq!(locked_kib(va.0), 0);
    let e = collect_runs(&h, K, va, len).unwrap_err();
    assert!(matches!(e, Error::NotReady { .. }), "{e}");
    assert_eq!(e.io_return(), IoReturn::NOT_READY);
    h.free_pages(va, len).unwrap();
}

#[test]
fn alignments_beyond_the_page_are_honoured() {
    let h = host();
    for align in [0x1_0000u64, 0x20_0000, 0x4000_0000] {
        let req = PageRequest {
            align,
            ..PageRequest::WIRED
        };
        let va = h.allocate_pages(2 * page(&h), &req).unwrap();
        assert_eq!(va.0 % align, 0, "alignment {align:#x}");
        h.write_virt(K, VirtAddr(va.0 + 2 * page(&h) - 1), &[1])
            .unwrap();
        h.free_pages(va, 2 * page(&h)).unwrap();
    }
    assert!(h.usage().is_idle(), "the trimmed reservations are gone too");
}

#[test]
fn bad_requests_are_errors_that_leak_nothing() {
    let h = host();
    let p = page(&h);
    let e = h.allocate_pages(0, &PageRequest::WIRED).unwrap_err();
    assert!(matches!(e, Error::ZeroSize { .. }), "{e}");
    assert!(matches!(
        h.allocate_pages(p + 1, &PageRequest::WIRED),
        Err(Error::NotAligned { .. })
    ));
    let odd = PageRequest {
        align: 3 * p,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        h.allocate_pages(p, &odd),
        Err(Error::BadAlignment { .. })
    ));
    let pageable_limited = PageRequest {
        phys_limit: 0xFFFF_FFFF,
        ..PageRequest::PAGEABLE
    };
    assert!(matches!(
        h.allocate_pages(p, &pageable_limited),
        Err(Error::BadArgument { .. })
    ));
    // A length whose alignment padding overflows, and one no address space can hold.
    let huge_align = PageRequest {
        align: 1 << 63,
        ..PageRequest::WIRED
    };
    assert!(matches!(
        h.allocate_pages(1 << 63, &huge_align),
        Err(Error::Overflow { .. })
    ));
    let e = h
        .allocate_pages(u64::MAX - p + 1, &PageRequest::PAGEABLE)
        .unwrap_err();
    assert!(
        matches!(e, Error::Overflow { .. } | Error::Os { .. }),
        "{e}"
    );
    let e = h
        .allocate_pages(1 << 50, &PageRequest::PAGEABLE)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: "mmap(memfd)" | "ftruncate(memfd)",
                ..
            }
        ),
        "{e}"
    );
    assert!(h.usage().is_idle(), "{:?}", h.usage());
}

#[test]
fn frees_must_match_an_allocation_exactly() {
    let h = host();
    let p = page(&h);
    let va = h.allocate_pages(2 * p, &PageRequest::WIRED).unwrap();
    let e = h.free_pages(va, p).unwrap_err();
    assert!(
        matches!(e, Error::WrongSize { allocated, given, .. } if allocated == 2 * p && given == p),
        "{e}"
    );
    assert!(matches!(
        h.free_pages(VirtAddr(va.0 + p), p),
        Err(Error::NotAllocated { .. })
    ));
    // Nothing changed: the memory is still there and usable.
    h.write_virt(K, va, b"still here").unwrap();
    assert_eq!(locked_kib(va.0), 2 * p / 1024);
    h.free_pages(va, 2 * p).unwrap();
    assert!(matches!(
        h.free_pages(va, 2 * p),
        Err(Error::NotAllocated { .. })
    ));
    assert!(matches!(
        h.free_pages(VirtAddr(u64::MAX), 1),
        Err(Error::NotAllocated { .. })
    ));
}

#[test]
fn only_the_kernel_task_exists() {
    let h = host();
    let va = h.allocate_pages(page(&h), &PageRequest::WIRED).unwrap();
    let other = Task(3);
    let mut b = [0u8; 4];
    for e in [
        h.wire(other, va, 4, false).unwrap_err(),
        h.unwire(other, va, 4).unwrap_err(),
        collect_runs(&h, other, va, 4).unwrap_err(),
        h.read_virt(other, va, &mut b).unwrap_err(),
        h.write_virt(other, va, &b).unwrap_err(),
    ] {
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    }
    h.free_pages(va, page(&h)).unwrap();
}

#[test]
fn a_limit_above_all_ram_is_met_and_verified() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    // 64 TiB: above any RAM this machine has, so every attempt must pass the check.
    let req = PageRequest {
        phys_limit: (1 << 46) - 1,
        ..PageRequest::WIRED
    };
    let len = 16 * page(&h);
    let va = h.allocate_pages(len, &req).unwrap();
    for r in collect_runs(&h, K, va, len).unwrap() {
        assert!(r.addr.0 + r.len - 1 <= req.phys_limit, "{r:?}");
    }
    h.free_pages(va, len).unwrap();
}

#[test]
fn a_32_bit_limit_is_met_or_refused_cleanly() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let req = PageRequest {
        phys_limit: 0xFFFF_FFFF,
        ..PageRequest::WIRED
    };
    let len = 8 * page(&h);
    match h.allocate_pages(len, &req) {
        Ok(va) => {
            for r in collect_runs(&h, K, va, len).unwrap() {
                assert!(r.addr.0 + r.len - 1 <= 0xFFFF_FFFF, "{r:?}");
            }
            println!("the kernel placed all pages below 4 GiB");
            h.free_pages(va, len).unwrap();
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::NoSuitableMemory {
                        limit: 0xFFFF_FFFF,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("bounce"), "says what to do: {e}");
            println!("the kernel placed pages above 4 GiB: {e}");
        }
    }
    assert!(h.usage().is_idle(), "rejected attempts were freed");
}

#[test]
fn an_impossible_limit_fails_and_frees_every_attempt() {
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let impossible = PageRequest {
        phys_limit: 0xFFFF,
        ..PageRequest::WIRED
    };
    let e = h.allocate_pages(page(&h), &impossible).unwrap_err();
    assert!(
        matches!(e, Error::NoSuitableMemory { limit: 0xFFFF, .. }),
        "{e}"
    );
    assert_eq!(e.io_return(), IoReturn::NO_MEMORY);
    assert!(h.usage().is_idle());
}

#[test]
fn contiguous_memory_beyond_one_hugepage_is_refused_clearly() {
    let h = host();
    let req = PageRequest {
        contiguous: true,
        ..PageRequest::WIRED
    };
    let e = h.allocate_pages(4 << 20, &req).unwrap_err();
    assert!(
        matches!(e, Error::NoSuitableMemory { contiguous: true, requested, .. } if requested == 4 << 20),
        "{e}"
    );
    assert!(e.to_string().contains("2 MiB"), "{e}");
    let over_aligned = PageRequest {
        align: 4 << 20,
        ..req
    };
    assert!(matches!(
        h.allocate_pages(page(&h), &over_aligned),
        Err(Error::NoSuitableMemory { .. })
    ));
    assert!(h.usage().is_idle());
}

#[test]
fn one_host_serves_many_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<dmakit_linux::Host>();
    let h = std::sync::Arc::new(host());
    let p = page(&h);
    let workers: Vec<_> = (0..4u8)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..20u8 {
                    let len = (1 + u64::from(i % 4)) * p;
                    let va = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
                    h.write_virt(K, va, &[t, i]).unwrap();
                    h.wire(K, va, len, true).unwrap();
                    let mut b = [0u8; 2];
                    h.read_virt(K, va, &mut b).unwrap();
                    assert_eq!(b, [t, i]);
                    h.unwire(K, va, len).unwrap();
                    h.free_pages(va, len).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(h.usage().is_idle());
}
