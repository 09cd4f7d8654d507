//! Hostile devices: a PCI function whose model DMAs wherever it likes — outside the
//! segments it was given, after `complete`, through IO addresses freed but not yet
//! invalidated, through a stale IOTLB entry.
//!
//! Behind an IOMMU, memory outside what the device was given is never written: the IOMMU
//! faults the access, its fault log has the IO address, and the function's own event log
//! (the function is the device) records the address and the IOMMU fault. On the bypass path
//! there is nothing to stop it: the tests marked *documented risk* assert that the
//! corruption happens, so the risk stays visible.

use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
use dmakit::device::{DmaView, PciFunction, PciId};
use dmakit::dma::{
    CompletionSource, DmaCommand, DmaController, DmaTransfer, IoSegment, MappingMode,
    PrepareOptions, SegmentSpec,
};
use dmakit::mapper::{Access, IommuHardware, IommuMapper, Mapper};
use dmakit::platform::{PageRequest, PhysicalMemory, Width};
use dmakit::{Direction, Error, IoAddr};
use dmakit_sim::pci::{
    BarSpec, DeviceConfig, DeviceContext, DmaFault, DmaMode, FunctionConfig, PciDeviceModel,
    PciEvent, SimPciBus, SimPciFunction,
};
use dmakit_sim::{FaultKind, Machine, MachineBuilder, SimDmaEngine, SimIommu};
use std::sync::Arc;

type M = Arc<Machine>;

/// A device that does nothing by itself; the test makes it DMA wherever it wants.
struct Rogue;

impl PciDeviceModel for Rogue {
    fn name(&self) -> &str {
        "rogue0"
    }
    fn config(&self) -> DeviceConfig {
        DeviceConfig::new(PciId {
            vendor: 0x1d0f,
            device: 0xbad,
            class: 0x0b4000,
        })
        .bar(0, BarSpec::mem32(0x1000))
    }
    fn bar_read(&mut self, _: &mut DeviceContext<'_>, _: u8, _: u64, _: Width) -> u64 {
        0
    }
    fn bar_write(&mut self, _: &mut DeviceContext<'_>, _: u8, _: u64, _: Width, _: u64) {}
    fn reset(&mut self) {}
}

struct Rig {
    m: M,
    f: Arc<SimPciFunction>,
}

impl Rig {
    fn new(seed: u64, dma: DmaMode) -> Rig {
        let m: M = Arc::new(
            MachineBuilder::new()
                .seed(seed)
                .fragmentation(0.7)
                .coherent(true)
                .build()
                .unwrap(),
        );
        let bus = SimPciBus::new(m.clone()).unwrap();
        let f = bus
            .add(Box::new(Rogue), FunctionConfig::new().dma(dma))
            .unwrap();
        f.set_bus_master(true).unwrap();
        Rig { m, f }
    }

    /// A command for this device's DMA view (mapped through its IOMMU domain, or bypass).
    fn command(&self, md: Arc<dyn MemoryDescriptor>) -> DmaCommand<M> {
        let mode = match self.f.dma() {
            DmaView::Mapped(mapper) => MappingMode::Mapped(mapper),
            _ => MappingMode::Bypassed,
        };
        let mut c = DmaCommand::builder(self.m.clone())
            .spec(SegmentSpec::builder().build().unwrap())
            .mode(mode)
            .build()
            .unwrap();
        c.set_memory_descriptor(md).unwrap();
        c
    }

    /// The device writes `data` at device address `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaFault> {
        self.f
            .with_device::<Rogue, _>(|_, ctx| ctx.dma_write(addr, data))
            .unwrap()
    }

    /// The device reads `len` bytes at device address `addr`.
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, DmaFault> {
        let mut buf = vec![0u8; len];
        self.f
            .with_device::<Rogue, _>(|_, ctx| ctx.dma_read(addr, &mut buf))
            .unwrap()?;
        Ok(buf)
    }

    /// The fault report for `addr`: the device's name, and the IOMMU's and the
    /// function's records of that address.
    fn assert_reported(&self, addr: u64, write: bool) {
        let iommu = self.f.iommu().unwrap();
        assert!(
            iommu
                .faults()
                .iter()
                .any(|f| f.iova == IoAddr(addr) && f.write == write),
            "the IOMMU's fault log has {addr:#x}: {:?}",
            iommu.faults()
        );
        let events = self.f.events();
        let hit = events.iter().any(|e| {
            matches!(e, PciEvent::Dma { addr: a, write: w, fault: DmaFault::Iommu, .. }
                if *a == addr && *w == write)
        });
        assert!(
            hit,
            "device {} logged no IOMMU fault at {addr:#x}: {events:?}",
            self.f.name()
        );
        assert_eq!(self.f.name(), "rogue0", "the report names the device");
    }
}

