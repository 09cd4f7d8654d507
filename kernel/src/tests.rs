//! The tests the kernel runs: the NVMe driver's portable suite (each through
//! `suite::run`, which checks that the platform's resources come back), the edu driver's
//! suite functions that apply to a machine without an IOMMU and without interrupt
//! delivery, the same drivers on scattered pages, and checks of the platform itself.

use crate::println;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use dmakit::device::{DmaView, PciBus, PciFunction, PciMatch};
use dmakit::platform::{
    CacheMode, MapPiece, MapRequest, MapSource, PageRequest, PhysicalMemory, Task, VirtualMemory,
    Wiring,
};
use dmakit_baremetal::pci::{EcamBus, FunctionInfo};
use dmakit_baremetal::{BareMetal, Placement, TscClock};
use dmakit_edu::suite::{self as edu_suite, Rig};
use dmakit_edu::{EduOptions, EDU_DEVICE, EDU_VENDOR};
use dmakit_nvme::suite::{self, TestMachine};
use dmakit_nvme::{Timer, NVME_CLASS};

/// The VT-d unit, on the kernel's platform.
pub type Iommu = dmakit_vtd::Vtd<Arc<BareMetal>>;

/// What the tests run on.
pub struct Kernel {
    /// The platform seam.
    pub platform: Arc<BareMetal>,
    /// The device seam.
    pub bus: EcamBus,
    /// The calibrated TSC.
    pub clock: TscClock,
    /// The IOMMU, when the machine has one.
    pub vtd: Option<Iommu>,
}

/// The edu's address bits by PCI address: baremetal/run gives the edu at 00:06.0
/// `dma_mask=0xfffffff` (28 bits) and every other one 64 bits. Nothing on the bus reports
/// an edu's mask, so the kernel is told, as a driver would be by its device's datasheet.
fn edu_bits(f: &FunctionInfo) -> u32 {
    match (f.address.bus, f.address.device, f.address.function) {
        (0, 6, 0) => 28,
        _ => 64,
    }
}

fn limit(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// The first IO address a domain's mapper hands out, and the end of its window: below the
/// interrupt range (0xFEE0_0000, which DMA cannot reach as memory) and below what the
/// device can address.
const IOVA_BASE: u64 = 0x10_0000;
const IOVA_END: u64 = 0xFEE0_0000;

/// Each function's DMA view. With the IOMMU, an NVMe or edu function gets a domain of its
/// own and a mapper whose window stays below what the device can address; every other
/// function (and any whose domain cannot be made) is left blocked by the IOMMU. Without
/// one: bypass, up to what the device can address (bounce buffers below it).
pub fn dma_view(f: &FunctionInfo, vtd: Option<&Iommu>) -> DmaView {
    let edu = f.id.vendor == EDU_VENDOR && f.id.device == EDU_DEVICE;
    let bits = if edu { edu_bits(f) } else { 64 };
    let max_address = limit(bits);
    let Some(vtd) = vtd else {
        return DmaView::Bypass { max_address };
    };
    if !(edu || f.id.class == NVME_CLASS) {
        return DmaView::Bypass { max_address };
    }
    let end = IOVA_END.min(max_address.saturating_add(1));
    let window = dmakit_vtd::MapperOptions::new(IOVA_BASE, end - IOVA_BASE);
    let made = dmakit_vtd::devfn(f.address.device, f.address.function)
        .and_then(|devfn| vtd.domain(f.address.bus, devfn))
        .and_then(|d| d.mapper(window));
    match made {
        Ok(m) => DmaView::Mapped(m),
        Err(e) => {
            println!("baremetal: no VT-d domain for {}: {e}", f.address);
            DmaView::Bypass { max_address }
        }
    }
}

/// How a function's DMA reaches memory, for reports.
fn view_text(f: &dyn PciFunction) -> &'static str {
    match f.dma() {
        DmaView::Mapped(_) => "through its VT-d domain",
        DmaView::Bypass { .. } => "bypass",
    }
}

