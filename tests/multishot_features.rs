//! The uring-multishot engine's optional io_uring features (`no_sqarray`, `ring_fd`,
//! `send_zc`, `bundle`, `buf_ring_inc`), each switched on and off: every byte comes back in order under several
//! connections, message sizes from 1 byte to beyond the zero-copy threshold and pipelined
//! writes; the `features:` line lists the feature as switched; and, through the library engine,
//! that the feature really ran (the exit report) and every provided buffer came back.
//!
//! A feature the probe does not find on this kernel is skipped with the reason printed (its
//! `on` is refused at start: `tests/kernel.rs`); its `off` is the path every other test runs on
//! such a kernel.

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown as SockShutdown, SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{fill_pattern, TestServer, ERROR_COUNTERS, IO_TIMEOUT};
use uring_echo::backend::uring_multishot::{Engine, Params, RecvBudget, Report, ZC_MIN_SEND};
use uring_echo::policy::Admission;
use uring_echo::probe::{self, Feature};
use uring_echo::stats::{Counts, Stats};
use uring_echo::Shutdown;

/// Message sizes of the load: tiny, one buffer, around the zero-copy threshold, several
/// buffers.
const SIZES: [usize; 7] = [
    1,
    100,
    4096,
    ZC_MIN_SEND as usize - 1,
    ZC_MIN_SEND as usize,
    ZC_MIN_SEND as usize + 1,
    100_000,
];
const CONNECTIONS: u64 = 6;
/// Pipelined rounds per connection: every message of [`SIZES`] written back to back.
const PIPELINED_ROUNDS: usize = 8;

/// Whether the kernel has `feature`; prints why the test is skipped when not.
fn available(feature: Feature) -> bool {
    let has = probe::features().has(feature);
    if !has {
        eprintln!(
            "SKIPPED: this kernel has no {feature} (upstream since Linux {}); `--feature \
             {feature}=on` is refused at start (tests/kernel.rs)",
            feature.since()
        );
    }
    has
}

/// One connection's load: ping-pong of every size (each echo checked before the next write),
/// then pipelined writes of every size from a writer thread while this thread reads, then EOF.
/// Returns the bytes echoed.
fn one_connection(addr: SocketAddr, seed: u64) -> u64 {
    let mut s = common::connect(addr);
    let mut total = 0u64;
    for (i, &size) in SIZES.iter().enumerate() {
        let mut data = vec![0; size];
        fill_pattern(seed, i as u64 * 1_000_003, &mut data);
        common::echo_once(&mut s, &data);
        total += size as u64;
    }
    let sizes: Vec<usize> = (0..PIPELINED_ROUNDS).flat_map(|_| SIZES).collect();
    let label = format!("connection {seed}");
    let stream_len = stream_echo(s, seed ^ 0xA5A5, sizes, &label);
    total + stream_len
}

/// Writes messages of `sizes` (pattern stream `seed`) on `s` from a thread and shuts the write
/// side, while this thread reads the echo to EOF and checks every byte in order; returns the
/// bytes echoed. `label` names the stream in failures.
fn stream_echo(mut s: std::net::TcpStream, seed: u64, sizes: Vec<usize>, label: &str) -> u64 {
    let total: u64 = sizes.iter().map(|&n| n as u64).sum();
    let mut writer = s.try_clone().unwrap();
    let w = thread::spawn(move || {
        let mut off = 0u64;
        for size in sizes {
            let mut msg = vec![0; size];
            fill_pattern(seed, off, &mut msg);
            writer.write_all(&msg).expect("stream write");
            off += size as u64;
        }
        writer.shutdown(SockShutdown::Write).unwrap();
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).expect("read the echo");
        if n == 0 {
            break;
        }
        fill_pattern(seed, got, &mut want[..n]);
        assert!(
            buf[..n] == want[..n],
            "{label}: echo differs in bytes {got}..{}",
            got + n as u64
        );
        got += n as u64;
        assert!(got <= total, "{label}: more bytes than sent");
    }
    w.join().expect("writer thread");
    assert_eq!(got, total, "{label}: echo cut short");
    got
}

