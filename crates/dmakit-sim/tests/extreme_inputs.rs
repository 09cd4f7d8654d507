//! Every public call, fed the values at the edges of `u64` (0, 1, a page ± 1, 2^32, 2^63,
//! `u64::MAX` and its neighbours, sums that overflow), returns `Ok` or an error: it never
//! panics, and what it refused leaves the machine as it found it.
//!
//! Each probe runs under `catch_unwind`, so one run names every input that panicked
//! instead of stopping at the first.

use dmakit::descriptor::{
    device_memory, device_sub_range, BufferMemoryDescriptor, BufferOptions,
    GeneralMemoryDescriptor, InterleavedMemoryDescriptor, MemoryDescriptor, MemoryOperation,
    MultiMemoryDescriptor, PurgeableRequest, SubMemoryDescriptor,
};
use dmakit::dma::{
    BouncePool, DmaCommand, IoSegment, MappingMode, NaturalMemoryCursor, PrepareOptions,
    SegmentFormat, SegmentSpec,
};
use dmakit::map::{MapGuard, MapOptions, MemoryMap};
use dmakit::platform::Task;
use dmakit::{Direction, Error, PhysAddr, VirtAddr};
use dmakit_sim::{Machine, MachineBuilder, SimStats};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

type M = Arc<Machine>;

const PAGE: u64 = 0x1000;

/// The values every numeric argument is tried with.
const EXTREMES: [u64; 17] = [
    0,
    1,
    2,
    3,
    PAGE - 1,
    PAGE,
    PAGE + 1,
    0x1800,
    (1 << 32) - 1,
    1 << 32,
    1 << 63,
    (1 << 63) + 1,
    u64::MAX - PAGE,
    u64::MAX - PAGE + 1,
    u64::MAX - 2,
    u64::MAX - 1,
    u64::MAX,
];

/// A smaller set for arguments tried in combination.
const FEW: [u64; 8] = [
    0,
    1,
    PAGE - 1,
    PAGE + 1,
    1 << 63,
    u64::MAX - PAGE + 1,
    u64::MAX - 1,
    u64::MAX,
];

/// Collects the inputs that panicked.
#[derive(Default)]
struct Hunt {
    panics: Vec<String>,
    probes: u64,
}

impl Hunt {
    /// Runs `f`, recording a panic under `label`; `None` when it panicked.
    fn probe<T>(&mut self, label: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Option<T> {
        self.probes += 1;
        // EXTREME_TRACE=1 names each probe before it runs (to find one that aborts).
        let mut label = Some(label);
        let traced = std::env::var_os("EXTREME_TRACE").map(|_| {
            let l = (label.take().unwrap())();
            eprintln!("probe: {l}");
            l
        });
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let l = traced.unwrap_or_else(|| (label.take().unwrap())());
                self.panics.push(format!("{l}: {msg}"));
                None
            }
        }
    }

    fn finish(self, what: &str) {
        assert!(self.probes > 0);
        assert!(
            self.panics.is_empty(),
            "{what}: {} of {} probes panicked:\n{}",
            self.panics.len(),
            self.probes,
            self.panics.join("\n")
        );
    }
}

fn machine(seed: u64) -> M {
    Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .ram(0x10_0000, 0x100_0000)
            .ram(1 << 33, 0x100_0000)
            .fragmentation(0.5)
            .build()
            .unwrap(),
    )
}

/// The counters that show a leak: pages, allocations, wirings, tasks, and the kernel
/// task's page-table entries (mappings).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    free_pages: u64,
    allocations: u64,
    kernel_allocations: u64,
    wired_pages: u64,
    tasks: u64,
    kernel_ptes: usize,
}

fn snap(m: &M) -> Snapshot {
    let s: SimStats = m.stats();
    Snapshot {
        free_pages: s.free_pages,
        allocations: s.allocations,
        kernel_allocations: s.kernel_allocations,
        wired_pages: s.wired_pages,
        tasks: s.tasks,
        kernel_ptes: m.page_table(Task::KERNEL).unwrap().len(),
    }
}

fn assert_no_leak(m: &M, before: &Snapshot, what: &str) {
    assert_eq!(&snap(m), before, "{what}: something outlived its owner");
}

/// Runs `body` on a fresh machine (from `seed`) with a fresh hunt; afterwards no probe may
/// have panicked and the machine must hold what it held before.
fn sweep(seed: u64, what: &str, body: impl FnOnce(&M, &mut Hunt)) {
    let m = machine(seed);
    let before = snap(&m);
    let mut h = Hunt::default();
    body(&m, &mut h);
    h.finish(what);
    assert_no_leak(&m, &before, what);
}

/// A wired buffer of `len` bytes for both directions.
fn buffer(m: &M, len: u64) -> BufferMemoryDescriptor<M> {
    BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(len, Direction::InOut)).unwrap()
}

/// Every offset/length probe a descriptor offers, at the extremes.
fn probe_descriptor(h: &mut Hunt, name: &str, md: &dyn MemoryDescriptor) {
    let len = md.length();
    let offsets: Vec<u64> = EXTREMES
        .iter()
        .copied()
        .chain([len.wrapping_sub(1), len, len.wrapping_add(1)])
        .collect();
    for &off in &offsets {
        h.probe(
            || format!("{name}.physical_segment({off:#x})"),
            || {
                let _ = md.physical_segment(off);
            },
        );
        let mut one = [0u8; 1];
        h.probe(
            || format!("{name}.read_bytes({off:#x}, 1)"),
            || md.read_bytes(off, &mut one),
        );
        h.probe(
            || format!("{name}.write_bytes({off:#x}, 1)"),
            || md.write_bytes(off, &[7]),
        );
        for &n in &FEW {
            h.probe(
                || format!("{name}.sources({off:#x}, {n:#x})"),
                || {
                    let mut count = 0u64;
                    let _ = md.sources(off, n, &mut |_| count += 1);
                },
            );
            h.probe(
                || format!("{name}.fill_zero({off:#x}, {n:#x})"),
                || {
                    let done = md.fill_zero(off, n);
                    assert!(done <= n);
                },
            );
            h.probe(
                || format!("{name}.leaves({off:#x}, {n:#x})"),
                || md.leaves(off, n, &mut |_| {}),
            );
            for op in [
                MemoryOperation::Flush,
                MemoryOperation::Store,
                MemoryOperation::Invalidate,
                MemoryOperation::Discard,
            ] {
                h.probe(
                    || format!("{name}.perform_operation({op:?}, {off:#x}, {n:#x})"),
                    || {
                        let _ = md.perform_operation(op, off, n);
                    },
                );
            }
        }
    }
    h.probe(
        || format!("{name}.dma_map_length()"),
        || {
            let _ = md.dma_map_length();
        },
    );
    h.probe(
        || format!("{name}.set_purgeable(KeepCurrent)"),
        || {
            let _ = md.set_purgeable(PurgeableRequest::KeepCurrent);
        },
    );
}

#[test]
fn buffer_options_at_the_extremes_are_errors_or_buffers() {
    let m = machine(900);
    let before = snap(&m);
    let mut h = Hunt::default();
    let capacities = EXTREMES;
    let alignments = [
        0u64,
        1,
        2,
        3,
        PAGE - 1,
        PAGE,
        PAGE + 1,
        0x1800,
        1 << 20,
        1 << 40,
        1 << 63,
        u64::MAX,
    ];
    let mut made = 0;
    for &cap in &capacities {
        for &align in &alignments {
            for (contiguous, pageable) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                let opts = BufferOptions::new(cap, Direction::InOut)
                    .alignment(align)
                    .contiguous(contiguous)
                    .pageable(pageable);
                let label = || format!("BufferMemoryDescriptor::new({opts:?})");
                let r = h.probe(label, || BufferMemoryDescriptor::new(m.clone(), opts));
                match r {
                    Some(Ok(b)) => {
                        made += 1;
                        assert!(b.capacity() >= cap, "{opts:?}");
                        assert!(cap != 0, "a capacity of 0 was accepted: {opts:?}");
                        if align > 1 && align.is_power_of_two() && !pageable {
                            assert_eq!(b.address().0 % align.min(PAGE), 0, "{opts:?}");
                        }
                    }
                    Some(Err(e))
                        if cap != 0
                            && cap <= PAGE
                            && align <= PAGE
                            && align.is_power_of_two()
                            && !(contiguous && pageable) =>
                    {
                        panic!("a one-page buffer was refused: {opts:?}: {e}");
                    }
                    Some(Err(_)) | None => {}
                }
            }
        }
    }
    assert!(made > 0);
    // Physical limits and floors.
    for &cap in &[1, PAGE, 3 * PAGE + 1] {
        for &limit in &[
            0u64,
            1,
            PAGE - 1,
            PAGE,
            0xFFFF_FFFF,
            (1 << 33) - 1,
            1 << 63,
            u64::MAX,
        ] {
            for &min in &[
                0u64,
                1,
                PAGE,
                0xFFFF_F000,
                1 << 33,
                1 << 63,
                u64::MAX - PAGE + 1,
                u64::MAX,
            ] {
                for contiguous in [false, true] {
                    let opts = BufferOptions::new(cap, Direction::In)
                        .phys_limit(limit)
                        .phys_min(min)
                        .contiguous(contiguous);
                    let r = h.probe(
                        || format!("BufferMemoryDescriptor::new({opts:?})"),
                        || BufferMemoryDescriptor::new(m.clone(), opts),
                    );
                    if let Some(Ok(b)) = r {
                        let mut at = 0;
                        while at < b.length() {
                            let seg = b.physical_segment(at).unwrap();
                            assert!(seg.addr.0 >= min, "{opts:?}: {seg:?}");
                            assert!(seg.addr.0 + seg.len - 1 <= limit, "{opts:?}: {seg:?}");
                            at += seg.len;
                        }
                    }
                }
            }
        }
    }
    h.finish("BufferOptions");
    assert_no_leak(&m, &before, "BufferOptions");
}

