//! Startup, shutdown and error reporting of the real binary.

mod common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_one_line_error, echo_once, run_to_exit, Rlimit, TestServer, RUNTIMES};

for_each_runtime!(
    sigterm_drains_open_connections_then_summarizes,
    drain_timeout_closes_lingering_connections,
    second_signal_closes_connections_at_once,
    port_in_use_is_one_line_naming_the_address,
    backlog_reaches_listen,
    stats_interval_prints_stats_lines,
);

const DEADLINE: Duration = Duration::from_secs(15);

/// Tries to connect until the server refuses (its listener is closed); bounded.
fn wait_until_refused(server: &TestServer) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect_timeout(&server.loopback(), Duration::from_secs(2)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            // A connect that races the listener's close is reset instead of refused (seen on
            // a slow VM): not yet the answer, try again.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("unexpected connect error: {e}"),
            // Accepted or rejected during the stop: either way closed by us right away.
            Ok(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "server kept accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm_drains_open_connections_then_summarizes(runtime: &str) {
    let mut server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "60s",
    ]);
    let mut a = server.connect();
    let mut b = server.connect();
    echo_once(&mut a, b"before");
    echo_once(&mut b, b"before");
    server.signal(libc::SIGTERM);
    wait_until_refused(&server);
    // Open connections are still served while draining.
    echo_once(&mut a, b"during the drain");
    echo_once(&mut b, b"during the drain");
    drop(a);
    drop(b);
    let exited = server.wait_exit(DEADLINE);
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert!(
        exited.stdout.is_empty(),
        "extra stdout: {:?}",
        exited.stdout
    );
    let summary_lines = exited
        .stderr
        .lines()
        .filter(|l| l.starts_with("summary: "))
        .count();
    assert_eq!(summary_lines, 1, "{}", exited.stderr);
    let keys: Vec<String> = exited
        .stderr
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|kv| kv.split_once('=').unwrap().0.to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "accepted",
            "rejected",
            "closed",
            "bytes_echoed",
            "idle_timeouts",
            "errors_reset",
            "errors_pipe",
            "errors_other",
            "accept_errors",
            "elapsed_s",
            "accepted_per_thread",
            "kernel",
            "features",
            "missing"
        ]
    );
    // Probe connections made while stopping may or may not have been accepted.
    assert!(exited.count("accepted") >= 2);
    assert_eq!(exited.count("closed"), exited.count("accepted"));
    assert_eq!(exited.count("bytes_echoed"), 2 * (6 + 16));
    assert_eq!(exited.count("errors_other"), 0);
    let elapsed: f64 = exited.summary()["elapsed_s"].parse().unwrap();
    assert!(elapsed > 0.0);
}

fn drain_timeout_closes_lingering_connections(runtime: &str) {
    let mut server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "300ms",
    ]);
    let mut lingering = server.connect();
    echo_once(&mut lingering, b"I will never leave");
    server.signal(libc::SIGTERM);
    let mut buf = [0u8; 8];
    assert_eq!(
        lingering
            .read(&mut buf)
            .expect("FIN after the drain timeout"),
        0
    );
    let exited = server.wait_exit(DEADLINE);
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert_eq!(exited.count("closed"), 1);
}

fn second_signal_closes_connections_at_once(runtime: &str) {
    let mut server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "1h",
    ]);
    let mut c = server.connect();
    echo_once(&mut c, b"x");
    server.signal(libc::SIGTERM);
    wait_until_refused(&server);
    echo_once(&mut c, b"still draining");
    server.signal(libc::SIGINT);
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).expect("FIN after the second signal"), 0);
    let exited = server.wait_exit(DEADLINE);
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert!(exited.count("closed") >= 1);
}

fn port_in_use_is_one_line_naming_the_address(runtime: &str) {
    let first = TestServer::spawn(&["--runtime", runtime, "--listen", "127.0.0.1:0"]);
    let addr = first.addr.to_string();
    for threads in ["1", "2"] {
        let exited = run_to_exit(
            &[
                "--runtime",
                runtime,
                "--listen",
                &addr,
                "--threads",
                threads,
            ],
            &[],
        );
        assert_one_line_error(
            &exited,
            1,
            &[
                &format!("cannot listen on {addr}"),
                "Address already in use",
            ],
        );
    }
}

fn backlog_reaches_listen(runtime: &str) {
    if Command::new("ss").arg("-V").output().is_err() {
        eprintln!("SKIPPED: `ss` (iproute2) is not installed");
        return;
    }
    let server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--backlog",
        "17",
    ]);
    let port = server.addr.port();
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    // State Recv-Q Send-Q Local Peer; for a listener Send-Q is the backlog.
    let line = text
        .lines()
        .find(|l| l.contains(&format!(":{port}")))
        .unwrap_or_else(|| panic!("no listener on port {port} in ss output:\n{text}"));
    let send_q = line.split_whitespace().nth(2).unwrap();
    assert_eq!(send_q, "17", "ss line: {line}");
}

