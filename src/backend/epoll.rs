//! epoll engine: a tokio current-thread runtime plus a `LocalSet`, the same shape as a
//! tokio-uring worker, so both tokio engines run identical accept and echo code.
//!
//! Reads and writes follow tokio's own `TcpStream` `poll_read`/`poll_write` step by step, on the
//! same readiness machinery (an [`AsyncFd`] is the `ScheduledIo` registration a `TcpStream`
//! has), so the A/B against io_uring measures the engine and not a different readiness loop:
//! - a short read (fewer bytes than the buffer holds) is taken as proof that the socket is
//!   drained and clears the cached readiness, so the next read waits for epoll instead of calling
//!   `recvfrom(2)` once more for an `EAGAIN` (one syscall per message less than `readable()` +
//!   `try_read`); a short write likewise clears write readiness. A FIN is not lost that way:
//!   tokio never clears the read-closed readiness, so a pending EOF is still seen (the
//!   edge-triggered trap in the project notes);
//! - `EAGAIN` clears readiness and waits again; `EINTR` retries.
//!
//! The one difference is the syscall itself: `recvfrom`/`sendto` are made with `syscall(2)`
//! rather than through glibc's `recv`/`send`. In a multi-threaded process (ours has a main, a
//! signal and the worker threads) glibc brackets every such cancellation-point call with
//! `pthread_enable_asynccancel`/`disable_asynccancel`: work on every message that a
//! single-threaded tokio server never pays, so the comparison with it would measure glibc, not
//! the engine (what it cost in a profile: bench/README.md, "Where the server's CPU goes now").
//! The flags are std's: `MSG_NOSIGNAL` on sends, none on receives.
//!
//! The buffer API mirrors io_uring's owned buffers: the `Vec` goes in and comes back, and reads
//! fill its spare capacity, so neither engine zeroes memory per read.
//!
//! The listener is switched to non-blocking here, and only here: tokio requires it, while the
//! io_uring engine needs the blocking socket.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::unix::AsyncFd;
use tokio::io::Ready;

use super::{Listener, Worker};
use crate::conn::EchoStream;

/// Runs one worker on a tokio current-thread runtime; reports setup errors through
/// `worker.ready`.
pub(crate) fn run_worker(worker: Worker) {
    let Worker {
        index,
        listener,
        shared,
        ready,
    } = worker;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            ready.fail(anyhow::Error::new(err).context("cannot create the tokio runtime"));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .context("cannot register the listening socket with epoll")
        {
            Ok(listener) => listener,
            Err(err) => {
                ready.fail(err);
                return;
            }
        };
        ready.ok();
        let listener = EpollListener {
            inner: listener,
            buffer_size: shared.config.buffer_size,
        };
        super::serve(listener, index, Arc::clone(&shared)).await;
    });
}

struct EpollListener {
    inner: tokio::net::TcpListener,
    buffer_size: usize,
}

impl AsRawFd for EpollListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl Listener for EpollListener {
    type Stream = EpollStream;

    async fn accept(&self) -> io::Result<EpollStream> {
        let (stream, _peer) = self.inner.accept().await?;
        // Already non-blocking (tokio's accept); registered with the worker's epoll for read and
        // write readiness, like a `TcpStream`.
        let stream = stream.into_std()?;
        // SAFETY: the `TcpStream` owns its fd and moves into the `AsyncFd`, which is the only way
        // to reach it from here on (no `get_mut`, no `into_inner`): the fd stays open and the
        // same for the registration's whole life.
        Ok(EpollStream(unsafe { AsyncFd::register(stream) }?))
    }

    fn buffer(&self) -> Vec<u8> {
        Vec::with_capacity(self.buffer_size)
    }
}

pub(crate) struct EpollStream(AsyncFd<std::net::TcpStream>);

impl AsRawFd for EpollStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// `recvfrom(fd, ptr, len, 0, NULL, NULL)` without glibc's cancellation bracket.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn recv(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    let null = std::ptr::null_mut::<libc::c_void>();
    let n = libc::syscall(libc::SYS_recvfrom, fd, ptr, len, 0, null, null);
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `sendto(fd, ptr, len, MSG_NOSIGNAL, NULL, 0)` without glibc's cancellation bracket.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes.
unsafe fn send(fd: RawFd, ptr: *const u8, len: usize) -> io::Result<usize> {
    let null = std::ptr::null::<libc::c_void>();
    let n = libc::syscall(libc::SYS_sendto, fd, ptr, len, libc::MSG_NOSIGNAL, null, 0);
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl EchoStream for EpollStream {
    type Buf = Vec<u8>;

    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        let cap = buf.capacity();
        let fd = self.0.as_raw_fd();
        loop {
            let mut guard = match self.0.readable().await {
                Ok(guard) => guard,
                Err(err) => return (Err(err), buf),
            };
            // SAFETY: the spare capacity of `buf` (len 0) is `cap` writable bytes.
            match unsafe { recv(fd, buf.as_mut_ptr(), cap) } {
                Ok(n) => {
                    assert!(n <= cap, "recvfrom returned more than it was given");
                    // SAFETY: the kernel initialised the first n <= cap bytes.
                    unsafe { buf.set_len(n) };
                    if n > 0 && n < cap {
                        guard.clear_ready_matching(Ready::READABLE);
                    }
                    return (Ok(n), buf);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready_matching(Ready::READABLE);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return (Err(err), buf),
            }
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        let data = &buf[..len];
        let fd = self.0.as_raw_fd();
        let mut sent = 0;
        while sent < len {
            let mut guard = match self.0.writable().await {
                Ok(guard) => guard,
                Err(err) => return (Err(err), buf),
            };
            let rest = &data[sent..];
            // SAFETY: `rest` is `rest.len()` readable bytes.
            match unsafe { send(fd, rest.as_ptr(), rest.len()) } {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => {
                    assert!(n <= rest.len(), "sendto returned more than it was given");
                    if n < rest.len() {
                        guard.clear_ready_matching(Ready::WRITABLE);
                    }
                    sent += n;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready_matching(Ready::WRITABLE);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return (Err(err), buf),
            }
        }
        (Ok(()), buf)
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.0.get_ref().set_nodelay(nodelay)
    }
}
