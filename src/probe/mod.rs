//! What the running kernel's io_uring offers, found by trying it: never from the kernel version
//! (distribution kernels backport features and version numbers lie), never assumed.
//!
//! [`features`] probes once per process and caches the answer; the engines, the `features:` line
//! and the tests all read it from there. What is probed, and how:
//! - io_uring itself and the ring features (`IORING_FEAT_*`): one `io_uring_setup(2)` without
//!   flags, whose result lists them;
//! - setup flags ([`Feature::SingleIssuer`], [`Feature::DeferTaskrun`], ...): one bare
//!   `io_uring_setup(2)` per flag (a kernel refuses a flag it does not know with EINVAL); a
//!   bare setup only allocates the rings, nothing is mapped into this process;
//! - opcodes: `IORING_REGISTER_PROBE` on one scratch ring, which every functional probe below
//!   then reuses;
//! - provided-buffer rings (plain and incremental), the registered ring fd: registering them on
//!   the scratch ring;
//! - multishot receive, its byte budget, multishot timeouts: running them on the scratch ring
//!   against a socket pair (the kernel accepts some of these SQEs and refuses the feature only
//!   when it runs them).
//!
//! Failure modes are honest: a probe answers `Ok(false)` when the kernel refuses the feature the
//! documented way, and `Err` when the probe itself could not run; [`features`] counts the latter
//! as absent and logs it once (so the engines take their fallbacks). The whole probe costs a
//! dozen syscalls and a few milliseconds, once per process.
//!
//! Adding a feature: a [`Feature`] variant (name, upstream version), a probe in `setup` or `ring`
//! that sets it, and a decision in each engine's usage (`Params::usage` for uring-multishot,
//! `backend::uring::usage` for tokio-uring) saying whether the engine wants it; the `features:`
//! line and its tests follow from there.
//!
//! Also here: [`report`], the `features:` line, and [`explain_setup_error`], which turns a failed
//! `io_uring_setup(2)` into a cause a user can act on.

pub mod report;
mod ring;
mod setup;

use std::fmt;
use std::sync::OnceLock;

pub use report::{FeatureReport, Usage};
pub use setup::explain_setup_error;

/// One io_uring capability an engine uses or could use. The upstream Linux version that
/// introduced it is documentation only ([`Feature::since`]): availability is always probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// `IORING_SETUP_SINGLE_ISSUER`: only one task submits.
    SingleIssuer,
    /// `IORING_SETUP_DEFER_TASKRUN`: completions run only inside `io_uring_enter`.
    DeferTaskrun,
    /// `IORING_SETUP_SUBMIT_ALL`: a failing SQE does not stop the rest of the batch.
    SubmitAll,
    /// `IORING_SETUP_COOP_TASKRUN`: no interrupt per completion.
    CoopTaskrun,
    /// `IORING_SETUP_NO_SQARRAY`: no SQ index array.
    NoSqarray,
    /// `IORING_FEAT_NODROP`: completions are never dropped when the CQ is full.
    Nodrop,
    /// `IORING_FEAT_FAST_POLL`: socket operations wait by poll, not in worker threads.
    FastPoll,
    /// `IORING_FEAT_EXT_ARG`: `io_uring_enter` takes a timeout.
    ExtArg,
    /// `IORING_FEAT_SQPOLL_NONFIXED`: `IORING_SETUP_SQPOLL` without registered files.
    Sqpoll,
    /// `IORING_FEAT_MIN_TIMEOUT`: `io_uring_enter` takes a minimum wait (`min_wait_usec`).
    MinWait,
    /// `IORING_FEAT_RECVSEND_BUNDLE`: one receive or send covers several provided buffers.
    Bundle,
    /// `IORING_FEAT_REG_REG_RING`: register calls through a registered ring fd.
    RegRegRing,
    /// `IORING_REGISTER_RING_FDS`: `io_uring_enter` through a registered ring fd.
    RingFd,
    /// `IORING_REGISTER_PBUF_RING`: provided-buffer rings.
    BufRing,
    /// `IOU_PBUF_RING_INC`: a provided buffer consumed incrementally by several receives.
    BufRingInc,
    /// `IORING_RECV_MULTISHOT`: one receive SQE completes once per arrival.
    RecvMultishot,
    /// `IORING_RECV_MSHOT_LIM`: a multishot receive with a total byte budget.
    RecvBudget,
    /// `IORING_TIMEOUT_MULTISHOT`: a periodic timeout from one SQE.
    MultishotTimeout,
    /// `IORING_OP_SEND_ZC`: zero-copy send.
    SendZc,
}

