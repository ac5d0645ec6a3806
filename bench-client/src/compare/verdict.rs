//! The comparison in plain words: which target is fastest by server CPU per message and which
//! by messages/s, and whether its lead is outside the noise. The default comparison ends with
//! these lines.
//!
//! Nothing is re-derived: every figure is one of [`super::comparison`], built with each other
//! target in turn as the baseline, so that it holds each target's median per-round ratio
//! against each other one, with its interval and significance. The leader is the target that
//! beats the most others by that median ratio (per-round ratios cancel drift between rounds;
//! among equals, the best median over rounds wins). "Outside the noise" is the comparison's
//! own significance test ([`super::significance`]) on the leader's ratio against each other
//! target, and counts only when the whole interval is on the leader's side of 1; every ratio is
//! printed with it.
//!
//! Messages/s names no winner when the client was the bottleneck in any run of the compared
//! targets: those figures measured echo-bench, not the servers (server CPU per message still
//! compares the servers, at the load the client could drive).

use super::{comparison, RatioJson, Series, Significance, Summary};
use crate::report::RoundRecord;

/// What a verdict line judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Server CPU time per message: lower is faster.
    ServerCpu,
    /// Messages per second: higher is faster.
    Throughput,
}

impl Metric {
    fn words(self) -> &'static str {
        match self {
            Metric::ServerCpu => "server CPU per message",
            Metric::Throughput => "messages/s",
        }
    }

    fn lower_is_better(self) -> bool {
        self == Metric::ServerCpu
    }

    fn summary(self, row: &super::CompareRow) -> Option<&Summary> {
        match self {
            Metric::ServerCpu => row.server_cpu_ns_per_msg.as_ref(),
            Metric::Throughput => Some(&row.msgs_per_s),
        }
    }

    fn ratio(self, row: &super::CompareRow) -> Option<&RatioJson> {
        match self {
            Metric::ServerCpu => row.server_cpu_ratio.as_ref(),
            Metric::Throughput => row.msgs_per_s_ratio.as_ref(),
        }
    }
}

/// The leader's ratio against one other target.
#[derive(Debug, Clone, PartialEq)]
pub struct Lead {
    /// The other target.
    pub other: String,
    /// Median and interval of the per-round ratios leader / other.
    pub ratio: Summary,
    /// The interval lies wholly on the leader's side of 1.
    pub outside_noise: bool,
    /// Fewer rounds than the significance test needs.
    pub too_few_rounds: bool,
}

/// The verdict on one metric.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Fewer than two targets have figures for this metric.
    NotMeasured,
    /// The client was the bottleneck in `bound` of `runs` runs.
    ClientBound {
        /// Client-bound runs.
        bound: usize,
        /// All runs of the compared targets.
        runs: usize,
    },
    /// The target with the best median and its ratio against every other, closest first.
    Leader {
        /// The leader.
        name: String,
        /// Its ratios.
        leads: Vec<Lead>,
    },
}

