//! The tokio shell around [`Transfer`]: sockets, files, timers, counters.
//!
//! One listening socket receives requests. In the standard mode every transfer gets its own
//! socket on an ephemeral port (its transfer ID, RFC 1350), connected to the client so the kernel
//! drops datagrams from anyone else. In single-port mode (for firewalls/NAT that only pass port
//! 69) all transfers share the listening socket and are demultiplexed by the peer address.
//!
//! Resources are bounded so that hostile or broken clients cannot exhaust the server (see
//! [`crate::budget`] and docs/tftp.md, "Limits and memory"): transfer slots globally and per
//! peer, and every buffer beyond a fixed per-transfer minimum through one byte budget. Files are
//! never read whole: they are streamed with positioned reads on a small pool of I/O threads.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::budget::{Admission, AdmissionLimits, Admit, ByteBudget, Reservation, TransferId};
use crate::packet::{
    ErrorCode, MAX_PACKET_LEN, MAX_REQUEST_LEN, Mode, Opcode, Packet, Repr, Request, RequestKind,
};
use crate::path::CleanPath;
use crate::transfer::{Limits, Outcome, Transfer, Transmit};

/// Largest file a [`FileProvider`] may hand over as bytes ([`Provided::Generated`]): configs
/// and scripts are a few KiB; anything large must be a [`Provided::File`] and is streamed.
pub const MAX_GENERATED_LEN: usize = 64 * 1024;
/// Most file bytes a transfer reads ahead with one positioned read (when the budget allows).
const READ_AHEAD: usize = 256 * 1024;
/// Datagrams queued per transfer in single-port mode before extra ones are dropped (a client
/// sends one ACK per window, so this is far more than a well-behaved one needs).
const SINGLE_PORT_QUEUE: usize = 64;
/// Bytes kept of a datagram routed to a transfer in single-port mode: an ACK needs 4; an ERROR's
/// message is only logged.
const ROUTED_LEN: usize = 128;
/// Receive buffer of a transfer: clients send ACK and ERROR, and at most a resent request.
const TRANSFER_RX_LEN: usize = MAX_REQUEST_LEN + 1;
/// Send buffer floor for OACK and ERROR datagrams (both far shorter).
const CONTROL_LEN: usize = 512;
/// Largest UDP payload of one GSO send: the kernel refuses more than 65535 - 20 - 8 bytes.
const MAX_GSO_BYTES: usize = 65_507;
/// Threads doing file I/O (opens, positioned reads) for one server, whatever the number of
/// transfers: see [`FileIo`].
const IO_THREADS: usize = 8;

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
    /// Directory served read-only; nothing outside it is ever opened (except files a
    /// [`FileProvider`] names).
    pub root: PathBuf,
    /// Serve every transfer from the listening socket instead of an ephemeral port each.
    pub single_port: bool,
    /// Transfers running at once, all clients together. A request beyond it gets no answer:
    /// the client resends it on its own timer (1–5 s in firmware) and is served once a slot
    /// is free. An ERROR would end a firmware's boot attempt (PXE ROMs, EDK2, U-Boot and the
    /// Raspberry Pi bootloader all give up on an ERROR), which in a boot storm turns a busy
    /// second into reboots (docs/storm.md).
    pub max_transfers: u64,
    /// Transfers running at once for one client host (IPv4 address, or IPv6 /64); more get
    /// ERROR 0 "too many transfers from your address". Keeps a flood from one host (any number
    /// of source ports) from taking the slots of everyone else.
    pub max_transfers_per_peer: u64,
    /// Bytes all transfers together may hold in buffers beyond their fixed minimum (file
    /// read-ahead, the window batch for UDP GSO, generated files). When it is used up, transfers
    /// still run, reading one block at a time. See docs/tftp.md for the resulting memory bound.
    pub buffer_budget: usize,
    /// Option caps and retransmission policy.
    pub limits: Limits,
}

impl ServerConfig {
    /// Defaults for `root` on `listen`: ephemeral ports, 4096 transfers, 8 per peer, 16 MiB of
    /// buffers, [`Limits::default`].
    #[must_use]
    pub fn new(listen: SocketAddr, root: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            root: root.into(),
            single_port: false,
            max_transfers: DEFAULT_MAX_TRANSFERS,
            max_transfers_per_peer: 8,
            buffer_budget: 16 << 20,
            limits: Limits::default(),
        }
    }
}

