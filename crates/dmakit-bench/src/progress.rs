//! Progress of a run on stderr: the group, the row, and how far along the run is.
//!
//! Lines go through [`note`]: a closed or full stderr (`dmakit bench 2>&1 | head -1`)
//! loses them instead of panicking as `eprintln!` would.

use std::io::Write;

/// Writes a line on stderr, dropping it if stderr cannot take it.
pub fn note(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Counts rows measured (or skipped) against the rows a run plans.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
    quiet: bool,
}

impl Progress {
    /// A run of `total` planned rows; `quiet` prints nothing (tests, examples).
    pub fn new(total: usize, quiet: bool) -> Progress {
        Progress {
            total: total.max(1),
            done: 0,
            quiet,
        }
    }

    /// Says that row `name` against `peer` is being measured now.
    pub fn row(&mut self, name: &str, peer: &str) {
        if !self.quiet {
            let group = name.split('/').next().unwrap_or(name);
            note(format_args!(
                "[{:>3}%] {group}: {name} vs {peer}",
                100 * self.done / self.total
            ));
        }
        self.done = (self.done + 1).min(self.total);
    }

    /// Counts `n` planned rows that will not be measured, saying why.
    pub fn skip(&mut self, n: usize, why: &str) {
        if !self.quiet {
            note(format_args!(
                "[{:>3}%] skipped {n} rows: {why}",
                100 * self.done / self.total
            ));
        }
        self.done = (self.done + n).min(self.total);
    }

    /// Rows measured or skipped so far.
    pub fn done(&self) -> usize {
        self.done
    }
}
