//! tokio's `examples/echo.rs` (and the tutorial's echo server), made a benchmark peer: accept,
//! `tokio::spawn` one task per connection, `read` into a buffer, `write_all(&buf[..n])`, repeat,
//! on epoll. The runtime is `current_thread`, so everything runs on the calling thread like the
//! other peers (the example's default multi-thread runtime would add worker threads and
//! work-stealing the others do not have). Differences from the example, the same for every
//! peer: a 16 KiB buffer (the example: 1 KiB), TCP_NODELAY, errors end the connection quietly,
//! and an accept error is logged instead of ending the server.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "peer-tokio";

fn main() {
    let addr = peer_common::listen_addr(NAME);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap_or_else(|e| peer_common::fail(NAME, "cannot start the runtime", e));
    rt.block_on(async move {
        let bound = TcpListener::bind(addr).await;
        let listener = peer_common::listening(NAME, addr, bound, TcpListener::local_addr);
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    tokio::spawn(echo(stream));
                }
                Err(e) => peer_common::accept_failed(NAME, e),
            }
        }
    })
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; peer_common::BUFFER_BYTES];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}
