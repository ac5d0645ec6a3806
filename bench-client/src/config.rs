//! Validated configuration: [`BenchConfig::from_args`] turns the raw [`BenchArgs`] into what
//! the engine runs, filling mode-dependent defaults (the default comparison spawns the three
//! engines, uses shorter runs and pins CPUs), resolving targets and checking combinations clap cannot express.
//! Everything here fails with a one-line `anyhow` error before any connection is made.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};

pub use crate::cli::Arrival;
use crate::cli::BenchArgs;
use crate::host;

/// How far in the future `--start-at` may be.
pub const MAX_START_AT_AHEAD: Duration = Duration::from_secs(24 * 3600);
/// Most interval histograms one `--hlog` run may produce (per target).
pub const MAX_INTERVALS: u64 = 1_000_000;
/// Most rate intervals per run: longer runs get longer rate intervals than `--interval`.
pub const MAX_RATE_INTERVALS: u64 = 10_000;
/// Default connections per target.
pub const DEFAULT_CONNECTIONS: usize = 50;
/// Default message size.
pub const DEFAULT_SIZE: usize = 128;
/// Default measured duration of a run.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Default warmup.
pub const DEFAULT_WARMUP: Duration = Duration::from_secs(1);
/// Default comparison: the engines, `uring-echo --runtime NAME`, in comparison order (the first
/// is the baseline of the table's ratios: epoll, which needs no io_uring and so always starts).
pub const DEFAULT_COMPARISON_ENGINES: [&str; 3] = ["epoll", "uring", "uring-multishot"];
/// Default comparison: rounds. Nine is the fewest for which the 95% interval of a median drops
/// the extreme rounds (`[x(2), x(8)]`), so one disturbed round on a busy machine cannot widen it.
pub const DEFAULT_COMPARISON_ROUNDS: usize = 9;
/// Default comparison: measured duration per round (9 rounds × 3 engines × 1.1 s ≈ 30 s).
pub const DEFAULT_COMPARISON_DURATION: Duration = Duration::from_millis(800);
/// Default comparison: warmup per round.
pub const DEFAULT_COMPARISON_WARMUP: Duration = Duration::from_millis(300);
/// Environment variable naming the uring-echo binary of the default comparison (for
/// developers and tests; default: the one beside echo-bench).
pub const SERVER_ENV: &str = "ECHO_BENCH_SERVER";

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Each connection sends as soon as fewer than `pipeline` messages are in flight.
    Closed,
    /// Messages are sent at `rate` per second in total, on the given arrival process.
    Open {
        /// Total messages per second per target.
        rate: f64,
        /// Arrival process.
        arrival: Arrival,
    },
}

/// What one run against one target does.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Connections.
    pub connections: usize,
    /// Message size in bytes.
    pub size: usize,
    /// Closed or open loop.
    pub mode: Mode,
    /// Messages in flight per connection (at most).
    pub pipeline: usize,
    /// Client threads.
    pub threads: usize,
    /// Warmup.
    pub warmup: Duration,
    /// Measured duration.
    pub duration: Duration,
    /// Interval-log granularity, when an interval log is wanted.
    pub interval: Option<Duration>,
    /// Open loop: granularity of the intended-vs-achieved rate check (`--interval`, widened so
    /// that a run has at most [`MAX_RATE_INTERVALS`]).
    pub rate_interval: Duration,
    /// Open loop: count messages left incomplete at the deadline that were due more than this
    /// long before it (set by `slo` to its latency bound).
    pub overdue_after: Option<Duration>,
    /// Open loop: the send-lateness p99 limit is at most this (set by `slo`: a share of its
    /// latency bound, so that the client's own lateness cannot decide a verdict).
    pub lateness_cap: Option<Duration>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Client threads never sleep.
    pub busy_poll: bool,
    /// Seed (Poisson arrivals).
    pub seed: u64,
    /// CPUs for the client threads.
    pub client_cpus: Option<Vec<usize>>,
}

/// Where a target comes from.
#[derive(Debug, Clone)]
pub enum TargetKind {
    /// An already running server.
    Address {
        /// Resolved address.
        addr: SocketAddr,
    },
    /// A server echo-bench starts itself.
    Spawn {
        /// The command as given.
        command: String,
        /// The command split into words.
        argv: Vec<String>,
    },
}

/// One target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Display name (also the per-target file suffix and hlog-safe).
    pub name: String,
    /// Address or command.
    pub kind: TargetKind,
}

/// Output files.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// `--json`
    pub json: Option<PathBuf>,
    /// `--hgrm`
    pub hgrm: Option<PathBuf>,
    /// `--hlog`
    pub hlog: Option<PathBuf>,
    /// `--plot`
    pub plot: Option<PathBuf>,
    /// `--force`
    pub force: bool,
}

