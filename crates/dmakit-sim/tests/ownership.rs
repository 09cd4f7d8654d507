//! Typed ownership, quarantine and the dma-debug ledger on the simulated machine.

use dmakit::debug::{self, ViolationKind};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, SubMemoryDescriptor,
};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{
    BouncePool, CpuOwned, DmaCommand, FromDevice, Quarantine, SegmentFormat, SegmentSpec, ToDevice,
};
use dmakit::{Direction, Error, PhysAddr};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

type M = Arc<Machine>;

/// A coherent machine with 1 MiB of RAM below 4 GiB and 64 MiB above; buffers land above
/// 4 GiB once the low RAM is taken by `filler`.
fn machine() -> M {
    Arc::new(
        MachineBuilder::new()
            .ram(0x10_0000, 0x10_0000)
            .ram(0x1_0000_0000, 0x400_0000)
            .fragmentation(0.5)
            .seed(9)
            .coherent(true)
            .build()
            .unwrap(),
    )
}

fn command(m: &M, spec: SegmentSpec, pool: Option<Arc<BouncePool<M>>>) -> DmaCommand<M> {
    DmaCommand::builder(m.clone())
        .spec(spec)
        .bounce_pool_option(pool)
        .build()
        .unwrap()
}

fn segments(cmd: &DmaCommand<M>) -> Vec<dmakit::dma::IoSegment> {
    let mut out = vec![0u8; 64 * 16];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut out).unwrap();
    (0..n)
        .map(|i| SegmentFormat::Host64.read(&out, i).unwrap())
        .collect()
}

#[test]
fn a_dropped_prepared_command_keeps_its_bounce_buffer_until_the_device_is_quiesced() {
    let m = machine();
    let pool = Arc::new(BouncePool::new(m.clone(), "quarantine pool", 1 << 20));
    pool.set_force_bounce(true);
    let nic = Quarantine::new("nic0");
    let md = Arc::new(
        BufferMemoryDescriptor::with_bytes(m.clone(), &[7u8; 5000], Direction::Out).unwrap(),
    );
    let mut cmd = command(&m, SegmentSpec::default(), Some(pool.clone()));
    cmd.set_quarantine(nic.clone()).unwrap();
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 5000)).unwrap();
    let seg = segments(&cmd)[0];
    let id = cmd.debug_id();
    assert_eq!(nic.live(), 1);
    let used = m.stats().allocations;
    drop(cmd);
    drop(md);
    // The device may still read the bounce buffer: it and the descriptor stay allocated.
    assert_eq!((nic.held(), nic.live()), (1, 1));
    assert!(nic.held_bytes() >= 5000);
    assert_eq!(
        m.stats().allocations,
        used,
        "nothing freed under the device"
    );
    let mut dev = [0u8; 16];
    m.device_read(PhysAddr(seg.addr.0), &mut dev).unwrap();
    assert_eq!(
        dev, [7u8; 16],
        "the device still reads the data it was given"
    );
    let out = debug::outstanding(nic.id());
    assert!(out
        .iter()
        .any(|o| o.command == id && o.dropped && o.route == "bounced"));
    // The device is reset: now everything goes back.
    assert_eq!(nic.quiesced().unwrap(), 1);
    assert_eq!((nic.held(), nic.live()), (0, 0));
    assert_eq!(pool.stats().in_use, 0);
    assert_eq!(
        m.stats().allocations,
        0,
        "bounce buffer and descriptor freed"
    );
    assert!(debug::outstanding(nic.id()).is_empty());
    nic.teardown().unwrap();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "leaks the prepared buffer and its machine by design, which Miri reports as a leak"
)]
fn a_dropped_command_without_a_quarantine_leaks_rather_than_frees() {
    let m = machine();
    let md = Arc::new(
        BufferMemoryDescriptor::with_bytes(m.clone(), &[1u8; 8192], Direction::In).unwrap(),
    );
    let mut cmd = command(&m, SegmentSpec::default(), None);
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 8192)).unwrap();
    let seg = segments(&cmd)[0];
    drop(cmd);
    drop(md);
    assert!(m.stats().allocations > 0, "the wired buffer was not freed");
    // The device can still write there, and nothing else was given that memory.
    m.device_write(PhysAddr(seg.addr.0), &[9u8; 8]).unwrap();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "forgets a prepared command by design, which Miri reports as a leak"
)]
fn teardown_reports_what_a_forgotten_preparation_holds() {
    let m = machine();
    let dev = Quarantine::new("disk0");
    let md = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(4096, Direction::In)).unwrap(),
    );
    let mut cmd = command(&m, SegmentSpec::default(), None);
    cmd.set_quarantine(dev.clone()).unwrap();
    cmd.set_memory_descriptor(md).unwrap();
    cmd.prepare(PrepareOptions::range(0, 4096)).unwrap();
    let id = cmd.debug_id();
    std::mem::forget(cmd);
    let err = dev.teardown().unwrap_err();
    assert!(matches!(err, Error::Busy { addr: 1, .. }), "{err}");
    let leaks = debug::violations_of(id);
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].kind, ViolationKind::Leak);
    assert!(
        leaks[0].detail.contains("disk0") && leaks[0].detail.contains("0x1000"),
        "{}",
        leaks[0].detail
    );
}

