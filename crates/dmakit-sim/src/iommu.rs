//! A simulated IOMMU: a page table, an IOTLB that keeps stale entries until invalidated, and
//! a fault log.
//!
//! Devices reach memory through [`SimIommu::device_read`] and [`SimIommu::device_write`]
//! with IO addresses. Each access looks in the IOTLB first and only on a miss walks the page
//! table (and caches the result), exactly the behaviour that makes a missing invalidation a
//! use-after-free: after a page-table entry is changed, the device keeps using the old
//! translation until [`invalidate`](dmakit::mapper::IommuHardware::invalidate). An access
//! with no translation, or without permission, is logged as an [`IommuFault`] and fails.
//!
//! Its two driver-facing steps can be made to fail, as the machine's sites can
//! ([`crate::fault`]): [`IommuFaultSite::Entry`] (one page-table entry set or cleared) and
//! [`IommuFaultSite::Invalidate`] (one IOTLB invalidation). A failed step changes nothing.
//!
//! ```
//! use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
//! use dmakit::dma::{DmaCommand, PrepareOptions};
//! use dmakit::mapper::IommuMapper;
//! use dmakit::Direction;
//! use dmakit_sim::{IommuFaultSite, MachineBuilder, SimIommu};
//! use std::sync::Arc;
//!
//! let m = Arc::new(MachineBuilder::new().build()?);
//! let iommu = Arc::new(SimIommu::new(m.clone()));
//! let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 30)?);
//! let md: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x2000, Direction::In))?);
//! let mut cmd = DmaCommand::builder(m.clone()).mapper(mapper.clone()).build()?;
//! cmd.set_memory_descriptor(md)?;
//! // The second page-table entry fails: the prepare fails and leaves nothing mapped.
//! iommu.inject(IommuFaultSite::Entry, iommu.calls(IommuFaultSite::Entry) + 2);
//! assert!(cmd.prepare(PrepareOptions::new()).is_err());
//! assert_eq!((iommu.table_entries(), mapper.usage()), (0, (0, 0)));
//! cmd.prepare(PrepareOptions::new())?; // the fault was one call only
//! assert_eq!(iommu.table_entries(), 2);
//! cmd.complete()?;
//! assert_eq!(iommu.table_entries(), 0);
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::fault::{Plan, Site};
use crate::Machine;
use dmakit::mapper::{Access, IommuHardware};
use dmakit::{Error, IoAddr, IoReturn, PageSize, PhysAddr, Result};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

/// IO page → (physical page, access). Keys are page numbers the simulator chose, not
/// input to defend against: a multiply hash is enough, and several times cheaper than
/// the standard library's SipHash on the mapping path.
type Pages = HashMap<u64, (u64, Access), BuildHasherDefault<dmakit::alloc::AddrHash>>;

/// Why a device access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// No translation for the page.
    NotPresent,
    /// The page may not be read by the device.
    ReadDenied,
    /// The page may not be written by the device.
    WriteDenied,
}

/// One logged fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuFault {
    /// The IO address accessed.
    pub iova: IoAddr,
    /// Whether the device was writing.
    pub write: bool,
    /// Why it faulted.
    pub kind: FaultKind,
}

/// A driver-facing step of the IOMMU that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IommuFaultSite {
    /// One page-table entry set or cleared
    /// ([`set_entry`](dmakit::mapper::IommuHardware::set_entry)).
    Entry,
    /// One IOTLB invalidation ([`invalidate`](dmakit::mapper::IommuHardware::invalidate)).
    Invalidate,
}

impl IommuFaultSite {
    /// Every site.
    pub const ALL: [IommuFaultSite; 2] = [IommuFaultSite::Entry, IommuFaultSite::Invalidate];
}

impl Site for IommuFaultSite {
    fn name(self) -> &'static str {
        match self {
            IommuFaultSite::Entry => "IOMMU page-table entry",
            IommuFaultSite::Invalidate => "IOTLB invalidation",
        }
    }

    fn code(self) -> IoReturn {
        IoReturn::VM_ERROR
    }
}

impl std::fmt::Display for IommuFaultSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Site::name(*self))
    }
}

