//! The VFIO backend's checks that need no VFIO: PCI addresses, the sysfs checks against a
//! fake tree (missing function, no IOMMU group, not bound to vfio-pci), the type1 info
//! capability chain decoded from bytes (including malformed chains), and opening VFIO on a
//! host without it. The same paths against real devices run in the guest (`guest/run`).

use dmakit::device::{PciBus, PciMatch};
use dmakit::{Error, IoReturn};
use dmakit_linux::vfio::{Container, IommuInfo, PciAddress, PciFunction, VfioBus, VfioDevice};
use dmakit_linux::Host;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A fresh, empty directory under the system's temp dir.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmakit-vfio-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fake `/sys/bus/pci/devices/<addr>` with the given driver and IOMMU group links.
fn fake_function(root: &Path, addr: &str, driver: Option<&str>, group: Option<u32>) {
    let dir = root.join(addr);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vendor"), "0x1234\n").unwrap();
    std::fs::write(dir.join("device"), "0x11e8\n").unwrap();
    std::fs::write(dir.join("class"), "0x00ff00\n").unwrap();
    std::fs::write(
        dir.join("resource"),
        "0x00000000fe900000 0x00000000fe9fffff 0x0000000000040200\n\
         0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
    )
    .unwrap();
    if let Some(d) = driver {
        symlink(format!("../../../bus/pci/drivers/{d}"), dir.join("driver")).unwrap();
    }
    if let Some(g) = group {
        symlink(
            format!("../../../kernel/iommu_groups/{g}"),
            dir.join("iommu_group"),
        )
        .unwrap();
    }
}

#[test]
fn pci_addresses_parse_and_print_like_lspci() {
    let a = PciAddress::parse("0000:00:04.0").unwrap();
    assert_eq!((a.domain, a.bus, a.device, a.function), (0, 0, 4, 0));
    assert_eq!(a.to_string(), "0000:00:04.0");
    assert_eq!(
        PciAddress::parse("3a:1f.7").unwrap().to_string(),
        "0000:3a:1f.7"
    );
    for bad in [
        "",
        "00:04",
        "0000:00:20.0",
        "0000:00:04.8",
        "x:00:04.0",
        "0:0:0:0.0",
    ] {
        assert!(
            matches!(PciAddress::parse(bad), Err(Error::BadArgument { .. })),
            "{bad:?} parsed"
        );
    }
}