/// The validated benchmark configuration.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Per-run load.
    pub load: LoadConfig,
    /// Targets in comparison order.
    pub targets: Vec<TargetConfig>,
    /// Interleaved rounds.
    pub rounds: usize,
    /// CPUs for spawned servers.
    pub server_cpus: Option<Vec<usize>>,
    /// Ready-line timeout of spawned servers.
    pub spawn_timeout: Duration,
    /// Common wall-clock start of the measured window.
    pub start_at: Option<SystemTime>,
    /// Output files.
    pub outputs: Outputs,
    /// `--quiet`
    pub quiet: bool,
    /// `--label`
    pub label: Option<String>,
    /// Seed for the round order.
    pub seed: u64,
    /// True when no target was given and the built-in comparison of the engines runs
    /// ([`DEFAULT_COMPARISON_ENGINES`]).
    pub default_comparison: bool,
    /// The command line, for the JSON report.
    pub command_line: Vec<String>,
}

/// The `uring-echo` binary of the default comparison: `$ECHO_BENCH_SERVER` if set, else the one
/// beside the running executable. Fails with a one-line hint when it does not exist.
pub fn default_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(SERVER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{SERVER_ENV}={} names no file (the default comparison runs that server)",
                path.display()
            );
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot locate the echo-bench executable")?;
    let dir = exe
        .parent()
        .context("echo-bench executable has no parent directory")?;
    let server = dir.join("uring-echo");
    if !server.is_file() {
        bail!(
            "the default comparison needs the uring-echo server beside echo-bench, but {} \
             does not exist: run `cargo build --release --workspace && target/release/echo-bench`",
            server.display()
        );
    }
    Ok(server)
}

/// Validate a target name: it becomes part of file names and interval-log tags.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == ',' || c == '/' || c.is_control())
    {
        bail!("invalid --name '{name}': must be non-empty without spaces, commas or slashes");
    }
    Ok(())
}

/// Insert `.NAME` before the extension of `path` when there are several targets.
pub fn per_target_path(path: &Path, name: &str, n_targets: usize) -> PathBuf {
    if n_targets <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = match path.extension() {
        Some(ext) => format!("{stem}.{name}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{name}"),
    };
    path.with_file_name(file)
}

fn resolve(host: &str, port: u16, text: &str) -> anyhow::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve target {text}"))?
        .next()
        .with_context(|| format!("cannot resolve target {text}: no addresses"))
}

