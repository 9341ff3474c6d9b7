//! Types the store persists. The fleet's domain types (machines with their facts, rollouts) are
//! defined by the fleet core (`tugboot-fleet`) and re-exported from the crate root; the rest
//! (images as stored, reports, certificates) are the store's own.
//!
//! Timestamps are unix seconds (`i64`) and always come from the caller (`now` parameters), so
//! the fleet logic above can be driven by simulated time in tests.

use std::fmt;

use serde::{Deserialize, Serialize};
use tugboot_fleet::facts::{Facts, MAX_FACTS};
use tugboot_wire::Mac;

use crate::StoreError;

/// Longest name-like text field (serial, image name, host name, ...), in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest manifest stored with an image (the firmware crate caps manifests well below this).
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Largest serialized check-results JSON of one report.
pub const MAX_CHECKS_BYTES: usize = 64 * 1024;
/// Longest `last_error` of one report; longer messages are rejected, not truncated.
pub const MAX_ERROR_LEN: usize = 4096;
/// Most sightings written in one batch (one transaction, one fsync).
pub const MAX_SIGHTINGS_PER_BATCH: usize = 4096;

pub(crate) fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.len() > max {
        return Err(StoreError::invalid(
            field,
            format!("{} bytes, at most {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(StoreError::invalid(field, "contains control characters"));
    }
    Ok(())
}

pub(crate) fn check_opt_len(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<(), StoreError> {
    value.map_or(Ok(()), |v| check_len(field, v, max))
}

/// `u64` values (versions, uptimes) are stored as signed 64-bit integers.
pub(crate) fn u64_to_db(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::invalid(field, format!("{value} is above {}", i64::MAX)))
}

pub(crate) fn u64_from_db(
    table: &'static str,
    column: &'static str,
    value: i64,
) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::corrupt(table, column, format!("negative value {value}")))
}

pub(crate) fn mac_from_db(table: &'static str, value: &str) -> Result<Mac, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::corrupt(table, "mac", format!("{value:?} is not a MAC address")))
}

/// What the network saw of one machine: the input of [`crate::Store::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// Boot MAC: the key (a machine is created on first sight).
    pub mac: Mac,
    /// Observed facts (any other source is refused: observations never carry authority).
    pub facts: Facts,
}

impl Sighting {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.facts.len() > MAX_FACTS {
            return Err(StoreError::invalid("facts", "too many"));
        }
        if let Some((k, f)) = self.facts.iter().find(|(_, f)| f.source.is_authenticated()) {
            return Err(StoreError::invalid(
                "facts",
                format!("{k} is {}: sightings carry observed facts only", f.source),
            ));
        }
        Ok(())
    }
}

/// What syncing the profiles file's machines changed ([`crate::Store::declare_machines`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeclareSummary {
    /// Machines created (state `adopted`).
    pub created: usize,
    /// Declared facts written or changed.
    pub facts_written: usize,
    /// Declared facts withdrawn (no longer in the file).
    pub facts_withdrawn: usize,
}

/// One immutable, signed image release, as stored (the artifacts live in the blob directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Image name (e.g. `edge-gateway`).
    pub name: String,
    /// Monotonic version.
    pub version: u64,
    /// SHA-256 of `manifest`, 64 lowercase hex characters.
    pub manifest_digest: String,
    /// The signed manifest bytes, exactly as published.
    pub manifest: Vec<u8>,
    /// Whether it is in the catalogue (netboot, rollouts, devices). The only mutable field:
    /// `images yank` withdraws, `images publish` publishes again.
    pub published: bool,
    /// When it was stored.
    pub created_at: i64,
}

impl Image {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        check_len("image name", &self.name, MAX_NAME_LEN)?;
        u64_to_db("image version", self.version)?;
        let d = &self.manifest_digest;
        if d.len() != 64
            || !d
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(StoreError::invalid(
                "manifest_digest",
                "expected 64 lowercase hex characters",
            ));
        }
        if self.manifest.len() > MAX_MANIFEST_BYTES {
            return Err(StoreError::invalid(
                "manifest",
                format!(
                    "{} bytes, at most {MAX_MANIFEST_BYTES}",
                    self.manifest.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Whether a write created something new or found it already there (idempotent writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored now.
    Inserted,
    /// An identical record was already stored; nothing changed.
    AlreadyPresent,
}

/// A/B slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }

    pub(crate) fn from_db(value: &str) -> Result<Self, StoreError> {
        match value {
            "a" => Ok(Self::A),
            "b" => Ok(Self::B),
            other => Err(StoreError::corrupt(
                "reports",
                "slot",
                format!("unknown slot {other:?}"),
            )),
        }
    }
}

/// How an update ended on a device, as far as rollouts are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// Booted, healthy, committed: the only outcome that counts as updated.
    Committed,
    /// Tried and fell back.
    RolledBack,
    /// Never became bootable.
    Failed,
    /// Power lost while downloading; the agent starts again.
    Interrupted,
    /// The device refused the manifest (wrong board, expired, rollback, signatures).
    Rejected,
    /// The installer wrote the image to the disk (slot A) and set the bootloader up: the
    /// machine's first image, not an update.
    Installed,
}

impl OutcomeKind {
    /// Every kind.
    pub const ALL: [Self; 6] = [
        Self::Committed,
        Self::RolledBack,
        Self::Failed,
        Self::Interrupted,
        Self::Rejected,
        Self::Installed,
    ];

    /// The stored (and wire) text.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::RolledBack => "rolled-back",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Rejected => "rejected",
            Self::Installed => "installed",
        }
    }

    pub(crate) fn from_db(value: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == value)
            .ok_or_else(|| {
                StoreError::corrupt("reports", "outcome", format!("unknown outcome {value:?}"))
            })
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The update outcome a report carries, indexed so a rollout reads its members' outcomes in
/// one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOutcome {
    /// How it ended.
    pub kind: OutcomeKind,
    /// Image name.
    pub image_name: String,
    /// Image version.
    pub image_version: u64,
}

