//! DriverKit's shapes over dmakit's objects, so the memory code of a DriverKit extension
//! (a *dext*) ports with its shape intact.
//!
//! DriverKit's memory API is a thin layer over the same kernel objects as IOKit's:
//! `IOBufferMemoryDescriptor::Create` makes an IOBufferMemoryDescriptor,
//! `IODMACommand::PrepareForDMA` drives an IODMACommand, and so on, with option words, return
//! codes and a few quirks of their own. This module gives those calls over dmakit's
//! [`BufferMemoryDescriptor`](crate::descriptor::BufferMemoryDescriptor),
//! [`SubMemoryDescriptor`](crate::descriptor::SubMemoryDescriptor),
//! [`MultiMemoryDescriptor`](crate::descriptor::MultiMemoryDescriptor),
//! [`MemoryMap`](crate::map::MemoryMap) and [`DmaCommand`](crate::dma::DmaCommand), with
//! DriverKit's argument checks and its error codes (each [`Error`] maps to the
//! kIOReturn code DriverKit returns, through [`Error::io_return`]).
//! Nothing here is new machinery: what a call does is what the object underneath does.
//!
//! ```
//! use dmakit::descriptor::MemoryDescriptor;
//! use dmakit::dma::IoSegment;
//! use dmakit::driverkit::{
//!     DkBufferMemoryDescriptor, DkDmaCommand, DkDmaSpec, DkMemoryOptions, DkPerformOptions,
//! };
//! use dmakit::mapper::Mapper;
//! use std::sync::Arc;
//! # use dmakit::mapper::IommuMapper;
//! # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//! # let device_mapper: Arc<dyn Mapper> = Arc::new(IommuMapper::new(
//! #     Arc::new(dmakit_sim::SimIommu::new(machine.clone())), 0x10_0000, 1 << 30)?);
//! let buf = DkBufferMemoryDescriptor::create(
//!     machine.clone(),
//!     DkMemoryOptions::DIRECTION_OUT_IN,
//!     16384,
//!     0,
//! )?;
//! buf.write(0, b"command block")?;
//! let machine_for_status = machine.clone();
//! let dma = DkDmaCommand::create(machine, Some(device_mapper), 0, DkDmaSpec::new(48))?;
//! let md: Arc<dyn MemoryDescriptor> = buf.clone();
//! let mut segments = [IoSegment::default(); 32];
//! let (flags, count) = dma.prepare_for_dma(0, &md, 0, 4096, &mut segments)?;
//! assert!(flags.contains(DkMemoryOptions::DIRECTION_OUT) && count >= 1);
//! // ... give segments[..count] to the device, wait for it ...
//! let status: Arc<dyn MemoryDescriptor> =
//!     DkBufferMemoryDescriptor::create(machine_for_status, DkMemoryOptions::DIRECTION_IN, 64, 0)?;
//! // Copy what the device wrote at 16..80 of the transfer, then clear it.
//! dma.perform_operation(DkPerformOptions::READ, 16, 64, 0, Some(&*status))?;
//! dma.perform_operation(DkPerformOptions::ZERO, 16, 64, 0, None)?;
//! dma.complete_dma(0)?;
//! let mut head = [0xFFu8; 16];
//! assert_eq!(buf.read_bytes(0, &mut head), 16);
//! assert_eq!(&head[..13], b"command block");
//! assert_eq!(head[13..], [0, 0, 0], "the rest of the first 16 bytes untouched (zeroed at creation)");
//! # Ok::<(), dmakit::Error>(())
//! ```
//!
//! ## A dext's code and its port
//!
//! The C++ of a dext that fills a buffer, hands it to a device behind its IOMMU and takes
//! it back:
//!
//! ```text
//! IOBufferMemoryDescriptor * buf = nullptr;
//! ret = IOBufferMemoryDescriptor::Create(kIOMemoryDirectionInOut, 16384, 0, &buf);
//! if (ret != kIOReturnSuccess) return ret;
//! buf->SetLength(4096);
//! IOAddressSegment range;
//! buf->GetAddressRange(&range);
//! memcpy((void *) range.address, request, sizeof(request));
//!
//! IODMACommandSpecification spec = { .options = 0, .maxAddressBits = 48 };
//! IODMACommand * dma = nullptr;
//! ret = IODMACommand::Create(pciDevice, kIODMACommandCreateNoOptions, &spec, &dma);
//! if (ret != kIOReturnSuccess) return ret;
//! uint64_t flags = 0;
//! uint32_t count = 32;
//! IOAddressSegment segments[32];
//! ret = dma->PrepareForDMA(kIODMACommandPrepareForDMANoOptions, buf, 0, 4096,
//!                          &flags, &count, segments);
//! if (ret != kIOReturnSuccess) return ret;
//! for (uint32_t i = 0; i < count; i++)
//!     ProgramDescriptor(i, segments[i].address, segments[i].length);
//! // ... the device runs; its completion interrupt arrives ...
//! ret = dma->CompleteDMA(kIODMACommandCompleteDMANoOptions);
//! ```
//!
//! and its port, line for line (the device's mapper stands for `pciDevice`, the
//! `memcpy` through the buffer's address becomes a checked copy):
//!
//! ```
//! use dmakit::descriptor::MemoryDescriptor;
//! use dmakit::dma::IoSegment;
//! use dmakit::driverkit::{DkBufferMemoryDescriptor, DkDmaCommand, DkDmaSpec, DkMemoryOptions};
//! use dmakit::mapper::Mapper;
//! use std::sync::Arc;
//! # use dmakit::mapper::IommuMapper;
//! # let machine = Arc::new(dmakit_sim::MachineBuilder::new().build()?);
//! # let pci_device_mapper: Arc<dyn Mapper> = Arc::new(IommuMapper::new(
//! #     Arc::new(dmakit_sim::SimIommu::new(machine.clone())), 0x10_0000, 1 << 30)?);
//! # let request = b"READ LBA 0";
//! # let mut programmed = Vec::new();
//! # let mut program_descriptor = |i: usize, address: u64, length: u64| programmed.push((i, address, length));
//! let buf =
//!     DkBufferMemoryDescriptor::create(machine.clone(), DkMemoryOptions::DIRECTION_OUT_IN, 16384, 0)?;
//! DkBufferMemoryDescriptor::set_length(&buf, 4096)?;
//! let range = DkBufferMemoryDescriptor::get_address_range(&buf);
//! buf.write(0, request)?; // within range.length bytes from range.address
//! # let _ = range;
//!
//! let spec = DkDmaSpec::new(48);
//! let dma = DkDmaCommand::create(machine, Some(pci_device_mapper), 0, spec)?;
//! let md: Arc<dyn MemoryDescriptor> = buf.clone();
//! let mut segments = [IoSegment::default(); 32];
//! let (_flags, count) = dma.prepare_for_dma(0, &md, 0, 4096, &mut segments)?;
//! for (i, s) in segments[..count].iter().enumerate() {
//!     program_descriptor(i, s.addr.0, s.len);
//! }
//! // ... the device runs; its completion interrupt arrives ...
//! dma.complete_dma(0)?;
//! # assert_eq!(programmed.iter().map(|p| p.2).sum::<u64>(), 4096);
//! # Ok::<(), dmakit::Error>(())
//! ```
//!
//! ## The calls
//!
//! | DriverKit | here |
//! | --- | --- |
//! | `IOBufferMemoryDescriptor::Create` | [`DkBufferMemoryDescriptor::create`] |
//! | `IOBufferMemoryDescriptor::SetLength` | [`DkBufferMemoryDescriptor::set_length`] |
//! | `IOBufferMemoryDescriptor::GetAddressRange` | [`DkBufferMemoryDescriptor::get_address_range`] |
//! | `IOMemoryDescriptor::GetLength` | [`DkMemoryDescriptor::get_length`] |
//! | `IOMemoryDescriptor::CreateMapping` | [`DkMemoryDescriptor::create_mapping`] |
//! | `IOMemoryDescriptor::CreateSubMemoryDescriptor` | [`DkMemoryDescriptor::create_sub_memory_descriptor`] |
//! | `IOMemoryDescriptor::CreateWithMemoryDescriptors` | [`DkMemoryDescriptor::create_with_memory_descriptors`] |
//! | `IOMemoryMap::GetAddress` / `GetLength` / `GetOffset` | [`DkMemoryMap::get_address`] / [`DkMemoryMap::get_length`] / [`DkMemoryMap::get_offset`] |
//! | `IODMACommand::Create` | [`DkDmaCommand::create`] |
//! | `IODMACommand::PrepareForDMA` | [`DkDmaCommand::prepare_for_dma`] |
//! | `IODMACommand::CompleteDMA` | [`DkDmaCommand::complete_dma`] |
//! | `IODMACommand::GetPreparation` | [`DkDmaCommand::get_preparation`] |
//! | `IODMACommand::PerformOperation` | [`DkDmaCommand::perform_operation`] |
//!
//! DriverKit's instance calls (`buf->SetLength(n)`) are associated functions taking the
//! object first (`DkBufferMemoryDescriptor::set_length(&buf, n)`), so they never collide
//! with dmakit's own methods of the same name, whose rules differ. Option words are small
//! bit-set types ([`DkMemoryOptions`], [`DkMapOptions`], [`DkPerformOptions`]) that can
//! hold any bits, so the checks DriverKit makes on them are made here too. Output
//! arguments become return values.
//!
//! ## Where dmakit differs from DriverKit
//!
//! * [`DkDmaCommand::prepare_for_dma`] never truncates: a transfer that needs more
//!   segments than the array holds is [`Error::MessageTooLarge`]
//!   and nothing stays prepared (DriverKit succeeds with the first segments only, and the
//!   caller can tell only by adding up their lengths).
//! * A second `prepare_for_dma` of the *same* descriptor while prepared is
//!   [`Error::Busy`] like any other (DriverKit's kernel side ends the
//!   first preparation while the device may still use it, and leaves the descriptor wired
//!   once more than `CompleteDMA` undoes).
//! * The IO pages of a transfer allow the device only what its direction does: an `In`
//!   buffer is writable but not readable through the IOMMU (DriverKit's kernel lets the
//!   device read it too), as for every mapped
//!   [`DmaCommand`](crate::dma::DmaCommand).
//! * A `prepare_for_dma` length of 0 with a non-zero offset prepares from the offset to
//!   the end of the descriptor (DriverKit's kernel takes the descriptor's whole length
//!   from the offset, a range that runs past its end).
//! * [`DkMemoryDescriptor::create_mapping`] honours an explicit read-only request always
//!   (DriverKit gives the task that created the buffer a writable mapping even when it
//!   asked for read-only); mapping failures keep their own error (DriverKit returns
//!   kIOReturnError for all); the real-time cache mode is
//!   [`Error::Unsupported`] (dmakit has no such mode). What dmakit cannot honour is
//!   refused rather than dropped: map option bits DriverKit does not define are
//!   [`Error::BadArgument`] (DriverKit ignores them, but for those of `0xF000`, which its
//!   cache-mode check refuses), so are the guard-field values it does not define
//!   (`0x10`, `0x14`, `0x18`, `0x1C`; DriverKit gives them small guards, as the default),
//!   and an `alignment` a mapping cannot meet is refused (DriverKit's kernel does not read
//!   the argument, so its mapping may lack the alignment asked for).
//! * [`DkBufferMemoryDescriptor::create`] rounds an alignment that is not a power of two
//!   up to one; every failure that is the caller's argument (zero capacity, a size that
//!   overflows) is kIOReturnNoMemory as in DriverKit, but failures of the platform keep
//!   their own code.
//! * Multi-descriptor parts whose direction does not allow the new descriptor's are
//!   refused (see [`MultiMemoryDescriptor`](crate::descriptor::MultiMemoryDescriptor)).
//!
//! Not provided: `IOUserClient::CreateMemoryDescriptorFromClient` and copy-on-write client
//! memory (dmakit has no user-client layer), and DriverKit's
//! `IODMACommandSpecification::options` (no option is defined).

