//! The shared types under threads: 6 threads hammer each one for a bounded time, every
//! result is checked against a model as it happens (no address range handed out twice, no
//! completion lost or doubled), and the totals balance at the end (free space, IO space,
//! bounce bytes, quarantined preparations, the machine's pages and wirings).

use dmakit::alloc::{LockedRangeAllocator, Placement, RangeAllocator};
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{
    BouncePool, DmaCommand, DmaCompletion, DmaEventSource, DmaTransfer, IoSegment, MappingMode,
    PrepareOptions, Quarantine, SegmentSpec,
};
use dmakit::mapper::{Access, IommuMapper, Mapper};
use dmakit::{Direction, IoAddr};
use dmakit_sim::{Machine, MachineBuilder, SimDmaEngine, SimIommu};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type M = Arc<Machine>;

/// Under Miri (which checks every interleaving it runs for data races) fewer threads and
/// rounds: it interprets every instruction.
const THREADS: u64 = if cfg!(miri) { 3 } else { 6 };
/// Each type gets this long (and at most `ROUNDS` rounds per thread).
const BUDGET: Duration = Duration::from_millis(600);
const ROUNDS: u64 = if cfg!(miri) { 20 } else { 4_000 };

/// Runs `f(thread, rng)` on `THREADS` threads until the budget or the round limit; returns
/// the rounds done.
fn hammer(f: impl Fn(u64, &mut ChaCha8Rng) + Sync) -> u64 {
    let end = Instant::now() + BUDGET;
    let rounds = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (f, rounds) = (&f, &rounds);
            s.spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(t);
                for _ in 0..ROUNDS {
                    if Instant::now() >= end {
                        break;
                    }
                    f(t, &mut rng);
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    rounds.into_inner()
}

/// Live ranges, checked for overlap as they are added.
#[derive(Default)]
struct Ranges(Mutex<BTreeMap<u64, u64>>);

impl Ranges {
    fn add(&self, start: u64, len: u64, what: &str) {
        let mut m = self.0.lock().unwrap();
        if let Some((&s, &l)) = m.range(..start + len).next_back() {
            assert!(
                s + l <= start,
                "{what}: [{start:#x}, +{len:#x}) overlaps live [{s:#x}, +{l:#x})"
            );
        }
        m.insert(start, len);
    }

    fn remove(&self, start: u64) {
        assert!(self.0.lock().unwrap().remove(&start).is_some());
    }
}

fn machine(seed: u64) -> M {
    Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .fragmentation(0.5)
            .coherent(true)
            .build()
            .unwrap(),
    )
}

#[test]
fn locked_range_allocator_never_hands_out_a_range_twice() {
    // Good fit uses the per-thread caches; first fit goes to the shared allocator.
    for placement in [Placement::GoodFit, Placement::FirstFit] {
        locked_range_allocator_under_threads(placement);
    }
}

fn locked_range_allocator_under_threads(placement: Placement) {
    let a = LockedRangeAllocator::new(
        RangeAllocator::new(0x10_0000, 0x100_0000, 0x10)
            .unwrap()
            .with_placement(placement),
    );
    let total = a.free_count();
    let live = Ranges::default();
    let rounds = hammer(|_, rng| {
        let size = rng.gen_range(1..64u64) * 0x10;
        let Ok(x) = a.allocate(size, 0) else { return };
        live.add(x, size, "allocate");
        if rng.gen_bool(0.2) {
            // A fixed range next to it, when free.
            if a.allocate_range(x + size, 0x10).is_ok() {
                live.add(x + size, 0x10, "allocate_range");
                live.remove(x + size);
                a.deallocate(x + size, 0x10).unwrap();
            }
        }
        live.remove(x);
        a.deallocate(x, size).unwrap();
    });
    assert!(rounds > 0);
    assert_eq!(a.free_count(), total, "every range came back");
    println!("LockedRangeAllocator ({placement:?}): {rounds} rounds on {THREADS} threads");
}

#[test]
fn iommu_mappers_strict_and_lazy_keep_their_books_under_threads() {
    let m = machine(2);
    for lazy in [false, true] {
        let iommu = Arc::new(SimIommu::new(m.clone()));
        let mapper = Arc::new(if lazy {
            IommuMapper::new_lazy(iommu.clone(), 0x10_0000, 0x40_0000).unwrap()
        } else {
            IommuMapper::new(iommu.clone(), 0x10_0000, 0x40_0000).unwrap()
        });
        let page = Arc::new(
            BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x1000, Direction::InOut))
                .unwrap(),
        );
        let pa = page.physical_segment(0).unwrap().addr;
        let live = Ranges::default();
        let rounds = hammer(|t, rng| {
            let pages = rng.gen_range(1..8u64);
            let iova = mapper.iovm_alloc(pages).unwrap();
            live.add(iova.0, pages * 0x1000, "iovm_alloc");
            for i in 0..pages {
                let a = IoAddr(iova.0 + i * 0x1000);
                mapper.iovm_insert_page(a, pa, Access::READ).unwrap();
                assert_eq!(mapper.translate(a).unwrap().0, pa, "thread {t}");
            }
            iommu.device_read(iova, &mut [0u8; 8]).unwrap();
            live.remove(iova.0);
            mapper.iovm_free(iova, pages).unwrap();
        });
        mapper.flush().unwrap();
        assert_eq!(mapper.usage(), (0, 0));
        assert_eq!((iommu.table_entries(), iommu.iotlb_entries()), (0, 0));
        println!("IommuMapper (lazy: {lazy}): {rounds} rounds on {THREADS} threads");
    }
}

