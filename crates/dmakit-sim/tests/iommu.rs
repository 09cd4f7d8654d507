//! The simulated IOMMU and dmakit's IommuMapper: stale IOTLB entries, the fault log, and
//! scattered pages as one IO segment.

use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
use dmakit::mapper::{Access, IommuHardware, IommuMapper, Mapper};
use dmakit::{Direction, Error, IoAddr, PhysAddr};
use dmakit_sim::{FaultKind, Machine, MachineBuilder, SimIommu};
use std::sync::Arc;

fn setup() -> (Arc<Machine>, Arc<SimIommu>) {
    let m = Arc::new(
        MachineBuilder::new()
            .seed(31)
            .fragmentation(0.9)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    (m, iommu)
}

fn page_with(m: &Arc<Machine>, bytes: &[u8]) -> (BufferMemoryDescriptor<Arc<Machine>>, PhysAddr) {
    let b = BufferMemoryDescriptor::with_bytes(m.clone(), bytes, Direction::InOut).unwrap();
    let pa = b.physical_segment(0).unwrap().addr;
    (b, pa)
}

#[test]
fn the_stale_iotlb_hazard_exists_in_the_hardware() {
    let (m, iommu) = setup();
    let (_a, pa1) = page_with(&m, b"old page");
    let (_b, pa2) = page_with(&m, b"new page");
    let iova = IoAddr(0x1_0000_0000);
    iommu.set_entry(iova, Some((pa1, Access::READ))).unwrap();
    let mut v = [0u8; 8];
    iommu.device_read(iova, &mut v).unwrap();
    assert_eq!(&v, b"old page");
    // Remap without invalidating: the device still uses the cached translation.
    iommu.set_entry(iova, None).unwrap();
    iommu.set_entry(iova, Some((pa2, Access::READ))).unwrap();
    iommu.device_read(iova, &mut v).unwrap();
    assert_eq!(
        &v, b"old page",
        "stale IOTLB entry: the device reads memory it no longer owns"
    );
    iommu.invalidate(iova, 4096).unwrap();
    iommu.device_read(iova, &mut v).unwrap();
    assert_eq!(&v, b"new page");
}

#[test]
fn the_strict_mapper_closes_the_hazard() {
    let (m, iommu) = setup();
    let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 20).unwrap();
    let (_a, pa1) = page_with(&m, b"secret!!");
    let iova = mapper.iovm_alloc(1).unwrap();
    mapper.iovm_insert_page(iova, pa1, Access::READ).unwrap();
    let mut v = [0u8; 8];
    iommu.device_read(iova, &mut v).unwrap();
    assert_eq!(&v, b"secret!!");
    mapper.iovm_free(iova, 1).unwrap();
    // The translation is gone from the IOTLB too: the device faults.
    assert!(iommu.device_read(iova, &mut v).is_err());
    assert_eq!(iommu.faults().last().unwrap().kind, FaultKind::NotPresent);
    assert_eq!(mapper.usage(), (0, 0));
}

#[test]
fn a_lazy_mapper_never_reuses_an_address_before_invalidation() {
    let (m, iommu) = setup();
    // Room for two pages only.
    let mapper = IommuMapper::new_lazy(iommu.clone(), 0x2_0000_0000, 2 * 4096).unwrap();
    let (_a, pa1) = page_with(&m, b"first!!!");
    let (_b, pa2) = page_with(&m, b"second!!");
    let x = mapper.iovm_alloc(1).unwrap();
    mapper.iovm_insert_page(x, pa1, Access::READ).unwrap();
    let mut v = [0u8; 8];
    iommu.device_read(x, &mut v).unwrap();
    mapper.iovm_free(x, 1).unwrap();
    assert_eq!(mapper.pending(), 1);
    let before = iommu.invalidations();
    let y = mapper.iovm_alloc(1).unwrap();
    assert_ne!(y, x, "a freed address waits for its invalidation");
    assert_eq!(iommu.invalidations(), before, "no invalidation needed yet");
    // The space is now exhausted but for x: allocating again drains the queue first.
    let z = mapper.iovm_alloc(1).unwrap();
    assert_eq!(z, x);
    assert!(iommu.invalidations() > before);
    mapper.iovm_insert_page(z, pa2, Access::READ).unwrap();
    iommu.device_read(z, &mut v).unwrap();
    assert_eq!(
        &v, b"second!!",
        "the reused address sees its new page, never the old one"
    );
    mapper.iovm_free(y, 1).unwrap();
    mapper.iovm_free(z, 1).unwrap();
    mapper.flush().unwrap();
    assert_eq!(mapper.pending(), 0);
}