/// The drivers' timer over the TSC; a pause spins a microsecond.
struct TscTimer(TscClock);

impl Timer for TscTimer {
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
    fn pause(&self) {
        self.0.spin_ns(1_000);
    }
}

/// What a test could leak, from the platform's own books.
fn resources(p: &BareMetal, vtd: Option<&Iommu>) -> Vec<(&'static str, u64)> {
    let u = p.usage();
    // A VT-d domain's paging tables grow with what was mapped and stay until the domain
    // goes (freeing them sooner needs a paging-structure invalidation first): they are the
    // IOMMU's, counted apart. A table page kept because an invalidation failed is a leak.
    let (tables, leaked) = vtd.map_or((0, 0), |v| {
        let s = v.stats();
        (s.table_pages, s.leaked_pages)
    });
    vec![
        ("allocations", u.allocations.saturating_sub(tables)),
        (
            "allocated bytes",
            u.allocated_bytes.saturating_sub(tables * 4096),
        ),
        ("mappings", u.mappings),
        ("wirings", u.wirings),
        ("wired pages", u.wired_pages),
        ("IOMMU table pages kept after a failed invalidation", leaked),
    ]
}

struct NvmeMachine {
    platform: Arc<BareMetal>,
    vtd: Option<Iommu>,
    function: Arc<dyn PciFunction>,
    timer: Arc<dyn Timer>,
}

impl TestMachine<Arc<BareMetal>> for NvmeMachine {
    fn platform(&self) -> Arc<BareMetal> {
        self.platform.clone()
    }
    fn function(&self) -> Arc<dyn PciFunction> {
        self.function.clone()
    }
    fn timer(&self) -> Arc<dyn Timer> {
        self.timer.clone()
    }
    fn serial(&self) -> Option<String> {
        Some("dmakit0".into())
    }
    fn resources(&self) -> Vec<(&'static str, u64)> {
        resources(&self.platform, self.vtd.as_ref())
    }
    fn stored(&self, _nsid: u32, _offset: u64, _len: usize) -> Option<Vec<u8>> {
        None
    }
}

/// One edu suite function on a rig.
type EduTest<'k> = Box<dyn Fn(&Rig<'k, Arc<BareMetal>>) -> Result<String, String> + 'k>;

type Test<'k> = (String, Box<dyn Fn() -> Result<String, String> + 'k>);

/// Runs `f`, then checks that the platform's books are as before.
fn checked(k: &Kernel, f: impl FnOnce() -> Result<String, String>) -> Result<String, String> {
    let before = resources(&k.platform, k.vtd.as_ref());
    let r = f()?;
    let after = resources(&k.platform, k.vtd.as_ref());
    if before != after {
        return Err(format!(
            "resources not given back: before {before:?}, after {after:?}"
        ));
    }
    Ok(r)
}

/// Physical runs of a fresh allocation of `pages` pages (how scattered memory is now).
fn runs_of_fresh(p: &BareMetal, pages: u64) -> Result<usize, String> {
    let len = pages * 4096;
    let va = p
        .allocate_pages(len, &PageRequest::WIRED)
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    let r = p.physical_runs(Task::KERNEL, va, len, &mut |_| n += 1);
    p.free_pages(va, len).map_err(|e| e.to_string())?;
    r.map_err(|e| e.to_string())?;
    Ok(n)
}

