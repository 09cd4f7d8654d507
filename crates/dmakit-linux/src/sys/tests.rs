//! Unit tests of the unsafe floor's pure parts, over ordinary heap memory: bounds checks,
//! spans (copies, volatile loads and stores) and the lend bookkeeping of a mapping. They make
//! no system call, so Miri runs them and checks every raw access they make.

use super::*;
use std::mem::ManuallyDrop;

/// A 64-byte, 8-aligned heap buffer whose address is exposed, as the host exposes the
/// addresses of its mappings and registered regions.
struct Buffer {
    words: Vec<u64>,
}

impl Buffer {
    fn new() -> Buffer {
        Buffer {
            words: (0..8u64).map(|i| i * 0x0101_0101_0101_0101).collect(),
        }
    }

    fn len(&self) -> usize {
        self.words.len() * 8
    }

    /// A region over the buffer; the buffer must not be touched through references while
    /// the region is used.
    fn region(&mut self) -> RawRegion {
        let len = self.len();
        // SAFETY: the buffer outlives every region the tests make of it and is only read
        // through references after the region's spans are gone.
        unsafe { RawRegion::new(self.words.as_mut_ptr().cast(), len) }
    }

    /// A mapping value over the buffer, to exercise its bookkeeping; give it back with
    /// [`release`], never drop it (its drop would unmap the heap).
    fn mapping(&mut self, writable: bool) -> Mapping {
        Mapping {
            addr: self.words.as_mut_ptr().expose_provenance(),
            len: self.len(),
            writable,
            guard: 0,
            lends: Vec::new(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }
}

/// Forgets a mapping made by [`Buffer::mapping`] without unmapping anything, freeing its
/// list of lends.
fn release(m: Mapping) {
    let mut m = ManuallyDrop::new(m);
    drop(std::mem::take(&mut m.lends));
}

#[test]
fn within_accepts_exactly_the_ranges_inside() {
    assert_eq!(within(0x1000, 0x100, 0x1000, 0x100), Some((0x1000, 0x100)));
    assert_eq!(within(0x1000, 0x100, 0x10ff, 1), Some((0x10ff, 1)));
    assert_eq!(within(0x1000, 0x100, 0x1100, 0), Some((0x1100, 0)));
    assert_eq!(
        within(0x1000, 0x100, 0x10ff, 2),
        None,
        "one byte past the end"
    );
    assert_eq!(
        within(0x1000, 0x100, 0xfff, 1),
        None,
        "one byte before the start"
    );
    assert_eq!(
        within(0x1000, 0x100, u64::MAX, 2),
        None,
        "the end overflows"
    );
}

#[test]
fn overlap_needs_a_shared_byte() {
    assert!(overlap(0, 10, 9, 1));
    assert!(!overlap(0, 10, 10, 5), "adjacent ranges share no byte");
    assert!(
        !overlap(0, 10, 10, 0),
        "an empty range at the end overlaps nothing"
    );
    assert!(
        overlap(usize::MAX - 1, 5, usize::MAX - 1, 1),
        "saturates at the top"
    );
}

#[test]
fn spans_of_a_region_copy_within_their_bounds() {
    let mut b = Buffer::new();
    let base = b.words.as_ptr() as u64;
    {
        let r = b.region();
        assert_eq!((r.addr(), r.len()), (base, 64));
        assert!(r.span(base + 60, 5).is_none(), "past the end");
        assert!(r.span(base - 1, 1).is_none(), "before the start");
        let s = r.span(base + 8, 8).unwrap();
        assert_eq!(s.addr(), base + 8);
        assert!(s.writable());
        let mut out = [0u8; 12];
        assert_eq!(s.read(&mut out), 8, "at most the span");
        assert_eq!(&out[..8], &[1; 8]);
        assert_eq!(s.write(&[0xAA; 20]), Some(8), "at most the span");
    }
    let bytes = b.bytes();
    assert_eq!(&bytes[8..16], &[0xAA; 8]);
    assert_eq!(&bytes[16..24], &[2; 8], "nothing written past the span");
}

/// Checks that the first 24 bytes of a fresh [`Buffer`] were moved 4 bytes up, as if
/// through a temporary, and nothing past them changed.
fn moved_up_by_four(b: &Buffer) {
    let bytes = b.bytes();
    let want: Vec<u8> = [0u8; 4]
        .into_iter()
        .chain([0; 8])
        .chain([1; 8])
        .chain([2; 8])
        .collect();
    assert_eq!(&bytes[..28], &want[..], "as if through a temporary");
    assert_eq!(&bytes[28..32], &[3; 4]);
}

#[test]
fn copies_between_overlapping_spans_are_memmoves() {
    let mut b = Buffer::new();
    let base = b.words.as_ptr() as u64;
    {
        let r = b.region();
        let src = r.span(base, 24).unwrap();
        let dst = r.span(base + 4, 24).unwrap();
        assert_eq!(src.copy_to(&dst), Some(24));
    }
    moved_up_by_four(&b);
}

#[test]
fn a_loose_copy_run_later_is_the_memmove_its_spans_would_make() {
    let mut b = Buffer::new();
    let base = b.words.as_ptr() as u64;
    let copy = {
        let r = b.region();
        let src = r.span(base, 24).unwrap();
        let dst = r.span(base + 4, 28).unwrap();
        src.loose_copy_to(&dst).unwrap()
    };
    // SAFETY: the region's spans are gone, but the buffer is still alive, in place, and
    // touched by nothing else until the copy returns.
    assert_eq!(unsafe { copy.run() }, 24, "the shorter of the two spans");
    moved_up_by_four(&b);
}

#[test]
fn volatile_accesses_take_exactly_their_width() {
    let mut b = Buffer::new();
    let base = b.words.as_ptr() as u64;
    {
        let r = b.region();
        let s = r.span(base + 8, 8).unwrap();
        assert_eq!(s.load(8), Some(0x0101_0101_0101_0101));
        assert!(s.store(4, 0xdead_beef_1234_5678));
        assert_eq!(
            s.load(4),
            Some(0x1234_5678),
            "only the low four bytes stored"
        );
        assert!(s.store(2, 0xffff_abcd));
        assert!(s.store(1, 0x99));
        assert_eq!(s.load(8), Some(0x0101_0101_1234_ab99));
        assert_eq!(s.load(3), None, "not a width");
        assert!(!s.store(16, 0), "not a width");
        let odd = r.span(base + 9, 4).unwrap();
        assert_eq!(odd.load(2), None, "misaligned");
        assert_eq!(
            odd.load(1),
            Some(0xab),
            "byte 9: the high byte of the 2-byte store"
        );
        let short = r.span(base + 16, 2).unwrap();
        assert_eq!(short.load(4), None, "wider than the span");
        assert!(!short.store(4, 0));
    }
    assert_eq!(b.words[1], 0x0101_0101_1234_ab99);
    assert_eq!(
        b.words[2], 0x0202_0202_0202_0202,
        "the refused store changed nothing"
    );
}

#[test]
fn a_read_only_span_refuses_every_store() {
    let mut b = Buffer::new();
    let base = b.words.as_ptr() as u64;
    let m = b.mapping(false);
    assert!(!m.writable());
    {
        let s = m.span(base, 16).unwrap();
        assert!(!s.writable());
        assert_eq!(s.write(&[7; 4]), None);
        assert!(!s.store(8, 7));
        let w = m.span(base + 16, 8).unwrap();
        assert_eq!(w.copy_to(&s), None);
        assert!(w.loose_copy_to(&s).is_none());
        assert_eq!(s.load(8), Some(0));
    }
    release(m);
    assert_eq!(b.words[..2], [0, 0x0101_0101_0101_0101]);
}

#[test]
fn lends_exclude_the_spans_and_lends_that_could_alias_them() {
    let mut b = Buffer::new();
    let base = b.words.as_ptr() as u64;
    let mut m = b.mapping(true);
    assert!(m.lend(base + 60, 8, false).is_none(), "not inside");
    assert!(m.lend(base, 0, false).is_none(), "empty");
    let mut lent = m.lend(base + 8, 16, true).unwrap();
    assert_eq!(lent.base(), base);
    assert!(m.is_lent());
    assert_eq!(m.lent(base, 9), (true, true));
    assert_eq!(m.lent(base, 8), (false, false));
    assert!(
        m.span(base + 20, 8).is_none(),
        "no span reaches a mutable lend"
    );
    assert!(
        m.lend(base + 16, 4, false).is_none(),
        "no lend over a mutable one"
    );
    lent.bytes_mut().unwrap()[..4].copy_from_slice(b"lent");
    assert_eq!(&lent.bytes()[..4], b"lent");
    m.end_lend(lent).unwrap();
    assert!(!m.is_lent());
    let mut out = [0u8; 4];
    m.span(base + 8, 4).unwrap().read(&mut out);
    assert_eq!(&out, b"lent", "the lend's writes are the mapping's bytes");
    release(m);
}

#[test]
fn shared_lends_make_spans_read_only_and_come_back_only_to_their_mapping() {
    let mut b = Buffer::new();
    let mut other = Buffer::new();
    let base = b.words.as_ptr() as u64;
    let mut m = b.mapping(true);
    let mut o = other.mapping(true);
    let mut shared = m.lend(base, 8, false).unwrap();
    assert!(shared.bytes_mut().is_none(), "a shared lend is read-only");
    assert_eq!(shared.bytes(), &[0; 8]);
    let second = m.lend(base + 4, 8, false).unwrap();
    assert!(
        m.lend(base, 4, true).is_none(),
        "no mutable lend over a shared one"
    );
    let s = m.span(base, 16).unwrap();
    assert!(!s.writable(), "a span over a shared lend is read-only");
    assert!(m.span(base + 16, 8).unwrap().writable());
    let shared = o.end_lend(shared).unwrap_err();
    m.end_lend(shared).unwrap();
    m.end_lend(second).unwrap();
    assert!(!m.is_lent());
    assert!(m.lend(base, 8, true).is_some_and(|l| m.end_lend(l).is_ok()));
    release(o);
    release(m);
}

#[test]
fn a_read_only_mapping_lends_only_shared() {
    let mut b = Buffer::new();
    let base = b.words.as_ptr() as u64;
    let mut m = b.mapping(false);
    assert!(m.lend(base, 8, true).is_none());
    let l = m.lend(base, 8, false).unwrap();
    m.end_lend(l).unwrap();
    release(m);
}
