//! Echo correctness against the real binary, on every engine: every byte back, in order.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::{connect, echo_once, fill_pattern, pattern, read_to_eof, TestServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uring_echo::probe::{self, Feature};

for_each_runtime!(
    hello_over_ipv4_and_ipv6_on_one_dual_stack_listener,
    ipv6_only_refuses_ipv4,
    ipv4_listen_address_works,
    half_close_gets_everything_then_eof,
    large_payload_echoed_while_reading_concurrently,
    many_concurrent_connections_random_chunks,
    threads_spread_connections_over_workers,
    tiny_buffer_and_no_nodelay,
);

fn hello_over_ipv4_and_ipv6_on_one_dual_stack_listener(runtime: &str) {
    let server = TestServer::spawn(&["--runtime", runtime, "--listen", "[::]:0"]);
    assert!(
        server.addr.is_ipv6() && server.addr.port() != 0,
        "{}",
        server.addr
    );
    let mut sent = 0;
    for addr in [server.v4(), server.v6()] {
        let mut s = connect(addr);
        let greeting = format!("hello from {addr}");
        echo_once(&mut s, greeting.as_bytes());
        sent += greeting.len() as u64;
    }
    let exited = server.stop();
    assert_eq!(exited.count("accepted"), 2);
    assert_eq!(exited.count("bytes_echoed"), sent);
}

fn ipv6_only_refuses_ipv4(runtime: &str) {
    let server = TestServer::spawn(&["--runtime", runtime, "--listen", "[::]:0", "--ipv6-only"]);
    let err = std::net::TcpStream::connect_timeout(&server.v4(), Duration::from_secs(5))
        .expect_err("IPv4 must be refused by an IPv6-only listener");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    echo_once(&mut connect(server.v6()), b"v6 still works");
}

fn ipv4_listen_address_works(runtime: &str) {
    let server = TestServer::spawn(&["--runtime", runtime, "--listen", "127.0.0.1:0"]);
    assert!(server.addr.is_ipv4());
    echo_once(&mut server.connect(), b"plain IPv4");
}

fn half_close_gets_everything_then_eof(runtime: &str) {
    let server = TestServer::spawn(&["--runtime", runtime, "--listen", "127.0.0.1:0"]);
    // Larger than the server's buffer, so the echo spans many reads after our FIN.
    let request = pattern(7, 300_000);
    let mut s = server.connect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let request = request.clone();
        std::thread::spawn(move || {
            w.write_all(&request).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    let reply = read_to_eof(&mut s);
    writer.join().unwrap();
    assert!(
        reply == request,
        "got {} of {} bytes back",
        reply.len(),
        request.len()
    );
    let exited = server.stop();
    assert_eq!(exited.count("closed"), 1);
    assert_eq!(
        exited.count("errors_other") + exited.count("errors_reset"),
        0
    );
}

fn large_payload_echoed_while_reading_concurrently(runtime: &str) {
    const TOTAL: u64 = 64 << 20;
    const SEED: u64 = 64;
    let server = TestServer::spawn(&["--runtime", runtime, "--listen", "127.0.0.1:0"]);
    let mut s = server.connect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; 256 * 1024];
            let mut offset = 0;
            while offset < TOTAL {
                let n = chunk.len().min((TOTAL - offset) as usize);
                fill_pattern(SEED, offset, &mut chunk[..n]);
                w.write_all(&chunk[..n]).unwrap();
                offset += n as u64;
            }
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut expected = vec![0u8; buf.len()];
    let mut offset = 0u64;
    loop {
        let n = s.read(&mut buf).expect("read echo");
        if n == 0 {
            break;
        }
        fill_pattern(SEED, offset, &mut expected[..n]);
        assert!(
            buf[..n] == expected[..n],
            "mismatch in {n} bytes at offset {offset}"
        );
        offset += n as u64;
    }
    writer.join().unwrap();
    assert_eq!(offset, TOTAL, "EOF before every byte came back");
    assert_eq!(server.stop().count("bytes_echoed"), TOTAL);
}

fn many_concurrent_connections_random_chunks(runtime: &str) {
    const CONNS: usize = 200;
    const PER_CONN: usize = 1 << 20;
    let server = TestServer::spawn(&["--runtime", runtime, "--listen", "127.0.0.1:0"]);
    let addr = server.loopback();
    let clients: Vec<_> = (0..CONNS)
        .map(|i| {
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(1000 + i as u64);
                let data = pattern(i as u64, PER_CONN);
                let mut s = connect(addr);
                let mut back = vec![0u8; 64 * 1024];
                let mut sent = 0;
                while sent < PER_CONN {
                    let n = rng.random_range(1..=64 * 1024).min(PER_CONN - sent);
                    s.write_all(&data[sent..sent + n]).unwrap();
                    s.read_exact(&mut back[..n]).unwrap();
                    assert!(
                        back[..n] == data[sent..sent + n],
                        "conn {i}: mismatch at {sent}"
                    );
                    sent += n;
                }
                s.shutdown(Shutdown::Write).unwrap();
                assert_eq!(s.read(&mut back).unwrap(), 0, "conn {i}: data after EOF");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client failed");
    }
    let exited = server.stop();
    assert_eq!(exited.count("accepted"), CONNS as u64);
    assert_eq!(exited.count("closed"), CONNS as u64);
    assert_eq!(exited.count("bytes_echoed"), (CONNS * PER_CONN) as u64);
}

fn threads_spread_connections_over_workers(runtime: &str) {
    const CONNS: usize = 64;
    let server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "2",
    ]);
    // Each connection has its own source port, so SO_REUSEPORT hashes them independently: all
    // 64 landing on one worker would happen with probability 2^-63.
    for i in 0..CONNS {
        echo_once(&mut server.connect(), format!("conn {i}").as_bytes());
    }
    let exited = server.stop();
    let per_thread: Vec<u64> = exited.summary()["accepted_per_thread"]
        .split('/')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(per_thread.len(), 2, "{per_thread:?}");
    assert_eq!(per_thread.iter().sum::<u64>(), CONNS as u64);
    assert!(per_thread.iter().all(|&n| n > 0), "{per_thread:?}");
}

