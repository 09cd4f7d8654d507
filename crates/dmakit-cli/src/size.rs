//! Sizes on the command line: parsing `4096`, `0x1000`, `64K`, `2M`, `1G`, and writing
//! byte counts for people (`64 GiB`, `21.4 GiB`).

/// Parses a byte count: a decimal number with an optional binary unit (`K`, `M`, `G`, `T`,
/// each also as `KB`/`KiB`, any case, or `B` for bytes), or `0x` and hexadecimal digits.
/// Anything else after the number (`1bbb`, `12Q`, `1 K B`) is refused.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("`{s}` is not a size: {e}"));
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let unit = unit.trim_start();
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "`{s}` is not a size: unknown unit `{unit}` (use B, K, M, G or T)"
            ))
        }
    };
    let value = num
        .parse::<u64>()
        .map_err(|e| format!("`{s}` is not a size: {e}"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` does not fit in 64 bits"))
}

/// `bytes` for people: `100 B`, `64 KiB`, `21.4 GiB` (one decimal unless exact).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >> (10 * (unit + 2)) != 0 {
        unit += 1;
    }
    let shift = 10 * (unit + 1);
    if bytes.trailing_zeros() >= shift as u32 {
        format!("{} {}", bytes >> shift, UNITS[unit])
    } else {
        format!(
            "{:.1} {}",
            bytes as f64 / (1u64 << shift) as f64,
            UNITS[unit]
        )
    }
}

/// `bytes` for people and exactly: `64 GiB (0x1000000000 bytes)`.
pub fn both(bytes: u64) -> String {
    format!("{} ({bytes:#x} bytes)", human(bytes))
}

#[cfg(test)]
mod tests {
    use super::{human, parse};

    #[test]
    fn sizes_for_people() {
        assert_eq!(human(100), "100 B");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(64 << 30), "64 GiB");
        assert_eq!(human(1536 << 20), "1.5 GiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
        assert_eq!(super::both(1 << 20), "1 MiB (0x100000 bytes)");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("0x1000"), Ok(4096));
        assert_eq!(parse("0x1B"), Ok(27));
        assert_eq!(parse("64K"), Ok(65536));
        assert_eq!(parse("64KiB"), Ok(65536));
        assert_eq!(parse("2m"), Ok(2 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("16k"), Ok(16384));
        assert!(parse("").is_err());
        assert!(parse("K").is_err());
        assert!(parse("12Q").is_err());
        assert!(parse("99999999999999999999G").is_err());
        assert!(parse("17179869184G").is_err(), "overflow");
        assert!(parse("1bbb").is_err(), "junk after the unit");
        assert!(parse("1KK").is_err());
        assert!(parse("-1").is_err());
        assert_eq!(parse("1 GiB"), Ok(1 << 30));
        assert_eq!(parse("2T"), Ok(2 << 40));
        assert_eq!(parse("512b"), Ok(512));
    }
}
