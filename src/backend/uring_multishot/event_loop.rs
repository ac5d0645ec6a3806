//! The event loop: one worker's state, the loop itself, the wait, the timers, stop and drain.
//!
//! Loop shape: handle stop requests, hand recycled buffers back with one release store and
//! re-arm parked receives, top the accepts up, then one `io_uring_enter` that submits
//! everything and waits (see `batch`), then drain every CQE. Stop requests and the clock are read
//! once per tick, not per batch: both cost measurable time on the hot path (an atomic in the
//! token, a vDSO call), and deadlines only need tick precision.
//!
//! Two periodic timeouts wake the loop without any client activity: the *tick* (stop requests,
//! the drain deadline, flushing counters) and, with `--idle-timeout`, the *idle sweep* at
//! [`IdleSweep::period`], the same period and window as on the tokio engines. Both are multishot
//! timeouts where the probe found them (Linux 6.4), else single-shot timeouts re-armed one by
//! one; a multishot timeout the kernel refuses after all (EINVAL) switches to the latter.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::time::Instant;

use io_uring::types::{SubmitArgs, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, CompletionQueue};
use slab::Slab;

use super::accept::AcceptState;
use super::batch::{Batching, Wait};
use super::buf_ring::BufRing;
use super::conn::Conn;
use super::params::Params;
use super::sq::{decode, user_data, Op, Sq};
use crate::policy::{Admission, IdleSweep};
use crate::shutdown::Shutdown;
use crate::stats::{Counts, WorkerStats};

/// Stop, drain and the coarse clock.
#[derive(Debug)]
pub(super) struct Lifecycle {
    /// The tick clock: read when a tick or an idle sweep completes, so up to one tick old.
    pub(super) now: Instant,
    /// A tick arrived since the loop last read the stop signals.
    ticked: bool,
    /// A stop was requested: no more accepts; connections drain.
    pub(super) stopping: bool,
    drain_deadline: Option<Instant>,
    /// When the remaining connections were forced shut (drain deadline or force request).
    forced_at: Option<Instant>,
}

/// The periodic timeouts. The timespecs are boxed: an SQE points at them until it is
/// submitted (the kernel copies a timeout's timespec then), and a re-armed single-shot timeout
/// points at them again.
struct Timers {
    tick: Box<Timespec>,
    idle: Option<(IdleSweep, Box<Timespec>)>,
    /// Timeouts are armed multishot (cleared if the kernel refuses one).
    multishot: bool,
}

/// Loop counters that end up in the [`Report`](super::Report).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    /// Most buffers one connection held at once.
    pub(super) peak_conn_buffers: usize,
    pub(super) waits: u64,
    /// Waits for more than the inline sends plus one (a batch; see `batch`).
    pub(super) batched_waits: u64,
    pub(super) completions: u64,
    pub(super) sends: u64,
    pub(super) parks: u64,
    pub(super) recvs: u64,
    pub(super) budget_refused: u64,
    /// Receive CQEs that brought more than one buffer (bundles).
    pub(super) recv_bundles: u64,
    /// Of `sends`, zero-copy ones.
    pub(super) sends_zc: u64,
    pub(super) zc_notifications: u64,
    /// Receive CQEs with `IORING_CQE_F_BUF_MORE` (incremental consumption).
    pub(super) buf_more: u64,
}

/// How the loop does what the kernel offers in several ways, decided at start from the engine's
/// [`Usage`](crate::probe::Usage).
#[derive(Debug, Clone, Copy)]
pub(super) struct Modes {
    /// New connections arm budgeted multishot receives (else single-shot receives). Cleared when
    /// the kernel refuses a budgeted receive (see `ops`).
    pub(super) recv_budget: bool,
    /// Fault injection (`RecvBudget::ForceRefused`): budgeted receives carry a flag every kernel
    /// refuses.
    pub(super) refused_budget_fault: bool,
    /// Periodic timeouts are multishot (Linux 6.4).
    pub(super) multishot_timeout: bool,
    /// `--batch-wait` waits with `min_wait` (Linux 6.12).
    pub(super) min_wait: bool,
    /// Sends of [`ZC_MIN_SEND`](super::params::ZC_MIN_SEND) bytes or more are zero-copy.
    pub(super) send_zc: bool,
    /// Budgeted receives are bundled; every buffer is taken in ring order
    /// ([`BufRing::take_run`]).
    pub(super) bundle: bool,
    /// The pool is consumed incrementally: receives bring slices ([`BufRing::take_slice`]);
    /// never together with `bundle`.
    pub(super) buf_ring_inc: bool,
}

