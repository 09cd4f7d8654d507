//! Edge cases of `RangeAllocator` through its public API: the top of the `u64` space,
//! alignments up to 2^63, IOKit's rounding of sizes to the default alignment (and of
//! `withRange`), zero sizes, overflow, errors that change nothing, and the locked variant.

use dmakit::alloc::{LockedRangeAllocator, Placement, RangeAllocator};
use dmakit::{Error, IoReturn};

fn frags(r: &RangeAllocator) -> Vec<(u64, u64)> {
    r.fragments().collect()
}

#[test]
fn the_top_of_the_u64_space_is_usable() {
    let mut r = RangeAllocator::empty(1).unwrap();
    r.deallocate(u64::MAX - 0xfff, 0x1000).unwrap(); // the last page, up to u64::MAX
    assert_eq!(frags(&r), [(u64::MAX - 0xfff, u64::MAX)]);
    assert_eq!(r.allocate(0x1000, 0x1000).unwrap(), u64::MAX - 0xfff);
    assert_eq!(r.free_count(), 0);
    r.deallocate(u64::MAX - 0xfff, 0x1000).unwrap();
    r.allocate_range(u64::MAX, 1).unwrap(); // the very last byte
    assert_eq!(frags(&r), [(u64::MAX - 0xfff, u64::MAX - 1)]);
    r.deallocate(u64::MAX, 1).unwrap();
    assert_eq!(frags(&r), [(u64::MAX - 0xfff, u64::MAX)]);
    // One past the end overflows, whether allocating, reserving or freeing.
    assert!(matches!(
        r.allocate_range(u64::MAX, 2),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        r.deallocate(u64::MAX - 1, 3),
        Err(Error::Overflow { .. })
    ));
}

#[test]
fn the_whole_space_but_one_byte() {
    // The free count is a u64, so at most 2^64 - 1 bytes can be free at once.
    let mut r = RangeAllocator::new(0, u64::MAX, 1).unwrap();
    assert_eq!(r.free_count(), u64::MAX);
    assert!(matches!(
        r.deallocate(u64::MAX, 1),
        Err(Error::Overflow { .. })
    ));
    let a = r.allocate(1 << 63, 1 << 63).unwrap();
    assert_eq!(
        a, 0,
        "the only 2^63-aligned place for 2^63 bytes below u64::MAX"
    );
    assert_eq!(r.free_count(), (1 << 63) - 1);
    r.deallocate(a, 1 << 63).unwrap();
    assert_eq!(frags(&r), [(0, u64::MAX - 1)]);
}

#[test]
fn every_power_of_two_alignment_up_to_2_pow_63() {
    let mut r = RangeAllocator::new(1, u64::MAX - 1, 1).unwrap(); // [1, u64::MAX)
    for shift in 0..64 {
        let align = 1u64 << shift;
        let a = r.allocate(1, align).unwrap();
        assert_eq!(a % align, 0, "alignment 2^{shift}");
        r.deallocate(a, 1).unwrap();
    }
    assert_eq!(r.allocate(1, 1 << 63).unwrap(), 1 << 63);
    assert_eq!(
        frags(&r),
        [(1, (1 << 63) - 1), ((1 << 63) + 1, u64::MAX - 1)]
    );
    // No 2^63-aligned byte is left (0 is not in the space).
    assert!(matches!(r.allocate(1, 1 << 63), Err(Error::NoSpace { .. })));
    for bad in [3u64, 6, 0x1001, u64::MAX] {
        assert!(matches!(
            r.allocate(1, bad),
            Err(Error::BadAlignment { align, .. }) if align == bad
        ));
    }
    assert!(matches!(
        RangeAllocator::empty(0x30),
        Err(Error::BadAlignment { .. })
    ));
}

