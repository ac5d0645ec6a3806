//! Latency recording: one [`Recorder`] per client thread, merged with `Histogram::add` at the end.
//!
//! Unit: **nanoseconds**. Histograms track 1 ns .. 1 hour with 3 significant digits (every
//! value is kept to within 0.1%; the brief's minimum was 1 µs .. 60 s). Values above one hour
//! saturate at the maximum instead of failing the run. Reports convert to µs (text, JSON) or
//! ms (`.hgrm`, like HdrHistogram's own tools with a scaling ratio).
//!
//! Nothing here is shared between threads: the hot path is a `RefCell` borrow and one or two
//! `saturating_record` calls. A completion is *measured* only if it happens inside the
//! measured window `[measure_start, end)`; completions during warmup are only counted.
//!
//! Open loop, the recorder also keeps what tells whether the client kept to its schedule: a
//! histogram of **send lateness** (actual send time − intended send time, for messages that
//! became due while their connection had room to send, so that a send held back by the server
//! is not charged to the client) and, per rate interval of the measured window, the number of
//! messages **intended** (by intended send time) and **completed** (by completion time).
//!
//! With `--hlog`, the recorder also keeps an interval histogram and, each time a completion
//! crosses an interval boundary, serialises the finished interval (V2, uncompressed: a few KiB)
//! so that long runs do not keep hundreds of full histograms in memory.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Lowest discernible value (ns).
pub const LOWEST_NS: u64 = 1;
/// Highest trackable value (ns): one hour.
pub const HIGHEST_NS: u64 = 3_600 * 1_000_000_000;
/// Significant value digits.
pub const SIGFIG: u8 = 3;

/// A new empty histogram with the bounds above.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGFIG)
        .expect("static histogram bounds are valid")
}

/// Add `src` into `dst`. Both have the same bounds, so this cannot fail in practice; if a
/// foreign histogram exceeds them, `dst` is switched to auto-resize first.
pub fn add_into(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    if dst.add(src).is_err() {
        dst.auto(true);
        dst.add(src)
            .expect("auto-resizing histogram accepts any histogram");
    }
}

/// The measured window of one trial, in monotonic nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// First instant of the load (connections start sending).
    pub t0_ns: u64,
    /// Start of the measured window (end of warmup).
    pub measure_start_ns: u64,
    /// End of the measured window (the deadline).
    pub end_ns: u64,
}

/// One finished interval of an interval log, serialised with V2 (uncompressed).
#[derive(Debug, Clone)]
pub struct IntervalSnapshot {
    /// Interval number since the start of the measured window.
    pub index: u64,
    /// Latency histogram of the interval.
    pub latency_v2: Vec<u8>,
    /// Service-time histogram of the interval (open loop only).
    pub service_v2: Option<Vec<u8>>,
}

struct IntervalRecorder {
    interval_ns: u64,
    index: u64,
    end_ns: u64,
    latency: Histogram<u64>,
    service: Option<Histogram<u64>>,
    done: Vec<IntervalSnapshot>,
    serializer: V2Serializer,
}

impl IntervalRecorder {
    fn flush(&mut self) {
        let mut latency_v2 = Vec::new();
        self.serializer
            .serialize(&self.latency, &mut latency_v2)
            .expect("V2 serialisation into a Vec cannot fail");
        let service_v2 = self.service.as_ref().map(|h| {
            let mut buf = Vec::new();
            self.serializer
                .serialize(h, &mut buf)
                .expect("V2 serialisation into a Vec cannot fail");
            buf
        });
        self.done.push(IntervalSnapshot {
            index: self.index,
            latency_v2,
            service_v2,
        });
        self.latency.reset();
        if let Some(s) = self.service.as_mut() {
            s.reset();
        }
    }
}

/// Intended and completed messages per rate interval of the measured window (open loop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateCounts {
    /// Interval length, ns (the last interval may be shorter).
    pub interval_ns: u64,
    /// Messages whose intended send time falls in each interval (sent or not).
    pub intended: Vec<u64>,
    /// Messages whose echo completed in each interval.
    pub completed: Vec<u64>,
}

