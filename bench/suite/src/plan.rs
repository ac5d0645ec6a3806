//! The flags and the matrix they select.
//!
//! Four modes, so that a quick look and a decision are not confused:
//! - `quick`: 3 rounds of 1 s on two closed-loop cells (1 and 50 connections × 128 B), open
//!   loop at 50%, one ablation cell, one round of each side measurement. Every server and every
//!   ablation variant runs at least once; the spreads decide nothing.
//! - `targets` (default): 9 rounds of 2 s on the cells the targets of issue 12 are judged on
//!   (closed loop 1 × 128 B, 50 and 500 × 128 B and × 4 KiB; open loop 50 × 128 B at 50% and
//!   90% of the epoll runtime's saturation), syscalls per message, idle RSS at 10,000
//!   connections, the client's own cost, and the ablation.
//! - `ablation`: the ablation alone (uring-multishot with each optional feature flipped).
//! - `full`: connections {1, 50, 500, 5000} × sizes {64 B, 128 B, 1 KiB, 4 KiB, 64 KiB} ×
//!   server threads {1, 2}, 9 rounds each, plus everything `targets` runs (hours).
//!
//! Cells that decide nothing are left out of `targets`: 1 × 4 KiB (the 1-connection targets are
//! judged at 128 B; a lone connection's cost barely depends on the size up to 4 KiB) and open
//! loop at 50 × 4 KiB (one client CPU cannot offer 90% of that cell's saturation rate: the
//! previous targets run reached it in at most 3 of 9 rounds). `full` still runs both.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, ValueEnum};

/// Runs the uring-vs-epoll benchmark matrix (our engines, the floor and the peer servers) and the
/// uring-multishot feature ablation; writes JSON, markdown tables and SVG plots.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// How much to run: quick (about 4 min), targets (35-45 min), ablation (6-14 min),
    /// full (hours).
    #[arg(long, value_enum, default_value_t = Mode::Targets)]
    pub mode: Mode,
    /// Output directory [default: bench/results/<date>-<host>-<mode>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Overwrite a non-empty output directory.
    #[arg(long)]
    pub force: bool,
    /// Directory holding uring-echo, echo-bench, epoll-floor and ref-client [default: the
    /// directory of this executable].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Directory holding the peer servers (peer-monoio, ...); a peer missing there is skipped
    /// with a note in results.md.
    #[arg(long, value_name = "DIR", default_value = "bench/peers/target/release")]
    pub peer_dir: PathBuf,
    /// Rounds per cell (overrides the mode's).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=99))]
    pub rounds: Option<u32>,
    /// Measured milliseconds per round (overrides the mode's).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub duration_ms: Option<u64>,
    /// CPU for the servers.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// CPU for the clients.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Idle connections for the RSS-per-connection measurement (overrides the mode's).
    #[arg(long, value_name = "N")]
    pub idle_connections: Option<usize>,
}

/// Suite size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Every server once, 3 short rounds: indicative only.
    Quick,
    /// The cells the targets are judged on, 9 rounds, and the ablation.
    Targets,
    /// The uring-multishot feature ablation only, 9 rounds.
    Ablation,
    /// Everything, 9 rounds.
    Full,
}

/// One closed-loop cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Client connections.
    pub connections: usize,
    /// Message size.
    pub size_bytes: usize,
    /// Server worker threads.
    pub threads: usize,
}

impl Cell {
    /// A 1-thread cell.
    pub const fn new(connections: usize, size_bytes: usize) -> Cell {
        Cell {
            connections,
            size_bytes,
            threads: 1,
        }
    }

    /// File-name friendly identifier.
    pub fn id(&self) -> String {
        format!(
            "c{}-s{}-t{}",
            self.connections, self.size_bytes, self.threads
        )
    }

    /// `50 × 128 B` for tables.
    pub fn label(&self) -> String {
        let size = match self.size_bytes {
            s if s >= 1024 && s % 1024 == 0 => format!("{} KiB", s / 1024),
            s => format!("{s} B"),
        };
        let threads = if self.threads == 1 {
            String::new()
        } else {
            format!(", {} threads", self.threads)
        };
        format!("{} × {size}{threads}", self.connections)
    }
}

/// The cell the syscall counts and the client's own cost are measured in.
pub const SIDE_CELL: Cell = Cell::new(50, 128);

/// What will run.
#[derive(Debug)]
pub struct Plan {
    /// Mode name for output.
    pub mode_name: &'static str,
    /// Closed-loop cells, run in this order (empty: no comparison of servers).
    pub cells: Vec<Cell>,
    /// Cells that also get open-loop runs at fractions of the epoll runtime's saturation.
    pub open_loop_cells: Vec<Cell>,
    /// Open-loop rates as fractions of saturation.
    pub open_loop_fractions: Vec<f64>,
    /// Rounds per cell (closed, open and ablation comparisons).
    pub rounds: u32,
    /// Measured ms per round.
    pub duration_ms: u64,
    /// Warmup ms per round.
    pub warmup_ms: u64,
    /// Server CPU.
    pub server_cpu: usize,
    /// Client CPU.
    pub client_cpu: usize,
    /// Count syscalls per message of every server at [`SIDE_CELL`].
    pub syscalls: bool,
    /// Interleaved rounds of the syscall side runs (main and ablation).
    pub side_rounds: u32,
    /// Measured ms of one syscall side run.
    pub side_duration_ms: u64,
    /// Warmup ms of one syscall side run.
    pub side_warmup_ms: u64,
    /// Idle connections for the RSS measurement (0: not measured).
    pub idle_connections: usize,
    /// Rounds for the client-efficiency comparison (0: not measured).
    pub client_rounds: u32,
    /// Cells of the uring-multishot feature ablation (empty: no ablation).
    pub ablation_cells: Vec<Cell>,
    /// Where the peer servers are.
    pub peer_dir: PathBuf,
}

