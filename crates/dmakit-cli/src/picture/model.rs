//! What a memory picture shows, as data: address spaces (a machine's physical addresses,
//! or a device's IO addresses), the stretches they are made of, and the things placed in
//! them. The same data is the `--json` output and the input of the drawing ([`super::map`]).

use serde::Serialize;

/// What a stretch of an address space is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// RAM.
    Ram,
    /// Nothing answers there.
    Hole,
    /// A device's registers (memory-mapped I/O).
    Mmio,
    /// Firmware's or the kernel's, not for allocation.
    Reserved,
    /// IO addresses mapped to memory.
    Mapped,
    /// IO addresses free for mappings.
    Free,
}

/// One stretch `[start, end)` of an address space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// What it is.
    pub area: Area,
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// What to call it.
    pub label: String,
}

/// What a thing placed in an address space is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Use {
    /// Memory a caller allocated.
    Allocation,
    /// A bounce buffer: where a device's data really went.
    Bounce,
    /// An IO mapping.
    Mapping,
    /// A free range of an IO space.
    Free,
}

/// `len` bytes from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Run {
    /// First address.
    pub start: u64,
    /// Bytes.
    pub len: u64,
}

impl Run {
    /// One past the last address (saturating: a run never wraps).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// One thing placed in an address space, and the runs it occupies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lane {
    /// What it is.
    #[serde(rename = "use")]
    pub what: Use,
    /// What to call it.
    pub label: String,
    /// Where it lies, in order.
    pub runs: Vec<Run>,
}

impl Lane {
    /// A lane of `runs`.
    pub fn new(what: Use, label: impl Into<String>, runs: Vec<Run>) -> Lane {
        Lane {
            what,
            label: label.into(),
            runs,
        }
    }

    /// Bytes over all runs.
    pub fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.len).sum()
    }
}

/// Whose addresses a space holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A machine's physical addresses.
    Physical,
    /// A device's IO addresses.
    Io,
}

/// An address space: the stretches it is made of, in order and without gaps, and the
/// things placed in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Space {
    /// What to call it.
    pub title: String,
    /// Whose addresses.
    pub kind: Kind,
    /// Its stretches, in address order, each starting where the previous ended.
    pub segments: Vec<Segment>,
    /// What lies in it.
    pub lanes: Vec<Lane>,
}

/// A picture: address spaces one under the other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Picture {
    /// What to call it.
    pub title: String,
    /// Its spaces.
    pub spaces: Vec<Space>,
}
