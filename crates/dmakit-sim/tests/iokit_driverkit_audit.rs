//! The DriverKit-shaped calls and the system mapper's page-number accessors checked against
//! what IOKit's kernel side does: the order of `PerformOperation`'s checks and what a copy
//! that falls short leaves behind, which mappings `CreateMapping` makes read-only, the
//! address bits `IODMACommand::Create` refuses, and the `IOMapper` C accessors' edge cases.

mod common;

use common::pattern;
use dmakit::descriptor::{GeneralMemoryDescriptor, MemoryDescriptor};
use dmakit::dma::IoSegment;
use dmakit::driverkit::{
    DkBufferMemoryDescriptor, DkDmaCommand, DkDmaSpec, DkMapOptions, DkMemoryDescriptor,
    DkMemoryOptions, DkPerformOptions,
};
use dmakit::mapper::{IommuMapper, Mapper, MapperRegistry};
use dmakit::platform::{CpuAccess, Task};
use dmakit::{Direction, Error, IoReturn, PageSize, Result};
use dmakit_sim::{Machine, MachineBuilder, SimIommu};
use std::sync::Arc;

type M = Arc<Machine>;

const PAGE: u64 = 4096;

fn machine_with_iommu() -> (M, Arc<IommuMapper<Arc<SimIommu>>>) {
    let m = Arc::new(
        MachineBuilder::new()
            .seed(41)
            .fragmentation(0.5)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu, 0x8000_0000, 0x1000_0000).unwrap());
    (m, mapper)
}

fn buffer(m: &M, dir: DkMemoryOptions, capacity: u64) -> Arc<dyn MemoryDescriptor> {
    DkBufferMemoryDescriptor::create(m.clone(), dir, capacity, 0).unwrap()
}

fn code<T>(r: Result<T>) -> IoReturn {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.io_return(),
    }
}

fn contents(md: &dyn MemoryDescriptor) -> Vec<u8> {
    let mut v = vec![0u8; md.length() as usize];
    assert_eq!(md.read_bytes(0, &mut v), v.len());
    v
}

// ---------------------------------------------------------------------------------------
// IODMACommand::PerformOperation

/// The kernel refuses option bits outside read, write and zero first, then an inactive
/// command, and only then (once it has allocated its buffer) an option word that is not
/// exactly one operation. So 0 or a combination on a command that is not prepared is
/// kIOReturnNotReady, not kIOReturnBadArgument.
#[test]
fn perform_operation_reports_an_unprepared_command_before_a_bad_combination() {
    let (m, mapper) = machine_with_iommu();
    let data = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, 256);
    let dma = DkDmaCommand::create(m.clone(), Some(mapper), 0, DkDmaSpec::new(64)).unwrap();
    let op = DkPerformOptions::from_bits;
    for bits in [0u64, 3, 5, 6, 7] {
        assert_eq!(
            code(dma.perform_operation(op(bits), 0, 16, 0, Some(&*data))),
            IoReturn::NOT_READY,
            "options {bits:#x} on an unprepared command"
        );
    }
    for bits in [8u64, 0x10, 0x9, 1 << 40] {
        assert_eq!(
            code(dma.perform_operation(op(bits), 0, 16, 0, Some(&*data))),
            IoReturn::BAD_ARGUMENT,
            "unknown bits {bits:#x} are refused before anything else"
        );
    }
    let md = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, PAGE);
    let mut segs = [IoSegment::default(); 4];
    dma.prepare_for_dma(0, &md, 0, 0, &mut segs).unwrap();
    for bits in [0u64, 3, 5, 6, 7] {
        assert_eq!(
            code(dma.perform_operation(op(bits), 0, 16, 0, Some(&*data))),
            IoReturn::BAD_ARGUMENT,
            "options {bits:#x} on a prepared command"
        );
    }
    // The length check comes before the operation's.
    assert_eq!(
        code(dma.perform_operation(op(3), 0, PAGE + 1, 0, Some(&*data))),
        IoReturn::BAD_ARGUMENT
    );
    dma.complete_dma(0).unwrap();
}

