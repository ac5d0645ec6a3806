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
//! The pacer also ticks every [`PROBE_PERIOD_NS`] inside the measured window and records how
//! late each tick ran (every tick, so a stall of the thread shows as a run of late ticks): the
//! thread's own reaction delay, whatever its connections are waiting for. It is the evidence
//! of a client too slow to read its echoes, whose sends then wait on a full pipeline and so
//! escape the send lateness (see [`crate::bottleneck`]).
//!
//! Single-threaded by construction (`Rc`, `RefCell`): it lives on one current-thread runtime.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::task::Waker;

use hdrhistogram::Histogram;
use tokio::io::unix::AsyncFd;

use crate::clock::now_ns;
use crate::record::new_histogram;

/// Waits shorter than this are spun (yielding to the I/O driver) instead of slept: a sleep and
/// wake-up of the thread costs tens of microseconds of CPU on virtual machines, so at high
/// per-thread rates sleeping would make the client itself the bottleneck.
pub const SPIN_NS: u64 = 50_000;
/// Period of the reaction-delay probe.
pub const PROBE_PERIOD_NS: u64 = 1_000_000;

/// The probe's ticks: due times from `next_ns` on, recorded while before `until_ns`.
struct Probe {
    next_ns: Cell<u64>,
    from_ns: u64,
    until_ns: u64,
    lateness: RefCell<Histogram<u64>>,
    /// Time inside the span the pacer spent spinning (see [`Pacer::spun_ns`]).
    spun_ns: Cell<u64>,
}

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
    probe: Option<Probe>,
}

impl Pacer {
    /// Create the timerfd. Must be called inside a tokio runtime with I/O enabled. With
    /// `probe = Some((from_ns, until_ns))`, tick every [`PROBE_PERIOD_NS`] in that span and
    /// record each tick's lateness.
    pub fn new(probe: Option<(u64, u64)>) -> io::Result<Rc<Pacer>> {
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
            probe: probe.map(|(from_ns, until_ns)| Probe {
                next_ns: Cell::new(from_ns),
                from_ns,
                until_ns,
                lateness: RefCell::new(new_histogram()),
                spun_ns: Cell::new(0),
            }),
        }))
    }

    /// The lateness of the probe's ticks so far (ns), if it has a probe.
    pub fn probe_lateness(&self) -> Option<Histogram<u64>> {
        self.probe.as_ref().map(|p| p.lateness.borrow().clone())
    }

    /// How long, inside the probe's span, the pacer kept its thread awake by spinning (from
    /// each decision to spin to the pacer's next turn): time the thread spends on a CPU by
    /// design, like `--busy-poll`, so its CPU share is no evidence of saturation.
    pub fn spun_ns(&self) -> Option<u64> {
        self.probe.as_ref().map(|p| p.spun_ns.get())
    }

    /// Record the probe ticks due by `now`; the next tick's due time, if inside its span.
    fn probe_tick(&self, now: u64) -> Option<u64> {
        let p = self.probe.as_ref()?;
        let mut due = p.next_ns.get();
        if due <= now && due < p.until_ns {
            let mut h = p.lateness.borrow_mut();
            while due <= now && due < p.until_ns {
                h.saturating_record(now - due);
                due += PROBE_PERIOD_NS;
            }
            p.next_ns.set(due);
        }
        (due < p.until_ns).then_some(due)
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
            let probe_due = self.probe_tick(now);
            if next_due.is_some_and(|due| due - now <= SPIN_NS) {
                // Sleeping and waking again would cost more than the wait: stay awake,
                // letting the runtime poll sockets (yield_now defers to the I/O driver).
                // While spinning, new registrations need not arm the timerfd. (Only sends
                // are worth spinning for, not the probe.)
                self.armed_ns.set(0);
                tokio::task::yield_now().await;
                if let Some(p) = &self.probe {
                    let (from, to) = (now.max(p.from_ns), now_ns().min(p.until_ns));
                    p.spun_ns.set(p.spun_ns.get() + to.saturating_sub(from));
                }
                continue;
            }
            let next_due = match (next_due, probe_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match next_due {
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
            let pacer = Pacer::new(None).unwrap();
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

    #[test]
    fn the_probe_records_every_tick_of_a_stall() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let late = local.block_on(&rt, async {
            let from = now_ns() + 2_000_000;
            let pacer = Pacer::new(Some((from, from + 30 * PROBE_PERIOD_NS))).unwrap();
            tokio::task::spawn_local(pacer.clone().run());
            // Let a few ticks pass, then block the thread for 10 ms (the pacer cannot run).
            tokio::time::sleep(std::time::Duration::from_millis(8)).await;
            std::thread::sleep(std::time::Duration::from_millis(10));
            tokio::time::sleep(std::time::Duration::from_millis(40)).await;
            pacer.probe_lateness().unwrap()
        });
        assert_eq!(late.len(), 30, "one record per tick of the span");
        // The ticks due during the 10 ms block ran up to 10 ms late, one each.
        assert!(late.max() >= 8_000_000, "max {}", late.max());
        assert!(late.count_between(1_000_000, late.max()) >= 7);
    }
}
