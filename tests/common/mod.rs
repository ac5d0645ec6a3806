//! Test harness: runs the real `uring-echo` binary (any of its three engines) and talks to it
//! over loopback.
//!
//! `TestServer::spawn` starts the server on port 0, waits (bounded) for the `listening on` line
//! and captures stderr so a failing test can show it. `Drop` sends SIGTERM, then SIGKILL if the
//! process does not exit in time, so no test leaves a server behind.

#![allow(dead_code)] // each test binary uses a different subset

pub mod stress;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The three engines; tests that apply to all run once per entry.
pub const RUNTIMES: [&str; 3] = ["uring", "epoll", "uring-multishot"];

/// Every long flag of the server (`--runtime`, ...), read from its clap definition, so that a
/// new flag cannot escape the --help test and the command-line fuzzer.
pub fn server_flags() -> Vec<String> {
    use clap::CommandFactory;
    uring_echo::config::Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .map(|long| format!("--{long}"))
        .collect()
}

/// The long flags hidden from `--help` (developer flags, documented in README "Kernels").
pub fn hidden_server_flags() -> Vec<String> {
    use clap::CommandFactory;
    uring_echo::config::Cli::command()
        .get_arguments()
        .filter(|arg| arg.is_hide_set())
        .filter_map(|arg| arg.get_long())
        .map(|long| format!("--{long}"))
        .collect()
}

/// How long a server may take to print its ready line (debug build, busy CI machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Socket read/write timeout for test clients: a hang becomes a failure, not a stuck test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Generates one `#[test]` per runtime for each listed `fn name(runtime: &str)`.
#[macro_export]
macro_rules! for_each_runtime {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                super::$name("uring")
            }
            #[test]
            fn epoll() {
                super::$name("epoll")
            }
            #[test]
            fn uring_multishot() {
                super::$name("uring-multishot")
            }
        }
    )*};
}

/// Path of the server binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_uring-echo")
}

/// A resource limit to apply in the child before exec.
#[derive(Clone, Copy, Debug)]
pub struct Rlimit {
    pub resource: libc::__rlimit_resource_t,
    pub soft: u64,
}

/// The summary counters of failures: zero in any run where nothing went wrong.
pub const ERROR_COUNTERS: [&str; 4] = [
    "errors_reset",
    "errors_pipe",
    "errors_other",
    "accept_errors",
];