/// A write whose source runs past the end of `data` copies nothing: the kernel reads all
/// of `data`'s bytes into its buffer first (all or nothing) and fails before it writes the
/// DMA memory.
#[test]
fn perform_operation_write_from_short_data_leaves_the_dma_memory_untouched() {
    let (m, mapper) = machine_with_iommu();
    let md = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, 2 * PAGE);
    let before = pattern(2 * PAGE as usize, 9);
    assert_eq!(md.write_bytes(0, &before), before.len());
    let data = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, 1024);
    assert_eq!(data.write_bytes(0, &pattern(1024, 77)), 1024);
    let dma = DkDmaCommand::create(m.clone(), Some(mapper), 0, DkDmaSpec::new(64)).unwrap();
    let mut segs = [IoSegment::default(); 4];
    dma.prepare_for_dma(0, &md, 0, 0, &mut segs).unwrap();

    // 1000 bytes from offset 100 of a 1024-byte descriptor: past its end.
    let e = dma
        .perform_operation(DkPerformOptions::WRITE, 0, 1000, 100, Some(&*data))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Underrun {
                done: 0,
                requested: 1000,
                ..
            }
        ),
        "{e}"
    );
    assert!(contents(&*md) == before, "nothing reached the DMA memory");
    dma.complete_dma(0).unwrap();
}

/// A read that runs past the end of the preparation copies nothing into `data`: the
/// kernel's copy out of the DMA memory falls short and it fails before writing `data`.
#[test]
fn perform_operation_read_past_the_preparation_leaves_the_data_untouched() {
    let (m, mapper) = machine_with_iommu();
    let md = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, 2 * PAGE);
    assert_eq!(
        md.write_bytes(0, &pattern(2 * PAGE as usize, 3)),
        2 * PAGE as usize
    );
    let data = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, PAGE);
    let before = pattern(PAGE as usize, 200);
    assert_eq!(data.write_bytes(0, &before), before.len());
    let dma = DkDmaCommand::create(m.clone(), Some(mapper), 0, DkDmaSpec::new(64)).unwrap();
    let mut segs = [IoSegment::default(); 4];
    // Only the first page is prepared; 700 bytes from 96 before its end.
    dma.prepare_for_dma(0, &md, 0, PAGE, &mut segs).unwrap();
    let e = dma
        .perform_operation(DkPerformOptions::READ, PAGE - 96, 700, 0, Some(&*data))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Underrun {
                done: 0,
                requested: 700,
                ..
            }
        ),
        "{e}"
    );
    assert!(contents(&*data) == before, "nothing reached the data");
    dma.complete_dma(0).unwrap();
}

/// A read into `data` that cannot take all of it (the range runs past `data`'s end)
/// writes none of it: the kernel's write into `data` is all or nothing.
#[test]
fn perform_operation_read_into_short_data_writes_none_of_it() {
    let (m, mapper) = machine_with_iommu();
    let md = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, 2 * PAGE);
    assert_eq!(
        md.write_bytes(0, &pattern(2 * PAGE as usize, 5)),
        2 * PAGE as usize
    );
    let data = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, 1024);
    let before = pattern(1024, 111);
    assert_eq!(data.write_bytes(0, &before), before.len());
    let dma = DkDmaCommand::create(m.clone(), Some(mapper), 0, DkDmaSpec::new(64)).unwrap();
    let mut segs = [IoSegment::default(); 4];
    dma.prepare_for_dma(0, &md, 0, 0, &mut segs).unwrap();
    let e = dma
        .perform_operation(DkPerformOptions::READ, 0, 1000, 100, Some(&*data))
        .unwrap_err();
    assert!(matches!(e, Error::Underrun { done: 0, .. }), "{e}");
    assert!(contents(&*data) == before, "nothing reached the data");
    // Within both, the copy is whole.
    dma.perform_operation(DkPerformOptions::READ, 0, 1000, 24, Some(&*data))
        .unwrap();
    let mut want = before.clone();
    want[24..1024].copy_from_slice(&pattern(2 * PAGE as usize, 5)[..1000]);
    assert!(contents(&*data) == want);
    dma.complete_dma(0).unwrap();
}

