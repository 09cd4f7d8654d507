//! Physical Region Page lists, walked as a controller walks them.
//!
//! With memory page size *P* (`4 KiB << CC.MPS`) a transfer of *n* bytes is described by
//! PRP1 and PRP2:
//!
//! * PRP1 is the first page, with an offset (dword aligned); it covers up to the end of
//!   that page;
//! * if the rest fits in one page, PRP2 is that page (page aligned);
//! * otherwise PRP2 points to a PRP list (qword aligned): entries of page-aligned pages
//!   filling the rest of that list page; when more entries are needed than fit, the last
//!   slot of a list page holds the (page-aligned) address of the next list page.
//!
//! An entry that breaks an alignment rule fails the command with PRP Offset Invalid; a
//! list page that cannot be read, with Data Transfer Error. Nothing is moved before the
//! whole walk succeeded.

use super::command::Status;
use crate::pci::DeviceContext;

/// The runs `(device address, bytes)` that PRP1 and PRP2 describe for `len` bytes, reading
/// PRP lists from memory through `ctx`.
pub(crate) fn walk(
    ctx: &mut DeviceContext<'_>,
    prp1: u64,
    prp2: u64,
    len: u64,
    page: u64,
) -> Result<Vec<(u64, u64)>, Status> {
    let mut runs = Vec::new();
    if len == 0 {
        return Ok(runs);
    }
    if prp1 & 3 != 0 {
        return Err(Status::PRP_OFFSET_INVALID.dnr());
    }
    let first = len.min(page - prp1 % page);
    runs.push((prp1, first));
    let rest = len - first;
    if rest == 0 {
        return Ok(runs);
    }
    if rest <= page {
        if !prp2.is_multiple_of(page) {
            return Err(Status::PRP_OFFSET_INVALID.dnr());
        }
        runs.push((prp2, rest));
        return Ok(runs);
    }
    if prp2 & 7 != 0 {
        return Err(Status::PRP_OFFSET_INVALID.dnr());
    }
    walk_list(ctx, prp2, rest, page, &mut runs)?;
    Ok(runs)
}

/// Appends to `runs` the pages a PRP list starting at `list` gives for `rest` bytes,
/// following it from list page to list page.
fn walk_list(
    ctx: &mut DeviceContext<'_>,
    mut list: u64,
    mut rest: u64,
    page: u64,
    runs: &mut Vec<(u64, u64)>,
) -> Result<(), Status> {
    while rest > 0 {
        let slots = (page - list % page) / 8;
        let needed = rest.div_ceil(page);
        let (take, chained) = if needed > slots {
            (slots, true)
        } else {
            (needed, false)
        };
        let entries = read_entries(ctx, list, take)?;
        let data = if chained {
            &entries[..entries.len() - 1]
        } else {
            &entries[..]
        };
        for &e in data {
            if e % page != 0 {
                return Err(Status::PRP_OFFSET_INVALID.dnr());
            }
            let n = rest.min(page);
            runs.push((e, n));
            rest -= n;
        }
        if chained {
            let next = entries[entries.len() - 1];
            if !next.is_multiple_of(page) {
                return Err(Status::PRP_OFFSET_INVALID.dnr());
            }
            list = next;
        }
    }
    Ok(())
}

/// Reads `count` PRP entries from `at`.
fn read_entries(ctx: &mut DeviceContext<'_>, at: u64, count: u64) -> Result<Vec<u64>, Status> {
    let mut raw = vec![0u8; (count * 8) as usize];
    ctx.dma_read(at, &mut raw)
        .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}
