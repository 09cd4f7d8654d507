//! Behaviours of the memory side (descriptors, mappings) checked against IOKit's: each test
//! states what XNU's IOKit does and asserts that dmakit does the same.

mod common;

use common::Plain;
use dmakit::descriptor::{
    device_memory, BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor,
    InterleavedMemoryDescriptor, MemoryDescriptor, MultiMemoryDescriptor, SubMemoryDescriptor,
    FIRST_ID, PREPARATION_ID_UNPREPARED, PREPARATION_ID_UNSUPPORTED,
};
use dmakit::map::{MapOptions, MemoryMap};
use dmakit::platform::{CpuAccess, Task};
use dmakit::{Direction, Error, PhysAddr, VirtAddr};
use dmakit_sim::{FaultSite, Machine, MachineBuilder};
use std::sync::Arc;

const PAGE: u64 = 4096;

fn machine() -> Arc<Machine> {
    Arc::new(MachineBuilder::new().seed(0x10_4D17).build().unwrap())
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

/// IOSubMemoryDescriptor::prepare(forDirection) hands `forDirection` to its parent as it
/// is, so `prepare(kIODirectionNone)` wires the parent for the *parent's* direction.
#[test]
fn sub_prepare_without_direction_uses_the_parents_direction() {
    let m = machine();
    let task = m.create_task();
    let va = m.vm_allocate(task, 2 * PAGE, true).unwrap();
    let parent: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(
            m.clone(),
            task,
            va,
            2 * PAGE,
            Direction::InOut,
        )
        .unwrap(),
    );
    let window = SubMemoryDescriptor::new(parent.clone(), PAGE, PAGE, Direction::Out).unwrap();
    window.prepare_wiring(Direction::None).unwrap();
    // Wired read-write (the parent's InOut), not read-only (the window's Out).
    assert_eq!(parent.write_bytes(0, b"writable"), 8);
    parent.prepare_wiring(Direction::In).unwrap();
    parent.complete().unwrap();
    window.complete().unwrap();

    // An explicit direction still reaches the parent: Out wires it read-only.
    window.prepare_wiring(Direction::Out).unwrap();
    assert_eq!(parent.write_bytes(0, b"x"), 0, "prepared read-only");
    assert!(matches!(
        parent.prepare_wiring(Direction::In),
        Err(Error::NotWritable { .. })
    ));
    window.complete().unwrap();
}

/// IOSubMemoryDescriptor::makeMapping maps through the parent at `_start + offset`: the
/// mapping is the parent's (its getMemoryDescriptor is the parent, its offset is in the
/// parent), and a live compatible mapping of the parent is shared.
#[test]
fn a_sub_descriptor_maps_through_its_parent() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 3 * PAGE);
    let parent: Arc<dyn MemoryDescriptor> = b.clone();
    let window: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(parent.clone(), PAGE, PAGE, Direction::InOut).unwrap());

    // Nothing mapped yet: a new mapping of the parent's range.
    let alone = MemoryMap::new(m.clone(), window.clone(), MapOptions::new().in_task(t)).unwrap();
    assert!(
        Arc::ptr_eq(alone.descriptor(), &parent),
        "the parent backs it"
    );
    assert_eq!((alone.offset(), alone.length()), (PAGE, PAGE));
    assert_eq!(b.write_bytes(PAGE, b"window"), 6);
    let mut v = [0u8; 6];
    m.read_virt(t, alone.address(), &mut v).unwrap();
    assert_eq!(&v, b"window");
    drop(alone);

    // The parent mapped whole: the window's mapping lies inside it, nothing new is mapped.
    let whole = b.map(MapOptions::new().in_task(t)).unwrap();
    let calls = map_calls(&m);
    let inside = MemoryMap::new(m.clone(), window.clone(), MapOptions::new().in_task(t)).unwrap();
    assert_eq!(inside.address().0, whole.address().0 + PAGE);
    assert_eq!(map_calls(&m), calls, "shared the parent's mapping");
    assert!(Arc::ptr_eq(inside.descriptor(), &parent));

    // A sub-range of the window is a sub-range of the parent.
    let part = MemoryMap::new(
        m.clone(),
        window.clone(),
        MapOptions::new().in_task(t).range(0x10, 0x20),
    )
    .unwrap();
    assert_eq!((part.offset(), part.length()), (PAGE + 0x10, 0x20));
    assert_eq!(part.address().0, whole.address().0 + PAGE + 0x10);
    assert_eq!(part.physical_segment(0).unwrap(), {
        let s = b.physical_segment(PAGE + 0x10).unwrap();
        dmakit::descriptor::Segment {
            addr: s.addr,
            len: s.len.min(0x20),
        }
    });

    // The window's own bounds still apply: length 0 means the window's whole length.
    assert!(matches!(
        MemoryMap::new(
            m.clone(),
            window.clone(),
            MapOptions::new().in_task(t).range(1, 0)
        ),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        MemoryMap::new(
            m.clone(),
            window,
            MapOptions::new().in_task(t).range(0, PAGE + 1)
        ),
        Err(Error::OutOfBounds { .. })
    ));
}

