//! IOKit's states and error codes of `DmaCommand`, and the misuse that must not let a device
//! reach memory that was given back: a descriptor `complete` that would end a command's
//! preparation, a two-way synchronize over a bounce buffer, nested and conflicting
//! prepares, segment walks past the end or from an offset no segment starts at.
//!
//! Each use-after-free test lets the simulated device write after the misuse and checks the
//! bytes land in the memory it was given and nowhere else.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, MemoryDescriptor, PrepOwner,
};
use dmakit::dma::{
    Bidirectional, BouncePool, CompleteOptions, Constraint, CpuOwned, DmaCommand, IoSegment,
    PrepareOptions, SegmentFormat, SegmentSpec,
};
use dmakit::platform::{PageRequest, PhysicalMemory, Task};
use dmakit::{Direction, Error, IoReturn, PhysAddr};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

type M = Arc<Machine>;

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(salt))
        .collect()
}

fn machine() -> M {
    Arc::new(
        MachineBuilder::new()
            .seed(11)
            .coherent(true)
            .ram(0x10_0000, 0x40_0000)
            .ram(0x1_0000_0000, 0x100_0000)
            .build()
            .unwrap(),
    )
}

/// The segments of a prepared command, through the decoding iterator.
fn segs(cmd: &DmaCommand<M>) -> Vec<IoSegment> {
    cmd.segments().collect::<dmakit::Result<_>>().unwrap()
}

/// The device writes `data` through the command's segments.
fn device_writes(m: &Machine, cmd: &DmaCommand<M>, data: &[u8]) {
    let mut at = 0;
    for s in segs(cmd) {
        m.device_write(PhysAddr(s.addr.0), &data[at..at + s.len as usize])
            .unwrap();
        at += s.len as usize;
    }
    assert_eq!(at, data.len());
}

/// Kernel memory the caller allocated itself, described by a general descriptor.
fn task_memory(m: &M, len: u64) -> (dmakit::VirtAddr, Arc<GeneralMemoryDescriptor<M>>) {
    let req = PageRequest {
        pageable: true,
        ..PageRequest::default()
    };
    let va = m.allocate_pages(len, &req).unwrap();
    let md = GeneralMemoryDescriptor::with_address_range(
        m.clone(),
        Task::KERNEL,
        va,
        len,
        Direction::InOut,
    )
    .unwrap();
    (va, Arc::new(md))
}

#[test]
fn a_descriptor_complete_cannot_end_a_commands_preparation() {
    let m = machine();
    let (va, md) = task_memory(&m, 0x3000);
    let mut cmd = DmaCommand::builder(m.clone()).build().unwrap();
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    assert_eq!(md.holders().count(cmd.prep_owner()), 1);

    // The misuse: the caller completes the descriptor the command holds prepared.
    let e = md.complete().unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_READY, "{e}");
    assert_eq!(md.wire_count(), 1, "the command's wiring stands");
    // The dma-debug ledger (on in these tests) reports the attempt.
    assert!(dmakit::debug::violations_of(cmd.debug_id())
        .iter()
        .any(|v| v.kind == dmakit::debug::ViolationKind::ForeignComplete));
    // So the pages cannot be given back and handed to someone else.
    let e = m.free_pages(va, 0x3000).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BUSY, "{e}");
    let other = m.allocate_pages(0x3000, &PageRequest::default()).unwrap();
    let other_md = GeneralMemoryDescriptor::with_address_range(
        m.clone(),
        Task::KERNEL,
        other,
        0x3000,
        Direction::InOut,
    )
    .unwrap();
    assert_eq!(other_md.write_bytes(0, &[0xEE; 0x3000]), 0x3000);

    // The device writes after the misuse: the bytes land in the command's memory only.
    let data = pattern(0x3000, 1);
    device_writes(&m, &cmd, &data);
    let mut back = vec![0u8; 0x3000];
    assert_eq!(md.read_bytes(0, &mut back), back.len());
    assert!(
        back == data,
        "the device's bytes are in the memory it was given"
    );
    assert_eq!(other_md.read_bytes(0, &mut back), back.len());
    assert!(back.iter().all(|&b| b == 0xEE), "and nowhere else");

    // The command's own complete ends it; then the memory can go.
    cmd.complete().unwrap();
    assert_eq!(md.wire_count(), 0);
    drop(cmd);
    drop(md);
    m.free_pages(va, 0x3000).unwrap();
}