#[test]
fn the_ledger_sees_cpu_access_to_device_owned_memory_through_any_descriptor() {
    let m = machine();
    let md: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(16384, Direction::InOut))
            .unwrap(),
    );
    // Another view of the same memory: the second half.
    let half = SubMemoryDescriptor::new(md.clone(), 8192, 8192, Direction::InOut).unwrap();
    let mut cmd = command(&m, SegmentSpec::default(), None);
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 8192)).unwrap();
    let id = cmd.debug_id();
    // Outside the prepared range: fine.
    assert_eq!(half.write_bytes(0, &[1; 64]), 64);
    assert!(debug::violations_of(id).is_empty());
    // Inside it, through the parent: recorded.
    let mut b = [0u8; 32];
    assert_eq!(md.read_bytes(4000, &mut b), b.len());
    let v = debug::violations_of(id);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, ViolationKind::CpuAccess);
    assert!(
        v[0].detail.contains("CPU read of 32 bytes"),
        "{}",
        v[0].detail
    );
    cmd.complete().unwrap();
    assert_eq!(md.read_bytes(4000, &mut b), b.len());
    assert_eq!(
        debug::violations_of(id).len(),
        1,
        "after complete the CPU owns it"
    );
}

#[test]
fn the_ledger_records_unbalanced_completes_and_bad_syncs() {
    let m = machine();
    let md = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(4096, Direction::Out)).unwrap(),
    );
    let mut cmd = command(&m, SegmentSpec::default(), None);
    cmd.set_memory_descriptor(md).unwrap();
    let id = cmd.debug_id();
    assert!(matches!(cmd.complete(), Err(Error::NotReady { .. })));
    cmd.prepare(PrepareOptions::range(0, 4096)).unwrap();
    assert!(matches!(
        cmd.synchronize_range(Direction::Out, 4000, 200),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        cmd.synchronize(Direction::In),
        Err(Error::BadArgument { .. })
    ));
    cmd.synchronize_range(Direction::Out, 0, 4096).unwrap();
    cmd.complete().unwrap();
    let kinds: Vec<ViolationKind> = debug::violations_of(id).iter().map(|v| v.kind).collect();
    assert_eq!(
        kinds,
        [
            ViolationKind::UnbalancedComplete,
            ViolationKind::SyncOutOfRange,
            ViolationKind::SyncWrongDirection
        ]
    );
}