impl RateCounts {
    fn new(window: &Window, interval_ns: u64) -> RateCounts {
        let span = window.end_ns.saturating_sub(window.measure_start_ns);
        let n = span.div_ceil(interval_ns.max(1)) as usize;
        RateCounts {
            interval_ns: interval_ns.max(1),
            intended: vec![0; n],
            completed: vec![0; n],
        }
    }

    /// Add `other` (same window and interval) into `self`.
    pub fn merge(&mut self, other: &RateCounts) {
        if self.intended.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.intended.iter_mut().zip(&other.intended) {
            *a += b;
        }
        for (a, b) in self.completed.iter_mut().zip(&other.completed) {
            *a += b;
        }
    }
}

/// Per-thread latency recorder.
pub struct Recorder {
    window: Window,
    latency: Histogram<u64>,
    service: Option<Histogram<u64>>,
    lateness: Option<Histogram<u64>>,
    rates: Option<RateCounts>,
    /// With a latency bound: completions of the messages intended in
    /// `[measure_start, end - bound)` (they all complete by the deadline when the bound holds).
    span: Option<(u64, u64)>,
    intervals: Option<IntervalRecorder>,
    measured: u64,
    warmup: u64,
    /// All completions so far (warmup included); read by the progress display.
    pub completed_total: u64,
}

/// What [`Recorder::finish`] hands back.
pub struct Recorded {
    /// Latency from the intended send time (closed loop: the actual send time).
    pub latency: Histogram<u64>,
    /// Latency from the actual send time (open loop only).
    pub service: Option<Histogram<u64>>,
    /// Send lateness of the messages intended inside the window (open loop only).
    pub lateness: Option<Histogram<u64>>,
    /// Intended and completed messages per rate interval (open loop only).
    pub rates: Option<RateCounts>,
    /// With a latency bound: completions of messages intended in `[measure_start, end - bound)`.
    pub span_completed: u64,
    /// Completions inside the measured window (= `latency.len()`).
    pub measured: u64,
    /// Completions during warmup (not recorded).
    pub warmup: u64,
    /// Interval snapshots (`--hlog` only), in index order.
    pub intervals: Vec<IntervalSnapshot>,
}

impl Recorder {
    /// A recorder for `window`. `open_loop` adds the service-time and send-lateness histograms
    /// and the per-`rate_interval_ns` counts; `interval_ns` enables interval snapshots;
    /// `bound_ns` (a latency bound) the count of completions due at least that long before the
    /// deadline.
    pub fn new(
        window: Window,
        open_loop: bool,
        interval_ns: Option<u64>,
        rate_interval_ns: u64,
        bound_ns: Option<u64>,
    ) -> Recorder {
        let intervals = interval_ns.map(|interval_ns| IntervalRecorder {
            interval_ns,
            index: 0,
            end_ns: window.measure_start_ns.saturating_add(interval_ns),
            latency: new_histogram(),
            service: open_loop.then(new_histogram),
            done: Vec::new(),
            serializer: V2Serializer::new(),
        });
        Recorder {
            window,
            latency: new_histogram(),
            service: open_loop.then(new_histogram),
            lateness: open_loop.then(new_histogram),
            rates: open_loop.then(|| RateCounts::new(&window, rate_interval_ns)),
            span: bound_ns.map(|b| (window.end_ns.saturating_sub(b), 0)),
            intervals,
            measured: 0,
            warmup: 0,
            completed_total: 0,
        }
    }

