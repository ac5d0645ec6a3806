//! Statistics for comparing targets over interleaved rounds, and the comparison built from them
//! ([`comparison`]), for live runs and saved reports alike.
//!
//! Rounds are interleaved (every round runs every target once, in a freshly shuffled order) so
//! that slow drifts of the machine (thermal, other tenants) hit all targets alike. Per target
//! we report the **median** over rounds with a **spread**:
//!
//! * fewer than 5 rounds: `[min, max]`;
//! * 5 rounds or more: a distribution-free confidence interval for the median from order
//!   statistics: `[x(k), x(n+1-k)]` of the sorted samples, with the largest `k` for which the
//!   coverage `1 - 2·P(Binomial(n, ½) ≤ k-1)` is still at least 95%. With n = 5 no interval
//!   reaches 95%, so `[min, max]` is used and its actual coverage (93.75%) is reported; n = 6..8
//!   also give `[min, max]` (≥96.9%), n = 9 gives `[x(2), x(8)]` (96.1%), n = 20 gives
//!   `[x(6), x(15)]` (95.9%).
//!
//! Ratios against the first target are computed **per round** (target / baseline in the same
//! round, which cancels drift between rounds) and summarised the same way: median and spread.
//! A ratio is labelled **not significant** when its spread contains 1.0 (lo ≤ 1 ≤ hi). With
//! fewer than 3 rounds no label is given (`n/a`): a min–max range of two samples says too
//! little. With 3 or 4 rounds the label is the min–max test, which under "no difference"
//! still comes out "significant" with probability 2·2⁻ⁿ (25% for n = 3, 12.5% for n = 4) —
//! use ≥ 5 rounds for decisions.
//!
//! [`verdict`] says the outcome in plain words (which target leads, and whether beyond the
//! noise) from these same figures.

pub mod saved;
pub mod verdict;

use serde::{Deserialize, Deserializer, Serialize};

use crate::report::RoundRecord;

/// Target coverage of the order-statistic interval.
pub const CONFIDENCE: f64 = 0.95;
/// Rounds from which the order-statistic interval is used.
pub const MIN_ROUNDS_FOR_CI: usize = 5;
/// Rounds from which ratios get a significance label.
pub const MIN_ROUNDS_FOR_SIGNIFICANCE: usize = 3;

/// Median of `xs` (mean of the two middle values for even counts). `NaN` when empty.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `P(Binomial(n, 1/2) <= k)`.
pub fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    let mut sum = 0.0;
    let mut c = 1.0f64; // C(n, 0)
    for i in 0..=k.min(n) {
        if i > 0 {
            c = c * (n - i + 1) as f64 / i as f64;
        }
        sum += c;
    }
    sum / 2f64.powi(n as i32)
}

/// For `n` samples: the order-statistic index `k` (1-based) of the median interval
/// `[x(k), x(n+1-k)]` and its coverage. `k` is the largest with coverage ≥ [`CONFIDENCE`], or
/// 1 (min–max) when even that falls short.
pub fn median_ci_rank(n: usize) -> (usize, f64) {
    let coverage = |k: usize| 1.0 - 2.0 * binomial_half_cdf(n, k - 1);
    let mut best = 1;
    let mut k = 2;
    while 2 * k <= n + 1 && coverage(k) >= CONFIDENCE {
        best = k;
        k += 1;
    }
    (best, if n == 0 { 0.0 } else { coverage(best) })
}

/// How a spread was computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpreadMethod {
    /// `[min, max]` (fewer than 5 rounds).
    MinMax,
    /// Order-statistic confidence interval of the median.
    MedianCi,
}

/// Median and spread of a set of per-round samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    #[serde(deserialize_with = "nan_if_null")]
    pub median: f64,
    /// Lower end of the spread.
    #[serde(deserialize_with = "nan_if_null")]
    pub lo: f64,
    /// Upper end of the spread.
    #[serde(deserialize_with = "nan_if_null")]
    pub hi: f64,
    /// Smallest sample.
    #[serde(deserialize_with = "nan_if_null")]
    pub min: f64,
    /// Largest sample.
    #[serde(deserialize_with = "nan_if_null")]
    pub max: f64,
    /// How `lo`/`hi` were computed.
    pub method: SpreadMethod,
    /// Coverage of the interval (order-statistic method only).
    pub coverage: Option<f64>,
    /// The samples, in round order.
    pub samples: Vec<f64>,
}

