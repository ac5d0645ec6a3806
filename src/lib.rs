//! uring-echo: a TCP echo server with three I/O engines in one binary, so that io_uring and
//! epoll can be compared on identical echo semantics: `uring` (tokio-uring), `epoll` (tokio) and
//! `uring-multishot` (the raw `io-uring` crate: multishot receive into a provided-buffer ring).
//!
//! The binary only parses flags and calls [`run`]; everything else lives here so tests and other
//! programs can run the server in-process and stop it with a [`Shutdown`] instead of a signal.
//!
//! Module map, top-down:
//! - [`config`]: clap [`Cli`](config::Cli) (raw flags) -> validated [`Config`];
//! - [`listener`]: listening sockets built with socket2 (backlog, dual-stack, SO_REUSEPORT);
//! - [`backend`]: worker threads; each runs one engine:
//!   - `backend::uring` and `backend::epoll` supply a tokio runtime, accept and owned-buffer
//!     read/write; the accept loop and drain are `backend::serve`, the echo loop `conn`, both
//!     written once for the two;
//!   - [`backend::uring_multishot`]: its own event loop on a raw io_uring;
//! - [`policy`]: what happens to connections on every engine (admission, accept back-off and
//!   error log, error kinds, drain grace, idle timing), with no runtime in it;
//! - [`probe`]: which io_uring features the kernel has (found by trying them, once per
//!   process), the `features:` line, and why io_uring cannot be set up where it cannot;
//! - [`shutdown`]: SIGINT/SIGTERM -> stop (drain) and force (close now) tokens;
//! - [`stats`]: per-worker counters, fed by every engine through one typed call, and the
//!   `summary:`/`stats:` lines.
//!
//! Threading: `--threads N` workers, each an OS thread with its own engine instance and its own
//! listening socket (SO_REUSEPORT when N > 1); nothing is shared between workers on the
//! per-operation path except their own stats block. A worker that panics (an engine bug, such as
//! a failed buffer-ownership check) takes the server down with it: the others are forced to stop
//! at once and [`Server::wait`] returns an error naming the worker and the panic, so the process
//! never goes on serving with workers missing.

#![warn(missing_docs)]

pub mod backend;
pub mod config;
mod conn;
pub mod listener;
pub mod policy;
pub mod probe;
pub mod shutdown;
pub mod stats;

use std::any::Any;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};

pub use config::Config;
pub use shutdown::Shutdown;
pub use stats::Summary;

use backend::{Ready, Shared, Worker};
use listener::ListenOpts;
use policy::Admission;
use probe::FeatureReport;

/// A started server: every worker is accepting on [`Server::local_addr`].
pub struct Server {
    local_addr: SocketAddr,
    features: FeatureReport,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Disconnects once every worker thread has exited.
    done: mpsc::Receiver<()>,
}

/// Binds the listeners, starts the workers and returns once all of them accept.
///
/// Setup errors (address in use, io_uring refused, locked-memory limit) are returned after the
/// workers that did start have been stopped again.
pub fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<Server> {
    backend::uring::check_memlock(&config)?;
    warn_about_cpus(&config);
    let opts = ListenOpts {
        backlog: config.backlog,
        ipv6_only: config.ipv6_only,
        reuse_port: config.threads > 1,
    };
    let listeners = listener::bind_all(config.listen, config.threads, &opts)?;
    let local_addr = listeners[0]
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {}", config.listen))?;

    let shared = Arc::new(Shared {
        stats: Arc::new(stats::Stats::new(config.threads)),
        admission: Admission::new(config.max_connections),
        config,
        shutdown,
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel::<()>();
    let mut threads = Vec::new();
    let mut spawn_error = None;
    for (index, listener) in listeners.into_iter().enumerate() {
        let worker = Worker {
            index,
            listener,
            shared: Arc::clone(&shared),
            ready: Ready::new(ready_tx.clone()),
        };
        let done_tx = done_tx.clone();
        let stop_on_panic = StopOnPanic {
            index,
            shutdown: shared.shutdown.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("uring-echo-{index}"))
            .spawn(move || {
                let _stop_on_panic = stop_on_panic;
                backend::run_worker(worker);
                drop(done_tx);
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(err) => {
                spawn_error = Some(anyhow::Error::new(err).context("cannot start a worker thread"));
                break;
            }
        }
    }
    drop((ready_tx, done_tx));

    let mut first_error = spawn_error;
    let mut usage = None;
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            // Every worker runs the same engine with the same configuration on one kernel.
            Ok(Ok(worker_usage)) => {
                usage.get_or_insert(worker_usage);
            }
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            Err(_) => {
                first_error.get_or_insert(anyhow!("a worker thread exited during startup"));
                break;
            }
        }
    }
    let features = FeatureReport::new(shared.config.runtime, usage.unwrap_or_default());
    let server = Server {
        local_addr,
        features,
        shared,
        threads,
        done,
    };
    match first_error {
        None => Ok(server),
        Some(err) => {
            server.shared.shutdown.force();
            // Any error joining is secondary to the setup error being reported.
            let _ = server.wait();
            Err(err)
        }
    }
}

impl Server {
    /// The address every worker listens on (with the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The kernel and the io_uring features this server's engine uses, lacks and leaves off
    /// (the `features:` line).
    pub fn features(&self) -> &FeatureReport {
        &self.features
    }

    /// Counters right now.
    pub fn snapshot(&self) -> Summary {
        self.shared.stats.snapshot()
    }

    /// Waits until shutdown was requested and every worker has drained, printing a `stats:`
    /// line to stderr every `--stats-interval`. Returns the final counters, or an error if a
    /// worker panicked (which forces every other worker to stop too).
    pub fn wait(self) -> anyhow::Result<Summary> {
        let interval = self.shared.config.stats_interval;
        loop {
            let received = match interval {
                Some(period) => self.done.recv_timeout(period),
                None => self
                    .done
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match received {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    eprintln!("stats: {}", self.shared.stats.snapshot());
                }
                // Nothing is ever sent: the channel disconnects when the last worker exits.
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        join_workers(self.threads)?;
        Ok(self.shared.stats.snapshot())
    }
}

/// Held by each worker thread: if the worker panics, forces every worker to stop. The others
/// would otherwise go on serving, a worker short, after an engine bug until a signal came.
struct StopOnPanic {
    index: usize,
    shutdown: Shutdown,
}

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                worker = self.index,
                "worker panicked: closing every connection and stopping the server"
            );
            self.shutdown.force();
        }
    }
}