#[test]
fn bounce_pool_stays_within_capacity_and_balances() {
    let m = machine(3);
    let before = m.stats();
    let pool = Arc::new(BouncePool::new(m.clone(), "stress pool", 32 << 10));
    pool.set_force_bounce(true);
    let refused = AtomicU64::new(0);
    let rounds = hammer(|t, rng| {
        let len = rng.gen_range(1..24u64) * 512;
        let data = vec![t as u8; len as usize];
        let md = Arc::new(
            BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::InOut).unwrap(),
        );
        let mut c = DmaCommand::builder(m.clone())
            .bounce_pool(pool.clone())
            .build()
            .unwrap();
        c.set_memory_descriptor(md.clone()).unwrap();
        match c.prepare(PrepareOptions::new()) {
            Ok(()) => {
                assert!(c.is_bounced());
                let mut got = vec![0u8; len as usize];
                assert_eq!(c.read_bytes(0, &mut got), got.len());
                assert_eq!(got, data, "a bounce buffer shared with another thread");
                c.complete().unwrap();
            }
            Err(e) => {
                assert!(e.to_string().contains("stress pool"), "{e}");
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let s = pool.stats();
    assert!(s.high_water <= 32 << 10, "{s:?}");
    assert_eq!(s.in_use, 0, "{s:?}");
    let after = m.stats();
    assert_eq!(
        (after.used_pages(), after.wired_pages),
        (before.used_pages(), before.wired_pages)
    );
    println!(
        "BouncePool: {rounds} rounds on {THREADS} threads, {} refused at capacity, high water {} bytes",
        refused.into_inner(),
        s.high_water
    );
}

#[test]
fn quarantine_holds_dropped_preparations_while_another_thread_quiesces() {
    let m = machine(4);
    let before = m.stats();
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x10_0000, 0x100_0000).unwrap());
    let q = Quarantine::new("stress device");
    let rounds = hammer(|t, rng| {
        // Thread 0 quiesces all the time; the others when much is held (back-pressure).
        if t == 0 || q.held() > 64 {
            q.quiesced().unwrap();
            if t == 0 {
                return;
            }
        }
        let md = Arc::new(
            BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x2000, Direction::InOut))
                .unwrap(),
        );
        let mut c = DmaCommand::builder(m.clone())
            .mapper(mapper.clone() as Arc<dyn Mapper>)
            .quarantine(q.clone())
            .build()
            .unwrap();
        c.set_memory_descriptor(md).unwrap();
        c.prepare(PrepareOptions::new()).unwrap();
        if rng.gen_bool(0.5) {
            c.complete().unwrap();
        }
        // Dropped prepared: the preparation waits in the quarantine.
    });
    q.teardown().unwrap();
    assert_eq!((q.held(), q.live()), (0, 0));
    assert_eq!(mapper.usage(), (0, 0));
    assert_eq!(iommu.table_entries(), 0);
    let after = m.stats();
    assert_eq!(
        (after.used_pages(), after.wired_pages, after.allocations),
        (before.used_pages(), before.wired_pages, before.allocations)
    );
    println!("Quarantine: {rounds} rounds on {THREADS} threads");
}

#[test]
fn event_source_delivers_every_completion_once_under_threads() {
    let m = machine(5);
    let engine = Arc::new(SimDmaEngine::new(m.clone(), None).unwrap());
    let seen: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let s2 = seen.clone();
    let es = Arc::new(DmaEventSource::new(
        engine.clone(),
        move |c: DmaCompletion| {
            assert!(c.status.is_ok(), "{c:?}");
            assert!(
                s2.lock().unwrap().insert(c.ticket, c.bytes).is_none(),
                "delivered twice"
            );
        },
    ));
    engine.connect(es.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let work_loop = es.spawn_work_loop(stop.clone());
    let src = Arc::new(
        BufferMemoryDescriptor::with_bytes(m.clone(), &[7u8; 0x1000], Direction::Out).unwrap(),
    );
    let dst = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(0x1000, Direction::In)).unwrap(),
    );
    let seg = |md: &Arc<BufferMemoryDescriptor<M>>| -> Vec<IoSegment> {
        let mut c = DmaCommand::builder(m.clone())
            .spec(SegmentSpec::builder().build().unwrap())
            .mode(MappingMode::Bypassed)
            .build()
            .unwrap();
        c.set_memory_descriptor(md.clone()).unwrap();
        c.prepare(PrepareOptions::new()).unwrap();
        let s = c.segments().collect::<dmakit::Result<Vec<_>>>().unwrap();
        c.complete().unwrap();
        s
    };
    // The buffers are wired for life; their physical runs stay valid.
    let (s, d) = (seg(&src), seg(&dst));
    let started: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let rounds = hammer(|_, rng| {
        let t = DmaTransfer {
            source: &s,
            dest: &d,
        };
        match es.start(&t) {
            Ok(ticket) => {
                assert!(
                    started.lock().unwrap().insert(ticket, 0x1000).is_none(),
                    "ticket reused"
                );
            }
            Err(dmakit::Error::Busy { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        if rng.gen_bool(0.3) {
            es.poll();
        }
    });
    // Let the work loop and a last poll take the rest.
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < started.lock().unwrap().len() && Instant::now() < deadline {
        es.poll();
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Release);
    dmakit::dma::InterruptSink::raise(&*es);
    work_loop.join().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        *started.lock().unwrap(),
        "each completion once"
    );
    let mut back = [0u8; 0x1000];
    assert_eq!(dst.read_bytes(0, &mut back), back.len());
    assert_eq!(back, [7u8; 0x1000]);
    println!(
        "DmaEventSource: {rounds} rounds on {THREADS} threads, {} transfers",
        started.lock().unwrap().len()
    );
}
