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

use dmakit::descriptor::{
    BufferMemoryDescriptor, BufferOptions, MemoryDescriptor, MultiMemoryDescriptor,
};
use dmakit::device::{DmaView, InterruptKind, PciBus, PciFunction, PciMatch};
use dmakit::dma::PrepareOptions;
use dmakit::dma::{
    BouncePool, DmaCommand, DmaCompletion, DmaEventSource, InterruptSink, IoSegment, SegmentFormat,
};
use dmakit::map::{mapped_read32, mapped_write32};
use dmakit::mapper::{Access, Mapper};
use dmakit::platform::Width;
use dmakit::platform::{collect_runs, PageRequest, PhysicalMemory, Task};
use dmakit::{Direction, Error, IoAddr};
use dmakit_edu::suite::{self, ResetOutcome, Rig};
use dmakit_edu::EduOptions;
use dmakit_linux::nvme::{nvme_spec, CompletionSignal, DmaBuffer, EventQueue, NvmeController};
use dmakit_linux::vfio::{
    Bar, Container, IrqKind, Msi, PciAddress, VfioBus, VfioDevice, VfioFunction, VfioMapper,
};
use dmakit_linux::Host;
use std::sync::atomic::{AtomicBool, Ordering};
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
    nvme: Option<PciAddress>,
    bench: Option<Bench>,
    edu: Vec<(PciAddress, u32)>,
    unbound: Option<PciAddress>,
    nonviable: Option<PciAddress>,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        nvme: None,
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
            "--nvme" => c.nvme = Some(PciAddress::parse(&v).map_err(|e| e.to_string())?),
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
        })
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
    let seam = EduSeam::open(addr, mapper_limit)?;
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
    edu_suite(addr, u64::MAX, EduOptions::new(), suite::device_memory)
}

fn segments(cmd: &DmaCommand<Arc<Host>>) -> Result<Vec<IoSegment>, String> {
    let mut out = vec![0u8; 64 * 16];
    let mut off = 0;
    let n = cmd
        .gen_segments(&mut off, &mut out)
        .map_err(e2s("gen_segments"))?;
    (0..n)
        .map(|i| {
            SegmentFormat::Host64
                .read(&out, i)
                .map_err(e2s("read segment"))
        })
        .collect()
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
        suite::round_trip,
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
        suite::stop_in_order,
    )
    .map(|d| format!("{d}; kernel confirms 0 mappings left"))
}

/// No interrupts: a synchronous event source polls the driver between 1 ms pauses.
fn edu_synchronous_polling(addr: PciAddress, bits: u32) -> TestResult {
    edu_suite(
        addr,
        bits_limit(bits),
        EduOptions::new().dma_bits(bits),
        suite::synchronous_polling,
    )
    .map(|d| format!("{d}; kernel confirms 0 mappings left"))
}

/// Transfers and settings the device cannot take are clear errors, nothing queued.
fn edu_refuses_bad_transfers(addr: PciAddress, bits: u32) -> TestResult {
    edu_suite(
        addr,
        bits_limit(bits),
        EduOptions::new().dma_bits(bits),
        suite::refuses_bad_transfers,
    )
}

/// A 28-bit device's DMA commands with a mapper that ignores the limit: the commands'
/// SegmentSpec refuses the mapper's IOVAs at prepare, and nothing stays mapped.
fn edu_spec_refuses_wide_iovas(addr: PciAddress, bits: u32) -> TestResult {
    edu_suite(
        addr,
        u64::MAX,
        EduOptions::new().dma_bits(bits),
        suite::spec_refuses_wide_iovas,
    )
}

