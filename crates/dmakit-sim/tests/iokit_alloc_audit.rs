//! The IOMemoryCursor family, IORangeAllocator, the IOMalloc family, IOMappedRead/Write and
//! the processor-cache calls, held to what IOKit does: one test per behaviour, each saying
//! what IOKit does and, where dmakit differs on purpose, what dmakit does instead.

use dmakit::alloc::{
    io_alignment_to_size, io_free, io_free_aligned, io_free_contiguous, io_free_pageable,
    io_malloc, io_malloc_aligned, io_malloc_contiguous, io_malloc_pageable, io_malloc_zero,
    io_size_to_alignment, IoHeap, LockedRangeAllocator, RangeAllocator,
};
use dmakit::descriptor::{GeneralMemoryDescriptor, MemoryDescriptor};
use dmakit::dma::{
    BigMemoryCursor, CursorOutput, LittleMemoryCursor, NaturalMemoryCursor, PhysicalSegment,
};
use dmakit::map::{
    flush_processor_cache, mapped_read16, mapped_read32, mapped_read64, mapped_read8,
    mapped_write16, mapped_write32, mapped_write64, mapped_write8, set_processor_cache_mode,
};
use dmakit::platform::{CacheMode, CpuAccess, PageRequest, PhysicalMemory, Task};
use dmakit::{Direction, Error, IoReturn, PhysAddr, VirtAddr};
use dmakit_sim::{Machine, MachineBuilder, ScratchDevice};
use std::sync::{Arc, Mutex};

fn machine() -> Arc<Machine> {
    Arc::new(MachineBuilder::new().seed(31).build().unwrap())
}

/// A descriptor over the given physical ranges, in order.
fn phys(m: &Arc<Machine>, ranges: &[(u64, u64)]) -> GeneralMemoryDescriptor<Arc<Machine>> {
    let r: Vec<(PhysAddr, u64)> = ranges.iter().map(|&(a, l)| (PhysAddr(a), l)).collect();
    GeneralMemoryDescriptor::with_physical_ranges(m.clone(), &r, Direction::Out).unwrap()
}

/// The segments a natural cursor gives, as `(address, length)` pairs.
fn walk(
    cursor: &NaturalMemoryCursor,
    md: &dyn MemoryDescriptor,
    from: u64,
    slots: usize,
    max_transfer: u64,
) -> (Vec<(u64, u64)>, u64) {
    let mut segs = vec![PhysicalSegment::default(); slots];
    let out = cursor.segments(md, from, &mut segs, max_transfer).unwrap();
    let list = segs[..out.count]
        .iter()
        .map(|s| (s.location.0, s.length))
        .collect();
    (list, out.bytes)
}

// --- IOMemoryCursor -------------------------------------------------------------------

/// IOKit: physically adjacent runs of the descriptor are coalesced into one segment.
#[test]
fn cursor_coalesces_physically_adjacent_runs() {
    let m = machine();
    let md = phys(
        &m,
        &[(0x10_0000, 0x1000), (0x10_1000, 0x800), (0x20_0000, 0x100)],
    );
    let c = NaturalMemoryCursor::new(0, 0, 1).unwrap();
    let (segs, bytes) = walk(&c, &md, 0, 8, 0);
    assert_eq!(segs, [(0x10_0000, 0x1800), (0x20_0000, 0x100)]);
    assert_eq!(bytes, 0x1900);
}

/// IOKit: a segment longer than the maximum segment size is cut at it; the rest starts the
/// next segment (and is coalesced further with what follows).
#[test]
fn cursor_cuts_segments_at_the_maximum_segment_size() {
    let m = machine();
    let md = phys(&m, &[(0x10_0000, 0x1000), (0x10_1000, 0x1800)]);
    let c = NaturalMemoryCursor::new(0x1000, 0, 1).unwrap();
    let (segs, bytes) = walk(&c, &md, 0, 8, 0);
    assert_eq!(
        segs,
        [(0x10_0000, 0x1000), (0x10_1000, 0x1000), (0x10_2000, 0x800)]
    );
    assert_eq!(bytes, 0x2800);
}

/// IOKit emits zero-length segments forever when the maximum segment size is 0; dmakit
/// reads 0 as unlimited (0xFFFF_FFFF, IOKit's own clamp), so a zero-length segment never
/// appears.
#[test]
fn cursor_max_segment_size_zero_is_unlimited() {
    let m = machine();
    let md = phys(&m, &[(0x10_0000, 0x4000)]);
    let c = NaturalMemoryCursor::new(0, 0, 1).unwrap();
    assert_eq!(walk(&c, &md, 0, 4, 0), (vec![(0x10_0000, 0x4000)], 0x4000));
}

/// IOKit: a maximum segment size above 32 bits is clamped to 0xFFFF_FFFF (the `mseg`
/// default), not refused.
#[test]
fn cursor_max_segment_size_above_32_bits_is_clamped() {
    assert!(NaturalMemoryCursor::new(1 << 40, 0, 1).is_ok());
    assert!(NaturalMemoryCursor::new(u64::MAX, 0, 1).is_ok());
}

/// IOKit: a cursor's maximum transfer size of 0 is unlimited; above `UINT_MAX` the cursor
/// is refused (NULL); exactly `UINT_MAX` is fine.
#[test]
fn cursor_max_transfer_size_zero_is_unlimited_and_above_32_bits_is_refused() {
    let m = machine();
    let md = phys(&m, &[(0x10_0000, 0x3000)]);
    let c = LittleMemoryCursor::new(0x1000, 0, 1).unwrap();
    let mut out = [0u8; 16 * 8];
    let got = c.gen_physical_segments(&md, 0, &mut out, 8, 0).unwrap();
    assert_eq!(
        got,
        CursorOutput {
            count: 3,
            bytes: 0x3000
        }
    );
    assert!(LittleMemoryCursor::new(0, u32::MAX as u64, 1).is_ok());
    let e = LittleMemoryCursor::new(0, 1 << 32, 1).unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT);
}

