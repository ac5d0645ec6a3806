//! What the server does with connections, independent of how an engine does the I/O.
//!
//! Every rule that decides *what* happens lives here, once, with no runtime and no io_uring: the
//! tokio engines (`uring`, `epoll`, through `backend::serve` and `conn`) and the raw
//! `uring-multishot` engine call the same code, so they admit, back off, log, classify errors,
//! drain and time out identically. An engine only decides *how*: a tokio sleep or an io_uring
//! timeout for the back-off pause, a tokio interval or an io_uring multishot timeout for the idle
//! sweep.
//!
//! - [`Admission`]: `--max-connections` over all workers and engines, one shared count.
//! - Accept errors: [`accept_error_class`] (transient: count and retry at once; otherwise pause),
//!   [`AcceptBackoff`] (the pause: 1 ms doubling to 100 ms, reset by a successful accept) and
//!   [`AcceptErrorLog`] (at most one warning per second, with the number suppressed and a hint
//!   for fd exhaustion).
//! - [`ErrorKind`]: how a connection's I/O error is counted (reset, broken pipe, other).
//! - [`DRAIN_GRACE`]: after the drain deadline forced the remaining sockets shut, how long to
//!   wait for their operations before giving up on them.
//! - [`IdleSweep`] and [`IdleStamp`]: idle-timeout timing, with the window every engine closes
//!   an idle connection in.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

// ---- admission ------------------------------------------------------------------------------

/// The connection limit (`--max-connections`) and the count it guards, shared by every worker of
/// a server. Cloning shares the count.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    active: Arc<AtomicUsize>,
    limit: Option<usize>,
}

impl Admission {
    /// No connection open yet; at most `limit` at once (`None`: no limit).
    pub fn new(limit: Option<usize>) -> Admission {
        Admission {
            active: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Admits one more connection, or returns `None` when `limit` connections are open (the
    /// caller then closes the accepted socket and counts it as rejected). The returned guard
    /// holds the place until dropped.
    pub fn admit(&self) -> Option<Admitted> {
        let previous = self.active.fetch_add(1, Ordering::AcqRel);
        if self.limit.is_some_and(|max| previous >= max) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admitted(Arc::clone(&self.active)))
    }

    /// Connections admitted and not yet released.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// One admitted connection's place in the [`Admission`] count; released on drop, so a
/// connection is released exactly once whichever way it ends.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// ---- accept errors --------------------------------------------------------------------------

/// First pause after a failed accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
/// Longest pause after failed accepts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// At most one accept-error warning per this period.
pub const ACCEPT_LOG_PERIOD: Duration = Duration::from_secs(1);

/// What a failed accept means for the accept loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptErrorClass {
    /// One handshake went wrong (the peer gave up first, a signal): count it, accept again at
    /// once, nothing to log above debug.
    Transient,
    /// The server is short of something (fds, memory): count it, log it (rate-limited) and
    /// pause before accepting again, or the loop would spin on the same error.
    BackOff,
}

/// Classifies an accept error by its errno (`None`: an error without one, treated as serious).
pub fn accept_error_class(errno: Option<i32>) -> AcceptErrorClass {
    match errno {
        Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO | libc::EPERM) => {
            AcceptErrorClass::Transient
        }
        _ => AcceptErrorClass::BackOff,
    }
}

/// The pause after accept errors: [`ACCEPT_BACKOFF_MIN`], doubled after each further error up to
/// [`ACCEPT_BACKOFF_MAX`], back to the minimum after a successful accept. Closing connections
/// is what ends an fd shortage, so the pause stays short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: ACCEPT_BACKOFF_MIN,
        }
    }
}

impl AcceptBackoff {
    /// An accept succeeded: the next pause is the shortest again.
    pub fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }

    /// Accepting failed with a [`AcceptErrorClass::BackOff`] error: returns the pause to take
    /// now and doubles the next one.
    pub fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }
}

/// Logs serious accept errors at most once per [`ACCEPT_LOG_PERIOD`], with the number of errors
/// not logged since the last line. An fd or memory shortage fails every accept until it ends;
/// one line per failure would flood stderr exactly when the operator needs to read it.
#[derive(Debug, Default)]
pub struct AcceptErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrorLog {
    /// Records one error at time `now`; the server pauses `pause` before accepting again.
    pub fn record(&mut self, now: Instant, err: &io::Error, pause: Duration) {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < ACCEPT_LOG_PERIOD)
        {
            self.suppressed += 1;
            return;
        }
        let hint = match err.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => " (raise `ulimit -n` or set --max-connections)",
            _ => "",
        };
        warn!(
            error = %err,
            suppressed = self.suppressed,
            backoff_ms = pause.as_millis() as u64,
            "accept failed; retrying with backoff{hint}"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

// ---- connection errors ----------------------------------------------------------------------

/// How a connection's I/O error is counted (the `errors_*` fields of the summary line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// ECONNRESET: the peer reset the connection.
    Reset,
    /// EPIPE: we wrote after the peer could no longer receive (also a send that made no
    /// progress on a non-empty buffer).
    Pipe,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The kind of an errno.
    pub fn from_errno(errno: i32) -> ErrorKind {
        match errno {
            libc::ECONNRESET => ErrorKind::Reset,
            libc::EPIPE => ErrorKind::Pipe,
            _ => ErrorKind::Other,
        }
    }

    /// The kind of an I/O error (one without an errno is [`ErrorKind::Other`]).
    pub fn of(err: &io::Error) -> ErrorKind {
        err.raw_os_error()
            .map_or(ErrorKind::Other, ErrorKind::from_errno)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Reset => "reset",
            ErrorKind::Pipe => "pipe",
            ErrorKind::Other => "other",
        })
    }
}

