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
//! - `/api/v1/device/...` and `/api/v1/devices/{id}/...` need a verified device certificate
//!   (401 without one) whose serial is known to the store, not revoked, not expired, for a
//!   machine that is not revoked (403 otherwise). The device id comes **only** from the
//!   certificate's URI SAN; an id in the URL or body that differs is refused with 403 and a log
//!   line.
//! - `/api/v1/enroll` needs no certificate (a device has none yet): a one-time token or a
//!   pre-authorised (approved) MAC.
//! - `/api/v1/admin/...` needs the operator's bearer token.
//! - `/metrics` and `/healthz` are open.
//!
//! One listener keeps deployment simple (one port to open, one name in the server
//! certificate); the cost is that the TLS layer alone does not keep unauthenticated clients
//! away from the routes, so every device handler starts with [`ApiState::authenticate`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, RwLock, Semaphore};
use tower::ServiceExt as _;
use tugboot_firmware::{BlobStore, Manifest, Policy, Signed, Timestamp, TrustedRoot};
use tugboot_store::{
    AnyStore, DeviceCert, Image, Machine, MachineId, MachineSighting, MachineState, NewRollout,
    Report, RolloutState, RolloutThresholds, Store, StoreError, WriteOutcome,
};

use crate::ca::{
    CertAuthority, PeerIdentity, check_csr, needs_renewal, parse_device_id, peer_identity,
};
use crate::metrics::Metrics;
use crate::rollout::{self, Command, Decision, DeviceOutcome, Facts, StageSummary};
use crate::tokens::{OperatorToken, TokenBook, TokenError};
use crate::wire::{
    Assignment, CreateRollout, DeviceReport, EnrollRequest, EnrollResponse, Outcome, RenewRequest,
    WireError,
};

/// Largest manifest envelope accepted by `POST /api/v1/admin/images`.
const MAX_PUBLISH_BYTES: usize = tugboot_firmware::MAX_MANIFEST_BYTES;
/// Reports read per device when looking for its rollout outcome.
const OUTCOME_LOOKBACK: u32 = 32;

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

/// Tunables of the API (see `docs/device-api.md`).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Validity of device certificates.
    pub device_cert_validity_secs: u64,
    /// Renewal is accepted in the last this-many seconds of a certificate's life.
    pub renew_before_secs: u64,
    /// How long a device admitted to a rollout stage may stay silent.
    pub report_timeout_secs: u64,
    /// Rollouts are re-evaluated at least this often (and after every outcome report and
    /// operator change).
    pub evaluate_interval: Duration,
    /// If set, assignments point artifact downloads at `{base}/{sha256}` (the HTTP server)
    /// instead of this API's `/api/v1/device/artifacts/{sha256}`.
    pub artifact_base_url: Option<String>,
    /// Most TLS connections served at once.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and for request headers.
    pub handshake_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            device_cert_validity_secs: crate::ca::DEFAULT_DEVICE_VALIDITY_SECS,
            renew_before_secs: 30 * 24 * 3600,
            report_timeout_secs: rollout::DEFAULT_REPORT_TIMEOUT_SECS,
            evaluate_interval: Duration::from_secs(30),
            artifact_base_url: None,
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
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
    /// The CA.
    pub ca: CertAuthority,
    /// Directory for the enrollment-token file.
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

/// A rollout's admitted devices and image, as of the last evaluation.
#[derive(Debug, Clone)]
struct ActiveRollout {
    id: i64,
    manifest_digest: String,
    manifest: Arc<Vec<u8>>,
    artifacts: Vec<String>,
    admitted: HashSet<MachineId>,
}

#[derive(Debug, Default)]
struct Assignments {
    /// Newest rollout first.
    rollouts: Vec<ActiveRollout>,
    summaries: HashMap<i64, StageSummary>,
}

/// Shared state of the handlers.
pub struct ApiState {
    store: AnyStore,
    ca: CertAuthority,
    tokens: Mutex<TokenBook>,
    operator: OperatorToken,
    blobs: BlobStore,
    trusted_root: TrustedRoot,
    config: ApiConfig,
    clock: Clock,
    metrics: Metrics,
    assignments: RwLock<Arc<Assignments>>,
    evaluating: Mutex<()>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What the TLS layer learned about the peer; inserted into every request of the connection.
#[derive(Debug, Clone)]
struct ConnInfo {
    remote: SocketAddr,
    /// `None`: no client certificate. `Some(Err)`: a CA-signed certificate without a usable
    /// device identity (e.g. the server's own certificate).
    identity: Option<Result<PeerIdentity, String>>,
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

impl From<WireError> for Reject {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooLarge { .. } => Self(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            other => Self(StatusCode::BAD_REQUEST, other.to_string()),
        }
    }
}

type Answer = Result<Response, Reject>;

/// A group selector: comma-separated `key=value` terms that must all match (`board` and
/// `profile` match the machine's fields, any other key a label); `*` or empty selects every
/// approved machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<(String, String)>,
}

