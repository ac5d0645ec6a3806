//! Submission side: the SQ wrapper, what a CQE's user_data says, and the one SQE field the
//! io-uring crate does not expose.
//!
//! - user_data: the [`Op`] in the top byte, the connection's slab slot in the low 32 bits (the
//!   engine refuses a connection whose slot would not fit).
//! - [`Sq::push`] never fails and never drops an op: a full SQ is submitted early, and if it is
//!   still full the entry waits in an overflow list that the loop flushes before its wait.
//! - [`with_recv_budget`] writes the multishot receive byte budget (`sqe->optlen`,
//!   `IORING_RECV_MSHOT_LIM`, Linux 6.17) into a built `RecvMulti` entry. It depends on the
//!   private layout of `io_uring::squeue::Entry` (`#[repr(C)]` around the kernel's 64-byte
//!   `io_uring_sqe`), which is why Cargo.toml pins the exact io-uring version and a test below
//!   finds the field's offset with the crate's own setter for the same union.

use std::collections::VecDeque;

use io_uring::{squeue, SubmissionQueue, Submitter};

/// What a CQE belongs to; the top byte of user_data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Op {
    Accept = 1,
    AcceptCancel = 2,
    /// The periodic timeout that bounds every wait (stop requests, drain deadline, counters).
    Tick = 3,
    /// A single-shot receive of one provided buffer.
    Recv = 4,
    Send = 5,
    RecvCancel = 6,
    Close = 7,
    /// The pause after an accept error is over.
    AcceptRetry = 8,
    /// The periodic idle-timeout sweep.
    IdleSweep = 9,
    /// A multishot receive with a byte budget: its own op, so that a refusal of the budget is
    /// told apart from any other receive error (see `ops`).
    RecvMulti = 10,
    /// A zero-copy send (`--feature send_zc`): its completion, then (with `F_MORE` on it) a
    /// notification once the kernel no longer reads the buffer.
    SendZc = 11,
}

const OP_SHIFT: u32 = 56;

/// Encodes an op and a connection slot (`slot <= u32::MAX`, see the module docs).
pub(super) fn user_data(op: Op, slot: usize) -> u64 {
    ((op as u64) << OP_SHIFT) | (slot as u32) as u64
}

/// Decodes [`user_data`]; `None` for a value the engine never submitted.
pub(super) fn decode(ud: u64) -> Option<(Op, usize)> {
    let slot = ud as u32 as usize;
    let op = match (ud >> OP_SHIFT) as u8 {
        1 => Op::Accept,
        2 => Op::AcceptCancel,
        3 => Op::Tick,
        4 => Op::Recv,
        5 => Op::Send,
        6 => Op::RecvCancel,
        7 => Op::Close,
        8 => Op::AcceptRetry,
        9 => Op::IdleSweep,
        10 => Op::RecvMulti,
        11 => Op::SendZc,
        _ => return None,
    };
    Some((op, slot))
}

/// Byte offset of `optlen` (a union with `file_index`) in the kernel's 64-byte `io_uring_sqe`.
const SQE_OPTLEN_OFFSET: usize = 44;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// Sets a multishot recv's total byte budget (`sqe->optlen`, `IORING_RECV_MSHOT_LIM`), which the
/// io-uring crate's `RecvMulti` builder does not expose.
pub(crate) fn with_recv_budget(entry: squeue::Entry, bytes: u32) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel ABI struct `io_uring_sqe`: 64
    // bytes (asserted above) of integers and unions of integers without padding, so it may be
    // viewed as bytes, and any byte pattern is a valid value. Offset 44 is checked by a test
    // against the exact crate version Cargo.toml pins.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    raw[SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4].copy_from_slice(&bytes.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// The SQ plus an overflow list for the rare case that the SQ stays full even after a submit.
pub(super) struct Sq<'r> {
    pub(super) submitter: Submitter<'r>,
    pub(super) queue: SubmissionQueue<'r>,
    backlog: VecDeque<squeue::Entry>,
    /// A full SQ was submitted before the loop's wait (its CQEs may already be consumed).
    pub(super) submitted_early: bool,
}

impl<'r> Sq<'r> {
    pub(super) fn new(submitter: Submitter<'r>, queue: SubmissionQueue<'r>) -> Self {
        Sq {
            submitter,
            queue,
            backlog: VecDeque::new(),
            submitted_early: false,
        }
    }

    /// Queues `entry`.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until the kernel is done with it: until its CQE,
    /// or until submission for values the kernel copies at submission (each call site says
    /// which and why).
    pub(super) unsafe fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: forwarded from the caller's contract.
        if unsafe { self.queue.push(&entry) }.is_ok() {
            return;
        }
        self.queue.sync();
        let _ = self.submitter.submit();
        self.submitted_early = true;
        self.queue.sync();
        // SAFETY: as above.
        if unsafe { self.queue.push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    /// Moves backlogged entries into the SQ, submitting as needed.
    pub(super) fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: the entry was accepted by `push` under the same contract.
            if unsafe { self.queue.push(entry) }.is_ok() {
                self.backlog.pop_front();
                continue;
            }
            self.queue.sync();
            if self.submitter.submit().is_err() {
                break;
            }
            self.queue.sync();
            if self.queue.is_full() {
                break;
            }
        }
    }

    /// Submits everything queued (without waiting), so that what follows knows exactly which
    /// ops reached the kernel.
    pub(super) fn submit_all(&mut self) {
        self.flush_backlog();
        self.queue.sync();
        let _ = self.submitter.submit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;
    use io_uring::types::Fd;

    #[test]
    fn user_data_round_trips() {
        for op in [
            Op::Accept,
            Op::AcceptCancel,
            Op::Tick,
            Op::Recv,
            Op::Send,
            Op::RecvCancel,
            Op::Close,
            Op::AcceptRetry,
            Op::IdleSweep,
            Op::RecvMulti,
            Op::SendZc,
        ] {
            for slot in [0, 1, 77, u32::MAX as usize] {
                assert_eq!(decode(user_data(op, slot)), Some((op, slot)));
            }
        }
        assert_eq!(decode(0), None);
        assert_eq!(decode(99 << OP_SHIFT), None);
    }

    fn sqe_bytes(entry: squeue::Entry) -> [u8; 64] {
        // SAFETY: see `with_recv_budget`.
        unsafe { std::mem::transmute(entry) }
    }

    #[test]
    fn recv_budget_lands_in_optlen() {
        // The crate's own setter for the same union slot (`file_index`) marks the offset.
        let accept = opcode::AcceptMulti::new(Fd(3))
            .allocate_file_index(true)
            .build();
        let plain = opcode::AcceptMulti::new(Fd(3)).build();
        let (a, p) = (sqe_bytes(accept), sqe_bytes(plain));
        let differ: Vec<usize> = (0..64).filter(|&i| a[i] != p[i]).collect();
        assert_eq!(
            differ,
            (SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4).collect::<Vec<_>>()
        );

        let recv = opcode::RecvMulti::new(Fd(3), 0).build().user_data(9);
        let before = sqe_bytes(recv.clone());
        let after = sqe_bytes(with_recv_budget(recv, 0x0102_0304));
        for i in 0..64 {
            if (SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4).contains(&i) {
                continue;
            }
            assert_eq!(before[i], after[i], "byte {i} changed");
        }
        assert_eq!(
            after[SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4],
            0x0102_0304u32.to_ne_bytes()
        );
    }
}
