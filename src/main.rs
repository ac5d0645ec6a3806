//! `uring-echo` binary: parse flags, set up logging and signals, run the server.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use uring_echo::{config::Cli, shutdown, Config, Shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits 2 with clap's usage on bad flags
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = Config::try_from(cli).and_then(|config| {
        let shutdown = Shutdown::new();
        shutdown::install_signal_handlers(&shutdown)?;
        uring_echo::run(config, shutdown)
    });
    match result {
        Ok(_summary) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("uring-echo: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
