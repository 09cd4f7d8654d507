//! IODMAController, IODMAEventSource and IODeviceMemory checked behaviour by behaviour
//! against what IOKit does (each test's comment says what IOKit does, and where dmakit
//! differs on purpose, why).

mod common;

use common::{bytes, engine_rig as rig, seg, Buf, Refusing};

use dmakit::descriptor::{
    device_memory, device_memory_list, device_sub_range, BufferMemoryDescriptor, DeviceRange,
    MemoryDescriptor,
};
use dmakit::dma::{
    CompletionSource, DmaCommand, DmaCompletion, DmaController, DmaControllerRegistry,
    DmaEventSource, DmaStart, DmaTransfer, InterruptSink, IoSegment, SegmentSpec, SharedController,
    SyncWait,
};
use dmakit::map::mapped_read32;
use dmakit::{Direction, Error, IoAddr, IoReturn, PhysAddr};
use dmakit_sim::dma_engine::regs;
use dmakit_sim::{MachineBuilder, SimDmaEngine};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

type Es = DmaEventSource<SimDmaEngine>;
type Collected = Arc<Mutex<Vec<DmaCompletion>>>;

/// An event source on `engine` whose action collects completions, wired to its interrupt.
fn collecting(engine: &Arc<SimDmaEngine>) -> (Arc<Es>, Collected) {
    let got: Collected = Arc::default();
    let g = got.clone();
    let es = Arc::new(DmaEventSource::new(engine.clone(), move |c| {
        g.lock().unwrap().push(c)
    }));
    engine.connect(es.clone());
    (es, got)
}

/// Copies `len` bytes of `buf` from `from` to `to` through `es` (which has an action).
fn start(es: &Es, buf: &Buf, from: u64, to: u64, len: u64) -> u64 {
    let (s, d) = (seg(buf, from, len), seg(buf, to, len));
    es.start(&DmaTransfer {
        source: &s,
        dest: &d,
    })
    .unwrap()
}

fn tickets(got: &Collected) -> Vec<u64> {
    got.lock().unwrap().iter().map(|c| c.ticket).collect()
}

/// A peripheral-style controller: frames of 1..=64 bytes, request lines 0..8.
#[derive(Default)]
struct Peripheral {
    frame: AtomicU32,
    line: AtomicU32,
}
impl CompletionSource for Peripheral {
    fn take_completions(&self, _: &mut dyn FnMut(DmaCompletion)) {}
}
impl DmaController for Peripheral {
    fn start(&self, t: &DmaTransfer<'_>) -> dmakit::Result<u64> {
        t.bytes()
    }
    fn stop(&self) -> dmakit::Result<()> {
        Ok(())
    }
    fn query(&self, _: u64) -> dmakit::Result<u64> {
        Ok(0)
    }
    fn fifo_depth(&self) -> u32 {
        1
    }
    fn set_fifo_depth(&self, _: u32) -> dmakit::Result<()> {
        Ok(())
    }
    fn valid_fifo_depth(&self, _: u32) -> u32 {
        1
    }
    fn set_frame_size(&self, byte_count: u8) -> dmakit::Result<()> {
        if !(1..=64).contains(&byte_count) {
            return Err(Error::BadArgument {
                what: "frame size (1..=64)",
                value: byte_count as u64,
            });
        }
        self.frame.store(byte_count as u32, Ordering::SeqCst);
        Ok(())
    }
    fn set_dma_config(&self, req_index: u32) -> dmakit::Result<()> {
        if !self.valid_dma_config(req_index) {
            return Err(Error::BadArgument {
                what: "request line (0..8)",
                value: req_index as u64,
            });
        }
        self.line.store(req_index, Ordering::SeqCst);
        Ok(())
    }
    fn valid_dma_config(&self, req_index: u32) -> bool {
        req_index < 8
    }
}

fn same(a: &SharedController, b: &SharedController) -> bool {
    Arc::as_ptr(a) as *const u8 == Arc::as_ptr(b) as *const u8
}

// ---------------------------------------------------------------------------------------
// Controller registry (registerDMAController, createControllerName, getController)
// ---------------------------------------------------------------------------------------

/// IOKit `createControllerName`: `"IODMAController"` and the phandle as eight upper-case
/// hex digits, zero-padded.
#[test]
fn controller_names_are_iodmacontroller_and_eight_upper_case_hex_digits() {
    assert_eq!(
        DmaControllerRegistry::controller_name(0),
        "IODMAController00000000"
    );
    assert_eq!(
        DmaControllerRegistry::controller_name(0xab),
        "IODMAController000000AB"
    );
    assert_eq!(
        DmaControllerRegistry::controller_name(u32::MAX),
        "IODMAControllerFFFFFFFF"
    );
}

/// IOKit `getController`: a `dma-parent` property of exactly one phandle names the
/// controller whatever the DMA index (the index then only picks the channel).
#[test]
fn one_dma_parent_phandle_serves_every_dma_index() {
    let reg = DmaControllerRegistry::new();
    let a: SharedController = Arc::new(Refusing);
    reg.register_dma_controller(0x20, a.clone()).unwrap();
    for index in [0, 1, 7, usize::MAX] {
        assert!(same(&reg.find_for_client(&[0x20], index).unwrap(), &a));
    }
}

