//! [`InterleavedMemoryDescriptor`]: `(descriptor, offset, length)` portions one after
//! another (IOKit's IOInterleavedMemoryDescriptor).
//!
//! Created with a capacity (the number of portions it can hold); portions are added with
//! [`set_memory_descriptor`](InterleavedMemoryDescriptor::set_memory_descriptor) and removed
//! all at once with [`clear_memory_descriptors`](InterleavedMemoryDescriptor::clear_memory_descriptors),
//! which first completes the preparations it holds of them, as in IOKit. Adding is not
//! allowed while prepared. A failed prepare completes exactly the portions it
//! had prepared, each once, latest first (IOKit's rollback completes the failed portion's
//! descriptor again and again instead, leaving the earlier ones prepared). A complete
//! with no preparation of its own outstanding does nothing (IOKit's completes every
//! portion anyway, ending preparations somebody else made of them).
//!
//! Its preparation identifier is unprepared while it is not prepared, and otherwise
//! follows its portions' descriptors like a multi-descriptor's.

use super::{
    check_range, op_extent, op_over_parts, past_end, whole_or_nothing, Holders, LazyId,
    MemoryDescriptor, MemoryOperation, PrepOwner, Removed, Segment, Source,
    PREPARATION_ID_UNPREPARED,
};
use crate::{Direction, Error, PageSize, Result};
use alloc_crate::sync::Arc;
use alloc_crate::vec::Vec;

struct Portion {
    md: Arc<dyn MemoryDescriptor>,
    offset: u64,
    length: u64,
    start: u64,
}

/// Portions of other descriptors, concatenated.
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, InterleavedMemoryDescriptor, MemoryDescriptor};
/// use dmakit::{Direction, Error};
/// use std::sync::Arc;
/// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// let a: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine.clone(), b"AAAAaaaa", Direction::Out)?);
/// let b: Arc<dyn MemoryDescriptor> =
///     Arc::new(BufferMemoryDescriptor::with_bytes(machine.clone(), b"BBBBbbbb", Direction::Out)?);
/// // Two portions of each, interleaved: A's first half, B's first half, A's second, ...
/// let mut md = InterleavedMemoryDescriptor::with_capacity(4, Direction::Out);
/// md.set_memory_descriptor(a.clone(), 0, 4)?;
/// md.set_memory_descriptor(b.clone(), 0, 4)?;
/// md.set_memory_descriptor(a.clone(), 4, 4)?;
/// md.set_memory_descriptor(b.clone(), 4, 4)?;
/// let mut all = [0u8; 16];
/// assert_eq!(md.read_bytes(0, &mut all), 16);
/// assert_eq!(&all, b"AAAABBBBaaaabbbb");
/// // Full: a fifth portion does not fit.
/// assert!(matches!(md.set_memory_descriptor(a, 0, 1), Err(Error::NoResources { .. })));
/// md.clear_memory_descriptors(Direction::None)?;
/// assert_eq!((md.portion_count(), md.length()), (0, 0));
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct InterleavedMemoryDescriptor {
    portions: Vec<Portion>,
    capacity: usize,
    length: u64,
    direction: Direction,
    prepared: crate::sync::Mutex<Holders>,
    maps: crate::map::MapRegistry,
    prep: crate::sync::Mutex<(Vec<u64>, u64)>,
    id: LazyId,
}

impl InterleavedMemoryDescriptor {
    /// An empty descriptor able to hold `capacity` portions (IOKit `withCapacity`). The
    /// room is taken as portions are added, so any capacity (`usize::MAX` too) is fine.
    pub fn with_capacity(capacity: usize, direction: Direction) -> Self {
        InterleavedMemoryDescriptor {
            portions: Vec::with_capacity(capacity.min(16)),
            capacity,
            length: 0,
            direction,
            prepared: crate::sync::Mutex::new(Holders::default()),
            maps: crate::map::MapRegistry::new(),
            prep: crate::sync::Mutex::new((Vec::new(), 0)),
            id: LazyId::default(),
        }
    }

