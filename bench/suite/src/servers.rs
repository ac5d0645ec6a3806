//! Which servers a cell compares, and how each is started.
//!
//! Ours: `uring-multishot` (the raw io_uring engine with its default flags, its default
//! `--batch-wait` included), `multishot-off` (the same engine with `--batch-wait off`: today's engine without
//! batching, the baseline of the latency targets), `uring` (tokio-uring), `epoll` (tokio) and
//! `floor` (bench/epoll-floor, a runtime-free epoll server). The peers (`bench/peers/`: monoio,
//! compio, tokio-uring's example, plain tokio, glommio) are other runtimes' echo loops, found as
//! binaries in the peer directory; a missing one is skipped with the reason, never fatal. The
//! floor and the peers are single-threaded, so they appear in 1-thread cells only.
//!
//! Invariant: every command listens on 127.0.0.1:0 and prints `listening on <addr>`; echo-bench
//! pins and starts them all the same way.

use std::path::Path;
use std::time::{Duration, Instant};

use echo_bench::spawn::Spawned;

use crate::Bins;

/// The default engine, default flags.
pub const MULTISHOT: &str = "uring-multishot";
/// uring-multishot without completion batching (`--batch-wait off`).
pub const MULTISHOT_OFF: &str = "multishot-off";
/// The runtime-free epoll floor.
pub const FLOOR: &str = "floor";
/// Our epoll runtime.
pub const EPOLL: &str = "epoll";
/// The plain tokio echo server among the peers.
pub const PEER_TOKIO: &str = "peer-tokio";

/// The peer servers, as built by `bench/peers/build.sh` (`peer-<name>`).
pub const PEERS: [&str; 5] = ["monoio", "compio", "tokio-uring", "tokio", "glommio"];

/// Whose server it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One of uring-echo's runtimes.
    Ours,
    /// The runtime-free epoll floor.
    Floor,
    /// Another runtime's echo server.
    Peer,
}

/// One server configuration of a comparison.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Short name used in tables (an echo-bench `--name`: no spaces, commas or slashes).
    pub name: String,
    /// Program and arguments (listening on 127.0.0.1:0, printing `listening on <addr>`).
    pub argv: Vec<String>,
    /// Whose it is.
    pub kind: Kind,
}

impl ServerSpec {
    /// As one word list for `echo-bench --spawn`.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }
}

/// The peer binaries found, and the ones skipped with the reason.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    /// `(peer-<name>, path)` of each peer found.
    pub found: Vec<(String, String)>,
    /// `(peer-<name>, why it is skipped)`.
    pub skipped: Vec<(String, String)>,
}

impl Peers {
    /// Looks for every peer of [`PEERS`] in `dir`.
    pub fn find(dir: &Path) -> Peers {
        let mut peers = Peers::default();
        for p in PEERS {
            let name = format!("peer-{p}");
            let path = dir.join(&name);
            if path.is_file() {
                peers.found.push((name, path.display().to_string()));
            } else {
                peers.skipped.push((
                    name.clone(),
                    format!(
                        "not found at {} (bash bench/peers/build.sh builds it; a peer that fails \
                         to build leaves its log in bench/peers/target/build-logs/{name}.log)",
                        path.display()
                    ),
                ));
            }
        }
        peers
    }

    /// Drops a peer that could not start, keeping the reason.
    pub fn skip(&mut self, name: &str, why: String) {
        self.found.retain(|(n, _)| n != name);
        self.skipped.push((name.to_string(), why));
    }
}

