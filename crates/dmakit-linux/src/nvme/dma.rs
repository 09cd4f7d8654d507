//! Memory the controller reaches: a wired [`BufferMemoryDescriptor`] prepared by a mapped
//! [`DmaCommand`], so its pages are one run of IO addresses however scattered they are in
//! physical memory.

use crate::host::Host;
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{DmaCommand, SegmentFormat, SegmentSpec};
use dmakit::mapper::Mapper;
use dmakit::{Direction, Error, Result};
use std::sync::Arc;

/// A buffer and the IO address the device uses for it, until [`release`](Self::release).
///
/// Dropping it without `release` leaves the IO addresses mapped (a device may still use
/// them) until the mapper is dropped, which unmaps everything.
pub struct DmaBuffer {
    buf: Arc<BufferMemoryDescriptor<Arc<Host>>>,
    cmd: DmaCommand<Arc<Host>>,
    iova: u64,
}

impl DmaBuffer {
    /// `len` bytes (a whole number of pages is best), zero-filled, mapped through `mapper`
    /// for `direction`.
    pub fn new(
        host: &Arc<Host>,
        mapper: &Arc<dyn Mapper>,
        len: u64,
        direction: Direction,
    ) -> Result<DmaBuffer> {
        let buf = Arc::new(BufferMemoryDescriptor::new(
            host.clone(),
            BufferOptions::new(len, direction),
        )?);
        let spec = SegmentSpec::builder().build()?;
        let mut cmd = DmaCommand::builder(host.clone())
            .spec(spec)
            .mapper(mapper.clone())
            .build()?;
        cmd.set_memory_descriptor(buf.clone())?;
        cmd.prepare(PrepareOptions::range(0, len))?;
        let mut out = [0u8; 32];
        let mut off = 0;
        let n = cmd.gen_segments(&mut off, &mut out)?;
        let seg = SegmentFormat::Host64.read(&out, 0)?;
        if n != 1 || seg.len != len {
            return Err(Error::Internal {
                what: "a mapped DMA command did not give one IO segment for a buffer",
            });
        }
        Ok(DmaBuffer {
            buf,
            cmd,
            iova: seg.addr.0,
        })
    }

    /// The IO address of byte 0.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The descriptor.
    pub fn descriptor(&self) -> &Arc<BufferMemoryDescriptor<Arc<Host>>> {
        &self.buf
    }

    /// CPU read at `offset`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        self.buf.read(offset, out)
    }

    /// CPU write at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.buf.write(offset, data)
    }

    /// Completes the DMA command: the IO addresses are unmapped.
    pub fn release(mut self) -> Result<()> {
        self.cmd.complete()
    }
}

impl std::fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("iova", &self.iova)
            .field("len", &self.buf.capacity())
            .finish()
    }
}
