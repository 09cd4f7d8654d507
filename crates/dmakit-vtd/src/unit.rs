//! [`Vtd`]: one DMA remapping unit. Bring-up, the command/status handshakes, the root and
//! context tables, invalidation (registers or queue), fault records and teardown.

use crate::domain::VtdDomain;
use crate::fault::{FaultLog, FaultReason, VtdFault};
use crate::options::{Invalidation, VtdOptions};
use crate::regs::{self, cap, ccmd, ecap, entry, frcd, fsts, gcmd, iotlb, qi};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use dmakit::map::{mapped_read32, mapped_read64, mapped_write32, mapped_write64};
use dmakit::platform::{CacheOp, PageRequest, Platform, Task};
use dmakit::{Error, IoAddr, PageSize, PhysAddr, Result, VirtAddr};

/// Bytes in every table the unit walks (root, context, paging) and in the queue.
pub(crate) const TABLE: u64 = 4096;
/// Descriptors in the invalidation queue (`IQA.QS = 0`: one 4 KiB page of 16-byte
/// descriptors).
const QUEUE_ENTRIES: u32 = 256;

/// One 4 KiB page of a table: where the CPU reaches it and where the unit does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Table {
    pub va: VirtAddr,
    pub pa: PhysAddr,
}

/// What an invalidation request covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Every context-cache entry.
    ContextGlobal,
    /// The context-cache entry of one requester (tagged with its domain).
    ContextDevice { did: u16, sid: u16 },
    /// Every IOTLB entry (and paging-structure cache entry).
    IotlbGlobal,
    /// Every IOTLB entry of one domain.
    IotlbDomain { did: u16 },
    /// The naturally aligned `2^am` pages at `addr` in one domain.
    IotlbPages { did: u16, addr: u64, am: u32 },
}

/// The invalidation queue: a ring of descriptors and a page for the wait status.
struct Queue {
    ring: Table,
    status: Table,
    tail: u32,
    seq: u32,
}

/// State behind the register lock: everything that talks to the unit in sequences.
struct Hw {
    queue: Option<Queue>,
    /// The invalidation queue reported an error; nothing more is submitted.
    broken: bool,
}

/// State behind the table lock: the root and context tables and who owns which entry.
struct Tables {
    root: Option<Table>,
    context: BTreeMap<u8, Table>,
    dids: BTreeSet<u16>,
    owners: BTreeSet<u16>,
}

#[derive(Default)]
struct Counters {
    table_pages: AtomicU64,
    leaked_pages: AtomicU64,
    context: AtomicU64,
    iotlb_global: AtomicU64,
    iotlb_domain: AtomicU64,
    iotlb_pages: AtomicU64,
    write_buffer: AtomicU64,
}

/// The shared core of a [`Vtd`] and its domains.
pub(crate) struct Unit<P: Platform + 'static> {
    pub(crate) platform: P,
    base: PhysAddr,
    version: u32,
    pub(crate) cap: u64,
    ecap: u64,
    pub(crate) levels: u8,
    pub(crate) width: u8,
    pub(crate) haw: u8,
    domain_ids: u32,
    opts: VtdOptions,
    iotlb_reg: u64,
    frcd_reg: u64,
    records: u32,
    hw: dmakit::sync::Mutex<Hw>,
    tables: dmakit::sync::Mutex<Tables>,
    counters: Counters,
}

/// What the unit is and how the driver uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VtdInfo {
    /// Architecture version, `(major, minor)`.
    pub version: (u8, u8),
    /// The capability register.
    pub cap: u64,
    /// The extended capability register.
    pub ecap: u64,
    /// Page-table levels of every domain.
    pub levels: u8,
    /// IO address bits of every domain: the table's width, capped by `CAP.MGAW + 1`.
    pub address_width: u8,
    /// Physical address bits of tables and mapped pages.
    pub host_address_width: u8,
    /// `CAP.CM`: making an entry present is followed by an invalidation.
    pub caching_mode: bool,
    /// `ECAP.C`: the unit snoops CPU caches; without it every table update is written back.
    pub coherent: bool,
    /// Domain identifiers the unit has (`CAP.ND`); 0 is never used.
    pub domain_ids: u32,
    /// Fault recording registers (`CAP.NFR + 1`).
    pub fault_records: u32,
    /// How the driver invalidates.
    pub invalidation: Invalidation,
}

