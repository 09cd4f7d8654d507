//! `MemoryMap`s of every descriptor shape, in the kernel and two other tasks, against the
//! descriptor's bytes: every live mapping reads exactly the bytes of its range, stores
//! through a writable one reach the descriptor and every other mapping of those bytes, a
//! read-only one refuses stores and changes nothing, guard pages fault, a fixed address is
//! honoured, a unique mapping shares with nobody, a mapping's physical segments are the
//! descriptor's. Handles are cloned, unmapped and dropped in any order; at the end the
//! machine holds no allocation, mapping or wiring.
#![no_main]

use arbitrary::Arbitrary;
use dmakit::descriptor::MemoryDescriptor;
use dmakit::map::{MapGuard, MapOptions, MemoryMap};
use dmakit::platform::{CacheMode, CpuAccess, Task};
use dmakit::{Error, VirtAddr};
use dmakit_fuzz::shapes::{assert_nothing_left, build, machine, window, ShapedInput, M};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Map {
    task: u8,
    read_only: bool,
    whole: bool,
    offset: u16,
    len: u16,
    guard: u8,
    sharing: u8,
    cache: u8,
    /// A fixed address: one seen before in the task (by index), moved by whole pages.
    fixed: Option<(u8, i8)>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Map(Map),
    Clone(u8),
    Unmap(u8),
    Drop(u8),
    Read(u8, u16, u16),
    Write(u8, u16, u16, u8),
    WriteDescriptor(u16, u16, u8),
    Guard(u8),
    Segment(u8, u16),
}

/// The machine's seed, a shape at most 2 levels deep and the operations.
type Input = ShapedInput<Op, 2>;

struct Run {
    m: M,
    md: std::sync::Arc<dyn MemoryDescriptor>,
    bytes: Vec<u8>,
    tasks: [Task; 3],
    /// Handles, each with the offset of its first byte in `md` (a sub-descriptor's
    /// mapping reports an offset in its parent) and the span `[start, end)` of the mapping
    /// that owns its pages: its own, or that of the mapping it was shared out of as a
    /// sub-range (as IOKit shares a compatible mapping), which its guards surround.
    maps: Vec<(MemoryMap<M>, u64, (u64, u64))>,
    /// Addresses mappings had, per task.
    seen: [Vec<u64>; 3],
    page: u64,
}

impl Run {
    fn pick(&self, i: u8) -> Option<usize> {
        (!self.maps.is_empty()).then(|| usize::from(i) % self.maps.len())
    }

    fn attached(&self, i: u8) -> Option<usize> {
        self.pick(i).filter(|&i| self.maps[i].0.is_mapped())
    }

    /// The span of the mapping that owns the pages of a new mapping `map`: that of a live
    /// handle of the task whose owner's span holds it (a new mapping of its own can only be
    /// placed outside every live one), else its own.
    fn owner_span(&self, map: &MemoryMap<M>) -> (u64, u64) {
        let (a, l) = (map.address().0, map.length());
        self.maps
            .iter()
            .find(|(h, _, r)| h.is_mapped() && h.task() == map.task() && r.0 <= a && a + l <= r.1)
            .map_or((a, a + l), |(_, _, r)| *r)
    }

    fn options(&self, o: &Map) -> (MapOptions, usize) {
        let t = usize::from(o.task % 3);
        let mut opts = MapOptions::new().in_task(self.tasks[t]);
        if !o.whole {
            let (off, len) = window(self.bytes.len(), o.offset, o.len);
            opts = opts.range(off as u64, len as u64);
        }
        if o.read_only {
            opts = opts.read_only();
        }
        opts = opts
            .guard([MapGuard::None, MapGuard::Small, MapGuard::Large][usize::from(o.guard % 3)]);
        opts = match o.sharing % 3 {
            0 => opts,
            1 => opts.unique(),
            _ => opts.reference(),
        };
        if let Some(c) =
            [None, Some(CacheMode::CopyBack), Some(CacheMode::Inhibit)][usize::from(o.cache % 3)]
        {
            opts = opts.cache(c);
        }
        if let Some((i, delta)) = o.fixed {
            let seen = &self.seen[t];
            if !seen.is_empty() {
                let a = seen[usize::from(i) % seen.len()];
                let at = a.wrapping_add_signed(i64::from(delta % 4) * self.page as i64);
                opts = opts.at(VirtAddr(at));
            }
        }
        (opts, t)
    }

    fn map(&mut self, o: &Map) {
        let (opts, t) = self.options(o);
        match MemoryMap::new(self.m.clone(), self.md.clone(), opts) {
            Ok(map) => {
                let len = if opts.length() == 0 {
                    self.bytes.len() as u64
                } else {
                    opts.length()
                };
                assert_eq!((map.length(), map.task()), (len, opts.task()));
                // In `md`, or in the parent a sub-descriptor maps through.
                let mut shift = 0;
                let mut md = self.md.clone();
                while let Some((parent, o)) = md.map_through() {
                    shift += o;
                    md = parent;
                }
                assert_eq!(map.offset(), opts.offset() + shift);
                assert_eq!(map.options().is_read_only(), opts.is_read_only());
                if let Some(at) = opts.fixed_address() {
                    assert_eq!(map.address(), at, "a fixed mapping elsewhere");
                }
                if opts.sharing_mode() == dmakit::map::MapSharing::Unique {
                    assert!(
                        !self.maps.iter().any(|(h, _, _)| h.same_mapping(&map)),
                        "a unique mapping is shared"
                    );
                }
                self.seen[t].push(map.address().0);
                let owner = self.owner_span(&map);
                self.maps.push((map, opts.offset(), owner));
                self.check_read(self.maps.len() - 1, 0, u16::MAX);
            }
            Err(e) => assert!(
                matches!(
                    e,
                    Error::NotMapped { .. }
                        | Error::RangeBusy { .. }
                        | Error::NotAligned { .. }
                        | Error::BadArgument { .. }
                        | Error::NoSpace { .. }
                        | Error::NoMemory { .. }
                        | Error::Injected { .. }
                ),
                "map {opts:?}: {e:?}"
            ),
        }
    }