impl Selector {
    /// Parses a selector.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for a term without `=` or with an empty key.
    pub fn parse(text: &str) -> Result<Self, WireError> {
        let text = text.trim();
        if text.is_empty() || text == "*" {
            return Ok(Self { terms: Vec::new() });
        }
        let mut terms = Vec::new();
        for term in text.split(',') {
            let (k, v) = term.split_once('=').ok_or_else(|| WireError::Invalid {
                field: "selector",
                reason: format!("term {term:?} is not key=value"),
            })?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(WireError::Invalid {
                    field: "selector",
                    reason: format!("term {term:?} has an empty key"),
                });
            }
            terms.push((k.to_owned(), v.to_owned()));
        }
        Ok(Self { terms })
    }

    /// Whether `m` belongs to the group.
    #[must_use]
    pub fn matches(&self, m: &Machine) -> bool {
        self.terms.iter().all(|(k, v)| match k.as_str() {
            "board" => m.board.as_deref() == Some(v.as_str()),
            "profile" => m.profile.as_deref() == Some(v.as_str()),
            label => m.labels.get(label) == Some(v),
        })
    }
}

/// Position of a device in a rollout: a hash of both ids, so each rollout samples the fleet
/// differently and adding machines does not reshuffle the ones already ordered.
fn rollout_order(rollout: i64, device: MachineId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(rollout.to_le_bytes());
    h.update(device.0.to_le_bytes());
    h.finalize().into()
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ApiState {
    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The device behind a request: its verified certificate must be known, unrevoked and
    /// unexpired, and its machine not revoked. Every refusal is logged and counted.
    async fn authenticate(&self, conn: Option<&ConnInfo>) -> Result<PeerIdentity, Reject> {
        let refuse = |reason: &'static str, status: StatusCode, detail: String| {
            self.metrics.refusal(reason);
            tracing::warn!(
                remote = ?conn.map(|c| c.remote),
                reason,
                %detail,
                "device request refused"
            );
            Reject(status, detail)
        };
        let Some(conn) = conn else {
            return Err(refuse(
                "no_tls",
                StatusCode::UNAUTHORIZED,
                "client certificate required".into(),
            ));
        };
        let id = match &conn.identity {
            None => {
                return Err(refuse(
                    "no_certificate",
                    StatusCode::UNAUTHORIZED,
                    "client certificate required".into(),
                ));
            }
            Some(Err(e)) => {
                return Err(refuse("no_identity", StatusCode::FORBIDDEN, e.clone()));
            }
            Some(Ok(id)) => id,
        };
        let now = self.now();
        let cert = self.store.get_device_cert(&id.serial).await?;
        let Some(cert) = cert else {
            return Err(refuse(
                "unknown_certificate",
                StatusCode::FORBIDDEN,
                format!("certificate {} is not on record", id.serial),
            ));
        };
        if cert.device != id.device {
            return Err(refuse(
                "certificate_mismatch",
                StatusCode::FORBIDDEN,
                format!("certificate {} is recorded for another device", id.serial),
            ));
        }
        if cert.revoked_at.is_some() {
            return Err(refuse(
                "revoked",
                StatusCode::FORBIDDEN,
                format!("certificate {} is revoked", id.serial),
            ));
        }
        if now > cert.not_after || now > id.not_after {
            return Err(refuse(
                "expired",
                StatusCode::FORBIDDEN,
                format!("certificate {} expired", id.serial),
            ));
        }
        match self.store.get_machine(id.device).await? {
            Some(m) if m.state != MachineState::Revoked => Ok(id.clone()),
            _ => Err(refuse(
                "machine_revoked",
                StatusCode::FORBIDDEN,
                format!("device {} is revoked or deleted", id.device),
            )),
        }
    }

    /// [`ApiState::authenticate`], and the id in the URL must be the certificate's.
    async fn authenticate_as(
        &self,
        conn: Option<&ConnInfo>,
        claimed: &str,
    ) -> Result<PeerIdentity, Reject> {
        let id = self.authenticate(conn).await?;
        let claimed_ok = parse_device_id(claimed).is_ok_and(|c| c == id.device);
        if !claimed_ok {
            self.metrics.refusal("impersonation");
            tracing::warn!(
                remote = ?conn.map(|c| c.remote),
                certificate_device = %id.device,
                claimed,
                "device request refused: URL names another device than the certificate"
            );
            return Err(Reject(
                StatusCode::FORBIDDEN,
                format!("certificate identifies device {}, not {claimed}", id.device),
            ));
        }
        Ok(id)
    }

    fn operator(&self, headers: &HeaderMap) -> Result<(), Reject> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(t) if self.operator.matches(t) => Ok(()),
            _ => {
                self.metrics.refusal("operator_token");
                tracing::warn!("operator request refused: missing or wrong bearer token");
                Err(Reject(
                    StatusCode::UNAUTHORIZED,
                    "operator bearer token required".into(),
                ))
            }
        }
    }

    async fn issue(
        &self,
        csr: &str,
        device: MachineId,
        now: i64,
    ) -> Result<EnrollResponse, Reject> {
        let cert = self
            .ca
            .issue_device(csr, device, now, self.config.device_cert_validity_secs)
            .map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))?;
        self.store
            .insert_device_cert(&DeviceCert {
                serial: cert.serial.clone(),
                device,
                issued_at: now,
                not_after: cert.not_after,
                revoked_at: None,
            })
            .await?;
        tracing::info!(%device, serial = %cert.serial, not_after = cert.not_after, "device certificate issued");
        Ok(EnrollResponse {
            status: "issued".into(),
            device_id: device.0,
            certificate: Some(cert.pem),
            ca: Some(self.ca.cert_pem().to_owned()),
            not_after: Some(cert.not_after),
        })
    }

    /// The outcomes of a rollout's group members: those the current stage admits are looked up,
    /// the rest are pending.
    async fn member_facts(
        &self,
        model: &rollout::Rollout,
        members: &[MachineId],
        record: &tugboot_store::Rollout,
    ) -> Result<Facts, StoreError> {
        let mut facts = Facts {
            members: vec![DeviceOutcome::Pending; members.len()],
        };
        let admitted = model.admitted(members.len());
        for (slot, device) in facts.members.iter_mut().zip(members).take(admitted) {
            *slot = self
                .device_outcome(*device, &record.image_name, record.image_version)
                .await?;
        }
        Ok(facts)
    }

    /// The latest outcome of `device` for image `name@version` among its recent reports.
    async fn device_outcome(
        &self,
        device: MachineId,
        name: &str,
        version: u64,
    ) -> Result<DeviceOutcome, StoreError> {
        for r in self.store.list_reports(device, OUTCOME_LOOKBACK).await? {
            let Some(o) = r
                .checks
                .get("outcome")
                .and_then(|o| serde_json::from_value::<Outcome>(o.clone()).ok())
            else {
                continue;
            };
            if o.image() != (name, version) {
                continue;
            }
            return Ok(match o {
                Outcome::Committed { .. } => DeviceOutcome::Committed { at: r.received_at },
                Outcome::RolledBack { .. } | Outcome::Failed { .. } => {
                    DeviceOutcome::Failed { at: r.received_at }
                }
                Outcome::Interrupted { .. } => DeviceOutcome::Pending,
            });
        }
        Ok(DeviceOutcome::Pending)
    }

    /// Evaluates every rollout, applies the decisions (compare-and-set), and rebuilds the
    /// assignment table. Serialised: one evaluation at a time per server.
    ///
    /// # Errors
    /// Store errors.
    pub async fn evaluate_rollouts(&self) -> Result<(), StoreError> {
        let _guard = self.evaluating.lock().await;
        let now = self.now();
        let machines: Vec<Machine> = self
            .store
            .list_machines()
            .await?
            .into_iter()
            .filter(|m| m.state == MachineState::Approved)
            .collect();
        let mut rollouts = self.store.list_rollouts().await?;
        rollouts.sort_by_key(|r| std::cmp::Reverse(r.id));
        let mut table = Assignments::default();
        for mut record in rollouts {
            if record.state == RolloutState::Aborted {
                continue;
            }
            let selector = match Selector::parse(&record.group_selector) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(rollout = %record.id, error = %e, "rollout selector does not parse; skipped");
                    continue;
                }
            };
            let Some(image) = self
                .store
                .get_image(&record.image_name, record.image_version)
                .await?
            else {
                continue;
            };
            let mut members: Vec<MachineId> = machines
                .iter()
                .filter(|m| selector.matches(m))
                .map(|m| m.id)
                .collect();
            members.sort_by_cached_key(|d| (rollout_order(record.id.0, *d), *d));
            // Each round applies one decision; a rollout can move several steps at once (start,
            // then advance through stages whose devices already committed).
            for _ in 0..=record.stages.len() + 1 {
                let model = rollout::Rollout::from_record(&record, self.config.report_timeout_secs);
                let facts = self.member_facts(&model, &members, &record).await?;
                let decision = model.evaluate(now, &facts);
                let Some(t) = model.transition(&decision) else {
                    break;
                };
                match self.store.transition_rollout(&t, now).await? {
                    Some(next) => {
                        if let Decision::Pause { reason } = &decision {
                            tracing::warn!(rollout = %record.id, %reason, "rollout paused");
                        } else {
                            tracing::info!(rollout = %record.id, ?decision, "rollout moved");
                        }
                        record = next;
                    }
                    None => {
                        // Another server moved it first: take its view.
                        if let Some(r) = self.store.get_rollout(record.id).await? {
                            record = r;
                        }
                        break;
                    }
                }
            }
            let model = rollout::Rollout::from_record(&record, self.config.report_timeout_secs);
            let facts = self.member_facts(&model, &members, &record).await?;
            let admitted_n = model.admitted(members.len());
            let summary = model.summary(now, &facts);
            self.metrics.rollout(
                record.id.0,
                record.state.as_str(),
                record.current_stage,
                summary,
            );
            table.summaries.insert(record.id.0, summary);
            if admitted_n == 0 {
                continue;
            }
            let artifacts = Signed::<Manifest>::from_bytes(&image.manifest)
                .map(|s| {
                    s.value()
                        .artifacts
                        .iter()
                        .map(|a| a.sha256.to_hex())
                        .collect()
                })
                .unwrap_or_default();
            table.rollouts.push(ActiveRollout {
                id: record.id.0,
                manifest_digest: image.manifest_digest.clone(),
                manifest: Arc::new(image.manifest.clone()),
                artifacts,
                admitted: members.iter().take(admitted_n).copied().collect(),
            });
        }
        *self.assignments.write().await = Arc::new(table);
        Ok(())
    }

    async fn evaluate_logged(&self) {
        if let Err(e) = self.evaluate_rollouts().await {
            tracing::error!(error = %e, "rollout evaluation failed");
        }
    }

    fn artifact_url(&self, digest: &str) -> String {
        match &self.config.artifact_base_url {
            Some(base) => format!("{}/{digest}", base.trim_end_matches('/')),
            None => format!("/api/v1/device/artifacts/{digest}"),
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(value)).into_response()
}

