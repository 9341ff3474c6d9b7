//! JSON shapes of the device API, parsed from untrusted bytes with a size cap first.
//!
//! The device-side shapes follow the agent (`agent/src/net/`): the assignment is
//! `{"manifest_url", "artifacts": {sha256: url}}` and a report is the agent's queued report
//! `{"id", "seq", "boot_id", "agent", "outcome": {"outcome": "committed", ...}}`. The server
//! additionally accepts the status fields of a plain health report (`slot`, `image_version`,
//! `checks`, `uptime_secs`, `last_error`), all optional, so one endpoint takes both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tugboot_store::{MAX_CHECKS_BYTES, MAX_ERROR_LEN, Slot};

/// Largest report body.
pub const MAX_REPORT_BYTES: usize = MAX_CHECKS_BYTES;
/// Largest enrollment body (a CSR plus a few identifiers).
pub const MAX_ENROLL_BYTES: usize = 24 * 1024;
/// Longest report id / boot id.
pub const MAX_ID_LEN: usize = 128;

/// A body that is not what the API expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Larger than the cap.
    #[error("body of {size} bytes, at most {limit}")]
    TooLarge {
        /// Size received.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// Not the expected JSON.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// JSON of the right shape with a bad value.
    #[error("{field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn capped<'a, T: Deserialize<'a>>(bytes: &'a [u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), WireError> {
    if value.is_empty() || value.len() > max {
        return Err(invalid(field, format!("expected 1..={max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

/// A slot as the agent writes it (`"A"`/`"B"`); lowercase is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotText {
    /// Slot A.
    #[serde(rename = "A", alias = "a")]
    A,
    /// Slot B.
    #[serde(rename = "B", alias = "b")]
    B,
}

impl From<SlotText> for Slot {
    fn from(s: SlotText) -> Self {
        match s {
            SlotText::A => Slot::A,
            SlotText::B => Slot::B,
        }
    }
}

/// How an update ended, exactly the agent's `Outcome` JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Outcome {
    /// Booted, healthy, committed: the only outcome that counts as updated.
    Committed {
        /// Image name.
        name: String,
        /// Image version.
        version: u64,
        /// Slot it runs from.
        slot: SlotText,
    },
    /// Tried and fell back to the committed slot.
    RolledBack {
        /// Image name.
        name: String,
        /// Image version.
        version: u64,
        /// Slot it runs from again.
        slot: SlotText,
        /// Why.
        reason: String,
    },
    /// Never became bootable.
    Failed {
        /// Image name.
        name: String,
        /// Image version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// Power lost while downloading; the agent starts again.
    Interrupted {
        /// Image name.
        name: String,
        /// Image version.
        version: u64,
    },
}

impl Outcome {
    /// Image name and version the outcome is about.
    #[must_use]
    pub fn image(&self) -> (&str, u64) {
        match self {
            Self::Committed { name, version, .. }
            | Self::RolledBack { name, version, .. }
            | Self::Failed { name, version, .. }
            | Self::Interrupted { name, version } => (name, *version),
        }
    }

    /// `committed`, `rolled-back`, `failed`, `interrupted`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Committed { .. } => "committed",
            Self::RolledBack { .. } => "rolled-back",
            Self::Failed { .. } => "failed",
            Self::Interrupted { .. } => "interrupted",
        }
    }
}

/// A report POSTed by a device: the agent's outcome report, a health/status report, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceReport {
    /// Unique per report and stable across retries: `(device, id)` makes it count once.
    pub id: String,
    /// The agent's sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Boot the report is about.
    pub boot_id: String,
    /// Agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The device id; when present it must be the certificate's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<i64>,
    /// How an update ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Slot running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotText>,
    /// Image version running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<u64>,
    /// Health-check results (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<serde_json::Value>,
    /// Uptime, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    /// Last error the agent saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl DeviceReport {
    /// Parses and checks a report body.
    ///
    /// # Errors
    /// [`WireError`].
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let r: Self = capped(bytes, MAX_REPORT_BYTES)?;
        check_text("id", &r.id, MAX_ID_LEN)?;
        check_text("boot_id", &r.boot_id, MAX_ID_LEN)?;
        if let Some(a) = &r.agent {
            check_text("agent", a, MAX_ID_LEN)?;
        }
        if let Some(e) = &r.last_error
            && e.len() > MAX_ERROR_LEN
        {
            return Err(invalid(
                "last_error",
                format!("at most {MAX_ERROR_LEN} bytes"),
            ));
        }
        if let Some(o) = &r.outcome {
            let (name, version) = o.image();
            check_text("outcome.name", name, tugboot_store::MAX_NAME_LEN)?;
            if i64::try_from(version).is_err() {
                return Err(invalid("outcome.version", "too large"));
            }
            if let Outcome::RolledBack { reason, .. } | Outcome::Failed { reason, .. } = o
                && reason.len() > MAX_ERROR_LEN
            {
                return Err(invalid(
                    "outcome.reason",
                    format!("at most {MAX_ERROR_LEN} bytes"),
                ));
            }
        }
        for (field, v) in [
            ("image_version", r.image_version),
            ("uptime_secs", r.uptime_secs),
        ] {
            if v.is_some_and(|v| i64::try_from(v).is_err()) {
                return Err(invalid(field, "too large"));
            }
        }
        if r.outcome.is_none() && r.slot.is_none() {
            return Err(invalid(
                "slot",
                "a report without an outcome must name its slot",
            ));
        }
        Ok(r)
    }

    /// The slot the device runs from: the status field, else the outcome's. Reports of a
    /// failed or interrupted install name none; the store needs one, so those are recorded as
    /// `a` and the full report (in `checks`) says what was actually sent.
    #[must_use]
    pub fn running_slot(&self) -> Slot {
        let from_outcome = match &self.outcome {
            Some(Outcome::Committed { slot, .. } | Outcome::RolledBack { slot, .. }) => Some(*slot),
            _ => None,
        };
        self.slot.or(from_outcome).map_or(Slot::A, Slot::from)
    }

    /// The image version the device runs: the status field, else the committed version, else 0
    /// (unknown).
    #[must_use]
    pub fn running_version(&self) -> u64 {
        match (&self.image_version, &self.outcome) {
            (Some(v), _) => *v,
            (None, Some(Outcome::Committed { version, .. })) => *version,
            _ => 0,
        }
    }
}

