//! The HTTP(S) front end: an axum router that renders the fleet's answers.
//!
//! Endpoints (see `docs/http.md`):
//! - `GET /boot.ipxe`: bootstrap script that chains to `/ipxe` with iPXE's own facts;
//! - `GET /ipxe?mac=&uuid=&serial=&arch=&platform=&hostname=&board=`: the per-machine script
//!   (what the request says is recorded as facts *observed by HTTP*: it can never change what
//!   the operator declared or the device attested);
//! - `GET|HEAD /artifacts/sha256/<hex>`: an artifact of a published image (Range, ETag);
//! - `GET|HEAD /boot/<name>`: a file of the boot-files directory (iPXE binaries, GRUB);
//! - loader files for loaders started by UEFI HTTP boot (`/grub/grub.cfg`, per-MAC GRUB and
//!   PXELINUX configurations, `/boot.scr.uimg`), the same answers TFTP gives
//!   (`tugboot_fleet::netboot`);
//! - `GET /metrics`: counters in the Prometheus text format.
//!
//! This shell decides nothing: the plan comes from [`tugboot_fleet::Fleet::plan`], the text
//! from `tugboot_fleet::render`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tugboot_firmware::{BlobStore, Sha256Digest};
use tugboot_fleet::conn::{ConnBudget, ConnPermit, ConnRefusal};
use tugboot_fleet::netboot::{self, Answer};
use tugboot_fleet::render::ipxe::{self, BaseUrl, ErrorAction};
use tugboot_fleet::{BootPlan, Live, NoBoot};

use crate::conn::FileSend;
use crate::files::{self, FileRequest, Streaming, not_found, plain};
use crate::query::{self, RawQuery};
use crate::tls::TlsListener;

/// Default size of one file read while streaming (one body frame).
pub const DEFAULT_CHUNK: usize = 256 << 10;
/// Smallest chunk accepted in [`HttpConfig::chunk_size`].
pub const MIN_CHUNK: usize = 16 << 10;
/// Largest chunk accepted in [`HttpConfig::chunk_size`].
pub const MAX_CHUNK: usize = 8 << 20;
/// Longest boot file name.
pub const MAX_BOOT_NAME: usize = 128;

/// Server settings.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Prefix of every URL written into scripts. `None`: built from the request's `Host` header
    /// and the listener's scheme.
    pub base_url: Option<BaseUrl>,
    /// Directory served under `/boot/` (iPXE binaries, GRUB images). `None`: `/boot/` is 404.
    pub boot_dir: Option<PathBuf>,
    /// Bytes per file read and body frame; clamped to [`MIN_CHUNK`]..=[`MAX_CHUNK`].
    pub chunk_size: usize,
    /// Seconds scripts wait before asking again after a failure.
    pub retry_secs: u32,
    /// What the script for a machine that no profile covers does.
    pub unknown_machine: ErrorAction,
    /// Most connections open at once; further ones are closed at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv6: one /64); further ones
    /// from it are closed at once (for HTTPS before the handshake).
    pub max_connections_per_peer: usize,
    /// How plain HTTP sends file bodies: `sendfile(2)`, or copied for clients on this host.
    pub file_send: FileSend,
}

/// Default [`HttpConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// Default [`HttpConfig::max_connections_per_peer`]: iPXE, GRUB and firmware use one or two
/// connections at a time; a host downloading several artifacts at once a few more.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 32;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            base_url: None,
            boot_dir: None,
            chunk_size: DEFAULT_CHUNK,
            retry_secs: 10,
            unknown_machine: ErrorAction::Retry { after_secs: 60 },
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            file_send: FileSend::default(),
        }
    }
}

