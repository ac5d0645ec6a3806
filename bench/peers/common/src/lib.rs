//! What every peer echo server shares, so that they differ only in the runtime: the command line
//! (`--listen IP:PORT`, port 0 allowed), the `listening on <addr>` ready line that `echo-bench
//! --spawn` waits for, and the per-connection buffer size (16 KiB, as uring-echo's default).
//!
//! The peers install no signal handlers: SIGTERM and SIGINT end them by the default action
//! (killed by the signal, no drain), which is all `echo-bench --spawn` needs to stop them.

#![warn(missing_docs)]

use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;

/// Bytes of the one buffer each connection reads into and writes back from.
pub const BUFFER_BYTES: usize = 16 * 1024;

/// The address of `--listen IP:PORT` (the only flag). On bad usage prints one line,
/// `<name>: ...`, to stderr and exits with status 2.
pub fn listen_addr(name: &str) -> SocketAddr {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = |why: String| -> ! {
        eprintln!("{name}: {why} (usage: {name} --listen IP:PORT)");
        std::process::exit(2)
    };
    match args.as_slice() {
        [flag, addr] if flag == "--listen" => addr
            .parse()
            .unwrap_or_else(|_| usage(format!("invalid --listen address {addr:?}"))),
        _ => usage(format!("expected exactly --listen IP:PORT, got {args:?}")),
    }
}

/// Takes the result of binding the listener: on success prints the one stdout line,
/// `listening on <addr>` with the socket's real address (the port the kernel chose for 0), flushes
/// it and returns the listener; on failure ends the process with a one-line error. Call it once
/// the socket accepts (every runtime's `bind` also calls `listen(2)`).
pub fn listening<L, E: Display, F: Display>(
    name: &str,
    addr: SocketAddr,
    bound: Result<L, E>,
    local_addr: impl FnOnce(&L) -> Result<SocketAddr, F>,
) -> L {
    let listener = bound.unwrap_or_else(|e| fail(name, &format!("cannot listen on {addr}"), e));
    let local = local_addr(&listener).unwrap_or_else(|e| fail(name, "local_addr", e));
    let mut out = std::io::stdout().lock();
    if writeln!(out, "listening on {local}")
        .and_then(|()| out.flush())
        .is_err()
    {
        // Nobody reads the ready line: the process that started us is gone.
        std::process::exit(1);
    }
    listener
}

/// Reports a failed `accept` on stderr (one line) and lets the accept loop go on: the upstream
/// examples stop or panic there, which would end a benchmark over one transient error.
pub fn accept_failed(name: &str, e: impl Display) {
    eprintln!("{name}: accept failed: {e}");
}

/// Ends the process with a one-line error: for setup failures (runtime, bind).
pub fn fail(name: &str, what: &str, e: impl Display) -> ! {
    eprintln!("{name}: {what}: {e}");
    std::process::exit(1)
}
