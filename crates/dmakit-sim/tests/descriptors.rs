//! The memory-descriptor family on the simulated machine.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, InterleavedMemoryDescriptor,
    MemoryDescriptor, MultiMemoryDescriptor, Segment, SubMemoryDescriptor,
};
use dmakit::platform::{CpuAccess, Task};
use dmakit::{Direction, Error, PageSize, PhysAddr, VirtAddr};
use dmakit_sim::{FaultSite, Machine, MachineBuilder};
use proptest::prelude::*;
use std::sync::Arc;

fn machine(seed: u64) -> Arc<Machine> {
    Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .fragmentation(0.7)
            .build()
            .unwrap(),
    )
}

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Every segment of `md` checked against the machine's page tables via DRAM: the bytes a
/// device would read at each segment are the descriptor's bytes.
fn segments(md: &dyn MemoryDescriptor) -> Vec<Segment> {
    let mut v = Vec::new();
    let mut off = 0;
    while off < md.length() {
        let s = md.physical_segment(off).unwrap();
        assert!(s.len > 0);
        v.push(s);
        off += s.len;
    }
    v
}

#[test]
fn buffer_capacity_length_and_append() {
    let m = machine(1);
    let b = BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(10_000, Direction::InOut))
        .unwrap();
    assert_eq!((b.capacity(), b.length()), (10_000, 10_000));
    b.set_length(0).unwrap();
    assert_eq!(b.append_bytes(&pattern(6000, 1)), 6000);
    assert_eq!(
        b.append_bytes(&pattern(6000, 2)),
        4000,
        "truncated at the capacity"
    );
    assert_eq!(b.append_bytes(b"more"), 0);
    assert!(matches!(
        b.set_length(10_001),
        Err(Error::OutOfBounds { .. })
    ));
    assert_eq!(b.length(), 10_000, "a refused set_length changes nothing");
    let mut back = vec![0u8; 10_000];
    assert_eq!(b.read_bytes(0, &mut back), 10_000);
    assert_eq!(&back[..6000], &pattern(6000, 1)[..]);
    assert_eq!(&back[6000..], &pattern(6000, 2)[..4000]);
    b.set_length(100).unwrap();
    assert_eq!(
        b.read_bytes(50, &mut back[..50]),
        50,
        "up to the length, not the capacity"
    );
    back[..60].fill(0xEE);
    assert_eq!(
        b.read_bytes(50, &mut back[..60]),
        0,
        "past the length: all or nothing"
    );
    assert!(back[..60].iter().all(|&x| x == 0xEE), "nothing copied");
    assert_eq!(b.read_bytes(100, &mut back), 0);
    assert_eq!(b.read_bytes(u64::MAX, &mut back), 0);
    assert!(matches!(
        b.read(90, &mut back[..20]),
        Err(Error::OutOfBounds { .. })
    ));
}

#[test]
fn buffer_bad_options() {
    let m = machine(2);
    let e = |o| BufferMemoryDescriptor::new(m.clone(), o).unwrap_err();
    assert!(matches!(
        e(BufferOptions::new(0, Direction::In)),
        Error::ZeroSize { .. }
    ));
    assert!(matches!(
        e(BufferOptions::new(10, Direction::In).alignment(48)),
        Error::BadAlignment { .. }
    ));
    assert!(matches!(
        e(BufferOptions::new(10, Direction::In)
            .pageable(true)
            .contiguous(true)),
        Error::BadArgument { .. }
    ));
    assert!(matches!(
        e(BufferOptions::new(u64::MAX, Direction::In)),
        Error::Overflow { .. }
    ));
    assert_eq!(m.stats().allocations, 0);
}

#[test]
fn wired_buffer_segments_match_the_page_tables_and_coalesce() {
    let m = machine(3);
    let b = BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(64 << 10, Direction::Out))
        .unwrap();
    let segs = segments(&b);
    assert!(segs.len() > 1, "fragmented layout gives several runs");
    // Each segment is maximal: the next one never starts where it ends.
    for w in segs.windows(2) {
        assert_ne!(
            w[0].addr.0 + w[0].len,
            w[1].addr.0,
            "adjacent contiguous runs coalesce"
        );
    }
    // And they agree with the machine's page tables.
    let maps = m.mappings(Task::KERNEL, b.address(), 64 << 10).unwrap();
    let mut off = 0u64;
    for s in &segs {
        let page = (off / 4096) as usize;
        assert_eq!(maps[page].1, Some(PhysAddr(s.addr.0 & !0xfff)));
        off += s.len;
    }
    // A segment asked mid-run starts there and runs to the end of that run.
    let s = b.physical_segment(100).unwrap();
    assert_eq!(s.addr.0, segs[0].addr.0 + 100);
    assert_eq!(s.len, segs[0].len - 100);
    assert!(matches!(
        b.physical_segment(64 << 10),
        Err(Error::OutOfBounds { .. })
    ));
}