    /// Appends `[offset, offset + length)` of `md`. Fails while prepared
    /// ([`Error::Busy`]), when full ([`Error::NoResources`]) or when the portion is not
    /// inside `md` ([`Error::OutOfBounds`]).
    pub fn set_memory_descriptor(
        &mut self,
        md: Arc<dyn MemoryDescriptor>,
        offset: u64,
        length: u64,
    ) -> Result<()> {
        if self.prepared.lock().is_prepared() {
            return Err(Error::Busy {
                what: "interleaved descriptor",
                addr: 0,
                why: "it is prepared",
            });
        }
        if self.portions.len() >= self.capacity {
            return Err(Error::NoResources {
                what: "interleaved descriptor portions",
                limit: self.capacity as u64,
            });
        }
        match offset.checked_add(length) {
            Some(end) if end <= md.length() => {}
            _ => {
                return Err(Error::OutOfBounds {
                    what: "interleaved portion in its descriptor",
                    offset,
                    len: length,
                    limit: md.length(),
                })
            }
        }
        let total = self.length.checked_add(length).ok_or(Error::Overflow {
            what: "interleaved descriptor length",
            start: self.length,
            len: length,
        })?;
        self.portions.push(Portion {
            md,
            offset,
            length,
            start: self.length,
        });
        self.length = total;
        Ok(())
    }

    /// Removes every portion and sets the direction to `dir` (unless `Direction::None`)
    /// (IOKit `clearMemoryDescriptors`). While prepared, the preparations this descriptor
    /// holds of its portions are completed first, as IOKit completes them, so the portions'
    /// memory is unwired unless something else holds it. A preparation a DMA command holds
    /// is its own to end: then nothing changes and the call is [`Error::Busy`].
    pub fn clear_memory_descriptors(&mut self, dir: Direction) -> Result<()> {
        let held = self.prepared.get_mut();
        if let Some(cmd) = held.commands().next() {
            return Err(Error::Busy {
                what: "interleaved descriptor",
                addr: cmd.id(),
                why: "a DMA command holds a preparation of it (complete the command first)",
            });
        }
        for (owner, n) in core::mem::take(held).iter() {
            for p in &self.portions {
                for _ in 0..n {
                    let _ = p.md.complete_for(owner);
                }
            }
        }
        self.portions.clear();
        self.length = 0;
        if dir != Direction::None {
            self.direction = dir;
        }
        Ok(())
    }

    /// Number of portions.
    pub fn portion_count(&self) -> usize {
        self.portions.len()
    }

    fn locate(&self, offset: u64) -> usize {
        let mut i = self.portions.partition_point(|p| p.start <= offset) - 1;
        while offset - self.portions[i].start >= self.portions[i].length {
            i += 1;
        }
        i
    }

    fn each(
        &self,
        offset: u64,
        n: usize,
        mut step: impl FnMut(&Portion, u64, usize, usize) -> usize,
    ) -> usize {
        let mut done = 0;
        while done < n {
            let i = self.locate(offset + done as u64);
            let p = &self.portions[i];
            let inner = offset + done as u64 - p.start;
            let k = ((p.length - inner) as usize).min(n - done);
            let got = step(p, p.offset + inner, done, k);
            done += got;
            if got < k {
                break;
            }
        }
        done
    }

    /// The run at `offset` as `seg` finds it in its portion's descriptor, clipped to the
    /// portion.
    fn segment(
        &self,
        offset: u64,
        seg: impl Fn(&dyn MemoryDescriptor, u64) -> Result<Segment>,
    ) -> Result<Segment> {
        if offset >= self.length {
            return Err(past_end("interleaved descriptor", offset, self.length));
        }
        let p = &self.portions[self.locate(offset)];
        let inner = offset - p.start;
        let s = seg(&*p.md, p.offset + inner)?;
        Ok(Segment {
            addr: s.addr,
            len: s.len.min(p.length - inner),
        })
    }
}

impl MemoryDescriptor for InterleavedMemoryDescriptor {
    fn map_registry(&self) -> Option<&crate::map::MapRegistry> {
        Some(&self.maps)
    }

    fn length(&self) -> u64 {
        self.length
    }

