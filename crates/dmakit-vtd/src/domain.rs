//! [`VtdDomain`]: one PCI function's IO address space (a domain id, a second-level page
//! table, the function's context entry), the [`IommuHardware`] under dmakit's
//! [`IommuMapper`].

use crate::fault::source_id;
use crate::options::MapperOptions;
use crate::regs::{cap, entry};
use crate::unit::{Request, Table, Unit, TABLE};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;
use dmakit::mapper::{Access, IommuHardware, IommuMapper};
use dmakit::platform::Platform;
use dmakit::{Error, IoAddr, PageSize, PhysAddr, Result};

/// Entries per table.
const ENTRIES: u64 = 512;
/// The x86 interrupt address range: a device's write there is an interrupt message, never
/// a translated DMA access.
const INTERRUPT_RANGE: (u64, u64) = (0xFEE0_0000, 0xFF00_0000);

/// The mapper type a domain makes: dmakit's [`IommuMapper`] over the domain.
pub type VtdMapper<P> = IommuMapper<Arc<VtdDomain<P>>>;

struct State {
    /// Tables below the top one, with their level (1: leaf tables).
    tables: Vec<(u8, Table)>,
    /// Present leaf entries.
    mapped: u64,
}

/// One PCI function's DMA remapping domain on a [`Vtd`](crate::Vtd) unit.
///
/// It implements dmakit's [`IommuHardware`]: `set_entry` writes or clears a leaf entry of
/// the second-level page table (read and write permission from [`Access`]), making the
/// intermediate tables on the way, and `invalidate` invalidates the IOTLB for a range
/// (page-selective when the unit can cover it in one request, else the whole domain) and
/// waits until the unit confirms. With caching mode (`CAP.CM`, as QEMU offers it for
/// device assignment) making an entry present is followed by an invalidation too, and on a
/// unit that asks for write-buffer flushing (`CAP.RWBF`) by a flush.
///
/// [`mapper`](Self::mapper) puts dmakit's [`IommuMapper`] on top: IO address allocation,
/// and freed IO addresses kept out of reuse until an invalidation covers them.
///
/// Dropping the last handle clears the function's context entry, invalidates the context
/// cache and the domain's IOTLB entries, then frees every page table: the function faults
/// on DMA afterwards. (If the unit does not confirm the invalidation, the tables are kept
/// allocated and counted in [`VtdStats::leaked_pages`](crate::VtdStats::leaked_pages).)
pub struct VtdDomain<P: Platform + 'static> {
    unit: Arc<Unit<P>>,
    sid: u16,
    did: u16,
    top: Table,
    state: dmakit::sync::Mutex<State>,
    mapper: dmakit::sync::Mutex<Weak<VtdMapper<P>>>,
}

