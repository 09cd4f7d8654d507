//! The simulated DMA engine: its registers and descriptor ring, and its driver as a
//! DmaController with completions through a DmaEventSource.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{
    CompletionSource, DmaCommand, DmaCompletion, DmaController, DmaEventSource, DmaTransfer,
    InterruptSink, IoSegment, MappingMode, SegmentFormat, SegmentSpec,
};
use dmakit::map::{mapped_read16, mapped_read32, mapped_write32};
use dmakit::mapper::IommuMapper;
use dmakit::{Direction, Error, IoAddr, IoReturn, PhysAddr};
use dmakit_sim::dma_engine::{desc, regs, DmaEngineDevice, ENGINE_MMIO_BASE};
use dmakit_sim::{FaultKind, IommuFault, Machine, MachineBuilder, SimDmaEngine, SimIommu};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type M = Arc<Machine>;

fn segs(cmd: &DmaCommand<M>) -> Vec<IoSegment> {
    let mut out = vec![0u8; 256 * 16];
    let mut off = 0;
    let n = cmd.gen_segments(&mut off, &mut out).unwrap();
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
    let mut c = DmaCommand::builder(m.clone())
        .spec(spec)
        .mode(mode)
        .build()
        .unwrap();
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
    // first. The mapped commands clean at prepare; the flush here is what a driver that
    // filled the buffer through another mapping would add.
    dmakit::map::flush_processor_cache(&*m, dmakit::platform::Task::KERNEL, src.address(), 40_000)
        .unwrap();
    cs.prepare(PrepareOptions::range(0, 40_000)).unwrap();
    cd.prepare(PrepareOptions::range(0, 40_000)).unwrap();
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
    cd.complete().unwrap();
    cs.complete().unwrap();
    // The engine wrote DRAM; the CPU has no stale lines for dst (never read it), so:
    let mut back = vec![0u8; 40_000];
    assert_eq!(dst.read_bytes(0, &mut back), back.len());
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
        matches!(
            last.status,
            Err(Error::DmaFault {
                via_iommu: true,
                ..
            })
        ),
        "{last:?}"
    );
    assert!(!iommu.faults().is_empty());
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: a work-loop thread polls while 1,000 transfers queue"
)]
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
    assert_eq!(src.write_bytes(0, &data), data.len());
    let mut cs = command(&m, src.clone(), MappingMode::Bypassed);
    let mut cd = command(&m, dst.clone(), MappingMode::Bypassed);
    cs.prepare(PrepareOptions::range(0, 64_000)).unwrap();
    cd.prepare(PrepareOptions::range(0, 64_000)).unwrap();
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
    assert_eq!(dst.read_bytes(0, &mut back), back.len());
    assert!(back == data, "every transfer's bytes arrived");
    // All of it went through the 16-slot ring, around it many times.
    let processed = engine.device().lock().unwrap().descriptors_processed();
    assert!(processed >= 1000, "{processed} descriptors");
    assert_eq!(
        mapped_read32(&*m, PhysAddr(engine.registers().0 + regs::COMPLETED)).unwrap(),
        1000
    );
    cs.complete().unwrap();
    cd.complete().unwrap();
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
    assert_eq!(b.write_bytes(0, b"fresh CPU data"), 14);
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

// ---- The engine as a device: registers, descriptor ring, doorbell ----

type Buf = BufferMemoryDescriptor<M>;

/// A register of `engine`, read with one 32-bit MMIO load.
fn reg(m: &M, engine: &SimDmaEngine, offset: u64) -> u32 {
    mapped_read32(&**m, PhysAddr(engine.registers().0 + offset)).unwrap()
}

fn set_reg(m: &M, engine: &SimDmaEngine, offset: u64, value: u32) {
    mapped_write32(&**m, PhysAddr(engine.registers().0 + offset), value).unwrap()
}

/// The physical runs of `[off, off + len)` of `md`, as device segments.
fn phys(md: &Buf, off: u64, len: u64) -> Vec<IoSegment> {
    let mut out = Vec::new();
    let mut at = off;
    while at < off + len {
        let s = md.physical_segment(at).unwrap();
        let n = s.len.min(off + len - at);
        out.push(IoSegment {
            addr: IoAddr(s.addr.0),
            len: n,
        });
        at += n;
    }
    out
}

