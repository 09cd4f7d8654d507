//! Property tests of `RangeAllocator` against a reference model: one `bool` per byte of a
//! small space, `true` where the byte is free.
//!
//! Each case is a random sequence of `allocate` and `allocate_handle` (with alignments
//! below, at and above the default), `allocate_range`, and `deallocate` of live allocations
//! (by handle or by address), of random ranges (which may cut allocations, span several,
//! or add space that was never free), and of ranges that are already free, and frees by
//! handles gone stale. After every step the allocator must agree with the model:
//!
//! * an allocation lies on bytes the model has free (so never on another allocation, never
//!   outside the space) and keeps its alignment; `NoSpace` only when the model has no
//!   aligned free run of that size either (the allocator is exact, not merely good);
//! * `allocate_range` succeeds exactly when the model has the whole range free;
//! * `deallocate` fails with `DoubleFree` exactly when the range overlaps free bytes, and
//!   otherwise with `NotOwned` exactly when it mixes allocated bytes with bytes never added;
//! * `deallocate_handle` of a live handle succeeds; of a stale one (freed, by handle or by
//!   address, or cut) it fails with `StaleHandle` naming its range, unless its node holds
//!   exactly its range again (then it frees that range, which must be all allocated);
//! * a failed call changes nothing;
//! * `free_count` is the model's number of free bytes, `fragment_count` its number of
//!   maximal free runs, and `fragments()` lists exactly those runs;
//! * freeing everything leaves one fragment covering the whole space.
//!
//! The spaces are small (at most 512 bytes, default alignments 1 to 16) so that every
//! check is exhaustive, and sit at 0, in the middle of the `u64` range, or at its very top.
//! Four properties of 2,500 cases and one of 2,000 make 12,000 random sequences (2 cases
//! each under Miri, which interprets every step).

use dmakit::alloc::{RangeAllocator, RangeHandle};
use dmakit::Error;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    /// `allocate(size, 1 << align_shift)`, or the default alignment when `align_shift` is
    /// `None`.
    Alloc {
        size: u64,
        align_shift: Option<u32>,
        /// Through `allocate_handle`.
        handle: bool,
    },
    AllocRange {
        at: u64,
        size: u64,
    },
    FreeLive {
        pick: usize,
        /// By handle, when the allocation has one.
        by_handle: bool,
    },
    /// `deallocate_handle` of a handle gone stale.
    FreeStale {
        pick: usize,
    },
    FreeRandom {
        at: u64,
        size: u64,
    },
}

fn step(space: u64) -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (1..=48u64, prop::option::weighted(0.6, 0..7u32), any::<bool>())
            .prop_map(|(size, align_shift, handle)| Step::Alloc { size, align_shift, handle }),
        2 => (0..space, 1..=24u64).prop_map(|(at, size)| Step::AllocRange { at, size }),
        5 => (any::<usize>(), prop::bool::weighted(0.7))
            .prop_map(|(pick, by_handle)| Step::FreeLive { pick, by_handle }),
        2 => (0..space, 1..=24u64).prop_map(|(at, size)| Step::FreeRandom { at, size }),
        1 => any::<usize>().prop_map(|pick| Step::FreeStale { pick }),
    ]
}

/// The byte model of a space `[base, base + free.len())`.
struct Model {
    base: u64,
    free: Vec<bool>,
    /// Bytes ever added to the allocator.
    owned: Vec<bool>,
}

impl Model {
    fn idx(&self, a: u64) -> usize {
        (a - self.base) as usize
    }
    fn inside(&self, start: u64, len: u64) -> bool {
        start >= self.base && start - self.base + len <= self.free.len() as u64
    }
    fn all_free(&self, start: u64, len: u64) -> bool {
        self.inside(start, len)
            && self.free[self.idx(start)..][..len as usize]
                .iter()
                .all(|&f| f)
    }
    fn any_free(&self, start: u64, len: u64) -> bool {
        let i = self.idx(start);
        self.free[i..][..len as usize].iter().any(|&f| f)
    }
    fn set(&mut self, start: u64, len: u64, free: bool) {
        let i = self.idx(start);
        self.free[i..][..len as usize].fill(free);
        if free {
            self.owned[i..][..len as usize].fill(true);
        }
    }
    /// Bytes of the range ever added.
    fn owned_in(&self, start: u64, len: u64) -> u64 {
        let i = self.idx(start);
        self.owned[i..][..len as usize]
            .iter()
            .filter(|&&o| o)
            .count() as u64
    }
    /// Maximal free runs as `(start, inclusive end)`.
    fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.free.len() {
            if self.free[i] {
                let j = (i..self.free.len())
                    .find(|&j| !self.free[j])
                    .unwrap_or(self.free.len());
                runs.push((self.base + i as u64, self.base + (j as u64 - 1)));
                i = j;
            } else {
                i += 1;
            }
        }
        runs
    }
    /// Whether some run of `len` free bytes starts at a multiple of `align`.
    fn fits(&self, len: u64, align: u64) -> bool {
        (0..self.free.len() as u64).any(|i| {
            let a = self.base + i;
            a.is_multiple_of(align) && self.all_free(a, len)
        })
    }
}

