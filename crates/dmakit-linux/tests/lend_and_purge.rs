//! Zero-copy lends (`direct_slice`, IOKit's `getBytesNoCopy`) and purgeable memory
//! (`set_purgeable`) on this Linux process.

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, PurgeableRequest, PurgeableState,
};
use dmakit::platform::{
    CpuAccess, MapPiece, MapRequest, MapSource, PageRequest, PhysicalMemory, Task, VirtualMemory,
    Wiring,
};
use dmakit::{Direction, Error, VirtAddr};
use dmakit_linux::Host;
use std::sync::Arc;

fn pageable(host: &Arc<Host>, len: u64, dir: Direction) -> BufferMemoryDescriptor<Arc<Host>> {
    BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(len, dir).pageable(true)).unwrap()
}

#[test]
fn buffers_lend_their_own_mapping() {
    let host = Arc::new(Host::new().unwrap());
    let page = host.page_size().bytes();
    for wired in [false, true] {
        let mut b = if wired {
            BufferMemoryDescriptor::new(
                host.clone(),
                BufferOptions::new(3 * page, Direction::InOut),
            )
            .unwrap()
        } else {
            pageable(&host, 3 * page, Direction::InOut)
        };
        let at = b.address().0 + page - 4;
        {
            let mut s = b.bytes_no_copy_mut(page - 4, 8).unwrap();
            s.copy_from_slice(b"zerocopy");
            // The slice is the mapping itself: its address is the buffer's.
            assert_eq!(s.as_ptr() as u64, at);
        }
        let mut back = [0u8; 8];
        assert_eq!(b.read_bytes(page - 4, &mut back), 8);
        assert_eq!(&back, b"zerocopy");

        let s = b.bytes_no_copy(page - 4, 8).unwrap();
        assert_eq!(&s[..], b"zerocopy");
        let s2 = b.bytes_no_copy(0, 16).unwrap();
        assert_eq!(b.write_bytes(page - 4, b"x"), 0, "no store to lent bytes");
        assert_eq!(b.read_bytes(page - 4, &mut back[..1]), 1, "loads are fine");
        assert_eq!(
            b.write_bytes(2 * page, b"y"),
            1,
            "bytes not lent stay writable"
        );
        let md: &dyn MemoryDescriptor = &b;
        assert!(matches!(
            md.prepare(Direction::None),
            Err(Error::Busy { .. })
        ));
        let va = b.address();
        assert!(matches!(
            host.wire(Task::KERNEL, va, 1, false),
            Err(Error::Busy { .. })
        ));
        assert!(matches!(
            host.direct_slice_mut(Task::KERNEL, VirtAddr(va.0 + page - 4), 1, u32::from(wired)),
            Err(Error::Busy { .. })
        ));
        assert!(matches!(
            host.map_pages(
                &[MapPiece {
                    src: MapSource::Virtual(Task::KERNEL, va),
                    len: page
                }],
                &MapRequest {
                    task: Task::KERNEL,
                    at: None,
                    read_only: true,
                    cache: Default::default()
                }
            ),
            Err(Error::Busy { .. })
        ));
        drop((s, s2));
        assert_eq!(b.write_bytes(page - 4, b"x"), 1);
        let p = md.prepare(Direction::None).unwrap();
        assert!(matches!(b.bytes_no_copy(0, 1), Err(Error::Busy { .. })));
        p.complete().unwrap();
        drop(b);
    }
    assert!(host.usage().is_idle(), "{:?}", host.usage());
}

