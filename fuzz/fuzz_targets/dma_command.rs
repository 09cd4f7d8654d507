//! `DmaCommand` with arbitrary `SegmentSpec`s (address bits and windows, segment and
//! transfer sizes, alignments, boundaries, segment counts), every segment format, and
//! every mapping mode (bypass, non-coherent, iterate-only, an IOMMU window anywhere up to
//! one ending at 2^64), over nested descriptors:
//!
//! * every generated segment meets every constraint (an independent checker);
//! * generating in pieces gives the same list as generating at once;
//! * the simulated DMA engine, fed the segments, reads exactly the descriptor's bytes and
//!   writes exactly the prepared range;
//! * a failed prepare holds nothing; after `complete` the bounce pool holds nothing, and a
//!   command dropped while prepared waits in the quarantine until the device is quiesced;
//! * with the IOMMU refusing page-table entries or invalidations during the first prepare
//!   (a run of calls each), a failed prepare holds nothing, unless the IOMMU also refused
//!   to undo its mapping, twice: then the device's quarantine holds the preparation
//!   (memory wired, IO range allocated) until the IOMMU answers again;
//! * at the end no IO space, allocation or wired page is left.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{
    BouncePool, CompletionSource, DmaCommand, DmaController, DmaTransfer, IoSegment, MappingMode,
    PrepareOptions, Quarantine, SegmentFormat, SegmentSpec,
};
use dmakit::mapper::IommuMapper;
use dmakit::{Direction, Error};
use dmakit_fuzz::num::{small_pow2, Num};
use dmakit_fuzz::segments::{all_segments, check_segments, pieces};
use dmakit_fuzz::shapes::{assert_nothing_left, build, machine, pattern, Shape, M};
use dmakit_sim::{IommuFaultSite, SimDmaEngine, SimIommu};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const FORMATS: [SegmentFormat; 6] = [
    SegmentFormat::Host32,
    SegmentFormat::Big32,
    SegmentFormat::Little32,
    SegmentFormat::Host64,
    SegmentFormat::Big64,
    SegmentFormat::Little64,
];

#[derive(Debug)]
enum Mode {
    Bypassed,
    NonCoherent,
    IterateOnly,
    /// An IOMMU window `[base, base + size)` (page aligned).
    Mapped(u64, u64),
}

#[derive(Debug)]
struct Input {
    seed: u8,
    shape: Shape,
    spec: SegmentSpec,
    format: SegmentFormat,
    mode: Mode,
    span: (u32, u32),
    sizes: Vec<u8>,
    force_bounce: bool,
    drop_prepared: bool,
    /// IOMMU page-table entry and invalidation failures armed for the first prepare, each
    /// `(first call from now, how many in a row)`.
    faults: [Option<(u64, u64)>; 2],
}

/// A run of failing IOMMU calls: none for 0, else from call `v % 16` on, `v / 16 % 3 + 1`
/// calls in a row.
fn fault_run(v: u8) -> Option<(u64, u64)> {
    (v != 0).then(|| (u64::from(v % 16).max(1), u64::from(v / 16 % 3) + 1))
}

