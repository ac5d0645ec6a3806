//! The tables of results.md: the servers, the overview matrices (the README's tables), one
//! table per cell, the default batching against multishot-off, and the side measurements.

use std::fmt::Write as _;
use std::path::Path;

use super::{
    cpu, fmt_ratio, fmt_sum, over_rounds, p50, p99, per_round, rate, Metric, CLIENT_BOUND_NOTE,
};
use crate::measure::{CellResult, Results, SyscallSet, TargetResult};
use crate::servers::{Kind, EPOLL, FLOOR, MULTISHOT, MULTISHOT_OFF};

/// The servers that ran, their commands and features lines, and the peers skipped.
pub fn servers_section(md: &mut String, r: &Results) {
    if r.servers.is_empty() && r.peers.skipped.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Servers\n\n| server | kind | command | features |\n|---|---|---|---|"
    );
    for s in &r.servers {
        let kind = match s.kind {
            Kind::Ours => "ours",
            Kind::Floor => "floor (raw epoll)",
            Kind::Peer => "peer",
        };
        let _ = writeln!(
            md,
            "| {} | {kind} | `{}` | {} |",
            s.name,
            s.command,
            s.features
                .as_deref()
                .map(|f| format!("`{f}`"))
                .unwrap_or_else(|| "—".into())
        );
    }
    if !r.peers.skipped.is_empty() {
        let _ = writeln!(md, "\nPeers skipped:\n");
        for (name, why) in &r.peers.skipped {
            let _ = writeln!(md, "- {name}: {why}");
        }
    }
    let _ = writeln!(md);
}

/// The 1-thread closed-loop cells, in plan order.
fn one_thread_cells(r: &Results) -> Vec<&CellResult> {
    r.closed.iter().filter(|c| c.cell.threads == 1).collect()
}

/// Every server of the 1-thread cells, in first-seen order.
fn server_names<'a>(cells: &[&'a CellResult]) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for c in cells {
        for t in &c.targets {
            if !names.contains(&t.name.as_str()) {
                names.push(&t.name);
            }
        }
    }
    names
}

fn matrix(md: &mut String, cells: &[&CellResult], base: &str, f: Metric, clean_mark: bool) {
    let _ = write!(md, "| server |");
    for c in cells {
        let _ = write!(md, " {} |", c.cell.label());
    }
    let _ = write!(md, "\n|---|");
    for _ in cells {
        let _ = write!(md, "---|");
    }
    let _ = writeln!(md);
    for name in server_names(cells) {
        let _ = write!(md, "| {name} |");
        for c in cells {
            let cell = match (c.target(name), c.target(base)) {
                (Some(_), _) if name == base => "1".to_string(),
                (Some(t), Some(b)) => {
                    let bound =
                        clean_mark && (t.client_bound_rounds() > 0 || b.client_bound_rounds() > 0);
                    format!(
                        "{}{}",
                        fmt_ratio(&per_round(t, b, f)),
                        if bound { " †" } else { "" }
                    )
                }
                _ => "—".into(),
            };
            let _ = write!(md, " {cell} |");
        }
        let _ = writeln!(md);
    }
}

/// The two overview matrices: CPU per message ÷ the floor, and messages/s ÷ uring-multishot,
/// every server × every 1-thread closed-loop cell.
pub fn overview(md: &mut String, r: &Results) {
    let cells = one_thread_cells(r);
    if cells.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Overview\n\nServer CPU per message ÷ the floor's (median of per-round ratios, \
         closed loop, 1 server thread; below 1 is cheaper than the floor):\n"
    );
    matrix(md, &cells, FLOOR, cpu, false);
    let _ = writeln!(
        md,
        "\nMessages/s ÷ uring-multishot's (median of per-round ratios; † = client-bound rounds \
         in the pair, which measure the client: see the cell's table):\n"
    );
    matrix(md, &cells, MULTISHOT, rate, true);
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn bound_text(t: &TargetResult) -> String {
    match t.client_bound_rounds() {
        0 => "0".into(),
        k => format!("**{k} of {}**", t.rounds.len()),
    }
}

