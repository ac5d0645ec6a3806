//! Byte sizes: a whole number with an optional binary unit.

/// Parses a byte size: `4096`, `64k`, `16KiB`, `1 MB`, `2g`.
///
/// Every unit is binary and case-insensitive (`k`, `Ki`, `KB`, `KiB` = 1024; `M…` = 1024²;
/// `G…` = 1024³; `B` = 1). Fractions, signs, unknown units and values that overflow `usize` are
/// errors.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{s:?} is not a size (examples: 4096, 16KiB, 64k, 1M)"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{s:?}: a size is a whole number of bytes (write 1536 or 1536B, not 1.5k)"
        ));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kb" | "kib" => 10,
        "m" | "mi" | "mb" | "mib" => 20,
        "g" | "gi" | "gb" | "gib" => 30,
        _ => {
            let hint = "use B, k/KiB, M/MiB or G/GiB; all binary, 1k = 1024";
            return Err(format!(
                "{s:?}: unknown size unit {:?} ({hint})",
                unit.trim()
            ));
        }
    };
    // `digits` is all ASCII digits, so the only way to fail is overflow.
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is too large a size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_binary_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("7b"), Ok(7));
        assert_eq!(parse_size("64B"), Ok(64));
        assert_eq!(parse_size(" 16KiB "), Ok(16 << 10));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("1Ki"), Ok(1024));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    }

    /// The spellings the client used to refuse and the server accepted: now sizes everywhere,
    /// and binary even when written like a decimal unit.
    #[test]
    fn formerly_server_only_spellings_are_binary() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        assert_eq!(parse_size("64 KB"), Ok(64 << 10));
        assert_eq!(parse_size("3MB"), Ok(3 << 20));
        assert_eq!(parse_size("1mib"), Ok(1 << 20));
    }

    #[test]
    fn refusals_are_one_line_and_quote_the_input() {
        crate::assert_refused(
            parse_size,
            &[
                "",
                "KiB",
                "12q",
                "12 parsecs",
                "-1",
                "+1",
                "1.5k",
                "1,5",
                "1TiB",
                "99999999999999999999",
                "99999999999999999G",
                "١٢",
            ],
        );
        assert!(parse_size("1.5k").unwrap_err().contains("whole number"));
        assert!(parse_size("12q").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("99999999999999999G")
            .unwrap_err()
            .contains("too large"));
    }
}