/// `uring-echo --runtime RUNTIME --listen 127.0.0.1:0 --threads N EXTRA...`.
pub fn ours(bins: &Bins, name: &str, runtime: &str, threads: usize, extra: &[&str]) -> ServerSpec {
    let mut argv = vec![
        bins.uring_echo.display().to_string(),
        "--runtime".into(),
        runtime.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--threads".into(),
        threads.to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    ServerSpec {
        name: name.into(),
        argv,
        kind: Kind::Ours,
    }
}

/// The servers compared in a cell with `threads` server threads, in table order.
pub fn servers(bins: &Bins, peers: &Peers, threads: usize) -> Vec<ServerSpec> {
    let mut v = vec![
        ours(bins, MULTISHOT, "uring-multishot", threads, &[]),
        ours(
            bins,
            MULTISHOT_OFF,
            "uring-multishot",
            threads,
            &["--batch-wait", "off"],
        ),
        ours(bins, "uring", "uring", threads, &[]),
        ours(bins, EPOLL, "epoll", threads, &[]),
    ];
    if threads == 1 {
        v.push(ServerSpec {
            name: FLOOR.into(),
            argv: vec![bins.epoll_floor.display().to_string(), "127.0.0.1:0".into()],
            kind: Kind::Floor,
        });
        for (name, path) in &peers.found {
            v.push(ServerSpec {
                name: name.clone(),
                argv: vec![path.clone(), "--listen".into(), "127.0.0.1:0".into()],
                kind: Kind::Peer,
            });
        }
    }
    v
}

/// How long a server may take to print its `listening on` line.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts `spec` pinned to `cpu` and waits for its ready line, then (bounded) for its
/// `features:` line when it is one of ours (the line is read from stderr by another thread than
/// the ready line, so it may trail it), and stops it. Returns the features line, if any; an
/// error carries the server's last stderr lines.
pub fn try_start(spec: &ServerSpec, cpu: usize) -> anyhow::Result<Option<String>> {
    let mut server = Spawned::start(
        &spec.name,
        &spec.command_line(),
        &spec.argv,
        Some(&[cpu]),
        SPAWN_TIMEOUT,
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut features = server.features();
    while spec.kind == Kind::Ours && features.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        features = server.features();
    }
    server.stop();
    Ok(features.or_else(|| server.features()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn bins() -> Bins {
        Bins {
            uring_echo: PathBuf::from("/b/uring-echo"),
            echo_bench: PathBuf::from("/b/echo-bench"),
            epoll_floor: PathBuf::from("/b/epoll-floor"),
            ref_client: PathBuf::from("/b/ref-client"),
        }
    }

    #[test]
    fn missing_peers_are_skipped_with_the_reason_and_the_rest_run() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["peer-monoio", "peer-tokio"] {
            std::fs::write(dir.path().join(p), "").unwrap();
        }
        let peers = Peers::find(dir.path());
        let found: Vec<&str> = peers.found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(found, ["peer-monoio", "peer-tokio"]);
        let skipped: Vec<&str> = peers.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["peer-compio", "peer-tokio-uring", "peer-glommio"]);
        assert!(peers.skipped[0].1.contains("not found at"));
        assert!(peers.skipped[0].1.contains("bench/peers/build.sh"));

        let names: Vec<String> = servers(&bins(), &peers, 1)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "uring-multishot",
                "multishot-off",
                "uring",
                "epoll",
                "floor",
                "peer-monoio",
                "peer-tokio"
            ]
        );
    }

    #[test]
    fn no_peer_dir_means_no_peers_not_an_error() {
        let peers = Peers::find(Path::new("/nonexistent/peers"));
        assert!(peers.found.is_empty());
        assert_eq!(peers.skipped.len(), PEERS.len());
        assert_eq!(servers(&bins(), &peers, 1).len(), 5);
    }

    #[test]
    fn multishot_off_is_the_engine_without_batching_and_multi_thread_cells_have_no_single_threaded_servers(
    ) {
        let mut peers = Peers::default();
        peers
            .found
            .push(("peer-tokio".into(), "/p/peer-tokio".into()));
        let one = servers(&bins(), &peers, 1);
        let off = one.iter().find(|s| s.name == MULTISHOT_OFF).unwrap();
        assert_eq!(
            off.command_line(),
            "/b/uring-echo --runtime uring-multishot --listen 127.0.0.1:0 --threads 1 --batch-wait off"
        );
        let def = one.iter().find(|s| s.name == MULTISHOT).unwrap();
        assert!(!def.argv.iter().any(|a| a.starts_with("--batch-wait")));
        let peer = one.iter().find(|s| s.name == PEER_TOKIO).unwrap();
        assert_eq!(peer.command_line(), "/p/peer-tokio --listen 127.0.0.1:0");
        assert_eq!(peer.kind, Kind::Peer);
        let two: Vec<String> = servers(&bins(), &peers, 2)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(two, ["uring-multishot", "multishot-off", "uring", "epoll"]);
    }

    #[test]
    fn a_peer_that_cannot_start_is_moved_to_skipped() {
        let mut peers = Peers::default();
        peers.found.push(("peer-glommio".into(), "/p/g".into()));
        peers.skip("peer-glommio", "exited with status 1".into());
        assert!(peers.found.is_empty());
        assert_eq!(peers.skipped[0].1, "exited with status 1");
    }
}
