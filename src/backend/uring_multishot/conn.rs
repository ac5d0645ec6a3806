//! Per-connection state of the multishot engine (the operations on it are in `ops`).
//!
//! A connection owns its socket fd (closed by an io_uring `Close` op, never twice), its place in
//! the server's connection count (released when the `Conn` is dropped) and a FIFO of received
//! buffers awaiting echo. Only the front buffer may be in a send, and at most one send is in
//! flight: io_uring does not order two sends on one socket.
//!
//! Connections live in a [`slab::Slab`]; the slot number travels in every op's user_data. A slot
//! is freed only when the close CQE arrives, which the engine submits only once no other op for
//! the connection is in flight. So a CQE's slot always names the connection that issued it, and
//! user_data needs no generation counter.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::Instant;

use crate::policy::{Admitted, IdleStamp};

/// Received bytes awaiting echo: a whole provided buffer, or under incremental consumption
/// (`buf_ring`) one slice of one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunk {
    /// Provided-buffer id.
    pub(super) bid: u16,
    /// Where the bytes start in the buffer (0 unless incremental).
    pub(super) off: u32,
    /// Bytes the kernel wrote there (`off + len` <= the buffer size, checked by `buf_ring`).
    pub(super) len: u32,
}

/// One accepted connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) fd: RawFd,
    /// Received buffers in arrival order; the front one is being (or next to be) sent.
    pub(super) queue: VecDeque<Chunk>,
    /// Bytes of `queue.front()` already sent.
    pub(super) sent: u32,
    /// Idle-timeout bookkeeping: progress is bytes received or sent.
    pub(super) idle: IdleStamp,
    /// A receive is in the kernel (cleared by its CQE without `F_MORE`).
    pub(super) recv_armed: bool,
    /// This connection arms budgeted multishot receives (else single-shot ones); cleared for
    /// good when the kernel refuses the budget (see `ops`).
    pub(super) budget: bool,
    pub(super) send_in_flight: bool,
    /// An `AsyncCancel` for our recv is in flight.
    pub(super) cancel_pending: bool,
    pub(super) close_pending: bool,
    /// Waiting in the engine's parked list for provided buffers (recv ended with ENOBUFS).
    pub(super) parked: bool,
    /// Peer sent FIN (recv returned 0).
    pub(super) eof: bool,
    /// No more I/O: error, idle timeout or forced drain; close once ops drain.
    pub(super) dead: bool,
    /// `shutdown(2)` already called.
    pub(super) shut: bool,
    /// The front buffer of `queue` was (partly) sent zero-copy: when it leaves the queue while
    /// notifications are pending, it goes to `zc_held`, not back to the ring.
    pub(super) front_zc: bool,
    /// Zero-copy sends whose notification has not arrived (the kernel may still read the
    /// buffers they sent from): +1 per completion with `F_MORE`, -1 per notification.
    pub(super) zc_notifs: i32,
    /// Buffers (or slices) fully sent zero-copy, put back when `zc_notifs` drops to 0. Counted
    /// with `queue` against the per-connection cap. Never allocated unless `send_zc` is on.
    pub(super) zc_held: Vec<u16>,
    /// The fd was closed (its `Close` completed); the slot waits for the last notification.
    pub(super) closed: bool,
    /// The connection's place in `--max-connections`, released with the `Conn`.
    _admitted: Admitted,
}

impl Conn {
    pub(super) fn new(fd: RawFd, admitted: Admitted, now: Instant, budget: bool) -> Self {
        Conn {
            fd,
            queue: VecDeque::new(),
            sent: 0,
            idle: IdleStamp::new(now),
            recv_armed: false,
            budget,
            send_in_flight: false,
            cancel_pending: false,
            close_pending: false,
            parked: false,
            eof: false,
            dead: false,
            shut: false,
            front_zc: false,
            zc_notifs: 0,
            zc_held: Vec::new(),
            closed: false,
            _admitted: admitted,
        }
    }

    /// Any op for this connection whose CQE is still to come, zero-copy notifications aside:
    /// those do not need the fd, so the close may go before them (`ops`).
    pub(super) fn ops_in_flight(&self) -> bool {
        self.recv_armed || self.send_in_flight || self.cancel_pending || self.close_pending
    }

    /// An op in flight that may still write into a provided buffer (a recv picks one when data
    /// arrives) or read from one (a send, or a zero-copy send's data not yet notified).
    pub(super) fn touches_buffers(&self) -> bool {
        self.recv_armed || self.send_in_flight || self.zc_notifs != 0
    }

    /// Buffers this connection holds: queued for sending, or sent zero-copy and not notified.
    /// Under incremental consumption these are slices, each pinning its buffer (`buf_ring`).
    #[inline]
    pub(super) fn buffers(&self) -> usize {
        self.queue.len() + self.zc_held.len()
    }
}
