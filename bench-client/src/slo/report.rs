//! What `slo` reports: the JSON section (every trial, the bounds, why each search stopped), the
//! text table, and the comparison of bounds between targets in plain words. The comparison is
//! also what `compare` prints for saved searches.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use super::search::{Decision, RateRecord, StopReason, Verdict};
use crate::bottleneck::ClientCheck;
use crate::report::{ReportHeader, TargetInfo};

/// One trial of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloTrial {
    /// Trial number within the target's search (1-based).
    pub trial: usize,
    /// Offered rate, messages/s.
    pub offered_rate: f64,
    /// Offered rate × the fraction of the messages due at least the SLO before the deadline
    /// that completed by it (what the 99% test reads; see [`crate::slo`]).
    pub achieved_rate: f64,
    /// Messages completed inside the window, per second.
    pub completed_rate: f64,
    /// Start of the measured window, RFC3339.
    pub measure_start: String,
    /// Measured window, s (longer than -d at low rates, to hold enough tail samples).
    pub duration_s: f64,
    /// Messages completed in the window.
    pub messages: u64,
    /// Aborted or unsent at the deadline although due more than the SLO before it: counted as
    /// over the SLO.
    pub overdue: u64,
    /// Median latency from the intended send time, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// The SLO's percentile of the completed messages, µs.
    pub quantile_us: f64,
    /// Messages over the SLO (completed slower, or overdue).
    pub over_slo: u64,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
    /// Whether the client was the bottleneck, and the evidence.
    pub client: ClientCheck,
}

/// The search of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloTargetJson {
    /// Which target.
    #[serde(flatten)]
    pub info: TargetInfo,
    /// Messages/s of the closed-loop probe the search started from (null with --start-rate).
    pub saturation_probe_msgs_per_s: Option<f64>,
    /// The first rate probed.
    pub start_rate: f64,
    /// Highest rate shown to pass (null: none).
    pub max_rate_lower: Option<f64>,
    /// Lowest rate shown to fail (null: none).
    pub max_rate_upper: Option<f64>,
    /// `(upper - lower) / upper` reached (null without both bounds).
    pub precision_reached: Option<f64>,
    /// The precision goal was reached.
    pub goal_reached: bool,
    /// Why the search stopped.
    pub stop_reason: StopReason,
    /// Every probed rate and how it was decided.
    pub rates: Vec<RateRecord>,
    /// Every trial, in order.
    pub trials: Vec<SloTrial>,
    /// A trial that passed well above a rate decided to fail (null: none): see
    /// [`find_contradiction`].
    #[serde(default)]
    pub contradiction: Option<Contradiction>,
}

/// A valid trial that passed at a rate well above one the search decided fails. Near the knee
/// trials scatter by design (the k-of-n rule settles that); far from it, a pass above a failure
/// means the latency at this SLO varied more from trial to trial than from rate to rate, and
/// the bounds then describe the machine's noise (or a server whose tail is not steady) more
/// than the server's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Contradiction {
    /// The highest offered rate at which a valid trial passed, messages/s.
    pub passed_rate: f64,
    /// The lowest rate decided to fail, messages/s.
    pub failed_rate: f64,
}

/// The contradiction in one search, if any: the highest passing trial's rate against the lowest
/// failed rate, counted when the pass is more than twice the precision goal (at least 10%)
/// above the failure — closer than that is the knee's own scatter.
pub fn find_contradiction(
    rates: &[RateRecord],
    trials: &[SloTrial],
    precision: f64,
) -> Option<Contradiction> {
    let failed_rate = rates
        .iter()
        .filter(|r| r.decision == Decision::Fail)
        .map(|r| r.rate)
        .reduce(f64::min)?;
    let passed_rate = trials
        .iter()
        .filter(|t| t.verdict == Verdict::Pass)
        .map(|t| t.offered_rate)
        .reduce(f64::max)?;
    (passed_rate > failed_rate * (1.0 + (2.0 * precision).max(0.1))).then_some(Contradiction {
        passed_rate,
        failed_rate,
    })
}

