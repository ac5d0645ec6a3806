//! `echo-bench slo` against servers whose knee is known from their model: the bounds of one,
//! the comparison of two, and the latency–throughput curve it draws.

mod common;

use std::time::Duration;

use common::*;

/// The service time of the test server: capacity μ = 1000 messages/s.
const SERVICE: Duration = Duration::from_millis(1);
/// The slower server of the comparison: capacity 400 messages/s.
const SLOW_SERVICE: Duration = Duration::from_micros(2500);
const SLO_MS: f64 = 50.0;
const TRIAL_S: f64 = 0.5;
const WARMUP_S: f64 = 0.1;

/// Where the search must put the knee, from the server's model (D/D/1: evenly spaced arrivals,
/// one server with a fixed service time s, capacity μ = 1/s), for a trial of warmup w and
/// window d:
/// * below μ no message waits: the latency is s, far below the SLO D, so trials pass;
/// * above μ the server is busy from the start of the load and message k (intended at k/λ)
///   completes at (k+1)/μ, so the latency grows along the trial. The messages completing in
///   the window [w, w + d] are those with k + 1 in [μw, μ(w + d)], and the p99 of their
///   latency is about s + (w + 0.99 d)(1 − μ/λ). It reaches D at λ* = μ / (1 − (D − s)/(w +
///   0.99 d)). (The messages still queued at the deadline add only a few more late ones
///   there.)
///
/// So the highest rate meeting the SLO in such trials lies in [μ, λ*].
fn knee(service: Duration) -> (f64, f64) {
    let s = service.as_secs_f64();
    let mu = 1.0 / s;
    let d = SLO_MS / 1e3;
    let lambda_star = mu / (1.0 - (d - s) / (WARMUP_S + 0.99 * TRIAL_S));
    (mu, lambda_star)
}

/// The searches take turns: two on a 2-CPU machine would measure each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `slo` with the SLO and trial shape of [`knee`], writing `json`; targets and names to add.
fn slo_args(precision: &str, json: &std::path::Path) -> Vec<String> {
    vec![
        "slo".to_string(),
        "-q".into(),
        "--max-latency".into(),
        format!("{SLO_MS}ms"),
        "--precision".into(),
        precision.into(),
        "-c".into(),
        "4".into(),
        "-s".into(),
        "64".into(),
        "-d".into(),
        format!("{}ms", TRIAL_S * 1e3),
        "--warmup".into(),
        format!("{}ms", WARMUP_S * 1e3),
        "--json".into(),
        path_str(json),
    ]
}

fn slo_search(precision: &str, json: &std::path::Path, plot: Option<&std::path::Path>) -> String {
    let server = ServiceServer::start(64, SERVICE);
    let mut args = slo_args(precision, json);
    args.extend(["--max-time", "60s", "--name", "model"].map(String::from));
    args.push(server.target());
    if let Some(p) = plot {
        args.extend(["--plot".into(), path_str(p)]);
    }
    let out = run_with_timeout(&args, Duration::from_secs(90));
    expect_success(&out)
}

#[test]
fn slo_brackets_the_known_knee_and_tightens_with_precision() {
    let _serial = serial();
    let (knee_lo, knee_hi) = knee(SERVICE);
    let dir = tmp();
    let mut widths = Vec::new();
    for (precision, goal) in [("20%", 0.2), ("5%", 0.05)] {
        let json = join(&dir, &format!("slo-{goal}.json"));
        let plot = join(&dir, &format!("slo-{goal}.svg"));
        let text = slo_search(precision, &json, Some(&plot));
        let j = read_json(&json);
        assert_eq!(j["schema_version"], echo_bench::report::SCHEMA_VERSION);
        assert_eq!(j["command"], "slo");
        let slo = &j["slo"];
        assert_eq!(slo["quantile"], 99.0);
        assert_eq!(slo["max_latency_us"], SLO_MS * 1e3);
        let t = &slo["targets"][0];
        let bound = |k: &str| {
            t[k].as_f64()
                .unwrap_or_else(|| panic!("no {k}: the search was\n{text}"))
        };
        let (lo, hi) = (bound("max_rate_lower"), bound("max_rate_upper"));
        // The model's tail is steady: its trials never contradict each other.
        assert!(
            t["contradiction"].is_null(),
            "{}\n{text}",
            t["contradiction"]
        );
        assert_eq!(t["stop_reason"], "precision_reached", "{text}");
        assert!(
            lo <= knee_hi && hi >= knee_lo,
            "bounds [{lo}, {hi}] miss the knee [{knee_lo}, {knee_hi}]:\n{text}"
        );
        let width = t["precision_reached"].as_f64().unwrap();
        assert!((width - (hi - lo) / hi).abs() < 1e-9);
        assert!(width <= goal, "width {width} above the goal {goal}");
        widths.push(width);
        // The closed-loop probe cannot beat the capacity (4 connections keep the server busy
        // unless the round trips are slower than 3 service times), and every trial is in the
        // table and the JSON.
        let probe = t["saturation_probe_msgs_per_s"].as_f64().unwrap();
        assert!(
            probe > 0.0 && probe <= knee_lo * 1.02,
            "closed-loop probe {probe}"
        );
        let trials = t["trials"].as_array().unwrap();
        assert!(trials.len() >= 4);
        for x in trials {
            let verdict = x["verdict"].as_str().unwrap();
            assert!(["pass", "fail", "invalid"].contains(&verdict));
            if verdict == "pass" {
                assert!(x["offered_rate"].as_f64().unwrap() <= knee_hi * 1.001);
                assert!(x["p99_us"].as_f64().unwrap() <= SLO_MS * 1e3 * 1.001);
            }
        }
        assert!(
            text.contains("== trials") && text.contains("offered/s"),
            "{text}"
        );
        assert!(text.contains("== highest rate at p99 ≤ 50000 µs"), "{text}");
        let svg = std::fs::read_to_string(&plot).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("SLO: p99 ≤ 50000 µs"));
        assert!(svg.contains("model p99") && svg.contains("model p99.9"));
    }
    assert!(
        widths[1] < widths[0],
        "a finer precision must give tighter bounds: {widths:?}"
    );
}