    /// Record a message whose echo completed at `done_ns`, intended to be sent at `intended_ns`
    /// and actually sent at `sent_ns`. Returns false (and records nothing) when `done_ns` is at
    /// or after the deadline: such a message was in flight at the deadline.
    #[inline]
    pub fn record(&mut self, done_ns: u64, intended_ns: u64, sent_ns: u64) -> bool {
        if done_ns >= self.window.end_ns {
            return false;
        }
        self.completed_total += 1;
        if done_ns < self.window.measure_start_ns {
            self.warmup += 1;
            return true;
        }
        self.measured += 1;
        if let Some((due_by, n)) = self.span.as_mut() {
            if intended_ns >= self.window.measure_start_ns && intended_ns < *due_by {
                *n += 1;
            }
        }
        if let Some(r) = self.rates.as_mut() {
            let idx = ((done_ns - self.window.measure_start_ns) / r.interval_ns) as usize;
            if let Some(c) = r.completed.get_mut(idx) {
                *c += 1;
            }
        }
        let latency = done_ns.saturating_sub(intended_ns);
        let service = done_ns.saturating_sub(sent_ns);
        self.latency.saturating_record(latency);
        if let Some(s) = self.service.as_mut() {
            s.saturating_record(service);
        }
        if let Some(iv) = self.intervals.as_mut() {
            if done_ns >= iv.end_ns {
                iv.flush();
                iv.index = (done_ns - self.window.measure_start_ns) / iv.interval_ns;
                iv.end_ns = self.window.measure_start_ns + (iv.index + 1) * iv.interval_ns;
            }
            iv.latency.saturating_record(latency);
            if let Some(s) = iv.service.as_mut() {
                s.saturating_record(service);
            }
        }
        true
    }

    /// Open loop: a message intended at `intended_ns` was sent at `sent_ns`. Counts it in its
    /// rate interval when intended inside the window, and records its send lateness if
    /// `client_late` (it became due while its connection had room, so only the client can have
    /// held it back).
    #[inline]
    pub fn record_send(&mut self, intended_ns: u64, sent_ns: u64, client_late: bool) {
        if intended_ns < self.window.measure_start_ns || intended_ns >= self.window.end_ns {
            return;
        }
        if let Some(r) = self.rates.as_mut() {
            let idx = ((intended_ns - self.window.measure_start_ns) / r.interval_ns) as usize;
            if let Some(c) = r.intended.get_mut(idx) {
                *c += 1;
            }
        }
        if client_late {
            if let Some(h) = self.lateness.as_mut() {
                h.saturating_record(sent_ns.saturating_sub(intended_ns));
            }
        }
    }

    /// Open loop: `intended_in_window` counts messages due inside the window that were never
    /// sent, by rate interval (index 0 = the window's first interval).
    pub fn record_unsent(&mut self, intended_by_interval: &[u64]) {
        if let Some(r) = self.rates.as_mut() {
            for (a, b) in r.intended.iter_mut().zip(intended_by_interval) {
                *a += b;
            }
        }
    }

    /// The measured window and the rate interval, ns (open loop), for [`Self::record_unsent`].
    pub fn rate_grid(&self) -> Option<(Window, u64, usize)> {
        self.rates
            .as_ref()
            .map(|r| (self.window, r.interval_ns, r.intended.len()))
    }

    /// Finish recording and hand back the histograms.
    pub fn finish(mut self) -> Recorded {
        let intervals = match self.intervals.take() {
            Some(mut iv) => {
                if !iv.latency.is_empty() {
                    iv.flush();
                }
                iv.done
            }
            None => Vec::new(),
        };
        Recorded {
            latency: self.latency,
            service: self.service,
            lateness: self.lateness,
            rates: self.rates,
            span_completed: self.span.map_or(0, |(_, n)| n),
            measured: self.measured,
            warmup: self.warmup,
            intervals,
        }
    }
}

/// Interval histograms merged across threads: index → (latency, service).
pub type MergedIntervals =
    std::collections::BTreeMap<u64, (Histogram<u64>, Option<Histogram<u64>>)>;