impl<P: Platform + 'static> VtdDomain<P> {
    pub(crate) fn attach(unit: Arc<Unit<P>>, bus: u8, devfn: u8) -> Result<Self> {
        let sid = source_id(bus, devfn);
        let top = unit.alloc_table()?;
        match unit.install(sid, top.pa) {
            Ok(did) => Ok(VtdDomain {
                unit,
                sid,
                did,
                top,
                state: dmakit::sync::Mutex::new(State {
                    tables: Vec::new(),
                    mapped: 0,
                }),
                mapper: dmakit::sync::Mutex::new(Weak::new()),
            }),
            Err((e, may_free)) => {
                if may_free {
                    unit.free_table(top);
                } else {
                    unit.leak(1);
                }
                Err(e)
            }
        }
    }

    /// The function's source id, `bus << 8 | devfn`.
    pub fn source_id(&self) -> u16 {
        self.sid
    }

    /// The domain id the unit tags this domain's cached translations with (never 0).
    pub fn domain_id(&self) -> u16 {
        self.did
    }

    /// IO address bits: addresses from 0 up to `2^address_width` can be mapped.
    pub fn address_width(&self) -> u8 {
        self.unit.width
    }

    /// Page tables of this domain (the top one included).
    pub fn table_pages(&self) -> usize {
        self.state.lock().tables.len() + 1
    }

    /// Pages currently mapped (present leaf entries).
    pub fn mapped_pages(&self) -> u64 {
        self.state.lock().mapped
    }

    /// What the page table says about `iova`, walked in software as the unit would:
    /// the physical address of that byte and the access, or `None` when nothing is mapped.
    /// (What the device sees may still differ until an invalidation, which is the point of
    /// invalidating.)
    pub fn translate(&self, iova: IoAddr) -> Result<Option<(PhysAddr, Access)>> {
        if !self.in_width(iova.0) {
            return Ok(None);
        }
        let _s = self.state.lock();
        let mut table = self.top.pa;
        for level in (1..=self.unit.levels).rev() {
            let e = self.unit.read_entry(table, index(iova.0, level))?;
            if e & (entry::R | entry::W) == 0 {
                return Ok(None);
            }
            if level == 1 {
                let access = Access {
                    read: e & entry::R != 0,
                    write: e & entry::W != 0,
                };
                return Ok(Some((
                    PhysAddr((e & entry::ADDR) | (iova.0 & 0xFFF)),
                    access,
                )));
            }
            table = PhysAddr(e & entry::ADDR);
        }
        Ok(None)
    }

    /// dmakit's [`IommuMapper`] over this domain, handing out IO addresses from
    /// `window` (see [`MapperOptions`] for what a window must be). Use it as the function's
    /// `Arc<dyn Mapper>` (`DmaView::Mapped`, `DmaCommand::builder(..).mapper(..)`).
    ///
    /// IOKit: the per-device `IOMapper` that `IOMapper::copyMapperForDevice` finds through
    /// the device's `iommu-parent` (on Intel Macs, AppleVTD's space for the device).
    ///
    /// A domain has one mapper at a time ([`Error::Busy`] while one is alive). A new mapper
    /// starts from an empty table: pages a dropped mapper left mapped are unmapped and
    /// invalidated first.
    pub fn mapper(self: &Arc<Self>, window: MapperOptions) -> Result<Arc<VtdMapper<P>>> {
        let page = TABLE;
        let end = window
            .base
            .checked_add(window.size)
            .ok_or(Error::Overflow {
                what: "VT-d mapper window",
                start: window.base,
                len: window.size,
            })?;
        if window.size == 0 {
            return Err(Error::ZeroSize {
                what: "VT-d mapper window",
            });
        }
        if window.base < page {
            return Err(Error::BadArgument {
                what:
                    "VT-d mapper window starting at IO address 0 (it must start at 4 KiB or above)",
                value: window.base,
            });
        }
        if !self.in_width(end - 1) {
            return Err(Error::OutOfBounds {
                what: "VT-d mapper window (the domain's address width)",
                offset: window.base,
                len: window.size,
                limit: self.width_limit(),
            });
        }
        if window.base < INTERRUPT_RANGE.1 && end > INTERRUPT_RANGE.0 {
            return Err(Error::BadArgument {
                what: "VT-d mapper window overlapping the interrupt range 0xFEE00000..0xFF000000",
                value: window.base,
            });
        }
        let mut slot = self.mapper.lock();
        if slot.upgrade().is_some() {
            return Err(Error::Busy {
                what: "VT-d domain",
                addr: self.did as u64,
                why: "it already has a mapper (one IO address allocator per page table)",
            });
        }
        if self.mapped_pages() > 0 {
            self.clear_all()?;
        }
        let m = if window.lazy {
            IommuMapper::new_lazy(self.clone(), window.base, window.size)?
        } else {
            IommuMapper::new(self.clone(), window.base, window.size)?
        };
        let m = Arc::new(m);
        *slot = Arc::downgrade(&m);
        Ok(m)
    }

    fn width_limit(&self) -> u64 {
        1u64.checked_shl(self.unit.width as u32).unwrap_or(u64::MAX)
    }

    fn in_width(&self, iova: u64) -> bool {
        self.unit.width >= 64 || iova >> self.unit.width == 0
    }

    /// Clears every leaf entry and invalidates the domain.
    fn clear_all(&self) -> Result<()> {
        let mut s = self.state.lock();
        let leaves: Vec<PhysAddr> = s
            .tables
            .iter()
            .filter(|(level, _)| *level == 1)
            .map(|(_, t)| t.pa)
            .collect();
        for t in leaves {
            for i in 0..ENTRIES {
                if self.unit.read_entry(t, i)? != 0 {
                    self.unit.write_entry(t, i, 0)?;
                }
            }
        }
        s.mapped = 0;
        drop(s);
        self.unit
            .invalidate(&[Request::IotlbDomain { did: self.did }])
    }

    /// The invalidation of `[iova, iova + len)`: one page-selective request for the
    /// naturally aligned block that covers it, or the whole domain when that block is
    /// larger than the unit's largest mask (or it has no page-selective invalidation).
    fn covering(&self, iova: u64, len: u64) -> Result<Option<Request>> {
        if len == 0 {
            return Ok(None);
        }
        let last = iova.checked_add(len - 1).ok_or(Error::Overflow {
            what: "VT-d IOTLB invalidation range",
            start: iova,
            len,
        })?;
        let domain = Request::IotlbDomain { did: self.did };
        if self.unit.cap & cap::PSI == 0 {
            return Ok(Some(domain));
        }
        let mut am = 0u32;
        while (iova >> 12) >> am != (last >> 12) >> am {
            am += 1;
        }
        if am > cap::mamv(self.unit.cap) {
            return Ok(Some(domain));
        }
        let shift = 12 + am;
        let addr = if shift >= 64 {
            0
        } else {
            (iova >> shift) << shift
        };
        Ok(Some(Request::IotlbPages {
            did: self.did,
            addr,
            am,
        }))
    }
}