/// JSON has no NaN: serde_json writes the NaN of an empty summary as `null`; read it back as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Summarise per-round samples.
pub fn summarize(samples: &[f64]) -> Summary {
    let n = samples.len();
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (min, max) = match (sorted.first(), sorted.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => (f64::NAN, f64::NAN),
    };
    let (lo, hi, method, coverage) = if n >= MIN_ROUNDS_FOR_CI {
        let (k, cov) = median_ci_rank(n);
        (
            sorted[k - 1],
            sorted[n - k],
            SpreadMethod::MedianCi,
            Some(cov),
        )
    } else {
        (min, max, SpreadMethod::MinMax, None)
    };
    Summary {
        n,
        median: median(samples),
        lo,
        hi,
        min,
        max,
        method,
        coverage,
        samples: samples.to_vec(),
    }
}

/// Whether a ratio differs from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Significance {
    /// Fewer than 3 rounds.
    TooFewRounds,
    /// The spread contains 1.0.
    NotSignificant,
    /// The spread excludes 1.0.
    Significant,
}

impl Significance {
    /// Label used in the text table.
    pub fn label(self) -> &'static str {
        match self {
            Significance::TooFewRounds => "n/a (<3 rounds)",
            Significance::NotSignificant => "not significant",
            Significance::Significant => "significant",
        }
    }
}

/// Label a ratio summary (see the module docs).
pub fn significance(ratio: &Summary) -> Significance {
    if ratio.n < MIN_ROUNDS_FOR_SIGNIFICANCE {
        Significance::TooFewRounds
    } else if ratio.lo <= 1.0 && 1.0 <= ratio.hi {
        Significance::NotSignificant
    } else {
        Significance::Significant
    }
}

/// Per-round ratios `values[i] / baseline[i]`, skipping rounds where either is missing or the
/// baseline is zero.
pub fn per_round_ratios(values: &[Option<f64>], baseline: &[Option<f64>]) -> Vec<f64> {
    values
        .iter()
        .zip(baseline)
        .filter_map(|(v, b)| match (v, b) {
            (Some(v), Some(b)) if *b > 0.0 && v.is_finite() => Some(v / b),
            _ => None,
        })
        .collect()
}

/// Ratio of a target against the first one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatioJson {
    /// Median/spread of the per-round ratios.
    #[serde(flatten)]
    pub summary: Summary,
    /// Significance label.
    pub significance: Significance,
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    /// Target name.
    pub name: String,
    /// Messages per second over rounds.
    pub msgs_per_s: Summary,
    /// Ratio of msgs/s vs the baseline (null for the baseline itself).
    pub msgs_per_s_ratio: Option<RatioJson>,
    /// Server CPU ns per message over rounds (spawned servers).
    pub server_cpu_ns_per_msg: Option<Summary>,
    /// Ratio of server CPU per message vs the baseline.
    pub server_cpu_ratio: Option<RatioJson>,
    /// p99 latency (µs) over rounds.
    pub p99_us: Summary,
}

/// The comparison section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonJson {
    /// Name of the first target (ratios are relative to it).
    pub baseline: String,
    /// Rounds.
    pub rounds: usize,
    /// Rows, in target order.
    pub rows: Vec<CompareRow>,
}

/// One target's per-round records, as the comparison reads them: from a live run
/// ([`crate::report::TargetRun`]) or from a saved report ([`crate::report::TargetJson`]).
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// Target name (the row label).
    pub name: &'a str,
    /// Its rounds; `round` numbers pair them with the baseline's.
    pub rounds: &'a [RoundRecord],
}

