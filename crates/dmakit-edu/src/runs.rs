//! Cutting a [`DmaTransfer`] into the engine runs `edu` can do.

use crate::{EDU_BUFFER, EDU_MAX_RUN};
use alloc::collections::VecDeque;
use dmakit::dma::{DmaTransfer, IoSegment};
use dmakit::{Error, Result};

/// One engine run: `len` bytes from `src` to `dst`; `to_ram` when the device buffer is the
/// source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub src: u64,
    pub dst: u64,
    pub len: u64,
    pub to_ram: bool,
}

/// Whether `[addr, addr + len)` lies in the device window and ends before its last byte
/// (QEMU 7.2's bounds check is off by one and aborts the whole emulator on a run that
/// reaches it).
fn in_window(addr: u64, len: u64) -> bool {
    let end = EDU_BUFFER.0 + EDU_BUFFER.1;
    addr >= EDU_BUFFER.0 && addr.checked_add(len).is_some_and(|e| e < end)
}

/// Cuts `t` into engine runs: pairs of source and destination pieces, at most
/// [`EDU_MAX_RUN`] bytes each, one side in the device window and the other in RAM (an IO
/// address the device drives) at or below `limit`. Every check is made before anything is
/// returned: a transfer is taken whole or refused.
pub(crate) fn split_runs(t: &DmaTransfer<'_>, limit: u64) -> Result<VecDeque<Run>> {
    let total = checked_bytes(t)?;
    let mut runs = VecDeque::new();
    let (mut si, mut di, mut so, mut dof) = (0usize, 0usize, 0u64, 0u64);
    let mut moved = 0u64;
    while let (Some(s), Some(d)) = (t.source.get(si), t.dest.get(di)) {
        if s.len == 0 {
            si += 1;
            continue;
        }
        if d.len == 0 {
            di += 1;
            continue;
        }
        // The whole piece (not only what is left of it) must be on one side.
        let to_ram = match (in_window(s.addr.0, s.len), in_window(d.addr.0, d.len)) {
            (false, true) => false,
            (true, false) => true,
            _ => {
                return Err(Error::BadArgument {
                    what: "edu DMA: exactly one side of each piece must lie in the device buffer \
                           [0x40000, 0x40fff) and the other in RAM",
                    value: if in_window(s.addr.0, s.len) {
                        d.addr.0
                    } else {
                        s.addr.0
                    },
                })
            }
        };
        let len = (s.len - so).min(d.len - dof).min(EDU_MAX_RUN);
        let src = s.addr.0 + so; // in range: `so < s.len` and the piece was checked above
        let dst = d.addr.0 + dof;
        let ram = if to_ram { dst } else { src };
        if ram.checked_add(len - 1).is_none_or(|last| last > limit) {
            return Err(Error::BadArgument {
                what: "edu DMA: a RAM address above the device's DMA limit (its dma_mask: \
                       the device would clamp it and reach another page); map or bounce it \
                       below the limit",
                value: ram,
            });
        }
        runs.push_back(Run {
            src,
            dst,
            len,
            to_ram,
        });
        moved += len;
        so += len;
        dof += len;
        if so == s.len {
            si += 1;
            so = 0;
        }
        if dof == d.len {
            di += 1;
            dof = 0;
        }
    }
    if moved != total {
        return Err(Error::Internal {
            what: "edu DMA: the runs do not cover the transfer",
        });
    }
    Ok(runs)
}

