//! The NVMe driver (`dmakit-nvme`) against controller configurations other than QEMU's, on
//! the simulated controller: tiny queues (CAP.MQES), wide doorbell strides (CAP.DSTRD), a
//! minimum memory page above 4 KiB (CAP.MPSMIN), short and long ready timeouts (CAP.TO),
//! every MDTS from none to one page pair, LBA sizes from 512 B to 64 KiB, metadata per
//! block, namespaces of one block and near the 64-bit limit, fewer I/O queues than asked
//! for, slow CSTS.RDY, fatal status and failing admin commands at bring-up, phase-tag
//! wrap and completions out of order.
//!
//! Each configuration either works (data written and read back byte-exact, checked
//! against the model's store, never by the completion status alone) or is refused at
//! bring-up or at the call with a clear error; never a panic, a hang or wrong data.

use dmakit::Error;
use dmakit_nvme::identify::NamespaceIdentity;
use dmakit_nvme::suite::{self, pattern};
use dmakit_nvme::{DmaBuffer, Nvme, NvmeError, PollTimer, QueueOptions, Timer};
use dmakit_sim::nvme::command::admin;
use dmakit_sim::nvme::{CommandFault, Reorder, SimNvme, SimNvmeBuilder, Status};
use dmakit_sim::pci::DmaMode;
use std::sync::Arc;

mod nvme_common;
use nvme_common::{Sim, M};

fn sim(seed: u64, b: SimNvmeBuilder) -> Sim {
    Sim::new(seed, b, DmaMode::DEFAULT_IOMMU)
}

fn try_driver(s: &Sim) -> Result<Nvme<M>, NvmeError> {
    Nvme::new(s.m.clone(), s.f.clone(), s.timer.clone(), s.options)
}

/// A round trip (see [`round_trip`]) on namespace 1 through a new queue of `entries`.
fn queue_round_trip(s: &Sim, nvme: &Nvme<M>, entries: u16, lba: u64, len: u64, seed: u64) {
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(entries)).unwrap();
    round_trip(s, &mut q, &ns, lba, len, seed);
}

/// Writes `len` bytes of a pattern at `lba` through `q`, checks the model's store holds
/// them, reads them back into a fresh buffer and checks that too.
fn round_trip(
    s: &Sim,
    q: &mut dmakit_nvme::IoQueue<M>,
    ns: &NamespaceIdentity,
    lba: u64,
    len: u64,
    seed: u64,
) {
    let data = pattern(seed, len as usize);
    let out = suite::buffer(&s.m, len).unwrap();
    assert_eq!(out.write_bytes(0, &data), len as usize);
    q.write(ns, lba, &out, 0, len).unwrap();
    let stored = s
        .nvme
        .namespace_bytes(ns.nsid, lba * ns.block_size as u64, len as usize)
        .unwrap();
    assert!(
        stored == data,
        "the model's store holds what was written at LBA {lba}"
    );
    let back = suite::buffer(&s.m, len).unwrap();
    q.read(ns, lba, &back, 0, len).unwrap();
    let mut got = vec![0u8; len as usize];
    assert_eq!(back.read_bytes(0, &mut got), len as usize);
    assert!(got == data, "read back what was written at LBA {lba}");
}

#[test]
fn tiny_queues_wrap_their_phase_tags_many_times() {
    for entries in [2u32, 3, 4] {
        let s = sim(
            entries as u64,
            SimNvme::builder().max_queue_entries(entries).blocks(4096),
        );
        let nvme = s.driver();
        let ns = nvme.namespace(1).unwrap();
        let mut q = nvme.io_queue(QueueOptions::new(entries as u16)).unwrap();
        for i in 0..(3 * entries as u64 + 5) {
            round_trip(&s, &mut q, &ns, i * 3, 1024, i);
        }
        // The admin queue is as small (it takes MQES too) and wraps as well.
        for _ in 0..7 {
            assert_eq!(nvme.identify_controller().unwrap().serial, "dmakit0");
        }
    }
}

