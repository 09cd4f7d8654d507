//! DriverKit's IODMACommand: [`DkDmaCommand`] over a [`DmaCommand`].

use super::DkMemoryOptions;
use crate::descriptor::{MemoryDescriptor, PrepOwner};
use crate::dma::{DmaCommand, IoSegment, PrepareOptions, SegmentFormat, SegmentSpec};
use crate::mapper::Mapper;
use crate::platform::{CacheOp, Platform};
use crate::{Error, Result};
use alloc_crate::sync::Arc;

/// Most segments [`DkDmaCommand::prepare_for_dma`] writes (the size of DriverKit's
/// segment array).
pub const MAX_SEGMENTS: usize = 32;

/// What a device can address (DriverKit's `IODMACommandSpecification`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DkDmaSpec {
    /// Address lines the device drives (`maxAddressBits`): 0 or 64 and above for no limit,
    /// at most 255.
    pub max_address_bits: u64,
}

impl DkDmaSpec {
    /// A device with `max_address_bits` address lines.
    pub const fn new(max_address_bits: u64) -> Self {
        DkDmaSpec { max_address_bits }
    }
}

/// The operation of [`DkDmaCommand::perform_operation`] (DriverKit's
/// `kIODMACommandPerformOperationOption*` word): exactly one of read, write or zero.
///
/// It holds any bits; the call checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DkPerformOptions(u64);

impl DkPerformOptions {
    /// kIODMACommandPerformOperationOptionRead: copy from the DMA memory into `data`.
    pub const READ: Self = DkPerformOptions(1);
    /// kIODMACommandPerformOperationOptionWrite: copy from `data` into the DMA memory.
    pub const WRITE: Self = DkPerformOptions(2);
    /// kIODMACommandPerformOperationOptionZero: write zeros into the DMA memory.
    pub const ZERO: Self = DkPerformOptions(4);

    /// The option word `bits`, every bit kept.
    pub const fn from_bits(bits: u64) -> Self {
        DkPerformOptions(bits)
    }

    /// The option word.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

impl core::ops::BitOr for DkPerformOptions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        DkPerformOptions(self.0 | rhs.0)
    }
}

/// DriverKit's IODMACommand: a [`DmaCommand`] behind a lock of its own, driven with
/// DriverKit's calls.
///
/// Every call takes `&self` and runs under the command's lock, as DriverKit's kernel side
/// does, so one command can be shared (in an `Arc`) between the code that prepares and the
/// code that completes. The command is mapped through the device's IOMMU when
/// [`create`](Self::create) is given its [`Mapper`], and physical otherwise; it never
/// bounces (it has no bounce pool), as DriverKit's header promises: memory the device
/// cannot reach is an error at [`prepare_for_dma`](Self::prepare_for_dma). (DriverKit's
/// kernel code would bounce such memory for a command with no mapper at all, a case its
/// platforms, which put devices behind an IOMMU, do not have.)
///
/// A command dropped while prepared keeps the memory wired and its IO addresses mapped
/// for good, as [`DmaCommand`] does: the device may still be using them.
pub struct DkDmaCommand<P: Platform + Clone + 'static> {
    cmd: crate::sync::Mutex<DmaCommand<P>>,
    owner: PrepOwner,
    /// For [`perform_operation`](Self::perform_operation)'s writes, by physical address.
    platform: P,
}

