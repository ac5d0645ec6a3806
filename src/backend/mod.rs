//! Worker threads, and the accept loop of the two tokio engines.
//!
//! A worker is one OS thread with one engine and one listening socket. `run_worker` pins it
//! and hands it to the engine `--runtime` names:
//! - `uring` (tokio-uring) and `epoll` (tokio) only build their runtime, wrap the listener
//!   and provide accept and the `EchoStream`; the accept loop, draining and the echo loop are
//!   `serve` and `conn`, written once for both;
//! - [`uring_multishot`] is its own event loop on the raw `io-uring` crate.
//!
//! What happens to connections (admission, accept back-off and its log, error kinds, drain grace,
//! idle timing) is [`crate::policy`] for all three, so an A/B comparison differs only in the I/O
//! engine.
//!
//! Worker lifecycle of the tokio engines (the multishot engine follows the same steps with
//! io_uring operations, see its module docs):
//! 1. pin to its CPU (if asked), build the runtime, register the listener (and fixed buffers);
//! 2. report ready (the ready line waits for every worker) or the setup error;
//! 3. accept until the stop token fires; each connection becomes a task tracked by a
//!    `TaskTracker`;
//! 4. stop: interrupt the pending accept with `shutdown(SHUT_RD)` on the listener (a submitted
//!    io_uring accept cannot be dropped safely), close the listener, wait for connections up to
//!    the drain timeout, then shut the rest down and wait [`DRAIN_GRACE`] for them to finish;
//!    tasks still running then are dropped with the runtime (tokio-uring's driver cancels their
//!    operations when it is dropped).

pub(crate) mod epoll;
pub(crate) mod uring;
pub mod uring_multishot;

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::{Config, RuntimeKind};
use crate::conn::{self, ConnCtx, EchoStream, Registry};
use crate::policy::{
    accept_error_class, AcceptBackoff, AcceptErrorClass, AcceptErrorLog, Admission, IdleSweep,
    DRAIN_GRACE,
};
use crate::probe::Usage;
use crate::shutdown::Shutdown;
use crate::stats::{Counts, Stats};

/// `shutdown(SHUT_RD)` ends a stopping loop's accept at once; this bounds a stop if it did not.
const LATE_ACCEPT_WAIT: Duration = Duration::from_secs(1);

/// A listening socket wrapped for one engine.
pub(crate) trait Listener: AsRawFd {
    /// The accepted connection type.
    type Stream: EchoStream + 'static;

    /// Accepts one connection.
    async fn accept(&self) -> io::Result<Self::Stream>;

    /// A buffer for a new connection.
    fn buffer(&self) -> <Self::Stream as EchoStream>::Buf;
}

/// State shared by every worker of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: Shutdown,
    /// Open connections over all workers and `--max-connections`.
    pub(crate) admission: Admission,
}

/// What one worker thread starts with.
pub(crate) struct Worker {
    pub(crate) index: usize,
    pub(crate) listener: std::net::TcpListener,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ready: Ready,
}

/// Reports a worker's setup outcome to the thread that prints the ready line, exactly once: the
/// error, or what the worker's engine does with the kernel's io_uring features (the
/// `features:` line is made from it, so it says what the engines actually decided).
pub(crate) struct Ready(mpsc::Sender<anyhow::Result<Usage>>);

impl Ready {
    pub(crate) fn new(tx: mpsc::Sender<anyhow::Result<Usage>>) -> Ready {
        Ready(tx)
    }

    /// Setup succeeded: this worker accepts, using no io_uring feature (epoll).
    pub(crate) fn ok(self) {
        self.ok_with(Usage::new());
    }

    /// Setup succeeded: this worker accepts, with this use of io_uring features.
    pub(crate) fn ok_with(self, usage: Usage) {
        // The receiver only goes away once startup is over; nothing to report to then.
        let _ = self.0.send(Ok(usage));
    }

    /// Setup failed; the server will stop and exit with this error.
    pub(crate) fn fail(self, err: anyhow::Error) {
        let _ = self.0.send(Err(err));
    }
}

/// Body of a worker thread: pin, then hand over to the engine.
pub(crate) fn run_worker(worker: Worker) {
    if let Some(cpu) = worker.shared.config.cpu_for(worker.index) {
        if let Err(err) = pin_current_thread(cpu) {
            let index = worker.index;
            worker.ready.fail(
                anyhow::Error::new(err).context(format!("cannot pin worker {index} to CPU {cpu}")),
            );
            return;
        }
    }
    match worker.shared.config.runtime {
        RuntimeKind::Uring => uring::run_worker(worker),
        RuntimeKind::Epoll => epoll::run_worker(worker),
        // Its own event loop (no tokio runtime, no `serve`), with the same policy.
        RuntimeKind::UringMultishot => uring_multishot::run_worker(worker),
    }
}

fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < CPU_SETSIZE (checked by the config parser).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 = this thread; the size matches the set.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Accepts and serves connections until shutdown, then drains. Runs inside the worker's runtime
/// (a `LocalSet` context, so connection tasks may be `!Send`).
pub(crate) async fn serve<L: Listener>(listener: L, index: usize, shared: Arc<Shared>) {
    let config = &shared.config;
    let registry = Rc::new(Registry::default());
    let tracker = TaskTracker::new();
    let sweeper = config.idle_timeout.map(|idle| {
        let registry = Rc::clone(&registry);
        tokio::task::spawn_local(async move { registry.sweep_idle(IdleSweep::new(idle)).await })
    });
    let ctx = Rc::new(ConnCtx {
        registry: Rc::clone(&registry),
        stats: Arc::clone(&shared.stats),
        worker: index,
    });

    accept_loop(&listener, &shared, &tracker, &ctx).await;
    // Closing the listener makes new connection attempts fail fast instead of queueing.
    drop(listener);

    drain(index, &shared, &tracker, &registry).await;
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
}

async fn accept_loop<L: Listener>(
    listener: &L,
    shared: &Shared,
    tracker: &TaskTracker,
    ctx: &Rc<ConnCtx>,
) {
    let config = &shared.config;
    let stats = shared.stats.worker(ctx.worker);
    let stopped = shared.shutdown.stop_token().cancelled();
    tokio::pin!(stopped);
    let mut backoff = AcceptBackoff::default();
    let mut log = AcceptErrorLog::default();
    let rejected = Counts {
        rejected: 1,
        ..Counts::default()
    };

    loop {
        let accept = listener.accept();
        tokio::pin!(accept);
        let result = tokio::select! {
            biased;
            result = &mut accept => result,
            _ = &mut stopped => {
                // A submitted io_uring accept cannot be dropped safely (it would still complete,
                // with a connection nobody closes). shutdown(SHUT_RD) on a listening socket makes
                // a pending accept fail with EINVAL on both tokio engines; wait for that.
                // SAFETY: plain syscall on the listener's open fd.
                unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
                if let Ok(Ok(_late)) = tokio::time::timeout(LATE_ACCEPT_WAIT, accept).await {
                    stats.add(&rejected);
                }
                return;
            }
        };

        let stream = match result {
            Ok(stream) => {
                backoff.succeeded();
                stream
            }
            Err(err) => {
                stats.add(&Counts {
                    accept_errors: 1,
                    ..Counts::default()
                });
                if accept_error_class(err.raw_os_error()) == AcceptErrorClass::Transient {
                    debug!(error = %err, "accept: connection aborted");
                    continue;
                }
                let pause = backoff.failed();
                log.record(Instant::now(), &err, pause);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut stopped => {}
                }
                continue;
            }
        };

        let Some(admitted) = shared.admission.admit() else {
            stats.add(&rejected);
            drop(stream);
            continue;
        };
        stats.add(&Counts {
            accepted: 1,
            ..Counts::default()
        });
        if config.nodelay {
            if let Err(err) = stream.set_nodelay(true) {
                debug!(error = %err, "cannot set TCP_NODELAY");
            }
        }
        let buf = listener.buffer();
        tracker.spawn_local(conn::serve(stream, buf, admitted, Rc::clone(ctx)));
        // Let the connections run before accepting the next one. Without this, while accept
        // keeps succeeding (a connect/close storm), tokio's cooperative budget lets this loop
        // accept many connections per turn while the local set polls only some of the
        // connection tasks: accepted but unserved connections pile up until the fd limit (see
        // bench/README.md). Costs one scheduler turn per accept.
        tokio::task::yield_now().await;
    }
}

async fn drain(index: usize, shared: &Shared, tracker: &TaskTracker, registry: &Registry) {
    tracker.close();
    let config = &shared.config;
    let forced = tokio::select! {
        _ = tracker.wait() => false,
        _ = tokio::time::sleep(config.drain_timeout) => true,
        _ = shared.shutdown.force_token().cancelled() => true,
    };
    if forced && !tracker.is_empty() {
        warn!(
            worker = index,
            open = registry.len(),
            "closing connections still open after the drain timeout"
        );
        registry.force_all();
        if tokio::time::timeout(DRAIN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                worker = index,
                open = tracker.len(),
                "connections did not finish after shutdown(2)"
            );
        }
    }
}
