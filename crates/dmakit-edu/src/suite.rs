//! The driver's tests, written once against the seams: `cargo test` runs them on the
//! simulator's PCI bus (`dmakit-sim`'s `SimEdu`), the QEMU guest over VFIO.
//!
//! Every test takes a [`Rig`] — the platform, the function, the driver's options and how
//! to wait — and returns `Ok(detail)` or `Err(why)`. A test leaves nothing behind, on
//! success or failure: its commands are completed (after the device is stopped and
//! drained), its buffers freed, the driver disconnected. What only one machine can check
//! (the simulator's counters, the kernel's view of the IOMMU, the guest's DMAR faults)
//! the caller checks around the call.
//!
//! Waiting needs no clock: a test calls [`Rig::pause`] between polls, at most
//! [`Rig::patience`] times, and gives up after that. The guest pauses a millisecond (so its
//! patience is a time); the simulator, whose device finishes inside the register store,
//! need not pause at all.
//!
//! ```
//! use std::sync::Arc;
//! use dmakit::device::{PciBus, PciMatch};
//! use dmakit_edu::suite::{self, Rig};
//! use dmakit_edu::{EduOptions, EDU_DEVICE, EDU_VENDOR};
//!
//! # fn demo<P>(platform: P, bus: &dyn PciBus) -> Result<(), String>
//! # where P: dmakit::platform::Platform + Clone + Send + Sync + 'static {
//! let function = bus.find(&PciMatch::ids(EDU_VENDOR, EDU_DEVICE)).map_err(|e| e.to_string())?;
//! let pause = || std::thread::sleep(std::time::Duration::from_millis(1));
//! let rig = Rig::new(platform, function, EduOptions::new().dma_bits(64), &pause, 20_000);
//! let report = suite::round_trip(&rig)?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! | test | checks |
//! | --- | --- |
//! | [`probe`] | IDs, identification, liveness, DMA view and limit, interrupts |
//! | [`device_memory`] | BAR0 as IOKit's `IODeviceMemory`: its segment is the BAR, registers answer there |
//! | [`round_trip`] | RAM → device → RAM byte-exact, two completions in order, addresses within the limit, interrupts seen when routed |
//! | [`stop_in_order`] | `stop` with a run in flight and two queued: all complete in ticket order, aborted, with their byte counts; the controller works afterwards |
//! | [`spec_refuses_wide_iovas`] | a mapper that hands out addresses above the limit: the commands refuse them at prepare |
//! | [`wide_iovas_miss`] | a driver told the device is wider than it is: the data does not arrive (why the limit matters) |
//! | [`bounce_below_limit`] | memory above the limit in bypass: the commands bounce, the data arrives |
//! | [`synchronous_polling`] | no interrupts, a synchronous event source that polls with the caller's pause |
//! | [`refuses_bad_transfers`] | transfers and settings the device cannot take are clear errors, nothing queued |
//! | [`interrupt_delivery`] | the seam's interrupt route: the raise register reaches the sink, a detached sink hears nothing |
//! | [`reset`] | function reset: registers answer, bus mastering off, routes dropped, interrupts deliverable again |

use crate::driver::{Delivery, Edu, EduOptions};
use crate::regs;
use crate::{EDU_BUFFER, EDU_DEVICE, EDU_VENDOR};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use dmakit::descriptor::{device_memory as device_memory_descriptor, BufferMemoryDescriptor};
use dmakit::descriptor::{BufferOptions, MemoryDescriptor};
use dmakit::device::{DmaView, PciFunction};
use dmakit::dma::{
    DmaCommand, DmaCompletion, DmaController, DmaEventSource, DmaStart, DmaTransfer, InterruptSink,
    IoSegment, PrepareOptions, SyncWait,
};
use dmakit::map::{mapped_read32, mapped_write32};
use dmakit::platform::{Platform, Width};
use dmakit::{Direction, Error, IoAddr, PhysAddr};

/// What a test returns: a line of detail, or why it failed.
pub type Outcome = Result<String, String>;

/// Pauses a settle takes (to show that something does *not* happen).
const SETTLE: u32 = 20;
/// Bytes of the round trips: two engine runs (2048 + 952).
const LEN: u64 = 3000;

/// Where a test runs.
pub struct Rig<'a, P: Platform + Clone + Send + Sync + 'static> {
    /// Memory and register accesses.
    pub platform: P,
    /// The `edu` function.
    pub function: Arc<dyn PciFunction>,
    /// The driver's options (the device's address bits above all).
    pub options: EduOptions,
    /// Called between polls while a test waits (a millisecond's sleep, a yield, nothing).
    pub pause: &'a dyn Fn(),
    /// Pauses a test waits at most for one event before it fails.
    pub patience: u64,
}

