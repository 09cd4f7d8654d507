//! Benchmark groups, one file each.

pub mod descriptor;
pub mod dma;
pub mod prepare;
pub mod range;
pub mod sim_dma;
pub mod threads;

use crate::progress::Progress;
use crate::{Options, Row};

/// A group: how many rows it plans, and how to run it.
pub struct Group {
    /// Its name (the first part of its rows' names).
    pub name: &'static str,
    /// Rows it plans for these options (for the progress percentage).
    pub planned: fn(&Options) -> usize,
    /// Runs it.
    pub run: fn(&Options, &mut Progress) -> Vec<Row>,
}

/// Every group, in the order a run measures them.
pub fn all() -> Vec<Group> {
    vec![
        Group {
            name: "range",
            planned: range::planned,
            run: range::run,
        },
        Group {
            name: "threads",
            planned: threads::planned,
            run: threads::run,
        },
        Group {
            name: "prepare",
            planned: prepare::planned,
            run: prepare::run,
        },
        Group {
            name: "sim_dma",
            planned: sim_dma::planned,
            run: sim_dma::run,
        },
        Group {
            name: "descriptor",
            planned: descriptor::planned,
            run: descriptor::run,
        },
        Group {
            name: "dma",
            planned: dma::planned,
            run: dma::run,
        },
    ]
}
