//! The benchmark chart as SVG: one row per (benchmark, peer) with the median ratio of
//! dmakit's time to the peer's as a dot and its 10th–90th percentile spread as a bar, on a
//! logarithmic scale with a line at 1 (below 1 dmakit is faster). A/A control rows, whose
//! ratio only shows the machine's noise, are grey.
//!
//! Rows are `g.row[data-name][data-peer][data-ratio]` holding `line.spread` and
//! `circle.ratio`; a row whose numbers are not finite and positive has neither and says
//! so.

use super::log_scale::{tick_label, LogScale};
use super::style::{self, *};
use dmakit_bench::{Report, Row};
use svg::node::element::{Circle, Group, Line, Title};
use svg::Document;

/// Height of a row.
const ROW: f64 = 18.0;
/// Where the first row starts.
const TOP: f64 = 78.0;

const FASTER: &str = "#2f855a";
const SLOWER: &str = "#c53030";
const CONTROL: &str = "#8a8a8a";

/// The chart of `report` as an SVG document.
pub fn document(report: &Report) -> Document {
    let scale = LogScale::covering(
        report
            .rows
            .iter()
            .flat_map(|r| [r.ratio, r.ratio_p10, r.ratio_p90]),
        AXIS_LEFT,
        AXIS_RIGHT - 60.0,
    );
    let bottom = TOP + ROW * report.rows.len() as f64;
    let height = bottom + 40.0;
    let mut stripes = Group::new().set("class", "stripes");
    let mut rows = Group::new().set("class", "rows");
    for (i, r) in report.rows.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        if i % 2 == 0 {
            stripes = stripes.add(stripe(y));
        }
        rows = rows.add(row(r, &scale, y));
    }
    Document::new()
        .set("width", WIDTH)
        .set("height", round(height))
        .set("viewBox", (0.0, 0.0, WIDTH, round(height)))
        .set("font-family", FONT)
        .add(background(height))
        .add(heading(report))
        .add(stripes)
        .add(grid(&scale, TOP - 6.0, bottom))
        .add(rows)
        .add(caption(&scale, bottom + 20.0))
}

/// A light band behind every other row, for following a row across.
fn stripe(y: f64) -> svg::node::element::Rectangle {
    svg::node::element::Rectangle::new()
        .set("class", "stripe")
        .set("x", MARGIN)
        .set("y", round(y))
        .set("width", WIDTH - 2.0 * MARGIN)
        .set("height", ROW)
        .set("fill", "#f5f7fa")
}

/// What the axis means, under it.
fn caption(scale: &LogScale, y: f64) -> Group {
    let one = scale.x(1.0).unwrap_or(AXIS_LEFT);
    Group::new()
        .set("class", "caption")
        .set("fill", "#444444")
        .add(style::text("← dmakit faster", one - 8.0, y, 11.0, "end"))
        .add(style::text("dmakit slower →", one + 8.0, y, 11.0, "start"))
        .add(style::text(
            "ratio of ns/op, logarithmic",
            AXIS_RIGHT,
            y,
            11.0,
            "end",
        ))
}

fn background(height: f64) -> svg::node::element::Rectangle {
    svg::node::element::Rectangle::new()
        .set("width", WIDTH)
        .set("height", round(height))
        .set("fill", "#ffffff")
}

fn heading(report: &Report) -> Group {
    let m = &report.meta;
    let rev: String = m.git_rev.chars().take(12).collect();
    let about = format!(
        "{} run, {} · git {rev} · {} ({} CPUs) · load {} → {}",
        if m.quick { "quick" } else { "full" },
        m.date,
        m.cpu,
        m.cpus,
        first_word(&m.load_start),
        first_word(&m.load_end),
    );
    Group::new()
        .set("class", "heading")
        .add(
            style::text(
                "dmakit bench: dmakit's time per operation ÷ the peer's (median, p10–p90 bar; below 1 dmakit is faster)",
                MARGIN,
                24.0,
                15.0,
                "start",
            )
            .set("font-weight", "bold"),
        )
        .add(style::text(about, MARGIN, 44.0, 11.0, "start").set("fill", "#444444"))
}

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or("?")
}

/// Vertical lines at the ticks (solid at 1), with their labels above.
fn grid(scale: &LogScale, top: f64, bottom: f64) -> Group {
    let mut g = Group::new().set("class", "grid");
    for v in scale.ticks() {
        let Some(x) = scale.x(v) else { continue };
        let one = v == 1.0;
        g = g
            .add(
                Line::new()
                    .set("x1", round(x))
                    .set("x2", round(x))
                    .set("y1", top)
                    .set("y2", round(bottom))
                    .set("stroke", if one { "#333333" } else { "#dddddd" })
                    .set("stroke-width", if one { 1.2 } else { 1.0 }),
            )
            .add(style::text(tick_label(v), x, top - 4.0, 10.0, "middle"));
    }
    g
}

