//! MemoryMap on the simulated machine: second views of descriptor memory, shared as IOKit
//! shares them.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, MemoryDescriptor,
    MultiMemoryDescriptor, SubMemoryDescriptor,
};
use dmakit::map::{MapGuard, MapOptions, MapSharing, MemoryMap};
use dmakit::platform::{CacheMode, CpuAccess, Task, Wiring};
use dmakit::{Direction, Error, VirtAddr};
use dmakit_sim::{FaultSite, Machine, MachineBuilder};
use std::sync::Arc;

fn machine() -> Arc<Machine> {
    Arc::new(MachineBuilder::new().seed(21).build().unwrap())
}

fn buffer(m: &Arc<Machine>, n: u64) -> Arc<BufferMemoryDescriptor<Arc<Machine>>> {
    Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(n, Direction::InOut)).unwrap(),
    )
}

/// `map_pages` calls the machine has seen.
fn map_calls(m: &Machine) -> u64 {
    m.stats().calls(FaultSite::Map)
}

fn readable(m: &Machine, t: Task, va: VirtAddr) -> bool {
    m.read_virt(t, va, &mut [0u8; 1]).is_ok()
}

#[test]
fn a_mapping_is_a_second_view_of_the_same_pages() {
    let m = machine();
    let b = buffer(&m, 3 * 4096);
    let t = m.create_task();
    let map = MemoryMap::new(m.clone(), b.clone(), MapOptions::new().in_task(t)).unwrap();
    assert_eq!(map.length(), 3 * 4096);
    assert_eq!(map.task(), t);
    assert!(!map.options().is_static());
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
    let map = b.map(MapOptions::new().read_only()).unwrap();
    assert_ne!(
        map.address(),
        b.address(),
        "a read-only request gets a real mapping, never the writable own address"
    );
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
    let map = b
        .map(MapOptions::new().in_task(t).range(0x1234, 0x2000))
        .unwrap();
    assert_eq!(map.address().0 % 4096, 0x234, "page offset preserved");
    let mut v = [0u8; 9];
    m.read_virt(t, map.address(), &mut v).unwrap();
    assert_eq!(&v, b"sub-range");
    // A fixed address elsewhere is not compatible with the first mapping: a new one.
    let at = VirtAddr(0x0000_0020_0000_0234);
    let fixed = b
        .map(MapOptions::new().in_task(t).range(0x1234, 16).at(at))
        .unwrap();
    assert_eq!(fixed.address(), at);
    assert!(!fixed.same_mapping(&map));
    m.read_virt(t, at, &mut v).unwrap();
    assert_eq!(&v, b"sub-range");
    // The same request again shares it; a unique one finds the address taken.
    let again = b
        .map(MapOptions::new().in_task(t).range(0x1234, 16).at(at))
        .unwrap();
    assert!(again.same_mapping(&fixed));
    assert!(matches!(
        b.map(
            MapOptions::new()
                .in_task(t)
                .range(0x1234, 16)
                .at(at)
                .unique()
        ),
        Err(Error::RangeBusy { .. })
    ));
    // A wrong page offset is refused.
    assert!(matches!(
        b.map(
            MapOptions::new()
                .in_task(t)
                .range(0x1234, 16)
                .at(VirtAddr(0x30_0000_0000))
        ),
        Err(Error::NotAligned { .. })
    ));
}

#[test]
fn lengths_and_ranges_follow_iokit() {
    let m = machine();
    let b = buffer(&m, 8192);
    let md: Arc<dyn MemoryDescriptor> = b.clone();
    let t = m.create_task();
    // Length 0 is the whole descriptor.
    let whole = MemoryMap::new(
        m.clone(),
        md.clone(),
        MapOptions::new().in_task(t).range(0, 0),
    )
    .unwrap();
    assert_eq!(whole.length(), 8192);
    assert_eq!(whole.options().length(), 8192);
    // So a non-zero offset with length 0 runs past the end.
    for (offset, len) in [(4096, 0), (8192, 0), (8000, 500), (u64::MAX, 2)] {
        assert!(
            matches!(
                MemoryMap::new(m.clone(), md.clone(), MapOptions::new().range(offset, len)),
                Err(Error::OutOfBounds { .. })
            ),
            "{offset:#x}+{len:#x}"
        );
    }
    // A zero-length descriptor cannot be mapped at all.
    let empty = buffer(&m, 4096);
    empty.set_length(0).unwrap();
    let e = empty.map(MapOptions::new()).unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }), "{e}");
    assert_eq!(e.io_return(), dmakit::IoReturn::BAD_ARGUMENT);
}

