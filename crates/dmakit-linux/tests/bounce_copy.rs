//! The host's single-copy `copy_virt` and a DmaCommand's bounce copy on this process: the
//! same bytes as the seam's staged default, memmove semantics within an allocation and
//! through an aliasing second mapping, errors that name the address, and bounce copies in
//! both directions across the parts of a multi-descriptor.

mod common;

use common::{host, need_physical, need_root, page};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, GeneralMemoryDescriptor, MemoryDescriptor,
    MultiMemoryDescriptor,
};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{BouncePool, DmaCommand, IoSegment, SegmentFormat, SegmentSpec};
use dmakit::platform::{
    copy_virt_staged, CacheMode, CpuAccess, MapPiece, MapRequest, MapSource, PageRequest,
    PhysicalMemory, Task, VirtualMemory, COPY_CHUNK,
};
use dmakit::{Direction, Error, PhysAddr, VirtAddr};
use dmakit_linux::{Host, HugepagePool};
use std::sync::Arc;

const K: Task = Task::KERNEL;
const NR: &str = "/proc/sys/vm/nr_hugepages";

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(salt) ^ (i >> 8) as u8)
        .collect()
}

fn read(h: &Host, va: VirtAddr, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    h.read_virt(K, va, &mut b).unwrap();
    b
}

#[test]
fn copy_virt_between_allocations_matches_the_staged_default_and_memmove() {
    let h = host();
    let p = page(&h);
    let len = 4 * p;
    let a = h.allocate_pages(len, &PageRequest::PAGEABLE).unwrap();
    let b = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let c = COPY_CHUNK as u64;
    // (from, to, n) as offsets into a|b laid end to end: across, unaligned, and inside one
    // allocation overlapping up and down by less and more than a chunk.
    let cases = [
        (5, len + 4001, 3 * p - 77),
        (len + 3, 1, 2 * p + 9),
        (3, 900, 2 * c + 5),
        (900, 3, 2 * c + 5),
        (1, c + 7, 2 * c),
        (len + c + 7, len + 1, 2 * c),
        (0, 0, len),
    ];
    let at = |o: u64| {
        if o < len {
            VirtAddr(a.0 + o)
        } else {
            VirtAddr(b.0 + o - len)
        }
    };
    for (from, to, n) in cases {
        let mut results = Vec::new();
        for staged in [false, true] {
            h.write_virt(K, a, &pattern(len as usize, 1)).unwrap();
            h.write_virt(K, b, &pattern(len as usize, 2)).unwrap();
            if staged {
                copy_virt_staged(&h, K, at(from), K, at(to), n).unwrap();
            } else {
                h.copy_virt(K, at(from), K, at(to), n).unwrap();
            }
            let mut both = read(&h, a, len);
            both.extend(read(&h, b, len));
            results.push(both);
        }
        let mut want = pattern(len as usize, 1);
        want.extend(pattern(len as usize, 2));
        want.copy_within(from as usize..(from + n) as usize, to as usize);
        assert!(results[0] == want, "host copy_virt {from} -> {to} ({n})");
        assert!(results[1] == want, "staged default {from} -> {to} ({n})");
    }
    assert_eq!(h.copy_virt(K, a, K, b, 0), Ok(()));
    h.free_pages(a, len).unwrap();
    h.free_pages(b, len).unwrap();
}

#[test]
fn copy_virt_through_an_aliasing_second_mapping_is_a_memmove() {
    let h = host();
    let p = page(&h);
    let len = 4 * p;
    let a = h.allocate_pages(len, &PageRequest::WIRED).unwrap();
    let req = |read_only| MapRequest {
        task: K,
        at: None,
        read_only,
        cache: CacheMode::CopyBack,
    };
    let piece = [MapPiece {
        src: MapSource::Virtual(K, a),
        len,
    }];
    let m = h.map_pages(&piece, &req(false)).unwrap();
    let ro = h.map_pages(&piece, &req(true)).unwrap();
    let before = pattern(len as usize, 9);
    // m + 100 is a + 100: a plain forward copy of a[0..2p] through it would reread bytes it
    // had already overwritten.
    for (from, to) in [(a, VirtAddr(m.0 + 100)), (VirtAddr(m.0 + 100), a)] {
        h.write_virt(K, a, &before).unwrap();
        h.copy_virt(K, from, K, to, 2 * p).unwrap();
        let mut want = before.clone();
        let (f, t) = if from == a { (0, 100) } else { (100, 0) };
        want.copy_within(f..f + 2 * p as usize, t);
        assert!(read(&h, a, len) == want, "aliased copy {f} -> {t}");
    }
    // A read-only view is no destination; nothing changes.
    h.write_virt(K, a, &before).unwrap();
    assert!(matches!(
        h.copy_virt(K, VirtAddr(a.0 + 1), K, ro, 64),
        Err(Error::NotWritable { addr, .. }) if addr == ro.0
    ));
    assert!(read(&h, a, len) == before);
    // Unknown memory on either side is NotMapped naming that address; so is a range that
    // runs past the allocation.
    let local = [7u8; 64];
    let stack = VirtAddr(local.as_ptr() as u64);
    assert!(matches!(
        h.copy_virt(K, stack, K, a, 64),
        Err(Error::NotMapped { addr, .. }) if addr == stack.0
    ));
    assert!(matches!(
        h.copy_virt(K, a, K, VirtAddr(a.0 + len - 8), 64),
        Err(Error::NotMapped { addr, .. }) if addr == a.0 + len - 8
    ));
    assert!(matches!(
        h.copy_virt(Task(1), a, K, a, 1),
        Err(Error::Unsupported { .. })
    ));
    assert!(read(&h, a, len) == before);
    assert_eq!(local, [7u8; 64]);
    h.unmap_pages(K, m, len).unwrap();
    h.unmap_pages(K, ro, len).unwrap();
    h.free_pages(a, len).unwrap();
}

