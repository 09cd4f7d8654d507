//! Order statistics of a handful of samples.

/// The `q`-quantile (`0.0 ..= 1.0`) of `samples` by linear interpolation between the two
/// nearest ranks (the same rule as NumPy's default): `q = 0.5` of `[1, 2, 3, 4]` is 2.5,
/// `q = 0.1` of eleven sorted values is the second. `NaN` for no samples; `q` is clamped.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// The median of `samples` (`NaN` for none).
pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let eleven: Vec<f64> = (0..11).rev().map(f64::from).collect();
        assert_eq!(percentile(&eleven, 0.1), 1.0);
        assert_eq!(percentile(&eleven, 0.5), 5.0);
        assert_eq!(percentile(&eleven, 0.9), 9.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.1) - 1.4).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 0.9), 7.0);
        assert_eq!(percentile(&[1.0, 9.0], 2.0), 9.0, "q is clamped");
        assert!(percentile(&[], 0.5).is_nan());
    }
}
