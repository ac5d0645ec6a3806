//! `epoll-floor`: the smallest correct epoll echo server we could write, used by the benchmark
//! suite as the floor that no event-loop runtime should beat by accident.
//!
//! Why it exists: io_uring-vs-epoll comparisons are usually made against a runtime (tokio), so
//! the runtime's own overhead hides in the "epoll" figure. This server has none: one thread, one
//! level-triggered `epoll` set on raw `libc` calls, one fixed buffer per connection, no
//! allocation on the hot path. It is not part of the product binary.
//!
//! Semantics kept identical to `uring-echo` where they matter for a fair comparison:
//! - every byte comes back in order; a connection never reads more until the previous chunk is
//!   fully written (so memory per connection is bounded by the buffer, and a peer that never
//!   reads gets TCP backpressure, not server-side buffering);
//! - TCP_NODELAY on accepted sockets; on the peer's FIN the remaining bytes are echoed, then the
//!   socket is closed;
//! - prints `listening on <addr>` on stdout once ready, so `echo-bench --spawn` can drive it;
//! - SIGINT/SIGTERM make it exit 0.
//!
//! Usage: `epoll-floor [ADDR] [BUFFER_BYTES]` (default `127.0.0.1:0`, 16384).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// One connection: its fd, its buffer, and the bytes of the buffer not yet written back.
struct Conn {
    fd: RawFd,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Interest is EPOLLOUT (waiting for room) rather than EPOLLIN.
    waiting_out: bool,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn epoll_ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    cvt(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) }).map(|_| ())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("epoll-floor: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad address: {e}")))?;
    let buffer_bytes: usize = match args.next() {
        Some(s) => s
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad buffer size"))?,
        None => 16384,
    };

    // SAFETY: installing a handler that only stores to an atomic is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }

    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let lfd = listener.as_raw_fd();
    // SAFETY: plain syscall, result checked.
    let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    epoll_ctl(epfd, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32)?;

    let mut out = io::stdout().lock();
    writeln!(out, "listening on {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);

    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while !STOP.load(Ordering::Relaxed) {
        // SAFETY: `events` is a valid, writable array of the length passed.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 200) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                accept_all(&listener, epfd, &mut conns, buffer_bytes);
                continue;
            }
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            if !service(conn, epfd) {
                let conn = conns.remove(&fd).expect("present");
                // SAFETY: we own the fd; closing also removes it from the epoll set.
                unsafe { libc::close(conn.fd) };
            }
        }
    }
    for (_, conn) in conns.drain() {
        // SAFETY: we own these fds.
        unsafe { libc::close(conn.fd) };
    }
    // SAFETY: we own the epoll fd.
    unsafe { libc::close(epfd) };
    Ok(())
}

fn accept_all(listener: &TcpListener, epfd: RawFd, conns: &mut HashMap<RawFd, Conn>, size: usize) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let fd = stream.into_raw_fd();
                let interest = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
                if epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, interest).is_err() {
                    // SAFETY: we own the fd.
                    unsafe { libc::close(fd) };
                    continue;
                }
                conns.insert(
                    fd,
                    Conn {
                        fd,
                        buf: vec![0u8; size].into_boxed_slice(),
                        start: 0,
                        end: 0,
                        waiting_out: false,
                    },
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // EMFILE and friends: leave the backlog for the next wakeup.
            Err(_) => return,
        }
    }
}

/// Outcome of trying to write a connection's pending bytes.
enum Flush {
    /// Nothing pending any more.
    Done,
    /// The socket buffer is full; we now wait for EPOLLOUT and stop reading (backpressure).
    Blocked,
    /// The connection failed.
    Failed,
}

/// Writes the pending range `start..end`, switching epoll interest only when the mode changes
/// (one extra `epoll_ctl` per stall, none on the common path).
fn flush(c: &mut Conn, epfd: RawFd) -> Flush {
    while c.start < c.end {
        // SAFETY: the range start..end lies within `buf`.
        let w = unsafe {
            libc::send(
                c.fd,
                c.buf[c.start..].as_ptr().cast(),
                c.end - c.start,
                libc::MSG_NOSIGNAL,
            )
        };
        if w < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if c.waiting_out => return Flush::Blocked,
                io::ErrorKind::WouldBlock => {
                    c.waiting_out = true;
                    return match epoll_ctl(epfd, libc::EPOLL_CTL_MOD, c.fd, libc::EPOLLOUT as u32) {
                        Ok(()) => Flush::Blocked,
                        Err(_) => Flush::Failed,
                    };
                }
                _ => return Flush::Failed,
            }
        }
        c.start += w as usize;
    }
    c.start = 0;
    c.end = 0;
    if c.waiting_out {
        c.waiting_out = false;
        let interest = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if epoll_ctl(epfd, libc::EPOLL_CTL_MOD, c.fd, interest).is_err() {
            return Flush::Failed;
        }
    }
    Flush::Done
}

/// Echoes whatever the connection allows right now. Returns false when the connection is
/// finished: the peer closed after everything was echoed, or an error.
fn service(c: &mut Conn, epfd: RawFd) -> bool {
    loop {
        match flush(c, epfd) {
            Flush::Done => {}
            Flush::Blocked => return true,
            Flush::Failed => return false,
        }
        // SAFETY: reading into the whole owned buffer, which nothing else borrows.
        let r = unsafe { libc::recv(c.fd, c.buf.as_mut_ptr().cast(), c.buf.len(), 0) };
        if r < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => return true,
                io::ErrorKind::Interrupted => continue,
                _ => return false,
            }
        }
        if r == 0 {
            // Peer's FIN, and nothing is pending: everything was echoed.
            return false;
        }
        c.end = r as usize;
        if c.end < c.buf.len() {
            // A short read means the socket is (very likely) drained: write back and return to
            // epoll_wait rather than spend a recv on EAGAIN. Level-triggered epoll reports a
            // FIN that arrived meanwhile on the next wait.
            return !matches!(flush(c, epfd), Flush::Failed);
        }
    }
}
