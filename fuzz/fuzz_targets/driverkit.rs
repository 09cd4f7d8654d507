//! The DriverKit-shaped calls over every descriptor shape, with and without an IOMMU, on a
//! coherent or non-coherent machine: buffers, sub-ranges and combinations made by the
//! DriverKit factories, mappings made by `CreateMapping`, and DMA commands prepared,
//! copied through and completed in any order with any arguments. Checked: no call panics;
//! `PerformOperation`'s errors come in DriverKit's order; a copy moves exactly the bytes
//! it reports and the device sees what was written (through the IOMMU or by physical
//! address); a prepared command's segments describe its preparation and the device reads
//! the descriptor's bytes through them; a refused preparation leaves nothing prepared; a
//! mapping reads the descriptor's bytes and an `Out` descriptor that is not the mapping
//! task's own buffer maps read-only; at the end nothing is left allocated, wired or
//! mapped.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
use dmakit::dma::IoSegment;
use dmakit::driverkit::{
    DkBufferMemoryDescriptor, DkDmaCommand, DkDmaSpec, DkMapOptions, DkMemoryDescriptor,
    DkMemoryOptions, DkPerformOptions, MAX_SEGMENTS,
};
use dmakit::map::MemoryMap;
use dmakit::mapper::{IommuMapper, Mapper};
use dmakit::platform::{CpuAccess, PhysicalMemory};
use dmakit::{Direction, IoAddr, IoReturn, PhysAddr, VirtAddr};
use dmakit_fuzz::shapes::{assert_nothing_left, build, machine, Shape, M};
use dmakit_sim::SimIommu;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Direction word (any bits), capacity, alignment (as a shift, or raw).
    Buffer(u8, u16, u8, bool),
    /// Huge or odd sizes straight through the factory.
    BufferRaw(u64, u64),
    SetLength(u8, u32),
    Sub(u8, u8, u16, u16),
    SubRaw(u8, u64, u64),
    Multi(Vec<u8>, u8),
    /// Descriptor, option word, fixed-address source, offset, length, alignment.
    Map(u8, u16, u8, u16, u16, u8),
    DropMap(u8),
    DropDescriptor(u8),
    /// Address bits, whether through the IOMMU, option word.
    Command(u8, bool, u8),
    DropCommand(u8),
    /// Command, descriptor, offset, length, segment array length, option word.
    Prepare(u8, u8, u16, u16, u8, u8),
    PrepareRaw(u8, u8, u64, u64, u8, u8),
    Complete(u8, u8),
    /// Command, operation, DMA offset, length, data offset, data descriptor (none when
    /// out of range), reduced to mostly fit.
    Perform(u8, u8, u16, u16, u16, u8),
    /// The same with any option word and numbers.
    PerformRaw(u8, u64, u64, u64, u64, u8),
}

#[derive(Debug)]
struct Input {
    seed: u8,
    coherent: bool,
    iommu: bool,
    shape: Shape,
    ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Input {
            seed: u.arbitrary()?,
            coherent: u.arbitrary()?,
            iommu: u.arbitrary()?,
            shape: Shape::draw(u, 2)?,
            ops: {
                // Operations until the bytes run out (at most 64).
                let mut ops = Vec::new();
                while ops.len() < 64 && !u.is_empty() {
                    ops.push(u.arbitrary()?);
                }
                ops
            },
        })
    }
}

type Mapper_ = IommuMapper<Arc<SimIommu>>;

/// A preparation: offset, length, descriptor, segments.
type Prepared = (u64, u64, Arc<dyn MemoryDescriptor>, Vec<IoSegment>);

/// A descriptor, and the same as a buffer when it is one.
type Held = (
    Arc<dyn MemoryDescriptor>,
    Option<Arc<BufferMemoryDescriptor<M>>>,
);

struct Cmd {
    dk: DkDmaCommand<M>,
    mapped: bool,
    /// The preparation: offset, length, descriptor, segments.
    prepared: Option<Prepared>,
}

