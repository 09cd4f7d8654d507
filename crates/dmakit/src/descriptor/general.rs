//! [`GeneralMemoryDescriptor`]: ranges of a task's virtual memory, or physical ranges
//! (IOKit's IOGeneralMemoryDescriptor).
//!
//! Virtual descriptors must be prepared before physical addresses exist: the first prepare
//! wires every range through the platform and records its physical runs; the last complete
//! unwires. Physical descriptors are always prepared and prepare/complete do nothing.
//! Bytes are copied through the platform's CPU access path, which needs no wiring, so
//! `read_bytes`/`write_bytes` work on unprepared memory too (IOKit panics there).

use super::{
    check_range, op_extent, past_end, whole_or_nothing, Holders, LazyId, MemoryDescriptor,
    MemoryOperation, PrepOwner, PurgeableRequest, PurgeableState, Removed, Segment, Source,
    PREPARATION_ID_UNPREPARED,
};
use crate::platform::{collect_runs, CacheOp, Platform, Task};
use crate::{Direction, Error, PageSize, PhysAddr, PhysRange, Result, VirtAddr};
use alloc_crate::sync::Arc;
use alloc_crate::vec::Vec;

#[derive(Debug, Default)]
struct Wiring {
    holders: Holders,
    read_only: bool,
    /// Physical runs of each range, while wired.
    runs: Vec<Vec<PhysRange>>,
    /// The identifier of this preparation (0 until first asked for).
    prep_id: u64,
}

/// A descriptor of one or more address ranges.
///
/// A driver describes memory it did not allocate itself (a user buffer, a page cache page)
/// with one, and prepares it before a device gets its physical addresses:
///
/// ```
/// use dmakit::descriptor::{GeneralMemoryDescriptor, MemoryDescriptor};
/// use dmakit::{Direction, Error};
/// let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
///
/// // 8 KiB of a user process's pageable memory.
/// let task = machine.create_task();
/// let va = machine.vm_allocate(task, 0x2000, true)?;
/// let md = GeneralMemoryDescriptor::with_address_range(machine.clone(), task, va, 0x2000, Direction::In)?;
/// assert_eq!(md.write_bytes(0, b"no wiring needed to copy"), 24);
/// assert!(matches!(md.physical_segment(0), Err(Error::NotReady { .. })));
/// md.prepare_wiring(Direction::In)?; // wires every page
/// assert_eq!(md.wire_count(), 1);
/// assert!(md.physical_segment(0x1000)?.len >= 1);
/// md.complete()?; // the last complete unwires
/// assert_eq!(md.wire_count(), 0);
/// # Ok::<(), dmakit::Error>(())
/// ```
///
/// # Invariants
///
/// `starts[i]` is the descriptor offset of `ranges[i]`; `length` is the sum of the range
/// lengths; while `wiring.holders` is not empty every range of a virtual descriptor is wired once by this
/// descriptor and `wiring.runs[i]` holds its runs.
pub struct GeneralMemoryDescriptor<P: Platform> {
    platform: P,
    task: Option<Task>,
    ranges: Vec<(u64, u64)>,
    starts: Vec<u64>,
    length: u64,
    direction: Direction,
    wiring: crate::sync::Mutex<Wiring>,
    maps: crate::map::MapRegistry,
    /// Physical descriptors: their one preparation's identifier.
    phys_prep: LazyId,
    id: LazyId,
}

impl<P: Platform> GeneralMemoryDescriptor<P> {
    fn build(
        platform: P,
        task: Option<Task>,
        ranges: &[(u64, u64)],
        direction: Direction,
    ) -> Result<Self> {
        let mut starts = Vec::with_capacity(ranges.len());
        let mut length: u64 = 0;
        for &(addr, len) in ranges {
            addr.checked_add(len).ok_or(Error::Overflow {
                what: "descriptor range",
                start: addr,
                len,
            })?;
            starts.push(length);
            length = length.checked_add(len).ok_or(Error::Overflow {
                what: "descriptor length",
                start: length,
                len,
            })?;
        }
        Ok(GeneralMemoryDescriptor {
            platform,
            task,
            ranges: ranges.to_vec(),
            starts,
            length,
            direction,
            wiring: crate::sync::Mutex::new(Wiring::default()),
            maps: crate::map::MapRegistry::new(),
            phys_prep: LazyId::default(),
            id: LazyId::default(),
        })
    }