mod dma;
mod memory;

pub use dma::{DkDmaCommand, DkDmaSpec, DkPerformOptions, MAX_SEGMENTS};
pub use memory::{DkAddressRange, DkBufferMemoryDescriptor, DkMemoryDescriptor, DkMemoryMap};

use crate::map::{MapGuard, MapOptions};
use crate::platform::CacheMode;
use crate::{Direction, Error, Result, VirtAddr};

/// DriverKit's memory-descriptor option word (`IOMemoryDescriptorCreateOptions`, the
/// direction of `IOBufferMemoryDescriptor::Create`, `CreateSubMemoryDescriptor` and
/// `CreateWithMemoryDescriptors`; also the `flags` `PrepareForDMA` returns).
///
/// It holds any bits, so a caller can pass what a dext passes; the calls check them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DkMemoryOptions(u64);

impl DkMemoryOptions {
    /// No direction (0).
    pub const NONE: Self = DkMemoryOptions(0);
    /// kIOMemoryDirectionIn: the device writes the memory.
    pub const DIRECTION_IN: Self = DkMemoryOptions(1);
    /// kIOMemoryDirectionOut: the device reads the memory.
    pub const DIRECTION_OUT: Self = DkMemoryOptions(2);
    /// kIOMemoryDirectionOutIn: both.
    pub const DIRECTION_OUT_IN: Self = DkMemoryOptions(3);
    /// The direction bits (kIOMemoryDirectionOutIn).
    pub const DIRECTION_MASK: u64 = 3;