#[test]
fn a_mapping_holds_its_descriptor_and_unmap_is_idempotent() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 4096);
    let mut map = b.map(MapOptions::new().in_task(t)).unwrap();
    let at = map.address();
    map.unmap().unwrap();
    assert_eq!(map.address(), VirtAddr(0));
    assert!(!map.is_mapped());
    map.unmap().unwrap();
    assert!(!readable(&m, t, at), "unmapped for good");
    assert_eq!(map.length(), 4096, "the length stays, as IOKit's getLength");
    // The mapping keeps the buffer alive: dropping the last outside reference frees nothing.
    let before = m.stats().allocations;
    let b2 = buffer(&m, 4096);
    let keep = b2.map(MapOptions::new().in_task(t)).unwrap();
    drop(b2);
    assert_eq!(m.stats().allocations, before + 1, "still allocated");
    m.write_virt(t, keep.address(), b"still valid").unwrap();
    let mut v = [0u8; 11];
    assert_eq!(keep.descriptor().read_bytes(0, &mut v), 11);
    assert_eq!(&v, b"still valid");
    drop(keep);
    assert_eq!(m.stats().allocations, before, "freed with the last mapping");
}

#[test]
fn cache_modes_change_what_a_device_sees() {
    let m = machine();
    let b = buffer(&m, 4096);
    let pa = b.physical_segment(0).unwrap().addr;
    let cached = b.map(MapOptions::new()).unwrap();
    let uncached = b.map(MapOptions::new().cache(CacheMode::Inhibit)).unwrap();
    assert!(!uncached.same_mapping(&cached));
    assert_eq!(uncached.options().cache_mode(), Some(CacheMode::Inhibit));
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
    let multi =
        Arc::new(MultiMemoryDescriptor::new(vec![a.clone(), b.clone()], Direction::InOut).unwrap());
    let map = MemoryMap::new(m.clone(), multi.clone(), MapOptions::new()).unwrap();
    let mut v = [0u8; 10];
    m.read_virt(Task::KERNEL, VirtAddr(map.address().0 + 4090), &mut v)
        .unwrap();
    assert_eq!(&v, b"ABCDEFGHIJ", "parts appear one after another");
    assert!(!map.options().is_static(), "two pieces: a real mapping");
    // A composite descriptor shares its mappings too.
    let again = MemoryMap::new(m.clone(), multi.clone(), MapOptions::new()).unwrap();
    assert!(again.same_mapping(&map));
    // A part that ends mid-page cannot be followed by another in one mapping.
    let odd: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(a.clone(), 0, 100, Direction::InOut).unwrap());
    let bad = Arc::new(MultiMemoryDescriptor::new(vec![odd, b.clone()], Direction::InOut).unwrap());
    assert!(matches!(
        MemoryMap::new(m.clone(), bad, MapOptions::new()),
        Err(Error::NotAligned { .. })
    ));
}

