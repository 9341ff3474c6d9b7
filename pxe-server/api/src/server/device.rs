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
    DeviceCert, EnrollAttempt, EnrollOutcome, EnrollRefusal, EnrolledCert, MachineId, OutcomeKind,
    Report, ReportOutcome, Store, WriteOutcome,
};

use super::auth::ConnInfo;
use super::{Answer, ApiState, Reject, json, parse_digest};
use crate::ca::{PeerIdentity, check_csr, csr_key_sha256, needs_renewal};
use crate::tokens::token_hash;
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
    let id = s.authenticate(conn.as_deref()).await?;
    let digest = parse_digest(&digest)?;
    // Who downloads what, and from where a resumed download picks up.
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    tracing::info!(device = %id.device, %digest, %range, "device artifact download");
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
        // A committed or installed outcome's boot was recorded with the report (one
        // transaction: a crash cannot leave the report without it, nor its retry re-apply it).
        tracing::info!(device = %id.device, outcome = %o.kind, image = %o.image_name, version = o.image_version, "update outcome reported");
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

/// `POST /api/v1/enroll` (no certificate): decided and recorded by the store in one
/// transaction ([`tugboot_store::Store::enroll`]), so single-use tokens, one active enrollment
/// per machine and per key, and the cap on pending requests hold with any number of
/// concurrent requests and servers. A refusal writes nothing; a pending poll writes nothing.
pub(super) async fn enroll(State(s): State<Arc<ApiState>>, body: Bytes) -> Answer {
    let req = EnrollRequest::parse(&body)?;
    let mac: tugboot_store::Mac = req
        .mac
        .parse()
        .map_err(|_| Reject(StatusCode::BAD_REQUEST, "mac: not a MAC address".into()))?;
    check_csr(&req.csr).map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let key_sha256 =
        csr_key_sha256(&req.csr).map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let now = s.now();
    let serial = req
        .serial
        .as_deref()
        .and_then(|v| sanitize_value(v.as_bytes()));
    let serial_fact: Vec<(&str, &str)> = serial
        .as_deref()
        .map(|v| vec![(keys::SERIAL, v)])
        .unwrap_or_default();
    let attempt = EnrollAttempt {
        mac,
        serial: serial.clone(),
        facts: observed(Observer::Http, now, &serial_fact),
        key_sha256,
        token_hash: req.token.as_deref().map(token_hash),
        max_pending: s.config.max_pending_enrollments,
        replay_window_secs: i64::try_from(s.config.enroll_replay_window_secs).unwrap_or(i64::MAX),
        now,
    };
    let ca = &s.ca;
    let validity = s.config.device_cert_validity_secs;
    let csr = req.csr.as_str();
    let outcome = s
        .store
        .enroll(&attempt, |device| {
            ca.issue_device(csr, device, now, validity)
                .map(|c| EnrolledCert {
                    serial: c.serial,
                    pem: c.pem,
                    not_after: c.not_after,
                })
                .map_err(|e| e.to_string())
        })
        .await?;
    match outcome {
        EnrollOutcome::Issued {
            device,
            cert,
            repeated,
        } => {
            if repeated {
                s.metrics.enrollment("repeated");
                tracing::info!(%device, %mac, serial = %cert.serial, "enrollment repeated: same certificate sent again");
            } else {
                s.metrics.enrollment("issued");
                tracing::info!(%device, %mac, serial = %cert.serial, not_after = cert.not_after, token = attempt.token_hash.is_some(), "device enrolled");
                s.refresh_logged().await;
                s.evaluate_logged().await;
            }
            Ok(json(
                StatusCode::OK,
                &EnrollResponse {
                    status: "issued".into(),
                    device_id: device.0,
                    certificate: Some(cert.pem),
                    ca: Some(s.ca.cert_pem().to_owned()),
                    not_after: Some(cert.not_after),
                },
            ))
        }
        EnrollOutcome::Pending { device, recorded } => {
            s.metrics.enrollment("pending");
            if recorded {
                tracing::info!(%device, %mac, "enrollment pending operator approval");
                s.refresh_logged().await;
            }
            Ok(json(
                StatusCode::ACCEPTED,
                &EnrollResponse {
                    status: "pending".into(),
                    device_id: device.0,
                    certificate: None,
                    ca: None,
                    not_after: None,
                },
            ))
        }
        EnrollOutcome::Refused { device, reason } => {
            s.metrics.enrollment("refused");
            s.metrics.refusal(reason.as_str());
            tracing::warn!(device = ?device.map(|d| d.0), %mac, reason = reason.as_str(), "enrollment refused");
            let status = match reason {
                EnrollRefusal::AlreadyEnrolled => StatusCode::CONFLICT,
                EnrollRefusal::PendingFull => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::FORBIDDEN,
            };
            Err(Reject(status, reason.to_string()))
        }
    }
}