/// A page mapped a second time, uncached, is read through the live page tables (a load
/// at the new address, not through the platform) and shows what was written through the
/// first; a read-only mapping refuses the platform's stores; unmapped, the address is gone.
fn second_mapping(k: &Kernel) -> Result<String, String> {
    let p = &k.platform;
    let e = |w: &'static str| move |e: dmakit::Error| format!("{w}: {e}");
    let va = p
        .allocate_pages(8192, &PageRequest::WIRED)
        .map_err(e("allocate"))?;
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 251) as u8).collect();
    use dmakit::platform::CpuAccess;
    p.write_virt(Task::KERNEL, va, &data).map_err(e("write"))?;
    let req = MapRequest {
        task: Task::KERNEL,
        at: None,
        read_only: true,
        cache: CacheMode::Inhibit,
    };
    let piece = MapPiece {
        src: MapSource::Virtual(Task::KERNEL, va),
        len: 8192,
    };
    let result = (|| {
        let m = p.map_pages(&[piece], &req).map_err(e("map"))?;
        let t = p
            .translate(m)
            .ok_or("the mapping is not in the page tables")?;
        let mut got = vec![0u8; 8192];
        crate::sys::read_mapped(m.0, &mut got);
        let refused = p.write_virt(Task::KERNEL, m, &[1]).is_err();
        let busy = p.free_pages(va, 8192).is_err();
        p.unmap_pages(Task::KERNEL, m, 8192).map_err(e("unmap"))?;
        let gone = p.translate(m).is_none();
        if got != data || !refused || !busy || !gone || t.attrs.cache != CacheMode::Inhibit {
            return Err(format!(
                "read back equal {}, store refused {refused}, free refused while mapped {busy}, \
                 gone after unmap {gone}, {t:?}",
                got == data
            ));
        }
        Ok(format!(
            "8 KiB at {:#x} mapped again at {:#x} (uncached, read-only): loads through the MMU \
             see the data; stores refused; free refused while mapped; unmapped cleanly",
            va.0, m.0
        ))
    })();
    p.free_pages(va, 8192).map_err(e("free"))?;
    result
}

/// Memory below a physical limit, contiguous and aligned, comes from low memory; by
/// default memory comes from the top; the platform's books balance.
fn allocator_limits(k: &Kernel) -> Result<String, String> {
    let p = &k.platform;
    let req = PageRequest {
        align: 1 << 16,
        phys_limit: 0xfff_ffff,
        phys_min: 0,
        contiguous: true,
        pageable: false,
    };
    let e = |w: &'static str| move |e: dmakit::Error| format!("{w}: {e}");
    let low = p.allocate_pages(5 * 4096, &req).map_err(e("low"))?;
    let high = p
        .allocate_pages(4096, &PageRequest::WIRED)
        .map_err(e("high"))?;
    let mut lr = Vec::new();
    let mut hr = Vec::new();
    p.physical_runs(Task::KERNEL, low, 5 * 4096, &mut |r| lr.push(r))
        .map_err(e("runs"))?;
    p.physical_runs(Task::KERNEL, high, 4096, &mut |r| hr.push(r))
        .map_err(e("runs"))?;
    p.free_pages(low, 5 * 4096).map_err(e("free"))?;
    p.free_pages(high, 4096).map_err(e("free"))?;
    let ok = lr.len() == 1
        && lr[0].addr.0 % (1 << 16) == 0
        && lr[0].addr.0 + lr[0].len - 1 <= 0xfff_ffff
        && hr[0].addr.0 >= 0x1000_0000;
    if !ok {
        return Err(format!("low {lr:?}, high {hr:?}"));
    }
    Ok(format!(
        "contiguous 64 KiB-aligned below 2^28 at {:#x}; unconstrained at {:#x}",
        lr[0].addr.0, hr[0].addr.0
    ))
}

