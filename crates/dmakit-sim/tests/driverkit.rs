//! The DriverKit-shaped calls on the simulated machine: option checks and return codes of
//! every call, the mapping translation, and a dext's round trip through the IOMMU.

use dmakit::descriptor::{
    BufferMemoryDescriptor, GeneralMemoryDescriptor, MemoryDescriptor, PrepOwner,
};
use dmakit::dma::IoSegment;
use dmakit::driverkit::{
    DkBufferMemoryDescriptor, DkDmaCommand, DkDmaSpec, DkMapOptions, DkMemoryDescriptor,
    DkMemoryMap, DkMemoryOptions, DkPerformOptions, MAX_SEGMENTS,
};
use dmakit::map::MapGuard;
use dmakit::mapper::{IommuMapper, Mapper};
use dmakit::platform::{CacheMode, CpuAccess, Task};
use dmakit::{Direction, Error, IoAddr, IoReturn, Result, VirtAddr};
use dmakit_sim::{Machine, MachineBuilder, SimIommu};
use std::sync::Arc;

type M = Arc<Machine>;
type Buf = Arc<BufferMemoryDescriptor<M>>;

const PAGE: u64 = 4096;

fn machine() -> M {
    Arc::new(MachineBuilder::new().seed(31).build().unwrap())
}

/// A fragmented, coherent machine with an IOMMU and a mapper over `[2 GiB, 2 GiB + 256 MiB)`.
fn machine_with_iommu() -> (M, Arc<SimIommu>, Arc<IommuMapper<Arc<SimIommu>>>) {
    let m = Arc::new(
        MachineBuilder::new()
            .seed(7)
            .fragmentation(0.9)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x8000_0000, 0x1000_0000).unwrap());
    (m, iommu, mapper)
}

fn create(m: &M, dir: DkMemoryOptions, capacity: u64) -> Buf {
    DkBufferMemoryDescriptor::create(m.clone(), dir, capacity, 0).unwrap()
}

fn dyn_md(b: &Buf) -> Arc<dyn MemoryDescriptor> {
    b.clone()
}

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(salt))
        .collect()
}

fn code<T>(r: Result<T>) -> IoReturn {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.io_return(),
    }
}

fn dk_command(m: &M, mapper: Option<Arc<dyn Mapper>>, bits: u64) -> DkDmaCommand<M> {
    DkDmaCommand::create(m.clone(), mapper, 0, DkDmaSpec::new(bits)).unwrap()
}

// ---------------------------------------------------------------------------------------
// IOBufferMemoryDescriptor

#[test]
fn buffer_create_takes_direction_bits_only() {
    let m = machine();
    for bad in [0x4u64, 0x8, 0x10, 0x1_0000, 1 << 63, 0x13] {
        let r =
            DkBufferMemoryDescriptor::create(m.clone(), DkMemoryOptions::from_bits(bad), PAGE, 0);
        assert_eq!(code(r), IoReturn::BAD_ARGUMENT, "options {bad:#x}");
    }
    for (opts, dir) in [
        (DkMemoryOptions::NONE, Direction::None),
        (DkMemoryOptions::DIRECTION_IN, Direction::In),
        (DkMemoryOptions::DIRECTION_OUT, Direction::Out),
        (DkMemoryOptions::DIRECTION_OUT_IN, Direction::InOut),
    ] {
        let b = create(&m, opts, 3 * PAGE + 5);
        assert_eq!(b.direction(), dir);
        assert_eq!(b.capacity(), 3 * PAGE + 5);
        assert_eq!(
            b.length(),
            3 * PAGE + 5,
            "the kernel object's length is its capacity"
        );
        assert_eq!(b.address().0 % PAGE, 0, "page aligned, as DriverKit's");
    }
}

#[test]
fn buffer_create_failures_are_no_memory_as_in_driverkit() {
    let m = machine();
    let io = DkMemoryOptions::DIRECTION_OUT_IN;
    assert_eq!(
        code(DkBufferMemoryDescriptor::create(m.clone(), io, 0, 0)),
        IoReturn::NO_MEMORY,
        "capacity 0"
    );
    assert_eq!(
        code(DkBufferMemoryDescriptor::create(m.clone(), io, u64::MAX, 0)),
        IoReturn::NO_MEMORY,
        "a capacity whose page rounding overflows"
    );
    assert_eq!(
        code(DkBufferMemoryDescriptor::create(
            m.clone(),
            io,
            PAGE,
            (1 << 63) + 1
        )),
        IoReturn::NO_MEMORY,
        "an alignment with no power of two above it"
    );
}