#[test]
fn the_callers_own_preparations_are_counted_apart_from_the_commands() {
    let m = machine();
    let (_va, md) = task_memory(&m, 0x2000);
    md.prepare_wiring(Direction::InOut).unwrap();
    let mut cmd = DmaCommand::builder(m.clone()).build().unwrap();
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    assert_eq!(md.wire_count(), 2);
    md.complete().unwrap(); // the caller's own
    assert_eq!(md.wire_count(), 1);
    assert_eq!(md.holders().count(PrepOwner::CALLER), 0);
    assert!(
        md.complete().is_err(),
        "the next one would be the command's"
    );
    cmd.complete().unwrap();
    // Nobody holds anything: IOKit's over-complete is silent.
    md.complete().unwrap();
    assert_eq!(md.wire_count(), 0);
}

/// A coherent machine whose low RAM is filled while a buffer is allocated, so the buffer
/// lies above 4 GiB; the low RAM is free again for bounces.
fn high_buffer(m: &M, len: u64, dir: Direction) -> Arc<BufferMemoryDescriptor<M>> {
    let filler =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x40_0000, Direction::In))
            .unwrap();
    let b = Arc::new(BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(len, dir)).unwrap());
    drop(filler);
    assert!(b.physical_segment(0).unwrap().addr.0 >= 1 << 32);
    b
}

fn bounced(m: &M, b: Arc<BufferMemoryDescriptor<M>>) -> DmaCommand<M> {
    let pool = Arc::new(BouncePool::new(m.clone(), "states", 1 << 20));
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(SegmentSpec::builder().address_bits(32).build().unwrap())
        .format(SegmentFormat::Little32)
        .bounce_pool(pool)
        .build()
        .unwrap();
    cmd.set_memory_descriptor(b).unwrap();
    cmd
}

#[test]
fn what_the_device_wrote_survives_every_synchronize_call() {
    let m = machine();
    let old = pattern(0x2000, 3);
    let b = high_buffer(&m, 0x2000, Direction::InOut);
    assert_eq!(b.write_bytes(0, &old), old.len());
    let mut cmd = bounced(&m, b.clone());
    cmd.prepare(PrepareOptions::new()).unwrap();
    assert!(cmd.is_bounced());
    let fresh = pattern(0x2000, 99);
    device_writes(&m, &cmd, &fresh);

    // Both directions at once would copy the old bytes over the device's: refused.
    for r in [
        cmd.synchronize(Direction::InOut),
        cmd.synchronize_range(Direction::InOut, 0, 0x1000),
    ] {
        assert_eq!(r.unwrap_err().io_return(), IoReturn::BAD_ARGUMENT);
    }
    cmd.synchronize(Direction::None).unwrap();
    let mut seen = vec![0u8; 0x2000];
    assert_eq!(cmd.read_bytes(0, &mut seen), seen.len());
    assert!(
        seen == fresh,
        "the bounce buffer still holds the device's bytes"
    );
    let mut back = vec![0u8; 0x2000];
    assert_eq!(b.read_bytes(0, &mut back), back.len());
    assert!(back == old, "nothing was copied yet");

    cmd.synchronize(Direction::In).unwrap();
    assert_eq!(b.read_bytes(0, &mut back), back.len());
    assert!(back == fresh, "synchronize(In) brought the device's bytes");
    cmd.complete().unwrap();
    assert_eq!(b.read_bytes(0, &mut back), back.len());
    assert!(back == fresh, "and complete kept them");
}

