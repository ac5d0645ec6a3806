//! `echo-bench slo`: the highest offered rate at which a target meets a latency SLO — "p99 of
//! the latency from the intended send time at most 500 µs" — found with bounds that say how
//! sure the answer is, for one target or several compared.
//!
//! A **trial** is one open-loop run at an offered rate (`-d`, extended at low rates so that at
//! least [`MIN_TAIL_SAMPLES`] messages fall beyond the quantile). Its verdict:
//! * **invalid** when the client was the bottleneck ([`crate::bottleneck`]; in `slo` the
//!   send-lateness limit is also at most [`SLO_LATENESS_SHARE`] of the SLO): it measured the
//!   client, so it counts neither for nor against the server;
//! * **fail** when the quantile of the latency exceeds the SLO, counting the messages left
//!   incomplete at the deadline although due more than the SLO before it as over it; or when
//!   the achieved rate is below 99% of the offered one (the server did not sustain the rate;
//!   the client, not being the bottleneck, is not what held it back);
//! * **pass** otherwise.
//!
//! The **achieved rate** is the offered rate times the fraction of the messages due in the
//! window at least the SLO before its end that completed by the end. Completions counted per
//! window would lag the intended times by the latency itself: at a 50 ms SLO and a 0.5 s
//! trial, a server that keeps every message within the SLO could complete up to 10% fewer
//! messages inside the window than were due in it, and a 1% test would fail it for that.
//!
//! Trials at one rate repeat until the rate is decided, and the rates are chosen by
//! [`search::Search`] (the decision rule and the bracketing are documented there). Targets are
//! searched interleaved: in each step every unfinished target runs one trial, in an order
//! shuffled per step (`--seed`), so drifts of the machine hit all alike. `--max-time` bounds
//! the whole search: before each trial, the search stops if that trial (its warmup and window,
//! plus the connecting and collecting the target's last trial took) would end past the budget.

pub mod curve;
pub mod report;
pub mod search;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::cli::SloArgs;
use crate::config::{self, check_outputs, Arrival, BenchConfig, LoadConfig, Mode};
use crate::load::{self, CpuSource, TrialResult};
use crate::report::json::report_header;
use crate::report::{rate_reached, us, TargetInfo};
use crate::runner::{begin, start_targets};
use crate::write_file;
use report::{SloJson, SloReport, SloTargetJson, SloTrial};
use search::{Search, SearchParams, StopReason, Verdict};

/// Default trial length.
pub const DEFAULT_TRIAL: Duration = Duration::from_secs(1);
/// Default warmup before each trial.
pub const DEFAULT_WARMUP: Duration = Duration::from_millis(250);
/// A trial holds at least this many messages beyond the quantile (p99: 500 messages).
pub const MIN_TAIL_SAMPLES: f64 = 5.0;
/// Longest trial (the extension for low rates stops here).
pub const MAX_TRIAL: Duration = Duration::from_secs(60);
/// In a trial, the client's send lateness p99 may be at most this share of the SLO: beyond
/// it, the client's own delay is a large part of the latency being judged, and the trial is
/// invalid (client-bound) rather than a failure of the server.
pub const SLO_LATENESS_SHARE: f64 = 0.25;
/// Lowest rate probed.
pub const MIN_PROBE_RATE: f64 = 1.0;
/// Allowance for connecting and collecting around each trial, for the time estimate of the
/// first trial of a target.
const TRIAL_OVERHEAD: Duration = Duration::from_millis(300);

/// The validated `slo` configuration.
#[derive(Debug, Clone)]
pub struct SloConfig {
    /// Targets, load, outputs (the load's mode is set per trial).
    pub bench: BenchConfig,
    /// The SLO's percentile (99 = p99).
    pub quantile: f64,
    /// The SLO's latency bound.
    pub max_latency: Duration,
    /// Time budget.
    pub max_time: Duration,
    /// First rate, instead of the closed-loop probe's.
    pub start_rate: Option<f64>,
    /// The search rules.
    pub params: SearchParams,
}

