//! [`SimPciFunction`]: one function on the simulated bus, implementing the core's
//! [`PciFunction`].

use super::bus::BusCore;
use super::config::{self, ConfigSpace, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, SPACE_BYTES};
use super::dma::{DeviceContext, DmaFault, DmaPath, DomainMapper, Outbox};
use super::fault::PciFaultSite;
use super::model::PciDeviceModel;
use super::msix::{MsixTable, MSI_ADDRESS};
use crate::SimIommu;
use dmakit::device::{
    BarInfo, DmaView, InterruptKind, InterruptSink, Interrupts, PciAddress, PciFunction, PciId,
};
use dmakit::platform::Width;
use dmakit::{Error, PhysAddr, Result};
use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// How many events a function keeps (the oldest go first).
pub const EVENT_LOG_LEN: usize = 1024;

/// Counters of what a function did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PciFunctionStats {
    /// Configuration reads and writes that reached the function.
    pub config_accesses: u64,
    /// BAR loads that reached the device (the MSI-X table included).
    pub bar_reads: u64,
    /// BAR stores that reached the device.
    pub bar_writes: u64,
    /// Successful DMA reads of memory.
    pub dma_reads: u64,
    /// Successful DMA writes of memory.
    pub dma_writes: u64,
    /// Bytes read by DMA.
    pub dma_bytes_read: u64,
    /// Bytes written by DMA.
    pub dma_bytes_written: u64,
    /// DMA attempts refused because bus mastering was off.
    pub dma_refused: u64,
    /// DMA attempts that faulted (IOMMU, master abort, injected).
    pub dma_faults: u64,
    /// Interrupts delivered to a sink.
    pub interrupts_delivered: u64,
    /// MSI-X signals that found their vector masked and set its pending bit.
    pub interrupts_pended: u64,
    /// Interrupts lost (MSI-X off, no route, bus mastering off, injected).
    pub interrupts_lost: u64,
}

/// Something a function recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PciEvent {
    /// A DMA step failed and moved nothing (or, for a write that faulted part-way, not
    /// everything).
    Dma {
        /// Device address.
        addr: u64,
        /// Bytes.
        len: u64,
        /// A write of memory.
        write: bool,
        /// Why.
        fault: DmaFault,
    },
    /// A configuration access failed on purpose ([`PciFaultSite::Config`]).
    ConfigLost {
        /// Offset.
        offset: u16,
        /// A store.
        write: bool,
    },
    /// A BAR access never reached the device ([`PciFaultSite::Bar`]).
    BarLost {
        /// BAR number.
        bar: u8,
        /// Offset in the BAR.
        offset: u64,
        /// A store.
        write: bool,
    },
    /// An interrupt was not delivered.
    InterruptLost {
        /// The vector (0 for INTx).
        vector: u32,
        /// Why.
        why: &'static str,
    },
}

/// The counters and the event log.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    pub stats: PciFunctionStats,
    events: VecDeque<PciEvent>,
}