#[test]
fn constrained_buffers() {
    let m = machine(4);
    let o = BufferOptions::new(40_000, Direction::In)
        .contiguous(true)
        .phys_limit(0xFFFF_FFFF)
        .alignment(0x10000);
    let b = BufferMemoryDescriptor::new(m.clone(), o).unwrap();
    let segs = segments(&b);
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].len, 40_000);
    assert_eq!(segs[0].addr.0 % 0x10000, 0);
    assert!(segs[0].addr.0 + 40_000 <= 1 << 32);
    // Alignment above a page implies contiguity, as in IOKit.
    let a = BufferMemoryDescriptor::new(
        m.clone(),
        BufferOptions::new(0x8000, Direction::In).alignment(0x8000),
    )
    .unwrap();
    assert_eq!(segments(&a).len(), 1);
}

#[test]
fn pageable_buffer_needs_prepare_and_counts_it() {
    let m = machine(5);
    let b = BufferMemoryDescriptor::new(
        m.clone(),
        BufferOptions::new(20_000, Direction::In).pageable(true),
    )
    .unwrap();
    assert!(matches!(b.physical_segment(0), Err(Error::NotReady { .. })));
    assert_eq!(
        b.write_bytes(0, b"works unprepared"),
        16,
        "CPU copies need no wiring"
    );
    let md: &dyn MemoryDescriptor = &b;
    let p1 = md.prepare(Direction::In).unwrap();
    let p2 = md.prepare(Direction::In).unwrap();
    let before = segments(md);
    assert!(m.stats().wired_pages >= 5);
    p1.complete().unwrap();
    assert_eq!(segments(md), before, "still prepared once");
    drop(p2);
    assert!(matches!(b.physical_segment(0), Err(Error::NotReady { .. })));
    assert_eq!(m.stats().wired_pages, 0);
    // Unprepared pageable memory may move; the bytes move with it.
    m.migrate_pageable(Task::KERNEL).unwrap();
    let mut back = [0u8; 16];
    assert_eq!(b.read_bytes(0, &mut back), back.len());
    assert_eq!(&back, b"works unprepared");
}

#[test]
fn out_prepared_memory_is_read_only() {
    let m = machine(6);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x4000, true).unwrap();
    let d = GeneralMemoryDescriptor::with_address_range(m.clone(), t, va, 0x4000, Direction::Out)
        .unwrap();
    let md: &dyn MemoryDescriptor = &d;
    let p = md.prepare(Direction::None).unwrap();
    assert_eq!(
        md.write_bytes(0, b"x"),
        0,
        "no writes while prepared for Out"
    );
    assert!(matches!(
        md.prepare(Direction::In),
        Err(Error::NotWritable { .. })
    ));
    assert_eq!(d.wire_count(), 1, "the refused prepare did not count");
    p.complete().unwrap();
    assert_eq!(md.write_bytes(0, b"x"), 1);
}

#[test]
fn general_descriptor_over_task_ranges() {
    let m = machine(7);
    let t = m.create_task();
    let a = m.vm_allocate(t, 0x3000, true).unwrap();
    let b = m.vm_allocate(t, 0x2000, false).unwrap();
    let d = GeneralMemoryDescriptor::with_ranges(
        m.clone(),
        t,
        &[
            (VirtAddr(a.0 + 0x800), 0x2000),
            (VirtAddr(b.0), 0),
            (b, 0x1800),
        ],
        Direction::InOut,
    )
    .unwrap();
    assert_eq!(d.length(), 0x3800);
    let data = pattern(0x3800, 9);
    assert_eq!(d.write_bytes(0, &data), 0x3800);
    let mut raw = vec![0u8; 0x1800];
    m.read_virt(t, b, &mut raw).unwrap();
    assert_eq!(
        &raw[..],
        &data[0x2000..],
        "bytes landed in the second range"
    );
    let md: &dyn MemoryDescriptor = &d;
    let p = md.prepare(Direction::None).unwrap();
    // A segment never runs past its range.
    let s = md.physical_segment(0x1fff).unwrap();
    assert_eq!(s.len, 1);
    let total: u64 = segments(md).iter().map(|s| s.len).sum();
    assert_eq!(total, 0x3800);
    // Prepared pageable pages do not move.
    let before = segments(md);
    m.migrate_pageable(t).unwrap();
    assert_eq!(segments(md), before);
    drop(p);
    // Bad ranges are errors at creation.
    assert!(matches!(
        GeneralMemoryDescriptor::with_address_range(
            m.clone(),
            t,
            VirtAddr(u64::MAX - 4),
            10,
            Direction::In
        ),
        Err(Error::Overflow { .. })
    ));
}

