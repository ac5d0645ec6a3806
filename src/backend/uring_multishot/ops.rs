//! Per-connection operations: receive, send, close, and [`Loop::settle`], which decides a
//! connection's next step after any event.
//!
//! Invariants:
//! - At most one send in flight per connection (io_uring does not order two sends on one
//!   socket). Received buffers wait in the connection's FIFO; a short send is resubmitted for
//!   the rest.
//! - A buffer returns to the ring only when all its bytes were sent, or when no send refers to
//!   it any more (the connection died, or the CQE names a connection that is gone); under
//!   incremental consumption, only when that holds for every slice of it and the kernel is done
//!   with it (`buf_ring`).
//! - Backpressure: a connection never holds more than `max_queued_buffers` buffers (the cap),
//!   however fast its client writes and however little it reads, so one client cannot starve
//!   the others of the worker's shared pool. Two ways to receive keep that bound:
//!   - *budgeted multishot receive* (where the probe found `IORING_RECV_MSHOT_LIM`, Linux
//!     6.17): armed with a byte budget of `(cap - queued) × buffer_size`, after which the kernel
//!     ends it. Small receives use whole buffers for few bytes, so the engine also cancels the
//!     receive when the queue reaches the cap. Re-armed once the queue is down to half: one SQE
//!     serves many messages.
//!   - *single-shot receives* (kernels without the budget, or `--feature recv_budget=off`): one `Recv`
//!     that selects one provided buffer, armed while the queue is below the cap, so at most one
//!     buffer is on its way into the queue. One SQE per received buffer, submitted with the
//!     rest of the loop's batch.
//!
//!   A multishot receive *without* the budget cannot keep the bound: the kernel's retry loop
//!   drains a socket into the pool within one `io_uring_enter`, faster than any cancel, so one
//!   never-reading client could hold the whole pool (measured in README "Kernels").
//! - Fallback per operation: a budgeted receive has its own op ([`Op::RecvMulti`]). If the
//!   kernel refuses one (EINVAL: the probe was wrong, or the kernel takes the SQE but rejects the
//!   budget when it runs it), that connection re-arms with single-shot receives, and so do
//!   connections accepted later (logged once, counted in the report). Receives armed before the
//!   first refusal each fall back on their own CQE; none fails its connection.
//! - What a connection holds is its queue plus the buffers its zero-copy sends still wait on
//!   (`Conn::buffers`; `send_zc` in the module docs of the engine): both count against the cap.
//!   A bundled receive CQE (`bundle`) queues every buffer it filled, in ring order. Under
//!   incremental consumption (`buf_ring_inc`) a receive CQE queues one slice of a buffer that
//!   other receives may share; the cap counts slices, each pinning its buffer (`buf_ring`).
//! - A recv that ends with `ENOBUFS` (pool empty) parks its connection; parked connections are
//!   re-armed once buffers come back (at most one per free buffer per loop iteration).
//! - A connection's fd is closed by an io_uring `Close` only after every other op for it has
//!   completed, so no CQE can name a reused slot. Teardown with ops still in flight first calls
//!   `shutdown(2)`, which makes a pending recv/send complete.

use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue};

use super::buf_ring::{BufRing, TakeError, BGID};
use super::conn::{Chunk, Conn};
use super::event_loop::Loop;
use super::params::ZC_MIN_SEND;
use super::sq::{user_data, with_recv_budget, Op};
use crate::policy::ErrorKind;

/// The front buffer (or slice) of `conn` left its queue (sent, or dropped): put back
/// ([`BufRing::put`]), unless a zero-copy send read from it and the connection still waits for a
/// notification; then it waits in `zc_held` for the last one (the kernel may still read it).
fn release_front(conn: &mut Conn, bufs: &mut BufRing, bid: u16) {
    if std::mem::take(&mut conn.front_zc) && conn.zc_notifs > 0 {
        conn.zc_held.push(bid);
    } else {
        bufs.put(bid);
    }
}

/// What one receive CQE brought, taken by [`Loop::take_buffers`].
#[derive(Debug, Clone, Copy)]
struct Run {
    /// The buffer the CQE names.
    first: u16,
    /// With bundles, the ring position of `first` (the run's other buffers follow it).
    start: Option<u16>,
    /// Under incremental consumption, where the data starts in `first`; else 0.
    off: u32,
}

/// Buffer `i` of `run`: with bundles the ring position `start` onwards, else the one buffer
/// `first`.
#[inline]
fn run_bid(bufs: &BufRing, run: Run, i: u16) -> u16 {
    match run.start {
        Some(start) => bufs.bid_at(start.wrapping_add(i)),
        None => run.first,
    }
}