/// A function-level reset of the NVMe controller: the configuration header comes back
/// (BAR0 where the firmware put it, the controller answering there), bus mastering is off,
/// and the driver brings the controller up again.
fn nvme_flr(k: &Kernel, m: &NvmeMachine) -> Result<String, String> {
    use dmakit::platform::Width;
    let f = &m.function;
    let bar = f.bar(0).map_err(|e| format!("BAR0: {e}"))?;
    f.set_bus_master(true).map_err(|e| e.to_string())?;
    let before = dmakit::map::mapped_read32(&k.platform, bar.base).map_err(|e| e.to_string())?;
    f.reset().map_err(|e| format!("reset: {e}"))?;
    let cmd = f.config_read(0x04, Width::W16).map_err(|e| e.to_string())?;
    let bar_after = f.config_read(0x10, Width::W32).map_err(|e| e.to_string())?;
    let after = dmakit::map::mapped_read32(&k.platform, bar.base).map_err(|e| e.to_string())?;
    if cmd & 0x4 != 0
        || cmd & 0x2 == 0
        || u64::from(bar_after & !0xf) != bar.base.0 & 0xffff_ffff
        || after != before
    {
        return Err(format!(
            "after FLR: command {cmd:#x}, BAR0 register {bar_after:#x} (was {:#x}), CAP {after:#x} (was {before:#x})",
            bar.base.0
        ));
    }
    suite::run(m, suite::identify)?;
    Ok(format!(
        "{}: header restored (BAR0 {:#x}, memory decoding on, bus mastering off), CAP {after:#x}, Identify after it",
        f.address(),
        bar.base.0
    ))
}

fn nvme_tests<'k>(k: &'k Kernel, tests: &mut Vec<Test<'k>>) {
    let Ok(function) = k.bus.find(&PciMatch::class(NVME_CLASS)) else {
        tests.push((
            "nvme_present".into(),
            Box::new(|| Err("no NVMe controller on the bus".into())),
        ));
        return;
    };
    let machine = Arc::new(NvmeMachine {
        platform: k.platform.clone(),
        vtd: k.vtd.clone(),
        function,
        timer: Arc::new(TscTimer(k.clock)),
    });
    for (name, t) in suite::tests::<Arc<BareMetal>>() {
        let m = machine.clone();
        tests.push((
            name.into(),
            Box::new(move || {
                suite::run(&*m, t)?;
                Ok(format!(
                    "{} ({}), resources given back",
                    m.function.address(),
                    view_text(&*m.function)
                ))
            }),
        ));
    }
    let m = machine.clone();
    tests.push((
        "baremetal_nvme_function_level_reset".into(),
        Box::new(move || nvme_flr(k, &m)),
    ));
    // The same data path on memory where no two pages of an allocation are adjacent.
    for (name, t) in [
        (
            "scattered_write_read",
            suite::scattered_write_read as suite::TestFn<Arc<BareMetal>>,
        ),
        ("bounced_odd_pieces", suite::bounced_odd_pieces),
        (
            "split_beyond_max_transfer",
            suite::split_beyond_max_transfer,
        ),
    ] {
        let m = machine.clone();
        tests.push((
            format!("nvme_{name}@scattered_pages"),
            Box::new(move || {
                k.platform.set_placement(Placement::Scattered);
                let r = (|| {
                    let runs = runs_of_fresh(&k.platform, 8)?;
                    if runs != 8 {
                        return Err(format!("8 pages in {runs} runs: not scattered"));
                    }
                    suite::run(&*m, t)
                })();
                k.platform.set_placement(Placement::Packed);
                r?;
                Ok(
                    "every page of every allocation its own physical run; resources given back"
                        .into(),
                )
            }),
        ));
    }
}

