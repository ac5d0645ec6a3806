//! The suite reads echo-bench's JSON through echo-bench's own report types: a real report,
//! written by echo-bench, reads back whole and gives the suite the figures echo-bench wrote;
//! a renamed field is an error, not a silent zero.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use echo_suite::measure::{parse_targets, read_report};
use serde_json::Value;

/// A plain echo server on 127.0.0.1:0, one thread per connection; it lives as long as the test
/// process (its threads end when echo-bench closes the connections).
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Runs echo-bench (the library, in this process) and returns the raw JSON it wrote.
fn echo_bench_report(args: &[&str], json: &Path) -> Value {
    let mut argv: Vec<String> = vec!["echo-bench".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.extend(["--json".into(), json.display().to_string()]);
    let cli = echo_bench::parse_args(&argv).expect("valid echo-bench flags");
    let code = echo_bench::run(cli, argv).expect("echo-bench run");
    assert_eq!(code, 0, "echo-bench exit code");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn close(a: f64, b: &Value) -> bool {
    b.as_f64() == Some(a)
}

#[test]
fn a_real_report_reads_back_whole_and_typed() {
    let addr = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let raw = echo_bench_report(
        &[
            "-q", "-c", "2", "--rate", "2k", "-d", "300ms", "--warmup", "50ms", "--rounds", "2",
            &addr, &addr,
        ],
        &json,
    );

    let report = read_report(&json).expect("the suite reads the report");
    // Nothing is lost or renamed on the way: the typed report writes back the same JSON.
    assert_eq!(serde_json::to_value(&report).unwrap(), raw);

    let targets = parse_targets(&report);
    assert_eq!(targets.len(), 2);
    for (t, rt) in targets.iter().zip(raw["targets"].as_array().unwrap()) {
        assert_eq!(t.name, rt["name"].as_str().unwrap());
        assert!(close(t.p99_us, &rt["latency"]["p99_us"]) && t.p99_us > 0.0);
        assert!(close(t.p50_us, &rt["latency"]["p50_us"]) && t.p50_us > 0.0);
        let svc = t.service_p99_us.expect("open loop has a service time");
        assert!(close(svc, &rt["service_time"]["p99_us"]));
        assert_eq!(t.rate_shortfall, rt["rate_shortfall"].as_bool().unwrap());
        assert_eq!(t.rounds.len(), 2);
        for r in rt["rounds"].as_array().unwrap() {
            let round = &t.rounds[&r["round"].as_u64().unwrap()];
            assert!(close(round.msgs_per_s, &r["msgs_per_s"]) && round.msgs_per_s > 0.0);
            assert!(close(round.p99_us, &r["p99_us"]));
        }
    }
}

#[test]
fn a_renamed_field_is_an_error_not_a_zero() {
    let addr = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let raw = echo_bench_report(
        &["-q", "-c", "1", "-d", "200ms", "--warmup", "0", &addr],
        &json,
    );
    let renamed = serde_json::to_string(&raw)
        .unwrap()
        .replace("\"msgs_per_s\":", "\"messages_per_s\":");
    let bad = dir.path().join("renamed.json");
    std::fs::write(&bad, renamed).unwrap();
    let err = format!("{:#}", read_report(&bad).unwrap_err());
    assert!(err.contains("missing field `msgs_per_s`"), "{err}");
}
