//! Multi-host load and network faults, inside network namespaces this test creates (and always
//! deletes, through a Drop guard, even when it fails):
//!
//! - **multi-host**: a server namespace joined to two client namespaces by veth pairs created
//!   directly inside them, private 10.200.x.y addresses that exist only there; uring-echo runs in
//!   the server namespace, one echo-bench in each client namespace with a common `--start-at`
//!   and `--hlog`; `echo-bench merge` must count exactly the sum, and the server's counters must
//!   agree. This is the documented way to load one server from several machines.
//! - **vanished peer**: clients whose link goes down mid-message (no FIN, no RST ever arrives);
//!   `--idle-timeout` must reclaim them.
//! - **unreachable target**: echo-bench against an address with no route fails at once, in one
//!   line.
//!
//! Skipped, with a message, when namespaces cannot be made (not root, or no iproute2).
//! Fast suite: multi-host on `uring --threads 2`, vanish on each runtime; long run: every
//! runtime × `--threads 1|2`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::stress::{enter_netns, ip, read_json, report, run_echo_bench, wait_until, Netns, Proc};
use common::{pattern, TestServer};

fast_per_runtime!(2; vanished_peer_reclaimed_by_idle_timeout);
long_per_config!(multi_host_long, vanished_peer_long);

fn available(test: &str) -> bool {
    match Netns::available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED {test}: network namespaces unavailable ({why})");
            false
        }
    }
}

/// A short tag naming the runtime and thread count in namespace names.
fn tag(prefix: &str, runtime: &str, threads: usize) -> String {
    let rt = match runtime {
        "uring" => "u",
        "epoll" => "e",
        _ => "m",
    };
    format!("{prefix}{rt}{threads}")
}

#[test]
fn multi_host_merge_fast() {
    multi_host("uring", 2, 2);
}

fn multi_host_long(runtime: &str, threads: usize) {
    multi_host(runtime, threads, 10);
}