impl<P: Platform + Clone + 'static> DkDmaCommand<P> {
    /// A command for a device that addresses `spec.max_address_bits` bits, through
    /// `mapper` (the device's IOMMU) or, without one, by physical address (DriverKit
    /// `IODMACommand::Create(device, options, &spec, &command)`). Segments are 64-bit
    /// ([`SegmentFormat::Host64`]), with no segment or transfer size limit and no
    /// alignment.
    ///
    /// `options` other than 0 (kIODMACommandCreateNoOptions) and more than 255 address bits
    /// are [`Error::BadArgument`]; from 1 to fewer than the platform's page shift (11 with
    /// 4 KiB pages, 13 with 16 KiB pages) is [`Error::NoMemory`], which is how DriverKit
    /// reports the kernel refusing a device that cannot address one page. 0, or 64 and
    /// more, is no limit.
    ///
    /// Without `mapper` the command uses physical addresses. IOKit's kernel side falls
    /// back to the system mapper for a device that has no IOMMU of its own; to do the same,
    /// pass the system mapper here
    /// ([`MapperRegistry::system_mapper`](crate::mapper::MapperRegistry::system_mapper)).
    pub fn create(
        platform: P,
        mapper: Option<Arc<dyn Mapper>>,
        options: u64,
        spec: DkDmaSpec,
    ) -> Result<Self> {
        if options != 0 {
            return Err(Error::BadArgument {
                what: "DriverKit IODMACommand::Create: options (only 0 is defined)",
                value: options,
            });
        }
        let bits = spec.max_address_bits;
        if bits > 255 {
            return Err(Error::BadArgument {
                what: "DriverKit IODMACommand::Create: maxAddressBits above 255",
                value: bits,
            });
        }
        let refused = |what| Error::NoMemory {
            what,
            requested: bits,
            available: 0,
        };
        let page_shift = u64::from(platform.page_size().shift());
        if (1..page_shift).contains(&bits) {
            return Err(refused(
                "DriverKit IODMACommand::Create: the kernel refuses fewer address bits than the page shift (value: the bits)",
            ));
        }
        let segment_spec = SegmentSpec::builder()
            .address_bits(bits.min(64) as u32)
            .build()
            .map_err(|_| refused("DriverKit IODMACommand::Create: the device's spec"))?;
        let mut builder = DmaCommand::builder(platform.clone())
            .spec(segment_spec)
            .format(SegmentFormat::Host64);
        if let Some(m) = mapper {
            builder = builder.mapper(m);
        }
        let cmd = builder.build()?;
        Ok(DkDmaCommand {
            owner: cmd.prep_owner(),
            cmd: crate::sync::Mutex::new(cmd),
            platform,
        })
    }

    /// The owner the command's preparations of a descriptor are held under: only the
    /// command ([`complete_dma`](Self::complete_dma)) can end them.
    pub fn prep_owner(&self) -> PrepOwner {
        self.owner
    }

    /// Whether a transfer is prepared.
    pub fn is_prepared(&self) -> bool {
        self.cmd.lock().prepared().is_some()
    }

    /// Prepares `[offset, offset + length)` of `md` for the device and writes its segments
    /// into `segments` (DriverKit `IODMACommand::PrepareForDMA(options, md, offset, length,
    /// &flags, &count, segments)`); returns the flags and the segment count.
    ///
    /// The flags say which way the device may move data: [`DkMemoryOptions::DIRECTION_OUT`]
    /// if `md`'s direction lets it read, with [`DkMemoryOptions::DIRECTION_IN`] if it lets
    /// it write. A `length` of 0 means from `offset` to the end of `md` (DriverKit's kernel
    /// takes `md`'s whole length from `offset`, which runs past the end unless `offset` is
    /// 0).
    ///
    /// Under the command's lock, as DriverKit: `md` is prepared (for the command, in its
    /// own direction); then attached to the command, which is [`Error::Busy`] while the
    /// command is prepared (another descriptor or the same: complete it first), undoing
    /// the preparation; then the command is prepared for the range; then its segments are
    /// generated. A failure at any step undoes the ones before: nothing stays prepared or
    /// attached.
    ///
    /// **Unlike DriverKit, the segment list is never truncated.** A transfer that needs
    /// more segments than `segments` holds is [`Error::MessageTooLarge`], naming the first
    /// offset in `md` the array could not describe, and nothing stays prepared (DriverKit
    /// reports success with the segments that fit). Pass a larger array (at most
    /// [`MAX_SEGMENTS`]), or use a [`DmaCommand`] and produce the segments in pieces.
    ///
    /// Errors also, in DriverKit's order: `options` other than 0, or `segments` longer
    /// than [`MAX_SEGMENTS`] ([`Error::BadArgument`], before anything is prepared);
    /// whatever preparing `md` refuses; `Busy`; whatever preparing the command refuses (a
    /// range outside `md`; memory the device cannot reach without a bounce, which
    /// DriverKit never does); then `segments` empty (`BadArgument`, as DriverKit checks
    /// the count when it generates the segments: a prepared command refuses another
    /// descriptor with `Busy` whatever the count).
    pub fn prepare_for_dma(
        &self,
        options: u64,
        md: &Arc<dyn MemoryDescriptor>,
        offset: u64,
        length: u64,
        segments: &mut [IoSegment],
    ) -> Result<(DkMemoryOptions, usize)> {
        check_prepare_arguments(options, segments.len())?;
        let mut cmd = self.cmd.lock();
        let direction = md.direction();
        md.prepare_for(self.owner, direction)?;
        // From here on, every failure gives the descriptor's preparation back.
        let result = prepare_command(&mut cmd, md, offset, length).and_then(|()| {
            fill_segments(&cmd, segments, offset).inspect_err(|_| {
                let _ = cmd.complete_and_clear();
            })
        });
        match result {
            Ok(count) => Ok((memory_flags(direction), count)),
            Err(e) => {
                let _ = md.complete_for(self.owner);
                Err(e)
            }
        }
    }

    /// Ends the transfer (DriverKit `IODMACommand::CompleteDMA(options)`): the command is
    /// completed and the descriptor detached, then the descriptor's preparation for the
    /// command ends. `options` other than 0 are [`Error::BadArgument`]; not prepared is
    /// [`Error::NotReady`]. The first error is returned after everything is released.
    pub fn complete_dma(&self, options: u64) -> Result<()> {
        if options != 0 {
            return Err(Error::BadArgument {
                what: "DriverKit CompleteDMA: options (only 0 is defined)",
                value: options,
            });
        }
        let mut cmd = self.cmd.lock();
        let md = match (cmd.prepared(), cmd.memory_descriptor()) {
            (Some(_), Some(md)) => md.clone(),
            _ => {
                return Err(Error::NotReady {
                    what: "DriverKit CompleteDMA on a DMA command that is not prepared",
                    addr: 0,
                })
            }
        };
        let done = cmd.complete_and_clear();
        let released = md.complete_for(self.owner);
        done.and(released)
    }

    /// The prepared offset, length and descriptor (DriverKit
    /// `IODMACommand::GetPreparation(&offset, &length, &memory)`); not prepared is
    /// [`Error::NotReady`].
    pub fn get_preparation(&self) -> Result<(u64, u64, Arc<dyn MemoryDescriptor>)> {
        let cmd = self.cmd.lock();
        let (offset, length) = cmd.prepared_offset_and_length()?;
        let md = cmd.memory_descriptor().cloned().ok_or(Error::Internal {
            what: "prepared DMA command without a descriptor",
        })?;
        Ok((offset, length, md))
    }

    /// Copies between the memory the device reaches and `data`, or zeroes it (DriverKit
    /// `IODMACommand::PerformOperation(options, dmaOffset, length, dataOffset, data)`).
    /// `dma_offset` is relative to the prepared offset.
    ///
    /// * [`DkPerformOptions::READ`]: `length` bytes from `dma_offset` of the DMA memory
    ///   into `data` at `data_offset`;
    /// * [`DkPerformOptions::WRITE`]: `length` bytes of `data` from `data_offset` into the
    ///   DMA memory at `dma_offset`;
    /// * [`DkPerformOptions::ZERO`]: `length` zeros into the DMA memory at `dma_offset`
    ///   (`data` is not read).
    ///
    /// Checked in DriverKit's order: option bits other than read, write and zero
    /// ([`Error::BadArgument`]); not prepared ([`Error::NotReady`], so an option word of 0
    /// or of two operations on a command that is not prepared is `NotReady`); `length`
    /// above the attached descriptor's length (`BadArgument`); `length` above 4 GiB − 1,
    /// which DriverKit's staging buffer cannot hold, or a staging buffer that cannot be
    /// allocated ([`Error::NoMemory`]); an option word that is not exactly one operation
    /// (`BadArgument`); for read and write, no `data` or `length` above its length
    /// (`BadArgument`).
    ///
    /// The bytes go through a buffer of `length` bytes, as in DriverKit, so a copy that
    /// falls short is [`Error::Underrun`] with what it leaves behind as DriverKit leaves
    /// it: a write whose source range does not lie within `data` writes nothing to the DMA
    /// memory, and a read that runs past the end of the preparation writes nothing to
    /// `data` (`done` 0); a read whose destination range does not lie within `data`
    /// writes none of it (descriptor copies are all or nothing); only the copy into the
    /// DMA memory (write and zero) stops at the end of the preparation with the bytes
    /// before it done (`done` counts them). The DMA memory is written by physical address,
    /// as DriverKit's kernel side writes it, so memory prepared read-only (a descriptor
    /// whose direction is `Out`: the device only reads it) is written too: filling an
    /// `Out` transfer from a bounce buffer of the driver's is what the call is for; and
    /// what it writes is flushed from the CPU's caches, so a device that is not coherent
    /// with them sees it at once.
    pub fn perform_operation(
        &self,
        options: DkPerformOptions,
        dma_offset: u64,
        length: u64,
        data_offset: u64,
        data: Option<&dyn MemoryDescriptor>,
    ) -> Result<()> {
        let op = options.bits();
        if op & !(DkPerformOptions::READ.0 | DkPerformOptions::WRITE.0 | DkPerformOptions::ZERO.0)
            != 0
        {
            return Err(Error::BadArgument {
                what: "DriverKit PerformOperation: option bits other than read (1), write (2) and zero (4)",
                value: op,
            });
        }
        let cmd = self.cmd.lock();
        let (prepared, md) = match (cmd.prepared(), cmd.memory_descriptor()) {
            (Some(p), Some(md)) => (p, md.clone()),
            _ => {
                return Err(Error::NotReady {
                    what: "DriverKit PerformOperation on a DMA command that is not prepared",
                    addr: 0,
                })
            }
        };
        if length > md.length() {
            return Err(Error::BadArgument {
                what: "DriverKit PerformOperation: length above the attached descriptor's length",
                value: length,
            });
        }
        let mut buffer = staging_buffer(length)?;
        let short = |done: usize| Error::Underrun {
            what: "DriverKit PerformOperation: a copy fell short",
            done: done as u64,
            requested: length,
        };
        let n = buffer.len();
        let (wanted, done) = match op {
            4 => (n, self.write_dma(&*md, prepared, dma_offset, &buffer)),
            1 | 2 => {
                let data = data_for(op, length, data)?;
                let got = if op == 2 {
                    data.read_bytes(data_offset, &mut buffer)
                } else {
                    cmd.read_bytes(dma_offset, &mut buffer)
                };
                if got < n {
                    return Err(short(0));
                }
                let put = if op == 2 {
                    self.write_dma(&*md, prepared, dma_offset, &buffer)
                } else {
                    data.write_bytes(data_offset, &buffer)
                };
                (got, put)
            }
            _ => {
                return Err(Error::BadArgument {
                    what: "DriverKit PerformOperation: options must be exactly one of read (1), write (2) or zero (4)",
                    value: op,
                })
            }
        };
        if done < wanted {
            return Err(short(done));
        }
        Ok(())
    }
}

