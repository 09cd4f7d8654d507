//! QEMU's `edu` on the simulated PCI bus, through the device seam and Mmio only:
//! identification, liveness, factorial, INTx interrupts raised and acknowledged, DMA round
//! trips through its IOMMU domain below the mask, the mask's clamp in bypass, the buffer's
//! bounds, and bus mastering.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::device::{DmaView, InterruptKind, InterruptSink, PciBus, PciFunction, PciMatch};
use dmakit::map::{mapped_read32, mapped_read64, mapped_write32, mapped_write64};
use dmakit::mapper::{Access, Mapper};
use dmakit::platform::{CacheOp, CacheOps, Task, Width};
use dmakit::{Direction, IoAddr, PhysAddr};
use dmakit_sim::edu::regs::{self, *};
use dmakit_sim::edu::{SimEdu, EDU_BUFFER, EDU_DEFAULT_DMA_MASK, EDU_DEVICE, EDU_VENDOR};
use dmakit_sim::pci::config::{
    COMMAND, COMMAND_INTX_DISABLE, INTERRUPT_PIN, STATUS, STATUS_INTERRUPT,
};
use dmakit_sim::pci::{DmaFault, DmaMode, FunctionConfig, PciEvent, SimPciBus};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type M = Arc<Machine>;

struct Counter(AtomicU64);

