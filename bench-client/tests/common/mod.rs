//! Shared test helpers: small misbehaving echo servers on 127.0.0.1:0 (std threads), and a
//! runner for the real `echo-bench` binary with a hard timeout.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod failing;
#[allow(unused_imports)]
pub use failing::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_echo-bench");

/// What a test server does with the bytes it reads.
#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    /// Echo everything.
    Echo,
    /// Sleep this long before echoing each chunk read.
    Delay(Duration),
    /// Echo normally, except that every connection stops echoing for `stall` once, starting
    /// `after` the first byte the server received on any connection.
    StallOnce { after: Duration, stall: Duration },
    /// Flip the byte at this offset of every connection's byte stream.
    CorruptAt(u64),
    /// Echo this many bytes of every connection, then close it.
    CloseAfter(u64),
    /// Echo this many bytes, then reset the connection (SO_LINGER 0).
    ResetAfter(u64),
    /// Echo normally; once this many bytes were echoed, wait `delay` and send 5 bytes nobody
    /// asked for.
    ExtraAfter { bytes: u64, delay: Duration },
}

/// A listener whose accept thread hands every connection to `serve`, on a thread of its own;
/// dropping it stops accepting and joins the accept thread.
pub struct Acceptor {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Acceptor {
    pub fn start<F>(bind: &str, serve: F) -> Acceptor
    where
        F: Fn(TcpStream) + Clone + Send + 'static,
    {
        let listener = TcpListener::bind(bind).expect("bind test server");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let serve = serve.clone();
                std::thread::spawn(move || serve(stream));
            }
        });
        Acceptor {
            addr,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub addr_str: String,
    _acceptor: Acceptor,
}

impl TestServer {
    pub fn start(behavior: Behavior) -> TestServer {
        Self::start_on("127.0.0.1:0", behavior)
    }

    pub fn start_on(bind: &str, behavior: Behavior) -> TestServer {
        let first_byte: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
        let acceptor = Acceptor::start(bind, move |stream| serve(stream, behavior, &first_byte));
        TestServer {
            addr: acceptor.addr,
            addr_str: acceptor.addr.to_string(),
            _acceptor: acceptor,
        }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

fn serve(mut stream: TcpStream, behavior: Behavior, first_byte: &OnceLock<Instant>) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos: u64 = 0;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let first = *first_byte.get_or_init(Instant::now);
        let chunk = &mut buf[..n];
        match behavior {
            Behavior::Echo => {}
            Behavior::Delay(d) => std::thread::sleep(d),
            Behavior::StallOnce { after, stall } => {
                let (from, to) = (first + after, first + after + stall);
                let now = Instant::now();
                if now >= from && now < to {
                    std::thread::sleep(to - now);
                }
            }
            Behavior::CorruptAt(off) => {
                if off >= pos && off < pos + n as u64 {
                    chunk[(off - pos) as usize] ^= 0xff;
                }
            }
            Behavior::ExtraAfter { bytes, delay } => {
                if stream.write_all(chunk).is_err() {
                    return;
                }
                let before = pos;
                pos += n as u64;
                if before < bytes && pos >= bytes {
                    std::thread::sleep(delay);
                    let _ = stream.write_all(b"extra");
                }
                continue;
            }
            Behavior::CloseAfter(limit) | Behavior::ResetAfter(limit) => {
                let allowed = limit.saturating_sub(pos).min(n as u64) as usize;
                let _ = stream.write_all(&chunk[..allowed]);
                if pos + n as u64 >= limit {
                    if let Behavior::ResetAfter(_) = behavior {
                        let _ = socket_linger_zero(&stream);
                    } else {
                        let _ = stream.shutdown(Shutdown::Both);
                    }
                    return;
                }
                pos += n as u64;
                continue;
            }
        }
        if stream.write_all(chunk).is_err() {
            return;
        }
        pos += n as u64;
    }
}

fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Run echo-bench with `args`; kill it (and fail) after `timeout`.
pub fn run_with_timeout(args: &[String], timeout: Duration) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_command(cmd, timeout)
}

/// Run `cmd` (echo-bench with its arguments, environment, ...) with piped output; kill it (and
/// fail) after `timeout`.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start echo-bench");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for echo-bench"),
        Err(_) => {
            // SAFETY: kill(2) on the PID of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    }
}

/// Run echo-bench with string args and a 60 s limit.
pub fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_with_timeout(&args, Duration::from_secs(60))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success and return stdout, showing everything on failure.
pub fn expect_success(o: &Output) -> String {
    assert!(
        o.status.success(),
        "echo-bench failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

pub fn join(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// The uring-echo binary built beside echo-bench by `cargo test --workspace`.
pub fn uring_echo() -> PathBuf {
    let p = Path::new(BIN).parent().unwrap().join("uring-echo");
    assert!(
        p.is_file(),
        "{} not found: these tests use the real server; run `cargo test --workspace` so that it is built",
        p.display()
    );
    p
}

/// Whether a process with this PID exists (and is not a zombie).
pub fn pid_alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Established TCP connections on this machine whose local port is `port` (the server side of
/// the connections to a server listening there), from /proc/net/tcp and /proc/net/tcp6.
pub fn established_to(port: u16) -> usize {
    const ESTABLISHED: &str = "01";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let local_port = f
                        .get(1)
                        .and_then(|a| a.rsplit_once(':'))
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                    local_port == Some(port) && f.get(3) == Some(&ESTABLISHED)
                })
                .count()
        })
        .sum()
}

/// An echo server with a known capacity: every message (`size` bytes, from any connection)
/// waits for one worker that serves one message at a time and takes exactly `service` per
/// message, in virtual time: a message is done at `max(arrival, previous done) + service`, and
/// the worker sleeps until then. A late wake-up delays that message but not the ones after
/// it, so the capacity is exactly one message per `service` whatever the machine's jitter.
/// Messages of a connection the client has closed are dropped unserved: each `slo` trial
/// opens new connections, and the model (a server idle when a trial starts) would not hold if
/// an overloaded trial's leftover queue were still being served during the next one.
pub struct ServiceServer {
    pub addr: SocketAddr,
    _acceptor: Acceptor,
}

/// Arrival, connection, its closed flag, the message.
type Job = (Instant, Arc<TcpStream>, Arc<AtomicBool>, Vec<u8>);

impl ServiceServer {
    pub fn start(size: usize, service: Duration) -> ServiceServer {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            let mut done = Instant::now();
            for (arrived, stream, closed, msg) in queue {
                if closed.load(Ordering::Acquire) {
                    continue;
                }
                done = done.max(arrived) + service;
                let now = Instant::now();
                if done > now {
                    std::thread::sleep(done - now);
                }
                let _ = (&*stream).write_all(&msg);
            }
        });
        let acceptor = Acceptor::start("127.0.0.1:0", move |stream: TcpStream| {
            let _ = stream.set_nodelay(true);
            let stream = Arc::new(stream);
            let closed = Arc::new(AtomicBool::new(false));
            let mut msg = vec![0u8; size];
            while (&*stream).read_exact(&mut msg).is_ok() {
                let job = (Instant::now(), stream.clone(), closed.clone(), msg.clone());
                if jobs.send(job).is_err() {
                    return;
                }
            }
            closed.store(true, Ordering::Release);
        });
        ServiceServer {
            addr: acceptor.addr,
            _acceptor: acceptor,
        }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}