impl<P: Platform + Clone + 'static> DkDmaCommand<P> {
    /// Writes `bytes` at `dma_offset` of the preparation `(offset, length)` of `md`, by
    /// physical address as IOKit's `IODMACommand::writeBytes` does (so memory prepared
    /// read-only, for a device that only reads it, is written too) and flushing what it
    /// wrote from the CPU's caches on a platform that is not DMA-coherent (as that copy
    /// does), at most to the end of the preparation; returns the bytes written. A
    /// DriverKit command never bounces, so the memory the device reaches is `md`'s own.
    fn write_dma(
        &self,
        md: &dyn MemoryDescriptor,
        (offset, length): (u64, u64),
        dma_offset: u64,
        bytes: &[u8],
    ) -> usize {
        let room = length.saturating_sub(dma_offset);
        let n = (bytes.len() as u64).min(room) as usize;
        let mut done = 0usize;
        while done < n {
            let Some(at) = offset
                .checked_add(dma_offset)
                .and_then(|a| a.checked_add(done as u64))
            else {
                break;
            };
            let Ok(seg) = md.physical_segment(at) else {
                break;
            };
            let k = seg.len.min((n - done) as u64) as usize;
            if k == 0
                || self
                    .platform
                    .write_phys(seg.addr, &bytes[done..done + k])
                    .is_err()
            {
                break;
            }
            // The kernel's copy flushes what it wrote, so the device sees it at once.
            if !self.platform.dma_coherent()
                && self
                    .platform
                    .cache_phys(CacheOp::Flush, seg.addr, k as u64)
                    .is_err()
            {
                break;
            }
            done += k;
        }
        done
    }
}

