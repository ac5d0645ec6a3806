//! `io_uring_setup(2)` itself: whether io_uring works at all, the ring features its result lists,
//! which setup flags the kernel accepts, and why a setup failed.
//!
//! The probes call the syscall directly rather than through the io-uring crate: a bare setup
//! returns the ring fd and the `IORING_FEAT_*` bits without mapping anything into this process
//! (the crate would map three regions per try), and the crate keeps one of the bits
//! (`REG_REG_RING`) private.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::{Feature, Features};

/// `struct io_uring_params` (include/uapi/linux/io_uring.h): 120 bytes, integers only. The two
/// offset structs at the end are only written by the kernel; they are opaque here.
#[repr(C)]
#[derive(Default)]
struct RawParams {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: [u32; 10],
    cq_off: [u32; 10],
}
const _: () = assert!(std::mem::size_of::<RawParams>() == 120);

const SETUP_SUBMIT_ALL: u32 = 1 << 7;
const SETUP_COOP_TASKRUN: u32 = 1 << 8;
const SETUP_SINGLE_ISSUER: u32 = 1 << 12;
const SETUP_DEFER_TASKRUN: u32 = 1 << 13;
const SETUP_NO_SQARRAY: u32 = 1 << 16;

const FEAT_NODROP: u32 = 1 << 1;
const FEAT_FAST_POLL: u32 = 1 << 5;
const FEAT_SQPOLL_NONFIXED: u32 = 1 << 7;
const FEAT_EXT_ARG: u32 = 1 << 8;
const FEAT_REG_REG_RING: u32 = 1 << 13;
const FEAT_RECVSEND_BUNDLE: u32 = 1 << 14;
const FEAT_MIN_TIMEOUT: u32 = 1 << 15;

/// Ring features read from the setup result.
const RING_FEATURES: [(u32, Feature); 7] = [
    (FEAT_NODROP, Feature::Nodrop),
    (FEAT_FAST_POLL, Feature::FastPoll),
    (FEAT_SQPOLL_NONFIXED, Feature::Sqpoll),
    (FEAT_EXT_ARG, Feature::ExtArg),
    (FEAT_REG_REG_RING, Feature::RegRegRing),
    (FEAT_RECVSEND_BUNDLE, Feature::Bundle),
    (FEAT_MIN_TIMEOUT, Feature::MinWait),
];

/// The setup flags a feature stands for (with the flags it needs), if it is one.
fn setup_flags(feature: Feature) -> Option<u32> {
    Some(match feature {
        Feature::SingleIssuer => SETUP_SINGLE_ISSUER,
        // The kernel accepts DEFER_TASKRUN only together with SINGLE_ISSUER.
        Feature::DeferTaskrun => SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN,
        Feature::SubmitAll => SETUP_SUBMIT_ALL,
        Feature::CoopTaskrun => SETUP_COOP_TASKRUN,
        Feature::NoSqarray => SETUP_NO_SQARRAY,
        _ => return None,
    })
}

/// A bare ring: its fd (closed on drop) and the feature bits the kernel reported.
fn raw_setup(flags: u32) -> io::Result<(OwnedFd, u32)> {
    let mut params = RawParams {
        flags,
        ..RawParams::default()
    };
    // SAFETY: `params` is a valid, writable io_uring_params for the duration of the call; the
    // kernel reads flags and writes the rest. The entries count is small and valid.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            2 as libc::c_long,
            &mut params as *mut RawParams,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok((fd, params.features))
}

