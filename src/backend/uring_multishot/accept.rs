//! Accepting connections: bounded single-shot accepts, admission, back-off after errors.
//!
//! Accept is *not* multishot, on purpose: a multishot accept empties the whole accept queue in
//! one `io_uring_enter` (the kernel retries while the queue is non-empty). Under a connect/close
//! storm that means bursts of accepted sockets whose clients have already gone, each waiting for
//! its EOF and close round trips, and a server at the common 1024-fd limit runs out of fds while
//! only a handful of connections are alive (figures in bench/README.md). Instead [`ACCEPT_DEPTH`]
//! single-shot accepts are kept in flight and topped up once per loop iteration, after the
//! batch's closes were queued, so accepting never outruns serving and the rest of a burst waits
//! in the kernel's accept queue (which `--backlog` sizes). Accepts are rare next to messages, so
//! the extra SQEs do not show on the echo path.
//!
//! Errors follow [`crate::policy`] like every engine: transient ones are counted and accepting
//! goes on; others are counted, logged at most once a second, and pause accepting with
//! [`AcceptBackoff`]'s pause, here an io_uring timeout (one pause covers every accept in flight,
//! since they most likely fail the same way).

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::opcode;
use io_uring::types::{CancelBuilder, Fd, Timespec};
use tracing::debug;

use super::conn::Conn;
use super::event_loop::Loop;
use super::sq::{user_data, Op};
use crate::policy::{accept_error_class, AcceptBackoff, AcceptErrorClass, AcceptErrorLog};

/// Single-shot accepts kept in flight: the most connections one loop iteration admits.
pub const ACCEPT_DEPTH: usize = 8;

/// The listener and the accepts in flight on it.
pub(super) struct AcceptState<'p> {
    listen_fd: RawFd,
    /// Taken (closed) once accepting has ended during a stop, so that new connection attempts
    /// are refused instead of waiting in the backlog until the worker exits.
    listener: &'p mut Option<TcpListener>,
    /// Single-shot accepts submitted (or queued) whose CQE has not arrived.
    in_flight: usize,
    /// The `AsyncCancel` of every accept in flight (at stop) has not completed.
    cancel_pending: bool,
    /// A back-off timeout is pending: no accept is submitted until its CQE.
    backing_off: bool,
    backoff: AcceptBackoff,
    /// The pending pause, for the log.
    pause: Duration,
    /// The pending pause as the kernel reads it; boxed so that its address is stable until the
    /// SQE that points at it has been submitted.
    pause_ts: Box<Timespec>,
    log: AcceptErrorLog,
}

impl<'p> AcceptState<'p> {
    pub(super) fn new(listener: &'p mut Option<TcpListener>) -> Self {
        AcceptState {
            listen_fd: listener.as_ref().map_or(-1, |l| l.as_raw_fd()),
            listener,
            in_flight: 0,
            cancel_pending: false,
            backing_off: false,
            backoff: AcceptBackoff::default(),
            pause: Duration::ZERO,
            pause_ts: Box::new(Timespec::new()),
            log: AcceptErrorLog::default(),
        }
    }

    /// No accept and no cancel of one is in flight any more.
    pub(super) fn ended(&self) -> bool {
        self.in_flight == 0 && !self.cancel_pending
    }

    pub(super) fn cancel_done(&mut self) {
        self.cancel_pending = false;
    }

    pub(super) fn pause_over(&mut self) {
        self.backing_off = false;
    }
}

impl Loop<'_, '_> {
    /// Tops the single-shot accepts in flight up to [`ACCEPT_DEPTH`], unless stopping or
    /// backing off after an accept error.
    pub(super) fn fill_accepts(&mut self) {
        if self.life.stopping || self.accept.backing_off {
            return;
        }
        while self.accept.in_flight < ACCEPT_DEPTH {
            let entry = opcode::Accept::new(
                Fd(self.accept.listen_fd),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, 0));
            // SAFETY: no pointers (no peer address is asked for). The listener stays open while
            // accepts are in flight: it is closed only once every one has ended during a stop,
            // and none is submitted after a stop.
            unsafe { self.sq.push(entry) };
            self.accept.in_flight += 1;
        }
    }

    /// Stop: one cancel for every accept in flight (they share their user_data).
    pub(super) fn cancel_accepts(&mut self) {
        if self.accept.in_flight > 0 && !self.accept.cancel_pending {
            let entry =
                opcode::AsyncCancel2::new(CancelBuilder::user_data(user_data(Op::Accept, 0)).all())
                    .build()
                    .user_data(user_data(Op::AcceptCancel, 0));
            // SAFETY: no pointers.
            unsafe { self.sq.push(entry) };
            self.accept.cancel_pending = true;
        }
    }

    /// Once accepting has ended during a stop, closes the listening socket so that new
    /// connection attempts are refused now rather than queued until the worker exits.
    pub(super) fn close_listener_when_accepts_ended(&mut self) {
        if self.accept.ended() {
            *self.accept.listener = None;
        }
    }

    pub(super) fn on_accept(&mut self, res: i32) {
        self.accept.in_flight = self.accept.in_flight.saturating_sub(1);
        if res >= 0 {
            self.batch.arrival();
            self.accept.backoff.succeeded();
            self.admit(res);
            return;
        }
        let errno = -res;
        if errno == libc::ECANCELED {
            return; // our own cancel at stop
        }
        self.counts.accept_errors += 1;
        let err = io::Error::from_raw_os_error(errno);
        if accept_error_class(Some(errno)) == AcceptErrorClass::Transient {
            debug!(error = %err, "accept: connection aborted");
            return;
        }
        if !self.accept.backing_off {
            let pause = self.accept.backoff.failed();
            self.accept.backing_off = true;
            self.accept.pause = pause;
            *self.accept.pause_ts = Timespec::from(pause);
            let entry = opcode::Timeout::new(&*self.accept.pause_ts as *const Timespec)
                .build()
                .user_data(user_data(Op::AcceptRetry, 0));
            // SAFETY: the boxed timespec is only rewritten after this timeout's CQE (guarded by
            // `backing_off`), it outlives the final submit in `Engine::run`, and the kernel
            // copies it at submission anyway.
            unsafe { self.sq.push(entry) };
        }
        self.accept
            .log
            .record(self.life.now, &err, self.accept.pause);
    }

    /// A new socket: admit it (or close it at once, counted as rejected) and arm its receive.
    fn admit(&mut self, fd: RawFd) {
        // The slot travels in the low 32 bits of user_data; the fd limit keeps far below that.
        let admitted = if self.life.stopping || self.conns.vacant_key() > u32::MAX as usize {
            None
        } else {
            self.admission.admit()
        };
        let Some(admitted) = admitted else {
            // SAFETY: a fresh fd from accept that nothing else refers to.
            unsafe {
                libc::close(fd);
            }
            self.counts.rejected += 1;
            return;
        };
        if self.params.nodelay {
            set_nodelay(fd);
        }
        let conn = Conn::new(fd, admitted, self.life.now, self.modes.recv_budget);
        let slot = self.conns.insert(conn);
        self.counts.accepted += 1;
        self.arm_recv(slot);
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and the length matches its type; fd is a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(error = %io::Error::last_os_error(), "TCP_NODELAY failed");
    }
}
