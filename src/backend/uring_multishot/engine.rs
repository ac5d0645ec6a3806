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
//!
//! Under incremental consumption (`buf_ring`), a buffer the kernel had partly filled when the
//! loop ended is still its own until the group is unregistered; after a clean teardown it goes
//! back with the others ([`BufRing::reclaim_partial`]), so "every buffer back" still means
//! `buffers_in_ring == buffers`.

use std::io;
use std::marker::PhantomData;
use std::net::TcpListener;
use std::os::fd::RawFd;

use io_uring::{opcode, IoUring};

use super::buf_ring::BufRing;
use super::event_loop::{Loop, Modes};
use super::params::{Params, RecvBudget, REQUIRED};
use super::sq::Sq;
use crate::config::BatchPolicy;
use crate::policy::Admission;
use crate::probe::{self, Feature, Features, Usage};
use crate::shutdown::Shutdown;
use crate::stats::{Counts, WorkerStats};

/// Opcodes the engine submits, with their names for the error that names a missing one.
const OPCODES: [(u8, &str); 6] = [
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Close::CODE, "CLOSE"),
    (opcode::Timeout::CODE, "TIMEOUT"),
];

/// What a finished [`Engine::run`] leaves behind; the tests check it for leaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Provided buffers in the pool.
    pub buffers: usize,
    /// Buffers back in the ring at exit. With `buffers_abandoned`, equal to `buffers` unless a
    /// buffer was lost.
    pub buffers_in_ring: usize,
    /// Buffers still held by abandoned connections (not returned: an operation may use them).
    /// A buffer whose slices several of them hold counts once.
    pub buffers_abandoned: usize,
    /// Connections whose operations had not completed when the engine gave up on them (drain
    /// grace over, or a ring failure); their fds were closed after the ring was dropped.
    pub connections_abandoned: usize,
    /// Bytes of buffer pool and descriptor ring left mapped for the rest of the process, because
    /// abandoned operations might still use them. 0 after a clean exit.
    pub pool_bytes_leaked: usize,
    /// New receives were armed as budgeted multishot receives at exit (see the `ops` module
    /// docs); `false`: single-shot receives, from the start or after the kernel refused the
    /// budget.
    pub recv_budget: bool,
    /// Every `io_uring_enter` went through the registered ring fd (`ring_fd` in use).
    pub ring_fd: bool,
    /// Budgeted receives the kernel refused (EINVAL), each re-armed as a single-shot receive on
    /// its own connection.
    pub budget_refused: u64,
    /// Receive SQEs submitted (multishot or single-shot).
    pub recvs: u64,
    /// Most buffers one connection held at once (the backpressure bound).
    pub peak_conn_buffers: usize,
    /// `io_uring_enter` calls that waited for completions (one per loop iteration).
    pub waits: u64,
    /// Of those, waits for a batch: more completions than the sends just submitted plus one,
    /// bounded by `min_wait` or a timeout (`--batch-wait`; the adaptive policy under load).
    pub batched_waits: u64,
    /// Completions handled.
    pub completions: u64,
    /// Sends submitted.
    pub sends: u64,
    /// Receive CQEs that brought several buffers at once (`bundle` in use).
    pub recv_bundles: u64,
    /// Of the sends, zero-copy ones (`send_zc` in use).
    pub sends_zc: u64,
    /// Zero-copy notifications received (each returned its connection's held buffers once its
    /// count of pending ones reached zero).
    pub zc_notifications: u64,
    /// Receive CQEs that left the rest of their buffer to later receives
    /// (`IORING_CQE_F_BUF_MORE`; `buf_ring_inc` in use).
    pub buf_more: u64,
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
    usage: Usage,
    /// `SINGLE_ISSUER | DEFER_TASKRUN` ring: must stay on the thread that created it.
    _not_send: PhantomData<*const ()>,
}

