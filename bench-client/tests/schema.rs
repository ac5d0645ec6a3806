//! Real reports of every kind validate against `schema.json` (JSON Schema draft 2020-12), and
//! the schema is strict enough to notice a field that is missing, renamed or unknown.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn schema() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.json"))
        .expect("schema.json");
    serde_json::from_str(&text).expect("schema.json is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("schema.json is a valid JSON Schema")
}

/// The title is what a reader sees first; the reports themselves are checked against the
/// schema's `const` below, but nothing else would notice a title left behind by a bump.
#[test]
fn the_schema_title_names_the_current_schema_version() {
    let schema = schema();
    let title = schema["title"].as_str().expect("schema.json has a title");
    let version = echo_bench::report::SCHEMA_VERSION;
    assert!(
        title.ends_with(&format!("schema_version {version}")),
        "schema.json's title {title:?} does not name SCHEMA_VERSION {version}"
    );
}

fn errors(v: &jsonschema::Validator, report: &Value) -> Vec<String> {
    v.iter_errors(report)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn assert_valid(v: &jsonschema::Validator, report: &Value, what: &str) {
    let errs = errors(v, report);
    assert!(
        errs.is_empty(),
        "{what} does not match schema.json:\n{errs:#?}"
    );
}

#[test]
fn every_kind_of_report_matches_the_schema() {
    let v = validator();
    let server = TestServer::start(Behavior::Echo);
    let dir = tmp();

    // A closed-loop comparison of two targets over two rounds, with an interval log to merge.
    let (closed, hlog) = (join(&dir, "closed.json"), join(&dir, "r.hlog"));
    let target = server.target();
    expect_success(&run(&[
        "-q",
        "-c",
        "2",
        "-d",
        "200ms",
        "--warmup",
        "50ms",
        "--rounds",
        "2",
        "--name",
        "x",
        "--hlog",
        &path_str(&hlog),
        "--json",
        &path_str(&closed),
        &target,
        &target,
    ]));
    let closed = read_json(&closed);
    assert!(closed["comparison"].is_object());
    assert_valid(&v, &closed, "a closed-loop run");

    // Open loop: service time, send lateness, rate intervals.
    let open = join(&dir, "open.json");
    expect_success(&run(&[
        "-q",
        "-c",
        "2",
        "--rate",
        "1k",
        "--arrival",
        "poisson",
        "-d",
        "300ms",
        "--warmup",
        "50ms",
        "--interval",
        "50ms",
        "--json",
        &path_str(&open),
        &target,
    ]));
    let open = read_json(&open);
    assert!(open["targets"][0]["send_lateness"].is_object());
    assert_valid(&v, &open, "an open-loop run");

    // The default comparison with an engine that could not start (`skipped`).
    let default = join(&dir, "default.json");
    let wrapper = failing_wrapper(dir.path(), &uring_echo(), "uring-multishot");
    let mut cmd = std::process::Command::new(BIN);
    cmd.env("ECHO_BENCH_SERVER", &wrapper).args([
        "-q",
        "-c",
        "2",
        "-d",
        "100ms",
        "--warmup",
        "50ms",
        "--rounds",
        "1",
        "--json",
        &path_str(&default),
    ]);
    expect_success(&run_command(cmd, Duration::from_secs(60)));
    let default = read_json(&default);
    assert_eq!(default["skipped"][0]["name"], "uring-multishot");
    assert_valid(&v, &default, "a default comparison with a skipped engine");

    // merge
    let merged = join(&dir, "merged.json");
    expect_success(&run(&[
        "merge",
        &path_str(&join(&dir, "r.x.hlog")),
        "--json",
        &path_str(&merged),
    ]));
    assert_valid(&v, &read_json(&merged), "a merge");

    // slo, against a server of known capacity
    let model = ServiceServer::start(64, Duration::from_millis(1));
    let slo = join(&dir, "slo.json");
    let _ = run(&[
        "slo",
        "-q",
        "--max-latency",
        "50ms",
        "--max-time",
        "8s",
        "--start-rate",
        "500",
        "--trials",
        "1",
        "--passes",
        "1",
        "--precision",
        "50%",
        "-c",
        "2",
        "-s",
        "64",
        "-d",
        "200ms",
        "--warmup",
        "50ms",
        "--json",
        &path_str(&slo),
        &model.target(),
        &model.target(),
    ]);
    let slo = read_json(&slo);
    assert_eq!(slo["slo"]["comparisons"].as_array().unwrap().len(), 1);
    assert_valid(&v, &slo, "an slo search");

    // The schema notices drift: a missing field, a renamed one, a wrong type, an unknown one.
    let mut missing = closed.clone();
    missing["targets"][0]["rounds"][0]
        .as_object_mut()
        .unwrap()
        .remove("client");
    let mut renamed = open.clone();
    let t = renamed["targets"][0].as_object_mut().unwrap();
    let lateness = t.remove("send_lateness").unwrap();
    t.insert("lateness".into(), lateness);
    let mut wrong_type = slo.clone();
    wrong_type["slo"]["targets"][0]["stop_reason"] = "gave up".into();
    let mut unknown = closed.clone();
    unknown["config"]["turbo"] = true.into();
    let mut unexplained = default.clone();
    unexplained["skipped"][0]
        .as_object_mut()
        .unwrap()
        .remove("reason");
    for (what, report) in [
        ("missing", missing),
        ("renamed", renamed),
        ("wrong type", wrong_type),
        ("unknown", unknown),
        ("missing skip reason", unexplained),
    ] {
        assert!(
            !errors(&v, &report).is_empty(),
            "a report with a {what} field passed the schema"
        );
    }
}
