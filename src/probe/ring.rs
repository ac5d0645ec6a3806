//! Probes that need a working ring: opcodes, registrations, and operations whose support the
//! kernel only reveals when it runs them. All of them share one scratch ring.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use io_uring::types::{Fd, SubmitArgs, TimeoutFlags, Timespec, IOU_PBUF_RING_INC};
use io_uring::{cqueue, opcode, IoUring, Probe};

use super::{Feature, Features};
use crate::backend::uring_multishot::buf_ring::{BufRing, BGID};
use crate::backend::uring_multishot::sq::with_recv_budget;

/// Buffer group of the incremental-consumption probe (the plain pool is [`BGID`]).
const BGID_INC: u16 = BGID + 1;
const UD_TIMEOUT: u64 = 1;
const UD_RECV_BUDGET: u64 = 2;
const UD_RECV_PLAIN: u64 = 3;

/// Runs every probe on one scratch ring; a probe that cannot run goes to `failures` and its
/// feature stays absent.
pub(super) fn probe(features: &mut Features, failures: &mut Vec<(&'static str, io::Error)>) {
    let mut ring = match IoUring::new(8) {
        Ok(ring) => ring,
        Err(err) => {
            failures.push(("the scratch ring", err));
            return;
        }
    };

    let mut probe = Probe::new();
    match ring.submitter().register_probe(&mut probe) {
        Ok(()) => {
            for code in 0..=u8::MAX {
                if probe.is_supported(code) {
                    features.set_opcode(code);
                }
            }
            features.set(Feature::SendZc, probe.is_supported(opcode::SendZc::CODE));
        }
        Err(err) => failures.push(("opcodes (IORING_REGISTER_PROBE)", err)),
    }

    let mut record = |feature: Feature, result: io::Result<bool>| match result {
        Ok(yes) => features.set(feature, yes),
        Err(err) => failures.push((feature.name(), err)),
    };
    record(Feature::RingFd, ring_fd(&ring));
    record(Feature::BufRingInc, buf_ring_inc(&ring));
    record(Feature::MultishotTimeout, multishot_timeout(&mut ring));
    match recv(&mut ring) {
        Ok(Recv {
            buf_ring,
            multishot,
            budget,
        }) => {
            features.set(Feature::BufRing, buf_ring);
            features.set(Feature::RecvMultishot, multishot);
            features.set(Feature::RecvBudget, budget);
        }
        Err(err) => failures.push(("provided-buffer receives", err)),
    }
}

/// `EINVAL` is how a kernel refuses a registration opcode or flag it does not know.
fn refused_as_unknown(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `IORING_REGISTER_RING_FDS`: registers the scratch ring's own fd, then unregisters it.
fn ring_fd(ring: &IoUring) -> io::Result<bool> {
    let mut submitter = ring.submitter();
    let registered = refused_as_unknown(submitter.register_ring_fd())?;
    if registered {
        submitter.unregister_ring_fd()?;
    }
    Ok(registered)
}

/// `IOU_PBUF_RING_INC`: registers a one-buffer ring with that flag (kernels without it refuse the
/// flag with EINVAL), then unregisters it.
fn buf_ring_inc(ring: &IoUring) -> io::Result<bool> {
    let mut bufs = BufRing::new(1, 64)?;
    let registered = refused_as_unknown(bufs.register_with(
        &ring.submitter(),
        BGID_INC,
        IOU_PBUF_RING_INC as u16,
    ))?;
    if registered {
        bufs.unregister(&ring.submitter())?;
    }
    // Registered and unregistered again, or never registered: no operation can use it.
    bufs.release();
    Ok(registered)
}

/// `IORING_TIMEOUT_MULTISHOT`: a 1 µs timeout that should fire twice, the first time with
/// `F_MORE`. Kernels without multishot timeouts refuse the flag (EINVAL in the CQE).
fn multishot_timeout(ring: &mut IoUring) -> io::Result<bool> {
    let ts = Timespec::new().nsec(1_000);
    let entry = opcode::Timeout::new(&ts)
        .count(2)
        .flags(TimeoutFlags::MULTISHOT)
        .build()
        .user_data(UD_TIMEOUT);
    // SAFETY: `ts` outlives the submission inside `next_cqe` (the kernel copies it then).
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| io::Error::other("probe ring has no free SQE"))?;
    let (res, flags) = next_cqe(ring, UD_TIMEOUT)?
        .ok_or_else(|| io::Error::other("no completion for the probe timeout"))?;
    let supported = res == -libc::ETIME && cqueue::more(flags);
    if res != -libc::ETIME && res != -libc::EINVAL {
        tracing::debug!(res, flags, "unexpected completion of the probe timeout");
    }
    let mut more = cqueue::more(flags);
    while more {
        match next_cqe(ring, UD_TIMEOUT)? {
            Some((_, flags)) => more = cqueue::more(flags),
            None => return Err(io::Error::other("the probe timeout did not end")),
        }
    }
    Ok(supported)
}

/// What the receive probe found.
struct Recv {
    buf_ring: bool,
    multishot: bool,
    budget: bool,
}

/// Provided-buffer rings, multishot receive and its byte budget, on a socket pair.
///
/// Budget: a multishot receive with a budget of two bytes, fed one byte at a time. Kernels
/// without the budget refuse the SQE (EINVAL: the field must be zero there). With it, the
/// receive stays armed after the first byte (`F_MORE`) and ends after the second, when the
/// budget is spent. Where the budget is refused, a plain multishot receive must stay armed
/// after a byte (`F_MORE`).
fn recv(ring: &mut IoUring) -> io::Result<Recv> {
    let mut bufs = BufRing::new(4, 64)?;
    let mut found = Recv {
        buf_ring: refused_as_unknown(bufs.register(&ring.submitter()))?,
        multishot: false,
        budget: false,
    };
    if !found.buf_ring {
        bufs.release();
        return Ok(found);
    }
    let (ours, mut peer) = UnixStream::pair()?;
    let arm = |ring: &mut IoUring, budget: Option<u32>, ud: u64| -> io::Result<()> {
        let mut entry = opcode::RecvMulti::new(Fd(ours.as_raw_fd()), BGID)
            .build()
            .user_data(ud);
        if let Some(bytes) = budget {
            entry = with_recv_budget(entry, bytes);
        }
        // SAFETY: the SQE points at no memory of ours but the provided buffers, which `bufs`
        // keeps mapped unless released below, after the receive's final CQE.
        unsafe { ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("probe ring has no free SQE"))
    };
    let no_cqe = || io::Error::other("no completion for the probe receive");

    arm(ring, Some(2), UD_RECV_BUDGET)?;
    peer.write_all(b"x")?;
    let mut armed = None;
    match next_cqe(ring, UD_RECV_BUDGET)?.ok_or_else(no_cqe)? {
        (res, _) if res == -libc::EINVAL => {}
        (1, flags) if cqueue::more(flags) => {
            found.multishot = true;
            peer.write_all(b"y")?;
            let (res, flags) = next_cqe(ring, UD_RECV_BUDGET)?.ok_or_else(no_cqe)?;
            found.budget = res == 1 && !cqueue::more(flags);
            armed = cqueue::more(flags).then_some(UD_RECV_BUDGET);
        }
        (res, flags) => {
            tracing::debug!(res, flags, "unexpected completion of the probe receive");
            armed = cqueue::more(flags).then_some(UD_RECV_BUDGET);
        }
    }
    if !found.multishot && armed.is_none() {
        // The budget was refused: does a plain multishot receive stay armed? ("x" is unread.)
        arm(ring, None, UD_RECV_PLAIN)?;
        let (res, flags) = next_cqe(ring, UD_RECV_PLAIN)?.ok_or_else(no_cqe)?;
        found.multishot = res == 1 && cqueue::more(flags);
        armed = cqueue::more(flags).then_some(UD_RECV_PLAIN);
    }
    if let Some(ud) = armed {
        // Still armed: end it with EOF and wait for its last CQE.
        drop(peer);
        while let Some((_, flags)) = next_cqe(ring, ud)? {
            if !cqueue::more(flags) {
                armed = None;
                break;
            }
        }
    }
    if armed.is_none() && bufs.unregister(&ring.submitter()).is_ok() {
        bufs.release();
    }
    Ok(found)
}

/// Submits and waits up to one second for the next CQE with user_data `ud` (others are
/// dropped): `(result, flags)`, or `None` if none came.
fn next_cqe(ring: &mut IoUring, ud: u64) -> io::Result<Option<(i32, u32)>> {
    loop {
        if let Some(cqe) = ring.completion().next() {
            if cqe.user_data() == ud {
                return Ok(Some((cqe.result(), cqe.flags())));
            }
            continue;
        }
        let ts = Timespec::new().sec(1);
        match ring
            .submitter()
            .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
        {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                // Nothing within the second, unless it raced the timeout.
                return Ok(ring
                    .completion()
                    .find(|cqe| cqe.user_data() == ud)
                    .map(|cqe| (cqe.result(), cqe.flags())));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}