/// Request and byte counters (monotonic, relaxed atomics).
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) scripts: AtomicU64,
    pub(crate) error_scripts: AtomicU64,
    pub(crate) loader_files: AtomicU64,
    pub(crate) artifact_requests: AtomicU64,
    pub(crate) boot_file_requests: AtomicU64,
    pub(crate) not_found: AtomicU64,
    pub(crate) not_modified: AtomicU64,
    pub(crate) partial: AtomicU64,
    pub(crate) body_bytes: AtomicU64,
    pub(crate) copied_body_bytes: AtomicU64,
    pub(crate) refused_global: AtomicU64,
    pub(crate) refused_per_peer: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub requests: u64,
    pub scripts: u64,
    pub error_scripts: u64,
    pub loader_files: u64,
    pub artifact_requests: u64,
    pub boot_file_requests: u64,
    pub not_found: u64,
    pub not_modified: u64,
    pub partial: u64,
    /// File bytes handed to the HTTP layer (sent or being sent).
    pub body_bytes: u64,
    /// Of those, bytes copied to clients on this host instead of sent with `sendfile(2)`
    /// ([`FileSend`](crate::FileSend)).
    pub copied_body_bytes: u64,
    /// Connections closed because the server held its most connections.
    pub refused_global: u64,
    /// Connections closed because their client address held its most connections.
    pub refused_per_peer: u64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            requests: g(&self.requests),
            scripts: g(&self.scripts),
            error_scripts: g(&self.error_scripts),
            loader_files: g(&self.loader_files),
            artifact_requests: g(&self.artifact_requests),
            boot_file_requests: g(&self.boot_file_requests),
            not_found: g(&self.not_found),
            not_modified: g(&self.not_modified),
            partial: g(&self.partial),
            body_bytes: g(&self.body_bytes),
            copied_body_bytes: g(&self.copied_body_bytes),
            refused_global: g(&self.refused_global),
            refused_per_peer: g(&self.refused_per_peer),
        }
    }
}

/// Appends Prometheus text-format lines (with their `# HELP` / `# TYPE`) to `/metrics`.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Told about every boot decided here (a script or a loader configuration served), e.g. to
/// record "who booted what, when" in the store. Called on the request path: it must not block
/// (hand the plan to a channel).
pub type BootObserver = Arc<dyn Fn(&BootPlan) + Send + Sync>;

/// Unix-seconds clock (tests pass their own).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
#[must_use]
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    })
}

#[derive(Default)]
struct Hooks {
    metrics: RwLock<Vec<MetricsSource>>,
    boots: RwLock<Vec<BootObserver>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn n<T>(v: &RwLock<Vec<T>>) -> usize {
            v.read().map_or(0, |v| v.len())
        }
        write!(
            f,
            "Hooks(metrics {}, boots {})",
            n(&self.metrics),
            n(&self.boots)
        )
    }
}

/// Shared state of the boot server: the blob store, the live fleet, counters.
pub struct BootServer {
    hooks: Hooks,
    blobs: BlobStore,
    live: Arc<Live>,
    config: HttpConfig,
    clock: Clock,
    streaming: Streaming,
    conns: Arc<ConnBudget>,
}

impl std::fmt::Debug for BootServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootServer")
            .field("config", &self.config)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