/// [`one_connection`] on [`CONNECTIONS`] connections at once; returns the bytes echoed.
fn load(addr: SocketAddr) -> u64 {
    let clients: Vec<JoinHandle<u64>> = (0..CONNECTIONS)
        .map(|i| thread::spawn(move || one_connection(addr, 1000 + i)))
        .collect();
    clients.into_iter().map(|c| c.join().expect("client")).sum()
}

/// A `features:` list as names (`-` is empty).
fn list<'a>(line: &'a HashMap<String, String>, key: &str) -> Vec<&'a str> {
    match line.get(key).map(String::as_str) {
        None => panic!("no {key} in {line:?}"),
        Some("-") => Vec::new(),
        Some(v) => v.split(',').collect(),
    }
}

/// The real binary with `--feature NAME=on|off`: the load echoes byte-exact, nothing fails,
/// and the `features:` line lists the feature in `in_use` or `off` as switched.
fn binary_echoes_with(feature: Feature, on: bool) {
    let switch = format!("{}={}", feature.name(), if on { "on" } else { "off" });
    let server = TestServer::spawn(&[
        "--runtime",
        "uring-multishot",
        "--listen",
        "127.0.0.1:0",
        "--feature",
        &switch,
    ]);
    let echoed = load(server.loopback());
    let exited = server.stop();
    let line = exited.features();
    let (listed, not_listed) = if on {
        ("in_use", "off")
    } else {
        ("off", "in_use")
    };
    assert!(
        list(&line, listed).contains(&feature.name()),
        "{switch}: {line:?}"
    );
    assert!(
        !list(&line, not_listed).contains(&feature.name()),
        "{switch}: {line:?}"
    );
    assert_eq!(exited.count("bytes_echoed"), echoed, "{switch}");
    assert_eq!(exited.count("closed"), CONNECTIONS, "{switch}");
    exited.assert_zero(&ERROR_COUNTERS);
}

fn feature_on_and_off_through_the_binary(feature: Feature) {
    if available(feature) {
        binary_echoes_with(feature, true);
        binary_echoes_with(feature, false);
    }
}

#[test]
fn no_sqarray_on_and_off() {
    feature_on_and_off_through_the_binary(Feature::NoSqarray);
}

#[test]
fn ring_fd_on_and_off() {
    feature_on_and_off_through_the_binary(Feature::RingFd);
}

#[test]
fn send_zc_on_and_off() {
    feature_on_and_off_through_the_binary(Feature::SendZc);
}

/// By default, `no_sqarray` and `ring_fd` are used where the kernel has them, `send_zc` and
/// `buf_ring_inc` are not.
#[test]
fn defaults_on_this_kernel() {
    let server = TestServer::spawn(&["--runtime", "uring-multishot", "--listen", "127.0.0.1:0"]);
    common::echo_once(&mut server.connect(), b"defaults");
    let exited = server.stop();
    let line = exited.features();
    let features = probe::features();
    for (feature, default_on) in [
        (Feature::NoSqarray, true),
        (Feature::RingFd, true),
        (Feature::SendZc, false),
        (Feature::BufRingInc, false),
    ] {
        let key = match (features.has(feature), default_on) {
            (true, true) => "in_use",
            (true, false) => "off",
            (false, true) => "missing",
            (false, false) => {
                assert!(!line
                    .values()
                    .any(|v| v.split(',').any(|f| f == feature.name())));
                continue;
            }
        };
        assert!(
            list(&line, key).contains(&feature.name()),
            "{feature}: {line:?}"
        );
    }
}

// ---- through the library: the exit report says what ran --------------------------------------

/// Runs an engine with `params` on its own thread, puts [`load`] through it, stops it; returns
/// its report, its counts and the bytes the clients got back.
fn run_engine(params: Params) -> (Report, Counts, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = std::sync::Arc::new(Stats::new(1));
    let shutdown = Shutdown::new();
    let admission = Admission::new(None);
    let (tx, rx) = mpsc::channel();
    let handle = {
        let (stats, shutdown, admission) = (stats.clone(), shutdown.clone(), admission.clone());
        thread::spawn(move || -> io::Result<Report> {
            let engine = Engine::new(listener, params);
            tx.send(engine.as_ref().map(|_| ()).map_err(|e| e.to_string()))
                .unwrap();
            engine?.run(stats.worker(0), &admission, &shutdown)
        })
    };
    rx.recv_timeout(IO_TIMEOUT)
        .expect("engine setup timed out")
        .expect("engine setup failed");
    let echoed = load(addr);
    let report = stop_engine(&shutdown, handle);
    assert_eq!(admission.active(), 0);
    (report, stats.snapshot().counts, echoed)
}

