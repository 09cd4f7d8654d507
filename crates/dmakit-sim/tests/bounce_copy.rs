//! The bounce copy of a DmaCommand and the seam's `copy_virt` on the simulated machine (which
//! keeps the default, staged `copy_virt`): the right bytes in both directions, unaligned,
//! across the parts of a multi-descriptor that mixes kernel buffers, another task's memory
//! and a physical range (copied the slow way), and the pool's counter.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, MemoryDescriptor,
    MultiMemoryDescriptor,
};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{BouncePool, DmaCommand, IoSegment, SegmentFormat, SegmentSpec};
use dmakit::platform::{copy_virt_staged, CpuAccess, Task, COPY_CHUNK};
use dmakit::{Direction, Error, VirtAddr};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

type M = Arc<Machine>;

fn machine() -> M {
    Arc::new(
        MachineBuilder::new()
            .seed(7)
            .fragmentation(0.5)
            .coherent(true)
            .build()
            .unwrap(),
    )
}

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(salt) ^ (i >> 8) as u8)
        .collect()
}

/// The bounce buffer's segments of a prepared command.
fn segments(cmd: &DmaCommand<M>) -> Vec<IoSegment> {
    let f = SegmentFormat::Host64;
    let mut out = vec![0u8; 256 * f.element_size()];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut out).unwrap();
    (0..n).map(|i| f.read(&out, i).unwrap()).collect()
}

fn device_reads(m: &Machine, segs: &[IoSegment]) -> Vec<u8> {
    let mut v = Vec::new();
    for s in segs {
        let mut chunk = vec![0u8; s.len as usize];
        m.device_read(dmakit::PhysAddr(s.addr.0), &mut chunk)
            .unwrap();
        v.extend(chunk);
    }
    v
}

fn device_writes(m: &Machine, segs: &[IoSegment], data: &[u8]) {
    let mut at = 0;
    for s in segs {
        let n = s.len as usize;
        m.device_write(dmakit::PhysAddr(s.addr.0), &data[at..at + n])
            .unwrap();
        at += n;
    }
    assert_eq!(at, data.len());
}

/// Four parts: a kernel buffer, two unaligned ranges of another task, a physical range
/// (inside a wired kernel buffer, from an odd offset) and another kernel buffer.
/// Returns the multi and the owners to keep alive.
fn mixed_multi(m: &M) -> (Arc<MultiMemoryDescriptor>, Vec<Arc<dyn MemoryDescriptor>>) {
    let page = m.page().bytes();
    let a: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(5000, Direction::InOut)).unwrap(),
    );
    let task = m.create_task();
    let va = m.vm_allocate(task, 4 * page, true).unwrap();
    let b: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_ranges(
            m.clone(),
            task,
            &[
                (VirtAddr(va.0 + 123), 3000),
                (VirtAddr(va.0 + 2 * page + 5), page + 700),
            ],
            Direction::InOut,
        )
        .unwrap(),
    );
    let holder = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(page, Direction::InOut)).unwrap(),
    );
    let pa = holder.physical_segment(17).unwrap().addr;
    let c: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_physical_ranges(m.clone(), &[(pa, 2000)], Direction::InOut)
            .unwrap(),
    );
    let d: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(9001, Direction::InOut)).unwrap(),
    );
    let parts = vec![a, b, c, d];
    let multi = Arc::new(MultiMemoryDescriptor::new(parts.clone(), Direction::InOut).unwrap());
    let mut owners = parts;
    owners.push(holder);
    (multi, owners)
}