/// The loud line for a contradiction.
fn contradiction_text(name: &str, c: &Contradiction) -> String {
    format!(
        "{name}: the trials contradict each other: one passed at {} msgs/s, yet {} msgs/s \
         failed; the latency at this SLO varied more between trials than between rates (a noisy \
         machine, or a server whose tail is not steady), so these bounds are not trustworthy \
         (more --trials, a longer -d, or a quieter machine)",
        fmt_rate(c.passed_rate),
        fmt_rate(c.failed_rate)
    )
}

/// How one target's bounds compare with the baseline's (the first target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundsComparison {
    /// The target.
    pub target: String,
    /// The baseline.
    pub baseline: String,
    /// `higher`, `lower` (the bounds do not overlap) or `overlap` (no difference shown).
    pub outcome: String,
    /// Lowest ratio target / baseline the bounds allow (null: unknown).
    pub ratio_lo: Option<f64>,
    /// Highest ratio the bounds allow (null: unbounded or unknown).
    pub ratio_hi: Option<f64>,
    /// The sentence printed.
    pub text: String,
}

/// The `slo` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloJson {
    /// The SLO's percentile (99 = p99).
    pub quantile: f64,
    /// The SLO's latency bound, µs.
    pub max_latency_us: f64,
    /// Relative width goal of the bounds.
    pub precision_goal: f64,
    /// Valid trials that may be needed per rate (n).
    pub trials_per_rate: usize,
    /// Passing trials that make a rate pass (k).
    pub passes_needed: usize,
    /// Invalid trials that make a rate unmeasurable.
    pub max_invalid_per_rate: usize,
    /// `-d` of each trial, s.
    pub trial_duration_s: f64,
    /// Warmup of each trial, s.
    pub warmup_s: f64,
    /// `--max-time`, s.
    pub max_time_s: f64,
    /// Time the search took, s.
    pub elapsed_s: f64,
    /// Some search stopped before its precision goal.
    pub stopped_early: bool,
    /// One search per target, in target order.
    pub targets: Vec<SloTargetJson>,
    /// Every target's bounds against the first target's.
    pub comparisons: Vec<BoundsComparison>,
}

/// The whole JSON report of an `slo` search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloReport {
    /// What ran, where and how (`command`: `slo`).
    #[serde(flatten)]
    pub header: ReportHeader,
    /// The searches.
    pub slo: SloJson,
    /// Connection or verification errors over all trials.
    pub errors_total: u64,
    /// The exit code echo-bench returns.
    pub exit_code: u8,
}

/// `p99`, `p99.9`, `p50`.
pub fn quantile_name(q: f64) -> String {
    format!("p{q}")
}

/// The SLO in words: `p99 ≤ 500 µs`.
pub fn slo_text(quantile: f64, max_latency_us: f64) -> String {
    format!(
        "{} ≤ {} µs",
        quantile_name(quantile),
        fmt_rate(max_latency_us)
    )
}

/// A rate (or any positive figure) with as many decimals as useful.
pub fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn bounds_text(t: &SloTargetJson) -> String {
    let show = |v: Option<f64>| v.map_or_else(|| "?".into(), fmt_rate);
    format!("{} .. {}", show(t.max_rate_lower), show(t.max_rate_upper))
}