#[test]
fn copy_virt_reaches_registered_regions() {
    let h = host();
    let a = h.allocate_pages(page(&h), &PageRequest::WIRED).unwrap();
    let mut v = pattern(3000, 4);
    // SAFETY: `v` outlives the registration (unregistered below) and is not touched through
    // Rust references while the host copies.
    let r = unsafe { h.register_region(v.as_mut_ptr(), v.len()) }.unwrap();
    h.copy_virt(K, VirtAddr(r.0 + 10), K, VirtAddr(a.0 + 3), 2000)
        .unwrap();
    h.write_virt(K, a, &[0xEE; 3]).unwrap();
    h.copy_virt(K, a, K, r, 5).unwrap();
    h.unregister_region(r).unwrap();
    let got = read(&h, VirtAddr(a.0 + 3), 2000);
    assert!(got == pattern(3000, 4)[10..2010]);
    assert_eq!(&v[..5], &[0xEE, 0xEE, 0xEE, got[0], got[1]]);
    h.free_pages(a, page(&h)).unwrap();
}

/// A free 2 MiB hugepage for bounce buffers: there already, or reserved (as root) until
/// drop, restoring `nr_hugepages` as it was.
struct Hugepage {
    restore: Option<u64>,
}

impl Hugepage {
    fn get() -> Option<Hugepage> {
        if HugepagePool::probe().free > 0 {
            return Some(Hugepage { restore: None });
        }
        if !need_root("reserving a hugepage for bounce buffers") {
            return None;
        }
        let before = HugepagePool::probe().total;
        let g = Hugepage {
            restore: Some(before),
        };
        if std::fs::write(NR, (before + 1).to_string()).is_err() || HugepagePool::probe().free == 0
        {
            println!("skipped: no hugepage could be reserved for bounce buffers");
            return None;
        }
        Some(g)
    }
}

impl Drop for Hugepage {
    fn drop(&mut self) {
        if let Some(n) = self.restore {
            let _ = std::fs::write(NR, n.to_string());
        }
    }
}

fn segments(cmd: &DmaCommand<Arc<Host>>) -> Vec<IoSegment> {
    let f = SegmentFormat::Host64;
    let mut out = vec![0u8; 256 * f.element_size()];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut out).unwrap();
    (0..n).map(|i| f.read(&out, i).unwrap()).collect()
}

