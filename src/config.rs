//! Command line: the raw clap [`Cli`] and the validated [`Config`] the server runs with.
//!
//! Why two types: clap checks syntax (a number is a number, `16KiB` is a size), while
//! [`Config::try_from`] checks meaning: flags that only some engines understand,
//! combinations the kernel refuses, CPUs that do not exist. Everything after this module can trust
//! its input, and every refusal is one line that names the flag.
//!
//! Sizes, durations and CPU lists are parsed by `echo_units`, which echo-bench uses too, so a
//! value means the same on both command lines (`2` is two seconds, `1G` is 1024³ bytes, a CPU
//! listed twice is an error). Only `--batch-wait`, which no other tool has, is parsed here.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use echo_units::{format_cpu_list, parse_cpu_list, parse_duration, parse_size, CpuList};

use crate::probe::Feature;

/// Default listen address: dual-stack, on the port of the classic Python echo tutorial.
pub const DEFAULT_LISTEN: &str = "[::]:65432";
/// Default `listen()` backlog.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// Default per-connection buffer size in bytes.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;
/// Default io_uring submission queue size.
pub const DEFAULT_RING_ENTRIES: u32 = 256;
/// Default `--drain-timeout`: how long open connections may finish after SIGINT/SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// [`DEFAULT_DRAIN_TIMEOUT`] as clap's default string (clap shows it in `--help` and parses it;
/// the `defaults` test checks that the two agree).
const DEFAULT_DRAIN_TIMEOUT_ARG: &str = "5s";
/// Largest submission queue the kernel accepts (`IORING_MAX_ENTRIES`).
pub const MAX_RING_ENTRIES: u32 = 32_768;
/// Largest per-connection buffer we accept (the memory bound per connection).
pub const MAX_BUFFER_SIZE: usize = 64 * 1024 * 1024;
/// Upper bound for `--threads`, far above any sensible thread-per-core count.
pub const MAX_THREADS: usize = 1024;
/// Shortest `--stats-interval`: below it the lines would flood stderr (thousands per second).
pub const MIN_STATS_INTERVAL: Duration = Duration::from_millis(10);

/// Which I/O engine serves the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// io_uring through tokio-uring: reads and writes are submitted to the kernel ring.
    Uring,
    /// epoll through tokio: readiness notification, then read(2)/write(2).
    Epoll,
    /// io_uring driven directly: multishot recv into a provided-buffer ring, sends straight from
    /// the received buffer, bounded single-shot accepts (Linux >= 6.1; SINGLE_ISSUER|DEFER_TASKRUN)
    UringMultishot,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Uring => "uring",
            RuntimeKind::Epoll => "epoll",
            RuntimeKind::UringMultishot => "uring-multishot",
        })
    }
}

/// TCP echo server with three I/O engines (io_uring through tokio-uring, raw multishot io_uring,
/// epoll through tokio) on the same echo semantics, for comparison.
///
/// Prints `listening on <addr>` on stdout once every worker accepts, and a `summary:` line on
/// stderr when it stops (SIGINT/SIGTERM). Logging goes to stderr and follows RUST_LOG.
#[derive(Debug, Parser)]
#[command(name = "uring-echo", version)]
pub struct Cli {
    /// I/O engine (same echo semantics and limits on each)
    #[arg(long, value_enum, default_value_t = RuntimeKind::Uring)]
    pub runtime: RuntimeKind,

    /// Address to listen on, IP:PORT (port 0 picks a free port)
    ///
    /// `[::]:PORT` is dual-stack (IPv4 clients appear as ::ffff:a.b.c.d) unless --ipv6-only.
    /// An IPv4 address such as 127.0.0.1:PORT listens on IPv4 only.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// Worker threads, each with its own runtime and listening socket
    ///
    /// With more than one, every worker binds the same port with SO_REUSEPORT and the kernel
    /// spreads incoming connections across them by a hash of the address/port 4-tuple.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,

    /// Pin worker threads to CPUs: thread i runs on the i-th listed CPU (implies --pin)
    ///
    /// A list such as `0,2-3`, taken as a set in ascending order (a CPU listed twice is an
    /// error). With fewer CPUs than threads, threads wrap around the list.
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,

    /// Pin worker thread i to the i-th CPU this process may run on (sched_setaffinity)
    #[arg(long)]
    pub pin: bool,

