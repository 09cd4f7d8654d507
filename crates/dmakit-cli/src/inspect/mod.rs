//! `dmakit inspect`: allocate on this Linux host and show where the memory landed
//! physically, as text, as JSON ([`report`]) or drawn on the host's physical memory map.
//!
//! The request is checked against the host's limits first ([`crate::preflight`]): a size
//! above what the host can wire is refused at once with the numbers.

mod report;

use crate::exit::Failure;
use crate::out::{say, Out};
use crate::output_file::OutputFile;
use crate::picture;
use crate::preflight::{self, Request};
use dmakit_linux::WireLimits;
use std::path::PathBuf;

/// What `dmakit inspect` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes to allocate.
    pub size: u64,
    /// In one 2 MiB hugepage.
    pub hugepage: bool,
    /// Physical addresses must stay below this.
    pub below: Option<u64>,
    /// JSON on standard output instead of the text.
    pub json: bool,
    /// Where to draw the picture.
    pub svg: Option<PathBuf>,
}

/// The highest physical address allowed by `--below` (`u64::MAX`: any).
fn phys_limit(below: Option<u64>) -> Result<u64, Failure> {
    match below {
        None => Ok(u64::MAX),
        Some(0) => Err(Failure::usage(
            "--below 0 leaves no physical address: give the first address the device cannot \
             reach (4G for a 32-bit device)",
        )),
        Some(b) => Ok(b - 1),
    }
}

/// Runs the inspection as `o` says.
pub fn run(o: &Options) -> Result<(), Failure> {
    let limit = phys_limit(o.below)?;
    let req = Request {
        size: o.size,
        hugepage: o.hugepage,
    };
    preflight::check(req, &WireLimits::probe())?;
    let svg = o
        .svg
        .as_deref()
        .map(|p| OutputFile::open(p, "--svg", false))
        .transpose()?;
    let found = dmakit_linux::inspect_below(o.size, o.hugepage, limit)
        .map_err(|e| Failure::of_request(&e))?;
    let space = report::host_space(&found);
    if o.json {
        crate::out::json(&report::Report::new(&found, &space))?;
    } else {
        say!(&mut Out, "{found}");
    }
    if let Some(f) = svg {
        let path = f.path().display().to_string();
        let pic = picture::Picture {
            title: "dmakit inspect: where the memory landed in this host's physical memory".into(),
            spaces: vec![space],
        };
        f.write(&picture::to_string(&picture::map::document(&pic)))?;
        if !o.json {
            say!(&mut Out, "the memory picture: {path}");
        }
    }
    Ok(())
}