#[test]
fn two_maps_of_one_buffer_share_one_vm_mapping() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 2 * 4096);
    let calls = map_calls(&m);
    let first = b.map(MapOptions::new().in_task(t)).unwrap();
    let second = b.map(MapOptions::new().in_task(t)).unwrap();
    assert_eq!(map_calls(&m), calls + 1, "the platform mapped once");
    assert!(second.same_mapping(&first));
    assert_eq!(second.address(), first.address());
    assert_eq!(first.share_count(), 2);
    assert_eq!(b.map_registry().unwrap().live(), 1);
    // Dropping one handle keeps the other usable.
    let at = first.address();
    drop(first);
    assert_eq!(second.share_count(), 1);
    m.write_virt(t, at, b"still here").unwrap();
    let mut v = [0u8; 10];
    assert_eq!(b.read_bytes(0, &mut v), v.len());
    assert_eq!(&v, b"still here");
    // A clone is one more share; the last share tears the mapping down.
    let third = second.clone();
    assert!(third.same_mapping(&second));
    assert_eq!(third.share_count(), 2);
    let mut second = second;
    second.unmap().unwrap();
    assert_eq!(second.address(), VirtAddr(0));
    assert!(
        readable(&m, t, at),
        "unmapping one handle leaves the others"
    );
    drop(third);
    assert!(!readable(&m, t, at), "gone with the last handle");
    assert_eq!(b.map_registry().unwrap().live(), 0);
    // A new request now makes a new mapping.
    let fresh = b.map(MapOptions::new().in_task(t)).unwrap();
    assert_eq!(map_calls(&m), calls + 2);
    drop(fresh);
}

#[test]
fn racing_identical_requests_share_one_mapping() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 4096);
    let calls = map_calls(&m);
    let maps: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| b.map(MapOptions::new().in_task(t)).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(map_calls(&m), calls + 1);
    assert!(maps.iter().all(|x| x.same_mapping(&maps[0])));
    assert_eq!(maps[0].share_count(), 6);
}

#[test]
fn a_sub_range_maps_inside_the_existing_mapping() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 4 * 4096);
    assert_eq!(b.write_bytes(0x2345, b"inside"), 6);
    let calls = map_calls(&m);
    let mut whole = b.map(MapOptions::new().in_task(t)).unwrap();
    let sub = b
        .map(MapOptions::new().in_task(t).range(0x2345, 0x100))
        .unwrap();
    assert_eq!(map_calls(&m), calls + 1, "no new page-table entries");
    assert!(!sub.same_mapping(&whole));
    assert_eq!(sub.address().0, whole.address().0 + 0x2345);
    assert_eq!((sub.offset(), sub.length()), (0x2345, 0x100));
    let mut v = [0u8; 6];
    m.read_virt(t, sub.address(), &mut v).unwrap();
    assert_eq!(&v, b"inside");
    // A sub-range of the sub-range: still inside the first mapping.
    let subsub = b
        .map(MapOptions::new().in_task(t).range(0x2348, 3))
        .unwrap();
    assert!(subsub.same_mapping(
        &b.map(MapOptions::new().in_task(t).range(0x2348, 3))
            .unwrap()
    ));
    assert_eq!(subsub.address().0, whole.address().0 + 0x2348);
    assert_eq!(map_calls(&m), calls + 1);
    // The sub-mapping keeps the parent alive: unmapping the parent's handle leaves the pages.
    let base = whole.address();
    whole.unmap().unwrap();
    assert!(readable(&m, t, sub.address()));
    assert!(
        readable(&m, t, base),
        "the parent stays while a sub-mapping holds it"
    );
    // Unmapping a sub-mapping never tears its parent down while others hold it.
    let mut sub = sub;
    sub.unmap().unwrap();
    assert!(readable(&m, t, subsub.address()));
    drop(subsub);
    assert!(
        !readable(&m, t, base),
        "the last holder gone, the parent goes"
    );
}

#[test]
fn unmapping_a_sub_range_does_not_tear_down_its_parent() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 2 * 4096);
    let whole = b.map(MapOptions::new().in_task(t)).unwrap();
    let mut sub = b
        .map(MapOptions::new().in_task(t).range(4096, 4096))
        .unwrap();
    assert_eq!(
        whole.share_count(),
        2,
        "the sub-mapping holds a share of it"
    );
    sub.unmap().unwrap();
    assert_eq!(sub.address(), VirtAddr(0));
    assert_eq!(whole.share_count(), 1);
    m.write_virt(t, VirtAddr(whole.address().0 + 4096), b"ok")
        .unwrap();
}