/// IOKit `getController` with a list of phandles picks the DMA index's entry, and panics
/// ("dmaIndex out of range") past the list; dmakit returns OutOfBounds instead.
#[test]
fn a_dma_index_past_a_longer_dma_parent_is_out_of_bounds_not_a_panic() {
    let reg = DmaControllerRegistry::new();
    let (a, b): (SharedController, SharedController) = (Arc::new(Refusing), Arc::new(Refusing));
    reg.register_dma_controller(1, a.clone()).unwrap();
    reg.register_dma_controller(2, b.clone()).unwrap();
    assert!(same(&reg.find_for_client(&[1, 2], 0).unwrap(), &a));
    assert!(same(&reg.find_for_client(&[1, 2], 1).unwrap(), &b));
    for index in [2, usize::MAX] {
        let e = reg.find_for_client(&[1, 2], index).err().unwrap();
        assert!(matches!(e, Error::OutOfBounds { limit: 2, .. }), "{e:?}");
    }
}

/// IOKit `getController` with an empty `dma-parent` property takes the list branch with
/// no entries and panics; without the property it returns NULL. dmakit: NotAttached for
/// both.
#[test]
fn an_empty_dma_parent_is_not_attached() {
    let reg = DmaControllerRegistry::new();
    reg.register_dma_controller(0, Arc::new(Refusing)).unwrap();
    let e = reg.find_for_client(&[], 0).err().unwrap();
    assert!(matches!(e, Error::NotAttached { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::NOT_ATTACHED);
}

/// IOKit `getController` waits (`waitForService`, no timeout) for a controller of that
/// name to register; dmakit answers NotAttached at once, and the same lookup succeeds once
/// the controller is registered.
#[test]
fn an_unregistered_phandle_is_not_attached_at_once_and_found_once_registered() {
    let reg = DmaControllerRegistry::new();
    let e = reg.find_for_client(&[0x77], 0).err().unwrap();
    assert!(matches!(e, Error::NotAttached { .. }), "{e:?}");
    let c: SharedController = Arc::new(Refusing);
    reg.register_dma_controller(0x77, c.clone()).unwrap();
    assert!(same(&reg.find_for_client(&[0x77], 0).unwrap(), &c));
}

/// IOKit `registerDMAController` registers a second service under a name already used,
/// leaving which one a client finds to the matching order; dmakit refuses the second with
/// BadArgument and keeps the first.
#[test]
fn registering_a_taken_phandle_is_refused_and_keeps_the_first() {
    let reg = DmaControllerRegistry::new();
    let (a, b): (SharedController, SharedController) = (Arc::new(Refusing), Arc::new(Refusing));
    reg.register_dma_controller(5, a.clone()).unwrap();
    let e = reg.register_dma_controller(5, b.clone()).err().unwrap();
    assert!(matches!(e, Error::BadArgument { value: 5, .. }), "{e:?}");
    assert!(same(&reg.find_by_phandle(5).unwrap(), &a));
    assert_eq!(reg.names(), ["IODMAController00000005"]);
    reg.unregister("IODMAController00000005").unwrap();
    reg.register_dma_controller(5, b.clone()).unwrap();
    assert!(same(&reg.find_by_phandle(5).unwrap(), &b));
}

// ---------------------------------------------------------------------------------------
// startDMACommand
// ---------------------------------------------------------------------------------------

/// IOKit `startDMACommand` without a completion action returns once the controller calls
/// `completeDMACommand`; the status the controller gave `notifyDMACommand` travels with
/// the command. dmakit returns the completion itself, a failed transfer's error inside.
#[test]
fn a_synchronous_start_returns_the_transfers_own_status() {
    let (_m, engine, buf) = rig(1);
    let es = DmaEventSource::synchronous(engine.clone());
    let hole = 0x0500_0000u64; // not RAM: the engine's read faults
    let src = [IoSegment {
        addr: IoAddr(hole),
        len: 64,
    }];
    let dst = seg(&buf, 0x2000, 64);
    let r = es
        .start_dma_command(
            &DmaTransfer {
                source: &src,
                dest: &dst,
            },
            SyncWait::Polls(1),
        )
        .unwrap();
    let DmaStart::Completed(c) = r else {
        panic!("{r:?}")
    };
    assert_eq!(c.bytes, 0);
    let e = c.status.unwrap_err();
    assert!(
        matches!(e, Error::DmaFault { addr, .. } if addr == hole),
        "{e:?}"
    );
    assert_eq!(e.io_return(), IoReturn::DMA_ERROR);
    assert!(!es.is_busy());
}

/// IOKit `startDMACommand` while a synchronous command is in flight: kIOReturnBusy,
/// nothing reaches the controller.
#[test]
fn a_synchronous_start_while_another_is_in_flight_is_busy_and_starts_nothing() {
    let (m, engine, buf) = rig(2);
    let es = DmaEventSource::synchronous(engine.clone());
    engine.pause().unwrap();
    let (s, d) = (seg(&buf, 0, 16), seg(&buf, 0x2000, 16));
    let t = DmaTransfer {
        source: &s,
        dest: &d,
    };
    assert!(matches!(
        es.start_dma_command(&t, SyncWait::Polls(1)),
        Err(Error::Timeout { .. })
    ));
    let tail = mapped_read32(&*m, PhysAddr(engine.registers().0 + regs::TAIL)).unwrap();
    let e = es.start_dma_command(&t, SyncWait::Polls(1)).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::BUSY);
    assert_eq!(
        mapped_read32(&*m, PhysAddr(engine.registers().0 + regs::TAIL)).unwrap(),
        tail,
        "the busy start rang no doorbell"
    );
}

/// IOKit `startDMACommand`: a start the controller refuses clears the busy flag and
/// returns the controller's code.
#[test]
fn a_refused_synchronous_start_returns_the_controllers_error_and_clears_busy() {
    let es = DmaEventSource::synchronous(Arc::new(Refusing));
    let s = [IoSegment {
        addr: IoAddr(0x1000),
        len: 8,
    }];
    let t = DmaTransfer {
        source: &s,
        dest: &s,
    };
    let e = es.start_dma_command(&t, SyncWait::Polls(1)).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::UNSUPPORTED);
    assert!(!es.is_busy());
    let again = es.start_dma_command(&t, SyncWait::Polls(1)).unwrap_err();
    assert!(
        matches!(again, Error::Unsupported { .. }),
        "not Busy: {again:?}"
    );
}

