//! Everything echo-bench writes: the text summary (stdout), the JSON report, HdrHistogram's
//! `.hgrm` percentile distribution and `.hlog` interval log.
//!
//! One result type ([`TargetRun`]) feeds every printer, so the text, the JSON and the files
//! cannot disagree. Histograms are in nanoseconds; text and JSON show microseconds; `.hgrm`
//! shows milliseconds (what HdrHistogram's plotter labels its axis with).
//!
//! The `.hgrm` layout reproduces Java HdrHistogram's `outputPercentileDistribution` (5 ticks per
//! half distance, `%12.3f %2.12f %10d %14.2f` rows, the last row without `1/(1-Percentile)`,
//! and the `#[Mean`, `#[Max`, `#[Buckets` footer). The `.hlog` file is an interval log V2
//! compressed (the Java `HistogramLogWriter` layout, readable by `HistogramLogProcessor` and by
//! the Rust crate's `IntervalLogIterator`).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::compare::{self, Significance, Summary};
use crate::config::{BenchConfig, Mode};
use crate::host::HostInfo;
use crate::load::ErrorCounts;
use crate::record::{self, new_histogram, MergedIntervals};

/// JSON schema version; bump on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;
/// Ticks per half distance of the `.hgrm` table (HdrHistogram's default).
pub const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;
/// `.hgrm` value scaling: ns → ms.
pub const HGRM_NS_PER_UNIT: f64 = 1e6;
const MIB: f64 = 1024.0 * 1024.0;

/// One round of one target.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRecord {
    /// Round number (1-based).
    pub round: usize,
    /// Position of the target inside the round's shuffled order (1-based).
    pub position: usize,
    /// Start of the measured window, RFC3339.
    pub measure_start: String,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Messages completed in the window.
    pub messages: u64,
    /// Messages per second.
    pub msgs_per_s: f64,
    /// MiB per second of echoed payload (one direction).
    pub mib_per_s: f64,
    /// Messages in flight at the deadline.
    pub aborted: u64,
    /// Open loop: due but never sent.
    pub unsent: u64,
    /// Errors in this round.
    pub errors: u64,
    /// Latency p50 of this round, µs.
    pub p50_us: f64,
    /// Latency p99 of this round, µs.
    pub p99_us: f64,
    /// Server CPU ns per message (spawned servers).
    pub server_cpu_ns_per_msg: Option<f64>,
    /// Client CPU ns per message.
    pub client_cpu_ns_per_msg: Option<f64>,
}

/// Everything measured for one target over all rounds.
pub struct TargetRun {
    /// Name.
    pub name: String,
    /// Connected address.
    pub address: SocketAddr,
    /// Command, for spawned servers.
    pub spawn_command: Option<String>,
    /// The server's `summary:` line at exit (spawned servers).
    pub server_summary: Option<String>,
    /// PID of the spawned server.
    pub server_pid: Option<u32>,
    /// Per-round records.
    pub rounds: Vec<RoundRecord>,
    /// Merged latency histogram.
    pub latency: Histogram<u64>,
    /// Merged service-time histogram (open loop).
    pub service: Option<Histogram<u64>>,
    /// Per round: window start, window length (ns) and merged interval histograms.
    pub intervals: Vec<(SystemTime, u64, MergedIntervals)>,
    /// Totals.
    pub totals: Totals,
    /// First error descriptions.
    pub error_samples: Vec<String>,
    /// A round ended before its deadline because every connection had failed.
    pub ended_early: bool,
}

/// Counters summed over rounds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Totals {
    /// Messages completed inside measured windows.
    pub messages: u64,
    /// Messages completed during warmups (not recorded).
    pub warmup_messages: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages in flight at deadlines.
    pub aborted: u64,
    /// Open loop: due but never sent.
    pub unsent: u64,
    /// Measured time, ns.
    pub measured_ns: u64,
    /// Server CPU time in measured windows, ns (spawned servers).
    pub server_cpu_ns: Option<u64>,
    /// Client CPU time in measured windows, ns.
    pub client_cpu_ns: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
}

impl TargetRun {
    /// New empty run.
    pub fn new(
        name: String,
        address: SocketAddr,
        spawn_command: Option<String>,
        open: bool,
    ) -> TargetRun {
        TargetRun {
            name,
            address,
            spawn_command,
            server_summary: None,
            server_pid: None,
            rounds: Vec::new(),
            latency: new_histogram(),
            service: open.then(new_histogram),
            intervals: Vec::new(),
            totals: Totals::default(),
            error_samples: Vec::new(),
            ended_early: false,
        }
    }

