//! Command-line handling: bad input gives one clean line and a documented exit code; output
//! files are never overwritten by accident; --help documents every flag, and slo's help the
//! flags it takes, as they work there.

mod common;

use common::*;

fn assert_one_line_error(args: &[&str], code: i32, needle: &str) {
    let out = run(args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?} printed more than one line:\n{err}"
    );
    assert!(err.starts_with("echo-bench: "), "{err}");
    assert!(err.contains(needle), "{args:?}: '{needle}' not in {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
}

#[test]
fn invalid_flag_values_exit_2_with_one_line() {
    assert_one_line_error(&["-c", "0", "127.0.0.1:9"], 2, "at least 1");
    assert_one_line_error(&["--rate", "0", "127.0.0.1:9"], 2, "greater than zero");
    assert_one_line_error(&["--size", "0", "127.0.0.1:9"], 2, "at least 12 bytes");
    assert_one_line_error(&["--size", "8", "127.0.0.1:9"], 2, "at least 12 bytes");
    assert_one_line_error(&["-d", "banana", "127.0.0.1:9"], 2, "is not a duration");
    assert_one_line_error(&["-d", "0s", "127.0.0.1:9"], 2, "longer than zero");
    assert_one_line_error(&["--client-cpus", "3-1", "127.0.0.1:9"], 2, "backwards");
    assert_one_line_error(&["--client-cpus", "0,0", "127.0.0.1:9"], 2, "listed twice");
    assert_one_line_error(&["--no-such-flag", "127.0.0.1:9"], 2, "--no-such-flag");
    assert_one_line_error(&["merge"], 2, "FILE.hlog");
    assert_one_line_error(&["--interval", "1ns", "127.0.0.1:9"], 2, "at least 1ms");
    assert_one_line_error(&["--rate", "5000M", "127.0.0.1:9"], 2, "at most");
    assert_one_line_error(&["--rate", "1e-300", "127.0.0.1:9"], 2, "at least 0.001");
    assert_one_line_error(&["-d", "100000000y", "127.0.0.1:9"], 2, "at most 365 days");
    assert_one_line_error(
        &["--warmup", "100000000y", "127.0.0.1:9"],
        2,
        "at most 365 days",
    );
    assert_one_line_error(
        &["--spawn-timeout", "100000000y", "127.0.0.1:9"],
        2,
        "at most 365 days",
    );
    assert_one_line_error(&["--start-at", "1e300", "127.0.0.1:9"], 2, "9999-12-31");
}

#[test]
fn malformed_targets_exit_2_with_one_line() {
    assert_one_line_error(&["nonsense:xx"], 2, "invalid port 'xx'");
    assert_one_line_error(&["127.0.0.1"], 2, "expected host:port");
    assert_one_line_error(&["::1:80"], 2, "brackets");
}

#[test]
fn invalid_combinations_exit_1_with_one_line() {
    assert_one_line_error(
        &["--start-at", "1767225600", "--rounds", "2", "127.0.0.1:9"],
        1,
        "single target and a single round",
    );
    assert_one_line_error(
        &["--name", "a", "--name", "b", "127.0.0.1:9"],
        1,
        "2 --name given for 1 target",
    );
    assert_one_line_error(
        &["--client-cpus", "1000", "127.0.0.1:9"],
        1,
        "not available",
    );
    assert_one_line_error(&["--spawn", "'unterminated"], 1, "cannot parse --spawn");
    assert_one_line_error(
        &[
            "--hlog",
            "x.hlog",
            "--interval",
            "1ms",
            "-d",
            "2000s",
            "127.0.0.1:9",
        ],
        1,
        "interval histograms",
    );
    assert_one_line_error(&["--server-cpus", "0", "127.0.0.1:9"], 1, "needs --spawn");
    assert_one_line_error(
        &["--start-at", "99999999999", "127.0.0.1:9"],
        1,
        "more than 1day from now",
    );
}

#[test]
fn output_files_are_not_overwritten_without_force() {
    let server = TestServer::start(Behavior::Echo);
    let dir = tmp();
    let json = join(&dir, "r.json");
    std::fs::write(&json, "precious").unwrap();
    let args = [
        "-q",
        "-c",
        "1",
        "-d",
        "200ms",
        "--warmup",
        "0",
        "--json",
        &path_str(&json),
        &server.target(),
    ];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "echo-bench: refusing to overwrite existing file {} (use --force)\n",
            json.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "precious");

    let mut forced = args.to_vec();
    forced.insert(0, "--force");
    expect_success(&run(&forced));
    assert_eq!(
        read_json(&json)["schema_version"],
        echo_bench::report::SCHEMA_VERSION
    );
}

#[test]
fn help_documents_every_flag() {
    let out = run(&["--help"]);
    let help = expect_success(&out);
    for flag in [
        "--connections",
        "--duration",
        "--warmup",
        "--size",
        "--pipeline",
        "--threads",
        "--busy-poll",
        "--rate",
        "--arrival",
        "--json",
        "--hgrm",
        "--hlog",
        "--interval",
        "--plot",
        "--force",
        "--quiet",
        "--label",
        "--start-at",
        "--spawn",
        "--name",
        "--rounds",
        "--server-cpus",
        "--client-cpus",
        "--spawn-timeout",
        "--connect-timeout",
        "--seed",
        "Exit status",
        "cargo build --release --workspace",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let merge = expect_success(&run(&["merge", "--help"]));
    for flag in ["--hgrm", "--json", "--tag", "--force"] {
        assert!(merge.contains(flag), "merge --help lacks {flag}");
    }
}

/// Whether `help` mentions `flag` as a whole flag (`--rate`, not `--rate-x`).
fn mentions(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        !help[at + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    })
}

#[test]
fn slo_help_describes_its_curve_and_hides_the_flags_it_refuses() {
    for help_flag in ["--help", "-h"] {
        let help = expect_success(&run(&["slo", help_flag]));
        let plot = help
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("--plot"))
            .take(2)
            .collect::<String>();
        assert!(
            plot.contains("latency–throughput curve") && plot.contains("offered rate"),
            "slo {help_flag}: --plot is not the curve: {plot:?}"
        );
        assert!(!help.contains("latency-by-percentile"), "{help}");
        for refused in ["--rate", "--rounds", "--start-at", "--hgrm", "--hlog"] {
            assert!(
                !mentions(&help, refused),
                "slo {help_flag} mentions {refused}, which slo refuses:\n{help}"
            );
        }
        for taken in [
            "--max-latency",
            "--start-rate",
            "--arrival",
            "--interval",
            "--json",
        ] {
            assert!(mentions(&help, taken), "slo {help_flag} lacks {taken}");
        }
    }
    // The run's help is unchanged.
    let help = expect_success(&run(&["--help"]));
    assert!(help.contains("latency-by-percentile plot"), "{help}");
    assert!(mentions(&help, "--rate") && mentions(&help, "--hlog"));
}