/// IOKit `startDMACommand` with a completion action never marks the event source busy:
/// any number of starts queue, each returning at once.
#[test]
fn with_a_completion_action_starts_are_never_busy() {
    let (_m, engine, buf) = rig(3);
    let (es, got) = collecting(&engine);
    engine.pause().unwrap();
    let mut started = Vec::new();
    for i in 0..5u64 {
        let (s, d) = (seg(&buf, i * 16, 16), seg(&buf, 0x2000 + i * 16, 16));
        let r = es
            .start_dma_command(
                &DmaTransfer {
                    source: &s,
                    dest: &d,
                },
                SyncWait::Polls(1),
            )
            .unwrap();
        let DmaStart::Queued { ticket } = r else {
            panic!("{r:?}")
        };
        started.push(ticket);
        assert!(!es.is_busy());
    }
    engine.resume().unwrap();
    es.poll();
    assert_eq!(tickets(&got), started);
}

/// IOKit hands the controller an IODMACommand, and a controller that generates segments
/// of an unprepared one gets kIOReturnNotReady. In dmakit the segments are generated
/// before the start, so the same mistake fails there and the engine is never touched.
#[test]
fn an_unprepared_command_fails_before_it_reaches_the_controller() {
    let (m, engine, buf) = rig(4);
    let buf = Arc::new(buf);
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(SegmentSpec::builder().build().unwrap())
        .build()
        .unwrap();
    cmd.set_memory_descriptor(buf.clone()).unwrap();
    let mut out = [0u8; 16 * 4];
    let mut offset = 0;
    let e = cmd.gen_segments(&mut offset, &mut out).unwrap_err();
    assert!(matches!(e, Error::NotReady { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::NOT_READY);
    assert_eq!(
        mapped_read32(&*m, PhysAddr(engine.registers().0 + regs::TAIL)).unwrap(),
        0,
        "nothing was queued"
    );
}

/// IOKit `startDMACommand(cmd, dir, byteCount = 0)` moves the whole command when the
/// count is 0. A dmakit transfer is the segments themselves, so there is no "whole" to
/// fall back to: a transfer of no bytes, or with unequal sides, is BadArgument and never
/// reaches the engine.
#[test]
fn an_empty_or_lopsided_transfer_is_bad_argument() {
    let (m, engine, buf) = rig(21);
    let es = DmaEventSource::synchronous(engine.clone());
    let (s, d) = (seg(&buf, 0, 8), seg(&buf, 0x2000, 9));
    let empty = [IoSegment {
        addr: s[0].addr,
        len: 0,
    }];
    for (source, dest) in [
        (&[][..], &[][..]),
        (&empty[..], &empty[..]),
        (&s[..], &d[..]),
    ] {
        let e = es
            .start_dma_command(&DmaTransfer { source, dest }, SyncWait::Polls(1))
            .unwrap_err();
        assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT, "{e:?}");
        assert!(!es.is_busy());
    }
    assert_eq!(
        mapped_read32(&*m, PhysAddr(engine.registers().0 + regs::TAIL)).unwrap(),
        0,
        "nothing was queued"
    );
}

/// IOKit sleeps in a synchronous `startDMACommand` for as long as the controller takes;
/// dmakit bounds the wait: Timeout, and the event source stays busy (the transfer still
/// owns its memory) until a poll sees it finish.
#[test]
fn a_timed_out_synchronous_start_stays_busy_until_its_completion_is_seen() {
    let (_m, engine, buf) = rig(5);
    let es = DmaEventSource::synchronous(engine.clone());
    engine.pause().unwrap();
    let (s, d) = (seg(&buf, 0, 32), seg(&buf, 0x2000, 32));
    let t = DmaTransfer {
        source: &s,
        dest: &d,
    };
    let e = es
        .start_dma_command(&t, SyncWait::Timeout(Duration::from_millis(20)))
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::TIMEOUT);
    assert!(es.is_busy());
    es.poll();
    assert!(es.is_busy(), "not finished yet");
    engine.resume().unwrap();
    es.poll();
    assert!(!es.is_busy());
    assert_eq!(bytes(&buf, 0x2000, 32), bytes(&buf, 0, 32));
}

// ---------------------------------------------------------------------------------------
// stop, query, completion order
// ---------------------------------------------------------------------------------------