impl SloConfig {
    /// Validate `args`.
    pub fn from_args(args: &SloArgs, command_line: Vec<String>) -> anyhow::Result<SloConfig> {
        let l = &args.load;
        if l.targets.is_empty() && l.spawn.is_empty() {
            bail!("slo needs a TARGET or --spawn");
        }
        for (given, flag, why) in [
            (
                l.rate.is_some(),
                "--rate",
                "slo chooses the offered rates; use --start-rate to pick the first",
            ),
            (
                l.rounds.is_some(),
                "--rounds",
                "slo repeats trials per rate itself (--trials, --passes)",
            ),
            (l.start_at.is_some(), "--start-at", "slo runs many trials"),
            (
                l.hgrm.is_some(),
                "--hgrm",
                "the JSON report holds every trial",
            ),
            (
                l.hlog.is_some(),
                "--hlog",
                "the JSON report holds every trial",
            ),
        ] {
            if given {
                bail!("{flag} does not apply to slo: {why}");
            }
        }
        if args.passes > args.trials {
            bail!(
                "--passes {} is more than --trials {}",
                args.passes,
                args.trials
            );
        }
        let mut bench = BenchConfig::from_args(l, command_line)?;
        bench.load.duration = l.duration.unwrap_or(DEFAULT_TRIAL);
        bench.load.warmup = l.warmup.unwrap_or(DEFAULT_WARMUP);
        bench.load.rate_interval = config::rate_interval(l.interval, bench.load.duration);
        bench.load.overdue_after = Some(args.max_latency);
        bench.load.lateness_cap = Some(args.max_latency.mul_f64(SLO_LATENESS_SHARE));
        bench.load.mode = Mode::Open {
            rate: args.start_rate.unwrap_or(1.0),
            arrival: l.arrival.unwrap_or(Arrival::Constant),
        };
        Ok(SloConfig {
            bench,
            quantile: args.quantile,
            max_latency: args.max_latency,
            max_time: args.max_time,
            start_rate: args.start_rate,
            params: SearchParams {
                precision: args.precision,
                trials: args.trials,
                passes: args.passes,
                max_invalid: args.trials,
                min_rate: MIN_PROBE_RATE,
                max_rate: crate::cli::MAX_RATE,
            },
        })
    }

    /// The load of one trial at `rate`: the window is stretched at low rates so that it holds
    /// at least [`MIN_TAIL_SAMPLES`] messages beyond the quantile.
    pub fn trial_load(&self, rate: f64) -> LoadConfig {
        let mut load = self.bench.load.clone();
        let arrival = match load.mode {
            Mode::Open { arrival, .. } => arrival,
            Mode::Closed => Arrival::Constant,
        };
        load.mode = Mode::Open { rate, arrival };
        let tail = 1.0 - self.quantile / 100.0;
        let needed = Duration::from_secs_f64((MIN_TAIL_SAMPLES / tail / rate).min(1e9));
        load.duration = load.duration.max(needed).min(MAX_TRIAL.max(load.duration));
        load.rate_interval = config::rate_interval(load.rate_interval, load.duration);
        load
    }
}

/// The verdict of a trial at `offered` messages/s against `quantile` (percent) ≤ `slo_ns`,
/// with the reason in words (see the module docs).
pub fn judge(res: &TrialResult, offered: f64, quantile: f64, slo_ns: u64) -> (Verdict, String) {
    if res.client.client_bound {
        return (Verdict::Invalid, res.client.reasons.join("; "));
    }
    let over = over_slo(res, slo_ns);
    let total = res.measured + res.overdue;
    let allowed = total - (quantile / 100.0 * total as f64).ceil() as u64;
    if total == 0 || over > allowed {
        let q = if res.latency.is_empty() {
            f64::INFINITY
        } else {
            us(res.latency.value_at_quantile(quantile / 100.0))
        };
        return (
            Verdict::Fail,
            format!(
                "{over} of {total} messages over {:.0} µs (at most {allowed} allowed; p{quantile} of the completed: {q:.1} µs{})",
                us(slo_ns),
                if res.overdue > 0 {
                    format!(", {} overdue at the deadline", res.overdue)
                } else {
                    String::new()
                }
            ),
        );
    }
    let achieved = achieved_rate(res, offered);
    if !rate_reached(achieved, offered) {
        return (
            Verdict::Fail,
            format!(
                "achieved {:.1}% of the offered rate (the server fell behind)",
                100.0 * achieved / offered
            ),
        );
    }
    (Verdict::Pass, String::new())
}