/// IOGeneralMemoryDescriptor::doMap returns a single-range descriptor's own address, with
/// kIOMapStatic, for a mapping anywhere into the task that owns the range starting at
/// offset 0, whatever its length (`length <= range length`): a prefix too.
#[test]
fn a_prefix_mapped_into_its_own_task_is_its_own_address() {
    let m = machine();
    let b = buffer(&m, 2 * PAGE);
    let calls = map_calls(&m);
    let head = b.map(MapOptions::new().range(0, PAGE)).unwrap();
    assert_eq!(head.address(), b.address());
    assert!(head.options().is_static());
    assert_eq!(head.length(), PAGE);
    assert_eq!(map_calls(&m), calls, "nothing was mapped");

    // A sub-descriptor at offset 0 maps through its parent: the same rule.
    let parent: Arc<dyn MemoryDescriptor> = b.clone();
    let first = Arc::new(SubMemoryDescriptor::new(parent, 0, 0x800, Direction::InOut).unwrap());
    let own = MemoryMap::new(m.clone(), first, MapOptions::new()).unwrap();
    assert_eq!(own.address(), b.address());
    assert!(own.options().is_static());

    // Two ranges are not one address, even for a prefix inside the first range.
    let task = m.create_task();
    let va = m.vm_allocate(task, 2 * PAGE, false).unwrap();
    let two = Arc::new(
        GeneralMemoryDescriptor::with_ranges(
            m.clone(),
            task,
            &[(va, PAGE), (VirtAddr(va.0 + PAGE), PAGE)],
            Direction::InOut,
        )
        .unwrap(),
    );
    let prefix = two
        .map(MapOptions::new().in_task(task).range(0, 0x100))
        .unwrap();
    assert!(!prefix.options().is_static());
    assert_ne!(prefix.address(), va);
}

/// IODeviceMemory::withRange(start, 0) is a physical descriptor of no bytes (IOKit accepts
/// zero-length ranges), like any physical descriptor of an empty range.
#[test]
fn device_memory_of_zero_length_is_an_empty_descriptor() {
    let m = machine();
    let d = device_memory(m.clone(), PhysAddr(0xF000_0000), 0).unwrap();
    assert_eq!(d.length(), 0);
    assert_eq!(d.direction(), Direction::None);
    assert!(matches!(
        d.physical_segment(0),
        Err(Error::OutOfBounds { .. })
    ));
    assert_eq!(d.read_bytes(0, &mut []), 0);
}

