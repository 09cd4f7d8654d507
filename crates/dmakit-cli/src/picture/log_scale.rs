//! A logarithmic scale for ratios: 0.5 (twice as fast) and 2 (twice as slow) lie the same
//! distance either side of 1.

/// Maps positive values between `lo` and `hi` to x between `left` and `right`.
#[derive(Clone, Copy, Debug)]
pub struct LogScale {
    lo: f64,
    hi: f64,
    left: f64,
    right: f64,
}

impl LogScale {
    /// A scale covering every finite positive value of `values`, and 1, with a margin.
    pub fn covering(values: impl IntoIterator<Item = f64>, left: f64, right: f64) -> LogScale {
        let (mut lo, mut hi) = (1.0f64, 1.0f64);
        for v in values.into_iter().filter(|v| v.is_finite() && *v > 0.0) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        LogScale {
            lo: lo / 1.25,
            hi: hi * 1.25,
            left,
            right,
        }
    }

    /// The x of `v` (clamped to the scale; `None` for a value that is not finite and
    /// positive).
    pub fn x(&self, v: f64) -> Option<f64> {
        if !(v.is_finite() && v > 0.0) {
            return None;
        }
        let f = (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln());
        Some(self.left + f.clamp(0.0, 1.0) * (self.right - self.left))
    }

    /// The values 1, 2 and 5 times a power of ten inside the scale, in order.
    pub fn ticks(&self) -> Vec<f64> {
        let mut out = Vec::new();
        let first = self.lo.log10().floor() as i32;
        let last = self.hi.log10().ceil() as i32;
        for e in first..=last {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powi(e);
                if (self.lo..=self.hi).contains(&v) {
                    out.push(v);
                }
            }
        }
        out
    }
}

/// `v` as a tick label: `0.05`, `0.5`, `1`, `20`.
pub fn tick_label(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_always_inside_and_halves_mirror_doubles() {
        let s = LogScale::covering([0.5, 2.0, f64::NAN, 0.0, f64::INFINITY], 0.0, 100.0);
        let one = s.x(1.0).unwrap();
        assert!((one - 50.0).abs() < 1e-9);
        let (half, double) = (s.x(0.5).unwrap(), s.x(2.0).unwrap());
        assert!(((one - half) - (double - one)).abs() < 1e-9);
        assert_eq!(s.x(f64::NAN), None);
        assert_eq!(s.x(-1.0), None);
        assert_eq!(s.ticks(), vec![0.5, 1.0, 2.0]);
        let narrow = LogScale::covering([1.01], 0.0, 1.0);
        assert!(narrow.ticks().contains(&1.0));
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(20.0), "20");
    }
}
