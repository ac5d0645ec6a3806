//! tokio-uring's `examples/tcp_listener.rs`, made a benchmark peer: `tokio_uring::start`,
//! accept, `tokio_uring::spawn` one task per connection, `read` into an owned `Vec`,
//! `write_all(buf.slice(..n))`, `into_inner`, repeat. This is the shape our `--runtime uring`
//! engine has, without its bookkeeping (limits, idle timeout, drain, counters). Differences
//! from the example, the same for every peer: a 16 KiB buffer (the example: 4 KiB),
//! TCP_NODELAY, no per-read print, errors end the connection instead of panicking the task,
//! and an accept error is logged instead of panicking the server.

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

const NAME: &str = "peer-tokio-uring";

fn main() {
    let addr = peer_common::listen_addr(NAME);
    tokio_uring::start(async move {
        // Like the example: tokio-uring's own bind (SO_REUSEADDR, SO_REUSEPORT, backlog 1024).
        let bound = TcpListener::bind(addr);
        let listener = peer_common::listening(NAME, addr, bound, TcpListener::local_addr);
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    tokio_uring::spawn(echo(stream));
                }
                Err(e) => peer_common::accept_failed(NAME, e),
            }
        }
    })
}

async fn echo(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; peer_common::BUFFER_BYTES];
    loop {
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = res?;
        if n == 0 {
            return Ok(());
        }
        let (res, slice) = stream.write_all(buf.slice(..n)).await;
        buf = slice.into_inner();
        res?;
    }
}
