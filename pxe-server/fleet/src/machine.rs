//! The machine registry's record: one identity, its state with the operator, its facts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tugboot_wire::{Mac, Uuid};

use crate::facts::{Facts, keys};

/// Database id of a machine: the device id of reports and certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MachineId(pub i64);

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a machine stands with the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    /// Seen on the network or declared; not yet allowed to enroll by MAC.
    Unknown,
    /// Claimed by the operator, not yet allowed to enroll.
    Adopted,
    /// Allowed to enroll, boot and update.
    Approved,
    /// Refused: gets no boot plan, no certificate and no image again.
    Revoked,
}

impl MachineState {
    /// Every state.
    pub const ALL: [Self; 4] = [Self::Unknown, Self::Adopted, Self::Approved, Self::Revoked];

    /// The stored text.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Adopted => "adopted",
            Self::Approved => "approved",
            Self::Revoked => "revoked",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown machine state {s:?}"))
    }
}

/// One real device.
///
/// Identity: the boot MAC (what DHCP, TFTP paths and iPXE carry), and the SMBIOS UUID and serial
/// *as declared or attested* (a request's claimed UUID or serial is only a fact, `observed`).
/// A declared machine may lack a MAC until it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Database id.
    pub id: MachineId,
    /// Operator's name for it (unique), e.g. from the profiles file.
    pub name: Option<String>,
    /// Boot MAC address (unique).
    pub mac: Option<Mac>,
    /// SMBIOS system UUID (declared or attested).
    pub uuid: Option<Uuid>,
    /// Serial number (declared or attested).
    pub serial: Option<String>,
    /// Operator state.
    pub state: MachineState,
    /// Everything known about it, with provenance.
    pub facts: Facts,
    /// First time it was seen or declared.
    pub first_seen: i64,
    /// Last time it was seen (DHCP, HTTP, TFTP, report).
    pub last_seen: i64,
    /// The image it last booted (`name@version`, or `local`).
    pub last_booted_image: Option<String>,
}

impl Machine {
    /// How it is shown: its name, else its first identifier, else its id.
    #[must_use]
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match (&self.mac, &self.uuid, &self.serial) {
            (Some(m), _, _) => m.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(s)) => s.clone(),
            (None, None, None) => format!("machine {}", self.id),
        }
    }

    /// The board, whoever said it (console arguments; display).
    #[must_use]
    pub fn board(&self) -> Option<&str> {
        self.facts.value(keys::BOARD)
    }

    /// The profile the operator assigned (declared only).
    #[must_use]
    pub fn profile(&self) -> Option<&str> {
        self.facts
            .get(keys::PROFILE)
            .filter(|f| matches!(f.source, crate::Source::Declared(_)))
            .map(|f| f.value.as_str())
    }

    /// Labels with their values.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.facts.labels().map(|(k, f)| (k, f.value.as_str()))
    }
}