#[test]
fn reference_only_shares_and_unique_never_does() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 4096);
    let e = b.map(MapOptions::new().in_task(t).reference()).unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }), "{e}");
    let calls = map_calls(&m);
    let first = b.map(MapOptions::new().in_task(t)).unwrap();
    let r = b.map(MapOptions::new().in_task(t).reference()).unwrap();
    assert!(r.same_mapping(&first));
    // Nothing compatible (read-only differs): reference fails, it never maps.
    assert!(b
        .map(MapOptions::new().in_task(t).read_only().reference())
        .is_err());
    assert_eq!(map_calls(&m), calls + 1);
    let u = b.map(MapOptions::new().in_task(t).unique()).unwrap();
    assert_ne!(u.address(), first.address());
    assert!(!u.same_mapping(&first));
    assert_eq!(map_calls(&m), calls + 2);
    assert_eq!(u.options().sharing_mode(), MapSharing::Unique);
    // Both views are the same memory.
    m.write_virt(t, u.address(), b"u").unwrap();
    let mut v = [0u8; 1];
    m.read_virt(t, first.address(), &mut v).unwrap();
    assert_eq!(&v, b"u");
}

#[test]
fn only_compatible_mappings_are_shared() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 2 * 4096);
    let rw = b.map(MapOptions::new().in_task(t)).unwrap();
    let other_task = b.map(MapOptions::new()).unwrap();
    let ro = b.map(MapOptions::new().in_task(t).read_only()).unwrap();
    let wc = b
        .map(MapOptions::new().in_task(t).cache(CacheMode::WriteCombine))
        .unwrap();
    let guarded = b
        .map(MapOptions::new().in_task(t).guard(MapGuard::Small))
        .unwrap();
    let all = [&rw, &other_task, &ro, &wc, &guarded];
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert!(!x.same_mapping(y), "{x:?} / {y:?}");
        }
    }
    // A default cache request takes any cache mode; an explicit one must match.
    let first = b.map(MapOptions::new().in_task(t)).unwrap();
    assert!(first.same_mapping(&rw), "the first compatible one");
    let any = b
        .map(MapOptions::new().in_task(t).cache(CacheMode::WriteCombine))
        .unwrap();
    assert!(any.same_mapping(&wc));
    let copyback = b
        .map(MapOptions::new().in_task(t).cache(CacheMode::CopyBack))
        .unwrap();
    assert!(copyback.same_mapping(&rw));
    // A fixed address shares only a mapping at exactly that address.
    let at_rw = b
        .map(MapOptions::new().in_task(t).at(rw.address()))
        .unwrap();
    assert!(at_rw.same_mapping(&rw));
    let inside = b
        .map(
            MapOptions::new()
                .in_task(t)
                .range(4096, 16)
                .at(VirtAddr(rw.address().0 + 4096)),
        )
        .unwrap();
    assert_eq!(inside.address().0, rw.address().0 + 4096);
    assert_eq!(
        rw.share_count(),
        5,
        "first, copyback, at_rw, inside and rw itself"
    );
}

#[test]
fn kernel_memory_mapped_into_its_own_task_is_its_own_address() {
    let m = machine();
    let b = buffer(&m, 2 * 4096);
    let calls = map_calls(&m);
    let mut own = b.map(MapOptions::new()).unwrap();
    assert_eq!(own.address(), b.address());
    assert!(own.options().is_static());
    assert_ne!(own.options().iokit_bits() & 0x0100_0000, 0, "kIOMapStatic");
    assert_eq!(map_calls(&m), calls, "nothing was mapped");
    // A sub-range request shares it, inside the buffer's own address.
    let sub = b.map(MapOptions::new().range(0x1800, 8)).unwrap();
    assert_eq!(sub.address().0, b.address().0 + 0x1800);
    assert!(sub.options().is_static());
    drop(sub);
    // Unique, a sub-range with nothing to share, read-only or guarded: real mappings.
    for opts in [
        MapOptions::new().unique(),
        MapOptions::new().range(4096, 4096).unique(),
        MapOptions::new().read_only(),
        MapOptions::new().guard(MapGuard::Small),
    ] {
        let x = b.map(opts).unwrap();
        assert!(!x.options().is_static(), "{opts:?}");
        assert_ne!(x.address(), VirtAddr(b.address().0 + opts.offset()));
    }
    // Unmapping the static mapping leaves the buffer's memory alone.
    own.unmap().unwrap();
    assert_eq!(own.address(), VirtAddr(0));
    b.write(0, b"mine").unwrap();
    let mut v = [0u8; 4];
    m.read_virt(Task::KERNEL, b.address(), &mut v).unwrap();
    assert_eq!(&v, b"mine");
}

