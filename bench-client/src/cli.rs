//! Command-line flags (clap derive) and their value parsers.
//!
//! [`Cli`] is the raw, syntactically checked command line; [`crate::config`] turns it into a
//! validated configuration. Value parsers are wired here so that every malformed value (`-c 0`,
//! `-d banana`, `--size 4`) is rejected by clap with exit code 2 before anything runs. Sizes,
//! durations, CPU lists and rates are read by `echo_units`, which the server uses too, so a value
//! means the same on both command lines; the functions here only add echo-bench's own bounds.
//! [`parse_args`] shortens clap's multi-line errors to the one line the rest of the tool uses.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use echo_units::{parse_cpu_list, CpuList};

use crate::message::HEADER_BYTES;

/// Largest accepted `--rate` (far beyond anything loopback TCP can echo).
pub const MAX_RATE: f64 = 1e9;
/// Smallest accepted `--rate`.
pub const MIN_RATE: f64 = 0.001;
/// Longest accepted duration of any flag.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Latest accepted `--start-at`: 9999-12-31T23:59:59Z.
pub const MAX_START_AT_SECS: u64 = 253_402_300_799;
/// Largest accepted `--size`.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

const LONG_ABOUT: &str = "\
Load generator for TCP echo servers: closed or open loop, every echoed byte verified, \
latency recorded in HdrHistograms, interleaved comparison of several servers.

With no TARGET and no --spawn, runs the default comparison of the three engines: starts the \
uring-echo binary found beside echo-bench (or named by $ECHO_BENCH_SERVER) with `--runtime \
epoll`, `--runtime uring` and `--runtime uring-multishot` (and `--threads` = its CPU count when \
pinned), pins server and client to different CPUs when there are at least two, and runs 9 \
interleaved rounds of 800 ms each (after 300 ms of warmup) per engine, with 50 connections and \
128-byte messages: about 30 s in all. Nine short rounds rather than fewer long ones because \
from nine rounds on, the 95% interval of a median leaves out the two most extreme rounds, \
so one round disturbed by other work on the machine does not widen it. The last lines say \
which engine is fastest by server CPU per message and by messages/s, and whether its lead is \
outside the noise (no messages/s verdict when the client was the bottleneck). An engine whose \
server cannot start (e.g. io_uring unavailable) is left out with the server's reason, and the \
others are compared. Build both binaries first:
    cargo build --release --workspace && target/release/echo-bench

Latencies are measured in nanoseconds (histograms: 1 ns .. 1 h, 3 significant digits) and \
printed in microseconds; .hgrm files are in milliseconds.";

const AFTER_LONG_HELP: &str = "\
Exit status: 0 success (in the default comparison, also when one engine could not start but two \
were compared); 1 run failed (connection refused/reset, echo mismatch, EOF or short read, no \
message completed, server failed to start, fewer than two engines started in the default \
comparison, existing output file, I/O error); 2 invalid command line; 130 interrupted \
(SIGINT/SIGTERM; spawned servers are stopped first).

Examples:
    echo-bench 127.0.0.1:7000
    echo-bench -c 100 -d 30s --pipeline 4 --json run.json --hgrm run.hgrm 127.0.0.1:7000
    echo-bench --rate 50k --arrival poisson --hlog run.hlog --plot run.svg [::1]:7000
    echo-bench --rounds 7 --spawn 'uring-echo --runtime uring --listen 127.0.0.1:0' \\
               --spawn 'uring-echo --runtime epoll --listen 127.0.0.1:0' --name uring --name epoll
    echo-bench merge host1.hlog host2.hlog --hgrm total.hgrm
    echo-bench slo --max-latency 500us --plot curve.svg --spawn 'uring-echo --listen 127.0.0.1:0'
    echo-bench compare monday.json tuesday.json";