/// The scheme the router is reached by, for base URLs built from `Host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl BootServer {
    /// A server over `blobs` answering from `live`.
    #[must_use]
    pub fn new(blobs: BlobStore, live: Arc<Live>, config: HttpConfig) -> Arc<Self> {
        Self::with_clock(blobs, live, config, system_clock())
    }

    /// [`BootServer::new`] with a clock of the caller's.
    #[must_use]
    pub fn with_clock(
        blobs: BlobStore,
        live: Arc<Live>,
        config: HttpConfig,
        clock: Clock,
    ) -> Arc<Self> {
        let chunk = config.chunk_size.clamp(MIN_CHUNK, MAX_CHUNK);
        let conns = ConnBudget::new(config.max_connections, config.max_connections_per_peer);
        Arc::new(BootServer {
            conns,
            hooks: Hooks::default(),
            blobs,
            live,
            config,
            clock,
            streaming: Streaming {
                chunk,
                counters: Arc::default(),
                buffers: Arc::default(),
            },
        })
    }

    /// Adds a source of metrics served by `/metrics` after this server's own: one scrape
    /// target for everything the process runs.
    pub fn add_metrics(&self, source: MetricsSource) {
        self.hooks
            .metrics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Adds an observer of boots decided here.
    pub fn on_boot(&self, observer: BootObserver) {
        self.hooks
            .boots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(observer);
    }

    fn notify_boot(&self, plan: &BootPlan) {
        for o in self
            .hooks
            .boots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            o(plan);
        }
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.streaming.counters.snapshot()
    }

    /// The live fleet this server answers from.
    #[must_use]
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    pub(crate) fn counter(&self) -> &Counters {
        &self.streaming.counters
    }

    /// The connection budget shared by this server's HTTP and HTTPS listeners.
    #[must_use]
    pub fn conn_budget(&self) -> Arc<ConnBudget> {
        Arc::clone(&self.conns)
    }

    /// The router (plain HTTP scheme for `Host`-derived base URLs).
    pub fn router(self: &Arc<Self>) -> Router {
        self.router_for(Scheme::Http)
    }

    pub fn router_for(self: &Arc<Self>, scheme: Scheme) -> Router {
        Router::new()
            .route("/boot.ipxe", get(bootstrap))
            .route("/ipxe", get(script))
            .route("/artifacts/sha256/{digest}", get(artifact))
            .route("/boot/{name}", get(boot_file))
            .route("/metrics", get(metrics))
            .fallback(loader_file)
            .layer(middleware::from_fn_with_state(
                Arc::clone(self),
                count_requests,
            ))
            .layer(tower_http::trace::TraceLayer::new_for_http())
            .layer(Extension(scheme))
            .with_state(Arc::clone(self))
    }

    fn base_url(&self, headers: &HeaderMap, scheme: Scheme) -> Option<BaseUrl> {
        if let Some(b) = &self.config.base_url {
            return Some(b.clone());
        }
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let host_ok = !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !host_ok {
            return None;
        }
        let scheme = match scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        BaseUrl::parse(&format!("{scheme}://{host}")).ok()
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }
}

/// The client's address, for loader files asked for by address (stock GRUB's `grub.cfg`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// A connection admitted by the [`ConnBudget`]: the stream and its place in the budget, given
/// back when the connection is dropped.
#[derive(Debug)]
pub struct Admitted<T> {
    io: T,
    _permit: ConnPermit,
}

