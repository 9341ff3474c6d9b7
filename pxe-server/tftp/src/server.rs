//! The tokio shell around [`Transfer`]: sockets, files, timers, counters.
//!
//! One listening socket receives requests. In the standard mode every transfer gets its own
//! socket on an ephemeral port (its transfer ID, RFC 1350), connected to the client so the kernel
//! drops datagrams from anyone else. In single-port mode (for firewalls/NAT that only pass port
//! 69) all transfers share the listening socket and are demultiplexed by the peer address.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::packet::{ErrorCode, MAX_PACKET_LEN, Mode, Opcode, Packet, Repr, RequestKind};
use crate::path::CleanPath;
use crate::transfer::{Limits, Outcome, Transfer, Transmit};

/// Bytes read from disk at a time per transfer (covers a full 64-block window of 1468 bytes).
const READ_CHUNK: usize = 256 * 1024;
/// Datagrams queued per transfer in single-port mode before extra ones are dropped.
const SINGLE_PORT_QUEUE: usize = 256;

/// Errors of the TFTP server shell.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listening socket could not be bound.
    #[error("cannot bind TFTP socket on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// The root directory does not exist or cannot be resolved.
    #[error("invalid TFTP root {path}: {source}")]
    Root {
        /// Root asked for.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Other socket failure.
    #[error("TFTP socket error: {0}")]
    Io(#[from] io::Error),
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 69 in production, port 0 in tests).
    pub listen: SocketAddr,
    /// Directory served read-only; nothing outside it is ever opened.
    pub root: PathBuf,
    /// Serve every transfer from the listening socket instead of an ephemeral port each.
    pub single_port: bool,
    /// Transfers (including pending lookups) running at once; more get ERROR 0 "server busy".
    pub max_transfers: u64,
    /// Option caps and retransmission policy.
    pub limits: Limits,
}

impl ServerConfig {
    /// Defaults for `root` on `listen`: ephemeral ports, 512 transfers, [`Limits::default`].
    #[must_use]
    pub fn new(listen: SocketAddr, root: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            root: root.into(),
            single_port: false,
            max_transfers: 512,
            limits: Limits::default(),
        }
    }
}

/// A file generated for one client (Raspberry Pi `config.txt`, a PXELINUX config, ...).
#[derive(Clone, PartialEq, Eq)]
pub struct Generated {
    contents: Arc<[u8]>,
}

impl Generated {
    /// Wrap the bytes to serve.
    #[must_use]
    pub fn new(contents: impl Into<Arc<[u8]>>) -> Self {
        Self {
            contents: contents.into(),
        }
    }

    /// The bytes served.
    #[must_use]
    pub fn contents(&self) -> &[u8] {
        &self.contents
    }
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generated")
            .field("len", &self.contents.len())
            .finish()
    }
}

impl From<Vec<u8>> for Generated {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

impl From<String> for Generated {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

/// Hook to generate files per client, consulted before the disk.
///
/// `path` is already normalised (see [`CleanPath`]): relative, `/`-separated, no `..`. Keep it
/// cheap and non-blocking; it runs on the async runtime.
pub trait FileProvider: Send + Sync + 'static {
    /// The file to serve to `peer` for `path`, or `None` to fall through to the disk.
    fn lookup(&self, peer: SocketAddr, path: &str) -> Option<Generated>;
}

/// Counters, readable at any time (e.g. by a Prometheus exporter).
#[derive(Debug, Default)]
pub struct Stats {
    /// Transfers that began sending (file found, options negotiated).
    pub transfers_started: AtomicU64,
    /// Transfers whose last block was acknowledged.
    pub transfers_completed: AtomicU64,
    /// Transfers that started but did not complete (client ERROR, timeout, shutdown, ...).
    pub transfers_failed: AtomicU64,
    /// Requests answered with an ERROR before any transfer (not found, WRQ, busy, bad path).
    pub requests_refused: AtomicU64,
    /// DATA payload bytes sent, retransmissions included.
    pub bytes_sent: AtomicU64,
    /// Transfers in progress right now (gauge).
    pub active_transfers: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::transfers_started`].
    pub transfers_started: u64,
    /// See [`Stats::transfers_completed`].
    pub transfers_completed: u64,
    /// See [`Stats::transfers_failed`].
    pub transfers_failed: u64,
    /// See [`Stats::requests_refused`].
    pub requests_refused: u64,
    /// See [`Stats::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`Stats::active_transfers`].
    pub active_transfers: u64,
}