/// echo-bench: verify and measure TCP echo servers.
#[derive(Debug, Parser)]
#[command(
    name = "echo-bench",
    version,
    about = "Load generator for TCP echo servers: verified bytes, HdrHistogram latency, interleaved comparison",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Subcommand (omit to run a benchmark).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Benchmark flags.
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Merge interval logs (.hlog) from several echo-bench processes into one histogram.
    ///
    /// Sums every untagged interval (or every interval with --tag) of every file and prints
    /// the merged percentiles. This is how a server loaded from several client processes or
    /// machines is measured: start the clients with the same --start-at and --hlog, then merge.
    /// Values are taken to be nanoseconds, as echo-bench writes them. A corrupted or truncated
    /// file is an error (exit 1).
    Merge(MergeArgs),
    /// Find the highest rate at which each target meets a latency SLO.
    ///
    /// Per target, searches the highest offered rate (open loop) at which the --quantile of
    /// the latency, measured from each message's intended send time, stays at or below
    /// --max-latency. Each probed rate gets repeated short trials (-d each, 1s by default,
    /// after --warmup, 250ms by default): a rate passes when --passes of --trials valid trials
    /// pass and fails when so many fail that it cannot; a trial in which the client was the
    /// bottleneck is invalid and counts for neither. The result is a lower bound (highest rate
    /// shown to pass) and an upper bound (lowest rate shown to fail). The search starts at the
    /// rate a closed-loop probe reaches (or --start-rate), brackets, then bisects until the
    /// bounds are within --precision, or --max-time runs out (said loudly). Several targets
    /// are searched interleaved, one trial each in a shuffled order, and their bounds compared.
    /// Exit status 1 when a trial had errors or a target got no bound at all.
    Slo(Box<SloArgs>),
    /// Compare saved JSON reports (of runs, or of slo searches).
    ///
    /// Runs: the targets of all files are compared against the first one with the same
    /// per-round statistics as a live comparison (rounds paired by number). Searches: the SLO
    /// bounds are compared. Every difference of configuration, host, kernel or server features
    /// between the files (and of server features between targets) is a warning line.
    Compare(CompareArgs),
}

/// `--plot` in `slo`, which draws the search's curve rather than a run's percentiles.
const SLO_PLOT_HELP: &str = "Write an SVG latency–throughput curve: offered rate on x, p50, p99 \
and p99.9 latency on y (log scale) at each rate probed, the SLO as a horizontal line, each \
target's lower bound as a vertical one";

/// `--interval` in `slo`, which writes no interval log.
const SLO_INTERVAL_HELP: &str = "Interval of the open-loop check of intended vs achieved rate \
in each trial (at least 1ms; the check widens it so that a trial has at most 10,000 intervals)";

/// Flags of `echo-bench slo`. The load flags are a benchmark run's, so slo's help gives
/// `--plot` and `--interval` their meaning here and hides the flags slo refuses
/// ([`crate::slo::SloConfig`] says why when they are given anyway). `--arrival` needs no
/// `--rate` here: slo sets the rate of every trial.
#[derive(Debug, Args)]
#[command(
    mut_arg("plot", |a| a.help(SLO_PLOT_HELP)),
    mut_arg("interval", |a| a.help(SLO_INTERVAL_HELP)),
    mut_arg("arrival", |a| a.requires(clap::builder::Resettable::Reset)),
    mut_arg("rate", |a| a.hide(true)),
    mut_arg("rounds", |a| a.hide(true)),
    mut_arg("start_at", |a| a.hide(true)),
    mut_arg("hgrm", |a| a.hide(true)),
    mut_arg("hlog", |a| a.hide(true))
)]
pub struct SloArgs {
    /// The SLO's latency bound (e.g. 500us, 2ms): met when the --quantile of the latency from
    /// the intended send time is at most this.
    #[arg(long, value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub max_latency: Duration,
    /// The SLO's percentile (e.g. 99, 99.9, 50).
    #[arg(long, value_name = "PERCENT", default_value = "99", value_parser = parse_quantile)]
    pub quantile: f64,
    /// Stop when the bounds are this close: (upper - lower) / upper, as a fraction or a
    /// percentage (0.05, 5%).
    #[arg(long, value_name = "WIDTH", default_value = "5%", value_parser = parse_precision)]
    pub precision: f64,
    /// Time budget of the whole search (all targets); the search stops, and says so, when the
    /// next trial would not fit.
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = parse_nonzero_duration)]
    pub max_time: Duration,
    /// First rate to probe, instead of the rate a closed-loop probe of each target reaches.
    #[arg(long, value_name = "MSGS_PER_S", value_parser = parse_rate)]
    pub start_rate: Option<f64>,
    /// Valid trials that may be needed to decide a rate (n).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = parse_positive)]
    pub trials: usize,
    /// Passing trials that make a rate pass (k of n); a rate fails once n - k + 1 trials failed.
    #[arg(long, value_name = "K", default_value_t = 2, value_parser = parse_positive)]
    pub passes: usize,
    /// Load flags, as for a benchmark run (not --rate, --rounds, --start-at, --hgrm, --hlog).
    #[command(flatten)]
    pub load: BenchArgs,
}