    /// Length of the kernel's accept queue passed to listen(2)
    ///
    /// Connections that completed the handshake wait here until accepted. The kernel silently
    /// caps it at net.core.somaxconn; `ss -ltn` shows the value as Send-Q.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BACKLOG)]
    pub backlog: u32,

    /// I/O buffer size, e.g. 4096, 16KiB, 64k (every unit is binary: 64k = 64KB = 65536)
    ///
    /// uring and epoll: each connection owns exactly one buffer of this size; the server reads
    /// at most this much, writes it back completely, and only then reads again. uring-multishot:
    /// the size of each buffer of the worker's shared provided-buffer ring, of which a connection
    /// holds at most 4 at a time. Either way memory per connection is bounded whatever the
    /// client does.
    #[arg(long, value_name = "BYTES", default_value = "16KiB", value_parser = parse_size)]
    pub buffer_size: usize,

    /// With a `[::]` address, accept IPv6 only (IPV6_V6ONLY); IPv4 clients are refused
    #[arg(long)]
    pub ipv6_only: bool,

    /// Leave Nagle's algorithm on (by default accepted sockets get TCP_NODELAY)
    #[arg(long)]
    pub no_nodelay: bool,

    /// Most connections served at once over all threads; beyond it, accept and close (0 = no limit)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections: usize,

    /// Close a connection after SECS without progress (0 = never); 0.5 or 500ms, 2m...
    ///
    /// The timer restarts with every read or write that completes. The peer sees a FIN (or a
    /// reset, if it had sent data the server never read).
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// On SIGINT/SIGTERM, how long open connections may finish before they are closed
    ///
    /// Plain numbers are seconds; humantime units work too (500ms, 1m). A second signal closes
    /// them at once.
    #[arg(long, value_name = "DUR", default_value = DEFAULT_DRAIN_TIMEOUT_ARG, value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Print a `stats:` line to stderr every SECS (0 = never; at least 10ms = 0.01)
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// (uring, uring-multishot) Submission queue entries per ring (rounded up to a power of two) [default: 256]
    ///
    /// The completion queue gets twice as many with uring, four times as many (64 to 65536) with
    /// uring-multishot. A full submission queue is flushed to the kernel early, so this trades
    /// memory against submit calls, not correctness.
    #[arg(long, value_name = "N")]
    pub ring_entries: Option<u32>,

    /// (uring) IORING_SETUP_SQPOLL: a kernel thread polls the submission queue, idling after IDLE_MS
    ///
    /// Saves the io_uring_enter(2) call per batch at the price of a kernel thread per ring that
    /// spins on a CPU while busy. Kernels before 5.11 allow it to root (CAP_SYS_ADMIN) only.
    #[arg(long, value_name = "IDLE_MS")]
    pub sqpoll: Option<u32>,

    /// (uring) IORING_SETUP_COOP_TASKRUN: no inter-processor interrupt when a completion is ready
    ///
    /// Completions are processed when the thread next enters the kernel instead. Cannot be
    /// combined with --sqpoll (the kernel refuses it).
    #[arg(long)]
    pub coop_taskrun: bool,

    /// (uring) Registered buffers (IORING_REGISTER_BUFFERS) with read_fixed/write_fixed
    ///
    /// Each worker registers a pool of buffers once; the kernel pins them, so they count against
    /// RLIMIT_MEMLOCK (`ulimit -l`). Pool size per worker: max-connections / threads if set,
    /// else 128, at most 1024. When the pool is empty, new connections use ordinary buffers.
    #[arg(long)]
    pub fixed_buffers: bool,

    /// (uring-multishot) How each loop waits for completions: inline, adaptive, off, or N,DUR [default: inline]
    ///
    /// inline: counts the completions of sends that finish during the submit into the wait and
    /// never sleeps past work it knows of; no timer. adaptive: inline, plus, while completions
    /// keep arriving in bulk, a wait for about as many more bounded by a 20 µs timer (fewer
    /// io_uring_enter calls; on a VM the timer and the extra sleeps cost more CPU and latency
    /// than they save, see bench/README.md). off: wait for one completion per loop.
    /// N,DUR (e.g. 32,200us): always wait for N completions or DUR — fewer wake-ups under load,
    /// at the price of up to DUR of extra latency whenever fewer than N are pending.
    #[arg(long, value_name = "POLICY", value_parser = parse_batch_policy)]
    pub batch_wait: Option<BatchPolicy>,

