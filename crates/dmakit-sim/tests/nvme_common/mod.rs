//! The simulated machine the NVMe driver tests run on: one machine, one PCI bus, one
//! simulated controller, and what a test can observe about them.

#![allow(dead_code)]

use dmakit::device::{PciBus, PciFunction, PciMatch};
use dmakit_nvme::suite::TestMachine;
use dmakit_nvme::{Nvme, NvmeOptions, PollTimer, Timer};
use dmakit_sim::nvme::{SimNvme, SimNvmeBuilder, NVME_CLASS};
use dmakit_sim::pci::{DmaMode, FunctionConfig, SimPciBus};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

/// The platform.
pub type M = Arc<Machine>;

/// One simulated machine with one NVMe controller.
pub struct Sim {
    pub m: M,
    pub bus: SimPciBus,
    pub nvme: SimNvme,
    pub f: Arc<dyn PciFunction>,
    pub timer: Arc<PollTimer>,
    pub options: NvmeOptions,
}

impl Sim {
    pub fn new(seed: u64, b: SimNvmeBuilder, dma: DmaMode) -> Sim {
        Self::on(seed, b, dma, false)
    }

    pub fn on(seed: u64, b: SimNvmeBuilder, dma: DmaMode, coherent: bool) -> Sim {
        Self::with(MachineBuilder::new().coherent(coherent), seed, b, dma)
    }

    pub fn with(machine: MachineBuilder, seed: u64, b: SimNvmeBuilder, dma: DmaMode) -> Sim {
        let m: M = Arc::new(machine.seed(seed).fragmentation(0.8).build().unwrap());
        let bus = SimPciBus::new(m.clone()).unwrap();
        let nvme = b
            .seed(seed)
            .function(FunctionConfig::new().dma(dma))
            .attach(&bus)
            .unwrap();
        let f = bus.find(&PciMatch::class(NVME_CLASS)).unwrap();
        Sim {
            m,
            bus,
            nvme,
            f,
            timer: Arc::new(PollTimer::new(1_000)),
            options: NvmeOptions::new().command_timeout_ms(50),
        }
    }

    pub fn driver(&self) -> Nvme<M> {
        Nvme::new(
            self.m.clone(),
            self.f.clone(),
            self.timer.clone(),
            self.options,
        )
        .unwrap()
    }
}

impl TestMachine<M> for Sim {
    fn platform(&self) -> M {
        self.m.clone()
    }
    fn function(&self) -> Arc<dyn PciFunction> {
        self.f.clone()
    }
    fn timer(&self) -> Arc<dyn Timer> {
        self.timer.clone()
    }
    fn options(&self) -> NvmeOptions {
        self.options
    }
    fn serial(&self) -> Option<String> {
        Some("dmakit0".into())
    }
    fn resources(&self) -> Vec<(&'static str, u64)> {
        let s = self.m.stats();
        let mut v = vec![
            ("pages in use", s.used_pages()),
            ("wired pages", s.wired_pages),
            ("allocations", s.allocations),
        ];
        if let Some(mp) = self.nvme.function().mapper() {
            let (live, entries) = mp.usage();
            v.push(("IO allocations", live as u64));
            v.push(("IO page mappings", entries as u64));
        }
        v
    }
    fn stored(&self, nsid: u32, offset: u64, len: usize) -> Option<Vec<u8>> {
        self.nvme.namespace_bytes(nsid, offset, len).ok()
    }
}

/// Blocks of `lba` bytes in a 64 MiB namespace.
pub fn blocks(lba: u32) -> u64 {
    (64u64 << 20) / lba as u64
}