    /// Messages per second over all measured windows.
    pub fn msgs_per_s(&self) -> f64 {
        per_second(self.totals.messages, self.totals.measured_ns)
    }
}

fn per_second(count: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        count as f64 * 1e9 / ns as f64
    }
}

/// ns → µs.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Latency figures of one histogram, as in the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyJson {
    /// What the latency is measured from.
    pub basis: &'static str,
    /// Recorded messages.
    pub count: u64,
    /// Minimum, µs.
    pub min_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Standard deviation, µs.
    pub stdev_us: f64,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// 99.99th percentile, µs.
    pub p9999_us: f64,
    /// Maximum, µs.
    pub max_us: f64,
    /// The histogram (ns), V2 + deflate, base64: `Deserializer::deserialize` reads it back.
    pub histogram: String,
}

/// Encode a histogram as base64 V2-deflate.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .expect("serialising into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Figures of `h`.
pub fn latency_json(h: &Histogram<u64>, basis: &'static str) -> LatencyJson {
    let q = |x: f64| {
        if h.is_empty() {
            0.0
        } else {
            us(h.value_at_quantile(x))
        }
    };
    LatencyJson {
        basis,
        count: h.len(),
        min_us: if h.is_empty() { 0.0 } else { us(h.min()) },
        mean_us: h.mean() / 1000.0,
        stdev_us: h.stdev() / 1000.0,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        p9999_us: q(0.9999),
        max_us: if h.is_empty() { 0.0 } else { us(h.max()) },
        histogram: encode_histogram(h),
    }
}

/// One target in the JSON report.
#[derive(Debug, Serialize)]
pub struct TargetJson {
    /// Name.
    pub name: String,
    /// Address connected to.
    pub address: String,
    /// Command (spawned servers), else null.
    pub spawn_command: Option<String>,
    /// Server's `summary:` line (spawned servers), else null.
    pub server_summary: Option<String>,
    /// PID of the spawned server, else null.
    pub server_pid: Option<u32>,
    /// Messages completed inside the measured windows.
    pub messages: u64,
    /// Completed during warmup (not recorded).
    pub warmup_messages: u64,
    /// Messages sent.
    pub sent: u64,
    /// In flight at a deadline (not counted as completed).
    pub aborted: u64,
    /// Open loop: due but never sent.
    pub unsent: u64,
    /// Echoed payload bytes inside the windows (messages × size).
    pub bytes: u64,
    /// Measured time over all rounds, s.
    pub duration_s: f64,
    /// Throughput, messages per second.
    pub msgs_per_s: f64,
    /// Throughput, MiB per second (payload, one direction).
    pub mib_per_s: f64,
    /// Open loop: target rate, else null.
    pub target_rate: Option<f64>,
    /// Open loop: achieved / target, else null.
    pub achieved_rate_ratio: Option<f64>,
    /// Open loop: achieved rate < 99% of the target.
    pub rate_shortfall: bool,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// First error descriptions (connection, seq, offset).
    pub error_samples: Vec<String>,
    /// Latency: from the intended send time (open loop), from the send time (closed loop).
    pub latency: LatencyJson,
    /// Open loop: latency from the actual send time; null in closed loop.
    pub service_time: Option<LatencyJson>,
    /// Server CPU ns per message over all rounds (spawned servers), else null.
    pub server_cpu_ns_per_msg: Option<f64>,
    /// Client CPU ns per message over all rounds.
    pub client_cpu_ns_per_msg: Option<f64>,
    /// Per-round figures.
    pub rounds: Vec<RoundRecord>,
}

/// Ratio of a target against the first one.
#[derive(Debug, Serialize)]
pub struct RatioJson {
    /// Median/spread of the per-round ratios.
    #[serde(flatten)]
    pub summary: Summary,
    /// Significance label.
    pub significance: Significance,
}

/// One row of the comparison.
#[derive(Debug, Serialize)]
pub struct CompareRow {
    /// Target name.
    pub name: String,
    /// Messages per second over rounds.
    pub msgs_per_s: Summary,
    /// Ratio of msgs/s vs the baseline (null for the baseline itself).
    pub msgs_per_s_ratio: Option<RatioJson>,
    /// Server CPU ns per message over rounds (spawned servers).
    pub server_cpu_ns_per_msg: Option<Summary>,
    /// Ratio of server CPU per message vs the baseline.
    pub server_cpu_ratio: Option<RatioJson>,
    /// p99 latency (µs) over rounds.
    pub p99_us: Summary,
}

/// The comparison section.
#[derive(Debug, Serialize)]
pub struct ComparisonJson {
    /// Name of the first target (ratios are relative to it).
    pub baseline: String,
    /// Rounds.
    pub rounds: usize,
    /// Rows, in target order.
    pub rows: Vec<CompareRow>,
}

