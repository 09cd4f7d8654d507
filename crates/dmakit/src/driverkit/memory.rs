//! DriverKit's IOBufferMemoryDescriptor, IOMemoryDescriptor and IOMemoryMap calls.

use super::{DkMapOptions, DkMemoryOptions};
use crate::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
    SubMemoryDescriptor,
};
use crate::map::MemoryMap;
use crate::platform::{Platform, VirtualMemory};
use crate::{Error, Result, VirtAddr};
use alloc_crate::sync::Arc;

/// Most descriptors [`DkMemoryDescriptor::create_with_memory_descriptors`] takes (the size
/// of DriverKit's array).
const MAX_PARTS: usize = 32;

/// A range of a task's memory (DriverKit's `IOAddressSegment` as
/// `IOBufferMemoryDescriptor::GetAddressRange` fills it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DkAddressRange {
    /// The first byte.
    pub address: VirtAddr,
    /// Bytes.
    pub length: u64,
}

/// DriverKit's `IOBufferMemoryDescriptor` calls, over
/// [`BufferMemoryDescriptor`].
///
/// A namespace: it has no values.
#[derive(Debug)]
pub enum DkBufferMemoryDescriptor {}

impl DkBufferMemoryDescriptor {
    /// A wired buffer of `capacity` bytes in the kernel task (DriverKit
    /// `IOBufferMemoryDescriptor::Create(options, capacity, alignment, &buffer)`).
    ///
    /// `options` may hold direction bits only ([`DkMemoryOptions::DIRECTION_IN`],
    /// [`DIRECTION_OUT`](DkMemoryOptions::DIRECTION_OUT),
    /// [`DIRECTION_OUT_IN`](DkMemoryOptions::DIRECTION_OUT_IN)); any other bit is
    /// [`Error::BadArgument`]. The buffer starts on a page boundary (as DriverKit's, which
    /// are shared with the dext's task), and its length is its capacity, as the kernel
    /// object's is. An `alignment` that is not a power of two is rounded up to one; 0 is
    /// none; above a page it makes the buffer physically contiguous.
    ///
    /// A capacity of 0, one or an alignment so large the size overflows, or a capacity the
    /// task's address space has no room for, is [`Error::NoMemory`], as DriverKit reports
    /// every failure of its factory; any other failure of the platform (an error of the
    /// operating system, a fault a simulated machine injects) keeps its own error, which
    /// says more.
    pub fn create<P: Platform + Clone>(
        platform: P,
        options: DkMemoryOptions,
        capacity: u64,
        alignment: u64,
    ) -> Result<Arc<BufferMemoryDescriptor<P>>> {
        let direction = options.direction_only(
            "DriverKit IOBufferMemoryDescriptor::Create: options other than the direction",
        )?;
        let refused = |what| Error::NoMemory {
            what,
            requested: capacity,
            available: 0,
        };
        if capacity == 0 {
            return Err(refused(
                "DriverKit IOBufferMemoryDescriptor::Create: a capacity of 0",
            ));
        }
        let alignment = match alignment {
            0 | 1 => 0,
            a => a.checked_next_power_of_two().ok_or(refused(
                "DriverKit IOBufferMemoryDescriptor::Create: an alignment above 2^63",
            ))?,
        };
        let mut buffer_options = BufferOptions::new(capacity, direction);
        buffer_options.alignment = alignment;
        match BufferMemoryDescriptor::new(platform, buffer_options) {
            Ok(b) => Ok(Arc::new(b)),
            Err(Error::Overflow { .. } | Error::ZeroSize { .. } | Error::BadAlignment { .. }) => {
                Err(refused(
                    "DriverKit IOBufferMemoryDescriptor::Create: the capacity and alignment give no allocation",
                ))
            }
            Err(Error::NoSpace { requested, free, .. }) => Err(Error::NoMemory {
                what: "DriverKit IOBufferMemoryDescriptor::Create: no room for the buffer in the \
                       task's address space",
                requested,
                available: free,
            }),
            Err(e) => Err(e),
        }
    }

