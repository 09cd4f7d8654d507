//! [`SimPciBus`]: the host bridge's memory aperture, BAR placement, the interrupt
//! controller's MSI routes, fault injection, and the core's [`PciBus`].

use super::dma::{DmaMode, DmaPath};
use super::fault::{PciFaultPlan, PciFaultSite};
use super::function::{Decoded, SimPciFunction};
use super::model::{DeviceConfig, PciDeviceModel};
use super::msix::MSI_ADDRESS;
use crate::mmio::{MmioDevice, SharedDevice};
use crate::Machine;
use dmakit::device::{InterruptSink, PciAddress, PciBus, PciFunction};
use dmakit::platform::Width;
use dmakit::{Error, PhysAddr, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

/// Where [`SimPciBus::new`] opens its memory aperture: `[3 GiB, 3.5 GiB)`, below the DMA
/// engine's windows and the interrupt controller, above the default RAM.
pub const APERTURE_BASE: u64 = 0xC000_0000;
/// Bytes of the default aperture.
pub const APERTURE_LEN: u64 = 0x2000_0000;

/// What the bus shares with its functions: the fault plan and the interrupt controller.
pub(crate) struct BusCore {
    faults: Mutex<PciFaultPlan>,
    routes: Mutex<Routes>,
    stray: AtomicU64,
    unclaimed: AtomicU64,
}

#[derive(Default)]
struct Routes {
    next: u32,
    sinks: HashMap<u32, Arc<dyn InterruptSink>>,
}

impl BusCore {
    fn faults(&self) -> MutexGuard<'_, PciFaultPlan> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hit(&self, site: PciFaultSite) -> Result<()> {
        self.faults().hit(site)
    }

    /// A new message-data value that reaches `sink`.
    pub fn route(&self, sink: Arc<dyn InterruptSink>) -> u32 {
        let mut r = self.routes();
        // Data values are never reused while live; 2^32 routes wrap onto free ones.
        loop {
            r.next = r.next.wrapping_add(1);
            let d = r.next;
            if let std::collections::hash_map::Entry::Vacant(e) = r.sinks.entry(d) {
                e.insert(sink);
                return d;
            }
        }
    }

    pub fn unroute(&self, data: u32) {
        self.routes().sinks.remove(&data);
    }

    /// The sink a message `(address, data)` reaches, if any (else it is counted as stray).
    pub fn message(&self, address: u64, data: u32) -> Option<Arc<dyn InterruptSink>> {
        let hit = if address >> 20 == MSI_ADDRESS >> 20 {
            self.routes().sinks.get(&data).cloned()
        } else {
            None
        };
        if hit.is_none() {
            self.stray.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }
}

type FunctionList = RwLock<Vec<Arc<SimPciFunction>>>;

/// The MMIO window of the aperture: each access goes to the function whose BAR decodes it;
/// one nobody decodes is a master abort (loads read all ones, stores vanish).
struct Aperture {
    base: u64,
    functions: Weak<FunctionList>,
    core: Weak<BusCore>,
}

impl Aperture {
    fn access(&self, offset: u64, width: Width, store: Option<u64>) -> u64 {
        let pa = self.base.saturating_add(offset);
        if let Some(list) = self.functions.upgrade() {
            let functions: Vec<_> = list.read().unwrap_or_else(|p| p.into_inner()).clone();
            for f in functions {
                if let Decoded::Yes(v) = f.bar_access(pa, width, store) {
                    return v;
                }
            }
        }
        if let Some(core) = self.core.upgrade() {
            core.unclaimed.fetch_add(1, Ordering::Relaxed);
        }
        u64::MAX
    }
}

impl MmioDevice for Aperture {
    fn name(&self) -> &str {
        "pci"
    }

    fn read(&mut self, offset: u64, width: Width) -> u64 {
        self.access(offset, width, None)
    }

    fn write(&mut self, offset: u64, width: Width, value: u64) {
        self.access(offset, width, Some(value));
    }
}

/// Where a new function goes and how its DMA reaches memory; `None` fields take the bus's
/// defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionConfig {
    /// Device number (0..=31); default: the next free one from 1.
    pub device: Option<u8>,
    /// Function number (0..=7); default 0.
    pub function: u8,
    /// DMA path; default: the bus's ([`SimPciBusBuilder::dma`]).
    pub dma: Option<DmaMode>,
}

