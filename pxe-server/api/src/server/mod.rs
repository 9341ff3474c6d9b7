//! The device API server: axum behind rustls with client certificates.
//!
//! # One listener, identity per route
//!
//! One TLS listener serves everything. Its client-certificate verifier is rustls'
//! `WebPkiClientVerifier` with the tugboot CA as the **only** root and
//! `allow_unauthenticated()`: a client that presents a certificate must present one that
//! chains to the CA and is within its validity (otherwise the handshake fails), and a client
//! that presents none gets through the handshake with no identity. Each route then decides:
//!
//! - `/api/v1/device/...` and `/api/v1/devices/{id}/...` ([`device`]) need a verified device
//!   certificate (401 without one) whose serial is known to the store, not revoked, not expired,
//!   for a machine that is not revoked (403 otherwise). The device id comes **only** from the
//!   certificate's URI SAN; an id in the URL or body that differs is refused with 403.
//! - `/api/v1/enroll` needs no certificate (a device has none yet): a one-time token or a
//!   pre-authorised (approved) MAC.
//! - `/api/v1/admin/...` ([`admin`]) needs the operator's bearer token.
//! - `/metrics` and `/healthz` are open.
//!
//! Identity checks live in [`auth`], the accept loop in [`listener`], rollout evaluation (the
//! shell around `tugboot_fleet::rollout`) in [`rollouts`]. What is published, what machines
//! exist and what they are comes from the fleet core's [`Live`] snapshot, refreshed from the
//! store after every change made here.

mod admin;
mod auth;
mod device;
pub mod events;
mod listener;
pub mod operator;
mod rollouts;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, RwLock};
use tugboot_firmware::{BlobStore, Timestamp, TrustedRoot};
use tugboot_fleet::Live;
use tugboot_store::{AnyStore, StoreError};

use crate::ca::{CertAuthority, needs_renewal};
use crate::metrics::Metrics;
use crate::tokens::{OperatorToken, TokenError};
use crate::wire::WireError;

pub use auth::ConnInfo;
pub use rollouts::DEFAULT_OUTCOME_TIMEOUT;
/// Rollout group selectors are the fleet core's one grammar.
pub use tugboot_fleet::Selector;

/// Errors setting up or running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// TLS configuration failed (bad server key/certificate, verifier).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// Token storage failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Socket error.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] tugboot_firmware::BlobError),
}

/// Default [`ApiConfig::silent_after_secs`]: four of the agent's default status intervals
/// (900 s), so one lost report is not yet silence.
pub const DEFAULT_SILENT_AFTER_SECS: u64 = 3600;

/// Default [`ApiConfig::max_connections_per_peer`].
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 64;
/// Default [`ApiConfig::body_timeout`]: a 16 MiB upload chunk at 1 MiB/s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(20);

/// Default [`ApiConfig::max_pending_enrollments`].
pub const DEFAULT_MAX_PENDING_ENROLLMENTS: u64 = 1024;
/// Default [`ApiConfig::enroll_replay_window_secs`]: ten minutes.
pub const DEFAULT_ENROLL_REPLAY_WINDOW_SECS: u64 = 600;