#[test]
fn queued_commands_on_a_tiny_queue_complete_out_of_order() {
    let b = SimNvme::builder()
        .max_queue_entries(4)
        .blocks(4096)
        .completion_delay(3)
        .reorder(Reorder::Any);
    let s = sim(7, b);
    let nvme = s.driver();
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(4)).unwrap();
    let view = nvme.dma_view();
    for round in 0..6u64 {
        // Three in flight (a 4-slot ring holds 3), completed in any order.
        let bufs: Vec<DmaBuffer<M>> = (0..3)
            .map(|_| DmaBuffer::new(&s.m, &view, 4096).unwrap())
            .collect();
        let mut want = Vec::new();
        for (i, b) in bufs.iter().enumerate() {
            let d = pattern(round * 8 + i as u64, 4096);
            b.write(0, &d).unwrap();
            q.submit_write(&ns, 8 * i as u64, b, 0, 4096).unwrap();
            want.push(d);
        }
        let full = DmaBuffer::new(&s.m, &view, 4096).unwrap();
        assert!(
            q.submit_write(&ns, 100, &full, 0, 512).is_err(),
            "a fourth command does not fit a 4-slot ring"
        );
        q.ring().unwrap();
        let mut done = 0;
        while done < 3 {
            q.wait_completions(true, |d| {
                d.result.unwrap();
                done += 1;
            })
            .unwrap();
        }
        for (i, d) in want.iter().enumerate() {
            let stored = s.nvme.namespace_bytes(1, 8 * i as u64 * 512, 4096).unwrap();
            assert!(&stored == d, "round {round} command {i}");
        }
    }
}

#[test]
fn wide_doorbell_strides_reach_the_right_doorbells() {
    for stride in [1u8, 2, 4, 8] {
        let s = sim(
            20 + stride as u64,
            SimNvme::builder().doorbell_stride(stride).io_queues(3),
        );
        let nvme = s.driver();
        let ns = nvme.namespace(1).unwrap();
        let mut qs: Vec<_> = (0..3)
            .map(|_| nvme.io_queue(QueueOptions::new(8)).unwrap())
            .collect();
        for (i, q) in qs.iter_mut().enumerate() {
            round_trip(
                &s,
                q,
                &ns,
                64 * i as u64,
                8192,
                stride as u64 * 10 + i as u64,
            );
        }
        assert_eq!(s.nvme.stats().ignored_doorbells, 0, "stride {stride}");
    }
}

#[test]
fn a_minimum_memory_page_above_4k_is_refused_at_bring_up() {
    for mpsmin in [1u8, 2, 4] {
        let s = sim(30, SimNvme::builder().mpsmin(mpsmin));
        let e = try_driver(&s).unwrap_err();
        assert!(
            matches!(e, NvmeError::Dma(Error::Unsupported { what }) if what.contains("minimum memory page")),
            "MPSMIN {mpsmin}: {e}"
        );
        assert_eq!(s.nvme.stats().commands, 0, "nothing was submitted");
    }
}

#[test]
fn every_mdts_splits_transfers_the_controller_takes() {
    for (mdts, lba) in [
        (0u8, 512u32),
        (1, 512),
        (1, 4096),
        (2, 4096),
        (3, 512),
        (10, 4096),
    ] {
        let s = sim(
            40 + mdts as u64,
            SimNvme::builder().mdts(mdts).lba_size(lba),
        );
        let nvme = s.driver();
        let want = if mdts == 0 {
            2 << 20
        } else {
            (4096u64 << mdts).min(2 << 20)
        };
        assert_eq!(nvme.max_transfer(), want, "MDTS {mdts}");
        let ns = nvme.namespace(1).unwrap();
        let mut q = nvme.io_queue(QueueOptions::new(16)).unwrap();
        round_trip(&s, &mut q, &ns, 3, 64 << 10, mdts as u64);
        assert_eq!(s.nvme.stats().errors, 0, "MDTS {mdts}, {lba}-byte blocks");
    }
}

#[test]
fn fewer_io_queues_than_asked_for_are_all_the_driver_uses() {
    let mut s = sim(70, SimNvme::builder().io_queues(1));
    s.options = s.options.io_queues(16);
    let nvme = s.driver();
    assert_eq!(nvme.io_queue_limit(), 1);
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(8).interrupt(1)).unwrap();
    assert!(
        matches!(
            nvme.io_queue(QueueOptions::new(8)).unwrap_err(),
            NvmeError::Dma(Error::NoResources { .. })
        ),
        "a second queue pair the controller did not grant"
    );
    round_trip(&s, &mut q, &ns, 0, 8192, 70);
    assert_eq!(q.id(), 1);
    drop(q);
    let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
    assert_eq!(q.id(), 1, "the identifier came back");
    round_trip(&s, &mut q, &ns, 40, 512, 71);
}

/// A simulator whose timer counts a millisecond per pause, so CAP.TO (500 ms units) is a few
/// hundred looks at CSTS.
fn slow_clock(seed: u64, b: SimNvmeBuilder) -> Sim {
    let mut s = sim(seed, b);
    s.timer = Arc::new(PollTimer::new(1_000_000));
    s
}

