//! The search for one target's highest rate that meets the SLO, as a state machine fed with
//! trial verdicts: [`Search::next_rate`] says what to try, [`Search::record`] takes the
//! verdict. No I/O here, so the rules are unit-tested against simulated servers.
//!
//! Rules (in the spirit of RFC 9971, MLRsearch):
//! * **A rate is decided by repeated trials.** It passes once `passes` valid trials passed; it
//!   fails once `trials - passes + 1` valid trials failed (then `passes` of `trials` can no
//!   longer pass). Invalid trials (the client was the bottleneck) count for neither; after
//!   `max_invalid` of them before a decision the rate is *unmeasurable*: the client cannot
//!   offer it, and it caps the search from above without being a failure.
//! * **Bounds.** The lower bound is the highest rate decided to pass below every rate decided
//!   to fail; the upper bound is the lowest rate decided to fail. Rates are only probed inside
//!   the current bracket, so the two never cross.
//! * **Bracketing** (no bound on one side yet): from the start rate, step away by a relative
//!   width that doubles after each step in the same direction (first step: twice the
//!   precision goal, at least 5%, at most 50%). **Bisection** (both sides): the geometric
//!   midpoint, until `(upper - lower) / upper` is at most the precision goal.
//! * **Stops**: the goal reached; the time budget spent (the driver calls [`Search::stop`]);
//!   the lowest probed rate failing (`fails_at_min_rate`); passing at the highest accepted rate
//!   (`passes_at_max_rate`); or the unmeasurable rates closing in on the lower bound
//!   (`client_limit`: the answer is above the lower bound, but this client cannot show how far).

use serde::{Deserialize, Serialize};

/// How the search is run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchParams {
    /// Relative width goal: stop when `(upper - lower) / upper <= precision`.
    pub precision: f64,
    /// Valid trials that may be needed to decide a rate (`n`).
    pub trials: usize,
    /// Passing trials that make a rate pass (`k`).
    pub passes: usize,
    /// Invalid trials that make a rate unmeasurable.
    pub max_invalid: usize,
    /// Lowest rate the search probes.
    pub min_rate: f64,
    /// Highest rate the search probes.
    pub max_rate: f64,
}

impl SearchParams {
    fn first_step(&self) -> f64 {
        (2.0 * self.precision).clamp(0.05, 0.5)
    }
}

/// What one trial showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Valid, and the latency quantile met the SLO at the offered rate.
    Pass,
    /// Valid, and the SLO was missed (or the server did not sustain the rate).
    Fail,
    /// The client was the bottleneck: says nothing about the server.
    Invalid,
}

/// What a probed rate turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// `passes` valid trials passed.
    Pass,
    /// Too many valid trials failed for `passes` to be reached.
    Fail,
    /// `max_invalid` trials were invalid first.
    Unmeasurable,
    /// The search stopped before the rate was decided.
    Undecided,
}

/// Why the search of a target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Both bounds found, within the precision goal.
    PrecisionReached,
    /// `--max-time` ran out first.
    MaxTime,
    /// Rates above the lower bound could not be measured (client-bound trials).
    ClientLimit,
    /// The lowest rate probed failed: no rate meets the SLO that this search can judge.
    FailsAtMinRate,
    /// The highest accepted rate passed.
    PassesAtMaxRate,
    /// A trial had connection or verification errors.
    Errors,
}

impl StopReason {
    /// Plain-words description.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::PrecisionReached => "precision goal reached",
            StopReason::MaxTime => "stopped by --max-time before the precision goal",
            StopReason::ClientLimit => {
                "stopped: the client could not offer higher rates (client-bound trials), so the \
                 upper bound is out of its reach"
            }
            StopReason::FailsAtMinRate => "stopped: even the lowest rate probed fails the SLO",
            StopReason::PassesAtMaxRate => "stopped: the highest accepted rate passes",
            StopReason::Errors => "stopped by connection or verification errors",
        }
    }
}

/// Trials at one probed rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateRecord {
    /// Offered rate, messages/s.
    pub rate: f64,
    /// Valid trials that passed.
    pub passes: usize,
    /// Valid trials that failed.
    pub fails: usize,
    /// Invalid trials.
    pub invalid: usize,
    /// The outcome.
    pub decision: Decision,
}

/// The search state of one target.
#[derive(Debug, Clone)]
pub struct Search {
    params: SearchParams,
    lower: Option<f64>,
    upper: Option<f64>,
    ceiling: Option<f64>,
    /// Relative step of the bracketing phase, and its direction (+1 up, -1 down).
    step: f64,
    direction: i8,
    rates: Vec<RateRecord>,
    stop: Option<StopReason>,
}

