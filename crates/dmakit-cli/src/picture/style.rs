//! How pictures look: sizes, colours and the text helpers every drawing shares.

use super::model::{Area, Use};
use svg::node::element::Text;

/// Width of every picture.
pub const WIDTH: f64 = 1200.0;
/// Left and right margin.
pub const MARGIN: f64 = 16.0;
/// Where the labels of lanes end (they are right-aligned here).
pub const LABEL_RIGHT: f64 = 360.0;
/// Where the axis starts.
pub const AXIS_LEFT: f64 = 372.0;
/// Where the axis ends.
pub const AXIS_RIGHT: f64 = WIDTH - MARGIN;
/// Height of a space's bar.
pub const BAR_HEIGHT: f64 = 26.0;
/// Height of one lane.
pub const LANE_HEIGHT: f64 = 16.0;
/// The narrowest mark drawn, so a 100-byte allocation is still seen.
pub const MIN_MARK: f64 = 2.0;
/// The font of every text.
pub const FONT: &str = "DejaVu Sans, Verdana, sans-serif";
/// Labels longer than this many characters are cut.
pub const MAX_LABEL: usize = 58;
/// Average width of a character of an 11 px label, for deciding what fits.
pub const CHAR_WIDTH: f64 = 6.2;

/// The fill of a stretch of an address space.
pub fn area_fill(a: Area) -> &'static str {
    match a {
        Area::Ram => "#cde8c8",
        Area::Hole => "#f4f4f4",
        Area::Mmio => "#f7c98b",
        Area::Reserved => "#d5d5d5",
        Area::Mapped => "#a9cbee",
        Area::Free => "#ffffff",
    }
}

/// The fill of the marks of a lane.
pub fn use_fill(u: Use) -> &'static str {
    match u {
        Use::Allocation => "#2b6cb0",
        Use::Bounce => "#8e44ad",
        Use::Mapping => "#1b7f79",
        Use::Free => "#9a9a9a",
    }
}

/// The class name of an area (`class` attributes, so tests and stylesheets find them).
pub fn area_class(a: Area) -> &'static str {
    match a {
        Area::Ram => "ram",
        Area::Hole => "hole",
        Area::Mmio => "mmio",
        Area::Reserved => "reserved",
        Area::Mapped => "mapped",
        Area::Free => "free",
    }
}

/// The class name of a use.
pub fn use_class(u: Use) -> &'static str {
    match u {
        Use::Allocation => "allocation",
        Use::Bounce => "bounce",
        Use::Mapping => "mapping",
        Use::Free => "free",
    }
}

/// `s` cut to `max` characters, the cut marked with an ellipsis.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// A text of `size` px at (`x`, `y`), anchored `anchor` (`start`, `middle`, `end`).
pub fn text(content: impl Into<String>, x: f64, y: f64, size: f64, anchor: &str) -> Text {
    Text::new(content)
        .set("x", round(x))
        .set("y", round(y))
        .set("font-size", size)
        .set("text-anchor", anchor)
}

/// `v` rounded to two decimals (shorter files, same picture).
pub fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_cut_with_an_ellipsis() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("a longer label", 6), "a lon…");
        assert_eq!(cut("ééééé", 3), "éé…");
    }
}
