//! The value parsers that `uring-echo` and `echo-bench` share, so that a word on either command
//! line has one meaning.
//!
//! Before this crate each binary had its own: `1G` and `64kb` were sizes to the server and
//! errors to the client, `0,0` was an error to one and `0` to the other, `2` was two seconds to
//! one and an error to the other. Now both call these functions; each binary keeps only its own
//! range checks (echo-bench's 365-day cap on durations, the server's 64 MiB buffer limit, ...).
//!
//! | kind | accepted | meaning | refused (each with a one-line message naming the input) |
//! |---|---|---|---|
//! | size ([`parse_size`]) | `4096`, `64k`, `16KiB`, `1 MB`, `2g` | bytes; every unit is **binary** and case-insensitive: `B`; `k`/`Ki`/`KB`/`KiB` = 1024; `M`/`Mi`/`MB`/`MiB` = 1024²; `G`/`Gi`/`GB`/`GiB` = 1024³ | fractions (`1.5k`), signs, other units, overflow of `usize` |
//! | duration ([`parse_duration`]) | `2`, `0.5`, `500ms`, `1m30s`, `2 min` | a bare decimal number is **seconds** (`2` = 2 s, `0.5` = 500 ms, digits below 1 ns dropped); anything else is a [humantime] duration | negative values, `nan`/`inf`, exponents (`1e3`), unknown units, overflow |
//! | CPU list ([`parse_cpu_list`]) | `0`, `0-3`, `0,2-3`, ` 4, 1` | a **set** of CPUs, kept in ascending order (`3,1` is `1,3`): "the i-th CPU of the list" means the i-th smallest | a CPU listed twice (also through overlapping ranges), backwards ranges (`3-1`), empty entries, CPUs at or beyond `CPU_SETSIZE` (1024) |
//! | rate ([`parse_rate`]) | `1000`, `2.5`, `10k`, `1.5M`, `1e4` | events per second; the suffixes are **decimal** (SI): `k`/`K` = 1000, `M` = 1,000,000 | zero, negative values, `nan`, infinity, other suffixes (`m` would read as milli) |
//!
//! Sizes and rates deliberately differ on `k`: a size counts bytes in memory, where 1024 is
//! the unit everybody allocates in (`16KiB` buffers); a rate counts events per second, where
//! `10k` means ten thousand as in every load generator. The word is different (a size flag vs a
//! rate flag), so each word still has one meaning.
//!
//! Every parser returns `Result<_, String>` so that it plugs into clap's `value_parser`
//! directly; the message is one line and quotes the input.

#![warn(missing_docs)]

mod cpu_list;
mod duration;
mod rate;
mod size;

pub use cpu_list::{format_cpu_list, parse_cpu_list, CpuList, CPU_SETSIZE};
pub use duration::parse_duration;
pub use rate::parse_rate;
pub use size::parse_size;

/// Asserts that `parse` refuses every input with a one-line message that quotes it.
#[cfg(test)]
fn assert_refused<T: std::fmt::Debug>(parse: fn(&str) -> Result<T, String>, inputs: &[&str]) {
    for bad in inputs {
        let err = parse(bad).unwrap_err();
        assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