/// IOKit `stopDMACommand` while a synchronous start sleeps: the controller completes the
/// command (with an error status) and the sleeper wakes. dmakit: the waiting start returns
/// the completion with Aborted (kIOReturnAborted).
#[test]
fn stop_while_a_synchronous_start_waits_completes_it_as_aborted() {
    let (_m, engine, buf) = rig(6);
    let buf = Arc::new(buf);
    let es = Arc::new(DmaEventSource::synchronous(engine.clone()));
    engine.connect(es.clone());
    engine.pause().unwrap();
    let waiter = {
        let (es, buf) = (es.clone(), buf.clone());
        std::thread::spawn(move || {
            let (s, d) = (seg(&buf, 0, 64), seg(&buf, 0x2000, 64));
            es.start_dma_command(
                &DmaTransfer {
                    source: &s,
                    dest: &d,
                },
                SyncWait::Timeout(Duration::from_secs(20)),
            )
        })
    };
    while !es.is_busy() {
        std::thread::yield_now();
    }
    let before = bytes(&buf, 0x2000, 64);
    es.stop_dma_command().unwrap();
    let r = waiter.join().unwrap().unwrap();
    let DmaStart::Completed(c) = r else {
        panic!("{r:?}")
    };
    assert_eq!(c.bytes, 0);
    let e = c.status.unwrap_err();
    assert!(matches!(e, Error::Aborted { .. }), "{e:?}");
    assert_eq!(e.io_return(), IoReturn::ABORTED);
    assert!(!es.is_busy());
    assert_eq!(
        bytes(&buf, 0x2000, 64),
        before,
        "an aborted transfer moves nothing"
    );
}

/// IOKit's completion queue is first in, first out: the action sees commands in the
/// order the controller completed them, including those a stop aborted.
#[test]
fn completions_reach_the_action_in_order_once_each_including_aborted_ones() {
    let (_m, engine, buf) = rig(7);
    let (es, got) = collecting(&engine);
    let first = start(&es, &buf, 0, 0x2000, 8);
    engine.pause().unwrap();
    let queued: Vec<u64> = (1..4u64)
        .map(|i| start(&es, &buf, i * 8, 0x2000 + i * 8, 8))
        .collect();
    es.stop_dma_command().unwrap();
    engine.resume().unwrap();
    let after = start(&es, &buf, 0x100, 0x2100, 8);
    assert_eq!(es.poll(), 5);
    assert_eq!(es.poll(), 0);
    let mut want = vec![first];
    want.extend(&queued);
    want.push(after);
    assert_eq!(tickets(&got), want);
    let got = got.lock().unwrap();
    assert!(got[0].status.is_ok() && got[4].status.is_ok());
    assert!(got[1..4]
        .iter()
        .all(|c| matches!(c.status, Err(Error::Aborted { .. }))));
}

/// IOKit `queryDMACommand` reports the channel's transfer count. dmakit answers by
/// ticket: 0 for a queued transfer, its bytes once finished, BadArgument for a ticket the
/// controller never gave.
#[test]
fn query_reports_the_bytes_of_a_queued_and_a_finished_transfer() {
    let (_m, engine, buf) = rig(8);
    let (es, _got) = collecting(&engine);
    engine.pause().unwrap();
    let t = start(&es, &buf, 0, 0x2000, 100);
    assert_eq!(es.query_dma_command(t).unwrap(), 0);
    engine.resume().unwrap();
    es.poll();
    assert_eq!(es.query_dma_command(t).unwrap(), 100);
    let e = es.query_dma_command(t + 1000).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BAD_ARGUMENT);
}

// ---------------------------------------------------------------------------------------
// Reentrancy
// ---------------------------------------------------------------------------------------

/// IOKit runs the completion action on the work loop with its (recursive) gate held, so
/// the action may start the next command. dmakit: the action may start and poll again;
/// the completions still arrive in order, each once, without a deadlock.
#[test]
fn a_completion_action_may_start_the_next_command_and_poll() {
    let (_m, engine, buf) = rig(9);
    let buf = Arc::new(buf);
    let got: Collected = Arc::default();
    let slot: Arc<Mutex<Weak<Es>>> = Arc::default();
    let (g, sl, b) = (got.clone(), slot.clone(), buf.clone());
    let es = Arc::new(DmaEventSource::new(engine.clone(), move |c| {
        let n = {
            let mut g = g.lock().unwrap();
            g.push(c);
            g.len() as u64
        };
        if n < 10 {
            let es = sl
                .lock()
                .unwrap()
                .upgrade()
                .expect("the event source lives");
            start(&es, &b, n * 8, 0x2000 + n * 8, 8);
            es.poll(); // nested: leaves the new completion to the delivery under way
        }
    }));
    *slot.lock().unwrap() = Arc::downgrade(&es);
    engine.connect(es.clone());
    let first = start(&es, &buf, 0, 0x2000, 8);
    es.poll();
    let t = tickets(&got);
    assert_eq!(t, (first..first + 10).collect::<Vec<_>>());
    assert_eq!(bytes(&buf, 0x2000, 80), bytes(&buf, 0, 80));
}

/// IOKit: an action that releases its event source relies on the work loop still holding
/// it while the action runs. dmakit: the action may drop every handle the driver holds;
/// the work loop's own handle ends the pass, and once it exits the event source is freed
/// and the engine's later interrupts go nowhere.
#[test]
fn an_action_that_drops_its_event_source_ends_cleanly() {
    let (_m, engine, buf) = rig(10);
    let slot: Arc<Mutex<Option<Arc<Es>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU32::new(0));
    let (sl, st, dl) = (slot.clone(), stop.clone(), delivered.clone());
    let es = Arc::new(DmaEventSource::new(engine.clone(), move |_| {
        dl.fetch_add(1, Ordering::SeqCst);
        st.store(true, Ordering::SeqCst);
        drop(sl.lock().unwrap().take()); // the driver's handle
    }));
    engine.connect(es.clone());
    let weak = Arc::downgrade(&es);
    let lp = es.spawn_work_loop(stop);
    *slot.lock().unwrap() = Some(es.clone());
    start(&es, &buf, 0, 0x2000, 8);
    drop(es);
    lp.join().unwrap();
    assert_eq!(delivered.load(Ordering::SeqCst), 1);
    assert!(weak.upgrade().is_none(), "the event source was freed");
    // The engine lives on; its interrupt has nowhere to go, and nothing breaks.
    let (s, d) = (seg(&buf, 0x100, 8), seg(&buf, 0x2100, 8));
    engine
        .start(&DmaTransfer {
            source: &s,
            dest: &d,
        })
        .unwrap();
    assert_eq!(bytes(&buf, 0x2100, 8), bytes(&buf, 0x100, 8));
}