/// The index of `iova` in a table of `level` (1: leaf).
fn index(iova: u64, level: u8) -> u64 {
    (iova >> (12 + 9 * (level as u32 - 1))) & (ENTRIES - 1)
}

impl<P: Platform + 'static> VtdDomain<P> {
    /// Checks that `iova` is a page address inside the domain's address width.
    fn check_iova(&self, iova: IoAddr) -> Result<()> {
        if !iova.is_aligned(TABLE) {
            return Err(Error::NotAligned {
                what: "VT-d IO page",
                value: iova.0,
                align: TABLE,
            });
        }
        if !self.in_width(iova.0) {
            return Err(Error::OutOfBounds {
                what: "VT-d domain (its address width)",
                offset: iova.0,
                len: TABLE,
                limit: self.width_limit(),
            });
        }
        Ok(())
    }

    /// The leaf entry mapping `iova` to `pa` with `access`, after checking the page (aligned,
    /// within the unit's host address width) and that some access is granted.
    fn leaf_entry(&self, iova: IoAddr, pa: PhysAddr, access: Access) -> Result<u64> {
        if !pa.is_aligned(TABLE) {
            return Err(Error::NotAligned {
                what: "VT-d mapped page",
                value: pa.0,
                align: TABLE,
            });
        }
        if !self.unit.reachable(pa.0) {
            return Err(Error::BadArgument {
                what: "page above the VT-d unit's host address width",
                value: pa.0,
            });
        }
        let bits = if access.read { entry::R } else { 0 } | if access.write { entry::W } else { 0 };
        if bits == 0 {
            return Err(Error::BadArgument {
                what: "VT-d mapping with neither read nor write access",
                value: iova.0,
            });
        }
        Ok(pa.0 | bits)
    }

    /// Walks from the top table to the leaf table of `iova`. A missing table is made
    /// (and linked) when `leaf` maps something; when it clears, a missing table means
    /// nothing is mapped there and the answer is `None`.
    fn leaf_table(&self, s: &mut State, iova: IoAddr, leaf: u64) -> Result<Option<PhysAddr>> {
        let mut table = self.top.pa;
        for level in (2..=self.unit.levels).rev() {
            let i = index(iova.0, level);
            let e = self.unit.read_entry(table, i)?;
            if e & (entry::R | entry::W) != 0 {
                table = PhysAddr(e & entry::ADDR);
                continue;
            }
            if leaf == 0 {
                return Ok(None);
            }
            let t = self.unit.alloc_table()?;
            // Intermediate entries grant both; the leaf decides. Units check the
            // permission at every level.
            if let Err(e) = self
                .unit
                .write_entry(table, i, t.pa.0 | entry::R | entry::W)
            {
                let _ = self.unit.write_entry(table, i, 0);
                self.unit.free_table(t);
                return Err(e);
            }
            s.tables.push((level - 1, t));
            table = t.pa;
        }
        Ok(Some(table))
    }

    /// Writes `leaf` as the entry of `iova` in the leaf table `table` and keeps the count
    /// of present leaf entries.
    fn write_leaf(&self, s: &mut State, table: PhysAddr, iova: IoAddr, leaf: u64) -> Result<()> {
        let i = index(iova.0, 1);
        let old = self.unit.read_entry(table, i)?;
        self.unit.write_entry(table, i, leaf)?;
        match (old != 0, leaf != 0) {
            (false, true) => s.mapped += 1,
            (true, false) => s.mapped -= 1,
            _ => {}
        }
        Ok(())
    }

    /// Makes a new leaf entry of `iova` visible to the unit: an invalidation of the page
    /// in caching mode (the unit may have cached "not present"), else a write-buffer
    /// flush.
    fn publish_leaf(&self, iova: IoAddr) -> Result<()> {
        if self.unit.caching_mode() {
            if let Some(r) = self.covering(iova.0, TABLE)? {
                self.unit.invalidate(&[r])?;
            }
        } else {
            self.unit.flush_write_buffer()?;
        }
        Ok(())
    }
}

