//! What echo-bench reports: the result of a run ([`TargetRun`]) and the JSON report's types
//! ([`JsonReport`] and its parts). [`json`] builds the report from the runs; printers live
//! beside it: [`text`] (the stdout summary) and [`hdr`] (HdrHistogram's `.hgrm` and `.hlog`
//! formats); the comparison statistics are in [`crate::compare`].
//!
//! One result type feeds every printer, so the text, the JSON and the files cannot disagree.
//! Histograms are in nanoseconds; text and JSON show microseconds; `.hgrm` shows milliseconds.

pub mod hdr;
pub mod json;
pub mod text;

use std::net::SocketAddr;
use std::time::SystemTime;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::bottleneck::{ClientCheck, RateInterval};
use crate::compare::{self, ComparisonJson, Series};
use crate::host::HostInfo;
use crate::load::ErrorCounts;
use crate::record::{new_histogram, MergedIntervals};

/// JSON schema version; bump on incompatible changes.
pub const SCHEMA_VERSION: u32 = 5;
/// Bytes per MiB.
pub const MIB: f64 = 1024.0 * 1024.0;

/// One round of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Whether the client was the bottleneck in this round, with the evidence (schema 2).
    #[serde(default)]
    pub client: ClientCheck,
    /// Open loop: the rate intervals whose achieved rate missed the intended one by more than
    /// 1% (schema 2).
    #[serde(default)]
    pub rate_intervals_off: Vec<RateInterval>,
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
    /// The server's `features:` line (spawned servers that print one).
    pub server_features: Option<String>,
    /// PID of the spawned server.
    pub server_pid: Option<u32>,
    /// Per-round records.
    pub rounds: Vec<RoundRecord>,
    /// Merged latency histogram.
    pub latency: Histogram<u64>,
    /// Merged service-time histogram (open loop).
    pub service: Option<Histogram<u64>>,
    /// Merged send-lateness histogram (open loop).
    pub lateness: Option<Histogram<u64>>,
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
            server_features: None,
            server_pid: None,
            rounds: Vec::new(),
            latency: new_histogram(),
            service: open.then(new_histogram),
            lateness: open.then(new_histogram),
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

    /// The rounds in which the client was the bottleneck.
    pub fn client_bound_rounds(&self) -> Vec<&RoundRecord> {
        self.rounds
            .iter()
            .filter(|r| r.client.client_bound)
            .collect()
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyJson {
    /// What the latency is measured from.
    pub basis: String,
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

/// What a report says about a target besides its figures (a run's and an `slo` search's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Name.
    pub name: String,
    /// Address connected to.
    pub address: String,
    /// Command (spawned servers), else null.
    pub spawn_command: Option<String>,
    /// Server's `summary:` line (spawned servers), else null.
    pub server_summary: Option<String>,
    /// Server's `features:` line, verbatim (spawned servers that print one), else null
    /// (schema 2).
    #[serde(default)]
    pub server_features: Option<String>,
    /// PID of the spawned server, else null.
    pub server_pid: Option<u32>,
}

/// One target in the JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetJson {
    /// Which target.
    #[serde(flatten)]
    pub info: TargetInfo,
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
    /// The client was the bottleneck in at least one round (see the rounds' `client`;
    /// schema 2).
    #[serde(default)]
    pub client_bound: bool,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// First error descriptions (connection, seq, offset).
    pub error_samples: Vec<String>,
    /// Latency: from the intended send time (open loop), from the send time (closed loop).
    pub latency: LatencyJson,
    /// Open loop: latency from the actual send time; null in closed loop.
    pub service_time: Option<LatencyJson>,
    /// Open loop: how late sends left against their intended time, for sends due while their
    /// connection had room (schema 2); null in closed loop.
    #[serde(default)]
    pub send_lateness: Option<LatencyJson>,
    /// Server CPU ns per message over all rounds (spawned servers), else null.
    pub server_cpu_ns_per_msg: Option<f64>,
    /// Client CPU ns per message over all rounds.
    pub client_cpu_ns_per_msg: Option<f64>,
    /// Per-round figures.
    pub rounds: Vec<RoundRecord>,
}

