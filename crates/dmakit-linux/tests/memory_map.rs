//! MemoryMap on this host: a second real mapping of the same pages through the memfd.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::map::{MapGuard, MapOptions, MemoryMap};
use dmakit::platform::{CacheMode, CpuAccess, Task};
use dmakit::{Direction, Error, VirtAddr};
use dmakit_linux::Host;
use std::process::Command;
use std::sync::Arc;

type Buffer = Arc<BufferMemoryDescriptor<Arc<Host>>>;

fn setup() -> (Arc<Host>, Buffer) {
    let host = Arc::new(Host::new().unwrap());
    let b =
        BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(3 * 4096, Direction::InOut))
            .unwrap();
    (host, Arc::new(b))
}

#[test]
fn a_second_mapping_shares_the_pages() {
    let (host, b) = setup();
    let map = b.map(MapOptions::new().unique()).unwrap();
    assert_ne!(map.address(), b.address(), "a different virtual address");
    host.write_virt(
        Task::KERNEL,
        VirtAddr(map.address().0 + 5000),
        b"via the map",
    )
    .unwrap();
    let mut v = [0u8; 11];
    assert_eq!(b.read_bytes(5000, &mut v), v.len());
    assert_eq!(&v, b"via the map");
    let sub = MemoryMap::new(host.clone(), b.clone(), MapOptions::new().range(0x1010, 32)).unwrap();
    assert_eq!(
        sub.address().0,
        map.address().0 + 0x1010,
        "inside the unique mapping"
    );
    assert_eq!(sub.address().0 % 4096, 0x10);
    assert_eq!(b.write_bytes(0x1010, b"offset kept"), 11);
    host.read_virt(Task::KERNEL, sub.address(), &mut v).unwrap();
    assert_eq!(&v, b"offset kept");
}

#[test]
fn fixed_address_mappings() {
    let (host, b) = setup();
    // An address far from where Linux places mappings (other tests run in parallel threads,
    // so reusing an address just freed could race with them).
    let want = VirtAddr(0x3f5a_0000_0000);
    let fixed = b.map(MapOptions::new().at(want)).unwrap();
    assert_eq!(fixed.address(), want);
    assert_eq!(b.write_bytes(0, b"fixed"), 5);
    let mut v = [0u8; 5];
    host.read_virt(Task::KERNEL, want, &mut v).unwrap();
    assert_eq!(&v, b"fixed");
    // An address in use is refused, never replaced.
    let e = b
        .map(MapOptions::new().at(b.address()).unique())
        .unwrap_err();
    assert!(matches!(e, Error::RangeBusy { .. }), "{e}");
    let mut w = [0u8; 5];
    assert_eq!(b.read_bytes(0, &mut w), w.len());
    assert_eq!(&w, b"fixed", "the buffer's own mapping is untouched");
}

#[test]
fn unsupported_requests_are_clear_errors() {
    let (host, b) = setup();
    let e = b
        .map(MapOptions::new().cache(CacheMode::Inhibit))
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(matches!(
        b.map(MapOptions::new().in_task(Task(7))),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        b.map(MapOptions::new().range(4096, 0)),
        Err(Error::OutOfBounds { .. })
    ));
    let mut map = b.map(MapOptions::new().unique()).unwrap();
    let at = map.address();
    map.unmap().unwrap();
    let mut v = [0u8; 1];
    assert!(matches!(
        host.read_virt(Task::KERNEL, at, &mut v),
        Err(Error::NotMapped { .. })
    ));
}

#[test]
fn the_buffer_mapped_whole_into_this_process_is_its_own_address() {
    let (host, b) = setup();
    let mut own = b.map(MapOptions::new()).unwrap();
    assert_eq!(own.address(), b.address());
    assert!(own.options().is_static());
    let shared = b.map(MapOptions::new()).unwrap();
    assert!(shared.same_mapping(&own));
    own.unmap().unwrap();
    drop(shared);
    assert_eq!(b.write_bytes(0, b"still mine"), 10);
    let mut v = [0u8; 10];
    host.read_virt(Task::KERNEL, b.address(), &mut v).unwrap();
    assert_eq!(&v, b"still mine", "the owner's memory stays mapped");
}

#[test]
fn guard_pages_are_prot_none_reservations() {
    let (host, b) = setup();
    let page = 4096u64;
    let mut g = b.map(MapOptions::new().guard(MapGuard::Small)).unwrap();
    let (start, end) = (g.address().0, g.address().0 + 3 * page);
    assert_eq!(b.write_bytes(0, b"guarded"), 7);
    let mut v = [0u8; 7];
    host.read_virt(Task::KERNEL, g.address(), &mut v).unwrap();
    assert_eq!(&v, b"guarded");
    for probe in [start - 1, end] {
        assert!(matches!(
            host.read_virt(Task::KERNEL, VirtAddr(probe), &mut [0u8; 1]),
            Err(Error::NotMapped { .. })
        ));
        // The guard is a real reservation: nothing can be mapped there.
        let e = b
            .map(MapOptions::new().at(VirtAddr(probe & !(page - 1))).unique())
            .unwrap_err();
        assert!(matches!(e, Error::RangeBusy { .. }), "{probe:#x}: {e}");
    }
    assert!(matches!(
        b.map(
            MapOptions::new()
                .guard(MapGuard::Large)
                .at(VirtAddr(0x3f5b_0000_0000))
        ),
        Err(Error::BadArgument { .. })
    ));
    g.unmap().unwrap();
    assert_eq!(
        host.usage().mappings,
        0,
        "the mapping and its guards are gone"
    );
}

