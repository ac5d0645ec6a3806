//! Was the client the bottleneck? Every trial answers it from two kinds of evidence, so that
//! a result that measured echo-bench rather than the server says so.
//!
//! * **Client threads' CPU demand** (every run): for each client thread, the time it spent on
//!   a CPU plus the time it spent runnable but waiting for one (`/proc/self/task/<tid>/schedstat`),
//!   as a fraction of the measured window. A thread that was running or waiting to run for at
//!   least [`BUSY_LIMIT`] of the window had no slack: whether its own work filled the CPU or
//!   another process took it, the load was paced by the client. Not applied with `--busy-poll`,
//!   whose threads are always running by design, nor to a thread whose open-loop pacer spun
//!   for more than [`SPIN_LIMIT`] of the window (at high per-thread rates the next send is
//!   always less than [`crate::pacer::SPIN_NS`] away, so the thread never sleeps: 100% busy at
//!   a rate it sustains easily); there only the lateness counts.
//! * **Send lateness** (open loop): actual send time − intended send time, for messages that
//!   became due while their connection had room to send (a message held back by a full
//!   pipeline waits for the server, not for the client). The client is late when the p99
//!   exceeds [`lateness_limit_ns`]: `max(1 ms, 10 × the mean interval between the sends of one
//!   client thread)` — a client that keeps up is late by its wake-up time (µs to a few hundred
//!   µs); one that cannot keep up falls further behind with every send. `slo` lowers the limit
//!   to a share of its latency bound ([`crate::slo::SLO_LATENESS_SHARE`]).
//! * **Wake-up lateness** (open loop): how late each client thread's 1 ms probe tick ran
//!   ([`crate::pacer`]), judged against the same limit. A client too slow to read its echoes
//!   keeps every pipeline full, so its sends are all "held" and escape the send lateness, and
//!   its threads may still sleep part of the time (waiting for echoes it has not read yet is
//!   not CPU demand); its reaction delay is what shows it.
//!
//! Open loop, the per-interval rates are checked as well: every rate interval of the measured
//! window whose completed messages differ from its intended ones by more than
//! [`RATE_INTERVAL_TOLERANCE`] (and by more than [`RATE_INTERVAL_SLACK`] messages, so that
//! rounding one message at low rates is not reported) is listed. That is a symptom, not a
//! verdict: a slow server shows the same.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::record::RateCounts;
use crate::report::us;

/// A client thread running or waiting for a CPU this fraction of the window was saturated.
pub const BUSY_LIMIT: f64 = 0.95;
/// A thread whose pacer spun more than this fraction of the window is not judged by its CPU
/// share (only by lateness), like a `--busy-poll` thread.
pub const SPIN_LIMIT: f64 = 0.05;
/// The send-lateness p99 limit is never below this.
pub const LATENESS_FLOOR_NS: u64 = 1_000_000;
/// ... and otherwise this many of a client thread's mean send intervals.
pub const LATENESS_SEND_INTERVALS: f64 = 10.0;
/// A rate interval is listed when achieved and intended differ by more than this fraction...
pub const RATE_INTERVAL_TOLERANCE: f64 = 0.01;
/// ... and by more than this many messages.
pub const RATE_INTERVAL_SLACK: u64 = 2;

/// The send-lateness p99 above which the client was behind its schedule, for `rate` messages
/// per second spread over `threads` client threads.
pub fn lateness_limit_ns(rate: f64, threads: usize) -> u64 {
    let send_interval_ns = 1e9 * threads.max(1) as f64 / rate;
    LATENESS_FLOOR_NS.max((LATENESS_SEND_INTERVALS * send_interval_ns) as u64)
}

/// CPU demand of one client thread over the measured window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadLoad {
    /// Client thread index.
    pub thread: usize,
    /// Fraction of the window on a CPU.
    pub cpu: f64,
    /// Fraction of the window runnable but waiting for a CPU (null where not accounted).
    pub run_queue_wait: Option<f64>,
    /// `cpu + run_queue_wait`.
    pub busy: f64,
    /// Open loop: fraction of the window the thread's pacer spun, waiting for a send due in
    /// less than [`crate::pacer::SPIN_NS`] (null in closed loop). Above [`SPIN_LIMIT`] the
    /// thread was kept on its CPU by design, so `busy` is not evidence.
    #[serde(default)]
    pub spin: Option<f64>,
}