#[test]
fn bounce_copies_move_the_right_bytes_across_the_parts_of_a_multi_descriptor() {
    let h = Arc::new(host());
    if !need_physical(&h) {
        return;
    }
    let Some(_hugepage) = Hugepage::get() else {
        return;
    };
    let p = page(&h);
    let buffer = |len| -> Arc<dyn MemoryDescriptor> {
        Arc::new(
            BufferMemoryDescriptor::new(h.clone(), BufferOptions::new(len, Direction::InOut))
                .unwrap(),
        )
    };
    // A wired buffer; two unaligned ranges of a pageable allocation; a physical range from
    // an odd offset of a wired buffer (copied the slow way); another buffer.
    let va = h.allocate_pages(4 * p, &PageRequest::PAGEABLE).unwrap();
    let task_part: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_ranges(
            h.clone(),
            K,
            &[
                (VirtAddr(va.0 + 123), 3000),
                (VirtAddr(va.0 + 2 * p + 5), p + 700),
            ],
            Direction::InOut,
        )
        .unwrap(),
    );
    let holder = buffer(p);
    let pa = holder.physical_segment(17).unwrap().addr;
    let phys_part: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_physical_ranges(h.clone(), &[(pa, 2000)], Direction::InOut)
            .unwrap(),
    );
    let parts = vec![buffer(5000), task_part, phys_part, buffer(9001)];
    let multi = Arc::new(MultiMemoryDescriptor::new(parts, Direction::InOut).unwrap());
    let total = multi.length();
    let pool = Arc::new(BouncePool::new(h.clone(), "bounce test pool", 1 << 20));
    pool.set_force_bounce(true);
    let mut cmd = DmaCommand::builder(h.clone())
        .spec(SegmentSpec::builder().build().unwrap())
        .bounce_pool(pool.clone())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(multi.clone()).unwrap();
    let device_reads = |segs: &[IoSegment]| {
        let mut v = Vec::new();
        for s in segs {
            let mut chunk = vec![0u8; s.len as usize];
            h.read_phys(PhysAddr(s.addr.0), &mut chunk).unwrap();
            v.extend(chunk);
        }
        v
    };
    let windows = [
        (0, total),
        (1, 4097),
        (4990, 20),
        (6001, 3000 + p + 700 + 2000 + 3),
        (total - 1, 1),
    ];
    let mut counted = 0;
    for (round, &(off, len)) in windows.iter().enumerate() {
        let (o, n) = (off as usize, len as usize);
        let before = pattern(total as usize, round as u8);
        assert_eq!(multi.write_bytes(0, &before), total as usize);
        cmd.prepare(PrepareOptions::range(off, len).flush_cache(false))
            .unwrap();
        assert!(cmd.is_bounced());
        counted += len;
        let segs = segments(&cmd);
        assert!(
            device_reads(&segs) == before[o..o + n],
            "prepare {off}+{len}"
        );

        let changed = pattern(total as usize, 100 + round as u8);
        assert_eq!(multi.write_bytes(0, &changed), changed.len());
        cmd.synchronize(Direction::Out).unwrap();
        counted += len;
        assert!(device_reads(&segs) == changed[o..o + n], "Out {off}+{len}");

        // The "device" writes the bounce buffer by physical address.
        let written = pattern(n, 200 + round as u8);
        let mut at = 0;
        for s in &segs {
            h.write_phys(PhysAddr(s.addr.0), &written[at..at + s.len as usize])
                .unwrap();
            at += s.len as usize;
        }
        cmd.complete().unwrap();
        counted += len;
        let mut expect = changed.clone();
        expect[o..o + n].copy_from_slice(&written);
        let mut now = vec![0u8; total as usize];
        assert_eq!(multi.read_bytes(0, &mut now), now.len());
        assert!(now == expect, "complete() {off}+{len}");
        let st = pool.stats();
        assert_eq!((st.bounced_bytes, st.in_use), (counted, 0));
    }
    drop(cmd);
    drop(multi);
    h.free_pages(va, 4 * p).unwrap();
}

/// A copy of 8 KiB or more between two allocations runs after the host's lock is released;
/// everything that takes the lock meanwhile waits for the copy to end. Here a thread copies
/// two 64 KiB sources of uniform bytes into one destination, by turns, while the test
/// thread lends the destination again and again: a lend (or a read) must see one source
/// whole, never a copy half done.
#[test]
fn a_large_copy_outside_the_lock_is_never_seen_half_done() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let h = Arc::new(host());
    let len = 64 << 10;
    let [one, two, dst] = [0u8; 3].map(|_| h.allocate_pages(len, &PageRequest::PAGEABLE).unwrap());
    h.write_virt(K, one, &vec![0x11; len as usize]).unwrap();
    h.write_virt(K, two, &vec![0x22; len as usize]).unwrap();
    h.copy_virt(K, one, K, dst, len).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let copier = {
        let (h, stop) = (h.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut copies = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for from in [two, one] {
                    // Refused while the destination is lent: that is the lend's right.
                    copies += u64::from(h.copy_virt(K, from, K, dst, len).is_ok());
                }
            }
            copies
        })
    };
    let whole = |b: &[u8]| (b[0] == 0x11 || b[0] == 0x22) && b.iter().all(|&x| x == b[0]);
    let mut seen = [0u32; 2];
    for round in 0..3000 {
        if round % 2 == 0 {
            let lent = h.direct_slice(K, dst, len, 0).unwrap();
            assert!(
                whole(lent.bytes()),
                "round {round}: a lend saw a copy half done"
            );
            seen[usize::from(lent.bytes()[0] == 0x22)] += 1;
        } else {
            let b = read(&h, dst, len);
            assert!(whole(&b), "round {round}: a read saw a copy half done");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let copies = copier.join().unwrap();
    assert!(copies > 0, "the copier never got to copy");
    println!(
        "{copies} copies; lends saw source one {} and two {} times",
        seen[0], seen[1]
    );
    for a in [one, two, dst] {
        h.free_pages(a, len).unwrap();
    }
    assert!(h.usage().is_idle());
}
