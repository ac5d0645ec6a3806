//! `--runtime uring-multishot`: the io_uring engine written directly on the `io-uring` crate.
//!
//! Why a second io_uring engine: tokio-uring submits one single-shot accept/recv per operation
//! and has no provided-buffer rings, so its per-message cost lands above a plain epoll server.
//! This engine keeps a multishot recv armed per connection, receives into a shared
//! provided-buffer ring and echoes straight from it (accepts stay single-shot and bounded, see
//! [`engine`] for why, and for the design and invariants).
//!
//! Layout: [`engine`] is the event loop and depends on nothing else in the crate (tests drive it
//! in-process with their own stats sink and stop flags); [`buf_ring`] is the provided-buffer pool;
//! [`conn`] the per-connection state. This file adapts it to the server: [`Config`] -> engine
//! parameters, the worker's [`WorkerStats`] and the global connection count as the stats sink,
//! the [`Shutdown`](crate::shutdown::Shutdown) tokens as stop/force.
//!
//! Semantics shared with the other runtimes (the `conn`/`backend` modules): rejected connections
//! are accepted and closed at once, idle and forced closes are not counted as errors, the first
//! I/O error of a connection is counted by kind, late accepts during a stop count as rejected, and
//! the listener is closed once accepting has stopped so new attempts are refused while draining.

pub mod buf_ring;
pub mod conn;
pub mod engine;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use engine::{Counts, Engine, MultishotParams, StatsSink};

use super::Worker;
use crate::config::Config;
use crate::stats::WorkerStats;

/// Engine parameters for one worker of `config`.
pub(crate) fn params(config: &Config) -> MultishotParams {
    let mut p = MultishotParams::new(config.buffer_size);
    p.ring_entries = config.uring.ring_entries;
    p.max_connections = config.max_connections;
    p.idle_timeout = config.idle_timeout;
    p.drain_timeout = config.drain_timeout;
    p.nodelay = config.nodelay;
    p.batch_wait = config.uring.batch_wait.map(|b| engine::BatchWait {
        min_completions: b.min_completions,
        timeout: b.timeout,
    });
    p
}

/// The server's per-worker counters and global connection count, seen as a [`StatsSink`].
struct Sink<'a> {
    stats: &'a WorkerStats,
    active: &'a AtomicUsize,
}

impl StatsSink for Sink<'_> {
    fn add(&self, c: &Counts) {
        // Called once per tick with small counts; the WorkerStats API counts one event per call.
        for _ in 0..c.accepted {
            self.stats.accepted();
        }
        for _ in 0..c.rejected {
            self.stats.rejected();
        }
        for _ in 0..c.closed {
            self.stats.closed();
        }
        if c.bytes_echoed > 0 {
            self.stats.echoed(c.bytes_echoed as usize);
        }
        for _ in 0..c.idle_timeouts {
            self.stats.idle_timeout();
        }
        let errors = [
            (c.errors_reset, libc::ECONNRESET),
            (c.errors_pipe, libc::EPIPE),
            (c.errors_other, libc::EIO),
        ];
        for (n, errno) in errors {
            for _ in 0..n {
                self.stats.conn_error(&io::Error::from_raw_os_error(errno));
            }
        }
        for _ in 0..c.accept_errors {
            self.stats.accept_error();
        }
    }

    fn conn_opened(&self, limit: Option<usize>) -> bool {
        // Same rule as `conn::ActiveSlot`: one shared count over all workers and engines.
        let previous = self.active.fetch_add(1, Ordering::AcqRel);
        if limit.is_some_and(|max| previous >= max) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn conn_closed(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs one worker: builds the ring on this thread (SINGLE_ISSUER), reports ready, serves until
/// the shutdown tokens say otherwise.
pub(crate) fn run_worker(worker: Worker) {
    let Worker {
        index,
        listener,
        shared,
        ready,
    } = worker;
    let params = params(&shared.config);
    let (buffers, buffer_size) = (params.buffers, params.buffer_size);
    let engine = match Engine::new(listener, params) {
        Ok(engine) => engine,
        Err(err) => {
            ready.fail(anyhow::Error::new(err).context(format!(
                "cannot set up the uring-multishot engine (worker {index})"
            )));
            return;
        }
    };
    tracing::debug!(
        worker = index,
        buffers,
        buffer_size,
        pool_bytes = buffers * buffer_size,
        "uring-multishot worker ready"
    );
    ready.ok();
    let sink = Sink {
        stats: shared.stats.worker(index),
        active: &shared.active,
    };
    let stop = || shared.shutdown.stop_token().is_cancelled();
    let force = || shared.shutdown.force_token().is_cancelled();
    match engine.run(&sink, &stop, &force) {
        Ok(report) => tracing::debug!(worker = index, ?report, "uring-multishot worker done"),
        Err(err) => tracing::error!(worker = index, error = %err, "uring-multishot worker failed"),
    }
}