/// Tool name and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolJson {
    /// `echo-bench`
    pub name: String,
    /// Package version.
    pub version: String,
}

impl ToolJson {
    /// This program.
    pub fn this() -> ToolJson {
        ToolJson {
            name: "echo-bench".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Pinning in effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinningJson {
    /// Client threads' CPUs (thread i on the i-th, round robin), null if not pinned.
    pub client_cpus: Option<Vec<usize>>,
    /// Spawned servers' CPUs, null if not pinned.
    pub server_cpus: Option<Vec<usize>>,
}

/// Configuration as run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigJson {
    /// `closed` or `open`.
    pub mode: String,
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
    /// Open loop: interval of the intended-vs-achieved rate check, s (schema 2).
    #[serde(default)]
    pub rate_interval_s: Option<f64>,
    /// `--start-at`, RFC3339.
    pub start_at: Option<String>,
    /// Seed.
    pub seed: u64,
    /// True for the built-in comparison of the engines.
    pub default_comparison: bool,
    /// Histogram unit and bounds.
    pub histogram: HistogramConfigJson,
}

/// Histogram settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramConfigJson {
    /// Unit of the recorded values.
    pub unit: String,
    /// Lowest discernible value.
    pub lowest: u64,
    /// Highest trackable value.
    pub highest: u64,
    /// Significant digits.
    pub significant_digits: u8,
}

/// The fields every echo-bench report (a benchmark run, an `slo` search) starts with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportHeader {
    /// Schema version.
    pub schema_version: u32,
    /// Tool and version.
    pub tool: ToolJson,
    /// `run` (a benchmark) or `slo` (schema 2; absent = `run`).
    #[serde(default = "run_command")]
    pub command: String,
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
}

fn run_command() -> String {
    "run".into()
}

/// The whole JSON report of a benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonReport {
    /// What ran, where and how.
    #[serde(flatten)]
    pub header: ReportHeader,
    /// Per-target results.
    pub targets: Vec<TargetJson>,
    /// Comparison (several targets or rounds), else null.
    pub comparison: Option<ComparisonJson>,
    /// Any target missed its open-loop rate by more than 1%.
    pub rate_shortfall: bool,
    /// The client was the bottleneck for any target in any round (schema 2).
    #[serde(default)]
    pub client_bound: bool,
    /// Errors over all targets.
    pub errors_total: u64,
    /// Rounds not run because of an error or interrupt.
    pub incomplete: bool,
    /// Default comparison: the engines whose server could not start, not in `targets`
    /// (schema 3).
    #[serde(default)]
    pub skipped: Vec<SkippedTarget>,
    /// The exit code echo-bench returns.
    pub exit_code: u8,
}

/// A target of the default comparison whose server exited before it was ready, and was left
/// out of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedTarget {
    /// Name (the engine).
    pub name: String,
    /// The command that failed.
    pub spawn_command: String,
    /// Why: the server's last stderr line (or how it ended, if it printed none).
    pub reason: String,
}

impl SkippedTarget {
    /// `NAME could not start: REASON`.
    pub fn line(&self) -> String {
        format!("{} could not start: {}", self.name, self.reason)
    }
}

/// An open-loop run reached its rate when it completed at least this fraction of it. Below it,
/// the run measured a backlog rather than the latency at that rate (the `WARNING:` line,
/// `rate_shortfall`, the suite's per-round check, `slo`'s trial validity).
pub const MIN_ACHIEVED_RATE_RATIO: f64 = 0.99;

/// Whether `achieved` messages/s reached the `target` rate (see [`MIN_ACHIEVED_RATE_RATIO`]).
pub fn rate_reached(achieved: f64, target: f64) -> bool {
    achieved >= MIN_ACHIEVED_RATE_RATIO * target
}

/// Live runs as the comparison reads them.
pub fn series(targets: &[TargetRun]) -> Vec<Series<'_>> {
    targets
        .iter()
        .map(|t| Series {
            name: &t.name,
            rounds: &t.rounds,
        })
        .collect()
}

/// The comparison of live runs (see [`compare::comparison`]).
pub fn comparison(targets: &[TargetRun]) -> Option<ComparisonJson> {
    compare::comparison(&series(targets))
}