/// What the driver has done so far (for leak checks and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VtdStats {
    /// Table pages allocated and not freed: root, context, queue and every domain's paging
    /// tables.
    pub table_pages: u64,
    /// Pages deliberately never freed because an invalidation that had to precede the free
    /// failed (the unit might still reach them).
    pub leaked_pages: u64,
    /// Live domains.
    pub domains: usize,
    /// Context-cache invalidations.
    pub context_invalidations: u64,
    /// Global IOTLB invalidations.
    pub iotlb_global: u64,
    /// Domain-selective IOTLB invalidations.
    pub iotlb_domain: u64,
    /// Page-selective IOTLB invalidations.
    pub iotlb_pages: u64,
    /// Write-buffer flushes (`CAP.RWBF` units only).
    pub write_buffer_flushes: u64,
}

/// One Intel VT-d DMA remapping unit, driven through dmakit's platform seam.
///
/// [`Vtd::new`] takes the unit over: root table, invalidation, translation on. From then
/// on every device behind the unit reaches memory only through a domain:
/// [`domain`](Self::domain) gives a function its own page table, and
/// [`VtdDomain::mapper`] a dmakit [`Mapper`](dmakit::mapper::Mapper) over it. Dropping the
/// `Vtd` and every domain turns translation off again and frees every table.
///
/// IOKit: the `IOMapper` subclass for Intel VT-d (AppleVTD), which makes the system
/// mapper and the per-device spaces on Intel Macs.
///
/// `Vtd` is a handle: clones share the unit.
pub struct Vtd<P: Platform + 'static> {
    pub(crate) unit: Arc<Unit<P>>,
}

impl<P: Platform + 'static> Clone for Vtd<P> {
    fn clone(&self) -> Self {
        Vtd {
            unit: self.unit.clone(),
        }
    }
}

impl<P: Platform + 'static> fmt::Debug for Vtd<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vtd")
            .field("base", &self.unit.base)
            .field("info", &self.info())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<P: Platform + 'static> Vtd<P> {
    /// Takes over the remapping unit whose registers are at `reg_base` (the register base
    /// address of its DRHD structure in the ACPI DMAR table; QEMU's q35 `intel-iommu`:
    /// `0xFED9_0000`).
    ///
    /// In order: reads VER, CAP and ECAP and refuses what this driver cannot drive
    /// ([`Error::Unsupported`], naming it); turns translation (and a queue it did not set
    /// up) off if firmware left them on; installs an empty root table (legacy mode) and
    /// waits for `GSTS.RTPS`; with [`Invalidation::Queued`] sets up and enables the queue;
    /// invalidates the context cache, then the IOTLB, globally; clears old fault records;
    /// turns translation on and waits for `GSTS.TES`.
    ///
    /// From then on a device without a domain faults on every DMA (root or context entry
    /// not present), so create the domains of the devices that must keep working right
    /// away. Every wait is bounded by [`VtdOptions::poll_limit`].
    pub fn new(platform: P, reg_base: PhysAddr, opts: VtdOptions) -> Result<Self> {
        let unit = Unit::probe(platform, reg_base, opts)?;
        let unit = Arc::new(unit);
        // On failure the unit's Drop turns off what was turned on and frees what was
        // allocated.
        unit.bring_up()?;
        Ok(Vtd { unit })
    }

    /// Gives the PCI function `bus:devfn` (see [`devfn`](crate::devfn)) a domain of its own:
    /// a new domain id, an empty second-level page table, its context entry pointing at it
    /// (and the bus's context table, made on first use), then a context-cache invalidation
    /// for the function and an IOTLB invalidation for the domain id.
    ///
    /// A function has at most one domain at a time ([`Error::Busy`]). Dropping the last
    /// handle of the domain (its mapper holds one) detaches the function again: it faults
    /// on DMA afterwards.
    pub fn domain(&self, bus: u8, devfn: u8) -> Result<Arc<VtdDomain<P>>> {
        VtdDomain::attach(self.unit.clone(), bus, devfn).map(Arc::new)
    }

    /// Reads every fault record that holds a fault, oldest first, and clears it (and the
    /// overflow flag). A unit with one record (QEMU's) keeps only the first fault until it
    /// is collected; QEMU also drops further faults of a requester whose earlier fault is
    /// still recorded.
    pub fn faults(&self) -> Result<FaultLog> {
        self.unit.collect_faults()
    }

    /// What the unit is, and how the driver uses it.
    pub fn info(&self) -> VtdInfo {
        let u = &self.unit;
        VtdInfo {
            version: (((u.version >> 4) & 0xF) as u8, (u.version & 0xF) as u8),
            cap: u.cap,
            ecap: u.ecap,
            levels: u.levels,
            address_width: u.width,
            host_address_width: u.haw,
            caching_mode: u.cap & cap::CM != 0,
            coherent: u.coherent(),
            domain_ids: u.domain_ids,
            fault_records: u.records,
            invalidation: u.opts.invalidation,
        }
    }

    /// Counters: table pages, invalidations, leaks.
    pub fn stats(&self) -> VtdStats {
        self.unit.stats()
    }

    /// The register base this handle drives.
    pub fn reg_base(&self) -> PhysAddr {
        self.unit.base
    }
}