    /// Sets the length (DriverKit `IOBufferMemoryDescriptor::SetLength`). Always `Ok`, as
    /// in DriverKit: a length above the capacity is silently ignored and the length stays
    /// what it was (read it back with [`get_address_range`](Self::get_address_range) or
    /// [`DkMemoryDescriptor::get_length`] to tell). dmakit's own
    /// [`BufferMemoryDescriptor::set_length`] refuses it instead.
    pub fn set_length<P: Platform + Clone>(
        buffer: &BufferMemoryDescriptor<P>,
        length: u64,
    ) -> Result<()> {
        // Refused only above the capacity, which DriverKit ignores without a word.
        let _ = buffer.set_length(length);
        Ok(())
    }

    /// The buffer's address in its task and its current length (DriverKit
    /// `IOBufferMemoryDescriptor::GetAddressRange`).
    pub fn get_address_range<P: Platform + Clone>(
        buffer: &BufferMemoryDescriptor<P>,
    ) -> DkAddressRange {
        DkAddressRange {
            address: buffer.address(),
            length: buffer.length(),
        }
    }
}

/// DriverKit's `IOMemoryDescriptor` calls, over any [`MemoryDescriptor`].
///
/// A namespace: it has no values.
#[derive(Debug)]
pub enum DkMemoryDescriptor {}

impl DkMemoryDescriptor {
    /// The descriptor's length in bytes (DriverKit `IOMemoryDescriptor::GetLength`).
    pub fn get_length<M: MemoryDescriptor + ?Sized>(md: &M) -> u64 {
        md.length()
    }

