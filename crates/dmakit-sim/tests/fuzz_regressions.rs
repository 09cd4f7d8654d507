//! Inputs the fuzz targets (`fuzz/`) found to break the simulator, each pinned down here
//! with the behaviour it must have.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{
    CompletionSource, DmaCommand, DmaController, DmaTransfer, IoSegment, MappingMode,
    PrepareOptions,
};
use dmakit::mapper::IommuMapper;
use dmakit::Direction;
use dmakit_sim::{Machine, MachineBuilder, SimDmaEngine, SimIommu};
use std::sync::Arc;

type M = Arc<Machine>;

fn mapped(
    m: &M,
    mapper: &Arc<IommuMapper<Arc<SimIommu>>>,
    md: Arc<dyn MemoryDescriptor>,
) -> DmaCommand<M> {
    let mut c = DmaCommand::builder(m.clone())
        .mode(MappingMode::Mapped(mapper.clone()))
        .build()
        .unwrap();
    c.set_memory_descriptor(md).unwrap();
    c.prepare(PrepareOptions::new()).unwrap();
    c
}

/// The DMA engine refused a segment whose last byte is the last IO address (an IOMMU
/// window ending at 2^64) as an overflow: only the inclusive end must fit.
#[test]
fn the_engine_moves_segments_that_end_at_the_top_of_the_address_space() {
    let m: M = Arc::new(MachineBuilder::new().seed(3).build().unwrap());
    let iommu = Arc::new(SimIommu::new(m.clone()));
    // Smaller under Miri: only the top page matters.
    let size = if cfg!(miri) { 0x4000u64 } else { 0x10_0000 };
    let window = 0x20_0000u64;
    let mapper =
        Arc::new(IommuMapper::new(iommu.clone(), 0u64.wrapping_sub(window), window).unwrap());
    let engine = SimDmaEngine::new(m.clone(), Some(iommu)).unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
    let src: Arc<dyn MemoryDescriptor> =
        Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::InOut).unwrap());
    let dst: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(4096, Direction::InOut)).unwrap(),
    );
    // The first allocation goes to the top of the window: its last page is 2^64's.
    let mut s = mapped(&m, &mapper, src.clone());
    let segs: Vec<IoSegment> = s.segments().collect::<Result<_, _>>().unwrap();
    let top = *segs.last().unwrap();
    assert_eq!(top.addr.0.checked_add(top.len - 1), Some(u64::MAX));
    let last = IoSegment {
        addr: dmakit::IoAddr(u64::MAX - 4095),
        len: 4096,
    };
    let mut d = mapped(&m, &mapper, dst.clone());
    let dsegs: Vec<IoSegment> = d.segments().collect::<Result<_, _>>().unwrap();
    engine
        .start(&DmaTransfer {
            source: &[last],
            dest: &dsegs,
        })
        .expect("a segment ending at 2^64 is a valid transfer");
    let mut done = Vec::new();
    engine.take_completions(&mut |c| done.push(c));
    assert!(
        matches!(done.as_slice(), [c] if c.status.is_ok()),
        "{done:?}"
    );
    d.complete().unwrap();
    s.complete().unwrap();
    let mut got = vec![0u8; 4096];
    assert_eq!(dst.read_bytes(0, &mut got), 4096);
    assert_eq!(got[..], data[data.len() - 4096..]);
}

/// Checking a segment that ends at 2^64 against an internal alignment or a boundary
/// overflowed (`addr + len`) instead of treating the end as 2^64.
#[test]
fn segments_ending_at_the_top_of_the_address_space_are_checked_without_overflow() {
    use dmakit::dma::SegmentSpec;
    let m: M = Arc::new(MachineBuilder::new().seed(5).build().unwrap());
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let window = 0x10_0000u64;
    let mapper = Arc::new(IommuMapper::new(iommu, 0u64.wrapping_sub(window), window).unwrap());
    let spec = SegmentSpec::builder()
        .max_segment_size(1024)
        .internal_alignment(512)
        .boundary(0x4_0000)
        .build()
        .unwrap();
    let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
    let md: Arc<dyn MemoryDescriptor> =
        Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::InOut).unwrap());
    let mut c = DmaCommand::builder(m.clone())
        .spec(spec)
        .mode(MappingMode::Mapped(mapper.clone()))
        .build()
        .unwrap();
    c.set_memory_descriptor(md).unwrap();
    c.prepare(PrepareOptions::new()).unwrap();
    let segs: Vec<IoSegment> = c.segments().collect::<Result<_, _>>().unwrap();
    let last = *segs.last().unwrap();
    assert_eq!(
        last.addr.0 + (last.len - 1),
        u64::MAX,
        "the transfer ends at 2^64"
    );
    assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), 8192);
    assert!(segs.iter().all(|s| s.len <= 1024));
    c.complete().unwrap();
}
