//! How long each loop iteration waits: the default single-completion wait, and `--batch-wait`.
//!
//! Default: submit and wait for one completion. Sends to loopback usually complete inline during
//! that submit, so the wait returns at once with their CQEs and the next one sleeps until data
//! arrives. Counting those inline sends into the wait would halve the `io_uring_enter` calls, but
//! only with a timer armed per wait as a safety net, and that timer costs more than the syscall
//! it saves on the machines measured (bench/README.md). So only `--batch-wait N,T`, which arms the
//! timer anyway, counts them: it waits for `N` completions beyond the sends just submitted, with
//! the kernel's `min_wait` (Linux 6.12) returning after `T` with whatever has arrived; before
//! 6.12 a plain `T` timeout that may return with nothing.
//!
//! Waiting for more is wrong whenever work is already known to be pending: a send with more data
//! queued behind it, a submit made early because the SQ was full (its CQEs may already be
//! consumed), or connections parked for buffers. Then the wait counts no sends.

use std::time::Duration;

use crate::config::BatchWait;

/// What the next `io_uring_enter` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// One completion (the tick bounds the wait).
    One,
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
    config: Option<BatchWait>,
    /// The kernel supports `min_wait_usec` in `io_uring_enter` (Linux 6.12).
    min_wait_supported: bool,
    /// Sends pushed since the last wait.
    sends_since_wait: usize,
    /// One of them has data queued behind it: do not sleep past its completion.
    reap_eagerly: bool,
}

impl Batching {
    pub(super) fn new(config: Option<BatchWait>, min_wait_supported: bool) -> Self {
        Batching {
            config,
            min_wait_supported,
            sends_since_wait: 0,
            reap_eagerly: false,
        }
    }

    /// A send was pushed; `more_queued`: the connection has more data waiting for it.
    #[inline]
    pub(super) fn send_pushed(&mut self, more_queued: bool) {
        self.sends_since_wait += 1;
        self.reap_eagerly |= more_queued;
    }

    /// The next wait; `work_pending`: the SQ was submitted early or connections are parked.
    /// Starts a new wait period.
    pub(super) fn plan(&mut self, work_pending: bool, tick: Duration) -> Wait {
        let sends = std::mem::take(&mut self.sends_since_wait);
        let eager = std::mem::take(&mut self.reap_eagerly) || work_pending;
        let Some(bw) = self.config else {
            return Wait::One;
        };
        let uncounted = if eager { 0 } else { sends };
        let want = uncounted + bw.min_completions.max(1) as usize;
        if want <= 1 {
            Wait::One
        } else if self.min_wait_supported {
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
    fn default_waits_for_one() {
        let mut b = Batching::new(None, true);
        b.send_pushed(false);
        b.send_pushed(true);
        assert_eq!(b.plan(false, TICK), Wait::One);
    }

    #[test]
    fn batch_counts_inline_sends_unless_work_is_pending() {
        let mut b = Batching::new(Some(BW), true);
        for _ in 0..3 {
            b.send_pushed(false);
        }
        let counted = Wait::Batch {
            want: 11,
            min_wait: BW.timeout,
            timeout: TICK,
        };
        assert_eq!(b.plan(false, TICK), counted);
        // The count starts over with each wait.
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
    fn without_min_wait_a_plain_timeout() {
        let mut b = Batching::new(Some(BW), false);
        b.send_pushed(false);
        assert_eq!(
            b.plan(false, TICK),
            Wait::BatchPre612 {
                want: 9,
                timeout: BW.timeout
            }
        );
        let mut one = Batching::new(
            Some(BatchWait {
                min_completions: 1,
                timeout: BW.timeout,
            }),
            true,
        );
        assert_eq!(one.plan(true, TICK), Wait::One);
    }
}
