//! Fault injection on the PCI bus: make the Nth configuration access, BAR access, DMA step
//! or interrupt message fail, deterministically.
//!
//! The sites and the plan work as the machine's ([`crate::fault`]): counting is per site,
//! starts at 1 when the bus is built and covers every function on the bus, and a planned
//! call fails exactly once. What "fails" means depends on where the failure lands:
//!
//! | site | one call is | what the failure does |
//! | --- | --- | --- |
//! | [`PciFaultSite::Config`] | one [`config_read`](dmakit::device::PciFunction::config_read), [`config_write`](dmakit::device::PciFunction::config_write) or [`set_bus_master`](dmakit::device::PciFunction::set_bus_master) | the call returns [`Error::Injected`](dmakit::Error::Injected) with `kIOReturnNotResponding`, and changes nothing |
//! | [`PciFaultSite::Bar`] | one load or store that a BAR decodes | the device never sees it: a load reads all ones, a store is dropped (a completion timeout) |
//! | [`PciFaultSite::Dma`] | one device read or write of memory (a queue entry, a PRP list, a data run, a completion) | the device sees a failed transfer and reports it as its hardware does; nothing is moved |
//! | [`PciFaultSite::Interrupt`] | one MSI-X message or INTx assertion sent | it is lost |
//!
//! Every injected failure is also recorded in the function's event log
//! ([`SimPciFunction::events`](super::SimPciFunction::events)).

use crate::fault::{Plan, Site};
use dmakit::IoReturn;
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

    /// The site's name, as carried by [`Error::Injected`](dmakit::Error::Injected).
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
}

impl Site for PciFaultSite {
    fn name(self) -> &'static str {
        PciFaultSite::name(self)
    }

    fn code(self) -> IoReturn {
        PciFaultSite::code(self)
    }
}

impl fmt::Display for PciFaultSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which calls fail on the bus, and how many calls each site has seen: the machine's
/// [`Plan`] over [`PciFaultSite`]s.
pub type PciFaultPlan = Plan<PciFaultSite>;

#[cfg(test)]
mod tests {
    use super::*;
    use dmakit::Error;

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