#[test]
fn buffer_create_rounds_an_alignment_up_to_a_power_of_two() {
    let m = machine();
    let b = DkBufferMemoryDescriptor::create(
        m.clone(),
        DkMemoryOptions::DIRECTION_OUT_IN,
        2 * PAGE,
        3 * PAGE,
    )
    .unwrap();
    assert_eq!(b.options().alignment, 4 * PAGE);
    assert_eq!(b.address().0 % (4 * PAGE), 0);
    let seg = b.physical_segment(0).unwrap();
    assert_eq!(seg.addr.0 % (4 * PAGE), 0);
    assert_eq!(seg.len, 2 * PAGE, "an alignment above a page is contiguous");
}

#[test]
fn set_length_is_always_ok_and_ignores_a_length_above_capacity() {
    let m = machine();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT, 2 * PAGE);
    DkBufferMemoryDescriptor::set_length(&b, 100).unwrap();
    assert_eq!(DkMemoryDescriptor::get_length(&*b), 100);
    DkBufferMemoryDescriptor::set_length(&b, 2 * PAGE + 1).unwrap();
    assert_eq!(b.length(), 100, "ignored without a word");
    DkBufferMemoryDescriptor::set_length(&b, u64::MAX).unwrap();
    assert_eq!(b.length(), 100);
    let range = DkBufferMemoryDescriptor::get_address_range(&b);
    assert_eq!((range.address, range.length), (b.address(), 100));
    DkBufferMemoryDescriptor::set_length(&b, 2 * PAGE).unwrap();
    assert_eq!(
        DkBufferMemoryDescriptor::get_address_range(&b).length,
        2 * PAGE
    );
    // The address range is the buffer's memory.
    b.write(0, b"dext").unwrap();
    let mut seen = [0u8; 4];
    m.read_virt(Task::KERNEL, range.address, &mut seen).unwrap();
    assert_eq!(&seen, b"dext");
}

// ---------------------------------------------------------------------------------------
// IOMemoryDescriptor::CreateMapping and IOMemoryMap

#[test]
fn create_mapping_defaults_to_anywhere_with_small_guards() {
    let m = machine();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, 3 * PAGE);
    let md = dyn_md(&b);
    let map =
        DkMemoryDescriptor::create_mapping(m.clone(), &md, DkMapOptions::default(), 0, 0, 0, 0)
            .unwrap();
    let o = map.options();
    assert_eq!(o.guard_mode(), MapGuard::Small);
    assert_eq!(o.fixed_address(), None);
    assert!(!o.is_read_only());
    assert_ne!(map.address(), b.address(), "guards need a real mapping");
    assert_eq!(DkMemoryMap::get_address(&map), map.address().0);
    assert_eq!(DkMemoryMap::get_length(&map), 3 * PAGE);
    assert_eq!(DkMemoryMap::get_offset(&map), 0);
    // A second view of the same pages, writable, with a guard page below it.
    m.write_virt(Task::KERNEL, map.address(), b"via map")
        .unwrap();
    let mut seen = [0u8; 7];
    assert_eq!(b.read_bytes(0, &mut seen), 7);
    assert_eq!(&seen, b"via map");
    assert!(m
        .read_virt(Task::KERNEL, VirtAddr(map.address().0 - 1), &mut [0u8; 1])
        .is_err());

    let sub = DkMemoryDescriptor::create_mapping(
        m.clone(),
        &md,
        DkMapOptions::GUARDED_NONE,
        0,
        PAGE,
        PAGE,
        0,
    )
    .unwrap();
    assert_eq!(sub.options().guard_mode(), MapGuard::None);
    assert_eq!(DkMemoryMap::get_offset(&sub), PAGE);
    assert_eq!(DkMemoryMap::get_length(&sub), PAGE);
    let large =
        DkMemoryDescriptor::create_mapping(m.clone(), &md, DkMapOptions::GUARDED_LARGE, 0, 0, 0, 0)
            .unwrap();
    assert_eq!(large.options().guard_mode(), MapGuard::Large);
    let small =
        DkMemoryDescriptor::create_mapping(m.clone(), &md, DkMapOptions::GUARDED_SMALL, 0, 0, 0, 0)
            .unwrap();
    assert_eq!(small.options().guard_mode(), MapGuard::Small);
}

