//! The DMA acceptance property: random descriptors (buffer, general, sub, multi, interleaved;
//! fragmented, reaching above 4 GiB) × random valid `SegmentSpec`s × mapping modes. The
//! simulated DMA engine, fed the generated segments, must reproduce the descriptor's bytes
//! exactly in both directions; every segment must meet every constraint (checked here
//! independently of dmakit's own check); generating in random pieces must equal generating
//! at once; the ledger must record no misuse; nothing may leak.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, InterleavedMemoryDescriptor,
    MemoryDescriptor, MultiMemoryDescriptor, SubMemoryDescriptor,
};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{
    BouncePool, CompletionSource, DmaCommand, DmaController, DmaTransfer, IoSegment, MappingMode,
    SegmentFormat, SegmentSpec,
};
use dmakit::mapper::IommuMapper;
use dmakit::platform::CpuAccess;
use dmakit::{Direction, VirtAddr};
use dmakit_sim::{Machine, MachineBuilder, SimDmaEngine, SimIommu};
use proptest::prelude::*;
use std::sync::Arc;

type M = Arc<Machine>;

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8)
        .collect()
}

#[derive(Clone, Debug)]
enum Shape {
    Buffer(usize, u8),
    /// Ranges (gap before, length) of one task allocation.
    General(Vec<(u16, u16)>, u8),
    Sub(Box<Shape>, u16, u16),
    Multi(Vec<Shape>),
    Interleaved(Vec<(Shape, u16, u16)>),
}

