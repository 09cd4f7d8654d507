//! Inputs the fuzz targets (`fuzz/`) found to break the core, each pinned down here with
//! the behaviour it must have.

use dmakit::alloc::RangeAllocator;
use dmakit::Error;

/// A request that does not fit the one free block of the top size class (blocks of nearly
/// 2^64 numbers) searched past the last class instead of failing.
#[test]
fn a_request_larger_than_a_block_of_the_top_class_is_no_space() {
    let end = u64::MAX - 30_781;
    let mut r = RangeAllocator::with_end_of_range(end, 0).unwrap();
    assert_eq!(
        r.allocate(u64::MAX, 0),
        Err(Error::NoSpace {
            what: "range allocator",
            requested: u64::MAX,
            align: 1,
            free: end + 1,
        })
    );
    assert_eq!(r.free_count(), end + 1);
    assert_eq!(r.fragments().collect::<Vec<_>>(), vec![(0, end)]);
    // A fit that needs the same search still succeeds.
    assert_eq!(r.allocate(end + 1, 0), Ok(0));
}

/// An element index whose byte offset fits `usize` but whose end does not overflowed the
/// bounds check instead of being out of bounds.
#[test]
fn a_segment_index_whose_end_passes_usize_max_is_out_of_bounds() {
    use dmakit::dma::{IoSegment, SegmentFormat};
    let mut buf = [0u8; 32];
    let seg = IoSegment::default();
    for (f, index) in [
        (SegmentFormat::Big64, usize::MAX / 16),
        (SegmentFormat::Little32, usize::MAX / 8),
    ] {
        assert!(matches!(
            f.write(&mut buf, index, seg),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            f.read(&buf, index),
            Err(Error::OutOfBounds { .. })
        ));
    }
    assert_eq!(buf, [0u8; 32], "nothing written");
}
