//! The human summary on stdout: the run header, one block per target, the comparison table,
//! and the loud warning lines. Everything printed here comes from the same [`TargetRun`] and
//! [`ComparisonJson`] the JSON report is built from, so the two cannot disagree.

use std::io::{self, Write};

use hdrhistogram::Histogram;

use super::{latency_json, per_msg, rate_check, TargetRun, MIB};
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
    Some(format!(
        "WARNING: {}: achieved rate {:.1} msgs/s is only {:.1}% of the target {target:.0} msgs/s \
         (client or server could not keep up; latencies include the backlog)",
        t.name,
        t.msgs_per_s(),
        ratio * 100.0
    ))
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
