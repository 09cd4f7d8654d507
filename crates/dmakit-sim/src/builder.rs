//! [`MachineBuilder`]: how a test describes the machine it wants.
//!
//! The default is hostile on purpose: non-coherent caches, RAM in three regions with holes
//! between them and one above 4 GiB, and a fragmentation of 0.5 so buffers land on scattered,
//! non-identity physical pages.
//!
//! Every knob has a hostile default; a test turns down only what it must:
//!
//! ```
//! use dmakit::platform::{collect_runs, PageRequest, PhysicalMemory, Task};
//! use dmakit::PageSize;
//! use dmakit_sim::{FaultSite, MachineBuilder};
//!
//! // Apple-silicon-like: 16 KiB pages, RAM with a hole and a region above 4 GiB, every page
//! // of a buffer anywhere, and the 2nd pin failing.
//! let m = MachineBuilder::new()
//!     .seed(42)
//!     .page_size(PageSize::SIZE_16K)
//!     .ram(0x0800_0000, 0x0800_0000)      // [128 MiB, 256 MiB)
//!     .ram(0x1_0000_0000, 0x4000_0000)    // [4 GiB, 5 GiB)
//!     .fragmentation(1.0)
//!     .fault(FaultSite::Pin, 2)
//!     .build()?;
//! let va = m.allocate_pages(0x10_0000, &PageRequest::WIRED)?;
//! let runs = collect_runs(&m, Task::KERNEL, va, 0x10_0000)?;
//! assert!(runs.len() > 1, "scattered");
//! assert!(runs.iter().all(|r| r.addr.0 >= 0x0800_0000));
//! # Ok::<(), dmakit::Error>(())
//! ```

use crate::fault::{FaultPlan, FaultSite};
use crate::machine::{Inner, Machine};
use crate::mmio::{MmioWindow, SharedDevice};
use crate::physical::{PhysicalPool, RamRegion};
use dmakit::{Error, PageSize, Result};
use std::fmt;
use std::sync::{Mutex, RwLock};

/// Describes a simulated machine; [`build`](Self::build) makes it.
///
/// ```
/// use dmakit::platform::{PageRequest, PhysicalMemory};
/// use dmakit_sim::MachineBuilder;
///
/// // The same seed gives the same physical layout; another seed, another one.
/// let place = |seed| -> dmakit::Result<dmakit::PhysAddr> {
///     let m = MachineBuilder::new().seed(seed).build()?;
///     let va = m.allocate_pages(0x1000, &PageRequest::WIRED)?;
///     Ok(dmakit::platform::collect_runs(&m, dmakit::platform::Task::KERNEL, va, 0x1000)?[0].addr)
/// };
/// assert_eq!(place(7)?, place(7)?);
/// assert_ne!(place(7)?, place(8)?);
/// // Descriptions are checked.
/// assert!(MachineBuilder::new().ram(0x1000, 0x800).build().is_err(), "not page aligned");
/// assert!(MachineBuilder::new().fragmentation(1.5).build().is_err());
/// let layout = MachineBuilder::new().coherent(true).build()?.layout();
/// assert!(layout.coherent && layout.ram.len() == dmakit_sim::DEFAULT_RAM.len());
/// # Ok::<(), dmakit::Error>(())
/// ```
#[derive(Clone)]
pub struct MachineBuilder {
    seed: u64,
    page: PageSize,
    ram: Vec<RamRegion>,
    fragmentation: f64,
    coherent: bool,
    mmio: Vec<(u64, u64, SharedDevice)>,
    faults: FaultPlan,
}

impl fmt::Debug for MachineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mmio: Vec<String> = self
            .mmio
            .iter()
            .map(|(base, len, _)| format!("[{base:#x}, +{len:#x})"))
            .collect();
        f.debug_struct("MachineBuilder")
            .field("seed", &self.seed)
            .field("page", &self.page)
            .field("ram", &self.ram)
            .field("fragmentation", &self.fragmentation)
            .field("coherent", &self.coherent)
            .field("mmio", &mmio)
            .field("faults", &self.faults)
            .finish()
    }
}

