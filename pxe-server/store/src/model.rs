//! Domain types stored by the fleet store.
//!
//! Timestamps are unix seconds (`i64`) and always come from the caller (`now` parameters), so
//! the fleet logic above can be driven by simulated time in tests.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Longest name-like text field (board, profile, serial, image name, hostname, ...), in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest manifest stored with an image (the firmware crate caps manifests well below this).
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Largest serialized check-results JSON of one report.
pub const MAX_CHECKS_BYTES: usize = 64 * 1024;
/// Longest `last_error` of one report; longer messages are rejected, not truncated.
pub const MAX_ERROR_LEN: usize = 4096;
/// Largest serialized machine label set.
pub const MAX_LABELS_BYTES: usize = 16 * 1024;
/// Longest DHCP client identifier (option 61 is at most 255 bytes on the wire).
pub const MAX_CLIENT_ID_LEN: usize = 255;
/// Most addresses in one lease pool (a /16): pools are materialised one row per address.
pub const MAX_POOL_SIZE: u32 = 65_536;
/// Most stages in one rollout.
pub const MAX_ROLLOUT_STAGES: usize = 64;

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

/// Database id of a machine (also the *device id* of reports and certificates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MachineId(pub i64);

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An Ethernet MAC address. Stored as lowercase `aa:bb:cc:dd:ee:ff` text so it reads well in
/// `sqlite3` / `psql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Error parsing a [`MacAddr`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a MAC address (expected six hex octets separated by ':' or '-')")]
pub struct MacParseError;

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or(MacParseError)?;
            // from_str_radix alone would accept a sign ("+1").
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(MacParseError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacParseError)?;
        }
        if parts.next().is_some() {
            return Err(MacParseError);
        }
        Ok(Self(out))
    }
}

pub(crate) fn mac_from_db(table: &'static str, value: &str) -> Result<MacAddr, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::corrupt(table, "mac", format!("{value:?} is not a MAC address")))
}

/// Defines a closed set of states stored as lowercase text.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $table:literal . $column:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The text stored in the database (and used in the API).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            pub(crate) fn from_db(value: &str) -> Result<Self, StoreError> {
                match value {
                    $($text => Ok(Self::$variant),)+
                    other => Err(StoreError::corrupt($table, $column, format!("unknown value {other:?}"))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Where a machine stands with the operator.
    MachineState, "machines"."state" {
        /// Seen on the network, nobody has looked at it yet. Gets nothing but discovery.
        Unknown = "unknown",
        /// Claimed by the operator (assigned a board / profile) but not yet allowed to boot images.
        Adopted = "adopted",
        /// Allowed to boot and update.
        Approved = "approved",
        /// Refused: never gets a boot file or an image again.
        Revoked = "revoked",
    }
}

/// One real device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Database id (the device id in reports and certificates).
    pub id: MachineId,
    /// Boot MAC address; unique.
    pub mac: MacAddr,
    /// SMBIOS system UUID (DHCP option 97), when the firmware sent one.
    pub smbios_uuid: Option<String>,
    /// Serial number (Raspberry Pi serial, DMI serial, ...).
    pub serial: Option<String>,
    /// Board name (a `boards/*.toml` name).
    pub board: Option<String>,
    /// Profile / channel: what this machine should boot or run.
    pub profile: Option<String>,
    /// Free-form labels used by rollout group selectors.
    pub labels: BTreeMap<String, String>,
    /// Operator state.
    pub state: MachineState,
    /// First time the machine was seen.
    pub first_seen: i64,
    /// Last time the machine was seen (DHCP, HTTP, report).
    pub last_seen: i64,
    /// The image the machine last booted (`name@version` or whatever the fleet logic records).
    pub last_booted_image: Option<String>,
}

/// What the network told us about a machine: the input of [`crate::Store::record_sighting`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSighting {
    /// Boot MAC address: the key.
    pub mac: MacAddr,
    /// SMBIOS UUID, if known from this sighting (an absent value keeps the stored one).
    pub smbios_uuid: Option<String>,
    /// Serial, if known from this sighting (an absent value keeps the stored one).
    pub serial: Option<String>,
    /// Board, if recognised (an absent value keeps the stored one).
    pub board: Option<String>,
}

impl MachineSighting {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        check_opt_len("smbios_uuid", self.smbios_uuid.as_deref(), MAX_NAME_LEN)?;
        check_opt_len("serial", self.serial.as_deref(), MAX_NAME_LEN)?;
        check_opt_len("board", self.board.as_deref(), MAX_NAME_LEN)
    }
}

