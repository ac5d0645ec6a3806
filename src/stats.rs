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
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

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
    /// A connection was accepted and is being served.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }
    /// A connection was accepted and closed at once (over `--max-connections`, or shutting down).
    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }
    /// A served connection ended, for whatever reason.
    pub fn closed(&self) {
        self.closed.fetch_add(1, Relaxed);
    }
    /// `n` bytes were written back to a client.
    pub fn echoed(&self, n: usize) {
        self.bytes_echoed.fetch_add(n as u64, Relaxed);
    }
    /// A connection was closed by the idle timeout.
    pub fn idle_timeout(&self) {
        self.idle_timeouts.fetch_add(1, Relaxed);
    }
    /// A connection ended with an I/O error, counted by kind.
    pub fn conn_error(&self, err: &io::Error) {
        let counter = match err.raw_os_error() {
            Some(libc::ECONNRESET) => &self.errors_reset,
            Some(libc::EPIPE) => &self.errors_pipe,
            _ => &self.errors_other,
        };
        counter.fetch_add(1, Relaxed);
    }
    /// `accept` failed.
    pub fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Relaxed);
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
            accepted: sum(|w| &w.accepted),
            rejected: sum(|w| &w.rejected),
            closed: sum(|w| &w.closed),
            bytes_echoed: sum(|w| &w.bytes_echoed),
            idle_timeouts: sum(|w| &w.idle_timeouts),
            errors_reset: sum(|w| &w.errors_reset),
            errors_pipe: sum(|w| &w.errors_pipe),
            errors_other: sum(|w| &w.errors_other),
            accept_errors: sum(|w| &w.accept_errors),
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
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections accepted and closed at once (over the limit or during shutdown).
    pub rejected: u64,
    /// Served connections that have ended.
    pub closed: u64,
    /// Bytes written back to clients.
    pub bytes_echoed: u64,
    /// Connections closed by `--idle-timeout`.
    pub idle_timeouts: u64,
    /// Connections ended by ECONNRESET.
    pub errors_reset: u64,
    /// Connections ended by EPIPE.
    pub errors_pipe: u64,
    /// Connections ended by any other I/O error.
    pub errors_other: u64,
    /// Failed `accept` calls (EMFILE and friends; the server retries).
    pub accept_errors: u64,
    /// Time since the server started.
    pub elapsed: Duration,
    /// `accepted`, per worker thread.
    pub accepted_per_thread: Vec<u64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} rejected={} closed={} bytes_echoed={} idle_timeouts={} errors_reset={} \
             errors_pipe={} errors_other={} accept_errors={} elapsed_s={:.3} accepted_per_thread=",
            self.accepted,
            self.rejected,
            self.closed,
            self.bytes_echoed,
            self.idle_timeouts,
            self.errors_reset,
            self.errors_pipe,
            self.errors_other,
            self.accept_errors,
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
        a.accepted();
        a.accepted();
        b.accepted();
        b.rejected();
        a.closed();
        a.echoed(40);
        b.echoed(2);
        b.idle_timeout();
        a.conn_error(&io::Error::from_raw_os_error(libc::ECONNRESET));
        a.conn_error(&io::Error::from_raw_os_error(libc::EPIPE));
        b.conn_error(&io::Error::from_raw_os_error(libc::ETIMEDOUT));
        b.conn_error(&io::Error::other("no errno"));
        a.accept_error();
        let mut s = stats.snapshot();
        s.elapsed = Duration::from_millis(1234);
        assert_eq!(
            s.to_string(),
            "accepted=3 rejected=1 closed=1 bytes_echoed=42 idle_timeouts=1 errors_reset=1 \
             errors_pipe=1 errors_other=2 accept_errors=1 elapsed_s=1.234 accepted_per_thread=2/1"
        );
    }

    #[test]
    fn workers_do_not_share_cache_lines() {
        assert!(std::mem::align_of::<WorkerStats>() >= 128);
    }
}
