//! Helpers shared by the simulator's test files (each file includes this module with
//! `mod common;` and uses what it needs).
#![allow(dead_code)]

use dmakit::descriptor::BufferMemoryDescriptor;
use dmakit::descriptor::{MemoryDescriptor, PrepOwner, Segment, Source};
use dmakit::dma::{CompletionSource, DmaCompletion, DmaController, DmaTransfer, IoSegment};
use dmakit::{Direction, Error, IoAddr, PageSize};
use dmakit_sim::{Machine, MachineBuilder, SimDmaEngine};
use std::sync::Arc;

/// `n` bytes that differ from their neighbours, varied by `salt`.
pub fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// A descriptor of the user's own that forwards the required methods and keeps every
/// default (so, among others, it does not track preparations and cannot be mapped).
pub struct Plain(pub Arc<dyn MemoryDescriptor>);

impl MemoryDescriptor for Plain {
    fn length(&self) -> u64 {
        self.0.length()
    }
    fn direction(&self) -> Direction {
        self.0.direction()
    }
    fn page_size(&self) -> PageSize {
        self.0.page_size()
    }
    fn prepare_for(&self, owner: PrepOwner, dir: Direction) -> dmakit::Result<()> {
        self.0.prepare_for(owner, dir)
    }
    fn complete_for(&self, owner: PrepOwner) -> dmakit::Result<()> {
        self.0.complete_for(owner)
    }
    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        self.0.read_bytes(offset, buf)
    }
    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        self.0.write_bytes(offset, data)
    }
    fn physical_segment(&self, offset: u64) -> dmakit::Result<Segment> {
        self.0.physical_segment(offset)
    }
    fn sources(&self, offset: u64, len: u64, f: &mut dyn FnMut(Source)) -> dmakit::Result<()> {
        self.0.sources(offset, len, f)
    }
}

/// A DMA controller that accepts nothing and implements none of the optional calls: every
/// start is refused, no ticket is known and no FIFO depth is valid.
pub struct Refusing;
impl CompletionSource for Refusing {
    fn take_completions(&self, _: &mut dyn FnMut(DmaCompletion)) {}
}
impl DmaController for Refusing {
    fn start(&self, _: &DmaTransfer<'_>) -> dmakit::Result<u64> {
        Err(Error::Unsupported {
            what: "refusing controller",
        })
    }
    fn stop(&self) -> dmakit::Result<()> {
        Ok(())
    }
    fn query(&self, ticket: u64) -> dmakit::Result<u64> {
        Err(Error::BadArgument {
            what: "no such ticket",
            value: ticket,
        })
    }
    fn fifo_depth(&self) -> u32 {
        0
    }
    fn set_fifo_depth(&self, depth: u32) -> dmakit::Result<()> {
        Err(Error::BadArgument {
            what: "no valid depth",
            value: depth as u64,
        })
    }
    fn valid_fifo_depth(&self, _: u32) -> u32 {
        0
    }
}

/// A buffer of the simulated machine.
pub type Buf = BufferMemoryDescriptor<Arc<Machine>>;

/// A coherent machine seeded with `seed`, a DMA engine on it, and a 16 KiB buffer whose
/// bytes differ from their neighbours.
pub fn engine_rig(seed: u64) -> (Arc<Machine>, Arc<SimDmaEngine>, Buf) {
    let m = Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let engine = Arc::new(SimDmaEngine::new(m.clone(), None).unwrap());
    let data: Vec<u8> = (0..0x4000u32).map(|i| (i % 251) as u8).collect();
    let buf = BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::InOut).unwrap();
    (m, engine, buf)
}

/// One physically contiguous piece of `buf` (the buffer is contiguous per page; `len`
/// stays inside one page).
pub fn seg(buf: &Buf, off: u64, len: u64) -> [IoSegment; 1] {
    let s = buf.physical_segment(off).unwrap();
    assert!(s.len >= len);
    [IoSegment {
        addr: IoAddr(s.addr.0),
        len,
    }]
}

/// `len` bytes of `buf` from `off`, all of them.
pub fn bytes(buf: &Buf, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    assert_eq!(buf.read_bytes(off, &mut v), len);
    v
}