#[test]
fn bounce_reasons_name_the_constraint_and_the_address() {
    let m = machine();
    let _filler =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0xF_0000, Direction::In))
            .unwrap();
    let md = Arc::new(
        BufferMemoryDescriptor::with_bytes(m.clone(), &[3u8; 3000], Direction::Out).unwrap(),
    );
    let high = md.physical_segment(0).unwrap().addr.0;
    assert!(high >= 1 << 32);
    drop(_filler);
    let pool = Arc::new(BouncePool::new(m.clone(), "low pool", 1 << 20));
    let spec = SegmentSpec::builder().address_bits(32).build().unwrap();
    let mut cmd = command(&m, spec, Some(pool));
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, 3000)).unwrap();
    let r = cmd.bounce_reason().unwrap();
    assert_eq!(
        (r.constraint, r.addr),
        (dmakit::dma::Constraint::AddressWindow, high)
    );
    cmd.complete().unwrap();
    // Starting one byte in breaks an 8-byte alignment.
    let spec = SegmentSpec::builder().alignment(8).build().unwrap();
    let mut cmd = command(&m, spec, None);
    cmd.set_memory_descriptor(md).unwrap();
    let err = cmd.prepare(PrepareOptions::range(1, 8)).unwrap_err();
    assert!(matches!(err, Error::NoResources { .. }), "no pool: {err}");
}

#[test]
fn too_many_segments_bounce_into_contiguous_memory() {
    let m = machine();
    let parts: Vec<Arc<dyn MemoryDescriptor>> = (0..6)
        .map(|i| {
            Arc::new(
                BufferMemoryDescriptor::with_bytes(m.clone(), &[i as u8; 1000], Direction::Out)
                    .unwrap(),
            ) as Arc<dyn MemoryDescriptor>
        })
        .collect();
    let multi =
        Arc::new(dmakit::descriptor::MultiMemoryDescriptor::new(parts, Direction::Out).unwrap());
    let spec = SegmentSpec::builder().max_segments(2).build().unwrap();
    let pool = Arc::new(BouncePool::new(m.clone(), "pool", 1 << 20));
    let mut cmd = command(&m, spec, Some(pool));
    cmd.set_memory_descriptor(multi).unwrap();
    cmd.prepare(PrepareOptions::range(0, 6000)).unwrap();
    assert_eq!(
        cmd.bounce_reason().unwrap().constraint,
        dmakit::dma::Constraint::MaxSegments
    );
    let segs = segments(&cmd);
    assert_eq!(segs.len(), 1);
    let mut dev = vec![0u8; 6000];
    m.device_read(PhysAddr(segs[0].addr.0), &mut dev).unwrap();
    assert!(dev
        .chunks(1000)
        .enumerate()
        .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    cmd.complete().unwrap();
    // One segment of at most 512 bytes cannot carry 6000 bytes in 2 segments.
    let spec = SegmentSpec::builder()
        .max_segments(2)
        .max_segment_size(512)
        .build()
        .unwrap();
    let md = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(6000, Direction::Out)).unwrap(),
    );
    let pool = Arc::new(BouncePool::new(m.clone(), "pool", 1 << 20));
    let mut cmd = command(&m, spec, Some(pool.clone()));
    cmd.set_memory_descriptor(md).unwrap();
    assert!(matches!(
        cmd.prepare(PrepareOptions::range(0, 6000)),
        Err(Error::NoSpace { .. })
    ));
    assert_eq!(
        pool.stats().in_use,
        0,
        "the failed prepare gave its bounce buffer back"
    );
}

#[test]
fn specs_whose_cuts_could_not_be_aligned_are_refused() {
    let e = SegmentSpec::builder()
        .max_segment_size(1000)
        .internal_alignment(512)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("max_segment_size"), "{e}");
    let e = SegmentSpec::builder()
        .boundary(256)
        .internal_alignment(4096)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("boundary"), "{e}");
}