#[test]
fn buffer_accessors_at_the_extremes() {
    sweep(901, "buffer accessors", |m, h| {
        let mut b = buffer(m, 3 * PAGE + 5);
        probe_descriptor(h, "buffer", &b);
        for &a in &EXTREMES {
            for &n in &FEW {
                h.probe(
                    || format!("buffer.bytes_no_copy({a:#x}, {n:#x})"),
                    || {
                        let _ = b.bytes_no_copy(a, n).map(|s| s.len());
                    },
                );
                h.probe(
                    || format!("buffer.bytes_no_copy_mut({a:#x}, {n:#x})"),
                    || {
                        let _ = b.bytes_no_copy_mut(a, n).map(|s| s.len());
                    },
                );
            }
            let mut buf = [0u8; 3];
            h.probe(
                || format!("buffer.read({a:#x}, 3)"),
                || {
                    let _ = b.read(a, &mut buf);
                },
            );
            h.probe(
                || format!("buffer.write({a:#x}, 3)"),
                || {
                    let _ = b.write(a, &[1, 2, 3]);
                },
            );
            h.probe(
                || format!("buffer.set_length({a:#x})"),
                || {
                    let r = b.set_length(a);
                    assert_eq!(r.is_ok(), a <= b.capacity(), "set_length({a:#x}): {r:?}");
                },
            );
        }
        b.set_length(b.capacity()).unwrap();
        h.probe(
            || "buffer.append_bytes when full".into(),
            || {
                assert_eq!(b.append_bytes(&[1; 9]), 0);
            },
        );
        // DriverKit's factory with the same extremes.
        for &cap in &EXTREMES {
            for &align in &[0u64, 1, 3, PAGE + 1, 1 << 40, (1 << 63) + 1, u64::MAX] {
                for bits in [0u64, 1, 3, 4, u64::MAX] {
                    let opts = dmakit::driverkit::DkMemoryOptions::from_bits(bits);
                    h.probe(
                        || {
                            format!(
                                "DkBufferMemoryDescriptor::create({bits:#x}, {cap:#x}, {align:#x})"
                            )
                        },
                        || {
                            let r = dmakit::driverkit::DkBufferMemoryDescriptor::create(
                                m.clone(),
                                opts,
                                cap,
                                align,
                            );
                            if let Ok(b) = &r {
                                assert!(b.capacity() >= cap && cap > 0 && bits <= 3);
                                dmakit::driverkit::DkBufferMemoryDescriptor::set_length(
                                    b,
                                    u64::MAX,
                                )
                                .unwrap();
                                assert_eq!(b.length(), cap);
                            }
                        },
                    );
                }
            }
        }
    });
}

/// Descriptors of physical ranges cost nothing, so their lengths can be as large as a
/// `u64` allows: the composites built on them must add lengths without overflowing.
#[test]
fn composites_of_huge_descriptors_do_not_overflow() {
    sweep(902, "composites", |m, h| {
        // Physical-range constructors with lengths that overflow the address space.
        for &a in &EXTREMES {
            for &n in &FEW {
                h.probe(
                    || format!("device_memory({a:#x}, {n:#x})"),
                    || {
                        let r = device_memory(m.clone(), PhysAddr(a), n);
                        if let Ok(d) = &r {
                            assert!(a.checked_add(n).is_some(), "{a:#x}+{n:#x} accepted");
                            assert_eq!(d.length(), n);
                        }
                    },
                );
                h.probe(
                    || format!("with_physical_ranges([({a:#x}, {n:#x}) ×2])"),
                    || {
                        let _ = GeneralMemoryDescriptor::with_physical_ranges(
                            m.clone(),
                            &[(PhysAddr(a), n), (PhysAddr(a), n)],
                            Direction::Out,
                        );
                    },
                );
                h.probe(
                    || format!("with_address_range({a:#x}, {n:#x})"),
                    || {
                        let r = GeneralMemoryDescriptor::with_address_range(
                            m.clone(),
                            Task::KERNEL,
                            VirtAddr(a),
                            n,
                            Direction::Out,
                        );
                        if let Ok(d) = r {
                            let _ = (&d as &dyn MemoryDescriptor).prepare(Direction::Out);
                        }
                    },
                );
            }
        }
        let half: Arc<dyn MemoryDescriptor> =
            Arc::new(device_memory(m.clone(), PhysAddr(0), 1 << 63).unwrap());
        let top: Arc<dyn MemoryDescriptor> =
            Arc::new(device_memory(m.clone(), PhysAddr(PAGE), u64::MAX - PAGE).unwrap());
        probe_descriptor(h, "half", &*half);
        probe_descriptor(h, "top", &*top);
        for parts in [
            vec![half.clone(), half.clone()],
            vec![half.clone(), half.clone(), half.clone()],
            vec![top.clone(), top.clone()],
            vec![top.clone(), half.clone()],
        ] {
            let n = parts.len();
            let r = h.probe(
                || format!("MultiMemoryDescriptor::new({n} huge parts)"),
                || MultiMemoryDescriptor::new(parts.clone(), Direction::None),
            );
            match r {
                Some(Ok(multi)) => {
                    panic!(
                        "a multi descriptor longer than 2^64 bytes was made: length {:#x}",
                        multi.length()
                    );
                }
                Some(Err(e)) => assert!(matches!(e, Error::Overflow { .. }), "{e}"),
                None => {}
            }
            let r = h.probe(
                || format!("DkMemoryDescriptor::create_with_memory_descriptors({n} huge parts)"),
                || {
                    dmakit::driverkit::DkMemoryDescriptor::create_with_memory_descriptors(
                        dmakit::driverkit::DkMemoryOptions::NONE,
                        &parts,
                    )
                },
            );
            if let Some(Ok(multi)) = r {
                panic!(
                    "DriverKit made a multi descriptor of length {:#x}",
                    multi.length()
                );
            }
        }
        // One that fits exactly, probed everywhere.
        let edge: Arc<dyn MemoryDescriptor> =
            Arc::new(device_memory(m.clone(), PhysAddr(0), (1 << 63) - 1).unwrap());
        let multi =
            MultiMemoryDescriptor::new(vec![half.clone(), edge.clone()], Direction::None).unwrap();
        assert_eq!(multi.length(), u64::MAX);
        probe_descriptor(h, "multi(2^63, 2^63-1)", &multi);
        let multi: Arc<dyn MemoryDescriptor> = Arc::new(multi);
        // Sub-ranges of the huge ones.
        for parent in [&half, &top, &multi] {
            for &off in &EXTREMES {
                for &n in &FEW {
                    let r = h.probe(
                        || {
                            format!(
                                "SubMemoryDescriptor::new(len {:#x}, {off:#x}, {n:#x})",
                                parent.length()
                            )
                        },
                        || SubMemoryDescriptor::new(parent.clone(), off, n, Direction::None),
                    );
                    if let Some(Ok(s)) = r {
                        // A zero length is allowed, as in IOKit.
                        assert!(
                            off.checked_add(n).is_some_and(|e| e <= parent.length()),
                            "sub ({off:#x}, {n:#x}) of {:#x} accepted",
                            parent.length()
                        );
                        probe_descriptor(h, "sub", &s);
                    }
                    h.probe(
                        || format!("device_sub_range({off:#x}, {n:#x})"),
                        || {
                            let _ = device_sub_range(parent.clone(), off, n);
                        },
                    );
                    h.probe(
                        || format!("DkMemoryDescriptor::create_sub_memory_descriptor({off:#x}, {n:#x})"),
                        || {
                            let _ = dmakit::driverkit::DkMemoryDescriptor::create_sub_memory_descriptor(
                                dmakit::driverkit::DkMemoryOptions::NONE,
                                off,
                                n,
                                parent,
                            );
                        },
                    );
                }
            }
        }
        // Interleaved portions at the extremes.
        let mut il = InterleavedMemoryDescriptor::with_capacity(4, Direction::None);
        for &off in &FEW {
            for &n in &FEW {
                h.probe(
                    || format!("interleaved.set_memory_descriptor({off:#x}, {n:#x})"),
                    || {
                        let _ = il.set_memory_descriptor(multi.clone(), off, n);
                    },
                );
            }
        }
        probe_descriptor(h, "interleaved", &il);
        h.probe(
            || "interleaved with capacity usize::MAX".into(),
            || {
                let il = InterleavedMemoryDescriptor::with_capacity(usize::MAX, Direction::Out);
                assert_eq!(il.length(), 0);
            },
        );
    });
}