/// IOKit: a per-call maximum transfer size of 0 means the cursor's; any other value replaces
/// the cursor's, even a larger one.
#[test]
fn cursor_per_call_transfer_limit_replaces_the_cursors_even_when_larger() {
    let m = machine();
    let md = phys(&m, &[(0x10_0000, 0x4000)]);
    let c = NaturalMemoryCursor::new(0, 0x1000, 1).unwrap();
    assert_eq!(walk(&c, &md, 0, 4, 0), (vec![(0x10_0000, 0x1000)], 0x1000));
    assert_eq!(
        walk(&c, &md, 0, 4, 0x3000),
        (vec![(0x10_0000, 0x3000)], 0x3000)
    );
}

/// IOKit: once the transfer limit is reached, the current segment is cut to it and the walk
/// stops; the caller advances by the bytes described and calls again.
#[test]
fn cursor_stops_at_the_transfer_limit_cutting_the_segment() {
    let m = machine();
    let md = phys(&m, &[(0x10_0000, 0x1000), (0x30_0000, 0x1000)]);
    let c = NaturalMemoryCursor::new(0, 0, 1).unwrap();
    assert_eq!(
        walk(&c, &md, 0, 4, 0x1800),
        (vec![(0x10_0000, 0x1000), (0x30_0000, 0x800)], 0x1800)
    );
    assert_eq!(
        walk(&c, &md, 0x1800, 4, 0x1800),
        (vec![(0x30_0800, 0x800)], 0x800)
    );
}

/// IOKit: when a further segment is pending and only one slot is left, the current segment
/// takes that slot and the walk stops (the pending one is left for the next call).
#[test]
fn cursor_last_slot_takes_the_current_segment_and_stops() {
    let m = machine();
    let md = phys(
        &m,
        &[(0x10_0000, 0x100), (0x20_0000, 0x100), (0x30_0000, 0x100)],
    );
    let c = NaturalMemoryCursor::new(0, 0, 1).unwrap();
    assert_eq!(
        walk(&c, &md, 0, 2, 0),
        (vec![(0x10_0000, 0x100), (0x20_0000, 0x100)], 0x200)
    );
    assert_eq!(
        walk(&c, &md, 0x200, 2, 0),
        (vec![(0x30_0000, 0x100)], 0x100)
    );
}

/// IOKit: `maxSegments == 0` gives 0 segments, and so does a position at or past the end of
/// the descriptor (with a transfer size of 0).
#[test]
fn cursor_with_no_slots_or_past_the_end_describes_nothing() {
    let m = machine();
    let md = phys(&m, &[(0x10_0000, 0x1000)]);
    let c = BigMemoryCursor::new(0, 0, 1).unwrap();
    let mut out = [0xAAu8; 32];
    let none = CursorOutput { count: 0, bytes: 0 };
    assert_eq!(
        c.gen_physical_segments(&md, 0, &mut out, 0, 0).unwrap(),
        none
    );
    assert_eq!(
        c.gen_physical_segments(&md, 0x1000, &mut out, 2, 0)
            .unwrap(),
        none
    );
    assert_eq!(
        c.gen_physical_segments(&md, u64::MAX, &mut out, 2, 0)
            .unwrap(),
        none
    );
    assert!(out.iter().all(|&b| b == 0xAA), "nothing written");
}

/// IOKit writes as many elements as `maxSegments` says, past the end of a smaller array;
/// dmakit also stops at the room the output slice has.
#[test]
fn cursor_never_writes_past_the_output_slice() {
    let m = machine();
    let md = phys(
        &m,
        &[(0x10_0000, 0x100), (0x20_0000, 0x100), (0x30_0000, 0x100)],
    );
    let c = LittleMemoryCursor::new(0, 0, 1).unwrap();
    let mut out = [0u8; 16 + 8]; // one whole element and a half
    let got = c.gen_physical_segments(&md, 0, &mut out, 3, 0).unwrap();
    assert_eq!(
        got,
        CursorOutput {
            count: 1,
            bytes: 0x100
        }
    );
    assert_eq!(out[16..], [0u8; 8]);
}

/// IOKit's LP64 `PhysicalSegment` is two 64-bit fields, location then length: the natural
/// cursor stores them natively, the big and little cursors in their byte order.
#[test]
fn cursor_elements_are_16_byte_location_length_pairs_in_the_cursors_byte_order() {
    let m = machine();
    let md = phys(&m, &[(0x1234_5000, 0x300)]);
    let mut big = [0u8; 16];
    let mut little = [0u8; 16];
    let mut natural = [0u8; 16];
    BigMemoryCursor::new(0, 0, 1)
        .unwrap()
        .gen_physical_segments(&md, 0, &mut big, 1, 0)
        .unwrap();
    LittleMemoryCursor::new(0, 0, 1)
        .unwrap()
        .gen_physical_segments(&md, 0, &mut little, 1, 0)
        .unwrap();
    NaturalMemoryCursor::new(0, 0, 1)
        .unwrap()
        .gen_physical_segments(&md, 0, &mut natural, 1, 0)
        .unwrap();
    let pair = |a: [u8; 8], b: [u8; 8]| [a, b].concat();
    assert_eq!(
        big.to_vec(),
        pair(0x1234_5000u64.to_be_bytes(), 0x300u64.to_be_bytes())
    );
    assert_eq!(
        little.to_vec(),
        pair(0x1234_5000u64.to_le_bytes(), 0x300u64.to_le_bytes())
    );
    assert_eq!(
        natural.to_vec(),
        pair(0x1234_5000u64.to_ne_bytes(), 0x300u64.to_ne_bytes())
    );
}

