//! Segment formats and memory cursors against a model.
//!
//! * `SegmentFormat::write`/`read` at any element index (near 2^40, near `usize::MAX /
//!   16`, …) into buffers of any size: in bounds exactly when the model says, 32-bit
//!   formats refuse what does not fit, a refusal writes nothing, a write touches only its
//!   element and reads back, and the bytes are the documented encoding.
//! * `MemoryCursor` (all three byte orders) over a prepared descriptor: the segments are
//!   the model's (the descriptor's physical runs from the position, coalesced where
//!   adjacent, cut at the maximum segment size, bounded by the transfer limit and the slot
//!   count, with any segment start that breaks the alignment an error).
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use dmakit::descriptor::MemoryDescriptor;
use dmakit::dma::{
    BigMemoryCursor, IoSegment, LittleMemoryCursor, NaturalMemoryCursor, PhysicalSegment,
    SegmentFormat,
};
use dmakit::{Direction, Error, IoAddr, PhysAddr};
use dmakit_fuzz::num::{small_pow2, Num};
use dmakit_fuzz::shapes::{assert_nothing_left, build, machine, Shape};
use libfuzzer_sys::fuzz_target;

const FORMATS: [SegmentFormat; 6] = [
    SegmentFormat::Host32,
    SegmentFormat::Big32,
    SegmentFormat::Little32,
    SegmentFormat::Host64,
    SegmentFormat::Big64,
    SegmentFormat::Little64,
];

#[derive(Debug)]
struct FormatOp {
    format: SegmentFormat,
    buf_len: usize,
    index: usize,
    seg: IoSegment,
    read: bool,
}

#[derive(Debug)]
struct CursorOp {
    order: u8,
    max_segment: u64,
    max_transfer: u64,
    alignment: u64,
    from: u64,
    slots: usize,
    max_segments: usize,
    call_max_transfer: u64,
}

#[derive(Debug)]
struct Input {
    formats: Vec<FormatOp>,
    seed: u8,
    shape: Shape,
    cursors: Vec<CursorOp>,
}

fn index(u: &mut Unstructured<'_>) -> Result<usize> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 => u.int_in_range(0..=8)?,
        1 => (1usize << 40).wrapping_add_signed(u.int_in_range(-4..=4)?),
        2 => (usize::MAX / 16).wrapping_add_signed(u.int_in_range(-2..=2)?),
        3 => (usize::MAX / 8).wrapping_add_signed(u.int_in_range(-2..=2)?),
        _ => u.arbitrary::<Num>()?.0 as usize,
    })
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut formats = Vec::new();
        for _ in 0..u.int_in_range(0..=8)? {
            formats.push(FormatOp {
                format: *u.choose(&FORMATS)?,
                buf_len: u.int_in_range(0..=80)?,
                index: index(u)?,
                seg: IoSegment {
                    addr: IoAddr(u.arbitrary::<Num>()?.0),
                    len: u.arbitrary::<Num>()?.0,
                },
                read: u.arbitrary()?,
            });
        }
        let seed = u.arbitrary()?;
        let shape = Shape::draw(u, 2)?;
        let mut cursors = Vec::new();
        for _ in 0..u.int_in_range(1..=6)? {
            cursors.push(CursorOp {
                order: u.int_in_range(0..=3)?,
                max_segment: match u.int_in_range(0u8..=2)? {
                    0 => 0,
                    1 => small_pow2(u, 16)?,
                    _ => u.arbitrary::<Num>()?.0,
                },
                max_transfer: u.arbitrary::<Num>()?.0 % 3 * u.arbitrary::<u16>()? as u64,
                alignment: match u.int_in_range(0u8..=5)? {
                    0 => u.arbitrary::<Num>()?.0,
                    _ => small_pow2(u, 12)?,
                },
                from: match u.int_in_range(0u8..=3)? {
                    0 => u.arbitrary::<Num>()?.0,
                    _ => u.arbitrary::<u16>()? as u64,
                },
                slots: u.int_in_range(0..=40)?,
                max_segments: index(u)?,
                call_max_transfer: match u.int_in_range(0u8..=2)? {
                    0 => 0,
                    1 => u.arbitrary::<u16>()? as u64,
                    _ => u.arbitrary::<Num>()?.0,
                },
            });
        }
        Ok(Input {
            formats,
            seed,
            shape,
            cursors,
        })
    }
}

