//! The IOMalloc family (`IoHeap` on the simulated machine) against a model of its blocks.
//!
//! Every block is aligned as asked, overlaps no other live block, and keeps the bytes last
//! written to it whatever happens to its neighbours (zone elements share pages); the
//! zero-filling calls return zeros. A free is refused with the documented error (null is a
//! no-op; wrong size, wrong family, not a block's start; `Busy` while a prepared
//! descriptor wires the block) and then frees nothing; the heap's counters match the model
//! after every call. Physical allocation failures are injected; at the end, with every
//! descriptor completed and every block freed, the machine has the pages, allocations
//! and wirings it started with.
#![no_main]

use arbitrary::Arbitrary;
use dmakit::alloc::IoHeap;
use dmakit::descriptor::{GeneralMemoryDescriptor, MemoryDescriptor};
use dmakit::error::MallocFamily;
use dmakit::platform::{CpuAccess, Task};
use dmakit::{Direction, Error, VirtAddr};
use dmakit_fuzz::num::Num;
use dmakit_sim::{FaultSite, Machine, MachineBuilder};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Malloc,
    Zero,
    Aligned(u8),
    Pageable(u8),
    Contiguous(u8),
}

#[derive(Arbitrary, Debug)]
enum Size {
    Small(u8),
    Medium(u16),
    Pages(u8),
    Any(Num),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc(Kind, Size),
    /// A live block (by index): freed exactly, with its size plus a delta, or through
    /// another family's function.
    Free(u16, i8, Option<u8>),
    FreeAt(Num, Num, u8),
    /// Writes `len` bytes of `byte` at an offset of a live block, through the CPU.
    Write(u16, u16, u8, u8),
    /// Prepares a descriptor over a live block, or completes one.
    Wire(u16),
    Unwire(u16),
    /// The next physical page allocation after this many fails.
    FailPage(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    big_pages: bool,
    ops: Vec<Op>,
}

struct Block {
    addr: u64,
    size: u64,
    family: MallocFamily,
    /// The bytes the model knows (blocks up to 64 KiB; `None` when not initialised).
    bytes: Option<Vec<Option<u8>>>,
    wired: Vec<GeneralMemoryDescriptor<Arc<Machine>>>,
}

const FAMILIES: [MallocFamily; 4] = [
    MallocFamily::Malloc,
    MallocFamily::Aligned,
    MallocFamily::Pageable,
    MallocFamily::Contiguous,
];

/// How IOKit reads an `IOMallocAligned` / `IOMallocPageable` alignment: rounded up to a
/// power of two (48 aligns to 64).
fn rounded(a: u64) -> u64 {
    if a <= 1 {
        a
    } else {
        a.next_power_of_two()
    }
}

fn align(a: u8, max_shift: u32) -> u64 {
    match a % 16 {
        0 => 0,
        15 => 48, // not a power of two
        s => 1 << (u32::from(s) * max_shift / 14),
    }
}

struct Run {
    m: Arc<Machine>,
    heap: IoHeap<Arc<Machine>>,
    blocks: Vec<Block>,
    page: u64,
}

impl Run {
    fn size(&self, s: &Size) -> u64 {
        match *s {
            Size::Small(n) => u64::from(n) + 1,
            Size::Medium(n) => u64::from(n) + 1,
            Size::Pages(n) => (u64::from(n % 40) + 1) * self.page,
            Size::Any(n) => n.0,
        }
    }

