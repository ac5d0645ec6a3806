//! The slice bookkeeping of [`BufRing`] under incremental consumption.
//!
//! **Incremental consumption** (`--feature buf_ring_inc`, `IOU_PBUF_RING_INC`, Linux 6.12): the
//! ring is registered so that a receive takes only the bytes it needs from the buffer at the
//! ring head. The CQE names the buffer; its data starts where the previous receive into that
//! buffer stopped, which only we can know, so [`BufRing::take_slice`] keeps a per-buffer
//! `consumed` offset (the sum of the bytes CQEs reported for it since it was last recycled).
//! `IORING_CQE_F_BUF_MORE` on the CQE means the kernel left the buffer at the ring head and the
//! next receive, *of any connection*, continues in it; without it the kernel has moved its head
//! past the buffer and will never write into it again. So one buffer carries several *slices*,
//! possibly of several connections, and each is sent (and released with [`BufRing::put`])
//! separately. Invariants:
//! - A buffer is held by the engine (its bit clear) from the CQE of its first slice until it is
//!   recycled, and is recycled only when **both** the kernel is done with it (`kernel_done`: a CQE
//!   for it without `BUF_MORE`) **and** no slice of it is outstanding (`outstanding`, +1 per
//!   slice taken, -1 per slice put). Recycling earlier would publish a second descriptor for
//!   memory the kernel still writes into, or hand the kernel bytes a send still reads.
//! - A receive ending, failing or being cancelled does *not* make the kernel done with a
//!   partly consumed buffer: the buffer belongs to the ring's head, not to the receive, and the
//!   next receive of any connection continues in it. Only a CQE without `BUF_MORE` does, or
//!   unregistering the group ([`BufRing::reclaim_partial`], at teardown, when no operation can
//!   still use a buffer).
//! - Only CQEs with data (`res > 0`) count: a zero-byte completion consumed nothing, and some
//!   6.12 kernels reported such a completion without `BUF_MORE` while leaving the buffer at the
//!   head (fixed upstream and in stable kernels since).
//! - Refused loudly (a [`TakeError`], the connection fails, the slice is not used): a CQE
//!   naming a buffer the kernel already finished and we have not recycled, one naming a buffer
//!   outside the pool, a slice that would reach past the end of the buffer, and `BUF_MORE` on a
//!   buffer with no byte left. The last two mean our offset no longer matches the kernel's, so
//!   the buffer is *poisoned*: its later CQEs are refused too (no slice at a wrong offset, which
//!   would echo another connection's bytes) and it stays out of the ring, since the kernel may
//!   still write into it, until the group is unregistered. A pool one buffer short is the cost
//!   of a kernel that broke its side; the exit report shows it.
//! - The offsets are right only if the CQEs of one buffer arrive in the order the kernel
//!   consumed it. Kernels order them since a fix of May 2025 (io-uring list: "ensure deferred
//!   completions are flushed for multishot", marked for stable 6.1+); before it, a finishing
//!   multishot receive's CQE (posted at the end of a task-work run) could follow the CQE of a
//!   later receive into the same buffer, which the checks above catch only when the swap
//!   crosses the end of a buffer. The byte-verified tests are what tells on such a kernel.
//! - Descriptors: the kernel now also *writes* the head descriptor (its address and length
//!   advance), so the engine never reads a descriptor back in this mode ([`BufRing::bid_at`] is
//!   for bundles only) and [`BufRing::recycle`] writes only slots past the kernel's reach, as
//!   before. A partly consumed buffer keeps its descriptor in the ring while we hold it, so the
//!   ring holds at most one descriptor per buffer, still at most `count`.
//! - The per-connection cap counts slices, not buffers: a slice pins its whole buffer (the
//!   buffer returns only when its last slice is sent), so a connection's slices bound the
//!   buffers it keeps out of the ring exactly as whole buffers did, and the backpressure bound
//!   (`ops`) is unchanged. A buffer shared by several connections counts once for each.

use std::io;

use io_uring::types::IOU_PBUF_RING_INC;
use io_uring::Submitter;

use super::{BufRing, TakeError, BGID};

/// One buffer's state under incremental consumption (module docs), meaningful while the engine
/// holds the buffer; reset when a CQE takes it from the ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Slices {
    /// Bytes of the buffer the kernel has filled since it was taken: where the next slice
    /// starts.
    consumed: u32,
    /// Slices taken and not yet put back (queued, in a send, or awaiting a zero-copy
    /// notification).
    outstanding: u32,
    /// A CQE for the buffer came without `BUF_MORE`: the kernel will not write into it again.
    kernel_done: bool,
    /// A CQE claimed a slice that does not fit the buffer: where the kernel writes next in it is
    /// unknown, so no slice is taken from it and it stays out of the ring until the group is
    /// unregistered ([`BufRing::reclaim_partial`]).
    poisoned: bool,
}