#[test]
fn host_lends_are_exclusive_where_they_must_be() {
    let host = Host::new().unwrap();
    let page = host.page_size().bytes();
    let va = host
        .allocate_pages(2 * page, &PageRequest::PAGEABLE)
        .unwrap();
    host.write_virt(Task::KERNEL, va, b"shared").unwrap();
    let mut m = host.direct_slice_mut(Task::KERNEL, va, 6, 0).unwrap();
    m.bytes_mut().copy_from_slice(b"SHARED");
    let mut b = [0u8; 6];
    assert!(matches!(
        host.read_virt(Task::KERNEL, va, &mut b),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(
        host.direct_slice(Task::KERNEL, va, 1, 0),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(
        host.free_pages(va, 2 * page),
        Err(Error::Busy { .. })
    ));
    // Another page of the allocation is not lent.
    host.write_virt(Task::KERNEL, VirtAddr(va.0 + page), b"free")
        .unwrap();
    drop(m);
    host.read_virt(Task::KERNEL, va, &mut b).unwrap();
    assert_eq!(&b, b"SHARED");
    // Memory the host does not own is not lent; nor is memory mapped a second time.
    let mut mine = vec![0u8; 64];
    assert!(matches!(
        host.direct_slice(Task::KERNEL, VirtAddr(mine.as_mut_ptr() as u64), 8, 0),
        Err(Error::NotMapped { .. })
    ));
    let req = MapRequest {
        task: Task::KERNEL,
        at: None,
        read_only: false,
        cache: Default::default(),
    };
    let second = host
        .map_pages(
            &[MapPiece {
                src: MapSource::Virtual(Task::KERNEL, va),
                len: page,
            }],
            &req,
        )
        .unwrap();
    assert!(matches!(
        host.direct_slice(Task::KERNEL, va, 1, 0),
        Err(Error::Busy { .. })
    ));
    host.unmap_pages(Task::KERNEL, second, page).unwrap();
    drop(host.direct_slice(Task::KERNEL, va, 1, 0).unwrap());
    host.free_pages(va, 2 * page).unwrap();
    assert!(host.usage().is_idle());
}

#[test]
fn volatile_pages_are_punched_out_of_the_memfd() {
    let host = Arc::new(Host::new().unwrap());
    let page = host.page_size().bytes();
    let b = pageable(&host, 4 * page, Direction::InOut);
    let keep = pageable(&host, page, Direction::InOut);
    assert_eq!(
        b.write_bytes(0, &vec![0x5A; 4 * page as usize]),
        4 * page as usize
    );
    assert_eq!(keep.write_bytes(0, b"keep"), 4);
    assert_eq!(
        b.set_purgeable(PurgeableRequest::Volatile),
        Ok(PurgeableState::NonVolatile)
    );
    assert_eq!(
        b.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::Volatile)
    );
    let mut one = [0u8; 1];
    assert_eq!(b.read_bytes(page, &mut one), one.len());
    assert_eq!(one, [0x5A], "kept until purged");
    assert_eq!(host.purge_volatile().unwrap(), 4);
    assert_eq!(
        b.set_purgeable(PurgeableRequest::NonVolatile),
        Ok(PurgeableState::Empty)
    );
    let mut all = vec![1u8; 4 * page as usize];
    assert_eq!(b.read_bytes(0, &mut all), all.len());
    assert!(all.iter().all(|&x| x == 0), "discarded pages read as zeros");
    let mut k = [0u8; 4];
    assert_eq!(keep.read_bytes(0, &mut k), k.len());
    assert_eq!(&k, b"keep");
    // Empty discards at once; wired and prepared memory cannot be made volatile.
    assert_eq!(
        keep.set_purgeable(PurgeableRequest::Empty),
        Ok(PurgeableState::NonVolatile)
    );
    assert_eq!(keep.read_bytes(0, &mut k), k.len());
    assert_eq!(k, [0; 4]);
    let md: &dyn MemoryDescriptor = &b;
    let p = md.prepare(Direction::None).unwrap();
    assert!(matches!(
        b.set_purgeable(PurgeableRequest::Volatile),
        Err(Error::Busy { .. })
    ));
    p.complete().unwrap();
    let w =
        BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(page, Direction::In)).unwrap();
    assert!(matches!(
        w.set_purgeable(PurgeableRequest::Volatile),
        Err(Error::Busy { .. })
    ));
    assert_eq!(
        w.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::NonVolatile)
    );
    // Volatile memory wired by someone is kept by a purge.
    assert_eq!(
        b.set_purgeable(PurgeableRequest::Volatile),
        Ok(PurgeableState::NonVolatile)
    );
    assert_eq!(b.write_bytes(0, b"w"), 1);
    host.wire(Task::KERNEL, b.address(), 1, false).unwrap();
    assert_eq!(host.purge_volatile().unwrap(), 3);
    assert_eq!(b.read_bytes(0, &mut one), one.len());
    assert_eq!(&one, b"w");
    host.unwire(Task::KERNEL, b.address(), 1).unwrap();
    drop((b, keep, w));
    assert!(host.usage().is_idle(), "{:?}", host.usage());
}

#[test]
fn buffers_for_other_tasks_need_a_platform_that_has_them() {
    let host = Arc::new(Host::new().unwrap());
    let opts = BufferOptions::new(100, Direction::In).pageable(true);
    assert!(matches!(
        BufferMemoryDescriptor::in_task(host.clone(), Task(3), opts),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        BufferMemoryDescriptor::in_task(
            host.clone(),
            Task(3),
            BufferOptions::new(100, Direction::In)
        ),
        Err(Error::BadArgument { value: 3, .. })
    ));
    assert!(host.usage().is_idle());
}
