//! How a function's DMA reaches memory, and the [`DeviceContext`] a device model uses for
//! it.
//!
//! Every DMA step of a model goes through its [`DeviceContext`], in this order:
//!
//! 1. **bus mastering**: with the command register's bus-master bit clear the access never
//!    leaves the function: it fails with [`DmaFault::BusMasterDisabled`], is recorded
//!    ([`PciEvent::Dma`]) and touches no memory;
//! 2. **fault injection** at [`PciFaultSite::Dma`];
//! 3. **the path**: through the function's own IOMMU domain (a [`SimIommu`], whose page
//!    table the function's [`IommuMapper`] fills; a missing or read-only translation is an
//!    [`IommuFault`](crate::IommuFault) in its log and [`DmaFault::Iommu`] here), or
//!    straight to physical addresses up to the function's DMA limit (an address past it is
//!    [`DmaFault::BeyondLimit`]: the function cannot drive it);
//! 4. **DRAM**, bypassing the CPU caches as every device access of the machine does
//!    ([`Machine::device_read`]): on a non-coherent machine the CPU must clean before a
//!    device reads and invalidate after it writes. An address with no RAM behind it is a
//!    master abort ([`DmaFault::MasterAbort`], and the status register's received-master-abort
//!    bit).

use super::bus::BusCore;
use super::fault::PciFaultSite;
use super::function::{Activity, PciEvent};
use crate::{Machine, SimIommu};
use dmakit::device::DmaView;
use dmakit::mapper::{IommuMapper, Mapper};
use dmakit::{IoAddr, PhysAddr};
use std::sync::Arc;

/// The mapper type of a function's IOMMU domain.
pub type DomainMapper = IommuMapper<Arc<SimIommu>>;

/// How a function's DMA reaches memory, chosen when it is added to the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DmaMode {
    /// Through an IOMMU domain of the function's own, whose mapper hands out IO addresses
    /// in `[base, base + len)` (page aligned).
    Iommu {
        /// First IO address of the mapper's window.
        base: u64,
        /// Bytes of IO space.
        len: u64,
    },
    /// Straight to physical addresses up to `max_address` (the DMA mask).
    Bypass {
        /// The highest address the function can drive.
        max_address: u64,
    },
}

impl DmaMode {
    /// The default IOMMU window: `[1 MiB, 4 GiB)`. IO address 0 is never mapped, so a
    /// device that follows a null pointer faults.
    pub const DEFAULT_IOMMU: DmaMode = DmaMode::Iommu {
        base: 0x10_0000,
        len: 0xFFF0_0000,
    };

    /// Bypass with a 64-bit DMA mask.
    pub const BYPASS_64: DmaMode = DmaMode::Bypass {
        max_address: u64::MAX,
    };
}

impl Default for DmaMode {
    fn default() -> Self {
        DmaMode::DEFAULT_IOMMU
    }
}

/// Why a DMA step of a device failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DmaFault {
    /// Bus mastering is off: the access never left the function.
    BusMasterDisabled,
    /// The IOMMU refused it (no translation, or no permission): see its fault log.
    Iommu,
    /// No memory answered: no RAM at the address (the status register's
    /// received-master-abort bit is set).
    MasterAbort,
    /// Past the function's DMA limit in bypass: it cannot drive that address.
    BeyondLimit,
    /// Failed on purpose ([`PciFaultSite::Dma`]); `nth` is the call number at that site.
    Injected {
        /// The call number at the site.
        nth: u64,
    },
}

/// A function's path to memory.
pub(crate) enum DmaPath {
    Iommu {
        iommu: Arc<SimIommu>,
        mapper: Arc<DomainMapper>,
    },
    Bypass {
        machine: Arc<Machine>,
        max_address: u64,
    },
}

impl DmaPath {
    pub fn new(machine: &Arc<Machine>, mode: DmaMode) -> dmakit::Result<Self> {
        Ok(match mode {
            DmaMode::Iommu { base, len } => {
                let iommu = Arc::new(SimIommu::new(machine.clone()));
                let mapper = Arc::new(IommuMapper::new(iommu.clone(), base, len)?);
                DmaPath::Iommu { iommu, mapper }
            }
            DmaMode::Bypass { max_address } => DmaPath::Bypass {
                machine: machine.clone(),
                max_address,
            },
        })
    }

    pub fn view(&self) -> DmaView {
        match self {
            DmaPath::Iommu { mapper, .. } => DmaView::Mapped(mapper.clone() as Arc<dyn Mapper>),
            DmaPath::Bypass { max_address, .. } => DmaView::Bypass {
                max_address: *max_address,
            },
        }
    }

    fn within_limit(max_address: u64, addr: u64, len: u64) -> bool {
        len == 0
            || addr
                .checked_add(len - 1)
                .is_some_and(|end| end <= max_address)
    }

