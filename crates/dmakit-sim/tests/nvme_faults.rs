//! A fault at every allocation, pin, translation, mapping, register access and device DMA
//! step of an NVMe transfer leaves nothing behind: the simulator's pages, wirings and IO
//! mappings, and the dma-debug ledger's live preparations (alone in its process, so the
//! ledger counts this test's commands only).

use dmakit_nvme::suite::{self, TestMachine};
use dmakit_nvme::QueueOptions;
use dmakit_sim::nvme::SimNvme;
use dmakit_sim::pci::{DmaMode, PciFaultSite};
use dmakit_sim::FaultSite;

mod nvme_common;
use nvme_common::{blocks, Sim};

/// The simulator's counters and the ledger's live preparations.
fn resources(sim: &Sim) -> Vec<(&'static str, u64)> {
    let mut r = sim.resources();
    r.push((
        "live preparations (dma-debug ledger)",
        dmakit::debug::outstanding(0).len() as u64,
    ));
    r
}

/// Runs one scattered and bounced write + read with a fault injected at `nth` call of
/// `site`, then checks that every resource is back.
fn transfer_with_fault(seed: u64, inject: &dyn Fn(&Sim), sim_dma: DmaMode) -> (bool, String) {
    let sim = Sim::new(seed, SimNvme::builder().blocks(blocks(512)), sim_dma);
    let before = resources(&sim);
    let outcome = {
        let nvme = sim.driver();
        let ns = nvme.namespace(1).unwrap();
        let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        let src = suite::scattered(&sim.m, &[(5000, 12), (3192, 0), (8192, 0)]).unwrap();
        let dst = suite::scattered(&sim.m, &[(8192, 0), (8192, 0)]).unwrap();
        let data = suite::pattern(seed, 16384);
        assert_eq!(src.write_bytes(0, &data), data.len());
        inject(&sim);
        let r = q
            .write(&ns, 100, &src, 0, 16384)
            .and_then(|_| q.read(&ns, 100, &dst, 0, 16384));
        sim.m.clear_faults();
        sim.bus.clear_faults();
        let desc = match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        if r.is_ok() {
            let mut got = vec![0u8; 16384];
            assert_eq!(dst.read_bytes(0, &mut got), got.len());
            assert_eq!(
                got, data,
                "a transfer that succeeded under faults moved wrong bytes"
            );
        }
        // A later recovery gives back what a failed command held.
        let _ = nvme.recover(false);
        drop(q);
        (r.is_ok(), desc)
    };
    let after = resources(&sim);
    assert_eq!(before, after, "leak after fault ({})", outcome.1);
    outcome
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: reruns the NVMe suite once per fault point"
)]
fn a_fault_at_every_allocation_mapping_and_doorbell_step_leaves_nothing_behind() {
    for dma in [
        DmaMode::DEFAULT_IOMMU,
        DmaMode::Bypass {
            max_address: 0x0FFF_FFFF,
        },
    ] {
        // How many calls each site sees in a clean run, after bring-up.
        let calls = |site: &dyn Fn(&Sim) -> u64| {
            let sim = Sim::new(20, SimNvme::builder().blocks(blocks(512)), dma);
            let nvme = sim.driver();
            let ns = nvme.namespace(1).unwrap();
            let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
            let src = suite::scattered(&sim.m, &[(5000, 12), (3192, 0), (8192, 0)]).unwrap();
            let dst = suite::scattered(&sim.m, &[(8192, 0), (8192, 0)]).unwrap();
            let start = site(&sim);
            q.write(&ns, 100, &src, 0, 16384).unwrap();
            q.read(&ns, 100, &dst, 0, 16384).unwrap();
            site(&sim) - start
        };
        let machine_sites = [
            FaultSite::PhysAlloc,
            FaultSite::Pin,
            FaultSite::Translate,
            FaultSite::Map,
        ];
        let mut failures = 0;
        for site in machine_sites {
            let n = calls(&|s: &Sim| s.m.stats().calls(site));
            for nth in 1..=n {
                let (ok, _) = transfer_with_fault(
                    20,
                    &|s: &Sim| {
                        let base = s.m.stats().calls(site);
                        s.m.inject(site, base + nth);
                    },
                    dma,
                );
                failures += !ok as u32;
            }
        }
        // Doorbells and every other register access, and the device's own DMA.
        for site in [PciFaultSite::Bar, PciFaultSite::Dma] {
            let n = calls(&|s: &Sim| s.bus.calls(site));
            for nth in 1..=n {
                let (ok, _) = transfer_with_fault(
                    20,
                    &|s: &Sim| {
                        let base = s.bus.calls(site);
                        s.bus.inject(site, base + nth);
                    },
                    dma,
                );
                failures += !ok as u32;
            }
        }
        assert!(
            failures > 0,
            "no injected fault made a transfer fail ({dma:?})"
        );
    }
}