#[test]
fn sysfs_view_reads_ids_class_driver_group_and_bars() {
    let root = scratch("view");
    fake_function(&root, "0000:00:05.0", Some("vfio-pci"), Some(3));
    let f = PciFunction::find(&root, PciAddress::parse("0000:00:05.0").unwrap()).unwrap();
    assert_eq!(f.ids().unwrap(), (0x1234, 0x11e8));
    assert_eq!(f.class().unwrap(), 0xff00);
    assert_eq!(f.driver().as_deref(), Some("vfio-pci"));
    assert_eq!(f.iommu_group().unwrap(), 3);
    f.check_vfio_bound().unwrap();
    assert_eq!(f.bar(0).unwrap(), Some((0xfe90_0000, 0x10_0000)));
    assert_eq!(f.bar(1).unwrap(), None, "an unused BAR");
    assert!(matches!(f.bar(9), Err(Error::OutOfBounds { .. })));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_missing_function_is_not_attached_and_says_where_it_looked() {
    let root = scratch("missing");
    let c = container_or_skip();
    let addr = PciAddress::parse("0000:00:1e.7").unwrap();
    let e = PciFunction::find(&root, addr).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_ATTACHED);
    let text = e.to_string();
    assert!(text.contains("PCI device 0000:00:1e.7"), "{text}");
    assert!(text.contains("no such PCI function"), "{text}");
    assert!(text.contains(&root.display().to_string()), "{text}");
    if let Some(c) = c {
        let e = VfioDevice::open_in(&c, &root, addr).unwrap_err();
        assert!(e.to_string().contains("no such PCI function"), "{e}");
    }
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_function_without_an_iommu_group_says_how_to_get_one() {
    let root = scratch("nogroup");
    fake_function(&root, "0000:00:04.0", Some("vfio-pci"), None);
    let f = PciFunction::find(&root, PciAddress::parse("0000:00:04.0").unwrap()).unwrap();
    let e = f.iommu_group().unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_ATTACHED);
    assert!(e.to_string().contains("has no IOMMU group"), "{e}");
    assert!(e.to_string().contains("intel_iommu=on"), "{e}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_function_on_another_driver_or_none_is_not_bound_with_the_fix() {
    let root = scratch("unbound");
    fake_function(&root, "0000:00:04.0", Some("nvme"), Some(2));
    fake_function(&root, "0000:00:1f.2", None, Some(5));
    let f = PciFunction::find(&root, PciAddress::parse("0000:00:04.0").unwrap()).unwrap();
    let e = f.check_vfio_bound().unwrap_err();
    assert_eq!(e.io_return(), IoReturn::NOT_ATTACHED);
    let text = e.to_string();
    assert!(text.contains("bound to nvme, not vfio-pci"), "{text}");
    assert!(text.contains("driver_override"), "{text}");
    assert!(text.contains("0000:00:04.0/driver/unbind"), "{text}");
    let g = PciFunction::find(&root, PciAddress::parse("0000:00:1f.2").unwrap()).unwrap();
    let text = g.check_vfio_bound().unwrap_err().to_string();
    assert!(text.contains("bound to no driver"), "{text}");
    assert!(!text.contains("unbind"), "nothing to unbind: {text}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn opening_vfio_where_there_is_none_says_which_modules_to_load() {
    let dir = scratch("nodev");
    let e = Container::open_in(&dir).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("modprobe vfio-pci"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

// ---- the bus: which functions it takes ----------------------------------------------------

#[test]
fn the_bus_takes_the_functions_bound_to_vfio_pci_in_address_order() {
    let root = scratch("bus-scan");
    // Made out of order, with other drivers, no driver, and entries that are not functions.
    fake_function(&root, "0000:01:01.0", Some("vfio-pci"), Some(9));
    fake_function(&root, "0000:00:06.0", Some("vfio-pci"), Some(4));
    fake_function(&root, "0000:00:03.0", Some("nvme"), Some(2));
    fake_function(&root, "0000:00:04.0", Some("vfio-pci"), Some(3));
    fake_function(&root, "0000:00:1f.2", None, Some(5));
    fake_function(&root, "0000:00:1f.3", Some("vfio-pci-not"), Some(6));
    std::fs::create_dir_all(root.join("not-a-function")).unwrap();
    std::fs::write(root.join("0000:00:1f.7"), "a file, not a directory").unwrap();
    let got: Vec<String> = VfioBus::scan(&root)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, ["0000:00:04.0", "0000:00:06.0", "0000:01:01.0"]);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn scanning_a_missing_sysfs_directory_is_an_error_naming_it() {
    let root = scratch("bus-missing").join("nothing-here");
    let e = VfioBus::scan(&root).unwrap_err();
    assert!(matches!(e, Error::Os { .. }), "{e}");
    assert!(e.to_string().contains("nothing-here"), "{e}");
}

#[test]
fn a_bus_with_nothing_bound_is_empty_and_find_says_how_to_bind() {
    let root = scratch("bus-empty");
    let dev = scratch("bus-empty-dev");
    fake_function(&root, "0000:00:04.0", Some("nvme"), Some(2));
    let host = Arc::new(Host::new().unwrap());
    // Nothing to open, so no container is needed (this dev dir has no VFIO).
    let bus = VfioBus::builder(host)
        .sysfs_root(&root)
        .dev_dir(&dev)
        .open()
        .unwrap();
    assert!(bus.functions().is_empty() && bus.skipped().is_empty());
    assert!(bus.mapper().is_none());
    let e = match bus.find(&PciMatch::class(0x01_08_02)) {
        Err(e) => e,
        Ok(f) => panic!("found {}", f.address()),
    };
    assert_eq!(e.io_return(), IoReturn::NOT_ATTACHED);
    assert!(e.to_string().contains("bind it to vfio-pci"), "{e}");
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(dev).unwrap();
}

#[test]
fn a_bus_with_functions_but_no_vfio_says_which_modules_to_load() {
    let root = scratch("bus-novfio");
    let dev = scratch("bus-novfio-dev");
    fake_function(&root, "0000:00:05.0", Some("vfio-pci"), Some(3));
    let host = Arc::new(Host::new().unwrap());
    for explicit in [false, true] {
        let mut b = VfioBus::builder(host.clone())
            .sysfs_root(&root)
            .dev_dir(&dev);
        if explicit {
            b = b.addresses([PciAddress::parse("0000:00:05.0").unwrap()]);
        }
        let e = b.open().unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("modprobe vfio-pci"), "{e}");
    }
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(dev).unwrap();
}

#[test]
fn vfio_addresses_are_the_seams_addresses() {
    let a = PciAddress::parse("0001:3a:1f.7").unwrap();
    let s: dmakit::device::PciAddress = a.into();
    assert_eq!((s.segment, s.bus, s.device, s.function), (1, 0x3a, 0x1f, 7));
    assert_eq!(s.to_string(), a.to_string());
    assert_eq!(PciAddress::from(s), a);
}

/// The real container when this host has VFIO; otherwise prints why the parts that need it
/// are skipped.
fn container_or_skip() -> Option<Arc<Container>> {
    match Container::open() {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            println!(
                "skipped: the VfioDevice::open_in part needs VFIO, which this host lacks: {e}"
            );
            None
        }
    }
}

// ---- the type1 info capability chain, from bytes -----------------------------------------

/// Bytes of a `vfio_iommu_type1_info` (24 bytes) with `flags`, 4 KiB|2 MiB|1 GiB pages and
/// `cap_offset`, followed by `tail`.
fn info_bytes(flags: u32, cap_offset: u32, tail: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(24 + tail.len() as u32).to_ne_bytes()); // argsz
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&0x4020_1000u64.to_ne_bytes());
    b.extend_from_slice(&cap_offset.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // pad
    b.extend_from_slice(tail);
    b
}

fn cap_header(id: u16, next: u32) -> Vec<u8> {
    let mut b = id.to_ne_bytes().to_vec();
    b.extend_from_slice(&1u16.to_ne_bytes());
    b.extend_from_slice(&next.to_ne_bytes());
    b
}

/// The chain QEMU's VT-d gives: IOVA ranges (with the MSI hole), then DMA_AVAIL.
fn vtd_chain() -> Vec<u8> {
    let mut ranges = cap_header(1, 24 + 48); // IOVA_RANGE, next → DMA_AVAIL
    ranges.extend_from_slice(&2u32.to_ne_bytes()); // nr_iovas
    ranges.extend_from_slice(&0u32.to_ne_bytes()); // reserved
    for (s, e) in [(0u64, 0xfedf_ffffu64), (0xfef0_0000, 0x7f_ffff_ffff)] {
        ranges.extend_from_slice(&s.to_ne_bytes());
        ranges.extend_from_slice(&e.to_ne_bytes());
    }
    assert_eq!(ranges.len(), 48);
    let mut avail = cap_header(3, 0);
    avail.extend_from_slice(&65535u32.to_ne_bytes());
    ranges.extend_from_slice(&avail);
    info_bytes(1 | 2, 24, &ranges)
}

#[test]
fn the_vtd_capability_chain_decodes_to_ranges_page_sizes_and_mapping_count() {
    let info = IommuInfo::parse(&vtd_chain()).unwrap();
    assert_eq!(info.page_sizes, 0x4020_1000);
    assert_eq!(info.min_page_size(), 0x1000);
    assert_eq!(
        info.iova_ranges,
        vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]
    );
    assert_eq!(info.dma_avail, Some(65535));
    assert!(info.contains(0x1000, 0x1000));
    assert!(
        !info.contains(0xfee0_0000, 0x1000),
        "the MSI window is a hole"
    );
    assert!(
        !info.contains(0xfedf_f000, 0x2000),
        "a range may not straddle the hole"
    );
    assert!(info.contains(0x7f_ffff_f000, 0x1000));
    assert!(
        !info.contains(0x80_0000_0000, 0x1000),
        "above the address width"
    );
    assert!(!info.contains(0x1000, 0), "an empty range is in no range");
}

