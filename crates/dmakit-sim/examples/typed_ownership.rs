//! Typed ownership: `CpuOwned` → `DeviceOwned` → `CpuOwned`, with the transfer direction
//! in the type.
//!
//! Between `prepare` and `complete` the device owns DMA memory; IOKit and Linux leave it to
//! the driver to remember that. dmakit's typed layer ([`dmakit::dma::owned`]) says it with
//! types: a [`CpuOwned`] value lets the CPU read and write, [`CpuOwned::prepare`] consumes
//! it and returns a [`DeviceOwned`] that only hands out segments and the two sync methods,
//! and [`DeviceOwned::complete`] gives the CPU its memory back. The direction is a type
//! too: `sync_for_device` exists only where the device reads ([`ToDevice`]),
//! `sync_for_cpu` only where it writes ([`FromDevice`]); the wrong one does not compile.
//!
//! The machine's caches are not coherent with DMA (the simulator's default), so the
//! example also shows what the transitions do for you: a CPU write sits in the cache,
//! invisible to the device, until `prepare` (or `sync_for_device`) cleans it; what the
//! device writes reaches the CPU through `sync_for_cpu` or `complete`, which invalidate.
//! A transition that fails hands the value back in the state it was in, so nothing is lost.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p dmakit-sim --example typed_ownership
//! ```

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions};
use dmakit::dma::{CpuOwned, DmaCommand, FromDevice, IoSegment, MappingMode, ToDevice};
use dmakit::{Direction, PhysAddr};
use dmakit_sim::{Machine, MachineBuilder};
use std::sync::Arc;

type Buffer = BufferMemoryDescriptor<Arc<Machine>>;

fn main() -> dmakit::Result<()> {
    let machine = Arc::new(MachineBuilder::new().seed(4).build()?);
    assert!(
        !machine.layout().coherent,
        "the default machine is not coherent"
    );
    to_device(&machine)?;
    from_device(&machine)?;
    failed_transition_keeps_the_value(&machine)?;
    println!("typed_ownership: ok");
    Ok(())
}

/// A command for a device that does not snoop the CPU's caches.
fn command(machine: &Arc<Machine>) -> dmakit::Result<DmaCommand<Arc<Machine>>> {
    DmaCommand::builder(machine.clone())
        .mode(MappingMode::NonCoherent)
        .build()
}

fn buffer(machine: &Arc<Machine>, dir: Direction) -> dmakit::Result<Buffer> {
    BufferMemoryDescriptor::new(machine.clone(), BufferOptions::new(0x2000, dir))
}

/// The device reads: the CPU fills the buffer, the device owns it, the CPU gets it back.
fn to_device(machine: &Arc<Machine>) -> dmakit::Result<()> {
    println!("ToDevice (the device reads):");
    let cpu: CpuOwned<_, ToDevice, Buffer> =
        CpuOwned::new(buffer(machine, Direction::Out)?, command(machine)?)?;
    assert_eq!(cpu.write_bytes(0, b"command block v1"), 16);
    let pa = first_page(cpu.descriptor())?;
    assert_eq!(dram(machine, pa, 16)?, [0u8; 16], "still in the CPU cache");
    println!(
        "  CpuOwned: wrote \"command block v1\"; DRAM, where the device reads, still holds zeros"
    );

    let dev = cpu.prepare().map_err(|f| f.error)?; // cleans the cache lines
    let seg = first_segment(&dev.segments().collect::<dmakit::Result<Vec<_>>>()?);
    println!("  DeviceOwned: segment {:#x} +{:#x}", seg.addr.0, seg.len);
    assert_eq!(
        dram(machine, PhysAddr(seg.addr.0), 16)?,
        b"command block v1"
    );
    println!("  the device reads \"command block v1\"");

    // While the device owns it, the CPU reaches the memory only through the sync method,
    // which writes and cleans in one step. (`dev.write_bytes` does not exist, and
    // `dev.sync_for_cpu` does not compile for a ToDevice buffer.)
    assert_eq!(dev.sync_for_device(14, b"v2")?, 2);
    assert_eq!(
        dram(machine, PhysAddr(seg.addr.0), 16)?,
        b"command block v2"
    );
    println!("  sync_for_device(14, \"v2\"): the device reads \"command block v2\"");

    let cpu = dev.complete().map_err(|f| f.error)?;
    let mut back = [0u8; 16];
    assert_eq!(cpu.read_bytes(0, &mut back), 16);
    assert_eq!(&back, b"command block v2");
    println!("  CpuOwned again: reads \"command block v2\"");
    Ok(())
}

