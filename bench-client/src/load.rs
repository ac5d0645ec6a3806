//! One trial: `threads` OS threads, each with its own tokio current-thread runtime driving its
//! share of the connections, against one address.
//!
//! Sequence (the measured window excludes connection setup):
//! 1. every thread connects all of its connections and reports ready (or the first error);
//! 2. the coordinating thread picks one common start `t0` (or derives it from `--start-at`) and
//!    releases all threads; the measured window is `[t0 + warmup, t0 + warmup + duration)`;
//! 3. while the load runs, the coordinator samples server and client CPU time, and each client
//!    thread's CPU and run-queue time, exactly at the window's start and end, and updates the
//!    progress bar;
//! 4. threads stop at the deadline, their histograms and counters are merged, and the
//!    [`ClientCheck`] judges whether the client was the bottleneck.
//!
//! Nothing is shared between client threads on the hot path except each thread's own progress
//! counter (a relaxed store).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::bottleneck::{
    lateness_limit_ns, rate_intervals_off, ClientCheck, RateInterval, ThreadLoad,
};
use crate::clock::{duration_to_ns, now_ns, WallAnchor};
use crate::config::{LoadConfig, Mode};
use crate::conn::{self, Arrivals, ConnOutcome, Load, ThreadShared, READ_BUFFER_BYTES};
use crate::host::ThreadTimes;
use crate::message::{ConnError, ErrorKind, Pattern};
use crate::pacer::Pacer;
use crate::record::{add_into, new_histogram, IntervalSnapshot, RateCounts, Recorder, Window};
use crate::{host, interrupt};

/// How many connects a thread has outstanding at once (keeps SYNs within listen backlogs).
const CONNECT_BATCH: usize = 128;
/// How many error descriptions are kept per trial.
pub const ERROR_SAMPLES: usize = 10;
/// Gap between "all connected" and the common start.
const START_DELAY_NS: u64 = 5_000_000;

/// Error counts by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Total of all kinds.
    pub total: u64,
    /// Socket errors (reset, broken pipe, ...).
    pub io: u64,
    /// Echoed byte differs from the sent byte.
    pub mismatch: u64,
    /// Server closed the connection at a message boundary.
    pub eof: u64,
    /// Server closed the connection inside a message.
    pub short: u64,
    /// Server sent bytes that were never sent.
    pub unsolicited: u64,
}

impl ErrorCounts {
    /// Count one error of `kind`.
    pub fn add(&mut self, kind: ErrorKind) {
        self.total += 1;
        match kind {
            ErrorKind::Io => self.io += 1,
            ErrorKind::Mismatch => self.mismatch += 1,
            ErrorKind::Eof => self.eof += 1,
            ErrorKind::Short => self.short += 1,
            ErrorKind::Unsolicited => self.unsolicited += 1,
        }
    }