fn buffer(m: &M, len: u64) -> Arc<Buf> {
    Arc::new(
        BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(len, Direction::InOut)).unwrap(),
    )
}

/// Descriptor `slot` of the engine's ring, as the device sees it in DRAM.
fn ring_descriptor(m: &M, engine: &SimDmaEngine, slot: u64) -> [u8; 64] {
    let mut d = [0u8; 64];
    m.device_read(
        PhysAddr(engine.ring_physical().0 + slot * desc::SIZE),
        &mut d,
    )
    .unwrap();
    d
}

fn word(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}

fn dword(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
}

fn take(engine: &SimDmaEngine) -> Vec<DmaCompletion> {
    let mut v = Vec::new();
    engine.take_completions(&mut |c| v.push(c));
    v
}

#[test]
fn the_registers_read_back_the_documented_values() {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(5)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let engine = SimDmaEngine::new(m.clone(), None).unwrap();
    assert_eq!(
        engine.registers(),
        PhysAddr(ENGINE_MMIO_BASE),
        "the first free window"
    );
    assert_eq!(reg(&m, &engine, regs::ID), 0x444D_4101);
    assert_eq!(
        reg(&m, &engine, regs::CONTROL),
        regs::CTRL_ENABLE | regs::CTRL_IRQ_ENABLE
    );
    assert_eq!(reg(&m, &engine, regs::STATUS), 0);
    assert_eq!(reg(&m, &engine, regs::RING_SIZE), 16, "the FIFO depth");
    let ring = engine.ring_address().0;
    assert_eq!(
        ring,
        engine.ring_physical().0,
        "no IOMMU: the ring's physical address"
    );
    assert_eq!(reg(&m, &engine, regs::RING_BASE_LO), ring as u32);
    assert_eq!(reg(&m, &engine, regs::RING_BASE_HI), (ring >> 32) as u32);
    assert_eq!(ring % 64, 0);
    assert_eq!(
        (reg(&m, &engine, regs::HEAD), reg(&m, &engine, regs::TAIL)),
        (0, 0)
    );
    let layout = m.layout();
    assert!(layout.mmio.contains(&(
        ENGINE_MMIO_BASE,
        regs::WINDOW_BYTES,
        "dma-engine".to_string()
    )));

    // One transfer: the doorbell moves TAIL, the device HEAD, and the descriptor is written
    // back in RAM as the datasheet says.
    let b = buffer(&m, 0x2000);
    b.write(0, b"descriptor ring").unwrap();
    let (s, d) = (phys(&b, 0, 15), phys(&b, 0x1000, 15));
    let t = engine
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    assert_eq!(
        (reg(&m, &engine, regs::HEAD), reg(&m, &engine, regs::TAIL)),
        (1, 1)
    );
    assert_eq!(reg(&m, &engine, regs::COMPLETED), 1);
    assert_eq!(reg(&m, &engine, regs::INT_STATUS), regs::INT_DONE);
    assert_eq!(reg(&m, &engine, regs::STATUS) & regs::STATUS_BUSY, 0);
    let dsc = ring_descriptor(&m, &engine, 0);
    assert_eq!(dword(&dsc, desc::SRC), s[0].addr.0);
    assert_eq!(dword(&dsc, desc::DST), d[0].addr.0);
    assert_eq!(word(&dsc, desc::LEN), 15);
    assert_eq!(
        word(&dsc, desc::FLAGS),
        desc::FLAG_IRQ,
        "a single descriptor: no CHAIN"
    );
    assert_eq!(dword(&dsc, desc::TICKET), t);
    assert_eq!(word(&dsc, desc::STATUS), desc::DONE | desc::OK);
    assert_eq!(word(&dsc, desc::DONE_BYTES), 15);
    assert_eq!(take(&engine).len(), 1);
    assert_eq!(
        reg(&m, &engine, regs::INT_STATUS),
        0,
        "the driver acknowledged it"
    );

    // Only 32-bit accesses reach registers.
    assert_eq!(
        mapped_read16(&*m, PhysAddr(engine.registers().0 + regs::ID)).unwrap(),
        0
    );
    // Ring registers are refused while enabled, and W1C clears the error.
    set_reg(&m, &engine, regs::RING_SIZE, 64);
    assert_eq!(reg(&m, &engine, regs::RING_SIZE), 16);
    assert_ne!(reg(&m, &engine, regs::STATUS) & regs::STATUS_ERR_CONFIG, 0);
    set_reg(&m, &engine, regs::STATUS, regs::STATUS_ERR_CONFIG);
    assert_eq!(reg(&m, &engine, regs::STATUS), 0);
    // A doorbell past the ring is refused.
    set_reg(&m, &engine, regs::TAIL, 1 + 17);
    assert_eq!(reg(&m, &engine, regs::TAIL), 1);
    assert_ne!(reg(&m, &engine, regs::STATUS) & regs::STATUS_ERR_CONFIG, 0);
    // Enabling with a ring size that is not a power of two is refused.
    set_reg(&m, &engine, regs::CONTROL, 0);
    set_reg(&m, &engine, regs::RING_SIZE, 3);
    set_reg(&m, &engine, regs::CONTROL, regs::CTRL_ENABLE);
    assert_eq!(reg(&m, &engine, regs::CONTROL) & regs::CTRL_ENABLE, 0);
    // RESET puts every register back.
    set_reg(&m, &engine, regs::CONTROL, regs::CTRL_RESET);
    for r in [
        regs::CONTROL,
        regs::STATUS,
        regs::RING_SIZE,
        regs::RING_BASE_LO,
        regs::HEAD,
        regs::TAIL,
        regs::COMPLETED,
    ] {
        assert_eq!(reg(&m, &engine, r), 0, "register {r:#x} after reset");
    }
    // The driver programs it again when the FIFO depth changes.
    engine.set_fifo_depth(8).unwrap();
    assert_eq!(reg(&m, &engine, regs::RING_SIZE), 8);
    assert_eq!(reg(&m, &engine, regs::RING_BASE_LO), ring as u32);
    // A second engine on the same machine takes the next window.
    let other = SimDmaEngine::new(m.clone(), None).unwrap();
    assert_eq!(other.registers().0, ENGINE_MMIO_BASE + regs::WINDOW_BYTES);
}

