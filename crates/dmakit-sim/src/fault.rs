//! Fault injection: make the Nth call at a site fail, deterministically.
//!
//! Real machines run out of memory, fail to pin pages and lose translations at the worst
//! moment. The simulated machine lets a test choose that moment: "fail the 3rd physical page
//! allocation" fails exactly that one, so a test can prove that every path unwinds cleanly
//! and leaks nothing. Counting is per site and starts at 1 when the machine is built.
//!
//! | site | one call is | the injected error carries the code of |
//! | --- | --- | --- |
//! | [`FaultSite::PhysAlloc`] | one physical page taken (allocation, page-in, migration) | `kIOReturnNoMemory` |
//! | [`FaultSite::Pin`] | one `wire` | `kIOReturnCannotWire` |
//! | [`FaultSite::Translate`] | one `physical_runs` | `kIOReturnVMError` |
//! | [`FaultSite::Map`] | one `map_pages` | `kIOReturnNoSpace` |
//!
//! A failure is [`Error::Injected`], whose [`io_return`](Error::io_return) is the code the
//! genuine failure would have had, so callers take the same error path. Plan failures in the
//! builder ([`MachineBuilder::fault`](crate::MachineBuilder::fault)) or at run time
//! ([`Machine::inject`](crate::Machine::inject)); [`Machine::stats`](crate::Machine::stats)
//! reports the calls seen so far, so "the 3rd page of the next allocation" is easy to say:
//!
//! ```
//! use dmakit::platform::{PageRequest, PhysicalMemory};
//! use dmakit::{Error, IoReturn};
//! use dmakit_sim::{FaultSite, MachineBuilder};
//!
//! let m = MachineBuilder::new().seed(3).build()?;
//! let before = m.stats();
//! m.inject(FaultSite::PhysAlloc, before.calls(FaultSite::PhysAlloc) + 3);
//! let e = m.allocate_pages(0x4000, &PageRequest::WIRED).unwrap_err();
//! assert!(matches!(e, Error::Injected { site: "physical page allocation", nth: 3, .. }));
//! assert_eq!(e.io_return(), IoReturn::NO_MEMORY);
//! let after = m.stats();
//! assert_eq!(after.free_pages, before.free_pages, "the two pages taken went back");
//! assert_eq!(after.allocations, before.allocations);
//! # Ok::<(), dmakit::Error>(())
//! ```

use dmakit::{Error, IoReturn};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A place where the simulated machine can be told to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultSite {
    /// One physical page taken from the free pool (each page of a multi-page allocation
    /// counts, so a failure can land in the middle of one).
    PhysAlloc,
    /// One call of [`Wiring::wire`](dmakit::platform::Wiring::wire) (pinning).
    Pin,
    /// One call of [`Wiring::physical_runs`](dmakit::platform::Wiring::physical_runs)
    /// (translation).
    Translate,
    /// One call of [`VirtualMemory::map_pages`](dmakit::platform::VirtualMemory::map_pages)
    /// (a second mapping of memory into a task).
    Map,
}

impl FaultSite {
    /// Every site.
    pub const ALL: [FaultSite; 4] = [
        FaultSite::PhysAlloc,
        FaultSite::Pin,
        FaultSite::Translate,
        FaultSite::Map,
    ];

    /// The site's name, as carried by [`Error::Injected`].
    pub const fn name(self) -> &'static str {
        match self {
            FaultSite::PhysAlloc => "physical page allocation",
            FaultSite::Pin => "pin",
            FaultSite::Translate => "translation",
            FaultSite::Map => "mapping",
        }
    }

    /// The IOKit code the genuine failure at this site would have.
    pub const fn code(self) -> IoReturn {
        match self {
            FaultSite::PhysAlloc => IoReturn::NO_MEMORY,
            FaultSite::Pin => IoReturn::CANNOT_WIRE,
            FaultSite::Translate => IoReturn::VM_ERROR,
            FaultSite::Map => IoReturn::NO_SPACE,
        }
    }
}

impl Site for FaultSite {
    fn name(self) -> &'static str {
        FaultSite::name(self)
    }

    fn code(self) -> IoReturn {
        FaultSite::code(self)
    }
}

impl fmt::Display for FaultSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A kind of place where failures can be planned: the machine's [`FaultSite`]s, the PCI
/// bus's [`PciFaultSite`](crate::pci::PciFaultSite)s.
pub trait Site: Copy + Ord + fmt::Debug {
    /// The site's name, as carried by [`Error::Injected`].
    fn name(self) -> &'static str;
    /// The IOKit code the genuine failure at this site would have.
    fn code(self) -> IoReturn;
}

/// Which calls fail, and how many calls each site has seen.
#[derive(Clone, Debug)]
pub struct Plan<S: Site> {
    fail: BTreeMap<S, BTreeSet<u64>>,
    calls: BTreeMap<S, u64>,
}

/// The machine's plan.
pub type FaultPlan = Plan<FaultSite>;

impl<S: Site> Default for Plan<S> {
    fn default() -> Self {
        Plan {
            fail: BTreeMap::new(),
            calls: BTreeMap::new(),
        }
    }
}

impl<S: Site> Plan<S> {
    /// Makes call number `nth` (1-based, counted from the machine's or bus's start) at
    /// `site` fail.
    pub fn fail(&mut self, site: S, nth: u64) {
        self.fail.entry(site).or_default().insert(nth);
    }

    /// Makes the next call at `site` fail.
    pub fn fail_next(&mut self, site: S) {
        let n = self.calls(site).saturating_add(1);
        self.fail(site, n);
    }

    /// Forgets every planned failure that has not happened yet.
    pub fn clear(&mut self) {
        self.fail.clear();
    }

    /// Calls seen so far at `site`.
    pub fn calls(&self, site: S) -> u64 {
        self.calls.get(&site).copied().unwrap_or(0)
    }

    /// Counts one call at `site`; the planned error if this one must fail.
    pub(crate) fn hit(&mut self, site: S) -> Result<(), Error> {
        let count = self.calls.entry(site).or_insert(0);
        *count = count.saturating_add(1);
        let nth = *count;
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
    fn nth_call_fails_once() {
        let mut p = FaultPlan::default();
        p.fail(FaultSite::Pin, 2);
        assert!(p.hit(FaultSite::Pin).is_ok());
        let e = p.hit(FaultSite::Pin).unwrap_err();
        assert_eq!(
            e,
            Error::Injected {
                site: "pin",
                nth: 2,
                code: IoReturn::CANNOT_WIRE
            }
        );
        assert_eq!(e.io_return(), IoReturn::CANNOT_WIRE);
        assert!(p.hit(FaultSite::Pin).is_ok());
        assert!(p.hit(FaultSite::Translate).is_ok());
        assert_eq!(p.calls(FaultSite::Pin), 3);
        p.fail_next(FaultSite::Translate);
        assert!(p.hit(FaultSite::Translate).is_err());
    }
}
