//! What the demo saw, kept for `--json` and `--svg`: where each allocation landed on the
//! machine, the second machine of the bounced transfer, the IO address spaces, the DMA
//! figures, the NVMe part's leak check and the teardown.

use super::nvme::Count;
use crate::picture::{Area, Lane, Picture, Run, Segment, Space, Use};
use dmakit::PhysRange;
use dmakit_sim::Layout;
use serde::Serialize;

/// The figures of the DMA steps.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DmaFacts {
    /// The 32-bit device's transfer was bounced.
    pub bounced: bool,
    /// Bytes the device read through the bounce buffer.
    pub device_read_bytes: u64,
    /// They were the buffer's bytes.
    pub device_read_correct: bool,
    /// Bytes the bounce pool copied.
    pub bounce_pool_copied: u64,
    /// Physical runs of the scattered source.
    pub source_runs: u64,
    /// IO segments the IOMMU made of them.
    pub source_io_segments: u64,
    /// The engine's copy matched the source.
    pub engine_copy_correct: bool,
    /// IOMMU faults.
    pub iommu_faults: u64,
    /// IOTLB invalidations.
    pub iotlb_invalidations: u64,
}

/// The machine's counters after the teardown.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Teardown {
    /// Allocations still live.
    pub allocations_live: u64,
    /// Pages still wired.
    pub wired_pages: u64,
    /// Free pages.
    pub free_pages: u64,
    /// All RAM pages.
    pub ram_pages: u64,
}

/// Everything recorded while the demo runs.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Where each allocation on the demo's machine landed, in the order made.
    pub placed: Vec<Lane>,
    /// The machine of the bounced transfer, with the buffer and its bounce buffer.
    pub bounce_machine: Option<Space>,
    /// IO address spaces.
    pub io: Vec<Space>,
    /// The DMA figures.
    pub dma: DmaFacts,
}

impl Record {
    /// Records that `label` landed on `runs` of the demo's machine.
    pub fn place(&mut self, label: impl Into<String>, runs: &[PhysRange]) {
        self.placed
            .push(Lane::new(Use::Allocation, label, runs_of(runs)));
    }
}

/// The demo's machine-readable output (`dmakit demo --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The machine's seed.
    pub seed: u64,
    /// Its page size in bytes.
    pub page_size: u64,
    /// Physical and IO address spaces, and what landed where.
    pub picture: Picture,
    /// The DMA figures.
    pub dma: DmaFacts,
    /// What the NVMe part held at its start and holds at the end.
    pub nvme: Vec<Count>,
    /// The machine after the teardown.
    pub teardown: Teardown,
}

impl Report {
    /// The report of a finished demo on a machine of `layout`.
    pub fn new(layout: &Layout, rec: Record, nvme: Vec<Count>, teardown: Teardown) -> Report {
        let page = layout.page_size.bytes();
        let title = format!(
            "dmakit demo: where memory landed (simulated machine, seed {}, {} KiB pages)",
            layout.seed,
            page >> 10
        );
        let main = Space::physical(
            "The demo's machine: physical addresses (RAM, holes, device windows) and each allocation",
            regions(layout),
            rec.placed,
        );
        let spaces = std::iter::once(main)
            .chain(rec.bounce_machine)
            .chain(rec.io)
            .collect();
        Report {
            seed: layout.seed,
            page_size: page,
            picture: Picture { title, spaces },
            dma: rec.dma,
            nvme,
            teardown,
        }
    }
}

/// Physical ranges as runs.
pub fn runs_of(ranges: &[PhysRange]) -> Vec<Run> {
    ranges
        .iter()
        .map(|r| Run {
            start: r.addr.0,
            len: r.len,
        })
        .collect()
}

/// A simulated machine's RAM regions and device windows.
pub fn regions(layout: &Layout) -> Vec<Segment> {
    let ram = layout.ram.iter().map(|r| Segment {
        area: Area::Ram,
        start: r.base,
        end: r.end(),
        label: format!("RAM {}", crate::size::human(r.len)),
    });
    let mmio = layout.mmio.iter().map(|(base, len, name)| Segment {
        area: Area::Mmio,
        start: *base,
        end: base.saturating_add(*len),
        label: name.clone(),
    });
    ram.chain(mmio).collect()
}
