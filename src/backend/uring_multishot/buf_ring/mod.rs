//! The provided-buffer ring that multishot receives draw from.
//!
//! One pool per worker: `count` buffers of `buf_size` bytes in one anonymous mapping, plus the
//! ring of `io_uring_buf` descriptors the kernel consumes from (registered as buffer group
//! [`BGID`]). The kernel picks a buffer when data arrives and names it in the CQE; the engine owns
//! it from then on and hands it back with [`BufRing::recycle`] once every byte has been sent.
//!
//! Invariants, checked in release builds:
//! - **Every buffer id is in exactly one place**: in the ring (the kernel may pick it) or held by
//!   the engine. A bitset records which, per id. [`BufRing::take`] refuses an id that is not in
//!   the ring; [`BufRing::recycle`] panics on an id that is already there (a double recycle, or
//!   one never taken) or outside the pool. A second descriptor for one buffer would let the
//!   kernel receive into it while a send still reads it, so this is a loud failure, never a
//!   silent one. Since a recycle only ever adds an id that was not in the ring, the descriptors
//!   in the ring never outnumber the pool, so the ring (at least `count` slots) cannot overflow.
//!   At exit, [`BufRing::in_ring`] `== count` therefore means every single buffer came back.
//! - **The kernel never sees freed memory.** Once registered, the pool and ring are unmapped only
//!   after [`BufRing::release`], which the engine calls when the group is unregistered and no
//!   operation that could still write into or read from a buffer is in flight. Otherwise (a
//!   teardown that abandoned operations, or a panic unwinding through the engine) `Drop` leaks
//!   both mappings: a pending receive could still write into a buffer, or a send read from it.
//! - Recycled entries become visible to the kernel only at [`BufRing::publish`] (one release store
//!   of the tail per event-loop iteration, not one per buffer).
//! - **Bundles are taken in ring order** ([`BufRing::take_run`], `--feature bundle`). A bundled
//!   receive's CQE names only its first buffer; the others are the descriptors that follow it in
//!   the ring, as many as its bytes fill. The engine keeps its own copy of the kernel's ring head
//!   and checks that the named buffer is the one at that head, that the run lies within what was
//!   published, and that every buffer of it is in the ring (the bitset) before taking any: a
//!   kernel that consumed buffers out of order (bundle bugs of that kind existed) is a refused
//!   CQE, never a buffer handed out twice. Bundles are never combined with incremental
//!   consumption (`inc`), so the kernel only reads the descriptors and reading a buffer id back
//!   from one races nothing.
//!
//! **Incremental consumption** (`--feature buf_ring_inc`, `IOU_PBUF_RING_INC`, Linux 6.12)
//! takes a buffer in slices, possibly of several connections, on top of the same per-id
//! ownership: the buffer is held from its first slice until the kernel is done with it *and* its
//! last slice is put back. That bookkeeping, its invariants and what the kernel guarantees: the
//! `inc` submodule.
//!
//! The pool is not pinned (the kernel copies into it like `recv(2)` would), so it does not count
//! against `RLIMIT_MEMLOCK`; only the small descriptor ring is. Pages are touched lazily, so an idle
//! server's RSS stays far below `count * buf_size`.

mod inc;
#[cfg(test)]
mod tests;

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

use inc::Slices;

/// Buffer group id of the pool (one group per ring, so any constant works).
pub(crate) const BGID: u16 = 0;

/// Largest ring the kernel accepts (`IORING_MAX_PBUF_RING` entries is 2^15).
pub(super) const MAX_BUFFERS: usize = 1 << 15;

