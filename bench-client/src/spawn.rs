//! Servers started by echo-bench (`--spawn`, default comparison).
//!
//! The command is split into words (no shell), so the PID echo-bench holds is the server's own:
//! it is the PID whose `/proc/<pid>/stat` gives the server CPU time, and the PID that gets
//! SIGTERM. The child runs in its own process group (a terminal Ctrl-C reaches only
//! echo-bench, which then stops the server itself) and is optionally pinned with
//! `sched_setaffinity` before `exec`. [`Spawned`]'s `Drop` stops it on every path: success,
//! error and interrupt.
//!
//! A server never outlives echo-bench, even when echo-bench gets SIGKILL and no `Drop` runs:
//! the child sets `PR_SET_PDEATHSIG` to **SIGKILL** before `exec`. SIGKILL rather than SIGTERM
//! because the signal only matters when echo-bench died without stopping the server itself,
//! and then nobody is left to read what a clean exit would print (the `summary:` line), while a
//! server that handles SIGTERM by draining (uring-echo drains for up to its `--drain-timeout`;
//! an arbitrary `--spawn` command may ignore SIGTERM) would outlive echo-bench; SIGKILL cannot
//! be caught or ignored. Two caveats of prctl(2), and why they are safe here:
//! * The signal is sent when the *thread* that forked the child ends, not the process. Servers
//!   are started and stopped by the same [`Spawned`] guard on the thread that runs the
//!   benchmark (`main`'s, in the binary), so that thread outlives every server it started; a
//!   guard moved to another thread would get its server killed early when the starting thread
//!   ends, never leaked.
//! * If echo-bench dies between `fork` and the `prctl`, no signal comes: the child then sees a
//!   parent PID other than echo-bench's and fails before `exec`.
//!
//! Readiness is the server's `listening on <addr>` stdout line, awaited with a timeout; a
//! printed unspecified address (`0.0.0.0`, `[::]`) is replaced by the loopback of its family.
//! A server that exits before it is ready is a [`StartError::NotReady`] (from
//! [`Spawned::start_or_why`]) carrying its last stderr line (a server says there why it could
//! not start), which the default comparison reports when it skips an engine. From stderr,
//! echo-bench keeps the last lines (for error messages), the `summary:` line the server prints
//! at exit, and the first `features: key=value ...` line (what the server found the kernel
//! supports), verbatim, so that saved results say which server features ran.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::host;

/// How long a server gets to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long, after a server exited, its stderr may take to reach end of file (longer only if
/// a process it started still holds the pipe).
const STDERR_EOF_TIMEOUT: Duration = Duration::from_secs(1);
const STDERR_TAIL_LINES: usize = 20;

/// A running server process.
pub struct Spawned {
    /// Target name.
    pub name: String,
    /// The command as given.
    pub command: String,
    /// Where to connect.
    pub addr: SocketAddr,
    child: Option<Child>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Disconnected once the stderr reader has read everything (end of file).
    stderr_eof: Option<mpsc::Receiver<()>>,
    features: Arc<Mutex<Option<String>>>,
}

/// Why a server did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// It exited (or closed its stdout) before printing its ready line: it could not start.
    #[error(
        "server '{command}' {how} before printing `listening on <addr>`{}",
        last_line_suffix(.last_line.as_deref())
    )]
    NotReady {
        /// The command as given.
        command: String,
        /// How it ended (`exited with status 1`).
        how: String,
        /// Its last stderr line, where a server says why it could not start.
        last_line: Option<String>,
    },
    /// It could not be executed, did not get ready in time, or echo-bench was interrupted.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl StartError {
    /// Why the server did not start, in one line: its last stderr line, else how it ended.
    pub fn reason(&self) -> String {
        match self {
            StartError::NotReady {
                last_line: Some(line),
                ..
            } => line.clone(),
            StartError::NotReady { how, .. } => {
                format!("it {how} before printing `listening on <addr>`")
            }
            StartError::Other(e) => format!("{e:#}"),
        }
    }
}

impl StartError {
    /// As an `anyhow` error, without wrapping one twice.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            StartError::Other(e) => e,
            e => anyhow::Error::new(e),
        }
    }
}