#[test]
fn ready_timeouts_short_and_long() {
    // RDY after 300 looks, within CAP.TO = 500 ms.
    let s = slow_clock(80, SimNvme::builder().ready_timeout(1).ready_delay(300));
    let nvme = try_driver(&s).unwrap();
    queue_round_trip(&s, &nvme, 4, 2, 1024, 80);
    // RDY never comes: refused once CAP.TO has passed, not sooner and not never.
    let s = slow_clock(
        81,
        SimNvme::builder().ready_timeout(2).ready_delay(u32::MAX),
    );
    let before = s.timer.now_ns();
    let e = try_driver(&s).unwrap_err();
    let waited = s.timer.now_ns() - before;
    assert!(
        matches!(e, NvmeError::Dma(Error::NotReady { what, .. }) if what.contains("CAP.TO")),
        "{e}"
    );
    assert!(
        (1_000_000_000..1_100_000_000).contains(&waited),
        "waited {waited} ns"
    );
    // CAP.TO = 0 (a controller that claims no time at all) still gets a 500 ms wait.
    let s = slow_clock(82, SimNvme::builder().ready_timeout(0).ready_delay(50));
    assert!(try_driver(&s).is_ok());
    // The longest CAP.TO (127.5 s) with a slow controller.
    let s = slow_clock(
        83,
        SimNvme::builder().ready_timeout(0xFF).ready_delay(20_000),
    );
    assert!(try_driver(&s).is_ok());
}

#[test]
fn fatal_status_and_failing_admin_commands_at_bring_up_are_clear_errors() {
    // CSTS.CFS on the first admin command (Set Features, Number of Queues).
    let s = sim(90, SimNvme::builder().fatal_after(1));
    let e = try_driver(&s).unwrap_err();
    assert!(matches!(e, NvmeError::ControllerFatal { .. }), "{e}");
    // The next bring-up disables the controller (clearing CFS) and works.
    let nvme = s.driver();
    queue_round_trip(&s, &nvme, 4, 5, 512, 90);
    drop(nvme);

    for (opcode, status) in [
        (admin::SET_FEATURES, Status::INVALID_FIELD.dnr()),
        (admin::IDENTIFY, Status::INTERNAL_ERROR),
    ] {
        let s = sim(
            91,
            SimNvme::builder().fault(CommandFault::admin(opcode, status)),
        );
        let e = try_driver(&s).unwrap_err();
        assert!(
            matches!(e, NvmeError::Status { op, status, .. } if op.opcode == opcode && status != 0),
            "opcode {opcode:#x}: {e}"
        );
        assert!(s.driver().namespace(1).is_ok());
    }
}

#[test]
fn a_failed_queue_creation_gives_its_identifier_back() {
    for opcode in [admin::CREATE_CQ, admin::CREATE_SQ] {
        let s = sim(100, SimNvme::builder().io_queues(1));
        let nvme = s.driver();
        let ns = nvme.namespace(1).unwrap();
        s.nvme.inject(CommandFault::admin(
            opcode,
            Status::INVALID_QUEUE_SIZE.dnr(),
        ));
        let e = nvme.io_queue(QueueOptions::new(8)).unwrap_err();
        assert!(matches!(e, NvmeError::Status { .. }), "{e}");
        let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        assert_eq!(q.id(), 1);
        round_trip(&s, &mut q, &ns, 1, 512, opcode as u64);
    }
}

#[test]
fn namespaces_of_one_block_and_near_the_64_bit_limit() {
    let s = sim(110, SimNvme::builder().blocks(1));
    let nvme = s.driver();
    let ns = nvme.namespace(1).unwrap();
    assert_eq!((ns.blocks, ns.block_size), (1, 512));
    let mut q = nvme.io_queue(QueueOptions::new(4)).unwrap();
    round_trip(&s, &mut q, &ns, 0, 512, 110);
    let md = suite::buffer(&s.m, 1024).unwrap();
    for (lba, len) in [(0u64, 1024u64), (1, 512), (u64::MAX, 512)] {
        let e = q.write(&ns, lba, &md, 0, len).unwrap_err();
        assert!(
            matches!(e, NvmeError::Dma(Error::OutOfBounds { .. })),
            "{e}"
        );
    }
    assert_eq!(s.nvme.stats().errors, 0, "refused before anything was sent");

    // 2^52 blocks of 4 KiB: the whole 64-bit byte range (the store is sparse).
    let blocks = u64::MAX / 4096;
    let s = sim(111, SimNvme::builder().lba_size(4096).blocks(blocks));
    let nvme = s.driver();
    let ns = nvme.namespace(1).unwrap();
    assert_eq!(ns.blocks, blocks);
    let mut q = nvme.io_queue(QueueOptions::new(4)).unwrap();
    // Across the 32-bit LBA boundary (CDW10/CDW11), and the very last blocks.
    round_trip(&s, &mut q, &ns, (1 << 32) - 1, 8192, 111);
    round_trip(&s, &mut q, &ns, blocks - 2, 8192, 112);
    let e = q.write(&ns, blocks - 1, &md, 0, 8192).unwrap_err();
    assert!(
        matches!(e, NvmeError::Dma(Error::OutOfBounds { .. })),
        "{e}"
    );
}

