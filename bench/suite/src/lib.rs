//! `echo-suite`: the benchmark matrix that answers "what does io_uring buy over epoll here?".
//!
//! It drives the real binaries of the workspace and nothing else: `echo-bench` spawns each
//! server, pins it and the client to different CPUs, runs interleaved rounds in shuffled order
//! and writes a JSON report; this program only chooses the matrix, adds the measurements
//! echo-bench cannot make from inside a run (syscalls per message with `perf stat`, idle RSS per
//! connection, the client's own cost against a reference client) and turns the JSON into a
//! markdown table (`results.md`), the exact commands (`README.md`) and SVG plots under
//! `bench/results/<date>-<host>-<mode>/`, beside the raw JSON report of every run (`raw/`).
//!
//! Why ratios are per round: on a shared 2-vCPU machine messages/s swings ±20% between runs, so
//! every comparison is `target / baseline` within one round (both ran back to back), summarised
//! as the median and spread over rounds (echo-bench's `compare` rules: order-statistic interval
//! from 5 rounds on, "not significant" when the interval contains 1.0).
//!
//! Servers: `uring` (tokio-uring, the default runtime), `uring-multishot` (raw io_uring engine),
//! `epoll` (tokio), and `floor` (bench/epoll-floor, a runtime-free epoll server, single thread).
#![warn(missing_docs)]

pub mod measure;
pub mod plan;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use plan::{Cli, Plan};

/// The workspace binaries the suite drives, all from one target directory.
pub struct Bins {
    /// The server under test.
    pub uring_echo: PathBuf,
    /// The load generator.
    pub echo_bench: PathBuf,
    /// The runtime-free epoll floor server.
    pub epoll_floor: PathBuf,
    /// The thread-per-connection reference client.
    pub ref_client: PathBuf,
}

impl Bins {
    fn find(dir: &Path) -> anyhow::Result<Bins> {
        let get = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "{} not found; build the workspace first: cargo build --release --workspace",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Bins {
            uring_echo: get("uring-echo")?,
            echo_bench: get("echo-bench")?,
            epoll_floor: get("epoll-floor")?,
            ref_client: get("ref-client")?,
        })
    }
}

/// Run the suite described by `cli`; the exit code is 1 when any measurement failed.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating echo-suite")?;
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => exe
            .parent()
            .context("executable has no directory")?
            .to_path_buf(),
    };
    let bins = Bins::find(&bin_dir)?;
    let plan = Plan::new(&cli)?;
    let out = match &cli.out {
        Some(d) => d.clone(),
        None => report::default_out_dir(plan.mode_name)?,
    };
    if out.exists() && std::fs::read_dir(&out)?.next().is_some() && !cli.force {
        bail!(
            "{} exists and is not empty (use --force to overwrite)",
            out.display()
        );
    }
    std::fs::create_dir_all(out.join("raw"))
        .with_context(|| format!("creating {}", out.display()))?;

    eprintln!(
        "echo-suite: {} mode, {} closed-loop cells, {} rounds of {} ms; results in {}",
        plan.mode_name,
        plan.cells.len(),
        plan.rounds,
        plan.duration_ms,
        out.display()
    );
    let results = measure::run_all(&bins, &plan, &out)?;
    report::write(&plan, &results, &out)?;
    eprintln!("echo-suite: wrote {}", out.join("results.md").display());
    print!("{}", std::fs::read_to_string(out.join("results.md"))?);
    Ok(if results.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &results.failures {
            eprintln!("echo-suite: FAILED: {f}");
        }
        ExitCode::from(1)
    })
}
