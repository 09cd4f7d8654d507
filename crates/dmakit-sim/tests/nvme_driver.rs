//! The portable NVMe driver (`dmakit-nvme`) on the simulated controller: the same test
//! functions the QEMU guest runs (`dmakit_nvme::suite`), under every hostile knob of the
//! model, plus what only a simulator can do: fatal controller status on demand, completions
//! that never come, a fault injected at every allocation, mapping and doorbell of a
//! transfer, and a property test of random transfers over random descriptors and knobs,
//! byte-exact against the model's store with nothing left behind.

use dmakit::device::PciBus;
use dmakit_nvme::suite::{self, TestMachine};
use dmakit_nvme::{Nvme, NvmeError, NvmeOptions, PollTimer, QueueOptions};
use dmakit_sim::nvme::{CommandFault, Reorder, SimNvme};
use dmakit_sim::pci::{DmaMode, SimPciBus};
use dmakit_sim::MachineBuilder;
use proptest::prelude::*;
use std::sync::Arc;

mod nvme_common;
use nvme_common::{blocks, Sim, M};

fn run_suite(sim: &Sim, what: &str) {
    let mut failed = Vec::new();
    for (name, t) in suite::tests::<M>() {
        if let Err(e) = suite::run(sim, t) {
            failed.push(format!("{name} ({what}): {e}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: the whole NVMe driver suite, minutes interpreted; its variants run natively"
)]
fn the_suite_passes_on_the_default_controller_through_the_iommu() {
    let sim = Sim::new(
        1,
        SimNvme::builder().blocks(blocks(512)),
        DmaMode::DEFAULT_IOMMU,
    );
    run_suite(&sim, "default");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: the whole NVMe driver suite, minutes interpreted; its variants run natively"
)]
fn the_suite_passes_with_4096_byte_blocks() {
    let b = SimNvme::builder().lba_size(4096).blocks(blocks(4096));
    run_suite(&Sim::new(2, b, DmaMode::DEFAULT_IOMMU), "4K LBA");
}

#[test]
fn the_suite_passes_with_the_smallest_mdts() {
    let b = SimNvme::builder().mdts(1).blocks(blocks(512));
    run_suite(&Sim::new(3, b, DmaMode::DEFAULT_IOMMU), "MDTS 1");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: the whole NVMe driver suite, minutes interpreted; its variants run natively"
)]
fn the_suite_passes_without_an_mdts_and_chains_prp_lists() {
    let b = SimNvme::builder().mdts(0).blocks(blocks(512));
    let sim = Sim::new(4, b, DmaMode::DEFAULT_IOMMU);
    run_suite(&sim, "MDTS 0");
    // 4 MiB in one command from mid-page: 1024 entries after PRP1 need three list pages.
    let mut sim = sim;
    sim.options = sim.options.max_transfer(4 << 20).bounce_bytes(4 << 20);
    let nvme = sim.driver();
    assert_eq!(nvme.max_transfer(), 4 << 20);
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(16)).unwrap();
    let md = suite::buffer(&sim.m, (4 << 20) + 4096).unwrap();
    let t = q.write(&ns, 0, &md, 512, 4 << 20).unwrap();
    assert_eq!((t.commands, t.prp_entries, t.list_pages), (1, 1025, 3));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: the whole NVMe driver suite, minutes interpreted; its variants run natively"
)]
fn the_suite_passes_with_delays_reordering_a_wide_doorbell_stride_and_few_slots() {
    let b = SimNvme::builder()
        .blocks(blocks(512))
        .completion_delay(7)
        .reorder(Reorder::Any)
        .doorbell_stride(3)
        .ready_delay(20)
        .max_queue_entries(9);
    run_suite(&Sim::new(5, b, DmaMode::DEFAULT_IOMMU), "hostile schedule");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: the whole NVMe driver suite, minutes interpreted; its variants run natively"
)]
fn the_suite_passes_bypassing_the_iommu_below_a_28_bit_limit() {
    let b = SimNvme::builder().blocks(blocks(512));
    let dma = DmaMode::Bypass {
        max_address: 0x0FFF_FFFF,
    };
    run_suite(&Sim::new(6, b, dma), "bypass, 28-bit");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: the whole NVMe driver suite, minutes interpreted; its variants run natively"
)]
fn the_suite_passes_on_a_coherent_machine() {
    let b = SimNvme::builder().lba_size(4096).blocks(blocks(4096));
    run_suite(&Sim::on(7, b, DmaMode::DEFAULT_IOMMU, true), "coherent");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: the whole NVMe driver suite, minutes interpreted; its variants run natively"
)]
fn the_suite_passes_on_a_machine_with_16_kib_pages() {
    let b = SimNvme::builder().blocks(blocks(512));
    let machine = MachineBuilder::new().page_size(dmakit::PageSize::new(16384).unwrap());
    run_suite(
        &Sim::with(machine, 15, b, DmaMode::DEFAULT_IOMMU),
        "16 KiB pages",
    );
}

