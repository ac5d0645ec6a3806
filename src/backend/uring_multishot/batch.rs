//! How long each loop iteration waits for completions (`--batch-wait`).
//!
//! Every wait submits what the loop queued and waits inside the same `io_uring_enter`. Sends to a
//! socket with room complete *inline*, during that submit, so a wait for one completion would
//! return at once with their CQEs and cost a second enter per loop before the thread sleeps.
//!
//! - **`inline`** (default): wait for the sends just submitted plus one more completion, with no
//!   timer. That sleeps until the next real event, and it cannot sleep past work: a send's
//!   completion needs no action from us unless data is queued behind it, its connection has
//!   reached EOF or died (a close follows), or connections are parked for buffers — in those
//!   cases the loop waits for one completion instead (the `eager` cases below). A send that does
//!   not complete inline completes later by itself (the peer reads, or the socket errs), so it
//!   only delays the wait's return until then, never forever.
//! - **`adaptive`**: `inline`, plus a busy mode: while the loop keeps finding many arrivals
//!   (receives with data, accepts) per iteration, it waits for about as many again, with the
//!   kernel's `min_wait` (Linux 6.12) bounding the extra wait to [`ADAPTIVE_MIN_WAIT`]; a lone
//!   connection, whose iterations see one arrival each, never waits. The load estimate is a
//!   moving average of arrivals per iteration, so a burst does not switch it. It makes far fewer
//!   `io_uring_enter` calls under load, but each busy wait arms and cancels a timer and sleeps
//!   more often; on a VM (timer programming is a VM exit) that cost more CPU than the calls it
//!   saved and, at half of saturation, tripled the median latency, so it is not the default
//!   (bench/README.md).
//! - **`off`**: one completion per wait, the engine before batching (for A/B measurements).
//! - **`N,DUR`**: always wait for `N` completions beyond the inline sends, `DUR` at most (with
//!   `min_wait`; before 6.12 a plain timeout that may return with nothing): the manual override.
//!
//! The eager cases apply to every policy: waiting for more is wrong whenever work is already
//! known to be pending (a send with more data queued behind it or a close waiting for it, a
//! submit made early because the SQ was full, whose CQEs may already be consumed, or parked
//! connections).

use std::time::Duration;

use crate::config::{BatchPolicy, BatchWait};

/// Longest extra wait of the adaptive policy's busy mode, per loop iteration. It is latency
/// added to the first completion of a wait whenever fewer than `want` arrive in time, so it is
/// kept at what a moderately loaded server can afford (open loop at half of saturation: a
/// longer bound moved the median by its own length; bench/README.md).
pub(super) const ADAPTIVE_MIN_WAIT: Duration = Duration::from_micros(20);
/// Arrivals per iteration (moving average) from which the adaptive policy batches.
const BUSY_ARRIVALS: u32 = 4;
/// Most completions one adaptive wait waits for beyond the inline sends.
const MAX_ADAPTIVE_BATCH: u32 = 32;
/// The moving average is kept ×16 (fixed point), with weight 1/8 for the newest iteration.
const LOAD_SCALE: u32 = 16;

/// What the next `io_uring_enter` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// `n` completions, no timer (the tick bounds the wait).
    Count(usize),
    /// `want` completions, or after `min_wait` whatever has arrived (Linux 6.12 `min_wait`);
    /// `timeout` bounds the whole wait.
    Batch {
        want: usize,
        min_wait: Duration,
        timeout: Duration,
    },
    /// `want` completions or `timeout` (may return with none: ETIME).
    BatchPre612 { want: usize, timeout: Duration },
}

/// Per-wait batching state.
#[derive(Debug)]
pub(super) struct Batching {
    policy: BatchPolicy,
    /// The kernel supports `min_wait_usec` in `io_uring_enter` (Linux 6.12).
    min_wait_supported: bool,
    /// Sends pushed since the last wait.
    sends_since_wait: usize,
    /// Work depends on a completion of this period: do not sleep past the first one.
    reap_eagerly: bool,
    /// Receives with data and accepts handled since the last wait.
    arrivals: u32,
    /// Moving average of `arrivals` per iteration, ×[`LOAD_SCALE`].
    load: u32,
}

impl Batching {
    pub(super) fn new(policy: BatchPolicy, min_wait_supported: bool) -> Self {
        Batching {
            policy,
            min_wait_supported,
            sends_since_wait: 0,
            reap_eagerly: false,
            arrivals: 0,
            load: 0,
        }
    }