impl<P: Platform + Clone + 'static> core::fmt::Debug for DkDmaCommand<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut d = f.debug_struct("DkDmaCommand");
        match self.cmd.try_lock() {
            Some(cmd) => d.field("command", &*cmd),
            None => d.field("command", &"<locked>"),
        };
        d.finish()
    }
}

/// PerformOperation's staging buffer of `length` zero bytes: at most 4 GiB − 1, as
/// DriverKit's, and [`Error::NoMemory`] when it cannot be allocated.
fn staging_buffer(length: u64) -> Result<alloc_crate::vec::Vec<u8>> {
    let no_memory = |what| Error::NoMemory {
        what,
        requested: length,
        available: 0,
    };
    let n = usize::try_from(length)
        .ok()
        .filter(|_| length <= u64::from(u32::MAX))
        .ok_or(no_memory(
            "DriverKit PerformOperation: a staging buffer above 4 GiB - 1 bytes",
        ))?;
    let mut buffer = alloc_crate::vec::Vec::new();
    buffer
        .try_reserve_exact(n)
        .map_err(|_| no_memory("DriverKit PerformOperation: the staging buffer"))?;
    buffer.resize(n, 0u8);
    Ok(buffer)
}

/// The data descriptor a read or write (`op` 1 or 2) of `length` bytes needs: present, and
/// at least that long.
fn data_for(
    op: u64,
    length: u64,
    data: Option<&dyn MemoryDescriptor>,
) -> Result<&dyn MemoryDescriptor> {
    let data = data.ok_or(Error::BadArgument {
        what: "DriverKit PerformOperation: read and write need a data descriptor",
        value: op,
    })?;
    if length > data.length() {
        return Err(Error::BadArgument {
            what: "DriverKit PerformOperation: length above the data descriptor's length",
            value: length,
        });
    }
    Ok(data)
}