fn buffer(m: &M, len: u64, byte: u8, dir: Direction) -> Arc<BufferMemoryDescriptor<M>> {
    Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &vec![byte; len as usize], dir).unwrap())
}

fn contents(md: &dyn MemoryDescriptor) -> Vec<u8> {
    let mut b = vec![0u8; md.length() as usize];
    assert_eq!(md.read_bytes(0, &mut b), b.len());
    b
}

fn segments(c: &DmaCommand<M>) -> Vec<IoSegment> {
    c.segments().collect::<dmakit::Result<_>>().unwrap()
}

#[test]
fn iommu_a_device_writing_outside_its_segments_faults_and_nothing_else_changes() {
    let rig = Rig::new(1, DmaMode::DEFAULT_IOMMU);
    let given = buffer(&rig.m, 0x3000, 0x11, Direction::InOut);
    let neighbour = buffer(&rig.m, 0x3000, 0x22, Direction::InOut);
    let read_only = buffer(&rig.m, 0x1000, 0x33, Direction::Out);
    let mut c = rig.command(given.clone());
    let mut r = rig.command(read_only.clone());
    c.prepare(PrepareOptions::new()).unwrap();
    r.prepare(PrepareOptions::new()).unwrap();
    let seg = segments(&c)[0];
    assert_eq!(seg.len, 0x3000, "one IO segment");
    // Inside: fine.
    rig.write(seg.addr.0, &[0x44; 0x3000]).unwrap();
    // Past the end, before the start, at the neighbour's physical address taken as an IO
    // address, at IO address 0, and a write to memory mapped for device reads only.
    let neighbour_pa = neighbour.physical_segment(0).unwrap().addr.0;
    let ro = segments(&r)[0].addr.0;
    for (addr, why) in [
        (seg.addr.0 + seg.len, "one byte past the segment"),
        (seg.addr.0 - 0x1000, "the page before the segment"),
        (neighbour_pa, "another buffer's physical address"),
        (0, "IO address 0"),
        (ro, "memory mapped for device reads only"),
    ] {
        let e = rig.write(addr, &[0xEE; 64]).unwrap_err();
        assert_eq!(e, DmaFault::Iommu, "{why}");
        rig.assert_reported(addr, true);
    }
    let kinds: Vec<FaultKind> = rig
        .f
        .iommu()
        .unwrap()
        .faults()
        .iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(
        kinds.last(),
        Some(&FaultKind::WriteDenied),
        "read-only is its own kind"
    );
    c.complete().unwrap();
    r.complete().unwrap();
    assert_eq!(contents(&*given), vec![0x44; 0x3000]);
    assert_eq!(contents(&*neighbour), vec![0x22; 0x3000], "never corrupted");
    assert_eq!(contents(&*read_only), vec![0x33; 0x1000], "never corrupted");
}

#[test]
fn iommu_a_device_writing_after_complete_faults_and_the_memory_keeps_its_bytes() {
    let rig = Rig::new(2, DmaMode::DEFAULT_IOMMU);
    let given = buffer(&rig.m, 0x4000, 0x11, Direction::In);
    let mut c = rig.command(given.clone());
    c.prepare(PrepareOptions::new()).unwrap();
    let seg = segments(&c)[0];
    rig.write(seg.addr.0, &[0x55; 0x4000]).unwrap();
    c.complete().unwrap();
    // The device keeps the old addresses and writes again; its IOTLB held them.
    for off in [0, 0x1000, 0x3ff0] {
        assert_eq!(
            rig.write(seg.addr.0 + off, &[0xEE; 16]),
            Err(DmaFault::Iommu)
        );
        rig.assert_reported(seg.addr.0 + off, true);
    }
    assert!(rig.read(seg.addr.0, 16).is_err(), "nor can it read");
    assert_eq!(
        contents(&*given),
        vec![0x55; 0x4000],
        "the CPU's memory again"
    );
    // The memory goes back and is handed out again: still out of the device's reach.
    drop(c);
    drop(given);
    let reuse = buffer(&rig.m, 0x4000, 0x66, Direction::InOut);
    assert_eq!(rig.write(seg.addr.0, &[0xEE; 0x4000]), Err(DmaFault::Iommu));
    assert_eq!(contents(&*reuse), vec![0x66; 0x4000]);
}

