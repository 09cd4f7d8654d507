//! The IOMemoryCursor family on the simulated machine.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, MemoryDescriptor,
    MultiMemoryDescriptor,
};
use dmakit::dma::{BigMemoryCursor, LittleMemoryCursor, NaturalMemoryCursor, PhysicalSegment};
use dmakit::{Direction, Error, PhysAddr};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

fn machine() -> Arc<Machine> {
    Arc::new(
        MachineBuilder::new()
            .seed(4)
            .fragmentation(0.8)
            .build()
            .unwrap(),
    )
}

fn phys(m: &Arc<Machine>, ranges: &[(u64, u64)]) -> GeneralMemoryDescriptor<Arc<Machine>> {
    let r: Vec<(PhysAddr, u64)> = ranges.iter().map(|&(a, l)| (PhysAddr(a), l)).collect();
    GeneralMemoryDescriptor::with_physical_ranges(m.clone(), &r, Direction::Out).unwrap()
}

const KNOWN: [(u64, u64); 3] = [(0x10_0000, 0x1000), (0x10_1000, 0x800), (0x20_0000, 0x300)];

#[test]
fn big_little_and_natural_bytes_for_a_known_list() {
    let m = machine();
    let md = phys(&m, &KNOWN);
    let mut out = [0u8; 64];
    let r = BigMemoryCursor::new(0, 0, 1)
        .unwrap()
        .gen_physical_segments(&md, 0, &mut out, 4, 0)
        .unwrap();
    assert_eq!((r.count, r.bytes), (2, 0x1b00));
    assert_eq!(
        out[..32],
        [
            0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x18, 0, // 0x100000, 0x1800
            0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, // 0x200000, 0x300
        ]
    );
    let r = LittleMemoryCursor::new(0, 0, 1)
        .unwrap()
        .gen_physical_segments(&md, 0, &mut out, 4, 0)
        .unwrap();
    assert_eq!(r.count, 2);
    assert_eq!(
        out[..16],
        [0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0x18, 0, 0, 0, 0, 0, 0]
    );
    let r = NaturalMemoryCursor::new(0, 0, 1)
        .unwrap()
        .gen_physical_segments(&md, 0, &mut out, 4, 0)
        .unwrap();
    assert_eq!(r.count, 2);
    assert_eq!(out[16..24], 0x20_0000u64.to_ne_bytes());
    assert_eq!(out[24..32], 0x300u64.to_ne_bytes());
}

#[test]
fn segment_count_size_and_transfer_limits() {
    let m = machine();
    let md = phys(&m, &KNOWN);
    let c = NaturalMemoryCursor::new(0x1000, 0, 1).unwrap();
    let mut segs = [PhysicalSegment::default(); 8];
    let r = c.segments(&md, 0, &mut segs, 0).unwrap();
    assert_eq!(r.count, 3, "cut at the maximum segment size");
    assert_eq!(
        segs[1],
        PhysicalSegment {
            location: PhysAddr(0x10_1000),
            length: 0x800
        }
    );
    // One slot at a time, continuing from the position the caller carries.
    let mut pos = 0;
    let mut all = Vec::new();
    loop {
        let mut one = [PhysicalSegment::default(); 1];
        let r = c.segments(&md, pos, &mut one, 0).unwrap();
        if r.count == 0 {
            break;
        }
        all.push(one[0]);
        pos += r.bytes;
    }
    assert_eq!(all, segs[..3].to_vec());
    // A transfer limit cuts the last segment and stops.
    let r = NaturalMemoryCursor::new(0, 0x1000, 1)
        .unwrap()
        .segments(&md, 0, &mut segs, 0)
        .unwrap();
    assert_eq!((r.count, r.bytes), (1, 0x1000));
    let r = NaturalMemoryCursor::new(0, 0, 1)
        .unwrap()
        .segments(&md, 0x10, &mut segs, 0x100)
        .unwrap();
    assert_eq!(
        segs[0],
        PhysicalSegment {
            location: PhysAddr(0x10_0010),
            length: 0x100
        }
    );
    assert_eq!(r.bytes, 0x100);
    // Past the end: nothing.
    assert_eq!(c.segments(&md, 0x1b00, &mut segs, 0).unwrap().count, 0);
    assert_eq!(c.segments(&md, 0, &mut [], 0).unwrap().count, 0);
}

#[test]
fn runs_coalesce_across_parts_of_a_multi_descriptor() {
    let m = machine();
    let a: Arc<dyn MemoryDescriptor> = Arc::new(phys(&m, &[(0x30_0000, 0x800)]));
    let b: Arc<dyn MemoryDescriptor> = Arc::new(phys(&m, &[(0x30_0800, 0x800)]));
    let multi = MultiMemoryDescriptor::new(vec![a, b], Direction::Out).unwrap();
    let mut segs = [PhysicalSegment::default(); 4];
    let r = NaturalMemoryCursor::new(0, 0, 1)
        .unwrap()
        .segments(&multi, 0, &mut segs, 0)
        .unwrap();
    assert_eq!(r.count, 1);
    assert_eq!(
        segs[0],
        PhysicalSegment {
            location: PhysAddr(0x30_0000),
            length: 0x1000
        }
    );
}

#[test]
fn piecewise_equals_all_at_once_on_a_fragmented_buffer() {
    let m = machine();
    let b = BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(200_000, Direction::Out))
        .unwrap();
    let c = NaturalMemoryCursor::new(0x3000, 0, 1).unwrap();
    let mut whole = vec![PhysicalSegment::default(); 256];
    let r = c.segments(&b, 0, &mut whole, 0).unwrap();
    assert_eq!(r.bytes, 200_000);
    let mut pieces = Vec::new();
    let mut pos = 0;
    for k in [1usize, 3, 2, 5, 1, 7, 100].iter().cycle() {
        let mut buf = vec![PhysicalSegment::default(); *k];
        let r = c.segments(&b, pos, &mut buf, 0).unwrap();
        if r.count == 0 {
            break;
        }
        pieces.extend_from_slice(&buf[..r.count]);
        pos += r.bytes;
    }
    assert_eq!(pieces, whole[..r.count].to_vec());
    assert!(whole[..r.count].iter().all(|s| s.length <= 0x3000));
}

#[test]
fn errors() {
    let m = machine();
    assert!(matches!(
        NaturalMemoryCursor::new(0, 0, 3),
        Err(Error::BadAlignment { .. })
    ));
    let md = phys(&m, &[(0x10_0010, 0x100)]);
    let c = NaturalMemoryCursor::new(0, 0, 0x100).unwrap();
    let mut segs = [PhysicalSegment::default(); 2];
    assert!(matches!(
        c.segments(&md, 0, &mut segs, 0),
        Err(Error::NotAligned { .. })
    ));
    let pageable = BufferMemoryDescriptor::new(
        m.clone(),
        BufferOptions::new(8192, Direction::In).pageable(true),
    )
    .unwrap();
    assert!(matches!(
        NaturalMemoryCursor::new(0, 0, 1)
            .unwrap()
            .segments(&pageable, 0, &mut segs, 0),
        Err(Error::NotReady { .. })
    ));
}
