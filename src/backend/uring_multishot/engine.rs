//! The `uring-multishot` runtime: an echo engine written directly on the `io-uring` crate.
//!
//! Why it exists: tokio-uring issues one single-shot accept/recv per operation and has no
//! provided-buffer rings, which costs a submission (and often a syscall) per message. This engine
//! keeps one multishot recv per connection armed in the kernel, so a steady echo costs one `Send`
//! SQE per received buffer and a handful of `io_uring_enter` calls per loop iteration shared by
//! every connection.
//!
//! Accept is *not* multishot, on purpose: a multishot accept empties the whole accept queue in
//! one `io_uring_enter` (the kernel retries while the queue is non-empty). Under a connect/close
//! storm from 4 clients that meant bursts of ~1,000 accepted sockets whose clients had already
//! gone, each waiting for its EOF and close round trips: the server held 1,000-1,300 fds while at
//! most 4 connections were alive, and hit EMFILE at the common 1024-fd limit. Instead
//! [`ACCEPT_DEPTH`] single-shot accepts are kept in flight and topped up once per loop iteration,
//! after the batch's closes were queued, so accepting never outruns serving and the rest of a
//! burst waits in the kernel's accept queue (which `--backlog` sizes). Accepts are rare next to
//! messages, so the extra SQEs do not show on the echo path.
//!
//! What one worker owns (one [`Engine`] per worker thread, created *on* that thread, because the
//! ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN`):
//! - the ring; a periodic multishot timeout (the *tick*, [`DEFAULT_TICK`]) that bounds every wait,
//!   so stop requests, idle timeouts and the drain deadline are noticed without
//!   any other wake-up source;
//! - a provided-buffer pool of `buffers × buffer_size` bytes ([`buf_ring`]), the only packet
//!   memory the engine uses: echo sends straight from the buffer the kernel received into;
//! - the connections ([`conn`](super::conn)).
//!
//! Idle timeout: a connection whose last progress (bytes received or sent) is older than the
//! timeout is shut down with a FIN. Progress is stamped with the tick clock, so a connection is
//! closed between `idle + 1` and `idle + 2` ticks after it stopped moving, never early.
//!
//! Invariants that the code relies on:
//! - At most one send in flight per connection (io_uring does not order two sends on one socket).
//!   Received buffers wait in a per-connection FIFO; a short send is resubmitted for the rest.
//! - A buffer returns to the ring only when all its bytes were sent, or the connection died and
//!   no send refers to it.
//! - Backpressure: each multishot recv is armed with a byte budget of
//!   `(max_queued_buffers - queued) × buffer_size` (`IORING_RECV_MSHOT_LIM`, Linux 6.17+): the
//!   kernel ends the multishot once that much arrived, so a client that sends and never reads
//!   holds at most `max_queued_buffers` full buffers. Without the budget the kernel's retry loop
//!   drains the socket into the pool within one `io_uring_enter`, faster than any cancel (seen:
//!   63 of 64 buffers). Small receives use whole buffers for few bytes, so the engine also
//!   cancels the recv when the queue reaches the cap. Recv is re-armed once the queue is down to
//!   half. On kernels without the budget (the first recv fails with EINVAL) only the cancel
//!   remains and one connection can hold most of the pool; memory stays bounded by the pool.
//! - A recv that ends with `ENOBUFS` (pool empty) parks its connection; parked connections are
//!   re-armed once buffers come back (at most one per free buffer per loop iteration).
//! - A connection's fd is closed by an io_uring `Close` only after every other op for it has
//!   completed, so no CQE can name a reused slot. Teardown with ops still in flight first calls
//!   `shutdown(2)`, which makes a pending recv/send complete.
//! - Counters are accumulated locally and flushed to the shared [`StatsSink`] on every tick and
//!   at exit, so the hot path touches no shared cache line.
//!
//! Loop shape: drain every CQE, hand recycled buffers back with one release store, re-arm parked
//! receives, then one `io_uring_enter` that submits everything and waits for one completion.
//! Sends to loopback complete inline during that submit, so that wait usually returns at once
//! with their CQEs, and the next one sleeps until data arrives: two enters per batch. Counting the
//! inline sends into the wait (`sends + 1`, with the kernel's `min_wait` as a safety cap) halves
//! the enters, but it was measured slower on this project's VM: single-connection ping-pong
//! 36 vs 27 µs of server CPU per message and +5 µs p50, 50 connections ~6% more CPU per message
//! (arming a timer per wait costs a VM exit; a syscall is cheaper). So the default keeps the
//! plain wait, and only `--batch-wait`, which arms that timer anyway, counts inline sends.
//! Also measured (tracepoint `io_uring_local_work_run` on Linux 6.18): after a sleep, a
//! DEFER_TASKRUN wait runs only as many task-work items as it waits for, so each wake-up returns
//! with about one receive and batches stay small unless the server is saturated or
//! `--batch-wait` asks for more.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, SubmissionQueue, Submitter};

use super::buf_ring::{self, BufRing, BGID};
use super::conn::{Chunk, Conn, Slab};