/// A panic in IOKit's action is a kernel panic. dmakit: the panic reaches the caller of
/// `poll`, the completion it was handed is lost, and the next poll delivers the rest to
/// the same action (the event source does not stay stuck "delivering").
#[test]
fn an_action_that_panics_does_not_stop_later_deliveries() {
    let (_m, engine, buf) = rig(11);
    let got: Collected = Arc::default();
    let g = got.clone();
    let es = Arc::new(DmaEventSource::new(engine.clone(), move |c| {
        let first = g.lock().unwrap().is_empty();
        g.lock().unwrap().push(c);
        if first {
            panic!("the action fails once");
        }
    }));
    engine.connect(es.clone());
    let a = start(&es, &buf, 0, 0x2000, 8);
    let b = start(&es, &buf, 8, 0x2008, 8);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| es.poll()));
    assert!(r.is_err(), "the panic reaches the poller");
    assert!(es.has_action());
    let c = start(&es, &buf, 16, 0x2010, 8);
    es.poll();
    assert_eq!(tickets(&got), [a, b, c]);
}

// ---------------------------------------------------------------------------------------
// Disabled and removed event sources
// ---------------------------------------------------------------------------------------

/// IOKit's work loop skips a disabled event source: completed commands wait in its queue
/// and reach the action after `enable`, in order.
#[test]
fn a_disabled_event_source_holds_completions_until_enabled() {
    let (_m, engine, buf) = rig(12);
    let (es, got) = collecting(&engine);
    es.disable();
    assert!(!es.is_enabled());
    let t: Vec<u64> = (0..3u64)
        .map(|i| start(&es, &buf, i * 8, 0x2000 + i * 8, 8))
        .collect();
    assert_eq!(es.poll(), 3, "taken from the controller");
    assert!(tickets(&got).is_empty(), "nothing delivered while disabled");
    assert_eq!(es.held_completions(), 3);
    es.enable();
    assert!(tickets(&got).is_empty(), "enable itself delivers nothing");
    es.poll();
    assert_eq!(tickets(&got), t);
    assert_eq!(es.held_completions(), 0);
}

/// IOKit checks the enable bit before each `checkForWork`, so an action that disables its
/// event source gets no further completion until it is enabled again.
#[test]
fn disabling_from_the_action_stops_delivery_after_it() {
    let (_m, engine, buf) = rig(13);
    let got: Collected = Arc::default();
    let slot: Arc<Mutex<Weak<Es>>> = Arc::default();
    let (g, sl) = (got.clone(), slot.clone());
    let es = Arc::new(DmaEventSource::new(engine.clone(), move |c| {
        g.lock().unwrap().push(c);
        if let Some(es) = sl.lock().unwrap().upgrade() {
            es.disable();
        }
    }));
    *slot.lock().unwrap() = Arc::downgrade(&es);
    let t: Vec<u64> = (0..3u64)
        .map(|i| start(&es, &buf, i * 8, 0x2000 + i * 8, 8))
        .collect();
    es.poll();
    assert_eq!(tickets(&got), [t[0]]);
    assert_eq!(es.held_completions(), 2);
    es.enable();
    es.poll();
    assert_eq!(
        tickets(&got),
        [t[0], t[1]],
        "one at a time: it disables again"
    );
}

