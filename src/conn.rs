//! The echo loop of the two tokio engines (`uring`, `epoll`), written once for both.
//!
//! A backend supplies an [`EchoStream`]: an accepted socket with owned-buffer `read` and
//! `write_all` (the io_uring shape: the buffer travels to the kernel and comes back with the
//! result). [`serve`] then runs the same loop on either engine:
//!
//! 1. read at most one buffer;
//! 2. on 0 (the peer's FIN): everything read has already been written back, so close (the peer
//!    sees our FIN after the last byte);
//! 3. otherwise write back exactly those `n` bytes, completely, and only then read again.
//!
//! Invariants:
//! - **Bounded memory.** One buffer per connection, never more: a client that writes and never
//!   reads stalls our write, so we stop reading and TCP flow control pushes back on it.
//! - **Errors stay local.** An I/O error ends that connection only; it is counted by
//!   [`ErrorKind`], never logged per operation.
//! - **Interruptions are shutdowns, not drops.** tokio-uring cannot cancel a submitted operation:
//!   dropping a pending read would leave the kernel holding the socket and the peer would never
//!   see a FIN. So idle timeouts and forced drains never touch the connection task; the
//!   per-worker [`Registry`] calls `shutdown(SHUT_RDWR)` on the socket, the in-flight read or
//!   write completes (0 or EPIPE), and the loop ends by itself. This also keeps the per-operation
//!   path free of timers and cancellation futures: beyond the I/O itself, an operation costs one
//!   relaxed atomic add (the byte counter) and one `Cell` store (the progress flag).
//!
//! Idle timing is [`IdleSweep`]'s, shared with the multishot engine: a sweeper task runs every
//! [`IdleSweep::period`] and the connection is closed within [`IdleSweep::window`] of its last
//! completed read or write, never before the timeout.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use crate::policy::{Admitted, ErrorKind, IdleStamp, IdleSweep};
use crate::stats::{Counts, Stats};

/// An accepted connection with owned-buffer I/O. Futures are `!Send`: every worker runs a
/// current-thread runtime.
pub(crate) trait EchoStream: AsRawFd {
    /// The buffer type the engine reads into and writes from.
    type Buf;

    /// Reads at most one buffer's worth; `Ok(0)` is end of stream.
    async fn read(&mut self, buf: Self::Buf) -> (io::Result<usize>, Self::Buf);

    /// Writes `buf[..len]` completely (short writes are continued).
    async fn write_all(&mut self, buf: Self::Buf, len: usize) -> (io::Result<()>, Self::Buf);

    /// Sets TCP_NODELAY.
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;
}

/// Why a connection was shut down from outside its own loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interrupt {
    Idle,
    Forced,
}

/// What the registry knows about one open connection.
#[derive(Debug)]
struct ConnState {
    fd: RawFd,
    /// Progress since the last idle sweep, and since when the connection is quiet.
    idle: IdleStamp,
    interrupted: Cell<Option<Interrupt>>,
}

impl ConnState {
    /// Shuts the socket down in both directions so that whatever operation is in flight
    /// completes now; the first reason wins.
    fn interrupt(&self, why: Interrupt) {
        if self.interrupted.get().is_none() {
            self.interrupted.set(Some(why));
        }
        // SAFETY: plain syscall on an fd that stays open while it is registered (the connection
        // deregisters before its socket is closed, on this same thread). Errors (e.g. ENOTCONN
        // after a reset) mean there is nothing left to shut down.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}

/// One worker's open connections: the handle for idle sweeps and forced drains.
///
/// Single-threaded (`Rc`/`Cell`), like everything a worker owns.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: RefCell<Slab<Rc<ConnState>>>,
}

impl Registry {
    /// Number of open connections.
    pub(crate) fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Shuts down every open connection (drain deadline or second signal).
    pub(crate) fn force_all(&self) {
        for (_, conn) in self.conns.borrow().iter() {
            conn.interrupt(Interrupt::Forced);
        }
    }

    /// Closes connections idle for `sweep.idle()`, sweeping every `sweep.period()`. Runs until
    /// dropped.
    pub(crate) async fn sweep_idle(&self, sweep: IdleSweep) {
        let mut interval = tokio::time::interval(sweep.period());
        // A late sweep delays the next one rather than bunching them: sweeps stay at least one
        // period apart, which is what `IdleSweep::window` assumes.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let now = Instant::now();
            for (_, conn) in self.conns.borrow().iter() {
                if sweep.expired(now, &conn.idle) {
                    conn.interrupt(Interrupt::Idle);
                }
            }
        }
    }

    fn register(self: &Rc<Self>, fd: RawFd) -> Registration {
        let state = Rc::new(ConnState {
            fd,
            idle: IdleStamp::new(Instant::now()),
            interrupted: Cell::new(None),
        });
        let key = self.conns.borrow_mut().insert(Rc::clone(&state));
        Registration {
            registry: Rc::clone(self),
            key,
            state,
        }
    }
}

/// A connection's entry in the registry; removed on drop.
struct Registration {
    registry: Rc<Registry>,
    key: usize,
    state: Rc<ConnState>,
}

impl Registration {
    #[inline]
    fn progress(&self) {
        self.state.idle.progress();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.conns.borrow_mut().remove(self.key);
    }
}

/// Everything a connection task needs besides its socket and buffer.
pub(crate) struct ConnCtx {
    pub(crate) registry: Rc<Registry>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) worker: usize,
}

/// Serves one accepted connection to its end and accounts for it. Never fails: errors are
/// counted, and the socket is closed when this returns.
pub(crate) async fn serve<S: EchoStream>(
    mut stream: S,
    buf: S::Buf,
    admitted: Admitted,
    ctx: Rc<ConnCtx>,
) {
    let stats = ctx.stats.worker(ctx.worker);
    // Declared after `stream`, so dropped before it: the registry never holds a closed fd.
    let registration = ctx.registry.register(stream.as_raw_fd());
    let result = echo(&mut stream, buf, &registration, |n| {
        stats.add(&Counts::echoed(n))
    })
    .await;
    let mut end = Counts {
        closed: 1,
        ..Counts::default()
    };
    match (registration.state.interrupted.get(), result) {
        (Some(Interrupt::Idle), _) => end.idle_timeouts = 1,
        (Some(Interrupt::Forced), _) | (None, Ok(())) => {}
        (None, Err(err)) => end.error(ErrorKind::of(&err)),
    }
    stats.add(&end);
    drop(registration);
    drop(admitted);
    drop(stream);
}

/// The echo loop itself; see the module docs.
async fn echo<S: EchoStream>(
    stream: &mut S,
    mut buf: S::Buf,
    registration: &Registration,
    echoed: impl Fn(usize),
) -> io::Result<()> {
    loop {
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = res?;
        if n == 0 {
            return Ok(());
        }
        registration.progress();
        let (res, b) = stream.write_all(buf, n).await;
        buf = b;
        res?;
        echoed(n);
        registration.progress();
    }
}
