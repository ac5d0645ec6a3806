//! Microsecond-precise wake-ups for the open loop, one `timerfd` per client thread.
//!
//! tokio's timer wheel has 1 ms granularity: at 2,000 msgs/s per connection a tokio `sleep`
//! would send in bursts and the intended-time latency would include up to a millisecond of
//! the client's own lateness. Instead each thread owns one `CLOCK_MONOTONIC` timerfd (the
//! clock [`crate::clock::now_ns`] reads), armed for the earliest pending wake-up. Connections
//! register `(due_ns, waker)`; when the timerfd fires, every entry that is due is woken.
//! One fd per thread, not per connection, keeps 10,000 connections within the fd limit.
//!
//! When the next wake-up is less than [`SPIN_NS`] away the pacer does not sleep at all: it
//! yields to the runtime (which keeps polling sockets) until the entry is due.
//!
//! Single-threaded by construction (`Rc`, `RefCell`): it lives on one current-thread runtime.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::task::Waker;

use tokio::io::unix::AsyncFd;

use crate::clock::now_ns;

/// Waits shorter than this are spun (yielding to the I/O driver) instead of slept: a sleep and
/// wake-up of the thread costs tens of microseconds of CPU on virtual machines, so at high
/// per-thread rates sleeping would make the client itself the bottleneck.
pub const SPIN_NS: u64 = 50_000;

struct Entry {
    due_ns: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.due_ns == other.due_ns
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.due_ns.cmp(&other.due_ns)
    }
}

/// A per-thread wake-up scheduler backed by one timerfd.
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
    heap: RefCell<BinaryHeap<Reverse<Entry>>>,
    armed_ns: Cell<u64>,
}

impl Pacer {
    /// Create the timerfd. Must be called inside a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Rc<Pacer>> {
        // SAFETY: plain syscall; the returned fd is checked below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns the timerfd and nothing replaces or closes it while
        // registered.
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(Rc::new(Pacer {
            fd,
            heap: RefCell::new(BinaryHeap::new()),
            armed_ns: Cell::new(u64::MAX),
        }))
    }

    fn arm(&self, due_ns: u64) {
        // A zero it_value would disarm the timer; 1 ns is "already due" all the same.
        let due_ns = due_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (due_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (due_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec; old value not requested.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        debug_assert_eq!(rc, 0, "timerfd_settime: {}", io::Error::last_os_error());
        self.armed_ns.set(due_ns);
    }

    /// Wake `waker` at (or soon after) monotonic time `due_ns`.
    pub fn wake_at(&self, due_ns: u64, waker: &Waker) {
        self.heap.borrow_mut().push(Reverse(Entry {
            due_ns,
            waker: waker.clone(),
        }));
        if due_ns < self.armed_ns.get() {
            self.arm(due_ns);
        }
    }

    /// Drive the timer: spawn this on the thread's `LocalSet`; it never returns normally.
    pub async fn run(self: Rc<Self>) -> io::Result<()> {
        loop {
            let now = now_ns();
            let next_due = {
                let mut heap = self.heap.borrow_mut();
                while heap.peek().is_some_and(|e| e.0.due_ns <= now) {
                    let Reverse(entry) = heap.pop().expect("peeked");
                    entry.waker.wake();
                }
                heap.peek().map(|e| e.0.due_ns)
            };
            match next_due {
                Some(due) if due - now <= SPIN_NS => {
                    // Sleeping and waking again would cost more than the wait: stay awake,
                    // letting the runtime poll sockets (yield_now defers to the I/O driver).
                    // While spinning, new registrations need not arm the timerfd.
                    self.armed_ns.set(0);
                    tokio::task::yield_now().await;
                    continue;
                }
                Some(due) if self.armed_ns.get() == due => {}
                Some(due) => self.arm(due),
                None => self.armed_ns.set(u64::MAX),
            }
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer from a valid fd.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            guard.clear_ready();
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::WouldBlock {
                    return Err(err);
                }
            } else {
                // The armed expiry has passed.
                self.armed_ns.set(u64::MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_at_the_requested_time_with_sub_millisecond_precision() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let lateness: Vec<u64> = local.block_on(&rt, async {
            let pacer = Pacer::new().unwrap();
            tokio::task::spawn_local(pacer.clone().run());
            let mut lateness = Vec::new();
            for i in 0..50u64 {
                let due = now_ns() + 200_000 + i * 1_000;
                std::future::poll_fn(|cx| {
                    if now_ns() >= due {
                        std::task::Poll::Ready(())
                    } else {
                        pacer.wake_at(due, cx.waker());
                        std::task::Poll::Pending
                    }
                })
                .await;
                lateness.push(now_ns() - due);
            }
            lateness
        });
        let mut sorted = lateness.clone();
        sorted.sort_unstable();
        // The median wake-up must be far below tokio's 1 ms timer granularity.
        assert!(sorted[sorted.len() / 2] < 500_000, "{sorted:?}");
    }
}
