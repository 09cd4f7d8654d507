//! DmaCommand on the simulated machine: bouncing for a 32-bit device, forced bounce, pool
//! exhaustion, mapped mode through the IOMMU, constraints and piecewise generation.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{BouncePool, DmaCommand, IoSegment, MappingMode, SegmentFormat, SegmentSpec};
use dmakit::mapper::IommuMapper;
use dmakit::{Direction, Error, IoReturn, PhysAddr};
use dmakit_sim::{Machine, MachineBuilder, SimIommu};
use std::sync::Arc;

type M = Arc<Machine>;

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(salt))
        .collect()
}

/// A coherent machine with 2 MiB of low RAM and 256 MiB above 4 GiB, and a buffer that lies entirely
/// above 4 GiB (the low RAM is filled while it is allocated, then released for bounces).
fn high_buffer(len: u64, dir: Direction) -> (M, Arc<BufferMemoryDescriptor<M>>) {
    high_buffer_on(len, dir, true)
}

fn high_buffer_on(len: u64, dir: Direction, coherent: bool) -> (M, Arc<BufferMemoryDescriptor<M>>) {
    let m = Arc::new(
        MachineBuilder::new()
            .ram(0x10_0000, 0x20_0000)
            .ram(0x1_0000_0000, 0x1000_0000)
            .fragmentation(0.0)
            .coherent(coherent)
            .build()
            .unwrap(),
    );
    let filler =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x20_0000, Direction::In))
            .unwrap();
    let b = Arc::new(BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(len, dir)).unwrap());
    drop(filler);
    assert!(b.physical_segment(0).unwrap().addr.0 >= 1 << 32);
    (m, b)
}

fn segments(cmd: &DmaCommand<M>, format: SegmentFormat) -> Vec<IoSegment> {
    let mut out = vec![0u8; 64 * format.element_size()];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut out).unwrap();
    (0..n).map(|i| format.read(&out, i).unwrap()).collect()
}

#[test]
fn a_32_bit_device_reads_a_buffer_above_4g_through_a_bounce() {
    let data = pattern(20_000, 3);
    let (m, b) = high_buffer(20_000, Direction::Out);
    assert_eq!(b.write_bytes(0, &data), data.len());
    let pool = Arc::new(BouncePool::new(m.clone(), "test pool", 1 << 20));
    let spec = SegmentSpec::builder().address_bits(32).build().unwrap();
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .format(SegmentFormat::Little32)
        .bounce_pool(pool.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(b.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 20_000)).unwrap();
    assert!(cmd.is_bounced());
    let segs = segments(&cmd, SegmentFormat::Little32);
    let mut seen = Vec::new();
    for s in &segs {
        assert!(
            s.addr.0 + s.len <= 1 << 32,
            "{s:?} is out of a 32-bit device's reach"
        );
        let mut chunk = vec![0u8; s.len as usize];
        m.device_read(PhysAddr(s.addr.0), &mut chunk).unwrap();
        seen.extend(chunk);
    }
    assert!(seen == data, "the device read the buffer's bytes");
    assert_eq!(pool.stats().bounced_bytes, 20_000);
    cmd.complete().unwrap();
    assert_eq!(pool.stats().in_use, 0);
    // Per-page bouncing: every page of the buffer is above 4 GiB, so five bounce pages.
    assert_eq!(pool.stats().high_water, 5 * 4096);
}