/// One cell: closed loop (rates, CPU, their ratios to epoll, the floor and uring-multishot,
/// latency) or open loop (latency at the rate).
pub fn cell_table(md: &mut String, c: &CellResult) {
    let mode = match c.rate_fraction {
        None => "closed loop".to_string(),
        Some(f) => format!(
            "open loop at {:.0}% of epoll saturation ({:.0} msgs/s)",
            f * 100.0,
            c.rate.unwrap_or(0.0)
        ),
    };
    let _ = writeln!(md, "\n### {} — {mode}\n", c.cell.label());
    if c.rate.is_none() {
        let _ = writeln!(
            md,
            "| server | msgs/s | ÷ epoll | ÷ floor | ÷ uring-multishot | server CPU µs/msg | CPU ÷ epoll | CPU ÷ floor | CPU ÷ uring-multishot | p50 µs | p99 µs | client-bound rounds |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let vs = |t: &TargetResult, base: &str, f: Metric| {
            c.target(base)
                .filter(|b| b.name != t.name)
                .map(|b| fmt_ratio(&per_round(t, b, f)))
                .unwrap_or_else(|| "—".into())
        };
        for t in &c.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
                t.name,
                fmt_sum(&over_rounds(t, rate), 1.0, 0),
                vs(t, EPOLL, rate),
                vs(t, FLOOR, rate),
                vs(t, MULTISHOT, rate),
                fmt_sum(&over_rounds(t, cpu), 1e-3, 2),
                vs(t, EPOLL, cpu),
                vs(t, FLOOR, cpu),
                vs(t, MULTISHOT, cpu),
                t.p50_us,
                fmt_sum(&over_rounds(t, p99), 1.0, 0),
                bound_text(t),
            );
        }
    } else {
        let _ = writeln!(
            md,
            "| server | p50 µs | p99 µs (corrected) | p99 µs, median of rounds | p99.9 µs | p99 service time µs | rounds at the rate | rate reached overall | client-bound rounds |\n|---|---|---|---|---|---|---|---|---|"
        );
        let rate = c.rate.unwrap_or(0.0);
        for t in &c.targets {
            let at_rate = t
                .rounds
                .values()
                .filter(|r| echo_bench::report::rate_reached(r.msgs_per_s, rate))
                .count();
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {} | {:.0} | {} | {at_rate} of {} | {} | {} |",
                t.name,
                t.p50_us,
                t.p99_us,
                fmt_sum(&over_rounds(t, p99), 1.0, 0),
                t.p999_us,
                t.service_p99_us
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "n/a".into()),
                t.rounds.len(),
                if t.rate_shortfall {
                    "**NO (shortfall)**"
                } else {
                    "yes"
                },
                bound_text(t),
            );
        }
    }
    if c.client_bound() {
        let _ = writeln!(
            md,
            "\n**Client-bound rounds in this cell** (column above): {CLIENT_BOUND_NOTE}."
        );
    }
    let _ = writeln!(
        md,
        "\nRaw report: `raw/{}`, latency plot: `raw/{}`.",
        file_name(&c.json),
        file_name(&c.plot)
    );
}

