//! `echo-suite` binary: parse flags, run the suite (see the library docs), map errors to one
//! line and exit code 1.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = echo_suite::plan::Cli::parse();
    match echo_suite::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("echo-suite: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
