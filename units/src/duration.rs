//! Durations: a bare decimal number is seconds, anything else is a humantime duration.

use std::time::Duration;

const EXAMPLES: &str = "a number of seconds such as 2 or 0.5, or 500ms, 1m30s";

/// Parses a duration: `2` (seconds), `0.5` (500 ms), `500ms`, `1m30s`, `2 min`.
///
/// A bare decimal number (`2`, `0.25`, `.5`) is seconds, read exactly (no floating point;
/// digits below a nanosecond are dropped). Anything else goes to [`humantime::parse_duration`].
/// Negative values, `nan`/`inf`, exponents and values that overflow [`Duration`] are errors.
/// Range checks (zero allowed? a cap?) belong to the caller.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?}: a duration cannot be negative"));
    }
    if let Some((whole, frac)) = bare_number(t) {
        return seconds(whole, frac).ok_or_else(|| format!("{s:?} is too long a duration"));
    }
    humantime::parse_duration(t).map_err(|e| format!("{s:?} is not a duration ({EXAMPLES}): {e}"))
}

/// Splits `12.5` into `("12", "5")` if `t` is digits with at most one decimal point.
fn bare_number(t: &str) -> Option<(&str, &str)> {
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    (digits(whole) && digits(frac) && !(whole.is_empty() && frac.is_empty()))
        .then_some((whole, frac))
}

/// `whole.frac` seconds, exactly to the nanosecond; `None` on overflow.
fn seconds(whole: &str, frac: &str) -> Option<Duration> {
    let secs = if whole.is_empty() {
        0
    } else {
        whole.parse::<u64>().ok()?
    };
    let nanos = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |n, digit| n * 10 + u32::from(digit - b'0'));
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `2` used to be seconds to the server and an error to the client: it is seconds.
    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(".5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5."), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration(" 1.5 "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.000000001"), Ok(Duration::from_nanos(1)));
        // Exact, unlike going through f64 (0.1 has no exact binary form).
        assert_eq!(parse_duration("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0.0000000019"), Ok(Duration::from_nanos(1)));
        assert_eq!(
            parse_duration("18446744073709551615.999999999"),
            Ok(Duration::new(u64::MAX, 999_999_999))
        );
    }

    #[test]
    fn units_are_humantime() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("365days"),
            Ok(Duration::from_secs(365 * 86_400))
        );
    }

    #[test]
    fn refusals_are_one_line_and_quote_the_input() {
        crate::assert_refused(
            parse_duration,
            &[
                "",
                " ",
                ".",
                "-1",
                "-0.5",
                "-1s",
                "nan",
                "NaN",
                "inf",
                "1e3",
                "+2",
                "1..2",
                "soon",
                "10 parsecs",
                "18446744073709551616",
                "100000000000000000000y",
                "١٢",
            ],
        );
        assert!(parse_duration("-1").unwrap_err().contains("negative"));
        assert!(parse_duration("18446744073709551616")
            .unwrap_err()
            .contains("too long"));
    }
}
