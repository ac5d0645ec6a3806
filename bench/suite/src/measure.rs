//! Running things and reading back what they measured.
//!
//! Servers the suite starts itself (side runs) go through echo-bench's own spawn code
//! ([`Spawned`]): pinned to the server CPU, ready when they print `listening on`, their stderr
//! kept for the error message when they fail, stopped by PID (SIGTERM, then SIGKILL) when the
//! guard drops. echo-bench's reports are read through its own typed report structs
//! ([`JsonReport`]), so a field echo-bench renames fails the read instead of becoming zero.
//! Everything talks only to 127.0.0.1, and every run is bounded by the plan's durations.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use echo_bench::report::{JsonReport, TargetJson};
use echo_bench::spawn::Spawned;
use serde::Deserialize;

use crate::plan::{Cell, Plan};
use crate::Bins;

/// One server configuration of the comparison.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Short name used in tables.
    pub name: &'static str,
    /// Program and arguments (listening on 127.0.0.1:0, printing `listening on <addr>`).
    pub argv: Vec<String>,
}

impl ServerSpec {
    /// As one shell word list for `echo-bench --spawn`.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }
}

/// Name of the uring-multishot server with completion batching ([`BATCH_WAIT`]).
pub const BATCHED: &str = "multishot-batch";
/// The `--batch-wait` the suite measures: wait for 32 completions, at most 200 µs. Chosen from
/// a sweep at 50 × 4 KiB (5 interleaved rounds each, CPU/msg ÷ the same engine without it):
/// 8,100us 0.99, 16,100us 0.91, 32,100us 0.90, 32,200us 0.86-0.89, 64,1ms 0.96 with the rate
/// cut to a quarter (64 > 50 connections: every wait runs into the timeout).
pub const BATCH_WAIT: &str = "32,200us";

/// The servers compared in a cell, baseline-independent order (the suite computes its own
/// ratios). The floor server is single-threaded, so it only appears in 1-thread cells, and so
/// does uring-multishot with `--batch-wait` (its price and gain are measured once).
pub fn servers(bins: &Bins, threads: usize) -> Vec<ServerSpec> {
    let ue = bins.uring_echo.display().to_string();
    let runtime = |name: &'static str, runtime: &str, extra: &[&str]| {
        let mut argv = vec![
            ue.clone(),
            "--runtime".into(),
            runtime.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--threads".into(),
            threads.to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        ServerSpec { name, argv }
    };
    let mut v = vec![
        runtime("uring", "uring", &[]),
        runtime("uring-multishot", "uring-multishot", &[]),
        runtime("epoll", "epoll", &[]),
    ];
    if threads == 1 {
        v.push(ServerSpec {
            name: "floor",
            argv: vec![bins.epoll_floor.display().to_string(), "127.0.0.1:0".into()],
        });
        v.push(runtime(
            BATCHED,
            "uring-multishot",
            &["--batch-wait", BATCH_WAIT],
        ));
    }
    v
}

/// Per-round figures of one target.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Messages per second.
    pub msgs_per_s: f64,
    /// Server CPU ns per message.
    pub server_cpu_ns: Option<f64>,
    /// p99 latency, µs.
    pub p99_us: f64,
}

/// One target of one echo-bench comparison run.
#[derive(Clone, Debug)]
pub struct TargetResult {
    /// Server name.
    pub name: String,
    /// Rounds keyed by round number.
    pub rounds: BTreeMap<u64, Round>,
    /// Whole-run latency percentiles (µs): p50, p99, p99.9 of the recorded latency.
    pub p50_us: f64,
    /// See `p50_us`.
    pub p99_us: f64,
    /// See `p50_us`.
    pub p999_us: f64,
    /// Open loop: service-time p99 (µs).
    pub service_p99_us: Option<f64>,
    /// Open loop: the achieved rate fell short of the target.
    pub rate_shortfall: bool,
}

/// One echo-bench comparison run (a cell, closed or open loop).
#[derive(Clone, Debug)]
pub struct CellResult {
    /// The cell.
    pub cell: Cell,
    /// Open-loop total rate (msgs/s), or closed loop.
    pub rate: Option<f64>,
    /// Fraction of saturation the rate stands for.
    pub rate_fraction: Option<f64>,
    /// Raw JSON report.
    pub json: PathBuf,
    /// Latency plot written by echo-bench.
    pub plot: PathBuf,
    /// Targets in server order.
    pub targets: Vec<TargetResult>,
}

