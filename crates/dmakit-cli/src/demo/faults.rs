//! The demo's failure step: an injected allocation failure and three misuses, each a clear
//! error that loses nothing.

use super::{err_text, heading, table};
use crate::out::say;
use dmakit::alloc::{io_free, io_free_pageable, io_malloc, IoHeap};
use dmakit::platform::{PhysicalMemory, Task, Wiring};
use dmakit::{Error, VirtAddr};
use dmakit_sim::{FaultSite, Machine};
use std::io::Write;

/// The error a call that must fail gave, or an error saying it did not fail.
fn refused<T>(r: dmakit::Result<T>, what: &'static str) -> dmakit::Result<Error> {
    match r {
        Err(e) => Ok(e),
        Ok(_) => Err(Error::Internal { what }),
    }
}

/// Each failure and what it left behind.
pub fn faults_and_misuse(m: &Machine, out: &mut dyn Write) -> dmakit::Result<()> {
    heading(
        out,
        "Fault injection and misuse: clear errors, nothing leaked",
    );
    let heap = IoHeap::new(m);
    let mut t = table(&["what", "error", "free pages before → after"]);
    let before = m.stats().free_pages;
    m.inject(FaultSite::PhysAlloc, m.stats().site_calls[0] + 3);
    let pages = usize::try_from(8 * m.page_size().bytes()).unwrap_or(usize::MAX);
    let e = refused(
        io_malloc(&heap, pages),
        "demo: the injected failure did not happen",
    )?;
    t.add_row([
        "io_malloc(8 pages), 3rd page fails".to_string(),
        err_text(&e),
        format!("{before} → {}", m.stats().free_pages),
    ]);
    let a = io_malloc(&heap, 100)?;
    let e = refused(
        io_free(&heap, a, 64),
        "demo: a wrong-size free was accepted",
    )?;
    t.add_row([
        "io_free with the wrong size".to_string(),
        err_text(&e),
        "nothing freed".into(),
    ]);
    let e = refused(
        io_free_pageable(&heap, a, 100),
        "demo: io_free_pageable of an io_malloc block was accepted",
    )?;
    t.add_row([
        "io_free_pageable of an io_malloc block".to_string(),
        err_text(&e),
        "nothing freed".into(),
    ]);
    io_free(&heap, a, 100)?;
    let e = refused(
        m.wire(Task::KERNEL, VirtAddr(0x1000), 4096, false),
        "demo: wiring an unmapped address was accepted",
    )?;
    t.add_row([
        "wire an address nothing maps".to_string(),
        err_text(&e),
        "nothing wired".into(),
    ]);
    say!(out, "{t}");
    Ok(())
}