/// The transfer's byte count: both sides the same, not zero, and no piece wrapping past
/// the end of the address space (the core's `bytes` sums without checking).
fn checked_bytes(t: &DmaTransfer<'_>) -> Result<u64> {
    let sum = |segs: &[IoSegment]| -> Result<u64> {
        segs.iter().try_fold(0u64, |acc, s| {
            if s.len > 0 && s.addr.0.checked_add(s.len - 1).is_none() {
                return Err(Error::Overflow {
                    what: "edu DMA: a piece runs past the end of the address space",
                    start: s.addr.0,
                    len: s.len,
                });
            }
            acc.checked_add(s.len).ok_or(Error::Overflow {
                what: "edu DMA: transfer length",
                start: acc,
                len: s.len,
            })
        })
    };
    let (src, dst) = (sum(t.source)?, sum(t.dest)?);
    if src != dst || src == 0 {
        return Err(Error::BadArgument {
            what: "edu DMA: source and destination must describe the same, non-zero, number \
                   of bytes",
            value: src,
        });
    }
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;
    use dmakit::IoAddr;

    fn seg(a: u64, len: u64) -> IoSegment {
        IoSegment {
            addr: IoAddr(a),
            len,
        }
    }

    fn split(source: &[IoSegment], dest: &[IoSegment], limit: u64) -> Result<VecDeque<Run>> {
        split_runs(&DmaTransfer { source, dest }, limit)
    }

    #[test]
    fn transfers_are_cut_into_runs_of_at_most_2k_pairing_pieces() {
        // Two scattered RAM pieces into the device window.
        let src = [seg(0x10_0000, 3000), seg(0x20_0000, 100)];
        let dst = [seg(EDU_BUFFER.0, 3100)];
        let got: Vec<(u64, u64, u64, bool)> = split(&src, &dst, u64::MAX)
            .unwrap()
            .iter()
            .map(|r| (r.src, r.dst, r.len, r.to_ram))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x10_0000, 0x40000, 2048, false),
                (0x10_0000 + 2048, 0x40000 + 2048, 952, false),
                (0x20_0000, 0x40000 + 3000, 100, false),
            ]
        );
        // And back, with a zero-length piece that is skipped.
        let back = [seg(0x30_0000, 0), seg(0x30_0000, 3100)];
        let runs = split(&dst, &back, u64::MAX).unwrap();
        assert!(runs.iter().all(|r| r.to_ram && r.len <= EDU_MAX_RUN));
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 3100);
        // A RAM run that ends exactly at the limit is fine.
        let r = split(
            &[seg(0xfff_f000, 0x1000)],
            &[seg(EDU_BUFFER.0, 0x1000 - 1)],
            0,
        );
        assert!(r.is_err(), "lengths differ");
        let r = split(
            &[seg(0xfff_f001, 0xfff)],
            &[seg(EDU_BUFFER.0, 0xfff)],
            0xfff_ffff,
        );
        assert_eq!(r.unwrap().len(), 2);
    }

    #[test]
    fn transfers_the_device_cannot_do_are_refused() {
        let ram = [seg(0x10_0000, 0x1000)];
        let whole = [seg(EDU_BUFFER.0, 0x1000)];
        let e = split(&ram, &whole, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("device buffer"), "last byte: {e}");
        let both = [seg(EDU_BUFFER.0, 16)];
        let e = split(&both, &both, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("exactly one side"), "{e}");
        let neither = [seg(0x10_0000, 16)];
        assert!(split(&neither, &neither, u64::MAX).is_err());
        let high = [seg(0x1000_0000, 16)];
        let window = [seg(EDU_BUFFER.0, 16)];
        let e = split(&high, &window, 0x0fff_ffff).unwrap_err();
        assert!(e.to_string().contains("dma_mask"), "{e}");
        let e = split(&window, &high, 0x0fff_ffff).unwrap_err();
        assert!(e.to_string().contains("dma_mask"), "to RAM too: {e}");
        let short = [seg(EDU_BUFFER.0, 8)];
        assert!(split(&high, &short, u64::MAX).is_err());
        assert!(split(&[], &[], u64::MAX).is_err(), "empty");
    }

    #[test]
    fn hostile_numbers_are_errors_not_panics() {
        let window = [seg(EDU_BUFFER.0, 16)];
        for bad in [
            seg(u64::MAX, 16),
            seg(u64::MAX - 3, 16),
            seg(EDU_BUFFER.0, u64::MAX),
        ] {
            assert!(split(&[bad], &window, u64::MAX).is_err(), "{bad:?}");
            assert!(split(&window, &[bad], u64::MAX).is_err(), "{bad:?}");
        }
        // Lengths whose sum overflows.
        let big = [
            seg(0x10_0000, u64::MAX / 2 + 1),
            seg(0x10_0000, u64::MAX / 2 + 1),
        ];
        assert!(matches!(
            split(&big, &window, u64::MAX),
            Err(Error::Overflow { .. })
        ));
        // A RAM piece whose last byte would be past the end of the address space.
        let top = [seg(u64::MAX - 15, 16)];
        assert!(
            split(&top, &window, u64::MAX).is_ok(),
            "ends at the last address"
        );
    }
}
