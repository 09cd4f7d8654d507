//! Numbers that land on the edges where arithmetic breaks: small values, values just below
//! 2^64, powers of two and their neighbours, and anything at all.

use arbitrary::{Arbitrary, Result, Unstructured};

/// A `u64` biased towards interesting values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Num(pub u64);

impl<'a> Arbitrary<'a> for Num {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let v = match u.int_in_range(0u8..=4)? {
            0 => u64::from(u.arbitrary::<u16>()?),
            1 => u64::MAX - u64::from(u.arbitrary::<u16>()?),
            2 => {
                let shift = u.int_in_range(0u32..=63)?;
                let delta = i64::from(u.arbitrary::<i8>()?);
                (1u64 << shift).wrapping_add_signed(delta)
            }
            3 => u64::from(u.arbitrary::<u16>()?) << 12,
            _ => u.arbitrary::<u64>()?,
        };
        Ok(Num(v))
    }
}

/// A power of two most of the time, sometimes 0 or an arbitrary (possibly invalid) value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Align(pub u64);

impl<'a> Arbitrary<'a> for Align {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let v = match u.int_in_range(0u8..=9)? {
            0 => 0,
            1 => u.arbitrary::<Num>()?.0,
            _ => 1u64 << u.int_in_range(0u32..=63)?,
        };
        Ok(Align(v))
    }
}

/// A power of two up to `2^max_shift`, or 0.
pub fn small_pow2(u: &mut Unstructured<'_>, max_shift: u32) -> Result<u64> {
    Ok(match u.int_in_range(0..=max_shift + 1)? {
        0 => 0,
        s => 1u64 << (s - 1),
    })
}
