//! A memory picture as SVG: each address space is a bar of its segments (RAM, holes,
//! device windows; or mapped and free IO addresses) with the addresses where they begin,
//! and under it one lane per thing placed in it (an allocation, a bounce buffer, a
//! mapping, a free range) with a mark where each of its runs lies.
//!
//! The elements carry classes and `data-` attributes (`g.space`, `rect.segment.ram`,
//! `g.lane.allocation[data-label][data-runs]`, `rect.run`) so the picture can be checked
//! and restyled.

use super::axis::Axis;
use super::model::{Lane, Picture, Segment, Space};
use super::style::{self, *};
use crate::size::human;
use svg::node::element::{Group, Line, Rectangle, Title};
use svg::Document;

/// Height of a space's title line.
const TITLE: f64 = 22.0;
/// Height of the address line under a bar.
const TICKS: f64 = 18.0;
/// Space after a space.
const GAP: f64 = 22.0;

/// The picture as an SVG document.
pub fn document(p: &Picture) -> Document {
    let mut y = 40.0;
    let mut body = Group::new();
    for s in &p.spaces {
        let (g, h) = space(s, y);
        body = body.add(g);
        y += h + GAP;
    }
    let (legend, h) = legend(y);
    let height = y + h + MARGIN;
    Document::new()
        .set("width", WIDTH)
        .set("height", round(height))
        .set("viewBox", (0.0, 0.0, WIDTH, round(height)))
        .set("font-family", FONT)
        .add(background(height))
        .add(style::text(&p.title, MARGIN, 24.0, 16.0, "start").set("font-weight", "bold"))
        .add(body)
        .add(legend)
}

fn background(height: f64) -> Rectangle {
    Rectangle::new()
        .set("width", WIDTH)
        .set("height", round(height))
        .set("fill", "#ffffff")
}

/// One space drawn from `y` down: its group and height.
fn space(s: &Space, y: f64) -> (Group, f64) {
    let axis = Axis::new(&s.segments, AXIS_LEFT, AXIS_RIGHT);
    let bar_y = y + TITLE;
    let mut g = Group::new()
        .set("class", format!("space {}", kind_class(s)))
        .set("data-title", s.title.as_str())
        .add(style::text(&s.title, MARGIN, y + 14.0, 13.0, "start").set("font-weight", "bold"))
        .add(bar(s, &axis, bar_y))
        .add(ticks(s, &axis, bar_y + BAR_HEIGHT + 12.0));
    let mut lane_y = bar_y + BAR_HEIGHT + TICKS;
    for l in &s.lanes {
        g = g.add(lane(l, &axis, lane_y));
        lane_y += LANE_HEIGHT;
    }
    (g, lane_y - y)
}

fn kind_class(s: &Space) -> &'static str {
    match s.kind {
        super::model::Kind::Physical => "physical",
        super::model::Kind::Io => "io",
    }
}

/// The bar of segments, each with a tooltip and, where it fits, its label.
fn bar(s: &Space, axis: &Axis, y: f64) -> Group {
    let mut g = Group::new().set("class", "bar");
    for (seg, (x0, x1)) in s.segments.iter().zip(axis.spans()) {
        g = g.add(segment_rect(seg, x0, x1, y));
        let w = x1 - x0;
        if (seg.label.chars().count() as f64) * CHAR_WIDTH + 6.0 < w {
            let mid = (x0 + x1) / 2.0;
            g = g.add(style::text(&seg.label, mid, y + 17.0, 11.0, "middle"));
        }
    }
    g
}

fn segment_rect(seg: &Segment, x0: f64, x1: f64, y: f64) -> Rectangle {
    let tip = format!(
        "{} {:#x}-{:#x} ({})",
        seg.label,
        seg.start,
        seg.end,
        human(seg.end - seg.start)
    );
    Rectangle::new()
        .set("class", format!("segment {}", area_class(seg.area)))
        .set("x", round(x0))
        .set("y", y)
        .set("width", round((x1 - x0).max(0.5)))
        .set("height", BAR_HEIGHT)
        .set("fill", area_fill(seg.area))
        .set("stroke", "#555555")
        .set("stroke-width", 0.5)
        .add(Title::new(tip))
}

/// The address where each segment begins (and where the last ends), left to right,
/// leaving out those that would overlap the one before.
fn ticks(s: &Space, axis: &Axis, y: f64) -> Group {
    let mut g = Group::new().set("class", "ticks").set("fill", "#444444");
    let mut free_from = f64::MIN;
    let marks = s
        .segments
        .iter()
        .map(|seg| seg.start)
        .chain(s.segments.last().map(|seg| seg.end));
    for addr in marks {
        let label = format!("{addr:#x}");
        let x = axis.x(addr);
        let half = label.len() as f64 * 2.8;
        let x = x.clamp(AXIS_LEFT + half, AXIS_RIGHT - half);
        if x - half < free_from {
            continue;
        }
        free_from = x + half + 6.0;
        g = g.add(style::text(label, x, y, 9.0, "middle"));
    }
    g
}