/// The closed-loop cells of `targets` (and the open-loop one, 50 × 128 B).
pub fn target_cells() -> Vec<Cell> {
    vec![
        // 1 connection: the latency price of batching (ping-pong against multishot-off).
        Cell::new(1, 128),
        Cell::new(50, 128),
        Cell::new(500, 128),
        Cell::new(50, 4096),
        Cell::new(500, 4096),
    ]
}

/// The ablation cells: a lone connection (latency price), many small messages (syscalls and
/// batching), and large messages (where bundles, incremental buffers and zero-copy send act).
pub fn ablation_cells() -> Vec<Cell> {
    vec![Cell::new(1, 128), Cell::new(50, 128), Cell::new(50, 65536)]
}

impl Plan {
    /// The plan for these flags.
    pub fn new(cli: &Cli) -> anyhow::Result<Plan> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if cli.server_cpu == cli.client_cpu && cpus > 1 {
            bail!("--server-cpu and --client-cpu are the same CPU; pin them apart");
        }
        for (flag, cpu) in [
            ("--server-cpu", cli.server_cpu),
            ("--client-cpu", cli.client_cpu),
        ] {
            if cpu >= cpus {
                bail!("{flag} {cpu}: this machine has CPUs 0..{}", cpus - 1);
            }
        }
        let grid = |conns: &[usize], sizes: &[usize], threads: &[usize]| {
            let mut v = Vec::new();
            for &t in threads {
                for &s in sizes {
                    for &c in conns {
                        v.push(Cell {
                            connections: c,
                            size_bytes: s,
                            threads: t,
                        });
                    }
                }
            }
            v
        };
        let two_threads: &[usize] = if cpus >= 2 { &[1, 2] } else { &[1] };
        let key = SIDE_CELL;
        let mut plan = Plan {
            mode_name: "targets",
            cells: target_cells(),
            open_loop_cells: vec![key],
            open_loop_fractions: vec![0.5, 0.9],
            rounds: 9,
            duration_ms: 2000,
            warmup_ms: 500,
            server_cpu: cli.server_cpu,
            client_cpu: cli.client_cpu,
            syscalls: true,
            side_rounds: 5,
            side_duration_ms: 1000,
            side_warmup_ms: 300,
            idle_connections: 10_000,
            client_rounds: 9,
            ablation_cells: ablation_cells(),
            peer_dir: cli.peer_dir.clone(),
        };
        match cli.mode {
            Mode::Targets => {}
            Mode::Quick => {
                plan.mode_name = "quick";
                plan.cells = vec![Cell::new(1, 128), key];
                plan.open_loop_fractions = vec![0.5];
                plan.rounds = 3;
                plan.duration_ms = 1000;
                plan.warmup_ms = 300;
                plan.side_rounds = 1;
                plan.side_duration_ms = 500;
                plan.side_warmup_ms = 200;
                plan.idle_connections = 1000;
                plan.client_rounds = 3;
                plan.ablation_cells = vec![key];
            }
            Mode::Ablation => {
                plan.mode_name = "ablation";
                plan.cells = Vec::new();
                plan.open_loop_cells = Vec::new();
                plan.syscalls = false;
                plan.idle_connections = 0;
                plan.client_rounds = 0;
            }
            Mode::Full => {
                plan.mode_name = "full";
                plan.cells = grid(
                    &[1, 50, 500, 5000],
                    &[64, 128, 1024, 4096, 65536],
                    two_threads,
                );
                plan.open_loop_cells = vec![key, Cell::new(50, 4096)];
            }
        }
        if let Some(r) = cli.rounds {
            plan.rounds = r;
        }
        if let Some(d) = cli.duration_ms {
            plan.duration_ms = d;
        }
        if let Some(n) = cli.idle_connections {
            plan.idle_connections = n;
        }
        Ok(plan)
    }

    /// Roughly how long the plan runs with `servers` servers in 1-thread cells (fewer in
    /// multi-thread cells: the floor and the peers are single-threaded) and `variants` ablation
    /// targets (the default engine included). From the last targets run: a trial costs its
    /// warmup and window plus ~30 ms; a perf side run ~0.3 s more; an idle-RSS run ~0.5 s per
    /// 1,000 connections plus start and stop.
    pub fn estimate(
        &self,
        servers: usize,
        multi_thread_servers: usize,
        variants: usize,
    ) -> Duration {
        let trial = (self.warmup_ms + self.duration_ms) as f64 / 1000.0 + 0.03;
        let side = (self.side_warmup_ms + self.side_duration_ms) as f64 / 1000.0 + 0.3;
        let per_cell = |c: &Cell| {
            let n = if c.threads == 1 {
                servers
            } else {
                multi_thread_servers
            };
            n as f64 * self.rounds as f64 * trial
        };
        let mut s: f64 = self.cells.iter().map(per_cell).sum();
        s += self.open_loop_cells.iter().map(per_cell).sum::<f64>()
            * self.open_loop_fractions.len() as f64;
        if self.syscalls {
            s += servers as f64 * self.side_rounds as f64 * side;
        }
        if self.idle_connections > 0 {
            s += servers as f64 * (1.0 + self.idle_connections as f64 / 2000.0);
        }
        s += self.client_rounds as f64 * 2.0 * trial;
        s += self.ablation_cells.len() as f64
            * variants as f64
            * (self.rounds as f64 * trial + self.side_rounds as f64 * side);
        Duration::from_secs_f64(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn plan(args: &[&str]) -> Plan {
        let mut argv = vec!["echo-suite"];
        argv.extend(args);
        Plan::new(&Cli::parse_from(argv)).unwrap()
    }

    /// Servers in a 1-thread cell with every peer built: 5 of ours (uring, uring-multishot,
    /// multishot-off, epoll, floor) and 5 peers; 4 in multi-thread cells (no floor, no peers).
    const SERVERS: usize = 10;
    const MULTI: usize = 4;
    /// Ablation targets: the default, 2 batching policies and the 6 switchable features
    /// flipped.
    const VARIANTS: usize = 9;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn targets_mode_covers_every_target_cell_with_nine_rounds_and_the_ablation() {
        let plan = plan(&[]);
        assert_eq!(plan.mode_name, "targets");
        for (c, s) in [(1, 128), (50, 128), (500, 128), (50, 4096), (500, 4096)] {
            assert!(plan.cells.contains(&Cell::new(c, s)), "{c} × {s}");
        }
        assert!(plan.cells.iter().all(|c| c.threads == 1));
        assert_eq!(plan.open_loop_cells, vec![Cell::new(50, 128)]);
        assert!(plan.open_loop_fractions.contains(&0.5));
        assert!(plan.rounds >= 9);
        assert!(plan.syscalls && plan.side_rounds >= 5);
        assert_eq!(plan.ablation_cells, ablation_cells());
        assert!(plan.idle_connections > 0 && plan.client_rounds > 0);
        let est = plan.estimate(SERVERS, MULTI, VARIANTS);
        assert!(
            est < Duration::from_secs(55 * 60),
            "targets mode would take {est:?}"
        );
    }

    #[test]
    fn ablation_mode_runs_only_the_ablation() {
        let plan = plan(&["--mode", "ablation"]);
        assert!(plan.cells.is_empty() && plan.open_loop_cells.is_empty());
        assert!(!plan.syscalls);
        assert_eq!(plan.idle_connections, 0);
        assert_eq!(plan.client_rounds, 0);
        assert_eq!(plan.ablation_cells, ablation_cells());
        assert!(plan.ablation_cells.iter().any(|c| c.size_bytes >= 65536));
        assert!(plan.ablation_cells.iter().any(|c| c.connections == 1));
        assert!(plan.rounds >= 9);
        assert!(plan.estimate(SERVERS, MULTI, VARIANTS) < Duration::from_secs(20 * 60));
    }

    #[test]
    fn quick_mode_runs_every_kind_of_measurement_in_a_few_minutes() {
        let plan = plan(&["--mode", "quick"]);
        assert!(!plan.cells.is_empty() && !plan.open_loop_cells.is_empty());
        assert!(!plan.ablation_cells.is_empty());
        assert!(plan.syscalls && plan.side_rounds >= 1);
        assert!(plan.idle_connections > 0 && plan.client_rounds > 0);
        let est = plan.estimate(SERVERS, MULTI, VARIANTS);
        assert!(est < Duration::from_secs(6 * 60), "quick mode: {est:?}");
    }

    #[test]
    fn full_mode_adds_the_whole_grid_and_two_thread_cells() {
        let plan = plan(&["--mode", "full"]);
        assert_eq!(plan.cells.len() % 20, 0);
        assert!(plan.cells.contains(&Cell::new(5000, 65536)));
        for c in target_cells() {
            assert!(plan.cells.contains(&c));
        }
        assert_eq!(plan.ablation_cells, ablation_cells());
    }

    #[test]
    fn overrides_apply() {
        let plan = plan(&["--rounds", "11", "--duration-ms", "500"]);
        assert_eq!((plan.rounds, plan.duration_ms), (11, 500));
    }

    #[test]
    fn cell_labels() {
        assert_eq!(Cell::new(50, 128).label(), "50 × 128 B");
        assert_eq!(Cell::new(50, 65536).label(), "50 × 64 KiB");
        let two = Cell {
            threads: 2,
            ..Cell::new(1, 4096)
        };
        assert_eq!(two.label(), "1 × 4 KiB, 2 threads");
    }
}
