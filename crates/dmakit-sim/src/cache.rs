//! The CPU data-cache model.
//!
//! On a DMA-coherent machine (x86) devices snoop the CPU caches and nobody needs to think
//! about them. Many ARM SoCs are not coherent: a CPU store sits in a dirty cache line until
//! the line is *cleaned*, so a device reading DRAM sees the old bytes; and a CPU load of a
//! line that is still cached returns the old bytes after a device wrote DRAM, until the line
//! is *invalidated*. Drivers that forget either step corrupt data only on those machines.
//!
//! This model makes that visible. Lines are 64 bytes and, to be as hostile as possible, are
//! never evicted: a line stays cached (and stale, or dirty) until a cache operation touches
//! it. [`CacheMode`]s change the behaviour the way page attributes do, per physical range
//! ([`Machine::set_cache_mode`](crate::Machine::set_cache_mode)) or per virtual page of a
//! task (`VirtualMemory::set_cache_mode`, which `dmakit::map::set_processor_cache_mode`
//! uses, and the cache mode of a second mapping):
//!
//! | mode | CPU load | CPU store |
//! | --- | --- | --- |
//! | `CopyBack` (default) | cached | cached, dirty until cleaned |
//! | `WriteThrough` | cached | cached and written to DRAM at once |
//! | `Inhibit` | straight from DRAM | straight to DRAM |
//! | `WriteCombine` | straight from DRAM | straight to DRAM (combining is invisible here) |
//!
//! With a coherent machine the model holds no lines at all.
//!
//! Devices reach memory with [`Machine::device_read`](crate::Machine::device_read) and
//! [`Machine::device_write`](crate::Machine::device_write), which see DRAM only:
//!
//! ```
//! use dmakit::platform::{collect_runs, CacheOp, CacheOps, CpuAccess, PageRequest, PhysicalMemory, Task};
//! use dmakit_sim::MachineBuilder;
//!
//! let m = MachineBuilder::new().build()?; // non-coherent by default
//! let va = m.allocate_pages(0x1000, &PageRequest::WIRED)?;
//! let pa = collect_runs(&m, Task::KERNEL, va, 0x1000)?[0].addr;
//!
//! m.write_virt(Task::KERNEL, va, b"command")?;
//! let mut seen = [0u8; 7];
//! m.device_read(pa, &mut seen)?;
//! assert_eq!(seen, [0; 7]);                  // still in a dirty line
//! m.cache_virt(CacheOp::Clean, Task::KERNEL, va, 7)?;
//! m.device_read(pa, &mut seen)?;
//! assert_eq!(&seen, b"command");             // cleaned: the device sees it
//!
//! m.device_write(pa, b"status!")?;
//! m.read_virt(Task::KERNEL, va, &mut seen)?;
//! assert_eq!(&seen, b"command");             // the CPU still reads its cached line
//! m.cache_virt(CacheOp::Invalidate, Task::KERNEL, va, 7)?;
//! m.read_virt(Task::KERNEL, va, &mut seen)?;
//! assert_eq!(&seen, b"status!");             // invalidated: DRAM again
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::physical::PhysicalPool;
use dmakit::platform::CacheOp;
use std::collections::BTreeMap;

/// Bytes in one cache line.
pub const LINE: u64 = 64;

pub use dmakit::platform::CacheMode;

#[derive(Clone, Debug)]
struct Line {
    data: [u8; LINE as usize],
    dirty: bool,
}

/// Cached lines and the cache-mode map.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    coherent: bool,
    /// Cached lines by address, ordered so that an operation on a range visits only the
    /// lines it holds (not every line of a possibly huge range).
    lines: BTreeMap<u64, Line>,
    /// Range start → (end, mode) for ranges not in CopyBack mode.
    modes: BTreeMap<u64, (u64, CacheMode)>,
}

impl Cache {
    pub(crate) fn new(coherent: bool) -> Self {
        Cache {
            coherent,
            ..Cache::default()
        }
    }

    pub(crate) fn coherent(&self) -> bool {
        self.coherent
    }

    pub(crate) fn lines(&self) -> (u64, u64) {
        let dirty = self.lines.values().filter(|l| l.dirty).count() as u64;
        (self.lines.len() as u64, dirty)
    }

    /// The mode in force at `pa`.
    pub(crate) fn mode(&self, pa: u64) -> CacheMode {
        match self.modes.range(..=pa).next_back() {
            Some((_, &(end, mode))) if pa < end => mode,
            _ => CacheMode::CopyBack,
        }
    }