/// Merge interval snapshots from several threads (or several calls) into `into`.
pub fn merge_intervals(into: &mut MergedIntervals, snapshots: &[IntervalSnapshot]) {
    let mut de = Deserializer::new();
    for snap in snapshots {
        let lat: Histogram<u64> = de
            .deserialize(&mut &snap.latency_v2[..])
            .expect("snapshot written by this process deserialises");
        let entry = into.entry(snap.index).or_insert_with(|| {
            (
                new_histogram(),
                snap.service_v2.as_ref().map(|_| new_histogram()),
            )
        });
        add_into(&mut entry.0, &lat);
        if let (Some(bytes), Some(dst)) = (snap.service_v2.as_ref(), entry.1.as_mut()) {
            let svc: Histogram<u64> = de
                .deserialize(&mut &bytes[..])
                .expect("snapshot written by this process deserialises");
            add_into(dst, &svc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window {
            t0_ns: 1_000,
            measure_start_ns: 2_000,
            end_ns: 10_000,
        }
    }

    #[test]
    fn warmup_and_after_deadline_are_not_recorded() {
        let mut r = Recorder::new(window(), false, None, 1_000, None);
        assert!(r.record(1_500, 1_000, 1_000)); // warmup: counted, not recorded
        assert!(r.record(5_000, 4_000, 4_000));
        assert!(!r.record(10_000, 9_000, 9_000)); // at the deadline: aborted
        let out = r.finish();
        assert_eq!(out.warmup, 1);
        assert_eq!(out.measured, 1);
        assert_eq!(out.latency.len(), 1);
        assert!(out.latency.equivalent(out.latency.max(), 1_000));
    }

    #[test]
    fn open_loop_records_intended_and_service_separately() {
        let mut r = Recorder::new(window(), true, None, 1_000, None);
        r.record(9_000, 3_000, 8_000);
        let out = r.finish();
        assert!(out.latency.equivalent(out.latency.max(), 6_000));
        let svc = out.service.unwrap();
        assert!(svc.equivalent(svc.max(), 1_000));
    }

    #[test]
    fn open_loop_counts_intended_and_completed_per_interval_and_client_lateness() {
        // window [2000, 10000), intervals of 3000 ns: [2000,5000) [5000,8000) [8000,10000)
        let mut r = Recorder::new(window(), true, None, 3_000, Some(3_000));
        r.record_send(1_500, 1_600, true); // intended during warmup: not counted
        r.record_send(2_000, 2_100, true);
        r.record_send(5_500, 7_000, false); // held back by the server: counted, no lateness
        r.record_send(9_000, 9_050, true);
        r.record_unsent(&[0, 0, 4]);
        r.record(4_000, 2_000, 2_100);
        r.record(7_500, 5_500, 7_000);
        r.record(8_000, 3_000, 3_000);
        r.record(9_000, 7_500, 7_600); // due less than the bound before the deadline
        let out = r.finish();
        // intended in [2000, 10000 - 3000): the completions intended at 2000, 5500 and 3000
        assert_eq!(out.span_completed, 3);
        let rates = out.rates.unwrap();
        assert_eq!(rates.intended, [1, 1, 5]);
        assert_eq!(rates.completed, [1, 1, 2]);
        let late = out.lateness.unwrap();
        assert_eq!(late.len(), 2);
        assert!(late.equivalent(late.max(), 100));
        assert!(late.equivalent(late.min(), 50));
    }

    #[test]
    fn histogram_covers_one_microsecond_to_an_hour_with_three_digits() {
        let mut h = new_histogram();
        h.record(1_000).unwrap();
        h.record(60_000_000_000).unwrap();
        h.record(HIGHEST_NS).unwrap();
        assert_eq!(h.min(), 1_000);
        let v = h.value_at_quantile(0.6);
        assert!((v as f64 - 60e9).abs() / 60e9 < 0.001, "{v}");
        h.saturating_record(u64::MAX);
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn intervals_split_by_completion_time_and_sum_to_total() {
        let w = Window {
            t0_ns: 0,
            measure_start_ns: 1_000,
            end_ns: 100_000,
        };
        let mut r = Recorder::new(w, false, Some(10_000), 10_000, None);
        for t in (1_000..100_000).step_by(700) {
            r.record(t, t - 100, t - 100);
        }
        let out = r.finish();
        let mut merged = MergedIntervals::new();
        merge_intervals(&mut merged, &out.intervals);
        let sum: u64 = merged.values().map(|(h, _)| h.len()).sum();
        assert_eq!(sum, out.measured);
        assert_eq!(
            merged.keys().copied().collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        // interval 0 holds completions in [1000, 11000)
        let expected0 = (1_000..11_000).step_by(700).count() as u64;
        assert_eq!(merged[&0].0.len(), expected0);
    }
}