/// Checks that the platform's pages are 4 KiB and that the register base is 4 KiB aligned
/// with room for the register window after it.
fn check_page_and_base<P: Platform>(platform: &P, base: PhysAddr) -> Result<()> {
    if platform.page_size() != PageSize::SIZE_4K {
        return Err(Error::Unsupported {
            what:
                "VT-d on a platform whose pages are not 4 KiB (the unit's tables are 4 KiB pages)",
        });
    }
    if !base.is_aligned(TABLE) || base.0.checked_add(0x10_0000).is_none() {
        return Err(Error::BadArgument {
            what: "VT-d register base (4 KiB aligned)",
            value: base.0,
        });
    }
    Ok(())
}

/// Reads the version, capability and extended capability registers, in that order, and
/// refuses a base where nothing answers.
fn read_identity<P: Platform>(platform: &P, base: PhysAddr) -> Result<(u32, u64, u64)> {
    let version = mapped_read32(platform, base)?;
    let capability = mapped_read64(platform, PhysAddr(base.0 + regs::CAP))?;
    let extended = mapped_read64(platform, PhysAddr(base.0 + regs::ECAP))?;
    if version == u32::MAX || capability == u64::MAX || version == 0 {
        return Err(Error::NotAttached {
            what: "VT-d remapping unit",
            why: "nothing answers at the register base (take it from the ACPI DMAR table's DRHD)",
        });
    }
    Ok((version, capability, extended))
}

/// The second-level table depth: the one asked for if the unit supports it (CAP.SAGAW),
/// else the smallest the unit supports.
fn table_levels(asked: Option<u8>, capability: u64) -> Result<u8> {
    let sagaw = cap::sagaw(capability);
    let supported = |levels: u8| sagaw & (1 << (levels - 2)) != 0;
    match asked {
        Some(l @ 3..=5) if supported(l) => Ok(l),
        Some(3..=5) => Err(Error::Unsupported {
            what: "VT-d page-table depth the unit does not support (CAP.SAGAW)",
        }),
        Some(l) => Err(Error::BadArgument {
            what: "VT-d page-table levels (3, 4 or 5)",
            value: l as u64,
        }),
        None => match (3..=5).find(|&l| supported(l)) {
            Some(l) => Ok(l),
            None => Err(Error::Unsupported {
                what: "VT-d unit without 3-, 4- or 5-level second-level tables (CAP.SAGAW; QEMU: dma-translation=off)",
            }),
        },
    }
}

/// The domain address width (the tables' reach, capped by CAP.MGAW, at least 32 bits)
/// and the host address width (the one asked for, else CAP.MGAW's, within 32..=64).
fn address_widths(capability: u64, levels: u8, asked_haw: Option<u8>) -> Result<(u8, u8)> {
    let mgaw = cap::mgaw(capability) + 1;
    let width = (12 + 9 * levels as u32).min(mgaw) as u8;
    if width < 32 {
        return Err(Error::Unsupported {
            what: "VT-d unit with fewer than 32 guest address bits (CAP.MGAW)",
        });
    }
    let haw = asked_haw.unwrap_or(mgaw.min(64) as u8);
    if !(32..=64).contains(&haw) {
        return Err(Error::BadArgument {
            what: "VT-d host address width (32..=64 bits)",
            value: haw as u64,
        });
    }
    Ok((width, haw))
}

/// The IOTLB registers' offset (ECAP.IRO), checked to lie in the register window, after
/// checking that queued invalidation, if asked for, is there (ECAP.QI).
fn iotlb_register(extended: u64, invalidation: Invalidation) -> Result<u64> {
    let iotlb_reg = ecap::iro(extended) * 16;
    if iotlb_reg == 0 || iotlb_reg + 16 > 0x10_0000 {
        return Err(Error::Unsupported {
            what: "VT-d unit without IOTLB registers (ECAP.IRO)",
        });
    }
    if invalidation == Invalidation::Queued && extended & ecap::QI == 0 {
        return Err(Error::Unsupported {
            what: "queued invalidation on a VT-d unit without it (ECAP.QI)",
        });
    }
    Ok(iotlb_reg)
}