#[test]
fn the_typed_path_syncs_one_direction_at_a_time_and_keeps_the_devices_bytes() {
    let m = machine();
    let b = high_buffer(&m, 0x2000, Direction::InOut);
    let pool = Arc::new(BouncePool::new(m.clone(), "typed", 1 << 20));
    let cmd = DmaCommand::builder(m.clone())
        .spec(SegmentSpec::builder().address_bits(32).build().unwrap())
        .bounce_pool(pool)
        .build()
        .unwrap();
    let b = Arc::try_unwrap(b).ok().unwrap();
    let cpu: CpuOwned<M, Bidirectional, _> = CpuOwned::new(b, cmd).unwrap();
    let dev = cpu.prepare().unwrap();
    let fresh = pattern(0x2000, 42);
    let mut at = 0;
    for s in dev.segments() {
        let s = s.unwrap();
        m.device_write(PhysAddr(s.addr.0), &fresh[at..at + s.len as usize])
            .unwrap();
        at += s.len as usize;
    }
    // The CPU writes the second page for the device; the first page keeps the device's bytes.
    dev.sync_for_device(0x1000, &[7u8; 0x1000]).unwrap();
    let mut first = vec![0u8; 0x1000];
    dev.sync_for_cpu(0, &mut first).unwrap();
    assert!(first[..] == fresh[..0x1000]);
    let cpu = dev.complete().unwrap();
    let mut back = vec![0u8; 0x2000];
    assert_eq!(cpu.read_bytes(0, &mut back), back.len());
    assert!(back[..0x1000] == fresh[..0x1000]);
    assert!(back[0x1000..].iter().all(|&x| x == 7));
}

#[test]
fn attaching_clearing_and_nested_prepares_follow_iokit() {
    let m = machine();
    let (_va, md) = task_memory(&m, 0x4000);
    let (_vb, other) = task_memory(&m, 0x1000);
    let mut cmd = DmaCommand::builder(m.clone()).build().unwrap();
    cmd.set_memory_descriptor_and_prepare(md.clone()).unwrap();
    assert_eq!(cmd.prepared(), Some((0, 0x4000)));
    // The same descriptor again: Ok, nothing prepared twice.
    cmd.set_memory_descriptor_and_prepare(md.clone()).unwrap();
    cmd.set_memory_descriptor(md.clone()).unwrap();
    assert_eq!((cmd.prepare_count(), md.wire_count()), (1, 1));
    // Another descriptor while prepared: Busy; clearing while prepared: NotReady.
    let e = cmd.set_memory_descriptor(other.clone()).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BUSY);
    let e = cmd.clear_memory_descriptor().unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_READY);
    // A nested prepare of the same range is counted; another range is refused, uncounted.
    cmd.prepare(PrepareOptions::new()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 0x4000)).unwrap();
    assert_eq!(cmd.prepare_count(), 3);
    let e = cmd.prepare(PrepareOptions::range(0, 0x1000)).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_READY);
    assert_eq!(cmd.prepare_count(), 3);
    assert_eq!(
        md.wire_count(),
        1,
        "the descriptor is wired once for the command"
    );
    cmd.complete().unwrap();
    cmd.complete_with(CompleteOptions::new().synchronize(false))
        .unwrap();
    assert_eq!(
        cmd.prepared(),
        Some((0, 0x4000)),
        "one prepare is still out"
    );
    assert_eq!(md.wire_count(), 1);
    cmd.complete().unwrap();
    assert_eq!((cmd.prepared(), md.wire_count()), (None, 0));
    assert_eq!(cmd.complete().unwrap_err().io_return(), IoReturn::NOT_READY);
    // complete_and_clear ends every prepare and detaches.
    cmd.prepare(PrepareOptions::new()).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    cmd.complete_and_clear().unwrap();
    assert!(cmd.memory_descriptor().is_none());
    assert_eq!(md.wire_count(), 0);
    // Without a descriptor, prepare is NotReady; a failed auto-prepare detaches.
    assert_eq!(
        cmd.prepare(PrepareOptions::new()).unwrap_err().io_return(),
        IoReturn::NOT_READY
    );
    let mut small = DmaCommand::builder(m.clone())
        .spec(
            SegmentSpec::builder()
                .max_transfer_size(0x1000)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(
        small
            .set_memory_descriptor_and_prepare(md.clone())
            .unwrap_err()
            .io_return(),
        IoReturn::NO_SPACE
    );
    assert!(small.memory_descriptor().is_none());
    assert_eq!(md.wire_count(), 0, "a failed prepare leaves nothing wired");
}

