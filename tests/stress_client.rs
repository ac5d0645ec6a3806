//! Bad input to the client: targets that refuse or never answer, servers that close early or
//! send bytes nobody sent, damaged `.hlog` files for `echo-bench merge`, and absurd flag
//! values. Every case must end within a bound with exactly one `echo-bench: ...` line on stderr,
//! no panic, and the documented exit code (`echo-bench --help`: 0 success, 1 run failed,
//! 2 invalid command line, 130 interrupted).
//!
//! (Unreachable networks are in stress_netns.rs: only a namespace has a route-less address
//! that no packet can leave for.)

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::stress::{run_echo_bench, Finished};
use common::TestServer;

const BOUND: Duration = Duration::from_secs(60);

/// Asserts: exit `code`, one stderr line `echo-bench: ...` containing `needle`, no panic.
fn assert_one_line(out: &Finished, code: i32, needle: &str, what: &str) {
    let lines = out.stderr_lines();
    assert_eq!(
        out.code(),
        code,
        "{what}: exit {}; stderr:\n{}",
        out.code(),
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one stderr line:\n{}",
        out.stderr
    );
    assert!(lines[0].starts_with("echo-bench: "), "{what}: {}", lines[0]);
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{what}: {needle:?} not in {:?}",
        lines[0]
    );
}

/// A tiny misbehaving server on 127.0.0.1:0 (std threads), stopped on drop.
struct Misbehaving {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Accept, then close at once.
    CloseAtOnce,
    /// Echo this many bytes, then close.
    CloseAfter(usize),
    /// Echo every chunk plus one byte nobody sent.
    ExtraByte,
    /// Send a greeting before echoing.
    Greeting,
}

