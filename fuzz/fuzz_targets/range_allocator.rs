//! `RangeAllocator` against an interval model: after every call the free fragments, the
//! free count and the fragment count are exactly the model's; every refusal is the
//! documented error with the model's numbers; every allocation is aligned and was free.
//! Handles: a live handle frees exactly as a free by address of its range would; a stale one
//! (its range freed, whole or in part, since) is `StaleHandle` and changes nothing, unless
//! it frees a range that is wholly allocated (its node holds that range again).
//! Numbers are biased towards 2^64, where the space can be owned whole (with at least one
//! number allocated, since a free count of 2^64 does not fit).
#![no_main]

use arbitrary::Arbitrary;
use dmakit::alloc::{Placement, RangeAllocator, RangeHandle};
use dmakit::Error;
use dmakit_fuzz::intervals::{Space, State};
use dmakit_fuzz::num::{Align, Num};
use libfuzzer_sys::fuzz_target;

const WHAT: &str = "range allocator";
const WHAT_SPLIT: &str =
    "range allocator (enough bytes free in total, but no single free block holds the request at its alignment)";

#[derive(Arbitrary, Debug)]
enum Start {
    Empty(Align),
    New(Num, Num, Align),
    EndOfRange(Num, Align),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Allocate(Num, Align),
    AllocateRange(Num, Num),
    Deallocate(Num, Num),
    AddRange(Num, Num),
    /// A part of an allocated interval (picked by index), offsets taken modulo its length.
    FreePart(u16, Num, Num),
    /// A range inside a free fragment (picked by index).
    TakePart(u16, Num, Num),
    AllocateHandle(Num, Align),
    /// `deallocate_handle` of a handle made so far (picked by index), live or stale.
    FreeHandle(u16),
    /// Later allocations by good fit (`true`) or IOKit's first fit (`false`, the default).
    GoodFit(bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: Start,
    ops: Vec<Op>,
}

struct Model {
    space: Space,
    mask: u64,
    /// First fit: every allocation must be IOKit's, the lowest aligned place that fits.
    first_fit: bool,
}

impl Model {
    fn round(&self, size: u64) -> Result<u64, Error> {
        if size == 0 {
            return Err(Error::ZeroSize { what: WHAT });
        }
        size.checked_add(self.mask)
            .map(|s| s & !self.mask)
            .ok_or(Error::Overflow {
                what: WHAT,
                start: 0,
                len: size,
            })
    }

    fn last(start: u64, size: u64) -> Result<u64, Error> {
        start.checked_add(size - 1).ok_or(Error::Overflow {
            what: WHAT,
            start,
            len: size,
        })
    }

    fn deallocate(&mut self, start: u64, size: u64) -> Result<(), Error> {
        let size = self.round(size)?;
        let last = Self::last(start, size)?;
        if self.space.free_count() + u128::from(size) > u128::from(u64::MAX) {
            return Err(Error::Overflow {
                what: "range allocator free count",
                start,
                len: size,
            });
        }
        let pieces = self.space.overlaps(start, last);
        if pieces.iter().any(|p| p.2 == State::Free) {
            return Err(Error::DoubleFree {
                what: WHAT,
                start,
                len: size,
            });
        }
        if !pieces.is_empty() {
            if let Some(at) = self.space.first_unowned(start, last) {
                return Err(Error::NotOwned {
                    what: WHAT,
                    start,
                    len: size,
                    at,
                });
            }
        }
        self.space.set(start, last, Some(State::Free));
        Ok(())
    }

    fn add_range(&mut self, start: u64, size: u64) -> Result<(), Error> {
        let rounded = self.round(size)?;
        let last = Self::last(start, rounded)?;
        if let Some(top) = self.space.overlaps(start, last).last() {
            if top.2 == State::Allocated {
                return Err(Error::RangeBusy {
                    what: WHAT,
                    start,
                    len: rounded,
                });
            }
        }
        self.deallocate(start, size)
    }

    fn allocate_range(&mut self, start: u64, size: u64) -> Result<(), Error> {
        let size = self.round(size)?;
        let last = Self::last(start, size)?;
        if !self.space.inside_free(start, last) {
            return Err(Error::RangeBusy {
                what: WHAT,
                start,
                len: size,
            });
        }
        self.space.set(start, last, Some(State::Allocated));
        Ok(())
    }