impl Default for MachineBuilder {
    fn default() -> Self {
        MachineBuilder {
            seed: 0,
            page: PageSize::SIZE_4K,
            ram: Vec::new(),
            fragmentation: 0.5,
            coherent: false,
            mmio: Vec::new(),
            faults: FaultPlan::default(),
        }
    }
}

/// The default RAM map: `[1 MiB, 64 MiB)`, `[128 MiB, 192 MiB)`, `[4 GiB, 4 GiB + 128 MiB)`.
pub const DEFAULT_RAM: [(u64, u64); 3] = [
    (0x0010_0000, 0x03F0_0000),
    (0x0800_0000, 0x0400_0000),
    (0x1_0000_0000, 0x0800_0000),
];

impl MachineBuilder {
    /// The default hostile machine description.
    pub fn new() -> Self {
        Self::default()
    }

    /// The seed of every random choice (the same seed gives the same layout).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The CPU page size (4 KiB and 16 KiB are typical).
    pub fn page_size(mut self, page: PageSize) -> Self {
        self.page = page;
        self
    }

    /// Adds a RAM region `[base, base + len)`. Without any, [`DEFAULT_RAM`] is used.
    pub fn ram(mut self, base: u64, len: u64) -> Self {
        self.ram.push(RamRegion { base, len });
        self
    }

    /// How scattered allocations are, from 0 (ascending, identity-like runs) to 1 (every
    /// page anywhere).
    pub fn fragmentation(mut self, f: f64) -> Self {
        self.fragmentation = f;
        self
    }

    /// Whether devices see the CPU caches (x86: yes). The default is no.
    pub fn coherent(mut self, coherent: bool) -> Self {
        self.coherent = coherent;
        self
    }

    /// Adds an MMIO window at `[base, base + len)` routed to `device`.
    pub fn mmio(mut self, base: u64, len: u64, device: SharedDevice) -> Self {
        self.mmio.push((base, len, device));
        self
    }

    /// Makes call `nth` (1-based) at `site` fail.
    pub fn fault(mut self, site: FaultSite, nth: u64) -> Self {
        self.faults.fail(site, nth);
        self
    }

    /// Builds the machine, checking the description: regions page aligned, non-empty, not
    /// overlapping; fragmentation within [0, 1]; windows clear of RAM and of each other.
    pub fn build(self) -> Result<Machine> {
        let psize = self.page.bytes();
        let mut ram = if self.ram.is_empty() {
            DEFAULT_RAM
                .iter()
                .map(|&(base, len)| RamRegion { base, len })
                .collect()
        } else {
            self.ram
        };
        ram.sort_by_key(|r| r.base);
        for r in &ram {
            if r.len == 0 {
                return Err(Error::ZeroSize { what: "RAM region" });
            }
            for (what, v) in [("RAM region base", r.base), ("RAM region length", r.len)] {
                if v % psize != 0 {
                    return Err(Error::NotAligned {
                        what,
                        value: v,
                        align: psize,
                    });
                }
            }
            r.base.checked_add(r.len).ok_or(Error::Overflow {
                what: "RAM region",
                start: r.base,
                len: r.len,
            })?;
        }
        if let Some(w) = ram.windows(2).find(|w| w[0].end() > w[1].base) {
            return Err(Error::RangeBusy {
                what: "RAM regions overlap",
                start: w[1].base,
                len: w[1].len,
            });
        }
        if !(0.0..=1.0).contains(&self.fragmentation) {
            return Err(Error::BadArgument {
                what: "fragmentation must be within [0, 1] (value in per mille)",
                value: (self.fragmentation * 1000.0) as u64,
            });
        }
        let phys = PhysicalPool::new(self.page, ram, self.seed, self.fragmentation);
        let machine = Machine {
            inner: Mutex::new(Inner::new(self.page, phys, self.coherent, self.faults)),
            windows: RwLock::new(Vec::<MmioWindow>::new()),
            seed: self.seed,
            fragmentation: self.fragmentation,
            coherent: self.coherent,
        };
        for (base, len, dev) in self.mmio {
            machine.add_mmio(dmakit::PhysAddr(base), len, dev)?;
        }
        Ok(machine)
    }
}