// ---- drain ----------------------------------------------------------------------------------

/// After the drain deadline (or a second signal) shut every remaining socket down, how long an
/// engine waits for the operations still in flight on them before it gives up on them.
///
/// Why 1 s: `shutdown(SHUT_RDWR)` makes a pending receive return 0 and a pending send fail at
/// once, so on a healthy kernel every operation completes within one pass of the event loop
/// (microseconds). The grace only covers a worker thread that is descheduled on an overloaded
/// machine, and bounds how far past `--drain-timeout` a stop can run; a second is ample for the
/// first and short enough for the second. What giving up means differs by engine and is
/// documented there (`backend` for the tokio engines, `backend::uring_multishot` for the other).
///
/// The tokio engines time the grace with a tokio timer. The multishot engine checks it against
/// its event loop's tick clock, read once per
/// [`DEFAULT_TICK`](crate::backend::uring_multishot::DEFAULT_TICK) (100 ms), so it gives up at
/// the first tick past the grace: up to one tick late (and up to one tick early after a second
/// signal that came between two ticks, since the grace then counts from the tick before). It
/// reads the stop request and checks the drain deadline on ticks too, so each of the three can
/// add up to one tick to a stop there.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

// ---- idle timeout ---------------------------------------------------------------------------

/// Shortest idle-sweep period.
pub const IDLE_SWEEP_MIN: Duration = Duration::from_millis(10);
/// Longest idle-sweep period.
pub const IDLE_SWEEP_MAX: Duration = Duration::from_secs(1);

/// Idle-timeout timing, the same on every engine.
///
/// An engine runs a sweep every [`IdleSweep::period`] (`idle / 8`, clamped to 10 ms..1 s) and
/// keeps an [`IdleStamp`] per connection. On the hot path a completed read or write only sets a
/// flag ([`IdleStamp::progress`], one store, no clock read). The sweep turns the flag into a
/// time: the first sweep after any progress records its own clock reading as the connection's
/// `since`, and a later sweep closes the connection once `since` is `idle` old.
///
/// The window: because `since` is read *after* the last progress, a connection is never closed
/// before `idle` has passed since its last completed read or write (exactly, whatever the
/// scheduling). The sweep that records `since` comes at most one period after the progress, and
/// the one that closes at most one period after `since + idle`, so the close comes within
/// `[idle, idle + 2 × period]` ([`IdleSweep::window`]), plus however late the engine runs its
/// sweeps on a loaded machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleSweep {
    idle: Duration,
    period: Duration,
}

impl IdleSweep {
    /// Timing for `--idle-timeout idle`.
    pub fn new(idle: Duration) -> IdleSweep {
        IdleSweep {
            idle,
            period: (idle / 8).clamp(IDLE_SWEEP_MIN, IDLE_SWEEP_MAX),
        }
    }

    /// The idle timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// How often the engine sweeps.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Earliest and latest time after its last progress at which a sweep running on schedule
    /// closes an idle connection: `(idle, idle + 2 × period)`.
    pub fn window(&self) -> (Duration, Duration) {
        (self.idle, self.idle + 2 * self.period)
    }

    /// One sweep's verdict on one connection at time `now` (the sweep's clock reading): true if
    /// it has been idle for the timeout and must be closed. Updates the stamp.
    #[inline]
    pub fn expired(&self, now: Instant, stamp: &IdleStamp) -> bool {
        if stamp.progressed.replace(false) {
            stamp.since.set(now);
            return false;
        }
        now.saturating_duration_since(stamp.since.get()) >= self.idle
    }
}

/// One connection's idle bookkeeping for [`IdleSweep`]. Cells, so that the engines' hot path
/// marks progress through a shared reference with one byte store.
#[derive(Debug)]
pub struct IdleStamp {
    progressed: Cell<bool>,
    since: Cell<Instant>,
}

impl IdleStamp {
    /// A new connection: counts as having made progress, so its idle time starts at the next
    /// sweep. `now` is any recent clock reading (it is replaced at that sweep).
    pub fn new(now: Instant) -> IdleStamp {
        IdleStamp {
            progressed: Cell::new(true),
            since: Cell::new(now),
        }
    }

