//! Return codes, orderings and edge cases of the DMA side checked against IOKit's own
//! behaviour: `IODMACommand` (prepare, genIOVMSegments, setMemoryDescriptor, the copies a
//! bounce buffer needs), its segment options, and the `IOMemoryCursor` family.

mod common;

use common::pattern;
use dmakit::descriptor::{
    device_memory, BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor,
    MemoryDescriptor, SubMemoryDescriptor,
};
use dmakit::dma::{
    BouncePool, DmaCommand, LittleMemoryCursor, NaturalMemoryCursor, PhysicalSegment,
    PrepareOptions, SegmentFormat, SegmentSpec,
};
use dmakit::mapper::IommuMapper;
use dmakit::{Direction, IoReturn, PhysAddr};
use dmakit_sim::{Machine, MachineBuilder, SimIommu};
use std::sync::Arc;

type M = Arc<Machine>;

fn machine() -> M {
    Arc::new(
        MachineBuilder::new()
            .seed(23)
            .coherent(true)
            .ram(0x10_0000, 0x40_0000)
            .ram(0x1_0000_0000, 0x100_0000)
            .build()
            .unwrap(),
    )
}

/// A command whose every transfer goes through a bounce buffer.
fn bouncing(m: &M) -> (DmaCommand<M>, Arc<BouncePool<M>>) {
    let pool = Arc::new(BouncePool::new(m.clone(), "audit", 1 << 20));
    pool.set_force_bounce(true);
    let cmd = DmaCommand::builder(m.clone())
        .bounce_pool(pool.clone())
        .build()
        .unwrap();
    (cmd, pool)
}

/// IOKit copies into and out of a bounce buffer for a descriptor of direction None both
/// ways (only a stated direction limits the copies).
#[test]
fn a_direction_none_descriptor_is_copied_both_ways_through_a_bounce() {
    let m = machine();
    let md = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x2000, Direction::None))
            .unwrap(),
    );
    assert_eq!(md.direction(), Direction::None);
    let before = pattern(0x2000, 1);
    assert_eq!(md.write_bytes(0, &before), before.len());
    let (mut cmd, pool) = bouncing(&m);
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    assert!(cmd.is_bounced());
    let segs: Vec<_> = cmd.segments().collect::<dmakit::Result<_>>().unwrap();
    assert_eq!(segs.len(), 1, "one contiguous bounce buffer");
    let at = PhysAddr(segs[0].addr.0);
    let mut seen = vec![0u8; 0x2000];
    m.device_read(at, &mut seen).unwrap();
    assert!(seen == before, "prepare filled the bounce buffer");
    let after = pattern(0x2000, 2);
    m.device_write(at, &after).unwrap();
    cmd.complete().unwrap();
    let mut back = vec![0u8; 0x2000];
    assert_eq!(md.read_bytes(0, &mut back), back.len());
    assert!(back == after, "complete copied the device's bytes back");
    assert_eq!(pool.stats().in_use, 0);
}

/// genIOVMSegments checks "not prepared", then "no room", then the offset.
#[test]
fn gen_segments_without_room_is_bad_argument_before_overrun() {
    let m = machine();
    let md = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x1000, Direction::Out)).unwrap(),
    );
    let mut cmd = DmaCommand::builder(m.clone()).build().unwrap();
    cmd.set_memory_descriptor(md).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    let mut none = [0u8; 8]; // less than one 16-byte element
    let mut off = 0x1000;
    let e = cmd.gen_segments(&mut off, &mut none).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT, "{e}");
    assert_eq!(off, 0x1000, "unchanged");
    let mut room = [0u8; 16];
    let e = cmd.gen_segments(&mut off, &mut room).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::OVERRUN, "{e}");
    cmd.complete().unwrap();
}