impl InterruptSink for Counter {
    fn raise(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Edu {
    m: M,
    _bus: SimPciBus,
    sim: SimEdu,
    f: Arc<dyn PciFunction>,
    bar: u64,
}

impl Edu {
    fn new(seed: u64, b: dmakit_sim::edu::SimEduBuilder) -> Self {
        let m: M = Arc::new(MachineBuilder::new().seed(seed).build().unwrap());
        let bus = SimPciBus::new(m.clone()).unwrap();
        let sim = b.attach(&bus).unwrap();
        let f = bus.find(&PciMatch::ids(EDU_VENDOR, EDU_DEVICE)).unwrap();
        let bar = f.bar(0).unwrap().base.0;
        Edu {
            m,
            _bus: bus,
            sim,
            f,
            bar,
        }
    }

    fn r32(&self, off: u64) -> u32 {
        mapped_read32(&*self.m, PhysAddr(self.bar + off)).unwrap()
    }

    fn w32(&self, off: u64, v: u32) {
        mapped_write32(&*self.m, PhysAddr(self.bar + off), v).unwrap()
    }

    fn w64(&self, off: u64, v: u64) {
        mapped_write64(&*self.m, PhysAddr(self.bar + off), v).unwrap()
    }

    fn dma(&self, src: u64, dst: u64, len: u64, cmd: u64) {
        self.w64(DMA_SRC, src);
        self.w64(DMA_DST, dst);
        self.w64(DMA_COUNT, len);
        self.w64(DMA_CMD, cmd | CMD_START);
        assert_eq!(
            mapped_read64(&*self.m, PhysAddr(self.bar + DMA_CMD)).unwrap() & CMD_START,
            0,
            "the start bit clears when the transfer is done"
        );
    }
}

fn buffer(m: &M, len: u64) -> BufferMemoryDescriptor<M> {
    BufferMemoryDescriptor::new(
        m.clone(),
        BufferOptions::new(len, Direction::InOut)
            .contiguous(true)
            .alignment(0x1000),
    )
    .unwrap()
}

fn cpu_write(m: &M, b: &BufferMemoryDescriptor<M>, data: &[u8]) {
    b.write(0, data).unwrap();
    m.cache_virt(CacheOp::Clean, Task::KERNEL, b.address(), data.len() as u64)
        .unwrap();
}

fn cpu_read(m: &M, b: &BufferMemoryDescriptor<M>, len: usize) -> Vec<u8> {
    m.cache_virt(CacheOp::Invalidate, Task::KERNEL, b.address(), len as u64)
        .unwrap();
    let mut out = vec![0u8; len];
    b.read(0, &mut out).unwrap();
    out
}

#[test]
fn identification_liveness_and_access_widths() {
    let e = Edu::new(1, SimEdu::builder());
    assert_eq!(e.r32(ID), ID_VALUE);
    assert_eq!(e.f.bar(0).unwrap().len, 1 << 20);
    assert_eq!(e.f.interrupts().kind, Some(InterruptKind::Intx));
    assert_eq!(
        e.f.config_read(INTERRUPT_PIN, Width::W8).unwrap(),
        1,
        "INTA"
    );
    e.w32(LIVENESS, 0x1234_5678);
    assert_eq!(e.r32(LIVENESS), !0x1234_5678);
    // Registers below 0x80 take 32-bit accesses only; unknown offsets read all ones.
    assert_eq!(
        mapped_read64(&*e.m, PhysAddr(e.bar + 0x08)).unwrap(),
        u64::MAX
    );
    assert_eq!(e.r32(0x40), u32::MAX);
    e.w32(ID, 0);
    assert_eq!(e.r32(ID), ID_VALUE, "read-only");
    // DMA registers take both widths; a 32-bit store sets the whole register.
    e.w64(DMA_SRC, 0xAAAA_BBBB_CCCC_DDDD);
    e.w32(DMA_SRC, 0x1111);
    assert_eq!(
        mapped_read64(&*e.m, PhysAddr(e.bar + DMA_SRC)).unwrap(),
        0x1111
    );
}

#[test]
fn factorial_and_its_interrupt() {
    let e = Edu::new(2, SimEdu::builder());
    e.w32(FACTORIAL, 10);
    assert_eq!(e.r32(FACTORIAL), 3_628_800);
    e.w32(FACTORIAL, 0);
    assert_eq!(e.r32(FACTORIAL), 1);
    e.w32(FACTORIAL, 13);
    assert_eq!(
        e.r32(FACTORIAL),
        6_227_020_800u64 as u32,
        "32 bits, wrapping"
    );

    let irq = Arc::new(Counter(AtomicU64::new(0)));
    e.f.enable_interrupt(0, irq.clone()).unwrap();
    assert_eq!(
        e.f.config_read(COMMAND, Width::W16).unwrap() as u16 & COMMAND_INTX_DISABLE,
        0
    );
    e.w32(regs::STATUS, STATUS_IRQ_FACTORIAL);
    assert_eq!(e.r32(regs::STATUS), STATUS_IRQ_FACTORIAL);
    e.w32(FACTORIAL, 5);
    assert_eq!(e.r32(FACTORIAL), 120);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    assert_eq!(e.r32(IRQ_STATUS), IRQ_FACTORIAL);
    let status = |e: &Edu| e.f.config_read(STATUS, Width::W16).unwrap() as u16;
    assert_ne!(status(&e) & STATUS_INTERRUPT, 0, "the line is asserted");
    e.w32(IRQ_ACK, IRQ_FACTORIAL);
    assert_eq!(e.r32(IRQ_STATUS), 0);
    assert_eq!(status(&e) & STATUS_INTERRUPT, 0);
    assert!(
        e.f.enable_interrupt(1, irq.clone()).is_err(),
        "one INTx vector"
    );
}

#[test]
fn raised_interrupts_are_level_and_acknowledged() {
    let e = Edu::new(3, SimEdu::builder());
    let irq = Arc::new(Counter(AtomicU64::new(0)));
    let count = || irq.0.load(Ordering::SeqCst);
    e.f.enable_interrupt(0, irq.clone()).unwrap();
    e.w32(IRQ_RAISE, 0x10);
    e.w32(IRQ_RAISE, 0x20);
    assert_eq!(count(), 1, "one edge while the line stays up");
    assert_eq!(e.r32(IRQ_STATUS), 0x30);
    e.w32(IRQ_ACK, 0x10);
    e.w32(IRQ_RAISE, 0x40);
    assert_eq!(count(), 1, "still up");
    e.w32(IRQ_ACK, 0x60);
    e.w32(IRQ_RAISE, 0x1);
    assert_eq!(count(), 2, "a new edge after the line dropped");
    // INTx disabled in the command register: no delivery; enabling with the line up
    // delivers.
    e.w32(IRQ_ACK, 0x1);
    e.f.config_write(COMMAND, Width::W16, (0x2 | COMMAND_INTX_DISABLE) as u32)
        .unwrap();
    e.w32(IRQ_RAISE, 0x2);
    assert_eq!(count(), 2);
    e.f.config_write(COMMAND, Width::W16, 0x2).unwrap();
    assert_eq!(count(), 3);
    // Without a route the interrupt is lost and recorded.
    e.f.disable_interrupt(0).unwrap();
    e.w32(IRQ_ACK, 0xFF);
    e.w32(IRQ_RAISE, 0x2);
    assert_eq!(count(), 3);
    assert!(matches!(
        e.sim.function().events().last(),
        Some(PciEvent::InterruptLost { vector: 0, .. })
    ));
}

#[test]
fn dma_round_trip_through_the_iommu_below_the_mask() {
    let e = Edu::new(4, SimEdu::builder());
    let mapper: Arc<dyn Mapper> = match e.f.dma() {
        DmaView::Mapped(m) => m,
        DmaView::Bypass { .. } => panic!("edu defaults to an IOMMU domain"),
    };
    let (window, len) = e.sim.function().mapper().unwrap().window();
    assert!(
        window.0 + len - 1 <= EDU_DEFAULT_DMA_MASK,
        "the window fits the mask"
    );
    e.f.set_bus_master(true).unwrap();
    let irq = Arc::new(Counter(AtomicU64::new(0)));
    e.f.enable_interrupt(0, irq.clone()).unwrap();

    let src = buffer(&e.m, 0x2000);
    let dst = buffer(&e.m, 0x2000);
    let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 7 + 3) as u8).collect();
    cpu_write(&e.m, &src, &data);
    cpu_write(&e.m, &dst, &[0; 0x1000]);
    let map = |b: &BufferMemoryDescriptor<M>| -> IoAddr {
        let iova = mapper.iovm_alloc(1).unwrap();
        mapper
            .iovm_insert_page(
                iova,
                b.physical_segment(0).unwrap().addr,
                Access::READ_WRITE,
            )
            .unwrap();
        iova
    };
    let (s, d) = (map(&src), map(&dst));
    assert!(s.0 <= EDU_DEFAULT_DMA_MASK && d.0 <= EDU_DEFAULT_DMA_MASK);

