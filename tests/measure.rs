//! Measurements for the closing notes, not pass/fail tests (hence `#[ignore]`):
//!
//! ```text
//! cargo test --release -p uring-echo --test measure -- --ignored --nocapture --test-threads 1
//! ```
//!
//! They print figures; the only assertions are sanity checks (every connection accepted, fds back
//! to the baseline).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{connect, echo_once, TestServer, RUNTIMES};

const IDLE_CONNS: usize = 1000;
const RST_CONNS: usize = 2000;

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn rss_per_idle_connection() {
    for runtime in RUNTIMES {
        let server = TestServer::spawn(&["--runtime", runtime, "--listen", "127.0.0.1:0"]);
        let baseline_fds = server.fd_count();
        // Warm up allocator and runtime with one finished connection.
        echo_once(&mut server.connect(), b"warm up");
        let wait_fds = |target: usize| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while server.fd_count() != target {
                assert!(
                    Instant::now() < deadline,
                    "server fds never reached {target}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait_fds(baseline_fds);
        let rss_base = server.rss_kib();
        let mut conns: Vec<TcpStream> = (0..IDLE_CONNS).map(|_| server.connect()).collect();
        wait_fds(baseline_fds + IDLE_CONNS);
        let rss_connected = server.rss_kib();
        for c in &mut conns {
            echo_once(c, b"ping");
        }
        let rss_small = server.rss_kib();
        let full = vec![b'f'; 16 * 1024];
        for c in &mut conns {
            echo_once(c, &full);
        }
        let rss_full = server.rss_kib();
        let per = |kib: u64| (kib.saturating_sub(rss_base) * 1024) as f64 / IDLE_CONNS as f64;
        println!(
            "{runtime:>15}: VmRSS baseline {rss_base} KiB | {IDLE_CONNS} idle conns {rss_connected} KiB \
             ({:.0} B/conn) | after a 4-byte echo each {rss_small} KiB ({:.0} B/conn) | after a 16 KiB \
             echo each {rss_full} KiB ({:.0} B/conn)",
            per(rss_connected),
            per(rss_small),
            per(rss_full)
        );
        drop(conns);
        wait_fds(baseline_fds);
    }
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn fds_after_rst_storm() {
    for runtime in RUNTIMES {
        let server = TestServer::spawn(&["--runtime", runtime, "--listen", "127.0.0.1:0"]);
        let baseline = server.fd_count();
        let payload = vec![b'r'; 64 * 1024];
        let mut peak = baseline;
        for i in 0..RST_CONNS {
            let mut s = connect(server.loopback());
            let _ = s.write_all(if i % 2 == 0 {
                &payload
            } else {
                &payload[..100]
            });
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
            if i % 100 == 0 {
                peak = peak.max(server.fd_count());
            }
        }
        let started = Instant::now();
        server.wait_for_fd_count(baseline, Duration::from_secs(20));
        let settled = started.elapsed();
        // The accept queue is FIFO: once this echoes, every reset connection was accepted too.
        echo_once(&mut server.connect(), b"after the storm");
        server.wait_for_fd_count(baseline, Duration::from_secs(20));
        let exited = server.stop();
        println!(
            "{runtime:>15}: {RST_CONNS} connections reset mid-stream: fds baseline {baseline}, \
             sampled peak {peak}, back to {baseline} {settled:?} after the last reset; errors_reset={} errors_pipe={}",
            exited.count("errors_reset"),
            exited.count("errors_pipe")
        );
        println!(
            "{:>15}  {}",
            "",
            exited.stderr.lines().last().unwrap_or_default()
        );
        assert_eq!(exited.count("accepted"), RST_CONNS as u64 + 1);
        assert_eq!(exited.count("closed"), exited.count("accepted"));
    }
}