#[test]
fn only_the_pages_above_the_limit_are_bounced() {
    // 8 KiB of RAM just below 4 GiB and more above it: a 16 KiB buffer straddles the line.
    let m = Arc::new(
        MachineBuilder::new()
            .ram(0x10_0000, 0x10_0000)
            .ram(0xFFFF_E000, 0x100_2000)
            .fragmentation(0.0)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let filler =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x10_0000, Direction::In))
            .unwrap();
    let data = pattern(16384, 5);
    let b =
        Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::InOut).unwrap());
    drop(filler);
    let mut low = 0;
    let mut off = 0;
    while off < 16384 {
        let s = b.physical_segment(off).unwrap();
        if s.addr.0 < 1 << 32 {
            low += s.len.min((1 << 32) - s.addr.0);
        }
        off += s.len;
    }
    assert!(
        low > 0 && low < 16384,
        "the buffer straddles 4 GiB ({low} bytes below)"
    );
    let pool = Arc::new(BouncePool::new(m.clone(), "test pool", 1 << 20));
    let spec = SegmentSpec::builder().address_bits(32).build().unwrap();
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .bounce_pool(pool.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(b.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 16384)).unwrap();
    assert!(cmd.is_bounced());
    assert_eq!(
        pool.stats().bounced_bytes,
        16384 - low,
        "only the bytes above 4 GiB were copied"
    );
    assert_eq!(pool.stats().in_use, 16384 - low);
    let mut seen = Vec::new();
    for s in segments(&cmd, SegmentFormat::Host64) {
        assert!(s.addr.0 + s.len <= 1 << 32, "{s:?}");
        let mut chunk = vec![0u8; s.len as usize];
        m.device_read(PhysAddr(s.addr.0), &mut chunk).unwrap();
        seen.extend(chunk);
    }
    assert!(
        seen == data,
        "the device read the buffer's bytes, low pages in place"
    );
    // The device writes the whole transfer; complete copies back only the bounce pages.
    let fresh = pattern(16384, 77);
    let mut at = 0;
    for s in segments(&cmd, SegmentFormat::Host64) {
        m.device_write(PhysAddr(s.addr.0), &fresh[at..at + s.len as usize])
            .unwrap();
        at += s.len as usize;
    }
    cmd.complete().unwrap();
    let mut back = vec![0u8; 16384];
    assert_eq!(b.read_bytes(0, &mut back), back.len());
    assert!(back == fresh);
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn a_32_bit_device_writes_a_buffer_above_4g_through_a_bounce() {
    let (m, b) = high_buffer(9000, Direction::In);
    let pool = Arc::new(BouncePool::new(m.clone(), "test pool", 1 << 20));
    let spec = SegmentSpec::builder()
        .address_bits(32)
        .max_segment_size(4096)
        .build()
        .unwrap();
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .format(SegmentFormat::Big32)
        .bounce_pool(pool)
        .build()
        .unwrap();
    cmd.set_memory_descriptor(b.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 9000)).unwrap();
    let segs = segments(&cmd, SegmentFormat::Big32);
    assert_eq!(
        segs.iter().map(|s| s.len).collect::<Vec<_>>(),
        vec![4096, 4096, 808]
    );
    let incoming = pattern(9000, 77);
    let mut at = 0usize;
    for s in &segs {
        m.device_write(PhysAddr(s.addr.0), &incoming[at..at + s.len as usize])
            .unwrap();
        at += s.len as usize;
    }
    cmd.complete().unwrap();
    let mut back = vec![0u8; 9000];
    assert_eq!(b.read_bytes(0, &mut back), back.len());
    assert!(back == incoming, "complete copied the device's data back");
}

#[test]
fn forced_bounce_and_an_exhausted_pool() {
    let m = Arc::new(MachineBuilder::new().seed(2).build().unwrap());
    let b = Arc::new(
        BufferMemoryDescriptor::with_bytes(m.clone(), &pattern(8192, 1), Direction::Out).unwrap(),
    );
    let pool = Arc::new(BouncePool::new(m.clone(), "tiny pool", 4096));
    let spec = SegmentSpec::builder().build().unwrap();
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .bounce_pool(pool.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(b.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 4096)).unwrap();
    assert!(!cmd.is_bounced(), "nothing to bounce");
    cmd.complete().unwrap();
    pool.set_force_bounce(true);
    cmd.prepare(PrepareOptions::range(0, 4096)).unwrap();
    assert!(cmd.is_bounced(), "forced");
    cmd.complete().unwrap();
    let e = cmd.prepare(PrepareOptions::range(0, 8192)).unwrap_err();
    assert_eq!(
        e,
        Error::NoResources {
            what: "tiny pool",
            limit: 4096
        }
    );
    assert!(
        e.to_string().contains("tiny pool") && e.to_string().contains("4096"),
        "{e}"
    );
    assert_eq!(e.io_return(), IoReturn::NO_RESOURCES);
    assert_eq!(
        cmd.prepared(),
        None,
        "a failed prepare leaves nothing prepared"
    );
    assert_eq!(
        m.stats().wired_pages,
        2,
        "only the buffer's own lifetime wiring remains"
    );
}

#[test]
fn iterate_only_refuses_to_bounce() {
    let (m, b) = high_buffer(4096, Direction::Out);
    let spec = SegmentSpec::builder().address_bits(32).build().unwrap();
    let mut cmd = DmaCommand::builder(m)
        .spec(spec)
        .format(SegmentFormat::Host32)
        .mode(MappingMode::IterateOnly)
        .build()
        .unwrap();
    cmd.set_memory_descriptor(b).unwrap();
    let e = cmd.prepare(PrepareOptions::range(0, 4096)).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::MESSAGE_TOO_LARGE);
}

