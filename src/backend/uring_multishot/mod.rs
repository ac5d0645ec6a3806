//! `--runtime uring-multishot`: an echo engine written directly on the `io-uring` crate.
//!
//! Why it exists: tokio-uring issues one single-shot accept/recv per operation and has no
//! provided-buffer rings, which costs a submission (and often a syscall) per message. This engine
//! keeps one multishot recv per connection armed in the kernel, receives into a shared
//! provided-buffer ring and echoes straight from the buffer the kernel filled, so a steady echo
//! costs one `Send` SQE per received buffer and a handful of `io_uring_enter` calls per loop
//! iteration shared by every connection. On kernels without the multishot receive byte budget
//! (before Linux 6.17) it arms single-shot receives of one provided buffer instead, which keeps
//! the per-connection bound at one more SQE per received buffer (`ops`).
//!
//! What one worker owns (one [`Engine`] per worker thread, created *on* that thread, because the
//! ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN`; the type is not `Send`):
//! - the ring, with a periodic tick that bounds every wait and, with `--idle-timeout`, an idle
//!   sweep timer;
//! - a provided-buffer pool of `buffers × buffer_size` bytes, the only packet memory the engine
//!   uses;
//! - the connections, each with at most one send in flight and a bounded queue of received
//!   buffers.
//!
//! What happens to connections (admission, accept back-off and its log, error kinds, drain grace,
//! idle timing) is [`crate::policy`], shared with the tokio engines, and counts reach
//! [`crate::stats`] through [`WorkerStats::add`](crate::stats::WorkerStats::add) like theirs:
//! rejected connections are accepted and closed at once, idle and forced closes are not errors,
//! the first I/O error of a connection is counted by kind, late accepts during a stop count as
//! rejected, and the listener is closed once accepting has stopped so new attempts are refused
//! while draining.
//!
//! Files, by concern:
//! - `engine`: [`Engine`] setup, run and teardown (what happens to buffers that abandoned
//!   operations may still use), the [`Report`];
//! - `event_loop`: the loop state (grouped: accepts, lifecycle, timers, batching, counters), the
//!   loop, the wait, timers, stop and drain;
//! - `accept`: bounded single-shot accepts (why not multishot), admission, back-off;
//! - `ops` and `conn`: per-connection receive/send/close and their invariants (backpressure);
//! - `batch`: how long each wait waits (`--batch-wait`);
//! - `buf_ring`: the provided-buffer pool and its per-buffer ownership checks;
//! - `sq`: the submission queue wrapper and user_data encoding.
//!
//! Kernel features are probed by [`crate::probe`]; [`Params::usage`] decides which this engine
//! uses, and the engine takes every decision from that [`Usage`](crate::probe::Usage).

mod accept;
mod batch;
pub(crate) mod buf_ring;
mod conn;
mod engine;
mod event_loop;
mod ops;
mod params;
pub(crate) mod sq;

pub use accept::ACCEPT_DEPTH;
pub use engine::{Engine, Report};
pub use params::{
    default_buffer_count, Params, RecvBudget, DEFAULT_MAX_QUEUED_BUFFERS, DEFAULT_TICK,
};

use super::Worker;

/// Runs one worker: builds the ring on this thread (SINGLE_ISSUER), reports ready, serves until
/// the shutdown tokens say otherwise.
pub(crate) fn run_worker(worker: Worker) {
    let Worker {
        index,
        listener,
        shared,
        ready,
    } = worker;
    // Probed only when a feature is insisted on: where io_uring is unavailable, the engine's
    // own setup error (below) is the one line to report.
    if let Some(switch) = shared
        .config
        .uring
        .features
        .iter()
        .find(|s| s.on && !crate::probe::features().has(s.feature))
    {
        ready.fail(anyhow::anyhow!(
            "--feature {}=on: this kernel does not have it (upstream since Linux {}; see the \
             features: line and README \"Kernels\")",
            switch.feature,
            switch.feature.since()
        ));
        return;
    }
    let params = Params::from_config(&shared.config);
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
    let usage = engine.usage();
    tracing::debug!(
        worker = index,
        buffers,
        buffer_size,
        pool_bytes = buffers * buffer_size,
        ?usage,
        "uring-multishot worker ready"
    );
    ready.ok_with(usage);
    let stats = shared.stats.worker(index);
    match engine.run(stats, &shared.admission, &shared.shutdown) {
        Ok(report) => tracing::debug!(worker = index, ?report, "uring-multishot worker done"),
        Err(err) => tracing::error!(worker = index, error = %err, "uring-multishot worker failed"),
    }
}
