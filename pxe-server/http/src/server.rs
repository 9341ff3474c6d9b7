//! The HTTP(S) shell: an axum router over the pure parts (profiles, scripts, ranges) and the
//! blob store.
//!
//! Endpoints (see `docs/http.md`):
//! - `GET /boot.ipxe`: bootstrap script that chains to `/ipxe` with iPXE's own facts;
//! - `GET /ipxe?mac=&uuid=&serial=&arch=&board=&hostname=`: the per-machine script;
//! - `GET|HEAD /artifacts/sha256/<hex>`: an artifact of a published image (Range, ETag);
//! - `GET|HEAD /boot/<name>`: a file of the boot-files directory (iPXE binaries);
//! - `GET /metrics`: counters in the Prometheus text format.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tugboot_boards::Catalog;
use tugboot_firmware::{BlobStore, Role, Sha256Digest, Timestamp, TrustedRoot};

use crate::ipxe::{self, BaseUrl, BootScript, ErrorAction, KernelCmdline};
use crate::profiles::{Facts, ProfileSet, RawFacts, Resolution, Template, Via};
use crate::published::{self, BlobCheck, PublishError, Published, PublishedImage};
use crate::range::{self, RangeDecision};
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
    /// Directory served under `/boot/` (iPXE binaries). `None`: `/boot/` answers 404.
    pub boot_dir: Option<PathBuf>,
    /// Bytes per file read and body frame; clamped to [`MIN_CHUNK`]..=[`MAX_CHUNK`].
    pub chunk_size: usize,
    /// Seconds scripts wait before asking again after a failure.
    pub retry_secs: u32,
    /// What the script for a machine that no profile covers does.
    pub unknown_machine: ErrorAction,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            base_url: None,
            boot_dir: None,
            chunk_size: DEFAULT_CHUNK,
            retry_secs: 10,
            unknown_machine: ErrorAction::Retry { after_secs: 60 },
        }
    }
}

/// Request and byte counters (monotonic, relaxed atomics).
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    scripts: AtomicU64,
    error_scripts: AtomicU64,
    artifact_requests: AtomicU64,
    boot_file_requests: AtomicU64,
    not_found: AtomicU64,
    not_modified: AtomicU64,
    partial: AtomicU64,
    body_bytes: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub requests: u64,
    pub scripts: u64,
    pub error_scripts: u64,
    pub artifact_requests: u64,
    pub boot_file_requests: u64,
    pub not_found: u64,
    pub not_modified: u64,
    pub partial: u64,
    /// File bytes handed to the HTTP layer (sent or being sent).
    pub body_bytes: u64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            requests: g(&self.requests),
            scripts: g(&self.scripts),
            error_scripts: g(&self.error_scripts),
            artifact_requests: g(&self.artifact_requests),
            boot_file_requests: g(&self.boot_file_requests),
            not_found: g(&self.not_found),
            not_modified: g(&self.not_modified),
            partial: g(&self.partial),
            body_bytes: g(&self.body_bytes),
        }
    }
}

/// Shared state of the boot server: blob store, published images, profiles, counters.
#[derive(Debug)]
pub struct BootServer {
    /// Other parts of the process (DHCP, TFTP) that append their metrics to `/metrics`.
    extra_metrics: ExtraMetrics,
    boot_observers: BootObservers,
    store: BlobStore,
    published: RwLock<Published>,
    profiles: RwLock<Arc<ProfileSet>>,
    catalog: Option<Catalog>,
    config: HttpConfig,
    counters: Arc<Counters>,
    buffers: Arc<BufPool>,
}

/// Appends Prometheus text-format lines (with their `# HELP` / `# TYPE`) to `/metrics`.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// A machine was handed a boot script: who, and what it will boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootRecord {
    pub mac: Option<crate::profiles::Mac>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub board: Option<String>,
    pub profile: String,
    /// `name@version` of the image, or `local` for a boot from the local disk.
    pub image: String,
}

/// Told about every boot script served (e.g. to record "who booted what, when" in the store).
/// Called on the request path: it must not block (hand the record to a channel).
pub type BootObserver = Arc<dyn Fn(BootRecord) + Send + Sync>;

#[derive(Default)]
struct ExtraMetrics(RwLock<Vec<MetricsSource>>);

#[derive(Default)]
struct BootObservers(RwLock<Vec<BootObserver>>);

impl std::fmt::Debug for BootObservers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map_or(0, |v| v.len());
        write!(f, "BootObservers({n})")
    }
}

impl std::fmt::Debug for ExtraMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map_or(0, |v| v.len());
        write!(f, "ExtraMetrics({n} sources)")
    }
}