/// IOKit refuses a length above the maximum transfer size (kIOReturnNoSpace) before it
/// looks at a preparation in progress, and before the length alignment; dmakit's own range
/// check comes after both.
#[test]
fn prepare_checks_the_transfer_size_first_and_the_range_last() {
    let m = machine();
    let md = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x4000, Direction::In)).unwrap(),
    );
    let spec = SegmentSpec::builder()
        .max_transfer_size(0x2000)
        .length_alignment(0x200)
        .build()
        .unwrap();
    let mut cmd = DmaCommand::builder(m.clone()).spec(spec).build().unwrap();
    cmd.set_memory_descriptor(md).unwrap();
    cmd.prepare(PrepareOptions::range(0, 0x1000)).unwrap();
    // Nested, another range, too long: NoSpace (IOKit checks the size first), uncounted.
    let e = cmd.prepare(PrepareOptions::new()).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NO_SPACE, "{e}");
    let e = cmd.prepare(PrepareOptions::range(0, 0x800)).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_READY, "{e}");
    assert_eq!(cmd.prepare_count(), 1);
    cmd.complete().unwrap();
    // Past the end and too long: NoSpace, as IOKit (which never checks the range).
    let e = cmd
        .prepare(PrepareOptions::range(0x3000, 0x3000))
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NO_SPACE, "{e}");
    // Past the end and not a multiple of the length alignment: NotAligned, as IOKit.
    let e = cmd
        .prepare(PrepareOptions::range(0x3F00, 0x300))
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_ALIGNED, "{e}");
    // Past the end only: dmakit's refusal.
    let e = cmd
        .prepare(PrepareOptions::range(0x3E00, 0x400))
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT, "{e}");
    assert_eq!(cmd.prepare_count(), 0);
}

/// IOKit `setMemoryDescriptor(md, autoPrepare = true)` with `md` already attached returns
/// success and prepares nothing, prepared or not.
#[test]
fn attaching_the_same_descriptor_again_prepares_nothing() {
    let m = machine();
    let md: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x1000, Direction::Out)).unwrap(),
    );
    let mut cmd = DmaCommand::builder(m.clone()).build().unwrap();
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.set_memory_descriptor_and_prepare(md.clone()).unwrap();
    assert_eq!(cmd.prepared(), None, "attached already: nothing prepared");
    cmd.prepare(PrepareOptions::new()).unwrap();
    cmd.set_memory_descriptor_and_prepare(md.clone()).unwrap();
    assert_eq!(cmd.prepare_count(), 1);
    cmd.complete_and_clear().unwrap();
    // Not attached: attached and prepared.
    cmd.set_memory_descriptor_and_prepare(md).unwrap();
    assert_eq!(cmd.prepared(), Some((0, 0x1000)));
    cmd.complete_and_clear().unwrap();
}

/// IOKit's segment options read a maximum segment or transfer size of 0 as "no limit",
/// and take more than 64 address bits (its field is a byte) as no limit too.
#[test]
fn segment_options_read_zero_sizes_and_wide_address_counts_as_no_limit() {
    let s = SegmentSpec::builder()
        .max_segment_size(0)
        .max_transfer_size(0)
        .build()
        .unwrap();
    assert_eq!(
        (s.max_segment_size(), s.max_transfer_size()),
        (u64::MAX, u64::MAX)
    );
    for bits in [64, 65, 128, 255] {
        let s = SegmentSpec::builder().address_bits(bits).build().unwrap();
        assert_eq!(s.max_address(), u64::MAX, "{bits} bits");
        assert!(s.has_address_limit(), "{bits} bits is a stated limit");
    }
    let e = SegmentSpec::builder()
        .address_bits(256)
        .build()
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT, "{e}");
    // A 32-bit output refuses every stated limit above 32 bits.
    let m = machine();
    let wide = SegmentSpec::builder().address_bits(100).build().unwrap();
    let e = DmaCommand::builder(m)
        .spec(wide)
        .format(dmakit::dma::SegmentFormat::Little32)
        .build()
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT, "{e}");
}

