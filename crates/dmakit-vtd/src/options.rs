//! [`VtdOptions`] (how to bring a unit up) and [`MapperOptions`] (the IO address window of
//! a domain's mapper).

use alloc::sync::Arc;
use core::fmt;

/// How the driver tells the unit to invalidate its caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Invalidation {
    /// Through the context command and IOTLB registers, one request at a time, each polled
    /// until the unit clears its busy bit. Every VT-d unit with a legacy mode has these
    /// registers (QEMU's `intel-iommu` included).
    #[default]
    Register,
    /// Through the invalidation queue: descriptors in memory, each batch followed by a wait
    /// descriptor whose status write the driver polls (needs `ECAP.QI`).
    Queued,
}

/// How [`Vtd::new`](crate::Vtd::new) brings a remapping unit up.
///
/// ```
/// use dmakit_vtd::{Invalidation, VtdOptions};
///
/// let opts = VtdOptions::new()
///     .poll_limit(100_000)
///     .invalidation(Invalidation::Queued)
///     .host_address_width(46);
/// assert_eq!(opts.poll_limit, 100_000);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct VtdOptions {
    /// How many times a status bit is read before a wait gives up with
    /// [`Error::Timeout`](dmakit::Error::Timeout). Each look is one register (or memory)
    /// read, followed by [`pause`](Self::pause) when one is given. Default 10 000 000.
    pub poll_limit: u64,
    /// Called between two looks at a status bit (spin, read a timer, let a simulated unit
    /// run). `None`: a spin-loop hint.
    pub pause: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Registers or the invalidation queue. Default [`Invalidation::Register`].
    pub invalidation: Invalidation,
    /// Page-table levels of every domain: 3 (39-bit IO addresses), 4 (48-bit) or 5
    /// (57-bit). `None`: the fewest the unit supports (`CAP.SAGAW`).
    pub levels: Option<u8>,
    /// The platform's host address width in bits: the DMAR table's `Host Address Width`
    /// field plus one. Page tables are allocated below it and pages above it are refused.
    /// `None`: the unit's maximum guest address width (`CAP.MGAW + 1`), which is what QEMU
    /// uses for both.
    pub host_address_width: Option<u8>,
}

impl VtdOptions {
    /// The defaults: register-based invalidation, the fewest levels, 10 000 000 looks per
    /// wait.
    pub fn new() -> Self {
        VtdOptions {
            poll_limit: 10_000_000,
            pause: None,
            invalidation: Invalidation::Register,
            levels: None,
            host_address_width: None,
        }
    }

    /// Sets [`poll_limit`](Self::poll_limit) (at least 1).
    #[must_use]
    pub fn poll_limit(mut self, looks: u64) -> Self {
        self.poll_limit = looks.max(1);
        self
    }

    /// Sets [`pause`](Self::pause).
    #[must_use]
    pub fn pause(mut self, pause: impl Fn() + Send + Sync + 'static) -> Self {
        self.pause = Some(Arc::new(pause));
        self
    }

    /// Sets [`invalidation`](Self::invalidation).
    #[must_use]
    pub fn invalidation(mut self, how: Invalidation) -> Self {
        self.invalidation = how;
        self
    }

    /// Sets [`levels`](Self::levels).
    #[must_use]
    pub fn levels(mut self, levels: u8) -> Self {
        self.levels = Some(levels);
        self
    }

    /// Sets [`host_address_width`](Self::host_address_width).
    #[must_use]
    pub fn host_address_width(mut self, bits: u8) -> Self {
        self.host_address_width = Some(bits);
        self
    }
}

impl Default for VtdOptions {
    fn default() -> Self {
        VtdOptions::new()
    }
}

impl fmt::Debug for VtdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VtdOptions")
            .field("poll_limit", &self.poll_limit)
            .field("pause", &self.pause.as_ref().map(|_| "Fn()"))
            .field("invalidation", &self.invalidation)
            .field("levels", &self.levels)
            .field("host_address_width", &self.host_address_width)
            .finish()
    }
}

/// The IO address window of a domain's mapper ([`VtdDomain::mapper`](crate::VtdDomain::mapper)).
///
/// The window must be page aligned, start above 0 (an IO address of 0 is never handed
/// out), end inside the domain's address width, and stay clear of the interrupt range
/// `0xFEE0_0000..0xFF00_0000` (a device's write there is an interrupt message, never a
/// translated access).
///
/// ```
/// use dmakit_vtd::MapperOptions;
///
/// // 1 MiB .. 256 MiB: reachable by a device with 28 address bits.
/// let w = MapperOptions::new(0x10_0000, 0x1000_0000 - 0x10_0000).lazy(true);
/// assert!(w.lazy);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct MapperOptions {
    /// First IO address of the window.
    pub base: u64,
    /// Bytes in the window.
    pub size: u64,
    /// Batch IOTLB invalidations of freed ranges (dmakit's lazy `IommuMapper`): faster
    /// unmapping, while a device may still reach freed pages until the batch is flushed.
    /// Freed IO addresses are never handed out again before their invalidation either way.
    /// Default `false` (strict).
    pub lazy: bool,
}

impl MapperOptions {
    /// A strict mapper over `[base, base + size)`.
    pub const fn new(base: u64, size: u64) -> Self {
        MapperOptions {
            base,
            size,
            lazy: false,
        }
    }

    /// Sets [`lazy`](Self::lazy).
    #[must_use]
    pub const fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }
}