#[test]
fn sizes_round_up_to_the_default_alignment_not_to_the_requested_one() {
    let mut r = RangeAllocator::new(0, 0x10_0000, 0x1000).unwrap();
    assert_eq!(r.default_alignment(), 0x1000);
    let a = r.allocate(1, 0).unwrap();
    assert_eq!(
        r.free_count(),
        0x10_0000 - 0x1000,
        "1 byte takes a whole granule"
    );
    let b = r.allocate(0x1001, 0x10_0000 / 2).unwrap();
    assert_eq!(b % 0x8_0000, 0);
    assert_eq!(
        r.free_count(),
        0x10_0000 - 0x3000,
        "0x1001 bytes take two granules"
    );
    r.allocate_range(0x1000, 1).unwrap();
    assert_eq!(
        r.free_count(),
        0x10_0000 - 0x4000,
        "allocate_range rounds too"
    );
    // Frees round the same way, so the sizes given back may be the sizes asked for.
    r.deallocate(a, 1).unwrap();
    r.deallocate(b, 0x1001).unwrap();
    r.deallocate(0x1000, 1).unwrap();
    assert_eq!(frags(&r), [(0, 0xf_ffff)]);
    // Default alignment 0 means 1: nothing rounds.
    let mut r = RangeAllocator::new(0, 10, 0).unwrap();
    assert_eq!(r.default_alignment(), 1);
    r.allocate(3, 0).unwrap();
    assert_eq!(r.free_count(), 7);
}

#[test]
fn an_explicit_alignment_below_the_default_is_honoured_as_given() {
    // IOKit: alignment 0 means the default; an explicit 1 may place a block less aligned
    // than the default (here: in a free range that starts off the default alignment).
    let mut r = RangeAllocator::empty(0x100).unwrap();
    r.deallocate(0x1010, 0x100).unwrap(); // [0x1010, 0x1110)
    assert!(matches!(r.allocate(0x100, 0), Err(Error::NoSpace { .. })));
    assert_eq!(r.allocate(0x100, 1).unwrap(), 0x1010);
}

#[test]
fn with_end_of_range_keeps_iokits_rounding_quirk() {
    // withRange(end) frees [0, end + 1) with the size rounded up to the default alignment.
    let r = RangeAllocator::with_end_of_range(0xfff, 0x1000).unwrap();
    assert_eq!(frags(&r), [(0, 0xfff)]);
    let r = RangeAllocator::with_end_of_range(0x1000, 0x1000).unwrap();
    assert_eq!(frags(&r), [(0, 0x1fff)], "0x1001 bytes round up to 0x2000");
    let r = RangeAllocator::with_end_of_range(0, 0x1000).unwrap();
    assert_eq!((r.free_count(), r.fragment_count()), (0, 0), "end 0: empty");
    let r = RangeAllocator::with_end_of_range(u64::MAX - 1, 1).unwrap();
    assert_eq!(r.free_count(), u64::MAX);
    assert!(matches!(
        RangeAllocator::with_end_of_range(u64::MAX, 1),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        RangeAllocator::with_end_of_range(u64::MAX - 1, 0x1000),
        Err(Error::Overflow { .. })
    ));
}

