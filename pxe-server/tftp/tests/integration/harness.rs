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
        Self::bind("127.0.0.1:0").await
    }

    /// A peer on another loopback address (e.g. `127.0.0.2:0`): another host as far as the
    /// server's per-peer cap is concerned.
    pub async fn bind(addr: &str) -> Self {
        Self {
            socket: UdpSocket::bind(addr).await.unwrap(),
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

/// The bytes of [`pattern`], produced a chunk at a time (for files too big to hold in memory
/// where memory is measured).
pub struct PatternStream {
    s: u64,
}

impl PatternStream {
    pub fn new(seed: u64) -> Self {
        Self { s: seed | 1 }
    }

    /// Fill `buf` with the next bytes; `buf.len()` must be a multiple of 8 except at the end.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.s ^= self.s >> 12;
            self.s ^= self.s << 25;
            self.s ^= self.s >> 27;
            let word = self.s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Write `pattern(len, seed)` to `path` without holding it in memory.
pub fn write_pattern(path: &Path, len: u64, seed: u64) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut stream = PatternStream::new(seed);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap();
        stream.fill(&mut chunk[..n]);
        out.write_all(&chunk[..n]).expect("write");
        left -= n as u64;
    }
    out.flush().expect("flush");
}

/// Whether the file at `path` is exactly `pattern(len, seed)`, compared a chunk at a time.
pub fn is_pattern(path: &Path, len: u64, seed: u64) -> bool {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(len) {
        return false;
    }
    let mut file = std::io::BufReader::new(file);
    let mut stream = PatternStream::new(seed);
    let (mut want, mut got) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(want.len() as u64)).unwrap();
        stream.fill(&mut want[..n]);
        if file.read_exact(&mut got[..n]).is_err() || want[..n] != got[..n] {
            return false;
        }
        left -= n as u64;
    }
    true
}

/// How a raw lock-step download ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RawOutcome {
    /// Every block arrived; the bytes.
    Complete(Vec<u8>),
    /// The server sent ERROR (code, message) after `received` payload bytes.
    Error {
        code: u16,
        message: String,
        received: usize,
    },
}

/// Download with `request` in lock step (ACKing the OACK if there is one, block size from the
/// request's `blksize` or 512), calling `after_block(block)` after each DATA arrives and before
/// it is acknowledged. Panics if the server goes silent for 5 s.
pub async fn raw_download(
    raw: &Raw,
    server: SocketAddr,
    request: &[u8],
    blksize: usize,
    mut after_block: impl FnMut(u16),
) -> RawOutcome {
    raw.send(server, request).await;
    let mut data = Vec::new();
    let mut expected: u16 = 1;
    loop {
        let (d, tid) = raw.recv().await;
        match (d.get(..2), d.len()) {
            (Some([0, 6]), _) => raw.send(tid, b"\x00\x04\x00\x00").await,
            (Some([0, 5]), n) if n >= 4 => {
                let message = String::from_utf8_lossy(&d[4..])
                    .trim_end_matches('\0')
                    .to_owned();
                return RawOutcome::Error {
                    code: u16::from_be_bytes([d[2], d[3]]),
                    message,
                    received: data.len(),
                };
            }
            (Some([0, 3]), n) if n >= 4 => {
                let block = u16::from_be_bytes([d[2], d[3]]);
                if block != expected {
                    continue; // a retransmission of what we already have
                }
                data.extend_from_slice(&d[4..]);
                after_block(block);
                raw.send(tid, &[0, 4, d[2], d[3]]).await;
                expected = expected.wrapping_add(1);
                if n - 4 < blksize {
                    return RawOutcome::Complete(data);
                }
            }
            _ => panic!("unexpected datagram {d:?}"),
        }
    }
}