// ---------------------------------------------------------------------------------------
// IODMACommand::PrepareForDMA

/// The kernel looks at the segment count last, when it generates the segments: a command
/// that is prepared refuses another descriptor with kIOReturnBusy even when the count is
/// 0; the count is kIOReturnBadArgument only once everything before it succeeded, and
/// then nothing stays prepared.
#[test]
fn prepare_for_dma_checks_the_segment_count_after_attaching_and_preparing() {
    let (m, mapper) = machine_with_iommu();
    let a = buffer(&m, DkMemoryOptions::DIRECTION_OUT, PAGE);
    let b = buffer(&m, DkMemoryOptions::DIRECTION_IN, PAGE);
    let dma = DkDmaCommand::create(m.clone(), Some(mapper.clone()), 0, DkDmaSpec::new(64)).unwrap();
    let mut segs = [IoSegment::default(); 4];
    dma.prepare_for_dma(0, &a, 0, 0, &mut segs).unwrap();
    assert_eq!(
        code(dma.prepare_for_dma(0, &b, 0, 0, &mut segs[..0])),
        IoReturn::BUSY,
        "another descriptor while prepared, with no room for a segment"
    );
    assert!(Arc::ptr_eq(&dma.get_preparation().unwrap().2, &a));
    dma.complete_dma(0).unwrap();

    assert_eq!(
        code(dma.prepare_for_dma(0, &b, 0, 0, &mut segs[..0])),
        IoReturn::BAD_ARGUMENT
    );
    assert!(!dma.is_prepared());
    assert_eq!(code(dma.complete_dma(0)), IoReturn::NOT_READY);
    assert_eq!(mapper.usage(), (0, 0), "nothing left mapped");
}

// ---------------------------------------------------------------------------------------
// IOMemoryDescriptor::CreateMapping: which mappings are read-only

/// Only a buffer the calling task created with `IOBufferMemoryDescriptor::Create` is
/// exempt from the read-only rule for `Out` memory: a sub-descriptor or a combination of
/// such a buffer, or a plain descriptor of the task's own virtual memory, described `Out`,
/// maps read-only.
#[test]
fn out_memory_maps_read_only_unless_it_is_the_tasks_own_buffer() {
    let m = Arc::new(MachineBuilder::new().seed(5).build().unwrap());
    let own = buffer(&m, DkMemoryOptions::DIRECTION_OUT, 2 * PAGE);
    let map = |md: &Arc<dyn MemoryDescriptor>| {
        DkMemoryDescriptor::create_mapping(m.clone(), md, DkMapOptions::default(), 0, 0, 0, 0)
            .unwrap()
    };
    assert!(
        !map(&own).options().is_read_only(),
        "the creator's own buffer"
    );

    let sub: Arc<dyn MemoryDescriptor> = DkMemoryDescriptor::create_sub_memory_descriptor(
        DkMemoryOptions::DIRECTION_OUT,
        0,
        PAGE,
        &own,
    )
    .unwrap();
    let sub_map = map(&sub);
    assert!(sub_map.options().is_read_only(), "an Out sub-descriptor");
    let e = m
        .write_virt(Task::KERNEL, sub_map.address(), b"no")
        .unwrap_err();
    assert!(matches!(e, Error::NotWritable { .. }), "{e}");

    let multi: Arc<dyn MemoryDescriptor> = DkMemoryDescriptor::create_with_memory_descriptors(
        DkMemoryOptions::DIRECTION_OUT,
        std::slice::from_ref(&own),
    )
    .unwrap();
    assert!(
        map(&multi).options().is_read_only(),
        "an Out combination of descriptors"
    );

    let va = m.vm_allocate(Task::KERNEL, PAGE, false).unwrap();
    let general: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(
            m.clone(),
            Task::KERNEL,
            va,
            PAGE,
            Direction::Out,
        )
        .unwrap(),
    );
    assert!(
        map(&general).options().is_read_only(),
        "Out virtual memory of the task that is not a buffer it created"
    );

    // Not exactly Out: writable.
    let both: Arc<dyn MemoryDescriptor> = DkMemoryDescriptor::create_sub_memory_descriptor(
        DkMemoryOptions::DIRECTION_OUT_IN,
        0,
        PAGE,
        &own,
    )
    .unwrap();
    assert!(!map(&both).options().is_read_only());
}