#[test]
fn zero_sizes_are_refused() {
    let mut r = RangeAllocator::new(0, 0x1000, 1).unwrap();
    assert!(matches!(r.allocate(0, 0), Err(Error::ZeroSize { .. })));
    assert!(matches!(
        r.allocate_range(0, 0),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(r.deallocate(0, 0), Err(Error::ZeroSize { .. })));
    assert!(matches!(
        RangeAllocator::new(0, 0, 1),
        Err(Error::ZeroSize { .. })
    ));
    // A size that overflows when rounded.
    let mut r = RangeAllocator::new(0, 0x1000, 0x1000).unwrap();
    assert!(matches!(
        r.allocate(u64::MAX, 0),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        r.allocate(u64::MAX - 0x1000, 0),
        Err(Error::NoSpace { .. })
    ));
}

#[test]
fn failures_change_nothing_and_map_to_iokit_codes() {
    // Good fit places the allocation at the top, with free space below it.
    let mut r = RangeAllocator::new(0x1000, 0x4000, 0x1000)
        .unwrap()
        .with_placement(Placement::GoodFit);
    let a = r.allocate(0x1000, 0).unwrap();
    let before = frags(&r);
    let free = r.free_count();
    let errors = [
        r.deallocate(0x1000, 0x1000).unwrap_err(), // free already
        r.deallocate(a - 0x1000, 0x2000).unwrap_err(), // half free, half allocated
        r.allocate(0x4000, 0).unwrap_err(),
        r.allocate(0x1000, 0x10_0000).unwrap_err(),
        r.allocate_range(a, 0x1000).unwrap_err(),
        r.allocate_range(0, 0x1000).unwrap_err(), // outside the space
        r.allocate_range(a - 0x1000, 0x2000).unwrap_err(), // straddles
    ];
    assert_eq!(frags(&r), before);
    assert_eq!(r.free_count(), free);
    assert!(matches!(errors[0], Error::DoubleFree { .. }));
    assert!(matches!(errors[1], Error::DoubleFree { .. }));
    assert!(matches!(errors[2], Error::NoSpace { .. }));
    assert!(matches!(errors[3], Error::NoSpace { .. }));
    for e in &errors[4..] {
        assert!(matches!(e, Error::RangeBusy { .. }), "{e}");
    }
    assert_eq!(errors[2].io_return(), IoReturn::NO_SPACE);
    assert_eq!(errors[4].io_return(), IoReturn::NO_SPACE);
    r.deallocate(a, 0x1000).unwrap();
    assert_eq!(frags(&r), [(0x1000, 0x4fff)]);
}

#[test]
fn space_can_be_added_anywhere_and_merges_with_what_touches_it() {
    let mut r = RangeAllocator::empty(0x1000).unwrap();
    assert!(matches!(r.allocate(0x1000, 0), Err(Error::NoSpace { .. })));
    r.deallocate(0x10_0000, 0x1000).unwrap();
    r.deallocate(0x10_2000, 0x1000).unwrap();
    r.deallocate(0x5_0000, 0x1000).unwrap();
    assert_eq!(r.fragment_count(), 3);
    r.deallocate(0x10_1000, 0x1000).unwrap(); // fills the gap
    assert_eq!(frags(&r), [(0x5_0000, 0x5_0fff), (0x10_0000, 0x10_2fff)]);
    assert_eq!(r.free_count(), 0x4000);
}

#[test]
fn a_thousand_live_allocations_come_back_to_one_fragment() {
    let mut r = RangeAllocator::new(0x4000_0000, 0x4000_0000, 0x1000).unwrap();
    let mut live = Vec::new();
    for i in 0..1000u64 {
        let size = 0x1000 * (1 + i % 17);
        let align = if i % 5 == 0 { 0x1_0000 } else { 0 };
        live.push((r.allocate(size, align).unwrap(), size));
    }
    let mut sorted = live.clone();
    sorted.sort();
    for w in sorted.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlap");
    }
    // Free in an order unrelated to allocation order.
    live.sort_by_key(|&(a, _)| a.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for (a, size) in live {
        r.deallocate(a, size).unwrap();
    }
    assert_eq!(frags(&r), [(0x4000_0000, 0x7fff_ffff)]);
}

#[test]
fn the_locked_allocator_serves_threads() {
    let r = std::sync::Arc::new(LockedRangeAllocator::new(
        RangeAllocator::new(0, 1 << 30, 0x1000)
            .unwrap()
            .with_placement(Placement::GoodFit),
    ));
    r.allocate_range(0, 0x1000).unwrap(); // a reservation no thread may get
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..if cfg!(miri) { 60 } else { 500u64 } {
                    let size = 0x1000 * (1 + (i + t) % 8);
                    mine.push((r.allocate(size, 0).unwrap(), size));
                    if i % 3 == 0 {
                        let (a, s) = mine.swap_remove(0);
                        r.deallocate(a, s).unwrap();
                    }
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<(u64, u64)> = vec![(0, 0x1000)];
    all.extend(handles.into_iter().flat_map(|h| h.join().unwrap()));
    all.sort();
    for w in all.windows(2) {
        assert!(
            w[0].0 + w[0].1 <= w[1].0,
            "two threads got overlapping ranges"
        );
    }
    let used: u64 = all.iter().map(|&(_, s)| s).sum();
    assert_eq!(r.free_count(), (1 << 30) - used);
    for (a, s) in all {
        r.deallocate(a, s).unwrap();
    }
    assert_eq!(r.fragment_count(), 1);
    assert_eq!(
        r.with(|inner| inner.fragments().next()),
        Some((0, (1 << 30) - 1))
    );
}

#[test]
fn a_free_larger_than_the_allocation_is_refused_and_changes_nothing() {
    // [0x1000, 0x3000) is the whole space; everything in it allocated.
    let mut r = RangeAllocator::new(0x1000, 0x2000, 0x1000).unwrap();
    let a = r.allocate(0x2000, 0).unwrap();
    assert_eq!((a, r.free_count()), (0x1000, 0));
    // One page too many: 0x3000 was never the allocator's.
    let e = r.deallocate(a, 0x3000).unwrap_err();
    assert!(
        matches!(e, dmakit::Error::NotOwned { at: 0x3000, .. }),
        "{e}"
    );
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT);
    assert_eq!(
        (r.free_count(), r.fragment_count()),
        (0, 0),
        "nothing was added"
    );
    // Starting below the space is refused the same way.
    let e = r.deallocate(0, 0x2000).unwrap_err();
    assert!(matches!(e, dmakit::Error::NotOwned { at: 0, .. }), "{e}");
    // The allocation itself frees, and the space never grew.
    r.deallocate(a, 0x2000).unwrap();
    assert_eq!(frags(&r), vec![(0x1000, 0x2FFF)]);
    assert!(
        r.allocate(0x3000, 0).is_err(),
        "no space beyond what was added"
    );
    // Wholly new space is still added by deallocate, as in IOKit, and by add_range.
    r.deallocate(0x8000, 0x1000).unwrap();
    r.add_range(0x3000, 0x1000).unwrap();
    assert_eq!(frags(&r), vec![(0x1000, 0x3FFF), (0x8000, 0x8FFF)]);
    assert!(matches!(
        r.add_range(0x8000, 0x1000).unwrap_err(),
        dmakit::Error::DoubleFree { .. }
    ));
    let b = r.allocate_range(0x8000, 0x1000);
    assert!(b.is_ok());
    assert!(matches!(
        r.add_range(0x8000, 0x1000).unwrap_err(),
        dmakit::Error::RangeBusy { .. }
    ));
}

#[test]
fn the_locked_allocator_places_by_first_fit_as_iokit_and_caches_only_for_good_fit() {
    let l = LockedRangeAllocator::new(RangeAllocator::new(0, 0x10_0000, 0x1000).unwrap());
    let a = l.allocate(0x1000, 0).unwrap();
    let b = l.allocate(0x1000, 0).unwrap();
    assert_eq!((a, b), (0, 0x1000), "lowest first, as IOKit");
    l.deallocate(b, 0x1000).unwrap();
    l.deallocate(a, 0x1000).unwrap();
    assert_eq!(
        l.allocate(0x2000, 0).unwrap(),
        0,
        "nothing cached: the space merged"
    );
    l.deallocate(0, 0x2000).unwrap();
    // Switched to good fit: a freed page is cached and comes back first.
    l.with(|r| r.set_placement(Placement::GoodFit));
    let c = l.allocate(0x1000, 0).unwrap();
    l.deallocate(c, 0x1000).unwrap();
    assert_eq!(
        l.allocate(0x1000, 0).unwrap(),
        c,
        "from this thread's cache"
    );
    // Back to first fit: the caches are given back, placement is IOKit's again.
    l.with(|r| r.set_placement(Placement::FirstFit));
    l.deallocate(c, 0x1000).unwrap();
    assert_eq!(l.free_count(), 0x10_0000);
    assert_eq!(l.allocate(0x1000, 0).unwrap(), 0);
}
