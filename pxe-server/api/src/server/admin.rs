//! Operator routes (bearer token): machines and their facts, enrollment tokens and
//! certificates, rollouts, and the image catalogue with resumable artifact uploads.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tugboot_firmware::{BlobError, Manifest, Signed};
use tugboot_fleet::facts::{Declarer, FactKey, Source};
use tugboot_fleet::rollout::Command;
use tugboot_fleet::{Machine, MachineId, MachineState};
use tugboot_store::{Image, RolloutId, Store, WriteOutcome};

use super::rollouts::rollout_view;
use super::{Answer, ApiState, Reject, json, parse_digest};
use crate::ca::parse_device_id;
use crate::wire::{CreateRollout, WireError};

/// Largest manifest envelope accepted by `POST /api/v1/admin/images`.
const MAX_PUBLISH_BYTES: usize = tugboot_firmware::MAX_MANIFEST_BYTES;
/// Largest chunk of one upload request (`PATCH /api/v1/admin/blobs/{sha256}`).
pub(super) const MAX_UPLOAD_CHUNK: usize = 16 << 20;
/// Largest facts-change body.
const MAX_FACTS_BODY: usize = 64 * 1024;

/// One fact as the operator API shows it: value and provenance.
#[derive(Serialize)]
struct FactView {
    value: String,
    source: &'static str,
    at: i64,
}

#[derive(Serialize)]
struct MachineView {
    id: i64,
    name: Option<String>,
    mac: Option<String>,
    uuid: Option<String>,
    serial: Option<String>,
    state: &'static str,
    /// Shorthands of the facts below (whoever stated them).
    board: Option<String>,
    profile: Option<String>,
    labels: BTreeMap<String, String>,
    facts: BTreeMap<String, FactView>,
    first_seen: i64,
    last_seen: i64,
    last_booted_image: Option<String>,
}

impl From<&Machine> for MachineView {
    fn from(m: &Machine) -> Self {
        Self {
            id: m.id.0,
            name: m.name.clone(),
            mac: m.mac.map(|x| x.to_string()),
            uuid: m.uuid.map(|u| u.to_string()),
            serial: m.serial.clone(),
            state: m.state.as_str(),
            board: m.board().map(str::to_owned),
            profile: m.profile().map(str::to_owned),
            labels: m
                .labels()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            facts: m
                .facts
                .iter()
                .map(|(k, f)| {
                    (
                        k.as_str().to_owned(),
                        FactView {
                            value: f.value.clone(),
                            source: f.source.as_str(),
                            at: f.at,
                        },
                    )
                })
                .collect(),
            first_seen: m.first_seen,
            last_seen: m.last_seen,
            last_booted_image: m.last_booted_image.clone(),
        }
    }
}

fn machine_id(text: &str) -> Result<MachineId, Reject> {
    parse_device_id(text).map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))
}

fn body_capped(body: &Bytes, limit: usize) -> Result<(), Reject> {
    if body.len() > limit {
        return Err(WireError::TooLarge {
            size: body.len(),
            limit,
        }
        .into());
    }
    Ok(())
}

pub(super) async fn machines(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Answer {
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

pub(super) async fn machine(
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
    let stored = s.store.list_reports(id, 50).await?;
    let now = s.now();
    let reports: Vec<serde_json::Value> = stored
        .iter()
        .take(10)
        .map(|r| serde_json::json!({"id": r.report_id, "received_at": r.received_at, "report": r.checks}))
        .collect();
    let view = health_view(&stored, !certs.is_empty(), now, s.config.silent_after_secs);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "machine": MachineView::from(&m), "certificates": certs, "reports": reports,
            "status": view.status, "inventory": view.inventory, "silent": view.silent,
        }),
    ))
}

/// A machine's health as the operator sees it (`GET /api/v1/admin/machines/{id}`, the console).
#[derive(Debug, Clone)]
pub struct HealthView {
    /// The latest status (slot, image, checks, last error, update) with its age, or null.
    pub status: serde_json::Value,
    /// The latest inventory with its age, or null.
    pub inventory: serde_json::Value,
    /// `{"silent": bool, "after_secs": .., "last_report_age_secs": ..}`.
    pub silent: serde_json::Value,
}

