//! Parsing of sizes given on the command line: `4096`, `0x1000`, `64K`, `2M`, `1G`.

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
    let shift = match unit.trim_start().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => {
            return Err(format!(
                "`{s}` is not a size: unknown unit `{other}` (use B, K, M, G or T)"
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

#[cfg(test)]
mod tests {
    use super::parse;

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
