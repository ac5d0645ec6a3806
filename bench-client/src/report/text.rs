//! The human summary on stdout: the run header, one block per target (with the client's own
//! load, and the rate intervals that missed their rate), the comparison table, and the loud
//! warning lines (rate shortfall, client bound). Everything printed here comes from the same [`TargetRun`] and
//! [`ComparisonJson`] the JSON report is built from, so the two cannot disagree.

use std::io::{self, Write};

use hdrhistogram::Histogram;

use super::json::{latency_json, per_msg, rate_check};
use super::{TargetRun, MIB};
use crate::compare::{self, CompareRow, ComparisonJson, RatioJson, Summary};
use crate::config::{BenchConfig, Mode};

fn fmt_us(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let l = latency_json(h, "");
    format!(
        "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
        fmt_us(l.min_us),
        fmt_us(l.p50_us),
        fmt_us(l.p90_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.p9999_us),
        fmt_us(l.max_us)
    )
}

/// The run description printed before the per-target summaries.
pub fn header_line(cfg: &BenchConfig) -> String {
    let l = &cfg.load;
    let mode = match l.mode {
        Mode::Closed => format!("closed loop (pipeline {})", l.pipeline),
        Mode::Open { rate, arrival } => format!(
            "open loop ({rate:.0} msgs/s, {} arrivals, pipeline {})",
            match arrival {
                crate::config::Arrival::Constant => "constant",
                crate::config::Arrival::Poisson => "poisson",
            },
            l.pipeline
        ),
    };
    format!(
        "echo-bench {}: {mode}, {} connections, {} B messages, {} client thread(s), {} measured + {} warmup{}",
        env!("CARGO_PKG_VERSION"),
        l.connections,
        l.size,
        l.threads,
        humantime::format_duration(l.duration),
        humantime::format_duration(l.warmup),
        if cfg.rounds > 1 {
            format!(", {} rounds", cfg.rounds)
        } else {
            String::new()
        },
    ) + if l.busy_poll { ", busy-poll" } else { "" }
}

/// The loud open-loop warning line, if the rate was missed.
pub fn shortfall_warning(cfg: &BenchConfig, t: &TargetRun) -> Option<String> {
    let (Some(target), Some(ratio), true) = rate_check(cfg, t) else {
        return None;
    };
    let who = if t.client_bound_rounds().is_empty() {
        "the server did not keep up, the client was not the bottleneck"
    } else {
        "the client was the bottleneck"
    };
    Some(format!(
        "WARNING: {}: achieved rate {:.1} msgs/s is only {:.1}% of the target {target:.0} msgs/s \
         ({who}; latencies include the backlog)",
        t.name,
        t.msgs_per_s(),
        ratio * 100.0
    ))
}

/// The loud line of a target whose client was the bottleneck in some round.
pub fn client_bound_warning(t: &TargetRun) -> Option<String> {
    let bound = t.client_bound_rounds();
    let first = bound.first()?;
    let rounds = if t.rounds.len() > 1 {
        let list: Vec<String> = bound.iter().map(|r| r.round.to_string()).collect();
        format!(" in round(s) {}", list.join(", "))
    } else {
        String::new()
    };
    Some(format!(
        "WARNING: {}: CLIENT-BOUND{rounds}: {}; these figures measure echo-bench as much as the \
         server (give the client more CPUs or threads, or less load)",
        t.name,
        first.client.reasons.join("; ")
    ))
}

/// Most rate-interval lines printed per target (all of them are in the JSON).
const MAX_RATE_INTERVAL_LINES: usize = 8;