#[test]
fn segment_walks_end_with_overrun_and_start_only_where_a_segment_can() {
    let m = machine();
    let (_va, md) = task_memory(&m, 0x4000);
    let spec = SegmentSpec::builder()
        .alignment(0x1000)
        .max_segment_size(0x1000)
        .build()
        .unwrap();
    assert_eq!(spec.internal_alignment(), 0x1000);
    let mut cmd = DmaCommand::builder(m.clone()).spec(spec).build().unwrap();
    cmd.set_memory_descriptor(md).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    let mut out = [0u8; 16 * 8];
    let mut off = 0x4000;
    let e = cmd.gen_segments(&mut off, &mut out).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::OVERRUN, "{e}");
    assert_eq!(off, 0x4000, "unchanged");
    let mut off = 0x5000;
    assert!(matches!(
        cmd.gen_segments(&mut off, &mut out),
        Err(Error::Overrun { .. })
    ));
    // Offset 1 with a 4 KiB alignment: no segment may start at ...001.
    let mut off = 1;
    let e = cmd.gen_segments(&mut off, &mut out).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_ALIGNED, "{e}");
    assert_eq!(off, 1);
    assert!(cmd.segments_from(1).next().unwrap().is_err());
    // From a page boundary it continues as a whole walk would.
    let whole = segs(&cmd);
    let mut off = 0x1000;
    let n = cmd.gen_segments(&mut off, &mut out).unwrap();
    let tail: Vec<IoSegment> = (0..n)
        .map(|i| SegmentFormat::Host64.read(&out, i).unwrap())
        .collect();
    assert_eq!(tail[..], whole[1..]);
    assert_eq!(off, 0x4000);
    // Room for no segment is BadArgument; not prepared is NotReady.
    assert_eq!(
        cmd.gen_segments(&mut 0, &mut out[..8])
            .unwrap_err()
            .io_return(),
        IoReturn::BAD_ARGUMENT
    );
    cmd.complete().unwrap();
    assert_eq!(
        cmd.gen_segments(&mut 0, &mut out).unwrap_err().io_return(),
        IoReturn::NOT_READY
    );
    let mut it = cmd.segments();
    assert!(matches!(it.next(), Some(Err(Error::NotReady { .. }))));
    assert!(it.next().is_none());
}

#[test]
fn specs_read_zero_as_iokit_does_and_refuse_fewer_than_twelve_address_bits() {
    let s = SegmentSpec::builder()
        .alignment(0)
        .length_alignment(0)
        .build()
        .unwrap();
    assert_eq!((s.alignment(), s.length_alignment()), (1, 1));
    for bits in 1..12 {
        assert_eq!(
            SegmentSpec::builder()
                .address_bits(bits)
                .build()
                .unwrap_err()
                .io_return(),
            IoReturn::BAD_ARGUMENT
        );
    }
    // The cursor and the range allocator read 0 as 1 too.
    assert!(dmakit::dma::NaturalMemoryCursor::new(0x1000, 0, 0).is_ok());
    let mut r = dmakit::alloc::RangeAllocator::new(1, 0x100, 0).unwrap();
    assert_eq!(r.default_alignment(), 1);
    let before = r.free_count();
    r.allocate(3, 0).unwrap();
    assert_eq!(before - r.free_count(), 3, "no rounding beyond one byte");
}