    /// A descriptor of `[addr, addr + len)` in `task` (IOKit `withAddressRange`). Not
    /// prepared.
    pub fn with_address_range(
        platform: P,
        task: Task,
        addr: VirtAddr,
        len: u64,
        direction: Direction,
    ) -> Result<Self> {
        Self::build(platform, Some(task), &[(addr.0, len)], direction)
    }

    /// A descriptor of several ranges of `task`, in order (IOKit `withAddressRanges`).
    ///
    /// ```
    /// use dmakit::descriptor::{GeneralMemoryDescriptor, MemoryDescriptor};
    /// use dmakit::platform::{CpuAccess, Task};
    /// use dmakit::{Direction, VirtAddr};
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let va = machine.vm_allocate(Task::KERNEL, 0x2000, false)?;
    /// machine.write_virt(Task::KERNEL, va, b"head")?;
    /// machine.write_virt(Task::KERNEL, VirtAddr(va.0 + 0x1000), b"tail")?;
    /// // The two 4-byte pieces, one after the other.
    /// let ranges = [(va, 4), (VirtAddr(va.0 + 0x1000), 4)];
    /// let md = GeneralMemoryDescriptor::with_ranges(machine.clone(), Task::KERNEL, &ranges, Direction::Out)?;
    /// let mut both = [0u8; 8];
    /// assert_eq!(md.read_bytes(0, &mut both), 8);
    /// assert_eq!(&both, b"headtail");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn with_ranges(
        platform: P,
        task: Task,
        ranges: &[(VirtAddr, u64)],
        direction: Direction,
    ) -> Result<Self> {
        let r: Vec<(u64, u64)> = ranges.iter().map(|&(a, l)| (a.0, l)).collect();
        Self::build(platform, Some(task), &r, direction)
    }

    /// A descriptor of physical ranges (IOKit `withPhysicalAddress` / physical
    /// `withAddressRanges`): always prepared.
    ///
    /// Empty ranges are accepted, as in IOKit. A range whose end does not fit in 64 bits,
    /// or a total length that does not, is [`Error::Overflow`]. IOKit refuses more: a range
    /// whose last page would end past 2^64, and a page number past 32 bits; dmakit accepts
    /// those, and what needs whole pages of them
    /// ([`dma_map_length`](MemoryDescriptor::dma_map_length), a mapping) reports the
    /// overflow there.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor};
    /// use dmakit::descriptor::MemoryDescriptor;
    /// use dmakit::Direction;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let options = BufferOptions::new(0x1000, Direction::InOut).contiguous(true);
    /// let buf = BufferMemoryDescriptor::new(machine.clone(), options)?;
    /// assert_eq!(buf.write_bytes(0, b"by physical address"), 19);
    /// let pa = buf.physical_segment(0)?.addr;
    /// let phys = GeneralMemoryDescriptor::with_physical_ranges(machine.clone(), &[(pa, 0x1000)], Direction::Out)?;
    /// assert_eq!(phys.task(), None);
    /// assert_eq!(phys.physical_segment(0)?.addr, pa); // no prepare needed
    /// let mut back = [0u8; 19];
    /// assert_eq!(phys.read_bytes(0, &mut back), 19);
    /// assert_eq!(&back, b"by physical address");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn with_physical_ranges(
        platform: P,
        ranges: &[(PhysAddr, u64)],
        direction: Direction,
    ) -> Result<Self> {
        let r: Vec<(u64, u64)> = ranges.iter().map(|&(a, l)| (a.0, l)).collect();
        Self::build(platform, None, &r, direction)
    }

    /// The task whose memory this describes (`None` for physical ranges).
    pub fn task(&self) -> Option<Task> {
        self.task
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Maps the descriptor on its own platform (IOKit `map` / `createMappingInTask`),
    /// sharing a compatible live mapping as IOKit does; see [`MemoryMap`](crate::map::MemoryMap).
    /// The mapping holds the descriptor alive.
    pub fn map(
        self: &Arc<Self>,
        options: crate::map::MapOptions,
    ) -> Result<crate::map::MemoryMap<P>>
    where
        P: Clone + 'static,
    {
        crate::map::MemoryMap::new(self.platform.clone(), self.clone(), options)
    }

    /// Whether the memory is prepared read-only (for `Out`), so CPU writes are refused.
    pub(crate) fn prepared_read_only(&self) -> bool {
        self.task.is_some() && self.wiring.lock().read_only
    }

    /// Current prepare count over every owner (always 1 for physical descriptors).
    pub fn wire_count(&self) -> u64 {
        if self.task.is_none() {
            1
        } else {
            self.wiring.lock().holders.total()
        }
    }

    /// Who holds the current preparations (empty for physical descriptors, which are
    /// always prepared).
    pub fn holders(&self) -> Holders {
        self.wiring.lock().holders.clone()
    }

    /// The range holding descriptor offset `offset` (< length): index and offset inside.
    fn locate(&self, offset: u64) -> (usize, u64) {
        // The last range starting at or before `offset` that is not empty.
        let mut i = self.starts.partition_point(|&s| s <= offset) - 1;
        while self.ranges[i].1 == 0 || offset - self.starts[i] >= self.ranges[i].1 {
            i += 1;
        }
        (i, offset - self.starts[i])
    }

    fn copy(
        &self,
        offset: u64,
        n: usize,
        mut step: impl FnMut(u64, usize, usize) -> Result<()>,
    ) -> usize {
        let mut done = 0usize;
        while done < n {
            let (i, inner) = self.locate(offset + done as u64);
            let (addr, len) = self.ranges[i];
            let k = ((len - inner) as usize).min(n - done);
            if step(addr + inner, done, k).is_err() {
                break;
            }
            done += k;
        }
        done
    }

    /// Applies `op` to `[pa, pa + len)`. For [`MemoryOperation::Invalidate`] the lines
    /// holding the first and last byte are written back first (a one-byte flush reaches
    /// exactly the line holding it, whatever the line size), so bytes of those lines
    /// outside the range survive.
    fn cache_op(&self, op: MemoryOperation, pa: PhysAddr, len: u64) -> Result<()> {
        match op {
            MemoryOperation::Flush => self.platform.cache_phys(CacheOp::Flush, pa, len),
            MemoryOperation::Store => self.platform.cache_phys(CacheOp::Clean, pa, len),
            MemoryOperation::Discard => self.platform.cache_phys(CacheOp::Invalidate, pa, len),
            MemoryOperation::Invalidate => {
                self.platform.cache_phys(CacheOp::Flush, pa, 1)?;
                self.platform
                    .cache_phys(CacheOp::Flush, PhysAddr(pa.0 + (len - 1)), 1)?;
                self.platform.cache_phys(CacheOp::Invalidate, pa, len)
            }
        }
    }

    /// Wires every range of `task` and records its physical runs; on failure nothing stays
    /// wired.
    fn wire_ranges(&self, task: Task, read_only: bool) -> Result<Vec<Vec<PhysRange>>> {
        let mut runs = Vec::with_capacity(self.ranges.len());
        for (i, &(addr, len)) in self.ranges.iter().enumerate() {
            if len == 0 {
                runs.push(Vec::new());
                continue;
            }
            let wired = self
                .platform
                .wire(task, VirtAddr(addr), len, !read_only)
                .and_then(|()| {
                    collect_runs(&self.platform, task, VirtAddr(addr), len).inspect_err(|_| {
                        let _ = self.platform.unwire(task, VirtAddr(addr), len);
                    })
                });
            match wired {
                Ok(r) => runs.push(r),
                Err(e) => {
                    self.unwire_ranges(i);
                    return Err(e);
                }
            }
        }
        Ok(runs)
    }

    fn unwire_ranges(&self, upto: usize) {
        let Some(task) = self.task else { return };
        for &(addr, len) in &self.ranges[..upto] {
            if len != 0 {
                let _ = self.platform.unwire(task, VirtAddr(addr), len);
            }
        }
    }
}

