//! The simulated PCI bus through the core's device seam (`PciBus`, `PciFunction`) and the
//! platform's `Mmio` only: configuration space and BAR sizing, BAR decoding, MSI-X delivery
//! and masking, bus mastering, per-function IOMMU domains, bypass limits, function reset,
//! fault injection at every site, and the cache model under device DMA.
//!
//! The device behind most functions here is a small test model ([`Probe`]) whose registers
//! start one DMA or raise one vector, so each behaviour of the bus is seen on its own.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::device::{DmaView, InterruptKind, InterruptSink, PciBus, PciFunction, PciId, PciMatch};
use dmakit::map::{mapped_read32, mapped_read64, mapped_write32, mapped_write64};
use dmakit::mapper::{Access, Mapper};
use dmakit::platform::{CacheOp, CacheOps, Task, Width};
use dmakit::{Direction, Error, IoReturn, PhysAddr};
use dmakit_sim::edu::{SimEdu, EDU_CLASS, EDU_DEVICE, EDU_VENDOR};
use dmakit_sim::nvme::{SimNvme, NVME_CLASS};
use dmakit_sim::pci::config::{self, *};
use dmakit_sim::pci::{
    BarSpec, DeviceConfig, DeviceContext, DmaFault, DmaMode, FunctionConfig, MsixSpec,
    PciDeviceModel, PciEvent, PciFaultSite, SimPciBus, SimPciFunction, APERTURE_BASE, MSI_ADDRESS,
};
use dmakit_sim::{FaultKind, Machine, MachineBuilder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type M = Arc<Machine>;

// ---------------------------------------------------------------------------------------
// A test device: one register per bus feature.

const PROBE_ID: u64 = 0x00;
const PROBE_SIGNAL: u64 = 0x08;
const PROBE_ADDR: u64 = 0x10;
const PROBE_LEN: u64 = 0x18;
const PROBE_CMD: u64 = 0x20;
const PROBE_RESULT: u64 = 0x28;
const PROBE_SCRATCH: u64 = 0x30;
const CMD_FROM_MEMORY: u64 = 1;
const CMD_TO_MEMORY: u64 = 2;
const CMD_TO_MEMORY_CHECKED: u64 = 3;
const PROBE_VECTORS: u16 = 8;

/// BAR 0: registers; BAR 2 (64-bit): the MSI-X table at 0 and its PBA at 0x800.
#[derive(Default)]
struct Probe {
    addr: u64,
    len: u64,
    result: u64,
    scratch: u64,
    buffer: Vec<u8>,
}

fn fault_code(f: DmaFault) -> u64 {
    match f {
        DmaFault::BusMasterDisabled => 1,
        DmaFault::Iommu => 2,
        DmaFault::MasterAbort => 3,
        DmaFault::Injected { .. } => 4,
        DmaFault::BeyondLimit => 5,
        _ => 6,
    }
}

impl PciDeviceModel for Probe {
    fn name(&self) -> &str {
        "probe"
    }

    fn config(&self) -> DeviceConfig {
        DeviceConfig::new(PciId {
            vendor: 0xD3A0,
            device: 0x0001,
            class: 0x08_80_00,
        })
        .bar(0, BarSpec::mem32(0x1000))
        .bar(2, BarSpec::mem64(0x4000))
        .msix(MsixSpec {
            vectors: PROBE_VECTORS,
            table_bar: 2,
            table_offset: 0,
            pba_bar: 2,
            pba_offset: 0x800,
        })
    }

    fn bar_read(&mut self, _: &mut DeviceContext<'_>, _: u8, offset: u64, _: Width) -> u64 {
        match offset {
            PROBE_ID => 0xC0FFEE,
            PROBE_ADDR => self.addr,
            PROBE_LEN => self.len,
            PROBE_RESULT => self.result,
            PROBE_SCRATCH => self.scratch,
            _ => 0,
        }
    }

    fn bar_write(&mut self, ctx: &mut DeviceContext<'_>, _: u8, offset: u64, _: Width, value: u64) {
        match offset {
            PROBE_SIGNAL => ctx.signal(value as u32),
            PROBE_ADDR => self.addr = value,
            PROBE_LEN => self.len = value,
            PROBE_SCRATCH => self.scratch = value,
            PROBE_CMD => {
                let n = self.len as usize;
                self.buffer.resize(n.max(self.buffer.len()), 0);
                let r = match value {
                    CMD_FROM_MEMORY => ctx.dma_read(self.addr, &mut self.buffer[..n]),
                    CMD_TO_MEMORY => ctx.dma_write(self.addr, &self.buffer[..n]),
                    CMD_TO_MEMORY_CHECKED => ctx
                        .dma_check(self.addr, n as u64, true)
                        .and_then(|()| ctx.dma_write(self.addr, &self.buffer[..n])),
                    _ => Ok(()),
                };
                self.result = r.err().map_or(0, fault_code);
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        *self = Probe::default();
    }
}

struct Counter(AtomicU64);

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Counter(AtomicU64::new(0)))
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl InterruptSink for Counter {
    fn raise(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn machine(seed: u64) -> M {
    Arc::new(MachineBuilder::new().seed(seed).build().unwrap())
}

fn probe(bus: &SimPciBus, dma: DmaMode) -> Arc<SimPciFunction> {
    bus.add(Box::new(Probe::default()), FunctionConfig::new().dma(dma))
        .unwrap()
}

fn reg(m: &M, f: &dyn PciFunction, off: u64) -> u64 {
    mapped_read64(&**m, PhysAddr(f.bar(0).unwrap().base.0 + off)).unwrap()
}

fn set(m: &M, f: &dyn PciFunction, off: u64, v: u64) {
    mapped_write64(&**m, PhysAddr(f.bar(0).unwrap().base.0 + off), v).unwrap();
}

fn cfg16(f: &dyn PciFunction, off: u16) -> u16 {
    f.config_read(off, Width::W16).unwrap() as u16
}

/// Starts a probe DMA and returns its result code.
fn probe_dma(m: &M, f: &dyn PciFunction, cmd: u64, addr: u64, len: u64) -> u64 {
    set(m, f, PROBE_ADDR, addr);
    set(m, f, PROBE_LEN, len);
    set(m, f, PROBE_CMD, cmd);
    reg(m, f, PROBE_RESULT)
}

fn probe_buffer(f: &SimPciFunction) -> Vec<u8> {
    f.with_device::<Probe, _>(|p, _| p.buffer.clone()).unwrap()
}

fn set_probe_buffer(f: &SimPciFunction, data: &[u8]) {
    f.with_device::<Probe, _>(|p, _| p.buffer = data.to_vec())
        .unwrap();
}

/// A wired, page-aligned buffer written by the CPU and cleaned so devices see it.
fn buffer(m: &M, len: u64, fill: u8) -> BufferMemoryDescriptor<M> {
    let b = BufferMemoryDescriptor::new(
        m.clone(),
        BufferOptions::new(len, Direction::InOut)
            .contiguous(true)
            .alignment(0x1000),
    )
    .unwrap();
    b.write(0, &vec![fill; len as usize]).unwrap();
    m.cache_virt(CacheOp::Clean, Task::KERNEL, b.address(), len)
        .unwrap();
    b
}

fn phys(b: &BufferMemoryDescriptor<M>) -> u64 {
    b.physical_segment(0).unwrap().addr.0
}

/// What the CPU reads after invalidating its cache over the buffer.
fn cpu_bytes(m: &M, b: &BufferMemoryDescriptor<M>) -> Vec<u8> {
    let len = b.length();
    m.cache_virt(CacheOp::Invalidate, Task::KERNEL, b.address(), len)
        .unwrap();
    let mut out = vec![0u8; len as usize];
    b.read(0, &mut out).unwrap();
    out
}

fn mapper(f: &dyn PciFunction) -> Arc<dyn Mapper> {
    match f.dma() {
        DmaView::Mapped(m) => m,
        DmaView::Bypass { .. } => panic!("expected an IOMMU domain"),
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn functions_are_enumerated_in_address_order_and_found_by_ids_and_class() {
    let m = machine(1);
    let bus = SimPciBus::new(m.clone()).unwrap();
    SimNvme::builder().attach(&bus).unwrap();
    SimEdu::builder()
        .function(FunctionConfig::new().device(0))
        .attach(&bus)
        .unwrap();
    let p = probe(&bus, DmaMode::BYPASS_64);

    let all = bus.functions();
    let addrs: Vec<String> = all.iter().map(|f| f.address().to_string()).collect();
    assert_eq!(addrs, ["0000:00:00.0", "0000:00:01.0", "0000:00:02.0"]);

    let edu = bus.find(&PciMatch::ids(EDU_VENDOR, EDU_DEVICE)).unwrap();
    assert_eq!(edu.id().class, EDU_CLASS);
    assert_eq!(cfg16(&*edu, VENDOR_ID), EDU_VENDOR);
    assert_eq!(cfg16(&*edu, DEVICE_ID), EDU_DEVICE);
    assert_eq!(
        edu.config_read(0x08, Width::W32).unwrap() >> 8,
        EDU_CLASS,
        "class code above the revision"
    );
    assert_eq!(edu.config_read(HEADER_TYPE, Width::W8).unwrap(), 0);
    assert_eq!(edu.interrupts().kind, Some(InterruptKind::Intx));

    let nvme = bus.find(&PciMatch::class(NVME_CLASS)).unwrap();
    assert_eq!(nvme.address().device, 1);
    assert_eq!(nvme.interrupts().kind, Some(InterruptKind::MsiX));
    assert_eq!(
        nvme.interrupts().vectors,
        9,
        "8 I/O queues and the admin queue"
    );
    assert_eq!(p.address().device, 2);
    assert_eq!(bus.matching(&PciMatch::class(NVME_CLASS)).len(), 1);

    let none = bus.find(&PciMatch::ids(0xFFFF, 0xFFFF)).err().unwrap();
    assert!(matches!(none, Error::NotAttached { .. }), "{none}");
    // A taken address is refused; a bad one too.
    let e = bus
        .add(Box::new(Probe::default()), FunctionConfig::new().device(1))
        .unwrap_err();
    assert!(matches!(e, Error::RangeBusy { .. }), "{e}");
    let e = bus
        .add(Box::new(Probe::default()), FunctionConfig::new().device(32))
        .unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }), "{e}");
}

#[test]
fn bars_size_and_decode_as_real_ones() {
    let m = machine(2);
    let bus = SimPciBus::new(m.clone()).unwrap();
    let f = probe(&bus, DmaMode::BYPASS_64);
    let f: &dyn PciFunction = &*f;

    // Firmware placed the BARs in the aperture, memory decoding on, bus mastering off.
    let bar0 = f.bar(0).unwrap();
    let bar2 = f.bar(2).unwrap();
    assert_eq!((bar0.len, bar2.len), (0x1000, 0x4000));
    for b in [bar0, bar2] {
        assert!(
            b.base.0 >= APERTURE_BASE && b.base.0.is_multiple_of(b.len),
            "{b:?}"
        );
    }
    let command = cfg16(f, COMMAND);
    assert_eq!(
        command & (COMMAND_MEMORY | COMMAND_BUS_MASTER),
        COMMAND_MEMORY
    );
    assert_eq!(reg(&m, f, PROBE_ID), 0xC0FFEE);

    // Sizing the 32-bit BAR 0: all ones reads back the size mask, flags intact.
    let bar0_reg = BAR0;
    let saved = f.config_read(bar0_reg, Width::W32).unwrap();
    assert_eq!(
        saved as u64, bar0.base.0,
        "32-bit, non-prefetchable: no flag bits"
    );
    f.config_write(bar0_reg, Width::W32, 0xFFFF_FFFF).unwrap();
    let mask = f.config_read(bar0_reg, Width::W32).unwrap();
    assert_eq!(mask, 0xFFFF_F000);
    assert_eq!(
        (!(mask & !0xF)).wrapping_add(1),
        0x1000,
        "size from the mask"
    );
    f.config_write(bar0_reg, Width::W32, saved).unwrap();

    // Sizing the 64-bit BAR 2 (registers 2 and 3).
    let lo = BAR0 + 8;
    let (slo, shi) = (
        f.config_read(lo, Width::W32).unwrap(),
        f.config_read(lo + 4, Width::W32).unwrap(),
    );
    assert_eq!(slo & 0xF, 0b0100, "memory, 64-bit, not prefetchable");
    f.config_write(lo, Width::W32, 0xFFFF_FFFF).unwrap();
    f.config_write(lo + 4, Width::W32, 0xFFFF_FFFF).unwrap();
    let mask64 = (f.config_read(lo + 4, Width::W32).unwrap() as u64) << 32
        | (f.config_read(lo, Width::W32).unwrap() & !0xF) as u64;
    assert_eq!((!mask64).wrapping_add(1), 0x4000);
    assert!(
        matches!(f.bar(3), Err(Error::BadArgument { .. })),
        "upper half"
    );
    f.config_write(lo, Width::W32, slo).unwrap();
    f.config_write(lo + 4, Width::W32, shi).unwrap();
    assert_eq!(f.bar(2).unwrap(), bar2);

    // Unimplemented BARs read zero and ignore stores.
    f.config_write(BAR0 + 4, Width::W32, 0xFFFF_FFFF).unwrap();
    assert_eq!(f.config_read(BAR0 + 4, Width::W32).unwrap(), 0);
    assert!(f.bar(1).is_err() && f.bar(6).is_err());

    // Moving BAR 0: the device answers at the new address, nobody at the old one.
    let new = APERTURE_BASE + 0x1000_0000;
    f.config_write(bar0_reg, Width::W32, new as u32).unwrap();
    assert_eq!(f.bar(0).unwrap().base, PhysAddr(new));
    assert_eq!(
        mapped_read32(&*m, PhysAddr(new + PROBE_ID)).unwrap(),
        0xC0FFEE
    );
    let before = bus.unclaimed_accesses();
    assert_eq!(
        mapped_read32(&*m, PhysAddr(bar0.base.0 + PROBE_ID)).unwrap(),
        0xFFFF_FFFF,
        "master abort"
    );
    assert_eq!(bus.unclaimed_accesses(), before + 1);

    // Memory decoding off: the BARs answer nothing; on again, they do.
    f.config_write(COMMAND, Width::W16, 0).unwrap();
    assert_eq!(
        mapped_read32(&*m, PhysAddr(new + PROBE_ID)).unwrap(),
        0xFFFF_FFFF
    );
    mapped_write32(&*m, PhysAddr(new + PROBE_SCRATCH), 5).unwrap();
    f.config_write(COMMAND, Width::W16, COMMAND_MEMORY as u32)
        .unwrap();
    assert_eq!(reg(&m, f, PROBE_SCRATCH), 0, "the store went nowhere");
}

#[test]
fn configuration_space_checks_and_read_only_registers() {
    let m = machine(3);
    let bus = SimPciBus::new(m).unwrap();
    let f = probe(&bus, DmaMode::BYPASS_64);
    let f: &dyn PciFunction = &*f;
    assert!(matches!(
        f.config_read(0x02, Width::W32),
        Err(Error::NotAligned { .. })
    ));
    assert!(matches!(
        f.config_read(0x1000, Width::W8),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        f.config_read(0xFFFE, Width::W32),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        f.config_read(0, Width::W64),
        Err(Error::BadArgument { .. })
    ));
    assert!(f.config_write(0x0FFD, Width::W16, 0).is_err());

    // IDs and class are read-only; the extended space is empty.
    f.config_write(VENDOR_ID, Width::W32, 0x1234_5678).unwrap();
    assert_eq!(cfg16(f, VENDOR_ID), 0xD3A0);
    assert_eq!(f.config_read(0x100, Width::W32).unwrap(), 0);
    // The command register keeps only its writable bits.
    f.config_write(COMMAND, Width::W16, 0xFFFF).unwrap();
    assert_eq!(
        cfg16(f, COMMAND),
        COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
    );
    // Byte access to the interrupt line.
    f.config_write(INTERRUPT_LINE, Width::W8, 0x0B).unwrap();
    assert_eq!(f.config_read(INTERRUPT_LINE, Width::W8).unwrap(), 0x0B);
    assert_eq!(
        f.config_read(INTERRUPT_PIN, Width::W8).unwrap(),
        0,
        "no INTx"
    );

    // The capability list: MSI-X at its place, with its table and PBA.
    assert_ne!(cfg16(f, STATUS) & STATUS_CAP_LIST, 0);
    let cap = f.config_read(CAP_PTR, Width::W8).unwrap() as u16;
    assert_eq!(cap, MSIX_CAP);
    assert_eq!(f.config_read(cap, Width::W8).unwrap(), CAP_ID_MSIX as u32);
    let control = cfg16(f, cap + MSIX_CONTROL);
    assert_eq!(control & 0x7FF, PROBE_VECTORS - 1, "table size, 0's based");
    assert_eq!(
        f.config_read(cap + MSIX_TABLE, Width::W32).unwrap(),
        2,
        "offset 0 in BAR 2"
    );
    assert_eq!(f.config_read(cap + MSIX_PBA, Width::W32).unwrap(), 0x802);
}

#[test]
fn msix_vectors_reach_their_sinks_and_masking_is_honoured() {
    let m = machine(4);
    let bus = SimPciBus::new(m.clone()).unwrap();
    let f = probe(&bus, DmaMode::BYPASS_64);
    let fd: &dyn PciFunction = &*f;
    fd.set_bus_master(true).unwrap();
    let table = fd.bar(2).unwrap().base.0;
    let entry = |v: u64, field: u64| PhysAddr(table + v * 16 + field);
    let pba = || mapped_read64(&*m, PhysAddr(table + 0x800)).unwrap();
    let signal = |v: u64| set(&m, fd, PROBE_SIGNAL, v);

    // Before any route, MSI-X is off: a signal is lost.
    signal(3);
    assert_eq!(f.stats().interrupts_lost, 1);
    assert!(matches!(
        f.events().last(),
        Some(PciEvent::InterruptLost { vector: 3, .. })
    ));

    let s3 = Counter::new();
    fd.enable_interrupt(3, s3.clone()).unwrap();
    assert_ne!(cfg16(fd, MSIX_CAP + MSIX_CONTROL) & MSIX_ENABLE, 0);
    assert_eq!(
        mapped_read32(&*m, entry(3, 0)).unwrap() as u64,
        MSI_ADDRESS,
        "the table entry holds the interrupt controller's address"
    );
    assert_eq!(mapped_read32(&*m, entry(3, 12)).unwrap(), 0, "unmasked");
    assert_eq!(
        mapped_read32(&*m, entry(4, 12)).unwrap(),
        1,
        "others masked"
    );
    signal(3);
    assert_eq!(s3.get(), 1);

    // Entry mask: the signal sets the pending bit; unmasking delivers it.
    mapped_write32(&*m, entry(3, 12), 1).unwrap();
    signal(3);
    signal(3);
    assert_eq!(s3.get(), 1);
    assert_eq!(pba(), 1 << 3);
    assert!(f.msix_pending(3));
    mapped_write32(&*m, entry(3, 12), 0).unwrap();
    assert_eq!(s3.get(), 2, "one message for the pending bit");
    assert_eq!(pba(), 0);

    // Function mask.
    let ctl = cfg16(fd, MSIX_CAP + MSIX_CONTROL);
    fd.config_write(
        MSIX_CAP + MSIX_CONTROL,
        Width::W16,
        (ctl | MSIX_FUNCTION_MASK) as u32,
    )
    .unwrap();
    signal(3);
    assert_eq!((s3.get(), pba()), (2, 1 << 3));
    fd.config_write(MSIX_CAP + MSIX_CONTROL, Width::W16, ctl as u32)
        .unwrap();
    assert_eq!((s3.get(), pba()), (3, 0));

    // A vector without a route stays masked (pending); the PBA is read-only.
    signal(5);
    assert_eq!(pba(), 1 << 5);
    mapped_write64(&*m, PhysAddr(table + 0x800), 0).unwrap();
    assert_eq!(pba(), 1 << 5);
    // Routing it later delivers the pending signal at once.
    let s5 = Counter::new();
    fd.enable_interrupt(5, s5.clone()).unwrap();
    assert_eq!((s5.get(), pba()), (1, 0));

    // A table entry the driver scribbles on sends a message nobody answers.
    let data = mapped_read32(&*m, entry(5, 8)).unwrap();
    mapped_write32(&*m, entry(5, 8), data ^ 0xFFFF).unwrap();
    signal(5);
    assert_eq!(s5.get(), 1);
    assert_eq!(bus.stray_messages(), 1);

    // Bus mastering off: no message (they are memory writes).
    fd.set_bus_master(false).unwrap();
    signal(3);
    assert_eq!(s3.get(), 3);
    fd.set_bus_master(true).unwrap();

    // Disabled: masked, routed nowhere.
    fd.disable_interrupt(3).unwrap();
    signal(3);
    assert_eq!(s3.get(), 3);
    assert!(f.msix_pending(3));
    assert!(fd.enable_interrupt(8, s3.clone()).is_err(), "8 vectors");
    assert!(fd.disable_interrupt(8).is_err());
    let st = f.stats();
    assert_eq!(st.interrupts_delivered, 4, "{st:?}");
}

#[test]
fn dma_with_bus_mastering_off_fails_is_recorded_and_touches_nothing() {
    let m = machine(5);
    let bus = SimPciBus::new(m.clone()).unwrap();
    let f = probe(&bus, DmaMode::BYPASS_64);
    let fd: &dyn PciFunction = &*f;
    let b = buffer(&m, 0x2000, 0x11);
    set_probe_buffer(&f, &[0x77; 0x2000]);

    assert_eq!(probe_dma(&m, fd, CMD_TO_MEMORY, phys(&b), 0x2000), 1);
    assert_eq!(probe_dma(&m, fd, CMD_FROM_MEMORY, phys(&b), 0x2000), 1);
    assert_eq!(cpu_bytes(&m, &b), vec![0x11; 0x2000], "memory untouched");
    assert_eq!(probe_buffer(&f), vec![0x77; 0x2000], "nothing read");
    assert_eq!(f.stats().dma_refused, 2);
    assert_eq!(
        f.events().last(),
        Some(&PciEvent::Dma {
            addr: phys(&b),
            len: 0x2000,
            write: false,
            fault: DmaFault::BusMasterDisabled
        })
    );
    assert_eq!(
        bus.calls(PciFaultSite::Dma),
        0,
        "a refused access never reaches the bus"
    );

    fd.set_bus_master(true).unwrap();
    assert_ne!(cfg16(fd, COMMAND) & COMMAND_BUS_MASTER, 0);
    assert_eq!(probe_dma(&m, fd, CMD_TO_MEMORY, phys(&b), 0x2000), 0);
    assert_eq!(cpu_bytes(&m, &b), vec![0x77; 0x2000]);
    let st = f.stats();
    assert_eq!((st.dma_writes, st.dma_bytes_written), (1, 0x2000));
}

#[test]
fn iommu_domains_fault_unmapped_iovas_and_are_separate_per_function() {
    let m = machine(6);
    let bus = SimPciBus::new(m.clone()).unwrap();
    let a = probe(&bus, DmaMode::DEFAULT_IOMMU);
    let b = probe(&bus, DmaMode::DEFAULT_IOMMU);
    for f in [&a, &b] {
        f.set_bus_master(true).unwrap();
    }
    let buf = buffer(&m, 0x1000, 0x22);
    let map = mapper(&*a);
    let iova = map.iovm_alloc(1).unwrap();
    map.iovm_insert_page(iova, PhysAddr(phys(&buf)), Access::READ_WRITE)
        .unwrap();

    set_probe_buffer(&a, b"through the domain");
    assert_eq!(probe_dma(&m, &*a, CMD_TO_MEMORY, iova.0 + 8, 18), 0);
    assert_eq!(&cpu_bytes(&m, &buf)[8..26], b"through the domain");

    // The same IO address in the other function's domain is not mapped.
    assert_eq!(probe_dma(&m, &*b, CMD_TO_MEMORY, iova.0, 16), 2);
    let faults = b.iommu().unwrap().faults();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].iova, iova);
    assert!(faults[0].write);
    assert_eq!(faults[0].kind, FaultKind::NotPresent);
    assert!(a.iommu().unwrap().faults().is_empty());

    // An unmapped IOVA in its own domain, and a read-only page written.
    assert_eq!(probe_dma(&m, &*a, CMD_FROM_MEMORY, iova.0 + 0x1000, 4), 2);
    let ro = map.iovm_alloc(1).unwrap();
    map.iovm_insert_page(ro, PhysAddr(phys(&buf)), Access::READ)
        .unwrap();
    assert_eq!(probe_dma(&m, &*a, CMD_TO_MEMORY, ro.0, 4), 2);
    let kinds: Vec<FaultKind> = a.iommu().unwrap().faults().iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [FaultKind::NotPresent, FaultKind::WriteDenied]);
    assert!(matches!(
        a.events().last(),
        Some(PciEvent::Dma {
            fault: DmaFault::Iommu,
            write: true,
            ..
        })
    ));
    // IO address 0 is never handed out, so a null pointer faults.
    assert_eq!(probe_dma(&m, &*a, CMD_TO_MEMORY, 0, 4), 2);
    assert_eq!(&cpu_bytes(&m, &buf)[..8], &[0x22; 8]);
    // The typed mapper is the same domain.
    assert_eq!(a.mapper().unwrap().usage(), (2, 2));
    map.iovm_free(iova, 1).unwrap();
    map.iovm_free(ro, 1).unwrap();
    assert_eq!(a.mapper().unwrap().usage(), (0, 0));
}