/// Completions per second inside the window.
fn completed_rate(res: &TrialResult) -> f64 {
    if res.measured_ns == 0 {
        0.0
    } else {
        res.measured as f64 * 1e9 / res.measured_ns as f64
    }
}

/// The achieved rate of a trial at `offered` (see the module docs).
fn achieved_rate(res: &TrialResult, offered: f64) -> f64 {
    let due = res.span_completed + res.span_overdue;
    if due == 0 {
        completed_rate(res)
    } else {
        offered * res.span_completed as f64 / due as f64
    }
}

/// Messages of the trial over the SLO: completed slower, or overdue at the deadline.
fn over_slo(res: &TrialResult, slo_ns: u64) -> u64 {
    let slower: u64 = res
        .latency
        .iter_recorded()
        .filter(|v| res.latency.lowest_equivalent(v.value_iterated_to()) > slo_ns)
        .map(|v| v.count_at_value())
        .sum();
    slower + res.overdue
}

fn trial_record(n: usize, offered: f64, res: &TrialResult, quantile: f64, slo_ns: u64) -> SloTrial {
    let (verdict, reason) = judge(res, offered, quantile, slo_ns);
    let q = |x: f64| {
        if res.latency.is_empty() {
            0.0
        } else {
            us(res.latency.value_at_quantile(x))
        }
    };
    SloTrial {
        trial: n,
        offered_rate: offered,
        achieved_rate: achieved_rate(res, offered),
        completed_rate: completed_rate(res),
        measure_start: humantime::format_rfc3339_micros(res.measure_start).to_string(),
        duration_s: res.measured_ns as f64 / 1e9,
        messages: res.measured,
        overdue: res.overdue,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        quantile_us: q(quantile / 100.0),
        over_slo: over_slo(res, slo_ns),
        verdict,
        reason,
        client: res.client.clone(),
    }
}

/// The per-target state of a search.
struct TargetSearch {
    json: SloTargetJson,
    search: Option<Search>,
    /// Wall time of the last trial beyond its warmup and window (connecting, collecting).
    last_overhead: Option<Duration>,
}