/// The device writes: what it wrote reaches the CPU through `sync_for_cpu` and `complete`.
fn from_device(machine: &Arc<Machine>) -> dmakit::Result<()> {
    println!("FromDevice (the device writes):");
    let cpu: CpuOwned<_, FromDevice, Buffer> =
        CpuOwned::new(buffer(machine, Direction::In)?, command(machine)?)?;
    let mut stale = [0u8; 6];
    assert_eq!(cpu.read_bytes(0, &mut stale), 6); // the CPU now caches these lines
    let dev = cpu.prepare().map_err(|f| f.error)?;
    let seg = first_segment(&dev.segments().collect::<dmakit::Result<Vec<_>>>()?);
    machine.device_write(PhysAddr(seg.addr.0), b"status: done")?; // the device's DMA
    println!("  the device wrote \"status: done\" at {:#x}", seg.addr.0);

    let mut peek = [0u8; 6];
    assert_eq!(dev.sync_for_cpu(0, &mut peek)?, 6); // invalidates, then copies
    assert_eq!(&peek, b"status");
    println!(
        "  sync_for_cpu(0, 6 bytes): {:?}",
        std::str::from_utf8(&peek).unwrap_or("?")
    );

    let cpu = dev.complete().map_err(|f| f.error)?;
    let mut all = [0u8; 12];
    assert_eq!(cpu.read_bytes(0, &mut all), 12);
    assert_eq!(&all, b"status: done");
    println!("  CpuOwned again: reads \"status: done\"");
    let (md, _cmd) = cpu.into_parts()?;
    println!(
        "  into_parts: the buffer ({:#x} bytes) and the command, ready for reuse",
        md.capacity()
    );
    Ok(())
}

/// A refused prepare returns the CPU-owned value with the error.
fn failed_transition_keeps_the_value(machine: &Arc<Machine>) -> dmakit::Result<()> {
    println!("a failed transition:");
    let cpu: CpuOwned<_, ToDevice, Buffer> =
        CpuOwned::new(buffer(machine, Direction::Out)?, command(machine)?)?;
    assert_eq!(cpu.write_bytes(0, b"kept"), 4);
    let failed = match cpu.prepare_range(0x1000, 0x2000) {
        Ok(_) => panic!("a range past the end was prepared"),
        Err(f) => f,
    };
    println!(
        "  prepare_range(0x1000, 0x2000) of 0x2000 bytes: {}",
        failed.error
    );
    let cpu = failed.value; // still CPU-owned, bytes intact
    let mut back = [0u8; 4];
    assert_eq!(cpu.read_bytes(0, &mut back), 4);
    assert_eq!(&back, b"kept");
    let dev = cpu.prepare_range(0, 0x1000).map_err(|f| f.error)?;
    assert_eq!(dev.prepared(), (0, 0x1000));
    println!(
        "  the value came back CPU-owned with its bytes; prepare_range(0, 0x1000) then worked"
    );
    dev.complete().map_err(|f| f.error)?;
    Ok(())
}

fn first_segment(segs: &[IoSegment]) -> IoSegment {
    assert!(!segs.is_empty(), "a prepared transfer has segments");
    segs[0]
}

fn first_page(md: &Buffer) -> dmakit::Result<PhysAddr> {
    use dmakit::descriptor::MemoryDescriptor;
    Ok(md.physical_segment(0)?.addr)
}

/// What a device would read at `pa`: DRAM, not the CPU's cache.
fn dram(machine: &Machine, pa: PhysAddr, len: usize) -> dmakit::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    machine.device_read(pa, &mut v)?;
    Ok(v)
}
