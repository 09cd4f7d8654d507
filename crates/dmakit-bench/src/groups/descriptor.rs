//! `descriptor/*`: byte copies through a [`MultiMemoryDescriptor`] of 64 parts against
//! `memcpy` between the same kind of memory.
//!
//! The descriptor is 64 pageable `BufferMemoryDescriptor`s of 1 MiB on this Linux process
//! (64 MiB); `read_bytes` copies all of it into a `Vec`, `write_bytes` copies a `Vec` into
//! it. The peer ("memcpy") copies between the same `Vec` and 64 other pageable 1 MiB
//! `BufferMemoryDescriptor`s allocated the same way through the same host, each lent as a
//! slice (`bytes_no_copy`, `bytes_no_copy_mut`) and copied with `copy_from_slice`: the
//! same memory type, page size and layout, so only dmakit's own work differs. An operation
//! is one 64 MiB copy; a chunk is 8 of the parts (8 MiB). Both sides are touched before
//! timing, so page faults are not measured. `descriptor/a_a` is the memcpy peer against a
//! third set of 64 such buffers.

use crate::harness::{compare, Plan, Side};
use crate::progress::Progress;
use crate::{measure, Options, Row, CONTROL_PEER};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
};
use dmakit::Direction;
use dmakit_linux::Host;
use std::sync::Arc;

const PARTS: usize = 64;
const PART: u64 = 1 << 20;
const CHUNKS: usize = 8;
const PER_CHUNK: usize = PARTS / CHUNKS;

type Part = BufferMemoryDescriptor<Arc<Host>>;

/// 64 pageable 1 MiB buffers over `host`.
pub fn parts(host: &Arc<Host>) -> dmakit::Result<Vec<Part>> {
    (0..PARTS)
        .map(|_| {
            let o = BufferOptions::new(PART, Direction::InOut).pageable(true);
            BufferMemoryDescriptor::new(host.clone(), o)
        })
        .collect()
}

/// The 64-part descriptor over `host`.
pub fn multi(host: &Arc<Host>) -> dmakit::Result<MultiMemoryDescriptor> {
    let parts = parts(host)?
        .into_iter()
        .map(|p| Arc::new(p) as Arc<dyn MemoryDescriptor>)
        .collect();
    MultiMemoryDescriptor::new(parts, Direction::InOut)
}

/// Copies chunk `c` of `parts` into `dst`, part by part, through lent slices.
fn peer_read(parts: &[Part], c: usize, dst: &mut [u8]) -> usize {
    let mut n = 0;
    for (i, p) in parts.iter().enumerate().skip(c * PER_CHUNK).take(PER_CHUNK) {
        let Ok(s) = p.bytes_no_copy(0, PART) else {
            return n;
        };
        let at = i * PART as usize;
        dst[at..at + s.len()].copy_from_slice(&s);
        n += s.len();
    }
    n
}

/// Copies chunk `c` of `src` into `parts`, part by part, through lent slices.
fn peer_write(parts: &mut [Part], c: usize, src: &[u8]) -> usize {
    let mut n = 0;
    for (i, p) in parts
        .iter_mut()
        .enumerate()
        .skip(c * PER_CHUNK)
        .take(PER_CHUNK)
    {
        let Ok(mut s) = p.bytes_no_copy_mut(0, PART) else {
            return n;
        };
        let at = i * PART as usize;
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
    let made = Host::new()
        .map(Arc::new)
        .and_then(|h| Ok((multi(&h)?, parts(&h)?, parts(&h)?)));
    let (md, mut peer, mut again) = match made {
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
                Side::new(1.0, |c| peer_read(&peer, c, &mut dst.borrow_mut())),
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
                Side::new(1.0, |c| peer_write(&mut peer, c, &src)),
            )
        },
    ));
    rows.push(measure(p, "descriptor/a_a", CONTROL_PEER, || {
        compare(
            &plan,
            CHUNKS,
            Side::new(1.0, |c| peer_write(&mut peer, c, &src)),
            Side::new(1.0, |c| peer_write(&mut again, c, &src)),
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
        let md = multi(&host).unwrap();
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
        let mut ps = parts(&host).unwrap();
        let src: Vec<u8> = (0..PARTS * PART as usize)
            .map(|i| (i % 253) as u8)
            .collect();
        assert_eq!(peer_write(&mut ps, 1, &src), PER_CHUNK * PART as usize);
        let mut dst = vec![0u8; src.len()];
        assert_eq!(peer_read(&ps, 1, &mut dst), PER_CHUNK * PART as usize);
        let r = PER_CHUNK * PART as usize..2 * PER_CHUNK * PART as usize;
        assert!(dst[r.clone()] == src[r]);
    }
}