    /// Sets the mode of `[pa, pa + len)`. The range's lines are flushed first, as an OS does
    /// when it changes page attributes.
    pub(crate) fn set_mode(&mut self, pa: u64, len: u64, mode: CacheMode, dram: &mut PhysicalPool) {
        self.op(CacheOp::Flush, pa, len, dram);
        let end = pa + len;
        // Cut existing ranges that overlap [pa, end).
        let overlapping: Vec<(u64, u64, CacheMode)> = self
            .modes
            .range(..end)
            .filter(|(_, &(e, _))| e > pa)
            .map(|(&s, &(e, m))| (s, e, m))
            .collect();
        for (s, e, m) in overlapping {
            self.modes.remove(&s);
            if s < pa {
                self.modes.insert(s, (pa, m));
            }
            if e > end {
                self.modes.insert(end, (e, m));
            }
        }
        if mode != CacheMode::CopyBack {
            self.modes.insert(pa, (end, mode));
        }
    }

    /// A CPU load, through a mapping of cache mode `mode` (`None`: the range's mode).
    pub(crate) fn read(
        &mut self,
        pa: u64,
        buf: &mut [u8],
        dram: &PhysicalPool,
        mode: Option<CacheMode>,
    ) {
        if self.coherent {
            return dram.dram_read(pa, buf);
        }
        self.each_line(pa, buf.len(), |this, line, off, range| {
            match mode.unwrap_or_else(|| this.mode(line)) {
                CacheMode::Inhibit | CacheMode::WriteCombine => {
                    if let Some(l) = this.lines.get(&line) {
                        // A line cached before the mode changed is still served.
                        let n = range.end - range.start;
                        buf[range].copy_from_slice(&l.data[off..off + n]);
                    } else {
                        dram.dram_read(line + off as u64, &mut buf[range]);
                    }
                }
                CacheMode::CopyBack | CacheMode::WriteThrough => {
                    let l = this.fill(line, dram);
                    let n = range.end - range.start;
                    buf[range].copy_from_slice(&l.data[off..off + n]);
                }
            }
        });
    }

    /// A CPU store, through a mapping of cache mode `mode` (`None`: the range's mode).
    pub(crate) fn write(
        &mut self,
        pa: u64,
        data: &[u8],
        dram: &mut PhysicalPool,
        mode: Option<CacheMode>,
    ) {
        if self.coherent {
            return dram.dram_write(pa, data);
        }
        self.each_line(pa, data.len(), |this, line, off, range| {
            let n = range.end - range.start;
            match mode.unwrap_or_else(|| this.mode(line)) {
                CacheMode::Inhibit | CacheMode::WriteCombine => {
                    this.lines.remove(&line);
                    dram.dram_write(line + off as u64, &data[range]);
                }
                CacheMode::WriteThrough => {
                    let l = this.fill(line, dram);
                    l.data[off..off + n].copy_from_slice(&data[range.clone()]);
                    dram.dram_write(line + off as u64, &data[range]);
                }
                CacheMode::CopyBack => {
                    let l = this.fill(line, dram);
                    l.data[off..off + n].copy_from_slice(&data[range]);
                    l.dirty = true;
                }
            }
        });
    }

    /// Applies a cache operation to every line touching `[pa, pa + len)`.
    pub(crate) fn op(&mut self, op: CacheOp, pa: u64, len: u64, dram: &mut PhysicalPool) {
        if self.coherent {
            return;
        }
        for line in self.cached_in(pa, len) {
            if let Some(l) = self.lines.get_mut(&line) {
                if l.dirty && matches!(op, CacheOp::Clean | CacheOp::Flush) {
                    dram.dram_write(line, &l.data);
                    l.dirty = false;
                }
                if matches!(op, CacheOp::Invalidate | CacheOp::Flush) {
                    self.lines.remove(&line);
                }
            }
        }
    }

    /// Drops every line of `[pa, pa + len)` without writing back (the page was freed).
    pub(crate) fn forget(&mut self, pa: u64, len: u64) {
        for line in self.cached_in(pa, len) {
            self.lines.remove(&line);
        }
    }

    /// The cached lines touching `[pa, pa + len)`, in address order.
    fn cached_in(&self, pa: u64, len: u64) -> Vec<u64> {
        if len == 0 {
            return Vec::new();
        }
        let first = pa & !(LINE - 1);
        let end = pa.saturating_add(len);
        self.lines.range(first..end).map(|(&a, _)| a).collect()
    }

    fn fill(&mut self, line: u64, dram: &PhysicalPool) -> &mut Line {
        self.lines.entry(line).or_insert_with(|| {
            let mut data = [0u8; LINE as usize];
            dram.dram_read(line, &mut data);
            Line { data, dirty: false }
        })
    }

    fn each_line(
        &mut self,
        pa: u64,
        len: usize,
        mut f: impl FnMut(&mut Self, u64, usize, std::ops::Range<usize>),
    ) {
        let mut done = 0usize;
        while done < len {
            let a = pa + done as u64;
            let line = a & !(LINE - 1);
            let off = (a - line) as usize;
            let n = (LINE as usize - off).min(len - done);
            f(self, line, off, done..done + n);
            done += n;
        }
    }
}
