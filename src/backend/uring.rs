//! io_uring engine: tokio-uring runtime, owned-buffer reads and writes submitted to the ring.
//!
//! - The runtime is built with `tokio_uring::builder()`, so `--ring-entries`, `--sqpoll` and
//!   `--coop-taskrun` reach `io_uring_setup(2)`. SINGLE_ISSUER + DEFER_TASKRUN is not offered:
//!   it has been reported to stall tokio-uring's driver (which waits for the ring fd through
//!   epoll, while deferred completions only run inside `io_uring_enter` with GETEVENTS).
//! - The listener is the blocking socket from [`crate::listener`], handed over with `from_std`
//!   (io_uring honours O_NONBLOCK and would return EAGAIN instead of parking the operation).
//!   Accepted sockets stay as tokio-uring creates them (blocking).
//! - Echo hands the very buffer the kernel filled back to the kernel for the write: no copy.
//!   Only `buf[..n]` is written (a `Vec`'s length does not shrink after a short read).
//!
//! `--fixed-buffers`: each worker registers one `FixedBufPool` of `buffer-size` buffers
//! (`Config::fixed_buffers_per_thread`: max-connections / threads, else 128, at most 1024).
//! A connection takes a registered buffer for its lifetime and uses `read_fixed`/`write_fixed`;
//! when the pool is empty it falls back to an ordinary buffer rather than waiting, so the pool
//! size affects speed, never availability. The registered memory is pinned and counted against
//! RLIMIT_MEMLOCK, which [`check_memlock`] compares up front (conservatively: every buffer is
//! assumed to straddle one extra page) so that a too-small limit is one clear error, not ENOMEM.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};
use tokio_uring::buf::BoundedBuf;

use super::{Listener, Worker};
use crate::config::Config;
use crate::conn::EchoStream;
use crate::probe::{self, Feature, Features, Usage};

const PAGE_SIZE: usize = 4096;

/// Runs one worker on a tokio-uring runtime; reports setup errors through `worker.ready`.
pub(crate) fn run_worker(worker: Worker) {
    let Worker {
        index,
        listener,
        shared,
        ready,
    } = worker;
    let uring = &shared.config.uring;
    let mut setup = tokio_uring::uring_builder();
    if let Some(idle_ms) = uring.sqpoll_idle_ms {
        setup.setup_sqpoll(idle_ms);
    }
    if uring.coop_taskrun {
        setup.setup_coop_taskrun();
    }
    let mut builder = tokio_uring::builder();
    builder.entries(uring.ring_entries).uring_builder(&setup);
    let rt = match tokio_uring::Runtime::new(&builder) {
        Ok(rt) => rt,
        Err(err) => {
            let mut flags = Vec::new();
            if uring.coop_taskrun {
                flags.push(Feature::CoopTaskrun);
            }
            if uring.sqpoll_idle_ms.is_some() {
                flags.push(Feature::Sqpoll);
            }
            ready.fail(
                anyhow::anyhow!(probe::explain_setup_error(&err, &flags)).context(format!(
                    "cannot set up io_uring ({})",
                    describe_setup(&shared.config)
                )),
            );
            return;
        }
    };
    let usage = usage(&shared.config, &probe::features());
    rt.block_on(async move {
        let listener = tokio_uring::net::TcpListener::from_std(listener);
        let pool = if shared.config.uring.fixed_buffers {
            match register_pool(&shared.config) {
                Ok(pool) => Some(pool),
                Err(err) => {
                    ready.fail(err);
                    return;
                }
            }
        } else {
            None
        };
        ready.ok_with(usage);
        let listener = UringListener {
            inner: listener,
            pool,
            buffer_size: shared.config.buffer_size,
        };
        super::serve(listener, index, Arc::clone(&shared)).await;
    });
}

/// What the tokio-uring engine does with each feature: its ring is set up by tokio-uring with
/// only the flags given (`--coop-taskrun`, `--sqpoll`), and its single-shot socket operations
/// rely on fast poll (without it the kernel runs them in worker threads) and on never-dropped
/// completions.
pub(crate) fn usage(config: &Config, features: &Features) -> Usage {
    let mut u = Usage::new();
    u.decide(Feature::Nodrop, true, features);
    u.decide(Feature::FastPoll, true, features);
    u.decide(Feature::CoopTaskrun, config.uring.coop_taskrun, features);
    u.decide(
        Feature::Sqpoll,
        config.uring.sqpoll_idle_ms.is_some(),
        features,
    );
    u
}