/// Compare `t`'s bounds with the baseline `b`'s. The bounds are a lower and an upper limit of
/// each true value (a missing lower bound is 0, a missing upper one unbounded); the values
/// differ when the intervals are disjoint, and the ratio lies between the far ends.
pub fn compare_bounds(t: &SloTargetJson, b: &SloTargetJson, slo: &str) -> BoundsComparison {
    let (tl, tu) = (t.max_rate_lower.unwrap_or(0.0), t.max_rate_upper);
    let (bl, bu) = (b.max_rate_lower.unwrap_or(0.0), b.max_rate_upper);
    let ratio = |num: f64, den: f64| (den > 0.0).then(|| num / den);
    let above = bu.is_some_and(|bu| tl > bu);
    let below = tu.is_some_and(|tu| tu < bl);
    // t / b lies between t's lowest over b's highest and t's highest over b's lowest.
    let (ratio_lo, ratio_hi) = if above || below {
        (
            bu.and_then(|bu| ratio(tl, bu)).filter(|r| *r > 0.0),
            tu.and_then(|tu| ratio(tu, bl)),
        )
    } else {
        (None, None)
    };
    let fmt_ratio = |r: Option<f64>| r.map_or_else(|| "?".into(), |r| format!("{r:.2}×"));
    let (outcome, text) = if above || below {
        let mid = match (ratio_lo, ratio_hi) {
            (Some(lo), Some(hi)) => format!("{:.2}×", (lo * hi).sqrt()),
            (Some(lo), None) => format!("at least {lo:.2}×"),
            (None, Some(hi)) => format!("at most {hi:.2}×"),
            (None, None) => "?".into(),
        };
        (
            if above { "higher" } else { "lower" },
            format!(
                "{} sustains {mid} {}'s rate at {slo} (between {} and {}): bounds do not overlap",
                t.info.name,
                b.info.name,
                fmt_ratio(ratio_lo),
                fmt_ratio(ratio_hi)
            ),
        )
    } else {
        (
            "overlap",
            format!(
                "{} ({} msgs/s) vs {} ({} msgs/s) at {slo}: bounds overlap: no difference shown",
                t.info.name,
                bounds_text(t),
                b.info.name,
                bounds_text(b)
            ),
        )
    };
    let mut text = text;
    for x in [t, b].into_iter().filter(|x| x.contradiction.is_some()) {
        text.push_str(&format!(
            "; but {}'s trials contradict each other: not trustworthy",
            x.info.name
        ));
    }
    BoundsComparison {
        target: t.info.name.clone(),
        baseline: b.info.name.clone(),
        outcome: outcome.into(),
        ratio_lo,
        ratio_hi,
        text,
    }
}

/// Every target against the first.
pub fn compare_all(targets: &[SloTargetJson], slo: &str) -> Vec<BoundsComparison> {
    match targets.split_first() {
        Some((base, rest)) => rest.iter().map(|t| compare_bounds(t, base, slo)).collect(),
        None => Vec::new(),
    }
}

fn verdict_text(t: &SloTrial) -> String {
    match t.verdict {
        Verdict::Pass => "pass".into(),
        Verdict::Fail => format!("FAIL: {}", t.reason),
        Verdict::Invalid => format!("INVALID: {}", t.reason),
    }
}