impl Stats {
    /// Read every counter.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            transfers_started: self.transfers_started.load(Ordering::Relaxed),
            transfers_completed: self.transfers_completed.load(Ordering::Relaxed),
            transfers_failed: self.transfers_failed.load(Ordering::Relaxed),
            requests_refused: self.requests_refused.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            active_transfers: self.active_transfers.load(Ordering::Relaxed),
        }
    }
}

/// Decrements the active gauge however a transfer task ends.
struct ActiveGuard(Arc<Stats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_transfers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The TFTP server. Bind it, then [`Server::run`] it until the shutdown future resolves.
pub struct Server {
    socket: Arc<UdpSocket>,
    /// GSO capabilities of the listening socket (single-port mode sends windows through it).
    gso: Option<Arc<quinn_udp::UdpSocketState>>,
    config: ServerConfig,
    root: Arc<Path>,
    provider: Option<Arc<dyn FileProvider>>,
    stats: Arc<Stats>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("root", &self.root)
            .field("provider", &self.provider.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Resolve the root and bind the listening socket.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        let root = std::fs::canonicalize(&config.root).map_err(|source| ServerError::Root {
            path: config.root.clone(),
            source,
        })?;
        let socket = UdpSocket::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let gso = quinn_udp::UdpSocketState::new((&socket).into())
            .ok()
            .map(Arc::new);
        Ok(Self {
            socket: Arc::new(socket),
            gso,
            config,
            root: root.into(),
            provider: None,
            stats: Arc::new(Stats::default()),
        })
    }

    /// Consult `provider` before the disk for every read request.
    #[must_use]
    pub fn with_provider(mut self, provider: Arc<dyn FileProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        Ok(self.socket.local_addr()?)
    }

    /// Shared counters.
    #[must_use]
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Serve until `shutdown` resolves; then every transfer is told to stop (the client gets
    /// ERROR 0) and awaited before this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut routes: HashMap<SocketAddr, Route> = HashMap::new();
        let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
        info!(addr = %self.local_addr()?, root = %self.root.display(),
              single_port = self.config.single_port, "TFTP server listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, peer)) => {
                        let datagram = &buf[..n.min(buf.len())];
                        self.dispatch(datagram, peer, &mut routes, &mut tasks, &cancel_rx).await;
                    }
                    Err(e) => debug!(error = %e, "TFTP recv error"),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                    routes.retain(|_, r| !r.tx.is_closed());
                }
            }
        }
        info!("TFTP server shutting down");
        // Ignore the error: no receiver left just means no transfer is running.
        let _ = cancel_tx.send(true);
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    async fn dispatch(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        routes: &mut HashMap<SocketAddr, Route>,
        tasks: &mut JoinSet<()>,
        cancel: &watch::Receiver<bool>,
    ) {
        let is_request = matches!(
            Packet::new_checked(datagram).map(|p| p.opcode()),
            Ok(Opcode::Rrq | Opcode::Wrq)
        );
        if let Some(route) = routes.get(&peer)
            && !route.tx.is_closed()
        {
            if !is_request {
                // Full queue: drop, exactly as a congested network would.
                let _ = route.tx.try_send(datagram.to_vec());
                return;
            }
            if route.request == datagram {
                // The client resent its RRQ before seeing our answer: already being served.
                return;
            }
        }
        if !is_request {
            // Stray DATA/ACK/ERROR or garbage on the listening port: staying silent avoids
            // feeding reflection attacks.
            debug!(%peer, len = datagram.len(), "ignoring non-request datagram");
            return;
        }
        let request = match Repr::parse_bytes(datagram) {
            Ok(Repr::Request(r)) => r,
            Ok(_) => return,
            Err(e) => {
                debug!(%peer, error = %e, "malformed request");
                self.refuse(peer, ErrorCode::IllegalOperation, "malformed request")
                    .await;
                return;
            }
        };
        if request.kind == RequestKind::Write {
            debug!(%peer, file = request.filename, "write request refused");
            self.refuse(peer, ErrorCode::AccessViolation, "read-only server")
                .await;
            return;
        }
        if request.mode == Mode::Mail {
            self.refuse(peer, ErrorCode::IllegalOperation, "mail mode not supported")
                .await;
            return;
        }
        let active = self.stats.active_transfers.load(Ordering::Relaxed);
        if active >= self.config.max_transfers {
            warn!(%peer, active, "TFTP transfer limit reached");
            self.refuse(peer, ErrorCode::NotDefined, "server busy")
                .await;
            return;
        }
        self.stats.active_transfers.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(Arc::clone(&self.stats));
        let link = if self.config.single_port {
            let (tx, rx) = mpsc::channel(SINGLE_PORT_QUEUE);
            routes.insert(
                peer,
                Route {
                    tx,
                    request: datagram.to_vec(),
                },
            );
            LinkSpec::Shared {
                socket: Arc::clone(&self.socket),
                gso: self.gso.clone(),
                rx,
            }
        } else {
            LinkSpec::Own {
                local: SocketAddr::new(self.config.listen.ip(), 0),
            }
        };
        let job = Job {
            peer,
            filename: request.filename.to_owned(),
            request_options: request.options,
            mode: request.mode,
            limits: self.config.limits,
            root: Arc::clone(&self.root),
            provider: self.provider.clone(),
            stats: Arc::clone(&self.stats),
            cancel: cancel.clone(),
        };
        tasks.spawn(async move {
            let _guard = guard;
            job.run(link).await;
        });
    }

    async fn refuse(&self, peer: SocketAddr, code: ErrorCode, message: &'static str) {
        self.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 128];
        let len = Repr::Error { code, message }.emit(&mut buf);
        if let Err(e) = self.socket.send_to(&buf[..len], peer).await {
            debug!(%peer, error = %e, "cannot send TFTP error");
        }
    }
}