/// IOKit stores the cursor's alignment and ignores it (debug kernels assert it is 1), so a
/// device may be handed a start it cannot use. dmakit checks it: a segment whose start
/// breaks it is `NotAligned` (kIOReturnNotAligned), and an alignment that is not a power of
/// two is refused when the cursor is made.
#[test]
fn cursor_alignment_is_checked_where_iokit_ignores_it() {
    let m = machine();
    let md = phys(&m, &[(0x10_0000, 0x100), (0x20_0010, 0x100)]);
    let c = NaturalMemoryCursor::new(0, 0, 0x100).unwrap();
    let mut segs = [PhysicalSegment::default(); 4];
    let e = c.segments(&md, 0, &mut segs, 0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotAligned {
                value: 0x20_0010,
                align: 0x100,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.io_return(), IoReturn::NOT_ALIGNED);
    // A walk that stops before the misaligned start succeeds.
    assert_eq!(walk(&c, &md, 0, 1, 0), (vec![(0x10_0000, 0x100)], 0x100));
    assert!(matches!(
        NaturalMemoryCursor::new(0, 0, 48),
        Err(Error::BadAlignment { align: 48, .. })
    ));
}

/// IOKit's walk takes physical address 0 for "no segment", so it cannot describe memory at
/// address 0; dmakit describes it like any other.
#[test]
fn cursor_describes_memory_at_physical_address_zero() {
    let m = machine();
    let md = phys(&m, &[(0, 0x1000), (0x1000, 0x1000)]);
    let c = NaturalMemoryCursor::new(0, 0, 1).unwrap();
    assert_eq!(walk(&c, &md, 0, 2, 0), (vec![(0, 0x2000)], 0x2000));
}

/// IOKit's walk, restated as a model: fetch the run at the position unless one is pending;
/// it becomes the current segment, or grows it when it starts where the current one ends,
/// or stays pending; a current segment over the maximum size is cut and its rest pends;
/// reaching the transfer limit cuts the current segment and stops; a pending run either
/// stops the walk (one slot left: the current segment takes it) or pushes the current
/// segment out. Valid for a maximum segment size above 0 and memory away from address 0
/// (IOKit misbehaves on both).
fn iokit_cursor_model(
    md: &dyn MemoryDescriptor,
    from: u64,
    slots: usize,
    max_segment: u64,
    cursor_max_transfer: u64,
    call_max_transfer: u64,
) -> (Vec<(u64, u64)>, u64) {
    let mut out = Vec::new();
    if slots == 0 {
        return (out, 0);
    }
    let limit = match (call_max_transfer, cursor_max_transfer) {
        (0, 0) => u64::from(u32::MAX),
        (0, c) => c,
        (c, _) => c,
    };
    let (mut pos, len) = (from, md.length());
    let mut cur: Option<(u64, u64)> = None;
    let mut pending: Option<(u64, u64)> = None;
    let mut transfer = 0u64;
    while pending.is_some() || pos < len {
        let seg = match pending.take() {
            Some(p) => p,
            None => {
                let s = md.physical_segment(pos).unwrap();
                pos += s.len;
                (s.addr.0, s.len)
            }
        };
        match cur.as_mut() {
            None => {
                transfer += seg.1;
                cur = Some(seg);
            }
            Some(c) if c.0 + c.1 == seg.0 => {
                transfer += seg.1;
                c.1 += seg.1;
            }
            Some(_) => pending = Some(seg),
        }
        if pending.is_none() {
            let c = cur.as_mut().unwrap();
            if c.1 > max_segment {
                let rest = c.1 - max_segment;
                pending = Some((c.0 + max_segment, rest));
                transfer -= rest;
                c.1 = max_segment;
            }
            if transfer >= limit {
                c.1 -= transfer - limit;
                transfer = limit;
                break;
            }
        }
        if pending.is_some() {
            if out.len() + 1 == slots {
                break;
            }
            out.push(cur.take().unwrap());
        }
    }
    if let Some(c) = cur {
        out.push(c);
    }
    (out, transfer)
}

/// IOKit: everything above at once. On random runs (adjacent or not), positions, segment
/// and transfer limits and slot counts, dmakit's cursor gives exactly the segments and byte
/// count of IOKit's walk.
#[test]
fn cursor_matches_iokits_walk_on_random_runs() {
    let m = machine();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _ in 0..400 {
        let mut ranges = Vec::new();
        let mut at = 0x10_0000 + next(16) * 0x1000;
        for _ in 0..1 + next(6) {
            let len = 0x100 * (1 + next(24));
            ranges.push((at, len));
            at += len;
            if next(2) == 0 {
                at += 0x100 * (1 + next(8));
            }
        }
        let md = phys(&m, &ranges);
        let total = md.length();
        let max_segment = 0x100 * (1 + next(40));
        let cursor_max = [0, 0x100 * (1 + next(40))][next(2) as usize];
        let call_max = [0, 0x100 * (1 + next(40))][next(2) as usize];
        let slots = 1 + next(5) as usize;
        let cursor = NaturalMemoryCursor::new(max_segment, cursor_max, 1).unwrap();
        let mut from = next(total);
        while from < total {
            let want = iokit_cursor_model(&md, from, slots, max_segment, cursor_max, call_max);
            let got = walk(&cursor, &md, from, slots, call_max);
            assert_eq!(
                got, want,
                "{ranges:x?} from {from:#x}: slots {slots}, max segment {max_segment:#x}, \
                 transfer {cursor_max:#x}/{call_max:#x}"
            );
            assert!(got.1 > 0, "no progress");
            from += got.1;
        }
    }
}

// --- IORangeAllocator -----------------------------------------------------------------

/// IOKit: first fit, the lowest address (in address order of the free intervals) where the
/// size fits at the alignment; alignment 0 means the default alignment.
#[test]
fn range_allocate_is_first_fit_in_address_order() {
    let mut r = RangeAllocator::with_end_of_range(0xFFFF, 0x100).unwrap();
    assert_eq!(r.allocate(0x100, 0).unwrap(), 0);
    assert_eq!(r.allocate(0x100, 0x1000).unwrap(), 0x1000);
    assert_eq!(
        r.allocate(0x100, 0).unwrap(),
        0x100,
        "the hole below comes first"
    );
    r.deallocate(0, 0x100).unwrap();
    assert_eq!(r.allocate(0x80, 0).unwrap(), 0, "the lowest hole again");
}

/// IOKit: the size is rounded up to the *default* alignment, not to the requested one.
#[test]
fn range_sizes_round_up_to_the_default_alignment_only() {
    let mut r = RangeAllocator::with_end_of_range(0xFFFF, 0x100).unwrap();
    let a = r.allocate(1, 0x4000).unwrap();
    assert_eq!(a, 0);
    assert_eq!(r.free_count(), 0x1_0000 - 0x100);
    assert_eq!(r.allocate(1, 0).unwrap(), 0x100, "only 0x100 was taken");
    // A free rounds the same way, so the size given to allocate frees it.
    r.deallocate(a, 1).unwrap();
    assert_eq!(r.free_count(), 0x1_0000 - 0x100);
}

/// IOKit: an explicit alignment replaces the default one, so an alignment of 1 may place a
/// range less aligned than the default.
#[test]
fn range_explicit_alignment_below_the_default_is_honoured_as_given() {
    let mut r = RangeAllocator::empty(0x100).unwrap();
    r.deallocate(0x1010, 0x200).unwrap(); // a free interval off the default alignment
    assert_eq!(r.allocate(0x100, 1).unwrap(), 0x1010);
    // [0x1110, 0x1210) is left: at the default alignment it holds no 0x100 bytes.
    assert!(matches!(r.allocate(0x100, 0), Err(Error::NoSpace { .. })));
    assert_eq!(r.allocate(0x100, 1).unwrap(), 0x1110);
}

/// IOKit returns false for a size of 0 and for no fit, leaving `*result` and the free list
/// alone; dmakit says which (`ZeroSize`, `NoSpace`) and changes nothing either.
#[test]
fn range_allocate_of_zero_or_too_much_fails_and_changes_nothing() {
    let mut r = RangeAllocator::new(0, 0x1000, 0x10).unwrap();
    let e = r.allocate(0, 0).unwrap_err();
    assert!(matches!(e, Error::ZeroSize { .. }), "{e:?}");
    let e = r.allocate(0x1001, 0).unwrap_err();
    assert!(matches!(e, Error::NoSpace { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::NO_SPACE);
    assert_eq!((r.free_count(), r.fragment_count()), (0x1000, 1));
}

/// IOKit does not check the alignment (it is used as `alignment - 1`, a mask that for a
/// non-power-of-two places ranges anywhere); dmakit refuses it with `BadAlignment`, for the
/// default alignment and for a call's.
#[test]
fn range_alignments_that_are_not_powers_of_two_are_refused() {
    assert!(matches!(
        RangeAllocator::empty(3),
        Err(Error::BadAlignment { align: 3, .. })
    ));
    assert!(matches!(
        RangeAllocator::with_end_of_range(0xFFF, 0x30),
        Err(Error::BadAlignment { .. })
    ));
    let mut r = RangeAllocator::new(0, 0x1000, 1).unwrap();
    assert!(matches!(
        r.allocate(0x10, 48),
        Err(Error::BadAlignment { align: 48, .. })
    ));
    assert_eq!(r.free_count(), 0x1000);
}

/// IOKit: `allocateRange` succeeds only when the whole range lies inside one free interval:
/// a taken range, a partial overlap and a start inside a gap all fail. Its start need not be
/// aligned; its size is rounded to the default alignment.
#[test]
fn range_allocate_range_needs_one_free_interval_holding_it() {
    let mut r = RangeAllocator::new(0, 0x1000, 0x10).unwrap();
    r.allocate_range(0x105, 1).unwrap(); // [0x105, 0x115)
    assert_eq!(r.free_count(), 0x1000 - 0x10);
    assert_eq!(r.fragment_count(), 2);
    for (start, size) in [(0x105, 0x10), (0x100, 0x10), (0x110, 0x10), (0xFF8, 0x10)] {
        let e = r.allocate_range(start, size).unwrap_err();
        assert!(matches!(e, Error::RangeBusy { .. }), "{start:#x}: {e:?}");
        assert_eq!(e.io_return(), IoReturn::NO_SPACE);
    }
    r.allocate_range(0xFF0, 1).unwrap();
    assert_eq!(r.free_count(), 0x1000 - 0x20);
    assert!(matches!(
        r.allocate_range(0, 0),
        Err(Error::ZeroSize { .. })
    ));
}

/// IOKit computes `start + size - 1` in wrapping arithmetic, so a range past 2^64 takes or
/// frees a wrapped range; dmakit refuses it with `Overflow` and changes nothing.
#[test]
fn range_past_two_to_the_64_is_refused() {
    let mut r = RangeAllocator::new(0, 0x1000, 0x10).unwrap();
    let top = u64::MAX - 0x7;
    assert!(matches!(
        r.allocate_range(top, 0x10),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        r.deallocate(top, 0x10),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        r.allocate(u64::MAX, 0),
        Err(Error::Overflow { .. })
    ));
    assert_eq!((r.free_count(), r.fragment_count()), (0x1000, 1));
}

/// IOKit: a free merges with the free intervals it touches on either side, so the fragment
/// count drops back as ranges come home.
#[test]
fn range_frees_merge_with_both_neighbours() {
    let mut r = RangeAllocator::new(0, 0x300, 0x100).unwrap();
    let a = r.allocate(0x100, 0).unwrap();
    let b = r.allocate(0x100, 0).unwrap();
    let c = r.allocate(0x100, 0).unwrap();
    assert_eq!((r.free_count(), r.fragment_count()), (0, 0));
    r.deallocate(a, 0x100).unwrap();
    r.deallocate(c, 0x100).unwrap();
    assert_eq!(r.fragment_count(), 2);
    r.deallocate(b, 0x100).unwrap();
    assert_eq!((r.free_count(), r.fragment_count()), (0x300, 1));
    assert_eq!(r.fragments().collect::<Vec<_>>(), [(0, 0x2FF)]);
}

/// IOKit: freeing is also how space is added: a range the allocator never had becomes free,
/// and free space is reported as IOKit's `serialize` does, `(start, inclusive end)` pairs.
#[test]
fn range_free_of_space_never_seen_adds_it() {
    let mut r = RangeAllocator::with_end_of_range(0, 0x10).unwrap();
    assert_eq!((r.free_count(), r.fragment_count()), (0, 0));
    r.deallocate(0x8000, 0x100).unwrap();
    r.deallocate(0x1000, 0x100).unwrap();
    assert_eq!(
        r.fragments().collect::<Vec<_>>(),
        [(0x1000, 0x10FF), (0x8000, 0x80FF)]
    );
    assert_eq!((r.free_count(), r.fragment_count()), (0x200, 2));
}

/// IOKit: part of an allocation may be freed, leaving the rest allocated.
#[test]
fn range_part_of_an_allocation_may_be_freed() {
    let mut r = RangeAllocator::new(0, 0x400, 0x100).unwrap();
    let a = r.allocate(0x400, 0).unwrap();
    r.deallocate(a + 0x100, 0x100).unwrap();
    assert_eq!((r.free_count(), r.fragment_count()), (0x100, 1));
    assert_eq!(r.allocate(0x100, 0).unwrap(), a + 0x100);
}

/// IOKit does not detect a double free: the range merges into the free interval already
/// there and the books go wrong. dmakit refuses a free that overlaps free space with
/// `DoubleFree` (kIOReturnBadArgument) and changes nothing.
#[test]
fn range_double_free_is_refused_and_changes_nothing() {
    let mut r = RangeAllocator::new(0, 0x1000, 0x100).unwrap();
    let a = r.allocate(0x200, 0).unwrap();
    r.deallocate(a, 0x200).unwrap();
    let e = r.deallocate(a, 0x200).unwrap_err();
    assert!(matches!(e, Error::DoubleFree { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT);
    // Half allocated, half already free: refused as well.
    let b = r.allocate(0x100, 0).unwrap();
    assert!(matches!(
        r.deallocate(b, 0x200),
        Err(Error::DoubleFree { .. })
    ));
    assert_eq!((r.free_count(), r.fragment_count()), (0xF00, 1));
}

/// IOKit adds any space a free names, so a size larger than the allocation silently adds
/// space the allocator never owned; dmakit refuses a free that mixes an allocation with
/// never-owned space (`NotOwned`) and changes nothing.
#[test]
fn range_free_larger_than_the_allocation_past_the_space_is_refused() {
    let mut r = RangeAllocator::new(0, 0x400, 0x100).unwrap();
    let a = r.allocate(0x400, 0).unwrap();
    let e = r.deallocate(a, 0x800).unwrap_err();
    assert!(matches!(e, Error::NotOwned { at: 0x400, .. }), "{e:?}");
    assert_eq!((r.free_count(), r.fragment_count()), (0, 0));
}

/// IOKit rounds a free of size 0 up to 0 and inserts an empty interval, which counts as a
/// fragment and makes every later count wrong; dmakit refuses it with `ZeroSize`.
#[test]
fn range_free_of_size_zero_is_refused() {
    let mut r = RangeAllocator::new(0, 0x1000, 0x100).unwrap();
    let a = r.allocate(0x100, 0).unwrap();
    assert!(matches!(r.deallocate(a, 0), Err(Error::ZeroSize { .. })));
    assert!(matches!(
        r.deallocate(0x5000, 0),
        Err(Error::ZeroSize { .. })
    ));
    assert_eq!((r.free_count(), r.fragment_count()), (0xF00, 1));
}

/// IOKit's `withRange(endOfRange)` frees `[0, endOfRange]` with the size `endOfRange + 1`
/// rounded up to the default alignment (so the space may reach past `endOfRange`); an
/// `endOfRange` of 0 gives an empty allocator.
#[test]
fn range_with_end_of_range_rounds_its_size_to_the_default_alignment() {
    let r = RangeAllocator::with_end_of_range(0x1000, 0x1000).unwrap();
    assert_eq!(r.fragments().collect::<Vec<_>>(), [(0, 0x1FFF)]);
    let r = RangeAllocator::with_end_of_range(0, 0x1000).unwrap();
    assert_eq!((r.free_count(), r.fragment_count()), (0, 0));
    let r = RangeAllocator::with_end_of_range(0xFFF, 0).unwrap();
    assert_eq!((r.free_count(), r.default_alignment()), (0x1000, 1));
}

/// IOKit's `withRange(~0)` computes a size of 2^64, which wraps to 0: the allocator then
/// holds the whole space but reports a free count of 0. dmakit cannot count 2^64 free
/// bytes in 64 bits and refuses it with `Overflow` (so does a size rounded past 2^64).
#[test]
fn range_with_end_of_range_of_the_whole_space_is_refused() {
    assert!(matches!(
        RangeAllocator::with_end_of_range(u64::MAX, 1),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        RangeAllocator::with_end_of_range(u64::MAX - 0x10, 0x1000),
        Err(Error::Overflow { .. })
    ));
    let r = RangeAllocator::with_end_of_range(u64::MAX - 1, 1).unwrap();
    assert_eq!(r.free_count(), u64::MAX);
}

/// IOKit: `getFreeCount` is the sum of the free intervals and `getFragmentCount` their
/// number; carving from the middle of an interval splits it in two.
#[test]
fn range_free_and_fragment_counts_follow_every_split() {
    let mut r = RangeAllocator::new(0, 0x1000, 0x10).unwrap();
    r.allocate_range(0x800, 0x10).unwrap();
    assert_eq!((r.free_count(), r.fragment_count()), (0xFF0, 2));
    r.allocate_range(0, 0x10).unwrap();
    assert_eq!((r.free_count(), r.fragment_count()), (0xFE0, 2));
    r.allocate_range(0x810, 0x7F0).unwrap();
    assert_eq!((r.free_count(), r.fragment_count()), (0x7F0, 1));
    assert_eq!(r.fragments().collect::<Vec<_>>(), [(0x10, 0x7FF)]);
}

/// IOKit's `kLocking` option takes a lock around every call; dmakit's locked allocator
/// keeps first fit, and so IOKit's addresses, by default.
#[test]
fn range_locked_allocator_keeps_first_fit() {
    let r = LockedRangeAllocator::new(RangeAllocator::new(0, 0x1000, 0x100).unwrap());
    assert_eq!(r.allocate(0x100, 0).unwrap(), 0);
    assert_eq!(r.allocate(0x100, 0x400).unwrap(), 0x400);
    assert_eq!(r.allocate(0x100, 0).unwrap(), 0x100);
    r.deallocate(0, 0x100).unwrap();
    assert_eq!(r.allocate(0x100, 0).unwrap(), 0);
    assert!(matches!(
        r.deallocate(0x800, 0x100),
        Err(Error::DoubleFree { .. })
    ));
    assert_eq!((r.free_count(), r.fragment_count()), (0xD00, 2));
}

/// IOKit's IORangeAllocator restated as a model: a sorted list of disjoint, non-adjacent
/// closed intervals, first fit in address order, sizes rounded up to the default
/// alignment, carving and merging as IOKit does. Only calls IOKit handles soundly are made
/// (no zero sizes, no double frees, nothing near 2^64).
struct IoKitRanges {
    mask: u64,
    free: Vec<(u64, u64)>,
}

impl IoKitRanges {
    fn round(&self, size: u64) -> u64 {
        (size + self.mask) & !self.mask
    }

    /// Takes `[data, last]` out of interval `i`, which holds it.
    fn carve(&mut self, i: usize, data: u64, last: u64) {
        let (start, end) = self.free[i];
        match (data > start, last < end) {
            (true, true) => {
                self.free[i].1 = data - 1;
                self.free.insert(i + 1, (last + 1, end));
            }
            (true, false) => self.free[i].1 = data - 1,
            (false, true) => self.free[i].0 = last + 1,
            (false, false) => {
                self.free.remove(i);
            }
        }
    }

    fn allocate(&mut self, size: u64, alignment: u64) -> Option<u64> {
        let mask = if alignment == 0 {
            self.mask
        } else {
            alignment - 1
        };
        let size = self.round(size);
        for i in 0..self.free.len() {
            let (start, end) = self.free[i];
            let data = (start + mask) & !mask;
            let last = data + size - 1;
            if last <= end {
                self.carve(i, data, last);
                return Some(data);
            }
        }
        None
    }

    fn allocate_range(&mut self, data: u64, size: u64) -> bool {
        let last = data + self.round(size) - 1;
        for i in 0..self.free.len() {
            let (start, end) = self.free[i];
            if start > data {
                break;
            }
            if last <= end {
                self.carve(i, data, last);
                return true;
            }
        }
        false
    }

    fn deallocate(&mut self, data: u64, size: u64) {
        let last = data + self.round(size) - 1;
        // The first interval starting at or after `data`; the one before it, if any.
        let i = self.free.iter().position(|&(s, _)| s >= data);
        let succ = i.unwrap_or(self.free.len());
        let head = succ > 0 && data <= self.free[succ - 1].1 + 1;
        let tail = succ < self.free.len() && last + 1 >= self.free[succ].0;
        match (head, tail) {
            (true, true) => {
                self.free[succ - 1].1 = self.free[succ].1;
                self.free.remove(succ);
            }
            (true, false) => self.free[succ - 1].1 = self.free[succ - 1].1.max(last),
            (false, true) => self.free[succ].0 = self.free[succ].0.min(data),
            (false, false) => self.free.insert(succ, (data, last)),
        }
    }

    fn free_count(&self) -> u64 {
        self.free.iter().map(|&(s, e)| e - s + 1).sum()
    }
}

/// IOKit: everything above at once. On random allocations (default, explicit and
/// lower-than-default alignments), fixed-range allocations and frees of whole or partial
/// allocations, over space added at unaligned places, dmakit's allocator (first fit, its
/// default) returns what IOKit's returns and keeps the same free intervals, free count and
/// fragment count after every call.
#[test]
fn range_allocator_matches_iokits_on_random_use() {
    let mut seed = 0xD1B5_4A32_D192_ED03u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _ in 0..60 {
        let g = 1u64 << next(9);
        let mut r = RangeAllocator::empty(g).unwrap();
        let mut k = IoKitRanges {
            mask: g - 1,
            free: Vec::new(),
        };
        // Two to four stretches of space, at places that need not be aligned.
        let mut at = next(0x100) * 0x10;
        for _ in 0..2 + next(3) {
            let len = g * (4 + next(200));
            r.deallocate(at, len).unwrap();
            k.deallocate(at, len);
            at += len + g * (1 + next(20)) + next(4) * 0x10;
        }
        let end = at;
        // Live allocations, in units of the default alignment.
        let mut live: Vec<(u64, u64)> = Vec::new();
        for step in 0..300 {
            match next(8) {
                0..=2 => {
                    let size = 1 + next(g * 12);
                    let alignment = match next(4) {
                        0 => 0,
                        1 => 1,
                        _ => 1 << next(12),
                    };
                    let got = r.allocate(size, alignment).ok();
                    assert_eq!(got, k.allocate(size, alignment), "step {step}");
                    if let Some(a) = got {
                        live.push((a, k.round(size)));
                    }
                }
                3 => {
                    let start = next(end);
                    let size = 1 + next(g * 6);
                    let got = r.allocate_range(start, size).is_ok();
                    assert_eq!(got, k.allocate_range(start, size), "step {step}");
                    if got {
                        live.push((start, k.round(size)));
                    }
                }
                _ if !live.is_empty() => {
                    let (a, len) = live.swap_remove(next(live.len() as u64) as usize);
                    // The whole allocation, or a piece of it in units of `g`.
                    let units = len / g;
                    let (from, n) = if next(2) == 0 || units < 2 {
                        (0, units)
                    } else {
                        let from = next(units);
                        (from, 1 + next(units - from))
                    };
                    let (s, l) = (a + from * g, n * g);
                    r.deallocate(s, l).unwrap();
                    k.deallocate(s, l);
                    if from > 0 {
                        live.push((a, from * g));
                    }
                    if from + n < units {
                        live.push((s + l, len - from * g - l));
                    }
                }
                _ => {}
            }
            assert_eq!(
                r.fragments().collect::<Vec<_>>(),
                k.free,
                "step {step}, default alignment {g:#x}"
            );
            assert_eq!(r.free_count(), k.free_count());
            assert_eq!(r.fragment_count(), k.free.len());
        }
    }
}

// --- IOMalloc family ------------------------------------------------------------------

/// IOKit: `IOMalloc(0)` takes the smallest kalloc zone and returns a real element, which
/// `IOFree(p, 0)` gives back; `IOMallocZero(0)` likewise.
#[test]
fn io_malloc_of_zero_bytes_returns_a_block_freed_with_size_zero() {
    let m = machine();
    let heap = IoHeap::new(m.clone());
    let a = io_malloc(&heap, 0).unwrap();
    let b = io_malloc_zero(&heap, 0).unwrap();
    assert!(a.0 != 0 && b.0 != 0 && a != b);
    assert_eq!(heap.stats().live, 2);
    assert!(matches!(
        io_free(&heap, a, 16),
        Err(Error::WrongSize { allocated: 0, .. })
    ));
    io_free(&heap, a, 0).unwrap();
    io_free(&heap, b, 0).unwrap();
    assert_eq!(heap.stats().live, 0);
    let owned = heap.alloc(0).unwrap();
    assert!(owned.is_empty());
}

/// IOKit: `IOMallocPageable(0)` allocates (one chunk of a shared pageable page on x86_64);
/// `IOFreePageable(p, 0)` frees it.
#[test]
fn io_malloc_pageable_of_zero_bytes_returns_a_block() {
    let heap = IoHeap::new(machine());
    let p = io_malloc_pageable(&heap, 0, 0).unwrap();
    assert!(p.0 != 0);
    io_free_pageable(&heap, p, 0).unwrap();
    assert_eq!(heap.stats().live, 0);
}

/// IOKit: `IOMallocAligned(0, a)` and `IOMallocContiguous(0, …)` return NULL; dmakit says
/// `ZeroSize` (kIOReturnBadArgument).
#[test]
fn io_malloc_aligned_and_contiguous_of_zero_bytes_are_refused() {
    let heap = IoHeap::new(machine());
    let e = io_malloc_aligned(&heap, 0, 16).unwrap_err();
    assert!(matches!(e, Error::ZeroSize { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT);
    assert!(matches!(
        io_malloc_contiguous(&heap, 0, 0),
        Err(Error::ZeroSize { .. })
    ));
    assert_eq!(heap.stats().live, 0);
}

/// IOKit rounds `IOMallocAligned`'s alignment up to a power of two (`48` aligns to 64, `0`
/// and `1` to nothing) and returns NULL for one that does not fit 32 bits.
#[test]
fn io_malloc_aligned_rounds_its_alignment_up_to_a_power_of_two() {
    let heap = IoHeap::new(machine());
    for (size, align, want) in [
        (8usize, 48usize, 64u64),
        (100, 3, 4),
        (5000, 0x3000, 0x4000),
        (10, 0, 1),
        (10, 1, 1),
    ] {
        let a = io_malloc_aligned(&heap, size, align).unwrap();
        assert_eq!(a.0 % want, 0, "size {size} align {align}: {a:?}");
        io_free_aligned(&heap, a, size).unwrap();
    }
    let e = io_malloc_aligned(&heap, 8, 1 << 32).unwrap_err();
    assert!(matches!(e, Error::BadAlignment { .. }), "{e:?}");
    // The largest 32-bit alignment rounds to 2^32: accepted (whether the machine has such
    // a block is the platform's answer).
    let r = io_malloc_aligned(&heap, 8, u32::MAX as usize);
    assert!(!matches!(r, Err(Error::BadAlignment { .. })), "{r:?}");
    if let Ok(a) = r {
        assert_eq!(a.0 % (1 << 32), 0);
        io_free_aligned(&heap, a, 8).unwrap();
    }
    assert_eq!(heap.stats().live, 0);
}

/// IOKit: `IOMallocPageable` rounds its alignment up as well and returns NULL for an
/// alignment above the page size.
#[test]
fn io_malloc_pageable_rounds_its_alignment_and_refuses_more_than_a_page() {
    let heap = IoHeap::new(machine());
    let p = io_malloc_pageable(&heap, 100, 3000).unwrap();
    assert_eq!(p.0 % 4096, 0);
    io_free_pageable(&heap, p, 100).unwrap();
    assert!(matches!(
        io_malloc_pageable(&heap, 100, 4097),
        Err(Error::BadAlignment { align: 4097, .. })
    ));
    assert_eq!(heap.stats().live, 0);
}

/// IOKit's `IOMallocContiguous` uses `alignment - 1` as a mask (and, asked for the physical
/// address, builds a 32-bit physical mask from it), so an alignment that is not a power of
/// two aligns to nothing in particular; dmakit refuses it with `BadAlignment`.
#[test]
fn io_malloc_contiguous_refuses_an_alignment_that_is_not_a_power_of_two() {
    let heap = IoHeap::new(machine());
    assert!(matches!(
        io_malloc_contiguous(&heap, 64, 48),
        Err(Error::BadAlignment { align: 48, .. })
    ));
    let (va, pa) = io_malloc_contiguous(&heap, 0x2000, 0x2000).unwrap();
    assert_eq!((va.0 % 0x2000, pa.0 % 0x2000), (0, 0));
    assert!(
        pa.0 + 0x2000 <= 1 << 32,
        "below 4 GiB, as IOKit's 32-bit mask"
    );
    io_free_contiguous(&heap, va, 0x2000).unwrap();
}

/// IOKit: `IOFree(NULL, n)` and its siblings do nothing.
#[test]
fn io_free_of_null_is_a_no_op() {
    let heap = IoHeap::new(machine());
    io_free(&heap, VirtAddr(0), 16).unwrap();
    io_free_aligned(&heap, VirtAddr(0), 16).unwrap();
    io_free_pageable(&heap, VirtAddr(0), 16).unwrap();
    io_free_contiguous(&heap, VirtAddr(0), 16).unwrap();
}

/// IOKit's kalloc panics when `IOFree` is given a size larger than the element and silently
/// miscounts with a smaller one in the same zone; dmakit refuses any size other than the
/// allocation's with `WrongSize` and frees nothing.
#[test]
fn io_free_with_the_wrong_size_is_refused_and_frees_nothing() {
    let heap = IoHeap::new(machine());
    let a = io_malloc(&heap, 100).unwrap();
    for wrong in [99usize, 101, 128, 0] {
        let e = io_free(&heap, a, wrong).unwrap_err();
        assert!(
            matches!(e, Error::WrongSize { allocated: 100, .. }),
            "{e:?}"
        );
    }
    assert_eq!(heap.stats().live, 1);
    io_free(&heap, a, 100).unwrap();
}

/// IOKit panics (or corrupts a zone) on a double free or on freeing an address it never
/// handed out; dmakit refuses both with `NotAllocated`.
#[test]
fn io_free_of_an_address_not_allocated_is_refused() {
    let heap = IoHeap::new(machine());
    let a = io_malloc(&heap, 64).unwrap();
    io_free(&heap, a, 64).unwrap();
    assert!(matches!(
        io_free(&heap, a, 64),
        Err(Error::NotAllocated { .. })
    ));
    assert!(matches!(
        io_free(&heap, VirtAddr(0x1234_5678), 64),
        Err(Error::NotAllocated { .. })
    ));
}

/// IOKit panics on heap confusion (a block freed through another family); dmakit refuses it
/// with `WrongFree` and frees nothing.
#[test]
fn io_free_through_another_family_is_refused() {
    let heap = IoHeap::new(machine());
    let a = io_malloc_aligned(&heap, 64, 64).unwrap();
    assert!(matches!(
        io_free(&heap, a, 64),
        Err(Error::WrongFree { .. })
    ));
    assert!(matches!(
        io_free_pageable(&heap, a, 64),
        Err(Error::WrongFree { .. })
    ));
    io_free_aligned(&heap, a, 64).unwrap();
}

/// IOKit's `IOFreeContiguous` of memory whose physical address was asked for finds the
/// block by address and ignores the size, but frees by the size on its other path; dmakit
/// checks the size on every free (`WrongSize`), so a wrong one never frees the wrong amount.
#[test]
fn io_free_contiguous_checks_the_size() {
    let heap = IoHeap::new(machine());
    let (va, _) = io_malloc_contiguous(&heap, 0x1000, 0).unwrap();
    assert!(matches!(
        io_free_contiguous(&heap, va, 0x2000),
        Err(Error::WrongSize { .. })
    ));
    io_free_contiguous(&heap, va, 0x1000).unwrap();
}

/// IOKit: `IOSizeToAlignment(n)` is floor(log2(n)), 0 for 0 and 1; `IOAlignmentToSize(k)`
/// is 2^k.
#[test]
fn io_size_to_alignment_and_back() {
    for (n, k) in [
        (0u64, 0u32),
        (1, 0),
        (2, 1),
        (3, 1),
        (48, 5),
        (4096, 12),
        (4097, 12),
    ] {
        assert_eq!(io_size_to_alignment(n), k, "{n}");
    }
    assert_eq!(io_alignment_to_size(5), Some(32));
    assert_eq!(io_alignment_to_size(0), Some(1));
    assert_eq!(io_alignment_to_size(64), None);
}

// --- IOMappedRead/Write, IOFlushProcessorCache, IOSetProcessorCacheMode ----------------

const BAR: u64 = 0xFE00_0000;

fn with_device() -> (Arc<Machine>, Arc<Mutex<ScratchDevice>>) {
    let dev = Arc::new(Mutex::new(ScratchDevice::new(0x1122_3344, 0x100)));
    let m = Arc::new(
        MachineBuilder::new()
            .mmio(BAR, 0x1000, dev.clone())
            .build()
            .unwrap(),
    );
    (m, dev)
}

/// IOKit: `IOMappedRead/Write8/16/32/64` perform one load or store of their width at the
/// I/O-space address.
#[test]
fn mapped_reads_and_writes_are_one_access_of_their_width() {
    let (m, dev) = with_device();
    let before = dev.lock().unwrap().log().len();
    mapped_write8(&*m, PhysAddr(BAR + 0x20), 0xAB).unwrap();
    mapped_write16(&*m, PhysAddr(BAR + 0x22), 0xBEEF).unwrap();
    mapped_write32(&*m, PhysAddr(BAR + 0x24), 0xDEAD_BEEF).unwrap();
    mapped_write64(&*m, PhysAddr(BAR + 0x28), 0x0102_0304_0506_0708).unwrap();
    assert_eq!(mapped_read8(&*m, PhysAddr(BAR + 0x20)).unwrap(), 0xAB);
    assert_eq!(mapped_read16(&*m, PhysAddr(BAR + 0x22)).unwrap(), 0xBEEF);
    assert_eq!(
        mapped_read32(&*m, PhysAddr(BAR + 0x24)).unwrap(),
        0xDEAD_BEEF
    );
    assert_eq!(
        mapped_read64(&*m, PhysAddr(BAR + 0x28)).unwrap(),
        0x0102_0304_0506_0708
    );
    assert_eq!(dev.lock().unwrap().log().len() - before, 8);
}

/// IOKit leaves a misaligned access to the hardware and an access to an address nothing
/// backs to a machine check; dmakit refuses them with `NotAligned` and `NotMapped`
/// (kIOReturnVMError).
#[test]
fn mapped_io_refuses_misaligned_and_unbacked_addresses() {
    let (m, _) = with_device();
    assert!(matches!(
        mapped_read32(&*m, PhysAddr(BAR + 2)),
        Err(Error::NotAligned { .. })
    ));
    assert!(matches!(
        mapped_write64(&*m, PhysAddr(BAR + 4), 1),
        Err(Error::NotAligned { .. })
    ));
    let e = mapped_read32(&*m, PhysAddr(0xFFFF_0000_0000)).unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::VM_ERROR);
}

/// IOKit: `IOFlushProcessorCache` of a task other than the kernel task is
/// kIOReturnUnsupported; of the kernel task it succeeds.
#[test]
fn flush_processor_cache_serves_only_the_kernel_task() {
    let m = machine();
    let va = m.allocate_pages(4096, &PageRequest::WIRED).unwrap();
    m.write_virt(Task::KERNEL, va, b"x").unwrap();
    flush_processor_cache(&*m, Task::KERNEL, va, 4096).unwrap();
    let e = flush_processor_cache(&*m, Task(7), va, 4096).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::UNSUPPORTED);
    m.free_pages(va, 4096).unwrap();
}

/// IOKit: `IOSetProcessorCacheMode` of another task, or of a range whose address or length
/// is not page aligned, is kIOReturnUnsupported; a page with no physical page behind it is
/// kIOReturnVMError.
#[test]
fn set_processor_cache_mode_errors_are_iokits() {
    let m = machine();
    let va = m.allocate_pages(8192, &PageRequest::WIRED).unwrap();
    let unsupported = [
        set_processor_cache_mode(&*m, Task(3), va, 4096, CacheMode::Inhibit),
        set_processor_cache_mode(
            &*m,
            Task::KERNEL,
            VirtAddr(va.0 + 1),
            4096,
            CacheMode::Inhibit,
        ),
        set_processor_cache_mode(&*m, Task::KERNEL, va, 100, CacheMode::Inhibit),
    ];
    for r in unsupported {
        assert_eq!(r.unwrap_err().io_return(), IoReturn::UNSUPPORTED);
    }
    set_processor_cache_mode(&*m, Task::KERNEL, va, 8192, CacheMode::Inhibit).unwrap();
    m.free_pages(va, 8192).unwrap();
    let e = set_processor_cache_mode(&*m, Task::KERNEL, va, 4096, CacheMode::Inhibit).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::VM_ERROR, "{e:?}");
}
