//! An NVMe read over VFIO: dmakit's portable NVMe driver (`dmakit-nvme`) on a real
//! controller, from this Linux process.
//!
//! It opens the PCI function at the address given through VFIO ([`VfioFunction`]: the
//! device's BAR mapped into the process, its DMA confined by the IOMMU to what the process
//! maps), brings the controller up, prints what Identify says, reads blocks of namespace 1
//! into a buffer and prints their first bytes. At the end it asks the kernel whether any
//! IO mapping is left for the device (none is).
//!
//! It needs a device: an NVMe controller bound to `vfio-pci`, and root. As root:
//!
//! ```sh
//! modprobe vfio-pci
//! echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override
//! echo 0000:00:04.0 > /sys/bus/pci/devices/0000:00:04.0/driver/unbind   # if it has a driver
//! echo 0000:00:04.0 > /sys/bus/pci/drivers_probe
//! cargo run -p dmakit-linux --example nvme_read -- 0000:00:04.0 [LBA] [BYTES]
//! ```
//!
//! Without an argument it prints how to use it; with an address it cannot open it says
//! which step failed and why (no such function, no IOMMU group, not bound to `vfio-pci`,
//! not root, ...), and exits non-zero. It is built by `scripts/examples-check` but not run
//! there; the QEMU guest (`guest/run`) runs the same driver against emulated controllers.

use dmakit::descriptor::{BufferMemoryDescriptor, BufferOptions, MemoryDescriptor};
use dmakit::device::PciFunction;
use dmakit::Direction;
use dmakit_linux::vfio::{PciAddress, VfioFunction};
use dmakit_linux::{Host, MonotonicTimer};
use dmakit_nvme::{Nvme, NvmeOptions, QueueOptions};
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: nvme_read <PCI address, e.g. 0000:00:04.0> [LBA (default 0)] \
                     [BYTES (default 4096)]\n\
                     The NVMe controller at that address must be bound to vfio-pci; run as root.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(address) = args.first() else {
        eprintln!("nvme_read: no PCI address given\n{USAGE}");
        return ExitCode::from(2);
    };
    let number = |i: usize, default: u64| -> Result<u64, String> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse()
                .map_err(|e| format!("argument {}: {s:?} is not a number ({e})", i + 1))
        })
    };
    let run = || -> Result<(), String> {
        let (lba, bytes) = (number(1, 0)?, number(2, 4096)?);
        read(address, lba, bytes)
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvme_read: {e}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

/// A closure that prefixes a step's name to its error.
fn step<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

fn read(address: &str, lba: u64, bytes: u64) -> Result<(), String> {
    let address = PciAddress::parse(address).map_err(step("PCI address"))?;
    let host = Arc::new(Host::new().map_err(step("open the host"))?);
    let function = Arc::new(
        VfioFunction::open(host.clone(), address)
            .map_err(step("open the controller through VFIO"))?,
    );
    let id = function.id();
    println!(
        "{address}: {:04x}:{:04x}, class {:06x}",
        id.vendor, id.device, id.class
    );
    let seam: Arc<dyn PciFunction> = function.clone();
    let nvme = Nvme::new(
        host.clone(),
        seam,
        Arc::new(MonotonicTimer::new()),
        NvmeOptions::new(),
    )
    .map_err(step("bring the controller up"))?;
    let identity = nvme.identity();
    println!(
        "controller: {} (serial {}, firmware {}), {} namespace(s), max transfer {} KiB",
        identity.model,
        identity.serial,
        identity.firmware,
        identity.namespaces,
        nvme.max_transfer() >> 10
    );
    let ns = nvme.namespace(1).map_err(step("Identify namespace 1"))?;
    println!(
        "namespace 1: {} blocks of {} bytes",
        ns.blocks, ns.block_size
    );

    let mut q = nvme
        .io_queue(QueueOptions::new(16))
        .map_err(step("create an I/O queue pair"))?;
    let buf: Arc<dyn MemoryDescriptor> = Arc::new(
        BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(bytes, Direction::In))
            .map_err(step("allocate the buffer"))?,
    );
    let done = q.read(&ns, lba, &buf, 0, bytes).map_err(step("read"))?;
    println!(
        "read {bytes} bytes at LBA {lba}: {} command(s), {} PRP entries, {} bounced",
        done.commands, done.prp_entries, done.bounced
    );
    let mut head = [0u8; 64];
    let n = buf.read_bytes(0, &mut head);
    for row in head[..n].chunks(16) {
        let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = row
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        println!("  {}  {text}", hex.join(" "));
    }

    drop((q, buf, nvme));
    function
        .mapper()
        .check_unmapped()
        .map_err(step("teardown"))?;
    println!("nothing left mapped for the device");
    Ok(())
}