    /// A read or write completed.
    #[inline]
    pub fn progress(&self) {
        self.progressed.set(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_limits_and_releases() {
        let admission = Admission::new(Some(2));
        let a = admission.admit().expect("first");
        let b = admission.clone().admit().expect("second, through a clone");
        assert!(admission.admit().is_none(), "third is over the limit");
        assert_eq!(admission.active(), 2);
        drop(a);
        assert_eq!(admission.active(), 1);
        let c = admission.admit().expect("a place was released");
        drop((b, c));
        assert_eq!(admission.active(), 0);
        let unlimited = Admission::new(None);
        let many: Vec<_> = (0..1000).map(|_| unlimited.admit().unwrap()).collect();
        assert_eq!(unlimited.active(), 1000);
        drop(many);
        assert_eq!(unlimited.active(), 0);
    }

    #[test]
    fn accept_errors_are_classified() {
        for errno in [
            libc::ECONNABORTED,
            libc::EINTR,
            libc::EAGAIN,
            libc::EPROTO,
            libc::EPERM,
        ] {
            assert_eq!(accept_error_class(Some(errno)), AcceptErrorClass::Transient);
        }
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(accept_error_class(Some(errno)), AcceptErrorClass::BackOff);
        }
        assert_eq!(accept_error_class(None), AcceptErrorClass::BackOff);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..9).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 100, 100]);
        b.succeeded();
        assert_eq!(b.failed(), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn log_is_rate_limited() {
        let mut log = AcceptErrorLog::default();
        let t0 = Instant::now();
        let err = io::Error::from_raw_os_error(libc::EMFILE);
        log.record(t0, &err, ACCEPT_BACKOFF_MIN);
        assert_eq!((log.last, log.suppressed), (Some(t0), 0));
        for ms in [1, 500, 999] {
            log.record(t0 + Duration::from_millis(ms), &err, ACCEPT_BACKOFF_MIN);
        }
        assert_eq!((log.last, log.suppressed), (Some(t0), 3));
        let t1 = t0 + ACCEPT_LOG_PERIOD;
        log.record(t1, &err, ACCEPT_BACKOFF_MIN);
        assert_eq!((log.last, log.suppressed), (Some(t1), 0));
    }

    #[test]
    fn error_kinds() {
        assert_eq!(ErrorKind::from_errno(libc::ECONNRESET), ErrorKind::Reset);
        assert_eq!(ErrorKind::from_errno(libc::EPIPE), ErrorKind::Pipe);
        assert_eq!(ErrorKind::from_errno(libc::ETIMEDOUT), ErrorKind::Other);
        assert_eq!(
            ErrorKind::of(&io::Error::from_raw_os_error(libc::EPIPE)),
            ErrorKind::Pipe
        );
        assert_eq!(
            ErrorKind::of(&io::Error::other("no errno")),
            ErrorKind::Other
        );
    }

    #[test]
    fn sweep_period_is_an_eighth_clamped() {
        let period = |ms| IdleSweep::new(Duration::from_millis(ms)).period();
        assert_eq!(period(1), IDLE_SWEEP_MIN);
        assert_eq!(period(800), Duration::from_millis(100));
        assert_eq!(period(3_600_000), IDLE_SWEEP_MAX);
        let s = IdleSweep::new(Duration::from_secs(2));
        assert_eq!(
            s.window(),
            (Duration::from_secs(2), Duration::from_millis(2500))
        );
    }

    /// Simulated sweeps on schedule: for progress at any phase of the sweep clock, the close
    /// lands inside the window, and never a nanosecond before `idle`.
    #[test]
    fn close_lands_in_the_window() {
        let sweep = IdleSweep::new(Duration::from_millis(800));
        let period = sweep.period();
        let (lo, hi) = sweep.window();
        let t0 = Instant::now();
        for phase_us in (0..=100_000).step_by(2_500) {
            // Busy from the start until its last progress, then silent.
            let last_progress = t0 + Duration::from_millis(1000) + Duration::from_micros(phase_us);
            let stamp = IdleStamp::new(t0);
            let mut previous_sweep = t0;
            let closed_at = (1..100u32)
                .map(|k| t0 + period * k)
                .find(|&now| {
                    if previous_sweep < last_progress {
                        stamp.progress();
                    }
                    previous_sweep = now;
                    sweep.expired(now, &stamp)
                })
                .expect("closed");
            let after = closed_at - last_progress;
            assert!(after >= lo && after <= hi, "phase {phase_us} us: {after:?}");
        }
    }

    #[test]
    fn progress_between_sweeps_keeps_a_connection_open() {
        let sweep = IdleSweep::new(Duration::from_millis(80));
        let t0 = Instant::now();
        let stamp = IdleStamp::new(t0);
        for k in 1..50u32 {
            stamp.progress();
            assert!(!sweep.expired(t0 + sweep.period() * k, &stamp));
        }
        // Without progress: closed once `idle` has passed since the sweep that saw the last
        // progress (sweep 49), not a moment before.
        let seen = t0 + sweep.period() * 49;
        assert!(!sweep.expired(seen + Duration::from_millis(10), &stamp));
        assert!(!sweep.expired(seen + Duration::from_millis(79), &stamp));
        assert!(sweep.expired(seen + Duration::from_millis(80), &stamp));
    }
}
