//! The rest of IOKit's descriptor surface on the simulated machine: atomic appends,
//! zero-fill, DMA map length, preparation and descriptor identifiers, cache operations,
//! purgeable memory, buffer direction, buffers in other tasks, zero-copy access, and the
//! checks of composite descriptors.

mod common;

use common::{pattern, Plain};
use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, DmaMapLength, GeneralMemoryDescriptor,
    InterleavedMemoryDescriptor, MemoryDescriptor, MemoryOperation, MultiMemoryDescriptor,
    PurgeableRequest, PurgeableState, SubMemoryDescriptor, FIRST_ID, PREPARATION_ID_UNPREPARED,
    PREPARATION_ID_UNSUPPORTED,
};
use dmakit::platform::{
    CpuAccess, MapPiece, MapRequest, MapSource, PhysicalMemory, Task, VirtualMemory, Wiring,
};
use dmakit::{Direction, Error, PhysAddr, VirtAddr};
use dmakit_sim::{FaultSite, Machine, MachineBuilder, ScratchDevice};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

fn machine(seed: u64) -> Arc<Machine> {
    Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .fragmentation(0.7)
            .build()
            .unwrap(),
    )
}

fn coherent(seed: u64) -> Arc<Machine> {
    Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .coherent(true)
            .build()
            .unwrap(),
    )
}

fn pageable(
    m: &Arc<Machine>,
    capacity: u64,
    dir: Direction,
) -> BufferMemoryDescriptor<Arc<Machine>> {
    BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(capacity, dir).pageable(true))
        .unwrap()
}

fn wired(m: &Arc<Machine>, capacity: u64, dir: Direction) -> BufferMemoryDescriptor<Arc<Machine>> {
    BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(capacity, dir)).unwrap()
}

fn contents(md: &dyn MemoryDescriptor) -> Vec<u8> {
    let mut v = vec![0u8; md.length() as usize];
    assert_eq!(md.read_bytes(0, &mut v), v.len());
    v
}

// ---------------------------------------------------------------------------------------
// appendBytes

/// One appended chunk: a header (thread, sequence) and a body derived from it.
const CHUNK: usize = 37;

fn chunk(thread: u8, seq: u16) -> [u8; CHUNK] {
    let mut c = [0u8; CHUNK];
    c[0] = thread;
    c[1..3].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in c.iter_mut().enumerate().skip(3) {
        *b = (i as u8) ^ thread.wrapping_mul(17) ^ (seq as u8);
    }
    c
}

#[test]
fn concurrent_appends_keep_every_byte() {
    const THREADS: u8 = 8;
    // Under Miri, which checks the threads for data races, fewer appends per thread.
    const PER_THREAD: u16 = if cfg!(miri) { 40 } else { 1500 };
    let m = machine(40);
    // Not a multiple of the chunk: the last append that fits is truncated.
    let capacity = (THREADS as u64 * PER_THREAD as u64 * CHUNK as u64) * 3 / 4 + 11;
    let b = wired(&m, capacity, Direction::InOut);
    b.set_length(0).unwrap();
    let appended: Mutex<Vec<(u8, u16, usize)>> = Mutex::new(Vec::new());
    let start = std::sync::Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (b, appended, start) = (&b, &appended, &start);
            s.spawn(move || {
                start.wait();
                for seq in 0..PER_THREAD {
                    let n = b.append_bytes(&chunk(t, seq));
                    if n > 0 {
                        appended.lock().unwrap().push((t, seq, n));
                    }
                }
            });
        }
    });
    let appended = appended.into_inner().unwrap();
    let total: usize = appended.iter().map(|a| a.2).sum();
    assert_eq!(
        total as u64,
        b.length(),
        "the counts returned add up to the length"
    );
    assert_eq!(b.length(), capacity, "appends stop exactly at the capacity");
    let partial: Vec<_> = appended.iter().filter(|a| a.2 < CHUNK).collect();
    assert_eq!(partial.len(), 1, "one append was truncated: {partial:?}");
    // Every chunk is intact and where its own append put it.
    let data = contents(&b);
    let mut seen = HashSet::new();
    let mut last_seq = [None::<u16>; THREADS as usize];
    for piece in data.chunks(CHUNK) {
        let t = piece[0];
        let seq = u16::from_le_bytes([piece[1], piece[2]]);
        assert!(t < THREADS, "a chunk header was overwritten");
        assert_eq!(
            piece,
            &chunk(t, seq)[..piece.len()],
            "chunk ({t}, {seq}) is torn"
        );
        assert!(seen.insert((t, seq)), "chunk ({t}, {seq}) appears twice");
        assert!(
            last_seq[t as usize].is_none_or(|p| p < seq),
            "a thread's chunks are in its order"
        );
        last_seq[t as usize] = Some(seq);
        assert!(appended
            .iter()
            .any(|&(at, aseq, n)| (at, aseq, n) == (t, seq, piece.len())));
    }
    assert_eq!(
        seen.len(),
        appended.len(),
        "every successful append is in the buffer"
    );
}

// ---------------------------------------------------------------------------------------
// writeBytes with a NULL buffer

