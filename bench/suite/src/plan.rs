//! The flags and the matrix they select.
//!
//! Three modes, so that a quick look and a decision are not confused:
//! - `quick`: 3 rounds of 1 s, a small matrix. Enough to see the shape; ratios get min–max
//!   spreads that decide nothing.
//! - `targets` (default): 9 rounds of 2 s on the cells the project's targets are judged on
//!   (1, 50 and 500 connections × 128 B and 4 KiB; every 1-thread cell also runs
//!   uring-multishot with `--batch-wait`, whose latency price shows most at 1 connection), open loop at 50% and 90% of the epoll
//!   runtime's saturation rate, syscalls per message, idle RSS at 10,000 connections, and the
//!   client's own cost.
//! - `full`: the whole matrix: connections {1, 50, 500, 5000} × sizes {64 B, 128 B, 1 KiB,
//!   4 KiB, 64 KiB} × server threads {1, 2}, 9 rounds each (well over an hour).

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, ValueEnum};

/// Runs the uring-vs-epoll benchmark matrix and writes JSON, a markdown table and SVG plots.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// How much to run: quick (minutes), targets (about 25 minutes), full (hours).
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
    /// Small matrix, 3 short rounds.
    Quick,
    /// The cells the targets are judged on, 9 rounds.
    Targets,
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
    /// File-name friendly identifier.
    pub fn id(&self) -> String {
        format!(
            "c{}-s{}-t{}",
            self.connections, self.size_bytes, self.threads
        )
    }
}

/// What will run.
pub struct Plan {
    /// Mode name for output.
    pub mode_name: &'static str,
    /// Closed-loop cells, run in this order.
    pub cells: Vec<Cell>,
    /// Cells that also get open-loop runs at 50% and 90% of the epoll runtime's saturation.
    pub open_loop_cells: Vec<Cell>,
    /// Open-loop rates as fractions of saturation.
    pub open_loop_fractions: Vec<f64>,
    /// Rounds per cell.
    pub rounds: u32,
    /// Measured ms per round.
    pub duration_ms: u64,
    /// Warmup ms per round.
    pub warmup_ms: u64,
    /// Server CPU.
    pub server_cpu: usize,
    /// Client CPU.
    pub client_cpu: usize,
    /// Idle connections for the RSS measurement.
    pub idle_connections: usize,
    /// Rounds for the client-efficiency comparison.
    pub client_rounds: u32,
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
        let key = Cell {
            connections: 50,
            size_bytes: 128,
            threads: 1,
        };
        let (mode_name, cells, open, rounds, duration_ms, warmup_ms, idle, client_rounds) =
            match cli.mode {
                Mode::Quick => (
                    "quick",
                    grid(&[1, 50, 500], &[128, 4096], &[1]),
                    vec![key],
                    3,
                    1000,
                    300,
                    1000,
                    3,
                ),
                Mode::Targets => (
                    "targets",
                    // 1 connection: the latency price of --batch-wait shows most there.
                    grid(&[1, 50, 500], &[128, 4096], &[1]),
                    vec![
                        key,
                        Cell {
                            size_bytes: 4096,
                            ..key
                        },
                    ],
                    9,
                    2000,
                    500,
                    10_000,
                    9,
                ),
                Mode::Full => (
                    "full",
                    grid(
                        &[1, 50, 500, 5000],
                        &[64, 128, 1024, 4096, 65536],
                        two_threads,
                    ),
                    vec![
                        key,
                        Cell {
                            size_bytes: 4096,
                            ..key
                        },
                    ],
                    9,
                    2000,
                    500,
                    10_000,
                    9,
                ),
            };
        Ok(Plan {
            mode_name,
            cells,
            open_loop_cells: open,
            open_loop_fractions: vec![0.5, 0.9],
            rounds: cli.rounds.unwrap_or(rounds),
            duration_ms: cli.duration_ms.unwrap_or(duration_ms),
            warmup_ms,
            server_cpu: cli.server_cpu,
            client_cpu: cli.client_cpu,
            idle_connections: cli.idle_connections.unwrap_or(idle),
            client_rounds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn targets_mode_covers_the_target_cells() {
        let cli = Cli::parse_from(["echo-suite"]);
        let plan = Plan::new(&cli).unwrap();
        for (c, s) in [(50, 128), (500, 128), (50, 4096), (500, 4096)] {
            assert!(plan
                .cells
                .iter()
                .any(|x| x.connections == c && x.size_bytes == s && x.threads == 1));
        }
        assert_eq!(plan.rounds, 9);
    }
}
