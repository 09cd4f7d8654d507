//! A 32-bit device's DMA on the simulated machine: buffer → `DmaCommand` → `Little32`
//! segments, every one below 4 GiB.
//!
//! The machine has most of its RAM above 4 GiB, so an ordinary buffer lands partly where a
//! device with 32 address bits cannot reach. The example shows the three ways a driver
//! meets such a device:
//!
//! 1. an ordinary buffer: the command bounces the pages above 4 GiB (per-page bounce from a
//!    [`BouncePool`]) and says why ([`DmaCommand::bounce_reason`]);
//! 2. a buffer allocated for the device's [`SegmentSpec`] ([`BufferOptions::for_spec`]):
//!    it lies below 4 GiB and nothing bounces;
//! 3. no bounce pool: the command refuses memory the device cannot reach, with an error
//!    that names the constraint.
//!
//! In each case the "device" (the machine's DRAM as a device sees it) reads the bytes at
//! the segment addresses and gets what the CPU wrote.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p dmakit-sim --example dma32
//! ```

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{BouncePool, DmaCommand, IoSegment, PrepareOptions, SegmentFormat, SegmentSpec};
use dmakit::{Direction, PhysAddr};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

const FOUR_GIB: u64 = 1 << 32;
const LEN: u64 = 0x6000; // six 4 KiB pages

fn main() -> dmakit::Result<()> {
    // 256 MiB below 4 GiB and 256 MiB above it, every page anywhere. Coherent, so this
    // example is about addresses only (`typed_ownership` shows cache maintenance).
    let machine = Arc::new(
        MachineBuilder::new()
            .seed(5)
            .ram(0x1000_0000, 0x1000_0000)
            .ram(0x1_0000_0000, 0x1000_0000)
            .fragmentation(1.0)
            .coherent(true)
            .build()?,
    );
    print!("machine: {}", machine.layout());

    // The device: 32 address bits, segments of at most 8 KiB, a little-endian list of
    // (u32 address, u32 length) pairs.
    let spec = SegmentSpec::builder()
        .address_bits(32)
        .max_segment_size(0x2000)
        .build()?;
    let pool = Arc::new(BouncePool::new(machine.clone(), "dma32 device", 1 << 20));

    ordinary_buffer_bounces(&machine, spec, &pool)?;
    buffer_for_the_spec_never_bounces(&machine, spec, &pool)?;
    without_a_pool_the_command_refuses(&machine, spec)?;
    assert_eq!(pool.stats().in_use, 0, "every bounce page went back");
    println!("dma32: ok");
    Ok(())
}

/// Case 1: a buffer anywhere in RAM; the pages above 4 GiB bounce.
fn ordinary_buffer_bounces(
    machine: &Arc<Machine>,
    spec: SegmentSpec,
    pool: &Arc<BouncePool<Arc<Machine>>>,
) -> dmakit::Result<()> {
    println!("\n1. an ordinary buffer of {LEN:#x} bytes");
    let buf = Arc::new(BufferMemoryDescriptor::new(
        machine.clone(),
        BufferOptions::new(LEN, Direction::Out),
    )?);
    let data = pattern(LEN, 1);
    assert_eq!(buf.write_bytes(0, &data), data.len());
    let runs = physical_runs(&*buf)?;
    print_runs(&runs);
    let high = runs.iter().any(|&(pa, len)| pa + len > FOUR_GIB);
    assert!(high, "this seed puts part of the buffer above 4 GiB");

    let mut cmd = DmaCommand::builder(machine.clone())
        .spec(spec)
        .format(SegmentFormat::Little32)
        .bounce_pool(pool.clone())
        .build()?;
    cmd.set_memory_descriptor(buf.clone())?;
    cmd.prepare(PrepareOptions::new())?;
    assert!(cmd.is_bounced());
    if let Some(why) = cmd.bounce_reason() {
        println!(
            "   bounced: {} broken at {:#x} (+{:#x})",
            why.constraint, why.addr, why.len
        );
    }
    let segs = device_list(&cmd, &*buf)?;
    device_reads(machine, &segs, &data)?;
    println!(
        "   the device read {} bytes at those addresses, all as written",
        data.len()
    );
    cmd.complete()?;
    Ok(())
}