fn last_line_suffix(line: Option<&str>) -> String {
    line.map(|l| format!("; last stderr line: {l}"))
        .unwrap_or_default()
}

/// Prefix of the stderr line in which a server lists its features.
pub const FEATURES_PREFIX: &str = "features: ";

/// Replace an unspecified address by the loopback address of the same family.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Parse a `listening on <addr>` line.
pub fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("listening on ")?
        .trim()
        .parse()
        .ok()
}

fn push_tail(tail: &Mutex<VecDeque<String>>, line: String) {
    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
    if t.len() == STDERR_TAIL_LINES {
        t.pop_front();
    }
    t.push_back(line);
}

/// Configure `cmd` to run in its own process group, die with echo-bench and run on `cpus`
/// (see the module docs).
fn isolate(cmd: &mut Command, cpus: Option<&[usize]>) {
    let set = cpus.map(host::cpu_set);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (setpgid, prctl, getppid, sched_setaffinity) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // echo-bench died before the prctl took effect: no signal will come, so do not run.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some(set) = &set {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

impl Spawned {
    /// Start `argv`, wait up to `ready_timeout` for its ready line.
    pub fn start(
        name: &str,
        command: &str,
        argv: &[String],
        cpus: Option<&[usize]>,
        ready_timeout: Duration,
    ) -> anyhow::Result<Spawned> {
        Self::start_or_why(name, command, argv, cpus, ready_timeout)
            .map_err(StartError::into_anyhow)
    }

    /// [`Spawned::start`], telling a server that could not start ([`StartError::NotReady`])
    /// from the other failures.
    pub fn start_or_why(
        name: &str,
        command: &str,
        argv: &[String],
        cpus: Option<&[usize]>,
        ready_timeout: Duration,
    ) -> Result<Spawned, StartError> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        isolate(&mut cmd, cpus);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start server '{command}'"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let features = Arc::new(Mutex::new(None));
        let (eof_tx, eof_rx) = mpsc::channel::<()>();
        {
            let tail = tail.clone();
            let features = features.clone();
            std::thread::Builder::new()
                .name("server-stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        match line {
                            Ok(l) => {
                                if l.starts_with(FEATURES_PREFIX) {
                                    let mut f = features.lock().unwrap_or_else(|p| p.into_inner());
                                    f.get_or_insert_with(|| l.clone());
                                }
                                push_tail(&tail, l)
                            }
                            Err(_) => break,
                        }
                    }
                    drop(eof_tx);
                })
                .context("cannot start stderr reader thread")?;
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("server-stdout".into())
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let mut sent = false;
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if !sent {
                                if let Some(addr) = parse_ready_line(&line) {
                                    let _ = tx.send(addr);
                                    sent = true;
                                }
                            }
                        }
                    }
                }
                // Keep draining so the server never blocks on a full pipe.
                let _ = std::io::copy(&mut reader.take(u64::MAX), &mut std::io::sink());
            })
            .context("cannot start stdout reader thread")?;

        let mut spawned = Spawned {
            name: name.to_string(),
            command: command.to_string(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            child: Some(child),
            stderr: tail,
            stderr_eof: Some(eof_rx),
            features,
        };
        let deadline = Instant::now() + ready_timeout;
        loop {
            if crate::interrupt::interrupted() {
                return Err(anyhow!("interrupted").into());
            }
            let ended = match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => {
                    spawned.addr = connectable(addr);
                    return Ok(spawned);
                }
                // stdout closed without a ready line: wait briefly for the exit status.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    Some(spawned.wait_exit(Duration::from_millis(500)))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => spawned.try_exit().map(Some),
            };
            if let Some(status) = ended {
                if status.is_some() {
                    spawned.wait_stderr_eof();
                }
                return Err(StartError::NotReady {
                    command: command.to_string(),
                    how: describe_exit(status),
                    last_line: spawned.stderr_tail().pop(),
                });
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "server '{command}' did not print `listening on <addr>` within {}{}",
                    humantime::format_duration(ready_timeout),
                    spawned.stderr_suffix()
                )
                .into());
            }
        }
    }

    /// After the server exited: wait until its stderr is read to the end, so that its last
    /// lines are in the tail.
    fn wait_stderr_eof(&mut self) {
        if let Some(rx) = &self.stderr_eof {
            if let Err(mpsc::RecvTimeoutError::Disconnected) = rx.recv_timeout(STDERR_EOF_TIMEOUT) {
                self.stderr_eof = None;
            }
        }
    }

    /// The server's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Server CPU time so far (all threads), ns.
    pub fn cpu_ns(&self) -> Option<u64> {
        self.pid().and_then(|pid| host::process_cpu_ns(pid).ok())
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Fail if the server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_exit() {
            self.wait_stderr_eof();
            bail!(
                "server '{}' {} during the run{}",
                self.name,
                describe_exit(Some(status)),
                self.stderr_suffix()
            );
        }
        Ok(())
    }

    /// The server's first `features:` stderr line, verbatim, if it printed one so far.
    pub fn features(&self) -> Option<String> {
        self.features
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last stderr lines, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn stderr_suffix(&self) -> String {
        last_line_suffix(self.stderr_tail().last().map(String::as_str))
    }

    /// Stop the server: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]. Returns its `summary:`
    /// stderr line if it printed one.
    pub fn stop(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        self.wait_stderr_eof();
        self.stderr_tail()
            .into_iter()
            .rev()
            .find(|l| l.starts_with("summary:"))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "exited".into(),
        },
        None => "closed its stdout".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_and_unspecified_addresses() {
        assert_eq!(
            parse_ready_line("listening on 127.0.0.1:4000\n"),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            parse_ready_line("listening on [::]:5"),
            Some("[::]:5".parse().unwrap())
        );
        assert_eq!(parse_ready_line("hello"), None);
        assert_eq!(
            connectable("0.0.0.0:9".parse().unwrap()),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(
            connectable("[::]:9".parse().unwrap()),
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(
            connectable("10.1.2.3:9".parse().unwrap()),
            "10.1.2.3:9".parse().unwrap()
        );
    }

    #[test]
    fn a_command_that_exits_early_is_reported_with_its_last_stderr_line() {
        let argv: Vec<String> = ["sh", "-c", "echo starting >&2; echo boom >&2; exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = Spawned::start_or_why("x", "sh -c ...", &argv, None, Duration::from_secs(5))
            .err()
            .expect("must fail");
        assert!(matches!(err, StartError::NotReady { .. }), "{err:?}");
        assert_eq!(err.reason(), "boom");
        let msg = format!("{:#}", err.into_anyhow());
        assert_eq!(
            msg,
            "server 'sh -c ...' exited with status 3 before printing `listening on <addr>`; \
             last stderr line: boom"
        );
        let silent = ["sh", "-c", "exit 4"].map(String::from);
        let err = Spawned::start_or_why("x", "exit 4", &silent, None, Duration::from_secs(5))
            .err()
            .expect("must fail");
        assert_eq!(
            err.reason(),
            "it exited with status 4 before printing `listening on <addr>`"
        );
    }

    #[test]
    fn a_silent_command_times_out_and_is_killed() {
        let argv: Vec<String> = ["sleep", "30"].iter().map(|s| s.to_string()).collect();
        let started = Instant::now();
        let err = Spawned::start("x", "sleep 30", &argv, None, Duration::from_millis(300))
            .err()
            .expect("must time out");
        assert!(format!("{err:#}").contains("did not print"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let argv = vec!["/nonexistent/uring-echo".to_string()];
        let start = || {
            Spawned::start_or_why(
                "x",
                "/nonexistent/uring-echo",
                &argv,
                None,
                Duration::from_secs(1),
            )
        };
        let err = start().err().expect("must fail");
        assert!(matches!(err, StartError::Other(_)), "{err:?}");
        let msg = format!("{:#}", err.into_anyhow());
        assert!(
            msg.starts_with("cannot start server '/nonexistent/uring-echo': ")
                && msg.contains("No such file"),
            "{msg}"
        );
    }
}