#[test]
fn create_mapping_at_a_fixed_address_has_no_guards() {
    let m = machine();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, 2 * PAGE);
    let md = dyn_md(&b);
    // Address space that is free: where a buffer of the same size was.
    let scratch = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, 2 * PAGE);
    let free = scratch.address().0;
    drop(scratch);
    // The guard field is not read with a fixed address.
    let opts = DkMapOptions::FIXED_ADDRESS | DkMapOptions::GUARDED_LARGE;
    let map = DkMemoryDescriptor::create_mapping(m.clone(), &md, opts, free, 0, 0, 0).unwrap();
    assert_eq!(DkMemoryMap::get_address(&map), free);
    assert_eq!(map.options().fixed_address(), Some(VirtAddr(free)));
    assert_eq!(map.options().guard_mode(), MapGuard::None);
}

#[test]
fn create_mapping_cache_modes() {
    let m = machine();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, PAGE);
    let md = dyn_md(&b);
    for (opts, mode) in [
        (DkMapOptions::CACHE_MODE_INHIBIT, CacheMode::Inhibit),
        (DkMapOptions::CACHE_MODE_COPYBACK, CacheMode::CopyBack),
        (
            DkMapOptions::CACHE_MODE_WRITE_THROUGH,
            CacheMode::WriteThrough,
        ),
        (DkMapOptions::CACHE_MODE_DEFAULT, CacheMode::CopyBack),
    ] {
        let map = DkMemoryDescriptor::create_mapping(m.clone(), &md, opts, 0, 0, 0, 0).unwrap();
        assert_eq!(map.options().cache_mode(), Some(mode), "{opts:?}");
    }
    for other in [0x300u64, 0x500, 0x600, 0x700, 0x900, 0xF00, 0xC00] {
        let r = DkMemoryDescriptor::create_mapping(
            m.clone(),
            &md,
            DkMapOptions::from_bits(other),
            0,
            0,
            0,
            0,
        );
        assert_eq!(code(r), IoReturn::BAD_ARGUMENT, "cache field {other:#x}");
    }
    let r = DkMemoryDescriptor::create_mapping(
        m.clone(),
        &md,
        DkMapOptions::CACHE_MODE_REAL_TIME,
        0,
        0,
        0,
        0,
    );
    assert_eq!(code(r), IoReturn::UNSUPPORTED);
}

#[test]
fn create_mapping_refuses_undefined_bits_guards_and_alignments() {
    let m = machine();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, PAGE);
    let md = dyn_md(&b);
    let map = |bits: u64, alignment: u64| {
        DkMemoryDescriptor::create_mapping(
            m.clone(),
            &md,
            DkMapOptions::from_bits(bits),
            0,
            0,
            0,
            alignment,
        )
    };
    for bits in [0x20u64, 0x1000, 1 << 40, 0x10, 0x14, 0x18, 0x1C] {
        assert_eq!(code(map(bits, 0)), IoReturn::BAD_ARGUMENT, "bits {bits:#x}");
    }
    assert_eq!(code(map(0, 3)), IoReturn::BAD_ARGUMENT, "alignment 3");
    assert_eq!(
        code(map(0, 1 << 20)),
        IoReturn::UNSUPPORTED,
        "alignment above a page"
    );
    for ok in [0, 1, 16, PAGE] {
        assert!(map(0, ok).is_ok(), "alignment {ok}");
    }
    // The range is the mapping's; one past the end is refused.
    let r =
        DkMemoryDescriptor::create_mapping(m.clone(), &md, DkMapOptions::default(), 0, 1, PAGE, 0);
    assert!(r.is_err());
}

#[test]
fn read_only_mappings_as_driverkit_makes_them() {
    let m = machine();
    // An Out buffer the dext created maps writable: the dext fills what the device reads.
    let out = create(&m, DkMemoryOptions::DIRECTION_OUT, PAGE);
    let md = dyn_md(&out);
    let map =
        DkMemoryDescriptor::create_mapping(m.clone(), &md, DkMapOptions::default(), 0, 0, 0, 0)
            .unwrap();
    assert!(!map.options().is_read_only());
    m.write_virt(Task::KERNEL, map.address(), b"fill").unwrap();

    // An explicit read-only request is read-only, even for the memory's own task.
    let ro =
        DkMemoryDescriptor::create_mapping(m.clone(), &md, DkMapOptions::READ_ONLY, 0, 0, 0, 0)
            .unwrap();
    assert!(ro.options().is_read_only());
    let e = m.write_virt(Task::KERNEL, ro.address(), b"no").unwrap_err();
    assert!(matches!(e, Error::NotWritable { .. }), "{e}");

    // Out memory that is not the task's own (here: physical pages) maps read-only.
    let holder = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, PAGE);
    let pa = holder.physical_segment(0).unwrap().addr;
    let foreign: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_physical_ranges(m.clone(), &[(pa, PAGE)], Direction::Out)
            .unwrap(),
    );
    let fmap = DkMemoryDescriptor::create_mapping(
        m.clone(),
        &foreign,
        DkMapOptions::default(),
        0,
        0,
        0,
        0,
    )
    .unwrap();
    assert!(fmap.options().is_read_only());
    assert!(m.write_virt(Task::KERNEL, fmap.address(), b"no").is_err());
    // The same memory described InOut maps writable.
    let both: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_physical_ranges(m.clone(), &[(pa, PAGE)], Direction::InOut)
            .unwrap(),
    );
    let bmap =
        DkMemoryDescriptor::create_mapping(m.clone(), &both, DkMapOptions::default(), 0, 0, 0, 0)
            .unwrap();
    assert!(!bmap.options().is_read_only());
}