    /// (uring-multishot) Switch an optional io_uring feature on or off: NAME=on|off, repeatable
    ///
    /// NAME is one of the switchable features of the `features:` line (see README "Kernels"):
    /// recv_budget, no_sqarray, ring_fd (on by default where the kernel has them), send_zc,
    /// bundle, buf_ring_inc (off by default; bundle needs recv_budget, and buf_ring_inc wins
    /// over bundle). `off` measures the engine without it (an A/B, or the fallback of an
    /// older kernel), `on` insists on it: a kernel without it is refused at start with a
    /// one-line error.
    #[arg(long = "feature", value_name = "NAME=on|off", value_parser = parse_feature_switch)]
    pub features: Vec<FeatureSwitch>,
}

/// Optional io_uring features `--feature` can switch; the others of [`Feature`] are required by
/// an engine or decided by other flags.
pub const SWITCHABLE_FEATURES: [Feature; 6] = [
    Feature::RecvBudget,
    Feature::NoSqarray,
    Feature::RingFd,
    Feature::SendZc,
    Feature::Bundle,
    Feature::BufRingInc,
];

/// One `--feature NAME=on|off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureSwitch {
    /// Which feature.
    pub feature: Feature,
    /// `on` (insist) or `off` (do without).
    pub on: bool,
}

/// Parses `NAME=on|off` for `--feature`.
pub fn parse_feature_switch(s: &str) -> Result<FeatureSwitch, String> {
    let names = || {
        SWITCHABLE_FEATURES
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=on|off (NAME: {})", names()))?;
    let feature = Feature::from_name(name.trim())
        .filter(|f| SWITCHABLE_FEATURES.contains(f))
        .ok_or_else(|| format!("{name:?} is not a switchable feature (one of: {})", names()))?;
    let on = match value.trim() {
        "on" => true,
        "off" => false,
        other => return Err(format!("{other:?}: a feature is switched on or off")),
    };
    Ok(FeatureSwitch { feature, on })
}

/// `--batch-wait`: how the uring-multishot engine waits for completions (its one definition: the
/// engine reads this type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BatchPolicy {
    /// One completion per wait: no batching at all.
    Off,
    /// Inline send completions counted into the wait, never a timer (the default).
    #[default]
    Inline,
    /// `Inline`, plus a busy mode that waits (`min_wait`-bounded) for more completions while
    /// they keep arriving in bulk.
    Adaptive,
    /// A fixed batch: always wait for N completions or DUR.
    Fixed(BatchWait),
}

impl fmt::Display for BatchPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchPolicy::Off => f.write_str("off"),
            BatchPolicy::Adaptive => f.write_str("adaptive"),
            BatchPolicy::Inline => f.write_str("inline"),
            BatchPolicy::Fixed(bw) => write!(f, "{},{:?}", bw.min_completions, bw.timeout),
        }
    }
}

/// `--batch-wait N,DUR`: a fixed completion batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchWait {
    /// Completions to wait for per loop iteration (>= 1).
    pub min_completions: u32,
    /// Longest extra wait for them.
    pub timeout: Duration,
}

/// io_uring setup knobs of the two io_uring engines. `ring_entries` applies to both;
/// `sqpoll_idle_ms`, `coop_taskrun` and `fixed_buffers` to [`RuntimeKind::Uring`] only, and
/// `batch_wait` to [`RuntimeKind::UringMultishot`] only ([`Config::try_from`] refuses the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UringOpts {
    /// Submission queue entries per ring (both io_uring engines).
    pub ring_entries: u32,
    /// `IORING_SETUP_SQPOLL` idle time in milliseconds, if enabled.
    pub sqpoll_idle_ms: Option<u32>,
    /// `IORING_SETUP_COOP_TASKRUN`.
    pub coop_taskrun: bool,
    /// Use registered buffers (`read_fixed`/`write_fixed`).
    pub fixed_buffers: bool,
    /// Completion batching (uring-multishot only; the default elsewhere, where it is unused).
    pub batch_wait: BatchPolicy,
    /// `--feature` switches (uring-multishot only), at most one per feature.
    pub features: Vec<FeatureSwitch>,
}