#[test]
fn prepare_failure_wires_nothing() {
    let m = machine(8);
    let t = m.create_task();
    let a = m.vm_allocate(t, 0x2000, true).unwrap();
    let b = m.vm_allocate(t, 0x2000, true).unwrap();
    let d = GeneralMemoryDescriptor::with_ranges(
        m.clone(),
        t,
        &[(a, 0x2000), (b, 0x2000)],
        Direction::In,
    )
    .unwrap();
    m.inject(FaultSite::Pin, m.stats().site_calls[1] + 2); // the second range's wire
    assert!(matches!(
        d.prepare_wiring(Direction::None),
        Err(Error::Injected { .. })
    ));
    assert_eq!(
        m.stats().wired_pages,
        0,
        "the first range was unwired again"
    );
    assert_eq!(d.wire_count(), 0);
    m.inject(FaultSite::Translate, m.stats().site_calls[2] + 1);
    assert!(d.prepare_wiring(Direction::None).is_err());
    assert_eq!(m.stats().wired_pages, 0);
    d.prepare_wiring(Direction::None).unwrap();
    assert_eq!(m.stats().wired_pages, 4);
    drop(d);
    assert_eq!(
        m.stats().wired_pages,
        0,
        "drop completes outstanding prepares"
    );
}

#[test]
fn physical_descriptors_coalesce_adjacent_ranges() {
    let m = Arc::new(
        MachineBuilder::new()
            .fragmentation(0.0)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let d = GeneralMemoryDescriptor::with_physical_ranges(
        m.clone(),
        &[
            (PhysAddr(0x20_0000), 0x1000),
            (PhysAddr(0x20_1000), 0x800),
            (PhysAddr(0x30_0000), 0x100),
        ],
        Direction::Out,
    )
    .unwrap();
    assert_eq!(d.wire_count(), 1);
    assert_eq!(
        d.physical_segment(0x10).unwrap(),
        Segment {
            addr: PhysAddr(0x20_0010),
            len: 0x17f0
        }
    );
    assert_eq!(
        d.physical_segment(0x1800).unwrap(),
        Segment {
            addr: PhysAddr(0x30_0000),
            len: 0x100
        }
    );
    assert_eq!(d.write_bytes(0x17fe, b"abcd"), 4);
    let mut b = [0u8; 2];
    m.device_read(PhysAddr(0x30_0000), &mut b).unwrap();
    assert_eq!(&b, b"cd");
}

#[test]
fn sub_descriptors_forward_and_check_bounds() {
    let m = machine(9);
    let parent: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::with_bytes(m.clone(), &pattern(9000, 3), Direction::InOut).unwrap(),
    );
    assert!(matches!(
        SubMemoryDescriptor::new(parent.clone(), 8000, 1001, Direction::In),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        SubMemoryDescriptor::new(parent.clone(), u64::MAX, 2, Direction::In),
        Err(Error::OutOfBounds { .. })
    ));
    let s = SubMemoryDescriptor::new(parent.clone(), 4000, 1000, Direction::In).unwrap();
    assert_eq!(s.direction(), Direction::In, "the sub's own direction");
    let mut b = vec![0u8; 2000];
    assert_eq!(s.read_bytes(0, &mut b), 0, "past the sub's end: nothing");
    assert!(b.iter().all(|&x| x == 0), "nothing copied");
    assert_eq!(s.read_bytes(0, &mut b[..1000]), 1000);
    assert_eq!(&b[..1000], &pattern(9000, 3)[4000..5000]);
    assert_eq!(
        s.write_bytes(999, &[1, 2]),
        0,
        "a write past the sub's end writes nothing, not even into the parent"
    );
    let mut p = [0u8; 2];
    assert_eq!(parent.read_bytes(4999, &mut p), 2);
    assert_eq!(&p, &pattern(9000, 3)[4999..5001]);
    let seg = s.physical_segment(999).unwrap();
    assert_eq!(seg.len, 1);
    assert_eq!(seg.addr, parent.physical_segment(4999).unwrap().addr);
    assert!(
        SubMemoryDescriptor::new(parent, 9000, 0, Direction::In).is_ok(),
        "zero length at the end"
    );
}

