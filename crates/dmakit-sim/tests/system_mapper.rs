//! The system mapper and its page-number accessors (IOMapper::gSystem, IOMapperIOVMAlloc,
//! IOMapperIOVMFree, IOMapperInsertPage) and copyMapperForDevice, over the simulated IOMMU.

use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
use dmakit::mapper::{Access, IommuMapper, Mapper, MapperRegistry, SharedMapper};
use dmakit::{Direction, Error, IoAddr, IoReturn};
use dmakit_sim::{FaultKind, Machine, MachineBuilder, SimIommu};
use std::sync::Arc;

fn setup() -> (Arc<Machine>, Arc<SimIommu>) {
    let m = Arc::new(
        MachineBuilder::new()
            .seed(77)
            .fragmentation(0.9)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    (m, iommu)
}

fn mapper(iommu: &Arc<SimIommu>, base: u64) -> Arc<IommuMapper<Arc<SimIommu>>> {
    Arc::new(IommuMapper::new(iommu.clone(), base, 0x100_0000).unwrap())
}

#[test]
fn without_a_system_mapper_pages_are_physical() {
    let r = MapperRegistry::new();
    // Undecided: an error, not a wait and not a guess.
    assert!(!r.is_decided());
    assert!(matches!(r.system_mapper(), Err(Error::NotReady { .. })));
    assert!(matches!(r.iovm_alloc_pages(1), Err(Error::NotReady { .. })));
    assert!(matches!(
        r.insert_page(5, 0, 9),
        Err(Error::NotReady { .. })
    ));
    r.set_system_mapper(None).unwrap();
    assert!(r.is_decided());
    assert!(r.system_mapper().unwrap().is_none());
    // IOKit returns 0 from IOMapperIOVMAlloc here.
    let e = r.iovm_alloc_pages(4).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::UNSUPPORTED);
    // Identity, even for base 0, and free is a no-op.
    assert_eq!(r.insert_page(0, 3, 0x1234).unwrap(), 0x1234);
    assert_eq!(r.insert_page(7, 1, 0x42).unwrap(), 0x42);
    r.iovm_free_pages(7, 4).unwrap();
    // Decided once.
    assert!(matches!(r.set_system_mapper(None), Err(Error::Busy { .. })));
}

#[test]
fn with_a_system_mapper_inserted_pages_reach_the_device() {
    let (m, iommu) = setup();
    let sys = mapper(&iommu, 0x1_0000_0000);
    let r = MapperRegistry::with_system_mapper(Some(sys.clone() as SharedMapper));
    let buf =
        BufferMemoryDescriptor::with_bytes(m.clone(), &[0x5Au8; 4096], Direction::InOut).unwrap();
    let pa = buf.physical_segment(0).unwrap().addr;
    assert_eq!(pa.0 % 4096, 0);

    let base = r.iovm_alloc_pages(4).unwrap();
    let (start, size) = sys.window();
    assert!((start.0..start.0 + size).contains(&((base as u64) << 12)));
    // Nothing is mapped yet: the device faults.
    let mut v = [0u8; 4];
    assert!(iommu
        .device_read(IoAddr((base as u64 + 2) << 12), &mut v)
        .is_err());
    assert_eq!(
        iommu.faults().last().map(|f| f.kind),
        Some(FaultKind::NotPresent)
    );

    let io_page = r.insert_page(base, 2, (pa.0 >> 12) as u32).unwrap();
    assert_eq!(io_page, base + 2);
    let iova = IoAddr((io_page as u64) << 12);
    assert_eq!(sys.translate(iova).unwrap(), (pa, Access::READ_WRITE));
    iommu.device_read(IoAddr(iova.0 + 8), &mut v).unwrap();
    assert_eq!(v, [0x5A; 4], "the device reads the physical page");
    iommu.device_write(iova, b"dev!").unwrap();
    let mut back = [0u8; 4];
    assert_eq!(buf.read_bytes(0, &mut back), back.len());
    assert_eq!(&back, b"dev!", "and writes it");

    // IOKit panics on base 0; an allocation's outside is the mapper's error.
    assert!(matches!(
        r.insert_page(0, 2, 1),
        Err(Error::BadArgument { value: 0, .. })
    ));
    assert!(matches!(
        r.insert_page(base, 1000, 1),
        Err(Error::BadArgument { .. })
    ));
    assert!(matches!(
        r.insert_page(u32::MAX, 1, 1),
        Err(Error::Overflow { .. })
    ));
    // Free needs the allocation's page count; then the device loses access.
    assert!(matches!(
        r.iovm_free_pages(base, 3),
        Err(Error::WrongSize { .. })
    ));
    r.iovm_free_pages(base, 4).unwrap();
    assert!(sys.translate(iova).is_err());
    assert!(iommu.device_read(iova, &mut v).is_err());
    assert!(matches!(
        r.iovm_free_pages(base, 4),
        Err(Error::NotAllocated { .. })
    ));
    assert_eq!(sys.usage(), (0, 0));
    // The mapper's own refusals come through.
    assert!(matches!(r.iovm_alloc_pages(0), Err(Error::ZeroSize { .. })));
    assert!(matches!(
        r.iovm_alloc_pages(u32::MAX),
        Err(Error::NoSpace { .. })
    ));
}