/// The scheme the router is reached by, for base URLs built from `Host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl BootServer {
    /// Adds a source of metrics served by `/metrics` after this server's own: one scrape
    /// target for everything the process runs.
    pub fn add_metrics(&self, source: MetricsSource) {
        self.extra_metrics
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Adds an observer of served boot scripts.
    pub fn on_boot(&self, observer: BootObserver) {
        self.boot_observers
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(observer);
    }

    fn notify_boot(&self, record: &BootRecord) {
        for o in self
            .boot_observers
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            o(record.clone());
        }
    }

    pub fn new(store: BlobStore, profiles: ProfileSet, config: HttpConfig) -> Arc<Self> {
        Arc::new(BootServer {
            extra_metrics: ExtraMetrics::default(),
            boot_observers: BootObservers::default(),
            store,
            published: RwLock::new(Published::new()),
            profiles: RwLock::new(Arc::new(profiles)),
            catalog: None,
            config,
            counters: Arc::default(),
            buffers: Arc::default(),
        })
    }

    /// Like [`BootServer::new`], with a board catalog: a machine's board then adds its console
    /// arguments and board command line to the kernel command line.
    pub fn with_catalog(
        store: BlobStore,
        profiles: ProfileSet,
        catalog: Catalog,
        config: HttpConfig,
    ) -> Arc<Self> {
        Arc::new(BootServer {
            extra_metrics: ExtraMetrics::default(),
            boot_observers: BootObservers::default(),
            store,
            published: RwLock::new(Published::new()),
            profiles: RwLock::new(Arc::new(profiles)),
            catalog: Some(catalog),
            config,
            counters: Arc::default(),
            buffers: Arc::default(),
        })
    }

    /// Verifies and publishes an image (see [`published::publish`]). Hashing happens before the
    /// published set is locked, so serving goes on meanwhile. Blocking (it reads the blobs):
    /// call it from `tokio::task::spawn_blocking` inside a runtime.
    pub fn publish(
        &self,
        envelope: &[u8],
        root: &TrustedRoot,
        now: Timestamp,
        check: BlobCheck,
    ) -> Result<Arc<PublishedImage>, PublishError> {
        let (manifest, cmdline) = published::prepare(&self.store, envelope, root, now, check)?;
        let image = self
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(manifest, cmdline)?;
        tracing::info!(
            image = %image.manifest.name,
            version = image.manifest.version,
            manifest = %image.digest,
            "published"
        );
        Ok(image)
    }

    /// Replaces the profiles (e.g. after the file changed). Requests in flight keep the old set.
    pub fn set_profiles(&self, profiles: ProfileSet) {
        *self
            .profiles
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(profiles);
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
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
            .fallback(not_found)
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

    fn retry(&self) -> ErrorAction {
        ErrorAction::Retry {
            after_secs: self.config.retry_secs,
        }
    }
}

/// Serves plain HTTP until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    server: Arc<BootServer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = server.router_for(Scheme::Http);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
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
    let listener = TlsListener::new(listener, tls)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn count_requests(State(s): State<Arc<BootServer>>, req: Request, next: Next) -> Response {
    inc(&s.counters.requests);
    let resp = next.run(req).await;
    match resp.status() {
        StatusCode::NOT_FOUND => inc(&s.counters.not_found),
        StatusCode::NOT_MODIFIED => inc(&s.counters.not_modified),
        StatusCode::PARTIAL_CONTENT => inc(&s.counters.partial),
        _ => {}
    }
    resp
}

async fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn script_response(status: StatusCode, text: String) -> Response {
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
    inc(&s.counters.scripts);
    match s.base_url(&headers, scheme) {
        Some(base) => script_response(
            StatusCode::OK,
            ipxe::render_chain(&base, s.config.retry_secs),
        ),
        None => plain(StatusCode::BAD_REQUEST, "missing or invalid Host header\n"),
    }
}

async fn script(
    State(s): State<Arc<BootServer>>,
    Extension(scheme): Extension<Scheme>,
    headers: HeaderMap,
    Query(raw): Query<RawFacts>,
) -> Response {
    inc(&s.counters.scripts);
    let Some(base) = s.base_url(&headers, scheme) else {
        return plain(StatusCode::BAD_REQUEST, "missing or invalid Host header\n");
    };
    let (status, text, outcome) = machine_script(&s, &base, &raw);
    if outcome == Outcome::Error {
        inc(&s.counters.error_scripts);
    }
    script_response(status, text)
}