    /// The option word `bits`, every bit kept.
    pub const fn from_bits(bits: u64) -> Self {
        DkMemoryOptions(bits)
    }

    /// The option word.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The direction the low bits say.
    pub const fn direction(self) -> Direction {
        Direction::from_bits((self.0 & Self::DIRECTION_MASK) as u32)
    }

    /// The word for `dir` (its direction bits).
    pub const fn from_direction(dir: Direction) -> Self {
        DkMemoryOptions(dir.bits() as u64)
    }

    /// The direction, when the word has direction bits only ([`Error::BadArgument`]
    /// naming `what` otherwise, as DriverKit refuses).
    fn direction_only(self, what: &'static str) -> Result<Direction> {
        if self.0 & !Self::DIRECTION_MASK != 0 {
            return Err(Error::BadArgument {
                what,
                value: self.0,
            });
        }
        Ok(self.direction())
    }
}

impl core::ops::BitOr for DkMemoryOptions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        DkMemoryOptions(self.0 | rhs.0)
    }
}

/// DriverKit's mapping option word (`IOMemoryDescriptor::CreateMapping`'s options):
/// placement, protection, guard pages and cache mode.
///
/// It holds any bits; [`DkMemoryDescriptor::create_mapping`] checks them and translates
/// them with [`map_options`](Self::map_options).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DkMapOptions(u64);

