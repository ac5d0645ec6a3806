//! echo-bench: a load generator for TCP echo servers whose numbers can be trusted.
//!
//! It verifies every echoed byte, records every latency in HdrHistograms, measures open-loop
//! latency from intended send times (no coordinated omission), and compares servers over
//! interleaved rounds with medians, spread and per-round ratios. `main.rs` only parses flags
//! and calls [`run`].
//!
//! Module map:
//! - [`cli`]: clap flags and value parsers (raw); [`config`]: validated configuration.
//! - [`message`]: message layout, pattern, streaming verifier, per-connection error kinds.
//! - [`conn`]: drives one connection (closed loop, pipelining, open loop schedule).
//! - [`pacer`]: microsecond timerfd wake-ups for the open loop.
//! - [`load`]: one trial: client threads, common start, CPU sampling, merge;
//!   [`bottleneck`]: was the client the bottleneck (thread CPU demand, send lateness).
//! - [`record`]: per-thread histograms (ns) and interval snapshots.
//! - [`runner`]: rounds, spawned servers, output; [`spawn`]: server processes.
//! - [`report`]: result and JSON types; [`report::text`]: stdout summary; [`report::hdr`]:
//!   `.hgrm`, `.hlog`; [`plot`]: SVG; [`compare`]: comparison statistics.
//! - [`slo`]: the `slo` subcommand (search, trial verdicts, report, latency–throughput curve);
//!   [`compare::saved`]: the `compare` subcommand.
//! - [`merge`]: the `merge` subcommand; [`host`], [`clock`], [`interrupt`]: system glue.
#![warn(missing_docs)]

pub mod bottleneck;
pub mod cli;
pub mod clock;
pub mod compare;
pub mod config;
pub mod conn;
pub mod host;
pub mod interrupt;
pub mod load;
pub mod merge;
pub mod message;
pub mod pacer;
pub mod plot;
pub mod record;
pub mod report;
pub mod runner;
pub mod slo;
pub mod spawn;

use std::io::Write;
use std::path::Path;

use anyhow::Context;

pub use cli::{parse_args, Cli};

/// Run a parsed command line. `command_line` is recorded in the JSON report. Returns the
/// process exit code for completed runs (0, or 1 when connection errors were counted).
pub fn run(cli: Cli, command_line: Vec<String>) -> anyhow::Result<u8> {
    match &cli.command {
        Some(cli::Command::Merge(args)) => {
            merge::run(args)?;
            Ok(0)
        }
        Some(cli::Command::Slo(args)) => slo::run(args, command_line),
        Some(cli::Command::Compare(args)) => compare::saved::run(args),
        None => {
            let cfg = config::BenchConfig::from_args(&cli.bench, command_line)?;
            runner::run(cfg)
        }
    }
}

/// Exit code for a run that ended with an error: 130 after Ctrl-C/SIGTERM, else 1.
pub fn error_exit_code() -> u8 {
    if interrupt::interrupted() {
        130
    } else {
        1
    }
}

/// Log to stderr, filtered by `RUST_LOG` (default: warnings only).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Write `bytes` to `path`; without `force`, fail if the file exists (checked atomically).
pub fn write_file(path: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "refusing to overwrite existing file {} (use --force)",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        }
    })?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