impl BenchConfig {
    /// Validate `args`. `command_line` is stored for the report.
    pub fn from_args(args: &BenchArgs, command_line: Vec<String>) -> anyhow::Result<BenchConfig> {
        let default_comparison = args.targets.is_empty() && args.spawn.is_empty();
        let allowed = host::allowed_cpus().unwrap_or_default();

        let mut server_cpus = args.server_cpus.as_ref().map(|c| c.as_slice().to_vec());
        let mut client_cpus = args.client_cpus.as_ref().map(|c| c.as_slice().to_vec());
        if default_comparison
            && server_cpus.is_none()
            && client_cpus.is_none()
            && allowed.len() >= 2
        {
            server_cpus = Some(vec![allowed[0]]);
            client_cpus = Some(vec![allowed[1]]);
        }
        if let Some(c) = &server_cpus {
            host::check_cpus("--server-cpus", c)?;
            if !default_comparison && args.spawn.is_empty() {
                bail!("--server-cpus pins spawned servers: it needs --spawn (or the default comparison)");
            }
        }
        if let Some(c) = &client_cpus {
            host::check_cpus("--client-cpus", c)?;
        }

        let mut targets = Vec::new();
        if default_comparison {
            let server = default_server_binary()?;
            for runtime in DEFAULT_COMPARISON_ENGINES {
                let mut argv = vec![
                    server.display().to_string(),
                    "--runtime".into(),
                    runtime.into(),
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                ];
                if let Some(c) = &server_cpus {
                    argv.push("--threads".into());
                    argv.push(c.len().to_string());
                }
                targets.push(TargetConfig {
                    name: runtime.into(),
                    kind: TargetKind::Spawn {
                        command: shell_words::join(&argv),
                        argv,
                    },
                });
            }
        }
        for t in &args.targets {
            let addr = resolve(&t.host, t.port, &t.text)?;
            targets.push(TargetConfig {
                name: t.text.clone(),
                kind: TargetKind::Address { addr },
            });
        }
        for (i, cmd) in args.spawn.iter().enumerate() {
            let argv = shell_words::split(cmd)
                .map_err(|e| anyhow::anyhow!("cannot parse --spawn '{cmd}': {e}"))?;
            if argv.is_empty() {
                bail!("--spawn needs a command");
            }
            targets.push(TargetConfig {
                name: format!("spawn{}", i + 1),
                kind: TargetKind::Spawn {
                    command: cmd.clone(),
                    argv,
                },
            });
        }
        if args.names.len() > targets.len() {
            bail!(
                "{} --name given for {} target(s)",
                args.names.len(),
                targets.len()
            );
        }
        for (t, name) in targets.iter_mut().zip(&args.names) {
            check_name(name)?;
            t.name = name.clone();
        }
        // Unique names (the same address given twice gets #2, #3...).
        for i in 0..targets.len() {
            if targets[..i].iter().any(|t| t.name == targets[i].name) {
                if i < args.names.len() {
                    bail!("--name '{}' is used twice", targets[i].name);
                }
                let base = targets[i].name.clone();
                let mut n = 2;
                while targets[..i].iter().any(|t| t.name == format!("{base}#{n}")) {
                    n += 1;
                }
                targets[i].name = format!("{base}#{n}");
            }
        }

        let rounds = args.rounds.unwrap_or(if default_comparison {
            DEFAULT_COMPARISON_ROUNDS
        } else {
            1
        });
        let duration = args.duration.unwrap_or(if default_comparison {
            DEFAULT_COMPARISON_DURATION
        } else {
            DEFAULT_DURATION
        });
        let warmup = args.warmup.unwrap_or(if default_comparison {
            DEFAULT_COMPARISON_WARMUP
        } else {
            DEFAULT_WARMUP
        });
        let connections = args.connections.unwrap_or(DEFAULT_CONNECTIONS);
        if connections > u32::MAX as usize {
            bail!("--connections {connections} is too many");
        }
        let size = args.size.unwrap_or(DEFAULT_SIZE);
        let mode = match args.rate {
            Some(rate) => Mode::Open {
                rate,
                arrival: args.arrival.unwrap_or(Arrival::Constant),
            },
            None => Mode::Closed,
        };
        let client_cpu_count = client_cpus.as_ref().map_or(allowed.len().max(1), Vec::len);
        let threads = args
            .threads
            .unwrap_or(client_cpu_count)
            .min(connections)
            .max(1);

        if let Some(start_at) = args.start_at {
            if rounds > 1 || targets.len() > 1 {
                bail!("--start-at needs a single target and a single round (it fixes one measured window)");
            }
            if start_at > SystemTime::now() + MAX_START_AT_AHEAD {
                bail!(
                    "--start-at {} is more than {} from now",
                    humantime::format_rfc3339_seconds(start_at),
                    humantime::format_duration(MAX_START_AT_AHEAD)
                );
            }
        }
        if args.hlog.is_some() {
            let intervals =
                (duration.as_secs_f64() / args.interval.as_secs_f64()).ceil() * rounds as f64;
            if intervals > MAX_INTERVALS as f64 {
                bail!(
                    "--interval {} makes {intervals:.0} interval histograms; at most {MAX_INTERVALS} are allowed (use a longer --interval)",
                    humantime::format_duration(args.interval)
                );
            }
        }
        // Descriptors: the client's sockets (the server runs in its own process) plus slack.
        host::ensure_fd_limit(connections as u64 + 64)?;

        Ok(BenchConfig {
            load: LoadConfig {
                connections,
                size,
                mode,
                pipeline: args.pipeline.unwrap_or(1),
                threads,
                warmup,
                duration,
                interval: args.hlog.as_ref().map(|_| args.interval),
                rate_interval: rate_interval(args.interval, duration),
                overdue_after: None,
                lateness_cap: None,
                connect_timeout: args.connect_timeout,
                busy_poll: args.busy_poll,
                seed: args.seed,
                client_cpus,
            },
            targets,
            rounds,
            server_cpus,
            spawn_timeout: args.spawn_timeout,
            start_at: args.start_at,
            outputs: Outputs {
                json: args.json.clone(),
                hgrm: args.hgrm.clone(),
                hlog: args.hlog.clone(),
                plot: args.plot.clone(),
                force: args.force,
            },
            quiet: args.quiet,
            label: args.label.clone(),
            seed: args.seed,
            default_comparison,
            command_line,
        })
    }

