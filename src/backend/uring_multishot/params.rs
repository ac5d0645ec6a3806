//! What one engine instance is configured with, and the defaults.

use std::io;
use std::time::Duration;

use super::buf_ring;
use crate::config::{BatchWait, Config};
use crate::policy::DRAIN_GRACE;

/// Period of the tick timeout that bounds every wait.
pub const DEFAULT_TICK: Duration = Duration::from_millis(100);
/// Per-connection cap on received-but-unsent buffers before its recv is paused.
pub const DEFAULT_MAX_QUEUED_BUFFERS: usize = 4;
/// Target size of the default provided-buffer pool, per worker.
const DEFAULT_POOL_BYTES: usize = 16 << 20;

/// Default number of provided buffers for a buffer size: a pool of about 16 MiB per worker,
/// clamped to 16..=4096 buffers (a power of two). Memory = buffers × buffer size, touched lazily;
/// with very large buffers the pool is bigger than 16 MiB (16 × 64 MiB at the CLI maximum) but
/// only the bytes actually received become resident.
pub fn default_buffer_count(buffer_size: usize) -> usize {
    let n = DEFAULT_POOL_BYTES / buffer_size.max(1);
    let n = if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    };
    n.clamp(16, 4096)
}

/// Everything one [`Engine`](super::Engine) needs to know besides the listener. The connection
/// limit is not here: it is the server-wide [`Admission`](crate::policy::Admission) passed to
/// [`Engine::run`](super::Engine::run).
#[derive(Debug, Clone)]
pub struct Params {
    /// Size of each provided buffer (the most one recv returns).
    pub buffer_size: usize,
    /// Number of provided buffers per worker (1..=32768).
    pub buffers: usize,
    /// Submission queue entries (the completion queue gets four times as many, 64..=65536).
    pub ring_entries: u32,
    /// Close connections without progress in either direction for this long
    /// ([`IdleSweep`](crate::policy::IdleSweep) timing).
    pub idle_timeout: Option<Duration>,
    /// After a stop request, how long connections may keep going before they are shut down.
    pub drain_timeout: Duration,
    /// Set `TCP_NODELAY` on accepted sockets.
    pub nodelay: bool,
    /// Per-connection cap on queued buffers (see the module docs on backpressure).
    pub max_queued_buffers: usize,
    /// Tick period: how often stop requests are read and counters flushed.
    pub tick: Duration,
    /// Optional completion batching (default off: it trades latency for fewer wake-ups).
    pub batch_wait: Option<BatchWait>,
    /// Test knob: after the forced shutdown, how long to wait for in-flight ops before
    /// abandoning their connections (the server always uses [`DRAIN_GRACE`]).
    #[doc(hidden)]
    pub drain_grace: Duration,
    /// Test knob: arm receives without the byte budget even where the kernel has it, to
    /// exercise the fallback (the server uses the budget wherever `probe` finds it).
    #[doc(hidden)]
    pub disable_recv_budget: bool,
}

impl Params {
    /// Defaults for a buffer size; every other field may be overridden.
    pub fn new(buffer_size: usize) -> Self {
        Params {
            buffer_size,
            buffers: default_buffer_count(buffer_size),
            ring_entries: 1024,
            idle_timeout: None,
            drain_timeout: Duration::from_secs(5),
            nodelay: true,
            max_queued_buffers: DEFAULT_MAX_QUEUED_BUFFERS,
            tick: DEFAULT_TICK,
            batch_wait: None,
            drain_grace: DRAIN_GRACE,
            disable_recv_budget: false,
        }
    }

    /// The server's parameters for one worker of `config`.
    pub fn from_config(config: &Config) -> Self {
        let mut p = Params::new(config.buffer_size);
        p.ring_entries = config.uring.ring_entries;
        p.idle_timeout = config.idle_timeout;
        p.drain_timeout = config.drain_timeout;
        p.nodelay = config.nodelay;
        p.batch_wait = config.uring.batch_wait;
        p
    }

    pub(super) fn validate(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.buffer_size == 0 || self.buffer_size > (1 << 30) {
            return bad(format!("buffer size {} out of range", self.buffer_size));
        }
        if self.buffers == 0 || self.buffers > buf_ring::MAX_BUFFERS {
            return bad(format!(
                "provided buffer count {} must be 1..={}",
                self.buffers,
                buf_ring::MAX_BUFFERS
            ));
        }
        if self.ring_entries == 0 {
            return bad("ring entries must be > 0".into());
        }
        if self.max_queued_buffers == 0 {
            return bad("max queued buffers must be > 0".into());
        }
        if self.tick.is_zero() {
            return bad("tick must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_is_bounded_and_a_power_of_two() {
        assert_eq!(default_buffer_count(16 * 1024), 1024);
        assert_eq!(default_buffer_count(64 * 1024), 256);
        assert_eq!(default_buffer_count(4096), 4096);
        assert_eq!(default_buffer_count(1), 4096);
        assert_eq!(default_buffer_count(1 << 20), 16);
        assert_eq!(default_buffer_count(1 << 30), 16);
        assert_eq!(default_buffer_count(10_000), 1024);
    }

    #[test]
    fn params_validation() {
        assert!(Params::new(16384).validate().is_ok());
        let mut p = Params::new(16384);
        p.buffers = 0;
        assert!(p.validate().is_err());
        let mut p = Params::new(16384);
        p.max_queued_buffers = 0;
        assert!(p.validate().is_err());
        let mut p = Params::new(16384);
        p.tick = Duration::ZERO;
        assert!(p.validate().is_err());
    }
}