#[test]
fn a_format_with_metadata_per_block_is_refused() {
    for (lba, ms) in [(512u32, 8u16), (4096, 8), (4096, 64)] {
        let s = sim(120, SimNvme::builder().lba_size(lba).metadata_bytes(ms));
        let nvme = s.driver();
        let e = nvme.namespace(1).unwrap_err();
        assert!(
            matches!(e, NvmeError::Dma(Error::Unsupported { what }) if what.contains("metadata")),
            "{lba}+{ms}: {e}"
        );
    }
}

#[test]
fn identify_of_a_namespace_the_controller_lacks_is_an_error() {
    let s = sim(130, SimNvme::builder());
    let nvme = s.driver();
    for nsid in [0u32, 2, 0xFFFF_FFFF] {
        let e = nvme.namespace(nsid).unwrap_err();
        assert!(matches!(e, NvmeError::Status { .. }), "{nsid}: {e}");
    }
    assert!(nvme.namespace(1).is_ok());
}

#[test]
fn blocks_larger_than_a_page_work_or_are_refused() {
    for lba in [8192u32, 16384, 65536] {
        for mdts in [0u8, 1, 2, 5] {
            let s = sim(50, SimNvme::builder().lba_size(lba).mdts(mdts));
            let nvme = s.driver();
            let ns = nvme.namespace(1).unwrap();
            assert_eq!(ns.block_size, lba);
            let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
            let len = 2 * lba as u64;
            if nvme.max_transfer() >= lba as u64 {
                round_trip(&s, &mut q, &ns, 1, len, lba as u64 + mdts as u64);
                assert_eq!(s.nvme.stats().errors, 0, "{lba}-byte blocks, MDTS {mdts}");
            } else {
                let md = suite::buffer(&s.m, len).unwrap();
                assert_eq!(md.write_bytes(0, &pattern(1, len as usize)), len as usize);
                let e = q.write(&ns, 1, &md, 0, len).unwrap_err();
                let refused = |e: &NvmeError| matches!(e, NvmeError::Dma(Error::Unsupported { what }) if what.contains("block size above"));
                assert!(
                    refused(&e),
                    "{lba}-byte blocks over a {} byte limit: {e}",
                    nvme.max_transfer()
                );
                let e = q.read(&ns, 1, &md, 0, len).unwrap_err();
                assert!(refused(&e), "read: {e}");
                let buf = DmaBuffer::new(&s.m, &nvme.dma_view(), len).unwrap();
                let e = q.write_buffer(&ns, 1, &buf, 0, lba as u64).unwrap_err();
                assert!(refused(&e), "pre-mapped buffer: {e}");
                assert_eq!(s.nvme.stats().blocks_written, 0, "nothing was sent");
                assert_eq!(s.nvme.written_blocks(), 0);
            }
        }
    }
}

#[test]
fn queue_sizes_above_mqes_are_lowered_to_what_the_controller_takes() {
    let s = sim(60, SimNvme::builder().max_queue_entries(3));
    let nvme = s.driver();
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(1024)).unwrap();
    assert_eq!(q.entries(), 3, "CAP.MQES + 1");
    round_trip(&s, &mut q, &ns, 9, 4096, 60);
    assert!(
        matches!(
            nvme.io_queue(QueueOptions::new(1)).unwrap_err(),
            NvmeError::Dma(Error::BadArgument { .. })
        ),
        "a one-slot ring holds nothing"
    );
}

#[test]
fn the_largest_mqes_does_not_overflow_the_queue_size() {
    // CAP.MQES = 0xFFFF: 65536 entries, one more than a u16 holds.
    let s = sim(61, SimNvme::builder().max_queue_entries(65536));
    let r = suite::rig(&s).unwrap();
    assert_eq!(r.q.entries(), 64);
    let nvme = s.driver();
    let q = nvme.io_queue(QueueOptions::new(u16::MAX)).unwrap();
    assert_eq!(q.entries(), u16::MAX);
}

