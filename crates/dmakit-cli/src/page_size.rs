//! `--page-size` of the simulated machine: the page sizes of the hardware dmakit targets.

/// The page sizes the demo's machine can have, and why.
pub const ALLOWED: &str = "4K (x86-64, most ARM64) or 16K (Apple silicon), the page sizes of \
the hardware dmakit targets; the demo's machine layout (RAM from 1 MiB, 32 KiB buffers) and \
its NVMe steps are built for them";

/// Parses a page size: one of [`ALLOWED`], written as any size (`16K`, `16384`, `0x4000`).
pub fn parse(s: &str) -> Result<u64, String> {
    let bytes = crate::size::parse(s)?;
    match bytes {
        4096 | 16384 => Ok(bytes),
        _ => Err(format!(
            "`{s}` ({}) is not a page size the demo runs with: use {ALLOWED}",
            crate::size::human(bytes)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn only_the_targets_page_sizes() {
        assert_eq!(parse("4K"), Ok(4096));
        assert_eq!(parse("0x4000"), Ok(16384));
        for bad in ["1G", "0", "3000", "64K", "8K"] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.contains("4K") && e.contains("16K") && e.contains(bad),
                "{e}"
            );
        }
        assert!(parse("lots").unwrap_err().contains("not a size"));
    }
}
