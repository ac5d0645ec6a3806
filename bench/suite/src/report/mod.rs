//! Turning measurements into `results.md`, `ablation.md`, the results README and SVG plots.
//!
//! Every figure in a table is a median over rounds with its spread; every ratio is the median
//! of per-round ratios (target and baseline measured back to back in the same round), with the
//! spread of those ratios and echo-bench's significance label. Rounds in which echo-bench judged
//! the client the bottleneck (`client_bound`) are counted in every table; CPU per message stays
//! valid in them, but their messages/s and latency measure the client, so the target checks and
//! the ablation verdicts judge those figures only on the rounds in which neither side was
//! client-bound ([`per_round_clean`]).
//!
//! Layout: [`tables`] (per-cell tables, overviews, side measurements), [`checks`] (the targets),
//! [`ablation`] (the ablation tables and verdicts), [`plots`].

pub mod ablation;
pub mod checks;
pub mod plots;
pub mod tables;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use echo_bench::compare::{per_round_ratios, significance, summarize, Significance, Summary};

use crate::measure::{Results, Round, TargetResult};
use crate::plan::Plan;

/// `bench/results/<date>-<host>-<mode>` under the current directory.
pub fn default_out_dir(mode: &str) -> anyhow::Result<PathBuf> {
    let date = cmd_line("date", &["+%Y-%m-%d"])?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    Ok(PathBuf::from("bench/results").join(format!("{date}-{host}-{mode}")))
}

