//! dmakit's tests against real (emulated) devices, run inside the QEMU guest by `guest/run`.
//!
//! ```text
//! vfio_guest --edu 0000:00:05.0:64 --edu 0000:00:06.0:28 --unbound 0000:00:1f.2 [--nvme ...]
//!            [--bench OFFSET_MIB:SIZE_MIB:IOS:WARMUP]
//! ```
//!
//! Each test prints `ok NAME: detail` or `FAILED NAME: why`; the last line is
//! `N passed, M failed`, and the exit status is non-zero if any failed. With `--bench`, the
//! NVMe random-read tests time IOS 4 KiB reads (after WARMUP untimed ones) in the SIZE_MIB
//! region at OFFSET_MIB of the disk (which the write tests leave alone) at queue depth 1 and
//! 32, and print `bench NAME dmakit_ns_per_op=... ios=...` for `guest/run`, which sets the
//! kernel's driver and fio on the same region with the same counts. The devices are
//! QEMU's, the IOMMU is QEMU's emulated VT-d and VFIO is the guest kernel's: they judge.

use dmakit::device::{DmaView, InterruptKind, PciBus, PciFunction, PciMatch};
use dmakit::dma::InterruptSink;
use dmakit::map::{mapped_read32, mapped_write32};
use dmakit::mapper::{Access, Mapper};
use dmakit::platform::Width;
use dmakit::platform::{collect_runs, PageRequest, PhysicalMemory, Task};
use dmakit::{Direction, Error, IoAddr};
use dmakit_edu::suite::{self as edu_tests, ResetOutcome, Rig};
use dmakit_edu::EduOptions;
use dmakit_linux::vfio::{Container, PciAddress, VfioBus, VfioDevice, VfioFunction, VfioMapper};
use dmakit_linux::Host;
use dmakit_linux::MonotonicTimer;
use dmakit_nvme::suite::{self, TestMachine};
use dmakit_nvme::{DmaBuffer, IoQueue, NamespaceIdentity, QueueOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type TestResult = Result<String, String>;

/// Turns any error into the failure text.
fn e2s<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn check(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(why())
    }
}

/// The random-read benchmarks' region and counts (`--bench OFFSET_MIB:SIZE_MIB:IOS:WARMUP`).
#[derive(Clone, Copy, Debug)]
struct Bench {
    offset: u64,
    size: u64,
    ios: usize,
    warmup: usize,
}

struct Config {
    nvme: Vec<NvmeTarget>,
    bench: Option<Bench>,
    edu: Vec<(PciAddress, u32)>,
    unbound: Option<PciAddress>,
    nonviable: Option<PciAddress>,
}

/// An NVMe controller to test (`--nvme LABEL,ADDRESS,SERIAL`, or `--nvme ADDRESS` for the
/// default one with serial `dmakit0`).
#[derive(Clone, Debug)]
struct NvmeTarget {
    label: String,
    addr: PciAddress,
    serial: String,
}

impl NvmeTarget {
    fn parse(v: &str) -> Result<NvmeTarget, String> {
        let parts: Vec<&str> = v.split(',').collect();
        let (label, addr, serial) = match parts[..] {
            [a] => ("default", a, "dmakit0"),
            [l, a, s] => (l, a, s),
            _ => return Err("--nvme LABEL,ADDRESS,SERIAL".into()),
        };
        Ok(NvmeTarget {
            label: label.into(),
            addr: PciAddress::parse(addr).map_err(|e| e.to_string())?,
            serial: serial.into(),
        })
    }
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        nvme: Vec::new(),
        bench: None,
        edu: Vec::new(),
        unbound: None,
        nonviable: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--edu" => {
                let (addr, bits) = v.rsplit_once(':').ok_or("--edu ADDR:BITS")?;
                let addr = PciAddress::parse(addr).map_err(|e| e.to_string())?;
                c.edu
                    .push((addr, bits.parse().map_err(|_| "--edu ADDR:BITS")?));
            }
            "--unbound" => c.unbound = Some(PciAddress::parse(&v).map_err(|e| e.to_string())?),
            "--nonviable" => c.nonviable = Some(PciAddress::parse(&v).map_err(|e| e.to_string())?),
            "--memlock-child" => {
                let a = PciAddress::parse(&v).map_err(|e| e.to_string())?;
                std::process::exit(memlock_child(a));
            }
            "--nvme" => c.nvme.push(NvmeTarget::parse(&v)?),
            "--bench" => {
                let usage = "--bench OFFSET_MIB:SIZE_MIB:IOS:WARMUP";
                let n: Vec<u64> = v
                    .split(':')
                    .map(|x| x.parse().map_err(|_| usage))
                    .collect::<Result<_, _>>()?;
                let [off, size, ios, warmup] = n[..] else {
                    return Err(usage.into());
                };
                if size == 0 || ios == 0 {
                    return Err(format!("{usage}: the size and the count must not be 0"));
                }
                c.bench = Some(Bench {
                    offset: off << 20,
                    size: size << 20,
                    ios: ios as usize,
                    warmup: warmup as usize,
                });
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(c)
}

/// Opens `addr` in a new container: (container, device).
fn open(addr: PciAddress) -> Result<(Arc<Container>, VfioDevice), String> {
    let c = Arc::new(Container::open().map_err(e2s("open /dev/vfio/vfio"))?);
    let d = VfioDevice::open(&c, addr).map_err(e2s("open the device"))?;
    Ok((c, d))
}

fn missing_device() -> TestResult {
    let c = Arc::new(Container::open().map_err(e2s("container"))?);
    let addr = PciAddress::parse("0000:00:1e.7").map_err(e2s("parse"))?;
    match VfioDevice::open(&c, addr) {
        Err(e @ Error::NotAttached { .. }) if e.to_string().contains("no such PCI function") => {
            Ok(format!("{e} [{}]", e.io_return().name()))
        }
        Err(e) => Err(format!("wrong error: {e}")),
        Ok(_) => Err("a device that does not exist opened".into()),
    }
}

fn unbound_device(addr: PciAddress) -> TestResult {
    let c = Arc::new(Container::open().map_err(e2s("container"))?);
    match VfioDevice::open(&c, addr) {
        Err(e @ Error::NotAttached { .. })
            if e.to_string().contains("not vfio-pci")
                || e.to_string().contains("vfio-pci needed") =>
        {
            Ok(format!("{e}"))
        }
        Err(e) => Err(format!("wrong error: {e}")),
        Ok(_) => Err("a device not bound to vfio-pci opened".into()),
    }
}

/// A device bound to vfio-pci whose IOMMU group holds a device another driver has.
fn nonviable_group(addr: PciAddress) -> TestResult {
    let c = Arc::new(Container::open().map_err(e2s("container"))?);
    match VfioDevice::open(&c, addr) {
        Err(e @ Error::NotAttached { .. }) if e.to_string().contains("not viable") => {
            Ok(format!("{e}"))
        }
        Err(e) => Err(format!("wrong error: {e}")),
        Ok(_) => Err("a device in a non-viable group opened".into()),
    }
}

