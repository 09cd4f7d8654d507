//! Fault injection: make the Nth call at a site fail, deterministically.
//!
//! Real machines run out of memory, fail to pin pages and lose translations at the worst
//! moment. The simulated machine lets a test choose that moment: "fail the 3rd physical page
//! allocation" fails exactly that one, so a test can prove that every path unwinds cleanly
//! and leaks nothing. Counting is per site and starts at 1 when the machine is built.

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
}

impl FaultSite {
    /// Every site.
    pub const ALL: [FaultSite; 3] = [FaultSite::PhysAlloc, FaultSite::Pin, FaultSite::Translate];

    /// The site's name, as carried by [`Error::Injected`].
    pub const fn name(self) -> &'static str {
        match self {
            FaultSite::PhysAlloc => "physical page allocation",
            FaultSite::Pin => "pin",
            FaultSite::Translate => "translation",
        }
    }

    /// The IOKit code the genuine failure at this site would have.
    pub const fn code(self) -> IoReturn {
        match self {
            FaultSite::PhysAlloc => IoReturn::NO_MEMORY,
            FaultSite::Pin => IoReturn::CANNOT_WIRE,
            FaultSite::Translate => IoReturn::VM_ERROR,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FaultSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which calls fail, and how many calls each site has seen.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    fail: BTreeMap<FaultSite, BTreeSet<u64>>,
    calls: [u64; 3],
}

impl FaultPlan {
    /// Makes call number `nth` (1-based, counted from the machine's start) at `site` fail.
    pub fn fail(&mut self, site: FaultSite, nth: u64) {
        self.fail.entry(site).or_default().insert(nth);
    }

    /// Makes the next call at `site` fail.
    pub fn fail_next(&mut self, site: FaultSite) {
        let n = self.calls[site.index()] + 1;
        self.fail(site, n);
    }

    /// Forgets every planned failure that has not happened yet.
    pub fn clear(&mut self) {
        self.fail.clear();
    }

    /// Calls seen so far at `site`.
    pub fn calls(&self, site: FaultSite) -> u64 {
        self.calls[site.index()]
    }

    /// Counts one call at `site`; the planned error if this one must fail.
    pub(crate) fn hit(&mut self, site: FaultSite) -> Result<(), Error> {
        let i = site.index();
        self.calls[i] += 1;
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