/// Flags of `echo-bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// JSON reports written with --json; ratios are against the first target of the first.
    #[arg(value_name = "FILE.json", required = true)]
    pub files: Vec<PathBuf>,
}

/// Flags of `echo-bench merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Interval log files to merge.
    #[arg(value_name = "FILE.hlog", required = true)]
    pub files: Vec<PathBuf>,
    /// Also write the merged percentile distribution (HdrHistogram .hgrm format, milliseconds).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Also write the merged result as JSON (counts, percentiles, base64 V2-deflate histogram).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Merge the intervals carrying this tag (e.g. `service` for open-loop service times)
    /// instead of the untagged ones.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
}

/// Open-loop arrival process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Evenly spaced sends (connections phase-shifted so the total is evenly spaced too).
    Constant,
    /// Exponentially distributed gaps (a Poisson process of the total rate).
    Poisson,
}

/// A syntactically valid `host:port` (resolved later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// As written on the command line.
    pub text: String,
    /// Host part, without brackets.
    pub host: String,
    /// Port (1..=65535).
    pub port: u16,
}

/// Benchmark flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Echo servers to load: host:port, IPv6 as [::1]:port. Several targets are compared.
    ///
    /// Targets come first in the comparison order, then --spawn servers; ratios are relative
    /// to the first one.
    #[arg(value_name = "TARGET", value_parser = parse_target)]
    pub targets: Vec<TargetSpec>,

    /// Connections per target [default: 50].
    #[arg(short = 'c', long, value_name = "N", value_parser = parse_positive)]
    pub connections: Option<usize>,

    /// Measured duration of each run, e.g. 500ms, 10s, 1m; a bare number is seconds [default:
    /// 10s; 800ms in the default comparison; 1s per slo trial].
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub duration: Option<Duration>,

    /// Warmup before each measured run; messages completing during it are not recorded
    /// [default: 1s; 300ms in the default comparison; 250ms per slo trial].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// Message size in bytes: 64, 1KiB, 4k (every unit is binary: k, KB, KiB = 1024; M, MB,
    /// MiB = 1024²). At least 12 (the header: connection id and sequence number) [default: 128].
    #[arg(short = 's', long, value_name = "BYTES", value_parser = parse_message_size)]
    pub size: Option<usize>,

    /// Messages in flight per connection [default: 1]. Closed loop: sends whenever fewer are
    /// outstanding. Open loop: a due message waits while N are outstanding (the connection
    /// falls behind, then catches up; its latency still counts from the intended time).
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub pipeline: Option<usize>,

    /// Client OS threads, each with its own single-threaded runtime and share of the
    /// connections [default: CPUs available to the client (--client-cpus), at most --connections].
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub threads: Option<usize>,

    /// Never let the client threads sleep: keep polling sockets and timers. Burns the client
    /// CPUs (pin them with --client-cpus), but keeps the client's own wake-up latency (tens of
    /// µs on virtual machines) out of the measured latency when the load is light.
    #[arg(long)]
    pub busy_poll: bool,

    /// Open loop: total messages per second over all connections of a target (10000, 10k,
    /// 1.5M; 0.001 to 1e9; k and M are decimal here, unlike in sizes: 10k = 10000). Latency is then measured from each message's intended send time (corrected for
    /// coordinated omission) and, separately, from its actual send time (service time).
    #[arg(long, value_name = "MSGS_PER_S", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Open loop: arrival process of the intended send times [default: constant].
    #[arg(long, value_enum, value_name = "KIND", requires = "rate")]
    pub arrival: Option<Arrival>,

    /// Write a JSON report (schema in the README) to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write the latency percentile distribution in HdrHistogram's .hgrm text format
    /// (milliseconds). With several targets, one file per target: NAME is inserted before
    /// the extension (run.hgrm -> run.uring.hgrm).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Write an HdrHistogram interval log (V2 compressed, values in ns) with one histogram per
    /// --interval of the measured window; open-loop service times are tagged `service`. With
    /// several targets, one file per target (like --hgrm).
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,

    /// Interval of the --hlog histograms and of the open-loop check of intended vs achieved
    /// rate per interval (at least 1ms; the rate check widens it so that a run has at most
    /// 10,000 intervals).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Write an SVG latency-by-percentile plot (log percentile axis, one line per target).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Overwrite existing output files (otherwise an existing file is an error).
    #[arg(long)]
    pub force: bool,

    /// No progress bar and no per-round lines on stderr.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Free-form label stored in the JSON report (e.g. a commit or a machine name).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,

    /// Start the measured window at this wall-clock time, so that several echo-bench
    /// processes (on one or several hosts) measure the same window: Unix seconds (1767225600,
    /// 1767225600.5) or RFC3339 UTC (2026-01-01T00:00:00Z). Connections are made first, the
    /// warmup runs just before. Single target and single round only, at most 24 h ahead.
    #[arg(long, value_name = "TIME", value_parser = parse_start_at)]
    pub start_at: Option<SystemTime>,

    /// Start a server with this command (split like a shell would, no shell involved), wait
    /// for its `listening on <addr>` stdout line, benchmark it, and stop it with SIGTERM
    /// (SIGKILL after 5 s). Repeatable. Adds server CPU time per message to the report.
    #[arg(long, value_name = "CMD")]
    pub spawn: Vec<String>,

    /// Name of the targets in output, in order (TARGETs first, then --spawn). Repeatable.
    /// [default: the TARGET as written; spawn1, spawn2, ... for --spawn]
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,

    /// Interleaved rounds: each round runs every target once, in a freshly shuffled order;
    /// medians, spread and ratios are computed over rounds [default: 1; 9 in the default
    /// comparison].
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub rounds: Option<usize>,

    /// Pin spawned servers to these CPUs (e.g. 0 or 0-1; a CPU listed twice is an error)
    /// [default comparison: the first allowed CPU, when there are at least two].
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub server_cpus: Option<CpuList>,

    /// Pin the client threads to these CPUs, thread i to the i-th CPU of the list in ascending
    /// order (round robin) [default comparison: the second allowed CPU, when there are at least
    /// two].
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub client_cpus: Option<CpuList>,

    /// How long a --spawn server may take to print its `listening on` line.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_nonzero_duration)]
    pub spawn_timeout: Duration,

    /// Timeout of each TCP connect.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_nonzero_duration)]
    pub connect_timeout: Duration,

    /// Seed for the round order and Poisson arrivals (runs with the same seed repeat them).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
}