/// Period of the tick timeout that bounds every wait.
pub const DEFAULT_TICK: Duration = Duration::from_millis(100);
/// Per-connection cap on received-but-unsent buffers before its recv is paused.
pub const DEFAULT_MAX_QUEUED_BUFFERS: usize = 4;
/// First and largest pause after an accept error (EMFILE, ENFILE, ...) before accepting again:
/// doubled on each error, reset by a successful accept (the tokio runtimes use the same).
pub const ACCEPT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_millis(100));
/// Single-shot accepts kept in flight: the most connections one loop iteration admits.
pub const ACCEPT_DEPTH: usize = 8;
/// After the drain deadline forced every socket shut, how long to wait for their CQEs before
/// abandoning them (closing the fds after the ring is gone).
const FORCE_GRACE: Duration = Duration::from_secs(2);
/// Target size of the default provided-buffer pool, per worker.
const DEFAULT_POOL_BYTES: usize = 16 << 20;

/// Default number of provided buffers for a buffer size: a pool of about 16 MiB per worker,
/// clamped to 16..=4096 buffers (a power of two). Memory = buffers × buffer size, touched lazily;
/// with very large buffers the pool is bigger than 16 MiB (16 × 64 MiB at the CLI maximum) but
/// only the bytes actually received become resident.
pub fn default_buffer_count(buffer_size: usize) -> usize {
    let n = DEFAULT_POOL_BYTES / buffer_size.max(1);
    let n = if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    };
    n.clamp(16, 4096)
}

/// Wait for at least `min_completions` CQEs or `timeout` per loop iteration (throughput knob;
/// adds up to `timeout` of latency when fewer completions are pending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchWait {
    /// Completions to wait for.
    pub min_completions: u32,
    /// Longest extra wait for them.
    pub timeout: Duration,
}

/// Everything the engine needs to know, validated by the caller's config layer.
#[derive(Debug, Clone)]
pub struct MultishotParams {
    /// Size of each provided buffer (the most one recv returns).
    pub buffer_size: usize,
    /// Number of provided buffers per worker (1..=32768).
    pub buffers: usize,
    /// Submission queue entries (the completion queue gets four times as many).
    pub ring_entries: u32,
    /// Admission limit checked through [`StatsSink::conn_opened`] (`None` = unlimited).
    pub max_connections: Option<usize>,
    /// Close connections without progress in either direction for this long.
    pub idle_timeout: Option<Duration>,
    /// After a stop request, how long connections may keep going before they are shut down.
    pub drain_timeout: Duration,
    /// Set `TCP_NODELAY` on accepted sockets.
    pub nodelay: bool,
    /// Per-connection cap on queued buffers (see module docs).
    pub max_queued_buffers: usize,
    /// Tick period.
    pub tick: Duration,
    /// Optional completion batching (default off: it trades latency for fewer wake-ups).
    pub batch_wait: Option<BatchWait>,
}

impl MultishotParams {
    /// Defaults for a buffer size; every other field may be overridden.
    pub fn new(buffer_size: usize) -> Self {
        MultishotParams {
            buffer_size,
            buffers: default_buffer_count(buffer_size),
            ring_entries: 1024,
            max_connections: None,
            idle_timeout: None,
            drain_timeout: Duration::from_secs(5),
            nodelay: true,
            max_queued_buffers: DEFAULT_MAX_QUEUED_BUFFERS,
            tick: DEFAULT_TICK,
            batch_wait: None,
        }
    }

    fn validate(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.buffer_size == 0 || self.buffer_size > (1 << 30) {
            return bad(format!("buffer size {} out of range", self.buffer_size));
        }
        if self.buffers == 0 || self.buffers > buf_ring::MAX_BUFFERS {
            return bad(format!(
                "provided buffer count {} must be 1..={}",
                self.buffers,
                buf_ring::MAX_BUFFERS
            ));
        }
        if self.ring_entries == 0 {
            return bad("ring entries must be > 0".into());
        }
        if self.max_queued_buffers == 0 {
            return bad("max queued buffers must be > 0".into());
        }
        if self.tick.is_zero() {
            return bad("tick must be > 0".into());
        }
        Ok(())
    }
}

/// Event counts, in the units of the server's `summary:` line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Connections admitted.
    pub accepted: u64,
    /// Connections accepted and closed at once (over the limit, or during shutdown).
    pub rejected: u64,
    /// Admitted connections closed.
    pub closed: u64,
    /// Bytes sent back to clients.
    pub bytes_echoed: u64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: u64,
    /// Connections ended by ECONNRESET.
    pub errors_reset: u64,
    /// Connections ended by EPIPE.
    pub errors_pipe: u64,
    /// Connections ended by any other error.
    pub errors_other: u64,
    /// Failed accepts (EMFILE, ENFILE, ENOBUFS, ...).
    pub accept_errors: u64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// Where a worker reports to; shared by all workers of a server.
pub trait StatsSink: Sync {
    /// Adds a batch of counts (called per tick and at exit, not per event).
    fn add(&self, counts: &Counts);
    /// Admits one more connection if the global count is below `limit`; false = reject.
    fn conn_opened(&self, limit: Option<usize>) -> bool;
    /// An admitted connection is gone.
    fn conn_closed(&self);
}

