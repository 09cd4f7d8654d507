//! `sim_dma/*`: a DMA command's whole round trip on the simulated machine, mapped through
//! an IOMMU against bypassed.
//!
//! * `sim_dma/iommu_mapped_4k_round_trip`: `prepare` of 4 KiB, one `gen_segments` (one
//!   16-byte `Host64` segment) and `complete` of a [`DmaCommand`] with an [`IommuMapper`]
//!   (strict: `complete` invalidates at once) over a no-op IOMMU (hardware whose page-table
//!   writes and invalidations do nothing), on a wired 4 KiB buffer of a coherent simulated
//!   machine. Peer ("bypassed round trip"): the same three calls on a command with no
//!   mapper, over the same buffer (every command of the group shares it, one preparing it
//!   at a time: two buffers can differ by where their memory landed), so the ratio is
//!   dmakit's own price of mapping: the IO address allocation, the mapper's books of the
//!   entry and the route. An operation is one round trip; a chunk is 256.
//! * `sim_dma/sim_iommu_mapped_4k_round_trip`: the same over the simulator's [`SimIommu`]
//!   model (its page table and IOTLB), for what a modelled IOMMU adds.
//! * `sim_dma/a_a`: the bypassed round trip against itself (the same command and buffer on
//!   both sides).

use crate::harness::{compare, Plan, Side};
use crate::progress::Progress;
use crate::{measure, Options, Row, CONTROL_PEER};
use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{DmaCommand, PrepareOptions, SegmentSpec};
use dmakit::mapper::{Access, IommuHardware, IommuMapper};
use dmakit::{Direction, IoAddr, PageSize, PhysAddr, Result};
use dmakit_sim::{Machine, MachineBuilder, SimIommu};
use std::sync::Arc;

const CHUNKS: usize = 8;
const PER_CHUNK: usize = 256;
const LEN: u64 = 4096;

type M = Arc<Machine>;

/// IOMMU hardware that does nothing: the mapper's own costs alone.
struct NoopIommu;

impl IommuHardware for NoopIommu {
    fn page_size(&self) -> PageSize {
        PageSize::SIZE_4K
    }
    fn set_entry(&self, _: IoAddr, _: Option<(PhysAddr, Access)>) -> Result<()> {
        Ok(())
    }
    fn invalidate(&self, _: IoAddr, _: u64) -> Result<()> {
        Ok(())
    }
}

/// How a command reaches memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// No mapper.
    Bypassed,
    /// An [`IommuMapper`] over hardware that does nothing.
    NoopIommu,
    /// An [`IommuMapper`] over the simulator's IOMMU model.
    SimIommu,
}

/// A wired 4 KiB buffer of `m`, for the commands.
pub fn buffer(m: &M) -> Result<Arc<dyn MemoryDescriptor>> {
    let b = BufferMemoryDescriptor::new(m.clone(), BufferOptions::new(LEN, Direction::InOut))?;
    Ok(Arc::new(b))
}

/// A prepared-and-completed-once command over `md` (a [`buffer`]), by `route`.
pub fn command(m: &M, md: &Arc<dyn MemoryDescriptor>, route: Route) -> Result<DmaCommand<M>> {
    let mut builder = DmaCommand::builder(m.clone()).spec(SegmentSpec::builder().build()?);
    match route {
        Route::Bypassed => {}
        Route::NoopIommu => {
            builder = builder.mapper(Arc::new(IommuMapper::new(NoopIommu, 1 << 32, 1 << 30)?));
        }
        Route::SimIommu => {
            let iommu = Arc::new(SimIommu::new(m.clone()));
            builder = builder.mapper(Arc::new(IommuMapper::new(iommu, 1 << 32, 1 << 30)?));
        }
    }
    let mut cmd = builder.build()?;
    cmd.set_memory_descriptor(md.clone())?;
    round_trips(&mut cmd, 1)?;
    Ok(cmd)
}

/// `n` round trips: prepare, one gen_segments, complete; the segments generated.
pub fn round_trips(cmd: &mut DmaCommand<M>, n: usize) -> Result<usize> {
    let mut out = [0u8; 16];
    let mut segs = 0;
    for _ in 0..n {
        cmd.prepare(PrepareOptions::range(0, LEN))?;
        let mut off = 0;
        segs += cmd.gen_segments(&mut off, &mut out)?;
        cmd.complete()?;
    }
    Ok(segs)
}

/// Rows the group plans.
pub fn planned(_opts: &Options) -> usize {
    3
}

/// Runs the group.
pub fn run(opts: &Options, p: &mut Progress) -> Vec<Row> {
    let plan = Plan::for_options(opts);
    let made = MachineBuilder::new()
        .seed(1)
        .coherent(true)
        .build()
        .map(Arc::new)
        .and_then(|m| {
            // One buffer for every command, so that every row copies the same memory.
            let md = buffer(&m)?;
            Ok((
                command(&m, &md, Route::NoopIommu)?,
                command(&m, &md, Route::SimIommu)?,
                command(&m, &md, Route::Bypassed)?,
            ))
        });
    let (mut mapped, mut modelled, mut bypassed) = match made {
        Ok(c) => c,
        Err(e) => {
            p.skip(planned(opts), &format!("sim_dma bench: {e}"));
            return Vec::new();
        }
    };
    let ops = (CHUNKS * PER_CHUNK) as f64;
    let mut rows = vec![measure(
        p,
        "sim_dma/iommu_mapped_4k_round_trip",
        "bypassed round trip",
        || {
            compare(
                &plan,
                CHUNKS,
                Side::new(ops, |_| round_trips(&mut mapped, PER_CHUNK).ok()),
                Side::new(ops, |_| round_trips(&mut bypassed, PER_CHUNK).ok()),
            )
        },
    )];
    rows.push(measure(
        p,
        "sim_dma/sim_iommu_mapped_4k_round_trip",
        "bypassed round trip",
        || {
            compare(
                &plan,
                CHUNKS,
                Side::new(ops, |_| round_trips(&mut modelled, PER_CHUNK).ok()),
                Side::new(ops, |_| round_trips(&mut bypassed, PER_CHUNK).ok()),
            )
        },
    ));
    // The same command on both sides: a second command over a second buffer can differ by
    // where its memory landed, a real difference that is not the method's noise.
    let same = std::cell::RefCell::new(&mut bypassed);
    rows.push(measure(p, "sim_dma/a_a", CONTROL_PEER, || {
        compare(
            &plan,
            CHUNKS,
            Side::new(ops, |_| round_trips(&mut same.borrow_mut(), PER_CHUNK).ok()),
            Side::new(ops, |_| round_trips(&mut same.borrow_mut(), PER_CHUNK).ok()),
        )
    }));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_round_trips_give_one_segment_and_release_everything() {
        let m = Arc::new(
            MachineBuilder::new()
                .seed(2)
                .coherent(true)
                .build()
                .unwrap(),
        );
        let md = buffer(&m).unwrap();
        let mut mapped = command(&m, &md, Route::NoopIommu).unwrap();
        let mut modelled = command(&m, &md, Route::SimIommu).unwrap();
        let mut bypassed = command(&m, &md, Route::Bypassed).unwrap();
        assert_eq!(round_trips(&mut mapped, 5).unwrap(), 5);
        assert_eq!(round_trips(&mut modelled, 5).unwrap(), 5);
        assert_eq!(round_trips(&mut bypassed, 5).unwrap(), 5);
        assert!(mapped.prepared_offset_and_length().is_err());
        assert!(bypassed.prepared_offset_and_length().is_err());
    }
}
