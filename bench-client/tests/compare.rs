//! `echo-bench compare` of saved reports: the same ratios as the live comparison that wrote
//! them, and a warning for every difference of setup or server features. The servers are the
//! real uring-echo behind a wrapper that prints a `features:` line first, as a server does.

mod common;

use common::*;
use serde_json::Value;

fn server_with_features(features: &str) -> String {
    format!(
        "sh -c 'echo \"features: {features}\" >&2; exec {} --runtime epoll --listen 127.0.0.1:0'",
        uring_echo().display()
    )
}

/// The comparison block of a summary: its `== comparison` line and the table under it.
fn comparison_block(text: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("== comparison"));
    let mut block: Vec<String> = lines.next().map(str::to_string).into_iter().collect();
    block.extend(
        lines
            .take_while(|l| l.starts_with("  "))
            .map(str::to_string),
    );
    block
}

fn write_json(path: &std::path::Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

#[test]
fn compare_of_saved_reports_gives_the_live_ratios_and_warns_of_every_difference() {
    let dir = tmp();
    let live = join(&dir, "live.json");
    let out = run(&[
        "-q",
        "-c",
        "2",
        "-d",
        "200ms",
        "--warmup",
        "50ms",
        "--rounds",
        "3",
        "--spawn",
        &server_with_features("engine=epoll bundle=yes"),
        "--spawn",
        &server_with_features("engine=epoll bundle=no"),
        "--name",
        "a",
        "--name",
        "b",
        "--json",
        &path_str(&live),
    ]);
    let live_text = expect_success(&out);
    let live_block = comparison_block(&live_text);
    assert!(live_block.len() >= 3, "{live_text}");
    let j = read_json(&live);
    assert_eq!(
        j["targets"][0]["server_features"],
        "features: engine=epoll bundle=yes"
    );
    assert_eq!(
        j["targets"][1]["server_features"],
        "features: engine=epoll bundle=no"
    );

    // The file the live run wrote.
    let out = run(&["compare", &path_str(&live)]);
    let text = expect_success(&out);
    assert_eq!(comparison_block(&text), live_block, "{text}");
    assert!(
        text.contains("WARNING: server feature bundle differs: a: bundle=yes; b: bundle=no"),
        "{text}"
    );

    // The same two targets saved in two files, one of them from a different setup.
    let (a, b) = (join(&dir, "a.json"), join(&dir, "b.json"));
    let mut ja = j.clone();
    ja["targets"] = Value::Array(vec![j["targets"][0].clone()]);
    ja["comparison"] = Value::Null;
    let mut jb = j.clone();
    jb["targets"] = Value::Array(vec![j["targets"][1].clone()]);
    jb["comparison"] = Value::Null;
    jb["host"]["kernel"] = "Linux 9.9.9 test".into();
    jb["config"]["connections"] = 3.into();
    write_json(&a, &ja);
    write_json(&b, &jb);
    let out = run(&["compare", &path_str(&a), &path_str(&b)]);
    let text = expect_success(&out);
    assert_eq!(comparison_block(&text), live_block, "{text}");
    let kernel = j["host"]["kernel"].as_str().unwrap();
    for warning in [
        format!("WARNING: the kernel differs: a: '{kernel}'; b: 'Linux 9.9.9 test'"),
        "WARNING: config.connections differs: a: 2; b: 3".to_string(),
        "WARNING: server feature bundle differs: a: bundle=yes; b: bundle=no".to_string(),
    ] {
        assert!(text.contains(&warning), "missing {warning:?} in\n{text}");
    }
    assert!(
        text.contains("note: targets from different files"),
        "{text}"
    );

    // Not a report.
    let junk = join(&dir, "junk.json");
    std::fs::write(&junk, "{\"hello\": 1}").unwrap();
    let out = run(&["compare", &path_str(&junk)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not an echo-bench report"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn compare_of_saved_slo_searches_compares_their_bounds() {
    let dir = tmp();
    let server = ServiceServer::start(64, std::time::Duration::from_millis(1));
    let mut files = Vec::new();
    for (name, rate) in [("slow", "300"), ("fast", "600")] {
        let json = join(&dir, &format!("{name}.json"));
        // One trial per rate and a short budget: the search itself is tested in slo.rs; here
        // the two saved reports only need bounds.
        let out = run(&[
            "slo",
            "-q",
            "--max-latency",
            "50ms",
            "--max-time",
            "8s",
            "--start-rate",
            rate,
            "--trials",
            "1",
            "--passes",
            "1",
            "--precision",
            "40%",
            "-c",
            "4",
            "-s",
            "64",
            "-d",
            "300ms",
            "--warmup",
            "50ms",
            "--name",
            name,
            "--json",
            &path_str(&json),
            &server.target(),
        ]);
        assert!(json.is_file(), "{}", stderr(&out));
        files.push(json);
    }
    let out = run(&["compare", &path_str(&files[0]), &path_str(&files[1])]);
    let text = expect_success(&out);
    assert!(
        text.contains("== highest rate at p99 ≤ 50000 µs") && text.contains("  fast "),
        "{text}"
    );
    assert!(
        text.contains("fast sustains") || text.contains("no difference shown"),
        "{text}"
    );
    // The searches differ in their start rate only, which is not part of the setup.
    assert!(!text.contains("WARNING: config"), "{text}");
    let out = run(&[
        "compare",
        &path_str(&files[0]),
        &path_str(&join(&dir, "none.json")),
    ]);
    assert_eq!(out.status.code(), Some(1));
}