#[test]
fn accesses_outside_mappings_or_permissions_are_logged_faults() {
    let (m, iommu) = setup();
    let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 20).unwrap();
    let (_a, pa) = page_with(&m, b"readonly");
    let iova = mapper.iovm_alloc(2).unwrap();
    mapper.iovm_insert_page(iova, pa, Access::READ).unwrap();
    assert!(iommu.device_write(iova, b"x").is_err());
    let mut v = [0u8; 4];
    assert!(
        iommu.device_read(IoAddr(iova.0 + 4096), &mut v).is_err(),
        "second page never inserted"
    );
    assert!(iommu.device_read(IoAddr(0xdead_0000), &mut v).is_err());
    let f = iommu.faults();
    assert_eq!(f.len(), 3);
    assert_eq!((f[0].kind, f[0].write), (FaultKind::WriteDenied, true));
    assert_eq!(f[1].kind, FaultKind::NotPresent);
    assert_eq!(f[2].iova, IoAddr(0xdead_0000));
    // The refused write changed nothing.
    let mut back = [0u8; 8];
    iommu.device_read(iova, &mut back).unwrap();
    assert_eq!(&back, b"readonly");
}

#[test]
fn scattered_pages_become_one_io_segment() {
    let (m, iommu) = setup();
    let mapper = IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 24).unwrap();
    let data: Vec<u8> = (0..16 * 4096).map(|i| (i % 253) as u8).collect();
    let b = BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::Out).unwrap();
    let mut runs = 0;
    let mut off = 0;
    while off < b.length() {
        off += b.physical_segment(off).unwrap().len;
        runs += 1;
    }
    assert!(runs > 4, "the buffer is physically scattered ({runs} runs)");
    let iova = mapper.iovm_alloc(16).unwrap();
    for i in 0..16u64 {
        let pa = b.physical_segment(i * 4096).unwrap().addr;
        mapper
            .iovm_insert_page(IoAddr(iova.0 + i * 4096), pa, Access::READ)
            .unwrap();
    }
    let mut seen = vec![0u8; data.len()];
    iommu.device_read(iova, &mut seen).unwrap();
    assert_eq!(
        seen, data,
        "one contiguous IO segment, the buffer's bytes in order"
    );
    assert_eq!(
        mapper.translate(IoAddr(iova.0 + 5 * 4096 + 7)).unwrap().0,
        PhysAddr(b.physical_segment(5 * 4096).unwrap().addr.0 + 7)
    );
    mapper.iovm_free(iova, 16).unwrap();
}

#[test]
fn mapper_misuse_is_refused() {
    let (_m, iommu) = setup();
    let mapper = IommuMapper::new(iommu, 0x1_0000_0000, 1 << 20).unwrap();
    assert!(matches!(mapper.iovm_alloc(0), Err(Error::ZeroSize { .. })));
    assert!(matches!(
        mapper.iovm_alloc(1 << 40),
        Err(Error::NoSpace { .. })
    ));
    let a = mapper.iovm_alloc(2).unwrap();
    assert!(matches!(
        mapper.iovm_free(a, 1),
        Err(Error::WrongSize { .. })
    ));
    assert!(matches!(
        mapper.iovm_free(IoAddr(a.0 + 4096), 1),
        Err(Error::NotAllocated { .. })
    ));
    assert!(matches!(
        mapper.iovm_insert_page(IoAddr(0), PhysAddr(0x10_0000), Access::READ),
        Err(Error::BadArgument { .. })
    ));
    assert!(matches!(
        mapper.iovm_insert_page(IoAddr(a.0 + 1), PhysAddr(0x10_0000), Access::READ),
        Err(Error::NotAligned { .. })
    ));
    assert!(matches!(mapper.translate(a), Err(Error::NotMapped { .. })));
    assert!(IommuMapper::new(
        SimIommu::new(Arc::new(MachineBuilder::new().build().unwrap())),
        0x1001,
        4096
    )
    .is_err());
}

/// A mapped preparation maps exactly the IO pages its bytes span, each to the buffer's own
/// physical page, and nothing past them: one page for a page, two for a page's worth of
/// bytes across a page boundary, one per page of a scattered buffer (its runs laid out one
/// after another); completing unmaps them all.
#[test]
fn a_mapped_preparation_maps_exactly_its_pages() {
    use dmakit::descriptor::BufferOptions;
    use dmakit::dma::{DmaCommand, MappingMode, PrepareOptions, SegmentSpec};
    let (m, iommu) = setup();
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 24).unwrap());
    let contiguous = BufferOptions::new(0x4000, Direction::Out).contiguous(true);
    let one_run: Arc<dyn MemoryDescriptor> =
        Arc::new(BufferMemoryDescriptor::new(m.clone(), contiguous).unwrap());
    let data = vec![7u8; 16 * 4096];
    let scattered: Arc<dyn MemoryDescriptor> =
        Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::Out).unwrap());
    let cases = [
        (one_run.clone(), 0u64, 0x1000u64, 1usize),
        (one_run.clone(), 0x800, 0x1000, 2),
        (one_run, 0x10, 0x3ff0, 4),
        (scattered, 0, 16 * 4096, 16),
    ];
    for (md, offset, length, pages) in cases {
        let mut cmd = DmaCommand::builder(m.clone())
            .spec(SegmentSpec::builder().build().unwrap())
            .mode(MappingMode::Mapped(mapper.clone()))
            .build()
            .unwrap();
        cmd.set_memory_descriptor(md.clone()).unwrap();
        cmd.prepare(PrepareOptions::range(offset, length)).unwrap();
        assert_eq!(mapper.usage(), (1, pages), "{offset:#x}+{length:#x}");
        let mut at = 0;
        for seg in cmd.segments() {
            let seg = seg.unwrap();
            for x in (0..seg.len).step_by(0x200) {
                let want = md.physical_segment(offset + at + x).unwrap().addr;
                let got = mapper.translate(IoAddr(seg.addr.0 + x)).unwrap().0;
                assert_eq!(got, want, "IO {:#x}", seg.addr.0 + x);
            }
            at += seg.len;
            let past = (seg.addr.0 + seg.len).next_multiple_of(0x1000);
            if at == length {
                assert!(
                    mapper.translate(IoAddr(past)).is_err(),
                    "mapped past the end"
                );
            }
        }
        assert_eq!(at, length);
        cmd.complete().unwrap();
        assert_eq!(mapper.usage(), (0, 0));
    }
}