/// One lane: its label, a guide line, and a mark per run (runs closer than a mark merge).
fn lane(l: &Lane, axis: &Axis, y: f64) -> Group {
    let mid = y + LANE_HEIGHT / 2.0;
    let mut g = Group::new()
        .set("class", format!("lane {}", use_class(l.what)))
        .set("data-label", l.label.as_str())
        .set("data-runs", l.runs.len())
        .set("data-bytes", l.bytes())
        .add(style::text(
            cut(&l.label, MAX_LABEL),
            LABEL_RIGHT,
            mid + 4.0,
            11.0,
            "end",
        ))
        .add(guide(mid))
        .add(Title::new(runs_tip(l)));
    for (x0, x1) in marks(l, axis) {
        g = g.add(
            Rectangle::new()
                .set("class", "run")
                .set("x", round(x0))
                .set("y", y + 3.0)
                .set("width", round(x1 - x0))
                .set("height", LANE_HEIGHT - 6.0)
                .set("fill", use_fill(l.what)),
        );
    }
    g
}

fn guide(y: f64) -> Line {
    Line::new()
        .set("x1", AXIS_LEFT)
        .set("x2", AXIS_RIGHT)
        .set("y1", round(y))
        .set("y2", round(y))
        .set("stroke", "#e3e3e3")
        .set("stroke-width", 1)
}

/// The lane's runs as text: the first few, and how many in all.
fn runs_tip(l: &Lane) -> String {
    let mut parts: Vec<String> = l
        .runs
        .iter()
        .take(8)
        .map(|r| format!("{:#x}+{:#x}", r.start, r.len))
        .collect();
    if l.runs.len() > 8 {
        parts.push(format!("… {} runs in all", l.runs.len()));
    }
    format!("{}: {}", l.label, parts.join(", "))
}

/// The x spans of a lane's marks: one per run, at least [`MIN_MARK`] wide, merged where
/// they would touch.
pub fn marks(l: &Lane, axis: &Axis) -> Vec<(f64, f64)> {
    let mut spans: Vec<(f64, f64)> = l
        .runs
        .iter()
        .map(|r| {
            let x0 = axis.x(r.start);
            (x0, axis.x(r.end()).max(x0 + MIN_MARK))
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (x0, x1) in spans {
        match out.last_mut() {
            Some(last) if x0 <= last.1 + 0.5 => last.1 = last.1.max(x1),
            _ => out.push((x0, x1)),
        }
    }
    out
}

/// A key to the colours, drawn from `y`: its group and height.
fn legend(y: f64) -> (Group, f64) {
    use super::model::{Area, Use};
    let areas = [
        Area::Ram,
        Area::Hole,
        Area::Mmio,
        Area::Reserved,
        Area::Mapped,
        Area::Free,
    ];
    let uses = [Use::Allocation, Use::Bounce, Use::Mapping, Use::Free];
    let mut g = Group::new().set("class", "legend");
    let mut x = MARGIN;
    let keys = areas
        .iter()
        .map(|a| (area_fill(*a), area_class(*a).to_string(), true))
        .chain(uses.iter().map(|u| {
            let name = format!("{} (lane)", use_class(*u));
            (use_fill(*u), name, false)
        }));
    for (fill, name, outlined) in keys {
        let swatch = Rectangle::new()
            .set("x", round(x))
            .set("y", y)
            .set("width", 14)
            .set("height", 12)
            .set("fill", fill)
            .set("stroke", if outlined { "#555555" } else { "none" })
            .set("stroke-width", 0.5);
        g = g
            .add(swatch)
            .add(style::text(&name, x + 18.0, y + 10.0, 11.0, "start"));
        x += 28.0 + name.len() as f64 * CHAR_WIDTH;
    }
    (g, 16.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picture::model::{Area, Run, Use};

    #[test]
    fn runs_closer_than_a_mark_merge_and_tiny_runs_are_still_seen() {
        let segs = [Segment {
            area: Area::Ram,
            start: 0,
            end: 1 << 30,
            label: "RAM".into(),
        }];
        let axis = Axis::new(&segs, 0.0, 1000.0);
        let run = |start, len| Run { start, len };
        let l = Lane::new(
            Use::Allocation,
            "x",
            vec![run(0x1000, 0x64), run(0x2000, 0x1000), run(1 << 29, 0x1000)],
        );
        let m = marks(&l, &axis);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m.iter().all(|(a, b)| b - a >= MIN_MARK));
        assert!((m[1].0 - 500.0).abs() < 1e-6);
    }
}