fn spec(u: &mut Unstructured<'_>) -> Result<Option<SegmentSpec>> {
    let mut b = SegmentSpec::builder();
    match u.int_in_range(0u8..=3)? {
        0 => {}
        1 => b = b.address_bits(*u.choose(&[32, 36, 40, 48, 64])?),
        2 => b = b.address_bits(u.int_in_range(0..=70)?),
        _ => {
            let (lo, hi): (Num, Num) = (u.arbitrary()?, u.arbitrary()?);
            b = b.window(lo.0.min(1 << 40), hi.0);
        }
    }
    if u.arbitrary()? {
        b = b.max_segment_size(match u.int_in_range(0u8..=3)? {
            0 => u.arbitrary::<Num>()?.0,
            _ => 1u64 << u.int_in_range(6..=20)?,
        });
    }
    if u.ratio(1, 4)? {
        b = b.max_transfer_size(u.arbitrary::<Num>()?.0);
    }
    if u.ratio(1, 3)? {
        b = b.max_segments(u.int_in_range(0..=40)?);
    }
    b = b.alignment(small_pow2(u, 12)?);
    b = b.length_alignment(small_pow2(u, 4)?);
    if u.arbitrary()? {
        b = b.internal_alignment(small_pow2(u, 12)?);
    }
    if u.ratio(1, 4)? {
        b = b.boundary(1u64 << u.int_in_range(8..=20)?);
    }
    if u.ratio(1, 4)? {
        b = b.offset_bits(*u.choose(&[0, 9, 12, 64])?);
    }
    // A spec the builder refuses is a documented error, not a finding.
    Ok(b.build().ok())
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let seed = u.arbitrary()?;
        let shape = Shape::draw(u, 2)?;
        let Some(spec) = spec(u)? else {
            return Err(arbitrary::Error::IncorrectFormat);
        };
        let format = *u.choose(&FORMATS)?;
        let mode = match u.int_in_range(0u8..=5)? {
            0 => Mode::Bypassed,
            1 => Mode::NonCoherent,
            2 => Mode::IterateOnly,
            3 => Mode::Mapped(0x4000_0000, 0x1000_0000),
            4 => {
                let size = (u.int_in_range(0x100u64..=0x10_0000)?) << 12;
                Mode::Mapped(0u64.wrapping_sub(size), size)
            }
            _ => Mode::Mapped(
                u.arbitrary::<Num>()?.0 & !0xFFF,
                (u.int_in_range(0x40u64..=0x10_0000)?) << 12,
            ),
        };
        Ok(Input {
            seed,
            shape,
            spec,
            format,
            mode,
            span: u.arbitrary()?,
            sizes: u.arbitrary()?,
            force_bounce: u.ratio(1, 6)?,
            drop_prepared: u.ratio(1, 6)?,
            faults: [fault_run(u.arbitrary()?), fault_run(u.arbitrary()?)],
        })
    }
}

struct Rig {
    m: M,
    pool: Arc<BouncePool<M>>,
    mapper: Option<Arc<IommuMapper<Arc<SimIommu>>>>,
    iommu: Option<Arc<SimIommu>>,
    engine: SimDmaEngine,
    quarantine: Arc<Quarantine>,
}

impl Rig {
    fn new(input: &Input) -> Option<Rig> {
        let coherent = !matches!(input.mode, Mode::NonCoherent);
        let m = machine(input.seed as u64, coherent);
        let pool = Arc::new(BouncePool::new(m.clone(), "fuzz pool", 4 << 20));
        let (mapper, iommu) = match input.mode {
            Mode::Mapped(base, size) => {
                // Inside 2^64, and clear of the engine's own ring windows.
                let ring = u128::from(dmakit_sim::dma_engine::RING_IOVA_BASE);
                let rings =
                    ring + (1u128 << 20) * u128::from(dmakit_sim::dma_engine::RING_IO_WINDOW);
                let end = u128::from(base) + u128::from(size);
                if end > 1u128 << 64 || (end > ring && u128::from(base) < rings) {
                    return None;
                }
                let iommu = Arc::new(SimIommu::new(m.clone()));
                let mapper = IommuMapper::new(iommu.clone(), base, size).expect("IO window");
                (Some(Arc::new(mapper)), Some(iommu))
            }
            _ => (None, None),
        };
        let engine = SimDmaEngine::new(m.clone(), iommu.clone()).expect("engine");
        engine.set_fifo_depth(256).expect("a full ring");
        Some(Rig {
            m,
            pool,
            mapper,
            iommu,
            engine,
            quarantine: Quarantine::new("fuzz device"),
        })
    }

    fn mode(&self, mode: &Mode) -> MappingMode {
        match mode {
            Mode::Bypassed => MappingMode::Bypassed,
            Mode::NonCoherent => MappingMode::NonCoherent,
            Mode::IterateOnly => MappingMode::IterateOnly,
            Mode::Mapped(..) => MappingMode::Mapped(self.mapper.clone().expect("mapper")),
        }
    }