// ---------------------------------------------------------------------------------------
// CreateSubMemoryDescriptor and CreateWithMemoryDescriptors

#[test]
fn sub_memory_descriptor_checks() {
    let m = machine();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, 2 * PAGE);
    let data = pattern(2 * PAGE as usize, 3);
    b.write(0, &data).unwrap();
    let of = dyn_md(&b);
    let io = DkMemoryOptions::DIRECTION_OUT_IN;
    for bad in [0x4u64, 0x10, 0x100] {
        let r = DkMemoryDescriptor::create_sub_memory_descriptor(
            DkMemoryOptions::from_bits(bad | 1),
            0,
            16,
            &of,
        );
        assert_eq!(code(r), IoReturn::BAD_ARGUMENT, "options {bad:#x}");
    }
    let overflow = DkMemoryDescriptor::create_sub_memory_descriptor(io, u64::MAX, 2, &of);
    assert_eq!(code(overflow), IoReturn::BAD_ARGUMENT);
    let past = DkMemoryDescriptor::create_sub_memory_descriptor(io, PAGE, PAGE + 1, &of);
    assert_eq!(code(past), IoReturn::BAD_ARGUMENT);
    let start_past = DkMemoryDescriptor::create_sub_memory_descriptor(io, 2 * PAGE + 1, 0, &of);
    assert_eq!(code(start_past), IoReturn::BAD_ARGUMENT);

    let sub = DkMemoryDescriptor::create_sub_memory_descriptor(
        DkMemoryOptions::DIRECTION_IN,
        100,
        PAGE,
        &of,
    )
    .unwrap();
    assert_eq!(DkMemoryDescriptor::get_length(&*sub), PAGE);
    assert_eq!(sub.direction(), Direction::In);
    let mut seen = vec![0u8; PAGE as usize];
    assert_eq!(sub.read_bytes(0, &mut seen), PAGE as usize);
    assert!(seen == data[100..100 + PAGE as usize]);
    // The whole parent, and an empty window at its end, are fine.
    assert!(DkMemoryDescriptor::create_sub_memory_descriptor(io, 0, 2 * PAGE, &of).is_ok());
    assert!(DkMemoryDescriptor::create_sub_memory_descriptor(io, 2 * PAGE, 0, &of).is_ok());
}

#[test]
fn memory_descriptors_combined_checks() {
    let m = machine();
    let a = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, PAGE);
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, 2 * PAGE);
    a.write(0, b"first").unwrap();
    b.write(0, b"second").unwrap();
    let io = DkMemoryOptions::DIRECTION_OUT_IN;
    assert_eq!(
        code(DkMemoryDescriptor::create_with_memory_descriptors(io, &[])),
        IoReturn::BAD_ARGUMENT,
        "no descriptor"
    );
    let many: Vec<Arc<dyn MemoryDescriptor>> = (0..33).map(|_| dyn_md(&a)).collect();
    assert_eq!(
        code(DkMemoryDescriptor::create_with_memory_descriptors(
            io, &many
        )),
        IoReturn::BAD_ARGUMENT,
        "33 descriptors"
    );
    assert!(DkMemoryDescriptor::create_with_memory_descriptors(io, &many[..32]).is_ok());
    assert_eq!(
        code(DkMemoryDescriptor::create_with_memory_descriptors(
            DkMemoryOptions::from_bits(0x23),
            &[dyn_md(&a)]
        )),
        IoReturn::BAD_ARGUMENT,
        "options beyond the direction"
    );
    let multi =
        DkMemoryDescriptor::create_with_memory_descriptors(io, &[dyn_md(&a), dyn_md(&b)]).unwrap();
    assert_eq!(DkMemoryDescriptor::get_length(&*multi), 3 * PAGE);
    assert_eq!(multi.direction(), Direction::InOut);
    let mut seen = [0u8; 6];
    assert_eq!(multi.read_bytes(PAGE, &mut seen), 6);
    assert_eq!(&seen, b"second");
}