impl<'a, P: Platform + Clone + Send + Sync + 'static> Rig<'a, P> {
    /// A rig.
    pub fn new(
        platform: P,
        function: Arc<dyn PciFunction>,
        options: EduOptions,
        pause: &'a dyn Fn(),
        patience: u64,
    ) -> Self {
        Rig {
            platform,
            function,
            options,
            pause,
            patience,
        }
    }

    /// The same rig with other options.
    pub fn with_options(&self, options: EduOptions) -> Rig<'a, P> {
        Rig {
            platform: self.platform.clone(),
            function: self.function.clone(),
            options,
            pause: self.pause,
            patience: self.patience,
        }
    }

    /// Pauses until `done` is true, at most [`patience`](Self::patience) times; returns
    /// whether it became true.
    pub fn wait_until(&self, mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..self.patience {
            if done() {
                return true;
            }
            (self.pause)();
        }
        done()
    }

    fn settle(&self) {
        for _ in 0..SETTLE {
            (self.pause)();
        }
    }
}

impl<P: Platform + Clone + Send + Sync + 'static> fmt::Debug for Rig<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rig")
            .field("function", &self.function.address())
            .field("options", &self.options)
            .field("patience", &self.patience)
            .finish()
    }
}

/// Turns an error into the failure text.
fn e2s<E: fmt::Display>(what: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn check(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(why())
    }
}

/// The round trips' bytes.
fn pattern(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8 ^ 0x5a).collect()
}

/// A sink that counts.
#[derive(Debug, Default)]
struct CountingSink(AtomicU64);

impl CountingSink {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl InterruptSink for CountingSink {
    fn raise(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

type Events<P> = DmaEventSource<Edu<P>>;

/// A driver with an event source that collects completions.
struct Session<'r, 'a, P: Platform + Clone + Send + Sync + 'static> {
    rig: &'r Rig<'a, P>,
    edu: Arc<Edu<P>>,
    events: Arc<Events<P>>,
    got: Arc<dmakit::sync::Mutex<Vec<DmaCompletion>>>,
    delivery: Delivery,
    /// Interrupt signals seen by the last wait.
    seen: Cell<u64>,
}

impl<'r, 'a, P: Platform + Clone + Send + Sync + 'static> Session<'r, 'a, P> {
    fn open(rig: &'r Rig<'a, P>) -> Result<Self, String> {
        let edu = Arc::new(
            Edu::new(rig.platform.clone(), rig.function.clone(), rig.options)
                .map_err(e2s("edu driver"))?,
        );
        let got: Arc<dmakit::sync::Mutex<Vec<DmaCompletion>>> = Arc::default();
        let g = got.clone();
        let events = Arc::new(DmaEventSource::new(edu.clone(), move |c| g.lock().push(c)));
        let sink: Arc<dyn InterruptSink> = events.clone();
        let delivery = edu.connect(&sink).map_err(e2s("connect"))?;
        Ok(Session {
            rig,
            edu,
            events,
            got,
            delivery,
            seen: Cell::new(0),
        })
    }

    /// Waits until `n` completions have been delivered; returns them all. With an
    /// interrupt route the event source is polled only when it was signalled, so
    /// transfers that complete prove the interrupts arrived.
    fn wait(&self, n: usize) -> Result<Vec<DmaCompletion>, String> {
        let polling = self.delivery == Delivery::Polling;
        let arrived = self.rig.wait_until(|| {
            let signals = self.events.pending_interrupts();
            if polling || signals != self.seen.get() {
                self.seen.set(signals);
                self.events.poll();
            }
            self.got.lock().len() >= n
        });
        let done = self.got.lock().clone();
        check(arrived, || {
            format!(
                "{} of {n} completions after {} pauses ({:?}, {} interrupts, service errors {:?})",
                done.len(),
                self.rig.patience,
                self.delivery,
                self.edu.interrupts(),
                self.edu.service_errors()
            )
        })?;
        Ok(done)
    }

    /// Stops the controller and polls until nothing is outstanding, so memory can be
    /// given back. Best effort: it gives up after the rig's patience.
    fn quiesce(&self) {
        if self.edu.outstanding() == 0 {
            return;
        }
        let _ = self.edu.stop();
        self.rig.wait_until(|| {
            self.events.poll();
            self.edu.outstanding() == 0
        });
    }

    /// A prepared command for `md`, completed (after a quiesce) if dropped prepared.
    fn prepare(&self, md: Arc<dyn MemoryDescriptor>, len: u64) -> Result<Prepared<'_, P>, String> {
        prepare(&self.edu, md, len, self)
    }
}

/// Something that stops the device and drains it before memory is given back.
trait Quiesce {
    fn quiesce(&self);
}

impl<P: Platform + Clone + Send + Sync + 'static> Quiesce for Session<'_, '_, P> {
    fn quiesce(&self) {
        Session::quiesce(self)
    }
}