// ---------------------------------------------------------------- device routes

async fn device_assignment(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Answer {
    let id = s.authenticate(conn.as_deref()).await?;
    assignment_for(&s, id.device).await
}

async fn device_assignment_by_id(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    UrlPath(claimed): UrlPath<String>,
) -> Answer {
    let id = s.authenticate_as(conn.as_deref(), &claimed).await?;
    assignment_for(&s, id.device).await
}

async fn assignment_for(s: &ApiState, device: MachineId) -> Answer {
    let table = s.assignments.read().await.clone();
    let Some(r) = table.rollouts.iter().find(|r| r.admitted.contains(&device)) else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let a = Assignment {
        manifest_url: format!("/api/v1/device/manifests/{}", r.manifest_digest),
        artifacts: r
            .artifacts
            .iter()
            .map(|d| (d.clone(), s.artifact_url(d)))
            .collect::<BTreeMap<_, _>>(),
        rollout: Some(r.id),
    };
    Ok(json(StatusCode::OK, &a))
}

async fn device_manifest(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    UrlPath(digest): UrlPath<String>,
) -> Answer {
    s.authenticate(conn.as_deref()).await?;
    let table = s.assignments.read().await.clone();
    let Some(r) = table.rollouts.iter().find(|r| r.manifest_digest == digest) else {
        return Err(Reject(StatusCode::NOT_FOUND, "no such manifest".into()));
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(r.manifest.as_ref().clone()),
    )
        .into_response())
}

