//! CPU lists (`0,2-3`): a set of CPU numbers, each below `CPU_SETSIZE`.

use std::fmt;
use std::str::FromStr;

/// CPUs a `cpu_set_t` can hold; every CPU of a [`CpuList`] is below it.
pub const CPU_SETSIZE: usize = libc::CPU_SETSIZE as usize;

/// A parsed CPU list.
///
/// Invariant: ascending, no CPU twice, every CPU below [`CPU_SETSIZE`], at least one CPU. So a
/// caller may set each of them in a `cpu_set_t` without a bounds check of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// The CPUs, ascending.
    pub fn as_slice(&self) -> &[usize] {
        &self.0
    }

    /// The CPUs, ascending.
    pub fn into_vec(self) -> Vec<usize> {
        self.0
    }
}

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<CpuList, String> {
        parse_cpu_list(s)
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_cpu_list(&self.0))
    }
}

/// Parses a CPU list such as `0`, `0-3` or `0,2-3` (spaces around entries allowed).
///
/// The result is a set, in ascending order. A CPU listed twice (also through overlapping
/// ranges), a backwards range, an empty entry, or a CPU at or beyond [`CPU_SETSIZE`] is an error.
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut seen = vec![false; CPU_SETSIZE];
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "{s:?}: empty entry in the CPU list (example: 0,2-3)"
            ));
        }
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi) = (cpu_number(s, lo.trim())?, cpu_number(s, hi.trim())?);
        if lo > hi {
            return Err(format!("{s:?}: CPU range {lo}-{hi} is backwards"));
        }
        // Checked before expanding the range, so `0-99999999999` costs nothing.
        if hi >= CPU_SETSIZE {
            return Err(format!(
                "{s:?}: CPU {hi} is beyond the kernel's CPU set (at most {})",
                CPU_SETSIZE - 1
            ));
        }
        for (cpu, listed) in seen[lo..=hi].iter_mut().enumerate() {
            if std::mem::replace(listed, true) {
                return Err(format!("{s:?}: CPU {} is listed twice", lo + cpu));
            }
        }
    }
    Ok(CpuList(
        seen.iter()
            .enumerate()
            .filter_map(|(cpu, &on)| on.then_some(cpu))
            .collect(),
    ))
}

fn cpu_number(list: &str, n: &str) -> Result<usize, String> {
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{list:?} is not a CPU list ({n:?} is not a CPU number; example: 0,2-3)"
        ));
    }
    // All digits: only overflow can fail, and anything that large is beyond the CPU set.
    Ok(n.parse().unwrap_or(usize::MAX))
}

/// Formats CPUs compactly (`0-3,6`), the inverse of [`parse_cpu_list`]; any order, repeats
/// ignored.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(if sorted[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", sorted[i])
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(s: &str) -> Result<Vec<usize>, String> {
        parse_cpu_list(s).map(CpuList::into_vec)
    }

    #[test]
    fn lists_are_ascending_sets() {
        assert_eq!(cpus("0"), Ok(vec![0]));
        assert_eq!(cpus("0-3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(cpus("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(cpus("4-5,0,2"), Ok(vec![0, 2, 4, 5]));
        assert_eq!(cpus(" 3, 1 "), Ok(vec![1, 3]));
        assert_eq!(cpus("2 - 3"), Ok(vec![2, 3]));
        assert_eq!(cpus("1023"), Ok(vec![CPU_SETSIZE - 1]));
        assert_eq!("0-1".parse::<CpuList>().unwrap().as_slice(), &[0, 1]);
    }

    /// A repeated CPU used to be silently dropped by the client and refused by the server: it
    /// is refused everywhere, however it is repeated.
    #[test]
    fn a_repeated_cpu_is_an_error() {
        for (list, cpu) in [("1,1", 1), ("1,1,1", 1), ("0-3,2", 2), ("0-2,1-4", 1)] {
            let err = cpus(list).unwrap_err();
            assert!(err.contains(&format!("CPU {cpu} is listed twice")), "{err}");
        }
    }

    #[test]
    fn refusals_are_one_line_and_quote_the_input() {
        crate::assert_refused(
            parse_cpu_list,
            &[
                "",
                ",",
                "0,,1",
                "a",
                "1-",
                "-1",
                "3-1",
                "+1",
                "1024",
                "0-1024",
                "0-99999999999999999999999",
                "١",
            ],
        );
        assert!(cpus("3-1").unwrap_err().contains("backwards"));
        assert!(cpus("0-1024").unwrap_err().contains("CPU 1024 is beyond"));
    }

    #[test]
    fn format_is_the_inverse() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_cpu_list(&[5, 1, 5]), "1,5");
        assert_eq!(format_cpu_list(&[]), "");
        let list = parse_cpu_list("9,0-3,6").unwrap();
        assert_eq!(list.to_string(), "0-3,6,9");
        assert_eq!(parse_cpu_list(&list.to_string()), Ok(list));
    }
}
