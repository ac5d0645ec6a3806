//! The echo semantics, written once for both backends.
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
//! - **Errors stay local.** An I/O error ends that connection only; it is counted by kind
//!   (ECONNRESET, EPIPE, other), never logged per operation.
//! - **Interruptions are shutdowns, not drops.** tokio-uring cannot cancel a submitted operation:
//!   dropping a pending read would leave the kernel holding the socket and the peer would never
//!   see a FIN. So idle timeouts and forced drains never touch the connection task; the
//!   per-worker [`Registry`] calls `shutdown(SHUT_RDWR)` on the socket, the in-flight read or
//!   write completes (0 or EPIPE), and the loop ends by itself. This also keeps the per-operation
//!   path free of timers and cancellation futures: beyond the I/O itself, an operation costs one
//!   relaxed atomic add (the byte counter) and one `Cell` store (the progress stamp).
//!
//! Idle detection is coarse on purpose: a sweeper ticks every `idle/8` (10 ms..1 s) and closes
//! connections whose last progress (any completed read or write) is more than the timeout old, so
//! a connection is closed between `SECS` and `SECS + 2 ticks` after it stopped moving.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;

use crate::stats::Stats;

/// An accepted connection with owned-buffer I/O. Futures are `!Send`: every worker runs a
/// current-thread runtime.
pub(crate) trait EchoStream: AsRawFd {
    /// The buffer type the engine reads into and writes from.
    type Buf;

    /// Reads at most one buffer's worth; `Ok(0)` is end of stream.
    async fn read(&self, buf: Self::Buf) -> (io::Result<usize>, Self::Buf);

    /// Writes `buf[..len]` completely (short writes are continued).
    async fn write_all(&self, buf: Self::Buf, len: usize) -> (io::Result<()>, Self::Buf);

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
    /// Registry tick of the last completed read or write.
    last_progress: Cell<u64>,
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
    tick: Cell<u64>,
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

    /// Closes connections without progress for `idle`, checking every `idle / 8` (10 ms..1 s).
    /// Runs until dropped.
    pub(crate) async fn sweep_idle(&self, idle: Duration) {
        let period = (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
        // Progress is stamped with the tick current at the time, which may be up to one period
        // old: wait one extra tick so a connection is never closed before `idle` has passed.
        let idle_ticks = idle.as_nanos().div_ceil(period.as_nanos()) as u64 + 1;
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let now = self.tick.get() + 1;
            self.tick.set(now);
            for (_, conn) in self.conns.borrow().iter() {
                if now - conn.last_progress.get() >= idle_ticks {
                    conn.interrupt(Interrupt::Idle);
                }
            }
        }
    }

    fn register(self: &Rc<Self>, fd: RawFd) -> Registration {
        let state = Rc::new(ConnState {
            fd,
            last_progress: Cell::new(self.tick.get()),
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
        self.state.last_progress.set(self.registry.tick.get());
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.conns.borrow_mut().remove(self.key);
    }
}

/// Holds one slot of the global connection count (`--max-connections`) until dropped.
pub(crate) struct ActiveSlot(Arc<AtomicUsize>);

impl ActiveSlot {
    /// Takes a slot, or returns `None` when `max` connections are already open.
    pub(crate) fn acquire(active: &Arc<AtomicUsize>, max: Option<usize>) -> Option<ActiveSlot> {
        let previous = active.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| previous >= max) {
            active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ActiveSlot(Arc::clone(active)))
    }
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
    stream: S,
    buf: S::Buf,
    slot: ActiveSlot,
    ctx: Rc<ConnCtx>,
) {
    let stats = ctx.stats.worker(ctx.worker);
    // Declared after `stream`, so dropped before it: the registry never holds a closed fd.
    let registration = ctx.registry.register(stream.as_raw_fd());
    let result = echo(&stream, buf, &registration, |n| stats.echoed(n)).await;
    match (registration.state.interrupted.get(), result) {
        (Some(Interrupt::Idle), _) => stats.idle_timeout(),
        (Some(Interrupt::Forced), _) | (None, Ok(())) => {}
        (None, Err(err)) => stats.conn_error(&err),
    }
    stats.closed();
    drop(registration);
    drop(slot);
    drop(stream);
}

/// The echo loop itself; see the module docs.
async fn echo<S: EchoStream>(
    stream: &S,
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
