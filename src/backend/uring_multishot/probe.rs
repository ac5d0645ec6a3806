//! Kernel features the engine depends on, found by trying them on a scratch ring: never from
//! the kernel version (backports and distribution kernels make version numbers lie).
//!
//! [`features`] probes once per process and caches the answer; each engine instance and the
//! tests read it from there. Each feature has its own small probe function returning
//! `io::Result<bool>`: `Ok(false)` when the kernel refuses the feature in the documented way,
//! `Err` when the probe itself could not run (the caller then assumes the feature is absent and
//! the engine uses its fallback). New features get a field in [`Features`] and a function here.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, IoUring};

use super::buf_ring::{BufRing, BGID};
use super::sq::with_recv_budget;

/// What the running kernel supports, of what the engine can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// A multishot receive takes a total byte budget (`IORING_RECV_MSHOT_LIM`, Linux 6.17): the
    /// engine's per-connection backpressure (see the module docs of the engine). Without it the
    /// engine only cancels a connection's receive at its queue cap.
    pub recv_budget: bool,
}

/// The features of the running kernel, probed on first use and cached for the process. A probe
/// that cannot run counts as "absent" (logged once).
pub fn features() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(|| {
        let recv_budget = recv_budget().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cannot probe the multishot receive byte budget; not using it");
            false
        });
        let features = Features { recv_budget };
        tracing::debug!(?features, "io_uring features probed");
        features
    })
}

/// Whether a multishot receive honours a total byte budget: arms one with a budget of two
/// bytes on a socket pair and feeds it one byte at a time. Kernels without the budget refuse the
/// SQE (EINVAL: the field must be zero there). With it, the receive stays armed after the first
/// byte (`F_MORE`) and ends after the second, when the budget is spent.
pub fn recv_budget() -> io::Result<bool> {
    let mut ring = IoUring::new(4)?;
    let mut bufs = BufRing::new(2, 64)?;
    bufs.register(&ring.submitter())?;
    let (ours, mut peer) = UnixStream::pair()?;
    let entry = with_recv_budget(
        opcode::RecvMulti::new(Fd(ours.as_raw_fd()), BGID)
            .build()
            .user_data(1),
        2,
    );
    // SAFETY: the SQE points at no memory of ours but the provided buffers, which `bufs` keeps
    // mapped unless released below, after the recv's final CQE.
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| io::Error::other("probe ring has no free SQE"))?;
    peer.write_all(b"x")?;
    let mut supported = false;
    let mut armed = match next_cqe(&mut ring)? {
        Some((res, _)) if res == -libc::EINVAL => false,
        Some((1, flags)) if cqueue::more(flags) => {
            peer.write_all(b"y")?;
            match next_cqe(&mut ring)? {
                Some((res, flags)) => {
                    supported = res == 1 && !cqueue::more(flags);
                    cqueue::more(flags)
                }
                None => return Err(io::Error::other("no completion for the probe's 2nd byte")),
            }
        }
        Some((res, flags)) => {
            tracing::debug!(res, flags, "unexpected completion of the probe receive");
            cqueue::more(flags)
        }
        None => return Err(io::Error::other("no completion for the probe receive")),
    };
    if armed {
        // Still armed: end it with EOF and wait for its last CQE.
        drop(peer);
        while let Some((_, flags)) = next_cqe(&mut ring)? {
            if !cqueue::more(flags) {
                armed = false;
                break;
            }
        }
    }
    if !armed && bufs.unregister(&ring.submitter()).is_ok() {
        bufs.release();
    }
    Ok(supported)
}

/// Submits and waits up to one second for the next CQE: `(result, flags)`.
fn next_cqe(ring: &mut IoUring) -> io::Result<Option<(i32, u32)>> {
    if let Some(cqe) = ring.completion().next() {
        return Ok(Some((cqe.result(), cqe.flags())));
    }
    let ts = Timespec::new().sec(1);
    match ring
        .submitter()
        .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
    {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => return Err(e),
    }
    Ok(ring
        .completion()
        .next()
        .map(|cqe| (cqe.result(), cqe.flags())))
}