#[test]
fn the_device_moves_data_only_when_its_doorbell_is_written() {
    // The bare device, programmed by hand as a datasheet reader would.
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(8)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let dev = Arc::new(Mutex::new(DmaEngineDevice::new(&m, None)));
    let base = 0xFEE0_0000u64;
    m.add_mmio(PhysAddr(base), regs::WINDOW_BYTES, dev.clone())
        .unwrap();
    let ring = Buf::new(
        m.clone(),
        BufferOptions::new(4096, Direction::InOut).contiguous(true),
    )
    .unwrap();
    let data = buffer(&m, 0x2000);
    data.write(0, &[0xA5; 100]).unwrap();
    let (src, dst) = (
        data.physical_segment(0).unwrap().addr.0,
        data.physical_segment(0x1000).unwrap().addr.0,
    );
    let mut d = [0u8; 64];
    d[desc::SRC..desc::SRC + 8].copy_from_slice(&src.to_le_bytes());
    d[desc::DST..desc::DST + 8].copy_from_slice(&dst.to_le_bytes());
    d[desc::LEN..desc::LEN + 4].copy_from_slice(&100u32.to_le_bytes());
    ring.write(0, &d).unwrap();
    let rp = ring.physical_segment(0).unwrap().addr.0;
    let w = |o: u64, v: u32| mapped_write32(&*m, PhysAddr(base + o), v).unwrap();
    let r = |o: u64| mapped_read32(&*m, PhysAddr(base + o)).unwrap();
    w(regs::RING_SIZE, 4);
    w(regs::RING_BASE_LO, rp as u32);
    w(regs::RING_BASE_HI, (rp >> 32) as u32);
    w(regs::CONTROL, regs::CTRL_ENABLE);
    let mut out = [0u8; 100];
    data.read(0x1000, &mut out).unwrap();
    assert_eq!(
        out, [0u8; 100],
        "enabled, but no doorbell yet: nothing moved"
    );
    assert_eq!(r(regs::HEAD), 0);
    w(regs::TAIL, 1);
    data.read(0x1000, &mut out).unwrap();
    assert_eq!(out, [0xA5; 100], "the doorbell store did the transfer");
    assert_eq!((r(regs::HEAD), r(regs::COMPLETED)), (1, 1));
    assert_eq!(r(regs::INT_STATUS), 0, "no IRQ flag in the descriptor");
    let mut wb = [0u8; 16];
    ring.read(0x20, &mut wb).unwrap();
    assert_eq!(word(&wb, 0), desc::DONE | desc::OK);
    assert_eq!(word(&wb, 4), 100);
    let dv = dev.lock().unwrap();
    assert_eq!((dv.descriptors_processed(), dv.bytes_moved()), (1, 100));
}

