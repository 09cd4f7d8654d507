//! x86-64 four-level page tables: build them, map and unmap ranges with 4 KiB or 2 MiB
//! pages, change a range's cache type, translate.
//!
//! The tables live in physical frames the owner allocates and reaches through a
//! [`TableMemory`] (the platform: frames from its allocator, entries through its direct
//! map; a test: a map of fake frames). This module never touches memory itself, so it is
//! all safe code and unit tested on the host.
//!
//! Cache types use the page attribute table as [`PAT_VALUE`] programs it: WB, WT, UC-, UC,
//! **WC**, WT, UC-, UC (the power-on layout with entry 4 turned into write-combining).

use dmakit::platform::CacheMode;
use dmakit::{Error, Result};

/// The PAT MSR value the entry encodings assume.
pub const PAT_VALUE: u64 = 0x0007_0401_0007_0406;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const PAT_4K: u64 = 1 << 7;
const PAT_2M: u64 = 1 << 12;
const ADDR_4K: u64 = 0x000f_ffff_ffff_f000;
const ADDR_2M: u64 = 0x000f_ffff_ffe0_0000;
/// 4 KiB.
pub const PAGE: u64 = 0x1000;
/// 2 MiB.
pub const LARGE: u64 = 0x20_0000;

/// Where the tables' frames come from and how their entries are read and written.
pub trait TableMemory {
    /// The 8-byte entry at physical address `pa`.
    fn read(&self, pa: u64) -> u64;
    /// Writes the entry at `pa`.
    fn write(&mut self, pa: u64, value: u64);
    /// A zero-filled 4 KiB frame for a new table.
    fn alloc_table(&mut self) -> Result<u64>;
}

/// What a mapping allows and how it is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// Stores allowed.
    pub writable: bool,
    /// The cache type.
    pub cache: CacheMode,
}

impl Attrs {
    /// Writable, write-back: RAM.
    pub const RAM: Attrs = Attrs {
        writable: true,
        cache: CacheMode::CopyBack,
    };
    /// Writable, uncached: device registers.
    pub const DEVICE: Attrs = Attrs {
        writable: true,
        cache: CacheMode::Inhibit,
    };

    fn bits(self, large: bool) -> u64 {
        let pat = if large { PAT_2M } else { PAT_4K };
        let cache = match self.cache {
            CacheMode::CopyBack => 0,
            CacheMode::WriteThrough => PWT,
            CacheMode::Inhibit => PCD | PWT,
            CacheMode::WriteCombine => pat,
        };
        PRESENT | cache | if self.writable { WRITABLE } else { 0 } | if large { HUGE } else { 0 }
    }

    fn from_bits(e: u64, large: bool) -> Attrs {
        let pat = e & if large { PAT_2M } else { PAT_4K } != 0;
        let cache = match (pat, e & PCD != 0, e & PWT != 0) {
            (false, false, false) => CacheMode::CopyBack,
            (false, false, true) => CacheMode::WriteThrough,
            (true, false, false) => CacheMode::WriteCombine,
            _ => CacheMode::Inhibit,
        };
        Attrs {
            writable: e & WRITABLE != 0,
            cache,
        }
    }
}

/// One translation: the physical address of the byte and the attributes of its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the byte asked for.
    pub pa: u64,
    /// The page's attributes.
    pub attrs: Attrs,
    /// Whether it is mapped by a 2 MiB page.
    pub large: bool,
}

fn canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_ffff
}

fn index(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * level)) & 0x1ff
}

fn check_span(va: u64, pa: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Err(Error::ZeroSize {
            what: "page mapping",
        });
    }
    for (what, a) in [
        ("mapping virtual address", va),
        ("mapping physical address", pa),
    ] {
        if a % PAGE != 0 {
            return Err(Error::NotAligned {
                what,
                value: a,
                align: PAGE,
            });
        }
    }
    if !len.is_multiple_of(PAGE) {
        return Err(Error::NotAligned {
            what: "mapping length",
            value: len,
            align: PAGE,
        });
    }
    let last = va.checked_add(len - 1).ok_or(Error::Overflow {
        what: "page mapping",
        start: va,
        len,
    })?;
    pa.checked_add(len - 1).ok_or(Error::Overflow {
        what: "page mapping (physical)",
        start: pa,
        len,
    })?;
    if pa.checked_add(len - 1).is_some_and(|l| l > ADDR_4K | 0xfff) {
        return Err(Error::BadArgument {
            what: "physical address beyond 52 bits",
            value: pa,
        });
    }
    if !canonical(va) || !canonical(last) || (va >> 47) != (last >> 47) {
        return Err(Error::BadArgument {
            what: "virtual range not canonical (crosses the x86-64 address hole)",
            value: va,
        });
    }
    Ok(())
}