fn print_client<W: Write>(w: &mut W, t: &TargetRun) -> io::Result<()> {
    let busiest = t
        .rounds
        .iter()
        .filter_map(|r| {
            let b = r.client.max_busy()?;
            let th = r.client.threads.iter().find(|x| x.busy == b)?;
            Some(th.clone())
        })
        .max_by(|a, b| a.busy.total_cmp(&b.busy));
    let mut parts = Vec::new();
    if let Some(th) = busiest {
        let wait = th
            .run_queue_wait
            .map(|x| format!(", waiting for a CPU {:.0}%", x * 100.0))
            .unwrap_or_default();
        parts.push(format!(
            "busiest thread busy {:.0}% of the window (on a CPU {:.0}%{wait})",
            th.busy * 100.0,
            th.cpu * 100.0
        ));
    }
    if let Some(h) = t.lateness.as_ref().filter(|h| !h.is_empty()) {
        let limit = t
            .rounds
            .iter()
            .filter_map(|r| r.client.lateness_limit_us)
            .reduce(f64::min)
            .map(|l| format!(" (limit {})", fmt_us(l)))
            .unwrap_or_default();
        parts.push(format!(
            "send lateness µs p50 {} p99 {} max {}{limit}",
            fmt_us(super::us(h.value_at_quantile(0.5))),
            fmt_us(super::us(h.value_at_quantile(0.99))),
            fmt_us(super::us(h.max())),
        ));
    }
    let wake: Vec<f64> = t
        .rounds
        .iter()
        .filter_map(|r| r.client.wake_lateness.as_ref().map(|l| l.p99_us))
        .collect();
    if let Some(worst) = wake.iter().copied().reduce(f64::max) {
        parts.push(format!("reaction µs p99 {}", fmt_us(worst)));
    }
    if !parts.is_empty() {
        writeln!(w, "  client        {}", parts.join("; "))?;
    }
    let off: Vec<(usize, &crate::bottleneck::RateInterval)> = t
        .rounds
        .iter()
        .flat_map(|r| r.rate_intervals_off.iter().map(move |x| (r.round, x)))
        .collect();
    if !off.is_empty() {
        writeln!(
            w,
            "  rate          {} interval(s) missed the intended rate by more than 1%:",
            off.len()
        )?;
        for (round, x) in off.iter().take(MAX_RATE_INTERVAL_LINES) {
            let which = if t.rounds.len() > 1 {
                format!("round {round} ")
            } else {
                String::new()
            };
            writeln!(
                w,
                "    {which}[{:.3} s, {:.3} s): intended {:.1}/s, achieved {:.1}/s ({:.1}%)",
                x.start_s,
                x.start_s + x.length_s,
                x.intended_per_s,
                x.achieved_per_s,
                100.0 * x.achieved_per_s / x.intended_per_s.max(f64::MIN_POSITIVE)
            )?;
        }
        if off.len() > MAX_RATE_INTERVAL_LINES {
            writeln!(
                w,
                "    ... and {} more (all in the JSON report)",
                off.len() - MAX_RATE_INTERVAL_LINES
            )?;
        }
    }
    Ok(())
}

/// Print the human summary of one target.
pub fn print_target<W: Write>(w: &mut W, cfg: &BenchConfig, t: &TargetRun) -> io::Result<()> {
    match &t.spawn_command {
        Some(cmd) => writeln!(w, "== {} ({}, spawned: {cmd})", t.name, t.address)?,
        None if t.name == t.address.to_string() => writeln!(w, "== {}", t.name)?,
        None => writeln!(w, "== {} ({})", t.name, t.address)?,
    }
    let tot = &t.totals;
    let rounds = t.rounds.len();
    writeln!(
        w,
        "  messages      {} in {:.3} s{}; {} aborted at deadline{}",
        tot.messages,
        tot.measured_ns as f64 / 1e9,
        if rounds > 1 {
            format!(" ({rounds} rounds)")
        } else {
            String::new()
        },
        tot.aborted,
        if matches!(cfg.load.mode, Mode::Open { .. }) {
            format!(", {} due but unsent", tot.unsent)
        } else {
            String::new()
        }
    )?;
    writeln!(
        w,
        "  throughput    {:.1} msgs/s, {:.2} MiB/s",
        t.msgs_per_s(),
        t.msgs_per_s() * cfg.load.size as f64 / MIB
    )?;
    if let (Some(target), Some(ratio), _) = rate_check(cfg, t) {
        writeln!(
            w,
            "  rate          target {target:.0} msgs/s, achieved {:.1}%",
            ratio * 100.0
        )?;
    }
    let kinds = tot.errors.nonzero();
    if kinds.is_empty() {
        writeln!(w, "  errors        0")?;
    } else {
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(
            w,
            "  errors        {} ({})",
            tot.errors.total,
            list.join(", ")
        )?;
        for s in &t.error_samples {
            writeln!(w, "    {s}")?;
        }
    }
    match &t.service {
        Some(svc) => {
            writeln!(
                w,
                "  latency µs    {}   (from intended send time)",
                latency_line(&t.latency)
            )?;
            writeln!(
                w,
                "  service µs    {}   (from actual send time)",
                latency_line(svc)
            )?;
        }
        None => writeln!(w, "  latency µs    {}", latency_line(&t.latency))?,
    }
    let client = per_msg(Some(tot.client_cpu_ns), tot.messages);
    let server = per_msg(tot.server_cpu_ns, tot.messages);
    let mut cpu = Vec::new();
    if let Some(s) = server {
        cpu.push(format!("server {:.3} µs/msg", s / 1000.0));
    }
    if let Some(c) = client {
        cpu.push(format!("client {:.3} µs/msg", c / 1000.0));
    }
    if !cpu.is_empty() {
        writeln!(w, "  cpu           {}", cpu.join(", "))?;
    }
    print_client(w, t)?;
    if let Some(warning) = client_bound_warning(t) {
        writeln!(w, "  {warning}")?;
    }
    if let Some(warning) = shortfall_warning(cfg, t) {
        writeln!(w, "  {warning}")?;
    }
    Ok(())
}