/// Runs this test binary's test `name` in a child with DMAKIT_CHILD set; returns its exit
/// status.
fn child(name: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("DMAKIT_CHILD", "1")
        .output()
        .unwrap()
        .status
}

#[test]
fn read_only_is_enforced_by_the_mmu() {
    if std::env::var_os("DMAKIT_CHILD").is_some() {
        let (host, b) = setup();
        assert_eq!(b.write_bytes(0, b"before"), 6);
        let map = b.map(MapOptions::new().read_only()).unwrap();
        // dmakit's own copy path refuses...
        assert!(matches!(
            host.write_virt(Task::KERNEL, map.address(), b"x"),
            Err(Error::NotWritable { .. })
        ));
        let mut v = [0u8; 6];
        host.read_virt(Task::KERNEL, map.address(), &mut v).unwrap();
        assert_eq!(&v, b"before");
        // ...and a raw store through the mapping faults in the MMU.
        let p = map.address().0 as *mut u8;
        // SAFETY: deliberately not sound to complete: the page is mapped read-only, so this
        // store raises SIGSEGV and the child process dies, which the parent checks. Nothing
        // after it runs.
        unsafe { std::ptr::write_volatile(p, 1) };
        println!("STORE-SUCCEEDED");
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let status = child("read_only_is_enforced_by_the_mmu");
    assert_eq!(
        status.signal(),
        Some(rustix::process::Signal::SEGV.as_raw()),
        "the store must fault: {status:?}"
    );
}

#[test]
fn second_mappings_are_wired_like_any_memory() {
    use dmakit::platform::{
        collect_runs, MapPiece, MapRequest, MapSource, PageRequest, PhysicalMemory, VirtualMemory,
        Wiring,
    };
    let host = Host::new().unwrap();
    let page = host.page_size().bytes();
    let va = host.allocate_pages(4 * page, &PageRequest::WIRED).unwrap();
    let request = |read_only| MapRequest {
        task: Task::KERNEL,
        at: None,
        read_only,
        cache: CacheMode::CopyBack,
    };
    // Pages 2 and 0 of the allocation, in that order, read-only.
    let pieces = [
        MapPiece {
            src: MapSource::Virtual(Task::KERNEL, VirtAddr(va.0 + 2 * page)),
            len: page,
        },
        MapPiece {
            src: MapSource::Virtual(Task::KERNEL, va),
            len: page,
        },
    ];
    let ro = host.map_pages(&pieces, &request(true)).unwrap();
    host.write_virt(Task::KERNEL, VirtAddr(va.0 + 2 * page), b"page two")
        .unwrap();
    let mut b = [0u8; 8];
    host.read_virt(Task::KERNEL, ro, &mut b).unwrap();
    assert_eq!(&b, b"page two", "the pieces keep their order");
    // A device may not be handed read-only pages to write.
    let e = host.wire(Task::KERNEL, ro, page, true).unwrap_err();
    assert!(matches!(e, Error::NotWritable { .. }), "{e}");
    host.wire(Task::KERNEL, ro, 2 * page, false).unwrap();
    if host.address_mode() == dmakit_linux::AddressMode::Physical {
        // The same frames as the allocation's, in the mapping's order.
        let direct = collect_runs(&host, Task::KERNEL, VirtAddr(va.0 + 2 * page), 1).unwrap();
        let mapped = collect_runs(&host, Task::KERNEL, ro, 1).unwrap();
        assert_eq!(direct, mapped);
        // And a mapping built from physical addresses finds the same pages.
        let by_pa = host
            .map_pages(
                &[MapPiece {
                    src: MapSource::Physical(direct[0].addr),
                    len: page,
                }],
                &request(false),
            )
            .unwrap();
        host.read_virt(Task::KERNEL, by_pa, &mut b).unwrap();
        assert_eq!(&b, b"page two");
        host.unmap_pages(Task::KERNEL, by_pa, page).unwrap();
    }
    let e = host.unmap_pages(Task::KERNEL, ro, 2 * page).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    assert!(matches!(
        host.unmap_pages(Task::KERNEL, ro, page),
        Err(Error::WrongSize { .. })
    ));
    host.unwire(Task::KERNEL, ro, 2 * page).unwrap();
    host.unmap_pages(Task::KERNEL, ro, 2 * page).unwrap();
    host.free_pages(va, 4 * page).unwrap();
    assert!(host.usage().is_idle());
}