/// What a finished [`Engine::run`] leaves behind; the tests check it for leaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Provided buffers in the pool.
    pub buffers: usize,
    /// Buffers back in the ring at exit (equal to `buffers` unless something leaked).
    pub buffers_in_ring: usize,
    /// Connections whose CQEs never came back within the grace period after the forced
    /// shutdown; their fds were closed after the ring was dropped.
    pub connections_abandoned: usize,
    /// Most buffers one connection held at once (the backpressure bound, see module docs).
    pub peak_conn_buffers: usize,
    /// `io_uring_enter` calls that waited for completions (one per loop iteration).
    pub waits: u64,
    /// Completions handled.
    pub completions: u64,
    /// Sends submitted.
    pub sends: u64,
    /// Receives that ended with ENOBUFS (pool empty) and parked their connection.
    pub parks: u64,
}

/// One worker's io_uring, buffer pool and listener. Build it on the thread that will run it.
pub struct Engine {
    // Field order is drop order: the ring (and so every op that might touch the pool) goes first.
    ring: IoUring,
    bufs: BufRing,
    /// Taken (closed) once accepting has ended during a stop, so that new connection attempts
    /// are refused instead of waiting in the backlog until the worker exits.
    listener: Option<TcpListener>,
    listen_fd: RawFd,
    params: MultishotParams,
}

impl Engine {
    /// Sets up the ring (`SINGLE_ISSUER | DEFER_TASKRUN`) and registers the buffer pool.
    /// Must be called on the thread that calls [`Engine::run`].
    pub fn new(listener: TcpListener, params: MultishotParams) -> io::Result<Self> {
        params.validate()?;
        let cq_entries = params.ring_entries.saturating_mul(4).clamp(64, 65536);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(cq_entries)
            .build(params.ring_entries)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "io_uring setup with {} entries and SINGLE_ISSUER|DEFER_TASKRUN failed: {e} \
                         (the uring-multishot runtime needs Linux >= 6.1 with io_uring enabled)",
                        params.ring_entries
                    ),
                )
            })?;
        let bufs = BufRing::new(params.buffers, params.buffer_size)?;
        bufs.register(&ring.submitter()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering the provided buffer ring failed: {e} (needs Linux >= 5.19)"),
            )
        })?;
        Ok(Engine {
            ring,
            bufs,
            listen_fd: listener.as_raw_fd(),
            listener: Some(listener),
            params,
        })
    }

    /// Serves connections until `stop()` returns true, then stops accepting and lets open
    /// connections finish for up to the drain timeout, or until `force()` returns true; then shuts
    /// the rest down and returns. Both are polled once per tick.
    /// Counts go to `stats`; an `Err` means the ring itself failed.
    pub fn run(
        self,
        stats: &dyn StatsSink,
        stop: &dyn Fn() -> bool,
        force: &dyn Fn() -> bool,
    ) -> io::Result<Report> {
        let mut engine = self;
        let tick_ts = Timespec::from(engine.params.tick);
        let listen_fd = engine.listen_fd;
        let min_wait_supported = engine.ring.params().is_feature_min_timeout();
        let (result, leftover_fds, loop_stats, abandoned) = {
            let (submitter, queue, mut cq) = engine.ring.split();
            let mut lp = Loop {
                sq: Sq {
                    submitter,
                    queue,
                    backlog: VecDeque::new(),
                    submitted_early: false,
                },
                bufs: &mut engine.bufs,
                params: &engine.params,
                stats,
                tick_ts: &tick_ts,
                listen_fd,
                listener: &mut engine.listener,
                conns: Slab::default(),
                parked: VecDeque::new(),
                counts: Counts::default(),
                now: Instant::now(),
                accepts_in_flight: 0,
                accept_cancel_pending: false,
                backing_off: false,
                accept_backoff: ACCEPT_BACKOFF.0,
                backoff_ts: Box::new(Timespec::new()),
                last_accept_log: None,
                accept_errors_unlogged: 0,
                tick_multishot: true,
                recv_budget: true,
                stopping: false,
                ticked: true,
                drain_deadline: None,
                forced_at: None,
                peak_conn_buffers: 0,
                waits: 0,
                completions: 0,
                sends: 0,
                parks: 0,
                sends_since_wait: 0,
                reap_eagerly: false,
                min_wait_supported,
            };
            lp.arm_tick();
            lp.fill_accepts();
            let result = lp.event_loop(&mut cq, stop, force);
            lp.flush_counts();
            // Submit whatever is still queued (a Close among it runs inline), so that the fds
            // closed by hand below are exactly those no Close op was ever submitted for.
            lp.sq.flush_backlog();
            lp.sq.queue.sync();
            let _ = lp.sq.submitter.submit();
            let fds: Vec<RawFd> = lp
                .conns
                .iter()
                .filter(|(_, c)| !c.close_pending)
                .map(|(_, c)| c.fd)
                .collect();
            let abandoned = lp.conns.len();
            // Buffers still held by abandoned connections are no longer in use by anything once
            // the ring is gone; count them back so the report only flags real leaks.
            let held: Vec<u16> = lp
                .conns
                .iter()
                .flat_map(|(_, c)| c.queue.iter().map(|ch| ch.bid))
                .collect();
            for bid in held {
                lp.bufs.recycle(bid);
            }
            let loop_stats = (
                lp.peak_conn_buffers,
                lp.waits,
                lp.completions,
                lp.sends,
                lp.parks,
            );
            (result, fds, loop_stats, abandoned)
        };
        let Engine {
            ring,
            bufs,
            listener,
            ..
        } = engine;
        drop(ring);
        for fd in &leftover_fds {
            // SAFETY: these fds belong to connections whose Close op was never submitted; the
            // ring that referenced them is gone, so closing here is the only close.
            unsafe {
                libc::close(*fd);
            }
        }
        drop(listener);
        let report = Report {
            buffers: bufs.count(),
            buffers_in_ring: bufs.in_ring(),
            connections_abandoned: abandoned,
            peak_conn_buffers: loop_stats.0,
            waits: loop_stats.1,
            completions: loop_stats.2,
            sends: loop_stats.3,
            parks: loop_stats.4,
        };
        drop(bufs);
        if abandoned > 0 {
            for _ in 0..abandoned {
                stats.conn_closed();
            }
            stats.add(&Counts {
                closed: abandoned as u64,
                ..Counts::default()
            });
            tracing::warn!(
                connections = abandoned,
                "multishot worker abandoned connections whose completions never arrived"
            );
        }
        if report.buffers_in_ring != report.buffers {
            tracing::warn!(
                buffers = report.buffers,
                in_ring = report.buffers_in_ring,
                "multishot worker exited with provided buffers unaccounted for"
            );
        }
        result.map(|()| report)
    }
}

