//! Memory descriptors on this Linux process.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, MemoryDescriptor,
    MultiMemoryDescriptor, SubMemoryDescriptor,
};
use dmakit::platform::{PageRequest, PhysicalMemory, Task};
use dmakit::{Direction, Error, PhysAddr};
use dmakit_linux::{AddressMode, Host};
use std::sync::Arc;

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(salt))
        .collect()
}

#[test]
fn buffers_round_trip_and_report_real_segments() {
    let host = Arc::new(Host::new().unwrap());
    let b = BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(50_000, Direction::InOut))
        .unwrap();
    let data = pattern(50_000, 7);
    assert_eq!(b.write_bytes(0, &data), 50_000);
    let mut back = vec![0u8; 50_000];
    assert_eq!(b.read_bytes(0, &mut back), 50_000);
    assert_eq!(back, data);
    if host.address_mode() != AddressMode::Physical {
        assert!(matches!(
            b.physical_segment(0),
            Err(Error::NotPermitted { .. }) | Err(Error::NotReady { .. })
        ));
        println!("skipped: physical segments need root");
        return;
    }
    let mut off = 0;
    while off < b.length() {
        let s = b.physical_segment(off).unwrap();
        // The physical address holds the descriptor's bytes.
        let mut at = vec![0u8; s.len.min(64) as usize];
        host.read_phys(s.addr, &mut at).unwrap();
        assert_eq!(&at[..], &data[off as usize..off as usize + at.len()]);
        off += s.len;
    }
    drop(b);
    assert!(host.usage().is_idle(), "{:?}", host.usage());
}

#[test]
fn pageable_buffers_need_prepare() {
    let host = Arc::new(Host::new().unwrap());
    let b = BufferMemoryDescriptor::new(
        host.clone(),
        BufferOptions::new(3 * 4096, Direction::In).pageable(true),
    )
    .unwrap();
    assert!(matches!(b.physical_segment(0), Err(Error::NotReady { .. })));
    let md: &dyn MemoryDescriptor = &b;
    let p = md.prepare(Direction::In).unwrap();
    if host.address_mode() == AddressMode::Physical {
        assert!(md.physical_segment(4096).unwrap().addr.0 != 0);
    }
    assert_eq!(host.usage().wired_pages, 3, "three pages wired");
    p.complete().unwrap();
    assert_eq!(host.usage().wired_pages, 0);
}

#[test]
fn multi_and_sub_over_host_memory() {
    let host = Arc::new(Host::new().unwrap());
    let a: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::with_bytes(host.clone(), &pattern(5000, 1), Direction::Out)
            .unwrap(),
    );
    let va = host.allocate_pages(8192, &PageRequest::WIRED).unwrap();
    let g: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(
            host.clone(),
            Task::KERNEL,
            va,
            8192,
            Direction::Out,
        )
        .unwrap(),
    );
    assert_eq!(g.write_bytes(0, &pattern(8192, 2)), 8192);
    let multi = MultiMemoryDescriptor::new(vec![a, g], Direction::Out).unwrap();
    let sub = SubMemoryDescriptor::new(Arc::new(multi), 4000, 3000, Direction::Out).unwrap();
    let mut buf = vec![0u8; 3000];
    assert_eq!(sub.read_bytes(0, &mut buf), 3000);
    assert_eq!(&buf[..1000], &pattern(5000, 1)[4000..]);
    assert_eq!(&buf[1000..], &pattern(8192, 2)[..2000]);
    drop(sub);
    host.free_pages(va, 8192).unwrap();
}

#[test]
fn physical_descriptors_of_host_memory() {
    let host = Arc::new(Host::new().unwrap());
    if host.address_mode() != AddressMode::Physical {
        println!("skipped: physical addresses need root");
        return;
    }
    let b = BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(4096, Direction::InOut))
        .unwrap();
    let s = b.physical_segment(0).unwrap();
    let d = GeneralMemoryDescriptor::with_physical_ranges(
        host.clone(),
        &[(PhysAddr(s.addr.0 + 16), 32)],
        Direction::In,
    )
    .unwrap();
    assert_eq!(d.write_bytes(0, b"through the physical address"), 28);
    let mut back = [0u8; 28];
    assert_eq!(b.read_bytes(16, &mut back), back.len());
    assert_eq!(&back, b"through the physical address");
}

#[test]
fn interleaved_and_device_memory_on_the_host() {
    use dmakit::descriptor::{device_memory, InterleavedMemoryDescriptor};
    let host = Arc::new(Host::new().unwrap());
    let a: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::with_bytes(host.clone(), &pattern(9000, 5), Direction::InOut)
            .unwrap(),
    );
    let mut il = InterleavedMemoryDescriptor::with_capacity(3, Direction::Out);
    il.set_memory_descriptor(a.clone(), 8000, 1000).unwrap();
    il.set_memory_descriptor(a.clone(), 10, 4096).unwrap();
    let mut buf = vec![0u8; 5096];
    assert_eq!(il.read_bytes(0, &mut buf), 5096);
    assert_eq!(&buf[..1000], &pattern(9000, 5)[8000..]);
    assert_eq!(&buf[1000..], &pattern(9000, 5)[10..4106]);
    assert_eq!(il.write_bytes(999, b"XY"), 2);
    let mut two = [0u8; 2];
    assert_eq!(a.read_bytes(8999, &mut two[..1]), two[..1].len());
    assert_eq!(a.read_bytes(10, &mut two[1..]), two[1..].len());
    assert_eq!(&two, b"XY", "a write across portions lands in both");
    // Device memory over a registered region stands in for a BAR.
    let dev = host.allocate_pages(4096, &PageRequest::WIRED).unwrap();
    // SAFETY: a live allocation of this host, unregistered below before it is freed.
    unsafe { host.register_mmio(PhysAddr(0xD000_0000), dev.0 as *mut u8, 4096) }.unwrap();
    let bar = device_memory(host.clone(), PhysAddr(0xD000_0000), 4096).unwrap();
    assert_eq!(
        bar.physical_segment(0x40).unwrap().addr,
        PhysAddr(0xD000_0040)
    );
    assert_eq!(bar.direction(), Direction::None);
    host.unregister_mmio(PhysAddr(0xD000_0000)).unwrap();
    host.free_pages(dev, 4096).unwrap();
}