#[test]
fn fill_zero_on_every_kind_is_all_or_nothing() {
    let m = machine(41);
    let buf: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::with_bytes(m.clone(), &pattern(9000, 1), Direction::InOut).unwrap(),
    );
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x3000, true).unwrap();
    m.write_virt(t, va, &pattern(0x3000, 2)).unwrap();
    let general: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_ranges(
            m.clone(),
            t,
            &[(VirtAddr(va.0 + 0x2000), 0x800), (va, 0x1800)],
            Direction::InOut,
        )
        .unwrap(),
    );
    let sub: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(buf.clone(), 1000, 5000, Direction::InOut).unwrap());
    let multi: Arc<dyn MemoryDescriptor> = Arc::new(
        MultiMemoryDescriptor::new(vec![sub.clone(), general.clone()], Direction::InOut).unwrap(),
    );
    let mut il = InterleavedMemoryDescriptor::with_capacity(2, Direction::InOut);
    il.set_memory_descriptor(general.clone(), 100, 2000)
        .unwrap();
    il.set_memory_descriptor(buf.clone(), 8000, 1000).unwrap();
    let il: Arc<dyn MemoryDescriptor> = Arc::new(il);
    for (name, md) in [
        ("buffer", &buf),
        ("general", &general),
        ("sub", &sub),
        ("multi", &multi),
        ("interleaved", &il),
    ] {
        let len = md.length();
        let before = contents(md.as_ref());
        // A range crossing pages (and parts of the composites), in the middle.
        let (off, n) = (len / 3, len / 2);
        assert_eq!(md.fill_zero(off, n), n, "{name}");
        let after = contents(md.as_ref());
        for (i, (&a, &b)) in after.iter().zip(&before).enumerate() {
            let inside = (off..off + n).contains(&(i as u64));
            assert_eq!(a, if inside { 0 } else { b }, "{name}: byte {i}");
        }
        // All or nothing at the bounds: nothing written, 0 returned.
        let refill = pattern(len as usize, 9);
        assert_eq!(md.write_bytes(0, &refill), len as usize);
        assert_eq!(md.fill_zero(len - 10, 11), 0, "{name}: runs past the end");
        assert_eq!(md.fill_zero(len, 1), 0, "{name}: at the end");
        assert_eq!(md.fill_zero(u64::MAX, 2), 0, "{name}: overflow");
        assert_eq!(md.fill_zero(5, u64::MAX), 0, "{name}: overflow");
        assert_eq!(md.fill_zero(5, 0), 0, "{name}: nothing");
        assert_eq!(
            contents(md.as_ref()),
            refill,
            "{name}: refused fills wrote nothing"
        );
        assert_eq!(
            md.fill_zero(len - 10, 10),
            10,
            "{name}: up to the end exactly"
        );
    }
    // Prepared read-only (for Out): refused.
    let out = pageable(&m, 8192, Direction::Out);
    assert_eq!(out.write_bytes(0, &[7; 100]), 100);
    let md: &dyn MemoryDescriptor = &out;
    let p = md.prepare(Direction::None).unwrap();
    assert_eq!(md.fill_zero(0, 100), 0);
    let mut b = [0u8; 100];
    assert_eq!(out.read_bytes(0, &mut b), b.len());
    assert_eq!(b, [7; 100], "nothing was zeroed");
    p.complete().unwrap();
    assert_eq!(md.fill_zero(0, 100), 100);
}

// ---------------------------------------------------------------------------------------
// getDMAMapLength

#[test]
fn dma_map_length_counts_whole_pages_of_coalesced_runs() {
    let m = machine(42);
    let page = m.page_size().bytes();
    assert_eq!(page, 0x1000);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x8000, true).unwrap().0;
    // Two ranges that continue one another (one run of 0x1800 from page offset 0x100,
    // touching two pages), then a far one of 0x10 bytes (one page).
    let d = GeneralMemoryDescriptor::with_ranges(
        m.clone(),
        t,
        &[
            (VirtAddr(va + 0x100), 0x1000),
            (VirtAddr(va + 0x1100), 0x800),
            (VirtAddr(va + 0x5010), 0x10),
        ],
        Direction::In,
    )
    .unwrap();
    assert_eq!(
        d.dma_map_length().unwrap(),
        DmaMapLength {
            bytes: 0x3000,
            offset: 0x100
        },
        "without coalescing the first two ranges would need three pages"
    );
    // Zero-length ranges neither count nor break a run.
    let z = GeneralMemoryDescriptor::with_ranges(
        m.clone(),
        t,
        &[(VirtAddr(va + 0x7000), 0), (VirtAddr(va + 0x7ff0), 0x20)],
        Direction::In,
    );
    // [va+0x7ff0, va+0x8010) runs past the allocation, but the length needs no memory.
    let z = z.unwrap();
    assert_eq!(
        z.dma_map_length().unwrap(),
        DmaMapLength {
            bytes: 0x2000,
            offset: 0xff0
        }
    );
    // No memory behind it: its length, offset 0.
    let empty = GeneralMemoryDescriptor::with_ranges(
        m.clone(),
        t,
        &[(VirtAddr(va + 0x123), 0)],
        Direction::In,
    )
    .unwrap();
    assert_eq!(
        empty.dma_map_length().unwrap(),
        DmaMapLength {
            bytes: 0,
            offset: 0
        }
    );
    // Physical ranges coalesce the same way, and so do parts of a composite.
    let phys = GeneralMemoryDescriptor::with_physical_ranges(
        m.clone(),
        &[
            (PhysAddr(0x10_0800), 0x800),
            (PhysAddr(0x10_1000), 0x1000),
            (PhysAddr(0x20_0000), 1),
        ],
        Direction::Out,
    )
    .unwrap();
    assert_eq!(
        phys.dma_map_length().unwrap(),
        DmaMapLength {
            bytes: 0x3000,
            offset: 0x800
        }
    );
    let buf: Arc<dyn MemoryDescriptor> = Arc::new(wired(&m, 0x3000, Direction::Out));
    let a: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(buf.clone(), 0x10, 0x1000, Direction::Out).unwrap());
    let b: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(buf.clone(), 0x1010, 0x100, Direction::Out).unwrap());
    let multi = MultiMemoryDescriptor::new(vec![a, b], Direction::Out).unwrap();
    assert_eq!(
        multi.dma_map_length().unwrap(),
        DmaMapLength {
            bytes: 0x2000,
            offset: 0x10
        },
        "adjacent parts are one run"
    );
    // A run whose last page would end past the address space.
    let top = GeneralMemoryDescriptor::with_physical_ranges(
        m.clone(),
        &[(PhysAddr(u64::MAX - 0x10), 0x8)],
        Direction::Out,
    )
    .unwrap();
    assert!(matches!(top.dma_map_length(), Err(Error::Overflow { .. })));
}

