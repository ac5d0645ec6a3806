//! glommio's `examples/echo.rs` (its server half), made a benchmark peer: a `LocalExecutor`,
//! glommio's `TcpListener`, one `spawn_local(..).detach()` task per connection, `read` into a
//! buffer and write it back with `futures_lite`'s extension traits. Differences from the
//! example, the same for every peer: a 16 KiB buffer (the example echoes one byte at a time),
//! `write_all` instead of its single `write`, TCP_NODELAY, the executor on the calling thread
//! without glommio's own pinning (`Placement::Unbound`; the suite pins the process), errors end
//! the connection quietly, and an accept error is logged instead of panicking.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

const NAME: &str = "peer-glommio";

fn main() {
    let addr = peer_common::listen_addr(NAME);
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .unwrap_or_else(|e| peer_common::fail(NAME, "cannot start the executor", e));
    executor.run(async move {
        let bound = TcpListener::bind(addr);
        let listener = peer_common::listening(NAME, addr, bound, TcpListener::local_addr);
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    glommio::spawn_local(echo(stream)).detach();
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