fn width(lo: f64, hi: f64) -> f64 {
    (hi - lo) / hi
}

impl Search {
    /// A search starting at `start_rate` (clamped into the accepted range).
    pub fn new(start_rate: f64, params: SearchParams) -> Search {
        let start = start_rate.clamp(params.min_rate, params.max_rate);
        Search {
            params,
            lower: None,
            upper: None,
            ceiling: None,
            step: params.first_step(),
            direction: 0,
            rates: vec![RateRecord {
                rate: start,
                passes: 0,
                fails: 0,
                invalid: 0,
                decision: Decision::Undecided,
            }],
            stop: None,
        }
    }

    /// The rate to run the next trial at, or `None` once the search has stopped.
    pub fn next_rate(&self) -> Option<f64> {
        match self.stop {
            Some(_) => None,
            None => self.rates.last().map(|r| r.rate),
        }
    }

    /// Highest rate shown to pass (below the upper bound).
    pub fn lower(&self) -> Option<f64> {
        self.lower
    }

    /// Lowest rate shown to fail.
    pub fn upper(&self) -> Option<f64> {
        self.upper
    }

    /// `(upper - lower) / upper` when both bounds are known.
    pub fn width(&self) -> Option<f64> {
        Some(width(self.lower?, self.upper?))
    }

    /// Why the search stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// Every probed rate, in probing order.
    pub fn rates(&self) -> &[RateRecord] {
        &self.rates
    }

    /// Stop the search from outside (time budget, errors).
    pub fn stop(&mut self, reason: StopReason) {
        self.stop.get_or_insert(reason);
    }

    /// Take the verdict of a trial at [`Self::next_rate`].
    pub fn record(&mut self, verdict: Verdict) {
        if self.stop.is_some() {
            return;
        }
        let p = self.params;
        let current = self.rates.last_mut().expect("a current rate");
        match verdict {
            Verdict::Pass => current.passes += 1,
            Verdict::Fail => current.fails += 1,
            Verdict::Invalid => current.invalid += 1,
        }
        let decision = if current.passes >= p.passes {
            Decision::Pass
        } else if current.fails > p.trials - p.passes {
            Decision::Fail
        } else if current.invalid >= p.max_invalid {
            Decision::Unmeasurable
        } else {
            return;
        };
        current.decision = decision;
        let rate = current.rate;
        match decision {
            Decision::Pass => self.lower = Some(self.lower.map_or(rate, |l| l.max(rate))),
            Decision::Fail => self.upper = Some(self.upper.map_or(rate, |u| u.min(rate))),
            Decision::Unmeasurable => {
                self.ceiling = Some(self.ceiling.map_or(rate, |c| c.min(rate)))
            }
            Decision::Undecided => unreachable!("decided above"),
        }
        self.choose_next(rate, decision);
    }

    fn choose_next(&mut self, last: f64, decision: Decision) {
        let p = self.params;
        // The top of the bracket: a failure, or a rate the client cannot offer.
        let top = match (self.upper, self.ceiling) {
            (Some(u), Some(c)) => Some(u.min(c)),
            (u, c) => u.or(c),
        };
        let top_is_upper = top.is_some() && top == self.upper;
        let next = match (self.lower, top) {
            (Some(lo), Some(hi)) => {
                if width(lo, hi) <= p.precision {
                    self.stop = Some(if top_is_upper {
                        StopReason::PrecisionReached
                    } else {
                        StopReason::ClientLimit
                    });
                    return;
                }
                (lo * hi).sqrt()
            }
            (None, Some(hi)) => {
                if last <= p.min_rate {
                    self.stop = Some(if decision == Decision::Fail {
                        StopReason::FailsAtMinRate
                    } else {
                        StopReason::ClientLimit
                    });
                    return;
                }
                self.advance(-1);
                (hi * (1.0 - self.step)).max(p.min_rate)
            }
            (Some(lo), None) => {
                if last >= p.max_rate {
                    self.stop = Some(StopReason::PassesAtMaxRate);
                    return;
                }
                self.advance(1);
                (lo * (1.0 + self.step)).min(p.max_rate)
            }
            (None, None) => unreachable!("a decided rate sets a bound or the ceiling"),
        };
        self.rates.push(RateRecord {
            rate: next,
            passes: 0,
            fails: 0,
            invalid: 0,
            decision: Decision::Undecided,
        });
    }

