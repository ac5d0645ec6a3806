//! Helpers for the reliability suite (`tests/stress_*.rs`), on top of the `TestServer` harness.
//!
//! Why a separate module: the stress tests need things the functional tests do not—many
//! thousands of sockets driven from one thread (tokio), the `echo-bench` binary as a separate
//! client process, network namespaces, latency percentiles and a place to write the figures the
//! README quotes. Everything here is bounded in time and stops what it started by PID or by name
//! of an object it created itself (namespaces).
//!
//! Knobs (environment variables, all optional):
//! - `STRESS_REPORT=FILE`: append every reported figure to FILE (bench/stress.sh sets it);
//! - `STRESS_SOAK_SECS`: length of each soak phase (default 60);
//! - `STRESS_FUZZ_CASES`: cases per fuzz target in the long run (default 20000).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{fill_pattern, pattern, TestServer, IO_TIMEOUT};

/// Every runtime × thread count the long runs cover.
pub const CONFIGS: [(&str, usize); 6] = [
    ("uring", 1),
    ("epoll", 1),
    ("uring-multishot", 1),
    ("uring", 2),
    ("epoll", 2),
    ("uring-multishot", 2),
];

/// Generates one `#[test]` per runtime for each `fn name(runtime: &str, threads: usize)`, with
/// the given thread count, in the fast suite.
#[macro_export]
macro_rules! fast_per_runtime {
    ($threads:expr; $($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                super::$name("uring", $threads)
            }
            #[test]
            fn epoll() {
                super::$name("epoll", $threads)
            }
            #[test]
            fn uring_multishot() {
                super::$name("uring-multishot", $threads)
            }
        }
    )*};
}

/// Generates one ignored (long-run) `#[test]` per runtime × thread count for each
/// `fn name(runtime: &str, threads: usize)`.
#[macro_export]
macro_rules! long_per_config {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            const WHY: &str = "long run: bench/stress.sh";
            #[test]
            #[ignore = "long run: bench/stress.sh"]
            fn uring_t1() {
                let _ = WHY;
                super::$name("uring", 1)
            }
            #[test]
            #[ignore = "long run: bench/stress.sh"]
            fn epoll_t1() {
                super::$name("epoll", 1)
            }
            #[test]
            #[ignore = "long run: bench/stress.sh"]
            fn uring_multishot_t1() {
                super::$name("uring-multishot", 1)
            }
            #[test]
            #[ignore = "long run: bench/stress.sh"]
            fn uring_t2() {
                super::$name("uring", 2)
            }
            #[test]
            #[ignore = "long run: bench/stress.sh"]
            fn epoll_t2() {
                super::$name("epoll", 2)
            }
            #[test]
            #[ignore = "long run: bench/stress.sh"]
            fn uring_multishot_t2() {
                super::$name("uring-multishot", 2)
            }
        }
    )*};
}

