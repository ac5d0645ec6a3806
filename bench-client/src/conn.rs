//! Drive one connection: send messages, verify every echoed byte, record latencies.
//!
//! One future per connection polls both directions of the socket itself (`poll_write` and
//! `poll_read` on the same `TcpStream`, no split, no channel, no per-message allocation), so
//! pipelined messages flow while echoes are being read and neither side can deadlock on full
//! socket buffers. Outgoing bytes are generated into a small staging buffer owned by the
//! connection; incoming bytes land in a read buffer shared by all connections of the thread
//! (it is only used inside one synchronous poll) and are verified in place, streaming.
//!
//! A message is *admitted* when its first byte is generated: that instant is its send time.
//! At most `pipeline` messages are outstanding per connection (default 1). Closed loop admits
//! as soon as that allows; open loop admits a message once its intended time has passed *and*
//! the pipeline has room. A connection whose echoes are slower than its schedule therefore
//! falls behind and then sends immediately (catching up), while its latency is still measured
//! from the intended time: a server stall shows up in every message that was due during it
//! (intended-time latency), but only in the few messages that were actually in flight
//! (service time). This is wrk2's model; `--pipeline N` allows N outstanding.
//!
//! At the deadline the connection stops: admitted but unfinished messages are `aborted`,
//! open-loop messages that were due but never admitted are `unsent`. It then half-closes and
//! drains the remaining echoes (bounded by [`DRAIN_TIMEOUT`]) so the server sees a clean close.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::clock::now_ns;
use crate::config::Arrival;
use crate::message::{ConnError, Pattern};
use crate::pacer::Pacer;
use crate::record::{Recorder, Window};

/// Bytes of the per-thread read buffer.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// How long a connection waits, after the deadline, for the server to close its side.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);
/// Upper bound of a connection's staging (write) buffer.
pub const MAX_STAGING_BYTES: usize = 64 * 1024;

/// State shared by all connections of one client thread.
pub struct ThreadShared {
    /// Message content.
    pub pattern: Arc<Pattern>,
    /// The thread's latency recorder.
    pub recorder: RefCell<Recorder>,
    /// Read buffer, borrowed only during one poll.
    pub rbuf: RefCell<Box<[u8]>>,
    /// Open-loop wake-ups.
    pub pacer: Option<Rc<Pacer>>,
    /// Completed messages of this thread, for the progress display.
    pub progress: Arc<AtomicU64>,
    /// The trial's window.
    pub window: Window,
}

/// When each message of one connection is intended to be sent (open loop).
#[derive(Clone)]
pub struct Arrivals {
    kind: ArrivalKind,
}

#[derive(Clone)]
enum ArrivalKind {
    Constant {
        t0_ns: u64,
        period_ns: f64,
        /// Next message index, offset by this connection's phase.
        k: f64,
    },
    Poisson {
        period_ns: f64,
        next_ns: f64,
        rng: Box<StdRng>,
        exp: Exp<f64>,
    },
}