    /// A send was pushed; `follow_up`: its completion starts more work (data queued behind it,
    /// or a close once it is done).
    #[inline]
    pub(super) fn send_pushed(&mut self, follow_up: bool) {
        self.sends_since_wait += 1;
        self.reap_eagerly |= follow_up;
    }

    /// An operation in flight will need handling as soon as it completes (e.g. a close after a
    /// connection was shut down).
    #[inline]
    pub(super) fn follow_up(&mut self) {
        self.reap_eagerly = true;
    }

    /// A receive brought data, or an accept a connection.
    #[inline]
    pub(super) fn arrival(&mut self) {
        self.arrivals += 1;
    }

    /// Whether the adaptive policy is batching now (for the report).
    pub(super) fn busy(&self) -> bool {
        self.policy == BatchPolicy::Adaptive && self.load >= BUSY_ARRIVALS * LOAD_SCALE
    }

    /// The next wait; `work_pending`: the SQ was submitted early or connections are parked.
    /// Starts a new wait period.
    pub(super) fn plan(&mut self, work_pending: bool, tick: Duration) -> Wait {
        let sends = std::mem::take(&mut self.sends_since_wait);
        let eager = std::mem::take(&mut self.reap_eagerly) || work_pending;
        let arrivals = std::mem::take(&mut self.arrivals).min(u32::MAX / (2 * LOAD_SCALE));
        self.load = self.load - self.load / 8 + arrivals * LOAD_SCALE / 8;
        let uncounted = if eager { 0 } else { sends };
        match self.policy {
            BatchPolicy::Off => Wait::Count(1),
            BatchPolicy::Inline | BatchPolicy::Adaptive if eager => Wait::Count(1),
            // Only `adaptive` is ever busy.
            BatchPolicy::Adaptive if self.busy() && self.min_wait_supported => {
                let more = (self.load / LOAD_SCALE).clamp(2, MAX_ADAPTIVE_BATCH) as usize;
                Wait::Batch {
                    want: sends + more,
                    min_wait: ADAPTIVE_MIN_WAIT,
                    timeout: tick,
                }
            }
            BatchPolicy::Inline | BatchPolicy::Adaptive => Wait::Count(sends + 1),
            BatchPolicy::Fixed(bw) => fixed(bw, uncounted, self.min_wait_supported, tick),
        }
    }
}

