//! One worker's engine: ring setup, the run, and a teardown that never hands the kernel freed
//! memory.
//!
//! Teardown: after the loop ends, everything still queued is submitted, the buffer group is
//! unregistered (no operation can pick a buffer any more) and the ring is dropped. If the loop
//! gave up on connections whose operations were still in flight (the drain grace ran out, or
//! waiting on the ring failed), those operations may still receive into a buffer or send from
//! one until the kernel has cancelled them, which happens asynchronously after the ring fd is
//! closed. Their buffers therefore neither go back to the ring nor get unmapped: the whole pool
//! stays mapped for the life of the process (a leak of one worker's pool, bounded, at exit or
//! after a ring failure), and the [`Report`] says so. The abandoned sockets' fds, for which no
//! io_uring `Close` was submitted, are closed by hand once the ring is gone.

use std::io;
use std::marker::PhantomData;
use std::net::TcpListener;
use std::os::fd::RawFd;

use io_uring::IoUring;

use super::buf_ring::BufRing;
use super::event_loop::Loop;
use super::params::Params;
use super::probe;
use super::sq::Sq;
use crate::policy::Admission;
use crate::shutdown::Shutdown;
use crate::stats::{Counts, WorkerStats};

/// What a finished [`Engine::run`] leaves behind; the tests check it for leaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Provided buffers in the pool.
    pub buffers: usize,
    /// Buffers back in the ring at exit. With `buffers_abandoned`, equal to `buffers` unless a
    /// buffer was lost.
    pub buffers_in_ring: usize,
    /// Buffers still held by abandoned connections (not returned: an operation may use them).
    pub buffers_abandoned: usize,
    /// Connections whose operations had not completed when the engine gave up on them (drain
    /// grace over, or a ring failure); their fds were closed after the ring was dropped.
    pub connections_abandoned: usize,
    /// Bytes of buffer pool and descriptor ring left mapped for the rest of the process, because
    /// abandoned operations might still use them. 0 after a clean exit.
    pub pool_bytes_leaked: usize,
    /// Receives were armed with the multishot byte budget (see [`probe::Features`]).
    pub recv_budget: bool,
    /// Most buffers one connection held at once (the backpressure bound).
    pub peak_conn_buffers: usize,
    /// `io_uring_enter` calls that waited for completions (one per loop iteration).
    pub waits: u64,
    /// Completions handled.
    pub completions: u64,
    /// Sends submitted.
    pub sends: u64,
    /// Receives that ended with ENOBUFS (pool empty) and parked their connection.
    pub parks: u64,
}

/// One worker's io_uring, buffer pool and listener.
///
/// Not `Send`: the ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN`, so only the thread that
/// created it may submit to it and run its completions. Build the engine on the thread that
/// will run it.
pub struct Engine {
    // Field order is drop order: the ring (and so every op that might touch the pool) goes first.
    ring: IoUring,
    bufs: BufRing,
    listener: Option<TcpListener>,
    params: Params,
    recv_budget: bool,
    /// `SINGLE_ISSUER | DEFER_TASKRUN` ring: must stay on the thread that created it.
    _not_send: PhantomData<*const ()>,
}

