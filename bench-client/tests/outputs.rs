//! Output files parse back with HdrHistogram's own formats and agree with the JSON.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::*;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

struct Hgrm {
    rows: Vec<(f64, f64, u64)>,
    mean: f64,
    max: f64,
    total: u64,
}

/// Parse a `.hgrm` file: the table rows and the `#[Mean`/`#[Max`/`#[Buckets` footer.
fn parse_hgrm(text: &str) -> Hgrm {
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert_eq!(
        header,
        "       Value     Percentile TotalCount 1/(1-Percentile)"
    );
    assert_eq!(lines.next(), Some(""));
    let mut rows = Vec::new();
    let (mut mean, mut max, mut total) = (None, None, None);
    for line in lines {
        if let Some(rest) = line.strip_prefix("#[Mean    =") {
            mean = Some(
                rest.split(',')
                    .next()
                    .unwrap()
                    .trim()
                    .parse::<f64>()
                    .unwrap(),
            );
        } else if let Some(rest) = line.strip_prefix("#[Max     =") {
            let (m, t) = rest.split_once(", Total count    =").unwrap();
            max = Some(m.trim().parse::<f64>().unwrap());
            total = Some(t.trim_end_matches(']').trim().parse::<u64>().unwrap());
        } else if line.starts_with("#[Buckets =") {
            assert!(line.ends_with("SubBuckets     =         2048]"), "{line}");
        } else {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() == 4 || f.len() == 3, "bad row {line:?}");
            let q: f64 = f[1].parse().unwrap();
            if f.len() == 4 {
                let inv: f64 = f[3].parse().unwrap();
                assert!(
                    (inv - 1.0 / (1.0 - q)).abs() <= 0.01 * inv.max(1.0),
                    "{line}"
                );
            } else {
                assert_eq!(q, 1.0, "only the last row lacks 1/(1-Percentile): {line}");
            }
            rows.push((f[0].parse().unwrap(), q, f[2].parse().unwrap()));
        }
    }
    Hgrm {
        rows,
        mean: mean.expect("#[Mean line"),
        max: max.expect("#[Max line"),
        total: total.expect("Total count"),
    }
}

fn decode(b64: &str) -> Histogram<u64> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    Deserializer::new().deserialize(&mut &raw[..]).unwrap()
}

/// (untagged intervals, summed untagged count, summed `service` count, saw StartTime, saw BaseTime)
fn read_hlog(path: &Path) -> (usize, u64, u64, bool, bool) {
    let bytes = std::fs::read(path).unwrap();
    let (mut n, mut count, mut service, mut start, mut base) = (0, 0, 0, false, false);
    for entry in IntervalLogIterator::new(&bytes) {
        match entry.expect("hlog parses") {
            LogEntry::StartTime(_) => start = true,
            LogEntry::BaseTime(_) => base = true,
            LogEntry::Interval(ilh) => {
                let h = decode(ilh.encoded_histogram());
                match ilh.tag() {
                    None => {
                        n += 1;
                        count += h.len();
                    }
                    Some(t) if t.as_str() == "service" => service += h.len(),
                    Some(t) => panic!("unexpected tag {}", t.as_str()),
                }
            }
        }
    }
    (n, count, service, start, base)
}

