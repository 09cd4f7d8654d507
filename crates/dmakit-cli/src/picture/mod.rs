//! Pictures of memory as SVG: where things landed in a machine's physical address space
//! and in a device's IO address space ([`map`]), and the benchmark ratios ([`chart`]).
//!
//! | module | concept |
//! | --- | --- |
//! | [`model`] | the data a memory picture shows (also the `--json` output) |
//! | [`space`] | building spaces: holes between regions, free ranges between mappings |
//! | [`axis`] | the segmented axis that keeps pages visible in terabyte spaces |
//! | [`map`] | drawing a memory picture |
//! | [`log_scale`] | the logarithmic scale of ratios |
//! | [`chart`] | drawing the benchmark chart |
//! | [`style`] | sizes, colours, text helpers |

pub mod axis;
pub mod chart;
pub mod log_scale;
pub mod map;
pub mod model;
pub mod space;
pub mod style;

pub use model::{Area, Lane, Picture, Run, Segment, Space, Use};

/// `doc` as SVG text.
pub fn to_string(doc: &svg::Document) -> String {
    doc.to_string() + "\n"
}