impl<F: Fn()> Quiesce for F {
    fn quiesce(&self) {
        self()
    }
}

impl<P: Platform + Clone + Send + Sync + 'static> Drop for Session<'_, '_, P> {
    fn drop(&mut self) {
        self.quiesce();
        let _ = self.edu.disconnect();
    }
}

/// A prepared command; dropped prepared (a test that failed half way), it quiesces the
/// device first and then completes, so no preparation outlives the test.
struct Prepared<'q, P: Platform + Clone + Send + Sync + 'static> {
    cmd: DmaCommand<P>,
    quiesce: &'q dyn Quiesce,
}

impl<P: Platform + Clone + Send + Sync + 'static> Prepared<'_, P> {
    fn segments(&self) -> Result<Vec<IoSegment>, String> {
        self.cmd
            .segments()
            .collect::<dmakit::Result<Vec<_>>>()
            .map_err(e2s("segments"))
    }

    fn complete(&mut self) -> Result<(), String> {
        self.cmd.complete().map_err(e2s("complete"))
    }
}

impl<P: Platform + Clone + Send + Sync + 'static> Drop for Prepared<'_, P> {
    fn drop(&mut self) {
        if self.cmd.prepare_count() > 0 {
            self.quiesce.quiesce();
            let _ = self.cmd.complete();
        }
    }
}

fn prepare<'q, P: Platform + Clone + Send + Sync + 'static>(
    edu: &Edu<P>,
    md: Arc<dyn MemoryDescriptor>,
    len: u64,
    quiesce: &'q dyn Quiesce,
) -> Result<Prepared<'q, P>, String> {
    let mut cmd = edu.command().map_err(e2s("command"))?;
    cmd.set_memory_descriptor(md)
        .map_err(e2s("set descriptor"))?;
    cmd.prepare(PrepareOptions::range(0, len))
        .map_err(e2s("prepare"))?;
    Ok(Prepared { cmd, quiesce })
}

fn window(len: u64) -> [IoSegment; 1] {
    [IoSegment {
        addr: IoAddr(EDU_BUFFER.0),
        len,
    }]
}

/// What a RAM → device → RAM round trip did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoundTrip {
    /// Bytes each way.
    pub bytes: u64,
    /// The first IO address of the source and of the destination.
    pub first: (u64, u64),
    /// The highest address the device was given.
    pub highest: u64,
    /// The driver's address limit.
    pub limit: u64,
    /// How completions arrived.
    pub delivery: Delivery,
    /// Interrupts the function raised.
    pub interrupts: u64,
    /// Engine runs.
    pub runs: u64,
    /// Whether a command went through a bounce buffer, and the bytes the pool copied.
    pub bounced: (bool, u64),
    /// The first byte that came back different, if any.
    pub mismatch: Option<usize>,
}

impl fmt::Display for RoundTrip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mismatch {
            None => write!(f, "{} bytes RAM -> edu -> RAM byte-exact", self.bytes)?,
            Some(at) => write!(f, "{} bytes, data differs from byte {at}", self.bytes)?,
        }
        write!(
            f,
            "; IO addresses src {:#x} dst {:#x}, highest {:#x} (limit {:#x}); {} runs, {:?} \
             with {} interrupts; 2 completions in order",
            self.first.0,
            self.first.1,
            self.highest,
            self.limit,
            self.runs,
            self.delivery,
            self.interrupts
        )?;
        if self.bounced.0 {
            write!(f, "; bounced ({} bytes copied)", self.bounced.1)?;
        }
        Ok(())
    }
}