#[test]
fn a_fatal_status_fails_the_outstanding_commands_by_name_and_the_controller_recovers() {
    let sim = Sim::new(
        8,
        SimNvme::builder().blocks(blocks(512)),
        DmaMode::DEFAULT_IOMMU,
    );
    let before = sim.resources();
    {
        let nvme = sim.driver();
        let ns = nvme.namespace(1).unwrap();
        let mut q = nvme.io_queue(QueueOptions::new(16)).unwrap();
        let bufs: Vec<_> = (0..3)
            .map(|_| dmakit_nvme::DmaBuffer::new(&sim.m, &nvme.dma_view(), 4096).unwrap())
            .collect();
        let cids: Vec<u16> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| q.submit_read(&ns, i as u64 * 8, b, 0, 4096).unwrap())
            .collect();
        sim.nvme.raise_fatal();
        q.ring().unwrap();
        let mut done = Vec::new();
        q.wait_completions(true, |d| done.push(d)).unwrap();
        assert_eq!(done.len(), 3);
        for d in &done {
            assert!(cids.contains(&d.cid));
            match &d.result {
                Err(e @ NvmeError::ControllerFatal { qid, cid, op }) => {
                    assert_eq!((*qid, *cid), (q.id(), d.cid));
                    assert_eq!(op.blocks, 8);
                    assert!(e.to_string().contains("fatal status"), "{e}");
                }
                other => panic!("expected a fatal-status error, got {other:?}"),
            }
        }
        assert!(nvme.fatal_status().unwrap());
        // Their memory is held until the reset: nothing the controller may reach is freed.
        assert!(nvme.stats().held_for_reset >= 3);
        // The next command resets the controller and re-creates the queue pair.
        let md = suite::buffer(&sim.m, 4096).unwrap();
        q.read(&ns, 0, &md, 0, 4096).unwrap();
        assert_eq!(nvme.stats().recoveries, 1);
        assert_eq!(q.stats().recreated, 1);
        assert!(!nvme.fatal_status().unwrap());
        assert_eq!(nvme.generation(), 1);
        drop(bufs);
    }
    assert_eq!(before, sim.resources());
}

#[test]
fn a_planned_fatal_status_mid_transfer_is_recovered_by_the_next_command() {
    let b = SimNvme::builder().blocks(blocks(512)).fatal_after(12);
    let sim = Sim::new(9, b, DmaMode::DEFAULT_IOMMU);
    let before = sim.resources();
    {
        let nvme = sim.driver();
        let ns = nvme.namespace(1).unwrap();
        let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        let md = suite::buffer(&sim.m, 64 << 10).unwrap();
        let data = suite::pattern(9, 64 << 10);
        assert_eq!(md.write_bytes(0, &data), data.len());
        let mut fatal = 0;
        for i in 0..20u64 {
            match q.write(&ns, i * 128, &md, 0, 64 << 10) {
                Ok(_) => {}
                Err(NvmeError::ControllerFatal { .. }) => fatal += 1,
                Err(e) => panic!("write {i}: {e}"),
            }
        }
        assert_eq!(fatal, 1);
        assert_eq!(nvme.stats().recoveries, 1);
        let back = suite::buffer(&sim.m, 64 << 10).unwrap();
        q.read(&ns, 19 * 128, &back, 0, 64 << 10).unwrap();
        let mut got = vec![0u8; 64 << 10];
        assert_eq!(back.read_bytes(0, &mut got), got.len());
        assert_eq!(got, data);
    }
    assert_eq!(before, sim.resources());
}