#[test]
fn json_hgrm_and_hlog_agree() {
    let server = TestServer::start(Behavior::Echo);
    let dir = tmp();
    let (json, hgrm, hlog) = (
        join(&dir, "r.json"),
        join(&dir, "r.hgrm"),
        join(&dir, "r.hlog"),
    );
    let out = run(&[
        "-q",
        "-c",
        "4",
        "-d",
        "1s",
        "--warmup",
        "100ms",
        "--label",
        "unit-test",
        "--json",
        &path_str(&json),
        "--hgrm",
        &path_str(&hgrm),
        "--hlog",
        &path_str(&hlog),
        "--interval",
        "200ms",
        &server.target(),
    ]);
    let text = expect_success(&out);
    let j = read_json(&json);
    assert_eq!(j["schema_version"], echo_bench::report::SCHEMA_VERSION);
    assert_eq!(j["label"], "unit-test");
    assert_eq!(j["tool"]["name"], "echo-bench");
    assert!(j["host"]["kernel"].as_str().unwrap().starts_with("Linux"));
    assert!(j["host"]["nproc"].as_u64().unwrap() >= 1);
    assert!(j["start_time"].as_str().unwrap().ends_with('Z'));
    assert!(j["command_line"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--hgrm"));
    assert_eq!(j["config"]["histogram"]["unit"], "ns");
    let t = &j["targets"][0];
    let count = t["messages"].as_u64().unwrap();
    assert!(count > 100);
    let lat = &t["latency"];
    assert_eq!(lat["count"].as_u64().unwrap(), count);
    assert!(t["service_time"].is_null(), "closed loop has one histogram");
    // the embedded histogram is the recorded one
    let h = decode(lat["histogram"].as_str().unwrap());
    assert_eq!(h.len(), count);
    assert_eq!(h.max() as f64 / 1000.0, lat["max_us"].as_f64().unwrap());
    // the text summary shows the same numbers
    assert!(
        text.contains(&format!("messages      {count} in 1.000 s")),
        "{text}"
    );

    // .hgrm (milliseconds)
    let g = parse_hgrm(&std::fs::read_to_string(&hgrm).unwrap());
    assert_eq!(g.total, count);
    assert!((g.max * 1000.0 - lat["max_us"].as_f64().unwrap()).abs() <= 0.5 + 1e-9);
    assert!((g.mean * 1000.0 - lat["mean_us"].as_f64().unwrap()).abs() <= 0.5 + 1e-9);
    let median_row = g.rows.iter().find(|r| r.1 == 0.5).expect("a 50% row");
    assert!((median_row.0 * 1000.0 - lat["p50_us"].as_f64().unwrap()).abs() <= 0.5 + 1e-9);
    assert_eq!(g.rows.last().unwrap().2, count);
    assert!(g
        .rows
        .windows(2)
        .all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1 && w[0].2 <= w[1].2));

    // .hlog: one untagged interval per 200 ms, summing to the JSON count
    let (n, hlog_count, service, start, base) = read_hlog(&hlog);
    assert_eq!(n, 5);
    assert_eq!(hlog_count, count);
    assert_eq!(service, 0);
    assert!(start && base, "StartTime and BaseTime headers");
    let text = std::fs::read_to_string(&hlog).unwrap();
    assert!(text.contains("\n\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n"));
    assert!(
        text.lines().any(|l| l.starts_with("0.000,0.200,")),
        "{text}"
    );
}

#[test]
fn open_loop_json_and_hlog_carry_both_histograms() {
    let server = TestServer::start(Behavior::Echo);
    let dir = tmp();
    let (json, hlog, plot) = (
        join(&dir, "r.json"),
        join(&dir, "r.hlog"),
        join(&dir, "r.svg"),
    );
    let out = run(&[
        "-q",
        "-c",
        "4",
        "--rate",
        "2k",
        "--arrival",
        "poisson",
        "-d",
        "600ms",
        "--warmup",
        "100ms",
        "--json",
        &path_str(&json),
        "--hlog",
        &path_str(&hlog),
        "--plot",
        &path_str(&plot),
        &server.target(),
    ]);
    let text = expect_success(&out);
    assert!(text.contains("(from intended send time)") && text.contains("(from actual send time)"));
    let j = read_json(&json);
    assert_eq!(j["config"]["mode"], "open");
    assert_eq!(j["config"]["arrival"], "poisson");
    let t = &j["targets"][0];
    assert_eq!(t["target_rate"], 2000.0);
    let count = t["messages"].as_u64().unwrap();
    let svc = decode(t["service_time"]["histogram"].as_str().unwrap());
    let lat = decode(t["latency"]["histogram"].as_str().unwrap());
    assert_eq!(svc.len(), count);
    assert_eq!(lat.len(), count);
    // intended-time latency can only be larger than service time
    assert!(lat.value_at_quantile(0.5) >= svc.value_at_quantile(0.5));
    let (_, hlog_count, service, _, _) = read_hlog(&hlog);
    assert_eq!(hlog_count, count);
    assert_eq!(service, count);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("service time"));
}

