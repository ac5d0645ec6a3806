//! `ref-client`: the simplest honest closed-loop echo client, one blocking thread per connection.
//!
//! Why it exists: a load generator can be the bottleneck (or the liar) of an echo benchmark. The
//! benchmark suite runs this client and `echo-bench` against the same server and compares their
//! message rates and their own CPU time per message; echo-bench must beat it while recording
//! every latency. This client records nothing but counts and checks every echoed byte, so it is
//! the cheapest correct closed-loop client we know how to write, not a strawman.
//!
//! Usage: `ref-client ADDR CONNECTIONS SIZE_BYTES DURATION_MS [WARMUP_MS]`.
//! Prints one JSON line: messages, duration_s, msgs_per_s, client_cpu_ns_per_msg.
//! Exits 1 with one line on a connection failure or an echo mismatch.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn fail(msg: String) -> ! {
    eprintln!("ref-client: {msg}");
    std::process::exit(1);
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fail(format!("missing or bad {name}; usage: ref-client ADDR CONNECTIONS SIZE_BYTES DURATION_MS [WARMUP_MS]")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: String = arg(&args, 0, "ADDR");
    let conns: usize = arg(&args, 1, "CONNECTIONS");
    let size: usize = arg(&args, 2, "SIZE_BYTES");
    let duration = Duration::from_millis(arg(&args, 3, "DURATION_MS"));
    let warmup = Duration::from_millis(if args.len() > 4 {
        arg(&args, 4, "WARMUP_MS")
    } else {
        500
    });
    if conns == 0 || size == 0 {
        fail("CONNECTIONS and SIZE_BYTES must be positive".into());
    }

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicU64::new(0));
    // All connections are established before the clock starts (setup is not measured).
    let ready = Arc::new(Barrier::new(conns + 1));
    let mut threads = Vec::with_capacity(conns);
    for id in 0..conns {
        let stream = TcpStream::connect(&addr)
            .unwrap_or_else(|e| fail(format!("cannot connect to {addr}: {e}")));
        let _ = stream.set_nodelay(true);
        let (measuring, stop, counted, ready) = (
            measuring.clone(),
            stop.clone(),
            counted.clone(),
            ready.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut stream = stream;
            let mut msg: Vec<u8> = (0..size).map(|i| (i + id * 7) as u8).collect();
            let mut back = vec![0u8; size];
            let mut local = 0u64;
            ready.wait();
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                msg[..4.min(size)].copy_from_slice(&seq.to_le_bytes()[..4.min(size)]);
                if let Err(e) = stream
                    .write_all(&msg)
                    .and_then(|_| stream.read_exact(&mut back))
                {
                    fail(format!("connection {id}: {e}"));
                }
                if back != msg {
                    fail(format!("connection {id}: echo mismatch at message {seq}"));
                }
                seq = seq.wrapping_add(1);
                if measuring.load(Ordering::Relaxed) {
                    local += 1;
                }
            }
            counted.fetch_add(local, Ordering::Relaxed);
        }));
    }
    ready.wait();
    std::thread::sleep(warmup);
    let (cpu0, t0) = (cpu_ns(), Instant::now());
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(duration);
    measuring.store(false, Ordering::Relaxed);
    let (cpu1, elapsed) = (cpu_ns(), t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let messages = counted.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64();
    let per_msg = if messages > 0 {
        (cpu1 - cpu0) as f64 / messages as f64
    } else {
        0.0
    };
    println!(
        "{{\"messages\":{messages},\"duration_s\":{secs:.6},\"msgs_per_s\":{:.1},\"client_cpu_ns_per_msg\":{per_msg:.1}}}",
        messages as f64 / secs
    );
}