/// What a CQE belongs to; the top byte of user_data. The low 32 bits carry the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    AcceptCancel = 2,
    Tick = 3,
    Recv = 4,
    Send = 5,
    RecvCancel = 6,
    Close = 7,
    /// The pause after an accept error is over.
    AcceptRetry = 8,
}

const OP_SHIFT: u32 = 56;

/// Byte offset of `optlen` (a union with `file_index`) in the kernel's 64-byte `io_uring_sqe`.
const SQE_OPTLEN_OFFSET: usize = 44;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// Sets a multishot recv's total byte budget (`sqe->optlen`, `IORING_RECV_MSHOT_LIM`), which the
/// io-uring crate's `RecvMulti` builder does not expose.
fn with_recv_budget(entry: squeue::Entry, bytes: u32) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel ABI struct `io_uring_sqe`: 64
    // bytes (asserted above) of integers and unions of integers without padding, so it may be
    // viewed as bytes, and any byte pattern is a valid value. Offset 44 is checked by a test.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    raw[SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4].copy_from_slice(&bytes.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

fn user_data(op: Op, slot: u32) -> u64 {
    ((op as u64) << OP_SHIFT) | slot as u64
}

fn decode(ud: u64) -> Option<(Op, u32)> {
    let slot = ud as u32;
    let op = match (ud >> OP_SHIFT) as u8 {
        1 => Op::Accept,
        2 => Op::AcceptCancel,
        3 => Op::Tick,
        4 => Op::Recv,
        5 => Op::Send,
        6 => Op::RecvCancel,
        7 => Op::Close,
        8 => Op::AcceptRetry,
        _ => return None,
    };
    Some((op, slot))
}

/// Submission side: the SQ plus an overflow list for the rare case that the SQ stays full even
/// after a submit (so pushing never fails and never loses an op).
struct Sq<'r> {
    submitter: Submitter<'r>,
    queue: SubmissionQueue<'r>,
    backlog: VecDeque<squeue::Entry>,
    /// A full SQ was submitted before the loop's wait (its CQEs may already be consumed).
    submitted_early: bool,
}

impl Sq<'_> {
    /// Queues `entry`.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its CQE arrives (each call site says why).
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: forwarded from the caller's contract.
        if unsafe { self.queue.push(&entry) }.is_ok() {
            return;
        }
        self.queue.sync();
        let _ = self.submitter.submit();
        self.submitted_early = true;
        self.queue.sync();
        // SAFETY: as above.
        if unsafe { self.queue.push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    /// Moves backlogged entries into the SQ, submitting as needed.
    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: the entry was accepted by `push` under the same contract.
            if unsafe { self.queue.push(entry) }.is_ok() {
                self.backlog.pop_front();
                continue;
            }
            self.queue.sync();
            if self.submitter.submit().is_err() {
                break;
            }
            self.queue.sync();
            if self.queue.is_full() {
                break;
            }
        }
    }
}