/// Whether the kernel accepts the setup flags of `feature`: `Ok(false)` for the EINVAL of an
/// unknown flag, `Err` if setup failed otherwise (the answer is unknown).
fn accepts(feature: Feature) -> io::Result<bool> {
    let flags = setup_flags(feature).expect("a setup-flag feature");
    match raw_setup(flags) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// io_uring itself, the ring features and the setup flags. `Err`: io_uring cannot be set up at
/// all (nothing else is probed then).
pub(super) fn probe(
    features: &mut Features,
    failures: &mut Vec<(&'static str, io::Error)>,
) -> io::Result<()> {
    let (_fd, bits) = raw_setup(0)?;
    *features = Features::io_uring_only();
    for (bit, feature) in RING_FEATURES {
        features.set(feature, bits & bit != 0);
    }
    for feature in Feature::ALL {
        if setup_flags(feature).is_some() {
            match accepts(feature) {
                Ok(yes) => features.set(feature, yes),
                Err(err) => failures.push((feature.name(), err)),
            }
        }
    }
    Ok(())
}

/// Why `io_uring_setup(2)` failed with `err` for an engine that asked for the setup flags of
/// `flags`, in words a user can act on, ending with the `--runtime epoll` hint. Reads
/// `/proc/sys/kernel/io_uring_disabled` when it exists and, for EINVAL, tries each flag alone on
/// a bare ring to name the one the kernel refuses. Logs nothing (the caller's error is the one
/// line the user sees).
pub fn explain_setup_error(err: &io::Error, flags: &[Feature]) -> String {
    let errno = err.raw_os_error();
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    let bare_refused = errno == Some(libc::EINVAL)
        && matches!(raw_setup(0), Err(e) if e.raw_os_error() == Some(libc::EINVAL));
    let refused: Vec<Feature> = if errno == Some(libc::EINVAL) && !bare_refused {
        flags
            .iter()
            .copied()
            .filter(|f| setup_flags(*f).is_some() && matches!(accepts(*f), Ok(false)))
            .collect()
    } else {
        Vec::new()
    };
    let sqpoll = flags.contains(&Feature::Sqpoll);
    explain(err, sysctl, sqpoll, &refused, bare_refused)
}

/// [`explain_setup_error`] without the environment: `sysctl` is `kernel.io_uring_disabled` if
/// readable, `sqpoll` whether SQPOLL was asked for, `refused` the requested flags a bare setup
/// refuses, `bare_refused` whether even a setup without flags fails with EINVAL.
fn explain(
    err: &io::Error,
    sysctl: Option<u8>,
    sqpoll: bool,
    refused: &[Feature],
    bare_refused: bool,
) -> String {
    let errno = err.raw_os_error().unwrap_or(0);
    let cause = match errno {
        libc::ENOSYS => {
            "ENOSYS: this kernel has no io_uring (built without CONFIG_IO_URING), or a \
                         seccomp filter (e.g. a container runtime's default profile) blocks \
                         io_uring_setup"
                .to_string()
        }
        libc::EPERM => match sysctl {
            Some(2) => "EPERM: io_uring is disabled on this system (sysctl \
                        kernel.io_uring_disabled = 2)"
                .to_string(),
            Some(1) => "EPERM: io_uring is limited to root and the group in \
                        kernel.io_uring_group (sysctl kernel.io_uring_disabled = 1)"
                .to_string(),
            _ if sqpoll => "EPERM: --sqpoll needs CAP_SYS_ADMIN on kernels before 5.11, or a \
                            seccomp filter or security module forbids io_uring_setup"
                .to_string(),
            _ => "EPERM: a seccomp filter or security module (e.g. a container runtime's \
                  default profile) forbids io_uring_setup"
                .to_string(),
        },
        libc::EINVAL if bare_refused => "EINVAL: the kernel refuses every io_uring setup (a \
                                         seccomp filter or a kernel without io_uring support)"
            .to_string(),
        libc::EINVAL if !refused.is_empty() => {
            let names: Vec<String> = refused
                .iter()
                .map(|f| format!("{} (Linux {})", f.name().to_uppercase(), f.since()))
                .collect();
            format!(
                "EINVAL: this kernel is too old for this engine: it refuses the setup flag{} {}",
                if names.len() > 1 { "s" } else { "" },
                names.join(", ")
            )
        }
        libc::EINVAL => format!("EINVAL: the kernel refused the ring's parameters ({err})"),
        libc::ENOMEM => "ENOMEM: not enough memory for the rings (the locked-memory limit, \
                         `ulimit -l`, counts them on kernels before 5.12; try fewer \
                         --ring-entries or --threads)"
            .to_string(),
        libc::EMFILE | libc::ENFILE => format!("out of file descriptors ({err})"),
        _ => err.to_string(),
    };
    format!("io_uring_setup failed: {cause}; --runtime epoll works without io_uring")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(e: i32) -> io::Error {
        io::Error::from_raw_os_error(e)
    }

    #[test]
    fn each_cause_is_named_with_the_epoll_hint() {
        /// errno, sysctl, flags refused, bare setup refused, expected words.
        type Case = (i32, Option<u8>, &'static [Feature], bool, &'static str);
        let cases: [Case; 9] = [
            (libc::ENOSYS, None, &[], false, "seccomp"),
            (
                libc::EPERM,
                Some(2),
                &[],
                false,
                "kernel.io_uring_disabled = 2",
            ),
            (
                libc::EPERM,
                Some(1),
                &[],
                false,
                "kernel.io_uring_disabled = 1",
            ),
            (
                libc::EPERM,
                Some(0),
                &[],
                false,
                "seccomp filter or security module",
            ),
            (
                libc::EPERM,
                None,
                &[],
                false,
                "seccomp filter or security module",
            ),
            (
                libc::EINVAL,
                None,
                &[Feature::DeferTaskrun],
                false,
                "too old for this engine: it refuses the setup flag DEFER_TASKRUN (Linux 6.1)",
            ),
            (
                libc::EINVAL,
                None,
                &[],
                true,
                "refuses every io_uring setup",
            ),
            (libc::ENOMEM, None, &[], false, "ulimit -l"),
            (libc::EMFILE, None, &[], false, "file descriptors"),
        ];
        for (e, sysctl, refused, bare, needle) in cases {
            let msg = explain(&errno(e), sysctl, false, refused, bare);
            assert!(msg.contains(needle), "{msg}");
            assert!(msg.starts_with("io_uring_setup failed: "), "{msg}");
            assert!(
                msg.ends_with("--runtime epoll works without io_uring"),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
        let sqpoll = explain(&errno(libc::EPERM), Some(0), true, &[], false);
        assert!(sqpoll.contains("--sqpoll needs CAP_SYS_ADMIN"), "{sqpoll}");
        let two = explain(
            &errno(libc::EINVAL),
            None,
            false,
            &[Feature::SingleIssuer, Feature::DeferTaskrun],
            false,
        );
        assert!(
            two.contains("setup flags SINGLE_ISSUER (Linux 6.0), DEFER_TASKRUN (Linux 6.1)"),
            "{two}"
        );
    }

    #[test]
    fn bare_setup_works_here_and_reports_features() {
        // The CI kernels (6.1 and newer) all have io_uring with NODROP and FAST_POLL.
        let (_fd, bits) = raw_setup(0).expect("io_uring on the test machine");
        assert_ne!(bits & FEAT_NODROP, 0);
        assert!(accepts(Feature::SingleIssuer).is_ok());
    }
}