/// Prints a figure and appends it to `$STRESS_REPORT` if set.
pub fn report(line: &str) {
    eprintln!("[stress] {line}");
    if let Ok(path) = std::env::var("STRESS_REPORT") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// An integer knob from the environment.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (children started later
/// inherit it) and returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// Raises RLIMIT_NOFILE; when even the hard limit is below `needed`, prints why the test is
/// skipped and returns false.
pub fn nofile_allows(needed: u64, test: &str) -> bool {
    let limit = raise_nofile();
    if limit < needed {
        eprintln!(
            "SKIPPED {test}: needs {needed} file descriptors, but the RLIMIT_NOFILE hard limit is \
             {limit} (raise it with `ulimit -Hn` as root)"
        );
        return false;
    }
    true
}

/// The `echo-bench` binary of the same build (same target directory as `uring-echo`).
pub fn echo_bench() -> PathBuf {
    let path = Path::new(super::binary()).with_file_name("echo-bench");
    assert!(
        path.is_file(),
        "{} is missing: build it with the same profile (`cargo build --workspace` / \
         `cargo test --workspace` build it; bench/stress.sh does for the long run)",
        path.display()
    );
    path
}

/// Polls `cond` every 10 ms; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Output of a finished child process.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Exit code, or 128 + signal like a shell.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }

    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// A child process owned by a test: collected with a deadline, SIGKILLed by PID if still
/// running when dropped.
pub struct Proc {
    child: Option<Child>,
    pub pid: u32,
    what: String,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

impl Proc {
    /// Starts `program args` with piped output.
    pub fn start(program: impl AsRef<std::ffi::OsStr>, args: &[String]) -> Proc {
        let program = program.as_ref();
        let what = format!("{} {}", program.to_string_lossy(), args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let pid = child.id();
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Proc {
            child: Some(child),
            pid,
            what,
            out: Some(out),
            err: Some(err),
        }
    }

    /// Starts `echo-bench ARGS`, inside network namespace `netns` if given.
    pub fn echo_bench(netns: Option<&str>, args: &[String]) -> Proc {
        match netns {
            None => Proc::start(echo_bench(), args),
            Some(ns) => {
                let mut full = vec![
                    "netns".to_string(),
                    "exec".into(),
                    ns.into(),
                    echo_bench().display().to_string(),
                ];
                full.extend_from_slice(args);
                Proc::start("ip", &full)
            }
        }
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) {
        if self.child.is_some() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        }
    }

    /// Waits for the exit; SIGKILL and panic after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let mut child = self.child.take().expect("not yet waited");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = self
                    .err
                    .take()
                    .map(|h| h.join().unwrap())
                    .unwrap_or_default();
                panic!(
                    "{} did not finish within {timeout:?}; stderr:\n{stderr}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Finished {
            status,
            stdout: self
                .out
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
            stderr: self
                .err
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `echo-bench ARGS` to completion (bounded).
pub fn run_echo_bench(args: &[&str], timeout: Duration) -> Finished {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Proc::echo_bench(None, &args).wait(timeout)
}

/// Reads an echo-bench JSON report.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Latency percentiles of a sample, in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (empty: all zero).
    pub fn of(samples: &[Duration]) -> Percentiles {
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
            }
        };
        Percentiles {
            count: v.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: v.last().copied().unwrap_or(0.0),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50={:.0}us p99={:.0}us p99.9={:.0}us max={:.0}us",
            self.count, self.p50_us, self.p99_us, self.p999_us, self.max_us
        )
    }
}

/// A well-behaved client beside the load: one connection, one 128-byte message at a time,
/// every echo verified, every round trip timed, until stopped.
pub struct LatencyProbe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Duration>>>,
}

impl LatencyProbe {
    /// Connects to `addr` and starts pinging every `gap` (zero: back to back).
    pub fn start(addr: SocketAddr, gap: Duration) -> LatencyProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = super::connect(addr);
        let stopped = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut back = [0u8; 128];
            let mut seq = 0u64;
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                let msg = pattern(0xfeed_0000 + seq, 128);
                let started = Instant::now();
                s.write_all(&msg).expect("probe write");
                s.read_exact(&mut back).expect("probe read");
                samples.push(started.elapsed());
                assert!(back[..] == msg[..], "probe echo differs");
                seq += 1;
                if !gap.is_zero() {
                    std::thread::sleep(gap);
                }
            }
            samples
        });
        LatencyProbe {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the probe and returns its round-trip times.
    pub fn finish(mut self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("probe thread panicked")
    }
}

impl Drop for LatencyProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A current-thread tokio runtime for a test's many-socket clients. Keep one per test: sockets
/// belong to the runtime that created them.
pub fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Source address number `i` for a client socket: spreads connections over 127.0.0.2..=.101 so
/// a storm does not run out of ephemeral ports (loopback answers for all of 127/8).
pub fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 100) as u8))
}

/// Connections opened by [`connect_many`], in index order.
pub struct Connected {
    pub streams: Vec<tokio::net::TcpStream>,
    /// When each connect was started (before its SYN).
    pub started: Vec<Instant>,
    /// How long each connect took.
    pub took: Vec<Duration>,
}

