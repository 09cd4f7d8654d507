//! The horizontal axis of a memory picture.
//!
//! Address spaces span terabytes while a buffer is a few pages, so a linear axis would
//! show nothing. Each segment of the space gets a width that grows with the logarithm of
//! its size (holes half as much), and addresses are linear *within* a segment: a page in a
//! 64 MiB RAM region is still thin, but every region, hole and window is visible, and
//! everything placed in a region is drawn where it lies in that region.

use super::model::Segment;

/// One segment's stretch of the axis.
#[derive(Clone, Copy, Debug)]
struct Cut {
    start: u64,
    end: u64,
    x0: f64,
    x1: f64,
}

/// Maps addresses of a space to x coordinates between two edges.
#[derive(Clone, Debug)]
pub struct Axis {
    cuts: Vec<Cut>,
    right: f64,
}

/// How much width a segment of `len` bytes deserves, relative to the others.
fn weight(len: u64, hole: bool) -> f64 {
    let pages = (len as f64 / 4096.0).max(1.0);
    let w = 1.5 + pages.log2();
    if hole {
        w / 2.0
    } else {
        w
    }
}

impl Axis {
    /// The axis of `segments` (in order, without gaps) from x `left` to `right`.
    pub fn new(segments: &[Segment], left: f64, right: f64) -> Axis {
        let weights: Vec<f64> = segments
            .iter()
            .map(|s| weight(s.end - s.start, s.area == super::model::Area::Hole))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut x = left;
        let cuts = segments
            .iter()
            .zip(&weights)
            .map(|(s, w)| {
                let x0 = x;
                x += (right - left) * w / total;
                Cut {
                    start: s.start,
                    end: s.end,
                    x0,
                    x1: x,
                }
            })
            .collect();
        Axis { cuts, right }
    }

    /// The x of `addr` (the left edge before the first segment, the right one after the
    /// last).
    pub fn x(&self, addr: u64) -> f64 {
        let i = self.cuts.partition_point(|c| c.end <= addr);
        match self.cuts.get(i) {
            None => self.right,
            Some(c) if addr < c.start => c.x0,
            Some(c) => {
                let f = (addr - c.start) as f64 / (c.end - c.start) as f64;
                c.x0 + f * (c.x1 - c.x0)
            }
        }
    }

    /// Where each segment is drawn: `(x0, x1)` in segment order.
    pub fn spans(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.cuts.iter().map(|c| (c.x0, c.x1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picture::model::Area;

    fn seg(area: Area, start: u64, end: u64) -> Segment {
        Segment {
            area,
            start,
            end,
            label: String::new(),
        }
    }

    #[test]
    fn addresses_are_linear_within_a_segment_and_every_segment_is_visible() {
        let segs = [
            seg(Area::Hole, 0, 0x10_0000),
            seg(Area::Ram, 0x10_0000, 0x4000_0000),
            seg(Area::Mmio, 0x4000_0000, 0x4000_1000),
        ];
        let a = Axis::new(&segs, 100.0, 1100.0);
        assert_eq!(a.x(0), 100.0);
        assert_eq!(a.x(u64::MAX), 1100.0);
        let spans: Vec<_> = a.spans().collect();
        assert!(spans.iter().all(|(x0, x1)| x1 - x0 > 10.0), "{spans:?}");
        assert!((spans[2].1 - 1100.0).abs() < 1e-9);
        let mid = a.x(0x10_0000 + (0x4000_0000 - 0x10_0000) / 2);
        assert!((mid - (spans[1].0 + spans[1].1) / 2.0).abs() < 1e-6);
        assert_eq!(a.x(0x4000_0000), spans[1].1, "a run ending with RAM");
        assert!(a.x(0x1000) < a.x(0x2000));
    }

    #[test]
    fn an_empty_axis_puts_everything_at_its_edges() {
        let a = Axis::new(&[], 0.0, 10.0);
        assert_eq!(a.x(5), 10.0);
    }
}
