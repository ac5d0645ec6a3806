//! Limits and hostile clients, on every engine: resets, fd exhaustion, connection limit, idle
//! timeout, clients that never read.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{connect, echo_once, pattern, Rlimit, TestServer};
use uring_echo::policy::IdleSweep;

for_each_runtime!(
    rst_storm_leaves_no_fds_behind,
    survives_fd_exhaustion,
    max_connections_rejects_the_next_one,
    idle_timeout_closes_idle_connections_only,
    idle_timeout_closes_a_connection_stuck_writing,
    slow_reader_gets_backpressure_not_buffering,
);

/// Enough time for anything the server must do "soon" on a loaded CI machine.
const DEADLINE: Duration = Duration::from_secs(15);

fn set_linger_zero(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

fn rst_storm_leaves_no_fds_behind(runtime: &str) {
    const CONNS: usize = 200;
    let server = TestServer::spawn(&["--runtime", runtime, "--listen", "127.0.0.1:0"]);
    let baseline = server.fd_count();
    let addr = server.loopback();
    let storm: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let chunk = pattern(t, 200_000);
                for i in 0..CONNS / 4 {
                    let mut s = connect(addr);
                    // Some connections reset while the server is writing (it has data it
                    // cannot send yet), some while it waits for more to read.
                    let len = if i % 2 == 0 { chunk.len() } else { 100 };
                    let _ = s.write_all(&chunk[..len]);
                    if i % 3 == 0 {
                        let mut one = [0u8; 1];
                        let _ = s.read(&mut one);
                    }
                    set_linger_zero(&s);
                    drop(s); // RST
                }
            })
        })
        .collect();
    for t in storm {
        t.join().unwrap();
    }
    server.wait_for_fd_count(baseline, DEADLINE);
    eprintln!("{runtime}: server fds before and after a {CONNS}-connection RST storm: {baseline}");
    // Still serving.
    echo_once(&mut server.connect(), b"still alive");
    server.wait_for_fd_count(baseline, DEADLINE);
    let exited = server.stop();
    let accepted = exited.count("accepted");
    assert_eq!(accepted, CONNS as u64 + 1);
    assert_eq!(exited.count("closed"), accepted);
    assert!(
        exited.count("errors_reset") + exited.count("errors_pipe") > 0,
        "{:?}",
        exited.summary()
    );
}

fn survives_fd_exhaustion(runtime: &str) {
    const CLIENTS: usize = 40;
    // 32 fds: the runtime, listener and signal handling take about a dozen, so well under the
    // 40 clients fit and accept(2) hits EMFILE.
    let limits = [Rlimit {
        resource: libc::RLIMIT_NOFILE,
        soft: 32,
    }];
    let server = TestServer::spawn_with_limits(
        &[
            "--runtime",
            runtime,
            "--listen",
            "127.0.0.1:0",
            "--backlog",
            "64",
        ],
        &limits,
    );
    let mut first = server.connect();
    echo_once(&mut first, b"first");
    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| server.connect()).collect();
    server.wait_for_stderr("an EMFILE warning", DEADLINE, |e| {
        e.contains("Too many open files")
    });
    // Connections accepted before the limit keep working while accept fails.
    echo_once(&mut first, b"still served at the fd limit");
    drop(clients);
    drop(first);
    // Once clients go away the server frees fds, drains its accept queue (those connections are
    // closed already) and serves new ones.
    let mut late = server.connect();
    echo_once(&mut late, b"served after the storm");
    drop(late);
    let exited = server.stop();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert!(exited.count("accept_errors") > 0);
    // Rate-limited: far fewer warnings than failed accepts.
    let warnings = exited.stderr.matches("Too many open files").count();
    assert!(
        (1..=10).contains(&warnings),
        "{warnings} warnings:\n{}",
        exited.stderr
    );
    assert_eq!(exited.count("accepted"), exited.count("closed"));
}

fn max_connections_rejects_the_next_one(runtime: &str) {
    let server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--max-connections",
        "2",
    ]);
    let mut a = server.connect();
    let mut b = server.connect();
    echo_once(&mut a, b"a");
    echo_once(&mut b, b"b");
    let mut c = server.connect();
    let mut buf = [0u8; 16];
    assert_eq!(
        c.read(&mut buf).expect("EOF, not an error"),
        0,
        "third connection must see EOF"
    );
    echo_once(&mut a, b"a still served");
    drop((a, b, c));
    let exited = server.stop();
    assert_eq!(exited.count("accepted"), 2);
    assert_eq!(exited.count("rejected"), 1);
}

/// Scheduling slack on top of the idle window's upper bound: sweeps and wake-ups run late on a
/// loaded test machine. The lower bound gets none.
const IDLE_SLACK: Duration = Duration::from_millis(300);

