//! Resource exhaustion: the fd limit reached under a connection storm (EMFILE), RLIMIT_MEMLOCK
//! too small for `--fixed-buffers`, and an io_uring ring far smaller than the load.
//!
//! Fast suite: each once per runtime with `--threads 2`; long run: `--threads 1|2`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stress::{
    assert_recovered, close_all, connect_many, echo_all, nofile_allows, report, tokio_rt,
    wait_until,
};
use common::{
    assert_one_line_error, connect, fill_pattern, run_to_exit, Rlimit, TestServer, IO_TIMEOUT,
};

fast_per_runtime!(2; emfile_under_connection_storm);
long_per_config!(
    emfile_under_connection_storm_long,
    small_ring_500_connections_long
);

fn emfile_under_connection_storm_long(runtime: &str, threads: usize) {
    emfile_under_connection_storm(runtime, threads);
}

/// The server gets 64 fds. 100 held connections push it into EMFILE; then 16 threads churn
/// short verified connections while 40 others stay held, so accept keeps failing and
/// recovering. Every echo must be exact, the server must never die, and it must give every fd
/// back.
fn emfile_under_connection_storm(runtime: &str, threads: usize) {
    const HELD: usize = 100;
    const CHURNERS: usize = 16;
    const ROUNDS: usize = 25;
    if !nofile_allows(1024, "EMFILE storm") {
        return;
    }
    let limits = [Rlimit {
        resource: libc::RLIMIT_NOFILE,
        soft: 64,
    }];
    let threads_arg = threads.to_string();
    let server = TestServer::spawn_with_limits(
        &[
            "--runtime",
            runtime,
            "--threads",
            &threads_arg,
            "--listen",
            "127.0.0.1:0",
            "--backlog",
            "1024",
        ],
        &limits,
    );
    let baseline = server.fd_count();
    let addr = server.loopback();

    // Phase 1: more connections than fds. One accepted before the limit is served throughout
    // (with two workers, which of the later ones got an fd depends on the REUSEPORT hash).
    let mut first = connect(addr);
    common::echo_once(&mut first, b"accepted before the limit");
    let mut held: Vec<TcpStream> = (0..HELD).map(|_| connect(addr)).collect();
    server.wait_for_stderr("an EMFILE warning", Duration::from_secs(20), |e| {
        e.contains("Too many open files")
    });
    common::echo_once(&mut first, b"served while accept fails with EMFILE");
    drop(first);

    // Phase 2: keep 40 held, churn the rest (40 + 16 + the server's own fds > 64).
    held.truncate(40);
    let served = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let churners: Vec<_> = (0..CHURNERS)
        .map(|c| {
            let served = Arc::clone(&served);
            std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    let mut s = connect(addr);
                    let mut msg = vec![0u8; 1024];
                    fill_pattern((c * ROUNDS + r) as u64, 0, &mut msg);
                    s.write_all(&msg).unwrap();
                    let mut back = vec![0u8; msg.len()];
                    s.read_exact(&mut back)
                        .unwrap_or_else(|e| panic!("churner {c} round {r}: {e}"));
                    assert!(back == msg, "churner {c} round {r}: echo differs");
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in churners {
        c.join().expect("churner failed");
    }
    let churn_time = started.elapsed();
    drop(held);
    assert_recovered(&server, baseline, "EMFILE storm");
    let exited = server.stop();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert!(!exited.stderr.contains("panicked"), "{}", exited.stderr);
    assert!(exited.count("accept_errors") > 0, "{:?}", exited.summary());
    assert_eq!(exited.count("accepted"), exited.count("closed"));
    // Every connection was accepted eventually (none lost in the backlog while at the limit).
    assert_eq!(
        exited.count("accepted") + exited.count("rejected"),
        (1 + HELD + CHURNERS * ROUNDS + 1) as u64,
        "{:?}",
        exited.summary()
    );
    let warnings = exited.stderr.matches("Too many open files").count();
    assert!(
        warnings as u64 <= 2 * exited.summary()["elapsed_s"].parse::<f64>().unwrap() as u64 + 4,
        "accept errors not rate-limited: {warnings} warnings"
    );
    report(&format!(
        "EMFILE {runtime:<15} threads={threads}: 64-fd server, {HELD} held then {CHURNERS}x{ROUNDS} \
         churned connections all served exactly ({} in {:.2}s); accept_errors={} ({warnings} log lines); fds back to {baseline}",
        served.load(Ordering::Relaxed),
        churn_time.as_secs_f64(),
        exited.count("accept_errors"),
    ));
}

#[test]
fn memlock_too_small_for_fixed_buffers_is_a_clear_refusal() {
    // 2 workers x 128 buffers of 64 KiB cannot be pinned within 1 MiB.
    let one_mib = [Rlimit {
        resource: libc::RLIMIT_MEMLOCK,
        soft: 1 << 20,
    }];
    let exited = run_to_exit(
        &[
            "--runtime",
            "uring",
            "--threads",
            "2",
            "--buffer-size",
            "64KiB",
            "--listen",
            "127.0.0.1:0",
            "--fixed-buffers",
        ],
        &one_mib,
    );
    assert_one_line_error(
        &exited,
        1,
        &["--fixed-buffers", "RLIMIT_MEMLOCK is 1024 KiB", "ulimit -l"],
    );
    // No memlock at all.
    let zero = [Rlimit {
        resource: libc::RLIMIT_MEMLOCK,
        soft: 0,
    }];
    let exited = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--fixed-buffers",
            "--max-connections",
            "1",
        ],
        &zero,
    );
    assert_one_line_error(&exited, 1, &["RLIMIT_MEMLOCK is 0 KiB"]);

    // Exactly the amount the check asks for is accepted, and the registered buffers work.
    // 2 threads x 4 buffers (max-connections 8) x (16 KiB + 1 page).
    let exact = [Rlimit {
        resource: libc::RLIMIT_MEMLOCK,
        soft: 2 * 4 * (16 + 4) * 1024,
    }];
    let server = TestServer::spawn_with_limits(
        &[
            "--runtime",
            "uring",
            "--threads",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--fixed-buffers",
            "--max-connections",
            "8",
        ],
        &exact,
    );
    let rt = tokio_rt();
    let conns = rt.block_on(connect_many(server.loopback(), 8, 8));
    let (streams, _) = rt.block_on(echo_all(conns.streams, 100_000, 7));
    rt.block_on(close_all(streams));
    let exited = server.stop();
    assert_eq!(exited.status.code(), Some(0));
    assert_eq!(exited.count("accepted"), 8);
    assert_eq!(exited.count("bytes_echoed"), 800_000);
    // One page less is refused before anything starts.
    let short = [Rlimit {
        resource: libc::RLIMIT_MEMLOCK,
        soft: 2 * 4 * (16 + 4) * 1024 - 4096,
    }];
    let exited = run_to_exit(
        &[
            "--runtime",
            "uring",
            "--threads",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--fixed-buffers",
            "--max-connections",
            "8",
        ],
        &short,
    );
    assert_one_line_error(&exited, 1, &["RLIMIT_MEMLOCK"]);
}

