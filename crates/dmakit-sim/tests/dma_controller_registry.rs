//! IODMAController registration and lookup, and IODMAEventSource's synchronous start, with
//! the simulated DMA engine.

mod common;

use common::{bytes, engine_rig, seg, Buf, Refusing};

/// The machine, engine and buffer these tests share.
fn rig() -> (Arc<Machine>, Arc<SimDmaEngine>, Buf) {
    engine_rig(8)
}
use dmakit::dma::{
    DmaCompletion, DmaController, DmaControllerRegistry, DmaEventSource, DmaStart, DmaTransfer,
    InterruptSink, SharedController, SyncWait,
};
use dmakit::{Error, IoReturn};
use dmakit_sim::{Machine, SimDmaEngine};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn a_synchronous_start_waits_for_the_controllers_completion() {
    let (_m, engine, buf) = rig();
    let buf = Arc::new(buf);
    let es = Arc::new(DmaEventSource::synchronous(engine.clone()));
    engine.connect(es.clone());
    assert!(!es.has_action());
    engine.pause().unwrap();

    let finished = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (es, buf, finished) = (es.clone(), buf.clone(), finished.clone());
        std::thread::spawn(move || {
            let (src, dst) = (seg(&buf, 0, 1000), seg(&buf, 0x3000, 1000));
            let r = es.start_dma_command(
                &DmaTransfer {
                    source: &src,
                    dest: &dst,
                },
                SyncWait::Timeout(Duration::from_secs(20)),
            );
            finished.store(true, Ordering::SeqCst);
            r
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !finished.load(Ordering::SeqCst),
        "the start returned before the controller completed"
    );
    assert!(es.is_busy());
    // A second synchronous start while one is in flight: Busy, and nothing is started.
    let (src, dst) = (seg(&buf, 0x1000, 8), seg(&buf, 0x2000, 8));
    let e = es
        .start_dma_command(
            &DmaTransfer {
                source: &src,
                dest: &dst,
            },
            SyncWait::Polls(1),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::BUSY);

    engine.resume().unwrap();
    let r = waiter.join().unwrap().unwrap();
    let DmaStart::Completed(c) = r else {
        panic!("a synchronous start returns the completion: {r:?}")
    };
    assert_eq!((c.bytes, c.status.clone()), (1000, Ok(())));
    assert_eq!(bytes(&buf, 0x3000, 1000), bytes(&buf, 0, 1000));
    assert_ne!(
        bytes(&buf, 0x2000, 8),
        bytes(&buf, 0x1000, 8),
        "the busy start moved nothing"
    );
    assert!(!es.is_busy());
}

#[test]
fn a_refused_start_leaves_the_source_idle_and_the_next_one_works() {
    let (_m, engine, buf) = rig();
    let es = DmaEventSource::synchronous(engine.clone());
    let (src, dst) = (seg(&buf, 0, 100), seg(&buf, 0x2000, 99));
    let e = es
        .start_dma_command(
            &DmaTransfer {
                source: &src,
                dest: &dst,
            },
            SyncWait::Polls(10),
        )
        .unwrap_err();
    assert!(matches!(e, Error::BadArgument { .. }), "{e:?}");
    assert!(!es.is_busy(), "a failed start clears busy");
    let dst = seg(&buf, 0x2000, 100);
    // The engine works inside the doorbell store, so one poll sees the completion.
    let r = es
        .start_dma_command(
            &DmaTransfer {
                source: &src,
                dest: &dst,
            },
            SyncWait::Polls(1),
        )
        .unwrap();
    assert!(matches!(&r, DmaStart::Completed(c) if c.bytes == 100 && c.status.is_ok()));
    assert_eq!(bytes(&buf, 0x2000, 100), bytes(&buf, 0, 100));
}

#[test]
fn a_wait_that_ends_first_is_a_timeout_and_the_source_stays_busy_until_the_end() {
    let (_m, engine, buf) = rig();
    let es = DmaEventSource::synchronous(engine.clone());
    engine.pause().unwrap();
    let (src, dst) = (seg(&buf, 0, 64), seg(&buf, 0x2000, 64));
    let t = DmaTransfer {
        source: &src,
        dest: &dst,
    };
    let e = es.start_dma_command(&t, SyncWait::Polls(3)).unwrap_err();
    let Error::Timeout { id, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.io_return(), IoReturn::TIMEOUT);
    assert_eq!(engine.query(id).unwrap(), 0, "still in flight");
    assert!(es.is_busy());
    assert!(matches!(
        es.start_dma_command(&t, SyncWait::Polls(1)),
        Err(Error::Busy { .. })
    ));
    engine.resume().unwrap();
    assert_eq!(es.poll(), 1, "the abandoned command's completion is taken");
    assert!(!es.is_busy());
    assert_eq!(bytes(&buf, 0x2000, 64), bytes(&buf, 0, 64));
    assert!(matches!(
        es.start_dma_command(&t, SyncWait::Polls(1)),
        Ok(DmaStart::Completed(_))
    ));
}

#[test]
fn a_caller_provided_wait_runs_between_polls() {
    let (_m, engine, buf) = rig();
    let es = DmaEventSource::synchronous(engine.clone());
    engine.pause().unwrap();
    let (src, dst) = (seg(&buf, 0, 300), seg(&buf, 0x2000, 300));
    let mut calls = 0;
    let mut step = || {
        calls += 1;
        if calls == 3 {
            engine.resume().unwrap();
        }
        true
    };
    let r = es
        .start_dma_command(
            &DmaTransfer {
                source: &src,
                dest: &dst,
            },
            SyncWait::With(&mut step),
        )
        .unwrap();
    assert!(matches!(r, DmaStart::Completed(ref c) if c.bytes == 300));
    assert_eq!(calls, 3, "polled after each wait until the device finished");
}

#[test]
fn a_work_loop_and_a_synchronous_starter_do_not_lose_the_completion() {
    let (_m, engine, buf) = rig();
    let buf = Arc::new(buf);
    let es = Arc::new(DmaEventSource::synchronous(engine.clone()));
    engine.connect(es.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let lp = es.spawn_work_loop(stop.clone());
    for round in 0..20u64 {
        engine.pause().unwrap();
        let starter = {
            let (es, buf) = (es.clone(), buf.clone());
            std::thread::spawn(move || {
                let (src, dst) = (seg(&buf, round * 8, 8), seg(&buf, 0x2000 + round * 8, 8));
                es.start_dma_command(
                    &DmaTransfer {
                        source: &src,
                        dest: &dst,
                    },
                    SyncWait::Timeout(Duration::from_secs(20)),
                )
            })
        };
        while !es.is_busy() {
            std::thread::yield_now();
        }
        engine.resume().unwrap();
        let r = starter.join().unwrap().unwrap();
        assert!(
            matches!(r, DmaStart::Completed(ref c) if c.bytes == 8),
            "{r:?}"
        );
    }
    stop.store(true, Ordering::Release);
    es.raise();
    lp.join().unwrap();
    assert_eq!(bytes(&buf, 0x2000, 160), bytes(&buf, 0, 160));
}

#[test]
fn with_an_action_the_start_returns_at_once() {
    let (_m, engine, buf) = rig();
    let got = Arc::new(Mutex::new(Vec::<DmaCompletion>::new()));
    let g = got.clone();
    let es = DmaEventSource::new(engine.clone(), move |c| g.lock().unwrap().push(c));
    engine.pause().unwrap();
    let (src, dst) = (seg(&buf, 0, 32), seg(&buf, 0x2000, 32));
    let r = es
        .start_dma_command(
            &DmaTransfer {
                source: &src,
                dest: &dst,
            },
            SyncWait::Polls(1),
        )
        .unwrap();
    let DmaStart::Queued { ticket } = r else {
        panic!("{r:?}")
    };
    assert!(!es.is_busy());
    assert_eq!(es.query_dma_command(ticket).unwrap(), 0);
    engine.resume().unwrap();
    es.poll();
    assert_eq!(got.lock().unwrap().first().map(|c| c.ticket), Some(ticket));
}

#[test]
fn fifo_depth_questions_go_to_the_controller() {
    let (_m, engine, buf) = rig();
    let es = DmaEventSource::synchronous(engine.clone());
    assert_eq!(es.fifo_depth(), 16);
    assert_eq!(es.valid_fifo_depth(100), 64);
    es.set_fifo_depth(32).unwrap();
    assert_eq!(es.fifo_depth(), 32);
    assert!(es.set_fifo_depth(33).is_err());
    // No valid depth: 0, never an error code posing as a depth.
    let none = DmaEventSource::synchronous(Arc::new(Refusing));
    assert_eq!(none.valid_fifo_depth(16), 0);
    assert_eq!(none.fifo_depth(), 0);
    let (src, dst) = (seg(&buf, 0, 8), seg(&buf, 0x2000, 8));
    assert!(matches!(
        none.start_dma_command(
            &DmaTransfer {
                source: &src,
                dest: &dst
            },
            SyncWait::Polls(1)
        ),
        Err(Error::Unsupported { .. })
    ));
    assert!(!none.is_busy());
    none.stop_dma_command().unwrap();
}

fn same(a: &SharedController, b: &SharedController) -> bool {
    Arc::as_ptr(a) as *const u8 == Arc::as_ptr(b) as *const u8
}

#[test]
fn controllers_are_registered_by_phandle_and_found_by_their_clients() {
    let (_m, engine, buf) = rig();
    let reg = DmaControllerRegistry::new();
    let shared: SharedController = engine.clone();
    let other: SharedController = Arc::new(Refusing);
    let name = reg.register_dma_controller(0x4e, shared.clone()).unwrap();
    assert_eq!(name, "IODMAController0000004E");
    assert_eq!(
        DmaControllerRegistry::controller_name(0xDEAD_BEEF),
        "IODMAControllerDEADBEEF"
    );
    reg.register_dma_controller(0x10, other.clone()).unwrap();
    assert!(matches!(
        reg.register_dma_controller(0x4e, other.clone()),
        Err(Error::BadArgument { value: 0x4e, .. })
    ));
    reg.register("sim-engine", shared.clone()).unwrap();
    assert!(reg.register("sim-engine", other.clone()).is_err());
    assert_eq!(
        reg.names(),
        [
            "IODMAController00000010",
            "IODMAController0000004E",
            "sim-engine"
        ]
    );

    assert!(same(&reg.find(&name).unwrap(), &shared));
    assert!(same(&reg.find("sim-engine").unwrap(), &shared));
    assert!(same(&reg.find_by_phandle(0x10).unwrap(), &other));
    // dma-parent lists one phandle per DMA index.
    assert!(same(
        &reg.find_for_client(&[0x10, 0x4e], 1).unwrap(),
        &shared
    ));
    assert!(same(
        &reg.find_for_client(&[0x10, 0x4e], 0).unwrap(),
        &other
    ));
    assert!(matches!(
        reg.find_for_client(&[0x10, 0x4e], 2),
        Err(Error::OutOfBounds {
            offset: 2,
            limit: 2,
            ..
        })
    ));
    assert!(matches!(
        reg.find_for_client(&[0x10, 0x4e], usize::MAX),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        reg.find_for_client(&[], 0),
        Err(Error::NotAttached { .. })
    ));
    assert!(matches!(
        reg.find_for_client(&[0x99], 0),
        Err(Error::NotAttached { .. })
    ));

    // The client's event source works through the registry's handle.
    let es = DmaEventSource::synchronous(reg.find_for_client(&[0x10, 0x4e], 1).unwrap());
    let (src, dst) = (seg(&buf, 0, 500), seg(&buf, 0x2000, 500));
    let r = es
        .start_dma_command(
            &DmaTransfer {
                source: &src,
                dest: &dst,
            },
            SyncWait::Polls(1),
        )
        .unwrap();
    assert!(matches!(r, DmaStart::Completed(ref c) if c.bytes == 500 && c.status.is_ok()));
    assert_eq!(bytes(&buf, 0x2000, 500), bytes(&buf, 0, 500));

    assert!(same(&reg.unregister(&name).unwrap(), &shared));
    assert!(matches!(
        reg.find_by_phandle(0x4e),
        Err(Error::NotAttached { .. })
    ));
    assert!(reg.unregister(&name).is_err());
}