    fn command(
        &self,
        spec: SegmentSpec,
        format: SegmentFormat,
        mode: MappingMode,
    ) -> dmakit::Result<DmaCommand<M>> {
        DmaCommand::builder(self.m.clone())
            .spec(spec)
            .format(format)
            .mode(mode)
            .bounce_pool(self.pool.clone())
            .quarantine(self.quarantine.clone())
            .build()
    }

    /// The engine copies `source` to `dest`; `false` when the transfer needs more ring
    /// descriptors than the engine has (not a finding).
    fn copy(&self, source: &[IoSegment], dest: &[IoSegment]) -> bool {
        if source.len() + dest.len() > 256 {
            return false;
        }
        self.engine
            .start(&DmaTransfer { source, dest })
            .unwrap_or_else(|e| panic!("engine start: {e} ({source:?} -> {dest:?})"));
        let mut done = Vec::new();
        self.engine.take_completions(&mut |c| done.push(c));
        match done.as_slice() {
            [c] if c.status.is_ok() => true,
            other => panic!("engine completions: {other:?}"),
        }
    }

    /// Arms `faults` (page-table entries, invalidations) on the IOMMU, if there is one.
    fn arm(&self, faults: &[Option<(u64, u64)>; 2]) {
        let Some(iommu) = &self.iommu else { return };
        for (site, run) in [IommuFaultSite::Entry, IommuFaultSite::Invalidate]
            .into_iter()
            .zip(faults)
        {
            if let Some((first, n)) = *run {
                let now = iommu.calls(site);
                (0..n).for_each(|k| iommu.inject(site, now + first + k));
            }
        }
    }

    /// Forgets the IOMMU failures that have not happened.
    fn disarm(&self) {
        if let Some(iommu) = &self.iommu {
            iommu.clear_faults();
        }
    }

    /// Bounce bytes in use, live IO allocations, wired pages.
    fn held(&self) -> (u64, usize, u64) {
        let io = self.mapper.as_ref().map_or(0, |mp| {
            mp.flush().expect("flush");
            mp.usage().0
        });
        (self.pool.stats().in_use, io, self.m.stats().wired_pages)
    }
}