#[test]
fn bypass_honours_the_dma_limit_and_flags_master_aborts() {
    let m = machine(7);
    let bus = SimPciBus::builder(m.clone())
        .dma(DmaMode::Bypass {
            max_address: 0xFFFF_FFFF,
        })
        .build()
        .unwrap();
    let f = probe(
        &bus,
        DmaMode::Bypass {
            max_address: 0xFFFF_FFFF,
        },
    );
    let fd: &dyn PciFunction = &*f;
    fd.set_bus_master(true).unwrap();
    match fd.dma() {
        DmaView::Bypass { max_address } => assert_eq!(max_address, 0xFFFF_FFFF),
        DmaView::Mapped(_) => panic!("bypass expected"),
    }
    // RAM above 4 GiB exists, but the function cannot reach it.
    assert_eq!(probe_dma(&m, fd, CMD_FROM_MEMORY, 0x1_0000_0000, 8), 5);
    // A crossing of the limit is refused too.
    assert_eq!(probe_dma(&m, fd, CMD_FROM_MEMORY, 0xFFFF_FFFC, 8), 5);
    assert_eq!(cfg16(fd, STATUS) & STATUS_RECEIVED_MASTER_ABORT, 0);
    // No RAM at 0 (the machine's RAM starts at 1 MiB): a master abort, flagged.
    assert_eq!(probe_dma(&m, fd, CMD_TO_MEMORY, 0, 8), 3);
    assert_ne!(cfg16(fd, STATUS) & STATUS_RECEIVED_MASTER_ABORT, 0);
    // RW1C.
    fd.config_write(STATUS, Width::W16, STATUS_RECEIVED_MASTER_ABORT as u32)
        .unwrap();
    assert_eq!(cfg16(fd, STATUS) & STATUS_RECEIVED_MASTER_ABORT, 0);
    assert!(f.iommu().is_none() && f.mapper().is_none());
    // A checked write that would cross into a hole writes nothing at all.
    let layout = m.layout();
    let r = layout.ram[0];
    let b_end = r.end();
    let mut tail = vec![0u8; 8];
    m.device_read(PhysAddr(b_end - 8), &mut tail).unwrap();
    set_probe_buffer(&f, &[0x99; 16]);
    assert_eq!(probe_dma(&m, fd, CMD_TO_MEMORY_CHECKED, b_end - 8, 16), 3);
    let mut after = vec![0u8; 8];
    m.device_read(PhysAddr(b_end - 8), &mut after).unwrap();
    assert_eq!(after, tail);
}

