//! Descriptor shapes drawn from fuzz input (buffers, task ranges, and sub, multi and
//! interleaved descriptors nested over them), built on a simulated machine together with
//! the bytes they must hold.

use arbitrary::{Arbitrary, Result, Unstructured};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, InterleavedMemoryDescriptor,
    MemoryDescriptor, MultiMemoryDescriptor, SubMemoryDescriptor,
};
use dmakit::platform::CpuAccess;
use dmakit::{Direction, Error, VirtAddr};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

/// The platform every target uses.
pub type M = Arc<Machine>;

/// A descriptor to build.
#[derive(Clone, Debug)]
pub enum Shape {
    /// A buffer of `len` bytes: pageable, physically contiguous, below 4 GiB.
    Buffer {
        len: u16,
        pageable: bool,
        contiguous: bool,
        low: bool,
        salt: u8,
    },
    /// Ranges (gap before, length) of one pageable task allocation.
    General(Vec<(u16, u16)>, u8),
    /// `[offset, offset + len)` of the inner shape (reduced to fit).
    Sub(Box<Shape>, u16, u16),
    /// The parts one after the other.
    Multi(Vec<Shape>),
    /// Portions `[offset, offset + len)` (reduced to fit) of each part.
    Interleaved(Vec<(Shape, u16, u16)>),
}

impl Shape {
    /// A shape at most `depth` levels deep.
    pub fn draw(u: &mut Unstructured<'_>, depth: u32) -> Result<Shape> {
        let pick = if depth == 0 {
            u.int_in_range(0u8..=1)?
        } else {
            u.int_in_range(0u8..=4)?
        };
        Ok(match pick {
            0 => Shape::Buffer {
                len: u.int_in_range(1..=12_000)?,
                pageable: u.ratio(1, 4)?,
                contiguous: u.ratio(1, 4)?,
                low: u.ratio(1, 4)?,
                salt: u.arbitrary()?,
            },
            1 => {
                let n = u.int_in_range(1..=3)?;
                let mut r = Vec::new();
                for _ in 0..n {
                    r.push((u.int_in_range(0..=5000)?, u.int_in_range(1..=9000)?));
                }
                Shape::General(r, u.arbitrary()?)
            }
            2 => Shape::Sub(
                Box::new(Shape::draw(u, depth - 1)?),
                u.arbitrary()?,
                u.arbitrary()?,
            ),
            3 => {
                let n = u.int_in_range(1..=3)?;
                let mut parts = Vec::new();
                for _ in 0..n {
                    parts.push(Shape::draw(u, depth - 1)?);
                }
                Shape::Multi(parts)
            }
            _ => {
                let n = u.int_in_range(1..=3)?;
                let mut parts = Vec::new();
                for _ in 0..n {
                    parts.push((Shape::draw(u, depth - 1)?, u.arbitrary()?, u.arbitrary()?));
                }
                Shape::Interleaved(parts)
            }
        })
    }
}

/// Recognisable bytes: `n` of them, varied by `salt`.
pub fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8)
        .collect()
}

/// A fragmented machine with RAM below and above 4 GiB.
pub fn machine(seed: u64, coherent: bool) -> M {
    Arc::new(
        MachineBuilder::new()
            .ram(0x10_0000, 0x80_0000)
            .ram(0x1_0000_0000, 0x100_0000)
            .seed(seed)
            .fragmentation(0.7)
            .coherent(coherent)
            .build()
            .expect("a valid machine"),
    )
}

/// A built descriptor, its bytes, and the top-level buffer when the shape is one.
pub struct Built {
    /// The descriptor.
    pub md: Arc<dyn MemoryDescriptor>,
    /// What it holds.
    pub bytes: Vec<u8>,
    /// The same descriptor as a buffer, when it is one.
    pub buffer: Option<Arc<BufferMemoryDescriptor<M>>>,
}

/// `[offset, offset + len)` reduced to fit `n > 0` bytes (at least one byte).
pub fn window(n: usize, a: u16, b: u16) -> (usize, usize) {
    let off = a as usize % n;
    (off, 1 + b as usize % (n - off))
}