fn stats_interval_prints_stats_lines(runtime: &str) {
    let server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--stats-interval",
        "100ms",
    ]);
    echo_once(&mut server.connect(), b"counted");
    server.wait_for_stderr("a stats line counting the connection", DEADLINE, |e| {
        common::parse_line(e, "stats: ").is_some_and(|s| s["closed"] == "1")
    });
    let exited = server.stop();
    let stats = common::parse_line(&exited.stderr, "stats: ").unwrap();
    let summary = exited.summary();
    let keys = |m: &std::collections::HashMap<String, String>| {
        let mut k: Vec<_> = m.keys().cloned().collect();
        k.sort();
        k
    };
    // The summary has the stats keys, plus the kernel and the features in use and missing at
    // its end.
    let mut stats_keys = keys(&stats);
    stats_keys.extend(["features", "kernel", "missing"].map(String::from));
    stats_keys.sort();
    assert_eq!(stats_keys, keys(&summary));
    assert_eq!(stats["bytes_echoed"], "7");
}

#[test]
fn bad_listen_addresses_are_one_line_exit_1() {
    for runtime in RUNTIMES {
        for addr in ["nonsense", "999.1.1.1:1", "127.0.0.1"] {
            let exited = run_to_exit(&["--runtime", runtime, "--listen", addr], &[]);
            assert_one_line_error(&exited, 1, &[addr, "--listen"]);
        }
    }
}

#[test]
fn unavailable_address_is_one_line_exit_1() {
    // 192.0.2.0/24 is TEST-NET-1: not assigned to this machine, so bind fails.
    let exited = run_to_exit(&["--listen", "192.0.2.1:0"], &[]);
    assert_one_line_error(&exited, 1, &["cannot listen on 192.0.2.1:0", "os error"]);
}

#[test]
fn bad_flags_exit_2_with_usage() {
    for args in [
        &["--bogus"][..],
        &["--threads", "many"],
        &["--runtime", "kqueue"],
        &["--buffer-size", "12parsecs"],
        &["--cpus", "3-1"],
        &["--idle-timeout", "soon"],
    ] {
        let exited = run_to_exit(args, &[]);
        assert_eq!(exited.status.code(), Some(2), "{args:?}: {}", exited.stderr);
        assert!(
            exited.stderr.starts_with("error: "),
            "{args:?}: {}",
            exited.stderr
        );
        assert!(!exited.stderr.contains("panicked"));
    }
}

#[test]
fn uring_only_flags_are_refused_with_epoll() {
    for args in [
        &["--sqpoll", "100"][..],
        &["--coop-taskrun"],
        &["--fixed-buffers"],
        &["--ring-entries", "64"],
    ] {
        let mut argv = vec!["--runtime", "epoll", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(args);
        let exited = run_to_exit(&argv, &[]);
        assert_one_line_error(&exited, 1, &[args[0], "epoll"]);
    }
}

#[test]
fn refused_combinations_are_one_line() {
    let cases: [(&[&str], &str); 3] = [
        (&["--sqpoll", "10", "--coop-taskrun"], "--coop-taskrun"),
        (&["--listen", "127.0.0.1:0", "--ipv6-only"], "--ipv6-only"),
        (&["--cpus", "1000"], "CPU 1000 is not available"),
    ];
    for (args, needle) in cases {
        let exited = run_to_exit(args, &[]);
        assert_one_line_error(&exited, 1, &[needle]);
    }
}

#[test]
fn fixed_buffers_refused_when_memlock_is_too_small() {
    // 1 MiB of locked memory cannot hold 128 registered 16 KiB buffers.
    let limits = [Rlimit {
        resource: libc::RLIMIT_MEMLOCK,
        soft: 1 << 20,
    }];
    let exited = run_to_exit(&["--listen", "127.0.0.1:0", "--fixed-buffers"], &limits);
    assert_one_line_error(
        &exited,
        1,
        &["--fixed-buffers", "RLIMIT_MEMLOCK is 1024 KiB", "2560 KiB"],
    );
    // Fewer buffers fit: --max-connections sizes the pool.
    let server = TestServer::spawn_with_limits(
        &[
            "--listen",
            "127.0.0.1:0",
            "--fixed-buffers",
            "--max-connections",
            "8",
        ],
        &limits,
    );
    echo_once(&mut server.connect(), b"registered");
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(common::binary())
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    let flags = common::server_flags();
    assert!(flags.iter().any(|f| f == "--runtime"), "{flags:?}");
    let hidden = common::hidden_server_flags();
    assert!(hidden.is_empty(), "no hidden flags: {hidden:?}");
    for flag in &flags {
        if hidden.contains(flag) {
            assert!(
                !help.contains(flag.as_str()),
                "{flag} is hidden from --help"
            );
        } else {
            assert!(help.contains(flag.as_str()), "{flag} missing from --help");
        }
    }
}