impl<T> Admitted<T> {
    pub(crate) fn new(io: T, permit: ConnPermit) -> Self {
        Self {
            io,
            _permit: permit,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Admitted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Admitted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Logs (at debug: a flood must not flood the log) and counts a connection closed by the
/// budget.
pub(crate) fn refused(counters: &Counters, peer: SocketAddr, why: ConnRefusal) {
    inc(match why {
        ConnRefusal::Global => &counters.refused_global,
        ConnRefusal::PerPeer => &counters.refused_per_peer,
    });
    tracing::debug!(%peer, cap = why.as_str(), "connection refused");
}

/// How long a client may take to send a request's headers (slow-header clients hold a task
/// and a socket each).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Serves plain HTTP until `shutdown` completes, then lets requests in flight finish. File
/// bodies go out with `sendfile(2)` (see `conn.rs`).
pub async fn serve(
    listener: TcpListener,
    server: Arc<BootServer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = server.router_for(Scheme::Http);
    crate::conn::serve_plain(
        listener,
        router,
        server.conn_budget(),
        server.counter(),
        server.config.file_send,
        shutdown,
    )
    .await
}

/// Serves HTTPS with `tls` until `shutdown` completes, then lets requests in flight finish.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: Arc<BootServer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = server.router_for(Scheme::Https);
    let budget = server.conn_budget();
    serve_connections(
        TlsListener::new(listener, tls, budget, server)?,
        router,
        shutdown,
    )
    .await
}

/// The HTTP/1.1 connection loop. Not `axum::serve`, for two settings it does not offer:
/// - header names go out in Title-Case (`Content-Length`): GRUB's HTTP client matches
///   `Content-Length: ` byte for byte; without it GRUB does not know a file's size, waits ~30 s
///   for the connection to close and cannot load a kernel at all;
/// - a deadline for the request headers ([`HEADER_READ_TIMEOUT`]).
///
/// Each request carries the peer's address (`ConnectInfo<PeerAddr>`).
async fn serve_connections<L>(
    mut listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use tower::ServiceExt as _;
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .title_case_headers(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let service = router
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
                req
            });
        let conn = http1.serve_connection(
            hyper_util::rt::TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    // Idle keep-alive connections close now; requests in flight finish.
    graceful.shutdown().await;
    Ok(())
}

async fn count_requests(State(s): State<Arc<BootServer>>, req: Request, next: Next) -> Response {
    inc(&s.counter().requests);
    let resp = next.run(req).await;
    match resp.status() {
        StatusCode::NOT_FOUND => inc(&s.counter().not_found),
        StatusCode::NOT_MODIFIED => inc(&s.counter().not_modified),
        StatusCode::PARTIAL_CONTENT => inc(&s.counter().partial),
        _ => {}
    }
    resp
}

fn text_response(status: StatusCode, text: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

async fn bootstrap(
    State(s): State<Arc<BootServer>>,
    Extension(scheme): Extension<Scheme>,
    headers: HeaderMap,
) -> Response {
    inc(&s.counter().scripts);
    match s.base_url(&headers, scheme) {
        Some(base) => text_response(
            StatusCode::OK,
            ipxe::render_chain(&base, s.config.retry_secs),
        ),
        None => plain(StatusCode::BAD_REQUEST, "missing or invalid Host header\n"),
    }
}

/// The per-machine script. Problems the machine's console should show (no profile, image not
/// published) are 200 with an error script, which iPXE runs; malformed facts are 400 (iPXE does
/// not run the body then, but logs and curl show it).
async fn script(
    State(s): State<Arc<BootServer>>,
    Extension(scheme): Extension<Scheme>,
    headers: HeaderMap,
    Query(raw): Query<RawQuery>,
) -> Response {
    inc(&s.counter().scripts);
    let Some(base) = s.base_url(&headers, scheme) else {
        return plain(StatusCode::BAD_REQUEST, "missing or invalid Host header\n");
    };
    let now = s.now();
    let req = match query::parse(&raw, now) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "bad facts in script request");
            inc(&s.counter().error_scripts);
            return text_response(
                StatusCode::BAD_REQUEST,
                ipxe::render_error(&base, &e.to_string(), ErrorAction::Exit),
            );
        }
    };
    if let Some(mac) = req.mac {
        s.live.observe(mac, &req.facts, now);
    }
    let plan = s
        .live
        .plan(req.mac, req.uuid, req.serial.as_deref(), &req.facts, now);
    log_plan(&plan, "ipxe", "/ipxe");
    match &plan {
        Ok(p) => s.notify_boot(p),
        Err(_) => inc(&s.counter().error_scripts),
    }
    text_response(
        StatusCode::OK,
        ipxe::render_plan(&base, &plan, s.config.retry_secs, s.config.unknown_machine),
    )
}

fn log_plan(plan: &Result<BootPlan, NoBoot>, what: &'static str, path: &str) {
    match plan {
        Ok(p) => tracing::info!(what, path, plan = %p.comment(), via = ?p.via, "boot"),
        Err(e) => tracing::warn!(what, path, reason = %e, "cannot boot"),
    }
}

async fn artifact(
    State(s): State<Arc<BootServer>>,
    Path(digest): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    inc(&s.counter().artifact_requests);
    let Ok(digest) = digest.parse::<Sha256Digest>() else {
        return not_found();
    };
    let Some(size) = s.live.snapshot().catalogue.artifact_size(&digest) else {
        tracing::debug!(%digest, "artifact not published");
        return not_found();
    };
    serve_artifact(&s, digest, size, &method, &headers).await
}

async fn serve_artifact(
    s: &BootServer,
    digest: Sha256Digest,
    size: u64,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let file = FileRequest {
        path: s.blobs.path(&digest),
        expected_len: Some(size),
        etag: Some(digest.to_hex()),
        immutable: true,
    };
    files::serve_file(&s.streaming, file, method, headers).await
}

/// Boot file names: one path component of `[A-Za-z0-9._-]`, not starting with a dot.
fn boot_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_BOOT_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