struct Loop<'r, 'p> {
    sq: Sq<'r>,
    bufs: &'p mut BufRing,
    params: &'p MultishotParams,
    stats: &'p dyn StatsSink,
    tick_ts: &'p Timespec,
    listen_fd: RawFd,
    listener: &'p mut Option<TcpListener>,
    conns: Slab,
    /// Connections whose recv ended with ENOBUFS, oldest first (entries may be stale: the
    /// connection's `parked` flag is authoritative).
    parked: VecDeque<u32>,
    counts: Counts,
    /// The tick clock: read when a tick completes, so up to one tick old (idle stamps,
    /// deadlines and back-off only need that precision).
    now: Instant,
    /// Single-shot accepts submitted (or queued) whose CQE has not arrived.
    accepts_in_flight: usize,
    accept_cancel_pending: bool,
    /// A back-off timeout is pending: no accept is submitted until its CQE.
    backing_off: bool,
    /// The next back-off pause.
    accept_backoff: Duration,
    /// The pending back-off timeout's duration; boxed so that its address is stable until the
    /// SQE that points at it has been submitted.
    backoff_ts: Box<Timespec>,
    last_accept_log: Option<Instant>,
    accept_errors_unlogged: u64,
    tick_multishot: bool,
    /// Arm receives with a byte budget (cleared if the kernel refuses it).
    recv_budget: bool,
    stopping: bool,
    /// A tick arrived since the loop last read the clock and the stop signals.
    ticked: bool,
    drain_deadline: Option<Instant>,
    forced_at: Option<Instant>,
    peak_conn_buffers: usize,
    waits: u64,
    completions: u64,
    sends: u64,
    parks: u64,
    /// Sends pushed since the last wait, and whether one of them has data queued behind it.
    sends_since_wait: usize,
    reap_eagerly: bool,
    /// The kernel supports `min_wait_usec` in `io_uring_enter` (Linux 6.12).
    min_wait_supported: bool,
}

impl Loop<'_, '_> {
    fn event_loop(
        &mut self,
        cq: &mut io_uring::CompletionQueue<'_>,
        stop: &dyn Fn() -> bool,
        force: &dyn Fn() -> bool,
    ) -> io::Result<()> {
        loop {
            // Stop requests and the clock are read once per tick, not per batch: both cost
            // measurable time on the hot path (an atomic in the token, a vDSO call).
            if std::mem::take(&mut self.ticked) {
                self.now = Instant::now();
                if !self.stopping && stop() {
                    self.begin_stop();
                }
            }
            // A force request always comes with a stop request (see `Shutdown::force`); it is
            // checked every iteration while draining, which is off the steady-state hot path.
            if self.forced_at.is_none() && self.stopping && force() {
                self.force_all();
            }
            if self.stopping
                && self.accepts_in_flight == 0
                && !self.accept_cancel_pending
                && self.listener.is_some()
            {
                // Accepting is over: close the listening socket so that new connection attempts
                // are refused now rather than queued until we exit.
                *self.listener = None;
            }
            self.after_batch();
            // After the batch's closes and re-arms: the kernel runs SQEs in order, so finished
            // connections are closed before new ones are accepted.
            self.fill_accepts();
            if self.stopping
                && self.accepts_in_flight == 0
                && !self.accept_cancel_pending
                && self.conns.len() == 0
            {
                return Ok(());
            }
            if let Some(forced) = self.forced_at {
                if self.now.duration_since(forced) >= FORCE_GRACE {
                    return Ok(());
                }
            }
            self.wait()?;
            cq.sync();
            loop {
                for cqe in &mut *cq {
                    self.completions += 1;
                    self.dispatch(cqe.user_data(), cqe.result(), cqe.flags());
                }
                cq.sync();
                if io_uring::CompletionQueue::is_empty(cq) {
                    break;
                }
            }
        }
    }