fn shape() -> impl Strategy<Value = Shape> {
    let leaf = prop_oneof![
        (1usize..12_000, any::<u8>()).prop_map(|(n, s)| Shape::Buffer(n, s)),
        (
            prop::collection::vec((0u16..5000, 1u16..9000), 1..4),
            any::<u8>()
        )
            .prop_map(|(r, s)| Shape::General(r, s)),
    ];
    leaf.prop_recursive(2, 6, 3, |inner| {
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
fn build(m: &M, s: &Shape) -> (Arc<dyn MemoryDescriptor>, Vec<u8>) {
    match s {
        Shape::Buffer(n, salt) => {
            let bytes = pattern(*n, *salt);
            let b = BufferMemoryDescriptor::with_bytes(m.clone(), &bytes, Direction::InOut)
                .expect("buffer");
            (Arc::new(b), bytes)
        }
        Shape::General(ranges, salt) => {
            let total: u64 = ranges.iter().map(|&(g, l)| g as u64 + l as u64).sum();
            let task = m.create_task();
            let va = m
                .vm_allocate(task, total.div_ceil(4096) * 4096, true)
                .expect("task memory");
            let mut at = va.0;
            let mut rs = Vec::new();
            let mut bytes = Vec::new();
            for (i, &(gap, len)) in ranges.iter().enumerate() {
                at += gap as u64;
                let data = pattern(len as usize, salt.wrapping_add(i as u8));
                m.write_virt(task, VirtAddr(at), &data).expect("fill");
                rs.push((VirtAddr(at), len as u64));
                bytes.extend(data);
                at += len as u64;
            }
            let g = GeneralMemoryDescriptor::with_ranges(m.clone(), task, &rs, Direction::InOut)
                .expect("general");
            (Arc::new(g), bytes)
        }
        Shape::Sub(inner, a, b) => {
            let (p, bytes) = build(m, inner);
            let off = *a as usize % bytes.len();
            let len = 1 + *b as usize % (bytes.len() - off);
            let sub =
                SubMemoryDescriptor::new(p, off as u64, len as u64, Direction::InOut).expect("sub");
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
            let multi = MultiMemoryDescriptor::new(mds, Direction::InOut).expect("multi");
            (Arc::new(multi), bytes)
        }
        Shape::Interleaved(parts) => {
            let mut il = InterleavedMemoryDescriptor::with_capacity(parts.len(), Direction::InOut);
            let mut bytes = Vec::new();
            for (p, a, b) in parts {
                let (md, pb) = build(m, p);
                let off = *a as usize % pb.len();
                let len = 1 + *b as usize % (pb.len() - off);
                il.set_memory_descriptor(md, off as u64, len as u64)
                    .expect("portion");
                bytes.extend_from_slice(&pb[off..off + len]);
            }
            (Arc::new(il), bytes)
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct SpecChoice {
    bits: u32,
    max_segment: u64,
    alignment: u64,
    length_alignment: u64,
    internal_alignment: u64,
    boundary: u64,
    offset_bits: u32,
    max_segments: u32,
}

fn spec_choice() -> impl Strategy<Value = SpecChoice> {
    (
        prop::sample::select(vec![32u32, 36, 64]),
        prop::sample::select(vec![0u64, 512, 4096, 8192, 65536]),
        prop::sample::select(vec![1u64, 2, 8, 64, 4096]),
        prop::sample::select(vec![1u64, 2, 4]),
        prop::sample::select(vec![1u64, 8, 512, 4096]),
        prop::sample::select(vec![0u64, 4096, 65536]),
        prop::sample::select(vec![0u32, 12]),
        prop::sample::select(vec![0u32, 8, 4096]),
    )
        .prop_map(|(bits, ms, a, la, ia, b, ob, mx)| SpecChoice {
            bits,
            max_segment: ms,
            alignment: a,
            length_alignment: la,
            internal_alignment: ia,
            boundary: b,
            offset_bits: ob,
            max_segments: mx,
        })
}

/// A valid spec from the choice: sizes the spec would refuse are raised to what it accepts.
fn make_spec(c: SpecChoice) -> SegmentSpec {
    let cut = c.internal_alignment.max(c.length_alignment);
    let mut b = SegmentSpec::builder()
        .address_bits(c.bits)
        .alignment(c.alignment)
        .length_alignment(c.length_alignment)
        .internal_alignment(c.internal_alignment)
        .offset_bits(c.offset_bits);
    if c.max_segment != 0 {
        b = b.max_segment_size(c.max_segment.max(cut));
    }
    if c.boundary != 0 {
        b = b.boundary(c.boundary.max(cut));
    }
    if c.max_segments != 0 {
        b = b.max_segments(c.max_segments);
    }
    b.build().expect("a valid spec")
}

/// Checks `segs` against `spec` for a transfer of `length` bytes, independently of dmakit.
fn check_segments(spec: &SegmentSpec, segs: &[IoSegment], length: u64) -> Result<(), String> {
    let total: u64 = segs.iter().map(|s| s.len).sum();
    if total != length {
        return Err(format!("segments describe {total} bytes, not {length}"));
    }
    if segs.len() as u64 > spec.max_segments() as u64 {
        return Err(format!(
            "{} segments > max {}",
            segs.len(),
            spec.max_segments()
        ));
    }
    for (i, s) in segs.iter().enumerate() {
        let (a, l) = (s.addr.0, s.len);
        let last = i + 1 == segs.len();
        let why = if l == 0 {
            Some("empty")
        } else if a < spec.min_address() || a + (l - 1) > spec.max_address() {
            Some("outside the address window")
        } else if l > spec.max_segment_size() {
            Some("longer than max_segment_size")
        } else if i == 0 && a % spec.alignment() != 0 {
            Some("first start misaligned")
        } else if i > 0 && a % spec.internal_alignment() != 0 {
            Some("inner start misaligned")
        } else if !last && l % spec.length_alignment() != 0 {
            Some("length misaligned")
        } else if !last && (a + l) % spec.internal_alignment() != 0 {
            Some("inner end misaligned")
        } else if spec.boundary() != 0 && a / spec.boundary() != (a + l - 1) / spec.boundary() {
            Some("crosses a boundary")
        } else {
            None
        };
        if let Some(w) = why {
            return Err(format!("segment {i} {s:?}: {w} (spec {spec:?})"));
        }
    }
    Ok(())
}

fn all_segments(cmd: &DmaCommand<M>) -> Vec<IoSegment> {
    let f = cmd.format();
    let mut out = vec![0u8; 8192 * f.element_size()];
    let mut off = 0;
    let mut segs = Vec::new();
    let length = cmd.prepared().expect("prepared").1;
    while off < length {
        let n = cmd.gen_segments(&mut off, &mut out).expect("gen");
        assert!(n >= 1);
        segs.extend((0..n).map(|i| f.read(&out, i).unwrap()));
    }
    // Past the end: Overrun, and the offset stays.
    let e = cmd.gen_segments(&mut off, &mut out).unwrap_err();
    assert_eq!(e.io_return(), dmakit::IoReturn::OVERRUN);
    assert_eq!(off, length);
    // The decoding iterator gives the same segments.
    let decoded: Vec<IoSegment> = cmd.segments().collect::<Result<_, _>>().expect("segments");
    assert_eq!(decoded, segs);
    segs
}

fn pieces(cmd: &DmaCommand<M>, sizes: &[usize]) -> Vec<IoSegment> {
    let f = cmd.format();
    let mut out = vec![0u8; 16 * f.element_size()];
    let mut off = 0;
    let mut segs = Vec::new();
    let length = cmd.prepared().expect("prepared").1;
    for i in 0.. {
        if off >= length {
            break;
        }
        let max = sizes[i % sizes.len()];
        let n = cmd
            .gen_segments(&mut off, &mut out[..max * f.element_size()])
            .expect("gen piece");
        assert!(n >= 1 && n <= max);
        segs.extend((0..n).map(|i| f.read(&out, i).unwrap()));
    }
    segs
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Bypassed,
    NonCoherent,
    Mapped,
}

struct Rig {
    m: M,
    pool: Arc<BouncePool<M>>,
    mapper: Option<Arc<IommuMapper<Arc<SimIommu>>>>,
    engine: SimDmaEngine,
    mode: Mode,
}

impl Rig {
    fn new(seed: u64, mode: Mode) -> Rig {
        let m: M = Arc::new(
            MachineBuilder::new()
                .ram(0x10_0000, 0x80_0000)
                .ram(0x1_0000_0000, 0x100_0000)
                .seed(seed)
                .fragmentation(0.7)
                .coherent(!matches!(mode, Mode::NonCoherent))
                .build()
                .unwrap(),
        );
        let pool = Arc::new(BouncePool::new(m.clone(), "property pool", 4 << 20));
        let (mapper, iommu) = match mode {
            Mode::Mapped => {
                let iommu = Arc::new(SimIommu::new(m.clone()));
                let mapper = IommuMapper::new(iommu.clone(), 0x4000_0000, 0x1000_0000).unwrap();
                (Some(Arc::new(mapper)), Some(iommu))
            }
            _ => (None, None),
        };
        let engine = SimDmaEngine::new(m.clone(), iommu).expect("engine");
        engine.set_fifo_depth(256).expect("a full ring");
        Rig {
            m,
            pool,
            mapper,
            engine,
            mode,
        }
    }

    fn mapping(&self) -> MappingMode {
        match self.mode {
            Mode::Bypassed => MappingMode::Bypassed,
            Mode::NonCoherent => MappingMode::NonCoherent,
            Mode::Mapped => MappingMode::Mapped(self.mapper.clone().unwrap()),
        }
    }

    fn command(&self, spec: SegmentSpec, md: Arc<dyn MemoryDescriptor>) -> DmaCommand<M> {
        let format = if spec.max_address() <= u32::MAX as u64 {
            SegmentFormat::Little32
        } else {
            SegmentFormat::Big64
        };
        let mut c = DmaCommand::builder(self.m.clone())
            .spec(spec)
            .format(format)
            .mode(self.mapping())
            .bounce_pool(self.pool.clone())
            .build()
            .unwrap();
        c.set_memory_descriptor(md).unwrap();
        c
    }

    /// The engine copies `source` to `dest`; the transfer must complete without error.
    fn copy(&self, source: &[IoSegment], dest: &[IoSegment]) -> Result<(), String> {
        self.engine
            .start(&DmaTransfer { source, dest })
            .map_err(|e| format!("start: {e}"))?;
        let mut done = Vec::new();
        self.engine.take_completions(&mut |c| done.push(c));
        match done.as_slice() {
            [c] if c.status.is_ok() => Ok(()),
            other => Err(format!("engine completions: {other:?}")),
        }
    }
}

fn run_case(
    s: &Shape,
    choice: SpecChoice,
    mode: Mode,
    seed: u64,
    span: (u32, u32),
    sizes: &[usize],
    force: bool,
) -> Result<(), TestCaseError> {
    let rig = Rig::new(seed, mode);
    let spec = make_spec(choice);
    let (md, mut oracle) = build(&rig.m, s);
    let len = oracle.len() as u64;
    let offset = span.0 as u64 % len;
    let la = spec.length_alignment();
    let length = (1 + span.1 as u64 % (len - offset)) / la * la;
    prop_assume!(length > 0);
    rig.pool.set_force_bounce(force);

    let scratch: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::new(rig.m.clone(), BufferOptions::new(length, Direction::InOut))
            .unwrap(),
    );
    let mut cmd = rig.command(spec, md.clone());
    let mut scmd = rig.command(SegmentSpec::default(), scratch.clone());

    // Device reads: descriptor -> scratch.
    if let Err(e) = cmd.prepare(PrepareOptions::range(offset, length)) {
        // The one refusal a valid spec may meet: too few segments allowed, even bounced.
        prop_assert!(
            matches!(e, dmakit::Error::NoSpace { .. }) && spec.max_segments() < 4096,
            "prepare failed: {e} (spec {spec:?}, mode {mode:?})"
        );
        return Ok(());
    }
    rig.pool.set_force_bounce(false);
    scmd.prepare(PrepareOptions::range(0, length)).unwrap();
    let at_once = all_segments(&cmd);
    check_segments(&spec, &at_once, length).map_err(TestCaseError::fail)?;
    prop_assert_eq!(&pieces(&cmd, sizes), &at_once, "pieces equal at once");
    rig.copy(&at_once, &all_segments(&scmd))
        .map_err(TestCaseError::fail)?;
    scmd.complete().unwrap();
    cmd.complete().unwrap();
    let mut got = vec![0u8; length as usize];
    prop_assert_eq!(scratch.read_bytes(0, &mut got), length as usize);
    prop_assert!(
        got[..] == oracle[offset as usize..(offset + length) as usize],
        "the device read the descriptor's bytes (mode {:?}, bounced route)",
        mode
    );

    // Device writes: scratch -> descriptor.
    let fresh = pattern(length as usize, 0xA5);
    assert_eq!(scratch.write_bytes(0, &fresh), fresh.len());
    rig.pool.set_force_bounce(force);
    cmd.prepare(PrepareOptions::range(offset, length)).unwrap();
    rig.pool.set_force_bounce(false);
    scmd.prepare(PrepareOptions::range(0, length)).unwrap();
    let segs = all_segments(&cmd);
    check_segments(&spec, &segs, length).map_err(TestCaseError::fail)?;
    if !cmd.is_bounced() {
        prop_assert_eq!(
            &segs,
            &at_once,
            "the same direct preparation gives the same segments"
        );
    }
    rig.copy(&all_segments(&scmd), &segs)
        .map_err(TestCaseError::fail)?;
    scmd.complete().unwrap();
    cmd.complete().unwrap();
    oracle[offset as usize..(offset + length) as usize].copy_from_slice(&fresh);
    let mut all = vec![0u8; len as usize];
    prop_assert_eq!(md.read_bytes(0, &mut all), len as usize);
    prop_assert!(all == oracle, "the device wrote exactly the prepared bytes");

    prop_assert!(
        dmakit::debug::violations_of(cmd.debug_id()).is_empty(),
        "{:?}",
        dmakit::debug::violations_of(cmd.debug_id())
    );
    prop_assert_eq!(rig.pool.stats().in_use, 0);
    drop((cmd, scmd, md, scratch));
    let Rig {
        m, mapper, engine, ..
    } = rig;
    drop(engine);
    for t in m.tasks() {
        if t != dmakit::Task::KERNEL {
            m.destroy_task(t).expect("no wiring left on task memory");
        }
    }
    prop_assert_eq!(m.stats().allocations, 0, "everything freed");
    if let Some(mapper) = &mapper {
        mapper.flush().unwrap();
        prop_assert_eq!(mapper.usage().0, 0, "no IO space left allocated");
    }
    Ok(())
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        3 => Just(Mode::Bypassed),
        1 => Just(Mode::NonCoherent),
        2 => Just(Mode::Mapped),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 2_000 }, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_reproduces_every_descriptor_under_every_spec(
        s in shape(),
        choice in spec_choice(),
        mode in mode(),
        seed in 0u64..8,
        span in (any::<u32>(), any::<u32>()),
        sizes in prop::collection::vec(1usize..6, 1..4),
        force in prop::bool::weighted(0.15),
    ) {
        run_case(&s, choice, mode, seed, span, &sizes, force)?;
    }
}