fn check(r: &RangeAllocator, m: &Model) -> Result<(), TestCaseError> {
    let runs = m.runs();
    prop_assert_eq!(r.free_count(), m.free.iter().filter(|&&f| f).count() as u64);
    prop_assert_eq!(r.fragment_count(), runs.len());
    prop_assert_eq!(r.fragments().collect::<Vec<_>>(), runs);
    Ok(())
}

fn round(size: u64, g: u64) -> u64 {
    size.div_ceil(g) * g
}

/// How a case is set up.
#[derive(Clone, Copy)]
struct Setup {
    base: u64,
    /// Bytes in the space (a multiple of 8 × 16).
    space: u64,
    /// The default alignment.
    g: u64,
    /// Only every other eighth of the space is free at first.
    holes: bool,
    /// `allocate_range` and random frees start at multiples of `g`. Otherwise they may
    /// start anywhere, which leaves blocks whose start is not a multiple of the default
    /// alignment (and pieces too small to free on their own, so the final free-everything
    /// is skipped).
    aligned: bool,
}

/// Runs `steps` on the space of `setup`.
fn run(steps: Vec<Step>, setup: Setup) -> Result<(), TestCaseError> {
    let Setup {
        base,
        space,
        g,
        holes,
        aligned,
    } = setup;
    let pos = |at: u64| if aligned { at / g * g } else { at };
    let mut r = RangeAllocator::empty(g).unwrap();
    let mut m = Model {
        base,
        free: vec![false; space as usize],
        owned: vec![false; space as usize],
    };
    let piece = space / 8;
    for k in 0..8 {
        if !holes || k % 2 == 0 {
            let (s, len) = (base + k * piece, piece);
            r.deallocate(s, len).unwrap();
            m.set(s, len, true);
        }
    }
    check(&r, &m)?;
    // Whole allocations, with their handle if they have one; handles no longer live.
    let mut live: Vec<(u64, u64, Option<RangeHandle>)> = Vec::new();
    let mut stale: Vec<RangeHandle> = Vec::new();
    for st in steps {
        let before: Vec<_> = r.fragments().collect();
        let failed = match st {
            Step::Alloc {
                size,
                align_shift,
                handle,
            } => {
                let len = round(size, g);
                let (align_arg, align) = match align_shift {
                    None => (0, g),
                    Some(s) => (1 << s, 1 << s),
                };
                let got = if handle {
                    r.allocate_handle(size, align_arg)
                        .map(|h| (h.start(), Some(h)))
                } else {
                    r.allocate(size, align_arg).map(|a| (a, None))
                };
                match got {
                    Ok((a, h)) => {
                        prop_assert!(h.is_none_or(|h| h.size() == len), "handle size");
                        prop_assert_eq!(a % align, 0, "alignment {:#x} of {:#x}", align, a);
                        prop_assert!(
                            m.all_free(a, len),
                            "allocation [{a:#x}, +{len:#x}) not free"
                        );
                        m.set(a, len, false);
                        live.push((a, len, h));
                        false
                    }
                    Err(Error::NoSpace { .. }) => {
                        prop_assert!(
                            !m.fits(len, align),
                            "NoSpace, but {len:#x} aligned {align:#x} fits"
                        );
                        true
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("allocate: {e}"))),
                }
            }
            Step::AllocRange { at, size } => {
                let start = base + pos(at);
                let len = round(size, g);
                let ok = m.all_free(start, len);
                match r.allocate_range(start, size) {
                    Ok(()) => {
                        prop_assert!(
                            ok,
                            "allocate_range({start:#x}, {len:#x}) over non-free bytes"
                        );
                        m.set(start, len, false);
                        live.push((start, len, None));
                        false
                    }
                    Err(Error::RangeBusy { .. }) => {
                        prop_assert!(
                            !ok,
                            "allocate_range({start:#x}, {len:#x}) refused a free range"
                        );
                        true
                    }
                    Err(Error::Overflow { .. }) => {
                        prop_assert!(start.checked_add(len - 1).is_none());
                        true
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("allocate_range: {e}"))),
                }
            }
            Step::FreeLive { pick, by_handle } => {
                if live.is_empty() {
                    continue;
                }
                let (a, len, h) = live.swap_remove(pick % live.len());
                match h {
                    Some(h) if by_handle => r.deallocate_handle(h),
                    _ => r.deallocate(a, len),
                }
                .map_err(|e| TestCaseError::fail(format!("freeing a live allocation: {e}")))?;
                stale.extend(h);
                m.set(a, len, true);
                false
            }
            Step::FreeStale { pick } => {
                if stale.is_empty() {
                    continue;
                }
                let h = stale[pick % stale.len()];
                let (a, len) = (h.start(), h.size());
                match r.deallocate_handle(h) {
                    Ok(()) => {
                        // Its node holds its range again: that range was allocated.
                        prop_assert!(
                            !m.any_free(a, len) && m.owned_in(a, len) == len,
                            "a stale handle freed [{a:#x}, +{len:#x}), not all allocated"
                        );
                        m.set(a, len, true);
                        live.retain(|&(b, l, _)| b + (l - 1) < a || b > a + (len - 1));
                        false
                    }
                    Err(Error::StaleHandle { start, len: l, .. }) => {
                        prop_assert_eq!((start, l), (a, len));
                        prop_assert!(
                            !live.iter().any(|&(_, _, lh)| lh == Some(h)),
                            "a live handle refused"
                        );
                        true
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("stale handle: {e}"))),
                }
            }
            Step::FreeRandom { at, size } => {
                let at = pos(at);
                let start = base + at;
                // Whole multiples of `g` that stay inside the space.
                let len = round(size, g).min((space - at) / g * g);
                if len == 0 {
                    continue;
                }
                let overlaps = m.any_free(start, len);
                let owned = m.owned_in(start, len);
                let mixed = owned != 0 && owned != len;
                match r.deallocate(start, len) {
                    Ok(()) => {
                        prop_assert!(!overlaps, "a free over free bytes was accepted");
                        prop_assert!(
                            !mixed,
                            "a free over allocated and never-added bytes was accepted"
                        );
                        m.set(start, len, true);
                        // Live allocations it touched are no longer whole; forget them (the
                        // model keeps what is left of them allocated).
                        live.retain(|&(a, l, h)| {
                            let keep = a + (l - 1) < start || a > start + (len - 1);
                            if !keep {
                                stale.extend(h);
                            }
                            keep
                        });
                        false
                    }
                    Err(Error::DoubleFree { .. }) => {
                        prop_assert!(overlaps, "DoubleFree without overlap");
                        true
                    }
                    Err(Error::NotOwned { .. }) => {
                        prop_assert!(!overlaps && mixed, "NotOwned of a range that is not mixed");
                        true
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("deallocate: {e}"))),
                }
            }
        };
        if failed {
            prop_assert_eq!(
                r.fragments().collect::<Vec<_>>(),
                before,
                "a failed call changed something"
            );
        }
        check(&r, &m)?;
    }
    // Give everything back: the live allocations whole, then whatever else is not free.
    for (a, len, h) in live {
        match h {
            Some(h) if a % 2 == 0 => r.deallocate_handle(h),
            _ => r.deallocate(a, len),
        }
        .map_err(|e| TestCaseError::fail(format!("final free: {e}")))?;
        m.set(a, len, true);
    }
    check(&r, &m)?;
    if !aligned {
        return Ok(());
    }
    while let Some(i) = m.free.iter().position(|&f| !f) {
        // A run of allocated bytes, or of bytes never added (freeing that adds it).
        let j = (i..m.free.len())
            .find(|&j| m.free[j] || m.owned[j] != m.owned[i])
            .unwrap_or(m.free.len());
        let (s, len) = (base + i as u64, (j - i) as u64);
        r.deallocate(s, len)
            .map_err(|e| TestCaseError::fail(format!("final free of [{s:#x}, +{len:#x}): {e}")))?;
        m.set(s, len, true);
    }
    check(&r, &m)?;
    prop_assert_eq!(r.fragment_count(), 1);
    prop_assert_eq!(r.free_count(), space);
    prop_assert_eq!(r.fragments().next(), Some((base, base + (space - 1))));
    Ok(())
}

