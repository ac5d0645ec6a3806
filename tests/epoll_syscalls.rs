//! The epoll engine's syscall pattern, counted by `strace` attached to the real server: a
//! ping-pong message costs one `recvfrom` with data and one `sendto`, and no `recvfrom` that
//! fails with `EAGAIN`. That is tokio's `TcpStream` behaviour which `backend/epoll.rs` follows
//! with its own syscalls (a short read clears the cached readiness, so the next read waits for
//! epoll); a reader that forgot to clear it would make one extra `recvfrom` → `EAGAIN` per
//! message, the cost this test exists to catch.
//!
//! Needs `strace` (CI installs it) and ptrace permission; without them it prints why and passes
//! without checking.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{echo_once, TestServer};

/// Ping-pong messages on one connection.
const MESSAGES: u64 = 300;

/// strace's `-c` summary: (calls, errors) for `name`.
fn calls_and_errors(summary: &str, name: &str) -> (u64, u64) {
    for line in summary.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.last() == Some(&name) {
            let n: Vec<u64> = cols.iter().filter_map(|c| c.parse().ok()).collect();
            // % time, seconds, usecs/call, calls, [errors,] syscall: the integers are
            // usecs/call, calls and, if any failed, errors.
            return match n.as_slice() {
                [_, calls] => (*calls, 0),
                [_, calls, errors] => (*calls, *errors),
                _ => panic!("cannot read strace line {line:?}"),
            };
        }
    }
    (0, 0)
}

#[test]
fn epoll_ping_pong_makes_one_recvfrom_and_one_sendto_per_message() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("SKIPPED: strace is not installed (CI installs it)");
        return;
    }
    let server = TestServer::spawn(&["--runtime", "epoll", "--listen", "127.0.0.1:0"]);
    let mut conn = server.connect();
    echo_once(&mut conn, b"warm-up"); // the connection is accepted and its task running

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("strace.txt");
    let mut strace = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=recvfrom,sendto", "-o"])
        .arg(&out)
        .args(["-p", &server.pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strace");
    // strace says "Process N attached with 3 threads" (or one "attached" line per thread):
    // main, signal and worker. Wait for that, bounded; stderr is read on its own thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = strace.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut attached = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while attached < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if line.contains("Operation not permitted") {
            let _ = strace.kill();
            let _ = strace.wait();
            eprintln!("SKIPPED: no ptrace permission here: {line}");
            return;
        }
        if let Some(rest) = line.split("attached with ").nth(1) {
            attached = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if line.contains("attached") {
            attached += 1;
        }
    }
    assert_eq!(attached, 3, "strace did not attach to the server's threads");

    for i in 0..MESSAGES {
        echo_once(&mut conn, format!("message {i:5}").as_bytes());
    }
    // SIGINT: strace detaches and writes its summary.
    // SAFETY: plain kill(2) on the strace child we started.
    unsafe { libc::kill(strace.id() as libc::pid_t, libc::SIGINT) };
    let status = strace.wait().unwrap();
    let summary = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        status.success() || !summary.is_empty(),
        "strace: {status}\n{summary}"
    );

    let (recvs, recv_errors) = calls_and_errors(&summary, "recvfrom");
    let (sends, send_errors) = calls_and_errors(&summary, "sendto");
    eprintln!("{summary}");
    assert_eq!(send_errors, 0, "{summary}");
    assert!(
        (MESSAGES..=MESSAGES + 2).contains(&sends),
        "one sendto per message expected: {sends} for {MESSAGES}\n{summary}"
    );
    // Every message is one recvfrom with data; a missed readiness clear adds an EAGAIN each.
    assert!(
        recv_errors <= 2,
        "recvfrom failed {recv_errors} times for {MESSAGES} messages (EAGAIN after a short \
         read: readiness not cleared)\n{summary}"
    );
    assert!(
        (MESSAGES..=MESSAGES + MESSAGES / 20).contains(&recvs),
        "{recvs} recvfrom for {MESSAGES} messages\n{summary}"
    );
    drop(conn);
    let exited = server.stop();
    assert!(exited.status.success(), "{}", exited.stderr);
}