/// A four-level page table hierarchy rooted at one physical frame.
#[derive(Debug)]
pub struct PageTables {
    root: u64,
    tables: u64,
}

impl PageTables {
    /// Empty tables (a fresh top-level frame from `mem`).
    pub fn new(mem: &mut dyn TableMemory) -> Result<PageTables> {
        let root = mem.alloc_table()?;
        Ok(PageTables { root, tables: 1 })
    }

    /// The physical address of the top-level table (what CR3 takes).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Table frames in use.
    pub fn table_frames(&self) -> u64 {
        self.tables
    }

    /// The entry address at `level` (3 = PML4 .. 0 = PT) for `va`, creating missing
    /// tables on the way when `create`; `None` where a table is missing (not `create`) or
    /// a large page sits above `level`. Errors only when a table cannot be allocated.
    fn entry(
        &mut self,
        mem: &mut dyn TableMemory,
        va: u64,
        level: u32,
        create: bool,
    ) -> Result<Option<u64>> {
        let mut table = self.root;
        for l in (level + 1..=3).rev() {
            let at = table + index(va, l) * 8;
            let e = mem.read(at);
            if e & PRESENT == 0 {
                if !create {
                    return Ok(None);
                }
                let t = mem.alloc_table()?;
                self.tables += 1;
                mem.write(at, t | PRESENT | WRITABLE);
                table = t;
            } else if e & HUGE != 0 {
                return Ok(None);
            } else {
                table = e & ADDR_4K;
            }
        }
        Ok(Some(table + index(va, level) * 8))
    }

    /// Translates `va`.
    pub fn translate(&self, mem: &dyn TableMemory, va: u64) -> Option<Translation> {
        if !canonical(va) {
            return None;
        }
        let mut table = self.root;
        for l in (0..=3).rev() {
            let e = mem.read(table + index(va, l) * 8);
            if e & PRESENT == 0 {
                return None;
            }
            if l == 1 && e & HUGE != 0 {
                return Some(Translation {
                    pa: (e & ADDR_2M) + (va & (LARGE - 1)),
                    attrs: Attrs::from_bits(e, true),
                    large: true,
                });
            }
            if l == 0 {
                return Some(Translation {
                    pa: (e & ADDR_4K) + (va & (PAGE - 1)),
                    attrs: Attrs::from_bits(e, false),
                    large: false,
                });
            }
            table = e & ADDR_4K;
        }
        None
    }