#[test]
fn function_reset_clears_the_device_bus_mastering_and_routes_but_keeps_bars() {
    let m = machine(8);
    let bus = SimPciBus::new(m.clone()).unwrap();
    let f = probe(&bus, DmaMode::BYPASS_64);
    let fd: &dyn PciFunction = &*f;
    let bars = (fd.bar(0).unwrap(), fd.bar(2).unwrap());
    fd.set_bus_master(true).unwrap();
    let s = Counter::new();
    fd.enable_interrupt(1, s.clone()).unwrap();
    set(&m, fd, PROBE_SCRATCH, 42);
    set(&m, fd, PROBE_SIGNAL, 1);
    assert_eq!(s.get(), 1);

    fd.reset().unwrap();
    assert_eq!((fd.bar(0).unwrap(), fd.bar(2).unwrap()), bars);
    assert_eq!(
        cfg16(fd, COMMAND),
        COMMAND_MEMORY,
        "decoding on, mastering off"
    );
    assert_eq!(cfg16(fd, MSIX_CAP + MSIX_CONTROL) & MSIX_ENABLE, 0);
    assert_eq!(reg(&m, fd, PROBE_SCRATCH), 0, "the model was reset");
    set(&m, fd, PROBE_SIGNAL, 1);
    assert_eq!(s.get(), 1, "no route survives a reset");
    let table = fd.bar(2).unwrap().base.0;
    assert_eq!(
        mapped_read32(&*m, PhysAddr(table + 16 + 12)).unwrap(),
        1,
        "entries masked again"
    );
}

