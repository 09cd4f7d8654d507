//! Every descriptor kind (buffers wired, pageable, contiguous or below 4 GiB; task ranges;
//! sub, multi and interleaved descriptors nested over them) on the simulator, against a
//! byte model: reads and writes copy exactly what the model says (stopping at the end),
//! zero fills are all or nothing, a physical segment holds the model's bytes, a buffer's
//! `set_length` and `append_bytes` move its length as documented, prepares and completes
//! balance, and at the end nothing is left allocated or wired on the machine.
#![no_main]

use arbitrary::Arbitrary;
use dmakit::descriptor::MemoryDescriptor;
use dmakit::platform::PhysicalMemory;
use dmakit::{Direction, Error};
use dmakit_fuzz::shapes::{assert_nothing_left, build, machine, pattern, ShapedInput};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Read(u32, u16),
    Write(u32, u16, u8),
    FillZero(u32, u16),
    Segment(u32),
    Prepare(u8),
    Complete,
    SetLength(u16),
    Append(u16, u8),
    /// An offset far past the end.
    ReadFar(u64),
}

/// The machine's seed, a shape at most 3 levels deep and the operations.
type Input = ShapedInput<Op, 3>;

/// The bytes behind the descriptor; for a buffer, up to its capacity.
struct Model {
    bytes: Vec<u8>,
    length: usize,
    prepared: u32,
}

impl Model {
    /// Where a copy of `n` bytes at `off` lands and how many it copies: all of them when
    /// they lie within the length, else none (IOKit's all-or-nothing rule).
    fn span(&self, off: u64, n: usize) -> (usize, usize) {
        match off.checked_add(n as u64) {
            Some(end) if end <= self.length as u64 => (off as usize, n),
            _ => (0, 0),
        }
    }
}

fn segment(md: &dyn MemoryDescriptor, m: &dmakit_fuzz::shapes::M, model: &Model, off: u32) {
    let got = md.physical_segment(off as u64);
    if off as usize >= model.length {
        assert!(matches!(got, Err(Error::OutOfBounds { .. })), "{got:?}");
        return;
    }
    let seg = match got {
        Ok(s) => s,
        Err(Error::NotReady { .. }) if model.prepared == 0 => return,
        Err(e) => panic!("physical_segment({off}) of prepared memory: {e}"),
    };
    let left = (model.length - off as usize) as u64;
    assert!(
        seg.len >= 1 && seg.len <= left,
        "{seg:?}, {left} bytes left"
    );
    let n = seg.len.min(512) as usize;
    let mut phys = vec![0u8; n];
    m.read_phys(seg.addr, &mut phys).expect("read the segment");
    let o = off as usize;
    assert_eq!(phys, model.bytes[o..o + n], "the segment holds other bytes");
}

fn run(input: &Input) {
    let m = machine(input.seed as u64, true);
    {
        let Some(built) = build(&m, &input.shape) else {
            return;
        };
        let md = built.md.clone();
        let mut model = Model {
            length: built.bytes.len(),
            bytes: built.bytes,
            prepared: 0,
        };
        if let Some(b) = &built.buffer {
            model.bytes.resize(b.capacity() as usize, 0);
            // The rest of the capacity holds whatever the allocation held: zeros.
        }
        assert_eq!(md.length(), model.length as u64);
        for op in input.ops.iter().take(48) {
            match *op {
                Op::Read(off, n) => {
                    let mut buf = vec![0xEEu8; n as usize];
                    let (o, k) = model.span(off as u64, buf.len());
                    assert_eq!(md.read_bytes(off as u64, &mut buf), k, "read count");
                    assert_eq!(buf[..k], model.bytes[o..o + k], "read bytes");
                    assert!(buf[k..].iter().all(|&x| x == 0xEE), "copied past the count");
                }
                Op::ReadFar(off) => {
                    let mut buf = [0u8; 8];
                    let (_, k) = model.span(off, 8);
                    assert_eq!(md.read_bytes(off, &mut buf), k);
                }
                Op::Write(off, n, salt) => {
                    let data = pattern(n as usize, salt);
                    let (o, k) = model.span(off as u64, data.len());
                    assert_eq!(md.write_bytes(off as u64, &data), k, "write count");
                    model.bytes[o..o + k].copy_from_slice(&data[..k]);
                }
                Op::FillZero(off, n) => {
                    let fits = (off as u64 + n as u64) <= model.length as u64;
                    let want = if fits { n as u64 } else { 0 };
                    assert_eq!(md.fill_zero(off as u64, n as u64), want, "fill count");
                    if fits {
                        model.bytes[off as usize..off as usize + n as usize].fill(0);
                    }
                }
                Op::Segment(off) => segment(md.as_ref(), &m, &model, off),
                Op::Prepare(d) => {
                    let dir = [Direction::None, Direction::In, Direction::InOut][d as usize % 3];
                    match md.prepare_wiring(dir) {
                        Ok(()) => model.prepared += 1,
                        Err(e) => panic!("prepare({dir:?}): {e}"),
                    }
                }
                Op::Complete => {
                    md.complete().expect("complete");
                    model.prepared = model.prepared.saturating_sub(1);
                }
                Op::SetLength(n) => {
                    if let Some(b) = &built.buffer {
                        let r = b.set_length(n as u64);
                        if n as u64 > b.capacity() {
                            assert!(matches!(r, Err(Error::OutOfBounds { .. })), "{r:?}");
                        } else {
                            r.expect("set_length within the capacity");
                            model.length = n as usize;
                        }
                        assert_eq!(md.length(), model.length as u64);
                    }
                }
                Op::Append(n, salt) => {
                    if let Some(b) = &built.buffer {
                        let data = pattern(n as usize, salt);
                        let k = data.len().min(model.bytes.len() - model.length);
                        assert_eq!(b.append_bytes(&data), k, "append count");
                        model.bytes[model.length..model.length + k].copy_from_slice(&data[..k]);
                        model.length += k;
                        assert_eq!(md.length(), model.length as u64);
                    }
                }
            }
        }
        while model.prepared > 0 {
            md.complete().expect("complete");
            model.prepared -= 1;
        }
        let mut all = vec![0u8; model.length];
        assert_eq!(md.read_bytes(0, &mut all), model.length);
        assert_eq!(all, model.bytes[..model.length], "final contents");
    }
    assert_nothing_left(&m);
}

fuzz_target!(|input: Input| run(&input));