#[test]
fn a_scatter_gather_transfer_is_one_chain_of_descriptors() {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(11)
            .fragmentation(1.0)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let engine = Arc::new(SimDmaEngine::new(m.clone(), None).unwrap());
    let (es, got) = collecting(&engine);
    let len = 5 * 4096u64;
    let src = buffer(&m, len);
    let dst = buffer(&m, len);
    let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
    src.write(0, &data).unwrap();
    // Sources: the physical runs of src. Destinations: the runs of dst, each cut unevenly.
    let s = phys(&src, 0, len);
    let d: Vec<IoSegment> = phys(&dst, 0, len)
        .into_iter()
        .flat_map(|g| {
            let a = g.len / 3;
            [
                IoSegment {
                    addr: g.addr,
                    len: a,
                },
                IoSegment {
                    addr: IoAddr(g.addr.0 + a),
                    len: g.len - a,
                },
            ]
        })
        .collect();
    assert!(s.len() >= 3, "a scattered source: {} runs", s.len());
    // One descriptor per stretch between consecutive cut points of either side.
    let cuts = |v: &[IoSegment]| {
        v.iter()
            .scan(0, |at, g| {
                *at += g.len;
                Some(*at)
            })
            .collect::<std::collections::BTreeSet<u64>>()
    };
    let expected = cuts(&s).union(&cuts(&d)).count() as u32;
    assert!(expected <= 16, "fits the ring: {expected}");
    let t = es
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    assert_eq!(reg(&m, &engine, regs::HEAD), expected);
    assert_eq!(reg(&m, &engine, regs::COMPLETED), 1, "one transfer");
    assert_eq!(
        es.pending_interrupts(),
        1,
        "one interrupt, from the last descriptor"
    );
    for slot in 0..expected as u64 {
        let dsc = ring_descriptor(&m, &engine, slot);
        let last = slot + 1 == expected as u64;
        let flags = if last {
            desc::FLAG_IRQ
        } else {
            desc::FLAG_CHAIN
        };
        assert_eq!(word(&dsc, desc::FLAGS), flags, "descriptor {slot}");
        assert_eq!(word(&dsc, desc::STATUS), desc::DONE | desc::OK);
    }
    es.poll();
    assert_eq!(
        got.lock().unwrap().as_slice(),
        &[DmaCompletion {
            ticket: t,
            bytes: len,
            status: Ok(())
        }]
    );
    let mut back = vec![0u8; len as usize];
    dst.read(0, &mut back).unwrap();
    assert!(back == data, "every byte landed in order");
}

#[test]
fn the_ring_wraps_around_over_time() {
    // Not coherent: every reused slot needs the driver's clean before the doorbell and its
    // invalidate before it reads the write-back, or it reads its own stale line.
    let m: M = Arc::new(MachineBuilder::new().seed(3).build().unwrap());
    let engine = SimDmaEngine::new(m.clone(), None).unwrap();
    engine.set_fifo_depth(4).unwrap();
    let src = buffer(&m, 0x4000);
    let dst = buffer(&m, 0x4000);
    let data: Vec<u8> = (0..0x4000u32).map(|i| (i * 31 % 256) as u8).collect();
    src.write(0, &data).unwrap();
    dmakit::map::flush_processor_cache(&*m, dmakit::platform::Task::KERNEL, src.address(), 0x4000)
        .unwrap();
    let mut tickets = Vec::new();
    let mut done = Vec::new();
    // 50 rounds of 1..=3 queued transfers of 100 bytes each: the 4 slots are reused ~40 times.
    let mut n = 0u64;
    for round in 0..50u64 {
        for _ in 0..=(round % 3) {
            let off = (n * 100) % 0x3F00;
            let t = engine
                .start(&DmaTransfer {
                    source: &phys(&src, off, 100),
                    dest: &phys(&dst, off, 100),
                })
                .unwrap();
            tickets.push(t);
            n += 1;
        }
        done.extend(take(&engine));
    }
    assert_eq!(done.iter().map(|c| c.ticket).collect::<Vec<_>>(), tickets);
    assert!(done.iter().all(|c| c.bytes == 100 && c.status.is_ok()));
    let head = reg(&m, &engine, regs::HEAD);
    assert!(
        head >= n as u32 && head > 4 * 20,
        "HEAD ran around the ring: {head}"
    );
    assert_eq!(reg(&m, &engine, regs::COMPLETED), n as u32);
    let mut back = vec![0u8; 0x4000];
    dst.read(0, &mut back).unwrap();
    for k in 0..n {
        let off = ((k * 100) % 0x3F00) as usize;
        assert_eq!(back[off..off + 100], data[off..off + 100], "transfer {k}");
    }
    assert!(
        engine.query(tickets[0]).unwrap() == 100,
        "old tickets are remembered"
    );
}