fn cmd_line(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A per-round figure of a target.
pub type Metric = fn(&Round) -> Option<f64>;

/// Server CPU ns per message.
pub fn cpu(r: &Round) -> Option<f64> {
    r.server_cpu_ns
}
/// Messages per second.
pub fn rate(r: &Round) -> Option<f64> {
    Some(r.msgs_per_s)
}
/// p50 of the round, µs.
pub fn p50(r: &Round) -> Option<f64> {
    Some(r.p50_us)
}
/// p99 of the round, µs.
pub fn p99(r: &Round) -> Option<f64> {
    Some(r.p99_us)
}

/// Per-round `combine(t, base)` of `f` over the rounds of `base` that `keep` admits.
pub fn per_round_with(
    t: &TargetResult,
    base: &TargetResult,
    f: Metric,
    keep: impl Fn(&Round, &Round) -> bool,
    combine: impl Fn(f64, f64) -> Option<f64>,
) -> Summary {
    let v: Vec<f64> = base
        .rounds
        .iter()
        .filter_map(|(k, b)| {
            let x = t.rounds.get(k)?;
            if !keep(x, b) {
                return None;
            }
            combine(f(x)?, f(b)?)
        })
        .collect();
    summarize(&v)
}

/// Median and spread of the per-round ratios `t ÷ base` of `f`, over every round.
pub fn per_round(t: &TargetResult, base: &TargetResult, f: Metric) -> Summary {
    let rounds: Vec<u64> = base.rounds.keys().copied().collect();
    let get = |x: &TargetResult| -> Vec<Option<f64>> {
        rounds.iter().map(|r| x.rounds.get(r).and_then(f)).collect()
    };
    summarize(&per_round_ratios(&get(t), &get(base)))
}

/// Like [`per_round`], over the rounds in which neither `t` nor `base` was client-bound (for
/// messages/s and latency, which measure the client in such rounds).
pub fn per_round_clean(t: &TargetResult, base: &TargetResult, f: Metric) -> Summary {
    per_round_with(
        t,
        base,
        f,
        |a, b| !a.client_bound && !b.client_bound,
        |a, b| (b > 0.0 && a.is_finite()).then(|| a / b),
    )
}

/// Median and spread of `f` over the rounds of `t`.
pub fn over_rounds(t: &TargetResult, f: impl Fn(&Round) -> Option<f64>) -> Summary {
    let v: Vec<f64> = t.rounds.values().filter_map(f).collect();
    summarize(&v)
}

/// Median and spread of per-round ratios of two per-round series keyed by round.
pub fn keyed_ratios<T>(
    t: &BTreeMap<u64, T>,
    base: &BTreeMap<u64, T>,
    f: impl Fn(&T) -> f64,
) -> Summary {
    let v: Vec<f64> = base
        .iter()
        .filter_map(|(k, b)| {
            let (x, y) = (f(t.get(k)?), f(b));
            (y > 0.0 && x.is_finite()).then(|| x / y)
        })
        .collect();
    summarize(&v)
}

/// `median [lo–hi]` scaled, or `n/a`.
pub fn fmt_sum(s: &Summary, scale: f64, digits: usize) -> String {
    if s.n == 0 || !s.median.is_finite() {
        return "n/a".into();
    }
    format!(
        "{:.d$} [{:.d$}–{:.d$}]",
        s.median * scale,
        s.lo * scale,
        s.hi * scale,
        d = digits
    )
}

/// A ratio with its spread and significance mark (`~` inside the noise, `?` too few rounds).
pub fn fmt_ratio(s: &Summary) -> String {
    if s.n == 0 || !s.median.is_finite() {
        return "n/a".into();
    }
    let label = match significance(s) {
        Significance::NotSignificant => " ~",
        Significance::Significant => "",
        Significance::TooFewRounds => " ?",
    };
    format!("{:.3} [{:.3}–{:.3}]{label}", s.median, s.lo, s.hi)
}

/// What `client_bound` means for a cell's figures, for the notes under its tables.
pub const CLIENT_BOUND_NOTE: &str = "the client (echo-bench) was the bottleneck in those rounds: \
    their server CPU per message stays valid, but their messages/s and latency measure the client \
    (the target checks and ablation verdicts judge messages/s and latency only on the rounds in \
    which neither compared server was client-bound)";

/// The machine and run, for the heads of results.md and ablation.md.
struct Machine {
    cpu: String,
    nproc: usize,
    kernel: String,
    commit: String,
    date: String,
}

impl Machine {
    fn here() -> anyhow::Result<Machine> {
        Ok(Machine {
            cpu: std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("model name")
                            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                    })
                })
                .unwrap_or_else(|| "unknown".into()),
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernel: cmd_line("uname", &["-srm"])?,
            commit: cmd_line("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default(),
            date: cmd_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])?,
        })
    }

    fn head(&self, md: &mut String, plan: &Plan) {
        let _ = writeln!(
            md,
            "Machine: {}, {} CPUs, {}. Commit {}, {}. Servers pinned to CPU {}, client to CPU {}. \
             {} interleaved rounds of {} ms (+{} ms warmup) per cell, order shuffled per round.\n",
            self.cpu,
            self.nproc,
            self.kernel,
            self.commit,
            self.date,
            plan.server_cpu,
            plan.client_cpu,
            plan.rounds,
            plan.duration_ms,
            plan.warmup_ms
        );
        let _ = writeln!(
            md,
            "Figures are medians over rounds with their spread in brackets ([min–max] below 5 \
             rounds, else a ≥95% order-statistic interval of the median). Ratios are medians of \
             per-round ratios; `~` marks a ratio whose spread contains 1.0 (inside the noise), `?` \
             too few rounds to tell. CPU is the server's utime+stime over the measured window ÷ \
             messages. \"client-bound\" counts the rounds in which echo-bench judged itself the \
             bottleneck: CPU per message stays valid there, messages/s and latency measure the \
             client.\n"
        );
    }
}