/// IOKit `disable` closes the work-loop gate, so it returns only once an action running
/// on the work loop has returned; after it, the action does not run. dmakit's `disable`
/// from another thread waits the same way.
#[test]
fn disable_from_another_thread_waits_for_the_running_action() {
    let (_m, engine, buf) = rig(20);
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<u64>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let es = Arc::new(DmaEventSource::new(engine.clone(), move |c| {
        let _ = entered_tx.send(c.ticket);
        let _ = release_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(20));
    }));
    let first = start(&es, &buf, 0, 0x2000, 8);
    start(&es, &buf, 8, 0x2008, 8);
    let poller = {
        let es = es.clone();
        std::thread::spawn(move || es.poll())
    };
    assert_eq!(entered_rx.recv_timeout(Duration::from_secs(20)), Ok(first));
    let disabled = Arc::new(AtomicBool::new(false));
    let disabler = {
        let (es, disabled) = (es.clone(), disabled.clone());
        std::thread::spawn(move || {
            es.disable();
            disabled.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !disabled.load(Ordering::SeqCst),
        "disable returned while the action ran"
    );
    release_tx.send(()).unwrap();
    disabler.join().unwrap();
    poller.join().unwrap();
    assert!(disabled.load(Ordering::SeqCst));
    assert!(
        entered_rx.try_recv().is_err(),
        "the action did not run again after disable"
    );
    assert_eq!(es.held_completions(), 1);
}

/// IOKit `enable` signals the work loop, which then delivers what waited.
#[test]
fn enable_wakes_the_work_loop_to_deliver_held_completions() {
    let (_m, engine, buf) = rig(14);
    let (tx, rx) = std::sync::mpsc::channel();
    let es = Arc::new(DmaEventSource::new(engine.clone(), move |c| {
        let _ = tx.send(c.ticket);
    }));
    engine.connect(es.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let lp = es.spawn_work_loop(stop.clone());
    es.disable();
    let t = start(&es, &buf, 0, 0x2000, 8);
    // The work loop takes the completion and holds it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while es.held_completions() == 0 {
        assert!(std::time::Instant::now() < deadline, "never taken");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(rx.try_recv().is_err());
    es.enable();
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(t));
    stop.store(true, Ordering::Release);
    es.raise();
    lp.join().unwrap();
}

/// IOKit wakes a synchronous starter from `completeDMACommand` directly, not through the
/// work loop, so disabling the event source does not hold a synchronous start.
#[test]
fn a_synchronous_start_finishes_on_a_disabled_event_source() {
    let (_m, engine, buf) = rig(15);
    let es = DmaEventSource::synchronous(engine.clone());
    es.disable();
    let (s, d) = (seg(&buf, 0, 40), seg(&buf, 0x2000, 40));
    let r = es
        .start_dma_command(
            &DmaTransfer {
                source: &s,
                dest: &d,
            },
            SyncWait::Polls(2),
        )
        .unwrap();
    assert!(matches!(r, DmaStart::Completed(ref c) if c.bytes == 40 && c.status.is_ok()));
    assert!(!es.is_busy());
}

/// IOKit: commands queued in a removed event source are never delivered (and a controller
/// that completes into it after it is freed touches freed memory). dmakit: dropping the
/// event source drops what it held; what the controller had not handed over goes to the
/// next event source that polls the controller.
#[test]
fn dropping_an_event_source_leaves_untaken_completions_to_the_next_one() {
    let (_m, engine, buf) = rig(16);
    let (es, got) = collecting(&engine);
    es.disable();
    let held = start(&es, &buf, 0, 0x2000, 8);
    es.poll(); // taken and held by the disabled source
    let untaken = start(&es, &buf, 8, 0x2008, 8);
    drop(es);
    assert!(tickets(&got).is_empty());
    let (next, got2) = collecting(&engine);
    next.poll();
    assert_eq!(tickets(&got2), [untaken]);
    assert!(tickets(&got).is_empty(), "the dropped action never ran");
    assert_ne!(held, untaken);
}

// ---------------------------------------------------------------------------------------
// FIFO depth, frame size, request lines
// ---------------------------------------------------------------------------------------

/// IOKit `validFIFODepth` returns kIOReturnError converted to a byte count when it cannot
/// answer (a huge "valid" depth); dmakit returns 0, never an error code as a depth.
#[test]
fn valid_fifo_depth_is_zero_not_an_error_code_when_none_is_valid() {
    let es = DmaEventSource::synchronous(Arc::new(Refusing));
    assert_eq!(es.valid_fifo_depth(16), 0);
    assert_eq!(es.valid_fifo_depth(u32::MAX), 0);
    assert_eq!(es.fifo_depth(), 0);
}

/// IOKit leaves the depth limits to the controller. The simulated engine takes powers of
/// two from 1 to 256: `valid_fifo_depth` rounds down into that range, any other depth is
/// BadArgument, and a resize with transfers outstanding is Busy.
#[test]
fn fifo_depth_limits_of_the_simulated_engine() {
    let (_m, engine, buf) = rig(17);
    let (es, _got) = collecting(&engine);
    assert_eq!(es.fifo_depth(), 16);
    for (ask, valid) in [
        (0, 1),
        (1, 1),
        (3, 2),
        (256, 256),
        (257, 256),
        (u32::MAX, 256),
    ] {
        assert_eq!(es.valid_fifo_depth(ask), valid, "valid_fifo_depth({ask})");
    }
    for bad in [0, 3, 512, u32::MAX] {
        let e = es.set_fifo_depth(bad).unwrap_err();
        assert_eq!(
            e.io_return(),
            IoReturn::BAD_ARGUMENT,
            "set_fifo_depth({bad})"
        );
    }
    assert_eq!(es.fifo_depth(), 16, "refused depths change nothing");
    es.set_fifo_depth(256).unwrap();
    es.set_fifo_depth(1).unwrap();
    assert_eq!(es.fifo_depth(), 1);
    engine.pause().unwrap();
    start(&es, &buf, 0, 0x2000, 8);
    let e = es.set_fifo_depth(4).unwrap_err();
    assert_eq!(e.io_return(), IoReturn::BUSY);
    assert_eq!(es.fifo_depth(), 1);
}

/// IOKit `IODMAEventSource::setFrameSize(byteCount)` forwards the byte to the controller
/// (every IOKit controller implements it). dmakit forwards it too; a controller without a
/// frame size (the default, and the memory-to-memory engine) answers Unsupported.
#[test]
fn set_frame_size_goes_to_the_controller_or_is_unsupported() {
    let p = Arc::new(Peripheral::default());
    let es = DmaEventSource::synchronous(p.clone());
    es.set_frame_size(32).unwrap();
    assert_eq!(p.frame.load(Ordering::SeqCst), 32);
    let e = es.set_frame_size(0).unwrap_err();
    assert!(matches!(e, Error::BadArgument { value: 0, .. }), "{e:?}");
    assert_eq!(p.frame.load(Ordering::SeqCst), 32);

    let (_m, engine, _buf) = rig(18);
    let e = DmaEventSource::synchronous(engine)
        .set_frame_size(4)
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::UNSUPPORTED);
    let e = DmaEventSource::synchronous(Arc::new(Refusing))
        .set_frame_size(u8::MAX)
        .unwrap_err();
    assert_eq!(e.io_return(), IoReturn::UNSUPPORTED);
}