/// Result of a stopped or exited server.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Exited {
    /// The `summary:` line's key=value pairs; panics (showing stderr) if there is none.
    pub fn summary(&self) -> HashMap<String, String> {
        parse_line(&self.stderr, "summary: ")
            .unwrap_or_else(|| panic!("no summary line in stderr:\n{}", self.stderr))
    }

    /// A numeric summary field.
    pub fn count(&self, key: &str) -> u64 {
        let summary = self.summary();
        summary
            .get(key)
            .unwrap_or_else(|| panic!("summary has no {key}: {summary:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("summary {key} is not a number: {summary:?}"))
    }

    /// Asserts that each of these summary counters is zero (e.g. [`ERROR_COUNTERS`]).
    pub fn assert_zero(&self, keys: &[&str]) {
        for key in keys {
            assert_eq!(self.count(key), 0, "{key}: {:?}", self.summary());
        }
    }

    /// The `features:` line's key=value pairs; panics (showing stderr) if there is none.
    pub fn features(&self) -> HashMap<String, String> {
        parse_line(&self.stderr, "features: ")
            .unwrap_or_else(|| panic!("no features line in stderr:\n{}", self.stderr))
    }

    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Parses the last line of `text` starting with `prefix` into key=value pairs.
pub fn parse_line(text: &str, prefix: &str) -> Option<HashMap<String, String>> {
    let line = text.lines().rev().find(|l| l.starts_with(prefix))?;
    Some(
        line[prefix.len()..]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// A running server process.
pub struct TestServer {
    child: Option<Child>,
    /// The address from the ready line (may be unspecified, e.g. `[::]:port`).
    pub addr: SocketAddr,
    pub pid: u32,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// Stdout lines after the ready line (the contract says there are none).
    stdout_rest: Option<mpsc::Receiver<std::io::Result<String>>>,
}

impl TestServer {
    /// Starts `uring-echo ARGS` and waits for its ready line; panics with stderr on failure.
    pub fn spawn(args: &[&str]) -> TestServer {
        Self::spawn_with_limits(args, &[])
    }

    /// Like [`TestServer::spawn`], with resource limits set in the child before exec.
    pub fn spawn_with_limits(args: &[&str], limits: &[Rlimit]) -> TestServer {
        match Self::try_spawn(args, limits) {
            Ok(server) => server,
            Err(exited) => panic!(
                "server {args:?} did not become ready ({}); stderr:\n{}",
                exited.status, exited.stderr
            ),
        }
    }

    /// Starts the server; if it exits (or stays silent past the timeout) returns what it printed.
    pub fn try_spawn(args: &[&str], limits: &[Rlimit]) -> Result<TestServer, Exited> {
        Self::try_spawn_wrapped(&[], args, limits, None)
    }

    /// Like [`TestServer::try_spawn`], running `pre_exec` in the child before exec.
    pub fn try_spawn_pre_exec(args: &[&str], pre_exec: PreExec) -> Result<TestServer, Exited> {
        Self::try_spawn_wrapped(&[], args, &[], Some(pre_exec))
    }

    /// Like [`TestServer::spawn`], started through `wrapper` (e.g. `ip netns exec NS`), which
    /// must exec the server in place so that the PID is the server's.
    pub fn spawn_wrapped(wrapper: &[&str], args: &[&str]) -> TestServer {
        match Self::try_spawn_wrapped(wrapper, args, &[], None) {
            Ok(server) => server,
            Err(exited) => panic!(
                "server {wrapper:?} {args:?} did not become ready ({}); stderr:\n{}",
                exited.status, exited.stderr
            ),
        }
    }

    fn try_spawn_wrapped(
        wrapper: &[&str],
        args: &[&str],
        limits: &[Rlimit],
        pre_exec: Option<PreExec>,
    ) -> Result<TestServer, Exited> {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        apply_limits(&mut cmd, limits);
        apply_pre_exec(&mut cmd, pre_exec);
        let mut child = cmd.spawn().expect("cannot start uring-echo");
        let pid = child.id();

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let pipe = child.stderr.take().expect("stderr is piped");
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            })
        };
        let (line_tx, line_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });

        let mut server = TestServer {
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            pid,
            stderr,
            stderr_reader: Some(stderr_reader),
            stdout_rest: None,
        };
        match line_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) => {
                let addr = line
                    .strip_prefix("listening on ")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
                server.addr = addr;
                server.stdout_rest = Some(line_rx);
                Ok(server)
            }
            _ => Err(server.kill_and_collect()),
        }
    }

    /// Connectable IPv4 address of the server.
    pub fn v4(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.addr.port())
    }

    /// Connectable IPv6 address of the server.
    pub fn v6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), self.addr.port())
    }

    /// Connectable address in the family the server listens on.
    pub fn loopback(&self) -> SocketAddr {
        match self.addr.ip() {
            IpAddr::V4(ip) if !ip.is_unspecified() => self.addr,
            IpAddr::V4(_) => self.v4(),
            IpAddr::V6(ip) if !ip.is_unspecified() => self.addr,
            IpAddr::V6(_) => self.v6(),
        }
    }

    /// A connected client with timeouts set.
    pub fn connect(&self) -> TcpStream {
        connect(self.loopback())
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `cond(stderr)` holds; panics with stderr after `timeout`.
    pub fn wait_for_stderr(&self, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(&self.stderr()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Number of open fds of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("server has exited")
            .count()
    }

    /// Resident memory of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("server has exited");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/pid/status")
    }

    /// Polls until the server's fd count is `target`; panics after `timeout`.
    pub fn wait_for_fd_count(&self, target: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.fd_count();
            if n == target {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server holds {n} fds, expected {target}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid as libc::pid_t, sig) };
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns status and output.
    pub fn stop(mut self) -> Exited {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(20))
    }

    /// Waits (bounded) for the server to exit by itself; SIGKILL and panic after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Exited {
        let mut child = self.child.take().expect("already stopped");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for server") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        let stdout = self
            .stdout_rest
            .take()
            .map(|rx| {
                // The reader thread ends at EOF, right after the exit.
                std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(2)).ok())
                    .flatten()
                    .map(|l| l + "\n")
                    .collect()
            })
            .unwrap_or_default();
        Exited {
            status,
            stdout,
            stderr: self.stderr(),
        }
    }

    fn kill_and_collect(&mut self) -> Exited {
        let mut child = self.child.take().expect("child present");
        let deadline = Instant::now() + Duration::from_secs(2);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let status = child.wait().expect("wait for server");
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        Exited {
            status,
            stdout: String::new(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn apply_limits(cmd: &mut Command, limits: &[Rlimit]) {
    if limits.is_empty() {
        return;
    }
    let limits = limits.to_vec();
    // SAFETY: the closure only calls getrlimit/setrlimit, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for l in &limits {
                let mut cur = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(l.resource, &mut cur) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let new = libc::rlimit {
                    rlim_cur: l.soft,
                    rlim_max: cur.rlim_max.max(l.soft),
                };
                if libc::setrlimit(l.resource, &new) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Code run in the child between fork and exec (`CommandExt::pre_exec`: async-signal-safe
/// calls only, e.g. prctl).
pub type PreExec = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

fn apply_pre_exec(cmd: &mut Command, pre_exec: Option<PreExec>) {
    if let Some(hook) = pre_exec {
        // SAFETY: the caller's hook is async-signal-safe (the PreExec contract).
        unsafe {
            cmd.pre_exec(move || hook());
        }
    }
}

/// Runs the binary to completion (bounded); for flag and startup errors.
pub fn run_to_exit(args: &[&str], limits: &[Rlimit]) -> Exited {
    run_to_exit_with(args, limits, None)
}

/// [`run_to_exit`], running `pre_exec` in the child before exec.
pub fn run_to_exit_with(args: &[&str], limits: &[Rlimit], pre_exec: Option<PreExec>) -> Exited {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    apply_limits(&mut cmd, limits);
    apply_pre_exec(&mut cmd, pre_exec);
    let mut child = cmd.spawn().expect("cannot start uring-echo");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("uring-echo {args:?} did not exit (it was expected to fail)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("collect output");
    Exited {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts a clean one-line failure: exit `code`, no panic text, exactly one stderr line that
/// contains every `needle`.
pub fn assert_one_line_error(exited: &Exited, code: i32, needles: &[&str]) {
    let lines = exited.stderr_lines();
    assert_eq!(
        exited.status.code(),
        Some(code),
        "status {:?} (signal {:?}); stderr:\n{}",
        exited.status,
        exited.status.signal(),
        exited.stderr
    );
    assert_eq!(
        lines.len(),
        1,
        "expected one stderr line:\n{}",
        exited.stderr
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{needle:?} not in {:?}",
            lines[0]
        );
    }
    assert!(!exited.stderr.contains("panicked"), "{}", exited.stderr);
    assert!(exited.stdout.is_empty(), "stdout: {}", exited.stdout);
}

/// A connected client with read/write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Writes `data` and reads back exactly as many bytes, asserting they are equal.
pub fn echo_once(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("write to server");
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).expect("read echo");
    assert!(back == data, "echo differs from what was sent");
}

/// Reads until EOF; returns the bytes. Errors (including timeouts) panic.
pub fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read to EOF");
    out
}

/// Deterministic test data: byte `offset` of stream `seed` (splitmix64 over 8-byte words), so a
/// lost, repeated or reordered chunk is detected wherever it lands.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        let mut z = seed ^ (pos / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        *b = (z >> ((pos % 8) * 8)) as u8;
    }
}

/// `fill_pattern` into a new vector.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(seed, 0, &mut v);
    v
}
