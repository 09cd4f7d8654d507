//! A device model of your own on the simulated PCI bus, and a driver for it written against
//! the core's device seam.
//!
//! The device, `SumDevice`, checksums memory it reaches by DMA: the driver writes a
//! scatter-gather list (`Little64` elements, as [`DmaCommand::gen_segments`] makes them)
//! into memory, gives the device the list's address and element count, and rings a
//! doorbell. The device reads the list, then every segment it names, and reports the
//! Adler-32 of the bytes and how many there were. Its registers (BAR 0):
//!
//! | offset | register |
//! | --- | --- |
//! | 0x00 | ID, reads `0x5355_0001` |
//! | 0x08 | list address (64 bits, a device address) |
//! | 0x10 | list elements (32 bits) |
//! | 0x14 | doorbell: write 1 to start (the model runs before the store returns) |
//! | 0x18 | status: 0 idle, 1 done, 2 a DMA failed |
//! | 0x1C | result: Adler-32 |
//! | 0x20 | bytes summed (32 bits) |
//!
//! A model implements [`PciDeviceModel`]: its configuration (IDs, BARs) and its register
//! accesses. It reaches memory only through the [`DeviceContext`] the bus hands it, so bus
//! mastering, the function's IOMMU domain and fault injection apply to it as to the
//! simulator's NVMe and `edu` models.
//!
//! The driver half uses only the core's seams ([`PciBus`], [`PciFunction`], `mapped_*`,
//! [`DmaCommand`]), so the same code would drive the device on any platform. With bus
//! mastering off, the device's DMA never leaves the function: the status says so and the
//! bus records the refusal.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p dmakit-sim --example custom_device
//! ```

use dmakit::descriptor::{BufferMemoryDescriptor, MemoryDescriptor};
use dmakit::device::{DmaView, PciBus, PciFunction, PciId, PciMatch};
use dmakit::dma::{DmaCommand, IoSegment, PrepareOptions, SegmentFormat, SegmentSpec};
use dmakit::map::{mapped_read32, mapped_write32, mapped_write64};
use dmakit::platform::{Platform, Width};
use dmakit::{Direction, PhysAddr};
use dmakit_sim::pci::{
    BarSpec, DeviceConfig, DeviceContext, FunctionConfig, PciDeviceModel, PciEvent, SimPciBus,
};
use dmakit_sim::MachineBuilder;
use std::sync::Arc;

const VENDOR: u16 = 0x1af4;
const DEVICE: u16 = 0x5355;
const ID_VALUE: u32 = 0x5355_0001;
const REG_ID: u64 = 0x00;
const REG_LIST: u64 = 0x08;
const REG_COUNT: u64 = 0x10;
const REG_DOORBELL: u64 = 0x14;
const REG_STATUS: u64 = 0x18;
const REG_RESULT: u64 = 0x1C;
const REG_BYTES: u64 = 0x20;
const STATUS_DONE: u32 = 1;
const STATUS_DMA_FAILED: u32 = 2;

// ---- the device model --------------------------------------------------------------------

/// The device's registers.
#[derive(Default)]
struct SumDevice {
    list: u64,
    count: u32,
    status: u32,
    result: u32,
    bytes: u32,
}

impl SumDevice {
    /// What the doorbell starts: read the list, then every segment, summing.
    fn run(&mut self, ctx: &mut DeviceContext<'_>) {
        let mut list = vec![0u8; self.count as usize * 16];
        if ctx.dma_read(self.list, &mut list).is_err() {
            self.status = STATUS_DMA_FAILED;
            return;
        }
        let mut sum = Adler32::default();
        let mut bytes = 0u64;
        for i in 0..self.count as usize {
            let Ok(seg) = SegmentFormat::Little64.read(&list, i) else {
                self.status = STATUS_DMA_FAILED;
                return;
            };
            let mut data = vec![0u8; seg.len as usize];
            if ctx.dma_read(seg.addr.0, &mut data).is_err() {
                self.status = STATUS_DMA_FAILED;
                return;
            }
            sum.update(&data);
            bytes += seg.len;
        }
        (self.result, self.bytes, self.status) = (sum.value(), bytes as u32, STATUS_DONE);
    }
}