/// Writes results.md, ablation.md (when the plan has an ablation), the throughput plots and a
/// README with the exact commands and machine.
pub fn write(plan: &Plan, r: &Results, out: &Path) -> anyhow::Result<()> {
    let machine = Machine::here()?;
    let plots = plots::throughput_plots(r, out)?;

    let mut md = String::new();
    let _ = writeln!(md, "# echo-suite results ({} mode)\n", plan.mode_name);
    machine.head(&mut md, plan);
    tables::servers_section(&mut md, r);
    if !r.closed.is_empty() || r.syscalls.is_some() {
        checks::write(&mut md, r);
        tables::overview(&mut md, r);
        let _ = writeln!(md, "\n## Closed loop");
        for c in &r.closed {
            tables::cell_table(&mut md, c);
        }
    }
    if !r.open.is_empty() {
        let _ = writeln!(md, "\n## Open loop (latency from the intended send time)");
        for c in &r.open {
            tables::cell_table(&mut md, c);
        }
    }
    tables::batching_table(&mut md, r);
    if let Some(a) = &r.ablation {
        ablation::section(&mut md, a, "##");
        let mut amd = String::new();
        let _ = writeln!(
            amd,
            "# uring-multishot feature ablation ({} mode)\n",
            plan.mode_name
        );
        machine.head(&mut amd, plan);
        ablation::section(&mut amd, a, "");
        std::fs::write(out.join("ablation.md"), &amd)?;
    }
    tables::side_sections(&mut md, r);
    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for p in &plots {
            let _ = writeln!(md, "- `{p}`");
        }
        let _ = writeln!(
            md,
            "- `raw/*.svg`: latency by percentile per cell, one line per server (echo-bench --plot)"
        );
    }
    if !r.failures.is_empty() {
        let _ = writeln!(md, "\n## Failures\n");
        for f in &r.failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    std::fs::write(out.join("results.md"), &md)?;

    let mut readme = format!(
        "# How these results were made\n\n- date: {}\n- machine: {}, {} CPUs\n- kernel: {}\n- commit: {}\n- rustc: {}\n\nCommands, in the order they ran:\n\n```sh\n",
        machine.date,
        machine.cpu,
        machine.nproc,
        machine.kernel,
        machine.commit,
        cmd_line("rustc", &["-V"]).unwrap_or_default()
    );
    for c in &r.commands {
        readme.push_str(c);
        readme.push('\n');
    }
    readme.push_str("```\n");
    std::fs::write(out.join("README.md"), readme)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Synthetic targets for the report's tests.

    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use crate::measure::{CellResult, Round, TargetResult};
    use crate::plan::Cell;

    /// A closed-loop comparison of `targets` in cell `c`.
    pub fn cell(c: Cell, targets: Vec<TargetResult>) -> CellResult {
        CellResult {
            cell: c,
            rate: None,
            rate_fraction: None,
            json: PathBuf::from("raw/x.json"),
            plot: PathBuf::from("raw/x.svg"),
            targets,
        }
    }

    /// A target whose round `i` (1-based) has these CPU ns, msgs/s and p50 µs.
    pub fn target(name: &str, cpu: &[f64], rate: &[f64], p50: &[f64]) -> TargetResult {
        let rounds: BTreeMap<u64, Round> = (0..cpu.len())
            .map(|i| {
                (
                    i as u64 + 1,
                    Round {
                        msgs_per_s: rate[i],
                        server_cpu_ns: Some(cpu[i]),
                        p50_us: p50[i],
                        p99_us: p50[i] * 2.0,
                        client_bound: false,
                    },
                )
            })
            .collect();
        TargetResult {
            name: name.into(),
            rounds,
            p50_us: echo_bench::compare::median(p50),
            ..TargetResult::default()
        }
    }

    /// `n` copies of `x`.
    pub fn same(x: f64, n: usize) -> Vec<f64> {
        vec![x; n]
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;

    #[test]
    fn clean_ratios_skip_client_bound_rounds_and_plain_ratios_do_not() {
        let base = target("b", &same(100.0, 5), &same(1000.0, 5), &same(10.0, 5));
        let mut t = target(
            "t",
            &same(90.0, 5),
            &[500.0, 500.0, 1100.0, 1100.0, 1100.0],
            &same(10.0, 5),
        );
        for k in [1, 2] {
            t.rounds.get_mut(&k).unwrap().client_bound = true;
        }
        let all = per_round(&t, &base, rate);
        assert_eq!(all.n, 5);
        assert!((all.median - 1.1).abs() < 1e-9);
        assert!((all.lo - 0.5).abs() < 1e-9);
        let clean = per_round_clean(&t, &base, rate);
        assert_eq!(clean.n, 3);
        assert!((clean.lo - 1.1).abs() < 1e-9);
        assert_eq!(per_round_clean(&t, &base, cpu).n, 3);
        assert!((per_round(&t, &base, cpu).median - 0.9).abs() < 1e-9);
    }

    #[test]
    fn keyed_ratios_pair_rounds_by_number() {
        let a: BTreeMap<u64, f64> = [(1, 2.0), (2, 4.0), (3, 9.0)].into();
        let b: BTreeMap<u64, f64> = [(1, 1.0), (2, 2.0), (4, 1.0)].into();
        let s = keyed_ratios(&a, &b, |x| *x);
        assert_eq!(s.samples, [2.0, 2.0]);
    }
}