/// Joins every worker; the first that panicked becomes the error, with its panic message on one
/// line.
fn join_workers(threads: Vec<JoinHandle<()>>) -> anyhow::Result<()> {
    let mut first_panic = None;
    for (index, thread) in threads.into_iter().enumerate() {
        if let Err(payload) = thread.join() {
            first_panic.get_or_insert_with(|| {
                anyhow!(
                    "worker {index} panicked: {}; the server was stopped",
                    panic_message(payload.as_ref()).replace('\n', " ")
                )
            });
        }
    }
    first_panic.map_or(Ok(()), Err)
}

/// The message of a panic payload (`panic!` makes a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs the server until `shutdown` stops it: once every worker accepts, prints the `features:`
/// line to stderr and then `listening on <addr>` to stdout; `stats:` lines while running (if
/// asked) and the `summary:` line (ending with the kernel and the features in use) to stderr at
/// the end.
pub fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<Summary> {
    let server = start(config, shutdown)?;
    let features = server.features().clone();
    eprintln!("{features}");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.local_addr())
        .and_then(|()| stdout.flush())
        .context("cannot write the ready line to stdout")?;
    drop(stdout);
    let summary = server.wait()?;
    eprintln!("summary: {summary} {}", features.summary_suffix());
    Ok(summary)
}

/// Warnings for CPU layouts that work but will measure badly.
fn warn_about_cpus(config: &Config) {
    let available = config::allowed_cpus().map(|c| c.len()).unwrap_or(0);
    if config.uring.sqpoll_idle_ms.is_some() && available > 0 && config.threads * 2 > available {
        tracing::warn!(
            threads = config.threads,
            cpus = available,
            "--sqpoll adds a kernel polling thread per worker: {} busy threads on {available} CPUs will compete",
            config.threads * 2
        );
    }
    let distinct = {
        let mut c = config.cpus.clone();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    if !config.cpus.is_empty() && config.threads > distinct {
        tracing::warn!(
            threads = config.threads,
            cpus = distinct,
            "more worker threads than pinned CPUs: some threads share a CPU"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The wiring `start` gives each worker thread, around a stand-in for the engine.
    fn worker(
        index: usize,
        shutdown: &Shutdown,
        body: impl FnOnce(&Shutdown) + Send + 'static,
    ) -> JoinHandle<()> {
        let stop_on_panic = StopOnPanic {
            index,
            shutdown: shutdown.clone(),
        };
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            let _stop_on_panic = stop_on_panic;
            body(&shutdown);
        })
    }

    #[test]
    fn a_panicking_worker_stops_the_others_and_is_the_error() {
        let shutdown = Shutdown::new();
        // Serves until forced to stop, as the engines do (bounded, so a failure cannot hang).
        let serving = worker(0, &shutdown, |s| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !s.force_token().is_cancelled() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let panicking = worker(1, &shutdown, |_| {
            panic!("provided buffer {} recycled twice\nsecond line", 3)
        });
        let err = join_workers(vec![serving, panicking]).unwrap_err();
        assert!(shutdown.force_token().is_cancelled());
        assert_eq!(
            format!("{err:#}"),
            "worker 1 panicked: provided buffer 3 recycled twice second line; the server was stopped"
        );
        assert_eq!(panic_message(&"a literal"), "a literal");

        let calm = Shutdown::new();
        assert!(join_workers(vec![worker(0, &calm, |_| {})]).is_ok());
        assert!(!calm.stop_token().is_cancelled());
    }
}
