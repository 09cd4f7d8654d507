//! [`VfioFunction`]: a PCI function opened through VFIO, as the device seam's
//! [`PciFunction`] (IOKit's `IOPCIDevice` provider).
//!
//! It puts together what the rest of this module does one piece at a time:
//!
//! | seam | here |
//! | --- | --- |
//! | `config_read` / `config_write` | `pread`/`pwrite` of the VFIO config region ([`VfioDevice`]) |
//! | `bar` | the BAR `mmap`ed and registered with the [`Host`] on first use ([`Bar`]), kept for the function's life, so `mapped_read32(&*host, info.base)` reaches the register |
//! | `interrupts`, `enable_interrupt` | MSI-X (else MSI) through one eventfd per vector (`VFIO_DEVICE_SET_IRQS`), delivered by one thread to each vector's sink |
//! | `dma` | [`DmaView::Mapped`] with the container's [`VfioMapper`] |
//! | `set_bus_master`, `reset` | the command register; `VFIO_DEVICE_RESET` |
//!
//! **Vectors are enabled all at once.** Before Linux 6.5, VFIO cannot add MSI-X vectors to
//! a running set: the first `VFIO_DEVICE_SET_IRQS` fixes how many there are, and later calls
//! may only change vectors below that count. So the first
//! [`enable_interrupt`](PciFunction::enable_interrupt) enables every vector the function
//! reports (at most [`MAX_VECTORS`]), each with its own eventfd, and later calls only attach
//! a sink to a vector that is already live. A vector without a sink is counted and dropped.
//! The set stays enabled until [`reset`](PciFunction::reset) or the function is dropped,
//! which disable it in the kernel and join the delivering thread.
//!
//! ```no_run
//! use dmakit::device::{PciFunction, DmaView};
//! use dmakit::map::mapped_read32;
//! use dmakit_linux::{Host, vfio::{PciAddress, VfioFunction}};
//! use std::sync::Arc;
//!
//! let host = Arc::new(Host::new()?);
//! let f = VfioFunction::open(host.clone(), PciAddress::parse("0000:00:04.0")?)?;
//! let bar0 = f.bar(0)?;
//! let vs = mapped_read32(&*host, bar0.reg(0x08, dmakit::platform::Width::W32)?)?;
//! f.set_bus_master(true)?;
//! assert!(matches!(f.dma(), DmaView::Mapped(_)));
//! # let _ = vs; Ok::<(), dmakit::Error>(())
//! ```

use super::bar::Bar;
use super::container::Container;
use super::device::VfioDevice;
use super::irq::IrqKind;
use super::mapper::VfioMapper;
use super::pci::{device_name, PciAddress};
use super::sys;
use super::vectors::Dispatcher;
use crate::hints::{intern, os};
use crate::host::Host;
use dmakit::device::{
    BarInfo, DmaView, InterruptKind, Interrupts, PciAddress as SeamAddress, PciFunction, PciId,
};
use dmakit::dma::InterruptSink;
use dmakit::platform::Width;
use dmakit::{Error, Result};
use std::sync::{Arc, Mutex, MutexGuard};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
};

/// The most vectors a [`VfioFunction`] enables (and [`PciFunction::interrupts`] reports):
/// enough for a queue per CPU on most machines, without taking hundreds of the kernel's
/// interrupt vectors for a controller that offers thousands.
pub const MAX_VECTORS: u32 = 32;

/// The first configuration register of the BARs, and of the expansion ROM BAR.
const CFG_BAR0: u16 = 0x10;
const CFG_ROM: u16 = 0x30;

/// One PCI function through VFIO, as a driver sees it ([`PciFunction`]).
pub struct VfioFunction {
    device: VfioDevice,
    host: Arc<Host>,
    mapper: Arc<VfioMapper>,
    id: PciId,
    address: SeamAddress,
    interrupts: Interrupts,
    bars: Mutex<[Option<Bar>; 6]>,
    vectors: Mutex<Option<Enabled>>,
}

/// The live vector set.
#[derive(Debug)]
struct Enabled {
    index: u32,
    dispatcher: Dispatcher,
}

