//! Property-based fuzzing (proptest) of every parser in the project: the shared value parsers
//! (`echo_units`: sizes, durations, CPU lists, rates); the server's whole command line;
//! echo-bench's bounded value parsers, target and start-time parsers, its command line and
//! configuration; that both command lines give a shared value the meaning `echo_units` gives
//! it; the message verifier; and the interval-log reader behind `echo-bench merge`, fed mutated
//! valid logs.
//!
//! The rule for all of them: any input gives `Ok` or `Err`, never a panic; and where there is
//! an oracle (a value we generated and printed), the parse gives it back.
//!
//! cargo-fuzz needs a nightly toolchain, which this project does not use; proptest runs on
//! stable inside `cargo test`. Fast suite: 256 cases per target. Long run (bench/stress.sh):
//! `STRESS_FUZZ_CASES` (default 20,000) per target.

mod common;

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};

use common::stress::{env_u64, hlog};

const FAST_CASES: u32 = 256;

fn long_cases() -> u32 {
    env_u64("STRESS_FUZZ_CASES", 20_000) as u32
}

/// Runs `test` on `cases` inputs from `strategy`; a failure panics with the shrunk input.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("fuzz target {name}: {e}");
    }
}

/// Strings near what the parsers expect: digits, units, separators, signs, brackets, colons,
/// plus arbitrary Unicode.
fn parser_input() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,25}",
        "[ -]?[0-9]{0,22}(\\.[0-9]{0,5})?[ ]?(|b|B|k|K|kb|KB|KiB|kiB|Ki|m|M|MiB|Mi|g|G|GiB|ms|s|m|h|d|y|ns|us|µs|e300|e-300)",
        "[0-9,\\- ]{0,20}",
        "(\\[?[0-9a-f:.]{0,40}\\]?)?(:[0-9]{0,7})?",
        "[0-9]{1,4}-[0-9]{1,2}-[0-9]{1,2}T[0-9:]{0,10}(Z|\\+[0-9:]{0,5})?",
        "(inf|nan|NaN|-inf|1e999|0x10|1_000|١٢|\u{0}|\u{feff}1)",
    ]
}

// ---------------------------------------------------------------------------------------------
// The shared value parsers (echo_units), used by both binaries.

fn shared_parsers(cases: u32) {
    use echo_units::{format_cpu_list, parse_cpu_list, parse_duration, parse_rate, parse_size};
    check("shared parsers (any input)", cases, parser_input(), |s| {
        // Ok or a one-line error that quotes the input, never a panic.
        let errors = [
            parse_size(&s).err(),
            parse_duration(&s).err(),
            parse_cpu_list(&s).err(),
            parse_rate(&s).err(),
        ];
        for e in errors.into_iter().flatten() {
            prop_assert!(!e.contains('\n') && e.contains(&format!("{s:?}")), "{e}");
        }
        if let Ok(rate) = parse_rate(&s) {
            prop_assert!(rate.is_finite() && rate > 0.0, "{s:?} -> {rate}");
        }
        Ok(())
    });
    check(
        "parse_size (oracle)",
        cases,
        (0usize..1 << 20, 0usize..9, prop::bool::ANY),
        |(n, unit, spaced)| {
            let (suffix, shift) = [
                ("", 0),
                ("B", 0),
                ("k", 10),
                ("KiB", 10),
                ("kb", 10),
                ("M", 20),
                ("MB", 20),
                ("g", 30),
                ("GiB", 30),
            ][unit];
            let text = format!("{n}{}{suffix}", if spaced { " " } else { "" });
            prop_assert_eq!(parse_size(&text), Ok(n << shift));
            Ok(())
        },
    );
    check(
        "parse_cpu_list (round trip)",
        cases,
        prop::collection::btree_set(0usize..1024, 1..40),
        |set| {
            let cpus: Vec<usize> = set.into_iter().collect();
            let text = format_cpu_list(&cpus);
            prop_assert_eq!(parse_cpu_list(&text).map(|l| l.into_vec()), Ok(cpus));
            Ok(())
        },
    );
    check(
        "parse_cpu_list (oracle: any order, a repeat is an error)",
        cases,
        prop::collection::vec(0usize..1024, 1..20),
        |cpus| {
            let text = cpus
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let mut want = cpus.clone();
            want.sort_unstable();
            want.dedup();
            let got = parse_cpu_list(&text).map(|l| l.into_vec());
            if want.len() == cpus.len() {
                prop_assert_eq!(got, Ok(want));
            } else {
                prop_assert!(got.unwrap_err().contains("listed twice"));
            }
            Ok(())
        },
    );
    check(
        "parse_duration (oracle)",
        cases,
        (0u64..1_000_000, 0u32..1000),
        |(secs, ms)| {
            prop_assert_eq!(
                parse_duration(&secs.to_string()),
                Ok(Duration::from_secs(secs))
            );
            let d = Duration::from_secs(secs) + Duration::from_millis(ms.into());
            prop_assert_eq!(parse_duration(&format!("{secs}.{ms:03}")), Ok(d));
            prop_assert_eq!(parse_duration(&format!("{secs}s {ms}ms")), Ok(d));
            Ok(())
        },
    );
}

