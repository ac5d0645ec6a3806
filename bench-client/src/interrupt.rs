//! Ctrl-C / SIGTERM handling: the first signal sets a flag that the run loop polls, so the run
//! stops early and spawned servers are still stopped by their `Drop` guards; a second signal
//! gets the default action (`SA_RESETHAND`), so a stuck process can always be killed. The
//! handlers are only installed while the run polls the flag ([`restore_default`] afterwards).

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Install the SIGINT and SIGTERM handlers.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain old data; the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Give SIGINT and SIGTERM back their default action (terminate). Called once the phase that
/// polls [`interrupted`] is over, so that a signal during report writing is never ignored.
pub fn restore_default() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: resetting a signal disposition to SIG_DFL has no preconditions.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}
