//! Running things and reading back what they measured.
//!
//! Every comparison is one echo-bench run with all servers of a cell as `--spawn` targets
//! (interleaved rounds, shuffled order, everything pinned by echo-bench). Servers the suite
//! starts itself (start-up checks and side runs, [`side`]) go through echo-bench's own spawn code
//! ([`Spawned`](echo_bench::spawn::Spawned)): pinned to the server CPU, ready when they print
//! `listening on`, their stderr kept for the error message, stopped by PID (SIGTERM, then
//! SIGKILL) when the guard drops. echo-bench's reports are read through its own typed report
//! structs ([`JsonReport`]), so a field echo-bench renames fails the read instead of becoming
//! zero. Everything talks only to 127.0.0.1, and every run is bounded by the plan's durations.

pub mod side;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use echo_bench::report::JsonReport;

use crate::ablation::{self, FeaturesLine, Unavailable, Variant};
use crate::plan::{Cell, Plan, SIDE_CELL};
use crate::servers::{self, Kind, Peers, ServerSpec, EPOLL, MULTISHOT_OFF};
use crate::Bins;

pub use side::{ClientRound, RssResult, SyscallRound, SyscallSet};

/// Per-round figures of one target.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Messages per second.
    pub msgs_per_s: f64,
    /// Server CPU ns per message (None where echo-bench had none, or read 0: less than one
    /// clock tick of server CPU in the round).
    pub server_cpu_ns: Option<f64>,
    /// p50 latency, µs.
    pub p50_us: f64,
    /// p99 latency, µs.
    pub p99_us: f64,
    /// echo-bench judged the client the bottleneck in this round: messages/s and latency then
    /// measure the client; CPU per message stays valid.
    pub client_bound: bool,
}

/// One target of one echo-bench comparison run.
#[derive(Clone, Debug, Default)]
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
    /// The server's `features:` line, when it printed one.
    pub features: Option<String>,
}

impl TargetResult {
    /// Rounds in which the client was the bottleneck.
    pub fn client_bound_rounds(&self) -> usize {
        self.rounds.values().filter(|r| r.client_bound).count()
    }
}

/// One echo-bench comparison run (a cell, closed or open loop, or an ablation cell).
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

    /// Whether the client was the bottleneck for any target in any round.
    pub fn client_bound(&self) -> bool {
        self.targets.iter().any(|t| t.client_bound_rounds() > 0)
    }
}

/// A server of the run and what it said about itself at start.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Table name.
    pub name: String,
    /// Command line.
    pub command: String,
    /// Whose it is.
    pub kind: Kind,
    /// Its `features:` line.
    pub features: Option<String>,
}

/// The ablation: what ran and what it measured.
#[derive(Default)]
pub struct AblationResult {
    /// The default engine's `features:` line on this machine.
    pub features: Option<FeaturesLine>,
    /// The default engine's command line.
    pub default_command: String,
    /// The variants that ran, in target order (after the default).
    pub variants: Vec<Variant>,
    /// Features and variants left out, with the reason.
    pub unavailable: Vec<Unavailable>,
    /// One comparison per ablation cell (the default is the target named [`DEFAULT`]).
    pub cells: Vec<CellResult>,
    /// Syscall side runs per ablation cell.
    pub syscalls: Vec<SyscallSet>,
}

/// Name of the default engine in the ablation's comparisons.
pub const DEFAULT: &str = "default";