    /// Add all counts of `other`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        self.total += other.total;
        self.io += other.io;
        self.mismatch += other.mismatch;
        self.eof += other.eof;
        self.short += other.short;
        self.unsolicited += other.unsolicited;
    }

    /// `(kind, count)` pairs with a non-zero count.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        ErrorKind::ALL
            .iter()
            .map(|k| {
                let n = match k {
                    ErrorKind::Io => self.io,
                    ErrorKind::Mismatch => self.mismatch,
                    ErrorKind::Eof => self.eof,
                    ErrorKind::Short => self.short,
                    ErrorKind::Unsolicited => self.unsolicited,
                };
                (k.as_str(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// The result of one trial.
pub struct TrialResult {
    /// Latency from the intended send time (closed loop: from the send time).
    pub latency: Histogram<u64>,
    /// Open loop: latency from the actual send time.
    pub service: Option<Histogram<u64>>,
    /// Open loop: send lateness (see [`crate::record`]).
    pub lateness: Option<Histogram<u64>>,
    /// Open loop: how late the client threads' probe ticks ran (see [`crate::pacer`]).
    pub wake_lateness: Option<Histogram<u64>>,
    /// Open loop: intended and completed messages per rate interval.
    pub rates: Option<RateCounts>,
    /// Open loop: rate intervals whose achieved rate missed the intended one.
    pub rate_intervals_off: Vec<RateInterval>,
    /// Whether the client was the bottleneck, and the evidence.
    pub client: ClientCheck,
    /// `--hlog` interval snapshots of all threads (indices relative to this trial's window).
    pub intervals: Vec<IntervalSnapshot>,
    /// Messages completed inside the measured window.
    pub measured: u64,
    /// Messages completed during warmup.
    pub warmup: u64,
    /// Messages admitted (sent).
    pub sent: u64,
    /// Messages in flight at the deadline.
    pub aborted: u64,
    /// Open loop: messages due before the deadline but never sent.
    pub unsent: u64,
    /// Open loop with [`LoadConfig::overdue_after`] (a latency bound): aborted or unsent
    /// messages due more than that long before the deadline.
    pub overdue: u64,
    /// With a latency bound: of the messages due in `[window start, deadline - bound)`, those
    /// that completed...
    pub span_completed: u64,
    /// ... and those that did not (overdue).
    pub span_overdue: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// The first few error descriptions.
    pub error_samples: Vec<String>,
    /// The trial ended before its deadline because every connection had failed (the window is
    /// cut to that moment).
    pub ended_early: bool,
    /// Wall-clock start of the measured window.
    pub measure_start: SystemTime,
    /// Length of the measured window, ns.
    pub measured_ns: u64,
    /// Server CPU time inside the window (spawned servers only), ns.
    pub server_cpu_ns: Option<u64>,
    /// Client (this process) CPU time inside the window, ns.
    pub client_cpu_ns: u64,
}

struct ThreadOutput {
    /// Client thread index.
    thread: usize,
    /// Open loop: time the pacer spun inside the window, ns.
    spun_ns: Option<u64>,
    latency: Histogram<u64>,
    service: Option<Histogram<u64>>,
    lateness: Option<Histogram<u64>>,
    wake_lateness: Option<Histogram<u64>>,
    rates: Option<RateCounts>,
    span_completed: u64,
    intervals: Vec<IntervalSnapshot>,
    measured: u64,
    warmup: u64,
    outcomes: Vec<ConnOutcome>,
}

/// Something whose CPU time is sampled at the window edges (a spawned server).
pub trait CpuSource {
    /// Total CPU time so far, ns.
    fn cpu_ns(&self) -> Option<u64>;
}

impl CpuSource for crate::spawn::Spawned {
    fn cpu_ns(&self) -> Option<u64> {
        crate::spawn::Spawned::cpu_ns(self)
    }
}

/// Sleep until monotonic time `until_ns`, in slices, returning early (false) on interrupt.
/// How a wait of the coordinator ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    Reached,
    Interrupted,
    /// Every client thread has returned: all their connections ended (failed) before the deadline.
    AllEnded,
}

fn sleep_until(until_ns: u64, mut tick: impl FnMut(), all_ended: impl Fn() -> bool) -> Waited {
    loop {
        if interrupt::interrupted() {
            return Waited::Interrupted;
        }
        let now = now_ns();
        if now >= until_ns {
            return Waited::Reached;
        }
        if all_ended() {
            return Waited::AllEnded;
        }
        tick();
        std::thread::sleep(Duration::from_nanos((until_ns - now).min(50_000_000)));
    }
}

/// Run one trial against `addr`.
pub fn run_trial(
    cfg: &LoadConfig,
    addr: SocketAddr,
    start_at: Option<SystemTime>,
    server: Option<&dyn CpuSource>,
    progress: Option<&ProgressBar>,
) -> anyhow::Result<TrialResult> {
    let threads = cfg.threads.clamp(1, cfg.connections);
    let pattern = Arc::new(Pattern::new(cfg.size));
    let counters: Vec<Arc<AtomicU64>> = (0..threads).map(|_| Arc::new(AtomicU64::new(0))).collect();
    // Each thread reports its kernel thread id once connected (or its first error).
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<i32>>();

    std::thread::scope(|scope| -> anyhow::Result<TrialResult> {
        let mut starters = Vec::new();
        let mut joins = Vec::new();
        for (t, counter) in counters.iter().enumerate() {
            let conns: Vec<u32> = (t..cfg.connections)
                .step_by(threads)
                .map(|c| c as u32)
                .collect();
            let (start_tx, start_rx) = oneshot::channel::<Option<Window>>();
            starters.push(start_tx);
            let ready = ready_tx.clone();
            let pattern = pattern.clone();
            let counter = counter.clone();
            let join = std::thread::Builder::new()
                .name(format!("echo-bench-{t}"))
                .spawn_scoped(scope, move || {
                    client_thread(t, conns, cfg, addr, pattern, ready, start_rx, counter)
                })
                .context("cannot start client thread")?;
            joins.push(join);
        }
        drop(ready_tx);

        let release = |starters: Vec<oneshot::Sender<Option<Window>>>, window: Option<Window>| {
            for s in starters {
                let _ = s.send(window);
            }
        };

        // 1. Wait until every thread has connected.
        let mut first_err = None;
        let mut tids = Vec::with_capacity(threads);
        while tids.len() < threads {
            if interrupt::interrupted() {
                first_err.get_or_insert_with(|| anyhow!("interrupted"));
                break;
            }
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(tid)) => tids.push(tid),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    first_err.get_or_insert_with(|| {
                        anyhow!("a client thread stopped before connecting")
                    });
                    break;
                }
            }
        }
        if let Some(e) = first_err {
            release(starters, None);
            for j in joins {
                let _ = j.join();
            }
            return Err(e);
        }

        // 2. Common start.
        let anchor = WallAnchor::now();
        let now = now_ns();
        let warmup_ns = duration_to_ns(cfg.warmup);
        let (t0_ns, measure_start_ns) = match start_at {
            Some(wall) => {
                let ms = anchor.mono_at(wall);
                if ms <= now {
                    release(starters, None);
                    for j in joins {
                        let _ = j.join();
                    }
                    bail!(
                        "--start-at {} is already in the past once all connections are made",
                        humantime::format_rfc3339_millis(wall)
                    );
                }
                (
                    ms.saturating_sub(warmup_ns)
                        .max(now + START_DELAY_NS)
                        .min(ms),
                    ms,
                )
            }
            None => (
                now + START_DELAY_NS,
                (now + START_DELAY_NS).saturating_add(warmup_ns),
            ),
        };
        let window = Window {
            t0_ns,
            measure_start_ns,
            end_ns: measure_start_ns.saturating_add(duration_to_ns(cfg.duration)),
        };
        release(starters, Some(window));

        // 3. Sample CPU time at the window edges, show progress.
        let total_ns = (window.end_ns - window.t0_ns).max(1);
        let tick = || {
            if let Some(pb) = progress {
                let done: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
                let elapsed = now_ns().saturating_sub(window.t0_ns);
                pb.set_position(elapsed.min(total_ns) * 1000 / total_ns);
                let secs = elapsed as f64 / 1e9;
                if secs > 0.0 {
                    pb.set_message(format!("{:.0} msgs/s", done as f64 / secs));
                }
            }
        };
        // Client threads return before the deadline only when all their connections failed: then
        // the run ends now instead of idling to the end of `--duration`, and the window is cut
        // to the time that really had load, so that rates are not diluted by dead time.
        let all_ended = || joins.iter().all(|j| j.is_finished());
        let mut waited = sleep_until(window.measure_start_ns, tick, all_ended);
        let server_start = server.and_then(|s| s.cpu_ns());
        let client_start = host::self_cpu_ns();
        let threads_start = sample_threads(&tids);
        if waited == Waited::Reached {
            waited = sleep_until(window.end_ns, tick, all_ended);
        }
        let server_end = server.and_then(|s| s.cpu_ns());
        let client_end = host::self_cpu_ns();
        let threads_end = sample_threads(&tids);
        let measure_end_ns = match waited {
            Waited::AllEnded => now_ns().clamp(window.measure_start_ns, window.end_ns),
            _ => window.end_ns,
        };
        tick();

        // 4. Collect.
        let mut outputs = Vec::new();
        let mut thread_err = None;
        for j in joins {
            match j.join() {
                Ok(Ok(Some(out))) => outputs.push(out),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    thread_err.get_or_insert(e);
                }
                Err(_) => {
                    thread_err.get_or_insert_with(|| anyhow!("a client thread panicked"));
                }
            }
        }
        if waited == Waited::Interrupted || interrupt::interrupted() {
            bail!("interrupted");
        }
        if let Some(e) = thread_err {
            return Err(e);
        }

        let open = matches!(cfg.mode, Mode::Open { .. });
        let mut result = TrialResult {
            latency: new_histogram(),
            service: open.then(new_histogram),
            lateness: open.then(new_histogram),
            wake_lateness: open.then(new_histogram),
            rates: None,
            rate_intervals_off: Vec::new(),
            client: ClientCheck::judge(Vec::new(), cfg.busy_poll, None, None, None),
            intervals: Vec::new(),
            measured: 0,
            warmup: 0,
            sent: 0,
            aborted: 0,
            unsent: 0,
            overdue: 0,
            span_completed: 0,
            span_overdue: 0,
            errors: ErrorCounts::default(),
            error_samples: Vec::new(),
            measure_start: anchor.wall_at(window.measure_start_ns),
            ended_early: waited == Waited::AllEnded,
            measured_ns: measure_end_ns - window.measure_start_ns,
            server_cpu_ns: match (server_start, server_end) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            client_cpu_ns: client_end.saturating_sub(client_start),
        };
        let spun: Vec<(usize, u64)> = outputs
            .iter()
            .filter_map(|o| Some((o.thread, o.spun_ns?)))
            .collect();
        let mut errors: Vec<ConnError> = Vec::new();
        for out in outputs {
            add_into(&mut result.latency, &out.latency);
            if let (Some(dst), Some(src)) = (result.service.as_mut(), out.service.as_ref()) {
                add_into(dst, src);
            }
            if let (Some(dst), Some(src)) = (result.lateness.as_mut(), out.lateness.as_ref()) {
                add_into(dst, src);
            }
            if let (Some(dst), Some(src)) =
                (result.wake_lateness.as_mut(), out.wake_lateness.as_ref())
            {
                add_into(dst, src);
            }
            if let Some(src) = &out.rates {
                result
                    .rates
                    .get_or_insert_with(RateCounts::default)
                    .merge(src);
            }
            result.intervals.extend(out.intervals);
            result.measured += out.measured;
            result.span_completed += out.span_completed;
            result.warmup += out.warmup;
            for o in out.outcomes {
                result.sent += o.sent;
                result.aborted += o.aborted;
                result.unsent += o.unsent;
                result.overdue += o.overdue;
                result.span_overdue += o.overdue_in_window;
                if let Some(e) = o.error {
                    result.errors.add(e.kind());
                    errors.push(e);
                }
            }
        }
        errors.sort_by_key(|e| match e {
            ConnError::Io { conn, .. }
            | ConnError::Mismatch { conn, .. }
            | ConnError::Eof { conn, .. }
            | ConnError::Short { conn, .. }
            | ConnError::Unsolicited { conn, .. } => *conn,
        });
        result.error_samples = errors
            .iter()
            .take(ERROR_SAMPLES)
            .map(ToString::to_string)
            .collect();
        if let Some(rates) = &result.rates {
            result.rate_intervals_off = rate_intervals_off(rates, result.measured_ns);
        }
        let limit = match cfg.mode {
            Mode::Open { rate, .. } => Some(
                cfg.lateness_cap
                    .map(duration_to_ns)
                    .map_or(lateness_limit_ns(rate, threads), |cap| {
                        cap.min(lateness_limit_ns(rate, threads))
                    }),
            ),
            Mode::Closed => None,
        };
        let mut loads = thread_loads(&threads_start, &threads_end);
        for load in &mut loads {
            load.spin = spun
                .iter()
                .find(|(t, _)| *t == load.thread)
                .map(|(_, ns)| *ns as f64 / result.measured_ns.max(1) as f64);
        }
        result.client = ClientCheck::judge(
            loads,
            cfg.busy_poll,
            result.lateness.as_ref(),
            result.wake_lateness.as_ref(),
            limit,
        );
        Ok(result)
    })
}