/// Two servers of clearly different capacity in one search: each gets bounds on its own knee,
/// and the comparison says the faster sustains the higher rate. At 20% the bounds cannot
/// overlap once each meets its knee interval ([400, 435] and [1000, 1090]): the slower's upper
/// bound is at most 435 / 0.8 ≈ 544, the faster's lower one at least 0.8 × 1000.
#[test]
fn slo_over_two_targets_says_the_faster_sustains_the_higher_rate() {
    let _serial = serial();
    let slow = ServiceServer::start(64, SLOW_SERVICE);
    let fast = ServiceServer::start(64, SERVICE);
    let dir = tmp();
    let json = join(&dir, "two.json");
    let mut args = slo_args("20%", &json);
    args.extend(["--max-time", "40s", "--name", "slow", "--name", "fast"].map(String::from));
    args.extend([slow.target(), fast.target()]);
    let text = expect_success(&run_with_timeout(&args, Duration::from_secs(60)));
    let slo = &read_json(&json)["slo"];

    let mut bounds = Vec::new();
    for (t, name, service) in [(0, "slow", SLOW_SERVICE), (1, "fast", SERVICE)] {
        let t = &slo["targets"][t];
        assert_eq!(t["name"], name);
        assert_eq!(t["stop_reason"], "precision_reached", "{name}:\n{text}");
        let bound = |k: &str| {
            t[k].as_f64()
                .unwrap_or_else(|| panic!("{name}: no {k}: the search was\n{text}"))
        };
        let (lo, hi) = (bound("max_rate_lower"), bound("max_rate_upper"));
        let (knee_lo, knee_hi) = knee(service);
        assert!(
            lo <= knee_hi && hi >= knee_lo,
            "{name}: bounds [{lo}, {hi}] miss the knee [{knee_lo}, {knee_hi}]:\n{text}"
        );
        bounds.push((lo, hi));
    }
    let [(slow_lo, slow_hi), (fast_lo, fast_hi)] = bounds[..] else {
        unreachable!()
    };

    let comparisons = slo["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 1, "{comparisons:?}");
    let c = &comparisons[0];
    assert_eq!(
        (&c["target"], &c["baseline"]),
        (&"fast".into(), &"slow".into())
    );
    assert_eq!(c["outcome"], "higher", "{text}");
    // fast / slow lies between the far ends of the bounds: above 1, and around the models'
    // 1000 / 400.
    let (ratio_lo, ratio_hi) = (
        c["ratio_lo"].as_f64().unwrap(),
        c["ratio_hi"].as_f64().unwrap(),
    );
    assert!((ratio_lo - fast_lo / slow_hi).abs() < 1e-9, "{c}");
    assert!((ratio_hi - fast_hi / slow_lo).abs() < 1e-9, "{c}");
    assert!(1.0 < ratio_lo && ratio_lo <= ratio_hi, "{c}");
    let ((slow_knee_lo, slow_knee_hi), (fast_knee_lo, fast_knee_hi)) =
        (knee(SLOW_SERVICE), knee(SERVICE));
    assert!(
        ratio_lo <= fast_knee_hi / slow_knee_lo && ratio_hi >= fast_knee_lo / slow_knee_hi,
        "{c}"
    );
    let sentence = c["text"].as_str().unwrap();
    assert!(
        sentence.starts_with("fast sustains ")
            && sentence.contains("× slow's rate at p99 ≤ 50000 µs (between ")
            && sentence.ends_with("bounds do not overlap"),
        "{sentence}"
    );
    assert!(text.contains(sentence), "{text}");
}

#[test]
fn slo_says_so_when_time_runs_out_and_refuses_flags_that_do_not_apply() {
    let _serial = serial();
    let server = ServiceServer::start(64, SERVICE);
    let dir = tmp();
    let json = join(&dir, "r.json");
    let out = run(&[
        "slo",
        "-q",
        "--max-latency",
        "50ms",
        "--precision",
        "0.1%",
        "--start-rate",
        "700",
        "--max-time",
        "2s",
        "-c",
        "4",
        "-s",
        "64",
        "-d",
        "300ms",
        "--warmup",
        "50ms",
        "--json",
        &path_str(&json),
        &server.target(),
    ]);
    let text = stdout(&out);
    let t = &read_json(&json)["slo"]["targets"][0];
    assert_eq!(t["stop_reason"], "max_time", "{text}");
    assert_eq!(t["goal_reached"], false);
    assert!(
        text.contains("WARNING: ") && text.contains("stopped by --max-time"),
        "{text}"
    );
    assert!(t["saturation_probe_msgs_per_s"].is_null());
    assert_eq!(t["start_rate"], 700.0);

    for (flag, value) in [
        ("--rate", "1k"),
        ("--rounds", "3"),
        ("--start-at", "1767225600"),
        ("--hgrm", "x.hgrm"),
        ("--hlog", "x.hlog"),
    ] {
        let out = run(&["slo", "--max-latency", "1ms", flag, value, &server.target()]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{flag} does not apply to slo")) && err.lines().count() == 1,
            "{err}"
        );
    }
    let out = run(&["slo", "--max-latency", "1ms"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("slo needs a TARGET or --spawn"));
}