impl<P: Platform> MemoryDescriptor for GeneralMemoryDescriptor<P> {
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
        self.platform.page_size()
    }

    fn prepare_for(&self, owner: PrepOwner, dir: Direction) -> Result<()> {
        let Some(task) = self.task else {
            return Ok(());
        };
        let dir = if dir == Direction::None {
            self.direction
        } else {
            dir
        };
        let read_only = dir == Direction::Out;
        let mut w = self.wiring.lock();
        if w.holders.is_prepared() {
            if w.read_only && !read_only {
                return Err(Error::NotWritable {
                    what: "descriptor prepared read-only (for Out)",
                    addr: self.ranges.first().map_or(0, |r| r.0),
                });
            }
            return w.holders.add(owner);
        }
        let runs = self.wire_ranges(task, read_only)?;
        let mut holders = Holders::default();
        holders.add(owner)?;
        *w = Wiring {
            holders,
            read_only,
            runs,
            prep_id: 0,
        };
        Ok(())
    }

    /// Over-completion (no prepare outstanding) succeeds and does nothing, as in IOKit's
    /// release kernels; a preparation another owner holds is not ended (see
    /// [`MemoryDescriptor::complete_for`]).
    fn complete_for(&self, owner: PrepOwner) -> Result<()> {
        if self.task.is_none() {
            return Ok(());
        }
        let mut w = self.wiring.lock();
        if w.holders.remove(owner, "a general descriptor")? == Removed::Last {
            self.unwire_ranges(self.ranges.len());
            *w = Wiring::default();
        }
        Ok(())
    }

    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        let n = whole_or_nothing(offset, buf.len(), self.length);
        crate::debug::cpu_access(super::leaf_id(self), offset, n as u64, false);
        self.copy(offset, n, |addr, at, k| match self.task {
            Some(t) => self
                .platform
                .read_virt(t, VirtAddr(addr), &mut buf[at..at + k]),
            None => self
                .platform
                .read_phys(PhysAddr(addr), &mut buf[at..at + k]),
        })
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        if self.task.is_some() && self.wiring.lock().read_only {
            return 0;
        }
        let n = whole_or_nothing(offset, data.len(), self.length);
        crate::debug::cpu_access(super::leaf_id(self), offset, n as u64, true);
        self.copy(offset, n, |addr, at, k| match self.task {
            Some(t) => self
                .platform
                .write_virt(t, VirtAddr(addr), &data[at..at + k]),
            None => self.platform.write_phys(PhysAddr(addr), &data[at..at + k]),
        })
    }

    fn physical_segment(&self, offset: u64) -> Result<Segment> {
        if offset >= self.length {
            return Err(past_end("descriptor", offset, self.length));
        }
        let (i, inner) = self.locate(offset);
        let Some(_) = self.task else {
            // Physical: to the end of the range, then every following range that starts
            // exactly where this one ends.
            let (addr, len) = self.ranges[i];
            let mut end = addr + len;
            for &(a, l) in &self.ranges[i + 1..] {
                if a != end {
                    break;
                }
                end = a + l;
            }
            return Ok(Segment {
                addr: PhysAddr(addr + inner),
                len: end - (addr + inner),
            });
        };
        let w = self.wiring.lock();
        if !w.holders.is_prepared() {
            return Err(Error::NotReady {
                what: "physical segment of an unprepared descriptor (prepare it first)",
                addr: self.ranges[i].0 + inner,
            });
        }
        let mut skip = inner;
        for r in &w.runs[i] {
            if skip < r.len {
                return Ok(Segment {
                    addr: PhysAddr(r.addr.0 + skip),
                    len: r.len - skip,
                });
            }
            skip -= r.len;
        }
        Err(Error::Internal {
            what: "descriptor runs shorter than the range",
        })
    }

    fn sources(&self, offset: u64, len: u64, f: &mut dyn FnMut(Source)) -> Result<()> {
        check_range("descriptor", offset, len, self.length)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        for (&(addr, rlen), &start) in self.ranges.iter().zip(&self.starts) {
            let (lo, hi) = (start.max(offset), (start + rlen).min(end));
            if lo < hi {
                f(Source {
                    task: self.task,
                    addr: addr + (lo - start),
                    len: hi - lo,
                });
            }
        }
        Ok(())
    }

    fn preparation_id(&self) -> u64 {
        if self.task.is_none() {
            return self.phys_prep.get();
        }
        let mut w = self.wiring.lock();
        if !w.holders.is_prepared() {
            return PREPARATION_ID_UNPREPARED;
        }
        if w.prep_id == 0 {
            w.prep_id = super::next_id();
        }
        w.prep_id
    }

    fn descriptor_id(&self) -> u64 {
        self.id.get()
    }

    fn perform_operation(&self, op: MemoryOperation, offset: u64, len: u64) -> Result<()> {
        let want = op_extent(offset, len, self.length)?;
        if self.platform.dma_coherent() {
            return Ok(());
        }
        let mut done = 0u64;
        while done < want {
            let Ok(seg) = self.physical_segment(offset + done) else {
                break;
            };
            let n = seg.len.min(want - done);
            if self.cache_op(op, seg.addr, n).is_err() {
                break;
            }
            done += n;
        }
        if done < want {
            return Err(Error::Underrun {
                what: "memory operation (a physical segment could not be reached)",
                done,
                requested: want,
            });
        }
        Ok(())
    }

    /// Virtual memory only ([`Error::Unsupported`] for physical ranges). Making memory
    /// volatile or empty needs every range to be whole pages ([`Error::NotAligned`]
    /// otherwise: the platform's state is per page, and bytes outside the descriptor must
    /// not be lost) and the descriptor not to be prepared ([`Error::Busy`]). The ranges are
    /// changed in order; a failure leaves earlier ranges changed.
    fn set_purgeable(&self, req: PurgeableRequest) -> Result<PurgeableState> {
        let Some(task) = self.task else {
            return Err(Error::Unsupported {
                what: "purgeable state of physical memory",
            });
        };
        let page = self.platform.page_size();
        // Held throughout, so no preparation slips in between the check and the change.
        let w = self.wiring.lock();
        if req.discards() {
            if w.holders.is_prepared() {
                return Err(Error::Busy {
                    what: "descriptor",
                    addr: self.ranges.first().map_or(0, |r| r.0),
                    why: "prepared (wired) memory cannot be made volatile",
                });
            }
            if let Some(&(addr, len)) = self
                .ranges
                .iter()
                .find(|&&(a, l)| l != 0 && (page.offset(a) != 0 || page.offset(l) != 0))
            {
                return Err(Error::NotAligned {
                    what: "volatile memory must be whole pages (descriptor range)",
                    value: if page.offset(addr) != 0 { addr } else { len },
                    align: page.bytes(),
                });
            }
        }
        let mut worst = PurgeableState::NonVolatile;
        for &(addr, len) in self.ranges.iter().filter(|r| r.1 != 0) {
            let old = self
                .platform
                .set_purgeable(task, VirtAddr(addr), len, req)?;
            worst = worst.max(old);
        }
        drop(w);
        Ok(worst)
    }
}

impl<P: Platform> GeneralMemoryDescriptor<P> {
    /// Ends every preparation of every owner (what IOKit's `free()` does); for owners of
    /// the descriptor that are going away with it.
    pub(crate) fn complete_all(&self) {
        let mut w = self.wiring.lock();
        if self.task.is_some() && w.holders.is_prepared() {
            self.unwire_ranges(self.ranges.len());
            *w = Wiring::default();
        }
    }
}

impl<P: Platform> Drop for GeneralMemoryDescriptor<P> {
    /// Like IOKit's `free()`, completes outstanding preparations.
    fn drop(&mut self) {
        self.complete_all();
    }
}

impl<P: Platform> core::fmt::Debug for GeneralMemoryDescriptor<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GeneralMemoryDescriptor")
            .field("task", &self.task)
            .field("ranges", &self.ranges.len())
            .field("length", &self.length)
            .field("direction", &self.direction)
            .field("wire_count", &self.wire_count())
            .finish()
    }
}