/// IOInterleavedMemoryDescriptor::clearMemoryDescriptors completes the portions of a
/// prepared descriptor, then drops them: clearing is allowed while prepared, and unwires.
#[test]
fn clearing_a_prepared_interleaved_descriptor_completes_its_portions() {
    let m = machine();
    let task = m.create_task();
    let va = m.vm_allocate(task, 2 * PAGE, true).unwrap();
    let g = Arc::new(
        GeneralMemoryDescriptor::with_address_range(
            m.clone(),
            task,
            va,
            2 * PAGE,
            Direction::InOut,
        )
        .unwrap(),
    );
    let part: Arc<dyn MemoryDescriptor> = g.clone();
    let mut il = InterleavedMemoryDescriptor::with_capacity(2, Direction::Out);
    il.set_memory_descriptor(part.clone(), PAGE, PAGE).unwrap();
    il.set_memory_descriptor(part.clone(), 0, PAGE).unwrap();
    g.prepare_wiring(Direction::None).unwrap(); // the caller's own, on the portion itself
    il.prepare_wiring(Direction::None).unwrap();
    il.prepare_wiring(Direction::None).unwrap();
    assert_eq!(g.wire_count(), 5);
    il.clear_memory_descriptors(Direction::In).unwrap();
    assert_eq!(
        g.wire_count(),
        1,
        "the interleaved descriptor's four ended, the direct one kept"
    );
    assert_eq!(
        (il.portion_count(), il.length(), il.direction()),
        (0, 0, Direction::In)
    );
    assert_eq!(il.preparation_id(), PREPARATION_ID_UNPREPARED);
    // No longer prepared: portions may be added again, and it completes silently.
    il.set_memory_descriptor(part, 0, 16).unwrap();
    il.complete().unwrap();
    assert_eq!(g.wire_count(), 1);
    g.complete().unwrap();
    assert_eq!(g.wire_count(), 0);
}

/// IOMultiMemoryDescriptor::getPreparationID looks at its parts in order and returns the
/// first part's kIOPreparationIDUnsupported or kIOPreparationIDUnprepared; with no such
/// part (no parts at all included) it has an identifier of its own.
#[test]
fn multi_preparation_id_is_decided_by_the_first_special_part() {
    let m = machine();
    let task = m.create_task();
    let va = m.vm_allocate(task, PAGE, true).unwrap();
    let pageable: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), task, va, PAGE, Direction::InOut)
            .unwrap(),
    );
    assert_eq!(pageable.preparation_id(), PREPARATION_ID_UNPREPARED);
    let plain: Arc<dyn MemoryDescriptor> = Arc::new(Plain(pageable.clone()));
    assert_eq!(plain.preparation_id(), PREPARATION_ID_UNSUPPORTED);

    let unsupported_first =
        MultiMemoryDescriptor::new(vec![plain.clone(), pageable.clone()], Direction::InOut)
            .unwrap();
    assert_eq!(
        unsupported_first.preparation_id(),
        PREPARATION_ID_UNSUPPORTED
    );
    let unprepared_first =
        MultiMemoryDescriptor::new(vec![pageable.clone(), plain], Direction::InOut).unwrap();
    assert_eq!(unprepared_first.preparation_id(), PREPARATION_ID_UNPREPARED);

    let empty = MultiMemoryDescriptor::new(vec![], Direction::InOut).unwrap();
    let id = empty.preparation_id();
    assert!(id >= FIRST_ID, "{id:#x}");
    assert_eq!(empty.preparation_id(), id, "kept");
}

/// IOBufferMemoryDescriptor::appendBytes copies at most `capacity - length` bytes and
/// always succeeds. dmakit returns the count, and (deliberately, unlike IOKit's kernel
/// buffers) appends nothing while the buffer is prepared read-only.
#[test]
fn append_bytes_stops_at_the_capacity_and_respects_a_read_only_preparation() {
    let m = machine();
    let b = BufferMemoryDescriptor::new(
        m.clone(),
        BufferOptions::new(8, Direction::Out).pageable(true),
    )
    .unwrap();
    b.set_length(6).unwrap();
    b.prepare_wiring(Direction::Out).unwrap();
    assert_eq!(b.append_bytes(b"xy"), 0, "prepared read-only");
    assert_eq!(b.length(), 6);
    b.complete().unwrap();
    assert_eq!(b.append_bytes(b"xyz"), 2, "two bytes of room");
    assert_eq!((b.length(), b.capacity()), (8, 8));
    assert_eq!(b.append_bytes(b"z"), 0);
    let mut tail = [0u8; 2];
    assert_eq!(b.read_bytes(6, &mut tail), 2);
    assert_eq!(&tail, b"xy");
}