#[test]
fn small_ring_500_connections_uring() {
    small_ring_500_connections("uring", 2);
}

#[test]
fn small_ring_500_connections_uring_multishot() {
    small_ring_500_connections("uring-multishot", 2);
}

fn small_ring_500_connections_long(runtime: &str, threads: usize) {
    if runtime == "epoll" {
        return; // --ring-entries is an io_uring knob; epoll refuses it (tested in lifecycle.rs).
    }
    small_ring_500_connections(runtime, threads);
}

/// `--ring-entries 8` while 500 connections echo at once: the submission queue overflows all
/// the time, which must cost submit calls, never correctness.
fn small_ring_500_connections(runtime: &str, threads: usize) {
    const CONNS: usize = 500;
    if !nofile_allows(CONNS as u64 + 200, "small ring") {
        return;
    }
    let threads_arg = threads.to_string();
    let server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--threads",
        &threads_arg,
        "--listen",
        "127.0.0.1:0",
        "--ring-entries",
        "8",
    ]);
    let baseline = server.fd_count();
    let rt = tokio_rt();
    let started = Instant::now();
    let conns = rt.block_on(connect_many(server.loopback(), CONNS, 64));
    server.wait_for_fd_count(baseline + CONNS, Duration::from_secs(30));
    let mut streams = conns.streams;
    let mut total = 0u64;
    for (round, len) in [1usize, 1000, 40_000, 16 * 1024].into_iter().enumerate() {
        let (s, _) = rt.block_on(echo_all(streams, len, round as u64));
        streams = s;
        total += (CONNS * len) as u64;
    }
    rt.block_on(close_all(streams));
    let took = started.elapsed();
    wait_until("fds back to baseline", IO_TIMEOUT, || {
        server.fd_count() == baseline
    });
    assert_recovered(&server, baseline, "--ring-entries 8 with 500 connections");
    let exited = server.stop();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert_eq!(exited.count("accepted"), CONNS as u64 + 1);
    assert!(exited.count("bytes_echoed") >= total);
    exited.assert_zero(&common::ERROR_COUNTERS);
    report(&format!(
        "small ring {runtime:<15} threads={threads}: --ring-entries 8, {CONNS} connections x 4 rounds \
         ({} MiB) echoed exactly in {:.2}s",
        total >> 20,
        took.as_secs_f64()
    ));
}