/// `--batch-wait N,DUR`.
fn fixed(bw: BatchWait, uncounted: usize, min_wait_supported: bool, tick: Duration) -> Wait {
    let want = uncounted + bw.min_completions.max(1) as usize;
    if want <= 1 {
        Wait::Count(1)
    } else if min_wait_supported {
        Wait::Batch {
            want,
            min_wait: bw.timeout,
            timeout: tick,
        }
    } else {
        Wait::BatchPre612 {
            want,
            timeout: bw.timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);
    const BW: BatchWait = BatchWait {
        min_completions: 8,
        timeout: Duration::from_micros(200),
    };

    #[test]
    fn off_waits_for_one() {
        let mut b = Batching::new(BatchPolicy::Off, true);
        b.send_pushed(false);
        b.send_pushed(false);
        assert_eq!(b.plan(false, TICK), Wait::Count(1));
    }

    #[test]
    fn adaptive_counts_inline_sends_without_a_timer() {
        let mut b = Batching::new(BatchPolicy::Adaptive, true);
        for _ in 0..3 {
            b.send_pushed(false);
        }
        b.arrival();
        assert_eq!(b.plan(false, TICK), Wait::Count(4));
        // The count starts over with each wait.
        assert_eq!(b.plan(false, TICK), Wait::Count(1));
    }

    #[test]
    fn adaptive_never_sleeps_past_known_work() {
        let mut b = Batching::new(BatchPolicy::Adaptive, true);
        b.send_pushed(false);
        b.send_pushed(true);
        assert_eq!(
            b.plan(false, TICK),
            Wait::Count(1),
            "data queued behind a send"
        );
        b.send_pushed(false);
        b.follow_up();
        assert_eq!(
            b.plan(false, TICK),
            Wait::Count(1),
            "a close waits for a send"
        );
        b.send_pushed(false);
        assert_eq!(b.plan(true, TICK), Wait::Count(1), "early submit or parked");
    }

    #[test]
    fn adaptive_batches_only_under_sustained_load() {
        let mut b = Batching::new(BatchPolicy::Adaptive, true);
        // A lone ping-pong connection: one arrival per iteration, never a timer.
        for _ in 0..100 {
            b.arrival();
            b.send_pushed(false);
            assert_eq!(b.plan(false, TICK), Wait::Count(2));
        }
        // One burst does not switch it.
        for _ in 0..20 {
            b.arrival();
        }
        b.send_pushed(false);
        assert_eq!(b.plan(false, TICK), Wait::Count(2));
        // Sustained bulk arrivals do, and the batch follows the load, up to the cap.
        let mut last = Wait::Count(0);
        for _ in 0..40 {
            for _ in 0..10 {
                b.arrival();
            }
            for _ in 0..10 {
                b.send_pushed(false);
            }
            last = b.plan(false, TICK);
        }
        match last {
            Wait::Batch {
                want,
                min_wait,
                timeout,
            } => {
                assert!((10 + 8..=10 + 10).contains(&want), "{want}");
                assert_eq!((min_wait, timeout), (ADAPTIVE_MIN_WAIT, TICK));
            }
            other => panic!("expected a batch, got {other:?}"),
        }
        for _ in 0..40 {
            for _ in 0..1000 {
                b.arrival();
            }
            last = b.plan(false, TICK);
        }
        assert!(matches!(last, Wait::Batch { want, .. } if want == MAX_ADAPTIVE_BATCH as usize));
        // Known work still wins over batching.
        b.follow_up();
        assert_eq!(b.plan(false, TICK), Wait::Count(1));
        // When the load goes, so does the batching.
        for _ in 0..60 {
            b.arrival();
            last = b.plan(false, TICK);
        }
        assert_eq!(last, Wait::Count(1));
    }

    #[test]
    fn inline_counts_inline_sends_and_never_arms_a_timer() {
        let mut b = Batching::new(BatchPolicy::Inline, true);
        // However sustained the load, the wait counts the inline sends in, without a timer.
        for _ in 0..50 {
            for _ in 0..20 {
                b.arrival();
            }
            for _ in 0..3 {
                b.send_pushed(false);
            }
            assert_eq!(b.plan(false, TICK), Wait::Count(4));
        }
        // Known work: one completion.
        b.send_pushed(true);
        assert_eq!(b.plan(false, TICK), Wait::Count(1));
        b.send_pushed(false);
        b.follow_up();
        assert_eq!(b.plan(false, TICK), Wait::Count(1));
        b.send_pushed(false);
        assert_eq!(b.plan(true, TICK), Wait::Count(1));
    }

    #[test]
    fn adaptive_without_min_wait_never_arms_a_timer() {
        let mut b = Batching::new(BatchPolicy::Adaptive, false);
        for _ in 0..50 {
            for _ in 0..20 {
                b.arrival();
            }
            b.send_pushed(false);
            assert_eq!(b.plan(false, TICK), Wait::Count(2));
        }
    }

    #[test]
    fn fixed_counts_inline_sends_unless_work_is_pending() {
        let mut b = Batching::new(BatchPolicy::Fixed(BW), true);
        for _ in 0..3 {
            b.send_pushed(false);
        }
        let counted = Wait::Batch {
            want: 11,
            min_wait: BW.timeout,
            timeout: TICK,
        };
        assert_eq!(b.plan(false, TICK), counted);
        let alone = Wait::Batch {
            want: 8,
            min_wait: BW.timeout,
            timeout: TICK,
        };
        assert_eq!(b.plan(false, TICK), alone);
        b.send_pushed(false);
        b.send_pushed(true);
        assert_eq!(b.plan(false, TICK), alone, "data queued behind a send");
        b.send_pushed(false);
        assert_eq!(
            b.plan(true, TICK),
            alone,
            "early submit or parked connections"
        );
    }

    #[test]
    fn fixed_without_min_wait_a_plain_timeout() {
        let mut b = Batching::new(BatchPolicy::Fixed(BW), false);
        b.send_pushed(false);
        assert_eq!(
            b.plan(false, TICK),
            Wait::BatchPre612 {
                want: 9,
                timeout: BW.timeout
            }
        );
        let one = BatchWait {
            min_completions: 1,
            timeout: BW.timeout,
        };
        let mut one = Batching::new(BatchPolicy::Fixed(one), true);
        assert_eq!(one.plan(true, TICK), Wait::Count(1));
    }
}