/// Tunables of the API (see `docs/device-api.md`).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Validity of device certificates.
    pub device_cert_validity_secs: u64,
    /// Renewal is accepted in the last this-many seconds of a certificate's life.
    pub renew_before_secs: u64,
    /// How long a device admitted to a rollout stage may stay silent.
    pub report_timeout_secs: u64,
    /// A machine with a certificate whose last report is older than this is shown as silent
    /// (`tugboot machines show`).
    pub silent_after_secs: u64,
    /// Rollouts are re-evaluated at least this often (and after every outcome report and
    /// operator change).
    pub evaluate_interval: Duration,
    /// If set, assignments point artifact downloads at `{base}/{sha256}` (the HTTP server,
    /// which serves the same catalogue) instead of this API's `/api/v1/device/artifacts/{sha256}`.
    pub artifact_base_url: Option<String>,
    /// Most TLS connections served at once; further connections are closed at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv6: one /64); further ones
    /// from it are closed at once.
    pub max_connections_per_peer: usize,
    /// Time allowed for the TLS handshake and for request headers (also how long an idle
    /// keep-alive connection stays open).
    pub handshake_timeout: Duration,
    /// Time allowed for a request's body, from the end of its headers: a client that sends
    /// part of a body gets `408` and its connection is closed (its place released).
    pub body_timeout: Duration,
    /// Most machines that may wait for approval, created by token-less enrollment requests
    /// (further new MACs are refused with 503 and nothing is written).
    pub max_pending_enrollments: u64,
    /// A request repeating an issued enrollment (same MAC, same key) within this many seconds
    /// gets the same certificate again (a retry after a lost answer); later it is refused.
    pub enroll_replay_window_secs: u64,
    /// Lifetime of an enrollment token when the operator does not give one.
    pub token_ttl_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            device_cert_validity_secs: crate::ca::DEFAULT_DEVICE_VALIDITY_SECS,
            renew_before_secs: 30 * 24 * 3600,
            report_timeout_secs: DEFAULT_OUTCOME_TIMEOUT,
            silent_after_secs: DEFAULT_SILENT_AFTER_SECS,
            evaluate_interval: Duration::from_secs(30),
            artifact_base_url: None,
            max_connections: 16_384,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            handshake_timeout: Duration::from_secs(10),
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_pending_enrollments: DEFAULT_MAX_PENDING_ENROLLMENTS,
            enroll_replay_window_secs: DEFAULT_ENROLL_REPLAY_WINDOW_SECS,
            token_ttl_secs: crate::tokens::DEFAULT_TOKEN_TTL_SECS,
        }
    }
}

/// Unix-seconds clock; the shell's only time source (tests pass a settable one).
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

/// Everything the server needs, built by the caller (the `tugboot` binary or a test).
pub struct ApiParts {
    /// The fleet store.
    pub store: AnyStore,
    /// The live fleet (catalogue, registry) this server answers from and refreshes.
    pub live: Arc<Live>,
    /// The CA.
    pub ca: CertAuthority,
    /// The API state directory (a pre-v3 `enrollment-tokens.json` there is imported into the
    /// store once, when serving starts).
    pub state_dir: PathBuf,
    /// The operator's bearer token.
    pub operator: OperatorToken,
    /// Content-addressed artifacts.
    pub blobs: BlobStore,
    /// Root that published manifests must verify against.
    pub trusted_root: TrustedRoot,
    /// PEM of the server certificate (issued by the CA: [`CertAuthority::issue_server`]).
    pub server_cert_pem: String,
    /// PEM of its key.
    pub server_key_pem: String,
    /// Tunables.
    pub config: ApiConfig,
    /// Time source.
    pub clock: Clock,
}

impl std::fmt::Debug for ApiParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiParts")
            .field("state_dir", &self.state_dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Shared state of the handlers.
pub struct ApiState {
    store: AnyStore,
    live: Arc<Live>,
    ca: CertAuthority,
    state_dir: PathBuf,
    operator: OperatorToken,
    blobs: BlobStore,
    trusted_root: TrustedRoot,
    config: ApiConfig,
    clock: Clock,
    metrics: Metrics,
    assignments: RwLock<Arc<rollouts::Assignments>>,
    evaluating: Mutex<()>,
    events: events::Events,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    fn now(&self) -> i64 {
        (self.clock)()
    }

    fn timestamp(&self) -> Timestamp {
        Timestamp::from_unix(u64::try_from(self.now()).unwrap_or(0))
    }

    /// Rebuilds the live fleet's catalogue and registry from the store (after a publish, a
    /// yank, a label, an enrollment): every front end of this server sees the change at once.
    /// Other servers on the same PostgreSQL see it at their next periodic refresh.
    pub async fn refresh_fleet(&self) -> Result<(), StoreError> {
        let problems = tugboot_store::refresh_live(
            &self.live,
            &self.store,
            &self.blobs,
            &self.trusted_root,
            self.timestamp(),
        )
        .await?;
        for p in problems {
            tracing::warn!(image = %p.name, version = p.version, reason = %p.reason, "published image not served here");
        }
        Ok(())
    }

    async fn refresh_logged(&self) {
        if let Err(e) = self.refresh_fleet().await {
            tracing::error!(error = %e, "fleet refresh failed");
        }
    }
}

/// An error answer: status + JSON `{"error": ...}`.
#[derive(Debug)]
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for Reject {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::InvalidInput { .. } => Self(StatusCode::BAD_REQUEST, e.to_string()),
            StoreError::AlreadyExists { .. } | StoreError::ImageImmutable { .. } => {
                Self(StatusCode::CONFLICT, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "store error");
                Self(StatusCode::SERVICE_UNAVAILABLE, "store unavailable".into())
            }
        }
    }
}