/// Run `echo-bench slo`; returns the exit code.
pub fn run(args: &SloArgs, command_line: Vec<String>) -> anyhow::Result<u8> {
    let cfg = SloConfig::from_args(args, command_line)?;
    let outputs: Vec<_> = [&cfg.bench.outputs.json, &cfg.bench.outputs.plot]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    check_outputs(&outputs, cfg.bench.outputs.force)?;
    let host = begin(&cfg.bench)?;
    let slo_ns = crate::clock::duration_to_ns(cfg.max_latency);
    let slo_words = report::slo_text(cfg.quantile, us(slo_ns));
    let quiet = cfg.bench.quiet;

    // No default comparison in slo (it needs targets), so nothing is ever skipped here.
    let (mut started, _) = start_targets(&cfg.bench)?;
    let mut targets: Vec<TargetSearch> = started
        .iter()
        .map(|t| TargetSearch {
            json: SloTargetJson {
                info: TargetInfo {
                    name: t.name.clone(),
                    address: t.address.to_string(),
                    spawn_command: t.spawn_command.clone(),
                    server_summary: None,
                    server_features: None,
                    server_pid: t.server.as_ref().and_then(|s| s.pid()),
                },
                saturation_probe_msgs_per_s: None,
                start_rate: cfg.start_rate.unwrap_or(0.0),
                max_rate_lower: None,
                max_rate_upper: None,
                precision_reached: None,
                goal_reached: false,
                stop_reason: StopReason::MaxTime,
                rates: Vec::new(),
                trials: Vec::new(),
                contradiction: None,
            },
            search: cfg.start_rate.map(|r| Search::new(r, cfg.params)),
            last_overhead: None,
        })
        .collect();

    let began = Instant::now();
    let first_start = SystemTime::now();
    let mut rng = StdRng::seed_from_u64(cfg.bench.seed);
    let mut errors_total = 0u64;
    let trial_estimate = |t: &TargetSearch, load: &LoadConfig| {
        load.warmup + load.duration + t.last_overhead.unwrap_or(TRIAL_OVERHEAD)
    };
    'steps: loop {
        let mut order: Vec<usize> = (0..targets.len())
            .filter(|&i| {
                targets[i]
                    .search
                    .as_ref()
                    .map_or(true, |s| s.next_rate().is_some())
            })
            .collect();
        if order.is_empty() {
            break;
        }
        order.shuffle(&mut rng);
        for i in order {
            let t = &mut targets[i];
            // The first step of a target without --start-rate: a closed-loop probe.
            let (load, offered) = match t.search.as_ref().and_then(Search::next_rate) {
                Some(rate) => (cfg.trial_load(rate), Some(rate)),
                None => {
                    let mut load = cfg.bench.load.clone();
                    load.mode = Mode::Closed;
                    (load, None)
                }
            };
            if began.elapsed() + trial_estimate(t, &load) > cfg.max_time {
                for t in targets.iter_mut() {
                    if let Some(s) = t.search.as_mut() {
                        s.stop(StopReason::MaxTime);
                    }
                }
                break 'steps;
            }
            let server = started[i].server.as_ref().map(|s| s as &dyn CpuSource);
            let trial_began = Instant::now();
            let res = load::run_trial(&load, started[i].address, None, server, None);
            if let Some(s) = started[i].server.as_mut() {
                s.check_alive()?;
            }
            let res = res?;
            t.last_overhead = Some(
                trial_began
                    .elapsed()
                    .saturating_sub(load.warmup + load.duration),
            );
            if res.errors.total > 0 {
                errors_total += res.errors.total;
                eprintln!(
                    "echo-bench: {}: {} connection error(s) in a trial; first: {}",
                    t.json.info.name,
                    res.errors.total,
                    res.error_samples.first().map_or("", String::as_str)
                );
                for t in targets.iter_mut() {
                    t.search
                        .get_or_insert_with(|| Search::new(MIN_PROBE_RATE, cfg.params))
                        .stop(StopReason::Errors);
                }
                break 'steps;
            }
            let Some(offered) = offered else {
                let rate = completed_rate(&res);
                if rate <= 0.0 {
                    bail!(
                        "{}: no message completed in the closed-loop probe",
                        t.json.info.name
                    );
                }
                if !quiet {
                    eprintln!(
                        "slo: {}: closed-loop probe {rate:.1} msgs/s{}",
                        t.json.info.name,
                        if res.client.client_bound {
                            " (client-bound: the server may sustain more)"
                        } else {
                            ""
                        }
                    );
                }
                t.json.saturation_probe_msgs_per_s = Some(rate);
                t.json.start_rate = rate;
                t.search = Some(Search::new(rate, cfg.params));
                continue;
            };
            let record = trial_record(t.json.trials.len() + 1, offered, &res, cfg.quantile, slo_ns);
            if !quiet {
                eprintln!(
                    "slo: {} trial {} at {offered:.1} msgs/s: achieved {:.1}, {} {:.1} µs: {}",
                    t.json.info.name,
                    record.trial,
                    record.achieved_rate,
                    report::quantile_name(cfg.quantile),
                    record.quantile_us,
                    match record.verdict {
                        Verdict::Pass => "pass".to_string(),
                        Verdict::Fail => format!("fail ({})", record.reason),
                        Verdict::Invalid => format!("invalid ({})", record.reason),
                    }
                );
            }
            t.search
                .as_mut()
                .expect("a search once probed")
                .record(record.verdict);
            t.json.trials.push(record);
        }
    }
    let elapsed = began.elapsed();

    for (t, s) in targets.iter_mut().zip(started.iter_mut()) {
        if let Some(server) = s.server.as_mut() {
            t.json.info.server_summary = server.stop();
            t.json.info.server_features = server.features();
        }
        let search = t.search.get_or_insert_with(|| {
            let mut s = Search::new(MIN_PROBE_RATE, cfg.params);
            s.stop(StopReason::MaxTime);
            s
        });
        let j = &mut t.json;
        j.max_rate_lower = search.lower();
        j.max_rate_upper = search.upper();
        j.precision_reached = search.width();
        j.stop_reason = search.stop_reason().unwrap_or(StopReason::MaxTime);
        j.goal_reached = j.stop_reason == StopReason::PrecisionReached;
        j.rates = search.rates().to_vec();
        j.contradiction = report::find_contradiction(&j.rates, &j.trials, cfg.params.precision);
        if j.start_rate == 0.0 {
            j.start_rate = j.rates.first().map_or(0.0, |r| r.rate);
        }
    }
    drop(started);
    crate::interrupt::restore_default();
    if crate::interrupt::interrupted() {
        bail!("interrupted");
    }

    let targets_json: Vec<SloTargetJson> = targets.into_iter().map(|t| t.json).collect();
    let slo = SloJson {
        quantile: cfg.quantile,
        max_latency_us: us(slo_ns),
        precision_goal: cfg.params.precision,
        trials_per_rate: cfg.params.trials,
        passes_needed: cfg.params.passes,
        max_invalid_per_rate: cfg.params.max_invalid,
        trial_duration_s: cfg.bench.load.duration.as_secs_f64(),
        warmup_s: cfg.bench.load.warmup.as_secs_f64(),
        max_time_s: cfg.max_time.as_secs_f64(),
        elapsed_s: elapsed.as_secs_f64(),
        stopped_early: targets_json.iter().any(|t| !t.goal_reached),
        comparisons: report::compare_all(&targets_json, &slo_words),
        targets: targets_json,
    };
    let nothing = slo
        .targets
        .iter()
        .any(|t| t.max_rate_lower.is_none() && t.max_rate_upper.is_none());
    let exit_code = u8::from(errors_total > 0 || nothing);

    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", header_line(&cfg, &slo_words))?;
    writeln!(out, "== trials")?;
    report::print_trials(&mut out, &slo)?;
    report::print_bounds(&mut out, &slo)?;
    out.flush()?;
    drop(out);

    let force = cfg.bench.outputs.force;
    if let Some(path) = &cfg.bench.outputs.json {
        let mut header = report_header(&cfg.bench, &host, first_start, "slo");
        header.config.rate = None; // every trial has its own
        let json = SloReport {
            header,
            slo: slo.clone(),
            errors_total,
            exit_code,
        };
        let mut buf = serde_json::to_vec_pretty(&json)?;
        buf.push(b'\n');
        write_file(path, &buf, force)?;
    }
    if let Some(path) = &cfg.bench.outputs.plot {
        let l = &cfg.bench.load;
        let title = format!(
            "latency vs offered rate: {} connections, {} B, pipeline {}",
            l.connections, l.size, l.pipeline
        );
        write_file(path, curve::render_svg(&title, &slo)?.as_bytes(), force)?;
    }
    Ok(exit_code)
}

fn header_line(cfg: &SloConfig, slo_words: &str) -> String {
    let l = &cfg.bench.load;
    let arrival = match l.mode {
        Mode::Open {
            arrival: Arrival::Poisson,
            ..
        } => "poisson",
        _ => "constant",
    };
    let p = &cfg.params;
    format!(
        "echo-bench {} slo: highest rate at {slo_words} (latency from the intended send time); \
         open loop ({arrival} arrivals, pipeline {}), {} connections, {} B messages, {} client \
         thread(s){}; trials of {} after {} warmup; a rate passes with {} of {} valid trials; \
         precision goal {:.1}%; max time {}",
        env!("CARGO_PKG_VERSION"),
        l.pipeline,
        l.connections,
        l.size,
        l.threads,
        if l.busy_poll { ", busy-poll" } else { "" },
        humantime::format_duration(l.duration),
        humantime::format_duration(l.warmup),
        p.passes,
        p.trials,
        p.precision * 100.0,
        humantime::format_duration(cfg.max_time),
    )
}