impl Arrivals {
    /// Arrivals for connection `index` of `count`, each connection getting `rate_per_conn`
    /// messages per second starting at `t0_ns`. Constant arrivals are phase-shifted by
    /// `index / count` of a period so the aggregate is evenly spaced; Poisson arrivals use
    /// exponential gaps (the sum of the connections is then a Poisson process of the total rate).
    pub fn new(
        arrival: Arrival,
        t0_ns: u64,
        rate_per_conn: f64,
        index: u32,
        count: u32,
        seed: u64,
    ) -> Arrivals {
        let period_ns = 1e9 / rate_per_conn;
        let kind = match arrival {
            Arrival::Constant => ArrivalKind::Constant {
                t0_ns,
                period_ns,
                k: f64::from(index) / f64::from(count.max(1)),
            },
            Arrival::Poisson => {
                let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(index) << 32) ^ 0x9e37_79b9);
                let exp = Exp::new(1.0 / period_ns).expect("positive rate");
                let first = t0_ns as f64 + exp.sample(&mut rng);
                ArrivalKind::Poisson {
                    period_ns,
                    next_ns: first,
                    rng: Box::new(rng),
                    exp,
                }
            }
        };
        Arrivals { kind }
    }

    /// How many intended send times fall before `end_ns`, counting `next_ns` (already taken
    /// from the schedule) and the ones after it. Exact for constant arrivals; for Poisson
    /// arrivals exact up to 1,000,000 messages and extrapolated at the mean rate beyond.
    /// Consumes the schedule.
    pub fn count_before(&mut self, next_ns: u64, end_ns: u64) -> u64 {
        self.count_due(next_ns, end_ns, &mut DueGrid::none())
    }

    /// Like [`Self::count_before`], also adding each counted time that falls in the grid's
    /// span into its interval's count.
    pub fn count_due(&mut self, next_ns: u64, end_ns: u64, grid: &mut DueGrid<'_>) -> u64 {
        if next_ns >= end_ns {
            return 0;
        }
        grid.add_at(next_ns, 1);
        match &mut self.kind {
            ArrivalKind::Constant {
                t0_ns,
                period_ns,
                k,
            } => {
                let (t0, period, k) = (*t0_ns, *period_ns, *k);
                // Schedule points after `next_ns` (indices k, k+1, ...) that fall before `x`.
                let before = |x: u64| -> u64 {
                    if x <= t0 {
                        0
                    } else {
                        ((x - t0) as f64 / period - k).ceil().max(0.0) as u64
                    }
                };
                grid.add_counts(end_ns, before);
                1 + before(end_ns)
            }
            ArrivalKind::Poisson { .. } => {
                const CAP: u64 = 1_000_000;
                let mut count = 1;
                let mut t = self.next_ns();
                while t < end_ns && count < CAP {
                    grid.add_at(t, 1);
                    count += 1;
                    t = self.next_ns();
                }
                if t < end_ns {
                    let ArrivalKind::Poisson { period_ns, .. } = &self.kind else {
                        unreachable!("checked above")
                    };
                    // Beyond the cap: the mean rate, spread evenly over the rest.
                    let period = *period_ns;
                    let before = |x: u64| -> u64 { (x.saturating_sub(t) as f64 / period) as u64 };
                    grid.add_counts(end_ns, before);
                    count += before(end_ns);
                }
                count
            }
        }
    }

    /// Intended send time of the next message; advances the schedule.
    pub fn next_ns(&mut self) -> u64 {
        match &mut self.kind {
            ArrivalKind::Constant {
                t0_ns,
                period_ns,
                k,
            } => {
                let t = t0_ns.saturating_add((*k * *period_ns) as u64);
                *k += 1.0;
                t
            }
            ArrivalKind::Poisson {
                next_ns, rng, exp, ..
            } => {
                let t = *next_ns as u64;
                *next_ns += exp.sample(rng.as_mut());
                t
            }
        }
    }
}

/// Where [`Arrivals::count_due`] adds the intended times it counts: intervals of
/// `interval_ns` from `from_ns` (the measured window's start), one count per interval.
pub struct DueGrid<'a> {
    from_ns: u64,
    interval_ns: u64,
    counts: &'a mut [u64],
}

impl<'a> DueGrid<'a> {
    /// A grid of `counts.len()` intervals of `interval_ns` starting at `from_ns`.
    pub fn new(from_ns: u64, interval_ns: u64, counts: &'a mut [u64]) -> DueGrid<'a> {
        DueGrid {
            from_ns,
            interval_ns: interval_ns.max(1),
            counts,
        }
    }

    /// No grid: only the total is wanted.
    pub fn none() -> DueGrid<'static> {
        DueGrid {
            from_ns: 0,
            interval_ns: 1,
            counts: &mut [],
        }
    }

    fn add_at(&mut self, t: u64, n: u64) {
        if t >= self.from_ns {
            let idx = (t - self.from_ns) / self.interval_ns;
            if let Some(c) = self.counts.get_mut(idx as usize) {
                *c += n;
            }
        }
    }

    /// Add, per interval `[a, b)` (cut at `end_ns`), `before(b) - before(a)`: `before(x)`
    /// counts the schedule points before `x`.
    fn add_counts(&mut self, end_ns: u64, before: impl Fn(u64) -> u64) {
        for (i, c) in self.counts.iter_mut().enumerate() {
            let a = self.from_ns + i as u64 * self.interval_ns;
            if a >= end_ns {
                break;
            }
            let b = (a + self.interval_ns).min(end_ns);
            *c += before(b) - before(a);
        }
    }
}

/// How a connection generates load.
pub struct Load {
    /// At most this many messages outstanding (sent, echo not complete).
    pub pipeline: usize,
    /// Open loop: the send schedule; `None` is the closed loop (send as soon as allowed).
    pub arrivals: Option<Arrivals>,
    /// Open loop: count the messages not completed by the deadline that were due more than
    /// this long before it ([`ConnOutcome::overdue`]).
    pub overdue_after_ns: Option<u64>,
}