#[test]
fn fault_injection_at_config_bar_dma_and_interrupt_steps() {
    let m = machine(9);
    let bus = SimPciBus::new(m.clone()).unwrap();
    let f = probe(&bus, DmaMode::BYPASS_64);
    let fd: &dyn PciFunction = &*f;

    // Configuration: the call fails with kIOReturnNotResponding and changes nothing.
    bus.inject(PciFaultSite::Config, bus.calls(PciFaultSite::Config) + 1);
    let e = fd.set_bus_master(true).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Injected {
                site: "PCI configuration access",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.io_return(), IoReturn(0xE000_02ED));
    assert_eq!(cfg16(fd, COMMAND) & COMMAND_BUS_MASTER, 0);
    assert!(matches!(
        f.events().last(),
        Some(PciEvent::ConfigLost {
            offset: 4,
            write: true
        })
    ));
    fd.set_bus_master(true).unwrap();
    bus.inject_next(PciFaultSite::Config);
    assert!(fd.config_read(0, Width::W16).is_err());
    assert_eq!(cfg16(fd, VENDOR_ID), 0xD3A0, "the retry works");

    // BAR: the load reads all ones, the store never reaches the device.
    bus.inject_next(PciFaultSite::Bar);
    assert_eq!(reg(&m, fd, PROBE_ID), u64::MAX);
    bus.inject_next(PciFaultSite::Bar);
    set(&m, fd, PROBE_SCRATCH, 9);
    assert_eq!(reg(&m, fd, PROBE_SCRATCH), 0);
    let lost: Vec<_> = f
        .events()
        .into_iter()
        .filter(|e| matches!(e, PciEvent::BarLost { .. }))
        .collect();
    assert_eq!(
        lost,
        [
            PciEvent::BarLost {
                bar: 0,
                offset: PROBE_ID,
                write: false
            },
            PciEvent::BarLost {
                bar: 0,
                offset: PROBE_SCRATCH,
                write: true
            }
        ]
    );

    // DMA: the step fails, memory untouched, the nth call is named.
    let b = buffer(&m, 0x1000, 0x33);
    set_probe_buffer(&f, &[0x44; 0x1000]);
    let nth = bus.calls(PciFaultSite::Dma) + 1;
    bus.inject(PciFaultSite::Dma, nth);
    assert_eq!(probe_dma(&m, fd, CMD_TO_MEMORY, phys(&b), 0x1000), 4);
    assert_eq!(cpu_bytes(&m, &b), vec![0x33; 0x1000]);
    assert!(matches!(
        f.events().last(),
        Some(PciEvent::Dma { fault: DmaFault::Injected { nth: n }, .. }) if *n == nth
    ));
    assert_eq!(probe_dma(&m, fd, CMD_TO_MEMORY, phys(&b), 0x1000), 0);

    // Interrupt: the message is lost.
    let s = Counter::new();
    fd.enable_interrupt(0, s.clone()).unwrap();
    bus.inject_next(PciFaultSite::Interrupt);
    set(&m, fd, PROBE_SIGNAL, 0);
    assert_eq!(s.get(), 0);
    set(&m, fd, PROBE_SIGNAL, 0);
    assert_eq!(s.get(), 1);

    // Planned in the builder: counted from the bus's start.
    let bus2 = SimPciBus::builder(m.clone())
        .aperture(0xB000_0000, 0x1000_0000)
        .fault(PciFaultSite::Config, 1)
        .build()
        .unwrap();
    let g = probe(&bus2, DmaMode::BYPASS_64);
    assert!(g.config_read(0, Width::W32).is_err());
    assert!(g.config_read(0, Width::W32).is_ok());
    bus2.inject_next(PciFaultSite::Config);
    bus2.clear_faults();
    assert!(g.config_read(0, Width::W32).is_ok());
}

