//! The default comparison (`echo-bench` with no target): the three engines of the uring-echo
//! found beside echo-bench (each server's own `features:` line in the report), its verdict
//! lines, and what it does when an engine cannot start.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

const ENGINES: [&str; 3] = ["epoll", "uring", "uring-multishot"];

/// Shortened with flags; without them this is 9 rounds of 800 ms per engine.
fn short(json: &str) -> Vec<String> {
    [
        "-q", "-c", "4", "-d", "150ms", "--warmup", "50ms", "--rounds", "3", "--json", json,
    ]
    .map(String::from)
    .to_vec()
}

fn echo_bench(args: &[String]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("ECHO_BENCH_SERVER");
    cmd
}

fn run_default(cmd: Command) -> Output {
    run_command(cmd, Duration::from_secs(60))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// The `R× OTHER [LO–HI]` a verdict line prints for `other`.
fn printed_ratio(line: &str, other: &str) -> Option<[f64; 3]> {
    let at = line.find(&format!("× {other} ["))?;
    let median = line[..at].rsplit([' ', '(']).next()?.parse().ok()?;
    let rest = &line[at + format!("× {other} [").len()..];
    let (lo, rest) = rest.split_once('–')?;
    let hi = rest.split(']').next()?;
    Some([median, lo.parse().ok()?, hi.parse().ok()?])
}

/// The last two stdout lines are the verdict: each names an engine that leads, and prints its
/// ratio against every other engine as the JSON's comparison (baseline epoll) has it.
fn assert_verdict(text: &str, j: &Value) {
    let lines: Vec<&str> = text.lines().collect();
    let [cpu, rate] = lines[lines.len() - 2..] else {
        panic!("{text}")
    };
    let rows = j["comparison"]["rows"].as_array().unwrap();
    let engines: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    let check = |line: &str, what: &str, ratio: &str| {
        let forms = |e: &str| {
            [
                format!("Fastest by {what}: {e}, "),
                format!("Fastest by {what}: {e} or "),
                format!("By {what}: no engine is faster than the others beyond the noise: {e} "),
                format!("By {what}: {e} leads ("),
            ]
        };
        let leader = *engines
            .iter()
            .find(|e| forms(e).iter().any(|f| line.starts_with(f.as_str())))
            .unwrap_or_else(|| panic!("no engine leads in {line:?}"));
        for row in rows.iter().filter(|r| r["name"] != leader) {
            let other = row["name"].as_str().unwrap();
            let printed = printed_ratio(line, other)
                .unwrap_or_else(|| panic!("no ratio against {other} in {line:?}"));
            // Three rounds: the spread is [min, max] and a median of per-round ratios inverts
            // exactly, so leader/epoll is the JSON's row, and epoll/other its inverse.
            let (row, invert) = if leader == "epoll" {
                (row, true)
            } else if other == "epoll" {
                (rows.iter().find(|r| r["name"] == leader).unwrap(), false)
            } else {
                continue;
            };
            let r = &row[ratio];
            let [m, lo, hi] = ["median", "lo", "hi"].map(|k| r[k].as_f64().unwrap());
            let expected = if invert {
                [1.0 / m, 1.0 / hi, 1.0 / lo]
            } else {
                [m, lo, hi]
            };
            for (p, e) in printed.iter().zip(expected) {
                assert!(
                    (p - e).abs() <= 0.0051,
                    "{printed:?} vs {expected:?} in {line:?}"
                );
            }
        }
    };
    check(cpu, "server CPU per message", "server_cpu_ratio");
    if j["client_bound"] == true {
        assert!(
            rate.starts_with("By messages/s: no verdict — the client was the bottleneck in "),
            "{text}"
        );
    } else {
        check(rate, "messages/s", "msgs_per_s_ratio");
    }
}

#[test]
fn default_comparison_spawns_the_three_engines_from_beside_the_binary() {
    let _ = uring_echo();
    let dir = tmp();
    let json = join(&dir, "r.json");
    let out = run_default(echo_bench(&short(&path_str(&json))));
    let text = expect_success(&out);
    let j = read_json(&json);
    assert_eq!(j["config"]["default_comparison"], true);
    assert_eq!(j["comparison"]["baseline"], "epoll");
    // An engine this kernel cannot run is left out, with the server's reason; the others run.
    let mut all = names(&j["targets"]);
    all.extend(names(&j["skipped"]));
    all.sort();
    assert_eq!(all, ENGINES, "{text}");
    for s in j["skipped"].as_array().unwrap() {
        eprintln!("SKIPPED engine on this kernel: {s}");
        assert!(
            s["reason"]
                .as_str()
                .unwrap()
                .contains("--runtime epoll works without"),
            "{s}"
        );
    }
    for t in j["targets"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let cmd = t["spawn_command"].as_str().unwrap();
        assert!(
            cmd.contains("/uring-echo --runtime ")
                && cmd.contains(&format!(" --runtime {name} --listen 127.0.0.1:0")),
            "{cmd}"
        );
        assert!(text.contains(&format!("== {name} (")), "{text}");
        // The real server's own features line, read from its stderr, names its engine.
        let features = t["server_features"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no server_features in {t}"));
        assert!(
            features.starts_with(&format!("features: runtime={name} kernel=")),
            "{name}: {features}"
        );
    }
    assert!(text.contains("== comparison over 3 interleaved round(s); ratios vs epoll"));
    if j["host"]["allowed_cpus"].as_array().unwrap().len() >= 2 {
        assert_eq!(j["pinning"]["server_cpus"].as_array().unwrap().len(), 1);
        assert_eq!(j["pinning"]["client_cpus"].as_array().unwrap().len(), 1);
        assert_ne!(j["pinning"]["server_cpus"], j["pinning"]["client_cpus"]);
    }
    assert_verdict(&text, &j);
}

#[test]
fn an_engine_that_cannot_start_is_left_out_and_the_others_compared() {
    let dir = tmp();
    let wrapper = failing_wrapper(dir.path(), &uring_echo(), "uring-multishot");
    let json = join(&dir, "r.json");
    let mut cmd = echo_bench(&short(&path_str(&json)));
    cmd.env("ECHO_BENCH_SERVER", &wrapper);
    let out = run_default(cmd);
    let text = expect_success(&out);
    let j = read_json(&json);
    assert_eq!(names(&j["targets"]), ["epoll", "uring"]);
    assert_eq!(j["exit_code"], 0);
    let skipped = j["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["name"], "uring-multishot");
    assert_eq!(
        skipped[0]["reason"], WRAPPER_FAILURE,
        "the server's last line"
    );
    let cmd = skipped[0]["spawn_command"].as_str().unwrap();
    assert!(
        cmd.starts_with(&path_str(&wrapper)) && cmd.contains("--runtime uring-multishot"),
        "{cmd}"
    );
    // Said at once on stderr, and again before the verdict on stdout.
    let line = format!("uring-multishot could not start: {WRAPPER_FAILURE}");
    assert_eq!(
        stderr(&out).trim_end(),
        format!("echo-bench: {line}; comparing the others without it")
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[lines.len() - 3],
        format!("Not compared: {line}"),
        "{text}"
    );
    assert_verdict(&text, &j);
    assert!(!text.contains("== uring-multishot"), "{text}");

    // An explicit --spawn that fails still fails the run.
    let spawn = |runtime: &str| {
        format!(
            "{} --runtime {runtime} --listen 127.0.0.1:0",
            wrapper.display()
        )
    };
    let out = run(&[
        "-q",
        "-d",
        "100ms",
        "--spawn",
        &spawn("epoll"),
        "--spawn",
        &spawn("uring-multishot"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("exited with status 1 before printing `listening on <addr>`")
            && err.contains(WRAPPER_FAILURE),
        "{err}"
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn without_io_uring_the_default_comparison_names_the_engines_that_could_not_start() {
    let _ = uring_echo();
    let dir = tmp();
    let json = join(&dir, "r.json");
    let mut args = short(&path_str(&json));
    args.remove(0); // not quiet: the started line gives the epoll server's PID
    let mut cmd = echo_bench(&args);
    let filter = block_io_uring_setup(libc::ENOSYS);
    // SAFETY: the filter installs a seccomp program with async-signal-safe prctl calls only.
    unsafe { cmd.pre_exec(move || filter()) };
    let out = run_default(cmd);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let [started, error] = lines[..] else {
        panic!("{err}")
    };
    // The real server's own line, for each io_uring engine.
    for engine in ["uring", "uring-multishot"] {
        let why = format!(" {engine} could not start: uring-echo: error: ");
        assert!(error.contains(&why), "{error}");
    }
    assert_eq!(
        error.matches("io_uring_setup failed: ENOSYS: ").count(),
        2,
        "{error}"
    );
    assert!(
        error.starts_with(
            "echo-bench: the default comparison needs two engines, but only epoll started: "
        ) && error.contains("--runtime epoll works without io_uring"),
        "{error}"
    );
    let pid: u64 = started
        .strip_prefix("started epoll: pid ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{started}"));
    assert!(
        !pid_alive(pid),
        "the epoll server {pid} outlived echo-bench"
    );
    assert!(
        !json.exists(),
        "no report for a comparison that did not run"
    );
}

#[test]
fn default_comparison_without_uring_echo_says_how_to_build_it() {
    let dir = tmp();
    let lonely = join(&dir, "echo-bench");
    std::fs::copy(BIN, &lonely).unwrap();
    let out = Command::new(&lonely)
        .env_remove("ECHO_BENCH_SERVER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cargo build --release --workspace && target/release/echo-bench"),
        "{err}"
    );
    // The developers' override must name a file too.
    let out = Command::new(BIN)
        .env("ECHO_BENCH_SERVER", join(&dir, "nonexistent"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(
        err.trim_end(),
        format!(
            "echo-bench: ECHO_BENCH_SERVER={} names no file (the default comparison runs that server)",
            join(&dir, "nonexistent").display()
        )
    );
}
