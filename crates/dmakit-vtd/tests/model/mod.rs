//! A fake VT-d remapping unit on the simulated machine, written from the specification
//! (and QEMU's `intel-iommu` where it chooses): registers with their command/status
//! handshakes, register-based and queued invalidation, a context cache and an IOTLB that
//! keep entries until invalidated, second-level table walks that read memory as the unit
//! would (DRAM only, unless the unit snoops), and fault records.
//!
//! It is deliberately independent of the driver: every offset and bit is written out here
//! again. It records every command and invalidation (`events`) and every protocol
//! violation it sees (`errors`), so a test can check the order of things and that the
//! driver broke no rule.

#![allow(dead_code)]

use dmakit::platform::{PhysicalMemory, Width};
use dmakit::PhysAddr;
use dmakit_sim::{Machine, MmioDevice};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Where the tests put the unit (QEMU's q35 address).
pub const BASE: u64 = 0xFED9_0000;

/// How the fake unit is built.
#[derive(Clone, Debug)]
pub struct Config {
    /// MGAW + 1 and, as in QEMU, the host address width.
    pub aw_bits: u32,
    /// SAGAW override (bit 1: 3-level, bit 2: 4-level, bit 3: 5-level).
    pub sagaw: Option<u32>,
    /// CAP.CM.
    pub caching_mode: bool,
    /// ECAP.C.
    pub coherent: bool,
    /// Fault recording registers.
    pub records: u32,
    /// CAP.RWBF.
    pub rwbf: bool,
    /// CAP.PSI.
    pub psi: bool,
    /// CAP.MAMV.
    pub mamv: u32,
    /// ECAP.QI.
    pub qi: bool,
    /// QEMU drops a fault of a requester that already has one recorded.
    pub collapse: bool,
    /// CAP.DRD and CAP.DWD.
    pub drain: bool,
    /// CAP.ND.
    pub nd: u32,
    /// Translation (and queued invalidation) already on, as firmware might leave it.
    pub firmware_te: bool,
}

impl Config {
    /// QEMU 7.2's `-device intel-iommu` defaults (aw-bits=39, no caching mode).
    pub fn qemu() -> Self {
        Config {
            aw_bits: 39,
            sagaw: None,
            caching_mode: false,
            coherent: false,
            records: 1,
            rwbf: false,
            psi: true,
            mamv: 18,
            qi: true,
            collapse: true,
            drain: true,
            nd: 6,
            firmware_te: false,
        }
    }
}

/// Something the unit was told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A global command register write.
    Gcmd(u32),
    /// A context-cache invalidation: granularity 1 global, 2 domain, 3 device.
    Context {
        granularity: u8,
        did: u16,
        sid: u16,
        queued: bool,
    },
    /// An IOTLB invalidation: granularity 1 global, 2 domain, 3 pages.
    Iotlb {
        granularity: u8,
        did: u16,
        addr: u64,
        am: u32,
        drain: bool,
        queued: bool,
    },
    /// A write-buffer flush.
    WriteBuffer,
    /// A wait descriptor's status write.
    Wait,
}

