//! Side runs: what one echo-bench comparison cannot measure. Syscalls per message (`perf stat`
//! attached to each server while echo-bench drives it, in interleaved rounds), idle RSS per
//! connection, and the client's own cost against the reference client.
//!
//! The servers of a side run are started once by the suite (pinned, ready line awaited) and
//! stopped by PID when their guard drops, on every path.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use echo_bench::report::{JsonReport, TargetJson};
use echo_bench::spawn::Spawned;
use serde::Deserialize;

use super::{echo_bench, read_report, report_flags, shell_quote, Ctx, Results};
use crate::plan::{Cell, Plan, SIDE_CELL};
use crate::servers::{self, Peers, ServerSpec, FLOOR, SPAWN_TIMEOUT};

/// Syscalls one server made in one side run.
#[derive(Clone, Debug)]
pub struct SyscallRound {
    /// Messages echoed during the counted window (warmup + measured).
    pub messages: u64,
    /// All syscalls (raw_syscalls:sys_enter).
    pub total: u64,
    /// io_uring_enter calls.
    pub io_uring_enter: u64,
    /// epoll_wait + epoll_pwait (+ epoll_pwait2) calls.
    pub epoll_wait: u64,
}

impl SyscallRound {
    /// `count` per echoed message.
    pub fn per_msg(&self, count: u64) -> f64 {
        count as f64 / self.messages.max(1) as f64
    }
}

/// Syscall side runs of several servers in one cell, by server and round.
#[derive(Clone, Debug)]
pub struct SyscallSet {
    /// The load.
    pub cell: Cell,
    /// `(server, round → counts)`, in server order.
    pub servers: Vec<(String, BTreeMap<u64, SyscallRound>)>,
}

