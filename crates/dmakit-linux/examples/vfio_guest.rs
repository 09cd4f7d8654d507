//! Boot check (replaced by the full guest suite).
fn main() {
    let groups: Vec<_> = std::fs::read_dir("/dev/vfio").map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    if groups.len() >= 2 { println!("ok vfio_groups_present {groups:?}"); println!("1 passed, 0 failed"); }
    else { println!("FAILED vfio_groups_present: {groups:?}"); println!("0 passed, 1 failed"); }
}