#[test]
fn page_numbers_iokit_cannot_express_are_refused_and_given_back() {
    let (_m, iommu) = setup();
    // A window whose page numbers do not fit 32 bits.
    let high = mapper(&iommu, 1 << 46);
    let r = MapperRegistry::with_system_mapper(Some(high.clone() as SharedMapper));
    assert!(matches!(r.iovm_alloc_pages(1), Err(Error::Overflow { .. })));
    assert_eq!(high.usage(), (0, 0), "the allocation was given back");
    // A window of two pages at IO address 0: page 0 means failure in IOKit's interface.
    let low = Arc::new(IommuMapper::new(iommu.clone(), 0, 0x2000).unwrap());
    let r = MapperRegistry::with_system_mapper(Some(low.clone() as SharedMapper));
    assert!(matches!(
        r.iovm_alloc_pages(2),
        Err(Error::BadArgument { .. })
    ));
    assert_eq!(low.usage(), (0, 0));
}

#[test]
fn devices_find_their_mapper_by_iommu_parent() {
    let (_m, iommu) = setup();
    let a = mapper(&iommu, 0x1_0000_0000);
    let b = mapper(&iommu, 0x2_0000_0000);
    let r = MapperRegistry::with_system_mapper(None);
    r.register_mapper(0x10, a.clone()).unwrap();
    r.register_mapper(0x20, b.clone()).unwrap();
    assert!(matches!(
        r.register_mapper(0x10, b.clone()),
        Err(Error::BadArgument { value: 0x10, .. })
    ));
    // No property: no IOMMU of its own.
    assert!(r.copy_mapper_for_device(&[], 0).unwrap().is_none());
    let got = r.copy_mapper_for_device(&[0x20, 0x10], 1).unwrap().unwrap();
    let iova = got.iovm_alloc(1).unwrap();
    assert_eq!(iova.0 >> 32, 1, "index 1 is mapper 0x10, at 4 GiB");
    got.iovm_free(iova, 1).unwrap();
    let got = r.copy_mapper_for_device(&[0x20, 0x10], 0).unwrap().unwrap();
    assert_eq!(
        got.iovm_alloc(1).unwrap().0 >> 32,
        2,
        "mapper 0x20, at 8 GiB"
    );
    // Past the list, or naming nothing: errors, not panics.
    assert!(matches!(
        r.copy_mapper_for_device(&[0x20], 1),
        Err(Error::OutOfBounds {
            offset: 1,
            limit: 1,
            ..
        })
    ));
    assert!(matches!(
        r.copy_mapper_for_device(&[0x30], 0),
        Err(Error::NotAttached { .. })
    ));
    r.unregister_mapper(0x20).unwrap();
    assert!(matches!(
        r.copy_mapper_for_device(&[0x20], 0),
        Err(Error::NotAttached { .. })
    ));
    assert!(r.unregister_mapper(0x20).is_err());
}
