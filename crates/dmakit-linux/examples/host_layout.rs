//! This Linux host's physical memory layout, as a driver sees it: allocate buffers with
//! dmakit-linux's [`Host`] and print where they landed physically.
//!
//! It prints the host's capabilities (address mode, `RLIMIT_MEMLOCK`, hugepages), then:
//!
//! 1. a 256 KiB wired buffer: its physical runs (adjacent frames coalesced);
//! 2. the same buffer handed to a device with 32 address bits through a `DmaCommand`:
//!    the segments the device would get, all below 4 GiB (bounced if the buffer is not;
//!    when the host has no memory below 4 GiB to bounce through, the error that says so);
//! 3. a physically contiguous 2 MiB buffer (one hugepage), if the host has a free one.
//!
//! Physical addresses need `CAP_SYS_ADMIN` (run it as root). Without it the example shows
//! that memory still works for the CPU and that a translation is a clear `NotPermitted`
//! error (never a zero address), says what it skipped, and exits 0.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p dmakit-linux --example host_layout          # as root for physical addresses
//! ```

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::dma::{BouncePool, DmaCommand, PrepareOptions, SegmentFormat, SegmentSpec};
use dmakit::platform::{collect_runs, CpuAccess, PageRequest, PhysicalMemory, Task};
use dmakit::{Direction, Error};
use dmakit_linux::{AddressMode, Host, HUGEPAGE};
use std::sync::Arc;

const FOUR_GIB: u64 = 1 << 32;

fn main() -> dmakit::Result<()> {
    let host = Arc::new(Host::new()?);
    println!("{}", host.capabilities());
    if host.address_mode() != AddressMode::Physical {
        return without_physical_addresses(&host);
    }
    let buf = Arc::new(BufferMemoryDescriptor::new(
        host.clone(),
        BufferOptions::new(256 << 10, Direction::InOut),
    )?);
    let runs = physical_runs(&*buf)?;
    println!(
        "\n1. a wired buffer of {} KiB: {} physical runs",
        buf.length() >> 10,
        runs.len()
    );
    for (i, (pa, len)) in runs.iter().enumerate().take(16) {
        println!("   run {i:>2}: {pa:#014x} +{len:#x}");
    }
    if runs.len() > 16 {
        println!("   ... {} more", runs.len() - 16);
    }
    assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), buf.length());
    assert!(runs
        .iter()
        .all(|&(pa, _)| pa != 0 && pa % host_page(&host) == 0));

    device_with_32_address_bits(&host, buf)?;
    hugepage(&host)?;
    assert!(host.usage().is_idle(), "everything given back");
    println!("host_layout: ok");
    Ok(())
}

/// Without CAP_SYS_ADMIN: memory works for the CPU, translation is a clear error.
fn without_physical_addresses(host: &Host) -> dmakit::Result<()> {
    let len = host_page(host);
    let va = host.allocate_pages(len, &PageRequest::WIRED)?;
    host.write_virt(Task::KERNEL, va, b"dmakit")?;
    let mut back = [0u8; 6];
    host.read_virt(Task::KERNEL, va, &mut back)?;
    assert_eq!(&back, b"dmakit");
    let refused = collect_runs(host, Task::KERNEL, va, len);
    host.free_pages(va, len)?;
    match refused {
        Err(e @ Error::NotPermitted { .. }) => println!("\ntranslation refused: {e}"),
        other => panic!("expected NotPermitted without CAP_SYS_ADMIN, got {other:?}"),
    }
    println!(
        "host_layout: skipped, physical addresses need CAP_SYS_ADMIN (run as root); \
         address mode: {}",
        host.address_mode()
    );
    Ok(())
}

/// The segments a 32-bit device gets for `buf`.
fn device_with_32_address_bits(
    host: &Arc<Host>,
    buf: Arc<BufferMemoryDescriptor<Arc<Host>>>,
) -> dmakit::Result<()> {
    let spec = SegmentSpec::builder().address_bits(32).build()?;
    let pool = Arc::new(BouncePool::new(host.clone(), "host_layout", 1 << 20));
    let mut cmd = DmaCommand::builder(host.clone())
        .spec(spec)
        .format(SegmentFormat::Little32)
        .bounce_pool(pool)
        .build()?;
    cmd.set_memory_descriptor(buf)?;
    match cmd.prepare(PrepareOptions::new()) {
        Ok(()) => {}
        // Userspace cannot choose where pages land: a bounce buffer below 4 GiB is one
        // hugepage the kernel happened to place there, or nothing.
        Err(e @ (Error::NoMemory { .. } | Error::NoSuitableMemory { .. })) => {
            println!(
                "\n2. for a device with 32 address bits: no memory below 4 GiB to bounce through"
            );
            println!("   {e}");
            println!("   (an IOMMU, as VFIO gives a device, makes any page reachable)");
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let segs = cmd.segments().collect::<dmakit::Result<Vec<_>>>()?;
    println!(
        "\n2. for a device with 32 address bits: {} segments, {}",
        segs.len(),
        match cmd.bounce_reason() {
            Some(r) => format!("bounced ({} broken at {:#x})", r.constraint, r.addr),
            None => "not bounced (the buffer is below 4 GiB)".to_string(),
        }
    );
    for s in segs.iter().take(4) {
        println!("   {:#010x} +{:#x}", s.addr.0, s.len);
    }
    assert!(segs.iter().all(|s| s.addr.0 + s.len <= FOUR_GIB));
    cmd.complete()?;
    Ok(())
}

/// A physically contiguous 2 MiB buffer, if the host has a free hugepage.
fn hugepage(host: &Arc<Host>) -> dmakit::Result<()> {
    let options = BufferOptions::new(HUGEPAGE, Direction::InOut).contiguous(true);
    match BufferMemoryDescriptor::new(host.clone(), options) {
        Ok(big) => {
            let runs = physical_runs(&big)?;
            println!(
                "\n3. a contiguous {} MiB buffer: one run at {:#x}",
                HUGEPAGE >> 20,
                runs[0].0
            );
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].0 % HUGEPAGE, 0, "hugepage aligned");
        }
        Err(e) => println!("\n3. no contiguous 2 MiB buffer on this host: {e}"),
    }
    Ok(())
}

fn host_page(host: &Host) -> u64 {
    host.page_size().bytes()
}

/// The descriptor's physical runs: `(address, length)`.
fn physical_runs(md: &dyn MemoryDescriptor) -> dmakit::Result<Vec<(u64, u64)>> {
    let mut runs = Vec::new();
    let mut at = 0;
    while at < md.length() {
        let seg = md.physical_segment(at)?;
        runs.push((seg.addr.0, seg.len));
        at += seg.len;
    }
    Ok(runs)
}