/// Parse the process arguments. On a usage error print one line `echo-bench: ...` and return
/// exit code 2; `--help`/`--version` print and return 0.
pub fn parse_args<I, T>(args: I) -> Result<Cli, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::error::ErrorKind;
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let _ = e.print();
                Err(ExitCode::SUCCESS)
            }
            _ => {
                eprintln!("echo-bench: {}", one_line_error(&e.to_string()));
                Err(ExitCode::from(2))
            }
        },
    }
}

/// The first paragraph of a clap error, on one line, without the `error: ` prefix.
pub fn one_line_error(rendered: &str) -> String {
    let first_paragraph: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = first_paragraph.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

/// Parse a positive integer (`0` is refused).
pub fn parse_positive(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("expected a positive integer, got '{s}'"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// Parse a duration ([`echo_units::parse_duration`]: `2` = 2 s, `0.5`, `500ms`, `1m30s`);
/// zero is allowed, more than [`MAX_DURATION`] is refused (so that nanosecond arithmetic on it
/// can never overflow).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = echo_units::parse_duration(s)?;
    if d > MAX_DURATION {
        return Err("must be at most 365 days".into());
    }
    Ok(d)
}

/// Like [`parse_duration`], refusing zero.
pub fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Parse `--interval`: a duration of at least 1 ms (each interval is a serialised histogram).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

/// Parse `--size`: [`echo_units::parse_size`] plus the header minimum and [`MAX_MESSAGE_BYTES`].
pub fn parse_message_size(s: &str) -> Result<usize, String> {
    let n = echo_units::parse_size(s)?;
    if n < HEADER_BYTES {
        return Err(format!(
            "must be at least {HEADER_BYTES} bytes (the message header: connection id and sequence number)"
        ));
    }
    if n > MAX_MESSAGE_BYTES {
        return Err(format!("must be at most {} MiB", MAX_MESSAGE_BYTES >> 20));
    }
    Ok(n)
}

/// Parse `--rate`: [`echo_units::parse_rate`] (decimal suffixes: `10k` = 10000) within
/// [`MIN_RATE`]..=[`MAX_RATE`].
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v = echo_units::parse_rate(s)?;
    if v > MAX_RATE {
        return Err(format!("must be at most {MAX_RATE:.0} messages per second"));
    }
    if v < MIN_RATE {
        return Err(format!("must be at least {MIN_RATE} messages per second"));
    }
    Ok(v)
}

/// Parse a percentile in (0, 100): `99`, `99.9`, `p99.9`.
pub fn parse_quantile(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v: f64 = t
        .strip_prefix(['p', 'P'])
        .unwrap_or(t)
        .parse()
        .map_err(|_| format!("expected a percentile like 99 or 99.9, got '{s}'"))?;
    if !(v > 0.0 && v < 100.0) {
        return Err("must be between 0 and 100 (exclusive)".into());
    }
    Ok(v)
}

/// Parse a relative width: a fraction in (0, 1) or a percentage (`0.05`, `5%`).
pub fn parse_precision(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (t, 1.0),
    };
    let v =
        num.trim().parse::<f64>().map_err(|_| {
            format!("expected a fraction like 0.05 or a percentage like 5%, got '{s}'")
        })? * scale;
    if !(v > 0.0 && v < 1.0) {
        return Err("must be between 0 and 1 (0% and 100%), exclusive".into());
    }
    Ok(v)
}

