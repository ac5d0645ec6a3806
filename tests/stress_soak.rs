//! Soak under load with echo-bench (every echoed byte verified): a closed loop at saturation,
//! then an open loop at 70% of the rate the closed loop measured. Reports messages, mismatches
//! (must be 0), p99 and p99.9, and the server's RSS over time (no growth trend).
//!
//! Long run (bench/stress.sh): `STRESS_SOAK_SECS` (default 60) per phase for every runtime ×
//! `--threads 1|2`. Fast suite: 2 s per phase on each runtime with `--threads 2`, so the
//! echo-bench integration is exercised on every CI run.
//!
//! With `--threads 1` on a machine with at least two CPUs, the server is pinned to the first
//! and echo-bench to the second (the IO_URING_NOTES rule for measurements).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stress::{env_u64, read_json, report, run_echo_bench};
use common::TestServer;

const CONNS: usize = 50;
const SIZE: u64 = 128;

fast_per_runtime!(2; soak_short);
long_per_config!(soak);

fn soak_short(runtime: &str, threads: usize) {
    run(runtime, threads, 2);
}

fn soak(runtime: &str, threads: usize) {
    run(runtime, threads, env_u64("STRESS_SOAK_SECS", 60));
}

fn run(runtime: &str, threads: usize, secs: u64) {
    let cpus = uring_echo::config::allowed_cpus().unwrap_or_default();
    let pin = threads == 1 && cpus.len() >= 2;
    let threads_arg = threads.to_string();
    let server_cpu = cpus.first().map(ToString::to_string).unwrap_or_default();
    let client_cpu = cpus.get(1).map(ToString::to_string).unwrap_or_default();
    let mut args = vec![
        "--runtime",
        runtime,
        "--threads",
        &threads_arg,
        "--listen",
        "127.0.0.1:0",
    ];
    if pin {
        args.extend(["--cpus", &server_cpu]);
    }
    let server = TestServer::spawn(&args);
    let target = server.loopback().to_string();
    let dir = tempfile::tempdir().unwrap();

    // RSS every 500 ms, from a sampler thread, for the whole soak.
    let stop = Arc::new(AtomicBool::new(false));
    let pid = server.pid;
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    samples.push((started.elapsed().as_secs_f64(), kib));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        })
    };

    let bench = |name: &str, extra: &[&str]| -> serde_json::Value {
        let json = dir.path().join(format!("{name}.json"));
        let secs_arg = format!("{secs}s");
        let conns_arg = CONNS.to_string();
        let size_arg = SIZE.to_string();
        let json_arg = json.display().to_string();
        let mut a = vec![
            "-q", "-c", &conns_arg, "-s", &size_arg, "-d", &secs_arg, "--warmup", "2s", "--json",
            &json_arg,
        ];
        if pin {
            a.extend(["--client-cpus", &client_cpu]);
        }
        a.extend_from_slice(extra);
        a.push(&target);
        let out = run_echo_bench(&a, Duration::from_secs(secs + 120));
        assert_eq!(out.code(), 0, "{name}: {}\n{}", out.stderr, out.stdout);
        let v = read_json(&json);
        let t = v["targets"][0].clone();
        assert_eq!(t["errors"]["total"], 0, "{name}: {t}");
        assert_eq!(t["errors"]["mismatch"], 0, "{name}: {t}");
        assert!(t["messages"].as_u64().unwrap() > 0, "{name}: {t}");
        t
    };

    let phase1_started = Instant::now();
    let closed = bench("closed", &[]);
    let phase1_secs = phase1_started.elapsed().as_secs_f64();
    let saturation = closed["msgs_per_s"].as_f64().unwrap();
    let rate = format!("{:.0}", saturation * 0.7);
    let open = bench("open", &["--rate", &rate]);

    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let exited = server.stop();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.stderr);
    assert!(!exited.stderr.contains("panicked"), "{}", exited.stderr);
    assert_eq!(exited.count("accepted"), 2 * CONNS as u64);
    assert_eq!(exited.count("closed"), 2 * CONNS as u64);
    exited.assert_zero(&common::ERROR_COUNTERS);
    let measured = closed["messages"].as_u64().unwrap() + open["messages"].as_u64().unwrap();
    let echoed = exited.count("bytes_echoed");
    assert!(
        echoed >= measured * SIZE,
        "bytes_echoed {echoed} < {}",
        measured * SIZE
    );

    // Memory: compare the first and last fifth of the samples taken after the first warmup.
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= 3.0)
        .map(|(_, kib)| *kib)
        .collect();
    assert!(steady.len() >= 4, "too few RSS samples: {samples:?}");
    let fifth = (steady.len() / 5).max(1);
    let mean = |v: &[u64]| v.iter().sum::<u64>() / v.len() as u64;
    let (rss_start, rss_end) = (
        mean(&steady[..fifth]),
        mean(&steady[steady.len() - fifth..]),
    );
    let rss_max = *steady.iter().max().unwrap();
    // A leak of even a few bytes per message would show as tens of MiB over millions of
    // messages; allocator and socket-buffer noise stays far below this bound.
    assert!(
        rss_end <= rss_start + 16 * 1024,
        "server RSS grew from {rss_start} KiB to {rss_end} KiB over the soak: {samples:?}"
    );

    let lat = |t: &serde_json::Value, key: &str| {
        format!(
            "p99 {:.0}us p99.9 {:.0}us",
            t[key]["p99_us"].as_f64().unwrap_or(f64::NAN),
            t[key]["p999_us"].as_f64().unwrap_or(f64::NAN)
        )
    };
    report(&format!(
        "soak {runtime:<15} threads={threads}{}: closed loop {secs}s: {} msgs ({:.0}/s), 0 mismatches, \
         {}; open loop at {rate}/s (70%): {} msgs, achieved {:.3} of the rate, 0 mismatches, \
         {} from intended send time, service {}; server RSS {rss_start} KiB -> {rss_end} KiB \
         (max {rss_max}) over {:.0}s",
        if pin { " pinned" } else { "" },
        closed["messages"],
        saturation,
        lat(&closed, "latency"),
        open["messages"],
        open["achieved_rate_ratio"].as_f64().unwrap_or(f64::NAN),
        lat(&open, "latency"),
        lat(&open, "service_time"),
        phase1_secs * 2.0,
    ));
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