/// IOMemoryCursor keeps its sizes in 32 bits: a maximum transfer size above 4 GiB - 1 is
/// refused, segments are at most 4 GiB - 1 long, and one call describes at most that.
#[test]
fn memory_cursor_sizes_are_32_bit_as_iokit() {
    let e = NaturalMemoryCursor::new(0, 1 << 32, 1).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT, "{e}");
    assert!(NaturalMemoryCursor::new(1 << 40, 0xFFFF_FFFF, 1).is_ok());
    let m = machine();
    // 6 GiB of physically contiguous device memory.
    let big = device_memory(m.clone(), PhysAddr(0x10_0000_0000), 6 << 30).unwrap();
    for seg in [0, 1 << 33, u64::MAX] {
        let c = NaturalMemoryCursor::new(seg, 0, 1).unwrap();
        let mut segs = [PhysicalSegment::default(); 4];
        let r = c.segments(&big, 0, &mut segs, 0).unwrap();
        assert_eq!((r.count, r.bytes), (1, 0xFFFF_FFFF), "max segment {seg:#x}");
        assert_eq!(segs[0].length, 0xFFFF_FFFF);
        // A per-call limit above 32 bits is the same as the largest one.
        let r = c.segments(&big, 0, &mut segs, 1 << 40).unwrap();
        assert_eq!((r.count, r.bytes), (1, 0xFFFF_FFFF));
    }
    let c = NaturalMemoryCursor::new(1 << 30, 0, 1).unwrap();
    let mut segs = [PhysicalSegment::default(); 8];
    let r = c.segments(&big, 0, &mut segs, 0).unwrap();
    assert_eq!((r.count, r.bytes), (4, 0xFFFF_FFFF), "stops at 4 GiB - 1");
    assert_eq!(segs[3].length, (1 << 30) - 1);
}

/// IOMemoryCursor's per-call maximum transfer size replaces the cursor's own when it is
/// not 0 (even when larger).
#[test]
fn memory_cursor_per_call_transfer_limit_replaces_the_cursors() {
    let m = machine();
    let md = GeneralMemoryDescriptor::with_physical_ranges(
        m.clone(),
        &[(PhysAddr(0x20_0000), 0x3000)],
        Direction::Out,
    )
    .unwrap();
    let c = LittleMemoryCursor::new(0, 0x1000, 1).unwrap();
    let mut out = [0u8; 16 * 4];
    let r = c.gen_physical_segments(&md, 0, &mut out, 4, 0).unwrap();
    assert_eq!((r.count, r.bytes), (1, 0x1000), "the cursor's limit");
    let r = c
        .gen_physical_segments(&md, 0, &mut out, 4, 0x2000)
        .unwrap();
    assert_eq!((r.count, r.bytes), (1, 0x2000), "the call's limit");
    assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), 0x2000);
    let r = c.gen_physical_segments(&md, 0, &mut out, 4, 0x800).unwrap();
    assert_eq!((r.count, r.bytes), (1, 0x800));
}

/// A bounce copy that falls short is kIOReturnUnderrun, as IOKit's copy into its copy
/// buffer; nothing stays prepared.
#[test]
fn a_short_bounce_copy_is_underrun() {
    let m = machine();
    // Physical memory where the machine has no RAM: reads of it fall short.
    let hole: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_physical_ranges(
            m.clone(),
            &[(PhysAddr(0x8000_0000), 0x1000)],
            Direction::Out,
        )
        .unwrap(),
    );
    assert!(
        hole.read_bytes(0, &mut [0u8; 16]) < 16,
        "the hole reads short"
    );
    let (mut cmd, pool) = bouncing(&m);
    cmd.set_memory_descriptor(hole).unwrap();
    let e = cmd.prepare(PrepareOptions::new()).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::UNDERRUN, "{e}");
    assert_eq!(cmd.prepared(), None);
    assert_eq!(pool.stats().in_use, 0, "the bounce buffer went back");
}