/// Why the limit matters, shown by the device itself: a driver that claims 64 bits for the
/// 28-bit edu, with IOVAs above 2^28. QEMU clamps the addresses to 28 bits, the IOMMU
/// blocks the clamped ones (DMAR faults in the guest's log), and the data never arrives.
fn edu_wide_iovas_miss_on_a_narrow_device(addr: PciAddress, bits: u32) -> TestResult {
    let faults_before = dmar_faults();
    let r = edu_suite(addr, u64::MAX, EduOptions::new().dma_bits(64), |rig| {
        suite::wide_iovas_miss(rig, bits)
    })?;
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

/// What every NVMe test starts from: the function opened through VFIO, a mapper over its
/// container, BAR0 mapped, the controller enabled and namespace 1 identified. Bind every
/// field (an unused one with a leading underscore): a field left out would be dropped at
/// once, closing the device under the test.
struct NvmeRig {
    host: Arc<Host>,
    d: VfioDevice,
    vfio: Arc<VfioMapper>,
    mapper: Arc<dyn Mapper>,
    nvme: NvmeController,
    ns: dmakit_linux::nvme::NamespaceIdentity,
}

fn nvme_rig(addr: PciAddress) -> Result<NvmeRig, String> {
    let host = Arc::new(Host::new().map_err(e2s("host"))?);
    let (c, d) = open(addr)?;
    let vfio = Arc::new(VfioMapper::new(c, host.clone(), u64::MAX).map_err(e2s("mapper"))?);
    let mapper: Arc<dyn Mapper> = vfio.clone();
    let bar = Bar::map(&d, 0, host.clone()).map_err(e2s("map BAR0"))?;
    let nvme = NvmeController::new(&d, bar, host.clone(), mapper.clone()).map_err(e2s("enable"))?;
    let ns = nvme
        .identify_namespace(1)
        .map_err(e2s("identify namespace"))?;
    Ok(NvmeRig {
        host,
        d,
        vfio,
        mapper,
        nvme,
        ns,
    })
}

/// Identify, then reads of known disk content and a write read back, on the NVMe
/// controller through dmakit alone.
fn nvme_identify_read_write(addr: PciAddress) -> TestResult {
    let NvmeRig {
        host,
        d: _d,
        vfio,
        mapper,
        nvme,
        ns: _ns,
    } = nvme_rig(addr)?;
    let id = nvme
        .identify_controller()
        .map_err(e2s("identify controller"))?;
    check(id.serial == "dmakit0", || format!("serial {:?}", id.serial))?;
    let ns = nvme
        .identify_namespace(1)
        .map_err(e2s("identify namespace"))?;
    check(ns.block_size == 512 && ns.blocks == 32 * 2048, || {
        format!("{ns:?}")
    })?;
    let mut qp = nvme
        .create_io_queue_pair(1, 16)
        .map_err(e2s("I/O queue pair"))?;
    // 16 blocks (two pages: PRP1 + PRP2) of the image guest/run wrote.
    let buf = DmaBuffer::new(&host, &mapper, 8192, Direction::In).map_err(e2s("buffer"))?;
    nvme.read(&mut qp, 1, 100, 16, &buf).map_err(e2s("read"))?;
    for i in 0..16u64 {
        let mut block = [0u8; 512];
        buf.read(i * 512, &mut block).map_err(e2s("cpu read"))?;
        let n = 100 + i;
        let head = format!("dmakit LBA {n}\n");
        check(block.starts_with(head.as_bytes()), || {
            format!(
                "block {n} starts {:?}",
                String::from_utf8_lossy(&block[..20])
            )
        })?;
        check(block[head.len()..].iter().all(|&b| b == n as u8), || {
            format!("block {n} body differs")
        })?;
    }
    // Write two pages at LBA 2000 and read them back into another buffer.
    let data: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let out = DmaBuffer::new(&host, &mapper, 8192, Direction::Out).map_err(e2s("buffer"))?;
    out.write(0, &data).map_err(e2s("cpu write"))?;
    nvme.write(&mut qp, 1, 2000, 16, &out)
        .map_err(e2s("write"))?;
    let back = DmaBuffer::new(&host, &mapper, 8192, Direction::In).map_err(e2s("buffer"))?;
    nvme.read(&mut qp, 1, 2000, 16, &back)
        .map_err(e2s("read back"))?;
    let mut got = vec![0u8; 8192];
    back.read(0, &mut got).map_err(e2s("cpu read"))?;
    check(got == data, || "written data did not read back".into())?;
    let version = nvme.version().map_err(e2s("version"))?;
    for b in [buf, out, back] {
        b.release().map_err(e2s("release"))?;
    }
    qp.release().map_err(e2s("release queue pair"))?;
    nvme.shutdown().map_err(e2s("shutdown"))?;
    check(vfio.mapped_pages() == 0, || {
        format!("{} pages mapped", vfio.mapped_pages())
    })?;
    vfio.check_unmapped().map_err(e2s("teardown"))?;
    Ok(format!(
        "NVMe {}.{}: serial {:?} model {:?} fw {:?}, ns1 {} x {} B; LBA 100-115 read byte-exact \
         (PRP1+PRP2), 8 KiB written at LBA 2000 and read back; kernel confirms 0 mappings left",
        version >> 16,
        (version >> 8) & 0xff,
        id.serial,
        id.model,
        id.firmware,
        ns.blocks,
        ns.block_size
    ))
}

/// A descriptor of `parts` wired buffers of `part_len` bytes each, one after another.
fn scattered(
    host: &Arc<Host>,
    parts: usize,
    part_len: u64,
    dir: Direction,
) -> Result<Arc<MultiMemoryDescriptor>, String> {
    let v = (0..parts)
        .map(|_| {
            BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(part_len, dir))
                .map(|b| Arc::new(b) as Arc<dyn MemoryDescriptor>)
                .map_err(e2s("part"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Arc::new(
        MultiMemoryDescriptor::new(v, dir).map_err(e2s("multi descriptor"))?,
    ))
}

/// 1 MiB written in 128 KiB commands to random LBAs from a scattered MultiMemoryDescriptor
/// (first segment at page offset 0x200), then read back into another one (page offset
/// 0x400, different part sizes): PRP lists from DmaCommand segments, byte-exact. Writes stay
/// below byte `limit` of the disk (the benchmarks read known content above it).
fn nvme_scattered_prp_lists(addr: PciAddress, limit: u64) -> TestResult {
    const CHUNK: u64 = 128 << 10;
    const TOTAL: u64 = 1 << 20;
    let NvmeRig {
        host,
        d: _d,
        vfio,
        mapper: _mapper,
        nvme,
        ns,
    } = nvme_rig(addr)?;
    let mut qp = nvme
        .create_io_queue_pair(1, 8)
        .map_err(e2s("I/O queue pair"))?;
    let src = scattered(&host, 17, 64 << 10, Direction::Out)?; // 1088 KiB in 17 parts
    let dst = scattered(&host, 5, 212 << 10, Direction::In)?; // 1060 KiB in 5 parts
    let data: Vec<u8> = (0..TOTAL as u32)
        .map(|i| (i.wrapping_mul(0x9e37_79b9) >> 24) as u8)
        .collect();
    check(src.write_bytes(512, &data) == TOTAL as usize, || {
        "short copy in".into()
    })?;
    // Eight distinct 128 KiB slots below `limit`, in a scrambled order.
    let slots = (ns.blocks * ns.block_size as u64).min(limit) / CHUNK;
    let lbas: Vec<u64> = (0..TOTAL / CHUNK)
        .map(|k| (k * 37 + 11) % slots * (CHUNK / ns.block_size as u64))
        .collect();
    let mut entries = 0;
    for (k, &lba) in lbas.iter().enumerate() {
        entries += nvme
            .transfer(
                &mut qp,
                &ns,
                true,
                lba,
                src.clone(),
                512 + k as u64 * CHUNK,
                CHUNK,
            )
            .map_err(e2s("write"))?;
    }
    for (k, &lba) in lbas.iter().enumerate() {
        nvme.transfer(
            &mut qp,
            &ns,
            false,
            lba,
            dst.clone(),
            1024 + k as u64 * CHUNK,
            CHUNK,
        )
        .map_err(e2s("read"))?;
    }
    let mut back = vec![0u8; TOTAL as usize];
    check(dst.read_bytes(1024, &mut back) == TOTAL as usize, || {
        "short copy out".into()
    })?;
    check(back == data, || {
        let first = back
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        format!("data differs from byte {first:#x}")
    })?;
    let max_kib = nvme.max_transfer() >> 10;
    qp.release().map_err(e2s("release queue pair"))?;
    nvme.shutdown().map_err(e2s("shutdown"))?;
    check(vfio.mapped_pages() == 0, || {
        format!("{} pages mapped", vfio.mapped_pages())
    })?;
    vfio.check_unmapped().map_err(e2s("teardown"))?;
    Ok(format!(
        "1 MiB in {} commands to LBAs {lbas:?} from 17 scattered parts (offset 0x200) and back \
         into 5 (offset 0x400), byte-exact; {entries} PRP entries written, max transfer {} KiB; \
         kernel confirms 0 mappings left",
        lbas.len(),
        max_kib
    ))
}

/// One write and one read forced through a BouncePool: a bypassed DmaCommand's physical
/// segments (the bounce buffer's) reach the controller through an identity IOMMU mapping.
fn nvme_forced_bounce(addr: PciAddress) -> TestResult {
    const LEN: u64 = 64 << 10;
    let NvmeRig {
        host,
        d: _d,
        vfio,
        mapper: _mapper,
        nvme,
        ns,
    } = nvme_rig(addr)?;
    let mut qp = nvme
        .create_io_queue_pair(1, 8)
        .map_err(e2s("I/O queue pair"))?;
    let pool = Arc::new(BouncePool::new(host.clone(), "nvme bounce pool", 4 << 20));
    pool.set_force_bounce(true);
    let data: Vec<u8> = (0..LEN as u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    let src = Arc::new(
        BufferMemoryDescriptor::with_bytes(host.clone(), &data, Direction::Out)
            .map_err(e2s("source"))?,
    );
    let dst = Arc::new(
        BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(LEN, Direction::In))
            .map_err(e2s("destination"))?,
    );
    let spec = nvme_spec(nvme.max_transfer()).map_err(e2s("spec"))?;
    let lba = 9000;
    let mut bounced_at = Vec::new();
    for (write, md) in [
        (true, src.clone() as Arc<dyn MemoryDescriptor>),
        (false, dst.clone()),
    ] {
        let mut cmd = DmaCommand::builder(host.clone())
            .spec(spec)
            .bounce_pool(pool.clone())
            .build()
            .map_err(e2s("command"))?;
        cmd.set_memory_descriptor(md)
            .map_err(e2s("set descriptor"))?;
        cmd.prepare(PrepareOptions::range(0, LEN))
            .map_err(e2s("prepare"))?;
        check(cmd.is_bounced(), || "the forced pool did not bounce".into())?;
        let s = segments(&cmd)?;
        let base = dmakit::PhysAddr(s[0].addr.0);
        bounced_at.push(base.0);
        let (iova, pages) = vfio
            .map_identity(base, LEN, Access::READ_WRITE)
            .map_err(e2s("identity map of the bounce buffer"))?;
        let r = nvme.transfer_command(&mut qp, &cmd, &ns, write, lba, LEN);
        vfio.iovm_free(iova, pages).map_err(e2s("unmap"))?;
        cmd.complete().map_err(e2s("complete"))?;
        r.map_err(e2s(if write { "write" } else { "read" }))?;
    }
    let mut back = vec![0u8; LEN as usize];
    assert_eq!(dst.read_bytes(0, &mut back), back.len());
    check(back == data, || "bounced data did not round-trip".into())?;
    let stats = pool.stats();
    check(
        stats.buffers == 2 && stats.bounced_bytes == 2 * LEN && stats.in_use == 0,
        || format!("{stats:?}"),
    )?;
    qp.release().map_err(e2s("release queue pair"))?;
    nvme.shutdown().map_err(e2s("shutdown"))?;
    vfio.check_unmapped().map_err(e2s("teardown"))?;
    Ok(format!(
        "64 KiB written and read back at LBA {lba} through bounce buffers at physical {:#x} \
         and {:#x} (identity-mapped), byte-exact; pool {stats:?}; kernel confirms 0 mappings left",
        bounced_at[0], bounced_at[1]
    ))
}

/// Reads completed by MSI-X: the completion queue interrupts, VFIO's eventfd wakes the
/// Msi thread, which raises the queue's CompletionSignal (an InterruptSink), and the waiting
/// queue pair sleeps instead of spinning.
fn nvme_interrupt_completion(addr: PciAddress) -> TestResult {
    let NvmeRig {
        host,
        d,
        vfio,
        mapper: _mapper,
        nvme,
        ns,
    } = nvme_rig(addr)?;
    let signal = Arc::new(CompletionSignal::new());
    let sink: Arc<dyn InterruptSink> = signal.clone();
    let msi = Msi::to_sink(&d, IrqKind::MsiX, || true, sink).map_err(e2s("MSI-X"))?;
    let mut qp = nvme
        .create_io_queue_pair_with_interrupt(1, 8, 0, signal.clone())
        .map_err(e2s("I/O queue pair with interrupts"))?;
    let buf = Arc::new(
        BufferMemoryDescriptor::new(host.clone(), BufferOptions::new(64 << 10, Direction::In))
            .map_err(e2s("buffer"))?,
    );
    for k in 0..16u64 {
        nvme.transfer(
            &mut qp,
            &ns,
            false,
            300 + 8 * k,
            buf.clone(),
            k * 4096,
            4096,
        )
        .map_err(e2s("read"))?;
    }
    for k in 0..16u64 {
        let mut head = [0u8; 16];
        assert_eq!(buf.read_bytes(k * 4096, &mut head), head.len());
        let want = format!("dmakit LBA {}\n", 300 + 8 * k);
        check(head.starts_with(want.as_bytes()), || {
            format!(
                "block {} reads {:?}",
                300 + 8 * k,
                String::from_utf8_lossy(&head)
            )
        })?;
    }
    let woken = qp.completions_after_interrupt();
    qp.release().map_err(e2s("release queue pair"))?;
    nvme.shutdown().map_err(e2s("shutdown"))?;
    let irqs = msi.count();
    drop(msi);
    check(irqs >= 1 && woken >= 1, || {
        format!("{irqs} MSI-X interrupts, {woken} completions found after one")
    })?;
    vfio.check_unmapped().map_err(e2s("teardown"))?;
    Ok(format!(
        "16 reads of 4 KiB byte-exact; {irqs} MSI-X interrupts (eventfd counts) woke the Msi \
         thread, which raised the CompletionSignal {} times; {woken} of 16 completions were \
         found by a waiter the interrupt woke; kernel confirms 0 mappings left",
        signal.raised()
    ))
}

/// An interrupt sink that forwards to one connected later.
#[derive(Default)]
struct Relay(Mutex<Option<Arc<dyn InterruptSink>>>);

impl Relay {
    fn connect(&self, to: Arc<dyn InterruptSink>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(to);
    }
}

impl InterruptSink for Relay {
    fn raise(&self) {
        let to = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(to) = to {
            to.raise();
        }
    }
}

/// Reads completed through a DmaEventSource: the completion queue's MSI-X vector raises the
/// event source (the Msi thread calls its InterruptSink), whose work loop takes the
/// completions from the queue pair (an EventQueue, a CompletionSource) and hands them to the
/// driver's action in order.
fn nvme_event_source_completion(addr: PciAddress) -> TestResult {
    const READS: u64 = 24;
    let NvmeRig {
        host,
        d,
        vfio,
        mapper,
        nvme,
        ns,
    } = nvme_rig(addr)?;
    // MSI-X is enabled before the completion queue that uses it is created (as in
    // nvme_interrupt_completion); the event source, which needs the queue, is connected to
    // the vector through a relay once it exists.
    let relay = Arc::new(Relay::default());
    let sink: Arc<dyn InterruptSink> = relay.clone();
    let msi = Msi::to_sink(&d, IrqKind::MsiX, || true, sink).map_err(e2s("MSI-X"))?;
    let qp = nvme
        .create_io_queue_pair_for_events(1, 32, 0)
        .map_err(e2s("I/O queue pair with interrupts"))?;
    let queue = Arc::new(EventQueue::new(qp).map_err(e2s("event queue"))?);
    let (tx, rx) = std::sync::mpsc::channel::<DmaCompletion>();
    let tx = Mutex::new(tx);
    let es = Arc::new(DmaEventSource::new(queue.clone(), move |c| {
        let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(c);
    }));
    relay.connect(es.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let work_loop = es.spawn_work_loop(stop.clone());
    let bufs = (0..READS)
        .map(|_| DmaBuffer::new(&host, &mapper, 4096, Direction::In))
        .collect::<dmakit::Result<Vec<_>>>()
        .map_err(e2s("buffers"))?;
    let mut cids = Vec::new();
    for (k, b) in bufs.iter().enumerate() {
        cids.push(
            queue
                .submit_read(&ns, 400 + 8 * k as u64, b)
                .map_err(e2s("submit"))?,
        );
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < READS as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(c) => got.push(c),
            Err(_) => break,
        }
    }
    stop.store(true, Ordering::Release);
    es.raise();
    let _ = work_loop.join();
    let irqs = msi.count();
    drop(msi);
    let outcome = (|| {
        check(got.len() == READS as usize, || {
            format!(
                "{} of {READS} completions delivered ({irqs} MSI-X interrupts)",
                got.len()
            )
        })?;
        for c in &got {
            check(c.status.is_ok() && c.bytes == 4096, || {
                format!("completion {c:?}")
            })?;
        }
        let mut seen: Vec<u64> = got.iter().map(|c| c.ticket).collect();
        seen.sort_unstable();
        let mut want: Vec<u64> = cids.iter().map(|&c| c as u64).collect();
        want.sort_unstable();
        check(seen == want, || {
            format!("tickets {seen:?}, submitted {want:?}")
        })?;
        for (k, b) in bufs.iter().enumerate() {
            let mut block = vec![0u8; 4096];
            b.read(0, &mut block).map_err(e2s("read back"))?;
            for j in 0..8 {
                let n = 400 + 8 * k as u64 + j;
                check_block(&block[j as usize * 512..(j as usize + 1) * 512], n)?;
            }
        }
        check(irqs >= 1, || "no MSI-X interrupt arrived".to_string())
    })();
    for b in bufs {
        b.release().map_err(e2s("release buffer"))?;
    }
    drop(relay);
    drop(es);
    let queue =
        Arc::try_unwrap(queue).map_err(|_| "the event queue is still shared".to_string())?;
    queue
        .into_inner()
        .release()
        .map_err(e2s("release queue pair"))?;
    nvme.shutdown().map_err(e2s("shutdown"))?;
    outcome?;
    vfio.check_unmapped().map_err(e2s("teardown"))?;
    Ok(format!(
        "{READS} reads of 4 KiB submitted at once; {irqs} MSI-X interrupts raised the \
         DmaEventSource, whose work loop delivered {} completions (tickets = command ids, \
         4096 bytes, status ok), every block byte-exact; kernel confirms 0 mappings left",
        got.len()
    ))
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

/// 4 KiB random reads at queue depth `depth` on one I/O queue pair, each command with its
/// own pre-mapped buffer (a BufferMemoryDescriptor whose mapped DmaCommand is prepared once
/// and reused): `warmup` untimed reads, every one checked byte-exact, then `ios` timed ones
/// from the start of the same sequence
/// (every 64th checked byte-exact: the check is inside the timing), every completion's
/// status and command identifier checked. Prints a `bench` line with the wall time per read.
fn nvme_randread(addr: PciAddress, b: Bench, depth: usize) -> TestResult {
    const IO: u64 = 4096;
    let NvmeRig {
        host,
        d: _d,
        vfio,
        mapper,
        nvme,
        ns,
    } = nvme_rig(addr)?;
    let bs = ns.block_size as u64;
    check(
        b.offset.is_multiple_of(IO)
            && b.size.is_multiple_of(IO)
            && (b.offset + b.size) / bs <= ns.blocks,
        || {
            format!(
                "bench region {:#x}+{:#x} does not fit {ns:?}",
                b.offset, b.size
            )
        },
    )?;
    let mut qp = nvme
        .create_io_queue_pair(1, 64)
        .map_err(e2s("I/O queue pair"))?;
    let buffers = (0..depth)
        .map(|_| DmaBuffer::new(&host, &mapper, IO, Direction::In).map_err(e2s("buffer")))
        .collect::<Result<Vec<_>, _>>()?;
    let first = b.offset / bs;
    let per = IO / bs;
    // The warm-up reads the start of the same sequence the timed run then reads whole (as
    // fio's warm-up job does with the same seed).
    let timed: Vec<u64> = shuffled(b.size / IO, b.ios)
        .into_iter()
        .map(|k| first + k * per)
        .collect();
    let warm: Vec<u64> = shuffled(b.size / IO, b.warmup)
        .into_iter()
        .map(|k| first + k * per)
        .collect();
    let mut block = vec![0u8; IO as usize];
    let mut verified = 0u64;
    let mut verify = |lba: u64, buf: &DmaBuffer| -> dmakit::Result<()> {
        buf.read(0, &mut block)?;
        for k in 0..per {
            let at = (k * bs) as usize;
            check_block(&block[at..at + bs as usize], lba + k).map_err(|_| Error::BadArgument {
                what: "NVMe random read: the block does not hold its known content (LBA)",
                value: lba + k,
            })?;
        }
        verified += 1;
        Ok(())
    };
    let ws = nvme
        .read_queued(&mut qp, &ns, &warm, &buffers, |i, buf| verify(warm[i], buf))
        .map_err(e2s("warm-up reads"))?;
    let stats = nvme
        .read_queued(&mut qp, &ns, &timed, &buffers, |i, buf| {
            if i % 64 == 0 {
                verify(timed[i], buf)
            } else {
                Ok(())
            }
        })
        .map_err(e2s("timed reads"))?;
    check(stats.commands == timed.len() as u64, || {
        format!("{} of {} reads completed", stats.commands, timed.len())
    })?;
    check(stats.max_outstanding == depth.min(timed.len()), || {
        format!(
            "at most {} outstanding, wanted {depth}",
            stats.max_outstanding
        )
    })?;
    for buf in buffers {
        buf.release().map_err(e2s("release"))?;
    }
    qp.release().map_err(e2s("release queue pair"))?;
    nvme.shutdown().map_err(e2s("shutdown"))?;
    vfio.check_unmapped().map_err(e2s("teardown"))?;
    let ns_per_op = stats.elapsed.as_nanos() as f64 / stats.commands as f64;
    println!(
        "bench nvme/randread_4k_qd{depth} dmakit_ns_per_op={ns_per_op:.1} ios={} depth={depth} \
         offset={} size={} warmup={}",
        stats.commands, b.offset, b.size, ws.commands
    );
    Ok(format!(
        "{} timed 4 KiB reads at random 4 KiB-aligned LBAs of {}..{} after {} warm-up ones, up \
         to {} outstanding on one queue pair ({} SQ and {} CQ doorbell writes), each completion's \
         status and command id checked, {verified} reads byte-exact against the image; \
         {:.1} us per read; kernel confirms 0 mappings left",
        stats.commands,
        first,
        first + b.size / bs,
        ws.commands,
        stats.max_outstanding,
        stats.sq_doorbells,
        stats.cq_doorbells,
        ns_per_op / 1000.0
    ))
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
    sq: DmaBuffer,
    cq: DmaBuffer,
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
    let buf = |dir| DmaBuffer::new(&host, &mapper, page, dir).map_err(e2s("DMA buffer"));
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
    w64(0x28, admin.sq.iova())?;
    w64(0x30, admin.cq.iova())?;
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
        let st = submit(&mut admin, sqe(0x06, 1, 0, ident.iova(), [1, 0, 0]), &a, 1)?;
        let mut vid = [0u8; 2];
        ident.read(0, &mut vid).map_err(e2s("identify data"))?;
        check(st == 0 && u16::from_le_bytes(vid) == f.id().vendor, || {
            format!("identify status {st:#x}, vendor {vid:x?}")
        })?;
        // Create I/O CQ 1 on vector 1 (IEN | PC), then I/O SQ 1 on it.
        let st = submit(
            &mut admin,
            sqe(0x05, 2, 0, io.cq.iova(), [qsize | 1, 1 << 16 | 3, 0]),
            &a,
            2,
        )?;
        check(st == 0, || format!("create I/O CQ: status {st:#x}"))?;
        let st = submit(
            &mut admin,
            sqe(0x01, 3, 0, io.sq.iova(), [qsize | 1, 1 << 16 | 1, 0]),
            &a,
            3,
        )?;
        check(st == 0, || format!("create I/O SQ: status {st:#x}"))?;
        // Read 8 blocks at LBA 640 on the I/O queue: vector 1, not vector 0.
        let lba = 640u64;
        let st = submit(
            &mut io,
            sqe(0x02, 1, 1, data.iova(), [lo(lba), hi(lba), 7]),
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
    for d in [admin.sq, admin.cq, io.sq, io.cq, data, ident] {
        d.release().map_err(e2s("release"))?;
    }
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
    let detail = suite::interrupt_delivery(&rig)?;
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
        match suite::reset(&rig, &routes_dropped)? {
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
    if cfg.nvme.is_some() && !cfg.edu.is_empty() {
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
    if let Some(n) = cfg.nvme {
        tests.push((
            "nvme_identify_read_write".into(),
            Box::new(move || nvme_identify_read_write(n)),
        ));
        tests.push((
            "nvme_interrupt_completion".into(),
            Box::new(move || nvme_interrupt_completion(n)),
        ));
        tests.push((
            "nvme_event_source_completion".into(),
            Box::new(move || nvme_event_source_completion(n)),
        ));
        tests.push((
            "nvme_forced_bounce".into(),
            Box::new(move || nvme_forced_bounce(n)),
        ));
        tests.push((
            "nvme_1mib_scattered_prp_lists".into(),
            Box::new(move || nvme_scattered_prp_lists(n, cfg.bench.map_or(u64::MAX, |b| b.offset))),
        ));
        if let Some(b) = cfg.bench {
            for depth in [1, 32] {
                tests.push((
                    format!("nvme_randread_4k_qd{depth}"),
                    Box::new(move || nvme_randread(n, b, depth)),
                ));
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