    fn alloc(&mut self, kind: Kind, size: u64) {
        let Ok(len) = usize::try_from(size) else {
            return;
        };
        let (got, family, want_align, zeroed) = match kind {
            Kind::Malloc => (self.heap.malloc(len), MallocFamily::Malloc, 1, false),
            Kind::Zero => (self.heap.malloc_zero(len), MallocFamily::Malloc, 1, true),
            Kind::Aligned(a) => {
                let a = align(a, 31);
                (
                    self.heap.malloc_aligned(len, a as usize),
                    MallocFamily::Aligned,
                    rounded(a),
                    false,
                )
            }
            Kind::Pageable(a) => {
                let a = align(a, self.page.trailing_zeros() + 1);
                (
                    self.heap.malloc_pageable(len, a as usize),
                    MallocFamily::Pageable,
                    rounded(a),
                    true,
                )
            }
            Kind::Contiguous(a) => {
                let a = align(a, 22);
                let got = self.heap.malloc_contiguous(len, a as usize);
                if let Ok((va, pa)) = got {
                    assert!(
                        a <= 1 || (va.0 % a == 0 && pa.0 % a == 0),
                        "contiguous {va:?}/{pa:?} not {a:#x}-aligned"
                    );
                    assert!(
                        pa.0 + (size - 1) <= u64::from(u32::MAX),
                        "contiguous memory above 4 GiB: {pa:?}+{size:#x}"
                    );
                }
                (got.map(|(va, _)| va), MallocFamily::Contiguous, a, true)
            }
        };
        let addr = match got {
            Ok(a) => a.0,
            Err(e) => {
                // A zero size is refused by the aligned and contiguous calls only (IOKit's
                // IOMalloc(0) and IOMallocPageable(0) return a block).
                let zero_ok = matches!(kind, Kind::Malloc | Kind::Zero | Kind::Pageable(_));
                assert!(
                    (size == 0 && !zero_ok) || !matches!(e, Error::ZeroSize { .. }),
                    "{e:?}"
                );
                if want_align.is_power_of_two() || want_align == 0 {
                    assert!(
                        !matches!(e, Error::BadAlignment { .. })
                            || want_align > (1 << 31)
                            || family == MallocFamily::Pageable,
                        "align {want_align:#x}: {e:?}"
                    );
                }
                return;
            }
        };
        assert!(
            size > 0 || matches!(kind, Kind::Malloc | Kind::Zero | Kind::Pageable(_)),
            "a zero-size allocation succeeded"
        );
        assert!(
            want_align.is_power_of_two() || want_align <= 1,
            "alignment {want_align} accepted"
        );
        assert!(
            want_align <= 1 || addr % want_align == 0,
            "{addr:#x} not {want_align:#x}-aligned"
        );
        for b in &self.blocks {
            assert!(
                addr + size <= b.addr || b.addr + b.size <= addr,
                "{addr:#x}+{size:#x} overlaps {:#x}+{:#x}",
                b.addr,
                b.size
            );
        }
        let bytes = (size <= 1 << 16).then(|| {
            if zeroed {
                let mut got = vec![0xa5u8; size as usize];
                self.m
                    .read_virt(Task::KERNEL, VirtAddr(addr), &mut got)
                    .expect("a new block reads");
                assert!(
                    got.iter().all(|&b| b == 0),
                    "zero-filled block {addr:#x} is not zero"
                );
                vec![Some(0); size as usize]
            } else {
                vec![None; size as usize]
            }
        });
        self.blocks.push(Block {
            addr,
            size,
            family,
            bytes,
            wired: Vec::new(),
        });
    }

    fn check_bytes(&self, b: &Block) {
        let Some(model) = &b.bytes else { return };
        let mut got = vec![0u8; b.size as usize];
        if let Err(e) = self.m.read_virt(Task::KERNEL, VirtAddr(b.addr), &mut got) {
            // Reading untouched pageable memory pages it in.
            assert!(
                b.family == MallocFamily::Pageable && matches!(e, Error::Injected { .. }),
                "read of a live block: {e:?}"
            );
            return;
        }
        for (i, (g, m)) in got.iter().zip(model).enumerate() {
            if let Some(m) = m {
                assert_eq!(g, m, "byte {i} of block {:#x} changed", b.addr);
            }
        }
    }

    fn free(&mut self, addr: u64, size: u64, family: MallocFamily) {
        let Ok(len) = usize::try_from(size) else {
            return;
        };
        let before = self.heap.stats();
        let f = match family {
            MallocFamily::Malloc => dmakit::alloc::io_free,
            MallocFamily::Aligned => dmakit::alloc::io_free_aligned,
            MallocFamily::Pageable => dmakit::alloc::io_free_pageable,
            MallocFamily::Contiguous => dmakit::alloc::io_free_contiguous,
        };
        let i = self.blocks.iter().position(|b| b.addr == addr);
        if let Some(i) = i {
            self.check_bytes(&self.blocks[i]);
        }
        let r = f(&self.heap, VirtAddr(addr), len);
        match (r, i) {
            (Ok(()), None) => assert_eq!(addr, 0, "freed {addr:#x}, no block starts there"),
            (Ok(()), Some(i)) => {
                let b = &self.blocks[i];
                assert!(
                    b.size == size && b.family == family && b.wired.is_empty(),
                    "bad free of {addr:#x} accepted"
                );
                self.blocks.swap_remove(i);
            }
            (Err(e), None) => assert!(
                matches!(e, Error::NotAllocated { .. }),
                "free of {addr:#x}: {e:?}"
            ),
            (Err(e), Some(i)) => {
                let b = &self.blocks[i];
                let want = if b.family != family {
                    matches!(e, Error::WrongFree { .. })
                } else if b.size != size {
                    matches!(e, Error::WrongSize { .. })
                } else {
                    !b.wired.is_empty() && matches!(e, Error::Busy { .. })
                };
                assert!(want, "free of {addr:#x}+{size:#x} {family:?}: {e:?}");
                assert_eq!(self.heap.stats(), before, "a refused free changed the heap");
                self.check_bytes(b);
            }
        }
    }

