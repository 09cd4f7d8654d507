//! The ledger itself (feature `dma-debug`): live preparations and recorded violations.
//!
//! One global table behind a spin lock. A preparation is registered with the *leaves* its
//! range covers (the general descriptors whose memory it is, found through
//! [`MemoryDescriptor::leaves`]), so a CPU copy through any descriptor over the same memory,
//! a sub-descriptor or a multi-descriptor part, is seen. A command's own copies (bounce
//! synchronization) run inside a `syncing` window and are not violations.

use super::{PrepInfo, ViolationKind};
use crate::descriptor::{LeafRange, MemoryDescriptor};
use alloc_crate::string::String;
use alloc_crate::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

/// One recorded violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub kind: ViolationKind,
    /// The command involved (its [`debug_id`](crate::dma::DmaCommand::debug_id)), or 0.
    pub command: u64,
    /// What, where and how much.
    pub detail: String,
}

/// A preparation that has not completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outstanding {
    /// The command.
    pub command: u64,
    /// The device (quarantine) the command belongs to, or 0.
    pub device: u64,
    /// Prepared offset in the descriptor.
    pub offset: u64,
    /// Prepared length.
    pub length: u64,
    /// Direction of the transfer.
    pub direction: crate::Direction,
    /// How the device reaches it: "direct", "bounced", "mapped" or "mapped+bounced".
    pub route: &'static str,
    /// Bounce bytes or IO-space bytes the preparation holds.
    pub held_bytes: u64,
    /// Whether the command was dropped while prepared (its memory waits in a quarantine
    /// or was leaked on purpose).
    pub dropped: bool,
}

struct Entry {
    info: PrepInfo,
    leaves: Vec<LeafRange>,
    syncing: bool,
    dropped: bool,
}

struct State {
    live: Vec<Entry>,
    violations: Vec<Violation>,
}

static STATE: crate::sync::Mutex<State> = crate::sync::Mutex::new(State {
    live: Vec::new(),
    violations: Vec::new(),
});
/// Live entries, read without the lock so CPU copies cost one load when nothing is prepared.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Every violation recorded so far, oldest first.
pub fn violations() -> Vec<Violation> {
    STATE.lock().violations.clone()
}

/// The violations that name `command`.
pub fn violations_of(command: u64) -> Vec<Violation> {
    STATE
        .lock()
        .violations
        .iter()
        .filter(|v| v.command == command)
        .cloned()
        .collect()
}

/// Live preparations of `device` (0: of commands without a device).
pub fn outstanding(device: u64) -> Vec<Outstanding> {
    STATE
        .lock()
        .live
        .iter()
        .filter(|e| e.info.device == device)
        .map(|e| Outstanding {
            command: e.info.command,
            device: e.info.device,
            offset: e.info.offset,
            length: e.info.length,
            direction: e.info.direction,
            route: e.info.route,
            held_bytes: e.info.held_bytes,
            dropped: e.dropped,
        })
        .collect()
}

pub(crate) fn record(kind: ViolationKind, command: u64, detail: impl FnOnce() -> String) {
    let v = Violation {
        kind,
        command,
        detail: detail(),
    };
    STATE.lock().violations.push(v);
}

pub(crate) fn prepared(info: PrepInfo, md: &dyn MemoryDescriptor) {
    let mut leaves = Vec::new();
    md.leaves(info.offset, info.length, &mut |l| leaves.push(l));
    let mut s = STATE.lock();
    s.live.push(Entry {
        info,
        leaves,
        syncing: false,
        dropped: false,
    });
    LIVE.store(s.live.len(), Ordering::Release);
}

pub(crate) fn completed(command: u64) {
    let mut s = STATE.lock();
    s.live.retain(|e| e.info.command != command);
    LIVE.store(s.live.len(), Ordering::Release);
}

pub(crate) fn dropped(command: u64) {
    let mut s = STATE.lock();
    if let Some(e) = s.live.iter_mut().find(|e| e.info.command == command) {
        e.dropped = true;
    }
}

pub(crate) fn syncing(command: u64, on: bool) {
    let mut s = STATE.lock();
    if let Some(e) = s.live.iter_mut().find(|e| e.info.command == command) {
        e.syncing = on;
    }
}

pub(crate) fn cpu_access(leaf: usize, offset: u64, len: u64, write: bool) {
    if len == 0 || LIVE.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut s = STATE.lock();
    let hit = s.live.iter().find(|e| {
        !e.syncing
            && e.leaves
                .iter()
                .any(|l| l.id == leaf && offset < l.offset + l.len && l.offset < offset + len)
    });
    if let Some(e) = hit {
        let v = Violation {
            kind: ViolationKind::CpuAccess,
            command: e.info.command,
            detail: alloc_crate::format!(
                "CPU {} of {len} bytes at offset {offset:#x} of a descriptor whose memory a device owns \
                 (prepared {:?} at {:#x}+{:#x}, {}); synchronize first or complete the transfer",
                if write { "write" } else { "read" },
                e.info.direction,
                e.info.offset,
                e.info.length,
                e.info.route,
            ),
        };
        s.violations.push(v);
    }
}