#[test]
fn the_lba_format_in_use_is_found_past_the_first_sixteen() {
    for (lba, index) in [(4096u32, 5u8), (4096, 16), (512, 17), (4096, 63)] {
        let s = sim(
            140,
            SimNvme::builder().lba_size(lba).lba_format_index(index),
        );
        let nvme = s.driver();
        let ns = nvme.namespace(1).unwrap();
        assert_eq!(ns.block_size, lba, "format {index}");
        let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        round_trip(&s, &mut q, &ns, 3, 2 * lba as u64, index as u64);
    }
    // FLBAS naming a format past the last one the namespace lists (NLBAF) is refused.
    let mut page = [0u8; 4096];
    page[0..8].copy_from_slice(&64u64.to_le_bytes());
    page[25] = 1; // two formats
    page[26] = 2;
    page[128 + 8..128 + 12].copy_from_slice(&(12u32 << 16).to_le_bytes());
    let e = NamespaceIdentity::parse(1, &page).unwrap_err();
    assert!(
        matches!(e, Error::BadArgument { what, .. } if what.contains("NLBAF")),
        "{e}"
    );
}

#[test]
fn a_fatal_status_on_the_smallest_controller_recovers_its_one_queue() {
    let b = SimNvme::builder()
        .max_queue_entries(2)
        .io_queues(1)
        .blocks(256);
    let s = sim(150, b);
    let nvme = s.driver();
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(64)).unwrap();
    assert_eq!(q.entries(), 2);
    round_trip(&s, &mut q, &ns, 0, 512, 150);
    s.nvme.raise_fatal();
    let md = suite::buffer(&s.m, 512).unwrap();
    let e = q.read(&ns, 0, &md, 0, 512).unwrap_err();
    assert!(matches!(e, NvmeError::ControllerFatal { .. }), "{e}");
    // The next command resets the controller and re-creates the queue pair.
    round_trip(&s, &mut q, &ns, 7, 1024, 151);
    assert_eq!((nvme.generation(), q.stats().recreated), (1, 1));
}

#[test]
fn a_queue_deletion_the_controller_refuses_does_not_lose_the_queue_identifier() {
    for opcode in [admin::DELETE_SQ, admin::DELETE_CQ] {
        let s = sim(160, SimNvme::builder().io_queues(1));
        let nvme = s.driver();
        let ns = nvme.namespace(1).unwrap();
        let q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        s.nvme
            .inject(CommandFault::admin(opcode, Status::INTERNAL_ERROR));
        drop(q);
        let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
        assert_eq!(q.id(), 1, "opcode {opcode:#x}");
        round_trip(&s, &mut q, &ns, 2, 512, 160);
    }
}

#[test]
fn a_queue_dropped_with_commands_in_flight_gets_its_identifier_back_at_the_reset() {
    let s = sim(170, SimNvme::builder().io_queues(1));
    let nvme = s.driver();
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
    s.nvme.set_completion_delay(1_000_000);
    let buf = DmaBuffer::new(&s.m, &nvme.dma_view(), 4096).unwrap();
    q.submit_read(&ns, 0, &buf, 0, 4096).unwrap();
    q.ring().unwrap();
    drop(q);
    // The controller may still carry the read out: the queue pair is held, and so is its
    // identifier, until a reset.
    assert!(matches!(
        nvme.io_queue(QueueOptions::new(8)).unwrap_err(),
        NvmeError::Dma(Error::NoResources { .. })
    ));
    s.nvme.set_completion_delay(0);
    assert!(nvme.recover(true).unwrap().reset);
    let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
    assert_eq!(q.id(), 1);
    round_trip(&s, &mut q, &ns, 4, 4096, 170);
}

#[test]
fn a_controller_left_enabled_by_its_previous_owner_is_taken_over() {
    use dmakit::map::mapped_write32;
    use dmakit::PhysAddr;
    use dmakit_sim::nvme::regs;
    let s = sim(180, SimNvme::builder().ready_delay(10));
    // Firmware left it running with its own admin queues.
    let view = s.f.dma();
    let queues = DmaBuffer::<M>::new(&s.m, &view, 8192).unwrap();
    let bar0 = s.f.bar(0).unwrap().base.0;
    let w = |off: u64, v: u32| mapped_write32(&*s.m, PhysAddr(bar0 + off), v).unwrap();
    w(regs::AQA, 1 << 16 | 1);
    w(regs::ASQ, queues.device_addr() as u32);
    w(regs::ASQ + 4, (queues.device_addr() >> 32) as u32);
    w(regs::ACQ, (queues.device_addr() + 4096) as u32);
    w(regs::ACQ + 4, ((queues.device_addr() + 4096) >> 32) as u32);
    w(
        regs::CC,
        regs::CC_EN | 6 << regs::CC_IOSQES_SHIFT | 4 << regs::CC_IOCQES_SHIFT,
    );
    s.nvme.steps(20);
    assert_eq!(s.nvme.enable_error(), None);
    let nvme = s.driver();
    queue_round_trip(&s, &nvme, 8, 0, 4096, 180);
    assert!(s.nvme.stats().resets >= 1, "the driver disabled it first");
}

