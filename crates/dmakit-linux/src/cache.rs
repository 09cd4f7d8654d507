//! [`CacheOps`] on the host: CPU cache maintenance with `clflushopt`/`clflush`.
//!
//! x86_64 keeps DMA coherent with the CPU caches in hardware (a device's reads snoop the
//! caches, its writes invalidate them), so [`dma_coherent`](CacheOps::dma_coherent) is
//! `true` there and drivers skip maintenance. The operations still work, for persistence
//! domains, for measuring, and for code that runs the same on non-coherent machines:
//!
//! * every line touching the range is written back and evicted with `clflushopt` when the
//!   CPU has it (CPUID), else `clflush`, and an `mfence` orders the flushes before later
//!   memory accesses;
//! * [`CacheOp::Invalidate`] is performed as a flush. x86 has no unprivileged way to discard
//!   a line without writing it back (`invd` is privileged and drops the *whole* cache), and
//!   discarding would lose dirty data of anything else sharing the first or last line.
//!   After a write-back-and-evict the cache holds no line of the range, which is exactly
//!   what an invalidate promises the reader that follows.
//!
//! The range must be memory the host knows (as for [`CpuAccess`](dmakit::platform::CpuAccess));
//! by physical address, RAM of the host's wired allocations. Other architectures:
//! [`Error::Unsupported`].

use crate::host::Host;
use crate::sys::Span;
use dmakit::addr::checked_end;
use dmakit::platform::{CacheOp, CacheOps, Task};
use dmakit::{Error, PhysAddr, Result, VirtAddr};

impl Host {
    /// Flushes the lines of `span`.
    #[cfg(target_arch = "x86_64")]
    fn flush(&self, span: &Span<'_>) -> Result<()> {
        span.flush_cache_lines(self.capabilities().clflushopt);
        Ok(())
    }

    /// No cache maintenance off x86_64 yet.
    #[cfg(not(target_arch = "x86_64"))]
    fn flush(&self, _span: &Span<'_>) -> Result<()> {
        Err(Error::Unsupported {
            what: "CPU cache maintenance from Linux userspace on this architecture",
        })
    }
}

impl CacheOps for Host {
    fn dma_coherent(&self) -> bool {
        cfg!(target_arch = "x86_64")
    }

    /// Flushes every line touching `[va, va + len)` (every `op` is a flush; see the module
    /// docs for why that is right for `Invalidate`).
    fn cache_virt(&self, op: CacheOp, task: Task, va: VirtAddr, len: u64) -> Result<()> {
        Self::check_task(task)?;
        // Clean, Invalidate and Flush all become write-back-and-evict (module docs).
        let _ = op;
        if len == 0 {
            return Ok(());
        }
        let s = self.lock();
        let span = s.cpu_span(va.0, len).ok_or(Error::NotMapped {
            what: "dmakit host memory (cache operation)",
            addr: va.0,
        })?;
        self.flush(&span)
    }

    /// Flushes every line touching `[pa, pa + len)`, which must be RAM of the host's wired
    /// allocations; resolved completely before anything is flushed.
    fn cache_phys(&self, op: CacheOp, pa: PhysAddr, len: u64) -> Result<()> {
        let _ = op;
        let end = checked_end(pa.0, len, "cache operation")?;
        let page = self.page();
        let s = self.lock();
        let mut spans = Vec::new();
        let mut a = pa.0;
        while a < end {
            let n = (page.bytes() - page.offset(a)).min(end - a);
            spans.push(s.ram_span(a, n, page).ok_or(Error::NotMapped {
                what: "host physical memory (not a wired dmakit allocation)",
                addr: a,
            })?);
            a += n;
        }
        spans.iter().try_for_each(|span| self.flush(span))
    }
}