async fn device_artifact(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    UrlPath(digest): UrlPath<String>,
    req: Request,
) -> Answer {
    s.authenticate(conn.as_deref()).await?;
    if !is_sha256_hex(&digest) {
        return Err(Reject(
            StatusCode::BAD_REQUEST,
            "not a sha256 digest".into(),
        ));
    }
    let mut raw = [0u8; 32];
    hex::decode_to_slice(&digest, &mut raw)
        .map_err(|_| Reject(StatusCode::BAD_REQUEST, "not a sha256 digest".into()))?;
    let path = s.blobs.path(&tugboot_firmware::Sha256Digest(raw));
    // tower-http's ServeFile answers Range requests (206 / 416) and sets Last-Modified.
    let resp = tower_http::services::ServeFile::new(path)
        .oneshot(req)
        .await
        .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut resp = resp.map(Body::new);
    if resp.status().is_success() {
        resp.headers_mut().insert(
            header::ETAG,
            header::HeaderValue::from_str(&format!("\"{digest}\""))
                .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        );
    }
    Ok(resp)
}

async fn device_report(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    body: Bytes,
) -> Answer {
    let id = s.authenticate(conn.as_deref()).await?;
    store_report(&s, &id, &body).await
}

async fn device_report_by_id(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    UrlPath(claimed): UrlPath<String>,
    body: Bytes,
) -> Answer {
    let id = s.authenticate_as(conn.as_deref(), &claimed).await?;
    store_report(&s, &id, &body).await
}

/// Stores the report durably and only then answers 200: an acknowledged report survives a
/// crash. A retried report (same id) answers 200 with `"duplicate": true`.
async fn store_report(s: &ApiState, id: &PeerIdentity, body: &[u8]) -> Answer {
    let report = DeviceReport::parse(body)?;
    if let Some(claimed) = report.device_id
        && claimed != id.device.0
    {
        s.metrics.refusal("impersonation");
        tracing::warn!(certificate_device = %id.device, claimed, "report refused: body names another device");
        return Err(Reject(
            StatusCode::FORBIDDEN,
            format!("certificate identifies device {}, not {claimed}", id.device),
        ));
    }
    let now = s.now();
    let checks = serde_json::to_value(&report)
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let outcome = report.outcome.clone();
    let stored = s
        .store
        .insert_report(&Report {
            device: id.device,
            report_id: report.id.clone(),
            boot_id: report.boot_id.clone(),
            slot: report.running_slot(),
            image_version: report.running_version(),
            checks,
            uptime_secs: report.uptime_secs.unwrap_or(0),
            last_error: report.last_error.clone(),
            received_at: now,
        })
        .await?;
    let duplicate = stored == WriteOutcome::AlreadyPresent;
    s.metrics
        .report(if duplicate { "duplicate" } else { "stored" });
    if let Some(o) = &outcome
        && !duplicate
    {
        let (name, version) = o.image();
        tracing::info!(device = %id.device, outcome = o.kind(), image = %name, version, "update outcome reported");
        if matches!(o, Outcome::Committed { .. }) {
            s.store
                .record_boot(id.device, &format!("{name}@{version}"), now)
                .await?;
        }
        s.evaluate_logged().await;
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": report.id, "duplicate": duplicate }),
    ))
}