    /// Checks the allocator's answer to `allocate(size, align)` and applies it.
    fn allocate(&mut self, size: u64, align: u64, got: Result<u64, Error>) {
        let expect = self.round(size).and_then(|size| {
            let mask = match align {
                0 => self.mask,
                a if a.is_power_of_two() => a - 1,
                a => {
                    return Err(Error::BadAlignment {
                        what: "range allocator alignment",
                        align: a,
                    })
                }
            };
            Ok((size, mask))
        });
        match (expect, got) {
            (Ok((size, mask)), Ok(at)) => {
                assert_eq!(
                    at & mask,
                    0,
                    "allocation {at:#x} not aligned to {:#x}",
                    mask + 1
                );
                let last = at.checked_add(size - 1).expect("an allocation past 2^64");
                assert!(
                    self.space.inside_free(at, last),
                    "allocation [{at:#x}, {last:#x}] was not free"
                );
                if self.first_fit {
                    let lowest = self.space.free().into_iter().find_map(|(s, l)| {
                        let data = s.checked_add(mask)? & !mask;
                        (data.checked_add(size - 1)? <= l).then_some(data)
                    });
                    assert_eq!(Some(at), lowest, "first fit is the lowest aligned place");
                }
                self.space.set(at, last, Some(State::Allocated));
            }
            (Ok((size, mask)), Err(e)) => {
                let free = self.space.free_count() as u64;
                let what = if free >= size { WHAT_SPLIT } else { WHAT };
                assert_eq!(
                    e,
                    Error::NoSpace {
                        what,
                        requested: size,
                        align: mask + 1,
                        free
                    }
                );
                assert!(
                    !self.space.fits(size, mask),
                    "NoSpace although {size:#x} bytes aligned to {:#x} fit",
                    mask + 1
                );
            }
            (Err(want), got) => assert_eq!(got, Err(want)),
        }
    }
}

fn check(r: &RangeAllocator, m: &Model) {
    let free = m.space.free();
    assert_eq!(u128::from(r.free_count()), m.space.free_count());
    assert_eq!(r.fragment_count(), free.len());
    assert!(r.fragments().eq(free.iter().copied()), "fragments differ");
}

fn begin(start: &Start) -> Option<(RangeAllocator, Model)> {
    let align = match start {
        Start::Empty(a) | Start::New(_, _, a) | Start::EndOfRange(_, a) => a.0,
    };
    let default = match align {
        0 => 1,
        a if a.is_power_of_two() => a,
        a => {
            let e = Error::BadAlignment {
                what: "range allocator default alignment",
                align: a,
            };
            assert_eq!(RangeAllocator::empty(a).err(), Some(e));
            return None;
        }
    };
    let mut m = Model {
        space: Space::default(),
        mask: default - 1,
        first_fit: true,
    };
    let r = match *start {
        Start::Empty(_) => RangeAllocator::empty(align),
        Start::New(base, size, _) => {
            let got = RangeAllocator::new(base.0, size.0, align);
            let want = m.deallocate(base.0, size.0);
            assert_eq!(got.as_ref().err(), want.err().as_ref());
            got
        }
        Start::EndOfRange(end, _) => {
            let got = RangeAllocator::with_end_of_range(end.0, align);
            let want = match end.0 {
                0 => Ok(()),
                u64::MAX => Err(Error::Overflow {
                    what: "range allocator space",
                    start: 0,
                    len: u64::MAX,
                }),
                e => m.deallocate(0, e + 1),
            };
            assert_eq!(got.as_ref().err(), want.err().as_ref());
            got
        }
    };
    Some((r.ok()?, m))
}

fn pick_in(len_minus_one: u64, a: Num, b: Num) -> (u64, u64) {
    let off = match len_minus_one.checked_add(1) {
        Some(n) => a.0 % n,
        None => a.0,
    };
    let room = len_minus_one - off;
    let size = 1 + match room.checked_add(1) {
        Some(n) => b.0 % n,
        None => b.0.min(room - 1),
    };
    (off, size)
}

/// The handles made so far, each with whether it is still live: none of its range freed
/// since it was made.
#[derive(Default)]
struct Handles(Vec<(RangeHandle, bool)>);

impl Handles {
    /// `[start, start + size)` (as rounded by the model) was freed: handles over it are
    /// stale.
    fn freed(&mut self, m: &Model, start: u64, size: u64) {
        let (Ok(size), true) = (m.round(size), size != 0) else {
            return;
        };
        let last = start.saturating_add(size - 1);
        for (h, live) in &mut self.0 {
            if h.start() <= last && start <= h.start() + (h.size() - 1) {
                *live = false;
            }
        }
    }

