//! What a prepared command holds: the route the device takes to the memory (in place,
//! per-page bounced, double buffered or mapped), the preparation, and the owner that gives
//! them back.

use super::*;

/// A bounce buffer holding the transfer; the data starts `data_off` bytes into it.
pub(super) struct Bounce<P: Platform + Clone> {
    pub(super) buffer: BufferMemoryDescriptor<P>,
    pub(super) data_off: u64,
    pub(super) base: PhysAddr,
}

/// A piece of the prepared range (inside one page) that the device reaches in a bounce page.
#[derive(Clone, Copy, Debug)]
pub(super) struct PagePiece {
    /// Prepared offset of the piece.
    pub(super) x: u64,
    pub(super) len: u64,
    /// Where it is in the bounce buffer (same offset within the page as the original).
    pub(super) buf_off: u64,
    /// The bounce copy's physical address.
    pub(super) addr: u64,
}

/// Where the prepared bytes are, for the device.
///
/// The bounce buffers are boxed: a buffer descriptor is about 300 bytes, and every prepare
/// and complete moves the route, which unboxed cost a `memcpy` of that size each time on
/// the common, unbounced paths.
pub(super) enum Route<P: Platform + Clone> {
    /// The descriptor's own physical runs.
    Direct,
    /// The descriptor's own runs, except the pages out of the device's reach, which are
    /// bounce pages (IOKit's per-page bouncing). `pieces` is sorted by `x`.
    PerPage {
        buffer: Box<BufferMemoryDescriptor<P>>,
        bytes: u64,
        pieces: Vec<PagePiece>,
    },
    /// A bounce buffer, by physical address.
    Bounced(Box<Bounce<P>>),
    /// IO virtual addresses from `iova + first_off`, over the descriptor or a bounce buffer.
    /// `table` is empty when the whole range is one IO run; else it lists where each IO
    /// run starts (sorted by `x`, the first at 0).
    Mapped {
        iova: IoAddr,
        pages: u64,
        first_off: u64,
        table: Vec<MapRun>,
        bounce: Option<Box<Bounce<P>>>,
    },
}

/// Where an IO run of a mapped preparation starts: prepared offset `x` is at device
/// address `io`, and the bytes up to the next run's `x` follow it.
#[derive(Clone, Copy, Debug)]
pub(super) struct MapRun {
    pub(super) x: u64,
    pub(super) io: u64,
}

impl<P: Platform + Clone> Route<P> {
    pub(super) fn bounce(&self) -> Option<&Bounce<P>> {
        match self {
            Route::Bounced(b) => Some(b),
            Route::Mapped { bounce, .. } => bounce.as_deref(),
            Route::Direct | Route::PerPage { .. } => None,
        }
    }

    /// Whether the device reaches any bounce memory.
    pub(super) fn bounces(&self) -> bool {
        self.bounce().is_some() || matches!(self, Route::PerPage { .. })
    }

    /// Bytes taken from the bounce pool.
    pub(super) fn pool_bytes(&self, length: u64) -> u64 {
        match self {
            Route::PerPage { bytes, .. } => *bytes,
            _ => self.bounce().map_or(0, |b| b.data_off + length),
        }
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Bounced(_) => "bounced",
            Route::PerPage { .. } => "per-page bounced",
            Route::Mapped { bounce: None, .. } => "mapped",
            Route::Mapped { .. } => "mapped+bounced",
        }
    }

    /// Bounce bytes plus IO-space bytes held.
    pub(super) fn held_bytes(&self, length: u64, page: u64) -> u64 {
        let b = self.pool_bytes(length);
        match self {
            Route::Mapped { pages, .. } => b + pages * page,
            _ => b,
        }
    }
}

pub(super) struct Preparation<P: Platform + Clone> {
    pub(super) offset: u64,
    pub(super) length: u64,
    pub(super) dir: Direction,
    pub(super) route: Route<P>,
    pub(super) reason: Option<BounceReason>,
    /// Prepares of this same range outstanding (nested prepares are counted).
    pub(super) count: u32,
    /// Whether the range is prepared already (its memory held): then the descriptor is
    /// read as it was ([`MemoryDescriptor::prepared_segment`]), so a buffer whose length
    /// went down since still answers for the whole range; while it is being prepared, as
    /// it is now, so a hole is refused.
    pub(super) settled: bool,
}