fn hlog_run(server: &TestServer, path: &Path, json: &Path) -> u64 {
    let out = run(&[
        "-q",
        "-c",
        "2",
        "-d",
        "400ms",
        "--warmup",
        "0",
        "--hlog",
        &path_str(path),
        "--json",
        &path_str(json),
        &server.target(),
    ]);
    expect_success(&out);
    read_json(json)["targets"][0]["messages"].as_u64().unwrap()
}

#[test]
fn merge_sums_logs_and_rejects_damaged_ones() {
    let server = TestServer::start(Behavior::Echo);
    let dir = tmp();
    let (a, b) = (join(&dir, "a.hlog"), join(&dir, "b.hlog"));
    let ca = hlog_run(&server, &a, &join(&dir, "a.json"));
    let cb = hlog_run(&server, &b, &join(&dir, "b.json"));
    let (mj, mh) = (join(&dir, "m.json"), join(&dir, "m.hgrm"));
    let out = run(&[
        "merge",
        &path_str(&a),
        &path_str(&b),
        "--json",
        &path_str(&mj),
        "--hgrm",
        &path_str(&mh),
    ]);
    let text = expect_success(&out);
    assert!(
        text.contains(&format!("merged: {} values from 2 file(s)", ca + cb)),
        "{text}"
    );
    let m = read_json(&mj);
    assert_eq!(m["latency"]["count"].as_u64().unwrap(), ca + cb);
    assert_eq!(m["files"][0]["count"].as_u64().unwrap(), ca);
    assert_eq!(
        parse_hgrm(&std::fs::read_to_string(&mh).unwrap()).total,
        ca + cb
    );

    // Truncated in the middle of an interval line.
    let bytes = std::fs::read(&a).unwrap();
    let truncated = join(&dir, "t.hlog");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let out = run(&["merge", &path_str(&truncated)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a valid HdrHistogram interval log"),
        "{}",
        stderr(&out)
    );

    // Only the header survived.
    let header_only: Vec<u8> = String::from_utf8(bytes.clone())
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('#') || l.starts_with('"'))
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect();
    let h = join(&dir, "h.hlog");
    std::fs::write(&h, header_only).unwrap();
    let out = run(&["merge", &path_str(&h)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no interval histograms found"),
        "{}",
        stderr(&out)
    );

    // A corrupted histogram payload.
    let text = String::from_utf8(bytes).unwrap();
    let corrupted: String = text
        .lines()
        .map(|l| {
            if l.starts_with("0.000,") {
                let (head, payload) = l.rsplit_once(',').unwrap();
                format!(
                    "{head},{}\n",
                    payload.replace(|c: char| c.is_ascii_alphabetic(), "A")
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let c = join(&dir, "c.hlog");
    std::fs::write(&c, corrupted).unwrap();
    let out = run(&["merge", &path_str(&c)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1);
    assert!(stderr(&out).contains("does not decode"), "{}", stderr(&out));

    // Not a log at all, and a missing file.
    let out = run(&["merge", &path_str(&join(&dir, "a.json"))]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["merge", &path_str(&join(&dir, "missing.hlog"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn start_at_fixes_the_measured_window() {
    let server = TestServer::start(Behavior::Echo);
    let dir = tmp();
    let json = join(&dir, "r.json");
    let start = std::time::SystemTime::now() + std::time::Duration::from_millis(1500);
    let secs = start
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let began = std::time::Instant::now();
    let out = run(&[
        "-q",
        "-c",
        "2",
        "-d",
        "300ms",
        "--warmup",
        "100ms",
        "--start-at",
        &format!("{secs:.3}"),
        "--json",
        &path_str(&json),
        &server.target(),
    ]);
    expect_success(&out);
    // it waited for the start time, then ran the 300 ms window
    assert!(
        began.elapsed() >= std::time::Duration::from_millis(1700),
        "{:?}",
        began.elapsed()
    );
    let j = read_json(&json);
    let started = humantime::parse_rfc3339(j["start_time"].as_str().unwrap()).unwrap();
    let diff = match started.duration_since(start) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        diff < std::time::Duration::from_millis(5),
        "window started {diff:?} away from --start-at"
    );

    // A start time in the past is refused.
    let out = run(&["-q", "--start-at", "1000000000", &server.target()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already in the past"),
        "{}",
        stderr(&out)
    );
}
