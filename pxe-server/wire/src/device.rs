//! The device API's JSON: what the on-device agent and the server exchange, one definition for
//! both sides (`docs/agent.md`, "Device API contract").
//!
//! Every document arriving from the other side goes through a `parse` function here: a size cap
//! before any parsing, then serde, then the checks types cannot express (lengths, control
//! characters, digests, URLs). What passes is safe to log, store and act on; nothing here
//! panics on any input (fuzzed through [`fuzz_device_json`]).
//!
//! Compatibility: the shapes accept every document the server accepted before this crate
//! existed (lowercase slots, `checks` as any JSON, status reports without an outcome). New,
//! optional fields are additive; the update outcome `rejected` is new.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::Mac;

/// Largest assignment document.
pub const MAX_ASSIGNMENT_BYTES: usize = 64 * 1024;
/// Largest report body (the server stores the whole report; its column holds 64 KiB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Largest enrollment or renewal request (a CSR plus a few identifiers).
pub const MAX_ENROLL_BYTES: usize = 24 * 1024;
/// Largest enrollment answer (two PEM certificates).
pub const MAX_ENROLL_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest report id, boot id or agent version.
pub const MAX_ID_LEN: usize = 128;
/// Longest image, board, check, interface or disk name.
pub const MAX_NAME_LEN: usize = 255;
/// Longest reason, error or detail text.
pub const MAX_TEXT_LEN: usize = 4096;
/// Longest URL in an assignment.
pub const MAX_URL_LEN: usize = 4096;
/// Most entries in each inventory list (disks, interfaces).
pub const MAX_INVENTORY_ITEMS: usize = 64;
/// Longest `{"error": …}` reason kept from a refusal (cut on a character boundary).
pub const MAX_ERROR_REASON: usize = 300;

/// A document that is not what the device API expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Larger than the cap; nothing was parsed.
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

