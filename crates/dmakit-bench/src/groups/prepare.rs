//! `prepare/*`: wiring through the Linux host: re-preparing the same pageable 4 KiB
//! buffer against a wired one.
//!
//! * `prepare/linux_pageable_4k_reprepare`: one `prepare_wiring(InOut)` and one `complete`
//!   of a pageable 4 KiB [`BufferMemoryDescriptor`] on this Linux process (the page touched
//!   once beforehand, so it exists): each round trip wires the page (`mlock`, and with
//!   physical addresses its pagemap translation) and unwires it. Peer ("wired 4 KiB"): the
//!   same round trip on a wired 4 KiB buffer, which holds its own preparation for life, so
//!   its prepare and complete only count. The ratio is the price of wiring on demand. An
//!   operation is one prepare plus one complete; a chunk is 256 of them.
//! * `prepare/linux_pageable_4k_held`: the same round trips on a pageable buffer whose driver
//!   holds one long-lived preparation (`prepare` once, keep the guard: IOKit's pattern for a
//!   buffer on a hot path): inner prepares only count, as on wired memory. Peer: "wired 4 KiB".
//! * `prepare/a_a`: the wired round trip against a second wired buffer.

use crate::harness::{compare, Plan, Side};
use crate::progress::Progress;
use crate::{measure, Options, Row, CONTROL_PEER};
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::{Direction, Result};
use dmakit_linux::Host;
use std::sync::Arc;

const CHUNKS: usize = 8;
const PER_CHUNK: usize = 256;

/// `n` prepare + complete round trips of `md`.
pub fn round_trips(md: &dyn MemoryDescriptor, n: usize) -> Result<()> {
    for _ in 0..n {
        md.prepare_wiring(Direction::InOut)?;
        md.complete()?;
    }
    Ok(())
}

fn buffer(host: &Arc<Host>, pageable: bool) -> Result<BufferMemoryDescriptor<Arc<Host>>> {
    let o = BufferOptions::new(4096, Direction::InOut).pageable(pageable);
    let b = BufferMemoryDescriptor::new(host.clone(), o)?;
    let _ = b.write_bytes(0, &[1u8; 4096]);
    round_trips(&b, 1)?;
    Ok(b)
}

/// Rows the group plans.
pub fn planned(_opts: &Options) -> usize {
    3
}

/// Runs the group (no rows without a Linux host that can wire).
pub fn run(opts: &Options, p: &mut Progress) -> Vec<Row> {
    let plan = Plan::for_options(opts);
    let made = Host::new().map(Arc::new).and_then(|h| {
        Ok((
            buffer(&h, true)?,
            buffer(&h, true)?,
            buffer(&h, false)?,
            buffer(&h, false)?,
        ))
    });
    let (pageable, held, wired, again) = match made {
        Ok(b) => b,
        Err(e) => {
            p.skip(planned(opts), &format!("prepare bench: {e}"));
            return Vec::new();
        }
    };
    let ops = (CHUNKS * PER_CHUNK) as f64;
    fn side(md: &dyn MemoryDescriptor, ops: f64) -> Side<impl FnMut(usize) -> bool + '_> {
        Side::new(ops, move |_| round_trips(md, PER_CHUNK).is_ok())
    }
    let held_md: &dyn MemoryDescriptor = &held;
    let guard = held_md.prepare(Direction::InOut);
    let mut rows = vec![measure(
        p,
        "prepare/linux_pageable_4k_reprepare",
        "wired 4 KiB",
        || compare(&plan, CHUNKS, side(&pageable, ops), side(&wired, ops)),
    )];
    match guard {
        Ok(_held_for_life) => rows.push(measure(
            p,
            "prepare/linux_pageable_4k_held",
            "wired 4 KiB",
            || compare(&plan, CHUNKS, side(held_md, ops), side(&wired, ops)),
        )),
        Err(e) => p.skip(
            1,
            &format!("prepare bench: the long-lived preparation: {e}"),
        ),
    }
    rows.extend([measure(p, "prepare/a_a", CONTROL_PEER, || {
        compare(&plan, CHUNKS, side(&wired, ops), side(&again, ops))
    })]);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_leave_the_pageable_buffer_unprepared() {
        let host = Arc::new(Host::new().unwrap());
        let b = buffer(&host, true).unwrap();
        round_trips(&b, 3).unwrap();
        assert!(!b.is_prepared());
        let w = buffer(&host, false).unwrap();
        round_trips(&w, 3).unwrap();
        assert!(!w.is_prepared(), "only its life-long preparation is held");
    }
}