impl<P: Platform + 'static> Unit<P> {
    /// Reads the capabilities and checks them; touches nothing.
    fn probe(platform: P, base: PhysAddr, opts: VtdOptions) -> Result<Self> {
        check_page_and_base(&platform, base)?;
        let (version, capability, extended) = read_identity(&platform, base)?;
        let levels = table_levels(opts.levels, capability)?;
        let (width, haw) = address_widths(capability, levels, opts.host_address_width)?;
        let iotlb_reg = iotlb_register(extended, opts.invalidation)?;
        let records = cap::nfr(capability) + 1;
        let frcd_reg = cap::fro(capability) * 16;
        if frcd_reg == 0 {
            return Err(Error::Unsupported {
                what: "VT-d unit without fault recording registers (CAP.FRO)",
            });
        }
        let nd = cap::nd(capability).min(6);
        Ok(Unit {
            platform,
            base,
            version,
            cap: capability,
            ecap: extended,
            levels,
            width,
            haw,
            domain_ids: 1 << (4 + 2 * nd),
            opts,
            iotlb_reg,
            frcd_reg,
            records,
            hw: dmakit::sync::Mutex::new(Hw {
                queue: None,
                broken: false,
            }),
            tables: dmakit::sync::Mutex::new(Tables {
                root: None,
                context: BTreeMap::new(),
                dids: BTreeSet::new(),
                owners: BTreeSet::new(),
            }),
            counters: Counters::default(),
        })
    }

    fn bring_up(&self) -> Result<()> {
        let root = self.alloc_table()?;
        self.tables.lock().root = Some(root);
        let mut hw = self.hw.lock();
        let status = self.r32(regs::GSTS)?;
        if status & gcmd::TE != 0 {
            self.command(gcmd::TE, false, "VT-d translation disable (GSTS.TES)")?;
        }
        if status & gcmd::QIE != 0 {
            self.command(
                gcmd::QIE,
                false,
                "VT-d queued invalidation disable (GSTS.QIES)",
            )?;
        }
        // Legacy mode: RTADDR.TTM (bits 11:10) stays 0.
        self.w64(regs::RTADDR, root.pa.0)?;
        self.command(gcmd::SRTP, true, "VT-d set root table pointer (GSTS.RTPS)")?;
        if self.opts.invalidation == Invalidation::Queued {
            let ring = self.alloc_table()?;
            let status_page = match self.alloc_table() {
                Ok(t) => t,
                Err(e) => {
                    self.free_table(ring);
                    return Err(e);
                }
            };
            hw.queue = Some(Queue {
                ring,
                status: status_page,
                tail: 0,
                seq: 0,
            });
            self.w64(regs::IQT, 0)?;
            // QS = 0 (256 descriptors), DW = 0 (128-bit descriptors).
            self.w64(regs::IQA, ring.pa.0)?;
            self.command(
                gcmd::QIE,
                true,
                "VT-d queued invalidation enable (GSTS.QIES)",
            )?;
        }
        // A new root table: forget every cached context entry, then every translation.
        self.submit(&mut hw, &[Request::ContextGlobal, Request::IotlbGlobal])?;
        self.collect_faults_locked()?;
        self.command(gcmd::TE, true, "VT-d translation enable (GSTS.TES)")
    }

    pub(crate) fn coherent(&self) -> bool {
        self.ecap & ecap::C != 0
    }

    pub(crate) fn caching_mode(&self) -> bool {
        self.cap & cap::CM != 0
    }

    fn stats(&self) -> VtdStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VtdStats {
            table_pages: l(&c.table_pages),
            leaked_pages: l(&c.leaked_pages),
            domains: self.tables.lock().owners.len(),
            context_invalidations: l(&c.context),
            iotlb_global: l(&c.iotlb_global),
            iotlb_domain: l(&c.iotlb_domain),
            iotlb_pages: l(&c.iotlb_pages),
            write_buffer_flushes: l(&c.write_buffer),
        }
    }

    // ---- registers ------------------------------------------------------------------

    fn reg(&self, off: u64) -> PhysAddr {
        // `probe` checked that the base leaves room for every offset the driver uses.
        PhysAddr(self.base.0 + off)
    }

    fn r32(&self, off: u64) -> Result<u32> {
        mapped_read32(&self.platform, self.reg(off))
    }

    fn w32(&self, off: u64, v: u32) -> Result<()> {
        mapped_write32(&self.platform, self.reg(off), v)
    }

    fn r64(&self, off: u64) -> Result<u64> {
        mapped_read64(&self.platform, self.reg(off))
    }

    fn w64(&self, off: u64, v: u64) -> Result<()> {
        mapped_write64(&self.platform, self.reg(off), v)
    }

    /// Looks at `done` until it says yes, at most `poll_limit` times.
    fn wait(&self, what: &'static str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
        for _ in 0..self.opts.poll_limit {
            if done()? {
                return Ok(());
            }
            match &self.opts.pause {
                Some(p) => p(),
                None => core::hint::spin_loop(),
            }
        }
        Err(Error::Timeout {
            what,
            id: self.base.0,
        })
    }

    /// One global command: sets (or clears) `bit` with the other states kept, then waits
    /// until the status bit of the same position says it happened. One-shot commands
    /// (SRTP) wait for their status to be set, WBF for its status to clear.
    fn command(&self, bit: u32, on: bool, what: &'static str) -> Result<()> {
        let states = self.r32(regs::GSTS)? & gcmd::PERSISTENT;
        let value = if on { states | bit } else { states & !bit };
        self.w32(regs::GCMD, value)?;
        let want_set = on && bit != gcmd::WBF;
        self.wait(what, || Ok((self.r32(regs::GSTS)? & bit != 0) == want_set))
    }

    // ---- invalidation ---------------------------------------------------------------

    /// Invalidates as `reqs` say, in order, and returns when the unit has done all of it.
    pub(crate) fn invalidate(&self, reqs: &[Request]) -> Result<()> {
        let mut hw = self.hw.lock();
        self.submit(&mut hw, reqs)
    }

    /// Flushes the write buffer where the unit needs it (`CAP.RWBF`), so table updates are
    /// visible to it.
    pub(crate) fn flush_write_buffer(&self) -> Result<()> {
        if self.cap & cap::RWBF == 0 {
            return Ok(());
        }
        let _hw = self.hw.lock();
        self.write_buffer_locked()
    }

    fn write_buffer_locked(&self) -> Result<()> {
        if self.cap & cap::RWBF == 0 {
            return Ok(());
        }
        self.counters.write_buffer.fetch_add(1, Ordering::Relaxed);
        self.command(gcmd::WBF, true, "VT-d write buffer flush (GSTS.WBFS)")
    }

    fn count(&self, r: &Request) {
        let c = &self.counters;
        match r {
            Request::ContextGlobal | Request::ContextDevice { .. } => &c.context,
            Request::IotlbGlobal => &c.iotlb_global,
            Request::IotlbDomain { .. } => &c.iotlb_domain,
            Request::IotlbPages { .. } => &c.iotlb_pages,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn drains(&self) -> (bool, bool) {
        (self.cap & cap::DRD != 0, self.cap & cap::DWD != 0)
    }

    fn submit(&self, hw: &mut Hw, reqs: &[Request]) -> Result<()> {
        if hw.broken {
            return Err(Error::NotAttached {
                what: "VT-d invalidation queue",
                why: "the unit reported an invalidation queue error earlier; it takes no more requests",
            });
        }
        self.write_buffer_locked()?;
        match hw.queue.as_mut() {
            None => {
                for r in reqs {
                    self.count(r);
                    self.register_request(*r)?;
                }
                Ok(())
            }
            Some(q) => {
                let res = self.queued(q, reqs);
                if res.is_err() {
                    hw.broken = true;
                }
                res
            }
        }
    }

    fn register_request(&self, r: Request) -> Result<()> {
        let (dr, dw) = self.drains();
        let drain = if dr { iotlb::DR } else { 0 } | if dw { iotlb::DW } else { 0 };
        match r {
            Request::ContextGlobal | Request::ContextDevice { .. } => {
                let v = match r {
                    Request::ContextDevice { did, sid } => {
                        ccmd::ICC | ccmd::DEVICE | ((sid as u64) << 16) | did as u64
                    }
                    _ => ccmd::ICC | ccmd::GLOBAL,
                };
                self.w64(regs::CCMD, v)?;
                let mut last = v;
                self.wait("VT-d context-cache invalidation (CCMD.ICC)", || {
                    last = self.r64(regs::CCMD)?;
                    Ok(last & ccmd::ICC == 0)
                })?;
                if ccmd::caig(last) == 0 {
                    return Err(Error::Unsupported {
                        what: "VT-d context-cache invalidation the unit did not perform (CCMD.CAIG = 0)",
                    });
                }
            }
            Request::IotlbGlobal | Request::IotlbDomain { .. } | Request::IotlbPages { .. } => {
                let v = match r {
                    Request::IotlbDomain { did } => iotlb::DOMAIN | ((did as u64) << 32),
                    Request::IotlbPages { did, addr, am } => {
                        // IVA: the address, IH = 0 (paging-structure caches too), the mask.
                        self.w64(self.iotlb_reg, addr | am as u64)?;
                        iotlb::PAGE | ((did as u64) << 32)
                    }
                    _ => iotlb::GLOBAL,
                } | iotlb::IVT
                    | drain;
                let reg = self.iotlb_reg + 8;
                self.w64(reg, v)?;
                let mut last = v;
                self.wait("VT-d IOTLB invalidation (IOTLB.IVT)", || {
                    last = self.r64(reg)?;
                    Ok(last & iotlb::IVT == 0)
                })?;
                if iotlb::iaig(last) == 0 {
                    return Err(Error::Unsupported {
                        what: "VT-d IOTLB invalidation the unit did not perform (IOTLB.IAIG = 0)",
                    });
                }
            }
        }
        Ok(())
    }

    fn descriptor(&self, r: Request) -> (u64, u64) {
        let (dr, dw) = self.drains();
        let drain = if dr { qi::IOTLB_DR } else { 0 } | if dw { qi::IOTLB_DW } else { 0 };
        match r {
            Request::ContextGlobal => (qi::CONTEXT | (1 << 4), 0),
            Request::ContextDevice { did, sid } => (
                qi::CONTEXT | (3 << 4) | ((did as u64) << 16) | ((sid as u64) << 32),
                0,
            ),
            Request::IotlbGlobal => (qi::IOTLB | (1 << 4) | drain, 0),
            Request::IotlbDomain { did } => {
                (qi::IOTLB | (2 << 4) | drain | ((did as u64) << 16), 0)
            }
            Request::IotlbPages { did, addr, am } => (
                qi::IOTLB | (3 << 4) | drain | ((did as u64) << 16),
                addr | am as u64,
            ),
        }
    }

    /// Writes the descriptors and a wait descriptor, moves the tail, and polls the status
    /// the wait descriptor writes. The unit reads the queue and writes the status
    /// coherently, so no cache maintenance is needed for either.
    fn queued(&self, q: &mut Queue, reqs: &[Request]) -> Result<()> {
        q.seq = q.seq.wrapping_add(1).max(1);
        let seq = q.seq;
        self.platform.write_phys(q.status.pa, &0u32.to_le_bytes())?;
        let wait = (
            qi::WAIT | qi::WAIT_SW | qi::WAIT_FN | ((seq as u64) << 32),
            q.status.pa.0,
        );
        let mut tail = q.tail;
        for d in reqs
            .iter()
            .map(|&r| {
                self.count(&r);
                self.descriptor(r)
            })
            .chain(core::iter::once(wait))
        {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&d.0.to_le_bytes());
            bytes[8..].copy_from_slice(&d.1.to_le_bytes());
            self.platform
                .write_phys(PhysAddr(q.ring.pa.0 + tail as u64 * 16), &bytes)?;
            tail = (tail + 1) % QUEUE_ENTRIES;
        }
        q.tail = tail;
        self.w64(regs::IQT, (tail as u64) << 4)?;
        let mut failed = false;
        self.wait("VT-d queued invalidation (wait descriptor status)", || {
            let mut b = [0u8; 4];
            self.platform.read_phys(q.status.pa, &mut b)?;
            if u32::from_le_bytes(b) == seq {
                return Ok(true);
            }
            if self.r32(regs::FSTS)? & (fsts::IQE | fsts::ICE | fsts::ITE) != 0 {
                failed = true;
                return Ok(true);
            }
            Ok(false)
        })?;
        if failed {
            return Err(Error::NotAttached {
                what: "VT-d invalidation queue",
                why: "the unit reported an invalidation queue error (FSTS.IQE/ICE/ITE)",
            });
        }
        Ok(())
    }

    // ---- faults ---------------------------------------------------------------------

    fn collect_faults(&self) -> Result<FaultLog> {
        let _hw = self.hw.lock();
        self.collect_faults_locked()
    }

    fn collect_faults_locked(&self) -> Result<FaultLog> {
        let status = self.r32(regs::FSTS)?;
        let mut log = FaultLog::default();
        let first = fsts::fri(status) % self.records;
        for k in 0..self.records {
            let i = (first + k) % self.records;
            let at = self.frcd_reg + i as u64 * 16;
            let hi = self.r64(at + 8)?;
            if hi & frcd::F == 0 {
                continue;
            }
            let lo = self.r64(at)?;
            log.faults.push(VtdFault {
                source_id: frcd::source(hi),
                iova: IoAddr(lo & entry::ADDR),
                write: hi & frcd::T == 0,
                reason: FaultReason::from_code(frcd::reason(hi)),
            });
            // F is write-1-to-clear, in the record's top 32 bits.
            self.w32(at + 12, 1 << 31)?;
        }
        if status & fsts::PFO != 0 {
            log.overflow = true;
            self.w32(regs::FSTS, fsts::PFO)?;
        }
        Ok(log)
    }

    // ---- tables ---------------------------------------------------------------------

    fn phys_limit(&self) -> u64 {
        if self.haw >= 64 {
            u64::MAX
        } else {
            (1u64 << self.haw) - 1
        }
    }

    /// Whether the unit can reach the physical page at `pa`.
    pub(crate) fn reachable(&self, pa: u64) -> bool {
        pa <= self.phys_limit().saturating_sub(TABLE - 1)
    }

    /// A zeroed 4 KiB page below the host address width, written back from the caches when
    /// the unit does not snoop them.
    pub(crate) fn alloc_table(&self) -> Result<Table> {
        let req = PageRequest {
            align: TABLE,
            phys_limit: self.phys_limit(),
            phys_min: 0,
            contiguous: true,
            pageable: false,
        };
        let va = self.platform.allocate_pages(TABLE, &req)?;
        let pa = match self.table_address(va) {
            Ok(pa) => pa,
            Err(e) => {
                if self.platform.free_pages(va, TABLE).is_err() {
                    self.counters.leaked_pages.fetch_add(1, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        self.counters.table_pages.fetch_add(1, Ordering::Relaxed);
        Ok(Table { va, pa })
    }

    fn table_address(&self, va: VirtAddr) -> Result<PhysAddr> {
        let mut found = None;
        let mut runs = 0;
        self.platform
            .physical_runs(Task::KERNEL, va, TABLE, &mut |r| {
                runs += 1;
                found = Some(r);
            })?;
        let pa = match found {
            Some(r) if runs == 1 && r.len >= TABLE => r.addr,
            _ => {
                return Err(Error::Internal {
                    what: "a contiguous 4 KiB page came back in pieces",
                })
            }
        };
        if !pa.is_aligned(TABLE) || !self.reachable(pa.0) {
            return Err(Error::NoSuitableMemory {
                what: "VT-d table page",
                requested: TABLE,
                align: TABLE,
                limit: self.phys_limit(),
                contiguous: true,
            });
        }
        if !self.coherent() {
            self.platform.cache_phys(CacheOp::Clean, pa, TABLE)?;
        }
        Ok(pa)
    }

    pub(crate) fn free_table(&self, t: Table) {
        if self.platform.free_pages(t.va, TABLE).is_err() {
            self.counters.leaked_pages.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.table_pages.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts `n` table pages as deliberately leaked (an invalidation that had to come
    /// before their free failed).
    pub(crate) fn leak(&self, n: u64) {
        self.counters.leaked_pages.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn read_entry(&self, table: PhysAddr, index: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.platform
            .read_phys(PhysAddr(table.0 + index * 8), &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes one 8-byte entry (one store), then writes it back from the caches if the
    /// unit does not snoop them.
    pub(crate) fn write_entry(&self, table: PhysAddr, index: u64, value: u64) -> Result<()> {
        let at = PhysAddr(table.0 + index * 8);
        self.platform.write_phys(at, &value.to_le_bytes())?;
        if !self.coherent() {
            self.platform.cache_phys(CacheOp::Clean, at, 8)?;
        }
        Ok(())
    }

    // ---- context entries ------------------------------------------------------------

    /// Points the context entry of `sid` at the table `top` under a new domain id, makes
    /// it visible (context-cache and IOTLB invalidation) and returns the domain id. Makes
    /// the bus's context table on first use.
    ///
    /// On failure, also says whether `top` may be freed: not when the entry was written
    /// and clearing it again could not be confirmed by the unit.
    pub(crate) fn install(
        &self,
        sid: u16,
        top: PhysAddr,
    ) -> core::result::Result<u16, (Error, bool)> {
        let safe = |e: Error| (e, true);
        let (bus, devfn) = ((sid >> 8) as u8, sid as u8);
        let mut t = self.tables.lock();
        if t.owners.contains(&sid) {
            return Err(safe(Error::Busy {
                what: "VT-d context entry",
                addr: sid as u64,
                why: "the function already has a domain (drop it first)",
            }));
        }
        let did = self.free_domain_id(&t).map_err(safe)?;
        let root = t
            .root
            .ok_or(Error::Internal {
                what: "VT-d unit without a root table",
            })
            .map_err(safe)?;
        let (context, new_root_entry) = self.bus_context(&mut t, root, bus).map_err(safe)?;
        let aw = self.levels as u64 - 2;
        let at = devfn as u64 * 2;
        let written = self
            .write_entry(context.pa, at + 1, entry::context_hi(aw, did))
            .and_then(|_| self.write_entry(context.pa, at, top.0 | entry::P));
        t.dids.insert(did);
        t.owners.insert(sid);
        let ctx = if new_root_entry {
            Request::ContextGlobal
        } else {
            Request::ContextDevice { did, sid }
        };
        let res = written.and_then(|_| self.invalidate(&[ctx, Request::IotlbDomain { did }]));
        if let Err(e) = res {
            drop(t);
            // Undo: the function is left without a context entry; the domain id stays
            // reserved (the unit may hold entries tagged with it).
            let cleared = self.uninstall(sid, did, false);
            return Err((e, cleared));
        }
        Ok(did)
    }

    /// The lowest domain id (from 1) not in use.
    fn free_domain_id(&self, t: &Tables) -> Result<u16> {
        (1..self.domain_ids)
            .map(|d| d as u16)
            .find(|d| !t.dids.contains(d))
            .ok_or(Error::NoResources {
                what: "VT-d domain ids",
                limit: self.domain_ids as u64 - 1,
            })
    }

    /// The context table of `bus`, and whether it is new: made on first use and linked
    /// from the root table (upper half, then lower half with the present bit). A failed
    /// link is cleared again and the table freed.
    fn bus_context(&self, t: &mut Tables, root: Table, bus: u8) -> Result<(Table, bool)> {
        if let Some(c) = t.context.get(&bus) {
            return Ok((*c, false));
        }
        let c = self.alloc_table()?;
        let set = self
            .write_entry(root.pa, bus as u64 * 2 + 1, 0)
            .and_then(|_| self.write_entry(root.pa, bus as u64 * 2, c.pa.0 | entry::P));
        if let Err(e) = set {
            // Nothing points at it (the present bit is the last thing written).
            let _ = self.write_entry(root.pa, bus as u64 * 2, 0);
            self.free_table(c);
            return Err(e);
        }
        t.context.insert(bus, c);
        Ok((c, true))
    }

    /// Clears the context entry of `sid`, invalidates the context cache and the domain's
    /// IOTLB entries. Returns whether the unit confirmed it (only then may the domain's
    /// tables be freed).
    pub(crate) fn uninstall(&self, sid: u16, did: u16, release_did: bool) -> bool {
        let (bus, devfn) = ((sid >> 8) as u8, sid as u8);
        let mut t = self.tables.lock();
        let Some(context) = t.context.get(&bus).copied() else {
            return false;
        };
        let at = devfn as u64 * 2;
        // The present bit goes first.
        let ok = self
            .write_entry(context.pa, at, 0)
            .and_then(|_| self.write_entry(context.pa, at + 1, 0))
            .and_then(|_| {
                self.invalidate(&[
                    Request::ContextDevice { did, sid },
                    Request::IotlbDomain { did },
                ])
            })
            .is_ok();
        t.owners.remove(&sid);
        if ok && release_did {
            t.dids.remove(&did);
        }
        ok
    }
}

impl<P: Platform + 'static> Drop for Unit<P> {
    /// Translation off, the queue off, then every table freed. If the unit does not confirm
    /// turning translation off, the tables stay allocated (it may still walk them).
    fn drop(&mut self) {
        let mut queue = self.hw.get_mut().queue.take();
        let status = self.r32(regs::GSTS).unwrap_or(u32::MAX);
        let mut off = true;
        if status & gcmd::TE != 0 {
            off = self
                .command(gcmd::TE, false, "VT-d translation disable (GSTS.TES)")
                .is_ok();
        }
        let queue_on = off && queue.is_some() && status & gcmd::QIE != 0;
        if queue_on
            && self
                .command(
                    gcmd::QIE,
                    false,
                    "VT-d queued invalidation disable (GSTS.QIES)",
                )
                .is_err()
            && queue.take().is_some()
        {
            // The unit may still fetch descriptors: keep the queue's pages.
            self.leak(2);
        }
        let t = self.tables.get_mut();
        let mut pages: alloc::vec::Vec<Table> =
            core::mem::take(&mut t.context).into_values().collect();
        pages.extend(t.root.take());
        if let Some(q) = queue {
            pages.push(q.ring);
            pages.push(q.status);
        }
        if off {
            for p in pages {
                self.free_table(p);
            }
        } else {
            self.leak(pages.len() as u64);
        }
    }
}
