//! The benchmark command: start spawned servers, run the interleaved rounds, print the
//! summary and comparison (the default comparison ends with its verdict in plain words and
//! the engines that could not start), write the output files.
//!
//! Ordering rules: every round runs each target once, in an order shuffled per round with the
//! seeded RNG; a round that produced verification or connection errors ends the run (the
//! results so far are still printed and written, and the exit code is 1). Spawned servers are
//! owned by [`Spawned`] guards and are stopped on every path out of [`run`].

use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::compare::verdict;
use crate::config::{check_outputs, per_target_path, BenchConfig, Mode, TargetKind};
use crate::load::{self, CpuSource, TrialResult};
use crate::plot::{self, PlotLine};
use crate::record::{add_into, merge_intervals, MergedIntervals};
use crate::report::{self, RoundRecord, SkippedTarget, TargetRun};
use crate::spawn::{Spawned, StartError};
use crate::{host, write_file};

fn progress_bar(cfg: &BenchConfig, label: &str) -> Option<ProgressBar> {
    if cfg.quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(1000);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:40}] {percent:>3}% {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    Some(pb)
}

fn absorb(
    run: &mut TargetRun,
    res: TrialResult,
    round: usize,
    position: usize,
    size: usize,
    keep_intervals: bool,
) {
    add_into(&mut run.latency, &res.latency);
    if let (Some(dst), Some(src)) = (run.service.as_mut(), res.service.as_ref()) {
        add_into(dst, src);
    }
    if let (Some(dst), Some(src)) = (run.lateness.as_mut(), res.lateness.as_ref()) {
        add_into(dst, src);
    }
    if keep_intervals {
        let mut merged = MergedIntervals::new();
        merge_intervals(&mut merged, &res.intervals);
        run.intervals
            .push((res.measure_start, res.measured_ns, merged));
    }
    let t = &mut run.totals;
    t.messages += res.measured;
    t.warmup_messages += res.warmup;
    t.sent += res.sent;
    t.aborted += res.aborted;
    t.unsent += res.unsent;
    t.measured_ns += res.measured_ns;
    t.client_cpu_ns += res.client_cpu_ns;
    if let Some(s) = res.server_cpu_ns {
        t.server_cpu_ns = Some(t.server_cpu_ns.unwrap_or(0) + s);
    }
    t.errors.merge(&res.errors);
    run.ended_early |= res.ended_early;
    for s in res.error_samples {
        if run.error_samples.len() < load::ERROR_SAMPLES {
            run.error_samples.push(s);
        }
    }
    let per_s = if res.measured_ns > 0 {
        res.measured as f64 * 1e9 / res.measured_ns as f64
    } else {
        0.0
    };
    let per_msg = |ns: Option<u64>| match ns {
        Some(ns) if res.measured > 0 => Some(ns as f64 / res.measured as f64),
        _ => None,
    };
    let q = |x: f64| {
        if res.latency.is_empty() {
            0.0
        } else {
            report::us(res.latency.value_at_quantile(x))
        }
    };
    run.rounds.push(RoundRecord {
        round,
        position,
        measure_start: humantime::format_rfc3339_micros(res.measure_start).to_string(),
        duration_s: res.measured_ns as f64 / 1e9,
        messages: res.measured,
        msgs_per_s: per_s,
        mib_per_s: per_s * size as f64 / (1024.0 * 1024.0),
        aborted: res.aborted,
        unsent: res.unsent,
        errors: res.errors.total,
        p50_us: q(0.5),
        p99_us: q(0.99),
        server_cpu_ns_per_msg: per_msg(res.server_cpu_ns),
        client_cpu_ns_per_msg: per_msg(Some(res.client_cpu_ns)),
        client: res.client,
        rate_intervals_off: res.rate_intervals_off,
    });
}

/// Read the host facts (before pinning narrows our affinity), install the Ctrl-C handler and
/// pin the coordinating thread to the client CPUs.
pub fn begin(cfg: &BenchConfig) -> anyhow::Result<host::HostInfo> {
    let host_info = host::host_info();
    crate::interrupt::install();
    if let Some(cpus) = &cfg.load.client_cpus {
        // The coordinating thread mostly sleeps, but keep it off the server's CPUs too.
        host::pin_current_thread(cpus).context("cannot pin echo-bench to --client-cpus")?;
    }
    Ok(host_info)
}

/// A target ready to be loaded.
pub struct Started {
    /// Name.
    pub name: String,
    /// Where to connect.
    pub address: std::net::SocketAddr,
    /// The command, for a spawned server.
    pub spawn_command: Option<String>,
    /// The server process, when echo-bench started it (stopped when dropped).
    pub server: Option<Spawned>,
}

