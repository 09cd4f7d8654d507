//! Synchronizing the CPU's and the device's views: bounce copies and cache maintenance at
//! `synchronize`, and the command's own byte copies.

use super::*;

impl<P: Platform + Clone + 'static> DmaCommand<P> {
    /// Makes memory and device agree in `dir` over the whole preparation (IOKit
    /// `synchronize`): `Out` copies the descriptor into a bounce buffer (and cleans a
    /// non-coherent command's caches) before the device reads; `In` invalidates and copies
    /// what the device wrote back into the descriptor. `None` does nothing.
    ///
    /// One direction at a time: `InOut` is [`Error::BadArgument`], as in IOKit (copying
    /// both ways would overwrite what the device wrote with the old bytes). A direction the
    /// transfer was not prepared for is [`Error::BadArgument`] too (recorded by the dma-debug
    /// ledger; IOKit copies anyway). Not prepared is [`Error::NotReady`].
    ///
    /// Through a bounce buffer, the device sees the CPU's changes only after
    /// `synchronize(Out)`, and the CPU sees the device's only after `synchronize(In)` (or
    /// `complete`):
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{BouncePool, DmaCommand, PrepareOptions};
    /// use dmakit::{Direction, Error, PhysAddr};
    /// use std::sync::Arc;
    /// let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
    ///
    /// let pool = Arc::new(BouncePool::new(machine.clone(), "example", 1 << 16));
    /// pool.set_force_bounce(true); // every transfer through a bounce buffer
    /// let mut cmd = DmaCommand::builder(machine.clone()).bounce_pool(pool).build()?;
    /// let buf = Arc::new(BufferMemoryDescriptor::new(
    ///     machine.clone(),
    ///     BufferOptions::new(16, Direction::InOut),
    /// )?);
    /// assert_eq!(buf.write_bytes(0, b"request v1"), 10);
    /// cmd.set_memory_descriptor(buf.clone())?;
    /// cmd.prepare(PrepareOptions::new())?; // copies into the bounce buffer
    /// let at = PhysAddr(cmd.segments().next().expect("a segment")?.addr.0);
    /// let device_sees = |n| -> dmakit::Result<Vec<u8>> {
    ///     let mut v = vec![0u8; n];
    ///     machine.device_read(at, &mut v)?;
    ///     Ok(v)
    /// };
    ///
    /// assert_eq!(buf.write_bytes(9, b"2"), 1);
    /// assert_eq!(device_sees(10)?, b"request v1", "the device reads the copy");
    /// cmd.synchronize(Direction::Out)?;
    /// assert_eq!(device_sees(10)?, b"request v2");
    ///
    /// machine.device_write(at, b"reply")?; // the device writes the copy
    /// cmd.synchronize(Direction::In)?;
    /// let mut back = [0u8; 5];
    /// assert_eq!(buf.read_bytes(0, &mut back), 5);
    /// assert_eq!(&back, b"reply");
    /// // One direction at a time.
    /// assert!(matches!(cmd.synchronize(Direction::InOut), Err(Error::BadArgument { .. })));
    /// cmd.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn synchronize(&self, dir: Direction) -> Result<()> {
        let length = self.prep.as_ref().map_or(0, |p| p.length);
        self.synchronize_range(dir, 0, length)
    }

    /// [`synchronize`](Self::synchronize) for `[offset, offset + length)` of the prepared
    /// range only (relative offsets), as Linux's `dma_sync_single_range_*`. Outside the
    /// preparation is [`Error::OutOfBounds`]; the direction rules are `synchronize`'s
    /// (violations recorded by the dma-debug ledger).
    pub fn synchronize_range(&self, dir: Direction, offset: u64, length: u64) -> Result<()> {
        if dir == Direction::InOut {
            crate::debug::record(
                crate::debug::ViolationKind::SyncWrongDirection,
                self.owner.id,
                || alloc_crate::string::String::from("synchronize in both directions at once"),
            );
            return Err(Error::BadArgument {
                what: "synchronize takes one direction (In or Out), not InOut",
                value: dir.bits() as u64,
            });
        }
        let (prep, md) = self.parts("synchronize on an unprepared DMA command")?;
        if dir == Direction::None {
            return Ok(());
        }
        self.check_sync(prep, dir, offset, length)?;
        let non_coherent = self.maintains_caches();
        if dir == Direction::Out {
            self.copy_range(md, prep, offset, length, true)?;
            if non_coherent {
                self.cache_range(md, prep, offset, length, CacheOp::Clean)?;
            }
        } else {
            if non_coherent {
                self.cache_range(md, prep, offset, length, CacheOp::Invalidate)?;
            }
            self.copy_range(md, prep, offset, length, false)?;
        }
        Ok(())
    }

    /// A synchronize of `[offset, offset + length)` of `prep` in `dir` (In or Out) must lie
    /// in the preparation and go a way the transfer was prepared for; each violation is
    /// recorded by the dma-debug ledger too.
    fn check_sync(
        &self,
        prep: &Preparation<P>,
        dir: Direction,
        offset: u64,
        length: u64,
    ) -> Result<()> {
        let checked = crate::descriptor::check_range(
            "synchronize range in the prepared range",
            offset,
            length,
            prep.length,
        );
        if let Err(e) = checked {
            crate::debug::record(
                crate::debug::ViolationKind::SyncOutOfRange,
                self.owner.id,
                || {
                    alloc_crate::format!(
                    "synchronize {dir:?} of {offset:#x}+{length:#x} outside the prepared {:#x} bytes",
                    prep.length
                )
                },
            );
            return Err(e);
        }
        if prep.dir.covers(dir) || prep.dir == Direction::None {
            return Ok(());
        }
        crate::debug::record(
            crate::debug::ViolationKind::SyncWrongDirection,
            self.owner.id,
            || alloc_crate::format!("synchronize {dir:?} of a transfer prepared {:?}", prep.dir),
        );
        Err(Error::BadArgument {
            what: "synchronize in a direction the transfer was not prepared for",
            value: dir.bits() as u64,
        })
    }

    /// Copies between the descriptor and the bounce buffer: `to_bounce` for a device read.
    /// See [`BounceCopy`] for how.
    pub(super) fn copy(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        to_bounce: bool,
    ) -> Result<()> {
        self.copy_range(md, prep, 0, prep.length, to_bounce)
    }

    /// Copies `[from, from + length)` of the prepared range (relative offsets).
    pub(super) fn copy_range(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        from: u64,
        length: u64,
        to_bounce: bool,
    ) -> Result<()> {
        let _sync = SyncWindow::new(self.owner.id);
        if let Route::PerPage { buffer, pieces, .. } = &prep.route {
            let copier = BounceCopy {
                platform: &self.platform,
                md,
                buffer,
                to_bounce,
            };
            let (lo, hi) = (from, from + length);
            let mut copied = 0;
            let mut result = Ok(());
            for p in pieces.iter().filter(|p| p.x < hi && lo < p.x + p.len) {
                let (a, b) = (p.x.max(lo), (p.x + p.len).min(hi));
                result = copier.run(prep.offset + a, p.buf_off + (a - p.x), b - a);
                if result.is_err() {
                    break;
                }
                copied += b - a;
            }
            if let (Ok(()), Some(pool)) = (&result, &self.owner.pool) {
                pool.count_copy(copied);
            }
            return result;
        }
        let Some(b) = prep.route.bounce() else {
            return Ok(());
        };
        // Counted before the copy and taken back if it fails: the counter's atomic add
        // right after a large copy would wait for the copy's stores to drain.
        let pool = self.owner.pool.as_ref();
        if let Some(pool) = pool {
            pool.count_copy(length);
        }
        let result = BounceCopy {
            platform: &self.platform,
            md,
            buffer: &b.buffer,
            to_bounce,
        }
        .run(prep.offset + from, b.data_off + from, length);
        if let (Err(_), Some(pool)) = (&result, pool) {
            pool.uncount_copy(length);
        }
        result
    }

    pub(super) fn cache(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        op: CacheOp,
    ) -> Result<()> {
        self.cache_range(md, prep, 0, prep.length, op)
    }

    pub(super) fn cache_range(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &Preparation<P>,
        from: u64,
        length: u64,
        op: CacheOp,
    ) -> Result<()> {
        if let Some(b) = prep.route.bounce() {
            return self
                .platform
                .cache_phys(op, PhysAddr(b.base.0 + b.data_off + from), length);
        }
        // Direct or per-page: the device's runs are physical addresses. Mapped: the IO
        // addresses lead to the descriptor's own physical runs.
        let mapped = matches!(prep.route, Route::Mapped { .. });
        let mut x = from;
        while x < from + length {
            let (addr, run) = if mapped {
                let seg = prep.segment(md, prep.offset + x)?;
                (seg.addr.0, seg.len)
            } else {
                self.raw_run(md, prep, x)?
            };
            let len = run.min(from + length - x);
            self.platform.cache_phys(op, PhysAddr(addr), len)?;
            x += len;
        }
        Ok(())
    }

    pub(super) fn parts(
        &self,
        what: &'static str,
    ) -> Result<(&Preparation<P>, &dyn MemoryDescriptor)> {
        let prep = self
            .prep
            .as_ref()
            .ok_or(Error::NotReady { what, addr: 0 })?;
        let md = self.md.as_deref().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        Ok((prep, md))
    }

    /// Copies from the memory the device reaches (a bounce buffer where there is one) at
    /// `offset` of the preparation into `buf` (IOKit `IODMACommand::readBytes`): at most to
    /// the end of the preparation; 0 when not prepared or `offset` is at or past its end.
    #[must_use = "the count says how many bytes were copied"]
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> usize {
        self.dma_copy(offset, buf.len(), &mut |md, at, i, n| {
            md.read_bytes(at, &mut buf[i..i + n])
        })
    }

    /// Copies `data` into the memory the device reaches (a bounce buffer where there is
    /// one) at `offset` of the preparation (IOKit `IODMACommand::writeBytes`); same bounds
    /// as [`read_bytes`](Self::read_bytes).
    #[must_use = "the count says how many bytes were copied"]
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> usize {
        self.dma_copy(offset, data.len(), &mut |md, at, i, n| {
            md.write_bytes(at, &data[i..i + n])
        })
    }

    /// Runs `step(memory, its offset, index into the caller's bytes, count)` over the pieces
    /// of the device-visible memory behind `[offset, offset + len)` of the preparation.
    pub(super) fn dma_copy(
        &self,
        offset: u64,
        len: usize,
        step: &mut dyn FnMut(&dyn MemoryDescriptor, u64, usize, usize) -> usize,
    ) -> usize {
        let Ok((prep, md)) = self.parts("DMA command copy") else {
            return 0;
        };
        let n = crate::descriptor::clamp(offset, len, prep.length);
        if n == 0 {
            // Nothing to copy; an offset past the end must not be added to anything.
            return 0;
        }
        let _sync = SyncWindow::new(self.owner.id);
        if let Some(b) = prep.route.bounce() {
            return step(&b.buffer, b.data_off + offset, 0, n);
        }
        let Route::PerPage { buffer, pieces, .. } = &prep.route else {
            return step(md, prep.offset + offset, 0, n);
        };
        let mut i = 0usize;
        while i < n {
            let x = offset + i as u64;
            let k = pieces.partition_point(|p| p.x + p.len <= x);
            let (mem, at, run): (&dyn MemoryDescriptor, u64, u64) = match pieces.get(k) {
                Some(p) if p.x <= x => (&**buffer, p.buf_off + (x - p.x), p.len - (x - p.x)),
                next => (md, prep.offset + x, next.map_or(u64::MAX, |p| p.x - x)),
            };
            let want = (run.min((n - i) as u64)) as usize;
            let got = step(mem, at, i, want);
            i += got;
            if got < want {
                break;
            }
        }
        i
    }
}

