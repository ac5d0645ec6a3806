//! monoio's `examples/echo.rs`, made a benchmark peer: accept, `monoio::spawn` one task per
//! connection, `read` into an owned `Vec` (monoio fills up to its capacity), `write_all` the same
//! `Vec` back, `clear`, repeat. Differences from the example, the same for every peer: the io_uring
//! driver asked for by name (the example's `fusion` driver picks io_uring too when the kernel
//! has it, but would fall back silently), a 16 KiB buffer (the example: 8 KiB), TCP_NODELAY,
//! no per-connection print, and an accept error is logged instead of ending the server.

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

const NAME: &str = "peer-monoio";

fn main() {
    let addr = peer_common::listen_addr(NAME);
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .build()
        .unwrap_or_else(|e| peer_common::fail(NAME, "cannot start the io_uring runtime", e));
    rt.block_on(async move {
        let bound = TcpListener::bind(addr);
        let listener = peer_common::listening(NAME, addr, bound, TcpListener::local_addr);
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    monoio::spawn(echo(stream));
                }
                Err(e) => peer_common::accept_failed(NAME, e),
            }
        }
    })
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(peer_common::BUFFER_BYTES);
    loop {
        let (res, b) = stream.read(buf).await;
        buf = b;
        if res? == 0 {
            return Ok(());
        }
        let (res, b) = stream.write_all(buf).await;
        buf = b;
        res?;
        buf.clear();
    }
}
