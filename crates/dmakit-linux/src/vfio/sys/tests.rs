//! Unit tests of the VFIO floor's pure parts: the opcodes, the argument structs' layouts
//! (the kernel's UAPI, `include/uapi/linux/vfio.h`) and the `VFIO_DEVICE_SET_IRQS` argument
//! builder. They make no system call, so Miri runs them and checks the builder's raw writes.

use super::*;
use std::mem::{offset_of, size_of};

#[test]
fn opcodes_are_io_of_vfio_type_and_base_plus_n() {
    // _IO(';', 100 + n): no direction, no size, type 0x3b in bits 8..16.
    assert_eq!(u64::from(GET_API_VERSION), 0x3b64);
    assert_eq!(u64::from(GROUP_GET_DEVICE_FD), 0x3b6a);
    assert_eq!(u64::from(DEVICE_SET_IRQS), 0x3b6e);
    assert_eq!(u64::from(IOMMU_MAP_DMA), 0x3b71);
    assert_eq!(u64::from(IOMMU_UNMAP_DMA), 0x3b72);
}

#[test]
fn argument_structs_have_the_kernels_layout() {
    assert_eq!(size_of::<vfio_group_status>(), 8);
    assert_eq!(size_of::<vfio_device_info>(), 24);
    assert_eq!(offset_of!(vfio_device_info, num_irqs), 12);
    assert_eq!(size_of::<vfio_region_info>(), 32);
    assert_eq!(offset_of!(vfio_region_info, size), 16);
    assert_eq!(offset_of!(vfio_region_info, offset), 24);
    assert_eq!(size_of::<vfio_irq_info>(), 16);
    assert_eq!(offset_of!(vfio_irq_info, count), 12);
    assert_eq!(size_of::<vfio_irq_set>(), 20);
    assert_eq!(offset_of!(vfio_irq_set, data), 20);
    assert_eq!(size_of::<vfio_iommu_type1_info>(), 24);
    assert_eq!(offset_of!(vfio_iommu_type1_info, iova_pgsizes), 8);
    assert_eq!(size_of::<vfio_iommu_type1_dma_map>(), 32);
    assert_eq!(offset_of!(vfio_iommu_type1_dma_map, vaddr), 8);
    assert_eq!(offset_of!(vfio_iommu_type1_dma_map, iova), 16);
    assert_eq!(offset_of!(vfio_iommu_type1_dma_map, size), 24);
    assert_eq!(size_of::<vfio_iommu_type1_dma_unmap>(), 24);
    assert_eq!(offset_of!(vfio_iommu_type1_dma_unmap, size), 16);
    assert_eq!(argsz::<vfio_iommu_type1_dma_map>(), 32);
}

/// The `i`th native-endian `u32` of a builder's buffer.
fn word32(buf: &[u64], i: usize) -> u32 {
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
}

#[test]
fn irq_set_argument_carries_the_eventfds_after_the_header() {
    let buf = irq_set_arg(2, &[7, 8, 9]);
    assert_eq!(buf.len(), 4, "20 + 12 bytes in 8-byte words");
    assert_eq!(word32(&buf, 0), 32, "argsz: header and three descriptors");
    assert_eq!(
        word32(&buf, 1),
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
    );
    assert_eq!((word32(&buf, 2), word32(&buf, 3)), (2, 0), "index, start");
    assert_eq!(word32(&buf, 4), 3, "count");
    assert_eq!(
        [word32(&buf, 5), word32(&buf, 6), word32(&buf, 7)],
        [7, 8, 9]
    );
}

#[test]
fn an_empty_irq_set_disables_the_index() {
    let buf = irq_set_arg(1, &[]);
    assert_eq!(buf.len(), 3, "the 20-byte header rounded up to words");
    assert_eq!(word32(&buf, 0), 20);
    assert_eq!(
        word32(&buf, 1),
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER
    );
    assert_eq!((word32(&buf, 2), word32(&buf, 4)), (1, 0));
    assert_eq!(word32(&buf, 5), 0, "the padding stays zero");
}

#[test]
fn an_odd_count_of_eventfds_fits_in_the_rounded_buffer() {
    let fds: Vec<i32> = (100..133).collect();
    let buf = irq_set_arg(0, &fds);
    assert_eq!(word32(&buf, 0) as usize, 20 + 4 * 33);
    assert!(buf.len() * 8 >= 20 + 4 * 33);
    assert_eq!(word32(&buf, 5 + 32), 132, "the last descriptor");
}
