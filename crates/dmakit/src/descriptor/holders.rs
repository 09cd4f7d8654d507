//! Who holds a descriptor's preparations: [`PrepOwner`] and the per-owner counts a
//! descriptor keeps.
//!
//! IOKit counts a descriptor's wirings with one number, so any `complete` can drop a wiring
//! that somebody else took. When that somebody is a DMA command, the memory is unwired (and
//! can be freed and handed out again) while the command still gives its addresses to a
//! device. dmakit counts per owner: the caller's `prepare`/`complete` pairs are one owner, each
//! [`DmaCommand`](crate::dma::DmaCommand) is another, and a wired buffer's life-long wiring a
//! third. A `complete` can only end its own owner's preparations.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, PrepOwner};
//! use dmakit::Direction;
//! # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//! let options = BufferOptions::new(4096, Direction::In).pageable(true);
//! let buf = BufferMemoryDescriptor::new(machine, options)?;
//! buf.prepare_wiring(Direction::In)?;        // PrepOwner::CALLER holds one wiring
//! assert_eq!(buf.holders().count(PrepOwner::CALLER), 1);
//! buf.complete()?;                           // and ends it
//! assert!(!buf.holders().is_prepared());
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::{Error, Result};
use alloc_crate::vec::Vec;

/// Who holds a preparation of a descriptor.
///
/// [`PrepOwner::CALLER`] is the code that calls
/// [`prepare_wiring`](super::MemoryDescriptor::prepare_wiring) and
/// [`complete`](super::MemoryDescriptor::complete) itself. A
/// [`DmaCommand`](crate::dma::DmaCommand) prepares under an owner of its own, which only it
/// can name, so only the command can end its preparation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrepOwner(u64);

impl PrepOwner {
    /// The caller's own prepare/complete pairs.
    pub const CALLER: PrepOwner = PrepOwner(0);
    /// A wired buffer's life-long wiring (taken at creation, dropped with the buffer).
    pub(crate) const BUFFER: PrepOwner = PrepOwner(u64::MAX);

    /// The owner of a DMA command's preparations (`id` is the command's debug id, never 0).
    pub(crate) const fn command(id: u64) -> PrepOwner {
        PrepOwner(id)
    }

    /// The DMA command id behind this owner (0 for the caller).
    pub const fn id(self) -> u64 {
        if self.0 == u64::MAX {
            0
        } else {
            self.0
        }
    }

    /// Whether this owner is a DMA command.
    pub const fn is_command(self) -> bool {
        self.0 != 0 && self.0 != u64::MAX
    }
}

/// The preparations a descriptor holds, counted per owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders {
    counts: Vec<(PrepOwner, u32)>,
}

/// What [`Holders::remove`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    /// One preparation of the owner ended; others remain.
    Some,
    /// The last preparation of anybody ended: unwire now.
    Last,
    /// The owner held nothing and nobody else does either (IOKit's silent over-complete).
    Nothing,
}

impl Holders {
    /// Preparations held by `owner`.
    pub fn count(&self, owner: PrepOwner) -> u32 {
        self.counts
            .iter()
            .find(|(o, _)| *o == owner)
            .map_or(0, |&(_, n)| n)
    }

    /// Preparations held by anybody.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&(_, n)| n as u64).sum()
    }

    /// Whether anybody holds a preparation.
    pub fn is_prepared(&self) -> bool {
        !self.counts.is_empty()
    }

    /// The DMA commands holding preparations.
    pub fn commands(&self) -> impl Iterator<Item = PrepOwner> + '_ {
        self.counts
            .iter()
            .map(|&(o, _)| o)
            .filter(|o| o.is_command())
    }

    /// Every owner with the preparations it holds.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (PrepOwner, u32)> + '_ {
        self.counts.iter().copied()
    }

    /// Counts one more preparation of `owner`; a count that would overflow is refused.
    pub(crate) fn add(&mut self, owner: PrepOwner) -> Result<()> {
        match self.counts.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, n)) => {
                *n = n.checked_add(1).ok_or(Error::NoResources {
                    what: "descriptor preparation count",
                    limit: u32::MAX as u64,
                })?;
            }
            None => self.counts.push((owner, 1)),
        }
        Ok(())
    }

    /// Ends one preparation of `owner`. Ending a preparation the owner does not hold while
    /// a DMA command holds one is [`Error::NotReady`] (recorded by the dma-debug ledger);
    /// while nobody holds one it is IOKit's silent over-complete.
    pub(crate) fn remove(&mut self, owner: PrepOwner, what: &'static str) -> Result<Removed> {
        let Some(i) = self.counts.iter().position(|(o, _)| *o == owner) else {
            return match self.commands().next() {
                Some(cmd) => {
                    crate::debug::record(
                        crate::debug::ViolationKind::ForeignComplete,
                        cmd.id(),
                        || {
                            alloc_crate::format!(
                                "complete of {what} by {owner:?}, which holds no preparation; \
                                 DMA command {} holds it",
                                cmd.id()
                            )
                        },
                    );
                    Err(Error::NotReady {
                        what: "complete: the preparation belongs to a DMA command (complete the command instead)",
                        addr: cmd.id(),
                    })
                }
                None => Ok(Removed::Nothing),
            };
        };
        self.counts[i].1 -= 1;
        if self.counts[i].1 == 0 {
            self.counts.swap_remove(i);
        }
        Ok(if self.counts.is_empty() {
            Removed::Last
        } else {
            Removed::Some
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_counted_apart() {
        let mut h = Holders::default();
        let cmd = PrepOwner::command(7);
        assert!(!h.is_prepared());
        h.add(cmd).unwrap();
        h.add(PrepOwner::CALLER).unwrap();
        h.add(PrepOwner::CALLER).unwrap();
        assert_eq!(
            (h.count(cmd), h.count(PrepOwner::CALLER), h.total()),
            (1, 2, 3)
        );
        assert_eq!(h.remove(PrepOwner::CALLER, "t").unwrap(), Removed::Some);
        assert_eq!(h.remove(PrepOwner::CALLER, "t").unwrap(), Removed::Some);
        // The caller holds nothing now; the command's preparation is not the caller's to end.
        let e = h.remove(PrepOwner::CALLER, "t").unwrap_err();
        assert_eq!(e.io_return(), crate::IoReturn::NOT_READY);
        assert_eq!(h.count(cmd), 1);
        assert_eq!(h.remove(cmd, "t").unwrap(), Removed::Last);
        assert_eq!(h.remove(PrepOwner::CALLER, "t").unwrap(), Removed::Nothing);
    }

    #[test]
    fn a_buffer_wiring_does_not_make_a_caller_complete_an_error() {
        let mut h = Holders::default();
        h.add(PrepOwner::BUFFER).unwrap();
        assert_eq!(h.remove(PrepOwner::CALLER, "t").unwrap(), Removed::Nothing);
        assert_eq!(h.count(PrepOwner::BUFFER), 1);
        assert!(!PrepOwner::BUFFER.is_command() && !PrepOwner::CALLER.is_command());
        assert!(PrepOwner::command(3).is_command());
    }
}
