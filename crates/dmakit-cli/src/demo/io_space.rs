//! The demo's IO address space carved by `RangeAllocator` (IOKit's IORangeAllocator):
//! allocations, a double free refused, and the free fragments, recorded as a space.

use super::record::Record;
use super::{err_text, heading, table};
use crate::out::say;
use crate::picture::{Lane, Run, Space, Use};
use dmakit::alloc::RangeAllocator;
use std::io::Write;

const BASE: u64 = 0x4000_0000;
const SIZE: u64 = 0x4000_0000;

fn mapping(label: &str, start: u64, len: u64) -> Lane {
    Lane::new(Use::Mapping, label, vec![Run { start, len }])
}

/// Carves the space and prints each call's result.
pub fn carve(out: &mut dyn Write, rec: &mut Record) -> dmakit::Result<()> {
    heading(
        out,
        "An IO address space carved by RangeAllocator (IORangeAllocator)",
    );
    let mut iova = RangeAllocator::new(BASE, SIZE, 0x1000)?;
    let mut t = table(&["call", "result"]);
    iova.allocate_range(BASE, 0x10_0000)?;
    t.add_row(["allocate_range(0x40000000, 1 MiB)", "reserved"]);
    let a = iova.allocate(0x3000, 0)?;
    t.add_row(["allocate(12 KiB)".to_string(), format!("{a:#x}")]);
    let b = iova.allocate(0x1000, 0x20_0000)?;
    t.add_row([
        "allocate(4 KiB, align 2 MiB)".to_string(),
        format!("{b:#x}"),
    ]);
    let c = iova.allocate(0x1_0000, 0)?;
    t.add_row(["allocate(64 KiB)".to_string(), format!("{c:#x}")]);
    iova.deallocate(a, 0x3000)?;
    t.add_row(["deallocate(first, 12 KiB)", "ok"]);
    match iova.deallocate(a, 0x3000) {
        Err(e) => t.add_row(["deallocate(first, 12 KiB) again".to_string(), err_text(&e)]),
        Ok(()) => t.add_row(["deallocate again", "accepted (bug)"]),
    };
    say!(out, "{t}");
    let frags: Vec<(u64, u64)> = iova.fragments().collect();
    let text: Vec<String> = frags
        .iter()
        .map(|(s, e)| format!("[{s:#x}, {e:#x}]"))
        .collect();
    say!(
        out,
        "free: {:#x} bytes in {} fragments: {}",
        iova.free_count(),
        iova.fragment_count(),
        text.join(" ")
    );
    let mappings = vec![
        mapping("allocate_range(0x40000000, 1 MiB)", BASE, 0x10_0000),
        mapping("allocate(4 KiB, align 2 MiB)", b, 0x1000),
        mapping("allocate(64 KiB)", c, 0x1_0000),
    ];
    let free = frags
        .iter()
        .map(|&(s, e)| Run {
            start: s,
            len: (e - s).saturating_add(1),
        })
        .collect();
    rec.io.push(Space::io_with_free(
        "An IO address space carved by RangeAllocator: its allocations and free fragments",
        mappings,
        free,
    ));
    Ok(())
}
