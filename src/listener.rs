//! Listening sockets, built by hand with socket2 (the only socket2 user in the crate).
//!
//! Why not `tokio_uring::net::TcpListener::bind`: it always sets SO_REUSEPORT and a fixed
//! backlog of 1024, and cannot express dual-stack. Here every option is explicit:
//! - IPv6 listeners get an explicit `IPV6_V6ONLY` (off unless `--ipv6-only`), so a `[::]`
//!   listener serves IPv4 too whatever the `net.ipv6.bindv6only` sysctl says;
//! - SO_REUSEADDR always (restart while old connections sit in TIME_WAIT);
//! - SO_REUSEPORT only when several workers share the port: otherwise a second, stale server
//!   could silently take half of the connections;
//! - the backlog really reaches `listen(2)`.
//!
//! The socket is returned blocking. The io_uring backend needs that (io_uring honours O_NONBLOCK
//! and would hand back EAGAIN instead of waiting); the epoll backend flips it to non-blocking.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket options for one listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenOpts {
    /// `listen()` backlog.
    pub backlog: u32,
    /// `IPV6_V6ONLY` for IPv6 addresses (ignored for IPv4).
    pub ipv6_only: bool,
    /// `SO_REUSEPORT`, for several workers on one port.
    pub reuse_port: bool,
}

/// Creates, configures, binds and listens on a TCP socket for `addr`.
///
/// Errors are the raw OS errors; callers add the address to the message.
pub fn bind(addr: SocketAddr, opts: &ListenOpts) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(opts.ipv6_only)?;
    }
    socket.set_reuse_address(true)?;
    if opts.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    // Validated to fit in i32 by the config; clamp anyway rather than wrap.
    socket.listen(i32::try_from(opts.backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Binds `count` listeners on `addr`, one per worker.
///
/// With port 0 the first bind picks the port and the others bind to that same port, so every
/// worker ends up on one address. Errors name the address.
pub fn bind_all(
    addr: SocketAddr,
    count: usize,
    opts: &ListenOpts,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    use anyhow::Context;

    let first = bind(addr, opts).with_context(|| format!("cannot listen on {addr}"))?;
    let actual = first
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {addr}"))?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind(actual, opts).with_context(|| format!("cannot listen on {actual}"))?);
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(reuse_port: bool) -> ListenOpts {
        ListenOpts {
            backlog: 8,
            ipv6_only: false,
            reuse_port,
        }
    }

    #[test]
    fn port_zero_shares_one_port() {
        let ls = bind_all("127.0.0.1:0".parse().unwrap(), 3, &opts(true)).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn second_bind_without_reuse_port_names_the_address() {
        let first = bind("127.0.0.1:0".parse().unwrap(), &opts(false)).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind_all(addr, 1, &opts(false)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(&format!("cannot listen on {addr}: ")),
            "{msg}"
        );
        assert!(msg.contains("in use"), "{msg}");
    }

    #[test]
    fn dual_stack_accepts_ipv4() {
        let l = bind("[::]:0".parse().unwrap(), &opts(false)).unwrap();
        let port = l.local_addr().unwrap().port();
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(l.accept().is_ok());
    }
}