/// IOBufferMemoryDescriptor::initWithPhysicalMask fails for a capacity of 0 and for a task
/// other than the kernel's without kIOMemoryPageable. dmakit also refuses physical
/// constraints on pageable memory (IOKit ignores them there).
#[test]
fn buffer_creation_refusals() {
    let m = machine();
    let zero = BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0, Direction::In));
    assert!(matches!(zero, Err(Error::ZeroSize { .. })));
    let task = m.create_task();
    let wired = BufferOptions::new(PAGE, Direction::In);
    assert!(matches!(
        BufferMemoryDescriptor::in_task(m.clone(), task, wired),
        Err(Error::BadArgument { .. })
    ));
    for constrained in [
        wired.pageable(true).contiguous(true),
        wired.pageable(true).phys_limit(0xFFFF_FFFF),
    ] {
        assert!(matches!(
            BufferMemoryDescriptor::new(m.clone(), constrained),
            Err(Error::BadArgument { .. })
        ));
    }
    // The capacity is kept as given; the length starts there.
    let odd =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(1500, Direction::In)).unwrap();
    assert_eq!((odd.capacity(), odd.length()), (1500, 1500));
    assert!(matches!(
        odd.bytes_no_copy(1500, 0),
        Err(Error::OutOfBounds { .. })
    ));
}

/// IOGeneralMemoryDescriptor::getPhysicalSegment of physical ranges runs to the end of the
/// range holding the offset and on through every following range that starts exactly where
/// the run ends (an empty range at that address does not break it; one elsewhere does).
#[test]
fn physical_segments_coalesce_adjacent_ranges() {
    let m = machine();
    let base = 0x10_0000u64;
    let d = GeneralMemoryDescriptor::with_physical_ranges(
        m.clone(),
        &[
            (PhysAddr(base), 0x100),
            (PhysAddr(base + 0x100), 0),
            (PhysAddr(base + 0x100), 0x100),
            (PhysAddr(base + 0x900), 0),
            (PhysAddr(base + 0x200), 0x100),
            (PhysAddr(base + 0x800), 0x10),
        ],
        Direction::Out,
    )
    .unwrap();
    assert_eq!(d.length(), 0x310);
    let s = d.physical_segment(0x10).unwrap();
    assert_eq!(
        (s.addr, s.len),
        (PhysAddr(base + 0x10), 0x1F0),
        "stops at the stray empty range"
    );
    let s = d.physical_segment(0x200).unwrap();
    assert_eq!((s.addr, s.len), (PhysAddr(base + 0x200), 0x100));
    let s = d.physical_segment(0x30F).unwrap();
    assert_eq!((s.addr, s.len), (PhysAddr(base + 0x80F), 1));
    assert!(matches!(
        d.physical_segment(0x310),
        Err(Error::OutOfBounds { .. })
    ));
    // Always prepared: one wiring, and prepare/complete change nothing.
    assert_eq!(d.wire_count(), 1);
    d.prepare_wiring(Direction::In).unwrap();
    d.complete().unwrap();
    d.complete().unwrap();
    assert_eq!(d.wire_count(), 1);
}

/// IOKit's own memory-descriptor self-test maps descriptors of several ranges that follow
/// one another in virtual memory but meet inside pages (7634 and 9870 bytes long), whole
/// and in pieces, with guard pages, and checks every word. Ranges that continue one another
/// are one piece of memory to map.
#[test]
fn ranges_that_continue_one_another_map_as_one_piece() {
    let m = machine();
    let len = 8 * PAGE;
    let base = m.vm_allocate(Task::KERNEL, len, false).unwrap();
    let words: Vec<u8> = (0..len / 4)
        .flat_map(|i| (i as u32).to_le_bytes())
        .collect();
    m.write_virt(Task::KERNEL, base, &words).unwrap();
    let start = base.0 + 0x40c;
    let ranges = [
        (VirtAddr(start), 7634),
        (VirtAddr(start + 7634), 9870),
        (VirtAddr(start + 7634 + 9870), 0x1000),
    ];
    let md = Arc::new(
        GeneralMemoryDescriptor::with_ranges(m.clone(), Task::KERNEL, &ranges, Direction::InOut)
            .unwrap(),
    );
    let total = md.length();
    for (offset, size) in [(0, 0), (0xF00, 0x3000), (7000, 4000), (4, total - 8)] {
        let map = md
            .map(
                MapOptions::new()
                    .range(offset, size)
                    .guard(dmakit::map::MapGuard::Small),
            )
            .unwrap();
        let n = if size == 0 { total } else { size };
        assert_eq!(map.length(), n);
        let mut seen = vec![0u8; n as usize];
        m.read_virt(Task::KERNEL, map.address(), &mut seen).unwrap();
        let at = (0x40c + offset) as usize;
        assert_eq!(seen, &words[at..at + n as usize], "[{offset:#x}, +{n:#x})");
    }
}

