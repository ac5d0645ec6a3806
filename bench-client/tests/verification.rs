//! Every echoed byte is verified: broken servers make echo-bench exit 1 and say where.

mod common;

use common::*;

fn bench_args<'a>(target: &'a str, json: &'a str) -> Vec<&'a str> {
    vec![
        "-q", "-c", "2", "-d", "500ms", "--warmup", "0", "--json", json, target,
    ]
}

#[test]
fn a_corrupted_byte_is_reported_with_connection_seq_and_offset() {
    // Byte 1000 of each stream: with 128-byte messages that is message 7, offset 104.
    let server = TestServer::start(Behavior::CorruptAt(1000));
    let dir = tmp();
    let json = path_str(&join(&dir, "r.json"));
    let out = run(&bench_args(&server.target(), &json));
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    for conn in 0..2 {
        let expected = format!("connection {conn}: mismatch in message seq 7 at byte offset 104");
        assert!(text.contains(&expected), "missing '{expected}' in:\n{text}");
    }
    assert!(text.contains("errors        2 (mismatch 2)"), "{text}");
    assert!(stderr(&out).contains("mismatch in message seq 7 at byte offset 104"));
    let j = read_json(std::path::Path::new(&json));
    let t = &j["targets"][0];
    assert_eq!(t["errors"]["mismatch"], 2);
    assert_eq!(t["errors"]["total"], 2);
    assert_eq!(j["exit_code"], 1);
    // the 7 messages before the corruption were fine and recorded
    assert_eq!(t["messages"], 14);
}

#[test]
fn a_server_closing_at_a_message_boundary_is_an_eof_error() {
    let server = TestServer::start(Behavior::CloseAfter(3 * 128));
    let dir = tmp();
    let json = path_str(&join(&dir, "r.json"));
    let out = run(&bench_args(&server.target(), &json));
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("connection 0: unexpected EOF: server closed the connection with 1 message(s) outstanding (next expected seq 3)"),
        "{text}"
    );
    assert!(text.contains("(eof 2)"), "{text}");
    let j = read_json(std::path::Path::new(&json));
    assert_eq!(j["targets"][0]["errors"]["eof"], 2);
}

#[test]
fn a_server_closing_inside_a_message_is_a_short_read() {
    let server = TestServer::start(Behavior::CloseAfter(2 * 128 + 44));
    let dir = tmp();
    let json = path_str(&join(&dir, "r.json"));
    let out = run(&bench_args(&server.target(), &json));
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(
            "short read: server closed the connection after 44 of 128 bytes of message seq 2"
        ),
        "{text}"
    );
    let j = read_json(std::path::Path::new(&json));
    assert_eq!(j["targets"][0]["errors"]["short"], 2);
}

#[test]
fn a_reset_connection_is_an_io_error() {
    let server = TestServer::start(Behavior::ResetAfter(5 * 128));
    let dir = tmp();
    let json = path_str(&join(&dir, "r.json"));
    let out = run(&bench_args(&server.target(), &json));
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("Connection reset by peer"), "{text}");
    let j = read_json(std::path::Path::new(&json));
    assert_eq!(j["targets"][0]["errors"]["io"], 2);
}

#[test]
fn a_run_whose_connections_all_failed_ends_early_with_the_window_cut() {
    // Every connection is reset after 5 messages: the run must not idle until the end of a
    // 60 s --duration, and its rates must be over the time that had load, not over 60 s.
    let server = TestServer::start(Behavior::ResetAfter(5 * 128));
    let dir = tmp();
    let json = path_str(&join(&dir, "r.json"));
    let args: Vec<String> = [
        "-q", "-c", "2", "-d", "60s", "--warmup", "0", "--json", &json,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([server.target()])
    .collect();
    let started = std::time::Instant::now();
    let out = run_with_timeout(&args, std::time::Duration::from_secs(30));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(every connection failed, so the run ended early); first: "),
        "{}",
        stderr(&out)
    );
    assert!(took.as_secs() < 30, "took {took:?}");
    let j = read_json(std::path::Path::new(&json));
    let t = &j["targets"][0];
    assert_eq!(t["errors"]["io"], 2);
    let duration = t["rounds"][0]["duration_s"].as_f64().unwrap();
    assert!(duration < 30.0, "window not cut: {duration} s");
    let rate = t["rounds"][0]["msgs_per_s"].as_f64().unwrap();
    let messages = t["rounds"][0]["messages"].as_f64().unwrap();
    assert!(
        (rate - messages / duration).abs() <= 1e-6 * rate.max(1.0),
        "rate {rate} is not messages / window ({messages} / {duration})"
    );
}

#[test]
fn a_correct_server_passes_with_large_and_odd_sized_messages() {
    let server = TestServer::start(Behavior::Echo);
    for size in ["12", "1000", "100KiB"] {
        let out = run(&[
            "-q",
            "-c",
            "3",
            "--pipeline",
            "3",
            "-s",
            size,
            "-d",
            "300ms",
            "--warmup",
            "0",
            &server.target(),
        ]);
        let text = expect_success(&out);
        assert!(text.contains("errors        0"), "{text}");
    }
}

#[test]
fn a_refused_connection_is_one_line_and_exit_1() {
    // Find a port nobody listens on: bind, read the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = format!("127.0.0.1:{port}");
    let out = run(&["-d", "1s", &target]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(
        err,
        format!("echo-bench: cannot connect to {target}: Connection refused (os error 111)\n")
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn ipv6_targets_in_brackets_work() {
    let server = TestServer::start_on("[::1]:0", Behavior::Echo);
    let target = server.target();
    assert!(target.starts_with("[::1]:"), "{target}");
    let out = run(&["-q", "-c", "2", "-d", "200ms", "--warmup", "0", &target]);
    let text = expect_success(&out);
    assert!(text.contains(&format!("== {target}")), "{text}");
    assert!(text.contains("errors        0"), "{text}");
}

#[test]
fn bytes_nobody_sent_are_unsolicited() {
    // Open loop at 2 msgs/s: message 0 is echoed at once, then the server sends 5 more bytes
    // 100 ms later, while nothing is outstanding (message 1 is due at 500 ms).
    let server = TestServer::start(Behavior::ExtraAfter {
        bytes: 128,
        delay: std::time::Duration::from_millis(100),
    });
    let dir = tmp();
    let json = path_str(&join(&dir, "r.json"));
    let out = run(&[
        "-q",
        "-c",
        "1",
        "--rate",
        "2",
        "-d",
        "1s",
        "--warmup",
        "0",
        "--json",
        &json,
        &server.target(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("connection 0: server sent 5 byte(s) that were never sent (from message seq 1 offset 0)"),
        "{text}"
    );
    let j = read_json(std::path::Path::new(&json));
    assert_eq!(j["targets"][0]["errors"]["unsolicited"], 1);
}
