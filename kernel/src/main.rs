//! dmakit's bare-metal test kernel: a UEFI application that takes the machine over
//! (ExitBootServices), builds dmakit-baremetal's platform (its own page tables, loaded into
//! CR3), brings up the VT-d IOMMU if the ACPI tables describe one (every NVMe and edu
//! function then gets a domain of its own and a dmakit mapper; without one they bypass),
//! finds NVMe and edu through ECAM, and runs the portable drivers' suites, printing
//! `ok NAME: ...` / `FAILED NAME: ...` on COM1 and `baremetal: N passed, M failed`, then
//! leaving QEMU through isa-debug-exit (exit status 1 when everything passed, 3 when
//! something failed, 5 on a panic).
#![no_std]
#![no_main]

extern crate alloc;

mod sys;
mod tests;

use alloc::sync::Arc;
use dmakit_baremetal::pci::{EcamBus, FunctionInfo};
use dmakit_baremetal::{BareMetal, BareMetalConfig, TscClock};
use uefi::boot::MemoryType;
use uefi::mem::memory_map::MemoryMap;
use uefi::table::cfg::ConfigTableEntry;

/// COM1 as a `fmt::Write`.
pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        sys::serial_write(s.as_bytes());
        Ok(())
    }
}

/// Prints a line on COM1.
#[macro_export]
macro_rules! println {
    ($($t:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::Serial, $($t)*);
    }};
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("baremetal: PANIC {info}");
    sys::qemu_exit(2)
}

fn fail(what: &str, e: impl core::fmt::Display) -> ! {
    println!("baremetal: setup failed: {what}: {e}");
    sys::qemu_exit(2)
}

/// Brings up the VT-d unit at `unit.base` (its registers mapped as device memory first).
fn vtd(
    platform: &Arc<BareMetal>,
    clock: TscClock,
    host_address_width: u8,
    unit: dmakit_baremetal::acpi::RemappingUnit,
) -> tests::Iommu {
    // SAFETY: the DMAR table says this page holds the remapping unit's registers.
    if let Err(e) = unsafe { platform.add_device_memory(unit.base, 0x1000) } {
        fail("VT-d registers", e);
    }
    let options = dmakit_vtd::VtdOptions::new()
        .host_address_width(host_address_width)
        .pause(move || clock.spin_ns(1_000));
    match dmakit_vtd::Vtd::new(platform.clone(), dmakit::PhysAddr(unit.base), options) {
        Ok(v) => v,
        Err(e) => fail("VT-d bring-up", e),
    }
}