/// IOKit's self-test of multi-descriptors: DMA map lengths of one range, of a range across
/// a page boundary, of two ranges out of order, of a sub-range and of a multi of all three;
/// then a guarded mapping of the multi's tail, checked page by page.
#[test]
fn iokit_self_test_multi_memory_descriptor() {
    let m = machine();
    let data = m.vm_allocate(Task::KERNEL, 8 * PAGE, false).unwrap();
    for i in 0..8u64 {
        let page = [(i as u8) | 0xD0; PAGE as usize];
        m.write_virt(Task::KERNEL, VirtAddr(data.0 + i * PAGE), &page)
            .unwrap();
    }
    let dir = Direction::InOut;
    let map_len = |md: &dyn MemoryDescriptor| {
        let l = md.dma_map_length().unwrap();
        (l.offset, l.bytes)
    };
    let two =
        GeneralMemoryDescriptor::with_address_range(m.clone(), Task::KERNEL, data, 2, dir).unwrap();
    assert_eq!(map_len(&two), (0, PAGE));
    let across = GeneralMemoryDescriptor::with_address_range(
        m.clone(),
        Task::KERNEL,
        VirtAddr(data.0 + PAGE - 2),
        4,
        dir,
    )
    .unwrap();
    assert_eq!(map_len(&across), (PAGE - 2, 2 * PAGE));
    let ranges = [(VirtAddr(data.0 + 4 * PAGE), 4 * PAGE), (data, 4 * PAGE)];
    let md0: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_ranges(m.clone(), Task::KERNEL, &ranges, dir).unwrap(),
    );
    assert_eq!(map_len(&*md0), (0, 8 * PAGE));
    let md1: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(md0.clone(), 3 * PAGE, 2 * PAGE, dir).unwrap());
    assert_eq!(map_len(&*md1), (0, 2 * PAGE));
    let md2: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(md0.clone(), 7 * PAGE, PAGE, dir).unwrap());
    let mmd: Arc<dyn MemoryDescriptor> =
        Arc::new(MultiMemoryDescriptor::new(vec![md0, md1, md2], dir).unwrap());
    assert_eq!(map_len(&*mmd), (0, 11 * PAGE));

    let map = MemoryMap::new(
        m.clone(),
        mmd.clone(),
        MapOptions::new()
            .range(7 * PAGE, mmd.length() - 7 * PAGE)
            .guard(dmakit::map::MapGuard::Small),
    )
    .unwrap();
    assert_eq!(map.length(), 4 * PAGE);
    for (page, byte) in [(0u64, 0xD3u8), (1, 0xD7), (2, 0xD0), (3, 0xD3)] {
        let mut word = [0u8; 4];
        m.read_virt(
            Task::KERNEL,
            VirtAddr(map.address().0 + page * PAGE),
            &mut word,
        )
        .unwrap();
        assert_eq!(word, [byte; 4], "page {page}");
    }
}

/// IOKit's self-test: a pageable buffer of 2^64 - 1 bytes is refused.
#[test]
fn iokit_self_test_buffer_overflow() {
    let m = machine();
    let options = BufferOptions::new(u64::MAX, Direction::Out).pageable(true);
    assert!(BufferMemoryDescriptor::new(m.clone(), options).is_err());
}

