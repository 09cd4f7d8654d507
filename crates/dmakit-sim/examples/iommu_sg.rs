//! Scatter-gather through an IOMMU: physically scattered memory becomes one run of IO
//! addresses, and the device reaches exactly what it was given, for as long as it was
//! given it.
//!
//! A "packet" is a header buffer and a payload buffer put together with a
//! [`MultiMemoryDescriptor`]; their pages lie all over the simulated machine's RAM. A
//! [`DmaCommand`] in mapped mode enters them in the simulated IOMMU through an
//! [`IommuMapper`], and the segments it hands out are IO addresses: one segment for the
//! whole packet. The device model then:
//!
//! * reads the packet at those IO addresses and gets the bytes the CPU wrote;
//! * tries to write into it and faults (the transfer is device-reads-only, so the IOMMU
//!   entries are read-only);
//! * writes a reply into a second buffer prepared for the device to write, which the CPU
//!   reads after `complete`;
//! * reads again after `complete` and faults: the strict mapper unmapped and invalidated
//!   the IO addresses before `complete` returned.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p dmakit-sim --example iommu_sg
//! ```

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
};
use dmakit::dma::{DmaCommand, IoSegment, PrepareOptions};
use dmakit::mapper::{IommuMapper, Mapper};
use dmakit::Direction;
use dmakit_sim::{FaultKind, Machine, MachineBuilder, SimIommu};
use std::sync::Arc;

/// The IO address window the mapper hands out: 1 GiB at 16 GiB, far from any RAM
/// address, so an IO address is never mistaken for a physical one.
const IOVA_BASE: u64 = 0x4_0000_0000;

fn main() -> dmakit::Result<()> {
    // Every page anywhere; non-coherent caches (the command does the maintenance).
    let machine = Arc::new(MachineBuilder::new().seed(11).fragmentation(1.0).build()?);
    let iommu = Arc::new(SimIommu::new(machine.clone()));
    let mapper: Arc<dyn Mapper> = Arc::new(IommuMapper::new(iommu.clone(), IOVA_BASE, 1 << 30)?);

    // The packet: a 4 KiB header and a 12 KiB payload, as one descriptor.
    let header = buffer(&machine, 0x1000, Direction::Out)?;
    let payload = buffer(&machine, 0x3000, Direction::Out)?;
    let mut bytes = b"HDR1".repeat(0x400);
    bytes.extend((0..0x3000u32).map(|i| (i * 7 % 251) as u8));
    assert_eq!(header.write_bytes(0, &bytes[..0x1000]), 0x1000);
    assert_eq!(payload.write_bytes(0, &bytes[0x1000..]), 0x3000);
    let packet: Arc<dyn MemoryDescriptor> = Arc::new(MultiMemoryDescriptor::new(
        vec![header, payload],
        Direction::Out,
    )?);
    let runs = physical_runs(&*packet)?;
    println!(
        "packet: {:#x} bytes in {} physical runs",
        packet.length(),
        runs.len()
    );
    for (pa, len) in &runs {
        println!("  physical {pa:#012x} +{len:#x}");
    }
    assert!(runs.len() > 1, "scattered");

    // The device reads the packet through the IOMMU.
    let mut tx = DmaCommand::builder(machine.clone())
        .mapper(mapper.clone())
        .build()?;
    tx.set_memory_descriptor(packet.clone())?;
    tx.prepare(PrepareOptions::new())?;
    let segs: Vec<IoSegment> = tx.segments().collect::<dmakit::Result<_>>()?;
    for s in &segs {
        println!("  device segment: IO {:#x} +{:#x}", s.addr.0, s.len);
    }
    assert_eq!(segs.len(), 1, "scattered pages, one IO run");
    let iova = segs[0].addr;
    assert!(iova.0 >= IOVA_BASE && iova.0 < IOVA_BASE + (1 << 30));

    let mut seen = vec![0u8; packet.length() as usize];
    iommu.device_read(iova, &mut seen)?;
    assert_eq!(seen, bytes);
    println!(
        "device read {:#x} bytes at IO {:#x}: as written",
        seen.len(),
        iova.0
    );

    let refused = iommu.device_write(iova, b"scribble");
    assert!(refused.is_err());
    let fault = iommu
        .faults()
        .last()
        .copied()
        .expect("the refusal is logged");
    assert_eq!(fault.kind, FaultKind::WriteDenied);
    println!("device write into the packet: refused ({:?})", fault.kind);

    // The device writes its reply into a buffer prepared for it to write.
    let reply = buffer(&machine, 0x2000, Direction::In)?;
    let mut rx = DmaCommand::builder(machine.clone())
        .mapper(mapper.clone())
        .build()?;
    rx.set_memory_descriptor(reply.clone())?;
    rx.prepare(PrepareOptions::new())?;
    let into = rx.segments().next().expect("one segment")?;
    iommu.device_write(into.addr, b"ACK from the device")?;
    rx.complete()?; // invalidates the CPU's stale cache lines, unmaps
    let mut ack = [0u8; 19];
    assert_eq!(reply.read_bytes(0, &mut ack), ack.len());
    assert_eq!(&ack, b"ACK from the device");
    println!(
        "device wrote its reply at IO {:#x}; the CPU reads it after complete",
        into.addr.0
    );

    // After complete the packet's IO addresses are gone, from the IOTLB too.
    tx.complete()?;
    assert!(iommu.device_read(iova, &mut seen[..16]).is_err());
    let fault = iommu.faults().last().copied().expect("logged");
    assert_eq!(fault.kind, FaultKind::NotPresent);
    println!("device read after complete: refused ({:?})", fault.kind);
    assert_eq!(iommu.table_entries(), 0, "nothing left mapped");
    println!(
        "IOMMU: {} faults logged, {} invalidations, nothing left mapped",
        iommu.fault_count(),
        iommu.invalidations()
    );
    println!("iommu_sg: ok");
    Ok(())
}

fn buffer(
    machine: &Arc<Machine>,
    len: u64,
    dir: Direction,
) -> dmakit::Result<Arc<dyn MemoryDescriptor>> {
    Ok(Arc::new(BufferMemoryDescriptor::new(
        machine.clone(),
        BufferOptions::new(len, dir),
    )?))
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