impl VfioFunction {
    /// Opens the function at `address` in a container of its own, with a mapper for
    /// `host`'s memory that hands out any valid IOVA. To share a container (and its IO
    /// address space) between functions, or to limit the IOVAs, use
    /// [`VfioBus`](super::VfioBus) or [`new`](Self::new).
    pub fn open(host: Arc<Host>, address: PciAddress) -> Result<VfioFunction> {
        let container = Arc::new(Container::open()?);
        let device = VfioDevice::open(&container, address)?;
        let mapper = Arc::new(VfioMapper::new(container, host.clone(), u64::MAX)?);
        Self::new(device, host, mapper)
    }

    /// The function over an open `device`, its BARs registered with `host`, its DMA
    /// through `mapper` (which must be the mapper of the device's container).
    pub fn new(
        device: VfioDevice,
        host: Arc<Host>,
        mapper: Arc<VfioMapper>,
    ) -> Result<VfioFunction> {
        if !Arc::ptr_eq(mapper.container(), device.container()) {
            return Err(Error::BadArgument {
                what: "VfioFunction: the mapper belongs to another VFIO container than the device \
                       (the device's IOMMU would not translate the mapper's IO addresses)",
                value: 0,
            });
        }
        let ids = device.config_read32(0x00)?;
        let class = device.config_read32(0x08)? >> 8;
        let id = PciId {
            vendor: ids as u16,
            device: (ids >> 16) as u16,
            class,
        };
        let irq = |index| {
            sys::irq_info(device.fd(), index)
                .map(|i| (i.count, i.flags))
                .map_err(|e| os("VFIO_DEVICE_GET_IRQ_INFO", e, ""))
        };
        let interrupts =
            choose_interrupts(irq(VFIO_PCI_MSIX_IRQ_INDEX)?, irq(VFIO_PCI_MSI_IRQ_INDEX)?);
        Ok(VfioFunction {
            address: device.address().into(),
            device,
            host,
            mapper,
            id,
            interrupts,
            bars: Mutex::new(Default::default()),
            vectors: Mutex::new(None),
        })
    }

    /// The VFIO device underneath.
    pub fn device(&self) -> &VfioDevice {
        &self.device
    }

    /// The mapper its DMA goes through.
    pub fn mapper(&self) -> &Arc<VfioMapper> {
        &self.mapper
    }

    /// The host its BARs are registered with.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Interrupts counted on `vector` since its set was enabled (0 when it is not).
    pub fn interrupt_count(&self, vector: u32) -> u64 {
        self.lock_vectors()
            .as_ref()
            .map_or(0, |e| e.dispatcher.count(vector))
    }

    /// Whether `vector` is routed to a sink now.
    pub fn interrupt_routed(&self, vector: u32) -> bool {
        self.lock_vectors()
            .as_ref()
            .is_some_and(|e| e.dispatcher.has_sink(vector))
    }

    /// How many vectors are live in the kernel now (0 before the first
    /// [`enable_interrupt`](PciFunction::enable_interrupt), and after a reset).
    pub fn enabled_vectors(&self) -> u32 {
        self.lock_vectors()
            .as_ref()
            .map_or(0, |e| e.dispatcher.vectors())
    }

    fn name(&self) -> &'static str {
        device_name(self.device.address())
    }

    fn lock_vectors(&self) -> MutexGuard<'_, Option<Enabled>> {
        self.vectors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enables `count` vectors of `kind` in one `VFIO_DEVICE_SET_IRQS`. MSI may grant fewer
    /// than its capability offers (multiple-message MSI needs interrupt remapping): then
    /// one vector is tried.
    fn enable_all(&self, kind: InterruptKind, count: u32) -> Result<Enabled> {
        let irq = match kind {
            InterruptKind::MsiX => IrqKind::MsiX,
            InterruptKind::Msi => IrqKind::Msi,
            InterruptKind::Intx => {
                return Err(Error::Unsupported {
                    what: "VFIO INTx delivery (this backend delivers MSI and MSI-X)",
                })
            }
        };
        let index = irq.index();
        let mut tries = vec![count];
        if irq == IrqKind::Msi && count > 1 {
            tries.push(1);
        }
        let mut last = None;
        for n in tries {
            let dispatcher = Dispatcher::start(n)?;
            match sys::set_irq_eventfds(self.device.fd(), index, &dispatcher.fds()) {
                Ok(()) => return Ok(Enabled { index, dispatcher }),
                Err(e) => last = Some(e),
            }
        }
        let e = last.unwrap_or(rustix::io::Errno::INVAL);
        Err(os(
            "VFIO_DEVICE_SET_IRQS (enable the function's vectors)",
            e,
            "EINVAL: another interrupt set (an Msi of this device, or INTx) is active on it",
        ))
    }

    /// Disables the vector set in the kernel and stops its thread.
    fn disable_all(&self, e: Enabled) {
        let _ = sys::set_irq_eventfds(self.device.fd(), e.index, &[]);
        drop(e.dispatcher);
    }
}