fn spread_text(s: &Summary, prec: usize) -> String {
    format!("[{:.prec$}, {:.prec$}]", s.lo, s.hi)
}

/// Print the comparison table: one block for msgs/s, one for server CPU per message.
pub fn print_comparison<W: Write>(w: &mut W, c: &ComparisonJson) -> io::Result<()> {
    let n = c.rounds;
    let method = if n >= compare::MIN_ROUNDS_FOR_CI {
        let (k, cov) = compare::median_ci_rank(n);
        format!(
            "spread = order-statistic CI of the median [x({k}), x({})], coverage {:.1}%",
            n + 1 - k,
            cov * 100.0
        )
    } else {
        "spread = [min, max] over rounds".into()
    };
    writeln!(
        w,
        "== comparison over {n} interleaved round(s); ratios vs {} are medians of per-round ratios; {method}",
        c.baseline
    )?;
    let name_w = c
        .rows
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(6)
        .max(14);
    type Pick<'a> = &'a dyn Fn(&CompareRow) -> Option<(&Summary, Option<&RatioJson>)>;
    let block =
        |w: &mut W, title: &str, scale: f64, prec: usize, pick: Pick<'_>| -> io::Result<()> {
            if !c.rows.iter().any(|r| pick(r).is_some()) {
                return Ok(());
            }
            writeln!(
                w,
                "  {title:<name_w$}  {:>12}  {:>27}  {:>7}  {:>16}  significance",
                "median", "spread", "ratio", "ratio spread"
            )?;
            for (i, r) in c.rows.iter().enumerate() {
                let Some((s, ratio)) = pick(r) else {
                    writeln!(w, "  {:<name_w$}  {:>12}", r.name, "-")?;
                    continue;
                };
                let spread = format!("[{:.prec$}, {:.prec$}]", s.lo / scale, s.hi / scale);
                let (ratio, rspread, sig) = match ratio {
                    Some(x) => (
                        format!("{:.3}", x.summary.median),
                        spread_text(&x.summary, 3),
                        x.significance.label(),
                    ),
                    None if i == 0 => ("1.000".into(), "baseline".into(), ""),
                    None => ("-".into(), String::new(), ""),
                };
                let line = format!(
                    "  {:<name_w$}  {:>12.prec$}  {spread:>27}  {ratio:>7}  {rspread:>16}  {sig}",
                    r.name,
                    s.median / scale,
                );
                writeln!(w, "{}", line.trim_end())?;
            }
            Ok(())
        };
    block(w, "msgs/s", 1.0, 1, &|r| {
        Some((&r.msgs_per_s, r.msgs_per_s_ratio.as_ref()))
    })?;
    block(w, "server µs/msg", 1000.0, 3, &|r| {
        r.server_cpu_ns_per_msg
            .as_ref()
            .map(|s| (s, r.server_cpu_ratio.as_ref()))
    })?;
    Ok(())
}