impl Loop<'_, '_> {
    /// How many provided buffers a receive of `res > 0` bytes filled: one (under incremental
    /// consumption, one slice of one), or with bundles all it needed.
    #[inline]
    fn buffers_in(&self, res: i32) -> u16 {
        if self.modes.bundle {
            (res as usize).div_ceil(self.bufs.buf_size()).max(1) as u16
        } else {
            1
        }
    }

    /// Takes the buffers a receive CQE of `res > 0` bytes and `flags` names (see `buf_ring`):
    /// under incremental consumption the slice of `first` it filled; with bundles the run of `n`
    /// at the ring head starting with `first`; else `first` alone.
    #[inline]
    fn take_buffers(&mut self, first: u16, n: u16, res: i32, flags: u32) -> Result<Run, TakeError> {
        let mut run = Run {
            first,
            start: None,
            off: 0,
        };
        if self.modes.buf_ring_inc {
            let more = cqueue::buffer_more(flags);
            run.off = self.bufs.take_slice(first, res as u32, more)?;
            if more {
                self.tally.buf_more += 1;
            }
        } else if self.modes.bundle {
            run.start = Some(self.bufs.take_run(first, n)?);
        } else {
            self.bufs.take(first)?;
        }
        Ok(run)
    }

    /// Arms the connection's receive: budgeted multishot or single-shot (module docs).
    pub(super) fn arm_recv(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let entry = if conn.budget {
            let buffers = self
                .params
                .max_queued_buffers
                .saturating_sub(conn.buffers())
                .max(1);
            let bytes = buffers
                .saturating_mul(self.bufs.buf_size())
                .min(u32::MAX as usize);
            let flags = if self.modes.refused_budget_fault {
                libc::MSG_WAITALL
            } else {
                0
            };
            let entry = if self.modes.bundle {
                opcode::RecvMultiBundle::new(Fd(conn.fd), BGID)
                    .flags(flags)
                    .build()
            } else {
                opcode::RecvMulti::new(Fd(conn.fd), BGID)
                    .flags(flags)
                    .build()
            };
            let entry = entry.user_data(user_data(Op::RecvMulti, slot));
            with_recv_budget(entry, bytes as u32)
        } else {
            // The buffer size fits in u32 (`BufRing::new` checks it).
            let len = self.bufs.buf_size() as u32;
            opcode::Recv::new(Fd(conn.fd), std::ptr::null_mut(), len)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(Op::Recv, slot))
        };
        conn.recv_armed = true;
        self.tally.recvs += 1;
        // SAFETY: the kernel writes only into provided buffers (no buffer address is passed),
        // which are never unmapped while an op may use them (buf_ring); the fd is closed only
        // after this recv's final CQE.
        unsafe { self.sq.push(entry) };
    }

    fn start_send(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let Some(chunk) = conn.queue.front().copied() else {
            return;
        };
        debug_assert!(!conn.send_in_flight && conn.sent < chunk.len);
        // SAFETY (pointer arithmetic): off + sent < off + len <= buffer size (`take_slice` checks
        // the slice; a whole buffer has off 0), so the pointer stays inside buffer `bid`.
        let ptr = unsafe {
            self.bufs
                .addr(chunk.bid)
                .add(chunk.off as usize + conn.sent as usize)
        };
        let len = chunk.len - conn.sent;
        let entry = if self.modes.send_zc && len >= ZC_MIN_SEND {
            conn.front_zc = true;
            self.tally.sends_zc += 1;
            opcode::SendZc::new(Fd(conn.fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                .build()
                .user_data(user_data(Op::SendZc, slot))
        } else {
            opcode::Send::new(Fd(conn.fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                .build()
                .user_data(user_data(Op::Send, slot))
        };
        conn.send_in_flight = true;
        self.tally.sends += 1;
        // More data waiting for this send's completion, or a close after it (EOF): the wait
        // must not sleep past it.
        self.batch.send_pushed(conn.queue.len() > 1 || conn.eof);
        // SAFETY: the buffer stays out of the ring until this send's CQE (the front chunk of a
        // connection with a send in flight is never recycled) and, for a zero-copy send, until
        // its notification (`zc_held`); the pool is never unmapped while a send may read it
        // (buf_ring).
        unsafe { self.sq.push(entry) };
    }

    /// A receive's CQE; `budgeted`: it came from a budgeted multishot receive.
    pub(super) fn on_recv(&mut self, slot: usize, res: i32, flags: u32, budgeted: bool) {
        let cap = self.params.max_queued_buffers;
        let Some(conn) = self.conns.get_mut(slot) else {
            // Cannot happen while slots are freed only after their last CQE; if it does, the
            // buffer still goes back to the ring rather than leak out of the pool.
            tracing::error!(slot, res, "recv CQE for a free slot");
            if let Some(bid) = cqueue::buffer_select(flags).filter(|_| res > 0) {
                let n = self.buffers_in(res);
                match self.take_buffers(bid, n, res, flags) {
                    Ok(run) => {
                        for i in 0..n {
                            let bid = run_bid(self.bufs, run, i);
                            self.bufs.put(bid);
                        }
                    }
                    Err(err) => tracing::error!(slot, ?err, "recv CQE names a bad buffer"),
                }
            }
            return;
        };
        if !cqueue::more(flags) {
            conn.recv_armed = false;
        }
        if res > 0 {
            self.batch.arrival();
            // One buffer, or with bundles as many as the bytes fill (all full but the last).
            let n = self.buffers_in(res);
            let taken = match cqueue::buffer_select(flags) {
                Some(bid) => self.take_buffers(bid, n, res, flags).map_err(Some),
                None => Err(None),
            };
            let run = match taken {
                Ok(taken) => taken,
                Err(err) => {
                    tracing::error!(slot, res, flags, ?err, "recv CQE without a valid buffer");
                    self.fail(slot, ErrorKind::Other);
                    return;
                }
            };
            if n > 1 {
                self.tally.recv_bundles += 1;
            }
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            let buf_size = self.bufs.buf_size() as u32;
            if conn.dead {
                for i in 0..n {
                    let bid = run_bid(self.bufs, run, i);
                    self.bufs.put(bid);
                }
            } else {
                let mut left = res as u32;
                for i in 0..n {
                    let bid = run_bid(self.bufs, run, i);
                    // Only the first buffer of a run can start mid-buffer (a slice).
                    let off = if i == 0 { run.off } else { 0 };
                    let len = left.min(buf_size - off);
                    left -= len;
                    conn.queue.push_back(Chunk { bid, off, len });
                }
                conn.idle.progress();
                if conn.send_in_flight {
                    // This chunk waits for that send's completion (see `batch`).
                    self.batch.follow_up();
                }
                self.tally.peak_conn_buffers = self.tally.peak_conn_buffers.max(conn.buffers());
                if conn.recv_armed && !conn.cancel_pending && conn.buffers() >= cap {
                    // Only a multishot receive is still armed after a CQE.
                    let entry = opcode::AsyncCancel::new(user_data(Op::RecvMulti, slot))
                        .build()
                        .user_data(user_data(Op::RecvCancel, slot));
                    conn.cancel_pending = true;
                    // SAFETY: no pointers.
                    unsafe { self.sq.push(entry) };
                }
            }
        } else if res == 0 {
            conn.eof = true;
            if conn.send_in_flight {
                // The close waits for that send's completion (see `batch`).
                self.batch.follow_up();
            }
        } else {
            match -res {
                libc::ENOBUFS => {
                    if !conn.dead && !conn.parked {
                        conn.parked = true;
                        self.parked.push_back(slot);
                        self.tally.parks += 1;
                    }
                }
                libc::ECANCELED => {}
                libc::EINVAL if budgeted => {
                    // The kernel refused the budget: this connection (and every later one)
                    // receives single-shot; `settle` re-arms it.
                    conn.budget = false;
                    self.tally.budget_refused += 1;
                    if std::mem::replace(&mut self.modes.recv_budget, false) {
                        tracing::warn!(
                            "the kernel refused a multishot receive with a byte budget (EINVAL); \
                             receiving with single-shot receives instead"
                        );
                    }
                }
                errno => {
                    self.fail(slot, ErrorKind::from_errno(errno));
                    return;
                }
            }
        }
        self.settle(slot);
    }

    pub(super) fn on_recv_cancelled(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.cancel_pending = false;
        }
        self.settle(slot);
    }

    pub(super) fn on_send(&mut self, slot: usize, res: i32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            tracing::error!(slot, res, "send CQE for a free slot");
            return;
        };
        conn.send_in_flight = false;
        if res <= 0 {
            // A zero-byte send of a non-empty buffer means the socket can take no more: counted
            // like a broken pipe.
            let kind = if res == 0 {
                ErrorKind::Pipe
            } else {
                ErrorKind::from_errno(-res)
            };
            self.fail(slot, kind);
            return;
        }
        self.counts.bytes_echoed += res as u64;
        conn.sent += res as u32;
        conn.idle.progress();
        if let Some(front) = conn.queue.front().copied() {
            if conn.sent >= front.len {
                conn.queue.pop_front();
                conn.sent = 0;
                release_front(conn, self.bufs, front.bid);
            }
        }
        if conn.dead {
            while let Some(chunk) = conn.queue.pop_front() {
                release_front(conn, self.bufs, chunk.bid);
            }
            conn.sent = 0;
        }
        self.settle(slot);
    }

    /// A zero-copy send's CQE: its completion (handled like a copied send's, counting the
    /// notification `F_MORE` announces), or that notification, after which the kernel no longer
    /// reads the buffers the connection's zero-copy sends used.
    pub(super) fn on_send_zc(&mut self, slot: usize, res: i32, flags: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            tracing::error!(slot, res, flags, "zero-copy send CQE for a free slot");
            return;
        };
        if !cqueue::notif(flags) {
            if cqueue::more(flags) {
                conn.zc_notifs += 1;
            }
            self.on_send(slot, res);
            return;
        }
        self.tally.zc_notifications += 1;
        // Counted down even before its completion counted it up (not expected, but then the
        // completion brings the count back to 0 and releases nothing it should not).
        conn.zc_notifs -= 1;
        if conn.zc_notifs != 0 {
            return;
        }
        // No zero-copy send of this connection is still read by the kernel.
        for bid in conn.zc_held.drain(..) {
            self.bufs.put(bid);
        }
        if conn.closed {
            self.remove_closed(slot);
        } else {
            self.settle(slot);
        }
    }

    pub(super) fn on_close(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.closed = true;
        if conn.zc_notifs == 0 {
            self.remove_closed(slot);
        }
        // Otherwise the last notification frees the slot (its CQE names it).
    }

    /// Frees a closed connection's slot: its fd is closed and no CQE can name it any more.
    fn remove_closed(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.try_remove(slot) {
            debug_assert!(conn.zc_notifs == 0 && conn.zc_held.is_empty());
            while let Some(chunk) = conn.queue.pop_front() {
                self.bufs.put(chunk.bid);
            }
            self.counts.closed += 1;
            // Dropping `conn` releases its place in the connection count.
        }
    }

    /// Records an I/O error (the first one per connection) and tears the connection down.
    fn fail(&mut self, slot: usize, kind: ErrorKind) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.dead {
            self.counts.error(kind);
        }
        self.kill(slot, false);
    }

    /// Stops all I/O on a connection (again, if it is already dead). `always_shutdown` sends our
    /// FIN even when no op is pending (idle timeout, drain deadline); otherwise `shutdown(2)` is
    /// used only to make pending ops complete. Buffers not referenced by a send go back to the
    /// ring now, and the close is submitted once nothing is in flight.
    pub(super) fn kill(&mut self, slot: usize, always_shutdown: bool) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.close_pending {
            return;
        }
        // Idempotent: a dead connection's late CQEs (a failed send, a final recv) come back here
        // to release buffers and close.
        conn.dead = true;
        if !conn.shut && (always_shutdown || conn.recv_armed || conn.send_in_flight) {
            // SAFETY: plain syscall on an fd this connection owns and has not closed.
            unsafe {
                libc::shutdown(conn.fd, libc::SHUT_RDWR);
            }
            conn.shut = true;
        }
        if conn.ops_in_flight() {
            // Shut down, they complete soon, and the close must follow without waiting for
            // anything else.
            self.batch.follow_up();
        }
        let keep = usize::from(conn.send_in_flight);
        while conn.queue.len() > keep {
            if let Some(chunk) = conn.queue.pop_back() {
                if conn.queue.is_empty() {
                    release_front(conn, self.bufs, chunk.bid);
                } else {
                    self.bufs.put(chunk.bid);
                }
            }
        }
        self.settle(slot);
    }

    /// Decides a connection's next step after any event: close, send, or re-arm its recv.
    pub(super) fn settle(&mut self, slot: usize) {
        let cap = self.params.max_queued_buffers;
        let resume_at = cap / 2;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.close_pending {
            return;
        }
        let finished = conn.dead || (conn.eof && conn.queue.is_empty() && !conn.send_in_flight);
        if finished {
            if !conn.ops_in_flight() {
                let entry = opcode::Close::new(Fd(conn.fd))
                    .build()
                    .user_data(user_data(Op::Close, slot));
                conn.close_pending = true;
                // SAFETY: no pointers; no other op for this fd is in flight (zero-copy
                // notifications need no fd) and the fd is not used again (the slot is freed by
                // this op's CQE, or by the last notification after it).
                unsafe { self.sq.push(entry) };
            }
            return;
        }
        if !conn.send_in_flight && !conn.queue.is_empty() {
            self.start_send(slot);
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        // A budgeted receive re-arms at half the cap (it may fill the rest); a single-shot one
        // takes one buffer, so it re-arms while the queue is below the cap.
        let held = conn.buffers();
        let room = if conn.budget {
            held <= resume_at
        } else {
            held < cap
        };
        if !conn.eof && !conn.recv_armed && !conn.parked && !conn.cancel_pending && room {
            self.arm_recv(slot);
        }
    }

    /// End of a batch of CQEs: hand recycled buffers to the kernel and re-arm parked receives.
    pub(super) fn after_batch(&mut self) {
        self.bufs.publish();
        let mut budget = self.bufs.in_ring();
        while budget > 0 {
            let Some(slot) = self.parked.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if !conn.parked {
                continue;
            }
            conn.parked = false;
            budget -= 1;
            self.settle(slot);
        }
    }
}