impl From<operator::OperatorError> for Reject {
    fn from(e: operator::OperatorError) -> Self {
        use operator::OperatorError as E;
        match e {
            E::BadRequest(m) => Self(StatusCode::BAD_REQUEST, m),
            E::NotFound(m) => Self(StatusCode::NOT_FOUND, m),
            E::Conflict(m) => Self(StatusCode::CONFLICT, m),
            E::Store(e) => e.into(),
        }
    }
}

impl From<WireError> for Reject {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooLarge { .. } => Self(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            other => Self(StatusCode::BAD_REQUEST, other.to_string()),
        }
    }
}

type Answer = Result<Response, Reject>;

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(value)).into_response()
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_digest(s: &str) -> Result<tugboot_firmware::Sha256Digest, Reject> {
    if !is_sha256_hex(s) {
        return Err(Reject(
            StatusCode::BAD_REQUEST,
            "not a lowercase sha256 digest".into(),
        ));
    }
    s.parse()
        .map_err(|_| Reject(StatusCode::BAD_REQUEST, "not a sha256 digest".into()))
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn track(State(s): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    s.metrics.request(&route, resp.status().as_u16());
    resp
}

/// Largest request body the router accepts at all (a manifest, an upload chunk).
const MAX_BODY_BYTES: usize = admin::MAX_UPLOAD_CHUNK + 1;

/// Reads the whole request body within [`ApiConfig::body_timeout`] (and at most
/// [`MAX_BODY_BYTES`]) before any handler runs. A client that stops sending part way gets
/// `408` with `Connection: close`: the connection ends and its place in the connection budget
/// is free again, instead of being held by a handler waiting for bytes that never come.
async fn body_deadline(State(s): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(s.config.body_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|c| c.is::<http_body_util::LengthLimitError>());
            let status = if too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return close(Reject(status, format!("request body: {e}")).into_response());
        }
        Err(_) => {
            s.metrics.refusal("body_timeout");
            tracing::info!(path = %parts.uri.path(), "request body not received in time; closing");
            return close(
                Reject(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "request body not received within {} s",
                        s.config.body_timeout.as_secs()
                    ),
                )
                .into_response(),
            );
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

fn close(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// The routes (without TLS: requests reaching it without the TLS layer have no identity).
fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/device/assignment", get(device::assignment))
        .route("/api/v1/device/reports", post(device::report))
        .route("/api/v1/device/renew", post(device::renew))
        .route("/api/v1/device/manifests/{digest}", get(device::manifest))
        .route("/api/v1/device/artifacts/{digest}", get(device::artifact))
        .route(
            "/api/v1/devices/{id}/assignment",
            get(device::assignment_by_id),
        )
        .route("/api/v1/devices/{id}/reports", post(device::report_by_id))
        .route("/api/v1/enroll", post(device::enroll))
        .route("/api/v1/admin/machines", get(admin::machines))
        .route("/api/v1/admin/machines/{id}", get(admin::machine))
        .route(
            "/api/v1/admin/machines/{id}/facts",
            post(admin::machine_facts),
        )
        .route("/api/v1/admin/machines/{id}/approve", post(admin::approve))
        .route("/api/v1/admin/machines/{id}/revoke", post(admin::revoke))
        .route(
            "/api/v1/admin/certificates/{serial}/revoke",
            post(admin::revoke_cert),
        )
        .route(
            "/api/v1/admin/enrollment-tokens",
            get(admin::tokens).post(admin::new_token),
        )
        .route(
            "/api/v1/admin/rollouts",
            get(admin::rollouts).post(admin::create_rollout),
        )
        .route("/api/v1/admin/rollouts/{id}", get(admin::rollout))
        .route(
            "/api/v1/admin/rollouts/{id}/{action}",
            post(admin::rollout_command),
        )
        .route(
            "/api/v1/admin/images",
            get(admin::images).post(admin::publish),
        )
        .route("/api/v1/admin/images/{name}/{version}", get(admin::image))
        .route(
            "/api/v1/admin/images/{name}/{version}/{action}",
            post(admin::image_command),
        )
        .route(
            "/api/v1/admin/blobs/{digest}",
            get(admin::blob_status)
                .head(admin::blob_status)
                .patch(admin::blob_upload),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Builds the rustls server configuration: the CA as the only client root, client
/// certificates optional at the TLS layer (see the module documentation), HTTP/1.1.
///
/// # Errors
/// [`ApiError::Tls`].
pub fn tls_config(
    ca: &CertAuthority,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ServerConfig, ApiError> {
    let tls = |e: &dyn std::fmt::Display| ApiError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).map_err(|e| tls(&e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Loads the server certificate from `dir` (`server.pem`, `server.key`), or issues one for
/// `names` with `ca` and writes the pair ([`crate::ca::write_server_pair`]: temporary files
/// created with their final mode, fsync, rename) when there is none, when the two do not
/// belong together (a crash between the renames) or when it expires within
/// `renew_before_secs`.
///
/// # Errors
/// CA and file errors; [`crate::ca::CaError::KeyPermissions`] for a key file readable by group
/// or others.
pub fn load_or_issue_server_cert(
    dir: &Path,
    ca: &CertAuthority,
    names: &[String],
    now: i64,
    renew_before_secs: u64,
) -> Result<crate::ca::ServerCert, ApiError> {
    if let Some((pair, not_after)) = crate::ca::load_server_pair(dir)?
        && !needs_renewal(not_after, now, renew_before_secs)
    {
        return Ok(pair);
    }
    let issued = ca.issue_server(names, now, crate::ca::DEFAULT_SERVER_VALIDITY_SECS)?;
    crate::ca::write_server_pair(dir, &issued)?;
    Ok(issued)
}

/// The device API server.
#[derive(Debug)]
pub struct ApiServer {
    state: Arc<ApiState>,
    tls: Arc<rustls::ServerConfig>,
    /// Routes served beside the API's own on the same listener (the web console).
    extra: Router,
}

/// A running server (see [`ApiServer::spawn`]): stops when dropped.
#[derive(Debug)]
pub struct ServerHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Builds the server.
    ///
    /// # Errors
    /// TLS set-up errors.
    pub fn new(parts: ApiParts) -> Result<Self, ApiError> {
        Self::new_with_events(parts, events::Events::default())
    }

    /// [`ApiServer::new`] sending its rollout transitions and stored reports to `events`
    /// (which the caller also feeds with what its other front ends see).
    ///
    /// # Errors
    /// TLS set-up and token-file errors.
    pub fn new_with_events(parts: ApiParts, events: events::Events) -> Result<Self, ApiError> {
        let tls = tls_config(&parts.ca, &parts.server_cert_pem, &parts.server_key_pem)?;
        Ok(Self {
            state: Arc::new(ApiState {
                store: parts.store,
                ca: parts.ca,
                live: parts.live,
                state_dir: parts.state_dir,
                operator: parts.operator,
                blobs: parts.blobs,
                trusted_root: parts.trusted_root,
                config: parts.config,
                clock: parts.clock,
                metrics: Metrics::default(),
                assignments: RwLock::new(Arc::new(rollouts::Assignments::default())),
                evaluating: Mutex::new(()),
                events,
            }),
            tls: Arc::new(tls),
            extra: Router::new(),
        })
    }

    /// Serves `routes` on the API's listener too (same TLS, same connection limits; the
    /// routes do their own authentication).
    #[must_use]
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.extra = self.extra.merge(routes);
        self
    }

    /// The handlers' state (tests and the CLI call [`ApiState::evaluate_rollouts`]).
    #[must_use]
    pub fn state(&self) -> Arc<ApiState> {
        self.state.clone()
    }

    /// Serves on `listener` until the task is dropped or the listener fails. Also runs the
    /// periodic fleet refresh and rollout evaluation.
    ///
    /// # Errors
    /// Accept errors other than per-connection ones.
    pub async fn serve(self, listener: TcpListener) -> Result<(), ApiError> {
        listener::serve(self.state, self.tls, self.extra, listener).await
    }

    /// Binds `addr` and serves in a background task.
    ///
    /// # Errors
    /// Bind errors.
    pub async fn spawn(self, addr: SocketAddr) -> Result<ServerHandle, ApiError> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = self.serve(listener).await {
                tracing::error!(error = %e, "device API stopped");
            }
        });
        Ok(ServerHandle { addr, task })
    }
}