    /// Submits everything queued and waits for at least one completion (the tick bounds it).
    ///
    /// Default: wait for one completion (see the module docs for why inline send completions are
    /// not counted in). `--batch-wait N,T`: wait for `N` completions beyond the sends just
    /// submitted (which usually complete inline) when nothing is queued behind those sends, with
    /// the kernel's `min_wait` (Linux 6.12) returning after `T` with whatever has arrived.
    fn wait(&mut self) -> io::Result<()> {
        self.sq.flush_backlog();
        self.sq.queue.sync();
        self.waits += 1;
        let sends = std::mem::take(&mut self.sends_since_wait);
        let early = std::mem::take(&mut self.sq.submitted_early);
        let eager = std::mem::take(&mut self.reap_eagerly) || early || !self.parked.is_empty();
        let (want, grace) = match self.params.batch_wait {
            Some(bw) => {
                let uncounted = if eager { 0 } else { sends };
                (uncounted + bw.min_completions.max(1) as usize, bw.timeout)
            }
            None => (1, Duration::ZERO),
        };
        let res = if want <= 1 {
            self.sq.submitter.submit_and_wait(1)
        } else if self.min_wait_supported {
            let ts = Timespec::from(self.params.tick);
            let grace_us = grace.as_micros().clamp(1, u32::MAX as u128) as u32;
            let args = SubmitArgs::new().min_wait_usec(grace_us).timespec(&ts);
            self.sq.submitter.submit_with_args(want, &args)
        } else if let Some(bw) = self.params.batch_wait {
            // Before 6.12: a plain timeout, which may return with nothing (ETIME, handled below).
            let ts = Timespec::from(bw.timeout);
            let args = SubmitArgs::new().timespec(&ts);
            self.sq.submitter.submit_with_args(want, &args)
        } else {
            self.sq.submitter.submit_and_wait(1)
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
            Op::AcceptCancel => self.accept_cancel_pending = false,
            // The loop tops the accepts up before its next wait.
            Op::AcceptRetry => self.backing_off = false,
            Op::Tick => self.on_tick(flags, res),
            Op::Recv => self.on_recv(slot, res, flags),
            Op::Send => self.on_send(slot, res),
            Op::RecvCancel => {
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.cancel_pending = false;
                }
                self.settle(slot);
            }
            Op::Close => self.on_close(slot),
        }
    }

    // ---- accept -------------------------------------------------------------------------

    /// Tops the single-shot accepts in flight up to [`ACCEPT_DEPTH`] (see the module docs for why
    /// not multishot), unless stopping or backing off after an accept error.
    fn fill_accepts(&mut self) {
        if self.stopping || self.backing_off {
            return;
        }
        while self.accepts_in_flight < ACCEPT_DEPTH {
            let entry = opcode::Accept::new(
                Fd(self.listen_fd),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, 0));
            // SAFETY: no pointers (no peer address is asked for). The listener stays open while
            // accepts are in flight: it is closed only once every one has ended during a stop,
            // and none is submitted after a stop.
            debug_assert!(self.listener.is_some());
            unsafe { self.sq.push(entry) };
            self.accepts_in_flight += 1;
        }
    }

    fn on_accept(&mut self, res: i32) {
        self.accepts_in_flight = self.accepts_in_flight.saturating_sub(1);
        if res >= 0 {
            self.accept_backoff = ACCEPT_BACKOFF.0;
            self.admit(res);
        } else {
            match -res {
                libc::ECANCELED => {}
                // The peer gave up before we got to it, or a signal: counted, but nothing to back
                // off from.
                libc::ECONNABORTED | libc::EAGAIN | libc::EINTR | libc::EPROTO | libc::EPERM => {
                    self.counts.accept_errors += 1;
                }
                errno => self.accept_error(errno),
            }
        }
    }

    fn admit(&mut self, fd: RawFd) {
        if self.stopping || !self.stats.conn_opened(self.params.max_connections) {
            // SAFETY: a fresh fd from accept that nothing else refers to.
            unsafe {
                libc::close(fd);
            }
            self.counts.rejected += 1;
            return;
        }
        if self.params.nodelay {
            set_nodelay(fd);
        }
        let slot = self.conns.insert(Conn::new(fd, self.now));
        self.counts.accepted += 1;
        self.arm_recv(slot);
    }

    fn accept_error(&mut self, errno: i32) {
        self.counts.accept_errors += 1;
        // The accepts still in flight most likely fail the same way; one pause covers them.
        let pause = self.accept_backoff;
        if !self.backing_off {
            self.backing_off = true;
            *self.backoff_ts = Timespec::from(pause);
            let entry = opcode::Timeout::new(&*self.backoff_ts as *const Timespec)
                .build()
                .user_data(user_data(Op::AcceptRetry, 0));
            // SAFETY: the boxed timespec is only rewritten after this timeout's CQE (guarded by
            // `backing_off`), and it outlives the final submit in `Engine::run`.
            unsafe { self.sq.push(entry) };
            self.accept_backoff = (pause * 2).min(ACCEPT_BACKOFF.1);
        }
        let due = match self.last_accept_log {
            None => true,
            Some(t) => self.now.duration_since(t) >= Duration::from_secs(1),
        };
        if due {
            tracing::warn!(
                error = %io::Error::from_raw_os_error(errno),
                suppressed = self.accept_errors_unlogged,
                backoff_ms = pause.as_millis() as u64,
                "accept failed; backing off"
            );
            self.last_accept_log = Some(self.now);
            self.accept_errors_unlogged = 0;
        } else {
            self.accept_errors_unlogged += 1;
        }
    }

    // ---- tick, stop and drain -----------------------------------------------------------

    fn arm_tick(&mut self) {
        let mut timeout = opcode::Timeout::new(self.tick_ts as *const Timespec);
        if self.tick_multishot {
            timeout = timeout.count(0).flags(TimeoutFlags::MULTISHOT);
        }
        let entry = timeout.build().user_data(user_data(Op::Tick, 0));
        // SAFETY: the timespec is borrowed for the whole run (it lives in `Engine::run`'s frame),
        // and the kernel copies it when the SQE is submitted anyway.
        unsafe { self.sq.push(entry) };
    }

    fn on_tick(&mut self, flags: u32, res: i32) {
        self.now = Instant::now();
        self.ticked = true;
        if !cqueue::more(flags) {
            if res == -libc::EINVAL && self.tick_multishot {
                // Multishot timeouts need Linux 6.4; fall back to re-arming each tick.
                self.tick_multishot = false;
            }
            self.arm_tick();
        }
        self.flush_counts();
        if let Some(idle) = self.params.idle_timeout {
            for slot in self.conns.slots() {
                let Some(conn) = self.conns.get_mut(slot) else {
                    continue;
                };
                // `last_progress` is stamped with the tick clock, up to one tick old: add a
                // tick so that no connection is closed before `idle` has really passed.
                if !conn.dead
                    && !conn.close_pending
                    && self.now.duration_since(conn.last_progress) >= idle + self.params.tick
                {
                    self.counts.idle_timeouts += 1;
                    self.kill(slot, true);
                }
            }
        }
        if let (Some(deadline), None) = (self.drain_deadline, self.forced_at) {
            if self.now >= deadline {
                self.force_all();
            }
        }
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        self.drain_deadline = Some(self.now + self.params.drain_timeout);
        if self.accepts_in_flight > 0 && !self.accept_cancel_pending {
            // One cancel for every accept in flight (they share their user_data).
            let entry = opcode::AsyncCancel2::new(
                io_uring::types::CancelBuilder::user_data(user_data(Op::Accept, 0)).all(),
            )
            .build()
            .user_data(user_data(Op::AcceptCancel, 0));
            // SAFETY: no pointers.
            unsafe { self.sq.push(entry) };
            self.accept_cancel_pending = true;
        }
        if self.params.drain_timeout.is_zero() {
            self.force_all();
        }
    }

    /// Drain deadline reached: shut every remaining socket so its ops complete, then close it.
    fn force_all(&mut self) {
        self.forced_at = Some(self.now);
        for slot in self.conns.slots() {
            self.kill(slot, true);
        }
    }

    fn flush_counts(&mut self) {
        if !self.counts.is_zero() {
            self.stats.add(&self.counts);
            self.counts = Counts::default();
        }
    }

    // ---- per connection -----------------------------------------------------------------

    fn arm_recv(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut entry = opcode::RecvMulti::new(Fd(conn.fd), BGID)
            .build()
            .user_data(user_data(Op::Recv, slot));
        if self.recv_budget {
            let buffers = self
                .params
                .max_queued_buffers
                .saturating_sub(conn.queue.len())
                .max(1);
            let bytes = buffers
                .saturating_mul(self.bufs.buf_size())
                .min(u32::MAX as usize);
            entry = with_recv_budget(entry, bytes as u32);
        }
        conn.recv_armed = true;
        // SAFETY: the kernel writes only into provided buffers, which outlive the ring; the fd is
        // closed only after this recv's final CQE.
        unsafe { self.sq.push(entry) };
    }

    fn start_send(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let Some(chunk) = conn.queue.front().copied() else {
            return;
        };
        debug_assert!(!conn.send_in_flight && conn.sent < chunk.len);
        // SAFETY (pointer arithmetic): sent < len <= buffer size, inside buffer `bid`.
        let ptr = unsafe { self.bufs.addr(chunk.bid).add(conn.sent as usize) };
        let entry = opcode::Send::new(Fd(conn.fd), ptr, chunk.len - conn.sent)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build()
            .user_data(user_data(Op::Send, slot));
        conn.send_in_flight = true;
        self.sends += 1;
        self.sends_since_wait += 1;
        if conn.queue.len() > 1 {
            // More data waits for this send's completion: do not sleep past it.
            self.reap_eagerly = true;
        }
        // SAFETY: the buffer stays out of the ring until this send's CQE (front chunk of a
        // connection with a send in flight is never recycled), and the pool outlives the ring.
        unsafe { self.sq.push(entry) };
    }

    fn on_recv(&mut self, slot: u32, res: i32, flags: u32) {
        let cap = self.params.max_queued_buffers;
        let Some(conn) = self.conns.get_mut(slot) else {
            tracing::error!(slot, res, "recv CQE for a free slot");
            return;
        };
        if !cqueue::more(flags) {
            conn.recv_armed = false;
        }
        if res > 0 {
            let bid = cqueue::buffer_select(flags);
            match bid {
                Some(bid) if self.bufs.take(bid) => {
                    if conn.dead {
                        self.bufs.recycle(bid);
                    } else {
                        conn.queue.push_back(Chunk {
                            bid,
                            len: res as u32,
                        });
                        conn.last_progress = self.now;
                        self.peak_conn_buffers = self.peak_conn_buffers.max(conn.queue.len());
                        if conn.recv_armed && !conn.cancel_pending && conn.queue.len() >= cap {
                            let entry = opcode::AsyncCancel::new(user_data(Op::Recv, slot))
                                .build()
                                .user_data(user_data(Op::RecvCancel, slot));
                            conn.cancel_pending = true;
                            // SAFETY: no pointers.
                            unsafe { self.sq.push(entry) };
                        }
                    }
                }
                _ => {
                    tracing::error!(slot, res, flags, "recv CQE without a valid provided buffer");
                    self.fail(slot, libc::EINVAL);
                    return;
                }
            }
        } else if res == 0 {
            conn.eof = true;
        } else {
            match -res {
                libc::ENOBUFS => {
                    if !conn.dead && !conn.parked {
                        conn.parked = true;
                        self.parked.push_back(slot);
                        self.parks += 1;
                    }
                }
                libc::ECANCELED => {}
                libc::EINVAL if self.recv_budget => {
                    // Kernel older than 6.17: no multishot byte budget. Re-arm without it.
                    tracing::info!(
                        "kernel rejects the multishot recv byte budget; per-connection \
                         backpressure falls back to cancelling the recv"
                    );
                    self.recv_budget = false;
                }
                errno => {
                    self.fail(slot, errno);
                    return;
                }
            }
        }
        self.settle(slot);
    }

    fn on_send(&mut self, slot: u32, res: i32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            tracing::error!(slot, res, "send CQE for a free slot");
            return;
        };
        conn.send_in_flight = false;
        if res > 0 {
            self.counts.bytes_echoed += res as u64;
            conn.sent += res as u32;
            conn.last_progress = self.now;
            if let Some(front) = conn.queue.front().copied() {
                if conn.sent >= front.len {
                    conn.queue.pop_front();
                    conn.sent = 0;
                    self.bufs.recycle(front.bid);
                }
            }
            if conn.dead {
                while let Some(chunk) = conn.queue.pop_front() {
                    self.bufs.recycle(chunk.bid);
                }
                conn.sent = 0;
            }
        } else {
            // A zero-byte send of a non-empty buffer means the socket can take no more: treat
            // it like a broken pipe.
            let errno = if res == 0 { libc::EPIPE } else { -res };
            self.fail(slot, errno);
            return;
        }
        self.settle(slot);
    }

    fn on_close(&mut self, slot: u32) {
        if let Some(mut conn) = self.conns.remove(slot) {
            while let Some(chunk) = conn.queue.pop_front() {
                self.bufs.recycle(chunk.bid);
            }
            self.counts.closed += 1;
            self.stats.conn_closed();
        }
    }

    /// Records an I/O error (first one per connection) and tears the connection down.
    fn fail(&mut self, slot: u32, errno: i32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.dead {
            match errno {
                libc::ECONNRESET => self.counts.errors_reset += 1,
                libc::EPIPE => self.counts.errors_pipe += 1,
                _ => self.counts.errors_other += 1,
            }
        }
        self.kill(slot, false);
    }

    /// Stops all I/O on a connection (again, if it is already dead). `always_shutdown` sends our
    /// FIN even when no op is pending (idle timeout, drain deadline); otherwise `shutdown(2)` is
    /// used only to make pending ops complete. Buffers not referenced by a send go back to the
    /// ring now, and the close is submitted once nothing is in flight.
    fn kill(&mut self, slot: u32, always_shutdown: bool) {
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
        let keep = usize::from(conn.send_in_flight);
        while conn.queue.len() > keep {
            if let Some(chunk) = conn.queue.pop_back() {
                self.bufs.recycle(chunk.bid);
            }
        }
        self.settle(slot);
    }

    /// Decides a connection's next step after any event: close, send, or re-arm its recv.
    fn settle(&mut self, slot: u32) {
        let resume_at = self.params.max_queued_buffers / 2;
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
                // SAFETY: no pointers; no other op for this fd is in flight and the fd is not
                // used again (the slot is freed by this op's CQE).
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
        if !conn.eof
            && !conn.recv_armed
            && !conn.parked
            && !conn.cancel_pending
            && conn.queue.len() <= resume_at
        {
            self.arm_recv(slot);
        }
    }

    /// End of a batch of CQEs: hand recycled buffers to the kernel and re-arm parked receives.
    fn after_batch(&mut self) {
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
        tracing::debug!(error = %io::Error::last_os_error(), "TCP_NODELAY failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for op in [
            Op::Accept,
            Op::AcceptCancel,
            Op::Tick,
            Op::Recv,
            Op::Send,
            Op::RecvCancel,
            Op::Close,
            Op::AcceptRetry,
        ] {
            for slot in [0, 1, 77, u32::MAX] {
                assert_eq!(decode(user_data(op, slot)), Some((op, slot)));
            }
        }
        assert_eq!(decode(0), None);
        assert_eq!(decode(99 << OP_SHIFT), None);
    }

    fn sqe_bytes(entry: squeue::Entry) -> [u8; 64] {
        // SAFETY: see `with_recv_budget`.
        unsafe { std::mem::transmute(entry) }
    }

    #[test]
    fn recv_budget_lands_in_optlen() {
        // The crate's own setter for the same union slot (`file_index`) marks the offset.
        let accept = opcode::AcceptMulti::new(Fd(3))
            .allocate_file_index(true)
            .build();
        let plain = opcode::AcceptMulti::new(Fd(3)).build();
        let (a, p) = (sqe_bytes(accept), sqe_bytes(plain));
        let differ: Vec<usize> = (0..64).filter(|&i| a[i] != p[i]).collect();
        assert_eq!(
            differ,
            (SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4).collect::<Vec<_>>()
        );

        let recv = opcode::RecvMulti::new(Fd(3), BGID).build().user_data(9);
        let before = sqe_bytes(recv.clone());
        let after = sqe_bytes(with_recv_budget(recv, 0x0102_0304));
        for i in 0..64 {
            if (SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4).contains(&i) {
                continue;
            }
            assert_eq!(before[i], after[i], "byte {i} changed");
        }
        assert_eq!(
            after[SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4],
            0x0102_0304u32.to_ne_bytes()
        );
    }

    #[test]
    fn default_pool_is_bounded_and_a_power_of_two() {
        assert_eq!(default_buffer_count(16 * 1024), 1024);
        assert_eq!(default_buffer_count(64 * 1024), 256);
        assert_eq!(default_buffer_count(4096), 4096);
        assert_eq!(default_buffer_count(1), 4096);
        assert_eq!(default_buffer_count(1 << 20), 16);
        assert_eq!(default_buffer_count(1 << 30), 16);
        assert_eq!(default_buffer_count(10_000), 1024);
    }

    #[test]
    fn params_validation() {
        assert!(MultishotParams::new(16384).validate().is_ok());
        let mut p = MultishotParams::new(16384);
        p.buffers = 0;
        assert!(p.validate().is_err());
        let mut p = MultishotParams::new(16384);
        p.max_queued_buffers = 0;
        assert!(p.validate().is_err());
    }
}
