//! SIGTERM under full load: no panic, exit 0, connections drained (or closed at the drain
//! deadline), and the summary agrees with what the clients saw, byte for byte.
//!
//! The load is 200 connections in a closed loop, each echoing messages of 1 byte to 32 KiB on
//! one continuous, verified byte stream per connection, so every byte the clients got back is
//! checked and counted.
//!
//! Fast suite: both cases per runtime with `--threads 2`; long run: `--threads 1|2`, longer
//! load.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stress::{report, wait_until};
use common::{fill_pattern, TestServer};

const CONNS: usize = 200;

fast_per_runtime!(2; sigterm_drains_under_load_fast, sigterm_drain_deadline_under_load_fast);
long_per_config!(
    sigterm_drains_under_load_long,
    sigterm_drain_deadline_under_load_long
);

fn sigterm_drains_under_load_fast(runtime: &str, threads: usize) {
    sigterm_drains_under_load(runtime, threads, Duration::from_secs(1));
}
fn sigterm_drains_under_load_long(runtime: &str, threads: usize) {
    sigterm_drains_under_load(runtime, threads, Duration::from_secs(5));
}
fn sigterm_drain_deadline_under_load_fast(runtime: &str, threads: usize) {
    sigterm_drain_deadline_under_load(runtime, threads, Duration::from_secs(1));
}
fn sigterm_drain_deadline_under_load_long(runtime: &str, threads: usize) {
    sigterm_drain_deadline_under_load(runtime, threads, Duration::from_secs(5));
}

/// What the clients saw, summed.
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    received: AtomicU64,
    messages: AtomicU64,
    /// Connections that ended by the server closing or resetting (not by our own FIN).
    ended_by_server: AtomicU64,
}

/// Runs `CONNS` connections until `stop` (then closes gracefully: FIN, expect exactly EOF) or
/// until the server ends them. Any wrong byte panics.
fn load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    totals: Arc<Totals>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = common::stress::tokio_rt();
        rt.block_on(async move {
            let conns = common::stress::connect_many(addr, CONNS, 64).await;
            let mut set = tokio::task::JoinSet::new();
            for (i, s) in conns.streams.into_iter().enumerate() {
                let (stop, totals) = (Arc::clone(&stop), Arc::clone(&totals));
                set.spawn(conn(s, i as u64, stop, totals));
            }
            while let Some(r) = set.join_next().await {
                r.expect("load connection panicked");
            }
        });
    })
}

async fn conn(mut s: tokio::net::TcpStream, seed: u64, stop: Arc<AtomicBool>, totals: Arc<Totals>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sent, mut received) = (0u64, 0u64);
    let mut wbuf = vec![0u8; 32 * 1024];
    let mut rbuf = vec![0u8; 32 * 1024];
    let mut want = vec![0u8; 32 * 1024];
    let mut k = seed;
    let ended_by_server = loop {
        if stop.load(Ordering::Relaxed) {
            break false;
        }
        k = k
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 1 + (k >> 33) as usize % (32 * 1024);
        fill_pattern(seed, sent, &mut wbuf[..len]);
        let (mut r, mut w) = s.split();
        let write = async { w.write_all(&wbuf[..len]).await.map(|()| len) };
        let read = async {
            let mut got = 0;
            while got < len {
                match r.read(&mut rbuf[..len - got]).await {
                    Ok(0) => return (got, false),
                    Ok(n) => {
                        fill_pattern(seed, received + got as u64, &mut want[..n]);
                        assert!(rbuf[..n] == want[..n], "connection {seed}: echo differs");
                        got += n;
                    }
                    Err(_) => return (got, false),
                }
            }
            (got, true)
        };
        let (w, (got, complete)) = tokio::join!(write, read);
        if let Ok(n) = w {
            sent += n as u64;
        }
        received += got as u64;
        if !complete {
            break true;
        }
        totals.messages.fetch_add(1, Ordering::Relaxed);
    };
    if !ended_by_server {
        // Graceful: FIN, then the server must answer with exactly EOF.
        s.shutdown().await.expect("shutdown(SHUT_WR)");
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b))
            .await
            .expect("server never closed after our FIN")
            .expect("EOF after FIN");
        assert_eq!(n, 0, "server sent bytes after the last echo");
    } else {
        totals.ended_by_server.fetch_add(1, Ordering::Relaxed);
    }
    totals.sent.fetch_add(sent, Ordering::Relaxed);
    totals.received.fetch_add(received, Ordering::Relaxed);
}

fn spawn(runtime: &str, threads: usize, drain: &str) -> TestServer {
    TestServer::spawn(&[
        "--runtime",
        runtime,
        "--threads",
        &threads.to_string(),
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        drain,
    ])
}