#[test]
fn an_admin_command_that_never_completes_fails_bring_up_and_leaks_nothing() {
    let s = sim(190, SimNvme::builder());
    let before = s.m.stats().used_pages();
    s.nvme.set_completion_delay(u32::MAX);
    let e = try_driver(&s).unwrap_err();
    assert!(matches!(e, NvmeError::Timeout { .. }), "{e}");
    assert_eq!(
        s.m.stats().used_pages(),
        before,
        "the admin queue memory came back"
    );
    s.nvme.set_completion_delay(0);
    let nvme = s.driver();
    queue_round_trip(&s, &nvme, 8, 0, 4096, 190);
}

#[test]
fn a_controller_slow_to_stop_is_waited_for_at_reset_and_at_the_next_bring_up() {
    let b = SimNvme::builder().disable_delay(200).ready_delay(30);
    let s = sim(200, b);
    let nvme = s.driver();
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(4)).unwrap();
    round_trip(&s, &mut q, &ns, 1, 1024, 200);
    // Recovery disables it (RDY stays 1 for 200 ticks) and enables it again.
    s.nvme.raise_fatal();
    let md = suite::buffer(&s.m, 512).unwrap();
    assert!(q.read(&ns, 0, &md, 0, 512).is_err());
    round_trip(&s, &mut q, &ns, 9, 2048, 201);
    assert_eq!(s.nvme.enable_error(), None);
    drop(q);
    drop(nvme);
    // The drop disabled it; a new driver at once waits for RDY to clear before enabling.
    let nvme = s.driver();
    assert_eq!(s.nvme.enable_error(), None);
    queue_round_trip(&s, &nvme, 4, 20, 512, 202);
    // One that never stops within CAP.TO is refused, not enabled on top of itself.
    drop(nvme);
    let s = slow_clock(
        203,
        SimNvme::builder().ready_timeout(1).disable_delay(u32::MAX),
    );
    let nvme = try_driver(&s).unwrap();
    drop(nvme);
    let e = try_driver(&s).unwrap_err();
    assert!(
        matches!(e, NvmeError::Dma(Error::NotReady { what, .. }) if what.contains("did not stop")),
        "{e}"
    );
}

#[test]
fn several_namespaces_with_different_lba_formats_keep_their_data_apart() {
    let b = SimNvme::builder()
        .lba_size(4096)
        .blocks(1024)
        .namespace(512, 4096)
        .namespace(65536, 64)
        .namespace(16384, 16)
        .mdts(2);
    let s = sim(210, b);
    let nvme = s.driver();
    assert_eq!(nvme.identity().namespaces, 4);
    assert_eq!(nvme.max_transfer(), 16384);
    let mut q = nvme.io_queue(QueueOptions::new(8)).unwrap();
    let ns: Vec<NamespaceIdentity> = (1..=4).map(|n| nvme.namespace(n).unwrap()).collect();
    assert_eq!(
        ns.iter()
            .map(|n| (n.nsid, n.block_size, n.blocks))
            .collect::<Vec<_>>(),
        [
            (1, 4096, 1024),
            (2, 512, 4096),
            (3, 65536, 64),
            (4, 16384, 16)
        ]
    );
    round_trip(&s, &mut q, &ns[0], 3, 3 * 4096, 1);
    round_trip(&s, &mut q, &ns[1], 3, 7 * 512, 2);
    round_trip(&s, &mut q, &ns[3], 3, 2 * 16384, 4);
    // 64 KiB blocks under a 16 KiB limit: refused, nothing written.
    let md = suite::buffer(&s.m, 65536).unwrap();
    let e = q.write(&ns[2], 0, &md, 0, 65536).unwrap_err();
    assert!(
        matches!(e, NvmeError::Dma(Error::Unsupported { .. })),
        "{e}"
    );
    // Each write landed in its own namespace only.
    assert_eq!(
        s.nvme.namespace_bytes(2, 0, 3 * 512).unwrap(),
        vec![0; 3 * 512]
    );
    assert_eq!(s.nvme.namespace_bytes(3, 0, 65536).unwrap(), vec![0; 65536]);
    assert_eq!(
        s.nvme.namespace_bytes(1, 3 * 4096, 512).unwrap(),
        pattern(1, 512),
        "namespace 2's write at the same LBA did not reach namespace 1"
    );
    for n in &ns {
        q.flush(n).unwrap();
    }
    assert!(matches!(
        nvme.namespace(5).unwrap_err(),
        NvmeError::Status { .. }
    ));
}