#[test]
fn a_full_ring_is_busy_and_a_transfer_longer_than_the_ring_is_refused() {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(6)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let engine = SimDmaEngine::new(m.clone(), None).unwrap();
    engine.set_fifo_depth(4).unwrap();
    assert!(engine.set_fifo_depth(6).is_err(), "not a power of two");
    assert_eq!(engine.valid_fifo_depth(6), 4);
    let b = buffer(&m, 0x2000);
    let (s0, d0) = (phys(&b, 0, 8), phys(&b, 0x1000, 8));
    for _ in 0..3 {
        engine
            .start(&DmaTransfer {
                source: &s0,
                dest: &d0,
            })
            .unwrap();
    }
    // A two-descriptor transfer needs two of the one free slot.
    let two_src = [s0[0], phys(&b, 16, 8)[0]];
    let two_dst = phys(&b, 0x1000, 16);
    let two = DmaTransfer {
        source: &two_src,
        dest: &two_dst,
    };
    match engine.start(&two) {
        Err(Error::Busy { what, addr, .. }) => {
            assert_eq!(what, "DMA engine descriptor ring");
            assert_eq!(addr, engine.ring_address().0);
        }
        other => panic!("{other:?}"),
    }
    engine
        .start(&DmaTransfer {
            source: &s0,
            dest: &d0,
        })
        .unwrap();
    assert!(matches!(
        engine.start(&DmaTransfer {
            source: &s0,
            dest: &d0
        }),
        Err(Error::Busy { .. })
    ));
    assert!(
        matches!(engine.set_fifo_depth(8), Err(Error::Busy { .. })),
        "no resizing under unreported transfers"
    );
    assert_eq!(take(&engine).len(), 4);
    engine.start(&two).unwrap();
    // Five source pieces into one destination: five descriptors, more than the ring holds.
    let five: Vec<IoSegment> = (0..5).map(|i| phys(&b, i * 16, 8)[0]).collect();
    let dest = phys(&b, 0x1000, 40);
    assert!(matches!(
        engine.start(&DmaTransfer {
            source: &five,
            dest: &dest
        }),
        Err(Error::BadArgument { value: 5, .. })
    ));
}