fn wait_for_load(server: &TestServer, totals: &Totals, baseline: usize) {
    wait_until("all load connections", Duration::from_secs(30), || {
        server.fd_count() >= baseline + CONNS
    });
    wait_until("load to flow", Duration::from_secs(30), || {
        totals.messages.load(Ordering::Relaxed) > 0
    });
}

/// SIGTERM, then (once the server says it is draining) the clients finish their current
/// message and close: the server must exit 0 long before its drain timeout with counters that
/// match the clients exactly.
fn sigterm_drains_under_load(runtime: &str, threads: usize, busy: Duration) {
    let server = spawn(runtime, threads, "20s");
    let baseline = server.fd_count();
    let (stop, totals) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Totals::default()),
    );
    let clients = load(server.loopback(), Arc::clone(&stop), Arc::clone(&totals));
    wait_for_load(&server, &totals, baseline);
    std::thread::sleep(busy);

    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    server.wait_for_stderr("the drain to start", Duration::from_secs(10), |e| {
        e.contains("stopping")
    });
    // Still serving the open connections while draining.
    let before = totals.messages.load(Ordering::Relaxed);
    wait_until("echoes during the drain", Duration::from_secs(10), || {
        totals.messages.load(Ordering::Relaxed) > before + CONNS as u64
    });
    stop.store(true, Ordering::Relaxed);
    clients.join().expect("load failed");
    let mut server = server;
    let exited = server.wait_exit(Duration::from_secs(30));
    let took = signalled.elapsed();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert!(!exited.stderr.contains("panicked"), "{}", exited.stderr);
    assert!(
        !exited.stderr.contains("closing connections still open"),
        "drain should not have needed force: {}",
        exited.stderr
    );
    let (sent, received) = (
        totals.sent.load(Ordering::Relaxed),
        totals.received.load(Ordering::Relaxed),
    );
    assert_eq!(totals.ended_by_server.load(Ordering::Relaxed), 0);
    assert_eq!(
        sent, received,
        "clients got back fewer bytes than they sent"
    );
    assert_eq!(
        exited.count("accepted"),
        CONNS as u64,
        "{:?}",
        exited.summary()
    );
    assert_eq!(exited.count("closed"), CONNS as u64);
    assert_eq!(
        exited.count("bytes_echoed"),
        received,
        "{:?}",
        exited.summary()
    );
    exited.assert_zero(&[
        "errors_reset",
        "errors_pipe",
        "errors_other",
        "idle_timeouts",
    ]);
    report(&format!(
        "SIGTERM drain {runtime:<15} threads={threads}: {CONNS} busy connections, {} messages, \
         {} MiB; exit 0 {:.2}s after SIGTERM; bytes_echoed = bytes the clients received = {received}",
        totals.messages.load(Ordering::Relaxed),
        received >> 20,
        took.as_secs_f64(),
    ));
}

/// SIGTERM while the clients never stop: at `--drain-timeout 1s` the server closes them. It
/// must exit 0 promptly, every connection must end (EOF or reset, never a wrong byte), and the
/// counters must bracket what the clients saw.
fn sigterm_drain_deadline_under_load(runtime: &str, threads: usize, busy: Duration) {
    let server = spawn(runtime, threads, "1s");
    let baseline = server.fd_count();
    let (stop, totals) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Totals::default()),
    );
    let clients = load(server.loopback(), Arc::clone(&stop), Arc::clone(&totals));
    wait_for_load(&server, &totals, baseline);
    std::thread::sleep(busy);

    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let mut server = server;
    let exited = server.wait_exit(Duration::from_secs(30));
    let took = signalled.elapsed();
    clients.join().expect("load failed");
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert!(!exited.stderr.contains("panicked"), "{}", exited.stderr);
    // Drain timeout (1 s) + the bounded wait after forcing (1 s) + slack for a busy machine.
    assert!(
        took < Duration::from_secs(8),
        "exit took {took:?} after SIGTERM"
    );
    let (sent, received) = (
        totals.sent.load(Ordering::Relaxed),
        totals.received.load(Ordering::Relaxed),
    );
    assert_eq!(totals.ended_by_server.load(Ordering::Relaxed), CONNS as u64);
    assert_eq!(
        exited.count("accepted"),
        CONNS as u64,
        "{:?}",
        exited.summary()
    );
    assert_eq!(exited.count("closed"), CONNS as u64);
    let echoed = exited.count("bytes_echoed");
    assert!(
        received <= echoed && echoed <= sent,
        "received {received} <= bytes_echoed {echoed} <= sent {sent} does not hold"
    );
    report(&format!(
        "SIGTERM deadline {runtime:<15} threads={threads}: {CONNS} connections that never stop, \
         closed at --drain-timeout 1s; exit 0 {:.2}s after SIGTERM; sent {sent} >= bytes_echoed \
         {echoed} >= received {received} (in flight at the close: {} B)",
        took.as_secs_f64(),
        echoed - received,
    ));
}