// ---------------------------------------------------------------------------------------
// IODMACommand

#[test]
fn dma_command_create_checks() {
    let m = machine();
    let create = |options: u64, bits: u64| {
        DkDmaCommand::create(m.clone(), None, options, DkDmaSpec::new(bits)).map(|_| ())
    };
    assert_eq!(code(create(1, 64)), IoReturn::BAD_ARGUMENT, "options");
    assert_eq!(code(create(1 << 40, 64)), IoReturn::BAD_ARGUMENT, "options");
    assert_eq!(code(create(0, 256)), IoReturn::BAD_ARGUMENT, "256 bits");
    assert_eq!(
        code(create(0, u64::MAX)),
        IoReturn::BAD_ARGUMENT,
        "u64::MAX bits"
    );
    for bits in 1..12 {
        assert_eq!(code(create(0, bits)), IoReturn::NO_MEMORY, "{bits} bits");
    }
    for bits in [0, 12, 32, 48, 64, 65, 255] {
        create(0, bits).unwrap();
    }
}

/// A dext's round trip: fill a buffer, prepare it for a device behind the IOMMU, let the
/// device read and write it, copy in and out with PerformOperation, complete.
#[test]
fn round_trip_through_the_iommu() {
    let (m, iommu, mapper) = machine_with_iommu();
    let len = 4 * PAGE;
    let buf = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, len);
    let outgoing = pattern(len as usize, 5);
    buf.write(0, &outgoing).unwrap();
    let md = dyn_md(&buf);
    let dma = dk_command(&m, Some(mapper.clone()), 48);

    let mut segments = [IoSegment::default(); MAX_SEGMENTS];
    let (flags, count) = dma.prepare_for_dma(0, &md, 0, len, &mut segments).unwrap();
    assert_eq!(
        flags,
        DkMemoryOptions::DIRECTION_OUT | DkMemoryOptions::DIRECTION_IN
    );
    assert_eq!(flags.bits(), 3);
    assert_eq!(
        count,
        1,
        "scattered pages are one IO range: {:?}",
        &segments[..4]
    );
    let seg = segments[0];
    assert_eq!(seg.len, len);
    assert!(
        (0x8000_0000..0x9000_0000).contains(&seg.addr.0),
        "an IO address of the device's IOMMU: {seg:?}"
    );
    assert_eq!(
        segments[1],
        IoSegment::default(),
        "nothing written past the count"
    );

    // Prepared for the command: the descriptor's preparation and the command's are the
    // command's, so the caller cannot end them.
    assert!(dma.is_prepared());
    assert_eq!(buf.holders().count(dma.prep_owner()), 2);
    assert_eq!(code(buf.complete()), IoReturn::NOT_READY);
    let (off, plen, pmd) = dma.get_preparation().unwrap();
    assert_eq!((off, plen), (0, len));
    assert!(Arc::ptr_eq(&pmd, &md));
    drop(pmd);

    // The device reads what the dext wrote, then writes its answer.
    let mut seen = vec![0u8; len as usize];
    iommu.device_read(seg.addr, &mut seen).unwrap();
    assert!(seen == outgoing);
    let answer = pattern(300, 77);
    iommu
        .device_write(IoAddr(seg.addr.0 + 0x1100), &answer)
        .unwrap();

    // PerformOperation Read: the device's answer into another buffer.
    let inbox = create(&m, DkMemoryOptions::DIRECTION_IN, PAGE);
    dma.perform_operation(DkPerformOptions::READ, 0x1100, 300, 16, Some(&*inbox))
        .unwrap();
    let mut got = vec![0u8; 300];
    inbox.read(16, &mut got).unwrap();
    assert!(got == answer);

    // PerformOperation Write: new bytes the device then sees.
    let patch = create(&m, DkMemoryOptions::DIRECTION_OUT, PAGE);
    let fresh = pattern(700, 200);
    patch.write(40, &fresh).unwrap();
    dma.perform_operation(DkPerformOptions::WRITE, 0x2F00, 700, 40, Some(&*patch))
        .unwrap();
    let mut dev = vec![0u8; 700];
    iommu
        .device_read(IoAddr(seg.addr.0 + 0x2F00), &mut dev)
        .unwrap();
    assert!(dev == fresh);

    // PerformOperation Zero: `data` is not needed.
    dma.perform_operation(DkPerformOptions::ZERO, 10, 1000, 0, None)
        .unwrap();
    let mut zeros = vec![0xAAu8; 1000];
    iommu
        .device_read(IoAddr(seg.addr.0 + 10), &mut zeros)
        .unwrap();
    assert!(zeros.iter().all(|&z| z == 0));

    dma.complete_dma(0).unwrap();
    assert!(!dma.is_prepared());
    assert_eq!(buf.holders().count(dma.prep_owner()), 0, "all released");
    assert_eq!(mapper.usage(), (0, 0), "IO space released");
    assert!(
        iommu.device_read(seg.addr, &mut seen).is_err(),
        "the device lost access"
    );
    assert_eq!(code(dma.get_preparation()), IoReturn::NOT_READY);

    // The buffer holds everything the device and the dext wrote.
    let mut want = outgoing.clone();
    want[0x1100..0x1100 + 300].copy_from_slice(&answer);
    want[0x2F00..0x2F00 + 700].copy_from_slice(&fresh);
    want[10..1010].fill(0);
    let mut now = vec![0u8; len as usize];
    buf.read(0, &mut now).unwrap();
    assert!(now == want);

    // The command can be used again.
    let (_, count) = dma
        .prepare_for_dma(0, &md, PAGE, PAGE, &mut segments)
        .unwrap();
    assert_eq!(count, 1);
    assert_eq!(dma.get_preparation().unwrap().0, PAGE);
    dma.complete_dma(0).unwrap();
}

