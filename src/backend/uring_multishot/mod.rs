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
//!
//! Optional features besides the receive budget (`ops`), each switchable with `--feature
//! NAME=on|off` and taken only where the probe found it:
//! - `no_sqarray` (on by default): the ring has no SQ index array; the kernel reads SQEs in ring
//!   order, the only order [`sq`] fills them in anyway, so one indirection per submitted SQE
//!   goes. The setup tries the flag rather than asking the probe first (the probe runs only
//!   once a ring works, so that a blocked io_uring stays one error line); a kernel that refuses
//!   it (EINVAL) gets the ring with the array, and the `features:` line lists it as missing.
//! - `ring_fd` (on by default): the ring fd is registered for the worker thread and every
//!   `io_uring_enter` passes the registered index, so the kernel skips the fd lookup and
//!   reference count of each enter. The index belongs to the thread and to the one `Submitter`
//!   the loop enters with, so `engine` registers it there (after a trial in `Engine::new`, so
//!   the `features:` line tells the truth); it is unregistered before the ring is dropped,
//!   since it holds a reference that would keep the ring, and operations abandoned in it, alive
//!   until the thread exits.
//! - `send_zc` (off by default): sends of at least [`ZC_MIN_SEND`] bytes are
//!   `IORING_OP_SEND_ZC`. The completion says how much was sent; the kernel may read the buffer
//!   until a second CQE, the notification, which the completion announces with `F_MORE`.
//!   Invariant: a buffer a zero-copy send read from goes back to the ring only once its
//!   connection has no notification pending (a per-connection count, which assumes nothing
//!   about the order notifications come in); until then the connection holds it, and it counts
//!   against the connection's buffer cap like a queued one, so the backpressure bound holds and
//!   receiving pauses until the notifications come. The close may be submitted before them
//!   (they need no fd; a peer that never reads must not pin the socket open); the slot is freed
//!   by whichever comes last, the close's CQE or the last notification.
//! - `bundle` (off by default; only with the budgeted receive): the multishot receive is
//!   bundled, so one CQE may bring several provided buffers: the one it names and the ones
//!   after it in the ring, all full but the last. `buf_ring` takes them in ring order and
//!   checks the run against its copy of the ring head before taking any (kernels have had
//!   bundle bugs that reordered buffers); a refused run fails the connection, never the echo.
//!   The cap is checked after each CQE, so one bundle may take a connection past it by the
//!   rest of its byte budget; the budget still bounds it.
//! - `buf_ring_inc` (off by default; wins over `bundle`): the pool is registered with
//!   `IOU_PBUF_RING_INC`, so a receive takes only the bytes it needs and the next receive, of
//!   any connection, continues in the same buffer. Each receive is a slice, echoed on its own;
//!   a buffer goes back to the ring once the kernel is done with it (a CQE without
//!   `IORING_CQE_F_BUF_MORE`) and its last slice is sent. The cap counts slices. Invariants and
//!   what the kernel guarantees: `buf_ring`.

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
    default_buffer_count, Params, RecvBudget, DEFAULT_MAX_QUEUED_BUFFERS, DEFAULT_TICK, ZC_MIN_SEND,
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
    // An insisted feature the kernel has but this configuration cannot use (e.g. `bundle`
    // without the receive budget) is refused too: the `features:` line would contradict it.
    if let Some(switch) = shared
        .config
        .uring
        .features
        .iter()
        .find(|s| s.on && !usage.uses(s.feature))
    {
        ready.fail(anyhow::anyhow!(
            "--feature {}=on: the engine cannot use it with these flags on this kernel (see \
             README \"Kernels\")",
            switch.feature
        ));
        return;
    }
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