    /// Runs `f` on the path, classifying its failure.
    fn run(
        &self,
        addr: u64,
        len: u64,
        iommu_op: impl FnOnce(&SimIommu) -> dmakit::Result<()>,
        phys_op: impl FnOnce(&Machine) -> dmakit::Result<()>,
    ) -> Result<(), DmaFault> {
        match self {
            DmaPath::Iommu { iommu, .. } => {
                let before = iommu.fault_count();
                iommu_op(iommu).map_err(|_| {
                    if iommu.fault_count() > before {
                        DmaFault::Iommu
                    } else {
                        DmaFault::MasterAbort
                    }
                })
            }
            DmaPath::Bypass {
                machine,
                max_address,
            } => {
                if !Self::within_limit(*max_address, addr, len) {
                    return Err(DmaFault::BeyondLimit);
                }
                phys_op(machine).map_err(|_| DmaFault::MasterAbort)
            }
        }
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let len = buf.len() as u64;
        // Two closures cannot both borrow `buf` mutably; only one of them runs.
        let cell = std::cell::RefCell::new(buf);
        self.run(
            addr,
            len,
            |i| i.device_read(IoAddr(addr), &mut cell.borrow_mut()),
            |m| m.device_read(PhysAddr(addr), &mut cell.borrow_mut()),
        )
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaFault> {
        self.run(
            addr,
            data.len() as u64,
            |i| i.device_write(IoAddr(addr), data),
            |m| m.device_write(PhysAddr(addr), data),
        )
    }

    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), DmaFault> {
        self.run(
            addr,
            len,
            |i| i.device_check(IoAddr(addr), len, write),
            |m| m.device_check(PhysAddr(addr), len),
        )
    }
}

/// What a model's handler produced besides its return value: interrupts to deliver.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// MSI-X vectors signalled, in order.
    pub signals: Vec<u32>,
    /// The INTx level the model set last, if it set one.
    pub intx: Option<bool>,
    /// A DMA ended in a master abort.
    pub master_abort: bool,
}

/// The bus as a device model sees it while it handles an access: DMA and interrupts.
pub struct DeviceContext<'a> {
    pub(crate) path: &'a DmaPath,
    pub(crate) core: &'a BusCore,
    pub(crate) bus_master: bool,
    pub(crate) activity: &'a mut Activity,
    pub(crate) outbox: &'a mut Outbox,
}

impl DeviceContext<'_> {
    /// Whether the function may master the bus (command register bit 2).
    pub fn bus_master(&self) -> bool {
        self.bus_master
    }

    fn begin(&mut self, addr: u64, len: u64, write: bool) -> Result<(), DmaFault> {
        if !self.bus_master {
            return Err(self.failed(addr, len, write, DmaFault::BusMasterDisabled));
        }
        if let Err(dmakit::Error::Injected { nth, .. }) = self.core.hit(PciFaultSite::Dma) {
            return Err(self.failed(addr, len, write, DmaFault::Injected { nth }));
        }
        Ok(())
    }

    fn failed(&mut self, addr: u64, len: u64, write: bool, fault: DmaFault) -> DmaFault {
        let a = &mut self.activity;
        match fault {
            DmaFault::BusMasterDisabled => a.stats.dma_refused += 1,
            _ => a.stats.dma_faults += 1,
        }
        if fault == DmaFault::MasterAbort {
            self.outbox.master_abort = true;
        }
        a.record(PciEvent::Dma {
            addr,
            len,
            write,
            fault,
        });
        fault
    }

    /// One DMA step: reads `buf.len()` bytes of memory at device address `addr` (an IO
    /// address with an IOMMU, a physical one without). On failure nothing is read past the
    /// first page that failed and the fault is recorded.
    pub fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(());
        }
        self.begin(addr, len, false)?;
        match self.path.read(addr, buf) {
            Ok(()) => {
                self.activity.stats.dma_reads += 1;
                self.activity.stats.dma_bytes_read += len;
                Ok(())
            }
            Err(f) => Err(self.failed(addr, len, false, f)),
        }
    }

    /// One DMA step: writes `data` to memory at device address `addr`. A write that faults
    /// part-way may have written the pages before the fault, as on hardware; use
    /// [`dma_check`](Self::dma_check) first to write all or nothing.
    pub fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), DmaFault> {
        let len = data.len() as u64;
        if len == 0 {
            return Ok(());
        }
        self.begin(addr, len, true)?;
        match self.path.write(addr, data) {
            Ok(()) => {
                self.activity.stats.dma_writes += 1;
                self.activity.stats.dma_bytes_written += len;
                Ok(())
            }
            Err(f) => Err(self.failed(addr, len, true, f)),
        }
    }

    /// Whether a DMA of `len` bytes at `addr` would reach memory (translation, permission,
    /// RAM, bus mastering), without moving data: what a device that validates a whole
    /// transfer before starting it does. A refusal is recorded (and an IOMMU refusal
    /// logged) as the access itself would be. Not a fault-injection step.
    pub fn dma_check(&mut self, addr: u64, len: u64, write: bool) -> Result<(), DmaFault> {
        if len == 0 {
            return Ok(());
        }
        if !self.bus_master {
            return Err(self.failed(addr, len, write, DmaFault::BusMasterDisabled));
        }
        self.path
            .check(addr, len, write)
            .map_err(|f| self.failed(addr, len, write, f))
    }

    /// Signals MSI-X vector `vector`: sent now, or left pending if masked (delivered when
    /// unmasked), or lost if MSI-X is off.
    pub fn signal(&mut self, vector: u32) {
        self.outbox.signals.push(vector);
    }

    /// Drives the INTx pin: a rising edge (with INTx enabled) delivers the interrupt; the
    /// status register's interrupt bit follows the level.
    pub fn set_intx(&mut self, asserted: bool) {
        self.outbox.intx = Some(asserted);
    }
}

impl std::fmt::Debug for DeviceContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceContext")
            .field("bus_master", &self.bus_master)
            .field("outbox", &self.outbox)
            .finish()
    }
}