/// What a [`FileProvider`] answers for one request.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provided {
    /// Bytes generated for this client (a Raspberry Pi `config.txt`, a PXELINUX or GRUB
    /// config, a U-Boot script). At most [`MAX_GENERATED_LEN`] bytes; a larger answer is
    /// refused with ERROR 0 and logged, never served.
    Generated(Arc<[u8]>),
    /// A file to stream, e.g. a content-addressed blob. The server opens it off the runtime
    /// threads and serves it only if it is a regular file of exactly `size` bytes when opened
    /// (otherwise ERROR 0 "file size mismatch", logged as an error); it is never read whole.
    /// The path is used as given: the provider vouches for it (no root confinement).
    File {
        /// Where the file is.
        path: PathBuf,
        /// The size it must have (what `tsize` announces).
        size: u64,
    },
}

impl Provided {
    /// Generated bytes.
    #[must_use]
    pub fn generated(contents: impl Into<Arc<[u8]>>) -> Self {
        Self::Generated(contents.into())
    }

    /// A file to stream, which must have `size` bytes.
    #[must_use]
    pub fn file(path: impl Into<PathBuf>, size: u64) -> Self {
        Self::File {
            path: path.into(),
            size,
        }
    }
}

impl fmt::Debug for Provided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Generated(bytes) => f
                .debug_struct("Generated")
                .field("len", &bytes.len())
                .finish(),
            Self::File { path, size } => f
                .debug_struct("File")
                .field("path", path)
                .field("size", size)
                .finish(),
        }
    }
}

impl From<Vec<u8>> for Provided {
    fn from(v: Vec<u8>) -> Self {
        Self::generated(v)
    }
}

impl From<String> for Provided {
    fn from(s: String) -> Self {
        Self::generated(s.into_bytes())
    }
}

/// Hook to serve files per client, consulted before the disk.
///
/// `path` is already normalised (see [`CleanPath`]): relative, `/`-separated, no `..`. It runs
/// on the async runtime for every read request, so it must be cheap and must not block: look up
/// prepared data, never read a file or query a database here. Large content is answered with
/// [`Provided::File`], which the server opens and streams itself.
pub trait FileProvider: Send + Sync + 'static {
    /// What to serve to `peer` for `path`, or `None` to fall through to the disk.
    fn lookup(&self, peer: SocketAddr, path: &str) -> Option<Provided>;
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
    /// Of `requests_refused`: refused because the global or the per-peer cap was reached.
    pub requests_busy: AtomicU64,
    /// Requests that waited for a slot (the global cap reached), not refused.
    pub requests_queued: AtomicU64,
    /// DATA payload bytes sent, retransmissions included.
    pub bytes_sent: AtomicU64,
    /// Transfers in progress right now (gauge).
    pub active_transfers: AtomicU64,
    /// The buffer budget, for the `buffer_bytes` gauge (set by [`Server::bind`]).
    budget: Option<Arc<ByteBudget>>,
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
    /// See [`Stats::requests_busy`].
    pub requests_busy: u64,
    /// See [`Stats::requests_queued`].
    pub requests_queued: u64,
    /// See [`Stats::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`Stats::active_transfers`].
    pub active_transfers: u64,
    /// Bytes of the buffer budget held by transfers right now (gauge).
    pub buffer_bytes: u64,
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
            requests_busy: self.requests_busy.load(Ordering::Relaxed),
            requests_queued: self.requests_queued.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            active_transfers: self.active_transfers.load(Ordering::Relaxed),
            buffer_bytes: self.budget.as_ref().map_or(0, |b| b.used() as u64),
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
    budget: Arc<ByteBudget>,
    io: Arc<FileIo>,
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

/// State of the request loop (owned by [`Server::run`], so no locks).
struct Dispatch {
    admission: Admission,
    tasks: JoinSet<()>,
    /// Which transfer each task serves, to release its slot when the task ends.
    task_ids: HashMap<tokio::task::Id, TransferId>,
    /// Single-port mode: where each peer's datagrams go.
    routes: HashMap<SocketAddr, Route>,
    /// Last "busy" warning, so a flood logs once in a while, not once per datagram.
    last_busy_warning: Option<Instant>,
}