#[test]
fn task_memory_mapped_into_its_owner_is_static_and_elsewhere_is_not() {
    let m = machine();
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x3000, false).unwrap();
    let d = Arc::new(
        GeneralMemoryDescriptor::with_address_range(
            m.clone(),
            t,
            VirtAddr(va.0 + 0x10),
            0x2000,
            Direction::InOut,
        )
        .unwrap(),
    );
    let own = d.map(MapOptions::new().in_task(t)).unwrap();
    assert_eq!(own.address().0, va.0 + 0x10);
    assert!(own.options().is_static());
    let k = d.map(MapOptions::new()).unwrap();
    assert!(!k.options().is_static());
    assert_eq!(k.address().0 % 4096, 0x10, "page offset preserved");
    // Two ranges are not one address: never static.
    let two = Arc::new(
        GeneralMemoryDescriptor::with_ranges(
            m.clone(),
            t,
            &[(va, 0x1000), (VirtAddr(va.0 + 0x1000), 0x1000)],
            Direction::InOut,
        )
        .unwrap(),
    );
    assert!(!two
        .map(MapOptions::new().in_task(t))
        .unwrap()
        .options()
        .is_static());
}

#[test]
fn guard_pages_are_reserved_and_inaccessible() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 2 * 4096);
    for (guard, bytes) in [(MapGuard::Small, 4096u64), (MapGuard::Large, 0x10000)] {
        let mut g = b.map(MapOptions::new().in_task(t).guard(guard)).unwrap();
        assert_eq!(g.options().guard_mode(), guard);
        let start = g.address().0;
        let end = start + 2 * 4096;
        assert!(readable(&m, t, g.address()));
        assert!(readable(&m, t, VirtAddr(end - 1)));
        for probe in [start - 1, start - bytes, end, end + bytes - 1] {
            let e = m.read_virt(t, VirtAddr(probe), &mut [0u8; 1]).unwrap_err();
            assert!(matches!(e, Error::NotMapped { .. }), "{probe:#x}: {e}");
        }
        // Nothing else is placed in a guard.
        for probe in [start - bytes, end] {
            let e = b
                .map(MapOptions::new().in_task(t).at(VirtAddr(probe)).unique())
                .unwrap_err();
            assert!(matches!(e, Error::RangeBusy { .. }), "{probe:#x}: {e}");
        }
        // The guards go with the mapping.
        g.unmap().unwrap();
        let after = b
            .map(
                MapOptions::new()
                    .in_task(t)
                    .at(VirtAddr(start - 4096))
                    .unique(),
            )
            .unwrap();
        assert_eq!(after.address().0, start - 4096);
    }
}

#[test]
fn guards_need_placement_anywhere() {
    let m = machine();
    let b = buffer(&m, 4096);
    let e = b
        .map(
            MapOptions::new()
                .in_task(m.create_task())
                .at(VirtAddr(0x20_0000_0000))
                .guard(MapGuard::Small),
        )
        .unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }), "{e}");
}

