//! `descriptor/*`: byte copies through a [`MultiMemoryDescriptor`] of 64 parts against a
//! plain `memcpy` of the same number of bytes.
//!
//! The descriptor is 64 pageable `BufferMemoryDescriptor`s of 1 MiB on this Linux process
//! (64 MiB, no `mlock` needed); `read_bytes` copies all of it into a `Vec`, `write_bytes`
//! copies a `Vec` into it. The peer copies between two 64 MiB `Vec`s with
//! `copy_from_slice` (a `memcpy`). Both sides are touched once before timing so page faults
//! are not measured. An operation is one 64 MiB copy; the three samples alternate.

use crate::timing::{median, sample_ns_per_op};
use crate::{Options, Row};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
};
use dmakit::Direction;
use dmakit_linux::Host;
use std::sync::Arc;

const PARTS: usize = 64;
const PART: u64 = 1 << 20;

/// Builds the 64-part descriptor over `host`.
pub fn multi(host: &Arc<Host>) -> dmakit::Result<MultiMemoryDescriptor> {
    let mut parts: Vec<Arc<dyn MemoryDescriptor>> = Vec::with_capacity(PARTS);
    for _ in 0..PARTS {
        let o = BufferOptions::new(PART, Direction::InOut).pageable(true);
        parts.push(Arc::new(BufferMemoryDescriptor::new(host.clone(), o)?));
    }
    MultiMemoryDescriptor::new(parts, Direction::InOut)
}

/// Runs the group (no rows if the host cannot allocate).
pub fn run(opts: &Options) -> Vec<Row> {
    let reps = if opts.quick { 5 } else { 11 };
    let Ok(host) = Host::new().map(Arc::new) else {
        eprintln!("descriptor bench skipped: no Linux host");
        return Vec::new();
    };
    let md = match multi(&host) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("descriptor bench skipped: {e}");
            return Vec::new();
        }
    };
    let total = md.length() as usize;
    let src: Vec<u8> = (0..total).map(|i| (i * 7) as u8).collect();
    let mut dst = vec![0u8; total];
    // Touch everything once.
    assert_eq!(md.write_bytes(0, &src), total);
    assert_eq!(md.read_bytes(0, &mut dst), total);
    assert!(dst == src, "descriptor bytes round-trip");
    // The samples alternate, so a change of load on the machine hits both sides alike.
    let (mut read, mut write, mut memcpy) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        read.push(sample_ns_per_op(1, || md.read_bytes(0, &mut dst)));
        write.push(sample_ns_per_op(1, || md.write_bytes(0, &src)));
        memcpy.push(sample_ns_per_op(1, || {
            dst.copy_from_slice(&src);
            dst[total / 2]
        }));
    }
    let (read, write, memcpy) = (median(read), median(write), median(memcpy));
    vec![
        Row::new(
            "descriptor/multi_read_bytes_64x1MiB",
            "memcpy",
            read,
            memcpy,
        ),
        Row::new(
            "descriptor/multi_write_bytes_64x1MiB",
            "memcpy",
            write,
            memcpy,
        ),
    ]
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
}
