//! The ablation's tables (one per cell, every variant against the default in the same rounds)
//! and the verdict per feature, for results.md and the standalone ablation.md.

use std::fmt::Write as _;

use echo_bench::compare::{summarize, Summary};

use super::{
    cpu, fmt_ratio, fmt_sum, keyed_ratios, over_rounds, p50, p99, per_round, per_round_clean, rate,
    CLIENT_BOUND_NOTE,
};
use crate::ablation::{verdict, Effect, Variant, Verdict};
use crate::measure::{AblationResult, CellResult, SyscallSet, TargetResult, DEFAULT};

/// io_uring_enter per message of `name`'s side runs, and the per-round ratio to the default's.
fn enters(set: Option<&SyscallSet>, name: &str) -> (Summary, Summary) {
    let Some(set) = set else {
        return (summarize(&[]), summarize(&[]));
    };
    let per = |n: &str| {
        set.rounds(n).map(|r| {
            summarize(
                &r.values()
                    .map(|x| x.per_msg(x.io_uring_enter))
                    .collect::<Vec<_>>(),
            )
        })
    };
    let ratio = match (set.rounds(name), set.rounds(DEFAULT)) {
        (Some(t), Some(d)) if name != DEFAULT => {
            keyed_ratios(t, d, |x| x.per_msg(x.io_uring_enter))
        }
        _ => summarize(&[]),
    };
    (per(name).unwrap_or_else(|| summarize(&[])), ratio)
}

fn cell_table(md: &mut String, c: &CellResult, set: Option<&SyscallSet>, variants: &[Variant]) {
    let _ = writeln!(
        md,
        "\n| variant | flips | CPU µs/msg | CPU ÷ default | io_uring_enter/msg | enters ÷ default | msgs/s | msgs/s ÷ default | p50 µs | p50 ÷ default | p99 µs | p99 ÷ default | client-bound rounds |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let Some(d) = c.target(DEFAULT) else {
        return;
    };
    for t in &c.targets {
        let flips = variants
            .iter()
            .find(|v| v.name == t.name)
            .map(|v| format!("`{}`", v.flips))
            .unwrap_or_else(|| "— (default flags)".into());
        let ratio = |f| {
            if t.name == DEFAULT {
                "—".to_string()
            } else {
                fmt_ratio(&per_round(t, d, f))
            }
        };
        let (e, e_ratio) = enters(set, &t.name);
        let _ = writeln!(
            md,
            "| {} | {flips} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.name,
            fmt_sum(&over_rounds(t, cpu), 1e-3, 2),
            ratio(cpu),
            fmt_sum(&e, 1.0, 3),
            if t.name == DEFAULT {
                "—".into()
            } else {
                fmt_ratio(&e_ratio)
            },
            fmt_sum(&over_rounds(t, rate), 1.0, 0),
            ratio(rate),
            fmt_sum(&over_rounds(t, p50), 1.0, 0),
            ratio(p50),
            fmt_sum(&over_rounds(t, p99), 1.0, 0),
            ratio(p99),
            match t.client_bound_rounds() {
                0 => "0".to_string(),
                k => format!("**{k} of {}**", t.rounds.len()),
            },
        );
    }
    if c.client_bound() {
        let _ = writeln!(
            md,
            "\n**Client-bound rounds in this cell**: {CLIENT_BOUND_NOTE}."
        );
    }
}

/// The effect of `v`'s subject in cell `c`: per-round ratios with ÷ without the subject.
pub fn effect(c: &CellResult, v: &Variant) -> Option<Effect> {
    let d = c.target(DEFAULT)?;
    let t = c.target(&v.name)?;
    let (with, without): (&TargetResult, &TargetResult) = if v.default_has_subject {
        (d, t)
    } else {
        (t, d)
    };
    Some(Effect {
        cell: c.cell,
        cpu: per_round(with, without, cpu),
        rate: per_round_clean(with, without, rate),
        p50: per_round_clean(with, without, p50),
        p99: per_round_clean(with, without, p99),
    })
}

/// The verdict on every variant's subject over every ablation cell.
pub fn verdicts(a: &AblationResult) -> Vec<(&Variant, Verdict)> {
    a.variants
        .iter()
        .map(|v| {
            let effects: Vec<Effect> = a.cells.iter().filter_map(|c| effect(c, v)).collect();
            (v, verdict(&effects))
        })
        .collect()
}

