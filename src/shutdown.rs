//! Shutdown requests: SIGINT/SIGTERM (or a caller) -> cancellation tokens every worker watches.
//!
//! Two stages, both plain [`CancellationToken`]s so tests and embedders drive them without
//! signals:
//! - `stop`: stop accepting, close the listeners, let open connections finish (up to
//!   `--drain-timeout`);
//! - `force`: close every connection now (the drain timeout expiring, or a second signal).
//!
//! Signals are received by a small tokio runtime on its own thread, because the workers'
//! runtimes are per-thread and may not be tokio-proper (tokio-uring), and the main thread is busy
//! waiting for the workers.

use tokio_util::sync::CancellationToken;

/// The two shutdown stages shared by all workers. Cloning shares the same tokens.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    force: CancellationToken,
}

impl Shutdown {
    /// Nothing requested yet.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Requests a graceful stop: no new connections, open ones drain.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Requests that every connection be closed now (implies [`Shutdown::stop`]).
    pub fn force(&self) {
        self.stop.cancel();
        self.force.cancel();
    }

    /// Cancelled once a stop was requested.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Cancelled once connections must close now.
    pub fn force_token(&self) -> &CancellationToken {
        &self.force
    }
}

/// Turns the first SIGINT/SIGTERM into [`Shutdown::stop`] and the second into
/// [`Shutdown::force`].
///
/// The handlers are registered before this returns, so a signal that arrives later is never
/// lost to the default action (which would kill the process without a summary).
pub fn install_signal_handlers(shutdown: &Shutdown) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot create the signal-handling runtime")?;
    let (mut term, mut int) = {
        let _guard = rt.enter();
        let term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
        (term, int)
    };
    let shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("uring-echo-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut received = 0;
                loop {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                    };
                    received += 1;
                    if received == 1 {
                        tracing::info!(
                            signal = name,
                            "stopping: draining open connections (signal again to close them now)"
                        );
                        shutdown.stop();
                    } else {
                        tracing::info!(signal = name, "closing all connections now");
                        shutdown.force();
                    }
                }
            })
        })
        .context("cannot start the signal-handling thread")?;
    Ok(())
}