/// The round trip itself, without judging the data.
fn transfer<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
) -> Result<RoundTrip, String> {
    let s = Session::open(rig)?;
    let data = pattern(LEN);
    let src = Arc::new(
        BufferMemoryDescriptor::with_bytes(rig.platform.clone(), &data, Direction::Out)
            .map_err(e2s("source buffer"))?,
    );
    let dst = Arc::new(
        BufferMemoryDescriptor::new(rig.platform.clone(), BufferOptions::new(LEN, Direction::In))
            .map_err(e2s("destination buffer"))?,
    );
    let mut cs = s.prepare(src, LEN)?;
    let mut cd = s.prepare(dst.clone(), LEN)?;
    let (sv, dv) = (cs.segments()?, cd.segments()?);
    let win = window(LEN);
    let t1 = s
        .events
        .start(&DmaTransfer {
            source: &sv,
            dest: &win,
        })
        .map_err(e2s("start RAM -> edu"))?;
    let t2 = s
        .events
        .start(&DmaTransfer {
            source: &win,
            dest: &dv,
        })
        .map_err(e2s("start edu -> RAM"))?;
    let done = s.wait(2)?;
    check(
        done.len() == 2 && done[0].ticket == t1 && done[1].ticket == t2,
        || format!("completions out of order: {done:?}"),
    )?;
    check(
        done.iter().all(|c| c.status.is_ok() && c.bytes == LEN),
        || format!("completions: {done:?}"),
    )?;
    let q = s.edu.query(t2);
    check(q == Ok(LEN), || format!("query({t2}) = {q:?}"))?;
    let bounced = cs.cmd.is_bounced() || cd.cmd.is_bounced();
    cd.complete()?;
    cs.complete()?;
    let mut back = vec![0u8; LEN as usize];
    dst.read(0, &mut back).map_err(e2s("read back"))?;
    let highest = sv
        .iter()
        .chain(dv.iter())
        .map(|g| g.addr.0.saturating_add(g.len.saturating_sub(1)))
        .max()
        .unwrap_or(0);
    Ok(RoundTrip {
        bytes: LEN,
        first: (
            sv.first().map_or(0, |g| g.addr.0),
            dv.first().map_or(0, |g| g.addr.0),
        ),
        highest,
        limit: s.edu.address_limit(),
        delivery: s.delivery,
        interrupts: s.edu.interrupts(),
        runs: s.edu.runs_done(),
        bounced: (bounced, s.edu.bounce_pool().stats().bounced_bytes),
        mismatch: back.iter().zip(&data).position(|(a, b)| a != b),
    })
}

/// Probes the function: IDs, identification, liveness, DMA view and limit, interrupts.
pub fn probe<P: Platform + Clone + Send + Sync + 'static>(rig: &Rig<'_, P>) -> Outcome {
    let edu = Edu::new(rig.platform.clone(), rig.function.clone(), rig.options)
        .map_err(e2s("edu driver"))?;
    let id = edu.id().map_err(e2s("identification"))?;
    check(id & 0xff == regs::ID_MAGIC, || format!("id {id:#x}"))?;
    let cmd = rig
        .function
        .config_read(0x04, Width::W16)
        .map_err(e2s("command register"))?;
    check(cmd & 0x4 != 0, || {
        format!("bus mastering is off after probe (command {cmd:#x})")
    })?;
    let view = match edu.dma_view() {
        DmaView::Mapped(_) => String::from("through an IOMMU"),
        DmaView::Bypass { max_address } => format!("bypass up to {max_address:#x}"),
    };
    Ok(format!(
        "{} version {}.{}: DMA {view}, limit {:#x}, interrupts {:?}",
        rig.function.address(),
        id >> 24,
        (id >> 16) & 0xff,
        edu.address_limit(),
        rig.function.interrupts()
    ))
}

/// BAR0 as IOKit's `IODeviceMemory`: the descriptor's one segment is the BAR, and
/// `mapped_read32` at its address reads the identification register; the liveness
/// register inverts.
pub fn device_memory<P: Platform + Clone + Send + Sync + 'static>(rig: &Rig<'_, P>) -> Outcome {
    let bar = rig.function.bar(0).map_err(e2s("BAR0"))?;
    let md = device_memory_descriptor(rig.platform.clone(), bar.base, bar.len)
        .map_err(e2s("device memory"))?;
    let seg = md.physical_segment(0).map_err(e2s("physical segment"))?;
    check(seg.addr == bar.base && seg.len == bar.len, || {
        format!("segment {:?}+{:#x} is not the BAR", seg.addr, seg.len)
    })?;
    let id = mapped_read32(&rig.platform, seg.addr).map_err(e2s("mapped_read32"))?;
    check(id & 0xff == regs::ID_MAGIC && id != u32::MAX, || {
        format!("id register {id:#x}")
    })?;
    let live = PhysAddr(seg.addr.0 + regs::LIVENESS);
    mapped_write32(&rig.platform, live, 0xa5a5_0f0f).map_err(e2s("write liveness"))?;
    let back = mapped_read32(&rig.platform, live).map_err(e2s("read liveness"))?;
    check(back == !0xa5a5_0f0f, || format!("liveness read {back:#x}"))?;
    Ok(format!(
        "BAR0 at bus {:#x} ({:#x} bytes) as device memory: id {id:#x}, liveness inverts",
        bar.base.0, bar.len
    ))
}

/// RAM → device → RAM, 3000 bytes (two engine runs each way), through the driver's DMA
/// commands and an event source: byte-exact, completions in ticket order, `query` agrees,
/// every address at or below the limit, and interrupts seen when the vector is routed.
pub fn round_trip<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
) -> Result<RoundTrip, String> {
    let r = transfer(rig)?;
    check(r.highest <= r.limit, || {
        format!("IO address {:#x} above the limit {:#x}", r.highest, r.limit)
    })?;
    check(r.mismatch.is_none(), || r.to_string())?;
    check(
        r.runs == 4 && (r.delivery == Delivery::Polling || r.interrupts >= 1),
        || format!("runs or interrupts: {r}"),
    )?;
    Ok(r)
}