/// The script for one request and the status to send it with. Problems that the machine's
/// console should show (no profile, image not published) are 200 with an error script, which
/// iPXE runs; malformed facts are 400 (iPXE does not run the body then, but logs and curl do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Boot,
    Error,
}

fn machine_script(s: &BootServer, base: &BaseUrl, raw: &RawFacts) -> (StatusCode, String, Outcome) {
    let facts = match Facts::try_from(raw) {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(error = %e, "bad facts in script request");
            return (
                StatusCode::BAD_REQUEST,
                ipxe::render_error(base, &e.to_string(), ErrorAction::Exit),
                Outcome::Error,
            );
        }
    };
    let profiles = Arc::clone(&s.profiles.read().unwrap_or_else(PoisonError::into_inner));
    let who = describe(&facts);
    let Some(res) = profiles.resolve(&facts) else {
        tracing::info!(machine = %who, "no profile");
        return (
            StatusCode::OK,
            ipxe::render_error(
                base,
                &format!("no profile for this machine ({who})"),
                s.config.unknown_machine,
            ),
            Outcome::Error,
        );
    };
    let name = res.machine.map_or(who, |m| m.display_name());
    let via = match res.via {
        Via::Machine => String::from("machine"),
        Via::Group(g) => format!("group {g}"),
        Via::Default => String::from("default"),
    };
    let record = |image: String| BootRecord {
        mac: facts.mac,
        uuid: facts.uuid.map(|u| u.to_string()),
        serial: facts.serial.clone(),
        board: res.board.map(str::to_owned),
        profile: res.profile.name.clone(),
        image,
    };
    match res.profile.template {
        Template::Local => {
            tracing::info!(machine = %name, profile = %res.profile.name, %via, "local boot");
            s.notify_boot(&record(String::from("local")));
            (
                StatusCode::OK,
                ipxe::render_local(&format!("machine {name} profile {}", res.profile.name)),
                Outcome::Boot,
            )
        }
        Template::Linux => match linux_script(s, base, &res, &facts, &name) {
            Ok((text, image)) => {
                tracing::info!(machine = %name, profile = %res.profile.name, %via, %image, "boot script");
                s.notify_boot(&record(image));
                (StatusCode::OK, text, Outcome::Boot)
            }
            Err(reason) => {
                tracing::warn!(machine = %name, profile = %res.profile.name, %reason, "cannot boot");
                (
                    StatusCode::OK,
                    ipxe::render_error(base, &reason, s.retry()),
                    Outcome::Error,
                )
            }
        },
    }
}

fn describe(f: &Facts) -> String {
    let mut parts = Vec::new();
    if let Some(m) = f.mac {
        parts.push(format!("mac {m}"));
    }
    if let Some(u) = f.uuid {
        parts.push(format!("uuid {u}"));
    }
    if let Some(s) = &f.serial {
        parts.push(format!("serial {s}"));
    }
    if parts.is_empty() {
        parts.push(String::from("no identifiers"));
    }
    parts.join(" ")
}

fn linux_script(
    s: &BootServer,
    base: &BaseUrl,
    res: &Resolution<'_>,
    facts: &Facts,
    name: &str,
) -> Result<(String, String), String> {
    let Some(image_ref) = &res.profile.image else {
        return Err(format!("profile {} names no image", res.profile.name));
    };
    let image = s
        .published
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .image(image_ref)
        .cloned()
        .ok_or_else(|| format!("image {image_ref} is not published"))?;
    let m = &image.manifest;
    let kernel = image
        .artifact_digest(Role::Kernel)
        .ok_or_else(|| format!("image {} v{} has no kernel", m.name, m.version))?;
    let mut cmdline = KernelCmdline::default();
    if let Some(board) = res
        .board
        .and_then(|b| s.catalog.as_ref().and_then(|c| c.get(b)))
    {
        cmdline
            .append(&board.kernel.console_args())
            .map_err(|e| format!("board {} console: {e}", board.name))?;
        if let Some(extra) = &board.kernel.cmdline {
            cmdline
                .append(extra)
                .map_err(|e| format!("board {} cmdline: {e}", board.name))?;
        }
    }
    cmdline
        .append(image.cmdline.as_str())
        .map_err(|e| format!("image cmdline: {e}"))?;
    let profile_part = res
        .cmdline(facts)
        .map_err(|e| format!("profile {} cmdline: {e}", res.profile.name))?;
    cmdline
        .append(profile_part.as_str())
        .map_err(|e| format!("profile {} cmdline: {e}", res.profile.name))?;
    let text = ipxe::render_boot(
        base,
        &BootScript {
            kernel,
            initrd: image.artifact_digest(Role::Initrd),
            cmdline: &cmdline,
            comment: &format!(
                "machine {name} profile {} image {} v{}",
                res.profile.name, m.name, m.version
            ),
            retry_secs: s.config.retry_secs,
        },
    );
    Ok((text, format!("{}@{}", m.name, m.version)))
}