/// IOKit's self-test: a buffer whose length was set below its capacity maps (length 0:
/// the current length) into another task, again after the length changes.
#[test]
fn iokit_self_test_set_length_then_map() {
    let m = machine();
    let b = Arc::new(
        BufferMemoryDescriptor::new(
            m.clone(),
            BufferOptions::new(0x4000, Direction::InOut).alignment(0x4000),
        )
        .unwrap(),
    );
    let task = m.create_task();
    b.set_length(0x100).unwrap();
    let map = b.map(MapOptions::new().in_task(task)).unwrap();
    assert_eq!(map.length(), 0x100);
    drop(map);
    b.set_length(0x200).unwrap();
    let map = b.map(MapOptions::new().in_task(task)).unwrap();
    assert_eq!(map.length(), 0x200);
}

/// IOKit's self-tests: an empty range at address 0 of a task can be prepared and completed;
/// preparations nest and each complete ends one.
#[test]
fn iokit_self_test_zero_length_and_nested_prepares() {
    let m = machine();
    let task = m.create_task();
    let empty = GeneralMemoryDescriptor::with_address_range(
        m.clone(),
        task,
        VirtAddr(0),
        0,
        Direction::None,
    )
    .unwrap();
    empty.prepare_wiring(Direction::None).unwrap();
    empty.complete().unwrap();
    assert_eq!(empty.wire_count(), 0);

    let b = BufferMemoryDescriptor::new(
        m.clone(),
        BufferOptions::new(24 * PAGE, Direction::In).pageable(true),
    )
    .unwrap();
    b.prepare_wiring(Direction::In).unwrap();
    b.prepare_wiring(Direction::In).unwrap();
    b.complete().unwrap();
    assert!(b.is_prepared());
    b.complete().unwrap();
    assert!(!b.is_prepared());
}

/// IOKit's self-test: a read-only kernel mapping of a user task's memory (a range starting
/// mid-page) shows its bytes, and later stores by the task show through it (a view, not a
/// copy).
#[test]
fn iokit_self_test_read_only_map_of_task_memory() {
    let m = machine();
    let task = m.create_task();
    let b = BufferMemoryDescriptor::in_task(
        m.clone(),
        task,
        BufferOptions::new(0x4018 + 0x800, Direction::InOut).pageable(true),
    )
    .unwrap();
    let p = b.address().0 + 0x800;
    for (i, v) in [0x11u8, 0x22, 0x33, 0x44].into_iter().enumerate() {
        m.write_virt(task, VirtAddr(p + i as u64 * PAGE), &[v; 4])
            .unwrap();
    }
    let md = Arc::new(
        GeneralMemoryDescriptor::with_address_range(
            m.clone(),
            task,
            VirtAddr(p),
            0x4018,
            Direction::Out,
        )
        .unwrap(),
    );
    let map = md.map(MapOptions::new().read_only()).unwrap();
    assert_eq!(map.address().0 % PAGE, 0x800, "page offset kept");
    let byte = |at: u64| {
        let mut v = [0u8; 1];
        m.read_virt(Task::KERNEL, VirtAddr(map.address().0 + at), &mut v)
            .unwrap();
        v[0]
    };
    assert_eq!(
        [byte(0), byte(0x1000), byte(0x2000), byte(0x3000)],
        [0x11, 0x22, 0x33, 0x44]
    );
    m.write_virt(task, VirtAddr(p + 0x2000), &[0x99; 4])
        .unwrap();
    assert_eq!(byte(0x2000), 0x99);
    assert!(
        m.write_virt(Task::KERNEL, map.address(), &[0]).is_err(),
        "read-only"
    );
}

/// IOKit's self-test: a buffer mapped into the kernel at fixed address 0x2000 (not a
/// kernel address) is refused.
#[test]
fn iokit_self_test_bad_fixed_address() {
    let m = machine();
    let b = Arc::new(
        BufferMemoryDescriptor::new(
            m.clone(),
            BufferOptions::new(PAGE, Direction::In).pageable(true),
        )
        .unwrap(),
    );
    let r = b.map(MapOptions::new().at(VirtAddr(0x2000)));
    assert!(r.is_err(), "{r:?}");
}