/// The ablation section; `level` is the markdown heading prefix of its title ("##" inside
/// results.md, "" in ablation.md, whose title is the document's).
pub fn section(md: &mut String, a: &AblationResult, level: &str) {
    let sub = if level.is_empty() {
        "##".to_string()
    } else {
        format!("{level}#")
    };
    if !level.is_empty() {
        let _ = writeln!(md, "\n{level} uring-multishot feature ablation\n");
    }
    let _ = writeln!(
        md,
        "The default engine (`{}`) against one variant per optional feature, each flipping one \
         thing from the default, all in one echo-bench comparison per cell (interleaved rounds): \
         every ratio is variant ÷ default in the same round. io_uring_enter per message comes \
         from `perf stat` side runs of each variant, interleaved the same way (rounds rotated).\n",
        a.default_command
    );
    if let Some(f) = &a.features {
        let _ = writeln!(
            md,
            "Kernel {}; the default uses: {}; off by default: {}; missing: {}.\n",
            f.kernel,
            list(&f.in_use),
            list(&f.off),
            list(&f.missing)
        );
    }
    if !a.unavailable.is_empty() {
        let _ = writeln!(md, "Not ablated:\n");
        for u in &a.unavailable {
            let _ = writeln!(md, "- {}: {}", u.name, u.reason);
        }
        let _ = writeln!(md);
    }
    if a.cells.is_empty() {
        let _ = writeln!(md, "Nothing was measured (see Failures).");
        return;
    }
    let _ = writeln!(
        md,
        "{sub} Verdicts\n\nPer subject, the engine *with* it against the engine *without* it \
         (whichever is the default), over every ablation cell: **helps** = some figure \
         significantly better (interval excludes 1.0) and none worse; **hurts** = the reverse; \
         **mixed** = both; **inside the noise** = no interval excludes 1.0. Figures: CPU/msg \
         (every round), msgs/s, p50 and p99 (rounds in which neither side was client-bound), \
         with ÷ without. With 3 cells × 4 figures per subject, one lone significant figure can \
         be chance: look for agreement across cells.\n\n\
         | subject | variant | verdict | figures outside the noise |\n|---|---|---|---|"
    );
    for (v, verdict) in verdicts(a) {
        let _ = writeln!(
            md,
            "| {} | `{}` | **{}** | {} |",
            v.subject,
            v.flips,
            verdict.word.text(),
            if verdict.evidence.is_empty() {
                "—".into()
            } else {
                verdict.evidence.join("; ")
            }
        );
    }
    for (i, c) in a.cells.iter().enumerate() {
        let set = a.syscalls.iter().find(|s| s.cell == c.cell);
        let _ = writeln!(md, "\n{sub} {} — closed loop", c.cell.label());
        cell_table(md, c, set, &a.variants);
        let _ = writeln!(
            md,
            "\nRaw report: `raw/{}`{}.",
            c.json
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            if set.is_some() {
                format!(
                    ", syscall runs: `raw/syscalls/ablation-syscalls-{}-*`",
                    c.cell.id()
                )
            } else if i == 0 {
                " (syscalls not counted: perf unavailable)".into()
            } else {
                String::new()
            }
        );
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "—".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ablation::{parse_features_line, variants, Word};
    use crate::plan::Cell;
    use crate::report::testdata::{cell, same, target};

    #[test]
    fn effects_point_from_without_to_with_the_subject() {
        let line =
            "features: runtime=uring-multishot kernel=6.18 in_use=recv_budget missing=- off=bundle";
        let (vs, _) = variants(
            &parse_features_line(line).unwrap(),
            &["recv_budget", "bundle"],
            "adaptive",
        );
        let n = 9;
        let jitter = |x: f64| -> Vec<f64> { (0..n).map(|i| x + i as f64).collect() };
        // Default 1000 ns; turning recv_budget off costs 10% more CPU; bundle on saves 10%;
        // batching off and the fixed batch are level.
        let c = cell(
            Cell::new(50, 128),
            vec![
                target(DEFAULT, &jitter(1000.0), &same(1e5, n), &same(30.0, n)),
                target("batch=off", &jitter(1000.0), &same(1e5, n), &same(30.0, n)),
                target(
                    "batch=inline",
                    &jitter(1000.0),
                    &same(1e5, n),
                    &same(30.0, n),
                ),
                target(
                    "batch=32_200us",
                    &jitter(1000.0),
                    &same(1e5, n),
                    &same(30.0, n),
                ),
                target(
                    "recv_budget=off",
                    &jitter(1100.0),
                    &same(1e5, n),
                    &same(30.0, n),
                ),
                target("bundle=on", &jitter(900.0), &same(1e5, n), &same(30.0, n)),
            ],
        );
        let a = AblationResult {
            variants: vs,
            cells: vec![c],
            default_command: "uring-echo --runtime uring-multishot".into(),
            ..AblationResult::default()
        };
        let v = verdicts(&a);
        let word = |name: &str| v.iter().find(|(x, _)| x.name == name).unwrap().1.word;
        assert_eq!(word("recv_budget=off"), Word::Helps);
        assert_eq!(word("bundle=on"), Word::Helps);
        assert_eq!(word("batch=off"), Word::Noise);
        assert_eq!(word("batch=32_200us"), Word::Noise);
        let budget = &v
            .iter()
            .find(|(x, _)| x.name == "recv_budget=off")
            .unwrap()
            .1;
        // with ÷ without = default ÷ variant ≈ 1000/1100.
        assert!(budget.evidence[0].contains("CPU/msg 0.909×"), "{budget:?}");

        let mut md = String::new();
        section(&mut md, &a, "##");
        assert!(md.contains("## uring-multishot feature ablation"));
        assert!(
            md.contains(
                "| recv_budget | `--feature recv_budget=off (on by default)` | **helps** |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| bundle=on | `--feature bundle=on (off by default)` |"),
            "{md}"
        );
        assert!(md.contains("| default | — (default flags) |"), "{md}");
        assert!(md.contains("syscalls not counted"), "{md}");
    }
}