fn multi_host(runtime: &str, threads: usize, secs: u64) {
    const CONNS: usize = 16;
    const SIZE: u64 = 256;
    if !available("multi-host") {
        return;
    }
    let ns = Netns::create(&tag("mh", runtime, threads), &["srv", "c1", "c2"]);
    ns.link(
        "srv",
        "to-c1",
        "10.200.1.1/24",
        "c1",
        "to-srv",
        "10.200.1.2/24",
    );
    ns.link(
        "srv",
        "to-c2",
        "10.200.2.1/24",
        "c2",
        "to-srv",
        "10.200.2.2/24",
    );
    let server = TestServer::spawn_wrapped(
        &["ip", "netns", "exec", ns.name("srv")],
        &[
            "--runtime",
            runtime,
            "--threads",
            &threads.to_string(),
            "--listen",
            "0.0.0.0:0",
        ],
    );
    let port = server.addr.port();
    let dir = tempfile::tempdir().unwrap();
    // Far enough ahead for both clients to start and connect on a busy machine.
    let start = SystemTime::now() + Duration::from_secs(4);
    let start_at = format!(
        "{:.3}",
        start.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    );
    let clients: Vec<(&str, Proc)> = [("c1", "10.200.1.1"), ("c2", "10.200.2.1")]
        .into_iter()
        .map(|(c, server_ip)| {
            let args: Vec<String> = [
                "-q",
                "-c",
                &CONNS.to_string(),
                "-s",
                &SIZE.to_string(),
                "-d",
                &format!("{secs}s"),
                "--warmup",
                "1s",
                "--start-at",
                &start_at,
                "--hlog",
                &path(dir.path(), &format!("{c}.hlog")),
                "--json",
                &path(dir.path(), &format!("{c}.json")),
                &format!("{server_ip}:{port}"),
            ]
            .map(String::from)
            .to_vec();
            (c, Proc::echo_bench(Some(ns.name(c)), &args))
        })
        .collect();
    let mut messages = 0;
    let mut sent = 0;
    let mut windows = Vec::new();
    for (c, proc) in clients {
        let out = proc.wait(Duration::from_secs(secs + 90));
        assert_eq!(
            out.code(),
            0,
            "echo-bench in {c}: {}\n{}",
            out.stderr,
            out.stdout
        );
        let json = read_json(&dir.path().join(format!("{c}.json")));
        let t = &json["targets"][0];
        assert_eq!(t["errors"]["total"], 0, "{c}: {t}");
        assert!(t["messages"].as_u64().unwrap() > 0, "{c}: {t}");
        messages += t["messages"].as_u64().unwrap();
        sent += t["sent"].as_u64().unwrap();
        windows.push(
            t["rounds"][0]["measure_start"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        windows[0], windows[1],
        "the two clients measured different windows"
    );

    let merged_json = dir.path().join("merged.json");
    let out = run_echo_bench(
        &[
            "merge",
            &path(dir.path(), "c1.hlog"),
            &path(dir.path(), "c2.hlog"),
            "--json",
            &merged_json.display().to_string(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let merged = read_json(&merged_json);
    let merged_count = merged["latency"]["count"].as_u64().unwrap();
    assert_eq!(
        merged_count, messages,
        "merged count is not the sum: {merged}"
    );

    let exited = server.stop();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert_eq!(exited.count("accepted"), 2 * CONNS as u64);
    assert_eq!(exited.count("closed"), 2 * CONNS as u64);
    let echoed = exited.count("bytes_echoed");
    assert!(
        echoed >= messages * SIZE && echoed <= sent * SIZE,
        "bytes_echoed {echoed} outside [{} (measured), {} (sent)]",
        messages * SIZE,
        sent * SIZE
    );
    exited.assert_zero(&["errors_reset", "errors_pipe", "errors_other"]);
    report(&format!(
        "multi-host {runtime:<15} threads={threads}: 2 client namespaces x {CONNS} conns, {secs}s \
         window starting {}; merged {merged_count} = sum of both; p99 {:.0}us p99.9 {:.0}us; server \
         accepted={} bytes_echoed={echoed} >= {} (measured x size)",
        windows[0],
        merged["latency"]["p99_us"].as_f64().unwrap_or(0.0),
        merged["latency"]["p999_us"].as_f64().unwrap_or(0.0),
        exited.count("accepted"),
        messages * SIZE,
    ));
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn vanished_peer_long(runtime: &str, threads: usize) {
    vanished_peer_reclaimed_by_idle_timeout(runtime, threads);
}

/// 20 clients in their own namespace stop mid-message (10 while the server is stuck writing to
/// them, 10 after half a message), then their link goes down: nothing ever reaches the server
/// again. `--idle-timeout 3` must close all 20 and give their fds back; the server then serves
/// the same namespace again once the link is back.
fn vanished_peer_reclaimed_by_idle_timeout(runtime: &str, threads: usize) {
    const CLIENTS: usize = 20;
    if !available("vanished peer") {
        return;
    }
    let ns = Netns::create(&tag("vp", runtime, threads), &["srv", "cli"]);
    ns.link(
        "srv",
        "to-cli",
        "10.200.3.1/24",
        "cli",
        "to-srv",
        "10.200.3.2/24",
    );
    let server = TestServer::spawn_wrapped(
        &["ip", "netns", "exec", ns.name("srv")],
        &[
            "--runtime",
            runtime,
            "--threads",
            &threads.to_string(),
            "--listen",
            "0.0.0.0:0",
            "--idle-timeout",
            "3",
        ],
    );
    let baseline = server.fd_count();
    let addr: SocketAddr = format!("10.200.3.1:{}", server.addr.port())
        .parse()
        .unwrap();
    let cli = ns.name("cli").to_string();

    // The clients live in a thread that entered the client namespace.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        enter_netns(&cli);
        let mut socks = Vec::new();
        for i in 0..CLIENTS {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
            if i % 2 == 0 {
                // Write without reading until the server is stuck writing back to us
                // (non-blocking, so setting up all clients takes milliseconds, far inside the
                // idle timeout).
                s.set_nonblocking(true).unwrap();
                let chunk = pattern(i as u64, 256 * 1024);
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                let mut blocked = 0;
                // Blocked twice in a row, 20 ms apart: the buffers on both sides are full.
                while blocked < 2 {
                    match s.write(&chunk) {
                        Ok(_) => blocked = 0,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            blocked += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("client {i}: {e}"),
                    }
                    assert!(std::time::Instant::now() < deadline, "writes never blocked");
                }
                s.set_nonblocking(false).unwrap();
            } else {
                // Half a message, its echo read back, then silence.
                let half = pattern(i as u64, 600);
                s.write_all(&half).unwrap();
                let mut back = vec![0u8; 600];
                s.read_exact(&mut back).unwrap();
                assert!(back == half);
            }
            socks.push(s);
        }
        tx.send(()).unwrap();
        // Keep the sockets (no FIN, no RST) until the test has checked the server.
        let _ = go_rx.recv_timeout(Duration::from_secs(120));
        drop(socks);
        // A fresh connection from the same namespace once the link is back.
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        common::echo_once(&mut s, b"served again after the vanished peers");
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("clients did not connect");
    server.wait_for_fd_count(baseline + CLIENTS, Duration::from_secs(20));
    // Vanish: the client side of the link goes down; the server's side stays up, its packets
    // go nowhere and nothing comes back.
    ip(&["-n", ns.name("cli"), "link", "set", "to-srv", "down"]);
    let vanished = std::time::Instant::now();
    server.wait_for_fd_count(baseline, Duration::from_secs(20));
    let reclaimed = vanished.elapsed();
    ip(&["-n", ns.name("cli"), "link", "set", "to-srv", "up"]);
    wait_until("the link to come back", Duration::from_secs(10), || {
        let out = std::process::Command::new("ip")
            .args(["-n", ns.name("cli"), "-br", "link", "show", "to-srv"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("UP")
    });
    go_tx.send(()).unwrap();
    holder.join().expect("client thread failed");
    server.wait_for_fd_count(baseline, Duration::from_secs(20));
    let exited = server.stop();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert!(!exited.stderr.contains("panicked"), "{}", exited.stderr);
    assert_eq!(exited.count("accepted"), CLIENTS as u64 + 1);
    assert_eq!(exited.count("closed"), CLIENTS as u64 + 1);
    assert_eq!(
        exited.count("idle_timeouts"),
        CLIENTS as u64,
        "{:?}",
        exited.summary()
    );
    report(&format!(
        "vanished peers {runtime:<15} threads={threads}: {CLIENTS} clients (half stuck mid-write) \
         lost their link; all reclaimed {:.2}s later by --idle-timeout 3; served again after",
        reclaimed.as_secs_f64()
    ));
}

#[test]
fn unreachable_target_is_one_line() {
    if !available("unreachable target") {
        return;
    }
    // A namespace with only loopback: 10.200.9.9 has no route, so connect fails at once with
    // ENETUNREACH and no packet leaves the namespace.
    let ns = Netns::create("unreach", &["c"]);
    let out = Proc::echo_bench(
        Some(ns.name("c")),
        &["-q", "-c", "2", "-d", "1s", "10.200.9.9:7"].map(String::from),
    )
    .wait(Duration::from_secs(60));
    assert_eq!(out.code(), 1, "{}", out.stderr);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].starts_with("echo-bench: "), "{}", lines[0]);
    assert!(lines[0].contains("unreachable"), "{}", lines[0]);
}