/// DriverKit PrepareForDMA's checks before anything is prepared: `options` 0, and at most
/// [`MAX_SEGMENTS`] segments asked for.
fn check_prepare_arguments(options: u64, segments: usize) -> Result<()> {
    if options != 0 {
        return Err(Error::BadArgument {
            what: "DriverKit PrepareForDMA: options (only 0 is defined)",
            value: options,
        });
    }
    if segments > MAX_SEGMENTS {
        return Err(Error::BadArgument {
            what: "DriverKit PrepareForDMA: segment array length (1 to 32)",
            value: segments as u64,
        });
    }
    Ok(())
}

/// Attaches `md` to a command that is not prepared and prepares `[offset, offset + length)`
/// of it (length 0: to its end). On an error the command is left as it was.
fn prepare_command<P: Platform + Clone + 'static>(
    cmd: &mut DmaCommand<P>,
    md: &Arc<dyn MemoryDescriptor>,
    offset: u64,
    length: u64,
) -> Result<()> {
    if let Some((at, _)) = cmd.prepared() {
        return Err(Error::Busy {
            what: "DriverKit PrepareForDMA: DMA command",
            addr: at,
            why: "it is prepared (CompleteDMA first)",
        });
    }
    cmd.set_memory_descriptor(md.clone())?;
    let length = if length == 0 {
        md.length().saturating_sub(offset)
    } else {
        length
    };
    if let Err(e) = cmd.prepare(PrepareOptions::range(offset, length)) {
        let _ = cmd.clear_memory_descriptor();
        return Err(e);
    }
    Ok(())
}

/// Writes the prepared command's segments into `segments` and returns their count. When
/// they do not all fit, the error names the first byte left out (`offset` is where the
/// preparation starts); the caller completes the command on any error.
fn fill_segments<P: Platform + Clone + 'static>(
    cmd: &DmaCommand<P>,
    segments: &mut [IoSegment],
    offset: u64,
) -> Result<usize> {
    // As DriverKit's kernel side, the count is checked when the segments are generated.
    if segments.is_empty() {
        return Err(Error::BadArgument {
            what: "DriverKit PrepareForDMA: segment array length (1 to 32)",
            value: 0,
        });
    }
    let mut count = 0usize;
    let mut described = 0u64;
    for seg in cmd.segments() {
        let s = seg?;
        let Some(slot) = segments.get_mut(count) else {
            return Err(Error::MessageTooLarge {
                what: "DriverKit PrepareForDMA: the transfer needs more segments than \
                       the array holds (dmakit does not truncate); the first byte of \
                       the descriptor left out is",
                addr: offset.saturating_add(described),
            });
        };
        *slot = s;
        count += 1;
        described += s.len;
    }
    Ok(count)
}

/// The direction flags DriverKit's PrepareForDMA reports for memory of `direction`.
fn memory_flags(direction: crate::Direction) -> DkMemoryOptions {
    let mut flags = DkMemoryOptions::NONE;
    if direction.device_reads() {
        flags = flags | DkMemoryOptions::DIRECTION_OUT;
    }
    if direction.device_writes() {
        flags = flags | DkMemoryOptions::DIRECTION_IN;
    }
    flags
}
