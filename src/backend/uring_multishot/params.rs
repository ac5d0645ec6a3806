//! What one engine instance is configured with, and the defaults.

use std::io;
use std::time::Duration;

use super::buf_ring;
use crate::config::{BatchPolicy, Config, DEFAULT_DRAIN_TIMEOUT, DEFAULT_RING_ENTRIES};
use crate::policy::DRAIN_GRACE;
use crate::probe::{Feature, Features, Usage};

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
    /// How each loop waits for completions (`--batch-wait`; `inline` by default).
    pub batch_wait: BatchPolicy,
    /// Test knob: after the forced shutdown, how long to wait for in-flight ops before
    /// abandoning their connections (the server always uses [`DRAIN_GRACE`]).
    #[doc(hidden)]
    pub drain_grace: Duration,
    /// How receives are armed: by default as the probe says (`--feature recv_budget=off` switches the
    /// budget off; the other values are test knobs).
    #[doc(hidden)]
    pub recv_budget: RecvBudget,
    /// Set the ring up without the SQ index array (`IORING_SETUP_NO_SQARRAY`) where the kernel
    /// has it (default on; `--feature no_sqarray=off`).
    pub no_sqarray: bool,
    /// Register the ring fd and enter the kernel through it (`IORING_REGISTER_RING_FDS`) where
    /// the kernel has it (default on; `--feature ring_fd=off`).
    pub ring_fd: bool,
    /// Send [`ZC_MIN_SEND`] bytes or more with `IORING_OP_SEND_ZC` where the kernel has it
    /// (default off; `--feature send_zc=on`).
    pub send_zc: bool,
    /// Bundled budgeted multishot receives (`IORING_RECVSEND_BUNDLE`: one CQE for several
    /// provided buffers) where the kernel has bundles and the receive budget is in use (default
    /// off; `--feature bundle=on`).
    pub bundle: bool,
    /// Register the pool with `IOU_PBUF_RING_INC` where the kernel has it, so receives take only
    /// the bytes they need from a buffer (default off; `--feature buf_ring_inc=on`). Wins over
    /// `bundle`: with both, bundles are off.
    pub buf_ring_inc: bool,
}

/// The smallest send `--feature send_zc=on` sends zero-copy: below it, pinning the pages and the
/// extra notification completion cost more than the copy they save.
pub const ZC_MIN_SEND: u32 = 16 * 1024;

/// Which receive the engine arms (see the `ops` module docs): the budgeted multishot receive, or
/// single-shot receives of one provided buffer each. A developer and test knob: the server arms
/// the budgeted receive wherever [`crate::probe`] finds the budget.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecvBudget {
    /// The budgeted multishot receive where the kernel has the budget, single-shot receives
    /// elsewhere.
    #[default]
    Probe,
    /// Single-shot receives even where the kernel has the budget (`--feature recv_budget=off`).
    Off,
    /// Budgeted multishot receives even where the probe found no budget (a probe that is wrong):
    /// such a kernel refuses each one, and each falls back on its own.
    Force,
    /// Budgeted multishot receives that every kernel refuses (fault injection: they also carry
    /// `MSG_WAITALL`, which no kernel accepts on a multishot receive), so that the
    /// per-operation fallback runs on kernels that do have the budget.
    ForceRefused,
}

/// Features the engine cannot run without: the ring setup (the first three), the CQ overflow
/// guarantee its CQ sizing relies on, the provided-buffer pool. [`Engine::new`](super::Engine::new)
/// refuses to start where one is missing.
pub(super) const REQUIRED: [Feature; 5] = [
    Feature::SingleIssuer,
    Feature::DeferTaskrun,
    Feature::SubmitAll,
    Feature::Nodrop,
    Feature::BufRing,
];