async fn artifact(
    State(s): State<Arc<BootServer>>,
    Path(digest): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    inc(&s.counters.artifact_requests);
    let Ok(digest) = digest.parse::<Sha256Digest>() else {
        return not_found().await;
    };
    let size = s
        .published
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .artifact_size(&digest);
    let Some(size) = size else {
        tracing::debug!(%digest, "artifact not published");
        return not_found().await;
    };
    let file = FileRequest {
        path: s.store.path(&digest),
        expected_len: Some(size),
        etag: Some(digest.to_hex()),
        immutable: true,
    };
    serve_file(&s, file, &method, &headers).await
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
    inc(&s.counters.boot_file_requests);
    let Some(dir) = &s.config.boot_dir else {
        return not_found().await;
    };
    if !boot_name_ok(&name) {
        tracing::debug!(name = %name.escape_debug(), "refused boot file name");
        return not_found().await;
    }
    let file = FileRequest {
        path: dir.join(&name),
        expected_len: None,
        etag: None,
        immutable: false,
    };
    serve_file(&s, file, &method, &headers).await
}

async fn metrics(State(s): State<Arc<BootServer>>) -> Response {
    let c = s.counters.snapshot();
    let published = s
        .published
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
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
    ] {
        out.push_str(&format!(
            "# HELP tugboot_http_{name}_total {help}\n# TYPE tugboot_http_{name}_total counter\ntugboot_http_{name}_total {v}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP tugboot_http_published_images published images\n# TYPE tugboot_http_published_images gauge\ntugboot_http_published_images {published}\n"
    ));
    for source in s
        .extra_metrics
        .0
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        source(&mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

struct FileRequest {
    path: PathBuf,
    /// The size the file must have (published artifacts); a mismatch is a 500, never served.
    expected_len: Option<u64>,
    /// Strong entity tag (opaque part, no quotes).
    etag: Option<String>,
    /// Content-addressed: cacheable forever.
    immutable: bool,
}

fn open_at(path: PathBuf) -> io::Result<(File, u64)> {
    let file = File::open(&path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not a regular file",
        ));
    }
    Ok((file, meta.len()))
}

async fn serve_file(
    s: &BootServer,
    req: FileRequest,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let path = req.path.clone();
    let opened = tokio::task::spawn_blocking(move || open_at(path)).await;
    let (file, len) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => return not_found().await,
        Ok(Err(e)) => {
            tracing::error!(path = %req.path.display(), error = %e, "cannot open");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n");
        }
        Err(e) => {
            tracing::error!(error = %e, "open task failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    if let Some(expected) = req.expected_len
        && expected != len
    {
        tracing::error!(
            path = %req.path.display(),
            expected,
            actual = len,
            "stored blob does not have its published size; not serving it"
        );
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored blob is damaged\n",
        );
    }

    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CACHE_CONTROL,
            if req.immutable {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            },
        );
    if let Some(tag) = &req.etag {
        builder = builder.header(header::ETAG, format!("\"{tag}\""));
        if let Some(inm) = headers.get(header::IF_NONE_MATCH)
            && range::if_none_match(inm.as_bytes(), tag)
        {
            return finish(builder.status(StatusCode::NOT_MODIFIED), Body::empty());
        }
    }
    let honour_range = match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => req
            .etag
            .as_deref()
            .is_some_and(|tag| range::if_range_matches(v.as_bytes(), tag)),
    };
    let range_header = headers
        .get(header::RANGE)
        .filter(|_| honour_range)
        .map(HeaderValue::as_bytes);
    let decision = range::decide_range(range_header, len);
    let (status, start) = match decision {
        RangeDecision::Full => (StatusCode::OK, 0),
        RangeDecision::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start)
        }
        RangeDecision::Unsatisfiable => {
            return finish(
                builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}")),
                Body::empty(),
            );
        }
    };
    let body_len = decision.body_len(len);
    let builder = builder
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, body_len);
    if method == Method::HEAD || body_len == 0 {
        return finish(builder, Body::empty());
    }
    let chunk = s.config.chunk_size.clamp(MIN_CHUNK, MAX_CHUNK);
    let body = file_body(
        file,
        start,
        body_len,
        chunk,
        Arc::clone(&s.counters),
        Arc::clone(&s.buffers),
    );
    finish(builder, body)
}