#[derive(Debug, Default)]
struct State {
    plan: Plan<IommuFaultSite>,
    table: Pages,
    iotlb: Pages,
    faults: Vec<IommuFault>,
    invalidations: u64,
}

/// An IOMMU in front of a simulated machine's DRAM.
///
/// Drive it through an [`IommuMapper`](dmakit::mapper::IommuMapper), as a driver does; its
/// own [`set_entry`](dmakit::mapper::IommuHardware::set_entry) and
/// [`invalidate`](dmakit::mapper::IommuHardware::invalidate) show the hardware's hazard:
///
/// ```
/// use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
/// use dmakit::mapper::{Access, IommuHardware};
/// use dmakit::{Direction, IoAddr};
/// use dmakit_sim::{FaultKind, MachineBuilder, SimIommu};
/// use std::sync::Arc;
///
/// let m = Arc::new(MachineBuilder::new().coherent(true).build()?);
/// let iommu = SimIommu::new(m.clone());
/// let old = BufferMemoryDescriptor::with_bytes(m.clone(), b"old page", Direction::Out)?;
/// let new = BufferMemoryDescriptor::with_bytes(m.clone(), b"new page", Direction::Out)?;
/// let iova = IoAddr(0x1_0000_0000);
/// iommu.set_entry(iova, Some((old.physical_segment(0)?.addr, Access::READ)))?;
/// let mut seen = [0u8; 8];
/// iommu.device_read(iova, &mut seen)?; // the IOTLB now caches the translation
/// iommu.set_entry(iova, Some((new.physical_segment(0)?.addr, Access::READ)))?;
/// iommu.device_read(iova, &mut seen)?;
/// assert_eq!(&seen, b"old page", "stale until invalidated");
/// iommu.invalidate(iova, 0x1000)?;
/// iommu.device_read(iova, &mut seen)?;
/// assert_eq!(&seen, b"new page");
/// assert!(iommu.device_read(IoAddr(0x2_0000_0000), &mut seen).is_err());
/// assert_eq!(iommu.faults().last().map(|f| f.kind), Some(FaultKind::NotPresent));
/// # Ok::<(), dmakit::Error>(())
/// ```
#[derive(Debug)]
pub struct SimIommu {
    machine: Arc<Machine>,
    page: PageSize,
    /// A spin lock (yielding when it must wait): every driver-side call takes it once and
    /// holds it for a few table operations, and releasing it is a plain store, where a
    /// blocking mutex pays a second atomic operation on each of the mapping path's calls.
    state: spin::Mutex<State>,
}

