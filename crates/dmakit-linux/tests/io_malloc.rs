//! The IOMalloc family over this Linux process: wired memory is locked for real.

use dmakit::alloc::{
    io_free, io_free_pageable, io_malloc, io_malloc_aligned, io_malloc_pageable, IoHeap,
};
use dmakit::platform::{collect_runs, Task};
use dmakit::{Error, VirtAddr};
use dmakit_linux::{AddressMode, Host};

fn vm_lck_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

#[test]
fn malloc_family_on_the_host() {
    let host = Host::new().unwrap();
    let heap = IoHeap::new(&host);
    let big = io_malloc(&heap, 3 << 20).unwrap();
    assert!(
        vm_lck_kib() >= 3 * 1024,
        "3 MiB of io_malloc memory is mlocked"
    );
    if host.address_mode() == AddressMode::Physical {
        let runs = collect_runs(&host, Task::KERNEL, big, 3 << 20).unwrap();
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 3 << 20);
    } else {
        println!("skipped: physical runs need root");
    }
    let small = heap.alloc_zeroed(100).unwrap();
    small.write(0, b"on the host").unwrap();
    assert_eq!(&small.to_vec().unwrap()[..11], b"on the host");
    let p = io_malloc_pageable(&heap, 8192, 4096).unwrap();
    assert!(matches!(
        collect_runs(&host, Task::KERNEL, p, 8192),
        Err(Error::NotReady { .. })
    ));
    let a = io_malloc_aligned(&heap, 10, 1 << 16).unwrap();
    assert_eq!(a.0 % (1 << 16), 0);
    assert!(matches!(
        io_free(&heap, big, 1 << 20),
        Err(Error::WrongSize { .. })
    ));
    io_free(&heap, big, 3 << 20).unwrap();
    io_free_pageable(&heap, p, 8192).unwrap();
    dmakit::alloc::io_free_aligned(&heap, a, 10).unwrap();
    assert!(matches!(
        io_free(&heap, VirtAddr(12345), 1),
        Err(Error::NotAllocated { .. })
    ));
    drop(small);
    assert!(heap.leaks().is_empty());
    drop(heap);
    assert!(host.usage().is_idle(), "every page went back to the kernel");
}

#[test]
fn a_wired_small_block_is_kept_and_its_neighbour_is_not() {
    use dmakit::platform::Wiring;
    let host = Host::new().unwrap();
    let heap = IoHeap::new(&host);
    let a = io_malloc(&heap, 64).unwrap();
    let b = io_malloc(&heap, 64).unwrap();
    host.wire(Task::KERNEL, VirtAddr(a.0 + 8), 16, true)
        .unwrap();
    assert!(matches!(io_free(&heap, a, 64), Err(Error::Busy { addr, .. }) if addr == a.0));
    io_free(&heap, b, 64).unwrap();
    // A second host wiring the same page: this host cannot see which bytes, so it keeps the
    // block until that wiring is gone too.
    let other = Host::new().unwrap();
    host.unwire(Task::KERNEL, VirtAddr(a.0 + 8), 16).unwrap();
    other
        .wire(Task::KERNEL, VirtAddr(a.0 + 40), 8, false)
        .unwrap();
    assert!(matches!(io_free(&heap, a, 64), Err(Error::Busy { .. })));
    other.unwire(Task::KERNEL, VirtAddr(a.0 + 40), 8).unwrap();
    io_free(&heap, a, 64).unwrap();
    assert!(heap.leaks().is_empty());
}
