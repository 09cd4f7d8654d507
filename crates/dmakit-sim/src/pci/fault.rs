//! Fault injection on the PCI bus: make the Nth configuration access, BAR access, DMA step
//! or interrupt message fail, deterministically.
//!
//! The sites and the plan work as the machine's ([`crate::fault`]): counting is per site,
//! starts at 1 when the bus is built and covers every function on the bus, and a planned
//! call fails exactly once. What "fails" means depends on where the failure lands:
//!
//! | site | one call is | what the failure does |
//! | --- | --- | --- |
//! | [`PciFaultSite::Config`] | one [`config_read`](dmakit::device::PciFunction::config_read), [`config_write`](dmakit::device::PciFunction::config_write) or [`set_bus_master`](dmakit::device::PciFunction::set_bus_master) | the call returns [`Error::Injected`] with `kIOReturnNotResponding`, and changes nothing |
//! | [`PciFaultSite::Bar`] | one load or store that a BAR decodes | the device never sees it: a load reads all ones, a store is dropped (a completion timeout) |
//! | [`PciFaultSite::Dma`] | one device read or write of memory (a queue entry, a PRP list, a data run, a completion) | the device sees a failed transfer and reports it as its hardware does; nothing is moved |
//! | [`PciFaultSite::Interrupt`] | one MSI-X message or INTx assertion sent | it is lost |
//!
//! Every injected failure is also recorded in the function's event log
//! ([`SimPciFunction::events`](super::SimPciFunction::events)).

use dmakit::{Error, IoReturn};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// kIOReturnNotResponding: what a configuration access to a device that does not answer
/// returns on IOKit.
pub const NOT_RESPONDING: IoReturn = IoReturn(0xE000_02ED);

/// A place on the simulated PCI bus where a failure can be planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PciFaultSite {
    /// One configuration-space access.
    Config,
    /// One load or store decoded by a BAR.
    Bar,
    /// One DMA step of a device: a read or write of memory.
    Dma,
    /// One interrupt message (MSI-X) or assertion (INTx).
    Interrupt,
}

impl PciFaultSite {
    /// Every site.
    pub const ALL: [PciFaultSite; 4] = [
        PciFaultSite::Config,
        PciFaultSite::Bar,
        PciFaultSite::Dma,
        PciFaultSite::Interrupt,
    ];

    /// The site's name, as carried by [`Error::Injected`].
    pub const fn name(self) -> &'static str {
        match self {
            PciFaultSite::Config => "PCI configuration access",
            PciFaultSite::Bar => "PCI BAR access",
            PciFaultSite::Dma => "PCI device DMA",
            PciFaultSite::Interrupt => "PCI interrupt message",
        }
    }

    /// The IOKit code the genuine failure would have.
    pub const fn code(self) -> IoReturn {
        match self {
            PciFaultSite::Config | PciFaultSite::Bar => NOT_RESPONDING,
            PciFaultSite::Dma => IoReturn::VM_ERROR,
            PciFaultSite::Interrupt => IoReturn::TIMEOUT,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for PciFaultSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which calls fail, and how many calls each site has seen.
#[derive(Clone, Debug, Default)]
pub struct PciFaultPlan {
    fail: BTreeMap<PciFaultSite, BTreeSet<u64>>,
    calls: [u64; PciFaultSite::ALL.len()],
}

impl PciFaultPlan {
    /// Makes call number `nth` (1-based, counted from the bus's start) at `site` fail.
    pub fn fail(&mut self, site: PciFaultSite, nth: u64) {
        self.fail.entry(site).or_default().insert(nth);
    }

    /// Makes the next call at `site` fail.
    pub fn fail_next(&mut self, site: PciFaultSite) {
        let n = self.calls[site.index()].saturating_add(1);
        self.fail(site, n);
    }

    /// Forgets every planned failure that has not happened yet.
    pub fn clear(&mut self) {
        self.fail.clear();
    }

    /// Calls seen so far at `site`.
    pub fn calls(&self, site: PciFaultSite) -> u64 {
        self.calls[site.index()]
    }

    /// Counts one call at `site`; the planned error if this one must fail.
    pub(crate) fn hit(&mut self, site: PciFaultSite) -> Result<(), Error> {
        let i = site.index();
        self.calls[i] = self.calls[i].saturating_add(1);
        let nth = self.calls[i];
        if self.fail.get_mut(&site).is_some_and(|s| s.remove(&nth)) {
            return Err(Error::Injected {
                site: site.name(),
                nth,
                code: site.code(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_call_fails_once_per_site() {
        let mut p = PciFaultPlan::default();
        p.fail(PciFaultSite::Dma, 2);
        assert!(p.hit(PciFaultSite::Dma).is_ok());
        assert_eq!(
            p.hit(PciFaultSite::Dma).unwrap_err(),
            Error::Injected {
                site: "PCI device DMA",
                nth: 2,
                code: IoReturn::VM_ERROR
            }
        );
        assert!(p.hit(PciFaultSite::Dma).is_ok());
        assert!(p.hit(PciFaultSite::Bar).is_ok());
        p.fail_next(PciFaultSite::Config);
        assert_eq!(
            p.hit(PciFaultSite::Config).unwrap_err().io_return(),
            NOT_RESPONDING
        );
        assert_eq!(p.calls(PciFaultSite::Dma), 3);
        p.fail_next(PciFaultSite::Bar);
        p.clear();
        assert!(p.hit(PciFaultSite::Bar).is_ok());
    }
}