impl BufRing {
    /// [`BufRing::register`] with `IOU_PBUF_RING_INC` (Linux 6.12): receives consume buffers
    /// incrementally, and the engine must take them with [`BufRing::take_slice`] from now on.
    /// On an error nothing is registered and the ring stays a plain one.
    pub(crate) fn register_incremental(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        self.register_with(submitter, BGID, IOU_PBUF_RING_INC as u16)?;
        self.enable_incremental();
        Ok(())
    }

    /// Switches the bookkeeping to slices (before any buffer is taken).
    pub(super) fn enable_incremental(&mut self) {
        assert_eq!(
            self.in_ring, self.count as usize,
            "incremental consumption switched on with buffers held"
        );
        self.inc = true;
        self.slices = vec![Slices::default(); self.count as usize].into_boxed_slice();
    }

    /// Whether buffers are consumed incrementally (registered with `IOU_PBUF_RING_INC`).
    pub(in crate::backend::uring_multishot) fn is_incremental(&self) -> bool {
        self.inc
    }

    /// Records the slice of `len > 0` bytes that a receive CQE put into buffer `bid` under
    /// incremental consumption, `more` its `IORING_CQE_F_BUF_MORE`; returns the offset in the
    /// buffer where the slice starts. The first slice takes the buffer from the ring. Checks
    /// everything before changing anything: a refused CQE changes nothing, except that a slice
    /// that does not fit poisons the buffer (module docs).
    pub(in crate::backend::uring_multishot) fn take_slice(
        &mut self,
        bid: u16,
        len: u32,
        more: bool,
    ) -> Result<u32, TakeError> {
        assert!(self.inc, "slice taken from a ring that is not incremental");
        if bid >= self.count {
            return Err(TakeError::Unknown(bid));
        }
        let first = self.is_in_ring(bid);
        let state = if first {
            Slices::default()
        } else {
            self.slices[bid as usize]
        };
        if state.poisoned {
            return Err(TakeError::Poisoned(bid));
        }
        if state.kernel_done {
            return Err(TakeError::KernelDone(bid));
        }
        if first {
            let (word, mask) = Self::bit(bid);
            self.in_ring_bits[word] &= !mask;
            self.in_ring -= 1;
        }
        let end = u64::from(state.consumed) + u64::from(len);
        let size = self.buf_size as u64;
        if len == 0 || end > size || (more && end == size) {
            self.slices[bid as usize] = Slices {
                poisoned: true,
                ..state
            };
            return Err(TakeError::BeyondBuffer { bid, end });
        }
        self.slices[bid as usize] = Slices {
            consumed: end as u32,
            outstanding: state.outstanding + 1,
            kernel_done: !more,
            poisoned: false,
        };
        Ok(state.consumed)
    }

    /// The incremental half of [`BufRing::put`]: one slice of `bid` goes back, and the buffer
    /// once the kernel is done with it and no slice is outstanding.
    pub(super) fn put_slice(&mut self, bid: u16) {
        assert!(
            bid < self.count && !self.is_in_ring(bid),
            "slice of provided buffer {bid} put back, but the engine does not hold that buffer"
        );
        let state = &mut self.slices[bid as usize];
        assert!(
            state.outstanding > 0,
            "slice of provided buffer {bid} put back, but none is outstanding"
        );
        state.outstanding -= 1;
        if state.outstanding == 0 && state.kernel_done && !state.poisoned {
            self.recycle(bid);
        }
    }

    /// After the group is unregistered and no operation can use a buffer any more: the kernel is
    /// done with the buffers it had partly consumed, so those without outstanding slices go back
    /// to the ring (and count as returned). No-op unless incremental.
    pub(in crate::backend::uring_multishot) fn reclaim_partial(&mut self) {
        if !self.inc {
            return;
        }
        for bid in 0..self.count {
            if self.is_in_ring(bid) {
                continue;
            }
            let state = &mut self.slices[bid as usize];
            state.kernel_done = true;
            state.poisoned = false;
            if state.outstanding == 0 {
                self.recycle(bid);
            }
        }
    }

    /// Buffers the kernel has partly consumed and still uses (or poisoned ones), with no slice
    /// outstanding: held by nobody but the kernel (0 after [`BufRing::reclaim_partial`], or
    /// unless incremental).
    pub(in crate::backend::uring_multishot) fn kernel_partial(&self) -> usize {
        if !self.inc {
            return 0;
        }
        (0..self.count)
            .filter(|&bid| {
                let state = self.slices[bid as usize];
                !self.is_in_ring(bid)
                    && (!state.kernel_done || state.poisoned)
                    && state.outstanding == 0
            })
            .count()
    }
}
