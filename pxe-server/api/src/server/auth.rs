//! Who is asking: a device by its verified certificate, or the operator by bearer token.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode, header};
use tugboot_store::{MachineState, Store};

use super::{ApiState, Reject};
use crate::ca::{PeerIdentity, parse_device_id};

/// What the TLS layer learned about the peer; inserted into every request of the connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub(super) remote: SocketAddr,
    /// `None`: no client certificate. `Some(Err)`: a CA-signed certificate without a usable
    /// device identity (e.g. the server's own certificate).
    pub(super) identity: Option<Result<PeerIdentity, String>>,
}

impl ApiState {
    /// The device behind a request: its verified certificate must be known, unrevoked and
    /// unexpired, and its machine not revoked. Every refusal is logged and counted.
    pub(super) async fn authenticate(
        &self,
        conn: Option<&ConnInfo>,
    ) -> Result<PeerIdentity, Reject> {
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
    pub(super) async fn authenticate_as(
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

    /// The operator's bearer token, compared in constant time.
    pub(super) fn operator(&self, headers: &HeaderMap) -> Result<(), Reject> {
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
}
