//! `descriptor/*`: byte copies through a [`MultiMemoryDescriptor`] of 64 parts against
//! `memcpy` between the same kind of memory.
//!
//! The descriptor is 64 pageable `BufferMemoryDescriptor`s of 1 MiB on this Linux process
//! (64 MiB); `read_bytes` copies all of it into a `Vec`, `write_bytes` copies a `Vec` into
//! it. The peer ("memcpy") copies between the same `Vec` and the very same 64 buffers the
//! descriptor is made of, each lent as a slice by the host (between dmakit's copies, never
//! during one) and copied with `copy_from_slice`: the same memory, so only dmakit's own
//! work differs. (With buffers of its own, which physical pages each side got moved the
//! ratios by several per cent from process to process.) An operation is one 64 MiB copy; a
//! chunk is 8 of the parts (8 MiB). Both sides are touched before timing, so page faults
//! are not measured. `descriptor/a_a` is the memcpy peer against itself on the same
//! buffers.

use crate::harness::{compare, Plan, Side};
use crate::progress::Progress;
use crate::{measure, Options, Row, CONTROL_PEER};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
};
use dmakit::platform::{CpuAccess, Task};
use dmakit::Direction;
use dmakit_linux::Host;
use std::sync::Arc;

const PARTS: usize = 64;
const PART: u64 = 1 << 20;
const CHUNKS: usize = 8;
const PER_CHUNK: usize = PARTS / CHUNKS;
/// Wirings the peer lends under: none (pageable buffers, never prepared here).
const HELD: u32 = 0;

type Part = BufferMemoryDescriptor<Arc<Host>>;

/// 64 pageable 1 MiB buffers over `host`.
pub fn parts(host: &Arc<Host>) -> dmakit::Result<Vec<Arc<Part>>> {
    (0..PARTS)
        .map(|_| {
            let o = BufferOptions::new(PART, Direction::InOut).pageable(true);
            BufferMemoryDescriptor::new(host.clone(), o).map(Arc::new)
        })
        .collect()
}

/// The 64-part descriptor over `parts`.
pub fn multi(parts: &[Arc<Part>]) -> dmakit::Result<MultiMemoryDescriptor> {
    let parts = parts
        .iter()
        .map(|p| p.clone() as Arc<dyn MemoryDescriptor>)
        .collect();
    MultiMemoryDescriptor::new(parts, Direction::InOut)
}

/// The parts of chunk `c`, with their offsets in the whole.
fn chunk(parts: &[Arc<Part>], c: usize) -> impl Iterator<Item = (usize, &Arc<Part>)> {
    parts
        .iter()
        .enumerate()
        .skip(c * PER_CHUNK)
        .take(PER_CHUNK)
        .map(|(i, p)| (i * PART as usize, p))
}

/// Copies chunk `c` of `parts` into `dst`, part by part, through lent slices.
fn peer_read(host: &Host, parts: &[Arc<Part>], c: usize, dst: &mut [u8]) -> usize {
    let mut n = 0;
    for (at, p) in chunk(parts, c) {
        let Ok(s) = host.direct_slice(Task::KERNEL, p.address(), PART, HELD) else {
            return n;
        };
        let s = s.bytes();
        dst[at..at + s.len()].copy_from_slice(s);
        n += s.len();
    }
    n
}

/// Copies chunk `c` of `src` into `parts`, part by part, through lent slices.
fn peer_write(host: &Host, parts: &[Arc<Part>], c: usize, src: &[u8]) -> usize {
    let mut n = 0;
    for (at, p) in chunk(parts, c) {
        let Ok(mut s) = host.direct_slice_mut(Task::KERNEL, p.address(), PART, HELD) else {
            return n;
        };
        let s = s.bytes_mut();
        let len = s.len();
        s.copy_from_slice(&src[at..at + len]);
        n += len;
    }
    n
}

/// Rows the group plans.
pub fn planned(_opts: &Options) -> usize {
    3
}