/// Build the comparison of `targets` against the first one (needs more than one target or
/// more than one round). Rounds are paired by their `round` number.
pub fn comparison(targets: &[Series<'_>]) -> Option<ComparisonJson> {
    let rounds = targets.iter().map(|t| t.rounds.len()).max().unwrap_or(0);
    if targets.is_empty() || (targets.len() < 2 && rounds < 2) {
        return None;
    }
    let per_round = |t: &Series<'_>, f: &dyn Fn(&RoundRecord) -> Option<f64>| -> Vec<Option<f64>> {
        (1..=rounds)
            .map(|r| t.rounds.iter().find(|x| x.round == r).and_then(f))
            .collect()
    };
    let rate = |r: &RoundRecord| Some(r.msgs_per_s);
    let cpu = |r: &RoundRecord| r.server_cpu_ns_per_msg;
    let base_rate = per_round(&targets[0], &rate);
    let base_cpu = per_round(&targets[0], &cpu);
    let rows = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let rates = per_round(t, &rate);
            let cpus = per_round(t, &cpu);
            let cpu_samples: Vec<f64> = cpus.iter().flatten().copied().collect();
            let ratio = |v: &[Option<f64>], b: &[Option<f64>]| {
                let r = per_round_ratios(v, b);
                (!r.is_empty()).then(|| {
                    let summary = summarize(&r);
                    RatioJson {
                        significance: significance(&summary),
                        summary,
                    }
                })
            };
            CompareRow {
                name: t.name.to_string(),
                msgs_per_s: summarize(&rates.iter().flatten().copied().collect::<Vec<_>>()),
                msgs_per_s_ratio: if i == 0 {
                    None
                } else {
                    ratio(&rates, &base_rate)
                },
                server_cpu_ns_per_msg: (!cpu_samples.is_empty()).then(|| summarize(&cpu_samples)),
                server_cpu_ratio: if i == 0 {
                    None
                } else {
                    ratio(&cpus, &base_cpu)
                },
                p99_us: summarize(&t.rounds.iter().map(|r| r.p99_us).collect::<Vec<_>>()),
            }
        })
        .collect();
    Some(ComparisonJson {
        baseline: targets[0].name.to_string(),
        rounds,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn binomial_cdf() {
        assert!((binomial_half_cdf(5, 0) - 1.0 / 32.0).abs() < 1e-12);
        assert!((binomial_half_cdf(5, 5) - 1.0).abs() < 1e-12);
        assert!((binomial_half_cdf(10, 1) - 11.0 / 1024.0).abs() < 1e-12);
    }

    #[test]
    fn order_statistic_ranks_match_published_tables() {
        // n = 5: no 95% interval exists; min-max covers 1 - 2/32.
        let (k, cov) = median_ci_rank(5);
        assert_eq!(k, 1);
        assert!((cov - 0.9375).abs() < 1e-12);
        assert_eq!(median_ci_rank(6).0, 1);
        assert_eq!(median_ci_rank(8).0, 1);
        assert_eq!(median_ci_rank(9).0, 2);
        assert!((median_ci_rank(9).1 - (1.0 - 2.0 * 10.0 / 512.0)).abs() < 1e-12);
        assert_eq!(median_ci_rank(20).0, 6);
        for n in 6..60 {
            let (k, cov) = median_ci_rank(n);
            assert!(cov >= CONFIDENCE, "n={n}");
            // k+1 would fall below 95%
            assert!(1.0 - 2.0 * binomial_half_cdf(n, k) < CONFIDENCE, "n={n}");
        }
    }

    #[test]
    fn summaries_use_min_max_below_five_rounds_and_ci_above() {
        let s = summarize(&[10.0, 30.0, 20.0]);
        assert_eq!((s.median, s.lo, s.hi), (20.0, 10.0, 30.0));
        assert_eq!(s.method, SpreadMethod::MinMax);
        let xs: Vec<f64> = (1..=9).map(f64::from).collect();
        let s = summarize(&xs);
        assert_eq!((s.median, s.lo, s.hi), (5.0, 2.0, 8.0));
        assert_eq!(s.method, SpreadMethod::MedianCi);
        assert_eq!((s.min, s.max), (1.0, 9.0));
    }

    #[test]
    fn ratios_and_significance() {
        let base = [
            Some(100.0),
            Some(100.0),
            Some(100.0),
            Some(100.0),
            Some(100.0),
        ];
        let faster = [
            Some(110.0),
            Some(112.0),
            Some(108.0),
            Some(111.0),
            Some(109.0),
        ];
        let r = summarize(&per_round_ratios(&faster, &base));
        assert!((r.median - 1.10).abs() < 1e-9);
        assert_eq!(significance(&r), Significance::Significant);

        let noisy = [
            Some(95.0),
            Some(104.0),
            Some(101.0),
            Some(99.0),
            Some(103.0),
        ];
        let r = summarize(&per_round_ratios(&noisy, &base));
        assert_eq!(significance(&r), Significance::NotSignificant);

        let r = summarize(&per_round_ratios(&faster[..2], &base[..2]));
        assert_eq!(significance(&r), Significance::TooFewRounds);

        // missing or zero baselines are skipped
        assert_eq!(
            per_round_ratios(
                &[Some(1.0), Some(2.0), None],
                &[Some(0.0), Some(1.0), Some(1.0)]
            ),
            vec![2.0]
        );
    }

    #[test]
    fn summaries_round_trip_through_json_even_when_empty() {
        let full = summarize(&[1.5, 0.1 + 0.2, 7.0]);
        let text = serde_json::to_string(&full).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&text).unwrap(), full);
        let empty = summarize(&[]);
        let text = serde_json::to_string(&empty).unwrap();
        assert!(text.contains("\"median\":null"), "{text}");
        let back: Summary = serde_json::from_str(&text).unwrap();
        assert!(back.median.is_nan() && back.lo.is_nan() && back.n == 0);
    }

    #[test]
    fn a_ratio_equal_to_one_at_the_edge_is_not_significant() {
        let r = summarize(&[1.0, 1.1, 1.2]);
        assert_eq!(significance(&r), Significance::NotSignificant);
    }
}