#[test]
fn mapped_mode_makes_scattered_pages_one_io_segment() {
    let m = Arc::new(
        MachineBuilder::new()
            .seed(8)
            .fragmentation(0.9)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x8000_0000, 0x1000_0000).unwrap());
    let data = pattern(64 << 10, 9);
    let b = Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::Out).unwrap());
    let spec = SegmentSpec::builder().address_bits(32).build().unwrap();
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .format(SegmentFormat::Little64)
        .mapper(mapper.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(b.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 64 << 10)).unwrap();
    let segs = segments(&cmd, SegmentFormat::Little64);
    assert_eq!(segs.len(), 1, "one IO segment: {segs:?}");
    let mut seen = vec![0u8; data.len()];
    iommu.device_read(segs[0].addr, &mut seen).unwrap();
    assert!(seen == data);
    cmd.complete().unwrap();
    assert_eq!(mapper.usage(), (0, 0), "IO space released at complete");
    assert!(
        iommu.device_read(segs[0].addr, &mut seen).is_err(),
        "the device lost access"
    );
}

#[test]
fn constraints_and_piecewise_generation() {
    let m = Arc::new(
        MachineBuilder::new()
            .seed(5)
            .fragmentation(0.6)
            .build()
            .unwrap(),
    );
    let b = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(100_000, Direction::Out))
            .unwrap(),
    );
    let spec = SegmentSpec::builder()
        .max_segment_size(0x1800)
        .boundary(0x2000)
        .build()
        .unwrap();
    let mut cmd = DmaCommand::builder(m.clone()).spec(spec).build().unwrap();
    cmd.set_memory_descriptor(b.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(100, 90_000)).unwrap();
    let whole = segments(&cmd, SegmentFormat::Host64);
    assert_eq!(whole.iter().map(|s| s.len).sum::<u64>(), 90_000);
    for s in &whole {
        assert!(s.len <= 0x1800);
        assert_eq!(
            s.addr.0 / 0x2000,
            (s.addr.0 + s.len - 1) / 0x2000,
            "{s:?} crosses a boundary"
        );
    }
    // Piece by piece, from the offset the caller carries, equals all at once.
    let mut pieces = Vec::new();
    let mut off = 0;
    let mut buf = [0u8; 3 * 16];
    for k in [1usize, 2, 3].iter().cycle() {
        if off == 90_000 {
            break;
        }
        let n = cmd.gen_segments(&mut off, &mut buf[..k * 16]).unwrap();
        assert!(n >= 1 && n <= *k);
        pieces.extend((0..n).map(|i| SegmentFormat::Host64.read(&buf, i).unwrap()));
    }
    assert_eq!(pieces, whole);
    assert_eq!(off, 90_000);
    // Misuse: another range while prepared, and clearing while prepared, are NotReady.
    assert!(matches!(
        cmd.prepare(PrepareOptions::range(0, 10)),
        Err(Error::NotReady { .. })
    ));
    assert!(matches!(
        cmd.clear_memory_descriptor(),
        Err(Error::NotReady { .. })
    ));
    cmd.complete().unwrap();
    assert!(matches!(
        cmd.gen_segments(&mut 0, &mut buf),
        Err(Error::NotReady { .. })
    ));
    assert!(matches!(
        cmd.prepare(PrepareOptions::range(0, 0)),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        cmd.prepare(PrepareOptions::range(99_000, 2000)),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(cmd.complete(), Err(Error::NotReady { .. })));
    // A 32-bit format: no address limit becomes 32 bits (as IOKit's 0 address bits do);
    // a stated limit above 32 bits is refused.
    let wide = SegmentSpec::builder().build().unwrap();
    let c32 = DmaCommand::builder(m.clone())
        .spec(wide)
        .format(SegmentFormat::Host32)
        .build()
        .unwrap();
    assert_eq!(c32.spec().max_address(), 0xFFFF_FFFF);
    let bits64 = SegmentSpec::builder().address_bits(64).build().unwrap();
    assert!(matches!(
        DmaCommand::builder(m)
            .spec(bits64)
            .format(SegmentFormat::Host32)
            .build(),
        Err(Error::BadArgument { .. })
    ));
}