impl PciDeviceModel for SumDevice {
    fn name(&self) -> &str {
        "sum"
    }

    fn config(&self) -> DeviceConfig {
        let id = PciId {
            vendor: VENDOR,
            device: DEVICE,
            class: 0x00_ff_00,
        };
        DeviceConfig::new(id).bar(0, BarSpec::mem32(0x1000))
    }

    fn bar_read(&mut self, _: &mut DeviceContext<'_>, bar: u8, offset: u64, width: Width) -> u64 {
        if bar != 0 || width != Width::W32 {
            return u64::MAX;
        }
        match offset {
            REG_ID => ID_VALUE as u64,
            REG_LIST => self.list & 0xFFFF_FFFF,
            0x0C => self.list >> 32,
            REG_COUNT => self.count as u64,
            REG_STATUS => self.status as u64,
            REG_RESULT => self.result as u64,
            REG_BYTES => self.bytes as u64,
            _ => u64::MAX,
        }
    }

    fn bar_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        bar: u8,
        offset: u64,
        width: Width,
        value: u64,
    ) {
        match (bar, offset, width) {
            (0, REG_LIST, Width::W64) => self.list = value,
            (0, REG_COUNT, Width::W32) => self.count = value as u32,
            (0, REG_DOORBELL, Width::W32) if value & 1 != 0 => {
                self.status = 0;
                self.run(ctx);
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        *self = SumDevice::default();
    }
}

/// Adler-32 (RFC 1950).
struct Adler32(u32, u32);

impl Default for Adler32 {
    fn default() -> Self {
        Adler32(1, 0)
    }
}

impl Adler32 {
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 + b as u32) % 65521;
            self.1 = (self.1 + self.0) % 65521;
        }
    }

    fn value(&self) -> u32 {
        (self.1 << 16) | self.0
    }
}

// ---- the driver --------------------------------------------------------------------------

/// The driver's view of one `SumDevice`: the function and its register block.
struct SumDriver<P: Platform + Clone + 'static> {
    platform: P,
    function: Arc<dyn PciFunction>,
    bar0: PhysAddr,
}