#[test]
fn the_driver_uses_the_fewer_of_the_queues_granted_and_asked_for() {
    // Four submission queues but two completion queues granted: two pairs.
    let s = sim(220, SimNvme::builder().io_queues(4).granted_queues(4, 2));
    let nvme = s.driver();
    assert_eq!(nvme.io_queue_limit(), 2);
    let ns = nvme.namespace(1).unwrap();
    let mut qs: Vec<_> = (0..2)
        .map(|_| nvme.io_queue(QueueOptions::new(4)).unwrap())
        .collect();
    assert!(matches!(
        nvme.io_queue(QueueOptions::new(4)).unwrap_err(),
        NvmeError::Dma(Error::NoResources { .. })
    ));
    for (i, q) in qs.iter_mut().enumerate() {
        round_trip(&s, q, &ns, 10 * i as u64, 1024, 220 + i as u64);
    }
    // More granted than asked for: the driver keeps to what it asked.
    let mut s = sim(221, SimNvme::builder().io_queues(8).granted_queues(64, 64));
    s.options = s.options.io_queues(2);
    assert_eq!(s.driver().io_queue_limit(), 2);
    // A report above what the controller takes: creating the extra queue fails cleanly
    // with the controller's status, and the identifier comes back.
    let s = sim(222, SimNvme::builder().io_queues(1).granted_queues(2, 2));
    let nvme = s.driver();
    assert_eq!(nvme.io_queue_limit(), 2);
    let mut q1 = nvme.io_queue(QueueOptions::new(4)).unwrap();
    let e = nvme.io_queue(QueueOptions::new(4)).unwrap_err();
    assert!(matches!(e, NvmeError::Status { .. }), "{e}");
    let ns = nvme.namespace(1).unwrap();
    round_trip(&s, &mut q1, &ns, 0, 512, 222);
}

#[test]
fn a_controller_fatal_before_bring_up_or_at_identify_is_refused_then_recovered() {
    // CSTS.CFS already set when the driver arrives (the controller stays fatal while it is
    // enabled): refused with the fatal status named, and the next bring-up's disable
    // clears it.
    let s = sim(230, SimNvme::builder().ready_delay(5));
    s.nvme.raise_fatal();
    let e = try_driver(&s).unwrap_err();
    assert!(
        matches!(e, NvmeError::Dma(Error::NotReady { what, .. }) if what.contains("CSTS.CFS")),
        "{e}"
    );
    let nvme = s.driver();
    queue_round_trip(&s, &nvme, 4, 1, 512, 230);
    drop(nvme);
    // Fatal on the second admin command (Identify Controller).
    let s = sim(231, SimNvme::builder().fatal_after(2));
    let before = s.m.stats().used_pages();
    let e = try_driver(&s).unwrap_err();
    assert!(matches!(e, NvmeError::ControllerFatal { .. }), "{e}");
    assert_eq!(s.m.stats().used_pages(), before, "nothing kept");
    let nvme = s.driver();
    queue_round_trip(&s, &nvme, 4, 2, 512, 231);
}

#[test]
fn doorbells_past_the_end_of_bar0_are_refused_not_written() {
    // A controller that reports more queues than its BAR has doorbells for (1 KiB stride).
    let s = sim(
        240,
        SimNvme::builder()
            .io_queues(5)
            .granted_queues(8, 8)
            .doorbell_stride(8),
    );
    let nvme = s.driver();
    let ns = nvme.namespace(1).unwrap();
    // Queues 1..=5 have doorbells in the 16 KiB BAR; queue 6's would be at its end.
    let mut qs: Vec<_> = (0..5)
        .map(|_| nvme.io_queue(QueueOptions::new(4)).unwrap())
        .collect();
    let ignored = s.nvme.stats().ignored_doorbells;
    let e = nvme.io_queue(QueueOptions::new(4)).unwrap_err();
    assert!(
        matches!(e, NvmeError::Dma(Error::OutOfBounds { .. })),
        "{e}"
    );
    assert_eq!(s.nvme.stats().ignored_doorbells, ignored);
    for (i, q) in qs.iter_mut().enumerate() {
        round_trip(&s, q, &ns, 4 * i as u64, 512, 240 + i as u64);
    }
}