    /// Maps `[offset, offset + length)` of `md` (`length` 0: all of it) into the kernel
    /// task, where dmakit runs a ported dext (DriverKit
    /// `IOMemoryDescriptor::CreateMapping(options, address, offset, length, alignment,
    /// &map)`).
    ///
    /// `options` translate as [`DkMapOptions::map_options`] says: without
    /// [`FIXED_ADDRESS`](DkMapOptions::FIXED_ADDRESS) the mapping goes anywhere with a
    /// small guard page on each side unless the options ask otherwise; with it, at
    /// `address` without guards. The mapping is read-only when
    /// [`READ_ONLY`](DkMapOptions::READ_ONLY) is asked for, or when the descriptor's
    /// direction is exactly `Out` and it is not a buffer the mapping task created (as
    /// DriverKit gives only the task that created an `IOBufferMemoryDescriptor` a writable
    /// mapping of it: a dext fills the `Out` buffers it creates). Only a
    /// [`BufferMemoryDescriptor`] of the mapping task counts
    /// ([`MemoryDescriptor::buffer_task`]; dmakit runs a ported dext in the kernel task, so
    /// every kernel-task buffer is the dext's own): an `Out` sub-range or combination of
    /// such a buffer, or an `Out` descriptor of the task's own virtual memory, maps
    /// read-only, as in DriverKit. Unlike DriverKit, an explicit read-only request is
    /// read-only even for the buffer's creator.
    ///
    /// `alignment` (of the mapping's first page): 0 or a power of two up to the page size,
    /// which every mapping meets; a larger power of two is [`Error::Unsupported`] and
    /// anything else [`Error::BadArgument`]. (DriverKit's header supports 0 only and its
    /// kernel side ignores the argument, so there any value succeeds and the mapping may
    /// not have the alignment asked for; dmakit refuses what it cannot meet.)
    ///
    /// Errors: the options' ([`DkMapOptions::map_options`]) and whatever
    /// [`MemoryMap::new`] refuses, with its own error (DriverKit returns kIOReturnError
    /// for every mapping failure).
    pub fn create_mapping<P: VirtualMemory + 'static>(
        platform: P,
        md: &Arc<dyn MemoryDescriptor>,
        options: DkMapOptions,
        address: u64,
        offset: u64,
        length: u64,
        alignment: u64,
    ) -> Result<MemoryMap<P>> {
        let mut map_options = options.map_options(address, offset, length)?;
        let page = md.page_size().bytes();
        if alignment > 1 {
            if !alignment.is_power_of_two() {
                return Err(Error::BadArgument {
                    what: "DriverKit CreateMapping: alignment (not a power of two)",
                    value: alignment,
                });
            }
            if alignment > page {
                return Err(Error::Unsupported {
                    what: "DriverKit CreateMapping: an alignment above the page size",
                });
            }
        }
        if !map_options.is_read_only()
            && md.direction() == crate::Direction::Out
            && md.buffer_task() != Some(map_options.task())
        {
            map_options = map_options.read_only();
        }
        MemoryMap::new(platform, md.clone(), map_options)
    }

    /// A window `[offset, offset + length)` of `of` (DriverKit
    /// `IOMemoryDescriptor::CreateSubMemoryDescriptor(options, offset, length, of,
    /// &memory)`), for the direction in `options`.
    ///
    /// [`Error::BadArgument`], as DriverKit: option bits other than the direction,
    /// `offset + length` overflowing, or a window that runs past the end of `of`. (A null
    /// parent cannot be expressed.)
    pub fn create_sub_memory_descriptor(
        options: DkMemoryOptions,
        offset: u64,
        length: u64,
        of: &Arc<dyn MemoryDescriptor>,
    ) -> Result<Arc<SubMemoryDescriptor>> {
        let direction = options.direction_only(
            "DriverKit CreateSubMemoryDescriptor: options other than the direction",
        )?;
        let end = offset.checked_add(length).ok_or(Error::BadArgument {
            what: "DriverKit CreateSubMemoryDescriptor: offset + length overflows (offset)",
            value: offset,
        })?;
        if end > of.length() {
            return Err(Error::BadArgument {
                what: "DriverKit CreateSubMemoryDescriptor: the window runs past the parent's end (its end)",
                value: end,
            });
        }
        Ok(Arc::new(SubMemoryDescriptor::new(
            of.clone(),
            offset,
            length,
            direction,
        )?))
    }

    /// The descriptors `mds` one after another, for the direction in `options` (DriverKit
    /// `IOMemoryDescriptor::CreateWithMemoryDescriptors(options, count, mds, &memory)`).
    ///
    /// [`Error::BadArgument`], as DriverKit: option bits other than the direction, no
    /// descriptor, or more than 32 (DriverKit's array). A part whose direction does not
    /// allow `options`' is `BadArgument` too (see [`MultiMemoryDescriptor::new`]; DriverKit
    /// accepts it). (A null array or element cannot be expressed.)
    pub fn create_with_memory_descriptors(
        options: DkMemoryOptions,
        mds: &[Arc<dyn MemoryDescriptor>],
    ) -> Result<Arc<MultiMemoryDescriptor>> {
        let direction = options.direction_only(
            "DriverKit CreateWithMemoryDescriptors: options other than the direction",
        )?;
        if mds.is_empty() || mds.len() > MAX_PARTS {
            return Err(Error::BadArgument {
                what: "DriverKit CreateWithMemoryDescriptors: descriptor count (1 to 32)",
                value: mds.len() as u64,
            });
        }
        Ok(Arc::new(MultiMemoryDescriptor::new(
            mds.to_vec(),
            direction,
        )?))
    }
}

/// DriverKit's `IOMemoryMap` calls, over [`MemoryMap`].
///
/// A namespace: it has no values.
#[derive(Debug)]
pub enum DkMemoryMap {}

impl DkMemoryMap {
    /// The address of the first mapped byte (DriverKit `IOMemoryMap::GetAddress`); 0 after
    /// the handle is unmapped.
    pub fn get_address<P: VirtualMemory>(map: &MemoryMap<P>) -> u64 {
        map.address().0
    }

    /// Bytes mapped (DriverKit `IOMemoryMap::GetLength`).
    pub fn get_length<P: VirtualMemory>(map: &MemoryMap<P>) -> u64 {
        map.length()
    }

    /// Offset of the first mapped byte in the descriptor (DriverKit
    /// `IOMemoryMap::GetOffset`). A sub-descriptor's mapping is its parent's, so its
    /// offset is in the parent, as the kernel's map reports it.
    pub fn get_offset<P: VirtualMemory>(map: &MemoryMap<P>) -> u64 {
        map.offset()
    }
}