impl Event {
    /// Whether this is an IOTLB invalidation that covers page `page` of domain `did`.
    pub fn covers(&self, did: u16, page: u64) -> bool {
        match *self {
            Event::Iotlb { granularity: 1, .. } => true,
            Event::Iotlb {
                granularity: 2,
                did: d,
                ..
            } => d == did,
            Event::Iotlb {
                granularity: 3,
                did: d,
                addr,
                am,
                ..
            } => d == did && page >= addr && page < addr + (1u64 << (12 + am)),
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Tlb {
    did: u16,
    pa: u64,
    read: bool,
    write: bool,
}

/// The fake unit. Share it as `Arc<Mutex<FakeVtd>>` and register it as an MMIO window.
pub struct FakeVtd {
    machine: Weak<Machine>,
    pub cfg: Config,
    cap: u64,
    ecap: u64,
    gsts: u32,
    rtaddr: u64,
    /// The root table latched by the last SRTP.
    pub root: u64,
    ccmd: u64,
    iva: u64,
    iotlb_reg: u64,
    fsts: u32,
    fectl: u32,
    frcd: Vec<(u64, u64)>,
    next_frcd: usize,
    iqa: u64,
    iqt: u64,
    iqh: u64,
    iq_base: u64,
    iq_size: u64,
    /// Commands are accepted but never complete (status bits never move).
    pub stuck: bool,
    /// The next queued descriptor is refused (FSTS.IQE), as for a malformed one.
    pub refuse_queue: bool,
    iotlb: HashMap<(u16, u64), Tlb>,
    negative: HashMap<(u16, u64), u16>,
    context: HashMap<u16, Result<(u64, u64), u8>>,
    /// Everything the unit was told, in order.
    pub events: Vec<Event>,
    /// Protocol violations seen.
    pub errors: Vec<String>,
    /// Table walks done (IOTLB misses).
    pub walks: u64,
}

const TE: u32 = 1 << 31;
const SRTP: u32 = 1 << 30;
const SFL: u32 = 1 << 29;
const EAFL: u32 = 1 << 28;
const WBF: u32 = 1 << 27;
const QIE: u32 = 1 << 26;
const IRE: u32 = 1 << 25;
const SIRTP: u32 = 1 << 24;
const CFI: u32 = 1 << 23;
const FRO: u64 = 0x220;
const IRO: u64 = 0xF0;

impl FakeVtd {
    /// A unit on `machine` (registered by [`attach`]).
    pub fn new(machine: &Arc<Machine>, cfg: Config) -> Self {
        let sagaw = cfg
            .sagaw
            .unwrap_or(if cfg.aw_bits >= 48 { 0b110 } else { 0b010 });
        let cap = cfg.nd as u64
            | (cfg.rwbf as u64) << 4
            | (cfg.caching_mode as u64) << 7
            | (sagaw as u64) << 8
            | ((cfg.aw_bits - 1) as u64) << 16
            | (FRO / 16) << 24
            | (3u64 << 34)
            | (cfg.psi as u64) << 39
            | ((cfg.records - 1) as u64) << 40
            | (cfg.mamv as u64) << 48
            | if cfg.drain { 3u64 << 54 } else { 0 };
        let ecap = cfg.coherent as u64 | (cfg.qi as u64) << 1 | (IRO / 16) << 8;
        let gsts = if cfg.firmware_te { TE | SRTP } else { 0 };
        FakeVtd {
            machine: Arc::downgrade(machine),
            frcd: vec![(0, 0); cfg.records as usize],
            cfg,
            cap,
            ecap,
            gsts,
            rtaddr: 0,
            root: 0,
            ccmd: 0,
            iva: 0,
            iotlb_reg: 0,
            fsts: 0,
            fectl: 1 << 31,
            next_frcd: 0,
            iqa: 0,
            iqt: 0,
            iqh: 0,
            iq_base: 0,
            iq_size: 0,
            stuck: false,
            refuse_queue: false,
            iotlb: HashMap::new(),
            negative: HashMap::new(),
            context: HashMap::new(),
            events: Vec::new(),
            errors: Vec::new(),
            walks: 0,
        }
    }

    fn machine(&self) -> Arc<Machine> {
        self.machine
            .upgrade()
            .expect("the machine outlives its units")
    }

    /// Whether translation is on.
    pub fn translating(&self) -> bool {
        self.gsts & TE != 0
    }

    /// Whether queued invalidation is on.
    pub fn queued(&self) -> bool {
        self.gsts & QIE != 0
    }

    /// Entries in the IOTLB.
    pub fn iotlb_entries(&self) -> usize {
        self.iotlb.len()
    }

    fn err(&mut self, e: String) {
        self.errors.push(e);
    }

    // ---- memory as the unit sees it ----------------------------------------------------

    /// A remapping-structure read: DRAM only unless the unit snoops the CPU caches.
    fn table_read(&self, pa: u64) -> Option<u64> {
        let m = self.machine();
        let mut b = [0u8; 8];
        let ok = if self.cfg.coherent {
            m.read_phys(PhysAddr(pa), &mut b).is_ok()
        } else {
            m.device_read(PhysAddr(pa), &mut b).is_ok()
        };
        ok.then(|| u64::from_le_bytes(b))
    }

    // ---- registers --------------------------------------------------------------------

    fn read_reg(&mut self, off: u64, width: Width) -> u64 {
        let frcd_end = FRO + 16 * self.cfg.records as u64;
        match (off, width) {
            (0x00, Width::W32) => 0x10,
            (0x08, Width::W64) => self.cap,
            (0x08, Width::W32) => self.cap & 0xFFFF_FFFF,
            (0x0C, Width::W32) => self.cap >> 32,
            (0x10, Width::W64) => self.ecap,
            (0x10, Width::W32) => self.ecap & 0xFFFF_FFFF,
            (0x14, Width::W32) => self.ecap >> 32,
            (0x18, Width::W32) => 0,
            (0x1C, Width::W32) => self.gsts as u64,
            (0x20, Width::W64) => self.rtaddr,
            (0x28, Width::W64) => self.ccmd,
            (0x34, Width::W32) => {
                let ppf = self.frcd.iter().any(|r| r.1 >> 63 != 0) as u32;
                (self.fsts | ppf << 1) as u64
            }
            (0x38, Width::W32) => self.fectl as u64,
            (0x80, Width::W64) => self.iqh,
            (0x88, Width::W64) => self.iqt,
            (0x90, Width::W64) => self.iqa,
            (IRO, Width::W64) => self.iva,
            (0xF8, Width::W64) => self.iotlb_reg,
            (o, w) if (FRO..frcd_end).contains(&o) => {
                let (i, rel) = (((o - FRO) / 16) as usize, (o - FRO) % 16);
                let (lo, hi) = self.frcd[i];
                match (rel, w) {
                    (0, Width::W64) => lo,
                    (8, Width::W64) => hi,
                    (0, Width::W32) => lo & 0xFFFF_FFFF,
                    (4, Width::W32) => lo >> 32,
                    (8, Width::W32) => hi & 0xFFFF_FFFF,
                    (12, Width::W32) => hi >> 32,
                    _ => {
                        self.err(format!("fault record read at {o:#x} with {w:?}"));
                        0
                    }
                }
            }
            (o, w) => {
                self.err(format!("unexpected register read at {o:#x} with {w:?}"));
                0
            }
        }
    }

    fn write_reg(&mut self, off: u64, width: Width, v: u64) {
        let frcd_end = FRO + 16 * self.cfg.records as u64;
        match (off, width) {
            (0x18, Width::W32) => self.gcmd(v as u32),
            (0x20, Width::W64) => self.rtaddr = v,
            (0x28, Width::W64) => self.ccmd(v),
            (0x34, Width::W32) => {
                // PFO, IQE, ICE and ITE are write-1-to-clear; PPF and FRI are read only.
                self.fsts &= !(v as u32 & 0x71);
            }
            (0x38, Width::W32) => self.fectl = v as u32 & (1 << 31),
            (0x88, Width::W64) => self.iqt_write(v),
            (0x90, Width::W64) => self.iqa = v,
            (IRO, Width::W64) => self.iva = v,
            (0xF8, Width::W64) => self.iotlb_write(v),
            (o, w) if (FRO..frcd_end).contains(&o) => {
                let (i, rel) = (((o - FRO) / 16) as usize, (o - FRO) % 16);
                match (rel, w) {
                    (12, Width::W32) if v & (1 << 31) != 0 => self.frcd[i].1 &= !(1 << 63),
                    (8, Width::W64) if v & (1 << 63) != 0 => self.frcd[i].1 &= !(1 << 63),
                    _ => self.err(format!("fault record write at {o:#x} with {w:?} ({v:#x})")),
                }
            }
            (o, w) => self.err(format!(
                "unexpected register write at {o:#x} with {w:?} ({v:#x})"
            )),
        }
    }

    fn gcmd(&mut self, v: u32) {
        let persistent = TE | EAFL | QIE | IRE | CFI;
        let changed = (v ^ self.gsts) & persistent;
        let one_shot = v & (SRTP | SFL | WBF | SIRTP);
        let n = changed.count_ones() + one_shot.count_ones();
        self.events.push(Event::Gcmd(v));
        if n != 1 {
            self.err(format!(
                "GCMD write {v:#x} with status {:#x} asks for {n} things at once",
                self.gsts
            ));
        }
        if self.stuck {
            return;
        }
        if changed & TE != 0 {
            if v & TE != 0 {
                if self.gsts & SRTP == 0 {
                    self.err("translation enabled without a root table".into());
                }
                self.gsts |= TE;
            } else {
                self.gsts &= !TE;
            }
        }
        if one_shot & SRTP != 0 {
            if self.rtaddr & 0xC00 != 0 {
                self.err(format!("RTADDR {:#x} is not legacy mode", self.rtaddr));
            }
            self.root = self.rtaddr & !0xFFF;
            self.gsts |= SRTP;
        }
        if changed & QIE != 0 {
            if v & QIE != 0 {
                if !self.cfg.qi {
                    self.err("QIE on a unit without queued invalidation".into());
                    return;
                }
                if self.iqt != 0 {
                    self.err(format!("queue enabled with IQT {:#x}, not 0", self.iqt));
                }
                if self.iqa & 0x800 != 0 {
                    self.err("256-bit descriptors asked".into());
                }
                self.iq_base = self.iqa & !0xFFF;
                self.iq_size = 256 << (self.iqa & 7);
                self.iqh = 0;
                self.gsts |= QIE;
            } else {
                if self.iqh != self.iqt {
                    self.err("queue disabled while not empty".into());
                }
                self.iqh = 0;
                self.gsts &= !QIE;
            }
        }
        if one_shot & WBF != 0 {
            if !self.cfg.rwbf {
                self.err("write-buffer flush on a unit without RWBF".into());
            }
            self.events.push(Event::WriteBuffer);
        }
        if one_shot & (SFL | SIRTP) != 0 || changed & (IRE | EAFL | CFI) != 0 {
            self.err(format!("unexpected command {v:#x}"));
        }
    }

    fn ccmd(&mut self, v: u64) {
        self.ccmd = v;
        if v >> 63 == 0 {
            return;
        }
        if self.gsts & QIE != 0 {
            self.err("register context invalidation while the queue is on".into());
            return;
        }
        if self.stuck {
            return;
        }
        let g = ((v >> 61) & 3) as u8;
        let (did, sid, fm) = (
            (v & 0xFFFF) as u16,
            ((v >> 16) & 0xFFFF) as u16,
            (v >> 32) & 3,
        );
        if fm != 0 {
            self.err("function mask in a context invalidation".into());
        }
        let actual = self.context_invalidate(g, did, sid, false);
        self.ccmd = (v & !(1 << 63) & !(3 << 59)) | (actual as u64) << 59;
    }

    fn context_invalidate(&mut self, g: u8, did: u16, sid: u16, queued: bool) -> u8 {
        self.events.push(Event::Context {
            granularity: g,
            did,
            sid,
            queued,
        });
        match g {
            1 => self.context.clear(),
            2 => self.context.retain(|_, c| match c {
                Ok((_, hi)) => ((*hi >> 8) & 0xFFFF) as u16 != did,
                Err(_) => false,
            }),
            3 => {
                self.context.remove(&sid);
            }
            _ => {
                self.err(format!("context invalidation granularity {g}"));
                return 0;
            }
        }
        g
    }

    fn iotlb_write(&mut self, v: u64) {
        self.iotlb_reg = v;
        if v >> 63 == 0 {
            return;
        }
        if self.gsts & QIE != 0 {
            self.err("register IOTLB invalidation while the queue is on".into());
            return;
        }
        if self.stuck {
            return;
        }
        let g = ((v >> 60) & 3) as u8;
        let did = ((v >> 32) & 0xFFFF) as u16;
        let drain = (v >> 48) & 3;
        let (addr, am) = if g == 3 {
            (self.iva & !0xFFF, (self.iva & 0x3F) as u32)
        } else {
            (0, 0)
        };
        let actual = self.iotlb_invalidate(g, did, addr, am, drain, false);
        self.iotlb_reg = (v & !(1 << 63) & !(3 << 57)) | (actual as u64) << 57;
    }

    fn iotlb_invalidate(
        &mut self,
        g: u8,
        did: u16,
        addr: u64,
        am: u32,
        drain: u64,
        queued: bool,
    ) -> u8 {
        if drain != 0 && !self.cfg.drain {
            self.err("draining asked of a unit without it".into());
        }
        if self.cfg.drain && drain != 3 {
            self.err(format!("IOTLB invalidation without draining ({drain:#x})"));
        }
        self.events.push(Event::Iotlb {
            granularity: g,
            did,
            addr,
            am,
            drain: drain == 3,
            queued,
        });
        match g {
            1 => {
                self.iotlb.clear();
                self.negative.clear();
            }
            2 => {
                self.iotlb.retain(|_, t| t.did != did);
                self.negative.retain(|_, d| *d != did);
            }
            3 => {
                if !self.cfg.psi {
                    self.err("page-selective invalidation on a unit without PSI".into());
                    return 0;
                }
                if am > self.cfg.mamv {
                    return 0;
                }
                let size = 1u64 << (12 + am);
                if addr & (size - 1) != 0 {
                    self.err(format!(
                        "page invalidation at {addr:#x} not aligned to its mask {am}"
                    ));
                }
                let inside = |page: u64| page >= addr && page < addr + size;
                self.iotlb
                    .retain(|(_, page), t| t.did != did || !inside(*page));
                self.negative
                    .retain(|(_, page), d| *d != did || !inside(*page));
            }
            _ => {
                self.err(format!("IOTLB invalidation granularity {g}"));
                return 0;
            }
        }
        g
    }

    fn iqt_write(&mut self, v: u64) {
        self.iqt = v;
        if self.gsts & QIE == 0 || self.fsts & 0x10 != 0 || self.stuck {
            return;
        }
        if self.refuse_queue && self.iqh != self.iqt {
            self.fsts |= 0x10;
            return;
        }
        let m = self.machine();
        while self.iqh != self.iqt {
            let head = self.iqh >> 4;
            let mut b = [0u8; 16];
            if m.read_phys(PhysAddr(self.iq_base + head * 16), &mut b)
                .is_err()
            {
                self.queue_error("descriptor unreadable".into());
                return;
            }
            let lo = u64::from_le_bytes(b[..8].try_into().unwrap());
            let hi = u64::from_le_bytes(b[8..].try_into().unwrap());
            let ok = match lo & 0xF {
                1 => {
                    if lo & 0xFFFC_0000_0000_FFC0 != 0 || hi != 0 {
                        false
                    } else {
                        if (lo >> 48) & 3 != 0 {
                            self.err("function mask in a context descriptor".into());
                        }
                        let g = ((lo >> 4) & 3) as u8;
                        self.context_invalidate(g, (lo >> 16) as u16, (lo >> 32) as u16, true) != 0
                    }
                }
                2 => {
                    if lo & 0xFFFF_FFFF_0000_FF00 != 0 || hi & 0xF80 != 0 {
                        false
                    } else {
                        let g = ((lo >> 4) & 3) as u8;
                        let drain = ((lo >> 6) & 1) | ((lo >> 7) & 1) << 1;
                        self.iotlb_invalidate(
                            g,
                            (lo >> 16) as u16,
                            hi & !0xFFF,
                            (hi & 0x3F) as u32,
                            drain,
                            true,
                        ) != 0
                    }
                }
                5 => {
                    if lo & 0xFFFF_FF80 != 0 || lo & (1 << 5) == 0 || hi & 3 != 0 {
                        false
                    } else {
                        let data = ((lo >> 32) as u32).to_le_bytes();
                        self.events.push(Event::Wait);
                        m.write_phys(PhysAddr(hi), &data).is_ok()
                    }
                }
                _ => false,
            };
            if !ok {
                self.queue_error(format!("bad descriptor {lo:#x} {hi:#x}"));
                return;
            }
            self.iqh = ((head + 1) % self.iq_size) << 4;
        }
    }

    fn queue_error(&mut self, e: String) {
        self.fsts |= 0x10;
        self.err(e);
    }

    // ---- translation -------------------------------------------------------------------

    fn record_fault(&mut self, sid: u16, iova: u64, write: bool, reason: u8) {
        if self.fsts & 1 != 0 {
            return;
        }
        if self.cfg.collapse
            && self
                .frcd
                .iter()
                .any(|r| r.1 >> 63 != 0 && r.1 as u16 == sid)
        {
            return;
        }
        let i = self.next_frcd;
        if self.frcd[i].1 >> 63 != 0 {
            self.fsts |= 1;
            return;
        }
        let pending = self.frcd.iter().any(|r| r.1 >> 63 != 0);
        self.frcd[i] = (
            iova & !0xFFF,
            sid as u64 | (reason as u64) << 32 | (!write as u64) << 62 | 1 << 63,
        );
        if !pending {
            self.fsts = (self.fsts & !0xFF00) | (i as u32) << 8;
        }
        self.next_frcd = (i + 1) % self.frcd.len();
    }

    fn context_entry(&mut self, sid: u16) -> Result<(u64, u64), u8> {
        if let Some(c) = self.context.get(&sid) {
            return *c;
        }
        let c = self.fetch_context(sid);
        if c.is_ok() || self.cfg.caching_mode {
            self.context.insert(sid, c);
        }
        c
    }

    fn fetch_context(&mut self, sid: u16) -> Result<(u64, u64), u8> {
        let (bus, devfn) = ((sid >> 8) as u64, (sid & 0xFF) as u64);
        let haw_rsvd = !((1u64 << self.cfg.aw_bits) - 1);
        let re_lo = self.table_read(self.root + bus * 16).ok_or(8u8)?;
        let re_hi = self.table_read(self.root + bus * 16 + 8).ok_or(8u8)?;
        if re_lo & 1 == 0 {
            return Err(1);
        }
        if re_hi != 0 || re_lo & (0xFFE | haw_rsvd) != 0 {
            return Err(0xA);
        }
        let ctp = re_lo & !0xFFF;
        let lo = self.table_read(ctp + devfn * 16).ok_or(9u8)?;
        let hi = self.table_read(ctp + devfn * 16 + 8).ok_or(9u8)?;
        if lo & 1 == 0 {
            return Err(2);
        }
        if hi & 0xFFFF_FFFF_FF00_0080 != 0 || lo & (0xFF0 | haw_rsvd) != 0 {
            return Err(0xB);
        }
        let sagaw = (self.cap >> 8) & 0x1F;
        if (lo >> 2) & 3 != 0 || sagaw & (1 << (hi & 7)) == 0 {
            return Err(3);
        }
        Ok((lo, hi))
    }

    /// A device access: the physical address `iova` reaches, or the fault reason (also
    /// recorded in the fault registers).
    pub fn translate(&mut self, sid: u16, iova: u64, write: bool) -> Result<u64, u8> {
        let r = self.translate_inner(sid, iova, write);
        if let Err(reason) = r {
            self.record_fault(sid, iova, write, reason);
        }
        r
    }

    fn translate_inner(&mut self, sid: u16, iova: u64, write: bool) -> Result<u64, u8> {
        if self.gsts & TE == 0 {
            return Ok(iova);
        }
        let page = iova & !0xFFF;
        let denied = if write { 5 } else { 6 };
        if let Some(t) = self.iotlb.get(&(sid, page)) {
            return if (write && t.write) || (!write && t.read) {
                Ok(t.pa | (iova & 0xFFF))
            } else {
                Err(denied)
            };
        }
        if self.negative.contains_key(&(sid, page)) {
            return Err(denied);
        }
        let (lo, hi) = self.context_entry(sid)?;
        let did = ((hi >> 8) & 0xFFFF) as u16;
        let levels = (hi & 7) as u32 + 2;
        let width = (12 + 9 * levels).min(self.cfg.aw_bits);
        if iova >> width != 0 {
            return Err(4);
        }
        self.walks += 1;
        let haw_rsvd = !((1u64 << self.cfg.aw_bits) - 1) & ((1u64 << 52) - 1);
        let mut table = lo & !0xFFF;
        let (mut read, mut wr) = (true, true);
        for level in (1..=levels).rev() {
            let idx = (iova >> (12 + 9 * (level - 1))) & 511;
            let e = self.table_read(table + idx * 8).ok_or(7u8)?;
            read &= e & 1 != 0;
            wr &= e & 2 != 0;
            let need = if write { 2 } else { 1 };
            if e & need == 0 {
                if self.cfg.caching_mode {
                    self.negative.insert((sid, page), did);
                }
                return Err(denied);
            }
            let rsvd = 0x800 | if level > 1 { 0x80 } else { 0 } | haw_rsvd;
            if e & rsvd != 0 {
                return Err(0xC);
            }
            if level == 1 {
                let pa = e & !0xFFF & ((1u64 << 52) - 1);
                self.iotlb.insert(
                    (sid, page),
                    Tlb {
                        did,
                        pa,
                        read,
                        write: wr,
                    },
                );
                return Ok(pa | (iova & 0xFFF));
            }
            table = e & !0xFFF & ((1u64 << 52) - 1);
        }
        unreachable!()
    }

    /// A device read of `buf.len()` bytes at `iova` through the unit.
    pub fn device_read(&mut self, sid: u16, iova: u64, buf: &mut [u8]) -> Result<(), u8> {
        let m = self.machine();
        let mut done = 0;
        while done < buf.len() {
            let a = iova + done as u64;
            let n = ((0x1000 - (a & 0xFFF)) as usize).min(buf.len() - done);
            let pa = self.translate(sid, a, false)?;
            m.device_read(PhysAddr(pa), &mut buf[done..done + n])
                .map_err(|_| 0xFFu8)?;
            done += n;
        }
        Ok(())
    }

    /// A device write of `data` at `iova` through the unit.
    pub fn device_write(&mut self, sid: u16, iova: u64, data: &[u8]) -> Result<(), u8> {
        let m = self.machine();
        let mut done = 0;
        while done < data.len() {
            let a = iova + done as u64;
            let n = ((0x1000 - (a & 0xFFF)) as usize).min(data.len() - done);
            let pa = self.translate(sid, a, true)?;
            m.device_write(PhysAddr(pa), &data[done..done + n])
                .map_err(|_| 0xFFu8)?;
            done += n;
        }
        Ok(())
    }
}

impl MmioDevice for FakeVtd {
    fn name(&self) -> &str {
        "fake VT-d"
    }

    fn read(&mut self, offset: u64, width: Width) -> u64 {
        self.read_reg(offset, width)
    }

    fn write(&mut self, offset: u64, width: Width, value: u64) {
        self.write_reg(offset, width, value)
    }
}

/// Puts a unit on `machine` at [`BASE`].
pub fn attach(machine: &Arc<Machine>, cfg: Config) -> Arc<Mutex<FakeVtd>> {
    let dev = Arc::new(Mutex::new(FakeVtd::new(machine, cfg)));
    machine
        .add_mmio(PhysAddr(BASE), 0x1000, dev.clone())
        .unwrap();
    dev
}