    fn direction(&self) -> Direction {
        self.direction
    }

    fn page_size(&self) -> PageSize {
        self.portions
            .first()
            .map(|p| p.md.page_size())
            .unwrap_or_default()
    }

    fn prepare_for(&self, owner: PrepOwner, dir: Direction) -> Result<()> {
        let dir = if dir == Direction::None {
            self.direction
        } else {
            dir
        };
        let mut held = self.prepared.lock();
        for (i, p) in self.portions.iter().enumerate() {
            if let Err(e) = p.md.prepare_for(owner, dir) {
                for q in self.portions[..i].iter().rev() {
                    let _ = q.md.complete_for(owner);
                }
                return Err(e);
            }
        }
        held.add(owner).inspect_err(|_| {
            for q in self.portions.iter().rev() {
                let _ = q.md.complete_for(owner);
            }
        })
    }

    fn complete_for(&self, owner: PrepOwner) -> Result<()> {
        if self
            .prepared
            .lock()
            .remove(owner, "an interleaved descriptor")?
            == Removed::Nothing
        {
            return Ok(());
        }
        let mut result = Ok(());
        for p in &self.portions {
            if let Err(e) = p.md.complete_for(owner) {
                result = Err(e);
            }
        }
        result
    }

    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        let n = whole_or_nothing(offset, buf.len(), self.length);
        self.each(offset, n, |p, at_md, at, k| {
            p.md.read_bytes(at_md, &mut buf[at..at + k])
        })
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        let n = whole_or_nothing(offset, data.len(), self.length);
        self.each(offset, n, |p, at_md, at, k| {
            p.md.write_bytes(at_md, &data[at..at + k])
        })
    }

    fn physical_segment(&self, offset: u64) -> Result<Segment> {
        self.segment(offset, |md, at| md.physical_segment(at))
    }

    fn prepared_segment(&self, offset: u64) -> Result<Segment> {
        self.segment(offset, |md, at| md.prepared_segment(at))
    }

    fn leaves(&self, offset: u64, len: u64, f: &mut dyn FnMut(super::LeafRange)) {
        let end = offset.saturating_add(len).min(self.length);
        for p in &self.portions {
            let (lo, hi) = (p.start.max(offset), (p.start + p.length).min(end));
            if lo < hi {
                p.md.leaves(p.offset + (lo - p.start), hi - lo, f);
            }
        }
    }

    fn sources(&self, offset: u64, len: u64, f: &mut dyn FnMut(Source)) -> Result<()> {
        check_range("interleaved descriptor", offset, len, self.length)?;
        let end = offset + len;
        for p in &self.portions {
            let (lo, hi) = (p.start.max(offset), (p.start + p.length).min(end));
            if lo < hi {
                p.md.sources(p.offset + (lo - p.start), hi - lo, f)?;
            }
        }
        Ok(())
    }

    fn preparation_id(&self) -> u64 {
        if !self.prepared.lock().is_prepared() {
            return PREPARATION_ID_UNPREPARED;
        }
        let ids = self
            .portions
            .iter()
            .map(|p| p.md.preparation_id())
            .collect();
        super::multi::composite_preparation_id(ids, &self.prep)
    }

    fn descriptor_id(&self) -> u64 {
        self.id.get()
    }

    /// Forwards each portion's share of the range to its descriptor; stops at the first
    /// that falls short.
    fn perform_operation(&self, op: MemoryOperation, offset: u64, len: u64) -> Result<()> {
        let want = op_extent(offset, len, self.length)?;
        let end = offset + want;
        let pieces = self.portions.iter().filter_map(|p| {
            let (lo, hi) = (p.start.max(offset), (p.start + p.length).min(end));
            (lo < hi).then(|| (p.md.as_ref(), p.offset + (lo - p.start), hi - lo))
        });
        op_over_parts(op, want, pieces)
    }
}

impl core::fmt::Debug for InterleavedMemoryDescriptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InterleavedMemoryDescriptor")
            .field("portions", &self.portions.len())
            .field("capacity", &self.capacity)
            .field("length", &self.length)
            .field("direction", &self.direction)
            .finish()
    }
}