async fn device_renew(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    body: Bytes,
) -> Answer {
    let id = s.authenticate(conn.as_deref()).await?;
    if body.len() > crate::wire::MAX_ENROLL_BYTES {
        return Err(WireError::TooLarge {
            size: body.len(),
            limit: crate::wire::MAX_ENROLL_BYTES,
        }
        .into());
    }
    let req: RenewRequest = serde_json::from_slice(&body)
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("malformed body: {e}")))?;
    let now = s.now();
    if !needs_renewal(id.not_after, now, s.config.renew_before_secs) {
        return Err(Reject(
            StatusCode::CONFLICT,
            format!(
                "certificate valid until {}; renew within {}s of expiry",
                id.not_after, s.config.renew_before_secs
            ),
        ));
    }
    let resp = s.issue(&req.csr, id.device, now).await?;
    s.metrics.enrollment("renewed");
    Ok(json(StatusCode::OK, &resp))
}

// ---------------------------------------------------------------- enrollment

async fn enroll(State(s): State<Arc<ApiState>>, body: Bytes) -> Answer {
    let req = EnrollRequest::parse(&body)?;
    let mac = req
        .mac
        .parse()
        .map_err(|_| Reject(StatusCode::BAD_REQUEST, "mac: not a MAC address".into()))?;
    check_csr(&req.csr).map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let now = s.now();
    let machine = s
        .store
        .record_sighting(
            &MachineSighting {
                mac,
                smbios_uuid: None,
                serial: req.serial.clone(),
                board: None,
            },
            now,
        )
        .await?;
    if machine.state == MachineState::Revoked {
        s.metrics.enrollment("refused");
        tracing::warn!(device = %machine.id, %mac, "enrollment refused: machine is revoked");
        return Err(Reject(StatusCode::FORBIDDEN, "machine is revoked".into()));
    }
    if let Some(token) = &req.token {
        // The token is spent (durably) before the certificate exists: never twice.
        let spent = s.tokens.lock().await.consume(token, machine.id, now);
        match spent {
            Ok(()) => {}
            Err(e @ (TokenError::Unknown | TokenError::Used)) => {
                s.metrics.enrollment("refused");
                tracing::warn!(device = %machine.id, %mac, error = %e, "enrollment refused");
                return Err(Reject(StatusCode::FORBIDDEN, e.to_string()));
            }
            Err(e) => {
                tracing::error!(error = %e, "enrollment token storage failed");
                return Err(Reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "token storage unavailable".into(),
                ));
            }
        }
        if machine.state != MachineState::Approved {
            s.store
                .set_machine_state(machine.id, MachineState::Approved)
                .await?;
        }
        let resp = s.issue(&req.csr, machine.id, now).await?;
        s.metrics.enrollment("issued");
        s.evaluate_logged().await;
        return Ok(json(StatusCode::OK, &resp));
    }
    if machine.state != MachineState::Approved {
        s.metrics.enrollment("pending");
        tracing::info!(device = %machine.id, %mac, "enrollment pending operator approval");
        return Ok(json(
            StatusCode::ACCEPTED,
            &EnrollResponse {
                status: "pending".into(),
                device_id: machine.id.0,
                certificate: None,
                ca: None,
                not_after: None,
            },
        ));
    }
    // Pre-authorised by MAC: once only. A device that holds a valid certificate renews over
    // mutual TLS; a second enrollment by MAC alone would let anyone who learns the MAC
    // obtain an identity.
    let certs = s.store.list_device_certs(machine.id).await?;
    if certs.iter().any(|c| c.is_valid_at(now)) {
        s.metrics.enrollment("refused");
        tracing::warn!(device = %machine.id, %mac, "enrollment refused: device already holds a valid certificate");
        return Err(Reject(
            StatusCode::CONFLICT,
            "device already enrolled; renew over mutual TLS or ask the operator to revoke".into(),
        ));
    }
    let resp = s.issue(&req.csr, machine.id, now).await?;
    s.metrics.enrollment("issued");
    Ok(json(StatusCode::OK, &resp))
}

// ---------------------------------------------------------------- operator routes

#[derive(Serialize)]
struct MachineView {
    id: i64,
    mac: String,
    serial: Option<String>,
    board: Option<String>,
    profile: Option<String>,
    labels: BTreeMap<String, String>,
    state: &'static str,
    first_seen: i64,
    last_seen: i64,
    last_booted_image: Option<String>,
}

impl From<&Machine> for MachineView {
    fn from(m: &Machine) -> Self {
        Self {
            id: m.id.0,
            mac: m.mac.to_string(),
            serial: m.serial.clone(),
            board: m.board.clone(),
            profile: m.profile.clone(),
            labels: m.labels.clone(),
            state: m.state.as_str(),
            first_seen: m.first_seen,
            last_seen: m.last_seen,
            last_booted_image: m.last_booted_image.clone(),
        }
    }
}

