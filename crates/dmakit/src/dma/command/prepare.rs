//! Preparing and completing a transfer: the range is checked and wired, its route chosen,
//! and given back at `complete`.

use super::*;

impl<P: Platform + Clone + 'static> DmaCommand<P> {
    /// Prepares a range of the descriptor for DMA (IOKit `prepare`): wires it under the
    /// command's own [`PrepOwner`] (so only the command can end the preparation), decides the
    /// route (direct, per-page bounced, double buffered or mapped), fills bounce buffers for
    /// a device that reads and does a non-coherent command's cache maintenance, as `options`
    /// say. A descriptor of direction [`Direction::None`] states no limit: it is treated as
    /// `InOut`, copied into a bounce buffer here and back at the last complete, as IOKit does.
    ///
    /// A prepare of the range already prepared is counted (each needs a
    /// [`complete`](Self::complete); the last one ends the transfer) and does nothing else;
    /// another range while prepared is [`Error::NotReady`] and is not counted. No descriptor
    /// is [`Error::NotReady`]; an empty range, or one past the descriptor's end, is an
    /// error; a length above `max_transfer_size` is [`Error::NoSpace`] and one that is not a
    /// multiple of `length_alignment` is [`Error::NotAligned`]. The checks run in IOKit's
    /// order: the transfer size first (also while prepared), then another range while
    /// prepared, then the length alignment, then the range itself. A bounce copy that falls
    /// short (memory the descriptor cannot read) is [`Error::Underrun`], as in IOKit; an
    /// error the platform reports for a copy is returned as it is. Either way nothing stays
    /// prepared. A mapped prepare whose mapping fails, and whose IO pages then cannot be
    /// unmapped either (the IOMMU refusing both), is [`Error::LeftMapped`]: nothing stays
    /// prepared; the prepare tries once more to free the IO pages and, if the IOMMU still
    /// refuses, does not give the memory back, as the device may still reach it: the
    /// preparation waits in the command's [`Quarantine`] (or is leaked without one) until
    /// the IOMMU lets it go.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{DmaCommand, PrepareOptions};
    /// use dmakit::{Direction, Error};
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let md: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::new(
    ///     machine.clone(),
    ///     BufferOptions::new(0x4000, Direction::In),
    /// )?);
    /// let mut cmd = DmaCommand::builder(machine).build()?;
    /// assert!(matches!(cmd.prepare(PrepareOptions::new()), Err(Error::NotReady { .. })));
    /// cmd.set_memory_descriptor(md)?;
    /// let second_page = PrepareOptions::range(0x1000, 0x1000);
    /// cmd.prepare(second_page)?;
    /// cmd.prepare(second_page)?; // nested: counted
    /// assert_eq!((cmd.prepared(), cmd.prepare_count()), (Some((0x1000, 0x1000)), 2));
    /// // Another range while prepared is refused, and not counted.
    /// assert!(matches!(cmd.prepare(PrepareOptions::new()), Err(Error::NotReady { .. })));
    /// // Past the end is an error, never a walk off the descriptor.
    /// cmd.complete()?;
    /// cmd.complete()?;
    /// assert!(cmd.prepare(PrepareOptions::range(0x3000, 0x2000)).is_err());
    /// assert_eq!(cmd.prepare_count(), 0);
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn prepare(&mut self, options: PrepareOptions) -> Result<()> {
        let md = self.md.clone().ok_or(Error::NotReady {
            what: "prepare of a DMA command without a memory descriptor",
            addr: 0,
        })?;
        let (offset, length) = options.requested_range().unwrap_or((0, md.length()));
        if length > self.spec.max_transfer_size() {
            // IOKit's first check, before a preparation in progress is looked at.
            return Err(Error::NoSpace {
                what: "DMA transfer above the spec's max_transfer_size",
                requested: length,
                align: 0,
                free: self.spec.max_transfer_size(),
            });
        }
        if let Some(p) = &mut self.prep {
            if (p.offset, p.length) != (offset, length) {
                return Err(Error::NotReady {
                    what: "prepare of another range while the DMA command is prepared (complete it first)",
                    addr: offset,
                });
            }
            p.count = p.count.checked_add(1).ok_or(Error::NoResources {
                what: "nested prepares of one DMA command",
                limit: u32::MAX as u64,
            })?;
            return Ok(());
        }
        self.check_range(md.as_ref(), offset, length)?;
        let dir = md.direction();
        md.prepare_for(self.prep_owner(), dir)?;
        let mut prep = Preparation {
            offset,
            length,
            dir,
            route: Route::Direct,
            reason: None,
            count: 1,
            settled: false,
        };
        if let Err(e) = self.settle(md.as_ref(), &mut prep, options, false) {
            if let Err(failed) = self.owner.release(md.as_ref(), prep) {
                let (_, prep) = *failed;
                // Still mapped: the device could reach it; never free it.
                let held = prep
                    .route
                    .held_bytes(length, self.platform.page_size().bytes());
                self.owner.keep(md.clone(), prep, held);
            }
            return Err(e);
        }
        self.record_prepared(md.as_ref(), &prep);
        prep.settled = true;
        self.prep = Some(prep);
        Ok(())
    }

    /// The checks of a first prepare of `[offset, offset + length)` after the transfer
    /// size: IOKit's length alignment, then dmakit's own (an empty range, a range past the
    /// descriptor's end), which IOKit does not make.
    pub(super) fn check_range(
        &self,
        md: &dyn MemoryDescriptor,
        offset: u64,
        length: u64,
    ) -> Result<()> {
        if length == 0 {
            return Err(Error::ZeroSize {
                what: "DMA command prepare (an empty descriptor or range)",
            });
        }
        if !length.is_multiple_of(self.spec.length_alignment()) {
            return Err(Error::NotAligned {
                what: "DMA transfer length (spec length_alignment)",
                value: length,
                align: self.spec.length_alignment(),
            });
        }
        crate::descriptor::check_range("DMA command prepare", offset, length, md.length())
    }

    /// Routes a wired preparation and does its cache maintenance.
    pub(super) fn settle(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &mut Preparation<P>,
        options: PrepareOptions,
        force: bool,
    ) -> Result<()> {
        self.route(md, prep, options.synchronizes(), force)?;
        if options.flushes_cache() && self.maintains_caches() {
            let op = if prep.device_writes() {
                CacheOp::Flush
            } else {
                CacheOp::Clean
            };
            self.cache(md, prep, op)?;
        }
        Ok(())
    }

    pub(super) fn record_prepared(&self, md: &dyn MemoryDescriptor, prep: &Preparation<P>) {
        crate::debug::prepared(
            crate::debug::PrepInfo {
                command: self.owner.id,
                device: self.owner.quarantine.as_ref().map_or(0, |q| q.id()),
                offset: prep.offset,
                length: prep.length,
                direction: prep.dir,
                route: prep.route.name(),
                held_bytes: prep
                    .route
                    .held_bytes(prep.length, self.platform.page_size().bytes()),
            },
            md,
        );
        if let Some(q) = &self.owner.quarantine {
            q.prepared();
        }
    }

    /// Chooses the route of `prep` (which starts out direct) and fills bounce buffers.
    pub(super) fn route(
        &self,
        md: &dyn MemoryDescriptor,
        prep: &mut Preparation<P>,
        sync: bool,
        by_caller: bool,
    ) -> Result<()> {
        let pool_forces = self.owner.pool.as_ref().is_some_and(|p| p.force_bounce());
        let forced = (by_caller || pool_forces).then_some(BounceReason {
            constraint: if by_caller {
                Constraint::ForcedByCaller
            } else {
                Constraint::Forced
            },
            addr: 0,
            len: 0,
        });
        if let MappingMode::Mapped(mapper) = &self.owner.mode {
            if forced.is_none() {
                let why = |constraint| -> Result<Option<BounceReason>> {
                    Ok(Some(BounceReason {
                        constraint,
                        addr: md.physical_segment(prep.offset)?.addr.0,
                        len: prep.length,
                    }))
                };
                match self.map(mapper.as_ref(), md, prep.offset, prep.length, prep.dir) {
                    Ok(route) => {
                        prep.route = route;
                        match self.preflight(md, prep)? {
                            None => return Ok(()),
                            Some(r) => {
                                prep.reason = Some(r);
                                self.owner.release_route(prep)?;
                            }
                        }
                    }
                    // No IO range at this page offset fits the device's window: a bounce
                    // buffer, whose data starts elsewhere in its page, may.
                    Err(e @ Error::NoSuitableMemory { .. }) if self.owner.pool.is_none() => {
                        return Err(e)
                    }
                    Err(Error::NoSuitableMemory { .. }) => {
                        prep.reason = why(Constraint::AddressWindow)?;
                    }
                    Err(e) => return Err(self.hold_left_mapped(prep, e, None)),
                }
            } else {
                prep.reason = forced;
            }
            // Copy into a bounce buffer anywhere in memory and map that.
            let bounce = self.take_bounce(md, prep.offset, prep.length, (0, u64::MAX))?;
            let mapped = self.map(
                mapper.as_ref(),
                &bounce.buffer,
                bounce.data_off,
                prep.length,
                prep.dir,
            );
            let mapped = match mapped {
                Ok(route) => route,
                Err(e) => return Err(self.hold_left_mapped(prep, e, Some(bounce))),
            };
            let Route::Mapped {
                iova,
                pages,
                first_off,
                table,
                ..
            } = mapped
            else {
                self.give_back(prep.length, &bounce);
                return Err(Error::Internal {
                    what: "a bounce buffer was not mapped through the mapper",
                });
            };
            prep.route = Route::Mapped {
                iova,
                pages,
                first_off,
                table,
                bounce: Some(Box::new(bounce)),
            };
            return self.finish_bounce(md, prep, sync);
        }
        let reason = match forced {
            Some(f) => Some(f),
            None => self.preflight(md, prep)?,
        };
        let Some(reason) = reason else {
            return Ok(());
        };
        prep.reason = Some(reason);
        if matches!(self.owner.mode, MappingMode::IterateOnly) {
            return Err(Error::MessageTooLarge {
                what:
                    "an iterate-only DMA command cannot double-buffer memory that breaks its spec",
                addr: reason.addr,
            });
        }
        if reason.constraint == Constraint::AddressWindow && self.per_page(md, prep)? {
            if sync && prep.device_reads() {
                self.copy(md, prep, true)?;
            }
            return Ok(());
        }
        let bounce = self.take_bounce(md, prep.offset, prep.length, self.window())?;
        prep.route = Route::Bounced(Box::new(bounce));
        self.finish_bounce(md, prep, sync)
    }

    /// Moves the transfer into a whole-transfer bounce buffer (IOKit `synchronize` with
    /// `kForceDoubleBuffer`), for a caller that wants the device to see a private copy.
    /// Already double buffered is `Ok`. What the device wrote so far is copied back first;
    /// the new buffer is filled from the descriptor for a device that reads. Call it while
    /// the device is not using the memory. An iterate-only command is
    /// [`Error::MessageTooLarge`] (it never bounces); nested prepares outstanding are
    /// [`Error::Busy`] (IOKit does nothing then). Unlike IOKit, the bounce also happens when
    /// nothing else would need a walk.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
    /// use dmakit::dma::{BouncePool, Constraint, DmaCommand, PrepareOptions};
    /// use dmakit::Direction;
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let pool = Arc::new(BouncePool::new(machine.clone(), "example", 1 << 16));
    /// let mut cmd = DmaCommand::builder(machine.clone()).bounce_pool(pool).build()?;
    /// let md: Arc<dyn MemoryDescriptor> =
    ///     Arc::new(BufferMemoryDescriptor::with_bytes(machine, b"private", Direction::Out)?);
    /// cmd.set_memory_descriptor(md)?;
    /// cmd.prepare(PrepareOptions::new())?;
    /// assert!(!cmd.is_bounced());
    /// cmd.force_double_buffer()?; // the device now reads a private copy
    /// assert_eq!(cmd.bounce_reason().map(|r| r.constraint), Some(Constraint::ForcedByCaller));
    /// let mut copy = [0u8; 7];
    /// assert_eq!(cmd.read_bytes(0, &mut copy), 7); // what the device reaches
    /// assert_eq!(&copy, b"private");
    /// cmd.complete()?;
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn force_double_buffer(&mut self) -> Result<()> {
        let (count, whole) = match &self.prep {
            None => {
                return Err(Error::NotReady {
                    what: "force_double_buffer on an unprepared DMA command",
                    addr: 0,
                })
            }
            // A whole-transfer bounce buffer: bypassed or mapped.
            Some(p) => (p.count, p.route.bounce().is_some()),
        };
        if whole {
            return Ok(());
        }
        if count > 1 {
            return Err(Error::Busy {
                what: "DMA command",
                addr: count as u64,
                why: "nested prepares are outstanding; double buffering would move memory they hand out",
            });
        }
        let md = self.md.clone().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        let Some(mut prep) = self.prep.take() else {
            return Err(Error::Internal {
                what: "preparation vanished",
            });
        };
        let mut fresh = Preparation {
            offset: prep.offset,
            length: prep.length,
            dir: prep.dir,
            route: Route::Direct,
            reason: None,
            count: 1,
            settled: true,
        };
        let r = self
            .settle(md.as_ref(), &mut fresh, PrepareOptions::new(), true)
            .and_then(|()| {
                if prep.device_writes() {
                    self.copy(md.as_ref(), &prep, false)?;
                    if fresh.device_reads() {
                        self.copy(md.as_ref(), &fresh, true)?;
                    }
                }
                Ok(())
            });
        let r = r.and_then(|()| self.owner.release_route(&mut prep));
        match r {
            Ok(()) => {
                self.prep = Some(fresh);
                Ok(())
            }
            Err(e) => {
                if self.owner.release_route(&mut fresh).is_err() {
                    // The new route is still mapped too: its bounce memory and IO
                    // addresses are kept for good (the wiring stays with `prep`).
                    core::mem::forget(fresh);
                }
                self.prep = Some(prep);
                Err(e)
            }
        }
    }

    /// Ends one prepare (IOKit `complete()` with its defaults: invalidate caches and copy
    /// back). See [`complete_with`](Self::complete_with).
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{DmaCommand, MappingMode, PrepareOptions};
    /// use dmakit::{Direction, Error, PhysAddr};
    /// use std::sync::Arc;
    /// // Not coherent: the CPU would read stale cache lines without the invalidate.
    /// let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// let buf = Arc::new(BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(8, Direction::In))?);
    /// let mut cmd = DmaCommand::builder(machine.clone()).mode(MappingMode::NonCoherent).build()?;
    /// cmd.set_memory_descriptor(buf.clone())?;
    /// cmd.prepare(PrepareOptions::new())?;
    /// let at = PhysAddr(cmd.segments().next().expect("a segment")?.addr.0);
    /// machine.device_write(at, b"received")?;
    /// cmd.complete()?; // invalidates the CPU cache over the buffer
    /// let mut back = [0u8; 8];
    /// assert_eq!(buf.read_bytes(0, &mut back), 8);
    /// assert_eq!(&back, b"received");
    /// assert!(matches!(cmd.complete(), Err(Error::NotReady { .. })), "one complete per prepare");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn complete(&mut self) -> Result<()> {
        self.complete_with(CompleteOptions::new())
    }

    /// Ends one prepare (IOKit `complete(invalidateCache, synchronize)`). While nested
    /// prepares remain this only counts down. The last one ends the transfer: as `options`
    /// say, data the device wrote (direction `In`, `InOut` or `None`) is copied back from a
    /// bounce buffer and a non-coherent command's caches are invalidated; then the bounce buffer, IO addresses and the
    /// command's wiring of the descriptor are released. Not prepared is
    /// [`Error::NotReady`] (recorded by the dma-debug ledger as an unbalanced complete); a
    /// copy back that falls short is [`Error::Underrun`], as in IOKit, returned after
    /// everything is released.
    ///
    /// ```
    /// use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
    /// use dmakit::dma::{BouncePool, CompleteOptions, DmaCommand, PrepareOptions};
    /// use dmakit::{Direction, PhysAddr};
    /// use std::sync::Arc;
    /// # let machine = Arc::new(dmakit_sim::MachineBuilder::new().coherent(true).build()?);
    ///
    /// let pool = Arc::new(BouncePool::new(machine.clone(), "example", 1 << 16));
    /// pool.set_force_bounce(true);
    /// let mut cmd = DmaCommand::builder(machine.clone()).bounce_pool(pool.clone()).build()?;
    /// let buf = Arc::new(BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(8, Direction::In))?);
    /// cmd.set_memory_descriptor(buf.clone())?;
    /// cmd.prepare(PrepareOptions::new())?;
    /// let at = PhysAddr(cmd.segments().next().expect("a segment")?.addr.0);
    /// machine.device_write(at, b"aborted!")?;
    /// // The transfer failed: do not copy what the device left behind.
    /// cmd.complete_with(CompleteOptions::new().synchronize(false))?;
    /// let mut back = [0xFFu8; 8];
    /// assert_eq!(buf.read_bytes(0, &mut back), 8);
    /// assert_eq!(back, [0; 8], "the buffer never saw the device's bytes");
    /// assert_eq!(pool.stats().in_use, 0, "the bounce buffer went back");
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn complete_with(&mut self, options: CompleteOptions) -> Result<()> {
        let Some(p) = &mut self.prep else {
            crate::debug::record(
                crate::debug::ViolationKind::UnbalancedComplete,
                self.owner.id,
                || {
                    alloc_crate::string::String::from(
                        "complete on a DMA command that is not prepared",
                    )
                },
            );
            return Err(Error::NotReady {
                what: "complete on an unprepared DMA command (prepare it first)",
                addr: 0,
            });
        };
        if p.count > 1 {
            p.count -= 1;
            return Ok(());
        }
        let Some(prep) = self.prep.take() else {
            return Err(Error::Internal {
                what: "preparation vanished",
            });
        };
        let md = self.md.clone().ok_or(Error::Internal {
            what: "prepared command without descriptor",
        })?;
        let mut result = Ok(());
        if prep.device_writes() {
            if options.invalidates_cache() && self.maintains_caches() {
                result = self.cache(md.as_ref(), &prep, CacheOp::Invalidate);
            }
            if result.is_ok() && options.synchronizes() {
                result = self.copy(md.as_ref(), &prep, false);
            }
        }
        if let Err(failed) = self.owner.release(md.as_ref(), prep) {
            let (e, prep) = *failed;
            // The IO addresses are still mapped, so the device may still reach the memory:
            // the command stays prepared and owns all of it; complete again later.
            self.prep = Some(prep);
            return Err(e);
        }
        if let Some(q) = &self.owner.quarantine {
            q.completed();
        }
        result
    }
}