impl FunctionConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// At device number `device`.
    pub fn device(mut self, device: u8) -> Self {
        self.device = Some(device);
        self
    }

    /// As function number `function`.
    pub fn function(mut self, function: u8) -> Self {
        self.function = function;
        self
    }

    /// With this DMA path.
    pub fn dma(mut self, mode: DmaMode) -> Self {
        self.dma = Some(mode);
        self
    }
}

/// The description of a [`SimPciBus`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until built"]
pub struct SimPciBusBuilder {
    machine: Arc<Machine>,
    aperture: (u64, u64),
    segment: u16,
    bus: u8,
    dma: DmaMode,
    faults: PciFaultPlan,
}

impl SimPciBusBuilder {
    /// The memory aperture BARs are placed in (page aligned, outside RAM and other
    /// windows). Default [`APERTURE_BASE`], [`APERTURE_LEN`].
    pub fn aperture(mut self, base: u64, len: u64) -> Self {
        self.aperture = (base, len);
        self
    }

    /// The PCI segment (domain) number. Default 0.
    pub fn segment(mut self, segment: u16) -> Self {
        self.segment = segment;
        self
    }

    /// The bus number. Default 0.
    pub fn bus(mut self, bus: u8) -> Self {
        self.bus = bus;
        self
    }

    /// The default DMA path of new functions. Default [`DmaMode::DEFAULT_IOMMU`]: every
    /// function in an IOMMU domain of its own.
    pub fn dma(mut self, mode: DmaMode) -> Self {
        self.dma = mode;
        self
    }

    /// Plans a failure of call `nth` at `site` (see [`super::fault`]).
    pub fn fault(mut self, site: PciFaultSite, nth: u64) -> Self {
        self.faults.fail(site, nth);
        self
    }

    /// Opens the aperture on the machine.
    pub fn build(self) -> Result<SimPciBus> {
        let (base, len) = self.aperture;
        let page = self.machine.page().bytes();
        if !base.is_multiple_of(page) || !len.is_multiple_of(page) {
            return Err(Error::NotAligned {
                what: "PCI aperture (page aligned)",
                value: base | len,
                align: page,
            });
        }
        let functions: Arc<FunctionList> = Arc::new(RwLock::new(Vec::new()));
        let core = Arc::new(BusCore {
            faults: Mutex::new(self.faults),
            routes: Mutex::new(Routes::default()),
            stray: AtomicU64::new(0),
            unclaimed: AtomicU64::new(0),
        });
        let aperture: SharedDevice = Arc::new(Mutex::new(Aperture {
            base,
            functions: Arc::downgrade(&functions),
            core: Arc::downgrade(&core),
        }));
        self.machine.add_mmio(PhysAddr(base), len, aperture)?;
        Ok(SimPciBus {
            machine: self.machine,
            core,
            functions,
            aperture: (base, len),
            next_bar: Mutex::new(base),
            segment: self.segment,
            bus: self.bus,
            dma: self.dma,
        })
    }
}