/// Judge `metric` over `targets` (at least two, with their rounds).
pub fn judge(targets: &[Series<'_>], metric: Metric) -> Verdict {
    if metric == Metric::Throughput {
        let runs: Vec<&RoundRecord> = targets.iter().flat_map(|t| t.rounds).collect();
        let bound = runs.iter().filter(|r| r.client.client_bound).count();
        if bound > 0 {
            return Verdict::ClientBound {
                bound,
                runs: runs.len(),
            };
        }
    }
    let Some(table) = comparison(targets) else {
        return Verdict::NotMeasured;
    };
    let better = |a: f64, b: f64| {
        if metric.lower_is_better() {
            a < b
        } else {
            a > b
        }
    };
    let measured: Vec<(usize, f64)> = table
        .rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, metric.summary(r)?.median)))
        .filter(|(_, m)| m.is_finite())
        .collect();
    if measured.len() < 2 {
        return Verdict::NotMeasured;
    }
    // Each target's per-round ratios against every other one, from the comparison with the
    // other as baseline (its second row is this target / the other).
    let leads_of = |this: usize| -> Vec<Lead> {
        measured
            .iter()
            .filter(|(i, _)| *i != this)
            .filter_map(|&(i, _)| {
                let pair = comparison(&[targets[i], targets[this]])?;
                let r = metric.ratio(&pair.rows[1])?;
                let favourable = if metric.lower_is_better() {
                    r.summary.hi < 1.0
                } else {
                    r.summary.lo > 1.0
                };
                Some(Lead {
                    other: targets[i].name.to_string(),
                    outside_noise: r.significance == Significance::Significant && favourable,
                    too_few_rounds: r.significance == Significance::TooFewRounds,
                    ratio: r.summary.clone(),
                })
            })
            .collect()
    };
    // The leader beats the most others by its median per-round ratio (which cancels drift
    // between rounds); among equals, the best median wins.
    let wins = |leads: &[Lead]| leads.iter().filter(|l| better(l.ratio.median, 1.0)).count();
    let (leader, mut leads) = measured
        .iter()
        .map(|&(i, median)| (i, median, leads_of(i)))
        .reduce(|best, x| {
            let (wx, wb) = (wins(&x.2), wins(&best.2));
            if wx > wb || (wx == wb && better(x.1, best.1)) {
                x
            } else {
                best
            }
        })
        .map(|(i, _, leads)| (i, leads))
        .expect("two or more");
    leads.sort_by(|a, b| {
        (a.ratio.median - 1.0)
            .abs()
            .total_cmp(&(b.ratio.median - 1.0).abs())
    });
    if leads.is_empty() {
        return Verdict::NotMeasured;
    }
    Verdict::Leader {
        name: targets[leader].name.to_string(),
        leads,
    }
}