impl DkMapOptions {
    /// kIOMemoryMapFixedAddress: map at the address given.
    pub const FIXED_ADDRESS: Self = DkMapOptions(0x1);
    /// kIOMemoryMapReadOnly.
    pub const READ_ONLY: Self = DkMapOptions(0x2);
    /// kIOMemoryMapGuardedDefault: small guards for a mapping placed anywhere.
    pub const GUARDED_DEFAULT: Self = DkMapOptions(0);
    /// kIOMemoryMapGuardedNone.
    pub const GUARDED_NONE: Self = DkMapOptions(0x4);
    /// kIOMemoryMapGuardedSmall: one page on each side.
    pub const GUARDED_SMALL: Self = DkMapOptions(0x8);
    /// kIOMemoryMapGuardedLarge: 64 KiB on each side.
    pub const GUARDED_LARGE: Self = DkMapOptions(0xC);
    /// kIOMemoryMapGuardedMask.
    pub const GUARDED_MASK: u64 = 0x1C;
    /// kIOMemoryMapCacheModeDefault (copy-back for memory).
    pub const CACHE_MODE_DEFAULT: Self = DkMapOptions(0);
    /// kIOMemoryMapCacheModeInhibit.
    pub const CACHE_MODE_INHIBIT: Self = DkMapOptions(0x100);
    /// kIOMemoryMapCacheModeCopyback.
    pub const CACHE_MODE_COPYBACK: Self = DkMapOptions(0x200);
    /// kIOMemoryMapCacheModeWriteThrough.
    pub const CACHE_MODE_WRITE_THROUGH: Self = DkMapOptions(0x400);
    /// kIOMemoryMapCacheModeRealTime (dmakit has no such mode: refused).
    pub const CACHE_MODE_REAL_TIME: Self = DkMapOptions(0x800);
    /// The cache-mode field.
    pub const CACHE_MODE_MASK: u64 = 0xF00;
    /// Every bit DriverKit defines.
    const KNOWN: u64 = 0x1 | 0x2 | Self::GUARDED_MASK | Self::CACHE_MODE_MASK;