/// Parse a `host:port` target (IPv6 in brackets).
pub fn parse_target(s: &str) -> Result<TargetSpec, String> {
    let t = s.trim();
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("expected [IPv6]:port, got '{s}'"))?;
        (host, port)
    } else {
        let (host, port) = t
            .rsplit_once(':')
            .ok_or_else(|| format!("expected host:port, got '{s}'"))?;
        if host.contains(':') {
            return Err(format!("IPv6 addresses need brackets: [{host}]:{port}"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(format!("missing host in '{s}'"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid port '{port}' in '{s}' (expected 1-65535)"))?;
    if port == 0 {
        return Err(format!("port 0 in '{s}' cannot be connected to"));
    }
    Ok(TargetSpec {
        text: t.to_string(),
        host: host.to_string(),
        port,
    })
}

/// Parse `--start-at`: Unix seconds (fractional allowed) or RFC3339 UTC.
pub fn parse_start_at(s: &str) -> Result<SystemTime, String> {
    let t = s.trim();
    let out_of_range = || "must be between 1970 and 9999-12-31T23:59:59Z".to_string();
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || secs <= 0.0 {
            return Err("Unix time must be positive".into());
        }
        if secs > MAX_START_AT_SECS as f64 {
            return Err(out_of_range());
        }
        let d = Duration::try_from_secs_f64(secs).map_err(|_| out_of_range())?;
        return UNIX_EPOCH.checked_add(d).ok_or_else(out_of_range);
    }
    humantime::parse_rfc3339_weak(t).map_err(|e| {
        format!("expected Unix seconds (1767225600.5) or RFC3339 UTC (2026-01-01T00:00:00Z): {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn message_sizes() {
        assert_eq!(parse_message_size("12"), Ok(12));
        assert_eq!(parse_message_size("4k"), Ok(4096));
        assert_eq!(parse_message_size("64MiB"), Ok(MAX_MESSAGE_BYTES));
        assert!(parse_message_size("0").unwrap_err().contains("at least 12"));
        assert!(parse_message_size("11").is_err());
        assert!(parse_message_size("65M")
            .unwrap_err()
            .contains("at most 64 MiB"));
        assert!(parse_message_size("1G")
            .unwrap_err()
            .contains("at most 64 MiB"));
        assert!(parse_message_size("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
    }

    #[test]
    fn duration_bounds() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("365days"), Ok(MAX_DURATION));
        assert!(parse_duration("365days 1s")
            .unwrap_err()
            .contains("at most 365 days"));
        assert!(parse_duration("100000000y").is_err());
        assert!(parse_duration("banana").is_err());
        assert!(parse_nonzero_duration("0s").is_err());
        assert!(parse_nonzero_duration("0").is_err());
        assert_eq!(parse_interval("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_interval("0.001"), Ok(Duration::from_millis(1)));
        assert!(parse_interval("1ns").is_err());
        assert!(parse_interval("999us").is_err());
    }

    #[test]
    fn rate_bounds() {
        assert_eq!(parse_rate("10k"), Ok(10_000.0));
        assert_eq!(parse_rate("0.001"), Ok(MIN_RATE));
        assert_eq!(parse_rate("1000M"), Ok(MAX_RATE));
        assert!(parse_rate("2000M").unwrap_err().contains("at most"));
        assert!(parse_rate("1e-300").unwrap_err().contains("at least"));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    /// The values that used to mean something else (or nothing) to echo-bench than to the
    /// server, through echo-bench's own command line.
    #[test]
    fn shared_meanings_on_the_command_line() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["echo-bench"].iter().chain(args).chain(&["127.0.0.1:1"]))
        };
        let cli = parse(&["-d", "2", "--warmup", "0.5", "-s", "1kb"]).unwrap();
        assert_eq!(cli.bench.duration, Some(Duration::from_secs(2)));
        assert_eq!(cli.bench.warmup, Some(Duration::from_millis(500)));
        assert_eq!(cli.bench.size, Some(1024));
        let cli = parse(&["--server-cpus", "0-1", "--client-cpus", "2"]).unwrap();
        assert_eq!(cli.bench.server_cpus.unwrap().as_slice(), &[0, 1]);
        let e = parse(&["--client-cpus", "1,1"]).unwrap_err();
        let line = one_line_error(&e.to_string());
        assert!(line.contains("CPU 1 is listed twice"), "{line}");
    }

    #[test]
    fn quantiles_and_precisions() {
        assert_eq!(parse_quantile("99"), Ok(99.0));
        assert_eq!(parse_quantile("p99.9"), Ok(99.9));
        assert!(parse_quantile("100").is_err());
        assert!(parse_quantile("0").is_err());
        assert!(parse_quantile("high").is_err());
        assert_eq!(parse_precision("5%"), Ok(0.05));
        assert_eq!(parse_precision("0.1"), Ok(0.1));
        assert!(parse_precision("5").is_err());
        assert!(parse_precision("0").is_err());
        assert!(parse_precision("100%").is_err());
    }

    #[test]
    fn slo_and_compare_subcommands_parse() {
        let cli = Cli::try_parse_from([
            "echo-bench",
            "slo",
            "--max-latency",
            "500us",
            "--quantile",
            "99.9",
            "-c",
            "4",
            "127.0.0.1:1",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Slo(a)) => {
                assert_eq!(a.max_latency, Duration::from_micros(500));
                assert_eq!(a.quantile, 99.9);
                assert_eq!((a.trials, a.passes, a.precision), (3, 2, 0.05));
                assert_eq!(a.load.connections, Some(4));
                assert_eq!(a.load.targets.len(), 1);
            }
            _ => panic!("slo not parsed"),
        }
        assert!(Cli::try_parse_from(["echo-bench", "slo", "127.0.0.1:1"]).is_err());
        let cli = Cli::try_parse_from(["echo-bench", "compare", "a.json", "b.json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Compare(c)) if c.files.len() == 2));
    }

    #[test]
    fn targets() {
        let t = parse_target("127.0.0.1:7000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 7000));
        let t = parse_target("[::1]:7000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7000));
        let t = parse_target("localhost:80").unwrap();
        assert_eq!(t.host, "localhost");
        assert!(parse_target("nonsense:xx")
            .unwrap_err()
            .contains("invalid port"));
        assert!(parse_target("127.0.0.1").is_err());
        assert!(parse_target("::1:80").unwrap_err().contains("brackets"));
        assert!(parse_target(":80").is_err());
        assert!(parse_target("h:0").is_err());
        assert!(parse_target("h:70000").is_err());
    }

    #[test]
    fn start_at() {
        assert_eq!(
            parse_start_at("1767225600"),
            Ok(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        );
        assert_eq!(
            parse_start_at("1767225600.5"),
            Ok(UNIX_EPOCH + Duration::from_millis(1_767_225_600_500))
        );
        assert_eq!(
            parse_start_at("2026-01-01T00:00:00Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        );
        assert!(parse_start_at("tomorrow").is_err());
        assert!(parse_start_at("999999999999").is_err());
        assert!(parse_start_at("1e300").is_err());
        assert!(parse_start_at("253402300799").is_ok());
        assert!(parse_start_at("-5").is_err());
    }

    #[test]
    fn clap_errors_become_one_line() {
        let e = Cli::try_parse_from(["echo-bench", "-c", "0", "127.0.0.1:1"]).unwrap_err();
        let line = one_line_error(&e.to_string());
        assert!(!line.contains('\n'));
        assert!(
            line.contains("--connections") && line.contains("at least 1"),
            "{line}"
        );
        let e = Cli::try_parse_from(["echo-bench", "merge"]).unwrap_err();
        let line = one_line_error(&e.to_string());
        assert!(line.contains("FILE.hlog"), "{line}");
    }

    #[test]
    fn merge_subcommand_and_targets_parse() {
        let cli = Cli::try_parse_from(["echo-bench", "merge", "a.hlog", "b.hlog", "--hgrm", "x"])
            .unwrap();
        match cli.command {
            Some(Command::Merge(m)) => {
                assert_eq!(m.files.len(), 2);
                assert_eq!(m.hgrm, Some(PathBuf::from("x")));
            }
            _ => panic!("merge not parsed"),
        }
        let cli = Cli::try_parse_from(["echo-bench", "-c", "3", "127.0.0.1:1", "[::1]:2"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.bench.targets.len(), 2);
        assert_eq!(cli.bench.connections, Some(3));
        assert!(Cli::try_parse_from(["echo-bench", "--arrival", "poisson", "h:1"]).is_err());
    }

    #[test]
    fn slo_takes_an_arrival_process_without_a_rate() {
        let args = [
            "echo-bench",
            "slo",
            "--max-latency",
            "1ms",
            "--arrival",
            "poisson",
        ];
        let cli = Cli::try_parse_from(args.iter().chain(&["h:1"])).unwrap();
        match cli.command {
            Some(Command::Slo(s)) => assert_eq!(s.load.arrival, Some(Arrival::Poisson)),
            _ => panic!("slo not parsed"),
        }
    }
}