fn describe_setup(config: &Config) -> String {
    let uring = &config.uring;
    let mut s = format!("entries {}", uring.ring_entries);
    if let Some(ms) = uring.sqpoll_idle_ms {
        s += &format!(", SQPOLL idle {ms} ms");
    }
    if uring.coop_taskrun {
        s += ", COOP_TASKRUN";
    }
    s
}

/// Refuses `--fixed-buffers` when RLIMIT_MEMLOCK cannot hold every worker's pool.
pub(crate) fn check_memlock(config: &Config) -> anyhow::Result<()> {
    if !config.uring.fixed_buffers {
        return Ok(());
    }
    let per_buffer = config.buffer_size.div_ceil(PAGE_SIZE) * PAGE_SIZE + PAGE_SIZE;
    let buffers = config.fixed_buffers_per_thread() * config.threads;
    let needed = per_buffer as u128 * buffers as u128;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("cannot read RLIMIT_MEMLOCK");
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && needed > limit.rlim_cur as u128 {
        bail!(
            "--fixed-buffers needs up to {} KiB of locked memory ({} threads x {} buffers x {} bytes) \
             but RLIMIT_MEMLOCK is {} KiB: raise `ulimit -l`, or lower --buffer-size or --max-connections",
            needed.div_ceil(1024),
            config.threads,
            config.fixed_buffers_per_thread(),
            config.buffer_size,
            limit.rlim_cur / 1024
        );
    }
    Ok(())
}

fn register_pool(config: &Config) -> anyhow::Result<FixedBufPool<Vec<u8>>> {
    let count = config.fixed_buffers_per_thread();
    let size = config.buffer_size;
    let pool = FixedBufPool::new((0..count).map(|_| Vec::with_capacity(size)));
    pool.register().map_err(|err| {
        let hint = if err.raw_os_error() == Some(libc::ENOMEM) {
            " (locked memory limit too small? see `ulimit -l`)"
        } else {
            ""
        };
        anyhow::Error::new(err).context(format!(
            "cannot register {count} fixed buffers of {size} bytes{hint}"
        ))
    })?;
    Ok(pool)
}

struct UringListener {
    inner: tokio_uring::net::TcpListener,
    pool: Option<FixedBufPool<Vec<u8>>>,
    buffer_size: usize,
}

impl AsRawFd for UringListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl Listener for UringListener {
    type Stream = UringStream;

    async fn accept(&self) -> io::Result<UringStream> {
        let (stream, _peer) = self.inner.accept().await?;
        Ok(UringStream(stream))
    }

    fn buffer(&self) -> UringBuf {
        let fixed = self
            .pool
            .as_ref()
            .and_then(|p| p.try_next(self.buffer_size));
        match fixed {
            Some(buf) => UringBuf::Fixed(buf),
            None => UringBuf::Heap(Vec::with_capacity(self.buffer_size)),
        }
    }
}

/// A connection's buffer: registered (`--fixed-buffers`) or ordinary heap memory.
pub(crate) enum UringBuf {
    Heap(Vec<u8>),
    Fixed(FixedBuf),
}

pub(crate) struct UringStream(tokio_uring::net::TcpStream);

impl AsRawFd for UringStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl EchoStream for UringStream {
    type Buf = UringBuf;

    async fn read(&mut self, buf: UringBuf) -> (io::Result<usize>, UringBuf) {
        match buf {
            UringBuf::Heap(v) => {
                let (res, v) = self.0.read(v).await;
                (res, UringBuf::Heap(v))
            }
            UringBuf::Fixed(f) => {
                let (res, f) = self.0.read_fixed(f).await;
                (res, UringBuf::Fixed(f))
            }
        }
    }

    async fn write_all(&mut self, buf: UringBuf, len: usize) -> (io::Result<()>, UringBuf) {
        match buf {
            UringBuf::Heap(v) => {
                let (res, slice) = self.0.write_all(v.slice(..len)).await;
                (res, UringBuf::Heap(slice.into_inner()))
            }
            UringBuf::Fixed(f) => {
                let (res, slice) = self.0.write_fixed_all(f.slice(..len)).await;
                (res, UringBuf::Fixed(slice.into_inner()))
            }
        }
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.0.set_nodelay(nodelay)
    }
}