#[test]
fn stop_aborts_queued_transfers() {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(12)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let engine = Arc::new(SimDmaEngine::new(m.clone(), None).unwrap());
    let (es, got) = collecting(&engine);
    let b = buffer(&m, 0x2000);
    b.write(0, &[7u8; 64]).unwrap();
    engine.pause().unwrap();
    let (s, d) = (phys(&b, 0, 32), phys(&b, 0x1000, 32));
    let chain_src = [phys(&b, 0, 16)[0], phys(&b, 32, 16)[0]];
    let tickets = [
        engine
            .start(&DmaTransfer {
                source: &s,
                dest: &d,
            })
            .unwrap(),
        engine
            .start(&DmaTransfer {
                source: &chain_src,
                dest: &d,
            })
            .unwrap(),
        engine
            .start(&DmaTransfer {
                source: &s,
                dest: &d,
            })
            .unwrap(),
    ];
    assert_eq!(reg(&m, &engine, regs::HEAD), 0, "paused: nothing processed");
    assert_eq!(reg(&m, &engine, regs::TAIL), 4);
    assert_ne!(reg(&m, &engine, regs::STATUS) & regs::STATUS_BUSY, 0);
    assert_eq!(engine.query(tickets[1]).unwrap(), 0);
    assert_eq!(es.poll(), 0, "queued transfers are not completions");
    engine.stop().unwrap();
    assert_eq!(
        reg(&m, &engine, regs::HEAD),
        4,
        "every queued descriptor completed"
    );
    assert_eq!(
        es.pending_interrupts(),
        3,
        "one interrupt per aborted transfer"
    );
    es.poll();
    let done = got.lock().unwrap().clone();
    assert_eq!(done.len(), 3);
    for (c, &t) in done.iter().zip(&tickets) {
        assert_eq!(c.ticket, t);
        assert_eq!(c.bytes, 0);
        assert_eq!(
            c.status,
            Err(Error::Aborted {
                what: "DMA transfer (stop() aborted it before the engine reached it)",
                id: t
            })
        );
        assert_eq!(
            c.status.as_ref().unwrap_err().io_return(),
            dmakit::IoReturn::ABORTED
        );
    }
    let mut out = [0u8; 32];
    b.read(0x1000, &mut out).unwrap();
    assert_eq!(out, [0u8; 32], "aborted transfers moved nothing");
    let dsc = ring_descriptor(&m, &engine, 1);
    assert_eq!(word(&dsc, desc::STATUS), desc::DONE | desc::ABORTED);
    // Resumed, the engine works again.
    engine.resume().unwrap();
    let t = engine
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    es.poll();
    assert_eq!(
        got.lock().unwrap().last().unwrap(),
        &DmaCompletion {
            ticket: t,
            bytes: 32,
            status: Ok(())
        }
    );
    b.read(0x1000, &mut out).unwrap();
    assert_eq!(out, [7u8; 32]);
}

type Mapper = Arc<IommuMapper<Arc<SimIommu>>>;

/// A machine with an IOMMU, a mapper for drivers, and an engine behind the IOMMU.
fn iommu_setup(seed: u64) -> (M, Arc<SimIommu>, Mapper, Arc<SimDmaEngine>) {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(seed)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x4000_0000, 0x1000_0000).unwrap());
    let engine = Arc::new(SimDmaEngine::new(m.clone(), Some(iommu.clone())).unwrap());
    (m, iommu, mapper, engine)
}