#[test]
fn a_second_prepare_while_prepared_is_busy_and_changes_nothing() {
    let (m, _iommu, mapper) = machine_with_iommu();
    let a = create(&m, DkMemoryOptions::DIRECTION_OUT, 2 * PAGE);
    let b = create(&m, DkMemoryOptions::DIRECTION_IN, 2 * PAGE);
    let (ma, mb) = (dyn_md(&a), dyn_md(&b));
    let dma = dk_command(&m, Some(mapper.clone()), 64);
    let mut segs = [IoSegment::default(); 4];
    let (flags, _) = dma.prepare_for_dma(0, &ma, 0, 0, &mut segs).unwrap();
    assert_eq!(flags, DkMemoryOptions::DIRECTION_OUT);
    let before = mapper.usage();

    let e = dma.prepare_for_dma(0, &mb, 0, 0, &mut segs).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BUSY, "{e}");
    assert_eq!(
        b.holders().count(dma.prep_owner()),
        0,
        "the other descriptor's preparation is undone"
    );
    assert!(!b.is_prepared());
    // The same descriptor again is refused too (complete first).
    assert_eq!(
        code(dma.prepare_for_dma(0, &ma, 0, 0, &mut segs)),
        IoReturn::BUSY
    );
    assert_eq!(a.holders().count(dma.prep_owner()), 2, "unchanged");
    assert_eq!(mapper.usage(), before);
    let (_, _, md) = dma.get_preparation().unwrap();
    assert!(
        Arc::ptr_eq(&md, &ma),
        "the first descriptor is still the one attached"
    );

    dma.complete_dma(0).unwrap();
    let (flags, _) = dma.prepare_for_dma(0, &mb, 0, 0, &mut segs).unwrap();
    assert_eq!(flags, DkMemoryOptions::DIRECTION_IN);
    dma.complete_dma(0).unwrap();
    assert_eq!(mapper.usage(), (0, 0));
}

#[test]
fn prepare_for_dma_argument_checks_leave_nothing_prepared() {
    let (m, _iommu, mapper) = machine_with_iommu();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, 2 * PAGE);
    let md = dyn_md(&b);
    let dma = dk_command(&m, Some(mapper.clone()), 64);
    let mut segs = [IoSegment::default(); MAX_SEGMENTS + 1];
    let cases: [(u64, u64, u64, usize); 6] = [
        (1, 0, 0, 4),                // options
        (0, 0, 0, 0),                // no room for a segment
        (0, 0, 0, MAX_SEGMENTS + 1), // more than DriverKit's array
        (0, PAGE, 2 * PAGE, 4),      // past the end
        (0, 3 * PAGE, 0, 4),         // starts past the end
        (0, u64::MAX, 2, 4),         // overflows
    ];
    for (options, offset, length, n) in cases {
        let r = dma.prepare_for_dma(options, &md, offset, length, &mut segs[..n]);
        assert_eq!(
            code(r),
            IoReturn::BAD_ARGUMENT,
            "options {options} offset {offset:#x} length {length:#x} array {n}"
        );
        assert!(!dma.is_prepared());
        assert_eq!(b.holders().count(dma.prep_owner()), 0);
        assert_eq!(mapper.usage(), (0, 0));
    }
    // A length of 0 runs to the end.
    dma.prepare_for_dma(0, &md, PAGE, 0, &mut segs[..4])
        .unwrap();
    assert_eq!(dma.get_preparation().unwrap().1, PAGE);
    dma.complete_dma(0).unwrap();
}