#[test]
fn non_coherent_commands_do_the_cache_maintenance() {
    let m = Arc::new(MachineBuilder::new().seed(6).build().unwrap());
    assert!(!dmakit::platform::CacheOps::dma_coherent(&*m));
    let b = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(4096, Direction::Out)).unwrap(),
    );
    assert_eq!(b.write_bytes(0, b"written by the CPU"), 18);
    let spec = SegmentSpec::builder().build().unwrap();
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .mode(MappingMode::NonCoherent)
        .build()
        .unwrap();
    cmd.set_memory_descriptor(b.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 4096)).unwrap();
    let s = segments(&cmd, SegmentFormat::Host64)[0];
    let mut dev = [0u8; 18];
    m.device_read(PhysAddr(s.addr.0), &mut dev).unwrap();
    assert_eq!(&dev, b"written by the CPU", "prepare cleaned the cache");
    cmd.complete().unwrap();
    // The same through a bypassed command on this non-coherent machine shows the hazard.
    assert_eq!(b.write_bytes(0, b"second CPU write!!"), 18);
    let mut plain = DmaCommand::builder(m.clone()).spec(spec).build().unwrap();
    plain.set_memory_descriptor(b.clone()).unwrap();
    plain.prepare(PrepareOptions::range(0, 4096)).unwrap();
    m.device_read(PhysAddr(s.addr.0), &mut dev).unwrap();
    assert_eq!(
        &dev, b"written by the CPU",
        "without maintenance the device reads stale memory"
    );
    plain.complete().unwrap();
}

#[test]
fn bounce_on_a_non_coherent_machine_in_both_directions() {
    let (m, b) = high_buffer_on(6000, Direction::InOut, false);
    let data = pattern(6000, 21);
    assert_eq!(b.write_bytes(0, &data), data.len());
    let pool = Arc::new(BouncePool::new(m.clone(), "nc pool", 1 << 20));
    let spec = SegmentSpec::builder().address_bits(32).build().unwrap();
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .mode(MappingMode::NonCoherent)
        .bounce_pool(pool)
        .build()
        .unwrap();
    cmd.set_memory_descriptor(b.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 6000)).unwrap();
    assert!(cmd.is_bounced());
    let s = segments(&cmd, SegmentFormat::Host64);
    assert_eq!(s.len(), 1);
    let mut seen = vec![0u8; 6000];
    m.device_read(PhysAddr(s[0].addr.0), &mut seen).unwrap();
    assert!(
        seen == data,
        "the bounce copy was cleaned out of the cache for the device"
    );
    let incoming = pattern(6000, 99);
    m.device_write(PhysAddr(s[0].addr.0), &incoming).unwrap();
    cmd.complete().unwrap();
    let mut back = vec![0u8; 6000];
    assert_eq!(b.read_bytes(0, &mut back), back.len());
    assert!(
        back == incoming,
        "complete invalidated the bounce lines before copying back"
    );
}