impl Misbehaving {
    fn start(behaviour: Behaviour) -> Misbehaving {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let accept = std::thread::spawn(move || {
            for s in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                std::thread::spawn(move || serve(s, behaviour));
            }
        });
        Misbehaving {
            addr,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake accept()
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(mut s: TcpStream, behaviour: Behaviour) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = vec![0u8; 65536];
    let mut echoed = 0usize;
    match behaviour {
        Behaviour::CloseAtOnce => return,
        Behaviour::Greeting => {
            let _ = s.write_all(b"220 welcome\r\n");
        }
        _ => {}
    }
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match behaviour {
            Behaviour::CloseAfter(limit) => {
                let take = n.min(limit - echoed);
                let _ = s.write_all(&buf[..take]);
                echoed += take;
                if echoed >= limit {
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
            }
            Behaviour::ExtraByte => {
                buf[n] = b'!';
                if s.write_all(&buf[..n + 1]).is_err() {
                    return;
                }
            }
            _ => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn bench_against(target: &str, extra: &[&str]) -> Finished {
    let mut args = vec!["-q", "-c", "4", "-d", "2s", "--warmup", "0s"];
    args.extend_from_slice(extra);
    args.push(target);
    run_echo_bench(&args, BOUND)
}

#[test]
fn refusing_target() {
    // A bound socket that does not listen: connect gets RST (ECONNREFUSED).
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let out = bench_against(&addr.to_string(), &[]);
    assert_one_line(&out, 1, "connection refused", "refusing target");
}

#[test]
fn target_that_never_answers_times_out() {
    // A listener whose accept queue is full and which never accepts: the kernel drops further
    // SYNs, so connect hangs until --connect-timeout.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (backlog 0 still admits one, sometimes two).
    let _fill: Vec<_> = (0..3)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.connect_timeout(&addr.into(), Duration::from_millis(300))
                .ok()
                .map(|()| s)
        })
        .collect();
    let out = bench_against(&addr.to_string(), &["--connect-timeout", "500ms"]);
    assert_one_line(&out, 1, "connect", "silent target");
    assert!(
        out.stderr.contains("timed out") || out.stderr.contains("timeout"),
        "{}",
        out.stderr
    );
}

#[test]
fn server_that_closes_at_once() {
    let server = Misbehaving::start(Behaviour::CloseAtOnce);
    let out = bench_against(&server.addr.to_string(), &[]);
    assert_one_line(&out, 1, "", "server closing at once");
    assert!(
        out.stderr.contains("EOF") || out.stderr.contains("reset") || out.stderr.contains("error"),
        "{}",
        out.stderr
    );
}

#[test]
fn server_that_closes_mid_run() {
    let server = Misbehaving::start(Behaviour::CloseAfter(1000));
    let out = bench_against(&server.addr.to_string(), &["--size", "64"]);
    // 1000 is not a multiple of 64: the connection ends inside a message.
    assert_one_line(&out, 1, "short read", "server closing mid-message");
}

#[test]
fn server_that_sends_extra_bytes() {
    let server = Misbehaving::start(Behaviour::ExtraByte);
    let out = bench_against(&server.addr.to_string(), &[]);
    assert_one_line(&out, 1, "never sent", "server sending extra bytes");
}

#[test]
fn server_that_greets_first() {
    let server = Misbehaving::start(Behaviour::Greeting);
    let out = bench_against(&server.addr.to_string(), &[]);
    // The greeting arrives where the first echo should be: a mismatch or unsolicited bytes.
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn real_server_stopped_mid_run() {
    // uring-echo gets SIGTERM (drain 200 ms) while echo-bench runs: echo-bench must report the
    // closed connections in one line and exit 1. (It runs out its -d even when every connection
    // has failed, hence the short -d.)
    // Stats lines show when echo-bench's load has reached the server.
    let server = TestServer::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "200ms",
        "--stats-interval",
        "50ms",
    ]);
    let target = server.loopback().to_string();
    let bench = common::stress::Proc::echo_bench(
        None,
        &[
            "-q",
            "-c",
            "20",
            "-d",
            "4s",
            "--warmup",
            "0s",
            "--pipeline",
            "4",
            &target,
        ]
        .map(String::from),
    );
    common::stress::wait_until("echo-bench connected", Duration::from_secs(20), || {
        server.fd_count() > 20
    });
    server.wait_for_stderr("echoes under way", Duration::from_secs(20), |e| {
        common::parse_line(e, "stats: ").is_some_and(|s| s["bytes_echoed"] != "0")
    });
    let exited = server.stop();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    let out = bench.wait(BOUND);
    assert_one_line(&out, 1, "connection error", "server stopped mid-run");
}

// ---------------------------------------------------------------------------------------------
// Absurd flags.

#[test]
fn absurd_flag_values_are_one_line_errors() {
    // A live server, so that refusals that come after connecting are reached too.
    let server = TestServer::spawn(&["--listen", "127.0.0.1:0"]);
    let target = server.loopback().to_string();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["-c", "0"], 2, "at least 1"),
        (&["--connections", "-5"], 2, "-5"),
        (&["--rate", "0"], 2, "greater than zero"),
        (&["--rate", "-3"], 2, "-3"),
        (&["--rate", "NaN"], 2, "--rate"),
        (&["--rate", "1e300"], 2, "at most"),
        (&["--size", "0"], 2, "at least 12"),
        (&["--size", "1G"], 2, "--size"),
        (&["--size", "64 parsecs"], 2, "--size"),
        (&["-d", "banana"], 2, "is not a duration"),
        (&["-d", "0s"], 2, "longer than zero"),
        (&["-d", "1e3"], 2, "is not a duration"),
        (&["--warmup", "soon"], 2, "--warmup"),
        (&["--interval", "0"], 2, "--interval"),
        (&["--interval", "1ns"], 2, "--interval"),
        (&["--pipeline", "0"], 2, "at least 1"),
        (&["--threads", "0"], 2, "at least 1"),
        (&["--connect-timeout", "0"], 2, "--connect-timeout"),
        (&["--start-at", "yesterday"], 2, "--start-at"),
        (&["--client-cpus", "9999"], 2, "--client-cpus"),
        (&["--client-cpus", "0,0"], 2, "listed twice"),
        (&["--seed", "-1"], 2, "-1"),
        (&["-c", "1000000"], 1, "file descriptors"),
        (&["--start-at", "1"], 1, "in the past"),
        (&["--spawn", ""], 1, "--spawn"),
    ];
    for (flags, code, needle) in cases {
        let mut args = flags.to_vec();
        args.extend(["-q", &target]);
        let out = run_echo_bench(&args, BOUND);
        assert_one_line(&out, *code, needle, &format!("{flags:?}"));
    }
    // Malformed targets.
    for (target, needle) in [
        ("127.0.0.1", "host:port"),
        ("127.0.0.1:0", "port 0"),
        ("127.0.0.1:99999", "invalid port"),
        ("::1:80", "brackets"),
        ("[::1:80", "[IPv6]:port"),
    ] {
        let out = run_echo_bench(&["-q", target], BOUND);
        assert_one_line(&out, 2, needle, target);
    }
}