/// Opens `n` connections to `addr`, at most `in_flight` handshakes at a time. Panics (naming
/// the index) on any failure.
pub async fn connect_many(addr: SocketAddr, n: usize, in_flight: usize) -> Connected {
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = Arc::clone(&sem).acquire_owned().await.expect("semaphore");
        set.spawn(async move {
            let started = Instant::now();
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::new(source_ip(i), 0))
                .expect("bind source address");
            let s = tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
                .await
                .unwrap_or_else(|_| panic!("connect #{i} timed out"))
                .unwrap_or_else(|e| panic!("connect #{i}: {e}"));
            drop(permit);
            let _ = s.set_nodelay(true);
            (i, s, started, started.elapsed())
        });
    }
    let mut slots: Vec<Option<(tokio::net::TcpStream, Instant, Duration)>> =
        (0..n).map(|_| None).collect();
    while let Some(res) = set.join_next().await {
        let (i, s, started, took) = res.expect("connect task panicked");
        slots[i] = Some((s, started, took));
    }
    let mut out = Connected {
        streams: Vec::with_capacity(n),
        started: Vec::with_capacity(n),
        took: Vec::with_capacity(n),
    };
    for slot in slots {
        let (s, started, took) = slot.expect("all connected");
        out.streams.push(s);
        out.started.push(started);
        out.took.push(took);
    }
    out
}

/// On every stream at once: writes `len` bytes of its own pattern and reads them back,
/// verified (the reads run concurrently with the writes, so any `len` works). Returns the
/// streams and each round trip's duration.
pub async fn echo_all(
    streams: Vec<tokio::net::TcpStream>,
    len: usize,
    salt: u64,
) -> (Vec<tokio::net::TcpStream>, Vec<Duration>) {
    let mut set = tokio::task::JoinSet::new();
    let n = streams.len();
    for (i, s) in streams.into_iter().enumerate() {
        set.spawn(async move {
            let started = Instant::now();
            let s = tokio::time::timeout(IO_TIMEOUT, echo_verified(s, len, salt ^ i as u64))
                .await
                .unwrap_or_else(|_| panic!("echo on connection #{i} timed out"));
            (i, s, started.elapsed())
        });
    }
    let mut out: Vec<Option<tokio::net::TcpStream>> = (0..n).map(|_| None).collect();
    let mut times = Vec::with_capacity(n);
    while let Some(res) = set.join_next().await {
        let (i, s, t) = res.expect("echo task panicked");
        out[i] = Some(s);
        times.push(t);
    }
    (
        out.into_iter().map(|s| s.expect("all echoed")).collect(),
        times,
    )
}

/// Writes `len` pattern bytes (seed `seed`) and reads them back verified, concurrently.
pub async fn echo_verified(
    s: tokio::net::TcpStream,
    len: usize,
    seed: u64,
) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut r, mut w) = s.into_split();
    let writer = async move {
        let mut off = 0;
        let mut chunk = vec![0u8; 16 * 1024];
        while off < len {
            let n = chunk.len().min(len - off);
            fill_pattern(seed, off as u64, &mut chunk[..n]);
            w.write_all(&chunk[..n]).await.expect("write to server");
            off += n;
        }
        w
    };
    let reader = async move {
        let mut off = 0;
        let mut buf = vec![0u8; 16 * 1024];
        let mut want = vec![0u8; 16 * 1024];
        while off < len {
            let n = buf.len().min(len - off);
            let got = r.read(&mut buf[..n]).await.expect("read echo");
            assert!(got > 0, "EOF after {off} of {len} echoed bytes");
            fill_pattern(seed, off as u64, &mut want[..got]);
            assert!(
                buf[..got] == want[..got],
                "echo differs at byte {off}..{}",
                off + got
            );
            off += got;
        }
        r
    };
    let (w, r) = tokio::join!(writer, reader);
    r.reunite(w).expect("halves of one stream")
}