/// A health or outcome report from a device's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Reporting device (from its certificate, never from the report body).
    pub device: tugboot_fleet::MachineId,
    /// Chosen by the agent, stable across retries: `(device, report_id)` makes a retried report
    /// count once.
    pub report_id: String,
    /// Boot the report is about (the kernel's boot id).
    pub boot_id: String,
    /// Slot the device is running from, when the report says.
    pub slot: Option<Slot>,
    /// Image version running (0 = unknown).
    pub image_version: u64,
    /// The report as sent by the agent.
    pub checks: serde_json::Value,
    /// Uptime at the time of the report, seconds.
    pub uptime_secs: u64,
    /// Last error the agent saw, if any.
    pub last_error: Option<String>,
    /// The update outcome, if the report carries one.
    pub outcome: Option<ReportOutcome>,
    /// When the server received it.
    pub received_at: i64,
}

impl Report {
    /// The image (`name@version`) the report says the machine now runs: that of a `committed`
    /// or `installed` outcome ([`Store::insert_report`](crate::Store::insert_report) records
    /// it as the machine's last booted image).
    #[must_use]
    pub fn booted_image(&self) -> Option<String> {
        self.outcome
            .as_ref()
            .filter(|o| matches!(o.kind, OutcomeKind::Committed | OutcomeKind::Installed))
            .map(|o| format!("{}@{}", o.image_name, o.image_version))
    }

    pub(crate) fn checks_to_db(&self) -> Result<String, StoreError> {
        check_len("report_id", &self.report_id, 128)?;
        check_len("boot_id", &self.boot_id, 128)?;
        u64_to_db("image_version", self.image_version)?;
        u64_to_db("uptime_secs", self.uptime_secs)?;
        if let Some(o) = &self.outcome {
            check_len("outcome image name", &o.image_name, MAX_NAME_LEN)?;
            u64_to_db("outcome image version", o.image_version)?;
        }
        if let Some(e) = self.last_error.as_ref().filter(|e| e.len() > MAX_ERROR_LEN) {
            return Err(StoreError::invalid(
                "last_error",
                format!("{} bytes, at most {MAX_ERROR_LEN}", e.len()),
            ));
        }
        let text = serde_json::to_string(&self.checks)
            .map_err(|e| StoreError::invalid("checks", e.to_string()))?;
        if text.len() > MAX_CHECKS_BYTES {
            return Err(StoreError::invalid(
                "checks",
                format!("{} bytes, at most {MAX_CHECKS_BYTES}", text.len()),
            ));
        }
        Ok(text)
    }
}

/// The latest outcome of one device for one image ([`crate::Store::image_outcomes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceVerdict {
    /// The device.
    pub device: tugboot_fleet::MachineId,
    /// How its update ended.
    pub kind: OutcomeKind,
    /// When the report was received.
    pub at: i64,
}

/// A certificate issued to a device at enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// Certificate serial number, lowercase hex (unique).
    pub serial: String,
    /// The device it identifies.
    pub device: tugboot_fleet::MachineId,
    /// Issue time.
    pub issued_at: i64,
    /// Expiry (`notAfter`).
    pub not_after: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

impl DeviceCert {
    /// True if the certificate may be used at `now`: not revoked and not expired.
    #[must_use]
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now <= self.not_after
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let s = &self.serial;
        if s.is_empty()
            || s.len() > 40
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(StoreError::invalid(
                "serial",
                "expected 1..=40 lowercase hex characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tugboot_fleet::facts::{Observer, Source};

    #[test]
    fn enums_round_trip_through_text() {
        for k in OutcomeKind::ALL {
            assert_eq!(OutcomeKind::from_db(k.as_str()).unwrap(), k);
        }
        assert!(matches!(
            OutcomeKind::from_db("Committed"),
            Err(StoreError::CorruptRow { .. })
        ));
        assert_eq!(Slot::from_db("b").unwrap(), Slot::B);
    }

    #[test]
    fn sightings_carry_observed_facts_only() {
        let mut facts = Facts::new();
        facts
            .offer_value("arch", "arm64", Source::Observed(Observer::Dhcp), 1)
            .unwrap();
        let mut s = Sighting {
            mac: Mac([2, 0, 0, 0, 0, 1]),
            facts,
        };
        assert!(s.validate().is_ok());
        s.facts
            .offer_value("board", "x", Source::Attested, 1)
            .unwrap();
        assert!(s.validate().is_err());
    }
}