/// Inputs for the shared-meaning check: the values the two binaries used to disagree on, plus
/// the general parser inputs.
fn shared_value_input() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "2", "0.5", "1G", "64kb", "1 MB", "16KiB", "1,1", "0-3,2", "0-1", "0", "3-1", "1.5k",
            "-1", "nan", "1e3", "500ms", "2m",
        ])
        .prop_map(String::from),
        parser_input(),
    ]
}

/// Both binaries give a size, a duration and a CPU list the meaning `echo_units` gives it: what
/// the shared parser accepts, each command line accepts with the same value (within that
/// flag's own bounds), and what it refuses, each command line refuses.
fn shared_meaning(cases: u32) {
    use clap::Parser;
    use echo_bench::cli::{Cli as BenchCli, MAX_DURATION, MAX_MESSAGE_BYTES};
    use uring_echo::config::Cli as ServerCli;
    let server = |flag: &str, v: &str| ServerCli::try_parse_from(["uring-echo", flag, v]);
    let client = |flag: &str, v: &str| BenchCli::try_parse_from(["echo-bench", flag, v, "h:1"]);
    check(
        "both command lines, one meaning",
        cases,
        shared_value_input(),
        |v| {
            // A value that clap would read as a flag never reaches a parser.
            if v.starts_with('-') {
                return Ok(());
            }
            let size = echo_units::parse_size(&v).ok();
            prop_assert_eq!(
                server("--buffer-size", &v).ok().map(|c| c.buffer_size),
                size
            );
            let message = size.filter(|n| (12..=MAX_MESSAGE_BYTES).contains(n));
            prop_assert_eq!(
                client("--size", &v).ok().and_then(|c| c.bench.size),
                message
            );

            let duration = echo_units::parse_duration(&v).ok();
            prop_assert_eq!(
                server("--drain-timeout", &v).ok().map(|c| c.drain_timeout),
                duration
            );
            let bounded = duration.filter(|d| *d <= MAX_DURATION);
            prop_assert_eq!(
                client("--warmup", &v).ok().and_then(|c| c.bench.warmup),
                bounded
            );

            let cpus = echo_units::parse_cpu_list(&v).ok();
            prop_assert_eq!(server("--cpus", &v).ok().and_then(|c| c.cpus), cpus.clone());
            prop_assert_eq!(
                client("--client-cpus", &v)
                    .ok()
                    .and_then(|c| c.bench.client_cpus),
                cpus
            );
            Ok(())
        },
    );
}

/// Tokens for random server command lines: every flag, and values good and bad.
fn server_argv() -> impl Strategy<Value = Vec<String>> {
    let extra = ["--help", "--version", "-h", "--nonsense"];
    let flag = prop::sample::select(
        common::server_flags()
            .into_iter()
            .chain(extra.map(String::from))
            .collect::<Vec<_>>(),
    );
    let value = prop_oneof![
        prop::sample::select(vec![
            "uring",
            "epoll",
            "uring-multishot",
            "[::]:0",
            "127.0.0.1:0",
            "0",
            "1",
            "1024",
            "4294967296",
            "-1",
            "16KiB",
            "0-1",
            "1,1",
            "500ms",
            "1e9",
            "",
        ])
        .prop_map(String::from),
        parser_input(),
    ];
    prop::collection::vec(prop_oneof![flag, value], 0..10)
}

