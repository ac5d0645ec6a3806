//! In-process tests of the multishot io_uring engine: each test runs an `Engine` on its own thread
//! with a 127.0.0.1:0 listener, its own stats sink and stop flags, and asserts bytes on the wire,
//! the counters, and that every provided buffer is back in the ring at exit.
//!
//! The engine module is compiled straight from its source (it depends on nothing else in the
//! crate), so these tests can use knobs the CLI does not expose (a tiny buffer pool, a short
//! tick) and read the engine's exit `Report`.

// The engine refers to its siblings as `super::buf_ring` and `super::conn`.
#[allow(dead_code)]
#[path = "../src/backend/multishot/buf_ring.rs"]
mod buf_ring;
#[allow(dead_code)]
#[path = "../src/backend/multishot/conn.rs"]
mod conn;
#[allow(dead_code)]
#[path = "../src/backend/multishot/engine.rs"]
mod engine;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use engine::{Counts, Engine, MultishotParams, Report, StatsSink};

/// Tests that count this process's fds take this for writing; all others for reading.
static FD_LOCK: RwLock<()> = RwLock::new(());
const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct TestStats {
    counts: Mutex<Counts>,
    active: AtomicUsize,
}

impl StatsSink for TestStats {
    fn add(&self, counts: &Counts) {
        let mut sum = self.counts.lock().unwrap();
        sum.accepted += counts.accepted;
        sum.rejected += counts.rejected;
        sum.closed += counts.closed;
        sum.bytes_echoed += counts.bytes_echoed;
        sum.idle_timeouts += counts.idle_timeouts;
        sum.errors_reset += counts.errors_reset;
        sum.errors_pipe += counts.errors_pipe;
        sum.errors_other += counts.errors_other;
        sum.accept_errors += counts.accept_errors;
    }
    fn conn_opened(&self, limit: Option<usize>) -> bool {
        let previous = self.active.fetch_add(1, Ordering::AcqRel);
        if limit.is_some_and(|max| previous >= max) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
    fn conn_closed(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Server {
    addr: SocketAddr,
    stats: Arc<TestStats>,
    stop: Arc<AtomicBool>,
    force: Arc<AtomicBool>,
    handle: Option<JoinHandle<io::Result<Report>>>,
}

impl Server {
    fn start(params: MultishotParams) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(TestStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let force = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let handle = {
            let (stats, stop, force) = (stats.clone(), stop.clone(), force.clone());
            thread::spawn(move || {
                let engine = match Engine::new(listener, params) {
                    Ok(engine) => {
                        tx.send(Ok(())).unwrap();
                        engine
                    }
                    Err(err) => {
                        let msg = err.to_string();
                        tx.send(Err(msg)).unwrap();
                        return Err(err);
                    }
                };
                engine.run(&*stats, &|| stop.load(Ordering::Relaxed), &|| {
                    force.load(Ordering::Relaxed)
                })
            })
        };
        rx.recv_timeout(IO_TIMEOUT)
            .expect("engine setup timed out")
            .expect("engine setup failed");
        Server {
            addr,
            stats,
            stop,
            force,
            handle: Some(handle),
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    /// Requests a stop and waits (bounded) for the engine; returns its report and final counts.
    fn stop(mut self) -> (Report, Counts) {
        self.stop.store(true, Ordering::Relaxed);
        let report = join_bounded(self.handle.take().unwrap(), Duration::from_secs(30))
            .expect("engine failed");
        let counts = *self.stats.counts.lock().unwrap();
        assert_eq!(
            self.stats.active.load(Ordering::Relaxed),
            0,
            "admitted != closed"
        );
        (report, counts)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.stop.store(true, Ordering::Relaxed);
            self.force.store(true, Ordering::Relaxed);
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
}

fn params() -> MultishotParams {
    let mut p = MultishotParams::new(16 * 1024);
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
        writer.shutdown(Shutdown::Write).unwrap();
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
    s.shutdown(Shutdown::Write).unwrap();
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
        w.shutdown(Shutdown::Write).unwrap();
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

#[test]
fn slow_reader_cannot_starve_others() {
    let _g = FD_LOCK.read().unwrap();
    // A pool so small that one connection could take all of it without the per-connection cap.
    let mut p = params();
    p.buffer_size = 4096;
    p.buffers = 64;
    p.idle_timeout = None;
    let server = Server::start(p);
    let hog = server.connect();
    hog.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut hog_w = hog.try_clone().unwrap();
    let flooding = thread::spawn(move || {
        // Writes until the server stops reading and every buffer on the path is full; never
        // reads. Bounded by the write timeout and a byte cap.
        let chunk = vec![0x5a; 64 * 1024];
        let mut sent = 0usize;
        while sent < 512 << 20 {
            match hog_w.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let flooded = flooding.join().unwrap();
    assert!(flooded > 1 << 20, "hog wrote only {flooded} bytes");
    // The hog's data now fills the kernel buffers and its queue; another client must still be
    // served, and its data must come back intact.
    let data = Arc::new(pattern(9, 4 << 20));
    let got = echo_concurrently(server.connect(), Arc::clone(&data), 8192, 3);
    assert!(got == *data);
    drop(hog);
    let (report, _) = server.stop();
    assert_no_leaks(&report);
    // The hog's receives are budgeted to 4 full buffers (Linux >= 6.17; the engine falls back to
    // cancel-only backpressure on older kernels, where it may hold far more).
    assert!(
        report.peak_conn_buffers <= 4,
        "one connection held {} of 64 buffers",
        report.peak_conn_buffers
    );
    eprintln!(
        "peak buffers held by one connection: {}",
        report.peak_conn_buffers
    );
}

#[test]
fn idle_connection_gets_eof() {
    let _g = FD_LOCK.read().unwrap();
    let mut p = params();
    p.idle_timeout = Some(Duration::from_millis(300));
    let server = Server::start(p);
    let mut s = server.connect();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("idle close must be a FIN, not a reset");
    let waited = started.elapsed();
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed too late: {waited:?}"
    );
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!((counts.idle_timeouts, counts.closed), (1, 1));
}

#[test]
fn max_connections_rejects_the_excess() {
    let _g = FD_LOCK.read().unwrap();
    let mut p = params();
    p.max_connections = Some(2);
    let server = Server::start(p);
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
    server.stop.store(true, Ordering::Relaxed);
    // Still served while draining.
    thread::sleep(Duration::from_millis(100));
    s.write_all(b"b").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"b");
    // New connections are refused once accepting stopped (listener closed).
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "listener must be closed while draining"
    );
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // FIN (or reset) at the drain deadline
    assert!(started.elapsed() < Duration::from_secs(5));
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!(counts.closed, 1);
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
    while server.stats.active.load(Ordering::Relaxed) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections still open after the storm",
            server.stats.active.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(10));
    }
    let (report, counts) = server.stop();
    assert_no_leaks(&report);
    assert_eq!((counts.accepted, counts.closed), (200, 200));
    assert!(counts.errors_reset + counts.errors_pipe > 0, "{counts:?}");
}

#[test]
fn batch_wait_keeps_echo_correct_for_ping_pong_and_streams() {
    let _g = FD_LOCK.read().unwrap();
    let mut p = params();
    p.batch_wait = Some(engine::BatchWait {
        min_completions: 8,
        timeout: Duration::from_micros(200),
    });
    let server = Server::start(p);
    // One connection in lock step: never 8 completions pending, so every wait ends by timeout.
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