#[test]
fn physical_segment_of_a_mapping_is_the_descriptors_at_the_map_offset() {
    let m = MachineBuilder::new()
        .seed(4)
        .fragmentation(1.0)
        .build()
        .map(Arc::new)
        .unwrap();
    let b = buffer(&m, 4 * 4096);
    let t = m.create_task();
    let map = b
        .map(MapOptions::new().in_task(t).range(0x1100, 0x1000))
        .unwrap();
    let want = b.physical_segment(0x1100 + 0x80).unwrap();
    let got = map.physical_segment(0x80).unwrap();
    assert_eq!(got.addr, want.addr);
    assert_eq!(
        got.len,
        want.len.min(0x1000 - 0x80),
        "clipped to the mapping"
    );
    let last = map.physical_segment(0xFFF).unwrap();
    assert_eq!(last.len, 1);
    assert!(matches!(
        map.physical_segment(0x1000),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(Arc::ptr_eq(
        &(b.clone() as Arc<dyn MemoryDescriptor>),
        map.descriptor()
    ));
}

#[test]
fn unmap_is_refused_while_a_page_is_wired_and_the_handle_keeps_its_share() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 4096);
    let mut map = b.map(MapOptions::new().in_task(t)).unwrap();
    m.wire(t, map.address(), 16, false).unwrap();
    let e = map.unmap().unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    assert!(map.is_mapped());
    assert_eq!(map.share_count(), 1);
    m.unwire(t, map.address(), 16).unwrap();
    let at = map.address();
    map.unmap().unwrap();
    assert!(!readable(&m, t, at));
}

#[test]
fn accessors_report_the_mapping() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 3 * 4096);
    let map = b
        .map(MapOptions::new().in_task(t).range(4096, 8192).read_only())
        .unwrap();
    assert_eq!(map.task(), t);
    assert_eq!(map.length(), 8192);
    assert_eq!(map.offset(), 4096);
    let o = map.options();
    assert!(o.is_read_only() && !o.is_static());
    assert_eq!((o.offset(), o.length(), o.task()), (4096, 8192, t));
    assert_eq!(o.cache_mode(), Some(CacheMode::CopyBack));
    assert_eq!(o.fixed_address(), None);
    // kIOMapAnywhere | kIOMapCopyback | kIOMapReadOnly.
    assert_eq!(o.iokit_bits(), 0x1 | 0x300 | 0x1000);
    assert_eq!(
        MapOptions::new()
            .at(VirtAddr(0x1000))
            .cache(CacheMode::Inhibit)
            .unique()
            .guard(MapGuard::Large)
            .iokit_bits(),
        0x100 | 0x0400_0000 | 0x8000_0000
    );
    assert_eq!(
        MapOptions::new()
            .reference()
            .guard(MapGuard::Small)
            .iokit_bits(),
        0x1 | 0x0200_0000 | 0x4000_0000
    );
}

#[test]
fn the_guarded_seam_checks_its_arguments_and_releases_the_guards() {
    use dmakit::platform::{MapPiece, MapRequest, MapSource, PhysicalMemory, VirtualMemory};
    let m = machine();
    let t = m.create_task();
    let va = m.allocate_pages(4096, &Default::default()).unwrap();
    let piece = [MapPiece {
        src: MapSource::Virtual(Task::KERNEL, va),
        len: 4096,
    }];
    let req = MapRequest {
        task: t,
        at: None,
        read_only: false,
        cache: CacheMode::CopyBack,
    };
    let fixed = MapRequest {
        at: Some(VirtAddr(0x20_0000_0000)),
        ..req
    };
    assert!(matches!(
        m.map_pages_guarded(&piece, &fixed, 4096),
        Err(Error::BadArgument { .. })
    ));
    assert!(matches!(
        m.map_pages_guarded(&piece, &req, 100),
        Err(Error::NotAligned { .. })
    ));
    let at = m.map_pages_guarded(&piece, &req, 8192).unwrap();
    assert!(m.mappings(t, VirtAddr(at.0 - 8192), 8192).is_err());
    m.unmap_pages(t, at, 4096).unwrap();
    // The whole reserved range is free again: a fixed mapping over guards and all fits.
    let whole = MapRequest {
        at: Some(VirtAddr(at.0 - 8192)),
        ..req
    };
    let big = [MapPiece {
        src: MapSource::Virtual(Task::KERNEL, va),
        len: 4096,
    }; 5];
    let again = m.map_pages(&big, &whole).unwrap();
    m.unmap_pages(t, again, 5 * 4096).unwrap();
    m.free_pages(va, 4096).unwrap();
}