/// Runs the group (no rows if the host cannot allocate).
pub fn run(opts: &Options, p: &mut Progress) -> Vec<Row> {
    let plan = Plan::for_options(opts);
    let made = Host::new().map(Arc::new).and_then(|h| {
        let ps = parts(&h)?;
        Ok((multi(&ps)?, ps, h))
    });
    let (md, peer, host) = match made {
        Ok(m) => m,
        Err(e) => {
            p.skip(planned(opts), &format!("descriptor bench: {e}"));
            return Vec::new();
        }
    };
    let total = md.length() as usize;
    let src: Vec<u8> = (0..total).map(|i| (i * 7) as u8).collect();
    let mut dst = vec![0u8; total];
    assert_eq!(md.write_bytes(0, &src), total);
    assert_eq!(md.read_bytes(0, &mut dst), total);
    assert!(dst == src, "descriptor bytes round-trip");
    let bytes = CHUNKS * PER_CHUNK * PART as usize;
    assert_eq!(bytes, total);
    let span = |c: usize| c * total / CHUNKS..(c + 1) * total / CHUNKS;
    let mut rows = Vec::new();
    rows.push(measure(
        p,
        "descriptor/multi_read_bytes_64x1MiB",
        "memcpy",
        || {
            let dst = std::cell::RefCell::new(&mut dst);
            compare(
                &plan,
                CHUNKS,
                Side::new(1.0, |c| {
                    let r = span(c);
                    md.read_bytes(r.start as u64, &mut dst.borrow_mut()[r])
                }),
                Side::new(1.0, |c| peer_read(&host, &peer, c, &mut dst.borrow_mut())),
            )
        },
    ));
    rows.push(measure(
        p,
        "descriptor/multi_write_bytes_64x1MiB",
        "memcpy",
        || {
            compare(
                &plan,
                CHUNKS,
                Side::new(1.0, |c| {
                    let r = span(c);
                    md.write_bytes(r.start as u64, &src[r])
                }),
                Side::new(1.0, |c| peer_write(&host, &peer, c, &src)),
            )
        },
    ));
    rows.push(measure(p, "descriptor/a_a", CONTROL_PEER, || {
        compare(
            &plan,
            CHUNKS,
            Side::new(1.0, |c| peer_write(&host, &peer, c, &src)),
            Side::new(1.0, |c| peer_write(&host, &peer, c, &src)),
        )
    }));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multi_descriptor_is_64_mib_and_copies_exactly() {
        let host = Arc::new(Host::new().unwrap());
        let md = multi(&parts(&host).unwrap()).unwrap();
        assert_eq!(md.length(), 64 << 20);
        let data: Vec<u8> = (0..3 * PART as usize).map(|i| (i % 251) as u8).collect();
        // A copy that crosses part boundaries.
        assert_eq!(md.write_bytes(PART / 2, &data), data.len());
        let mut back = vec![0u8; data.len()];
        assert_eq!(md.read_bytes(PART / 2, &mut back), data.len());
        assert!(back == data);
    }

    #[test]
    fn the_peer_copies_its_chunk_exactly() {
        let host = Arc::new(Host::new().unwrap());
        let ps = parts(&host).unwrap();
        let md = multi(&ps).unwrap();
        let src: Vec<u8> = (0..PARTS * PART as usize)
            .map(|i| (i % 253) as u8)
            .collect();
        assert_eq!(peer_write(&host, &ps, 1, &src), PER_CHUNK * PART as usize);
        let mut dst = vec![0u8; src.len()];
        assert_eq!(
            peer_read(&host, &ps, 1, &mut dst),
            PER_CHUNK * PART as usize
        );
        let r = PER_CHUNK * PART as usize..2 * PER_CHUNK * PART as usize;
        assert!(dst[r.clone()] == src[r.clone()]);
        // The peer copied the descriptor's own memory.
        let mut through = vec![0u8; r.len()];
        assert_eq!(md.read_bytes(r.start as u64, &mut through), r.len());
        assert!(through == src[r]);
    }
}
