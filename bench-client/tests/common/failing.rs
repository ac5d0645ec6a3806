//! Servers that cannot start, the two ways the default comparison meets them: a uring-echo
//! wrapper that fails for one runtime (given to echo-bench as `ECHO_BENCH_SERVER`), and a
//! seccomp filter under which `io_uring_setup` fails for echo-bench and every server it starts
//! (filters are inherited across fork and exec), as in a container that blocks io_uring.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The line a server that cannot start prints (uring-echo's shape: cause, then the way out).
pub const WRAPPER_FAILURE: &str = "uring-echo: error: io_uring_setup failed: ENOSYS: blocked by \
                                   the test wrapper; --runtime epoll works without io_uring";

/// Write `dir/uring-echo`: a wrapper around the real server `real` that, started with
/// `--runtime failing`, prints a log line and [`WRAPPER_FAILURE`] on stderr and exits 1, and
/// otherwise execs `real` (same PID).
pub fn failing_wrapper(dir: &Path, real: &Path, failing: &str) -> PathBuf {
    let path = dir.join("uring-echo");
    let script = format!(
        "#!/bin/sh\n\
         prev=\n\
         for a in \"$@\"; do\n\
         \x20 if [ \"$prev\" = --runtime ] && [ \"$a\" = '{failing}' ]; then\n\
         \x20   echo 'INFO uring_echo: starting' >&2\n\
         \x20   echo '{WRAPPER_FAILURE}' >&2\n\
         \x20   exit 1\n\
         \x20 fi\n\
         \x20 prev=$a\n\
         done\n\
         exec '{}' \"$@\"\n",
        real.display()
    );
    std::fs::write(&path, script).expect("write the wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Code to run in a child between fork and exec.
pub type PreExec = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// `AUDIT_ARCH_X86_64` (linux/audit.h: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE); not in
/// the libc crate.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// A seccomp filter that fails `io_uring_setup` with `errno` and allows everything else,
/// installed in the child before exec (after `PR_SET_NO_NEW_PRIVS`, so no privilege is needed).
/// The same filter as the server's own kernel tests (`tests/kernel.rs` of the root crate).
#[cfg(target_arch = "x86_64")]
pub fn block_io_uring_setup(errno: i32) -> PreExec {
    use libc::{
        sock_filter, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_ERRNO,
    };
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let arch = std::mem::offset_of!(libc::seccomp_data, arch) as u32;
    let nr = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
    let filter: Arc<Vec<sock_filter>> = Arc::new(vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, arch),
        // Another ABI: syscall numbers differ, allow (only x86_64 is filtered).
        jeq(AUDIT_ARCH_X86_64, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, nr),
        jeq(libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | errno as u32),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    ]);
    Arc::new(move || {
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut sock_filter,
        };
        // SAFETY: prctl with valid arguments; `prog` and the filter it points at outlive the
        // call (the kernel copies the program). Both calls are async-signal-safe.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
}