/// In mapped mode IOKit gives each physical run IO pages of its own at its own page offset
/// (a per-run offset table): runs that meet at page boundaries become one IO segment, the
/// others start new ones. Nothing is copied, and no bounce pool is needed.
#[test]
fn mapped_runs_that_do_not_meet_at_page_boundaries_get_io_pages_of_their_own() {
    let m = machine();
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x8000_0000, 0x1000_0000).unwrap());
    let ranges = [
        (PhysAddr(0x20_0800), 0x800),
        (PhysAddr(0x30_0000), 0x1000),
        (PhysAddr(0x31_0400), 0x400),
    ];
    let md: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_physical_ranges(m.clone(), &ranges, Direction::InOut)
            .unwrap(),
    );
    let data = pattern(0x1C00, 3);
    assert_eq!(md.write_bytes(0, &data), data.len());
    let mut cmd = DmaCommand::builder(m.clone())
        .mapper(mapper.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    assert!(!cmd.is_bounced() && cmd.bounce_reason().is_none());
    let segs: Vec<_> = cmd.segments().collect::<dmakit::Result<_>>().unwrap();
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert_eq!(
        segs[0].addr.0 % 0x1000,
        0x800,
        "the first run's page offset"
    );
    assert_eq!(
        segs[0].len, 0x1800,
        "the first two runs meet at a page boundary"
    );
    assert_eq!(
        (segs[1].addr.0 - segs[0].addr.0, segs[1].len),
        (0x1C00, 0x400),
        "the third run in the next IO page (0x2000 past the first), at its own page offset"
    );
    assert_eq!(mapper.usage(), (1, 3), "three IO pages, one allocation");
    let mut seen = vec![0u8; 0x1C00];
    iommu
        .device_read(segs[0].addr, &mut seen[..0x1800])
        .unwrap();
    iommu
        .device_read(segs[1].addr, &mut seen[0x1800..])
        .unwrap();
    assert!(seen == data, "the device reads the descriptor's bytes");
    // Pieces of the walk continue where a whole walk would.
    let mut list = [0u8; 16];
    let mut off = 0x1000;
    assert_eq!(cmd.gen_segments(&mut off, &mut list).unwrap(), 1);
    let seg = SegmentFormat::Host64.read(&list, 0).unwrap();
    assert_eq!((seg.addr.0, seg.len), (segs[0].addr.0 + 0x1000, 0x800));
    assert_eq!(off, 0x1800);
    let mut byte = [0u8; 1];
    assert_eq!(cmd.read_bytes(0x1850, &mut byte), 1);
    assert_eq!(byte[0], data[0x1850]);
    cmd.complete().unwrap();
    assert_eq!(mapper.usage(), (0, 0));
}

/// A 32-bit output function carries any length below 4 GiB: a 3 GiB physically contiguous
/// range under 4 GiB is one segment (IOKit cuts only at the maximum segment size).
#[test]
fn a_32_bit_format_carries_segments_up_to_4_gib() {
    let m = machine();
    let big: Arc<dyn MemoryDescriptor> =
        Arc::new(device_memory(m.clone(), PhysAddr(0x4000_0000), 0xC000_0000).unwrap());
    for (length_alignment, longest) in [(1, 0xFFFF_FFFF), (0x200, 0xFFFF_FE00)] {
        let spec = SegmentSpec::builder()
            .length_alignment(length_alignment)
            .build()
            .unwrap();
        let mut cmd = DmaCommand::builder(m.clone())
            .spec(spec)
            .format(SegmentFormat::Little32)
            .build()
            .unwrap();
        assert_eq!(cmd.spec().max_segment_size(), longest);
        cmd.set_memory_descriptor(big.clone()).unwrap();
        cmd.prepare(PrepareOptions::new()).unwrap();
        let mut list = [0u8; 8 * 4];
        let mut off = 0;
        assert_eq!(cmd.gen_segments(&mut off, &mut list).unwrap(), 1);
        let seg = SegmentFormat::Little32.read(&list, 0).unwrap();
        assert_eq!((seg.addr.0, seg.len), (0x4000_0000, 0xC000_0000));
        assert_eq!(off, 0xC000_0000);
        cmd.complete().unwrap();
    }
}

/// A segment cut at the maximum segment size keeps a length that is a multiple of the
/// length alignment, counted from the segment's start (IOKit trims the length, then the
/// end to the internal alignment): a first segment that starts between length-alignment
/// boundaries is cut at exactly the maximum size, with no bounce.
#[test]
fn cuts_keep_the_length_alignment_from_the_segment_start() {
    let m = machine();
    let md: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_physical_ranges(
            m.clone(),
            &[(PhysAddr(0x20_0100), 0x2000)],
            Direction::Out,
        )
        .unwrap(),
    );
    let spec = SegmentSpec::builder()
        .length_alignment(0x200)
        .max_segment_size(0x1000)
        .build()
        .unwrap();
    assert_eq!(spec.internal_alignment(), 1);
    let mut cmd = DmaCommand::builder(m.clone()).spec(spec).build().unwrap();
    cmd.set_memory_descriptor(md).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    assert!(!cmd.is_bounced());
    let segs: Vec<_> = cmd.segments().collect::<dmakit::Result<_>>().unwrap();
    let got: Vec<_> = segs.iter().map(|s| (s.addr.0, s.len)).collect();
    assert_eq!(got, [(0x20_0100, 0x1000), (0x20_1100, 0x1000)]);
    cmd.complete().unwrap();
}