fn colour(r: &Row) -> &'static str {
    match (r.is_control(), r.ratio < 1.0) {
        (true, _) => CONTROL,
        (false, true) => FASTER,
        (false, false) => SLOWER,
    }
}

/// One row: its label, its spread and its median, and the median as text.
fn row(r: &Row, scale: &LogScale, y: f64) -> Group {
    let mid = y + ROW / 2.0;
    let label = cut(&format!("{} vs {}", r.name, r.peer), MAX_LABEL);
    let mut g = Group::new()
        .set("class", if r.is_control() { "row control" } else { "row" })
        .set("data-name", r.name.as_str())
        .set("data-peer", r.peer.as_str())
        .set("data-ratio", r.ratio)
        .add(style::text(label, LABEL_RIGHT, mid + 4.0, 11.0, "end"))
        .add(Title::new(format!(
            "{} vs {}: ratio {:.3} (p10 {:.3}, p90 {:.3}); {:.1} ns/op vs {:.1} ns/op",
            r.name, r.peer, r.ratio, r.ratio_p10, r.ratio_p90, r.ns_per_op, r.peer_ns_per_op
        )));
    let points = (scale.x(r.ratio), scale.x(r.ratio_p10), scale.x(r.ratio_p90));
    let (Some(x), Some(x10), Some(x90)) = points else {
        return g.add(style::text(
            "no valid ratio",
            AXIS_LEFT,
            mid + 4.0,
            11.0,
            "start",
        ));
    };
    let c = colour(r);
    g = g
        .add(
            Line::new()
                .set("class", "spread")
                .set("x1", round(x10.min(x90)))
                .set("x2", round(x10.max(x90).max(x10.min(x90) + 1.0)))
                .set("y1", round(mid))
                .set("y2", round(mid))
                .set("stroke", c)
                .set("stroke-width", 4)
                .set("stroke-opacity", 0.45),
        )
        .add(
            Circle::new()
                .set("class", "ratio")
                .set("cx", round(x))
                .set("cy", round(mid))
                .set("r", 4)
                .set("fill", c),
        );
    let text_x = x10.max(x90).max(x) + 8.0;
    g.add(style::text(
        format!("{:.2}", r.ratio),
        text_x,
        mid + 4.0,
        10.0,
        "start",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmakit_bench::harness::Paired;
    use dmakit_bench::meta::Meta;

    fn row(name: &str, peer: &str, ratio: f64, p10: f64, p90: f64) -> Row {
        Row::new(
            name,
            peer,
            &Paired {
                ns_per_op: ratio * 10.0,
                peer_ns_per_op: 10.0,
                ratio,
                ratio_p10: p10,
                ratio_p90: p90,
            },
        )
    }

    #[test]
    fn one_row_per_comparison_with_its_spread_and_median() {
        let report = Report {
            meta: Meta::start(true, 5, 3),
            rows: vec![
                row("range/x", "offset-allocator", 0.5, 0.4, 0.7),
                row("range/a_a", dmakit_bench::CONTROL_PEER, 1.01, 0.97, 1.04),
                row("dma/y", "memcpy", 3.0, 2.5, 4.0),
                row("dma/broken", "memcpy", f64::NAN, 0.0, f64::INFINITY),
            ],
        };
        let text = crate::picture::to_string(&document(&report));
        let doc = roxmltree::Document::parse(&text).unwrap();
        let rows: Vec<_> = doc
            .descendants()
            .filter(|n| {
                n.attribute("class")
                    .is_some_and(|c| c.split_whitespace().any(|w| w == "row"))
            })
            .collect();
        assert_eq!(rows.len(), 4);
        let names: Vec<_> = rows
            .iter()
            .map(|r| r.attribute("data-name").unwrap())
            .collect();
        assert_eq!(names, ["range/x", "range/a_a", "dma/y", "dma/broken"]);
        assert_eq!(rows[1].attribute("class"), Some("row control"));
        let count = |r: &roxmltree::Node<'_, '_>, class: &str| {
            r.descendants()
                .filter(|n| n.attribute("class") == Some(class))
                .count()
        };
        for r in &rows[..3] {
            assert_eq!((count(r, "spread"), count(r, "ratio")), (1, 1));
        }
        assert_eq!(
            (count(&rows[3], "spread"), count(&rows[3], "ratio")),
            (0, 0)
        );
        let cx = |r: &roxmltree::Node<'_, '_>| -> f64 {
            let c = r.descendants().find(|n| n.has_tag_name("circle")).unwrap();
            c.attribute("cx").unwrap().parse().unwrap()
        };
        assert!(cx(&rows[0]) < cx(&rows[1]) && cx(&rows[1]) < cx(&rows[2]));
        let fills: Vec<_> = rows[..3]
            .iter()
            .map(|r| {
                let c = r.descendants().find(|n| n.has_tag_name("circle")).unwrap();
                c.attribute("fill").unwrap().to_string()
            })
            .collect();
        assert_eq!(fills, [FASTER, CONTROL, SLOWER]);
        assert!(text.contains("no valid ratio"));
    }
}
