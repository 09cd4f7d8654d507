//! [`Wiring`] on the host: counted `mlock`, and physical runs from pagemap.
//!
//! Wiring works on any memory of this process — the host's allocations, a `Vec` the caller
//! owns, a mapping of its own — because `mlock` and pagemap only look at page tables and
//! never dereference anything. Counts are per page and process-wide (see the ledger): the
//! first wiring of a page `mlock`s it, the last unwiring `munlock`s it, and a failed wire
//! leaves every page as it was.
//!
//! ## What a wired page promises here
//!
//! `mlock` makes a page resident and keeps it from being swapped out, so its frame number
//! is meaningful. It does **not** pin the frame: the kernel may still *migrate* a locked page
//! (compaction, NUMA balancing, memory hot-remove) and give it a new physical address. A
//! device that was handed the old address would then write into someone else's memory.
//! Physical mode is therefore for learning, testing and machines where nothing migrates; a
//! real device should use IOVA mode through VFIO, whose pinning prevents migration.

use crate::hints;
use crate::host::Host;
use crate::ledger::{ledger, WireFailure};
use dmakit::platform::{Task, Wiring};
use dmakit::{Error, PhysAddr, PhysRange, Result, VirtAddr};

impl Wiring for Host {
    /// Wires every page touching `[va, va + len)`: counted, all or nothing.
    ///
    /// Errors: `NotMapped` for a page nothing is mapped at; `CannotWire` naming
    /// `RLIMIT_MEMLOCK` and its value when the limit stops the lock; `NotWritable` for a
    /// writable wiring of a read-only second mapping.
    fn wire(&self, task: Task, va: VirtAddr, len: u64, writable: bool) -> Result<()> {
        Self::check_task(task)?;
        let (first, n) = self.pages(va.0, len, "wire")?;
        if n == 0 {
            return Ok(());
        }
        let psize = self.page().bytes();
        let mut s = self.lock();
        if let Some(p) = s.lent_in(first, n * psize, false) {
            return Err(Host::lent_busy(p));
        }
        if writable
            && s.second_mapping(va.0, len)
                .is_some_and(|m| !m.mapping.writable())
        {
            return Err(Error::NotWritable {
                what: "read-only mapping (wired for a device to write)",
                addr: va.0,
            });
        }
        ledger()
            .wire(first, n, psize)
            .map_err(|failure| match failure {
                WireFailure::Unmapped(page) => Error::NotMapped {
                    what: "this process (nothing to wire)",
                    addr: page.max(va.0),
                },
                WireFailure::Lock(page, errno) => {
                    hints::mlock_error(page, first + n * psize - page, errno)
                }
            })?;
        for i in 0..n {
            *s.wires.entry(first + i * psize).or_insert(0) += 1;
        }
        *s.wired_ranges.entry((va.0, len)).or_insert(0) += 1;
        Ok(())
    }

    /// Drops one wiring of every page touching `[va, va + len)`. Every page must hold a
    /// wiring made through this host, else `BadArgument` and nothing changes.
    fn unwire(&self, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        Self::check_task(task)?;
        let (first, n) = self.pages(va.0, len, "unwire")?;
        let psize = self.page().bytes();
        let mut s = self.lock();
        if let Some(p) = (0..n)
            .map(|i| first + i * psize)
            .find(|p| !s.wires.contains_key(p))
        {
            return Err(Error::BadArgument {
                what: "unwire of a page this host has not wired",
                value: p,
            });
        }
        for i in 0..n {
            let p = first + i * psize;
            if let Some(c) = s.wires.get_mut(&p) {
                *c -= 1;
                if *c == 0 {
                    s.wires.remove(&p);
                }
            }
        }
        ledger().unwire(first, n, psize);
        if n != 0 {
            s.forget_wiring(va.0, len, psize);
        }
        Ok(())
    }

    /// The physical runs behind `[va, va + len)`, adjacent frames coalesced.
    ///
    /// Every page must be wired (by a wiring, or as part of a wired allocation), else
    /// `NotReady`; without pagemap frame numbers, `NotPermitted` with the fix. See the
    /// module docs for what `mlock` does not promise.
    fn physical_runs(
        &self,
        task: Task,
        va: VirtAddr,
        len: u64,
        run: &mut dyn FnMut(PhysRange),
    ) -> Result<()> {
        Self::check_task(task)?;
        let (first, n) = self.pages(va.0, len, "translation")?;
        if n == 0 {
            return Ok(());
        }
        let psize = self.page().bytes();
        let end = va.0 + len;
        {
            let l = ledger();
            if let Some(p) = (0..n).map(|i| first + i * psize).find(|&p| !l.is_locked(p)) {
                return Err(Error::NotReady {
                    what: "translation of unwired memory (prepare it first)",
                    addr: p.max(va.0),
                });
            }
        }
        let frames = self.pagemap()?.frames(first, n)?;
        let mut runs: Vec<PhysRange> = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let vpage = first + i as u64 * psize;
            let start = vpage.max(va.0);
            let stop = (vpage + psize).min(end);
            let r = PhysRange::new(PhysAddr(frame.0 + (start - vpage)), stop - start);
            match runs.last_mut() {
                Some(last) if last.abuts(&r) => last.len += r.len,
                _ => runs.push(r),
            }
        }
        runs.into_iter().for_each(run);
        Ok(())
    }
}