/// Mapped IO pages allow only what the direction does, as IOKit's per-run mapping (its
/// whole-descriptor mapping also grants reads for an `In` transfer; dmakit never does).
#[test]
fn mapped_io_pages_allow_only_the_transfers_direction() {
    let m = machine();
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x8000_0000, 0x1000_0000).unwrap());
    let mut cmd = DmaCommand::builder(m.clone())
        .mapper(mapper)
        .build()
        .unwrap();
    for (dir, read, write) in [
        (Direction::In, false, true),
        (Direction::Out, true, false),
        (Direction::InOut, true, true),
        (Direction::None, true, true),
    ] {
        let md = Arc::new(
            BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x1000, dir)).unwrap(),
        );
        cmd.set_memory_descriptor(md).unwrap();
        cmd.prepare(PrepareOptions::new()).unwrap();
        let at = cmd.segments().next().unwrap().unwrap().addr;
        let mut b = [0u8; 4];
        assert_eq!(iommu.device_read(at, &mut b).is_ok(), read, "{dir:?} read");
        assert_eq!(iommu.device_write(at, &b).is_ok(), write, "{dir:?} write");
        cmd.complete_and_clear().unwrap();
    }
}

/// No bounce memory for a transfer that needs it is kIOReturnNoResources, as IOKit's
/// prepare: without a pool, and with a pool that has no room left.
#[test]
fn no_bounce_memory_is_no_resources() {
    let m = machine();
    let buf: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x3000, Direction::Out)).unwrap(),
    );
    // 8 bytes into a page: never on the 1 MiB alignment the device needs.
    let md: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(buf, 8, 0x2000, Direction::Out).unwrap());
    let pool = Arc::new(BouncePool::new(m.clone(), "audit tiny", 0x1000));
    pool.set_force_bounce(true);
    for pool in [None, Some(pool)] {
        let mut cmd = DmaCommand::builder(m.clone())
            .spec(SegmentSpec::builder().alignment(1 << 20).build().unwrap())
            .bounce_pool_option(pool)
            .build()
            .unwrap();
        cmd.set_memory_descriptor(md.clone()).unwrap();
        let e = cmd.prepare(PrepareOptions::new()).unwrap_err();
        assert_eq!(e.io_return(), IoReturn::NO_RESOURCES, "{e}");
        assert_eq!(cmd.prepared(), None);
    }
}

/// IOKit's getNumAddressBits / getAlignment / getAlignmentLength /
/// getAlignmentInternalSegments read the normalized values: 0 bits without a limit, 32 for
/// a 32-bit output function given 0, alignments of 0 as 1 and an internal alignment of 0
/// as the alignment.
#[test]
fn a_commands_spec_reads_as_iokits_accessors() {
    let m = machine();
    let spec = SegmentSpec::builder()
        .alignment(0)
        .length_alignment(0)
        .build()
        .unwrap();
    let cmd = DmaCommand::builder(m.clone()).spec(spec).build().unwrap();
    let s = cmd.spec();
    assert_eq!(
        (
            s.address_bits(),
            s.alignment(),
            s.length_alignment(),
            s.internal_alignment()
        ),
        (0, 1, 1, 1)
    );
    let cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .format(SegmentFormat::Big32)
        .build()
        .unwrap();
    assert_eq!(cmd.spec().address_bits(), 32);
    let spec = SegmentSpec::builder()
        .address_bits(36)
        .alignment(16)
        .build()
        .unwrap();
    let cmd = DmaCommand::builder(m).spec(spec).build().unwrap();
    let s = cmd.spec();
    assert_eq!(
        (s.address_bits(), s.alignment(), s.internal_alignment()),
        (36, 16, 16)
    );
}