fn machine_id(text: &str) -> Result<MachineId, Reject> {
    parse_device_id(text).map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn admin_machines(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Answer {
    s.operator(&headers)?;
    let list: Vec<MachineView> = s
        .store
        .list_machines()
        .await?
        .iter()
        .map(MachineView::from)
        .collect();
    Ok(json(StatusCode::OK, &list))
}

async fn admin_machine(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Answer {
    s.operator(&headers)?;
    let id = machine_id(&id)?;
    let m = s
        .store
        .get_machine(id)
        .await?
        .ok_or_else(|| Reject(StatusCode::NOT_FOUND, "no such machine".into()))?;
    let certs: Vec<serde_json::Value> = s
        .store
        .list_device_certs(id)
        .await?
        .iter()
        .map(|c| serde_json::json!({"serial": c.serial, "issued_at": c.issued_at, "not_after": c.not_after, "revoked_at": c.revoked_at}))
        .collect();
    let reports: Vec<serde_json::Value> = s
        .store
        .list_reports(id, 10)
        .await?
        .into_iter()
        .map(|r| serde_json::json!({"id": r.report_id, "received_at": r.received_at, "report": r.checks}))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"machine": MachineView::from(&m), "certificates": certs, "reports": reports}),
    ))
}

async fn admin_approve(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Answer {
    s.operator(&headers)?;
    let id = machine_id(&id)?;
    let m = s
        .store
        .set_machine_state(id, MachineState::Approved)
        .await?;
    tracing::info!(device = %id, "machine approved by operator");
    s.evaluate_logged().await;
    Ok(json(StatusCode::OK, &MachineView::from(&m)))
}

async fn admin_revoke(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Answer {
    s.operator(&headers)?;
    let id = machine_id(&id)?;
    let now = s.now();
    let m = s.store.set_machine_state(id, MachineState::Revoked).await?;
    let mut revoked = Vec::new();
    for c in s.store.list_device_certs(id).await? {
        s.store.revoke_device_cert(&c.serial, now).await?;
        revoked.push(c.serial);
    }
    tracing::warn!(device = %id, certificates = revoked.len(), "machine revoked by operator");
    s.evaluate_logged().await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"machine": MachineView::from(&m), "revoked_certificates": revoked}),
    ))
}

async fn admin_revoke_cert(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(serial): UrlPath<String>,
) -> Answer {
    s.operator(&headers)?;
    let c = s.store.revoke_device_cert(&serial, s.now()).await?;
    tracing::warn!(device = %c.device, %serial, "certificate revoked by operator");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"serial": c.serial, "device": c.device.0, "revoked_at": c.revoked_at}),
    ))
}

async fn admin_new_token(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Answer {
    s.operator(&headers)?;
    let now = s.now();
    let token = s.tokens.lock().await.create(now).map_err(|e| {
        tracing::error!(error = %e, "creating an enrollment token failed");
        Reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "token storage unavailable".into(),
        )
    })?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "token": token }),
    ))
}

fn rollout_view(r: &tugboot_store::Rollout, summary: Option<&StageSummary>) -> serde_json::Value {
    serde_json::json!({
        "id": r.id.0,
        "image_name": r.image_name,
        "image_version": r.image_version,
        "selector": r.group_selector,
        "stages": r.stages,
        "max_failure_permille": r.thresholds.max_failure_permille,
        "min_reports": r.thresholds.min_reports,
        "state": r.state.as_str(),
        "stage": r.current_stage,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "devices": summary,
    })
}

async fn admin_rollouts(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Answer {
    s.operator(&headers)?;
    let table = s.assignments.read().await.clone();
    let list: Vec<serde_json::Value> = s
        .store
        .list_rollouts()
        .await?
        .iter()
        .map(|r| rollout_view(r, table.summaries.get(&r.id.0)))
        .collect();
    Ok(json(StatusCode::OK, &list))
}

async fn admin_create_rollout(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.operator(&headers)?;
    if body.len() > crate::wire::MAX_ENROLL_BYTES {
        return Err(WireError::TooLarge {
            size: body.len(),
            limit: crate::wire::MAX_ENROLL_BYTES,
        }
        .into());
    }
    let req: CreateRollout = serde_json::from_slice(&body)
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("malformed body: {e}")))?;
    Selector::parse(&req.selector)?;
    let image = s
        .store
        .get_image(&req.image_name, req.image_version)
        .await?
        .ok_or_else(|| Reject(StatusCode::NOT_FOUND, "no such image".into()))?;
    if !image.published {
        return Err(Reject(
            StatusCode::CONFLICT,
            "image is not published".into(),
        ));
    }
    let r = s
        .store
        .create_rollout(
            &NewRollout {
                image_name: req.image_name,
                image_version: req.image_version,
                group_selector: req.selector,
                stages: req.stages,
                thresholds: RolloutThresholds {
                    max_failure_permille: req.max_failure_permille,
                    min_reports: req.min_reports,
                },
            },
            s.now(),
        )
        .await?;
    tracing::info!(rollout = %r.id, image = %r.image_name, version = r.image_version, "rollout created");
    s.evaluate_logged().await;
    let r = s.store.get_rollout(r.id).await?.unwrap_or(r);
    let table = s.assignments.read().await.clone();
    Ok(json(
        StatusCode::CREATED,
        &rollout_view(&r, table.summaries.get(&r.id.0)),
    ))
}