fn tiny_buffer_and_no_nodelay(runtime: &str) {
    let server = TestServer::spawn(&[
        "--runtime",
        runtime,
        "--listen",
        "127.0.0.1:0",
        "--buffer-size",
        "7",
        "--no-nodelay",
    ]);
    let mut s = server.connect();
    let data = pattern(3, 100_003);
    let reader = {
        let mut r = s.try_clone().unwrap();
        std::thread::spawn(move || read_to_eof(&mut r))
    };
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(reader.join().unwrap() == data);
}

// io_uring knobs: uring only.

fn echo_many(server: &TestServer, conns: usize, per_conn: usize) {
    let addr = server.loopback();
    let clients: Vec<_> = (0..conns)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern(i as u64 + 77, per_conn);
                let mut s = connect(addr);
                for chunk in data.chunks(8192) {
                    echo_once(&mut s, chunk);
                }
                s.shutdown(Shutdown::Write).unwrap();
                assert!(read_to_eof(&mut s).is_empty());
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client failed");
    }
}

#[test]
fn uring_fixed_buffers_echo_including_pool_overflow() {
    // 150 concurrent connections against a pool of 128 registered buffers: the first ones use
    // read_fixed/write_fixed, the rest fall back to ordinary buffers.
    let server = TestServer::spawn(&[
        "--runtime",
        "uring",
        "--listen",
        "127.0.0.1:0",
        "--fixed-buffers",
    ]);
    echo_many(&server, 150, 64 * 1024);
    let exited = server.stop();
    assert_eq!(exited.count("bytes_echoed"), 150 * 64 * 1024);
    assert_eq!(exited.count("closed"), 150);
}

#[test]
fn uring_sqpoll_echo() {
    let args = [
        "--runtime",
        "uring",
        "--listen",
        "127.0.0.1:0",
        "--sqpoll",
        "100",
    ];
    // tokio-uring's files are not registered: SQPOLL needs IORING_FEAT_SQPOLL_NONFIXED (5.11).
    if !probe::features().has(Feature::Sqpoll) {
        eprintln!("SKIPPED: this kernel has no SQPOLL without registered files (Linux 5.11)");
        return;
    }
    let server = match TestServer::try_spawn(&args, &[]) {
        Ok(server) => server,
        Err(exited) => {
            // The kernel has the feature, but this process may not use it (privileges).
            eprintln!("SKIPPED: SQPOLL refused here: {}", exited.stderr.trim());
            return;
        }
    };
    echo_many(&server, 8, 256 * 1024);
    let exited = server.stop();
    assert_eq!(exited.count("bytes_echoed"), 8 * 256 * 1024);
    assert!(
        exited.features()["in_use"].contains("sqpoll"),
        "{}",
        exited.stderr
    );
}

#[test]
fn uring_coop_taskrun_and_small_ring_echo() {
    let args = [
        "--runtime",
        "uring",
        "--listen",
        "127.0.0.1:0",
        "--coop-taskrun",
        "--ring-entries",
        "4",
    ];
    if !probe::features().has(Feature::CoopTaskrun) {
        eprintln!("SKIPPED: no IORING_SETUP_COOP_TASKRUN (Linux 5.19); checking the refusal");
        let exited = common::run_to_exit(&args, &[]);
        common::assert_one_line_error(&exited, 1, &["COOP_TASKRUN", "--runtime epoll"]);
        return;
    }
    let server = TestServer::spawn(&args);
    // More connections than submission queue entries: submissions must be flushed early.
    echo_many(&server, 20, 128 * 1024);
    let exited = server.stop();
    assert_eq!(exited.count("bytes_echoed"), 20 * 128 * 1024);
    assert!(
        exited.features()["in_use"].contains("coop_taskrun"),
        "{}",
        exited.stderr
    );
}

#[test]
fn pinned_threads_echo() {
    for runtime in common::RUNTIMES {
        let server = TestServer::spawn(&[
            "--runtime",
            runtime,
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--pin",
        ]);
        echo_many(&server, 4, 16 * 1024);
        assert_eq!(server.stop().status.code(), Some(0));
    }
}

#[test]
fn pattern_generator_is_deterministic_and_offset_based() {
    // Guards the test data generator itself: different seeds differ, same seed repeats, and
    // filling in pieces equals filling at once (the 64 MiB test relies on it).
    assert_eq!(pattern(1, 1000), pattern(1, 1000));
    assert_ne!(pattern(1, 1000), pattern(2, 1000));
    let mut split = vec![0u8; 1000];
    fill_pattern(1, 0, &mut split[..333]);
    fill_pattern(1, 333, &mut split[333..]);
    assert_eq!(split, pattern(1, 1000));
}