/// What one connection did.
#[derive(Debug, Default)]
pub struct ConnOutcome {
    /// Messages admitted (sent or partly sent).
    pub sent: u64,
    /// Messages in flight at the deadline.
    pub aborted: u64,
    /// Open loop: messages due before the deadline but never sent (the connection was behind).
    pub unsent: u64,
    /// Open loop with [`Load::overdue_after_ns`]: aborted or unsent messages that were due more
    /// than that long before the deadline (their latency, had they completed, would exceed it).
    pub overdue: u64,
    /// Those of `overdue` that were due inside the measured window.
    pub overdue_in_window: u64,
    /// Why the connection stopped early, if it did.
    pub error: Option<ConnError>,
}

/// Staging-buffer size for a connection: room for `batch` messages, at most 64 KiB.
pub fn staging_bytes(size: usize, batch: usize) -> usize {
    size.saturating_mul(batch.max(1)).min(MAX_STAGING_BYTES)
}

/// Run one connection from `t0` to the window's end.
pub async fn drive(
    mut stream: TcpStream,
    conn: u32,
    shared: Rc<ThreadShared>,
    mut load: Load,
) -> ConnOutcome {
    let window = shared.window;
    let pattern = shared.pattern.clone();
    let size = pattern.size();
    let pipeline = load.pipeline.max(1);
    let wcap = staging_bytes(size, pipeline);
    let mut wbuf = vec![0u8; wcap].into_boxed_slice();
    let (mut wpos, mut wlen) = (0usize, 0usize);
    // Generation pointer: next byte to stage is byte `gen_off` of message `gen_seq`.
    let (mut gen_seq, mut gen_off) = (0u64, 0usize);
    let mut admitted = 0u64;
    // Verification pointer: next byte expected is byte `rx_off` of message `rx_seq`.
    let (mut rx_seq, mut rx_off) = (0u64, 0usize);
    let (mut written, mut received) = (0u64, 0u64);
    // (intended_ns, sent_ns) of messages rx_seq..admitted.
    let mut times: VecDeque<(u64, u64)> = VecDeque::with_capacity(pipeline.min(4096));
    let mut next_intended = match &mut load.arrivals {
        Some(arrivals) => arrivals.next_ns(),
        None => window.t0_ns,
    };
    let mut pacer_due = u64::MAX;
    // Send lateness is the client's only for messages that became due while the connection had
    // room to send: `held` is set while the pipeline or the staging buffer is full, `free_ns`
    // is when room was seen again.
    let (mut held, mut free_ns) = (false, 0u64);

    let deadline = tokio::time::sleep(std::time::Duration::from_nanos(
        window.end_ns.saturating_sub(now_ns()),
    ));
    tokio::pin!(deadline);
    if load.arrivals.is_none() {
        let wait = window.t0_ns.saturating_sub(now_ns());
        if wait > 0 {
            tokio::time::sleep(std::time::Duration::from_nanos(wait)).await;
        }
    }

    let io_err = |source: io::Error| ConnError::Io { conn, source };
    // Generate admitted-but-unstaged bytes into the staging buffer, as far as it has room.
    macro_rules! stage {
        () => {
            while wlen < wcap && gen_seq < admitted {
                let n = (wcap - wlen).min(size - gen_off);
                pattern.fill(conn, gen_seq, gen_off, &mut wbuf[wlen..wlen + n]);
                wlen += n;
                gen_off += n;
                if gen_off == size {
                    gen_seq += 1;
                    gen_off = 0;
                }
            }
        };
    }

    let result: Result<(), ConnError> = std::future::poll_fn(|cx| {
        loop {
            let now = now_ns();
            if now >= window.end_ns {
                return Poll::Ready(Ok(()));
            }
            let mut progress = false;

            // Admit and stage new messages.
            loop {
                if gen_seq != admitted || wlen >= wcap || (admitted - rx_seq) as usize >= pipeline {
                    held = true;
                    break;
                }
                match &mut load.arrivals {
                    None => times.push_back((now, now)),
                    Some(arrivals) => {
                        if held {
                            held = false;
                            free_ns = now;
                        }
                        if next_intended > now {
                            break;
                        }
                        shared.recorder.borrow_mut().record_send(
                            next_intended,
                            now,
                            next_intended >= free_ns,
                        );
                        times.push_back((next_intended, now));
                        next_intended = arrivals.next_ns();
                    }
                }
                admitted += 1;
                stage!();
            }
            // Keep staging the rest of a large message.
            stage!();

            // Write.
            if wpos < wlen {
                match Pin::new(&mut stream).poll_write(cx, &wbuf[wpos..wlen]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io_err(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        wpos += n;
                        written += n as u64;
                        if wpos == wlen {
                            wpos = 0;
                            wlen = 0;
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(io_err(e))),
                    Poll::Pending => {}
                }
            }

            // Read and verify.
            let mut rbuf = shared.rbuf.borrow_mut();
            let mut rb = ReadBuf::new(&mut rbuf[..]);
            match Pin::new(&mut stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(if rx_off > 0 {
                            ConnError::Short {
                                conn,
                                seq: rx_seq,
                                got: rx_off,
                                size,
                            }
                        } else {
                            ConnError::Eof {
                                conn,
                                seq: rx_seq,
                                in_flight: admitted - rx_seq,
                            }
                        }));
                    }
                    let done = now_ns();
                    if done >= window.end_ns {
                        // Completed after the deadline: still in flight at the deadline.
                        return Poll::Ready(Ok(()));
                    }
                    let data = &rbuf[..n];
                    let valid = (n as u64).min(written - received) as usize;
                    let mut rec = shared.recorder.borrow_mut();
                    let mut i = 0;
                    while i < valid {
                        let take = (valid - i).min(size - rx_off);
                        if let Err(m) = pattern.verify(conn, rx_seq, rx_off, &data[i..i + take]) {
                            return Poll::Ready(Err(ConnError::Mismatch {
                                conn,
                                seq: rx_seq,
                                offset: m.offset,
                                expected: m.expected,
                                got: m.got,
                            }));
                        }
                        i += take;
                        rx_off += take;
                        if rx_off == size {
                            let (intended, sent) =
                                times.pop_front().expect("a sent message per echo");
                            rec.record(done, intended, sent);
                            rx_seq += 1;
                            rx_off = 0;
                        }
                    }
                    received += valid as u64;
                    if n > valid {
                        return Poll::Ready(Err(ConnError::Unsolicited {
                            conn,
                            seq: rx_seq,
                            offset: rx_off,
                            bytes: n - valid,
                        }));
                    }
                    shared
                        .progress
                        .store(rec.completed_total, Ordering::Relaxed);
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io_err(e))),
                Poll::Pending => {}
            }
            drop(rbuf);

            if progress {
                continue;
            }
            // Nothing moved: make sure something will wake us.
            if let (Some(_), Some(pacer)) = (&load.arrivals, shared.pacer.as_ref()) {
                // Only when time is what holds the next message back (a full pipeline or a
                // full socket wakes us through the socket).
                if gen_seq == admitted
                    && wlen < wcap
                    && ((admitted - rx_seq) as usize) < pipeline
                    && next_intended != pacer_due
                {
                    pacer.wake_at(next_intended, cx.waker());
                    pacer_due = next_intended;
                }
            }
            if deadline.as_mut().poll(cx).is_ready() {
                continue;
            }
            return Poll::Pending;
        }
    })
    .await;

    let mut outcome = ConnOutcome {
        sent: admitted,
        ..ConnOutcome::default()
    };
    match result {
        Ok(()) => {
            // Close politely after the window: FIN, then swallow the echoes still on their way
            // until the server closes too. Dropping a socket with unread data would send an RST,
            // which the server would (rightly) count as a reset error.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = stream.shutdown().await;
                let mut sink = [0u8; 4096];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            outcome.aborted = admitted - rx_seq;
            if let Some(arrivals) = &mut load.arrivals {
                if let Some(bound) = load.overdue_after_ns {
                    let due_by = window.end_ns.saturating_sub(bound);
                    let from = window.measure_start_ns;
                    let late = times.iter().filter(|(i, _)| *i < due_by);
                    let mut in_window = [late.clone().filter(|(i, _)| *i >= from).count() as u64];
                    let late_in_flight = late.count() as u64;
                    let span = due_by.saturating_sub(from).max(1);
                    let grid = &mut DueGrid::new(from, span, &mut in_window);
                    let late_unsent = arrivals.clone().count_due(next_intended, due_by, grid);
                    outcome.overdue = late_in_flight + late_unsent;
                    outcome.overdue_in_window = in_window[0];
                }
                let mut rec = shared.recorder.borrow_mut();
                outcome.unsent = match rec.rate_grid() {
                    Some((w, interval_ns, n)) => {
                        let mut counts = vec![0u64; n];
                        let grid = &mut DueGrid::new(w.measure_start_ns, interval_ns, &mut counts);
                        let unsent = arrivals.count_due(next_intended, window.end_ns, grid);
                        rec.record_unsent(&counts);
                        unsent
                    }
                    None => arrivals.count_before(next_intended, window.end_ns),
                };
            }
        }
        Err(e) => outcome.error = Some(e),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_arrivals_are_evenly_spread_across_connections() {
        // 4 connections at 1000 msgs/s each = 4000/s total: aggregate gaps of 250 µs.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|c| {
                let mut a = Arrivals::new(Arrival::Constant, 1_000_000, 1000.0, c, 4, 1);
                (0..10).map(move |_| a.next_ns()).collect::<Vec<_>>()
            })
            .collect();
        all.sort_unstable();
        assert_eq!(all[0], 1_000_000);
        for w in all.windows(2) {
            assert_eq!(w[1] - w[0], 250_000);
        }
    }

    #[test]
    fn poisson_arrivals_have_the_requested_mean_rate() {
        let mut a = Arrivals::new(Arrival::Poisson, 0, 10_000.0, 0, 1, 7);
        let n = 20_000;
        let mut last = 0;
        for _ in 0..n {
            last = a.next_ns();
        }
        let rate = n as f64 / (last as f64 / 1e9);
        assert!((rate - 10_000.0).abs() / 10_000.0 < 0.03, "{rate}");
    }

    #[test]
    fn counting_due_messages_matches_iterating() {
        for arrival in [Arrival::Constant, Arrival::Poisson] {
            for (rate, end) in [
                (1000.0, 50_000_000u64),
                (333.0, 1_000_000_000),
                (1e6, 3_000_000),
            ] {
                let mut a = Arrivals::new(arrival, 1_000, rate, 3, 7, 9);
                let mut b = Arrivals::new(arrival, 1_000, rate, 3, 7, 9);
                // take a few first, as a connection would have
                let mut next = 0;
                for _ in 0..5 {
                    next = a.next_ns();
                    b.next_ns();
                }
                let mut expected = 0;
                let mut t = next;
                while t < end {
                    expected += 1;
                    t = b.next_ns();
                }
                assert_eq!(a.count_before(next, end), expected, "{arrival:?} {rate}");
            }
        }
        // a huge backlog is counted without iterating message by message
        let mut a = Arrivals::new(Arrival::Constant, 0, 1e9, 0, 1, 1);
        let first = a.next_ns();
        assert_eq!(a.count_before(first, 3_600_000_000_000), 3_600_000_000_000);
    }

    #[test]
    fn due_times_are_counted_into_their_intervals() {
        for arrival in [Arrival::Constant, Arrival::Poisson] {
            let (from, interval, end) = (40_000_000u64, 7_000_000u64, 100_000_000u64);
            let mut a = Arrivals::new(arrival, 1_000, 3000.0, 1, 3, 5);
            let mut b = Arrivals::new(arrival, 1_000, 3000.0, 1, 3, 5);
            let next = a.next_ns();
            b.next_ns();
            let mut counts = vec![0u64; 9];
            let total = a.count_due(next, end, &mut DueGrid::new(from, interval, &mut counts));
            // the same by walking the schedule
            let mut expected = vec![0u64; 9];
            let (mut n, mut t) = (0, next);
            while t < end {
                n += 1;
                if t >= from {
                    expected[((t - from) / interval) as usize] += 1;
                }
                t = b.next_ns();
            }
            assert_eq!(total, n, "{arrival:?}");
            for (got, want) in counts.iter().zip(&expected) {
                assert!(
                    got.abs_diff(*want) <= 1,
                    "{arrival:?}: {counts:?} vs {expected:?}"
                );
            }
            assert_eq!(counts.iter().sum::<u64>(), expected.iter().sum::<u64>());
        }
    }

    #[test]
    fn staging_is_bounded() {
        assert_eq!(staging_bytes(128, 1), 128);
        assert_eq!(staging_bytes(128, 8), 1024);
        assert_eq!(staging_bytes(1 << 20, 1), MAX_STAGING_BYTES);
    }
}