/// Runs [`memlock_child`] in a child process and checks its verdict.
fn memlock_too_low(addr: PciAddress) -> TestResult {
    let out = std::process::Command::new("/proc/self/exe")
        .args(["--memlock-child", &addr.to_string()])
        .output()
        .map_err(e2s("spawn the child"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    check(out.status.success(), || format!("child: {text}"))?;
    Ok(text)
}

/// In a child: drops CAP_IPC_LOCK, sets RLIMIT_MEMLOCK to 64 KiB and maps 256 KiB of
/// wired memory for the device; the map must fail with CannotWire naming the limit.
/// Returns the exit status (0: the expected error).
fn memlock_child(addr: PciAddress) -> i32 {
    let run = || -> Result<String, String> {
        let host = Arc::new(Host::new().map_err(e2s("host"))?);
        let (c, _d) = open(addr)?;
        let mapper = VfioMapper::new(c, host.clone(), u64::MAX).map_err(e2s("mapper"))?;
        let page = host.page_size().bytes();
        let len = 64 * page;
        let va = host
            .allocate_pages(len, &PageRequest::WIRED)
            .map_err(e2s("allocate"))?;
        let runs = collect_runs(&*host, Task::KERNEL, va, len).map_err(e2s("runs"))?;
        let mut caps = rustix::thread::capabilities(None).map_err(e2s("capget"))?;
        caps.effective -= rustix::thread::CapabilitySet::IPC_LOCK;
        caps.permitted -= rustix::thread::CapabilitySet::IPC_LOCK;
        rustix::thread::set_capabilities(None, caps).map_err(e2s("capset"))?;
        let lim = rustix::process::Rlimit {
            current: Some(64 << 10),
            maximum: Some(64 << 10),
        };
        rustix::process::setrlimit(rustix::process::Resource::Memlock, lim)
            .map_err(e2s("setrlimit"))?;
        let iova = mapper.iovm_alloc(64).map_err(e2s("iovm_alloc"))?;
        let mut i = 0;
        for r in &runs {
            for off in (0..r.len).step_by(page as usize) {
                let at = IoAddr(iova.0 + i * page);
                match mapper.iovm_insert_page(at, dmakit::PhysAddr(r.addr.0 + off), Access::READ) {
                    Ok(()) => i += 1,
                    Err(e @ Error::CannotWire { .. })
                        if e.to_string().contains("RLIMIT_MEMLOCK is 64 KiB") =>
                    {
                        mapper.iovm_free(iova, 64).map_err(e2s("free"))?;
                        mapper.check_unmapped().map_err(e2s("teardown"))?;
                        return Ok(format!("after {i} pages: {e} [{}]", e.io_return().name()));
                    }
                    Err(e) => return Err(format!("wrong error after {i} pages: {e}")),
                }
            }
        }
        Err("256 KiB mapped under a 64 KiB RLIMIT_MEMLOCK without CAP_IPC_LOCK".into())
    };
    match run() {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(t) => {
            println!("{t}");
            1
        }
    }
}

/// The IOVA ranges from the capability chain: VT-d's MSI window is a hole.
fn iommu_info(addr: PciAddress) -> TestResult {
    let (c, _d) = open(addr)?;
    let info = c.info().map_err(e2s("info"))?;
    check(info.page_sizes & 0x1000 != 0, || {
        format!("no 4 KiB pages: {:#x}", info.page_sizes)
    })?;
    check(info.iova_ranges.len() >= 2, || {
        format!("no hole: {:x?}", info.iova_ranges)
    })?;
    check(!info.contains(0xfee0_0000, 0x1000), || {
        "the MSI window is usable?".into()
    })?;
    check(info.contains(0x1000, 0x1000), || {
        "low memory is not usable?".into()
    })?;
    Ok(format!(
        "ranges {:x?}, page sizes {:#x}, dma_avail {:?}",
        info.iova_ranges, info.page_sizes, info.dma_avail
    ))
}

/// An IOVA inside the MSI hole: refused by the mapper, and by the kernel too.
fn iova_outside_ranges(addr: PciAddress) -> TestResult {
    let host = Arc::new(Host::new().map_err(e2s("host"))?);
    let (c, _d) = open(addr)?;
    let m = VfioMapper::new(c, host.clone(), u64::MAX).map_err(e2s("mapper"))?;
    let ours = match m.reserve(IoAddr(0xfee0_0000), 1) {
        Err(e @ Error::BadArgument { .. }) if e.to_string().contains("valid ranges") => e,
        Err(e) => return Err(format!("wrong error: {e}")),
        Ok(()) => return Err("reserved an IOVA in the MSI window".into()),
    };
    let page = host.page_size().bytes();
    let va = host
        .allocate_pages(page, &PageRequest::WIRED)
        .map_err(e2s("allocate"))?;
    let pa = collect_runs(&*host, Task::KERNEL, va, page).map_err(e2s("runs"))?[0].addr;
    let kernel = m.map_unchecked(IoAddr(0xfee0_0000), pa, Access::READ_WRITE);
    let kernel = match kernel {
        Err(e) => e,
        Ok(()) => return Err("the kernel mapped an IOVA in the MSI window".into()),
    };
    check(m.mapped_pages() == 0, || "a page stayed recorded".into())?;
    m.check_unmapped().map_err(e2s("teardown"))?;
    host.free_pages(va, page).map_err(e2s("free"))?;
    Ok(format!("mapper: {ours}; kernel: {kernel}"))
}

/// 1 GiB mapped for a device at once: 512 huge pages (2 MiB, physically contiguous each)
/// inserted as runs into one IO allocation, each run one kernel mapping (page by page it
/// would take 262144, four times the container's default limit of 65535). Prints the map
/// and unmap times per GiB; every run translates back to its page and nothing stays mapped.
fn vfio_maps_1gib(addr: PciAddress) -> TestResult {
    const HUGE: u64 = 2 << 20;
    const TOTAL: u64 = 1 << 30;
    let host = Arc::new(Host::new().map_err(e2s("host"))?);
    let (c, _d) = open(addr)?;
    let m = VfioMapper::new(c, host.clone(), u64::MAX).map_err(e2s("mapper"))?;
    let page = m.page_size().bytes();
    let req = PageRequest {
        contiguous: true,
        ..PageRequest::WIRED
    };
    let mut chunks = Vec::new();
    let result = (|| -> TestResult {
        for i in 0..TOTAL / HUGE {
            let va = host
                .allocate_pages(HUGE, &req)
                .map_err(|e| format!("huge page {i} of {}: {e}", TOTAL / HUGE))?;
            chunks.push(va);
        }
        let pages = TOTAL / page;
        let iova = m.iovm_alloc(pages).map_err(e2s("iovm_alloc 1 GiB"))?;
        let t0 = Instant::now();
        let mut firsts = Vec::new();
        for (i, &va) in chunks.iter().enumerate() {
            let runs = collect_runs(&*host, Task::KERNEL, va, HUGE).map_err(e2s("runs"))?;
            check(runs.len() == 1, || {
                format!("huge page {i}: {} runs", runs.len())
            })?;
            let at = IoAddr(iova.0 + i as u64 * HUGE);
            m.iovm_insert_run(at, runs[0].addr, HUGE / page, Access::READ_WRITE)
                .map_err(|e| format!("run {i} at {at:?}: {e}"))?;
            firsts.push((at, runs[0].addr));
        }
        let map_time = t0.elapsed();
        let (mapped, mappings) = (m.mapped_pages() as u64, m.mappings());
        check(mapped == pages && mappings == chunks.len(), || {
            format!(
                "{mapped} pages in {mappings} mappings for {} huge pages",
                chunks.len()
            )
        })?;
        for &(at, pa) in &firsts {
            let last = IoAddr(at.0 + HUGE - 1);
            let (got, _) = m.translate(last).map_err(e2s("translate"))?;
            check(got.0 == pa.0 + HUGE - 1, || {
                format!("{last:?} translates to {got:?}, not into {pa:?}")
            })?;
        }
        let t1 = Instant::now();
        m.iovm_free(iova, pages).map_err(e2s("iovm_free 1 GiB"))?;
        let unmap_time = t1.elapsed();
        m.check_unmapped().map_err(e2s("teardown"))?;
        Ok(format!(
            "1 GiB in {mappings} kernel mappings ({} pages of {} KiB); map {:.1} ms/GiB, unmap \
             {:.1} ms/GiB; the container allows {:?} mappings",
            pages,
            page >> 10,
            map_time.as_secs_f64() * 1e3,
            unmap_time.as_secs_f64() * 1e3,
            m.info().dma_avail
        ))
    })();
    for va in chunks {
        host.free_pages(va, HUGE).map_err(e2s("free a huge page"))?;
    }
    result
}

/// With transparent huge pages allowed for memory objects (the guest's init says `advise`),
/// an 8 MiB wired buffer lands in 2 MiB physical runs: the host places it 2 MiB-aligned and
/// advises huge pages before wiring faults it in.
fn large_buffers_on_huge_pages() -> TestResult {
    let host = Host::new().map_err(e2s("host"))?;
    let mode = host.capabilities().shmem_huge_pages;
    check(mode.available(), || {
        format!("the guest allows shmem huge pages, the host read {mode:?}")
    })?;
    let i = dmakit_linux::inspect(8 << 20, false).map_err(e2s("inspect 8 MiB"))?;
    check(i.in_large_runs() >= 6 << 20, || {
        format!(
            "only {} KiB of 8 MiB in runs of 2 MiB or more: {:x?}",
            i.in_large_runs() / 1024,
            i.runs
        )
    })?;
    Ok(format!(
        "{mode:?}: 8 MiB in {} physical runs, {} KiB in runs of 2 MiB or more",
        i.runs.len(),
        i.in_large_runs() / 1024
    ))
}

/// The teardown check is real: a mapping made behind the mapper's back is found by the
/// kernel (and removed), and then the check passes.
fn teardown_check_finds_leftovers(addr: PciAddress) -> TestResult {
    let host = Arc::new(Host::new().map_err(e2s("host"))?);
    let (c, _d) = open(addr)?;
    let m = VfioMapper::new(c, host.clone(), u64::MAX).map_err(e2s("mapper"))?;
    let page = host.page_size().bytes();
    let va = host
        .allocate_pages(2 * page, &PageRequest::WIRED)
        .map_err(e2s("allocate"))?;
    let runs = collect_runs(&*host, Task::KERNEL, va, 2 * page).map_err(e2s("runs"))?;
    m.map_unchecked(IoAddr(0x10_0000), runs[0].addr, Access::READ)
        .map_err(e2s("map behind the mapper's back"))?;
    let found = match m.check_unmapped() {
        Err(e @ Error::Busy { .. }) if e.to_string().contains("0x1000 bytes") => e,
        Err(e) => return Err(format!("wrong error: {e}")),
        Ok(()) => return Err("the check missed a live mapping".into()),
    };
    m.check_unmapped().map_err(e2s("second check"))?;
    host.free_pages(va, 2 * page).map_err(e2s("free"))?;
    Ok(format!("found: {found}; then clean"))
}

// ---- edu: the portable driver's suite (dmakit-edu) over VfioBus / VfioFunction ----------

/// 20 s of 1 ms pauses: how long an edu test waits for one event (TCG is slow, and the
/// edu engine takes 100 ms a run).
const EDU_PATIENCE: u64 = 20_000;

fn pause_1ms() {
    std::thread::sleep(Duration::from_millis(1));
}

/// The highest address `bits` address lines reach.
fn bits_limit(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

/// The edu at `addr` alone in a container of its own, through the device seam, its
/// mapper handing out IO addresses up to `mapper_limit`.
struct EduSeam {
    host: Arc<Host>,
    _bus: VfioBus,
    vf: Arc<VfioFunction>,
    /// IO space kept from the mapper, so its addresses land above it.
    low: Vec<(IoAddr, u64)>,
}

impl EduSeam {
    fn open(addr: PciAddress, mapper_limit: u64) -> Result<EduSeam, String> {
        let host = Arc::new(Host::new().map_err(e2s("host"))?);
        let bus = VfioBus::builder(host.clone())
            .addresses([addr])
            .address_limit(mapper_limit)
            .open()
            .map_err(e2s("VfioBus"))?;
        let vf = bus
            .vfio_functions()
            .first()
            .cloned()
            .ok_or_else(|| format!("{addr} did not open"))?;
        Ok(EduSeam {
            host,
            _bus: bus,
            vf,
            low: Vec::new(),
        })
    }

    /// As `open` with no address limit, the IO space below 2^28 reserved: the mapper's
    /// addresses are then out of a 28-bit device's reach, wherever the allocator would
    /// otherwise have put them.
    fn open_wide(addr: PciAddress) -> Result<EduSeam, String> {
        let mut seam = Self::open(addr, u64::MAX)?;
        let m = seam.vf.mapper().clone();
        for (at, len) in m.free_ranges() {
            let end = (at.0 + len).min(0x1000_0000);
            if at.0 >= end {
                continue;
            }
            let pages = (end - at.0) / 0x1000;
            m.reserve(at, pages)
                .map_err(e2s("reserving the IO space below 2^28"))?;
            seam.low.push((at, pages));
        }
        Ok(seam)
    }

    fn rig(&self, options: EduOptions) -> Rig<'static, Arc<Host>> {
        Rig::new(
            self.host.clone(),
            self.vf.clone() as Arc<dyn PciFunction>,
            options,
            &pause_1ms,
            EDU_PATIENCE,
        )
    }

    /// The kernel's word that nothing the test mapped is left.
    fn teardown(&self) -> Result<(), String> {
        let m = self.vf.mapper();
        for &(iova, pages) in &self.low {
            m.iovm_free(iova, pages)
                .map_err(e2s("freeing the reservation"))?;
        }
        check(m.mapped_pages() == 0 && m.allocations() == 0, || {
            format!("{} pages still mapped", m.mapped_pages())
        })?;
        m.check_unmapped().map_err(e2s("teardown"))
    }
}

/// Runs a suite test on the edu at `addr` (mapper limit, driver options), then checks
/// with the kernel that it left no mapping, whether it passed or not.
fn edu_suite<T>(
    addr: PciAddress,
    mapper_limit: u64,
    options: EduOptions,
    test: impl FnOnce(&Rig<'static, Arc<Host>>) -> Result<T, String>,
) -> Result<T, String> {
    edu_suite_on(EduSeam::open(addr, mapper_limit)?, options, test)
}

/// Runs an edu suite function on `seam`, then its teardown check.
fn edu_suite_on<T>(
    seam: EduSeam,
    options: EduOptions,
    test: impl FnOnce(&Rig<'static, Arc<Host>>) -> Result<T, String>,
) -> Result<T, String> {
    let result = test(&seam.rig(options));
    match (result, seam.teardown()) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(_), Err(t)) => Err(t),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(t)) => Err(format!("{e}; and then: {t}")),
    }
}

/// BAR0 as IODeviceMemory: its physical segment is the BAR's bus address and
/// mapped_read32 there reads the edu identification register.
fn device_memory(addr: PciAddress) -> TestResult {
    edu_suite(addr, u64::MAX, EduOptions::new(), edu_tests::device_memory)
}

/// RAM → edu → RAM with driver, mapper and spec all honouring the device's dma_mask:
/// through the IOMMU, completed by MSI through a DmaEventSource, then the teardown
/// checked with the kernel.
fn edu_round_trip(addr: PciAddress, bits: u32) -> TestResult {
    let limit = bits_limit(bits);
    let r = edu_suite(
        addr,
        limit,
        EduOptions::new().dma_bits(bits),
        edu_tests::round_trip,
    )?;
    check(r.interrupts >= r.runs, || {
        format!("fewer MSIs than runs: {r}")
    })?;
    Ok(format!("{r}; kernel confirms 0 mappings left"))
}

/// `stop` with one engine run in flight and two transfers queued: the in-flight transfer
/// ends after its run, the queued ones never start, all three complete (aborted) in
/// ticket order, `query` says how far each got, and the controller works again.
fn edu_stop(addr: PciAddress, bits: u32) -> TestResult {
    edu_suite(
        addr,
        bits_limit(bits),
        EduOptions::new().dma_bits(bits),
        edu_tests::stop_in_order,
    )
    .map(|d| format!("{d}; kernel confirms 0 mappings left"))
}

/// No interrupts: a synchronous event source polls the driver between 1 ms pauses.
fn edu_synchronous_polling(addr: PciAddress, bits: u32) -> TestResult {
    edu_suite(
        addr,
        bits_limit(bits),
        EduOptions::new().dma_bits(bits),
        edu_tests::synchronous_polling,
    )
    .map(|d| format!("{d}; kernel confirms 0 mappings left"))
}

/// Transfers and settings the device cannot take are clear errors, nothing queued.
fn edu_refuses_bad_transfers(addr: PciAddress, bits: u32) -> TestResult {
    edu_suite(
        addr,
        bits_limit(bits),
        EduOptions::new().dma_bits(bits),
        edu_tests::refuses_bad_transfers,
    )
}

/// A 28-bit device's DMA commands with a mapper that ignores the limit: the commands'
/// SegmentSpec refuses the mapper's IOVAs at prepare, and nothing stays mapped.
fn edu_spec_refuses_wide_iovas(addr: PciAddress, bits: u32) -> TestResult {
    edu_suite_on(
        EduSeam::open_wide(addr)?,
        EduOptions::new().dma_bits(bits),
        edu_tests::spec_refuses_wide_iovas,
    )
}

/// Why the limit matters, shown by the device itself: a driver that claims 64 bits for the
/// 28-bit edu, with IOVAs above 2^28. QEMU clamps the addresses to 28 bits, the IOMMU
/// blocks the clamped ones (DMAR faults in the guest's log), and the data never arrives.
fn edu_wide_iovas_miss_on_a_narrow_device(addr: PciAddress, bits: u32) -> TestResult {
    let faults_before = dmar_faults();
    let r = edu_suite_on(
        EduSeam::open_wide(addr)?,
        EduOptions::new().dma_bits(64),
        |rig| edu_tests::wide_iovas_miss(rig, bits),
    )?;
    let faults = dmar_faults().saturating_sub(faults_before);
    check(faults > 0, || format!("no DMAR fault logged: {r}"))?;
    Ok(format!(
        "IOVAs src {:#x} dst {:#x} clamped by the device: data not delivered, {faults} new \
         DMAR fault lines (expected)",
        r.first.0, r.first.1
    ))
}

/// DMAR fault lines in the kernel log so far.
fn dmar_faults() -> usize {
    std::process::Command::new("dmesg")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("DMAR") && l.contains("fault"))
                .count()
        })
        .unwrap_or(0)
}

