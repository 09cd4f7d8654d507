//! Regression tests for inputs that once made a public API panic, hang or abort: each
//! names the reproducer and checks the answer it now gets.

use dmakit::descriptor::InterleavedMemoryDescriptor;
use dmakit::dma::{CompletionSource, DmaCompletion, DmaEventSource};
use dmakit::Direction;
use std::sync::{Arc, Mutex, OnceLock};

/// `with_capacity(usize::MAX)` used to abort with "capacity overflow": the room is now
/// taken as portions are added.
#[test]
fn an_interleaved_descriptor_of_any_capacity_is_made() {
    let d = InterleavedMemoryDescriptor::with_capacity(usize::MAX, Direction::InOut);
    assert_eq!(dmakit::descriptor::MemoryDescriptor::length(&d), 0);
}

/// A completion queue fed by the test.
struct Queue(Mutex<Vec<DmaCompletion>>);

impl CompletionSource for Queue {
    fn take_completions(&self, sink: &mut dyn FnMut(DmaCompletion)) {
        let done: Vec<DmaCompletion> = self.0.lock().unwrap().drain(..).collect();
        done.into_iter().for_each(sink);
    }
}

fn completion(t: u64) -> DmaCompletion {
    DmaCompletion {
        ticket: t,
        bytes: t,
        status: Ok(()),
    }
}

/// An action that polls its own event source again used to spin for ever on the event
/// source's lock; IOKit's gate is recursive. Now the nested poll takes the new completions
/// and the delivery already running hands them over, in order, once each.
#[test]
fn an_action_may_poll_its_own_event_source() {
    let q = Arc::new(Queue(Mutex::new(vec![completion(1), completion(2)])));
    let es: Arc<OnceLock<Arc<DmaEventSource<Queue>>>> = Arc::new(OnceLock::new());
    let got = Arc::new(Mutex::new(Vec::new()));
    let (g, e, qq) = (got.clone(), es.clone(), q.clone());
    let source = Arc::new(DmaEventSource::new(q.clone(), move |c| {
        g.lock().unwrap().push(c.ticket);
        if c.ticket == 1 {
            // More work arrives while the action runs, and the action polls for it.
            qq.0.lock().unwrap().push(completion(3));
            let nested = e.get().map(|s| s.poll()).unwrap_or(0);
            assert_eq!(nested, 1, "the nested poll takes the new completion");
        }
    }));
    assert!(es.set(source.clone()).is_ok());
    assert_eq!(source.poll(), 2);
    assert_eq!(*got.lock().unwrap(), [1, 2, 3]);
    assert!(source.has_action());
    assert_eq!(source.poll(), 0);
}

/// A spec no memory can meet (alignment 2^63 below 4 GiB) used to be accepted and to fail
/// later as a confusing lack of space; it is refused when built, saying why.
#[test]
fn a_spec_no_memory_can_meet_is_refused_when_built() {
    use dmakit::dma::SegmentSpec;
    let e = SegmentSpec::builder()
        .alignment(1 << 63)
        .address_bits(32)
        .build()
        .unwrap_err();
    assert!(
        matches!(e, dmakit::Error::BadArgument { value, .. } if value == 1 << 63),
        "{e}"
    );
    assert!(e.to_string().contains("cannot be met"), "{e}");
    // The largest alignment that fits the window is fine.
    SegmentSpec::builder()
        .alignment(1 << 31)
        .address_bits(32)
        .build()
        .unwrap();
    // A window above every aligned address, and a length alignment longer than the window.
    assert!(SegmentSpec::builder()
        .window(0x1001, 0x1fff)
        .alignment(0x1000)
        .build()
        .is_err());
    assert!(SegmentSpec::builder()
        .window(0x1000, 0x10ff)
        .length_alignment(0x200)
        .build()
        .is_err());
}