impl SyscallSet {
    /// The rounds of `name`.
    pub fn rounds(&self, name: &str) -> Option<&BTreeMap<u64, SyscallRound>> {
        self.servers.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }
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

/// Starts a server pinned to `cpu` with echo-bench's spawn code and waits (bounded) for its
/// `listening on` line. The command logged is the shell equivalent (`taskset -c CPU ...`).
fn spawn_server(spec: &ServerSpec, cpu: usize, log: &mut Vec<String>) -> anyhow::Result<Spawned> {
    let mut logged = vec!["taskset".to_string(), "-c".into(), cpu.to_string()];
    logged.extend(spec.argv.iter().cloned());
    log.push(shell_quote(&logged));
    Spawned::start(
        &spec.name,
        &spec.command_line(),
        &spec.argv,
        Some(&[cpu]),
        SPAWN_TIMEOUT,
    )
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

/// echo-bench flags of a side run against `addr`: `cell`'s load for `duration_ms` after
/// `warmup_ms`, client pinned to the client CPU.
fn side_load_args(
    addr: &str,
    cell: Cell,
    duration_ms: u64,
    warmup_ms: u64,
    plan: &Plan,
) -> Vec<String> {
    vec![
        addr.to_string(),
        "-c".into(),
        cell.connections.to_string(),
        "-s".into(),
        cell.size_bytes.to_string(),
        "-d".into(),
        format!("{duration_ms}ms"),
        "--warmup".into(),
        format!("{warmup_ms}ms"),
        "--client-cpus".into(),
        plan.client_cpu.to_string(),
    ]
}

/// The tracepoints counted: every syscall, and the waits.
const PERF_EVENTS: &str = "raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,\
    syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_pwait2";

/// Whether `perf stat` can count syscall tracepoints here (it needs perf and the permission to
/// trace); the error says why not.
pub fn perf_available() -> Result<(), String> {
    let out = Command::new("perf")
        .args([
            "stat",
            "-x",
            ",",
            "-e",
            "raw_syscalls:sys_enter",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output();
    match out {
        Err(_) => Err("perf is not installed (apt-get install linux-perf)".into()),
        Ok(o) if !o.status.success() => Err(format!(
            "perf cannot count syscall tracepoints here: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no reason given")
                .trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// Counts from `perf stat -x ,` output: event name → count.
pub fn parse_perf_csv(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
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
    counts
}

/// One side run: `perf stat -p` on the running `server` while echo-bench drives it. perf
/// attaches first, runs echo-bench as its workload and stops counting when it exits, so the
/// counted window covers every message echo-bench sent.
fn count_syscalls(
    ctx: Ctx,
    cell: Cell,
    server: &Spawned,
    file_stem: &Path,
    results: &mut Results,
) -> anyhow::Result<SyscallRound> {
    let Ctx { bins, plan, .. } = ctx;
    let perf_out = file_stem.with_extension("csv");
    let json = file_stem.with_extension("json");
    let mut argv: Vec<String> = vec![
        "perf".into(),
        "stat".into(),
        "-x".into(),
        ",".into(),
        "-o".into(),
        perf_out.display().to_string(),
        "-e".into(),
        PERF_EVENTS.into(),
        "-p".into(),
        server.pid().context("server pid")?.to_string(),
        "--".into(),
        bins.echo_bench.display().to_string(),
    ];
    argv.extend(side_load_args(
        &server.addr.to_string(),
        cell,
        plan.side_duration_ms,
        plan.side_warmup_ms,
        plan,
    ));
    argv.extend(report_flags(&json));
    results.commands.push(shell_quote(&argv));
    run_side(&argv, "perf stat / echo-bench")?;
    let t = only_target(&read_report(&json)?, &json)?;
    let text = std::fs::read_to_string(&perf_out)?;
    let counts = parse_perf_csv(&text);
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    if !counts.contains_key("raw_syscalls:sys_enter") {
        bail!(
            "perf stat counted nothing (is perf allowed to trace syscalls?): {}",
            text.trim()
        );
    }
    Ok(SyscallRound {
        messages: t.warmup_messages + t.messages,
        total: get("raw_syscalls:sys_enter"),
        io_uring_enter: get("syscalls:sys_enter_io_uring_enter"),
        epoll_wait: get("syscalls:sys_enter_epoll_wait")
            + get("syscalls:sys_enter_epoll_pwait")
            + get("syscalls:sys_enter_epoll_pwait2"),
    })
}

/// Lines of a failed side run's stderr kept in its error.
const STDERR_TAIL_LINES: usize = 3;

/// Runs `argv` (`what`, for the error) with stdout discarded. Its stderr is kept: when it
/// fails, the error ends with the last [`STDERR_TAIL_LINES`] non-empty lines, where
/// echo-bench (or perf itself) says why; the other runs' echo-bench errors show on the
/// terminal, and this one's would otherwise vanish.
fn run_side(argv: &[String], what: &str) -> anyhow::Result<()> {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join(" | ");
        if tail.is_empty() {
            bail!("{what} exited with {} (no stderr)", out.status);
        }
        bail!("{what} exited with {}: {}", out.status, tail.trim());
    }
    Ok(())
}

/// The order of the servers in side round `round` (1-based): the list rotated by the round, so
/// that over `n` rounds every server runs once in every position (the side runs' equivalent of
/// echo-bench's shuffled rounds, without a random source).
pub fn side_order(n: usize, round: u32) -> Vec<usize> {
    (0..n)
        .map(|i| (i + round as usize - 1) % n.max(1))
        .collect()
}

/// Syscalls per message of every server of `specs` in `cell`, in `plan.side_rounds`
/// interleaved rounds. Every server is started once and runs through all rounds; a server that
/// cannot start, or a run that fails, is recorded as a failure and the rest goes on. Files:
/// `raw/syscalls/<prefix>-<server>-r<round>.{csv,json}`.
pub fn syscall_rounds(
    ctx: Ctx,
    cell: Cell,
    specs: &[ServerSpec],
    prefix: &str,
    results: &mut Results,
) -> SyscallSet {
    let plan = ctx.plan;
    let dir = ctx.out.join("raw").join("syscalls");
    let mut set = SyscallSet {
        cell,
        servers: Vec::new(),
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        results
            .failures
            .push(format!("{prefix}: creating {}: {e}", dir.display()));
        return set;
    }
    let mut running: Vec<(String, Spawned)> = Vec::new();
    for spec in specs {
        match spawn_server(spec, plan.server_cpu, &mut results.commands) {
            Ok(s) => running.push((spec.name.clone(), s)),
            Err(e) => results
                .failures
                .push(format!("{prefix} {}: {e:#}", spec.name)),
        }
    }
    set.servers = running
        .iter()
        .map(|(n, _)| (n.clone(), BTreeMap::new()))
        .collect();
    for round in 1..=plan.side_rounds {
        for i in side_order(running.len(), round) {
            let (name, server) = &running[i];
            let stem = dir.join(format!("{prefix}-{name}-r{round}"));
            match count_syscalls(ctx, cell, server, &stem, results) {
                Ok(r) => {
                    set.servers[i].1.insert(round as u64, r);
                }
                Err(e) => results
                    .failures
                    .push(format!("{prefix} {name} round {round}: {e:#}")),
            }
        }
    }
    // The guards stop every server by PID here.
    drop(running);
    set
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
pub fn rss_run(
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
    let mut server = spawn_server(&spec, plan.server_cpu, &mut results.commands)?;
    let addr = server.addr.to_string();
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
pub fn client_runs(ctx: Ctx, results: &mut Results) -> anyhow::Result<()> {
    let Ctx { bins, plan, out } = ctx;
    let floor = servers::servers(bins, &Peers::default(), 1)
        .into_iter()
        .find(|s| s.name == FLOOR)
        .context("floor server")?;
    let mut server = spawn_server(&floor, plan.server_cpu, &mut results.commands)?;
    let addr = server.addr.to_string();
    for round in 1..=plan.client_rounds {
        let json = out
            .join("raw")
            .join(format!("client-echo-bench-{round}.json"));
        let mut args = side_load_args(&addr, SIDE_CELL, plan.duration_ms, plan.warmup_ms, plan);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_fails_to_start_shows_its_stderr() {
        let spec = ServerSpec {
            name: "broken".into(),
            argv: ["sh", "-c", "echo 'cannot bind: boom' >&2; exit 3"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            kind: crate::servers::Kind::Peer,
        };
        let mut log = Vec::new();
        let err = format!("{:#}", spawn_server(&spec, 0, &mut log).err().unwrap());
        assert!(err.contains("exited with status 3"), "{err}");
        assert!(err.contains("cannot bind: boom"), "{err}");
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn a_failed_side_run_shows_the_end_of_its_stderr() {
        let sh = |script: &str| ["sh", "-c", script].map(String::from).to_vec();
        let err = run_side(
            &sh(
                "echo counted; for i in 1 2 3 4; do echo early $i >&2; done; echo >&2; \
                 echo 'echo-bench: cannot connect to 127.0.0.1:9: refused' >&2; exit 1",
            ),
            "perf stat / echo-bench",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "perf stat / echo-bench exited with exit status: 1: early 3 | early 4 | \
             echo-bench: cannot connect to 127.0.0.1:9: refused"
        );
        let err = run_side(&sh("exit 2"), "x").unwrap_err().to_string();
        assert_eq!(err, "x exited with exit status: 2 (no stderr)");
        run_side(&sh("echo fine >&2"), "x").unwrap();
    }

    #[test]
    fn side_rounds_put_every_server_in_every_position() {
        let n = 4;
        let orders: Vec<Vec<usize>> = (1..=n as u32).map(|r| side_order(n, r)).collect();
        assert_eq!(orders[0], [0, 1, 2, 3]);
        for pos in 0..n {
            let mut at: Vec<usize> = orders.iter().map(|o| o[pos]).collect();
            at.sort();
            assert_eq!(at, [0, 1, 2, 3], "position {pos}");
        }
        for o in &orders {
            let mut s = o.clone();
            s.sort();
            assert_eq!(s, [0, 1, 2, 3]);
        }
        assert!(side_order(0, 1).is_empty());
    }

    #[test]
    fn perf_csv_counts() {
        let text = "# started on Mon\n\n\
                    1234,,raw_syscalls:sys_enter,2000,100.00,,\n\
                    56,,syscalls:sys_enter_io_uring_enter,2000,100.00,,\n\
                    <not counted>,,syscalls:sys_enter_epoll_pwait2,0,0.00,,\n";
        let c = parse_perf_csv(text);
        assert_eq!(c["raw_syscalls:sys_enter"], 1234);
        assert_eq!(c["syscalls:sys_enter_io_uring_enter"], 56);
        assert!(!c.contains_key("syscalls:sys_enter_epoll_pwait2"));
    }
}
