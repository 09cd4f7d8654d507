//! The simulator's DMA engine behind a `DmaEventSource` with a completion action, against a
//! model of two buffers: transfers of arbitrary segment lists (empty, unequal, past RAM,
//! more segments than the ring holds) are refused or queued; pauses, resumes, stops, FIFO
//! depth changes and polls come in any order. Every ticket completes exactly once, in
//! ticket order; a successful one moved all its bytes, exactly as the model copies them
//! in that order; `query` of a finished transfer reports its bytes; at the end the
//! buffers hold what the model says wherever it knows.
#![no_main]

use arbitrary::Arbitrary;
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{DmaCompletion, DmaController, DmaEventSource, DmaTransfer, IoSegment};
use dmakit::{Direction, Error, IoAddr};
use dmakit_sim::{MachineBuilder, SimDmaEngine};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Bytes per buffer.
const LEN: u64 = 0x2000;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seg {
    /// Buffer (0 or 1), offset, length, all reduced to fit.
    In(bool, u16, u16),
    Empty(bool),
    /// Outside RAM.
    Nowhere(u16),
    Huge,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Start(Vec<Seg>, Vec<Seg>),
    Pause,
    Resume,
    Stop,
    Poll,
    Query(u8),
    Depth(u16),
    Fill(bool, u16, u16, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    ops: Vec<Op>,
}

/// What a segment resolves to: its device address and, when inside a buffer, where.
fn resolve(s: Seg, base: [u64; 2]) -> (IoSegment, Option<(usize, u64)>) {
    match s {
        Seg::In(b, off, len) => {
            let off = u64::from(off) % LEN;
            let len = 1 + u64::from(len) % (LEN - off);
            let at = base[usize::from(b)] + off;
            (
                IoSegment {
                    addr: IoAddr(at),
                    len,
                },
                Some((usize::from(b), off)),
            )
        }
        Seg::Empty(b) => (
            IoSegment {
                addr: IoAddr(base[usize::from(b)]),
                len: 0,
            },
            Some((usize::from(b), 0)),
        ),
        Seg::Nowhere(len) => (
            IoSegment {
                addr: IoAddr(0xdead_0000_0000),
                len: u64::from(len) + 1,
            },
            None,
        ),
        Seg::Huge => (
            IoSegment {
                addr: IoAddr(base[0]),
                len: u64::MAX / 2,
            },
            None,
        ),
    }
}

struct Queued {
    src: Vec<(IoSegment, Option<(usize, u64)>)>,
    dst: Vec<(IoSegment, Option<(usize, u64)>)>,
    bytes: u64,
}

struct Run {
    bufs: [BufferMemoryDescriptor<Arc<dmakit_sim::Machine>>; 2],
    base: [u64; 2],
    /// Known bytes of each buffer (`None`: unknown after a failed transfer).
    model: [Vec<Option<u8>>; 2],
    engine: Arc<SimDmaEngine>,
    events: Arc<DmaEventSource<SimDmaEngine>>,
    done: Arc<Mutex<Vec<DmaCompletion>>>,
    /// Started, not yet seen complete, by ticket.
    queued: BTreeMap<u64, Queued>,
    last_ticket: u64,
    finished: BTreeMap<u64, u64>,
}

impl Run {
    /// Applies the completions delivered so far, in order.
    fn settle(&mut self) {
        let done: Vec<DmaCompletion> = std::mem::take(&mut *self.done.lock().unwrap());
        for c in done {
            let (&first, _) = self
                .queued
                .first_key_value()
                .expect("a completion with nothing queued");
            assert_eq!(c.ticket, first, "completions out of order");
            let q = self.queued.remove(&first).unwrap();
            match c.status {
                Ok(()) => {
                    assert_eq!(c.bytes, q.bytes, "a successful transfer moved a part");
                    self.copy(&q);
                }
                Err(_) => {
                    assert!(c.bytes <= q.bytes);
                    for &(seg, at) in &q.dst {
                        if let Some((b, off)) = at {
                            self.model[b][off as usize..(off + seg.len) as usize].fill(None);
                        }
                    }
                }
            }
            self.finished.insert(c.ticket, c.bytes);
        }
    }

    fn copy(&mut self, q: &Queued) {
        // Overlapping source and destination bytes: what the engine reads depends on its
        // order of work, as on real engines; the destination is then unknown.
        let overlap = q.src.iter().any(|&(s, a)| {
            q.dst.iter().any(|&(d, b)| match (a, b) {
                (Some((x, so)), Some((y, dof))) => x == y && so < dof + d.len && dof < so + s.len,
                _ => false,
            })
        });
        if overlap {
            for &(seg, at) in &q.dst {
                let (b, off) = at.expect("a successful transfer wrote only buffers");
                self.model[b][off as usize..(off + seg.len) as usize].fill(None);
            }
            return;
        }
        let mut data = Vec::new();
        for &(seg, at) in &q.src {
            let (b, off) = at.expect("a successful transfer read only buffers");
            data.extend_from_slice(&self.model[b][off as usize..(off + seg.len) as usize]);
        }
        let mut i = 0;
        for &(seg, at) in &q.dst {
            let (b, off) = at.expect("a successful transfer wrote only buffers");
            let n = seg.len as usize;
            self.model[b][off as usize..off as usize + n].copy_from_slice(&data[i..i + n]);
            i += n;
        }
    }

    fn start(&mut self, src: &[Seg], dst: &[Seg]) {
        let src: Vec<_> = src
            .iter()
            .take(300)
            .map(|&s| resolve(s, self.base))
            .collect();
        let dst: Vec<_> = dst
            .iter()
            .take(300)
            .map(|&s| resolve(s, self.base))
            .collect();
        let (s, d): (Vec<IoSegment>, Vec<IoSegment>) = (
            src.iter().map(|x| x.0).collect(),
            dst.iter().map(|x| x.0).collect(),
        );
        let t = DmaTransfer {
            source: &s,
            dest: &d,
        };
        let bytes = t.bytes();
        match self.events.start(&t) {
            Ok(ticket) => {
                let bytes = bytes.expect("a transfer with unequal or no bytes was queued");
                assert!(ticket > self.last_ticket, "tickets go up");
                self.last_ticket = ticket;
                self.queued.insert(ticket, Queued { src, dst, bytes });
            }
            Err(e) => assert!(
                bytes.is_err()
                    || matches!(
                        e,
                        Error::NoSpace { .. }
                            | Error::Busy { .. }
                            | Error::BadArgument { .. }
                            | Error::MessageTooLarge { .. }
                    ),
                "start: {e:?}"
            ),
        }
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Start(s, d) => self.start(s, d),
            Op::Pause => self.engine.pause().expect("pause"),
            Op::Resume => self.engine.resume().expect("resume"),
            Op::Stop => self.events.stop_dma_command().expect("stop"),
            Op::Poll => {
                self.events.poll();
            }
            &Op::Query(i) => {
                let ticket = self.last_ticket.saturating_sub(u64::from(i % 8));
                if let (Ok(b), Some(&f)) = (
                    self.events.query_dma_command(ticket),
                    self.finished.get(&ticket),
                ) {
                    assert_eq!(b, f, "query of finished ticket {ticket}");
                }
            }
            &Op::Depth(d) => {
                let valid = self.engine.valid_fifo_depth(u32::from(d));
                assert!(valid.is_power_of_two() && valid <= 256);
                let r = self.events.set_fifo_depth(u32::from(d));
                if r.is_ok() {
                    assert_eq!(self.events.fifo_depth(), u32::from(d));
                }
            }
            &Op::Fill(b, off, len, byte) => {
                // The model copies at delivery: store only when every transfer is
                // delivered, so no queued one can read or write around the store.
                self.events.poll();
                self.settle();
                if !self.queued.is_empty() {
                    return;
                }
                let off = u64::from(off) % LEN;
                let len = 1 + u64::from(len) % (LEN - off);
                let b = usize::from(b);
                self.bufs[b]
                    .write(off, &vec![byte; len as usize])
                    .expect("a CPU store");
                self.model[b][off as usize..(off + len) as usize].fill(Some(byte));
            }
        }
        self.settle();
    }

    fn finish(mut self) {
        self.engine.resume().expect("resume");
        for _ in 0..4 {
            self.events.poll();
            self.settle();
        }
        assert!(
            self.queued.is_empty(),
            "tickets never completed: {:?}",
            self.queued.keys().collect::<Vec<_>>()
        );
        for b in 0..2 {
            let mut got = vec![0u8; LEN as usize];
            self.bufs[b].read(0, &mut got).expect("a CPU load");
            for (i, (g, m)) in got.iter().zip(&self.model[b]).enumerate() {
                if let Some(m) = m {
                    assert_eq!(g, m, "buffer {b} byte {i:#x}");
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let machine = Arc::new(
        MachineBuilder::new()
            .seed(input.seed)
            .coherent(true)
            .build()
            .expect("a machine"),
    );
    let engine = Arc::new(SimDmaEngine::new(machine.clone(), None).expect("an engine"));
    let done = Arc::new(Mutex::new(Vec::new()));
    let d = done.clone();
    let events = Arc::new(DmaEventSource::new(engine.clone(), move |c| {
        d.lock().unwrap().push(c)
    }));
    engine.connect(events.clone());
    let buf = || {
        BufferMemoryDescriptor::new(
            machine.clone(),
            BufferOptions::new(LEN, Direction::InOut).contiguous(true),
        )
        .expect("a contiguous buffer")
    };
    let bufs = [buf(), buf()];
    let base = [0, 1].map(|i| bufs[i].physical_segment(0).expect("a segment").addr.0);
    for b in &bufs {
        b.write(0, &vec![0u8; LEN as usize]).expect("zero fill");
    }
    let mut run = Run {
        bufs,
        base,
        model: [vec![Some(0); LEN as usize], vec![Some(0); LEN as usize]],
        engine,
        events,
        done,
        queued: BTreeMap::new(),
        last_ticket: 0,
        finished: BTreeMap::new(),
    };
    for op in input.ops.iter().take(64) {
        run.op(op);
    }
    run.finish();
});