impl Engine {
    /// Sets up the ring (`SINGLE_ISSUER | DEFER_TASKRUN`) and registers the buffer pool.
    /// Must be called on the thread that calls [`Engine::run`].
    pub fn new(listener: TcpListener, params: Params) -> io::Result<Self> {
        params.validate()?;
        let cq_entries = params.ring_entries.saturating_mul(4).clamp(64, 65536);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(cq_entries)
            .build(params.ring_entries)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "io_uring setup with {} entries and SINGLE_ISSUER|DEFER_TASKRUN failed: {e} \
                         (the uring-multishot runtime needs Linux >= 6.1 with io_uring enabled)",
                        params.ring_entries
                    ),
                )
            })?;
        let mut bufs = BufRing::new(params.buffers, params.buffer_size)?;
        bufs.register(&ring.submitter()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering the provided buffer ring failed: {e} (needs Linux >= 5.19)"),
            )
        })?;
        let recv_budget = probe::features().recv_budget && !params.disable_recv_budget;
        Ok(Engine {
            ring,
            bufs,
            listener: Some(listener),
            params,
            recv_budget,
            _not_send: PhantomData,
        })
    }

    /// Serves connections until `shutdown` asks for a stop, then stops accepting and lets open
    /// connections finish for up to the drain timeout, or until `shutdown` forces them; then
    /// shuts the rest down and returns. Both requests are read once per tick.
    ///
    /// Connections are admitted through `admission`; counts go to `stats` (once per tick and at
    /// exit). An `Err` means the ring itself failed.
    pub fn run(
        self,
        stats: &WorkerStats,
        admission: &Admission,
        shutdown: &Shutdown,
    ) -> io::Result<Report> {
        let Engine {
            mut ring,
            mut bufs,
            mut listener,
            params,
            recv_budget,
            _not_send,
        } = self;
        let min_wait_supported = ring.params().is_feature_min_timeout();
        let (submitter, queue, mut cq) = ring.split();
        let mut lp = Loop::new(
            Sq::new(submitter, queue),
            &mut bufs,
            &params,
            stats,
            admission,
            &mut listener,
            recv_budget,
            min_wait_supported,
        );
        let result = lp.run(&mut cq, shutdown);
        lp.flush_counts();
        // Submit whatever is still queued (a Close among it runs inline), so that the fds closed
        // by hand below are exactly those no Close op was ever submitted for.
        lp.sq.submit_all();
        let abandoned = lp.conns.len();
        let touching = lp.conns.iter().any(|(_, c)| c.touches_buffers());
        let buffers_abandoned = lp.conns.iter().map(|(_, c)| c.queue.len()).sum();
        let fds: Vec<RawFd> = lp
            .conns
            .iter()
            .filter(|(_, c)| !c.close_pending)
            .map(|(_, c)| c.fd)
            .collect();
        let unregistered = lp.bufs.unregister(&lp.sq.submitter);
        if let Err(err) = &unregistered {
            tracing::warn!(error = %err, "cannot unregister the provided buffer ring");
        }
        if unregistered.is_ok() && !touching {
            // No buffer can be picked any more and no op holds one: the memory is ours again.
            lp.bufs.release();
        }
        let tally = lp.tally;
        // Dropping the connections releases their places in the connection count.
        drop(lp);
        drop(cq);
        drop(ring);
        for fd in fds {
            // SAFETY: these fds belong to connections whose Close op was never submitted; the
            // ring that referenced them is gone, so closing here is the only close.
            unsafe {
                libc::close(fd);
            }
        }
        drop(listener);
        let report = Report {
            buffers: bufs.count(),
            buffers_in_ring: bufs.in_ring(),
            buffers_abandoned,
            connections_abandoned: abandoned,
            pool_bytes_leaked: bufs.bytes_to_leak(),
            recv_budget,
            peak_conn_buffers: tally.peak_conn_buffers,
            waits: tally.waits,
            completions: tally.completions,
            sends: tally.sends,
            parks: tally.parks,
        };
        drop(bufs); // unmaps, or leaks if the kernel may still use the memory
        if abandoned > 0 {
            stats.add(&Counts {
                closed: abandoned as u64,
                ..Counts::default()
            });
            tracing::warn!(
                connections = abandoned,
                pool_bytes_leaked = report.pool_bytes_leaked,
                "uring-multishot worker abandoned connections whose operations did not complete; \
                 their buffers stay mapped"
            );
        }
        if report.buffers_in_ring + report.buffers_abandoned != report.buffers {
            tracing::warn!(
                buffers = report.buffers,
                in_ring = report.buffers_in_ring,
                abandoned = report.buffers_abandoned,
                "uring-multishot worker exited with provided buffers unaccounted for"
            );
        }
        result.map(|()| report)
    }
}
