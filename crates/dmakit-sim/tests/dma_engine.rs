//! The simulated DMA engine as a DmaController, with completions through a DmaEventSource.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{
    DmaCommand, DmaCompletion, DmaController, DmaEventSource, DmaTransfer, InterruptSink,
    IoSegment, MappingMode, SegmentFormat, SegmentSpec,
};
use dmakit::mapper::IommuMapper;
use dmakit::{Direction, Error, IoAddr};
use dmakit_sim::{Machine, MachineBuilder, SimDmaEngine, SimIommu};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type M = Arc<Machine>;

fn segs(cmd: &DmaCommand<M>) -> Vec<IoSegment> {
    let mut out = vec![0u8; 256 * 16];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut out, 256).unwrap();
    (0..n)
        .map(|i| SegmentFormat::Host64.read(&out, i).unwrap())
        .collect()
}

/// An event source on `engine` whose action collects completions.
type Collected = Arc<Mutex<Vec<DmaCompletion>>>;
fn collecting(engine: &Arc<SimDmaEngine>) -> (Arc<DmaEventSource<SimDmaEngine>>, Collected) {
    let got: Collected = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let es = Arc::new(DmaEventSource::new(
        engine.clone(),
        move |c: DmaCompletion| g.lock().unwrap().push(c),
    ));
    engine.connect(es.clone());
    (es, got)
}

fn command(m: &M, md: Arc<dyn MemoryDescriptor>, mode: MappingMode) -> DmaCommand<M> {
    let spec = SegmentSpec::builder().build().unwrap();
    let mut c = DmaCommand::new(m.clone(), spec, SegmentFormat::Host64, mode, None).unwrap();
    c.set_memory_descriptor(md).unwrap();
    c
}

#[test]
fn the_engine_copies_between_two_descriptors_through_the_iommu() {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(2)
            .fragmentation(0.9)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x4000_0000, 0x1000_0000).unwrap());
    let engine = Arc::new(SimDmaEngine::new(m.clone(), Some(iommu.clone())).unwrap());
    let data: Vec<u8> = (0..40_000).map(|i| (i % 241) as u8).collect();
    let src =
        Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::Out).unwrap());
    let dst = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(40_000, Direction::In)).unwrap(),
    );
    let mut cs = command(&m, src.clone(), MappingMode::Mapped(mapper.clone()));
    let mut cd = command(&m, dst.clone(), MappingMode::Mapped(mapper.clone()));
    // Non-coherent machine: the IOMMU path reads DRAM, so the CPU's bytes must be cleaned
    // first. A mapped command does not clean; do it with the platform (as a driver would
    // use a non-coherent command).
    dmakit::map::flush_processor_cache(&*m, dmakit::platform::Task::KERNEL, src.address(), 40_000)
        .unwrap();
    cs.prepare(0, 40_000, true, true).unwrap();
    cd.prepare(0, 40_000, true, true).unwrap();
    let (s, d) = (segs(&cs), segs(&cd));
    assert_eq!(
        (s.len(), d.len()),
        (1, 1),
        "scattered buffers are one IO segment each"
    );
    let (es, got) = collecting(&engine);
    let t = es
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    assert_eq!(es.pending_interrupts(), 1, "the completion interrupt fired");
    assert_eq!(es.poll(), 1);
    assert_eq!(
        got.lock().unwrap()[0],
        DmaCompletion {
            ticket: t,
            bytes: 40_000,
            status: Ok(())
        }
    );
    assert_eq!(engine.query(t).unwrap(), 40_000);
    cd.complete(true).unwrap();
    cs.complete(true).unwrap();
    // The engine wrote DRAM; the CPU has no stale lines for dst (never read it), so:
    let mut back = vec![0u8; 40_000];
    dst.read_bytes(0, &mut back);
    assert!(back == data, "the destination holds the source's bytes");
    // After complete the IO addresses are gone: a transfer there faults and says so.
    let e = es
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    es.poll();
    let last = got.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.ticket, e);
    assert!(
        matches!(last.status, Err(Error::NotMapped { .. })),
        "{last:?}"
    );
    assert!(!iommu.faults().is_empty());
}