impl CellResult {
    /// The target of this name.
    pub fn target(&self, name: &str) -> Option<&TargetResult> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// Syscalls the server made per echoed message in a side run.
#[derive(Clone, Debug)]
pub struct SyscallResult {
    /// Server name.
    pub name: String,
    /// Messages echoed during the counted window (warmup + measured).
    pub messages: u64,
    /// All syscalls (raw_syscalls:sys_enter).
    pub total: u64,
    /// io_uring_enter calls.
    pub io_uring_enter: u64,
    /// epoll_wait + epoll_pwait (+ epoll_pwait2) calls.
    pub epoll_wait: u64,
}

/// Idle RSS cost per connection.
#[derive(Clone, Debug)]
pub struct RssResult {
    /// Server name.
    pub name: String,
    /// Idle connections held open.
    pub connections: usize,
    /// VmRSS before, KiB.
    pub base_kib: u64,
    /// VmRSS with the connections open and accepted, KiB.
    pub idle_kib: u64,
    /// Open fds of the server after the connections were closed again, and before.
    pub fds_before: usize,
    /// See `fds_before`.
    pub fds_after: usize,
}

/// One round of echo-bench against the reference client on the same server.
#[derive(Clone, Debug)]
pub struct ClientRound {
    /// echo-bench msgs/s.
    pub bench_rate: f64,
    /// echo-bench CPU ns per message.
    pub bench_cpu_ns: f64,
    /// ref-client msgs/s.
    pub ref_rate: f64,
    /// ref-client CPU ns per message.
    pub ref_cpu_ns: f64,
}

/// Everything the suite measured.
#[derive(Default)]
pub struct Results {
    /// Closed-loop cells.
    pub closed: Vec<CellResult>,
    /// Open-loop cells.
    pub open: Vec<CellResult>,
    /// Syscall side runs (50 × 128 B).
    pub syscalls: Vec<SyscallResult>,
    /// Syscall side runs that could not be made, with the reason.
    pub syscalls_unavailable: Option<String>,
    /// Idle RSS per connection.
    pub rss: Vec<RssResult>,
    /// Client efficiency rounds.
    pub client: Vec<ClientRound>,
    /// Every command run, for the record.
    pub commands: Vec<String>,
    /// What failed (non-zero exit of a run, verification errors...).
    pub failures: Vec<String>,
}

fn shell_quote(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@[]".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long a side-run server may take to print its `listening on` line.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts a server pinned to `cpu` with echo-bench's spawn code and waits (bounded) for its
/// `listening on` line. The command logged is the shell equivalent (`taskset -c CPU ...`).
fn spawn_server(
    spec: &ServerSpec,
    cpu: usize,
    log: &mut Vec<String>,
) -> anyhow::Result<(Spawned, String)> {
    let mut logged = vec!["taskset".to_string(), "-c".into(), cpu.to_string()];
    logged.extend(spec.argv.iter().cloned());
    log.push(shell_quote(&logged));
    let server = Spawned::start(
        spec.name,
        &spec.command_line(),
        &spec.argv,
        Some(&[cpu]),
        SPAWN_TIMEOUT,
    )?;
    let addr = server.addr.to_string();
    Ok((server, addr))
}

/// Reads an echo-bench JSON report through echo-bench's own report types.
pub fn read_report(path: &Path) -> anyhow::Result<JsonReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not an echo-bench report", path.display()))
}

/// The one target of a single-target report.
fn only_target(report: &JsonReport, path: &Path) -> anyhow::Result<TargetJson> {
    match report.targets.as_slice() {
        [t] => Ok(t.clone()),
        ts => bail!(
            "{}: expected one target, found {}",
            path.display(),
            ts.len()
        ),
    }
}

/// Runs echo-bench with `args` (plus `--json path --force --quiet`) and returns the report.
/// A non-zero exit is recorded as a failure; the report is still read when it was written.
fn echo_bench(
    bins: &Bins,
    args: &[String],
    json: &Path,
    what: &str,
    results: &mut Results,
) -> anyhow::Result<JsonReport> {
    let mut argv = vec![bins.echo_bench.display().to_string()];
    argv.extend(args.iter().cloned());
    argv.extend([
        "--json".into(),
        json.display().to_string(),
        "--force".into(),
        "--quiet".into(),
    ]);
    results.commands.push(shell_quote(&argv));
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running echo-bench")?;
    if !status.success() {
        results.failures.push(format!(
            "{what}: echo-bench exited with {status} (see {})",
            json.display()
        ));
    }
    read_report(json)
}

/// The suite's view of every target of a report.
pub fn parse_targets(report: &JsonReport) -> Vec<TargetResult> {
    report
        .targets
        .iter()
        .map(|t| TargetResult {
            name: t.info.name.clone(),
            rounds: t
                .rounds
                .iter()
                .map(|r| {
                    (
                        r.round as u64,
                        Round {
                            msgs_per_s: r.msgs_per_s,
                            server_cpu_ns: r.server_cpu_ns_per_msg,
                            p99_us: r.p99_us,
                        },
                    )
                })
                .collect(),
            p50_us: t.latency.p50_us,
            p99_us: t.latency.p99_us,
            p999_us: t.latency.p999_us,
            service_p99_us: t.service_time.as_ref().map(|s| s.p99_us),
            rate_shortfall: t.rate_shortfall,
        })
        .collect()
}

fn run_cell(
    bins: &Bins,
    plan: &Plan,
    cell: Cell,
    rate: Option<(f64, f64)>,
    out: &Path,
    results: &mut Results,
) -> anyhow::Result<CellResult> {
    let id = match rate {
        None => format!("closed-{}", cell.id()),
        Some((_, frac)) => format!("open{:.0}-{}", frac * 100.0, cell.id()),
    };
    let json = out.join("raw").join(format!("{id}.json"));
    let plot = out.join("raw").join(format!("{id}.svg"));
    let server_cpus = if cell.threads > 1 {
        // Two server threads on a 2-CPU machine cannot be kept apart from the client.
        format!("0-{}", cell.threads - 1)
    } else {
        plan.server_cpu.to_string()
    };
    let mut args: Vec<String> = Vec::new();
    for s in servers(bins, cell.threads) {
        args.extend([
            "--spawn".into(),
            s.command_line(),
            "--name".into(),
            s.name.into(),
        ]);
    }
    args.extend([
        "-c".into(),
        cell.connections.to_string(),
        "-s".into(),
        cell.size_bytes.to_string(),
        "-d".into(),
        format!("{}ms", plan.duration_ms),
        "--warmup".into(),
        format!("{}ms", plan.warmup_ms),
        "--rounds".into(),
        plan.rounds.to_string(),
        "--server-cpus".into(),
        server_cpus,
        "--client-cpus".into(),
        plan.client_cpu.to_string(),
        "--plot".into(),
        plot.display().to_string(),
        "--label".into(),
        id.clone(),
    ]);
    if let Some((r, _)) = rate {
        args.extend(["--rate".into(), format!("{r:.0}")]);
    }
    eprintln!("echo-suite: {id}");
    let report = echo_bench(bins, &args, &json, &id, results)?;
    Ok(CellResult {
        cell,
        rate: rate.map(|r| r.0),
        rate_fraction: rate.map(|r| r.1),
        json,
        plot,
        targets: parse_targets(&report),
    })
}

/// echo-bench flags of the side runs (syscalls, client cost): 50 connections × 128 B for the
/// plan's duration and warmup, client pinned to the client CPU.
fn side_load_args(addr: &str, plan: &Plan) -> Vec<String> {
    vec![
        addr.to_string(),
        "-c".into(),
        "50".into(),
        "-s".into(),
        "128".into(),
        "-d".into(),
        format!("{}ms", plan.duration_ms),
        "--warmup".into(),
        format!("{}ms", plan.warmup_ms),
        "--client-cpus".into(),
        plan.client_cpu.to_string(),
    ]
}

/// Counts the server's syscalls with `perf stat -p` while echo-bench drives it.
fn syscall_run(
    bins: &Bins,
    plan: &Plan,
    spec: &ServerSpec,
    out: &Path,
    results: &mut Results,
) -> anyhow::Result<SyscallResult> {
    let (mut server, addr) = spawn_server(spec, plan.server_cpu, &mut results.commands)?;
    let perf_out = out.join("raw").join(format!("syscalls-{}.csv", spec.name));
    let json = out.join("raw").join(format!("syscalls-{}.json", spec.name));
    let events = "raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,\
                  syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_pwait2";
    // perf attaches to the server first, then runs echo-bench as its workload and stops
    // counting when echo-bench exits: the counted window covers every message echo-bench sent.
    let mut argv: Vec<String> = vec![
        "perf".into(),
        "stat".into(),
        "-x".into(),
        ",".into(),
        "-o".into(),
        perf_out.display().to_string(),
        "-e".into(),
        events.into(),
        "-p".into(),
        server.pid().context("server pid")?.to_string(),
        "--".into(),
        bins.echo_bench.display().to_string(),
    ];
    argv.extend(side_load_args(&addr, plan));
    argv.extend([
        "--json".into(),
        json.display().to_string(),
        "--force".into(),
        "--quiet".into(),
    ]);
    results.commands.push(shell_quote(&argv));
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running perf stat")?;
    server.stop();
    if !status.success() {
        bail!(
            "perf stat / echo-bench against {} exited with {status}",
            spec.name
        );
    }
    let t = only_target(&read_report(&json)?, &json)?;
    let messages = t.warmup_messages + t.messages;
    let text = std::fs::read_to_string(&perf_out)?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() >= 3 {
            if let Ok(n) = cols[0].trim().parse::<u64>() {
                counts.insert(cols[2].trim().to_string(), n);
            }
        }
    }
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    if !counts.contains_key("raw_syscalls:sys_enter") {
        bail!(
            "perf stat counted nothing (is perf allowed to trace syscalls?): {}",
            text.trim()
        );
    }
    Ok(SyscallResult {
        name: spec.name.to_string(),
        messages,
        total: get("raw_syscalls:sys_enter"),
        io_uring_enter: get("syscalls:sys_enter_io_uring_enter"),
        epoll_wait: get("syscalls:sys_enter_epoll_wait")
            + get("syscalls:sys_enter_epoll_pwait")
            + get("syscalls:sys_enter_epoll_pwait2"),
    })
}

fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn fd_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn raise_nofile(needed: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < needed {
            if lim.rlim_max < needed {
                bail!(
                    "needs {needed} file descriptors but the hard limit (ulimit -Hn) is {}",
                    lim.rlim_max
                );
            }
            lim.rlim_cur = needed;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Holds `n` idle connections to a fresh server and reads its RSS once it has accepted them.
fn rss_run(
    plan: &Plan,
    spec: &ServerSpec,
    n: usize,
    results: &mut Results,
) -> anyhow::Result<RssResult> {
    raise_nofile(n as u64 + 256)?;
    let mut spec = spec.clone();
    // The servers must be allowed as many fds as the test holds open.
    spec.argv.splice(
        0..0,
        [
            "prlimit".to_string(),
            format!("--nofile={}", n + 256),
            "--".into(),
        ],
    );
    let (mut server, addr) = spawn_server(&spec, plan.server_cpu, &mut results.commands)?;
    let pid = server.pid().context("server pid")?;
    // taskset/prlimit exec the server, so the child's PID is the server's.
    let base_kib = vm_rss_kib(pid)?;
    let fds_before = fd_count(pid)?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(
            TcpStream::connect(&addr)
                .with_context(|| format!("idle connection {i} to {}", spec.name))?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while fd_count(pid)? < fds_before + n {
        if Instant::now() > deadline {
            bail!(
                "{} accepted only {} of {n} connections in 60 s",
                spec.name,
                fd_count(pid)? - fds_before
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let every accepted connection reach its first read (the pending read holds the buffer).
    let idle_kib = {
        let mut last = vm_rss_kib(pid)?;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = vm_rss_kib(pid)?;
            if now == last || Instant::now() > deadline {
                break now;
            }
            last = now;
        }
    };
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut fds_after = fd_count(pid)?;
    while fds_after > fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        fds_after = fd_count(pid)?;
    }
    server.stop();
    Ok(RssResult {
        name: spec.name.to_string(),
        connections: n,
        base_kib,
        idle_kib,
        fds_before,
        fds_after,
    })
}

/// The JSON line ref-client prints (the fields the suite uses).
#[derive(Deserialize)]
struct RefClientReport {
    msgs_per_s: f64,
    client_cpu_ns_per_msg: f64,
}

/// Alternates echo-bench and ref-client against the floor server (the cheapest server, so the
/// client's cost shows most).
fn client_runs(bins: &Bins, plan: &Plan, out: &Path, results: &mut Results) -> anyhow::Result<()> {
    let floor = servers(bins, 1)
        .into_iter()
        .find(|s| s.name == "floor")
        .context("floor server")?;
    let (mut server, addr) = spawn_server(&floor, plan.server_cpu, &mut results.commands)?;
    for round in 1..=plan.client_rounds {
        let json = out
            .join("raw")
            .join(format!("client-echo-bench-{round}.json"));
        let mut args = side_load_args(&addr, plan);
        args.extend(["--threads".into(), "1".into()]);
        let report = echo_bench(bins, &args, &json, "client efficiency", results)?;
        let t = only_target(&report, &json)?;
        let bench_cpu_ns = t
            .client_cpu_ns_per_msg
            .with_context(|| format!("{}: no client CPU per message", json.display()))?;
        let argv: Vec<String> = vec![
            "taskset".into(),
            "-c".into(),
            plan.client_cpu.to_string(),
            bins.ref_client.display().to_string(),
            addr.clone(),
            "50".into(),
            "128".into(),
            plan.duration_ms.to_string(),
            plan.warmup_ms.to_string(),
        ];
        results.commands.push(shell_quote(&argv));
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            bail!(
                "ref-client failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let r: RefClientReport =
            serde_json::from_slice(&output.stdout).context("ref-client output")?;
        results.client.push(ClientRound {
            bench_rate: t.msgs_per_s,
            bench_cpu_ns,
            ref_rate: r.msgs_per_s,
            ref_cpu_ns: r.client_cpu_ns_per_msg,
        });
    }
    server.stop();
    Ok(())
}

/// Runs the whole plan. Errors of one side measurement are recorded and the suite goes on;
/// only setup errors abort.
pub fn run_all(bins: &Bins, plan: &Plan, out: &Path) -> anyhow::Result<Results> {
    let mut results = Results::default();
    for &cell in &plan.cells {
        let r = run_cell(bins, plan, cell, None, out, &mut results)?;
        results.closed.push(r);
    }
    for &cell in &plan.open_loop_cells {
        let sat = results
            .closed
            .iter()
            .find(|c| c.cell == cell)
            .and_then(|c| c.target("epoll"))
            .map(|t| {
                echo_bench::compare::median(
                    &t.rounds.values().map(|r| r.msgs_per_s).collect::<Vec<_>>(),
                )
            });
        let Some(sat) = sat.filter(|s| s.is_finite() && *s > 0.0) else {
            results.failures.push(format!(
                "open loop {}: no closed-loop epoll saturation rate",
                cell.id()
            ));
            continue;
        };
        for &frac in &plan.open_loop_fractions {
            let r = run_cell(
                bins,
                plan,
                cell,
                Some((sat * frac, frac)),
                out,
                &mut results,
            )?;
            results.open.push(r);
        }
    }
    eprintln!("echo-suite: syscalls per message (perf stat)");
    if Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        results.syscalls_unavailable =
            Some("perf is not installed (apt-get install linux-perf)".into());
    } else {
        for spec in servers(bins, 1) {
            match syscall_run(bins, plan, &spec, out, &mut results) {
                Ok(s) => results.syscalls.push(s),
                Err(e) => results
                    .failures
                    .push(format!("syscalls {}: {e:#}", spec.name)),
            }
        }
    }
    eprintln!(
        "echo-suite: idle RSS per connection ({} connections)",
        plan.idle_connections
    );
    // The batching knob changes waits, not memory: one uring-multishot measurement is enough.
    for spec in servers(bins, 1).into_iter().filter(|s| s.name != BATCHED) {
        match rss_run(plan, &spec, plan.idle_connections, &mut results) {
            Ok(r) => results.rss.push(r),
            Err(e) => results.failures.push(format!("rss {}: {e:#}", spec.name)),
        }
    }
    eprintln!("echo-suite: client cost, echo-bench vs ref-client");
    if let Err(e) = client_runs(bins, plan, out, &mut results) {
        results.failures.push(format!("client efficiency: {e:#}"));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_fails_to_start_shows_its_stderr() {
        let spec = ServerSpec {
            name: "broken",
            argv: ["sh", "-c", "echo 'cannot bind: boom' >&2; exit 3"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let mut log = Vec::new();
        let err = format!("{:#}", spawn_server(&spec, 0, &mut log).err().unwrap());
        assert!(err.contains("exited with status 3"), "{err}");
        assert!(err.contains("cannot bind: boom"), "{err}");
        assert_eq!(log.len(), 1);
    }
}