/// Everything the suite measured.
#[derive(Default)]
pub struct Results {
    /// The servers of the 1-thread cells, with their features lines.
    pub servers: Vec<ServerInfo>,
    /// Peers found and skipped.
    pub peers: Peers,
    /// Closed-loop cells.
    pub closed: Vec<CellResult>,
    /// Open-loop cells.
    pub open: Vec<CellResult>,
    /// Syscall side runs at [`SIDE_CELL`].
    pub syscalls: Option<SyscallSet>,
    /// Why syscalls could not be counted (perf missing or refused).
    pub syscalls_unavailable: Option<String>,
    /// Idle RSS per connection.
    pub rss: Vec<RssResult>,
    /// Client efficiency rounds.
    pub client: Vec<ClientRound>,
    /// The ablation, when the plan has one.
    pub ablation: Option<AblationResult>,
    /// Every command run, for the record.
    pub commands: Vec<String>,
    /// What failed (non-zero exit of a run, verification errors...).
    pub failures: Vec<String>,
}

/// Shell-quotes a word list for the record.
pub fn shell_quote(args: &[String]) -> String {
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

/// Reads an echo-bench JSON report through echo-bench's own report types.
pub fn read_report(path: &Path) -> anyhow::Result<JsonReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not an echo-bench report", path.display()))
}

/// The echo-bench flags of every run the suite makes: its JSON report to `json`, overwriting,
/// no progress output.
fn report_flags(json: &Path) -> [String; 4] {
    [
        "--json".into(),
        json.display().to_string(),
        "--force".into(),
        "--quiet".into(),
    ]
}

/// Runs echo-bench with `args` (plus [`report_flags`]) and returns the report.
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
    argv.extend(report_flags(json));
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
                            // A round without server CPU time (a stalled round of a few messages,
                            // or where CPU is read in 10 ms clock ticks, less than one) has no
                            // figure.
                            server_cpu_ns: r.server_cpu_ns_per_msg.filter(|c| *c > 0.0),
                            p50_us: r.p50_us,
                            p99_us: r.p99_us,
                            client_bound: r.client.client_bound,
                        },
                    )
                })
                .collect(),
            p50_us: t.latency.p50_us,
            p99_us: t.latency.p99_us,
            p999_us: t.latency.p999_us,
            service_p99_us: t.service_time.as_ref().map(|s| s.p99_us),
            rate_shortfall: t.rate_shortfall,
            features: t.info.server_features.clone(),
        })
        .collect()
}

/// What every run needs: the binaries, the plan and the output directory.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The workspace binaries.
    pub bins: &'a Bins,
    /// The plan.
    pub plan: &'a Plan,
    /// The results directory.
    pub out: &'a Path,
}

/// One echo-bench comparison of `specs` in `cell` (open loop at `rate` = (msgs/s, fraction of
/// saturation)), written to `raw/<id>.json`. A comparison that wrote no report is recorded as a
/// failure (None) and the suite goes on with the next.
fn compare(
    ctx: Ctx,
    id: &str,
    cell: Cell,
    specs: &[ServerSpec],
    rate: Option<(f64, f64)>,
    results: &mut Results,
) -> Option<CellResult> {
    match try_compare(ctx, id, cell, specs, rate, results) {
        Ok(r) => Some(r),
        Err(e) => {
            results.failures.push(format!("{id}: {e:#}"));
            None
        }
    }
}

