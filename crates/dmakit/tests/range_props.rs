//! Property tests of `RangeAllocator` against a reference model: a set of free granules.
//!
//! Each case is a random sequence of allocate / allocate_range / deallocate (of live
//! allocations, of random ranges, and of already-free ranges) on a small space, checked
//! after every step: allocations never overlap each other or free space, stay in the space
//! and keep their alignment; free-space accounting and the fragment count are exact;
//! `allocate_range` succeeds exactly when the model says the range is free; a free fails
//! with `DoubleFree` exactly when it overlaps free space; errors change nothing; and freeing
//! everything leaves one fragment.

use dmakit::alloc::RangeAllocator;
use dmakit::Error;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// Granule of the model (the allocator's default alignment in these tests).
const G: u64 = 16;

#[derive(Clone, Debug)]
enum Step {
    Alloc { granules: u64, align_shift: u32 },
    AllocRange { at: u64, granules: u64 },
    FreeLive { pick: usize },
    FreeRandom { at: u64, granules: u64 },
}

fn step(space: u64) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..=12u64, 0..6u32).prop_map(|(granules, align_shift)| Step::Alloc { granules, align_shift }),
        1 => (0..space, 1..=6u64).prop_map(|(at, granules)| Step::AllocRange { at, granules }),
        4 => any::<usize>().prop_map(|pick| Step::FreeLive { pick }),
        1 => (0..space, 1..=4u64).prop_map(|(at, granules)| Step::FreeRandom { at, granules }),
    ]
}

struct Model {
    base: u64,
    free: BTreeSet<u64>, // free granule indices
}

impl Model {
    fn range_free(&self, start: u64, len: u64) -> bool {
        (0..len / G).all(|i| self.free.contains(&((start - self.base) / G + i)))
    }
    fn any_free(&self, start: u64, len: u64) -> bool {
        (0..len / G).any(|i| self.free.contains(&((start - self.base) / G + i)))
    }
    fn set(&mut self, start: u64, len: u64, free: bool) {
        for i in 0..len / G {
            let g = (start - self.base) / G + i;
            if free {
                self.free.insert(g);
            } else {
                self.free.remove(&g);
            }
        }
    }
    fn fragments(&self) -> usize {
        let mut n = 0;
        let mut prev: Option<u64> = None;
        for &g in &self.free {
            if prev.is_none_or(|p| p + 1 != g) {
                n += 1;
            }
            prev = Some(g);
        }
        n
    }
}

fn check(r: &RangeAllocator, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(r.free_count(), m.free.len() as u64 * G);
    prop_assert_eq!(r.fragment_count(), m.fragments());
    // The allocator's fragments are exactly the model's maximal free runs.
    for (s, e) in r.fragments() {
        prop_assert!(
            m.range_free(s, e - s + 1),
            "fragment [{s:#x}, {e:#x}] not free in the model"
        );
    }
    Ok(())
}

fn run(steps: Vec<Step>, space_granules: u64, base: u64) -> Result<(), TestCaseError> {
    let space = space_granules * G;
    let mut r = RangeAllocator::new(base, space, G).unwrap();
    let mut m = Model {
        base,
        free: (0..space_granules).collect(),
    };
    let mut live: Vec<(u64, u64)> = Vec::new();
    for s in steps {
        match s {
            Step::Alloc {
                granules,
                align_shift,
            } => {
                let len = granules * G;
                let align = G << align_shift;
                match r.allocate(len, align) {
                    Ok(a) => {
                        prop_assert_eq!(a % align, 0, "alignment");
                        prop_assert!(a >= base && a + len <= base + space, "inside the space");
                        prop_assert!(
                            m.range_free(a, len),
                            "allocation [{a:#x}, +{len:#x}) overlaps"
                        );
                        m.set(a, len, false);
                        live.push((a, len));
                    }
                    Err(Error::NoSpace { .. }) => {
                        // No aligned run of free granules exists in the model either.
                        let fits = (0..space_granules).any(|g| {
                            let a = base + g * G;
                            a.is_multiple_of(align)
                                && a + len <= base + space
                                && m.range_free(a, len)
                        });
                        prop_assert!(
                            !fits,
                            "NoSpace but the model has room for {len:#x} aligned {align:#x}"
                        );
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
                }
            }
            Step::AllocRange { at, granules } => {
                let start = base + (at / G) * G;
                let len = granules * G;
                let ok = start + len <= base + space && m.range_free(start, len);
                let res = r.allocate_range(start, len);
                prop_assert_eq!(res.is_ok(), ok, "allocate_range({:#x}, {:#x})", start, len);
                if ok {
                    m.set(start, len, false);
                    live.push((start, len));
                }
            }
            Step::FreeLive { pick } => {
                if live.is_empty() {
                    continue;
                }
                let (a, len) = live.swap_remove(pick % live.len());
                r.deallocate(a, len)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                m.set(a, len, true);
            }
            Step::FreeRandom { at, granules } => {
                let start = base + (at / G) * G;
                let len = (granules * G).min(base + space - start);
                let overlaps = m.any_free(start, len);
                match r.deallocate(start, len) {
                    Ok(()) => {
                        prop_assert!(!overlaps, "a free over free space was accepted");
                        m.set(start, len, true);
                        // The freed space may cut live allocations; forget those.
                        live.retain(|&(a, l)| a + l <= start || a >= start + len);
                        // Whatever of them remains allocated is no longer tracked as live;
                        // mark it free-able by forgetting: the model keeps it allocated.
                    }
                    Err(Error::DoubleFree { .. }) => {
                        prop_assert!(overlaps, "DoubleFree without overlap")
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
                }
            }
        }
        check(&r, &m)?;
    }
    // Free everything still allocated (in the model's eyes) and expect one fragment.
    let allocated: Vec<u64> = (0..space_granules)
        .filter(|g| !m.free.contains(g))
        .collect();
    for g in allocated {
        r.deallocate(base + g * G, G)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        m.free.insert(g);
    }
    check(&r, &m)?;
    prop_assert_eq!(r.fragment_count(), 1);
    prop_assert_eq!(r.free_count(), space);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6_000, ..ProptestConfig::default() })]

    #[test]
    fn small_space_random_sequences(steps in prop::collection::vec(step(64 * G), 1..40)) {
        run(steps, 64, 0)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn offset_space_random_sequences(steps in prop::collection::vec(step(200 * G), 1..60)) {
        // A space that does not start at 0 and is not a power of two.
        run(steps, 200, 0x7_0000)?;
    }
}