/// The main loop of IOKit's memory-descriptor self-test, over a smaller buffer: kernel
/// memory holding its own word indexes, described by one range, by three that continue one
/// another (7634 and 9870 bytes, then the rest), or, page aligned, by three pages out of
/// order; every sub-range it picks is mapped with guard pages and checked word by word
/// through the mapping and through `read_bytes` once prepared.
#[test]
fn iokit_self_test_map_sub_ranges_of_range_lists() {
    let m = machine();
    let bsize: u64 = 512 * 1024;
    let data = m.vm_allocate(Task::KERNEL, bsize, false).unwrap().0;
    let words: Vec<u8> = (0..bsize / 4)
        .flat_map(|i| (i as u32).to_le_bytes())
        .collect();
    m.write_virt(Task::KERNEL, VirtAddr(data), &words).unwrap();
    let mut maps = 0;
    let mut srcoffset = 0u64;
    while srcoffset < bsize {
        let mut srcsize = 4u64;
        while srcsize < bsize - srcoffset - 1 {
            let swapped =
                srcsize > 2 * PAGE && srcsize <= 5 * PAGE && srcoffset.is_multiple_of(PAGE);
            let ranges: Vec<(VirtAddr, u64)> = if srcsize > 5 * PAGE {
                let a = data + srcoffset;
                vec![
                    (VirtAddr(a), 7634),
                    (VirtAddr(a + 7634), 9870),
                    (VirtAddr(a + 7634 + 9870), srcsize - 7634 - 9870),
                ]
            } else if swapped {
                let a = data + srcoffset;
                vec![
                    (VirtAddr(a + PAGE), PAGE),
                    (VirtAddr(a), PAGE),
                    (VirtAddr(a + 2 * PAGE), srcsize - 2 * PAGE),
                ]
            } else {
                vec![(VirtAddr(data + srcoffset), srcsize)]
            };
            let md = Arc::new(
                GeneralMemoryDescriptor::with_ranges(
                    m.clone(),
                    Task::KERNEL,
                    &ranges,
                    Direction::InOut,
                )
                .unwrap(),
            );
            let mut mapoffset = 0u64;
            while mapoffset < srcsize {
                let mut size = 4u64;
                while size < srcsize - mapoffset - 1 {
                    let map = md
                        .map(
                            MapOptions::new()
                                .range(mapoffset, size)
                                .guard(dmakit::map::MapGuard::Small),
                        )
                        .unwrap_or_else(|e| {
                            panic!("src {srcsize:#x} @ {srcoffset:#x}, map {size:#x} @ {mapoffset:#x}: {e}")
                        });
                    maps += 1;
                    let mut via_map = vec![0u8; size as usize];
                    m.read_virt(Task::KERNEL, map.address(), &mut via_map)
                        .unwrap();
                    md.prepare_wiring(Direction::None).unwrap();
                    let mut via_md = vec![0u8; size as usize];
                    assert_eq!(md.read_bytes(mapoffset, &mut via_md), size as usize);
                    md.complete().unwrap();
                    for idx in (0..size).step_by(4) {
                        let mut offidx = idx + mapoffset + srcoffset;
                        if swapped && offidx < 2 * PAGE {
                            offidx ^= PAGE;
                        }
                        let want = (offidx / 4) as u32;
                        let at = idx as usize;
                        let got_map = u32::from_le_bytes(via_map[at..at + 4].try_into().unwrap());
                        let got_md = u32::from_le_bytes(via_md[at..at + 4].try_into().unwrap());
                        assert_eq!(
                            (got_map, got_md),
                            (want, want),
                            "src {srcsize:#x} @ {srcoffset:#x}, map {size:#x} @ {mapoffset:#x}, word {idx:#x}"
                        );
                    }
                    size = (size << 2) + 0x200;
                }
                mapoffset = (mapoffset << 1) + 0xF00;
            }
            srcsize = (srcsize << 2) + 0x3FC;
        }
        srcoffset = (srcoffset << 2) + 0x40C;
    }
    assert!(maps > 100, "{maps} mappings checked");
}