#[test]
fn iommu_a_stale_iotlb_entry_is_never_used_after_the_mapper_frees() {
    let rig = Rig::new(3, DmaMode::DEFAULT_IOMMU);
    let iommu = rig.f.iommu().unwrap();
    let old = buffer(&rig.m, 0x1000, 0x11, Direction::InOut);
    let mut c = rig.command(old.clone());
    c.prepare(PrepareOptions::new()).unwrap();
    let iova = segments(&c)[0].addr.0;
    assert_eq!(rig.read(iova, 8).unwrap(), vec![0x11; 8]);
    assert!(iommu.iotlb_entries() > 0, "the translation is cached");
    c.complete().unwrap();
    assert_eq!(iommu.iotlb_entries(), 0, "complete invalidated it");
    // The IO address is reused for other memory: the device reaches the new memory
    // (which it was given), never the old.
    let new = buffer(&rig.m, 0x1000, 0x22, Direction::InOut);
    let mut c2 = rig.command(new.clone());
    c2.prepare(PrepareOptions::new()).unwrap();
    let iova2 = segments(&c2)[0].addr.0;
    rig.write(iova, &[0x77; 0x1000]).unwrap_or(());
    c2.complete().unwrap();
    assert_eq!(
        contents(&*old),
        vec![0x11; 0x1000],
        "the old page never changed"
    );
    if iova2 == iova {
        assert_eq!(
            contents(&*new),
            vec![0x77; 0x1000],
            "the address now means `new`"
        );
    } else {
        assert_eq!(contents(&*new), vec![0x22; 0x1000]);
        rig.assert_reported(iova, true);
    }
}

#[test]
fn raw_iommu_hardware_keeps_a_stale_entry_that_the_strict_mapper_invalidates() {
    let rig = Rig::new(4, DmaMode::DEFAULT_IOMMU);
    let m = &rig.m;
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let page = m.allocate_pages(0x1000, &PageRequest::WIRED).unwrap();
    let pa = dmakit::platform::collect_runs(&**m, dmakit::platform::Task::KERNEL, page, 0x1000)
        .unwrap()[0]
        .addr;
    // The hazard on the raw hardware: an entry cleared without an invalidation.
    iommu
        .set_entry(IoAddr(0x5000), Some((pa, Access::READ_WRITE)))
        .unwrap();
    iommu.device_write(IoAddr(0x5000), b"cached").unwrap();
    iommu.set_entry(IoAddr(0x5000), None).unwrap();
    iommu.device_write(IoAddr(0x5000), b"STALE!").unwrap();
    let mut b = [0u8; 6];
    m.read_phys(pa, &mut b).unwrap();
    assert_eq!(
        &b, b"STALE!",
        "documented: the raw IOTLB keeps the old translation"
    );
    // The mapper never lets that happen: its free invalidates before it returns.
    let mapper = IommuMapper::new(iommu.clone(), 0x10_0000, 0x10_0000).unwrap();
    let iova = mapper.iovm_alloc(1).unwrap();
    mapper
        .iovm_insert_page(iova, pa, Access::READ_WRITE)
        .unwrap();
    iommu.device_write(iova, b"mapped").unwrap();
    mapper.iovm_free(iova, 1).unwrap();
    let e = iommu.device_write(iova, b"after!").unwrap_err();
    assert!(e.to_string().contains(&format!("{:#x}", iova.0)), "{e}");
    m.read_phys(pa, &mut b).unwrap();
    assert_eq!(&b, b"mapped");
    m.free_pages(page, 0x1000).unwrap();
}