fn edu_tests<'k>(k: &'k Kernel, pause: &'k dyn Fn(), tests: &mut Vec<Test<'k>>) {
    let edus: Vec<_> = k
        .bus
        .ecam_functions()
        .iter()
        .filter(|f| f.info().id.vendor == EDU_VENDOR && f.info().id.device == EDU_DEVICE)
        .cloned()
        .collect();
    if edus.is_empty() {
        tests.push((
            "edu_present".into(),
            Box::new(|| Err("no edu on the bus".into())),
        ));
    }
    for f in edus {
        let bits = edu_bits(f.info());
        let function: Arc<dyn PciFunction> = f.clone();
        let rig = alloc::rc::Rc::new(Rig::new(
            k.platform.clone(),
            function,
            EduOptions::new().dma_bits(bits),
            pause,
            20_000,
        ));
        let mut add = |name: String, t: EduTest<'k>| {
            let rig = rig.clone();
            tests.push((name, Box::new(move || checked(k, || t(&rig)))));
        };
        add(format!("edu_{bits}bit_probe"), Box::new(edu_suite::probe));
        add(
            format!("edu_{bits}bit_bar_as_device_memory"),
            Box::new(edu_suite::device_memory),
        );
        add(
            format!("edu_dma_round_trip_{bits}bit"),
            Box::new(|r| edu_suite::round_trip(r).map(|x| x.to_string())),
        );
        if bits == 64 {
            add(
                "edu_stop_in_order".into(),
                Box::new(edu_suite::stop_in_order),
            );
        }
        add(
            format!("edu_{bits}bit_synchronous_polling"),
            Box::new(edu_suite::synchronous_polling),
        );
        add(
            format!("edu_{bits}bit_refuses_bad_transfers"),
            Box::new(edu_suite::refuses_bad_transfers),
        );
        if bits < 64 && k.vtd.is_none() {
            // Buffers come from the top of a 1 GiB machine, above the edu's 2^28: the
            // commands must bounce them below it.
            add(
                format!("edu_{bits}bit_bounce_below_limit"),
                Box::new(|r| edu_suite::bounce_below_limit(r).map(|x| x.to_string())),
            );
        }
        let f2 = f.clone();
        add(
            format!("edu_{bits}bit_reset_refused_without_flr"),
            Box::new(move |_| {
                let has_flr = f2.info().caps.flr;
                match f2.reset() {
                    Err(dmakit::Error::Unsupported { what }) if !has_flr => {
                        Ok(format!("no function-level reset: Unsupported ({what})"))
                    }
                    other => Err(format!(
                        "reset of an edu (FLR advertised: {has_flr}): {other:?}"
                    )),
                }
            }),
        );
    }
}

/// Runs everything; returns (passed, failed).
pub fn run_all(k: &Kernel) -> (u32, u32) {
    let clock = k.clock;
    let pause = move || clock.spin_ns(1_000_000);
    let mut tests: Vec<Test<'_>> = Vec::new();
    tests.push((
        "baremetal_ecam_walk".into(),
        Box::new(|| {
            let fs = k.bus.functions();
            let nvme = k.bus.matching(&PciMatch::class(NVME_CLASS)).len();
            let edu = k.bus.matching(&PciMatch::ids(EDU_VENDOR, EDU_DEVICE)).len();
            if nvme == 0 || edu < 2 {
                return Err(format!("{} functions, {nvme} NVMe, {edu} edu", fs.len()));
            }
            let list: Vec<String> = fs
                .iter()
                .map(|f| {
                    format!(
                        "{} {:04x}:{:04x}",
                        f.address(),
                        f.id().vendor,
                        f.id().device
                    )
                })
                .collect();
            Ok(format!("{} functions: {}", fs.len(), list.join(", ")))
        }),
    ));
    tests.push((
        "baremetal_allocator_limits".into(),
        Box::new(|| checked(k, || allocator_limits(k))),
    ));
    tests.push((
        "baremetal_second_mapping_through_the_mmu".into(),
        Box::new(|| checked(k, || second_mapping(k))),
    ));
    nvme_tests(k, &mut tests);
    edu_tests(k, &pause, &mut tests);
    if let Some(vtd) = &k.vtd {
        tests.push((
            "vtd_unmapped_iova_faults_and_writes_nothing".into(),
            Box::new(move || checked(k, || unmapped_iova_faults(k, vtd))),
        ));
    }
    // The same names in both boots, told apart by the IOMMU.
    let suffix = if k.vtd.is_some() { "@vtd" } else { "" };
    let (mut passed, mut failed) = (0, 0);
    for (name, t) in tests {
        let name = format!("{name}{suffix}");
        let start = k.clock.now_ns();
        match t() {
            Ok(d) => {
                passed += 1;
                println!(
                    "ok {name} ({} ms): {d}",
                    (k.clock.now_ns() - start) / 1_000_000
                );
            }
            Err(why) => {
                failed += 1;
                println!("FAILED {name}: {why}");
            }
        }
    }
    (passed, failed)
}

