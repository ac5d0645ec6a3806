//! Turning measurements into `results.md`, the results README and SVG plots.
//!
//! Every figure in the table is a median over rounds with its spread; every ratio is the median
//! of per-round ratios (target and baseline measured back to back in the same round), with the
//! spread of those ratios and echo-bench's significance label. The targets of issue 6 are
//! checked at the end, each with the numbers it was decided on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use echo_bench::compare::{per_round_ratios, significance, summarize, Significance, Summary};
use echo_bench::report::rate_reached;
use plotters::prelude::*;

use crate::measure::{CellResult, Results, TargetResult, BATCHED, BATCH_WAIT};
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

/// The target reached the open-loop rate in this round (echo-bench's own criterion).
fn reached(t: &TargetResult, round: u64, rate: f64) -> bool {
    t.rounds
        .get(&round)
        .is_some_and(|r| rate_reached(r.msgs_per_s, rate))
}

fn per_round(
    t: &TargetResult,
    base: &TargetResult,
    f: impl Fn(&crate::measure::Round) -> Option<f64>,
) -> Summary {
    let rounds: Vec<u64> = base.rounds.keys().copied().collect();
    let vals: Vec<Option<f64>> = rounds
        .iter()
        .map(|r| t.rounds.get(r).and_then(&f))
        .collect();
    let bases: Vec<Option<f64>> = rounds
        .iter()
        .map(|r| base.rounds.get(r).and_then(&f))
        .collect();
    summarize(&per_round_ratios(&vals, &bases))
}

fn over_rounds(t: &TargetResult, f: impl Fn(&crate::measure::Round) -> Option<f64>) -> Summary {
    let v: Vec<f64> = t.rounds.values().filter_map(f).collect();
    summarize(&v)
}