#[test]
fn no_chain_means_the_whole_space_and_unknown_capabilities_are_skipped() {
    let info = IommuInfo::parse(&info_bytes(1, 0, &[])).unwrap();
    assert_eq!(info.iova_ranges, vec![(0, u64::MAX)]);
    assert_eq!(info.dma_avail, None);
    // A migration capability (id 2) alone: skipped.
    let mut mig = cap_header(2, 0);
    mig.extend_from_slice(&[0u8; 24]);
    let info = IommuInfo::parse(&info_bytes(3, 24, &mig)).unwrap();
    assert_eq!(info.iova_ranges, vec![(0, u64::MAX)]);
}

#[test]
fn malformed_chains_are_errors_not_panics() {
    // cap_offset past the end.
    let e = IommuInfo::parse(&info_bytes(3, 200, &[])).unwrap_err();
    assert!(matches!(e, Error::OutOfBounds { .. }), "{e}");
    // A capability that points at itself.
    let mut looped = cap_header(3, 24);
    looped.extend_from_slice(&1u32.to_ne_bytes());
    let e = IommuInfo::parse(&info_bytes(3, 24, &looped)).unwrap_err();
    assert!(e.to_string().contains("loops"), "{e}");
    // An offset into the info header itself.
    let e = IommuInfo::parse(&info_bytes(3, 8, &[])).unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }), "{e}");
    // More ranges claimed than bytes present.
    let mut short = cap_header(1, 0);
    short.extend_from_slice(&5u32.to_ne_bytes());
    short.extend_from_slice(&0u32.to_ne_bytes());
    short.extend_from_slice(&[0u8; 16]);
    let e = IommuInfo::parse(&info_bytes(3, 24, &short)).unwrap_err();
    assert!(matches!(e, Error::OutOfBounds { .. }), "{e}");
    // A range that ends before it starts.
    let mut rev = cap_header(1, 0);
    rev.extend_from_slice(&1u32.to_ne_bytes());
    rev.extend_from_slice(&0u32.to_ne_bytes());
    rev.extend_from_slice(&0x2000u64.to_ne_bytes());
    rev.extend_from_slice(&0x1000u64.to_ne_bytes());
    let e = IommuInfo::parse(&info_bytes(3, 24, &rev)).unwrap_err();
    assert!(e.to_string().contains("ends before it starts"), "{e}");
    // Truncated before the flags.
    assert!(IommuInfo::parse(&[0u8; 3]).is_err());
}