#[test]
fn iommu_lazy_quarantine_never_hands_a_freed_io_address_to_other_memory() {
    // IO addresses freed but not yet invalidated wait in the lazy mapper's flush queue.
    let rig = Rig::new(5, DmaMode::DEFAULT_IOMMU);
    let m = &rig.m;
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let lazy = Arc::new(IommuMapper::new_lazy(iommu.clone(), 0x10_0000, 0x4000).unwrap());
    let a = buffer(m, 0x2000, 0x11, Direction::InOut);
    let mut c = DmaCommand::builder(m.clone())
        .mapper(lazy.clone() as Arc<dyn Mapper>)
        .build()
        .unwrap();
    c.set_memory_descriptor(a.clone()).unwrap();
    c.prepare(PrepareOptions::new()).unwrap();
    let old = segments(&c)[0].addr;
    iommu.device_write(old, &[0x44; 16]).unwrap();
    c.complete().unwrap();
    assert_eq!(
        lazy.pending(),
        1,
        "in quarantine: unmapped, not yet invalidated"
    );
    // Other memory is mapped meanwhile: never at the quarantined addresses.
    let b = buffer(m, 0x2000, 0x22, Direction::InOut);
    let mut c2 = DmaCommand::builder(m.clone())
        .mapper(lazy.clone() as Arc<dyn Mapper>)
        .build()
        .unwrap();
    c2.set_memory_descriptor(b.clone()).unwrap();
    c2.prepare(PrepareOptions::new()).unwrap();
    let new = segments(&c2)[0].addr;
    assert!(
        new.0 >= old.0 + 0x2000 || new.0 + 0x2000 <= old.0,
        "no overlap"
    );
    // A device writing through the quarantined addresses never reaches `b`.
    let _ = iommu.device_write(old, &[0xEE; 0x2000]);
    c2.complete().unwrap();
    assert_eq!(contents(&*b), vec![0x22; 0x2000]);
    // Documented risk of lazy mode (as Linux's): until the flush the stale IOTLB entry
    // still reaches the completed buffer's first page, which the CPU owns again.
    assert_eq!(contents(&*a)[..16], [0xEE; 16]);
    lazy.flush().unwrap();
    assert!(
        iommu.device_write(old, &[0x99; 16]).is_err(),
        "after the flush: faults"
    );
    assert_eq!(contents(&*a)[..16], [0xEE; 16]);
}

#[test]
fn a_dma_engine_transfer_outside_its_mapping_fails_naming_the_address() {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(6)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x4000_0000, 0x100_0000).unwrap());
    let engine = SimDmaEngine::new(m.clone(), Some(iommu.clone())).unwrap();
    let src = buffer(&m, 0x2000, 0x11, Direction::Out);
    let victim = buffer(&m, 0x2000, 0x22, Direction::InOut);
    let mut c = DmaCommand::builder(m.clone())
        .mapper(mapper.clone() as Arc<dyn Mapper>)
        .build()
        .unwrap();
    c.set_memory_descriptor(src.clone()).unwrap();
    c.prepare(PrepareOptions::new()).unwrap();
    let s = segments(&c);
    // The destination: the victim's physical address, never mapped for this device.
    let bad = victim.physical_segment(0).unwrap().addr.0;
    let d = [IoSegment {
        addr: IoAddr(bad),
        len: 0x2000,
    }];
    let ticket = engine
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    let mut got = Vec::new();
    engine.take_completions(&mut |done| got.push(done));
    let done = got.iter().find(|x| x.ticket == ticket).unwrap();
    let e = done.status.clone().unwrap_err();
    assert!(
        matches!(e, Error::DmaFault { addr, via_iommu: true, .. } if addr == bad),
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!("{bad:#x}")),
        "names the address: {e}"
    );
    assert!(e.to_string().contains("IOMMU"), "and what refused it: {e}");
    c.complete().unwrap();
    assert_eq!(contents(&*victim), vec![0x22; 0x2000], "never corrupted");
}

#[test]
fn bypass_documented_risk_a_device_corrupts_memory_it_was_never_given() {
    let rig = Rig::new(7, DmaMode::BYPASS_64);
    let given = buffer(&rig.m, 0x1000, 0x11, Direction::InOut);
    let neighbour = buffer(&rig.m, 0x1000, 0x22, Direction::InOut);
    let mut c = rig.command(given.clone());
    c.prepare(PrepareOptions::new()).unwrap();
    let seg = segments(&c)[0];
    let victim = neighbour.physical_segment(0).unwrap().addr.0;
    // Without an IOMMU nothing stands between the device and any physical address.
    rig.write(victim, &[0xEE; 64]).unwrap();
    c.complete().unwrap();
    // After complete, the old physical address still reaches the buffer.
    rig.write(seg.addr.0, &[0xDD; 32]).unwrap();
    assert_eq!(
        contents(&*neighbour)[..64],
        [0xEE; 64],
        "documented risk: corrupted"
    );
    assert_eq!(
        contents(&*given)[..32],
        [0xDD; 32],
        "documented risk: written after complete"
    );
    assert!(
        rig.f.iommu().is_none() && rig.f.events().is_empty(),
        "and nobody noticed"
    );
}