/// What the function can deliver: MSI-X if VFIO can signal it through eventfds, else MSI,
/// else nothing (the driver polls). `msix` and `msi` are `(count, flags)` from
/// `VFIO_DEVICE_GET_IRQ_INFO`.
fn choose_interrupts(msix: (u32, u32), msi: (u32, u32)) -> Interrupts {
    let usable = |(count, flags): (u32, u32)| count > 0 && flags & VFIO_IRQ_INFO_EVENTFD != 0;
    let (kind, count) = if usable(msix) {
        (Some(InterruptKind::MsiX), msix.0)
    } else if usable(msi) {
        (Some(InterruptKind::Msi), msi.0)
    } else {
        (None, 0)
    };
    Interrupts {
        kind,
        vectors: count.min(MAX_VECTORS),
    }
}

/// Checks a configuration access of `width` at `offset` in a space of `size` bytes and
/// returns its length in bytes.
fn config_access(offset: u16, width: Width, size: u64) -> Result<usize> {
    let n = match width {
        Width::W8 => 1u16,
        Width::W16 => 2,
        Width::W32 => 4,
        Width::W64 => {
            return Err(Error::BadArgument {
                what: "PCI configuration access width: 1, 2 or 4 bytes",
                value: 8,
            })
        }
    };
    if !offset.is_multiple_of(n) {
        return Err(Error::NotAligned {
            what: "PCI configuration access (naturally aligned)",
            value: offset.into(),
            align: n.into(),
        });
    }
    if u64::from(offset) + u64::from(n) > size {
        return Err(Error::OutOfBounds {
            what: "PCI configuration space",
            offset: offset.into(),
            len: n.into(),
            limit: size,
        });
    }
    Ok(n.into())
}

/// Whether `[offset, offset + len)` touches a BAR or the expansion ROM BAR.
fn touches_bars(offset: u16, len: usize) -> bool {
    let (s, e) = (u32::from(offset), u32::from(offset) + len as u32);
    let hit = |lo: u16, hi: u16| s < u32::from(hi) && u32::from(lo) < e;
    hit(CFG_BAR0, CFG_BAR0 + 24) || hit(CFG_ROM, CFG_ROM + 4)
}

/// Decodes BAR register `index` (`value`; `below` is the register before it): whether it is
/// prefetchable memory, or why it is not a memory BAR a driver can use.
fn decode_bar(index: u8, value: u32, below: Option<u32>) -> Result<bool> {
    let mem64 = |v: u32| v & 1 == 0 && (v >> 1) & 3 == 2;
    if below.is_some_and(mem64) {
        return Err(Error::BadArgument {
            what: "PCI BAR index: it is the upper half of the 64-bit BAR below it (use that one)",
            value: index.into(),
        });
    }
    if value & 1 != 0 {
        return Err(Error::Unsupported {
            what: "an I/O-port BAR (only memory BARs are offered)",
        });
    }
    Ok(value & 8 != 0)
}

impl PciFunction for VfioFunction {
    fn address(&self) -> SeamAddress {
        self.address
    }

    fn id(&self) -> PciId {
        self.id
    }

    /// IOKit `configRead8/16/32`.
    fn config_read(&self, offset: u16, width: Width) -> Result<u32> {
        let n = config_access(offset, width, self.device.config_size())?;
        let mut b = [0u8; 4];
        self.device.config_read(offset.into(), &mut b[..n])?;
        Ok(u32::from_le_bytes(b))
    }

    /// IOKit `configWrite8/16/32`. Writes to the BAR registers (and the expansion ROM's) are
    /// refused: the BARs stay where the kernel put them, which is where they are mapped.
    fn config_write(&self, offset: u16, width: Width, value: u32) -> Result<()> {
        let n = config_access(offset, width, self.device.config_size())?;
        if touches_bars(offset, n) {
            return Err(Error::NotPermitted {
                what: "PCI configuration write to a BAR register",
                hint: "the BARs stay where the kernel assigned them while the function is open",
            });
        }
        self.device
            .config_write(offset.into(), &value.to_le_bytes()[..n])
    }