impl Activity {
    pub fn record(&mut self, e: PciEvent) {
        if self.events.len() == EVENT_LOG_LEN {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }
}

/// Where a vector is routed.
enum Route {
    /// An MSI-X entry programmed with this message data.
    Msix { data: u32 },
    /// The INTx pin.
    Intx { sink: Arc<dyn InterruptSink> },
}

struct State {
    config: ConfigSpace,
    msix: Option<MsixTable>,
    model: Box<dyn PciDeviceModel>,
    activity: Activity,
    routes: BTreeMap<u32, Route>,
}

/// One function on a [`SimPciBus`](super::SimPciBus): configuration space, BARs decoded in
/// the bus's MMIO aperture, MSI-X or INTx delivery to the sinks a driver registers, DMA
/// through its IOMMU domain or bypassing it, and the device model behind it.
///
/// Every access is serialised by the function's lock; interrupt sinks run after it is
/// released (but still inside the access that raised them, as from an interrupt handler:
/// a sink must only signal).
pub struct SimPciFunction {
    address: PciAddress,
    id: PciId,
    name: String,
    core: Arc<BusCore>,
    path: DmaPath,
    state: Mutex<State>,
}

/// What a BAR access found.
pub(crate) enum Decoded {
    /// No BAR of this function decodes the address.
    No,
    /// Decoded; the value read (stores: 0).
    Yes(u64),
}

impl SimPciFunction {
    pub(crate) fn new(
        address: PciAddress,
        core: Arc<BusCore>,
        path: DmaPath,
        model: Box<dyn PciDeviceModel>,
    ) -> Result<Self> {
        let desc = model.config();
        desc.validate()?;
        let name = model.name().to_string();
        Ok(SimPciFunction {
            address,
            id: desc.id,
            name,
            core,
            path,
            state: Mutex::new(State {
                config: ConfigSpace::new(desc),
                msix: desc.msix.map(|m| MsixTable::new(m.vectors)),
                model,
                activity: Activity::default(),
                routes: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counters.
    pub fn stats(&self) -> PciFunctionStats {
        self.lock().activity.stats.clone()
    }

    /// The last [`EVENT_LOG_LEN`] events, oldest first.
    pub fn events(&self) -> Vec<PciEvent> {
        self.lock().activity.events.iter().copied().collect()
    }

    /// Forgets the event log.
    pub fn clear_events(&self) {
        self.lock().activity.events.clear();
    }

    /// The function's IOMMU (its domain's page table, IOTLB and fault log), if its DMA goes
    /// through one.
    pub fn iommu(&self) -> Option<Arc<SimIommu>> {
        match &self.path {
            DmaPath::Iommu { iommu, .. } => Some(iommu.clone()),
            DmaPath::Bypass { .. } => None,
        }
    }

    /// The mapper of its IOMMU domain (the one [`dma`](PciFunction::dma) returns), typed,
    /// for leak checks ([`IommuMapper::usage`](dmakit::mapper::IommuMapper::usage)).
    pub fn mapper(&self) -> Option<Arc<DomainMapper>> {
        match &self.path {
            DmaPath::Iommu { mapper, .. } => Some(mapper.clone()),
            DmaPath::Bypass { .. } => None,
        }
    }

    /// A whole-dword configuration store with no fault injection and no counting (the
    /// bus placing BARs at enumeration).
    pub(crate) fn config_write_raw(&self, offset: u16, value: u32) {
        self.lock().config.write_dword(offset, value, u32::MAX);
    }

    /// Whether MSI-X vector `vector`'s pending bit is set.
    pub fn msix_pending(&self, vector: u32) -> bool {
        self.lock()
            .msix
            .as_ref()
            .is_some_and(|t| t.is_pending(vector as usize))
    }

    /// Runs `f` on the device model, typed as `M`, with a [`DeviceContext`] (DMA and
    /// interrupts as from a register access). `None` if the model is not an `M`. This is
    /// how a model's own handle (the NVMe controller's `step`, a store accessor) reaches it.
    pub fn with_device<M: PciDeviceModel, R>(
        &self,
        f: impl FnOnce(&mut M, &mut DeviceContext<'_>) -> R,
    ) -> Option<R> {
        let mut g = self.lock();
        let mut outbox = Outbox::default();
        let r = {
            let State {
                config,
                model,
                activity,
                ..
            } = &mut *g;
            let m = (&mut **model as &mut dyn Any).downcast_mut::<M>()?;
            let mut ctx = DeviceContext {
                path: &self.path,
                core: &self.core,
                bus_master: config.bus_master(),
                activity,
                outbox: &mut outbox,
            };
            f(m, &mut ctx)
        };
        let sinks = self.settle(&mut g, outbox);
        drop(g);
        raise(sinks);
        Some(r)
    }

    /// A BAR access at physical address `pa`, if one of this function's BARs decodes it.
    pub(crate) fn bar_access(&self, pa: u64, width: Width, store: Option<u64>) -> Decoded {
        let mut g = self.lock();
        let Some((bar, offset)) = g.config.decode(pa, width.bytes()) else {
            return Decoded::No;
        };
        if self.core.hit(PciFaultSite::Bar).is_err() {
            g.activity.record(PciEvent::BarLost {
                bar,
                offset,
                write: store.is_some(),
            });
            return Decoded::Yes(if store.is_some() { 0 } else { u64::MAX });
        }
        match store {
            Some(_) => g.activity.stats.bar_writes += 1,
            None => g.activity.stats.bar_reads += 1,
        }
        let mut outbox = Outbox::default();
        let (value, unmasked) = match msix_access(&mut g, bar, offset, width, store) {
            Some(done) => done,
            None => {
                let value = self.model_access(&mut g, bar, offset, width, store, &mut outbox);
                (value, false)
            }
        };
        let mut sinks = self.settle(&mut g, outbox);
        if unmasked {
            sinks.extend(self.flush_pending(&mut g));
        }
        drop(g);
        raise(sinks);
        Decoded::Yes(value & width.max_value())
    }

    /// A BAR access the device model handles: the value it reads, 0 for a store.
    fn model_access(
        &self,
        g: &mut State,
        bar: u8,
        offset: u64,
        width: Width,
        store: Option<u64>,
        outbox: &mut Outbox,
    ) -> u64 {
        let State {
            config,
            model,
            activity,
            ..
        } = g;
        let mut ctx = DeviceContext {
            path: &self.path,
            core: &self.core,
            bus_master: config.bus_master(),
            activity,
            outbox,
        };
        match store {
            None => model.bar_read(&mut ctx, bar, offset, width),
            Some(v) => {
                model.bar_write(&mut ctx, bar, offset, width, v);
                0
            }
        }
    }

    /// Turns what a handler produced into sinks to raise (after the lock is released).
    fn settle(&self, g: &mut State, outbox: Outbox) -> Vec<Arc<dyn InterruptSink>> {
        let mut sinks = Vec::new();
        if outbox.master_abort {
            g.config.master_abort = true;
        }
        if let Some(level) = outbox.intx {
            let rising = level && !g.config.intx_level;
            g.config.intx_level = level;
            if rising && !g.config.intx_disabled() {
                sinks.extend(self.send_intx(g));
            }
        }
        for v in outbox.signals {
            sinks.extend(self.signal(g, v));
        }
        sinks
    }

    fn lost(g: &mut State, vector: u32, why: &'static str) {
        g.activity.stats.interrupts_lost += 1;
        g.activity.record(PciEvent::InterruptLost { vector, why });
    }

    fn send_intx(&self, g: &mut State) -> Option<Arc<dyn InterruptSink>> {
        if self.core.hit(PciFaultSite::Interrupt).is_err() {
            Self::lost(g, 0, "injected fault");
            return None;
        }
        match g.routes.get(&0) {
            Some(Route::Intx { sink }) => {
                g.activity.stats.interrupts_delivered += 1;
                Some(sink.clone())
            }
            _ => {
                Self::lost(g, 0, "INTx has no route (enable_interrupt)");
                None
            }
        }
    }

    /// An MSI-X signal of vector `v`.
    fn signal(&self, g: &mut State, v: u32) -> Option<Arc<dyn InterruptSink>> {
        let Some(cap) = g.config.msix else {
            Self::lost(g, v, "the function has no MSI-X");
            return None;
        };
        if v >= cap.vectors as u32 {
            Self::lost(g, v, "no such MSI-X vector");
            return None;
        }
        if !cap.enable {
            Self::lost(g, v, "MSI-X is disabled");
            return None;
        }
        let masked =
            cap.function_mask || g.msix.as_ref().is_none_or(|t| t.entries[v as usize].masked);
        if masked {
            if let Some(t) = g.msix.as_mut() {
                t.set_pending(v as usize, true);
            }
            g.activity.stats.interrupts_pended += 1;
            return None;
        }
        self.send_message(g, v)
    }

    /// Sends vector `v`'s message (its entry is unmasked).
    fn send_message(&self, g: &mut State, v: u32) -> Option<Arc<dyn InterruptSink>> {
        if !g.config.bus_master() {
            Self::lost(g, v, "bus mastering is off (a message is a memory write)");
            return None;
        }
        if self.core.hit(PciFaultSite::Interrupt).is_err() {
            Self::lost(g, v, "injected fault");
            return None;
        }
        let e = g.msix.as_ref()?.entries[v as usize];
        match self.core.message(e.address, e.data) {
            Some(sink) => {
                g.activity.stats.interrupts_delivered += 1;
                Some(sink)
            }
            None => {
                Self::lost(g, v, "no interrupt controller answers the message");
                None
            }
        }
    }

    /// Sends every pending vector that is unmasked now (MSI-X enabled, no function mask).
    fn flush_pending(&self, g: &mut State) -> Vec<Arc<dyn InterruptSink>> {
        let live = g.config.msix.is_some_and(|c| c.enable && !c.function_mask);
        if !live {
            return Vec::new();
        }
        let due = g.msix.as_ref().map(|t| t.deliverable()).unwrap_or_default();
        let mut sinks = Vec::new();
        for v in due {
            if let Some(t) = g.msix.as_mut() {
                t.set_pending(v, false);
            }
            sinks.extend(self.send_message(g, v as u32));
        }
        sinks
    }

    fn check_config(offset: u16, width: Width) -> Result<()> {
        let n = width.bytes();
        if n > 4 {
            return Err(Error::BadArgument {
                what: "configuration access width (1, 2 or 4 bytes)",
                value: n,
            });
        }
        dmakit::descriptor::check_range(
            "configuration space",
            offset as u64,
            n,
            SPACE_BYTES as u64,
        )?;
        if !(offset as u64).is_multiple_of(n) {
            return Err(Error::NotAligned {
                what: "configuration access (naturally aligned)",
                value: offset as u64,
                align: n,
            });
        }
        Ok(())
    }

    fn config_fault(&self, offset: u16, write: bool) -> Result<()> {
        self.core.hit(PciFaultSite::Config).inspect_err(|_| {
            self.lock()
                .activity
                .record(PciEvent::ConfigLost { offset, write });
        })
    }

    /// Read-modify-write of configuration space, delivering what it unmasks.
    fn config_store(&self, offset: u16, width: Width, value: u32) {
        let mut g = self.lock();
        g.activity.stats.config_accesses += 1;
        let base = offset & !3;
        let shift = (offset - base) as u32 * 8;
        let bits = if width.bytes() == 4 {
            u32::MAX
        } else {
            ((1u32 << (width.bytes() * 8)) - 1) << shift
        };
        let old = g.config.read_dword(base);
        let merged = (old & !bits) | ((value << shift) & bits);
        let effect = g.config.write_dword(base, merged, bits);
        let mut sinks = Vec::new();
        if effect.msix_unmasked {
            sinks.extend(self.flush_pending(&mut g));
        }
        if effect.intx_enabled && g.config.intx_level {
            sinks.extend(self.send_intx(&mut g));
        }
        drop(g);
        raise(sinks);
    }

    /// Removes every route (and its interrupt-controller entry).
    fn drop_routes(&self, g: &mut State) {
        for (_, r) in std::mem::take(&mut g.routes) {
            if let Route::Msix { data } = r {
                self.core.unroute(data);
            }
        }
    }
}

/// A BAR access that falls in the function's MSI-X table or pending-bit array, if it has
/// them and it does: the value read (0 for a store), and whether a table store unmasked a
/// vector (whose pending message must then be sent).
fn msix_access(
    g: &mut State,
    bar: u8,
    offset: u64,
    width: Width,
    store: Option<u64>,
) -> Option<(u64, bool)> {
    let (Some(spec), Some(table)) = (g.config.desc.msix, g.msix.as_mut()) else {
        return None;
    };
    let in_range =
        |b: u8, o: u32, len: u64| b == bar && offset >= o as u64 && offset < o as u64 + len;
    if in_range(spec.table_bar, spec.table_offset, spec.table_len()) {
        let o = offset - spec.table_offset as u64;
        return Some(match store {
            None => (table.read_table(o, width), false),
            Some(v) => (0, table.write_table(o, width, v).is_some()),
        });
    }
    if in_range(spec.pba_bar, spec.pba_offset, spec.pba_len()) {
        let o = offset - spec.pba_offset as u64;
        return Some(match store {
            None => (table.read_pba(o, width), false),
            Some(_) => (0, false),
        });
    }
    None
}

fn raise(sinks: Vec<Arc<dyn InterruptSink>>) {
    for s in sinks {
        s.raise();
    }
}

impl PciFunction for SimPciFunction {
    fn address(&self) -> PciAddress {
        self.address
    }

    fn id(&self) -> PciId {
        self.id
    }

    /// Reads configuration space (4 KiB; see [`config`] for the registers).
    fn config_read(&self, offset: u16, width: Width) -> Result<u32> {
        Self::check_config(offset, width)?;
        self.config_fault(offset, false)?;
        let mut g = self.lock();
        g.activity.stats.config_accesses += 1;
        let base = offset & !3;
        let dword = g.config.read_dword(base);
        let v = dword >> ((offset - base) * 8);
        Ok(match width.bytes() {
            1 => v & 0xFF,
            2 => v & 0xFFFF,
            _ => v,
        })
    }

    /// Writes configuration space: read-only bits keep their value, BARs keep the bits
    /// below their size clear, RW1C bits clear where a one is written.
    fn config_write(&self, offset: u16, width: Width, value: u32) -> Result<()> {
        Self::check_config(offset, width)?;
        self.config_fault(offset, true)?;
        self.config_store(offset, width, value);
        Ok(())
    }

    fn bar(&self, index: u8) -> Result<BarInfo> {
        let g = self.lock();
        let (base, spec) = g.config.bar(index as usize).ok_or(Error::BadArgument {
            what:
                "BAR number (not a memory BAR of this function, or the upper half of a 64-bit one)",
            value: index as u64,
        })?;
        Ok(BarInfo {
            index,
            base: PhysAddr(base),
            len: spec.size,
            prefetchable: spec.prefetchable,
        })
    }

    fn interrupts(&self) -> Interrupts {
        let g = self.lock();
        match (g.config.msix, g.config.desc.intx) {
            (Some(m), _) => Interrupts {
                kind: Some(InterruptKind::MsiX),
                vectors: m.vectors as u32,
            },
            (None, true) => Interrupts {
                kind: Some(InterruptKind::Intx),
                vectors: 1,
            },
            (None, false) => Interrupts::default(),
        }
    }

    /// MSI-X: programs table entry `vector` with a message the bus's interrupt controller
    /// routes to `sink`, unmasks it and enables MSI-X (a pending vector is delivered at
    /// once). INTx (vector 0): routes the pin to `sink` and clears INTx disable. The sink is
    /// held until [`disable_interrupt`](PciFunction::disable_interrupt) or
    /// [`reset`](PciFunction::reset).
    fn enable_interrupt(&self, vector: u32, sink: Arc<dyn InterruptSink>) -> Result<()> {
        let mut g = self.lock();
        let bad = Error::BadArgument {
            what: "interrupt vector (the function has fewer)",
            value: vector as u64,
        };
        let mut sinks = Vec::new();
        match (g.config.msix, g.config.desc.intx) {
            (Some(cap), _) => {
                if vector >= cap.vectors as u32 {
                    return Err(bad);
                }
                if let Some(Route::Msix { data }) = g.routes.remove(&vector) {
                    self.core.unroute(data);
                }
                let data = self.core.route(sink);
                if let Some(t) = g.msix.as_mut() {
                    let e = &mut t.entries[vector as usize];
                    e.address = MSI_ADDRESS;
                    e.data = data;
                    e.masked = false;
                }
                g.routes.insert(vector, Route::Msix { data });
                if let Some(c) = g.config.msix.as_mut() {
                    c.enable = true;
                }
                sinks.extend(self.flush_pending(&mut g));
            }
            (None, true) => {
                if vector != 0 {
                    return Err(bad);
                }
                g.routes.insert(0, Route::Intx { sink });
                g.config.command &= !COMMAND_INTX_DISABLE;
                if g.config.intx_level {
                    sinks.extend(self.send_intx(&mut g));
                }
            }
            (None, false) => {
                return Err(Error::Unsupported {
                    what: "interrupts on a function with neither MSI-X nor INTx",
                })
            }
        }
        drop(g);
        raise(sinks);
        Ok(())
    }

    /// Masks the vector's entry (MSI-X) and forgets its route.
    fn disable_interrupt(&self, vector: u32) -> Result<()> {
        let mut g = self.lock();
        let vectors = match (g.config.msix, g.config.desc.intx) {
            (Some(c), _) => c.vectors as u32,
            (None, true) => 1,
            (None, false) => 0,
        };
        if vector >= vectors {
            return Err(Error::BadArgument {
                what: "interrupt vector (the function has fewer)",
                value: vector as u64,
            });
        }
        if let Some(Route::Msix { data }) = g.routes.remove(&vector) {
            self.core.unroute(data);
        }
        if let Some(t) = g.msix.as_mut() {
            t.entries[vector as usize].masked = true;
        }
        Ok(())
    }

    fn dma(&self) -> DmaView {
        self.path.view()
    }

    /// Sets or clears the command register's bus-master bit (a configuration write, so a
    /// [`PciFaultSite::Config`] failure lands here too).
    fn set_bus_master(&self, on: bool) -> Result<()> {
        self.config_fault(config::COMMAND, true)?;
        let command = self.lock().config.command;
        let new = if on {
            command | COMMAND_BUS_MASTER
        } else {
            command & !COMMAND_BUS_MASTER
        };
        self.config_store(config::COMMAND, Width::W16, new as u32);
        Ok(())
    }

    /// A function-level reset: the device model and configuration space go back to their
    /// reset state, except the BAR addresses and memory decoding, which the platform
    /// restores (as Linux does around a reset); bus mastering, MSI-X and every interrupt
    /// route are off.
    fn reset(&self) -> Result<()> {
        let mut g = self.lock();
        self.drop_routes(&mut g);
        g.config.reset_keeping_bars();
        let vectors = g.config.msix.map(|m| m.vectors);
        g.msix = vectors.map(MsixTable::new);
        g.model.reset();
        Ok(())
    }
}

impl std::fmt::Debug for SimPciFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPciFunction")
            .field("address", &format_args!("{}", self.address))
            .field("name", &self.name)
            .field("vendor", &format_args!("{:#06x}", self.id.vendor))
            .field("device", &format_args!("{:#06x}", self.id.device))
            .field("class", &format_args!("{:#08x}", self.id.class))
            .finish()
    }
}