// ---------------------------------------------------------------------------------------
// getPreparationID / getDescriptorID

#[test]
fn preparation_ids_follow_preparations() {
    let m = machine(43);
    // Physical: always prepared; one identifier, on first query.
    let phys = GeneralMemoryDescriptor::with_physical_ranges(
        m.clone(),
        &[(PhysAddr(0x10_0000), 0x100)],
        Direction::Out,
    )
    .unwrap();
    let p0 = phys.preparation_id();
    assert!(p0 >= FIRST_ID);
    phys.prepare_wiring(Direction::None).unwrap();
    phys.complete().unwrap();
    assert_eq!(phys.preparation_id(), p0);

    // Virtual: unprepared, then one identifier per preparation.
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x2000, true).unwrap();
    let g = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), t, va, 0x2000, Direction::InOut)
            .unwrap(),
    );
    assert_eq!(g.preparation_id(), PREPARATION_ID_UNPREPARED);
    g.prepare_wiring(Direction::None).unwrap();
    let v1 = g.preparation_id();
    assert!(v1 >= FIRST_ID && v1 != p0);
    g.prepare_wiring(Direction::None).unwrap();
    assert_eq!(
        g.preparation_id(),
        v1,
        "a nested prepare is the same preparation"
    );
    g.complete().unwrap();
    assert_eq!(g.preparation_id(), v1, "still prepared once");

    // A window follows its parent with an identifier of its own.
    let parent: Arc<dyn MemoryDescriptor> = g.clone();
    let sub = SubMemoryDescriptor::new(parent.clone(), 0x100, 0x100, Direction::In).unwrap();
    let s1 = sub.preparation_id();
    assert!(s1 >= FIRST_ID && s1 != v1);
    assert_eq!(sub.preparation_id(), s1);

    g.complete().unwrap();
    assert_eq!(
        g.preparation_id(),
        PREPARATION_ID_UNPREPARED,
        "reset at the last complete"
    );
    assert_eq!(sub.preparation_id(), PREPARATION_ID_UNPREPARED);
    g.prepare_wiring(Direction::None).unwrap();
    let v2 = g.preparation_id();
    assert!(
        v2 >= FIRST_ID && v2 != v1,
        "a new preparation, a new identifier"
    );
    let s2 = sub.preparation_id();
    assert!(s2 >= FIRST_ID && s2 != s1 && s2 != v2);

    // A multi-descriptor is unprepared while any part is.
    let va2 = m.vm_allocate(t, 0x1000, true).unwrap();
    let h: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), t, va2, 0x1000, Direction::InOut)
            .unwrap(),
    );
    let multi =
        MultiMemoryDescriptor::new(vec![parent.clone(), h.clone()], Direction::InOut).unwrap();
    assert_eq!(multi.preparation_id(), PREPARATION_ID_UNPREPARED);
    h.prepare_wiring(Direction::None).unwrap();
    let m1 = multi.preparation_id();
    assert!(m1 >= FIRST_ID && m1 != v2);
    assert_eq!(multi.preparation_id(), m1);
    h.complete().unwrap();
    assert_eq!(multi.preparation_id(), PREPARATION_ID_UNPREPARED);
    h.prepare_wiring(Direction::None).unwrap();
    let m2 = multi.preparation_id();
    assert!(
        m2 >= FIRST_ID && m2 != m1,
        "a part's new preparation is the multi's too"
    );
    // A part that does not track preparations makes the whole untracked.
    let plain: Arc<dyn MemoryDescriptor> = Arc::new(Plain(h.clone()));
    assert_eq!(plain.preparation_id(), PREPARATION_ID_UNSUPPORTED);
    assert_eq!(plain.descriptor_id(), 0);
    let with_plain = MultiMemoryDescriptor::new(vec![h.clone(), plain], Direction::InOut).unwrap();
    assert_eq!(with_plain.preparation_id(), PREPARATION_ID_UNSUPPORTED);

    // An interleaved descriptor is unprepared until it is prepared itself.
    let mut il = InterleavedMemoryDescriptor::with_capacity(1, Direction::InOut);
    il.set_memory_descriptor(h.clone(), 0, 0x10).unwrap();
    assert_eq!(il.preparation_id(), PREPARATION_ID_UNPREPARED);
    il.prepare_wiring(Direction::None).unwrap();
    assert!(il.preparation_id() >= FIRST_ID);
    il.complete().unwrap();
    assert_eq!(il.preparation_id(), PREPARATION_ID_UNPREPARED);

    // A wired buffer is prepared for its whole life: one identifier.
    let w = wired(&m, 100, Direction::Out);
    let w1 = w.preparation_id();
    assert!(w1 >= FIRST_ID);
    let md: &dyn MemoryDescriptor = &w;
    md.prepare(Direction::None).unwrap().complete().unwrap();
    assert_eq!(w.preparation_id(), w1);
    h.complete().unwrap();
    g.complete().unwrap();
}

