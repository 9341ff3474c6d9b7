//! Device routes (mutual TLS): assignment, signed manifest, artifacts, reports, renewal; and
//! enrollment, the one device route without a certificate.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use tower::ServiceExt as _;
use tugboot_fleet::facts::{FactKey, Observer, Source, keys, normalize_arch, sanitize_value};
use tugboot_fleet::observe::observed;
use tugboot_store::{
    DeviceCert, MachineId, MachineState, OutcomeKind, Report, ReportOutcome, Sighting, Store,
    WriteOutcome,
};

use super::auth::ConnInfo;
use super::{Answer, ApiState, Reject, json, parse_digest};
use crate::ca::{PeerIdentity, check_csr, needs_renewal};
use crate::tokens::TokenError;
use crate::wire::{
    Assignment, DeviceReport, EnrollRequest, EnrollResponse, RenewRequest, WireError,
};

/// What a report tells about the device that rollouts and netboot may rely on: it came over
/// mutual TLS from the device itself, so these become `attested` facts (rank 2: above anything
/// observed on the network, below what the operator declares). Free text is made printable.
fn attested_facts(report: &DeviceReport) -> Vec<(&'static str, String)> {
    let mut facts = Vec::new();
    let mut put = |key: &'static str, value: &str| {
        if let Some(v) = sanitize_value(value.as_bytes()) {
            facts.push((key, v));
        }
    };
    if let Some(o) = &report.outcome {
        let (name, version) = o.image();
        match o.kind() {
            "installed" => {
                put(keys::INSTALLED, &format!("{name}@{version}"));
                put(keys::IMAGE, &format!("{name}@{version}"));
            }
            "committed" => put(keys::IMAGE, &format!("{name}@{version}")),
            _ => {}
        }
    }
    if let (Some(name), Some(version)) = (&report.image_name, report.image_version) {
        put(keys::IMAGE, &format!("{name}@{version}"));
    }
    if let Some(slot) = report.running_slot() {
        put(
            keys::SLOT,
            match slot {
                tugboot_store::Slot::A => "A",
                tugboot_store::Slot::B => "B",
            },
        );
    }
    if let Some(i) = &report.inventory {
        put(keys::BOARD, &i.board);
        if let Some(arch) = normalize_arch(&i.arch) {
            put(keys::ARCH, arch);
        }
        put(keys::KERNEL, &i.kernel);
        if let Some(m) = &i.model {
            put(keys::MODEL, m);
        }
        if let Some(b) = i.memory_bytes {
            put(keys::MEMORY_MIB, &(b >> 20).to_string());
        }
        if let Some(c) = i.cpus {
            put(keys::CPUS, &c.to_string());
        }
    }
    facts
}