/// Each client thread's times, and when they were read (monotonic ns).
struct ThreadSample {
    at_ns: u64,
    times: Vec<Option<ThreadTimes>>,
}

fn sample_threads(tids: &[i32]) -> ThreadSample {
    ThreadSample {
        times: tids.iter().map(|&t| host::thread_times(t).ok()).collect(),
        at_ns: now_ns(),
    }
}

/// Shortest time between the two samples for which a thread's CPU demand means something: the
/// kernel accounts CPU and run-queue time at scheduling events, so over a window of a few µs
/// (a run whose connections all failed before the measured window) one accounting step is
/// thousands of percent of it.
const MIN_LOAD_WINDOW_NS: u64 = 10_000_000;
/// How far above the whole window a thread's CPU or run-queue time may read and still count
/// (the samples are not taken at exactly the window's edges).
const LOAD_SLACK: f64 = 0.05;

/// CPU demand of every thread readable at both edges, over the time between the samples; none
/// when the samples are too close together to tell ([`MIN_LOAD_WINDOW_NS`]).
fn thread_loads(start: &ThreadSample, end: &ThreadSample) -> Vec<ThreadLoad> {
    let window = end.at_ns.saturating_sub(start.at_ns);
    if window < MIN_LOAD_WINDOW_NS {
        return Vec::new();
    }
    let window = window as f64;
    start
        .times
        .iter()
        .zip(&end.times)
        .enumerate()
        .filter_map(|(thread, (a, b))| {
            let (a, b) = (a.as_ref()?, b.as_ref()?);
            // A fraction above 1 is not a measurement but accounting: the kernel adds a whole
            // wait when the thread next runs, so a wait that began before the window lands in
            // it (seen on a loaded VM: 'waiting for a CPU 935%'). Such a figure is dropped, not
            // taken as evidence.
            let plausible = |f: f64| (f <= 1.0 + LOAD_SLACK).then_some(f);
            let cpu = plausible(b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / window)?;
            let run_queue_wait = match (a.wait_ns, b.wait_ns) {
                (Some(x), Some(y)) => plausible(y.saturating_sub(x) as f64 / window),
                _ => None,
            };
            Some(ThreadLoad {
                thread,
                cpu,
                run_queue_wait,
                busy: cpu + run_queue_wait.unwrap_or(0.0),
                spin: None,
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn client_thread(
    t: usize,
    conns: Vec<u32>,
    cfg: &LoadConfig,
    addr: SocketAddr,
    pattern: Arc<Pattern>,
    ready: mpsc::Sender<anyhow::Result<i32>>,
    start: oneshot::Receiver<Option<Window>>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Option<ThreadOutput>> {
    let setup = || -> anyhow::Result<tokio::runtime::Runtime> {
        if let Some(cpus) = &cfg.client_cpus {
            let cpu = cpus[t % cpus.len()];
            host::pin_current_thread(&[cpu])
                .with_context(|| format!("cannot pin client thread {t} to CPU {cpu}"))?;
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build tokio runtime")
    };
    let rt = match setup() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(None);
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // 1. Connect.
        let mut streams = Vec::with_capacity(conns.len());
        for batch in conns.chunks(CONNECT_BATCH) {
            let tasks: Vec<_> = batch
                .iter()
                .map(|_| {
                    tokio::task::spawn_local(tokio::time::timeout(
                        cfg.connect_timeout,
                        TcpStream::connect(addr),
                    ))
                })
                .collect();
            for task in tasks {
                let res = task.await.expect("connect task does not panic");
                let err = match res {
                    Ok(Ok(stream)) => match stream.set_nodelay(true) {
                        Ok(()) => {
                            streams.push(stream);
                            continue;
                        }
                        Err(e) => anyhow!("cannot set TCP_NODELAY on a connection to {addr}: {e}"),
                    },
                    Ok(Err(e)) => anyhow!("cannot connect to {addr}: {e}"),
                    Err(_) => anyhow!(
                        "cannot connect to {addr}: timed out after {}",
                        humantime::format_duration(cfg.connect_timeout)
                    ),
                };
                let _ = ready.send(Err(err));
                return Ok(None);
            }
        }
        let _ = ready.send(Ok(host::current_tid()));
        drop(ready);

        // 2. Wait for the common start.
        let window = match start.await {
            Ok(Some(w)) => w,
            _ => return Ok(None),
        };

        // 3. Run.
        let open = matches!(cfg.mode, Mode::Open { .. });
        if cfg.busy_poll {
            // yield_now defers to the I/O driver, which is then polled without blocking: the
            // thread keeps checking its sockets instead of sleeping in epoll_wait.
            tokio::task::spawn_local(async {
                loop {
                    tokio::task::yield_now().await;
                }
            });
        }
        let pacer = if open {
            let p = Pacer::new(Some((window.measure_start_ns, window.end_ns)))
                .context("cannot create the open-loop timer (timerfd)")?;
            tokio::task::spawn_local(p.clone().run());
            Some(p)
        } else {
            None
        };
        let shared = Rc::new(ThreadShared {
            pattern,
            recorder: std::cell::RefCell::new(Recorder::new(
                window,
                open,
                cfg.interval.map(duration_to_ns),
                duration_to_ns(cfg.rate_interval),
                cfg.overdue_after.map(duration_to_ns),
            )),
            rbuf: std::cell::RefCell::new(vec![0u8; READ_BUFFER_BYTES].into_boxed_slice()),
            pacer,
            progress,
            window,
        });
        let n_conns = cfg.connections as u32;
        let tasks: Vec<_> = streams
            .into_iter()
            .zip(conns)
            .map(|(stream, id)| {
                let load = Load {
                    overdue_after_ns: cfg.overdue_after.map(duration_to_ns),
                    pipeline: cfg.pipeline,
                    arrivals: match cfg.mode {
                        Mode::Closed => None,
                        Mode::Open { rate, arrival } => Some(Arrivals::new(
                            arrival,
                            window.t0_ns,
                            rate / f64::from(n_conns),
                            id,
                            n_conns,
                            cfg.seed,
                        )),
                    },
                };
                tokio::task::spawn_local(conn::drive(stream, id, shared.clone(), load))
            })
            .collect();
        let all = async {
            let mut outcomes = Vec::with_capacity(tasks.len());
            for task in tasks {
                outcomes.push(task.await.expect("connection task does not panic"));
            }
            outcomes
        };
        let watch_interrupt = async {
            while !interrupt::interrupted() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let outcomes = tokio::select! {
            o = all => o,
            _ = watch_interrupt => return Ok(None),
        };
        let shared =
            Rc::try_unwrap(shared).map_err(|_| anyhow!("connection state still referenced"))?;
        let wake_lateness = shared.pacer.as_ref().and_then(|p| p.probe_lateness());
        let spun_ns = shared.pacer.as_ref().and_then(|p| p.spun_ns());
        let recorded = shared.recorder.into_inner().finish();
        Ok(Some(ThreadOutput {
            thread: t,
            spun_ns,
            latency: recorded.latency,
            service: recorded.service,
            lateness: recorded.lateness,
            wake_lateness,
            rates: recorded.rates,
            span_completed: recorded.span_completed,
            intervals: recorded.intervals,
            measured: recorded.measured,
            warmup: recorded.warmup,
            outcomes,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_thread_load_over_a_window_too_short_to_account() {
        let times = |cpu_ns| ThreadTimes {
            cpu_ns,
            wait_ns: Some(0),
        };
        let start = ThreadSample {
            at_ns: 1_000,
            times: vec![Some(times(0))],
        };
        // 5 µs apart, with a 4 ms accounting step in between: no figure rather than 80,000%.
        let short = ThreadSample {
            at_ns: 6_000,
            times: vec![Some(times(4_000_000))],
        };
        assert!(thread_loads(&start, &short).is_empty());
        let long = ThreadSample {
            at_ns: 1_000 + 100_000_000,
            times: vec![Some(times(50_000_000))],
        };
        let loads = thread_loads(&start, &long);
        assert_eq!(loads.len(), 1);
        assert!((loads[0].busy - 0.5).abs() < 1e-9, "{loads:?}");
    }

    #[test]
    fn impossible_fractions_are_not_evidence() {
        let at = |at_ns, cpu_ns, wait_ns| ThreadSample {
            at_ns,
            times: vec![Some(ThreadTimes {
                cpu_ns,
                wait_ns: Some(wait_ns),
            })],
        };
        let start = at(0, 0, 0);
        // A run-queue wait 9.35 times the window: dropped, the CPU share kept.
        let loads = thread_loads(&start, &at(800_000_000, 400_000_000, 7_480_000_000));
        assert_eq!(loads.len(), 1);
        assert_eq!(loads[0].run_queue_wait, None);
        assert!((loads[0].busy - 0.5).abs() < 1e-9, "{loads:?}");
        // CPU time beyond the window: the thread has no figure.
        assert!(thread_loads(&start, &at(800_000_000, 2_000_000_000, 0)).is_empty());
    }
}
