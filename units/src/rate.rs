//! Rates (events per second) with decimal suffixes.

/// Parses a rate in events per second: `1000`, `2.5`, `10k`, `1.5M`, `1e4`.
///
/// The suffixes are decimal, unlike a size's: `k`/`K` = 1000, `M` = 1,000,000 (`m` is refused,
/// it would read as milli). The result is finite and greater than zero; zero, negative values,
/// `nan` and infinity are errors. Bounds beyond that belong to the caller.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (number, multiplier) = if let Some(n) = t.strip_suffix(['k', 'K']) {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix('M') {
        (n, 1e6)
    } else {
        (t, 1.0)
    };
    let value = number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| !v.is_nan())
        .ok_or_else(|| format!("{s:?} is not a rate (examples: 1000, 10k, 1.5M per second)"))?
        * multiplier;
    if value.is_infinite() && value > 0.0 {
        return Err(format!("{s:?} is too large a rate"));
    }
    if value <= 0.0 || value.is_infinite() {
        return Err(format!("{s:?}: a rate must be greater than zero"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_suffixes() {
        assert_eq!(parse_rate("1000"), Ok(1000.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert_eq!(parse_rate("0.001"), Ok(0.001));
        assert_eq!(parse_rate("10k"), Ok(10_000.0));
        assert_eq!(parse_rate("10K"), Ok(10_000.0));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000.0));
        assert_eq!(parse_rate("1e4"), Ok(10_000.0));
        assert_eq!(parse_rate(" 2 k "), Ok(2000.0));
    }

    #[test]
    fn refusals_are_one_line_and_quote_the_input() {
        crate::assert_refused(
            parse_rate,
            &[
                "", "0", "0k", "-1", "-0", "fast", "10m", "10G", "nan", "inf", "-inf", "1e999",
                "1e308k", "k",
            ],
        );
        assert!(parse_rate("1e308k").unwrap_err().contains("too large"));
        assert!(parse_rate("0").unwrap_err().contains("greater than zero"));
    }
}