#[test]
fn memory_maps_with_ranges_past_the_end() {
    sweep(903, "memory maps", |m, h| {
        let b: Arc<dyn MemoryDescriptor> = Arc::new(buffer(m, 5 * PAGE + 7));
        let len = b.length();
        let offs: Vec<u64> = EXTREMES
            .iter()
            .copied()
            .chain([len - 1, len, len + 1])
            .collect();
        for &off in &offs {
            for &n in &offs {
                for guard in [MapGuard::None, MapGuard::Small, MapGuard::Large] {
                    let opts = MapOptions::new().range(off, n).guard(guard).unique();
                    let r = h.probe(
                        || format!("MemoryMap::new({opts:?})"),
                        || MemoryMap::new(m.clone(), b.clone(), opts),
                    );
                    if let Some(Ok(map)) = r {
                        let want = if n == 0 { len } else { n };
                        assert!(
                            off.checked_add(want).is_some_and(|e| e <= len),
                            "a map of ({off:#x}, {n:#x}) of {len:#x} bytes was made"
                        );
                        assert_eq!(map.length(), want);
                        for &o in &EXTREMES {
                            h.probe(
                                || format!("map.physical_segment({o:#x})"),
                                || {
                                    let _ = map.physical_segment(o);
                                },
                            );
                        }
                    }
                }
                for &at in &[0u64, 1, PAGE, u64::MAX - PAGE + 1, u64::MAX] {
                    let opts = MapOptions::new().range(off, n).at(VirtAddr(at));
                    h.probe(
                        || format!("MemoryMap::new({opts:?})"),
                        || {
                            let _ = MemoryMap::new(m.clone(), b.clone(), opts);
                        },
                    );
                }
            }
        }
        for &bits in &[0u64, 1, 2, 0x1C, 0x8, 0xC, 0x100, 0xF00, 0xFFF, u64::MAX] {
            for &addr in &FEW {
                for &off in &FEW {
                    for &n in &FEW {
                        for &align in &[0u64, 1, 3, PAGE, 1 << 63, u64::MAX] {
                            h.probe(
                                || format!("create_mapping({bits:#x}, {addr:#x}, {off:#x}, {n:#x}, {align:#x})"),
                                || {
                                    let _ = dmakit::driverkit::DkMemoryDescriptor::create_mapping(
                                        m.clone(),
                                        &b,
                                        dmakit::driverkit::DkMapOptions::from_bits(bits),
                                        addr,
                                        off,
                                        n,
                                        align,
                                    );
                                },
                            );
                        }
                    }
                }
            }
        }
    });
}

/// Every setter of the segment spec builder with every extreme, alone.
fn spec_variants() -> Vec<(String, dmakit::Result<SegmentSpec>)> {
    let mut out = Vec::new();
    for &v in &EXTREMES {
        let b = SegmentSpec::builder;
        out.push((
            format!("max_segment_size({v:#x})"),
            b().max_segment_size(v).build(),
        ));
        out.push((
            format!("max_transfer_size({v:#x})"),
            b().max_transfer_size(v).build(),
        ));
        out.push((format!("alignment({v:#x})"), b().alignment(v).build()));
        out.push((
            format!("length_alignment({v:#x})"),
            b().length_alignment(v).build(),
        ));
        out.push((
            format!("internal_alignment({v:#x})"),
            b().internal_alignment(v).build(),
        ));
        out.push((format!("boundary({v:#x})"), b().boundary(v).build()));
        out.push((format!("window(0, {v:#x})"), b().window(0, v).build()));
        out.push((
            format!("window({v:#x}, MAX)"),
            b().window(v, u64::MAX).build(),
        ));
        out.push((format!("window({v:#x}, {v:#x})"), b().window(v, v).build()));
        let n = v as u32;
        out.push((format!("max_segments({n:#x})"), b().max_segments(n).build()));
        let bits = (v % 300) as u32;
        out.push((
            format!("address_bits({bits})"),
            b().address_bits(bits).build(),
        ));
        out.push((
            format!("offset_bits({bits})"),
            b().offset_bits(bits).build(),
        ));
    }
    for bits in [0u32, 1, 11, 12, 31, 32, 63, 64, 65, 255, u32::MAX] {
        let b = SegmentSpec::builder;
        out.push((
            format!("address_bits({bits})"),
            b().address_bits(bits).build(),
        ));
        out.push((
            format!("offset_bits({bits})"),
            b().offset_bits(bits).build(),
        ));
        out.push((
            format!("address_bits({bits}) + boundary(2^63) + alignment(2^62)"),
            b().address_bits(bits)
                .boundary(1 << 63)
                .alignment(1 << 62)
                .build(),
        ));
    }
    out
}

#[test]
fn segment_specs_at_the_extremes() {
    let mut h = Hunt::default();
    let specs = {
        let r = h.probe(|| "building the specs".into(), spec_variants);
        r.unwrap_or_default()
    };
    assert!(!specs.is_empty());
    let built: Vec<(String, SegmentSpec)> = specs
        .into_iter()
        .filter_map(|(n, r)| r.ok().map(|s| (n, s)))
        .collect();
    for (n, s) in &built {
        for &a in &FEW {
            for &l in &FEW {
                h.probe(
                    || format!("{n}.reaches({a:#x}, {l:#x})"),
                    || s.reaches(a, l),
                );
            }
        }
        for (n2, s2) in built.iter().step_by(7) {
            h.probe(
                || format!("{n}.intersect({n2})"),
                || {
                    let _ = s.intersect(s2);
                },
            );
        }
        h.probe(
            || format!("BufferOptions::for_spec({n})"),
            || BufferOptions::for_spec(u64::MAX, Direction::In, s),
        );
    }
    h.finish("segment specs");
}

#[test]
fn dma_commands_with_extreme_specs_and_ranges() {
    sweep(904, "DMA commands", |m, h| {
        let b: Arc<dyn MemoryDescriptor> = Arc::new(buffer(m, 3 * PAGE + 9));
        let huge: Arc<dyn MemoryDescriptor> =
            Arc::new(device_memory(m.clone(), PhysAddr(1 << 40), 1 << 62).unwrap());
        let specs: Vec<(String, SegmentSpec)> = spec_variants()
            .into_iter()
            .filter_map(|(n, r)| r.ok().map(|s| (n, s)))
            .collect();
        let pool = Arc::new(BouncePool::new(m.clone(), "extreme pool", 1 << 20));
        for (name, spec) in &specs {
            for fmt in [SegmentFormat::Host32, SegmentFormat::Big64] {
                for mode in [
                    MappingMode::Bypassed,
                    MappingMode::IterateOnly,
                    MappingMode::NonCoherent,
                ] {
                    let r = h.probe(
                        || format!("DmaCommand::builder({name}, {fmt:?}, {mode:?})"),
                        || {
                            DmaCommand::builder(m.clone())
                                .spec(*spec)
                                .format(fmt)
                                .mode(mode.clone())
                                .bounce_pool(pool.clone())
                                .build()
                        },
                    );
                    let Some(Ok(mut cmd)) = r else { continue };
                    // A spec that cuts the 2^62-byte range into billions of segments, but
                    // not more than max_segments, makes prepare walk them all: slow, not
                    // wrong. More than max_segments is refused without a walk.
                    let piece = match spec.boundary() {
                        0 => spec.max_segment_size(),
                        b => b.min(spec.max_segment_size()),
                    };
                    let refused = (1u64 << 62).div_ceil(piece) > u64::from(spec.max_segments());
                    let mds: &[&Arc<dyn MemoryDescriptor>] = if piece >= 1 << 52 || refused {
                        &[&b, &huge]
                    } else {
                        &[&b]
                    };
                    for &md in mds {
                        let len = md.length();
                        if cmd.set_memory_descriptor(md.clone()).is_err() {
                            continue;
                        }
                        for off in [0, 1, PAGE - 1, len - 1, len, 1 << 63, u64::MAX] {
                            for n in [0, 1, len - off.min(len), len, 1 << 63, u64::MAX] {
                                let label = || {
                                    format!("{name} {fmt:?} {mode:?} len {len:#x}: prepare({off:#x}, {n:#x})")
                                };
                                let r =
                                    h.probe(label, || cmd.prepare(PrepareOptions::range(off, n)));
                                if let Some(Ok(())) = r {
                                    assert!(
                                        n > 0 && off.checked_add(n).is_some_and(|e| e <= len),
                                        "{name}: prepare({off:#x}, {n:#x}) of {len:#x} accepted"
                                    );
                                    h.probe(
                                        || format!("{name}: complete"),
                                        || cmd.complete().unwrap(),
                                    );
                                }
                            }
                        }
                        let r = h.probe(
                            || format!("{name} {fmt:?}: prepare(whole {len:#x})"),
                            || cmd.prepare(PrepareOptions::new()),
                        );
                        if let Some(Ok(())) = r {
                            if fmt == SegmentFormat::Host32 && matches!(mode, MappingMode::Bypassed)
                            {
                                probe_prepared(h, name, &cmd);
                            }
                            h.probe(
                                || format!("{name}: force_double_buffer"),
                                || {
                                    let _ = cmd.force_double_buffer();
                                },
                            );
                            cmd.complete().unwrap();
                        }
                        cmd.clear_memory_descriptor().unwrap();
                    }
                }
            }
        }
        assert_eq!(
            pool.stats().in_use,
            0,
            "bounce pages outlived their commands"
        );
    });
}