/// The round trip with memory the device cannot reach in place (bypass, buffers above the
/// limit): the commands bounce below the limit and the data arrives. The caller arranges
/// the memory (a function that bypasses an IOMMU, RAM above its limit).
pub fn bounce_below_limit<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
) -> Result<RoundTrip, String> {
    let r = round_trip(rig)?;
    check(r.bounced.0 && r.bounced.1 > 0, || {
        format!("nothing bounced: {r}")
    })?;
    Ok(r)
}

/// A mapper that hands out IO addresses above the device's limit (the caller's setup): the
/// commands, which carry the limit, refuse them at prepare, and nothing is started.
pub fn spec_refuses_wide_iovas<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
) -> Outcome {
    match transfer(rig) {
        Err(e) if e.starts_with("prepare") && e.contains("the device's window") => Ok(e),
        Err(e) => Err(format!("wrong error: {e}")),
        Ok(r) => Err(format!(
            "prepared IO address {:#x} for a device limited to {:#x}",
            r.highest, r.limit
        )),
    }
}

/// Why the limit matters, shown by the device: the driver is told the device is wider
/// than its `device_bits` and the mapper hands out addresses above them. The device clamps
/// them (QEMU's `dma_mask`), reaches other IO addresses, and the data does not arrive.
/// (The caller checks its own evidence: IOMMU faults, the simulator's clamp counter.)
pub fn wide_iovas_miss<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
    device_bits: u32,
) -> Result<RoundTrip, String> {
    let device_limit = match device_bits {
        0..=63 => (1u64 << device_bits) - 1,
        _ => u64::MAX,
    };
    let r = transfer(rig)?;
    check(r.first.0 > device_limit && r.first.1 > device_limit, || {
        format!(
            "the mapper placed IO addresses {:#x}/{:#x} within {device_bits} bits anyway",
            r.first.0, r.first.1
        )
    })?;
    check(r.mismatch.is_some(), || {
        format!("the data arrived through clamped addresses? {r}")
    })?;
    Ok(r)
}

/// `stop` with one run in flight and two transfers queued: all three complete in ticket
/// order with [`Error::Aborted`] (the first after its run, or whole if the engine beat the
/// stop), `query` agrees with each, and a transfer started afterwards completes.
pub fn stop_in_order<P: Platform + Clone + Send + Sync + 'static>(rig: &Rig<'_, P>) -> Outcome {
    let s = Session::open(rig)?;
    let src = Arc::new(
        BufferMemoryDescriptor::with_bytes(
            rig.platform.clone(),
            &[0x3c; LEN as usize],
            Direction::Out,
        )
        .map_err(e2s("source buffer"))?,
    );
    let mut cs = s.prepare(src, LEN)?;
    let sv = cs.segments()?;
    let win = window(LEN);
    let to_device = DmaTransfer {
        source: &sv,
        dest: &win,
    };
    let tickets = (0..3)
        .map(|_| s.events.start(&to_device).map_err(e2s("start")))
        .collect::<Result<Vec<u64>, String>>()?;
    s.events.stop_dma_command().map_err(e2s("stop"))?;
    let done = s.wait(3)?;
    check(
        done.iter().map(|c| c.ticket).eq(tickets.iter().copied()),
        || format!("not in ticket order: {done:?}"),
    )?;
    let first = &done[0];
    check(
        matches!(first.status, Err(Error::Aborted { .. })) && first.bytes == 2048
            || first.status.is_ok() && first.bytes == LEN,
        || format!("in-flight transfer: {first:?}"),
    )?;
    check(
        done[1..]
            .iter()
            .all(|c| c.bytes == 0 && matches!(c.status, Err(Error::Aborted { .. }))),
        || format!("queued transfers: {:?}", &done[1..]),
    )?;
    for c in &done {
        let q = s.edu.query(c.ticket);
        check(q == Ok(c.bytes), || format!("query({}) = {q:?}", c.ticket))?;
    }
    let again = s
        .events
        .start(&to_device)
        .map_err(e2s("start after stop"))?;
    let after = s.wait(4)?;
    check(
        after[3].ticket == again && after[3].status.is_ok() && after[3].bytes == LEN,
        || format!("after stop: {:?}", after[3]),
    )?;
    cs.complete()?;
    Ok(format!(
        "in flight: {} bytes, {}; queued: {:?} aborted; a transfer after stop completes ({:?})",
        first.bytes,
        first
            .status
            .as_ref()
            .map_or_else(|e| e.to_string(), |()| String::from("ok")),
        done[1..].iter().map(|c| c.bytes).collect::<Vec<_>>(),
        s.delivery
    ))
}

