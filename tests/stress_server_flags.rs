//! Absurd values for the server's flags: each is one clear stderr line with the documented exit
//! code (2 for syntax, from clap; 1 for meaning, from `Config`), before anything is bound.
//! The fuzzing of the same parsers is in stress_fuzz.rs; this checks the real binary.

mod common;

use common::{assert_one_line_error, run_to_exit};

#[test]
fn absurd_server_flags_are_one_line_errors() {
    let meaning: &[(&[&str], &str)] = &[
        (&["--threads", "0"], "--threads"),
        (&["--threads", "100000"], "--threads"),
        (&["--backlog", "0"], "--backlog"),
        (&["--backlog", "4294967295"], "--backlog"),
        (&["--buffer-size", "0"], "--buffer-size"),
        (&["--buffer-size", "1GiB"], "--buffer-size"),
        (&["--ring-entries", "0"], "--ring-entries"),
        (&["--ring-entries", "4000000"], "--ring-entries"),
        (&["--listen", "127.0.0.1:70000"], "--listen"),
        (&["--listen", ""], "--listen"),
        (&["--cpus", "1000"], "CPU 1000"),
        (&["--stats-interval", "1ns"], "--stats-interval"),
        (&["--stats-interval", "0.000001"], "--stats-interval"),
    ];
    for (flags, needle) in meaning {
        let exited = run_to_exit(flags, &[]);
        assert_one_line_error(&exited, 1, &[needle]);
    }
    for flags in [
        &["--threads", "-1"][..],
        &["--threads", "99999999999999999999999"],
        &["--buffer-size", "16 parsecs"],
        &["--buffer-size", "99999999999999999999G"],
        &["--idle-timeout", "soon"],
        &["--idle-timeout", "1e300"],
        &["--idle-timeout", "-1"],
        &["--drain-timeout", "NaN"],
        &["--stats-interval", "inf"],
        &["--cpus", "0-100000"],
        &["--cpus", "3-1"],
        &["--max-connections", "-5"],
        &["--sqpoll", "99999999999"],
        &["--runtime", "kqueue"],
    ] {
        let exited = run_to_exit(flags, &[]);
        assert_eq!(
            exited.status.code(),
            Some(2),
            "{flags:?}: {}",
            exited.stderr
        );
        assert!(
            !exited.stderr.contains("panicked"),
            "{flags:?}: {}",
            exited.stderr
        );
        assert!(
            exited.stderr.contains("error:"),
            "{flags:?}: {}",
            exited.stderr
        );
        assert!(exited.stdout.is_empty(), "{flags:?}: {}", exited.stdout);
    }
}