pub(crate) fn labels_to_db(labels: &BTreeMap<String, String>) -> Result<String, StoreError> {
    for (k, v) in labels {
        check_len("label name", k, MAX_NAME_LEN)?;
        check_len("label value", v, MAX_NAME_LEN)?;
    }
    let text =
        serde_json::to_string(labels).map_err(|e| StoreError::invalid("labels", e.to_string()))?;
    if text.len() > MAX_LABELS_BYTES {
        return Err(StoreError::invalid(
            "labels",
            format!("{} bytes, at most {MAX_LABELS_BYTES}", text.len()),
        ));
    }
    Ok(text)
}

pub(crate) fn labels_from_db(text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt("machines", "labels", e.to_string()))
}

text_enum! {
    /// State of one address in a lease pool.
    LeaseState, "leases"."state" {
        /// Never handed out (or handed back to the pool by the operator).
        Free = "free",
        /// Offered in a DHCPOFFER; held until `expires_at` (short).
        Offered = "offered",
        /// Bound by a DHCPACK until `expires_at`.
        Bound = "bound",
        /// Released by the client (DHCPRELEASE); reusable, the client keeps its affinity.
        Released = "released",
        /// Declined by a client (DHCPDECLINE: address in use): quarantined until `expires_at`.
        Declined = "declined",
    }
}

/// An address range handed out by the DHCP server, inclusive at both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasePool {
    /// Pool name (e.g. the subnet or the relay's giaddr network).
    pub name: String,
    /// First address of the range.
    pub first: Ipv4Addr,
    /// Last address of the range (inclusive).
    pub last: Ipv4Addr,
}

impl LeasePool {
    /// Number of addresses in the range, after checking it against [`MAX_POOL_SIZE`].
    pub(crate) fn validated_size(&self) -> Result<u32, StoreError> {
        check_len("pool name", &self.name, MAX_NAME_LEN)?;
        let (first, last) = (u32::from(self.first), u32::from(self.last));
        if first > last {
            return Err(StoreError::invalid(
                "pool range",
                format!("{} is after {}", self.first, self.last),
            ));
        }
        let size = last - first;
        if size >= MAX_POOL_SIZE {
            return Err(StoreError::invalid(
                "pool range",
                format!("more than {MAX_POOL_SIZE} addresses"),
            ));
        }
        Ok(size + 1)
    }
}

/// The client asking for a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClient {
    /// DHCP client identifier (option 61), or the hardware type + MAC when the client sent
    /// none. A client holds at most one address per pool.
    pub client_id: Vec<u8>,
    /// Client hardware address (chaddr).
    pub mac: MacAddr,
    /// Host name (option 12), if sent.
    pub hostname: Option<String>,
}

impl LeaseClient {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.client_id.is_empty() || self.client_id.len() > MAX_CLIENT_ID_LEN {
            return Err(StoreError::invalid(
                "client_id",
                format!(
                    "{} bytes, expected 1..={MAX_CLIENT_ID_LEN}",
                    self.client_id.len()
                ),
            ));
        }
        check_opt_len("hostname", self.hostname.as_deref(), MAX_NAME_LEN)
    }
}

/// One address of a pool and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Pool name.
    pub pool: String,
    /// The address.
    pub addr: Ipv4Addr,
    /// Holder (or last holder, for affinity) of the address.
    pub client_id: Option<Vec<u8>>,
    /// Holder's hardware address.
    pub mac: Option<MacAddr>,
    /// Holder's host name.
    pub hostname: Option<String>,
    /// State.
    pub state: LeaseState,
    /// End of the offer / lease / quarantine, unix seconds.
    pub expires_at: i64,
    /// Last change, unix seconds.
    pub updated_at: i64,
}

impl Lease {
    /// True while the address is held (offered or bound, and not expired at `now`).
    pub fn is_active(&self, now: i64) -> bool {
        matches!(self.state, LeaseState::Offered | LeaseState::Bound) && self.expires_at > now
    }
}

/// How [`crate::Store::allocate_lease`] should hold the address it finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Pool to allocate from.
    pub pool: String,
    /// Who asks.
    pub client: LeaseClient,
    /// Address the client asked for (option 50), tried before any other free address.
    pub requested: Option<Ipv4Addr>,
    /// [`LeaseState::Offered`] for a DHCPOFFER, [`LeaseState::Bound`] for a DHCPACK.
    pub state: LeaseState,
    /// When the hold ends, unix seconds.
    pub expires_at: i64,
}

