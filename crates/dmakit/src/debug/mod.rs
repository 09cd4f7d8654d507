//! The dma-debug ledger: what Linux's `dma-debug` catches, as data a test can assert on.
//!
//! With the feature `dma-debug` on (the workspace's tests turn it on), every
//! [`DmaCommand`](crate::dma::DmaCommand) reports its preparations here and the leaf
//! descriptors report CPU copies. The ledger records `Violation`s:
//!
//! | kind | what happened |
//! | --- | --- |
//! | [`UnbalancedComplete`](ViolationKind::UnbalancedComplete) | `complete` on a command that is not prepared |
//! | [`SyncOutOfRange`](ViolationKind::SyncOutOfRange) | `synchronize_range` outside the prepared range |
//! | [`SyncWrongDirection`](ViolationKind::SyncWrongDirection) | `synchronize` in a direction the transfer was not prepared for |
//! | [`CpuAccess`](ViolationKind::CpuAccess) | `read_bytes`/`write_bytes` on memory a device owns (prepared, not synchronized) |
//! | [`SegmentBreaksSpec`](ViolationKind::SegmentBreaksSpec) | a generated segment breaks the command's `SegmentSpec` (a dmakit bug) |
//! | [`Leak`](ViolationKind::Leak) | a preparation still outstanding when its device was torn down |
//! | [`ForeignComplete`](ViolationKind::ForeignComplete) | a descriptor `complete` that would have ended a preparation a DMA command holds (refused) |
//!
//! The calls that can fail also return their error; the ledger is how the ones that cannot
//! (a `read_bytes` returns a count) are caught. `outstanding` lists live preparations of
//! a device (a [`Quarantine`](crate::dma::Quarantine)), with what each holds.
//!
//! With the feature off the hooks are empty inline functions and the commands carry no
//! bookkeeping: the ledger costs nothing.
//!
//! ```
//! # #[cfg(feature = "dma-debug")] {
//! use dmakit::debug;
//! // A test asserts that its command broke no rule:
//! assert!(debug::violations_of(u64::MAX).is_empty());
//! # }
//! ```

#[cfg(feature = "dma-debug")]
mod ledger;
#[cfg(feature = "dma-debug")]
pub(crate) use ledger::{completed, cpu_access, dropped, prepared, record, syncing};
#[cfg(feature = "dma-debug")]
#[cfg_attr(docsrs, doc(cfg(feature = "dma-debug")))]
pub use ledger::{outstanding, violations, violations_of, Outstanding, Violation};

#[cfg(not(feature = "dma-debug"))]
mod off;
#[cfg(not(feature = "dma-debug"))]
pub(crate) use off::{completed, cpu_access, dropped, prepared, record, syncing};

use core::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for a command or a device (never 0).
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What a hook reports about a preparation (built only when the ledger is on).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "dma-debug"), allow(dead_code))]
pub(crate) struct PrepInfo {
    pub command: u64,
    pub device: u64,
    pub offset: u64,
    pub length: u64,
    pub direction: crate::Direction,
    pub route: &'static str,
    pub held_bytes: u64,
}

/// What rule a `Violation` broke (see the table above).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// `complete` without a matching `prepare`.
    UnbalancedComplete,
    /// A synchronize outside the prepared range.
    SyncOutOfRange,
    /// A synchronize in a direction the transfer was not prepared for.
    SyncWrongDirection,
    /// The CPU copied to or from memory a device owns.
    CpuAccess,
    /// A generated segment breaks the command's spec.
    SegmentBreaksSpec,
    /// A preparation outstanding at its device's teardown.
    Leak,
    /// A descriptor `complete` by an owner that holds no preparation while a DMA command
    /// holds one (refused with `NotReady`; the command's preparation stays).
    ForeignComplete,
}