async fn boot_file(
    State(s): State<Arc<BootServer>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    inc(&s.counter().boot_file_requests);
    let Some(dir) = &s.config.boot_dir else {
        return not_found();
    };
    if !boot_name_ok(&name) {
        tracing::debug!(name = %name.escape_debug(), "refused boot file name");
        return not_found();
    }
    let file = FileRequest {
        path: dir.join(&name),
        expected_len: None,
        etag: None,
        immutable: false,
    };
    files::serve_file(&s.streaming, file, &method, &headers).await
}

/// GRUB, PXELINUX and U-Boot files for loaders that came over HTTP (UEFI HTTP boot): the same
/// answers as over TFTP. A Raspberry Pi's firmware files are TFTP only.
async fn loader_file(State(s): State<Arc<BootServer>>, req: Request) -> Response {
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return not_found();
    }
    let Some(file) = netboot::classify(req.uri().path()) else {
        return not_found();
    };
    let headers = req.headers().clone();
    let req_path = req.uri().path().to_owned();
    let peer = req
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(PeerAddr(a))| *a);
    inc(&s.counter().loader_files);
    let fleet = s.live.snapshot();
    let now = s.now();
    let peer = peer.and_then(|a| match a.ip() {
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    });
    let (answer, plan) = s.live.with_observations_read(|observations| {
        netboot::answer(
            &fleet,
            &netboot::Context {
                observations,
                peer,
                now,
                retry_secs: s.config.retry_secs,
            },
            &file,
        )
    });
    if let Some(plan) = &plan {
        log_plan(plan, "loader file over http", req_path.as_str());
        if let Ok(p) = plan {
            s.notify_boot(p);
        }
    }
    match answer {
        Answer::Text(text) => text_response(StatusCode::OK, text),
        Answer::Bytes(bytes) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        Answer::Artifact { digest, size } => {
            serve_artifact(&s, digest, size, &method, &headers).await
        }
        Answer::Firmware(_) | Answer::NotFound => not_found(),
    }
}

async fn metrics(State(s): State<Arc<BootServer>>) -> Response {
    let c = s.counters();
    let fleet = s.live.snapshot();
    let mut out = String::new();
    for (name, help, v) in [
        ("requests", "HTTP requests", c.requests),
        ("scripts", "iPXE scripts rendered", c.scripts),
        (
            "error_scripts",
            "iPXE error scripts rendered",
            c.error_scripts,
        ),
        (
            "loader_files",
            "GRUB/PXELINUX/U-Boot files requested over HTTP",
            c.loader_files,
        ),
        (
            "artifact_requests",
            "artifact requests",
            c.artifact_requests,
        ),
        (
            "boot_file_requests",
            "boot file requests",
            c.boot_file_requests,
        ),
        ("not_found", "404 responses", c.not_found),
        ("not_modified", "304 responses", c.not_modified),
        ("partial", "206 responses", c.partial),
        ("body_bytes", "file bytes sent", c.body_bytes),
        (
            "copied_body_bytes",
            "file bytes copied to clients on this host rather than sent with sendfile",
            c.copied_body_bytes,
        ),
        (
            "refused_global",
            "connections closed at the global connection cap",
            c.refused_global,
        ),
        (
            "refused_per_peer",
            "connections closed at the per-address connection cap",
            c.refused_per_peer,
        ),
    ] {
        out.push_str(&format!(
            "# HELP tugboot_http_{name}_total {help}\n# TYPE tugboot_http_{name}_total counter\ntugboot_http_{name}_total {v}\n"
        ));
    }
    for (name, help, v) in [
        (
            "published_images",
            "images in the catalogue",
            fleet.catalogue.len(),
        ),
        ("machines", "machines in the registry", fleet.registry.len()),
    ] {
        out.push_str(&format!(
            "# HELP tugboot_fleet_{name} {help}\n# TYPE tugboot_fleet_{name} gauge\ntugboot_fleet_{name} {v}\n"
        ));
    }
    for source in s
        .hooks
        .metrics
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        source(&mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_names() {
        for ok in ["snponly.efi", "undionly.kpxe", "ipxe-arm64.efi", "a"] {
            assert!(boot_name_ok(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "a\\b",
            "a b",
            "%2e%2e",
            "a\0",
            &"a".repeat(129),
        ] {
            assert!(!boot_name_ok(bad), "{bad:?}");
        }
    }
}