async fn admin_rollout(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> Answer {
    s.operator(&headers)?;
    let r = s
        .store
        .get_rollout(tugboot_store::RolloutId(id))
        .await?
        .ok_or_else(|| Reject(StatusCode::NOT_FOUND, "no such rollout".into()))?;
    let table = s.assignments.read().await.clone();
    Ok(json(
        StatusCode::OK,
        &rollout_view(&r, table.summaries.get(&id)),
    ))
}

async fn admin_rollout_command(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath((id, action)): UrlPath<(i64, String)>,
) -> Answer {
    s.operator(&headers)?;
    let command = match action.as_str() {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "abort" => Command::Abort,
        _ => {
            return Err(Reject(
                StatusCode::NOT_FOUND,
                "unknown rollout action".into(),
            ));
        }
    };
    let r = s
        .store
        .get_rollout(tugboot_store::RolloutId(id))
        .await?
        .ok_or_else(|| Reject(StatusCode::NOT_FOUND, "no such rollout".into()))?;
    let model = rollout::Rollout::from_record(&r, s.config.report_timeout_secs);
    let t = model
        .command(command)
        .map_err(|e| Reject(StatusCode::CONFLICT, e.to_string()))?;
    let Some(next) = s.store.transition_rollout(&t, s.now()).await? else {
        return Err(Reject(
            StatusCode::CONFLICT,
            "rollout changed meanwhile; read it again".into(),
        ));
    };
    tracing::info!(rollout = id, ?command, "rollout command by operator");
    s.evaluate_logged().await;
    let r = s.store.get_rollout(next.id).await?.unwrap_or(next);
    let table = s.assignments.read().await.clone();
    Ok(json(
        StatusCode::OK,
        &rollout_view(&r, table.summaries.get(&id)),
    ))
}

#[derive(serde::Deserialize)]
struct ImageQuery {
    name: String,
}

async fn admin_images(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ImageQuery>,
) -> Answer {
    s.operator(&headers)?;
    let list: Vec<serde_json::Value> = s
        .store
        .list_images(&q.name)
        .await?
        .iter()
        .map(|i| serde_json::json!({"name": i.name, "version": i.version, "manifest_digest": i.manifest_digest, "published": i.published, "created_at": i.created_at}))
        .collect();
    Ok(json(StatusCode::OK, &list))
}

/// Publishes a signed manifest: it must verify against the server's trust root, and every
/// artifact must already be in the blob store with the signed size.
async fn admin_publish(State(s): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Answer {
    s.operator(&headers)?;
    if body.len() > MAX_PUBLISH_BYTES {
        return Err(WireError::TooLarge {
            size: body.len(),
            limit: MAX_PUBLISH_BYTES,
        }
        .into());
    }
    let now = s.now();
    let unix = u64::try_from(now).unwrap_or(0);
    let verified = tugboot_firmware::verify_manifest(
        &body,
        &s.trusted_root,
        &Policy::at(Timestamp::from_unix(unix)),
    )
    .map_err(|e| {
        Reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("manifest refused: {e}"),
        )
    })?;
    for a in &verified.artifacts {
        let path = s.blobs.path(&a.sha256);
        let size = std::fs::metadata(&path).map(|m| m.len()).ok();
        if size != Some(a.size) {
            return Err(Reject(
                StatusCode::CONFLICT,
                format!(
                    "artifact {} ({}) is not in the blob store with size {}",
                    a.name,
                    a.sha256.to_hex(),
                    a.size
                ),
            ));
        }
    }
    let image = Image {
        name: verified.name.clone(),
        version: verified.version,
        manifest_digest: hex::encode(Sha256::digest(&body)),
        manifest: body.to_vec(),
        published: true,
        created_at: now,
    };
    let outcome = s.store.put_image(&image).await?;
    s.store
        .set_image_published(&image.name, image.version, true)
        .await?;
    tracing::info!(image = %image.name, version = image.version, "image published");
    Ok(json(
        if outcome == WriteOutcome::Inserted {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &serde_json::json!({"name": image.name, "version": image.version, "manifest_digest": image.manifest_digest}),
    ))
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

/// The routes (without TLS: requests reaching it without the TLS layer have no identity).
fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/device/assignment", get(device_assignment))
        .route("/api/v1/device/reports", post(device_report))
        .route("/api/v1/device/renew", post(device_renew))
        .route("/api/v1/device/manifests/{digest}", get(device_manifest))
        .route("/api/v1/device/artifacts/{digest}", get(device_artifact))
        .route(
            "/api/v1/devices/{id}/assignment",
            get(device_assignment_by_id),
        )
        .route("/api/v1/devices/{id}/reports", post(device_report_by_id))
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/admin/machines", get(admin_machines))
        .route("/api/v1/admin/machines/{id}", get(admin_machine))
        .route("/api/v1/admin/machines/{id}/approve", post(admin_approve))
        .route("/api/v1/admin/machines/{id}/revoke", post(admin_revoke))
        .route(
            "/api/v1/admin/certificates/{serial}/revoke",
            post(admin_revoke_cert),
        )
        .route("/api/v1/admin/enrollment-tokens", post(admin_new_token))
        .route(
            "/api/v1/admin/rollouts",
            get(admin_rollouts).post(admin_create_rollout),
        )
        .route("/api/v1/admin/rollouts/{id}", get(admin_rollout))
        .route(
            "/api/v1/admin/rollouts/{id}/{action}",
            post(admin_rollout_command),
        )
        .route(
            "/api/v1/admin/images",
            get(admin_images).post(admin_publish),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PUBLISH_BYTES + 1))
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
/// `names` with `ca` and writes it (key mode 0600) when there is none or it expires within
/// `renew_before_secs`.
///
/// # Errors
/// CA and file errors.
pub fn load_or_issue_server_cert(
    dir: &Path,
    ca: &CertAuthority,
    names: &[String],
    now: i64,
    renew_before_secs: u64,
) -> Result<crate::ca::ServerCert, ApiError> {
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    if let (Ok(cert_pem), Ok(key_pem)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) && let Some(der) = crate::ca::pem_to_der(&cert_pem, "CERTIFICATE")
        && let Ok((_, c)) = x509_parser::parse_x509_certificate(&der)
        && !needs_renewal(c.validity().not_after.timestamp(), now, renew_before_secs)
    {
        return Ok(crate::ca::ServerCert { cert_pem, key_pem });
    }
    let issued = ca.issue_server(names, now, crate::ca::DEFAULT_SERVER_VALIDITY_SECS)?;
    std::fs::create_dir_all(dir)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    use std::io::Write as _;
    let mut f = opts.open(&key_path)?;
    f.write_all(issued.key_pem.as_bytes())?;
    f.sync_all()?;
    std::fs::write(&cert_path, &issued.cert_pem)?;
    Ok(issued)
}

/// The device API server.
#[derive(Debug)]
pub struct ApiServer {
    state: Arc<ApiState>,
    tls: Arc<rustls::ServerConfig>,
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
    /// TLS set-up and token-file errors.
    pub fn new(parts: ApiParts) -> Result<Self, ApiError> {
        let tls = tls_config(&parts.ca, &parts.server_cert_pem, &parts.server_key_pem)?;
        let tokens = TokenBook::open(&parts.state_dir)?;
        Ok(Self {
            state: Arc::new(ApiState {
                store: parts.store,
                ca: parts.ca,
                tokens: Mutex::new(tokens),
                operator: parts.operator,
                blobs: parts.blobs,
                trusted_root: parts.trusted_root,
                config: parts.config,
                clock: parts.clock,
                metrics: Metrics::default(),
                assignments: RwLock::new(Arc::new(Assignments::default())),
                evaluating: Mutex::new(()),
            }),
            tls: Arc::new(tls),
        })
    }

    /// The handlers' state (tests and the CLI call [`ApiState::evaluate_rollouts`]).
    #[must_use]
    pub fn state(&self) -> Arc<ApiState> {
        self.state.clone()
    }

    /// Serves on `listener` until the task is dropped or the listener fails. Also runs the
    /// periodic rollout evaluation.
    ///
    /// # Errors
    /// Accept errors other than per-connection ones.
    pub async fn serve(self, listener: TcpListener) -> Result<(), ApiError> {
        let state = self.state.clone();
        state.evaluate_logged().await;
        let periodic = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(state.config.evaluate_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    state.evaluate_logged().await;
                }
            })
        };
        // Abort the evaluation task when serving stops (including when this future is dropped).
        struct AbortOnDrop(tokio::task::JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _periodic = AbortOnDrop(periodic);
        let app = router(state.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let limit = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
        let handshake_timeout = state.config.handshake_timeout;
        loop {
            let permit = limit
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| ApiError::Io(std::io::Error::other(e)))?;
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let stream =
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| peer_identity(c).map_err(|e| e.to_string()));
                let info = ConnInfo { remote, identity };
                let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    req
                });
                let svc = hyper_util::service::TowerToHyperService::new(svc);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(handshake_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(labels: &[(&str, &str)], board: Option<&str>) -> Machine {
        Machine {
            id: MachineId(1),
            mac: tugboot_store::MacAddr([2, 0, 0, 0, 0, 1]),
            smbios_uuid: None,
            serial: None,
            board: board.map(str::to_owned),
            profile: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            state: MachineState::Approved,
            first_seen: 0,
            last_seen: 0,
            last_booted_image: None,
        }
    }

    #[test]
    fn selector_matches_labels_and_fields() {
        let m = machine(&[("site", "lab"), ("tier", "canary")], Some("rpi4"));
        assert!(Selector::parse("*").unwrap().matches(&m));
        assert!(Selector::parse("").unwrap().matches(&m));
        assert!(Selector::parse("site=lab").unwrap().matches(&m));
        assert!(Selector::parse("site=lab, board=rpi4").unwrap().matches(&m));
        assert!(!Selector::parse("site=lab,tier=prod").unwrap().matches(&m));
        assert!(!Selector::parse("profile=x").unwrap().matches(&m));
        assert!(Selector::parse("site").is_err());
        assert!(Selector::parse("=x").is_err());
    }

    #[test]
    fn rollout_order_is_stable_and_per_rollout() {
        assert_eq!(
            rollout_order(1, MachineId(5)),
            rollout_order(1, MachineId(5))
        );
        assert_ne!(
            rollout_order(1, MachineId(5)),
            rollout_order(2, MachineId(5))
        );
    }
}