    // RAM → device (the whole buffer), then device → RAM with an interrupt.
    e.dma(s.0, EDU_BUFFER.0, 0x1000, 0);
    assert_eq!(e.sim.buffer(), data);
    e.dma(EDU_BUFFER.0 + 0x100, d.0, 0x800, CMD_TO_RAM | CMD_IRQ);
    assert_eq!(cpu_read(&e.m, &dst, 0x800), data[0x100..0x900]);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    assert_eq!(e.r32(IRQ_STATUS), IRQ_DMA);
    assert_eq!(e.sim.transfers(), 2);
    assert_eq!(e.sim.clamped(), 0);

    // An unmapped IO address faults in the IOMMU; the command still completes (as QEMU's).
    e.dma(0x0FF0_0000, EDU_BUFFER.0, 16, 0);
    assert_eq!(e.sim.function().iommu().unwrap().fault_count(), 1);
    assert_eq!(e.sim.buffer(), data, "nothing read");
}

#[test]
fn the_dma_mask_clamps_addresses_as_qemu_does() {
    // Bypass with a 28-bit mask: an address above it reaches `address & mask`.
    let e = Edu::new(
        5,
        SimEdu::builder()
            .dma_mask(EDU_DEFAULT_DMA_MASK)
            .function(FunctionConfig::new().dma(DmaMode::BYPASS_64)),
    );
    e.f.set_bus_master(true).unwrap();
    let b = buffer(&e.m, 0x1000);
    let pa = b.physical_segment(0).unwrap().addr.0;
    assert!(pa <= EDU_DEFAULT_DMA_MASK, "the default RAM starts low");
    // 256 MiB and up is a hole in the default RAM map: only the clamp makes these work.
    cpu_write(&e.m, &b, &[0x5C; 64]);
    e.dma(pa | 3 << 28, EDU_BUFFER.0, 64, 0);
    assert_eq!(&e.sim.buffer()[..64], &[0x5C; 64]);
    assert_eq!(e.sim.clamped(), 1);
    let b2 = buffer(&e.m, 0x1000);
    let pa2 = b2.physical_segment(0).unwrap().addr.0;
    assert!(pa2 <= EDU_DEFAULT_DMA_MASK);
    cpu_write(&e.m, &b2, &[0; 64]);
    e.dma(EDU_BUFFER.0, pa2 | 1 << 28, 64, CMD_TO_RAM);
    assert_eq!(cpu_read(&e.m, &b2, 64), vec![0x5C; 64]);
    assert_eq!(e.sim.clamped(), 2);
    assert!(
        e.sim.function().events().is_empty(),
        "no fault: the clamped address is RAM"
    );
    // A custom mask.
    let e = Edu::new(6, SimEdu::builder().dma_mask((1 << 32) - 1));
    let (w, l) = e.sim.function().mapper().unwrap().window();
    assert_eq!(w.0 + l, 1 << 32);
    assert!(SimEdu::builder()
        .dma_mask(0xFFFF)
        .attach(
            &SimPciBus::builder(e.m.clone())
                .aperture(0xB000_0000, 0x100_0000)
                .build()
                .unwrap()
        )
        .is_err());
}