/// Start every `--spawn` server, in target order, each ready (printed `listening on`) before
/// the next starts. A server that fails to start fails the whole run before any load, except
/// in the default comparison: there an engine whose server exits before it is ready (no
/// io_uring, a kernel too old for it) is skipped, with its reason, as long as two engines are
/// left to compare. Returns the started targets and the skipped ones.
pub fn start_targets(cfg: &BenchConfig) -> anyhow::Result<(Vec<Started>, Vec<SkippedTarget>)> {
    let mut started = Vec::new();
    let mut skipped = Vec::new();
    for t in &cfg.targets {
        started.push(match &t.kind {
            TargetKind::Address { addr } => Started {
                name: t.name.clone(),
                address: *addr,
                spawn_command: None,
                server: None,
            },
            TargetKind::Spawn { command, argv } => {
                let s = match Spawned::start_or_why(
                    &t.name,
                    command,
                    argv,
                    cfg.server_cpus.as_deref(),
                    cfg.spawn_timeout,
                ) {
                    Ok(s) => s,
                    Err(e @ StartError::NotReady { .. }) if cfg.default_comparison => {
                        skipped.push(SkippedTarget {
                            name: t.name.clone(),
                            spawn_command: command.clone(),
                            reason: e.reason(),
                        });
                        continue;
                    }
                    Err(e) => return Err(e.into_anyhow()),
                };
                if !cfg.quiet {
                    eprintln!(
                        "started {}: pid {} listening on {}",
                        t.name,
                        s.pid().unwrap_or(0),
                        s.addr
                    );
                }
                Started {
                    name: t.name.clone(),
                    address: s.addr,
                    spawn_command: Some(command.clone()),
                    server: Some(s),
                }
            }
        });
    }
    if !skipped.is_empty() {
        let lines: Vec<String> = skipped.iter().map(SkippedTarget::line).collect();
        if started.len() < 2 {
            let only = match started.first() {
                Some(t) => format!("only {}", t.name),
                None => "none".into(),
            };
            bail!(
                "the default comparison needs two engines, but {only} started: {} (measure one \
                 alone with --spawn)",
                lines.join("; ")
            );
        }
        for line in lines {
            eprintln!("echo-bench: {line}; comparing the others without it");
        }
    }
    Ok((started, skipped))
}