/// IOKit `setDMAConfig(reqIndex)` and `validDMAConfig(reqIndex)` forward to the
/// controller. dmakit the same; a controller without request lines refuses every index
/// (Unsupported, and `valid_dma_config` false).
#[test]
fn dma_config_goes_to_the_controller_or_is_unsupported() {
    let p = Arc::new(Peripheral::default());
    let es = DmaEventSource::synchronous(p.clone());
    assert!(es.valid_dma_config(7));
    assert!(!es.valid_dma_config(8));
    es.set_dma_config(7).unwrap();
    assert_eq!(p.line.load(Ordering::SeqCst), 7);
    assert!(es.set_dma_config(8).is_err());
    assert_eq!(p.line.load(Ordering::SeqCst), 7);

    let none = DmaEventSource::synchronous(Arc::new(Refusing));
    assert!(!none.valid_dma_config(0));
    assert_eq!(
        none.set_dma_config(0).unwrap_err().io_return(),
        IoReturn::UNSUPPORTED
    );
}

// ---------------------------------------------------------------------------------------
// IODeviceMemory
// ---------------------------------------------------------------------------------------

/// IOKit `IODeviceMemory::withRange`: a physical descriptor of direction None whose
/// physical segments are the CPU's addresses (`kIOMemoryMapperNone`).
#[test]
fn device_memory_is_physical_with_direction_none() {
    let m = Arc::new(MachineBuilder::new().build().unwrap());
    let d = device_memory(m, PhysAddr(0xFE00_0000), 0x3000).unwrap();
    assert_eq!(d.length(), 0x3000);
    assert_eq!(d.direction(), Direction::None);
    let s = d.physical_segment(0x1800).unwrap();
    assert_eq!((s.addr, s.len), (PhysAddr(0xFE00_1800), 0x1800));
}

/// IOKit `IODeviceMemory::withSubRange`: a window of direction None; one that does not
/// lie inside the parent is NULL (dmakit: OutOfBounds).
#[test]
fn a_device_sub_range_has_direction_none_and_must_lie_inside() {
    let m = Arc::new(MachineBuilder::new().build().unwrap());
    let bar: Arc<dyn MemoryDescriptor> =
        Arc::new(device_memory(m, PhysAddr(0xFE00_0000), 0x1000).unwrap());
    let w = device_sub_range(bar.clone(), 0x100, 0x80).unwrap();
    assert_eq!(w.direction(), Direction::None);
    assert_eq!(w.physical_segment(0).unwrap().addr, PhysAddr(0xFE00_0100));
    for (off, len) in [(0xF80, 0x81), (0x1001, 0), (u64::MAX, 2)] {
        let e = device_sub_range(bar.clone(), off, len).unwrap_err();
        assert!(
            matches!(e, Error::OutOfBounds { .. }),
            "{off:#x}+{len:#x}: {e:?}"
        );
    }
}