/// Marks a command's own CPU copies for the dma-debug ledger while alive.
pub(super) struct SyncWindow(u64);

impl SyncWindow {
    pub(super) fn new(id: u64) -> Self {
        crate::debug::syncing(id, true);
        SyncWindow(id)
    }
}

impl Drop for SyncWindow {
    fn drop(&mut self) {
        crate::debug::syncing(self.0, false);
    }
}

/// One bounce copy between a descriptor range and a bounce buffer (`to_bounce`: descriptor
/// → buffer, for a device read).
///
/// It walks the descriptor's [`sources`](MemoryDescriptor::sources): a task range is one
/// [`copy_virt`](crate::platform::CpuAccess::copy_virt) against the bounce buffer, which is
/// one range of its task (its [`address`](BufferMemoryDescriptor::address) on), so one
/// copy per byte where the platform can. A physical piece, or a descriptor whose sources
/// cannot be listed, goes through `read_bytes`/`write_bytes` and a stack buffer (two copies
/// per byte). Task addresses are taken to be of the command's platform, as its physical
/// addresses already are.
pub(super) struct BounceCopy<'a, P: Platform + Clone> {
    pub(super) platform: &'a P,
    pub(super) md: &'a dyn MemoryDescriptor,
    pub(super) buffer: &'a BufferMemoryDescriptor<P>,
    pub(super) to_bounce: bool,
}