/// Closes every stream gracefully: FIN, then wait (bounded) for the server's FIN.
pub async fn close_all(streams: Vec<tokio::net::TcpStream>) {
    let mut set = tokio::task::JoinSet::new();
    for mut s in streams {
        set.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.shutdown().await;
            let mut b = [0u8; 64];
            let _ = tokio::time::timeout(IO_TIMEOUT, s.read(&mut b)).await;
        });
    }
    while set.join_next().await.is_some() {}
}

/// `TcpExt: ListenDrops` of this network namespace (/proc/net/netstat): handshakes the kernel
/// completed for a client but dropped because a listener's accept queue was full.
pub fn listen_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenDrops")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Sets SO_LINGER 0 so that closing sends RST.
pub fn linger_zero<S: std::os::fd::AsFd>(s: &S) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}

/// Asserts that the server still echoes, its fds are back at `baseline`, and returns.
pub fn assert_recovered(server: &TestServer, baseline: usize, context: &str) {
    server.wait_for_fd_count(baseline, Duration::from_secs(30));
    let mut s = server.connect();
    super::echo_once(&mut s, format!("still echoing after {context}").as_bytes());
    drop(s);
    server.wait_for_fd_count(baseline, Duration::from_secs(30));
}

/// Network namespaces created by this test, deleted on drop (even when the test panics).
pub struct Netns {
    names: Vec<String>,
}

impl Netns {
    /// Checks that namespaces can be made here: root and iproute2. `Err` says why not.
    pub fn available() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        match Command::new("ip").args(["netns", "list"]).output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("iproute2 `ip` not found ({e})")),
        }
    }

    /// Creates namespaces `ue-<pid>-<tag>-<role>` for each role, each with `lo` up.
    pub fn create(tag: &str, roles: &[&str]) -> Netns {
        let mut ns = Netns { names: Vec::new() };
        for role in roles {
            let name = format!("ue-{}-{tag}-{role}", std::process::id());
            ip(&["netns", "add", &name]);
            ns.names.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"]);
        }
        ns
    }

    /// The full name of the namespace for `role`.
    pub fn name(&self, role: &str) -> &str {
        self.names
            .iter()
            .find(|n| n.ends_with(&format!("-{role}")))
            .unwrap_or_else(|| panic!("no namespace for role {role}"))
    }

    /// Joins namespaces `a` and `b` with a veth pair created directly inside them (nothing
    /// appears in the host's namespace): `ifname_a` gets `addr_a` (CIDR), `ifname_b` `addr_b`.
    pub fn link(
        &self,
        a: &str,
        ifname_a: &str,
        addr_a: &str,
        b: &str,
        ifname_b: &str,
        addr_b: &str,
    ) {
        let (na, nb) = (self.name(a).to_string(), self.name(b).to_string());
        ip(&[
            "link", "add", ifname_a, "netns", &na, "type", "veth", "peer", "name", ifname_b,
            "netns", &nb,
        ]);
        for (ns, ifname, addr) in [(&na, ifname_a, addr_a), (&nb, ifname_b, addr_b)] {
            ip(&["-n", ns, "addr", "add", addr, "dev", ifname]);
            ip(&["-n", ns, "link", "set", ifname, "up"]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip(8)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Moves the calling thread into network namespace `name` (sockets it creates afterwards live
/// there). Only for threads the test spawned for this purpose.
pub fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on a namespace fd we opened; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A valid interval log (V2 deflate, like echo-bench writes) of `intervals`; some tagged.
pub fn hlog(intervals: &[(Vec<u64>, bool)]) -> Vec<u8> {
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2DeflateSerializer;
    let mut out = Vec::new();
    let mut ser = V2DeflateSerializer::new();
    {
        let mut w = IntervalLogWriterBuilder::new()
            .with_base_time(std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600))
            .begin_log_with(&mut out, &mut ser)
            .unwrap();
        for (i, (values, tagged)) in intervals.iter().enumerate() {
            let mut h =
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
            for v in values {
                h.record(*v).unwrap();
            }
            let tag = tagged.then(|| Tag::new("service").unwrap());
            w.write_histogram(
                &h,
                Duration::from_secs(i as u64),
                Duration::from_secs(1),
                tag,
            )
            .unwrap();
        }
    }
    out
}