/// The device's latest status and inventory (newest report carrying each) with their age, and
/// whether it has gone silent: it holds a certificate and its last report is older than
/// `silent_after` (or it never reported). `reports` newest first.
#[must_use]
pub fn health_view(
    reports: &[tugboot_store::Report],
    enrolled: bool,
    now: i64,
    silent_after: u64,
) -> HealthView {
    let age = |at: i64| now.saturating_sub(at).max(0);
    let status = reports
        .iter()
        .find(|r| r.checks.get("slot").is_some_and(|v| !v.is_null()))
        .map_or(serde_json::Value::Null, |r| {
            let c = &r.checks;
            serde_json::json!({
                "received_at": r.received_at, "age_secs": age(r.received_at),
                "boot_id": c["boot_id"], "slot": c["slot"],
                "image": match (c["image_name"].as_str(), c["image_version"].as_u64()) {
                    (Some(n), Some(v)) => serde_json::Value::String(format!("{n}@{v}")),
                    _ => serde_json::Value::Null,
                },
                "uptime_secs": c["uptime_secs"], "checks": c["checks"],
                "last_error": c["last_error"], "update": c["update"],
            })
        });
    let inventory = reports
        .iter()
        .find(|r| r.checks.get("inventory").is_some_and(|v| !v.is_null()))
        .map_or(serde_json::Value::Null, |r| {
            let mut v = r.checks["inventory"].clone();
            if let Some(o) = v.as_object_mut() {
                o.insert("received_at".into(), r.received_at.into());
                o.insert("age_secs".into(), age(r.received_at).into());
            }
            v
        });
    let last = reports.iter().map(|r| r.received_at).max();
    let last_age = last.map(age);
    let silent = enrolled && last_age.is_none_or(|a| u64::try_from(a).unwrap_or(0) > silent_after);
    HealthView {
        status,
        inventory,
        silent: serde_json::json!({
            "silent": silent, "after_secs": silent_after, "last_report_age_secs": last_age,
        }),
    }
}

/// `POST /api/v1/admin/machines/{id}/facts`: what the operator declares about a machine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FactsChange {
    /// Facts to declare (`board`, `profile`, `hostname`, `label.<key>`, ...).
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Facts the operator declared before and now withdraws.
    #[serde(default)]
    withdraw: Vec<String>,
}

/// Declares or withdraws facts as the operator (the highest authority: nothing observed,
/// attested or in the profiles file overrides them). Profiles and boards must exist.
pub(super) async fn machine_facts(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Answer {
    s.operator(&headers)?;
    body_capped(&body, MAX_FACTS_BODY)?;
    let id = machine_id(&id)?;
    let change: FactsChange = serde_json::from_slice(&body)
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("malformed body: {e}")))?;
    let fleet = s.live.snapshot();
    let key = |k: &str| FactKey::new(k).map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()));
    let mut set = Vec::new();
    for (k, v) in &change.set {
        match k.as_str() {
            "profile" if fleet.profiles.profile(v).is_none() => {
                return Err(Reject(
                    StatusCode::BAD_REQUEST,
                    format!("no profile called {v:?} in the profiles file"),
                ));
            }
            "board" if fleet.boards.get(v).is_none() => {
                return Err(Reject(
                    StatusCode::BAD_REQUEST,
                    format!("unknown board {v:?}"),
                ));
            }
            _ => {}
        }
        if k.starts_with(tugboot_fleet::facts::keys::LABEL_PREFIX) && v.contains([',', '=']) {
            return Err(Reject(
                StatusCode::BAD_REQUEST,
                format!("{k}: ',' and '=' are not allowed in labels"),
            ));
        }
        set.push((key(k)?, v.clone()));
    }
    let withdraw = change
        .withdraw
        .iter()
        .map(|k| key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let source = Source::Declared(Declarer::Operator);
    let now = s.now();
    let mut m = s.store.set_facts(id, &set, source, now).await?;
    if !withdraw.is_empty() {
        m = s.store.withdraw_facts(id, &withdraw, source).await?;
    }
    tracing::info!(device = %id, set = ?change.set, withdraw = ?change.withdraw, "machine facts declared by operator");
    s.refresh_logged().await;
    s.evaluate_logged().await;
    Ok(json(StatusCode::OK, &MachineView::from(&m)))
}

pub(super) async fn approve(
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
    s.refresh_logged().await;
    s.evaluate_logged().await;
    Ok(json(StatusCode::OK, &MachineView::from(&m)))
}

pub(super) async fn revoke(
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
    s.refresh_logged().await;
    s.evaluate_logged().await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"machine": MachineView::from(&m), "revoked_certificates": revoked}),
    ))
}

pub(super) async fn revoke_cert(
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

/// `POST /api/v1/admin/enrollment-tokens`, body optional: `{"expires_in_secs", "mac",
/// "serial"}` ([`crate::tokens::TokenRequest`]). The token text is in this answer only; the
/// store keeps its hash.
pub(super) async fn new_token(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.operator(&headers)?;
    let spec = crate::tokens::TokenRequest::parse(&body, s.config.token_ttl_secs)
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let token = crate::tokens::generate(&spec, s.now())
        .map_err(|e| Reject(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    s.store.create_enrollment_token(&token.record).await?;
    tracing::info!(expires_at = token.record.expires_at, mac = ?token.record.bound_mac.map(|m| m.to_string()), serial = ?token.record.bound_serial, "enrollment token created");
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "token": token.text,
            "expires_at": token.record.expires_at,
            "mac": token.record.bound_mac.map(|m| m.to_string()),
            "serial": token.record.bound_serial,
        }),
    ))
}

