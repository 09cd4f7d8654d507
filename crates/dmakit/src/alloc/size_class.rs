//! Size classes for segregated-fit allocation (the scheme of TLSF and of the
//! `offset-allocator` crate).
//!
//! Lengths below [`SL_COUNT`] have a class each (class `n`). A longer length `n` with
//! `fl = floor(log2 n)` falls in class `(fl - SL_BITS + 1) · SL_COUNT + sl`, `sl` the next
//! [`SL_BITS`] bits below the leading one: each power-of-two range is cut into [`SL_COUNT`]
//! classes of equal width, numbered like the exponent and mantissa of a small float. Every
//! block in a class is at least the class's minimum; every block in a *higher* class is
//! longer than every length of a lower one. Searching from [`ceil_class`] therefore finds a
//! block that surely fits in O(1) with two bitmap lookups; only the class of
//! [`floor_class`] can hold blocks that may or may not fit.
//!
//! Internal to the crate; the unit test `module_example` shows its use.

/// Bits of second-level index.
pub const SL_BITS: u32 = 3;
/// Classes per power of two.
pub const SL_COUNT: usize = 1 << SL_BITS;
/// Number of classes: one group of [`SL_COUNT`] for the lengths below it, and one for each
/// power of two from 2^SL_BITS to 2^63.
pub const CLASSES: usize = (64 - SL_BITS as usize + 1) * SL_COUNT;

/// Groups of [`SL_COUNT`] classes (at most 64: one bit each in the first level).
const GROUPS: usize = CLASSES / SL_COUNT;

/// The class whose range holds `n` (`n ≥ 1`).
#[inline]
pub fn floor_class(n: u64) -> usize {
    debug_assert!(n > 0);
    if n < SL_COUNT as u64 {
        return n as usize;
    }
    let fl = 63 - n.leading_zeros();
    let sl = (n >> (fl - SL_BITS)) as usize & (SL_COUNT - 1);
    ((fl - SL_BITS + 1) as usize) << SL_BITS | sl
}

/// The lowest class all of whose blocks are at least `n` long, or `None` past the top:
/// the class after that of `n - 1` (every length in a higher class is longer than `n - 1`).
#[inline]
pub fn ceil_class(n: u64) -> Option<usize> {
    if n <= 1 {
        return Some(n as usize);
    }
    let c = floor_class(n - 1) + 1;
    (c < CLASSES).then_some(c)
}

/// Two-level bitmap of non-empty classes.
#[derive(Clone, Debug)]
pub struct ClassMap {
    top: u64,
    second: [u8; GROUPS],
}

impl Default for ClassMap {
    fn default() -> Self {
        ClassMap {
            top: 0,
            second: [0; GROUPS],
        }
    }
}

impl ClassMap {
    /// Marks class `c` non-empty.
    #[inline]
    pub fn set(&mut self, c: usize) {
        self.second[c / SL_COUNT] |= 1 << (c % SL_COUNT);
        self.top |= 1 << (c / SL_COUNT);
    }

    /// Marks class `c` empty.
    #[inline]
    pub fn clear(&mut self, c: usize) {
        let fl = c / SL_COUNT;
        self.second[fl] &= !(1 << (c % SL_COUNT));
        if self.second[fl] == 0 {
            self.top &= !(1 << fl);
        }
    }

    /// The lowest non-empty class `≥ c` (`None` for `c` past the last class).
    #[inline]
    pub fn first_at_or_above(&self, c: usize) -> Option<usize> {
        if c >= CLASSES {
            return None;
        }
        let fl = c / SL_COUNT;
        let sl = c % SL_COUNT;
        let here = self.second[fl] & (0xFFu8 << sl);
        if here != 0 {
            return Some(fl * SL_COUNT + here.trailing_zeros() as usize);
        }
        let above = if fl + 1 >= GROUPS {
            0
        } else {
            self.top & (!0u64 << (fl + 1))
        };
        if above == 0 {
            return None;
        }
        let fl2 = above.trailing_zeros() as usize;
        Some(fl2 * SL_COUNT + self.second[fl2].trailing_zeros() as usize)
    }
}

/// The smallest length in class `c`.
#[cfg(test)]
pub fn class_min(c: usize) -> u64 {
    if c < SL_COUNT {
        return c as u64;
    }
    let group = (c >> SL_BITS) as u32;
    ((SL_COUNT | (c & (SL_COUNT - 1))) as u64) << (group - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_example() {
        // 16 and 17 share a class (two units wide between 16 and 32): a block of 17 surely
        // fits only from the next class up.
        assert_eq!(floor_class(16), floor_class(17));
        assert_eq!(ceil_class(17), Some(floor_class(17) + 1));
        assert!(class_min(ceil_class(17).unwrap()) >= 17);
        let mut free = ClassMap::default();
        free.set(floor_class(64));
        assert_eq!(
            free.first_at_or_above(ceil_class(40).unwrap()),
            Some(floor_class(64))
        );
    }

    #[test]
    fn classes_are_monotonic_and_ceil_is_a_guarantee() {
        let mut prev = 0;
        for n in 1..5000u64 {
            let c = floor_class(n);
            assert!(c >= prev, "class order broke at {n}");
            prev = c;
            assert!(
                class_min(c) <= n,
                "n {n} below its class minimum {}",
                class_min(c)
            );
            let up = ceil_class(n).unwrap();
            assert!(
                class_min(up) >= n,
                "ceil class of {n} has min {}",
                class_min(up)
            );
            assert!(up <= floor_class(n) + 1);
            if up > 0 {
                assert!(class_min(up - 1) < n, "ceil class of {n} is not the lowest");
            }
        }
        for c in 1..CLASSES {
            assert_eq!(
                floor_class(class_min(c)),
                c,
                "class {c} starts at its minimum"
            );
        }
        assert_eq!(floor_class(u64::MAX), CLASSES - 1);
        assert_eq!(ceil_class(u64::MAX), None);
    }

    #[test]
    fn bitmap_search() {
        let mut m = ClassMap::default();
        assert_eq!(m.first_at_or_above(0), None);
        m.set(100);
        m.set(7);
        assert_eq!(m.first_at_or_above(0), Some(7));
        assert_eq!(m.first_at_or_above(8), Some(100));
        assert_eq!(m.first_at_or_above(101), None);
        m.clear(100);
        assert_eq!(m.first_at_or_above(8), None);
        m.set(CLASSES - 1);
        assert_eq!(m.first_at_or_above(CLASSES - 1), Some(CLASSES - 1));
    }
}