/// The table of every trial.
pub fn print_trials<W: Write>(w: &mut W, s: &SloJson) -> io::Result<()> {
    let name_w = s
        .targets
        .iter()
        .map(|t| t.info.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let extra = ![50.0, 99.0, 99.9].contains(&s.quantile);
    let q_head = if extra {
        format!("  {:>9}", format!("{} µs", quantile_name(s.quantile)))
    } else {
        String::new()
    };
    writeln!(
        w,
        "  {:<name_w$}  {:>3}  {:>11}  {:>11}  {:>9}  {:>9}  {:>9}{q_head}  {:>11}  verdict",
        "target", "#", "offered/s", "achieved/s", "p50 µs", "p99 µs", "p99.9 µs", "late p99 µs"
    )?;
    for t in &s.targets {
        for x in &t.trials {
            let q = if extra {
                format!("  {:>9.1}", x.quantile_us)
            } else {
                String::new()
            };
            let late = x
                .client
                .send_lateness
                .as_ref()
                .map_or_else(|| "-".into(), |l| format!("{:.1}", l.p99_us));
            writeln!(
                w,
                "  {:<name_w$}  {:>3}  {:>11.1}  {:>11.1}  {:>9.1}  {:>9.1}  {:>9.1}{q}  {late:>11}  {}",
                t.info.name,
                x.trial,
                x.offered_rate,
                x.achieved_rate,
                x.p50_us,
                x.p99_us,
                x.p999_us,
                verdict_text(x)
            )?;
        }
    }
    Ok(())
}

/// The bounds of every target, the comparison, and a loud line per search that stopped
/// before its goal.
pub fn print_bounds<W: Write>(w: &mut W, s: &SloJson) -> io::Result<()> {
    let slo = slo_text(s.quantile, s.max_latency_us);
    writeln!(
        w,
        "== highest rate at {slo}: lower bound (passed) .. upper bound (failed)"
    )?;
    let name_w = s
        .targets
        .iter()
        .map(|t| t.info.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    for t in &s.targets {
        let invalid = t
            .trials
            .iter()
            .filter(|x| x.verdict == Verdict::Invalid)
            .count();
        let width = t
            .precision_reached
            .map(|p| {
                format!(
                    "width {:.1}%, goal {:.1}%; ",
                    p * 100.0,
                    s.precision_goal * 100.0
                )
            })
            .unwrap_or_default();
        let unmeasurable = t
            .rates
            .iter()
            .filter(|r| r.decision == Decision::Unmeasurable)
            .map(|r| r.rate)
            .reduce(f64::min)
            .map(|r| format!("; client-bound from {} msgs/s", fmt_rate(r)))
            .unwrap_or_default();
        writeln!(
            w,
            "  {:<name_w$}  {} msgs/s  ({width}{}; {} trials, {invalid} invalid{unmeasurable})",
            t.info.name,
            bounds_text(t),
            t.stop_reason.describe(),
            t.trials.len()
        )?;
    }
    for c in &s.comparisons {
        writeln!(w, "== {}", c.text)?;
    }
    for t in s.targets.iter().filter(|t| !t.goal_reached) {
        writeln!(
            w,
            "WARNING: {}: the search did not reach its precision goal ({}); bounds: {} msgs/s",
            t.info.name,
            t.stop_reason.describe(),
            bounds_text(t)
        )?;
    }
    for t in &s.targets {
        if let Some(c) = &t.contradiction {
            writeln!(w, "WARNING: {}", contradiction_text(&t.info.name, c))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, lo: Option<f64>, hi: Option<f64>) -> SloTargetJson {
        SloTargetJson {
            info: TargetInfo {
                name: name.into(),
                address: "127.0.0.1:1".into(),
                spawn_command: None,
                server_summary: None,
                server_features: None,
                server_pid: None,
            },
            saturation_probe_msgs_per_s: None,
            start_rate: 1.0,
            max_rate_lower: lo,
            max_rate_upper: hi,
            precision_reached: None,
            goal_reached: true,
            stop_reason: StopReason::PrecisionReached,
            rates: Vec::new(),
            trials: Vec::new(),
            contradiction: None,
        }
    }

    fn trial(offered_rate: f64, verdict: Verdict) -> SloTrial {
        SloTrial {
            trial: 1,
            offered_rate,
            achieved_rate: offered_rate,
            completed_rate: offered_rate,
            measure_start: String::new(),
            duration_s: 1.0,
            messages: 1000,
            overdue: 0,
            p50_us: 10.0,
            p99_us: 100.0,
            p999_us: 200.0,
            quantile_us: 100.0,
            over_slo: 0,
            verdict,
            reason: String::new(),
            client: ClientCheck::default(),
        }
    }

    fn rate(rate: f64, decision: Decision) -> RateRecord {
        RateRecord {
            rate,
            passes: 0,
            fails: 0,
            invalid: 0,
            decision,
        }
    }

    #[test]
    fn a_pass_far_above_a_failed_rate_is_a_contradiction_and_said_loudly() {
        // The run that motivated it: one trial passed at 75,095 msgs/s, then 15,019 failed.
        let rates = [
            rate(75_095.0, Decision::Unmeasurable),
            rate(15_019.0, Decision::Fail),
        ];
        let trials = [
            trial(75_095.0, Verdict::Pass),
            trial(75_095.0, Verdict::Invalid),
            trial(15_019.0, Verdict::Fail),
            trial(15_019.0, Verdict::Fail),
        ];
        let c = find_contradiction(&rates, &trials, 0.05).unwrap();
        assert_eq!((c.passed_rate, c.failed_rate), (75_095.0, 15_019.0));

        let mut ms = target("uring-multishot", None, Some(15_019.0));
        ms.contradiction = Some(c);
        let epoll = target("epoll", Some(38_199.0), Some(46_711.0));
        let cmp = compare_bounds(&epoll, &ms, "p99 ≤ 1000 µs");
        assert!(
            cmp.text
                .ends_with("; but uring-multishot's trials contradict each other: not trustworthy"),
            "{}",
            cmp.text
        );
        let s = SloJson {
            quantile: 99.0,
            max_latency_us: 1000.0,
            precision_goal: 0.05,
            trials_per_rate: 3,
            passes_needed: 2,
            max_invalid_per_rate: 3,
            trial_duration_s: 1.0,
            warmup_s: 0.25,
            max_time_s: 200.0,
            elapsed_s: 200.0,
            stopped_early: false,
            targets: vec![ms, epoll],
            comparisons: vec![cmp],
        };
        let mut out = Vec::new();
        print_bounds(&mut out, &s).unwrap();
        let out = String::from_utf8(out).unwrap();
        let loud: Vec<_> = out.lines().filter(|l| l.contains("contradict")).collect();
        assert_eq!(loud.len(), 2, "{out}"); // the comparison and one WARNING
        assert!(loud[1].starts_with(
            "WARNING: uring-multishot: the trials contradict each other: one passed at 75095 \
             msgs/s, yet 15019 msgs/s failed"
        ));
    }

    #[test]
    fn the_knees_own_scatter_is_no_contradiction() {
        // Within twice the goal (10% at 5%) of the failed rate, or no pass above it: normal.
        let rates = [
            rate(40_000.0, Decision::Pass),
            rate(44_000.0, Decision::Fail),
        ];
        let near = [
            trial(40_000.0, Verdict::Pass),
            trial(44_000.0, Verdict::Fail),
            trial(44_000.0, Verdict::Pass),
            trial(48_000.0, Verdict::Pass),
        ];
        assert_eq!(find_contradiction(&rates, &near, 0.05), None);
        let far = [trial(48_500.0, Verdict::Pass)];
        assert!(find_contradiction(&rates, &far, 0.05).is_some());
        // A wider goal widens what counts as scatter.
        assert_eq!(find_contradiction(&rates, &far, 0.10), None);
        // No failed rate, or no pass at all: nothing to contradict.
        assert_eq!(
            find_contradiction(&[rate(1.0, Decision::Pass)], &far, 0.05),
            None
        );
        assert_eq!(find_contradiction(&rates, &[], 0.05), None);
    }

    #[test]
    fn disjoint_bounds_are_a_difference_in_plain_words() {
        let epoll = target("epoll", Some(40_000.0), Some(42_000.0));
        let ms = target("uring-multishot", Some(48_000.0), Some(50_000.0));
        let c = compare_bounds(&ms, &epoll, "p99 ≤ 500 µs");
        assert_eq!(c.outcome, "higher");
        assert!(
            c.text
                .starts_with("uring-multishot sustains 1.20× epoll's rate at p99 ≤ 500 µs")
                && c.text.ends_with("bounds do not overlap"),
            "{}",
            c.text
        );
        assert!((c.ratio_lo.unwrap() - 48.0 / 42.0).abs() < 1e-12);
        assert!((c.ratio_hi.unwrap() - 50.0 / 40.0).abs() < 1e-12);
        let back = compare_bounds(&epoll, &ms, "p99 ≤ 500 µs");
        assert_eq!(back.outcome, "lower");
    }

    #[test]
    fn overlapping_or_open_bounds_show_no_difference() {
        let a = target("a", Some(40_000.0), Some(45_000.0));
        let b = target("b", Some(43_000.0), Some(47_000.0));
        let c = compare_bounds(&b, &a, "p99 ≤ 1 ms");
        assert_eq!(c.outcome, "overlap");
        assert!(c.text.contains("no difference shown"), "{}", c.text);
        // b passed up to 50k, a failed at 45k: higher, however high b goes
        let open = target("b", Some(50_000.0), None);
        let c = compare_bounds(&open, &a, "p99 ≤ 1 ms");
        assert_eq!(c.outcome, "higher");
        assert!(c.text.contains("at least 1.11×"), "{}", c.text);
    }
}
