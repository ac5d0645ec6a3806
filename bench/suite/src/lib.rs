//! `echo-suite`: the benchmark matrix that answers "what does io_uring buy over epoll here, and
//! where do we stand against the runtimes people would pick instead?".
//!
//! It drives the real binaries and nothing else: `echo-bench` spawns each server, pins it and the
//! client to different CPUs, runs interleaved rounds in shuffled order and writes a JSON report;
//! this program only chooses the matrix ([`plan`]) and the servers ([`servers`]: our engines,
//! the floor, the peers of `bench/peers/`), adds the measurements echo-bench cannot make from
//! inside a run ([`measure`]: syscalls per message with `perf stat`, idle RSS per connection, the
//! client's own cost against a reference client), runs the uring-multishot feature ablation
//! ([`ablation`]) and turns the JSON into markdown (`results.md`, `ablation.md`), the exact
//! commands (`README.md`) and SVG plots under `bench/results/<date>-<host>-<mode>/`, beside the
//! raw JSON report of every run (`raw/`) ([`report`]).
//!
//! Why ratios are per round: on a shared 2-vCPU machine messages/s swings ±20% between runs, so
//! every comparison is `target / baseline` within one round (both ran back to back), summarised
//! as the median and spread over rounds (echo-bench's `compare` rules: order-statistic interval
//! from 5 rounds on, "not significant" when the interval contains 1.0).
#![warn(missing_docs)]

pub mod ablation;
pub mod measure;
pub mod plan;
pub mod report;
pub mod servers;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use plan::{Cli, Plan};
use servers::Peers;

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
    let started = std::time::Instant::now();
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

    let peers = Peers::find(&plan.peer_dir);
    for (name, why) in &peers.skipped {
        eprintln!("echo-suite: skipping {name}: {why}");
    }
    // Our 5 servers and the peers; the ablation's default, 2 batching policies and one variant
    // per switchable feature (an upper bound: some may be unavailable on this kernel).
    let servers = 5 + peers.found.len();
    let variants = 3 + uring_echo::config::SWITCHABLE_FEATURES.len();
    let estimate = plan.estimate(servers, 4, variants);
    eprintln!(
        "echo-suite: {} mode, {} closed-loop cells, {} open-loop runs, {} ablation cells, {} \
         rounds of {} ms; about {} min; results in {}",
        plan.mode_name,
        plan.cells.len(),
        plan.open_loop_cells.len() * plan.open_loop_fractions.len(),
        plan.ablation_cells.len(),
        plan.rounds,
        plan.duration_ms,
        estimate.as_secs().div_ceil(60),
        out.display()
    );
    let ctx = measure::Ctx {
        bins: &bins,
        plan: &plan,
        out: &out,
    };
    let results = measure::run_all(ctx, peers);
    report::write(&plan, &results, &out)?;
    eprintln!(
        "echo-suite: wrote {} in {} s",
        out.join("results.md").display(),
        started.elapsed().as_secs()
    );
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