#[test]
fn prepare_for_dma_never_truncates_the_segment_list() {
    // Physical addresses (no mapper) of a fragmented buffer: many segments.
    let m = Arc::new(
        MachineBuilder::new()
            .seed(11)
            .fragmentation(1.0)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT, 16 * PAGE);
    let md = dyn_md(&b);
    let dma = dk_command(&m, None, 64);
    let mut all = [IoSegment::default(); MAX_SEGMENTS];
    let (_, needed) = dma.prepare_for_dma(0, &md, 0, 0, &mut all).unwrap();
    assert!(
        needed >= 3,
        "the buffer must be scattered: {needed} segments"
    );
    let total: u64 = all[..needed].iter().map(|s| s.len).sum();
    assert_eq!(total, 16 * PAGE);
    assert_eq!(
        all[0].addr.0,
        b.physical_segment(0).unwrap().addr.0,
        "physical addresses"
    );
    dma.complete_dma(0).unwrap();

    let mut two = [IoSegment::default(); 2];
    let e = dma.prepare_for_dma(0, &md, 0, 0, &mut two).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::MESSAGE_TOO_LARGE, "{e}");
    let first_left_out = all[0].len + all[1].len;
    assert!(
        matches!(e, Error::MessageTooLarge { addr, .. } if addr == first_left_out),
        "{e}"
    );
    assert!(!dma.is_prepared(), "nothing stays prepared");
    assert_eq!(b.holders().count(dma.prep_owner()), 0);
    assert_eq!(code(dma.complete_dma(0)), IoReturn::NOT_READY);
    // With room for exactly what it needs, it succeeds.
    let (_, n) = dma
        .prepare_for_dma(0, &md, 0, 0, &mut all[..needed])
        .unwrap();
    assert_eq!(n, needed);
    dma.complete_dma(0).unwrap();
}

#[test]
fn a_command_without_a_mapper_never_bounces() {
    // A 32-bit device without an IOMMU and a buffer above 4 GiB: IOKit would bounce,
    // DriverKit never does, so the prepare fails and leaves nothing behind.
    let m = Arc::new(
        MachineBuilder::new()
            .ram(0x10_0000, 0x20_0000)
            .ram(0x1_0000_0000, 0x1000_0000)
            .fragmentation(0.0)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let filler = create(&m, DkMemoryOptions::DIRECTION_IN, 0x20_0000);
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT, 2 * PAGE);
    drop(filler);
    assert!(b.physical_segment(0).unwrap().addr.0 >= 1 << 32);
    let md = dyn_md(&b);
    let dma = dk_command(&m, None, 32);
    let mut segs = [IoSegment::default(); 8];
    let e = dma.prepare_for_dma(0, &md, 0, 0, &mut segs).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NO_RESOURCES, "{e}");
    assert!(!dma.is_prepared());
    assert_eq!(b.holders().count(dma.prep_owner()), 0);
    // The same buffer through the device's IOMMU is reachable.
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x8000_0000, 0x1000_0000).unwrap());
    let mapped = dk_command(&m, Some(mapper), 32);
    let (_, n) = mapped.prepare_for_dma(0, &md, 0, 0, &mut segs).unwrap();
    assert_eq!(n, 1);
    assert!(segs[0].addr.0 < 1 << 32);
    mapped.complete_dma(0).unwrap();
}

#[test]
fn complete_dma_and_get_preparation_checks() {
    let (m, _iommu, mapper) = machine_with_iommu();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, PAGE);
    let md = dyn_md(&b);
    let dma = dk_command(&m, Some(mapper), 64);
    assert_eq!(code(dma.complete_dma(0)), IoReturn::NOT_READY);
    assert_eq!(code(dma.get_preparation()), IoReturn::NOT_READY);
    let mut segs = [IoSegment::default(); 1];
    dma.prepare_for_dma(0, &md, 0, 0, &mut segs).unwrap();
    assert_eq!(code(dma.complete_dma(1)), IoReturn::BAD_ARGUMENT);
    assert!(dma.is_prepared(), "a refused complete changes nothing");
    dma.complete_dma(0).unwrap();
    assert_eq!(code(dma.complete_dma(0)), IoReturn::NOT_READY, "once only");
}