/// A simulated PCI bus on a [`Machine`]: the core's [`PciBus`].
///
/// The bus opens one MMIO window on the machine, its memory aperture, and decodes every
/// access inside it as a host bridge does: the function whose enabled BAR covers the
/// address gets it (so `mapped_read32(&*machine, bar.base + offset)` reaches the device's
/// registers, and a BAR the driver moves is decoded at its new address). Functions added
/// to the bus get their BARs placed in the aperture and memory decoding on, as firmware
/// leaves them; bus mastering is off until the driver turns it on.
///
/// ```
/// use std::sync::Arc;
/// use dmakit::device::{PciBus, PciFunction, PciMatch};
/// use dmakit::map::mapped_read32;
/// use dmakit::PhysAddr;
/// use dmakit_sim::edu::{SimEdu, EDU_DEVICE, EDU_VENDOR};
/// use dmakit_sim::pci::SimPciBus;
/// use dmakit_sim::MachineBuilder;
///
/// let m = Arc::new(MachineBuilder::new().build()?);
/// let bus = SimPciBus::new(m.clone())?;
/// SimEdu::builder().attach(&bus)?;
/// let edu = bus.find(&PciMatch::ids(EDU_VENDOR, EDU_DEVICE))?;
/// let bar0 = edu.bar(0)?;
/// assert_eq!(mapped_read32(&*m, PhysAddr(bar0.base.0))?, 0x0100_00ed);
/// # Ok::<(), dmakit::Error>(())
/// ```
pub struct SimPciBus {
    machine: Arc<Machine>,
    core: Arc<BusCore>,
    functions: Arc<FunctionList>,
    aperture: (u64, u64),
    next_bar: Mutex<u64>,
    segment: u16,
    bus: u8,
    dma: DmaMode,
}

impl SimPciBus {
    /// A bus with the default aperture, every function in an IOMMU domain of its own.
    pub fn new(machine: Arc<Machine>) -> Result<Self> {
        Self::builder(machine).build()
    }

    /// The description of a bus on `machine`, to adjust before [`build`](SimPciBusBuilder::build).
    pub fn builder(machine: Arc<Machine>) -> SimPciBusBuilder {
        SimPciBusBuilder {
            machine,
            aperture: (APERTURE_BASE, APERTURE_LEN),
            segment: 0,
            bus: 0,
            dma: DmaMode::default(),
            faults: PciFaultPlan::default(),
        }
    }

    /// The machine.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The aperture's physical base and length.
    pub fn aperture(&self) -> (PhysAddr, u64) {
        (PhysAddr(self.aperture.0), self.aperture.1)
    }