/// IOKit `IODeviceMemory::arrayFromList`: one descriptor per element, tagged, in order; a
/// failing element releases what was built and returns NULL (dmakit: the element's
/// error).
#[test]
fn device_memory_list_is_tagged_in_order_and_all_or_nothing() {
    let m = Arc::new(MachineBuilder::new().build().unwrap());
    let list = [
        DeviceRange {
            start: PhysAddr(0xFE00_0000),
            length: 0x1000,
            tag: 9,
        },
        DeviceRange {
            start: PhysAddr(0xFD00_0000),
            length: 0,
            tag: 0,
        },
        DeviceRange {
            start: PhysAddr(0xFE20_0000),
            length: 0x40,
            tag: u32::MAX,
        },
    ];
    let got = device_memory_list(m.clone(), &list).unwrap();
    let seen: Vec<(u32, u64, u64)> = got
        .iter()
        .map(|(tag, d)| {
            let at = d.physical_segment(0).map_or(0, |s| s.addr.0);
            (*tag, at, d.length())
        })
        .collect();
    assert_eq!(
        seen,
        [
            (9, 0xFE00_0000, 0x1000),
            (0, 0, 0),
            (u32::MAX, 0xFE20_0000, 0x40)
        ]
    );
    assert!(got.iter().all(|(_, d)| d.direction() == Direction::None));
    assert!(device_memory_list(m.clone(), &[]).unwrap().is_empty());
    let bad = DeviceRange {
        start: PhysAddr(u64::MAX - 1),
        length: 0x10,
        tag: 1,
    };
    let e = device_memory_list(m, &[list[0], bad, list[2]]).unwrap_err();
    assert!(matches!(e, Error::Overflow { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// What driver developers get wrong
// ---------------------------------------------------------------------------------------

/// A common IOKit mistake: handing a DMA engine that sits behind an IOMMU the CPU
/// physical addresses of a buffer instead of its IODMACommand segments; the IOMMU refuses
/// the access (a "vtd fault"). dmakit reports it in the transfer's completion status (a
/// DmaFault through the IOMMU, kIOReturnDMAError) and moves nothing; the same transfer
/// with segments from a mapped DmaCommand works.
#[test]
fn cpu_physical_addresses_behind_an_iommu_fault_in_the_completion_status() {
    use dmakit::dma::{MappingMode, PrepareOptions, SegmentFormat};
    use dmakit::mapper::IommuMapper;
    use dmakit_sim::SimIommu;

    let m = Arc::new(
        MachineBuilder::new()
            .seed(19)
            .coherent(true)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x4000_0000, 0x1000_0000).unwrap());
    let engine = Arc::new(SimDmaEngine::new(m.clone(), Some(iommu)).unwrap());
    let data: Vec<u8> = (0..0x2000u32).map(|i| (i % 253) as u8).collect();
    let buf =
        Arc::new(BufferMemoryDescriptor::with_bytes(m.clone(), &data, Direction::InOut).unwrap());
    let es = DmaEventSource::synchronous(engine.clone());

    let (s, d) = (seg(&buf, 0, 64), seg(&buf, 0x1000, 64));
    let r = es
        .start_dma_command(
            &DmaTransfer {
                source: &s,
                dest: &d,
            },
            SyncWait::Polls(1),
        )
        .unwrap();
    let DmaStart::Completed(c) = r else {
        panic!("{r:?}")
    };
    let e = c.status.unwrap_err();
    assert!(
        matches!(e, Error::DmaFault { via_iommu: true, write: false, addr, .. } if addr == s[0].addr.0),
        "{e:?}"
    );
    assert_eq!(e.io_return(), IoReturn::DMA_ERROR);
    assert_eq!(bytes(&buf, 0x1000, 64), data[0x1000..0x1040].to_vec());

    // The same copy with the buffer's IO addresses.
    let mut cmd = DmaCommand::builder(m.clone())
        .spec(SegmentSpec::builder().build().unwrap())
        .mode(MappingMode::Mapped(mapper))
        .build()
        .unwrap();
    cmd.set_memory_descriptor(buf.clone()).unwrap();
    cmd.prepare(PrepareOptions::new()).unwrap();
    let mut out = [0u8; 16 * 4];
    let mut offset = 0;
    let n = cmd.gen_segments(&mut offset, &mut out).unwrap();
    let io: Vec<IoSegment> = (0..n)
        .map(|i| SegmentFormat::Host64.read(&out, i).unwrap())
        .collect();
    let at = |off: u64| -> [IoSegment; 1] {
        let mut skip = off;
        for s in &io {
            if skip < s.len {
                return [IoSegment {
                    addr: IoAddr(s.addr.0 + skip),
                    len: 64,
                }];
            }
            skip -= s.len;
        }
        panic!("offset {off:#x} past the segments")
    };
    let (s, d) = (at(0), at(0x1000));
    let r = es
        .start_dma_command(
            &DmaTransfer {
                source: &s,
                dest: &d,
            },
            SyncWait::Polls(1),
        )
        .unwrap();
    assert!(
        matches!(r, DmaStart::Completed(ref c) if c.status.is_ok() && c.bytes == 64),
        "{r:?}"
    );
    cmd.complete().unwrap();
    assert_eq!(bytes(&buf, 0x1000, 64), data[..64].to_vec());
}

/// IOKit's `kIOMemoryMapperNone` on IODeviceMemory only keeps the descriptor's own
/// `getPhysicalSegment` off the system mapper; an IODMACommand with a mapper still maps
/// the range for its device (peer-to-peer DMA to a BAR). dmakit: a bypassed command's
/// segments are the range's physical addresses, a mapped command's are IO addresses that
/// the IOMMU translates back to them.
#[test]
fn device_memory_through_a_dma_command_is_physical_bypassed_and_mapped_through_an_iommu() {
    use dmakit::dma::{MappingMode, PrepareOptions};
    use dmakit::mapper::IommuMapper;
    use dmakit_sim::{ScratchDevice, SimIommu};

    let regs = Arc::new(Mutex::new(ScratchDevice::new(0x1234_5678, 0x100)));
    let m = Arc::new(
        MachineBuilder::new()
            .coherent(true)
            .mmio(0xFE00_0000, 0x2000, regs)
            .build()
            .unwrap(),
    );
    let iommu = Arc::new(SimIommu::new(m.clone()));
    let mapper = Arc::new(IommuMapper::new(iommu.clone(), 0x4000_0000, 0x1000_0000).unwrap());
    let bar: Arc<dyn MemoryDescriptor> =
        Arc::new(device_memory(m.clone(), PhysAddr(0xFE00_0000), 0x2000).unwrap());
    let segments = |mode: MappingMode| -> Vec<IoSegment> {
        let mut c = DmaCommand::builder(m.clone())
            .spec(SegmentSpec::builder().build().unwrap())
            .mode(mode)
            .build()
            .unwrap();
        c.set_memory_descriptor(bar.clone()).unwrap();
        c.prepare(PrepareOptions::new()).unwrap();
        let segs: Vec<IoSegment> = c.segments().map(|s| s.unwrap()).collect();
        let total: u64 = segs.iter().map(|s| s.len).sum();
        assert_eq!(total, 0x2000);
        let entries = iommu.table_entries();
        c.complete().unwrap();
        if segs[0].addr.0 != 0xFE00_0000 {
            // Both BAR pages were in the IOMMU's table while prepared.
            assert_eq!(entries - iommu.table_entries(), 2);
        }
        segs
    };
    let direct = segments(MappingMode::Bypassed);
    assert_eq!(direct[0].addr, IoAddr(0xFE00_0000));
    let mapped = segments(MappingMode::Mapped(mapper));
    assert!(
        (0x4000_0000..0x5000_0000).contains(&mapped[0].addr.0),
        "{mapped:?}"
    );
}
