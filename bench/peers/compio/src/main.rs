//! An echo server the way compio writes one: compio ships no echo server example, so this
//! follows its echo benchmark (`compio/benches/net.rs`: owned buffer, `read` then `write_all`,
//! both returning the buffer in a `BufResult`) with its `TcpListener` and `compio::runtime::spawn`
//! per connection (`compio/examples/net.rs`). Runs on compio's io_uring driver (the default on
//! Linux). Like every peer: a 16 KiB buffer, TCP_NODELAY, errors end the connection quietly, and
//! an accept error is logged instead of ending the server.

use compio::buf::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};

const NAME: &str = "peer-compio";

#[compio::main]
async fn main() {
    let addr = peer_common::listen_addr(NAME);
    let bound = TcpListener::bind(addr).await;
    let listener = peer_common::listening(NAME, addr, bound, TcpListener::local_addr);
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => compio::runtime::spawn(echo(stream)).detach(),
            Err(e) => peer_common::accept_failed(NAME, e),
        }
    }
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(peer_common::BUFFER_BYTES);
    loop {
        // compio reads into the spare capacity (len..capacity), so the Vec starts empty.
        buf.clear();
        let BufResult(res, b) = stream.read(buf).await;
        buf = b;
        if res? == 0 {
            return Ok(());
        }
        let BufResult(res, b) = stream.write_all(buf).await;
        buf = b;
        res?;
    }
}
