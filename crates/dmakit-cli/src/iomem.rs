//! This host's physical address map from `/proc/iomem`: RAM, firmware's reserved ranges
//! and device windows (its top-level entries; what lies between them is a hole).
//! Without `CAP_SYS_ADMIN` the kernel shows every address as 0, and there is no map.

use crate::picture::{Area, Segment};

/// The top-level regions of `/proc/iomem`, or `None` when it cannot be read or hides
/// its addresses.
pub fn read() -> Option<Vec<Segment>> {
    parse(&std::fs::read_to_string("/proc/iomem").ok()?)
}

/// The top-level regions of an `/proc/iomem` text (`None` if its addresses are hidden).
pub fn parse(text: &str) -> Option<Vec<Segment>> {
    let regions: Vec<Segment> = text
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(line)
        .collect();
    if regions.iter().all(|r| r.start == 0 && r.end <= 1) {
        return None;
    }
    Some(regions)
}

/// `start-end : name` (the end inclusive) as a segment.
fn line(l: &str) -> Option<Segment> {
    let (range, name) = l.split_once(" : ")?;
    let (a, b) = range.trim().split_once('-')?;
    let start = u64::from_str_radix(a, 16).ok()?;
    let last = u64::from_str_radix(b, 16).ok()?;
    let name = name.trim();
    Some(Segment {
        area: area(name),
        start,
        end: last.saturating_add(1),
        label: name.to_string(),
    })
}

/// What a top-level entry of that name is.
fn area(name: &str) -> Area {
    if name == "System RAM" {
        Area::Ram
    } else if name.contains("Reserved") || name.contains("ACPI") || name.contains("ROM") {
        Area::Reserved
    } else {
        Area::Mmio
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_entries_become_regions() {
        let text = "00000000-00000fff : Reserved\n\
                    00001000-0009fbff : System RAM\n\
                    \x20 000f0000-000fffff : System ROM\n\
                    c0001000-eebfffff : PCI Bus 0000:00\n\
                    100000000-63fffffff : System RAM\n\
                    garbage line\n";
        let r = parse(text).unwrap();
        let got: Vec<_> = r.iter().map(|s| (s.area, s.start, s.end)).collect();
        assert_eq!(
            got,
            vec![
                (Area::Reserved, 0, 0x1000),
                (Area::Ram, 0x1000, 0x9fc00),
                (Area::Mmio, 0xc000_1000, 0xeec0_0000),
                (Area::Ram, 0x1_0000_0000, 0x6_4000_0000),
            ]
        );
        assert_eq!(r[2].label, "PCI Bus 0000:00");
    }

    #[test]
    fn hidden_addresses_give_no_map() {
        let text = "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n";
        assert_eq!(parse(text), None);
        assert_eq!(parse(""), None);
    }
}