/// A transfer that needs more segments than `max_segments` even at `max_segment_size` each
/// is refused without walking its segments (a 2^62-byte device range in 4 KiB pieces
/// would be 2^50 of them), in every mode, and holds nothing afterwards.
#[test]
fn more_segments_than_the_spec_allows_is_refused_without_a_walk() {
    use dmakit::descriptor::device_memory;
    let m: M = Arc::new(MachineBuilder::new().seed(77).build().unwrap());
    let huge: Arc<dyn MemoryDescriptor> =
        Arc::new(device_memory(m.clone(), PhysAddr(1 << 40), 1 << 62).unwrap());
    let spec = SegmentSpec::builder()
        .max_segment_size(0x1000)
        .build()
        .unwrap();
    let pool = Arc::new(BouncePool::new(m.clone(), "pool", 1 << 20));
    let started = std::time::Instant::now();
    for mode in [MappingMode::Bypassed, MappingMode::IterateOnly] {
        let mut cmd = DmaCommand::builder(m.clone())
            .spec(spec)
            .mode(mode.clone())
            .bounce_pool(pool.clone())
            .build()
            .unwrap();
        cmd.set_memory_descriptor(huge.clone()).unwrap();
        let r = cmd.prepare(PrepareOptions::new());
        match mode {
            MappingMode::IterateOnly => {
                assert!(matches!(r, Err(Error::MessageTooLarge { .. })), "{r:?}")
            }
            _ => assert!(matches!(r, Err(Error::NoResources { .. })), "{r:?}"),
        }
        assert_eq!(cmd.prepare_count(), 0);
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // Small enough to bounce: the contiguous copy still needs 16 segments of 512 bytes.
    let (m, buf) = high_buffer(0x2000, Direction::Out);
    let pool = Arc::new(BouncePool::new(m.clone(), "pool", 1 << 20));
    let spec = SegmentSpec::builder()
        .max_segment_size(512)
        .max_segments(8)
        .build()
        .unwrap();
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(spec)
        .bounce_pool(pool.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(buf).unwrap();
    let r = cmd.prepare(PrepareOptions::new());
    assert!(
        matches!(
            r,
            Err(Error::NoSpace {
                requested: 0x2000,
                free: 8,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(pool.stats().in_use, 0, "the bounce buffer was given back");
}

/// A buffer whose length is set below a range prepared earlier (IOKit's `setLength` on a
/// prepared IOBufferMemoryDescriptor) keeps its memory to the capacity: completing the
/// transfer succeeds, releases everything, and invalidates the caches over all the memory
/// the device was given, so the device's bytes past the new length are read once the
/// length grows again. Before, the complete of a non-coherent or mapped command failed
/// with OutOfBounds at the new end and left stale cache lines behind it.
#[test]
fn a_buffer_shrunk_while_prepared_completes_its_whole_preparation() {
    for mapped in [false, true] {
        let m = Arc::new(
            MachineBuilder::new()
                .seed(10)
                .fragmentation(0.7)
                .build()
                .unwrap(),
        );
        let iommu = Arc::new(SimIommu::new(m.clone()));
        let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x8000_0000, 0x100_0000).unwrap());
        let len = 3 * 4096 + 100;
        let b = Arc::new(
            BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(len, Direction::InOut))
                .unwrap(),
        );
        assert_eq!(b.write_bytes(0, &vec![0x11; len as usize]), len as usize);
        let builder = DmaCommand::builder(m.clone());
        let mut cmd = if mapped {
            builder.mapper(mapper.clone()).build().unwrap()
        } else {
            builder.mode(MappingMode::NonCoherent).build().unwrap()
        };
        cmd.set_memory_descriptor(b.clone()).unwrap();
        cmd.prepare(PrepareOptions::range(0, len)).unwrap();
        // The CPU pulls the old bytes of the last page into its cache meanwhile.
        let mut old = [0u8; 64];
        assert_eq!(b.read_bytes(len - 64, &mut old), 64);
        // The device writes the whole transfer.
        let mut x = 0;
        for s in segments(&cmd, SegmentFormat::Host64) {
            let data = vec![0x22; s.len as usize];
            if mapped {
                iommu.device_write(s.addr, &data).unwrap();
            } else {
                m.device_write(PhysAddr(s.addr.0), &data).unwrap();
            }
            x += s.len;
        }
        assert_eq!(x, len);
        b.set_length(170).unwrap();
        cmd.complete()
            .unwrap_or_else(|e| panic!("mapped {mapped}: {e}"));
        assert_eq!(mapper.usage(), (0, 0));
        b.set_length(len).unwrap();
        let mut back = vec![0u8; len as usize];
        assert_eq!(b.read_bytes(0, &mut back), len as usize);
        assert!(
            back.iter().all(|&v| v == 0x22),
            "mapped {mapped}: the device's bytes everywhere"
        );
        drop(cmd);
        drop(b);
        assert_eq!(m.stats().wired_pages, 0);
        assert_eq!(m.stats().allocations, 0);
    }
}

/// The same through a multi-descriptor whose first part shrinks while the transfer is
/// prepared: the parts are found where they were when the multi was made, and the
/// complete of a mapped command on a non-coherent machine succeeds and releases
/// everything (it failed with OutOfBounds, the part "shorter now than when the multi was
/// made").
#[test]
fn a_multi_whose_part_shrank_while_prepared_completes() {
    let m = Arc::new(
        MachineBuilder::new()
            .seed(11)
            .fragmentation(0.7)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu, 0x8000_0000, 0x100_0000).unwrap());
    let part = |len| {
        Arc::new(
            BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(len, Direction::InOut))
                .unwrap(),
        )
    };
    let (a, b) = (part(6000), part(3000));
    let multi = Arc::new(
        dmakit::descriptor::MultiMemoryDescriptor::new(
            vec![a.clone() as Arc<dyn MemoryDescriptor>, b.clone()],
            Direction::InOut,
        )
        .unwrap(),
    );
    let mut cmd = DmaCommand::builder(m.clone())
        .mapper(mapper.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(multi.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 9000)).unwrap();
    a.set_length(100).unwrap();
    cmd.complete().unwrap();
    assert_eq!(mapper.usage(), (0, 0));
    drop((cmd, multi, a, b));
    assert_eq!(m.stats().wired_pages, 0);
    assert_eq!(m.stats().allocations, 0);
}