#[test]
fn device_dma_bypasses_the_cpu_cache() {
    // The default machine is not coherent: a CPU store not yet cleaned is invisible to a
    // device, and a device store is invisible to the CPU until it invalidates.
    let m = machine(10);
    let bus = SimPciBus::new(m.clone()).unwrap();
    let f = probe(&bus, DmaMode::BYPASS_64);
    let fd: &dyn PciFunction = &*f;
    fd.set_bus_master(true).unwrap();
    let b = buffer(&m, 0x1000, 0);
    b.write(0, b"dirty in the cache").unwrap();
    assert_eq!(probe_dma(&m, fd, CMD_FROM_MEMORY, phys(&b), 18), 0);
    assert_eq!(probe_buffer(&f)[..18], [0u8; 18], "the device saw DRAM");
    m.cache_virt(CacheOp::Clean, Task::KERNEL, b.address(), 0x1000)
        .unwrap();
    assert_eq!(probe_dma(&m, fd, CMD_FROM_MEMORY, phys(&b), 18), 0);
    assert_eq!(&probe_buffer(&f)[..18], b"dirty in the cache");

    set_probe_buffer(&f, b"from the device...");
    assert_eq!(probe_dma(&m, fd, CMD_TO_MEMORY, phys(&b), 18), 0);
    let mut stale = [0u8; 18];
    b.read(0, &mut stale).unwrap();
    assert_eq!(
        &stale, b"dirty in the cache",
        "the CPU still hits its cached line"
    );
    assert_eq!(&cpu_bytes(&m, &b)[..18], b"from the device...");
}

#[test]
fn the_aperture_shows_in_the_layout_and_unplaceable_bars_are_refused() {
    let m = machine(11);
    let bus = SimPciBus::builder(m.clone())
        .aperture(0xD000_0000, 0x2000)
        .build()
        .unwrap();
    assert!(m
        .layout()
        .mmio
        .iter()
        .any(|(b, l, n)| *b == 0xD000_0000 && *l == 0x2000 && n == "pci"));
    // BAR 0 (4 KiB) fits, BAR 2 (16 KiB) does not.
    let e = bus
        .add(Box::new(Probe::default()), FunctionConfig::new())
        .unwrap_err();
    assert!(matches!(e, Error::NoSpace { .. }), "{e}");
    // An aperture over RAM is refused.
    let e = SimPciBus::builder(m.clone())
        .aperture(0x10_0000, 0x1000)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::RangeBusy { .. }), "{e}");
    let _ = config::SPACE_BYTES;
}