#[test]
fn descriptor_ids_are_unique_and_stable() {
    let m = machine(44);
    let buf: Arc<dyn MemoryDescriptor> = Arc::new(wired(&m, 100, Direction::Out));
    let other: Arc<dyn MemoryDescriptor> = Arc::new(wired(&m, 100, Direction::Out));
    let sub: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(buf.clone(), 0, 10, Direction::Out).unwrap());
    let multi: Arc<dyn MemoryDescriptor> = Arc::new(
        MultiMemoryDescriptor::new(vec![buf.clone(), other.clone()], Direction::Out).unwrap(),
    );
    let il: Arc<dyn MemoryDescriptor> = Arc::new(InterleavedMemoryDescriptor::with_capacity(
        1,
        Direction::Out,
    ));
    let all = [buf, other, sub, multi, il];
    let ids: Vec<u64> = all.iter().map(|d| d.descriptor_id()).collect();
    assert!(ids.iter().all(|&i| i >= FIRST_ID), "{ids:x?}");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "{ids:x?}"
    );
    let again: Vec<u64> = all.iter().map(|d| d.descriptor_id()).collect();
    assert_eq!(ids, again);
}

// ---------------------------------------------------------------------------------------
// performOperation

#[test]
fn cache_operations_reach_dram_on_a_non_coherent_machine() {
    let m = machine(45);
    let b = wired(&m, 0x2000, Direction::Out);
    let seg = b.physical_segment(0x1000).unwrap();
    assert_eq!(b.write_bytes(0x1000, b"for the device"), 14);
    let mut seen = [0u8; 14];
    m.device_read(seg.addr, &mut seen).unwrap();
    assert_eq!(seen, [0; 14], "still in a dirty line");
    b.perform_operation(MemoryOperation::Store, 0x1000, 14)
        .unwrap();
    m.device_read(seg.addr, &mut seen).unwrap();
    assert_eq!(&seen, b"for the device", "stored: DRAM has it");
    let (cached, dirty) = m.stats().cached_lines;
    assert!(cached > 0 && dirty == 0, "a store keeps the lines, clean");
    b.perform_operation(MemoryOperation::Flush, 0, 0x2000)
        .unwrap();
    assert_eq!(m.stats().cached_lines, (0, 0), "a flush drops them");

    // Invalidate keeps the CPU's bytes outside the range; Discard does not.
    for (op, outside_kept) in [
        (MemoryOperation::Invalidate, true),
        (MemoryOperation::Discard, false),
    ] {
        let b = wired(&m, 0x1000, Direction::In);
        let pa = b.physical_segment(0).unwrap().addr;
        // Byte 120 shares a line with the end of the range [0, 100).
        assert_eq!(b.write_bytes(120, &[0xAA]), 1);
        m.device_write(pa, &[0x55; 64]).unwrap();
        b.perform_operation(op, 0, 100).unwrap();
        let mut got = [0u8; 128];
        assert_eq!(b.read_bytes(0, &mut got), got.len());
        assert_eq!(&got[..64], &[0x55; 64], "{op:?}: the device's bytes");
        assert_eq!(got[120] == 0xAA, outside_kept, "{op:?}");
    }
}

