//! Building the spaces of a picture: a physical space from the regions a machine has
//! (the gaps between them become holes), an IO space from its window and its mappings
//! (what no mapping covers is free).

use super::model::{Area, Kind, Lane, Run, Segment, Space, Use};

impl Space {
    /// A physical space from `regions` (any order; an overlap is cut off the later one)
    /// starting at address 0, the gaps filled with holes, with `lanes` placed in it.
    pub fn physical(title: impl Into<String>, regions: Vec<Segment>, lanes: Vec<Lane>) -> Space {
        Space {
            title: title.into(),
            kind: Kind::Physical,
            segments: tile(regions, Some(0), |start, end| Segment {
                area: Area::Hole,
                start,
                end,
                label: "hole".into(),
            }),
            lanes,
        }
    }

    /// An IO space `[base, base + len)` with `mappings` in it: its segments are the
    /// mapped runs and the free ranges between them, its lanes the mappings and then one
    /// per free range.
    pub fn io(title: impl Into<String>, base: u64, len: u64, mappings: Vec<Lane>) -> Space {
        let end = base.saturating_add(len);
        let mut used: Vec<Run> = mappings.iter().flat_map(|l| l.runs.clone()).collect();
        used.sort_by_key(|r| r.start);
        let free = complement(base, end, &used);
        Space::io_with_free(title, mappings, free)
    }

    /// An IO space of `mappings` and the `free` ranges its allocator reports (together
    /// they make the whole space).
    pub fn io_with_free(title: impl Into<String>, mappings: Vec<Lane>, free: Vec<Run>) -> Space {
        let used = mappings.iter().flat_map(|l| l.runs.iter().copied());
        let segments: Vec<Segment> = used
            .map(|r| segment(Area::Mapped, r, "mapped"))
            .chain(free.iter().map(|r| segment(Area::Free, *r, "free")))
            .collect();
        // What neither a mapping nor a free range covers is in use by something not drawn.
        let segments = tile(segments, None, |start, end| Segment {
            area: Area::Mapped,
            start,
            end,
            label: "in use".into(),
        });
        let free_lanes = free.iter().map(|r| {
            let label = format!("free {:#x}+{:#x}", r.start, r.len);
            Lane::new(Use::Free, label, vec![*r])
        });
        Space {
            title: title.into(),
            kind: Kind::Io,
            segments,
            lanes: mappings.into_iter().chain(free_lanes).collect(),
        }
    }
}

/// `segments` in address order without gaps or overlaps, from `from` (else the first
/// segment's start): an overlap is cut off the later segment, a gap filled with `gap`.
fn tile(
    mut segments: Vec<Segment>,
    from: Option<u64>,
    gap: impl Fn(u64, u64) -> Segment,
) -> Vec<Segment> {
    segments.sort_by_key(|r| (r.start, r.end));
    let mut out = Vec::new();
    let mut at = from.or(segments.first().map(|s| s.start)).unwrap_or(0);
    for mut r in segments {
        r.start = r.start.max(at);
        if r.start >= r.end {
            continue;
        }
        if r.start > at {
            out.push(gap(at, r.start));
        }
        at = r.end;
        out.push(r);
    }
    out
}

fn segment(area: Area, r: Run, label: &str) -> Segment {
    Segment {
        area,
        start: r.start,
        end: r.end(),
        label: label.into(),
    }
}

/// The parts of `[start, end)` that no run of `used` (sorted by start) covers.
pub fn complement(start: u64, end: u64, used: &[Run]) -> Vec<Run> {
    let mut free = Vec::new();
    let mut at = start;
    for r in used {
        let (s, e) = (r.start.clamp(start, end), r.end().clamp(start, end));
        if s > at {
            free.push(Run {
                start: at,
                len: s - at,
            });
        }
        at = at.max(e);
    }
    if end > at {
        free.push(Run {
            start: at,
            len: end - at,
        });
    }
    free
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(area: Area, start: u64, end: u64) -> Segment {
        Segment {
            area,
            start,
            end,
            label: String::new(),
        }
    }

    #[test]
    fn gaps_become_holes_and_overlaps_are_cut() {
        let s = Space::physical(
            "m",
            vec![
                region(Area::Mmio, 0x9000, 0xA000),
                region(Area::Ram, 0x1000, 0x4000),
                region(Area::Ram, 0x3000, 0x5000),
                region(Area::Ram, 0x6000, 0x6000),
            ],
            Vec::new(),
        );
        let got: Vec<_> = s
            .segments
            .iter()
            .map(|s| (s.area, s.start, s.end))
            .collect();
        assert_eq!(
            got,
            vec![
                (Area::Hole, 0, 0x1000),
                (Area::Ram, 0x1000, 0x4000),
                (Area::Ram, 0x4000, 0x5000),
                (Area::Hole, 0x5000, 0x9000),
                (Area::Mmio, 0x9000, 0xA000),
            ]
        );
    }

    #[test]
    fn an_io_space_is_its_mappings_and_the_free_ranges_between() {
        let run = |start, len| Run { start, len };
        let maps = vec![
            Lane::new(Use::Mapping, "b", vec![run(0x5000, 0x1000)]),
            Lane::new(Use::Mapping, "a", vec![run(0x1000, 0x2000)]),
        ];
        let s = Space::io("io", 0x1000, 0x8000, maps);
        let got: Vec<_> = s
            .segments
            .iter()
            .map(|s| (s.area, s.start, s.end))
            .collect();
        assert_eq!(
            got,
            vec![
                (Area::Mapped, 0x1000, 0x3000),
                (Area::Free, 0x3000, 0x5000),
                (Area::Mapped, 0x5000, 0x6000),
                (Area::Free, 0x6000, 0x9000),
            ]
        );
        let free: Vec<_> = s.lanes.iter().filter(|l| l.what == Use::Free).collect();
        assert_eq!(free.len(), 2);
        assert_eq!(free[0].label, "free 0x3000+0x2000");
        assert_eq!(complement(0, 0x10, &[run(0, 0x10)]), vec![]);
        assert_eq!(complement(0, 0x10, &[]), vec![run(0, 0x10)]);
    }
}
