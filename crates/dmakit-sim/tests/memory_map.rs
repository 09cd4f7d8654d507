//! MemoryMap on the simulated machine: second views of descriptor memory.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
    SubMemoryDescriptor,
};
use dmakit::map::{MapOptions, MemoryMap};
use dmakit::platform::{CacheMode, CpuAccess, Task, Wiring};
use dmakit::{Direction, Error, VirtAddr};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

fn machine() -> Arc<Machine> {
    Arc::new(MachineBuilder::new().seed(21).build().unwrap())
}

fn buffer(m: &Arc<Machine>, n: u64) -> Arc<BufferMemoryDescriptor<Arc<Machine>>> {
    Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(n, Direction::InOut)).unwrap(),
    )
}

#[test]
fn a_mapping_is_a_second_view_of_the_same_pages() {
    let m = machine();
    let b = buffer(&m, 3 * 4096);
    let t = m.create_task();
    let map = MemoryMap::new(m.clone(), b.as_ref(), MapOptions::new().in_task(t)).unwrap();
    assert_eq!(map.length(), 3 * 4096);
    assert_eq!(map.task(), t);
    m.write_virt(t, VirtAddr(map.address().0 + 4000), b"through the map")
        .unwrap();
    let mut back = [0u8; 15];
    assert_eq!(b.read_bytes(4000, &mut back), 15);
    assert_eq!(&back, b"through the map");
    assert_eq!(b.write_bytes(0, b"through the descriptor"), 22);
    let mut v = [0u8; 22];
    m.read_virt(t, map.address(), &mut v).unwrap();
    assert_eq!(&v, b"through the descriptor");
    // Same physical pages.
    let a = m.mappings(Task::KERNEL, b.address(), 3 * 4096).unwrap();
    let c = m.mappings(t, map.address(), 3 * 4096).unwrap();
    assert!(a.iter().zip(&c).all(|(x, y)| x.1 == y.1));
}

#[test]
fn read_only_mappings_refuse_stores() {
    let m = machine();
    let b = buffer(&m, 4096);
    let map = MemoryMap::new(m.clone(), b.as_ref(), MapOptions::new().read_only()).unwrap();
    let e = m
        .write_virt(Task::KERNEL, map.address(), b"no")
        .unwrap_err();
    assert!(matches!(e, Error::NotWritable { .. }), "{e}");
    assert!(matches!(
        m.wire(Task::KERNEL, map.address(), 10, true),
        Err(Error::NotWritable { .. })
    ));
    let mut r = [0u8; 2];
    m.read_virt(Task::KERNEL, map.address(), &mut r).unwrap();
    assert_eq!(
        b.write_bytes(0, b"ok"),
        2,
        "the descriptor itself stays writable"
    );
}

#[test]
fn sub_ranges_keep_the_page_offset_and_fixed_addresses_work() {
    let m = machine();
    let b = buffer(&m, 4 * 4096);
    assert_eq!(b.write_bytes(0x1234, b"sub-range"), 9);
    let t = m.create_task();
    let map = MemoryMap::new(
        m.clone(),
        b.as_ref(),
        MapOptions::new().in_task(t).range(0x1234, 0x2000),
    )
    .unwrap();
    assert_eq!(map.address().0 % 4096, 0x234, "page offset preserved");
    let mut v = [0u8; 9];
    m.read_virt(t, map.address(), &mut v).unwrap();
    assert_eq!(&v, b"sub-range");
    let at = VirtAddr(0x0000_0020_0000_0234);
    let fixed = MemoryMap::new(
        m.clone(),
        b.as_ref(),
        MapOptions::new().in_task(t).range(0x1234, 16).at(at),
    )
    .unwrap();
    assert_eq!(fixed.address(), at);
    m.read_virt(t, at, &mut v).unwrap();
    assert_eq!(&v, b"sub-range");
    // The same fixed address again is taken; a wrong page offset is refused.
    assert!(matches!(
        MemoryMap::new(
            m.clone(),
            b.as_ref(),
            MapOptions::new().in_task(t).range(0x1234, 16).at(at)
        ),
        Err(Error::RangeBusy { .. })
    ));
    assert!(matches!(
        MemoryMap::new(
            m.clone(),
            b.as_ref(),
            MapOptions::new()
                .in_task(t)
                .range(0x1234, 16)
                .at(VirtAddr(0x30_0000_0000))
        ),
        Err(Error::NotAligned { .. })
    ));
}