impl Feature {
    /// Every feature, in the order the `features:` line lists them.
    pub const ALL: [Feature; 19] = [
        Feature::SingleIssuer,
        Feature::DeferTaskrun,
        Feature::SubmitAll,
        Feature::CoopTaskrun,
        Feature::NoSqarray,
        Feature::Nodrop,
        Feature::FastPoll,
        Feature::ExtArg,
        Feature::Sqpoll,
        Feature::MinWait,
        Feature::Bundle,
        Feature::RegRegRing,
        Feature::RingFd,
        Feature::BufRing,
        Feature::BufRingInc,
        Feature::RecvMultishot,
        Feature::RecvBudget,
        Feature::MultishotTimeout,
        Feature::SendZc,
    ];

    /// The name in the `features:` line (lower case, no spaces or commas).
    pub const fn name(self) -> &'static str {
        match self {
            Feature::SingleIssuer => "single_issuer",
            Feature::DeferTaskrun => "defer_taskrun",
            Feature::SubmitAll => "submit_all",
            Feature::CoopTaskrun => "coop_taskrun",
            Feature::NoSqarray => "no_sqarray",
            Feature::Nodrop => "nodrop",
            Feature::FastPoll => "fast_poll",
            Feature::ExtArg => "ext_arg",
            Feature::Sqpoll => "sqpoll",
            Feature::MinWait => "min_wait",
            Feature::Bundle => "bundle",
            Feature::RegRegRing => "reg_reg_ring",
            Feature::RingFd => "ring_fd",
            Feature::BufRing => "buf_ring",
            Feature::BufRingInc => "buf_ring_inc",
            Feature::RecvMultishot => "recv_multishot",
            Feature::RecvBudget => "recv_budget",
            Feature::MultishotTimeout => "timeout_multishot",
            Feature::SendZc => "send_zc",
        }
    }

    /// The upstream Linux release that introduced it (documentation; never used to decide).
    pub const fn since(self) -> &'static str {
        match self {
            Feature::Nodrop => "5.5",
            Feature::FastPoll => "5.7",
            Feature::ExtArg | Feature::Sqpoll => "5.11",
            Feature::SubmitAll | Feature::RingFd => "5.18",
            Feature::CoopTaskrun | Feature::BufRing => "5.19",
            Feature::SingleIssuer | Feature::RecvMultishot | Feature::SendZc => "6.0",
            Feature::DeferTaskrun => "6.1",
            Feature::RegRegRing => "6.3",
            Feature::MultishotTimeout => "6.4",
            Feature::NoSqarray => "6.6",
            Feature::Bundle => "6.10",
            Feature::MinWait | Feature::BufRingInc => "6.12",
            Feature::RecvBudget => "6.17",
        }
    }

    /// Looks a feature up by its [`Feature::name`].
    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the running kernel supports, of the [`Feature`]s and the opcodes the engines use.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Bit `Feature as u32`: available.
    available: u32,
    /// Bit `opcode`: `IORING_REGISTER_PROBE` says supported.
    opcodes: [u64; 4],
    /// `io_uring_setup(2)` works at all.
    io_uring: bool,
}

impl Features {
    /// Nothing available (what a kernel without io_uring has).
    pub const NONE: Features = Features {
        available: 0,
        opcodes: [0; 4],
        io_uring: false,
    };

    /// Whether the kernel has `feature`.
    pub fn has(&self, feature: Feature) -> bool {
        self.available & feature.bit() != 0
    }

