//! The library API: run the server inside the test process and stop it without signals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use clap::Parser;
use uring_echo::config::Cli;
use uring_echo::{Config, Shutdown};

fn config(args: &[&str]) -> Config {
    let argv = ["uring-echo"].iter().chain(args);
    Config::try_from(Cli::try_parse_from(argv).unwrap()).unwrap()
}

#[test]
fn start_serve_stop_and_summarize() {
    for runtime in ["uring", "epoll", "uring-multishot"] {
        let shutdown = Shutdown::new();
        let server = uring_echo::start(
            config(&[
                "--runtime",
                runtime,
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "2",
            ]),
            shutdown.clone(),
        )
        .unwrap();
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"in process").unwrap();
        let mut back = [0u8; 10];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"in process");
        // The multishot engine adds its counts once per tick (100 ms): wait for them, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.snapshot().counts.accepted != 1 {
            assert!(
                Instant::now() < deadline,
                "{runtime}: {:?}",
                server.snapshot()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(s);
        shutdown.stop();
        let summary = server.wait().unwrap();
        assert_eq!(summary.counts.accepted, 1, "{runtime}");
        assert_eq!(summary.counts.closed, 1, "{runtime}");
        assert_eq!(summary.counts.bytes_echoed, 10, "{runtime}");
        assert_eq!(summary.accepted_per_thread.len(), 2);
    }
}

#[test]
fn start_reports_bind_errors_without_leaving_workers() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = uring_echo::start(config(&["--listen", &addr]), Shutdown::new())
        .err()
        .expect("the port is taken");
    assert!(
        format!("{err:#}").starts_with(&format!("cannot listen on {addr}: ")),
        "{err:#}"
    );
}