/// The disk image's content of block `n` (guest/mkdisk.pl): `dmakit LBA <n>\n`, then the
/// byte `n & 0xff` to the end of the block.
fn check_block(block: &[u8], n: u64) -> Result<(), String> {
    let head = format!("dmakit LBA {n}\n");
    check(block.starts_with(head.as_bytes()), || {
        format!(
            "block {n} starts {:?}",
            String::from_utf8_lossy(&block[..20.min(block.len())])
        )
    })?;
    check(block[head.len()..].iter().all(|&b| b == n as u8), || {
        format!("block {n} body differs")
    })
}

/// `count` block numbers of 4 KiB (`0..blocks` in a shuffled order, each once per pass,
/// then again reshuffled): a fixed xorshift seed, so every run reads the same sequence.
fn shuffled(blocks: u64, count: usize) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut pass: Vec<u64> = (0..blocks).collect();
        for i in (1..pass.len()).rev() {
            pass.swap(i, (rnd() % (i as u64 + 1)) as usize);
        }
        out.extend(pass.into_iter().take(count - out.len()));
    }
    out
}

/// One queue pair's part of a random-read run: its LBAs (4 KiB each), untimed then timed.
struct Share {
    warm: Vec<u64>,
    timed: Vec<u64>,
}

/// What one queue pair did: reads completed, most outstanding at once, reads checked
/// byte-exact, and the time its timed reads took.
struct ShareDone {
    completed: usize,
    most: usize,
    verified: u64,
    elapsed: Duration,
}