impl<P: Platform + Clone> BounceCopy<'_, P> {
    /// `len` bytes between descriptor offset `md_off` and buffer offset `buf_off`.
    pub(super) fn run(&self, md_off: u64, buf_off: u64, len: u64) -> Result<()> {
        let mut failed: Option<Error> = None;
        let mut x = 0u64;
        let listed = self.md.sources(md_off, len, &mut |s| {
            if failed.is_some() {
                return;
            }
            let r = match s.task {
                Some(task) => self.piece(task, s.addr, buf_off + x, s.len),
                None => self.staged(md_off + x, buf_off + x, s.len),
            };
            failed = r.err();
            x += s.len;
        });
        self.finish(listed, failed, md_off, buf_off, len, x)
    }

    /// The descriptor's task piece `[va, va + len)` of `task` against `[buf_off, buf_off +
    /// len)` of the buffer: one copy, as a buffer is one range of its task.
    pub(super) fn piece(&self, task: Task, va: u64, buf_off: u64, len: u64) -> Result<()> {
        crate::descriptor::check_range("bounce buffer", buf_off, len, self.buffer.length())?;
        let (here, bt) = (VirtAddr(va), self.buffer.task());
        let there = VirtAddr(self.buffer.address().0 + buf_off);
        if self.to_bounce {
            self.platform.copy_virt(task, here, bt, there, len)
        } else {
            self.platform.copy_virt(bt, there, task, here, len)
        }
    }

    /// After a walk that covered `done` of `len` bytes: the walk's error, or the rest (all
    /// of it if the sources could not be listed; copying again is harmless) the slow way.
    pub(super) fn finish(
        &self,
        listed: Result<()>,
        failed: Option<Error>,
        md_off: u64,
        buf_off: u64,
        len: u64,
        done: u64,
    ) -> Result<()> {
        match (listed, failed) {
            (_, Some(e)) => Err(e),
            (Err(_), None) => self.staged(md_off, buf_off, len),
            (Ok(()), None) if done < len => self.staged(md_off + done, buf_off + done, len - done),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Through `read_bytes`/`write_bytes` and a stack buffer of `COPY_CHUNK` bytes. A copy
    /// that falls short is [`Error::Underrun`], as IOKit's.
    pub(super) fn staged(&self, md_off: u64, buf_off: u64, len: u64) -> Result<()> {
        let mut tmp = [0u8; COPY_CHUNK];
        let mut x = 0u64;
        while x < len {
            let n = ((len - x) as usize).min(COPY_CHUNK);
            let ok = if self.to_bounce {
                self.md.read_bytes(md_off + x, &mut tmp[..n]) == n
                    && self.buffer.write_bytes(buf_off + x, &tmp[..n]) == n
            } else {
                self.buffer.read_bytes(buf_off + x, &mut tmp[..n]) == n
                    && self.md.write_bytes(md_off + x, &tmp[..n]) == n
            };
            if !ok {
                // IOKit's copies into and out of its copy buffer are readBytes/writeBytes
                // calls too, and a short one is kIOReturnUnderrun.
                return Err(Error::Underrun {
                    what: "bounce copy fell short (memory the descriptor cannot read or write)",
                    done: x,
                    requested: len,
                });
            }
            x += n as u64;
        }
        Ok(())
    }
}