/// Size cap, then serde.
///
/// # Errors
/// [`WireError::TooLarge`] or [`WireError::Malformed`].
pub fn capped<'a, T: Deserialize<'a>>(bytes: &'a [u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Text of 1..=`max` bytes without control characters.
fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), WireError> {
    if value.is_empty() || value.len() > max {
        return Err(invalid(field, format!("expected 1..={max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

/// Free text (reasons, errors): at most `max` bytes, any characters (they are shown, not
/// interpreted).
fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), WireError> {
    if value.len() > max {
        return Err(invalid(field, format!("at most {max} bytes")));
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The store keeps versions and ids as signed 64-bit integers.
fn check_i64(field: &'static str, v: u64) -> Result<(), WireError> {
    if i64::try_from(v).is_err() {
        return Err(invalid(field, "too large"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Slot

/// One of the two A/B slots: the agent, its state file, boot environments and the server all
/// spell it `A`/`B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A (the default when an environment names none).
    #[serde(rename = "A", alias = "a")]
    A,
    /// Slot B.
    #[serde(rename = "B", alias = "b")]
    B,
}

impl Slot {
    /// The other slot.
    #[must_use]
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    /// `"A"` or `"B"`, the spelling stored in environments and tested by boot scripts.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::B => "B",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that is not `A` or `B`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a slot (A or B)")]
pub struct SlotParseError(pub String);

impl FromStr for Slot {
    type Err = SlotParseError;

    /// Strict: `A` or `B` (kernel command lines and environments never say `a`). JSON also
    /// accepts lowercase, as the server always did.
    fn from_str(s: &str) -> Result<Self, SlotParseError> {
        match s {
            "A" => Ok(Self::A),
            "B" => Ok(Self::B),
            _ => Err(SlotParseError(s.chars().take(64).collect())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Assignment

/// What the server wants the device to run: `GET /api/v1/device/assignment` → `200` with this,
/// or `204`. URLs are absolute paths on the server (`/…`) or `http(s)://` URLs with a host.
/// Unknown fields are ignored (a newer server may add some): integrity never comes from this
/// document, the manifest is signed and artifacts are checked by the digest and size it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Where the signed manifest envelope is.
    pub manifest_url: String,
    /// Artifact URLs by lowercase hex SHA-256.
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
    /// The rollout that assigned it. The agent treats a new rollout of the same manifest as a
    /// new assignment (a refused manifest is tried again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<i64>,
}

impl Assignment {
    /// Parses and checks an assignment: at most [`MAX_ASSIGNMENT_BYTES`], every key a
    /// lowercase SHA-256, every URL a server path or an `http(s)://` URL with a host, without
    /// whitespace or control characters, at most [`MAX_URL_LEN`] bytes.
    ///
    /// # Errors
    /// [`WireError`].
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let a: Self = capped(bytes, MAX_ASSIGNMENT_BYTES)?;
        check_url("manifest_url", &a.manifest_url)?;
        for (digest, target) in &a.artifacts {
            if !is_sha256_hex(digest) {
                return Err(invalid(
                    "artifacts",
                    format!(
                        "key {:?} is not a lowercase sha256",
                        digest.chars().take(80).collect::<String>()
                    ),
                ));
            }
            check_url("artifacts", target)?;
        }
        Ok(a)
    }

    /// The URL of the artifact with this lowercase hex SHA-256.
    #[must_use]
    pub fn artifact_url(&self, sha256_hex: &str) -> Option<&str> {
        self.artifacts.get(sha256_hex).map(String::as_str)
    }
}

/// A server path (`/x`, not `//host`) or an `http(s)://` URL naming a host.
fn check_url(field: &'static str, u: &str) -> Result<(), WireError> {
    // `https:///x` would only fail later, in the transport.
    let has_host = |rest: &str| !rest.is_empty() && !rest.starts_with(['/', '?', '#', '@', ':']);
    let ok = (u.starts_with('/') && !u.starts_with("//"))
        || u.strip_prefix("https://").is_some_and(has_host)
        || u.strip_prefix("http://").is_some_and(has_host);
    if ok && u.len() <= MAX_URL_LEN && !u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("bad URL {:?}", u.chars().take(120).collect::<String>()),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Update outcome

/// Why the device refused a manifest before writing anything: the firmware crate's stable
/// error code (`wrong-board`, `expired`, `rollback`, `bad-signature`, …, see
/// `VerifyError::code`; the agent adds `no-slot-artifact` and `several-slot-artifacts`) and
/// the SHA-256 of the envelope it was given, which links the refusal to the assignment even
/// when the manifest's own name and version cannot be trusted or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable reason, lowercase kebab-case.
    pub code: String,
    /// SHA-256 (lowercase hex) of the manifest envelope refused.
    pub manifest_sha256: String,
}

/// How an update ended: the agent's `last_result` and the `outcome` of its reports.
///
/// JSON (`{"outcome": …}`):
///
/// - `committed {name, version, slot}`: booted, healthy, committed — the only success;
/// - `rolled-back {name, version, slot, reason}`: tried, and the device went back;
/// - `failed {name, version, reason}`: never became bootable (bad artifact, slot error);
/// - `rejected {name, version, reason, code, manifest_sha256}`: the device refused the
///   manifest itself (wrong board, expired, below the rollback floor, bad signature, …) and
///   wrote nothing. `name`/`version` are the manifest's as far as it could be read (empty and
///   0 when it could not);
/// - `interrupted {name, version}`: a download was abandoned (the assignment changed);
/// - `installed {name, version, slot}`: the installer (`tugboot-agent install-disk`) wrote the
///   image to a new disk, verified, into `slot` (A), with the bootloader, configuration and
///   certificate beside it; the machine boots it from its disk next. Not an update: it does
///   not count for or against a rollout, and the first boot of the disk reports the rest.
///
/// A rejection is a failure that happened before any byte was written, so in Rust it is
/// [`Outcome::Failed`] with `rejected` set: code that counts failures (rollouts) counts it
/// without knowing about it, and only JSON spells it differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "OutcomeJson", try_from = "OutcomeJson")]
pub enum Outcome {
    /// The new image booted, passed its health checks and is committed.
    Committed {
        /// Image name.
        name: String,
        /// Image version (the new rollback floor).
        version: u64,
        /// The slot it runs from.
        slot: Slot,
    },
    /// The new image was tried and the device went back to the committed slot.
    RolledBack {
        /// Image name.
        name: String,
        /// Image version.
        version: u64,
        /// The slot it runs from again.
        slot: Slot,
        /// Why.
        reason: String,
    },
    /// The image never became bootable; the bootloader was never armed for it.
    Failed {
        /// Image name.
        name: String,
        /// Image version.
        version: u64,
        /// Why.
        reason: String,
        /// Set when the manifest itself was refused (JSON outcome `rejected`).
        rejected: Option<Rejection>,
    },
    /// A download was abandoned before it completed.
    Interrupted {
        /// Image name.
        name: String,
        /// Image version.
        version: u64,
    },
    /// The installer wrote the image to the machine's disk (verified), which boots it next.
    Installed {
        /// Image name.
        name: String,
        /// Image version.
        version: u64,
        /// The slot it was written to (A).
        slot: Slot,
    },
}

/// The JSON form of [`Outcome`].
#[derive(Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case", deny_unknown_fields)]
enum OutcomeJson {
    Committed {
        name: String,
        version: u64,
        slot: Slot,
    },
    RolledBack {
        name: String,
        version: u64,
        slot: Slot,
        reason: String,
    },
    Failed {
        name: String,
        version: u64,
        reason: String,
    },
    Rejected {
        name: String,
        version: u64,
        reason: String,
        code: String,
        manifest_sha256: String,
    },
    Interrupted {
        name: String,
        version: u64,
    },
    Installed {
        name: String,
        version: u64,
        slot: Slot,
    },
}

impl From<Outcome> for OutcomeJson {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Committed {
                name,
                version,
                slot,
            } => Self::Committed {
                name,
                version,
                slot,
            },
            Outcome::RolledBack {
                name,
                version,
                slot,
                reason,
            } => Self::RolledBack {
                name,
                version,
                slot,
                reason,
            },
            Outcome::Failed {
                name,
                version,
                reason,
                rejected: None,
            } => Self::Failed {
                name,
                version,
                reason,
            },
            Outcome::Failed {
                name,
                version,
                reason,
                rejected: Some(r),
            } => Self::Rejected {
                name,
                version,
                reason,
                code: r.code,
                manifest_sha256: r.manifest_sha256,
            },
            Outcome::Interrupted { name, version } => Self::Interrupted { name, version },
            Outcome::Installed {
                name,
                version,
                slot,
            } => Self::Installed {
                name,
                version,
                slot,
            },
        }
    }
}

impl From<OutcomeJson> for Outcome {
    fn from(o: OutcomeJson) -> Self {
        match o {
            OutcomeJson::Committed {
                name,
                version,
                slot,
            } => Self::Committed {
                name,
                version,
                slot,
            },
            OutcomeJson::RolledBack {
                name,
                version,
                slot,
                reason,
            } => Self::RolledBack {
                name,
                version,
                slot,
                reason,
            },
            OutcomeJson::Failed {
                name,
                version,
                reason,
            } => Self::Failed {
                name,
                version,
                reason,
                rejected: None,
            },
            OutcomeJson::Rejected {
                name,
                version,
                reason,
                code,
                manifest_sha256,
            } => Self::Failed {
                name,
                version,
                reason,
                rejected: Some(Rejection {
                    code,
                    manifest_sha256,
                }),
            },
            OutcomeJson::Interrupted { name, version } => Self::Interrupted { name, version },
            OutcomeJson::Installed {
                name,
                version,
                slot,
            } => Self::Installed {
                name,
                version,
                slot,
            },
        }
    }
}

impl Outcome {
    /// Image name and version the outcome is about.
    #[must_use]
    pub fn image(&self) -> (&str, u64) {
        match self {
            Self::Committed { name, version, .. }
            | Self::RolledBack { name, version, .. }
            | Self::Failed { name, version, .. }
            | Self::Interrupted { name, version }
            | Self::Installed { name, version, .. } => (name, *version),
        }
    }

    /// `committed`, `rolled-back`, `failed`, `rejected`, `interrupted`, `installed`: the JSON
    /// name.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Committed { .. } => "committed",
            Self::RolledBack { .. } => "rolled-back",
            Self::Failed { rejected: None, .. } => "failed",
            Self::Failed {
                rejected: Some(_), ..
            } => "rejected",
            Self::Interrupted { .. } => "interrupted",
            Self::Installed { .. } => "installed",
        }
    }

    /// The refusal, for a rejected manifest.
    #[must_use]
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Failed { rejected, .. } => rejected.as_ref(),
            _ => None,
        }
    }

    /// The reason, for outcomes that have one.
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::RolledBack { reason, .. } | Self::Failed { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Checks lengths and values: name 1..=[`MAX_NAME_LEN`] bytes without control characters
    /// (a rejection may have an empty name: the manifest could not be read), version fits the
    /// store, reason at most [`MAX_TEXT_LEN`] bytes, rejection code 1..=64 of `a-z 0-9 -`,
    /// manifest digest a lowercase SHA-256.
    ///
    /// # Errors
    /// [`WireError::Invalid`].
    pub fn validate(&self) -> Result<(), WireError> {
        let (name, version) = self.image();
        if !(self.rejection().is_some() && name.is_empty()) {
            check_text("outcome.name", name, MAX_NAME_LEN)?;
        }
        check_i64("outcome.version", version)?;
        if let Some(reason) = self.reason() {
            check_len("outcome.reason", reason, MAX_TEXT_LEN)?;
        }
        if let Some(r) = self.rejection() {
            let code_ok = !r.code.is_empty()
                && r.code.len() <= 64
                && r.code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !code_ok {
                return Err(invalid("outcome.code", "expected 1..=64 of a-z 0-9 -"));
            }
            if !is_sha256_hex(&r.manifest_sha256) {
                return Err(invalid(
                    "outcome.manifest_sha256",
                    "expected a lowercase sha256",
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reports

/// One health check's result in a status report (`checks` is a JSON object of these by check
/// name when the agent sends it; the server keeps `checks` as any JSON for older senders).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    /// Passed.
    pub ok: bool,
    /// `command`, `http`, `file`, `service`.
    pub kind: String,
    /// Why it failed (or what it saw), one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How long it took, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millis: Option<u64>,
}

/// An update in progress, in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStatus {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: u64,
    /// `downloading`, `installed`, `trying`, `rolling-back`.
    pub phase: String,
    /// Bytes of the artifact safely in the slot (downloading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloaded: Option<u64>,
    /// Size of the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A block device in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Kernel name (`mmcblk0`, `nvme0n1`, `sda`).
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Model, when the kernel knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Removable medium (USB stick, SD card in a reader).
    #[serde(default)]
    pub removable: bool,
}

/// A network interface in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Kernel name (`eth0`, `enp1s0`, `wlan0`).
    pub name: String,
    /// Hardware address.
    pub mac: Mac,
}

/// What the device is made of, as the running kernel sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The board configured on the device (a name of the board catalogue).
    pub board: String,
    /// CPU architecture of the running agent (`x86_64`, `aarch64`).
    pub arch: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Hardware model (device tree `model`, or DMI vendor and product).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number (device tree `serial-number`, or DMI product serial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Online CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `MemTotal`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Block devices (no loop, RAM or partition devices).
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Network interfaces with a hardware address (no loopback).
    #[serde(default)]
    pub interfaces: Vec<Interface>,
}

impl Inventory {
    fn validate(&self) -> Result<(), WireError> {
        check_text("inventory.board", &self.board, MAX_NAME_LEN)?;
        check_text("inventory.arch", &self.arch, MAX_NAME_LEN)?;
        check_text("inventory.kernel", &self.kernel, MAX_NAME_LEN)?;
        for (field, v) in [
            ("inventory.model", &self.model),
            ("inventory.serial", &self.serial),
        ] {
            if let Some(v) = v {
                check_text(field, v, MAX_NAME_LEN)?;
            }
        }
        if self.disks.len() > MAX_INVENTORY_ITEMS {
            return Err(invalid(
                "inventory.disks",
                format!("at most {MAX_INVENTORY_ITEMS}"),
            ));
        }
        if self.interfaces.len() > MAX_INVENTORY_ITEMS {
            return Err(invalid(
                "inventory.interfaces",
                format!("at most {MAX_INVENTORY_ITEMS}"),
            ));
        }
        for d in &self.disks {
            check_text("inventory.disks.name", &d.name, MAX_NAME_LEN)?;
            check_i64("inventory.disks.size_bytes", d.size_bytes)?;
            if let Some(m) = &d.model {
                check_text("inventory.disks.model", m, MAX_NAME_LEN)?;
            }
        }
        for i in &self.interfaces {
            check_text("inventory.interfaces.name", &i.name, MAX_NAME_LEN)?;
        }
        if let Some(m) = self.memory_bytes {
            check_i64("inventory.memory_bytes", m)?;
        }
        Ok(())
    }
}

/// What a device POSTs to `/api/v1/device/reports`: an update outcome, a status report, or
/// both; the agent queues each durably before sending and the server stores it before
/// answering `2xx`. `(device, id)` makes a retried report count once.
///
/// Status fields (all optional): `slot`, `image_name`, `image_version`, `checks`,
/// `uptime_secs`, `last_error`, `update`, `inventory`. A report without an outcome must name its
/// slot. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceReport {
    /// Unique per report and stable across retries (`<boot id>-<seq>` from the agent).
    pub id: String,
    /// The agent's sequence number: increases with every report of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Boot the report was made in.
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
    pub slot: Option<Slot>,
    /// Image running (committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Version running (committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<u64>,
    /// Health-check results: from the agent an object of [`CheckResult`] by check name; any
    /// JSON from older senders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<serde_json::Value>,
    /// Seconds since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    /// The last error the agent saw (one line), `null` when its last cycle went well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// An update in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateStatus>,
    /// The hardware: sent at start and whenever it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
}

impl DeviceReport {
    /// Parses and checks a report body (at most [`MAX_REPORT_BYTES`]).
    ///
    /// # Errors
    /// [`WireError`].
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let r: Self = capped(bytes, MAX_REPORT_BYTES)?;
        r.validate()?;
        Ok(r)
    }

    /// The checks [`DeviceReport::parse`] makes after serde.
    ///
    /// # Errors
    /// [`WireError::Invalid`].
    pub fn validate(&self) -> Result<(), WireError> {
        check_text("id", &self.id, MAX_ID_LEN)?;
        check_text("boot_id", &self.boot_id, MAX_ID_LEN)?;
        if let Some(a) = &self.agent {
            check_text("agent", a, MAX_ID_LEN)?;
        }
        if let Some(e) = &self.last_error {
            check_len("last_error", e, MAX_TEXT_LEN)?;
        }
        if let Some(n) = &self.image_name {
            check_text("image_name", n, MAX_NAME_LEN)?;
        }
        if let Some(o) = &self.outcome {
            o.validate()?;
        }
        for (field, v) in [
            ("image_version", self.image_version),
            ("uptime_secs", self.uptime_secs),
            ("seq", self.seq),
        ] {
            if let Some(v) = v {
                check_i64(field, v)?;
            }
        }
        if let Some(u) = &self.update {
            check_text("update.name", &u.name, MAX_NAME_LEN)?;
            check_text("update.phase", &u.phase, 64)?;
            check_i64("update.version", u.version)?;
        }
        if let Some(i) = &self.inventory {
            i.validate()?;
        }
        if self.outcome.is_none() && self.slot.is_none() {
            return Err(invalid(
                "slot",
                "a report without an outcome must name its slot",
            ));
        }
        Ok(())
    }

    /// The slot the device runs from: the status field, else the outcome's (`committed`,
    /// `rolled-back`); `None` for failed, rejected and interrupted outcomes, which name none.
    #[must_use]
    pub fn running_slot(&self) -> Option<Slot> {
        let from_outcome = match &self.outcome {
            Some(Outcome::Committed { slot, .. } | Outcome::RolledBack { slot, .. }) => Some(*slot),
            _ => None,
        };
        self.slot.or(from_outcome)
    }

    /// The image version the device runs: the status field, else the committed version, else
    /// 0 (unknown).
    #[must_use]
    pub fn running_version(&self) -> u64 {
        match (&self.image_version, &self.outcome) {
            (Some(v), _) => *v,
            (None, Some(Outcome::Committed { version, .. })) => *version,
            _ => 0,
        }
    }

    /// `checks` read as the agent writes it, if it is that shape.
    #[must_use]
    pub fn check_results(&self) -> Option<BTreeMap<String, CheckResult>> {
        self.checks
            .as_ref()
            .and_then(|c| serde_json::from_value(c.clone()).ok())
    }
}

// ---------------------------------------------------------------------------------------------
// Enrollment

/// `POST /api/v1/enroll` (no client certificate): a new key's CSR, the machine's boot MAC, and
/// a one-time bootstrap token if the device was given one. Without a token the machine must be
/// approved (pre-authorised by MAC, or approved while the device waits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// PEM certificate signing request (the key stays on the device).
    pub csr: String,
    /// Boot MAC address (`aa:bb:cc:dd:ee:ff`): which machine this is.
    pub mac: String,
    /// Serial number, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// One-time bootstrap token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl EnrollRequest {
    /// Parses an enrollment body (at most [`MAX_ENROLL_BYTES`]).
    ///
    /// # Errors
    /// [`WireError`]; `mac` must be a MAC address.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let r: Self = capped(bytes, MAX_ENROLL_BYTES)?;
        if r.mac.parse::<Mac>().is_err() {
            return Err(invalid("mac", "not a MAC address"));
        }
        if let Some(s) = &r.serial {
            check_text("serial", s, MAX_NAME_LEN)?;
        }
        if let Some(t) = &r.token {
            check_text("token", t, 256)?;
        }
        Ok(r)
    }
}

/// `POST /api/v1/device/renew` over mutual TLS, in the last part of the certificate's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM CSR (the agent re-certifies its key).
    pub csr: String,
}

impl RenewRequest {
    /// Parses a renewal body (at most [`MAX_ENROLL_BYTES`]).
    ///
    /// # Errors
    /// [`WireError`].
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        capped(bytes, MAX_ENROLL_BYTES)
    }
}

/// Answer to an enrollment or a renewal: `200 {"status": "issued", …}` or
/// `202 {"status": "pending", "device_id"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// `issued` or `pending`.
    pub status: String,
    /// The device id the certificate names.
    pub device_id: i64,
    /// PEM of the issued certificate (`issued` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// PEM of the CA (`issued` only): what the device pins for the server from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Expiry of the certificate, unix seconds (`issued` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
}

/// An enrollment answer, checked: what the agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// A certificate was issued.
    Issued {
        /// Device id.
        device_id: i64,
        /// PEM certificate.
        certificate: String,
        /// PEM of the CA.
        ca: String,
        /// Expiry, unix seconds, as the server says (the agent reads the certificate itself).
        not_after: Option<i64>,
    },
    /// Waiting for the operator's approval.
    Pending {
        /// Device id.
        device_id: i64,
    },
}

impl EnrollResponse {
    /// Parses an enrollment answer (at most [`MAX_ENROLL_RESPONSE_BYTES`]): `issued` must carry
    /// a certificate and the CA, each a PEM block of at most 16 KiB.
    ///
    /// # Errors
    /// [`WireError`].
    pub fn parse(bytes: &[u8]) -> Result<Enrolled, WireError> {
        let r: Self = capped(bytes, MAX_ENROLL_RESPONSE_BYTES)?;
        if r.device_id <= 0 {
            return Err(invalid("device_id", "must be positive"));
        }
        match r.status.as_str() {
            "pending" => Ok(Enrolled::Pending {
                device_id: r.device_id,
            }),
            "issued" => {
                let pem = |field: &'static str, v: Option<String>| {
                    let v = v.ok_or_else(|| invalid(field, "missing"))?;
                    if v.len() > 16 * 1024 || !v.contains("-----BEGIN CERTIFICATE-----") {
                        return Err(invalid(field, "not a PEM certificate of at most 16 KiB"));
                    }
                    Ok(v)
                };
                Ok(Enrolled::Issued {
                    device_id: r.device_id,
                    certificate: pem("certificate", r.certificate)?,
                    ca: pem("ca", r.ca)?,
                    not_after: r.not_after,
                })
            }
            other => Err(invalid(
                "status",
                format!(
                    "{:?} is not issued or pending",
                    other.chars().take(40).collect::<String>()
                ),
            )),
        }
    }
}

/// The body of every refusal: `{"error": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Why.
    pub error: String,
}