/// A mapped prepare whose mapping fails (the IOMMU refuses a page-table entry) and cannot
/// be undone (it refuses the IOTLB invalidation that would end the pages written, twice):
/// the prepare fails naming the IO range left live, and the memory stays wired, held by the
/// device's quarantine, instead of being freed under a translation the device may still
/// use. Once the IOMMU answers, quiescing the device frees everything. When only one
/// invalidation is refused, the prepare's own clean-up frees the range: nothing is left.
/// Over one physical run, scattered pages and a bounce buffer.
#[test]
fn a_mapping_that_cannot_be_undone_keeps_its_memory() {
    use dmakit::descriptor::BufferOptions;
    use dmakit::dma::{BouncePool, DmaCommand, MappingMode, PrepareOptions, Quarantine};
    use dmakit_sim::IommuFaultSite::{Entry, Invalidate};
    let layouts = [(true, false), (false, false), (true, true)];
    for (refused, (contiguous, bounced)) in [1, 2].into_iter().flat_map(|r| layouts.map(|l| (r, l)))
    {
        let case = format!("contiguous {contiguous}, bounced {bounced}, {refused} refused");
        let (m, iommu) = setup();
        let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x1_0000_0000, 1 << 24).unwrap());
        let pool = Arc::new(BouncePool::new(m.clone(), "left-mapped test", 1 << 20));
        pool.set_force_bounce(bounced);
        let q = Quarantine::new("left-mapped test device");
        let opts = BufferOptions::new(0x4000, Direction::Out).contiguous(contiguous);
        let md = Arc::new(BufferMemoryDescriptor::new(m.clone(), opts).unwrap());
        let mut cmd = DmaCommand::builder(m.clone())
            .mode(MappingMode::Mapped(mapper.clone()))
            .bounce_pool(pool.clone())
            .quarantine(q.clone())
            .build()
            .unwrap();
        cmd.set_memory_descriptor(md.clone()).unwrap();
        let wired = m.stats().wired_pages;
        iommu.inject(Entry, iommu.calls(Entry) + 2);
        for k in 1..=refused {
            iommu.inject(Invalidate, iommu.calls(Invalidate) + k);
        }
        let e = cmd.prepare(PrepareOptions::new()).unwrap_err();
        assert_eq!(cmd.prepare_count(), 0, "{case}");
        let Error::LeftMapped {
            iova, pages, cause, ..
        } = e
        else {
            panic!("{case}: not LeftMapped: {e}");
        };
        assert_eq!(cause, e.io_return());
        assert_eq!(
            cause,
            dmakit::IoReturn::VM_ERROR,
            "{case}: the injected entry"
        );
        if refused == 1 {
            // The prepare's second try freed the range.
            assert_eq!(mapper.usage(), (0, 0), "{case}: the IO range is freed");
            assert_eq!(q.live(), 0, "{case}");
            assert_eq!(pool.stats().in_use, 0, "{case}");
            assert_eq!(m.stats().wired_pages, wired, "{case}");
            continue;
        }
        assert_eq!(mapper.usage().0, 1, "{case}: the range is still allocated");
        assert!(mapper.usage().1 <= pages as usize);
        assert!(iova >= 0x1_0000_0000, "{case}");
        assert_eq!(q.live(), 1, "{case}: the preparation is held");
        assert_eq!(q.held(), 1, "{case}");
        assert!(
            m.stats().wired_pages >= wired,
            "{case}: the memory stays wired"
        );
        assert_eq!(
            pool.stats().in_use > 0,
            bounced,
            "{case}: the bounce buffer is kept"
        );
        iommu.clear_faults();
        assert_eq!(q.quiesced().unwrap(), 1, "{case}");
        assert_eq!(mapper.usage(), (0, 0), "{case}");
        assert_eq!(q.live(), 0, "{case}");
        assert_eq!(pool.stats().in_use, 0, "{case}");
        assert_eq!(iommu.table_entries(), 0, "{case}");
        cmd.prepare(PrepareOptions::new()).unwrap();
        cmd.complete().unwrap();
    }
}
