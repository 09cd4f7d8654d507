//! Parsing of sizes given on the command line: `4096`, `0x1000`, `64K`, `2M`, `1G`.

/// Parses a byte count with an optional binary suffix (K, M, G; `KiB` etc. accepted).
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("`{s}` is not a size: {e}"));
    }
    let (num, shift) = match t
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        u if u.ends_with('K') => (&t[..u.len() - 1], 10),
        u if u.ends_with('M') => (&t[..u.len() - 1], 20),
        u if u.ends_with('G') => (&t[..u.len() - 1], 30),
        u => (&t[..u.len()], 0),
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
    }
}