/// Build the comparison (needs more than one target or more than one round).
pub fn comparison(targets: &[TargetRun]) -> Option<ComparisonJson> {
    let rounds = targets.iter().map(|t| t.rounds.len()).max().unwrap_or(0);
    if targets.is_empty() || (targets.len() < 2 && rounds < 2) {
        return None;
    }
    let per_round = |t: &TargetRun, f: &dyn Fn(&RoundRecord) -> Option<f64>| -> Vec<Option<f64>> {
        (1..=rounds)
            .map(|r| t.rounds.iter().find(|x| x.round == r).and_then(f))
            .collect()
    };
    let rate = |r: &RoundRecord| Some(r.msgs_per_s);
    let cpu = |r: &RoundRecord| r.server_cpu_ns_per_msg;
    let base_rate = per_round(&targets[0], &rate);
    let base_cpu = per_round(&targets[0], &cpu);
    let rows = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let rates = per_round(t, &rate);
            let cpus = per_round(t, &cpu);
            let cpu_samples: Vec<f64> = cpus.iter().flatten().copied().collect();
            let ratio = |v: &[Option<f64>], b: &[Option<f64>]| {
                let r = compare::per_round_ratios(v, b);
                (!r.is_empty()).then(|| {
                    let summary = compare::summarize(&r);
                    RatioJson {
                        significance: compare::significance(&summary),
                        summary,
                    }
                })
            };
            CompareRow {
                name: t.name.clone(),
                msgs_per_s: compare::summarize(
                    &rates.iter().flatten().copied().collect::<Vec<_>>(),
                ),
                msgs_per_s_ratio: if i == 0 {
                    None
                } else {
                    ratio(&rates, &base_rate)
                },
                server_cpu_ns_per_msg: (!cpu_samples.is_empty())
                    .then(|| compare::summarize(&cpu_samples)),
                server_cpu_ratio: if i == 0 {
                    None
                } else {
                    ratio(&cpus, &base_cpu)
                },
                p99_us: compare::summarize(&t.rounds.iter().map(|r| r.p99_us).collect::<Vec<_>>()),
            }
        })
        .collect();
    Some(ComparisonJson {
        baseline: targets[0].name.clone(),
        rounds,
        rows,
    })
}

/// Tool name and version.
#[derive(Debug, Serialize)]
pub struct ToolJson {
    /// `echo-bench`
    pub name: &'static str,
    /// Package version.
    pub version: &'static str,
}

/// Pinning in effect.
#[derive(Debug, Serialize)]
pub struct PinningJson {
    /// Client threads' CPUs (thread i on the i-th, round robin), null if not pinned.
    pub client_cpus: Option<Vec<usize>>,
    /// Spawned servers' CPUs, null if not pinned.
    pub server_cpus: Option<Vec<usize>>,
}

/// Configuration as run.
#[derive(Debug, Serialize)]
pub struct ConfigJson {
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Connections per target.
    pub connections: usize,
    /// Message size, bytes.
    pub size_bytes: usize,
    /// Messages in flight per connection (at most).
    pub pipeline: usize,
    /// Open loop: total messages per second per target.
    pub rate: Option<f64>,
    /// Open loop: arrival process.
    pub arrival: Option<crate::config::Arrival>,
    /// Client threads.
    pub threads: usize,
    /// `--busy-poll`: client threads never sleep.
    pub busy_poll: bool,
    /// Measured duration per round, s.
    pub duration_s: f64,
    /// Warmup per round, s.
    pub warmup_s: f64,
    /// Rounds.
    pub rounds: usize,
    /// `--hlog` interval, s (null without --hlog).
    pub interval_s: Option<f64>,
    /// `--start-at`, RFC3339.
    pub start_at: Option<String>,
    /// Seed.
    pub seed: u64,
    /// True for the built-in uring/epoll comparison.
    pub default_comparison: bool,
    /// Histogram unit and bounds.
    pub histogram: HistogramConfigJson,
}

/// Histogram settings.
#[derive(Debug, Serialize)]
pub struct HistogramConfigJson {
    /// Unit of the recorded values.
    pub unit: &'static str,
    /// Lowest discernible value.
    pub lowest: u64,
    /// Highest trackable value.
    pub highest: u64,
    /// Significant digits.
    pub significant_digits: u8,
}