/// Case 2: the buffer is allocated where the device reaches it.
fn buffer_for_the_spec_never_bounces(
    machine: &Arc<Machine>,
    spec: SegmentSpec,
    pool: &Arc<BouncePool<Arc<Machine>>>,
) -> dmakit::Result<()> {
    println!("\n2. a buffer allocated for the spec (BufferOptions::for_spec)");
    let buf = Arc::new(BufferMemoryDescriptor::new(
        machine.clone(),
        BufferOptions::for_spec(LEN, Direction::Out, &spec),
    )?);
    let data = pattern(LEN, 2);
    assert_eq!(buf.write_bytes(0, &data), data.len());
    let runs = physical_runs(&*buf)?;
    print_runs(&runs);
    assert!(runs.iter().all(|&(pa, len)| pa + len <= FOUR_GIB));

    let before = pool.stats().buffers;
    let mut cmd = DmaCommand::builder(machine.clone())
        .spec(spec)
        .format(SegmentFormat::Little32)
        .bounce_pool(pool.clone())
        .build()?;
    cmd.set_memory_descriptor(buf.clone())?;
    cmd.prepare(PrepareOptions::new())?;
    assert!(!cmd.is_bounced() && cmd.bounce_reason().is_none());
    assert_eq!(pool.stats().buffers, before, "no bounce buffer taken");
    println!("   not bounced: the device uses the buffer's own pages");
    let segs = device_list(&cmd, &*buf)?;
    device_reads(machine, &segs, &data)?;
    cmd.complete()?;
    Ok(())
}

/// Case 3: no pool, memory above 4 GiB: an error, not a truncated address.
fn without_a_pool_the_command_refuses(
    machine: &Arc<Machine>,
    spec: SegmentSpec,
) -> dmakit::Result<()> {
    println!("\n3. the same kind of buffer, no bounce pool");
    let buf = Arc::new(BufferMemoryDescriptor::new(
        machine.clone(),
        BufferOptions::new(LEN, Direction::Out),
    )?);
    let runs = physical_runs(&*buf)?;
    assert!(runs.iter().any(|&(pa, len)| pa + len > FOUR_GIB));
    let mut cmd = DmaCommand::builder(machine.clone())
        .spec(spec)
        .format(SegmentFormat::Little32)
        .build()?;
    cmd.set_memory_descriptor(buf)?;
    let err = match cmd.prepare(PrepareOptions::new()) {
        Ok(()) => panic!("memory above 4 GiB was handed to a 32-bit device"),
        Err(e) => e,
    };
    println!("   prepare refused: {err}");
    assert_eq!(cmd.prepare_count(), 0, "a failed prepare holds nothing");
    Ok(())
}

/// The descriptor's physical runs: `(address, length)`, walked with `physical_segment`.
fn physical_runs(md: &dyn MemoryDescriptor) -> dmakit::Result<Vec<(u64, u64)>> {
    let mut runs = Vec::new();
    let mut at = 0;
    while at < md.length() {
        let seg = md.physical_segment(at)?;
        runs.push((seg.addr.0, seg.len));
        at += seg.len;
    }
    Ok(runs)
}

fn print_runs(runs: &[(u64, u64)]) {
    println!("   physical runs of the buffer:");
    for &(pa, len) in runs {
        let side = if pa + len > FOUR_GIB {
            "above 4 GiB"
        } else {
            "below 4 GiB"
        };
        println!("     {pa:#012x} +{len:#06x}  {side}");
    }
}

/// Writes the segment list as the device reads it (`Little32` bytes) and decodes it again,
/// checking each segment against the spec and saying whether it is `buf`'s own memory or
/// a bounce page.
fn device_list(
    cmd: &DmaCommand<Arc<Machine>>,
    buf: &dyn MemoryDescriptor,
) -> dmakit::Result<Vec<IoSegment>> {
    let mut list = [0u8; 8 * 16]; // room for 16 elements of 8 bytes
    let mut offset = 0;
    let count = cmd.gen_segments(&mut offset, &mut list)?;
    assert_eq!(offset, LEN, "one call described the whole transfer");
    println!("   Little32 list ({count} elements, as the device reads it):");
    let mut segs = Vec::new();
    let mut at = 0;
    for i in 0..count {
        let raw = &list[i * 8..i * 8 + 8];
        let seg = SegmentFormat::Little32.read(&list, i)?;
        let own = buf.physical_segment(at)?.addr.0 == seg.addr.0;
        println!(
            "     {:02x?}  = {:#010x} +{:#06x}  {}",
            raw,
            seg.addr.0,
            seg.len,
            if own { "in place" } else { "bounce page" }
        );
        at += seg.len;
        assert!(seg.addr.0 + seg.len <= FOUR_GIB, "below 4 GiB");
        assert!(seg.len <= cmd.spec().max_segment_size());
        segs.push(seg);
    }
    assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), LEN);
    Ok(segs)
}

/// The device reads every segment (bypassing the CPU, as DMA does) and checks the bytes.
fn device_reads(machine: &Machine, segs: &[IoSegment], expected: &[u8]) -> dmakit::Result<()> {
    let mut at = 0usize;
    for seg in segs {
        let mut got = vec![0u8; seg.len as usize];
        machine.device_read(PhysAddr(seg.addr.0), &mut got)?;
        assert_eq!(
            got,
            expected[at..at + got.len()],
            "segment at {:#x}",
            seg.addr.0
        );
        at += got.len();
    }
    Ok(())
}

/// Recognisable bytes: each 4-byte word is its offset, tagged.
fn pattern(len: u64, tag: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i / 4) as u8 ^ (i % 4) as u8 ^ tag)
        .collect()
}