impl<P: Platform + 'static> IommuHardware for VtdDomain<P> {
    fn page_size(&self) -> PageSize {
        PageSize::SIZE_4K
    }

    fn set_entry(&self, iova: IoAddr, entry: Option<(PhysAddr, Access)>) -> Result<()> {
        self.check_iova(iova)?;
        let leaf = match entry {
            None => 0,
            Some((pa, access)) => self.leaf_entry(iova, pa, access)?,
        };
        let mut s = self.state.lock();
        let Some(table) = self.leaf_table(&mut s, iova, leaf)? else {
            // Nothing is mapped below: nothing to clear.
            return Ok(());
        };
        self.write_leaf(&mut s, table, iova, leaf)?;
        drop(s);
        if leaf != 0 {
            self.publish_leaf(iova)?;
        }
        Ok(())
    }

    fn invalidate(&self, iova: IoAddr, len: u64) -> Result<()> {
        match self.covering(iova.0, len)? {
            Some(r) => self.unit.invalidate(&[r]),
            None => Ok(()),
        }
    }
}

impl<P: Platform + 'static> Drop for VtdDomain<P> {
    fn drop(&mut self) {
        let tables = core::mem::take(&mut self.state.get_mut().tables);
        if self.unit.uninstall(self.sid, self.did, true) {
            for (_, t) in tables {
                self.unit.free_table(t);
            }
            self.unit.free_table(self.top);
        } else {
            self.unit.leak(tables.len() as u64 + 1);
        }
    }
}

impl<P: Platform + 'static> fmt::Debug for VtdDomain<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VtdDomain")
            .field("source_id", &format_args!("{:#06x}", self.sid))
            .field("domain_id", &self.did)
            .field("table_pages", &self.table_pages())
            .field("mapped_pages", &self.mapped_pages())
            .finish()
    }
}