#[test]
fn cache_operations_cover_what_they_can_and_say_what_they_could_not() {
    let m = machine(46);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x3000, true).unwrap();
    let g: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), t, va, 0x3000, Direction::InOut)
            .unwrap(),
    );
    for op in [
        MemoryOperation::Flush,
        MemoryOperation::Store,
        MemoryOperation::Invalidate,
        MemoryOperation::Discard,
    ] {
        assert_eq!(
            g.perform_operation(op, 0, 0x3000),
            Err(Error::Underrun {
                what: "memory operation (a physical segment could not be reached)",
                done: 0,
                requested: 0x3000
            }),
            "unprepared virtual memory has no segments"
        );
    }
    let p = g.prepare(Direction::None).unwrap();
    g.perform_operation(MemoryOperation::Flush, 0x10, 0x2000)
        .unwrap();
    // Clipped at the end, as in IOKit; an offset past the end covers nothing.
    g.perform_operation(MemoryOperation::Flush, 0x2000, u64::MAX)
        .unwrap();
    g.perform_operation(MemoryOperation::Flush, 0x3000, 5)
        .unwrap();
    assert!(matches!(
        g.perform_operation(MemoryOperation::Flush, 0x3001, 5),
        Err(Error::Underrun {
            done: 0,
            requested: 5,
            ..
        })
    ));
    g.perform_operation(MemoryOperation::Flush, 0x3001, 0)
        .unwrap();

    // A composite stops at the first part that falls short, and counts what it covered.
    let va2 = m.vm_allocate(t, 0x1000, true).unwrap();
    let h: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), t, va2, 0x1000, Direction::InOut)
            .unwrap(),
    );
    let multi = MultiMemoryDescriptor::new(vec![g.clone(), h.clone()], Direction::InOut).unwrap();
    let e = multi
        .perform_operation(MemoryOperation::Store, 0x2800, 0x1000)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Underrun {
                done: 0x800,
                requested: 0x1000,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.io_return(), dmakit::IoReturn::UNDERRUN);
    let sub = SubMemoryDescriptor::new(g.clone(), 0x2f00, 0x100, Direction::In).unwrap();
    sub.perform_operation(MemoryOperation::Store, 0, 0x100)
        .unwrap();
    let mut il = InterleavedMemoryDescriptor::with_capacity(2, Direction::InOut);
    il.set_memory_descriptor(g.clone(), 0, 0x10).unwrap();
    il.set_memory_descriptor(h.clone(), 0, 0x10).unwrap();
    assert!(matches!(
        il.perform_operation(MemoryOperation::Flush, 0, 0x20),
        Err(Error::Underrun {
            done: 0x10,
            requested: 0x20,
            ..
        })
    ));
    drop(p);

    // Device memory the cache model does not hold (an MMIO window).
    let dev = Arc::new(Mutex::new(ScratchDevice::new(1, 0x1000)));
    m.add_mmio(PhysAddr(0xF000_0000), 0x1000, dev).unwrap();
    let regs = dmakit::descriptor::device_memory(m.clone(), PhysAddr(0xF000_0000), 0x100).unwrap();
    assert!(matches!(
        regs.perform_operation(MemoryOperation::Flush, 0, 0x100),
        Err(Error::Underrun { done: 0, .. })
    ));
    // A descriptor of the user's own that cannot reach a platform.
    let plain = Plain(g.clone());
    assert!(matches!(
        plain.perform_operation(MemoryOperation::Flush, 0, 1),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn cache_operations_succeed_at_once_on_a_coherent_machine() {
    let m = coherent(47);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x2000, true).unwrap();
    // Even unprepared virtual memory, whose segments nobody could find.
    let g = GeneralMemoryDescriptor::with_address_range(m.clone(), t, va, 0x2000, Direction::InOut)
        .unwrap();
    for op in [
        MemoryOperation::Flush,
        MemoryOperation::Store,
        MemoryOperation::Invalidate,
        MemoryOperation::Discard,
    ] {
        g.perform_operation(op, 0, 0x2000).unwrap();
    }
    assert_eq!(
        m.stats().calls(FaultSite::Translate),
        0,
        "nothing was walked"
    );
}

// ---------------------------------------------------------------------------------------
// setPurgeable

#[test]
fn volatile_memory_may_be_discarded_and_then_reads_as_zeros() {
    let m = machine(48);
    let b = pageable(&m, 0x3000, Direction::InOut);
    let keep = pageable(&m, 0x1000, Direction::InOut);
    assert_eq!(b.write_bytes(0, &pattern(0x3000, 3)), 0x3000);
    assert_eq!(keep.write_bytes(0, &pattern(0x1000, 4)), 0x1000);
    assert_eq!(
        b.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::NonVolatile)
    );
    assert_eq!(
        b.set_purgeable(PurgeableRequest::Volatile),
        Ok(PurgeableState::NonVolatile)
    );
    assert_eq!(
        b.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::Volatile)
    );
    // Until the machine chooses to discard it, it keeps its bytes.
    assert_eq!(contents(&b), pattern(0x3000, 3));
    let free_before = m.stats().free_pages;
    assert_eq!(m.purge_volatile(), 3);
    assert_eq!(
        m.stats().free_pages,
        free_before + 3,
        "the pages went back to the pool"
    );
    assert_eq!(
        b.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::Empty)
    );
    assert_eq!(contents(&b), vec![0; 0x3000]);
    assert_eq!(
        contents(&keep),
        pattern(0x1000, 4),
        "non-volatile memory is never discarded"
    );
    assert_eq!(
        b.set_purgeable(PurgeableRequest::NonVolatile),
        Ok(PurgeableState::Empty)
    );
    assert_eq!(
        b.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::NonVolatile)
    );
    assert_eq!(b.write_bytes(0, b"again"), 5);
    assert_eq!(m.purge_volatile(), 0);
    let mut five = [0u8; 5];
    assert_eq!(b.read_bytes(0, &mut five), five.len());
    assert_eq!(&five, b"again");
    // Empty discards at once.
    assert_eq!(
        b.set_purgeable(PurgeableRequest::Empty),
        Ok(PurgeableState::NonVolatile)
    );
    assert_eq!(b.read_bytes(0, &mut five), five.len());
    assert_eq!(five, [0; 5]);
    assert!(m
        .page_table(Task::KERNEL)
        .unwrap()
        .iter()
        .any(|e| e.purgeable == PurgeableState::Empty));
}