// ---------------------------------------------------------------------------------------
// IODMACommand::Create

/// The kernel refuses fewer address bits than its page shift (so 13 on 16 KiB pages), and
/// DriverKit reports the refusal as kIOReturnNoMemory.
#[test]
fn dma_command_create_refuses_fewer_address_bits_than_the_page_shift() {
    let m = Arc::new(
        MachineBuilder::new()
            .page_size(PageSize::new(16384).unwrap())
            .build()
            .unwrap(),
    );
    for bits in [1u64, 11, 12, 13] {
        let r = DkDmaCommand::create(m.clone(), None, 0, DkDmaSpec::new(bits));
        assert_eq!(code(r), IoReturn::NO_MEMORY, "{bits} bits on 16 KiB pages");
    }
    for bits in [0u64, 14, 32, 64] {
        assert!(
            DkDmaCommand::create(m.clone(), None, 0, DkDmaSpec::new(bits)).is_ok(),
            "{bits} bits"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The IOMapper C accessors

/// Without a system mapper `IOMapperInsertPage` returns the physical page before it looks
/// at the base, so base 0 is no error there; with one, base 0 is refused (IOKit panics).
#[test]
fn insert_page_checks_for_a_system_mapper_before_the_base() {
    let none = MapperRegistry::with_system_mapper(None);
    assert_eq!(none.insert_page(0, 7, 0x42).unwrap(), 0x42);
    assert_eq!(none.insert_page(u32::MAX, u32::MAX, 0x43).unwrap(), 0x43);
    none.iovm_free_pages(0, 0).unwrap();
    assert_eq!(
        code(none.iovm_alloc_pages(1)),
        IoReturn::UNSUPPORTED,
        "IOMapperIOVMAlloc returns 0 without a system mapper"
    );

    let (_m, mapper) = machine_with_iommu();
    let with = MapperRegistry::with_system_mapper(Some(mapper.clone() as Arc<dyn Mapper>));
    assert_eq!(code(with.insert_page(0, 7, 0x42)), IoReturn::BAD_ARGUMENT);
    assert_eq!(mapper.usage(), (0, 0), "nothing mapped");

    // Undecided: the calls that wait in IOKit report that the decision is missing.
    let undecided = MapperRegistry::new();
    assert_eq!(code(undecided.iovm_alloc_pages(1)), IoReturn::NOT_READY);
    assert_eq!(code(undecided.insert_page(1, 0, 2)), IoReturn::NOT_READY);
    assert_eq!(code(undecided.iovm_free_pages(1, 1)), IoReturn::NOT_READY);
}

/// `PerformOperation` writes the DMA memory as the kernel's `IODMACommand::writeBytes`
/// does, by physical address, so a write or a zero into memory prepared for a device that
/// only reads it (direction `Out`, prepared read-only) succeeds: filling an `Out` transfer
/// from a driver's bounce buffer is what the call is for.
#[test]
fn perform_operation_writes_out_memory_prepared_read_only() {
    let (m, mapper) = machine_with_iommu();
    let md = buffer(&m, DkMemoryOptions::DIRECTION_OUT, 2 * PAGE);
    let data = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, PAGE);
    let fresh = pattern(PAGE as usize, 42);
    assert_eq!(data.write_bytes(0, &fresh), fresh.len());
    let dma = DkDmaCommand::create(m.clone(), Some(mapper), 0, DkDmaSpec::new(64)).unwrap();
    let mut segs = [IoSegment::default(); 4];
    let (flags, _) = dma.prepare_for_dma(0, &md, 0, 0, &mut segs).unwrap();
    assert_eq!(flags, DkMemoryOptions::DIRECTION_OUT);
    dma.perform_operation(DkPerformOptions::WRITE, 100, PAGE, 0, Some(&*data))
        .unwrap();
    dma.perform_operation(DkPerformOptions::ZERO, 0, 100, 0, None)
        .unwrap();
    dma.complete_dma(0).unwrap();
    let now = contents(&*md);
    assert!(now[..100].iter().all(|&b| b == 0));
    assert!(now[100..100 + PAGE as usize] == fresh[..]);

    // The same through a descriptor of virtual memory, which preparing for Out wires
    // read-only.
    let va = m.vm_allocate(Task::KERNEL, 2 * PAGE, false).unwrap();
    let general: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(
            m.clone(),
            Task::KERNEL,
            va,
            2 * PAGE,
            Direction::Out,
        )
        .unwrap(),
    );
    dma.prepare_for_dma(0, &general, 0, 0, &mut segs).unwrap();
    assert_eq!(
        general.write_bytes(0, b"x"),
        0,
        "the descriptor is prepared read-only"
    );
    dma.perform_operation(DkPerformOptions::WRITE, PAGE, PAGE, 0, Some(&*data))
        .unwrap();
    dma.complete_dma(0).unwrap();
    let mut back = vec![0u8; PAGE as usize];
    m.read_virt(Task::KERNEL, dmakit::VirtAddr(va.0 + PAGE), &mut back)
        .unwrap();
    assert!(back == fresh);
}

/// The kernel writes the DMA memory with a copy that flushes what it wrote from the CPU's
/// caches, so a device behind a cache that is not coherent with it sees a
/// `PerformOperation` write at once, without any further step from the driver (DriverKit
/// gives drivers no cache maintenance of their own).
#[test]
fn perform_operation_writes_reach_a_non_coherent_device_at_once() {
    let m = Arc::new(
        MachineBuilder::new()
            .seed(3)
            .coherent(false)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x8000_0000, 0x1000_0000).unwrap());
    let md = buffer(&m, DkMemoryOptions::DIRECTION_OUT, 2 * PAGE);
    let data = buffer(&m, DkMemoryOptions::DIRECTION_OUT_IN, PAGE);
    let fresh = pattern(PAGE as usize, 17);
    assert_eq!(data.write_bytes(0, &fresh), fresh.len());
    let dma = DkDmaCommand::create(m.clone(), Some(mapper), 0, DkDmaSpec::new(64)).unwrap();
    let mut segs = [IoSegment::default(); 4];
    let (_, count) = dma.prepare_for_dma(0, &md, 0, 0, &mut segs).unwrap();
    assert_eq!(count, 1);
    dma.perform_operation(DkPerformOptions::WRITE, 0x800, PAGE, 0, Some(&*data))
        .unwrap();
    let mut seen = vec![0u8; PAGE as usize];
    iommu
        .device_read(dmakit::IoAddr(segs[0].addr.0 + 0x800), &mut seen)
        .unwrap();
    assert!(
        seen == fresh,
        "the device sees the bytes before CompleteDMA"
    );
    dma.complete_dma(0).unwrap();
}

// ---------------------------------------------------------------------------------------
// IOBufferMemoryDescriptor::Create

/// DriverKit's factory reports every failure to create the kernel buffer as
/// kIOReturnNoMemory: a capacity the address space has no room for is NoMemory, not the
/// allocator's NoSpace, and leaves nothing allocated.
#[test]
fn a_buffer_too_large_for_the_address_space_is_no_memory() {
    let (m, _) = machine_with_iommu();
    for capacity in [1u64 << 47, u64::MAX / 2, u64::MAX - 4096] {
        let r =
            DkBufferMemoryDescriptor::create(m.clone(), DkMemoryOptions::DIRECTION_IN, capacity, 0);
        assert_eq!(code(r), IoReturn::NO_MEMORY, "capacity {capacity:#x}");
    }
    assert_eq!(m.stats().allocations, 0);
}