/// The documented encoding of `seg` in `format`, if its values fit.
fn encode(format: SegmentFormat, seg: IoSegment) -> Option<Vec<u8>> {
    let (a, l) = (seg.addr.0, seg.len);
    Some(match format {
        SegmentFormat::Host32 => [
            u32::try_from(a).ok()?.to_ne_bytes(),
            u32::try_from(l).ok()?.to_ne_bytes(),
        ]
        .concat(),
        SegmentFormat::Big32 => [
            u32::try_from(a).ok()?.to_be_bytes(),
            u32::try_from(l).ok()?.to_be_bytes(),
        ]
        .concat(),
        SegmentFormat::Little32 => [
            u32::try_from(a).ok()?.to_le_bytes(),
            u32::try_from(l).ok()?.to_le_bytes(),
        ]
        .concat(),
        SegmentFormat::Host64 => [a.to_ne_bytes(), l.to_ne_bytes()].concat(),
        SegmentFormat::Big64 => [a.to_be_bytes(), l.to_be_bytes()].concat(),
        SegmentFormat::Little64 => [a.to_le_bytes(), l.to_le_bytes()].concat(),
    })
}

fn format_op(op: &FormatOp) {
    let size = op.format.element_size();
    let at = op.index as u128 * size as u128;
    let fits = at + size as u128 <= op.buf_len as u128;
    let mut buf: Vec<u8> = (0..op.buf_len).map(|i| i as u8 ^ 0x5A).collect();
    let before = buf.clone();
    if op.read {
        match op.format.read(&buf, op.index) {
            Ok(seg) => {
                assert!(fits, "read of element {} in {} bytes", op.index, op.buf_len);
                let at = at as usize;
                assert_eq!(encode(op.format, seg).as_deref(), Some(&buf[at..at + size]));
            }
            Err(e) => {
                assert!(!fits, "in-bounds read refused: {e}");
                assert!(matches!(e, Error::OutOfBounds { .. }), "{e:?}");
            }
        }
        return;
    }
    let want = encode(op.format, op.seg);
    match op.format.write(&mut buf, op.index, op.seg) {
        Ok(()) => {
            assert!(
                fits,
                "write of element {} in {} bytes",
                op.index, op.buf_len
            );
            let want = want.expect("a 32-bit format took a value past 32 bits");
            let at = at as usize;
            assert_eq!(buf[at..at + size], want[..]);
            assert_eq!(buf[..at], before[..at]);
            assert_eq!(buf[at + size..], before[at + size..]);
            assert_eq!(op.format.read(&buf, op.index), Ok(op.seg));
        }
        Err(e) => {
            assert_eq!(buf, before, "a refused write changed the buffer");
            if !fits {
                assert!(matches!(e, Error::OutOfBounds { .. }), "{e:?}");
            } else {
                assert!(
                    want.is_none() && matches!(e, Error::BadArgument { .. }),
                    "{e:?}"
                );
            }
        }
    }
}

/// The model's answer: the segments, or the start that breaks the alignment.
fn model(md: &dyn MemoryDescriptor, c: &CursorOp, slots: usize) -> Result2 {
    // IOKit's cursor counts in 32 bits: 0 (and more) is 0xFFFF_FFFF, and a per-call limit
    // replaces the cursor's own.
    let cap = u64::from(u32::MAX);
    let limited = |v: u64| if v == 0 { cap } else { v.min(cap) };
    let (mss, mts) = (limited(c.max_segment), limited(c.max_transfer));
    let limit = if c.call_max_transfer == 0 {
        mts
    } else {
        c.call_max_transfer.min(cap)
    };
    let align = c.alignment.max(1);
    let length = md.length();
    if slots == 0 || c.from >= length {
        return Ok(Vec::new());
    }
    let end = c.from + (length - c.from).min(limit);
    let mut chunks: Vec<PhysicalSegment> = Vec::new();
    let mut pos = c.from;
    while pos < end && chunks.len() <= slots {
        let run = md
            .physical_segment(pos)
            .expect("segment of prepared memory");
        let take = run.len.min(end - pos);
        let (mut addr, mut left) = (run.addr.0, take);
        while left > 0 {
            match chunks.last_mut() {
                Some(ch) if ch.location.0 + ch.length == addr && ch.length < mss => {
                    let add = left.min(mss - ch.length);
                    ch.length += add;
                    addr += add;
                    left -= add;
                }
                _ => {
                    let add = left.min(mss);
                    chunks.push(PhysicalSegment {
                        location: PhysAddr(addr),
                        length: add,
                    });
                    addr += add;
                    left -= add;
                }
            }
        }
        pos += take;
    }
    chunks.truncate(slots);
    if let Some(bad) = chunks.iter().find(|ch| ch.location.0 % align != 0) {
        return Err(bad.location.0);
    }
    Ok(chunks)
}