/// `0.87× epoll [0.83–0.91]`: two decimals, three where two would round an end of an interval
/// outside the noise to 1.00.
fn ratio_text(l: &Lead) -> String {
    let s = &l.ratio;
    let hides_the_gap = |x: f64| format!("{x:.2}") == "1.00";
    let prec = if l.outside_noise && (hides_the_gap(s.lo) || hides_the_gap(s.hi)) {
        3
    } else {
        2
    };
    format!(
        "{:.prec$}× {} [{:.prec$}–{:.prec$}]",
        s.median, l.other, s.lo, s.hi
    )
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The verdict on `metric` in one line; `noun` names the targets (`engine`).
pub fn line(verdict: &Verdict, metric: Metric, noun: &str) -> String {
    let what = metric.words();
    match verdict {
        Verdict::NotMeasured => format!("By {what}: not measured for two or more {noun}s."),
        Verdict::ClientBound { bound, runs } => format!(
            "By {what}: no verdict — the client was the bottleneck in {bound} of {runs} runs, so \
             messages/s measured echo-bench, not the {noun}s."
        ),
        Verdict::Leader { name, leads } => {
            if leads.iter().any(|l| l.too_few_rounds) {
                let list: Vec<String> = leads.iter().map(ratio_text).collect();
                return format!(
                    "By {what}: {name} leads ({}), but fewer than {} rounds cannot tell \
                     it from the noise.",
                    join_and(&list),
                    super::MIN_ROUNDS_FOR_SIGNIFICANCE
                );
            }
            let rounds = leads.iter().map(|l| l.ratio.n).min().unwrap_or(0);
            let caveat = if rounds < super::MIN_ROUNDS_FOR_CI {
                format!(
                    " Only {rounds} rounds: use {} or more to decide.",
                    super::MIN_ROUNDS_FOR_CI
                )
            } else {
                String::new()
            };
            let (outside, inside): (Vec<&Lead>, Vec<&Lead>) =
                leads.iter().partition(|l| l.outside_noise);
            let texts =
                |ls: &[&Lead]| join_and(&ls.iter().map(|l| ratio_text(l)).collect::<Vec<_>>());
            let verdict = if inside.is_empty() {
                format!(
                    "Fastest by {what}: {name}, {} — outside the noise.",
                    texts(&outside)
                )
            } else if outside.is_empty() {
                format!(
                    "By {what}: no {noun} is faster than the others beyond the noise: \
                     {name} {} — inside the noise.",
                    texts(&inside)
                )
            } else {
                let tied: Vec<String> = inside.iter().map(|l| l.other.clone()).collect();
                format!(
                    "Fastest by {what}: {name} or {}, inside the noise of each other ({name} {}); \
                     {name} {} — outside the noise.",
                    join_and(&tied),
                    texts(&inside),
                    texts(&outside)
                )
            };
            verdict + &caveat
        }
    }
}

/// The verdict lines of a comparison of `targets` (named `noun`s in the text): server CPU per
/// message first (where two targets have it), then messages/s.
pub fn lines(targets: &[Series<'_>], noun: &str) -> Vec<String> {
    let mut out = Vec::new();
    if targets.len() < 2 {
        return out;
    }
    let cpu = judge(targets, Metric::ServerCpu);
    if cpu != Verdict::NotMeasured {
        out.push(line(&cpu, Metric::ServerCpu, noun));
    }
    let rate = judge(targets, Metric::Throughput);
    out.push(line(&rate, Metric::Throughput, noun));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bottleneck::ClientCheck;

    /// Rounds of one target: (messages/s, server ns per message) per round.
    fn rounds(samples: &[(f64, f64)]) -> Vec<RoundRecord> {
        samples
            .iter()
            .enumerate()
            .map(|(i, &(rate, cpu))| RoundRecord {
                round: i + 1,
                position: 1,
                measure_start: String::new(),
                duration_s: 1.0,
                messages: rate as u64,
                msgs_per_s: rate,
                mib_per_s: 0.0,
                aborted: 0,
                unsent: 0,
                errors: 0,
                p50_us: 1.0,
                p99_us: 2.0,
                server_cpu_ns_per_msg: Some(cpu),
                client_cpu_ns_per_msg: Some(1000.0),
                client: ClientCheck::default(),
                rate_intervals_off: Vec::new(),
            })
            .collect()
    }

    /// Nine rounds around `rate` and `cpu`, with a deterministic ±`wobble` (relative) per round.
    fn target(rate: f64, cpu: f64, wobble: f64) -> Vec<RoundRecord> {
        let w = [0.0, 1.0, -1.0, 0.5, -0.5, 0.8, -0.8, 0.2, -0.2];
        rounds(
            &w.iter()
                .map(|x| (rate * (1.0 + x * wobble), cpu * (1.0 - x * wobble)))
                .collect::<Vec<_>>(),
        )
    }

    fn series<'a>(ts: &'a [(&'a str, Vec<RoundRecord>)]) -> Vec<Series<'a>> {
        ts.iter()
            .map(|(name, rounds)| Series { name, rounds })
            .collect()
    }

    #[test]
    fn a_clear_leader_is_named_with_the_comparisons_own_intervals() {
        let ts = [
            ("epoll", target(100_000.0, 7000.0, 0.01)),
            ("uring", target(95_000.0, 8400.0, 0.03)),
            ("uring-multishot", target(110_000.0, 6100.0, 0.02)),
        ];
        let s = series(&ts);
        let lines = lines(&s, "engine");
        assert_eq!(lines.len(), 2, "{lines:?}");
        // The interval printed is the one of the comparison with epoll as baseline.
        let pair = comparison(&[s[0], s[2]]).unwrap();
        let r = &pair.rows[1].server_cpu_ratio.as_ref().unwrap().summary;
        assert!(r.lo < r.hi, "the rounds differ: {r:?}");
        let expected = format!("{:.2}× epoll [{:.2}–{:.2}]", r.median, r.lo, r.hi);
        assert!(
            lines[0].starts_with("Fastest by server CPU per message: uring-multishot, ")
                && lines[0].contains(&expected)
                && lines[0].ends_with("— outside the noise."),
            "{}",
            lines[0]
        );
        // The runner-up (epoll) comes before the distant uring.
        assert!(
            lines[0].find("epoll").unwrap() < lines[0].find("× uring").unwrap(),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("Fastest by messages/s: uring-multishot, 1.10× epoll"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn differences_inside_the_noise_crown_nobody() {
        // Per-round ratios swing by ±10% around 1: the interval contains 1.
        let ts = [
            ("epoll", target(100_000.0, 7000.0, 0.0)),
            ("uring", target(100_500.0, 6990.0, 0.10)),
            ("uring-multishot", target(100_200.0, 6980.0, 0.08)),
        ];
        let lines = lines(&series(&ts), "engine");
        for (line, what) in lines.iter().zip(["server CPU per message", "messages/s"]) {
            assert!(
                line.starts_with(&format!(
                    "By {what}: no engine is faster than the others beyond the noise: "
                )) && line.ends_with("— inside the noise."),
                "{line}"
            );
        }
    }

    #[test]
    fn a_lead_shared_within_the_noise_names_both_leaders() {
        let ts = [
            ("epoll", target(100_000.0, 7000.0, 0.0)),
            ("uring", target(80_000.0, 9000.0, 0.01)),
            ("uring-multishot", target(100_300.0, 6990.0, 0.10)),
        ];
        let lines = lines(&series(&ts), "engine");
        let cpu = &lines[0];
        assert!(
            cpu.starts_with("Fastest by server CPU per message: uring-multishot or epoll, inside the noise of each other (uring-multishot ")
                && cpu.contains("× uring [")
                && cpu.ends_with("— outside the noise."),
            "{cpu}"
        );
    }

    #[test]
    fn a_client_bound_run_gets_no_throughput_winner() {
        let mut bound = target(110_000.0, 6100.0, 0.01);
        bound[3].client.client_bound = true;
        let ts = [
            ("epoll", target(100_000.0, 7000.0, 0.01)),
            ("uring-multishot", bound),
        ];
        let lines = lines(&series(&ts), "engine");
        assert!(
            lines[0].starts_with("Fastest by server CPU per message: uring-multishot"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "By messages/s: no verdict — the client was the bottleneck in 1 of 18 runs, so \
             messages/s measured echo-bench, not the engines."
        );
    }

    #[test]
    fn too_few_rounds_say_so() {
        let ts = [
            ("epoll", rounds(&[(100.0, 10.0), (100.0, 10.0)])),
            ("uring", rounds(&[(150.0, 5.0), (150.0, 5.0)])),
        ];
        let lines = lines(&series(&ts), "engine");
        assert!(
            lines[0].starts_with("By server CPU per message: uring leads (0.50× epoll")
                && lines[0].ends_with("but fewer than 3 rounds cannot tell it from the noise."),
            "{lines:?}"
        );
    }

    #[test]
    fn the_leader_is_chosen_by_per_round_ratios_not_by_medians_of_values() {
        // By value, uring-multishot's median CPU (6.25) is below epoll's (6.3); round by round
        // it used more in 3 of 5 rounds (median ratio 1.015): epoll leads.
        let cpu = |xs: [f64; 5]| rounds(&xs.map(|c| (100_000.0, c)));
        let ts = [
            ("epoll", cpu([6.3, 6.0, 7.3, 5.9, 6.5])),
            ("uring-multishot", cpu([6.2, 6.25, 7.5, 5.8, 6.6])),
        ];
        let lines = lines(&series(&ts), "engine");
        assert!(
            lines[0].starts_with("By server CPU per message: no engine is faster than the others beyond the noise: epoll 0.98× uring-multishot ["),
            "{lines:?}"
        );
    }

    #[test]
    fn fewer_than_five_rounds_come_with_a_caveat() {
        let ts = [
            ("epoll", target(100_000.0, 7000.0, 0.01)[..4].to_vec()),
            ("uring", target(120_000.0, 5000.0, 0.02)[..4].to_vec()),
        ];
        for line in lines(&series(&ts), "engine") {
            assert!(
                line.starts_with("Fastest by ")
                    && line
                        .ends_with("— outside the noise. Only 4 rounds: use 5 or more to decide."),
                "{line}"
            );
        }
        let ts = [
            ("epoll", target(100_000.0, 7000.0, 0.01)[..5].to_vec()),
            ("uring", target(120_000.0, 5000.0, 0.02)[..5].to_vec()),
        ];
        for line in lines(&series(&ts), "engine") {
            assert!(line.ends_with("— outside the noise."), "{line}");
        }
    }

    #[test]
    fn without_server_cpu_only_throughput_is_judged() {
        let mut a = target(100_000.0, 1.0, 0.01);
        let mut b = target(120_000.0, 1.0, 0.01);
        for r in a.iter_mut().chain(b.iter_mut()) {
            r.server_cpu_ns_per_msg = None;
        }
        let ts = [("a", a), ("b", b)];
        let lines = lines(&series(&ts), "server");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("Fastest by messages/s: b, 1.20× a"),
            "{lines:?}"
        );
    }
}
