//! The provided-buffer ring that multishot receives draw from.
//!
//! One pool per worker: `count` buffers of `buf_size` bytes in one anonymous mapping, plus the
//! ring of `io_uring_buf` descriptors the kernel consumes from (registered as buffer group
//! [`BGID`]). The kernel picks a buffer when data arrives and names it in the CQE; the engine owns
//! it from then on and hands it back with [`BufRing::recycle`] once every byte has been sent.
//!
//! Invariants:
//! - A buffer id is in exactly one place: in the ring (kernel may pick it) or held by the engine.
//!   [`BufRing::in_ring`] counts the first kind, so `in_ring == count` at exit proves that no
//!   buffer was lost.
//! - The pool and ring memory outlive the io_uring instance that may write into them: the engine
//!   drops its `IoUring` before this struct (field order), and `Drop` only unmaps.
//! - Recycled entries become visible to the kernel only at [`BufRing::publish`] (one release store
//!   of the tail per event-loop iteration, not one per buffer).
//!
//! The pool is not pinned (the kernel copies into it like `recv(2)` would), so it does not count
//! against `RLIMIT_MEMLOCK`; only the small descriptor ring is. Pages are touched lazily, so an idle
//! server's RSS stays far below `count * buf_size`.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// Buffer group id of the pool (one group per ring, so any constant works).
pub(crate) const BGID: u16 = 0;

/// Largest ring the kernel accepts (`IORING_MAX_PBUF_RING` entries is 2^15).
pub(crate) const MAX_BUFFERS: usize = 1 << 15;

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping with no address hint; the kernel picks a range that
        // overlaps nothing we own. The result is checked before use. NORESERVE: pages are only
        // backed once touched, so a large pool of large buffers does not trip overcommit checks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping created in `new`, unmapped once here.
        // The owning `BufRing` is dropped only after the io_uring instance (see module docs), so
        // the kernel no longer refers to it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A registered provided-buffer ring plus the buffers it hands out.
pub(crate) struct BufRing {
    ring: Mapping,
    pool: Mapping,
    /// Descriptor slots in `ring` (a power of two, >= `count`).
    mask: u16,
    /// Our copy of the ring tail; published to the kernel by `publish`.
    tail: u16,
    /// Tail value last published.
    published: u16,
    buf_size: usize,
    count: u16,
    in_ring: usize,
}

impl BufRing {
    /// Maps a pool of `count` buffers of `buf_size` bytes and fills the ring with all of them.
    /// Not yet visible to any io_uring: call [`BufRing::register`].
    pub(crate) fn new(count: usize, buf_size: usize) -> io::Result<Self> {
        if count == 0 || count > MAX_BUFFERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("provided buffer count must be 1..={MAX_BUFFERS}, got {count}"),
            ));
        }
        if buf_size == 0 || buf_size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer size must be 1..=4GiB, got {buf_size}"),
            ));
        }
        let entries = count.next_power_of_two();
        let pool_len = count
            .checked_mul(buf_size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer pool too large"))?;
        let ring = Mapping::new(entries * std::mem::size_of::<BufRingEntry>())?;
        let pool = Mapping::new(pool_len)?;
        let mut this = BufRing {
            ring,
            pool,
            mask: (entries - 1) as u16,
            tail: 0,
            published: 0,
            buf_size,
            count: count as u16,
            in_ring: 0,
        };
        for bid in 0..count {
            this.recycle(bid as u16);
        }
        this.publish();
        Ok(this)
    }

    /// Registers the ring as buffer group [`BGID`] of the io_uring behind `submitter`.
    pub(crate) fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        let entries = u16::try_from(self.mask as usize + 1).unwrap_or(u16::MAX);
        // SAFETY: the ring mapping is page aligned (mmap), holds `entries` descriptors and lives
        // until after the io_uring is dropped (module invariant), which unregisters the group.
        unsafe {
            submitter.register_buf_ring_with_flags(self.ring.ptr.as_ptr() as u64, entries, BGID, 0)
        }
    }

    /// Size of each buffer in bytes.
    pub(crate) fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Number of buffers in the pool.
    pub(crate) fn count(&self) -> usize {
        self.count as usize
    }

    /// Buffers the kernel may currently pick (recycled, possibly not yet published).
    pub(crate) fn in_ring(&self) -> usize {
        self.in_ring
    }

    /// Pointer to the first byte of buffer `bid`.
    pub(crate) fn addr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.count);
        // SAFETY: bid < count, so the offset stays inside the pool mapping.
        unsafe { self.pool.ptr.as_ptr().add(bid as usize * self.buf_size) }
    }

    /// Records that the kernel handed buffer `bid` to us (a receive CQE named it).
    /// Returns false for an id we never provided (a kernel/engine bug the caller reports).
    pub(crate) fn take(&mut self, bid: u16) -> bool {
        if bid >= self.count || self.in_ring == 0 {
            return false;
        }
        self.in_ring -= 1;
        true
    }

    /// Gives buffer `bid` back to the kernel (visible after the next [`BufRing::publish`]).
    pub(crate) fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        debug_assert!(self.in_ring < self.count as usize);
        let slot = (self.tail & self.mask) as usize;
        // SAFETY: slot <= mask, inside the ring mapping. The kernel only reads slots between its
        // head and the published tail; this slot is past the published tail, so we are its only
        // user until `publish`.
        unsafe {
            let entry = &mut *self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(slot);
            entry.set_addr(self.addr(bid) as u64);
            entry.set_len(self.buf_size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.in_ring += 1;
    }

    /// Makes recycled buffers visible to the kernel. Cheap when nothing changed.
    pub(crate) fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: the tail shares memory with slot 0's `resv` field, which the kernel reads
        // atomically; the release store orders the descriptor writes in `recycle` before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.ptr.as_ptr().cast::<BufRingEntry>());
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_take_recycle_keeps_count() {
        let mut ring = BufRing::new(5, 4096).unwrap();
        assert_eq!(ring.mask, 7);
        assert_eq!(ring.in_ring(), 5);
        assert!(ring.take(3));
        assert!(!ring.take(9), "id outside the pool must be refused");
        assert_eq!(ring.in_ring(), 4);
        ring.recycle(3);
        ring.publish();
        assert_eq!(ring.in_ring(), 5);
        assert_eq!(ring.addr(1) as usize - ring.addr(0) as usize, 4096);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(BufRing::new(0, 4096).is_err());
        assert!(BufRing::new(MAX_BUFFERS + 1, 4096).is_err());
        assert!(BufRing::new(4, 0).is_err());
    }
}