struct Run {
    m: M,
    iommu: Option<(Arc<SimIommu>, Arc<Mapper_>)>,
    mds: Vec<Held>,
    maps: Vec<MemoryMap<M>>,
    seen: Vec<u64>,
    cmds: Vec<Cmd>,
}

fn code<T>(r: &dmakit::Result<T>) -> Option<IoReturn> {
    r.as_ref().err().map(|e| e.io_return())
}

fn pick<T>(v: &[T], i: u8) -> Option<usize> {
    (!v.is_empty()).then(|| i as usize % v.len())
}

fn contents(md: &dyn MemoryDescriptor, off: u64, n: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; n];
    (md.read_bytes(off, &mut v) == n).then_some(v)
}

/// Whether `[off, off + n)` of `md` may reach some memory twice (a combination holding the
/// same buffer twice): then what it reads back need not be what was written into it. An
/// unknown layout counts as aliased.
fn aliased(md: &dyn MemoryDescriptor, off: u64, n: usize) -> bool {
    let mut runs = Vec::new();
    let mut x = 0u64;
    while x < n as u64 {
        let Ok(seg) = md.physical_segment(off + x) else {
            return true;
        };
        if runs.len() > 256 || seg.len == 0 {
            return true;
        }
        let len = seg.len.min(n as u64 - x);
        runs.push((seg.addr.0, len));
        x += len;
    }
    runs.sort_unstable();
    runs.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0)
}

impl Run {
    fn add(&mut self, md: Arc<dyn MemoryDescriptor>, b: Option<Arc<BufferMemoryDescriptor<M>>>) {
        if self.mds.len() < 12 {
            self.mds.push((md, b));
        }
    }

    fn buffer(&mut self, dir: u8, capacity: u64, alignment: u64) {
        let r = DkBufferMemoryDescriptor::create(
            self.m.clone(),
            DkMemoryOptions::from_bits(u64::from(dir)),
            capacity,
            alignment,
        );
        match r {
            Ok(b) => {
                assert!(dir & !3 == 0, "a buffer with bits beside the direction");
                assert!(capacity > 0, "a buffer of 0 bytes");
                assert_eq!(b.length(), capacity, "a new buffer's length");
                let range = DkBufferMemoryDescriptor::get_address_range(&b);
                assert_eq!(range.length, capacity);
                assert_eq!(range.address.0 % 4096, 0, "a buffer starts on a page");
                let a = alignment.max(1).checked_next_power_of_two().unwrap_or(1);
                if a > 1 {
                    let pa = b.physical_segment(0).expect("a wired buffer has pages");
                    assert_eq!(pa.addr.0 % a.min(1 << 20), 0, "alignment {alignment:#x}");
                }
                self.add(b.clone(), Some(b));
            }
            Err(e) => {
                let c = e.io_return();
                if dir & !3 != 0 {
                    assert_eq!(c, IoReturn::BAD_ARGUMENT, "{e}");
                } else {
                    assert!(
                        c == IoReturn::NO_MEMORY || c == IoReturn::NO_RESOURCES,
                        "buffer {capacity:#x} aligned {alignment:#x}: {e}"
                    );
                }
            }
        }
    }

    fn set_length(&mut self, i: u8, len: u32) {
        let Some(i) = pick(&self.mds, i) else { return };
        let Some(b) = self.mds[i].1.clone() else {
            return;
        };
        let before = b.length();
        DkBufferMemoryDescriptor::set_length(&b, u64::from(len)).expect("SetLength is Ok");
        let after = DkBufferMemoryDescriptor::get_address_range(&b).length;
        if u64::from(len) <= b.capacity() {
            assert_eq!(after, u64::from(len));
        } else {
            assert_eq!(after, before, "a length above the capacity is ignored");
        }
    }

