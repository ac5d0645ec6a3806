//! Scale: many concurrent connections, each echoing verified bytes; reports connect time, RSS
//! per connection and fds, and checks that everything is given back afterwards.
//!
//! Fast suite: 1,000 connections per runtime (`--threads 2`). Long run (bench/stress.sh):
//! 10,000 connections for every runtime × `--threads 1|2`; the test process raises its
//! RLIMIT_NOFILE to the hard limit and skips with a message only if that is too low.

mod common;

use std::time::{Duration, Instant};

use common::stress::{
    close_all, connect_many, echo_all, nofile_allows, report, tokio_rt, Percentiles,
};
use common::TestServer;

fast_per_runtime!(2; scale_1k);
long_per_config!(scale_10k);

fn scale_1k(runtime: &str, threads: usize) {
    scale(runtime, threads, 1_000);
}

fn scale_10k(runtime: &str, threads: usize) {
    scale(runtime, threads, 10_000);
}

fn scale(runtime: &str, threads: usize, conns: usize) {
    let test = format!("scale {runtime} --threads {threads} x{conns}");
    // Client sockets in this process, server sockets in the server (it inherits the limit).
    if !nofile_allows(conns as u64 + 200, &test) {
        return;
    }
    let server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--threads",
        &threads.to_string(),
        "--listen",
        "127.0.0.1:0",
        "--backlog",
        "4096",
    ]);
    let addr = server.loopback();
    let baseline_fds = server.fd_count();
    let rss_base = server.rss_kib();

    let rt = tokio_rt();
    let started = Instant::now();
    let connected = rt.block_on(connect_many(addr, conns, 256));
    let (streams, connect_times) = (connected.streams, connected.took);
    let connect_wall = started.elapsed();
    // Every connection accepted: the server holds one fd per connection.
    server.wait_for_fd_count(baseline_fds + conns, Duration::from_secs(60));
    let accepted_wall = started.elapsed();
    let rss_connected = server.rss_kib();

    // Two rounds on every connection at once: a small message, then 16 KiB (fills the buffer).
    let (streams, small_rtt) = rt.block_on(echo_all(streams, 64, 0x5ca1e));
    let rss_small = server.rss_kib();
    let (streams, full_rtt) = rt.block_on(echo_all(streams, 16 * 1024, 0xb16));
    let rss_full = server.rss_kib();
    assert_eq!(server.fd_count(), baseline_fds + conns);

    rt.block_on(close_all(streams));
    let closing = Instant::now();
    server.wait_for_fd_count(baseline_fds, Duration::from_secs(60));
    let release = closing.elapsed();
    common::stress::assert_recovered(&server, baseline_fds, &test);

    let exited = server.stop();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert!(!exited.stderr.contains("panicked"), "{}", exited.stderr);
    assert_eq!(exited.count("accepted"), conns as u64 + 1);
    assert_eq!(exited.count("closed"), conns as u64 + 1);
    let bytes = conns as u64 * (64 + 16 * 1024);
    assert!(
        exited.count("bytes_echoed") >= bytes,
        "{:?}",
        exited.summary()
    );
    exited.assert_zero(&common::ERROR_COUNTERS);

    let per_conn = |kib: u64| (kib.saturating_sub(rss_base) * 1024) as f64 / conns as f64;
    let connects = Percentiles::of(&connect_times);
    report(&format!(
        "scale {runtime:<15} threads={threads} conns={conns}: connected in {:.2}s ({:.0}/s), \
         all accepted after {:.2}s; connect {connects}; server fds {baseline_fds} -> {} -> {baseline_fds} \
         ({:.2}s to release)",
        connect_wall.as_secs_f64(),
        conns as f64 / connect_wall.as_secs_f64(),
        accepted_wall.as_secs_f64(),
        baseline_fds + conns,
        release.as_secs_f64(),
    ));
    report(&format!(
        "scale {runtime:<15} threads={threads} conns={conns}: RSS {rss_base} KiB base, \
         {rss_connected} KiB connected ({:.0} B/conn), {rss_small} KiB after 64 B each ({:.0} B/conn), \
         {rss_full} KiB after 16 KiB each ({:.0} B/conn); 64 B round {}; 16 KiB round {}",
        per_conn(rss_connected),
        per_conn(rss_small),
        per_conn(rss_full),
        Percentiles::of(&small_rtt),
        Percentiles::of(&full_rtt),
    ));
}