/// The random reads of `share` on `q` with up to `depth` outstanding, each command with its
/// own pre-mapped buffer (a `DmaBuffer`, mapped once and reused): the warm-up reads, every one
/// checked byte-exact, then (after `start`, when several queue pairs begin together) the
/// timed ones, every 64th checked byte-exact inside the timing; every completion's status
/// and command identifier checked.
fn read_share(
    nvme: &dmakit_nvme::Nvme<Arc<Host>>,
    q: &mut IoQueue<Arc<Host>>,
    ns: &NamespaceIdentity,
    depth: usize,
    share: &Share,
    start: Option<(&std::sync::Barrier, &mut bool)>,
) -> Result<ShareDone, String> {
    const IO: u64 = 4096;
    let (view, host) = (nvme.dma_view(), nvme.platform().clone());
    let buffers = (0..depth)
        .map(|_| DmaBuffer::new(&host, &view, IO).map_err(e2s("buffer")))
        .collect::<Result<Vec<_>, _>>()?;
    let bs = ns.block_size as u64;
    let mut verified = 0u64;
    let mut verify = |lba: u64, buf: &DmaBuffer<Arc<Host>>| -> Result<(), String> {
        let mut block = vec![0u8; IO as usize];
        buf.read(0, &mut block).map_err(e2s("read back"))?;
        for k in 0..IO / bs {
            let at = (k * bs) as usize;
            check_block(&block[at..at + bs as usize], lba + k)?;
        }
        verified += 1;
        Ok(())
    };
    queued(q, ns, &share.warm, &buffers, &mut |i, buf| {
        verify(share.warm[i], buf)
    })?;
    if let Some((b, waited)) = start {
        b.wait();
        *waited = true;
    }
    let t0 = Instant::now();
    let (completed, most) = queued(q, ns, &share.timed, &buffers, &mut |i, buf| {
        if i % 64 == 0 {
            verify(share.timed[i], buf)
        } else {
            Ok(())
        }
    })?;
    let elapsed = t0.elapsed();
    check(
        completed == share.timed.len() && most == depth.min(share.timed.len()),
        || {
            format!(
                "{completed} of {} reads, at most {most} outstanding",
                share.timed.len()
            )
        },
    )?;
    Ok(ShareDone {
        completed,
        most,
        verified,
        elapsed,
    })
}

/// The benchmark region's 4 KiB reads: `count` random 4 KiB-aligned LBAs, dealt to `parts`
/// queue pairs in turn (so one queue pair or two read the same sequence).
fn dealt(n: &NamespaceIdentity, b: Bench, count: usize, parts: usize) -> Vec<Vec<u64>> {
    let bs = n.block_size as u64;
    let (first, per) = (b.offset / bs, 4096 / bs);
    let mut out = vec![Vec::new(); parts];
    for (i, k) in shuffled(b.size / 4096, count).into_iter().enumerate() {
        out[i % parts].push(first + k * per);
    }
    out
}

