//! [`DmaBuffer`]: memory the controller reaches at one run of device addresses (queues,
//! PRP list pages, Identify data, or a caller's pre-mapped I/O buffer).
//!
//! A wired [`BufferMemoryDescriptor`] prepared by a [`DmaCommand`] for the function's
//! [`DmaView`]: through its IOMMU domain (the pages, wherever they are, get consecutive IO
//! addresses) or, bypassing one, allocated physically contiguous below the function's
//! address limit. CPU accesses go through [`write`](DmaBuffer::write) and
//! [`read`](DmaBuffer::read), which do the cache maintenance a non-coherent machine needs
//! (clean after the CPU writes, invalidate before it reads).
//!
//! The preparation ends when the buffer is dropped: drop it only once the controller can no
//! longer use it (its queue deleted, its command completed, or the controller disabled).

use alloc::sync::Arc;
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::device::DmaView;
use dmakit::dma::{DmaCommand, MappingMode, PrepareOptions, SegmentSpec};
use dmakit::platform::Platform;
use dmakit::{Direction, Error, Result};

/// A buffer and the device address of its first byte.
pub struct DmaBuffer<P: Platform + Clone + 'static> {
    buf: Arc<BufferMemoryDescriptor<P>>,
    cmd: DmaCommand<P>,
    addr: u64,
    len: u64,
    /// Whether CPU accesses need cache maintenance (never bounced: checked at creation).
    sync: bool,
}

impl<P: Platform + Clone + Send + Sync + 'static> DmaBuffer<P> {
    /// `len` bytes, zero-filled, that the function with `view` reaches at one run of device
    /// addresses, for the CPU and the device both ways.
    pub fn new(platform: &P, view: &DmaView, len: u64) -> Result<DmaBuffer<P>> {
        let builder = DmaCommand::builder(platform.clone());
        let (options, cmd) = match view {
            DmaView::Mapped(mapper) => (
                BufferOptions::new(len, Direction::InOut),
                builder
                    .spec(SegmentSpec::builder().build()?)
                    .mapper(mapper.clone())
                    .build()?,
            ),
            DmaView::Bypass { max_address } => {
                let spec = SegmentSpec::builder()
                    .window(0, *max_address)
                    .max_segments(1)
                    .build()?;
                let o = BufferOptions::for_spec(len, Direction::InOut, &spec).alignment(4096);
                (o, builder.spec(spec).mode(bypass_mode(platform)).build()?)
            }
        };
        let buf = Arc::new(BufferMemoryDescriptor::new(platform.clone(), options)?);
        let mut cmd = cmd;
        cmd.set_memory_descriptor(buf.clone())?;
        cmd.prepare(PrepareOptions::range(0, len))?;
        let b = DmaBuffer {
            buf,
            cmd,
            addr: 0,
            len,
            sync: true,
        };
        b.locate()
    }

    /// Finds the one segment; an error (which drops `self`, ending the preparation) if the
    /// command bounced or split the buffer.
    fn locate(mut self) -> Result<DmaBuffer<P>> {
        let mut segs = self.cmd.segments();
        let first = segs.next().transpose()?;
        let more = segs.next().is_some();
        drop(segs);
        match first {
            Some(s) if !more && s.len == self.len && !self.cmd.is_bounced() => {
                self.addr = s.addr.0;
                self.sync = self.cmd.maintains_caches();
                Ok(self)
            }
            _ => Err(Error::Internal {
                what: "NVMe queue memory: the DMA command did not give one unbounced segment",
            }),
        }
    }

    /// The device address of byte 0.
    pub fn device_addr(&self) -> u64 {
        self.addr
    }

    /// Bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it has no bytes (never: a buffer has at least one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The descriptor (to hand to a DMA command of your own, or to look at the bytes).
    pub fn descriptor(&self) -> Arc<dyn MemoryDescriptor> {
        self.buf.clone()
    }

    /// Writes `data` at `offset` and makes it visible to the device.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.buf.write(offset, data)?;
        if !self.sync {
            return Ok(());
        }
        self.cmd
            .synchronize_range(Direction::Out, offset, data.len() as u64)
    }

    /// Reads what the device wrote at `offset` into `out`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        if self.sync {
            self.cmd
                .synchronize_range(Direction::In, offset, out.len() as u64)?;
        }
        self.buf.read(offset, out)
    }

    /// Fills the whole buffer with `byte` (and makes it visible to the device).
    pub fn fill(&self, byte: u8) -> Result<()> {
        let page = [byte; 512];
        let mut at = 0;
        while at < self.len {
            let n = (self.len - at).min(page.len() as u64);
            self.buf.write(at, &page[..n as usize])?;
            at += n;
        }
        self.cmd.synchronize_range(Direction::Out, 0, self.len)
    }
}

/// Physical addresses, with cache maintenance where the platform's devices do not snoop.
pub(crate) fn bypass_mode<P: Platform>(platform: &P) -> MappingMode {
    if platform.dma_coherent() {
        MappingMode::Bypassed
    } else {
        MappingMode::NonCoherent
    }
}

/// Ends `cmd`'s preparation. A complete whose unmap the IOMMU refused leaves the command
/// prepared (the device may still reach the memory), so it is tried once more; a command
/// that still cannot complete is dropped prepared, which keeps its memory for good.
pub(crate) fn complete_command<P: Platform + Clone + 'static>(
    cmd: &mut DmaCommand<P>,
) -> Result<()> {
    match cmd.complete() {
        Err(_) if cmd.prepared().is_some() => cmd.complete(),
        r => r,
    }
}

impl<P: Platform + Clone + 'static> Drop for DmaBuffer<P> {
    fn drop(&mut self) {
        // Ends the preparation: unmaps the IO addresses and unwires. An error here has no
        // caller to go to; the dma-debug ledger records an unbalanced preparation.
        let _ = complete_command(&mut self.cmd);
    }
}

impl<P: Platform + Clone + 'static> core::fmt::Debug for DmaBuffer<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("device_addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .finish()
    }
}
