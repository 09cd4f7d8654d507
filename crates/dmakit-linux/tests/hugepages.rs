//! Physically contiguous memory from 2 MiB hugepages, and the error when there are none.
//!
//! The hugepage pool is machine-wide: tests here take turns, reserve pages only as root,
//! and put the reservation back as they found it (even when they fail).

mod common;

use common::{host, need_physical, page};
use dmakit::platform::{
    collect_runs, CpuAccess, MapPiece, MapRequest, MapSource, PageRequest, PhysicalMemory, Task,
    VirtualMemory,
};
use dmakit::{Error, IoReturn, VirtAddr};
use dmakit_linux::{HugepagePool, HUGEPAGE};
use std::sync::{Mutex, MutexGuard};

const K: Task = Task::KERNEL;
const NR: &str = "/proc/sys/vm/nr_hugepages";

static POOL: Mutex<()> = Mutex::new(());

/// Exclusive use of the hugepage pool; restores `nr_hugepages` on drop.
struct PoolGuard {
    before: u64,
    _turn: MutexGuard<'static, ()>,
}

impl PoolGuard {
    fn take() -> PoolGuard {
        let turn = POOL.lock().unwrap_or_else(|p| p.into_inner());
        PoolGuard {
            before: HugepagePool::probe().total,
            _turn: turn,
        }
    }

    /// Sets the reservation; whether the kernel accepted the write.
    fn set(&self, n: u64) -> bool {
        std::fs::write(NR, n.to_string()).is_ok()
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(NR, self.before.to_string());
    }
}

fn contiguous() -> PageRequest {
    PageRequest {
        contiguous: true,
        ..PageRequest::WIRED
    }
}

#[test]
fn no_free_hugepage_is_an_error_that_says_how_to_reserve_one() {
    let pool = PoolGuard::take();
    if HugepagePool::probe().free != 0 {
        // Emptying a pool others may use is not a test's business.
        println!("skipped: this machine has free hugepages reserved, so none can be missing");
        return;
    }
    let h = host();
    let e = h.allocate_pages(16 * page(&h), &contiguous()).unwrap_err();
    assert!(matches!(e, Error::NoMemory { .. }), "{e}");
    assert_eq!(e.io_return(), IoReturn::NO_MEMORY);
    let text = e.to_string();
    assert!(text.contains("no free 2 MiB hugepages"), "{text}");
    assert!(
        text.contains("echo") && text.contains("/proc/sys/vm/nr_hugepages"),
        "{text}"
    );
    assert!(h.usage().is_idle(), "nothing leaked");
    drop(pool);
}

#[test]
fn a_hugepage_is_one_aligned_physical_run() {
    let pool = PoolGuard::take();
    let h = host();
    if !need_physical(&h) {
        return;
    }
    let want = pool.before + 2;
    if !pool.set(want) || HugepagePool::probe().free == 0 {
        println!("skipped: the kernel would not reserve 2 MiB hugepages (nr_hugepages={want})");
        return;
    }
    assert!(
        dmakit_linux::Host::new()
            .unwrap()
            .capabilities()
            .hugepages_2m
            .free
            >= 1,
        "the probe sees the reservation"
    );
    let len = 16 * page(&h);
    let va = h.allocate_pages(len, &contiguous()).unwrap();
    assert_eq!(va.0 % HUGEPAGE, 0);
    let runs = collect_runs(&h, K, va, len).unwrap();
    assert_eq!(runs.len(), 1, "one physical run: {runs:?}");
    assert_eq!(runs[0].addr.0 % HUGEPAGE, 0, "physically 2 MiB aligned");
    assert_eq!(runs[0].len, len);
    // The allocation is the length asked for, not the hugepage.
    let mut b = [0u8; 4];
    assert!(matches!(
        h.read_virt(K, VirtAddr(va.0 + len), &mut b),
        Err(Error::NotMapped { .. })
    ));
    let e = h.free_pages(va, HUGEPAGE).unwrap_err();
    assert!(matches!(e, Error::WrongSize { .. }), "{e}");
    // Not mapped twice: hugetlb pages cannot be carved into page-sized pieces.
    let piece = MapPiece {
        src: MapSource::Virtual(K, va),
        len: page(&h),
    };
    let req = MapRequest {
        task: K,
        at: None,
        read_only: false,
        cache: Default::default(),
    };
    assert!(matches!(
        h.map_pages(&[piece], &req),
        Err(Error::Unsupported { .. })
    ));
    h.free_pages(va, len).unwrap();
    // A whole hugepage, and a 2 MiB-aligned request, work too.
    let aligned = PageRequest {
        align: HUGEPAGE,
        ..contiguous()
    };
    let va = h.allocate_pages(HUGEPAGE, &aligned).unwrap();
    h.write_virt(K, VirtAddr(va.0 + HUGEPAGE - 4), b"tail")
        .unwrap();
    assert_eq!(collect_runs(&h, K, va, HUGEPAGE).unwrap().len(), 1);
    h.free_pages(va, HUGEPAGE).unwrap();
    let report = dmakit_linux::inspect(64 << 10, true).unwrap();
    assert!(report.hugepage);
    assert_eq!(report.runs.len(), 1);
    assert!(report.to_string().contains("hugepage"));
    assert!(h.usage().is_idle());
    drop(pool);
}
