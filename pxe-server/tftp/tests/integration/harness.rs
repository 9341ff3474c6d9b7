use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tugboot_tftp::{FileProvider, Server, ServerConfig, ServerError, Stats};

pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub root: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    pub async fn start(
        configure: impl FnOnce(&mut ServerConfig),
        provider: Option<Arc<dyn FileProvider>>,
    ) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), root.path());
        configure(&mut config);
        let mut server = Server::bind(config).await.expect("bind");
        if let Some(p) = provider {
            server = server.with_provider(p);
        }
        let addr = server.local_addr().unwrap();
        let stats = server.stats();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            stats,
            root,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Wait (bounded) until no transfer is active; returns the final gauge value.
    pub async fn settle(&self) -> u64 {
        for _ in 0..400 {
            let active = self.stats.snapshot().active_transfers;
            if active == 0 {
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.stats.snapshot().active_transfers
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server run");
        }
    }
}

/// Deterministic bytes that do not repeat with any block size (catches reordering).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Path of a client binary, or `None` after printing why the test is skipped.
pub fn client(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    println!("SKIP: client `{name}` is not installed (CI installs it)");
    None
}

/// A raw TFTP peer for exact byte-level checks.
pub struct Raw {
    pub socket: UdpSocket,
}

impl Raw {
    pub async fn new() -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    pub async fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.socket.send_to(bytes, to).await.unwrap();
    }

    /// Next datagram, or panic after 5 s (the server answers in microseconds).
    pub async fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(5), self.socket.recv_from(&mut buf))
                .await
                .expect("no answer from server")
                .unwrap();
        buf.truncate(n);
        (buf, from)
    }

    /// Send an RRQ and return the first answer.
    pub async fn request(&self, to: SocketAddr, bytes: &[u8]) -> (Vec<u8>, SocketAddr) {
        self.send(to, bytes).await;
        self.recv().await
    }
}

pub fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, 1];
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(b"\0octet\0");
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Error code of an ERROR datagram, `None` for anything else.
pub fn error_code(d: &[u8]) -> Option<u16> {
    (d.len() >= 4 && d[..2] == [0, 5]).then(|| u16::from_be_bytes([d[2], d[3]]))
}