/// One worker's event loop state, borrowed from its [`Engine`](super::Engine) for one run.
pub(super) struct Loop<'r, 'p> {
    pub(super) sq: Sq<'r>,
    pub(super) bufs: &'p mut BufRing,
    pub(super) params: &'p Params,
    pub(super) stats: &'p WorkerStats,
    pub(super) admission: &'p Admission,
    pub(super) conns: Slab<Conn>,
    /// Connections whose recv ended with ENOBUFS, oldest first (entries may be stale: the
    /// connection's `parked` flag is authoritative).
    pub(super) parked: VecDeque<usize>,
    /// Reused list of slots for walks that change connections (no allocation per tick).
    scratch: Vec<usize>,
    /// Events not yet added to `stats` (flushed every tick and at exit, so the hot path
    /// touches no shared cache line).
    pub(super) counts: Counts,
    pub(super) accept: AcceptState<'p>,
    pub(super) life: Lifecycle,
    timers: Timers,
    pub(super) batch: Batching,
    pub(super) modes: Modes,
    pub(super) tally: Tally,
}

impl<'r, 'p> Loop<'r, 'p> {
    pub(super) fn new(
        sq: Sq<'r>,
        bufs: &'p mut BufRing,
        params: &'p Params,
        stats: &'p WorkerStats,
        admission: &'p Admission,
        listener: &'p mut Option<TcpListener>,
        modes: Modes,
    ) -> Self {
        let idle = params
            .idle_timeout
            .map(IdleSweep::new)
            .map(|sweep| (sweep, Box::new(Timespec::from(sweep.period()))));
        Loop {
            sq,
            bufs,
            params,
            stats,
            admission,
            conns: Slab::new(),
            parked: VecDeque::new(),
            scratch: Vec::new(),
            counts: Counts::default(),
            accept: AcceptState::new(listener),
            life: Lifecycle {
                now: Instant::now(),
                ticked: true,
                stopping: false,
                drain_deadline: None,
                forced_at: None,
            },
            timers: Timers {
                tick: Box::new(Timespec::from(params.tick)),
                idle,
                multishot: modes.multishot_timeout,
            },
            batch: Batching::new(params.batch_wait, modes.min_wait),
            modes,
            tally: Tally::default(),
        }
    }

    /// Serves until stopped and drained (or the drain grace ran out); `Err` if the ring failed.
    pub(super) fn run(
        &mut self,
        cq: &mut CompletionQueue<'_>,
        shutdown: &Shutdown,
    ) -> io::Result<()> {
        self.arm_timer(Op::Tick);
        if self.timers.idle.is_some() {
            self.arm_timer(Op::IdleSweep);
        }
        self.fill_accepts();
        loop {
            if std::mem::take(&mut self.life.ticked)
                && !self.life.stopping
                && shutdown.stop_token().is_cancelled()
            {
                self.begin_stop();
            }
            // A force request always comes with a stop request (see `Shutdown::force`); it is
            // checked every iteration while draining, which is off the steady-state hot path.
            if self.life.forced_at.is_none()
                && self.life.stopping
                && shutdown.force_token().is_cancelled()
            {
                self.force_all();
            }
            if self.life.stopping {
                self.close_listener_when_accepts_ended();
            }
            self.after_batch();
            // After the batch's closes and re-arms: the kernel runs SQEs in order, so finished
            // connections are closed before new ones are accepted.
            self.fill_accepts();
            if self.life.stopping && self.accept.ended() && self.conns.is_empty() {
                return Ok(());
            }
            if let Some(forced) = self.life.forced_at {
                if self.life.now.saturating_duration_since(forced) >= self.params.drain_grace {
                    return Ok(());
                }
            }
            self.wait()?;
            cq.sync();
            loop {
                for cqe in &mut *cq {
                    self.tally.completions += 1;
                    self.dispatch(cqe.user_data(), cqe.result(), cqe.flags());
                }
                cq.sync();
                if CompletionQueue::is_empty(cq) {
                    break;
                }
            }
        }
    }