fn try_compare(
    ctx: Ctx,
    id: &str,
    cell: Cell,
    specs: &[ServerSpec],
    rate: Option<(f64, f64)>,
    results: &mut Results,
) -> anyhow::Result<CellResult> {
    let Ctx { bins, plan, out } = ctx;
    let json = out.join("raw").join(format!("{id}.json"));
    let plot = out.join("raw").join(format!("{id}.svg"));
    let server_cpus = if cell.threads > 1 {
        // Two server threads on a 2-CPU machine cannot be kept apart from the client.
        format!("0-{}", cell.threads - 1)
    } else {
        plan.server_cpu.to_string()
    };
    let mut args: Vec<String> = Vec::new();
    for s in specs {
        args.extend([
            "--spawn".into(),
            s.command_line(),
            "--name".into(),
            s.name.clone(),
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
        id.to_string(),
    ]);
    if let Some((r, _)) = rate {
        args.extend(["--rate".into(), format!("{r:.0}")]);
    }
    eprintln!("echo-suite: {id} ({} servers)", specs.len());
    let report = echo_bench(bins, &args, &json, id, results)?;
    Ok(CellResult {
        cell,
        rate: rate.map(|r| r.0),
        rate_fraction: rate.map(|r| r.1),
        json,
        plot,
        targets: parse_targets(&report),
    })
}

/// Starts every server once (ready line, features line) before any load: a peer that cannot
/// start is skipped with the reason, one of ours is recorded as a failure and left out.
fn check_servers(bins: &Bins, plan: &Plan, results: &mut Results) {
    for spec in servers::servers(bins, &results.peers.clone(), 1) {
        log_start_check(&spec, plan.server_cpu, results);
        match servers::try_start(&spec, plan.server_cpu) {
            Ok(features) => results.servers.push(ServerInfo {
                name: spec.name.clone(),
                command: spec.command_line(),
                kind: spec.kind,
                features,
            }),
            Err(e) if spec.kind == Kind::Peer => results
                .peers
                .skip(&spec.name, format!("could not start: {e:#}")),
            Err(e) => results
                .failures
                .push(format!("{} could not start: {e:#}", spec.name)),
        }
    }
}

/// Records a start-up check ([`servers::try_start`]) among the commands.
fn log_start_check(spec: &ServerSpec, cpu: usize, results: &mut Results) {
    let mut argv = vec!["taskset".to_string(), "-c".into(), cpu.to_string()];
    argv.extend(spec.argv.iter().cloned());
    results.commands.push(format!(
        "{}  # start-up check: ready and features lines, then stopped",
        shell_quote(&argv)
    ));
}

/// The servers of a cell that passed [`check_servers`].
fn cell_servers(bins: &Bins, results: &Results, threads: usize) -> Vec<ServerSpec> {
    servers::servers(bins, &results.peers, threads)
        .into_iter()
        .filter(|s| results.servers.iter().any(|i| i.name == s.name))
        .collect()
}

/// Runs the whole plan. A failed run (a comparison, a side measurement) is recorded in
/// [`Results::failures`] and the suite goes on with the next.
pub fn run_all(ctx: Ctx, peers: Peers) -> Results {
    let Ctx { bins, plan, .. } = ctx;
    let mut results = Results {
        peers,
        ..Results::default()
    };
    let main = !plan.cells.is_empty() || plan.syscalls || plan.idle_connections > 0;
    if main {
        eprintln!("echo-suite: starting every server once");
        check_servers(bins, plan, &mut results);
    }
    for &cell in &plan.cells {
        let specs = cell_servers(bins, &results, cell.threads);
        let id = format!("closed-{}", cell.id());
        if let Some(r) = compare(ctx, &id, cell, &specs, None, &mut results) {
            results.closed.push(r);
        }
    }
    for &cell in &plan.open_loop_cells {
        let sat = results
            .closed
            .iter()
            .find(|c| c.cell == cell)
            .and_then(|c| c.target(EPOLL))
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
        let specs = cell_servers(bins, &results, cell.threads);
        for &frac in &plan.open_loop_fractions {
            let id = format!("open{:.0}-{}", frac * 100.0, cell.id());
            let rate = Some((sat * frac, frac));
            if let Some(r) = compare(ctx, &id, cell, &specs, rate, &mut results) {
                results.open.push(r);
            }
        }
    }
    if plan.syscalls {
        eprintln!("echo-suite: syscalls per message (perf stat)");
        match side::perf_available() {
            Err(why) => results.syscalls_unavailable = Some(why),
            Ok(()) => {
                let specs = cell_servers(bins, &results, 1);
                let set = side::syscall_rounds(ctx, SIDE_CELL, &specs, "syscalls", &mut results);
                results.syscalls = Some(set);
            }
        }
    }
    if plan.idle_connections > 0 {
        eprintln!(
            "echo-suite: idle RSS per connection ({} connections)",
            plan.idle_connections
        );
        // Batching changes waits, not memory: one uring-multishot measurement is enough.
        for spec in cell_servers(bins, &results, 1)
            .into_iter()
            .filter(|s| s.name != MULTISHOT_OFF)
        {
            match side::rss_run(plan, &spec, plan.idle_connections, &mut results) {
                Ok(r) => results.rss.push(r),
                Err(e) => results.failures.push(format!("rss {}: {e:#}", spec.name)),
            }
        }
    }
    if plan.client_rounds > 0 {
        eprintln!("echo-suite: client cost, echo-bench vs ref-client");
        if let Err(e) = side::client_runs(ctx, &mut results) {
            results.failures.push(format!("client efficiency: {e:#}"));
        }
    }
    if !plan.ablation_cells.is_empty() {
        results.ablation = Some(run_ablation(ctx, &mut results));
    }
    results
}

/// The ablation targets: the default engine first, then each variant that starts (a variant
/// that cannot start, or whose features line shows the flip did not happen, is left out with
/// the reason).
fn ablation_specs(
    bins: &Bins,
    plan: &Plan,
    a: &mut AblationResult,
    results: &mut Results,
) -> Vec<ServerSpec> {
    let default = servers::ours(bins, DEFAULT, "uring-multishot", 1, &[]);
    a.default_command = default.command_line();
    log_start_check(&default, plan.server_cpu, results);
    let line = match servers::try_start(&default, plan.server_cpu) {
        Ok(line) => line,
        Err(e) => {
            results.failures.push(format!(
                "ablation: the default uring-multishot could not start: {e:#}"
            ));
            return Vec::new();
        }
    };
    let Some(features) = line.as_deref().and_then(ablation::parse_features_line) else {
        results
            .failures
            .push("ablation: uring-multishot printed no features: line".into());
        return Vec::new();
    };
    let switchable: Vec<&str> = uring_echo::config::SWITCHABLE_FEATURES
        .iter()
        .map(|f| f.name())
        .collect();
    let default_batch = uring_echo::config::BatchPolicy::default().to_string();
    let (variants, unavailable) = ablation::variants(&features, &switchable, &default_batch);
    a.features = Some(features);
    a.unavailable = unavailable;
    let mut specs = vec![default];
    for v in variants {
        let extra: Vec<&str> = v.args.iter().map(String::as_str).collect();
        let spec = servers::ours(bins, &v.name, "uring-multishot", 1, &extra);
        log_start_check(&spec, plan.server_cpu, results);
        let checked = servers::try_start(&spec, plan.server_cpu)
            .map_err(|e| format!("could not start: {e:#}"))
            .and_then(|line| ablation::check_flip(&v, line.as_deref()));
        match checked {
            Ok(()) => {
                specs.push(spec);
                a.variants.push(v);
            }
            Err(reason) => a.unavailable.push(Unavailable {
                name: v.name.clone(),
                reason,
            }),
        }
    }
    specs
}

fn run_ablation(ctx: Ctx, results: &mut Results) -> AblationResult {
    let Ctx { bins, plan, .. } = ctx;
    eprintln!("echo-suite: ablation: starting the default engine and each variant once");
    let mut a = AblationResult::default();
    let specs = ablation_specs(bins, plan, &mut a, results);
    if specs.is_empty() {
        return a;
    }
    let perf = side::perf_available();
    for &cell in &plan.ablation_cells {
        let id = format!("ablation-{}", cell.id());
        if let Some(r) = compare(ctx, &id, cell, &specs, None, results) {
            a.cells.push(r);
        }
        if perf.is_ok() {
            let prefix = format!("ablation-syscalls-{}", cell.id());
            let set = side::syscall_rounds(ctx, cell, &specs, &prefix, results);
            a.syscalls.push(set);
        }
    }
    if let Err(why) = perf {
        results.syscalls_unavailable.get_or_insert(why);
    }
    a
}