/// An edu DMA to an IO address that was mapped and then unmapped: the VT-d unit blocks it,
/// the fault is reported through dmakit (source, address, write), and the page the address
/// once led to is untouched.
fn unmapped_iova_faults(k: &Kernel, vtd: &Iommu) -> Result<String, String> {
    use dmakit::map::{mapped_read32, mapped_write32, mapped_write64};
    use dmakit::mapper::Access;
    use dmakit_edu::regs;
    let e = |w: &'static str| move |e: dmakit::Error| format!("{w}: {e}");
    let f = k
        .bus
        .find(&PciMatch::ids(EDU_VENDOR, EDU_DEVICE))
        .map_err(e("edu"))?;
    let DmaView::Mapped(mapper) = f.dma() else {
        return Err("the edu has no VT-d domain".into());
    };
    let p = &k.platform;
    let va = p
        .allocate_pages(4096, &PageRequest::WIRED)
        .map_err(e("page"))?;
    let result = (|| {
        use dmakit::platform::CpuAccess;
        p.write_virt(Task::KERNEL, va, &[0xAA; 4096])
            .map_err(e("fill"))?;
        let mut pa = None;
        p.physical_runs(Task::KERNEL, va, 4096, &mut |r| pa = Some(r.addr))
            .map_err(e("translate"))?;
        let pa = pa.ok_or("no physical page")?;
        let iova = mapper.iovm_alloc(1).map_err(e("iovm_alloc"))?;
        mapper
            .iovm_insert_page(iova, pa, Access::READ_WRITE)
            .map_err(e("insert"))?;
        mapper.iovm_free(iova, 1).map_err(e("iovm_free"))?;
        let _ = vtd.faults().map_err(e("faults"))?; // start from a clean log
        let bar = f.bar(0).map_err(e("BAR0"))?;
        let reg = |off: u64| dmakit::PhysAddr(bar.base.0 + off);
        f.set_bus_master(true).map_err(e("bus master"))?;
        mapped_write64(p, reg(regs::DMA_SRC), 0x40000).map_err(e("src"))?;
        mapped_write64(p, reg(regs::DMA_DST), iova.0).map_err(e("dst"))?;
        mapped_write64(p, reg(regs::DMA_COUNT), 64).map_err(e("count"))?;
        mapped_write32(p, reg(regs::DMA_CMD), regs::CMD_START | regs::CMD_TO_RAM)
            .map_err(e("start"))?;
        let mut spins = 0;
        while mapped_read32(p, reg(regs::DMA_CMD)).map_err(e("cmd"))? & regs::CMD_START != 0 {
            k.clock.spin_ns(10_000);
            spins += 1;
            if spins > 100_000 {
                return Err("the edu's DMA never finished".into());
            }
        }
        let _ = f.set_bus_master(false);
        let log = vtd.faults().map_err(e("faults"))?;
        let mut back = [0u8; 4096];
        p.read_virt(Task::KERNEL, va, &mut back)
            .map_err(e("read back"))?;
        let hit = log.faults.iter().find(|x| x.iova.0 == iova.0 & !0xfff);
        let untouched = back.iter().all(|&b| b == 0xAA);
        match hit {
            Some(x) if x.write && untouched => Ok(format!(
                "edu {} wrote 64 bytes to unmapped IOVA {:#x}: VT-d fault {x:?}; the page it once mapped ({:#x}) unchanged",
                f.address(),
                iova.0,
                pa.0
            )),
            _ => Err(format!(
                "faults {:?}; page untouched {untouched}",
                log.faults
            )),
        }
    })();
    p.free_pages(va, 4096).map_err(e("free"))?;
    result
}