impl UringOpts {
    /// How `--feature` set `feature`: `Some(true)` on, `Some(false)` off, `None` default.
    pub fn switch(&self, feature: Feature) -> Option<bool> {
        self.features
            .iter()
            .find(|s| s.feature == feature)
            .map(|s| s.on)
    }
}

/// Validated server configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// I/O engine.
    pub runtime: RuntimeKind,
    /// Address every worker listens on.
    pub listen: SocketAddr,
    /// Number of worker threads (>= 1).
    pub threads: usize,
    /// CPU for each worker, by index modulo length; empty means no pinning.
    pub cpus: Vec<usize>,
    /// `listen()` backlog.
    pub backlog: u32,
    /// Per-connection buffer size in bytes (>= 1).
    pub buffer_size: usize,
    /// Set IPV6_V6ONLY on an IPv6 listener.
    pub ipv6_only: bool,
    /// Set TCP_NODELAY on accepted sockets.
    pub nodelay: bool,
    /// Connection limit over all workers, `None` = unlimited.
    pub max_connections: Option<usize>,
    /// Idle timeout, `None` = off.
    pub idle_timeout: Option<Duration>,
    /// How long a graceful shutdown waits for connections.
    pub drain_timeout: Duration,
    /// Period of `stats:` lines, `None` = off.
    pub stats_interval: Option<Duration>,
    /// io_uring setup knobs (ignored by the epoll backend, which refuses non-defaults).
    pub uring: UringOpts,
}

impl Config {
    /// CPU the worker `index` is pinned to, if pinning is on.
    pub fn cpu_for(&self, index: usize) -> Option<usize> {
        (!self.cpus.is_empty()).then(|| self.cpus[index % self.cpus.len()])
    }

    /// Registered buffers per worker when `--fixed-buffers` is on.
    pub fn fixed_buffers_per_thread(&self) -> usize {
        const DEFAULT: usize = 128;
        // tokio-uring's pool holds at most UIO_MAXIOV (1024) buffers.
        const MAX: usize = 1024;
        match self.max_connections {
            Some(max) => max.div_ceil(self.threads).clamp(1, MAX),
            None => DEFAULT,
        }
    }
}

impl TryFrom<Cli> for Config {
    type Error = anyhow::Error;

