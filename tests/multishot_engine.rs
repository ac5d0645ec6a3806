//! In-process tests of the uring-multishot engine through the library: each test runs an
//! [`Engine`] on its own thread with a 127.0.0.1:0 listener, its own stats, admission and
//! shutdown, and asserts bytes on the wire, the counters, and that every provided buffer is back
//! in the ring at exit. These tests use knobs the CLI does not expose (a tiny buffer pool, a
//! short tick) and read the engine's exit `Report`.

use std::io::{self, Read, Write};
use std::net::{Shutdown as SockShutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use uring_echo::backend::uring_multishot::{Engine, Params, RecvBudget, Report};
use uring_echo::config::{BatchPolicy, BatchWait};
use uring_echo::policy::{Admission, IdleSweep};
use uring_echo::probe::{self, Feature};
use uring_echo::stats::{Counts, Stats};
use uring_echo::Shutdown;

/// Tests that count this process's fds take this for writing; all others for reading.
static FD_LOCK: RwLock<()> = RwLock::new(());
const IO_TIMEOUT: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    stats: Arc<Stats>,
    admission: Admission,
    shutdown: Shutdown,
    handle: Option<JoinHandle<io::Result<Report>>>,
}

impl Server {
    fn start(params: Params) -> Server {
        Server::start_with(params, Admission::new(None))
    }

    fn start_with(params: Params, admission: Admission) -> Server {
        Server::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), params, admission)
    }

    /// Starts the engine on a listener the test bound (and may have connected to already).
    fn start_on(listener: TcpListener, params: Params, admission: Admission) -> Server {
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::new(1));
        let shutdown = Shutdown::new();
        let (tx, rx) = mpsc::channel();
        let handle = {
            let (stats, admission, shutdown) =
                (Arc::clone(&stats), admission.clone(), shutdown.clone());
            thread::spawn(move || {
                let engine = match Engine::new(listener, params) {
                    Ok(engine) => {
                        tx.send(Ok(())).unwrap();
                        engine
                    }
                    Err(err) => {
                        tx.send(Err(err.to_string())).unwrap();
                        return Err(err);
                    }
                };
                engine.run(stats.worker(0), &admission, &shutdown)
            })
        };
        rx.recv_timeout(IO_TIMEOUT)
            .expect("engine setup timed out")
            .expect("engine setup failed");
        Server {
            addr,
            stats,
            admission,
            shutdown,
            handle: Some(handle),
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    /// Waits (bounded) for the engine to exit after `shutdown` was requested; returns its report
    /// and final counts.
    fn join(mut self) -> (Report, Counts) {
        let report = join_bounded(self.handle.take().unwrap(), Duration::from_secs(30))
            .expect("engine failed");
        assert_eq!(self.admission.active(), 0, "admitted != released");
        (report, self.stats.snapshot().counts)
    }

    /// Requests a stop and waits (bounded) for the engine.
    fn stop(self) -> (Report, Counts) {
        self.shutdown.stop();
        self.join()
    }

    /// Connects until the engine refuses (its listener is closed while it stops); bounded.
    fn wait_until_refused(&self) {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match TcpStream::connect(self.addr) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
                Err(e) => panic!("unexpected connect error: {e}"),
                Ok(_) => {} // accepted and closed as rejected during the stop
            }
            assert!(
                Instant::now() < deadline,
                "engine kept accepting after stop"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.shutdown.force();
            let _ = join_bounded(handle, Duration::from_secs(10));
        }
    }
}

fn join_bounded<T: Send + 'static>(handle: JoinHandle<T>, limit: Duration) -> T {
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "engine thread did not exit in {limit:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    handle.join().expect("engine thread panicked")
}

fn assert_no_leaks(report: &Report) {
    assert_eq!(
        report.buffers_in_ring, report.buffers,
        "provided buffers leaked: {report:?}"
    );
    assert_eq!(report.connections_abandoned, 0, "{report:?}");
    assert_eq!(report.pool_bytes_leaked, 0, "{report:?}");
}