/// An anonymous private mapping, unmapped on drop unless leaked.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    leaked: bool,
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
        Ok(Mapping {
            ptr,
            len,
            leaked: false,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: `ptr`/`len` describe exactly the mapping created in `new`, unmapped once here.
        // `BufRing` leaks its mappings unless the kernel can no longer use them (module docs).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A provided-buffer ring plus the buffers it hands out.
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
    /// Bit `bid` set: buffer `bid` is in the ring; clear: the engine holds it.
    in_ring_bits: Box<[u64]>,
    /// Number of bits set in `in_ring_bits`.
    in_ring: usize,
    /// Registered with a ring and not yet [`BufRing::release`]d: the kernel may use the memory.
    kernel_may_use: bool,
    /// The buffer group it was registered as.
    bgid: u16,
    /// Our copy of the kernel's ring head: the next descriptor a receive takes. Kept by
    /// [`BufRing::take_run`] only (bundle mode takes every buffer through it).
    head: u16,
    /// Registered with `IOU_PBUF_RING_INC`: buffers are taken and put back in slices
    /// ([`BufRing::take_slice`], `inc` module docs).
    inc: bool,
    /// Per buffer id, with `inc`: its slice bookkeeping (empty otherwise).
    slices: Box<[Slices]>,
}

/// Why [`BufRing::take`] refused a buffer id from a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TakeError {
    /// The id is outside the pool.
    Unknown(u16),
    /// The engine already holds this buffer: the kernel cannot have picked it from the ring.
    NotInRing(u16),
    /// A run's first buffer is not the one at the ring head (`expected`): the kernel consumed
    /// the ring out of order.
    OutOfOrder { expected: u16, got: u16 },
    /// A run of this many buffers reaches past what was published to the kernel.
    BeyondTail(u16),
    /// Incremental consumption: the kernel already finished this buffer (a CQE without
    /// `BUF_MORE`) and it was not recycled since, so no receive can be using it.
    KernelDone(u16),
    /// Incremental consumption: the slice would end at byte `end`, past the end of the buffer
    /// (or end exactly there while the CQE says the kernel keeps using the buffer). The buffer
    /// is poisoned: held, never recycled while registered.
    BeyondBuffer { bid: u16, end: u64 },
    /// Incremental consumption: a CQE named a poisoned buffer (see `BeyondBuffer`).
    Poisoned(u16),
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
            // Every id starts held, then `recycle` puts each into the ring once.
            in_ring_bits: vec![0u64; count.div_ceil(64)].into_boxed_slice(),
            in_ring: 0,
            kernel_may_use: false,
            bgid: BGID,
            head: 0,
            inc: false,
            slices: Box::default(),
        };
        for bid in 0..count {
            this.recycle(bid as u16);
        }
        this.publish();
        Ok(this)
    }

    /// Registers the ring as buffer group [`BGID`] of the io_uring behind `submitter`. From now
    /// on the memory is leaked rather than unmapped unless [`BufRing::release`] is called.
    pub(crate) fn register(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        self.register_with(submitter, BGID, 0)
    }

    /// [`BufRing::register`] as buffer group `bgid` with registration `flags`
    /// (`IOU_PBUF_RING_INC`, ...): what `probe` tries.
    pub(crate) fn register_with(
        &mut self,
        submitter: &Submitter<'_>,
        bgid: u16,
        flags: u16,
    ) -> io::Result<()> {
        let entries = u16::try_from(self.mask as usize + 1).unwrap_or(u16::MAX);
        // Set first: even a failed registration must not make us unmap early.
        self.kernel_may_use = true;
        self.bgid = bgid;
        // SAFETY: the ring mapping is page aligned (mmap), holds `entries` descriptors and is
        // never unmapped while the kernel may use it (`kernel_may_use`, module docs).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.ptr.as_ptr() as u64,
                entries,
                bgid,
                flags,
            )
        }
    }

    /// Removes the buffer group from the io_uring behind `submitter`: no operation can pick a
    /// buffer from the ring after this (operations that already hold one still may use it).
    pub(crate) fn unregister(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        submitter.unregister_buf_ring(self.bgid)
    }

    /// Declares the memory unused by the kernel, so that `Drop` unmaps it.
    ///
    /// Call only when the group is unregistered (or its io_uring dropped) and no operation that
    /// might write into or read from a buffer is in flight.
    pub(crate) fn release(&mut self) {
        self.kernel_may_use = false;
    }

    /// Bytes `Drop` will leak instead of unmapping (0 after [`BufRing::release`]).
    pub(super) fn bytes_to_leak(&self) -> usize {
        if self.kernel_may_use {
            self.ring.len + self.pool.len
        } else {
            0
        }
    }

    /// Size of each buffer in bytes.
    pub(super) fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Number of buffers in the pool.
    pub(super) fn count(&self) -> usize {
        self.count as usize
    }

    /// Buffers the kernel may currently pick (recycled, possibly not yet published).
    pub(super) fn in_ring(&self) -> usize {
        self.in_ring
    }

    /// Pointer to the first byte of buffer `bid`.
    pub(super) fn addr(&self, bid: u16) -> *mut u8 {
        assert!(
            bid < self.count,
            "provided buffer {bid} is outside the pool of {}",
            self.count
        );
        // SAFETY: bid < count (checked above), so the offset stays inside the pool mapping.
        unsafe { self.pool.ptr.as_ptr().add(bid as usize * self.buf_size) }
    }

    fn bit(bid: u16) -> (usize, u64) {
        (bid as usize / 64, 1u64 << (bid % 64))
    }

    fn is_in_ring(&self, bid: u16) -> bool {
        let (word, mask) = Self::bit(bid);
        self.in_ring_bits[word] & mask != 0
    }

    /// Records that the kernel handed buffer `bid` to us (a receive CQE named it). Refuses an id
    /// outside the pool or one the engine already holds; the caller reports that and does not
    /// use the buffer.
    pub(super) fn take(&mut self, bid: u16) -> Result<(), TakeError> {
        if bid >= self.count {
            return Err(TakeError::Unknown(bid));
        }
        if !self.is_in_ring(bid) {
            return Err(TakeError::NotInRing(bid));
        }
        let (word, mask) = Self::bit(bid);
        self.in_ring_bits[word] &= !mask;
        self.in_ring -= 1;
        Ok(())
    }

    /// Records that the kernel handed us the `n` buffers at the ring head, the first of which a
    /// CQE named `first` (a bundled receive, module docs; `n` is 1 for a plain one). Checks the
    /// whole run before taking any of it; on success returns the ring position of the first,
    /// for [`BufRing::bid_at`].
    pub(super) fn take_run(&mut self, first: u16, n: u16) -> Result<u16, TakeError> {
        // The descriptors are read back below; under incremental consumption the kernel writes
        // them (`inc` module docs), and the engine never combines the two.
        assert!(!self.inc, "bundled run taken from an incremental ring");
        if first >= self.count {
            return Err(TakeError::Unknown(first));
        }
        if n == 0 || self.published.wrapping_sub(self.head) < n {
            return Err(TakeError::BeyondTail(n));
        }
        let start = self.head;
        let expected = self.bid_at(start);
        if expected != first {
            return Err(TakeError::OutOfOrder {
                expected,
                got: first,
            });
        }
        for i in 0..n {
            let bid = self.bid_at(start.wrapping_add(i));
            if bid >= self.count {
                return Err(TakeError::Unknown(bid));
            }
            if !self.is_in_ring(bid) {
                return Err(TakeError::NotInRing(bid));
            }
        }
        for i in 0..n {
            let bid = self.bid_at(start.wrapping_add(i));
            let (word, mask) = Self::bit(bid);
            self.in_ring_bits[word] &= !mask;
        }
        self.in_ring -= n as usize;
        self.head = start.wrapping_add(n);
        Ok(start)
    }

    /// The buffer id in the descriptor at ring position `pos` (taken modulo the ring size).
    pub(super) fn bid_at(&self, pos: u16) -> u16 {
        let slot = (pos & self.mask) as usize;
        // SAFETY: slot <= mask, inside the ring mapping. Only `recycle` writes descriptors; the
        // kernel only reads them (`take_run`, the only caller, refuses an incremental ring), so
        // this read races nothing that changes the value.
        unsafe { (*self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(slot)).bid() }
    }

    /// Gives buffer `bid` back to the kernel (visible after the next [`BufRing::publish`]).
    ///
    /// # Panics
    /// If `bid` is outside the pool or already in the ring: an engine bug that would otherwise
    /// put two descriptors for one buffer in the ring (module docs).
    pub(super) fn recycle(&mut self, bid: u16) {
        assert!(
            bid < self.count,
            "provided buffer {bid} recycled, but the pool has only {} buffers",
            self.count
        );
        assert!(
            !self.is_in_ring(bid),
            "provided buffer {bid} recycled while already in the ring (double recycle, or \
             never taken): refusing to hand the kernel a buffer that may still be in use"
        );
        let (word, mask) = Self::bit(bid);
        self.in_ring_bits[word] |= mask;
        self.in_ring += 1;
        let slot = (self.tail & self.mask) as usize;
        // SAFETY: slot <= mask, inside the ring mapping. The descriptors the kernel has not
        // consumed are those of the other ids in the ring (each at most once, by the bitset)
        // plus, under incremental consumption, those of held buffers it is not done with, which
        // are never recycled before it is (`put`): at most `count - 1` others, fewer than the
        // ring's `mask + 1 >= count` slots. So this slot past the published tail is not one the
        // kernel may still read or write; we are its only user until `publish`.
        unsafe {
            let entry = &mut *self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(slot);
            entry.set_addr(self.addr(bid) as u64);
            entry.set_len(self.buf_size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// The engine is done with one use of buffer `bid` (all its bytes sent, or dropped): a whole
    /// buffer goes back to the ring; under incremental consumption one slice of it is put back,
    /// and the buffer goes back once the kernel is done with it and no slice is outstanding.
    ///
    /// # Panics
    /// Like [`BufRing::recycle`], and on a slice put back that was never taken.
    pub(super) fn put(&mut self, bid: u16) {
        if self.inc {
            self.put_slice(bid);
        } else {
            self.recycle(bid);
        }
    }

    /// Makes recycled buffers visible to the kernel. Cheap when nothing changed.
    pub(super) fn publish(&mut self) {
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

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.kernel_may_use {
            // Not released: an operation may still receive into a buffer or send from one, or
            // the kernel still reads the descriptors. Keep the memory mapped for the life of the
            // process rather than let the kernel write into whatever is mapped there next.
            self.ring.leaked = true;
            self.pool.leaked = true;
        }
    }
}