    /// IOKit `getDeviceMemoryWithIndex`: maps the BAR on first use (registering it with the
    /// host at its bus address) and keeps it mapped for the function's life.
    fn bar(&self, index: u8) -> Result<BarInfo> {
        if index > 5 {
            return Err(Error::BadArgument {
                what: "PCI BAR index (0-5)",
                value: index.into(),
            });
        }
        let reg = CFG_BAR0 + 4 * u16::from(index);
        let value = self.device.config_read32(reg.into())?;
        let below = match index {
            0 => None,
            _ => Some(self.device.config_read32((reg - 4).into())?),
        };
        let prefetchable = decode_bar(index, value, below)?;
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        let slot = bars
            .get_mut(usize::from(index))
            .ok_or(Error::Internal { what: "BAR table" })?;
        if slot.is_none() {
            self.device.enable_memory()?;
            *slot = Some(Bar::map(&self.device, index.into(), self.host.clone())?);
        }
        let bar = slot.as_ref().ok_or(Error::Internal { what: "BAR table" })?;
        Ok(BarInfo {
            index,
            base: bar.bus_address(),
            len: bar.len(),
            prefetchable,
        })
    }

    fn interrupts(&self) -> Interrupts {
        self.interrupts
    }

    /// IOKit `registerInterrupt` + `enableInterrupt`. The first call enables every vector
    /// (see the module's documentation); later calls attach `sink` to a live vector.
    ///
    /// MSI and MSI-X messages are memory writes by the function: they arrive only while
    /// bus mastering is on ([`set_bus_master`](PciFunction::set_bus_master)), which this
    /// call does not change. The sink runs on the function's interrupt thread and must only
    /// signal: calling back into this function from it can deadlock.
    fn enable_interrupt(&self, vector: u32, sink: Arc<dyn InterruptSink>) -> Result<()> {
        let Some(kind) = self.interrupts.kind else {
            return Err(Error::Unsupported {
                what: "interrupts: the function has no MSI or MSI-X that VFIO can signal (poll it)",
            });
        };
        let n = self.interrupts.vectors;
        if vector >= n {
            return Err(Error::BadArgument {
                what: intern(
                    format!(
                        "interrupt vector: {} offers {n} ({kind:?}, 0..{n})",
                        self.name()
                    ),
                    "interrupt vector: above the function's vectors",
                ),
                value: vector.into(),
            });
        }
        let mut g = self.lock_vectors();
        if g.is_none() {
            *g = Some(self.enable_all(kind, n)?);
        }
        match &*g {
            Some(e) => e.dispatcher.set_sink(vector, Some(sink)),
            None => Err(Error::Internal {
                what: "interrupt vectors enabled but not recorded",
            }),
        }
    }

    /// IOKit `disableInterrupt`: detaches the vector's sink (the vector stays live in the
    /// kernel, counted and dropped, so the others keep working). When this returns the sink
    /// is not running and is not called again.
    fn disable_interrupt(&self, vector: u32) -> Result<()> {
        let n = self.interrupts.vectors;
        if vector >= n {
            return Err(Error::BadArgument {
                what: "interrupt vector: above the function's vectors",
                value: vector.into(),
            });
        }
        match &*self.lock_vectors() {
            Some(e) if vector < e.dispatcher.vectors() => e.dispatcher.set_sink(vector, None),
            _ => Ok(()),
        }
    }

    /// IOKit `copyMapperForDevice`: the container's mapper.
    fn dma(&self) -> DmaView {
        DmaView::Mapped(self.mapper.clone())
    }

    /// IOKit `setBusMasterEnable`.
    fn set_bus_master(&self, on: bool) -> Result<()> {
        self.device.set_bus_master(on)
    }

    /// `VFIO_DEVICE_RESET` (a function-level, power-management or bus reset VFIO can do for
    /// this function alone). The vectors are disabled first and bus mastering is off
    /// afterwards; the BARs stay mapped and reachable (the kernel restores the function's
    /// configuration, memory decoding included).
    fn reset(&self) -> Result<()> {
        if !self.device.can_reset() {
            return Err(Error::Unsupported {
                what: intern(
                    format!(
                        "reset of {}: VFIO offers no reset for it (no function-level or \
                         power-management reset, and it shares its bus or has no bridge above it)",
                        self.device.address()
                    ),
                    "reset: VFIO offers no reset for this function",
                ),
            });
        }
        if let Some(e) = self.lock_vectors().take() {
            self.disable_all(e);
        }
        self.device.reset()?;
        self.device.set_bus_master(false)
    }
}