impl LeaseRequest {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        check_len("pool name", &self.pool, MAX_NAME_LEN)?;
        self.client.validate()?;
        if !matches!(self.state, LeaseState::Offered | LeaseState::Bound) {
            return Err(StoreError::invalid(
                "lease state",
                format!("cannot allocate as {}", self.state),
            ));
        }
        Ok(())
    }
}

pub(crate) fn addr_to_db(addr: Ipv4Addr) -> i64 {
    i64::from(u32::from(addr))
}

pub(crate) fn addr_from_db(value: i64) -> Result<Ipv4Addr, StoreError> {
    u32::try_from(value).map(Ipv4Addr::from).map_err(|_| {
        StoreError::corrupt("leases", "addr", format!("{value} is not an IPv4 address"))
    })
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
    /// Whether machines may be pointed at it. The only mutable field.
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

/// Database id of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RolloutId(pub i64);

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

text_enum! {
    /// Lifecycle of a rollout.
    RolloutState, "rollouts"."state" {
        /// Created, not started.
        Pending = "pending",
        /// Advancing stage by stage.
        Running = "running",
        /// Stopped by the failure threshold or the operator.
        Paused = "paused",
        /// Every stage done.
        Completed = "completed",
        /// Abandoned by the operator.
        Aborted = "aborted",
    }
}

/// One stage of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStage {
    /// Cumulative share of the group (percent, 1..=100) running the image once the stage is done.
    pub percent: u8,
    /// How long the stage must stay healthy before the next one starts, seconds.
    pub soak_secs: u64,
}

/// Health guard of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutThresholds {
    /// Failure rate (per mille of reporting devices) above which the rollout pauses.
    pub max_failure_permille: u16,
    /// Reports needed before the rate is judged at all.
    pub min_reports: u32,
}

/// Moving a group of machines from one image to another, in stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Database id.
    pub id: RolloutId,
    /// Target image name.
    pub image_name: String,
    /// Target image version.
    pub image_version: u64,
    /// Which machines take part (label selector, interpreted by the fleet logic).
    pub group_selector: String,
    /// Stages, in order.
    pub stages: Vec<RolloutStage>,
    /// Health guard.
    pub thresholds: RolloutThresholds,
    /// Lifecycle state.
    pub state: RolloutState,
    /// Index into `stages` of the stage in progress.
    pub current_stage: u32,
    /// Creation time.
    pub created_at: i64,
    /// Last transition.
    pub updated_at: i64,
}

/// Input of [`crate::Store::create_rollout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    /// Target image name (must be stored).
    pub image_name: String,
    /// Target image version (must be stored).
    pub image_version: u64,
    /// Which machines take part.
    pub group_selector: String,
    /// Stages, in order (1..=[`MAX_ROLLOUT_STAGES`]).
    pub stages: Vec<RolloutStage>,
    /// Health guard.
    pub thresholds: RolloutThresholds,
}

impl NewRollout {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        check_len("image name", &self.image_name, MAX_NAME_LEN)?;
        u64_to_db("image version", self.image_version)?;
        check_len("group_selector", &self.group_selector, 4 * MAX_NAME_LEN)?;
        if self.stages.is_empty() || self.stages.len() > MAX_ROLLOUT_STAGES {
            return Err(StoreError::invalid(
                "stages",
                format!("expected 1..={MAX_ROLLOUT_STAGES} stages"),
            ));
        }
        let mut previous = 0;
        for stage in &self.stages {
            if stage.percent == 0 || stage.percent > 100 || stage.percent < previous {
                return Err(StoreError::invalid(
                    "stages",
                    "percentages must rise within 1..=100",
                ));
            }
            u64_to_db("soak_secs", stage.soak_secs)?;
            previous = stage.percent;
        }
        if self.thresholds.max_failure_permille > 1000 {
            return Err(StoreError::invalid("max_failure_permille", "above 1000"));
        }
        Ok(())
    }
}

/// A compare-and-set transition of a rollout: applied only if the rollout is still in `from`,
/// so two servers evaluating the same rollout cannot both advance it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutTransition {
    /// Which rollout.
    pub id: RolloutId,
    /// Expected current state.
    pub from_state: RolloutState,
    /// Expected current stage.
    pub from_stage: u32,
    /// New state.
    pub to_state: RolloutState,
    /// New stage (must index the rollout's stages).
    pub to_stage: u32,
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