impl SimIommu {
    /// An IOMMU with the machine's page size and an empty page table.
    pub fn new(machine: Arc<Machine>) -> Self {
        let page = machine.page();
        SimIommu {
            machine,
            page,
            state: spin::Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> spin::MutexGuard<'_, State> {
        loop {
            if let Some(g) = self.state.try_lock() {
                return g;
            }
            std::thread::yield_now();
        }
    }

    /// Faults logged so far, oldest first.
    pub fn faults(&self) -> Vec<IommuFault> {
        self.lock().faults.clone()
    }

    /// How many faults have been logged so far (cheaper than [`faults`](Self::faults)).
    pub fn fault_count(&self) -> usize {
        self.lock().faults.len()
    }

    /// IOTLB invalidations so far.
    pub fn invalidations(&self) -> u64 {
        self.lock().invalidations
    }

    /// Makes call number `nth` (1-based, from the IOMMU's creation) at `site` fail.
    pub fn inject(&self, site: IommuFaultSite, nth: u64) {
        self.lock().plan.fail(site, nth);
    }

    /// Calls seen so far at `site`.
    pub fn calls(&self, site: IommuFaultSite) -> u64 {
        self.lock().plan.calls(site)
    }

    /// Forgets planned failures that have not happened.
    pub fn clear_faults(&self) {
        self.lock().plan.clear();
    }

    /// Entries in the page table (for leak checks).
    pub fn table_entries(&self) -> usize {
        self.lock().table.len()
    }

    /// Entries currently cached in the IOTLB.
    pub fn iotlb_entries(&self) -> usize {
        self.lock().iotlb.len()
    }

    fn translate(&self, iova: u64, write: bool) -> Result<u64> {
        let key = self.page.trunc(iova);
        let mut s = self.lock();
        let hit = match s.iotlb.get(&key) {
            Some(&e) => Some(e),
            None => {
                let e = s.table.get(&key).copied();
                if let Some(e) = e {
                    s.iotlb.insert(key, e);
                }
                e
            }
        };
        let kind = match hit {
            None => FaultKind::NotPresent,
            Some((_, acc)) if write && !acc.write => FaultKind::WriteDenied,
            Some((_, acc)) if !write && !acc.read => FaultKind::ReadDenied,
            Some((pa, _)) => return Ok(pa + (iova - key)),
        };
        s.faults.push(IommuFault {
            iova: IoAddr(iova),
            write,
            kind,
        });
        Err(Error::NotMapped {
            what: "IOMMU fault (see the fault log)",
            addr: iova,
        })
    }

    fn each_page(
        &self,
        iova: IoAddr,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<()>,
    ) -> Result<()> {
        // The last byte must exist; the end may be 2^64 itself.
        iova.0
            .checked_add((len as u64).saturating_sub(1))
            .ok_or(Error::Overflow {
                what: "IOMMU device access",
                start: iova.0,
                len: len as u64,
            })?;
        let mut done = 0usize;
        while done < len {
            let a = iova.0 + done as u64;
            let n = ((self.page.bytes() - self.page.offset(a)) as usize).min(len - done);
            f(a, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// A device read of `buf.len()` bytes at IO address `iova`.
    pub fn device_read(&self, iova: IoAddr, buf: &mut [u8]) -> Result<()> {
        self.each_page(iova, buf.len(), |a, at, n| {
            let pa = self.translate(a, false)?;
            self.machine.device_read(PhysAddr(pa), &mut buf[at..at + n])
        })
    }

    /// Whether a device access of `len` bytes at `iova` would succeed (translation,
    /// permission, RAM), without moving data. A refusal is logged as the access would be.
    pub(crate) fn device_check(&self, iova: IoAddr, len: u64, write: bool) -> Result<()> {
        let len = usize::try_from(len).map_err(|_| Error::Overflow {
            what: "IOMMU device access",
            start: iova.0,
            len,
        })?;
        self.each_page(iova, len, |a, _, n| {
            let pa = self.translate(a, write)?;
            self.machine.device_check(PhysAddr(pa), n as u64)
        })
    }

    /// A device write of `data` at IO address `iova`.
    pub fn device_write(&self, iova: IoAddr, data: &[u8]) -> Result<()> {
        self.each_page(iova, data.len(), |a, at, n| {
            let pa = self.translate(a, true)?;
            self.machine.device_write(PhysAddr(pa), &data[at..at + n])
        })
    }
}

impl IommuHardware for SimIommu {
    fn page_size(&self) -> PageSize {
        self.page
    }

    fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> Result<()> {
        let key = self.page.trunc(iova.0);
        let mut s = self.lock();
        s.plan.hit(IommuFaultSite::Entry)?;
        match entry {
            Some((pa, acc)) => {
                s.table.insert(key, (self.page.trunc(pa.0), acc));
            }
            None => {
                s.table.remove(&key);
            }
        }
        Ok(())
    }

    fn invalidate(&self, iova: IoAddr, len: u64) -> Result<()> {
        let mut s = self.lock();
        s.plan.hit(IommuFaultSite::Invalidate)?;
        let start = self.page.trunc(iova.0);
        let end = iova.0.saturating_add(len);
        // Page by page when the range is smaller than the IOTLB, else one sweep.
        let pages = (end - start).div_ceil(self.page.bytes());
        if pages <= s.iotlb.len() as u64 {
            for k in (0..pages).map(|i| start + i * self.page.bytes()) {
                s.iotlb.remove(&k);
            }
        } else if !s.iotlb.is_empty() {
            s.iotlb.retain(|&k, _| k < start || k >= end);
        }
        s.invalidations += 1;
        Ok(())
    }
}