#[test]
fn multi_descriptors() {
    let m = machine(10);
    let a: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::with_bytes(m.clone(), &pattern(5000, 1), Direction::InOut).unwrap(),
    );
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x2000, true).unwrap();
    let b: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), t, va, 0x2000, Direction::Out)
            .unwrap(),
    );
    assert!(matches!(
        MultiMemoryDescriptor::new(vec![a.clone(), b.clone()], Direction::In),
        Err(Error::BadArgument { value: 1, .. })
    ));
    let multi = MultiMemoryDescriptor::new(vec![a.clone(), b.clone()], Direction::Out).unwrap();
    assert_eq!(multi.length(), 5000 + 0x2000);
    let md: &dyn MemoryDescriptor = &multi;
    assert!(matches!(
        md.physical_segment(6000),
        Err(Error::NotReady { .. })
    ));
    let p = md.prepare(Direction::None).unwrap();
    // No coalescing across parts: the first part's last segment stops at its end.
    let s = md.physical_segment(4999).unwrap();
    assert_eq!(s.len, 1);
    drop(p);
    // A failure in the second part completes the first (the wired buffer keeps only the
    // wiring it holds for its whole life).
    let baseline = m.stats().wired_pages;
    m.inject(FaultSite::Pin, m.stats().site_calls[1] + 1);
    assert!(md.prepare(Direction::None).is_err());
    assert_eq!(m.stats().wired_pages, baseline);
    let empty = MultiMemoryDescriptor::new(vec![], Direction::In).unwrap();
    assert!(matches!(
        empty.prepare_wiring(Direction::None),
        Err(Error::Internal { .. })
    ));
}

#[test]
fn interleaved_descriptors() {
    let m = machine(11);
    let a: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::with_bytes(m.clone(), &pattern(3000, 1), Direction::InOut).unwrap(),
    );
    let mut il = InterleavedMemoryDescriptor::with_capacity(2, Direction::Out);
    il.set_memory_descriptor(a.clone(), 2000, 1000).unwrap();
    il.set_memory_descriptor(a.clone(), 0, 500).unwrap();
    assert!(matches!(
        il.set_memory_descriptor(a.clone(), 0, 1),
        Err(Error::NoResources { .. })
    ));
    let mut b = vec![0u8; 1500];
    assert_eq!(il.read_bytes(0, &mut b), 1500);
    let p = pattern(3000, 1);
    assert_eq!(&b[..1000], &p[2000..]);
    assert_eq!(&b[1000..], &p[..500]);
    il.prepare_wiring(Direction::None).unwrap();
    il.complete().unwrap();
    il.clear_memory_descriptors(Direction::In).unwrap();
    assert_eq!((il.length(), il.direction()), (0, Direction::In));
    assert!(matches!(
        il.set_memory_descriptor(a, 2500, 501),
        Err(Error::OutOfBounds { .. })
    ));
}

#[test]
fn sixteen_k_pages() {
    let m = Arc::new(
        MachineBuilder::new()
            .page_size(PageSize::SIZE_16K)
            .seed(3)
            .build()
            .unwrap(),
    );
    let b =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(100_000, Direction::In)).unwrap();
    assert_eq!(b.page_size(), PageSize::SIZE_16K);
    assert_eq!(segments(&b).iter().map(|s| s.len).sum::<u64>(), 100_000);
    drop(b);
    assert_eq!(m.stats().allocations, 0);
}

// --- Offsets of composed descriptors against a byte-level oracle. ------------------------

#[derive(Clone, Debug)]
enum Shape {
    Buffer(usize, u8),
    Sub(Box<Shape>, u16, u16),
    Multi(Vec<Shape>),
    Interleaved(Vec<(Shape, u16, u16)>),
}

fn shape() -> impl Strategy<Value = Shape> {
    let leaf = (1usize..9000, any::<u8>()).prop_map(|(n, s)| Shape::Buffer(n, s));
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            (inner.clone(), any::<u16>(), any::<u16>()).prop_map(|(s, a, b)| Shape::Sub(
                Box::new(s),
                a,
                b
            )),
            prop::collection::vec(inner.clone(), 1..4).prop_map(Shape::Multi),
            prop::collection::vec((inner, any::<u16>(), any::<u16>()), 1..4)
                .prop_map(Shape::Interleaved),
        ]
    })
}