    fn list(&self) -> Vec<Arc<SimPciFunction>> {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Plugs `model` in: a function at the next free device number (or where `config`
    /// says), its BARs placed in the aperture with memory decoding on.
    pub fn add(
        &self,
        model: Box<dyn PciDeviceModel>,
        config: FunctionConfig,
    ) -> Result<Arc<SimPciFunction>> {
        let taken: Vec<PciAddress> = self.list().iter().map(|f| f.address()).collect();
        let address = self.new_address(&taken, config.device, config.function)?;
        let path = DmaPath::new(&self.machine, config.dma.unwrap_or(self.dma))?;
        let desc = model.config();
        let f = Arc::new(SimPciFunction::new(
            address,
            self.core.clone(),
            path,
            model,
        )?);
        self.place_bars(&f, &desc)?;
        let mut list = self.functions.write().unwrap_or_else(|p| p.into_inner());
        list.push(f.clone());
        list.sort_by_key(|f| f.address());
        Ok(f)
    }

    /// The address of a new function: at `device`, or the lowest device number whose
    /// `function` is free; refuses numbers out of range and an address already `taken`.
    fn new_address(
        &self,
        taken: &[PciAddress],
        device: Option<u8>,
        function: u8,
    ) -> Result<PciAddress> {
        let device = match device {
            Some(d) => d,
            None => first_free_device(taken, function)?,
        };
        if device > 31 || function > 7 {
            return Err(Error::BadArgument {
                what: "PCI device (0..=31) or function (0..=7) number",
                value: device.max(function) as u64,
            });
        }
        let address = PciAddress {
            segment: self.segment,
            bus: self.bus,
            device,
            function,
        };
        if taken.contains(&address) {
            return Err(Error::RangeBusy {
                what: "PCI address (a function is already there)",
                start: device as u64,
                len: 1,
            });
        }
        Ok(address)
    }

    /// Places `f`'s BARs (as `desc` describes them) in the aperture after those placed
    /// before, as firmware does at enumeration, and turns memory decoding on.
    fn place_bars(&self, f: &SimPciFunction, desc: &DeviceConfig) -> Result<()> {
        let mut next = self.next_bar.lock().unwrap_or_else(|p| p.into_inner());
        let (places, at) = bar_places(desc, *next, self.aperture)?;
        for (i, base) in places {
            let lo = super::config::BAR0 + 4 * i as u16;
            f.config_write_raw(lo, base as u32);
            if desc.bars[i].is_some_and(|s| s.bits64) {
                f.config_write_raw(lo + 4, (base >> 32) as u32);
            }
        }
        f.config_write_raw(super::config::COMMAND, super::config::COMMAND_MEMORY as u32);
        *next = at;
        Ok(())
    }

    /// The function at `address`.
    pub fn function(&self, address: PciAddress) -> Option<Arc<SimPciFunction>> {
        self.list().into_iter().find(|f| f.address() == address)
    }

    /// Makes call number `nth` (1-based, from the bus's start) at `site` fail.
    pub fn inject(&self, site: PciFaultSite, nth: u64) {
        self.core.faults().fail(site, nth);
    }

    /// Makes the next call at `site` fail.
    pub fn inject_next(&self, site: PciFaultSite) {
        self.core.faults().fail_next(site);
    }

    /// Forgets planned failures that have not happened.
    pub fn clear_faults(&self) {
        self.core.faults().clear();
    }

    /// Calls seen so far at `site`.
    pub fn calls(&self, site: PciFaultSite) -> u64 {
        self.core.faults().calls(site)
    }

    /// MSI-X messages that reached no route (a table entry the driver programmed wrongly).
    pub fn stray_messages(&self) -> u64 {
        self.core.stray.load(Ordering::Relaxed)
    }

    /// Aperture accesses no BAR decoded (master aborts: loads read all ones).
    pub fn unclaimed_accesses(&self) -> u64 {
        self.core.unclaimed.load(Ordering::Relaxed)
    }
}

/// The lowest device number from 1 where `function` is not `taken`.
fn first_free_device(taken: &[PciAddress], function: u8) -> Result<u8> {
    (1..32u8)
        .find(|d| {
            !taken
                .iter()
                .any(|a| a.device == *d && a.function == function)
        })
        .ok_or(Error::NoResources {
            what: "PCI device numbers on the bus",
            limit: 32,
        })
}

/// Where each of `desc`'s BARs goes (by BAR index), each aligned to its size, from `at` on
/// inside `aperture` (base, length); and the address after the last one.
fn bar_places(
    desc: &DeviceConfig,
    mut at: u64,
    aperture: (u64, u64),
) -> Result<(Vec<(usize, u64)>, u64)> {
    let end = aperture.0 + aperture.1;
    let mut places = Vec::new();
    for (i, bar) in desc.bars.iter().enumerate() {
        let Some(spec) = bar else { continue };
        let base = at
            .checked_next_multiple_of(spec.size)
            .filter(|b| b.checked_add(spec.size).is_some_and(|e| e <= end))
            .ok_or(Error::NoSpace {
                what: "PCI aperture",
                requested: spec.size,
                align: spec.size,
                free: end.saturating_sub(at),
            })?;
        places.push((i, base));
        at = base + spec.size;
    }
    Ok((places, at))
}

impl PciBus for SimPciBus {
    fn functions(&self) -> Vec<Arc<dyn PciFunction>> {
        self.list()
            .into_iter()
            .map(|f| f as Arc<dyn PciFunction>)
            .collect()
    }
}

impl std::fmt::Debug for SimPciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPciBus")
            .field(
                "aperture",
                &format_args!("{:#x}+{:#x}", self.aperture.0, self.aperture.1),
            )
            .field("functions", &self.list())
            .finish()
    }
}