/// No interrupts: a synchronous event source (IOKit's `IODMAEventSource` without a
/// completion action) whose start polls the driver, pausing with the rig's pause between
/// polls and giving up after its patience. RAM → device → RAM, byte-exact.
pub fn synchronous_polling<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
) -> Outcome {
    let edu = Arc::new(
        Edu::new(
            rig.platform.clone(),
            rig.function.clone(),
            rig.options.interrupts(false),
        )
        .map_err(e2s("edu driver"))?,
    );
    let events = Arc::new(DmaEventSource::synchronous(edu.clone()));
    let sink: Arc<dyn InterruptSink> = events.clone();
    let delivery = edu.connect(&sink).map_err(e2s("connect"))?;
    check(delivery == Delivery::Polling, || format!("{delivery:?}"))?;
    let quiesce = || {
        if edu.outstanding() > 0 {
            let _ = edu.stop();
            rig.wait_until(|| {
                events.poll();
                edu.outstanding() == 0
            });
        }
    };
    let data = pattern(LEN);
    let src = Arc::new(
        BufferMemoryDescriptor::with_bytes(rig.platform.clone(), &data, Direction::Out)
            .map_err(e2s("source buffer"))?,
    );
    let dst = Arc::new(
        BufferMemoryDescriptor::new(rig.platform.clone(), BufferOptions::new(LEN, Direction::In))
            .map_err(e2s("destination buffer"))?,
    );
    let mut cs = prepare(&edu, src, LEN, &quiesce)?;
    let mut cd = prepare(&edu, dst.clone(), LEN, &quiesce)?;
    let (sv, dv) = (cs.segments()?, cd.segments()?);
    let win = window(LEN);
    let mut polls = 0u64;
    for (what, t) in [
        (
            "RAM -> edu",
            DmaTransfer {
                source: &sv,
                dest: &win,
            },
        ),
        (
            "edu -> RAM",
            DmaTransfer {
                source: &win,
                dest: &dv,
            },
        ),
    ] {
        let mut pause = || {
            (rig.pause)();
            polls += 1;
            polls < rig.patience
        };
        match events.start_dma_command(&t, SyncWait::With(&mut pause)) {
            Ok(DmaStart::Completed(c)) if c.status.is_ok() && c.bytes == LEN => {}
            other => return Err(format!("{what}: {other:?}")),
        }
    }
    cd.complete()?;
    cs.complete()?;
    drop((cs, cd));
    let mut back = vec![0u8; LEN as usize];
    dst.read(0, &mut back).map_err(e2s("read back"))?;
    let _ = edu.disconnect();
    check(back == data, || {
        let at = back.iter().zip(&data).position(|(a, b)| a != b);
        format!("data differs from byte {at:?}")
    })?;
    Ok(format!(
        "{LEN} bytes RAM -> edu -> RAM byte-exact, two synchronous starts, {} runs, {polls} \
         pauses, {} interrupts",
        edu.runs_done(),
        edu.interrupts()
    ))
}

/// What the device cannot do is refused with a clear error and nothing queued: both
/// sides in the device buffer, neither, a run that reaches the buffer's last byte,
/// lengths that differ, RAM above the limit, a bad depth, a full queue, an unknown
/// ticket, options out of range. A good transfer still gets ticket 1 afterwards.
pub fn refuses_bad_transfers<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
) -> Outcome {
    refuses_bad_options(rig)?;
    let s = Session::open(rig)?;
    let refused = refuses_bad_segments(&s)?;
    check(s.edu.outstanding() == 0, || {
        "a refused transfer was queued".into()
    })?;
    queue_limits(rig, &s)?;
    Ok(format!(
        "{refused} bad transfers and 3 bad option sets refused, nothing queued; a full queue is \
         NoResources"
    ))
}

/// Options out of range (address bits, queue depth) are refused when the driver is made.
fn refuses_bad_options<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
) -> Result<(), String> {
    for (what, bad) in [
        ("8 address bits", rig.options.dma_bits(8)),
        ("a queue of 0", rig.options.fifo_depth(0)),
        ("a queue of 65", rig.options.fifo_depth(65)),
    ] {
        match Edu::new(rig.platform.clone(), rig.function.clone(), bad) {
            Err(Error::BadArgument { .. }) => {}
            other => return Err(format!("options with {what}: {other:?}")),
        }
    }
    Ok(())
}