    fn pick(&self, i: u16) -> Option<usize> {
        (!self.blocks.is_empty()).then(|| usize::from(i) % self.blocks.len())
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Alloc(k, s) => {
                let size = self.size(s);
                self.alloc(*k, size);
            }
            &Op::Free(i, delta, other) => {
                if let Some(i) = self.pick(i) {
                    let b = &self.blocks[i];
                    let family = other.map_or(b.family, |f| FAMILIES[usize::from(f) % 4]);
                    self.free(
                        b.addr,
                        b.size.wrapping_add_signed(i64::from(delta % 3)),
                        family,
                    );
                }
            }
            &Op::FreeAt(a, s, f) => self.free(a.0, s.0, FAMILIES[usize::from(f) % 4]),
            &Op::Write(i, off, byte, len) => {
                if let Some(i) = self.pick(i).filter(|&i| self.blocks[i].size > 0) {
                    let b = &mut self.blocks[i];
                    let off = u64::from(off) % b.size;
                    let len = u64::from(len).min(b.size - off);
                    let data = vec![byte; len as usize];
                    // A pageable block may be written; the machine pages it in, which
                    // may meet an injected page failure (then a prefix may be written).
                    let r = self
                        .m
                        .write_virt(Task::KERNEL, VirtAddr(b.addr + off), &data);
                    if let Err(e) = &r {
                        assert!(
                            b.family == MallocFamily::Pageable
                                && matches!(e, Error::Injected { .. }),
                            "write to a live block: {e:?}"
                        );
                    }
                    if let Some(model) = &mut b.bytes {
                        for x in &mut model[off as usize..(off + len) as usize] {
                            *x = r.is_ok().then_some(byte);
                        }
                    }
                }
            }
            &Op::Wire(i) => {
                if let Some(i) = self.pick(i).filter(|&i| self.blocks[i].size > 0) {
                    let b = &mut self.blocks[i];
                    let md = GeneralMemoryDescriptor::with_address_range(
                        self.m.clone(),
                        Task::KERNEL,
                        VirtAddr(b.addr),
                        b.size,
                        Direction::InOut,
                    )
                    .expect("a descriptor of a live block");
                    if md.prepare_wiring(Direction::None).is_ok() {
                        b.wired.push(md);
                    }
                }
            }
            &Op::Unwire(i) => {
                if let Some(i) = self.pick(i) {
                    if let Some(md) = self.blocks[i].wired.pop() {
                        md.complete().expect("complete of a prepared descriptor");
                    }
                }
            }
            &Op::FailPage(n) => {
                let next = self.m.stats().calls(FaultSite::PhysAlloc) + u64::from(n % 16) + 1;
                self.m.inject(FaultSite::PhysAlloc, next);
            }
        }
        let s = self.heap.stats();
        assert_eq!(s.live, self.blocks.len() as u64);
        assert_eq!(
            s.live_bytes,
            self.blocks.iter().map(|b| b.size).sum::<u64>()
        );
    }
}

fuzz_target!(|input: Input| {
    // Small RAM (below and above 4 GiB) keeps each run quick.
    let mut mb = MachineBuilder::new()
        .seed(input.seed)
        .ram(1 << 20, 16 << 20)
        .ram(1 << 32, 8 << 20);
    if input.big_pages {
        mb = mb.page_size(dmakit::PageSize::SIZE_16K);
    }
    let m = Arc::new(mb.build().expect("the default machine"));
    let start = m.stats();
    let page = m.page().bytes();
    let mut run = Run {
        heap: IoHeap::new(m.clone()),
        m: m.clone(),
        blocks: Vec::new(),
        page,
    };
    for op in input.ops.iter().take(200) {
        run.op(op);
    }
    m.clear_faults();
    for b in &mut run.blocks {
        for md in b.wired.drain(..) {
            md.complete().expect("complete of a prepared descriptor");
        }
    }
    let left: Vec<_> = run
        .blocks
        .iter()
        .map(|b| (b.addr, b.size, b.family))
        .collect();
    for (a, s, f) in left {
        run.free(a, s, f);
    }
    assert!(run.blocks.is_empty(), "blocks left after freeing them all");
    drop(run);
    let end = m.stats();
    assert_eq!(
        (end.free_pages, end.kernel_allocations, end.wired_pages),
        (
            start.free_pages,
            start.kernel_allocations,
            start.wired_pages
        ),
        "the heap left memory behind"
    );
});
