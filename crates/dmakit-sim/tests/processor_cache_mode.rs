//! set_processor_cache_mode (IOSetProcessorCacheMode) on the non-coherent simulated machine:
//! an uncached page bypasses the stale-cache model, errors are IOKit's.

use dmakit::map::set_processor_cache_mode;
use dmakit::platform::{collect_runs, CacheMode, CpuAccess, PageRequest, PhysicalMemory, Task};
use dmakit::{Error, IoReturn, PhysAddr, VirtAddr};
use dmakit_sim::{Machine, MachineBuilder};

fn machine() -> Machine {
    MachineBuilder::new().seed(12).build().unwrap() // non-coherent
}

fn dev(m: &Machine, pa: PhysAddr, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    m.device_read(pa, &mut v).unwrap();
    v
}

fn cpu(m: &Machine, va: VirtAddr, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    m.read_virt(Task::KERNEL, va, &mut v).unwrap();
    v
}

#[test]
fn an_uncached_page_is_seen_at_once_by_both_sides() {
    let m = machine();
    let page = m.page().bytes();
    let va = m.allocate_pages(2 * page, &PageRequest::WIRED).unwrap();
    let pa = collect_runs(&m, Task::KERNEL, VirtAddr(va.0 + page), 1).unwrap()[0].addr;
    let second = VirtAddr(va.0 + page);

    // Write-back (the default): the device does not see the CPU's store yet.
    m.write_virt(Task::KERNEL, second, b"dirty").unwrap();
    assert_eq!(dev(&m, pa, 5), vec![0; 5], "still in a dirty line");

    set_processor_cache_mode(&m, Task::KERNEL, va, 2 * page, CacheMode::Inhibit).unwrap();
    let table = m.page_table(Task::KERNEL).unwrap();
    let entry = |v: VirtAddr| table.iter().find(|e| e.va == v).unwrap().cache;
    assert_eq!(entry(va), Some(CacheMode::Inhibit));
    assert_eq!(entry(second), Some(CacheMode::Inhibit));
    // The change wrote the dirty line back.
    assert_eq!(&dev(&m, pa, 5), b"dirty");

    // Uncached: CPU stores reach DRAM at once, device stores are read at once.
    m.write_virt(Task::KERNEL, second, b"uncached").unwrap();
    assert_eq!(&dev(&m, pa, 8), b"uncached");
    m.device_write(pa, b"from dev").unwrap();
    assert_eq!(&cpu(&m, second, 8), b"from dev");

    // Back to write-back: the stale-cache hazard returns.
    set_processor_cache_mode(&m, Task::KERNEL, second, page, CacheMode::CopyBack).unwrap();
    assert_eq!(&cpu(&m, second, 8), b"from dev"); // line now cached
    m.device_write(pa, b"newer!!!").unwrap();
    assert_eq!(
        &cpu(&m, second, 8),
        b"from dev",
        "a cached line hides the device's write"
    );
    m.write_virt(Task::KERNEL, second, b"cpu").unwrap();
    assert_eq!(&dev(&m, pa, 3), b"new", "and a dirty line the CPU's");
    m.free_pages(va, 2 * page).unwrap();
}

#[test]
fn write_through_reaches_memory_but_keeps_reading_the_cache() {
    let m = machine();
    let page = m.page().bytes();
    let va = m.allocate_pages(page, &PageRequest::WIRED).unwrap();
    let pa = collect_runs(&m, Task::KERNEL, va, 1).unwrap()[0].addr;
    set_processor_cache_mode(&m, Task::KERNEL, va, page, CacheMode::WriteThrough).unwrap();
    m.write_virt(Task::KERNEL, va, b"thru").unwrap();
    assert_eq!(&dev(&m, pa, 4), b"thru");
    m.device_write(pa, b"DEV!").unwrap();
    assert_eq!(&cpu(&m, va, 4), b"thru", "loads still hit the cached line");
    m.free_pages(va, page).unwrap();
}

#[test]
fn errors_are_iokits_and_change_nothing() {
    let m = machine();
    let page = m.page().bytes();
    let va = m.allocate_pages(page, &PageRequest::WIRED).unwrap();
    let user = m.create_task();
    let uva = m.vm_allocate(user, page, false).unwrap();
    for (task, at, len) in [
        (user, uva, page),
        (Task::KERNEL, VirtAddr(va.0 + 8), page),
        (Task::KERNEL, va, 100),
    ] {
        let e = set_processor_cache_mode(&m, task, at, len, CacheMode::Inhibit).unwrap_err();
        assert_eq!(e.io_return(), IoReturn::UNSUPPORTED, "{e:?}");
    }
    assert!(matches!(
        set_processor_cache_mode(
            &m,
            Task::KERNEL,
            VirtAddr(u64::MAX - page + 1),
            2 * page,
            CacheMode::Inhibit
        ),
        Err(Error::Overflow { .. })
    ));
    // A resident page followed by one nothing backs (pageable, never touched): VM error, and
    // the first page keeps its mode.
    let pageable = m.allocate_pages(2 * page, &PageRequest::PAGEABLE).unwrap();
    m.write_virt(Task::KERNEL, pageable, b"in").unwrap();
    let e = set_processor_cache_mode(&m, Task::KERNEL, pageable, 2 * page, CacheMode::Inhibit)
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::VM_ERROR);
    assert!(matches!(e, Error::NotMapped { addr, .. } if addr == pageable.0 + page));
    let table = m.page_table(Task::KERNEL).unwrap();
    assert!(table.iter().all(|e| e.cache.is_none()), "nothing changed");
    // Nothing mapped at all.
    m.free_pages(va, page).unwrap();
    let e = set_processor_cache_mode(&m, Task::KERNEL, va, page, CacheMode::Inhibit).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::VM_ERROR);
    // A zero length is fine and does nothing.
    set_processor_cache_mode(&m, Task::KERNEL, va, 0, CacheMode::Inhibit).unwrap();
    m.free_pages(pageable, 2 * page).unwrap();
}