#[test]
fn a_command_that_never_completes_times_out_by_name_and_its_memory_waits_for_the_reset() {
    let b = SimNvme::builder().blocks(blocks(512));
    let mut sim = Sim::new(10, b, DmaMode::DEFAULT_IOMMU);
    sim.options = NvmeOptions::new().command_timeout_ms(5);
    let before = sim.resources();
    {
        let nvme = sim.driver();
        let ns = nvme.namespace(1).unwrap();
        let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        // From now on the controller takes far longer than the timeout.
        sim.nvme.set_completion_delay(u32::MAX);
        let md = suite::buffer(&sim.m, 8192).unwrap();
        let e = q.read(&ns, 0, &md, 0, 8192).unwrap_err();
        match &e {
            NvmeError::Timeout {
                qid, op, waited_ms, ..
            } => {
                assert_eq!(*qid, q.id());
                assert_eq!(op.blocks, 16);
                assert!(*waited_ms >= 5);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(e.io_return(), dmakit::IoReturn::TIMEOUT);
        assert!(nvme.stats().held_for_reset >= 1);
        sim.nvme.set_completion_delay(0);
        nvme.recover(false).unwrap();
        assert_eq!(nvme.stats().recoveries, 1);
    }
    assert_eq!(before, sim.resources());
}

#[test]
fn a_command_error_names_the_command_and_loses_nothing() {
    let sim = Sim::new(
        11,
        SimNvme::builder().blocks(blocks(512)),
        DmaMode::DEFAULT_IOMMU,
    );
    let before = sim.resources();
    {
        let nvme = sim.driver();
        let ns = nvme.namespace(1).unwrap();
        let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        sim.nvme.inject(CommandFault::io(
            0x02,
            dmakit_sim::nvme::Status::UNRECOVERED_READ_ERROR,
        ));
        let md = suite::buffer(&sim.m, 4096).unwrap();
        let e = q.read(&ns, 40, &md, 0, 4096).unwrap_err();
        match e {
            NvmeError::Status {
                op, qid, status, ..
            } => {
                assert_eq!((op.lba, op.blocks, qid), (40, 8, q.id()));
                assert_eq!(status >> 8 & 7, 2);
            }
            other => panic!("expected a status error, got {other:?}"),
        }
        q.read(&ns, 40, &md, 0, 4096).unwrap();
    }
    assert_eq!(before, sim.resources());
}

/// A queue pair whose submission queue the controller refuses, and whose completion queue
/// it then refuses to delete: that completion queue stays on the controller, pointing at
/// the ring's memory, so the memory and the queue identifier are kept until the reset the
/// next command does; after it a queue pair comes up under the same identifier, and at the
/// end everything is given back.
#[test]
fn a_completion_queue_the_controller_will_not_delete_keeps_its_memory_until_a_reset() {
    use dmakit_nvme::command::{ADMIN_CREATE_SQ, ADMIN_DELETE_CQ};
    use dmakit_sim::nvme::Status;
    let sim = Sim::new(
        13,
        SimNvme::builder().blocks(blocks(512)),
        DmaMode::DEFAULT_IOMMU,
    );
    let before = sim.resources();
    {
        let nvme = sim.driver();
        let ns = nvme.namespace(1).unwrap();
        let clean = sim.resources();
        sim.nvme
            .inject(CommandFault::admin(ADMIN_CREATE_SQ, Status::INVALID_FIELD));
        sim.nvme
            .inject(CommandFault::admin(ADMIN_DELETE_CQ, Status::INVALID_FIELD));
        let e = nvme.io_queue(QueueOptions::new(8)).unwrap_err();
        assert!(matches!(e, NvmeError::Status { .. }), "{e}");
        assert_eq!(nvme.stats().held_for_reset, 1, "the ring is held");
        assert_ne!(sim.resources(), clean, "the ring's memory is kept");
        let recoveries = nvme.stats().recoveries;
        let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        assert_eq!(nvme.stats().recoveries, recoveries + 1, "reset first");
        assert_eq!(q.id(), 1, "the identifier came back with the reset");
        let md = suite::buffer(&sim.m, 4096).unwrap();
        q.read(&ns, 0, &md, 0, 4096).unwrap();
        // The same when the queue pair is created again after a reset: the queue dropped
        // then keeps its ring for the next reset.
        nvme.recover(true).unwrap();
        sim.nvme
            .inject(CommandFault::admin(ADMIN_CREATE_SQ, Status::INVALID_FIELD));
        sim.nvme
            .inject(CommandFault::admin(ADMIN_DELETE_CQ, Status::INVALID_FIELD));
        assert!(q.read(&ns, 0, &md, 0, 4096).is_err());
        let held = nvme.stats().held_for_reset;
        drop(q);
        assert_eq!(nvme.stats().held_for_reset, held + 1, "the ring is held");
        let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        q.read(&ns, 0, &md, 0, 4096).unwrap();
    }
    assert_eq!(before, sim.resources());
}

#[test]
fn two_threads_on_two_queue_pairs_complete_byte_exact() {
    let b = SimNvme::builder().blocks(blocks(512)).reorder(Reorder::Any);
    let sim = Sim::new(12, b, DmaMode::DEFAULT_IOMMU);
    let before = sim.resources();
    {
        let nvme = sim.driver();
        let ns = nvme.namespace(1).unwrap();
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u64)
                .map(|t| {
                    let nvme = nvme.clone();
                    let m = sim.m.clone();
                    s.spawn(move || {
                        let mut q = nvme.io_queue(QueueOptions::new(16)).unwrap();
                        suite::worker(&m, &mut q, &ns, 1000 + t * 4096, 64, 20, t + 1)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            r.unwrap();
        }
    }
    assert_eq!(before, sim.resources());
}

#[test]
fn io_queues_are_limited_to_what_the_controller_grants_and_identifiers_are_reused() {
    let b = SimNvme::builder().blocks(blocks(512)).io_queues(2);
    let sim = Sim::new(13, b, DmaMode::DEFAULT_IOMMU);
    let nvme = sim.driver();
    assert_eq!(nvme.io_queue_limit(), 2);
    let a = nvme.io_queue(QueueOptions::new(4)).unwrap();
    let b2 = nvme.io_queue(QueueOptions::new(4)).unwrap();
    assert_eq!((a.id(), b2.id()), (1, 2));
    assert!(matches!(
        nvme.io_queue(QueueOptions::new(4)),
        Err(NvmeError::Dma(dmakit::Error::NoResources { .. }))
    ));
    drop(a);
    assert_eq!(nvme.io_queue(QueueOptions::new(4)).unwrap().id(), 1);
    assert!(nvme.io_queue(QueueOptions::new(1)).is_err());
    assert!(nvme.io_queue(QueueOptions::new(4).interrupt(99)).is_err());
}

#[test]
fn interrupts_count_on_a_queue_with_a_vector() {
    let sim = Sim::new(
        14,
        SimNvme::builder().blocks(blocks(512)),
        DmaMode::DEFAULT_IOMMU,
    );
    let nvme = sim.driver();
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(8).interrupt(1)).unwrap();
    let md = suite::buffer(&sim.m, 4096).unwrap();
    for i in 0..4 {
        q.read(&ns, i, &md, 0, 4096).unwrap();
    }
    assert!(q.stats().interrupts >= 4, "{:?}", q.stats());
}

#[test]
fn not_an_nvme_function_is_refused() {
    let m: M = Arc::new(MachineBuilder::new().build().unwrap());
    let bus = SimPciBus::new(m.clone()).unwrap();
    dmakit_sim::edu::SimEdu::builder().attach(&bus).unwrap();
    let f = bus.functions().remove(0);
    let e = Nvme::new(m, f, Arc::new(PollTimer::default()), NvmeOptions::new()).unwrap_err();
    assert!(
        matches!(e, NvmeError::Dma(dmakit::Error::NotAttached { .. })),
        "{e}"
    );
}

/// A transfer the property test makes: descriptor pieces `(len, offset in own buffer)`
/// and the block to start at.
fn pieces() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((1u64..3u64 << 12, 0u64..4096), 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 24 }, .. ProptestConfig::default() })]
    #[test]
    fn random_transfers_over_random_descriptors_and_knobs_are_byte_exact(
        seed in 0u64..1_000_000,
        parts in pieces(),
        lba4k in any::<bool>(),
        mdts in 0u8..6,
        bypass in any::<bool>(),
        delay in 0u32..4,
        lba in 0u64..2000,
    ) {
        let lba_size = if lba4k { 4096 } else { 512 };
        let b = SimNvme::builder()
            .lba_size(lba_size)
            .blocks(blocks(lba_size))
            .mdts(mdts)
            .completion_delay(delay)
            .reorder(Reorder::Any);
        let dma = if bypass { DmaMode::Bypass { max_address: 0x0FFF_FFFF } } else { DmaMode::DEFAULT_IOMMU };
        let sim = Sim::new(seed, b, dma);
        let before = sim.resources();
        {
            let nvme = sim.driver();
            let ns = nvme.namespace(1).unwrap();
            let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
            // Round the descriptor up to whole blocks with a last piece.
            let total: u64 = parts.iter().map(|p| p.0).sum();
            let mut parts = parts.clone();
            let pad = total.next_multiple_of(lba_size as u64) - total;
            if pad > 0 {
                parts.push((pad, seed % 4096));
            }
            let len = total + pad;
            let src = suite::scattered(&sim.m, &parts).unwrap();
            let dst = suite::scattered(&sim.m, &parts.iter().rev().cloned().collect::<Vec<_>>()).unwrap();
            let data = suite::pattern(seed, len as usize);
            prop_assert_eq!(src.write_bytes(0, &data), data.len());
            q.write(&ns, lba, &src, 0, len).unwrap();
            let stored = sim.nvme.namespace_bytes(1, lba * lba_size as u64, len as usize).unwrap();
            prop_assert!(stored == data, "store differs");
            q.read(&ns, lba, &dst, 0, len).unwrap();
            let mut got = vec![0u8; len as usize];
            prop_assert_eq!(dst.read_bytes(0, &mut got), got.len());
            prop_assert!(got == data, "read back differs");
        }
        prop_assert_eq!(before, sim.resources());
    }
}