#[test]
fn typed_ownership_round_trips_through_a_bounce_in_both_directions() {
    let m = machine();
    let _filler =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0xF_0000, Direction::In))
            .unwrap();
    let out =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(4096, Direction::Out)).unwrap();
    let inn =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(4096, Direction::In)).unwrap();
    drop(_filler);
    let pool = Arc::new(BouncePool::new(m.clone(), "typed pool", 1 << 20));
    let spec = SegmentSpec::builder().address_bits(32).build().unwrap();

    // The CPU fills a buffer, the device reads it, the CPU updates part of it for the device.
    let cpu: CpuOwned<M, ToDevice, _> =
        CpuOwned::new(out, command(&m, spec, Some(pool.clone()))).unwrap();
    cpu.write_bytes(0, &[0x11; 4096]);
    let dev = cpu.prepare().unwrap();
    assert!(dev.is_bounced());
    let mut o = 0;
    let mut raw = [0u8; 16];
    dev.gen_segments(&mut o, &mut raw).unwrap();
    let seg = SegmentFormat::Host64.read(&raw, 0).unwrap();
    dev.sync_for_device(100, &[0x22; 10]).unwrap();
    let mut seen = [0u8; 12];
    m.device_read(PhysAddr(seg.addr.0 + 99), &mut seen).unwrap();
    assert_eq!(
        seen,
        [0x11, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x11]
    );
    assert!(matches!(
        dev.sync_for_device(4090, &[0; 10]),
        Err(Error::OutOfBounds { .. })
    ));
    let id = dev.debug_id();
    let cpu = dev.complete().unwrap();
    assert!(debug::violations_of(id)
        .iter()
        .all(|v| v.kind == ViolationKind::SyncOutOfRange));
    let (buf, _cmd) = cpu.into_parts().unwrap();
    assert_eq!(buf.length(), 4096);

    // The device writes; the CPU peeks while the device still owns it, then takes it back.
    let cpu: CpuOwned<M, FromDevice, _> =
        CpuOwned::new(inn, command(&m, spec, Some(pool.clone()))).unwrap();
    let dev = cpu.prepare().unwrap();
    let mut o = 0;
    dev.gen_segments(&mut o, &mut raw).unwrap();
    let seg = SegmentFormat::Host64.read(&raw, 0).unwrap();
    m.device_write(PhysAddr(seg.addr.0), &[0x5A; 4096]).unwrap();
    let mut peek = [0u8; 8];
    dev.sync_for_cpu(8, &mut peek).unwrap();
    assert_eq!(peek, [0x5A; 8]);
    let id = dev.debug_id();
    let cpu = dev.complete().unwrap();
    let mut all = vec![0u8; 4096];
    cpu.read_bytes(0, &mut all);
    assert!(all.iter().all(|&b| b == 0x5A));
    assert!(
        debug::violations_of(id).is_empty(),
        "{:?}",
        debug::violations_of(id)
    );
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "drops a device-owned buffer without a quarantine, which leaks it by design (Miri reports the leak)"
)]
fn typed_ownership_refuses_a_direction_the_descriptor_does_not_allow_and_keeps_failures() {
    let m = machine();
    let md =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(4096, Direction::Out)).unwrap();
    let e = CpuOwned::<M, FromDevice, _>::new(md, command(&m, SegmentSpec::default(), None))
        .unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }));
    // A prepare that fails gives the CPU-owned value back.
    let md =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(4096, Direction::Out)).unwrap();
    let spec = SegmentSpec::builder()
        .max_transfer_size(1024)
        .build()
        .unwrap();
    let cpu = CpuOwned::<M, ToDevice, _>::new(md, command(&m, spec, None)).unwrap();
    let failed = cpu.prepare().unwrap_err();
    assert!(matches!(failed.error, Error::NoSpace { .. }));
    let dev = failed.value.prepare_range(0, 1024).unwrap();
    assert_eq!(dev.prepared(), (0, 1024));
    drop(dev);
}