fn probe_prepared(h: &mut Hunt, name: &str, cmd: &DmaCommand<M>) {
    for &off in &EXTREMES {
        for size in [0usize, 1, 7, 8, 15, 16, 17, 64] {
            let mut out = vec![0u8; size];
            let mut o = off;
            h.probe(
                || format!("{name}: gen_segments({off:#x}, out {size})"),
                || {
                    let _ = cmd.gen_segments(&mut o, &mut out);
                },
            );
        }
        h.probe(
            || format!("{name}: segments_from({off:#x})"),
            || cmd.segments_from(off).take(4).count(),
        );
        for &n in &FEW {
            for dir in [
                Direction::In,
                Direction::Out,
                Direction::InOut,
                Direction::None,
            ] {
                h.probe(
                    || format!("{name}: synchronize_range({dir:?}, {off:#x}, {n:#x})"),
                    || {
                        let _ = cmd.synchronize_range(dir, off, n);
                    },
                );
            }
        }
        let mut one = [0u8; 2];
        h.probe(
            || format!("{name}: read_bytes({off:#x})"),
            || cmd.read_bytes(off, &mut one),
        );
        h.probe(
            || format!("{name}: write_bytes({off:#x})"),
            || cmd.write_bytes(off, &[1, 2]),
        );
    }
}