fn run(input: &Input) {
    let Some(rig) = Rig::new(input) else {
        return;
    };
    {
        let Some(built) = build(&rig.m, &input.shape) else {
            return;
        };
        let md = built.md.clone();
        let mut oracle = built.bytes;
        drop(built.buffer);
        let len = oracle.len() as u64;
        let offset = input.span.0 as u64 % len;
        let length = 1 + input.span.1 as u64 % (len - offset);
        let Ok(mut cmd) = rig.command(input.spec, input.format, rig.mode(&input.mode)) else {
            return;
        };
        cmd.set_memory_descriptor(md.clone()).expect("attach");
        let scratch: Arc<dyn MemoryDescriptor> = Arc::new(
            BufferMemoryDescriptor::new(
                rig.m.clone(),
                BufferOptions::new(length, Direction::InOut),
            )
            .expect("scratch"),
        );
        let mut scmd = rig
            .command(
                SegmentSpec::default(),
                SegmentFormat::Host64,
                rig.mode(&input.mode),
            )
            .expect("scratch command");
        scmd.set_memory_descriptor(scratch.clone()).expect("attach");

        // Device reads: descriptor -> scratch.
        let idle = rig.held();
        rig.pool.set_force_bounce(input.force_bounce);
        rig.arm(&input.faults);
        let prepared = cmd.prepare(PrepareOptions::range(offset, length));
        rig.disarm();
        rig.pool.set_force_bounce(false);
        if let Err(e) = prepared {
            assert_eq!(cmd.prepare_count(), 0, "a failed prepare counts");
            if rig.quarantine.live() == 1 {
                // Kept, as the device may still reach it: only when the IOMMU refused to
                // undo a mapping (one that failed, one that had to give way to a bounce
                // buffer, or one of a prepare that failed later) and then to free it again.
                assert!(
                    rig.iommu.is_some() && input.faults.iter().any(Option::is_some),
                    "kept after {e} with a healthy IOMMU"
                );
                assert_eq!(rig.quarantine.held(), 1);
                assert_ne!(rig.held(), idle, "a kept preparation holds nothing");
                assert_eq!(rig.quarantine.quiesced(), Ok(1));
            }
            assert_eq!(rig.held(), idle, "a failed prepare holds something ({e})");
        } else {
            let (o, l) = cmd.prepared().expect("prepared");
            assert_eq!((o, l), (offset, length));
            let segs = all_segments(&cmd);
            if let Err(e) = check_segments(&input.spec, &segs, length) {
                panic!("{e} (format {:?}, mode {:?})", input.format, input.mode);
            }
            assert_eq!(pieces(&cmd, &input.sizes), segs, "pieces equal the whole");
            if input.format.is_32() {
                assert!(segs.iter().all(|s| s.addr.0 <= u32::MAX as u64));
            }
            // Both commands share the IO window: beside the command's mapping (placed by
            // the spec's alignment and boundary) the scratch may not fit even when the free
            // total is enough. That is the allocator's right answer, not a finding.
            let copied = match scmd.prepare(PrepareOptions::range(0, length)) {
                Ok(()) => {
                    let copied = rig.copy(&segs, &all_segments(&scmd));
                    scmd.complete().expect("complete scratch");
                    copied
                }
                Err(Error::NoSpace { .. }) if rig.mapper.is_some() => false,
                Err(e) => panic!("scratch: {e}"),
            };
            cmd.complete().expect("complete");
            if copied {
                let mut got = vec![0u8; length as usize];
                assert_eq!(scratch.read_bytes(0, &mut got), length as usize);
                let (a, b) = (offset as usize, (offset + length) as usize);
                assert!(got == oracle[a..b], "the device read other bytes");

                // Device writes: scratch -> descriptor.
                let fresh = pattern(length as usize, 0xA5);
                assert_eq!(scratch.write_bytes(0, &fresh), fresh.len());
                rig.pool.set_force_bounce(input.force_bounce);
                let again = cmd.prepare(PrepareOptions::range(offset, length));
                rig.pool.set_force_bounce(false);
                again.unwrap_or_else(|e| panic!("a prepare that succeeded before failed: {e}"));
                scmd.prepare(PrepareOptions::range(0, length))
                    .expect("scratch");
                let segs = all_segments(&cmd);
                check_segments(&input.spec, &segs, length).expect("segments");
                // The second preparation may lie elsewhere (other bounce pages, other IO
                // addresses), so it may need more ring descriptors than the first did.
                let wrote = rig.copy(&all_segments(&scmd), &segs);
                scmd.complete().expect("complete scratch");
                cmd.complete().expect("complete");
                if wrote {
                    oracle[a..b].copy_from_slice(&fresh);
                }
                let mut all = vec![0u8; len as usize];
                assert_eq!(md.read_bytes(0, &mut all), len as usize);
                assert!(all == oracle, "the device wrote other bytes");
            }
            assert_eq!(
                rig.pool.stats().in_use,
                0,
                "bounce memory held after complete"
            );
            if input.drop_prepared {
                let again = cmd.prepare(PrepareOptions::range(offset, length));
                again.unwrap_or_else(|e| panic!("a prepare that succeeded before failed: {e}"));
                drop(cmd);
                assert_eq!(rig.quarantine.held(), 1, "the dropped preparation waits");
                assert_eq!(rig.quarantine.quiesced(), Ok(1));
            }
        }
        assert_eq!(rig.quarantine.held(), 0);
        assert_eq!(rig.quarantine.live(), 0, "preparations outstanding");
    }
    let (bounce, io, _) = rig.held();
    assert_eq!((bounce, io), (0, 0), "bounce memory or IO space left");
    let Rig { m, engine, .. } = rig;
    drop(engine);
    assert_nothing_left(&m);
}

fuzz_target!(|input: Input| run(&input));