/// Regression: durations and rates whose nanosecond arithmetic overflowed used to panic with
/// "attempt to add with overflow" (exit 101, a backtrace): `-d 100000000y` and `--start-at
/// 99999999999` (window end), `--warmup 100000000y` (measure start), `--rate 1e-300` (constant
/// arrivals `t0_ns + k * period`). Found by this suite, fixed in echo-bench (fca901e).
#[test]
fn huge_durations_and_tiny_rates_are_refused_not_panics() {
    let server = TestServer::spawn(&["--listen", "127.0.0.1:0"]);
    let target = server.loopback().to_string();
    for flags in [
        &["-d", "100000000y"][..],
        &["--warmup", "100000000y", "-d", "1s"],
        &["--start-at", "99999999999", "-d", "1s"],
        &["--rate", "1e-300", "-d", "1s", "--warmup", "0s"],
    ] {
        let mut args = flags.to_vec();
        args.extend(["-q", "-c", "2", &target]);
        let out = run_echo_bench(&args, BOUND);
        assert!(
            !out.stderr.contains("panicked"),
            "{flags:?}: {}",
            out.stderr
        );
        assert!(
            matches!(out.code(), 1 | 2),
            "{flags:?}: exit {}",
            out.code()
        );
        assert_eq!(out.stderr_lines().len(), 1, "{flags:?}: {}", out.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// Damaged interval logs for `echo-bench merge`.

const HLOG_HEADER: &str =
    "#[StartTime: 1767225600.000 (seconds since epoch), 2026-01-01T00:00:00Z]\n\
\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

/// A valid interval log with `n` intervals of 100 values each.
fn valid_hlog(n: usize) -> Vec<u8> {
    let intervals: Vec<(Vec<u64>, bool)> = (0..n as u64)
        .map(|i| ((0..100u64).map(|v| 10_000 + v * 100 + i).collect(), false))
        .collect();
    common::stress::hlog(&intervals)
}

#[test]
fn merge_rejects_damaged_logs_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = valid_hlog(3);
    let good_path = write(d, "good.hlog", &good);
    // The valid log merges (sanity for the mutations below).
    let out = run_echo_bench(&["merge", &good_path], BOUND);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stdout.contains("merged: 300 values"), "{}", out.stdout);

    let text = String::from_utf8(good.clone()).unwrap();
    let interval_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "no interval"),
        (
            "header only",
            HLOG_HEADER.as_bytes().to_vec(),
            "no interval",
        ),
        (
            "binary noise",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "not a valid",
        ),
        (
            "truncated mid-line",
            good[..good.len() - 7].to_vec(),
            "not a valid",
        ),
        (
            "payload with a bad character",
            format!("{HLOG_HEADER}{}*\n", interval_lines[0]).into_bytes(),
            "",
        ),
        (
            "payload cut in half",
            {
                let l = interval_lines[0];
                format!(
                    "{HLOG_HEADER}{}\n",
                    &l[..l.len() - (l.len() - l.rfind(',').unwrap()) / 2]
                )
                .into_bytes()
            },
            "",
        ),
        (
            "negative timestamp",
            format!("{HLOG_HEADER}-1.000,1.000,1.0,HISTFAAAAA==\n").into_bytes(),
            "",
        ),
        (
            "not base64",
            format!("{HLOG_HEADER}0.000,1.000,1.0,@@@@\n").into_bytes(),
            "",
        ),
        ("a JSON file", b"{\"schema_version\": 1}\n".to_vec(), ""),
    ];
    for (what, bytes, needle) in cases {
        let path = write(d, "bad.hlog", &bytes);
        let out = run_echo_bench(&["merge", &path], BOUND);
        assert_one_line(&out, 1, needle, what);
        assert!(
            out.stdout.is_empty() || !out.stdout.contains("merged:"),
            "{what}: {}",
            out.stdout
        );
    }
    // A directory and a missing file.
    let out = run_echo_bench(&["merge", &d.display().to_string()], BOUND);
    assert_one_line(&out, 1, "", "a directory");
    let out = run_echo_bench(
        &["merge", &d.join("missing.hlog").display().to_string()],
        BOUND,
    );
    assert_one_line(&out, 1, "cannot read", "a missing file");
    // One bad file among good ones fails the whole merge, naming the bad one.
    let bad = write(d, "bad2.hlog", &good[..good.len() / 2]);
    let out = run_echo_bench(&["merge", &good_path, &bad], BOUND);
    assert_one_line(&out, 1, "bad2.hlog", "one bad file among good ones");
}

/// Regression: a histogram whose V2 header claims a payload of ~4 GiB made `echo-bench merge`
/// allocate and zero ~4 GiB before failing (hdrhistogram's deserializer sizes its buffer from
/// the header): a 200-byte corrupted log took 33 s and 4.2 GB RSS, an OOM kill on a smaller
/// machine. Found by this suite, fixed in echo-bench (fca901e).
#[test]
fn merge_refuses_a_corrupted_payload_length_without_allocating_it() {
    let dir = tempfile::tempdir().unwrap();
    // V2 cookie, payload length 0xFFFFFFF0, normalizing offset 0, 3 digits, 1 ns..1 h, ratio 1.
    let mut raw = Vec::new();
    raw.extend_from_slice(&(0x1c84_9303u32 | 0x10).to_be_bytes());
    raw.extend_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
    raw.extend_from_slice(&0u32.to_be_bytes());
    raw.extend_from_slice(&3u32.to_be_bytes());
    raw.extend_from_slice(&1u64.to_be_bytes());
    raw.extend_from_slice(&3_600_000_000_000u64.to_be_bytes());
    raw.extend_from_slice(&1.0f64.to_be_bytes());
    let line = format!("{HLOG_HEADER}0.000,1.000,1.0,{}\n", base64_encode(&raw));
    let path = write(dir.path(), "bomb.hlog", line.as_bytes());
    let started = std::time::Instant::now();
    let out = run_echo_bench(&["merge", &path], BOUND);
    assert_one_line(&out, 1, "bomb.hlog", "payload length bomb");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