fn params() -> Params {
    let mut p = Params::new(16 * 1024);
    p.drain_timeout = Duration::from_secs(2);
    p.tick = Duration::from_millis(20);
    p
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` in chunks of pseudo-random size (1..=max_chunk) on one thread while reading the
/// echo on this one; returns what came back.
fn echo_concurrently(
    stream: TcpStream,
    data: Arc<Vec<u8>>,
    max_chunk: usize,
    seed: u64,
) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let to_send = Arc::clone(&data);
    let w = thread::spawn(move || {
        let sizes = pattern(seed, to_send.len() / 16 + 16);
        let mut off = 0;
        let mut i = 0;
        while off < to_send.len() {
            let n =
                (1 + (sizes[i % sizes.len()] as usize * max_chunk) / 256).min(to_send.len() - off);
            writer.write_all(&to_send[off..off + n]).unwrap();
            off += n;
            i += 1;
        }
        writer.shutdown(SockShutdown::Write).unwrap();
    });
    let mut reader = stream;
    let mut got = Vec::with_capacity(data.len());
    reader.read_to_end(&mut got).unwrap();
    w.join().unwrap();
    got
}

#[test]
fn hello_echo_and_clean_close() {
    let _g = FD_LOCK.read().unwrap();
    let server = Server::start(params());
    let mut s = server.connect();
    s.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    s.shutdown(SockShutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the echo, then EOF");
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!(
        (counts.accepted, counts.closed, counts.bytes_echoed),
        (1, 1, 5)
    );
    assert_eq!(
        counts.errors_reset + counts.errors_pipe + counts.errors_other,
        0
    );
}

#[test]
fn sixty_four_mib_concurrent_echo() {
    let _g = FD_LOCK.read().unwrap();
    let server = Server::start(params());
    let data = Arc::new(pattern(64, 64 << 20));
    let got = echo_concurrently(server.connect(), Arc::clone(&data), 256 * 1024, 7);
    assert_eq!(got.len(), data.len());
    assert!(got == *data, "echoed bytes differ");
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!(counts.bytes_echoed, 64 << 20);
}

#[test]
fn hundred_connections_random_chunks() {
    let _g = FD_LOCK.read().unwrap();
    let server = Server::start(params());
    let workers: Vec<_> = (0..100u64)
        .map(|i| {
            let stream = server.connect();
            thread::spawn(move || {
                let data = Arc::new(pattern(1000 + i, 256 * 1024));
                let got = echo_concurrently(stream, Arc::clone(&data), 40_000, i);
                assert!(got == *data, "connection {i}: echoed bytes differ");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!((counts.accepted, counts.closed), (100, 100));
    assert_eq!(counts.bytes_echoed, 100 * 256 * 1024);
}

#[test]
fn half_close_gets_everything_then_eof() {
    let _g = FD_LOCK.read().unwrap();
    let server = Server::start(params());
    let mut s = server.connect();
    let data = pattern(5, 300_000);
    // Written before reading anything: the server must keep echoing after our FIN.
    let mut w = s.try_clone().unwrap();
    let to_send = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&to_send).unwrap();
        w.shutdown(SockShutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == data);
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!(counts.closed, 1);
}

fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, pointer and length of a linger struct that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn rst_storm_does_not_disturb_other_connections() {
    let _g = FD_LOCK.read().unwrap();
    let server = Server::start(params());
    let mut survivor = server.connect();
    survivor.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    survivor.read_exact(&mut buf).unwrap();
    for round in 0..50u64 {
        let mut s = server.connect();
        let data = pattern(round, 100_000);
        // Do not read: the reset arrives while the server still has echo data to send.
        s.write_all(&data).unwrap();
        set_linger_zero(&s);
        drop(s); // RST
    }
    survivor.write_all(b"after").unwrap();
    let mut buf = [0u8; 5];
    survivor.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after");
    drop(survivor);
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!((counts.accepted, counts.closed), (51, 51));
    assert_eq!(
        counts.errors_reset + counts.errors_pipe,
        50,
        "each reset connection counts one reset/pipe error: {counts:?}"
    );
    assert_eq!(counts.errors_other, 0);
}

/// A pool so small that one connection could take all of it without the per-connection cap.
fn small_pool() -> Params {
    let mut p = params();
    p.buffer_size = 4096;
    p.buffers = 64;
    p
}

/// A client that writes as fast as the server takes its data and never reads, on its own
/// thread, until `stop` (bounded in time and bytes); `blocked` counts writes that timed out
/// because the server stopped reading. Returns the socket and the bytes written.
fn never_reading_writer(
    server: &Server,
    stop: Arc<AtomicBool>,
    blocked: Arc<AtomicU64>,
) -> JoinHandle<(TcpStream, u64)> {
    let mut w = server.connect();
    w.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    thread::spawn(move || {
        let chunk = vec![0x5a; 64 * 1024];
        let mut written = 0u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && written < 1 << 30 && Instant::now() < deadline {
            match w.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    blocked.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("writer: {e}"),
            }
        }
        (w, written)
    })
}

/// `n` messages of 1 B to 4 KiB in lock step, each checked; returns the sorted round-trip times.
fn ping_pong(client: &mut TcpStream, n: u64, what: &str) -> Vec<Duration> {
    let mut rtts = Vec::with_capacity(n as usize);
    for i in 0..n {
        let msg = pattern(i, 1 + (i as usize * 37) % 4096);
        let mut back = vec![0u8; msg.len()];
        let sent = Instant::now();
        client.write_all(&msg).unwrap();
        client
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("message {i} {what}: {e}"));
        rtts.push(sent.elapsed());
        assert!(back == msg, "message {i} {what}: echo differs");
    }
    rtts.sort_unstable();
    rtts
}

/// p50, p99 and max of sorted round-trip times, in microseconds.
fn percentiles_us(sorted: &[Duration]) -> (f64, f64, f64) {
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99), at(1.0))
}

/// The fairness case of a kernel without the receive byte budget: a client that writes and
/// never reads beside a well-behaved ping-pong client on one worker with a 64-buffer pool. The
/// writer's connection may hold at most the cap (4 buffers), so the pool never runs dry (no
/// ENOBUFS, no parked receive) and the ping-pong client keeps echoing with bounded latency.
/// (A multishot receive without the budget let the writer take 64 of 64 buffers and the other
/// client time out.) Prints the figures for the README and the closing notes.
fn writer_beside_ping_pong(mode: RecvBudget) {
    let _g = FD_LOCK.read().unwrap();
    let mut p = small_pool();
    p.recv_budget = mode;
    let cap = p.max_queued_buffers;
    let server = Server::start(p);
    const MESSAGES: u64 = 1000;
    let mut client = server.connect();
    client.set_nodelay(true).unwrap();
    let alone = percentiles_us(&ping_pong(&mut client, MESSAGES, "alone"));
    let stop = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicU64::new(0));
    let writer = never_reading_writer(&server, Arc::clone(&stop), Arc::clone(&blocked));
    // The server stops reading the writer once its queue is at the cap and its echo is stuck.
    let deadline = Instant::now() + IO_TIMEOUT;
    while blocked.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the writer was never held back");
        thread::sleep(Duration::from_millis(10));
    }
    let (p50, p99, max) = percentiles_us(&ping_pong(&mut client, MESSAGES, "beside the writer"));
    stop.store(true, Ordering::Relaxed);
    let (w, written) = writer.join().unwrap();
    drop(w);
    drop(client);
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    eprintln!(
        "writer beside ping-pong ({mode:?}, kernel {}, receives: {}): {MESSAGES} messages echoed \
         beside the writer, p50 {p50:.0} us, p99 {p99:.0} us, max {max:.0} us (alone before it: \
         p50 {:.0} us, p99 {:.0} us, max {:.0} us); the writer wrote {} KiB, was held \
         back {} times; most buffers one connection held: {} of {} (cap {cap}); parks {}; \
         receive SQEs {}, waits {}",
        probe::kernel_release(),
        if report.recv_budget {
            "budgeted multishot"
        } else {
            "single-shot"
        },
        alone.0,
        alone.1,
        alone.2,
        written / 1024,
        blocked.load(Ordering::Relaxed),
        report.peak_conn_buffers,
        report.buffers,
        report.parks,
        report.recvs,
        report.waits,
    );
    assert!(
        report.peak_conn_buffers <= cap,
        "one connection held {} of {} buffers (cap {cap})",
        report.peak_conn_buffers,
        report.buffers
    );
    assert_eq!(report.parks, 0, "the pool ran dry: {report:?}");
    assert!(
        max < 1e6,
        "the well-behaved client waited {:.0} ms beside the writer",
        max / 1e3
    );
    assert_eq!(counts.accepted, 2);
}

#[test]
fn never_reading_writer_cannot_starve_others() {
    let has = probe::features().has(Feature::RecvBudget);
    if !has {
        eprintln!(
            "this kernel has no multishot receive byte budget (IORING_RECV_MSHOT_LIM): the \
             default here is the single-shot fallback, checked below"
        );
    }
    writer_beside_ping_pong(RecvBudget::Probe);
}

#[test]
fn never_reading_writer_cannot_starve_others_with_single_shot_receives() {
    writer_beside_ping_pong(RecvBudget::Off);
}

/// Receive SQEs and waits per message of a ping-pong, with each kind of receive: counts (not
/// timings) for the README's cost of the fallback.
#[test]
fn receive_sqes_per_message_by_mode() {
    let _g = FD_LOCK.read().unwrap();
    const MESSAGES: u64 = 2000;
    for mode in [RecvBudget::Probe, RecvBudget::Off] {
        let mut p = params();
        p.recv_budget = mode;
        let server = Server::start(p);
        let mut s = server.connect();
        s.set_nodelay(true).unwrap();
        let msg = pattern(3, 100);
        let mut back = [0u8; 100];
        for _ in 0..MESSAGES {
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
        }
        drop(s);
        let (report, counts) = server.stop();
        assert_no_leaks(&report);
        assert_eq!(counts.bytes_echoed, MESSAGES * 100);
        let per = |n: u64| n as f64 / MESSAGES as f64;
        eprintln!(
            "{mode:?} (kernel {}, receives: {}): per message {:.3} receive SQEs, {:.3} send \
             SQEs, {:.3} waits (io_uring_enter), {:.3} completions",
            probe::kernel_release(),
            if report.recv_budget {
                "budgeted multishot"
            } else {
                "single-shot"
            },
            per(report.recvs),
            per(report.sends),
            per(report.waits),
            per(report.completions),
        );
        if report.recv_budget {
            assert!(report.recvs * 10 < MESSAGES, "{report:?}");
        } else {
            assert!(
                report.recvs >= MESSAGES,
                "one receive per message: {report:?}"
            );
        }
    }
}

/// A burst of connections, each echoing 256 KiB concurrently; returns the report.
fn burst_of_echoes(p: Params) -> (Report, Counts) {
    // All connected before the engine starts: its first accepts (ACCEPT_DEPTH of them) complete
    // at once, and their receives are armed and submitted together, before the CQE of any of
    // them comes back.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let streams: Vec<TcpStream> = (0..20)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
            s
        })
        .collect();
    let server = Server::start_on(listener, p, Admission::new(None));
    let clients: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            thread::spawn(move || {
                let data = Arc::new(pattern(900 + i as u64, 256 * 1024));
                let got = echo_concurrently(stream, Arc::clone(&data), 30_000, i as u64);
                assert!(got == *data, "connection {i}: echoed bytes differ");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!((counts.accepted, counts.closed), (20, 20));
    assert_eq!(counts.bytes_echoed, 20 * 256 * 1024);
    assert_eq!(
        counts.errors_reset + counts.errors_pipe + counts.errors_other,
        0,
        "{counts:?}"
    );
    (report, counts)
}

/// Budgeted receives that every kernel refuses (fault injection): each falls back to single-shot
/// receives on its own connection, including those armed before the first refusal came back;
/// no connection fails, and later ones start without the budget.
#[test]
fn refused_budget_falls_back_per_operation() {
    let _g = FD_LOCK.read().unwrap();
    let mut p = params();
    p.recv_budget = RecvBudget::ForceRefused;
    let (report, _) = burst_of_echoes(p);
    eprintln!(
        "budgeted receives refused and re-armed single-shot: {} of 20 connections",
        report.budget_refused
    );
    // More than one: receives armed before the first refusal came back fell back on their own.
    assert!(report.budget_refused >= 2, "{report:?}");
    assert!(!report.recv_budget, "{report:?}");
}

/// The budget armed where the probe found none (a wrong probe): on such a kernel (6.1) every
/// budgeted receive is refused and falls back; where the kernel has the budget, nothing is
/// refused.
#[test]
fn budget_forced_where_the_probe_found_none() {
    let _g = FD_LOCK.read().unwrap();
    let mut p = params();
    p.recv_budget = RecvBudget::Force;
    let (report, _) = burst_of_echoes(p);
    if probe::features().has(Feature::RecvBudget) {
        eprintln!(
            "SKIPPED the refusal: this kernel has the receive byte budget (the fault-injection \
             test exercises the refusal here); checking that nothing is refused"
        );
        assert_eq!(report.budget_refused, 0, "{report:?}");
        assert!(report.recv_budget, "{report:?}");
    } else {
        eprintln!(
            "budgeted receives refused by this kernel: {} of 20 connections",
            report.budget_refused
        );
        assert!(report.budget_refused >= 2, "{report:?}");
        assert!(!report.recv_budget, "{report:?}");
    }
}

#[test]
fn probe_answers_consistently_and_is_cached() {
    let (fresh, failures) = probe::probe();
    assert!(
        failures.is_empty(),
        "probes that could not run: {failures:?}"
    );
    assert_eq!(probe::features(), fresh);
    assert!(fresh.io_uring());
    eprintln!("kernel {}: {fresh:?}", probe::kernel_release());
    // What the kernel's history implies, so a probe that answers wrongly shows up.
    let implies = [
        (Feature::DeferTaskrun, Feature::SingleIssuer),
        (Feature::RecvBudget, Feature::RecvMultishot),
        (Feature::RecvMultishot, Feature::BufRing),
        (Feature::MinWait, Feature::ExtArg),
        (Feature::BufRingInc, Feature::BufRing),
    ];
    for (a, b) in implies {
        assert!(!fresh.has(a) || fresh.has(b), "{a} without {b}: {fresh:?}");
    }
    // The engine needs these, and every kernel the project supports (6.1 and newer) has them.
    for f in [
        Feature::SingleIssuer,
        Feature::DeferTaskrun,
        Feature::SubmitAll,
        Feature::Nodrop,
        Feature::BufRing,
        Feature::RecvMultishot,
    ] {
        assert!(fresh.has(f), "{f}: {fresh:?}");
    }
    assert!(fresh.has_opcode(io_uring::opcode::Recv::CODE));
    // An engine decides what the usage says.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let engine = Engine::new(listener, params()).unwrap();
    assert_eq!(engine.usage(), params().usage(&fresh));
}

#[test]
fn idle_connection_gets_eof_within_the_window() {
    let _g = FD_LOCK.read().unwrap();
    let idle = Duration::from_millis(300);
    let mut p = params();
    p.idle_timeout = Some(idle);
    // The sweep is a multishot timeout (Linux 6.4) or, without one, a re-armed single-shot one.
    eprintln!(
        "idle sweep: {}",
        if p.usage(&probe::features()).uses(Feature::MultishotTimeout) {
            "multishot timeout"
        } else {
            "single-shot timeouts re-armed (no multishot timeouts on this kernel)"
        }
    );
    let server = Server::start(p);
    let mut s = server.connect();
    // Before the write: no progress of the server on this connection can be earlier.
    let before = Instant::now();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    let echoed = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("idle close must be a FIN, not a reset");
    let fin = Instant::now();
    assert!(rest.is_empty());
    let (lo, hi) = IdleSweep::new(idle).window();
    assert!(fin - before >= lo, "closed too early: {:?}", fin - before);
    // Generous slack for a loaded machine; the window itself is checked in tests/limits.rs.
    assert!(
        fin - echoed < hi + Duration::from_secs(2),
        "closed too late: {:?}",
        fin - echoed
    );
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!((counts.idle_timeouts, counts.closed), (1, 1));
}

#[test]
fn max_connections_rejects_the_excess() {
    let _g = FD_LOCK.read().unwrap();
    let server = Server::start_with(params(), Admission::new(Some(2)));
    let mut kept: Vec<TcpStream> = (0..2).map(|_| server.connect()).collect();
    for s in &mut kept {
        s.write_all(b"ok").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
    }
    let mut extra = server.connect();
    let _ = extra.write_all(b"no");
    let mut b = [0u8; 2];
    match extra.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("third connection should be closed, got {other:?}"),
    }
    drop(kept);
    drop(extra);
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!((counts.accepted, counts.rejected, counts.closed), (2, 1, 2));
}

#[test]
fn drain_lets_connections_finish_then_closes_them() {
    let _g = FD_LOCK.read().unwrap();
    let mut p = params();
    p.drain_timeout = Duration::from_millis(500);
    let server = Server::start(p);
    let mut s = server.connect();
    s.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    server.shutdown.stop();
    // New connections are refused once accepting stopped (listener closed)...
    server.wait_until_refused();
    // ...while open ones are still served.
    s.write_all(b"b").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"b");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // FIN (or reset) at the drain deadline
    assert!(started.elapsed() < Duration::from_secs(5));
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    // Probe connections made before the engine noticed the stop were served and closed too.
    assert!(counts.accepted >= 1, "{counts:?}");
    assert_eq!(counts.closed, counts.accepted, "{counts:?}");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn no_fds_left_after_exit() {
    let _g = FD_LOCK.write().unwrap();
    let before = open_fds();
    let server = Server::start(params());
    let mut clients: Vec<TcpStream> = (0..20).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
    }
    // Half of them still open at stop time: the drain deadline closes them.
    clients.truncate(10);
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!((counts.accepted, counts.closed), (20, 20));
    drop(clients);
    assert_eq!(
        open_fds(),
        before,
        "ring, listener or connection fds leaked"
    );
}

/// Resets in every state: while the server is blocked sending (client never read), while it
/// waits to read, and after the client read a little. Every connection must be released without
/// waiting for the drain (a dead connection whose send fails later still returns its buffer).
#[test]
fn rst_storm_in_every_state_releases_connections_promptly() {
    let _g = FD_LOCK.read().unwrap();
    let server = Server::start(params());
    let addr = server.addr;
    let storm: Vec<_> = (0..4u64)
        .map(|t| {
            thread::spawn(move || {
                let chunk = pattern(t, 200_000);
                for i in 0..50 {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                    let len = if i % 2 == 0 { chunk.len() } else { 100 };
                    let _ = s.write_all(&chunk[..len]);
                    if i % 3 == 0 {
                        let mut one = [0u8; 1];
                        let _ = s.read(&mut one);
                    }
                    set_linger_zero(&s);
                    drop(s);
                }
            })
        })
        .collect();
    for t in storm {
        t.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.admission.active() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections still open after the storm",
            server.admission.active()
        );
        thread::sleep(Duration::from_millis(10));
    }
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!((counts.accepted, counts.closed), (200, 200));
    assert!(counts.errors_reset + counts.errors_pipe > 0, "{counts:?}");
}

/// Every `--batch-wait` policy echoes a lock-step ping-pong and concurrent streams correctly.
#[test]
fn every_batch_policy_keeps_echo_correct_for_ping_pong_and_streams() {
    let _g = FD_LOCK.read().unwrap();
    let fixed = BatchPolicy::Fixed(BatchWait {
        min_completions: 8,
        timeout: Duration::from_micros(200),
    });
    for policy in [
        BatchPolicy::Off,
        BatchPolicy::Inline,
        BatchPolicy::Adaptive,
        fixed,
    ] {
        let mut p = params();
        p.batch_wait = policy;
        // The wait's minimum (Linux 6.12) where the kernel has it, else a plain timeout (fixed)
        // or no batch at all (adaptive): all must echo correctly.
        let min_wait = p.usage(&probe::features()).uses(Feature::MinWait);
        eprintln!(
            "--batch-wait {policy}: {}",
            if min_wait {
                "min_wait"
            } else {
                "no min_wait on this kernel"
            }
        );
        let server = Server::start(p);
        // One connection in lock step: never 8 completions pending, so every fixed-batch wait
        // ends by its timeout.
        let mut s = server.connect();
        for i in 0..200u64 {
            let msg = pattern(i, 100);
            s.write_all(&msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
        drop(s);
        let streams: Vec<_> = (0..8u64)
            .map(|i| {
                let stream = server.connect();
                thread::spawn(move || {
                    let data = Arc::new(pattern(500 + i, 512 * 1024));
                    assert!(echo_concurrently(stream, Arc::clone(&data), 20_000, i) == *data);
                })
            })
            .collect();
        for t in streams {
            t.join().unwrap();
        }
        let (report, counts) = server.stop();
        assert_no_leaks(&report);
        assert_eq!(counts.bytes_echoed, 200 * 100 + 8 * 512 * 1024);
    }
}

/// A lone ping-pong connection: the inline (default) and adaptive waits count the inline send
/// completion in, so each message costs one wait (`io_uring_enter`) instead of two, and they
/// never batch (no timer, no added latency). Counted, not timed.
#[test]
fn inline_and_adaptive_waits_make_one_enter_per_ping_pong_message() {
    let _g = FD_LOCK.read().unwrap();
    let mut per_message = Vec::new();
    for policy in [BatchPolicy::Off, BatchPolicy::Inline, BatchPolicy::Adaptive] {
        let mut p = params();
        p.batch_wait = policy;
        p.tick = Duration::from_secs(3); // no tick wake-ups among the counted waits
        let server = Server::start(p);
        let mut s = server.connect();
        let messages = 2000u64;
        for i in 0..messages {
            let msg = pattern(i, 64);
            s.write_all(&msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
        drop(s);
        let (report, _) = server.stop();
        assert_no_leaks(&report);
        assert_eq!(
            report.batched_waits, 0,
            "{policy}: a lone connection never batches"
        );
        let waits = report.waits as f64 / messages as f64;
        eprintln!("--batch-wait {policy}: {waits:.3} waits per message ({report:?})");
        per_message.push(waits);
    }
    assert!(
        per_message[0] > 1.7,
        "off: a wait for the send, one for the data: {per_message:?}"
    );
    assert!(
        per_message[1] < 1.2 && per_message[2] < 1.2,
        "inline, adaptive: one wait per message: {per_message:?}"
    );
}

/// The inline and adaptive waits must never sleep past work whose only trigger is a completion
/// they counted in: with a 3 s tick, such a sleep would outlast the client's 2 s read timeout.
/// Covers a close after the last send (half-close), data queued behind a send (streams larger
/// than the socket buffers), a pool too small for the load (parked connections), and many
/// connections.
#[test]
fn inline_and_adaptive_waits_never_sleep_past_known_work() {
    let _g = FD_LOCK.read().unwrap();
    for policy in [BatchPolicy::Inline, BatchPolicy::Adaptive] {
        never_sleeps_past_known_work(policy);
    }
}

fn never_sleeps_past_known_work(policy: BatchPolicy) {
    let mut p = params();
    p.batch_wait = policy;
    p.tick = Duration::from_secs(3);
    p.buffer_size = 4096;
    p.buffers = 16;
    let server = Server::start(p);
    let short = Duration::from_secs(2);
    for i in 0..20u64 {
        let mut s = server.connect();
        s.set_read_timeout(Some(short)).unwrap();
        let msg = pattern(i, 300);
        s.write_all(&msg).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back)
            .expect("EOF after the echo, without waiting for a tick");
        assert_eq!(back, msg);
    }
    let streams: Vec<_> = (0..6u64)
        .map(|i| {
            let stream = server.connect();
            stream.set_read_timeout(Some(short)).unwrap();
            thread::spawn(move || {
                let data = Arc::new(pattern(900 + i, 2 << 20));
                assert!(echo_concurrently(stream, Arc::clone(&data), 64 * 1024, i) == *data);
            })
        })
        .collect();
    for t in streams {
        t.join().unwrap();
    }
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!(counts.bytes_echoed, 20 * 300 + 6 * (2 << 20));
    eprintln!("{report:?}");
}

#[test]
fn empty_pool_parks_connections_and_resumes_them() {
    let _g = FD_LOCK.read().unwrap();
    // 4 buffers for 16 busy connections: receives keep finding the pool empty (ENOBUFS); each
    // parked connection must be re-armed when buffers come back, or its client hangs.
    let mut p = params();
    p.buffer_size = 2048;
    p.buffers = 4;
    let server = Server::start(p);
    let clients: Vec<_> = (0..16u64)
        .map(|i| {
            let stream = server.connect();
            thread::spawn(move || {
                let data = Arc::new(pattern(700 + i, 256 * 1024));
                assert!(echo_concurrently(stream, Arc::clone(&data), 30_000, i) == *data);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert!(report.parks > 0, "the pool never ran dry: {report:?}");
    assert_eq!(counts.bytes_echoed, 16 * 256 * 1024);
    eprintln!("{report:?}");
}

/// The drain grace runs out while operations are still in flight (grace 0: the engine gives up
/// right after forcing the sockets shut): their buffers must neither go back to the ring nor be
/// unmapped, and the report must say so. The connection is still counted as closed, its place
/// released, its fd closed, and the client sees our FIN.
#[test]
fn abandoned_operations_keep_the_pool_mapped() {
    let _g = FD_LOCK.write().unwrap();
    let before = open_fds();
    let mut p = params();
    p.drain_grace = Duration::ZERO;
    let server = Server::start(p);
    let mut s = server.connect();
    s.write_all(b"abandon").unwrap();
    let mut b = [0u8; 7];
    s.read_exact(&mut b).unwrap();
    server.shutdown.force();
    let (report, counts) = server.join();
    assert_eq!(report.connections_abandoned, 1, "{report:?}");
    assert!(
        report.pool_bytes_leaked >= report.buffers * 16 * 1024,
        "{report:?}"
    );
    assert_eq!(
        report.buffers_in_ring + report.buffers_abandoned,
        report.buffers,
        "{report:?}"
    );
    assert_eq!((counts.accepted, counts.closed), (1, 1));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("FIN from the forced shutdown");
    drop(s);
    assert_eq!(
        open_fds(),
        before,
        "connection, listener or ring fd left open"
    );
}
