//! `--spawn` and interleaved rounds against the real uring-echo (built beside echo-bench by
//! `cargo test --workspace`), and the spawned servers' lifetime: stopped on every path out of
//! echo-bench, even SIGKILL.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
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

/// echo-bench loading one spawned epoll server for 30 s, once all its connections are up.
struct Loading {
    echo_bench: Child,
    stderr: BufReader<ChildStderr>,
    server_pid: u64,
}

impl Loading {
    fn start() -> Loading {
        let mut echo_bench = Command::new(BIN)
            .args(["-c", "2", "-d", "30s", "--spawn", &server_cmd("epoll")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(echo_bench.stderr.take().unwrap());
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
        let server_pid: u64 = word_after("pid").parse().unwrap();
        let addr: std::net::SocketAddr = word_after("on").parse().unwrap();
        assert!(pid_alive(server_pid));
        // The load runs once the server has accepted both connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while established_to(addr.port()) < 2 {
            assert!(Instant::now() < deadline, "echo-bench never connected");
            std::thread::sleep(Duration::from_millis(10));
        }
        Loading {
            echo_bench,
            stderr,
            server_pid,
        }
    }

    /// Send `signal` to echo-bench and wait (at most 10 s) for it to end.
    fn signal(&mut self, signal: libc::c_int) -> ExitStatus {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.echo_bench.id() as libc::pid_t, signal) };
        let started = Instant::now();
        loop {
            if let Some(s) = self.echo_bench.try_wait().unwrap() {
                return s;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = self.echo_bench.kill();
                panic!("echo-bench did not stop after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        // A failed test must not leave either process behind.
        let _ = self.echo_bench.kill();
        let _ = self.echo_bench.wait();
        if pid_alive(self.server_pid) {
            // SAFETY: kill(2) on the PID of the server this test had echo-bench start.
            unsafe { libc::kill(self.server_pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

#[test]
fn ctrl_c_stops_the_run_and_the_server() {
    let mut run = Loading::start();
    let status = run.signal(libc::SIGINT);
    assert_eq!(status.code(), Some(130));
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut run.stderr, &mut rest);
    assert!(rest.contains("echo-bench: interrupted"), "{rest}");
    assert!(
        !pid_alive(run.server_pid),
        "server {} survived the interrupt",
        run.server_pid
    );
}

/// PR_SET_PDEATHSIG: no `Drop` runs in a SIGKILLed echo-bench, yet its server goes too.
#[test]
fn a_server_does_not_outlive_a_killed_echo_bench() {
    let mut run = Loading::start();
    let status = run.signal(libc::SIGKILL);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(run.server_pid) {
        assert!(
            Instant::now() < deadline,
            "server {} still running 5 s after echo-bench was killed",
            run.server_pid
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