    /// Whether io_uring can be set up at all (not disabled, not blocked, not missing).
    pub fn io_uring(&self) -> bool {
        self.io_uring
    }

    /// Whether `IORING_REGISTER_PROBE` lists the opcode (`io_uring::opcode::X::CODE`) as
    /// supported.
    pub fn has_opcode(&self, code: u8) -> bool {
        self.opcodes[code as usize / 64] & (1 << (code % 64)) != 0
    }

    /// The available features, in [`Feature::ALL`] order.
    pub fn available(&self) -> impl Iterator<Item = Feature> + '_ {
        Feature::ALL.into_iter().filter(|f| self.has(*f))
    }

    /// Marks `feature` available or not (probes, and tests that model another kernel).
    pub fn set(&mut self, feature: Feature, available: bool) {
        if available {
            self.available |= feature.bit();
        } else {
            self.available &= !feature.bit();
        }
    }

    /// Marks an opcode supported (probes, and tests that model another kernel).
    pub fn set_opcode(&mut self, code: u8) {
        self.opcodes[code as usize / 64] |= 1 << (code % 64);
    }

    /// A kernel on which io_uring works, with nothing else known yet.
    pub fn io_uring_only() -> Features {
        Features {
            io_uring: true,
            ..Features::NONE
        }
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.available().map(Feature::name).collect();
        f.debug_struct("Features")
            .field("io_uring", &self.io_uring)
            .field("available", &names)
            .finish_non_exhaustive()
    }
}

/// The features of the running kernel, probed on first use and cached for the process. A probe
/// that cannot run counts as "absent" and is logged once (a warning), here.
pub fn features() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(|| {
        let (features, failures) = probe();
        for (what, err) in failures {
            tracing::warn!(error = %err, "cannot probe {what}; not using it");
        }
        tracing::debug!(?features, "io_uring features probed");
        features
    })
}

/// Runs every probe now (no cache, no logging): the features, and the probes that could not run
/// with their error. [`features`] is the cached form.
pub fn probe() -> (Features, Vec<(&'static str, std::io::Error)>) {
    let mut features = Features::NONE;
    let mut failures = Vec::new();
    match setup::probe(&mut features, &mut failures) {
        Ok(()) => ring::probe(&mut features, &mut failures),
        Err(err) => failures.push(("io_uring (io_uring_setup)", err)),
    }
    (features, failures)
}

/// The running kernel's release (`uname -r`), for reports only; whitespace (never seen in
/// practice) becomes `_` so the value stays one token.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; all-zero is valid, and uname fills NUL-terminated strings.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes into the struct we own.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: `release` is NUL-terminated by uname (and zero-initialised before).
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    let s: String = release
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_tokens_and_round_trip() {
        let mut names: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
        for n in &names {
            assert!(
                !n.is_empty() && n.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{n}"
            );
            assert_eq!(Feature::from_name(n).map(Feature::name), Some(*n));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Feature::ALL.len());
        assert!(Feature::ALL.len() <= 32, "the set is a u32");
    }

    #[test]
    fn set_and_has() {
        let mut f = Features::NONE;
        assert!(!f.has(Feature::RecvBudget) && !f.io_uring());
        f.set(Feature::RecvBudget, true);
        f.set(Feature::SendZc, true);
        assert!(f.has(Feature::RecvBudget) && f.has(Feature::SendZc));
        assert_eq!(
            f.available().collect::<Vec<_>>(),
            [Feature::RecvBudget, Feature::SendZc]
        );
        f.set(Feature::RecvBudget, false);
        assert!(!f.has(Feature::RecvBudget));
        for code in [0u8, 63, 64, 255] {
            assert!(!f.has_opcode(code));
            f.set_opcode(code);
            assert!(f.has_opcode(code));
        }
        assert!(!f.has_opcode(1));
    }

    #[test]
    fn kernel_release_is_one_token() {
        let k = kernel_release();
        assert!(!k.is_empty() && !k.contains(char::is_whitespace), "{k:?}");
    }
}