/// Default alignments 1, 2, 4, 8 and 16.
fn granule() -> impl Strategy<Value = u64> {
    (0..5u32).prop_map(|s| 1 << s)
}

fn setup(base: u64, space: u64, g: u64) -> Setup {
    Setup {
        base,
        space,
        g,
        holes: false,
        aligned: true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 2_500 }))]

    #[test]
    fn space_at_zero(g in granule(), steps in prop::collection::vec(step(256), 1..50)) {
        run(steps, setup(0, 256, g))?;
    }

    #[test]
    fn space_in_the_middle_with_holes(
        g in granule(),
        steps in prop::collection::vec(step(512), 1..60),
    ) {
        run(steps, Setup { holes: true, ..setup(0x7_0000, 512, g) })?;
    }

    #[test]
    fn space_at_the_top_of_u64(g in granule(), steps in prop::collection::vec(step(256), 1..50)) {
        run(steps, setup(u64::MAX - 255, 256, g))?;
    }

    #[test]
    fn long_sequences_on_a_tiny_space(
        g in granule(),
        steps in prop::collection::vec(step(128), 50..150),
    ) {
        run(steps, setup(0x1000, 128, g))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 2_000 }))]

    #[test]
    fn unaligned_fixed_ranges_and_frees(
        g in (1..5u32).prop_map(|s| 1u64 << s),
        holes in any::<bool>(),
        steps in prop::collection::vec(step(256), 1..60),
    ) {
        run(steps, Setup { holes, aligned: false, ..setup(0x10_0000, 256, g) })?;
    }
}