fn fmt_sum(s: &Summary, scale: f64, digits: usize) -> String {
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

fn fmt_ratio(s: &Summary) -> String {
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

fn cell_table(md: &mut String, c: &CellResult) {
    let mode = match c.rate_fraction {
        None => "closed loop".to_string(),
        Some(f) => format!(
            "open loop at {:.0}% of epoll saturation ({:.0} msgs/s)",
            f * 100.0,
            c.rate.unwrap_or(0.0)
        ),
    };
    let _ = writeln!(
        md,
        "\n### {} connections × {} B, {} server thread{} — {mode}\n",
        c.cell.connections,
        c.cell.size_bytes,
        c.cell.threads,
        if c.cell.threads == 1 { "" } else { "s" }
    );
    let epoll = c.target("epoll");
    let floor = c.target("floor");
    if c.rate.is_none() {
        let _ = writeln!(
            md,
            "| server | msgs/s | msgs/s ÷ epoll | server CPU µs/msg | CPU ÷ epoll | CPU ÷ floor | p99 µs |\n|---|---|---|---|---|---|---|"
        );
        for t in &c.targets {
            let rate = over_rounds(t, |r| Some(r.msgs_per_s));
            let cpu = over_rounds(t, |r| r.server_cpu_ns);
            let vs = |b: Option<&TargetResult>,
                      f: &dyn Fn(&crate::measure::Round) -> Option<f64>| {
                b.filter(|b| b.name != t.name)
                    .map(|b| fmt_ratio(&per_round(t, b, f)))
                    .unwrap_or_else(|| "—".into())
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                t.name,
                fmt_sum(&rate, 1.0, 0),
                vs(epoll, &|r| Some(r.msgs_per_s)),
                fmt_sum(&cpu, 1e-3, 2),
                vs(epoll, &|r| r.server_cpu_ns),
                vs(floor, &|r| r.server_cpu_ns),
                fmt_sum(&over_rounds(t, |r| Some(r.p99_us)), 1.0, 0),
            );
        }
    } else {
        let _ = writeln!(
            md,
            "| server | p50 µs | p99 µs (corrected) | p99 µs, median of rounds | p99.9 µs | p99 service time µs | rounds at the rate | rate reached overall |\n|---|---|---|---|---|---|---|---|"
        );
        let rate = c.rate.unwrap_or(0.0);
        for t in &c.targets {
            let at_rate = t.rounds.keys().filter(|k| reached(t, **k, rate)).count();
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {} | {:.0} | {} | {at_rate} of {} | {} |",
                t.name,
                t.p50_us,
                t.p99_us,
                fmt_sum(&over_rounds(t, |r| Some(r.p99_us)), 1.0, 0),
                t.p999_us,
                t.service_p99_us
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "n/a".into()),
                t.rounds.len(),
                if t.rate_shortfall {
                    "**NO (shortfall)**"
                } else {
                    "yes"
                }
            );
        }
    }
    let _ = writeln!(
        md,
        "\nRaw report: `raw/{}`, latency plot: `raw/{}`.",
        file_name(&c.json),
        file_name(&c.plot)
    );
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct Check {
    what: String,
    met: Option<bool>,
    evidence: String,
}

fn checks(r: &Results) -> Vec<Check> {
    let mut v = Vec::new();
    let find = |conns: usize, size: usize| {
        r.closed.iter().find(|c| {
            c.cell.connections == conns && c.cell.size_bytes == size && c.cell.threads == 1
        })
    };
    // The targets are for the fastest io_uring runtime; tokio-uring is reported in the tables.
    let fast = "uring-multishot";
    for (conns, size, vs_epoll, vs_floor) in [
        (50, 128, Some(0.95), 1.0),
        (500, 128, Some(0.95), 1.0),
        (50, 4096, None, 1.0),
        (500, 4096, None, 1.0),
    ] {
        let Some(c) = find(conns, size) else { continue };
        let (Some(t), Some(e), Some(fl)) = (c.target(fast), c.target("epoll"), c.target("floor"))
        else {
            continue;
        };
        let ce = per_round(t, e, |x| x.server_cpu_ns);
        let cf = per_round(t, fl, |x| x.server_cpu_ns);
        let re = per_round(t, e, |x| Some(x.msgs_per_s));
        let rf = per_round(t, fl, |x| Some(x.msgs_per_s));
        let mut ok = cf.median <= vs_floor;
        let mut what = format!("{fast} {conns}×{size} B: CPU/msg ≤ {vs_floor:.2}× floor");
        if let Some(lim) = vs_epoll {
            ok &= ce.median <= lim;
            what = format!("{fast} {conns}×{size} B: CPU/msg ≤ {lim:.2}× epoll and ≤ {vs_floor:.2}× floor; msgs/s not below either");
            ok &= re.hi >= 1.0 && rf.hi >= 1.0;
        }
        v.push(Check {
            what,
            met: Some(ok),
            evidence: format!(
                "CPU ÷ epoll {}, CPU ÷ floor {}, msgs/s ÷ epoll {}, msgs/s ÷ floor {}",
                fmt_ratio(&ce),
                fmt_ratio(&cf),
                fmt_ratio(&re),
                fmt_ratio(&rf)
            ),
        });
    }
    // Completion batching: the same engine, waiting for several completions per wake-up.
    for conns in [50, 500] {
        let Some(c) = find(conns, 4096) else { continue };
        let (Some(t), Some(fl)) = (c.target(BATCHED), c.target("floor")) else {
            continue;
        };
        let cf = per_round(t, fl, |x| x.server_cpu_ns);
        v.push(Check {
            what: format!(
                "{fast} --batch-wait {BATCH_WAIT}, {conns}×4096 B: CPU/msg ≤ 0.90× floor"
            ),
            met: Some(cf.median <= 0.90),
            evidence: format!(
                "CPU ÷ floor {} (latency price: see \"Completion batching\")",
                fmt_ratio(&cf)
            ),
        });
    }
    for s in &r.syscalls {
        if s.name == fast {
            let per = s.io_uring_enter as f64 / s.messages.max(1) as f64;
            v.push(Check {
                what: "uring-multishot: io_uring_enter per message ≤ 0.2 at 50×128 B".into(),
                met: Some(per <= 0.2),
                evidence: format!(
                    "{per:.3} ({} calls / {} messages)",
                    s.io_uring_enter, s.messages
                ),
            });
        }
    }
    // Open loop is judged round by round, like everything else: a round in which either server
    // fell short of the rate measured a backlog (of the client, or of a disturbed machine), not
    // the server's latency, so only rounds where both reached the rate are compared.
    for c in r
        .open
        .iter()
        .filter(|c| c.rate_fraction.is_some_and(|f| f > 0.85))
    {
        let (Some(e), Some(t), Some(rate)) = (c.target("epoll"), c.target(fast), c.rate) else {
            continue;
        };
        let both: Vec<u64> = e
            .rounds
            .keys()
            .copied()
            .filter(|k| reached(e, *k, rate) && reached(t, *k, rate))
            .collect();
        let ratios: Vec<f64> = both
            .iter()
            .filter_map(|k| Some(t.rounds.get(k)?.p99_us / e.rounds.get(k)?.p99_us))
            .filter(|x| x.is_finite())
            .collect();
        let ratio = summarize(&ratios);
        let enough = ratios.len() >= 3;
        v.push(Check {
            what: format!(
                "{fast} open loop at 90% of epoll saturation, {}×{} B: p99 ≤ epoll's",
                c.cell.connections, c.cell.size_bytes
            ),
            met: enough.then_some(ratio.median <= 1.0),
            evidence: format!(
                "p99 ÷ epoll's, per round, over the {} of {} rounds where both reached the rate: {}{}; \
                 whole-run p99 {:.0} µs vs {:.0} µs",
                ratios.len(),
                e.rounds.len(),
                fmt_ratio(&ratio),
                if enough {
                    ""
                } else {
                    " (too few rounds at the rate to decide)"
                },
                t.p99_us,
                e.p99_us
            ),
        });
    }
    let buffer = 16 * 1024;
    for rss in &r.rss {
        let per =
            (rss.idle_kib.saturating_sub(rss.base_kib) * 1024) as f64 / rss.connections as f64;
        if rss.name != "floor" {
            v.push(Check {
                what: format!(
                    "{}: idle RSS per connection ≤ buffer (16 KiB) + 4 KiB at {} connections",
                    rss.name, rss.connections
                ),
                met: Some(per <= (buffer + 4096) as f64),
                evidence: format!(
                    "{per:.0} B/connection ({} → {} KiB)",
                    rss.base_kib, rss.idle_kib
                ),
            });
        }
    }
    if !r.client.is_empty() {
        let cpu: Vec<f64> = r
            .client
            .iter()
            .map(|c| c.bench_cpu_ns / c.ref_cpu_ns)
            .collect();
        let rate: Vec<f64> = r.client.iter().map(|c| c.bench_rate / c.ref_rate).collect();
        let (cpu, rate) = (summarize(&cpu), summarize(&rate));
        v.push(Check {
            what: "echo-bench CPU per message ≤ 0.8× the reference thread-per-connection client"
                .into(),
            met: Some(cpu.median <= 0.8),
            evidence: format!("ratio {}", fmt_ratio(&cpu)),
        });
        v.push(Check {
            what: "echo-bench drives ≥ 1.2× the reference client's message rate".into(),
            met: Some(rate.median >= 1.2),
            evidence: format!("ratio {}", fmt_ratio(&rate)),
        });
    }
    v
}

fn throughput_plots(r: &Results, out: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    let mut groups: Vec<(usize, usize)> = r
        .closed
        .iter()
        .map(|c| (c.cell.size_bytes, c.cell.threads))
        .collect();
    groups.sort();
    groups.dedup();
    for (size, threads) in groups {
        let cells: Vec<&CellResult> = r
            .closed
            .iter()
            .filter(|c| c.cell.size_bytes == size && c.cell.threads == threads)
            .collect();
        if cells.len() < 2 {
            continue;
        }
        let name = format!("throughput-s{size}-t{threads}.svg");
        let path = out.join(&name);
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for c in &cells {
            for t in &c.targets {
                let med = over_rounds(t, |x| Some(x.msgs_per_s)).median;
                let pt = ((c.cell.connections as f64).log10(), med);
                match series.iter_mut().find(|s| s.0 == t.name) {
                    Some(s) => s.1.push(pt),
                    None => series.push((t.name.clone(), vec![pt])),
                }
            }
        }
        let ymax = series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .filter(|y| y.is_finite())
            .fold(0.0, f64::max)
            * 1.15;
        let xmax = cells
            .iter()
            .map(|c| (c.cell.connections as f64).log10())
            .fold(0.0, f64::max)
            + 0.2;
        let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Closed-loop throughput, {size} B messages, {threads} server thread(s)"),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.2..xmax, 0.0..ymax.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("connections (log scale)")
            .y_desc("messages/s (median over rounds)")
            .x_label_formatter(&|x| format!("{:.0}", 10f64.powf(*x)))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        root.present()?;
        files.push(name);
    }
    Ok(files)
}

/// What `--batch-wait` gains (CPU) and costs (latency), against the same engine without it, in
/// every cell that ran both.
fn batching_table(md: &mut String, r: &Results) {
    let rows: Vec<&CellResult> = r
        .closed
        .iter()
        .chain(&r.open)
        .filter(|c| c.target(BATCHED).is_some() && c.target("uring-multishot").is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Completion batching (`uring-multishot --batch-wait {BATCH_WAIT}`)\n\n\
         The same engine waiting for several completions per wake-up (`N,T`: N completions, \
         at most T), against itself without the knob, in the same rounds.\n\n\
         | cell | load | CPU ÷ uring-multishot | CPU ÷ floor | msgs/s ÷ uring-multishot | p50 µs (without → with) | p99 µs (without → with) |\n\
         |---|---|---|---|---|---|---|"
    );
    for c in rows {
        let (Some(b), Some(m)) = (c.target(BATCHED), c.target("uring-multishot")) else {
            continue;
        };
        let load = match c.rate_fraction {
            None => "closed loop".to_string(),
            Some(f) => format!("open loop {:.0}%", f * 100.0),
        };
        let closed = c.rate.is_none();
        let ratio = |base: Option<&TargetResult>,
                     f: &dyn Fn(&crate::measure::Round) -> Option<f64>| {
            base.filter(|_| closed)
                .map(|base| fmt_ratio(&per_round(b, base, f)))
                .unwrap_or_else(|| "—".into())
        };
        let _ = writeln!(
            md,
            "| {}×{} B | {load} | {} | {} | {} | {:.0} → {:.0} | {:.0} → {:.0} |",
            c.cell.connections,
            c.cell.size_bytes,
            ratio(Some(m), &|x| x.server_cpu_ns),
            ratio(c.target("floor"), &|x| x.server_cpu_ns),
            ratio(Some(m), &|x| Some(x.msgs_per_s)),
            m.p50_us,
            b.p50_us,
            m.p99_us,
            b.p99_us,
        );
    }
}

/// Writes results.md, the throughput plots and a README with the exact commands and machine.
pub fn write(plan: &Plan, r: &Results, out: &Path) -> anyhow::Result<()> {
    let kernel = cmd_line("uname", &["-srm"])?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let commit = cmd_line("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let date = cmd_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])?;
    let plots = throughput_plots(r, out)?;

    let mut md = String::new();
    let _ = writeln!(md, "# echo-suite results ({} mode)\n", plan.mode_name);
    let _ = writeln!(
        md,
        "Machine: {cpu}, {nproc} CPUs, {kernel}. Commit {commit}, {date}. Servers pinned to CPU {}, \
         client to CPU {}. {} interleaved rounds of {} ms (+{} ms warmup) per cell, order shuffled \
         per round.\n",
        plan.server_cpu, plan.client_cpu, plan.rounds, plan.duration_ms, plan.warmup_ms
    );
    let _ = writeln!(
        md,
        "Figures are medians over rounds with their spread in brackets ([min–max] below 5 rounds, \
         else a ≥95% order-statistic interval of the median). Ratios are medians of per-round \
         ratios; `~` marks a ratio whose spread contains 1.0 (inside the noise), `?` too few rounds \
         to tell. CPU is the server's utime+stime over the measured window ÷ messages.\n"
    );
    let _ = writeln!(
        md,
        "## Targets\n\n| target | met | evidence |\n|---|---|---|"
    );
    for c in checks(r) {
        let met = match c.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(md, "| {} | {met} | {} |", c.what, c.evidence);
    }
    let _ = writeln!(md, "\n## Closed loop");
    for c in &r.closed {
        cell_table(&mut md, c);
    }
    if !r.open.is_empty() {
        let _ = writeln!(md, "\n## Open loop (latency from the intended send time)");
        for c in &r.open {
            cell_table(&mut md, c);
        }
    }
    batching_table(&mut md, r);
    let _ = writeln!(
        md,
        "\n## Syscalls per message (perf stat on the server, 50 × 128 B, one run)\n"
    );
    if let Some(why) = &r.syscalls_unavailable {
        let _ = writeln!(md, "Not measured: {why}.");
    } else {
        let _ = writeln!(md, "| server | messages | syscalls/msg | io_uring_enter/msg | epoll_wait/msg |\n|---|---|---|---|---|");
        for s in &r.syscalls {
            let m = s.messages.max(1) as f64;
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} | {:.3} | {:.3} |",
                s.name,
                s.messages,
                s.total as f64 / m,
                s.io_uring_enter as f64 / m,
                s.epoll_wait as f64 / m
            );
        }
    }
    let _ = writeln!(md, "\n## Idle connections: RSS and fds (16 KiB buffers)\n\n| server | connections | RSS before KiB | RSS with idle connections KiB | bytes/connection | fds before → after close |\n|---|---|---|---|---|---|");
    for s in &r.rss {
        let per = (s.idle_kib.saturating_sub(s.base_kib) * 1024) as f64 / s.connections as f64;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {per:.0} | {} → {} |",
            s.name, s.connections, s.base_kib, s.idle_kib, s.fds_before, s.fds_after
        );
    }
    if !r.client.is_empty() {
        let _ = writeln!(md, "\n## The client's own cost (50 × 128 B against the floor server, alternating runs)\n\n| round | echo-bench msgs/s | ref-client msgs/s | echo-bench CPU ns/msg | ref-client CPU ns/msg |\n|---|---|---|---|---|");
        for (i, c) in r.client.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                i + 1,
                c.bench_rate,
                c.ref_rate,
                c.bench_cpu_ns,
                c.ref_cpu_ns
            );
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for p in &plots {
            let _ = writeln!(md, "- `{p}`");
        }
        let _ = writeln!(md, "- `raw/*.svg`: latency by percentile per cell, one line per server (echo-bench --plot)");
    }
    if !r.failures.is_empty() {
        let _ = writeln!(md, "\n## Failures\n");
        for f in &r.failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    std::fs::write(out.join("results.md"), &md)?;

    let mut readme = format!(
        "# How these results were made\n\n- date: {date}\n- machine: {cpu}, {nproc} CPUs\n- kernel: {kernel}\n- commit: {commit}\n- rustc: {}\n\nCommands, in the order they ran:\n\n```sh\n",
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
