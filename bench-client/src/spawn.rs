//! Servers started by echo-bench (`--spawn`, default comparison).
//!
//! The command is split into words (no shell), so the PID echo-bench holds is the server's own:
//! it is the PID whose `/proc/<pid>/stat` gives the server CPU time, and the PID that gets
//! SIGTERM. The child runs in its own process group (a terminal Ctrl-C reaches only
//! echo-bench, which then stops the server itself), is optionally pinned with
//! `sched_setaffinity` before `exec`, and gets `PR_SET_PDEATHSIG` so that it is terminated even
//! if echo-bench itself is killed. [`Spawned`]'s `Drop` stops it on every path: success, error
//! and interrupt.
//!
//! Readiness is the server's `listening on <addr>` stdout line, awaited with a timeout; a
//! printed unspecified address (`0.0.0.0`, `[::]`) is replaced by the loopback of its family.
//! From stderr, echo-bench keeps the last lines (for error messages), the `summary:` line the
//! server prints at exit, and the first `features: key=value ...` line (what the server found
//! the kernel supports), verbatim, so that saved results say which server features ran.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::host;

/// How long a server gets to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
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
    features: Arc<Mutex<Option<String>>>,
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

impl Spawned {
    /// Start `argv`, wait up to `ready_timeout` for its ready line.
    pub fn start(
        name: &str,
        command: &str,
        argv: &[String],
        cpus: Option<&[usize]>,
        ready_timeout: Duration,
    ) -> anyhow::Result<Spawned> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let set = cpus.map(host::cpu_set);
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // syscalls (setpgid, prctl, sched_setaffinity) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(set) = &set {
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start server '{command}'"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let features = Arc::new(Mutex::new(None));
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
            features,
        };
        let deadline = Instant::now() + ready_timeout;
        loop {
            if crate::interrupt::interrupted() {
                bail!("interrupted");
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => {
                    spawned.addr = connectable(addr);
                    return Ok(spawned);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without a ready line: wait briefly for the exit status.
                    let status = spawned.wait_exit(Duration::from_millis(500));
                    std::thread::sleep(Duration::from_millis(50));
                    bail!(
                        "server '{command}' {} before printing `listening on <addr>`{}",
                        describe_exit(status),
                        spawned.stderr_suffix()
                    );
                }
            }
            if let Some(status) = spawned.try_exit() {
                // give the stderr reader a moment to collect the last lines
                std::thread::sleep(Duration::from_millis(50));
                bail!(
                    "server '{command}' {} before printing `listening on <addr>`{}",
                    describe_exit(Some(status)),
                    spawned.stderr_suffix()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "server '{command}' did not print `listening on <addr>` within {}{}",
                    humantime::format_duration(ready_timeout),
                    spawned.stderr_suffix()
                );
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
            std::thread::sleep(Duration::from_millis(50));
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

    /// The last stderr lines, joined with ` | `.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn stderr_suffix(&self) -> String {
        let tail = self.stderr_tail();
        match tail.last() {
            Some(last) => format!("; last stderr line: {last}"),
            None => String::new(),
        }
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
        // Let the stderr reader catch the final lines.
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            let summary = self
                .stderr_tail()
                .into_iter()
                .rev()
                .find(|l| l.starts_with("summary:"));
            if summary.is_some() || Instant::now() >= deadline {
                return summary;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
    fn a_command_that_exits_early_is_reported_with_its_stderr() {
        let argv: Vec<String> = ["sh", "-c", "echo boom >&2; exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = Spawned::start("x", "sh -c ...", &argv, None, Duration::from_secs(5))
            .err()
            .expect("must fail");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("exited with status 3") || msg.contains("closed its stdout"),
            "{msg}"
        );
        assert!(msg.contains("boom"), "{msg}");
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
        let err = Spawned::start(
            "x",
            "/nonexistent/uring-echo",
            &argv,
            None,
            Duration::from_secs(1),
        )
        .err()
        .expect("must fail");
        assert!(
            format!("{err:#}").contains("cannot start server"),
            "{err:#}"
        );
    }
}
