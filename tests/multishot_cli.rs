//! `--runtime uring-multishot` through the real binary: flags that belong to the tokio-uring
//! runtime are refused in one line, the ones it honours work. (Echo semantics, limits and
//! shutdown run for every runtime in echo.rs, limits.rs and lifecycle.rs.)

mod common;

use common::{assert_one_line_error, echo_once, run_to_exit, TestServer};
use uring_echo::probe::{self, Feature};

#[test]
fn tokio_uring_flags_are_refused() {
    for flag in [
        &["--sqpoll", "100"][..],
        &["--coop-taskrun"],
        &["--fixed-buffers"],
    ] {
        let mut args = vec!["--runtime", "uring-multishot", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flag);
        let exited = run_to_exit(&args, &[]);
        assert_one_line_error(&exited, 1, &[flag[0], "uring-multishot"]);
    }
}

#[test]
fn small_ring_and_tiny_buffers_still_echo_everything() {
    // 4 SQ entries for 20 connections: the engine must flush a full submission queue early.
    // 512-byte provided buffers: every message spans many receives and sends.
    let server = TestServer::spawn(&[
        "--runtime",
        "uring-multishot",
        "--listen",
        "127.0.0.1:0",
        "--ring-entries",
        "4",
        "--buffer-size",
        "512",
    ]);
    let clients: Vec<_> = (0..20u64)
        .map(|i| {
            let mut s = server.connect();
            std::thread::spawn(move || {
                for round in 0..20u64 {
                    let data = common::pattern(i * 100 + round, 10_000);
                    echo_once(&mut s, &data);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client failed");
    }
    let exited = server.stop();
    assert_eq!(exited.count("bytes_echoed"), 20 * 20 * 10_000);
    assert_eq!(exited.count("closed"), 20);
}

#[test]
fn batch_wait_flag_echoes_correctly() {
    let server = TestServer::spawn(&[
        "--runtime",
        "uring-multishot",
        "--listen",
        "127.0.0.1:0",
        "--batch-wait",
        "8,200us",
    ]);
    let mut s = server.connect();
    for i in 0..100u64 {
        echo_once(&mut s, &common::pattern(i, 300));
    }
    drop(s);
    let exited = server.stop();
    assert_eq!(exited.count("bytes_echoed"), 100 * 300);
    // The wait's minimum (Linux 6.12) where the kernel has it, else the plain-timeout fallback,
    // and the features line says which.
    let line = exited.features();
    let (used, expected) = if probe::features().has(Feature::MinWait) {
        (&line["in_use"], "min_wait")
    } else {
        eprintln!("this kernel has no min_wait (Linux 6.12): --batch-wait used a plain timeout");
        (&line["missing"], "min_wait")
    };
    assert!(used.split(',').any(|f| f == expected), "{line:?}");
}

#[test]
fn batch_wait_is_refused_for_other_runtimes() {
    for runtime in ["uring", "epoll"] {
        let exited = run_to_exit(
            &[
                "--runtime",
                runtime,
                "--listen",
                "127.0.0.1:0",
                "--batch-wait",
                "8,100us",
            ],
            &[],
        );
        assert_one_line_error(&exited, 1, &["--batch-wait", "uring-multishot"]);
    }
}