type Result2 = core::result::Result<Vec<PhysicalSegment>, u64>;

fn decode(order: u8, b: &[u8]) -> PhysicalSegment {
    let (a, l): ([u8; 8], [u8; 8]) = (b[..8].try_into().unwrap(), b[8..16].try_into().unwrap());
    let f = match order {
        1 => u64::from_be_bytes,
        2 => u64::from_le_bytes,
        _ => u64::from_ne_bytes,
    };
    PhysicalSegment {
        location: PhysAddr(f(a)),
        length: f(l),
    }
}

fn cursor_op(md: &dyn MemoryDescriptor, c: &CursorOp) {
    let mut out = vec![0u8; c.slots * 16];
    let mut typed = vec![PhysicalSegment::default(); c.slots];
    let args = (c.max_segment, c.max_transfer, c.alignment);
    let (got, slots) = match c.order {
        0..=2 => {
            let r = match c.order {
                0 => NaturalMemoryCursor::new(args.0, args.1, args.2).map(|k| {
                    k.gen_physical_segments(
                        md,
                        c.from,
                        &mut out,
                        c.max_segments,
                        c.call_max_transfer,
                    )
                }),
                1 => BigMemoryCursor::new(args.0, args.1, args.2).map(|k| {
                    k.gen_physical_segments(
                        md,
                        c.from,
                        &mut out,
                        c.max_segments,
                        c.call_max_transfer,
                    )
                }),
                _ => LittleMemoryCursor::new(args.0, args.1, args.2).map(|k| {
                    k.gen_physical_segments(
                        md,
                        c.from,
                        &mut out,
                        c.max_segments,
                        c.call_max_transfer,
                    )
                }),
            };
            let slots = c.max_segments.min(c.slots);
            (
                r.map(|r| {
                    r.map(|o| {
                        (
                            o,
                            (0..o.count)
                                .map(|i| decode(c.order, &out[i * 16..]))
                                .collect::<Vec<_>>(),
                        )
                    })
                }),
                slots,
            )
        }
        _ => {
            let r = NaturalMemoryCursor::new(args.0, args.1, args.2)
                .map(|k| k.segments(md, c.from, &mut typed, c.call_max_transfer));
            (
                r.map(|r| r.map(|o| (o, typed[..o.count].to_vec()))),
                c.slots,
            )
        }
    };
    let got = match got {
        Err(e) => {
            assert!(!c.alignment.max(1).is_power_of_two(), "cursor refused: {e}");
            assert!(matches!(e, Error::BadAlignment { .. }), "{e:?}");
            return;
        }
        Ok(r) => r,
    };
    assert!(
        c.alignment.max(1).is_power_of_two(),
        "bad alignment accepted"
    );
    match (model(md, c, slots), got) {
        (Ok(want), Ok((o, segs))) => {
            assert_eq!(segs, want, "cursor segments ({c:?})");
            assert_eq!(o.count, want.len());
            assert_eq!(o.bytes, want.iter().map(|s| s.length).sum::<u64>());
        }
        (Err(at), Err(e)) => assert!(
            matches!(e, Error::NotAligned { value, .. } if value == at),
            "{e:?}, model: misaligned start {at:#x}"
        ),
        (want, got) => panic!("model {want:?}, cursor {got:?} ({c:?})"),
    }
}

fn run(input: &Input) {
    for op in &input.formats {
        format_op(op);
    }
    let m = machine(input.seed as u64, true);
    if let Some(built) = build(&m, &input.shape) {
        let md = built.md;
        md.prepare_wiring(Direction::InOut).expect("prepare");
        for c in &input.cursors {
            cursor_op(md.as_ref(), c);
        }
        md.complete().expect("complete");
    }
    assert_nothing_left(&m);
}

fuzz_target!(|input: Input| run(&input));