#[test]
fn memory_cursors_and_segment_formats_at_the_extremes() {
    let m = machine(905);
    let mut h = Hunt::default();
    let b = buffer(&m, 4 * PAGE + 3);
    let huge = device_memory(m.clone(), PhysAddr(PAGE), u64::MAX - PAGE).unwrap();
    for &seg in &FEW {
        for &xfer in &FEW {
            for &align in &[0u64, 1, 3, PAGE, 1 << 63, u64::MAX] {
                let r = h.probe(
                    || format!("MemoryCursor::new({seg:#x}, {xfer:#x}, {align:#x})"),
                    || NaturalMemoryCursor::new(seg, xfer, align),
                );
                let Some(Ok(c)) = r else { continue };
                for md in [&b as &dyn MemoryDescriptor, &huge] {
                    for &from in &FEW {
                        for &max in &FEW {
                            for (bytes, slots) in
                                [(0usize, 0usize), (15, 1), (16, usize::MAX), (64, 4)]
                            {
                                let mut out = vec![0u8; bytes];
                                h.probe(
                                    || format!("cursor({seg:#x},{xfer:#x},{align:#x}).gen_physical_segments(len {:#x}, {from:#x}, {bytes}, {slots}, {max:#x})", md.length()),
                                    || {
                                        let _ = c.gen_physical_segments(md, from, &mut out, slots, max);
                                    },
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    for fmt in [
        SegmentFormat::Host32,
        SegmentFormat::Big32,
        SegmentFormat::Little32,
        SegmentFormat::Host64,
        SegmentFormat::Big64,
        SegmentFormat::Little64,
    ] {
        for size in [0usize, 7, 8, 16, 17] {
            let mut out = vec![0u8; size];
            for index in [
                0usize,
                1,
                2,
                usize::MAX / 16,
                usize::MAX / 8,
                usize::MAX - 1,
                usize::MAX,
            ] {
                for &a in &FEW {
                    let seg = IoSegment {
                        addr: dmakit::IoAddr(a),
                        len: a,
                    };
                    h.probe(
                        || format!("{fmt:?}.write(out {size}, {index}, {a:#x})"),
                        || {
                            let _ = fmt.write(&mut out, index, seg);
                        },
                    );
                }
                h.probe(
                    || format!("{fmt:?}.read(out {size}, {index})"),
                    || {
                        let _ = fmt.read(&out, index);
                    },
                );
            }
        }
    }
    h.finish("cursors and formats");
}

#[test]
fn iommu_mappers_with_huge_counts_and_addresses() {
    use dmakit::mapper::{Access, IommuMapper, IovaPlacement, Mapper, MapperRegistry};
    use dmakit::IoAddr;
    use dmakit_sim::SimIommu;
    let m = machine(906);
    let before = snap(&m);
    let mut h = Hunt::default();
    let iommu = Arc::new(SimIommu::new(m.clone()));
    for &base in &EXTREMES {
        for &size in &EXTREMES {
            for lazy in [false, true] {
                h.probe(
                    || format!("IommuMapper::new(lazy {lazy}, {base:#x}, {size:#x})"),
                    || {
                        let r = if lazy {
                            IommuMapper::new_lazy(iommu.clone(), base, size)
                        } else {
                            IommuMapper::new(iommu.clone(), base, size)
                        };
                        if let Ok(mapper) = r {
                            let (b, s) = mapper.window();
                            assert_eq!((b.0, s), (base, size));
                            let _ = mapper.iovm_alloc(1).map(|a| mapper.iovm_free(a, 1));
                        }
                    },
                );
            }
        }
    }
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 1 << 32, 1 << 30).unwrap());
    let pa = {
        let b = buffer(&m, PAGE);
        b.physical_segment(0).unwrap().addr
    };
    let usage = mapper.usage();
    for &pages in &EXTREMES {
        let r = h.probe(
            || format!("iovm_alloc({pages:#x})"),
            || mapper.iovm_alloc(pages),
        );
        if let Some(Ok(iova)) = r {
            assert!(
                pages > 0 && pages <= (1 << 30) / PAGE,
                "iovm_alloc({pages:#x}) succeeded"
            );
            for &n in &EXTREMES {
                h.probe(
                    || format!("iovm_insert_run(alloc of {pages:#x}, pa, {n:#x})"),
                    || {
                        let _ = mapper.iovm_insert_run(iova, pa, n, Access::READ);
                    },
                );
                h.probe(
                    || format!("iovm_free(alloc of {pages:#x}, wrong count {n:#x})"),
                    || {
                        if n != pages {
                            assert!(mapper.iovm_free(iova, n).is_err());
                        }
                    },
                );
            }
            mapper.iovm_free(iova, pages).unwrap();
        }
        for &a in &EXTREMES {
            h.probe(
                || format!("iovm_free({a:#x}, {pages:#x})"),
                || assert!(mapper.iovm_free(IoAddr(a), pages).is_err()),
            );
            h.probe(
                || format!("iovm_insert_page({a:#x}, {pages:#x})"),
                || {
                    assert!(mapper
                        .iovm_insert_page(IoAddr(a), PhysAddr(pages), Access::READ_WRITE)
                        .is_err())
                },
            );
            h.probe(
                || format!("iovm_insert_run({a:#x}, pa {pages:#x}, {pages:#x} pages)"),
                || {
                    let _ = mapper.iovm_insert_run(IoAddr(a), PhysAddr(pages), pages, Access::READ);
                },
            );
            h.probe(
                || format!("translate({a:#x})"),
                || {
                    let _ = mapper.translate(IoAddr(a));
                },
            );
            for &b in &FEW {
                let place = IovaPlacement::ANY.window(a, b).alignment(pages).boundary(b);
                h.probe(
                    || format!("iovm_alloc_placed({pages:#x}, {place:?})"),
                    || {
                        if let Ok(iova) = mapper.iovm_alloc_placed(pages, &place) {
                            assert!(place.fits(iova.0, pages * PAGE), "placed at {iova:?}");
                            mapper.iovm_free(iova, pages).unwrap();
                        }
                    },
                );
            }
        }
    }
    mapper.flush().unwrap();
    assert_eq!(mapper.usage(), usage, "IO space leaked");
    assert_eq!(iommu.table_entries(), 0, "IOMMU entries leaked");
    // IOKit's 32-bit page-number interface over the same mapper.
    let reg = MapperRegistry::with_system_mapper(Some(mapper.clone()));
    for n in [
        0u32,
        1,
        2,
        0x3FFFF,
        0x40000,
        0x40001,
        u32::MAX / 2,
        u32::MAX - 1,
        u32::MAX,
    ] {
        let r = h.probe(
            || format!("iovm_alloc_pages({n:#x})"),
            || reg.iovm_alloc_pages(n),
        );
        if let Some(Ok(page)) = r {
            for (off, p) in [(0u32, 0u32), (n - 1, u32::MAX), (n, 1), (u32::MAX, 1)] {
                h.probe(
                    || format!("insert_page({page:#x}, {off:#x}, {p:#x})"),
                    || {
                        let _ = reg.insert_page(page, off, p);
                    },
                );
            }
            reg.iovm_free_pages(page, n).unwrap();
        }
        for page in [0u32, 1, u32::MAX] {
            h.probe(
                || format!("iovm_free_pages({page:#x}, {n:#x})"),
                || {
                    assert!(reg.iovm_free_pages(page, n).is_err());
                },
            );
            h.probe(
                || format!("insert_page({page:#x}, {n:#x}, 1)"),
                || {
                    let _ = reg.insert_page(page, n, 1);
                },
            );
        }
        h.probe(
            || format!("copy_mapper_for_device([{n}], usize::MAX)"),
            || {
                assert!(reg.copy_mapper_for_device(&[n], usize::MAX).is_err());
            },
        );
    }
    mapper.flush().unwrap();
    assert_eq!(
        mapper.usage(),
        usage,
        "IO space leaked through the page-number interface"
    );
    assert_eq!(iommu.table_entries(), 0);
    h.finish("IOMMU mappers");
    assert_no_leak(&m, &before, "IOMMU mappers");
}

#[test]
fn range_allocators_at_the_extremes() {
    use dmakit::alloc::{LockedRangeAllocator, Placement, RangeAllocator};
    let mut h = Hunt::default();
    for &base in &EXTREMES {
        for &size in &EXTREMES {
            for &align in &[0u64, 1, 3, PAGE, 1 << 63, u64::MAX] {
                let r = h.probe(
                    || format!("RangeAllocator::new({base:#x}, {size:#x}, {align:#x})"),
                    || RangeAllocator::new(base, size, align),
                );
                let Some(Ok(ra)) = r else { continue };
                let free = ra.free_count();
                for placement in [Placement::FirstFit, Placement::GoodFit] {
                    let la = LockedRangeAllocator::new(ra.clone().with_placement(placement));
                    for &s in &FEW {
                        for &a in &FEW {
                            let label = || {
                                format!("({base:#x}, {size:#x}, {align:#x}) {placement:?}: allocate({s:#x}, {a:#x})")
                            };
                            if let Some(Ok(at)) = h.probe(label, || la.allocate(s, a)) {
                                h.probe(label, || la.deallocate(at, s).unwrap());
                            }
                            let label = || {
                                format!("({base:#x}, {size:#x}) {placement:?}: allocate_range({s:#x}, {a:#x})")
                            };
                            if let Some(Ok(())) = h.probe(label, || la.allocate_range(s, a)) {
                                h.probe(label, || la.deallocate(s, a).unwrap());
                            }
                            h.probe(
                                || format!("({base:#x}, {size:#x}): deallocate({s:#x}, {a:#x})"),
                                || {
                                    let _ = la.deallocate(s, a);
                                },
                            );
                            h.probe(
                                || {
                                    format!(
                                        "({base:#x}, {size:#x}): allocate_handle({s:#x}, {a:#x})"
                                    )
                                },
                                || {
                                    la.with(|r| {
                                        if let Ok(hd) = r.allocate_handle(s, a) {
                                            r.deallocate_handle(hd).unwrap();
                                        }
                                    })
                                },
                            );
                        }
                    }
                    // Whatever deallocate accepted of a range it never handed out may have
                    // grown the free space; only the allocations above must come back.
                    assert!(la.free_count() >= free || la.free_count() == free);
                }
            }
        }
        for &align in &[0u64, 1, 3, 1 << 63, u64::MAX] {
            h.probe(
                || format!("RangeAllocator::with_end_of_range({base:#x}, {align:#x})"),
                || {
                    let _ = RangeAllocator::with_end_of_range(base, align);
                },
            );
            h.probe(
                || format!("RangeAllocator::empty({align:#x}).add_range({base:#x}, MAX)"),
                || {
                    if let Ok(mut r) = RangeAllocator::empty(align) {
                        let _ = r.add_range(base, u64::MAX);
                        let _ = r.add_range(base, 1);
                        let _ = r.allocate(u64::MAX, u64::MAX);
                    }
                },
            );
        }
    }
    h.finish("range allocators");
}

#[test]
fn bounce_pools_of_no_capacity_or_all_of_it() {
    sweep(907, "bounce pools", |m, h| {
        let low = SegmentSpec::builder().address_bits(32).build().unwrap();
        let high: Arc<dyn MemoryDescriptor> = Arc::new(
            BufferMemoryDescriptor::new(
                m.clone(),
                BufferOptions::new(3 * PAGE + 1, Direction::InOut).phys_min(1 << 33),
            )
            .unwrap(),
        );
        let far: Arc<dyn MemoryDescriptor> =
            Arc::new(device_memory(m.clone(), PhysAddr(1 << 40), 1 << 62).unwrap());
        let straddle: Arc<dyn MemoryDescriptor> =
            Arc::new(device_memory(m.clone(), PhysAddr(0xFFFF_F800), (1 << 62) + 3).unwrap());
        for &cap in &EXTREMES {
            let pool = Arc::new(BouncePool::new(m.clone(), "extreme pool", cap));
            for force in [false, true] {
                pool.set_force_bounce(force);
                for md in [&high, &far, &straddle] {
                    let len = md.length();
                    let mut cmd = DmaCommand::builder(m.clone())
                        .spec(low)
                        .bounce_pool(pool.clone())
                        .build()
                        .unwrap();
                    cmd.set_memory_descriptor(md.clone()).unwrap();
                    for opts in [
                        PrepareOptions::new(),
                        PrepareOptions::range(0, 1),
                        PrepareOptions::range(len - 1, 1),
                        PrepareOptions::range(PAGE - 1, 2),
                    ] {
                        let label = || {
                            format!("pool {cap:#x} force {force} len {len:#x}: prepare({opts:?})")
                        };
                        if let Some(Ok(())) = h.probe(label, || cmd.prepare(opts)) {
                            let segs: Vec<IoSegment> = cmd.segments().map(|s| s.unwrap()).collect();
                            assert!(
                                segs.iter().all(|s| s.addr.0 + (s.len - 1) <= 0xFFFF_FFFF),
                                "{}: the device was given {segs:?} (bounced: {})",
                                label(),
                                cmd.is_bounced()
                            );
                            probe_prepared(h, "bounced", &cmd);
                            cmd.complete().unwrap();
                        }
                    }
                    let label = || format!("pool {cap:#x} len {len:#x}: force_double_buffer");
                    h.probe(label, || {
                        let _ = cmd.prepare(PrepareOptions::range(0, 1));
                        let _ = cmd.force_double_buffer();
                        let _ = cmd.complete();
                    });
                }
            }
            assert_eq!(pool.stats().in_use, 0, "pool {cap:#x}: bounce pages leaked");
        }
    });
}

#[test]
fn io_malloc_family_at_the_extremes() {
    use dmakit::alloc::{io_free, io_free_aligned, io_free_contiguous, io_free_pageable, IoHeap};
    sweep(908, "IOMalloc family", |m, h| {
        let heap = IoHeap::new(m.clone());
        let sizes: Vec<usize> = EXTREMES.iter().map(|&v| v as usize).collect();
        let aligns = [
            0usize,
            1,
            2,
            3,
            48,
            PAGE as usize - 1,
            PAGE as usize,
            PAGE as usize + 1,
            1 << 20,
            1 << 40,
            1 << 63,
            usize::MAX,
        ];
        for &size in &sizes {
            for &align in &aligns {
                for family in 0..5 {
                    let label = || format!("family {family}: alloc({size:#x}, {align:#x})");
                    let r = h.probe(label, || match family {
                        0 => heap.alloc(size),
                        1 => heap.alloc_zeroed(size),
                        2 => heap.alloc_aligned(size, align),
                        3 => heap.alloc_pageable(size, align),
                        _ => heap.alloc_contiguous(size, align),
                    });
                    if let Some(Ok(mem)) = r {
                        assert!(mem.len() >= size);
                        for &off in &sizes {
                            let mut buf = [0u8; 3];
                            h.probe(
                                || format!("IoMemory({size:#x}).read({off:#x})"),
                                || {
                                    let r = mem.read(off, &mut buf);
                                    assert_eq!(
                                        r.is_ok(),
                                        off.checked_add(3).is_some_and(|e| e <= mem.len())
                                    );
                                },
                            );
                            h.probe(
                                || format!("IoMemory({size:#x}).write({off:#x})"),
                                || {
                                    let _ = mem.write(off, &[1, 2, 3]);
                                },
                            );
                        }
                    }
                }
            }
            for &a in &EXTREMES {
                let va = VirtAddr(a);
                h.probe(
                    || format!("io_free({a:#x}, {size:#x})"),
                    || {
                        // Freeing a null address is a no-op, as in IOKit.
                        assert_eq!(io_free(&heap, va, size).is_err(), a != 0);
                        assert_eq!(io_free_aligned(&heap, va, size).is_err(), a != 0);
                        assert_eq!(io_free_pageable(&heap, va, size).is_err(), a != 0);
                        assert_eq!(io_free_contiguous(&heap, va, size).is_err(), a != 0);
                    },
                );
            }
        }
        assert_eq!(heap.stats().live_bytes, 0, "heap: {:?}", heap.leaks());
    });
}

#[test]
fn mapped_io_and_cache_calls_at_the_extremes() {
    use dmakit::device::BarInfo;
    use dmakit::map::{
        flush_processor_cache, mapped_read16, mapped_read32, mapped_read64, mapped_read8,
        mapped_write16, mapped_write32, mapped_write64, mapped_write8, set_processor_cache_mode,
    };
    use dmakit::platform::{CacheMode, Width};
    use dmakit_sim::ScratchDevice;
    let dev = Arc::new(std::sync::Mutex::new(ScratchDevice::new(1, 0x100)));
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(909)
            .ram(0x10_0000, 0x40_0000)
            .mmio(0xF000_0000, 0x100, dev)
            .build()
            .unwrap(),
    );
    let before = snap(&m);
    let mut h = Hunt::default();
    let addrs: Vec<u64> = EXTREMES
        .iter()
        .copied()
        .chain([
            0xF000_0000,
            0xF000_00FF,
            0xF000_00FC,
            0xF000_00F8,
            0xF000_00F9,
            0xF000_0100,
            0xEFFF_FFFF,
        ])
        .collect();
    for &a in &addrs {
        let pa = PhysAddr(a);
        h.probe(
            || format!("mapped_read8({a:#x})"),
            || {
                let _ = mapped_read8(&*m, pa);
                let _ = mapped_write8(&*m, pa, u8::MAX);
            },
        );
        h.probe(
            || format!("mapped_read16({a:#x})"),
            || {
                let _ = mapped_read16(&*m, pa);
                let _ = mapped_write16(&*m, pa, u16::MAX);
            },
        );
        h.probe(
            || format!("mapped_read32({a:#x})"),
            || {
                let _ = mapped_read32(&*m, pa);
                let _ = mapped_write32(&*m, pa, u32::MAX);
            },
        );
        h.probe(
            || format!("mapped_read64({a:#x})"),
            || {
                let r = mapped_read64(&*m, pa);
                let w = mapped_write64(&*m, pa, u64::MAX);
                if !(0xF000_0000..0xF000_0100).contains(&a) {
                    assert!(
                        r.is_err() && w.is_err(),
                        "{a:#x}: an access outside every device"
                    );
                }
            },
        );
        for &n in &FEW {
            h.probe(
                || format!("flush_processor_cache({a:#x}, {n:#x})"),
                || {
                    let _ = flush_processor_cache(&*m, Task::KERNEL, VirtAddr(a), n);
                },
            );
            for mode in [CacheMode::CopyBack, CacheMode::Inhibit] {
                h.probe(
                    || format!("set_processor_cache_mode({a:#x}, {n:#x}, {mode:?})"),
                    || {
                        let _ = set_processor_cache_mode(&*m, Task::KERNEL, VirtAddr(a), n, mode);
                    },
                );
            }
        }
    }
    // A BAR anywhere, up to the top of the address space.
    for &base in &EXTREMES {
        for &len in &FEW {
            let bar = BarInfo {
                index: 0,
                base: PhysAddr(base),
                len,
                prefetchable: false,
            };
            for &off in &EXTREMES {
                for w in [Width::W8, Width::W16, Width::W32, Width::W64] {
                    let r = h.probe(
                        || {
                            format!(
                                "BarInfo {{ base: {base:#x}, len: {len:#x} }}.reg({off:#x}, {w:?})"
                            )
                        },
                        || bar.reg(off, w),
                    );
                    if let Some(Ok(pa)) = r {
                        assert_eq!(pa.0 - base, off);
                        assert!(off + w.bytes() <= len);
                    }
                }
            }
        }
    }
    h.finish("mapped I/O");
    assert_no_leak(&m, &before, "mapped I/O");
}

#[test]
fn dma_transfers_whose_lengths_overflow_are_errors() {
    use dmakit::dma::DmaTransfer;
    use dmakit::IoAddr;
    let seg = |len| IoSegment {
        addr: IoAddr(0),
        len,
    };
    let big = [seg(u64::MAX), seg(1)];
    let half = [seg(1 << 63), seg(1 << 63)];
    let one = [seg(1)];
    for (source, dest) in [
        (&big[..], &big[..]),
        (&half[..], &one[..]),
        (&one[..], &half[..]),
    ] {
        let t = DmaTransfer { source, dest };
        let r = catch_unwind(|| t.bytes()).unwrap_or_else(|_| panic!("bytes() panicked on {t:?}"));
        assert!(matches!(r, Err(Error::Overflow { .. })), "{t:?}: {r:?}");
    }
    let exact = [seg(u64::MAX - 1), seg(1)];
    let t = DmaTransfer {
        source: &exact,
        dest: &exact,
    };
    assert_eq!(t.bytes().unwrap(), u64::MAX);
}

#[test]
fn dma_controllers_and_their_registry_at_the_extremes() {
    use dmakit::dma::{DmaControllerRegistry, DmaEventSource, DmaTransfer, SharedController};
    use dmakit::IoAddr;
    use dmakit_sim::SimDmaEngine;
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(910)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let mut h = Hunt::default();
    let engine = Arc::new(SimDmaEngine::new(m.clone(), None).unwrap());
    let es = Arc::new(DmaEventSource::new(engine.clone(), |_| {}));
    engine.connect(es.clone());
    for depth in [0u32, 1, 255, 256, 257, u32::MAX] {
        h.probe(
            || format!("set_fifo_depth({depth})"),
            || {
                let _ = es.set_fifo_depth(depth);
                let _ = es.valid_fifo_depth(depth);
            },
        );
    }
    for &t in &EXTREMES {
        h.probe(
            || format!("query_dma_command({t:#x})"),
            || {
                let _ = es.query_dma_command(t);
            },
        );
    }
    let seg = |a, len| IoSegment {
        addr: IoAddr(a),
        len,
    };
    for &a in &FEW {
        for &n in &FEW {
            let s = [seg(a, n)];
            let d = [seg(a.wrapping_add(PAGE), n)];
            h.probe(
                || format!("start([{a:#x}+{n:#x}])"),
                || {
                    let _ = es.start(&DmaTransfer {
                        source: &s,
                        dest: &d,
                    });
                },
            );
            let s2 = [seg(a, n), seg(a, n)];
            h.probe(
                || format!("start([{a:#x}+{n:#x}] ×2)"),
                || {
                    let _ = es.start(&DmaTransfer {
                        source: &s2,
                        dest: &s2,
                    });
                },
            );
        }
    }
    for _ in 0..64 {
        if es.poll() == 0 && !es.is_busy() {
            break;
        }
    }
    let reg = DmaControllerRegistry::new();
    let ctl: SharedController = engine.clone();
    for p in [0u32, 1, u32::MAX] {
        h.probe(
            || format!("register_dma_controller({p:#x})"),
            || {
                let _ = reg.register_dma_controller(p, ctl.clone());
            },
        );
    }
    for (parents, index) in [
        (&[][..], 0usize),
        (&[][..], usize::MAX),
        (&[u32::MAX][..], 0),
        (&[u32::MAX][..], 1),
        (&[2][..], 0),
        (&[0, 1][..], usize::MAX),
    ] {
        h.probe(
            || format!("find_for_client({parents:?}, {index:#x})"),
            || {
                let _ = reg.find_for_client(parents, index);
            },
        );
    }
    for name in ["", "\0", "IODMAController", &"x".repeat(1 << 16)] {
        h.probe(
            || format!("find/unregister({:?})", &name[..name.len().min(8)]),
            || {
                assert!(reg.find(name).is_err());
                assert!(reg.unregister(name).is_err());
            },
        );
    }
    h.finish("DMA controllers");
}

#[test]
fn driverkit_dma_commands_at_the_extremes() {
    use dmakit::driverkit::{DkDmaCommand, DkDmaSpec, DkPerformOptions};
    sweep(911, "DriverKit DMA commands", |m, h| {
        let b: Arc<dyn MemoryDescriptor> = Arc::new(buffer(m, 2 * PAGE + 3));
        let data = buffer(m, PAGE);
        for bits in [0u64, 1, 11, 12, 32, 63, 64, 65, 255, 256, 1 << 32, u64::MAX] {
            for options in [0u64, 1, u64::MAX] {
                let r = h.probe(
                    || format!("DkDmaCommand::create({options:#x}, {bits})"),
                    || DkDmaCommand::create(m.clone(), None, options, DkDmaSpec::new(bits)),
                );
                let Some(Ok(cmd)) = r else { continue };
                assert_eq!(options, 0);
                for &off in &FEW {
                    for &n in &FEW {
                        for slots in [1usize, 3] {
                            let mut segs = vec![IoSegment::default(); slots];
                            let label = || {
                                format!("{bits} bits: prepare_for_dma({off:#x}, {n:#x}, {slots})")
                            };
                            let r =
                                h.probe(label, || cmd.prepare_for_dma(0, &b, off, n, &mut segs));
                            if let Some(Ok(_)) = r {
                                for op in [1u64, 2, 4, 3, u64::MAX] {
                                    for &o in &FEW {
                                        for &l in &FEW {
                                            h.probe(
                                                || {
                                                    format!(
                                                        "perform_operation({op}, {o:#x}, {l:#x})"
                                                    )
                                                },
                                                || {
                                                    let _ = cmd.perform_operation(
                                                        DkPerformOptions::from_bits(op),
                                                        o,
                                                        l,
                                                        o,
                                                        Some(&data),
                                                    );
                                                },
                                            );
                                        }
                                    }
                                }
                                h.probe(
                                    || "get_preparation".into(),
                                    || {
                                        let _ = cmd.get_preparation();
                                    },
                                );
                                cmd.complete_dma(0).unwrap();
                            }
                        }
                    }
                }
                h.probe(
                    || format!("{bits} bits: complete_dma(MAX) unprepared"),
                    || {
                        let _ = cmd.complete_dma(u64::MAX);
                    },
                );
            }
        }
    });
}

#[test]
fn page_sizes_and_machine_shapes_at_the_extremes() {
    use dmakit::PageSize;
    let mut h = Hunt::default();
    for &b in &EXTREMES {
        h.probe(
            || format!("PageSize::new({b:#x})"),
            || {
                if let Ok(p) = PageSize::new(b) {
                    assert!(b.is_power_of_two());
                    for &a in &EXTREMES {
                        let _ = (p.offset(a), p.trunc(a), p.round_up(a));
                        for &l in &FEW {
                            let _ = p.pages_spanned(a, l);
                        }
                    }
                }
            },
        );
    }
    for &base in &FEW {
        for &len in &FEW {
            h.probe(
                || format!("MachineBuilder::ram({base:#x}, {len:#x})"),
                || {
                    let _ = MachineBuilder::new().ram(base, len).build();
                },
            );
        }
    }
    h.finish("page sizes and machines");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Random windows and ranges of a buffer: a sub-descriptor, a map and a prepared DMA
    /// command either refuse or describe exactly the bytes asked for.
    #[test]
    fn random_ranges_are_refused_or_exact(
        off in proptest::prop_oneof![0..0x5000u64, proptest::prelude::any::<u64>()],
        len in proptest::prop_oneof![0..0x5000u64, proptest::prelude::any::<u64>()],
    ) {
        let m: M = Arc::new(MachineBuilder::new().seed(off ^ len).build().unwrap());
        let before = snap(&m);
        {
            let b: Arc<dyn MemoryDescriptor> = Arc::new(
                buffer(&m, 0x4321),
            );
            let inside = off.checked_add(len).is_some_and(|e| e <= 0x4321);
            let fits = len > 0 && inside;
            // A window may be empty (as in IOKit); a map of length 0 is the whole
            // descriptor, so it needs offset 0; a prepare of length 0 is refused.
            let sub = SubMemoryDescriptor::new(b.clone(), off, len, Direction::InOut);
            proptest::prop_assert_eq!(sub.is_ok(), inside);
            let map = MemoryMap::new(m.clone(), b.clone(), MapOptions::new().range(off, len));
            proptest::prop_assert_eq!(map.is_ok(), if len == 0 { off == 0 } else { fits });
            let mut cmd = DmaCommand::builder(m.clone()).build().unwrap();
            cmd.set_memory_descriptor(b.clone()).unwrap();
            let r = cmd.prepare(PrepareOptions::range(off, len));
            proptest::prop_assert_eq!(r.is_ok(), fits);
            if r.is_ok() {
                let total: u64 = cmd.segments().map(|s| s.unwrap().len).sum();
                proptest::prop_assert_eq!(total, len);
                cmd.complete().unwrap();
            }
        }
        proptest::prop_assert_eq!(snap(&m), before);
    }
}

/// Runs `f` on its own thread and fails if it neither returns nor panics within a
/// minute (a lock taken twice), or if it panics.
fn within_a_minute(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(r.is_ok());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(true) => {}
        Ok(false) => panic!("{what}: panicked"),
        Err(_) => panic!("{what}: did not return within a minute (a lock taken twice?)"),
    }
}

/// Calls back into a descriptor from inside its own callbacks: every call either works
/// or is refused, none deadlocks or panics, and nothing is left prepared or mapped.
#[test]
fn descriptor_callbacks_may_call_back_in() {
    let m = machine(912);
    let before = snap(&m);
    let mm = m.clone();
    within_a_minute("descriptor reentrancy", move || {
        let buf: Arc<dyn MemoryDescriptor> = Arc::new(
            BufferMemoryDescriptor::new(mm.clone(), BufferOptions::new(3 * PAGE, Direction::InOut))
                .unwrap(),
        );
        let pageable: Arc<dyn MemoryDescriptor> = Arc::new(
            BufferMemoryDescriptor::new(
                mm.clone(),
                BufferOptions::new(2 * PAGE, Direction::InOut).pageable(true),
            )
            .unwrap(),
        );
        let sub: Arc<dyn MemoryDescriptor> =
            Arc::new(SubMemoryDescriptor::new(buf.clone(), 7, PAGE, Direction::InOut).unwrap());
        let multi: Arc<dyn MemoryDescriptor> = Arc::new(
            MultiMemoryDescriptor::new(
                vec![sub.clone(), buf.clone(), sub.clone()],
                Direction::InOut,
            )
            .unwrap(),
        );
        for md in [&buf, &pageable, &sub, &multi] {
            let inner = md.clone();
            let mut calls = 0;
            md.sources(0, md.length(), &mut |_| {
                calls += 1;
                let mut b = [0u8; 8];
                assert_eq!(inner.read_bytes(0, &mut b), 8);
                assert_eq!(inner.write_bytes(1, &b), 8);
                let _ = inner.physical_segment(0);
                let prepared = (&*inner as &dyn MemoryDescriptor).prepare(Direction::InOut);
                if let Ok(p) = prepared {
                    p.complete().unwrap();
                }
                let _ = inner.perform_operation(MemoryOperation::Store, 0, 64);
                let _ = inner.set_purgeable(PurgeableRequest::KeepCurrent);
                let _ = MemoryMap::new(mm.clone(), inner.clone(), MapOptions::new().unique());
                inner.sources(0, 1, &mut |_| {}).unwrap();
            })
            .unwrap();
            assert!(calls > 0);
            md.leaves(0, md.length(), &mut |_| {
                assert_eq!(inner.fill_zero(0, 16), 16);
                inner.leaves(0, 1, &mut |_| {});
            });
        }
        // A DMA command prepared on a descriptor, copying into and out of that same
        // descriptor (DriverKit's PerformOperation with the prepared memory as data).
        let cmd = dmakit::driverkit::DkDmaCommand::create(
            mm.clone(),
            None,
            0,
            dmakit::driverkit::DkDmaSpec::new(64),
        )
        .unwrap();
        let mut segs = [IoSegment::default(); 8];
        cmd.prepare_for_dma(0, &buf, 0, 2 * PAGE, &mut segs)
            .unwrap();
        for op in [1u64, 2, 4] {
            let r = cmd.perform_operation(
                dmakit::driverkit::DkPerformOptions::from_bits(op),
                0,
                PAGE,
                PAGE,
                Some(&*buf),
            );
            assert!(r.is_ok(), "op {op}: {r:?}");
        }
        cmd.complete_dma(0).unwrap();
    });
    assert_no_leak(&m, &before, "descriptor reentrancy");
}

/// A completion action that starts the next transfer and polls its own event source.
#[test]
fn completion_actions_may_call_back_into_their_event_source() {
    use dmakit::dma::{DmaCompletion, DmaEventSource, DmaTransfer};
    use dmakit::IoAddr;
    use dmakit_sim::SimDmaEngine;
    use std::sync::{Mutex, OnceLock, Weak};
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(913)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let mm = m.clone();
    within_a_minute("completion action reentrancy", move || {
        let buf =
            BufferMemoryDescriptor::new(mm.clone(), BufferOptions::new(2 * PAGE, Direction::InOut))
                .unwrap();
        let pa = buf.physical_segment(0).unwrap().addr.0;
        let src = [IoSegment {
            addr: IoAddr(pa),
            len: 64,
        }];
        let dst = [IoSegment {
            addr: IoAddr(pa + PAGE),
            len: 64,
        }];
        let engine = Arc::new(SimDmaEngine::new(mm.clone(), None).unwrap());
        type Es = DmaEventSource<SimDmaEngine>;
        let me: Arc<OnceLock<Weak<Es>>> = Arc::new(OnceLock::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (me2, seen2) = (me.clone(), seen.clone());
        let es = Arc::new(DmaEventSource::new(
            engine.clone(),
            move |c: DmaCompletion| {
                seen2.lock().unwrap().push(c.ticket);
                let es = me2.get().and_then(Weak::upgrade).expect("the event source");
                // Reenter: poll (nothing more to deliver from inside a delivery), query, and
                // chain one more transfer from the first completion.
                let _ = es.poll();
                let _ = es.query_dma_command(c.ticket);
                let _ = es.is_busy();
                if seen2.lock().unwrap().len() == 1 {
                    es.start(&DmaTransfer {
                        source: &src,
                        dest: &dst,
                    })
                    .unwrap();
                }
            },
        ));
        me.set(Arc::downgrade(&es)).unwrap();
        engine.connect(es.clone());
        es.start(&DmaTransfer {
            source: &src,
            dest: &dst,
        })
        .unwrap();
        for _ in 0..100 {
            es.poll();
            if seen.lock().unwrap().len() >= 2 {
                break;
            }
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "both completions were delivered"
        );
    });
}

/// The typed-ownership wrapper with prepare ranges and sync offsets at the extremes: a
/// refused transition hands the memory back whole, and syncs outside the preparation are
/// errors.
#[test]
fn typed_ownership_at_the_extremes() {
    use dmakit::dma::{Bidirectional, CpuOwned};
    sweep(914, "typed ownership", |m, h| {
        let b = buffer(m, 2 * PAGE + 5);
        let len = b.length();
        let cmd = DmaCommand::builder(m.clone())
            .mode(MappingMode::NonCoherent)
            .build()
            .unwrap();
        let mut cpu: Option<CpuOwned<M, Bidirectional, _>> = Some(CpuOwned::new(b, cmd).unwrap());
        for off in [
            0,
            1,
            PAGE - 1,
            len - 1,
            len,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ] {
            for n in [0, 1, len - off.min(len), len, u64::MAX] {
                let c = cpu.take().expect("the CPU owns the memory");
                let label = || format!("prepare_range({off:#x}, {n:#x})");
                let r = h.probe(label, || c.prepare_range(off, n));
                let Some(r) = r else {
                    return;
                };
                match r {
                    Ok(dev) => {
                        assert!(
                            n > 0 && off.checked_add(n).is_some_and(|e| e <= len),
                            "{}",
                            label()
                        );
                        for &o in &EXTREMES {
                            for size in [0usize, 1, 8] {
                                let mut buf = vec![0u8; size];
                                h.probe(
                                    || format!("{}: sync_for_cpu({o:#x}, {size})", label()),
                                    || {
                                        let r = dev.sync_for_cpu(o, &mut buf);
                                        if r.is_ok() {
                                            assert!(o
                                                .checked_add(size as u64)
                                                .is_some_and(|e| e <= n));
                                        }
                                    },
                                );
                                h.probe(
                                    || format!("{}: sync_for_device({o:#x}, {size})", label()),
                                    || {
                                        let _ = dev.sync_for_device(o, &buf);
                                    },
                                );
                            }
                        }
                        cpu = Some(dev.complete().map_err(|f| f.error).unwrap());
                    }
                    Err(failed) => cpu = Some(failed.value),
                }
            }
        }
        let (b, _cmd) = cpu.take().unwrap().into_parts().unwrap();
        assert_eq!(b.length(), len);
    });
}

/// The simulated machine's own calls at the extremes (the platform seam every test
/// above stands on).
#[test]
fn the_simulated_machine_at_the_extremes() {
    use dmakit::platform::{CacheMode, PageRequest, PhysicalMemory};
    use dmakit_sim::{CacheMode as SimCacheMode, ScratchDevice};
    let m = machine(915);
    let before = snap(&m);
    let mut h = Hunt::default();
    let task = m.create_task();
    for &a in &EXTREMES {
        for &n in &FEW {
            for t in [Task::KERNEL, task] {
                h.probe(
                    || format!("vm_allocate({t:?}, {n:#x})"),
                    || {
                        if let Ok(va) = m.vm_allocate(t, n, a & 1 == 1) {
                            m.vm_deallocate(t, va, n).unwrap();
                        }
                    },
                );
                h.probe(
                    || format!("vm_deallocate({t:?}, {a:#x}, {n:#x})"),
                    || {
                        assert!(m.vm_deallocate(t, VirtAddr(a), n).is_err());
                    },
                );
                h.probe(
                    || format!("protect({t:?}, {a:#x}, {n:#x})"),
                    || {
                        let _ = m.protect(t, VirtAddr(a), n, false);
                    },
                );
                h.probe(
                    || format!("mappings({t:?}, {a:#x}, {n:#x})"),
                    || {
                        let _ = m.mappings(t, VirtAddr(a), n.min(1 << 20));
                    },
                );
                h.probe(
                    || format!("set_cache_mode(kernel, {a:#x}, {n:#x})"),
                    || {
                        let _ = dmakit::platform::VirtualMemory::set_cache_mode(
                            &*m,
                            t,
                            VirtAddr(a),
                            n,
                            CacheMode::Inhibit,
                        );
                    },
                );
            }
            let mut buf = [0u8; 8];
            h.probe(
                || format!("device_read({a:#x})"),
                || {
                    let _ = m.device_read(PhysAddr(a), &mut buf);
                    let _ = m.device_write(PhysAddr(a), &buf);
                },
            );
            h.probe(
                || format!("Machine::set_cache_mode({a:#x}, {n:#x})"),
                || {
                    let _ = m.set_cache_mode(PhysAddr(a), n, SimCacheMode::WriteThrough);
                    let _ = m.cache_mode(PhysAddr(a));
                },
            );
            h.probe(
                || format!("allocate_pages({n:#x}, align {a:#x})"),
                || {
                    let req = PageRequest {
                        contiguous: true,
                        align: a,
                        ..PageRequest::WIRED
                    };
                    if let Ok(va) = m.allocate_pages(n, &req) {
                        m.free_pages(va, n).unwrap();
                    }
                },
            );
            h.probe(
                || format!("free_pages({a:#x}, {n:#x})"),
                || {
                    assert!(m.free_pages(VirtAddr(a), n).is_err());
                },
            );
        }
    }
    // Devices added at the top of the address space, or overlapping RAM.
    for &a in &[0u64, 0x10_0000, 1 << 33, u64::MAX - PAGE + 1, u64::MAX] {
        for &n in &FEW {
            let dev = Arc::new(std::sync::Mutex::new(ScratchDevice::new(7, 64)));
            h.probe(
                || format!("add_mmio({a:#x}, {n:#x})"),
                || {
                    let _ = m.add_mmio(PhysAddr(a), n, dev);
                },
            );
        }
    }
    m.destroy_task(task).unwrap();
    h.probe(
        || "destroy_task twice".into(),
        || assert!(m.destroy_task(task).is_err()),
    );
    h.probe(
        || "destroy the kernel task".into(),
        || assert!(m.destroy_task(Task::KERNEL).is_err()),
    );
    h.finish("simulated machine");
    assert_no_leak(&m, &before, "simulated machine");
}

/// The free helper functions a platform or mapper implementation calls.
#[test]
fn public_helpers_at_the_extremes() {
    use dmakit::alloc::{io_alignment_to_size, io_size_to_alignment, RangeAllocator};
    use dmakit::mapper::{allocate_placed, check_run, IovaPlacement};
    use dmakit::IoAddr;
    let mut h = Hunt::default();
    for &page in &EXTREMES {
        for &a in &FEW {
            for &n in &FEW {
                let r = h.probe(
                    || format!("check_run(page {page:#x}, {a:#x}, {a:#x}, {n:#x})"),
                    || check_run("extreme run", page, IoAddr(a), PhysAddr(a), n),
                );
                if let Some(Ok(len)) = r {
                    assert!(
                        page.is_power_of_two(),
                        "check_run accepted a page of {page:#x}"
                    );
                    assert_eq!(Some(len), n.checked_mul(page));
                }
            }
        }
    }
    assert!(matches!(
        check_run("zero page", 0, IoAddr(0), PhysAddr(0), 1),
        Err(Error::BadAlignment { align: 0, .. })
    ));
    for &min in &FEW {
        for &max in &FEW {
            for &align in &[0u64, 1, 3, PAGE, 1 << 63, u64::MAX] {
                for &boundary in &[0u64, 1, 3, PAGE, 1 << 63, u64::MAX] {
                    let p = IovaPlacement::ANY
                        .window(min, max)
                        .alignment(align)
                        .boundary(boundary);
                    for &x in &FEW {
                        for &len in &FEW {
                            h.probe(
                                || format!("{p:?}: fits/lowest_in/always_fits({x:#x}, {len:#x})"),
                                || {
                                    let _ = p.fits(x, len);
                                    let _ = p.lowest_in(x, u64::MAX, len);
                                    let _ = p.always_fits(x, max, len, align);
                                    let _ = p.refusal("extreme placement", len);
                                },
                            );
                            h.probe(
                                || format!("allocate_placed({len:#x}, {p:?})"),
                                || {
                                    let mut space = RangeAllocator::new(0, 1 << 20, PAGE).unwrap();
                                    match allocate_placed(&mut space, len, &p) {
                                        Ok(at) => {
                                            assert!(p.fits(at, len), "placed at {at:#x}");
                                            space.deallocate(at, len).unwrap();
                                        }
                                        Err(Error::BadAlignment { .. }) => {
                                            let pow2 = |v: u64| v <= 1 || v.is_power_of_two();
                                            assert!(
                                                !pow2(align) || (boundary != 0 && !pow2(boundary))
                                            );
                                        }
                                        Err(_) => {}
                                    }
                                    assert_eq!(space.free_count(), 1 << 20);
                                },
                            );
                        }
                    }
                }
            }
        }
    }
    for &v in &EXTREMES {
        h.probe(
            || format!("io_size_to_alignment({v:#x})"),
            || io_size_to_alignment(v),
        );
        h.probe(
            || format!("io_alignment_to_size({})", v as u32),
            || io_alignment_to_size(v as u32),
        );
    }
    h.finish("public helpers");
}

/// Changing a command's spec to every extreme one, prepared or not, and preparing with
/// it in one step; mapping into a task that no longer exists.
#[test]
fn specs_swapped_on_live_commands_and_maps_into_dead_tasks() {
    sweep(916, "spec swaps and dead tasks", |m, h| {
        let b: Arc<dyn MemoryDescriptor> = Arc::new(buffer(m, 3 * PAGE + 1));
        let pool = Arc::new(BouncePool::new(m.clone(), "swap pool", 1 << 20));
        let mut cmd = DmaCommand::builder(m.clone())
            .bounce_pool(pool.clone())
            .build()
            .unwrap();
        cmd.set_memory_descriptor(b.clone()).unwrap();
        for (name, spec) in spec_variants()
            .into_iter()
            .filter_map(|(n, r)| r.ok().map(|s| (n, s)))
        {
            h.probe(
                || format!("set_spec({name}) unprepared"),
                || {
                    let _ = cmd.set_spec(spec);
                },
            );
            cmd.prepare(PrepareOptions::range(0, 1)).unwrap_or(());
            h.probe(
                || format!("set_spec({name}) prepared"),
                || {
                    if cmd.prepared().is_some() {
                        assert!(
                            cmd.set_spec(spec).is_err(),
                            "a spec changed under a preparation"
                        );
                    }
                },
            );
            let _ = cmd.complete();
            for opts in [
                PrepareOptions::new(),
                PrepareOptions::range(1, u64::MAX),
                PrepareOptions::range(PAGE, PAGE),
            ] {
                h.probe(
                    || format!("prepare_with_spec({name}, {opts:?})"),
                    || {
                        if cmd.prepare_with_spec(spec, opts).is_ok() {
                            let _ = cmd.clone_command().map(|c| c.spec().max_segment_size());
                            cmd.complete().unwrap();
                        }
                    },
                );
            }
            cmd.set_spec(SegmentSpec::default()).unwrap();
        }
        cmd.clear_memory_descriptor().unwrap();
        assert_eq!(pool.stats().in_use, 0);
        let task = m.create_task();
        m.destroy_task(task).unwrap();
        for opts in [
            MapOptions::new().in_task(task),
            MapOptions::new().in_task(task).range(1, 1),
        ] {
            h.probe(
                || format!("MemoryMap::new({opts:?}) into a destroyed task"),
                || {
                    assert!(MemoryMap::new(m.clone(), b.clone(), opts).is_err());
                },
            );
        }
        h.probe(
            || "GeneralMemoryDescriptor in a destroyed task".into(),
            || {
                assert!(GeneralMemoryDescriptor::with_ranges(
                    m.clone(),
                    task,
                    &[(VirtAddr(PAGE), 1), (VirtAddr(u64::MAX), 1)],
                    Direction::In
                )
                .and_then(|d| (&d as &dyn MemoryDescriptor)
                    .prepare(Direction::In)
                    .map(|p| p.complete()))
                .is_err());
            },
        );
    });
}