    /// The option word `bits`, every bit kept.
    pub const fn from_bits(bits: u64) -> Self {
        DkMapOptions(bits)
    }

    /// The option word.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The [`MapOptions`] DriverKit's kernel side makes of these options (before the
    /// read-only rule for the descriptor's direction, which
    /// [`DkMemoryDescriptor::create_mapping`] applies), for `[offset, offset + length)` of
    /// the descriptor (`length` 0: all of it), in the kernel task.
    ///
    /// * [`FIXED_ADDRESS`](Self::FIXED_ADDRESS): at `address`, no guard pages (the guard
    ///   field is not read);
    /// * otherwise anywhere (`address` is not read), with the guard field: default and
    ///   small are [`MapGuard::Small`], none is [`MapGuard::None`], large is
    ///   [`MapGuard::Large`];
    /// * [`READ_ONLY`](Self::READ_ONLY): read-only;
    /// * the cache field: default, inhibit, copy-back or write-through; real-time is
    ///   [`Error::Unsupported`]; any other value is [`Error::BadArgument`], as in
    ///   DriverKit.
    ///
    /// Bits DriverKit does not define, and guard values other than the four it defines,
    /// are [`Error::BadArgument`] (DriverKit's kernel ignores undefined bits outside the
    /// cache field, and gives undefined guard values small guards): an option dmakit
    /// cannot honour is refused rather than dropped.
    pub fn map_options(self, address: u64, offset: u64, length: u64) -> Result<MapOptions> {
        let bits = self.0;
        if bits & !Self::KNOWN != 0 {
            return Err(Error::BadArgument {
                what: "DriverKit CreateMapping: option bits DriverKit does not define",
                value: bits & !Self::KNOWN,
            });
        }
        let cache = match bits & Self::CACHE_MODE_MASK {
            0 => None,
            0x100 => Some(CacheMode::Inhibit),
            0x200 => Some(CacheMode::CopyBack),
            0x400 => Some(CacheMode::WriteThrough),
            0x800 => {
                return Err(Error::Unsupported {
                    what: "DriverKit CreateMapping: the real-time cache mode (dmakit has none)",
                })
            }
            other => {
                return Err(Error::BadArgument {
                    what: "DriverKit CreateMapping: cache mode",
                    value: other,
                })
            }
        };
        let mut options = MapOptions::new().range(offset, length);
        if self.contains(Self::FIXED_ADDRESS) {
            options = options.at(VirtAddr(address));
        } else {
            let guard = match bits & Self::GUARDED_MASK {
                0x0 | 0x8 => MapGuard::Small,
                0x4 => MapGuard::None,
                0xC => MapGuard::Large,
                other => {
                    return Err(Error::BadArgument {
                        what: "DriverKit CreateMapping: guard mode",
                        value: other,
                    })
                }
            };
            options = options.anywhere().guard(guard);
        }
        if self.contains(Self::READ_ONLY) {
            options = options.read_only();
        }
        if let Some(mode) = cache {
            options = options.cache(mode);
        }
        Ok(options)
    }
}

impl core::ops::BitOr for DkMapOptions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        DkMapOptions(self.0 | rhs.0)
    }
}