#[test]
fn perform_operation_checks() {
    let (m, _iommu, mapper) = machine_with_iommu();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, 2 * PAGE);
    let md = dyn_md(&b);
    let data = create(&m, DkMemoryOptions::DIRECTION_OUT_IN, 256);
    let dma = dk_command(&m, Some(mapper), 64);
    let op = |bits: u64| DkPerformOptions::from_bits(bits);

    // Not prepared: unknown option bits are checked first, the combination after.
    assert_eq!(
        code(dma.perform_operation(op(8), 0, 1, 0, Some(&*data))),
        IoReturn::BAD_ARGUMENT
    );
    assert_eq!(
        code(dma.perform_operation(op(0), 0, 1, 0, Some(&*data))),
        IoReturn::NOT_READY
    );
    assert_eq!(
        code(dma.perform_operation(DkPerformOptions::ZERO, 0, 1, 0, None)),
        IoReturn::NOT_READY
    );

    let mut segs = [IoSegment::default(); 4];
    // Only the first page is prepared.
    dma.prepare_for_dma(0, &md, 0, PAGE, &mut segs).unwrap();
    for bits in [0u64, 3, 5, 6, 7, 8, 0x10, 1 << 40] {
        assert_eq!(
            code(dma.perform_operation(op(bits), 0, 1, 0, Some(&*data))),
            IoReturn::BAD_ARGUMENT,
            "options {bits:#x}"
        );
    }
    assert_eq!(
        code(dma.perform_operation(DkPerformOptions::ZERO, 0, 2 * PAGE + 1, 0, None)),
        IoReturn::BAD_ARGUMENT,
        "length above the attached descriptor's"
    );
    for read_or_write in [DkPerformOptions::READ, DkPerformOptions::WRITE] {
        assert_eq!(
            code(dma.perform_operation(read_or_write, 0, 16, 0, None)),
            IoReturn::BAD_ARGUMENT,
            "no data"
        );
        assert_eq!(
            code(dma.perform_operation(read_or_write, 0, 257, 0, Some(&*data))),
            IoReturn::BAD_ARGUMENT,
            "length above the data's"
        );
    }

    // Short copies: past the end of the preparation (one page), or of the data. A read
    // that falls short delivers nothing.
    let e = dma
        .perform_operation(DkPerformOptions::READ, PAGE - 96, 200, 0, Some(&*data))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Underrun {
                done: 0,
                requested: 200,
                ..
            }
        ),
        "{e}"
    );
    let e = dma
        .perform_operation(DkPerformOptions::WRITE, 0, 100, 200, Some(&*data))
        .unwrap_err();
    // The data's read runs past its end: all or nothing, so nothing is copied.
    assert!(
        matches!(
            e,
            Error::Underrun {
                done: 0,
                requested: 100,
                ..
            }
        ),
        "{e}"
    );
    let e = dma
        .perform_operation(DkPerformOptions::ZERO, PAGE - 10, 2 * PAGE, 0, None)
        .unwrap_err();
    assert!(matches!(e, Error::Underrun { done: 10, .. }), "{e}");
    let e = dma
        .perform_operation(DkPerformOptions::ZERO, u64::MAX, 1, 0, None)
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::UNDERRUN, "{e}");
    dma.perform_operation(DkPerformOptions::READ, 0, 256, 0, Some(&*data))
        .unwrap();
    dma.complete_dma(0).unwrap();
}

#[test]
fn a_command_is_shared_between_threads() {
    let (m, iommu, mapper) = machine_with_iommu();
    let b = create(&m, DkMemoryOptions::DIRECTION_OUT, PAGE);
    b.write(0, b"shared").unwrap();
    let md = dyn_md(&b);
    let dma = Arc::new(dk_command(&m, Some(mapper.clone()), 64));
    let mut segs = [IoSegment::default(); 1];
    dma.prepare_for_dma(0, &md, 0, 0, &mut segs).unwrap();
    let other = dma.clone();
    std::thread::spawn(move || {
        let mut seen = [0u8; 6];
        iommu.device_read(segs[0].addr, &mut seen).unwrap();
        assert_eq!(&seen, b"shared");
        other.complete_dma(0).unwrap();
    })
    .join()
    .unwrap();
    assert!(!dma.is_prepared());
    assert_eq!(mapper.usage(), (0, 0));
    assert_eq!(b.holders().count(PrepOwner::CALLER), 0);
}