#[test]
fn bounce_copies_move_the_right_bytes_across_the_parts_of_a_multi_descriptor() {
    let m = machine();
    let (multi, _owners) = mixed_multi(&m);
    let total = multi.length();
    assert_eq!(total, 5000 + 3000 + 4096 + 700 + 2000 + 9001);
    let pool = Arc::new(BouncePool::new(m.clone(), "bounce test pool", 1 << 20));
    pool.set_force_bounce(true);
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(SegmentSpec::builder().build().unwrap())
        .bounce_pool(pool.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(multi.clone()).unwrap();
    // Whole; unaligned and inside one part; across a→b; across b (both ranges)→c→d; one byte
    // at the end.
    let windows = [
        (0, total),
        (1, 4097),
        (4990, 20),
        (6001, 3000 + 4096 + 700 + 2000 + 3),
        (total - 1, 1),
    ];
    let mut counted = 0;
    for (round, &(off, len)) in windows.iter().enumerate() {
        let before = pattern(total as usize, round as u8);
        assert_eq!(multi.write_bytes(0, &before), total as usize);
        let want = &before[off as usize..(off + len) as usize];

        // Out at prepare: the device reads the descriptor's bytes from the bounce buffer.
        cmd.prepare(PrepareOptions::range(off, len).flush_cache(false))
            .unwrap();
        assert!(cmd.is_bounced());
        counted += len;
        assert_eq!(pool.stats().bounced_bytes, counted);
        let segs = segments(&cmd);
        assert!(device_reads(&m, &segs) == want, "prepare copy {off}+{len}");

        // Out again after the CPU changed the descriptor.
        let changed = pattern(total as usize, 100 + round as u8);
        assert_eq!(multi.write_bytes(0, &changed), changed.len());
        cmd.synchronize(Direction::Out).unwrap();
        counted += len;
        let want = &changed[off as usize..(off + len) as usize];
        assert!(
            device_reads(&m, &segs) == want,
            "synchronize(Out) {off}+{len}"
        );

        // In: what the device wrote lands in the window and nowhere else.
        let written = pattern(len as usize, 200 + round as u8);
        device_writes(&m, &segs, &written);
        cmd.synchronize(Direction::In).unwrap();
        counted += len;
        let mut expect = changed.clone();
        expect[off as usize..(off + len) as usize].copy_from_slice(&written);
        let mut now = vec![0u8; total as usize];
        assert_eq!(multi.read_bytes(0, &mut now), now.len());
        assert!(now == expect, "synchronize(In) {off}+{len}");

        // complete() copies back again; the bytes stay.
        cmd.complete().unwrap();
        counted += len;
        assert_eq!(multi.read_bytes(0, &mut now), now.len());
        assert!(now == expect, "complete {off}+{len}");
        assert_eq!(pool.stats().bounced_bytes, counted);
        assert_eq!(pool.stats().in_use, 0);
    }
}

#[test]
fn a_failed_bounce_copy_names_the_address_and_counts_nothing() {
    let m = machine();
    let page = m.page().bytes();
    let task = m.create_task();
    let va = m.vm_allocate(task, 2 * page, false).unwrap();
    let md = Arc::new(
        GeneralMemoryDescriptor::with_address_range(
            m.clone(),
            task,
            VirtAddr(va.0 + 10),
            page,
            Direction::InOut,
        )
        .unwrap(),
    );
    let pool = Arc::new(BouncePool::new(m.clone(), "bounce test pool", 1 << 20));
    pool.set_force_bounce(true);
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(SegmentSpec::builder().build().unwrap())
        .bounce_pool(pool.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(md.clone()).unwrap();
    cmd.prepare(PrepareOptions::range(0, page).flush_cache(false))
        .unwrap();
    let copied = pool.stats().bounced_bytes;
    assert_eq!(copied, page);
    // The task makes its memory read-only under the prepared command: the copy back to it
    // fails, naming the task address, and is not counted.
    m.protect(task, va, 2 * page, false).unwrap();
    match cmd.synchronize(Direction::In) {
        Err(Error::NotWritable { addr, .. }) => {
            assert!((va.0 + 10..va.0 + 10 + page).contains(&addr), "{addr:#x}")
        }
        other => panic!("expected NotWritable, got {other:?}"),
    }
    assert_eq!(pool.stats().bounced_bytes, copied);
    // Reading it still works.
    cmd.synchronize(Direction::Out).unwrap();
    assert_eq!(pool.stats().bounced_bytes, copied + page);
    assert!(matches!(cmd.complete(), Err(Error::NotWritable { .. })));
    assert_eq!(
        pool.stats().in_use,
        0,
        "a failed complete still releases the bounce"
    );
}

#[test]
fn copy_virt_on_the_simulator_matches_a_model_within_and_across_tasks() {
    let m = machine();
    let page = m.page().bytes();
    let (t1, t2) = (m.create_task(), m.create_task());
    let len = 4 * page;
    let v1 = m.vm_allocate(t1, len, false).unwrap();
    let v2 = m.vm_allocate(t2, len, true).unwrap();
    let fill = |t: Task, v: VirtAddr, salt| m.write_virt(t, v, &pattern(len as usize, salt));
    let read = |t: Task, v: VirtAddr| {
        let mut b = vec![0u8; len as usize];
        m.read_virt(t, v, &mut b).unwrap();
        b
    };
    let chunk = COPY_CHUNK as u64;
    // (from, to, n) inside t1, overlapping up and down by less and more than a chunk.
    for (from, to, n) in [
        (3, 900, 2 * chunk + 5),
        (900, 3, 2 * chunk + 5),
        (1, chunk + 7, 2 * chunk),
        (chunk + 7, 1, 2 * chunk),
        (0, 0, len),
    ] {
        fill(t1, v1, 1).unwrap();
        let mut want = read(t1, v1);
        want.copy_within(from as usize..(from + n) as usize, to as usize);
        m.copy_virt(t1, VirtAddr(v1.0 + from), t1, VirtAddr(v1.0 + to), n)
            .unwrap();
        assert!(read(t1, v1) == want, "memmove {from} -> {to} ({n})");
    }
    // Across tasks, unaligned, the default and the staged helper agree with the model.
    fill(t1, v1, 2).unwrap();
    fill(t2, v2, 3).unwrap();
    let (a, mut b) = (read(t1, v1), read(t2, v2));
    m.copy_virt(
        t1,
        VirtAddr(v1.0 + 5),
        t2,
        VirtAddr(v2.0 + 4001),
        3 * page - 77,
    )
    .unwrap();
    b[4001..4001 + 3 * page as usize - 77].copy_from_slice(&a[5..5 + 3 * page as usize - 77]);
    assert!(read(t2, v2) == b);
    copy_virt_staged(&*m, t2, VirtAddr(v2.0), t1, VirtAddr(v1.0 + 1), page).unwrap();
    let mut a2 = a.clone();
    a2[1..1 + page as usize].copy_from_slice(&b[..page as usize]);
    assert!(read(t1, v1) == a2);
    // Errors name the failing side.
    assert!(matches!(
        m.copy_virt(t1, VirtAddr(v1.0), t2, VirtAddr(v2.0 + len - 10), 20),
        Err(Error::NotMapped { .. })
    ));
    m.protect(t2, v2, len, false).unwrap();
    assert!(matches!(
        m.copy_virt(t1, VirtAddr(v1.0), t2, VirtAddr(v2.0), 20),
        Err(Error::NotWritable { .. })
    ));
}