#[test]
fn a_wrong_io_address_faults_in_the_iommu_and_in_the_status_register() {
    let (m, iommu, mapper, engine) = iommu_setup(21);
    assert_ne!(
        engine.ring_address().0,
        engine.ring_physical().0,
        "behind an IOMMU the ring has an IO address"
    );
    let src = buffer(&m, 0x2000);
    let dst = buffer(&m, 0x1000);
    src.write(0, &[0x5A; 0x2000]).unwrap();
    let mut cs = command(&m, src.clone(), MappingMode::Mapped(mapper.clone()));
    let mut cd = command(&m, dst.clone(), MappingMode::Mapped(mapper.clone()));
    cs.prepare(PrepareOptions::range(0, 0x2000)).unwrap();
    cd.prepare(PrepareOptions::range(0, 0x1000)).unwrap();
    let s = segs(&cs);
    let bad = 0x4F00_0000u64; // inside the mapper's window, never mapped
    let d = [
        segs(&cd)[0],
        IoSegment {
            addr: IoAddr(bad),
            len: 0x1000,
        },
    ];
    let (es, got) = collecting(&engine);
    let t = es
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    let status = reg(&m, &engine, regs::STATUS);
    assert_eq!(
        status & (regs::STATUS_ERR_DST | regs::STATUS_IOMMU | regs::STATUS_HALTED),
        regs::STATUS_ERR_DST | regs::STATUS_IOMMU,
        "a data fault, reported by the IOMMU; the engine did not halt: {status:#x}"
    );
    let fault = reg(&m, &engine, regs::FAULT_ADDR_LO) as u64
        | (reg(&m, &engine, regs::FAULT_ADDR_HI) as u64) << 32;
    assert_eq!(fault, bad);
    assert_ne!(reg(&m, &engine, regs::INT_STATUS) & regs::INT_ERROR, 0);
    assert_eq!(
        iommu.faults().last().copied(),
        Some(IommuFault {
            iova: IoAddr(bad),
            write: true,
            kind: FaultKind::NotPresent
        })
    );
    assert_eq!(
        engine.query(t).unwrap(),
        0x1000,
        "the first descriptor's bytes moved"
    );
    es.poll();
    let c = got.lock().unwrap().last().cloned().unwrap();
    assert_eq!(c.ticket, t);
    assert_eq!(c.bytes, 0x1000);
    match c.status {
        Err(
            e @ Error::DmaFault {
                addr,
                write: true,
                via_iommu: true,
                unit,
                ..
            },
        ) => {
            assert_eq!(addr, bad);
            assert_eq!(unit, engine.registers().0, "names the engine");
            assert_eq!(e.io_return(), IoReturn::DMA_ERROR);
            let text = e.to_string();
            assert!(
                text.contains("write to")
                    && text.contains("IOMMU")
                    && text.contains(&format!("{bad:#x}")),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let wb = ring_descriptor(&m, &engine, 1);
    assert_eq!(
        word(&wb, desc::STATUS),
        desc::DONE | desc::DST_FAULT | desc::VIA_IOMMU
    );
    assert_eq!(dword(&wb, desc::FAULT_ADDR), bad);
    // The engine goes on: a good transfer after the bad one.
    let t2 = es
        .start(&DmaTransfer {
            source: &piece(&cs, 0x1000, 0x1000),
            dest: &segs(&cd),
        })
        .unwrap();
    es.poll();
    assert_eq!(
        got.lock().unwrap().last().unwrap(),
        &DmaCompletion {
            ticket: t2,
            bytes: 0x1000,
            status: Ok(())
        }
    );
    let mut back = vec![0u8; 0x1000];
    dst.read(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x5A));
    cd.complete().unwrap();
    cs.complete().unwrap();
}

#[test]
fn an_address_outside_ram_is_a_bus_error_without_an_iommu() {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(2)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let engine = SimDmaEngine::new(m.clone(), None).unwrap();
    let b = buffer(&m, 0x1000);
    let hole = 0x0500_0000u64; // between DEFAULT_RAM's first two regions
    let t = engine
        .start(&DmaTransfer {
            source: &[IoSegment {
                addr: IoAddr(hole),
                len: 64,
            }],
            dest: &phys(&b, 0, 64),
        })
        .unwrap();
    let status = reg(&m, &engine, regs::STATUS);
    assert_eq!(
        status & (regs::STATUS_ERR_SRC | regs::STATUS_IOMMU),
        regs::STATUS_ERR_SRC
    );
    assert_eq!(reg(&m, &engine, regs::FAULT_ADDR_LO), hole as u32);
    let c = take(&engine).pop().unwrap();
    assert_eq!((c.ticket, c.bytes), (t, 0));
    assert!(
        matches!(c.status, Err(Error::DmaFault { addr, write: false, via_iommu: false, .. }) if addr == hole),
        "{c:?}"
    );
}

#[test]
fn a_ring_that_is_not_iommu_mapped_faults_when_an_iommu_is_attached() {
    let (m, iommu, mapper, engine) = iommu_setup(22);
    let src = buffer(&m, 0x1000);
    let dst = buffer(&m, 0x1000);
    src.write(0, b"through the IOMMU").unwrap();
    let mut cs = command(&m, src.clone(), MappingMode::Mapped(mapper.clone()));
    let mut cd = command(&m, dst.clone(), MappingMode::Mapped(mapper.clone()));
    cs.prepare(PrepareOptions::range(0, 0x1000)).unwrap();
    cd.prepare(PrepareOptions::range(0, 0x1000)).unwrap();
    let (s, d) = (segs(&cs), segs(&cd));
    let (es, got) = collecting(&engine);
    // A driver bug: program the ring's *physical* address while the device sits behind
    // the IOMMU.
    let phys_ring = engine.ring_physical().0;
    set_reg(&m, &engine, regs::CONTROL, 0);
    set_reg(&m, &engine, regs::RING_BASE_LO, phys_ring as u32);
    set_reg(&m, &engine, regs::RING_BASE_HI, (phys_ring >> 32) as u32);
    set_reg(
        &m,
        &engine,
        regs::CONTROL,
        regs::CTRL_ENABLE | regs::CTRL_IRQ_ENABLE,
    );
    let t = es
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    let status = reg(&m, &engine, regs::STATUS);
    let ring_fault = regs::STATUS_HALTED | regs::STATUS_ERR_RING | regs::STATUS_IOMMU;
    assert_eq!(status & ring_fault, ring_fault, "{status:#x}");
    assert_eq!(reg(&m, &engine, regs::HEAD), 0, "nothing was fetched");
    let fault = reg(&m, &engine, regs::FAULT_ADDR_LO) as u64
        | (reg(&m, &engine, regs::FAULT_ADDR_HI) as u64) << 32;
    assert_eq!(fault, phys_ring, "slot 0 at the physical address");
    assert!(iommu.faults().contains(&IommuFault {
        iova: IoAddr(phys_ring),
        write: false,
        kind: FaultKind::NotPresent
    }));
    assert_eq!(es.pending_interrupts(), 1, "the error interrupt");
    es.poll();
    let c = got.lock().unwrap().last().cloned().unwrap();
    assert_eq!((c.ticket, c.bytes), (t, 0));
    assert!(
        matches!(c.status, Err(Error::NotMapped { addr, .. }) if addr == phys_ring),
        "{c:?}"
    );
    // The driver reset the engine and programmed its real ring address again.
    assert_eq!(reg(&m, &engine, regs::STATUS), 0);
    assert_eq!(
        reg(&m, &engine, regs::RING_BASE_LO),
        engine.ring_address().0 as u32
    );
    let t2 = es
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    es.poll();
    assert_eq!(
        got.lock().unwrap().last().unwrap(),
        &DmaCompletion {
            ticket: t2,
            bytes: 0x1000,
            status: Ok(())
        }
    );
    let mut back = [0u8; 17];
    dst.read(0, &mut back).unwrap();
    assert_eq!(&back, b"through the IOMMU");
    cd.complete().unwrap();
    cs.complete().unwrap();
}

#[test]
fn dropping_the_engine_and_its_event_source_frees_and_unmaps_the_ring() {
    let m: M = Arc::new(
        MachineBuilder::new()
            .seed(30)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let before = m.stats();
    let engine = Arc::new(SimDmaEngine::new(m.clone(), Some(iommu.clone())).unwrap());
    let (es, _got) = collecting(&engine);
    let ring = engine.ring_address();
    let mut probe = [0u8; 64];
    iommu.device_read(ring, &mut probe).unwrap();
    assert_eq!(m.stats().kernel_allocations, before.kernel_allocations + 1);
    drop(es);
    drop(engine);
    let after = m.stats();
    assert_eq!(
        (
            after.kernel_allocations,
            after.wired_pages,
            after.free_pages
        ),
        (
            before.kernel_allocations,
            before.wired_pages,
            before.free_pages
        ),
        "no reference cycle keeps the ring alive"
    );
    assert!(
        iommu.device_read(ring, &mut probe).is_err(),
        "the ring's IO mapping is gone"
    );
}

/// Any CompletionSource, not only a DMA controller, can feed an event source (an NVMe
/// completion queue does in the guest): completions arrive in order, once each.
#[test]
fn an_event_source_delivers_the_completions_of_any_source_in_order() {
    struct Queue(Mutex<Vec<DmaCompletion>>);
    impl CompletionSource for Queue {
        fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
            let done: Vec<DmaCompletion> = self.0.lock().unwrap().drain(..).collect();
            done.into_iter().for_each(sink);
        }
    }
    let q = Arc::new(Queue(Mutex::new(Vec::new())));
    let got: Collected = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let es = DmaEventSource::new(q.clone(), move |c| g.lock().unwrap().push(c));
    for t in 1..=5 {
        q.0.lock().unwrap().push(DmaCompletion {
            ticket: t,
            bytes: 512 * t,
            status: Ok(()),
        });
    }
    es.raise();
    assert_eq!(es.pending_interrupts(), 1);
    assert_eq!(es.poll(), 5);
    assert_eq!(es.poll(), 0, "each completion is delivered once");
    let tickets: Vec<u64> = got.lock().unwrap().iter().map(|c| c.ticket).collect();
    assert_eq!(tickets, [1, 2, 3, 4, 5]);
}