    fn sub(&mut self, i: u8, dir: u8, off: u64, len: u64) {
        let Some(i) = pick(&self.mds, i) else { return };
        let of = self.mds[i].0.clone();
        let r = DkMemoryDescriptor::create_sub_memory_descriptor(
            DkMemoryOptions::from_bits(u64::from(dir)),
            off,
            len,
            &of,
        );
        let fits = off.checked_add(len).is_some_and(|e| e <= of.length());
        match r {
            Ok(s) => {
                assert!(
                    fits && dir & !3 == 0,
                    "sub {off:#x}+{len:#x} of {:#x}",
                    of.length()
                );
                assert_eq!(s.length(), len);
                if let (Some(a), Some(b)) = (
                    contents(&*s, 0, len as usize),
                    contents(&*of, off, len as usize),
                ) {
                    assert_eq!(a, b, "a sub-descriptor reads its parent's bytes");
                }
                self.add(s, None);
            }
            Err(e) => assert!(
                !fits || dir & !3 != 0 || e.io_return() == IoReturn::BAD_ARGUMENT,
                "sub {off:#x}+{len:#x}: {e}"
            ),
        }
    }

    fn multi(&mut self, idx: &[u8], dir: u8) {
        let parts: Vec<_> = idx
            .iter()
            .take(40)
            .filter_map(|&i| pick(&self.mds, i).map(|i| self.mds[i].0.clone()))
            .collect();
        let r = DkMemoryDescriptor::create_with_memory_descriptors(
            DkMemoryOptions::from_bits(u64::from(dir)),
            &parts,
        );
        match r {
            Ok(md) => {
                assert!((1..=32).contains(&parts.len()) && dir & !3 == 0);
                let total: u64 = parts.iter().map(|p| p.length()).sum();
                assert_eq!(md.length(), total);
                self.add(md, None);
            }
            Err(e) => assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT, "{e}"),
        }
    }

    fn map(&mut self, i: u8, bits: u16, fixed: u8, off: u16, len: u16, align: u8) {
        let Some(i) = pick(&self.mds, i) else { return };
        let md = self.mds[i].0.clone();
        let address = pick(&self.seen, fixed).map_or(u64::from(fixed) << 12, |k| self.seen[k]);
        let alignment = if align >= 64 {
            u64::from(align)
        } else {
            1u64 << (align % 16)
        };
        let r = DkMemoryDescriptor::create_mapping(
            self.m.clone(),
            &md,
            DkMapOptions::from_bits(u64::from(bits)),
            address,
            u64::from(off),
            u64::from(len),
            alignment,
        );
        let Ok(map) = r else { return };
        let at = u64::from(off);
        assert_eq!(
            dmakit::driverkit::DkMemoryMap::get_length(&map),
            if len == 0 {
                md.length() - u64::from(off)
            } else {
                u64::from(len)
            }
        );
        let out_not_own = md.direction() == Direction::Out && md.buffer_task() != Some(map.task());
        if bits & 2 != 0 || out_not_own {
            assert!(
                map.options().is_read_only(),
                "this mapping must be read-only"
            );
        }
        let n = map.length().min(4096) as usize;
        let mut got = vec![0u8; n];
        self.m
            .read_virt(map.task(), VirtAddr(map.address().0), &mut got)
            .expect("a live mapping reads");
        if let Some(want) = contents(&*md, at, n) {
            assert_eq!(got, want, "a mapping reads its descriptor's bytes");
        }
        self.seen.push(map.address().0);
        if self.maps.len() < 8 {
            self.maps.push(map);
        }
    }

    fn command(&mut self, bits: u8, mapped: bool, options: u8) {
        let mapper: Option<Arc<dyn Mapper>> = match (&self.iommu, mapped) {
            (Some((_, mp)), true) => Some(mp.clone()),
            _ => None,
        };
        let mapped = mapper.is_some();
        let r = DkDmaCommand::create(
            self.m.clone(),
            mapper,
            u64::from(options),
            DkDmaSpec::new(u64::from(bits)),
        );
        match r {
            Ok(dk) => {
                assert!(options == 0 && !(1..12).contains(&bits));
                if self.cmds.len() < 4 {
                    self.cmds.push(Cmd {
                        dk,
                        mapped,
                        prepared: None,
                    });
                }
            }
            Err(e) => {
                let c = e.io_return();
                if options != 0 {
                    assert_eq!(c, IoReturn::BAD_ARGUMENT);
                } else {
                    assert_eq!(c, IoReturn::NO_MEMORY, "{bits} address bits: {e}");
                }
            }
        }
    }

    fn drop_command(&mut self, c: u8) {
        let Some(c) = pick(&self.cmds, c) else { return };
        if self.cmds[c].prepared.is_some() {
            self.cmds[c]
                .dk
                .complete_dma(0)
                .expect("complete a prepared command");
        }
        self.cmds.remove(c);
    }

    fn prepare(&mut self, c: u8, d: u8, off: u64, len: u64, nsegs: usize, options: u64) {
        let (Some(c), Some(d)) = (pick(&self.cmds, c), pick(&self.mds, d)) else {
            return;
        };
        let md = self.mds[d].0.clone();
        let mut segs = vec![IoSegment::default(); nsegs];
        let cmd = &mut self.cmds[c];
        let r = cmd.dk.prepare_for_dma(options, &md, off, len, &mut segs);
        match r {
            Ok((flags, count)) => {
                assert!(options == 0 && (1..=MAX_SEGMENTS).contains(&nsegs));
                assert!(cmd.prepared.is_none(), "a prepared command prepared again");
                let want = if len == 0 { md.length() - off } else { len };
                let total: u64 = segs[..count].iter().map(|s| s.len).sum();
                assert_eq!(total, want, "segments cover the preparation");
                let dir = md.direction();
                assert_eq!(flags.bits() & 2 != 0, dir.device_reads());
                assert_eq!(flags.bits() & 1 != 0, dir.device_writes());
                let (po, pl, pmd) = cmd.dk.get_preparation().expect("prepared");
                assert_eq!((po, pl), (off, want));
                assert!(Arc::ptr_eq(&pmd, &md));
                cmd.prepared = Some((off, want, md, segs[..count].to_vec()));
                self.check_device_view(c);
            }
            Err(e) => {
                let code = e.io_return();
                if options != 0 || nsegs > MAX_SEGMENTS {
                    assert_eq!(code, IoReturn::BAD_ARGUMENT, "{e}");
                }
                // A prepared command refuses (Busy, or whatever preparing `md` refuses
                // first) and keeps its preparation as it was.
                assert_eq!(cmd.dk.is_prepared(), cmd.prepared.is_some(), "{e}");
                if let Some((po, pl, pmd, _)) = &cmd.prepared {
                    let (o, l, m) = cmd.dk.get_preparation().expect("still prepared");
                    assert!((o, l) == (*po, *pl) && Arc::ptr_eq(&m, pmd), "{e}");
                }
            }
        }
    }

    /// The device reads the descriptor's bytes through the segments of an `Out`
    /// preparation.
    fn check_device_view(&self, c: usize) {
        let cmd = &self.cmds[c];
        let Some((off, _, md, segs)) = &cmd.prepared else {
            return;
        };
        if !md.direction().device_reads() {
            return;
        }
        let mut at = *off;
        for s in segs.iter().take(4) {
            let n = s.len.min(8192) as usize;
            let mut dev = vec![0u8; n];
            self.device_read(cmd.mapped, s.addr, &mut dev);
            if let Some(want) = contents(&**md, at, n) {
                assert_eq!(dev, want, "the device reads the descriptor at {at:#x}");
            }
            at += s.len;
        }
    }

    fn device_read(&self, mapped: bool, addr: IoAddr, buf: &mut [u8]) {
        match (&self.iommu, mapped) {
            (Some((iommu, _)), true) => iommu.device_read(addr, buf).expect("mapped IO pages"),
            _ => self
                .m
                .read_phys(PhysAddr(addr.0), buf)
                .expect("physical memory"),
        }
    }

    fn complete(&mut self, c: u8, options: u8) {
        let Some(c) = pick(&self.cmds, c) else { return };
        let cmd = &mut self.cmds[c];
        let r = cmd.dk.complete_dma(u64::from(options));
        match (options, cmd.prepared.is_some()) {
            (0, true) => {
                r.expect("complete a prepared command");
                cmd.prepared = None;
            }
            (0, false) => assert_eq!(code(&r), Some(IoReturn::NOT_READY)),
            _ => assert_eq!(code(&r), Some(IoReturn::BAD_ARGUMENT)),
        }
        assert_eq!(cmd.dk.is_prepared(), cmd.prepared.is_some());
    }

    #[allow(clippy::too_many_arguments)]
    fn perform(&mut self, c: u8, op: u64, dma_off: u64, len: u64, data_off: u64, d: u8) {
        let Some(c) = pick(&self.cmds, c) else { return };
        let data = (d as usize)
            .checked_rem(self.mds.len().max(1))
            .filter(|_| d < 200)
            .and_then(|i| self.mds.get(i).map(|m| m.0.clone()));
        let cmd = &self.cmds[c];
        // What the copy should move, read before it (data and the DMA memory may overlap).
        let n = len as usize;
        let small = len <= 1 << 20;
        let data_before = data
            .as_ref()
            .and_then(|md| contents(&**md, 0, md.length().min(1 << 16) as usize));
        let src = match (op, &data) {
            (4, _) if small => Some(vec![0u8; n]),
            (2, Some(d)) if small => contents(&**d, data_off, n),
            _ => None,
        };
        // Whether `data` takes a write there now (rewriting its own bytes tells): memory
        // prepared read-only refuses it, and so does a read into it.
        let data_takes = match (op, &data) {
            (1, Some(d)) if small => {
                contents(&**d, data_off, n).is_some_and(|b| d.write_bytes(data_off, &b) == n)
            }
            _ => true,
        };
        let dev = match &cmd.prepared {
            Some((poff, plen, md, _)) if small && plen.saturating_sub(dma_off) >= len => poff
                .checked_add(dma_off)
                .and_then(|at| contents(&**md, at, n)),
            _ => None,
        };
        // Whether the DMA memory the copy may reach reads whole now: a combination whose
        // part shrank since (a buffer's set_length) stops copies early.
        let intact = match &cmd.prepared {
            Some((poff, plen, md, _)) if small => {
                let end = (*plen).min(md.length().saturating_sub(*poff));
                let k = len.min(end.saturating_sub(dma_off));
                k == 0
                    || poff
                        .checked_add(dma_off)
                        .and_then(|at| contents(&**md, at, k as usize))
                        .is_some()
            }
            _ => true,
        };
        let r = cmd.dk.perform_operation(
            DkPerformOptions::from_bits(op),
            dma_off,
            len,
            data_off,
            data.as_deref(),
        );
        let c_ = code(&r);
        // DriverKit's order of checks.
        if op & !7 != 0 {
            return assert_eq!(c_, Some(IoReturn::BAD_ARGUMENT));
        }
        let Some((poff, plen, md, segs)) = &cmd.prepared else {
            return assert_eq!(c_, Some(IoReturn::NOT_READY));
        };
        if len > md.length() {
            return assert_eq!(c_, Some(IoReturn::BAD_ARGUMENT));
        }
        if len > u64::from(u32::MAX) {
            return assert_eq!(c_, Some(IoReturn::NO_MEMORY));
        }
        if !matches!(op, 1 | 2 | 4) {
            return assert_eq!(c_, Some(IoReturn::BAD_ARGUMENT));
        }
        if op != 4 && data.as_ref().is_none_or(|d| len > d.length()) {
            return assert_eq!(c_, Some(IoReturn::BAD_ARGUMENT));
        }
        // Byte copies reach the end of the preparation, or the descriptor's end if its
        // length went down since (a buffer's set_length).
        let room = (*plen)
            .min(md.length().saturating_sub(*poff))
            .saturating_sub(dma_off);
        // Nothing to copy always fits (IOKit's copies of 0 bytes succeed anywhere).
        let data_fits = len == 0
            || data
                .as_ref()
                .is_some_and(|d| data_off.checked_add(len).is_some_and(|e| e <= d.length()));
        // A source that does not read whole (out of range, or a combination whose part
        // shrank) writes nothing.
        if op == 2 && (!data_fits || (small && src.is_none())) {
            return assert!(
                matches!(r, Err(dmakit::Error::Underrun { done: 0, .. })),
                "a source that does not read whole: {r:?}"
            );
        }
        if op != 1 {
            let room_put = len.min(room) as usize;
            let put = match &r {
                Ok(()) => {
                    assert_eq!(room_put, n);
                    n
                }
                Err(dmakit::Error::Underrun { done, .. }) if !intact => {
                    assert!((*done as usize) < n && *done as usize <= room_put);
                    *done as usize
                }
                Err(dmakit::Error::Underrun { done, .. }) => {
                    let put = room_put;
                    assert!(
                        put < n,
                        "op {op}: an underrun ({done:#x} done) with room: {len:#x} at {dma_off:#x} \
                         of a preparation {poff:#x}+{plen:#x} of {:#x} bytes ({:?}), mapped {}",
                        md.length(),
                        md.direction(),
                        cmd.mapped
                    );
                    assert_eq!(
                        *done as usize,
                        put,
                        "op {op}: {len:#x} at {dma_off:#x} of a preparation {poff:#x}+{plen:#x} of \
                         {:#x} bytes ({:?}), mapped {}",
                        md.length(),
                        md.direction(),
                        cmd.mapped
                    );
                    put
                }
                Err(e) => panic!("write {n} at {dma_off:#x}: {e}"),
            };
            // Memory reached twice holds the last write: check only plain layouts.
            let plain = put > 0 && !aliased(&**md, poff + dma_off, put);
            if let (Some(src), true) = (src, plain) {
                if let Some(now) = contents(&**md, poff + dma_off, put) {
                    assert_eq!(now, src[..put], "the DMA memory after the copy");
                }
                self.check_written(c, dma_off, &src[..put], segs);
            }
            return;
        }
        let data = data.expect("checked above");
        let now = contents(&*data, 0, data.length().min(1 << 16) as usize);
        match &r {
            Ok(()) => {
                assert!(
                    data_fits && room >= len,
                    "a read of {len:#x} at {dma_off:#x} of a preparation {poff:#x}+{plen:#x} of \
                     {:#x} bytes into data of {:#x} bytes at {data_off:#x} succeeded",
                    md.length(),
                    data.length()
                );
                let plain = !aliased(&*data, data_off, n);
                if let (Some(dev), Some(got), true) = (dev, contents(&*data, data_off, n), plain) {
                    assert_eq!(got, dev, "read into data");
                }
            }
            Err(dmakit::Error::Underrun { done: 0, .. }) => {
                assert!(
                    !data_fits || room < len || !data_takes || !intact,
                    "a read of {len:#x} at {dma_off:#x} of a preparation {poff:#x}+{plen:#x} of \
                     {:#x} bytes ({:?}) into data of {:#x} bytes ({:?}) at {data_off:#x} fell short",
                    md.length(),
                    md.direction(),
                    data.length(),
                    data.direction()
                );
                assert_eq!(now, data_before, "a short read leaves data untouched");
            }
            // Data that cannot take the whole write (a combination whose part shrank)
            // takes what it can.
            Err(dmakit::Error::Underrun { done, .. }) if !data_takes => {
                assert!((*done as usize) < n, "{done:#x} of {n:#x}");
            }
            Err(e) => panic!(
                "read {n} at {dma_off:#x} into data of {:#x} bytes at {data_off:#x} ({}): {e}",
                data.length(),
                data_takes
            ),
        }
    }

    /// The device sees `bytes` at `dma_off` of command `c`'s preparation.
    fn check_written(&self, c: usize, dma_off: u64, bytes: &[u8], segs: &[IoSegment]) {
        let mapped = self.cmds[c].mapped;
        let mut skip = dma_off;
        let mut done = 0usize;
        for s in segs {
            if done == bytes.len() {
                break;
            }
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            let k = ((s.len - skip) as usize).min(bytes.len() - done);
            let mut dev = vec![0u8; k];
            let dir = self.cmds[c].prepared.as_ref().unwrap().2.direction();
            if !mapped || dir.device_reads() {
                self.device_read(mapped, IoAddr(s.addr.0 + skip), &mut dev);
                assert_eq!(dev, bytes[done..done + k], "the device sees the copy");
            }
            done += k;
            skip = 0;
        }
    }

    fn op(&mut self, op: &Op) {
        match *op {
            Op::Buffer(dir, cap, align, raw) => {
                let a = if raw {
                    u64::from(align)
                } else {
                    1 << (align % 22)
                };
                self.buffer(dir % 8, u64::from(cap), a)
            }
            Op::BufferRaw(cap, align) => self.buffer(1, cap, align),
            Op::SetLength(i, len) => self.set_length(i, len),
            Op::Sub(i, dir, off, len) => self.sub(i, dir % 8, off.into(), len.into()),
            Op::SubRaw(i, off, len) => self.sub(i, 3, off, len),
            Op::Multi(ref idx, dir) => self.multi(idx, dir % 8),
            Op::Map(i, bits, fixed, off, len, align) => self.map(i, bits, fixed, off, len, align),
            Op::DropMap(i) => {
                if let Some(i) = pick(&self.maps, i) {
                    self.maps.remove(i);
                }
            }
            Op::DropDescriptor(i) => {
                if let Some(i) = pick(&self.mds, i) {
                    self.mds.remove(i);
                }
            }
            Op::Command(bits, mapped, options) => self.command(bits, mapped, options % 4),
            Op::DropCommand(c) => self.drop_command(c),
            Op::Prepare(c, d, off, len, nsegs, options) => {
                // Mostly a range inside the descriptor, an array that may hold it, option 0.
                let Some(di) = pick(&self.mds, d) else { return };
                let n = self.mds[di].0.length();
                let off = u64::from(off) % (n + 1);
                let len = match len % 4 {
                    0 => 0,
                    _ => 1 + u64::from(len) % (n - off).max(1),
                };
                let nsegs = 1 + nsegs as usize % MAX_SEGMENTS;
                self.prepare(c, d, off, len, nsegs, u64::from(options == 255))
            }
            Op::PrepareRaw(c, d, off, len, nsegs, options) => self.prepare(
                c,
                d,
                off,
                len,
                nsegs as usize % 40,
                u64::from(options % 3 / 2),
            ),
            Op::Complete(c, options) => self.complete(c, options % 3 / 2),
            Op::Perform(c, op, dma_off, len, data_off, d) => {
                // Mostly one operation, inside the preparation, give or take a little.
                let plen = self
                    .cmds
                    .get(c as usize % self.cmds.len().max(1))
                    .and_then(|c| c.prepared.as_ref().map(|p| p.1))
                    .unwrap_or(4096);
                let dma_off = u64::from(dma_off) % (plen + 1);
                let len = u64::from(len) % (plen - dma_off + 64);
                let data_len = pick(&self.mds, d).map_or(4096, |i| self.mds[i].0.length());
                let data_off = u64::from(data_off) % (data_len + 16);
                self.perform(c, [1, 2, 4][op as usize % 3], dma_off, len, data_off, d)
            }
            Op::PerformRaw(c, op, dma_off, len, data_off, d) => {
                self.perform(c, op, dma_off, len, data_off, d)
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let m = machine(u64::from(input.seed), input.coherent);
    let iommu = input.iommu.then(|| {
        let iommu = Arc::new(SimIommu::new(m.clone()));
        let mapper = IommuMapper::new(iommu.clone(), 0x8000_0000, 0x100_0000).expect("IO window");
        (iommu, Arc::new(mapper))
    });
    if let Some(built) = build(&m, &input.shape) {
        let mut run = Run {
            m: m.clone(),
            iommu,
            mds: vec![(built.md, built.buffer)],
            maps: Vec::new(),
            seen: Vec::new(),
            cmds: Vec::new(),
        };
        // A command of each kind to start with: most sequences then prepare and copy.
        run.command(64, false, 0);
        run.command(0, true, 0);
        for op in &input.ops {
            run.op(op);
        }
        for c in &run.cmds {
            if c.prepared.is_some() {
                c.dk.complete_dma(0).expect("complete at the end");
            }
        }
        let iommu = run.iommu.take();
        drop(run);
        if let Some((_, mapper)) = iommu {
            assert_eq!(mapper.usage(), (0, 0), "IO addresses left mapped");
        }
    }
    assert_nothing_left(&m);
});