    /// One more bracketing step in `direction`: the step doubles when it continues the last
    /// one.
    fn advance(&mut self, direction: i8) {
        if self.direction == direction {
            self.step = (self.step * 2.0).min(0.9);
        } else {
            self.step = self.params.first_step();
        }
        self.direction = direction;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(precision: f64) -> SearchParams {
        SearchParams {
            precision,
            trials: 3,
            passes: 2,
            max_invalid: 3,
            min_rate: 10.0,
            max_rate: 1e9,
        }
    }

    /// Run a search against a deterministic server that passes every trial below `knee`.
    fn run(start: f64, knee: f64, precision: f64) -> Search {
        let mut s = Search::new(start, params(precision));
        for _ in 0..1000 {
            let Some(r) = s.next_rate() else { break };
            s.record(if r < knee {
                Verdict::Pass
            } else {
                Verdict::Fail
            });
        }
        s
    }

    #[test]
    fn brackets_the_knee_from_above_and_below_and_tightens_with_precision() {
        for start in [50_000.0, 500.0, 1e6] {
            for precision in [0.2, 0.05, 0.01] {
                let s = run(start, 12_345.0, precision);
                assert_eq!(s.stop_reason(), Some(StopReason::PrecisionReached));
                let (lo, hi) = (s.lower().unwrap(), s.upper().unwrap());
                assert!(lo < 12_345.0 && 12_345.0 <= hi, "{lo} {hi}");
                assert!(s.width().unwrap() <= precision);
            }
        }
    }

    #[test]
    fn k_of_n_decides_and_invalid_trials_count_for_neither() {
        let mut s = Search::new(1000.0, params(0.1));
        s.record(Verdict::Pass);
        s.record(Verdict::Invalid);
        s.record(Verdict::Fail);
        assert_eq!(s.rates()[0].decision, Decision::Undecided);
        s.record(Verdict::Pass);
        assert_eq!(s.rates()[0].decision, Decision::Pass);
        assert_eq!(s.lower(), Some(1000.0));
        assert_eq!(s.next_rate(), Some(1200.0), "first step up: 2 × 10%");
        s.record(Verdict::Fail);
        s.record(Verdict::Pass);
        s.record(Verdict::Fail);
        assert_eq!(
            s.rates()[1].decision,
            Decision::Fail,
            "2 fails: 2 of 3 cannot pass"
        );
        assert_eq!(s.upper(), Some(1200.0));
    }

    #[test]
    fn unmeasurable_rates_cap_the_search_without_failing_it() {
        // passes everywhere, but the client cannot offer more than 5000/s
        let mut s = Search::new(1000.0, params(0.05));
        for _ in 0..1000 {
            let Some(r) = s.next_rate() else { break };
            s.record(if r > 5000.0 {
                Verdict::Invalid
            } else {
                Verdict::Pass
            });
        }
        assert_eq!(s.stop_reason(), Some(StopReason::ClientLimit));
        assert_eq!(s.upper(), None, "no failure was ever shown");
        let lo = s.lower().unwrap();
        assert!((5000.0 * 0.9..=5000.0).contains(&lo), "{lo}");
    }

    #[test]
    fn a_client_that_cannot_measure_anything_stops_at_the_minimum() {
        let mut s = Search::new(1000.0, params(0.05));
        let mut n = 0;
        while s.next_rate().is_some() {
            s.record(Verdict::Invalid);
            n += 1;
            assert!(n < 1000);
        }
        assert_eq!(s.stop_reason(), Some(StopReason::ClientLimit));
        assert_eq!((s.lower(), s.upper()), (None, None));
    }

    #[test]
    fn failing_everywhere_stops_at_the_minimum_rate() {
        let s = run(1000.0, 0.0, 0.05);
        assert_eq!(s.stop_reason(), Some(StopReason::FailsAtMinRate));
        assert_eq!(s.rates().last().unwrap().rate, 10.0);
        assert_eq!(s.lower(), None);
    }

    #[test]
    fn bracketing_steps_double() {
        let s = run(100_000.0, 1.0e3, 0.05);
        let r: Vec<f64> = s.rates().iter().map(|r| r.rate).take(4).collect();
        // fail at 100k, then down by 10%, 20%, 40% of the last failure
        assert_eq!(r[1], 90_000.0);
        assert!((r[2] - 72_000.0).abs() < 1e-6);
        assert!((r[3] - 43_200.0).abs() < 1e-6);
    }
}
