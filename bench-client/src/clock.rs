//! The one clock every timestamp comes from.
//!
//! All latencies are differences of `CLOCK_MONOTONIC` readings in nanoseconds (a vDSO call,
//! ~20 ns, no syscall). Using the raw clock instead of `std::time::Instant` lets the open-loop
//! pacer arm a `timerfd` on exactly the same clock the latencies are measured with. Wall-clock
//! time only appears in reports and in `--start-at`, through a [`WallAnchor`] taken once.

use std::time::{Duration, SystemTime};

/// Current `CLOCK_MONOTONIC` time in nanoseconds.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Convert a nanosecond count to a `Duration`.
pub fn ns_to_duration(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// Saturating conversion of a `Duration` to nanoseconds.
pub fn duration_to_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A simultaneous reading of the wall clock and the monotonic clock, to translate between them.
#[derive(Debug, Clone, Copy)]
pub struct WallAnchor {
    wall: SystemTime,
    mono_ns: u64,
}

impl WallAnchor {
    /// Read both clocks now.
    pub fn now() -> WallAnchor {
        let mono_ns = now_ns();
        let wall = SystemTime::now();
        WallAnchor { wall, mono_ns }
    }

    /// Wall-clock time of monotonic instant `mono_ns`.
    pub fn wall_at(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(mono_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - mono_ns)
        }
    }

    /// Monotonic instant of wall-clock time `wall` (saturating at 0).
    pub fn mono_at(&self, wall: SystemTime) -> u64 {
        match wall.duration_since(self.wall) {
            Ok(ahead) => self.mono_ns.saturating_add(duration_to_ns(ahead)),
            Err(behind) => self
                .mono_ns
                .saturating_sub(duration_to_ns(behind.duration())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_anchor_round_trip() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        let anchor = WallAnchor::now();
        let later = anchor.mono_ns + 1_500_000_000;
        let wall = anchor.wall_at(later);
        assert_eq!(anchor.mono_at(wall), later);
        let earlier = anchor.mono_ns - 1_000;
        assert_eq!(anchor.mono_at(anchor.wall_at(earlier)), earlier);
    }
}