#[test]
fn bad_ranges_are_errors() {
    let m = machine();
    let b = buffer(&m, 8192);
    let md: &dyn MemoryDescriptor = b.as_ref();
    assert!(matches!(
        MemoryMap::new(m.clone(), md, MapOptions::new().range(0, 0)),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        MemoryMap::new(m.clone(), md, MapOptions::new().range(8000, 500)),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        MemoryMap::new(m.clone(), md, MapOptions::new().range(u64::MAX, 2)),
        Err(Error::OutOfBounds { .. })
    ));
    let past = MapOptions {
        offset: 8192,
        ..MapOptions::new()
    };
    assert!(matches!(
        MemoryMap::new(m.clone(), md, past),
        Err(Error::OutOfBounds { .. })
    ));
}

#[test]
fn unmap_and_drop_remove_the_view_and_the_buffer_cannot_be_freed_under_it() {
    let m = machine();
    let b = buffer(&m, 4096);
    let mut map = MemoryMap::new(m.clone(), b.as_ref(), MapOptions::new()).unwrap();
    let at = map.address();
    map.unmap().unwrap();
    assert_eq!(map.address(), VirtAddr(0));
    map.unmap().unwrap();
    let mut v = [0u8; 1];
    assert!(matches!(
        m.read_virt(Task::KERNEL, at, &mut v),
        Err(Error::NotMapped { .. })
    ));
    // While a mapping exists the pages are not freed (drop of the buffer leaks instead).
    let b2 = buffer(&m, 4096);
    let keep = MemoryMap::new(m.clone(), b2.as_ref(), MapOptions::new()).unwrap();
    let before = m.stats().allocations;
    drop(b2);
    assert_eq!(m.stats().allocations, before, "mapped pages stay allocated");
    m.write_virt(Task::KERNEL, keep.address(), b"still valid")
        .unwrap();
    drop(keep);
}

#[test]
fn cache_modes_change_what_a_device_sees() {
    let m = machine();
    let b = buffer(&m, 4096);
    let pa = b.physical_segment(0).unwrap().addr;
    let cached = MemoryMap::new(m.clone(), b.as_ref(), MapOptions::new()).unwrap();
    let uncached = MemoryMap::new(
        m.clone(),
        b.as_ref(),
        MapOptions::new().cache(CacheMode::Inhibit),
    )
    .unwrap();
    let mut dev = [0u8; 6];
    m.write_virt(Task::KERNEL, cached.address(), b"cached")
        .unwrap();
    m.device_read(pa, &mut dev).unwrap();
    assert_eq!(dev, [0u8; 6], "a copy-back store waits in the cache");
    m.write_virt(Task::KERNEL, VirtAddr(uncached.address().0 + 64), b"direct")
        .unwrap();
    m.device_read(dmakit::PhysAddr(pa.0 + 64), &mut dev)
        .unwrap();
    assert_eq!(
        &dev, b"direct",
        "an inhibited mapping's store reaches memory at once"
    );
}

#[test]
fn composite_descriptors_map_when_page_aligned() {
    let m = machine();
    let a = buffer(&m, 4096);
    let b = buffer(&m, 8192);
    assert_eq!(a.write_bytes(4090, b"ABCDEF"), 6);
    assert_eq!(b.write_bytes(0, b"GHIJ"), 4);
    let multi = MultiMemoryDescriptor::new(vec![a.clone(), b.clone()], Direction::InOut).unwrap();
    let map = MemoryMap::new(m.clone(), &multi, MapOptions::new()).unwrap();
    let mut v = [0u8; 10];
    m.read_virt(Task::KERNEL, VirtAddr(map.address().0 + 4090), &mut v)
        .unwrap();
    assert_eq!(&v, b"ABCDEFGHIJ", "parts appear one after another");
    // A part that ends mid-page cannot be followed by another in one mapping.
    let odd: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(a.clone(), 0, 100, Direction::InOut).unwrap());
    let bad = MultiMemoryDescriptor::new(vec![odd, b.clone()], Direction::InOut).unwrap();
    assert!(matches!(
        MemoryMap::new(m.clone(), &bad, MapOptions::new()),
        Err(Error::NotAligned { .. })
    ));
}