/// `GET /api/v1/admin/enrollment-tokens`: every token (its hash prefix, never the text), with
/// its expiry, bindings and use.
pub(super) async fn tokens(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Answer {
    s.operator(&headers)?;
    let now = s.now();
    let list: Vec<serde_json::Value> = s
        .store
        .list_enrollment_tokens()
        .await?
        .iter()
        .map(|t| {
            let state = if t.used_at.is_some() {
                "used"
            } else if t.expires_at <= now {
                "expired"
            } else {
                "unused"
            };
            serde_json::json!({
                "id": &t.hash[..12],
                "created_at": t.created_at,
                "expires_at": t.expires_at,
                "mac": t.bound_mac.map(|m| m.to_string()),
                "serial": t.bound_serial,
                "state": state,
                "used_at": t.used_at,
                "used_by": t.used_by.map(|d| d.0),
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &list))
}

pub(super) async fn rollouts(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Answer {
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

pub(super) async fn create_rollout(
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
    let r = s.create_rollout(req).await?;
    let table = s.assignments.read().await.clone();
    Ok(json(
        StatusCode::CREATED,
        &rollout_view(&r, table.summaries.get(&r.id.0)),
    ))
}

pub(super) async fn rollout(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> Answer {
    s.operator(&headers)?;
    let r = s
        .store
        .get_rollout(RolloutId(id))
        .await?
        .ok_or_else(|| Reject(StatusCode::NOT_FOUND, "no such rollout".into()))?;
    let table = s.assignments.read().await.clone();
    Ok(json(
        StatusCode::OK,
        &rollout_view(&r, table.summaries.get(&id)),
    ))
}

pub(super) async fn rollout_command(
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
    let r = s.command_rollout(RolloutId(id), command).await?;
    let table = s.assignments.read().await.clone();
    Ok(json(
        StatusCode::OK,
        &rollout_view(&r, table.summaries.get(&id)),
    ))
}

#[derive(Deserialize)]
pub(super) struct ImageQuery {
    name: Option<String>,
}

fn image_row(i: &Image, serving: bool) -> serde_json::Value {
    serde_json::json!({
        "name": i.name,
        "version": i.version,
        "manifest_digest": i.manifest_digest,
        "published": i.published,
        "serving": serving,
        "created_at": i.created_at,
    })
}

/// The catalogue as stored, all images or one name; `serving` says whether this server can
/// serve it (verified against its trust root, artifacts present in its blob store).
pub(super) async fn images(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ImageQuery>,
) -> Answer {
    s.operator(&headers)?;
    let fleet = s.live.snapshot();
    let list: Vec<serde_json::Value> = s
        .store
        .list_images(q.name.as_deref())
        .await?
        .iter()
        .map(|i| {
            let serving = fleet
                .catalogue
                .image(&tugboot_fleet::ImageRef::Version {
                    name: i.name.clone(),
                    version: i.version,
                })
                .is_some();
            image_row(i, serving)
        })
        .collect();
    Ok(json(StatusCode::OK, &list))
}

/// One image: the manifest's statements, its signatures, which machines last booted it.
pub(super) async fn image(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath((name, version)): UrlPath<(String, u64)>,
) -> Answer {
    s.operator(&headers)?;
    let i = s
        .store
        .get_image(&name, version)
        .await?
        .ok_or_else(|| Reject(StatusCode::NOT_FOUND, "no such image".into()))?;
    let fleet = s.live.snapshot();
    let served = fleet.catalogue.image(&tugboot_fleet::ImageRef::Version {
        name: name.clone(),
        version,
    });
    let signed = Signed::<Manifest>::from_bytes(&i.manifest).map_err(|e| {
        Reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored manifest: {e}"),
        )
    })?;
    let m = signed.value();
    let label = format!("{name}@{version}");
    let running: Vec<i64> = fleet
        .registry
        .iter()
        .filter(|x| x.last_booted_image.as_deref() == Some(label.as_str()))
        .map(|x| x.id.0)
        .collect();
    let mut row = image_row(&i, served.is_some());
    row["boards"] = serde_json::json!(m.boards);
    row["created"] = serde_json::json!(m.created.to_string());
    row["expires"] = serde_json::json!(m.expires.to_string());
    row["min_version"] = serde_json::json!(m.min_version);
    row["labels"] = serde_json::json!(m.labels);
    row["artifacts"] = serde_json::json!(m
        .artifacts
        .iter()
        .map(|a| serde_json::json!({"role": a.role.as_str(), "name": a.name, "sha256": a.sha256.to_hex(), "size": a.size}))
        .collect::<Vec<_>>());
    row["signatures"] = serde_json::json!(
        signed
            .signatures
            .iter()
            .map(|sig| hex::encode(sig.keyid.0))
            .collect::<Vec<_>>()
    );
    row["threshold"] = serde_json::json!(s.trusted_root.root().threshold);
    row["machines"] = serde_json::json!(running);
    Ok(json(StatusCode::OK, &row))
}

/// `yank` withdraws an image from the catalogue (netboot, rollouts, devices: the stored
/// manifest stays, immutable); `publish` puts it back.
pub(super) async fn image_command(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath((name, version, action)): UrlPath<(String, u64, String)>,
) -> Answer {
    s.operator(&headers)?;
    let published = match action.as_str() {
        "yank" => false,
        "publish" => true,
        _ => return Err(Reject(StatusCode::NOT_FOUND, "unknown image action".into())),
    };
    if !s
        .store
        .set_image_published(&name, version, published)
        .await?
    {
        return Err(Reject(StatusCode::NOT_FOUND, "no such image".into()));
    }
    tracing::warn!(image = %name, version, published, "image {action}ed by operator");
    s.refresh_logged().await;
    s.evaluate_logged().await;
    let i = s.store.get_image(&name, version).await?;
    Ok(json(StatusCode::OK, &i.map(|i| image_row(&i, published))))
}

/// Publishes a signed manifest into the catalogue: it must verify against the server's trust
/// root, and every artifact must already be in the blob store with the signed size (pushed
/// with `PATCH /api/v1/admin/blobs/...`). One publish serves netboot and rollouts alike.
pub(super) async fn publish(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.operator(&headers)?;
    body_capped(&body, MAX_PUBLISH_BYTES)?;
    let now = s.now();
    let blobs = s.blobs.clone();
    let root = s.trusted_root.clone();
    let envelope = body.to_vec();
    let at = s.timestamp();
    let checked = tokio::task::spawn_blocking(move || {
        tugboot_store::prepare_image(&envelope, &blobs, &root, at)
    })
    .await
    .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (verified, _cmdline) = checked.map_err(|e| {
        let status = match e {
            // Push the artifacts first (`tugboot images push` does).
            tugboot_store::PublishError::Artifact { .. } => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Reject(status, format!("manifest refused: {e}"))
    })?;
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
    s.refresh_logged().await;
    s.evaluate_logged().await;
    Ok(json(
        if outcome == WriteOutcome::Inserted {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &serde_json::json!({"name": image.name, "version": image.version, "manifest_digest": image.manifest_digest}),
    ))
}

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    size: u64,
    #[serde(default)]
    offset: u64,
}

fn upload_answer(offset: u64, size: u64) -> axum::response::Response {
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({"offset": offset, "size": size, "complete": offset == size}),
    );
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        resp.headers_mut().insert("upload-offset", v);
    }
    resp
}

/// `HEAD /api/v1/admin/blobs/{sha256}?size=N`: where an upload stands (`Upload-Offset`; equal
/// to the size once the blob is stored).
pub(super) async fn blob_status(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(digest): UrlPath<String>,
    Query(q): Query<UploadQuery>,
) -> Answer {
    s.operator(&headers)?;
    let digest = parse_digest(&digest)?;
    let blobs = s.blobs.clone();
    let offset = tokio::task::spawn_blocking(move || blobs.upload_offset(&digest, q.size))
        .await
        .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(blob_reject)?;
    Ok(upload_answer(offset, q.size).into_response())
}

/// `PATCH /api/v1/admin/blobs/{sha256}?size=N&offset=O`: the next chunk of an upload, durable
/// before the answer; the last chunk hashes the whole blob and stores it under its digest (a
/// mismatch is refused and the upload starts over). Resumable across client and server
/// restarts: ask `HEAD` where it stands.
pub(super) async fn blob_upload(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(digest): UrlPath<String>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> Answer {
    s.operator(&headers)?;
    body_capped(&body, MAX_UPLOAD_CHUNK)?;
    let digest = parse_digest(&digest)?;
    let blobs = s.blobs.clone();
    let (size, offset) = (q.size, q.offset);
    let done =
        tokio::task::spawn_blocking(move || blobs.upload_append(&digest, size, offset, &body))
            .await
            .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(blob_reject)?;
    if done == size {
        tracing::info!(%digest, size, "artifact uploaded");
    }
    Ok(upload_answer(done, size).into_response())
}

fn blob_reject(e: BlobError) -> Reject {
    match e {
        BlobError::UploadOffset { .. } => Reject(StatusCode::CONFLICT, e.to_string()),
        BlobError::Stream(_) => Reject(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        other => {
            tracing::error!(error = %other, "blob store");
            Reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                "blob store failed".into(),
            )
        }
    }
}
