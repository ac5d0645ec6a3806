//! Per-connection state of the multishot engine and the slab that stores it.
//!
//! A connection owns its socket fd (closed by an io_uring `Close` op, never twice) and a FIFO of
//! received buffers awaiting echo. Only the front buffer may be in a send, and at most one send is
//! in flight: io_uring does not order two sends on one socket.
//!
//! A slot is freed only when the close CQE arrives, which the engine submits only once no other
//! op for the connection is in flight. So a CQE's slot index always names the connection that
//! issued it, and user_data needs no generation counter.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::Instant;

/// A received buffer awaiting echo.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunk {
    /// Provided-buffer id.
    pub(crate) bid: u16,
    /// Bytes the kernel wrote into it.
    pub(crate) len: u32,
}

/// One accepted connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) fd: RawFd,
    /// Received buffers in arrival order; the front one is being (or next to be) sent.
    pub(crate) queue: VecDeque<Chunk>,
    /// Bytes of `queue.front()` already sent.
    pub(crate) sent: u32,
    /// Last time bytes moved in either direction (idle timeout).
    pub(crate) last_progress: Instant,
    /// A multishot recv is in the kernel (cleared by the CQE without `F_MORE`).
    pub(crate) recv_armed: bool,
    pub(crate) send_in_flight: bool,
    /// An `AsyncCancel` for our recv is in flight.
    pub(crate) cancel_pending: bool,
    pub(crate) close_pending: bool,
    /// Waiting in the engine's parked list for provided buffers (recv ended with ENOBUFS).
    pub(crate) parked: bool,
    /// Peer sent FIN (recv returned 0).
    pub(crate) eof: bool,
    /// No more I/O: error, idle timeout or forced drain; close once ops drain.
    pub(crate) dead: bool,
    /// `shutdown(2)` already called.
    pub(crate) shut: bool,
}

impl Conn {
    pub(crate) fn new(fd: RawFd, now: Instant) -> Self {
        Conn {
            fd,
            queue: VecDeque::new(),
            sent: 0,
            last_progress: now,
            recv_armed: false,
            send_in_flight: false,
            cancel_pending: false,
            close_pending: false,
            parked: false,
            eof: false,
            dead: false,
            shut: false,
        }
    }

    /// Any op for this connection whose CQE is still to come.
    pub(crate) fn ops_in_flight(&self) -> bool {
        self.recv_armed || self.send_in_flight || self.cancel_pending || self.close_pending
    }
}

/// Connection storage indexed by the slot number carried in user_data.
#[derive(Debug, Default)]
pub(crate) struct Slab {
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    live: usize,
}

impl Slab {
    pub(crate) fn insert(&mut self, conn: Conn) -> u32 {
        self.live += 1;
        if let Some(slot) = self.free.pop() {
            self.slots[slot as usize] = Some(conn);
            slot
        } else {
            self.slots.push(Some(conn));
            (self.slots.len() - 1) as u32
        }
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    pub(crate) fn remove(&mut self, slot: u32) -> Option<Conn> {
        let conn = self.slots.get_mut(slot as usize).and_then(Option::take);
        if conn.is_some() {
            self.live -= 1;
            self.free.push(slot);
        }
        conn
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Slots of all live connections (a snapshot, so callers may mutate while walking it).
    pub(crate) fn slots(&self) -> Vec<u32> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Iterates live connections.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Conn)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i as u32, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_reuses_freed_slots() {
        let now = Instant::now();
        let mut slab = Slab::default();
        let a = slab.insert(Conn::new(10, now));
        let b = slab.insert(Conn::new(11, now));
        assert_eq!((a, b, slab.len()), (0, 1, 2));
        assert_eq!(slab.remove(a).map(|c| c.fd), Some(10));
        assert!(slab.remove(a).is_none(), "double remove must be a no-op");
        assert_eq!(slab.len(), 1);
        let c = slab.insert(Conn::new(12, now));
        assert_eq!(c, a);
        assert_eq!(slab.slots(), vec![0, 1]);
        assert_eq!(slab.get_mut(1).map(|c| c.fd), Some(11));
    }
}