impl<P: Platform + Clone> Preparation<P> {
    /// The descriptor's physical run at `offset`, as this preparation reads it (see
    /// `settled`).
    pub(super) fn segment(
        &self,
        md: &dyn MemoryDescriptor,
        offset: u64,
    ) -> Result<crate::descriptor::Segment> {
        if self.settled {
            md.prepared_segment(offset)
        } else {
            md.physical_segment(offset)
        }
    }

    /// Whether the device may read the memory: a bounce buffer is filled before it does.
    /// A descriptor of direction `None` states no limit, so it counts both ways (IOKit
    /// copies such a descriptor into and out of its bounce buffer).
    pub(super) fn device_reads(&self) -> bool {
        self.dir.device_reads() || self.dir == Direction::None
    }

    /// Whether the device may write the memory: what it wrote is copied back from a bounce
    /// buffer (and a non-coherent command's caches invalidated) when it is done. `None`
    /// counts, as for [`device_reads`](Self::device_reads).
    pub(super) fn device_writes(&self) -> bool {
        self.dir.device_writes() || self.dir == Direction::None
    }
}

/// What giving a preparation back needs (shared by `complete`, drop and the quarantine).
pub(super) struct Owner<P: Platform + Clone> {
    pub(super) pool: Option<Arc<BouncePool<P>>>,
    pub(super) mode: MappingMode,
    pub(super) quarantine: Option<Arc<Quarantine>>,
    pub(super) id: u64,
}

impl<P: Platform + Clone> Owner<P> {
    /// Gives back everything `prep` holds. When its IO addresses cannot be unmapped the
    /// device may still reach its memory: nothing is given back and `prep` is returned
    /// with the error, still holding all of it.
    pub(super) fn release(
        &self,
        md: &dyn MemoryDescriptor,
        mut prep: Preparation<P>,
    ) -> core::result::Result<(), Box<(Error, Preparation<P>)>> {
        if let Err(e) = self.release_route(&mut prep) {
            return Err(Box::new((e, prep)));
        }
        drop(prep);
        let _ = md.complete_for(PrepOwner::command(self.id));
        crate::debug::completed(self.id);
        Ok(())
    }

    /// Gives back a preparation's IO addresses and bounce memory, keeping its wiring; the
    /// preparation is left direct. If the mapper cannot unmap, the route stays as it was
    /// (bounce memory included) and the mapper's error is returned.
    pub(super) fn release_route(&self, prep: &mut Preparation<P>) -> Result<()> {
        if let (Route::Mapped { iova, pages, .. }, MappingMode::Mapped(m)) =
            (&prep.route, &self.mode)
        {
            // The mapper invalidates before the IO addresses can be handed out again.
            m.iovm_free(*iova, *pages)?;
        }
        let route = core::mem::replace(&mut prep.route, Route::Direct);
        if route.bounces() {
            if let Some(pool) = &self.pool {
                pool.give_back(route.pool_bytes(prep.length));
            }
        }
        Ok(())
    }

    /// Keeps a preparation that could not be released (its IO addresses are still mapped)
    /// for good: in the quarantine when there is one, else leaked, never freed under the
    /// device.
    pub(super) fn keep(&self, md: Arc<dyn MemoryDescriptor>, prep: Preparation<P>, held: u64)
    where
        P: 'static,
    {
        match &self.quarantine {
            Some(q) => {
                q.prepared();
                q.hold(Box::new(Dropped {
                    owner: Owner {
                        pool: self.pool.clone(),
                        mode: self.mode.clone(),
                        quarantine: None,
                        id: self.id,
                    },
                    md,
                    prep,
                    held,
                }));
            }
            None => {
                core::mem::forget(prep);
                core::mem::forget(md);
            }
        }
    }
}

/// A dropped preparation waiting in a quarantine.
pub(super) struct Dropped<P: Platform + Clone + 'static> {
    pub(super) owner: Owner<P>,
    pub(super) md: Arc<dyn MemoryDescriptor>,
    pub(super) prep: Preparation<P>,
    pub(super) held: u64,
}

impl<P: Platform + Clone + 'static> Held for Dropped<P> {
    fn release(self: Box<Self>) -> core::result::Result<(), (Error, Box<dyn Held>)> {
        let Dropped {
            owner,
            md,
            prep,
            held,
        } = *self;
        owner.release(md.as_ref(), prep).map_err(|failed| {
            let (e, prep) = *failed;
            let kept: Box<dyn Held> = Box::new(Dropped {
                owner,
                md,
                prep,
                held,
            });
            (e, kept)
        })
    }

    fn held_bytes(&self) -> u64 {
        self.held
    }
}