    /// Maps `[va, va + len)` to `[pa, pa + len)` with `attrs`, using 2 MiB pages where
    /// both addresses are 2 MiB aligned and `large` allows. Every page must be unmapped
    /// ([`Error::RangeBusy`] otherwise, and nothing changes). If a table cannot be
    /// allocated half way, what was mapped is unmapped again.
    pub fn map(
        &mut self,
        mem: &mut dyn TableMemory,
        va: u64,
        pa: u64,
        len: u64,
        attrs: Attrs,
        large: bool,
    ) -> Result<()> {
        check_span(va, pa, len)?;
        self.check_unmapped(mem, va, len)?;
        let mut done = 0;
        while done < len {
            match self.map_step(mem, va + done, pa + done, len - done, attrs, large) {
                Ok(step) => done += step,
                Err(e) => {
                    let _ = self.unmap_mapped(mem, va, done);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Refuses the mapping ([`Error::RangeBusy`]) when any page of `[va, va + len)` is
    /// mapped already.
    fn check_unmapped(&self, mem: &dyn TableMemory, va: u64, len: u64) -> Result<()> {
        let mut off = 0;
        while off < len {
            if self.translate(mem, va + off).is_some() {
                return Err(Error::RangeBusy {
                    what: "page tables (already mapped)",
                    start: va + off,
                    len: PAGE,
                });
            }
            off += PAGE;
        }
        Ok(())
    }

    /// Maps the next piece at `v` to `p` (`left` bytes still to map) and returns its
    /// length: a 2 MiB page where both are aligned, `large` allows and the slot holds no
    /// page table; the 2 MiB as small pages when it does; else one 4 KiB page. On failure
    /// this piece maps nothing (the caller unmaps the earlier ones).
    fn map_step(
        &mut self,
        mem: &mut dyn TableMemory,
        v: u64,
        p: u64,
        left: u64,
        attrs: Attrs,
        large: bool,
    ) -> Result<u64> {
        let step = if large && v.is_multiple_of(LARGE) && p.is_multiple_of(LARGE) && left >= LARGE {
            LARGE
        } else {
            PAGE
        };
        let level = if step == LARGE { 1 } else { 0 };
        // A 2 MiB slot that already holds a page table (from an earlier small mapping
        // nearby) takes 4 KiB pages instead.
        let got = self.entry(mem, v, level, true).map(|e| match e {
            Some(at) if level == 1 && mem.read(at) & PRESENT != 0 => None,
            other => other,
        });
        match got? {
            Some(at) => {
                mem.write(at, p | attrs.bits(level == 1));
                Ok(step)
            }
            None if level == 1 => {
                // Fall back to small pages for this 2 MiB.
                self.map(mem, v, p, LARGE, attrs, false)?;
                Ok(LARGE)
            }
            None => Err(Error::Internal {
                what: "page tables: a large page appeared inside a checked range",
            }),
        }
    }

    fn unmap_mapped(&mut self, mem: &mut dyn TableMemory, va: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.unmap(mem, va, len)
    }

    /// Splits the 2 MiB page holding `va` (if it is one) into 512 small pages with the same
    /// attributes.
    fn split(&mut self, mem: &mut dyn TableMemory, va: u64) -> Result<()> {
        let Some(pd) = self.entry(mem, va, 1, false)? else {
            return Ok(());
        };
        let e = mem.read(pd);
        if e & PRESENT == 0 || e & HUGE == 0 {
            return Ok(());
        }
        let attrs = Attrs::from_bits(e, true);
        let t = mem.alloc_table()?;
        self.tables += 1;
        let base = e & ADDR_2M;
        for i in 0..512 {
            mem.write(t + i * 8, (base + i * PAGE) | attrs.bits(false));
        }
        mem.write(pd, t | PRESENT | WRITABLE);
        Ok(())
    }

    /// Applies `f` to the leaf entry of every 4 KiB page of `[va, va + len)`, splitting
    /// 2 MiB pages the range covers only in part; whole 2 MiB pages get `f` once with
    /// `large` set. Every page must be mapped ([`Error::NotMapped`], nothing changed).
    fn each_leaf(
        &mut self,
        mem: &mut dyn TableMemory,
        va: u64,
        len: u64,
        mut f: impl FnMut(&mut dyn TableMemory, u64, u64, bool),
    ) -> Result<()> {
        check_span(va, 0, len)?;
        let mut off = 0;
        while off < len {
            if self.translate(mem, va + off).is_none() {
                return Err(Error::NotMapped {
                    what: "page tables",
                    addr: va + off,
                });
            }
            off += PAGE;
        }
        let mut done = 0;
        while done < len {
            let v = va + done;
            let t = self.translate(mem, v).ok_or(Error::Internal {
                what: "page tables: a checked page vanished",
            })?;
            if t.large {
                if v.is_multiple_of(LARGE) && len - done >= LARGE {
                    let at = self.entry(mem, v, 1, false)?.ok_or(Error::Internal {
                        what: "page tables: missing directory entry",
                    })?;
                    let e = mem.read(at);
                    f(mem, at, e, true);
                    done += LARGE;
                    continue;
                }
                self.split(mem, v)?;
            }
            let at = self.entry(mem, v, 0, false)?.ok_or(Error::Internal {
                what: "page tables: missing table entry",
            })?;
            let e = mem.read(at);
            f(mem, at, e, false);
            done += PAGE;
        }
        Ok(())
    }

    /// Unmaps every page of `[va, va + len)` (all must be mapped). The caller flushes the
    /// TLB if the tables are live.
    pub fn unmap(&mut self, mem: &mut dyn TableMemory, va: u64, len: u64) -> Result<()> {
        self.each_leaf(mem, va, len, |mem, at, _, _| mem.write(at, 0))
    }

    /// Changes the cache type of every page of `[va, va + len)` (all must be mapped).
    pub fn set_cache(
        &mut self,
        mem: &mut dyn TableMemory,
        va: u64,
        len: u64,
        cache: CacheMode,
    ) -> Result<()> {
        self.each_leaf(mem, va, len, |mem, at, e, large| {
            let attrs = Attrs {
                cache,
                ..Attrs::from_bits(e, large)
            };
            let addr = e & if large { ADDR_2M } else { ADDR_4K };
            mem.write(at, addr | attrs.bits(large));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    /// Frames as a map of entries; tables from 0x100_0000 up.
    #[derive(Default)]
    struct Fake {
        entries: BTreeMap<u64, u64>,
        next: u64,
        budget: Option<u32>,
    }

    impl TableMemory for Fake {
        fn read(&self, pa: u64) -> u64 {
            self.entries.get(&pa).copied().unwrap_or(0)
        }
        fn write(&mut self, pa: u64, v: u64) {
            self.entries.insert(pa, v);
        }
        fn alloc_table(&mut self) -> Result<u64> {
            if let Some(b) = self.budget.as_mut() {
                if *b == 0 {
                    return Err(Error::NoMemory {
                        what: "fake tables",
                        requested: PAGE,
                        available: 0,
                    });
                }
                *b -= 1;
            }
            self.next += PAGE;
            Ok(0x100_0000 + self.next)
        }
    }

    #[test]
    fn large_and_small_pages_translate() {
        let mut m = Fake::default();
        let mut t = PageTables::new(&mut m).unwrap();
        t.map(&mut m, 0, 0, 0x40_0000 + 0x3000, Attrs::RAM, true)
            .unwrap();
        let a = t.translate(&m, 0x20_1234).unwrap();
        assert_eq!((a.pa, a.large, a.attrs), (0x20_1234, true, Attrs::RAM));
        let b = t.translate(&m, 0x40_2fff).unwrap();
        assert_eq!((b.pa, b.large), (0x40_2fff, false));
        assert_eq!(t.translate(&m, 0x40_3000), None);
        let hi = 0xffff_c000_0000_0000u64;
        t.map(&mut m, hi, 0x1234_5000, PAGE, Attrs::DEVICE, true)
            .unwrap();
        let d = t.translate(&m, hi + 8).unwrap();
        assert_eq!((d.pa, d.attrs.cache), (0x1234_5008, CacheMode::Inhibit));
        assert!(matches!(
            t.map(&mut m, 0x40_2000, 0, PAGE, Attrs::RAM, false),
            Err(Error::RangeBusy { .. })
        ));
        assert!(matches!(
            t.map(&mut m, 0x0000_8000_0000_0000, 0, PAGE, Attrs::RAM, false),
            Err(Error::BadArgument { .. })
        ));
        assert!(matches!(
            t.map(&mut m, 0x123, 0, PAGE, Attrs::RAM, false),
            Err(Error::NotAligned { .. })
        ));
        assert!(matches!(
            t.map(&mut m, !0xfff, 0, 2 * PAGE, Attrs::RAM, false),
            Err(Error::Overflow { .. })
        ));
    }

    #[test]
    fn cache_changes_split_large_pages() {
        let mut m = Fake::default();
        let mut t = PageTables::new(&mut m).unwrap();
        t.map(&mut m, 0x20_0000, 0x20_0000, LARGE, Attrs::RAM, true)
            .unwrap();
        let before = t.table_frames();
        for mode in [
            CacheMode::WriteCombine,
            CacheMode::WriteThrough,
            CacheMode::Inhibit,
            CacheMode::CopyBack,
        ] {
            t.set_cache(&mut m, 0x20_5000, PAGE, mode).unwrap();
            let x = t.translate(&m, 0x20_5000).unwrap();
            assert_eq!((x.pa, x.large, x.attrs.cache), (0x20_5000, false, mode));
            let y = t.translate(&m, 0x20_6000).unwrap();
            assert_eq!((y.pa, y.attrs), (0x20_6000, Attrs::RAM));
        }
        assert_eq!(t.table_frames(), before + 1, "one split");
        t.unmap(&mut m, 0x20_5000, PAGE).unwrap();
        assert_eq!(t.translate(&m, 0x20_5000), None);
        assert!(matches!(
            t.unmap(&mut m, 0x20_4000, 2 * PAGE),
            Err(Error::NotMapped { .. })
        ));
        assert!(
            t.translate(&m, 0x20_4000).is_some(),
            "a failed unmap changes nothing"
        );
        // A whole large page changes in place.
        t.map(&mut m, 0x60_0000, 0x60_0000, LARGE, Attrs::RAM, true)
            .unwrap();
        t.set_cache(&mut m, 0x60_0000, LARGE, CacheMode::WriteCombine)
            .unwrap();
        let z = t.translate(&m, 0x7f_ffff).unwrap();
        assert!(z.large && z.attrs.cache == CacheMode::WriteCombine);
    }

    #[test]
    fn a_failed_map_leaves_nothing() {
        let mut m = Fake::default();
        let mut t = PageTables::new(&mut m).unwrap();
        m.budget = Some(4);
        // Crossing a 1 GiB boundary needs a second directory and table: out of frames.
        let va = 0x3fff_e000;
        assert!(t.map(&mut m, va, 0, 0x4000, Attrs::RAM, false).is_err());
        for i in 0..4 {
            assert_eq!(t.translate(&m, va + i * PAGE), None);
        }
    }
}
