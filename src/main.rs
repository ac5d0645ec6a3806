//! `uring-echo` binary: parse flags, set up logging and signals, run the server.

use std::io::{stderr, IsTerminal};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use uring_echo::{config::Cli, shutdown, Config, Shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse(); // bad flags: clap's usage, exit 2
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(stderr)
        .with_ansi(stderr().is_terminal())
        .init();
    let result = Config::try_from(cli).and_then(|config| {
        let shutdown = Shutdown::new();
        shutdown::install_signal_handlers(&shutdown)?;
        uring_echo::run(config, shutdown)
    });
    if let Err(err) = result {
        eprintln!("uring-echo: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
