//! The ledger's hooks with the feature `dma-debug` off: empty, inlined away.

use super::PrepInfo;
use crate::descriptor::MemoryDescriptor;

#[inline(always)]
pub(crate) fn prepared(_info: PrepInfo, _md: &dyn MemoryDescriptor) {}

#[inline(always)]
pub(crate) fn completed(_command: u64) {}

#[inline(always)]
pub(crate) fn syncing(_command: u64, _on: bool) {}

#[inline(always)]
pub(crate) fn cpu_access(_leaf: usize, _offset: u64, _len: u64, _write: bool) {}

#[inline(always)]
pub(crate) fn record(
    _kind: super::ViolationKind,
    _command: u64,
    _detail: impl FnOnce() -> alloc_crate::string::String,
) {
}

#[inline(always)]
pub(crate) fn dropped(_command: u64) {}