impl Params {
    /// Defaults for a buffer size; every other field may be overridden.
    pub fn new(buffer_size: usize) -> Self {
        Params {
            buffer_size,
            buffers: default_buffer_count(buffer_size),
            ring_entries: DEFAULT_RING_ENTRIES,
            idle_timeout: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            nodelay: true,
            max_queued_buffers: DEFAULT_MAX_QUEUED_BUFFERS,
            tick: DEFAULT_TICK,
            batch_wait: BatchPolicy::default(),
            drain_grace: DRAIN_GRACE,
            recv_budget: RecvBudget::Probe,
            no_sqarray: true,
            ring_fd: true,
            send_zc: false,
            bundle: false,
            buf_ring_inc: false,
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
        if config.uring.switch(Feature::RecvBudget) == Some(false) {
            p.recv_budget = RecvBudget::Off;
        }
        let switch = |feature, default| config.uring.switch(feature).unwrap_or(default);
        p.no_sqarray = switch(Feature::NoSqarray, p.no_sqarray);
        p.ring_fd = switch(Feature::RingFd, p.ring_fd);
        p.send_zc = switch(Feature::SendZc, p.send_zc);
        p.bundle = switch(Feature::Bundle, p.bundle);
        p.buf_ring_inc = switch(Feature::BufRingInc, p.buf_ring_inc);
        p
    }

    /// What an engine with these parameters does with each feature on a kernel with `features`;
    /// the engine takes its decisions from this, and the `features:` line prints it.
    ///
    /// Fallbacks (README "Kernels"): without the receive budget, single-shot receives of one
    /// buffer each; without multishot timeouts, timeouts re-armed one by one; without
    /// `min_wait`, `--batch-wait` waits with a plain timeout; without `no_sqarray`, the ring keeps
    /// its SQ index array; without `ring_fd`, `io_uring_enter` takes the ring's fd; without
    /// `send_zc`, every send copies; without `bundle` (or without the budget), one buffer per
    /// receive CQE; without `buf_ring_inc`, every receive takes a whole buffer. The required
    /// features have none.
    pub fn usage(&self, features: &Features) -> Usage {
        let mut u = Usage::new();
        for feature in REQUIRED {
            u.decide(feature, true, features);
        }
        u.decide(Feature::FastPoll, true, features);
        // The adaptive policy and a fixed batch bound their longer waits with a timeout (ext_arg)
        // and `min_wait`; `inline` and `off` wait without either.
        let batch = matches!(
            self.batch_wait,
            BatchPolicy::Adaptive | BatchPolicy::Fixed(_)
        );
        u.decide(Feature::ExtArg, batch, features);
        u.decide(Feature::MinWait, batch, features);
        let budget = u.decide(
            Feature::RecvBudget,
            self.recv_budget != RecvBudget::Off,
            features,
        );
        u.decide(Feature::RecvMultishot, budget, features);
        u.decide(Feature::MultishotTimeout, true, features);
        u.decide(Feature::NoSqarray, self.no_sqarray, features);
        u.decide(Feature::RingFd, self.ring_fd, features);
        u.decide(Feature::SendZc, self.send_zc, features);
        // Incremental consumption wins over bundles: a bundle's CQE names only its first
        // buffer, and which buffers (and which parts of them) the rest of it filled would have
        // to be read back from descriptors the kernel rewrites in that mode (`buf_ring`).
        let inc = u.decide(Feature::BufRingInc, self.buf_ring_inc, features);
        // Bundles only for the budgeted receive, whose byte budget bounds what one bundle
        // takes; the single-shot fallback receives one buffer at a time by design.
        u.decide(Feature::Bundle, self.bundle && budget && !inc, features);
        // Not used by this engine yet: listed as off where the kernel has it.
        u.decide(Feature::RegRegRing, false, features);
        u
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
    fn defaults_are_the_servers() {
        use clap::Parser;
        let cli = crate::config::Cli::parse_from(["uring-echo", "--runtime", "uring-multishot"]);
        let config = Config::try_from(cli).unwrap();
        let (new, server) = (
            Params::new(config.buffer_size),
            Params::from_config(&config),
        );
        assert_eq!(new.ring_entries, server.ring_entries);
        assert_eq!(new.drain_timeout, server.drain_timeout);
        assert_eq!(new.nodelay, server.nodelay);
        assert_eq!(new.batch_wait, server.batch_wait);
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

    fn kernel(available: &[Feature]) -> Features {
        let mut f = Features::io_uring_only();
        for feature in available {
            f.set(*feature, true);
        }
        f
    }

    #[test]
    fn usage_on_a_6_1_like_and_a_6_18_like_kernel() {
        let base = [
            Feature::SingleIssuer,
            Feature::DeferTaskrun,
            Feature::SubmitAll,
            Feature::Nodrop,
            Feature::FastPoll,
            Feature::ExtArg,
            Feature::BufRing,
            Feature::RecvMultishot,
            Feature::SendZc,
            Feature::RingFd,
        ];
        let old = kernel(&base);
        let mut adaptive = Params::new(4096);
        adaptive.batch_wait = BatchPolicy::Adaptive;
        let u = adaptive.usage(&old);
        assert!(!u.uses(Feature::RecvBudget));
        // The adaptive wait would bound its batches with min_wait (6.12); without it, it only
        // counts the inline sends in.
        assert_eq!(
            u.missing(),
            [
                Feature::NoSqarray,
                Feature::MinWait,
                Feature::RecvBudget,
                Feature::MultishotTimeout
            ]
        );
        // Zero-copy sends are off unless switched on.
        assert_eq!(u.off(), [Feature::RecvMultishot, Feature::SendZc]);
        assert!(u.in_use().contains(&Feature::ExtArg));
        assert!(u.in_use().contains(&Feature::RingFd));
        let mut off = Params::new(4096);
        off.batch_wait = BatchPolicy::Off;
        let u = off.usage(&old);
        assert_eq!(
            u.off(),
            [Feature::ExtArg, Feature::RecvMultishot, Feature::SendZc]
        );
        assert_eq!(
            u.missing(),
            [
                Feature::NoSqarray,
                Feature::RecvBudget,
                Feature::MultishotTimeout
            ]
        );

        let mut new = kernel(&base);
        for f in [
            Feature::RecvBudget,
            Feature::MultishotTimeout,
            Feature::MinWait,
            Feature::Bundle,
            Feature::NoSqarray,
        ] {
            new.set(f, true);
        }
        let mut p = Params::new(4096);
        // The default wait (`inline`) arms no timer: neither ext_arg nor min_wait.
        let u = p.usage(&new);
        assert!(u.off().contains(&Feature::MinWait) && u.off().contains(&Feature::ExtArg));
        p.batch_wait = BatchPolicy::Adaptive;
        let u = p.usage(&new);
        assert!(u.uses(Feature::RecvBudget) && u.uses(Feature::RecvMultishot));
        assert!(u.missing().is_empty());
        assert_eq!(u.off(), [Feature::Bundle, Feature::SendZc]);
        assert!(u.uses(Feature::MinWait) && u.uses(Feature::ExtArg));
        assert!(u.uses(Feature::NoSqarray) && u.uses(Feature::RingFd));
        // Each optional feature follows its switch.
        let mut switched = Params::new(4096);
        switched.no_sqarray = false;
        switched.ring_fd = false;
        switched.send_zc = true;
        switched.bundle = true;
        let u = switched.usage(&new);
        assert!(u.off().contains(&Feature::NoSqarray) && u.off().contains(&Feature::RingFd));
        assert!(u.uses(Feature::SendZc) && u.uses(Feature::Bundle));
        // Incremental consumption: off by default, missing where the kernel lacks it, and it
        // wins over bundles.
        assert!(!u.uses(Feature::BufRingInc) && !u.off().contains(&Feature::BufRingInc));
        switched.buf_ring_inc = true;
        let u = switched.usage(&new);
        assert!(u.missing().contains(&Feature::BufRingInc) && u.uses(Feature::Bundle));
        let mut inc_kernel = new;
        inc_kernel.set(Feature::BufRingInc, true);
        assert!(Params::new(4096)
            .usage(&inc_kernel)
            .off()
            .contains(&Feature::BufRingInc));
        let u = switched.usage(&inc_kernel);
        assert!(u.uses(Feature::BufRingInc));
        assert!(!u.uses(Feature::Bundle) && u.off().contains(&Feature::Bundle));
        switched.buf_ring_inc = false;
        // Bundles need the budgeted receive.
        switched.recv_budget = RecvBudget::Off;
        assert!(switched.usage(&new).off().contains(&Feature::Bundle));
        assert!(!switched.usage(&old).uses(Feature::Bundle));
        p.recv_budget = RecvBudget::Off;
        p.batch_wait = BatchPolicy::Fixed(crate::config::BatchWait {
            min_completions: 8,
            timeout: Duration::from_micros(100),
        });
        let u = p.usage(&new);
        assert!(u.uses(Feature::MinWait) && u.uses(Feature::ExtArg));
        assert!(u.off().contains(&Feature::RecvBudget));
        assert!(u.off().contains(&Feature::RecvMultishot));
    }
}