/// Stops the engine thread the way a signal would (drain, then force after 30 s) and returns
/// its exit report.
fn stop_engine(shutdown: &Shutdown, handle: JoinHandle<io::Result<Report>>) -> Report {
    shutdown.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !handle.is_finished() {
        if Instant::now() > deadline {
            shutdown.force();
            panic!("the engine did not stop within 30 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    handle.join().expect("engine thread").expect("engine run")
}

fn params() -> Params {
    let mut p = Params::new(16 * 1024);
    p.drain_timeout = Duration::from_secs(2);
    p.tick = Duration::from_millis(20);
    p
}

fn assert_clean(report: &Report, counts: &Counts, echoed: u64) {
    assert_eq!(counts.bytes_echoed, echoed, "{report:?}");
    assert_eq!(counts.closed, CONNECTIONS, "{report:?}");
    assert_eq!(
        (counts.errors_reset, counts.errors_pipe, counts.errors_other),
        (0, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.buffers_in_ring, report.buffers, "{report:?}");
    assert_eq!(report.connections_abandoned, 0, "{report:?}");
    assert_eq!(report.pool_bytes_leaked, 0, "{report:?}");
}

#[test]
fn ring_fd_is_entered_through_when_on() {
    let mut p = params();
    p.ring_fd = true;
    let (report, counts, echoed) = run_engine(p.clone());
    assert_clean(&report, &counts, echoed);
    assert_eq!(report.ring_fd, probe::features().has(Feature::RingFd));
    p.ring_fd = false;
    let (report, counts, echoed) = run_engine(p);
    assert_clean(&report, &counts, echoed);
    assert!(!report.ring_fd);
}

/// Zero-copy sends run (every send of at least the threshold), every announced notification
/// arrives, and each buffer they held returns to the ring; with the feature off none runs.
/// The small pool and cap make connections hold buffers for notifications often.
#[test]
fn send_zc_sends_large_buffers_zero_copy_and_returns_them() {
    if !available(Feature::SendZc) {
        return;
    }
    for (buffers, cap) in [(1024, 4), (16, 2)] {
        let mut p = params();
        p.buffers = buffers;
        p.max_queued_buffers = cap;
        p.send_zc = true;
        let (report, counts, echoed) = run_engine(p.clone());
        assert_clean(&report, &counts, echoed);
        assert!(report.sends_zc > 0, "{report:?}");
        assert!(
            report.sends_zc < report.sends,
            "small ones are copied: {report:?}"
        );
        assert!(
            report.zc_notifications > 0 && report.zc_notifications <= report.sends_zc,
            "{report:?}"
        );
        eprintln!(
            "send_zc, {buffers} buffers, cap {cap}: {} of {} sends zero-copy, {} notifications, \
             most buffers one connection held: {}",
            report.sends_zc, report.sends, report.zc_notifications, report.peak_conn_buffers
        );
        p.send_zc = false;
        let (report, counts, echoed) = run_engine(p);
        assert_clean(&report, &counts, echoed);
        assert_eq!((report.sends_zc, report.zc_notifications), (0, 0));
        eprintln!(
            "copied sends, {buffers} buffers, cap {cap}: most buffers one connection held: {}",
            report.peak_conn_buffers
        );
    }
}

/// Bundled receives (they need the receive budget): byte-exact echo on and off through the
/// binary.
#[test]
fn bundle_on_and_off() {
    if available(Feature::Bundle) && available(Feature::RecvBudget) {
        binary_echoes_with(Feature::Bundle, true);
        binary_echoes_with(Feature::Bundle, false);
    }
}

/// Bundles really happen under the pipelined load (CQEs with several buffers), every byte comes
/// back in order (checked by the clients), and every buffer returns to the ring, with a roomy
/// pool and with a small one that runs dry; off, no CQE brings more than one buffer.
#[test]
fn bundle_takes_runs_of_buffers_in_ring_order() {
    if !(available(Feature::Bundle) && available(Feature::RecvBudget)) {
        return;
    }
    for (buffers, cap, buffer_size) in [(1024, 4, 16 * 1024), (16, 4, 4096), (64, 8, 1024)] {
        let mut p = params();
        p.buffer_size = buffer_size;
        p.buffers = buffers;
        p.max_queued_buffers = cap;
        p.bundle = true;
        let (report, counts, echoed) = run_engine(p.clone());
        assert_clean(&report, &counts, echoed);
        assert!(report.recv_budget, "{report:?}");
        assert!(report.recv_bundles > 0, "{report:?}");
        eprintln!(
            "bundle, {buffers} × {buffer_size} B, cap {cap}: {} receive SQEs, {} CQEs with \
             several buffers, most buffers one connection held: {}",
            report.recvs, report.recv_bundles, report.peak_conn_buffers
        );
        p.bundle = false;
        let (report, counts, echoed) = run_engine(p);
        assert_clean(&report, &counts, echoed);
        assert_eq!(report.recv_bundles, 0);
    }
}

/// `bundle=on` without the receive budget cannot be honoured: refused at start in one line.
#[test]
fn bundle_on_without_the_budget_is_refused() {
    let exited = common::run_to_exit(
        &[
            "--runtime",
            "uring-multishot",
            "--listen",
            "127.0.0.1:0",
            "--feature",
            "bundle=on",
            "--feature",
            "recv_budget=off",
        ],
        &[],
    );
    common::assert_one_line_error(&exited, 1, &["--feature bundle=on"]);
}

/// A client that writes and never reads, then goes away with the echo unread (a reset): with
/// zero-copy sends its connection holds buffers the kernel may still read, and is closed while
/// notifications may be pending. The engine still ends with every buffer back in the ring and
/// nothing abandoned, and another client is served meanwhile.
#[test]
fn send_zc_never_reading_writer_then_reset() {
    if !available(Feature::SendZc) {
        return;
    }
    let mut p = params();
    p.send_zc = true;
    p.buffers = 64;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = std::sync::Arc::new(Stats::new(1));
    let shutdown = Shutdown::new();
    let admission = Admission::new(None);
    let handle = {
        let (stats, shutdown, admission) = (stats.clone(), shutdown.clone(), admission.clone());
        thread::spawn(move || -> io::Result<Report> {
            Engine::new(listener, p)?.run(stats.worker(0), &admission, &shutdown)
        })
    };
    // The writer: 64 KiB writes until a write blocks for a whole second (the server stopped
    // reading it: its echo is stuck and its queue at the cap), at most 64 MiB.
    let mut writer = common::connect(addr);
    writer
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let chunk = common::pattern(77, 64 * 1024);
    let mut written = 0usize;
    while written < 64 << 20 {
        match writer.write(&chunk) {
            Ok(n) => written += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("writer: {e}"),
        }
    }
    assert!(written < 64 << 20, "the server never held the writer back");
    // Another client is served beside it.
    let mut other = common::connect(addr);
    for i in 0..20u64 {
        common::echo_once(&mut other, &common::pattern(i, 20_000));
    }
    drop(other);
    // Unread data at close: the client's kernel resets the connection.
    drop(writer);
    let report = stop_engine(&shutdown, handle);
    let counts = stats.snapshot().counts;
    assert_eq!(counts.closed, 2, "{report:?}");
    assert!(report.sends_zc > 0, "{report:?}");
    assert_eq!(report.buffers_in_ring, report.buffers, "{report:?}");
    assert_eq!(report.connections_abandoned, 0, "{report:?}");
    assert_eq!(report.pool_bytes_leaked, 0, "{report:?}");
    assert_eq!(admission.active(), 0);
    eprintln!(
        "never-reading writer with send_zc: wrote {} KiB; {} zero-copy sends, {} notifications; \
         most buffers one connection held: {}",
        written / 1024,
        report.sends_zc,
        report.zc_notifications,
        report.peak_conn_buffers
    );
}

// ---- buf_ring_inc: incremental provided-buffer consumption ------------------------------------

/// `buf_ring_inc=on` and `off` through the binary: byte-exact echo of every size, and the
/// `features:` line names it as switched (where the kernel lacks it, `on` is refused at start:
/// `tests/kernel.rs`, and [`buf_ring_inc_falls_back_where_the_kernel_lacks_it`] checks the
/// engine's fallback).
#[test]
fn buf_ring_inc_on_and_off() {
    feature_on_and_off_through_the_binary(Feature::BufRingInc);
}

/// A client that writes messages of mixed sizes (1 byte to 70 KB, a pseudo-random sequence) from
/// one thread and reads the echo on another, checking every byte; returns the bytes echoed.
fn mixed_stream(addr: SocketAddr, seed: u64, messages: usize) -> u64 {
    let s = common::connect(addr);
    let sizes: Vec<usize> = (0..messages as u64)
        .map(|i| {
            let z =
                (seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            match z % 4 {
                0 => 1 + (z >> 8) as usize % 64,
                1 => 100 + (z >> 8) as usize % 2000,
                2 => 4000 + (z >> 8) as usize % 20_000,
                _ => 60_000 + (z >> 8) as usize % 10_000,
            }
        })
        .collect();
    stream_echo(s, seed, sizes, &format!("mixed stream {seed}"))
}

/// Runs an engine with `params`, puts `clients` through it (each gets the address and returns
/// the bytes it had echoed), stops it; returns its usage, report, counts and the bytes echoed.
fn run_engine_with(
    params: Params,
    clients: impl FnOnce(SocketAddr) -> u64,
) -> (probe::Usage, Report, Counts, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = std::sync::Arc::new(Stats::new(1));
    let shutdown = Shutdown::new();
    let admission = Admission::new(None);
    let (tx, rx) = mpsc::channel();
    let handle = {
        let (stats, shutdown, admission) = (stats.clone(), shutdown.clone(), admission.clone());
        thread::spawn(move || -> io::Result<Report> {
            let engine = Engine::new(listener, params);
            tx.send(
                engine
                    .as_ref()
                    .map(|e| e.usage())
                    .map_err(|e| e.to_string()),
            )
            .unwrap();
            engine?.run(stats.worker(0), &admission, &shutdown)
        })
    };
    let usage = rx
        .recv_timeout(IO_TIMEOUT)
        .expect("engine setup timed out")
        .expect("engine setup failed");
    let echoed = clients(addr);
    let report = stop_engine(&shutdown, handle);
    assert_eq!(admission.active(), 0);
    (usage, report, stats.snapshot().counts, echoed)
}

/// `connections` [`mixed_stream`]s at once, `messages` each.
fn mixed_load(addr: SocketAddr, connections: u64, messages: usize) -> u64 {
    let clients: Vec<JoinHandle<u64>> = (0..connections)
        .map(|i| thread::spawn(move || mixed_stream(addr, 7000 + i, messages)))
        .collect();
    clients.into_iter().map(|c| c.join().expect("client")).sum()
}

/// Every buffer back, nothing abandoned or leaked, no error, every connection closed.
fn assert_clean_with(report: &Report, counts: &Counts, echoed: u64, connections: u64) {
    assert_eq!(counts.bytes_echoed, echoed, "{report:?}");
    assert_eq!(counts.closed, connections, "{report:?}");
    assert_eq!(
        (counts.errors_reset, counts.errors_pipe, counts.errors_other),
        (0, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.buffers_in_ring, report.buffers, "{report:?}");
    assert_eq!(report.buffers_abandoned, 0, "{report:?}");
    assert_eq!(report.connections_abandoned, 0, "{report:?}");
    assert_eq!(report.pool_bytes_leaked, 0, "{report:?}");
}

/// With `buf_ring_inc` the kernel really shares buffers between receives (CQEs with `BUF_MORE`),
/// under the pipelined load of every size and under many connections writing mixed sizes, with
/// a roomy pool, a small one that runs dry and small buffers that large messages span; every
/// byte comes back in order (the clients check) and every buffer returns to the ring. Off, no
/// CQE has `BUF_MORE`.
#[test]
fn buf_ring_inc_shares_buffers_and_returns_them_all() {
    if !available(Feature::BufRingInc) {
        return;
    }
    for (buffers, cap, buffer_size) in [(1024, 4, 16 * 1024), (16, 4, 4096), (64, 8, 1024)] {
        let mut p = params();
        p.buffer_size = buffer_size;
        p.buffers = buffers;
        p.max_queued_buffers = cap;
        p.buf_ring_inc = true;
        let (usage, report, counts, echoed) = run_engine_with(p.clone(), load);
        assert!(usage.uses(Feature::BufRingInc), "{usage:?}");
        assert_clean(&report, &counts, echoed);
        assert!(report.buf_more > 0, "{report:?}");
        let (_, report2, counts, echoed) =
            run_engine_with(p.clone(), |addr| mixed_load(addr, 24, 150));
        assert_clean_with(&report2, &counts, echoed, 24);
        assert!(report2.buf_more > 0, "{report2:?}");
        eprintln!(
            "buf_ring_inc, {buffers} × {buffer_size} B, cap {cap}: {} and {} receive CQEs with \
             BUF_MORE, most slices one connection held: {} and {}, parks: {} and {}",
            report.buf_more,
            report2.buf_more,
            report.peak_conn_buffers,
            report2.peak_conn_buffers,
            report.parks,
            report2.parks
        );
        p.buf_ring_inc = false;
        let (usage, report, counts, echoed) = run_engine_with(p.clone(), load);
        assert!(!usage.uses(Feature::BufRingInc), "{usage:?}");
        assert_clean(&report, &counts, echoed);
        assert_eq!(report.buf_more, 0, "{report:?}");
        let (_, report, counts, echoed) = run_engine_with(p, |addr| mixed_load(addr, 24, 150));
        assert_clean_with(&report, &counts, echoed, 24);
        eprintln!(
            "without buf_ring_inc, same pool, mixed load: most buffers one connection held: {}, \
             parks: {}",
            report.peak_conn_buffers, report.parks
        );
    }
    // Single-shot receives (kernels with incremental buffers but without the budget, 6.12 to
    // 6.16): each takes a slice of the head buffer too.
    let mut p = params();
    p.buf_ring_inc = true;
    p.recv_budget = RecvBudget::Off;
    let (_, report, counts, echoed) = run_engine_with(p, |addr| mixed_load(addr, 12, 150));
    assert_clean_with(&report, &counts, echoed, 12);
    assert!(!report.recv_budget && report.buf_more > 0, "{report:?}");
}

/// Large messages (64 KiB ping-pong, the suite's 50 × 64 KiB cell in small, and 65,000 B ones
/// that end mid-buffer) on many connections with 16 KiB buffers: the slices a receive leaves at
/// the end of a buffer and the next one continues are all echoed, in order.
#[test]
fn buf_ring_inc_large_messages_many_connections() {
    if !available(Feature::BufRingInc) {
        return;
    }
    let mut p = params();
    p.buf_ring_inc = true;
    let connections = 50u64;
    let (_, report, counts, echoed) = run_engine_with(p, |addr| {
        let clients: Vec<JoinHandle<u64>> = (0..connections)
            .map(|i| {
                thread::spawn(move || {
                    let mut s = common::connect(addr);
                    let mut total = 0;
                    for round in 0..20u64 {
                        // 64 KiB fills whole buffers; 65,000 B leaves a partly used one that
                        // the next message continues.
                        let size = if round % 2 == 0 { 64 * 1024 } else { 65_000 };
                        let msg = common::pattern(i * 100 + round, size);
                        common::echo_once(&mut s, &msg);
                        total += msg.len() as u64;
                    }
                    total
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().expect("client")).sum()
    });
    assert_clean_with(&report, &counts, echoed, connections);
    assert!(report.buf_more > 0, "{report:?}");
}

/// Zero-copy sends of slices: a slice's buffer waits for the notification like a whole one,
/// and comes back once the kernel, every slice and every notification are done with it.
#[test]
fn buf_ring_inc_with_send_zc_returns_every_buffer() {
    if !(available(Feature::BufRingInc) && available(Feature::SendZc)) {
        return;
    }
    for buffers in [1024, 16] {
        let mut p = params();
        p.buffers = buffers;
        p.buf_ring_inc = true;
        p.send_zc = true;
        let (_, report, counts, echoed) = run_engine_with(p, load);
        assert_clean(&report, &counts, echoed);
        assert!(report.buf_more > 0 && report.sends_zc > 0, "{report:?}");
    }
}

/// Clients that go away mid-stream: some reset with echo unread, some half-close and read the
/// rest, beside a well-behaved one whose every byte is checked. Their slices may share buffers
/// with the survivors'; every buffer still comes back, nothing is abandoned.
#[test]
fn buf_ring_inc_connections_closing_mid_stream() {
    if !available(Feature::BufRingInc) {
        return;
    }
    let mut p = params();
    p.buf_ring_inc = true;
    p.buffers = 64;
    p.buffer_size = 4096;
    let quitters = 12u64;
    let (_, report, counts, steady_bytes) = run_engine_with(p, |addr| {
        let steady = thread::spawn(move || mixed_stream(addr, 4242, 300));
        let quit: Vec<JoinHandle<()>> = (0..quitters)
            .map(|i| {
                thread::spawn(move || {
                    let mut s = common::connect(addr);
                    let msg = common::pattern(i, 3000 + i as usize * 1000);
                    for _ in 0..5 {
                        s.write_all(&msg).expect("write");
                    }
                    // Read a little of the echo, so the server is mid-stream.
                    let mut some = vec![0u8; 100];
                    s.read_exact(&mut some).expect("read some echo");
                    assert_eq!(some, msg[..100]);
                    if i % 2 == 0 {
                        // Unread echo at close: a reset.
                        drop(s);
                    } else {
                        s.shutdown(SockShutdown::Write).unwrap();
                        let rest = common::read_to_eof(&mut s);
                        assert_eq!(rest.len(), msg.len() * 5 - 100);
                    }
                })
            })
            .collect();
        for q in quit {
            q.join().expect("quitter");
        }
        steady.join().expect("steady client")
    });
    assert_eq!(counts.closed, quitters + 1, "{report:?}");
    assert!(counts.bytes_echoed >= steady_bytes, "{report:?}");
    assert_eq!(report.buffers_in_ring, report.buffers, "{report:?}");
    assert_eq!(report.buffers_abandoned, 0, "{report:?}");
    assert_eq!(report.connections_abandoned, 0, "{report:?}");
    assert_eq!(report.pool_bytes_leaked, 0, "{report:?}");
}

/// Where the kernel lacks `IOU_PBUF_RING_INC` the engine asked for it falls back to the plain
/// ring (the usage lists it as missing) and echoes as usual; where it has it, it is in use.
#[test]
fn buf_ring_inc_falls_back_where_the_kernel_lacks_it() {
    let has = probe::features().has(Feature::BufRingInc);
    let mut p = params();
    p.buf_ring_inc = true;
    let (usage, report, counts, echoed) = run_engine_with(p, load);
    assert_clean(&report, &counts, echoed);
    if has {
        assert!(usage.uses(Feature::BufRingInc), "{usage:?}");
    } else {
        eprintln!("this kernel has no buf_ring_inc: checking the fallback");
        assert!(usage.missing().contains(&Feature::BufRingInc), "{usage:?}");
        assert_eq!(report.buf_more, 0, "{report:?}");
    }
}

/// `bundle` with `buf_ring_inc`: the library engine takes buf_ring_inc and leaves bundles off
/// (no bundled CQE); the binary refuses `bundle=on` beside `buf_ring_inc=on` in one line, since
/// its `features:` line could not list bundle in use.
#[test]
fn buf_ring_inc_wins_over_bundle() {
    if !(available(Feature::BufRingInc) && available(Feature::Bundle)) {
        return;
    }
    let mut p = params();
    p.buf_ring_inc = true;
    p.bundle = true;
    let (usage, report, counts, echoed) = run_engine_with(p, load);
    assert_clean(&report, &counts, echoed);
    assert!(usage.uses(Feature::BufRingInc), "{usage:?}");
    assert!(usage.off().contains(&Feature::Bundle), "{usage:?}");
    assert_eq!(report.recv_bundles, 0, "{report:?}");
    let exited = common::run_to_exit(
        &[
            "--runtime",
            "uring-multishot",
            "--listen",
            "127.0.0.1:0",
            "--feature",
            "bundle=on",
            "--feature",
            "buf_ring_inc=on",
        ],
        &[],
    );
    common::assert_one_line_error(&exited, 1, &["--feature bundle=on"]);
}