impl ErrorBody {
    /// The reason of a refusal body, made safe to print on one line: whitespace runs folded to
    /// one space, control characters dropped, cut to [`MAX_ERROR_REASON`] bytes. `None` when
    /// the body is not `{"error": "…"}` or says nothing.
    #[must_use]
    pub fn reason(bytes: &[u8]) -> Option<String> {
        let body: Self = capped(bytes, 16 * 1024).ok()?;
        let words: Vec<&str> = body.error.split_whitespace().collect();
        let mut line: String = words
            .join(" ")
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        if line.len() > MAX_ERROR_REASON {
            let mut end = MAX_ERROR_REASON;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push('…');
        }
        (!line.is_empty()).then_some(line)
    }
}

/// Entry of the fuzz target and of the seed test: every parser of this module over the same
/// bytes. Never panics; whatever parses re-serializes and parses to the same value.
///
/// # Panics
/// When a round trip does not hold (a bug).
pub fn fuzz_device_json(data: &[u8]) {
    if let Ok(a) = Assignment::parse(data) {
        let again = serde_json::to_vec(&a).expect("an assignment serializes");
        assert_eq!(Assignment::parse(&again).as_ref(), Ok(&a));
    }
    if let Ok(r) = DeviceReport::parse(data) {
        let _ = (r.running_slot(), r.running_version(), r.check_results());
        let again = serde_json::to_vec(&r).expect("a report serializes");
        assert_eq!(DeviceReport::parse(&again).as_ref(), Ok(&r));
    }
    if let Ok(r) = EnrollRequest::parse(data) {
        let again = serde_json::to_vec(&r).expect("a request serializes");
        assert_eq!(EnrollRequest::parse(&again).as_ref(), Ok(&r));
    }
    let _ = RenewRequest::parse(data);
    let _ = EnrollResponse::parse(data);
    if let Some(reason) = ErrorBody::reason(data) {
        assert!(reason.len() <= MAX_ERROR_REASON + '…'.len_utf8());
        assert!(!reason.contains(['\n', '\r']));
    }
    if let Ok(o) = capped::<Outcome>(data, MAX_REPORT_BYTES) {
        let again = serde_json::to_vec(&o).expect("an outcome serializes");
        assert_eq!(
            serde_json::from_slice::<Outcome>(&again).ok().as_ref(),
            Some(&o)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn slot_spelling() {
        assert_eq!("A".parse(), Ok(Slot::A));
        assert_eq!("B".parse(), Ok(Slot::B));
        assert_eq!("a".parse::<Slot>(), Err(SlotParseError("a".into())));
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.to_string(), "B");
        assert_eq!(serde_json::to_string(&Slot::B).unwrap(), "\"B\"");
        // JSON accepts lowercase, as the server always did.
        assert_eq!(serde_json::from_str::<Slot>("\"a\"").unwrap(), Slot::A);
        assert!(serde_json::from_str::<Slot>("\"C\"").is_err());
    }

    #[test]
    fn assignment_parses_and_finds_artifacts() {
        let body = format!(
            r#"{{"manifest_url":"/api/v1/device/manifests/{D}","artifacts":{{"{D}":"https://cdn.example/a"}},"rollout":7,"future":1}}"#
        );
        let a = Assignment::parse(body.as_bytes()).unwrap();
        assert_eq!(a.rollout, Some(7));
        assert_eq!(a.artifact_url(D), Some("https://cdn.example/a"));
        // The server's form without a rollout, and without artifacts.
        let a = Assignment::parse(br#"{"manifest_url":"/m"}"#).unwrap();
        assert_eq!((a.rollout, a.artifacts.len()), (None, 0));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"manifest_url":"/m","artifacts":{}}"#
        );
    }

    #[test]
    fn assignment_rejects_bad_shapes() {
        for body in [
            r#"{"artifacts":{}}"#.to_owned(),
            r#"{"manifest_url":"ftp://x"}"#.to_owned(),
            r#"{"manifest_url":"//evil/x"}"#.to_owned(),
            r#"{"manifest_url":"https:///x"}"#.to_owned(),
            r#"{"manifest_url":"http://:80/x"}"#.to_owned(),
            format!(
                r#"{{"manifest_url":"/m","artifacts":{{"{}":"/a"}}}}"#,
                D.to_uppercase()
            ),
            r#"{"manifest_url":"/m","artifacts":{"abc":"/a"}}"#.to_owned(),
            format!(r#"{{"manifest_url":"/m","artifacts":{{"{D}":"/a b"}}}}"#),
            format!(r#"{{"manifest_url":"/{}"}}"#, "x".repeat(MAX_URL_LEN)),
            "[]".to_owned(),
        ] {
            assert!(Assignment::parse(body.as_bytes()).is_err(), "{body}");
        }
        let big = vec![b' '; MAX_ASSIGNMENT_BYTES + 1];
        assert!(matches!(
            Assignment::parse(&big),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn outcomes_round_trip_in_their_json_form() {
        let rejected = Outcome::Failed {
            name: "edge".into(),
            version: 43,
            reason: "image is not for board \"raspberrypi-4\"".into(),
            rejected: Some(Rejection {
                code: "wrong-board".into(),
                manifest_sha256: D.into(),
            }),
        };
        let json = serde_json::to_value(&rejected).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"outcome": "rejected", "name": "edge", "version": 43,
                "reason": "image is not for board \"raspberrypi-4\"",
                "code": "wrong-board", "manifest_sha256": D})
        );
        assert_eq!(serde_json::from_value::<Outcome>(json).unwrap(), rejected);
        assert_eq!(rejected.kind(), "rejected");
        let failed = Outcome::Failed {
            name: "edge".into(),
            version: 43,
            reason: "sha256 mismatch".into(),
            rejected: None,
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({"outcome": "failed", "name": "edge", "version": 43, "reason": "sha256 mismatch"})
        );
        for text in [
            r#"{"outcome":"committed","name":"e","version":1,"slot":"B"}"#,
            r#"{"outcome":"rolled-back","name":"e","version":1,"slot":"a","reason":"r"}"#,
            r#"{"outcome":"interrupted","name":"e","version":1}"#,
        ] {
            let o: Outcome = serde_json::from_str(text).unwrap();
            o.validate().unwrap();
        }
        for bad in [
            r#"{"outcome":"won","name":"e","version":1}"#,
            r#"{"outcome":"failed","name":"e","version":1,"reason":"r","code":"x"}"#,
            r#"{"outcome":"rejected","name":"e","version":1,"reason":"r","code":"x"}"#,
            r#"{"outcome":"committed","name":"e","version":1}"#,
        ] {
            assert!(serde_json::from_str::<Outcome>(bad).is_err(), "{bad}");
        }
        let bad_code = Outcome::Failed {
            name: "edge".into(),
            version: 43,
            reason: "r".into(),
            rejected: Some(Rejection {
                code: "Wrong Board".into(),
                manifest_sha256: D.into(),
            }),
        };
        assert!(bad_code.validate().is_err());
        // A manifest that could not be read has no name; that is fine for a rejection only.
        let unreadable = Outcome::Failed {
            name: String::new(),
            version: 0,
            reason: "malformed".into(),
            rejected: Some(Rejection {
                code: "malformed".into(),
                manifest_sha256: D.into(),
            }),
        };
        unreadable.validate().unwrap();
        let nameless = Outcome::Failed {
            name: String::new(),
            version: 0,
            reason: "malformed".into(),
            rejected: None,
        };
        assert!(nameless.validate().is_err());
    }

    #[test]
    fn agent_outcome_report_parses() {
        let body = br#"{"id":"b1-3","seq":3,"boot_id":"b1","agent":"0.1.0",
            "outcome":{"outcome":"committed","name":"edge","version":42,"slot":"B"}}"#;
        let r = DeviceReport::parse(body).unwrap();
        assert_eq!(r.running_slot(), Some(Slot::B));
        assert_eq!(r.running_version(), 42);
        assert_eq!(r.outcome.as_ref().unwrap().kind(), "committed");
        let body = format!(
            r#"{{"id":"b1-4","seq":4,"boot_id":"b1","agent":"0.1.0",
            "outcome":{{"outcome":"rejected","name":"edge","version":43,"reason":"expired",
            "code":"expired","manifest_sha256":"{D}"}}}}"#
        );
        let r = DeviceReport::parse(body.as_bytes()).unwrap();
        assert_eq!(r.running_slot(), None);
        assert_eq!(r.running_version(), 0);
        assert_eq!(r.outcome.unwrap().rejection().unwrap().code, "expired");
    }

    /// The report `tugboot-agent install-disk` sends (fixture shared with the agent's tests).
    #[test]
    fn installed_outcome_report() {
        let body = include_bytes!("../../../tests/fixtures/agent-install/report-installed.json");
        let r = DeviceReport::parse(body).unwrap();
        let o = r.outcome.as_ref().unwrap();
        assert_eq!(o.kind(), "installed");
        assert_eq!(o.image(), ("edge-os", 7));
        assert_eq!(o.reason(), None);
        assert_eq!(o.rejection(), None);
        assert_eq!(
            *o,
            Outcome::Installed {
                name: "edge-os".into(),
                version: 7,
                slot: Slot::A
            }
        );
        assert_eq!(
            serde_json::to_value(o).unwrap(),
            serde_json::json!({"outcome": "installed", "name": "edge-os", "version": 7, "slot": "A"})
        );
        // Not a status report: the slot is not "running" yet (the installer runs), the version
        // neither.
        assert_eq!((r.running_slot(), r.running_version()), (None, 0));
        let again = serde_json::to_vec(&r).unwrap();
        assert_eq!(DeviceReport::parse(&again).unwrap(), r);
        for bad in [
            r#"{"outcome":"installed","name":"e","version":1}"#,
            r#"{"outcome":"installed","name":"e","version":1,"slot":"C"}"#,
            r#"{"outcome":"installed","name":"e","version":1,"slot":"A","reason":"r"}"#,
        ] {
            assert!(serde_json::from_str::<Outcome>(bad).is_err(), "{bad}");
        }
        let nameless = Outcome::Installed {
            name: String::new(),
            version: 1,
            slot: Slot::A,
        };
        assert!(nameless.validate().is_err());
    }

    #[test]
    fn status_reports_old_and_new_parse() {
        // What the server accepted before: checks as any JSON, lowercase slot.
        let body = br#"{"id":"r1","boot_id":"b","slot":"a","image_version":7,
            "checks":{"nginx":"ok"},"uptime_secs":30,"last_error":null}"#;
        let r = DeviceReport::parse(body).unwrap();
        assert_eq!(r.running_slot(), Some(Slot::A));
        assert_eq!(r.running_version(), 7);
        assert_eq!(r.check_results(), None);
        // What the agent sends now.
        let body = br#"{"id":"b-9","seq":9,"boot_id":"b","agent":"0.1.0","slot":"B",
            "image_name":"edge","image_version":42,"uptime_secs":5,
            "checks":{"nginx":{"ok":true,"kind":"service","millis":3},
                      "disk":{"ok":false,"kind":"file","detail":"/data/ok: missing"}},
            "update":{"name":"edge","version":43,"phase":"downloading","downloaded":1048576,"size":9000000},
            "inventory":{"board":"raspberrypi-4","arch":"aarch64","kernel":"6.6.31-v8",
              "model":"Raspberry Pi 4 Model B Rev 1.5","serial":"10000000abcdef01","cpus":4,
              "memory_bytes":4025000000,
              "disks":[{"name":"mmcblk0","size_bytes":31914983424,"removable":false}],
              "interfaces":[{"name":"eth0","mac":"DC:A6:32:01:02:03"}]}}"#;
        let r = DeviceReport::parse(body).unwrap();
        let checks = r.check_results().unwrap();
        assert!(checks["nginx"].ok && !checks["disk"].ok);
        let inv = r.inventory.as_ref().unwrap();
        assert_eq!(inv.interfaces[0].mac.to_string(), "dc:a6:32:01:02:03");
        assert_eq!(r.update.as_ref().unwrap().downloaded, Some(1 << 20));
        let again = serde_json::to_vec(&r).unwrap();
        assert_eq!(DeviceReport::parse(&again).unwrap(), r);
    }

    #[test]
    fn bad_reports_are_refused() {
        let long = "x".repeat(300);
        for body in [
            r#"{"id":"","boot_id":"b","slot":"A"}"#.to_owned(),
            r#"{"id":"x","boot_id":"b"}"#.to_owned(),
            r#"{"id":"x","boot_id":"b","slot":"C"}"#.to_owned(),
            r#"{"id":"x","boot_id":"b","slot":"A","surprise":1}"#.to_owned(),
            r#"{"id":"x","boot_id":"b","slot":"A","image_version":18446744073709551615}"#
                .to_owned(),
            r#"{"id":"x\n","boot_id":"b","slot":"A"}"#.to_owned(),
            r#"{"id":"x","boot_id":"b","outcome":{"outcome":"committed","name":"e","version":1}}"#
                .to_owned(),
            format!(r#"{{"id":"x","boot_id":"b","slot":"A","image_name":"{long}"}}"#),
            r#"{"id":"x","boot_id":"b","slot":"A","inventory":{"board":"","arch":"x","kernel":"k"}}"#.to_owned(),
            r#"{"id":"x","boot_id":"b","slot":"A","inventory":{"board":"b","arch":"x","kernel":"k","interfaces":[{"name":"eth0","mac":"nope"}]}}"#.to_owned(),
            "[]".to_owned(),
            String::new(),
        ] {
            assert!(DeviceReport::parse(body.as_bytes()).is_err(), "{body}");
        }
        let big = vec![b' '; MAX_REPORT_BYTES + 1];
        assert!(matches!(
            DeviceReport::parse(&big),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn enrollment_shapes() {
        let r = EnrollRequest::parse(
            br#"{"csr":"-----BEGIN CERTIFICATE REQUEST-----","mac":"02:00:00:0A:0B:0C","token":"t"}"#,
        )
        .unwrap();
        assert_eq!(r.serial, None);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"csr":"-----BEGIN CERTIFICATE REQUEST-----","mac":"02:00:00:0A:0B:0C","token":"t"}"#
        );
        for bad in [
            r#"{"csr":"c","mac":"nope"}"#,
            r#"{"csr":"c","mac":"02:00:00:0a:0b:0c","token":""}"#,
            r#"{"csr":"c","mac":"02:00:00:0a:0b:0c","other":1}"#,
        ] {
            assert!(EnrollRequest::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let pem = "-----BEGIN CERTIFICATE-----\\nMII=\\n-----END CERTIFICATE-----\\n";
        let issued = format!(
            r#"{{"status":"issued","device_id":17,"certificate":"{pem}","ca":"{pem}","not_after":1800000000}}"#
        );
        assert!(matches!(
            EnrollResponse::parse(issued.as_bytes()),
            Ok(Enrolled::Issued {
                device_id: 17,
                not_after: Some(1_800_000_000),
                ..
            })
        ));
        assert_eq!(
            EnrollResponse::parse(br#"{"status":"pending","device_id":17}"#),
            Ok(Enrolled::Pending { device_id: 17 })
        );
        for bad in [
            r#"{"status":"issued","device_id":17}"#.to_owned(),
            r#"{"status":"maybe","device_id":17}"#.to_owned(),
            r#"{"status":"pending","device_id":0}"#.to_owned(),
            format!(r#"{{"status":"issued","device_id":1,"certificate":"x","ca":"{pem}"}}"#),
        ] {
            assert!(EnrollResponse::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_reasons_are_one_bounded_line() {
        assert_eq!(
            ErrorBody::reason(br#"{"error":"certificate 01ab is revoked"}"#).as_deref(),
            Some("certificate 01ab is revoked")
        );
        assert_eq!(
            ErrorBody::reason(b"{\"error\":\"two\\nlines\\u0007 here\"}").as_deref(),
            Some("two lines here")
        );
        let long = format!(r#"{{"error":"{}"}}"#, "é".repeat(400));
        let r = ErrorBody::reason(long.as_bytes()).unwrap();
        assert!(r.len() <= MAX_ERROR_REASON + 3 && r.ends_with('…'), "{r}");
        for none in [&b"<html>"[..], br#"{"error":"  "}"#, b""] {
            assert_eq!(ErrorBody::reason(none), None);
        }
    }
}