impl<P: Platform + Clone + 'static> SumDriver<P> {
    fn open(platform: P, bus: &dyn PciBus) -> dmakit::Result<Self> {
        let function = bus.find(&PciMatch::ids(VENDOR, DEVICE))?;
        let bar0 = function.bar(0)?.base;
        let driver = SumDriver {
            platform,
            function,
            bar0,
        };
        let id = mapped_read32(&driver.platform, driver.reg(REG_ID))?;
        assert_eq!(id, ID_VALUE);
        println!(
            "found {} ({:04x}:{:04x}), BAR 0 at {:#x}, ID {id:#010x}",
            driver.function.address(),
            VENDOR,
            DEVICE,
            bar0.0
        );
        Ok(driver)
    }

    fn reg(&self, offset: u64) -> PhysAddr {
        PhysAddr(self.bar0.0 + offset)
    }

    /// A command for this device: its IOMMU domain's mapper, or physical addresses up to
    /// its limit; segments of at most one page, so the list has several elements.
    fn command(&self) -> dmakit::Result<DmaCommand<P>> {
        let spec = SegmentSpec::builder().max_segment_size(0x1000);
        let b = DmaCommand::builder(self.platform.clone()).format(SegmentFormat::Little64);
        match self.function.dma() {
            DmaView::Mapped(mapper) => b.spec(spec.build()?).mapper(mapper).build(),
            DmaView::Bypass { max_address } => b.spec(spec.window(0, max_address).build()?).build(),
        }
    }

    /// Has the device checksum `md`: returns (status, Adler-32, bytes).
    fn checksum(&self, md: Arc<dyn MemoryDescriptor>) -> dmakit::Result<(u32, u32, u32)> {
        let mut data = self.command()?;
        data.set_memory_descriptor(md)?;
        data.prepare(PrepareOptions::new())?;
        // The list: as many 16-byte elements as the transfer needs, in memory the device
        // reads through its own command.
        let mut list = vec![0u8; 16 * 64];
        let mut offset = 0;
        let count = data.gen_segments(&mut offset, &mut list)?;
        let used = &list[..count * 16];
        for i in 0..count {
            let s: IoSegment = SegmentFormat::Little64.read(used, i)?;
            println!("  list[{i}] = device address {:#x} +{:#x}", s.addr.0, s.len);
        }
        let list_md = Arc::new(BufferMemoryDescriptor::with_bytes(
            self.platform.clone(),
            used,
            Direction::Out,
        )?);
        let mut list_cmd = self.command()?;
        list_cmd.set_memory_descriptor(list_md)?;
        list_cmd.prepare(PrepareOptions::new())?;
        let list_addr = list_cmd.segments().next().expect("one segment")?.addr.0;

        mapped_write64(&self.platform, self.reg(REG_LIST), list_addr)?;
        mapped_write32(&self.platform, self.reg(REG_COUNT), count as u32)?;
        mapped_write32(&self.platform, self.reg(REG_DOORBELL), 1)?;
        let status = mapped_read32(&self.platform, self.reg(REG_STATUS))?;
        let result = mapped_read32(&self.platform, self.reg(REG_RESULT))?;
        let bytes = mapped_read32(&self.platform, self.reg(REG_BYTES))?;
        list_cmd.complete()?;
        data.complete()?;
        Ok((status, result, bytes))
    }
}

fn main() -> dmakit::Result<()> {
    let machine = Arc::new(MachineBuilder::new().seed(9).fragmentation(1.0).build()?);
    let bus = SimPciBus::new(machine.clone())?; // every function in an IOMMU domain
    let function = bus.add(Box::new(SumDevice::default()), FunctionConfig::new())?;

    let driver = SumDriver::open(machine.clone(), &bus)?;
    let bytes: Vec<u8> = (0..0x3000u32).map(|i| (i % 253) as u8).collect();
    let expected = {
        let mut a = Adler32::default();
        a.update(&bytes);
        a.value()
    };
    let md: Arc<dyn MemoryDescriptor> = Arc::new(BufferMemoryDescriptor::with_bytes(
        machine.clone(),
        &bytes,
        Direction::Out,
    )?);

    println!("bus mastering on:");
    driver.function.set_bus_master(true)?;
    let (status, sum, n) = driver.checksum(md.clone())?;
    println!("  status {status}, Adler-32 {sum:#010x} over {n} bytes (CPU: {expected:#010x})");
    assert_eq!(
        (status, sum, n),
        (STATUS_DONE, expected, bytes.len() as u32)
    );

    println!("bus mastering off:");
    driver.function.set_bus_master(false)?;
    let (status, _, _) = driver.checksum(md)?;
    println!("  status {status} (the DMA never left the function)");
    assert_eq!(status, STATUS_DMA_FAILED);
    let refused = function.events().into_iter().find_map(|e| match e {
        PciEvent::Dma { addr, fault, .. } => Some((addr, fault)),
        _ => None,
    });
    let (addr, fault) = refused.expect("the bus recorded the refused DMA");
    println!("  the bus recorded: DMA at {addr:#x} refused, {fault:?}");
    let stats = function.stats();
    println!(
        "  function stats: {} DMA reads, {} bytes read, {} refused",
        stats.dma_reads, stats.dma_bytes_read, stats.dma_refused
    );
    println!("custom_device: ok");
    Ok(())
}