fn finish(builder: axum::http::response::Builder, body: Body) -> Response {
    builder.body(body).unwrap_or_else(|e| {
        tracing::error!(error = %e, "building response");
        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
    })
}

/// Read buffers handed back once the HTTP layer has written them. Reusing the most recently
/// freed buffer keeps it warm in the CPU cache and spares the page faults and zeroing of fresh
/// memory; measured in `docs/benchmarks.md`.
#[derive(Debug, Default)]
struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Most buffers kept for reuse (the rest are freed).
const POOLED_BUFFERS: usize = 64;

impl BufPool {
    fn take(&self, cap: usize) -> Vec<u8> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut buf = reused.unwrap_or_default();
        buf.clear();
        buf.reserve_exact(cap);
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < POOLED_BUFFERS {
            free.push(buf);
        }
    }
}

/// The owner of a body frame's memory: returns the buffer to the pool when hyper drops the frame.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

type ReadJob = JoinHandle<(File, io::Result<Vec<u8>>)>;

/// Starts reading the next `n` bytes of `file` (at its current position) on the blocking pool.
fn read_next(file: File, n: u64, seek_to: Option<u64>, pool: &Arc<BufPool>) -> ReadJob {
    let pool = Arc::clone(pool);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let result = (|| {
            if let Some(pos) = seek_to {
                file.seek(SeekFrom::Start(pos))?;
            }
            let mut buf = pool.take(usize::try_from(n).unwrap_or(usize::MAX));
            // File reads straight into the spare capacity: no zeroing pass.
            (&mut file).take(n).read_to_end(&mut buf)?;
            Ok(buf)
        })();
        (file, result)
    })
}

/// Streams `len` bytes from `start`, in `chunk`-sized frames, always one read ahead of the
/// network so disk and socket work overlap. A file that turns out shorter than expected ends the
/// body with an error, which aborts the connection: the client never mistakes it for the end.
fn file_body(
    file: File,
    start: u64,
    len: u64,
    chunk: usize,
    counters: Arc<Counters>,
    pool: Arc<BufPool>,
) -> Body {
    let chunk = u64::try_from(chunk).unwrap_or(u64::MAX);
    struct St {
        job: Option<ReadJob>,
        remaining: u64,
        chunk: u64,
        counters: Arc<Counters>,
        pool: Arc<BufPool>,
    }
    let first = len.min(chunk);
    let st = St {
        job: Some(read_next(file, first, Some(start), &pool)),
        remaining: len,
        chunk,
        counters,
        pool,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        let job = st.job.take()?;
        let want = st.remaining.min(st.chunk);
        let (file, result) = match job.await {
            Ok(x) => x,
            Err(e) => return Some((Err(io::Error::other(e)), st)),
        };
        let buf = match result {
            Ok(buf) if buf.len() as u64 == want => buf,
            Ok(buf) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ended early: read {} of {want} bytes", buf.len()),
                );
                tracing::error!(error = %e, "streaming file");
                return Some((Err(e), st));
            }
            Err(e) => {
                tracing::error!(error = %e, "streaming file");
                return Some((Err(e), st));
            }
        };
        st.remaining -= want;
        if st.remaining > 0 {
            st.job = Some(read_next(file, st.remaining.min(st.chunk), None, &st.pool));
        }
        st.counters.body_bytes.fetch_add(want, Ordering::Relaxed);
        let frame = Bytes::from_owner(Pooled {
            buf,
            pool: Arc::clone(&st.pool),
        });
        Some((Ok::<Bytes, io::Error>(frame), st))
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_buffers_return_to_the_pool() {
        let pool = Arc::new(BufPool::default());
        let mut buf = pool.take(1000);
        buf.extend_from_slice(b"abc");
        let ptr = buf.as_ptr();
        let frame = Bytes::from_owner(Pooled {
            buf,
            pool: Arc::clone(&pool),
        });
        let copy = frame.clone();
        drop(frame);
        assert_eq!(&copy[..], b"abc", "still owned by the other handle");
        assert!(pool.free.lock().unwrap().is_empty());
        drop(copy);
        let again = pool.take(10);
        assert_eq!(again.as_ptr(), ptr, "the freed buffer is reused");
        assert!(again.is_empty() && again.capacity() >= 1000);
        for _ in 0..POOLED_BUFFERS + 10 {
            pool.give(Vec::with_capacity(1));
        }
        assert_eq!(pool.free.lock().unwrap().len(), POOLED_BUFFERS);
    }

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
