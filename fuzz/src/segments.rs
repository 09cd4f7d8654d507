//! An independent check of DMA segments against a `SegmentSpec` (written from the spec's
//! documented meaning, not from dmakit's own check), and the walks that collect a prepared
//! command's segments at once and in pieces.

use crate::shapes::M;
use dmakit::dma::{DmaCommand, IoSegment, SegmentSpec};

/// Checks `segs` against `spec` for a transfer of `length` bytes.
pub fn check_segments(spec: &SegmentSpec, segs: &[IoSegment], length: u64) -> Result<(), String> {
    let total: u128 = segs.iter().map(|s| u128::from(s.len)).sum();
    if total != u128::from(length) {
        return Err(format!("segments describe {total} bytes, not {length}"));
    }
    if segs.len() as u64 > u64::from(spec.max_segments()) {
        return Err(format!(
            "{} segments > max {}",
            segs.len(),
            spec.max_segments()
        ));
    }
    if length > spec.max_transfer_size() {
        return Err(format!(
            "{length} bytes > max transfer {}",
            spec.max_transfer_size()
        ));
    }
    for (i, s) in segs.iter().enumerate() {
        let (a, l) = (s.addr.0, s.len);
        let last = i + 1 == segs.len();
        let end = u128::from(a) + u128::from(l); // exclusive, may be 2^64
        let why = if l == 0 {
            Some("empty")
        } else if a < spec.min_address() || end - 1 > u128::from(spec.max_address()) {
            Some("outside the address window")
        } else if l > spec.max_segment_size() {
            Some("longer than max_segment_size")
        } else if i == 0 && a % spec.alignment() != 0 {
            Some("first start misaligned")
        } else if i > 0 && a % spec.internal_alignment() != 0 {
            Some("inner start misaligned")
        } else if !last && l % spec.length_alignment() != 0 {
            Some("length misaligned")
        } else if !last && end % u128::from(spec.internal_alignment()) != 0 {
            Some("inner end misaligned")
        } else if spec.boundary() != 0 && a / spec.boundary() != (end - 1) as u64 / spec.boundary()
        {
            Some("crosses a boundary")
        } else {
            None
        };
        if let Some(w) = why {
            return Err(format!("segment {i} {s:?}: {w} (spec {spec:?})"));
        }
    }
    Ok(())
}

/// Every segment of the prepared command, generated at once; checks that a walk past the
/// end is an overrun that leaves the offset, and that the decoding iterator agrees.
pub fn all_segments(cmd: &DmaCommand<M>) -> Vec<IoSegment> {
    let f = cmd.format();
    let mut out = vec![0u8; 8192 * f.element_size()];
    let mut off = 0;
    let mut segs = Vec::new();
    let length = cmd.prepared().expect("prepared").1;
    while off < length {
        let before = off;
        let n = cmd.gen_segments(&mut off, &mut out).expect("gen_segments");
        assert!(n >= 1 && off > before, "no progress at {before}");
        segs.extend((0..n).map(|i| f.read(&out, i).expect("decode")));
    }
    assert_eq!(off, length);
    let e = cmd
        .gen_segments(&mut off, &mut out)
        .expect_err("a walk past the end");
    assert_eq!(e.io_return(), dmakit::IoReturn::OVERRUN);
    assert_eq!(off, length);
    let decoded: Vec<IoSegment> = cmd
        .segments()
        .collect::<Result<_, _>>()
        .expect("segments iterator");
    assert_eq!(decoded, segs, "the iterator and gen_segments agree");
    segs
}

/// The same walk in pieces of at most `sizes[i]` elements.
pub fn pieces(cmd: &DmaCommand<M>, sizes: &[u8]) -> Vec<IoSegment> {
    let f = cmd.format();
    let mut out = vec![0u8; 256 * f.element_size()];
    let mut off = 0;
    let mut segs = Vec::new();
    let length = cmd.prepared().expect("prepared").1;
    let mut i = 0;
    while off < length {
        let max = 1 + sizes.get(i % sizes.len().max(1)).copied().unwrap_or(0) as usize % 16;
        i += 1;
        let n = cmd
            .gen_segments(&mut off, &mut out[..max * f.element_size()])
            .expect("gen_segments in pieces");
        assert!(n >= 1 && n <= max);
        segs.extend((0..n).map(|k| f.read(&out, k).expect("decode")));
    }
    segs
}