/// Transfers the device cannot do are refused at start: both sides in the device buffer,
/// neither, a run to the buffer's last byte, lengths that differ, a piece past the end of
/// the address space, RAM above the limit. The number of cases.
fn refuses_bad_segments<P: Platform + Clone + Send + Sync + 'static>(
    s: &Session<'_, '_, P>,
) -> Result<usize, String> {
    let seg = |a: u64, len: u64| IoSegment {
        addr: IoAddr(a),
        len,
    };
    let ram = [seg(0x10_0000, 16)];
    let inside = [seg(EDU_BUFFER.0, 16)];
    let whole = [seg(EDU_BUFFER.0, EDU_BUFFER.1)];
    let ram_4k = [seg(0x10_0000, EDU_BUFFER.1)];
    let short = [seg(EDU_BUFFER.0, 8)];
    let past_end = [seg(u64::MAX - 7, 16)];
    let mut cases: Vec<(&str, DmaTransfer<'_>)> = vec![
        (
            "both sides in the device buffer",
            DmaTransfer {
                source: &inside,
                dest: &inside,
            },
        ),
        (
            "neither side in the device buffer",
            DmaTransfer {
                source: &ram,
                dest: &ram,
            },
        ),
        (
            "a run to the buffer's last byte",
            DmaTransfer {
                source: &ram_4k,
                dest: &whole,
            },
        ),
        (
            "lengths that differ",
            DmaTransfer {
                source: &ram,
                dest: &short,
            },
        ),
        (
            "a piece past the end of the address space",
            DmaTransfer {
                source: &past_end,
                dest: &inside,
            },
        ),
    ];
    let limit = s.edu.address_limit();
    let above = [seg(limit.wrapping_add(1) & !0xfff, 16)];
    if limit < u64::MAX - 0x1000 {
        cases.push((
            "RAM above the limit",
            DmaTransfer {
                source: &above,
                dest: &inside,
            },
        ));
    }
    for (what, t) in &cases {
        match s.events.start(t) {
            Err(Error::BadArgument { .. } | Error::Overflow { .. }) => {}
            other => return Err(format!("{what}: {other:?}")),
        }
    }
    Ok(cases.len())
}

/// An unknown ticket, the queue depth's limits, and a queue of one: a good transfer gets
/// ticket 1 (no refused start took one), a second start is `NoResources` while it runs.
fn queue_limits<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
    s: &Session<'_, '_, P>,
) -> Result<(), String> {
    let q = s.edu.query(1);
    check(matches!(q, Err(Error::BadArgument { .. })), || {
        format!("query of a ticket never given: {q:?}")
    })?;
    check(
        s.edu.set_fifo_depth(0).is_err()
            && s.edu.valid_fifo_depth(0) == 1
            && s.edu.valid_fifo_depth(1000) == crate::MAX_FIFO_DEPTH,
        || "fifo depth limits".into(),
    )?;
    s.edu.set_fifo_depth(1).map_err(e2s("fifo depth 1"))?;
    let src = Arc::new(
        BufferMemoryDescriptor::with_bytes(rig.platform.clone(), &[0x11; 64], Direction::Out)
            .map_err(e2s("source buffer"))?,
    );
    let mut cs = s.prepare(src, 64)?;
    let sv = cs.segments()?;
    let win = window(64);
    let t = DmaTransfer {
        source: &sv,
        dest: &win,
    };
    let t1 = s.events.start(&t).map_err(e2s("start"))?;
    check(t1 == 1, || {
        format!("first ticket {t1}: a refused start took one")
    })?;
    let full = s.events.start(&t);
    check(matches!(full, Err(Error::NoResources { .. })), || {
        format!("second start with a queue of 1: {full:?}")
    })?;
    let done = s.wait(1)?;
    check(
        done.len() == 1 && done[0].ticket == 1 && done[0].status.is_ok(),
        || format!("{done:?}"),
    )?;
    cs.complete()?;
    Ok(())
}

/// The seam's interrupt route, without the driver: IDs in configuration space, the raise
/// register's interrupt reaches the sink routed to vector 0 (bus mastering on: an MSI is
/// a memory write), and once the vector is disabled a raised interrupt does not.
pub fn interrupt_delivery<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
) -> Outcome {
    let f = &rig.function;
    let ids = f.config_read(0, Width::W32).map_err(e2s("config"))?;
    check(
        ids == (u32::from(EDU_DEVICE) << 16 | u32::from(EDU_VENDOR)),
        || format!("config IDs {ids:#x}"),
    )?;
    let regs = Regs::new(rig)?;
    let irqs = f.interrupts();
    check(irqs.kind.is_some() && irqs.vectors >= 1, || {
        format!("no interrupts: {irqs:?}")
    })?;
    let sink = Arc::new(CountingSink::default());
    f.enable_interrupt(0, sink.clone()).map_err(e2s("enable"))?;
    let result = (|| {
        f.set_bus_master(true).map_err(e2s("bus master"))?;
        regs.w32(regs::IRQ_RAISE, 0x40)?;
        let got = rig.wait_until(|| sink.get() >= 1);
        let status = regs.r32(regs::IRQ_STATUS)?;
        regs.w32(regs::IRQ_ACK, status)?;
        check(got && status & 0x40 != 0, || {
            format!("raised {} times, status {status:#x}", sink.get())
        })?;
        f.disable_interrupt(0).map_err(e2s("disable"))?;
        regs.w32(regs::IRQ_RAISE, 0x40)?;
        rig.settle();
        regs.w32(regs::IRQ_ACK, 0x40)?;
        rig.settle();
        check(sink.get() == 1, || {
            format!("a detached sink was raised: {}", sink.get())
        })?;
        Ok(format!(
            "{} ({:?} x {}): raise register -> sink (status {status:#x}); detached: not \
             delivered",
            f.address(),
            irqs.kind,
            irqs.vectors
        ))
    })();
    let _ = f.disable_interrupt(0);
    let _ = f.set_bus_master(false);
    result
}