impl ApiState {
    /// Offers `facts` as attested by `device`; when that changes what the registry knows, the
    /// live fleet gets the machine at once (an `install` profile then boots the disk).
    async fn attest(
        &self,
        device: MachineId,
        facts: &[(&'static str, String)],
        now: i64,
    ) -> Result<(), Reject> {
        let fleet = self.live.snapshot();
        let known = fleet.registry.get(device).map(|m| &m.facts);
        let changed: Vec<(FactKey, String)> = facts
            .iter()
            .filter(|(k, v)| {
                known
                    .and_then(|f| f.get(k))
                    .is_none_or(|f| f.value != *v || f.source.rank() < Source::Attested.rank())
            })
            .filter_map(|(k, v)| Some((FactKey::new(k).ok()?, v.clone())))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let machine = self
            .store
            .set_facts(device, &changed, Source::Attested, now)
            .await?;
        self.live.put_machine(machine);
        Ok(())
    }

    fn artifact_url(&self, digest: &str) -> String {
        match &self.config.artifact_base_url {
            Some(base) => format!("{}/{digest}", base.trim_end_matches('/')),
            None => format!("/api/v1/device/artifacts/{digest}"),
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
}

pub(super) async fn assignment(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Answer {
    let id = s.authenticate(conn.as_deref()).await?;
    assignment_for(&s, id.device).await
}

pub(super) async fn assignment_by_id(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    UrlPath(claimed): UrlPath<String>,
) -> Answer {
    let id = s.authenticate_as(conn.as_deref(), &claimed).await?;
    assignment_for(&s, id.device).await
}

/// A running rollout's image for the device; else, for a machine of an `install` profile that
/// has not installed yet, the image its installer is to write; else nothing (204).
async fn assignment_for(s: &ApiState, device: MachineId) -> Answer {
    let table = s.assignments.read().await.clone();
    let (image, rollout) = match table.for_device(device) {
        Some(r) => (Arc::clone(&r.image), Some(r.id)),
        None => {
            let fleet = s.live.snapshot();
            match fleet.install_image(device) {
                Some(image) => (Arc::clone(image), None),
                None => return Ok(StatusCode::NO_CONTENT.into_response()),
            }
        }
    };
    let a = Assignment {
        manifest_url: format!("/api/v1/device/manifests/{}", image.digest),
        artifacts: image
            .manifest
            .artifacts
            .iter()
            .map(|a| (a.sha256.to_hex(), s.artifact_url(&a.sha256.to_hex())))
            .collect::<BTreeMap<_, _>>(),
        rollout,
    };
    Ok(json(StatusCode::OK, &a))
}

pub(super) async fn manifest(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    UrlPath(digest): UrlPath<String>,
) -> Answer {
    s.authenticate(conn.as_deref()).await?;
    let digest = parse_digest(&digest)?;
    let fleet = s.live.snapshot();
    let Some(image) = fleet.catalogue.by_manifest(&digest) else {
        return Err(Reject(
            StatusCode::NOT_FOUND,
            "no such published manifest".into(),
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(image.manifest.envelope_bytes().to_vec()),
    )
        .into_response())
}

/// An artifact of a published image (nothing else of the blob store), with ranges for resumed
/// downloads. A stored blob whose size is not the signed one is never served.
pub(super) async fn artifact(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    UrlPath(digest): UrlPath<String>,
    req: Request,
) -> Answer {
    s.authenticate(conn.as_deref()).await?;
    let digest = parse_digest(&digest)?;
    let Some(size) = s.live.snapshot().catalogue.artifact_size(&digest) else {
        return Err(Reject(
            StatusCode::NOT_FOUND,
            "no such published artifact".into(),
        ));
    };
    let path = s.blobs.path(&digest);
    let on_disk = tokio::fs::metadata(&path).await.map(|m| m.len()).ok();
    if on_disk != Some(size) {
        tracing::error!(%digest, size, ?on_disk, "stored blob does not have its published size; not serving it");
        return Err(Reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored blob is damaged".into(),
        ));
    }
    let digest = digest.to_hex();
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

pub(super) async fn report(
    State(s): State<Arc<ApiState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    body: Bytes,
) -> Answer {
    let id = s.authenticate(conn.as_deref()).await?;
    store_report(&s, &id, &body).await
}

pub(super) async fn report_by_id(
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
    let outcome = report.outcome.as_ref().and_then(|o| {
        let (name, version) = o.image();
        let kind = OutcomeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == o.kind())?;
        Some(ReportOutcome {
            kind,
            image_name: name.to_owned(),
            image_version: version,
        })
    });
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
            outcome: outcome.clone(),
            received_at: now,
        })
        .await?;
    let duplicate = stored == WriteOutcome::AlreadyPresent;
    s.metrics
        .report(if duplicate { "duplicate" } else { "stored" });
    if let Some(o) = &outcome
        && !duplicate
    {
        tracing::info!(device = %id.device, outcome = %o.kind, image = %o.image_name, version = o.image_version, "update outcome reported");
        if matches!(o.kind, OutcomeKind::Committed | OutcomeKind::Installed) {
            s.store
                .record_boot(
                    id.device,
                    &format!("{}@{}", o.image_name, o.image_version),
                    now,
                )
                .await?;
        }
        s.evaluate_logged().await;
    }
    if !duplicate {
        let attested = attested_facts(&report);
        s.attest(id.device, &attested, now).await?;
        let fact = |key: &str| {
            attested
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        };
        s.events.send(super::events::FleetEvent::Reported {
            device: id.device.0,
            outcome: outcome.as_ref().map(|o| o.kind.as_str().to_owned()),
            image: fact(keys::IMAGE),
            slot: fact(keys::SLOT),
            failed_checks: report
                .checks
                .as_ref()
                .and_then(|c| c.as_object())
                .map(|o| {
                    let failed = o.iter().filter(|(_, v)| v["ok"] == false);
                    failed.map(|(k, _)| k.clone()).collect()
                })
                .unwrap_or_default(),
            last_error: report.last_error.clone(),
        });
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": report.id, "duplicate": duplicate }),
    ))
}

pub(super) async fn renew(
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

pub(super) async fn enroll(State(s): State<Arc<ApiState>>, body: Bytes) -> Answer {
    let req = EnrollRequest::parse(&body)?;
    let mac = req
        .mac
        .parse()
        .map_err(|_| Reject(StatusCode::BAD_REQUEST, "mac: not a MAC address".into()))?;
    check_csr(&req.csr).map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let now = s.now();
    let serial_fact: Vec<(&str, &str)> = req
        .serial
        .as_deref()
        .map(|s| vec![(keys::SERIAL, s)])
        .unwrap_or_default();
    let sighting = Sighting {
        mac,
        facts: observed(Observer::Http, now, &serial_fact),
    };
    let machine_id = s.store.observe(&[sighting], now).await?[0];
    let machine = s
        .store
        .get_machine(machine_id)
        .await?
        .ok_or_else(|| Reject(StatusCode::SERVICE_UNAVAILABLE, "machine vanished".into()))?;
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