/// Builds `s` on `m`: `None` when the machine runs out of memory (a fuzz input may ask for
/// more than it has), which is not a finding.
pub fn build(m: &M, s: &Shape) -> Option<Built> {
    let plain = |md: Arc<dyn MemoryDescriptor>, bytes| {
        Some(Built {
            md,
            bytes,
            buffer: None,
        })
    };
    match s {
        &Shape::Buffer {
            len,
            pageable,
            contiguous,
            low,
            salt,
        } => {
            let bytes = pattern(len as usize, salt);
            let mut o = BufferOptions::new(len as u64, Direction::InOut)
                .pageable(pageable)
                .contiguous(contiguous && !pageable);
            if low {
                o = o.phys_limit(0xFFFF_FFFF);
            }
            let b = Arc::new(BufferMemoryDescriptor::new(m.clone(), o).ok()?);
            // A pageable buffer gets its pages on first touch: an injected page allocation
            // fault may refuse the fill (all or nothing), and then there is no shape.
            if b.write_bytes(0, &bytes) != bytes.len() {
                return None;
            }
            Some(Built {
                md: b.clone(),
                bytes,
                buffer: Some(b),
            })
        }
        Shape::General(ranges, salt) => {
            let total: u64 = ranges.iter().map(|&(g, l)| g as u64 + l as u64).sum();
            let task = m.create_task();
            let va = m
                .vm_allocate(task, total.div_ceil(4096) * 4096, true)
                .ok()?;
            let mut at = va.0;
            let mut rs = Vec::new();
            let mut bytes = Vec::new();
            for (i, &(gap, len)) in ranges.iter().enumerate() {
                at += gap as u64;
                let data = pattern(len as usize, salt.wrapping_add(i as u8));
                m.write_virt(task, VirtAddr(at), &data).ok()?;
                rs.push((VirtAddr(at), len as u64));
                bytes.extend(data);
                at += len as u64;
            }
            let g = GeneralMemoryDescriptor::with_ranges(m.clone(), task, &rs, Direction::InOut)
                .expect("general descriptor over task memory");
            plain(Arc::new(g), bytes)
        }
        Shape::Sub(inner, a, b) => {
            let p = build(m, inner)?;
            let (off, len) = window(p.bytes.len(), *a, *b);
            let sub = SubMemoryDescriptor::new(p.md, off as u64, len as u64, Direction::InOut)
                .expect("a sub-descriptor inside its parent");
            plain(Arc::new(sub), p.bytes[off..off + len].to_vec())
        }
        Shape::Multi(parts) => {
            let mut mds = Vec::new();
            let mut bytes = Vec::new();
            for p in parts {
                let b = build(m, p)?;
                mds.push(b.md);
                bytes.extend(b.bytes);
            }
            // Parts must all be pageable buffer memory or all not (documented refusal).
            let mixed = mds
                .iter()
                .any(|p| p.pageable_buffer() != mds[0].pageable_buffer());
            match MultiMemoryDescriptor::new(mds, Direction::InOut) {
                Ok(multi) => {
                    assert!(!mixed, "a multi-descriptor of mixed parts was accepted");
                    plain(Arc::new(multi), bytes)
                }
                Err(Error::BadArgument { .. }) if mixed => None,
                Err(e) => panic!("multi-descriptor: {e}"),
            }
        }
        Shape::Interleaved(parts) => {
            let mut il = InterleavedMemoryDescriptor::with_capacity(parts.len(), Direction::InOut);
            let mut bytes = Vec::new();
            for (p, a, b) in parts {
                let pb = build(m, p)?;
                let (off, len) = window(pb.bytes.len(), *a, *b);
                il.set_memory_descriptor(pb.md, off as u64, len as u64)
                    .expect("a portion inside its descriptor");
                bytes.extend_from_slice(&pb.bytes[off..off + len]);
            }
            plain(Arc::new(il), bytes)
        }
    }
}

/// Destroys every task but the kernel's and checks that the machine holds no allocation
/// and no wired page: everything the descriptors made is gone.
pub fn assert_nothing_left(m: &M) {
    for t in m.tasks() {
        if t != dmakit::Task::KERNEL {
            m.destroy_task(t).expect("no wiring left on task memory");
        }
    }
    let s = m.stats();
    assert_eq!(s.allocations, 0, "allocations left: {s:?}");
    assert_eq!(s.wired_pages, 0, "wired pages left: {s:?}");
}

/// A fuzz input over one descriptor: a machine seed, a shape at most `DEPTH` levels deep,
/// and the operations to run on it (drawn in that order).
#[derive(Debug)]
pub struct ShapedInput<Op, const DEPTH: u32> {
    /// Seeds the simulated machine.
    pub seed: u8,
    /// The descriptor to build.
    pub shape: Shape,
    /// What to do with it.
    pub ops: Vec<Op>,
}

impl<'a, Op: Arbitrary<'a>, const DEPTH: u32> Arbitrary<'a> for ShapedInput<Op, DEPTH> {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ShapedInput {
            seed: u.arbitrary()?,
            shape: Shape::draw(u, DEPTH)?,
            ops: u.arbitrary()?,
        })
    }
}