/// What [`reset`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetOutcome {
    /// The function was reset and checked.
    Reset(String),
    /// The platform cannot reset it ([`Error::Unsupported`]); nothing changed.
    Refused(String),
}

/// A function reset: a refused one (Unsupported) changes nothing; after one that works,
/// BAR0 answers (identification, liveness), bus mastering is off, `routes_dropped` (the
/// caller's look at its platform's interrupt routes) agrees, and the interrupt is
/// delivered again once re-enabled.
pub fn reset<P: Platform + Clone + Send + Sync + 'static>(
    rig: &Rig<'_, P>,
    routes_dropped: &dyn Fn() -> Result<(), String>,
) -> Result<ResetOutcome, String> {
    let f = &rig.function;
    let regs = Regs::new(rig)?;
    let sink = Arc::new(CountingSink::default());
    f.enable_interrupt(0, sink.clone()).map_err(e2s("enable"))?;
    f.set_bus_master(true).map_err(e2s("bus master"))?;
    match f.reset() {
        Err(e @ Error::Unsupported { .. }) => {
            let _ = f.disable_interrupt(0);
            let _ = f.set_bus_master(false);
            return Ok(ResetOutcome::Refused(e.to_string()));
        }
        Err(e) => {
            let _ = f.disable_interrupt(0);
            let _ = f.set_bus_master(false);
            return Err(format!("reset: {e}"));
        }
        Ok(()) => {}
    }
    let result = (|| {
        let id = regs.r32(regs::ID)?;
        regs.w32(regs::LIVENESS, 0x0f0f_a5a5)?;
        let live = regs.r32(regs::LIVENESS)?;
        let cmd = f.config_read(0x04, Width::W16).map_err(e2s("command"))?;
        check(
            id & 0xff == regs::ID_MAGIC && live == !0x0f0f_a5a5 && cmd & 4 == 0,
            || format!("after reset: id {id:#x}, liveness {live:#x}, command {cmd:#x}"),
        )?;
        routes_dropped().map_err(|e| format!("after reset: {e}"))?;
        f.enable_interrupt(0, sink.clone())
            .map_err(e2s("enable after reset"))?;
        f.set_bus_master(true)
            .map_err(e2s("bus master after reset"))?;
        regs.w32(regs::IRQ_RAISE, 1)?;
        let got = rig.wait_until(|| sink.get() >= 1);
        let status = regs.r32(regs::IRQ_STATUS)?;
        regs.w32(regs::IRQ_ACK, status)?;
        check(got && sink.get() == 1, || {
            format!("after reset: sink raised {} times", sink.get())
        })?;
        Ok(ResetOutcome::Reset(format!(
            "{}: id {id:#x}, liveness inverts, command {cmd:#x}, interrupt delivered again",
            f.address()
        )))
    })();
    let _ = f.disable_interrupt(0);
    let _ = f.set_bus_master(false);
    result
}

/// BAR0's 32-bit registers through the platform.
struct Regs<'r, 'a, P: Platform + Clone + Send + Sync + 'static> {
    rig: &'r Rig<'a, P>,
    bar: dmakit::device::BarInfo,
}

impl<'r, 'a, P: Platform + Clone + Send + Sync + 'static> Regs<'r, 'a, P> {
    fn new(rig: &'r Rig<'a, P>) -> Result<Self, String> {
        let bar = rig.function.bar(0).map_err(e2s("BAR0"))?;
        Ok(Regs { rig, bar })
    }

    fn r32(&self, off: u64) -> Result<u32, String> {
        let a = self.bar.reg(off, Width::W32).map_err(e2s("register"))?;
        mapped_read32(&self.rig.platform, a).map_err(e2s("mapped_read32"))
    }

    fn w32(&self, off: u64, v: u32) -> Result<(), String> {
        let a = self.bar.reg(off, Width::W32).map_err(e2s("register"))?;
        mapped_write32(&self.rig.platform, a, v).map_err(e2s("mapped_write32"))
    }
}