/// The whole JSON report.
#[derive(Debug, Serialize)]
pub struct JsonReport {
    /// Schema version.
    pub schema_version: u32,
    /// Tool and version.
    pub tool: ToolJson,
    /// `argv` as given.
    pub command_line: Vec<String>,
    /// `--label`.
    pub label: Option<String>,
    /// Start of the first measured window, RFC3339 UTC.
    pub start_time: String,
    /// Host facts.
    pub host: HostInfo,
    /// Pinning.
    pub pinning: PinningJson,
    /// Configuration.
    pub config: ConfigJson,
    /// Per-target results.
    pub targets: Vec<TargetJson>,
    /// Comparison (several targets or rounds), else null.
    pub comparison: Option<ComparisonJson>,
    /// Any target missed its open-loop rate by more than 1%.
    pub rate_shortfall: bool,
    /// Errors over all targets.
    pub errors_total: u64,
    /// Rounds not run because of an error or interrupt.
    pub incomplete: bool,
    /// The exit code echo-bench returns.
    pub exit_code: u8,
}

/// Rate figures of an open-loop target: (target, achieved ratio, shortfall).
pub fn rate_check(cfg: &BenchConfig, t: &TargetRun) -> (Option<f64>, Option<f64>, bool) {
    match cfg.load.mode {
        Mode::Open { rate, .. } => {
            let ratio = t.msgs_per_s() / rate;
            (Some(rate), Some(ratio), ratio < 0.99)
        }
        Mode::Closed => (None, None, false),
    }
}

fn per_msg(ns: Option<u64>, msgs: u64) -> Option<f64> {
    match ns {
        Some(ns) if msgs > 0 => Some(ns as f64 / msgs as f64),
        _ => None,
    }
}

/// Build the JSON report.
pub fn json_report(
    cfg: &BenchConfig,
    host: &HostInfo,
    targets: &[TargetRun],
    start_time: SystemTime,
    incomplete: bool,
    exit_code: u8,
) -> JsonReport {
    let open = matches!(cfg.load.mode, Mode::Open { .. });
    let targets_json: Vec<TargetJson> = targets
        .iter()
        .map(|t| {
            let (target_rate, achieved_rate_ratio, rate_shortfall) = rate_check(cfg, t);
            TargetJson {
                name: t.name.clone(),
                address: t.address.to_string(),
                spawn_command: t.spawn_command.clone(),
                server_summary: t.server_summary.clone(),
                server_pid: t.server_pid,
                messages: t.totals.messages,
                warmup_messages: t.totals.warmup_messages,
                sent: t.totals.sent,
                aborted: t.totals.aborted,
                unsent: t.totals.unsent,
                bytes: t.totals.messages * cfg.load.size as u64,
                duration_s: t.totals.measured_ns as f64 / 1e9,
                msgs_per_s: t.msgs_per_s(),
                mib_per_s: t.msgs_per_s() * cfg.load.size as f64 / MIB,
                target_rate,
                achieved_rate_ratio,
                rate_shortfall,
                errors: t.totals.errors,
                error_samples: t.error_samples.clone(),
                latency: latency_json(
                    &t.latency,
                    if open {
                        "intended send time"
                    } else {
                        "send time"
                    },
                ),
                service_time: t
                    .service
                    .as_ref()
                    .map(|h| latency_json(h, "actual send time")),
                server_cpu_ns_per_msg: per_msg(t.totals.server_cpu_ns, t.totals.messages),
                client_cpu_ns_per_msg: per_msg(Some(t.totals.client_cpu_ns), t.totals.messages),
                rounds: t.rounds.clone(),
            }
        })
        .collect();
    let pipeline = cfg.load.pipeline;
    let (rate, arrival) = match cfg.load.mode {
        Mode::Closed => (None, None),
        Mode::Open { rate, arrival } => (Some(rate), Some(arrival)),
    };
    JsonReport {
        schema_version: SCHEMA_VERSION,
        tool: ToolJson {
            name: "echo-bench",
            version: env!("CARGO_PKG_VERSION"),
        },
        command_line: cfg.command_line.clone(),
        label: cfg.label.clone(),
        start_time: humantime::format_rfc3339_micros(start_time).to_string(),
        host: host.clone(),
        pinning: PinningJson {
            client_cpus: cfg.load.client_cpus.clone(),
            server_cpus: cfg.server_cpus.clone(),
        },
        config: ConfigJson {
            mode: if open { "open" } else { "closed" },
            connections: cfg.load.connections,
            size_bytes: cfg.load.size,
            pipeline,
            rate,
            arrival,
            threads: cfg.load.threads,
            busy_poll: cfg.load.busy_poll,
            duration_s: cfg.load.duration.as_secs_f64(),
            warmup_s: cfg.load.warmup.as_secs_f64(),
            rounds: cfg.rounds,
            interval_s: cfg.load.interval.map(|d| d.as_secs_f64()),
            start_at: cfg
                .start_at
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            seed: cfg.seed,
            default_comparison: cfg.default_comparison,
            histogram: HistogramConfigJson {
                unit: "ns",
                lowest: record::LOWEST_NS,
                highest: record::HIGHEST_NS,
                significant_digits: record::SIGFIG,
            },
        },
        rate_shortfall: targets_json.iter().any(|t| t.rate_shortfall),
        errors_total: targets_json.iter().map(|t| t.errors.total).sum(),
        targets: targets_json,
        comparison: comparison(targets),
        incomplete,
        exit_code,
    }
}

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