impl Drop for VfioFunction {
    fn drop(&mut self) {
        let e = self
            .vectors
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(e) = e {
            self.disable_all(e);
        }
        // The BARs unregister and unmap as the fields drop, before the device fd closes.
    }
}

impl std::fmt::Debug for VfioFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioFunction")
            .field("address", &self.device.address())
            .field("id", &self.id)
            .field("interrupts", &self.interrupts)
            .field("enabled_vectors", &self.enabled_vectors())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: u32 = VFIO_IRQ_INFO_EVENTFD;

    #[test]
    fn msix_is_preferred_then_msi_then_polling() {
        let i = choose_interrupts((65, EV), (1, EV));
        assert_eq!(
            (i.kind, i.vectors),
            (Some(InterruptKind::MsiX), MAX_VECTORS)
        );
        let i = choose_interrupts((4, EV), (1, EV));
        assert_eq!((i.kind, i.vectors), (Some(InterruptKind::MsiX), 4));
        let i = choose_interrupts((0, 0), (1, EV));
        assert_eq!((i.kind, i.vectors), (Some(InterruptKind::Msi), 1));
        // An index VFIO cannot signal through an eventfd does not count.
        let i = choose_interrupts((8, 0), (2, EV));
        assert_eq!((i.kind, i.vectors), (Some(InterruptKind::Msi), 2));
        let i = choose_interrupts((0, EV), (0, EV));
        assert_eq!((i.kind, i.vectors), (None, 0));
    }

    #[test]
    fn config_accesses_are_checked() {
        assert_eq!(config_access(0, Width::W32, 256).unwrap(), 4);
        assert_eq!(config_access(0xff, Width::W8, 256).unwrap(), 1);
        assert_eq!(config_access(0xffe, Width::W16, 4096).unwrap(), 2);
        assert!(matches!(
            config_access(0x100, Width::W32, 256),
            Err(Error::OutOfBounds { offset: 0x100, .. })
        ));
        assert!(matches!(
            config_access(u16::MAX, Width::W8, 4096),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            config_access(u16::MAX - 3, Width::W32, u64::MAX),
            Ok(4)
        ));
        assert!(matches!(
            config_access(2, Width::W32, 256),
            Err(Error::NotAligned {
                value: 2,
                align: 4,
                ..
            })
        ));
        assert!(matches!(
            config_access(1, Width::W16, 256),
            Err(Error::NotAligned { .. })
        ));
        assert!(matches!(
            config_access(0, Width::W64, 256),
            Err(Error::BadArgument { value: 8, .. })
        ));
    }

    #[test]
    fn bar_registers_are_protected_and_nothing_else() {
        assert!(touches_bars(0x10, 4));
        assert!(touches_bars(0x24, 4));
        assert!(touches_bars(0x27, 1));
        assert!(touches_bars(0x30, 4));
        assert!(touches_bars(0x0e, 4), "a write that straddles into BAR0");
        assert!(!touches_bars(0x04, 2), "the command register");
        assert!(!touches_bars(0x28, 4), "CardBus CIS pointer");
        assert!(!touches_bars(0x2c, 4), "subsystem IDs");
        assert!(!touches_bars(0x3c, 1), "interrupt line");
        assert!(!touches_bars(0xfffc, 4));
    }

    #[test]
    fn bars_decode_memory_io_and_64_bit_halves() {
        // 32-bit memory, not prefetchable.
        assert!(!decode_bar(0, 0xfe00_0000, None).unwrap());
        // 64-bit prefetchable memory at BAR2 (type 0b10, bit 3).
        assert!(decode_bar(2, 0x0000_000c, Some(0)).unwrap());
        // BAR3 is its upper half.
        assert!(matches!(
            decode_bar(3, 0, Some(0x0000_000c)),
            Err(Error::BadArgument { value: 3, .. })
        ));
        // An I/O-port BAR.
        assert!(matches!(
            decode_bar(1, 0xc001, Some(0xfe00_0000)),
            Err(Error::Unsupported { .. })
        ));
        // After an I/O BAR (bit 0 set), bits 2:1 mean nothing.
        assert!(!decode_bar(1, 0xfe00_0000, Some(0x5)).unwrap());
    }
}