fn server_command_line(cases: u32) {
    use clap::Parser;
    use uring_echo::config::Cli;
    use uring_echo::Config;
    check("server Cli + Config", cases, server_argv(), |argv| {
        let full = std::iter::once("uring-echo".to_string()).chain(argv);
        if let Ok(cli) = Cli::try_parse_from(full) {
            if let Err(e) = Config::try_from(cli) {
                // Refusals are one line.
                prop_assert!(!format!("{e:#}").contains('\n'), "{e:#}");
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Client parsers.

fn client_parsers(cases: u32) {
    use echo_bench::cli::*;
    check(
        "client value parsers (any input)",
        cases,
        parser_input(),
        |s| {
            let _ = parse_positive(&s);
            let _ = parse_duration(&s);
            let _ = parse_nonzero_duration(&s);
            let _ = parse_interval(&s);
            let _ = parse_message_size(&s);
            if let Ok(rate) = parse_rate(&s) {
                prop_assert!((MIN_RATE..=MAX_RATE).contains(&rate), "{s:?} -> {rate}");
            }
            let _ = parse_target(&s);
            // Used to panic on huge Unix times (found by this target, fixed in fca901e).
            let _ = parse_start_at(&s);
            Ok(())
        },
    );
    check(
        "client parse_target (oracle)",
        cases,
        (any::<std::net::IpAddr>(), 1u16..),
        |(ip, port)| {
            let text = std::net::SocketAddr::new(ip, port).to_string();
            let t = parse_target(&text).map_err(TestCaseError::fail)?;
            prop_assert_eq!(t.port, port);
            prop_assert_eq!(t.host.parse::<std::net::IpAddr>().ok(), Some(ip));
            Ok(())
        },
    );
}

/// Tokens for random echo-bench command lines (targets are IP literals only: configuration
/// resolves host names, and a fuzzer must not cause DNS traffic).
fn client_argv() -> impl Strategy<Value = Vec<String>> {
    let flag = prop::sample::select(vec![
        "-c",
        "-d",
        "--warmup",
        "-s",
        "--pipeline",
        "--threads",
        "--rate",
        "--arrival",
        "--interval",
        "--force",
        "-q",
        "--label",
        "--start-at",
        "--rounds",
        "--server-cpus",
        "--client-cpus",
        "--spawn-timeout",
        "--connect-timeout",
        "--seed",
        "--name",
        "--spawn",
        "merge",
        "--tag",
        "--json",
        "--hgrm",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "127.0.0.1:7",
            "[::1]:7",
            "0",
            "1",
            "12",
            "1k",
            "64M",
            "10s",
            "0s",
            "poisson",
            "constant",
            "1767225600",
            "1e-300",
            "100000000y",
            "0-1",
            "x y",
            "'",
            "",
        ])
        .prop_map(String::from),
        parser_input(),
    ];
    prop::collection::vec(prop_oneof![flag.prop_map(String::from), value], 0..10)
}

fn client_command_line(cases: u32) {
    use clap::Parser;
    use echo_bench::cli::Cli;
    use echo_bench::config::BenchConfig;
    check("client Cli + BenchConfig", cases, client_argv(), |argv| {
        // Output files must not be created: the config step only checks them.
        let full: Vec<String> = std::iter::once("echo-bench".to_string())
            .chain(argv)
            .collect();
        if let Ok(cli) = Cli::try_parse_from(&full) {
            let dns_free = cli
                .bench
                .targets
                .iter()
                .all(|t| t.host.parse::<std::net::IpAddr>().is_ok());
            if cli.command.is_none() && dns_free {
                if let Err(e) = BenchConfig::from_args(&cli.bench, full.clone()) {
                    prop_assert!(!format!("{e:#}").contains('\n'), "{e:#}");
                }
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The message verifier.

fn message_verifier(cases: u32) {
    use echo_bench::message::Pattern;
    let input = (
        12usize..5000,
        any::<u32>(),
        any::<u64>(),
        prop::collection::vec(1usize..700, 1..20),
    )
        .prop_flat_map(|(size, conn, seq, cuts)| {
            (
                Just(size),
                Just(conn),
                Just(seq),
                Just(cuts),
                0..size,
                1u8..=255,
            )
        });
    check(
        "message verifier",
        cases,
        input,
        |(size, conn, seq, cuts, flip_at, flip)| {
            let p = Pattern::new(size);
            let mut msg = vec![0u8; size];
            // Filled in arbitrary pieces, verified in other arbitrary pieces.
            let mut off = 0;
            for c in cuts.iter().cycle() {
                if off == size {
                    break;
                }
                let end = (off + c).min(size);
                p.fill(conn, seq, off, &mut msg[off..end]);
                off = end;
            }
            let mut off = 0;
            for c in cuts.iter().rev().cycle() {
                if off == size {
                    break;
                }
                let end = (off + c).min(size);
                prop_assert_eq!(p.verify(conn, seq, off, &msg[off..end]), Ok(()));
                off = end;
            }
            // One corrupted byte is found at its exact offset, from any chunk start before it.
            let mut bad = msg.clone();
            bad[flip_at] ^= flip;
            let start = cuts[0].min(flip_at);
            let err = p
                .verify(conn, seq, start, &bad[start..])
                .expect_err("corruption not detected");
            prop_assert_eq!(err.offset, flip_at);
            prop_assert_eq!(err.expected, msg[flip_at]);
            // A message of another connection or sequence number fails in the header.
            let mut other = vec![0u8; size];
            p.fill(conn.wrapping_add(1), seq, 0, &mut other);
            prop_assert!(p.verify(conn, seq, 0, &other).unwrap_err().offset < 4);
            p.fill(conn, seq.wrapping_add(1), 0, &mut other);
            prop_assert!(p.verify(conn, seq, 0, &other).unwrap_err().offset < 12);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// The interval-log reader behind `echo-bench merge`.

fn intervals() -> impl Strategy<Value = Vec<(Vec<u64>, bool)>> {
    prop::collection::vec(
        (
            prop::collection::vec(1u64..3_600_000_000_000, 0..50),
            prop::bool::ANY,
        ),
        1..6,
    )
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    DuplicateLine(usize),
    ReplaceInPayload(usize, char),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let m = prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (
            any::<usize>(),
            prop::sample::select(vec!['A', '/', '+', '=', ',', '\n', ' ', 'é'])
        )
            .prop_map(|(i, c)| Mutation::ReplaceInPayload(i, c)),
    ];
    prop::collection::vec(m, 1..4)
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match m {
            Mutation::Truncate(i) => bytes.truncate(i % len),
            Mutation::Flip(i, x) => bytes[i % len] ^= x,
            Mutation::Insert(i, b) => {
                let at = i % (len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i % len;
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::DuplicateLine(i) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let lines: Vec<&str> = text.split_inclusive('\n').collect();
                let k = i % lines.len();
                let mut out: Vec<u8> = Vec::new();
                for (j, l) in lines.iter().enumerate() {
                    out.extend_from_slice(l.as_bytes());
                    if j == k {
                        out.extend_from_slice(l.as_bytes());
                    }
                }
                bytes = out;
            }
            Mutation::ReplaceInPayload(i, c) => {
                // Somewhere in the last field of an interval line (the base64 histogram).
                let at = i % len;
                let mut enc = [0u8; 4];
                bytes.splice(at..(at + 1).min(len), c.encode_utf8(&mut enc).bytes());
            }
        }
    }
    bytes
}

fn merge_reader(cases: u32) {
    use echo_bench::merge::read_log;
    use echo_bench::record::new_histogram;
    let dir = tempfile::tempdir().unwrap();
    // Oracle on valid logs: the untagged (or `service`) intervals are summed exactly.
    check(
        "merge: valid logs sum exactly",
        cases.min(512),
        intervals(),
        |ivs| {
            let path = dir.path().join("valid.hlog");
            std::fs::write(&path, hlog(&ivs)).unwrap();
            for tag in [None, Some("service")] {
                let want: u64 = ivs
                    .iter()
                    .filter(|(_, tagged)| *tagged == tag.is_some())
                    .map(|(v, _)| v.len() as u64)
                    .sum();
                let mut into = new_histogram();
                match read_log(&path, tag, &mut into) {
                    Ok(summary) => {
                        prop_assert_eq!(summary.count, want);
                        prop_assert_eq!(into.len(), want);
                    }
                    // A file with no interval of that kind is an error, not an empty merge.
                    Err(e) => prop_assert!(
                        !ivs.iter().any(|(_, t)| *t == tag.is_some()),
                        "valid log refused: {e:#}"
                    ),
                }
            }
            Ok(())
        },
    );
    // Mutated logs: Ok or a one-line error, never a panic.
    check(
        "merge: mutated logs never panic",
        cases,
        (intervals(), mutations()),
        |(ivs, muts)| {
            let path = dir.path().join("mutated.hlog");
            std::fs::write(&path, mutate(hlog(&ivs), &muts)).unwrap();
            let mut into = new_histogram();
            for tag in [None, Some("service")] {
                if let Err(e) = read_log(&path, tag, &mut into) {
                    prop_assert!(!format!("{e:#}").contains('\n'), "{e:#}");
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------

#[test]
fn fuzz_shared_parsers() {
    shared_parsers(FAST_CASES);
}

#[test]
fn fuzz_shared_meaning_on_both_command_lines() {
    shared_meaning(FAST_CASES);
}

#[test]
fn fuzz_server_command_line() {
    server_command_line(FAST_CASES);
}

#[test]
fn fuzz_client_parsers() {
    client_parsers(FAST_CASES);
}

#[test]
fn fuzz_client_command_line() {
    client_command_line(FAST_CASES);
}

#[test]
fn fuzz_message_verifier() {
    message_verifier(FAST_CASES);
}

#[test]
fn fuzz_merge_reader() {
    merge_reader(FAST_CASES);
}

#[test]
#[ignore = "long run: bench/stress.sh"]
fn fuzz_long_all_targets() {
    let cases = long_cases();
    shared_parsers(cases);
    shared_meaning(cases);
    server_command_line(cases);
    client_parsers(cases);
    client_command_line(cases);
    message_verifier(cases);
    merge_reader(cases);
}