/// Builds the descriptor and its oracle bytes.
fn build(m: &Arc<Machine>, s: &Shape) -> (Arc<dyn MemoryDescriptor>, Vec<u8>) {
    match s {
        Shape::Buffer(n, salt) => {
            let bytes = pattern(*n, *salt);
            (
                Arc::new(
                    BufferMemoryDescriptor::with_bytes(m.clone(), &bytes, Direction::InOut)
                        .unwrap(),
                ),
                bytes,
            )
        }
        Shape::Sub(inner, a, b) => {
            let (p, bytes) = build(m, inner);
            let off = *a as usize % (bytes.len() + 1);
            let len = *b as usize % (bytes.len() - off + 1);
            let sub =
                SubMemoryDescriptor::new(p, off as u64, len as u64, Direction::InOut).unwrap();
            (Arc::new(sub), bytes[off..off + len].to_vec())
        }
        Shape::Multi(parts) => {
            let mut mds = Vec::new();
            let mut bytes = Vec::new();
            for p in parts {
                let (md, b) = build(m, p);
                mds.push(md);
                bytes.extend(b);
            }
            (
                Arc::new(MultiMemoryDescriptor::new(mds, Direction::InOut).unwrap()),
                bytes,
            )
        }
        Shape::Interleaved(parts) => {
            let mut il = InterleavedMemoryDescriptor::with_capacity(parts.len(), Direction::InOut);
            let mut bytes = Vec::new();
            for (p, a, b) in parts {
                let (md, pb) = build(m, p);
                let off = *a as usize % (pb.len() + 1);
                let len = *b as usize % (pb.len() - off + 1);
                il.set_memory_descriptor(md, off as u64, len as u64)
                    .unwrap();
                bytes.extend_from_slice(&pb[off..off + len]);
            }
            (Arc::new(il), bytes)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 1_000 }, ..ProptestConfig::default() })]

    #[test]
    fn composed_descriptors_match_the_oracle(
        s in shape(),
        reads in prop::collection::vec((any::<u32>(), 0usize..5000), 1..6),
        write in (any::<u32>(), prop::collection::vec(any::<u8>(), 0..3000)),
        seed in 0u64..4,
    ) {
        // Small RAM (8 MiB low, 8 MiB above 4 GiB) keeps a case cheap.
        let m = Arc::new(
            MachineBuilder::new()
                .ram(0x10_0000, 0x80_0000)
                .ram(0x1_0000_0000, 0x80_0000)
                .seed(seed)
                .fragmentation(0.7)
                .coherent(true)
                .build()
                .unwrap(),
        );
        let (md, mut oracle) = build(&m, &s);
        prop_assert_eq!(md.length(), oracle.len() as u64);
        for (o, n) in reads {
            let off = o as u64 % (oracle.len() as u64 + 2);
            // Half the reads fit; all or nothing is the rule either way.
            let n = if o % 2 == 0 { n.min(oracle.len().saturating_sub(off as usize)) } else { n };
            let mut buf = vec![0xA5u8; n];
            let got = md.read_bytes(off, &mut buf);
            let fits = off as usize + n <= oracle.len();
            prop_assert_eq!(got, if fits { n } else { 0 });
            if fits {
                prop_assert_eq!(&buf[..], &oracle[off as usize..off as usize + n]);
            } else {
                prop_assert!(buf.iter().all(|&x| x == 0xA5), "nothing copied");
            }
        }
        let (o, data) = write;
        let off = o as u64 % (oracle.len() as u64 + 1);
        let data = if o % 2 == 0 { &data[..data.len().min(oracle.len() - off as usize)] } else { &data[..] };
        let got = md.write_bytes(off, data);
        let fits = off as usize + data.len() <= oracle.len();
        prop_assert_eq!(got, if fits { data.len() } else { 0 });
        if fits {
            oracle[off as usize..off as usize + got].copy_from_slice(data);
        }
        let mut all = vec![0u8; oracle.len()];
        prop_assert_eq!(md.read_bytes(0, &mut all), oracle.len());
        prop_assert_eq!(&all, &oracle);
        // Every byte's physical segment holds that byte, as a device would read it.
        let mut off = 0u64;
        while off < md.length() {
            let seg = md.physical_segment(off).unwrap();
            prop_assert!(seg.len >= 1 && off + seg.len <= md.length());
            let mut dev = vec![0u8; seg.len as usize];
            m.device_read(seg.addr, &mut dev).unwrap();
            prop_assert_eq!(&dev[..], &oracle[off as usize..(off + seg.len) as usize]);
            off += seg.len;
        }
        drop(md);
        prop_assert_eq!(m.stats().allocations, 0, "everything freed");
    }
}
