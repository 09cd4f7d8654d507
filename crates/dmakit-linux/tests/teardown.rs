//! Dropping a host gives everything back to the kernel — except memory a device may still
//! reach. Alone in its own test binary, so the process-wide `VmLck` is this test's.

mod common;

use common::{host, is_mapped, page, vm_lck_kib};
use dmakit::platform::{MapPiece, MapRequest, MapSource};
use dmakit::platform::{PageRequest, PhysicalMemory, Task, VirtualMemory, Wiring};

const K: Task = Task::KERNEL;

#[test]
fn dropping_the_host_frees_all_but_wired_memory() {
    let baseline = vm_lck_kib();
    let h = host();
    let p = page(&h);
    let wired = h.allocate_pages(64 * p, &PageRequest::WIRED).unwrap();
    let pageable = h.allocate_pages(4 * p, &PageRequest::PAGEABLE).unwrap();
    let second = h
        .map_pages(
            &[MapPiece {
                src: MapSource::Virtual(K, wired),
                len: 2 * p,
            }],
            &MapRequest {
                task: K,
                at: None,
                read_only: true,
                cache: Default::default(),
            },
        )
        .unwrap();
    assert!(vm_lck_kib() >= baseline + 64 * p / 1024);
    drop(h);
    assert_eq!(vm_lck_kib(), baseline, "every lock released");
    for va in [wired.0, pageable.0, second.0] {
        assert!(!is_mapped(va), "{va:#x} was unmapped");
    }

    // Memory another host holds wired survives its owner: a device may still reach it.
    let (owner, user) = (host(), host());
    let kept = owner.allocate_pages(4 * p, &PageRequest::WIRED).unwrap();
    let loose = owner.allocate_pages(4 * p, &PageRequest::WIRED).unwrap();
    user.wire(K, kept, p, true).unwrap();
    drop(owner);
    assert!(
        is_mapped(kept.0),
        "wired memory is kept (quarantined), not freed"
    );
    assert!(
        !is_mapped(loose.0),
        "unwired memory of the same host is freed"
    );
    assert_eq!(vm_lck_kib(), baseline + 4 * p / 1024, "and stays locked");
    user.unwire(K, kept, p).unwrap();
    assert!(user.usage().is_idle());
}
