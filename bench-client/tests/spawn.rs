//! `--spawn`, interleaved rounds and the default comparison, against the real uring-echo
//! (built beside echo-bench by `cargo test --workspace`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn server_cmd(runtime: &str) -> String {
    format!(
        "{} --runtime {runtime} --listen 127.0.0.1:0",
        uring_echo().display()
    )
}

#[test]
fn spawned_servers_are_compared_over_interleaved_rounds_and_stopped() {
    let dir = tmp();
    let json = join(&dir, "r.json");
    let hgrm = join(&dir, "r.hgrm");
    let out = run(&[
        "-q",
        "-c",
        "4",
        "-d",
        "300ms",
        "--warmup",
        "100ms",
        "--rounds",
        "3",
        "--spawn",
        &server_cmd("uring"),
        "--spawn",
        &server_cmd("epoll"),
        "--name",
        "uring",
        "--name",
        "epoll",
        "--json",
        &path_str(&json),
        "--hgrm",
        &path_str(&hgrm),
    ]);
    let text = expect_success(&out);
    assert!(
        text.contains("== comparison over 3 interleaved round(s); ratios vs uring"),
        "{text}"
    );
    let j = read_json(&json);
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        assert_eq!(t["rounds"].as_array().unwrap().len(), 3);
        assert_eq!(t["errors"]["total"], 0);
        assert!(
            t["server_cpu_ns_per_msg"].as_f64().unwrap() > 0.0,
            "server CPU per message"
        );
        let summary = t["server_summary"].as_str().expect("server summary line");
        assert!(summary.starts_with("summary: accepted="), "{summary}");
        assert!(summary.contains("errors_reset=0"), "clean close: {summary}");
        let pid = t["server_pid"].as_u64().unwrap();
        assert!(
            !pid_alive(pid),
            "server {pid} still running after echo-bench exited"
        );
    }
    // Each round ran both targets, in some order.
    for round in 1..=3 {
        let mut positions: Vec<u64> = targets
            .iter()
            .map(|t| {
                let r = t["rounds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["round"] == round)
                    .unwrap();
                r["position"].as_u64().unwrap()
            })
            .collect();
        positions.sort_unstable();
        assert_eq!(positions, [1, 2]);
    }
    let cmp = &j["comparison"];
    assert_eq!(cmp["baseline"], "uring");
    let row = &cmp["rows"][1];
    assert_eq!(row["name"], "epoll");
    assert_eq!(row["msgs_per_s"]["n"], 3);
    assert_eq!(row["msgs_per_s_ratio"]["n"], 3);
    let sig = row["msgs_per_s_ratio"]["significance"].as_str().unwrap();
    assert!(sig == "significant" || sig == "not_significant", "{sig}");
    assert!(row["server_cpu_ratio"]["median"].as_f64().unwrap() > 0.0);
    // One .hgrm per target.
    assert!(join(&dir, "r.uring.hgrm").is_file());
    assert!(join(&dir, "r.epoll.hgrm").is_file());
}

#[test]
fn default_comparison_spawns_uring_and_epoll_from_beside_the_binary() {
    let _ = uring_echo();
    let dir = tmp();
    let json = join(&dir, "r.json");
    // Shortened with flags; without them this is 5 rounds of 2 s.
    let out = run(&[
        "-q",
        "-c",
        "4",
        "-d",
        "200ms",
        "--warmup",
        "50ms",
        "--rounds",
        "1",
        "--json",
        &path_str(&json),
    ]);
    let text = expect_success(&out);
    assert!(
        text.contains("== uring (") && text.contains("== epoll ("),
        "{text}"
    );
    assert!(text.contains("comparison"), "{text}");
    let j = read_json(&json);
    assert_eq!(j["config"]["default_comparison"], true);
    let cmd = j["targets"][0]["spawn_command"].as_str().unwrap();
    assert!(
        cmd.contains("uring-echo") && cmd.contains("--runtime uring"),
        "{cmd}"
    );
    if j["host"]["allowed_cpus"].as_array().unwrap().len() >= 2 {
        assert_eq!(j["pinning"]["server_cpus"].as_array().unwrap().len(), 1);
        assert_eq!(j["pinning"]["client_cpus"].as_array().unwrap().len(), 1);
        assert_ne!(j["pinning"]["server_cpus"], j["pinning"]["client_cpus"]);
    }
}

#[test]
fn default_comparison_without_uring_echo_says_how_to_build_it() {
    let dir = tmp();
    let lonely = join(&dir, "echo-bench");
    std::fs::copy(BIN, &lonely).unwrap();
    let out = Command::new(&lonely).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cargo build --release --workspace && target/release/echo-bench"),
        "{err}"
    );
}

#[test]
fn a_server_that_never_gets_ready_is_killed_and_reported() {
    let out = run(&["--spawn", "sleep 30", "--spawn-timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("did not print `listening on <addr>` within 300ms"),
        "{err}"
    );
    let out = run(&[
        "--spawn",
        &format!("{} --runtime nonsense", uring_echo().display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("exited with status"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ctrl_c_stops_the_run_and_the_server() {
    let mut child = Command::new(BIN)
        .args(["-c", "2", "-d", "30s", "--spawn", &server_cmd("epoll")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    // "started spawn1: pid N listening on ADDR"
    let word_after = |key: &str| {
        line.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    let pid: u64 = word_after("pid").parse().unwrap();
    let addr: std::net::SocketAddr = word_after("on").parse().unwrap();
    assert!(pid_alive(pid));
    // The load runs once the server has accepted both connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while established_to(addr.port()) < 2 {
        assert!(Instant::now() < deadline, "echo-bench never connected");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("echo-bench did not stop after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    assert!(rest.contains("echo-bench: interrupted"), "{rest}");
    assert!(!pid_alive(pid), "server {pid} survived the interrupt");
}