#[test]
fn a_thousand_queued_transfers_complete_in_order_with_verified_data() {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(9)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let engine = Arc::new(SimDmaEngine::new(m.clone(), None).unwrap());
    let src = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(1000 * 64, Direction::Out))
            .unwrap(),
    );
    let dst = Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(1000 * 64, Direction::In))
            .unwrap(),
    );
    let data: Vec<u8> = (0..64_000).map(|i| (i * 7 % 256) as u8).collect();
    src.write_bytes(0, &data);
    let mut cs = command(&m, src.clone(), MappingMode::Bypassed);
    let mut cd = command(&m, dst.clone(), MappingMode::Bypassed);
    cs.prepare(0, 64_000, true, true).unwrap();
    cd.prepare(0, 64_000, true, true).unwrap();
    let (es, got) = collecting(&engine);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = es.spawn_work_loop(stop.clone());
    let mut tickets = Vec::new();
    for i in 0..1000u64 {
        // Each transfer moves its own 64 bytes; segments from the prepared commands.
        let s = piece(&cs, i * 64, 64);
        let d = piece(&cd, i * 64, 64);
        loop {
            match es.start(&DmaTransfer {
                source: &s,
                dest: &d,
            }) {
                Ok(t) => {
                    tickets.push(t);
                    break;
                }
                Err(Error::Busy { .. }) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while got.lock().unwrap().len() < 1000 {
        assert!(std::time::Instant::now() < deadline, "completions stalled");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    stop.store(true, Ordering::Release);
    es.raise();
    worker.join().unwrap();
    let done = got.lock().unwrap();
    assert_eq!(
        done.iter().map(|c| c.ticket).collect::<Vec<_>>(),
        tickets,
        "in order"
    );
    assert!(done.iter().all(|c| c.bytes == 64 && c.status.is_ok()));
    let mut back = vec![0u8; 64_000];
    dst.read_bytes(0, &mut back);
    assert!(back == data, "every transfer's bytes arrived");
    cs.complete(true).unwrap();
    cd.complete(true).unwrap();
}

/// The device segments for bytes `[off, off + len)` of a prepared command.
fn piece(cmd: &DmaCommand<M>, off: u64, len: u64) -> Vec<IoSegment> {
    let all = segs(cmd);
    let mut out = Vec::new();
    let mut at = 0;
    for s in all {
        let (lo, hi) = (at.max(off), (at + s.len).min(off + len));
        if lo < hi {
            out.push(IoSegment {
                addr: IoAddr(s.addr.0 + (lo - at)),
                len: hi - lo,
            });
        }
        at += s.len;
    }
    out
}

#[test]
fn fifo_depth_and_bad_transfers() {
    let m: M = Arc::new(MachineBuilder::new().coherent(true).build().unwrap());
    let engine = SimDmaEngine::new(m.clone(), None).unwrap();
    assert_eq!(engine.fifo_depth(), 16);
    assert_eq!(engine.valid_fifo_depth(0), 1);
    assert_eq!(engine.valid_fifo_depth(1000), 256);
    assert!(engine.set_fifo_depth(0).is_err());
    engine.set_fifo_depth(2).unwrap();
    let b =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(8192, Direction::InOut)).unwrap();
    let pa = b.physical_segment(0).unwrap().addr.0;
    let s = [IoSegment {
        addr: IoAddr(pa),
        len: 16,
    }];
    let d = [IoSegment {
        addr: IoAddr(pa + 4096),
        len: 16,
    }];
    engine
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    engine
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    assert!(
        matches!(
            engine.start(&DmaTransfer {
                source: &s,
                dest: &d
            }),
            Err(Error::Busy { .. })
        ),
        "FIFO full"
    );
    let mut n = 0;
    engine.take_completions(&mut |_| n += 1);
    assert_eq!(n, 2);
    let short = [IoSegment {
        addr: IoAddr(pa),
        len: 8,
    }];
    assert!(matches!(
        engine.start(&DmaTransfer {
            source: &short,
            dest: &d
        }),
        Err(Error::BadArgument { .. })
    ));
    assert!(matches!(
        engine.start(&DmaTransfer {
            source: &[],
            dest: &[]
        }),
        Err(Error::BadArgument { .. })
    ));
    assert!(engine.query(999).is_err());
}

#[test]
fn without_a_cache_clean_the_engine_copies_stale_memory() {
    let m: M = Arc::new(MachineBuilder::new().seed(4).build().unwrap());
    let engine = SimDmaEngine::new(m.clone(), None).unwrap();
    let b =
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(8192, Direction::InOut)).unwrap();
    b.write_bytes(0, b"fresh CPU data");
    let pa = b.physical_segment(0).unwrap().addr.0;
    let s = [IoSegment {
        addr: IoAddr(pa),
        len: 14,
    }];
    let d = [IoSegment {
        addr: IoAddr(b.physical_segment(4096).unwrap().addr.0),
        len: 14,
    }];
    engine
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    let mut out = [0u8; 14];
    m.device_read(dmakit::PhysAddr(d[0].addr.0), &mut out)
        .unwrap();
    assert_eq!(
        out, [0u8; 14],
        "the engine read DRAM, where the CPU's bytes had not arrived"
    );
    dmakit::map::flush_processor_cache(&*m, dmakit::platform::Task::KERNEL, b.address(), 14)
        .unwrap();
    engine
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    m.device_read(dmakit::PhysAddr(d[0].addr.0), &mut out)
        .unwrap();
    assert_eq!(&out, b"fresh CPU data");
}
