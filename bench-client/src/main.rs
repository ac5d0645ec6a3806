//! `echo-bench` binary: parse flags, run, map errors to one line and an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cli = match echo_bench::parse_args(&args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    echo_bench::init_tracing();
    match echo_bench::run(cli, args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("echo-bench: {e:#}");
            ExitCode::from(echo_bench::error_exit_code())
        }
    }
}