#[test]
fn purgeable_state_needs_unwired_virtual_memory() {
    let m = machine(49);
    // Physical memory has none.
    let phys = GeneralMemoryDescriptor::with_physical_ranges(
        m.clone(),
        &[(PhysAddr(0x10_0000), 0x1000)],
        Direction::Out,
    )
    .unwrap();
    assert!(matches!(
        phys.set_purgeable(PurgeableRequest::Volatile),
        Err(Error::Unsupported { .. })
    ));
    // A wired buffer is prepared for its whole life.
    let w = wired(&m, 0x1000, Direction::Out);
    assert!(matches!(
        w.set_purgeable(PurgeableRequest::Volatile),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(
        w.set_purgeable(PurgeableRequest::Empty),
        Err(Error::Busy { .. })
    ));
    assert_eq!(
        w.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::NonVolatile)
    );
    // Prepared memory cannot be made volatile, but volatile memory may be prepared, and is
    // then kept.
    let b = pageable(&m, 0x2000, Direction::InOut);
    assert_eq!(b.write_bytes(0, &pattern(0x2000, 5)), 0x2000);
    let md: &dyn MemoryDescriptor = &b;
    let p = md.prepare(Direction::None).unwrap();
    assert!(matches!(
        b.set_purgeable(PurgeableRequest::Volatile),
        Err(Error::Busy { .. })
    ));
    // The platform refuses too, for whoever wired it.
    let va = b.address();
    assert!(matches!(
        m.set_purgeable(Task::KERNEL, va, 0x2000, PurgeableRequest::Volatile),
        Err(Error::Busy { .. })
    ));
    p.complete().unwrap();
    assert_eq!(
        b.set_purgeable(PurgeableRequest::Volatile),
        Ok(PurgeableState::NonVolatile)
    );
    let p = md.prepare(Direction::None).unwrap();
    assert_eq!(m.purge_volatile(), 0, "wired volatile pages are kept");
    assert_eq!(contents(&b), pattern(0x2000, 5));
    p.complete().unwrap();
    assert_eq!(m.purge_volatile(), 2);
    // Unaligned ranges would put bytes outside the descriptor at risk.
    let t = m.create_task();
    let tva = m.vm_allocate(t, 0x2000, true).unwrap();
    let g = GeneralMemoryDescriptor::with_address_range(
        m.clone(),
        t,
        VirtAddr(tva.0 + 8),
        0x1000,
        Direction::In,
    )
    .unwrap();
    assert!(matches!(
        g.set_purgeable(PurgeableRequest::Volatile),
        Err(Error::NotAligned { .. })
    ));
    assert_eq!(
        g.set_purgeable(PurgeableRequest::NonVolatile),
        Ok(PurgeableState::NonVolatile)
    );
    // A second mapping of the pages keeps them, and has no state of its own.
    let c = Arc::new(pageable(&m, 0x1000, Direction::InOut));
    let mut map = c.map(dmakit::map::MapOptions::new().unique()).unwrap();
    assert!(matches!(
        c.set_purgeable(PurgeableRequest::Volatile),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(
        m.set_purgeable(
            Task::KERNEL,
            map.address(),
            0x1000,
            PurgeableRequest::KeepCurrent
        ),
        Err(Error::Unsupported { .. })
    ));
    map.unmap().unwrap();
    assert_eq!(
        c.set_purgeable(PurgeableRequest::Volatile),
        Ok(PurgeableState::NonVolatile)
    );
}

#[test]
fn purgeable_state_through_sub_and_multi_descriptors() {
    let m = machine(50);
    let a = Arc::new(pageable(&m, 0x2000, Direction::InOut));
    let b = Arc::new(pageable(&m, 0x1000, Direction::InOut));
    let (ad, bd): (Arc<dyn MemoryDescriptor>, Arc<dyn MemoryDescriptor>) = (a.clone(), b.clone());
    // A window changes its parent's whole memory.
    let sub = SubMemoryDescriptor::new(ad.clone(), 0x100, 0x10, Direction::In).unwrap();
    assert_eq!(
        sub.set_purgeable(PurgeableRequest::Volatile),
        Ok(PurgeableState::NonVolatile)
    );
    assert_eq!(
        a.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::Volatile)
    );
    let multi = MultiMemoryDescriptor::new(vec![ad.clone(), bd.clone()], Direction::InOut).unwrap();
    assert_eq!(
        multi.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::Volatile)
    );
    assert_eq!(m.purge_volatile(), 2);
    // The worst state of any part: Empty over Volatile over NonVolatile.
    assert_eq!(
        multi.set_purgeable(PurgeableRequest::Volatile),
        Ok(PurgeableState::Empty)
    );
    assert_eq!(
        b.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::Volatile)
    );
    assert_eq!(
        multi.set_purgeable(PurgeableRequest::NonVolatile),
        Ok(PurgeableState::Volatile)
    );
    assert_eq!(
        multi.set_purgeable(PurgeableRequest::KeepCurrent),
        Ok(PurgeableState::NonVolatile)
    );
    // Interleaved descriptors have none, as in IOKit.
    let mut il = InterleavedMemoryDescriptor::with_capacity(1, Direction::In);
    il.set_memory_descriptor(ad, 0, 1).unwrap();
    assert!(matches!(
        il.set_purgeable(PurgeableRequest::KeepCurrent),
        Err(Error::Unsupported { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// IOBufferMemoryDescriptor: setDirection, inTaskWithOptions, getBytesNoCopy

#[test]
fn set_direction_changes_later_preparations() {
    let m = machine(51);
    let b = pageable(&m, 0x1000, Direction::In);
    assert_eq!(b.direction(), Direction::In);
    b.set_direction(Direction::Out);
    assert_eq!(b.direction(), Direction::Out);
    let md: &dyn MemoryDescriptor = &b;
    let p = md.prepare(Direction::None).unwrap();
    assert_eq!(b.write_bytes(0, b"x"), 0, "prepared for Out: read-only");
    p.complete().unwrap();
    b.set_direction(Direction::InOut);
    let p = md.prepare(Direction::None).unwrap();
    assert_eq!(b.write_bytes(0, b"x"), 1);
    drop(p);
    // Composites see the new direction.
    let c = pageable(&m, 0x1000, Direction::Out);
    c.set_direction(Direction::InOut);
    let cd: Arc<dyn MemoryDescriptor> = Arc::new(c);
    assert!(MultiMemoryDescriptor::new(vec![cd], Direction::In).is_ok());
}

#[test]
fn buffers_in_another_task() {
    let m = machine(52);
    let t = m.create_task();
    let before = m.stats();
    assert!(matches!(
        BufferMemoryDescriptor::in_task(m.clone(), t, BufferOptions::new(100, Direction::In)),
        Err(Error::BadArgument { value, .. }) if value == t.0 as u64
    ));
    assert_eq!(m.stats().allocations, before.allocations);
    let b = BufferMemoryDescriptor::in_task(
        m.clone(),
        t,
        BufferOptions::new(5000, Direction::InOut).pageable(true),
    )
    .unwrap();
    assert_eq!(b.task(), t);
    assert_eq!(m.stats().allocations, before.allocations + 1);
    assert_eq!(m.stats().kernel_allocations, before.kernel_allocations);
    b.write(10, b"in the task").unwrap();
    let mut there = [0u8; 11];
    m.read_virt(t, VirtAddr(b.address().0 + 10), &mut there)
        .unwrap();
    assert_eq!(&there, b"in the task");
    // Prepared and walked like any pageable buffer of that task.
    let md: &dyn MemoryDescriptor = &b;
    let p = md.prepare(Direction::None).unwrap();
    let seg = md.physical_segment(10).unwrap();
    let mut dram = [0u8; 11];
    m.device_read(seg.addr, &mut dram).unwrap();
    assert!(m.page_table(t).unwrap().iter().any(|e| e.wires > 0));
    p.complete().unwrap();
    drop(b);
    assert_eq!(
        m.stats().allocations,
        before.allocations,
        "freed in its task"
    );
    m.destroy_task(t).unwrap();
}

#[test]
fn bytes_no_copy_bounds_follow_iokit() {
    let m = machine(53);
    let mut b = wired(&m, 100, Direction::InOut);
    assert_eq!(b.write_bytes(0, &pattern(100, 6)), 100);
    assert_eq!(&b.bytes_no_copy(0, 100).unwrap()[..], &pattern(100, 6)[..]);
    assert_eq!(&b.bytes_no_copy(99, 1).unwrap()[..], &pattern(100, 6)[99..]);
    assert_eq!(b.bytes_no_copy(50, 0).unwrap().len(), 0);
    for (start, n) in [
        (100, 0),
        (100, 1),
        (0, 101),
        (99, 2),
        (u64::MAX, 2),
        (1, u64::MAX),
    ] {
        assert!(
            matches!(b.bytes_no_copy(start, n), Err(Error::OutOfBounds { .. })),
            "({start}, {n})"
        );
        assert!(matches!(
            b.bytes_no_copy_mut(start, n),
            Err(Error::OutOfBounds { .. })
        ));
    }
    b.set_length(0).unwrap();
    assert!(
        b.bytes_no_copy(0, 0).is_err(),
        "nothing of a zero-length buffer"
    );
    b.set_length(40).unwrap();
    assert!(
        b.bytes_no_copy(0, 41).is_err(),
        "the length, not the capacity"
    );
}

#[test]
fn bytes_no_copy_lends_the_bytes_and_excludes_devices() {
    let m = machine(54);
    for pageable_buffer in [false, true] {
        let mut b = if pageable_buffer {
            pageable(&m, 0x3000, Direction::InOut)
        } else {
            wired(&m, 0x3000, Direction::InOut)
        };
        // Written through the mutable slice, seen by every other path.
        {
            let mut s = b.bytes_no_copy_mut(0xff0, 0x20).unwrap();
            assert_eq!(s.len(), 0x20);
            s.copy_from_slice(&pattern(0x20, 7));
        }
        let mut back = [0u8; 0x20];
        assert_eq!(b.read_bytes(0xff0, &mut back), back.len());
        assert_eq!(&back[..], &pattern(0x20, 7)[..]);
        // A shared slice sees what was written; while it lives the memory cannot be
        // prepared or stored to, but can be read and lent again.
        let s = b.bytes_no_copy(0xff0, 0x20).unwrap();
        assert_eq!(&s[..], &pattern(0x20, 7)[..]);
        let s2 = b.bytes_no_copy(0, 0x1000).unwrap();
        let md: &dyn MemoryDescriptor = &b;
        assert!(matches!(
            md.prepare(Direction::None),
            Err(Error::Busy { .. })
        ));
        assert_eq!(
            b.write_bytes(0x1000, b"no"),
            0,
            "stores to lent memory are refused"
        );
        assert_eq!(b.read_bytes(0x1000, &mut back[..2]), 2);
        let va = VirtAddr(b.address().0 + 0x1000);
        assert!(matches!(
            m.wire(Task::KERNEL, va, 1, true),
            Err(Error::Busy { .. })
        ));
        assert!(matches!(
            m.direct_slice_mut(Task::KERNEL, va, 1, 1),
            Err(Error::Busy { .. })
        ));
        assert!(matches!(
            m.map_pages(
                &[MapPiece {
                    src: MapSource::Virtual(Task::KERNEL, VirtAddr(b.address().0)),
                    len: 0x1000
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
        assert!(m.page_table(Task::KERNEL).unwrap().iter().any(|e| e.lent));
        drop((s, s2));
        assert!(!m.page_table(Task::KERNEL).unwrap().iter().any(|e| e.lent));
        assert_eq!(b.write_bytes(0x1000, b"ok"), 2);
        // Prepared for a device: no slice.
        let p = md.prepare(Direction::None).unwrap();
        assert!(matches!(b.bytes_no_copy(0, 1), Err(Error::Busy { .. })));
        p.complete().unwrap();
        assert!(b.bytes_no_copy_mut(0, 1).is_ok());
        // Wired by someone else (a device may use it): no slice either.
        let va = b.address();
        m.wire(Task::KERNEL, va, 1, true).unwrap();
        assert!(matches!(b.bytes_no_copy_mut(0, 1), Err(Error::Busy { .. })));
        assert!(matches!(b.bytes_no_copy(0, 1), Err(Error::Busy { .. })));
        m.unwire(Task::KERNEL, va, 1).unwrap();
    }
    assert_eq!(m.stats().wired_pages, 0);
}

#[test]
fn lent_memory_stays_put() {
    let m = machine(55);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x2000, true).unwrap();
    m.write_virt(t, va, b"resident").unwrap();
    let lend = m.direct_slice(t, va, 8, 0).unwrap();
    assert_eq!(lend.bytes(), b"resident");
    assert_eq!(m.page_out(t).unwrap(), 0, "lent pages are not paged out");
    assert_eq!(m.migrate_pageable(t).unwrap(), 0, "nor moved");
    assert!(matches!(
        m.vm_deallocate(t, va, 0x2000),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(m.destroy_task(t), Err(Error::Busy { .. })));
    assert!(matches!(
        m.protect(t, va, 1, false),
        Err(Error::Busy { .. })
    ));
    let pa = m.mappings(t, va, 1).unwrap()[0].1.unwrap();
    assert!(matches!(m.write_phys(pa, b"x"), Err(Error::Busy { .. })));
    let mut one = [0u8; 1];
    m.read_phys(pa, &mut one).unwrap();
    let lend2 = m.direct_slice(t, va, 2, 0).unwrap();
    assert_eq!(lend2.bytes(), b"re", "shared lends overlap");
    drop((lend, lend2));
    let mut w = m.direct_slice_mut(t, va, 8, 0).unwrap();
    w.bytes_mut().copy_from_slice(b"REWRITE!");
    assert!(matches!(
        m.read_virt(t, va, &mut one),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(m.read_phys(pa, &mut one), Err(Error::Busy { .. })));
    assert!(matches!(
        m.direct_slice(t, va, 1, 0),
        Err(Error::Busy { .. })
    ));
    drop(w);
    let mut back = [0u8; 8];
    m.read_virt(t, va, &mut back).unwrap();
    assert_eq!(&back, b"REWRITE!", "written back at the end of the lend");
    m.destroy_task(t).unwrap();
}

// ---------------------------------------------------------------------------------------
// Composite descriptors

#[test]
fn multi_parts_must_agree_on_pageability_and_allow_the_direction() {
    let m = machine(56);
    let p1: Arc<dyn MemoryDescriptor> = Arc::new(pageable(&m, 0x1000, Direction::InOut));
    let p2: Arc<dyn MemoryDescriptor> = Arc::new(pageable(&m, 0x1000, Direction::InOut));
    let w: Arc<dyn MemoryDescriptor> = Arc::new(wired(&m, 0x1000, Direction::InOut));
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x1000, true).unwrap();
    let g: Arc<dyn MemoryDescriptor> = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), t, va, 0x1000, Direction::Out)
            .unwrap(),
    );
    let refused =
        |parts: Vec<Arc<dyn MemoryDescriptor>>, dir| match MultiMemoryDescriptor::new(parts, dir) {
            Err(Error::BadArgument { what, value }) => (what.contains("pageable"), value),
            other => panic!("not refused: {other:?}"),
        };
    assert_eq!(
        refused(vec![p1.clone(), p2.clone(), w.clone()], Direction::Out),
        (true, 2)
    );
    assert_eq!(
        refused(vec![w.clone(), p1.clone()], Direction::Out),
        (true, 1)
    );
    assert_eq!(
        refused(vec![g.clone(), p1.clone()], Direction::Out),
        (true, 1)
    );
    let sub: Arc<dyn MemoryDescriptor> =
        Arc::new(SubMemoryDescriptor::new(p1.clone(), 0, 10, Direction::InOut).unwrap());
    let both =
        MultiMemoryDescriptor::new(vec![p1.clone(), sub, p2.clone()], Direction::InOut).unwrap();
    assert!(both.pageable_buffer());
    assert!(MultiMemoryDescriptor::new(vec![w.clone(), g.clone()], Direction::Out).is_ok());
    // Direction: the offending part is named.
    assert_eq!(
        refused(vec![w.clone(), w.clone(), g.clone()], Direction::In),
        (false, 2)
    );
    // A multi of pageable buffers is one itself, so it nests with them.
    let nested: Arc<dyn MemoryDescriptor> = Arc::new(both);
    assert!(MultiMemoryDescriptor::new(vec![nested, p2], Direction::Out).is_ok());
}

#[test]
fn interleaved_prepare_rolls_back_the_earlier_portions() {
    let m = machine(57);
    let t = m.create_task();
    let va = m.vm_allocate(t, 0x2000, true).unwrap();
    let vb = m.vm_allocate(t, 0x1000, true).unwrap();
    let a = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), t, va, 0x2000, Direction::InOut)
            .unwrap(),
    );
    let b = Arc::new(
        GeneralMemoryDescriptor::with_address_range(m.clone(), t, vb, 0x1000, Direction::InOut)
            .unwrap(),
    );
    let mut il = InterleavedMemoryDescriptor::with_capacity(3, Direction::InOut);
    // The same descriptor twice (two preparations of it), then one that fails to wire.
    il.set_memory_descriptor(a.clone(), 0, 0x800).unwrap();
    il.set_memory_descriptor(a.clone(), 0x1000, 0x800).unwrap();
    il.set_memory_descriptor(b.clone(), 0, 0x800).unwrap();
    m.inject(FaultSite::Pin, m.stats().calls(FaultSite::Pin) + 2);
    assert!(matches!(
        il.prepare_wiring(Direction::None),
        Err(Error::Injected { .. })
    ));
    assert_eq!(
        a.wire_count(),
        0,
        "both preparations of the earlier portions were completed"
    );
    assert_eq!(b.wire_count(), 0);
    assert_eq!(m.stats().wired_pages, 0);
    assert_eq!(il.preparation_id(), PREPARATION_ID_UNPREPARED);
    // And the descriptor is usable afterwards.
    il.prepare_wiring(Direction::None).unwrap();
    assert_eq!((a.wire_count(), b.wire_count()), (2, 1));
    il.complete().unwrap();
    assert_eq!((a.wire_count(), b.wire_count()), (0, 0));
    assert_eq!(m.stats().wired_pages, 0);
    // Only memory was wired once: check the platform agrees with the counts.
    let pages = m.page_table(t).unwrap();
    assert!(pages.iter().all(|e| e.wires == 0));
}