/// Java HdrHistogram's `subBucketCount` for `sigfig` significant digits.
pub fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest = 2 * 10u64.pow(u32::from(sigfig));
    1u64 << (64 - (largest - 1).leading_zeros())
}

/// Write `h` in HdrHistogram's `outputPercentileDistribution` format, values divided by
/// `value_scale` (use [`HGRM_NS_PER_UNIT`] for milliseconds).
pub fn write_hgrm<W: Write>(w: &mut W, h: &Histogram<u64>, value_scale: f64) -> io::Result<()> {
    writeln!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / value_scale;
        if q < 1.0 {
            writeln!(
                w,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(w, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    writeln!(
        w,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / value_scale,
        h.stdev() / value_scale
    )?;
    writeln!(
        w,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / value_scale,
        h.len()
    )?;
    writeln!(
        w,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    )?;
    Ok(())
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Write the interval log of one target (all its rounds).
pub fn write_hlog<W: Write>(w: &mut W, t: &TargetRun, interval_ns: u64) -> io::Result<()> {
    let Some(base) = t.intervals.first().map(|(start, _, _)| *start) else {
        return Err(io::Error::other("no intervals recorded"));
    };
    writeln!(w, "#[Logged with echo-bench {}]", env!("CARGO_PKG_VERSION"))?;
    writeln!(w, "#[Histogram log format version 1.3]")?;
    writeln!(
        w,
        "#[StartTime: {:.3} (seconds since epoch), {}]",
        epoch_secs(base),
        humantime::format_rfc3339_millis(base)
    )?;
    writeln!(
        w,
        "#[BaseTime: {:.3} (seconds since epoch)]",
        epoch_secs(base)
    )?;
    writeln!(
        w,
        "#[Target {} ({}); values in nanoseconds; Interval_Max in milliseconds; open-loop service times tagged `service`]",
        t.name, t.address
    )?;
    writeln!(
        w,
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
    )?;
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .with_max_value_divisor(1e6)
        .begin_log_with(w, &mut serializer)?;
    let empty = new_histogram();
    let service_tag = Tag::new("service").expect("valid tag");
    for (start, measured_ns, intervals) in &t.intervals {
        let offset = start.duration_since(base).unwrap_or_default();
        let n = measured_ns.div_ceil(interval_ns);
        for idx in 0..n {
            let from = idx * interval_ns;
            let len = interval_ns.min(measured_ns - from);
            let ts = offset + std::time::Duration::from_nanos(from);
            let dur = std::time::Duration::from_nanos(len);
            let (lat, svc) = match intervals.get(&idx) {
                Some((l, s)) => (l, s.as_ref()),
                None => (&empty, None),
            };
            writer
                .write_histogram(lat, ts, dur, None)
                .map_err(|e| io::Error::other(e.to_string()))?;
            if t.service.is_some() {
                writer
                    .write_histogram(svc.unwrap_or(&empty), ts, dur, Some(service_tag))
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_buckets_match_java() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(1), 32);
    }

    #[test]
    fn hgrm_layout_matches_hdrhistogram() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap(); // exact values: below 2048 every value has its own bucket
        }
        let mut out = Vec::new();
        write_hgrm(&mut out, &h, 1.0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // first row: the minimum at percentile 0
        assert_eq!(
            lines[2],
            "       1.000 0.000000000000          1           1.00"
        );
        let last_row = lines[lines.len() - 4];
        assert!(
            last_row.ends_with("1.000000000000       1000"),
            "{last_row}"
        );
        assert!(lines[lines.len() - 3].starts_with("#[Mean    =      500.500, StdDeviation   = "));
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =     1000.000, Total count    =         1000]"
        );
        assert!(lines[lines.len() - 1].starts_with("#[Buckets = "));
        assert!(lines[lines.len() - 1].ends_with("SubBuckets     =         2048]"));
        // the median row
        assert!(lines
            .iter()
            .any(|l| l.starts_with("     500.000 0.500000000000        500           2.00")));
    }
}