/// A fixed-address request for a sub-range of a live mapping shares it when the address is
/// where that sub-range lies in it, and gets exactly that address (dmakit's rule; IOKit
/// compares the existing mapping's start).
#[test]
fn a_fixed_sub_range_request_shares_at_the_address_asked_for() {
    let m = machine();
    let t = m.create_task();
    let b = buffer(&m, 4 * PAGE);
    let whole = b.map(MapOptions::new().in_task(t)).unwrap();
    let calls = map_calls(&m);
    let at = VirtAddr(whole.address().0 + PAGE);
    let part = b
        .map(MapOptions::new().in_task(t).at(at).range(PAGE, PAGE))
        .unwrap();
    assert_eq!(part.address(), at);
    assert_eq!(map_calls(&m), calls, "shared");
    // The existing mapping's start is not where the sub-range lies: a new mapping there
    // would clash with the live one.
    assert!(matches!(
        b.map(
            MapOptions::new()
                .in_task(t)
                .at(whole.address())
                .range(PAGE, PAGE)
        ),
        Err(Error::RangeBusy { .. })
    ));
}

/// performOperation walks `min(length, getLength() - offset)` bytes; on a coherent
/// platform there is nothing to do. dmakit checks the offset first on every platform.
#[test]
fn perform_operation_extent_on_coherent_and_incoherent_machines() {
    use dmakit::descriptor::MemoryOperation;
    for coherent in [false, true] {
        let m = Arc::new(
            MachineBuilder::new()
                .seed(0x10_4D17)
                .coherent(coherent)
                .build()
                .unwrap(),
        );
        let b = buffer(&m, 2 * PAGE);
        b.perform_operation(MemoryOperation::Flush, PAGE, 10 * PAGE)
            .unwrap();
        b.perform_operation(MemoryOperation::Store, 2 * PAGE, 1)
            .unwrap();
        assert!(matches!(
            b.perform_operation(MemoryOperation::Flush, 2 * PAGE + 1, 1),
            Err(Error::Underrun { done: 0, .. })
        ));
        let window = SubMemoryDescriptor::new(b.clone(), PAGE, PAGE, Direction::InOut).unwrap();
        window
            .perform_operation(MemoryOperation::Flush, 0, u64::MAX)
            .unwrap();
        assert!(matches!(
            window.perform_operation(MemoryOperation::Flush, PAGE + 1, 1),
            Err(Error::Underrun { .. })
        ));
    }
}

/// An interleaved descriptor's complete with nothing of its own outstanding leaves the
/// portions' other preparations alone (dmakit's rule; IOKit completes every portion).
#[test]
fn an_unprepared_interleaved_complete_leaves_its_portions_alone() {
    let m = machine();
    let task = m.create_task();
    let va = m.vm_allocate(task, PAGE, true).unwrap();
    let g = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), task, va, PAGE, Direction::InOut)
            .unwrap(),
    );
    let mut il = InterleavedMemoryDescriptor::with_capacity(1, Direction::InOut);
    il.set_memory_descriptor(g.clone(), 0, PAGE).unwrap();
    g.prepare_wiring(Direction::None).unwrap();
    il.complete().unwrap();
    assert_eq!(g.wire_count(), 1, "still prepared");
    g.complete().unwrap();
}

/// A multi-descriptor of one kernel buffer mapped into the kernel is the buffer's own
/// address (dmakit's rule; IOKit makes a new mapping for a multi-descriptor).
#[test]
fn a_multi_of_one_range_maps_to_its_own_address() {
    let m = machine();
    let b = buffer(&m, PAGE);
    let multi: Arc<dyn MemoryDescriptor> =
        Arc::new(MultiMemoryDescriptor::new(vec![b.clone()], Direction::InOut).unwrap());
    let map = MemoryMap::new(m.clone(), multi, MapOptions::new()).unwrap();
    assert!(map.options().is_static());
    assert_eq!(map.address(), b.address());
}
