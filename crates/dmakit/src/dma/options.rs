//! Options of a [`DmaCommand`](super::DmaCommand): how to build one, how to prepare and
//! complete a transfer, and the constraint a bounce names.
//!
//! IOKit passes these as positional arguments (`prepare(offset, length, flushCache,
//! synchronize)`, `complete(invalidateCache, synchronize)`, `withSpecification(outFn, bits,
//! maxSegmentSize, mappingType, maxTransferSize, alignment, mapper, refCon)`); dmakit uses
//! small option values whose defaults are IOKit's defaults.
//!
//! ```
//! use dmakit::dma::{CompleteOptions, PrepareOptions};
//!
//! let whole = PrepareOptions::new();                  // prepare(0, 0, true, true)
//! assert_eq!(whole.requested_range(), None);
//! let part = PrepareOptions::range(0x200, 0x1000).synchronize(false);
//! assert_eq!(part.requested_range(), Some((0x200, 0x1000)));
//! assert!(part.flushes_cache() && !part.synchronizes());
//! let quiet = CompleteOptions::new().invalidate_cache(false);
//! assert!(!quiet.invalidates_cache() && quiet.synchronizes());
//! ```

/// How to prepare a transfer (IOKit `IODMACommand::prepare(offset, length, flushCache,
/// synchronize)`).
///
/// The default prepares the whole descriptor, does the cache maintenance of a
/// non-coherent command and copies into a bounce buffer for a device that reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrepareOptions {
    range: Option<(u64, u64)>,
    flush_cache: bool,
    synchronize: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl PrepareOptions {
    /// The whole descriptor, with cache flush and synchronize.
    pub const fn new() -> Self {
        PrepareOptions {
            range: None,
            flush_cache: true,
            synchronize: true,
        }
    }

    /// `[offset, offset + length)` of the descriptor. A length of 0 is refused at prepare
    /// (IOKit reads 0 as "the whole descriptor" even with an offset, which runs past the
    /// end; ask for the whole descriptor with [`new`](Self::new)).
    pub const fn range(offset: u64, length: u64) -> Self {
        PrepareOptions {
            range: Some((offset, length)),
            flush_cache: true,
            synchronize: true,
        }
    }

    /// Whether to do a non-coherent command's cache maintenance (IOKit `flushCache`).
    #[must_use]
    pub const fn flush_cache(mut self, on: bool) -> Self {
        self.flush_cache = on;
        self
    }

    /// Whether to copy into a bounce buffer for a device that reads (IOKit
    /// `synchronize`).
    #[must_use]
    pub const fn synchronize(mut self, on: bool) -> Self {
        self.synchronize = on;
        self
    }

    /// The requested `(offset, length)`, or `None` for the whole descriptor.
    pub const fn requested_range(&self) -> Option<(u64, u64)> {
        self.range
    }

    /// Whether the cache maintenance is done.
    pub const fn flushes_cache(&self) -> bool {
        self.flush_cache
    }

    /// Whether bounce buffers are filled.
    pub const fn synchronizes(&self) -> bool {
        self.synchronize
    }
}

/// How to end a transfer (IOKit `IODMACommand::complete(invalidateCache, synchronize)`).
/// The default does both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompleteOptions {
    invalidate_cache: bool,
    synchronize: bool,
}

impl Default for CompleteOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl CompleteOptions {
    /// Invalidate caches and copy back what the device wrote.
    pub const fn new() -> Self {
        CompleteOptions {
            invalidate_cache: true,
            synchronize: true,
        }
    }

    /// Whether to invalidate a non-coherent command's caches (IOKit `invalidateCache`).
    #[must_use]
    pub const fn invalidate_cache(mut self, on: bool) -> Self {
        self.invalidate_cache = on;
        self
    }

    /// Whether to copy back from a bounce buffer (IOKit `synchronize`).
    #[must_use]
    pub const fn synchronize(mut self, on: bool) -> Self {
        self.synchronize = on;
        self
    }

    /// Whether caches are invalidated.
    pub const fn invalidates_cache(&self) -> bool {
        self.invalidate_cache
    }

    /// Whether bounce buffers are copied back.
    pub const fn synchronizes(&self) -> bool {
        self.synchronize
    }
}

/// A constraint of a [`SegmentSpec`](super::SegmentSpec) that memory can break, named in a
/// [`BounceReason`](super::BounceReason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Constraint {
    /// The segment lies (partly) outside the device's address window.
    AddressWindow,
    /// The segment is longer than `max_segment_size`.
    MaxSegmentSize,
    /// The first segment's start breaks `alignment`.
    Alignment,
    /// A later segment's start, or an earlier segment's end, breaks `internal_alignment`.
    InternalAlignment,
    /// A segment other than the last is not a multiple of `length_alignment` long.
    LengthAlignment,
    /// The segment crosses a multiple of `boundary`.
    Boundary,
    /// The transfer needs more than `max_segments` segments.
    MaxSegments,
    /// Never given as a reason any more: in mapped mode, physical runs that do not meet at
    /// IOMMU page boundaries each get IO pages of their own (several IO segments, as in
    /// IOKit) instead of a bounce. Kept so code that names it still builds.
    MapperPageJoins,
    /// The bounce pool forces every transfer through a bounce buffer.
    Forced,
    /// [`DmaCommand::force_double_buffer`](super::DmaCommand::force_double_buffer) asked
    /// for it (IOKit `kForceDoubleBuffer`).
    ForcedByCaller,
}

impl Constraint {
    /// The spec field's name (or what forced the bounce).
    pub const fn as_str(self) -> &'static str {
        match self {
            Constraint::AddressWindow => "address window",
            Constraint::MaxSegmentSize => "max_segment_size",
            Constraint::Alignment => "alignment",
            Constraint::InternalAlignment => "internal_alignment",
            Constraint::LengthAlignment => "length_alignment",
            Constraint::Boundary => "boundary",
            Constraint::MaxSegments => "max_segments",
            Constraint::MapperPageJoins => "mapper page joins",
            Constraint::Forced => "forced by the pool",
            Constraint::ForcedByCaller => "forced by the caller",
        }
    }
}

impl core::fmt::Display for Constraint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}