/// The idle window is the same on every engine (`policy::IdleSweep`): the FIN of an idle
/// connection never comes before the timeout and, sweeps running on schedule, within two sweep
/// periods after it; a connection that keeps making progress stays open.
fn idle_timeout_closes_idle_connections_only(runtime: &str) {
    let idle = Duration::from_secs(1);
    let (earliest, latest) = IdleSweep::new(idle).window();
    let server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--idle-timeout",
        "1",
    ]);
    let mut idle_conn = server.connect();
    let mut busy = server.connect();
    // No progress of the server on this connection can come before this instant.
    let before_write = Instant::now();
    echo_once(&mut idle_conn, b"then silence");
    let echoed = Instant::now();
    let fin = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let n = idle_conn.read(&mut buf).expect("FIN, not an error");
        (n, Instant::now())
    });
    // The busy client makes progress every 50 ms, far inside the timeout, until the FIN.
    let mut n = 0;
    while !fin.is_finished() {
        assert!(before_write.elapsed() < DEADLINE, "{runtime}: no FIN");
        echo_once(&mut busy, format!("ping {n}").as_bytes());
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let (read, fin_at) = fin.join().unwrap();
    assert_eq!(read, 0, "{runtime}: data instead of a FIN");
    let after = fin_at - before_write;
    assert!(
        after >= earliest,
        "{runtime}: FIN {after:?} after the last write, before the {idle:?} timeout"
    );
    let after = fin_at - echoed;
    assert!(
        after <= latest + IDLE_SLACK,
        "{runtime}: FIN {after:?} after the last echo, window ends at {latest:?} (+{IDLE_SLACK:?})"
    );
    eprintln!(
        "{runtime}: idle FIN {after:?} after the last echo (window {earliest:?}..{latest:?})"
    );
    echo_once(&mut busy, b"busy connection survived");
    drop(busy);
    let exited = server.stop();
    assert_eq!(exited.count("idle_timeouts"), 1);
    assert_eq!(exited.count("closed"), 2);
    assert_eq!(
        exited.count("errors_other") + exited.count("errors_reset"),
        0
    );
}

fn idle_timeout_closes_a_connection_stuck_writing(runtime: &str) {
    // A client that sends and never reads leaves the server's write pending. With io_uring the
    // pending write cannot be dropped; the server must shut the socket down so it completes.
    let server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--idle-timeout",
        "1",
    ]);
    let baseline = server.fd_count();
    let mut s = server.connect();
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![b'w'; 64 * 1024];
    let deadline = Instant::now() + DEADLINE;
    // Fill every buffer between us and the server until our write blocks.
    loop {
        match s.write(&chunk) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write failed before the idle timeout: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "writes never blocked: no backpressure"
        );
    }
    // Now the server is stuck writing to us. It must give up after ~1 s: our reads end with
    // EOF or a reset (it had unread data when it closed) instead of blocking forever.
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("server never closed the stuck connection: {e}"),
        }
    }
    drop(s);
    server.wait_for_fd_count(baseline, DEADLINE);
    let exited = server.stop();
    assert_eq!(exited.count("idle_timeouts"), 1, "{:?}", exited.summary());
    assert_eq!(exited.count("closed"), 1);
}

fn slow_reader_gets_backpressure_not_buffering(runtime: &str) {
    const LIMIT: u64 = 200 << 20;
    let server = TestServer::spawn(&["--runtime", runtime, "--listen", "127.0.0.1:0"]);
    echo_once(&mut server.connect(), &pattern(1, 100_000));
    let rss_before = server.rss_kib();

    let mut hog = server.connect();
    hog.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let chunk = vec![b'h'; 256 * 1024];
    let mut written = 0u64;
    let mut blocked_rounds = 0;
    let started = Instant::now();
    // Write for at most 3 s (or 200 MiB) and never read.
    while written < LIMIT && started.elapsed() < Duration::from_secs(3) {
        match hog.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                blocked_rounds += 1;
            }
            Err(e) => panic!("hog write failed: {e}"),
        }
    }
    // Meanwhile another client is served normally.
    let mut other = server.connect();
    for i in 0..10 {
        echo_once(&mut other, format!("other client {i}").as_bytes());
    }
    let rss_during = server.rss_kib();
    eprintln!(
        "{runtime}: hog wrote {} MiB before blocking ({blocked_rounds} blocked writes); server RSS {rss_before} KiB -> {rss_during} KiB",
        written >> 20
    );
    assert!(
        written < LIMIT,
        "the server accepted {LIMIT} bytes without the client reading"
    );
    assert!(blocked_rounds > 0, "hog writes never blocked");
    assert!(
        rss_during < rss_before + 32 * 1024,
        "server RSS grew from {rss_before} KiB to {rss_during} KiB"
    );
    drop(hog);
    drop(other);
    assert_eq!(server.stop().status.code(), Some(0));
}