impl Dispatch {
    fn task_ended(&mut self, task: tokio::task::Id) {
        let Some(id) = self.task_ids.remove(&task) else {
            return;
        };
        if let Some(peer) = self.admission.finish(id)
            && self.routes.get(&peer).is_some_and(|r| r.id == id)
        {
            self.routes.remove(&peer);
        }
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
        // Best effort (the kernel caps it at `net.core.rmem_max`): a storm's requests and
        // resends must queue in the kernel while the dispatcher task waits for its turn on a
        // runtime busy with thousands of transfers, not be dropped by it.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, LISTEN_RECV_BUFFER);
        let gso = quinn_udp::UdpSocketState::new((&socket).into())
            .ok()
            .map(Arc::new);
        let budget = ByteBudget::new(config.buffer_budget);
        let stats = Stats {
            budget: Some(Arc::clone(&budget)),
            ..Stats::default()
        };
        Ok(Self {
            socket: Arc::new(socket),
            gso,
            config,
            root: root.into(),
            provider: None,
            stats: Arc::new(stats),
            budget,
            io: FileIo::start(IO_THREADS)?,
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
        let mut state = Dispatch {
            admission: Admission::new(AdmissionLimits {
                max_transfers: usize::try_from(self.config.max_transfers).unwrap_or(usize::MAX),
                max_per_peer: usize::try_from(self.config.max_transfers_per_peer)
                    .unwrap_or(usize::MAX),
                // As many may wait as run: a storm's worth of firmware requests.
                max_waiting: usize::try_from(self.config.max_transfers).unwrap_or(usize::MAX),
            }),
            tasks: JoinSet::new(),
            task_ids: HashMap::new(),
            routes: HashMap::new(),
            last_busy_warning: None,
        };
        let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
        let recv_buffer = rustix::net::sockopt::socket_recv_buffer_size(&*self.socket).unwrap_or(0);
        info!(addr = %self.local_addr()?, root = %self.root.display(), recv_buffer,
              single_port = self.config.single_port, max_transfers = self.config.max_transfers,
              max_transfers_per_peer = self.config.max_transfers_per_peer,
              buffer_budget = self.config.buffer_budget, "TFTP server listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, peer)) => {
                        let datagram = &buf[..n.min(buf.len())];
                        self.dispatch(datagram, peer, &mut state, &cancel_rx).await;
                    }
                    Err(e) => debug!(error = %e, "TFTP recv error"),
                },
                Some(joined) = state.tasks.join_next_with_id(), if !state.tasks.is_empty() => {
                    let task = match joined {
                        Ok((task, ())) => task,
                        Err(e) => {
                            if e.is_panic() {
                                error!(error = %e, "TFTP transfer task panicked");
                            }
                            e.id()
                        }
                    };
                    state.task_ended(task);
                    self.start_waiting(&mut state, &cancel_rx);
                }
            }
        }
        info!("TFTP server shutting down");
        // Ignore the error: no receiver left just means no transfer is running.
        let _ = cancel_tx.send(true);
        while state.tasks.join_next().await.is_some() {}
        Ok(())
    }

    async fn dispatch(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        state: &mut Dispatch,
        cancel: &watch::Receiver<bool>,
    ) {
        let is_request = matches!(
            Packet::new_checked(datagram).map(|p| p.opcode()),
            Ok(Opcode::Rrq | Opcode::Wrq)
        );
        if !is_request {
            if let Some(route) = state.routes.get(&peer) {
                // Full queue: drop, exactly as a congested network would.
                let _ = route
                    .tx
                    .try_send(datagram[..datagram.len().min(ROUTED_LEN)].to_vec());
            } else {
                // Stray DATA/ACK/ERROR or garbage on the listening port: staying silent avoids
                // feeding reflection attacks.
                debug!(%peer, len = datagram.len(), "ignoring non-request datagram");
            }
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
        let (id, replaced) =
            match state
                .admission
                .admit(peer, datagram, self.config.single_port, Instant::now())
            {
                Admit::Start { id, replaced } => (id, replaced),
                Admit::Duplicate => {
                    // The client resent its RRQ before seeing our answer: already being served,
                    // or waiting for a slot (its place kept).
                    debug!(%peer, file = request.filename, "retransmitted request ignored");
                    return;
                }
                Admit::Queued => {
                    // Every slot is taken: it starts, oldest first, when one frees (silence
                    // meanwhile; the client's resends only refresh its place).
                    self.stats.requests_queued.fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, file = request.filename, waiting = state.admission.waiting(),
                       "request waits for a transfer slot");
                    // A slot may be free with others still in line (their clients gave up).
                    self.start_waiting(state, cancel);
                    return;
                }
                refusal => {
                    let global = refusal == Admit::Busy;
                    let now = Instant::now();
                    if state
                        .last_busy_warning
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                    {
                        state.last_busy_warning = Some(now);
                        warn!(%peer, active = state.admission.active(),
                          from_peer = state.admission.active_for(peer.ip()), global,
                          "TFTP transfer limit reached (logged at most every 10 s)");
                    }
                    self.stats.requests_busy.fetch_add(1, Ordering::Relaxed);
                    if !global {
                        // One host over its share: tell it (a flood, not a firmware, does this).
                        self.refuse(
                            peer,
                            ErrorCode::NotDefined,
                            "too many transfers from your address",
                        )
                        .await;
                    } else {
                        self.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            };
        if replaced.is_some() {
            debug!(%peer, file = request.filename, "new request replaces the running transfer");
        }
        self.spawn_transfer(state, peer, &request, id, cancel);
    }

    /// Starts the waiting requests that slots have freed up for, oldest first.
    fn start_waiting(&self, state: &mut Dispatch, cancel: &watch::Receiver<bool>) {
        while let Some(started) = state.admission.start_waiting(Instant::now()) {
            match Repr::parse_bytes(&started.request) {
                Ok(Repr::Request(request)) => {
                    debug!(peer = %started.peer, file = request.filename,
                           "waiting request starts");
                    self.spawn_transfer(state, started.peer, &request, started.id, cancel);
                }
                // It parsed when it arrived; never happens, but never hold a slot for it.
                _ => {
                    state.admission.finish(started.id);
                }
            }
        }
    }

    /// Runs the admitted transfer `id` for `peer` in a task of its own.
    fn spawn_transfer(
        &self,
        state: &mut Dispatch,
        peer: SocketAddr,
        request: &Request<'_>,
        id: TransferId,
        cancel: &watch::Receiver<bool>,
    ) {
        self.stats.active_transfers.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(Arc::clone(&self.stats));
        let link = if self.config.single_port {
            let (tx, rx) = mpsc::channel(SINGLE_PORT_QUEUE);
            // Replacing the route drops the old sender: the old transfer sees its channel
            // close and stops.
            state.routes.insert(peer, Route { tx, id });
            LinkSpec::Shared {
                socket: Arc::clone(&self.socket),
                gso: self.gso.clone(),
                rx,
            }
        } else {
            LinkSpec::Own {
                local: SocketAddr::new(self.config.listen.ip(), 0),
                gso: self.gso.clone(),
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
            budget: Arc::clone(&self.budget),
            io: Arc::clone(&self.io),
            cancel: cancel.clone(),
        };
        let handle = state.tasks.spawn(async move {
            let _guard = guard;
            job.run(link).await;
        });
        state.task_ids.insert(handle.id(), id);
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
    /// The transfer the datagrams go to.
    id: TransferId,
}

enum LinkSpec {
    Own {
        local: SocketAddr,
        /// The listening socket's GSO state, shared by IPv4 transfer sockets (see
        /// [`Link::open`]).
        gso: Option<Arc<quinn_udp::UdpSocketState>>,
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
        gso: Option<Arc<quinn_udp::UdpSocketState>>,
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
            LinkSpec::Own { local, gso } => {
                let socket = UdpSocket::bind(local).await?;
                socket.connect(peer).await?;
                // An IPv4 transfer socket borrows the listening socket's GSO state (quinn-udp
                // takes the socket per send) and only needs "don't fragment" of its own.
                // `UdpSocketState::new` per transfer also enabled UDP_GRO, which a TFTP server
                // never uses: when no other socket on the host has GRO on, enabling it and
                // closing the socket each patch kernel text (a static key) with an IPI to every
                // CPU, ≈ 140 µs each, 18 % of the server's CPU in a 4,000-machine storm
                // (docs/benchmarks.md). IPv6 needs IPV6_DONTFRAG as well, which only
                // quinn-udp sets here, so an IPv6 transfer still gets its own state.
                let gso = match (local, gso) {
                    (SocketAddr::V4(_), Some(shared)) => {
                        rustix::net::sockopt::set_ip_mtu_discover(
                            &socket,
                            rustix::net::sockopt::Ipv4PathMtuDiscovery::PROBE,
                        )?;
                        Some(shared)
                    }
                    _ => quinn_udp::UdpSocketState::new((&socket).into())
                        .ok()
                        .map(Arc::new),
                };
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
            Self::Own { socket, gso, peer } => (socket, gso.as_deref(), *peer),
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
enum Source {
    /// Generated bytes, with their share of the buffer budget.
    Memory {
        bytes: Arc<[u8]>,
        _reservation: Reservation,
    },
    /// An open file of `size` bytes, read with positioned reads.
    File { file: Arc<std::fs::File>, size: u64 },
}

impl Source {
    fn size(&self) -> u64 {
        match self {
            Self::Memory { bytes, .. } => bytes.len() as u64,
            Self::File { size, .. } => *size,
        }
    }
}

/// A transfer's buffers beyond its fixed minimum, all held through one [`Reservation`].
///
/// Invariant: `reservation.bytes() == batch_reserved + cache_reserved`, and the batch and cache
/// vectors never hold more capacity than reserved for them.
struct Buffers {
    reservation: Reservation,
    /// DATA datagrams of one window, sent together with UDP GSO (see [`Link::send_batch`]).
    batch: Vec<u8>,
    batch_reserved: usize,
    /// Bytes a full batch needs (0: GSO unusable, every datagram goes out alone).
    batch_want: usize,
    /// File bytes read ahead, starting at file offset `cache_start`.
    cache: Vec<u8>,
    cache_start: u64,
    cache_reserved: usize,
    /// While set (the transfer is stalled), nothing is reserved: see [`Buffers::set_stalled`].
    stalled: bool,
}

impl Buffers {
    fn new(reservation: Reservation, batch_want: usize) -> Self {
        Self {
            reservation,
            batch: Vec::new(),
            batch_reserved: 0,
            batch_want,
            cache: Vec::new(),
            cache_start: 0,
            cache_reserved: 0,
            stalled: false,
        }
    }

    /// A transfer that stopped making progress (see [`Transfer::is_stalled`]) should not sit on
    /// memory live transfers could use: give everything back and send block by block until it
    /// makes progress again.
    fn set_stalled(&mut self, stalled: bool) {
        if stalled && !self.stalled {
            self.batch = Vec::new();
            self.cache = Vec::new();
            self.batch_reserved = 0;
            self.cache_reserved = 0;
            let _ = self.reservation.try_resize(0);
        }
        self.stalled = stalled;
    }

    /// Whether DATA datagrams go into the batch: true once its memory is reserved. The batch
    /// only saves system calls, so it is taken only within the transfer's `fair` share of the
    /// budget, after the read-ahead (which saves an I/O-thread round trip per block).
    fn batching(&mut self, fair: usize) -> bool {
        if self.batch_want == 0 || self.stalled {
            return false;
        }
        if self.batch_reserved == 0 {
            if self.cache_reserved + self.batch_want > fair
                || !self
                    .reservation
                    .try_resize(self.cache_reserved + self.batch_want)
            {
                return false;
            }
            self.batch_reserved = self.batch_want;
            self.batch = Vec::with_capacity(self.batch_want);
        }
        true
    }

    /// The cached bytes `[offset, offset + len)`, if present.
    fn cached(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let rel = usize::try_from(offset.checked_sub(self.cache_start)?).ok()?;
        self.cache.get(rel..rel.checked_add(len)?)
    }

    /// Make the read-ahead buffer `want` bytes within the budget, or as close to it as the
    /// budget allows (halving down to `min`); returns the size it has (0: none, read block by
    /// block).
    fn size_cache(&mut self, want: usize, min: usize) -> usize {
        if self.stalled {
            return 0;
        }
        let mut size = cache_class(want).max(min);
        loop {
            if size == self.cache_reserved {
                return size;
            }
            if self.reservation.try_resize(self.batch_reserved + size) {
                self.cache = Vec::new();
                self.cache.reserve_exact(size);
                self.cache_reserved = size;
                return size;
            }
            if size <= min {
                return self.cache_reserved;
            }
            size = cache_class(size / 2).max(min);
        }
    }
}

/// Read-ahead sizes are multiples of 16 KiB (rounded down; smaller sizes as they are): few
/// distinct sizes, so the allocator reuses freed buffers instead of fragmenting its heap, which
/// would show up as resident memory.
fn cache_class(bytes: usize) -> usize {
    const CLASS: usize = 16 * 1024;
    if bytes >= CLASS {
        bytes / CLASS * CLASS
    } else {
        bytes
    }
}

type IoJob = Box<dyn FnOnce() + Send>;

/// Receive buffer asked for on the listening socket (like DHCP's). The default (208 KiB) holds
/// a few hundred small datagrams: in a 10,000-machine storm, requests and resends arriving
/// while the dispatcher waits for its turn overflow it (counted as the UDP `RcvbufErrors`).
pub const LISTEN_RECV_BUFFER: usize = 4 << 20;

/// Default of [`ServerConfig::max_transfers`]. A transfer is mostly waiting for the client's
/// next ACK, so in a boot storm the cap, not the CPU, sets the rate: at 512, 10,000 simulated
/// machines (half BIOS PXE, half UEFI) took 84 s and 439 gave up after three boots; at 4096 all
/// booted in 26 s, 98.4–99.9 % on their first attempt (docs/benchmarks.md, boot storms). Buffer
/// memory stays under the budget; each transfer adds ~7 KiB and one socket (file descriptor).
pub const DEFAULT_MAX_TRANSFERS: u64 = 4096;

/// A fixed set of threads for the server's file I/O (opens and positioned reads), so the async
/// runtime never waits on a disk.
///
/// Not tokio's blocking pool: that one adds a thread whenever none is idle at the instant a task
/// is queued, which under a stream of short reads from hundreds of transfers grows to hundreds
/// of threads (measured: 515 for 512 transfers). Here the count is fixed and requests queue.
/// The threads end once the server and all its transfers are gone (the channel closes).
struct FileIo {
    jobs: std::sync::mpsc::Sender<IoJob>,
}

impl FileIo {
    fn start(threads: usize) -> io::Result<Arc<Self>> {
        let (tx, rx) = std::sync::mpsc::channel::<IoJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("tftp-io-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = job else { return };
                        // A panicking job loses its answer (the caller sees `None`), not the
                        // thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(Arc::new(Self { jobs: tx }))
    }

    /// Run `f` on an I/O thread; `None` if it panicked.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.await.ok()
    }
}

/// `file.read_exact_at(&mut buf[range], offset)` on an I/O thread. The buffer always comes back
/// (the same one, or a zeroed one of the same length if the read was lost).
async fn read_at(
    io: &FileIo,
    file: &Arc<std::fs::File>,
    mut buf: Vec<u8>,
    range: std::ops::Range<usize>,
    offset: u64,
) -> (Vec<u8>, io::Result<()>) {
    let len = buf.len();
    let file = Arc::clone(file);
    let read = io
        .run(move || {
            let r = match buf.get_mut(range) {
                Some(dst) => file.read_exact_at(dst, offset),
                None => Err(io::Error::other("read range outside the buffer")),
            };
            (buf, r)
        })
        .await;
    read.unwrap_or_else(|| (vec![0; len], Err(io::Error::other("file read lost"))))
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
    budget: Arc<ByteBudget>,
    io: Arc<FileIo>,
    cancel: watch::Receiver<bool>,
}

/// The refusal of a generated file the buffer budget has no room for (left unanswered).
const BUDGET_BUSY: &str = "server busy";

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
        let source = match self.resolve().await {
            Ok(c) => c,
            Err((code, message)) => {
                debug!(%peer, file = %self.filename, message, "TFTP request refused");
                self.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                if message == BUDGET_BUSY {
                    // No buffer memory for a generated file now: like a request beyond the
                    // transfer cap, no answer; the client resends and gets it when there is.
                    self.stats.requests_busy.fetch_add(1, Ordering::Relaxed);
                    return;
                }
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
        let mut transfer = Transfer::new(&request, source.size(), self.limits, started);
        self.stats.transfers_started.fetch_add(1, Ordering::Relaxed);
        info!(%peer, file = %self.filename, size = source.size(),
              blksize = transfer.blksize(), windowsize = transfer.windowsize(), "TFTP transfer started");
        let blksize = usize::from(transfer.blksize());
        let segment = 4 + blksize;
        let window = usize::from(transfer.windowsize());
        let gso_segments = link
            .max_segments()
            .min(window)
            .min(MAX_GSO_BYTES / segment)
            .max(1);
        let batch_want = if gso_segments > 1 {
            segment * gso_segments
        } else {
            0
        };
        let mut bufs = Buffers::new(self.budget.reservation(), batch_want);
        let mut reader = Reader {
            source,
            window_bytes: window * blksize,
        };
        let mut tx = vec![0u8; segment.max(CONTROL_LEN)];
        let mut rx = vec![0u8; TRANSFER_RX_LEN];
        let mut replaced = false;
        loop {
            bufs.set_stalled(transfer.is_stalled());
            let fair = self.fair_share();
            while let Some(t) = transfer.poll_transmit(Instant::now(), &mut tx) {
                match t {
                    Transmit::Data { offset, len, .. } => {
                        let read = reader.read(offset, len, &mut tx, &mut bufs, fair, &self.io);
                        if let Err(e) = read.await {
                            warn!(%peer, file = %self.filename, error = %e, "TFTP read failed");
                            transfer.abort(ErrorCode::NotDefined, "read error");
                            continue;
                        }
                        self.stats
                            .bytes_sent
                            .fetch_add(len as u64, Ordering::Relaxed);
                        if bufs.batching(fair) {
                            bufs.batch.extend_from_slice(&tx[..4 + len]);
                            // A short datagram can only be the last segment of a batch.
                            if 4 + len < segment || bufs.batch.len() >= bufs.batch_want {
                                self.flush(&link, &mut bufs.batch, segment).await;
                            }
                        } else if let Err(e) = link.send(&tx[..4 + len]).await {
                            debug!(%peer, error = %e, "TFTP send failed");
                        }
                    }
                    Transmit::Packet { len } => {
                        self.flush(&link, &mut bufs.batch, segment).await;
                        if let Err(e) = link.send(&tx[..len]).await {
                            debug!(%peer, error = %e, "TFTP send failed");
                        }
                    }
                }
            }
            self.flush(&link, &mut bufs.batch, segment).await;
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

    /// This transfer's share of the buffer budget, were all running transfers to ask for one.
    fn fair_share(&self) -> usize {
        let active = self.stats.active_transfers.load(Ordering::Relaxed);
        self.budget
            .fair_share(usize::try_from(active).unwrap_or(usize::MAX))
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

    async fn resolve(&self) -> Result<Source, (ErrorCode, &'static str)> {
        let clean = CleanPath::new(&self.filename)
            .map_err(|_| (ErrorCode::AccessViolation, "access violation"))?;
        if let Some(provider) = &self.provider
            && let Some(provided) = provider.lookup(self.peer, clean.as_str())
        {
            return match provided {
                Provided::Generated(bytes) => {
                    if bytes.len() > MAX_GENERATED_LEN {
                        error!(peer = %self.peer, file = %self.filename, len = bytes.len(),
                               max = MAX_GENERATED_LEN,
                               "generated TFTP file is over the cap; not serving it");
                        return Err((ErrorCode::NotDefined, "generated file too large"));
                    }
                    let mut reservation = self.budget.reservation();
                    if !reservation.try_resize(bytes.len()) {
                        return Err((ErrorCode::NotDefined, BUDGET_BUSY));
                    }
                    Ok(Source::Memory {
                        bytes,
                        _reservation: reservation,
                    })
                }
                Provided::File { path, size } => {
                    let file = self
                        .io
                        .run(move || open_provided(&path, size))
                        .await
                        .ok_or((ErrorCode::NotDefined, "internal error"))??;
                    Ok(Source::File {
                        file: Arc::new(file),
                        size,
                    })
                }
            };
        }
        let root = Arc::clone(&self.root);
        let rel = clean.to_relative();
        let (file, size) = self
            .io
            .run(move || open_under_root(&root, &rel))
            .await
            .ok_or((ErrorCode::NotDefined, "internal error"))??;
        Ok(Source::File {
            file: Arc::new(file),
            size,
        })
    }
}

/// Copies a transfer's payloads into its send buffer.
struct Reader {
    source: Source,
    /// Bytes of one full window: the first read of a file is this big, so a request that is
    /// never acknowledged costs one window of reading, not a whole read-ahead.
    window_bytes: usize,
}

impl Reader {
    /// Fill `tx[4..4 + len]` with the payload at `offset`.
    async fn read(
        &mut self,
        offset: u64,
        len: usize,
        tx: &mut Vec<u8>,
        bufs: &mut Buffers,
        fair: usize,
        io: &FileIo,
    ) -> io::Result<()> {
        let short = || io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank");
        if len == 0 {
            return Ok(());
        }
        let dst = tx.get_mut(4..4 + len).ok_or_else(short)?;
        let (file, size) = match &self.source {
            Source::Memory { bytes, .. } => {
                let start = usize::try_from(offset).map_err(|_| short())?;
                let src = bytes.get(start..start + len).ok_or_else(short)?;
                dst.copy_from_slice(src);
                return Ok(());
            }
            Source::File { file, size } => (file, *size),
        };
        if let Some(src) = bufs.cached(offset, len) {
            dst.copy_from_slice(src);
            return Ok(());
        }
        // Read ahead: one window at first, then the fair share of the budget (between one
        // window and READ_AHEAD), never past the end of the file; short of room, as much as
        // the budget has, down to one block.
        let window = self.window_bytes.min(READ_AHEAD);
        let want = if offset < self.window_bytes as u64 {
            window
        } else {
            fair.saturating_sub(bufs.batch_want)
                .min(READ_AHEAD)
                .max(window)
        };
        let remaining = usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX);
        let cache = bufs.size_cache(want, len.max(1)).min(remaining);
        if cache > len {
            let mut buf = std::mem::take(&mut bufs.cache);
            buf.resize(cache, 0);
            let (mut buf, r) = read_at(io, file, buf, 0..cache, offset).await;
            if r.is_err() {
                buf.clear();
            }
            bufs.cache = buf;
            bufs.cache_start = offset;
            r?;
            let src = bufs.cached(offset, len).ok_or_else(short)?;
            tx[4..4 + len].copy_from_slice(src);
            return Ok(());
        }
        // No room in the budget (or nothing to gain): this block alone, straight into `tx`.
        let buf = std::mem::take(tx);
        let (buf, r) = read_at(io, file, buf, 4..4 + len, offset).await;
        *tx = buf;
        r
    }
}

/// Open a file a provider named; it must be a regular file of exactly `size` bytes.
fn open_provided(path: &Path, size: u64) -> Result<std::fs::File, (ErrorCode, &'static str)> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => (ErrorCode::FileNotFound, "file not found"),
        io::ErrorKind::PermissionDenied => (ErrorCode::AccessViolation, "access violation"),
        _ => {
            error!(path = %path.display(), error = %e, "cannot open provided TFTP file");
            (ErrorCode::NotDefined, "cannot open file")
        }
    })?;
    let meta = file
        .metadata()
        .map_err(|_| (ErrorCode::NotDefined, "cannot open file"))?;
    if !meta.is_file() {
        error!(path = %path.display(), "provided TFTP file is not a regular file; not serving it");
        return Err((ErrorCode::FileNotFound, "file not found"));
    }
    if meta.len() != size {
        error!(path = %path.display(), expected = size, actual = meta.len(),
               "provided TFTP file does not have the size it must have; not serving it");
        return Err((ErrorCode::NotDefined, "file size mismatch"));
    }
    Ok(file)
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