/// Run the benchmark described by `cfg`; returns the exit code (0, or 1 when errors occurred).
pub fn run(cfg: BenchConfig) -> anyhow::Result<u8> {
    check_outputs(&cfg.output_paths(), cfg.outputs.force)?;
    let host_info = begin(&cfg)?;
    let open = matches!(cfg.load.mode, Mode::Open { .. });

    // Start servers first: a server that fails to start fails the run before any load.
    let mut servers: Vec<Option<Spawned>> = Vec::new();
    let mut runs: Vec<TargetRun> = Vec::new();
    let (started, skipped) = start_targets(&cfg)?;
    for t in started {
        let mut run = TargetRun::new(t.name, t.address, t.spawn_command, open);
        run.server_pid = t.server.as_ref().and_then(Spawned::pid);
        runs.push(run);
        servers.push(t.server);
    }

    let n = runs.len();
    let name_w = runs.iter().map(|r| r.name.len()).max().unwrap_or(0).max(12);
    let many_trials = n > 1 || cfg.rounds > 1;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut first_start: Option<SystemTime> = None;
    let mut incomplete = false;
    'rounds: for round in 1..=cfg.rounds {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        for (pos, &i) in order.iter().enumerate() {
            let label = if many_trials {
                format!("{} r{round}/{}", runs[i].name, cfg.rounds)
            } else {
                runs[i].name.clone()
            };
            let pb = progress_bar(&cfg, &label);
            let cpu: Option<&dyn CpuSource> = servers[i].as_ref().map(|s| s as &dyn CpuSource);
            let res = load::run_trial(&cfg.load, runs[i].address, cfg.start_at, cpu, pb.as_ref());
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            if let Some(s) = servers[i].as_mut() {
                // A dead server explains connection errors better than the errors themselves.
                s.check_alive()?;
            }
            let res = res?;
            first_start.get_or_insert(res.measure_start);
            let errors = res.errors.total;
            absorb(
                &mut runs[i],
                res,
                round,
                pos + 1,
                cfg.load.size,
                cfg.load.interval.is_some(),
            );
            if many_trials && !cfg.quiet {
                let r = runs[i].rounds.last().expect("just pushed");
                let cpu = r
                    .server_cpu_ns_per_msg
                    .map(|c| format!("  server {:.3} µs/msg", c / 1000.0))
                    .unwrap_or_default();
                eprintln!(
                    "round {round}/{}  {:<name_w$} {:>12.1} msgs/s  p50 {:.1} µs  p99 {:.1} µs{cpu}{}",
                    cfg.rounds,
                    runs[i].name,
                    r.msgs_per_s,
                    r.p50_us,
                    r.p99_us,
                    if errors > 0 {
                        format!("  {errors} errors")
                    } else {
                        String::new()
                    }
                );
            }
            if errors > 0 {
                incomplete = round < cfg.rounds || pos + 1 < n;
                break 'rounds;
            }
        }
    }

    for (s, r) in servers.iter_mut().zip(runs.iter_mut()) {
        if let Some(s) = s.as_mut() {
            r.server_summary = s.stop();
            r.server_features = s.features();
        }
    }
    drop(servers);
    // From here on nothing polls the interrupt flag: let signals terminate as usual.
    crate::interrupt::restore_default();
    if crate::interrupt::interrupted() {
        anyhow::bail!("interrupted");
    }

    let errors_total: u64 = runs.iter().map(|r| r.totals.errors.total).sum();
    // A run that measured nothing is a failure too (a server that accepts but never echoes).
    let silent: Vec<&str> = runs
        .iter()
        .filter(|r| r.totals.messages == 0 && r.totals.errors.total == 0)
        .map(|r| r.name.as_str())
        .collect();
    let exit_code = u8::from(errors_total > 0 || !silent.is_empty());

    // Text summary.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", report::text::header_line(&cfg))?;
    for r in &runs {
        report::text::print_target(&mut out, &cfg, r)?;
    }
    if let Some(c) = report::comparison(&runs) {
        report::text::print_comparison(&mut out, &c)?;
    }
    if incomplete {
        writeln!(
            out,
            "run stopped early after errors; remaining rounds were not run"
        )?;
    }
    if cfg.default_comparison {
        for skip in &skipped {
            writeln!(out, "Not compared: {}", skip.line())?;
        }
        // The last lines: the outcome in plain words, only for a run that measured cleanly.
        if exit_code == 0 && !incomplete {
            for line in verdict::lines(&report::series(&runs), "engine") {
                writeln!(out, "{line}")?;
            }
        }
    }
    out.flush()?;
    drop(out);
    for r in &runs {
        if let Some(w) = report::text::shortfall_warning(&cfg, r) {
            eprintln!("echo-bench: {w}");
        }
    }
    for name in &silent {
        eprintln!("echo-bench: {name}: no message completed inside the measured window");
    }
    if errors_total > 0 {
        let first = runs.iter().flat_map(|r| r.error_samples.first()).next();
        let early = if runs.iter().any(|r| r.ended_early) {
            " (every connection failed, so the run ended early)"
        } else {
            ""
        };
        eprintln!(
            "echo-bench: {errors_total} connection error(s){early}{}",
            first.map(|f| format!("; first: {f}")).unwrap_or_default()
        );
    }

    // Files.
    let force = cfg.outputs.force;
    if let Some(path) = &cfg.outputs.json {
        let json = report::json::json_report(
            &cfg,
            &host_info,
            &runs,
            &skipped,
            first_start.unwrap_or_else(SystemTime::now),
            incomplete,
            exit_code,
        );
        let mut buf = serde_json::to_vec_pretty(&json)?;
        buf.push(b'\n');
        write_file(path, &buf, force)?;
    }
    if let Some(path) = &cfg.outputs.hgrm {
        for r in &runs {
            let mut buf = Vec::new();
            report::hdr::write_hgrm(&mut buf, &r.latency, report::hdr::HGRM_NS_PER_UNIT)?;
            write_file(&per_target_path(path, &r.name, n), &buf, force)?;
        }
    }
    if let (Some(path), Some(interval)) = (&cfg.outputs.hlog, cfg.load.interval) {
        for r in &runs {
            let mut buf = Vec::new();
            report::hdr::write_hlog(&mut buf, r, crate::clock::duration_to_ns(interval))?;
            write_file(&per_target_path(path, &r.name, n), &buf, force)?;
        }
    }
    if let Some(path) = &cfg.outputs.plot {
        let mut lines = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            lines.push(PlotLine {
                label: if open {
                    format!("{} (from intended time)", r.name)
                } else {
                    r.name.clone()
                },
                histogram: &r.latency,
                dashed: false,
                color: i,
            });
            if let Some(svc) = &r.service {
                lines.push(PlotLine {
                    label: format!("{} (service time)", r.name),
                    histogram: svc,
                    dashed: true,
                    color: i,
                });
            }
        }
        let title = format!(
            "echo latency by percentile: {} connections, {} B{}",
            cfg.load.connections,
            cfg.load.size,
            match cfg.load.mode {
                Mode::Open { rate, .. } => format!(", {rate:.0} msgs/s"),
                Mode::Closed => format!(", closed loop, pipeline {}", cfg.load.pipeline),
            }
        );
        let svg = plot::render_svg(&title, &lines)?;
        write_file(path, svg.as_bytes(), force)?;
    }
    Ok(exit_code)
}