#[uefi::entry]
fn main() -> uefi::Status {
    sys::heap::init();
    // The shards of dmakit's shared structures go by CPU number; this kernel never starts
    // a second CPU.
    dmakit::sync::set_cpu_number(|| 0);
    println!("baremetal: dmakit test kernel started");
    let rsdp = uefi::system::with_config_table(|t| {
        let find = |g| t.iter().find(|e| e.guid == g).map(|e| e.address as u64);
        find(ConfigTableEntry::ACPI2_GUID).or_else(|| find(ConfigTableEntry::ACPI_GUID))
    });
    // SAFETY: no boot service is used after this point (console output goes to COM1
    // directly, memory comes from the kernel's own heap and dmakit-baremetal).
    let mmap = unsafe { uefi::boot::exit_boot_services(None) };
    let mut config = BareMetalConfig::new(0);
    let (mut usable, mut ram) = (0u64, 0u64);
    for d in mmap.entries() {
        let len = d.page_count * 4096;
        match d.ty {
            MemoryType::CONVENTIONAL => {
                config = config.usable(d.phys_start, len);
                usable += len;
            }
            MemoryType::LOADER_CODE
            | MemoryType::LOADER_DATA
            | MemoryType::BOOT_SERVICES_CODE
            | MemoryType::BOOT_SERVICES_DATA
            | MemoryType::RUNTIME_SERVICES_CODE
            | MemoryType::RUNTIME_SERVICES_DATA
            | MemoryType::ACPI_RECLAIM
            | MemoryType::ACPI_NON_VOLATILE => {
                config = config.ram(d.phys_start, len);
                ram += len;
            }
            _ => {}
        }
    }
    println!(
        "baremetal: boot services exited; {} MiB usable, {} MiB other RAM",
        usable >> 20,
        ram >> 20
    );
    // SAFETY: the ranges come from the firmware's final memory map: `usable` is free
    // memory nobody else uses now that boot services are gone, `ram` is everything the
    // kernel still uses (its image, heap, stack, the firmware's GDT/IDT, ACPI tables),
    // and UEFI maps it all at physical = virtual, the offset 0 given.
    let platform = match unsafe { BareMetal::new(config) } {
        Ok(p) => Arc::new(p),
        Err(e) => fail("platform", e),
    };
    let Some(rsdp) = rsdp else {
        fail("ACPI", "no RSDP in the UEFI configuration table")
    };
    let read = |pa: u64, buf: &mut [u8]| {
        use dmakit::platform::PhysicalMemory;
        platform.read_phys(dmakit::PhysAddr(pa), buf)
    };
    let regions = match dmakit_baremetal::acpi::ecam_regions(&read, rsdp) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => fail("ACPI", "MCFG lists no ECAM window"),
        Err(e) => fail("ACPI MCFG", e),
    };
    for r in &regions {
        // SAFETY: MCFG says this window is configuration space (device memory).
        if let Err(e) = unsafe { platform.add_device_memory(r.base, r.len()) } {
            fail("ECAM window", e);
        }
    }
    // SAFETY: ring 0 after ExitBootServices; the tables map all RAM the kernel uses
    // (code, stack, heap, descriptor tables) and the ECAM window; COM1 and the debug exit
    // are I/O ports, untouched by paging.
    unsafe { platform.activate() };
    println!(
        "baremetal: own page tables live (CR3 {:#x}); ECAM at {:#x} buses {}..={}",
        platform.root_table(),
        regions[0].base,
        regions[0].start_bus,
        regions[0].end_bus
    );
    // SAFETY: ring 0, nothing else uses the PIT.
    let clock = unsafe { TscClock::calibrate_with_pit() };
    println!(
        "baremetal: TSC {} MHz (against the PIT)",
        clock.hz() / 1_000_000
    );
    let vtd = match dmakit_baremetal::acpi::dmar(&read, rsdp) {
        Ok(Some(d)) => d
            .units
            .first()
            .map(|u| vtd(&platform, clock, d.host_address_width, *u)),
        Ok(None) => None,
        Err(e) => fail("ACPI DMAR", e),
    };
    match &vtd {
        Some(v) => println!("baremetal: VT-d IOMMU on: {:?}", v.info()),
        None => println!("baremetal: no IOMMU described (no ACPI DMAR): every function bypasses"),
    }
    let mmio: Arc<dyn dmakit::platform::Mmio> = platform.clone();
    let unit = vtd.clone();
    let bus = match EcamBus::builder(mmio, regions[0])
        .dma(move |f: &FunctionInfo| tests::dma_view(f, unit.as_ref()))
        .delay_us(move |us| clock.spin_ns(us.saturating_mul(1000)))
        .scan()
    {
        Ok(b) => b,
        Err(e) => fail("ECAM walk", e),
    };
    for f in bus.ecam_functions() {
        for b in f.memory_bars() {
            // SAFETY: a memory BAR the firmware assigned: device registers.
            if let Err(e) = unsafe { platform.add_device_memory(b.base, b.len) } {
                fail("BAR as device memory", e);
            }
        }
    }
    let (passed, failed) = tests::run_all(&tests::Kernel {
        platform,
        bus,
        clock,
        vtd,
    });
    println!("baremetal: {passed} passed, {failed} failed");
    sys::qemu_exit(if failed == 0 { 0 } else { 1 })
}
