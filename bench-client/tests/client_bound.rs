//! A client starved of CPU says so: pinned to one CPU that four busy-spinning processes share
//! (started by the test, stopped by PID), echo-bench cannot keep its schedule, and the run is
//! flagged `client_bound` with the evidence, both in the summary and in the JSON; `slo`
//! counts such trials as invalid, neither passing nor failing the server.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use common::*;

/// Busy-spinning `sh` processes pinned to one CPU; killed by PID when dropped.
struct Spinners(Vec<Child>);

impl Spinners {
    fn start(cpu: usize, n: usize) -> Spinners {
        let set = echo_bench::host::cpu_set(&[cpu]);
        let children = (0..n)
            .map(|_| {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                // SAFETY: only sched_setaffinity, async-signal-safe, on a set built before fork.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
                            != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                cmd.spawn().expect("start a spinner")
            })
            .collect();
        Spinners(children)
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The CPU the client is pinned to in these tests: the last one this process may use.
pub fn client_cpu() -> usize {
    *echo_bench::host::allowed_cpus()
        .unwrap()
        .last()
        .expect("at least one CPU")
}

/// The tests take turns: each one starves a CPU on purpose.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn a_client_starved_of_cpu_is_flagged_client_bound() {
    let _serial = serial();
    let server = TestServer::start(Behavior::Echo);
    let cpu = client_cpu();
    let _spinners = Spinners::start(cpu, 4);
    let dir = tmp();
    let json = join(&dir, "r.json");
    let out = run(&[
        "-q",
        "-c",
        "8",
        "--rate",
        "5k",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--client-cpus",
        &cpu.to_string(),
        "--json",
        &path_str(&json),
        &server.target(),
    ]);
    let text = expect_success(&out);
    assert!(text.contains("CLIENT-BOUND"), "{text}");
    let j = read_json(&json);
    assert_eq!(j["client_bound"], true);
    let t = &j["targets"][0];
    assert_eq!(t["client_bound"], true);
    let check = &t["rounds"][0]["client"];
    assert_eq!(check["client_bound"], true);
    let busy = check["threads"][0]["busy"].as_f64().unwrap();
    // The three criteria: a busy thread, sends leaving late, or the threads' own probe ticks
    // running late (a starved client whose pipelines stay full sends nothing "due with room",
    // so its send lateness may be empty while its reaction lateness shows the starvation).
    let p99 = |k: &str| check[k]["p99_us"].as_f64().unwrap_or(0.0);
    let limit = check["lateness_limit_us"].as_f64().unwrap();
    assert!(
        busy >= 0.95 || p99("send_lateness") > limit || p99("wake_lateness") > limit,
        "flagged without evidence: {check}"
    );
    assert!(!check["reasons"].as_array().unwrap().is_empty());
}

#[test]
fn slo_trials_of_a_starved_client_are_invalid_not_failed() {
    let _serial = serial();
    let server = TestServer::start(Behavior::Echo);
    let cpu = client_cpu();
    let _spinners = Spinners::start(cpu, 4);
    let dir = tmp();
    let json = join(&dir, "slo.json");
    // One trial decides a rate, so that several rates are tried within the time budget.
    let out = run(&[
        "slo",
        "-q",
        "--max-latency",
        "20ms",
        "--start-rate",
        "5k",
        "--trials",
        "1",
        "--passes",
        "1",
        "--max-time",
        "4s",
        "-c",
        "8",
        "-d",
        "300ms",
        "--warmup",
        "50ms",
        "--client-cpus",
        &cpu.to_string(),
        "--json",
        &path_str(&json),
        &server.target(),
    ]);
    let text = stdout(&out);
    let t = &read_json(&json)["slo"]["targets"][0];
    let trials = t["trials"].as_array().unwrap();
    let first = &trials[0];
    assert_eq!(first["verdict"], "invalid", "{text}");
    assert_eq!(first["client"]["client_bound"], true);
    assert!(!first["reason"].as_str().unwrap().is_empty());
    assert!(text.contains("INVALID: "), "{text}");
    // An invalid trial never decides a rate as failed: the rates decided by invalid trials
    // are unmeasurable, and the upper bound (if any) is a rate some valid trial failed.
    for r in t["rates"].as_array().unwrap() {
        let at_rate: Vec<&serde_json::Value> = trials
            .iter()
            .filter(|x| x["offered_rate"] == r["rate"])
            .collect();
        let invalid = at_rate.iter().filter(|x| x["verdict"] == "invalid").count();
        let failed = at_rate.iter().filter(|x| x["verdict"] == "fail").count();
        assert_eq!(r["invalid"].as_u64().unwrap() as usize, invalid);
        assert_eq!(r["fails"].as_u64().unwrap() as usize, failed);
        if r["decision"] == "fail" {
            assert!(failed > 0, "{r}");
        }
        if failed == 0 {
            assert_ne!(t["max_rate_upper"], r["rate"], "{text}");
        }
    }
    assert_eq!(t["rates"][0]["decision"], "unmeasurable", "{text}");
    assert!(text.contains("client-bound from "), "{text}");
}