    /// Submits everything queued and waits as [`Batching::plan`] says (the tick bounds it).
    fn wait(&mut self) -> io::Result<()> {
        self.sq.flush_backlog();
        self.sq.queue.sync();
        self.tally.waits += 1;
        let early = std::mem::take(&mut self.sq.submitted_early);
        let plan = self
            .batch
            .plan(early || !self.parked.is_empty(), self.params.tick);
        let res = match plan {
            Wait::Count(n) => self.sq.submitter.submit_and_wait(n),
            Wait::Batch {
                want,
                min_wait,
                timeout,
            } => {
                self.tally.batched_waits += 1;
                let ts = Timespec::from(timeout);
                let min_wait_us = min_wait.as_micros().clamp(1, u32::MAX as u128) as u32;
                let args = SubmitArgs::new().min_wait_usec(min_wait_us).timespec(&ts);
                self.sq.submitter.submit_with_args(want, &args)
            }
            Wait::BatchPre612 { want, timeout } => {
                self.tally.batched_waits += 1;
                let ts = Timespec::from(timeout);
                let args = SubmitArgs::new().timespec(&ts);
                self.sq.submitter.submit_with_args(want, &args)
            }
        };
        self.sq.queue.sync();
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("io_uring_enter failed: {e}"),
            )),
        }
    }

    fn dispatch(&mut self, ud: u64, res: i32, flags: u32) {
        let Some((op, slot)) = decode(ud) else {
            tracing::error!(user_data = ud, res, "CQE with unknown user_data");
            return;
        };
        match op {
            Op::Accept => self.on_accept(res),
            Op::AcceptCancel => self.accept.cancel_done(),
            // The loop tops the accepts up before its next wait.
            Op::AcceptRetry => self.accept.pause_over(),
            Op::Tick => self.on_tick(flags, res),
            Op::IdleSweep => self.on_idle_sweep(flags, res),
            Op::Recv => self.on_recv(slot, res, flags, false),
            Op::RecvMulti => self.on_recv(slot, res, flags, true),
            Op::Send => self.on_send(slot, res),
            Op::SendZc => self.on_send_zc(slot, res, flags),
            Op::RecvCancel => self.on_recv_cancelled(slot),
            Op::Close => self.on_close(slot),
        }
    }

    // ---- timers -------------------------------------------------------------------------

    fn arm_timer(&mut self, op: Op) {
        let ts: *const Timespec = match op {
            Op::IdleSweep => match &self.timers.idle {
                Some((_, ts)) => &**ts,
                None => return,
            },
            _ => &*self.timers.tick,
        };
        let mut timeout = opcode::Timeout::new(ts);
        if self.timers.multishot {
            timeout = timeout.count(0).flags(TimeoutFlags::MULTISHOT);
        }
        let entry = timeout.build().user_data(user_data(op, 0));
        // SAFETY: the timespec is boxed in `self.timers` for the whole run (and the kernel
        // copies it when the SQE is submitted anyway).
        unsafe { self.sq.push(entry) };
    }

    /// A timer CQE without `F_MORE` ended the timer: re-arm it. A multishot timeout the kernel
    /// refused (EINVAL: the probe was wrong) is re-armed single-shot, and so is every later one.
    fn rearm_if_ended(&mut self, op: Op, flags: u32, res: i32) {
        if !cqueue::more(flags) {
            if res == -libc::EINVAL && self.timers.multishot {
                tracing::warn!(
                    "the kernel refused a multishot timeout; re-arming timeouts one by one"
                );
                self.timers.multishot = false;
            }
            self.arm_timer(op);
        }
    }

    fn on_tick(&mut self, flags: u32, res: i32) {
        self.life.now = Instant::now();
        self.life.ticked = true;
        self.rearm_if_ended(Op::Tick, flags, res);
        self.flush_counts();
        if let (Some(deadline), None) = (self.life.drain_deadline, self.life.forced_at) {
            if self.life.now >= deadline {
                self.force_all();
            }
        }
    }

    /// Closes connections idle for the timeout ([`IdleSweep`], shared with the tokio engines).
    fn on_idle_sweep(&mut self, flags: u32, res: i32) {
        self.rearm_if_ended(Op::IdleSweep, flags, res);
        let Some((sweep, _)) = &self.timers.idle else {
            return;
        };
        let sweep = *sweep;
        let now = Instant::now();
        self.life.now = now;
        let mut expired = std::mem::take(&mut self.scratch);
        expired.clear();
        for (slot, conn) in self.conns.iter() {
            if !conn.dead && !conn.close_pending && sweep.expired(now, &conn.idle) {
                expired.push(slot);
            }
        }
        for &slot in &expired {
            self.counts.idle_timeouts += 1;
            self.kill(slot, true);
        }
        self.scratch = expired;
    }

    // ---- stop and drain -----------------------------------------------------------------

    fn begin_stop(&mut self) {
        self.life.stopping = true;
        self.life.drain_deadline = Some(self.life.now + self.params.drain_timeout);
        self.cancel_accepts();
        if self.params.drain_timeout.is_zero() {
            self.force_all();
        }
    }

    /// Drain deadline reached (or a force request): shut every remaining socket so its ops
    /// complete, then close it. Ops still in flight after the drain grace are abandoned.
    fn force_all(&mut self) {
        self.life.forced_at = Some(self.life.now);
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        slots.extend(self.conns.iter().map(|(slot, _)| slot));
        for &slot in &slots {
            self.kill(slot, true);
        }
        self.scratch = slots;
    }

    pub(super) fn flush_counts(&mut self) {
        if !self.counts.is_zero() {
            self.stats.add(&self.counts);
            self.counts = Counts::default();
        }
    }
}
