//! epoll engine: a tokio current-thread runtime plus a `LocalSet`, the same shape as a
//! tokio-uring worker, so both tokio engines run identical accept and echo code.
//!
//! Reads and writes go through tokio's own `AsyncRead`/`AsyncWrite` for `TcpStream`, exactly as
//! a plain tokio echo server does, so the A/B against io_uring measures the engine and not a
//! hand-rolled readiness loop. That matters for the syscall count: tokio's `poll_read` takes a
//! short read (fewer bytes than the buffer holds) as proof that the socket is drained and clears
//! its cached readiness, so the next read waits for epoll instead of calling `recvfrom(2)` once
//! more for an `EAGAIN` — one syscall per message less than `readable()` + `try_read`. A FIN is
//! not lost that way: tokio never clears the read-closed readiness, so a pending EOF is still
//! seen (the edge-triggered trap in the project notes). The buffer API mirrors io_uring's owned
//! buffers: the `Vec` goes in and comes back, and reads fill its spare capacity, so neither
//! engine zeroes memory per read.
//!
//! The listener is switched to non-blocking here, and only here: tokio requires it, while the
//! io_uring engine needs the blocking socket.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        Ok(EpollStream(stream))
    }

    fn buffer(&self) -> Vec<u8> {
        Vec::with_capacity(self.buffer_size)
    }
}

pub(crate) struct EpollStream(tokio::net::TcpStream);

impl AsRawFd for EpollStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl EchoStream for EpollStream {
    type Buf = Vec<u8>;

    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        // Reads into the spare capacity (the whole buffer, since len is 0).
        let res = self.0.read_buf(&mut buf).await;
        (res, buf)
    }

    async fn write_all(&mut self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        let res = self.0.write_all(&buf[..len]).await;
        (res, buf)
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.0.set_nodelay(nodelay)
    }
}