struct Route {
    tx: mpsc::Sender<Vec<u8>>,
    /// The request that started the transfer, to recognise a retransmitted RRQ.
    request: Vec<u8>,
}

enum LinkSpec {
    Own {
        local: SocketAddr,
    },
    Shared {
        socket: Arc<UdpSocket>,
        gso: Option<Arc<quinn_udp::UdpSocketState>>,
        rx: mpsc::Receiver<Vec<u8>>,
    },
}

/// The transfer's way to talk to its client.
enum Link {
    /// Own socket connected to the client (standard mode).
    Own {
        socket: UdpSocket,
        gso: Option<quinn_udp::UdpSocketState>,
        peer: SocketAddr,
    },
    /// The listening socket plus the datagrams routed to this peer (single-port mode).
    Shared {
        socket: Arc<UdpSocket>,
        gso: Option<Arc<quinn_udp::UdpSocketState>>,
        peer: SocketAddr,
        rx: mpsc::Receiver<Vec<u8>>,
    },
}

impl Link {
    async fn open(spec: LinkSpec, peer: SocketAddr) -> io::Result<Self> {
        match spec {
            LinkSpec::Own { local } => {
                let socket = UdpSocket::bind(local).await?;
                socket.connect(peer).await?;
                let gso = quinn_udp::UdpSocketState::new((&socket).into()).ok();
                Ok(Self::Own { socket, gso, peer })
            }
            LinkSpec::Shared { socket, gso, rx } => Ok(Self::Shared {
                socket,
                gso,
                peer,
                rx,
            }),
        }
    }

    fn parts(&self) -> (&UdpSocket, Option<&quinn_udp::UdpSocketState>, SocketAddr) {
        match self {
            Self::Own { socket, gso, peer } => (socket, gso.as_ref(), *peer),
            Self::Shared {
                socket, gso, peer, ..
            } => (socket, gso.as_deref(), *peer),
        }
    }

    /// Datagrams per GSO send (1 without GSO support).
    fn max_segments(&self) -> usize {
        self.parts().1.map_or(1, |g| g.max_gso_segments().max(1))
    }

    async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Own { socket, .. } => socket.send(bytes).await.map(drop),
            Self::Shared { socket, peer, .. } => socket.send_to(bytes, *peer).await.map(drop),
        }
    }

    /// Send `batch`, a run of datagrams of `segment` bytes each (the last may be shorter), with
    /// one UDP GSO `sendmsg` when possible: a TFTP window then costs one system call instead of
    /// one per block. Falls back to one send per datagram if GSO is unavailable or refused.
    async fn send_batch(&self, batch: &[u8], segment: usize) -> io::Result<()> {
        let (socket, gso, peer) = self.parts();
        if batch.len() > segment
            && let Some(state) = gso
        {
            let transmit = quinn_udp::Transmit {
                destination: peer,
                ecn: None,
                contents: batch,
                segment_size: Some(segment),
                src_ip: None,
            };
            let sent = socket
                .async_io(tokio::io::Interest::WRITABLE, || {
                    state.try_send(socket.into(), &transmit)
                })
                .await;
            match sent {
                Ok(()) => return Ok(()),
                Err(e) => debug!(error = %e, "GSO send failed, sending datagrams one by one"),
            }
        }
        for datagram in batch.chunks(segment) {
            self.send(datagram).await?;
        }
        Ok(())
    }

    /// `Ok(None)` when the route was replaced by a newer request from the same peer.
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Self::Own { socket, .. } => socket.recv(buf).await.map(Some),
            Self::Shared { rx, .. } => Ok(rx.recv().await.map(|d| {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                n
            })),
        }
    }
}