#[test]
fn force_double_buffer_moves_the_transfer_into_a_private_copy() {
    let m = machine();
    let (_va, md) = task_memory(&m, 0x3000);
    let data = pattern(0x3000, 5);
    assert_eq!(md.write_bytes(0, &data), data.len());
    let pool = Arc::new(BouncePool::new(m.clone(), "force", 1 << 20));
    let mut cmd = DmaCommand::builder(m.clone())
        .bounce_pool(pool.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    assert!(!cmd.is_bounced());
    cmd.force_double_buffer().unwrap();
    assert!(cmd.is_bounced());
    assert_eq!(
        cmd.bounce_reason().unwrap().constraint,
        Constraint::ForcedByCaller
    );
    assert_eq!(segs(&cmd).len(), 1, "one contiguous bounce buffer");
    let mut seen = vec![0u8; 0x3000];
    let s = segs(&cmd)[0];
    m.device_read(PhysAddr(s.addr.0), &mut seen).unwrap();
    assert!(seen == data, "the copy holds the descriptor's bytes");
    cmd.force_double_buffer().unwrap(); // already: Ok
    let fresh = pattern(0x3000, 6);
    m.device_write(PhysAddr(s.addr.0), &fresh).unwrap();
    cmd.complete().unwrap();
    let mut back = vec![0u8; 0x3000];
    assert_eq!(md.read_bytes(0, &mut back), back.len());
    assert!(back == fresh);
    assert_eq!(pool.stats().in_use, 0, "the bounce buffer went back");
    // Nested prepares outstanding: Busy, nothing moved.
    cmd.prepare(PrepareOptions::new()).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    assert_eq!(
        cmd.force_double_buffer().unwrap_err().io_return(),
        IoReturn::BUSY
    );
    assert!(!cmd.is_bounced());
    cmd.complete_and_clear().unwrap();
}

#[test]
fn command_copies_reach_the_memory_the_device_sees() {
    let m = machine();
    let b = high_buffer(&m, 0x1800, Direction::InOut);
    assert_eq!(b.write_bytes(0, &[1u8; 0x1800]), 0x1800);
    let mut cmd = bounced(&m, b.clone());
    assert_eq!(cmd.read_bytes(0, &mut [0u8; 4]), 0, "not prepared: 0");
    cmd.prepare(PrepareOptions::range(0x800, 0x1000)).unwrap();
    assert_eq!(
        cmd.write_bytes(0xFF0, &[9u8; 0x40]),
        0x10,
        "clamped at the end"
    );
    assert_eq!(cmd.write_bytes(0x1000, &[9u8; 1]), 0, "at the end: 0");
    // The write went to the bounce copy, not to the buffer.
    let mut one = [0u8; 1];
    assert_eq!(b.read_bytes(0x800 + 0xFF0, &mut one), 1);
    assert_eq!(one[0], 1);
    let last = *segs(&cmd).last().unwrap();
    let mut dev = [0u8; 0x10];
    m.device_read(PhysAddr(last.addr.0 + last.len - 0x10), &mut dev)
        .unwrap();
    assert_eq!(dev, [9u8; 0x10]);
    let mut got = [0u8; 0x10];
    assert_eq!(cmd.read_bytes(0xFF0, &mut got), 0x10);
    assert_eq!(got, [9u8; 0x10]);
    cmd.complete().unwrap();
    assert_eq!(b.read_bytes(0x800 + 0xFF0, &mut one), 1);
    assert_eq!(one[0], 9, "complete copied the device's view back");
}

#[test]
fn clone_command_copies_the_spec_as_it_is() {
    let m = machine();
    let spec = SegmentSpec::builder()
        .alignment(8)
        .length_alignment(512)
        .internal_alignment(4096)
        .max_segment_size(0x10000)
        .build()
        .unwrap();
    let cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .format(SegmentFormat::Big64)
        .build()
        .unwrap();
    let twin = cmd.clone_command().unwrap();
    assert_eq!(twin.spec(), cmd.spec());
    assert_eq!(
        (
            twin.spec().length_alignment(),
            twin.spec().internal_alignment()
        ),
        (512, 4096),
        "not swapped"
    );
    assert_eq!(twin.format(), SegmentFormat::Big64);
    assert!(twin.prepared().is_none() && twin.memory_descriptor().is_none());
    assert_ne!(twin.debug_id(), cmd.debug_id());
}

#[test]
fn the_spec_cannot_change_under_a_preparation() {
    let m = machine();
    let (_va, md) = task_memory(&m, 0x1000);
    let mut cmd = DmaCommand::builder(m.clone()).build().unwrap();
    cmd.set_memory_descriptor(md).unwrap();
    let narrow = SegmentSpec::builder()
        .max_segment_size(0x200)
        .build()
        .unwrap();
    cmd.prepare_with_spec(narrow, PrepareOptions::new())
        .unwrap();
    assert_eq!(segs(&cmd).len(), 8);
    assert_eq!(
        cmd.set_spec(SegmentSpec::default())
            .unwrap_err()
            .io_return(),
        IoReturn::NOT_PERMITTED
    );
    assert_eq!(
        cmd.prepare_with_spec(SegmentSpec::default(), PrepareOptions::new())
            .unwrap_err()
            .io_return(),
        IoReturn::NOT_PERMITTED
    );
    assert_eq!(cmd.prepared_offset_and_length().unwrap(), (0, 0x1000));
    cmd.complete().unwrap();
    assert_eq!(
        cmd.prepared_offset_and_length().unwrap_err().io_return(),
        IoReturn::NOT_READY
    );
}