    /// Reads `[off, off + n)` of mapping `i` (reduced to fit) through its task.
    fn check_read(&self, i: usize, off: u16, n: u16) {
        let (map, base, _) = &self.maps[i];
        let (off, n) = window(map.length() as usize, off, n);
        let mut got = vec![0u8; n];
        self.m
            .read_virt(map.task(), VirtAddr(map.address().0 + off as u64), &mut got)
            .expect("a live mapping reads");
        let at = *base as usize + off;
        assert_eq!(
            got,
            self.bytes[at..at + n],
            "mapping {:#x} at +{off:#x}",
            map.address().0
        );
    }

    fn write(&mut self, i: usize, off: u16, n: u16, byte: u8) {
        let (map, base, _) = &self.maps[i];
        let (off, n) = window(map.length() as usize, off, n);
        let r = self.m.write_virt(
            map.task(),
            VirtAddr(map.address().0 + off as u64),
            &vec![byte; n],
        );
        let at = *base as usize + off;
        if map.options().is_read_only() {
            assert!(
                r.is_err(),
                "a store through a read-only mapping was accepted"
            );
        } else {
            r.expect("a store through a writable mapping");
            self.bytes[at..at + n].fill(byte);
        }
        // The descriptor sees exactly the model.
        let mut back = vec![0u8; n];
        assert_eq!(self.md.read_bytes(at as u64, &mut back), n);
        assert_eq!(
            back,
            self.bytes[at..at + n],
            "the descriptor after a store through a mapping"
        );
    }

    fn op(&mut self, op: &Op) {
        match *op {
            Op::Map(ref o) => self.map(o),
            Op::Clone(i) => {
                if let Some(i) = self.pick(i) {
                    let c = self.maps[i].0.clone();
                    assert_eq!(c.is_mapped(), self.maps[i].0.is_mapped());
                    self.maps.push((c, self.maps[i].1, self.maps[i].2));
                }
            }
            Op::Unmap(i) => {
                if let Some(i) = self.pick(i) {
                    let map = &mut self.maps[i].0;
                    map.unmap().expect("unmap of a mapping with nothing wired");
                    assert!(!map.is_mapped());
                    assert_eq!(map.address(), VirtAddr(0));
                }
            }
            Op::Drop(i) => {
                if let Some(i) = self.pick(i) {
                    self.maps.swap_remove(i);
                }
            }
            Op::Read(i, off, n) => {
                if let Some(i) = self.attached(i) {
                    self.check_read(i, off, n);
                }
            }
            Op::Write(i, off, n, byte) => {
                if let Some(i) = self.attached(i) {
                    self.write(i, off, n, byte);
                }
            }
            Op::WriteDescriptor(off, n, byte) => {
                let (off, n) = window(self.bytes.len(), off, n);
                if self.md.write_bytes(off as u64, &vec![byte; n]) == n {
                    self.bytes[off..off + n].fill(byte);
                }
            }
            Op::Guard(i) => {
                if let Some(i) = self.attached(i) {
                    let (map, _, owner) = &self.maps[i];
                    if map.options().guard_mode() != MapGuard::None {
                        // The guards surround the mapping that owns the pages: a sub-range
                        // shared out of it has that mapping's bytes around it.
                        let first = owner.0 & !(self.page - 1);
                        let end = owner.1.next_multiple_of(self.page);
                        for (at, side) in [(first.wrapping_sub(1), "below"), (end, "above")] {
                            let mut b = [0u8];
                            assert!(
                                self.m.read_virt(map.task(), VirtAddr(at), &mut b).is_err(),
                                "the guard {side} reads"
                            );
                        }
                    }
                }
            }
            Op::Segment(i, off) => {
                if let Some(i) = self.attached(i) {
                    let (map, base, _) = &self.maps[i];
                    let off = u64::from(off) % map.length();
                    match (
                        map.physical_segment(off),
                        self.md.physical_segment(base + off),
                    ) {
                        (Ok(a), Ok(b)) => {
                            assert_eq!(a.addr, b.addr);
                            assert_eq!(a.len, b.len.min(map.length() - off));
                        }
                        (Err(_), Err(_)) => {}
                        (a, b) => panic!("mapping segment {a:?}, descriptor {b:?}"),
                    }
                }
            }
        }
        // Every live mapping still shows the bytes.
        for i in 0..self.maps.len() {
            if self.maps[i].0.is_mapped() {
                self.check_read(i, 0, u16::MAX);
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let m = machine(u64::from(input.seed), true);
    if let Some(built) = build(&m, &input.shape) {
        if !built.bytes.is_empty() {
            let page = m.page().bytes();
            let tasks = [Task::KERNEL, m.create_task(), m.create_task()];
            let mut run = Run {
                m: m.clone(),
                md: built.md.clone(),
                bytes: built.bytes.clone(),
                tasks,
                maps: Vec::new(),
                seen: [Vec::new(), Vec::new(), Vec::new()],
                page,
            };
            drop(built);
            for op in input.ops.iter().take(100) {
                run.op(op);
            }
        }
    }
    assert_nothing_left(&m);
});