impl Engine {
    /// Sets up the ring (`SINGLE_ISSUER | DEFER_TASKRUN`) and registers the buffer pool, then
    /// decides from [`probe::features`] which optional features to use ([`Params::usage`]).
    /// Must be called on the thread that calls [`Engine::run`].
    ///
    /// A kernel without io_uring, or without what the engine cannot run without, is one error
    /// that names the cause and the `--runtime epoll` alternative.
    pub fn new(listener: TcpListener, params: Params) -> io::Result<Self> {
        params.validate()?;
        // NO_SQARRAY is tried, not looked up: the probe runs only once a ring works (where
        // io_uring is blocked, the setup error below is the one line to report). A kernel that
        // refuses the flag (EINVAL) gets the ring without it, its fallback.
        let (ring, sqarray_refused) = match build_ring(&params, params.no_sqarray) {
            Err(e) if params.no_sqarray && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(error = %e, "IORING_SETUP_NO_SQARRAY refused; using the SQ array");
                (build_ring(&params, false), true)
            }
            built => (built, false),
        };
        let ring = ring.map_err(|e| {
            let flags = [
                Feature::SingleIssuer,
                Feature::DeferTaskrun,
                Feature::SubmitAll,
            ];
            io::Error::new(e.kind(), probe::explain_setup_error(&e, &flags))
        })?;
        let mut features = probe::features();
        let mut bufs = BufRing::new(params.buffers, params.buffer_size)?;
        let registered = if params.buf_ring_inc && features.has(Feature::BufRingInc) {
            bufs.register_incremental(&ring.submitter()).or_else(|e| {
                // Nothing was registered: the plain ring is the fallback.
                tracing::warn!(
                    error = %e,
                    "cannot register the provided buffer ring for incremental consumption \
                     (IOU_PBUF_RING_INC); using the plain ring"
                );
                features.set(Feature::BufRingInc, false);
                bufs.register(&ring.submitter())
            })
        } else {
            if params.buf_ring_inc {
                tracing::warn!(
                    "buf_ring_inc asked for, but this kernel has no IOU_PBUF_RING_INC (Linux {}); \
                     using the plain provided-buffer ring",
                    Feature::BufRingInc.since()
                );
            }
            bufs.register(&ring.submitter())
        };
        registered.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "registering the provided buffer ring failed: {e} (needs Linux >= {}); \
                     --runtime epoll works without it",
                    Feature::BufRing.since()
                ),
            )
        })?;
        if params.no_sqarray {
            features.set(Feature::NoSqarray, !sqarray_refused);
        }
        // Proven by the setup and the registration above, whatever the probe could find out.
        for feature in [
            Feature::SingleIssuer,
            Feature::DeferTaskrun,
            Feature::SubmitAll,
            Feature::BufRing,
        ] {
            features.set(feature, true);
        }
        if params.ring_fd && features.has(Feature::RingFd) {
            // The registration is per thread, and `run` (on this thread) registers again on the
            // submitter it enters with: a trial here, so the `features:` line is true.
            let mut submitter = ring.submitter();
            let tried = submitter
                .register_ring_fd()
                .and_then(|()| submitter.unregister_ring_fd());
            if let Err(e) = tried {
                tracing::warn!(error = %e, "cannot register the ring fd; entering by its fd");
                features.set(Feature::RingFd, false);
            }
        }
        check_required(&params, &features)?;
        let usage = params.usage(&features);
        // The registration decided it; the loop's offsets depend on the two agreeing.
        assert_eq!(usage.uses(Feature::BufRingInc), bufs.is_incremental());
        if params.bundle && usage.uses(Feature::BufRingInc) {
            tracing::warn!(
                "bundle and buf_ring_inc both asked for: buf_ring_inc wins, receives are not \
                 bundled"
            );
        }
        Ok(Engine {
            ring,
            bufs,
            listener: Some(listener),
            params,
            usage,
            _not_send: PhantomData,
        })
    }

    /// What this engine uses, lacks and leaves off on this kernel.
    pub fn usage(&self) -> Usage {
        self.usage
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
            usage,
            _not_send,
        } = self;
        let modes = Modes {
            recv_budget: match params.recv_budget {
                RecvBudget::Probe => usage.uses(Feature::RecvBudget),
                RecvBudget::Off => false,
                RecvBudget::Force | RecvBudget::ForceRefused => true,
            },
            refused_budget_fault: params.recv_budget == RecvBudget::ForceRefused,
            multishot_timeout: usage.uses(Feature::MultishotTimeout),
            min_wait: usage.uses(Feature::MinWait),
            send_zc: usage.uses(Feature::SendZc),
            bundle: usage.uses(Feature::Bundle),
            buf_ring_inc: bufs.is_incremental(),
        };
        let (mut submitter, queue, mut cq) = ring.split();
        // Every `io_uring_enter` of the loop goes through this submitter, so the registered
        // index lives here (see `new` for the trial that makes a failure here unexpected).
        let ring_fd = usage.uses(Feature::RingFd)
            && match submitter.register_ring_fd() {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register the ring fd; entering by its fd");
                    false
                }
            };
        let mut lp = Loop::new(
            Sq::new(submitter, queue),
            &mut bufs,
            &params,
            stats,
            admission,
            &mut listener,
            modes,
        );
        let result = lp.run(&mut cq, shutdown);
        lp.flush_counts();
        // Submit whatever is still queued (a Close among it runs inline), so that the fds closed
        // by hand below are exactly those no Close op was ever submitted for.
        lp.sq.submit_all();
        let abandoned = lp.conns.len();
        let touching = lp.conns.iter().any(|(_, c)| c.touches_buffers());
        // Distinct buffers: under incremental consumption several slices may share one.
        let buffers_abandoned = lp
            .conns
            .iter()
            .flat_map(|(_, c)| {
                c.queue
                    .iter()
                    .map(|chunk| chunk.bid)
                    .chain(c.zc_held.iter().copied())
            })
            .collect::<std::collections::HashSet<u16>>()
            .len();
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
            // No buffer can be picked any more and no op holds one: the memory is ours again,
            // and so are the buffers the kernel had partly consumed.
            lp.bufs.reclaim_partial();
            lp.bufs.release();
        }
        if ring_fd {
            // A registered ring fd holds a reference to the ring until the thread exits: drop it,
            // so that closing the ring below really ends it (and cancels abandoned operations).
            if let Err(e) = lp.sq.submitter.unregister_ring_fd() {
                tracing::warn!(error = %e, "cannot unregister the ring fd");
            }
        }
        let tally = lp.tally;
        let recv_budget = lp.modes.recv_budget;
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
            // Partly consumed buffers no slice refers to, when they could not be reclaimed, are
            // left to the kernel like the abandoned connections' ones.
            buffers_abandoned: buffers_abandoned + bufs.kernel_partial(),
            connections_abandoned: abandoned,
            pool_bytes_leaked: bufs.bytes_to_leak(),
            recv_budget,
            ring_fd,
            budget_refused: tally.budget_refused,
            recvs: tally.recvs,
            peak_conn_buffers: tally.peak_conn_buffers,
            waits: tally.waits,
            batched_waits: tally.batched_waits,
            completions: tally.completions,
            sends: tally.sends,
            recv_bundles: tally.recv_bundles,
            sends_zc: tally.sends_zc,
            zc_notifications: tally.zc_notifications,
            buf_more: tally.buf_more,
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