#[test]
fn a_recovery_whose_admin_command_fails_is_tried_again_by_the_next_command() {
    let s = sim(250, SimNvme::builder().max_queue_entries(2).io_queues(1));
    let nvme = s.driver();
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(2)).unwrap();
    round_trip(&s, &mut q, &ns, 0, 512, 250);
    s.nvme.raise_fatal();
    s.nvme.inject(CommandFault::admin(
        admin::SET_FEATURES,
        Status::INTERNAL_ERROR,
    ));
    let md = suite::buffer(&s.m, 512).unwrap();
    let e = q.read(&ns, 0, &md, 0, 512).unwrap_err();
    assert!(matches!(e, NvmeError::ControllerFatal { .. }), "{e}");
    // The reset's Set Features fails: this command fails with it, nothing is sent.
    let e = q.read(&ns, 0, &md, 0, 512).unwrap_err();
    assert!(
        matches!(e, NvmeError::Status { op, .. } if op.opcode == admin::SET_FEATURES),
        "{e}"
    );
    // The next one resets again and works.
    round_trip(&s, &mut q, &ns, 3, 1024, 251);
    assert_eq!(nvme.stats().recoveries, 2);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: the whole NVMe driver suite per configuration"
)]
fn the_driver_suite_passes_on_unusual_controllers() {
    // The suite moves 512-byte and 4 KiB pieces, so it runs where blocks are 512 or 4096
    // bytes; the other block sizes are tested above.
    let configs: [(&str, SimNvmeBuilder); 4] = [
        (
            "2-entry queues, one queue pair, 1 KiB doorbell stride",
            SimNvme::builder()
                .max_queue_entries(2)
                .io_queues(1)
                .doorbell_stride(8)
                .blocks(1 << 16),
        ),
        (
            "4 KiB blocks under an 8 KiB MDTS, two of four queues' completions granted",
            SimNvme::builder()
                .lba_size(4096)
                .mdts(1)
                .io_queues(4)
                .granted_queues(4, 2)
                .blocks(1 << 14),
        ),
        (
            "LBA format 20, slow ready and slow stop, out of order",
            SimNvme::builder()
                .lba_format_index(20)
                .lba_size(4096)
                .blocks(1 << 14)
                .ready_delay(40)
                .disable_delay(40)
                .completion_delay(2)
                .reorder(Reorder::Any),
        ),
        (
            "65536-entry queues, four namespaces",
            SimNvme::builder()
                .max_queue_entries(65536)
                .namespace(4096, 16)
                .namespace(65536, 16)
                .namespace(512, 16)
                .blocks(1 << 16),
        ),
    ];
    let mut failed = Vec::new();
    for (i, (what, b)) in configs.into_iter().enumerate() {
        let s = sim(300 + i as u64, b);
        for (name, t) in suite::tests::<M>() {
            if let Err(e) = suite::run(&s, t) {
                failed.push(format!("{name} ({what}): {e}"));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_transfer_limit_below_a_page_is_refused_before_the_controller_is_touched() {
    // A controller that never stops within CAP.TO: had the driver enabled it before
    // refusing the option, its drop could not disable it and would keep the admin queue.
    let mut s = slow_clock(
        260,
        SimNvme::builder().ready_timeout(1).disable_delay(u32::MAX),
    );
    let before = s.m.stats().used_pages();
    for max in [0u64, 1, 4095] {
        s.options = s.options.max_transfer(max);
        let e = try_driver(&s).unwrap_err();
        assert!(
            matches!(e, NvmeError::Dma(Error::BadArgument { what, value }) if what.contains("max_transfer") && value == max),
            "{max}: {e}"
        );
        assert_eq!(s.nvme.stats().commands, 0, "nothing was submitted");
        assert_eq!(s.m.stats().used_pages(), before, "nothing kept");
    }
    s.options = s.options.max_transfer(4096);
    let nvme = try_driver(&s).unwrap();
    assert_eq!(nvme.max_transfer(), 4096);
}

#[test]
fn a_forced_reset_that_fails_is_tried_again_by_the_next_command() {
    // CSTS.RDY clears 800 ticks after CC.EN goes to 0: longer than CAP.TO (500 looks), so
    // the first reset gives up with the controller disabled; the next command finishes it.
    let s = slow_clock(270, SimNvme::builder().ready_timeout(1).disable_delay(800));
    let nvme = try_driver(&s).unwrap();
    let ns = nvme.namespace(1).unwrap();
    let mut q = nvme.io_queue(QueueOptions::new(4)).unwrap();
    round_trip(&s, &mut q, &ns, 1, 512, 270);
    let e = nvme.recover(true).unwrap_err();
    assert!(
        matches!(e, NvmeError::Dma(Error::NotReady { what, .. }) if what.contains("did not stop")),
        "{e}"
    );
    round_trip(&s, &mut q, &ns, 2, 1024, 271);
    assert_eq!(
        nvme.stats().recoveries,
        1,
        "the second try of the reset went through"
    );
    assert_eq!(
        s.nvme.stats().ignored_doorbells,
        0,
        "no command went to the disabled controller"
    );
}