/// Send-lateness percentiles, µs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatenessSummary {
    /// Sends measured (due while their connection had room).
    pub count: u64,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Maximum, µs.
    pub max_us: f64,
}

impl LatenessSummary {
    /// Percentiles of `h` (ns); `None` when empty.
    pub fn of(h: &Histogram<u64>) -> Option<LatenessSummary> {
        (!h.is_empty()).then(|| LatenessSummary {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }
}

/// The verdict on one trial, with its evidence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientCheck {
    /// The client was the bottleneck.
    pub client_bound: bool,
    /// Why, one sentence per criterion that fired (empty when not bound).
    pub reasons: Vec<String>,
    /// `--busy-poll` was on (the CPU criterion is not applied).
    pub busy_poll: bool,
    /// Per client thread CPU demand (empty where it could not be read).
    pub threads: Vec<ThreadLoad>,
    /// Open loop: send lateness of the window's sends.
    pub send_lateness: Option<LatenessSummary>,
    /// Open loop: lateness of the client threads' probe ticks.
    pub wake_lateness: Option<LatenessSummary>,
    /// Open loop: the p99 lateness limit, µs.
    pub lateness_limit_us: Option<f64>,
}

impl ClientCheck {
    /// Judge a trial: `threads` from the window's edges, the send and wake-up `lateness`es and
    /// their `limit_ns` in open loop.
    pub fn judge(
        threads: Vec<ThreadLoad>,
        busy_poll: bool,
        lateness: Option<&Histogram<u64>>,
        wake_lateness: Option<&Histogram<u64>>,
        limit_ns: Option<u64>,
    ) -> ClientCheck {
        let mut reasons = Vec::new();
        if !busy_poll {
            if let Some(t) = threads
                .iter()
                .filter(|t| t.busy >= BUSY_LIMIT && t.spin.map_or(true, |s| s <= SPIN_LIMIT))
                .max_by(|a, b| a.busy.total_cmp(&b.busy))
            {
                let wait = t
                    .run_queue_wait
                    .map(|w| format!(", waiting for a CPU {:.0}%", w * 100.0))
                    .unwrap_or_default();
                reasons.push(format!(
                    "client thread {} was busy {:.0}% of the window (on a CPU {:.0}%{wait})",
                    t.thread,
                    t.busy * 100.0,
                    t.cpu * 100.0
                ));
            }
        }
        let mut judge_lateness = |h: Option<&Histogram<u64>>, what: &str| {
            let l = h.and_then(LatenessSummary::of)?;
            if let Some(limit) = limit_ns.filter(|limit| l.p99_us > us(*limit)) {
                reasons.push(format!(
                    "{what} {:.0} µs late at p99 (limit {:.0} µs)",
                    l.p99_us,
                    us(limit)
                ));
            }
            Some(l)
        };
        let send_lateness = judge_lateness(lateness, "sends left");
        let wake_lateness = judge_lateness(wake_lateness, "client threads reacted");
        ClientCheck {
            client_bound: !reasons.is_empty(),
            reasons,
            busy_poll,
            threads,
            send_lateness,
            wake_lateness,
            lateness_limit_us: limit_ns.map(us),
        }
    }

    /// The busiest thread's demand, if measured.
    pub fn max_busy(&self) -> Option<f64> {
        self.threads.iter().map(|t| t.busy).reduce(f64::max)
    }
}

/// One rate interval whose achieved rate differs from the intended one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateInterval {
    /// Interval number from the start of the measured window.
    pub index: usize,
    /// Start, seconds from the start of the measured window.
    pub start_s: f64,
    /// Length, s (the last interval may be shorter).
    pub length_s: f64,
    /// Messages/s intended (by intended send time).
    pub intended_per_s: f64,
    /// Messages/s completed.
    pub achieved_per_s: f64,
}