    /// Frees handle `i` and checks the answer against the model.
    fn free(&mut self, r: &mut RangeAllocator, m: &mut Model, i: u16) {
        let Some(&(h, live)) = self.0.get(i as usize % self.0.len().max(1)) else {
            return;
        };
        let (start, size) = (h.start(), h.size());
        let got = r.deallocate_handle(h);
        if live {
            assert_eq!(got, m.deallocate(start, size), "a live handle");
        } else {
            match &got {
                Ok(()) => {
                    let last = start + (size - 1);
                    let pieces = m.space.overlaps(start, last);
                    assert!(
                        pieces.iter().all(|p| p.2 == State::Allocated)
                            && m.space.first_unowned(start, last).is_none(),
                        "a stale handle freed [{start:#x}, +{size:#x}), not all allocated"
                    );
                    assert_eq!(m.deallocate(start, size), Ok(()));
                }
                Err(Error::Overflow { .. }) => {
                    assert_eq!(got, m.deallocate(start, size));
                }
                Err(e) => assert_eq!(
                    *e,
                    Error::StaleHandle {
                        what: WHAT,
                        start,
                        len: size
                    }
                ),
            }
        }
        if got.is_ok() {
            self.freed(m, start, size);
        }
    }
}

fn run(input: &Input) {
    let Some((mut r, mut m)) = begin(&input.start) else {
        return;
    };
    check(&r, &m);
    let mut handles = Handles::default();
    for op in input.ops.iter().take(64) {
        match *op {
            Op::AllocateHandle(size, align) => {
                let got = r.allocate_handle(size.0, align.0);
                if let Ok(h) = got {
                    assert_eq!(Ok(h.size()), m.round(size.0), "handle size");
                    handles.0.push((h, true));
                }
                // Past a handle's 4 GiB, with a valid alignment: refused, nothing changes.
                let too_big = m.round(size.0).is_ok_and(|s| s > RangeHandle::MAX_SIZE)
                    && (align.0 == 0 || align.0.is_power_of_two());
                if too_big {
                    assert!(
                        matches!(got, Err(Error::BadArgument { value, .. }) if value > RangeHandle::MAX_SIZE),
                        "a handle above 4 GiB: {got:?}"
                    );
                } else {
                    m.allocate(size.0, align.0, got.map(|h| h.start()));
                }
            }
            Op::FreeHandle(i) => handles.free(&mut r, &mut m, i),
            Op::GoodFit(good) => {
                let p = if good {
                    Placement::GoodFit
                } else {
                    Placement::FirstFit
                };
                r.set_placement(p);
                assert_eq!(r.placement(), p);
                m.first_fit = !good;
            }
            Op::Allocate(size, align) => {
                let got = r.allocate(size.0, align.0);
                m.allocate(size.0, align.0, got);
            }
            Op::AllocateRange(s, n) => {
                assert_eq!(r.allocate_range(s.0, n.0), m.allocate_range(s.0, n.0))
            }
            Op::Deallocate(s, n) => {
                let got = r.deallocate(s.0, n.0);
                assert_eq!(got, m.deallocate(s.0, n.0));
                if got.is_ok() {
                    handles.freed(&m, s.0, n.0);
                }
            }
            Op::AddRange(s, n) => assert_eq!(r.add_range(s.0, n.0), m.add_range(s.0, n.0)),
            Op::FreePart(i, a, b) => {
                let used = m.space.allocated();
                if let Some(&(s, l)) = used.get(i as usize % used.len().max(1)) {
                    let (off, size) = pick_in(l - s, a, b);
                    let got = r.deallocate(s + off, size);
                    assert_eq!(got, m.deallocate(s + off, size));
                    if got.is_ok() {
                        handles.freed(&m, s + off, size);
                    }
                }
            }
            Op::TakePart(i, a, b) => {
                let free = m.space.free();
                if let Some(&(s, l)) = free.get(i as usize % free.len().max(1)) {
                    let (off, size) = pick_in(l - s, a, b);
                    let want = m.allocate_range(s + off, size);
                    assert_eq!(r.allocate_range(s + off, size), want);
                }
            }
        }
        check(&r, &m);
    }
}

fuzz_target!(|input: Input| run(&input));