/// 4 KiB random reads at queue depth `depth` per queue pair on `queues` I/O queue pairs of the
/// portable driver, one thread each, started together (see [`read_share`]). Prints a `bench`
/// line with the wall time per read over all of them.
fn nvme_randread(n: &NvmeTarget, b: Bench, depth: usize, queues: usize) -> TestResult {
    let m = GuestNvme::open(n)?;
    let nvme = dmakit_nvme::Nvme::new(m.host.clone(), m.function(), m.timer(), m.options())
        .map_err(e2s("bring-up"))?;
    let ns = nvme.namespace(1).map_err(e2s("namespace"))?;
    let bs = ns.block_size as u64;
    let mqes = (nvme.capabilities() & 0xffff) as usize + 1;
    check(
        b.offset.is_multiple_of(4096)
            && b.size.is_multiple_of(4096)
            && (b.offset + b.size) / bs <= ns.blocks
            && depth < mqes.min(64),
        || {
            format!(
                "bench region {:#x}+{:#x} or depth {depth} does not fit {ns:?}",
                b.offset, b.size
            )
        },
    )?;
    let shares: Vec<Share> = dealt(&ns, b, b.warmup, queues)
        .into_iter()
        .zip(dealt(&ns, b, b.ios, queues))
        .map(|(warm, timed)| Share { warm, timed })
        .collect();
    let start = std::sync::Barrier::new(queues + 1);
    let (done, elapsed) = std::thread::scope(|s| {
        let hs: Vec<_> = shares
            .iter()
            .map(|share| {
                let (nvme, ns, start) = (&nvme, &ns, &start);
                s.spawn(move || {
                    let mut waited = false;
                    let r = nvme
                        .io_queue(QueueOptions::new(64.min(mqes as u16)))
                        .map_err(e2s("I/O queue"))
                        .and_then(|mut q| {
                            read_share(nvme, &mut q, ns, depth, share, Some((start, &mut waited)))
                        });
                    if !waited {
                        start.wait(); // a failed reader never leaves the others waiting
                    }
                    r
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let done: Result<Vec<ShareDone>, String> = hs
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("reader panicked".into())))
            .collect();
        (done, t0.elapsed())
    });
    let done = done?;
    drop(nvme);
    m.leftovers()?;
    let completed: usize = done.iter().map(|d| d.completed).sum();
    let verified: u64 = done.iter().map(|d| d.verified).sum();
    let ns_per_op = elapsed.as_nanos() as f64 / completed as f64;
    let (name, what) = if queues == 1 {
        (
            format!("randread_4k_qd{depth}"),
            "one queue pair".to_string(),
        )
    } else {
        (
            format!("randread_4k_qd{depth}_{queues}q"),
            format!("{queues} queue pairs in {queues} threads"),
        )
    };
    println!(
        "bench nvme/{name} dmakit_ns_per_op={ns_per_op:.1} ios={completed} depth={depth} \
         queues={queues} offset={} size={} warmup={}",
        b.offset, b.size, b.warmup
    );
    let slowest = done.iter().map(|d| d.elapsed).max().unwrap_or_default();
    Ok(format!(
        "{completed} timed 4 KiB reads at random 4 KiB-aligned LBAs of {}+{} blocks after {} \
         warm-up ones, up to {} outstanding per queue on {what}, each completion's status and \
         command id checked, {verified} reads byte-exact against the image; {:.1} us per read \
         (slowest queue pair {:.1} ms); 0 mappings left",
        b.offset / bs,
        b.size / bs,
        b.warmup,
        done.iter().map(|d| d.most).max().unwrap_or(0),
        ns_per_op / 1000.0,
        slowest.as_secs_f64() * 1000.0
    ))
}

/// A pre-mapped buffer of the guest's NVMe tests.
type GuestBuffer = DmaBuffer<Arc<Host>>;

/// Reads `lbas[i]` (one buffer's worth each) with up to `buffers.len()` outstanding: fills
/// every free buffer, rings once, takes the completions there are, hands each finished
/// buffer to `done`, refills. Returns (reads completed, most outstanding at once).
fn queued(
    q: &mut IoQueue<Arc<Host>>,
    ns: &NamespaceIdentity,
    lbas: &[u64],
    buffers: &[DmaBuffer<Arc<Host>>],
    done: &mut dyn FnMut(usize, &GuestBuffer) -> Result<(), String>,
) -> Result<(usize, usize), String> {
    let mut free: Vec<usize> = (0..buffers.len()).rev().collect();
    let mut owner = std::collections::HashMap::new();
    let (mut next, mut completed, mut most) = (0usize, 0usize, 0usize);
    while completed < lbas.len() {
        while next < lbas.len() {
            let Some(b) = free.pop() else { break };
            let len = buffers[b].len();
            let cid = q
                .submit_read(ns, lbas[next], &buffers[b], 0, len)
                .map_err(e2s("submit"))?;
            owner.insert(cid, (b, next));
            next += 1;
        }
        most = most.max(q.outstanding());
        q.ring().map_err(e2s("doorbell"))?;
        let mut finished = Vec::new();
        q.wait_completions(true, |d| finished.push(d))
            .map_err(e2s("completions"))?;
        for d in finished {
            d.result.map_err(e2s("read"))?;
            let (b, i) = owner
                .remove(&d.cid)
                .ok_or("a completion nobody waited for")?;
            done(i, &buffers[b])?;
            free.push(b);
            completed += 1;
        }
    }
    Ok((completed, most))
}

/// One NVMe controller of the guest, through the device seam, for the portable test suite.
struct GuestNvme {
    host: Arc<Host>,
    f: Arc<VfioFunction>,
    serial: String,
    /// The controller states no MDTS (the guest's `lba4k` one).
    no_mdts: bool,
}

impl GuestNvme {
    fn open(n: &NvmeTarget) -> Result<GuestNvme, String> {
        let host = Arc::new(Host::new().map_err(e2s("host"))?);
        let f =
            Arc::new(VfioFunction::open(host.clone(), n.addr).map_err(e2s("open the controller"))?);
        Ok(GuestNvme {
            host,
            f,
            serial: n.serial.clone(),
            no_mdts: n.label == "lba4k",
        })
    }

    /// Every IO mapping given back (the kernel's VFIO confirms it).
    fn leftovers(&self) -> Result<(), String> {
        self.f.mapper().check_unmapped().map_err(e2s("teardown"))
    }
}

impl TestMachine<Arc<Host>> for GuestNvme {
    fn platform(&self) -> Arc<Host> {
        self.host.clone()
    }
    fn function(&self) -> Arc<dyn PciFunction> {
        self.f.clone()
    }
    fn timer(&self) -> Arc<dyn dmakit_nvme::Timer> {
        Arc::new(MonotonicTimer::new())
    }
    fn serial(&self) -> Option<String> {
        Some(self.serial.clone())
    }
    fn options(&self) -> dmakit_nvme::NvmeOptions {
        // Without an MDTS the driver's own limit applies: 3 MiB commands need chained PRP
        // lists (768 entries after the first) and stay under QEMU's 1024 pieces per command.
        let o = dmakit_nvme::NvmeOptions::new();
        if self.no_mdts {
            o.max_transfer(3 << 20).bounce_bytes(3 << 20)
        } else {
            o
        }
    }
    fn resources(&self) -> Vec<(&'static str, u64)> {
        let mp = self.f.mapper();
        let u = self.host.usage();
        vec![
            ("IO page mappings", mp.mapped_pages() as u64),
            ("IO allocations", mp.allocations() as u64),
            ("host allocations", u.allocations as u64),
            ("host wired pages", u.wired_pages as u64),
        ]
    }
    fn stored(&self, _nsid: u32, _offset: u64, _len: usize) -> Option<Vec<u8>> {
        None
    }
}

/// Two threads, each with its own queue pair, writing and reading back at once.
fn nvme_two_threads(n: &NvmeTarget) -> TestResult {
    let m = GuestNvme::open(n)?;
    let nvme = dmakit_nvme::Nvme::new(m.host.clone(), m.function(), m.timer(), m.options())
        .map_err(e2s("bring-up"))?;
    let ns = nvme.namespace(1).map_err(e2s("namespace"))?;
    let base = suite::scratch(&ns) + 4096;
    let results: Vec<Result<(u16, u64), String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u64)
            .map(|t| {
                let (nvme, host) = (nvme.clone(), m.host.clone());
                s.spawn(move || {
                    let mut q = nvme.io_queue(QueueOptions::new(16)).map_err(e2s("queue"))?;
                    suite::worker(&host, &mut q, &ns, base + t * 2048, 64, 16, t + 1)?;
                    Ok((q.id(), q.stats().commands))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let done = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    check(done[0].0 != done[1].0, || {
        format!("one queue pair for both: {done:?}")
    })?;
    drop(nvme);
    m.leftovers()?;
    Ok(format!(
        "queue pairs {} and {} in two threads, {} and {} commands, 16 write+read rounds each byte-exact",
        done[0].0, done[1].0, done[0].1, done[1].1
    ))
}

/// One test of the portable suite on controller `n`.
fn nvme_suite(n: &NvmeTarget, test: suite::TestFn<Arc<Host>>) -> TestResult {
    let m = GuestNvme::open(n)?;
    suite::run(&m, test)?;
    m.leftovers()?;
    Ok(format!("{} ({}), nothing left mapped", n.addr, n.label))
}

// ---- the device seam: VfioBus and VfioFunction ---------------------------------------------

/// An interrupt sink that counts its raises and lets a test wait for them.
#[derive(Default)]
struct CountingSink {
    n: Mutex<u64>,
    cv: std::sync::Condvar,
}

impl InterruptSink for CountingSink {
    fn raise(&self) {
        *self.n.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_all();
    }
}

impl CountingSink {
    fn get(&self) -> u64 {
        *self.n.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to 10 s for at least `n` raises; returns the count.
    fn wait(&self, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = self.n.lock().unwrap_or_else(|p| p.into_inner());
        while *g < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *g
    }
}

/// Waits up to 10 s until `f` is true.
fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Every function bound to vfio-pci, in one container, through the seam.
fn seam_bus() -> Result<(Arc<Host>, VfioBus), String> {
    let host = Arc::new(Host::new().map_err(e2s("host"))?);
    let bus = VfioBus::open(host.clone()).map_err(e2s("VfioBus::open"))?;
    Ok((host, bus))
}

/// The concrete function behind `f` (for its interrupt counters).
fn vfio_of(bus: &VfioBus, f: &Arc<dyn PciFunction>) -> Result<Arc<VfioFunction>, String> {
    bus.vfio_functions()
        .iter()
        .find(|v| v.address() == f.address())
        .cloned()
        .ok_or_else(|| format!("{} is not among the bus's functions", f.address()))
}

/// The bus takes every function bound to vfio-pci in address order, skips the one whose
/// group is not viable (saying so) and finds functions by class and by IDs.
fn seam_bus_enumerates(nonviable: Option<PciAddress>) -> TestResult {
    let (_host, bus) = seam_bus()?;
    let fs = bus.functions();
    let addrs: Vec<String> = fs.iter().map(|f| f.address().to_string()).collect();
    check(
        fs.windows(2).all(|w| w[0].address() < w[1].address()),
        || format!("not in address order: {addrs:?}"),
    )?;
    let nvme = bus
        .find(&PciMatch::class(0x01_08_02))
        .map_err(e2s("find NVMe"))?;
    let edu = bus
        .find(&PciMatch::ids(0x1234, 0x11e8))
        .map_err(e2s("find edu"))?;
    check(nvme.id().class == 0x01_08_02, || format!("{:?}", nvme.id()))?;
    check(
        edu.id().vendor == 0x1234 && edu.id().device == 0x11e8,
        || format!("{:?}", edu.id()),
    )?;
    let edus = bus.matching(&PciMatch::ids(0x1234, 0x11e8)).len();
    let skipped: Vec<String> = bus
        .skipped()
        .iter()
        .map(|(a, e)| format!("{a}: {e}"))
        .collect();
    if let Some(n) = nonviable {
        let why = bus
            .skipped()
            .iter()
            .find(|(a, _)| *a == n)
            .map(|(_, e)| e.to_string())
            .ok_or_else(|| format!("{n} (non-viable group) was not skipped: {skipped:?}"))?;
        check(why.contains("not viable"), || {
            format!("{n} skipped for {why}")
        })?;
    }
    // Nothing matches: the error names the functions that could not be opened, if any.
    let none = bus
        .find(&PciMatch::ids(0xdead, 0xbeef))
        .map(|f| f.address());
    let says = if bus.skipped().is_empty() {
        "bind it to vfio-pci"
    } else {
        "not opened"
    };
    check(
        matches!(&none, Err(Error::NotAttached { why, .. }) if why.contains(says)),
        || format!("find of nothing: {none:?}"),
    )?;
    Ok(format!(
        "functions {addrs:?}; NVMe at {}, {edus} edu (first {}); skipped {skipped:?}",
        nvme.address(),
        edu.address()
    ))
}

/// NVMe through the seam: configuration-space IDs, CAP and VS through BAR0, MSI-X offered,
/// DMA through the container's mapper, bus mastering on and off.
fn seam_nvme_registers() -> TestResult {
    let (host, bus) = seam_bus()?;
    let f = bus
        .find(&PciMatch::class(0x01_08_02))
        .map_err(e2s("find NVMe"))?;
    let id = f.id();
    let ids = f.config_read(0, Width::W32).map_err(e2s("config 0"))?;
    let vendor = f.config_read(0, Width::W16).map_err(e2s("config vendor"))?;
    let class = f
        .config_read(0x08, Width::W32)
        .map_err(e2s("config class"))?
        >> 8;
    let progif = f
        .config_read(0x09, Width::W8)
        .map_err(e2s("config prog-if"))?;
    check(
        ids == u32::from(id.vendor) | u32::from(id.device) << 16
            && vendor == u32::from(id.vendor)
            && class == id.class
            && progif == 0x02
            && (id.vendor, id.device) == (0x1b36, 0x0010),
        || format!("config {ids:#x} / {vendor:#x} / {class:#x} / {progif:#x} vs {id:?}"),
    )?;
    let bar = f.bar(0).map_err(e2s("BAR0"))?;
    let again = f.bar(0).map_err(e2s("BAR0 again"))?;
    check(bar == again, || format!("{bar:?} then {again:?}"))?;
    let r32 = |off: u64| -> Result<u32, String> {
        mapped_read32(&*host, bar.reg(off, Width::W32).map_err(e2s("reg"))?)
            .map_err(e2s("mapped_read32"))
    };
    let cap = u64::from(r32(0)?) | u64::from(r32(4)?) << 32;
    let vs = r32(0x08)?;
    check(vs >> 16 >= 1 && (cap >> 37) & 1 == 1, || {
        format!("VS {vs:#x}, CAP {cap:#x}")
    })?;
    let irqs = f.interrupts();
    check(
        irqs.kind == Some(InterruptKind::MsiX) && irqs.vectors >= 2,
        || format!("interrupts {irqs:?}"),
    )?;
    check(matches!(f.dma(), DmaView::Mapped(_)), || {
        format!("DMA view {:?}", f.dma())
    })?;
    let cmd = |f: &Arc<dyn PciFunction>| f.config_read(0x04, Width::W16).map_err(e2s("command"));
    f.set_bus_master(true).map_err(e2s("bus master on"))?;
    let on = cmd(&f)?;
    f.set_bus_master(false).map_err(e2s("bus master off"))?;
    let off = cmd(&f)?;
    check(on & 4 != 0 && off & 4 == 0 && off & 2 != 0, || {
        format!("command {on:#x} with bus mastering on, {off:#x} off")
    })?;
    // Checked arguments.
    check(matches!(f.bar(6), Err(Error::BadArgument { .. })), || {
        "BAR 6 accepted".into()
    })?;
    check(
        matches!(f.config_read(2, Width::W32), Err(Error::NotAligned { .. })),
        || "misaligned config read accepted".into(),
    )?;
    check(
        matches!(
            f.config_write(0x10, Width::W32, 0),
            Err(Error::NotPermitted { .. })
        ),
        || "a write to BAR0's register accepted".into(),
    )?;
    check(
        f.enable_interrupt(irqs.vectors, Arc::new(CountingSink::default()))
            .is_err(),
        || "a vector past the count accepted".into(),
    )?;
    Ok(format!(
        "{:04x}:{:04x} class {:06x}; BAR0 at {:#x} ({:#x} bytes): CAP {cap:#x}, VS {}.{}; \
         {:?} x {}; DMA {:?}; command {on:#x} / {off:#x}",
        id.vendor,
        id.device,
        id.class,
        bar.base.0,
        bar.len,
        vs >> 16,
        (vs >> 8) & 0xff,
        irqs.kind,
        irqs.vectors,
        f.dma()
    ))
}

/// One NVMe queue in memory the controller reaches, and its doorbells.
struct SeamQueue {
    sq: DmaBuffer<Arc<Host>>,
    cq: DmaBuffer<Arc<Host>>,
    tail: u16,
    qid: u16,
}

const SEAM_ENTRIES: u16 = 16;

/// MSI-X vectors 0 and 1 of the NVMe controller delivered to two sinks: admin completions
/// on vector 0, I/O completions on vector 1 (an I/O completion queue created with IV = 1),
/// with a small driver written against the seam alone; then vector 1 detached (counted, not
/// delivered), and a function-level reset that leaves the controller disabled.
fn seam_nvme_two_vectors() -> TestResult {
    let (host, bus) = seam_bus()?;
    let f = bus
        .find(&PciMatch::class(0x01_08_02))
        .map_err(e2s("find NVMe"))?;
    let vf = vfio_of(&bus, &f)?;
    let DmaView::Mapped(mapper) = f.dma() else {
        return Err("no mapper".into());
    };
    let bar = f.bar(0).map_err(e2s("BAR0"))?;
    let reg = |off: u64| bar.reg(off, Width::W32).map_err(e2s("register"));
    let r32 = |off: u64| -> Result<u32, String> {
        mapped_read32(&*host, reg(off)?).map_err(e2s("mapped_read32"))
    };
    let w32 = |off: u64, v: u32| -> Result<(), String> {
        mapped_write32(&*host, reg(off)?, v).map_err(e2s("mapped_write32"))
    };
    let w64 = |off: u64, v: u64| -> Result<(), String> {
        w32(off, v as u32)?;
        w32(off + 4, (v >> 32) as u32)
    };
    let cap = u64::from(r32(0)?) | u64::from(r32(4)?) << 32;
    let stride = 4u64 << ((cap >> 32) & 0xf);
    let ready = |want: bool| -> Result<(), String> {
        check(
            wait_until(|| r32(0x1c).is_ok_and(|s| (s & 1 == 1) == want)),
            || format!("CSTS.RDY did not become {want}"),
        )
    };
    let (a, b) = (
        Arc::new(CountingSink::default()),
        Arc::new(CountingSink::default()),
    );
    f.set_bus_master(true).map_err(e2s("bus master"))?;
    f.enable_interrupt(0, a.clone()).map_err(e2s("vector 0"))?;
    f.enable_interrupt(1, b.clone()).map_err(e2s("vector 1"))?;
    let live = vf.enabled_vectors();
    // Disable, give it an admin queue, enable (64-byte SQ entries, 16-byte CQ entries).
    let cc = r32(0x14)?;
    if cc & 1 != 0 {
        w32(0x14, cc & !1)?;
    }
    ready(false)?;
    let page = 4096;
    let view = DmaView::Mapped(mapper.clone());
    let buf = |_dir: Direction| DmaBuffer::new(&host, &view, page).map_err(e2s("DMA buffer"));
    let mut admin = SeamQueue {
        sq: buf(Direction::Out)?,
        cq: buf(Direction::In)?,
        tail: 0,
        qid: 0,
    };
    let mut io = SeamQueue {
        sq: buf(Direction::Out)?,
        cq: buf(Direction::In)?,
        tail: 0,
        qid: 1,
    };
    let data = buf(Direction::In)?;
    let ident = buf(Direction::In)?;
    let n = u32::from(SEAM_ENTRIES - 1);
    w32(0x24, n << 16 | n)?;
    w64(0x28, admin.sq.device_addr())?;
    w64(0x30, admin.cq.device_addr())?;
    w32(0x14, 1 | 6 << 16 | 4 << 20)?;
    ready(true)?;
    // Submits `sqe` on `q`, waits for `sink` to reach `want` raises, then takes the
    // completion (phase 1: first pass) and returns its status.
    let submit = |q: &mut SeamQueue,
                  sqe: [u32; 16],
                  sink: &CountingSink,
                  want: u64|
     -> Result<u16, String> {
        let slot = u64::from(q.tail);
        let bytes: Vec<u8> = sqe.iter().flat_map(|d| d.to_le_bytes()).collect();
        q.sq.write(slot * 64, &bytes).map_err(e2s("write SQE"))?;
        q.tail += 1;
        let db = 0x1000 + 2 * u64::from(q.qid) * stride;
        w32(db, u32::from(q.tail))?;
        let got = sink.wait(want);
        check(got >= want, || {
            format!(
                "queue {}: sink raised {got} times, {want} expected (vector counts {} / {})",
                q.qid,
                vf.interrupt_count(0),
                vf.interrupt_count(1)
            )
        })?;
        let mut cqe = [0u8; 16];
        let seen = wait_until(|| q.cq.read(slot * 16, &mut cqe).is_ok() && cqe[14] & 1 == 1);
        check(seen, || {
            format!("queue {}: no completion in slot {slot}", q.qid)
        })?;
        w32(db + stride, u32::from(q.tail))?;
        Ok(u16::from_le_bytes([cqe[14], cqe[15]]) >> 1)
    };
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let sqe = |opc: u32, cid: u32, nsid: u32, prp1: u64, cdw: [u32; 3]| {
        let mut e = [0u32; 16];
        e[0] = opc | cid << 16;
        e[1] = nsid;
        e[6] = lo(prp1);
        e[7] = hi(prp1);
        e[10..13].copy_from_slice(&cdw);
        e
    };
    let qsize = u32::from(SEAM_ENTRIES - 1) << 16;
    let outcome = (|| -> Result<String, String> {
        // Identify Controller: the data's vendor ID is the PCI one.
        let st = submit(
            &mut admin,
            sqe(0x06, 1, 0, ident.device_addr(), [1, 0, 0]),
            &a,
            1,
        )?;
        let mut vid = [0u8; 2];
        ident.read(0, &mut vid).map_err(e2s("identify data"))?;
        check(st == 0 && u16::from_le_bytes(vid) == f.id().vendor, || {
            format!("identify status {st:#x}, vendor {vid:x?}")
        })?;
        // Create I/O CQ 1 on vector 1 (IEN | PC), then I/O SQ 1 on it.
        let st = submit(
            &mut admin,
            sqe(0x05, 2, 0, io.cq.device_addr(), [qsize | 1, 1 << 16 | 3, 0]),
            &a,
            2,
        )?;
        check(st == 0, || format!("create I/O CQ: status {st:#x}"))?;
        let st = submit(
            &mut admin,
            sqe(0x01, 3, 0, io.sq.device_addr(), [qsize | 1, 1 << 16 | 1, 0]),
            &a,
            3,
        )?;
        check(st == 0, || format!("create I/O SQ: status {st:#x}"))?;
        // Read 8 blocks at LBA 640 on the I/O queue: vector 1, not vector 0.
        let lba = 640u64;
        let st = submit(
            &mut io,
            sqe(0x02, 1, 1, data.device_addr(), [lo(lba), hi(lba), 7]),
            &b,
            1,
        )?;
        check(st == 0, || format!("read: status {st:#x}"))?;
        let mut block = vec![0u8; 4096];
        data.read(0, &mut block).map_err(e2s("read back"))?;
        for j in 0..8u64 {
            let at = j as usize * 512;
            check_block(&block[at..at + 512], lba + j)?;
        }
        std::thread::sleep(Duration::from_millis(50));
        let (na, nb) = (a.get(), b.get());
        check(na == 3 && nb == 1, || {
            format!("sinks raised {na} (vector 0) and {nb} (vector 1) times, 3 and 1 expected")
        })?;
        // Vector 1 detached: the next I/O completion is counted by VFIO, not delivered.
        f.disable_interrupt(1).map_err(e2s("disable vector 1"))?;
        let before = vf.interrupt_count(1);
        let slot = u64::from(io.tail);
        let e = sqe(0x00, 2, 1, 0, [0, 0, 0]); // Flush
        let bytes: Vec<u8> = e.iter().flat_map(|d| d.to_le_bytes()).collect();
        io.sq.write(slot * 64, &bytes).map_err(e2s("write SQE"))?;
        io.tail += 1;
        w32(0x1000 + 2 * stride, u32::from(io.tail))?;
        check(wait_until(|| vf.interrupt_count(1) > before), || {
            "the flush's interrupt never arrived at VFIO".into()
        })?;
        std::thread::sleep(Duration::from_millis(50));
        check(
            b.get() == 1 && a.get() == 3 && !vf.interrupt_routed(1),
            || format!("after detaching: sinks {} / {}", a.get(), b.get()),
        )?;
        Ok(format!(
            "{live} MSI-X vectors live; identify, create CQ, create SQ completed on vector 0 \
             (its sink raised {na} times), a read of LBA {lba}+8 byte-exact on vector 1 (its \
             sink raised {nb} time); vector 1 detached: a flush's interrupt counted ({} -> {}) \
             and not delivered",
            before,
            vf.interrupt_count(1)
        ))
    })();
    // A function-level reset: vectors off, bus mastering off, the controller disabled.
    let reset = (|| -> Result<String, String> {
        f.reset().map_err(e2s("reset"))?;
        let cc = r32(0x14)?;
        let csts = r32(0x1c)?;
        let cmd = f.config_read(0x04, Width::W16).map_err(e2s("command"))?;
        check(
            cc & 1 == 0 && csts & 1 == 0 && cmd & 4 == 0 && vf.enabled_vectors() == 0,
            || {
                format!(
                    "after reset: CC {cc:#x}, CSTS {csts:#x}, command {cmd:#x}, {} vectors",
                    vf.enabled_vectors()
                )
            },
        )?;
        Ok(format!(
            "reset: CC {cc:#x}, CSTS {csts:#x}, command {cmd:#x}, 0 vectors live"
        ))
    })();
    let _ = f.set_bus_master(false);
    // Dropping a buffer ends its preparation (the controller is disabled and reset).
    drop([admin.sq, admin.cq, io.sq, io.cq, data, ident]);
    let detail = outcome?;
    let reset = reset?;
    bus.mapper()
        .ok_or("no mapper")?
        .check_unmapped()
        .map_err(e2s("teardown"))?;
    Ok(format!(
        "{detail}; {reset}; kernel confirms 0 mappings left"
    ))
}

/// edu through the seam: IDs, its one MSI vector delivered to a sink (the device's
/// interrupt-raise register), then detached: VFIO still counts it, the sink hears nothing.
fn seam_edu_msi() -> TestResult {
    let (host, bus) = seam_bus()?;
    let f = bus
        .find(&PciMatch::ids(0x1234, 0x11e8))
        .map_err(e2s("find edu"))?;
    let vf = vfio_of(&bus, &f)?;
    check(f.interrupts().kind == Some(InterruptKind::Msi), || {
        format!("interrupts {:?}", f.interrupts())
    })?;
    let rig = Rig::new(host, f, EduOptions::new(), &pause_1ms, EDU_PATIENCE);
    let detail = edu_tests::interrupt_delivery(&rig)?;
    check(wait_until(|| vf.interrupt_count(0) >= 2), || {
        "the second (detached) interrupt never arrived at VFIO".into()
    })?;
    Ok(format!("{detail}; VFIO counted {}", vf.interrupt_count(0)))
}

/// Resets every edu: those VFIO cannot reset say so (Unsupported) and keep their vectors,
/// and each one it can comes back with its BAR still mapped (identification and liveness
/// work), bus mastering off, no vector live, and its MSI deliverable again once re-enabled.
fn seam_edu_reset() -> TestResult {
    let (host, bus) = seam_bus()?;
    let mut done = Vec::new();
    let mut refused = Vec::new();
    for f in bus.matching(&PciMatch::ids(0x1234, 0x11e8)) {
        let vf = vfio_of(&bus, &f)?;
        let routes_dropped = || {
            check(vf.enabled_vectors() == 0 && !vf.interrupt_routed(0), || {
                "vectors still live after the reset".into()
            })
        };
        let rig = Rig::new(
            host.clone(),
            f.clone(),
            EduOptions::new(),
            &pause_1ms,
            EDU_PATIENCE,
        );
        match edu_tests::reset(&rig, &routes_dropped)? {
            ResetOutcome::Refused(e) => {
                check(vf.enabled_vectors() == 1, || {
                    "a refused reset disabled the vectors".into()
                })?;
                refused.push(format!("{}: {e}", f.address()));
            }
            ResetOutcome::Reset(detail) => done.push(detail),
        }
    }
    check(!done.is_empty(), || {
        format!("no edu could be reset: {refused:?}")
    })?;
    Ok(format!("reset {done:?}; refused {refused:?}"))
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            println!("FAILED arguments: {e}");
            println!("0 passed, 1 failed");
            std::process::exit(2);
        }
    };
    let mut tests: Vec<(String, Box<dyn FnOnce() -> TestResult>)> = Vec::new();
    tests.push(("vfio_missing_device".into(), Box::new(missing_device)));
    tests.push((
        "host_large_buffers_on_huge_pages".into(),
        Box::new(large_buffers_on_huge_pages),
    ));
    if let Some(u) = cfg.unbound {
        tests.push((
            "vfio_unbound_device".into(),
            Box::new(move || unbound_device(u)),
        ));
    }
    if let Some(n) = cfg.nonviable {
        tests.push((
            "vfio_group_not_viable".into(),
            Box::new(move || nonviable_group(n)),
        ));
    }
    if let Some(&(a, _)) = cfg.edu.first() {
        tests.push((
            "vfio_memlock_too_low".into(),
            Box::new(move || memlock_too_low(a)),
        ));
        tests.push(("vfio_iommu_info".into(), Box::new(move || iommu_info(a))));
        tests.push((
            "vfio_teardown_check_finds_leftovers".into(),
            Box::new(move || teardown_check_finds_leftovers(a)),
        ));
        tests.push((
            "vfio_iova_outside_ranges".into(),
            Box::new(move || iova_outside_ranges(a)),
        ));
        tests.push(("vfio_maps_1gib".into(), Box::new(move || vfio_maps_1gib(a))));
        tests.push((
            "edu_bar_as_device_memory".into(),
            Box::new(move || device_memory(a)),
        ));
    }
    for &(a, bits) in &cfg.edu {
        tests.push((
            format!("edu_dma_round_trip_{bits}bit"),
            Box::new(move || edu_round_trip(a, bits)),
        ));
        if bits == 64 {
            tests.push((
                "edu_stop_in_order".into(),
                Box::new(move || edu_stop(a, bits)),
            ));
        }
        tests.push((
            format!("edu_{bits}bit_synchronous_polling"),
            Box::new(move || edu_synchronous_polling(a, bits)),
        ));
        tests.push((
            format!("edu_{bits}bit_refuses_bad_transfers"),
            Box::new(move || edu_refuses_bad_transfers(a, bits)),
        ));
        if bits < 64 {
            tests.push((
                format!("edu_{bits}bit_spec_refuses_wide_iovas"),
                Box::new(move || edu_spec_refuses_wide_iovas(a, bits)),
            ));
            tests.push((
                format!("edu_{bits}bit_device_misses_wide_iovas"),
                Box::new(move || edu_wide_iovas_miss_on_a_narrow_device(a, bits)),
            ));
        }
    }
    if !cfg.nvme.is_empty() && !cfg.edu.is_empty() {
        let nonviable = cfg.nonviable;
        tests.push((
            "seam_bus_enumerates".into(),
            Box::new(move || seam_bus_enumerates(nonviable)),
        ));
        tests.push(("seam_nvme_registers".into(), Box::new(seam_nvme_registers)));
        tests.push((
            "seam_nvme_two_msix_vectors".into(),
            Box::new(seam_nvme_two_vectors),
        ));
        tests.push(("seam_edu_msi".into(), Box::new(seam_edu_msi)));
        tests.push(("seam_edu_reset".into(), Box::new(seam_edu_reset)));
    }
    for n in &cfg.nvme {
        // The default controller's tests keep their plain names; the others say which.
        let suffix = if n.label == "default" {
            String::new()
        } else {
            format!("@{}", n.label)
        };
        for (name, t) in suite::tests::<Arc<Host>>() {
            let n = n.clone();
            tests.push((
                format!("{name}{suffix}"),
                Box::new(move || nvme_suite(&n, t)),
            ));
        }
        if n.label == "default" {
            let n2 = n.clone();
            tests.push((
                "nvme_two_threads_two_queue_pairs".into(),
                Box::new(move || nvme_two_threads(&n2)),
            ));
            if let Some(b) = cfg.bench {
                for (depth, queues) in [(1, 1), (32, 1), (1, 2), (32, 2)] {
                    let n = n.clone();
                    let q = if queues == 1 {
                        String::new()
                    } else {
                        format!("_{queues}q")
                    };
                    tests.push((
                        format!("nvme_randread_4k_qd{depth}{q}"),
                        Box::new(move || nvme_randread(&n, b, depth, queues)),
                    ));
                }
            }
        }
    }
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in tests {
        let t = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(detail)) => {
                passed += 1;
                println!("ok {name} ({} ms): {detail}", t.elapsed().as_millis());
            }
            Ok(Err(why)) => {
                failed += 1;
                println!("FAILED {name}: {why}");
            }
            Err(_) => {
                failed += 1;
                println!("FAILED {name}: panicked");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