/// What the default batching (`--batch-wait` default) gains and costs against the same engine without
/// batching (`multishot-off`), in every cell that ran both.
pub fn batching_table(md: &mut String, r: &Results) {
    let rows: Vec<&CellResult> = r
        .closed
        .iter()
        .chain(&r.open)
        .filter(|c| c.target(MULTISHOT).is_some() && c.target(MULTISHOT_OFF).is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Batching (uring-multishot's default, `--batch-wait {}`) against multishot-off\n\n\
         The same engine with `--batch-wait off` (one completion per wait), in the same rounds. \
         Ratios: uring-multishot ÷ multishot-off.\n\n\
         | cell | load | CPU ÷ off | msgs/s ÷ off | p50 ÷ off (per round) | p50 µs (off → default) | p99 µs (off → default) | client-bound rounds (default / off) |\n\
         |---|---|---|---|---|---|---|---|",
        uring_echo::config::BatchPolicy::default()
    );
    for c in rows {
        let (Some(m), Some(off)) = (c.target(MULTISHOT), c.target(MULTISHOT_OFF)) else {
            continue;
        };
        let closed = c.rate.is_none();
        let load = match c.rate_fraction {
            None => "closed loop".to_string(),
            Some(f) => format!("open loop {:.0}%", f * 100.0),
        };
        let closed_only = |f: Metric| {
            if closed {
                fmt_ratio(&per_round(m, off, f))
            } else {
                "—".into()
            }
        };
        let _ = writeln!(
            md,
            "| {} | {load} | {} | {} | {} | {:.0} → {:.0} | {:.0} → {:.0} | {} / {} |",
            c.cell.label(),
            closed_only(cpu),
            closed_only(rate),
            fmt_ratio(&per_round(m, off, p50)),
            off.p50_us,
            m.p50_us,
            off.p99_us,
            m.p99_us,
            m.client_bound_rounds(),
            off.client_bound_rounds(),
        );
    }
}

/// Syscalls per message of each server of a side-run set, medians over rounds with spread.
pub fn syscall_table(md: &mut String, set: &SyscallSet) {
    let _ = writeln!(
        md,
        "| server | rounds | messages per run | syscalls/msg | io_uring_enter/msg | epoll_wait/msg |\n|---|---|---|---|---|---|"
    );
    for (name, rounds) in &set.servers {
        let sum = |f: &dyn Fn(&crate::measure::SyscallRound) -> f64| {
            echo_bench::compare::summarize(&rounds.values().map(f).collect::<Vec<_>>())
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            rounds.len(),
            fmt_sum(&sum(&|r| r.messages as f64), 1.0, 0),
            fmt_sum(&sum(&|r| r.per_msg(r.total)), 1.0, 3),
            fmt_sum(&sum(&|r| r.per_msg(r.io_uring_enter)), 1.0, 3),
            fmt_sum(&sum(&|r| r.per_msg(r.epoll_wait)), 1.0, 3),
        );
    }
}

/// Syscalls, idle RSS and the client's own cost.
pub fn side_sections(md: &mut String, r: &Results) {
    if r.syscalls.is_some() || (r.syscalls_unavailable.is_some() && !r.closed.is_empty()) {
        let _ = writeln!(md, "\n## Syscalls per message (perf stat on the server)\n");
        match (&r.syscalls, &r.syscalls_unavailable) {
            (Some(set), _) => {
                let _ = writeln!(
                    md,
                    "{} in interleaved side runs (the servers' order rotated per round); files \
                     `raw/syscalls/syscalls-*`.\n",
                    set.cell.label()
                );
                syscall_table(md, set);
            }
            (None, Some(why)) => {
                let _ = writeln!(md, "Not measured: {why}.");
            }
            (None, None) => {}
        }
    }
    if !r.rss.is_empty() {
        let _ = writeln!(md, "\n## Idle connections: RSS and fds (16 KiB buffers)\n\n| server | connections | RSS before KiB | RSS with idle connections KiB | bytes/connection | fds before → after close |\n|---|---|---|---|---|---|");
        for s in &r.rss {
            let per = (s.idle_kib.saturating_sub(s.base_kib) * 1024) as f64 / s.connections as f64;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {per:.0} | {} → {} |",
                s.name, s.connections, s.base_kib, s.idle_kib, s.fds_before, s.fds_after
            );
        }
    }
    if !r.client.is_empty() {
        let _ = writeln!(md, "\n## The client's own cost (50 × 128 B against the floor server, alternating runs)\n\n| round | echo-bench msgs/s | ref-client msgs/s | echo-bench CPU ns/msg | ref-client CPU ns/msg |\n|---|---|---|---|---|");
        for (i, c) in r.client.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                i + 1,
                c.bench_rate,
                c.ref_rate,
                c.bench_cpu_ns,
                c.ref_cpu_ns
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::ServerInfo;
    use crate::servers::Peers;

    #[test]
    fn skipped_peers_are_noted_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("peer-tokio"), "").unwrap();
        let mut peers = Peers::find(dir.path());
        peers.skip("peer-tokio", "could not start: exited with status 1".into());
        let r = Results {
            servers: vec![ServerInfo {
                name: MULTISHOT.into(),
                command: "uring-echo --runtime uring-multishot".into(),
                kind: Kind::Ours,
                features: Some("features: runtime=uring-multishot in_use=- missing=- off=-".into()),
            }],
            peers,
            ..Results::default()
        };
        let mut md = String::new();
        servers_section(&mut md, &r);
        assert!(md.contains("| uring-multishot | ours | `uring-echo --runtime uring-multishot` | `features: runtime=uring-multishot"), "{md}");
        assert!(md.contains("Peers skipped:"), "{md}");
        assert!(md.contains("- peer-glommio: not found at "), "{md}");
        assert!(
            md.contains("- peer-tokio: could not start: exited with status 1"),
            "{md}"
        );
        assert_eq!(md.matches("\n- peer-").count(), 5, "{md}");
    }
}
