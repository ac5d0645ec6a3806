//! epoll engine: a tokio current-thread runtime plus a `LocalSet`, the same shape as a
//! tokio-uring worker, so both tokio engines run identical accept and echo code.
//!
//! Reads and writes are readiness-based: wait for epoll to report the socket readable/writable,
//! then `read(2)`/`write(2)` without blocking; `WouldBlock` clears tokio's cached readiness and
//! waits again (edge-triggered, so a short read is never taken to mean "drained"). The buffer
//! API mirrors io_uring's owned buffers: the `Vec` goes in and comes back, and reads fill its
//! spare capacity, so neither engine zeroes memory per read.
//!
//! The listener is switched to non-blocking here, and only here: tokio requires it, while the
//! io_uring engine needs the blocking socket.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use anyhow::Context;

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

    async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        loop {
            if let Err(err) = self.0.readable().await {
                return (Err(err), buf);
            }
            // Reads into the spare capacity (the whole buffer, since len is 0).
            match self.0.try_read_buf(&mut buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                res => return (res, buf),
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        let mut written = 0;
        while written < len {
            if let Err(err) = self.0.writable().await {
                return (Err(err), buf);
            }
            match self.0.try_write(&buf[written..len]) {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return (Err(err), buf),
            }
        }
        (Ok(()), buf)
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.0.set_nodelay(nodelay)
    }
}
