//! The floor server must be correct, or the suite's comparisons against it mean nothing:
//! large payloads come back intact while the client writes and reads concurrently, a half-closed
//! connection gets everything then EOF, and SIGTERM stops it with exit 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Floor {
    child: Child,
    addr: String,
}

impl Floor {
    fn spawn() -> Floor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_epoll-floor"))
            .args(["127.0.0.1:0", "4096"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn epoll-floor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .to_string();
        Floor { child, addr }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn large_payload_echoed_intact_with_concurrent_reads() {
    let floor = Floor::spawn();
    let stream = floor.connect();
    let data = pattern(16 << 20);
    let mut writer = stream.try_clone().unwrap();
    let to_send = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(data.len());
    (&stream).read_to_end(&mut got).unwrap();
    w.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
}

#[test]
fn half_close_gets_everything_then_eof() {
    let floor = Floor::spawn();
    let mut s = floor.connect();
    s.write_all(b"hello floor").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello floor");
}

#[test]
fn sigterm_exits_zero() {
    let mut floor = Floor::spawn();
    let _held = floor.connect();
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(floor.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = floor.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}
