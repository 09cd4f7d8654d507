//! What `dmakit inspect` found, as data: the JSON report and the physical space the
//! picture draws (this host's `/proc/iomem` with the allocation's runs).

use crate::picture::{Area, Lane, Run, Segment, Space, Use};
use crate::size::human;
use dmakit_linux::{Capabilities, Inspection};
use serde::Serialize;

/// One physical run of the allocation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RunReport {
    /// Its virtual address.
    pub virtual_address: u64,
    /// Its physical address.
    pub physical_address: u64,
    /// Its bytes.
    pub bytes: u64,
}

/// The host's capabilities, as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    /// How device addresses are produced.
    pub address_mode: String,
    /// The page size.
    pub page_size: u64,
    /// Effective user ID 0.
    pub root: bool,
    /// `CAP_SYS_ADMIN`.
    pub cap_sys_admin: bool,
    /// `CAP_IPC_LOCK`.
    pub cap_ipc_lock: bool,
    /// Frame numbers visible in pagemap.
    pub pagemap_pfns: bool,
    /// `RLIMIT_MEMLOCK` soft limit (`null`: unlimited).
    pub memlock_soft: Option<u64>,
    /// `RLIMIT_MEMLOCK` hard limit (`null`: unlimited).
    pub memlock_hard: Option<u64>,
    /// 2 MiB hugepages reserved.
    pub hugepages_reserved: u64,
    /// 2 MiB hugepages free.
    pub hugepages_free: u64,
}

impl Host {
    fn new(c: &Capabilities) -> Host {
        Host {
            address_mode: c.address_mode.to_string(),
            page_size: c.page_size,
            root: c.root,
            cap_sys_admin: c.cap_sys_admin,
            cap_ipc_lock: c.cap_ipc_lock,
            pagemap_pfns: c.pagemap_pfns,
            memlock_soft: c.memlock.soft,
            memlock_hard: c.memlock.hard,
            hugepages_reserved: c.hugepages_2m.total,
            hugepages_free: c.hugepages_2m.free,
        }
    }
}

/// `dmakit inspect --json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report<'a> {
    /// Bytes allocated (the size asked, rounded up to whole pages).
    pub size: u64,
    /// In one 2 MiB hugepage.
    pub hugepage: bool,
    /// The highest physical address allowed (`null`: any).
    pub phys_limit: Option<u64>,
    /// The allocation's virtual address.
    pub virtual_address: u64,
    /// Its physical runs, in order.
    pub runs: Vec<RunReport>,
    /// Bytes in physical runs of 2 MiB or more.
    pub bytes_in_large_runs: u64,
    /// The host.
    pub host: Host,
    /// The host's physical memory map with the allocation in it.
    pub physical_map: &'a Space,
}

impl<'a> Report<'a> {
    /// The report of `found`, drawn on `space`.
    pub fn new(found: &Inspection, space: &'a Space) -> Report<'a> {
        let mut off = 0;
        let runs = found
            .runs
            .iter()
            .map(|r| {
                let run = RunReport {
                    virtual_address: found.va.0 + off,
                    physical_address: r.addr.0,
                    bytes: r.len,
                };
                off += r.len;
                run
            })
            .collect();
        Report {
            size: found.size,
            hugepage: found.hugepage,
            phys_limit: (found.phys_limit != u64::MAX).then_some(found.phys_limit),
            virtual_address: found.va.0,
            runs,
            bytes_in_large_runs: found.in_large_runs(),
            host: Host::new(&found.caps),
            physical_map: space,
        }
    }
}

/// The host's physical memory map (`/proc/iomem`) with the allocation's runs in it; when
/// the map is hidden, one stretch of RAM around the runs.
pub fn host_space(found: &Inspection) -> Space {
    let runs: Vec<Run> = found
        .runs
        .iter()
        .map(|r| Run {
            start: r.addr.0,
            len: r.len,
        })
        .collect();
    let regions = crate::iomem::read().unwrap_or_else(|| around(&runs));
    let what = if found.hugepage {
        "in one 2 MiB hugepage"
    } else {
        "wired"
    };
    let label = format!(
        "inspect: {} {what}, {} physical run{}",
        human(found.size),
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );
    Space::physical(
        "This host's physical memory (/proc/iomem) and where the allocation landed",
        regions,
        vec![Lane::new(Use::Allocation, label, runs)],
    )
}

/// One stretch of RAM from the lowest run to the highest, for a host whose map is hidden.
fn around(runs: &[Run]) -> Vec<Segment> {
    let start = runs.iter().map(|r| r.start).min().unwrap_or(0);
    let end = runs.iter().map(Run::end).max().unwrap_or(0);
    vec![Segment {
        area: Area::Ram,
        start,
        end,
        label: "RAM (the map is hidden: /proc/iomem needs CAP_SYS_ADMIN)".into(),
    }]
}