    /// Every output file this run will write.
    pub fn output_paths(&self) -> Vec<PathBuf> {
        let n = self.targets.len();
        let mut paths = Vec::new();
        if let Some(p) = &self.outputs.json {
            paths.push(p.clone());
        }
        if let Some(p) = &self.outputs.plot {
            paths.push(p.clone());
        }
        for t in &self.targets {
            if let Some(p) = &self.outputs.hgrm {
                paths.push(per_target_path(p, &t.name, n));
            }
            if let Some(p) = &self.outputs.hlog {
                paths.push(per_target_path(p, &t.name, n));
            }
        }
        paths
    }
}

/// `interval`, or longer when `duration` would hold more than [`MAX_RATE_INTERVALS`] of it.
pub fn rate_interval(interval: Duration, duration: Duration) -> Duration {
    let shortest =
        Duration::from_nanos(crate::clock::duration_to_ns(duration).div_ceil(MAX_RATE_INTERVALS));
    interval.max(shortest)
}

/// Refuse to overwrite existing files unless `force`.
pub fn check_outputs(paths: &[PathBuf], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    for p in paths {
        if p.exists() {
            bail!(
                "refusing to overwrite existing file {} (use --force)",
                p.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn config(args: &[&str]) -> anyhow::Result<BenchConfig> {
        let mut v = vec!["echo-bench"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).unwrap();
        BenchConfig::from_args(&cli.bench, vec![])
    }

    #[test]
    fn defaults_for_a_single_target() {
        let c = config(&["127.0.0.1:7000"]).unwrap();
        assert!(!c.default_comparison);
        assert_eq!(c.load.connections, 50);
        assert_eq!(c.load.size, 128);
        assert_eq!(c.load.mode, Mode::Closed);
        assert_eq!(c.load.pipeline, 1);
        assert_eq!(c.load.duration, DEFAULT_DURATION);
        assert_eq!(c.rounds, 1);
        assert_eq!(c.targets[0].name, "127.0.0.1:7000");
        assert!(c.load.interval.is_none());
    }

    #[test]
    fn open_loop_and_invalid_combinations() {
        let c = config(&["--rate", "10k", "--arrival", "poisson", "127.0.0.1:7000"]).unwrap();
        assert_eq!(
            c.load.mode,
            Mode::Open {
                rate: 10_000.0,
                arrival: Arrival::Poisson
            }
        );
        let c = config(&["--rate", "10", "--pipeline", "2", "127.0.0.1:1"]).unwrap();
        assert_eq!(c.load.pipeline, 2);
        assert!(config(&["--start-at", "1767225600", "--rounds", "2", "127.0.0.1:1"]).is_err());
        assert!(config(&["--name", "a", "--name", "b", "127.0.0.1:1"]).is_err());
        assert!(config(&["--name", "a b", "127.0.0.1:1"]).is_err());
        let err = config(&["--start-at", "99999999999", "127.0.0.1:1"]).unwrap_err();
        assert!(err.to_string().contains("more than 1day from now"), "{err}");
    }

    #[test]
    fn names_and_per_target_paths() {
        let c = config(&["--name", "one", "127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:1"]).unwrap();
        let names: Vec<_> = c.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["one", "127.0.0.1:1", "127.0.0.1:1#2"]);
        assert_eq!(
            per_target_path(Path::new("d/run.hgrm"), "uring", 2),
            PathBuf::from("d/run.uring.hgrm")
        );
        assert_eq!(
            per_target_path(Path::new("run.hgrm"), "uring", 1),
            PathBuf::from("run.hgrm")
        );
        assert_eq!(
            per_target_path(Path::new("run"), "x", 2),
            PathBuf::from("run.x")
        );
    }

    #[test]
    fn spawn_commands_are_split_like_a_shell() {
        let c = config(&["--spawn", "srv --flag 'a b' \"c d\""]).unwrap();
        match &c.targets[0].kind {
            TargetKind::Spawn { argv, .. } => assert_eq!(argv, &["srv", "--flag", "a b", "c d"]),
            _ => panic!(),
        }
        assert_eq!(c.targets[0].name, "spawn1");
        assert!(config(&["--spawn", "srv 'unterminated"]).is_err());
    }

    #[test]
    fn rate_intervals_are_bounded_in_number() {
        let s = Duration::from_secs;
        assert_eq!(rate_interval(s(1), s(10)), s(1));
        assert_eq!(rate_interval(s(1), s(100_000)), s(10));
        let c = config(&[
            "--rate",
            "10",
            "--interval",
            "100ms",
            "-d",
            "2s",
            "127.0.0.1:1",
        ])
        .unwrap();
        assert_eq!(c.load.rate_interval, Duration::from_millis(100));
    }

    #[test]
    fn threads_capped_by_connections() {
        let c = config(&["-c", "1", "--threads", "8", "127.0.0.1:1"]).unwrap();
        assert_eq!(c.load.threads, 1);
    }
}