#[test]
fn dma_stays_inside_the_device_buffer() {
    let e = Edu::new(
        7,
        SimEdu::builder().function(FunctionConfig::new().dma(DmaMode::BYPASS_64)),
    );
    e.f.set_bus_master(true).unwrap();
    let b = buffer(&e.m, 0x2000);
    let pa = b.physical_segment(0).unwrap().addr.0;
    cpu_write(&e.m, &b, &[9; 0x2000]);
    for (dev, len) in [
        (EDU_BUFFER.0, 0x1001),
        (EDU_BUFFER.0 - 1, 16),
        (EDU_BUFFER.0 + 0xFF8, 16),
        (u64::MAX - 4, 16),
    ] {
        e.dma(pa, dev, len, 0);
    }
    assert_eq!(e.sim.refused(), 4);
    assert_eq!(e.sim.transfers(), 0);
    assert_eq!(e.sim.buffer(), vec![0; 0x1000], "nothing moved");
    e.dma(pa, EDU_BUFFER.0 + 0xFF0, 16, 0);
    assert_eq!(e.sim.transfers(), 1, "up to the buffer's last byte");
}

#[test]
fn bus_mastering_off_moves_no_data() {
    let e = Edu::new(
        8,
        SimEdu::builder().function(FunctionConfig::new().dma(DmaMode::BYPASS_64)),
    );
    let b = buffer(&e.m, 0x1000);
    let pa = b.physical_segment(0).unwrap().addr.0;
    cpu_write(&e.m, &b, &[0x42; 0x100]);
    e.dma(pa, EDU_BUFFER.0, 0x100, 0);
    assert_eq!(e.sim.buffer()[..0x100], [0; 0x100]);
    assert!(matches!(
        e.sim.function().events().last(),
        Some(PciEvent::Dma {
            fault: DmaFault::BusMasterDisabled,
            write: false,
            ..
        })
    ));
    e.f.set_bus_master(true).unwrap();
    e.dma(pa, EDU_BUFFER.0, 0x100, 0);
    assert_eq!(e.sim.buffer()[..0x100], [0x42; 0x100]);
    // A function reset clears the device (buffer included) and bus mastering.
    e.f.reset().unwrap();
    assert_eq!(e.sim.buffer(), vec![0; 0x1000]);
    e.dma(pa, EDU_BUFFER.0, 0x100, 0);
    assert_eq!(e.sim.buffer()[..0x100], [0; 0x100]);
}