/// The intervals of `rates` (over a window of `window_ns`) whose completed count differs from
/// the intended one by more than the tolerance.
pub fn rate_intervals_off(rates: &RateCounts, window_ns: u64) -> Vec<RateInterval> {
    let mut off = Vec::new();
    for (i, (&intended, &done)) in rates.intended.iter().zip(&rates.completed).enumerate() {
        let start = i as u64 * rates.interval_ns;
        if start >= window_ns {
            break;
        }
        let len = rates.interval_ns.min(window_ns - start);
        let diff = intended.abs_diff(done);
        if diff > RATE_INTERVAL_SLACK && diff as f64 > RATE_INTERVAL_TOLERANCE * intended as f64 {
            let per_s = |n: u64| n as f64 * 1e9 / len as f64;
            off.push(RateInterval {
                index: i,
                start_s: start as f64 / 1e9,
                length_s: len as f64 / 1e9,
                intended_per_s: per_s(intended),
                achieved_per_s: per_s(done),
            });
        }
    }
    off
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::new_histogram;

    fn thread(busy: f64, wait: f64) -> ThreadLoad {
        ThreadLoad {
            thread: 0,
            cpu: busy - wait,
            run_queue_wait: Some(wait),
            busy,
            spin: None,
        }
    }

    #[test]
    fn lateness_limit_is_one_millisecond_or_ten_send_intervals() {
        assert_eq!(lateness_limit_ns(100_000.0, 1), 1_000_000);
        assert_eq!(lateness_limit_ns(1_000.0, 1), 10_000_000);
        assert_eq!(lateness_limit_ns(1_000.0, 2), 20_000_000);
    }

    #[test]
    fn a_saturated_thread_or_late_sends_make_the_client_the_bottleneck() {
        let idle = ClientCheck::judge(vec![thread(0.30, 0.05)], false, None, None, None);
        assert!(!idle.client_bound && idle.reasons.is_empty());

        let starved = ClientCheck::judge(vec![thread(0.99, 0.70)], false, None, None, None);
        assert!(starved.client_bound);
        assert!(
            starved.reasons[0].contains("busy 99%") && starved.reasons[0].contains("CPU 70%"),
            "{:?}",
            starved.reasons
        );

        // busy-poll threads are always busy: only lateness counts there
        let mut late = new_histogram();
        for _ in 0..100 {
            late.record(50_000).unwrap();
        }
        let spin = ClientCheck::judge(
            vec![thread(1.0, 0.0)],
            true,
            Some(&late),
            Some(&late),
            Some(1_000_000),
        );
        assert!(!spin.client_bound, "{:?}", spin.reasons);
        for _ in 0..10 {
            late.record(5_000_000).unwrap();
        }
        let behind = ClientCheck::judge(
            vec![thread(1.0, 0.0)],
            true,
            Some(&late),
            None,
            Some(1_000_000),
        );
        assert!(behind.client_bound);
        assert!(
            behind.reasons[0].contains("limit 1000 µs"),
            "{:?}",
            behind.reasons
        );
        assert_eq!(behind.send_lateness.unwrap().count, 110);
        // A client too slow to read its echoes: no send was free to be late, but its threads
        // react late.
        let slow = ClientCheck::judge(
            vec![thread(0.6, 0.5)],
            false,
            Some(&new_histogram()),
            Some(&late),
            Some(1_000_000),
        );
        assert!(slow.client_bound);
        assert!(slow.reasons[0].contains("reacted"), "{:?}", slow.reasons);
        assert!(slow.send_lateness.is_none());
        // A thread whose pacer spun (sends under 50 µs apart) is busy by design: judged by
        // its lateness only, like busy-poll; a thread that barely spun is judged by its CPU.
        let spinning = ThreadLoad {
            spin: Some(0.8),
            ..thread(1.0, 0.0)
        };
        let on_time = ClientCheck::judge(vec![spinning], false, None, None, Some(1_000_000));
        assert!(!on_time.client_bound, "{:?}", on_time.reasons);
        let barely = ThreadLoad {
            spin: Some(SPIN_LIMIT / 2.0),
            ..thread(1.0, 0.0)
        };
        let saturated = ClientCheck::judge(vec![barely], false, None, None, Some(1_000_000));
        assert!(saturated.client_bound, "{:?}", saturated.reasons);
    }

    #[test]
    fn intervals_that_miss_the_rate_by_more_than_one_percent_are_listed() {
        let rates = RateCounts {
            interval_ns: 100_000_000,
            intended: vec![1000, 1000, 1000, 5, 500],
            completed: vec![1000, 995, 980, 3, 400],
        };
        // 450 ms window: the last interval is 50 ms long
        let off = rate_intervals_off(&rates, 450_000_000);
        let idx: Vec<usize> = off.iter().map(|r| r.index).collect();
        assert_eq!(idx, [2, 4], "995 is within 1%, 3 of 5 within the slack");
        assert!((off[0].achieved_per_s - 9800.0).abs() < 1e-6);
        assert!((off[1].length_s - 0.05).abs() < 1e-12);
        assert!((off[1].intended_per_s - 10_000.0).abs() < 1e-6);
    }
}