/// Where a transfer's bytes come from.
enum Content {
    Memory(Arc<[u8]>),
    File {
        file: Arc<std::fs::File>,
        cache: Vec<u8>,
        cache_start: u64,
        size: u64,
    },
}

impl Content {
    fn size(&self) -> u64 {
        match self {
            Self::Memory(m) => m.len() as u64,
            Self::File { size, .. } => *size,
        }
    }

    /// Fill `out` with the bytes at `offset`.
    async fn read(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let short = || io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank");
        match self {
            Self::Memory(m) => {
                let start = usize::try_from(offset).map_err(|_| short())?;
                let src = m.get(start..start + out.len()).ok_or_else(short)?;
                out.copy_from_slice(src);
                Ok(())
            }
            Self::File {
                file,
                cache,
                cache_start,
                size,
            } => {
                let end = offset + out.len() as u64;
                let cached_end = *cache_start + cache.len() as u64;
                if offset < *cache_start || end > cached_end {
                    let want = (*size - offset.min(*size)).min(READ_CHUNK as u64);
                    let want = usize::try_from(want).unwrap_or(READ_CHUNK).max(out.len());
                    let file = Arc::clone(file);
                    let mut chunk = std::mem::take(cache);
                    chunk.resize(want, 0);
                    let chunk = tokio::task::spawn_blocking(move || {
                        file.read_exact_at(&mut chunk, offset).map(|()| chunk)
                    })
                    .await
                    .map_err(io::Error::other)??;
                    *cache = chunk;
                    *cache_start = offset;
                }
                let rel = usize::try_from(offset - *cache_start).map_err(|_| short())?;
                let src = cache.get(rel..rel + out.len()).ok_or_else(short)?;
                out.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

/// Everything a transfer task needs, moved into it.
struct Job {
    peer: SocketAddr,
    filename: String,
    request_options: crate::packet::Options,
    mode: Mode,
    limits: Limits,
    root: Arc<Path>,
    provider: Option<Arc<dyn FileProvider>>,
    stats: Arc<Stats>,
    cancel: watch::Receiver<bool>,
}

impl Job {
    async fn run(mut self, spec: LinkSpec) {
        let peer = self.peer;
        let mut link = match Link::open(spec, peer).await {
            Ok(l) => l,
            Err(e) => {
                warn!(%peer, error = %e, "cannot open TFTP transfer socket");
                self.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut content = match self.resolve().await {
            Ok(c) => c,
            Err((code, message)) => {
                debug!(%peer, file = %self.filename, message, "TFTP request refused");
                self.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 128];
                let len = Repr::Error { code, message }.emit(&mut buf);
                let _ = link.send(&buf[..len]).await;
                return;
            }
        };
        let request = crate::packet::Request {
            kind: RequestKind::Read,
            filename: &self.filename,
            mode: self.mode,
            options: self.request_options,
        };
        let started = Instant::now();
        let mut transfer = Transfer::new(&request, content.size(), self.limits, started);
        self.stats.transfers_started.fetch_add(1, Ordering::Relaxed);
        info!(%peer, file = %self.filename, size = content.size(),
              blksize = transfer.blksize(), windowsize = transfer.windowsize(), "TFTP transfer started");
        let segment = 4 + usize::from(transfer.blksize());
        let max_segments = link.max_segments().min(usize::from(transfer.windowsize()));
        let mut tx = vec![0u8; segment];
        // Consecutive DATA datagrams of one window, sent together (see `Link::send_batch`).
        let mut batch: Vec<u8> = Vec::with_capacity(segment * max_segments);
        let mut rx = vec![0u8; MAX_PACKET_LEN + 1];
        let mut replaced = false;
        loop {
            while let Some(t) = transfer.poll_transmit(Instant::now(), &mut tx) {
                match t {
                    Transmit::Data { offset, len, .. } => {
                        if let Err(e) = content.read(offset, &mut tx[4..4 + len]).await {
                            warn!(%peer, file = %self.filename, error = %e, "TFTP read failed");
                            transfer.abort(ErrorCode::NotDefined, "read error");
                            continue;
                        }
                        self.stats
                            .bytes_sent
                            .fetch_add(len as u64, Ordering::Relaxed);
                        batch.extend_from_slice(&tx[..4 + len]);
                        // A short datagram can only be the last segment of a batch.
                        if 4 + len < segment || batch.len() >= segment * max_segments {
                            self.flush(&link, &mut batch, segment).await;
                        }
                    }
                    Transmit::Packet { len } => {
                        self.flush(&link, &mut batch, segment).await;
                        if let Err(e) = link.send(&tx[..len]).await {
                            debug!(%peer, error = %e, "TFTP send failed");
                        }
                    }
                }
            }
            self.flush(&link, &mut batch, segment).await;
            if transfer.is_done() {
                break;
            }
            // Always armed while sending; the fallback only guards against a stuck transfer.
            let deadline = transfer
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                r = link.recv(&mut rx) => match r {
                    Ok(Some(n)) => transfer.handle_datagram(Instant::now(), &rx[..n]),
                    Ok(None) => { replaced = true; break; }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        // ICMP port unreachable: the client is gone, do not wait for timeouts.
                        debug!(%peer, "TFTP client went away");
                        transfer.abort(ErrorCode::NotDefined, "client unreachable");
                        let _ = transfer.poll_transmit(Instant::now(), &mut tx);
                        break;
                    }
                    Err(e) => debug!(%peer, error = %e, "TFTP recv error"),
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    if transfer.poll_timeout().is_none() {
                        transfer.abort(ErrorCode::NotDefined, "timed out");
                    } else {
                        transfer.handle_timeout(Instant::now());
                    }
                }
                r = self.cancel.changed() => {
                    let _ = r;
                    transfer.abort(ErrorCode::NotDefined, "server shutting down");
                }
            }
        }
        let elapsed = started.elapsed();
        match transfer.outcome() {
            Some(Outcome::Completed) => {
                self.stats
                    .transfers_completed
                    .fetch_add(1, Ordering::Relaxed);
                info!(%peer, file = %self.filename, size = transfer.size(),
                      ms = elapsed.as_millis(), retransmits = transfer.retransmits(),
                      "TFTP transfer complete");
            }
            other => {
                self.stats.transfers_failed.fetch_add(1, Ordering::Relaxed);
                info!(%peer, file = %self.filename, outcome = ?other, replaced,
                      "TFTP transfer ended early");
            }
        }
    }

    async fn flush(&self, link: &Link, batch: &mut Vec<u8>, segment: usize) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = link.send_batch(batch, segment).await {
            debug!(peer = %self.peer, error = %e, "TFTP send failed");
        }
        batch.clear();
    }

    async fn resolve(&self) -> Result<Content, (ErrorCode, &'static str)> {
        let clean = CleanPath::new(&self.filename)
            .map_err(|_| (ErrorCode::AccessViolation, "access violation"))?;
        if let Some(provider) = &self.provider
            && let Some(generated) = provider.lookup(self.peer, clean.as_str())
        {
            return Ok(Content::Memory(generated.contents));
        }
        let root = Arc::clone(&self.root);
        let rel = clean.to_relative();
        let (file, size) = tokio::task::spawn_blocking(move || open_under_root(&root, &rel))
            .await
            .map_err(|_| (ErrorCode::NotDefined, "internal error"))??;
        Ok(Content::File {
            file: Arc::new(file),
            cache: Vec::new(),
            cache_start: 0,
            size,
        })
    }
}

/// Open `rel` under the canonical `root`, refusing anything whose real path (after following
/// symlinks) is outside the root, and anything that is not a regular file.
fn open_under_root(
    root: &Path,
    rel: &Path,
) -> Result<(std::fs::File, u64), (ErrorCode, &'static str)> {
    let not_found = (ErrorCode::FileNotFound, "file not found");
    let joined = root.join(rel);
    let real = std::fs::canonicalize(&joined).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => (ErrorCode::AccessViolation, "access violation"),
        _ => not_found,
    })?;
    if !real.starts_with(root) {
        return Err((ErrorCode::AccessViolation, "access violation"));
    }
    let file = std::fs::File::open(&real).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => (ErrorCode::AccessViolation, "access violation"),
        _ => not_found,
    })?;
    let meta = file.metadata().map_err(|_| not_found)?;
    if !meta.is_file() {
        return Err(not_found);
    }
    Ok((file, meta.len()))
}