/// The engine's ring: `SINGLE_ISSUER | DEFER_TASKRUN | SUBMIT_ALL`, a CQ four times the SQ, and
/// `NO_SQARRAY` if asked.
fn build_ring(params: &Params, no_sqarray: bool) -> io::Result<IoUring> {
    let cq_entries = params.ring_entries.saturating_mul(4).clamp(64, 65536);
    let mut builder = IoUring::builder();
    builder
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .setup_cqsize(cq_entries);
    if no_sqarray {
        builder.setup_no_sqarray();
    }
    builder.build(params.ring_entries)
}

/// Refuses a kernel without a feature or an opcode the engine cannot run without.
fn check_required(params: &Params, features: &Features) -> io::Result<()> {
    let mut lacking: Vec<String> = REQUIRED
        .iter()
        .chain(matches!(params.batch_wait, BatchPolicy::Fixed(_)).then_some(&Feature::ExtArg))
        .filter(|f| !features.has(**f))
        .map(|f| format!("{} (Linux {})", f.name(), f.since()))
        .collect();
    lacking.extend(
        OPCODES
            .iter()
            .filter(|(code, _)| !features.has_opcode(*code))
            .map(|(_, name)| format!("IORING_OP_{name}")),
    );
    if lacking.is_empty() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "this kernel's io_uring lacks what the uring-multishot engine needs: {}; \
             --runtime epoll works without it",
            lacking.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BatchWait;
    use std::time::Duration;

    /// A kernel with every required feature and every opcode the engine submits but
    /// `missing_opcode` (by its name in [`OPCODES`]).
    fn kernel_lacking_opcode(missing_opcode: Option<&str>) -> Features {
        let mut f = Features::io_uring_only();
        for feature in REQUIRED {
            f.set(feature, true);
        }
        for (code, name) in OPCODES {
            if Some(name) != missing_opcode {
                f.set_opcode(code);
            }
        }
        f
    }

    /// A kernel with everything the engine needs.
    fn complete_kernel() -> Features {
        kernel_lacking_opcode(None)
    }

    #[test]
    fn a_kernel_lacking_a_required_feature_or_opcode_is_refused_by_name() {
        let params = Params::new(4096);
        assert!(check_required(&params, &complete_kernel()).is_ok());

        // 5.19 has buffer rings but not DEFER_TASKRUN (6.1); model it, and one opcode gone.
        let mut old = complete_kernel();
        old.set(Feature::DeferTaskrun, false);
        for (kernel, lacking) in [
            (old, "defer_taskrun (Linux 6.1)"),
            (kernel_lacking_opcode(Some("CLOSE")), "IORING_OP_CLOSE"),
        ] {
            let err = check_required(&params, &kernel).unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.kind(), io::ErrorKind::Unsupported);
            assert!(msg.contains(lacking), "{msg}");
            assert!(msg.contains("--runtime epoll works"), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn a_fixed_batch_wait_needs_ext_arg_and_the_others_do_not() {
        let kernel = complete_kernel(); // no EXT_ARG
        let mut fixed = Params::new(4096);
        fixed.batch_wait = BatchPolicy::Fixed(BatchWait {
            min_completions: 8,
            timeout: Duration::from_micros(200),
        });
        let msg = check_required(&fixed, &kernel).unwrap_err().to_string();
        assert!(msg.contains(Feature::ExtArg.name()), "{msg}");
        for policy in [BatchPolicy::Off, BatchPolicy::Inline, BatchPolicy::Adaptive] {
            let mut p = Params::new(4096);
            p.batch_wait = policy;
            assert!(check_required(&p, &kernel).is_ok(), "{policy:?}");
        }
    }
}