    fn try_from(cli: Cli) -> anyhow::Result<Config> {
        let listen: SocketAddr = cli.listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid --listen address {:?}: expected IP:PORT such as [::]:65432 or 127.0.0.1:8080",
                cli.listen
            )
        })?;
        if cli.ipv6_only && listen.is_ipv4() {
            bail!("--ipv6-only needs an IPv6 --listen address, got {listen}");
        }
        if cli.threads == 0 || cli.threads > MAX_THREADS {
            bail!(
                "--threads must be between 1 and {MAX_THREADS}, got {}",
                cli.threads
            );
        }
        if cli.backlog == 0 || cli.backlog > i32::MAX as u32 {
            bail!(
                "--backlog must be between 1 and {}, got {}",
                i32::MAX,
                cli.backlog
            );
        }
        if cli.buffer_size == 0 || cli.buffer_size > MAX_BUFFER_SIZE {
            bail!(
                "--buffer-size must be between 1 byte and {} MiB, got {}",
                MAX_BUFFER_SIZE >> 20,
                cli.buffer_size
            );
        }

        if !cli.stats_interval.is_zero() && cli.stats_interval < MIN_STATS_INTERVAL {
            bail!(
                "--stats-interval must be 0 (off) or at least {} ms, got {:?}",
                MIN_STATS_INTERVAL.as_millis(),
                cli.stats_interval
            );
        }

        if cli.runtime == RuntimeKind::Epoll {
            let uring_only = [
                (cli.ring_entries.is_some(), "--ring-entries"),
                (cli.sqpoll.is_some(), "--sqpoll"),
                (cli.coop_taskrun, "--coop-taskrun"),
                (cli.fixed_buffers, "--fixed-buffers"),
            ];
            if let Some((_, flag)) = uring_only.iter().find(|(given, _)| *given) {
                bail!("{flag} configures io_uring and has no meaning with --runtime epoll");
            }
        }
        if cli.runtime == RuntimeKind::UringMultishot {
            // The engine owns its ring setup (SINGLE_ISSUER|DEFER_TASKRUN, which excludes SQPOLL
            // and supersedes COOP_TASKRUN) and receives into provided buffers, not fixed ones.
            let tokio_uring_only = [
                (cli.sqpoll.is_some(), "--sqpoll"),
                (cli.coop_taskrun, "--coop-taskrun"),
                (cli.fixed_buffers, "--fixed-buffers"),
            ];
            if let Some((_, flag)) = tokio_uring_only.iter().find(|(given, _)| *given) {
                bail!("{flag} applies to --runtime uring only, not to --runtime uring-multishot");
            }
        }
        if cli.batch_wait.is_some() && cli.runtime != RuntimeKind::UringMultishot {
            bail!("--batch-wait applies to --runtime uring-multishot only");
        }
        if let Some(switch) = cli.features.first() {
            if cli.runtime != RuntimeKind::UringMultishot {
                bail!(
                    "--feature {}: feature switches apply to --runtime uring-multishot only",
                    switch.feature
                );
            }
        }
        for (i, switch) in cli.features.iter().enumerate() {
            if cli.features[..i]
                .iter()
                .any(|s| s.feature == switch.feature)
            {
                bail!("--feature {} is given twice", switch.feature);
            }
        }
        let insisted = |f: Feature| cli.features.iter().any(|s| s.feature == f && s.on);
        if insisted(Feature::Bundle) && insisted(Feature::BufRingInc) {
            // The engine takes buf_ring_inc and leaves bundles off (README "Kernels"), so the
            // features: line could not list bundle in use as insisted.
            bail!(
                "--feature bundle=on cannot be combined with --feature buf_ring_inc=on \
                 (incremental consumption leaves receives unbundled)"
            );
        }
        let ring_entries = cli.ring_entries.unwrap_or(DEFAULT_RING_ENTRIES);
        if ring_entries == 0 || ring_entries > MAX_RING_ENTRIES {
            bail!("--ring-entries must be between 1 and {MAX_RING_ENTRIES}, got {ring_entries}");
        }
        if cli.sqpoll.is_some() && cli.coop_taskrun {
            // io_uring_setup(2) returns EINVAL for SQPOLL with COOP_TASKRUN: with SQPOLL no
            // inter-processor interrupt is involved, so the flag has nothing to cooperate on.
            bail!("--coop-taskrun cannot be combined with --sqpoll (the kernel rejects the pair)");
        }

        let cpus = if cli.cpus.is_some() || cli.pin {
            let allowed = allowed_cpus().context("cannot read this process's CPU affinity")?;
            let cpus = match cli.cpus {
                Some(list) => list.into_vec(),
                None => allowed.clone(),
            };
            if let Some(bad) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
                bail!(
                    "--cpus: CPU {bad} is not available to this process (available: {})",
                    format_cpu_list(&allowed)
                );
            }
            cpus
        } else {
            Vec::new()
        };

        Ok(Config {
            runtime: cli.runtime,
            listen,
            threads: cli.threads,
            cpus,
            backlog: cli.backlog,
            buffer_size: cli.buffer_size,
            ipv6_only: cli.ipv6_only,
            nodelay: !cli.no_nodelay,
            max_connections: (cli.max_connections > 0).then_some(cli.max_connections),
            idle_timeout: (!cli.idle_timeout.is_zero()).then_some(cli.idle_timeout),
            drain_timeout: cli.drain_timeout,
            stats_interval: (!cli.stats_interval.is_zero()).then_some(cli.stats_interval),
            uring: UringOpts {
                ring_entries,
                sqpoll_idle_ms: cli.sqpoll,
                coop_taskrun: cli.coop_taskrun,
                fixed_buffers: cli.fixed_buffers,
                batch_wait: cli.batch_wait.unwrap_or_default(),
                features: cli.features,
            },
        })
    }
}

/// CPUs this process may run on (its `sched_getaffinity` mask), ascending.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = calling thread; the size matches the set we pass.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu < CPU_SETSIZE, within the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Parses `--batch-wait`: `inline`, `adaptive`, `off`, or `N,DUR` ([`parse_batch_wait`]).
pub fn parse_batch_policy(s: &str) -> Result<BatchPolicy, String> {
    match s.trim() {
        "adaptive" => Ok(BatchPolicy::Adaptive),
        "inline" => Ok(BatchPolicy::Inline),
        "off" => Ok(BatchPolicy::Off),
        _ => parse_batch_wait(s).map(BatchPolicy::Fixed),
    }
}