/// `POST /api/v1/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// PEM certificate signing request (the key stays on the device).
    pub csr: String,
    /// Boot MAC address: which machine this is.
    pub mac: String,
    /// Serial number, informational.
    #[serde(default)]
    pub serial: Option<String>,
    /// One-time bootstrap token, if the device was given one.
    #[serde(default)]
    pub token: Option<String>,
}

impl EnrollRequest {
    /// Parses an enrollment body.
    ///
    /// # Errors
    /// [`WireError`].
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let r: Self = capped(bytes, MAX_ENROLL_BYTES)?;
        if let Some(s) = &r.serial {
            check_text("serial", s, tugboot_store::MAX_NAME_LEN)?;
        }
        if let Some(t) = &r.token {
            check_text("token", t, 256)?;
        }
        Ok(r)
    }
}

/// Answer to an enrollment (and to a renewal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// `issued` or `pending`.
    pub status: String,
    /// The device id the certificate names.
    pub device_id: i64,
    /// PEM of the issued certificate (`issued` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// PEM of the CA (`issued` only): what the device pins for the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Expiry of the certificate, unix seconds (`issued` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
}

/// `POST /api/v1/device/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM CSR for the new key (may be the same key).
    pub csr: String,
}

/// What the device should run (agent's `Assignment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Where the signed manifest envelope is.
    pub manifest_url: String,
    /// Artifact URLs by lowercase hex SHA-256.
    pub artifacts: BTreeMap<String, String>,
    /// The rollout that assigned it (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<i64>,
}

/// `POST /api/v1/admin/rollouts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// Target image.
    pub image_name: String,
    /// Target version.
    pub image_version: u64,
    /// Group selector (see `docs/rollouts.md`).
    pub selector: String,
    /// Stages.
    pub stages: Vec<tugboot_store::RolloutStage>,
    /// Failure rate (‰) above which the rollout pauses.
    pub max_failure_permille: u16,
    /// Reports needed before the rate is judged.
    #[serde(default = "default_min_reports")]
    pub min_reports: u32,
}

const fn default_min_reports() -> u32 {
    1
}

/// Entry point shared with the fuzz target and the seed test: parse a body as every kind of
/// request. Must never panic.
pub fn fuzz_bodies(data: &[u8]) {
    if let Ok(r) = DeviceReport::parse(data) {
        let _ = r.running_slot();
        let _ = r.running_version();
        let again = serde_json::to_vec(&r).expect("a parsed report serializes");
        assert_eq!(DeviceReport::parse(&again).ok().as_ref(), Some(&r));
    }
    let _ = EnrollRequest::parse(data);
    let _ = capped::<CreateRollout>(data, MAX_ENROLL_BYTES);
    let _ = crate::ca::peer_identity(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::ca::parse_device_id(text);
        let _ = crate::server::Selector::parse(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_outcome_report_parses() {
        let body = br#"{"id":"b1-3","seq":3,"boot_id":"b1","agent":"0.1.0",
            "outcome":{"outcome":"committed","name":"edge","version":42,"slot":"B"}}"#;
        let r = DeviceReport::parse(body).unwrap();
        assert_eq!(r.running_slot(), Slot::B);
        assert_eq!(r.running_version(), 42);
        assert_eq!(r.outcome.as_ref().unwrap().kind(), "committed");
        let body = br#"{"id":"b1-4","seq":4,"boot_id":"b1","agent":"0.1.0",
            "outcome":{"outcome":"failed","name":"edge","version":43,"reason":"sha256 mismatch"}}"#;
        let r = DeviceReport::parse(body).unwrap();
        assert_eq!(r.running_slot(), Slot::A);
        assert_eq!(r.running_version(), 0);
    }

    #[test]
    fn status_report_parses() {
        let body = br#"{"id":"r1","boot_id":"b","slot":"a","image_version":7,
            "checks":{"nginx":"ok"},"uptime_secs":30,"last_error":null}"#;
        let r = DeviceReport::parse(body).unwrap();
        assert_eq!(r.running_slot(), Slot::A);
        assert_eq!(r.running_version(), 7);
    }

    #[test]
    fn bad_reports_are_refused() {
        for body in [
            &br#"{"id":"","boot_id":"b","slot":"A"}"#[..],
            br#"{"id":"x","boot_id":"b"}"#,
            br#"{"id":"x","boot_id":"b","slot":"C"}"#,
            br#"{"id":"x","boot_id":"b","slot":"A","surprise":1}"#,
            br#"{"id":"x","boot_id":"b","slot":"A","image_version":18446744073709551615}"#,
            br#"{"id":"x\n","boot_id":"b","slot":"A"}"#,
            br#"{"id":"x","boot_id":"b","outcome":{"outcome":"committed","name":"e","version":1}}"#,
            b"[]",
            b"",
        ] {
            assert!(
                DeviceReport::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let big = vec![b' '; MAX_REPORT_BYTES + 1];
        assert!(matches!(
            DeviceReport::parse(&big),
            Err(WireError::TooLarge { .. })
        ));
    }
}
