//! `inspect --hugepage`: an empty pool is refused up front with its numbers, and a pool
//! whose pages all lie above the physical limit asked for is an error saying so instead of
//! telling the user to reserve more.
//!
//! The hugepage pool is machine-wide: the tests here take turns, reserve pages only as
//! root, and put `nr_hugepages` back as they found it.

mod common;

use common::*;
use std::sync::Mutex;

const NR: &str = "/proc/sys/vm/nr_hugepages";
const FREE: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

static POOL: Mutex<()> = Mutex::new(());

fn read(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Restores `nr_hugepages` when dropped.
struct Restore(u64);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(NR, self.0.to_string());
    }
}

#[test]
fn an_empty_pool_is_refused_up_front_with_its_numbers() {
    let _turn = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if read(FREE).unwrap_or(0) != 0 {
        println!("skipped: this machine has free hugepages, so none can be missing");
        return;
    }
    let r = dmakit(&["inspect", "--size", "2M", "--hugepage"]);
    r.expect(4);
    let total = read(NR).unwrap_or(0);
    let want = format!("0 free of {total} reserved");
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    assert!(
        r.stderr.contains("echo") && r.stderr.contains(NR),
        "{}",
        r.stderr
    );
}

#[test]
fn hugepages_above_the_limit_are_not_a_reason_to_reserve_more() {
    let _turn = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if !need_root("reserving hugepages") {
        return;
    }
    let Some(before) = read(NR) else {
        println!("skipped: this kernel has no 2 MiB hugepages");
        return;
    };
    let _restore = Restore(before);
    if std::fs::write(NR, (before + 2).to_string()).is_err() || read(FREE).unwrap_or(0) == 0 {
        println!("skipped: the kernel would not reserve 2 MiB hugepages");
        return;
    }
    // No hugepage lies entirely below 2 MiB (the first megabyte is the firmware's).
    let r = dmakit(&["inspect", "--size", "2M", "--hugepage", "--below", "2M"]);
    r.expect(4);
    for want in [
        "reserved 2 MiB hugepages tried, all above the physical limit 0x1fffff",
        "the lowest at 0x",
        "reserving more may not help",
    ] {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
    assert!(!r.stderr.contains("reserve more as root"), "{}", r.stderr);
    // Without the limit the same pool serves the request.
    let r = dmakit(&["inspect", "--size", "2M", "--hugepage"]);
    r.expect(0);
    assert!(r.stdout.contains("in one 2 MiB hugepage"), "{}", r.stdout);
}