/// Parses `N,DUR`: at least one completion, and a duration of 1us..=1s (a bare number is
/// seconds, as for every duration).
pub fn parse_batch_wait(s: &str) -> Result<BatchWait, String> {
    let usage = || format!("{s:?} is not inline, adaptive, off or N,DURATION (example: 8,100us)");
    let (n, dur) = s.split_once(',').ok_or_else(usage)?;
    let min_completions: u32 = n.trim().parse().map_err(|_| usage())?;
    let timeout = parse_duration(dur).map_err(|e| format!("{s:?}: {e}"))?;
    if min_completions == 0 {
        return Err(format!("{s:?}: N must be at least 1"));
    }
    if timeout < Duration::from_micros(1) || timeout > Duration::from_secs(1) {
        return Err(format!("{s:?}: DURATION must be between 1us and 1s"));
    }
    Ok(BatchWait {
        min_completions,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        let argv = std::iter::once("uring-echo").chain(args.iter().copied());
        Config::try_from(Cli::try_parse_from(argv)?)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn batch_wait_parses_and_is_multishot_only() {
        let bw = parse_batch_wait("8,100us").unwrap();
        assert_eq!(
            (bw.min_completions, bw.timeout),
            (8, Duration::from_micros(100))
        );
        // The duration is read like every other duration: a bare number is seconds.
        assert_eq!(
            parse_batch_wait("8,0.0001").map(|b| b.timeout),
            Ok(Duration::from_micros(100))
        );
        for bad in [
            "8", "0,100us", "8,0us", "8,2s", "8,2", "x,100us", "8,soon", "8,-1",
        ] {
            assert!(parse_batch_wait(bad).is_err(), "{bad}");
        }
        let c = config(&["--runtime", "uring-multishot", "--batch-wait", "4,50us"]).unwrap();
        assert!(matches!(c.uring.batch_wait, BatchPolicy::Fixed(b) if b.min_completions == 4));
        let multishot = |v: &str| {
            config(&["--runtime", "uring-multishot", "--batch-wait", v])
                .map(|c| c.uring.batch_wait)
                .map_err(|e| e.to_string())
        };
        assert_eq!(multishot("off"), Ok(BatchPolicy::Off));
        assert_eq!(multishot("adaptive"), Ok(BatchPolicy::Adaptive));
        assert_eq!(multishot("inline"), Ok(BatchPolicy::Inline));
        assert_eq!(
            config(&["--runtime", "uring-multishot"])
                .unwrap()
                .uring
                .batch_wait,
            BatchPolicy::Inline,
            "inline by default"
        );
        assert!(parse_batch_policy("sometimes").is_err());
        for value in ["4,50us", "off", "adaptive", "inline"] {
            let err = config(&["--runtime", "uring", "--batch-wait", value]).unwrap_err();
            assert!(err.to_string().contains("uring-multishot only"), "{err}");
        }
    }

    #[test]
    fn feature_switches_are_multishot_only_and_checked() {
        let c = config(&[
            "--runtime",
            "uring-multishot",
            "--feature",
            "recv_budget=off",
        ])
        .unwrap();
        assert_eq!(c.uring.switch(Feature::RecvBudget), Some(false));
        assert_eq!(config(&[]).unwrap().uring.switch(Feature::RecvBudget), None);
        for runtime in ["uring", "epoll"] {
            let err = format!(
                "{:#}",
                config(&["--runtime", runtime, "--feature", "recv_budget=off"]).unwrap_err()
            );
            assert!(err.contains("uring-multishot only"), "{err}");
        }
        let twice = [
            "--runtime",
            "uring-multishot",
            "--feature",
            "recv_budget=off",
            "--feature",
            "recv_budget=on",
        ];
        assert!(format!("{:#}", config(&twice).unwrap_err()).contains("twice"));
        let both = [
            "--runtime",
            "uring-multishot",
            "--feature",
            "bundle=on",
            "--feature",
            "buf_ring_inc=on",
        ];
        let err = format!("{:#}", config(&both).unwrap_err());
        assert!(err.contains("bundle=on cannot be combined"), "{err}");
        let mut one_off = both;
        one_off[5] = "buf_ring_inc=off";
        assert!(config(&one_off).is_ok());
        assert_eq!(
            parse_feature_switch("recv_budget=on"),
            Ok(FeatureSwitch {
                feature: Feature::RecvBudget,
                on: true
            })
        );
        for bad in [
            "recv_budget",
            "recv_budget=maybe",
            "bogus=on",
            "defer_taskrun=off",
            "=on",
        ] {
            let err = parse_feature_switch(bad).unwrap_err();
            assert!(
                err.contains(bad.split('=').next().unwrap_or(bad)) || err.contains("on or off"),
                "{bad}: {err}"
            );
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.runtime, RuntimeKind::Uring);
        assert_eq!(c.listen, "[::]:65432".parse().unwrap());
        assert_eq!(c.threads, 1);
        assert!(c.cpus.is_empty());
        assert_eq!(c.backlog, DEFAULT_BACKLOG);
        assert_eq!(c.buffer_size, DEFAULT_BUFFER_SIZE);
        assert!(c.nodelay);
        assert_eq!(c.max_connections, None);
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(c.stats_interval, None);
        assert_eq!(c.uring.ring_entries, DEFAULT_RING_ENTRIES);
        assert_eq!(c.cpu_for(0), None);
    }

    #[test]
    fn uring_only_flags_are_refused_with_epoll() {
        for flags in [
            &["--ring-entries", "64"][..],
            &["--sqpoll", "100"],
            &["--coop-taskrun"],
            &["--fixed-buffers"],
        ] {
            let mut args = vec!["--runtime", "epoll"];
            args.extend_from_slice(flags);
            let err = format!("{:#}", config(&args).unwrap_err());
            assert!(err.contains(flags[0]) && err.contains("epoll"), "{err}");
            assert!(!err.contains('\n'));
        }
        assert!(config(&["--runtime", "uring", "--sqpoll", "100", "--fixed-buffers"]).is_ok());
    }

    #[test]
    fn refused_combinations_and_ranges() {
        let err = |args: &[&str]| format!("{:#}", config(args).unwrap_err());
        assert!(err(&["--sqpoll", "10", "--coop-taskrun"]).contains("--sqpoll"));
        assert!(err(&["--listen", "127.0.0.1:1", "--ipv6-only"]).contains("--ipv6-only"));
        assert!(err(&["--listen", "nonsense"]).contains("\"nonsense\""));
        assert!(err(&["--listen", "999.1.1.1:1"]).contains("999.1.1.1:1"));
        assert!(err(&["--threads", "0"]).contains("--threads"));
        assert!(err(&["--backlog", "0"]).contains("--backlog"));
        assert!(err(&["--buffer-size", "0"]).contains("--buffer-size"));
        assert!(err(&["--buffer-size", "1GiB"]).contains("--buffer-size"));
        assert!(err(&["--ring-entries", "65536"]).contains("--ring-entries"));
        assert!(err(&["--stats-interval", "1ns"]).contains("--stats-interval"));
        assert!(config(&["--stats-interval", "10ms"]).is_ok());
        assert!(err(&["--cpus", "4000"]).contains("CPU 4000"));
        // Syntax errors are clap's (exit code 2).
        assert!(Cli::try_parse_from(["uring-echo", "--threads", "x"]).is_err());
        assert!(Cli::try_parse_from(["uring-echo", "--buffer-size", "1X"]).is_err());
    }

    #[test]
    fn limits_and_pinning() {
        let first_cpu = allowed_cpus().unwrap()[0].to_string();
        let c = config(&[
            "--max-connections",
            "10",
            "--threads",
            "3",
            "--idle-timeout",
            "1.5",
            "--stats-interval",
            "2",
            "--cpus",
            &first_cpu,
        ])
        .unwrap();
        assert_eq!(c.max_connections, Some(10));
        assert_eq!(c.fixed_buffers_per_thread(), 4);
        assert_eq!(c.idle_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.stats_interval, Some(Duration::from_secs(2)));
        let first: usize = first_cpu.parse().unwrap();
        assert_eq!((c.cpu_for(0), c.cpu_for(2)), (Some(first), Some(first)));
        let pinned = config(&["--pin"]).unwrap();
        assert_eq!(pinned.cpus, allowed_cpus().unwrap());
        assert_eq!(config(&[]).unwrap().fixed_buffers_per_thread(), 128);
        let big = config(&["--max-connections", "100000"]).unwrap();
        assert_eq!(big.fixed_buffers_per_thread(), 1024);
    }
}
