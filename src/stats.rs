//! Counters shared by all workers, and the `summary:`/`stats:` lines made from them.
//!
//! Each worker owns one cache-line-aligned block of relaxed atomics and is the only writer, so
//! counting on the hot path never bounces a cache line between cores; readers (the periodic stats
//! line, the final summary) sum the blocks. Counts are monotonic; a snapshot taken while workers
//! run may be a few operations out of step between fields, the final one is exact.
//!
//! Line format (a contract with scripts and the bench client): a prefix, then space-separated
//! `key=value` pairs in a fixed order, e.g.
//! `summary: accepted=3 rejected=0 closed=3 bytes_echoed=42 idle_timeouts=0 errors_reset=0
//! errors_pipe=0 errors_other=0 accept_errors=0 elapsed_s=1.234 accepted_per_thread=2/1`
//! (one line).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::policy::ErrorKind;

/// Events to add to a worker's counters, in the units of the summary line. Every engine reports
/// through [`WorkerStats::add`] with one of these: the tokio engines one event at a time (a
/// `Counts` built from one constructor, whose zero fields the inlined `add` skips at compile
/// time), the multishot engine a tick's worth at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections accepted and closed at once (over `--max-connections`, or shutting down).
    pub rejected: u64,
    /// Served connections that ended, for whatever reason.
    pub closed: u64,
    /// Bytes written back to clients.
    pub bytes_echoed: u64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: u64,
    /// Connections ended by an I/O error of kind [`ErrorKind::Reset`].
    pub errors_reset: u64,
    /// Connections ended by an I/O error of kind [`ErrorKind::Pipe`].
    pub errors_pipe: u64,
    /// Connections ended by an I/O error of kind [`ErrorKind::Other`].
    pub errors_other: u64,
    /// Failed `accept`s.
    pub accept_errors: u64,
}

impl Counts {
    /// `n` bytes were written back to a client.
    #[inline]
    pub fn echoed(n: usize) -> Counts {
        Counts {
            bytes_echoed: n as u64,
            ..Counts::default()
        }
    }

    /// Counts one connection ended by an error of this kind.
    #[inline]
    pub fn error(&mut self, kind: ErrorKind) {
        let counter = match kind {
            ErrorKind::Reset => &mut self.errors_reset,
            ErrorKind::Pipe => &mut self.errors_pipe,
            ErrorKind::Other => &mut self.errors_other,
        };
        *counter += 1;
    }

    /// Nothing to add.
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// One worker's counters. Aligned to 128 bytes so two workers never share a cache line
/// (adjacent-line prefetch makes 64 not quite enough on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    accepted: AtomicU64,
    rejected: AtomicU64,
    closed: AtomicU64,
    bytes_echoed: AtomicU64,
    idle_timeouts: AtomicU64,
    errors_reset: AtomicU64,
    errors_pipe: AtomicU64,
    errors_other: AtomicU64,
    accept_errors: AtomicU64,
}

impl WorkerStats {
    /// Adds `counts` (only the worker that owns this block calls it). Zero fields cost no atomic.
    #[inline]
    pub fn add(&self, counts: &Counts) {
        let fields = [
            (&self.accepted, counts.accepted),
            (&self.rejected, counts.rejected),
            (&self.closed, counts.closed),
            (&self.bytes_echoed, counts.bytes_echoed),
            (&self.idle_timeouts, counts.idle_timeouts),
            (&self.errors_reset, counts.errors_reset),
            (&self.errors_pipe, counts.errors_pipe),
            (&self.errors_other, counts.errors_other),
            (&self.accept_errors, counts.accept_errors),
        ];
        for (counter, n) in fields {
            if n != 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }
}

/// Counters of every worker, plus the start time.
#[derive(Debug)]
pub struct Stats {
    workers: Box<[WorkerStats]>,
    started: Instant,
}

impl Stats {
    /// Zeroed counters for `workers` workers; the clock starts now.
    pub fn new(workers: usize) -> Stats {
        Stats {
            workers: (0..workers).map(|_| WorkerStats::default()).collect(),
            started: Instant::now(),
        }
    }

    /// The counters of worker `index`.
    pub fn worker(&self, index: usize) -> &WorkerStats {
        &self.workers[index]
    }

    /// Sums all workers' counters now.
    pub fn snapshot(&self) -> Summary {
        let sum = |f: fn(&WorkerStats) -> &AtomicU64| {
            self.workers.iter().map(|w| f(w).load(Relaxed)).sum::<u64>()
        };
        Summary {
            counts: Counts {
                accepted: sum(|w| &w.accepted),
                rejected: sum(|w| &w.rejected),
                closed: sum(|w| &w.closed),
                bytes_echoed: sum(|w| &w.bytes_echoed),
                idle_timeouts: sum(|w| &w.idle_timeouts),
                errors_reset: sum(|w| &w.errors_reset),
                errors_pipe: sum(|w| &w.errors_pipe),
                errors_other: sum(|w| &w.errors_other),
                accept_errors: sum(|w| &w.accept_errors),
            },
            elapsed: self.started.elapsed(),
            accepted_per_thread: self
                .workers
                .iter()
                .map(|w| w.accepted.load(Relaxed))
                .collect(),
        }
    }
}

/// A point-in-time sum of the counters. `Display` gives the `key=value` part of the line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Every worker's counts, summed.
    pub counts: Counts,
    /// Time since the server started.
    pub elapsed: Duration,
    /// `accepted`, per worker thread.
    pub accepted_per_thread: Vec<u64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        write!(
            f,
            "accepted={} rejected={} closed={} bytes_echoed={} idle_timeouts={} errors_reset={} \
             errors_pipe={} errors_other={} accept_errors={} elapsed_s={:.3} accepted_per_thread=",
            c.accepted,
            c.rejected,
            c.closed,
            c.bytes_echoed,
            c.idle_timeouts,
            c.errors_reset,
            c.errors_pipe,
            c.errors_other,
            c.accept_errors,
            self.elapsed.as_secs_f64(),
        )?;
        for (i, n) in self.accepted_per_thread.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format_and_error_kinds() {
        let stats = Stats::new(2);
        let (a, b) = (stats.worker(0), stats.worker(1));
        let mut ca = Counts {
            accepted: 2,
            closed: 1,
            accept_errors: 1,
            ..Counts::default()
        };
        ca.error(ErrorKind::Reset);
        ca.error(ErrorKind::Pipe);
        a.add(&ca);
        a.add(&Counts::echoed(40));
        let mut cb = Counts {
            accepted: 1,
            rejected: 1,
            idle_timeouts: 1,
            ..Counts::default()
        };
        cb.error(ErrorKind::Other);
        cb.error(ErrorKind::of(&std::io::Error::other("no errno")));
        b.add(&cb);
        b.add(&Counts::echoed(2));
        b.add(&Counts::default());
        let mut s = stats.snapshot();
        s.elapsed = Duration::from_millis(1234);
        assert_eq!(
            s.to_string(),
            "accepted=3 rejected=1 closed=1 bytes_echoed=42 idle_timeouts=1 errors_reset=1 \
             errors_pipe=1 errors_other=2 accept_errors=1 elapsed_s=1.234 accepted_per_thread=2/1"
        );
        assert!(Counts::default().is_zero() && !ca.is_zero());
    }

    #[test]
    fn workers_do_not_share_cache_lines() {
        assert!(std::mem::align_of::<WorkerStats>() >= 128);
    }
}