/// A health report from a device's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Reporting device (from its certificate, never from the report body).
    pub device: MachineId,
    /// Chosen by the agent, stable across retries: `(device, report_id)` makes a retried report
    /// count once.
    pub report_id: String,
    /// Boot the report is about (the kernel's boot id).
    pub boot_id: String,
    /// Slot the device is running from.
    pub slot: Slot,
    /// Image version running.
    pub image_version: u64,
    /// Health-check results as sent by the agent.
    pub checks: serde_json::Value,
    /// Uptime at the time of the report, seconds.
    pub uptime_secs: u64,
    /// Last error the agent saw, if any.
    pub last_error: Option<String>,
    /// When the server received it.
    pub received_at: i64,
}

impl Report {
    pub(crate) fn checks_to_db(&self) -> Result<String, StoreError> {
        check_len("report_id", &self.report_id, 128)?;
        check_len("boot_id", &self.boot_id, 128)?;
        u64_to_db("image_version", self.image_version)?;
        u64_to_db("uptime_secs", self.uptime_secs)?;
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

/// A certificate issued to a device at enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// Certificate serial number, lowercase hex (unique).
    pub serial: String,
    /// The device it identifies.
    pub device: MachineId,
    /// Issue time.
    pub issued_at: i64,
    /// Expiry (`notAfter`).
    pub not_after: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

impl DeviceCert {
    /// True if the certificate may be used at `now`: not revoked and not expired.
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

    #[test]
    fn mac_round_trip_and_rejects() {
        let mac: MacAddr = "02:00:5E:10:00:0a".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x00, 0x5e, 0x10, 0x00, 0x0a]);
        assert_eq!(mac.to_string(), "02:00:5e:10:00:0a");
        assert_eq!("02-00-5e-10-00-0a".parse::<MacAddr>(), Ok(mac));
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:0a:01",
            "2:00:5e:10:00:0a",
            "zz:00:5e:10:00:0a",
            "+1:00:5e:10:00:0a",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(MacParseError), "{bad:?}");
        }
    }

    #[test]
    fn enums_round_trip_through_text() {
        for s in [
            MachineState::Unknown,
            MachineState::Adopted,
            MachineState::Approved,
            MachineState::Revoked,
        ] {
            assert_eq!(MachineState::from_db(s.as_str()).unwrap(), s);
        }
        assert!(matches!(
            MachineState::from_db("Approved"),
            Err(StoreError::CorruptRow { .. })
        ));
        assert!(matches!(
            LeaseState::from_db(""),
            Err(StoreError::CorruptRow { .. })
        ));
        assert_eq!(Slot::from_db("b").unwrap(), Slot::B);
    }

    #[test]
    fn pool_size_is_capped() {
        let pool = |a: [u8; 4], b: [u8; 4]| LeasePool {
            name: "p".into(),
            first: a.into(),
            last: b.into(),
        };
        assert_eq!(
            pool([10, 0, 0, 1], [10, 0, 0, 1]).validated_size().unwrap(),
            1
        );
        assert_eq!(
            pool([10, 0, 0, 0], [10, 0, 255, 255])
                .validated_size()
                .unwrap(),
            65_536
        );
        assert!(pool([10, 0, 0, 0], [10, 1, 0, 0]).validated_size().is_err());
        assert!(pool([10, 0, 0, 2], [10, 0, 0, 1]).validated_size().is_err());
        assert!(
            pool([0, 0, 0, 0], [255, 255, 255, 255])
                .validated_size()
                .is_err()
        );
    }

    #[test]
    fn rollout_validation() {
        let mut r = NewRollout {
            image_name: "img".into(),
            image_version: 3,
            group_selector: "site=lab".into(),
            stages: vec![
                RolloutStage {
                    percent: 10,
                    soak_secs: 60,
                },
                RolloutStage {
                    percent: 100,
                    soak_secs: 0,
                },
            ],
            thresholds: RolloutThresholds {
                max_failure_permille: 50,
                min_reports: 3,
            },
        };
        assert!(r.validate().is_ok());
        r.stages.reverse();
        assert!(r.validate().is_err());
        r.stages.clear();
        assert!(r.validate().is_err());
        r.stages.push(RolloutStage {
            percent: 101,
            soak_secs: 0,
        });
        assert!(r.validate().is_err());
        r.stages[0].percent = 100;
        r.image_version = u64::MAX;
        assert!(r.validate().is_err());
    }
}
