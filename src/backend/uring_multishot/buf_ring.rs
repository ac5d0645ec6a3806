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
//!   consumption (below), so the kernel only reads the descriptors and reading a buffer id back
//!   from one races nothing.
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
//!
//! The pool is not pinned (the kernel copies into it like `recv(2)` would), so it does not count
//! against `RLIMIT_MEMLOCK`; only the small descriptor ring is. Pages are touched lazily, so an idle
//! server's RSS stays far below `count * buf_size`.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, IOU_PBUF_RING_INC};
use io_uring::Submitter;

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
    /// ([`BufRing::take_slice`], module docs).
    inc: bool,
    /// Per buffer id, with `inc`: its slice bookkeeping (empty otherwise).
    slices: Box<[Slices]>,
}

/// One buffer's state under incremental consumption (module docs), meaningful while the engine
/// holds the buffer; reset when a CQE takes it from the ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slices {
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

    /// [`BufRing::register`] with `IOU_PBUF_RING_INC` (Linux 6.12): receives consume buffers
    /// incrementally, and the engine must take them with [`BufRing::take_slice`] from now on.
    /// On an error nothing is registered and the ring stays a plain one.
    pub(crate) fn register_incremental(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        self.register_with(submitter, BGID, IOU_PBUF_RING_INC as u16)?;
        self.enable_incremental();
        Ok(())
    }

    /// Switches the bookkeeping to slices (before any buffer is taken).
    fn enable_incremental(&mut self) {
        assert_eq!(
            self.in_ring, self.count as usize,
            "incremental consumption switched on with buffers held"
        );
        self.inc = true;
        self.slices = vec![Slices::default(); self.count as usize].into_boxed_slice();
    }

    /// Whether buffers are consumed incrementally (registered with `IOU_PBUF_RING_INC`).
    pub(super) fn is_incremental(&self) -> bool {
        self.inc
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
        // them (module docs), and the engine never combines the two.
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

    /// Records the slice of `len > 0` bytes that a receive CQE put into buffer `bid` under
    /// incremental consumption, `more` its `IORING_CQE_F_BUF_MORE`; returns the offset in the
    /// buffer where the slice starts. The first slice takes the buffer from the ring. Checks
    /// everything before changing anything: a refused CQE changes nothing, except that a slice
    /// that does not fit poisons the buffer (module docs).
    pub(super) fn take_slice(&mut self, bid: u16, len: u32, more: bool) -> Result<u32, TakeError> {
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

    /// The engine is done with one use of buffer `bid` (all its bytes sent, or dropped): a whole
    /// buffer goes back to the ring; under incremental consumption one slice of it is put back,
    /// and the buffer goes back once the kernel is done with it and no slice is outstanding.
    ///
    /// # Panics
    /// Like [`BufRing::recycle`], and on a slice put back that was never taken.
    pub(super) fn put(&mut self, bid: u16) {
        if !self.inc {
            self.recycle(bid);
            return;
        }
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
    pub(super) fn reclaim_partial(&mut self) {
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
    pub(super) fn kernel_partial(&self) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_take_recycle_keeps_ownership() {
        let mut ring = BufRing::new(5, 4096).unwrap();
        assert_eq!(ring.mask, 7);
        assert_eq!(ring.in_ring(), 5);
        assert_eq!(ring.take(3), Ok(()));
        assert_eq!(ring.in_ring(), 4);
        ring.recycle(3);
        ring.publish();
        assert_eq!(ring.in_ring(), 5);
        assert_eq!(ring.addr(1) as usize - ring.addr(0) as usize, 4096);
        // Many round trips through every slot of the ring (the tail wraps around it).
        for round in 0..100u16 {
            let bid = round % 5;
            ring.take(bid).unwrap();
            ring.recycle(bid);
        }
        ring.publish();
        assert_eq!(ring.in_ring(), 5);
        assert_eq!(
            ring.bytes_to_leak(),
            0,
            "never registered: unmapped on drop"
        );
    }

    #[test]
    fn take_run_follows_the_ring_order_and_checks_it() {
        let mut ring = BufRing::new(4, 64).unwrap();
        // The ring holds 0, 1, 2, 3 in that order.
        assert_eq!(
            ring.take_run(1, 1),
            Err(TakeError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(ring.take_run(0, 5), Err(TakeError::BeyondTail(5)));
        assert_eq!(ring.in_ring(), 4, "a refused run takes nothing");
        let start = ring.take_run(0, 3).unwrap();
        assert_eq!(
            (0..3).map(|i| ring.bid_at(start + i)).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(ring.in_ring(), 1);
        // Back in another order: the ring now holds 3, 2, 0 (1 still held).
        ring.recycle(2);
        ring.recycle(0);
        assert_eq!(
            ring.take_run(3, 3),
            Err(TakeError::BeyondTail(3)),
            "not published yet"
        );
        ring.publish();
        let start = ring.take_run(3, 3).unwrap();
        assert_eq!(
            (0..3).map(|i| ring.bid_at(start + i)).collect::<Vec<_>>(),
            [3, 2, 0]
        );
        // Many wraps of the 4-slot ring, one and two buffers at a time.
        ring.recycle(3);
        ring.recycle(2);
        ring.recycle(0);
        ring.recycle(1);
        ring.publish();
        for round in 0..100u16 {
            let n = 1 + round % 2;
            let first = ring.bid_at(ring.head);
            let start = ring.take_run(first, n).unwrap();
            let bids: Vec<u16> = (0..n).map(|i| ring.bid_at(start + i)).collect();
            for bid in bids {
                assert_eq!(ring.take(bid), Err(TakeError::NotInRing(bid)));
                ring.recycle(bid);
            }
            ring.publish();
        }
        assert_eq!(ring.in_ring(), 4);
    }

    #[test]
    fn take_refuses_an_id_outside_the_pool() {
        let mut ring = BufRing::new(5, 64).unwrap();
        assert_eq!(ring.take(9), Err(TakeError::Unknown(9)));
        assert_eq!(ring.in_ring(), 5);
    }

    #[test]
    fn take_refuses_an_id_already_held() {
        let mut ring = BufRing::new(70, 64).unwrap();
        ring.take(65).unwrap();
        assert_eq!(ring.take(65), Err(TakeError::NotInRing(65)));
        assert_eq!(ring.in_ring(), 69);
        // Neighbours in the same bitset word are unaffected.
        ring.take(64).unwrap();
        ring.take(66).unwrap();
    }

    #[test]
    #[should_panic(expected = "recycled while already in the ring")]
    fn double_recycle_panics() {
        let mut ring = BufRing::new(4, 64).unwrap();
        ring.take(2).unwrap();
        ring.recycle(2);
        ring.recycle(2);
    }

    #[test]
    #[should_panic(expected = "recycled while already in the ring")]
    fn recycle_of_an_id_never_taken_panics() {
        let mut ring = BufRing::new(4, 64).unwrap();
        ring.recycle(1);
    }

    #[test]
    #[should_panic(expected = "pool has only 4 buffers")]
    fn recycle_outside_the_pool_panics() {
        let mut ring = BufRing::new(4, 64).unwrap();
        ring.recycle(4);
    }

    #[test]
    #[should_panic(expected = "outside the pool")]
    fn addr_outside_the_pool_panics() {
        let ring = BufRing::new(4, 64).unwrap();
        let _ = ring.addr(4);
    }

    fn incremental(count: usize, buf_size: usize) -> BufRing {
        let mut ring = BufRing::new(count, buf_size).unwrap();
        ring.enable_incremental();
        ring
    }

    #[test]
    fn incremental_buffer_returns_only_after_the_kernel_and_its_last_slice() {
        let mut ring = incremental(4, 1000);
        // Three receives (of any connections) share buffer 0; the kernel keeps using it.
        assert_eq!(ring.take_slice(0, 100, true), Ok(0));
        assert_eq!(ring.take_slice(0, 200, true), Ok(100));
        assert_eq!(ring.take_slice(0, 300, true), Ok(300));
        assert_eq!(ring.in_ring(), 3, "held from its first slice");
        // Every slice sent: still the kernel's (its descriptor is at the ring head).
        ring.put(0);
        ring.put(0);
        ring.put(0);
        assert_eq!(ring.in_ring(), 3);
        // The kernel fills the rest and is done; back once that last slice is sent too.
        assert_eq!(ring.take_slice(0, 400, false), Ok(600));
        assert_eq!(ring.in_ring(), 3);
        ring.put(0);
        assert_eq!(ring.in_ring(), 4);

        // The other order: three slices, the kernel done with the third, sends after.
        assert_eq!(ring.take_slice(1, 10, true), Ok(0));
        assert_eq!(ring.take_slice(1, 20, true), Ok(10));
        assert_eq!(
            ring.take_slice(1, 30, false),
            Ok(30),
            "done early (a short buffer)"
        );
        assert_eq!(
            ring.take_slice(1, 5, true),
            Err(TakeError::KernelDone(1)),
            "the kernel cannot be using a buffer it finished"
        );
        ring.put(1);
        ring.put(1);
        assert_eq!(ring.in_ring(), 3, "one slice still outstanding");
        ring.put(1);
        assert_eq!(ring.in_ring(), 4);
        ring.publish();
        // Recycled, it starts afresh at offset 0.
        assert_eq!(ring.take_slice(1, 1000, false), Ok(0));
        ring.put(1);
        assert_eq!(ring.in_ring(), 4);
    }

    #[test]
    fn incremental_refusals_change_nothing_or_poison_the_buffer() {
        let mut ring = incremental(4, 1000);
        assert_eq!(ring.take_slice(9, 1, true), Err(TakeError::Unknown(9)));
        assert_eq!(ring.in_ring(), 4, "nothing changed");
        assert_eq!(ring.take_slice(1, 600, true), Ok(0));
        assert_eq!(
            ring.take_slice(1, 401, true),
            Err(TakeError::BeyondBuffer { bid: 1, end: 1001 })
        );
        // Our offset no longer matches the kernel's: no more slices of it, and it never goes
        // back while the kernel may write into it.
        assert_eq!(ring.take_slice(1, 10, false), Err(TakeError::Poisoned(1)));
        ring.put(1);
        assert_eq!(ring.in_ring(), 3);
        // A first slice that does not fit, and BUF_MORE on a full buffer, poison too.
        assert_eq!(
            ring.take_slice(2, 1001, false),
            Err(TakeError::BeyondBuffer { bid: 2, end: 1001 })
        );
        assert_eq!(
            ring.take_slice(3, 1000, true),
            Err(TakeError::BeyondBuffer { bid: 3, end: 1000 }),
            "BUF_MORE on a full buffer"
        );
        assert_eq!(ring.in_ring(), 1);
        assert_eq!(ring.kernel_partial(), 3);
        // Once the group is unregistered the kernel cannot write into them: all come back.
        ring.reclaim_partial();
        assert_eq!((ring.in_ring(), ring.kernel_partial()), (4, 0));
        ring.publish();
        assert_eq!(ring.take_slice(2, 10, true), Ok(0), "a fresh start");
    }

    #[test]
    fn reclaim_returns_partly_consumed_buffers_without_slices() {
        let mut ring = incremental(4, 1000);
        ring.take_slice(3, 10, true).unwrap();
        ring.take_slice(3, 10, true).unwrap();
        ring.put(3);
        assert_eq!(ring.kernel_partial(), 0);
        ring.take_slice(0, 10, true).unwrap();
        ring.put(0);
        assert_eq!(
            ring.kernel_partial(),
            1,
            "buffer 0: only the kernel uses it"
        );
        ring.reclaim_partial();
        assert_eq!(ring.kernel_partial(), 0);
        assert_eq!(ring.in_ring(), 3, "buffer 3: a slice is still outstanding");
        ring.put(3);
        assert_eq!(ring.in_ring(), 4, "reclaimed: the kernel is done with both");
        // Plain rings have nothing to reclaim.
        let mut plain = BufRing::new(2, 64).unwrap();
        plain.take(0).unwrap();
        plain.reclaim_partial();
        assert_eq!(plain.in_ring(), 1);
    }

    #[test]
    #[should_panic(expected = "none is outstanding")]
    fn putting_back_a_slice_never_taken_panics() {
        let mut ring = incremental(4, 1000);
        ring.take_slice(0, 10, true).unwrap();
        ring.put(0);
        ring.put(0);
    }

    #[test]
    #[should_panic(expected = "does not hold that buffer")]
    fn putting_back_a_slice_of_a_buffer_in_the_ring_panics() {
        let mut ring = incremental(4, 1000);
        ring.put(1);
    }

    #[test]
    #[should_panic(expected = "bundled run taken from an incremental ring")]
    fn bundles_are_refused_on_an_incremental_ring() {
        let mut ring = incremental(4, 1000);
        let _ = ring.take_run(0, 1);
    }

    #[test]
    fn registered_memory_is_leaked_unless_released() {
        let mut ring = BufRing::new(4, 4096).unwrap();
        ring.kernel_may_use = true; // as `register` does
        assert_eq!(ring.bytes_to_leak(), 4 * 16 + 4 * 4096);
        ring.release();
        assert_eq!(ring.bytes_to_leak(), 0);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(BufRing::new(0, 4096).is_err());
        assert!(BufRing::new(MAX_BUFFERS + 1, 4096).is_err());
        assert!(BufRing::new(4, 0).is_err());
    }
}
